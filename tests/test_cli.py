"""Bad input through the real command line: one line naming the problem and the fix, exit code 2,
and nothing written (or an earlier result left intact)."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_TASK, write_recipe


def tree_digest(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], lines[0]


CASES = {
    "missing data file": (lambda s: s.replace("@DATA@/snips/train", "@DATA@/snips/nope"), ["snips/nope", "not found"]),
    "unknown recipe key": (lambda s: s.replace("epochs = 2", "epochs = 2\nlearning_rate = 1"),
                           ["unknown key 'learning_rate'", "valid keys"]),
    "unknown backbone path": (lambda s: s.replace('"tiny-random"', '"./models/missing-bert"'),
                              ["models/missing-bert", "not found"]),
    "wrong column name": (lambda s: s.replace('format = "seqio"', 'format = "tsv"').replace(
        '"@DATA@/snips/train"', '"train.tsv"') + 'columns = { text = "txt", label = "label" }\n',
        ["column 'txt'", "columns are: sentence, label"]),
    "empty data file": (lambda s: s.replace('"@DATA@/snips/valid"', '"empty.tsv"').replace(
        'format = "seqio"', 'format = "tsv"').replace('"@DATA@/snips/train"', '"train.tsv"')
        + 'columns = { text = "sentence", label = "label" }\n', ["empty.tsv", "is empty"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_in_one_line_and_writes_nothing(tmp_path, cli, case):
    edit, needles = CASES[case]
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    (tmp_path / "empty.tsv").write_text("")
    recipe = write_recipe(tmp_path, edit(TINY_TASK))
    code, _, err = cli("train", recipe, "--out", tmp_path / "out")
    one_line_error(code, err, *needles)
    assert not (tmp_path / "out").exists()


def test_too_many_layers_leaves_an_earlier_result_intact(tmp_path, cli):
    recipe = write_recipe(tmp_path, TINY_TASK)
    code, _, err = cli("train", recipe, "--out", tmp_path / "out", "--layers", "1")
    assert code == 0, err
    before = tree_digest(tmp_path / "out")
    code, _, err = cli("train", recipe, "--out", tmp_path / "out", "--layers", "2,9")
    one_line_error(code, err, "L = 9", "1..4", "--layers")
    assert tree_digest(tmp_path / "out") == before


@pytest.mark.parametrize("args, needles", [
    (["--layers", "one"], ["--layers 'one'", "comma-separated"]),
    (["--task", "nope"], ["unknown task 'nope'", "intent"]),
    (["--epochs", "0"], ["--epochs = 0"]),
    (["--max-train", "-5"], ["--max-train -5 must be at least 1"]),
])
def test_bad_options(tmp_path, cli, args, needles):
    code, _, err = cli("train", write_recipe(tmp_path, TINY_TASK), "--out", tmp_path / "out", *args)
    one_line_error(code, err, *needles)
    assert not (tmp_path / "out").exists()


def test_missing_recipe(tmp_path, cli):
    code, _, err = cli("train", tmp_path / "nope.toml")
    one_line_error(code, err, "nope.toml", "not found")


def test_console_script_end_to_end(tmp_path):
    """The installed entry point: train the tiny recipe, then check a bad recipe."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    exe = [sys.executable, "-m", "toolchain.cli"]
    ok = subprocess.run([*exe, "train", ROOT / "models/tiny.toml", "--out", tmp_path / "o", "-t", "snips_intent"],
                        capture_output=True, text=True, env=env, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "snips_intent" in ok.stdout and (tmp_path / "o/runs/snips_intent/L2-s0/result.json").is_file()
    bad = subprocess.run([*exe, "check", write_recipe(tmp_path, TINY_TASK.replace("epochs", "epoks"))],
                         capture_output=True, text=True, env=env, check=False)
    one_line_error(bad.returncode, bad.stderr, "unknown key 'epoks'")


def test_import_toolchain_stays_light():
    code = ("import sys, toolchain, toolchain.cli, toolchain.config; "
            "bad = [m for m in ('torch', 'transformers', 'executorch', 'coremltools', 'onnxruntime') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_help_keeps_the_recipe_sections_it_names(cli, monkeypatch):
    """Rich reads "[plan]" as a style tag and drops it from --help; every section a command's help
    names must reach the screen."""
    import re

    import typer

    from toolchain.cli import app

    monkeypatch.setenv("COLUMNS", "400")
    group = typer.main.get_command(app)
    seen = 0
    for name, command in group.commands.items():
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        sections = {m for t in texts for m in re.findall(r"\[([a-z_]+)\]", t)}
        if not sections:
            continue
        code, out, _ = cli(name, "--help")
        assert code == 0
        shown = " ".join(out.split())
        for s in sections:
            assert f"[{s}]" in shown, f"ctb-mobile {name} --help lost [{s}]"
            seen += 1
    assert seen >= 3  # distill's [distill], plan's [plan], export's [export]
