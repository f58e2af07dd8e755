"""Running and timing programs: runtimes' callables, round-robin timing, percentiles, peak memory of
a fresh process, and the machine the figures come from.
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
    """A timed ONNX Runtime session: intra-op spinning off, so an idle pool does not take the cores from
    the next configuration (measured here: PyTorch eager 2.6 ms after an ORT call without spinning, 15 ms
    with). `threads`: intra-op threads (None: one per core)."""
    from runtime_py.backends import OnnxProgram

    return OnnxProgram(Path(path), threads or 0, spin=False).session


def runner(target, bundle_dir, threads=None):
    """The target's runner for a bundle: file -> callable(feeds) (ONNX Runtime as in onnx_session)."""
    from runtime_py.backends import file_runner

    return file_runner(target, bundle_dir, threads or 0, spin=False)


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


_CHILD = """
import json, os, resource, sys
kind, path, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if kind == "onnx":
    import numpy as np, onnxruntime as ort
    if path:
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        a = np.asarray([ids], dtype=np.int64)
        feeds = {"input_ids": a, "attention_mask": np.ones_like(a), "token_type_ids": np.zeros_like(a)}
        s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})
else:
    import torch
    from executorch.runtime import Runtime
    rt = Runtime.get()
    if path:
        a = torch.tensor([ids], dtype=torch.long)
        rt.load_program(path).load_method("forward").execute([a, torch.ones_like(a), torch.zeros_like(a)])
# Linux: VmHWM is this process's own peak (reset by exec; ru_maxrss can carry the forking parent's)
if os.path.exists("/proc/self/status"):
    kb = [int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")][0]
else:  # macOS reports ru_maxrss in bytes
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
print(json.dumps({"peak_kb": kb}))
"""


def peak_rss_mb(kind: str, path, ids) -> float:
    """Peak RSS (MB) of a fresh process that imports the runtime and, if `path`, loads that program
    and runs one request on `ids`."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, kind, str(path or ""), json.dumps(list(ids))],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {path or kind} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_kb"] / 1024


def measure_memory(targets, precisions, tasks, bundles, peers, peer_precisions, ids, log) -> dict:
    """Peak MB above a runtime-only process, per configuration group and member."""
    log("peak memory: one fresh process per program")
    kinds = {"onnx": "onnx", "android": "pte"}
    baseline = {k: peak_rss_mb(k, None, ids) for k in sorted({kinds[t] for t in targets} | ({"onnx"} if peers else set()))}
    out = {"baseline_mb": baseline}
    for target in targets:
        kind = kinds[target]
        for precision in precisions:
            out[f"{target}/{precision}"] = {}
            for m in ["merged", *tasks]:
                d, manifest = bundles[target, precision, m]
                out[f"{target}/{precision}"][m] = peak_rss_mb(kind, d / manifest["programs"][0]["file"], ids) \
                    - baseline[kind]
    for precision in peer_precisions:
        out[f"peer/{precision}"] = {t: peak_rss_mb("onnx", peers[t][precision], ids) - baseline["onnx"] for t in tasks}
    return out


def bundle_call(run, manifest):
    from toolchain.export import check

    return lambda ids, mask, tt: check.run_bundle(run, manifest, {"input_ids": ids, "attention_mask": mask,
                                                                   "token_type_ids": tt})


def eager_call(model):
    import torch

    def call(ids, mask, tt):
        with torch.no_grad():
            return model(torch.from_numpy(ids), torch.from_numpy(tt), torch.from_numpy(mask))

    return call


def onnx_call(session):
    names = [i.name for i in session.get_inputs()]

    def call(ids, mask, tt):
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}
        return session.run(None, {k: feeds[k] for k in names})

    return call


def executorch_threads():
    try:
        from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

        return _threadpool_get_thread_count()
    except ImportError:
        return None


def load_average():
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


# /proc/cpuinfo flag -> name: the extensions int8 and fp32 kernels dispatch on (MLAS, XNNPACK, oneDNN)
VECTOR_FLAGS = {"avx2": "AVX2", "fma": "FMA", "avx_vnni": "AVX-VNNI", "avx512f": "AVX-512F",
                "avx512bw": "AVX-512BW", "avx512_vnni": "AVX-512 VNNI", "avx512_bf16": "AVX-512 BF16",
                "amx_int8": "AMX-INT8", "asimd": "NEON", "asimddp": "NEON dot product", "i8mm": "I8MM",
                "sve": "SVE"}


def vector_extensions(cpuinfo: str) -> list:
    """The vector extensions the first CPU of a /proc/cpuinfo text lists ("flags" on x86, "Features" on
    Arm), in VECTOR_FLAGS order: figures from machines with and without VNNI are not comparable."""
    line = next((x for x in cpuinfo.splitlines() if x.split(":", 1)[0].strip() in ("flags", "Features")), "")
    flags = set(line.split(":", 1)[1].split()) if ":" in line else set()
    return [name for flag, name in VECTOR_FLAGS.items() if flag in flags]


def machine(torch, load_start, threads, executorch) -> dict:
    """CPU, cores, thread counts, load average at start and end (a busy machine makes noisy figures)."""
    import importlib.metadata as md

    cpu, extensions = platform.processor(), None
    if Path("/proc/cpuinfo").is_file():
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), cpu)
        extensions = vector_extensions(info)
    versions = {}
    for pkg in ("torch", "onnxruntime", "executorch", "optimum", "optimum-onnx", "transformers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": cpu, "vector_extensions": extensions, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "onnxruntime_threads": threads or f"default ({os.cpu_count()}, one per core)",
            "executorch_threads": executorch_threads() if executorch else None,
            "load_average": {"start": load_start, "end": load_average()},
            "python": platform.python_version(), "versions": versions}
