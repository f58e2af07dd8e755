"""The exported CoreML program takes what CoreMLBackend.swift feeds it, and gives what it reads.

CoreML cannot run off Apple platforms and no Swift compiler runs here, so a mismatch between the
exporter and the iOS app (an input name, int64 ids where CoreML takes int32, a sequence range other
than 1..max_seq_len, an output the app reads under another name or type) would otherwise surface
only on a phone. This test exports a tiny CoreML bundle, reads the .mlpackage spec with coremltools
(no prediction: that needs macOS), reads what the Swift backend feeds from its source, and checks
the three against each other and against the manifest:

- the Swift backend feeds inputs by the manifest's names, as MLMultiArrays of the type its
  `inputTypes` table gives for the manifest's dtype, and reads outputs by the manifest's names;
- the program's inputs are exactly the manifest's, of that multiarray type, batch 1 and seq
  1..max_seq_len as the manifest's dims say (the tokenizer truncates at max_seq_len);
- the program's outputs are the manifest's, in order, of a type the Swift backend reads, matching
  the manifest's dtype; its embedded metadata sits under the key the Swift backend reads.

test_export.py's test_coreml_package_structure checks the package against the manifest alone;
this one adds the Swift side and the dtypes. The Swift-source check runs in the default tier; the
export-based ones are `slow` (the tiny store and a CoreML split export take about 2 minutes on a
2-core machine). fp16 programs return float32 outputs, as their manifest says (they returned
FLOAT16 until the exporter declared the output type).
"""

import json
import re

import pytest
from conftest import ROOT

SWIFT = ROOT / "ios_demo/CTBKit/Sources/CTBKit/CoreMLBackend.swift"
RUNNER = ROOT / "ios_demo/CTBKit/Sources/CTBKit/MultiTaskRunner.swift"

# MLMultiArrayDataType case (Swift) -> ArrayFeatureType.ArrayDataType name (the spec)
SWIFT_TO_SPEC = {"int32": "INT32", "float32": "FLOAT32", "float16": "FLOAT16", "double": "DOUBLE"}
# manifest dtype -> the spec's ArrayDataType name
MANIFEST_TO_SPEC = {"int32": "INT32", "float32": "FLOAT32", "float16": "FLOAT16"}


def swift_source(path=SWIFT) -> str:
    """The source without comments, so that documentation cannot satisfy a check."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def swift_contract(src: str) -> dict:
    """What CoreMLBackend.swift feeds and reads, from its source."""
    table = re.search(r"static let inputTypes: \[String: MLMultiArrayDataType\] = \[([^\]]*)\]", src)
    assert table, f"{SWIFT.name}: no `static let inputTypes: [String: MLMultiArrayDataType] = [...]` table"
    input_types = dict(re.findall(r'"(\w+)"\s*:\s*\.(\w+)', table.group(1)))
    assert input_types, f"{SWIFT.name}: inputTypes is empty"
    key = re.search(r'static let metadataKey = "([^"]+)"', src)
    assert key, f"{SWIFT.name}: no metadataKey"
    reads = re.search(r"static func tensor\(_ array: MLMultiArray.*?\n    }\n", src, flags=re.S)
    assert reads, f"{SWIFT.name}: no `static func tensor(_ array: MLMultiArray, ...)` that reads outputs"
    output_types = set(re.findall(r"case ((?:\.\w+)(?:,\s*\.\w+)*):", reads.group(0)))
    output_types = {t.strip().lstrip(".") for group in output_types for t in group.split(",")}
    return {"input_types": input_types, "metadata_key": key.group(1), "output_types": output_types}


def check_swift_feeds_by_the_manifest(src: str, manifest: dict):
    """Inputs by the manifest's names with the table's type; outputs by the manifest's names."""
    assert re.search(r"for \(input, tensor\) in zip\(spec\.inputs, inputs\)", src), \
        f"{SWIFT.name}: inputs are not fed in the manifest's order (zip(spec.inputs, inputs))"
    assert re.search(r"features\[input\.name\]\s*=", src), f"{SWIFT.name}: inputs are not fed by the manifest's names"
    assert re.search(r"CoreMLBackend\.inputTypes\[input\.dtype\]", src), \
        f"{SWIFT.name}: the multiarray type does not come from inputTypes[the manifest's dtype]"
    assert re.search(r"MLMultiArray\(shape: shape, dataType: type\)", src), \
        f"{SWIFT.name}: MLMultiArray is not made with the type looked up in inputTypes"
    int32_branch = re.search(r"case \.int32:(.*?)default:", src, flags=re.S)
    assert int32_branch and "as: Int32.self" in int32_branch.group(1), \
        f"{SWIFT.name}: the .int32 multiarray is not filled with Int32 values"
    assert re.search(r"for output in spec\.outputs", src) and re.search(r"featureValue\(for: output\.name\)", src), \
        f"{SWIFT.name}: outputs are not read by the manifest's names in its order"
    names = {i["name"] for p in manifest["programs"] for i in p["inputs"]} | \
            {o["name"] for p in manifest["programs"] for o in p["outputs"]}
    literal = sorted(n for n in names if f'"{n}"' in src)
    assert not literal, f"{SWIFT.name} names tensors itself ({literal}); it must take them from the manifest"


def check_program(spec_path, program: dict, manifest: dict, swift: dict):
    import coremltools as ct

    from toolchain.export import coreml

    d = coreml.describe(spec_path)
    where = program["file"]
    assert set(d["inputs"]) == {i["name"] for i in program["inputs"]}, (where, sorted(d["inputs"]), program["inputs"])
    for i in program["inputs"]:
        fed = swift["input_types"].get(i["dtype"])
        assert fed, f"{where}: input {i['name']} is {i['dtype']} in the manifest; CoreMLBackend.inputTypes has no entry"
        got = d["inputs"][i["name"]]
        assert SWIFT_TO_SPEC.get(fed, fed.upper()) == got["dtype"], \
            f"{where}: CoreMLBackend.swift feeds {i['name']} as .{fed}, the program takes {got['dtype']}"
        assert MANIFEST_TO_SPEC[i["dtype"]] == got["dtype"], \
            f"{where}: the manifest says {i['name']} is {i['dtype']}, the program takes {got['dtype']}"
        want = [(dim["min"], dim["max"]) if "size" not in dim else (dim["size"], dim["size"]) for dim in i["dims"]]
        assert got["ranges"] == want, f"{where}: input {i['name']} has shape ranges {got['ranges']}, the manifest says {want}"
        batch, seq = i["dims"][0], i["dims"][1]
        assert (batch.get("name"), batch.get("max")) == ("batch", 1), f"{where}: the app feeds batch 1, the manifest says {batch}"
        assert (seq.get("name"), seq.get("min"), seq.get("max")) == ("seq", 1, manifest["max_seq_len"]), \
            f"{where}: the tokenizer gives 1..{manifest['max_seq_len']} tokens, the manifest's seq is {seq}"

    spec = ct.models.MLModel(str(spec_path), skip_model_load=True).get_spec()
    outputs = [(o.name, ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(o.type.multiArrayType.dataType))
               for o in spec.description.output]
    assert [n for n, _ in outputs] == [o["name"] for o in program["outputs"]], (where, outputs, program["outputs"])
    readable = {SWIFT_TO_SPEC[t] for t in swift["output_types"] if t in SWIFT_TO_SPEC}
    for name, dtype in outputs:
        assert dtype in readable, f"{where}: output {name} is {dtype}; CoreMLBackend.swift reads {sorted(readable)}"
    return outputs


def check_embedded(spec_path, program: dict, manifest: dict, swift: dict):
    from toolchain.export import coreml

    d = coreml.describe(spec_path)
    embedded = json.loads(d["metadata"][swift["metadata_key"]])
    assert embedded["outputs"] == [o["name"] for o in program["outputs"]]
    assert embedded["trunk_fingerprint"] == manifest["trunk_fingerprint"]


@pytest.fixture(scope="module")
def ios_bundle(tmp_path_factory, request):
    """A tiny CoreML bundle at the ios default precision (fp16), split: a trunk with token inputs
    and branches with a float32 hidden state, so that every input kind is checked."""
    pytest.importorskip("coremltools", reason="the CoreML contract test needs coremltools: pip install -e '.[coreml]'")
    from toolchain.export import export_bundle

    out, recipe = request.getfixturevalue("tiny")  # after the skip: no training without coremltools
    folder = tmp_path_factory.mktemp("coreml") / "ios-split-fp16"
    manifest = export_bundle(recipe, out / "store", "ios", "fp16", "split", folder, log=lambda m: None)
    return folder, manifest


def test_swift_backend_feeds_by_the_manifest():
    src = swift_source()
    swift = swift_contract(src)
    assert swift["input_types"] == {"int32": "int32", "float32": "float32"}, swift["input_types"]
    assert {"float32", "float16"} <= swift["output_types"], swift["output_types"]
    runner = swift_source(RUNNER)
    assert re.search(r'if spec\.dtype == "int32"', runner), \
        f"{RUNNER.name}: token tensors do not follow the manifest's integer dtype"


@pytest.mark.slow
def test_coreml_program_matches_what_the_swift_backend_feeds(ios_bundle):
    folder, manifest = ios_bundle
    assert manifest["target"] == "ios"
    src = swift_source()
    swift = swift_contract(src)
    check_swift_feeds_by_the_manifest(src, manifest)
    assert {p["name"] for p in manifest["programs"]} > {"trunk"}, "a split bundle: trunk and branches"
    for p in manifest["programs"]:
        check_program(folder / p["file"], p, manifest, swift)
        check_embedded(folder / p["file"], p, manifest, swift)


@pytest.mark.slow
def test_coreml_output_dtypes_are_the_manifests(ios_bundle):
    folder, manifest = ios_bundle
    swift = swift_contract(swift_source())
    wrong = []
    for p in manifest["programs"]:
        outputs = check_program(folder / p["file"], p, manifest, swift)
        wrong += [f"{p['file']}: output {name} is {dtype}, the manifest says {o['dtype']}"
                  for (name, dtype), o in zip(outputs, p["outputs"]) if MANIFEST_TO_SPEC[o["dtype"]] != dtype]
    assert not wrong, "; ".join(wrong)


@pytest.mark.slow
def test_the_check_fails_on_a_mismatch(ios_bundle):
    """The check is not vacuous: int64 ids, another seq range, a renamed output and a Swift file that
    feeds .int64 or names an input itself each fail it."""
    folder, manifest = ios_bundle
    src = swift_source()
    swift = swift_contract(src)
    trunk = next(p for p in manifest["programs"] if p["name"] == "trunk")
    path = folder / trunk["file"]

    int64 = swift_contract(src.replace('"int32": .int32', '"int32": .int64'))
    assert int64["input_types"]["int32"] == "int64"
    with pytest.raises(AssertionError, match="feeds input_ids as .int64"):
        check_program(path, trunk, manifest, int64)
    longer = json.loads(json.dumps(trunk))
    longer["inputs"][0]["dims"][1]["max"] = manifest["max_seq_len"] * 2
    with pytest.raises(AssertionError, match="shape ranges"):
        check_program(path, longer, manifest, swift)
    renamed = json.loads(json.dumps(trunk))
    renamed["outputs"][0]["name"] = "renamed"
    with pytest.raises(AssertionError):
        check_program(path, renamed, manifest, swift)
    with pytest.raises(AssertionError, match="names tensors itself"):
        check_swift_feeds_by_the_manifest(src + '\nlet x = "input_ids"\n', manifest)
    with pytest.raises(AssertionError, match="not made with the type"):
        check_swift_feeds_by_the_manifest(src.replace("dataType: type)", "dataType: .int64)"), manifest)
