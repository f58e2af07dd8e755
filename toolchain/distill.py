"""Distillation with teacher initialisation (paper, section 3.2), layer to layer as TinyBERT does.

A teacher is a partially fine-tuned run: trunk cut at depth x = N - L, and L task layers. Its
student attaches at depth x' <= x (the teacher's by default) and has l task layers. Seen from x',
the teacher is a stack of T = (x - x') + L layers (the frozen trunk layers x'..x-1, then its own)
and its head; the student is initialised from the bottom-most l layers of that stack and the head,
so with x' = x it starts from the teacher's bottom l fine-tuned layers, as in the paper.

Loss: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * hard-label loss (regression: MSE to
the teacher's outputs); tagging distils per token. With [distill] hidden_weight or
attention_weight > 0, student layer j is also matched to teacher stack layer (j+1)*T/l - 1: the MSE
of their hidden states and the KL of their attention distributions, over real tokens. The teacher
is frozen: without the layer losses its outputs on the training set are computed once, like the
trunk's; with them it runs beside the student on each batch.

Output: <out>/distill/<task>/l<l>-from-L<L>-s<seed>/ (a<x'>-l<l>-... when x' < x) with the same
files as a training run, and branch.json recording the teacher it came from.
"""

import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from toolchain import UserError
from toolchain.branch_config import BranchConfig, DistilledFrom, load_branch
from toolchain.data import IGNORE
from toolchain.features import raw_outputs, trunk_features
from toolchain.fsutil import locked, read_json, write_json_atomic
from toolchain.runs import Run, Setup, load_datas, run_or_reuse, run_result, save_run, start
from toolchain.train import fit, loss_fn
from toolchain.workspace import Workspace


def kd_loss(task_type, student, teacher, labels, temperature: float, alpha: float):
    labelled = task_type == "regression" or bool((labels != IGNORE).any())  # transfer rows have no label
    hard = loss_fn(task_type, student, labels) if labelled else student.float().sum() * 0
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


def with_transfer_set(task, data, others, max_len: int, limit: int = 0, seed: int = 0):
    """`data` with other tasks' training rows appended, unlabelled (label IGNORE): the student learns
    the teacher's outputs on them and the hard loss skips them. Rows already in `data`, longer than
    `max_len` or of the other input form (text pair or not) are left out; `limit` > 0 keeps a seeded
    sample of that many. Regression tasks keep their own rows only."""
    import random

    from toolchain.data import Encoded

    if task.type == "regression":
        return data
    own = data.train
    pair = any(any(tt) for tt in own.type_ids)
    seen = {tuple(ids) for ids in own.input_ids}
    rows = []
    for other in others:
        for ids, tt in zip(other.train.input_ids, other.train.type_ids):
            if tuple(ids) not in seen and len(ids) <= max_len and any(tt) == pair:
                seen.add(tuple(ids))
                rows.append((ids, tt))
    if limit and len(rows) > limit:
        rows = random.Random(seed).sample(rows, limit)
    unlabelled = [[IGNORE] * len(ids) if task.type == "tagging" else IGNORE for ids, _ in rows]
    train = Encoded(own.input_ids + [r[0] for r in rows], own.type_ids + [r[1] for r in rows],
                    own.labels + unlabelled, own.word_ids + [[None] * len(r[0]) for r in rows] if own.word_ids else [])
    return dataclasses.replace(data, train=train)


def teacher_batch(outs, idx, task_type, seq_len, device):
    rows = [outs[i] for i in idx]
    if task_type != "tagging":
        return torch.stack(rows).to(device)
    batch = torch.zeros(len(rows), seq_len, rows[0].shape[-1])
    for r, x in enumerate(rows):
        batch[r, : len(x)] = x
    return batch.to(device)


def layer_map(student_layers: int, teacher_layers: int) -> list:
    """Teacher layer matched to each student layer: uniform, the last to the last (TinyBERT)."""
    return [(j + 1) * teacher_layers // student_layers - 1 for j in range(student_layers)]


def hidden_loss(student, teacher, mask):
    """Mean squared error of two hidden states (batch, seq, hidden) over the real tokens."""
    per_token = (student.float() - teacher.float()).pow(2).mean(-1)
    keep = mask.bool()
    return per_token[keep].mean()


def attention_loss(student, teacher, mask):
    """KL(teacher || student) of attention distributions (batch, heads, seq, seq), averaged over the
    heads and the real query tokens; padded keys have probability 0 in both."""
    t, s = teacher.float(), student.float()
    kl = (t * (torch.log(t.clamp_min(1e-12)) - torch.log(s.clamp_min(1e-12)))).sum(-1)
    keep = mask.bool()[:, None, :].expand_as(kl)
    return kl[keep].mean()


def layer_losses(student_states, student_probs, teacher_states, teacher_probs, mask, kd):
    """hidden_weight * hidden-state MSE + attention_weight * attention KL, averaged over student layers."""
    pairs = list(zip(layer_map(len(student_states), len(teacher_states)), student_states, student_probs))
    total = 0.0
    for m, h, p in pairs:
        if kd.hidden_weight:
            total = total + kd.hidden_weight * hidden_loss(h, teacher_states[m], mask)
        if kd.attention_weight:
            total = total + kd.attention_weight * attention_loss(p, teacher_probs[m], mask)
    return total / len(pairs)


def teacher_stack(cfg, backbone_state, teacher, attach: int):
    """The teacher seen from depth `attach` <= its own: the frozen trunk layers attach..teacher.attach-1
    followed by its layers and head, as one frozen Branch."""
    from toolchain.model import Branch, init_layers_from

    below = teacher.attach - attach
    stack = Branch(cfg, attach, below + len(teacher.layers), teacher.head.task_type, teacher.head.out.out_features)
    init_layers_from(stack.layers[:below], backbone_state, attach)
    for i, layer in enumerate(teacher.layers):
        stack.layers[below + i].load_state_dict(layer.state_dict())
    stack.head.load_state_dict(teacher.head.state_dict())
    return stack.requires_grad_(False).eval()


def student_depth(tmeta, attach: int | None) -> tuple:
    """(x', T): the student's attach depth (default: the teacher's) and the teacher's layers above it,
    the most a student there can have; a depth above the teacher's is refused."""
    x = tmeta.attach if attach is None else attach
    if not 0 <= x <= tmeta.attach:
        raise UserError(f"--attach {x} must be within 0..{tmeta.attach} (the attach depth of {tmeta.task!r}'s "
                        "teacher); choose a smaller --attach")
    return x, tmeta.attach - x + tmeta.layers


def attach_depths(tmeta, attach) -> list:
    """The depths a task's students attach at: the teacher's own when `attach` names none; else those
    of `attach` at or below the teacher (one list serves deeper and shallower teachers alike). A list
    with none of them is refused."""
    if not attach:
        return [tmeta.attach]
    depths = [a for a in attach if 0 <= a <= tmeta.attach]
    if not depths:
        student_depth(tmeta, min(attach))  # the one-line error
    return depths


def student_from_teacher(cfg, teacher, layers: int, dropout: float):
    """An l-layer branch at the teacher's attach depth, from its bottom-most l layers and its head."""
    from toolchain.model import Branch

    student = Branch(cfg, teacher.attach, layers, teacher.head.task_type, teacher.head.out.out_features, dropout)
    for i in range(layers):
        student.layers[i].load_state_dict(teacher.layers[i].state_dict())
    student.head.load_state_dict(teacher.head.state_dict())
    return student


def student_run(setup: Setup, task, data, layers: int, seed: int, *, teacher_layers: int, attach=None) -> Run:
    """The run that distils a task's teacher (L = `teacher_layers`) into `layers` layers with `seed`;
    `attach` only when the student reads a shallower trunk than its teacher."""
    folder = setup.ws.student(task.name, layers, teacher_layers, seed, attach)
    return Run(task, data, layers, seed, folder, setup.recipe.distill_for(task), settings(setup.recipe, task),
               f"distill {task.name} L={teacher_layers}->l={layers} s={seed}")


def check_teacher(setup: Setup, task, data, teacher_dir) -> BranchConfig:
    """The teacher run's config, when it was trained on this backbone for this task and labels."""
    tmeta = BranchConfig.load(teacher_dir)
    where = f"teacher {teacher_dir}"
    if tmeta.backbone_fingerprint != setup.bb.fingerprint:
        raise UserError(f"{where} was trained on another backbone than {setup.recipe.backbone}; retrain the teacher")
    if tmeta.task != task.name or tmeta.labels != data.labels:
        raise UserError(f"{where} is for task {tmeta.task!r} with other labels; pick the teacher of {task.name!r}")
    return tmeta


def kd_objective(teacher, teacher_outs, task_type: str, kd, device):
    """fit's loss_of for a student: the KD loss against the teacher's outputs (computed once, `teacher_outs`),
    or, with layer losses, against the teacher run beside the student on each batch."""

    def loss_of(model, idx, hidden, mask, labels):
        if teacher_outs is not None:
            target = teacher_batch(teacher_outs, idx, task_type, labels.shape[-1] if labels.dim() > 1 else 0, device)
            return kd_loss(task_type, model(hidden, mask), target, labels, kd.temperature, kd.alpha)
        with torch.no_grad():
            target, t_states, t_probs = teacher(hidden, mask, with_states=True)
        out, states, probs = model(hidden, mask, with_states=True)
        if task_type == "tagging":
            target = target * mask[..., None]  # padding rows are zero, as in the cached outputs
        return (kd_loss(task_type, out, target.float(), labels, kd.temperature, kd.alpha)
                + layer_losses(states, probs, t_states, t_probs, mask, kd))

    return loss_of


def distill_one(setup: Setup, run: Run, teacher_dir, *, attach: int | None = None) -> dict:
    """Distil the teacher run in `teacher_dir` into the student `run` (run.layers layers at depth `attach`,
    by default the teacher's); write the run folder."""
    from accelerate.utils import set_seed

    bb, task, kd, dev = setup.bb, run.task, setup.recipe.distill, setup.accelerator.device
    teacher_dir = Path(teacher_dir)
    tmeta = check_teacher(setup, task, run.data, teacher_dir)
    attach, depth = student_depth(tmeta, attach)
    if not 1 <= run.layers <= depth:
        raise UserError(f"student layers l = {run.layers} must be within 1..{depth} (the teacher's layers above "
                        f"depth {attach}); choose a smaller --layers")
    teacher = teacher_stack(bb.cfg, bb.state, load_branch(bb.cfg, teacher_dir, tmeta), attach).to(dev)
    set_seed(run.seed)
    t0 = time.perf_counter()
    feats = trunk_features(bb, run.data, attach, setup.accelerator, cache_dir=setup.cache_dir,
                           progress=setup.progress, name=task.name)
    by_layer = bool(kd.hidden_weight or kd.attention_weight)
    teacher_outs = None if by_layer else raw_outputs(teacher, feats.train, len(run.data.train))
    cache_seconds = time.perf_counter() - t0
    student = student_from_teacher(bb.cfg, teacher, run.layers, run.cfg.dropout)
    student, state = fit(student, run, feats, kd_objective(teacher, teacher_outs, task.type, kd, dev), setup)
    result = run_result(state, run, setup, feats, cache_seconds, layers=run.layers,
                        labelled_examples=sum(_labelled(y) for y in run.data.train.labels), attach=attach,
                        seed=run.seed, teacher_layers=tmeta.layers, teacher_attach=tmeta.attach,
                        teacher_dev_metric=tmeta.dev_metric)
    teacher_of = DistilledFrom(str(teacher_dir), tmeta.layers, tmeta.dev_metric, kd.temperature, kd.alpha,
                               tmeta.attach, kd.hidden_weight, kd.attention_weight)
    save_run(setup, run, student, result, attach=attach, distilled_from=teacher_of)
    return result


def _labelled(label) -> bool:
    return any(x != IGNORE for x in label) if isinstance(label, list) else label != IGNORE


def settings(recipe, task) -> dict:
    """What a student's result depends on besides its data: training and distillation settings (the
    epochs it trained for, not [distill] epochs, which may be 0 for "the [train] epochs"; not which
    students `distill` makes, [distill] layers and attach)."""
    kd = {k: v for k, v in dataclasses.asdict(recipe.distill).items() if k not in ("layers", "attach")}
    return {**kd, **dataclasses.asdict(recipe.distill_for(task))}


def teacher_dir_for(ws: Workspace, task: str, teacher_layers: int | None) -> Path:
    """The teacher run: the sweep's selection for the task, or its best seed at --teacher-layers."""
    if teacher_layers is None:
        sel = ws.selected
        if not sel.is_file():
            raise UserError(f"no {sel}; run `ctb-mobile train` (a sweep) first or pass --teacher-layers")
        chosen = read_json(sel, "rerun `ctb-mobile train`")
        if task not in chosen:
            raise UserError(f"task {task!r} has no selected teacher in {sel}; train it first or pass --teacher-layers")
        return ws.root / chosen[task]["run"]
    runs = [r for r in ws.seeds_of(task, teacher_layers) if (r / "result.json").is_file()]
    if not runs:
        raise UserError(f"no finished teacher run for task {task!r} with L = {teacher_layers} under {ws.root / 'runs'}; "
                        f"train it with: ctb-mobile train RECIPE -t {task} --layers {teacher_layers}")
    return max(runs, key=lambda r: read_json(r / "result.json")["dev_metric"])


def run_distill(recipe, ws: Workspace, *, tasks=None, layers=None, teacher_layers=None, seeds=None, attach=None,
                use_cache=True, force=False, console=None) -> dict:
    """Distil each task's teacher into students of each size in `layers` (default: [distill] layers), at
    each depth in `attach` (default: [distill] attach) at or below the teacher's (none: the teacher's own);
    write distill.json. Everything is checked before any training."""
    from toolchain import backbone as backbones

    layers, attach = layers or recipe.distill.layers, attach or recipe.distill.attach
    tasks = [recipe.task(n) for n in tasks] if tasks else list(recipe.tasks)
    seeds = seeds or [recipe.train.seed]
    teachers = {t.name: teacher_dir_for(ws, t.name, teacher_layers) for t in tasks}
    bb = backbones.load(recipe.backbone_spec)
    recipe.check_positions(bb.cfg)
    bad = [n for n in layers if n < 1]
    if bad:
        raise UserError(f"student layers l = {bad[0]} must be at least 1; e.g. --layers 1,2,3")
    tmetas = {t.name: BranchConfig.load(teachers[t.name]) for t in tasks}
    depths = {t.name: attach_depths(tmetas[t.name], attach) for t in tasks}  # fails before any training
    summary = read_json(ws.distilled) if ws.distilled.is_file() else {}
    with start(recipe, bb, ws, use_cache=use_cache, console=console) as setup:
        datas = distill_datas(setup, tasks)
        for t in tasks:
            tdir, tmeta = teachers[t.name], tmetas[t.name]
            entry = summary.setdefault(t.name, {"metric": t.metric, "students": {}})
            entry["teacher"] = {"run": ws.relative(tdir) if tdir.is_relative_to(ws.root) else str(tdir),
                                "attach": tmeta.attach, "layers": tmeta.layers, "dev_metric": tmeta.dev_metric}
            for x, n, s in students(tmeta, depths[t.name], layers, seeds):
                run = student_run(setup, t, datas[t.name], n, s, teacher_layers=tmeta.layers,
                                  attach=None if x == tmeta.attach else x)
                res = run_or_reuse(setup, run, lambda: distill_one(setup, run, tdir, attach=x), force=force)
                keep_best(entry, x, n, res, ws.relative(run.folder))
    if setup.accelerator.is_main_process:
        summary = write_distilled(ws, summary, tasks)
    return summary


def students(tmeta, depths, layers, seeds):
    """(attach, layers, seed) of every student of a teacher: at each depth, the sizes the teacher's layers
    above that depth can give (a student deeper than its teacher has nothing to distil)."""
    for x in depths:
        depth = student_depth(tmeta, x)[1]
        yield from ((x, n, s) for n in layers if n <= depth for s in seeds)


def distill_datas(setup: Setup, tasks) -> dict:
    """Each task's data; with [distill] transfer = "recipe", its training rows plus every other task's,
    unlabelled."""
    recipe = setup.recipe
    if recipe.distill.transfer != "recipe":
        return load_datas(setup, tasks)
    datas = load_datas(setup, recipe.tasks)
    return {t.name: with_transfer_set(t, datas[t.name], [d for n, d in datas.items() if n != t.name],
                                      recipe.seq_len(t), recipe.distill.transfer_max, recipe.train.seed)
            for t in tasks}


def keep_best(entry: dict, attach: int, layers: int, res: dict, run: str) -> None:
    """distill.json's student of a task at (attach, layers): the best seed so far."""
    key = f"{attach},{layers}"
    prev = entry["students"].get(key)
    if prev is None or res["dev_metric"] >= prev["dev_metric"]:
        entry["students"][key] = {"attach": attach, "layers": layers, "dev_metric": res["dev_metric"], "run": run}


def write_distilled(ws: Workspace, summary: dict, tasks) -> dict:
    """Merge these tasks' entries into distill.json, keeping what other runs on this workspace wrote meanwhile."""
    with locked(ws.distilled, wait=120):
        current = read_json(ws.distilled) if ws.distilled.is_file() else {}
        summary = {**current, **{t.name: summary[t.name] for t in tasks if t.name in summary}}
        write_json_atomic(ws.distilled, summary)
    return summary
