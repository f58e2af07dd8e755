"""Multi-task inference in PyTorch: tokenize a batch once, run the trunk once, decode every task.

This is "the original" that exported bundles are checked against.
"""


import torch

from runtime_py.predictor import decode
from toolchain import UserError
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


def predict_store(store_dir, texts, pairs=None, tasks=None, max_len: int | None = None) -> list:
    """`predict` on a merged store: its branches (all, or `tasks`) on texts, truncated at `max_len`, which
    must fit the trunk's positions (default: the length the branches were trained at)."""
    from toolchain.store import load_merged

    model, tok, metas = load_merged(store_dir, tasks)
    trained = max(m.max_seq_len or 128 for m in metas.values())  # 128: a branch that does not say
    limit = model.trunk.cfg.max_position - model.trunk.cfg.position_offset
    if max_len is not None and not 2 <= max_len <= limit:
        raise UserError(f"--max-len {max_len} must be between 2 and {limit} (the trunk's positions); "
                        f"the branches were trained at {trained}")
    return predict(model, tok, metas, texts, pairs, max_len or trained)
