"""Issue 23, sections 3 and 6: runtime_py raises only its documented errors. Every hostile manifest edit,
bad argument or damaged program gives an InputError (the caller's arguments) or a BundleError (the
bundle), in one line naming the field or argument and the fix; never a TypeError, KeyError,
RecursionError or a raw ONNX Runtime error. And a label edited in manifest.json is caught by the
labels_sha256 the exporter embeds in each program."""

import json

import numpy as np
import pytest
from conftest import copy_bundle, reseal

from runtime_py import BundleError, InputError, Predictor

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def fused(tiny_bundles):
    return tiny_bundles[("onnx", "fused")]


@pytest.fixture(scope="module")
def split(tiny_bundles):
    return tiny_bundles[("onnx", "split")]


@pytest.fixture(scope="module")
def predictor(fused):
    return Predictor(fused)


def edit(bundle, change):
    m = json.loads((bundle / "manifest.json").read_text())
    change(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def one_line(e, *needles):
    text = str(e.value)
    assert "\n" not in text and all(n in text for n in needles), text


def _inputs(m, key, value, program=0):
    for t in m["programs"][program]["inputs"]:
        t[key] = value


def _seq_max(m, value):
    for p in m["programs"]:
        for t in p["inputs"] + p["outputs"]:
            for d in t["dims"][1:2]:
                if "name" in d:
                    d["max"] = value


def _max_seq_len(m, value, dims=False):
    m["max_seq_len"] = m["tokenizer"]["max_seq_len"] = value
    if dims:
        _seq_max(m, value)


def _batch(m, lo, hi):
    for p in m["programs"]:
        for t in p["inputs"] + p["outputs"]:
            t["dims"][0].update(min=lo, max=hi)


def _program_file(m, name):
    m["programs"][0]["file"] = name
    m["programs"][0]["files"] = [name]


def _label(m):
    t = next(t for t in m["tasks"] if t["labels"])
    t["labels"][0] = t["labels"][0][:-1] + chr(ord(t["labels"][0][-1]) ^ 1)  # one byte of one label


MANIFEST_EDITS = {  # name: (edit, needles in the BundleError)
    "input dtype float32": (lambda m: _inputs(m, "dtype", "float32"), ["programs/0/inputs/0/dtype", "float32"]),
    "input dtype int32 (the program takes int64)": (lambda m: _inputs(m, "dtype", "int32"),
                                                    ["programs/model/inputs/0/dtype", "takes int64"]),
    "max_seq_len 8192": (lambda m: _max_seq_len(m, 8192), ["max_seq_len", "8192 is above the 32 positions"]),
    "max_seq_len 8192 with every seq dim": (lambda m: _max_seq_len(m, 8192, dims=True),
                                            ["max_seq_len is 8192", "truncates at 32"]),
    "program file set to tokenizer.json": (lambda m: _program_file(m, "tokenizer.json"),
                                           ["programs/0/file", "not a onnx program"]),
    "program file set to a tokenizer file with an onnx name": (
        lambda m: (_program_file(m, "vocab.onnx"), m["tokenizer"].update(vocab="vocab.onnx")),
        ["programs/0/files", "tokenizer file"]),
    "target android on an ONNX file": (lambda m: m.update(target="android"), ["programs/0/file",
                                                                             "not a android program"]),
    "batch dim min 5 > max 2": (lambda m: _batch(m, 5, 2), ["dims/0", "min 5 is above max 2"]),
    "one byte of a label": (_label, ["tasks/*/labels", "labels_sha256", "export the bundle again"]),
    "labels of a task in another order": (lambda m: m["tasks"][0]["labels"].reverse(), ["labels_sha256"]),
}


@pytest.mark.parametrize("case", list(MANIFEST_EDITS))
def test_a_hostile_manifest_edit_is_one_bundle_error_naming_the_field(fused, tmp_path, case):
    change, needles = MANIFEST_EDITS[case]
    b = copy_bundle(fused, tmp_path)
    edit(b, change)
    with pytest.raises(BundleError) as e:
        Predictor(b)
    one_line(e, *needles)


def test_a_deeply_nested_manifest_is_a_bundle_error(fused, tmp_path):
    b = copy_bundle(fused, tmp_path)
    (b / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError) as e:
        Predictor(b)
    one_line(e, "nests", "export the bundle again")
    deep = json.loads((fused / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps(deep)[:-1] + ', "quantization": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(BundleError):
        Predictor(b)


@pytest.mark.parametrize("attach", [0, 99])
def test_a_split_bundle_whose_task_attaches_where_the_trunk_gives_nothing_is_a_bundle_error(split, tmp_path, attach):
    b = copy_bundle(split, tmp_path)
    edit(b, lambda m: m["tasks"][0].update(attach=attach))
    with pytest.raises(BundleError) as e:
        Predictor(b)
    one_line(e, "tasks/0/attach", f"{attach} is not a depth the trunk program returns")


def test_a_program_without_labels_sha256_is_refused(fused, tmp_path):
    import onnx

    b = copy_bundle(fused, tmp_path)
    model = onnx.load(str(b / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["ctb_mobile_manifest"])
    assert len(meta.pop("labels_sha256")) == 64  # the exporter embeds it
    onnx.helper.set_model_props(model, {**props, "ctb_mobile_manifest": json.dumps(meta, sort_keys=True)})
    onnx.save(model, str(b / "model.onnx"))
    reseal(b, "model.onnx")
    with pytest.raises(BundleError) as e:
        Predictor(b)
    one_line(e, "no labels_sha256", "export the bundle again")


def test_a_truncated_program_without_the_file_check_is_a_bundle_error(fused, tmp_path):
    b = copy_bundle(fused, tmp_path)
    data = (b / "model.onnx").read_bytes()
    (b / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(BundleError) as e:
        Predictor(b, check_files=False)
    one_line(e, "model.onnx", "programs/model/file", "export the bundle again")
    (b / "model.onnx").write_bytes((b / "tokenizer.json").read_bytes())  # another file under the program's name
    with pytest.raises(BundleError):
        Predictor(b, check_files=False)


@pytest.mark.slow  # importing ExecuTorch takes about 10 s
def test_an_onnx_file_renamed_to_an_android_program_is_a_bundle_error(fused, tmp_path):
    pytest.importorskip("executorch")
    b = copy_bundle(fused, tmp_path)
    (b / "model.onnx").rename(b / "model.pte")

    def change(m):
        m.update(target="android")
        _program_file(m, "model.pte")
        m["files"]["model.pte"] = m["files"].pop("model.onnx")

    edit(b, change)
    with pytest.raises(BundleError) as e:
        Predictor(b)
    one_line(e, "model.pte", "not a android program this runtime can load")


# ---------------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize("kwargs, needle", [
    ({"bundle_dir": None}, "bundle_dir is NoneType"),
    ({"bundle_dir": 3}, "bundle_dir is int"),
    ({"threads": "x"}, "threads = 'x'"),
    ({"threads": -1}, "threads = -1"),
    ({"threads": 1.5}, "threads = 1.5"),
    ({"tasks": [["x"]]}, "tasks holds list"),
    ({"tasks": [None]}, "tasks holds NoneType"),
    ({"tasks": "snips_intent"}, "tasks is str"),
    ({"check_files": "no"}, "check_files = 'no'"),
])
def test_bad_constructor_arguments_are_input_errors(fused, kwargs, needle):
    kwargs = {"bundle_dir": fused, **kwargs}
    with pytest.raises(InputError) as e:
        Predictor(**kwargs)
    one_line(e, needle)


@pytest.mark.parametrize("batch_size", ["8", None, 2.5, 0, -3, True])
def test_a_batch_size_that_is_not_a_positive_integer_is_an_input_error(predictor, batch_size):
    for call in (lambda: predictor.predict(["play jazz"], batch_size=batch_size),
                 lambda: predictor.raw(["play jazz"], batch_size=batch_size)):
        with pytest.raises(InputError) as e:
            call()
        one_line(e, "batch_size", "must be an integer >= 1")
    assert predictor.predict(["play jazz"], batch_size=np.int64(2))  # a numpy integer is an integer


@pytest.mark.parametrize("case", ["float arrays", "float64 mask", "one dimension", "shapes differ", "lists",
                                  "batch too large", "seq too long", "unknown task", "task not a name"])
def test_run_with_bad_arrays_is_an_input_error(predictor, case):
    ids, mask, tt = (np.ones((2, 5), np.int64) for _ in range(3))
    tasks = None
    if case == "float arrays":
        ids, mask, tt = (a.astype(np.float32) for a in (ids, mask, tt))
    elif case == "float64 mask":
        mask = mask.astype(np.float64)
    elif case == "one dimension":
        ids, mask, tt = ids[0], mask[0], tt[0]
    elif case == "shapes differ":
        tt = np.ones((2, 4), np.int64)
    elif case == "lists":
        ids = ids.tolist()
    elif case == "batch too large":
        ids, mask, tt = (np.ones((predictor.max_batch + 1, 5), np.int64) for _ in range(3))
    elif case == "seq too long":
        ids, mask, tt = (np.ones((1, predictor.max_seq_len + 1), np.int64) for _ in range(3))
    elif case == "unknown task":
        tasks = ["nope"]
    else:
        tasks = [["snips_intent"]]
    with pytest.raises(InputError) as e:
        predictor.run(input_ids=ids, attention_mask=mask, token_type_ids=tt, tasks=tasks)
    assert "\n" not in str(e.value)


def test_run_takes_int32_arrays_as_the_program_dtype(predictor):
    ids, mask, tt = (np.ones((1, 4), np.int32) for _ in range(3))
    out = predictor.run(input_ids=ids, attention_mask=mask, token_type_ids=tt)
    assert set(out) == set(predictor.tasks)
