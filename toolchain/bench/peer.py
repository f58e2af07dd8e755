"""The peer users would pick instead: each task as a Hugging Face BERT model, exported with optimum's
ONNX exporter and quantized with its ORT quantizer, checked against our task model first.
"""

import json
import platform
from pathlib import Path

from toolchain import UserError, __version__
from toolchain.bench.bundles import branch_files, files_digest
from toolchain.bench.inputs import dev_feeds
from toolchain.fsutil import write_json_atomic

HF_ATOL = 1e-4


class ConversionMismatch(RuntimeError):
    """The Hugging Face model built for the peer does not compute what our task model computes."""


def hf_model(bb, branch, meta):
    """transformers BertFor{Sequence,Token}Classification equal to one task model: backbone
    embeddings and layers 0..attach-1, the branch's layers as layers attach..attach+L-1, the branch
    head's pooler and output layer as BERT's pooler and classifier."""
    import transformers

    from toolchain.model import hf_key_to_ours

    if bb.hf_config.get("model_type") != "bert":
        raise UserError(f"the peer baseline converts BERT backbones only, not {bb.hf_config.get('model_type')!r}; "
                        "run bench with peer=False")
    tagging = meta.type == "tagging"
    config = transformers.BertConfig.from_dict(dict(bb.hf_config))
    config.num_hidden_layers = meta.attach + meta.layers
    if meta.type == "regression":
        config.num_labels, config.problem_type = 1, "regression"
    else:
        config.id2label = dict(enumerate(meta.labels))
        config.label2id = {v: k for k, v in config.id2label.items()}
        config.problem_type = None if tagging else "single_label_classification"
    cls = transformers.BertForTokenClassification if tagging else transformers.BertForSequenceClassification
    config.architectures = [cls.__name__]
    model = cls(config).eval()
    ours = branch.state_dict()
    state = {}
    for key in model.state_dict():
        if key.startswith("classifier."):
            state[key] = ours[f"head.out.{key.split('.')[-1]}"]
            continue
        name = hf_key_to_ours(key)
        if name is None:
            raise ConversionMismatch(f"no source for Hugging Face weight {key}")
        if name.startswith("pooler."):
            state[key] = ours[f"head.{name}"]
        elif name.startswith("layers.") and int(name.split(".")[1]) >= meta.attach:
            i, rest = name.split(".", 2)[1:]
            state[key] = ours[f"layers.{int(i) - meta.attach}.{rest}"]
        else:
            state[key] = bb.state[name]
    model.load_state_dict(state, strict=True)
    return model


def check_hf(model, task_model, task, meta, batches, atol=HF_ATOL) -> float:
    """Max |HF logits − our task model's output| over real-text batches (feeds by input name; valid
    positions); raises ConversionMismatch beyond `atol`."""
    import torch

    worst = 0.0
    with torch.no_grad():
        for feeds in batches:
            x = {k: torch.as_tensor(v) for k, v in feeds.items()}
            ours = task_model(**x)[task]
            theirs = model(**x).logits
            if meta.type == "regression":
                theirs = theirs.squeeze(-1)
            diff = (ours - theirs).abs()
            if meta.type == "tagging":
                diff = diff[x["attention_mask"].bool()]
            worst = max(worst, float(diff.max()))
    if not worst <= atol:
        raise ConversionMismatch(f"task {task}: the Hugging Face model differs from our task model by {worst:.3g} "
                                 f"(> {atol}); the peer conversion is wrong, not benchmarking it")
    return worst


def quantization_config():
    """optimum's AutoQuantizationConfig for this CPU: dynamic int8, per channel."""
    from optimum.onnxruntime import AutoQuantizationConfig

    flags = ""
    if Path("/proc/cpuinfo").is_file():
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64", AutoQuantizationConfig.arm64(is_static=False, per_channel=True)
    if "avx512_vnni" in flags.split():
        return "avx512_vnni", AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)
    return "avx2", AutoQuantizationConfig.avx2(is_static=False, per_channel=True)


def peer_model(bb, single_dir, task, batches, dest, log=print) -> dict:
    """HF folder -> optimum ONNX export -> ORT dynamic int8, under `dest` (reused when the branch
    files are unchanged). Returns {"fp32": path, "int8": path, "hf_max_abs": float, "quantizer": str}."""
    import shutil

    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer

    from toolchain.fsutil import atomic_dir
    from toolchain.store import load_merged

    dest = Path(dest)
    model, _, metas = load_merged(single_dir)
    meta = metas[task]
    hf = hf_model(bb, model.branches[task], meta)
    max_abs = check_hf(hf, model, task, meta, batches)
    qname, qconfig = quantization_config()
    key = {"branch": files_digest(branch_files(single_dir, task)), "trunk": bb.fingerprint,
           "toolchain_version": __version__, "quantizer": qname}
    if (dest / "source.json").is_file() and json.loads((dest / "source.json").read_text()) == key:
        log(f"reusing peer {task}")
    else:
        log(f"peer {task}: optimum ONNX export and ORT {qname} dynamic int8 quantization")
        with atomic_dir(dest, kind="peer model", protect=[single_dir]) as tmp:
            hf.save_pretrained(tmp / "hf", safe_serialization=True)
            for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
                if (bb.path / name).is_file():
                    shutil.copyfile(bb.path / name, tmp / "hf" / name)
            main_export(str(tmp / "hf"), output=str(tmp / "onnx"), task="token-classification"
                        if meta.type == "tagging" else "text-classification", library_name="transformers",
                        local_files_only=True, device="cpu")
            ORTQuantizer.from_pretrained(tmp / "onnx", file_name="model.onnx").quantize(
                save_dir=tmp / "onnx-int8", quantization_config=qconfig)
            shutil.rmtree(tmp / "hf")  # only the exported programs are compared
            write_json_atomic(tmp / "source.json", key)
    return {"fp32": dest / "onnx" / "model.onnx", "int8": dest / "onnx-int8" / "model_quantized.onnx",
            "hf_max_abs": max_abs, "quantizer": f"ORTQuantizer, AutoQuantizationConfig.{qname}(is_static=False, "
                                                f"per_channel=True)"}


def peer_runner(session, task, task_type):
    """A check.outputs_on batch runner over a peer ONNX session: {task: logits}."""
    names = {i.name for i in session.get_inputs()}

    def run_batch(b):
        out = session.run(["logits"], {k: v for k, v in b.feeds().items() if k in names})[0]
        return {task: out[..., 0] if task_type == "regression" else out}

    return run_batch


def prepare_peer(req, bb, singles, devs, feeds, log):
    """(peer_info, task -> peer_model(...) with "precisions") or a reason why the peer is not run.
    `req`: the BenchRequest; `singles`: task -> single-task store; `feeds`: length -> timed inputs."""
    import importlib.util

    precisions = [p for p in req.precisions if p in ("fp32", "int8")]
    reason = None
    if not req.peer:
        reason = "not asked for"
    elif "onnx" not in req.targets or not precisions:
        reason = "the peer is an ONNX Runtime model: it needs target onnx with precision fp32 or int8"
    elif importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.exporters.onnx") is None:
        reason = "optimum-onnx is not installed: pip install 'ctb-mobile[onnx]'"
    elif bb.hf_config.get("model_type") != "bert":
        reason = f"the peer conversion builds Hugging Face BERT models; this backbone is {bb.hf_config.get('model_type')}"
    if reason:
        log(f"peer: not run ({reason})")
        return {"run": False, "reason": reason}, {}
    info, peers = {"run": True, "exporter": "optimum.exporters.onnx.main_export", "tasks": {}}, {}
    for t, single_dir in singles.items():
        batches = list(feeds.values()) + ([dev_feeds(devs[t][2], 16)] if t in devs else [])
        peers[t] = {**peer_model(bb, single_dir, t, batches, req.out_dir / "peer" / t, log), "precisions": precisions}
        info["quantizer"] = peers[t]["quantizer"]
        info["tasks"][t] = {"hf_max_abs": peers[t]["hf_max_abs"]}
    return info, peers
