"""The scripts under benchmarks/ that a results page quotes, run on the tiny store's bundles."""

import importlib.util
import json
import re

import pytest
from conftest import ROOT

pytest.importorskip("onnxruntime", reason="benchmark tests need onnxruntime: pip install -e '.[onnx]'")


def test_bundle_latency_times_bundles_side_by_side_against_the_first(tiny_bundles, capsys):
    """benchmarks/bundle_latency.py: the CPU line, each bundle's program bytes ÷ the first's and its threads,
    then per length a row per bundle whose p50 ÷ the first's is measured (the first's is 1 by definition);
    a folder that is not a bundle is a one-line error."""
    spec = importlib.util.spec_from_file_location("bundle_latency", ROOT / "benchmarks" / "bundle_latency.py")
    bl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bl)
    fused, split = tiny_bundles["onnx", "fused"], tiny_bundles["onnx", "split"]
    capsys.readouterr()  # the fixture's export lines
    bl.main([str(fused), str(split), "--lengths", "8,16", "--repeats", "3", "--threads", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("CPU: ")
    sizes = [sum(json.loads((b / "manifest.json").read_text())["files"][p["file"]]["bytes"]
                 for p in json.loads((b / "manifest.json").read_text())["programs"]) for b in (fused, split)]
    assert f"{sizes[0]:,} program bytes (1.000 of the first), threads [1]" in out[1]
    assert f"{sizes[1]:,} program bytes ({sizes[1] / sizes[0]:.3f} of the first)" in out[2]
    rows = [line for line in out if re.match(rf"\| ({fused.name}|{split.name}) \| (8|16) \|", line)]
    assert len(rows) == 4 and all(r.endswith("| 1.000 |") for r in rows if r.startswith(f"| {fused.name} |"))
    with pytest.raises(SystemExit, match="is not a bundle"):
        bl.main([str(fused.parent / "nothing-here")])
