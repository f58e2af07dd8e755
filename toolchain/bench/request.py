"""A bench run's options, typed in one place (`BenchRequest`: the CLI builds it, bench reads it), and
their validation before any work."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from toolchain import UserError

BENCH_TARGETS = ("onnx", "android")  # the targets whose programs run on this machine (CoreML needs macOS)


@dataclass(frozen=True)
class BenchRequest:
    """What to benchmark. `threads`: threads for every runtime bench times (PyTorch eager, the GEMM
    peak, ONNX Runtime and ExecuTorch, ours and the peer's); None: each runtime's own default.
    `singles_from`: another store (same trunk and tasks) whose branches are the single-task models,
    e.g. the full-depth teachers when the merged store holds distilled branches; None: the merged
    store's own branches."""

    recipe: object
    store_dir: Path
    out_dir: Path
    targets: tuple = ("onnx", "android")
    precisions: tuple = ("fp32", "int8")
    lengths: tuple = (16, 64, 128)  # checked: sorted, without duplicates
    repeats: int = 20
    peer: bool = True
    guard_examples: int = 200
    threads: int | None = None
    singles_from: Path | None = None  # checked: the merged store when None


def _positive(value, what: str, example: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} {value!r} must be a positive integer, e.g. {example}")


def _check_targets(targets, precisions) -> None:
    from toolchain.export import check_request as check_export

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


def _check_lengths(lengths, max_seq_len: int) -> None:
    if not lengths:
        raise UserError("no sequence length given; give positive integers, e.g. 16,64,128")
    bad = [x for x in lengths if isinstance(x, bool) or not isinstance(x, int) or x < 1]
    if bad:
        raise UserError(f"sequence length {bad[0]!r} is not valid: lengths must be positive integers, e.g. 16,64,128")
    if min(lengths) > max_seq_len:
        raise UserError(f"every length ({', '.join(map(str, lengths))}) is above the recipe's max_seq_len "
                        f"{max_seq_len}; give lengths up to {max_seq_len}")


def check_request(req: BenchRequest) -> BenchRequest:
    """Validate everything before any work; returns the request with tuples, sorted lengths, paths and
    `singles_from` filled in."""
    from toolchain.fsutil import check_replaceable
    from toolchain.store import read_store

    targets, precisions = tuple(req.targets), tuple(req.precisions)
    _check_targets(targets, precisions)
    _check_lengths(req.lengths, max(req.recipe.seq_len(t) for t in req.recipe.tasks))
    _positive(req.repeats, "repeats", 20)
    _positive(req.guard_examples, "guard_examples", 200)
    if req.threads is not None:
        _positive(req.threads, "threads", 2)
    read_store(req.store_dir)  # "store ... not found; build one with `ctb-mobile merge`"
    # not a folder of another kind
    check_replaceable(req.out_dir, "bench", (req.store_dir, req.singles_from, req.recipe.path))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("bench draws its plot with matplotlib; run: pip install 'ctb-mobile[bench]'") from None
    return dataclasses.replace(req, store_dir=Path(req.store_dir), out_dir=Path(req.out_dir), targets=targets,
                               precisions=precisions, lengths=tuple(sorted(set(req.lengths))),
                               peer=bool(req.peer), singles_from=Path(req.singles_from or req.store_dir))
