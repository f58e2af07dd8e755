"""The programs bench measures: the merged store's bundle per (target, precision), exactly as
`ctb-mobile export` ships it, and single-task stores and their bundles; each reused while its sources
are unchanged."""

import dataclasses
import hashlib
import json
from pathlib import Path

from toolchain import UserError, __version__
from toolchain.fsutil import write_json_atomic


def files_digest(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def branch_files(store_dir, task):
    from toolchain.branch_config import FILE, WEIGHTS

    d = Path(store_dir) / "branches" / task
    return [d / FILE, d / WEIGHTS]


def single_store(store_dir, task, bb, backbone_spec, dest, log=print) -> Path:
    """A store holding only `task`'s branch (built with store.create; reused if it is up to date)."""
    from toolchain import store

    dest = Path(dest)
    if (dest / "store.json").is_file():
        try:
            same = (store.read_store(dest)["backbone_fingerprint"] == bb.fingerprint
                    and store.branch_names(dest) == [task]
                    and files_digest(branch_files(dest, task)) == files_digest(branch_files(store_dir, task)))
        except UserError:  # a store an older toolchain made, or a damaged one: made again below
            same = False
        if same:
            return dest
    log(f"single-task store {task}")
    store.create(dest, bb, backbone_spec, [Path(store_dir) / "branches" / task], force=True)
    return dest


def bundle(recipe, store_dir, target, precision, dest, log=print) -> dict:
    """The bundle `ctb-mobile export` ships for this store, target and precision (fused): exported by
    export_bundle with export's own guard (the same rows, limits and so the same fp32 choices: the
    timed programs are byte for byte the shipped ones), or reused from `dest` if it was made from the
    same sources. Returns the manifest."""
    from toolchain.export import JUDGED_ROWS, export_bundle
    from toolchain.store import branch_names, read_store

    dest = Path(dest)
    tasks = branch_names(store_dir)
    key = {"target": target, "precision": precision, "layout": "fused", "toolchain_version": __version__,
           "trunk_fingerprint": read_store(store_dir)["backbone_fingerprint"], "tasks": tasks,
           "max_seq_len": max(recipe.seq_len(t) for t in recipe.tasks),
           "branches": files_digest([f for t in tasks for f in branch_files(store_dir, t)]),
           "guard": {"rows": JUDGED_ROWS, **dataclasses.asdict(recipe.export),
                     "dev": {t.name: [t.dev, t.max_dev_examples] for t in recipe.tasks}}}
    key_file = dest.with_name(dest.name + ".source.json")
    if (dest / "manifest.json").is_file() and key_file.is_file():
        m = json.loads((dest / "manifest.json").read_text())
        same = (m["target"], m["precision"], m["layout"], m["trunk_fingerprint"], [t["name"] for t in m["tasks"]]) \
            == (target, precision, "fused", key["trunk_fingerprint"], tasks)
        if same and json.loads(key_file.read_text()) == key:
            log(f"reusing {dest.name}")
            return m
    log(f"exporting {dest.name}")
    manifest = export_bundle(recipe, store_dir, target, precision, "fused", dest, log=lambda m: None)
    write_json_atomic(key_file, key)
    return manifest


def program_bytes(bundle_dir, manifest) -> int:
    """Bytes of the program files that run (model.onnx or model.pte; the .ort twin is not counted)."""
    return sum((Path(bundle_dir) / p["file"]).stat().st_size for p in manifest["programs"])
