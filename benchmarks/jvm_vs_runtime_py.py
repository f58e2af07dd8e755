"""Per-call latency of the app's JVM stack (Kotlin tokenizer -> OnnxRuntimeBackend -> heads, from
android_demo) against runtime_py on the same ONNX bundle and the same texts: 1 intra-op thread, batch 1,
p50 over N calls, at seq 16 and 64 tokens (a bundle's max_seq_len caps the length).

    python benchmarks/jvm_vs_runtime_py.py BUNDLE [--repeats 300] [--seq 16,64]

Runs ctbmobile.onnxruntime.BenchKt (built with Maven, as android_demo/predict.sh builds it) for the
JVM figures and the texts, then times runtime_py's Predictor(threads=1) on those texts: call =
predict_one (tokenize + run + decode), tokenizer = encode, model = run on the padded batch of 1,
heads = every task's decode. Prints one table: p50 ms per part for each stack, the ratio JVM /
runtime_py, and the JVM's tokenizer + heads as a share of its model time (the goal: under 10 %).
A timing, not a test; run it on an idle machine.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "android_demo"
CLASSPATH = DEMO / "backend-onnxruntime" / "target" / "classpath.txt"


def jvm_bench(bundle: str, repeats: int, seqs: str) -> list:
    sources = [*DEMO.glob("pom.xml"), *DEMO.glob("*/pom.xml"), *DEMO.glob("core/src/main/**/*.kt"),
               *DEMO.glob("backend-onnxruntime/src/main/**/*.kt")]
    if not CLASSPATH.is_file() or max(f.stat().st_mtime for f in sources) > CLASSPATH.stat().st_mtime:
        subprocess.run(["mvn", "-B", "-q", "--no-transfer-progress", "-f", str(DEMO / "pom.xml"), "test-compile",
                        "dependency:build-classpath", "-Dmdep.includeScope=runtime",
                        "-Dmdep.outputFile=target/classpath.txt"], check=True, stdout=sys.stderr)
    cp = f"{DEMO / 'backend-onnxruntime' / 'target' / 'classes'}:{CLASSPATH.read_text().strip()}"
    out = subprocess.run(["java", "-cp", cp, "ctbmobile.onnxruntime.BenchKt", bundle, "--repeats", str(repeats),
                          "--seq", seqs], check=True, capture_output=True, text=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def p50s(n: int, parts: dict) -> dict:
    """Median ms of each part over n rounds (after n // 5 warm-up rounds); a round times every part once,
    in turn, so a busy machine slows all parts alike (as BenchKt does)."""
    for _ in range(max(1, n // 5)):
        for f in parts.values():
            f()
    times = {k: [] for k in parts}
    for _ in range(n):
        for k, f in parts.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def py_bench(bundle: str, text: str, repeats: int) -> dict:
    from runtime_py.predictor import Predictor, pad

    p = Predictor(bundle, threads=1)
    tasks = [n for n, t in p.tasks.items() if not t.pair]
    enc = p.encode([text], tasks=tasks)[0]
    feeds = pad([enc], p.dtype)
    raw = p.run(**feeds, tasks=tasks)
    rows = {n: (v[0][:len(enc.ids)] if v.ndim == 3 else v[0]) for n, v in raw.items()}
    return {"tokens": len(enc.ids), **p50s(repeats, {
        "call": lambda: p.predict_one(text, tasks=tasks),
        "tokenizer": lambda: p.encode([text], tasks=tasks),
        "model": lambda: p.run(**feeds, tasks=tasks),
        "heads": lambda: [p.decode(n, rows[n], enc, text) for n in tasks],
    })}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--seq", default="16,64")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    jvm = jvm_bench(a.bundle, a.repeats, a.seq)
    print(f"bundle {a.bundle}, 1 thread, batch 1, p50 of {a.repeats} calls (ms)\n")
    print("| seq (tokens) | part | JVM | runtime_py | JVM / runtime_py |")
    print("|---|---|---|---|---|")
    shares = []
    for row in jvm:
        py = py_bench(a.bundle, row["text"], a.repeats)
        assert py["tokens"] == row["tokens"], f"runtime_py tokenized {py['tokens']} tokens, the JVM {row['tokens']}"
        for part in ("call", "tokenizer", "model", "heads"):
            j, q = row["p50_ms"][part], py[part]
            print(f"| {row['seq']} ({row['tokens']}) | {part} | {j:.3f} | {q:.3f} | {j / q:.2f} |")
        jt = row["p50_ms"]
        shares.append((row["seq"], row["tokens"], (jt["tokenizer"] + jt["heads"]) / jt["model"],
                       (py["tokenizer"] + py["heads"]) / py["model"]))
    print()
    for seq, tokens, share, pyshare in shares:
        print(f"seq {seq} ({tokens} tokens): JVM tokenizer + heads = {share:.1%} of its model time "
              f"(goal < 10%); runtime_py's: {pyshare:.1%}")


if __name__ == "__main__":
    main()
