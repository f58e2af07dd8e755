"""A quiet terminal: `export` prints only the tool's own lines on stderr; what torch.onnx, ONNX Runtime and
ExecuTorch say goes to the log file (toolchain/quiet.py), and `--verbose` brings it back."""

import os
import re
import subprocess
import sys

import pytest

OWN = re.compile(r"^(\[\d\d:\d\d:\d\d\] |\s)")  # rich's log lines and their wrapped continuations


def export(tiny, tmp_path, target, precision, *flags):
    out, recipe = tiny
    env = {**os.environ, "CTB_LOG": str(tmp_path / "ctb.log"), "CTB_EXPORT_CACHE": "0"}  # trace for real
    env.pop("CTB_VERBOSE", None)
    done = subprocess.run([sys.executable, "-m", "toolchain.cli", *flags, "export", str(recipe.path), "--target",
                           target, "--precision", precision, "--out", str(out), "--out-dir",
                           str(tmp_path / f"{target}-{precision}")], capture_output=True, text=True, env=env,
                          timeout=1200)
    assert done.returncode == 0, done.stderr
    log = tmp_path / "ctb.log"  # none with --verbose
    return done.stderr, log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""


def foreign(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.strip() and not OWN.match(line)]


@pytest.mark.parametrize("target,precision", [("onnx", "int8"),
                                              pytest.param("android", "fp32", marks=pytest.mark.slow)])
def test_export_prints_only_its_own_lines(tiny, tmp_path, target, precision):
    stderr, log = export(tiny, tmp_path, target, precision)
    assert "exporting model" in stderr  # the tool's own progress is still shown
    assert not foreign(stderr), foreign(stderr)
    assert "Warning" not in stderr and "WARNING" not in stderr
    assert "--- ctb-mobile" in log  # where the libraries' lines went


def test_verbose_leaves_the_libraries_lines_on_the_terminal(tiny, tmp_path):
    stderr, log = export(tiny, tmp_path, "onnx", "int8", "--verbose")
    assert foreign(stderr), "with --verbose the libraries' warnings are shown"
    assert not log
