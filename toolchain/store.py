"""The merged model store: one frozen trunk, one folder per task branch (like peft's adapters).

    store/
      store.json                      schema, backbone spec and fingerprint, encoder config, version
      trunk.safetensors               the frozen backbone (embeddings, every layer, pooler); never rewritten
      tokenizer/tokenizer.json        the backbone's tokenizer (and vocab.txt when it has one)
      branches/<task>/branch.safetensors, branch.json

Adding, removing or updating a branch touches only that branch's folder, so every other task's
files and outputs stay exactly as they were. Every change is atomic: a branch folder is written
under a temporary name and renamed into place, or renamed away before it is deleted.
"""

import hashlib
import os
import shutil
from pathlib import Path

from runtime_py.bundle import file_sha256
from toolchain import UserError, __version__
from toolchain.branch_config import BranchConfig
from toolchain.fsutil import atomic_dir, child, locked, read_json, recover, write_json_atomic

SCHEMA = 1


# ---------------------------------------------------------------------------------------------
# One branch folder


def load_branch(cfg, branch_dir, meta: BranchConfig | None = None):
    """Build a Branch and load its weights strictly; corrupt or mismatched files are one-line errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from toolchain.model import Branch

    meta = meta or BranchConfig.load(branch_dir)
    branch = Branch(cfg, meta.attach, meta.layers, meta.type, meta.n_out)
    try:
        data = (Path(branch_dir) / "branch.safetensors").read_bytes()  # read once: parsed and hashed
        weights = load(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"branch {branch_dir}: branch.safetensors is unreadable ({str(e)[:80]}); "
                        "copy it again or retrain the branch") from None
    if meta.weights_sha256 and hashlib.sha256(data).hexdigest() != meta.weights_sha256:
        raise UserError(f"branch {branch_dir}: branch.safetensors does not match the sha256 in its branch.json "
                        "(a damaged or swapped file); copy the branch again or retrain it")
    try:
        branch.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"branch {branch_dir}: weights do not fit its branch.json ({first[:100]}); "
                        "the folder mixes files from different runs") from None
    return branch.eval()


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


def read_store(store_dir) -> dict:
    store_dir = Path(store_dir)
    f = store_dir / "store.json"
    if not f.is_file():
        raise UserError(f"store {store_dir} not found (no store.json); build one with `ctb-mobile merge`")
    meta = read_json(f, "rebuild the store with `ctb-mobile merge --force`")
    schema = meta.get("schema") if isinstance(meta, dict) else None
    if schema != SCHEMA:
        raise UserError(f"store {store_dir}: schema {schema!r}, this toolchain reads {SCHEMA}; "
                        "rebuild it with `ctb-mobile merge`")
    return meta


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
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.is_dir() else []


def list_branches(store_dir) -> list:
    read_store(store_dir)
    return [BranchConfig.load(Path(store_dir) / "branches" / n) for n in branch_names(store_dir)]


def _validate_new(store_meta, cfg, branch_dir) -> BranchConfig:
    meta = BranchConfig.load(branch_dir)
    check_fits(store_meta, meta, f"branch {branch_dir}")
    load_branch(cfg, branch_dir, meta)  # weights readable and of the right shapes
    return meta


def _encoder_cfg(store_meta):
    from toolchain.model import EncoderConfig

    return EncoderConfig(**store_meta["encoder"])


def _copy_branch(branch_dir, dest) -> None:
    """Copy a branch; its branch.json in the store always records the weights' sha256 (checked on load)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(branch_dir) / "branch.safetensors", dest / "branch.safetensors")
    meta = BranchConfig.load(branch_dir)
    meta.replace(weights_sha256=meta.weights_sha256 or file_sha256(dest / "branch.safetensors")).save(dest)


def create(store_dir, bb, backbone_spec: str, branch_dirs: list, force: bool = False) -> dict:
    """Build a store from a backbone and branch run folders. All checks come before any write."""
    from safetensors.torch import save_file

    store_dir = Path(store_dir)
    if (store_dir / "store.json").exists() and not force:
        raise UserError(f"store {store_dir} already exists; change it with `ctb-mobile branch add/update/remove`, "
                        "or pass --force to rebuild it")
    store_meta = {"schema": SCHEMA, "backbone": backbone_spec, "backbone_fingerprint": bb.fingerprint,
                  "encoder": bb.cfg.to_dict(), "toolchain_version": __version__}
    cfg = _encoder_cfg(store_meta)
    metas = [_validate_new(store_meta, cfg, d) for d in branch_dirs]
    names = [m.task for m in metas]
    dup = [n for n in names if names.count(n) > 1]
    if dup:
        raise UserError(f"duplicate task name {dup[0]!r} among the branches; merge one branch per task")
    with atomic_dir(store_dir) as tmp:
        save_file(bb.state, str(tmp / "trunk.safetensors"), metadata={"fingerprint": bb.fingerprint})
        (tmp / "tokenizer").mkdir()
        for name in ("tokenizer.json", "vocab.txt"):
            if (bb.path / name).is_file():
                shutil.copyfile(bb.path / name, tmp / "tokenizer" / name)
        if not (tmp / "tokenizer" / "tokenizer.json").is_file():
            bb.tokenizer().save(str(tmp / "tokenizer" / "tokenizer.json"))
        for meta, d in zip(metas, branch_dirs):
            _copy_branch(d, child(tmp / "branches", meta.task, "task"))
        write_json_atomic(tmp / "store.json", store_meta)
    return store_meta


def _incoming(store_dir, branch_dir):
    """Validate a branch run folder against the store; its metadata and destination folder."""
    store_meta = read_store(store_dir)
    meta = _validate_new(store_meta, _encoder_cfg(store_meta), branch_dir)
    return meta, child(Path(store_dir) / "branches", meta.task, "task")


def add(store_dir, branch_dir) -> BranchConfig:
    meta, dest = _incoming(store_dir, branch_dir)
    if dest.exists():
        raise UserError(f"task {meta.task!r} is already in the store; use `ctb-mobile branch update` to replace it")
    with atomic_dir(dest, lock=store_dir) as tmp:  # one lock per store, beside it
        _copy_branch(branch_dir, tmp)
    return meta


def update(store_dir, branch_dir) -> BranchConfig:
    meta, dest = _incoming(store_dir, branch_dir)
    if not dest.is_dir():
        raise UserError(f"task {meta.task!r} is not in the store (it has: {', '.join(branch_names(store_dir))}); "
                        "use `ctb-mobile branch add`")
    with atomic_dir(dest, lock=store_dir) as tmp:
        _copy_branch(branch_dir, tmp)
    return meta


def remove(store_dir, task: str) -> None:
    store_dir = Path(store_dir)
    read_store(store_dir)
    dest = child(store_dir / "branches", task, "task")
    with locked(store_dir):
        recover(dest)
        if not dest.is_dir():
            raise UserError(f"task {task!r} is not in the store; it has: {', '.join(branch_names(store_dir)) or 'none'}")
        gone = dest.with_name(f".{task}.removed-{os.getpid()}")
        os.rename(dest, gone)
        shutil.rmtree(gone)


def load_merged(store_dir, tasks=None):
    """The merged PyTorch model (the "original" for export parity), its tokenizer, and task -> BranchConfig.

    The trunk is cut at the deepest attach point, so it runs exactly as deep as the branches need.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from toolchain import backbone
    from toolchain.model import MultiTaskModel, Trunk

    store_dir = Path(store_dir)
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
        meta = BranchConfig.load(store_dir / "branches" / n)
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
    return model, backbone.load_tokenizer(store_dir / "tokenizer"), metas
