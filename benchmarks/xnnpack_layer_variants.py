"""Why the ExecuTorch program is cut into many XNNPACK pieces: two BERT layers written three ways,
lowered with dynamic and with static sequence length, and ExecuTorch's delegation summary for each.

    python benchmarks/xnnpack_layer_variants.py
    python benchmarks/xnnpack_layer_variants.py --time --lengths 16,64 --repeats 30

Variants: "now" (toolchain.model.Layer: fused SDPA, nn.LayerNorm); "explicit" (softmax(q k^T + mask) v
instead of SDPA, whose decomposition adds eq/any/where/logical_not for fully masked rows); and
"explicit+ln4d" (also LayerNorm from 4-D means, the only mean XNNPACK takes). Prints each variant's
largest difference from "now", its delegated subgraphs, and the operators left outside XNNPACK.

--time: MiniLM-sized layers (hidden 384, 12 heads, FFN 1536), fp32 and int8 (the export's XNNPACK
dynamic int8 on every Linear), timed in one round-robin run at each length: today's program (one
program, dynamic length) against the same layers written as "explicit+ln4d" at dynamic length, and
against static programs, one per length, written as "now" and as "explicit+ln4d". Prints median ms
and the ratio of today's program to each other one.
"""

import argparse
import tempfile
from pathlib import Path

import torch

from toolchain.model import EncoderConfig, Layer, additive_mask

CFG = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                    max_position=64, type_vocab_size=2)
MINILM = EncoderConfig(vocab_size=100, hidden_size=384, num_layers=2, num_heads=12, intermediate_size=1536,
                       max_position=512, type_vocab_size=2)


class LayerNorm4d(torch.nn.LayerNorm):
    """LayerNorm over the last axis from ops XNNPACK takes: a 4-D mean over the two innermost dims."""

    def forward(self, x):
        x4 = x.unsqueeze(-1)
        d = x4 - x4.mean(dim=(2, 3), keepdim=True)
        var = (d * d).mean(dim=(2, 3), keepdim=True)
        return (d * torch.rsqrt(var + self.eps)).squeeze(-1) * self.weight + self.bias


class TwoLayers(torch.nn.Module):
    """toolchain.model.Layer as it is ("now"), with attention written out as the android export writes
    it ("explicit": Layer.fused_attention off), and also with LayerNorm4d ("explicit+ln4d")."""

    def __init__(self, variant: str, cfg: EncoderConfig = CFG):
        super().__init__()
        self.layers = torch.nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        for layer in self.layers:
            layer.fused_attention = variant == "now"
            if variant == "explicit+ln4d":
                layer.attn_norm = LayerNorm4d(cfg.hidden_size, eps=cfg.layer_norm_eps)
                layer.ffn_norm = LayerNorm4d(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x, attention_mask):
        mask = additive_mask(attention_mask, x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return x


def lower(module, example, dynamic_shapes, precision) -> bytes:
    """As `export --target android` lowers: XNNPACK, with the export's dynamic int8 on every Linear."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if precision == "int8":
        quantizer = XNNPACKQuantizer()
        quantizer.set_module_type(torch.nn.Linear, get_symmetric_quantization_config(is_per_channel=True,
                                                                                     is_dynamic=True))
        m = prepare_pt2e(torch.export.export(module, example, dynamic_shapes=dynamic_shapes).module(), quantizer)
        m(*example)
        module = convert_pt2e(m)
    ep = torch.export.export(module, example, dynamic_shapes=dynamic_shapes)
    return to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def time_programs(lengths, repeats, precisions):
    from executorch.runtime import Runtime

    from toolchain.bench.timing import percentiles, time_round_robin

    torch.manual_seed(0)
    ref = TwoLayers("now", MINILM).eval()
    seq = torch.export.Dim("seq", min=2, max=max(lengths))
    longest = (torch.randn(1, max(lengths), MINILM.hidden_size), torch.ones(1, max(lengths), dtype=torch.long))
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        def load(buffer, name):
            path = Path(tmp) / f"{name}.pte"
            path.write_bytes(buffer)
            return Runtime.get().load_program(str(path)).load_method("forward")

        for precision in precisions:
            calls, n = {}, MINILM.num_layers
            dynamic = {"x": {1: seq}, "attention_mask": {1: seq}}
            today = load(lower(ref, longest, dynamic, precision), "dynamic")
            rewritten = {}
            for variant in ("explicit", "explicit+ln4d"):
                m = TwoLayers(variant, MINILM).eval()
                m.load_state_dict(ref.state_dict())
                rewritten[variant] = load(lower(m, longest, dynamic, precision), f"dynamic-{variant}")
            for length in lengths:
                x, att = longest[0][:, :length], longest[1][:, :length]
                calls[(length, "today: one program, dynamic length")] = lambda m=today, a=[x, att]: m.execute(a)
                for variant, method in rewritten.items():
                    calls[(length, f"dynamic length, {variant}")] = lambda m=method, a=[x, att]: m.execute(a)
                for variant in ("now", "explicit+ln4d"):
                    m = TwoLayers(variant, MINILM).eval()
                    m.load_state_dict(ref.state_dict())
                    method = load(lower(m, (x, att), None, precision), f"{variant}-{length}")
                    calls[(length, f"static length {length}, {variant}")] = lambda m=method, a=[x, att]: m.execute(a)
            times = time_round_robin(calls, repeats)
            print(f"\n{precision}, {n} MiniLM-sized layers, batch 1, {repeats} rounds (median ms; today ÷ this):")
            for (length, name), ms in times.items():
                med = percentiles(ms)["p50_ms"]
                base = percentiles(times[(length, "today: one program, dynamic length")])["p50_ms"]
                print(f"  seq {length:3d}  {name:40s} {med:8.2f}   {base / med:5.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time", action="store_true", help="time MiniLM-sized programs instead of listing operators")
    parser.add_argument("--lengths", default="16,64")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--precisions", default="fp32,int8")
    args = parser.parse_args()
    if args.time:
        return time_programs(sorted({int(x) for x in args.lengths.split(",")}), args.repeats, args.precisions.split(","))
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    torch.manual_seed(0)
    x, att = torch.randn(1, 8, 32), torch.ones(1, 8, dtype=torch.long)
    seq = torch.export.Dim("seq", min=2, max=64)
    ref = TwoLayers("now").eval()
    for variant, dynamic in (("now", True), ("now", False), ("explicit", False), ("explicit+ln4d", False)):
        m = TwoLayers(variant).eval()
        m.load_state_dict(ref.state_dict())
        with torch.no_grad():
            diff = (m(x, att) - ref(x, att)).abs().max().item()
        shapes = {"x": {1: seq}, "attention_mask": {1: seq}} if dynamic else None
        ep = torch.export.export(m, (x, att), dynamic_shapes=shapes)
        lowered = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        info = get_delegation_info(lowered.exported_program().graph_module)
        outside = {k: v.non_delegated for k, v in info.delegation_by_operator.items()
                   if v.non_delegated and k != "getitem"}
        print(f"{variant}, {'dynamic' if dynamic else 'static'} length: max diff {diff:.1e}, "
              f"{info.num_delegated_subgraphs} XNNPACK subgraphs, {info.num_delegated_nodes} nodes delegated; "
              f"outside: {outside}")


if __name__ == "__main__":
    main()
