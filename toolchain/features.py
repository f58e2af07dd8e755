"""The frozen trunk's features, as training and distillation read them: for a list of example indices, the
trunk's hidden states at the attach depth (from the feature cache, or run through the trunk) and their
labels, padded; and a branch's outputs and predictions over a split."""

from typing import NamedTuple

import torch

from toolchain import feature_cache
from toolchain.batch import by_length, pad_batch
from toolchain.data import IGNORE
from toolchain.metrics import predictions


class TrunkFeatures:
    """One split's examples by index: the frozen trunk's hidden states (cached rows, or token ids run through
    the trunk) and the labels, as padded tensors on `device`."""

    def __init__(self, encoded, trunk, features=None, device="cpu"):
        self.encoded, self.trunk, self.features, self.device = encoded, trunk, features, device

    @torch.no_grad()
    def hidden(self, idx):
        if self.features is not None:
            rows = [self.features[i] for i in idx]
            hidden = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).to(self.device)
            mask = torch.zeros(hidden.shape[:2], dtype=torch.long, device=self.device)
            for r, x in enumerate(rows):
                mask[r, : len(x)] = 1
            return hidden, mask
        b = pad_batch([self.encoded.input_ids[i] for i in idx], [self.encoded.type_ids[i] for i in idx], self.device)
        return self.trunk(**b._asdict()), b.attention_mask

    def labels(self, idx, task_type, seq_len):
        if task_type == "regression":
            return torch.tensor([self.encoded.labels[i] for i in idx], dtype=torch.float, device=self.device)
        if task_type == "classification":
            return torch.tensor([self.encoded.labels[i] for i in idx], dtype=torch.long, device=self.device)
        out = torch.full((len(idx), seq_len), IGNORE, dtype=torch.long)
        for r, i in enumerate(idx):
            lab = self.encoded.labels[i]
            out[r, : len(lab)] = torch.tensor(lab)
        return out.to(self.device)


class Features(NamedTuple):
    train: TrunkFeatures
    dev: TrunkFeatures
    cache_hit: bool | None  # None: the cache was not used


def trunk_features(bb, data, attach: int, accelerator, *, cache_dir=None, progress=None, name: str = "") -> Features:
    """Train and dev features over the frozen trunk cut at `attach`; read from (or written to) the feature
    cache in `cache_dir` when one is given, else computed batch by batch."""
    from toolchain.model import build_trunk

    device = accelerator.device
    trunk = build_trunk(bb.cfg, bb.state, attach).to(device)
    feats, hits = {"train": None, "dev": None}, []
    if cache_dir is not None:
        for split, enc in (("train", data.train), ("dev", data.dev)):
            bar = progress.add_task(f"[cyan]cache {name} {split} d={attach}", total=len(enc)) if progress else None
            with accelerator.main_process_first():
                feats[split], hit = feature_cache.load_or_compute(
                    trunk, enc, bb.fingerprint, cache_dir, device,
                    on_batch=(lambda k, b=bar: progress.advance(b, k)) if progress else None)
            if progress:
                progress.update(bar, completed=len(enc), visible=False)
            hits.append(hit)
    return Features(TrunkFeatures(data.train, trunk, feats["train"], device),
                    TrunkFeatures(data.dev, trunk, feats["dev"], device), all(hits) if hits else None)


@torch.no_grad()
def raw_outputs(branch, feats: TrunkFeatures, n, batch_size=128) -> list:
    """Branch outputs for examples 0..n-1, unpadded: (C,) logits, a scalar, or (len, C) per piece."""
    branch.eval()
    outs = [None] * n
    for idx in by_length([len(x) for x in feats.encoded.input_ids[:n]], batch_size):
        hidden, mask = feats.hidden(idx)
        out = branch(hidden, mask).float().cpu()
        for r, i in enumerate(idx):
            outs[i] = out[r, : len(feats.encoded.input_ids[i])] if out.dim() == 3 else out[r]
    return outs


def predict(branch, feats: TrunkFeatures, n, task_type):
    """Predictions for examples 0..n-1: label ids, floats, or per-piece label ids."""
    return predictions(task_type, raw_outputs(branch, feats, n))
