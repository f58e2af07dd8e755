"""Multi-task inference in PyTorch: tokenize a batch once, run the trunk once, decode every task.

This is "the original" that exported bundles are checked against.
"""

import torch

from toolchain.cache import pad_batch


def encode(tok, texts, pairs=None, max_len=128):
    tok.enable_truncation(max_length=max_len)
    encs = tok.encode_batch(list(zip(texts, pairs)) if pairs is not None else list(texts))
    return encs, pad_batch([e.ids for e in encs], [e.type_ids for e in encs], "cpu")


def spans(tags_by_word, encoding, text):
    """BIO tags (one per word) -> [{label, start, end, text}] with character offsets into `text`."""
    word_chars = {}
    for w, (a, b), seq in zip(encoding.word_ids, encoding.offsets, encoding.sequence_ids):
        if w is not None and seq == 0:  # spans are over the first text only
            s, e = word_chars.get(w, (a, b))
            word_chars[w] = (min(s, a), max(e, b))
    out, cur = [], None
    for w in sorted(word_chars):
        tag = tags_by_word.get(w, "O")
        kind = tag[2:] if tag[:2] in ("B-", "I-") else None
        if kind and (tag.startswith("B-") or cur is None or cur["label"] != kind):
            cur = {"label": kind, "start": word_chars[w][0], "end": word_chars[w][1]}
            out.append(cur)
        elif kind:
            cur["end"] = word_chars[w][1]
        else:
            cur = None
    for s in out:
        s["text"] = text[s["start"]: s["end"]]
    return out


def decode(meta, out, encoding, text):
    if meta["type"] == "regression":
        return {"value": float(out)}
    if meta["type"] == "classification":
        probs = torch.softmax(out.float(), -1)
        i = int(probs.argmax())
        return {"label": meta["labels"][i], "score": float(probs[i])}
    n = len(encoding.ids)
    ids = out[:n].argmax(-1).tolist()
    tags, seen = {}, set()
    for j, (w, seq) in enumerate(zip(encoding.word_ids, encoding.sequence_ids)):
        if w is not None and seq == 0 and w not in seen:
            seen.add(w)
            tags[w] = meta["labels"][ids[j]]
    return {"spans": spans(tags, encoding, text)}


@torch.no_grad()
def predict(model, tok, metas, texts, pairs=None, max_len=128) -> list:
    """One dict per text: task name -> decoded output."""
    encs, (ids, tt, mask) = encode(tok, texts, pairs, max_len)
    outs = model(ids, tt, mask)
    return [{name: decode(metas[name], outs[name][i], encs[i], texts[i]) for name in outs}
            for i in range(len(texts))]
