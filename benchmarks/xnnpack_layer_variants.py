"""Why the ExecuTorch program is cut into many XNNPACK pieces: two BERT layers written three ways,
lowered with dynamic and with static sequence length, and ExecuTorch's delegation summary for each.

    python benchmarks/xnnpack_layer_variants.py

Variants: "now" (toolchain.model.Layer: fused SDPA, nn.LayerNorm); "explicit" (softmax(q k^T + mask) v
instead of SDPA, whose decomposition adds eq/any/where/logical_not for fully masked rows); and
"explicit+ln4d" (also LayerNorm from 4-D means, the only mean XNNPACK takes). Prints each variant's
largest difference from "now", its delegated subgraphs, and the operators left outside XNNPACK.
"""

import torch

from toolchain.model import EncoderConfig, Layer, additive_mask

CFG = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                    max_position=64, type_vocab_size=2)


def layer_norm_4d(norm, x):
    """LayerNorm over the last axis from ops XNNPACK takes: a 4-D mean over the two innermost dims."""
    x4 = x.unsqueeze(-1)
    d = x4 - x4.mean(dim=(2, 3), keepdim=True)
    var = (d * d).mean(dim=(2, 3), keepdim=True)
    return (d * torch.rsqrt(var + norm.eps)).squeeze(-1) * norm.weight + norm.bias


def explicit_layer(layer, x, mask, norm):
    b, s, h = x.shape
    n = layer.num_heads
    q, k, v = (t.view(b, s, n, h // n).transpose(1, 2) for t in (layer.query(x), layer.key(x), layer.value(x)))
    a = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5) + mask, dim=-1) @ v
    x = norm(layer.attn_norm, x + layer.attn_out(a.transpose(1, 2).reshape(b, s, h)))
    return norm(layer.ffn_norm, x + layer.ffn_out(layer.act(layer.ffn_in(x))))


class TwoLayers(torch.nn.Module):
    def __init__(self, variant: str):
        super().__init__()
        self.layers = torch.nn.ModuleList(Layer(CFG) for _ in range(2))
        self.variant = variant

    def forward(self, x, attention_mask):
        mask = additive_mask(attention_mask, x.dtype)
        for layer in self.layers:
            if self.variant == "now":
                x = layer(x, mask)
            else:
                norm = layer_norm_4d if self.variant == "explicit+ln4d" else (lambda m, y: m(y))
                x = explicit_layer(layer, x, mask, norm)
        return x


def main():
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
