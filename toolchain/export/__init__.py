"""Export a merged model store as a self-describing bundle for one target.

    bundle/
      model.<ext>            fused layout (or trunk.<ext> + branch_<task>.<ext> for the split layout)
      tokenizer.json, vocab.txt
      manifest.json          schema, inputs, programs, per task: name, type, output, labels, attach
                             depth, precision; max_seq_len; trunk fingerprint; sha256 of every file
      README.md              the model card

Targets are one module each, registered here: android (ExecuTorch + XNNPACK), ios (CoreML), onnx
(ONNX + ORT format). After an int8 export the quantization guard compares every task's dev metric
with PyTorch fp32; a task that drops more than the limit, or whose predictions agree with fp32 on
fewer than `min_agreement` of dev examples, has its branch kept in fp32 and the bundle is exported
again. If the agreement is still short, the disagreement comes from the shared int8 trunk: its word
embeddings and each trunk layer are measured alone in fp32, and they are then kept in fp32, most
helpful first, until the agreement holds; the branches kept for their agreement alone are then tried
in int8 again, one at a time. If the drop is still over the limit, or the agreement short with the
whole trunk in fp32 (the limit `verify` applies: the same `check.limits`, on the same rows:
`check.JUDGED_ROWS`), the export fails with the per-task report. That policy is `guard.next_attempt`;
`export_bundle` only loops export -> judge -> next_attempt. Nothing is written unless the whole
bundle succeeds (the previous bundle stays).
"""

import dataclasses
import importlib
from pathlib import Path

from runtime_py.bundle import file_sha256 as sha256  # noqa: F401
from runtime_py.targets import TARGETS, Target
from toolchain import UserError
from toolchain.export.guard import EMBEDDINGS, JUDGED_ROWS, TRUNK_LAYER  # noqa: F401  (keep_fp32 names)

LAYOUTS = ("fused", "split")


def target_of(target: str) -> Target:
    """The registered target (runtime_py.targets), or a UserError naming the known ones."""
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}; use one of: {', '.join(TARGETS)}, all")
    return TARGETS[target]


def backend(target: str):
    """The target's exporter module, once its package is known to be installed."""
    t = target_of(target)
    missing = t.missing()
    if missing:
        raise UserError(f"target {target} {missing}")
    return importlib.import_module(t.exporter)


def check_request(target: str, precision: str | None, layout: str):
    mod = backend(target)
    t = TARGETS[target]
    precision = precision or t.default_precision
    if precision not in t.precisions:
        raise UserError(f"precision {precision!r} is not supported for {target}; use one of: {', '.join(t.precisions)}")
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; use one of: {', '.join(LAYOUTS)}")
    return mod, precision


def dev_sets(recipe, tok, metas, limit: int):
    """task name -> (TaskConfig, labels, Encoded dev, examples) for every store task in the recipe.

    The branch's own label list is authoritative; dev rows whose label it lacks are left out."""
    from toolchain.data import encode, read_examples, unseen

    out = {}
    for name, meta in metas.items():
        try:
            task = recipe.task(name)
        except UserError:
            continue
        if limit:  # a copy: the caller's recipe keeps its own cap
            task = dataclasses.replace(task, max_dev_examples=min(task.max_dev_examples or limit, limit))
        labels = meta.labels
        known = set(labels)
        examples = [ex for ex in read_examples(recipe, task, "dev") if unseen(task, ex, known) is None]
        if examples:
            out[name] = (task, labels, encode(examples, tok, task, labels, recipe.seq_len(task)), examples)
    return out


def export_bundle(recipe, store_dir, target, precision=None, layout="fused", out_dir=None, *, max_drop=None,
                  guard_examples=JUDGED_ROWS, log=print, min_agreement=None) -> dict:
    """Export the store for one target into `out_dir` (default: the recipe's workspace bundle folder);
    returns the manifest. See the module docstring."""
    from toolchain.export import check, guard
    from toolchain.export import tokenizer as tokfiles
    from toolchain.export.bundle import Staging, inputs, part_schemes, quantization
    from toolchain.fsutil import atomic_dir, check_replaceable
    from toolchain.store import check_recipe, load_merged, read_store

    mod, precision = check_request(target, precision, layout)
    cfg = _guard_config(recipe.export, max_drop, min_agreement)  # checked before any work
    store_meta = read_store(store_dir)
    check_recipe(store_dir, store_meta, recipe)
    out_dir = _writable(out_dir or _default_out(recipe, target, layout, precision))
    check_replaceable(out_dir, "bundle", (store_dir, recipe.path))  # before the export's minutes of work
    model, tok, metas = load_merged(store_dir)
    max_seq_len = max(recipe.seq_len(t) for t in recipe.tasks)
    devs = dev_sets(recipe, tok, metas, guard_examples)
    limits = guard.Limits(cfg.max_metric_drop, check.limits(target, precision, cfg).get("agreement", 0.0),
                          model.trunk.depth)
    skipped = _guard_skipped(target, precision, log)
    quantized = precision.startswith("int")  # int8, int8-static, int4
    refs = {name: check.outputs_on(dev, check.torch_runner(model)) for name, (_, _, dev, _) in devs.items()} \
        if quantized and not skipped else None  # PyTorch fp32, to judge the quantized bundle against
    scheme = cfg.onnx_int8 if (target, precision) == ("onnx", "int8") else None  # per-token activations
    with atomic_dir(out_dir, kind="bundle", protect=(store_dir, recipe.path)) as tmp:
        example, calibration = inputs(devs, tok, max_seq_len, precision)
        staging = Staging(folder=tmp, mod=mod, target=target, precision=precision, layout=layout, model=model,
                          metas=metas, store_meta=store_meta, example=example, calibration=calibration, scheme=scheme,
                          tok_spec=tokfiles.write(tok, Path(store_dir) / "tokenizer", tmp, max_seq_len),
                          max_seq_len=max_seq_len, where=out_dir, log=log)
        attempt = guard.first_attempt(precision, guarded=refs is not None)
        if refs is None:  # nothing to judge: not quantized, or its programs cannot run here
            manifest, verdict = staging.export(attempt), guard.Verdict(True, attempt, None)
        else:
            manifest, verdict = _guard_export(staging, attempt, devs, refs, limits)
        for line in guard.near_limit(verdict.report or {}, limits.min_agreement):
            log(line)
        parts = part_schemes(verdict.attempt, metas, model.trunk.depth, precision)
        record = quantization(verdict, limits, scheme=scheme, skipped=skipped, parts=parts) if quantized else None
        return staging.finish(manifest, record, verdict.report)


def _guard_export(staging, attempt, devs, refs, limits) -> tuple:
    """(manifest, Verdict): the guard's order from `attempt` on the staged bundle; int4 on a backend that can
    run its module before lowering is searched there first (guard.settled), then exported."""
    from toolchain.export import check, guard

    if attempt.weights == "int4" and hasattr(staging.mod, "quantized"):
        attempt = _guarded(attempt, lambda a: staging.judge_simulated(a, devs, refs), limits, staging.log, simulated=True)
    last = {}

    def judge(a):  # export the attempt's programs, then judge them as verify does
        last["manifest"], last["attempt"] = staging.export(a), a
        return check.judge_bundle(staging.folder, devs, refs, a.judged or tuple(devs))

    verdict = _guarded(attempt, judge, limits, staging.log)
    if not verdict.ok:
        raise UserError(verdict.message)
    if verdict.attempt.exported != last["attempt"].exported:  # a trial failed: the bundle that passed
        return staging.export(verdict.attempt), verdict
    return last["manifest"], verdict


def _guarded(attempt, judge, limits, log, *, simulated=False):
    """Judge -> guard.next_attempt from `attempt` until the guard's Verdict. `simulated`: judge runs the
    module before lowering; the search ends at the Attempt to export for real (guard.settled), or at the
    first attempt no longer in int4 (those are judged as programs only)."""
    from toolchain.export import guard

    while True:
        if attempt.why:
            log(attempt.why)
        report = judge(attempt)
        log(guard.summary(report, simulated))
        verdict = guard.next_attempt(report, attempt, limits)
        if isinstance(verdict, guard.Verdict):
            return guard.settled(verdict.attempt) if simulated else verdict
        if simulated and verdict.weights != "int4":
            return verdict
        attempt = verdict


def _guard_config(export_cfg, max_drop, min_agreement):
    """The recipe's [export] with the command's --max-drop / min_agreement over it, checked."""
    cfg = dataclasses.replace(export_cfg, **{k: v for k, v in (("max_metric_drop", max_drop),
                                                               ("min_agreement", min_agreement)) if v is not None})
    cfg.check("export (--max-drop or [export])")
    return cfg


def _default_out(recipe, target, layout, precision) -> Path:
    """The bundle folder `ctb-mobile export` uses without --out-dir: <recipe's workspace>/bundles/..."""
    from toolchain.workspace import Workspace

    return Workspace(recipe.root / recipe.name).bundle(target, layout, precision)


def _writable(out_dir) -> Path:
    """Refuse an output that is a file, or whose parent cannot be written, before any work."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is not a folder; choose another --out-dir")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        probe = out_dir.parent / f".{out_dir.name}.probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output folder {out_dir.parent} is not writable ({e.strerror}); choose another --out-dir") from None
    return out_dir


def _guard_skipped(target, precision, log) -> str | None:
    """Why the guard cannot judge a quantized bundle here (None if it can, or the bundle is not quantized)."""
    if not precision.startswith("int") or TARGETS[target].runs_here():
        return None
    why = (f"{target} programs cannot run on this machine (CoreML prediction needs macOS); compare its outputs "
           "with the PyTorch original on a Mac before shipping")
    log(f"guard: not run: {why}")
    return why
