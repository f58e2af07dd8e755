"""ONNX int8 activation schemes side by side: latency and agreement with fp32, in one run.

    python benchmarks/onnx_int8_variants.py models/assistant.toml --store DIR [--lengths 16,64] [--threads 1]
        [--variants asymmetric,symmetric,per-tensor,smooth,nbits8,mixed]

Exports the store's fused fp32 ONNX graph once, quantizes it with each scheme, then prints each
scheme's prediction agreement with fp32 on the recipe's dev sets and, at batch 1 and each length, the
median latency of fp32 and of each scheme (timed in alternating rounds). The schemes:
- asymmetric, symmetric: toolchain.export.onnx's per-token schemes (the default, and
  `[export] onnx_int8 = "symmetric"`);
- per-tensor: onnxruntime's quantize_dynamic, one activation scale per tensor (ORT fuses it into
  DynamicQuantizeMatMul: the optimum peer's scheme);
- smooth: SmoothQuant (Xiao et al.) before per-tensor: each MatMul input divided per channel by
  s = max|x|^a / max|W|^(1-a) (a = --alpha, max|x| from 256 training texts per task), W's rows
  multiplied by s;
- nbits8: onnxruntime's MatMulNBitsQuantizer, 8-bit weights in blocks of 32 along K, activations
  quantized per row and block at run time (accuracy_level 4);
- mixed: the asymmetric per-token scheme on the MatMuls that read a LayerNorm or the GELU output,
  per-tensor on the rest (the attention output projection).
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = ("asymmetric", "symmetric", "per-tensor", "smooth", "nbits8", "mixed")


def per_tensor(model, dst):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(model, str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gather"])


def smooth(model, absmax: dict, alpha: float):
    """SmoothQuant, in place: x / s before the MatMuls that read x (one Mul per x), W * s."""
    from onnx import helper, numpy_helper

    from toolchain.export.onnx import weight_matmuls

    matmuls, protos = weight_matmuls(model.graph)
    weights = {k: numpy_helper.to_array(v) for k, v in protos.items()}
    readers = {}
    for n in matmuls:
        readers.setdefault(n.input[0], []).append(n)
    nodes, inits = list(model.graph.node), []
    for x, ns in readers.items():
        w_max = np.max([np.abs(weights[n.input[1]]).max(1) for n in ns], 0)
        s = np.clip(np.maximum(absmax[x], 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha), 1e-3, 1e3)
        inits.append(numpy_helper.from_array((1 / s).astype(np.float32), f"{x}/smooth"))
        for n in ns:
            inits.append(numpy_helper.from_array((weights[n.input[1]] * s[:, None]).astype(np.float32),
                                                 f"{n.input[1]}/smoothed"))
            n.input[:] = [f"{x}/smoothed", f"{n.input[1]}/smoothed"]
        nodes.insert(min(nodes.index(n) for n in ns), helper.make_node("Mul", [x, f"{x}/smooth"], [f"{x}/smoothed"]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    kept = [i for i in list(model.graph.initializer) + inits if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def input_absmax(model, batches) -> dict:
    """Per channel max |x| of every MatMul input over real (unpadded) tokens of the batches."""
    import onnx
    import onnxruntime as ort

    from toolchain.export.onnx import weight_matmuls

    xs = sorted({n.input[0] for n in weight_matmuls(model.graph)[0]})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None) for x in xs)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    out = {}
    for feeds, mask in batches:
        for x, r in zip(xs, session.run(xs, feeds)):
            m = np.abs(r[mask.astype(bool)]).max(0)
            out[x] = np.maximum(out[x], m) if x in out else m
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--lengths", default="16,64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--dev", type=int, default=500, help="dev examples per task for the agreement")
    ap.add_argument("--variants", default="asymmetric,symmetric", help=f"any of {','.join(VARIANTS)}")
    ap.add_argument("--alpha", type=float, default=0.8, help="SmoothQuant's migration strength")
    args = ap.parse_args()
    variants = args.variants.split(",")
    if bad := [v for v in variants if v not in VARIANTS]:
        ap.error(f"unknown variant {bad[0]!r}; choose from {', '.join(VARIANTS)}")

    import onnx
    import onnxruntime as ort

    from toolchain.batch import pad_batch
    from toolchain.config import load_recipe
    from toolchain.data import read_examples
    from toolchain.export import dev_sets
    from toolchain.export import onnx as onnx_target
    from toolchain.export.check import predictions
    from toolchain.export.graph import INPUTS, example_inputs, graphs
    from toolchain.store import load_merged

    recipe = load_recipe(args.recipe)
    model, tok, metas = load_merged(args.store)
    max_len = max(recipe.seq_len(t) for t in recipe.tasks)
    graph = graphs(model, metas, "fused", example_inputs(tok, ["play some jazz", "wake me up at seven"], max_len))[0]
    tmp = Path(tempfile.mkdtemp())
    paths = {"fp32": tmp / onnx_target.export(graph, tmp, "fp32", max_len, {})[0]}

    def feeds_of(b):
        return {"input_ids": b.input_ids.numpy(), "attention_mask": b.attention_mask.numpy(),
                "token_type_ids": b.token_type_ids.numpy()}

    for name in variants:
        dst = paths[name] = tmp / f"{name}.onnx"
        if name in ("asymmetric", "symmetric"):
            onnx_target._quantize(paths["fp32"], dst, "int8", graph, (), (), name == "symmetric")
        elif name == "per-tensor":
            per_tensor(onnx.load(str(paths["fp32"])), dst)
        elif name == "smooth":
            m = onnx.load(str(paths["fp32"]))
            texts = [ex.text or " ".join(ex.tokens) for t in recipe.tasks if t.name in metas
                     for ex in read_examples(recipe, t, "train")[:256]]
            batches = [example_inputs(tok, texts[i: i + 32], max_len) for i in range(0, len(texts), 32)]
            batches = [({k: v.numpy() for k, v in zip(INPUTS, b)}, b[INPUTS.index("attention_mask")].numpy())
                       for b in batches]
            smooth(m, input_absmax(m, batches), args.alpha)
            per_tensor(m, dst)
        elif name == "nbits8":
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            q = MatMulNBitsQuantizer(onnx.load(str(paths["fp32"])), bits=8, block_size=32, is_symmetric=True,
                                     accuracy_level=4, op_types_to_quantize=("MatMul",))
            q.process()
            q.model.save_model_to_file(str(dst))
        else:  # mixed
            m = onnx.load(str(paths["fp32"]))
            made_by = {o: n.op_type for n in m.graph.node for o in n.output}
            rest = {n.name for n in onnx_target.weight_matmuls(m.graph)[0]
                    if made_by.get(n.input[0]) not in ("LayerNormalization", "Mul")}
            onnx_target._per_token_matmuls(m.graph, rest)
            per_tensor(m, dst)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    names = [i.name for i in sessions["fp32"].get_inputs()]

    def run(name, b):
        feeds = feeds_of(b)
        return sessions[name].run(None, {k: feeds[k] for k in names})

    print(f"store {args.store}: {len(metas)} tasks; {args.threads} thread(s); median of {args.repeats} rounds; "
          f"{os.cpu_count()} cores")
    print("\n| task | examples | " + " | ".join(f"{k} agreement" for k in variants) + " |")
    print("|" + "---|" * (len(variants) + 2))
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
        for k in variants:
            got = predictions(task.type, preds[k])
            hits = [a == b for a, b in zip(ref, got)] if task.type != "tagging" else \
                [x == y for a, b in zip(ref, got) for x, y in zip(a, b)]
            cells.append(f"{np.mean(hits):.2%}")
        print(f"| {name} | {len(dev)} | " + " | ".join(cells) + " |", flush=True)

    print("\n| seq | " + " | ".join(f"{k} ms" for k in paths) + " | " + " | ".join(f"{k} ÷ fp32" for k in variants) + " |")
    print("|" + "---|" * (len(paths) + len(variants) + 1))
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
        print(f"| {n} | " + " | ".join(f"{med[k]:.2f}" for k in paths) + " | "
              + " | ".join(f"{med[k] / med['fp32']:.2f}" for k in variants) + " |", flush=True)
    print("\nbytes: " + ", ".join(f"{k} {p.stat().st_size / 1e6:.1f} MB" for k, p in paths.items()))


if __name__ == "__main__":
    main()
