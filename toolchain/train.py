"""Partial fine-tuning (paper, section 3.1): per task, train only the top L layers and a head.

The bottom N - L layers (and the embeddings) form the frozen trunk. A sweep over L and seeds
writes one run folder per (task, L, seed) and a Table-1-style summary; L is then picked per task
by the recipe's [select] rule. Training goes through `accelerate`, so the same code runs on the
CPU, one GPU (mixed precision), or N processes under `torchrun --nproc_per_node N` (gloo on CPUs)
or `accelerate launch --multi_gpu` (nccl): each process trains on 1/N of every global batch, and
only the main process writes files and prints.

Output layout (all under --out):
  runs/<task>/L<L>-s<seed>/branch.safetensors   the trained branch (layers + head)
                           branch.json          task, type, labels, attach depth, layers, metric,
                                                backbone fingerprint, toolchain version
                           result.json          dev metric per epoch, losses, timings (written last)
                           ckpt/epoch-<k>/      accelerate's state after the last epoch (resume), then removed
  sweep.json, sweep.md, selected.json           the sweep table and the chosen L per task
"""

import dataclasses
import hashlib
import math
import shutil
import time
from pathlib import Path

import torch

from toolchain import UserError, __version__
from toolchain import cache as feature_cache
from toolchain.batch import by_length, pad_batch
from toolchain.branch_config import BranchConfig
from toolchain.data import IGNORE
from toolchain.fsutil import (check_replaceable, locked, read_json, write_bytes_atomic,
                              write_json_atomic, write_text_atomic)
from toolchain.metrics import score  # a task's metric of its predictions (lives in metrics: export uses it too)
from toolchain.workspace import Workspace


def say(console, message: str) -> None:
    """One line for the user on stderr (through the progress display's console when there is one)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def replaced(console, run_dir: Path, force: bool) -> None:
    """Delete a finished run that is about to be redone, naming it, why, and the score it had."""
    res = run_dir / "result.json"
    had = f", dev {read_json(res).get('dev_metric')}" if res.is_file() else ""
    check_replaceable(run_dir, "run")  # a run folder only, never a folder the user put there
    say(console, f"replacing {run_dir} ({'--force' if force else 'it was trained on other data or settings'}{had})")
    shutil.rmtree(run_dir)


def make_accelerator(mixed_precision: str = "auto"):
    """One Accelerator for CPU, one GPU, or N processes under torchrun / `accelerate launch`.

    On a machine without a GPU it is told so (`cpu=True`): that is what makes accelerate join the
    processes torchrun started through gloo instead of running each as a lone process. The recipe's
    batch_size is the global batch: N processes take batch_size / N rows each (`split_batches`), so
    a run gives the same steps, schedule and result whatever N is.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    cuda = torch.cuda.is_available()
    if mixed_precision == "auto":
        mixed_precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    cpu = not (cuda or torch.backends.mps.is_available())  # Apple GPUs keep accelerate's own choice
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def is_main_process() -> bool:
    """Whether this process writes files and prints (always, outside a multi-process launch)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def check_layers(layers, depth: int, where: str = "") -> None:
    for L in layers:
        if not 1 <= L <= depth:
            raise UserError(f"{where}L = {L} is outside 1..{depth}: the backbone has {depth} layers; "
                            f"choose --layers between 1 and {depth}")


class Batches:
    """Turns example indices into model-ready tensors, from cached trunk features or from token ids
    run through the frozen trunk."""

    def __init__(self, encoded, trunk, features=None, device="cpu"):
        self.encoded, self.trunk, self.features, self.device = encoded, trunk, features, device

    @torch.no_grad()
    def hidden(self, idx):
        if self.features is not None:
            rows = [self.features[i] for i in idx]
            hidden = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).to(self.device)
            mask = torch.zeros(hidden.shape[:2], dtype=torch.long, device=self.device)
            for r, x in enumerate(rows):
                mask[r, : len(x)] = 1
            return hidden, mask
        b = pad_batch([self.encoded.input_ids[i] for i in idx], [self.encoded.type_ids[i] for i in idx], self.device)
        return self.trunk(b.input_ids, b.token_type_ids, b.attention_mask), b.attention_mask

    def labels(self, idx, task_type, seq_len):
        if task_type == "regression":
            return torch.tensor([self.encoded.labels[i] for i in idx], dtype=torch.float, device=self.device)
        if task_type == "classification":
            return torch.tensor([self.encoded.labels[i] for i in idx], dtype=torch.long, device=self.device)
        out = torch.full((len(idx), seq_len), IGNORE, dtype=torch.long)
        for r, i in enumerate(idx):
            lab = self.encoded.labels[i]
            out[r, : len(lab)] = torch.tensor(lab)
        return out.to(self.device)


def loss_fn(task_type, out, labels):
    if task_type == "regression":
        return torch.nn.functional.mse_loss(out.float(), labels)
    if task_type == "tagging":
        return torch.nn.functional.cross_entropy(out.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
    return torch.nn.functional.cross_entropy(out.float(), labels, ignore_index=IGNORE)


@torch.no_grad()
def raw_outputs(branch, batches, n, batch_size=128) -> list:
    """Branch outputs for examples 0..n-1, unpadded: (C,) logits, a scalar, or (len, C) per piece."""
    branch.eval()
    outs = [None] * n
    for idx in by_length([len(x) for x in batches.encoded.input_ids[:n]], batch_size):
        hidden, mask = batches.hidden(idx)
        out = branch(hidden, mask).float().cpu()
        for r, i in enumerate(idx):
            outs[i] = out[r, : len(batches.encoded.input_ids[i])] if out.dim() == 3 else out[r]
    return outs


def predict(branch, batches, n, task_type):
    """Predictions for examples 0..n-1: label ids, floats, or per-piece label ids."""
    outs = raw_outputs(branch, batches, n)
    if task_type == "regression":
        return [o.item() for o in outs]
    if task_type == "classification":
        return [int(o.argmax()) for o in outs]
    return [o.argmax(-1).tolist() for o in outs]


def trunk_batches(bb, task, data, attach, accelerator, use_cache=True, cache_dir=None, progress=None):
    """Train and dev batch makers over the frozen trunk cut at `attach`, from the cache if asked."""
    from toolchain.model import build_trunk

    device = accelerator.device
    trunk = build_trunk(bb.cfg, bb.state, attach).to(device)
    feats, hits = {"train": None, "dev": None}, []
    if use_cache:
        for split, enc in (("train", data.train), ("dev", data.dev)):
            bar = progress.add_task(f"[cyan]cache {task.name} {split} d={attach}", total=len(enc)) if progress else None
            with accelerator.main_process_first():
                feats[split], hit = feature_cache.load_or_compute(
                    trunk, enc, bb.fingerprint, cache_dir, device,
                    on_batch=(lambda k, b=bar: progress.advance(b, k)) if progress else None)
            if progress:
                progress.update(bar, completed=len(enc), visible=False)
            hits.append(hit)
    train_b = Batches(data.train, trunk, feats["train"], device)
    dev_b = Batches(data.dev, trunk, feats["dev"], device)
    return train_b, dev_b, (all(hits) if hits else None)


def fit(branch, task, data, cfg, seed, run_dir, accelerator, train_b, dev_b, loss_of, progress=None, label=""):
    """The training loop shared by partial fine-tuning and distillation.

    `loss_of(model, idx, hidden, mask, labels)` runs the model on a batch (rows `idx`) and gives its loss. Checkpoints after every epoch under
    run_dir/ckpt and resumes from there; the data order depends only on (seed, epoch).
    Returns the trained (unwrapped) branch and the run state (losses, dev metric per epoch, timings).
    """
    from transformers import get_linear_schedule_with_warmup

    n_proc, rank = accelerator.num_processes, accelerator.process_index
    if cfg.batch_size % n_proc:
        raise UserError(f"batch_size = {cfg.batch_size} does not split over {n_proc} processes; "
                        f"set [train] batch_size to a multiple of {n_proc}")
    local_bs = cfg.batch_size // n_proc
    decay = [p for n, p in branch.named_parameters() if not (n.endswith("bias") or "norm" in n)]
    no_decay = [p for n, p in branch.named_parameters() if n.endswith("bias") or "norm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    n = len(data.train)
    n_local = math.ceil(n / n_proc)  # every process takes as many rows (the last ones wrap around)
    steps_per_epoch = math.ceil(n_local / local_bs)
    total = steps_per_epoch * cfg.epochs
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    accelerator.free_memory()  # forget the runs before this one: a checkpoint holds this run only
    branch, opt, sched = accelerator.prepare(branch, opt, sched)

    ckpt = Path(run_dir) / "ckpt"
    state = {"epoch": 0, "losses": [], "history": [], "epoch_seconds": [], "rows_per_process": [],
             "data": data_fingerprint(data)}
    state = resume(ckpt, accelerator, state)

    bar = progress.add_task(f"[green]{label}", total=total, completed=state["epoch"] * steps_per_epoch) \
        if progress else None
    for epoch in range(state["epoch"], cfg.epochs):
        te = time.perf_counter()
        branch.train()
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)  # same order whether resumed or not
        perm = torch.randperm(n, generator=g)
        # Process r takes rows r, r+N, ...: its local batch k and the others' make up global batch k.
        perm = perm.repeat(n_proc)[: n_local * n_proc][rank::n_proc]
        rows = 0
        for s in range(0, n_local, local_bs):
            idx = perm[s: s + local_bs].tolist()
            rows += len(idx)
            hidden, mask = train_b.hidden(idx)
            labels = train_b.labels(idx, task.type, hidden.shape[1])
            with accelerator.autocast():
                loss = loss_of(branch, idx, hidden, mask, labels)
            accelerator.backward(loss)  # under N processes, DDP averages the gradients here
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss = accelerator.reduce(loss.detach(), "mean").item()  # the global batch's loss
            if not math.isfinite(loss):  # every process sees the same reduced loss, so all stop together
                diverged(task, cfg, f"the loss is {loss} at step {epoch * steps_per_epoch + s // local_bs + 1} "
                         f"(epoch {epoch + 1})")
            state["losses"].append(loss)
            if progress:
                progress.update(bar, advance=1, description=f"[green]{label} loss {loss:.3f}")
        state["epoch_seconds"].append(time.perf_counter() - te)
        state["rows_per_process"].append(accelerator.gather(torch.tensor([rows], device=accelerator.device)).tolist())
        plain = accelerator.unwrap_model(branch)
        if not all(bool(torch.isfinite(p).all()) for p in plain.parameters()):
            diverged(task, cfg, f"the weights hold NaN or infinity after epoch {epoch + 1}")
        dev_metric = score(task, data.labels, data.dev, predict(plain, dev_b, len(data.dev), task.type))
        state["history"].append({"epoch": epoch + 1, task.metric: dev_metric})
        state["epoch"] = epoch + 1
        checkpoint(ckpt, accelerator, state)
    if progress:
        progress.update(bar, visible=False)
    return accelerator.unwrap_model(branch), state


def diverged(task, cfg, what: str):
    """Stop a training that left the finite numbers: nothing of this run is written as finished."""
    raise UserError(f"task {task.name!r}: training diverged: {what}; the learning rate (lr = {cfg.lr:g}) is likely "
                    "too high, or the labels are bad (a regression label far out of range); lower [train] lr "
                    "and train again")


def checkpoint(ckpt: Path, accelerator, state: dict) -> None:
    """Save the epoch's full training state with accelerate (weights, optimizer, scheduler and every
    process's RNGs, CUDA included) into ckpt/epoch-<k>; its trainer.json, written last, marks it
    complete, and only then is the previous epoch's folder removed."""
    where = ckpt / f"epoch-{state['epoch']}"
    where.mkdir(parents=True, exist_ok=True)
    accelerator.save_state(str(where), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(where / "trainer.json", state)
        for old in ckpt.glob("epoch-*"):
            if old != where:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def resume(ckpt: Path, accelerator, fresh: dict) -> dict:
    """The state of the last complete epoch checkpoint taken on the same data (loaded into the
    prepared model, optimizer, scheduler and RNGs), else `fresh`."""
    done = [d for d in ckpt.glob("epoch-*") if (d / "trainer.json").is_file() and d.name[6:].isdigit()]
    if not done:
        return fresh
    last = max(done, key=lambda d: int(d.name[6:]))
    saved = read_json(last / "trainer.json")
    if saved.get("data") != fresh["data"]:
        return fresh
    accelerator.load_state(str(last))  # accelerate loads its files with torch.load(weights_only=True)
    return saved


def _weights(module) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_run(run_dir: Path, branch, config: BranchConfig, result: dict, accelerator) -> None:
    """branch.safetensors + branch.json + result.json (written last: it marks the run complete)."""
    from safetensors.torch import save

    if accelerator.is_main_process:
        data = save(_weights(branch))
        write_bytes_atomic(run_dir / "branch.safetensors", data)
        config.replace(weights_sha256=hashlib.sha256(data).hexdigest()).save(run_dir)
        write_json_atomic(run_dir / "result.json", result)
        shutil.rmtree(run_dir / "ckpt", ignore_errors=True)


def branch_config(recipe, bb, task, data, attach, layers, metric_value, seed, **extra) -> BranchConfig:
    return BranchConfig(
        task=task.name, type=task.type, labels=list(data.labels), attach=attach, layers=layers, metric=task.metric,
        dev_metric=metric_value, seed=seed, max_seq_len=recipe.seq_len(task),
        pair=any(ex.text_pair is not None for ex in data.dev_examples), hidden_size=bb.cfg.hidden_size,
        backbone=recipe.backbone, backbone_fingerprint=bb.fingerprint, toolchain_version=__version__, **extra)


def data_fingerprint(data) -> str:
    return data.train.fingerprint()[:16] + data.dev.fingerprint()[:16]


def finished(run_dir: Path, data, settings: dict) -> dict | None:
    """The result of a finished run on exactly this data (same token ids) and settings, else None."""
    done = Path(run_dir) / "result.json"
    if not done.is_file():
        return None
    res = read_json(done)
    same = res["data_fingerprint"] == data_fingerprint(data) if "data_fingerprint" in res \
        else res.get("train_examples") == len(data.train)  # runs written before fingerprints were recorded
    return res if same and res.get("settings", settings) == settings else None


def run_result(state, task, data, accelerator, use_cache, cache_hit, cache_seconds, settings, **extra) -> dict:
    return {
        "task": task.name, **extra, "metric": task.metric, "dev_metric": state["history"][-1][task.metric],
        **{k: state[k] for k in ("history", "losses", "epoch_seconds", "rows_per_process")},
        "cache": use_cache, "cache_hit": cache_hit, "cache_seconds": cache_seconds,
        "train_examples": len(data.train), "dev_examples": len(data.dev), "dev_dropped": data.dropped_dev,
        "data_fingerprint": data_fingerprint(data), "settings": settings,
        "device": str(accelerator.device), "mixed_precision": accelerator.mixed_precision,
        "processes": accelerator.num_processes,
    }


def train_one(recipe, bb, task, data, L: int, seed: int, run_dir: Path, accelerator,
              use_cache: bool = True, cache_dir: Path | None = None, progress=None) -> dict:
    """Partially fine-tune the top L layers of `bb` on one task; write the run folder."""
    from accelerate.utils import set_seed

    from toolchain.model import build_branch

    cfg = recipe.train_for(task)
    check_layers([L], bb.depth, f"task {task.name!r}: ")
    run_dir = Path(run_dir)
    attach = bb.depth - L
    set_seed(seed)
    t0 = time.perf_counter()
    cache_dir = Path(cache_dir or Workspace.of_run(run_dir).cache)
    train_b, dev_b, hit = trunk_batches(bb, task, data, attach, accelerator, use_cache, cache_dir, progress)
    cache_seconds = time.perf_counter() - t0
    n_out = {"regression": 1}.get(task.type, len(data.labels))
    branch = build_branch(bb.cfg, bb.state, attach, L, task.type, n_out, cfg.dropout)
    branch, state = fit(branch, task, data, cfg, seed, run_dir, accelerator, train_b, dev_b,
                        lambda model, idx, hidden, mask, labels: loss_fn(task.type, model(hidden, mask), labels),
                        progress,
                        f"train {task.name} L={L} s={seed}")
    result = run_result(state, task, data, accelerator, use_cache, hit, cache_seconds, dataclasses.asdict(cfg),
                        layers=L, attach=attach, seed=seed)
    save_run(run_dir, branch, branch_config(recipe, bb, task, data, attach, L, result["dev_metric"], seed),
             result, accelerator)
    return result


# ---------------------------------------------------------------------------------------------
# Sweep and selection


def select_layers(scores: dict, rule) -> int:
    """Pick L from {L: dev metric} by the recipe's [select] rule (paper, section 3.1)."""
    if rule.rule == "best-in-range":
        inside = {L: s for L, s in scores.items() if rule.n_min <= L <= rule.n_max}
        if not inside:
            raise UserError(f"no swept L lies in n_min..n_max = {rule.n_min}..{rule.n_max}; widen [select] "
                            "or sweep those L")
        return max(sorted(inside), key=lambda L: inside[L])  # ties: the smaller L
    best = max(scores.values())
    threshold = best - abs(best) * rule.tolerance
    return min(L for L, s in scores.items() if s >= threshold)


def describe_rule(rule) -> str:
    if rule.rule == "best-in-range":
        return f"best dev metric with {rule.n_min} <= L <= {rule.n_max}"
    return f"smallest L within {rule.tolerance:.1%} (relative) of the best dev metric"


def summarize(recipe, tasks, layers, seeds, results: dict) -> dict:
    """results[(task, L, seed)] -> result dict. Cells are the max over seeds, as in the paper."""
    table, selected = {}, {}
    for t in tasks:
        cells = {}
        for L in layers:
            vals = [results[(t.name, L, s)]["dev_metric"] for s in seeds]
            cells[L] = {"max": max(vals), "mean": sum(vals) / len(vals), "seeds": vals}
        table[t.name] = {"metric": t.metric, "cells": {str(L): c for L, c in cells.items()}}
        chosen = select_layers({L: c["max"] for L, c in cells.items()}, recipe.select)
        best_seed = max(seeds, key=lambda s: results[(t.name, chosen, s)]["dev_metric"])
        selected[t.name] = {"layers": chosen, "seed": best_seed, "dev_metric": cells[chosen]["max"],
                            "metric": t.metric, "run": f"runs/{t.name}/L{chosen}-s{best_seed}"}
    return {"rule": describe_rule(recipe.select), "layers": layers, "seeds": seeds,
            "table": table, "selected": selected}


def sweep_markdown(summary: dict) -> str:
    names = list(summary["table"])
    lines = ["| L | " + " | ".join(f"{n} ({summary['table'][n]['metric']})" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for L in summary["layers"]:
        row = []
        for n in names:
            v = summary["table"][n]["cells"][str(L)]["max"]
            mark = "**" if summary["selected"][n]["layers"] == L else ""
            row.append(f"{mark}{v:.1f}{mark}")
        lines.append(f"| {L} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"Cells: dev metric, max over seeds {summary['seeds']}. Bold: the selected L "
                 f"({summary['rule']}).")
    return "\n".join(lines) + "\n"


def run_sweep(recipe, task_names=None, layers=None, seeds=None, out=None, use_cache=True,
              force=False, console=None) -> dict:
    """Validate everything first (nothing is written on bad input), then train every (task, L, seed)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from toolchain import backbone as backbones
    from toolchain.data import load_task

    tasks = [recipe.task(n) for n in task_names] if task_names else list(recipe.tasks)
    bb = backbones.load(recipe.backbone_spec)
    recipe.check_positions(bb.cfg)
    for t in tasks:
        check_layers(layers or [t.layers or max(1, bb.depth // 2)], bb.depth, f"task {t.name!r}: ")
    seeds = seeds or [recipe.train.seed]
    tok = bb.tokenizer()
    datas = {}
    accelerator = make_accelerator(recipe.train.mixed_precision)
    console = for_this_process(console, accelerator)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("[magenta]load data", total=len(tasks))
        for t in tasks:
            progress.update(bar, description=f"[magenta]load data: {t.name}")
            datas[t.name] = load_task(recipe, t, tok)
            for note in datas[t.name].notes:
                say(progress.console, note)
            progress.advance(bar)
        progress.update(bar, visible=False)

        ws = Workspace(Path(out))
        results = {}
        grid = [(t, L, s) for t in tasks for L in (layers or [t.layers or max(1, bb.depth // 2)]) for s in seeds]
        overall = progress.add_task("[bold]runs", total=len(grid))
        for t, L, s in grid:
            run_dir = ws.run(t.name, L, s)
            res = None if force else finished(run_dir, datas[t.name], dataclasses.asdict(recipe.train_for(t)))
            if res is not None:
                results[(t.name, L, s)] = res
                progress.advance(overall)
                continue
            if (force or (run_dir / "result.json").exists()) and accelerator.is_main_process:
                replaced(progress.console, run_dir, force)  # forced, or finished on other data
            accelerator.wait_for_everyone()
            results[(t.name, L, s)] = train_one(recipe, bb, t, datas[t.name], L, s, run_dir, accelerator,
                                                use_cache=use_cache, cache_dir=ws.cache, progress=progress)
            progress.advance(overall)

    task_layers = sorted({L for (_, L, _) in results})
    if layers is None:  # one L per task: the summary is per task, with its own L
        summary = {"rule": "recipe default L per task", "layers": task_layers, "seeds": seeds, "table": {},
                   "selected": {}}
        for t in tasks:
            L = t.layers or max(1, bb.depth // 2)
            best_seed = max(seeds, key=lambda s: results[(t.name, L, s)]["dev_metric"])
            summary["selected"][t.name] = {"layers": L, "seed": best_seed, "metric": t.metric,
                                           "dev_metric": results[(t.name, L, best_seed)]["dev_metric"],
                                           "run": f"runs/{t.name}/L{L}-s{best_seed}"}
    else:
        summary = summarize(recipe, tasks, layers, seeds, results)
    summary["backbone"] = recipe.backbone
    summary["depth"] = bb.depth
    summary["backbone_fingerprint"] = bb.fingerprint
    summary["runs"] = {f"{k[0]}/L{k[1]}-s{k[2]}": {"dev_metric": v["dev_metric"],
                                                   "seconds": sum(v["epoch_seconds"])} for k, v in results.items()}
    if not accelerator.is_main_process:
        return summary
    if layers is not None:
        write_text_atomic(ws.sweep_table, sweep_markdown(summary))
    write_json_atomic(ws.sweep, summary)
    selected_file = ws.selected  # kept across invocations: sweeping one task keeps the others
    with locked(selected_file, wait=120):  # another run on this workspace may be updating it too
        selected = read_json(selected_file) if selected_file.is_file() else {}
        write_json_atomic(selected_file, {**selected, **summary["selected"]})
    return summary


def for_this_process(console, accelerator):
    """The console itself on the main process; a silent one on the others (they print nothing)."""
    from rich.console import Console

    return console if accelerator.is_main_process else Console(quiet=True)
