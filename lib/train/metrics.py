"""Classification metrics from the confusion matrix, with numpy: the same numbers as scikit-learn's
(tests/train/test_metrics.py compares them, degenerate cases included) without importing
sklearn.metrics, which takes seconds, paid again by every trial of a sweep and every evaluation."""
from __future__ import annotations

import math

import numpy as np

from lib.records import RUN_METRICS

# The summary's test keys (declared in lib.records.RunSummary): all None when the test split is empty.
TEST_METRICS = tuple(sorted(name for name in RUN_METRICS if name.startswith("test_")))


def confusion(y_true, y_pred, k: int | None = None) -> np.ndarray:
    """Counts, rows the true class, columns the predicted one; ``k`` classes (default: the labels seen)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if k is None:
        k = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def balanced_accuracy(cm: np.ndarray) -> float:
    """Recall averaged over the classes that occur in the truth (scikit-learn leaves out a class only
    predicted); NaN with no sample at all."""
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return math.nan
    return float((np.diag(cm)[present] / support[present]).mean())


def mcc(cm: np.ndarray) -> float:
    """Matthews correlation coefficient, multi-class (Gorodkin's R_K, as scikit-learn computes it):
    0.0 when it is undefined (one class only, in the truth or in the predictions)."""
    t_sum, p_sum = cm.sum(axis=1, dtype=np.float64), cm.sum(axis=0, dtype=np.float64)
    n_correct, n = float(np.trace(cm)), float(p_sum.sum())
    cov_ytyp = n_correct * n - np.dot(t_sum, p_sum)
    cov_ypyp, cov_ytyt = n * n - np.dot(p_sum, p_sum), n * n - np.dot(t_sum, t_sum)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


def test_metrics(result: dict, classes: list[str]) -> tuple[dict, list[dict], list[list[int]]]:
    """Accuracy, loss, balanced accuracy, MCC, per-class and macro precision/recall/F1 and the confusion
    matrix of the test split (precision and friends as precision_recall_fscore_support, zero_division=0)."""
    y_true, y_pred = np.asarray(result["y_true"], dtype=np.int64), np.asarray(result["y_pred"], dtype=np.int64)
    if not len(y_true):
        return dict.fromkeys(TEST_METRICS), [], []
    k = len(classes)
    cm = confusion(y_true, y_pred, k)
    tp, support, predicted = np.diag(cm).astype(float), cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(k), where=support + predicted > 0)
    per_class = [{"class": c, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                  "support": int(support[i])} for i, c in enumerate(classes)]
    summary = {"test_acc": result["acc"], "test_loss": result["loss"], "test_precision_macro": float(precision.mean()),
               "test_recall_macro": float(recall.mean()), "test_f1_macro": float(f1.mean()),
               "test_balanced_acc": balanced_accuracy(cm), "test_mcc": mcc(cm)}
    return summary, per_class, cm.tolist()
