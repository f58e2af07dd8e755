"""Issue 23, section 7: what used to end as "internal error" (exit 1) is a named error (exit 2, one line):
malformed store.json, selected.json and recipes, seeds out of range, input nested too deeply, a full
disk, and a poisoned pickle, whose message never repeats torch's advice to load it unsafely."""

import errno
import json

import pytest
from conftest import TINY_TASK, write_recipe
from test_cli import one_line_error
from test_integrity import make_run

from toolchain import backbone, store


@pytest.fixture(scope="module")
def bb():
    return backbone.load("tiny-random")


@pytest.fixture
def ws(bb, tmp_path):
    """A workspace as `train` leaves it (runs/, selected.json) with a store built from it."""
    root = tmp_path / "ws"
    make_run(bb, root / "runs" / "intent" / "L1-s0", attach=3)
    (root / "selected.json").write_text(json.dumps({"intent": {"layers": 1, "seed": 0, "run": "runs/intent/L1-s0"}}))
    store.create(root / "store", bb, "tiny-random", [root / "runs" / "intent" / "L1-s0"])
    return root


@pytest.fixture
def recipe(tmp_path):
    return write_recipe(tmp_path, TINY_TASK)


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def no_internal_error(code, err, needle):
    assert "internal error" not in err, err
    one_line_error(code, err, needle)


@pytest.mark.parametrize("case, change, needle", [
    ("schema only", lambda m: [m.pop(k) for k in list(m) if k != "schema"], "store.json backbone is missing"),
    ("encoder extra key", lambda m: m["encoder"].update(heads=2), "encoder has unknown key 'heads'"),
    ("num_layers a string", lambda m: m["encoder"].update(num_layers="4"), "encoder num_layers = '4' is not"),
    ("num_layers a list", lambda m: m["encoder"].update(num_layers=[4]), "encoder num_layers = [4] is not"),
    ("num_layers negative", lambda m: m["encoder"].update(num_layers=-1), "encoder num_layers = -1 is not"),
    ("encoder missing a key", lambda m: m["encoder"].pop("hidden_size"), "encoder lacks 'hidden_size'"),
    ("encoder a list", lambda m: m.update(encoder=[1]), "store.json encoder is malformed"),
])
def test_a_malformed_store_json_is_a_named_error(ws, bb, tmp_path, cli, case, change, needle):
    edit_json(ws / "store" / "store.json", change)
    run = make_run(bb, tmp_path / "other", task="other")
    for args in (("branch", "add", ws / "store", run), ("predict", ws / "store", "play jazz"),
                 ("branch", "list", ws / "store")):
        code, _, err = cli(*args)
        no_internal_error(code, err, needle)
        assert "rebuild the store with `ctb-mobile merge --force`" in err


@pytest.mark.parametrize("content", ["[1, 2]", '{"intent": 1}', '{"intent": {"run": 7}}', '"x"'])
def test_a_malformed_selected_json_is_a_named_error_in_merge(ws, recipe, cli, content):
    (ws / "selected.json").write_text(content)
    code, _, err = cli("merge", recipe, "--from", "selected", "--out", ws, "--store", ws / "new")
    no_internal_error(code, err, "selected.json does not map each task to its run")
    assert not (ws / "new").exists()


def test_a_malformed_plan_json_is_a_named_error_in_merge(ws, recipe, cli):
    (ws / "plan.json").write_text('{"tasks": [1, 2]}')
    code, _, err = cli("merge", recipe, "--out", ws, "--store", ws / "new")
    no_internal_error(code, err, "plan.json does not map each task to its run")


@pytest.mark.parametrize("edit, needle", [
    (lambda r: "tasks = [1]\n" + r.split("[train]")[0], "tasks[0] = 1 is not a table"),
    (lambda r: r.replace("lr = 1e-3", "lr = 1e-3\nseed = 9223372036854775807"),
     "seed = 9223372036854775807 must be an integer from 0 to 4294967295"),
    (lambda r: r.replace("lr = 1e-3", "lr = 1e-3\nseed = -1"), "seed = -1 must be an integer"),
    (lambda r: "x = " + "[" * 50_000 + "]" * 50_000 + "\n" + r, "nests arrays or tables too deeply"),
    (lambda r: "x = " + "{a = " * 50_000 + "1" + "}" * 50_000 + "\n" + r, "nests arrays or tables too deeply"),
])
def test_a_hostile_recipe_is_a_named_error(tmp_path, cli, edit, needle):
    path = tmp_path / "r.toml"
    path.write_text(edit(write_recipe(tmp_path, TINY_TASK).read_text()))
    code, _, err = cli("check", path)
    no_internal_error(code, err, needle)


@pytest.mark.parametrize("seeds", ["-1", "4294967296", "9223372036854775807"])
def test_seeds_out_of_range_are_named_before_any_work(recipe, tmp_path, cli, seeds):
    for command in ("train", "distill"):
        code, _, err = cli(command, recipe, "--out", tmp_path / "ws", "--seeds", seeds)
        no_internal_error(code, err, f"--seeds {seeds} must be an integer from 0 to 4294967295")
    assert not (tmp_path / "ws").exists()


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _disk_full_in_rust(*args, **kwargs):  # safetensors reports the OS error inside its own exception
    raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left "
                       "on device\" }) (os error 28)")


@pytest.mark.parametrize("fail", [_disk_full, _disk_full_in_rust])
def test_disk_full_during_merge_says_so_and_keeps_the_old_store(ws, recipe, cli, monkeypatch, fail):
    import safetensors.torch

    before = sorted(p.name for p in (ws / "store").rglob("*"))
    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    code, _, err = cli("merge", recipe, "--from", "selected", "--out", ws, "--force")
    no_internal_error(code, err, "disk full")
    assert "free some space" in err
    assert sorted(p.name for p in (ws / "store").rglob("*")) == before
    left = sorted(p.name for p in ws.iterdir() if not p.name.endswith(".lock"))
    assert left == ["runs", "selected.json", "store"]  # no temporary folder left


def test_disk_full_during_export_says_so(ws, recipe, cli, monkeypatch):
    from toolchain.export import tokenizer

    monkeypatch.setattr(tokenizer, "write", _disk_full)
    code, _, err = cli("export", recipe, "--target", "onnx", "--precision", "fp32", "--out", ws)
    no_internal_error(code, err, "disk full")
    assert not (ws / "bundles" / "onnx-fused-fp32").exists()


def test_a_poisoned_pickle_is_refused_without_advice_to_load_it_unsafely(recipe, tmp_path, cli, monkeypatch):
    import os
    import pickle

    import torch

    from toolchain import train

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    poisoned = tmp_path / "optimizer.bin"
    poisoned.write_bytes(pickle.dumps(Payload()))
    # What accelerate does when it resumes from a checkpoint (torch.load with weights_only=True)
    monkeypatch.setattr(train, "run_sweep", lambda *a, **k: torch.load(poisoned, weights_only=True))
    code, _, err = cli("train", recipe, "--out", tmp_path / "ws")
    no_internal_error(code, err, "refused to load a file that holds pickled code")
    assert "weights_only" not in err and "False" not in err
    assert not (tmp_path / "pwned").exists()


def test_an_internal_error_never_repeats_unsafe_advice():
    from toolchain.cli import _named

    msg, code = _named(RuntimeError("Weights only load failed. Re-running `torch.load` with `weights_only` set to "
                                    "`False` will likely succeed. Please file an issue."))
    assert code == 1 and "weights_only" not in msg and "Weights only load failed." in msg
