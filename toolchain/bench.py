"""`ctb-mobile bench`: the merged model against the same tasks as N single-task models, in one run.

For every (target, precision) the merged store is exported once (fused layout) and every task is
exported again as a single-task model (a store holding only that task's branch: the trunk up to the
branch's attach depth, then the branch). On real dev text cut to each sequence length, batch 1:

- latency p50 / p90 of the merged program and of each single-task program (and of both in PyTorch
  eager fp32, and of the peer), timed in rounds: each round times every configuration once, in a
  fresh random order, so the noise of a shared machine hits all of them alike;
- the ratio merged ÷ Σ single-task, per target, precision and length;
- bytes of the program files and peak memory (RSS of a fresh process that loads the program and
  runs one request, minus a process that only imports the runtime);
- achieved GFLOP/s (analytic FLOPs of the layers that run ÷ p50) against a GEMM peak measured with
  torch.matmul fp32 in the same run;
- the peer users would pick instead (target onnx): each task as a Hugging Face BERT model, exported
  with optimum's ONNX exporter and quantized with its ORT quantizer (dynamic int8), compared on
  latency, bytes, memory and dev metric.

Writes <out>/bench.json, bench.md and latency.png (atomically); bundles, single-task stores and peer
models are kept under <out> and reused when their sources have not changed.
"""

import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from toolchain import UserError, __version__
from toolchain.fsutil import write_bytes_atomic, write_json_atomic, write_text_atomic

BENCH_TARGETS = ("onnx", "android")  # the targets whose programs run on this machine (CoreML needs macOS)
SCHEMA = 1
WARMUP = 2
GOAL_RATIO = 0.35  # merged ÷ Σ single-task latency, for 4 or more tasks
HF_ATOL = 1e-4


# ---------------------------------------------------------------------------------------------
# Checking the request


def check_request(recipe, store_dir, targets, precisions, lengths, repeats, guard_examples):
    """Validate everything before any work; returns (targets, precisions, sorted lengths)."""
    from toolchain.export import check_request as check_export
    from toolchain.store import read_store

    targets, precisions = tuple(targets), tuple(precisions)
    if not targets:
        raise UserError(f"no target to benchmark; use one or more of: {', '.join(BENCH_TARGETS)}")
    for t in targets:
        if t == "ios":
            raise UserError("target 'ios' cannot be benchmarked here: CoreML programs run only on Apple devices; "
                            f"use {' or '.join(BENCH_TARGETS)}")
        if t not in BENCH_TARGETS:
            raise UserError(f"unknown target {t!r}; use one or more of: {', '.join(BENCH_TARGETS)}")
    if not precisions:
        raise UserError("no precision to benchmark; use fp32 and/or int8")
    for t in targets:
        for p in precisions:
            check_export(t, p, "fused")  # one-line errors for unknown or unsupported precisions
    if not lengths:
        raise UserError("no sequence length given; give positive integers, e.g. 16,64,128")
    bad = [x for x in lengths if isinstance(x, bool) or not isinstance(x, int) or x < 1]
    if bad:
        raise UserError(f"sequence length {bad[0]!r} is not valid: lengths must be positive integers, e.g. 16,64,128")
    max_seq_len = max(recipe.seq_len(t) for t in recipe.tasks)
    if min(lengths) > max_seq_len:
        raise UserError(f"every length ({', '.join(map(str, lengths))}) is above the recipe's max_seq_len "
                        f"{max_seq_len}; give lengths up to {max_seq_len}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UserError(f"repeats {repeats!r} must be a positive integer, e.g. 20")
    if isinstance(guard_examples, bool) or not isinstance(guard_examples, int) or guard_examples < 1:
        raise UserError(f"guard_examples {guard_examples!r} must be a positive integer, e.g. 200")
    read_store(store_dir)  # "store ... not found; build one with `ctb-mobile merge`"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("bench draws its plot with matplotlib; run: pip install 'ctb-mobile[bench]'") from None
    return targets, precisions, sorted(set(lengths))


# ---------------------------------------------------------------------------------------------
# Models: single-task stores, bundles, reuse


def _files_digest(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def _branch_files(store_dir, task):
    d = Path(store_dir) / "branches" / task
    return [d / "branch.json", d / "branch.safetensors"]


def single_store(store_dir, task, bb, backbone_spec, dest, log=print) -> Path:
    """A store holding only `task`'s branch (built with store.create; reused if it is up to date)."""
    from toolchain import store

    dest = Path(dest)
    if (dest / "store.json").is_file():
        same = (store.read_store(dest)["backbone_fingerprint"] == bb.fingerprint
                and store.branch_names(dest) == [task]
                and _files_digest(_branch_files(dest, task)) == _files_digest(_branch_files(store_dir, task)))
        if same:
            return dest
    log(f"single-task store {task}")
    store.create(dest, bb, backbone_spec, [Path(store_dir) / "branches" / task], force=True)
    return dest


def bundle(recipe, store_dir, target, precision, dest, guard_examples, log=print) -> dict:
    """Export the store (fused) into `dest`, or reuse the bundle there if it was made from the same
    target, precision, trunk, tasks, branch files and max_seq_len. Returns the manifest."""
    from toolchain.export import export_bundle
    from toolchain.store import branch_names, read_store

    dest = Path(dest)
    tasks = branch_names(store_dir)
    key = {"target": target, "precision": precision, "layout": "fused", "toolchain_version": __version__,
           "trunk_fingerprint": read_store(store_dir)["backbone_fingerprint"], "tasks": tasks,
           "max_seq_len": max(recipe.seq_len(t) for t in recipe.tasks),
           "branches": _files_digest([f for t in tasks for f in _branch_files(store_dir, t)])}
    key_file = dest.with_name(dest.name + ".source.json")
    if (dest / "manifest.json").is_file() and key_file.is_file():
        m = json.loads((dest / "manifest.json").read_text())
        same = (m["target"], m["precision"], m["layout"], m["trunk_fingerprint"], [t["name"] for t in m["tasks"]]) \
            == (target, precision, "fused", key["trunk_fingerprint"], tasks)
        if same and json.loads(key_file.read_text()) == key:
            log(f"reusing {dest.name}")
            return m
    log(f"exporting {dest.name}")
    manifest = export_bundle(recipe, store_dir, target, precision, "fused", dest, guard_examples=guard_examples,
                             log=lambda m: None)
    write_json_atomic(key_file, key)
    return manifest


def program_bytes(bundle_dir, manifest) -> int:
    """Bytes of the program files that run (model.onnx or model.pte; the .ort twin is not counted)."""
    return sum((Path(bundle_dir) / p["file"]).stat().st_size for p in manifest["programs"])


# ---------------------------------------------------------------------------------------------
# Inputs, FLOPs, GEMM peak


def token_pool(devs, tok) -> list:
    """Word-piece ids (no [CLS]/[SEP]) of the recipe's dev sets, in order: real text to cut inputs from."""
    pool = []
    for _, _, dev, _ in devs.values():
        for ids in dev.input_ids:
            pool.extend(ids[1:-1])
    if not pool:
        pool = tok.encode("set an alarm for seven thirty tomorrow morning", add_special_tokens=False).ids
    return pool


def dev_batch(encoded, n):
    """The first n dev examples as one padded batch (ids, mask, token types) of numpy arrays."""
    from toolchain.cache import pad_batch

    ids, tt, mask = pad_batch(encoded.input_ids[:n], encoded.type_ids[:n], "cpu")
    return ids.numpy(), mask.numpy(), tt.numpy()


def inputs_of_length(pool, tok, n):
    """(ids, mask, token types) of exactly n tokens: [CLS] + real dev word pieces + [SEP], batch 1."""
    import numpy as np

    specials = tok.encode("a").ids  # the tokenizer's own template: [CLS] a [SEP] (or <s> a </s>)
    cls, sep = specials[0], specials[-1]
    body = list(pool)
    while len(body) < n:
        body += pool
    ids = ([cls] + body[: max(n - 2, 0)] + [sep])[:n]
    ids = np.asarray([ids], dtype=np.int64)
    return ids, np.ones_like(ids), np.zeros_like(ids)


def layer_flops(tokens: int, hidden: int, ffn: int) -> int:
    """Multiply-adds ×2 of one BERT layer: Q, K, V, output, FFN in/out, and the attention products."""
    return 2 * tokens * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * tokens * tokens * hidden


def head_flops(meta, tokens: int, hidden: int) -> int:
    if meta.type == "tagging":
        return 2 * tokens * hidden * meta.n_out
    return 2 * hidden * hidden + 2 * hidden * meta.n_out  # tanh pooler on [CLS], then the output layer


def model_flops(metas: dict, tokens: int, hidden: int, ffn: int) -> int:
    """FLOPs of one request through a model whose trunk runs to the deepest attach point (embeddings
    excluded). A single-task model is the same formula with one branch."""
    depth = max(m.attach for m in metas.values())
    layers = depth + sum(m.layers for m in metas.values())
    return layers * layer_flops(tokens, hidden, ffn) + sum(head_flops(m, tokens, hidden) for m in metas.values())


def gemm_peak(shapes, repeats: int) -> dict:
    """Best median GFLOP/s of fp32 torch.matmul over `shapes` (m, k, n), with torch's thread count."""
    import torch

    rows = []
    with torch.no_grad():
        for m, k, n in shapes:
            a, b = torch.randn(m, k), torch.randn(k, n)
            for _ in range(WARMUP):
                torch.matmul(a, b)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                torch.matmul(a, b)
                times.append(time.perf_counter() - t)
            med = statistics.median(times)
            rows.append({"m": m, "k": k, "n": n, "median_ms": med * 1e3, "gflops": 2 * m * k * n / med / 1e9})
    return {"threads": torch.get_num_threads(), "peak_gflops": max(r["gflops"] for r in rows), "shapes": rows}


# ---------------------------------------------------------------------------------------------
# The peer: Hugging Face BERT per task, optimum's ONNX exporter and ORT quantizer


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
    """Max |HF logits − our task model's output| over real-text batches (valid positions); raises
    ConversionMismatch beyond `atol`."""
    import torch

    worst = 0.0
    with torch.no_grad():
        for ids, mask, tt in batches:
            ids, mask, tt = (torch.as_tensor(x) for x in (ids, mask, tt))
            ours = task_model(ids, tt, mask)[task]
            theirs = model(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
            if meta.type == "regression":
                theirs = theirs.squeeze(-1)
            diff = (ours - theirs).abs()
            if meta.type == "tagging":
                diff = diff[mask.bool()]
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
    key = {"branch": _files_digest(_branch_files(single_dir, task)), "trunk": bb.fingerprint,
           "toolchain_version": __version__, "quantizer": qname}
    if (dest / "source.json").is_file() and json.loads((dest / "source.json").read_text()) == key:
        log(f"reusing peer {task}")
    else:
        log(f"peer {task}: optimum ONNX export and ORT {qname} dynamic int8 quantization")
        with atomic_dir(dest) as tmp:
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


def onnx_session(path, threads=None):
    """A timed ONNX Runtime session: intra-op spinning off, so an idle pool does not take the cores from
    the next configuration (measured here: PyTorch eager 2.6 ms after an ORT call without spinning, 15 ms
    with). `threads`: intra-op threads (None: one per core)."""
    from runtime_py.backends import OnnxProgram

    return OnnxProgram(Path(path), threads or 0, spin=False).session


def runner(target, bundle_dir, threads=None):
    """The target's runner for a bundle: file -> callable(feeds) (ONNX Runtime as in onnx_session)."""
    from runtime_py.backends import file_runner

    return file_runner(target, bundle_dir, threads or 0, spin=False)


def peer_runner(session, task, task_type):
    """A check.outputs_on batch runner over a peer ONNX session: {task: logits}."""
    names = {i.name for i in session.get_inputs()}

    def run_batch(b):
        out = session.run(["logits"], {k: v for k, v in b.feeds().items() if k in names})[0]
        return {task: out[..., 0] if task_type == "regression" else out}

    return run_batch


# ---------------------------------------------------------------------------------------------
# Timing and memory


def time_round_robin(calls: dict, repeats: int, seed: int = 0) -> dict:
    """Warm every call up, then time `repeats` rounds of all calls, each round in a fresh (seeded)
    random order, so slow phases of a noisy machine, and whatever one call leaves running for the
    next, are shared by every configuration alike. ms per call."""
    import random

    names = list(calls)
    for n in names:
        for _ in range(WARMUP):
            calls[n]()
    times = {n: [] for n in names}
    rng = random.Random(seed)
    for _ in range(repeats):
        order = names[:]
        rng.shuffle(order)
        for n in order:
            t = time.perf_counter()
            calls[n]()
            times[n].append((time.perf_counter() - t) * 1e3)
    return times


def percentiles(ms: list) -> dict:
    import numpy as np

    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90))}


_CHILD = """
import json, os, resource, sys
kind, path, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if kind == "onnx":
    import numpy as np, onnxruntime as ort
    if path:
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        a = np.asarray([ids], dtype=np.int64)
        feeds = {"input_ids": a, "attention_mask": np.ones_like(a), "token_type_ids": np.zeros_like(a)}
        s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})
else:
    import torch
    from executorch.runtime import Runtime
    rt = Runtime.get()
    if path:
        a = torch.tensor([ids], dtype=torch.long)
        rt.load_program(path).load_method("forward").execute([a, torch.ones_like(a), torch.zeros_like(a)])
# Linux: VmHWM is this process's own peak (reset by exec; ru_maxrss can carry the forking parent's)
if os.path.exists("/proc/self/status"):
    kb = [int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")][0]
else:  # macOS reports ru_maxrss in bytes
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
print(json.dumps({"peak_kb": kb}))
"""


def peak_rss_mb(kind: str, path, ids) -> float:
    """Peak RSS (MB) of a fresh process that imports the runtime and, if `path`, loads that program
    and runs one request on `ids`."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, kind, str(path or ""), json.dumps(list(ids))],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {path or kind} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_kb"] / 1024


# ---------------------------------------------------------------------------------------------
# The run


def run_bench(recipe, store_dir, out_dir, targets=("onnx", "android"), precisions=("fp32", "int8"),
              lengths=(16, 64, 128), repeats=20, peer=True, guard_examples=200, threads=None, log=print,
              singles_from=None) -> dict:
    """Benchmark the merged store against its tasks as single-task models (and the optimum peer);
    writes out_dir/bench.json, bench.md, latency.png and returns the result dict.

    `threads`: threads for PyTorch eager, the GEMM peak and ONNX Runtime (ours and the peer's);
    default: each runtime's own (one per core). ExecuTorch always runs with its default pool.
    `singles_from`: another store (same trunk and tasks) whose branches are the single-task models,
    e.g. the full-depth teachers when the merged store holds distilled branches; default: the
    merged store's own branches."""
    import torch

    targets, precisions, lengths = check_request(recipe, store_dir, targets, precisions, lengths, repeats,
                                                 guard_examples)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UserError(f"threads {threads!r} must be a positive integer, e.g. 2")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        result = measure(recipe, Path(store_dir), Path(out_dir), targets, precisions, lengths, repeats, peer,
                         guard_examples, threads, log, Path(singles_from or store_dir))
    finally:
        torch.set_num_threads(before)
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "bench.json", result)
    write_text_atomic(out_dir / "bench.md", markdown(result))
    write_bytes_atomic(out_dir / "latency.png", plot(result))
    log(f"wrote {out_dir / 'bench.md'}, bench.json, latency.png")
    return result


def measure(recipe, store_dir, out_dir, targets, precisions, lengths, repeats, peer, guard_examples, threads,
            log, singles_from) -> dict:
    """The benchmark itself (validated arguments); returns the result dict that run_bench writes."""
    import torch

    from toolchain import backbone
    from toolchain.export import dev_sets
    from toolchain.store import list_branches, load_merged, read_store

    load_start = load_average()
    store_meta = read_store(store_dir)
    max_seq_len = max(recipe.seq_len(t) for t in recipe.tasks)
    run_lengths = [n for n in lengths if n <= max_seq_len]
    not_run = {str(n): f"above the recipe's max_seq_len {max_seq_len} (exported programs are bounded by it)"
               for n in lengths if n > max_seq_len}
    bb = backbone.load(recipe.backbone_spec)
    if bb.fingerprint != store_meta["backbone_fingerprint"]:
        raise UserError(f"the recipe's backbone {recipe.backbone!r} is not the trunk of store {store_dir} "
                        "(fingerprints differ); pass the recipe the store was built from")
    merged, tok, metas = load_merged(store_dir)
    tasks, cfg = list(metas), merged.trunk.cfg
    devs = dev_sets(recipe, tok, metas, guard_examples)
    pool = token_pool(devs, tok)
    feeds = {n: inputs_of_length(pool, tok, n) for n in run_lengths}
    log(f"bench: {len(tasks)} tasks ({', '.join(tasks)}), targets {', '.join(targets)}, precisions "
        f"{', '.join(precisions)}, lengths {', '.join(map(str, run_lengths))}, {repeats} repeats")

    # the models: single-task stores, bundles, PyTorch eager, the peer
    single_metas = {m.task: m for m in list_branches(singles_from)}
    if sorted(single_metas) != sorted(tasks) or read_store(singles_from)["backbone_fingerprint"] != bb.fingerprint:
        raise UserError(f"store {singles_from} must hold the same tasks ({', '.join(tasks)}) on the same trunk "
                        "to serve as the single-task models")
    singles = {t: single_store(singles_from, t, bb, recipe.backbone_spec, out_dir / "single_stores" / t, log)
               for t in tasks}
    bundles = {}  # (target, precision, "merged" | task) -> (bundle dir, manifest)
    for target in targets:
        for precision in precisions:
            for member, src in [("merged", store_dir), *singles.items()]:
                d = out_dir / "bundles" / (f"merged-{target}-{precision}" if member == "merged"
                                           else f"single-{member}-{target}-{precision}")
                bundles[target, precision, member] = d, bundle(recipe, src, target, precision, d, guard_examples, log)
    eager = {"merged": merged, **{t: load_merged(singles[t])[0] for t in tasks}}
    peer_info, peers = prepare_peer(peer, targets, precisions, bb, singles, devs, feeds, out_dir, log)
    peer_precisions = list(peers[tasks[0]]["precisions"]) if peers else []

    # one callable(ids, mask, tt) per configuration, grouped: "<target>/<precision>", "eager/fp32", "peer/<p>"
    groups = {}
    for target in targets:
        for precision in precisions:
            groups[f"{target}/{precision}"] = {
                m: _bundle_call(runner(target, bundles[target, precision, m][0], threads),
                                bundles[target, precision, m][1])
                for m in ["merged", *tasks]}
    groups["eager/fp32"] = {m: _eager_call(model) for m, model in eager.items()}
    for precision in peer_precisions:
        groups[f"peer/{precision}"] = {t: _onnx_call(onnx_session(peers[t][precision], threads)) for t in tasks}

    # GEMM peak, then latency at each length over every configuration in the same rounds
    shapes = [(n, cfg.hidden_size, cfg.intermediate_size) for n in run_lengths] + [(1024, 1024, 1024)]
    gemm = gemm_peak(shapes, max(repeats, 10))
    log(f"GEMM peak (torch.matmul fp32, {gemm['threads']} threads): {gemm['peak_gflops']:.1f} GFLOP/s")
    latency = {name: {} for name in groups}
    for n in run_lengths:
        calls = {(name, m): (lambda f=f, x=feeds[n]: f(*x)) for name, g in groups.items() for m, f in g.items()}
        log(f"timing seq {n}: {len(calls)} configurations x {repeats} rounds")
        times = time_round_robin(calls, repeats, seed=n)
        for name, g in groups.items():
            latency[name][str(n)] = {m: percentiles(times[name, m]) for m in g}

    flops = {"merged": {}, "single": {t: {} for t in tasks}, "single_sum": {}, "ratio": {}}
    for n in run_lengths:
        k = str(n)
        flops["merged"][k] = model_flops(metas, n, cfg.hidden_size, cfg.intermediate_size)
        for t in tasks:
            flops["single"][t][k] = model_flops({t: single_metas[t]}, n, cfg.hidden_size, cfg.intermediate_size)
        flops["single_sum"][k] = sum(flops["single"][t][k] for t in tasks)
        flops["ratio"][k] = flops["merged"][k] / flops["single_sum"][k]

    # bytes: the program files that run; for eager, the fp32 parameters
    size = {f"{t}/{p}": {m: program_bytes(*bundles[t, p, m]) for m in ["merged", *tasks]}
            for t in targets for p in precisions}
    size["eager/fp32"] = {m: sum(x.numel() * x.element_size() for x in model.parameters())
                          for m, model in eager.items()}
    for precision in peer_precisions:
        size[f"peer/{precision}"] = {t: peers[t][precision].stat().st_size for t in tasks}

    memory = measure_memory(targets, precisions, tasks, bundles, peers, peer_precisions,
                            feeds[run_lengths[-1]][0][0].tolist(), log)
    memory_seq = run_lengths[-1]
    dev_metric = measure_dev_metric(devs, merged, targets, precisions, bundles, peers, peer_precisions, log)

    result = {
        "schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "toolchain_version": __version__, "recipe": str(recipe.path), "store": str(store_dir),
        "singles_from": str(singles_from),
        "trunk_fingerprint": store_meta["backbone_fingerprint"], "backbone": store_meta["backbone"],
        "machine": machine(torch, load_start, threads, "android" in targets), "max_seq_len": max_seq_len,
        "settings": {"targets": list(targets), "precisions": list(precisions), "lengths": lengths,
                     "repeats": repeats, "warmup": WARMUP, "batch": 1, "layout": "fused",
                     "guard_examples": guard_examples,
                     "order": "every configuration once per round, each round in a fresh seeded random order",
                     "threads": threads, "onnxruntime": "CPU execution provider, intra-op spinning off"},
        "tasks": [{"name": t, "type": m.type, "attach": m.attach, "layers": m.layers,
                   "single": [single_metas[t].attach, single_metas[t].layers]}
                  for t, m in metas.items()],
        "not_run": not_run, "gemm": gemm, "flops": flops,
        "latency": summarize_latency(latency, tasks, flops, gemm["peak_gflops"]),
        "bytes": summarize_members(size, tasks),
        "memory_mb": {"baseline_mb": memory.pop("baseline_mb"), "seq": memory_seq,
                      **summarize_members(memory, tasks)},
        "dev_metric": dev_metric, "peer": peer_info,
    }
    result["summary"] = summary(result)
    return result


def prepare_peer(peer, targets, precisions, bb, singles, devs, feeds, out_dir, log):
    """(peer_info, task -> peer_model(...) with "precisions") or a reason why the peer is not run."""
    import importlib.util

    precisions = [p for p in precisions if p in ("fp32", "int8")]
    reason = None
    if not peer:
        reason = "not asked for"
    elif "onnx" not in targets or not precisions:
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
        batches = list(feeds.values()) + ([dev_batch(devs[t][2], 16)] if t in devs else [])
        peers[t] = {**peer_model(bb, single_dir, t, batches, out_dir / "peer" / t, log), "precisions": precisions}
        info["quantizer"] = peers[t]["quantizer"]
        info["tasks"][t] = {"hf_max_abs": peers[t]["hf_max_abs"]}
    return info, peers


def measure_memory(targets, precisions, tasks, bundles, peers, peer_precisions, ids, log) -> dict:
    """Peak MB above a runtime-only process, per configuration group and member."""
    log("peak memory: one fresh process per program")
    kinds = {"onnx": "onnx", "android": "pte"}
    baseline = {k: peak_rss_mb(k, None, ids) for k in sorted({kinds[t] for t in targets} | ({"onnx"} if peers else set()))}
    out = {"baseline_mb": baseline}
    for target in targets:
        kind = kinds[target]
        for precision in precisions:
            out[f"{target}/{precision}"] = {}
            for m in ["merged", *tasks]:
                d, manifest = bundles[target, precision, m]
                out[f"{target}/{precision}"][m] = peak_rss_mb(kind, d / manifest["programs"][0]["file"], ids) \
                    - baseline[kind]
    for precision in peer_precisions:
        out[f"peer/{precision}"] = {t: peak_rss_mb("onnx", peers[t][precision], ids) - baseline["onnx"] for t in tasks}
    return out


def measure_dev_metric(devs, merged, targets, precisions, bundles, peers, peer_precisions, log) -> dict:
    """Per task: the dev metric of PyTorch fp32, of every merged bundle and of the peer."""
    from toolchain.export import check

    log("dev metric on the recipe's dev sets")
    out = {}
    for t, (task, labels, dev, _) in devs.items():
        ref = check.outputs_on(dev, check.torch_runner(merged))
        row = out[t] = {"metric": task.metric, "examples": len(dev)}
        runs = {f"{target}/{p}": check.bundle_runner(runner(target, bundles[target, p, "merged"][0]),
                                                     bundles[target, p, "merged"][1])
                for target in targets for p in precisions}
        runs.update({f"peer/{p}": peer_runner(onnx_session(peers[t][p]), t, task.type) for p in peer_precisions})
        for name, run_batch in runs.items():
            c = check.compare(task, labels, dev, ref, check.outputs_on(dev, run_batch))
            row["pytorch/fp32"] = c["reference"]
            row[name] = c["exported"]
    return out


def _bundle_call(run, manifest):
    from toolchain.export import check

    return lambda ids, mask, tt: check.run_bundle(run, manifest, {"input_ids": ids, "attention_mask": mask,
                                                                   "token_type_ids": tt})


def _eager_call(model):
    import torch

    def call(ids, mask, tt):
        with torch.no_grad():
            return model(torch.from_numpy(ids), torch.from_numpy(tt), torch.from_numpy(mask))

    return call


def _onnx_call(session):
    names = [i.name for i in session.get_inputs()]

    def call(ids, mask, tt):
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}
        return session.run(None, {k: feeds[k] for k in names})

    return call


def executorch_threads():
    try:
        from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

        return _threadpool_get_thread_count()
    except ImportError:
        return None


def load_average():
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


# /proc/cpuinfo flag -> name: the extensions int8 and fp32 kernels dispatch on (MLAS, XNNPACK, oneDNN)
VECTOR_FLAGS = {"avx2": "AVX2", "fma": "FMA", "avx_vnni": "AVX-VNNI", "avx512f": "AVX-512F",
                "avx512bw": "AVX-512BW", "avx512_vnni": "AVX-512 VNNI", "avx512_bf16": "AVX-512 BF16",
                "amx_int8": "AMX-INT8", "asimd": "NEON", "asimddp": "NEON dot product", "i8mm": "I8MM",
                "sve": "SVE"}


def vector_extensions(cpuinfo: str) -> list:
    """The vector extensions the first CPU of a /proc/cpuinfo text lists ("flags" on x86, "Features" on
    Arm), in VECTOR_FLAGS order: figures from machines with and without VNNI are not comparable."""
    line = next((x for x in cpuinfo.splitlines() if x.split(":", 1)[0].strip() in ("flags", "Features")), "")
    flags = set(line.split(":", 1)[1].split()) if ":" in line else set()
    return [name for flag, name in VECTOR_FLAGS.items() if flag in flags]


def machine(torch, load_start, threads, executorch) -> dict:
    """CPU, cores, thread counts, load average at start and end (a busy machine makes noisy figures)."""
    import importlib.metadata as md

    cpu, extensions = platform.processor(), None
    if Path("/proc/cpuinfo").is_file():
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), cpu)
        extensions = vector_extensions(info)
    versions = {}
    for pkg in ("torch", "onnxruntime", "executorch", "optimum", "optimum-onnx", "transformers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": cpu, "vector_extensions": extensions, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "onnxruntime_threads": threads or f"default ({os.cpu_count()}, one per core)",
            "executorch_threads": executorch_threads() if executorch else None,
            "load_average": {"start": load_start, "end": load_average()},
            "python": platform.python_version(), "versions": versions}


# ---------------------------------------------------------------------------------------------
# Derived figures


def summarize_latency(latency: dict, tasks: list, flops: dict, peak: float) -> dict:
    """Per group and length: members' p50/p90, Σ single-task, merged ÷ Σ single, GFLOP/s, fraction of
    the GEMM peak, speed-up against PyTorch eager fp32 (merged)."""
    out = {}
    for name, by_len in latency.items():
        out[name] = {}
        for k, members in by_len.items():
            row = {"members": members,
                   "single_sum": {q: sum(members[t][q] for t in tasks) for q in ("p50_ms", "p90_ms")}}
            row["single_sum"]["gflops"] = flops["single_sum"][k] / (row["single_sum"]["p50_ms"] / 1e3) / 1e9
            row["single_sum"]["peak_fraction"] = row["single_sum"]["gflops"] / peak
            if "merged" in members:
                m = members["merged"]
                row["ratio_p50"] = m["p50_ms"] / row["single_sum"]["p50_ms"]
                row["merged_gflops"] = flops["merged"][k] / (m["p50_ms"] / 1e3) / 1e9
                row["merged_peak_fraction"] = row["merged_gflops"] / peak
                eager = latency["eager/fp32"][k]["merged"]["p50_ms"]
                row["merged_speedup_vs_eager_fp32"] = eager / m["p50_ms"]
            out[name][k] = row
    return out


def summarize_members(table: dict, tasks: list) -> dict:
    """group -> {merged, single: {task: x}, single_sum, ratio} for bytes and memory."""
    out = {}
    for name, row in table.items():
        s = {"single": {t: row[t] for t in tasks}, "single_sum": sum(row[t] for t in tasks)}
        if "merged" in row:
            s["merged"] = row["merged"]
            s["ratio"] = row["merged"] / s["single_sum"] if s["single_sum"] else None
        out[name] = s
    return out


def summary(r: dict) -> dict:
    """The headline figures: merged ÷ Σ single latency, int8 vs eager fp32, fraction of GEMM peak,
    merged against the peer."""
    lat = r["latency"]
    ours = [g for g in lat if not g.startswith(("eager/", "peer/"))]
    s = {"tasks": len(r["tasks"]), "goal_ratio": GOAL_RATIO,
         "ratio_p50": {g: {k: v["ratio_p50"] for k, v in lat[g].items()} for g in [*ours, "eager/fp32"]},
         "speedup_vs_eager_fp32": {g: {k: v["merged_speedup_vs_eager_fp32"] for k, v in lat[g].items()} for g in ours},
         "peak_fraction": {g: {k: v["merged_peak_fraction"] for k, v in lat[g].items()} for g in [*ours, "eager/fp32"]},
         "gemm_peak_gflops": r["gemm"]["peak_gflops"]}
    s["goal_met"] = {g: all(x <= GOAL_RATIO for x in v.values()) for g, v in s["ratio_p50"].items()} \
        if len(r["tasks"]) >= 4 else None
    peer = {}
    for g in lat:
        if g.startswith("peer/") and f"onnx/{g.split('/')[1]}" in lat:
            mine = lat[f"onnx/{g.split('/')[1]}"]
            peer[g] = {k: mine[k]["members"]["merged"]["p50_ms"] / v["single_sum"]["p50_ms"] for k, v in lat[g].items()}
    s["merged_vs_peer_p50"] = peer
    return s


# ---------------------------------------------------------------------------------------------
# Report and plot


def _f(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def _table(header: list, rows: list) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def markdown(r: dict) -> str:
    m, s, lat = r["machine"], r["summary"], r["latency"]
    tasks = [t["name"] for t in r["tasks"]]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    ext = m.get("vector_extensions")
    ext = "unknown (no /proc/cpuinfo)" if ext is None else ", ".join(ext) or "none of " + ", ".join(VECTOR_FLAGS.values())
    lines = [
        f"# ctb-mobile bench: {len(tasks)} tasks, merged vs single-task models", "",
        (f"Store `{r['store']}`, backbone {r['backbone']} (trunk `{r['trunk_fingerprint'][:16]}`), "
         f"max_seq_len {r['max_seq_len']}, toolchain {r['toolchain_version']}, {r['created']}. "
         "Tasks (attach depth, branch layers) merged / single-task model: "
         + ", ".join(f"{t['name']} ({t['attach']}, {t['layers']}) / ({t['single'][0]}, {t['single'][1]})"
                     for t in r["tasks"]) + f"; single-task models from `{r['singles_from']}`."), "",
        (f"Machine: {m['cpu']}, {m['cores']} cores; vector extensions: {ext} (torch kernels: "
         f"{m.get('torch_cpu_capability', '-')}); threads: torch {m['torch_threads']}, ONNX Runtime "
         f"{m['onnxruntime_threads']}, ExecuTorch {_f(m['executorch_threads'], 'd')}; load average "
         f"{m['load_average']['start']} at the start and {m['load_average']['end']} at the end; {versions}."), "",
        (f"Batch 1, fused programs, real dev text cut to each length. {WARMUP} warm-up calls, then "
         f"{r['settings']['repeats']} rounds, each timing every configuration once in a fresh random order "
         "(p50 / p90 in ms). ONNX Runtime sessions (ours and the peer's) have intra-op spinning off, so an idle "
         "pool does not take the cores from the next configuration."), ""]
    busy = [x for x in m["load_average"].values() if x is not None and x > 0.5 * m["cores"]]
    if busy:
        lines += [(f"**The machine was busy** (load average up to {max(busy)} on {m['cores']} cores): absolute "
                   "times are noisy; the ratios are fairer, since every configuration was timed in the same "
                   "rounds."), ""]
    lines += [f"- seq {k}: not run, {why}." for k, why in r["not_run"].items()]

    lines += ["", "## Headline", "",
              (f"Merged ÷ Σ single-task p50 latency (goal ≤ {GOAL_RATIO} for 4+ tasks), the merged program's "
               "speed-up against the merged model in PyTorch eager fp32, and its GFLOP/s as a fraction of the "
               f"fp32 GEMM peak measured in the same run ({s['gemm_peak_gflops']:.1f} GFLOP/s, "
               f"{r['gemm']['threads']} thread{'s' if r['gemm']['threads'] != 1 else ''})."), ""]
    rows = [[g, k, f"{ratio:.3f}", _f(s["speedup_vs_eager_fp32"].get(g, {}).get(k)), f"{s['peak_fraction'][g][k]:.1%}"]
            for g, by_len in s["ratio_p50"].items() for k, ratio in by_len.items()]
    lines += _table(["configuration", "seq", "merged ÷ Σ single", "× vs eager fp32", "% of GEMM peak"], rows)
    if s["goal_met"] is not None:
        met = [g for g, ok in s["goal_met"].items() if ok]
        lines += ["", f"Goal ≤ {GOAL_RATIO} met at every length by: {', '.join(met) or 'none'}."]

    lines += ["", "## Latency (ms)", ""]
    rows = []
    for g, by_len in lat.items():
        for k, row in by_len.items():
            mem, tot = row["members"], row["single_sum"]
            merged = f"{mem['merged']['p50_ms']:.2f} / {mem['merged']['p90_ms']:.2f}" if "merged" in mem else "-"
            rows.append([g, k, merged, f"{tot['p50_ms']:.2f} / {tot['p90_ms']:.2f}",
                         *(f"{mem[t]['p50_ms']:.2f}" for t in tasks), _f(row.get("ratio_p50"), ".3f"),
                         _f(row.get("merged_gflops"), ".1f")])
    lines += _table(["configuration", "seq", "merged p50 / p90", "Σ single p50 / p90", *(f"{t} p50" for t in tasks),
                     "merged ÷ Σ single", "merged GFLOP/s"], rows)

    mm = r["memory_mb"]
    lines += ["", "## Bytes and peak memory", "",
              ("Bytes: the program files that run (`model.onnx`, `model.pte`; eager: the fp32 parameters). Peak "
               f"memory: peak RSS of a fresh process that loads the program and runs one request at seq {mm['seq']}, "
               "minus that of a process that only imports the runtime ("
               + ", ".join(f"{k}: {v:.0f} MB" for k, v in mm["baseline_mb"].items()) + ")."), ""]
    rows = [[g, _f(b.get("merged"), ","), f"{b['single_sum']:,}", _f(b.get("ratio"), ".3f"),
             _f(mm.get(g, {}).get("merged"), ".1f"), _f(mm.get(g, {}).get("single_sum"), ".1f"),
             _f(mm.get(g, {}).get("ratio"), ".3f")] for g, b in r["bytes"].items()]
    lines += _table(["configuration", "merged bytes", "Σ single bytes", "ratio", "merged MB", "Σ single MB", "ratio"],
                    rows)

    p = r["peer"]
    lines += ["", "## The peer: the same tasks as single-task models through optimum", ""]
    if not p["run"]:
        lines.append(f"Not run: {p['reason']}.")
    else:
        checks = ", ".join(f"{t} {v['hf_max_abs']:.1e}" for t, v in p["tasks"].items())
        lines += [("Each task as a Hugging Face BERT (the backbone's layers below the attach depth, then the branch), "
                   f"checked against our task model on real text (max |Δ|: {checks}), exported with "
                   f"`{p['exporter']}` and quantized (int8) with {p['quantizer']}."), ""]
        rows = []
        for g, by_len in s["merged_vs_peer_p50"].items():
            prec = g.split("/")[1]
            for k, ratio in by_len.items():
                rows.append([prec, k, f"{lat[f'onnx/{prec}'][k]['members']['merged']['p50_ms']:.2f}",
                             f"{lat[g][k]['single_sum']['p50_ms']:.2f}", f"{ratio:.3f}",
                             f"{r['bytes'][f'onnx/{prec}']['merged']:,}", f"{r['bytes'][g]['single_sum']:,}",
                             _f(mm[f"onnx/{prec}"]["merged"], ".1f"), _f(mm[g]["single_sum"], ".1f")])
        lines += _table(["precision", "seq", "ours merged p50", "peer Σ p50", "ours ÷ peer", "ours bytes",
                         "peer Σ bytes", "ours MB", "peer Σ MB"], rows)

    if r["dev_metric"]:
        cols = [c for c in next(iter(r["dev_metric"].values())) if "/" in c]
        lines += ["", "## Dev metric", "",
                  (f"On the recipe's dev sets (up to {r['settings']['guard_examples']} examples per task); ours is "
                   "the merged bundle, the peer its single-task model for that task."), ""]
        rows = [[t, row["metric"], row["examples"], *(_f(row.get(c)) for c in cols)] for t, row in r["dev_metric"].items()]
        lines += _table(["task", "metric", "examples", *cols], rows)

    lines += ["", "## GEMM peak and FLOPs", ""]
    lines += _table(["m × k × n (fp32 torch.matmul)", "median ms", "GFLOP/s"],
                    [[f"{g['m']} × {g['k']} × {g['n']}", f"{g['median_ms']:.3f}", f"{g['gflops']:.1f}"]
                     for g in r["gemm"]["shapes"]])
    lines += ["", ("FLOPs are analytic, embeddings excluded: per layer 2·T·(4h² + 2h·ffn) + 4·T²·h, plus the heads. "
                   "Merged ÷ Σ single-task FLOPs: "
                   + ", ".join(f"seq {k} {v:.3f}" for k, v in r["flops"]["ratio"].items()) + ".")]
    return "\n".join(lines) + "\n"


def plot(r: dict) -> bytes:
    """latency.png: p50 against sequence length, one panel per configuration group."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = r["latency"]
    panels = [g for g in lat if not g.startswith("peer/")]
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    for ax, g in zip(axes.flat, panels):
        xs = [int(k) for k in lat[g]]
        ax.plot(xs, [v["members"]["merged"]["p50_ms"] for v in lat[g].values()], "o-", label="merged")
        ax.plot(xs, [v["single_sum"]["p50_ms"] for v in lat[g].values()], "s--", label="Σ single-task")
        peer = f"peer/{g.split('/')[1]}"
        if g.startswith("onnx/") and peer in lat:
            ax.plot(xs, [v["single_sum"]["p50_ms"] for v in lat[peer].values()], "^:", label="peer Σ (optimum)")
        ax.set_xticks(xs)
        ax.set_title(g)
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{len(r['tasks'])} tasks, batch 1: merged vs single-task models")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
