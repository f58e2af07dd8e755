"""Run an exported bundle on real dev text and compare it with the PyTorch original: per output max
abs difference, per task prediction agreement and dev metric. The bundle runs through runtime_py's
Predictor, the one path an app's text takes (judge_bundle, runtime_outputs). Used by the quantization
guard, verify and bench's dev metric."""

import numpy as np
import torch

from toolchain.batch import by_length, pad_batch
from toolchain.export.guard import JUDGED_ROWS  # noqa: F401  (the rows export and verify judge)
from toolchain.metrics import IGNORE, predictions, score

# One tolerance table keyed by (target, precision): fp32 outputs must match PyTorch within max_abs;
# quantized ones are judged on predictions (agreement) and on the dev metric (drop in points).
TOLERANCES = {
    ("onnx", "fp32"): {"max_abs": 1e-4}, ("android", "fp32"): {"max_abs": 1e-4}, ("ios", "fp32"): {"max_abs": 1e-4},
    ("ios", "fp16"): {"agreement": 0.99, "max_drop": 1.0},
    ("onnx", "int8"): {"agreement": 0.99, "max_drop": 1.0}, ("onnx", "int8-static"): {"agreement": 0.98, "max_drop": 1.0},
    ("android", "int8"): {"agreement": 0.99, "max_drop": 1.0}, ("ios", "int8"): {"agreement": 0.99, "max_drop": 1.0},
    # int4 is held to int8's limits: 4 bits ship only where they keep int8's quality
    ("onnx", "int4"): {"agreement": 0.99, "max_drop": 1.0}, ("android", "int4"): {"agreement": 0.99, "max_drop": 1.0},
    ("ios", "int4"): {"agreement": 0.99, "max_drop": 1.0},
}


def limits(target: str, precision: str, export_cfg) -> dict:
    """The tolerances that both the export guard and verify apply: fp32 programs match within max_abs;
    a quantized program must agree with fp32 on min_agreement of dev predictions (the recipe's [export]
    min_agreement, else the target's row above) and lose at most max_metric_drop points."""
    row = dict(TOLERANCES[(target, precision)])
    if "agreement" in row:
        if export_cfg.min_agreement is not None:
            row["agreement"] = export_cfg.min_agreement
        row["max_drop"] = export_cfg.max_metric_drop
    return row


def runtime_texts(task, examples) -> tuple:
    """The text (and pair) an app would pass for each dev example; tagging examples are word lists."""
    texts = [ex.text if ex.text is not None else " ".join(ex.tokens) for ex in examples]
    pairs = [ex.text_pair or "" for ex in examples] if any(ex.text_pair is not None for ex in examples) else None
    return texts, pairs


def runtime_outputs(predictor, name, task, examples, encoded) -> tuple:
    """A task's outputs on dev examples the way an app gets them: runtime_py's Predictor tokenizes the
    text with the bundle's tokenizer and runs the bundle's programs. Returns (rows, valid), `valid`
    saying per example whether the bundle saw training's token ids. The export guard and verify both
    judge a bundle by this."""
    texts, pairs = runtime_texts(task, examples)
    encs, rows = predictor.raw(texts, pairs, tasks=[name])
    valid = [e.ids == list(ids) and e.type_ids == list(tt) for e, ids, tt in zip(encs, encoded.input_ids, encoded.type_ids)]
    return rows, valid


def judge_bundle(bundle_dir, devs, refs, names) -> dict:
    """task -> compare's figures for each of `names`, judging the (staged) bundle as verify does:
    through runtime_py's Predictor, from the dev text. `devs`: export.dev_sets; `refs`: per task, the
    PyTorch fp32 rows (outputs_on). The files are not re-hashed: the caller has just written them."""
    from runtime_py import Predictor

    predictor = Predictor(bundle_dir, check_files=False)
    report = {}
    for name in names:
        task, labels, dev, examples = devs[name]
        got, valid = runtime_outputs(predictor, name, task, examples, dev)
        report[name] = compare(task, labels, dev, refs[name], got, valid=valid)
    return report


def judge_module(module, tasks, devs, refs, names) -> dict:
    """judge_bundle's figures for a module not yet lowered (graph.Fused's inputs; a tuple of `tasks`'
    outputs), run in eager PyTorch on the encoded dev rows: the guard's search (guard.settled)."""
    @torch.no_grad()
    def run_batch(b):
        return {t: o.numpy() for t, o in zip(tasks, module(b.input_ids, b.attention_mask, b.token_type_ids))}

    report = {}
    for name in names:
        task, labels, dev, _ = devs[name]
        report[name] = compare(task, labels, dev, refs[name], outputs_on(dev, run_batch))
    return report


def outputs_on(encoded, run_batch, batch_size=32) -> list:
    """Per example dict of task -> output (unpadded), for an Encoded dataset."""
    rows = [None] * len(encoded)
    for idx in by_length([len(x) for x in encoded.input_ids], batch_size):
        out = run_batch(pad_batch([encoded.input_ids[i] for i in idx], [encoded.type_ids[i] for i in idx], "cpu"))
        for r, i in enumerate(idx):
            n = len(encoded.input_ids[i])
            rows[i] = {k: (np.asarray(v[r][:n]) if np.ndim(v) == 3 else np.asarray(v[r])) for k, v in out.items()}
    return rows


def torch_runner(model):
    @torch.no_grad()
    def run_batch(b):
        return {k: v.numpy() for k, v in model(**b._asdict()).items()}

    return run_batch


def compare(task, labels, encoded, ref_rows, got_rows, got_labels=None, valid=None) -> dict:
    """Per task: max abs / rel difference, prediction agreement, dev metric of both and the drop.

    `got_labels`: the label names the exported side decodes with (a bundle's manifest), when they
    may differ from the reference's; predictions are compared by name. `valid`: per example, whether
    the exported side saw the same token ids; other examples count as disagreements and are left out
    of the differences."""
    valid = [True] * len(ref_rows) if valid is None else list(valid)
    ref = [r[task.name] for r in ref_rows]
    got = [g[task.name] for g in got_rows]
    same = [(a, b) for a, b, v in zip(ref, got, valid) if v]
    max_abs = max((float(np.max(np.abs(a - b))) for a, b in same), default=float("nan"))
    scale = max((float(np.max(np.abs(a))) for a, _ in same), default=1.0)
    pr, pg = predictions(task.type, ref), predictions(task.type, got)
    if got_labels is not None and task.type != "regression":  # compare by name; unknown names are misses
        index = {name: i for i, name in enumerate(labels)}
        rename = lambda j: index.get(got_labels[j], -1) if j < len(got_labels) else -1
        pg = [rename(p) for p in pg] if task.type == "classification" else [[rename(j) for j in p] for p in pg]
    if task.type == "regression":
        hits = [abs(a - b) <= 0.1 and v for a, b, v in zip(pr, pg, valid)]  # within 0.1 on a 0-5 scale
    elif task.type == "classification":
        hits = [a == b and v for a, b, v in zip(pr, pg, valid)]
    else:  # tagging: over labelled word pieces
        hits = [v and j < len(b) and a[j] == b[j] for a, b, gold, v in zip(pr, pg, encoded.labels, valid)
                for j, lab in enumerate(gold) if lab != IGNORE]
    agree = float(np.mean(hits)) if hits else 1.0
    if task.type == "tagging":  # rows tokenized differently cannot be aligned: scored as tagging nothing
        pg = [b if v else [-1] * len(a) for a, b, v in zip(pr, pg, valid)]
    m_ref = score(task, labels, encoded, pr)
    if task.type == "regression":
        m_got = score(task, labels, encoded, pg)
    else:  # a label name the reference lacks is an extra class ("O" for tags): always wrong
        extra = "O" if task.type == "tagging" else "<unknown>"
        m_got = score(task, labels + [extra], encoded, [_unknown(p, len(labels)) for p in pg])
    return {"max_abs": max_abs, "max_rel": max_abs / max(scale, 1e-12), "agreement": agree, "metric": task.metric,
            "reference": m_ref, "exported": m_got, "drop": m_ref - m_got, "rows": len(ref),
            "token_mismatches": len(ref) - sum(valid), "predictions": len(hits),
            "unit": "word pieces" if task.type == "tagging" else "rows"}


def _unknown(pred, n):
    """Map the -1 of an unknown label name to an extra class index n."""
    if isinstance(pred, list):
        return [n if j < 0 else j for j in pred]
    return n if pred < 0 else pred
