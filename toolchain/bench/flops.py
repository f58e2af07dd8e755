"""Analytic FLOPs of the layers a program runs, and a GEMM peak to hold them against: the best fp32
matrix product of torch, ONNX Runtime (MLAS) and XNNPACK at the model's shapes, measured in the same run.
"""

import statistics
import time
from pathlib import Path

from toolchain.bench.timing import WARMUP


def layer_flops(tokens: int, hidden: int, ffn: int) -> int:
    """Multiply-adds ×2 of one BERT layer: Q, K, V, output, FFN in/out, and the attention products."""
    return 2 * tokens * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * tokens * tokens * hidden


def head_flops(meta, tokens: int, hidden: int) -> int:
    if meta.type == "tagging":
        return 2 * tokens * hidden * meta.n_out
    return 2 * hidden * hidden + 2 * hidden * meta.n_out  # tanh pooler on [CLS], then the output layer


def model_flops(metas: dict, tokens: int, hidden: int, ffn: int) -> int:
    """FLOPs of one request through a model whose trunk runs to the deepest attach point (embeddings
    excluded). A single-task model is the same formula with one branch."""
    depth = max(m.attach for m in metas.values())
    layers = depth + sum(m.layers for m in metas.values())
    return layers * layer_flops(tokens, hidden, ffn) + sum(head_flops(m, tokens, hidden) for m in metas.values())


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
    """One fp32 matmul lowered to XNNPACK by ExecuTorch, B a constant as in the exported programs. The
    lowering takes seconds per shape, so each shape's program is kept in the cache folder (its weights
    are random and only the timing matters)."""
    import importlib.metadata
    import os

    import torch
    from executorch.runtime import Runtime

    from toolchain.backbone import cache_root

    path = cache_root() / "gemm" / f"xnnpack-{m}-{k}-{n}-executorch{importlib.metadata.version('executorch')}.pte"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{os.getpid()}")
        part.write_bytes(_lower_matmul(m, k, n))
        os.replace(part, path)
    method = Runtime.get().load_program(str(path)).load_method("forward")
    a = torch.randn(m, k)
    return lambda: method.execute([a])


def _lower_matmul(m, k, n) -> bytes:
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
    torch's and ONNX Runtime's thread count (None: their own); XNNPACK uses ExecuTorch's pool."""
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
