"""Partial fine-tuning (paper, section 3.1): per task, train only the top L layers and a head.

The bottom N - L layers (and the embeddings) form the frozen trunk. A sweep over L and seeds
writes one run folder per (task, L, seed) and a Table-1-style summary; L is then picked per task
by the recipe's [select] rule. Training goes through `accelerate`, so the same code runs on the
CPU, one GPU (mixed precision), or N processes under `torchrun --nproc_per_node N` (gloo on CPUs)
or `accelerate launch --multi_gpu` (nccl): each process trains on 1/N of every global batch, and
only the main process writes files and prints.

Output layout (all under --out; toolchain.workspace names each path, toolchain.runs writes a run folder):
  runs/<task>/L<L>-s<seed>/                     one run folder per (task, L, seed)
  sweep.json, sweep.md, selected.json           the sweep table and the chosen L per task
"""

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from toolchain import UserError
from toolchain.data import IGNORE
from toolchain.features import Features, TrunkFeatures, predict, trunk_features
from toolchain.fsutil import locked, read_json, write_json_atomic, write_text_atomic
from toolchain.metrics import score
from toolchain.runs import Run, Setup, data_fingerprint, load_datas, run_or_reuse, run_result, save_run, start
from toolchain.workspace import Workspace


def check_layers(layers, depth: int, where: str = "") -> None:
    for L in layers:
        if not 1 <= L <= depth:
            raise UserError(f"{where}L = {L} is outside 1..{depth}: the backbone has {depth} layers; "
                            f"choose --layers between 1 and {depth}")


def loss_fn(task_type, out, labels):
    if task_type == "regression":
        return torch.nn.functional.mse_loss(out.float(), labels)
    if task_type == "tagging":
        return torch.nn.functional.cross_entropy(out.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
    return torch.nn.functional.cross_entropy(out.float(), labels, ignore_index=IGNORE)


# ---------------------------------------------------------------------------------------------
# The training loop


@dataclass(frozen=True)
class Split:
    """How each epoch's n rows split into steps over the processes: every process takes ceil(n / N) rows
    (the last ones wrap around), batch_size / N of them per step; process r takes rows r, r+N, ..., so its
    local batch k and the others' make up global batch k."""

    n: int
    processes: int
    rank: int
    local_batch: int

    @classmethod
    def of(cls, batch_size: int, n: int, accelerator) -> "Split":
        n_proc = accelerator.num_processes
        if batch_size % n_proc:
            raise UserError(f"batch_size = {batch_size} does not split over {n_proc} processes; "
                            f"set [train] batch_size to a multiple of {n_proc}")
        return cls(n, n_proc, accelerator.process_index, batch_size // n_proc)

    @property
    def rows(self) -> int:
        return math.ceil(self.n / self.processes)

    @property
    def steps(self) -> int:
        return math.ceil(self.rows / self.local_batch)

    def batches(self, seed: int, epoch: int):
        """This process's row indices, step by step; the order depends only on (seed, epoch)."""
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)  # same order whether resumed or not
        perm = torch.randperm(self.n, generator=g)
        perm = perm.repeat(self.processes)[: self.rows * self.processes][self.rank:: self.processes]
        for s in range(0, self.rows, self.local_batch):
            yield perm[s: s + self.local_batch].tolist()


@dataclass
class Step:
    """One optimisation step of a model that accelerate prepared, with its loss function
    `loss_of(model, idx, hidden, mask, labels)`."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: object
    loss_of: object
    accelerator: object

    def __call__(self, feats: TrunkFeatures, task_type: str, idx: list) -> float:
        """Train on rows `idx`; the global batch's loss."""
        hidden, mask = feats.hidden(idx)
        labels = feats.labels(idx, task_type, hidden.shape[1])
        with self.accelerator.autocast():
            loss = self.loss_of(self.model, idx, hidden, mask, labels)
        self.accelerator.backward(loss)  # under N processes, DDP averages the gradients here
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return self.accelerator.reduce(loss.detach(), "mean").item()


def optimizer(branch, cfg, total_steps: int):
    """AdamW (no weight decay on biases and norms) and a linear schedule with warmup."""
    from transformers import get_linear_schedule_with_warmup

    decay = [p for n, p in branch.named_parameters() if not (n.endswith("bias") or "norm" in n)]
    no_decay = [p for n, p in branch.named_parameters() if n.endswith("bias") or "norm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    return opt, get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total_steps), total_steps)


def fit(branch, run: Run, feats: Features, loss_of, setup: Setup):
    """The training loop shared by partial fine-tuning and distillation.

    `loss_of(model, idx, hidden, mask, labels)` runs the model on a batch (rows `idx`) and gives its loss.
    Checkpoints after every epoch under the run folder's ckpt/ and resumes from there; the data order
    depends only on (seed, epoch). Returns the trained (unwrapped) branch and the run state (losses, dev
    metric per epoch, timings).
    """
    acc, progress, cfg = setup.accelerator, setup.progress, run.cfg
    split = Split.of(cfg.batch_size, len(run.data.train), acc)
    opt, sched = optimizer(branch, cfg, split.steps * cfg.epochs)
    acc.free_memory()  # forget the runs before this one: a checkpoint holds this run only
    step = Step(*acc.prepare(branch, opt, sched), loss_of, acc)
    ckpt = run.folder / "ckpt"
    state = resume(ckpt, acc, {"epoch": 0, "losses": [], "history": [], "epoch_seconds": [],
                               "rows_per_process": [], "data": data_fingerprint(run.data)})
    bar = progress.add_task(f"[green]{run.label}", total=split.steps * cfg.epochs,
                            completed=state["epoch"] * split.steps) if progress else None
    for epoch in range(state["epoch"], cfg.epochs):
        te, rows = time.perf_counter(), 0
        step.model.train()
        for k, idx in enumerate(split.batches(run.seed, epoch)):
            rows += len(idx)
            loss = step(feats.train, run.task.type, idx)
            if not math.isfinite(loss):  # every process sees the same reduced loss, so all stop together
                diverged(run, f"the loss is {loss} at step {epoch * split.steps + k + 1} (epoch {epoch + 1})")
            state["losses"].append(loss)
            if progress:
                progress.update(bar, advance=1, description=f"[green]{run.label} loss {loss:.3f}")
        state["epoch_seconds"].append(time.perf_counter() - te)
        state["rows_per_process"].append(acc.gather(torch.tensor([rows], device=acc.device)).tolist())
        evaluate(acc.unwrap_model(step.model), run, feats.dev, epoch, state)
        state["epoch"] = epoch + 1
        checkpoint(ckpt, acc, state)
    if progress:
        progress.update(bar, visible=False)
    return acc.unwrap_model(step.model), state


def evaluate(branch, run: Run, dev: TrunkFeatures, epoch: int, state: dict) -> None:
    """Record the dev metric after `epoch` (weights that left the finite numbers stop the run)."""
    if not all(bool(torch.isfinite(p).all()) for p in branch.parameters()):
        diverged(run, f"the weights hold NaN or infinity after epoch {epoch + 1}")
    task, data = run.task, run.data
    dev_metric = score(task, data.labels, data.dev, predict(branch, dev, len(data.dev), task.type))
    state["history"].append({"epoch": epoch + 1, task.metric: dev_metric})


def diverged(run: Run, what: str):
    """Stop a training that left the finite numbers: nothing of this run is written as finished."""
    raise UserError(f"task {run.task.name!r}: training diverged: {what}; the learning rate (lr = {run.cfg.lr:g}) is "
                    "likely too high, or the labels are bad (a regression label far out of range); lower [train] lr "
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


# ---------------------------------------------------------------------------------------------
# One partial fine-tuning run


def teacher_run(setup: Setup, task, data, layers: int, seed: int) -> Run:
    """The run that fine-tunes a task's top `layers` layers with `seed`, in the workspace's runs/."""
    cfg = setup.recipe.train_for(task)
    return Run(task, data, layers, seed, setup.ws.run(task.name, layers, seed), cfg, dataclasses.asdict(cfg),
               f"train {task.name} L={layers} s={seed}")


def train_one(setup: Setup, run: Run) -> dict:
    """Partially fine-tune the top run.layers layers of the backbone on one task; write the run folder."""
    from accelerate.utils import set_seed

    from toolchain.model import build_branch

    bb, task = setup.bb, run.task
    check_layers([run.layers], bb.depth, f"task {task.name!r}: ")
    attach = bb.depth - run.layers
    set_seed(run.seed)
    t0 = time.perf_counter()
    feats = trunk_features(bb, run.data, attach, setup.accelerator, cache_dir=setup.cache_dir,
                           progress=setup.progress, name=task.name)
    cache_seconds = time.perf_counter() - t0
    n_out = {"regression": 1}.get(task.type, len(run.data.labels))
    branch = build_branch(bb.cfg, bb.state, attach, run.layers, task.type, n_out, run.cfg.dropout)
    branch, state = fit(branch, run, feats,
                        lambda model, idx, hidden, mask, labels: loss_fn(task.type, model(hidden, mask), labels),
                        setup)
    result = run_result(state, run, setup, feats, cache_seconds, layers=run.layers, attach=attach, seed=run.seed)
    save_run(setup, run, branch, result, attach=attach)
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


def summarize(recipe, ws: Workspace, tasks, layers, seeds, results: dict) -> dict:
    """results[(task, L, seed)] -> result dict. Cells are the max over seeds, as in the paper."""
    table, selected = {}, {}
    for t in tasks:
        cells = {}
        for L in layers:
            vals = [results[(t.name, L, s)]["dev_metric"] for s in seeds]
            cells[L] = {"max": max(vals), "mean": sum(vals) / len(vals), "seeds": vals}
        table[t.name] = {"metric": t.metric, "cells": {str(L): c for L, c in cells.items()}}
        chosen = select_layers({L: c["max"] for L, c in cells.items()}, recipe.select)
        selected[t.name] = _selected(ws, t, chosen, seeds, results)
    return {"rule": describe_rule(recipe.select), "layers": layers, "seeds": seeds,
            "table": table, "selected": selected}


def _selected(ws: Workspace, task, L: int, seeds, results: dict) -> dict:
    """selected.json's entry of a task trained at L: its best seed's run."""
    best = max(seeds, key=lambda s: results[(task.name, L, s)]["dev_metric"])
    return {"layers": L, "seed": best, "metric": task.metric, "dev_metric": results[(task.name, L, best)]["dev_metric"],
            "run": ws.relative(ws.run(task.name, L, best))}


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


def run_sweep(recipe, ws: Workspace, *, tasks=None, layers=None, seeds=None, use_cache=True, force=False,
              console=None) -> dict:
    """Validate everything first (nothing is written on bad input), then train every (task, L, seed) that has
    not finished yet; write the sweep table and merge the selected L per task into selected.json. Without
    `layers`, each task trains at its recipe's L (default: half the backbone's layers)."""
    from toolchain import backbone as backbones

    tasks = [recipe.task(n) for n in tasks] if tasks else list(recipe.tasks)
    bb = backbones.load(recipe.backbone_spec)
    recipe.check_positions(bb.cfg)
    task_layers = {t.name: layers or [t.layers or max(1, bb.depth // 2)] for t in tasks}
    for t in tasks:
        check_layers(task_layers[t.name], bb.depth, f"task {t.name!r}: ")
    seeds = seeds or [recipe.train.seed]
    with start(recipe, bb, ws, use_cache=use_cache, console=console) as setup:
        datas = load_datas(setup, tasks)
        grid = [(t, L, seed) for t in tasks for L in task_layers[t.name] for seed in seeds]
        overall = setup.progress.add_task("[bold]runs", total=len(grid))
        results = {}
        for t, L, seed in grid:
            run = teacher_run(setup, t, datas[t.name], L, seed)
            results[(t.name, L, seed)] = run_or_reuse(setup, run, lambda: train_one(setup, run), force=force)
            setup.progress.advance(overall)
    if layers is None:  # one L per task: the summary is per task, with its own L
        summary = {"rule": "recipe default L per task", "layers": sorted({L for (_, L, _) in results}),
                   "seeds": seeds, "table": {},
                   "selected": {t.name: _selected(ws, t, task_layers[t.name][0], seeds, results) for t in tasks}}
    else:
        summary = summarize(recipe, ws, tasks, layers, seeds, results)
    summary.update(backbone=recipe.backbone, depth=bb.depth, backbone_fingerprint=bb.fingerprint,
                   runs={f"{k[0]}/{ws.run(*k).name}": {"dev_metric": v["dev_metric"],
                                                       "seconds": sum(v["epoch_seconds"])} for k, v in results.items()})
    if setup.accelerator.is_main_process:
        write_sweep(ws, summary, table=layers is not None)
    return summary


def write_sweep(ws: Workspace, summary: dict, table: bool) -> None:
    """sweep.json (and sweep.md for a sweep over L); selected.json keeps the other tasks' choices."""
    if table:
        write_text_atomic(ws.sweep_table, sweep_markdown(summary))
    write_json_atomic(ws.sweep, summary)
    with locked(ws.selected, wait=120):  # another run on this workspace may be updating it too
        selected = read_json(ws.selected) if ws.selected.is_file() else {}
        write_json_atomic(ws.selected, {**selected, **summary["selected"]})
