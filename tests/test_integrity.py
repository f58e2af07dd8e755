"""Issue 23, sections 3, 4 and 8 (data): every byte that changes an output is checked (branch.json's
weights_sha256 required, with a format version; the export cache and the trunk feature cache checked by
content hash on read), non-finite training stopped and non-finite weights refused, and labels that would
become classes of their own (NUL, empty) or numbers that are not (nan, inf) refused with their row.
None of these export a bundle; the training cases train a few steps of the tiny backbone."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_TASK, write_recipe
from test_cli import one_line_error

from toolchain import UserError, __version__, backbone, store
from toolchain.branch_config import FILE, FORMAT_VERSION, WEIGHTS, BranchConfig, save_branch, weights_bytes



@pytest.fixture(scope="module")
def bb():
    return backbone.load("tiny-random")


def make_run(bb, run_dir, task="intent", attach=2, layers=1, poison=None):
    """A run folder written as training writes it (save_branch), without training; `poison`: a value put into
    one weight."""
    import hashlib

    from toolchain.model import build_branch

    branch = build_branch(bb.cfg, bb.state, attach, layers, "classification", 2, 0.0)
    if poison is not None:
        with torch.no_grad():
            next(p for p in branch.parameters() if p.is_floating_point()).view(-1)[0] = poison
    run_dir.mkdir(parents=True)
    weights = weights_bytes(branch)
    save_branch(run_dir, weights, BranchConfig(
        task=task, type="classification", labels=["a", "b"], attach=attach, layers=layers, metric="accuracy",
        backbone_fingerprint=bb.fingerprint, dev_metric=50.0, seed=0, max_seq_len=32, pair=False,
        hidden_size=bb.cfg.hidden_size, backbone="tiny-random", toolchain_version=__version__,
        weights_sha256=hashlib.sha256(weights).hexdigest()))
    return run_dir


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def flip(path, offset=-3, bit=0x40):
    data = bytearray(path.read_bytes())
    data[offset] ^= bit
    path.write_bytes(bytes(data))


@pytest.fixture
def small_store(bb, tmp_path):
    sd = tmp_path / "ws" / "store"
    store.create(sd, bb, "tiny-random", [make_run(bb, tmp_path / "runs" / "intent")])
    return sd


# ---------------------------------------------------------------------------------------------
# 3: branch.json has a format version and weights_sha256 is required


def test_every_branch_json_written_has_the_format_version_and_the_weights_sha256(bb, small_store, tmp_path):
    from runtime_py.bundle import file_sha256

    for folder in (tmp_path / "runs" / "intent", small_store / "branches" / "intent"):
        meta = json.loads((folder / FILE).read_text())
        assert meta["format_version"] == FORMAT_VERSION
        assert meta["weights_sha256"] == file_sha256(folder / WEIGHTS)
    with pytest.raises(ValueError, match="the config records weights .*, not these"):  # weights and config go together
        save_branch(tmp_path / "empty", b"other weights", BranchConfig.load(small_store / "branches" / "intent"))
    assert not (tmp_path / "empty").exists()


def test_a_branch_json_without_weights_sha256_is_refused_with_the_command_that_rewrites_it(bb, small_store, tmp_path,
                                                                                           cli):
    run = make_run(bb, tmp_path / "old", task="other")
    edit_json(run / FILE, lambda m: [m.pop("weights_sha256"), m.pop("format_version")])  # an older file
    flip(run / WEIGHTS)  # and a damaged weight: nothing can tell, so the file is refused
    before = sorted(p.name for p in (small_store / "branches").iterdir())
    code, _, err = cli("branch", "add", small_store, run)
    one_line_error(code, err, f"lacks 'weights_sha256'")
    assert f"python -m toolchain.branch_config {run}" in err and "retrain" in err
    assert sorted(p.name for p in (small_store / "branches").iterdir()) == before
    for folder in (small_store / "branches" / "intent",):  # a store's branch that lost it: predict refuses too
        edit_json(folder / FILE, lambda m: m.pop("weights_sha256"))
        flip(folder / WEIGHTS)
        code, _, err = cli("predict", small_store, "play some jazz")
        one_line_error(code, err, "lacks 'weights_sha256'")
    # The fix it names: the file is rewritten at the current format, and the branch then loads.
    done = subprocess.run([sys.executable, "-m", "toolchain.branch_config", str(run)], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0 and "rewritten at format 2" in done.stdout, done.stderr
    assert json.loads((run / FILE).read_text())["format_version"] == 2
    code, _, err = cli("branch", "add", small_store, run)
    assert code == 0, err


def test_a_branch_json_from_a_newer_toolchain_says_upgrade_not_retrain(bb, tmp_path):
    run = make_run(bb, tmp_path / "new")
    edit_json(run / FILE, lambda m: m.update(format_version=FORMAT_VERSION + 1, lora_rank=8))
    with pytest.raises(UserError, match="written by a newer ctb-mobile.*upgrade ctb-mobile") as e:
        BranchConfig.load(run)
    assert "retrain" not in str(e.value)
    for bad in ("2", 0, True):
        edit_json(run / FILE, lambda m, v=bad: m.update(format_version=v, lora_rank=None) or m.pop("lora_rank"))
        with pytest.raises(UserError, match="format_version"):
            BranchConfig.load(run)


def test_an_older_branch_json_that_records_its_weights_still_loads(bb, tmp_path):
    run = make_run(bb, tmp_path / "old")
    edit_json(run / FILE, lambda m: m.pop("format_version"))  # format 1, as every run before this
    assert BranchConfig.load(run).format_version == 1
    edit_json(run / FILE, lambda m: m.update(weights_sha256="not-a-sha"))
    with pytest.raises(UserError, match="is not a sha256"):
        BranchConfig.load(run)


# ---------------------------------------------------------------------------------------------
# 3: the export cache checks each file it hands out against the sha256 it stored


def test_a_damaged_export_cache_entry_is_dropped_and_exported_again(tmp_path, monkeypatch, capsys):
    from toolchain.export import cache

    monkeypatch.setenv("CTB_EXPORT_CACHE", "1")
    monkeypatch.setattr(cache, "_base", lambda: tmp_path / "exports")
    (tmp_path / "exports").mkdir()
    program = b"\x08\x07program bytes " * 200
    made = []

    def through(name, damage=None):
        out = tmp_path / name
        out.mkdir()

        def make():
            made.append(name)
            (out / "model.onnx").write_bytes(program)
            return ["model.onnx"]

        files = cache._through(tmp_path / "exports" / "k", out, None, make)
        assert files == ["model.onnx"] and (out / "model.onnx").read_bytes() == program
        return out

    through("first")
    through("second")  # served from the cache
    assert made == ["first"]
    flip(tmp_path / "exports" / "k" / "model.onnx", offset=100, bit=0x01)  # one flipped bit in the cached program
    through("third")  # exported again, not copied with a fresh sha into the bundle
    assert made == ["first", "third"]
    assert "export cache: entry k is damaged (model.onnx does not match its sha256); dropped" in capsys.readouterr().err
    through("fourth")  # the entry written again is good
    assert made == ["first", "third"]
    (tmp_path / "exports" / "k" / "model.onnx").write_bytes(program[:50])  # truncated
    through("fifth")
    edit_json(tmp_path / "exports" / "k" / "files.json", lambda m: m.pop("sha256"))  # no checksums: an old entry
    through("sixth")
    assert made == ["first", "third", "fifth", "sixth"]


# ---------------------------------------------------------------------------------------------
# 3: the trunk feature cache is checked by content hash on read


def test_flipped_bytes_in_the_trunk_feature_cache_are_computed_again(bb, tmp_path):
    from toolchain import feature_cache as cache
    from toolchain.data import Encoded
    from toolchain.model import build_trunk

    trunk = build_trunk(bb.cfg, bb.state, 2)
    enc = Encoded([[101, 2000, 2001, 2002, 102], [101, 2003, 102]], [[0] * 5, [0] * 3], [0, 1])
    feats, hit = cache.load_or_compute(trunk, enc, bb.fingerprint, tmp_path)
    again, hit2 = cache.load_or_compute(trunk, enc, bb.fingerprint, tmp_path)
    assert (hit, hit2) == (False, True) and all(torch.equal(a, b) for a, b in zip(feats, again))
    (f,) = tmp_path.glob("trunk-*.safetensors")
    for damage in (lambda: flip(f, offset=-7), lambda: f.with_name(f.name + ".sha256").unlink(),
                   lambda: f.write_bytes(f.read_bytes()[:-8])):
        damage()
        got, hit = cache.load_or_compute(trunk, enc, bb.fingerprint, tmp_path)
        assert not hit and all(torch.equal(a, b) for a, b in zip(got, feats))
        assert cache.load_or_compute(trunk, enc, bb.fingerprint, tmp_path)[1]  # written again, whole


# ---------------------------------------------------------------------------------------------
# 4: non-finite training is stopped, non-finite weights are refused


def test_a_learning_rate_of_1e30_stops_training_in_one_line_and_writes_no_finished_run(tmp_path, cli):
    recipe = write_recipe(tmp_path, TINY_TASK.replace("lr = 1e-3", "lr = 1e30")
                          .replace("max_train_examples = 96", "max_train_examples = 64")
                          + 'unseen_labels = "drop"\n')
    code, _, err = cli("train", recipe, "--out", tmp_path / "ws", "--layers", "1", "--no-cache")
    one_line_error(code, err, "training diverged")
    assert "step" in err and "learning rate (lr = 1e+30) is likely too high" in err and "bad" in err
    run = tmp_path / "ws" / "runs" / "intent" / "L1-s0"
    assert not (run / "result.json").exists() and not (run / FILE).exists()
    assert not (tmp_path / "ws" / "selected.json").exists()


def test_non_finite_branch_weights_are_refused_by_merge_add_and_predict(bb, small_store, tmp_path, cli):
    for value in (float("nan"), float("inf")):
        run = make_run(bb, tmp_path / f"bad-{value}", task="other", poison=value)
        code, _, err = cli("branch", "add", small_store, run)
        one_line_error(code, err, "holds NaN or infinity")
        with pytest.raises(UserError, match="holds NaN or infinity"):
            store.create(tmp_path / f"s-{value}", bb, "tiny-random", [run])
    # A store branch whose weights were replaced by non-finite ones (sha256 updated): predict and export refuse
    poisoned = make_run(bb, tmp_path / "p", poison=float("nan"))
    dest = small_store / "branches" / "intent"
    for name in (WEIGHTS, FILE):
        (dest / name).write_bytes((poisoned / name).read_bytes())
    code, out, err = cli("predict", small_store, "play some jazz")
    one_line_error(code, err, "holds NaN or infinity")
    assert "NaN" not in out


def test_predict_never_prints_nan_as_json(small_store, cli, monkeypatch):
    from toolchain import infer

    monkeypatch.setattr(infer, "predict", lambda *a, **k: [{"intent": {"label": "a", "score": float("nan")}}])
    code, out, err = cli("predict", small_store, "play some jazz")
    one_line_error(code, err, "non-finite output")
    assert "NaN" not in out


# ---------------------------------------------------------------------------------------------
# 4, 8: labels that are not what they claim are refused with their row


REGRESSION = """
name = "r"
backbone = "tiny-random"
max_seq_len = 32
[[tasks]]
name = "score"
type = "regression"
format = "tsv"
train = "train.tsv"
dev = "dev.tsv"
columns = { text = "sentence", label = "score" }
"""

CLASSES = REGRESSION.replace('"regression"', '"classification"').replace('name = "score"', 'name = "topic"')


def write_tsv(tmp_path, rows, name="train.tsv"):
    (tmp_path / name).write_text("sentence\tscore\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity", "NaN"])
def test_non_finite_regression_labels_are_refused_with_the_row_and_check_reports_them(tmp_path, cli, bad):
    recipe = tmp_path / "r.toml"
    recipe.write_text(REGRESSION)
    write_tsv(tmp_path, [("good", 1.0), ("fine", 2.5), ("broken", bad), ("more", 3)])
    write_tsv(tmp_path, [("a", 1), ("b", 2)], "dev.tsv")
    code, _, err = cli("check", recipe)
    one_line_error(code, err, f"train.tsv line 4: regression label '{bad}' is not a finite number")


@pytest.mark.parametrize("label, needle", [("", "line 3: empty label"), ("  ", "line 3: empty label"),
                                           ("spo\x00rt", "line 3: label 'spo\\x00rt' holds a NUL character")])
def test_nul_and_empty_labels_are_refused_with_the_row(tmp_path, cli, label, needle):
    recipe = tmp_path / "r.toml"
    recipe.write_text(CLASSES)
    write_tsv(tmp_path, [("good", "sport"), ("odd", label), ("fine", "news")])
    write_tsv(tmp_path, [("a", "sport"), ("b", "news")], "dev.tsv")
    code, _, err = cli("check", recipe)
    one_line_error(code, err, needle)


@pytest.mark.parametrize("row, needle", [({"text": "x", "label": None}, "label None is not a label name"),
                                         ({"text": "x", "label": ""}, "empty label"),
                                         ({"tokens": ["a", "b"], "tags": ["O", ""]}, "empty tag"),
                                         ({"tokens": ["a", "b"], "tags": ["O", "B-\x00"]}, "holds a NUL")])
def test_jsonl_labels_and_tags_are_checked_too(tmp_path, row, needle):
    from toolchain.config import load_recipe
    from toolchain.data import read_examples

    tagging = "tokens" in row
    cols = '{ tokens = "tokens", tags = "tags" }' if tagging else '{ text = "text", label = "label" }'
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'name = "j"\nbackbone = "tiny-random"\n[[tasks]]\nname = "t"\n'
                      f'type = "{"tagging" if tagging else "classification"}"\nformat = "jsonl"\n'
                      f'train = "t.jsonl"\ndev = "t.jsonl"\ncolumns = {cols}\n')
    good = {"tokens": ["a"], "tags": ["O"]} if tagging else {"text": "y", "label": "a"}
    (tmp_path / "t.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    r = load_recipe(recipe)
    with pytest.raises(UserError, match=f"t.jsonl line 2: .*{needle}"):
        read_examples(r, r.tasks[0], "train")
