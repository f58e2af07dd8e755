"""The bench's summary, markdown tables and latency plot.
"""

from toolchain.bench.timing import VECTOR_FLAGS, WARMUP, threads_line

GOAL_RATIO = 0.35  # merged ÷ Σ single-task latency, for 4 or more tasks


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


def _f(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def _table(header: list, rows: list) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def markdown(r: dict) -> str:
    """bench.md: the run's setting, then one section per kind of figure."""
    sections = [_setting, _headline, _latency, _bytes_and_memory, _peer, _dev_metric, _gemm_and_flops]
    return "\n".join(line for section in sections for line in section(r)) + "\n"


def _setting(r: dict) -> list:
    m = r["machine"]
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
        (f"Machine: {m['cpu_line']}; {m['cores']} cores; vector extensions: {ext} (torch kernels: "
         f"{m.get('torch_cpu_capability', '-')}); {threads_line(m['threads'])}; load average "
         f"{m['load_average']['start']} at the start and {m['load_average']['end']} at the end; {versions}."), "",
        (f"Batch 1, fused programs run by runtime_py's Predictor, real dev text cut to each length. {WARMUP} "
         f"warm-up calls, then {r['settings']['repeats']} rounds, each timing every configuration once in a fresh "
         "random order (p50 / p90 in ms). ONNX Runtime sessions (ours and the peer's) have intra-op spinning "
         "off, so an idle pool does not take the cores from the next configuration."), ""]
    busy = [x for x in m["load_average"].values() if x is not None and x > 0.5 * m["cores"]]
    if busy:
        lines += [(f"**The machine was busy** (load average up to {max(busy)} on {m['cores']} cores): absolute "
                   "times are noisy; the ratios are fairer, since every configuration was timed in the same "
                   "rounds."), ""]
    return lines + [f"- seq {k}: not run, {why}." for k, why in r["not_run"].items()]


def _headline(r: dict) -> list:
    s, g = r["summary"], r["gemm"]
    lines = ["", "## Headline", "",
             (f"Merged ÷ Σ single-task p50 latency (goal ≤ {GOAL_RATIO} for 4+ tasks), the merged program's "
              "speed-up against the merged model in PyTorch eager fp32, and its GFLOP/s as a fraction of the "
              f"fp32 GEMM peak measured in the same run ({s['gemm_peak_gflops']:.1f} GFLOP/s, "
              f"{g.get('peak_engine', 'torch')}, the best of {', '.join(g.get('engines', {'torch': 0}))}; "
              f"{g['threads']} thread{'s' if g['threads'] != 1 else ''})."), ""]
    rows = [[g, k, f"{ratio:.3f}", _f(s["speedup_vs_eager_fp32"].get(g, {}).get(k)), f"{s['peak_fraction'][g][k]:.1%}"]
            for g, by_len in s["ratio_p50"].items() for k, ratio in by_len.items()]
    lines += _table(["configuration", "seq", "merged ÷ Σ single", "× vs eager fp32", "% of GEMM peak"], rows)
    if s["goal_met"] is not None:
        met = [g for g, ok in s["goal_met"].items() if ok]
        lines += ["", f"Goal ≤ {GOAL_RATIO} met at every length by: {', '.join(met) or 'none'}."]
    return lines


def _latency(r: dict) -> list:
    tasks = [t["name"] for t in r["tasks"]]
    rows = []
    for g, by_len in r["latency"].items():
        for k, row in by_len.items():
            mem, tot = row["members"], row["single_sum"]
            merged = f"{mem['merged']['p50_ms']:.2f} / {mem['merged']['p90_ms']:.2f}" if "merged" in mem else "-"
            rows.append([g, k, merged, f"{tot['p50_ms']:.2f} / {tot['p90_ms']:.2f}",
                         *(f"{mem[t]['p50_ms']:.2f}" for t in tasks), _f(row.get("ratio_p50"), ".3f"),
                         _f(row.get("merged_gflops"), ".1f")])
    return ["", "## Latency (ms)", ""] + _table(
        ["configuration", "seq", "merged p50 / p90", "Σ single p50 / p90", *(f"{t} p50" for t in tasks),
         "merged ÷ Σ single", "merged GFLOP/s"], rows)


def _bytes_and_memory(r: dict) -> list:
    mm = r["memory_mb"]
    lines = ["", "## Bytes and peak memory", "",
             ("Bytes: the program files that run (`model.onnx`, `model.pte`; eager: the fp32 parameters). Peak "
              f"memory: peak RSS of a fresh process that loads the program and runs one request at seq {mm['seq']}, "
              "minus that of a process that only imports the runtime ("
              + ", ".join(f"{k}: {v:.0f} MB" for k, v in mm["baseline_mb"].items()) + ")."), ""]
    rows = [[g, _f(b.get("merged"), ","), f"{b['single_sum']:,}", _f(b.get("ratio"), ".3f"),
             _f(mm.get(g, {}).get("merged"), ".1f"), _f(mm.get(g, {}).get("single_sum"), ".1f"),
             _f(mm.get(g, {}).get("ratio"), ".3f")] for g, b in r["bytes"].items()]
    return lines + _table(["configuration", "merged bytes", "Σ single bytes", "ratio", "merged MB", "Σ single MB",
                           "ratio"], rows)


def _peer(r: dict) -> list:
    p, lat, mm = r["peer"], r["latency"], r["memory_mb"]
    lines = ["", "## The peer: the same tasks as single-task models through optimum", ""]
    if not p["run"]:
        return lines + [f"Not run: {p['reason']}."]
    checks = ", ".join(f"{t} {v['hf_max_abs']:.1e}" for t, v in p["tasks"].items())
    lines += [("Each task as a Hugging Face BERT (the backbone's layers below the attach depth, then the branch), "
               f"checked against our task model on real text (max |Δ|: {checks}), exported with "
               f"`{p['exporter']}` and quantized (int8) with {p['quantizer']}."), ""]
    rows = []
    for g, by_len in r["summary"]["merged_vs_peer_p50"].items():
        prec = g.split("/")[1]
        for k, ratio in by_len.items():
            rows.append([prec, k, f"{lat[f'onnx/{prec}'][k]['members']['merged']['p50_ms']:.2f}",
                         f"{lat[g][k]['single_sum']['p50_ms']:.2f}", f"{ratio:.3f}",
                         f"{r['bytes'][f'onnx/{prec}']['merged']:,}", f"{r['bytes'][g]['single_sum']:,}",
                         _f(mm[f"onnx/{prec}"]["merged"], ".1f"), _f(mm[g]["single_sum"], ".1f")])
    return lines + _table(["precision", "seq", "ours merged p50", "peer Σ p50", "ours ÷ peer", "ours bytes",
                           "peer Σ bytes", "ours MB", "peer Σ MB"], rows)


def _dev_metric(r: dict) -> list:
    if not r["dev_metric"]:
        return []
    cols = [c for c in next(iter(r["dev_metric"].values())) if "/" in c]
    rows = [[t, row["metric"], row["examples"], *(_f(row.get(c)) for c in cols)] for t, row in r["dev_metric"].items()]
    return ["", "## Dev metric", "",
            (f"On the recipe's dev sets (up to {r['settings']['guard_examples']} examples per task); ours is "
             "the merged bundle, the peer its single-task model for that task."), ""] + \
        _table(["task", "metric", "examples", *cols], rows) + _agreement(r)


def _agreement(r: dict) -> list:
    """Per task and program: its predictions' agreement with PyTorch fp32 (tagging: per labelled word piece)."""
    cols = [c for c in next(iter(r["dev_metric"].values())).get("agreement", {})]
    if not cols:
        return []
    rows = [[t, *(f"{100 * row['agreement'][c]:.2f} %" for c in cols)] for t, row in r["dev_metric"].items()]
    return ["", "Agreement with PyTorch fp32's predictions on the same rows:", ""] + _table(["task", *cols], rows)


def _gemm_and_flops(r: dict) -> list:
    lines = ["", "## GEMM peak and FLOPs", ""]
    lines += _table(["engine (fp32)", "m × k × n", "median ms", "GFLOP/s"],
                    [[g.get("engine", "torch"), f"{g['m']} × {g['k']} × {g['n']}", f"{g['median_ms']:.3f}",
                      f"{g['gflops']:.1f}"] for g in r["gemm"]["shapes"]])
    lines += [f"- {e}: not measured, {why}." for e, why in r["gemm"].get("skipped", {}).items()]
    return lines + ["", ("FLOPs are analytic, embeddings excluded: per layer 2·T·(4h² + 2h·ffn) + 4·T²·h, plus the "
                         "heads. Merged ÷ Σ single-task FLOPs: "
                         + ", ".join(f"seq {k} {v:.3f}" for k, v in r["flops"]["ratio"].items()) + ".")]


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
