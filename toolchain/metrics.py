"""Task metrics, computed by scikit-learn, scipy and seqeval; reported in percent like the paper.
`score` turns a task's predictions on an encoded dev set into its metric (training's model selection,
the export guard and verify all use it)."""

from toolchain.data import IGNORE, positive_id


def score(task, labels, encoded, preds) -> float:
    """The task's metric for `preds` (label ids; per word piece for tagging, compared at the first piece
    of each word: the pieces whose gold label is not IGNORE)."""
    if task.type == "tagging":
        gold_tags, pred_tags = [], []
        for gold, pred in zip(encoded.labels, preds):
            keep = [j for j, g in enumerate(gold) if g != IGNORE]
            gold_tags.append([labels[gold[j]] for j in keep])
            pred_tags.append([labels[pred[j]] for j in keep])
        return compute(task.metric, pred_tags, gold_tags)
    return compute(task.metric, preds, encoded.labels, positive_id(task, labels))


def compute(metric: str, preds, golds, pos_label: int | None = None) -> float:
    """preds/golds: label ids (classification), floats (regression) or tag-name lists (tagging).
    `pos_label`: the id of the positive label, which binary F1 needs (the recipe names it)."""
    return float(_compute(metric, preds, golds, pos_label))


def _compute(metric, preds, golds, pos_label):
    if metric == "accuracy":
        from sklearn.metrics import accuracy_score

        return 100.0 * accuracy_score(golds, preds)
    if metric == "f1":  # F1 of the positive label against all others (any number of labels)
        import numpy as np
        from sklearn.metrics import f1_score

        if pos_label is None:
            raise ValueError("metric f1 needs pos_label, the id of the positive label")
        return 100.0 * f1_score(np.asarray(golds) == pos_label, np.asarray(preds) == pos_label, zero_division=0)
    if metric == "macro_f1":
        from sklearn.metrics import f1_score

        return 100.0 * f1_score(golds, preds, average="macro", zero_division=0)
    if metric == "matthews":
        from sklearn.metrics import matthews_corrcoef

        return 100.0 * matthews_corrcoef(golds, preds)
    if metric in ("pearson", "spearman"):
        import numpy as np
        from scipy.stats import pearsonr, spearmanr

        if np.std(preds) == 0:  # a constant prediction has no correlation (scipy would warn and give nan)
            return 0.0
        fn = pearsonr if metric == "pearson" else spearmanr
        return 100.0 * float(fn(preds, golds)[0])
    if metric == "entity_f1":
        from seqeval.metrics import f1_score

        return 100.0 * f1_score(golds, preds)
    raise ValueError(f"unknown metric {metric!r}")


def predictions(task_type: str, outputs) -> list:
    """A task's predictions from its raw outputs (torch tensors or numpy arrays, one per example): a float
    (regression), a label id (classification), or a label id per word piece (tagging)."""
    if task_type == "regression":
        return [float(o) for o in outputs]
    if task_type == "classification":
        return [int(o.argmax()) for o in outputs]
    return [o.argmax(-1).tolist() for o in outputs]
