"""`ctb-mobile verify`: run an exported bundle through runtime_py and the originals through PyTorch on
real dev text, and say whether the bundle may ship.

Originals: the merged model (the store) and each task's single-task model before merging (the
branch's training or distillation run folder on the original backbone). Checks, each pass/fail:
  bundle        manifest and checksums (a truncated or modified file fails here)
  trunk         the bundle's trunk fingerprint is the store's
  labels        per task: type, attach depth and label list equal training's
  tokenizer     the bundle tokenizes every dev text to the token ids training used
  merge         merged model = single-task model per task (max abs <= 1e-4)
  parity        per task, bundle vs merged model, with the export guard's limits (check.limits:
                fp32 max abs; quantized prediction agreement and dev-metric drop, from the
                recipe's [export] where it sets them); a failing detail starts with FAIL
Writes verify.json, verify.md and golden.json (test vectors for the demo apps) into the report folder.
"""

import json
from pathlib import Path

import numpy as np

from toolchain import UserError
from toolchain.export.guard import JUDGED_ROWS
from toolchain.fsutil import check_replaceable, write_json_atomic, write_text_atomic

MERGE_TOL = 1e-4
GOLDEN_EDGE_CASES = ["", "wake me up at 7 am tomorrow", "Réveille-moi à 7h — café ☕ please",
                     "play\tsome\x07 jazz\x00 now", "what is " + "very " * 200 + "long"]


def _check(name, ok, detail) -> dict:
    return {"check": name, "ok": bool(ok), "detail": detail}


def _versus(what: str, value: float, limit: float, bound: str, fmt: str) -> str:
    """"agreement 99.50% (needs at least 99.00%)", or, failing, "FAIL: agreement 98.33% is 0.67% below
    the required 99.00%" (a failing line must not read like a pass)."""
    f = fmt.format
    if (value >= limit) if bound == "at least" else (value <= limit):
        return f"{what} {f(value)} (needs {bound} {f(limit)})"
    if bound == "at least":
        return f"FAIL: {what} {f(value)} is {f(limit - value)} below the required {f(limit)}"
    return f"FAIL: {what} {f(value)} is {f(value - limit)} above the allowed {f(limit)}"


def single_task_sources(base: Path, store_dir, names) -> dict:
    """task -> the run folder under `base` (runs/, distill/) whose branch.safetensors the store's branch
    was copied from, or the store's own copy when that folder is gone."""
    from runtime_py.bundle import file_sha256
    from toolchain.branch_config import WEIGHTS
    from toolchain.workspace import Workspace

    ws, out = Workspace(Path(base)), {}
    for n in names:
        own = Path(store_dir) / "branches" / n
        digest = file_sha256(own / WEIGHTS)
        runs = sorted(ws.runs_of(n).glob(f"*/{WEIGHTS}")) + sorted(ws.students_of(n).glob(f"*/{WEIGHTS}"))
        out[n] = next((p.parent for p in runs if file_sha256(p) == digest), own)
    return out


def single_task_outputs(store_meta, source: Path, dev, trunk_cache: dict) -> list:
    """Outputs of one task's single-task model (original backbone cut at the attach depth + branch)."""
    from toolchain import backbone
    from toolchain.branch_config import BranchConfig
    from toolchain.export.check import outputs_on, torch_runner
    from toolchain.model import TaskModel, build_trunk
    from toolchain.store import _encoder_cfg, load_branch

    meta = BranchConfig.load(source)
    if "bb" not in trunk_cache:
        trunk_cache["bb"] = backbone.load(store_meta["backbone"])
    bb = trunk_cache["bb"]
    branch = load_branch(_encoder_cfg(store_meta), source, meta)
    model = TaskModel(build_trunk(bb.cfg, bb.state, meta.attach), branch).eval()
    return outputs_on(dev, torch_runner(lambda **inputs: {meta.task: model(**inputs)}))  # TaskModel: one tensor


GOLDEN_PER_TASK = 150  # dev texts per task in golden.json: the apps' parity tests run every one


def verify(bundle_dir, recipe, store_dir, out_dir, *, runs_dir=None, limit: int | None = JUDGED_ROWS,
           golden: int = GOLDEN_PER_TASK, log=print) -> dict:
    """Run every check; write the report into `out_dir`; return it (report["ok"] says pass or fail).
    `runs_dir`: the workspace whose run folders hold the single-task models (default: the recipe's);
    `limit`: dev rows per task, by default (None too) the rows the export guard judged, the same seeded
    subset; `golden`: dev texts per task in golden.json."""
    from toolchain.golden import write_all
    from toolchain.store import load_merged, read_store

    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    check_replaceable(out_dir, "verify report", (bundle_dir, store_dir, recipe.path))  # not a folder of another kind
    report = {"bundle": str(bundle_dir), "store": str(store_dir), "recipe": str(recipe.path), "checks": [],
              "tasks": {}, "manifest_sha256": None}
    predictor = _open_bundle(bundle_dir, report)
    if predictor is None:
        return _finish(report, out_dir, None, log)
    tol = _tolerance(predictor.manifest, recipe, report)
    store_meta = read_store(store_dir)
    model, tok, metas = load_merged(store_dir, list(predictor.tasks))
    report["checks"] += _artifact_checks(predictor, store_meta, metas, tok)
    devs = _dev_sets(recipe, tok, metas, list(predictor.tasks), limit)
    sources = single_task_sources(Path(runs_dir or recipe.root / recipe.name), store_dir, list(predictor.tasks))
    trunk_cache = {}
    for name, dev_set in devs.items():
        log(f"verify {name}: {len(dev_set[2])} dev examples")
        single = single_task_outputs(store_meta, sources[name], dev_set[2], trunk_cache)
        report["tasks"][name], checks = _judge_task(predictor, model, name, dev_set, tol, single=single,
                                                    source=sources[name])
        report["checks"] += checks
    cases = golden_cases(predictor, model, golden_texts(recipe, metas, predictor, golden))
    report = _finish(report, out_dir, cases, log)
    report["golden"] = write_all(bundle_dir, out_dir)  # tokenizer and span golden files for the app cores
    write_json_atomic(out_dir / "verify.json", report)
    return report


def _open_bundle(bundle_dir: Path, report: dict):
    """The bundle's Predictor, or None with the failed "bundle" check in the report (a CoreML bundle off
    macOS is a UserError: nothing here can run it)."""
    from runtime_py import BundleError, InputError, Predictor
    from runtime_py.bundle import file_sha256
    from runtime_py.targets import TARGETS

    if (bundle_dir / "manifest.json").is_file():  # ties the report to the exact bundle it verified (embed checks it)
        report["manifest_sha256"] = file_sha256(bundle_dir / "manifest.json")
    try:
        target = json.loads((bundle_dir / "manifest.json").read_text()).get("target")
    except (OSError, ValueError, AttributeError):  # Predictor below reports it
        target = None
    if target == "ios" and not TARGETS["ios"].runs_here():
        raise UserError(f"bundle {bundle_dir} is a CoreML bundle: its programs run only on macOS/iOS; run verify "
                        "on a Mac (the package structure is checked at export)")
    try:
        return Predictor(bundle_dir)
    except (BundleError, InputError) as e:
        report["checks"].append(_check("bundle", False, str(e)))
        return None


def _tolerance(m: dict, recipe, report: dict) -> dict:
    """The export guard's own limits for the bundle's target and precision, recorded in the report."""
    from toolchain.export.check import TOLERANCES, limits

    key = (m["target"], m["precision"])
    if key not in TOLERANCES:
        raise UserError(f"no tolerance for target {key[0]} at precision {key[1]}; add it to check.TOLERANCES")
    tol = limits(*key, recipe.export)
    report.update(target=m["target"], layout=m["layout"], precision=m["precision"], tolerance=tol)
    report["checks"].append(_check("bundle", True, f"{len(m['files'])} files match their sha256"))
    return tol


def _artifact_checks(predictor, store_meta, metas, tok) -> list:
    """The bundle against the store: trunk fingerprint, each task's type, attach depth and labels, and the
    tokenizer's configuration."""
    from toolchain.backbone import tokenizer_fingerprint

    m = predictor.manifest
    checks = [_check("trunk", m["trunk_fingerprint"] == store_meta["backbone_fingerprint"],
                     f"bundle {m['trunk_fingerprint'][:16]}, store {store_meta['backbone_fingerprint'][:16]}")]
    for t in m["tasks"]:
        meta = metas[t["name"]]
        diffs = [k for k in ("type", "attach", "labels") if t[k] != getattr(meta, k)]
        if "labels" in diffs and len(t["labels"]) == len(meta.labels):
            i = next(i for i, (a, b) in enumerate(zip(t["labels"], meta.labels)) if a != b)
            detail = f"label {i} is {t['labels'][i]!r}, training's is {meta.labels[i]!r}"
        else:
            detail = f"differs from training: {', '.join(diffs)}" if diffs else "type, attach depth, labels as trained"
        checks.append(_check(f"labels {t['name']}", not diffs, detail))
    bundle_tok = predictor.tokenizer.__class__.from_str(predictor.tokenizer.to_str())
    bundle_tok.no_truncation()
    tok.no_truncation()
    same = tokenizer_fingerprint(bundle_tok) == tokenizer_fingerprint(tok)
    checks.append(_check("tokenizer config", same, f"tokenizer.json {'equals' if same else 'differs from'} "
                         "the store's (training's)"))
    return checks


def _dev_sets(recipe, tok, metas, names, limit) -> dict:
    """export.dev_sets on the rows the guard judged (or `limit`); every bundle task must have one."""
    from toolchain.export import dev_sets

    devs = dev_sets(recipe, tok, metas, limit or JUDGED_ROWS)
    missing = [n for n in names if n not in devs]
    if missing:
        raise UserError(f"task {missing[0]!r} has no dev set in recipe {recipe.path}; verify with the recipe it was trained from")
    return devs


def _judge_task(predictor, model, name, dev_set, tol, *, single, source) -> tuple:
    """One task: the bundle (through runtime_py, from the dev text) against the merged model, and the merged
    model against the single-task one (`single`: its outputs; `source`: its run folder). Returns (figures, [tokenizer,
    merge and parity checks])."""
    from toolchain.export.check import compare, outputs_on, runtime_outputs, torch_runner

    task, labels, dev, examples = dev_set
    got, valid = runtime_outputs(predictor, name, task, examples, dev)
    ref = outputs_on(dev, torch_runner(model))
    merge_diff = max(float(np.max(np.abs(r[name] - s[name]))) for r, s in zip(ref, single))
    c = compare(task, labels, dev, ref, got, got_labels=list(predictor.tasks[name].labels), valid=valid)
    c.update(merge_max_abs=merge_diff, single_task_source=str(source), token_agreement=float(np.mean(valid)))
    return c, [_check(f"tokenizer {name}", all(valid), f"{sum(valid)}/{len(valid)} dev texts give training's token ids"),
               _check(f"merge {name}", merge_diff <= MERGE_TOL,
                      f"merged vs single-task max abs {merge_diff:.2e} (<= {MERGE_TOL:g})"),
               _parity_check(name, c, tol)]


def _parity_check(name, c: dict, tol: dict) -> dict:
    """fp32: max abs within the limit and every prediction the same; quantized: agreement and metric drop."""
    if "max_abs" in tol:
        ok = c["max_abs"] <= tol["max_abs"] and c["agreement"] == 1.0
        detail = "; ".join([_versus("max abs", c["max_abs"], tol["max_abs"], "at most", "{:.2e}"),
                            _versus("agreement", c["agreement"], 1.0, "at least", "{:.2%}")])
    else:
        ok = c["agreement"] >= tol["agreement"] and c["drop"] <= tol["max_drop"]
        detail = "; ".join([_versus("agreement", c["agreement"], tol["agreement"], "at least", "{:.2%}"),
                            _versus(f"{c['metric']} drop", c["drop"], tol["max_drop"], "at most", "{:.2f}")
                            + f" ({c['reference']:.2f} -> {c['exported']:.2f})"])
    return _check(f"parity {name}", ok, detail)


def app_tolerance(precision: str) -> dict:
    """How close an app's run of this bundle must come to golden.json: every raw output within `max_abs`
    and every score within `score`; labels and spans exactly. fp32 programs: the exporter's own parity
    limit; quantized ones 1e-2: another version of the runtime (the JVM's ONNX Runtime 1.29 against
    Python's 1.32) can put a per-token activation one quantization step apart, and the step travels on
    through the layers (7.3e-3 on one raw logit of the tiny int8 recipe, every label the same)."""
    from toolchain.export.check import TOLERANCES

    tol = TOLERANCES[("onnx", "fp32")]["max_abs"] if precision == "fp32" else 1e-2
    return {"max_abs": tol, "score": tol}


def golden_texts(recipe, metas, predictor, per_task: int) -> list:
    """The texts golden.json records: `per_task` dev texts of each single-text task (a seeded subset of
    the whole dev file, not only the rows the recipe scores), the edge cases, and the texts of the
    known-answer span cases; in that order, each once."""
    import json
    from dataclasses import replace

    from toolchain.data import _cap, read_examples, unseen
    from toolchain.export.check import runtime_texts
    from toolchain.golden import SPAN_CASES

    texts = []
    for name, t in predictor.tasks.items():
        try:
            task = recipe.task(name)
        except UserError:
            continue
        if t.pair or not per_task:
            continue
        known = set(metas[name].labels)
        examples = [ex for ex in read_examples(recipe, replace(task, max_dev_examples=0), "dev")
                    if unseen(task, ex, known) is None]
        texts += runtime_texts(task, _cap(examples, per_task))[0]
    spans = [c["text"] for c in json.loads(SPAN_CASES.read_text(encoding="utf-8"))["cases"]]
    return list(dict.fromkeys(texts + GOLDEN_EDGE_CASES + spans))


def golden_cases(predictor, model, texts: list) -> dict:
    """Test vectors for the apps: text, token ids, the bundle's outputs and PyTorch's, decoded predictions.
    The bundle runs one text at a time (batch 1, no padding), as the apps call it."""
    import torch

    tasks = [n for n, t in predictor.tasks.items() if not t.pair]  # single-text tasks share the cases
    if not tasks:
        return {"schema_version": 1, "cases": [], "note": "every task takes a text pair; no golden cases"}
    encs, rows = predictor.raw(texts, tasks=tasks, batch_size=1)
    cases = []
    for text, e, row in zip(texts, encs, rows):
        dec = {n: predictor.decode(n, row[n], e, text) for n in tasks}  # the bundle's outputs, decoded
        ids = torch.tensor([e.ids])
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.tensor([e.type_ids]))
        cases.append({"text": text, "input_ids": e.ids, "token_type_ids": e.type_ids,
                      "attention_mask": [1] * len(e.ids),
                      "outputs": {n: np.round(row[n].astype(np.float64), 6).tolist() for n in tasks},
                      "pytorch_fp32": {n: np.round(ref[n][0].double().numpy(), 6).tolist() for n in tasks},
                      "predictions": dec})
    m = predictor.manifest
    return {"schema_version": 2, "target": m["target"], "layout": m["layout"], "precision": m["precision"],
            "max_seq_len": m["max_seq_len"], "tasks": tasks, "tolerance": app_tolerance(m["precision"]),
            "how_to_check": ("tokenize `text` with the bundle's tokenizer: the ids must equal `input_ids` exactly; "
                             "run the bundle: every output within 1e-3 of `outputs` (this bundle, this runtime) and "
                             "the same `predictions`; `pytorch_fp32` is the unquantized original"),
            "cases": cases}


def _finish(report, out_dir, golden, log) -> dict:
    report["ok"] = all(c["ok"] for c in report["checks"])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "verify.json", report)
    write_text_atomic(out_dir / "verify.md", markdown(report))
    if golden is not None:
        write_json_atomic(out_dir / "golden.json", golden)
    for c in report["checks"]:
        if not c["ok"]:
            log(f"FAIL {c['check']}: {c['detail']}")
    return report


def markdown(report) -> str:
    lines = [f"# verify: {'PASS' if report['ok'] else 'FAIL'}", "",
             (f"Bundle `{report['bundle']}` ({report.get('target', '?')}, {report.get('layout', '?')}, "
             f"{report.get('precision', '?')}) against store `{report['store']}` on the dev sets of "
             f"`{report['recipe']}`."), "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c['check']} | {'pass' if c['ok'] else '**FAIL**'} | {c['detail']} |" for c in report["checks"]]
    if report["tasks"]:
        lines += ["", ("| task | rows | max abs | max rel | agreement | metric | merged | bundle | delta | "
                  "merged vs single |"), "|---|---|---|---|---|---|---|---|---|---|"]
        for n, c in report["tasks"].items():
            lines.append(f"| {n} | {c['rows']} | {c['max_abs']:.2e} | {c['max_rel']:.2e} | {c['agreement']:.2%} | "
                         f"{c['metric']} | {c['reference']:.2f} | {c['exported']:.2f} | {c['exported'] - c['reference']:+.2f} | "
                         f"{c['merge_max_abs']:.1e} |")
    return "\n".join(lines) + "\n"
