"""A GEMM peak to hold achieved GFLOP/s against: the best fp32 matrix product of torch, ONNX Runtime
(MLAS) and XNNPACK (through ExecuTorch) at the model's shapes, measured in the same run on the same
threads. The XNNPACK matmul is lowered once per shape and kept in the cache folder.
"""

import statistics
import time
from pathlib import Path

from toolchain.bench.timing import WARMUP


def _median_seconds(call, repeats: int) -> float:
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _torch_matmul(m, k, n, threads, tmp):
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    return lambda: torch.matmul(a, b)


def _ort_matmul(m, k, n, threads, tmp):
    """One fp32 MatMul in ONNX Runtime (MLAS), B a constant as in the exported programs."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from toolchain.bench.timing import onnx_session

    rng = np.random.default_rng(0)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                              [numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "b")])
    path = Path(tmp) / f"gemm-{m}-{k}-{n}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    session, a = onnx_session(path, threads), rng.standard_normal((m, k), dtype=np.float32)
    return lambda: session.run(None, {"a": a})


def _xnnpack_matmul(m, k, n, threads, tmp):
    """One fp32 matmul lowered to XNNPACK by ExecuTorch, B a constant as in the exported programs, opened
    as runtime_py opens a .pte (ExecuTorch's pool pinned to `threads`). The lowering takes seconds per
    shape, so each shape's program is kept in the cache folder (its weights are random and only the
    timing matters)."""
    import importlib.metadata
    import os

    import torch

    from runtime_py.backends import open_program
    from toolchain.backbone import cache_root

    path = cache_root() / "gemm" / f"xnnpack-{m}-{k}-{n}-executorch{importlib.metadata.version('executorch')}.pte"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{os.getpid()}")
        part.write_bytes(lower_matmul_to_xnnpack(m, k, n))
        os.replace(part, path)
    program = open_program("android", path, ["a"], [], threads=threads or 0)
    a = torch.randn(m, k)
    return lambda: program.method.execute([a])  # the method itself: no output copy in the timed call


def lower_matmul_to_xnnpack(m, k, n) -> bytes:
    """A .pte computing a (m, k) @ B (k, n), B a random constant, delegated to XNNPACK."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    class MatMul(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.b = torch.nn.Parameter(torch.randn(k, n), requires_grad=False)

        def forward(self, a):
            return a @ self.b

    ep = torch.export.export(MatMul().eval(), (torch.randn(m, k),))
    return to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


ENGINES = {"torch": ("torch", _torch_matmul), "onnxruntime": ("onnxruntime", _ort_matmul),
           "xnnpack": ("executorch", _xnnpack_matmul)}


def gemm_peak(shapes, repeats: int, threads=None, engines=("torch", "onnxruntime", "xnnpack")) -> dict:
    """Median GFLOP/s of one fp32 matrix product (m, k) x (k, n) for each of `shapes` in each engine
    that is installed: torch.matmul, ONNX Runtime's MatMul (MLAS) and ExecuTorch's XNNPACK; the peak is
    the best of all, so a program's fraction of it never flatters the engine it runs on. `threads`:
    ONNX Runtime's and ExecuTorch's thread count (None: their own); torch runs on its current count."""
    import importlib.util
    import tempfile

    import torch

    rows, skipped = [], {}
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            package, make = ENGINES[engine]
            if importlib.util.find_spec(package) is None:
                skipped[engine] = f"{package} is not installed"
                continue
            for m, k, n in shapes:
                med = _median_seconds(make(m, k, n, threads, tmp), repeats)
                rows.append({"engine": engine, "m": m, "k": k, "n": n, "median_ms": med * 1e3,
                             "gflops": 2 * m * k * n / med / 1e9})
    best = max(rows, key=lambda r: r["gflops"])
    return {"threads": torch.get_num_threads(), "peak_gflops": best["gflops"], "peak_engine": best["engine"],
            "engines": {e: max(r["gflops"] for r in rows if r["engine"] == e) for e in dict.fromkeys(r["engine"] for r in rows)},
            "skipped": skipped, "shapes": rows}
