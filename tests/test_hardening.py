"""Hostile input (issue 12): names that would become paths, files that are not what they claim, values
that are not numbers, a kill inside a folder swap, two writers at once. Each case fails in one line,
escapes nowhere, and leaves what was there before. None of these train or export a model."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, TINY_TASK, write_recipe
from test_cli import one_line_error, tree_digest

from toolchain import UserError, backbone, store
from toolchain.config import load_recipe
from toolchain.fsutil import atomic_dir, locked, write_json_atomic


@pytest.fixture(scope="module")
def bb():
    return backbone.load("tiny-random")


def fake_run(bb, run_dir, task="intent", attach=2, layers=1, **meta):
    """A branch run folder without training: the backbone's layers and a fresh two-label head."""
    from safetensors.torch import save_file

    from runtime_py.bundle import file_sha256
    from toolchain.model import build_branch

    branch = build_branch(bb.cfg, bb.state, attach, layers, "classification", 2, 0.0)
    run_dir.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in branch.state_dict().items()}, str(run_dir / "branch.safetensors"))
    m = {"task": task, "type": "classification", "labels": ["a", "b"], "attach": attach, "layers": layers,
         "metric": "accuracy", "dev_metric": 50.0, "seed": 0, "max_seq_len": 32, "pair": False, "hidden_size":
         bb.cfg.hidden_size, "backbone": "tiny-random", "toolchain_version": "0", "backbone_fingerprint": bb.fingerprint,
         "weights_sha256": file_sha256(run_dir / "branch.safetensors"), **meta}
    (run_dir / "branch.json").write_text(json.dumps(m))
    return run_dir


@pytest.fixture
def small_store(bb, tmp_path):
    sd = tmp_path / "ws" / "store"
    store.create(sd, bb, "tiny-random", [fake_run(bb, tmp_path / "runs" / "intent")])
    return sd


# ---------------------------------------------------------------------------------------------
# 1, 3: names that become paths


@pytest.mark.parametrize("task", ["/tmp/ctb-victim", "../../victim", "a/b", ".hidden", "-x", "naïve", "x\n", ""])
def test_a_branch_json_task_that_is_not_a_plain_name_writes_nowhere(bb, small_store, tmp_path, cli, task):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    run = fake_run(bb, tmp_path / "evil", task=str(victim) if task.startswith("/tmp") else task)
    before = tree_digest(tmp_path)
    for args in (("branch", "add", small_store, run), ("branch", "update", small_store, run)):
        code, _, err = cli(*args)
        one_line_error(code, err, "is not a plain name")
    with pytest.raises(UserError, match="is not a plain name"):
        store.create(tmp_path / "other", bb, "tiny-random", [run])
    assert tree_digest(tmp_path) == before and not (tmp_path / "other").exists()


def test_branch_remove_refuses_a_path_and_a_link_out_of_the_store(small_store, tmp_path, cli):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (small_store / "branches" / "linked").symlink_to(outside, target_is_directory=True)
    for task, needle in (("../store", "is not a plain name"), ("/etc", "is not a plain name"),
                         ("linked", "leads outside")):
        code, _, err = cli("branch", "remove", small_store, task)
        one_line_error(code, err, needle)
    assert (outside / "keep.txt").read_text() == "mine" and (small_store / "store.json").is_file()


def test_branch_update_does_not_follow_a_link_out_of_the_store(bb, small_store, tmp_path, cli):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (small_store / "branches" / "linked").symlink_to(outside, target_is_directory=True)
    code, _, err = cli("branch", "update", small_store, fake_run(bb, tmp_path / "r", task="linked"))
    one_line_error(code, err, "leads outside")
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("edit, needle", [
    (lambda s: s.replace('name = "intent"', 'name = "../intent"'), "task name '../intent' is not a plain name"),
    (lambda s: s.replace('name = "intent"', 'name = "intent/x"'), "is not a plain name"),
    (lambda s: s.replace('name = "intent"', 'name = "ïntent"'), "is not a plain name"),
    (lambda s: s.replace('name = "t"', 'name = "../../x"'), "name '../../x' is not a plain name"),
    (lambda s: s.replace('name = "t"', 'name = "/tmp/x"'), "is not a plain name"),
])
def test_recipe_names_that_would_escape_are_refused(tmp_path, cli, edit, needle):
    recipe = write_recipe(tmp_path, edit(TINY_TASK))
    code, _, err = cli("train", recipe)
    one_line_error(code, err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.toml"]
    assert not (tmp_path.parent / "x").exists()


# ---------------------------------------------------------------------------------------------
# 4, 7: one line, never a traceback; bad values refused before any work


def test_files_that_are_not_what_they_claim_fail_in_one_line(small_store, tmp_path, cli):
    ws = small_store.parent
    (small_store / "store.json").write_text("{not json")
    code, _, err = cli("branch", "list", small_store)
    one_line_error(code, err, "store.json is not valid JSON", "merge --force")

    sd2 = tmp_path / "s2"
    (sd2 / "branches" / "intent").mkdir(parents=True)
    (sd2 / "store.json").write_bytes(b"\xff\xfe\x00binary")
    code, _, err = cli("branch", "list", sd2)
    one_line_error(code, err, "not UTF-8")

    (ws / "selected.json").write_text("[1, 2")
    recipe = write_recipe(tmp_path, TINY_TASK)
    code, _, err = cli("merge", recipe, "--out", ws, "--from", "selected", "--store", tmp_path / "s3")
    one_line_error(code, err, "selected.json is not valid JSON")


def test_a_truncated_trunk_fails_predict_in_one_line(small_store, cli):
    trunk = small_store / "trunk.safetensors"
    trunk.write_bytes(trunk.read_bytes()[:5000])
    code, _, err = cli("predict", small_store, "play some jazz")
    one_line_error(code, err, "trunk.safetensors is unreadable", "merge --force")


def test_a_binary_data_file_fails_check_in_one_line(tmp_path, cli):
    (tmp_path / "train.tsv").write_bytes(b"sentence\tlabel\n\xff\xfe\x81 bytes\t1\n")
    body = TINY_TASK.replace('format = "seqio"', 'format = "tsv"').replace('"@DATA@/snips/train"', '"train.tsv"')
    recipe = write_recipe(tmp_path, body + 'columns = { text = "sentence", label = "label" }\n')
    code, _, err = cli("check", recipe)
    one_line_error(code, err, "not UTF-8 text", "train.tsv")


@pytest.mark.parametrize("key, value, section", [
    ("lr", "nan", "train"), ("lr", "inf", "train"), ("lr", "-inf", "train"),
    ("temperature", "nan", "distill"), ("temperature", "inf", "distill"), ("alpha", "nan", "distill"),
    ("max_metric_drop", "nan", "export"), ("max_metric_drop", "inf", "export"), ("min_agreement", "nan", "export"),
    ("threshold", "nan", "plan"), ("tolerance", "nan", "select"),
])
def test_nan_and_inf_are_refused_in_every_recipe_number(tmp_path, cli, key, value, section):
    body = TINY_TASK.replace("lr = 1e-3\n", "") if key == "lr" else TINY_TASK
    body = body.replace("[[tasks]]", f"[{section}]\n{key} = {value}\n[[tasks]]", 1) if section != "train" \
        else body.replace("[train]\n", f"[train]\n{key} = {value}\n")
    code, _, err = cli("check", write_recipe(tmp_path, body))
    one_line_error(code, err, f"{key} = {value}")


def test_guard_and_plan_options_are_checked_before_any_work(tmp_path, cli):
    recipe = write_recipe(tmp_path, TINY_TASK)
    for value in ("-1", "nan", "inf"):  # the store does not exist: the option must be refused first
        code, _, err = cli("export", recipe, "--target", "onnx", "--precision", "int8", "--max-drop", value,
                           "--store", tmp_path / "no-store")
        one_line_error(code, err, "max_metric_drop", "must be a number >= 0")
    code, _, err = cli("plan", recipe, "--threshold", "nan", "--out", tmp_path / "no-ws")
    one_line_error(code, err, "threshold = nan")


def test_max_seq_len_beyond_the_backbone_positions_is_refused(tmp_path, cli):
    code, _, err = cli("check", write_recipe(tmp_path, TINY_TASK.replace("max_seq_len = 32", "max_seq_len = 600")))
    one_line_error(code, err, "max_seq_len 600 exceeds the backbone's 512 positions", "<= 512")


def test_predict_reads_at_the_store_length_and_refuses_bad_lengths(small_store, cli, monkeypatch):
    from toolchain import infer

    seen = []
    real = infer.predict
    monkeypatch.setattr(infer, "predict", lambda *a: seen.append(a[-1]) or real(*a))
    long_text = " ".join(["weather in paris tomorrow"] * 20)
    code, default, err = cli("predict", small_store, long_text)
    assert code == 0, err
    code, at_32, err = cli("predict", small_store, long_text, "--max-len", "32")
    assert code == 0 and default == at_32 and seen == [32, 32], (seen, err)  # the branch was trained at 32
    for bad in ("0", "1", "513"):
        code, _, err = cli("predict", small_store, "hi", "--max-len", bad)
        one_line_error(code, err, f"--max-len {bad} must be between 2 and 512")


def test_an_unexpected_bug_is_one_line_unless_ctb_debug(small_store, cli, monkeypatch):
    def bug(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(store, "list_branches", bug)
    code, _, err = cli("branch", "list", small_store)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 1 and len(lines) == 1 and "internal error (ZeroDivisionError" in lines[0] \
        and "CTB_DEBUG=1" in lines[0], err
    monkeypatch.setenv("CTB_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli("branch", "list", small_store)


def test_an_os_error_on_a_user_path_is_one_line(tmp_path, cli):
    recipe = write_recipe(tmp_path, TINY_TASK)
    (tmp_path / "file").write_text("not a folder")
    code, _, err = cli("train", recipe, "--out", tmp_path / "file" / "ws", "--epochs", "1")
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "file" in lines[0], err


# ---------------------------------------------------------------------------------------------
# 9: a store exports only with the recipe it was made from


def test_export_refuses_a_store_of_another_backbone_or_task_set(bb, tmp_path, cli):
    import dataclasses

    state = {k: v.clone() for k, v in bb.state.items()}
    state["embeddings.word.weight"][0, 0] += 1.0
    other = dataclasses.replace(bb, state=state, fingerprint=backbone.fingerprint(state, bb.cfg))
    recipe = write_recipe(tmp_path, TINY_TASK)
    sd = tmp_path / "s"
    store.create(sd, other, "tiny-random", [fake_run(other, tmp_path / "r1")])
    code, _, err = cli("export", recipe, "--target", "onnx", "--precision", "fp32", "--store", sd)
    one_line_error(code, err, "was built on tiny-random", "not on recipe")
    sd2 = tmp_path / "s2"
    store.create(sd2, bb, "tiny-random", [fake_run(bb, tmp_path / "r2", task="weather")])
    code, _, err = cli("export", recipe, "--target", "onnx", "--precision", "fp32", "--store", sd2)
    one_line_error(code, err, "holds task 'weather'", "does not define")


# ---------------------------------------------------------------------------------------------
# 11-13: crash-safe swaps, one writer at a time, modes that follow the umask

KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from toolchain import fsutil
    target, when = Path(sys.argv[1]), sys.argv[2]
    real = os.replace
    def replace(src, dst):
        real(src, dst)
        if when in Path(dst).name:  # die right after this rename: inside the swap window
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
    with fsutil.atomic_dir(target) as tmp:
        (tmp / "v").write_text("new")
""")


@pytest.mark.parametrize("when, expect", [(".new-", "old"), (".old-", "new")])
def test_a_kill_inside_the_swap_window_is_repaired_by_the_next_write(tmp_path, when, expect):
    target = tmp_path / "store"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("old")
    proc = subprocess.run([sys.executable, "-c", KILLER, str(target), when], cwd=ROOT, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert any(p.name.startswith(".store.") and when in p.name for p in tmp_path.iterdir())
    if when == ".old-":
        assert not target.exists()  # the window: the old folder is swapped out, the new one not yet in
    stale = tmp_path / ".store.tmp-999999999-abc"  # a temporary folder of a process that is gone
    stale.mkdir()
    with atomic_dir(tmp_path / "store") as tmp:  # the next write to the same place repairs first
        assert (target / "v").read_text() == expect
        (tmp / "v").write_text("next")
    assert (target / "v").read_text() == "next"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".store.lock", "store"]


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from toolchain import fsutil
    with fsutil.locked(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def test_a_second_writer_fails_in_one_line_and_a_read_modify_write_waits(small_store, tmp_path, bb, cli):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(small_store), "60"], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree_digest(small_store)
        code, _, err = cli("branch", "update", small_store, fake_run(bb, tmp_path / "new", attach=1))
        one_line_error(code, err, "is being written by another ctb-mobile process")
        assert tree_digest(small_store) == before
    finally:
        holder.kill()
        holder.wait()

    selected = tmp_path / "selected.json"
    write_json_atomic(selected, {"a": 1})
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(selected), "1.5"], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    with locked(selected, wait=60):  # train's update of selected.json: waits for the other writer
        assert time.monotonic() - start >= 1.0
    holder.wait()


def test_created_files_and_folders_follow_the_umask(tmp_path):
    for mask, (want_dir, want_file) in ((0o022, (0o755, 0o644)), (0o027, (0o750, 0o640))):
        old = os.umask(mask)
        try:
            with atomic_dir(tmp_path / f"d{mask}") as tmp:
                write_json_atomic(tmp / "m.json", {"a": 1})
        finally:
            os.umask(old)
        assert (tmp_path / f"d{mask}").stat().st_mode & 0o777 == want_dir
        assert (tmp_path / f"d{mask}" / "m.json").stat().st_mode & 0o777 == want_file


# ---------------------------------------------------------------------------------------------
# The export cache: a second export of the same graph copies the first one's files


def test_the_export_cache_reuses_identical_graphs_only(bb, tmp_path, monkeypatch):
    import torch

    from toolchain.export import cache
    from toolchain.export.graph import Graph

    monkeypatch.setenv("CTB_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    class Backend:
        @staticmethod
        def export(graph, out_dir, precision, max_seq_len, metadata, *, calibration, keep_fp32, symmetric=False,
                   keep_int8=(), group=0):
            calls.append(graph.name + ("-sym" if symmetric else "") + (f"-g{group}" if group else ""))
            (out_dir / f"{graph.name}.bin").write_bytes(str(graph.module.weight.sum().item()).encode())
            return [f"{graph.name}.bin"]

    lin = torch.nn.Linear(4, 2)
    g = Graph("model", lin, ("x",), ("y",), (torch.ones(1, 4),))
    args = ("onnx", g, None, "int8", 32, {"program": "model"})
    for i in range(3):
        (tmp_path / f"o{i}").mkdir()
    assert cache.export(Backend, *args[:2], tmp_path / "o0", *args[3:]) == ["model.bin"]
    assert cache.export(Backend, *args[:2], tmp_path / "o1", *args[3:]) == ["model.bin"]
    assert calls == ["model"] and (tmp_path / "o1/model.bin").read_bytes() == (tmp_path / "o0/model.bin").read_bytes()
    with torch.no_grad():
        lin.weight[0, 0] += 1  # one weight changed: exported afresh
    cache.export(Backend, *args[:2], tmp_path / "o2", *args[3:])
    cache.export(Backend, args[0], g, tmp_path / "o2", "fp32", 32, {"program": "model"})  # another precision
    cache.export(Backend, args[0], g, tmp_path / "o2", "fp32", 32, {"program": "model", "v": 2})  # other metadata
    assert calls == ["model"] * 4
    sym = (args[0], g, tmp_path / "o2", "fp32", 32, {"program": "model"})
    cache.export(Backend, *sym, options={"symmetric": True})  # another option: exported afresh, then from the cache
    cache.export(Backend, *sym, options={"symmetric": True})
    assert calls == ["model"] * 4 + ["model-sym"]
    int4 = (args[0], g, tmp_path / "o2", "int4", 32, {"program": "model"})
    for group, int8 in ((64, ()), (32, ()), (32, ("trunk.layers.0",)), (32, ("trunk.layers.0",))):
        cache.export(Backend, *int4, options={"keep_int8": int8, "group": group})  # int4's group and int8 parts
    assert calls[-3:] == ["model-g64", "model-g32", "model-g32"] and len(calls) == 8
    del calls[-3:]
    monkeypatch.setenv("CTB_EXPORT_CACHE", "0")
    cache.export(Backend, args[0], g, tmp_path / "o2", "fp32", 32, {"program": "model"})
    assert len(calls) == 6 and math.isfinite(float((tmp_path / "o2/model.bin").read_text()))


def test_a_trace_is_made_once_for_every_precision_and_fallback(bb, tmp_path, monkeypatch):
    """cache.traced: the step every precision starts from (ONNX's fp32 trace) is made once per graph
    and length, whatever the example tensors hold; another graph, length or example shape traces again,
    and so does every call with the cache off."""
    import torch

    from toolchain.export import cache
    from toolchain.export.graph import Graph

    monkeypatch.setenv("CTB_CACHE_DIR", str(tmp_path / "cache"))
    made = []

    def make(path):
        made.append(path)
        path.write_text(f"trace {len(made)}")

    g = Graph("model", torch.nn.Linear(4, 2), ("x",), ("y",), (torch.ones(1, 4),))
    for i, n in enumerate((32, 32, 64, 32)):
        (tmp_path / f"o{i}").mkdir()
        cache.traced("onnx", g, n, tmp_path / f"o{i}/model.fp32.onnx", make)
    assert [p.parent.name for p in made] == ["o0", "o2"]
    assert (tmp_path / "o1/model.fp32.onnx").read_text() == (tmp_path / "o3/model.fp32.onnx").read_text() == "trace 1"
    other = Graph("model", torch.nn.Linear(4, 2), ("x",), ("y",), (torch.ones(1, 4),))  # other weights
    cache.traced("onnx", other, 32, tmp_path / "o0/model.fp32.onnx", make)
    assert len(made) == 3
    same = Graph("model", g.module, ("x",), ("y",), (torch.full((1, 4), 7.0),))  # other token ids, same shape
    cache.traced("onnx", same, 32, tmp_path / "o2/model.fp32.onnx", make)
    assert len(made) == 3 and (tmp_path / "o2/model.fp32.onnx").read_text() == "trace 1"
    longer = Graph("model", g.module, ("x",), ("y",), (torch.ones(2, 4),))
    cache.traced("onnx", longer, 32, tmp_path / "o2/model.fp32.onnx", make)
    assert len(made) == 4
    monkeypatch.setenv("CTB_EXPORT_CACHE", "0")
    cache.traced("onnx", g, 32, tmp_path / "o1/model.fp32.onnx", make)
    assert len(made) == 5 and (tmp_path / "o1/model.fp32.onnx").read_text() == "trace 5"


def test_the_weight_digest_is_reused_until_a_weight_changes(monkeypatch):
    """cache.key hashes a module's weights once for the export's key and the trace's, and again as
    soon as a weight changes in place or is replaced, so a stale key never reaches the cache."""
    import torch

    from toolchain.export import cache
    from toolchain.export.graph import Graph

    hashed = []
    tensor_bytes = cache._tensor_bytes
    monkeypatch.setattr(cache, "_tensor_bytes", lambda t: hashed.append(t.shape) or tensor_bytes(t))
    g = Graph("model", torch.nn.Linear(4, 2), ("x",), ("y",), (torch.ones(1, 4),))

    def keys():
        return cache.key("onnx", g, "int8", 32, {}), cache.key("onnx-trace", g, "fp32", 32, {})

    first = keys()
    weights_hashed = len([s for s in hashed if s != (1, 4)])
    assert weights_hashed == 2 and keys() == first and len([s for s in hashed if s != (1, 4)]) == 2
    with torch.no_grad():
        g.module.weight[0, 0] += 1.0  # in place
    changed = keys()
    assert changed[0] != first[0] and changed[1] != first[1]
    g.module.bias = torch.nn.Parameter(g.module.bias.detach().clone())  # replaced, same values
    assert keys() == changed and len([s for s in hashed if s != (1, 4)]) == 6
    with torch.no_grad():
        g.module.bias.zero_()
    assert keys()[0] != changed[0]


# ---------------------------------------------------------------------------------------------
# 20: output for pipelines


def test_tables_written_to_a_pipe_keep_whole_paths(tmp_path, cli):
    out = tmp_path / ("a-long-workspace-folder-name-" * 6) / "ws"
    recipe = write_recipe(tmp_path, TINY_TASK.replace("max_train_examples = 96", "max_train_examples = 32"))
    code, stdout, err = cli("train", recipe, "--out", out, "--epochs", "1", "--layers", "1")
    assert code == 0, err
    assert str(out / "sweep.json") in stdout and "runs/intent/L1-s0" in stdout and "…" not in stdout


def test_a_failing_verify_detail_says_fail_and_the_shortfall():
    from toolchain.verify import _versus

    assert _versus("agreement", 0.9833, 0.99, "at least", "{:.2%}") == \
        "FAIL: agreement 98.33% is 0.67% below the required 99.00%"
    assert _versus("agreement", 0.995, 0.99, "at least", "{:.2%}") == "agreement 99.50% (needs at least 99.00%)"
    assert _versus("accuracy drop", 1.5, 1.0, "at most", "{:.2f}").startswith("FAIL: accuracy drop 1.50 is 0.50 above")


# ---------------------------------------------------------------------------------------------
# 18, 19: no silent loss of data; the formats users bring

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O
U.S. NNP B-NP B-LOC
wins VBZ B-VP O
"""

CONLL_TASK = """
name = "ner"
backbone = "tiny-random"
max_seq_len = 32
[[tasks]]
name = "ner"
type = "tagging"
format = "conll"
train = "train.conll"
dev = "train.conll"
"""


def test_conll_files_are_read_as_sentences(tmp_path, cli):
    from toolchain.data import read_examples

    (tmp_path / "train.conll").write_text(CONLL)
    recipe = load_recipe(write_recipe(tmp_path, CONLL_TASK))
    ex = read_examples(recipe, recipe.tasks[0], "train")
    assert [(e.tokens, e.tags) for e in ex] == [
        (["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
        (["Peter", "Blackburn"], ["B-PER", "I-PER"]), (["U.S.", "wins"], ["B-LOC", "O"])]
    code, stdout, err = cli("check", tmp_path / "r.toml")
    assert code == 0 and "ner: tagging, 3 train / 3 dev, 6 labels" in stdout, err
    write_recipe(tmp_path, CONLL_TASK + "columns = { tokens = 0, tags = 7 }\n")
    code, _, err = cli("check", tmp_path / "r.toml")
    one_line_error(code, err, "line 3: 4 fields", "columns.tags = 7")
    write_recipe(tmp_path, CONLL_TASK.replace('"tagging"', '"classification"'))
    code, _, err = cli("check", tmp_path / "r.toml")
    one_line_error(code, err, "format conll holds tagging data")


def test_a_seqio_tagging_task_needs_no_label_file(tmp_path, cli):
    import shutil

    src = ROOT / "models/data/snips/valid"
    for split in ("train", "valid"):
        (tmp_path / split).mkdir()
        for name in ("seq.in", "seq.out"):
            shutil.copyfile(src / name, tmp_path / split / name)
    body = TINY_TASK.replace('"@DATA@/snips/train"', '"train"').replace('"@DATA@/snips/valid"', '"valid"') \
        + 'unseen_labels = "drop"\n'
    write_recipe(tmp_path, body.replace('type = "classification"', 'type = "tagging"'))
    code, stdout, err = cli("check", tmp_path / "r.toml")
    assert code == 0 and "intent: tagging" in stdout, err
    code, _, err = cli("check", write_recipe(tmp_path, body))
    one_line_error(code, err, "label not found", "seq.in, label for a classification task")


def test_what_a_cap_or_truncation_drops_is_said_in_one_line_each(tmp_path, cli):
    body = TINY_TASK.replace("max_seq_len = 32", "max_seq_len = 8").replace('type = "classification"', 'type = "tagging"') \
        + 'unseen_labels = "drop"\n'
    code, _, err = cli("check", write_recipe(tmp_path, body))
    notes = [x for x in err.splitlines() if "dev entities lie beyond max_seq_len 8" in x]
    assert code == 0 and len(notes) == 1, err
    cut, total = map(int, notes[0].split(": ", 1)[1].split(" dev entities")[0].split(" of "))
    assert 0 < cut < total
    clinc = """
name = "c"
backbone = "tiny-random"
[[tasks]]
name = "intent"
type = "classification"
format = "clinc150"
train = "@DATA@/clinc150/data_full.json"
dev = "@DATA@/clinc150/data_full.json"
max_train_examples = 40
unseen_labels = "drop"
"""
    code, _, err = cli("check", write_recipe(tmp_path, clinc))
    assert code == 0, err
    assert any("the train cap of 40 examples keeps" in x and "raise --max-train" in x for x in err.splitlines()), err
    assert any("dev rows have a label unseen in train and are not scored" in x for x in err.splitlines()), err


def test_a_replaced_run_is_named(tmp_path, cli):
    recipe = write_recipe(tmp_path, TINY_TASK.replace("max_train_examples = 96", "max_train_examples = 32")
                          + 'unseen_labels = "drop"\n')
    args = ("train", recipe, "--out", tmp_path / "ws", "--epochs", "1", "--layers", "1")
    assert cli(*args)[0] == 0
    code, _, err = cli(*args, "--max-train", "16")  # other data: the finished run is redone
    assert code == 0 and f"replacing {tmp_path / 'ws/runs/intent/L1-s0'} (it was trained on other data" in err, err


# ---------------------------------------------------------------------------------------------
# 8: every branch file in a store is checked against the sha256 recorded beside it


def test_one_flipped_bit_in_a_store_branch_is_refused(small_store, cli):
    meta = json.loads((small_store / "branches/intent/branch.json").read_text())
    assert len(meta["weights_sha256"]) == 64  # recorded when the branch was copied in
    f = small_store / "branches/intent/branch.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x40  # one exponent bit of the last weight: still a valid safetensors file
    f.write_bytes(bytes(data))
    code, _, err = cli("predict", small_store, "play some jazz")
    one_line_error(code, err, "branch.safetensors does not match the sha256 in its branch.json")
    code, _, err = cli("branch", "list", small_store)
    assert code == 0, err  # listing reads only branch.json


def test_the_input_triple_is_named_and_programs_get_theirs_by_name():
    from toolchain.batch import INPUTS, pad_batch

    b = pad_batch([[101, 7, 102], [101, 102]], [[0, 0, 1], [0, 0]], "cpu")
    assert b.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]] and b.token_type_ids.tolist() == [[0, 0, 1], [0, 0, 0]]
    feeds = b.feeds()
    assert list(feeds) == list(INPUTS) and (feeds["attention_mask"] == b.attention_mask.numpy()).all()
