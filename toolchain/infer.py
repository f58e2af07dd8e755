"""Multi-task inference in PyTorch: tokenize a batch once, run the trunk once, decode every task.

This is "the original" that exported bundles are checked against.
"""


import torch

from runtime_py.predictor import decode
from toolchain.batch import pad_batch


def encode(tok, texts, pairs=None, max_len=128):
    tok.enable_truncation(max_length=max_len)
    encs = tok.encode_batch(list(zip(texts, pairs)) if pairs is not None else list(texts))
    return encs, pad_batch([e.ids for e in encs], [e.type_ids for e in encs], "cpu")


@torch.no_grad()
def predict(model, tok, metas, texts, pairs=None, max_len=128) -> list:
    """One dict per text: task name -> decoded output."""
    from toolchain.export.tokenizer import breaks_of

    encs, b = encode(tok, texts, pairs, max_len)
    outs = model(**b._asdict())
    breaks = breaks_of(tok)
    return [{name: decode(metas[name], outs[name][i].float().numpy(), encs[i], texts[i], breaks) for name in outs}
            for i in range(len(texts))]
