"""Distillation with teacher initialisation (paper, section 3.2).

A teacher is a partially fine-tuned run: trunk cut at depth x = N - L, and L task layers. Its
student keeps the same attach depth x and has l <= L task layers, initialised from the teacher's
bottom-most l fine-tuned layers and the teacher's head. It is trained with vanilla knowledge
distillation: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * hard-label loss. Tagging
distils per token (every real word piece); regression distils on the teacher's outputs (MSE).
The teacher is frozen, so its outputs on the training set are computed once, like the trunk's.

Output: <out>/distill/<task>/l<l>-from-L<L>-s<seed>/ with the same files as a training run, and
branch.json recording the teacher it came from.
"""

import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from toolchain import UserError
from toolchain.branch_config import BranchConfig, DistilledFrom
from toolchain.fsutil import read_json
from toolchain.train import (
    branch_config,
    finished,
    fit,
    loss_fn,
    raw_outputs,
    replaced,
    run_result,
    save_run,
    say,
    trunk_batches,
)
from toolchain.workspace import Workspace


def kd_loss(task_type, student, teacher, labels, temperature: float, alpha: float):
    hard = loss_fn(task_type, student, labels)
    student = student.float()
    if task_type == "regression":
        return alpha * F.mse_loss(student, teacher) + (1 - alpha) * hard
    t = temperature
    log_p_student = F.log_softmax(student / t, dim=-1)
    p_teacher = F.softmax(teacher / t, dim=-1)
    kl = (p_teacher * (torch.log(p_teacher.clamp_min(1e-12)) - log_p_student)).sum(-1)
    if task_type == "tagging":  # teacher rows for padding are zero-filled: skip them
        valid = teacher.abs().sum(-1) > 0
        kl = kl[valid]
    return alpha * t * t * kl.mean() + (1 - alpha) * hard


def teacher_batch(outs, idx, task_type, seq_len, device):
    rows = [outs[i] for i in idx]
    if task_type != "tagging":
        return torch.stack(rows).to(device)
    batch = torch.zeros(len(rows), seq_len, rows[0].shape[-1])
    for r, x in enumerate(rows):
        batch[r, : len(x)] = x
    return batch.to(device)


def student_from_teacher(cfg, teacher, layers: int, dropout: float):
    from toolchain.model import Branch

    student = Branch(cfg, teacher.attach, layers, teacher.head.task_type, teacher.head.out.out_features, dropout)
    for i in range(layers):
        student.layers[i].load_state_dict(teacher.layers[i].state_dict())
    student.head.load_state_dict(teacher.head.state_dict())
    return student


def distill_one(recipe, bb, task, data, teacher_dir, layers: int, seed: int, run_dir, accelerator,
                use_cache=True, cache_dir=None, progress=None) -> dict:
    from accelerate.utils import set_seed

    from toolchain.store import load_branch

    teacher_dir, run_dir = Path(teacher_dir), Path(run_dir)
    tmeta = BranchConfig.load(teacher_dir)
    where = f"teacher {teacher_dir}"
    if tmeta.backbone_fingerprint != bb.fingerprint:
        raise UserError(f"{where} was trained on another backbone than {recipe.backbone}; retrain the teacher")
    if tmeta.task != task.name or tmeta.labels != data.labels:
        raise UserError(f"{where} is for task {tmeta.task!r} with other labels; pick the teacher of {task.name!r}")
    if not 1 <= layers <= tmeta.layers:
        raise UserError(f"student layers l = {layers} must be within 1..{tmeta.layers} (the teacher's "
                        "fine-tuned layers); choose a smaller --layers")
    cfg = recipe.train_for(task)
    kd = recipe.distill
    teacher = load_branch(bb.cfg, teacher_dir, tmeta).to(accelerator.device)
    set_seed(seed)
    t0 = time.perf_counter()
    train_b, dev_b, hit = trunk_batches(bb, task, data, tmeta.attach, accelerator, use_cache,
                                        cache_dir or Workspace.of_run(run_dir).cache, progress)
    teacher_outs = raw_outputs(teacher, train_b, len(data.train))
    cache_seconds = time.perf_counter() - t0
    student = student_from_teacher(bb.cfg, teacher, layers, cfg.dropout)
    dev = accelerator.device

    def loss_of(idx, out, labels):
        target = teacher_batch(teacher_outs, idx, task.type, labels.shape[-1] if labels.dim() > 1 else 0, dev)
        return kd_loss(task.type, out, target, labels, kd.temperature, kd.alpha)

    student, state = fit(student, task, data, cfg, seed, run_dir, accelerator, train_b, dev_b, loss_of, progress,
                         f"distill {task.name} L={tmeta.layers}->l={layers} s={seed}")
    result = run_result(state, task, data, accelerator, use_cache, hit, cache_seconds, settings(recipe, task),
                        layers=layers,
                        attach=tmeta.attach, seed=seed, teacher_layers=tmeta.layers,
                        teacher_dev_metric=tmeta.dev_metric)
    teacher_of = DistilledFrom(str(teacher_dir), tmeta.layers, tmeta.dev_metric, kd.temperature, kd.alpha)
    config = branch_config(recipe, bb, task, data, tmeta.attach, layers, result["dev_metric"], seed,
                           distilled_from=teacher_of)
    save_run(run_dir, student, config, result, accelerator)
    return result


def settings(recipe, task) -> dict:
    """What a student's result depends on besides its data: training and distillation settings."""
    return {**dataclasses.asdict(recipe.train_for(task)), **dataclasses.asdict(recipe.distill)}


def teacher_dir_for(out: Path, task: str, teacher_layers: int | None) -> Path:
    """The teacher run: the sweep's selection for the task, or its best seed at --teacher-layers."""
    ws = Workspace(Path(out))
    if teacher_layers is None:
        sel = ws.selected
        if not sel.is_file():
            raise UserError(f"no {sel}; run `ctb-mobile train` (a sweep) first or pass --teacher-layers")
        chosen = read_json(sel, "rerun `ctb-mobile train`")
        if task not in chosen:
            raise UserError(f"task {task!r} has no selected teacher in {sel}; train it first or pass --teacher-layers")
        return ws.root / chosen[task]["run"]
    runs = sorted(ws.runs_of(task).glob(f"L{teacher_layers}-s*/result.json"))
    if not runs:
        raise UserError(f"no finished teacher run for task {task!r} with L = {teacher_layers} under {ws.root / 'runs'}; "
                        f"train it with: ctb-mobile train RECIPE -t {task} --layers {teacher_layers}")
    best = max(runs, key=lambda p: read_json(p)["dev_metric"])
    return best.parent


def run_distill(recipe, task_names=None, layers=(1, 2, 3), teacher_layers=None, seeds=None, out=None,
                use_cache=True, force=False, console=None) -> dict:
    """Distil each task's teacher into students of each size in `layers`; write distill.json."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from toolchain import backbone as backbones
    from toolchain.data import load_task
    from toolchain.fsutil import locked, write_json_atomic
    from toolchain.train import for_this_process, make_accelerator

    out = Path(out)
    tasks = [recipe.task(n) for n in task_names] if task_names else list(recipe.tasks)
    seeds = seeds or [recipe.train.seed]
    teachers = {t.name: teacher_dir_for(out, t.name, teacher_layers) for t in tasks}
    bb = backbones.load(recipe.backbone_spec)
    recipe.check_positions(bb.cfg)
    tok = bb.tokenizer()
    bad = [n for n in layers if n < 1]
    if bad:
        raise UserError(f"student layers l = {bad[0]} must be at least 1; e.g. --layers 1,2,3")
    for t in tasks:
        BranchConfig.load(teachers[t.name])  # a missing or broken teacher fails before any training
    ws = Workspace(out)
    summary_path = ws.distilled
    summary = read_json(summary_path) if summary_path.is_file() else {}
    accelerator = make_accelerator(recipe.train.mixed_precision)
    console = for_this_process(console, accelerator)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        datas = {t.name: load_task(recipe, t, tok) for t in tasks}
        for note in (n for d in datas.values() for n in d.notes):
            say(progress.console, note)
        for t in tasks:
            tdir = teachers[t.name]
            tmeta = BranchConfig.load(tdir)
            entry = summary.setdefault(t.name, {"metric": t.metric, "students": {}})
            entry["teacher"] = {"run": str(tdir.relative_to(out)) if tdir.is_relative_to(out) else str(tdir),
                                "attach": tmeta.attach, "layers": tmeta.layers, "dev_metric": tmeta.dev_metric}
            for n in layers:
                if n > tmeta.layers:  # KD-n of an L < n teacher is the teacher itself: nothing to do
                    continue
                for s in seeds:
                    run_dir = ws.student(t.name, n, tmeta.layers, s)
                    res = None if force else finished(run_dir, datas[t.name], settings(recipe, t))
                    if res is None:
                        if (force or (run_dir / "result.json").exists()) and accelerator.is_main_process:
                            replaced(progress.console, run_dir, force)  # forced, or finished on other data
                        accelerator.wait_for_everyone()
                        res = distill_one(recipe, bb, t, datas[t.name], tdir, n, s, run_dir, accelerator,
                                          use_cache, ws.cache, progress)
                    key = f"{tmeta.attach},{n}"
                    prev = entry["students"].get(key)
                    if prev is None or res["dev_metric"] >= prev["dev_metric"]:
                        entry["students"][key] = {"attach": tmeta.attach, "layers": n,
                                                  "dev_metric": res["dev_metric"],
                                                  "run": str(run_dir.relative_to(out))}
    if not accelerator.is_main_process:
        return summary
    with locked(summary_path, wait=120):  # keep what other runs on this workspace wrote meanwhile
        current = read_json(summary_path) if summary_path.is_file() else {}
        summary = {**current, **{t.name: summary[t.name] for t in tasks if t.name in summary}}
        write_json_atomic(summary_path, summary)
    return summary
