import pytest

from toolchain.metrics import compute


def test_classification_metrics():
    assert compute("accuracy", [1, 0, 1, 1], [1, 1, 1, 1]) == pytest.approx(75.0)
    assert compute("f1", [1, 0, 1, 0], [1, 1, 0, 0], pos_label=1) == pytest.approx(50.0)
    assert compute("matthews", [0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(100.0)
    assert compute("matthews", [1, 1, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0)
    assert compute("macro_f1", [0, 1, 2], [0, 1, 1]) == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)


def test_regression_metrics():
    assert compute("pearson", [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(100.0)
    assert compute("spearman", [1.0, 5.0, 9.0], [1.0, 2.0, 3.0]) == pytest.approx(100.0)
    assert compute("pearson", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0


def test_entity_f1_counts_whole_spans():
    gold = [["B-city", "I-city", "O", "B-time"]]
    assert compute("entity_f1", gold, gold) == pytest.approx(100.0)
    half = [["B-city", "O", "O", "B-time"]]  # the city span is cut short: one of two entities right
    assert compute("entity_f1", half, gold) == pytest.approx(50.0)


def test_f1_scores_the_named_positive_label(tmp_path):
    """Sorted names put "equivalent" (the positive class) at id 0: F1 must follow the recipe's
    positive_label, not a fixed id, and work for three or more labels."""
    from types import SimpleNamespace

    from conftest import TINY_TASK, write_recipe

    from toolchain import UserError
    from toolchain.config import load_recipe
    from toolchain.data import positive_id
    from toolchain.metrics import score

    labels = ["equivalent", "not_equivalent"]
    task = SimpleNamespace(name="mrpc", type="classification", metric="f1", positive_label="equivalent")
    gold, pred = [0, 0, 1, 1], [0, 1, 1, 1]  # one of two positives found, no false positive: F1 2/3
    assert score(task, labels, SimpleNamespace(labels=gold), pred) == pytest.approx(100 * 2 / 3)
    assert compute("f1", [2, 0, 1, 2], [2, 2, 0, 1], pos_label=2) == pytest.approx(50.0)  # three labels
    with pytest.raises(UserError, match="positive_label 'yes' is not one of its labels"):
        positive_id(SimpleNamespace(name="t", metric="f1", positive_label="yes"), labels)
    with pytest.raises(UserError, match="metric f1 scores one positive label"):
        load_recipe(write_recipe(tmp_path, TINY_TASK + 'metric = "f1"\n'))
    assert load_recipe(write_recipe(tmp_path, TINY_TASK + 'metric = "f1"\npositive_label = "x"\n'))
