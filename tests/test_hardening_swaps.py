"""Issue 23 §2: no task lost in a swap. A reader during a change sees every branch old or new, never
missing; a kill at any step of `branch update/add/remove`, `merge`, `export` and `embed` leaves the old
state or the new one (embed's bundle and golden folders together), and the command run again succeeds.

The kill-point tests run each command in a subprocess that SIGKILLs itself before its n-th rename or
delete of the folders being changed, for n = 1, 2, ... until a run completes; they are in the slow
tier (`pytest -m slow tests/test_hardening_swaps.py`, about two minutes on two cores)."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, TINY_TASK, write_recipe
from test_cli import tree_digest
from test_hardening import fake_run

from toolchain import UserError, backbone, store

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def bb():
    return backbone.load("tiny-random")


@pytest.fixture(scope="module")
def runs(bb, tmp_path_factory):
    """Run folders: intent A and B (different heads), other, extra."""
    d = tmp_path_factory.mktemp("runs")
    return {"A": fake_run(bb, d / "A"), "B": fake_run(bb, d / "B", attach=1),
            "other": fake_run(bb, d / "other", task="other", attach=1), "extra": fake_run(bb, d / "extra", task="extra")}


@pytest.fixture(scope="module")
def pristine(bb, runs, tmp_path_factory):
    """A store of intent (run A) and other, and the digests of each branch folder as A, as B and as other."""
    d = tmp_path_factory.mktemp("pristine")
    sd = d / "store"
    store.create(sd, bb, "tiny-random", [runs["A"], runs["other"]])
    scratch = d / "scratch" / "store"
    shutil.copytree(sd, scratch)
    store.update(scratch, runs["B"])
    store.add(scratch, runs["extra"])
    dig = {"A": tree_digest(sd / "branches/intent"), "B": tree_digest(scratch / "branches/intent"),
           "other": tree_digest(sd / "branches/other"), "extra": tree_digest(scratch / "branches/extra")}
    return sd, dig


def fresh(pristine, where):
    sd = where / "store"
    shutil.copytree(pristine[0], sd)
    return sd


def leftovers(sd):
    return sorted([p.name for p in sd.parent.iterdir() if p.name.startswith(".") and p.name != ".store.lock"]
                  + [p.name for p in (sd / "branches").iterdir() if p.name.startswith(".")])


# ---------------------------------------------------------------------------------------------
# Fast: a kill's leftovers are repaired before any check or read; a reader waits for a swap


@pytest.mark.parametrize("left", ["new and old", "old only"])
def test_a_task_swapped_out_by_a_killed_update_is_seen_and_updated(pristine, runs, tmp_path, cli, left):
    sd = fresh(pristine, tmp_path)
    b = sd / "branches"
    if left == "new and old":  # killed between `intent -> .old` and `.new -> intent`: the new one is complete
        store_b = fresh(pristine, tmp_path / "b")
        store.update(store_b, runs["B"])
        shutil.copytree(store_b / "branches/intent", b / ".intent.new-999999")
    os.rename(b / "intent", b / ".intent.old-999999")
    want = pristine[1]["B" if left == "new and old" else "A"]
    code, out, err = cli("predict", sd, "play some jazz")
    assert code == 0 and '"intent"' in out, (out, err)  # not silently without the task
    assert tree_digest(b / "intent") == want and leftovers(sd) == []
    os.rename(b / "intent", b / ".intent.old-999999")
    code, out, err = cli("branch", "update", sd, runs["B"])  # not "not in the store ... use branch add"
    assert code == 0, err
    assert tree_digest(b / "intent") == pristine[1]["B"] and leftovers(sd) == []
    os.rename(b / "intent", b / ".intent.old-999999")
    _, metas = store.load_merged(sd)[1:]
    assert sorted(metas) == ["intent", "other"]


SWAPPER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from toolchain import fsutil
    sd = Path(sys.argv[1])
    b = sd / "branches"
    with fsutil.locked(sd):  # a writer inside its swap: the branch is renamed away for a while
        os.rename(b / "intent", b / f".intent.old-{os.getpid()}")
        print("swapped", flush=True)
        time.sleep(float(sys.argv[2]))
        os.rename(b / f".intent.old-{os.getpid()}", b / "intent")
""")


def test_a_reader_during_a_swap_waits_and_sees_every_task(pristine, tmp_path):
    sd = fresh(pristine, tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", SWAPPER, str(sd), "2"], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline().strip() == "swapped"
        start = time.monotonic()
        _, _, metas = store.load_merged(sd)
        assert sorted(metas) == ["intent", "other"]
        assert time.monotonic() - start >= 1.0  # it waited for the swap to finish
        assert store.branch_names(sd) == ["intent", "other"]
    finally:
        writer.kill()
        writer.wait()


def test_a_reader_gives_up_in_one_line_on_a_writer_that_never_finishes(pristine, tmp_path):
    from toolchain import fsutil

    sd = fresh(pristine, tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", SWAPPER, str(sd), "30"], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline().strip() == "swapped"
        with pytest.raises(UserError, match="held by a writer for 0 s"):
            with fsutil.reading(sd, wait=0.5):
                pass
    finally:
        writer.kill()
        writer.wait()


# ---------------------------------------------------------------------------------------------
# Slow: concurrent readers, and a kill at each step of every command that swaps folders

UPDATER = textwrap.dedent("""
    import sys
    from toolchain import store
    sd, a, b, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    for i in range(n):
        store.update(sd, b if i % 2 == 0 else a)
    print("done", flush=True)
""")


@pytest.mark.slow
def test_predict_during_a_stream_of_updates_always_sees_every_task(pristine, runs, tmp_path):
    sd = fresh(pristine, tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", UPDATER, str(sd), str(runs["A"]), str(runs["B"]), "12"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reads = 0
    try:
        while writer.poll() is None:
            _, _, metas = store.load_merged(sd)
            assert sorted(metas) == ["intent", "other"]
            assert tree_digest(sd / "branches/intent") in (pristine[1]["A"], pristine[1]["B"])
            reads += 1
    finally:
        writer.kill()
        out, err = writer.communicate()
    assert "done" in out, err
    assert reads >= 3 and leftovers(sd) == []


HARNESS = textwrap.dedent("""
    import os, re, shutil, signal, sys
    n, pattern = int(os.environ["KILL_AT"]), re.compile(os.environ["KILL_MATCH"])
    seen = [0]
    def hooked(real):
        def call(*args, **kwargs):
            if any(pattern.fullmatch(os.path.basename(str(a))) for a in args[:2] if isinstance(a, (str, os.PathLike))):
                seen[0] += 1
                if seen[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)  # before this step
            return real(*args, **kwargs)
        return call
    os.replace, os.rename, shutil.rmtree = hooked(os.replace), hooked(os.rename), hooked(shutil.rmtree)
    if os.environ.get("STUB_MANIFEST"):
        sys.path.insert(0, os.environ["TESTS"])
        import runtime_py.bundle
        from test_folders import stub_manifest
        runtime_py.bundle.load_manifest = stub_manifest
    sys.argv = ["ctb-mobile", *sys.argv[1:]]
    from toolchain.cli import main
    main()
""")


def programs(bundle):
    """A bundle's files but the manifest and README (which say when it was made)."""
    return {k: v for k, v in tree_digest(bundle).items() if k not in ("manifest.json", "README.md")}


def kill_at_each_step(args, pattern, reset, check, rerun, env=None):
    """Run `ctb-mobile args` killed before its n-th step (a rename or delete of a path whose name matches
    `pattern`), for n = 1, 2, ... until a run completes; after each kill check() the state, then rerun().
    Returns the number of kill points."""
    for n in range(1, 60):
        reset()
        proc = subprocess.run([sys.executable, "-c", HARNESS, *map(str, args)], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "KILL_AT": str(n), "KILL_MATCH": pattern, "TESTS": TESTS,
                                              **(env or {})})
        if proc.returncode == 0:
            return n - 1
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        check(n)
        rerun(n)
    raise AssertionError(f"{args} never completed")


@pytest.mark.slow
@pytest.mark.parametrize("op", ["update", "add", "remove"])
def test_a_kill_at_each_step_of_a_branch_change(pristine, runs, tmp_path, op):
    dig = pristine[1]
    task, arg, after = {"update": ("intent", runs["B"], "B"), "add": ("extra", runs["extra"], "extra"),
                        "remove": ("other", "other", None)}[op]
    before = {"update": "A", "add": None, "remove": "other"}[op]
    sd = tmp_path / "k" / "store"

    def reset():
        shutil.rmtree(sd.parent, ignore_errors=True)
        fresh(pristine, sd.parent)

    def check(n):
        _, _, metas = store.load_merged(sd)  # a reader, right after the kill: repairs first
        have = {t: tree_digest(sd / "branches" / t) for t in metas}
        want = {"intent": dig["A"], "other": dig["other"]}
        got = have.pop(task, None)
        assert got in [dig[before] if before else None, dig[after] if after else None], (op, n)
        want.pop(task, None)
        assert have == want, (op, n)  # every other task present and untouched

    def rerun(n):
        try:
            {"update": store.update, "add": store.add, "remove": store.remove}[op](sd, arg)
        except UserError as e:  # the killed run had already made the change
            assert ("already in the store" if op == "add" else "is not in the store") in str(e) and op != "update"
        assert (tree_digest(sd / "branches" / task) if (sd / "branches" / task).exists() else None) == \
            (dig[after] if after else None)
        assert leftovers(sd) == []

    steps = kill_at_each_step(("branch", op, sd, arg), rf"\.?{task}(\..+)?", reset, check, rerun)
    assert steps >= (2 if op == "remove" else 3)


@pytest.mark.slow
def test_a_kill_at_each_step_of_merge(bb, pristine, runs, tmp_path):
    import json

    recipe = write_recipe(tmp_path, TINY_TASK)
    ws = tmp_path / "ws"
    shutil.copytree(runs["B"], ws / "runs" / "intent" / "B")
    (ws / "selected.json").write_text(json.dumps({"intent": {"run": "runs/intent/B", "layers": 1}}))
    dig = pristine[1]

    def reset():
        shutil.rmtree(ws / "store", ignore_errors=True)
        for p in ws.iterdir():
            if p.name.startswith(".store."):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        shutil.copytree(pristine[0], ws / "store")

    def check(n):
        _, _, metas = store.load_merged(ws / "store")
        have = {t: tree_digest(ws / "store/branches" / t) for t in metas}
        assert have in ({"intent": dig["A"], "other": dig["other"]}, {"intent": dig["B"]}), n

    def rerun(n):
        store.create(ws / "store", bb, "tiny-random", [ws / "runs/intent/B"], force=True)
        assert store.branch_names(ws / "store") == ["intent"]
        assert tree_digest(ws / "store/branches/intent") == dig["B"]
        assert sorted(p.name for p in ws.iterdir()) == [".store.lock", "runs", "selected.json", "store"]

    args = ("merge", recipe, "--from", "selected", "--out", ws, "--store", ws / "store", "--force")
    assert kill_at_each_step(args, r"\.?store(\..+)?", reset, check, rerun) >= 3


@pytest.mark.slow
def test_a_kill_at_each_step_of_export(bb, runs, tmp_path):
    from runtime_py.bundle import load_manifest
    from toolchain.config import load_recipe
    from toolchain.export import export_bundle
    from toolchain.fsutil import reading

    recipe = write_recipe(tmp_path, TINY_TASK)
    sd = tmp_path / "store"
    store.create(sd, bb, "tiny-random", [runs["A"]])
    out = tmp_path / "bundles" / "onnx"
    export_bundle(load_recipe(recipe), sd, "onnx", "fp32", "fused", out, log=lambda m: None)
    keep = tmp_path / "old-bundle"
    shutil.copytree(out, keep)
    old = programs(keep)
    store.update(sd, runs["B"])
    scratch = tmp_path / "scratch" / "onnx"
    export_bundle(load_recipe(recipe), sd, "onnx", "fp32", "fused", scratch, log=lambda m: None)
    new = programs(scratch)
    assert new != old

    def reset():
        shutil.rmtree(out.parent)
        shutil.copytree(keep, out)

    def check(n):
        with reading(out):  # what a reader that repairs sees (embed; the next export repairs the same way)
            load_manifest(out)
            assert programs(out) in (old, new), n

    def rerun(n):
        export_bundle(load_recipe(recipe), sd, "onnx", "fp32", "fused", out, log=lambda m: None)
        assert programs(out) == new
        assert sorted(p.name for p in out.parent.iterdir()) == [".onnx.lock", "onnx"]

    args = ("export", recipe, "--target", "onnx", "--precision", "fp32", "--store", sd, "--out-dir", out)
    assert kill_at_each_step(args, r"\.?onnx(\..+)?", reset, check, rerun) >= 3


@pytest.mark.slow
def test_a_kill_at_each_step_of_embed_changes_both_folders_or_neither(tmp_path):
    from test_folders import fake_verified

    from toolchain.embed import APPS
    from toolchain.fsutil import recover_dirs

    spec = APPS["android_demo"]
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    for v in (v1, v2):
        v.mkdir()
        b, r = fake_verified(v, readme=v.name)
        (r / "golden.json").write_text(v.name)
    app = tmp_path / "app"
    dests = (app / spec.bundle, app / spec.golden)
    env = {"STUB_MANIFEST": "1"}

    def embed(v):
        proc = subprocess.run([sys.executable, "-c", HARNESS, "embed", v / "b", "--app", "android_demo", "--app-dir",
                               app], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "KILL_AT": "0", "KILL_MATCH": "-", "TESTS": TESTS, **env})
        assert proc.returncode == 0, proc.stderr[-3000:]

    def versions():
        return ((dests[0] / "README.md").read_text(), (dests[1] / "golden.json").read_text())

    def reset():
        shutil.rmtree(app, ignore_errors=True)
        app.mkdir()
        embed(v1)

    def check(n):
        recover_dirs(dests, lock=dests[0])  # the repair the next embed makes first
        assert versions() in (("v1", "v1"), ("v2", "v2")), n  # never a new bundle with old golden files

    def rerun(n):
        embed(v2)
        assert versions() == ("v2", "v2")
        for d in dests:
            assert sorted(p.name for p in d.parent.iterdir() if p.name.startswith(".")) in ([], [".bundle.lock"])

    args = ("embed", v2 / "b", "--app", "android_demo", "--app-dir", app)
    assert kill_at_each_step(args, r"\.?(bundle|golden)(\..+)?", reset, check, rerun, env) >= 5
