"""The merged model store: one frozen trunk, one folder per task branch (like peft's adapters).

    store/
      store.json                      schema, backbone spec and fingerprint, encoder config, version
      trunk.safetensors               the frozen backbone (embeddings, every layer, pooler); never rewritten
      tokenizer/tokenizer.json        the backbone's tokenizer (and vocab.txt when it has one)
      branches/<task>/branch.safetensors, branch.json

Adding, removing or updating a branch touches only that branch's folder, so every other task's
files and outputs stay exactly as they were. Every change is atomic: a branch folder is written
under a temporary name and renamed into place, or renamed away before it is deleted.

Changes hold the lock beside the store exclusively and reads hold it shared (fsutil.reading), so a
reader sees each branch old or new, never missing; a change cut short by a kill is repaired before
anything is checked or read. Every file that changes an output is checksummed: the trunk by its
fingerprint, each branch by the weights_sha256 in its branch.json, the tokenizer files by the sha256s
in store.json. A link anywhere in a store is refused: a store holds its own files only.
"""

import hashlib
import os
import shutil
from pathlib import Path

from runtime_py.bundle import file_sha256
from toolchain import UserError, __version__
from toolchain.branch_config import WEIGHTS, BranchConfig, load_branch, save_branch
from toolchain.fsutil import (atomic_dir, check_replaceable, child, follow_umask, locked, read_json, reading,
                              recover_tree, remove_tree, write_json_atomic)

STORE_FORMAT = 1  # store.json's format version: a newer one asks for a newer ctb-mobile, an older one for a rebuild
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
REBUILD = "rebuild the store with `ctb-mobile merge --force`"


# ---------------------------------------------------------------------------------------------
# One branch folder


def check_fits(store_meta: dict, meta: BranchConfig, where: str) -> None:
    if meta.backbone_fingerprint != store_meta["backbone_fingerprint"]:
        raise UserError(f"{where} was trained on another trunk (fingerprint {meta.backbone_fingerprint[:12]}, "
                        f"store has {store_meta['backbone_fingerprint'][:12]}); retrain it on {store_meta['backbone']}")
    depth = store_meta["encoder"]["num_layers"]
    if not 0 <= meta.attach <= depth or meta.attach + meta.layers > depth:
        raise UserError(f"{where} attaches at depth {meta.attach} with {meta.layers} layers, beyond the "
                        f"{depth}-layer trunk; retrain it for this backbone")


# ---------------------------------------------------------------------------------------------
# The store


def _meta(store_dir: Path) -> dict:
    """store.json, checked: every key the toolchain reads is there, of its type."""
    f = store_dir / "store.json"
    if not f.is_file():
        raise UserError(f"store {store_dir} not found (no store.json); build one with `ctb-mobile merge`")
    meta = read_json(f, REBUILD)
    schema = meta.get("schema") if isinstance(meta, dict) else None
    if isinstance(schema, int) and not isinstance(schema, bool) and schema > STORE_FORMAT:
        raise UserError(f"store {store_dir}: store.json is schema {schema}, written by a newer ctb-mobile (this one "
                        f"reads {STORE_FORMAT}); upgrade ctb-mobile (pip install -U ctb-mobile)")
    if schema != STORE_FORMAT:
        raise UserError(f"store {store_dir}: schema {schema!r}, this toolchain reads {STORE_FORMAT}; {REBUILD}")
    for key, kind in (("backbone", str), ("backbone_fingerprint", str), ("encoder", dict)):
        if not isinstance(meta.get(key), kind):
            raise UserError(f"store {store_dir}: store.json {key} is {'missing' if key not in meta else 'malformed'}; "
                            f"{REBUILD}")
    _check_encoder(meta["encoder"], f"store {store_dir}: store.json")
    if not isinstance(meta.get("tokenizer_sha256"), dict) or "tokenizer.json" not in meta["tokenizer_sha256"]:
        raise UserError(f"store {store_dir}: store.json records no sha256 of its tokenizer (a store made before "
                        f"tokenizer checksums, or edited), so its tokenizer cannot be checked; {REBUILD}")
    return meta


def _check_encoder(enc: dict, where: str) -> None:
    """store.json's encoder: exactly EncoderConfig's keys, each of its declared type (the trunk is built
    from them: an extra key or a string for a number would fail later as an internal error)."""
    import dataclasses

    from toolchain.model import EncoderConfig

    fields = {f.name: f for f in dataclasses.fields(EncoderConfig)}
    unknown = sorted(set(enc) - set(fields))
    if unknown:
        raise UserError(f"{where}: encoder has unknown key {unknown[0]!r}; {REBUILD}")
    for name, f in fields.items():
        if name not in enc:
            if f.default is dataclasses.MISSING:
                raise UserError(f"{where}: encoder lacks {name!r}; {REBUILD}")
            continue
        v, kind = enc[name], {float: (int, float)}.get(f.type, f.type)
        if not isinstance(v, kind) or isinstance(v, bool) or (kind is not str and v < 0):
            raise UserError(f"{where}: encoder {name} = {repr(v)[:40]} is not a"
                            f"{'' if kind is str else ' non-negative'} {getattr(kind, '__name__', 'number')}; {REBUILD}")


def _check_plain(store_dir: Path) -> None:
    """A store holds plain files and folders only: a link (to a branch, a trunk or a tokenizer kept
    elsewhere) is refused, wherever it is in the store."""
    if store_dir.is_symlink() and not store_dir.is_dir():
        raise UserError(f"store {store_dir} is a dangling link; give the store folder")
    for folder, dirs, files in os.walk(store_dir):
        for name in dirs + files:
            p = Path(folder) / name
            if p.is_symlink():
                raise UserError(f"store {store_dir}: {p.relative_to(store_dir)} is a link (to {os.readlink(p)}); a "
                                "store holds its own files only: replace the link with a copy, or remove that branch "
                                "and add it again (`ctb-mobile branch remove/add`)")


def read_store(store_dir) -> dict:
    """store.json of a store whose every file is its own (no links), read as a reader (fsutil.reading)."""
    store_dir = Path(store_dir)
    with reading(store_dir):
        meta = _meta(store_dir)
        _check_plain(store_dir)
        return meta


def check_tokenizer(store_dir, store_meta: dict) -> None:
    """The store's tokenizer files are exactly those whose sha256 store.json records."""
    store_dir = Path(store_dir)
    want = store_meta["tokenizer_sha256"]
    d = store_dir / "tokenizer"
    have = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
    extra = sorted(set(have) - set(want))
    if extra:
        raise UserError(f"store {store_dir}: tokenizer/{extra[0]} is not a file of the store (store.json records "
                        f"{', '.join(sorted(want))}); remove it, or {REBUILD}")
    for name, sha in sorted(want.items()):
        f = d / name
        if not f.is_file():
            raise UserError(f"store {store_dir}: tokenizer/{name} is missing; {REBUILD}")
        if file_sha256(f) != sha:
            raise UserError(f"store {store_dir}: tokenizer/{name} does not match the sha256 in store.json (an edited "
                            f"or swapped tokenizer changes every output); restore it, or {REBUILD}")


def check_recipe(store_dir, store_meta: dict, recipe) -> None:
    """The store was built on the recipe's backbone and every branch is a task of the recipe (whose dev
    data the export guard and verify score it on)."""
    from toolchain import backbone

    bb = backbone.load(recipe.backbone_spec)
    if bb.fingerprint != store_meta["backbone_fingerprint"]:
        raise UserError(f"store {store_dir} was built on {store_meta['backbone']} (fingerprint "
                        f"{store_meta['backbone_fingerprint'][:12]}), not on recipe {recipe.path}'s backbone "
                        f"{recipe.backbone} ({bb.fingerprint[:12]}); give the store made from this recipe (--store)")
    recipe.check_positions(bb.cfg)
    unknown = sorted(set(branch_names(store_dir)) - {t.name for t in recipe.tasks})
    if unknown:
        raise UserError(f"store {store_dir} holds task {unknown[0]!r}, which recipe {recipe.path} does not define; "
                        "add the task to the recipe or remove its branch (`ctb-mobile branch remove`)")


def branch_names(store_dir) -> list:
    d = Path(store_dir) / "branches"
    with reading(store_dir):
        names = sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []
        links = [n for n in names if (d / n).is_symlink()]
        if links:
            raise UserError(f"store {store_dir}: branches/{links[0]} is a link (to {os.readlink(d / links[0])}); a "
                            "store holds its own files only: remove the link and add the branch with "
                            "`ctb-mobile branch add`")
        return [n for n in names if (d / n).is_dir()]


def branch_meta(store_dir, name: str) -> BranchConfig:
    """A store branch's config; its folder must be named after its task (else it is a second copy)."""
    meta = BranchConfig.load(Path(store_dir) / "branches" / name)
    if meta.task != name:
        raise UserError(f"store {store_dir}: folder branches/{name} holds task {meta.task!r} (its branch.json), so "
                        f"the store would hold {meta.task!r} twice or under a wrong name; remove the folder, then "
                        "`ctb-mobile branch add` the run")
    return meta


def list_branches(store_dir) -> list:
    with reading(store_dir):
        read_store(store_dir)
        return [branch_meta(store_dir, n) for n in branch_names(store_dir)]


def _validate_new(store_meta, cfg, branch_dir) -> BranchConfig:
    meta = BranchConfig.load(branch_dir)
    check_fits(store_meta, meta, f"branch {branch_dir}")
    load_branch(cfg, branch_dir, meta)  # weights readable and of the right shapes
    return meta


def _encoder_cfg(store_meta):
    from toolchain.model import EncoderConfig

    return EncoderConfig(**store_meta["encoder"])


def _copy_branch(branch_dir, dest, meta: BranchConfig) -> None:
    """Copy a validated branch: its weights read once, and still the ones its branch.json records."""
    data = (Path(branch_dir) / WEIGHTS).read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.weights_sha256:
        raise UserError(f"branch {branch_dir}: {WEIGHTS} changed while it was copied (its sha256 no longer "
                        "matches branch.json); copy it again when nothing is writing it")
    dest.mkdir(parents=True, exist_ok=True)
    save_branch(dest, data, meta)


def create(store_dir, bb, backbone_spec: str, branch_dirs: list, force: bool = False) -> dict:
    """Build a store from a backbone and branch run folders. All checks come before any write."""
    from safetensors.torch import save_file

    store_dir = Path(store_dir)
    store_meta = {"schema": STORE_FORMAT, "backbone": backbone_spec, "backbone_fingerprint": bb.fingerprint,
                  "encoder": bb.cfg.to_dict(), "toolchain_version": __version__}
    cfg = _encoder_cfg(store_meta)
    protect = [*branch_dirs, bb.path]

    def check():
        if (store_dir / "store.json").exists() and not force:
            raise UserError(f"store {store_dir} already exists; change it with `ctb-mobile branch add/update/remove`, "
                            "or pass --force to rebuild it")
        check_replaceable(store_dir, "store", protect)

    check()  # all checks before any write (the lock file included) ...
    metas = [_validate_new(store_meta, cfg, d) for d in branch_dirs]
    names = [m.task for m in metas]
    dup = [n for n in names if names.count(n) > 1]
    if dup:
        raise UserError(f"duplicate task name {dup[0]!r} among the branches; merge one branch per task")
    with locked(store_dir):
        recover_tree(store_dir)  # ... and again once a merge cut short by a kill is repaired
        check()
        with atomic_dir(store_dir, kind="store", protect=protect) as tmp:
            save_file(bb.state, str(tmp / "trunk.safetensors"), metadata={"fingerprint": bb.fingerprint})
            follow_umask(tmp / "trunk.safetensors")  # save_file makes it 0600
            (tmp / "tokenizer").mkdir()
            for name in TOKENIZER_FILES:
                if (bb.path / name).is_file():
                    shutil.copyfile(bb.path / name, tmp / "tokenizer" / name)
            if not (tmp / "tokenizer" / "tokenizer.json").is_file():
                bb.tokenizer().save(str(tmp / "tokenizer" / "tokenizer.json"))
            store_meta["tokenizer_sha256"] = {p.name: file_sha256(p) for p in sorted((tmp / "tokenizer").iterdir())}
            (tmp / "branches").mkdir()
            for meta, d in zip(metas, branch_dirs):
                _copy_branch(d, child(tmp / "branches", meta.task, "task"), meta)
            write_json_atomic(tmp / "store.json", store_meta)
    return store_meta


def _incoming(store_dir, branch_dir):
    """Validate a branch run folder against the store; its metadata and destination folder."""
    dest = child(Path(store_dir) / "branches", BranchConfig.load(branch_dir).task, "task")  # not through a link
    store_meta = read_store(store_dir)
    return _validate_new(store_meta, _encoder_cfg(store_meta), branch_dir), dest


def _change(store_dir, branch_dir, adding: bool) -> BranchConfig:
    """Add or update one branch: under the store's lock, after repairing a change a kill cut short."""
    store_dir = Path(store_dir)
    with locked(store_dir):  # one lock per store, beside it
        recover_tree(store_dir)
        meta, dest = _incoming(store_dir, branch_dir)
        if adding and os.path.lexists(dest):
            raise UserError(f"task {meta.task!r} is already in the store; use `ctb-mobile branch update` to replace it")
        if not adding and not dest.is_dir():
            raise UserError(f"task {meta.task!r} is not in the store (it has: {', '.join(branch_names(store_dir))}); "
                            "use `ctb-mobile branch add`")
        with atomic_dir(dest, kind="branch", protect=[branch_dir], lock=store_dir) as tmp:
            _copy_branch(branch_dir, tmp, meta)
    return meta


def add(store_dir, branch_dir) -> BranchConfig:
    return _change(store_dir, branch_dir, adding=True)


def update(store_dir, branch_dir) -> BranchConfig:
    return _change(store_dir, branch_dir, adding=False)


def remove(store_dir, task: str) -> None:
    store_dir = Path(store_dir)
    with locked(store_dir):
        recover_tree(store_dir)
        dest = child(store_dir / "branches", task, "task")
        read_store(store_dir)
        if not dest.is_dir():
            raise UserError(f"task {task!r} is not in the store; it has: {', '.join(branch_names(store_dir)) or 'none'}")
        gone = dest.with_name(f".{task}.removed-{os.getpid()}")
        os.rename(dest, gone)
        remove_tree(gone)


def load_merged(store_dir, tasks=None):
    """The merged PyTorch model (the "original" for export parity), its tokenizer, and task -> BranchConfig.

    The trunk is cut at the deepest attach point, so it runs exactly as deep as the branches need.
    """
    store_dir = Path(store_dir)
    with reading(store_dir):  # every branch old or new, never missing, while a change is under way
        return _load_merged(store_dir, tasks)


def _load_merged(store_dir: Path, tasks):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from toolchain import backbone
    from toolchain.model import MultiTaskModel, Trunk

    store_meta = read_store(store_dir)
    cfg = _encoder_cfg(store_meta)
    names = branch_names(store_dir)
    if tasks:
        unknown = [t for t in tasks if t not in names]
        if unknown:
            raise UserError(f"task {unknown[0]!r} is not in the store; it has: {', '.join(names)}")
        names = list(tasks)
    if not names:
        raise UserError(f"store {store_dir} has no branches; add one with `ctb-mobile branch add`")
    metas = {}
    branches = {}
    for n in names:
        meta = branch_meta(store_dir, n)
        check_fits(store_meta, meta, f"branch {n}")
        metas[n] = meta
        branches[n] = load_branch(cfg, store_dir / "branches" / n, meta)
    try:
        state = load_file(str(store_dir / "trunk.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"store {store_dir}: trunk.safetensors is unreadable ({str(e)[:80]}); "
                        "rebuild the store with `ctb-mobile merge --force`") from None
    if backbone.fingerprint(state, cfg) != store_meta["backbone_fingerprint"]:
        raise UserError(f"store {store_dir}: trunk.safetensors does not match the store's fingerprint; "
                        "the trunk was modified: rebuild the store with `ctb-mobile merge --force`")
    trunk = Trunk(cfg, max(m.attach for m in metas.values()))
    trunk.load_state_dict({k: v for k, v in state.items()
                           if k.startswith("embeddings.") or (k.startswith("layers.") and int(k.split(".")[1]) < trunk.depth)})
    trunk.requires_grad_(False)
    model = MultiTaskModel(trunk, branches).eval()
    check_tokenizer(store_dir, store_meta)
    return model, backbone.load_tokenizer(store_dir / "tokenizer"), metas
