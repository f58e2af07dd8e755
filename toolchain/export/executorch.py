"""Android: an ExecuTorch program (.pte) lowered to the XNNPACK delegate.

Precisions: fp32 | int8 (PT2E with the XNNPACK quantizer on Linear layers: int8 per-channel
weights, int8 activations quantized dynamically at run time; word embeddings stored as int8 rows
with per-row scales, unless the quantization guard keeps them in fp32). Attention is written out
(graph.for_xnnpack) so that XNNPACK takes all of it. The bundle's manifest is stored in the program
as the constant method `manifest` (a JSON string), so the .pte describes itself.
"""

import json
from pathlib import Path

from runtime_py.targets import get as _target

TARGET = _target("android")  # precisions, suffix and metadata key: runtime_py/targets.py
SUFFIX = TARGET.suffix


def export(graph, out_dir: Path, precision: str, max_seq_len: int, metadata: dict, calibration=(),
           keep_fp32=()) -> list:
    program = lower(graph, precision, max_seq_len, metadata, keep_fp32).to_executorch()
    name = f"{graph.name}{SUFFIX}"
    (Path(out_dir) / name).write_bytes(program.buffer)
    return [name]


def lower(graph, precision: str, max_seq_len: int, metadata: dict | None = None, keep_fp32=()):
    """The graph lowered to XNNPACK (an ExecuTorch EdgeProgramManager), one program for every length
    up to max_seq_len."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from toolchain.export import EMBEDDINGS
    from toolchain.export.graph import for_xnnpack

    shapes = graph.dynamic_shapes(max_seq_len)
    module = for_xnnpack(graph.module, int8_embeddings=precision == "int8" and EMBEDDINGS not in keep_fp32)
    if precision == "int8":
        module = _quantize(graph, module, shapes, keep_fp32)
    ep = torch.export.export(module, graph.example, dynamic_shapes=shapes)
    return to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                       constant_methods={TARGET.metadata_key: json.dumps(metadata or {}, sort_keys=True)})


def _quantize(graph, module, shapes, keep_fp32):
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    cfg = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    if not keep_fp32:
        quantizer.set_module_type(torch.nn.Linear, cfg)
    else:  # the guard's fallback: quantize all but the branches (tasks) and trunk layers kept in fp32
        for name in quantized_modules([n for n, _ in module.named_modules()], graph.name, keep_fp32):
            quantizer.set_module_name(name, cfg)
    m = torch.export.export(module, graph.example, dynamic_shapes=shapes).module()
    m = prepare_pt2e(m, quantizer)
    m(*graph.example)  # dynamic activations: no ranges to calibrate, one pass records the graph
    return convert_pt2e(m)


def quantized_modules(names: list, graph_name: str, keep_fp32) -> list:
    """The modules to quantize when `keep_fp32` names tasks (their branch) and "trunk.layers.<i>":
    the whole trunk when no trunk layer is kept, else each trunk layer but those, and every branch
    but the kept tasks'."""
    from toolchain.export import TRUNK_LAYER

    layers = {k for k in keep_fp32 if k.startswith(TRUNK_LAYER)}
    root = "model.trunk" if graph_name == "model" else "trunk"  # the fused graph, or a split trunk program
    out = []
    for name in names:
        parts = name.split(".")
        whole_trunk = name == root and not layers
        trunk_layer = (bool(layers) and name.startswith(f"{root}.layers.") and parts[-1].isdigit()
                       and len(parts) == len(root.split(".")) + 2 and f"{TRUNK_LAYER}{parts[-1]}" not in layers)
        branch = parts[:2] == ["model", "branches"] and len(parts) == 3 and parts[2] not in keep_fp32
        if whole_trunk or trunk_layer or branch:
            out.append(name)
    return out
