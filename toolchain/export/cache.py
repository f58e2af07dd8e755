"""Exported programs, kept by what they were made from: exporting the same graph again (the guard's
second attempt, an int8 bundle after the fp32 one, the same store for a second layout or for the
bench) copies the files instead of tracing and lowering again.

The key covers everything the files depend on: the graph (its module's structure, every weight, its
input and output names, the example tensors), the export arguments (target, precision,
max_seq_len, embedded metadata, calibration batches, what is kept in fp32, the target's options: int4's parts
kept at int8 and its group size), the versions of torch
and of the backend packages, and the source of the code that builds and exports graphs. Entries live
under `<cache>/exports/`; the newest KEEP stay. CTB_EXPORT_CACHE=0 turns the cache off.

An entry's files.json lists its files with their sha256; each copy out of the cache is checked against
it, so a damaged entry (a flipped byte, a truncated file, an entry from before the checksums) is dropped
with one line on stderr and the graph exported again: a bundle never gets a cached file's damage under
a fresh checksum.

A target may also keep the step every precision starts from (`traced`: ONNX's fp32 trace), so that an
int8 export after the fp32 one, and each of the guard's fp32 fallbacks, quantize the same trace
instead of tracing the graph again.
"""

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import weakref
from pathlib import Path

KEEP = 24
SOURCES = ("model.py", "export/graph.py", "export/onnx.py", "export/executorch.py", "export/coreml.py")
PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "executorch", "torchao", "coremltools")


def _versions() -> list:
    out = []
    for p in PACKAGES:
        try:
            out.append(f"{p}={importlib.metadata.version(p)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{p}=-")
    return out


def _tensor_bytes(t) -> bytes:
    import torch

    t = t.detach().contiguous().cpu().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def key(target, graph, precision, max_seq_len, metadata, *, calibration=(), keep_fp32=(), options=None,
        example_values=True) -> str:
    """`example_values=False`: the example tensors count by shape and dtype only (a trace: the
    exporters see the examples as symbolic shapes, never their values)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for name in SOURCES:
        h.update((root / name).read_bytes())
    h.update(json.dumps([target, graph.name, list(graph.inputs), list(graph.outputs), precision, max_seq_len,
                         metadata, sorted(keep_fp32), options or {}, _versions(), repr(graph.module),
                         [(list(t.shape), str(t.dtype)) for t in graph.example]], sort_keys=True).encode())
    for t in graph.example if example_values else ():
        h.update(_tensor_bytes(t))
    h.update(_state_digest(graph.module))
    for batch in calibration:
        for t in batch:
            h.update(_tensor_bytes(t))
    return h.hexdigest()[:40]


_digests = weakref.WeakKeyDictionary()  # module -> (stamp of its tensors, digest of its weights)


def _state_digest(module) -> bytes:
    """sha256 of every weight, computed again only when a tensor was replaced or changed in place
    (its address or version counter moved): an export keys the same module twice (the files, the trace)."""
    state = module.state_dict()
    stamp = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
    memo = _digests.get(module)
    if memo is not None and memo[0] == stamp:
        return memo[1]
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(name.encode() + str(t.dtype).encode() + str(list(t.shape)).encode())
        h.update(_tensor_bytes(t))
    _digests[module] = (stamp, h.digest())
    return h.digest()


def check_name_file(name) -> str:
    if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
        raise ValueError(f"bad file name {name!r} in the export cache")
    return name


def _copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst) if src.is_dir() else shutil.copyfile(src, dst)


def export(mod, target, graph, out_dir: Path, precision, max_seq_len, metadata, *, calibration=(), keep_fp32=(),
           options=None) -> list:
    """`mod.export(...)` through the cache; returns the file names written into `out_dir`. `options`:
    the target's own keyword arguments (onnx: symmetric; int4: keep_int8 and group), part of the key."""
    options = options or {}

    def make():
        return mod.export(graph, out_dir, precision, max_seq_len, metadata, calibration=calibration,
                          keep_fp32=keep_fp32, **options)
    if not _enabled():
        return make()
    entry = _base() / key(target, graph, precision, max_seq_len, metadata, calibration=calibration,
                          keep_fp32=keep_fp32, options=options)
    return _through(entry, Path(out_dir), None, make)


def traced(target, graph, max_seq_len, dst: Path, make) -> None:
    """`make(dst)` writes the graph's fp32 trace, which does not depend on the precision, the
    calibration, what the guard keeps in fp32 or the example token ids (only on their shapes); from the
    cache when this graph was traced before."""
    dst = Path(dst)
    if not _enabled():
        return make(dst)
    entry = _base() / key(f"{target}-trace", graph, "fp32", max_seq_len, {}, example_values=False)

    def made():
        make(dst)
        return [dst.name]

    _through(entry, dst.parent, [dst.name], made)


def _through(entry: Path, out_dir: Path, expect, make) -> list:
    """The entry's files copied into out_dir, or `make()`'s (it returns their names), then kept."""
    files = _fetch(entry, out_dir, expect)
    if files is None:
        files = make()
        _store(_base(), entry, out_dir, files)
    return files


def _enabled() -> bool:
    return os.environ.get("CTB_EXPORT_CACHE", "1") != "0"


def _base() -> Path:
    from toolchain.backbone import cache_root

    return cache_root() / "exports"


def _fetch(entry: Path, out_dir: Path, expect=None) -> list | None:
    """Copy an entry's files into out_dir, each checked against its sha256 in files.json, and return their
    names; None (and nothing left behind) when the entry is missing, damaged, or holds other files than
    `expect`. A damaged entry is deleted, with one line on stderr."""
    from runtime_py.bundle import file_sha256

    if not (entry / "files.json").is_file():
        return None
    files = None
    try:
        listed = json.loads((entry / "files.json").read_text())
        if not isinstance(listed, dict) or not isinstance(listed.get("sha256"), dict):
            raise ValueError("no checksums (an entry from an older ctb-mobile)")
        files = [check_name_file(f) for f in listed["files"]]
        if expect is not None and files != list(expect):
            raise ValueError(f"it holds {files}")
        for f in files:
            _copy(entry / f, out_dir / f)
            if file_sha256(out_dir / f) != listed["sha256"].get(f):
                raise ValueError(f"{f} does not match its sha256")
        os.utime(entry)
        return files
    except (OSError, ValueError, TypeError, KeyError, RecursionError) as e:  # a damaged entry: export afresh
        for f in files or ():
            p = out_dir / f
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        from toolchain.quiet import terminal

        print(f"export cache: entry {entry.name} is damaged ({str(e)[:120]}); dropped, exporting again",
              file=terminal())
        _drop(entry)
        return None


def _drop(entry: Path) -> None:
    """Delete an entry: renamed away first, so that no reader sees it half deleted."""
    gone = entry.with_name(f".{entry.name}.dropped-{os.getpid()}")
    try:
        os.rename(entry, gone)
    except OSError:
        return
    shutil.rmtree(gone, ignore_errors=True)


def _store(base: Path, entry: Path, out_dir: Path, files: list) -> None:
    from runtime_py.bundle import file_sha256
    from toolchain import UserError
    from toolchain.fsutil import atomic_dir

    try:
        with atomic_dir(entry, kind="export cache entry") as tmp:
            for f in files:
                _copy(out_dir / f, tmp / f)
            # the sha256 of what was exported (out_dir), so a file damaged on its way in is caught on read
            sums = {f: file_sha256(out_dir / f) for f in files}
            (tmp / "files.json").write_text(json.dumps({"files": files, "sha256": sums}))
        entries = sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[KEEP:]:
            shutil.rmtree(old, ignore_errors=True)
            (base / f".{old.name}.lock").unlink(missing_ok=True)
    except (OSError, UserError):  # a full disk or another process writing the same entry: no cache, same export
        pass
