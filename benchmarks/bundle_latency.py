"""Bundles side by side, in one run: program bytes and batch-1 latency, each ÷ the first bundle's.

    python benchmarks/bundle_latency.py BUNDLE [BUNDLE ...] [--lengths 16,64] [--repeats 40] [--threads 1]

e.g. an int8 and an int4 export of the same store (`ctb-mobile export ... --precision int8|int4`). Every
bundle runs as an app runs it (runtime_py's Predictor, `--threads` per program, the count each program
reports printed), on the same random token ids per length, timed in rounds that take every bundle once
in a fresh seeded order (toolchain.bench.timing.time_round_robin), so a noisy machine's slow phases fall
on every bundle alike. Prints the CPU line first, then one row per bundle and length: p50 and min ms, and
p50 ÷ the first bundle's p50 at that length.
"""

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    from toolchain.bench.bundles import program_bytes
    from toolchain.bench.timing import cpu, cpu_line, open_bundle, time_round_robin

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--lengths", default="16,64")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    for b in args.bundles:
        if not (b / "manifest.json").is_file():
            raise SystemExit(f"error: {b} is not a bundle (no manifest.json); pass folders `ctb-mobile export` wrote")
    print(cpu_line(cpu()), flush=True)
    manifests = {b: json.loads((b / "manifest.json").read_text()) for b in args.bundles}
    predictors = {b: open_bundle(b, args.threads) for b in args.bundles}
    sizes = {b: program_bytes(b, m) for b, m in manifests.items()}
    for b, m in manifests.items():
        threads = sorted({p.threads for p in predictors[b].programs.values()}, key=str)
        print(f"{b.name}: {m['target']} {m['precision']}, {sizes[b]:,} program bytes "
              f"({sizes[b] / sizes[args.bundles[0]]:.3f} of the first), threads {threads}", flush=True)
    rng = np.random.default_rng(0)
    print("| bundle | seq | p50 ms | min ms | p50 ÷ first |\n|---|---|---|---|---|")
    for n in (int(x) for x in args.lengths.split(",")):
        ids = rng.integers(1000, 20000, (1, n)).astype(np.int64)
        ids[0, 0], ids[0, -1] = 101, 102  # [CLS] ... [SEP]
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        times = time_round_robin({b: (lambda p=p: p.run(**feeds)) for b, p in predictors.items()}, args.repeats, seed=n)
        first = float(np.median(times[args.bundles[0]]))
        for b in args.bundles:
            p50 = float(np.median(times[b]))
            print(f"| {b.name} | {n} | {p50:.2f} | {min(times[b]):.2f} | {p50 / first:.3f} |", flush=True)


if __name__ == "__main__":
    main()
