"""ONNX and ONNX Runtime Mobile: torch.onnx (dynamo) export at opset 18, optional int8 quantization
with onnxruntime (dynamic, or static QDQ calibrated on real dev text), and the .ort format.

Precisions: fp32 | int8 (dynamic: int8 weights, activations quantized at run time, embeddings too)
| int8-static (QDQ, activation ranges from calibration batches).
"""

import json
import re
from pathlib import Path

PRECISIONS = ("fp32", "int8", "int8-static")
SUFFIX = ".onnx"
OPSET = 18


def export(graph, out_dir: Path, precision: str, max_seq_len: int, metadata: dict, calibration=(),
           keep_fp32=()) -> list:
    """Write <name>.onnx and <name>.ort; returns the file names. `keep_fp32`: tasks whose branch
    weights stay fp32 (the quantization guard's fallback, fused layout)."""
    import onnx
    import torch

    out_dir = Path(out_dir)
    fp32 = out_dir / f"{graph.name}.fp32.onnx"
    program = torch.onnx.export(graph.module, graph.example, dynamo=True, opset_version=OPSET,
                                input_names=list(graph.inputs), output_names=list(graph.outputs),
                                dynamic_shapes=graph.dynamic_shapes(max_seq_len))
    program.save(str(fp32))
    final = out_dir / f"{graph.name}.onnx"
    if precision == "fp32":
        fp32.rename(final)
    else:
        _quantize(fp32, final, precision, graph, calibration, keep_fp32)
        fp32.unlink()
    model = onnx.load(str(final))
    onnx.helper.set_model_props(model, {"ctb_mobile_manifest": json.dumps(metadata, sort_keys=True)})
    onnx.save(model, str(final))
    _to_ort(final, out_dir / f"{graph.name}.ort")
    return [final.name, f"{graph.name}.ort"]


def _excluded_nodes(path, keep_fp32):
    import onnx

    if not keep_fp32:
        return []
    model = onnx.load(str(path))
    # the exporter records each node's module path in its metadata ("...branches.<task>: Branch/...")
    marks = [re.compile(rf"branches\.{re.escape(t)}[':./]") for t in keep_fp32]
    return [n.name for n in model.graph.node
            if any(m.search(p.value) for p in n.metadata_props for m in marks)
            or any(m.search(i + ".") for i in n.input for m in marks)]


def _quantize(src, dst, precision, graph, calibration, keep_fp32):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    exclude = _excluded_nodes(src, keep_fp32)
    if precision == "int8":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=exclude)
        return

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{n: t.numpy() for n, t in zip(graph.inputs, b)} for b in calibration])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                    op_types_to_quantize=["MatMul", "Gemm", "Gather"])


def _to_ort(onnx_path, ort_path):
    """The ORT format for ONNX Runtime Mobile: the session saves the model it optimised."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # portable across devices
    so.optimized_model_filepath = str(ort_path)
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def runner(bundle_dir: Path):
    """program file -> callable(feeds: dict of numpy arrays) -> list of numpy outputs."""
    from runtime_py.backends import file_runner

    return file_runner("onnx", bundle_dir)
