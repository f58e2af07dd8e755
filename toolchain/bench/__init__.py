"""`ctb-mobile bench`: the merged model against the same tasks as N single-task models, in one run.

For every (target, precision) the merged store is exported once (fused layout), as `ctb-mobile
export` ships it (its guard, rows and fp32 choices: bench/bundles.py), and every task is exported
again as a single-task model (a store holding only that task's branch: the trunk up to the
branch's attach depth, then the branch). On real dev text cut to each sequence length, batch 1:

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

Writes <out>/bench.json, bench.md and latency.png (atomically); bundles, single-task stores and peer
models are kept under <out> and reused when their sources have not changed.
"""

import time

from toolchain import UserError, __version__
from toolchain.bench.flops import gemm_peak, model_flops
from toolchain.bench.peer import peer_runner, prepare_peer
from toolchain.bench.report import markdown, plot, summarize_latency, summarize_members, summary
from toolchain.bench.bundles import bundle, program_bytes, single_store
from toolchain.bench.request import Request, check_request, inputs_of_length, token_pool
from toolchain.bench.timing import (
    WARMUP,
    bundle_call,
    eager_call,
    load_average,
    machine,
    measure_memory,
    onnx_call,
    onnx_session,
    percentiles,
    runner,
    time_round_robin,
)
from toolchain.fsutil import write_bytes_atomic, write_json_atomic, write_text_atomic

SCHEMA = 1


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

    req = check_request(recipe, store_dir, out_dir, targets, precisions, lengths, repeats, peer, guard_examples,
                        threads, singles_from)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        result = measure(req, log)
    finally:
        torch.set_num_threads(before)
    out_dir = req.out_dir
    write_json_atomic(out_dir / "bench.json", result)
    write_text_atomic(out_dir / "bench.md", markdown(result))
    write_bytes_atomic(out_dir / "latency.png", plot(result))
    log(f"wrote {out_dir / 'bench.md'}, bench.json, latency.png")
    return result


def measure(req: Request, log) -> dict:
    """The benchmark itself; returns the result dict that run_bench writes."""
    import torch

    from toolchain import backbone
    from toolchain.export import dev_sets
    from toolchain.store import list_branches, load_merged, read_store

    recipe, store_dir, out_dir, singles_from = req.recipe, req.store_dir, req.out_dir, req.singles_from
    targets, precisions, lengths, repeats, threads = req.targets, req.precisions, req.lengths, req.repeats, req.threads
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
    devs = dev_sets(recipe, tok, metas, req.guard_examples)
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
                bundles[target, precision, member] = d, bundle(recipe, src, target, precision, d, log)
    eager = {"merged": merged, **{t: load_merged(singles[t])[0] for t in tasks}}
    peer_info, peers = prepare_peer(req.peer, targets, precisions, bb, singles, devs, feeds, out_dir, log)
    peer_precisions = list(peers[tasks[0]]["precisions"]) if peers else []

    # one callable(ids, mask, tt) per configuration, grouped: "<target>/<precision>", "eager/fp32", "peer/<p>"
    groups = {}
    for target in targets:
        for precision in precisions:
            groups[f"{target}/{precision}"] = {
                m: bundle_call(runner(target, bundles[target, precision, m][0], threads),
                                bundles[target, precision, m][1])
                for m in ["merged", *tasks]}
    groups["eager/fp32"] = {m: eager_call(model) for m, model in eager.items()}
    for precision in peer_precisions:
        groups[f"peer/{precision}"] = {t: onnx_call(onnx_session(peers[t][precision], threads)) for t in tasks}

    # GEMM peak, then latency at each length over every configuration in the same rounds
    shapes = [(n, cfg.hidden_size, cfg.intermediate_size) for n in run_lengths] + [(1024, 1024, 1024)]
    gemm = gemm_peak(shapes, max(repeats, 10), threads)
    log(f"GEMM peak (fp32, best of {', '.join(f'{e} {g:.1f}' for e, g in gemm['engines'].items())}): "
        f"{gemm['peak_gflops']:.1f} GFLOP/s ({gemm['peak_engine']})")
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
                     "guard_examples": req.guard_examples,
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
