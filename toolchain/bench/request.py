"""Checking a bench request, and the inputs it times: dev-text word pieces cut to each sequence length.
The bundles it measures are built by bench/bundles.py."""

from dataclasses import dataclass
from pathlib import Path

from toolchain import UserError

BENCH_TARGETS = ("onnx", "android")  # the targets whose programs run on this machine (CoreML needs macOS)


@dataclass(frozen=True)
class Request:
    """One bench run's validated arguments (see run_bench)."""

    recipe: object
    store_dir: Path
    out_dir: Path
    targets: tuple
    precisions: tuple
    lengths: list  # sorted, without duplicates
    repeats: int
    peer: bool
    guard_examples: int
    threads: int | None
    singles_from: Path


def check_request(recipe, store_dir, out_dir, targets, precisions, lengths, repeats, peer, guard_examples,
                  threads, singles_from) -> Request:
    """Validate everything before any work."""
    from toolchain.export import check_request as check_export
    from toolchain.fsutil import check_replaceable
    from toolchain.store import read_store

    targets, precisions = tuple(targets), tuple(precisions)
    if not targets:
        raise UserError(f"no target to benchmark; use one or more of: {', '.join(BENCH_TARGETS)}")
    for t in targets:
        if t == "ios":
            raise UserError("target 'ios' cannot be benchmarked here: CoreML programs run only on Apple devices; "
                            f"use {' or '.join(BENCH_TARGETS)}")
        if t not in BENCH_TARGETS:
            raise UserError(f"unknown target {t!r}; use one or more of: {', '.join(BENCH_TARGETS)}")
    if not precisions:
        raise UserError("no precision to benchmark; use fp32 and/or int8")
    for t in targets:
        for p in precisions:
            check_export(t, p, "fused")  # one-line errors for unknown or unsupported precisions
    if not lengths:
        raise UserError("no sequence length given; give positive integers, e.g. 16,64,128")
    bad = [x for x in lengths if isinstance(x, bool) or not isinstance(x, int) or x < 1]
    if bad:
        raise UserError(f"sequence length {bad[0]!r} is not valid: lengths must be positive integers, e.g. 16,64,128")
    max_seq_len = max(recipe.seq_len(t) for t in recipe.tasks)
    if min(lengths) > max_seq_len:
        raise UserError(f"every length ({', '.join(map(str, lengths))}) is above the recipe's max_seq_len "
                        f"{max_seq_len}; give lengths up to {max_seq_len}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UserError(f"repeats {repeats!r} must be a positive integer, e.g. 20")
    if isinstance(guard_examples, bool) or not isinstance(guard_examples, int) or guard_examples < 1:
        raise UserError(f"guard_examples {guard_examples!r} must be a positive integer, e.g. 200")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UserError(f"threads {threads!r} must be a positive integer, e.g. 2")
    read_store(store_dir)  # "store ... not found; build one with `ctb-mobile merge`"
    check_replaceable(out_dir, "bench", (store_dir, singles_from, recipe.path))  # not a folder of another kind
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("bench draws its plot with matplotlib; run: pip install 'ctb-mobile[bench]'") from None
    return Request(recipe, Path(store_dir), Path(out_dir), targets, precisions, sorted(set(lengths)), repeats,
                   bool(peer), guard_examples, threads, Path(singles_from or store_dir))


def token_pool(devs, tok) -> list:
    """Word-piece ids (no [CLS]/[SEP]) of the recipe's dev sets, in order: real text to cut inputs from."""
    pool = []
    for _, _, dev, _ in devs.values():
        for ids in dev.input_ids:
            pool.extend(ids[1:-1])
    if not pool:
        pool = tok.encode("set an alarm for seven thirty tomorrow morning", add_special_tokens=False).ids
    return pool


def dev_batch(encoded, n):
    """The first n dev examples as one padded batch (ids, mask, token types) of numpy arrays."""
    from toolchain.batch import pad_batch

    b = pad_batch(encoded.input_ids[:n], encoded.type_ids[:n], "cpu")
    return b.input_ids.numpy(), b.attention_mask.numpy(), b.token_type_ids.numpy()


def inputs_of_length(pool, tok, n):
    """(ids, mask, token types) of exactly n tokens: [CLS] + real dev word pieces + [SEP], batch 1."""
    import numpy as np

    specials = tok.encode("a").ids  # the tokenizer's own template: [CLS] a [SEP] (or <s> a </s>)
    cls, sep = specials[0], specials[-1]
    body = list(pool)
    while len(body) < n:
        body += pool
    ids = ([cls] + body[: max(n - 2, 0)] + [sep])[:n]
    ids = np.asarray([ids], dtype=np.int64)
    return ids, np.ones_like(ids), np.zeros_like(ids)
