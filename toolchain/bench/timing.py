"""Running and timing programs: one callable per configuration (our bundles through runtime_py's
Predictor, PyTorch eager, the peer's ONNX Runtime session), each taking feeds by input name;
round-robin timing, percentiles, peak memory of a fresh process, and the machine the figures come from.
"""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

WARMUP = 2


def onnx_session(path, threads=None):
    """A timed ONNX Runtime session (the peer's, the GEMM peak's): intra-op spinning off, so an idle pool
    does not take the cores from the next configuration (measured here: PyTorch eager 2.6 ms after an ORT
    call without spinning, 15 ms with). `threads`: intra-op threads (None: one per core)."""
    from runtime_py.backends import OnnxProgram

    return OnnxProgram(Path(path), threads or 0, spin=False).session


def open_bundle(bundle_dir, threads=None):
    """The bundle as an app runs it: runtime_py's Predictor, every program on `threads` threads (None:
    the runtime's own default), ONNX Runtime's idle threads not spinning (as onnx_session)."""
    from runtime_py import Predictor

    return Predictor(bundle_dir, check_files=False, threads=threads or 0, spin=False)


RUNTIMES = {"onnx": "onnxruntime", "android": "executorch"}  # target -> the runtime its programs run on


def threads_used(predictors, peer_threads=False) -> dict:
    """runtime -> the threads it runs on: PyTorch's own count, then per target the count its opened
    programs report (None: the runtime's default, which ONNX Runtime does not report; a list if they
    differ). `predictors`: (target, Predictor) pairs; `peer_threads`: the peer's ONNX Runtime setting
    (None: its default) where the peer is timed and no onnx bundle is, else False."""
    import torch

    used = {"pytorch": torch.get_num_threads()}
    for target, predictor in predictors:
        for program in predictor.programs.values():
            used.setdefault(RUNTIMES[target], set()).add(program.threads)
    if peer_threads is not False and "onnxruntime" not in used:
        used["onnxruntime"] = {peer_threads}
    return {k: (v if isinstance(v, int) else v.pop() if len(v) == 1 else sorted(v, key=str)) for k, v in used.items()}


def bundle_call(predictor):
    return lambda feeds: predictor.run(**feeds)


def eager_call(model):
    import torch

    def call(feeds):
        with torch.no_grad():
            return model(**{k: torch.from_numpy(v) for k, v in feeds.items()})

    return call


def onnx_call(session):
    names = [i.name for i in session.get_inputs()]
    return lambda feeds: session.run(None, {k: feeds[k] for k in names})


def time_round_robin(calls: dict, repeats: int, seed: int = 0) -> dict:
    """Warm every call up, then time `repeats` rounds of all calls, each round in a fresh (seeded)
    random order, so slow phases of a noisy machine, and whatever one call leaves running for the
    next, are shared by every configuration alike. ms per call."""
    import random

    names = list(calls)
    for n in names:
        for _ in range(WARMUP):
            calls[n]()
    times = {n: [] for n in names}
    rng = random.Random(seed)
    for _ in range(repeats):
        order = names[:]
        rng.shuffle(order)
        for n in order:
            t = time.perf_counter()
            calls[n]()
            times[n].append((time.perf_counter() - t) * 1e3)
    return times


def percentiles(ms: list) -> dict:
    import numpy as np

    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90))}


# The memory probe: a fresh process opens one program as runtime_py does (open_program) and runs one
# request by input name; with no program it only imports the runtime (the baseline).
_CHILD = """
import importlib, json, os, resource, sys
from pathlib import Path
target, path, inputs, ids, threads = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5])
import numpy as np
from runtime_py.backends import open_program
for module in {"onnx": ["onnxruntime"], "android": ["torch", "executorch.runtime"]}[target]:
    importlib.import_module(module)
if path:
    a = np.asarray([ids], dtype=np.int64)
    feeds = {"input_ids": a, "attention_mask": np.ones_like(a), "token_type_ids": np.zeros_like(a)}
    open_program(target, Path(path), inputs, [], threads=threads).run(feeds)
# Linux: VmHWM is this process's own peak (reset by exec; ru_maxrss can carry the forking parent's)
if os.path.exists("/proc/self/status"):
    kb = [int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")][0]
else:  # macOS reports ru_maxrss in bytes
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
print(json.dumps({"peak_kb": kb}))
"""


def peak_rss_mb(target: str, program, ids, threads=None) -> float:
    """Peak RSS (MB) of a fresh process that imports the target's runtime and, if `program` (a path and
    its input names), opens it and runs one request on `ids`."""
    path, inputs = program or ("", [])
    args = [target, str(path), json.dumps(list(inputs)), json.dumps(list(ids)), str(threads or 0)]
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {path or target} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_kb"] / 1024


def measure_memory(programs: dict, ids, threads, log) -> dict:
    """Peak MB above a runtime-only process, per configuration group and member. `programs`: group ->
    member -> (target, program file, its input names)."""
    log("peak memory: one fresh process per program")
    targets = sorted({target for group in programs.values() for target, _, _ in group.values()})
    out = {"baseline_mb": {t: peak_rss_mb(t, None, ids) for t in targets}}
    for name, group in programs.items():
        out[name] = {m: peak_rss_mb(target, (path, inputs), ids, threads) - out["baseline_mb"][target]
                     for m, (target, path, inputs) in group.items()}
    return out


def load_average():
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


# /proc/cpuinfo flag -> name: the extensions int8 and fp32 kernels dispatch on (MLAS, XNNPACK, oneDNN)
VECTOR_FLAGS = {"avx2": "AVX2", "fma": "FMA", "avx_vnni": "AVX-VNNI", "avx512f": "AVX-512F",
                "avx512bw": "AVX-512BW", "avx512_vnni": "AVX-512 VNNI", "avx512_bf16": "AVX-512 BF16",
                "amx_int8": "AMX-INT8", "asimd": "NEON", "asimddp": "NEON dot product", "i8mm": "I8MM",
                "sve": "SVE"}
INT8_FLAGS = ("avx2", "avx512_vnni", "amx_int8")  # the CPU line's: which int8 kernels MLAS and XNNPACK can take


def cpu_flags(cpuinfo: str) -> set:
    """The first CPU's flags in a /proc/cpuinfo text ("flags" on x86, "Features" on Arm)."""
    line = next((x for x in cpuinfo.splitlines() if x.split(":", 1)[0].strip() in ("flags", "Features")), "")
    return set(line.split(":", 1)[1].split()) if ":" in line else set()


def vector_extensions(cpuinfo: str) -> list:
    """The vector extensions the first CPU of a /proc/cpuinfo text lists, in VECTOR_FLAGS order: figures
    from machines with and without VNNI are not comparable."""
    flags = cpu_flags(cpuinfo)
    return [name for flag, name in VECTOR_FLAGS.items() if flag in flags]


def cpu(cpuinfo: str | None = None) -> dict:
    """The CPU's model name and its int8 flags (None each where unknown: no /proc/cpuinfo), from
    /proc/cpuinfo on Linux, platform.processor() elsewhere."""
    if cpuinfo is None and Path("/proc/cpuinfo").is_file():
        cpuinfo = Path("/proc/cpuinfo").read_text()
    if cpuinfo is None:
        return {"model": platform.processor() or platform.machine(), "int8_flags": dict.fromkeys(INT8_FLAGS),
                "vector_extensions": None}
    model = next((x.split(":", 1)[1].strip() for x in cpuinfo.splitlines() if x.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = cpu_flags(cpuinfo)
    return {"model": model, "int8_flags": {f: f in flags for f in INT8_FLAGS},
            "vector_extensions": vector_extensions(cpuinfo)}


def cpu_line(c: dict) -> str:
    """One line: "CPU: <model>; avx2 yes, avx512_vnni no, amx_int8 no"."""
    said = {True: "yes", False: "no", None: "unknown"}
    return f"CPU: {c['model']}; " + ", ".join(f"{f} {said[v]}" for f, v in c["int8_flags"].items())


def threads_line(threads: dict) -> str:
    """One line: the threads each timed runtime actually uses ("default": the runtime's own, unreported)."""
    return "threads: " + ", ".join(f"{k} {'default' if v is None else v}" for k, v in threads.items())


def machine(c: dict, threads: dict, load_start) -> dict:
    """CPU, cores, the threads each runtime used, load average at start and end (a busy machine makes
    noisy figures), versions."""
    import importlib.metadata as md

    import torch

    versions = {}
    for pkg in ("torch", "onnxruntime", "executorch", "optimum", "optimum-onnx", "transformers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": c["model"], "cpu_line": cpu_line(c), "int8_flags": c["int8_flags"],
            "vector_extensions": c["vector_extensions"], "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(), "threads": threads,
            "load_average": {"start": load_start, "end": load_average()},
            "python": platform.python_version(), "versions": versions}
