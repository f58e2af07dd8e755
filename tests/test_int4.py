"""--precision int4 on the tiny store: android (XNNPACK 8da4w), onnx (MatMulNBits), ios (structure), the
manifest's per-part scheme, and verify accepting the bundle. The guard's order is in test_guard.py."""

import copy
import json

import pytest

from runtime_py.manifest import BundleError, parse
from toolchain.export import export_bundle

for _package in ("onnxruntime", "executorch", "coremltools", "torchao"):
    pytest.importorskip(_package, reason=f"int4 tests need {_package}: pip install -e '.[onnx,executorch,coreml]'")


def _parts_are_int4(manifest, group):
    parts = manifest["quantization"]["parts"]
    assert "trunk.embeddings" in parts and all(t["name"] in parts for t in manifest["tasks"])
    return all(p == {"precision": "int4", "group": group} for p in parts.values())


@pytest.mark.slow  # an 8da4w export and lowering: minutes on a 2-core CI machine
def test_android_int4_delegates_its_linears_to_xnnpack(tiny):
    """8da4w lowers whole: no Linear, matmul or dequantize left outside the XNNPACK delegate."""
    import torch

    from toolchain.export import executorch as et
    from toolchain.export.graph import example_inputs, graphs
    from toolchain.store import load_merged

    out, _ = tiny
    model, tok, metas = load_merged(out / "store")
    graph = graphs(model, metas, "fused", example_inputs(tok, ["play some jazz", "set an alarm for six tomorrow"], 32))[0]
    lowered = et.lower(graph, "int4", 32, group=32).exported_program().graph_module
    outside = {str(n.target) for n in lowered.graph.nodes if n.op == "call_function"}
    assert not [t for t in outside if any(w in t for w in ("linear", "mm", "quantize", "choose_qparams"))], outside
    assert any("executorch_call_delegate" in t for t in outside)
    linears = [m for m in graph.module.modules() if isinstance(m, torch.nn.Linear)]
    assert linears  # the graph had Linear layers to lower


@pytest.mark.slow
def test_android_int4_bundle_passes_the_guard_and_verify(tiny, tmp_path):
    from toolchain.verify import verify

    out, recipe = tiny
    int8 = export_bundle(recipe, out / "store", "android", "int8", "fused", tmp_path / "q8", log=lambda m: None)
    lines = []
    m = export_bundle(recipe, out / "store", "android", "int4", "fused", tmp_path / "q4", log=lines.append)
    assert m["precision"] == "int4" and m["programs"][0]["precision"] in ("int4", "int8")
    q = m["quantization"]
    assert set(q["guard"]) == {t["name"] for t in m["tasks"]}
    assert all(g["agreement"] >= q["min_agreement"] and g["drop"] <= q["max_metric_drop"] for g in q["guard"].values())
    if m["programs"][0]["precision"] == "int4":  # int4 held: fewer bytes than int8
        assert m["files"]["model.pte"]["bytes"] < int8["files"]["model.pte"]["bytes"]
        assert {p["precision"] for p in q["parts"].values()} <= {"int4", "int8", "fp32"}
        assert any(p["precision"] == "int4" for p in q["parts"].values())
    assert verify(tmp_path / "q4", recipe, out / "store", tmp_path / "v", runs_dir=out, golden=1, log=lambda m: None)["ok"], lines
    # the int4 attempts were searched before lowering, and the program exported was the one that search passed
    assert any(line.startswith("guard (simulated): ") for line in lines), lines
    if m["programs"][0]["precision"] == "int4":
        assert any(line.startswith("guard: exporting what the simulated search passed") for line in lines), lines
        assert sum(line.startswith("exporting model") for line in lines) == 1, lines


@pytest.mark.slow
def test_onnx_int4_uses_matmulnbits_and_4bit_embeddings(tiny, tmp_path):
    import onnx

    from toolchain.verify import verify

    out, recipe = tiny
    m = export_bundle(recipe, out / "store", "onnx", "int4", "fused", tmp_path / "o4", log=lambda m: None)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "o4/model.onnx")).graph.node]
    parts = m["quantization"]["parts"]
    if parts["trunk.embeddings"]["precision"] == "int4":
        assert "GatherBlockQuantized" in ops
    if any(p["precision"] == "int4" for k, p in parts.items() if k.startswith("trunk.layers.")):
        assert "MatMulNBits" in ops
    assert verify(tmp_path / "o4", recipe, out / "store", tmp_path / "v", runs_dir=out, golden=1, log=lambda m: None)["ok"]


@pytest.mark.slow
def test_ios_int4_is_a_per_block_ios18_package(tiny, tmp_path):
    from toolchain.export import coreml

    out, recipe = tiny
    m = export_bundle(recipe, out / "store", "ios", "int4", "fused", tmp_path / "i4", log=lambda m: None)
    assert m["quantization"]["guard_skipped"] and _parts_are_int4(m, 32)
    d = coreml.describe(tmp_path / "i4/model.mlpackage")
    assert d["spec_version"] >= 9  # iOS 18
    assert "constexpr_blockwise_shift_scale" in d["ops"], d["ops"]


def test_manifest_round_trip_keeps_the_per_part_scheme(tiny_bundles):
    """An fp32 bundle's manifest with an int4 record: parse -> to_json -> parse keeps every part's
    scheme; an int4 part without its group, or an unknown precision, is refused; old records stay valid."""
    base = json.loads((tiny_bundles["onnx", "fused"] / "manifest.json").read_text())
    parts = {"trunk.embeddings": {"precision": "int8"}, "trunk.layers.0": {"precision": "int4", "group": 32},
             "trunk.layers.1": {"precision": "fp32"}, **{t["name"]: {"precision": "int4", "group": 64}
                                                        for t in base["tasks"]}}
    m = copy.deepcopy(base)
    m["precision"] = m["programs"][0]["precision"] = "int4"
    m["quantization"] = {"guard": None, "parts": parts}
    again = parse(parse(m).to_json())
    assert again.quantization["parts"] == parts and again.precision == "int4"
    old = copy.deepcopy(m)
    old["quantization"] = {"guard": None, "fp32_branches": []}  # a record from before int4: no parts
    parse(old)
    for bad, field in (({"precision": "int4"}, "trunk.layers.0"), ({"precision": "int8", "group": 32}, "trunk.layers.0"),
                       ({"precision": "int3", "group": 32}, "trunk.layers.0"),
                       ({"precision": "int4", "group": 48}, "trunk.layers.0")):
        wrong = copy.deepcopy(m)
        wrong["quantization"]["parts"][field] = bad
        with pytest.raises(BundleError, match="quantization/parts"):
            parse(wrong)
