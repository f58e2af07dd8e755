"""Issue 23, §1, §3 (store), §5 and §8 (store): what a command may replace, links in stores and bundles,
the store's tokenizer checksummed, a branch without weights_sha256, file modes, a branch folder named
unlike its task, a read-only old store. None of these train; the one export is fp32 ONNX of a fake store."""

import json
import os
import shutil
import types

import pytest
from conftest import TINY_TASK, write_recipe
from test_cli import one_line_error, tree_digest
from test_hardening import fake_run

from toolchain import UserError, backbone, store
from toolchain.branch_config import FILE, WEIGHTS
from toolchain.fsutil import atomic_dir

KINDS = ["bench", "branch", "bundle", "golden", "run", "store", "verify report"]


@pytest.fixture(scope="module")
def bb():
    return backbone.load("tiny-random")


@pytest.fixture
def two(bb, tmp_path):
    """A store of two fake tasks: intent (attach 2) and other (attach 1)."""
    sd = tmp_path / "ws" / "store"
    store.create(sd, bb, "tiny-random", [fake_run(bb, tmp_path / "runs" / "intent"),
                                         fake_run(bb, tmp_path / "runs" / "other", task="other", attach=1)])
    return sd


def precious(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "thesis.txt").write_text("four years of work")
    return folder


# ---------------------------------------------------------------------------------------------
# §1: a command replaces only a folder of the kind it writes


@pytest.mark.parametrize("kind", KINDS)
def test_a_folder_of_another_kind_is_never_replaced(tmp_path, kind):
    dest = precious(tmp_path / "precious")
    with pytest.raises(UserError, match=r"precious is not a .* folder \(it holds thesis.txt; no .*\), so it is not"):
        with atomic_dir(dest, kind=kind) as tmp:
            (tmp / "x").write_text("new")
    assert (dest / "thesis.txt").read_text() == "four years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]  # nothing written beside it


def test_a_folder_of_its_kind_an_empty_one_or_none_is_replaced(tmp_path):
    for dest, before in ((tmp_path / "b", {"manifest.json": "{}"}), (tmp_path / "empty", {}), (tmp_path / "new", None)):
        if before is not None:
            dest.mkdir()
            for k, v in before.items():
                (dest / k).write_text(v)
        with atomic_dir(dest, kind="bundle") as tmp:
            (tmp / "manifest.json").write_text("new")
        assert sorted(p.name for p in dest.iterdir()) == ["manifest.json"]


def test_the_kind_of_what_it_holds_is_named(two, tmp_path):
    from toolchain.fsutil import check_replaceable

    with pytest.raises(UserError, match=r"store is not a bundle folder \(it is a store folder \(store.json\); no "
                                        r"manifest.json\)"):
        check_replaceable(two, "bundle")
    sub = tmp_path / "many"
    for i in range(5):
        precious(sub / f"d{i}")
    with pytest.raises(UserError, match=r"it holds d0, d1, d2 and 2 more"):
        check_replaceable(sub, "store")


def test_never_the_working_folder_an_input_or_a_folder_holding_one(tmp_path, monkeypatch):
    from toolchain.fsutil import check_replaceable

    work = tmp_path / "w" / "cwd"
    work.mkdir(parents=True)
    (work / "manifest.json").write_text("{}")  # even of the right kind
    monkeypatch.chdir(work)
    for dest, needle in ((work, "it is the working folder"), (tmp_path / "w", "it holds the working folder"),
                         (tmp_path, "it holds the working folder")):
        with pytest.raises(UserError, match=needle):
            check_replaceable(dest, "bundle")
    inp = tmp_path / "in" / "store"
    inp.mkdir(parents=True)
    (inp / "store.json").write_text("{}")
    with pytest.raises(UserError, match="it is the input"):
        check_replaceable(inp, "store", [inp])
    with pytest.raises(UserError, match="it holds the input"):
        check_replaceable(tmp_path / "in", "store", [inp])
    with pytest.raises(UserError, match="is inside the input"):
        check_replaceable(inp / "bundles" / "b", "bundle", [inp])
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        check_replaceable(tmp_path / "f", "bundle")
    (tmp_path / "link").symlink_to(inp, target_is_directory=True)
    with pytest.raises(UserError, match="is a link"):
        check_replaceable(tmp_path / "link", "store")


def test_merge_into_the_workspace_root_is_refused(bb, tmp_path, cli):
    """`merge R --from selected --out w --store w --force`: runs/ and selected.json stay."""
    recipe = write_recipe(tmp_path, TINY_TASK)
    ws = tmp_path / "w"
    fake_run(bb, ws / "runs" / "intent" / "L1-s0")
    (ws / "selected.json").write_text(json.dumps({"intent": {"run": "runs/intent/L1-s0", "layers": 1}}))
    before = tree_digest(ws)
    code, _, err = cli("merge", recipe, "--from", "selected", "--out", ws, "--store", ws, "--force")
    one_line_error(code, err, f"{ws} is not replaced: it holds the input")
    assert tree_digest(ws) == before
    precious(tmp_path / "p")
    code, _, err = cli("merge", recipe, "--from", "selected", "--out", ws, "--store", tmp_path / "p", "--force")
    one_line_error(code, err, "is not a store folder (it holds thesis.txt")
    code, _, err = cli("merge", recipe, "--from", "selected", "--out", ws, "--store", ws / "s")
    assert code == 0, err


def test_export_refuses_a_precious_folder_the_store_and_the_working_folder(bb, tmp_path, cli, monkeypatch):
    recipe = write_recipe(tmp_path, TINY_TASK)
    sd = tmp_path / "store"
    store.create(sd, bb, "tiny-random", [fake_run(bb, tmp_path / "r")])
    work = precious(tmp_path / "cwd")
    monkeypatch.chdir(work)
    args = ("export", recipe, "--target", "onnx", "--precision", "fp32", "--store", sd, "--out-dir")
    before = {p: tree_digest(p) for p in (sd, work)}
    for dest, needle in ((precious(tmp_path / "precious"), "is not a bundle folder (it holds thesis.txt"),
                         (sd, "it is the input"), (work, "it is the working folder"), (tmp_path, "it holds")):
        code, _, err = cli(*args, dest)
        one_line_error(code, err, needle)
    assert {p: tree_digest(p) for p in (sd, work)} == before
    assert (tmp_path / "precious" / "thesis.txt").is_file()


def test_a_verify_report_or_bench_folder_of_another_kind_is_refused(tmp_path, two):
    from toolchain.config import load_recipe
    from toolchain.verify import verify

    recipe = load_recipe(write_recipe(tmp_path, TINY_TASK))
    p = precious(tmp_path / "precious")
    with pytest.raises(UserError, match="is not a verify report folder"):
        verify(tmp_path / "nobundle", recipe, two, p, runs_dir=tmp_path, log=lambda m: None)
    with pytest.raises(UserError, match="is the input"):
        verify(two, recipe, two, two, runs_dir=tmp_path, log=lambda m: None)
    pytest.importorskip("matplotlib")
    from toolchain.bench.request import BenchRequest, check_request

    with pytest.raises(UserError, match="is not a bench folder"):
        check_request(BenchRequest(recipe, two, p, targets=("onnx",), precisions=("fp32",), lengths=(16,), repeats=1,
                                   peer=False, guard_examples=8))
    assert (p / "thesis.txt").is_file()


def test_a_retrained_run_replaces_a_run_folder_only(tmp_path):
    from toolchain.runs import replaced

    con = types.SimpleNamespace(print=lambda *a, **k: None)
    run = precious(tmp_path / "runs" / "t" / "L1-s0")
    with pytest.raises(UserError, match="is not a run folder"):
        replaced(con, run, "--force")
    assert (run / "thesis.txt").is_file()
    (run / "result.json").write_text("{}")
    replaced(con, run, "--force")
    assert not run.exists()


# ---------------------------------------------------------------------------------------------
# embed: two folders that change as one, links refused (a stub for the bundle's manifest check)


def fake_verified(tmp_path, readme="read me"):
    """A bundle folder and its passing verify report, as embed reads them (manifest checked by a stub)."""
    from runtime_py.bundle import file_sha256

    b = tmp_path / "b"
    b.mkdir()
    (b / "manifest.json").write_text(json.dumps({"target": "android", "files": ["model.pte"]}))
    (b / "model.pte").write_bytes(b"program")
    if readme is not None:
        (b / "README.md").write_text(readme)
    r = tmp_path / "b.verify"
    r.mkdir()
    for name in ("golden.json", "golden_tokenizer.json", "golden_spans.json"):
        (r / name).write_text("{}")
    (r / "verify.json").write_text(json.dumps({"ok": True, "checks": [],
                                               "manifest_sha256": file_sha256(b / "manifest.json")}))
    return b, r


def stub_manifest(folder):
    import runtime_py.bundle as rb

    m = json.loads((folder / "manifest.json").read_text())
    for f in m["files"]:
        if not (folder / f).is_file():
            raise rb.BundleError(f"{folder}: {f} missing")
    return types.SimpleNamespace(target=m["target"], files=m["files"])


@pytest.fixture
def stubbed(monkeypatch):
    import runtime_py.bundle as rb

    monkeypatch.setattr(rb, "load_manifest", stub_manifest)


def test_embed_refuses_an_app_folder_of_another_kind(stubbed, tmp_path):
    from toolchain.embed import APPS, embed

    b, _ = fake_verified(tmp_path)
    app = tmp_path / "android_demo"
    spec = APPS["android_demo"]
    precious(app / spec.bundle)
    with pytest.raises(UserError, match="bundle is not a bundle folder .it holds thesis.txt"):
        embed(b, "android_demo", app)
    shutil.rmtree(app / spec.bundle)
    precious(app / spec.golden)
    with pytest.raises(UserError, match="golden is not a golden folder .it holds thesis.txt"):
        embed(b, "android_demo", app)
    assert not (app / spec.bundle).exists()  # neither folder changed
    shutil.rmtree(app / spec.golden)
    embed(b, "android_demo", app)
    assert (app / spec.bundle / "README.md").read_text() == "read me"
    assert (app / spec.golden / "verify.json").is_file()
    with pytest.raises(UserError, match="is inside the input"):
        embed(b, "android_demo", b)  # the app's folders would be written inside the bundle


def test_embed_copies_no_link(stubbed, tmp_path):
    from toolchain.embed import APPS, embed

    secret = tmp_path / "secret.txt"
    secret.write_text("ssh key")
    b, r = fake_verified(tmp_path, readme=None)
    (b / "README.md").symlink_to(secret)
    app = tmp_path / "android_demo"
    app.mkdir()
    with pytest.raises(UserError, match=r"README.md is a link \(to .*secret.txt\); embed copies plain files only"):
        embed(b, "android_demo", app)
    (b / "README.md").unlink()
    (r / "golden_spans.json").unlink()
    (r / "golden_spans.json").symlink_to(secret)
    with pytest.raises(UserError, match="golden_spans.json is a link"):
        embed(b, "android_demo", app)
    assert not (app / APPS["android_demo"].bundle).exists() and not (app / APPS["android_demo"].golden).exists()


# ---------------------------------------------------------------------------------------------
# §5: links in a store


@pytest.mark.parametrize("where", ["branch", "trunk", "tokenizer", "branch file"])
def test_a_link_anywhere_in_a_store_is_refused_by_every_reader(bb, two, tmp_path, cli, where):
    outside = tmp_path / "outside"
    if where == "branch":  # a branch folder that is a link to a folder outside the store
        fake_run(bb, outside, task="linked")
        (two / "branches" / "linked").symlink_to(outside, target_is_directory=True)
        rel = "branches/linked"
    else:
        rel = {"trunk": "trunk.safetensors", "tokenizer": "tokenizer/tokenizer.json",
               "branch file": "branches/other/branch.safetensors"}[where]
        outside.mkdir()
        os.replace(two / rel, outside / "f")
        (two / rel).symlink_to(outside / "f")
    for args in (("predict", two, "hello"), ("branch", "list", two)):
        code, _, err = cli(*args)
        one_line_error(code, err, f"{rel} is a link", "a store holds its own files only")
    with pytest.raises(UserError, match="is a link"):
        store.load_merged(two)


# ---------------------------------------------------------------------------------------------
# §3 (store): every file that changes an output is checksummed


def test_an_edited_tokenizer_is_refused(two, cli):
    code, before, _ = cli("predict", two, "HELLO World")
    assert code == 0
    tj = two / "tokenizer" / "tokenizer.json"
    good = tj.read_bytes()
    t = json.loads(good)
    t["normalizer"]["lowercase"] = False
    tj.write_text(json.dumps(t))
    code, _, err = cli("predict", two, "HELLO World")
    one_line_error(code, err, "tokenizer/tokenizer.json does not match the sha256 in store.json")
    tj.write_bytes(good)
    vocab = two / "tokenizer" / "vocab.txt"
    if vocab.is_file():
        vocab.write_text(vocab.read_text().replace("hello", "hallo", 1))
        code, _, err = cli("predict", two, "hello")
        one_line_error(code, err, "tokenizer/vocab.txt does not match")
        vocab.unlink()
        code, _, err = cli("predict", two, "hello")
        one_line_error(code, err, "tokenizer/vocab.txt is missing")
    meta = json.loads((two / "store.json").read_text())
    assert set(meta["tokenizer_sha256"]) == {p.name for p in (bb_tokenizer_files())}
    del meta["tokenizer_sha256"]
    (two / "store.json").write_text(json.dumps(meta))
    code, _, err = cli("branch", "list", two)
    one_line_error(code, err, "records no sha256 of its tokenizer", "merge --force")


def bb_tokenizer_files():
    p = backbone.load("tiny-random").path
    return [p / n for n in store.TOKENIZER_FILES if (p / n).is_file()]


def test_a_store_branch_without_weights_sha256_is_refused(two, cli):
    bj = two / "branches" / "intent" / FILE
    meta = json.loads(bj.read_text())
    del meta["weights_sha256"]
    bj.write_text(json.dumps(meta))
    w = two / "branches" / "intent" / WEIGHTS
    data = bytearray(w.read_bytes())
    data[-3] ^= 0x01  # a flipped weight byte: loaded silently when nothing records the sha256
    w.write_bytes(bytes(data))
    code, _, err = cli("predict", two, "hello")
    one_line_error(code, err, "lacks", "weights_sha256")


# ---------------------------------------------------------------------------------------------
# §8 (store)


def test_every_store_file_follows_the_umask(bb, tmp_path):
    old = os.umask(0o022)
    try:
        two = tmp_path / "store"
        store.create(two, bb, "tiny-random", [fake_run(bb, tmp_path / "r")])
    finally:
        os.umask(old)
    modes = {str(p.relative_to(two)): p.stat().st_mode & 0o777 for p in two.rglob("*") if p.is_file()}
    assert modes["trunk.safetensors"] == 0o644, modes
    assert set(modes.values()) == {0o644}, modes


def test_a_branch_folder_named_unlike_its_task_is_refused(two, cli):
    shutil.copytree(two / "branches" / "intent", two / "branches" / "copy")  # a second "intent"
    for args in (("predict", two, "hello"), ("branch", "list", two)):
        code, _, err = cli(*args)
        one_line_error(code, err, "folder branches/copy holds task 'intent'")


def test_a_read_only_old_store_is_deleted_or_named(bb, tmp_path, monkeypatch):
    """As a user who is not root: a read-only folder's entries cannot be deleted until it is made writable."""
    import stat

    real_unlink, real_rmdir = os.unlink, os.rmdir

    def writable(path, dir_fd):
        st = os.fstat(dir_fd) if dir_fd is not None else os.stat(os.path.dirname(os.path.abspath(path)))
        if not st.st_mode & stat.S_IWUSR:
            raise PermissionError(13, "Permission denied", path)

    def unlink(path, *, dir_fd=None):
        writable(path, dir_fd)
        return real_unlink(path, dir_fd=dir_fd)

    def rmdir(path, *, dir_fd=None):
        writable(path, dir_fd)
        return real_rmdir(path, dir_fd=dir_fd)

    runs = [fake_run(bb, tmp_path / "r")]
    sd = tmp_path / "store"
    store.create(sd, bb, "tiny-random", runs)
    for p in [sd, *sd.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "rmdir", rmdir)
    store.create(sd, bb, "tiny-random", runs, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".store.lock", "r", "store"]  # no .store.old-PID
    for p in [sd, *sd.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)  # a folder that cannot be made writable
    with pytest.raises(UserError, match=r"was replaced, but its previous content .*\.store\.old-\d+ cannot be "
                                        "deleted .Permission denied.; delete it by hand"):
        store.create(sd, bb, "tiny-random", runs, force=True)
    assert (sd / "store.json").is_file()


def test_a_repair_that_cannot_delete_says_so(tmp_path, monkeypatch):
    from toolchain.fsutil import recover

    left = tmp_path / ".x.tmp-999999-ab"
    left.mkdir()

    def fail(p):
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr("toolchain.fsutil.remove_tree", fail)
    with pytest.raises(UserError, match=r"\.x\.tmp-999999-ab \(a temporary folder\) cannot be deleted"):
        recover(tmp_path / "x")


def test_train_and_distill_never_write_into_a_store_or_a_bundle(two, tmp_path, cli):
    recipe = write_recipe(tmp_path, TINY_TASK)
    before = tree_digest(two)
    for cmd in ("train", "distill", "merge"):
        code, _, err = cli(cmd, recipe, "--out", two)
        one_line_error(code, err, f"{two} is a store folder, not a training folder")
    assert tree_digest(two) == before and not (two / "runs").exists()
