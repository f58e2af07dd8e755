import pytest

from toolchain.metrics import compute


def test_classification_metrics():
    assert compute("accuracy", [1, 0, 1, 1], [1, 1, 1, 1]) == pytest.approx(75.0)
    assert compute("f1", [1, 0, 1, 0], [1, 1, 0, 0]) == pytest.approx(50.0)
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
