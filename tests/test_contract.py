"""The bundle contract (runtime_py/CONTRACT.md, manifest.schema.json): every exported bundle validates,
the runtime refuses what breaks it in one line naming the field, the bundle's tokenizer.json is the
bundle's tokenization, outputs are pinned by order and shape, spans decode at training's words, and
`ctb-mobile embed` puts only verified bundles into the apps."""

import json
import shutil

import numpy as np
import pytest
from conftest import ROOT, copy_bundle, reseal

from runtime_py import BundleError, Predictor
from runtime_py.bundle import file_sha256
from runtime_py.manifest import SCHEMA_FILE, labels_sha256, parse
from runtime_py.predictor import bio_spans
from toolchain.export import export_bundle

pytest.importorskip("onnxruntime")
pytest.importorskip("executorch")


def test_every_registered_target_and_precision_is_one_the_schema_and_both_apps_accept():
    """A target or precision added to runtime_py/targets.py (int4 was) must reach manifest.schema.json and
    the Kotlin and Swift manifest readers too, or its bundles are refused there."""
    import re

    from runtime_py.targets import TARGETS

    def listed(path, name):  # `val NAME = listOf("a", ...)` (Kotlin) or `let name = ["a", ...]` (Swift)
        return set(re.findall(r'"([^"]+)"', re.search(rf"\b{name} = (.*)", (ROOT / path).read_text()).group(1)))

    schema = json.loads(SCHEMA_FILE.read_text())
    kotlin, swift = "android_demo/core/src/main/kotlin/ctbmobile/core/Manifest.kt", "ios_demo/CTBKit/Sources/CTBKit/Manifest.swift"
    assert set(TARGETS) == set(schema["properties"]["target"]["enum"]) == listed(kotlin, "TARGETS") \
        == listed(swift, "targets")
    precisions = {p for t in TARGETS.values() for p in t.precisions}
    for accepted in (set(schema["$defs"]["precision"]["enum"]), listed(kotlin, "PRECISIONS"), listed(swift, "precisions")):
        assert precisions <= accepted, precisions - accepted


def schema_validator():
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA_FILE.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.fixture(scope="module")
def bundles(tiny_bundles):
    return tiny_bundles


def rewrite(bundle, edit):
    m = json.loads((bundle / "manifest.json").read_text())
    edit(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


# ---------------------------------------------------------------------------------------------
# schema


# export_bundle validates every manifest against the schema before it writes the bundle, so every bundle
# any test exports is checked; these are the combinations no other test exports (test_export.py has the
# rest), checked here once more with the plain jsonschema validator.
@pytest.mark.slow
@pytest.mark.parametrize("target, layout, precision", [
    ("ios", "fused", "fp16"), ("ios", "split", "int8"), ("onnx", "split", "int8-static")])
def test_every_target_layout_and_precision_gives_a_manifest_the_schema_accepts(tiny, tmp_path, target, layout,
                                                                                precision):
    out, recipe = tiny
    m = export_bundle(recipe, out / "store", target, precision, layout, tmp_path / "b", log=lambda m: None,
                      guard_examples=32)
    on_disk = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert on_disk == m
    errors = list(schema_validator().iter_errors(on_disk))
    assert not errors, errors[0].message
    spec = parse(on_disk)
    for p in spec.programs:  # outputs in order, each with the task it feeds and a shape of the right rank
        assert [o.index for o in p.outputs] == list(range(len(p.outputs)))
        ints = "int32" if target == "ios" else "int64"
        assert [(i.name, i.dtype) for i in p.inputs][-1][1] == ints or p.name.startswith("branch_")
    for t in spec.tasks:
        o = spec.program(t.program).output(t.output)
        assert o.task == t.name and len(o.dims) == {"classification": 2, "tagging": 3, "regression": 1}[t.type]
        assert o.dims[-1].size == len(t.labels)


@pytest.mark.slow
def test_the_exported_android_bundle_lists_inputs_in_the_programs_positional_order(bundles):
    spec = Predictor(bundles[("android", "split")]).spec
    assert [i.name for i in spec.program("trunk").inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    branch = spec.program("branch_snips_slots")
    assert [(i.name, i.dtype, len(i.dims)) for i in branch.inputs] == [("hidden", "float32", 3),
                                                                        ("attention_mask", "int64", 2)]
    trunk_out = spec.program("trunk").outputs
    assert all(o.task is None and o.name == f"hidden_{o.depth}" for o in trunk_out)


MUTATIONS = [
    (lambda m: m.pop("tasks"), "field \\(top level\\): 'tasks' is a required property"),
    (lambda m: m.update(max_seq_len="64"), "field max_seq_len: '64' is not of type 'integer'"),
    (lambda m: m["tasks"][0].update(type="ranking"), "field tasks/0/type"),
    (lambda m: m["tasks"][0].pop("labels"), "field tasks/0: 'labels' is a required property"),
    (lambda m: m["tasks"][0].update(labels=m["tasks"][0]["labels"][:-1]), "field tasks/0/labels: .* labels but output"),
    (lambda m: m["tasks"][0].update(name="../x"), "field tasks/0/name"),
    (lambda m: m["programs"][0].update(file="../model.onnx"), "field programs/0/file"),
    (lambda m: m["programs"][0].update(file="/etc/passwd"), "field programs/0/file"),
    (lambda m: m["tokenizer"].update(file="../../tokenizer.json"), "field tokenizer/file"),
    (lambda m: m["programs"][0]["outputs"][0].update(index=5), "field programs/0/outputs: indices"),
    (lambda m: m["programs"][0]["outputs"][1]["dims"].pop(), "field programs/0/outputs/1/dims: a \\w+ output has rank"),
    (lambda m: m["programs"][0]["inputs"][0].update(dtype="int16"), "field programs/0/inputs/0/dtype"),
    (lambda m: m["programs"][0]["inputs"][0]["dims"][1].pop("max"), "field programs/0/inputs/0/dims/1"),
    (lambda m: m["tasks"][0].update(output="nope"), "field tasks/0/output: 'nope' is not an output"),
    (lambda m: m["tasks"][0].update(program="trunk"), "field tasks/0/program"),
    (lambda m: m["files"].pop("tokenizer_tables.json"), "field files: tokenizer_tables.json is used but has no checksum"),
    (lambda m: m["files"]["model.onnx"].update(sha256="xyz"), "field files/model.onnx/sha256"),
    (lambda m: m.update(extra=1), "field \\(top level\\): Additional properties"),
    (lambda m: m.update(schema_version=1), "schema_version 1, this runtime reads 2"),
    (lambda m: m.update(schema_version=3), "schema_version 3, this runtime reads 2"),
]


@pytest.mark.parametrize("edit, message", MUTATIONS)
def test_an_edited_manifest_is_one_bundle_error_naming_the_field(bundles, tmp_path, edit, message):
    b = copy_bundle(bundles[("onnx", "fused")], tmp_path)
    rewrite(b, edit)
    with pytest.raises(BundleError, match=message) as e:
        Predictor(b)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# the bundle's tokenizer.json, its fingerprint and tables


def test_bundle_tokenizer_json_truncates_at_max_seq_len_and_does_not_pad(bundles):
    from tokenizers import Tokenizer

    b = bundles[("onnx", "fused")]
    p = Predictor(b)
    plain = Tokenizer.from_file(str(b / "tokenizer.json"))  # as any app's tokenizers binding loads it
    assert plain.padding is None
    assert plain.truncation["max_length"] == p.max_seq_len == 32 and plain.truncation["strategy"] == "longest_first"
    texts = ["play some jazz", "what is " + "very " * 100 + "long", "", "Réveille-moi à 7h ☕"]
    for text, enc in zip(texts, p.encode(texts)):
        assert plain.encode(text).ids == enc.ids and len(enc.ids) <= 32
    pair = plain.encode("a " * 40, "b " * 10)
    assert len(pair.ids) == 32 and pair.type_ids.count(1) == 11  # longest first: the long side gives way


def test_a_tokenizer_swapped_with_its_checksum_updated_is_refused(bundles, tmp_path):
    from tokenizers import Tokenizer

    b = copy_bundle(bundles[("onnx", "fused")], tmp_path)
    tok = Tokenizer.from_file(str(b / "tokenizer.json"))
    tok.enable_truncation(max_length=16)  # another tokenization, checksums made to match
    tok.save(str(b / "tokenizer.json"))
    reseal(b, "tokenizer.json")
    with pytest.raises(BundleError, match="tokenizer/fingerprint"):
        Predictor(b)
    rewrite(b, lambda m: m["tokenizer"].update(fingerprint=file_sha256(b / "tokenizer.json")))  # fingerprint forged too
    with pytest.raises(BundleError, match="tokenizer/fingerprint|exported for tokenizer"):
        Predictor(b)


def test_tokenizer_tables_reproduce_the_normaliser_and_pre_tokenizer(bundles):
    """Spot-check the probed tables against the library, code point by code point."""
    import random

    from tokenizers import Tokenizer

    b = bundles[("onnx", "fused")]
    tok = Tokenizer.from_file(str(b / "tokenizer.json"))
    tables = json.loads((b / "tokenizer_tables.json").read_text())

    def within(cp, key):
        return any(a <= cp <= c for a, c in tables[key])

    rng = random.Random(0)
    points = list(range(0x250)) + [0x3000, 0x4E2D, 0x1FAE0, 0xE0001, 0xFFFD, 0x0378] + \
        [rng.randint(0x250, 0x10FFFF) for _ in range(3000)]
    for cp in (p for p in points if not 0xD800 <= p <= 0xDFFF):
        c = chr(cp)
        n = tok.normalizer.normalize_str(c)
        if within(cp, "remove"):
            assert n == "", hex(cp)
        elif within(cp, "space"):
            assert n == " ", hex(cp)
        elif within(cp, "pad"):
            assert n == f" {c} ", hex(cp)
        else:
            assert [ord(x) for x in n] == tables["map"].get(str(cp), [cp]), hex(cp)
        pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(f"a{c}b")]
        assert (pieces == ["a", "b"]) == within(cp, "whitespace"), hex(cp)
        assert (pieces == ["a", c, "b"]) == within(cp, "punctuation"), hex(cp)


# ---------------------------------------------------------------------------------------------
# outputs pinned by order and shape


def _reorder_program(tiny, bundle, target):
    """Replace the fused program with one whose outputs come back in reverse order, checksums updated,
    while its embedded metadata claims the manifest's order (as a buggy exporter would)."""
    from toolchain.export import backend
    from toolchain.export.graph import Fused, Graph, example_inputs
    from toolchain.store import load_merged

    out, _ = tiny
    model, tok, _ = load_merged(out / "store")
    m = json.loads((bundle / "manifest.json").read_text())
    listed = [o["name"] for o in m["programs"][0]["outputs"]]
    order = listed[::-1]
    example = example_inputs(tok, ["play some jazz", "wake me up"], 32)
    graph = Graph("model", Fused(model, order).eval(), ("input_ids", "attention_mask", "token_type_ids"),
                  tuple(order), example)
    meta = {"target": target, "program": "model", "trunk_fingerprint": m["trunk_fingerprint"],
            "tokenizer_fingerprint": m["tokenizer"]["fingerprint"], "outputs": listed, "tasks": listed,
            "labels_sha256": labels_sha256({t["name"]: t["labels"] for t in m["tasks"] if t["name"] in listed})}
    for f in m["programs"][0]["files"]:
        (bundle / f).unlink()
    files = backend(target).export(graph, bundle, "fp32", 32, meta)
    reseal(bundle, *files)


@pytest.mark.parametrize("target", ["onnx", pytest.param("android", marks=pytest.mark.slow)])
def test_a_program_whose_outputs_come_in_another_order_fails_to_load(tiny, bundles, tmp_path, target):
    b = copy_bundle(bundles[(target, "fused")], tmp_path)
    Predictor(b)  # the original loads
    _reorder_program(tiny, b, target)  # the program's real order differs: the probe's shapes give it away
    with pytest.raises(BundleError, match="output 0 has shape .* not in the manifest's order"):
        Predictor(b)

    def reverse_outputs(m):  # the manifest lists another order than the program embeds
        outs = m["programs"][0]["outputs"][::-1]
        m["programs"][0]["outputs"] = [{**o, "index": i} for i, o in enumerate(outs)]

    b2 = copy_bundle(bundles[(target, "fused")], tmp_path, "b2")
    rewrite(b2, reverse_outputs)
    with pytest.raises(BundleError, match="returns outputs .*snips.*manifest field programs/model/outputs lists"):
        Predictor(b2)


def test_an_output_count_that_differs_from_the_manifest_fails_to_load(bundles, tmp_path):
    b = copy_bundle(bundles[("onnx", "fused")], tmp_path)

    def drop_last_task(m):
        gone = m["tasks"].pop()["name"]
        outs = m["programs"][0]["outputs"]
        m["programs"][0]["outputs"] = [o for o in outs if o["task"] != gone]

    rewrite(b, drop_last_task)
    with pytest.raises(BundleError, match="returns outputs|returns 3 outputs"):
        Predictor(b)


# ---------------------------------------------------------------------------------------------
# spans: words as training splits them, BIO as seqeval


def test_known_answer_span_cases_decode_as_written(bundles):
    from tokenizers import Tokenizer

    from runtime_py.predictor import word_breaks
    from toolchain.golden import span_golden

    b = bundles[("onnx", "fused")]
    tok = Tokenizer.from_file(str(b / "tokenizer.json"))
    breaks = word_breaks(json.loads((b / "tokenizer_tables.json").read_text()))
    golden = span_golden(tok, breaks, 32)  # raises on any case runtime_py decodes otherwise
    names = {c["name"] for c in golden["cases"]}
    assert {"i_without_b", "b_followed_by_b_same_type", "b_followed_by_i_other_type", "words_of_several_pieces",
            "period_inside_a_word", "apostrophe_inside_a_word", "hyphen_inside_a_word", "slash_inside_a_word",
            "span_cut_at_truncation"} <= names
    several = next(c for c in golden["cases"] if c["name"] == "words_of_several_pieces")
    assert len(several["ids"]) > 2 + 4  # some word really is several pieces
    cut = next(c for c in golden["cases"] if c["name"] == "span_cut_at_truncation")
    assert len(cut["ids"]) == cut["max_seq_len"] == 8


def test_punctuation_inside_a_word_stays_one_word_in_the_predictor(bundles):
    """The tokenizer's own word ids split "U.S." in four; the predictor groups as training did."""
    p = Predictor(bundles[("onnx", "fused")])
    text = "the U.S. and O'Brien"
    enc = p.encode([text])[0]
    assert len({w for w in enc.word_ids if w is not None}) > 4  # what the old decoder used
    labels = p.tasks["snips_slots"].labels
    out = np.full((len(enc.ids), len(labels)), -5.0, dtype=np.float32)
    b_tag = next(i for i, lab in enumerate(labels) if lab.startswith("B-"))
    out[:, labels.index("O")] = 0.0
    for j, (a, _) in enumerate(enc.offsets):
        if a in (4, 13) and enc.sequence_ids[j] == 0 and not enc.special_tokens_mask[j]:
            out[j, b_tag] = 5.0  # the first piece of "U.S." and of "O'Brien"
    spans = p.decode("snips_slots", out, enc, text)["spans"]
    assert [(s["text"], s["start"], s["end"]) for s in spans] == [("U.S.", 4, 8), ("O'Brien", 13, 20)]


def test_bio_decoding_equals_seqeval_entity_extraction():
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from seqeval.metrics.sequence_labeling import get_entities

    tags = st.sampled_from(["O", "B-X", "I-X", "B-Y", "I-Y"])

    @settings(max_examples=400, deadline=None)
    @given(st.lists(tags, max_size=12))
    def check(seq):
        extents = [(2 * i, 2 * i + 1) for i in range(len(seq))]
        text = " ".join("w" for _ in seq)
        got = [(s["label"], s["start"] // 2, (s["end"] - 1) // 2) for s in bio_spans(seq, extents, text)]
        assert got == [tuple(e) for e in get_entities(list(seq))]

    check()


# ---------------------------------------------------------------------------------------------
# ctb-mobile embed


def _verified(tiny, b):
    from toolchain.verify import verify

    out, recipe = tiny
    report = b.with_name(b.name + ".verify")
    if not (report / "verify.json").is_file():
        result = verify(b, recipe, out / "store", report, runs_dir=out, limit=24, golden=2, log=lambda m: None)
        assert result["ok"]
    return b, report


@pytest.fixture(scope="module")
def verified(tiny, bundles):
    """The android bundle, verified: what `embed` puts into the Android demo."""
    return _verified(tiny, bundles[("android", "fused")])


@pytest.fixture(scope="module")
def verified_onnx(tiny, bundles):
    """The onnx bundle, verified: the golden files do not depend on the target."""
    return _verified(tiny, bundles[("onnx", "fused")])


def test_verify_writes_the_app_golden_files(verified_onnx):
    b, report = verified_onnx
    tg = json.loads((report / "golden_tokenizer.json").read_text())
    assert len(tg["cases"]) >= 2000
    groups = {c["group"] for c in tg["cases"]}
    assert {"snips_dev", "clinc150_dev", "accents_nfc", "accents_nfd", "cjk", "thai", "arabic", "hebrew", "emoji",
            "control_format", "special_tokens", "long_words", "whitespace", "truncation", "pairs"} <= groups
    p = Predictor(b)
    singles = [c for c in tg["cases"] if c["pair"] is None]
    assert [e.ids for e in p.encode([c["text"] for c in singles[:400]])] == [c["ids"] for c in singles[:400]]
    assert any(len(c["ids"]) == p.max_seq_len for c in tg["cases"] if c["pair"] is not None)
    spans = json.loads((report / "golden_spans.json").read_text())
    assert len(spans["cases"]) >= 10 and all(len(c["label_ids"]) == len(c["ids"]) for c in spans["cases"])
    v = json.loads((report / "verify.json").read_text())
    assert v["manifest_sha256"] == file_sha256(b / "manifest.json") and v["golden"]["tokenizer_cases"] == len(tg["cases"])


@pytest.mark.slow
def test_embed_copies_a_verified_bundle_and_its_golden_files(cli, verified, tmp_path):
    b, _ = verified
    app = tmp_path / "android_demo"
    app.mkdir()
    code, _, err = cli("embed", b, "--app", "android_demo", "--app-dir", app)
    assert code == 0, err
    dest = app / "app/src/main/assets/bundle"
    assert Predictor(dest).predict_one("play some jazz") == Predictor(b).predict_one("play some jazz")
    assert sorted(f.name for f in (app / "app/src/androidTest/assets/golden").iterdir()) == \
        ["golden.json", "golden_spans.json", "golden_tokenizer.json", "verify.json"]


@pytest.mark.slow
def test_embed_refuses_unverified_failed_stale_tampered_and_foreign_bundles(cli, verified, bundles, tmp_path):
    b, report = verified
    app = tmp_path / "android_demo"
    app.mkdir()

    def embed(bundle, *extra, app_name="android_demo"):
        code, _, err = cli("embed", bundle, "--app", app_name, "--app-dir", app, *extra)
        assert code == 2 and err.count("\n") == 1, err
        assert not (app / "app").exists()  # nothing written
        return err

    assert "no readable verify report" in embed(bundles[("android", "split")])  # never verified
    c = copy_bundle(b, tmp_path, "c")
    shutil.copytree(report, tmp_path / "c.verify")
    failed = json.loads((report / "verify.json").read_text())
    failed["ok"] = False
    failed["checks"][0]["ok"] = False
    (tmp_path / "c.verify" / "verify.json").write_text(json.dumps(failed))
    assert "failed verify (bundle)" in embed(c)
    rewrite(c, lambda m: m.update(created="later"))  # the report is now for another manifest
    shutil.copyfile(report / "verify.json", tmp_path / "c.verify" / "verify.json")
    assert "is for another bundle" in embed(c)
    d = copy_bundle(b, tmp_path, "d")
    shutil.copytree(report, tmp_path / "d.verify")
    data = bytearray((d / "model.pte").read_bytes())
    data[len(data) // 2] ^= 1
    (d / "model.pte").write_bytes(bytes(data))
    assert "does not match its sha256" in embed(d)
    assert "ios_demo runs ios or onnx bundles (CoreML or ONNX Runtime); " in embed(b, app_name="ios_demo")
    onnx = bundles[("onnx", "fused")]  # both apps take ONNX bundles: this one is refused for its missing report only
    assert "has no readable verify report" in embed(onnx) and "has no readable verify report" in embed(
        onnx, app_name="ios_demo")
    assert "unknown app 'web'" in embed(b, app_name="web")


def test_golden_json_is_decoded_identically_from_its_recorded_outputs(verified_onnx):
    """What the app tests do with golden.json: decode the recorded outputs, get the recorded predictions."""
    from tokenizers import Tokenizer

    b, report = verified_onnx
    p = Predictor(b)
    golden = json.loads((report / "golden.json").read_text())
    tok = Tokenizer.from_file(str(b / "tokenizer.json"))
    for case in golden["cases"]:
        enc = tok.encode(case["text"])
        assert enc.ids == case["input_ids"]
        for task in golden["tasks"]:
            got = p.decode(task, np.asarray(case["outputs"][task], dtype=np.float32), enc, case["text"])
            want = case["predictions"][task]
            if "score" in want:
                assert got["label"] == want["label"] and abs(got["score"] - want["score"]) < 1e-5
            else:
                assert got == want
    assert golden["tasks"] == list(p.tasks)
