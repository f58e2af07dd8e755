"""Where an ONNX program's time goes, by operator type, from ONNX Runtime's own profiler.

    python benchmarks/ort_profile.py BUNDLE_OR_ONNX [BUNDLE_OR_ONNX ...] --lengths 16,64 --repeats 50 --threads 1

For each program and sequence length (batch 1, real token ids cut to that length) it runs `repeats`
requests with profiling on and prints, per operator type, the median ms per request, its share of
the request, and the node count, largest first; then the whole-request median. Several programs in
one run (an int8 and an fp32 bundle, say) make their rows comparable on a noisy machine.
"""

import argparse
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

WARMUP = 3


def program_of(path: Path) -> Path:
    if path.is_dir():  # a bundle: its fused model, else its trunk
        manifest = json.loads((path / "manifest.json").read_text())
        names = {p["name"]: p["file"] for p in manifest["programs"]}
        return path / names.get("model", names.get("trunk"))
    return path


def inputs(session, n: int) -> dict:
    ids = np.array([[101] + [2000 + (7 * i) % 5000 for i in range(n - 2)] + [102]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {i.name: feeds[i.name] for i in session.get_inputs()}


def profile(path: Path, n: int, repeats: int, threads: int) -> dict:
    """op type -> (median ms per request, nodes), plus "__request__" -> median ms of the whole request."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "prof")
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feeds = inputs(session, n)
        for _ in range(WARMUP + repeats):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[WARMUP:]  # the warm-up requests are left out
    per_run = [defaultdict(float) for _ in runs]
    nodes = defaultdict(set)
    starts = [r["ts"] for r in runs]
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        k = max(i for i, s in enumerate(starts) if s <= e["ts"]) if starts and e["ts"] >= starts[0] else None
        if k is None:
            continue
        op = e["args"].get("op_name", "?")
        per_run[k][op] += e["dur"] / 1e3
        nodes[op].add(e["name"])
    ops = {op: (statistics.median(r.get(op, 0.0) for r in per_run), len(nodes[op])) for op in nodes}
    ops["__request__"] = (statistics.median(r["dur"] / 1e3 for r in runs), 0)
    return ops


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("programs", nargs="+", type=Path)
    ap.add_argument("--lengths", default="16,64")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    for path in args.programs:
        program = program_of(path)
        for n in (int(x) for x in args.lengths.split(",")):
            ops = profile(program, n, args.repeats, args.threads)
            total, _ = ops.pop("__request__")
            kernels = sum(ms for ms, _ in ops.values())
            print(f"\n{program} seq {n}: {total:.3f} ms per request (median of {args.repeats}, "
                  f"{args.threads} thread{'s' if args.threads != 1 else ''}); kernels {kernels:.3f} ms")
            print("| op type | ms | share | nodes |\n|---|---|---|---|")
            for op, (ms, count) in sorted(ops.items(), key=lambda kv: -kv[1][0]):
                print(f"| {op} | {ms:.3f} | {ms / kernels:.1%} | {count} |")


if __name__ == "__main__":
    main()
