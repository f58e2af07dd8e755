"""The CentraBert model, readable top to bottom: a frozen trunk and task branches on top of it.

    input ids -> Embeddings -> layer 1 ... layer D   (Trunk: frozen, shared by every task)
                                 |         |
                      attach depth a1      attach depth a2
                                 v         v
                     Branch 1: l1 layers   Branch 2: l2 layers      (task-specific, trainable)
                        + head                + head

A task model "(x, y)" in the paper's notation is a trunk cut at depth x with a y-layer branch on
top. The merged model runs the trunk once, up to the deepest attach point, and hands each branch
the hidden state at its own depth. The trunk and both models take input_ids, attention_mask and
token_type_ids by keyword only (`model(**batch._asdict())`): no caller depends on their order.

We write the BERT layer ourselves instead of calling transformers' modules: the attention mask is a
plain additive tensor built here, which keeps the graph simple to export and quantize (the mask
construction inside transformers breaks ExecuTorch's PT2E calibration), and the parameter names are
a short rename of Hugging Face BERT checkpoints (see `hf_key_to_ours`).
"""

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass
class EncoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position: int
    type_vocab_size: int
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    position_offset: int = 0  # RoBERTa-style models start positions at pad_token_id + 1

    @classmethod
    def from_hf(cls, c: dict) -> "EncoderConfig":
        roberta = c.get("model_type") in ("roberta", "xlm-roberta", "camembert")
        return cls(
            vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_layers=c["num_hidden_layers"],
            num_heads=c["num_attention_heads"], intermediate_size=c["intermediate_size"],
            max_position=c["max_position_embeddings"], type_vocab_size=c.get("type_vocab_size", 2),
            layer_norm_eps=c.get("layer_norm_eps", 1e-12), hidden_act=c.get("hidden_act", "gelu"),
            pad_token_id=c.get("pad_token_id") or 0,
            position_offset=(c.get("pad_token_id") or 0) + 1 if roberta else 0,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, seq) of 1/0 -> (batch, 1, 1, seq) of 0 / large negative, added to attention scores."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig, dropout: float = 0.0):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.position_offset = cfg.position_offset

    def forward(self, input_ids, token_type_ids):
        # arange(start, end) rather than arange + offset: quantization passes turn that scalar into a float
        start = self.position_offset
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)[None] + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


class Layer(nn.Module):
    """One post-LayerNorm BERT transformer layer. `fused_attention` False: attention written as
    softmax(q k^T + mask) v instead of the fused kernel (same result; see export.graph.for_xnnpack)."""

    fused_attention = True

    def __init__(self, cfg: EncoderConfig, dropout: float = 0.0):
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(h, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, h)
        self.ffn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x, mask, with_probs: bool = False):
        """The layer's output; with `with_probs`, also its attention distributions (batch, heads, seq,
        seq), computed explicitly (for distillation) instead of by the fused kernel."""
        b, s, h = x.shape
        heads = lambda t: t.view(b, s, self.num_heads, h // self.num_heads).transpose(1, 2)
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        p_drop = self.attn_dropout if self.training else 0.0
        if with_probs or not self.fused_attention:
            probs = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5) + mask, dim=-1)
            a = F.dropout(probs, p_drop, self.training) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop)
        a = a.transpose(1, 2).reshape(b, s, h)
        x = self.attn_norm(x + self.dropout(self.attn_out(a)))
        x = self.ffn_norm(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))
        return (x, probs) if with_probs else x


class Trunk(nn.Module):
    """Embeddings and the bottom `depth` layers of the backbone. Always frozen and in eval mode."""

    def __init__(self, cfg: EncoderConfig, depth: int):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(depth))

    @property
    def depth(self) -> int:
        return len(self.layers)

    def forward(self, *, input_ids, attention_mask, token_type_ids, depths=None):
        """Hidden states at each requested depth (0 = embeddings), running only as deep as needed."""
        depths = sorted(set(depths if depths is not None else [self.depth]))
        x = self.embeddings(input_ids, token_type_ids)
        mask = additive_mask(attention_mask, x.dtype)
        out = {0: x}
        for i, layer in enumerate(self.layers[: depths[-1]]):
            x = layer(x, mask)
            out[i + 1] = x
        return [out[d] for d in depths] if len(depths) > 1 else out[depths[0]]

    def train(self, mode: bool = True):
        return super().train(False)  # frozen layers never use dropout: their outputs are cacheable


class Head(nn.Module):
    """Sequence heads read the first token through a tanh pooler (as BERT does); tagging heads read
    every token."""

    def __init__(self, cfg: EncoderConfig, task_type: str, num_outputs: int, dropout: float = 0.0):
        super().__init__()
        self.task_type = task_type
        self.pooler = None if task_type == "tagging" else nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(cfg.hidden_size, num_outputs)
        nn.init.normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        if self.pooler is not None:
            x = torch.tanh(self.pooler(x[:, 0]))
        y = self.out(self.dropout(x))
        return y.squeeze(-1) if self.task_type == "regression" else y


class Branch(nn.Module):
    """A task's own layers plus its head, reading the trunk's hidden state at depth `attach`."""

    def __init__(self, cfg: EncoderConfig, attach: int, num_layers: int, task_type: str,
                 num_outputs: int, dropout: float = 0.0):
        super().__init__()
        self.attach = attach
        self.layers = nn.ModuleList(Layer(cfg, dropout) for _ in range(num_layers))
        self.head = Head(cfg, task_type, num_outputs, dropout)

    def forward(self, hidden, attention_mask, with_states: bool = False):
        """The head's output; with `with_states`, also every layer's output hidden state and attention
        distributions (two lists, one entry per layer), which distillation matches to the teacher's."""
        mask = additive_mask(attention_mask, hidden.dtype)
        states, probs = [], []
        for layer in self.layers:
            if with_states:
                hidden, p = layer(hidden, mask, with_probs=True)
                states.append(hidden)
                probs.append(p)
            else:
                hidden = layer(hidden, mask)
        out = self.head(hidden)
        return (out, states, probs) if with_states else out


class TaskModel(nn.Module):
    """One task: the trunk cut at the branch's attach depth, then the branch."""

    def __init__(self, trunk: Trunk, branch: Branch):
        super().__init__()
        if branch.attach > trunk.depth:
            raise ValueError(f"branch attaches at depth {branch.attach} but the trunk has {trunk.depth} layers")
        self.trunk, self.branch = trunk, branch

    def forward(self, *, input_ids, attention_mask, token_type_ids):
        with torch.no_grad():
            hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                depths=[self.branch.attach])
        return self.branch(hidden, attention_mask)


class MultiTaskModel(nn.Module):
    """The merged model: one trunk pass up to the deepest attach point, then every branch."""

    def __init__(self, trunk: Trunk, branches: dict):
        super().__init__()
        self.trunk = trunk
        self.branches = nn.ModuleDict(branches)
        for name, b in branches.items():
            if b.attach > trunk.depth:
                raise ValueError(f"branch {name} attaches at depth {b.attach}; the trunk has {trunk.depth}")

    def forward(self, *, input_ids, attention_mask, token_type_ids):
        depths = sorted({b.attach for b in self.branches.values()})
        states = self.trunk(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            depths=depths)
        states = dict(zip(depths, states if len(depths) > 1 else [states]))
        return {name: b(states[b.attach], attention_mask) for name, b in self.branches.items()}


# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoint names -> ours.

_HF_LAYER = {
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn_in", "output.dense": "ffn_out", "output.LayerNorm": "ffn_norm",
}
_HF_EMB = {"word_embeddings": "word", "position_embeddings": "position",
           "token_type_embeddings": "token_type", "LayerNorm": "norm"}
_PREFIXES = ("bert.", "roberta.", "model.")


def hf_key_to_ours(key: str):
    """'encoder.layer.3.attention.self.query.weight' -> 'layers.3.query.weight'; None if unused."""
    for p in _PREFIXES:
        key = key.removeprefix(p)
    parts = key.split(".")
    if parts[0] == "embeddings" and parts[1] in _HF_EMB:
        return f"embeddings.{_HF_EMB[parts[1]]}.{parts[-1]}"
    if parts[:2] == ["encoder", "layer"]:
        inner = ".".join(parts[3:-1])
        if inner in _HF_LAYER:
            return f"layers.{parts[2]}.{_HF_LAYER[inner]}.{parts[-1]}"
    if parts[0] == "pooler" and parts[1] == "dense":
        return f"pooler.{parts[-1]}"
    return None


def init_layers_from(layers: nn.ModuleList, backbone_state: dict, first: int) -> None:
    """Copy backbone layers first, first+1, ... into `layers` (used for branches and trunks)."""
    for i, layer in enumerate(layers):
        prefix = f"layers.{first + i}."
        layer.load_state_dict({k[len(prefix):]: v for k, v in backbone_state.items() if k.startswith(prefix)})


def build_trunk(cfg: EncoderConfig, backbone_state: dict, depth: int) -> Trunk:
    trunk = Trunk(cfg, depth)
    trunk.embeddings.load_state_dict(
        {k[len("embeddings."):]: v for k, v in backbone_state.items() if k.startswith("embeddings.")})
    init_layers_from(trunk.layers, backbone_state, 0)
    trunk.requires_grad_(False)
    return trunk.eval()


def build_branch(cfg: EncoderConfig, backbone_state: dict, attach: int, num_layers: int,
                 task_type: str, num_outputs: int, dropout: float) -> Branch:
    """A branch initialised from backbone layers attach .. attach+num_layers-1 (and its pooler)."""
    branch = Branch(cfg, attach, num_layers, task_type, num_outputs, dropout)
    init_layers_from(branch.layers, backbone_state, attach)
    if branch.head.pooler is not None and "pooler.weight" in backbone_state:
        branch.head.pooler.load_state_dict(
            {"weight": backbone_state["pooler.weight"], "bias": backbone_state["pooler.bias"]})
    elif branch.head.pooler is not None:
        nn.init.normal_(branch.head.pooler.weight, std=0.02)
        nn.init.zeros_(branch.head.pooler.bias)
    return branch


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
