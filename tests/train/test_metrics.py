"""The metrics of a run (lib.train.metrics) equal scikit-learn's, computed without importing it: the test
split's per-class and macro precision/recall/F1, balanced accuracy and MCC, and the validation balanced
accuracy of every epoch, degenerate cases included (a class never predicted, absent, or alone)."""
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    matthews_corrcoef,
    precision_recall_fscore_support,
)

from lib.records import RunSummary
from lib.train.metrics import TEST_METRICS, balanced_accuracy, confusion, mcc
from lib.train.run import test_metrics as metrics_of


def sklearn_balanced(y_true, y_pred) -> float:
    with warnings.catch_warnings():   # "y_pred contains classes not in y_true": the degenerate cases below
        warnings.simplefilter("ignore")
        return balanced_accuracy_score(y_true, y_pred)


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
    assert summary["test_balanced_acc"] == pytest.approx(sklearn_balanced(y_true, y_pred), abs=1e-12)
    assert summary["test_mcc"] == pytest.approx(matthews_corrcoef(y_true, y_pred), abs=1e-12)
    assert cm == confusion_matrix(y_true, y_pred, labels=labels).tolist()
    assert set(summary) == set(TEST_METRICS) == {k for k in RunSummary.__dataclass_fields__ if k.startswith("test_")}


@pytest.mark.parametrize("y_true, y_pred", [
    ([0, 0, 0, 0], [0, 0, 0, 0]),           # one class only, all right: MCC undefined -> 0
    ([0, 0, 0, 0], [0, 1, 0, 1]),           # one class in the truth, two predicted
    ([0, 0, 1, 1, 1, 1, 1, 1], [1] * 8),    # only the majority predicted (the accuracy trap): MCC 0, balanced 0.5
    ([0, 1, 2, 2, 2, 2], [0, 0, 0, 0, 0, 0]),   # one class predicted, three true
    ([1, 1, 2], [0, 1, 2]),                  # a class only predicted (sklearn leaves it out of balanced accuracy)
    ([0, 1, 0, 1], [1, 0, 1, 0]),            # all wrong: MCC -1
])
def test_degenerate_cases_as_sklearn_handles_them(y_true, y_pred):
    cm = confusion(y_true, y_pred)
    assert balanced_accuracy(cm) == pytest.approx(sklearn_balanced(y_true, y_pred), abs=1e-12)
    assert mcc(cm) == pytest.approx(matthews_corrcoef(y_true, y_pred), abs=1e-12)
    summary, _, _ = metrics_of({"y_true": np.array(y_true), "y_pred": np.array(y_pred), "acc": 0.0, "loss": 0.0},
                               ["a", "b", "c"])
    assert summary["test_balanced_acc"] == pytest.approx(sklearn_balanced(y_true, y_pred), abs=1e-12)
    assert summary["test_mcc"] == pytest.approx(matthews_corrcoef(y_true, y_pred), abs=1e-12)


def test_validation_balanced_accuracy_of_evaluate_is_sklearns():
    """training.evaluate, which every epoch's val_balanced_acc comes from, on a real model's predictions."""
    import torch

    from lib.train.training import Accel, evaluate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    x, y = torch.randn(40, 3, 8, 8), torch.tensor([0] * 30 + [1] * 8 + [2] * 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    accel = Accel(torch.device("cpu"), None, None, torch.contiguous_format)
    out = evaluate(model, loader, accel)
    assert out["balanced_acc"] == pytest.approx(sklearn_balanced(out["y_true"], out["y_pred"]), abs=1e-12)
    assert out["acc"] == pytest.approx(float((out["y_true"] == out["y_pred"]).mean()))


def test_an_empty_test_split_has_no_metrics():
    summary, per_class, cm = metrics_of({"y_true": np.array([], int), "y_pred": np.array([], int)}, ["a", "b"])
    assert set(summary.values()) == {None} and set(summary) == set(TEST_METRICS) and per_class == [] and cm == []
