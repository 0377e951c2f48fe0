"""The test split's metrics (lib.train.run.test_metrics) equal scikit-learn's, computed without importing it."""
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from lib.train.run import test_metrics as metrics_of


@pytest.mark.parametrize("k, n, seed", [(2, 7, 0), (3, 50, 1), (10, 200, 2), (5, 12, 3)])
def test_equal_to_sklearn_including_classes_never_predicted_or_absent(k, n, seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k - 1 if k > 2 else k, n)      # the last class often absent from the test split
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, n))
    y_pred[y_pred == 1] = 0                                  # class 1 never predicted
    classes = [f"c{i}" for i in range(k)]
    summary, per_class, cm = metrics_of({"y_true": y_true, "y_pred": y_pred, "acc": 0.5, "loss": 1.0}, classes)
    labels = list(range(k))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    pm, rm, fm, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    assert [c["class"] for c in per_class] == classes
    assert np.allclose([c["precision"] for c in per_class], p) and np.allclose([c["recall"] for c in per_class], r)
    assert np.allclose([c["f1"] for c in per_class], f) and [c["support"] for c in per_class] == s.tolist()
    assert np.isclose(summary["test_precision_macro"], pm) and np.isclose(summary["test_recall_macro"], rm)
    assert np.isclose(summary["test_f1_macro"], fm)
    assert cm == confusion_matrix(y_true, y_pred, labels=labels).tolist()


def test_an_empty_test_split_has_no_metrics():
    summary, per_class, cm = metrics_of({"y_true": np.array([], int), "y_pred": np.array([], int)}, ["a", "b"])
    assert set(summary.values()) == {None} and per_class == [] and cm == []
