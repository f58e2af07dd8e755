"""Frozen-trunk feature cache.

The trunk is frozen and runs in eval mode, so its output for an example never changes: compute it
once per (backbone fingerprint, split depth, exact token ids) and reuse it across epochs and across
sweep runs with the same split point. The token ids stand for the data file, columns, subset,
tokenizer and max_seq_len all at once. Stored as one safetensors file of unpadded fp32 rows, with the
sha256 of its bytes in a `.sha256` file beside it: a file whose bytes do not hash to it (a flipped bit, a
truncation, a file from before the checksums) is computed again, never used.
"""

import hashlib
from pathlib import Path

import torch

from toolchain.batch import by_length, pad_batch
from toolchain.fsutil import write_bytes_atomic

VERSION = "v1"


def key(backbone_fp: str, depth: int, data_fp: str) -> str:
    return hashlib.sha256(f"{VERSION}|{backbone_fp}|{depth}|{data_fp}".encode()).hexdigest()[:32]


@torch.no_grad()
def compute(trunk, encoded, batch_size=64, device="cpu", on_batch=None) -> list:
    """Trunk output at its full depth for every example: a list of (len_i, hidden) tensors."""
    out = [None] * len(encoded)
    trunk = trunk.to(device).eval()
    for idx in by_length([len(x) for x in encoded.input_ids], batch_size):
        b = pad_batch([encoded.input_ids[i] for i in idx], [encoded.type_ids[i] for i in idx], device)
        hidden = trunk(**b._asdict()).float().cpu()
        for row, i in enumerate(idx):
            out[i] = hidden[row, : len(encoded.input_ids[i])].clone()
        if on_batch:
            on_batch(len(idx))
    return out


def _read(path: Path, rows: int):
    """The cached (rows, hidden) tensor when the file's bytes match the sha256 beside it, else None."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = path.read_bytes()
        want = path.with_name(path.name + ".sha256").read_text().strip()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != want:
        return None
    try:
        flat = load(data)["hidden"]
    except (SafetensorError, KeyError, ValueError):
        return None
    return flat if flat.dim() == 2 and flat.shape[0] == rows else None


def load_or_compute(trunk, encoded, backbone_fp, cache_dir, device="cpu", on_batch=None):
    """Features from the cache file if present and intact, else computed and written (atomically: the
    features, then their sha256)."""
    from safetensors.torch import save

    path = Path(cache_dir) / f"trunk-d{trunk.depth}-{key(backbone_fp, trunk.depth, encoded.fingerprint())}.safetensors"
    lengths = [len(x) for x in encoded.input_ids]
    flat = _read(path, sum(lengths)) if path.is_file() else None
    if flat is not None:
        return list(flat.split(lengths)), True
    feats = compute(trunk, encoded, device=device, on_batch=on_batch)
    meta = {"backbone": backbone_fp, "depth": str(trunk.depth), "data": encoded.fingerprint()}
    data = save({"hidden": torch.cat(feats)}, metadata=meta)
    write_bytes_atomic(path, data)
    write_bytes_atomic(path.with_name(path.name + ".sha256"), (hashlib.sha256(data).hexdigest() + "\n").encode())
    return feats, False
