"""Android: an ExecuTorch program (.pte) lowered to the XNNPACK delegate.

Precisions: fp32 | int8 (PT2E with the XNNPACK quantizer on Linear layers: int8 per-channel
weights, int8 activations quantized dynamically at run time; word embeddings stored as int8 rows
with per-row scales, unless the quantization guard keeps them in fp32) | int4 (torchao's 8da4w, which
XNNPACK runs: int8 activations quantized per token at run time times int4 weights in groups of 32 or 64,
symmetric; the word embeddings' rows in 4 bits in groups too; the parts the guard keeps at int8 are
int8 per channel through the same torchao scheme). Attention is written out
(graph.for_xnnpack) so that XNNPACK takes all of it. The bundle's manifest is stored in the program
as the constant method `manifest` (a JSON string), so the .pte describes itself.
"""

import json
from pathlib import Path

from runtime_py.targets import get as _target

TARGET = _target("android")  # precisions, suffix and metadata key: runtime_py/targets.py
SUFFIX = TARGET.suffix


def export(graph, out_dir: Path, precision: str, max_seq_len: int, metadata: dict, *, calibration=(),
           keep_fp32=(), keep_int8=(), group: int = 0) -> list:
    """`keep_fp32` / `keep_int8` (int4 only): the parts the guard keeps at that precision (keep names:
    tasks, "trunk.layers.<i>", "trunk.embeddings"); `group`: int4 weights per quantization group."""
    program = lower(graph, precision, max_seq_len, metadata, keep_fp32, keep_int8=keep_int8, group=group).to_executorch()
    name = f"{graph.name}{SUFFIX}"
    (Path(out_dir) / name).write_bytes(program.buffer)
    return [name]


def lower(graph, precision: str, max_seq_len: int, metadata: dict | None = None, keep_fp32=(), *, keep_int8=(),
          group: int = 0):
    """The graph lowered to XNNPACK (an ExecuTorch EdgeProgramManager), one program for every length
    up to max_seq_len."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module = quantized(graph, precision, max_seq_len, keep_fp32, keep_int8=keep_int8, group=group)
    ep = torch.export.export(module, graph.example, dynamic_shapes=graph.dynamic_shapes(max_seq_len))
    return to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                       constant_methods={TARGET.metadata_key: json.dumps(metadata or {}, sort_keys=True)})


def quantized(graph, precision: str, max_seq_len: int, keep_fp32=(), *, keep_int8=(), group: int = 0,
              scales: str = "affine"):
    """The module `lower` exports: a copy of the graph's with attention written out and its weights
    quantized as the program holds them. It runs in eager PyTorch with the program's arithmetic (int4:
    torchao computes the same int8 activations per token times int4 weights), which is what the guard's
    search judges before lowering (export.export_bundle). `scales`: torchao's choice of the int4 groups' scales,
    "affine" (from each group's largest weight: what export ships) or "hqq_scale_only" (benchmarks/int4_variants.py)."""
    from toolchain.export import EMBEDDINGS
    from toolchain.export.graph import for_xnnpack

    embeddings = "fp32" if precision == "fp32" or EMBEDDINGS in keep_fp32 else \
        "int8" if precision == "int8" or EMBEDDINGS in keep_int8 else "int4"
    module = for_xnnpack(graph.module, int8_embeddings=embeddings == "int8",
                         int4_embeddings=group if embeddings == "int4" else 0)
    if precision == "int8":
        return _quantize(graph, module, graph.dynamic_shapes(max_seq_len), keep_fp32)
    if precision == "int4":
        _quantize_int4(graph.name, module, keep_fp32, keep_int8, group, scales)
    return module


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


def _quantize_int4(graph_name, module, keep_fp32, keep_int8, group, scales="affine") -> None:
    """torchao's 8da4w on every Linear in place; int8 weights per output channel on the parts in
    keep_int8; none on those in keep_fp32."""
    import math

    import torch
    from torchao.quantization import quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.quantize_.workflows.intx.intx_choose_qparams_algorithm import IntxChooseQParamsAlgorithm

    def at(level, g=None):  # a layer whose input is narrower than the group (a tiny model) takes a divisor of it
        return lambda m, fqn: (isinstance(m, torch.nn.Linear) and (g is None or math.gcd(group, m.in_features) == g)
                               and linear_precision(fqn, graph_name, keep_fp32, keep_int8) == level)
    for g in sorted({math.gcd(group, m.in_features) for m in module.modules() if isinstance(m, torch.nn.Linear)}):
        quantize_(module, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(g),
                                                                intx_choose_qparams_algorithm=IntxChooseQParamsAlgorithm(scales)),
                  filter_fn=at("int4", g))
    quantize_(module, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0)),
              filter_fn=at("int8"))


def linear_precision(fqn: str, graph_name: str, keep_fp32, keep_int8) -> str:
    """int4 programs: the precision of the Linear at module path `fqn`: its part (a task's branch or a
    trunk layer) kept in fp32 or int8 by the guard, else int4."""
    from toolchain.export import TRUNK_LAYER

    parts = fqn.removeprefix("model.").split(".")
    if graph_name.startswith("branch_"):
        part = graph_name.removeprefix("branch_")
    elif parts[0] == "branches":
        part = parts[1]
    elif parts[:2] == ["trunk", "layers"]:
        part = f"{TRUNK_LAYER}{parts[2]}"
    else:
        part = None
    return "fp32" if part in keep_fp32 else "int8" if part in keep_int8 else "int4"


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
