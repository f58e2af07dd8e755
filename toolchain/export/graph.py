"""The graphs that leave PyTorch: plain positional tensors in, a tuple of named tensors out.

fused: input_ids, attention_mask, token_type_ids -> one output per task (the trunk runs once).
split: a trunk program (-> hidden state at every attach depth) plus one program per branch
       (hidden state, attention_mask -> output), so one task can be updated by replacing one file.
Output names: the task name (fused, branch programs) and `hidden_<depth>` (trunk program).
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from toolchain.batch import INPUTS


class Fused(nn.Module):
    def __init__(self, model, tasks):
        super().__init__()
        self.model, self.tasks = model, list(tasks)

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(out[t] for t in self.tasks)


class TrunkOnly(nn.Module):
    def __init__(self, trunk, depths):
        super().__init__()
        self.trunk, self.depths = trunk, sorted(set(depths))

    def forward(self, input_ids, attention_mask, token_type_ids):
        states = self.trunk(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            depths=self.depths)
        return tuple(states) if len(self.depths) > 1 else (states,)


class BranchOnly(nn.Module):
    def __init__(self, branch):
        super().__init__()
        self.branch = branch

    def forward(self, hidden, attention_mask):
        return (self.branch(hidden, attention_mask),)


@dataclass
class Graph:
    name: str  # file stem: "model", "trunk" or "branch_<task>"
    module: nn.Module
    inputs: tuple
    outputs: tuple
    example: tuple  # example tensors, in `inputs` order

    def dynamic_shapes(self, max_seq_len: int, batch: bool = True) -> dict:
        seq = torch.export.Dim("seq", min=1, max=max_seq_len)
        dims = {1: seq}
        if batch:
            dims[0] = torch.export.Dim("batch", min=1, max=64)
        return {name: dict(dims) for name in self.inputs}


def example_inputs(tok, texts, max_seq_len):
    from toolchain.infer import encode

    _, batch = encode(tok, texts, max_len=max_seq_len)
    return tuple(getattr(batch, name) for name in INPUTS)  # the exported graphs' positional order


def graphs(model, metas: dict, layout: str, example) -> list:
    """The graphs to export for a layout, with example inputs (real text) for tracing."""
    tasks = list(metas)
    model = model.eval()
    if layout == "fused":
        return [Graph("model", Fused(model, tasks).eval(), INPUTS, tuple(tasks), example)]
    depths = sorted({m.attach for m in metas.values()})
    trunk = TrunkOnly(model.trunk, depths).eval()
    with torch.no_grad():
        hidden = dict(zip(depths, trunk(*example)))
    mask = dict(zip(INPUTS, example))["attention_mask"]
    out = [Graph("trunk", trunk, INPUTS, tuple(f"hidden_{d}" for d in depths), example)]
    for t in tasks:
        b = model.branches[t]
        out.append(Graph(f"branch_{t}", BranchOnly(b).eval(), ("hidden", "attention_mask"), (t,),
                         (hidden[b.attach], mask)))
    return out


def for_xnnpack(module: nn.Module, int8_embeddings: bool = False, int4_embeddings: int = 0) -> nn.Module:
    """A copy of `module` (the original is untouched) whose attention is written as explicit
    softmax(q k^T + mask) v. The fused kernel's decomposition adds mask handling (eq, any, logical_not,
    where, full_like) that XNNPACK does not take, so every layer left the delegate for it; two MiniLM
    layers in int8 ran 1.25x faster at seq 16 and 1.57x at seq 64 without it
    (benchmarks/xnnpack_layer_variants.py --time). Same result to float rounding. `int8_embeddings`:
    the word embeddings become Int8Embedding too (int8 programs); `int4_embeddings`: Int4Embedding in groups of
    that many values (int4 programs)."""
    import copy

    from toolchain.model import Embeddings, Layer

    module = copy.deepcopy(module)
    for m in list(module.modules()):
        if isinstance(m, Layer):
            m.fused_attention = False
        if int8_embeddings and isinstance(m, Embeddings):
            m.word = Int8Embedding(m.word.weight.detach())
        if int4_embeddings and isinstance(m, Embeddings):
            m.word = Int4Embedding(m.word.weight.detach(), int4_embeddings)
    return module


@torch.no_grad()
def calibration_for(graph: Graph, model, token_batches) -> list:
    """Calibration batches in the graph's own inputs: token batches, or the trunk's hidden states."""
    if graph.inputs == INPUTS:
        return list(token_batches)
    attach = model.branches[graph.outputs[0]].attach
    out = []
    for batch in token_batches:  # each in INPUTS order, as the programs take them
        feeds = dict(zip(INPUTS, batch))
        out.append((model.trunk(**feeds, depths=[attach]), feeds["attention_mask"]))
    return out


class Int8Embedding(nn.Module):
    """A word-embedding table stored as int8 rows with one fp32 scale per row (symmetric).

    Only the looked-up rows are dequantized. The vocabulary table is most of a small BERT's bytes
    (MiniLM: 30522 x 384), so this is what brings an int8 bundle to about a quarter of fp32."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        scale = weight.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
        self.register_buffer("q", torch.round(weight / scale).to(torch.int8))
        self.register_buffer("scale", scale.float())

    def forward(self, ids):
        return nn.functional.embedding(ids, self.q).to(torch.float32) * nn.functional.embedding(ids, self.scale)


class Int4Embedding(nn.Module):
    """A word-embedding table in 4 bits: each row in groups of `group` values with one fp16 scale per group
    (symmetric, -8..7), two values a byte (column j in the low half-byte, column j + width/2 in the high
    one). Only the looked-up rows are unpacked, with float arithmetic and no reshape (XNNPACK reshapes
    only one dynamic dimension, and batch and sequence both are): the groups' scales widen to one per
    column by a matmul with a constant 0/1 matrix. Half the bytes of Int8Embedding."""

    def __init__(self, weight: torch.Tensor, group: int):
        super().__init__()
        rows, dim = weight.shape
        group = math.gcd(group, dim // 2)  # a table narrower than two groups (a tiny model): a divisor of half its width
        if dim % 2 or group % 2:
            raise ValueError(f"embedding width {dim} does not split into two halves of even int4 groups")
        w = weight.float().reshape(rows, dim // group, group)
        scale = (w.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 7.0).half()
        q = (torch.round(w / scale.float()).clamp(-8, 7) + 8).to(torch.uint8).reshape(rows, dim)
        self.register_buffer("packed", q[:, : dim // 2] | (q[:, dim // 2:] << 4))
        self.register_buffer("scale", scale.reshape(rows, dim // group))
        self.register_buffer("widen", torch.eye(dim // group).repeat_interleave(group, 1))  # [groups, dim]

    def forward(self, ids):
        b = nn.functional.embedding(ids, self.packed).to(torch.float32)
        high = torch.floor(b / 16.0)
        q = torch.cat((b - 16.0 * high, high), -1) - 8.0
        return q * torch.matmul(nn.functional.embedding(ids, self.scale).to(torch.float32), self.widen)
