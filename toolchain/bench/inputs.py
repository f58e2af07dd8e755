"""The inputs bench runs: dev-text word pieces cut to each sequence length, and padded dev batches,
each as feeds by input name (toolchain.batch.INPUTS), never by position."""

from toolchain.batch import pad_batch


def token_pool(devs, tok) -> list:
    """Word-piece ids (no [CLS]/[SEP]) of the recipe's dev sets, in order: real text to cut inputs from."""
    pool = []
    for _, _, dev, _ in devs.values():
        for ids in dev.input_ids:
            pool.extend(ids[1:-1])
    if not pool:
        pool = tok.encode("set an alarm for seven thirty tomorrow morning", add_special_tokens=False).ids
    return pool


def dev_feeds(encoded, n) -> dict:
    """The first n dev examples as one padded batch: numpy arrays by input name."""
    return pad_batch(encoded.input_ids[:n], encoded.type_ids[:n], "cpu").feeds()


def inputs_of_length(pool, tok, n) -> dict:
    """Feeds of exactly n tokens, batch 1: [CLS] + real dev word pieces + [SEP], one segment, no padding."""
    specials = tok.encode("a").ids  # the tokenizer's own template: [CLS] a [SEP] (or <s> a </s>)
    cls, sep = specials[0], specials[-1]
    body = list(pool)
    while len(body) < n:
        body += pool
    ids = ([cls] + body[: max(n - 2, 0)] + [sep])[:n]
    return pad_batch([ids], [[0] * len(ids)], "cpu").feeds()
