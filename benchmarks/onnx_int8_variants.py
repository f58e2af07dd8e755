"""ONNX int8 activation schemes side by side: latency and agreement with fp32, in one run.

    python benchmarks/onnx_int8_variants.py models/assistant.toml --store DIR [--lengths 16,64] [--threads 1]

Exports the store's fused fp32 ONNX graph once, rewrites it with each per-token activation scheme of
toolchain.export.onnx (asymmetric: uint8 with a per-token minimum, six nodes per MatMul; symmetric:
zero point 128 and ORT's MatMulIntegerToFloat, two nodes per MatMul), then prints, at batch 1 and
each length, the median latency of fp32 and of each scheme (timed in alternating rounds) and each
scheme's prediction agreement with fp32 on the recipe's dev sets.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--lengths", default="16,64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--dev", type=int, default=500, help="dev examples per task for the agreement")
    args = ap.parse_args()

    import onnxruntime as ort

    from toolchain.cache import pad_batch
    from toolchain.config import load_recipe
    from toolchain.export import dev_sets
    from toolchain.export import onnx as onnx_target
    from toolchain.export.check import predictions
    from toolchain.export.graph import example_inputs, graphs
    from toolchain.store import load_merged

    recipe = load_recipe(args.recipe)
    model, tok, metas = load_merged(args.store)
    max_len = max(recipe.seq_len(t) for t in recipe.tasks)
    graph = graphs(model, metas, "fused", example_inputs(tok, ["play some jazz", "wake me up at seven"], max_len))[0]
    tmp = Path(tempfile.mkdtemp())
    paths = {"fp32": tmp / onnx_target.export(graph, tmp, "fp32", max_len, {})[0]}
    for name, symmetric in (("int8 asymmetric", False), ("int8 symmetric", True)):
        paths[name] = tmp / f"{name.replace(' ', '-')}.onnx"
        onnx_target._quantize(paths["fp32"], paths[name], "int8", graph, (), (), symmetric)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    names = [i.name for i in sessions["fp32"].get_inputs()]

    def run(name, b):
        feeds = {"input_ids": b.input_ids.numpy(), "attention_mask": b.attention_mask.numpy(),
                 "token_type_ids": b.token_type_ids.numpy()}
        return sessions[name].run(None, {k: feeds[k] for k in names})

    print(f"store {args.store}: {len(metas)} tasks; {args.threads} thread(s); median of {args.repeats} rounds")
    print("| seq | " + " | ".join(f"{k} ms" for k in paths) + " | asymmetric ÷ symmetric |")
    print("|" + "---|" * (len(paths) + 2))
    text_ids = tok.encode("set an alarm for seven thirty tomorrow morning and remind me to call my sister").ids
    for n in (int(x) for x in args.lengths.split(",")):
        body = (text_ids[1:-1] * 8)[: n - 2]
        b = pad_batch([[text_ids[0], *body, text_ids[-1]]], [[0] * n], "cpu")
        times = {k: [] for k in paths}
        for k in paths:
            run(k, b)
        for _ in range(args.repeats):
            for k in paths:
                t = time.perf_counter()
                run(k, b)
                times[k].append((time.perf_counter() - t) * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"| {n} | " + " | ".join(f"{med[k]:.2f}" for k in paths)
              + f" | {med['int8 asymmetric'] / med['int8 symmetric']:.2f} |")

    print("\n| task | examples | " + " | ".join(f"{k} agreement" for k in paths if k != "fp32") + " |\n|---|---|---|---|")
    for name, (task, _, dev, _) in dev_sets(recipe, tok, metas, args.dev).items():
        out_index = list(graph.outputs).index(name)
        preds = {k: [] for k in paths}
        for s in range(0, len(dev), 32):
            idx = range(s, min(s + 32, len(dev)))
            b = pad_batch([dev.input_ids[i] for i in idx], [dev.type_ids[i] for i in idx], "cpu")
            for k in paths:
                out = run(k, b)[out_index]
                preds[k] += [o[: len(dev.input_ids[i])] if o.ndim == 2 else o for o, i in zip(out, idx)]
        ref = predictions(task.type, preds["fp32"])
        cells = []
        for k in paths:
            if k == "fp32":
                continue
            got = predictions(task.type, preds[k])
            hits = [a == b for a, b in zip(ref, got)] if task.type != "tagging" else \
                [x == y for a, b in zip(ref, got) for x, y in zip(a, b)]
            cells.append(f"{np.mean(hits):.2%}")
        print(f"| {name} | {len(dev)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
