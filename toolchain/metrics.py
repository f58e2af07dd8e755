"""Task metrics, computed by scikit-learn, scipy and seqeval; reported in percent like the paper."""


def compute(metric: str, preds, golds) -> float:
    """preds/golds: label ids (classification), floats (regression) or tag-name lists (tagging)."""
    return float(_compute(metric, preds, golds))


def _compute(metric, preds, golds):
    if metric == "accuracy":
        from sklearn.metrics import accuracy_score

        return 100.0 * accuracy_score(golds, preds)
    if metric == "f1":  # binary F1 of the second label in sorted order (GLUE's "1")
        from sklearn.metrics import f1_score

        return 100.0 * f1_score(golds, preds, pos_label=1, average="binary", zero_division=0)
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
