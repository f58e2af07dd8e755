"""runtime_py (the reference runtime) and `ctb-mobile verify`, on tiny-backbone bundles and real text."""

import json
from pathlib import Path
import platform
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import ROOT, copy_bundle, reseal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime_py import BundleError, InputError, Predictor
from runtime_py.bundle import file_sha256
from toolchain import infer, store
from toolchain.export import check, export_bundle

pytest.importorskip("onnxruntime")
pytest.importorskip("executorch")

TEXTS = [line.strip() for line in (ROOT / "models/data/snips/test/seq.in").read_text().splitlines()[20:30]]
TEXTS += ["Wake me up at 7 AM tomorrow", "book a table at Chez Panisse for 4 people tonight"]


@pytest.fixture(scope="module")
def bundles(tiny_bundles):
    return tiny_bundles


def reference(tiny, texts):
    out, _ = tiny
    model, tok, metas = store.load_merged(out / "store")
    return infer.predict(model, tok, metas, texts, max_len=32), model, tok


@pytest.mark.parametrize("key", [("onnx", "fused"), ("onnx", "split"),
                                 pytest.param(("android", "split"), marks=pytest.mark.slow)])
def test_predictor_decodes_like_pytorch_on_real_text(tiny, bundles, key):
    p = Predictor(bundles[key])
    got = p.predict(TEXTS)
    ref, _model, _tok = reference(tiny, TEXTS)
    for g, r in zip(got, ref):
        assert set(g) == set(r) == {"snips_intent", "snips_slots", "clinc_domain"}
        for task in r:
            if "label" in r[task]:
                assert g[task]["label"] == r[task]["label"]
                assert abs(g[task]["score"] - r[task]["score"]) < 1e-4
            else:
                assert g[task]["spans"] == r[task]["spans"]
    # spans point into the original text
    for text, g in zip(TEXTS, got):
        for s in g["snips_slots"]["spans"]:
            assert text[s["start"]: s["end"]] == s["text"] and s["text"]
    # batching does not change results: one at a time == all together
    assert [p.predict_one(t) for t in TEXTS[:4]] == got[:4]


@pytest.mark.parametrize("key", [("onnx", "fused"), pytest.param(("android", "split"), marks=pytest.mark.slow)])
def test_one_predictor_is_safe_to_share_between_threads(bundles, key):
    p = Predictor(bundles[key])
    expected = [p.predict([t]) for t in TEXTS]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda t: p.predict([t]), TEXTS * 3))
    assert got == expected * 3


def test_only_the_requested_tasks_run_and_unknown_tasks_are_errors(bundles):
    p = Predictor(bundles[("onnx", "split")], tasks=["snips_intent"])
    assert set(p.programs) == {"trunk", "branch_snips_intent"}  # split: the other branches are not loaded
    assert set(p.predict_one("play some jazz")) == {"snips_intent"}
    with pytest.raises(InputError, match="unknown task 'weather'.*snips_intent"):
        Predictor(bundles[("onnx", "fused")]).predict(["hi"], tasks=["weather"])


def test_bad_input_has_defined_behaviour(bundles):
    p = Predictor(bundles[("onnx", "fused")])
    empty, long, ctrl = p.predict(["", "play jazz " * 50_000, "play\x00 some\x07 jazz\u200b\x1b[0m"])
    assert set(empty) == set(long) == set(ctrl) == set(p.tasks)
    assert len(p.encode(["play jazz " * 50_000])[0].ids) == p.max_seq_len  # truncated, as in training
    assert p.encode(["play\x00 some\x07 jazz"])[0].ids == p.encode(["play some jazz"])[0].ids  # controls dropped
    assert p.predict([b"play some jazz"]) == p.predict(["play some jazz"])  # UTF-8 bytes are accepted
    for bad, needle in (([b"caf\xe9"], "not valid UTF-8"), (["ok", None], "text 1 is NoneType"),
                        (["\ud800x"], "unpaired surrogate"), ("a bare string", "list of strings")):
        with pytest.raises(InputError, match=needle):
            p.predict(bad)
    with pytest.raises(InputError, match="takes one text, but pairs were given"):
        p.predict(["play jazz"], pairs=["and more"])
    with pytest.raises(InputError, match="2 texts but 1 pairs"):
        p.predict(["a", "b"], pairs=["c"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(st.characters(exclude_categories=()), max_size=300), st.binary(max_size=200)),
                min_size=1, max_size=4))
def test_any_input_gives_predictions_or_one_line_input_error(bundles, texts):
    p = _shared_predictor(bundles)
    try:
        out = p.predict(texts)
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert len(out) == len(texts)
    for text, row in zip(texts, out):
        assert set(row) == set(p.tasks)
        text = text.decode() if isinstance(text, bytes) else text
        for s in row["snips_slots"]["spans"]:
            assert 0 <= s["start"] < s["end"] <= len(text) and text[s["start"]: s["end"]] == s["text"]
        assert all(0 <= row[t]["score"] <= 1 for t in ("snips_intent", "clinc_domain"))


_PREDICTORS = {}


def _shared_predictor(bundles):
    key = str(bundles[("onnx", "fused")])
    if key not in _PREDICTORS:
        _PREDICTORS[key] = Predictor(key)
    return _PREDICTORS[key]


# ---------------------------------------------------------------------------------------------
# Bundle validation


def test_truncated_modified_or_missing_files_are_refused(bundles, tmp_path):
    b = copy_bundle(bundles[("onnx", "fused")], tmp_path)
    data = (b / "model.onnx").read_bytes()
    (b / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="model.onnx has .* bytes.*truncated"):
        Predictor(b)
    (b / "model.onnx").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BundleError, match="model.onnx does not match its sha256"):
        Predictor(b)
    (b / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        Predictor(b)


def test_a_branch_exported_for_another_trunk_is_refused(bundles, tmp_path):
    b = copy_bundle(bundles[("onnx", "split")], tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["trunk_fingerprint"] = "0" * 64  # the trunk and branches embed the real one
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="exported for trunk .* this bundle's trunk is 0000"):
        Predictor(b)


# ---------------------------------------------------------------------------------------------
# ctb-mobile verify


def verify(cli, tiny, bundle, tmp_path):
    out, recipe = tiny
    report = tmp_path / "report"
    code, stdout, err = cli("verify", bundle, "--recipe", recipe.path, "--out", out, "--report", report, "--limit", 40,
                            "--junit-xml", report / "junit.xml")
    return code, stdout, err, report


def junit_cases(report) -> dict:
    """(classname, name) -> failure message or None, after checking the file against the JUnit schema."""
    import xml.etree.ElementTree as ET

    import xmlschema

    xmlschema.XMLSchema(str(Path(__file__).with_name("data") / "junit-10.xsd")).validate(str(report / "junit.xml"))
    root = ET.parse(report / "junit.xml").getroot()
    return {(c.get("classname"), c.get("name")): (c.find("failure").get("message") if c.find("failure") is not None
                                                  else None) for c in root.iter("testcase")}


@pytest.mark.parametrize("key", [("onnx", "fused"), pytest.param(("android", "split"), marks=pytest.mark.slow)])
def test_verify_passes_and_writes_report_and_golden_vectors(cli, tiny, bundles, key, tmp_path):
    code, stdout, err, report = verify(cli, tiny, bundles[key], tmp_path)
    assert code == 0, stdout + err
    result = json.loads((report / "verify.json").read_text())
    assert result["ok"] and "# verify: PASS" in (report / "verify.md").read_text()
    cases = junit_cases(report)
    assert len(cases) > 3 * len(result["tasks"]) and not any(cases.values())
    for t in result["tasks"].values():
        assert t["max_abs"] <= check.TOLERANCES[(key[0], "fp32")]["max_abs"] and t["agreement"] == 1.0
        assert t["merge_max_abs"] <= 1e-4 and "/runs/" in t["single_task_source"]  # the run before merging
        assert 30 < t["rows"] <= 40 and t["token_agreement"] == 1.0
    golden = json.loads((report / "golden.json").read_text())
    p = Predictor(bundles[key])
    texts = [c["text"] for c in golden["cases"]]
    assert "" in texts and any(len(t) > 500 for t in texts)  # edge cases included
    for case, enc, pred in zip(golden["cases"], p.encode(texts), p.predict(texts)):
        assert case["input_ids"] == enc.ids and case["predictions"] == pred
        for task in golden["tasks"]:
            assert np.allclose(case["outputs"][task], case["pytorch_fp32"][task], atol=1e-4)


def test_verify_fails_on_a_changed_weight_with_a_per_task_report(cli, tiny, bundles, tmp_path):
    import onnx
    from onnx import numpy_helper

    b = copy_bundle(bundles[("onnx", "fused")], tmp_path)
    model = onnx.load(str(b / "model.onnx"))
    # the snips_intent head: the initializer with one row per intent label
    n_labels = len(next(t for t in json.loads((b / "manifest.json").read_text())["tasks"]
                        if t["name"] == "snips_intent")["labels"])
    init = next(i for i in model.graph.initializer if "snips_intent" in i.name and "out" in i.name
                and numpy_helper.to_array(i).ndim == 2 and n_labels in numpy_helper.to_array(i).shape)
    w = numpy_helper.to_array(init).copy()
    w[..., 0] += 0.5
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(b / "model.onnx"))
    code, stdout, err, _ = verify(cli, tiny, b, tmp_path)
    assert code == 1 and "FAIL bundle: " in err and "model.onnx does not match its sha256" in err
    reseal(b, "model.onnx")  # even with a matching checksum the outputs give it away, for that task only
    code, stdout, err, _report = verify(cli, tiny, b, tmp_path)
    assert code == 1 and "| parity snips_intent | **FAIL** | FAIL: max abs " in stdout
    assert "above the allowed 1.00e-04" in stdout  # the shortfall, not a line that reads like a pass
    assert "| parity snips_slots | pass |" in stdout and "| parity clinc_domain | pass |" in stdout
    cases = junit_cases(_report)  # the CI report: one failing case, with the figure and the limit
    failing = {k: v for k, v in cases.items() if v}
    assert list(failing) == [(f"verify.{b.name}.snips_intent", "outputs")]
    assert "above the allowed 1.00e-04" in failing[(f"verify.{b.name}.snips_intent", "outputs")]
    assert {n for (c, n) in cases if c.endswith(".snips_slots")} == {
        "labels", "token ids", "merged equals single-task", "outputs", "agreement"}


def test_verify_fails_on_swapped_labels(cli, tiny, bundles, tmp_path):
    b = copy_bundle(bundles[("onnx", "split")], tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    task = next(t for t in m["tasks"] if t["name"] == "snips_intent")
    task["labels"] = task["labels"][1:] + task["labels"][:1]  # the list in another order: every index moves
    (b / "manifest.json").write_text(json.dumps(m))
    code, stdout, _err, _ = verify(cli, tiny, b, tmp_path)  # the programs embed their labels' sha256: refused
    assert code == 1 and "| bundle | **FAIL** |" in stdout and "differs from the labels" in stdout


def test_verify_fails_on_a_truncated_file(cli, tiny, bundles, tmp_path):
    b = copy_bundle(bundles[("onnx", "split")], tmp_path)
    f = b / "branch_snips_slots.onnx"
    f.write_bytes(f.read_bytes()[:1000])
    code, _stdout, err, report = verify(cli, tiny, b, tmp_path)
    assert code == 1 and "branch_snips_slots.onnx has 1,000 bytes" in err
    assert not json.loads((report / "verify.json").read_text())["ok"]


def test_verify_fails_when_the_tokenizer_differs_from_training(cli, tiny, bundles, tmp_path):
    b = copy_bundle(bundles[("onnx", "fused")], tmp_path)
    tok = json.loads((b / "tokenizer.json").read_text())
    tok["normalizer"]["lowercase"] = False  # a cased tokenizer against an uncased model
    (b / "tokenizer.json").write_text(json.dumps(tok))
    reseal(b, "tokenizer.json")  # its checksum updated: the tokenizer fingerprint still gives it away at load
    code, stdout, err, _ = verify(cli, tiny, b, tmp_path)
    assert code == 1 and "FAIL bundle: " in err and "tokenizer/fingerprint" in err
    # a bundle exported from a store whose tokenizer is not training's is consistent in itself: verify sees it
    out, recipe = tiny
    store2 = tmp_path / "store2"
    shutil.copytree(out / "store", store2)
    t2 = json.loads((store2 / "tokenizer" / "tokenizer.json").read_text())
    vocab = t2["model"]["vocab"]
    vocab["the"], vocab["to"] = vocab["to"], vocab["the"]  # another model's vocabulary
    (store2 / "tokenizer" / "tokenizer.json").write_text(json.dumps(t2))
    (store2 / "tokenizer" / "vocab.txt").unlink()  # the bundle's vocab.txt then comes from the swapped model
    meta = json.loads((store2 / "store.json").read_text())  # a store made so, not edited: its checksums agree
    meta["tokenizer_sha256"] = {"tokenizer.json": file_sha256(store2 / "tokenizer" / "tokenizer.json")}
    (store2 / "store.json").write_text(json.dumps(meta))
    export_bundle(recipe, store2, "onnx", "fp32", "fused", tmp_path / "b2", log=lambda m: None)
    Predictor(tmp_path / "b2")  # loads: nothing inside the bundle disagrees
    code, stdout, _err, report = verify(cli, tiny, tmp_path / "b2", tmp_path)
    result = json.loads((report / "verify.json").read_text())
    assert code == 1 and "| tokenizer config | **FAIL** |" in stdout
    assert all(t["token_agreement"] < 1 for t in result["tasks"].values())
    assert "| tokenizer snips_intent | **FAIL** |" in stdout


def test_verify_bad_input(cli, tiny, bundles, tmp_path):
    out, recipe = tiny
    if platform.system() != "Darwin":  # a CoreML bundle cannot run here: say so instead of failing it
        b = copy_bundle(bundles[("onnx", "fused")], tmp_path)
        m = json.loads((b / "manifest.json").read_text())
        (b / "manifest.json").write_text(json.dumps({**m, "target": "ios"}))
        code, _, err = cli("verify", b, "--recipe", recipe.path, "--out", out, "--report", tmp_path / "r")
        assert code == 2 and "CoreML bundle" in err and "macOS" in err
    code, _, err = cli("verify", tmp_path / "nope", "--recipe", recipe.path, "--out", out,
                       "--report", tmp_path / "r")
    assert code == 2 and "bundle" in err and "not found" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli("verify", tmp_path / "empty", "--recipe", recipe.path, "--out", out,
                       "--report", tmp_path / "r")
    assert code == 1 and "FAIL bundle" in err and "no manifest.json" in err


def test_pair_tasks_need_pairs_and_single_text_tasks_refuse_them(bundles, tmp_path):
    b = copy_bundle(bundles[("onnx", "fused")], tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    next(t for t in m["tasks"] if t["name"] == "clinc_domain")["pair"] = True  # as if trained on sentence pairs
    (b / "manifest.json").write_text(json.dumps(m))
    p = Predictor(b)
    with pytest.raises(InputError, match="task 'clinc_domain' takes a text pair"):
        p.predict(["play jazz"])
    with pytest.raises(InputError, match="task 'snips_intent' takes one text"):
        p.predict(["play jazz"], pairs=["now"])
    (row,) = p.predict(["play jazz"], pairs=["in the kitchen"], tasks=["clinc_domain"])
    labels = next(t for t in m["tasks"] if t["name"] == "clinc_domain")["labels"]
    assert set(row) == {"clinc_domain"} and row["clinc_domain"]["label"] in labels
    enc = p.encode(["play jazz"], pairs=["in the kitchen"], tasks=["clinc_domain"])[0]
    assert enc.type_ids.count(1) == len(p.tokenizer.encode("in the kitchen", add_special_tokens=False).ids) + 1
    assert len(p.predict(["a " * 100], pairs=["b " * 100], tasks=["clinc_domain"])) == 1  # longest-first truncation
    assert len(p.encode(["a " * 100], pairs=["b " * 100], tasks=["clinc_domain"])[0].ids) == p.max_seq_len


def test_every_runtime_runs_on_the_threads_it_is_opened_with(tmp_path):
    """open_program(threads=N) pins ONNX Runtime's intra-op threads and ExecuTorch's thread pool, and each
    program says what it runs on (bench's --threads 1 once ran ExecuTorch on 2). ExecuTorch has one pool per
    process, which an XNNPACK method holds from its load: a program opened with other threads resizes it
    for every open program, and those still compute the same (they are loaded again on the new pool)."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings import portable_lib

    from runtime_py.backends import open_program

    module, x = torch.nn.Linear(8, 4).eval(), torch.randn(2, 8)
    torch.onnx.export(module, (x,), str(tmp_path / "m.onnx"), input_names=["x"], dynamo=False)
    ep = torch.export.export(module, (x,))
    (tmp_path / "m.pte").write_bytes(to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
                                     .to_executorch().buffer)
    feeds, want = {"x": x.numpy()}, module(x).detach().numpy()
    onnx_one = open_program("onnx", tmp_path / "m.onnx", ["x"], [], threads=1)
    assert onnx_one.threads == 1 and open_program("onnx", tmp_path / "m.onnx", ["x"], []).threads is None
    et_one = open_program("android", tmp_path / "m.pte", ["x"], [], threads=1)
    assert et_one.threads == 1 == portable_lib._threadpool_get_thread_count()
    assert np.allclose(et_one.run(feeds)[0], want, atol=1e-5)
    et_two = open_program("android", tmp_path / "m.pte", ["x"], [], threads=2)
    assert et_one.threads == et_two.threads == 2
    for program in (et_one, et_two, open_program("android", tmp_path / "m.pte", ["x"], [], threads=1)):
        assert np.allclose(program.run(feeds)[0], want, atol=1e-5)
    assert et_one.threads == et_two.threads == 1
