"""The one padded batch, below both training and export: the input names, padding, and length-sorted
batching. The PyTorch model takes the three tensors by keyword only (`model(**batch._asdict())`); exported
programs take them by name, in INPUTS order (`batch.feeds()`). Use the names, never positions."""

from typing import NamedTuple

import torch

INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the exported programs' order


class Batch(NamedTuple):
    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    attention_mask: torch.Tensor

    def feeds(self) -> dict:
        """Numpy arrays by input name, in the exported programs' order."""
        return {n: getattr(self, n).numpy() for n in INPUTS}


def pad_batch(ids_lists, type_lists, device) -> Batch:
    """Right-pad token id lists (pad id 0) into a Batch; attention_mask is 1 on real tokens."""
    n, s = len(ids_lists), max(len(x) for x in ids_lists)
    ids = torch.zeros(n, s, dtype=torch.long)
    tt = torch.zeros(n, s, dtype=torch.long)
    mask = torch.zeros(n, s, dtype=torch.long)
    for i, (a, b) in enumerate(zip(ids_lists, type_lists)):
        ids[i, : len(a)] = torch.tensor(a)
        tt[i, : len(b)] = torch.tensor(b)
        mask[i, : len(a)] = 1
    return Batch(input_ids=ids.to(device), token_type_ids=tt.to(device), attention_mask=mask.to(device))


def by_length(lengths, batch_size: int):
    """Index lists of at most `batch_size` examples of similar length (shortest first): little padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for s in range(0, len(order), batch_size):
        yield order[s: s + batch_size]
