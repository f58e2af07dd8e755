"""Read and validate a ctb-mobile bundle: manifest schema, files present, sizes and sha256."""

import hashlib
import json
from pathlib import Path

SCHEMA = 1
TASK_TYPES = ("classification", "regression", "tagging")
REQUIRED = ("schema_version", "target", "layout", "precision", "trunk_fingerprint", "max_seq_len", "inputs",
            "tokenizer", "programs", "tasks", "files")


class BundleError(ValueError):
    """The bundle is missing, malformed, or its files do not match its manifest."""


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder (a .mlpackage): its files in order, with their relative names."""
    h = hashlib.sha256()
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in paths:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def read_manifest(bundle_dir, check_files: bool = True) -> dict:
    """The bundle's manifest, after checking its structure and (by default) every file's size and sha256."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a bundle (no manifest.json); export one with `ctb-mobile export`")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}); export the bundle again") from None
    missing = [k for k in REQUIRED if k not in m]
    if missing:
        raise BundleError(f"{path}: missing {', '.join(missing)}; export the bundle again")
    if m["schema_version"] != SCHEMA:
        raise BundleError(f"{path}: schema_version {m['schema_version']!r}, this runtime reads {SCHEMA}; "
                          "export the bundle with a matching toolchain")
    programs = {p["name"] for p in m["programs"]}
    for t in m["tasks"]:
        if t.get("type") not in TASK_TYPES:
            raise BundleError(f"{path}: task {t.get('name')!r} has type {t.get('type')!r}; expected one of {TASK_TYPES}")
        if t["type"] != "regression" and not t.get("labels"):
            raise BundleError(f"{path}: task {t['name']!r} has no labels; export the bundle again")
        if t.get("program") not in programs:
            raise BundleError(f"{path}: task {t['name']!r} names program {t.get('program')!r}, not in the bundle")
    if m["layout"] == "split" and "trunk" not in programs:
        raise BundleError(f"{path}: split layout without a trunk program; export the bundle again")
    needed = {f for p in m["programs"] for f in p["files"]} | {m["tokenizer"]["file"]}
    unlisted = sorted(needed - set(m["files"]))
    if unlisted:
        raise BundleError(f"{path}: {unlisted[0]} is used but has no checksum in the manifest; export the bundle again")
    if check_files:
        for name, info in m["files"].items():
            f = bundle_dir / name
            if not f.exists():
                raise BundleError(f"{bundle_dir}: {name} is missing; copy the whole bundle folder")
            if file_bytes(f) != info["bytes"]:
                raise BundleError(f"{bundle_dir}: {name} has {file_bytes(f):,} bytes, the manifest says "
                                  f"{info['bytes']:,} (truncated or replaced); copy the bundle again")
            if file_sha256(f) != info["sha256"]:
                raise BundleError(f"{bundle_dir}: {name} does not match its sha256 in the manifest (modified); "
                                  "copy or export the bundle again")
    return m
