"""`ctb-mobile bench`: the merged model against the same tasks as N single-task models, in one run.

For every (target, precision) the merged store is exported once (fused layout), as `ctb-mobile
export` ships it (its guard, rows and fp32 choices: bench/bundles.py), and every task is exported
again as a single-task model (a store holding only that task's branch: the trunk up to the
branch's attach depth, then the branch). Every bundle runs through runtime_py's Predictor, as an app
runs it, on the requested threads. On real dev text cut to each sequence length, batch 1:

- latency p50 / p90 of the merged program and of each single-task program (and of both in PyTorch
  eager fp32, and of the peer), timed in rounds: each round times every configuration once, in a
  fresh random order, so the noise of a shared machine hits all of them alike;
- the ratio merged ÷ Σ single-task, per target, precision and length;
- bytes of the program files and peak memory (RSS of a fresh process that loads the program and
  runs one request, minus a process that only imports the runtime);
- achieved GFLOP/s (analytic FLOPs of the layers that run ÷ p50) against a GEMM peak measured in the
  same run: the best fp32 matrix product of torch, ONNX Runtime (MLAS) and XNNPACK at the model's shapes;
- the peer users would pick instead (target onnx): each task as a Hugging Face BERT model, exported
  with optimum's ONNX exporter and quantized with its ORT quantizer (dynamic int8), compared on
  latency, bytes, memory and dev metric.

It prints the CPU (model, avx2 / avx512_vnni / amx_int8) first and the threads each runtime uses.
Writes <out>/bench.json, bench.md and latency.png (atomically); bundles, single-task stores and peer
models are kept under <out> and reused when their sources have not changed.
"""

import time
from dataclasses import dataclass

from toolchain import UserError, __version__
from toolchain.bench.bundles import bundle, program_bytes, single_store
from toolchain.bench.flops import flops_table
from toolchain.bench.gemm import gemm_peak
from toolchain.bench.inputs import inputs_of_length, token_pool
from toolchain.bench.peer import peer_runner, prepare_peer
from toolchain.bench.report import markdown, plot, summarize_latency, summarize_members, summary
from toolchain.bench.request import BenchRequest, check_request
from toolchain.bench.timing import (
    WARMUP,
    bundle_call,
    cpu,
    cpu_line,
    eager_call,
    load_average,
    machine,
    measure_memory,
    onnx_call,
    onnx_session,
    open_bundle,
    percentiles,
    threads_line,
    threads_used,
    time_round_robin,
)
from toolchain.fsutil import write_bytes_atomic, write_json_atomic, write_text_atomic

__all__ = ["BenchRequest", "run_bench"]

REPORT_FORMAT = 1


@dataclass
class Subjects:
    """What one bench run measures, loaded once."""

    store_meta: dict  # the merged store's store.json
    metas: dict  # task -> BranchConfig of the merged store
    single_metas: dict  # task -> BranchConfig of its single-task model
    merged: object  # the merged model (PyTorch)
    devs: dict  # export.dev_sets
    feeds: dict  # length -> timed inputs by name
    bundles: dict  # (target, precision, "merged" | task) -> (bundle dir, manifest)
    eager: dict  # "merged" | task -> PyTorch model
    peer_info: dict
    peers: dict  # task -> peer_model(...) with "precisions"

    @property
    def tasks(self) -> list:
        return list(self.metas)

    @property
    def members(self) -> list:
        return ["merged", *self.metas]

    @property
    def peer_precisions(self) -> list:
        return list(self.peers[self.tasks[0]]["precisions"]) if self.peers else []


def run_bench(req: BenchRequest, *, log=print) -> dict:
    """Benchmark the merged store against its tasks as single-task models (and the optimum peer);
    writes out_dir/bench.json, bench.md, latency.png and returns the result dict."""
    import torch

    req = check_request(req)
    before = torch.get_num_threads()
    if req.threads:
        torch.set_num_threads(req.threads)
    try:
        result = measure(req, log)
    finally:
        torch.set_num_threads(before)
    write_json_atomic(req.out_dir / "bench.json", result)
    write_text_atomic(req.out_dir / "bench.md", markdown(result))
    write_bytes_atomic(req.out_dir / "latency.png", plot(result))
    log(f"wrote {req.out_dir / 'bench.md'}, bench.json, latency.png")
    return result


def measure(req: BenchRequest, log) -> dict:
    """The benchmark itself; returns the result dict that run_bench writes."""
    load_start, the_cpu = load_average(), cpu()
    log(cpu_line(the_cpu))
    max_seq_len = max(req.recipe.seq_len(t) for t in req.recipe.tasks)
    run_lengths = [n for n in req.lengths if n <= max_seq_len]
    s = load_subjects(req, run_lengths, log)
    groups, predictors, threads = open_runtimes(req, s)
    log(threads_line(threads))
    cfg = s.merged.trunk.cfg
    shapes = [(n, cfg.hidden_size, cfg.intermediate_size) for n in run_lengths] + [(1024, 1024, 1024)]
    gemm = gemm_peak(shapes, max(req.repeats, 10), req.threads)
    log(f"GEMM peak (fp32, best of {', '.join(f'{e} {g:.1f}' for e, g in gemm['engines'].items())}): "
        f"{gemm['peak_gflops']:.1f} GFLOP/s ({gemm['peak_engine']})")
    latency = time_latency(groups, s.feeds, req.repeats, log)
    flops = flops_table(s.metas, s.single_metas, run_lengths, cfg.hidden_size, cfg.intermediate_size)
    memory = measure_memory(memory_programs(req, s), s.feeds[run_lengths[-1]]["input_ids"][0].tolist(),
                            req.threads, log)
    result = {
        "schema": REPORT_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "toolchain_version": __version__, "recipe": str(req.recipe.path), "store": str(req.store_dir),
        "singles_from": str(req.singles_from), "trunk_fingerprint": s.store_meta["backbone_fingerprint"],
        "backbone": s.store_meta["backbone"], "machine": machine(the_cpu, threads, load_start),
        "max_seq_len": max_seq_len, "settings": settings(req),
        "tasks": [{"name": t, "type": m.type, "attach": m.attach, "layers": m.layers,
                   "single": [s.single_metas[t].attach, s.single_metas[t].layers]} for t, m in s.metas.items()],
        "not_run": {str(n): f"above the recipe's max_seq_len {max_seq_len} (exported programs are bounded by it)"
                    for n in req.lengths if n > max_seq_len},
        "gemm": gemm, "flops": flops, "latency": summarize_latency(latency, s.tasks, flops, gemm["peak_gflops"]),
        "bytes": summarize_members(program_sizes(req, s), s.tasks),
        "memory_mb": {"baseline_mb": memory.pop("baseline_mb"), "seq": run_lengths[-1],
                      **summarize_members(memory, s.tasks)},
        "dev_metric": measure_dev_metric(s, predictors, log), "peer": s.peer_info,
    }
    result["summary"] = summary(result)
    return result


def settings(req: BenchRequest) -> dict:
    return {"targets": list(req.targets), "precisions": list(req.precisions), "lengths": list(req.lengths),
            "repeats": req.repeats, "warmup": WARMUP, "batch": 1, "layout": "fused",
            "guard_examples": req.guard_examples,
            "order": "every configuration once per round, each round in a fresh seeded random order",
            "threads": req.threads, "runtime": "runtime_py.Predictor (bundles), PyTorch eager, ONNX Runtime (peer)",
            "onnxruntime": "CPU execution provider, intra-op spinning off"}


def load_subjects(req: BenchRequest, run_lengths: list, log) -> Subjects:
    """The merged model and its dev text, the single-task stores, every bundle (exported or reused),
    the PyTorch models and the peer."""
    from toolchain import backbone
    from toolchain.export import dev_sets
    from toolchain.store import list_branches, load_merged, read_store

    store_meta = read_store(req.store_dir)
    bb = backbone.load(req.recipe.backbone_spec)
    if bb.fingerprint != store_meta["backbone_fingerprint"]:
        raise UserError(f"the recipe's backbone {req.recipe.backbone!r} is not the trunk of store {req.store_dir} "
                        "(fingerprints differ); pass the recipe the store was built from")
    merged, tok, metas = load_merged(req.store_dir)
    tasks = list(metas)
    log(f"bench: {len(tasks)} tasks ({', '.join(tasks)}), targets {', '.join(req.targets)}, precisions "
        f"{', '.join(req.precisions)}, lengths {', '.join(map(str, run_lengths))}, {req.repeats} repeats")
    single_metas = {m.task: m for m in list_branches(req.singles_from)}
    if sorted(single_metas) != sorted(tasks) or read_store(req.singles_from)["backbone_fingerprint"] != bb.fingerprint:
        raise UserError(f"store {req.singles_from} must hold the same tasks ({', '.join(tasks)}) on the same trunk "
                        "to serve as the single-task models")
    singles = {t: single_store(req.singles_from, t, bb, req.recipe.backbone_spec,
                               req.out_dir / "single_stores" / t, log) for t in tasks}
    devs = dev_sets(req.recipe, tok, metas, req.guard_examples)
    pool = token_pool(devs, tok)
    feeds = {n: inputs_of_length(pool, tok, n) for n in run_lengths}
    bundles = export_bundles(req, singles, log)
    peer_info, peers = prepare_peer(req, bb, singles, devs, feeds, log)
    return Subjects(store_meta=store_meta, metas=metas, single_metas=single_metas, merged=merged, devs=devs,
                    feeds=feeds, bundles=bundles,
                    eager={"merged": merged, **{t: load_merged(singles[t])[0] for t in tasks}},
                    peer_info=peer_info, peers=peers)


def export_bundles(req: BenchRequest, singles: dict, log) -> dict:
    """(target, precision, "merged" | task) -> (bundle dir, manifest), each as export ships it."""
    out = {}
    for target in req.targets:
        for precision in req.precisions:
            for member, src in [("merged", req.store_dir), *singles.items()]:
                d = req.out_dir / "bundles" / (f"merged-{target}-{precision}" if member == "merged"
                                               else f"single-{member}-{target}-{precision}")
                out[target, precision, member] = d, bundle(req.recipe, src, target, precision, d, log)
    return out


def open_runtimes(req: BenchRequest, s: Subjects) -> tuple:
    """(groups, predictors, threads): one callable(feeds) per configuration, grouped as "<target>/<precision>",
    "eager/fp32" and "peer/<precision>"; the merged bundles' Predictors by group; and the threads each
    timed runtime uses, as its opened programs report them."""
    predictors = {(t, p, m): open_bundle(s.bundles[t, p, m][0], req.threads)
                  for t in req.targets for p in req.precisions for m in s.members}
    groups = {f"{t}/{p}": {m: bundle_call(predictors[t, p, m]) for m in s.members}
              for t in req.targets for p in req.precisions}
    groups["eager/fp32"] = {m: eager_call(model) for m, model in s.eager.items()}
    for p in s.peer_precisions:
        groups[f"peer/{p}"] = {t: onnx_call(onnx_session(s.peers[t][p], req.threads)) for t in s.tasks}
    threads = threads_used([(t, pred) for (t, _, _), pred in predictors.items()],
                           req.threads if s.peer_precisions else False)
    merged = {f"{t}/{p}": predictors[t, p, "merged"] for t in req.targets for p in req.precisions}
    return groups, merged, threads


def time_latency(groups: dict, feeds: dict, repeats: int, log) -> dict:
    """group -> length -> member -> p50 / p90 ms; at each length every configuration in the same rounds."""
    latency = {name: {} for name in groups}
    for n, x in feeds.items():
        calls = {(name, m): (lambda f=f, x=x: f(x)) for name, g in groups.items() for m, f in g.items()}
        log(f"timing seq {n}: {len(calls)} configurations x {repeats} rounds")
        times = time_round_robin(calls, repeats, seed=n)
        for name, g in groups.items():
            latency[name][str(n)] = {m: percentiles(times[name, m]) for m in g}
    return latency


def program_sizes(req: BenchRequest, s: Subjects) -> dict:
    """Bytes per group and member: the program files that run; for eager, the fp32 parameters."""
    size = {f"{t}/{p}": {m: program_bytes(*s.bundles[t, p, m]) for m in s.members}
            for t in req.targets for p in req.precisions}
    size["eager/fp32"] = {m: sum(x.numel() * x.element_size() for x in model.parameters())
                          for m, model in s.eager.items()}
    for p in s.peer_precisions:
        size[f"peer/{p}"] = {t: s.peers[t][p].stat().st_size for t in s.tasks}
    return size


def memory_programs(req: BenchRequest, s: Subjects) -> dict:
    """group -> member -> (target, program file, its input names): what the memory probe opens."""
    out = {}
    for t in req.targets:
        for p in req.precisions:
            out[f"{t}/{p}"] = {}
            for m in s.members:
                d, manifest = s.bundles[t, p, m]
                program = manifest["programs"][0]
                out[f"{t}/{p}"][m] = (t, d / program["file"], [i["name"] for i in program["inputs"]])
    for p in s.peer_precisions:
        out[f"peer/{p}"] = {t: ("onnx", s.peers[t][p], []) for t in s.tasks}
    return out


def measure_dev_metric(s: Subjects, predictors: dict, log) -> dict:
    """Per task: the dev metric of PyTorch fp32, of every merged bundle (its Predictor, on the dev rows'
    token ids) and of the peer, and each one's agreement with PyTorch fp32's predictions."""
    from toolchain.export import check

    log("dev metric on the recipe's dev sets")
    ours = {g: (lambda b, p=p: p.run(**b.feeds())) for g, p in predictors.items()}
    batch = {g: min(32, p.max_batch or 32) for g, p in predictors.items()}  # within the programs' batch axis
    batch.update({f"peer/{p}": 32 for p in s.peer_precisions})
    out = {}
    for t, (task, labels, dev, _) in s.devs.items():
        ref = check.outputs_on(dev, check.torch_runner(s.merged))
        row = out[t] = {"metric": task.metric, "examples": len(dev)}
        peer = {f"peer/{p}": peer_runner(onnx_session(s.peers[t][p]), t, task.type) for p in s.peer_precisions}
        for name, run_batch in {**ours, **peer}.items():
            c = check.compare(task, labels, dev, ref, check.outputs_on(dev, run_batch, batch_size=batch[name]))
            row["pytorch/fp32"] = c["reference"]
            row[name] = c["exported"]
            row.setdefault("agreement", {})[name] = c["agreement"]  # predictions equal to PyTorch fp32's
    return out
