"""Frozen-trunk feature cache: epoch time with and without it, measured in one run.

    python benchmarks/cache_speedup.py [--recipe models/assistant.toml] [--task snips_intent]
                                       [--layers 2] [--max-train 1500] [--rounds 3]

Trains the same task for one epoch from the same seed, alternating cache off and cache on for
--rounds rounds (alternating, so a change in the machine's load hits both alike), and prints the
median epoch time of each, their ratio, the one-off cost of building the cache, and the largest
difference between the losses of the two modes (they must agree).
"""

import argparse
import statistics
import tempfile
from pathlib import Path

from toolchain import backbone
from toolchain.config import load_recipe
from toolchain.data import load_task
from toolchain.train import make_accelerator, train_one


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(Path(__file__).parents[1] / "models" / "assistant.toml"))
    ap.add_argument("--task", default="snips_intent")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--max-train", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    recipe = load_recipe(args.recipe).override(max_train=args.max_train, epochs=1)
    task = recipe.task(args.task)
    bb = backbone.load(recipe.backbone_spec)
    data = load_task(recipe, task, bb.tokenizer())
    acc = make_accelerator(recipe.train.mixed_precision)
    plain_s, cached_s, diffs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(args.rounds):
            plain = train_one(recipe, bb, task, data, args.layers, 0, tmp / f"plain{r}", acc, use_cache=False)
            cached = train_one(recipe, bb, task, data, args.layers, 0, tmp / f"cached{r}", acc, use_cache=True,
                               cache_dir=tmp / "cache")
            if r == 0:
                build = cached["cache_seconds"]
            plain_s += plain["epoch_seconds"]
            cached_s += cached["epoch_seconds"]
            diffs += [abs(a - b) for a, b in zip(plain["losses"], cached["losses"])]
    t_plain, t_cached = statistics.median(plain_s), statistics.median(cached_s)
    diff = max(diffs)
    print(f"backbone {recipe.backbone} ({bb.depth} layers), task {task.name}, L = {args.layers} "
          f"(trunk depth {bb.depth - args.layers}), {len(data.train)} train examples, {args.rounds} rounds")
    print(f"median epoch without cache: {t_plain:.2f} s   {[round(x, 2) for x in plain_s]}")
    print(f"median epoch with cache:    {t_cached:.2f} s   {[round(x, 2) for x in cached_s]}")
    print(f"one-off cache build (train + dev, first round): {build:.2f} s")
    print(f"speed-up per epoch: {t_plain / t_cached:.2f}x   max |loss difference|: {diff:.2e}")
    print(f"dev {task.metric}: {plain['dev_metric']:.2f} without cache, {cached['dev_metric']:.2f} with cache")


if __name__ == "__main__":
    main()
