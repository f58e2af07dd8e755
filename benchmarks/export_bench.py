"""Exported bundles against PyTorch eager fp32, measured in one run.

    python benchmarks/export_bench.py models/assistant.toml [--store DIR] [--bundles DIR]
                                      [--targets onnx,android,ios] [--lengths 16,64,128] [--repeats 30]

For each target and precision: bundle bytes (and ratio to the fp32 PyTorch weights), and for the
targets that run here (ONNX Runtime, ExecuTorch) the median latency of one request (batch 1) at each
sequence length, as a ratio to PyTorch eager fp32 on the same inputs. Fused bundles already in
--bundles (default <out>/bundles, named <target>-fused-<precision>) are measured as they are;
missing ones are exported first. Inputs are real dev text,
repeated up to the length. CoreML latency needs an Apple device; only its bytes are reported.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from runtime_py import Predictor
from runtime_py.targets import TARGETS
from toolchain.config import load_recipe
from toolchain.export import export_bundle
from toolchain.store import load_merged

PRECISIONS = {"onnx": ["fp32", "int8"], "android": ["fp32", "int8"], "ios": ["fp16", "int8"]}


def inputs_of_length(tok, text, n):
    tok.no_truncation()
    ids = tok.encode(text).ids
    body = ids[1:-1] or [ids[0]]
    while len(body) < n - 2:
        body = body + body
    ids = [ids[0], *body[: n - 2], ids[-1]][:n]
    t = torch.tensor([ids])
    return {"input_ids": t, "attention_mask": torch.ones_like(t), "token_type_ids": torch.zeros_like(t)}


def median_ms(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--store")
    ap.add_argument("--bundles")
    ap.add_argument("--targets", default="onnx,android,ios")
    ap.add_argument("--lengths", default="16,64,128")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    store_dir = Path(args.store or recipe.root / recipe.name / "store")
    model, tok, metas = load_merged(store_dir)
    lengths = [int(x) for x in args.lengths.split(",")]
    text = "set an alarm for seven thirty tomorrow morning and remind me to call my sister about the trip"
    feeds = {n: inputs_of_length(tok, text, n) for n in lengths}
    torch.set_num_threads(torch.get_num_threads())
    eager = {}
    with torch.no_grad():
        for n, inputs in feeds.items():
            eager[n] = median_ms(lambda inputs=inputs: model(**inputs), args.repeats)
    weights = sum(p.numel() * 4 for p in model.parameters())
    print(f"store {store_dir}: {len(metas)} tasks, trunk depth {model.trunk.depth}, fp32 weights {weights:,} bytes")
    print("PyTorch eager fp32, batch 1: " + ", ".join(f"seq {n}: {eager[n]:.2f} ms" for n in lengths))
    header = "| target | precision | bundle bytes | ÷ fp32 weights | " + " | ".join(
        f"seq {n} ms (÷ eager)" for n in lengths) + " |"
    rows = [header, "|" + "---|" * (4 + len(lengths))]
    out_root = Path(args.bundles or recipe.root / recipe.name / "bundles")
    for target in args.targets.split(","):
        for precision in PRECISIONS.get(target, [TARGETS[target].default_precision]):
            dest = out_root / f"{target}-fused-{precision}"
            if (dest / "manifest.json").is_file():
                manifest = json.loads((dest / "manifest.json").read_text())
            else:
                manifest = export_bundle(recipe, store_dir, target, precision, "fused", dest, log=lambda m: None)
            model_bytes = sum(v["bytes"] for f, v in manifest["files"].items()
                              if f.startswith("model") and not f.endswith(".ort"))
            cells = []
            if not TARGETS[target].runs_here():
                cells = ["needs an Apple device"] * len(lengths)
            else:
                predictor = Predictor(dest)
                for n in lengths:
                    if n > manifest["max_seq_len"]:  # the program's shapes are bounded by the recipe
                        cells.append(f"> max_seq_len {manifest['max_seq_len']}")
                        continue
                    arrays = {k: t.numpy() for k, t in feeds[n].items()}
                    ms = median_ms(lambda p=predictor, arrays=arrays: p.run(**arrays), args.repeats)
                    cells.append(f"{ms:.2f} ({ms / eager[n]:.2f}×)")
            rows.append(f"| {target} | {precision} | {model_bytes:,} | {model_bytes / weights:.2f} | "
                        + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    print()
    print("\n".join(rows))
    print(f"\nmedian of {args.repeats} runs after one warm-up; torch threads {torch.get_num_threads()}; bundles in {out_root}")


if __name__ == "__main__":
    main()
