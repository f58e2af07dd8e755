"""Read and validate a ctb-mobile bundle: manifest (through the schema), files present, sizes and sha256."""

import hashlib
import json
from pathlib import Path

from runtime_py.manifest import SCHEMA_VERSION as SCHEMA
from runtime_py.manifest import BundleError, Manifest, parse

__all__ = ["SCHEMA", "BundleError", "file_bytes", "file_sha256", "load_manifest", "read_manifest"]


def _files(path: Path) -> list:
    """A folder's files sorted by relative POSIX path, compared as UTF-8 bytes (CONTRACT.md)."""
    return sorted((p for p in path.rglob("*") if p.is_file()),
                  key=lambda p: p.relative_to(path).as_posix().encode("utf-8"))


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder (a .mlpackage): its files in order, each with its relative name."""
    path = Path(path)
    h = hashlib.sha256()
    for p in _files(path) if path.is_dir() else [path]:
        if path.is_dir():
            h.update(p.relative_to(path).as_posix().encode("utf-8"))
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def file_bytes(path: Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in _files(path)) if path.is_dir() else path.stat().st_size


def load_manifest(bundle_dir, check_files: bool = True) -> Manifest:
    """The bundle's typed manifest, after the schema, the cross-field rules and (by default) every
    file's presence, size and sha256."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a bundle (no manifest.json); export one with `ctb-mobile export`")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}); export the bundle again") from None
    except RecursionError:
        raise BundleError(f"{path} nests arrays or objects too deeply to be a manifest; export the bundle again") from None
    except OSError as e:
        raise BundleError(f"{path} cannot be read ({e.strerror}); copy the bundle again") from None
    try:
        m = parse(obj, str(path))
    except RecursionError:
        raise BundleError(f"{path} nests arrays or objects too deeply to be a manifest; export the bundle again") from None
    if check_files:
        root = bundle_dir.resolve()
        for name, info in m.files.items():
            f = bundle_dir / name
            if f.resolve().parent != root:  # names are plain (schema); a symlink out of the folder is refused too
                raise BundleError(f"{bundle_dir}: {name} points outside the bundle folder; copy the real file in")
            if not f.exists():
                raise BundleError(f"{bundle_dir}: {name} is missing; copy the whole bundle folder")
            if file_bytes(f) != info["bytes"]:
                raise BundleError(f"{bundle_dir}: {name} has {file_bytes(f):,} bytes, the manifest says "
                                  f"{info['bytes']:,} (truncated or replaced); copy the bundle again")
            if file_sha256(f) != info["sha256"]:
                raise BundleError(f"{bundle_dir}: {name} does not match its sha256 in the manifest (modified); "
                                  "copy or export the bundle again")
    return m


def read_manifest(bundle_dir, check_files: bool = True) -> dict:
    """The validated manifest as the JSON object it was read from (see load_manifest)."""
    return load_manifest(bundle_dir, check_files).to_json()
