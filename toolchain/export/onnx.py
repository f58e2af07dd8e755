"""ONNX and ONNX Runtime Mobile: torch.onnx (dynamo) export at opset 18, optional int8 quantization
with onnxruntime (dynamic, or static QDQ calibrated on real dev text), and the .ort format.

Precisions: fp32 | int8 (dynamic: int8 weights per output channel, activations quantized to uint8
per token at run time, like XNNPACK's dynamic int8 on Android; word embeddings int8) | int8-static
(QDQ, activation ranges from calibration batches) | int4 (MatMulNBits: 4-bit weights in blocks of 32 or
64, int8 activation compute; embedding tables as 4-bit blocks, GatherBlockQuantized; see _int4).

ONNX Runtime's own dynamic quantizer gives a whole tensor one activation scale, set by BERT's
outlier dimensions; on CLINC150 intents that kept 98 % of fp32's predictions. So the int8 MatMuls
are rewritten here: per-token activations into MatMulInteger (asymmetric, the default) or, with the
recipe's `[export] onnx_int8 = "symmetric"`, into MatMulIntegerToFloat (see _per_token_matmuls).
"""

import json
import re
from pathlib import Path

from runtime_py.targets import get as _target

TARGET = _target("onnx")  # precisions, suffix and metadata key: runtime_py/targets.py
SUFFIX = TARGET.suffix
OPSET = 18
# torch.onnx records each node's Python stack under this key: absolute paths of the checkout and its source lines
STACK_TRACE = "pkg.torch.onnx.stack_trace"


def export(graph, out_dir: Path, precision: str, max_seq_len: int, metadata: dict, *, calibration=(),
           keep_fp32=(), symmetric: bool = False, keep_int8=(), group: int = 0) -> list:
    """Write <name>.onnx and <name>.ort; returns the file names. `keep_fp32`: what the quantization
    guard keeps in fp32: tasks (their branch, fused layout) and trunk layers ("trunk.layers.<i>").
    `symmetric`: int8 only, the symmetric per-token activation scheme. int4 only: `keep_int8`, the
    parts the guard keeps at int8, and `group`, the weights per 4-bit block."""
    import onnx

    from toolchain.export import cache

    out_dir = Path(out_dir)
    fp32 = out_dir / f"{graph.name}.fp32.onnx"
    cache.traced("onnx", graph, max_seq_len, fp32, lambda path: _trace(graph, max_seq_len, path))
    final = out_dir / f"{graph.name}.onnx"
    if precision == "fp32":
        fp32.rename(final)
    else:
        _quantize(fp32, final, precision, graph, calibration=calibration, keep_fp32=keep_fp32, symmetric=symmetric,
                  keep_int8=keep_int8, group=group)
        fp32.unlink()
    model = onnx.load(str(final))
    _drop_stack_traces(model)
    onnx.helper.set_model_props(model, {TARGET.metadata_key: json.dumps(metadata, sort_keys=True)})
    onnx.save(model, str(final))
    _to_ort(final, out_dir / f"{graph.name}.ort")
    return [final.name, f"{graph.name}.ort"]


def _drop_stack_traces(model) -> None:
    """Keep each node's module path (what the guard's fallback reads) but not its stack trace: a shipped program
    then names no folder of the machine that exported it, and its bytes do not depend on the checkout's path."""
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key != STACK_TRACE]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def _trace(graph, max_seq_len: int, path: Path) -> None:
    import torch

    program = torch.onnx.export(graph.module, graph.example, dynamo=True, opset_version=OPSET,
                                input_names=list(graph.inputs), output_names=list(graph.outputs),
                                dynamic_shapes=graph.dynamic_shapes(max_seq_len))
    program.save(str(path))


def _excluded_nodes(model, keep_fp32):
    # the exporter records each node's module path in its metadata ("...branches.<task>: Branch/...",
    # "model.trunk.layers.2.query"); an entry is a task (its branch), "trunk.layers.<i>" or "trunk.embeddings"
    from toolchain.export import EMBEDDINGS, TRUNK_LAYER

    marks = [re.compile(rf"(?<![\w.])(?:model\.)?{re.escape(k)}[':./]" if k.startswith((TRUNK_LAYER, EMBEDDINGS))
                        else rf"branches\.{re.escape(k)}[':./]") for k in keep_fp32]
    return [n.name for n in model.graph.node
            if any(m.search(p.value) for p in n.metadata_props for m in marks)
            or any(m.search(i + ".") for i in n.input for m in marks)]


def _quantize(src, dst, precision, graph, *, calibration=(), keep_fp32=(), symmetric: bool = False, keep_int8=(),
              group: int = 0):
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    model = onnx.load(str(src))
    exclude = _excluded_nodes(model, keep_fp32)
    if precision == "int4":
        return _int4(model, dst, exclude, _excluded_nodes(model, keep_int8), group)
    if precision == "int8":
        _per_token_matmuls(model.graph, set(exclude), symmetric)
        if symmetric and not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))  # MatMulIntegerToFloat
        quantize_dynamic(model, str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"],
                         nodes_to_exclude=exclude)  # the word embeddings
        return

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{n: t.numpy() for n, t in zip(graph.inputs, b)} for b in calibration])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                    op_types_to_quantize=["MatMul", "Gemm", "Gather"])


def _int4(model, dst, fp32_nodes, int8_nodes, group):
    """int4: ONNX Runtime's MatMulNBits (4-bit symmetric weights in blocks of `group` along the input axis,
    accuracy_level 4: activations quantized to int8 per block at run time where the CPU has int8 kernels)
    and GatherBlockQuantized for the embedding tables; the parts in int8_nodes as the int8 path
    quantizes them (per-token MatMulInteger, U8U8; int8 rows for a Gather); fp32_nodes untouched."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    int8 = set(int8_nodes) - set(fp32_nodes)
    _per_token_matmuls(model.graph, {n.name for n in model.graph.node if n.name not in int8})
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=group, is_symmetric=True, accuracy_level=4,
                                     nodes_to_exclude=[*fp32_nodes, *int8], op_types_to_quantize=("MatMul", "Gather"))
    quantizer.process()
    model = quantizer.model.model
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    gathers = [n.name for n in model.graph.node if n.op_type == "Gather" and n.name in int8]
    if gathers:  # the word embeddings kept at int8 rows
        quantize_dynamic(model, str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"],
                         nodes_to_exclude=[n.name for n in model.graph.node if n.name not in gathers])
    else:
        onnx.save(model, str(dst))


def weight_matmuls(graph):
    """The MatMul nodes by a constant 2-D fp32 weight (the Linear layers), and those weights by name."""
    from onnx import TensorProto

    weights = {i.name: i for i in graph.initializer if len(i.dims) == 2 and i.data_type == TensorProto.FLOAT}
    return [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights], weights


# Weights are stored as uint8 with zero point 128 (int8 values + 128), so ONNX Runtime multiplies uint8 by
# uint8 (U8U8). Its uint8 x int8 kernel on x86 CPUs without VNNI (AVX2: vpmaddubsw) sums two products into
# int16 and saturates past 32767 (255 * 127 * 2 = 64770): on such a CPU a token's outputs were off by up
# to 4.3 % of their largest value, against 0.9-1.2 % without saturation (tests/test_export.py). ONNX
# Runtime's quantization docs give U8U8 for non-VNNI CPUs; the integer products and the bytes are the same.
W_ZERO_POINT = 128


def _per_token_matmuls(graph, exclude, symmetric: bool = False):
    """Rewrite every MatMul by a constant fp32 weight W [K, N] (the Linear layers), in place.

    W -> int8 Wq with one scale s_w per output column, stored as uint8 Wq + 128 (see W_ZERO_POINT). The activation x, per token (last axis) at run
    time, shared by the MatMuls that read the same x:
    - asymmetric (default): x ~ s_x * q + low with q uint8, low = min x, s_x = (max x - low) / 255.
      Then x @ W ~ s_x * s_w * (q @ Wq) + low * colsum(s_w * Wq), with q @ Wq as MatMulInteger (int32).
    - symmetric: x ~ s_x * (q - 128), s_x = max |x| / 127, q = QuantizeLinear(x / s_x) (uint8, zero
      point 128). Then x @ W ~ s_x * MatMulIntegerToFloat(q, Wq, b_scale s_w, a_zero_point 128):
      two nodes per MatMul instead of six, and no offset term, at one bit less for one-sided x."""
    from onnx import numpy_helper

    _, weights = weight_matmuls(graph)
    rewrite = _PerToken(symmetric)
    for n in graph.node:
        w = weights.get(n.input[1]) if n.op_type == "MatMul" else None
        if w is None or n.name in exclude:
            rewrite.nodes.append(n)
        else:
            rewrite.matmul(n, w.name, numpy_helper.to_array(w))
    needed = {i for m in rewrite.nodes for i in m.input}  # fp32 weights and constants only where used
    inits = list(graph.initializer) + [numpy_helper.from_array(v, k) for k, v in rewrite.consts.items()]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(rewrite.nodes)
    graph.initializer.extend(i for i in inits if i.name in needed)


class _PerToken:
    """The nodes and constants of _per_token_matmuls' rewrite, one MatMul at a time."""

    def __init__(self, symmetric: bool):
        import numpy as np

        self.symmetric, self.nodes, self.quantized = symmetric, [], {}  # quantized: x -> its q and scale (and low)
        self.consts = {"ctbq_axis": np.array([-1], np.int64), "ctbq_eps": np.array(1e-8, np.float32),
                       "ctbq_wzp": np.array(W_ZERO_POINT, np.uint8)}
        self.consts.update({"ctbq_127": np.array(127.0, np.float32), "ctbq_one": np.array(1.0, np.float32),
                            "ctbq_zp": np.array(128, np.uint8)} if symmetric else
                           {"ctbq_hi": np.array(255.0, np.float32), "ctbq_lo": np.array(0.0, np.float32)})

    def node(self, op, inputs, output, **attrs):
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def matmul(self, n, name, W):
        """Replace MatMul `n` (x @ W, W the initializer `name`) by its int8 form."""
        import numpy as np

        w_scale = np.maximum(np.abs(W).max(0), 1e-12) / 127.0
        w_q = np.clip(np.round(W / w_scale), -127, 127)
        self.consts[f"{name}/q"] = _as_u8(w_q)
        self.consts[f"{name}/scale"] = w_scale.astype(np.float32)
        x, y, node = n.input[0], n.output[0], self.node
        if self.symmetric:
            q, scale = self._symmetric(x)
            acc = node("MatMulIntegerToFloat", [q, f"{name}/q", "ctbq_one", f"{name}/scale", "ctbq_zp", "ctbq_wzp"],
                       f"{y}/f32", name=n.name, domain="com.microsoft")
            node("Mul", [acc, scale], y)
            return
        from onnx import TensorProto

        q, scale, low = self._asymmetric(x)
        self.consts[f"{name}/colsum"] = (w_q.astype(np.float32) * w_scale).sum(0).astype(np.float32)
        acc = node("MatMulInteger", [q, f"{name}/q", "", "ctbq_wzp"], f"{y}/i32", name=n.name)
        acc = node("Mul", [node("Cast", [acc], f"{y}/f32", to=TensorProto.FLOAT), scale], f"{y}/x_scaled")
        acc = node("Mul", [acc, f"{name}/scale"], f"{y}/scaled")
        node("Add", [acc, node("Mul", [low, f"{name}/colsum"], f"{y}/offset")], y)

    def _symmetric(self, x):
        if x not in self.quantized:
            node = self.node
            amax = node("ReduceMax", [node("Abs", [x], f"{x}/abs"), "ctbq_axis"], f"{x}/amax", keepdims=1)
            scale = node("Div", [node("Max", [amax, "ctbq_eps"], f"{x}/amax1"), "ctbq_127"], f"{x}/scale")
            q = node("QuantizeLinear", [node("Div", [x, scale], f"{x}/scaled"), "ctbq_one", "ctbq_zp"], f"{x}/q")
            self.quantized[x] = (q, scale)
        return self.quantized[x]

    def _asymmetric(self, x):  # x ~ scale * q + low, q in 0..255, per token
        if x not in self.quantized:
            from onnx import TensorProto

            node = self.node
            low = node("ReduceMin", [x, "ctbq_axis"], f"{x}/min", keepdims=1)
            span = node("Sub", [node("ReduceMax", [x, "ctbq_axis"], f"{x}/max", keepdims=1), low], f"{x}/span")
            scale = node("Div", [node("Max", [span, "ctbq_eps"], f"{x}/span1"), "ctbq_hi"], f"{x}/scale")
            q = node("Round", [node("Div", [node("Sub", [x, low], f"{x}/shifted"), scale], f"{x}/scaled")], f"{x}/round")
            q = node("Cast", [node("Clip", [q, "ctbq_lo", "ctbq_hi"], f"{x}/clip")], f"{x}/q", to=TensorProto.UINT8)
            self.quantized[x] = (q, scale, low)
        return self.quantized[x]


def _as_u8(w_q):
    """int8 weight values (-127..127) as stored: uint8 with zero point W_ZERO_POINT."""
    import numpy as np

    return (w_q.astype(np.int16) + W_ZERO_POINT).astype(np.uint8)


def _to_ort(onnx_path, ort_path):
    """The ORT format for ONNX Runtime Mobile: the session saves the model it optimised."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # portable across devices
    so.optimized_model_filepath = str(ort_path)
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
