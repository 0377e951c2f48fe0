"""Levers for imbalanced classes (lib.train.balance) on real images at 4:1: the loss weights are
scikit-learn's 'balanced' weights of the training split, the balanced sampler draws the classes equally,
both act the same on cached frozen features as on images, and they lift balanced accuracy where an
unweighted head predicts the majority class only."""
import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight
from timm.loss import SoftTargetCrossEntropy

from lib.train import balance, data
from tests.train.test_training import run

KIND = "training"   # real training in this process: in `make test`, not `make check`

FREEZE = ["--model=mobilenetv2_100", "--strategy=freeze", "--epochs=5", "--lr=1e-3", "--monitor=val_balanced_acc"]


@pytest.fixture
def args(base_args, imbalanced):
    return [a for a in base_args if not a.startswith("--data_dir=")] + [f"--data_dir={imbalanced}"]


def train_labels(rec) -> list[int]:
    """The training split's labels, from the record's paths (class folder / file)."""
    return [rec["classes"].index(path.split("/")[0]) for path in rec["split"]["train"]]


def test_balanced_weights_and_sampler_lift_balanced_accuracy_on_4_to_1_data(args):
    plain, _, _ = run(args, FREEZE + ["--run_id=none"])
    weighted, _, _ = run(args, FREEZE + ["--run_id=weighted", "--class_weighting=balanced"])
    sampled, _, _ = run(args, FREEZE + ["--run_id=sampled", "--sampler=balanced"])
    labels = train_labels(weighted)
    assert weighted["class_counts"]["train"] == np.bincount(labels).tolist() == [120, 30]
    assert weighted["balancing"] == {"class_weighting": "balanced", "sampler": "random", "loss_weights": pytest.approx(
        compute_class_weight("balanced", classes=np.array([0, 1]), y=np.array(labels)).tolist())}
    assert plain["balancing"]["loss_weights"] is None and sampled["balancing"]["sampler"] == "balanced"
    assert all(r["summary"]["feature_cache"].startswith("freeze: on: pre-logits") for r in (plain, weighted, sampled))
    p, w, s = plain["summary"], weighted["summary"], sampled["summary"]
    # Unweighted, the head learns the 4:1 prior (seen: balanced accuracy 0.50 on val and test, MCC 0);
    # weighted 0.91 / 0.83, sampled 0.68 / 0.61 (this machine, seed 42).
    assert w["best_val_balanced_acc"] >= p["best_val_balanced_acc"] + 0.1
    assert w["test_balanced_acc"] >= p["test_balanced_acc"] + 0.1 and w["test_mcc"] > p["test_mcc"]
    assert s["best_val_balanced_acc"] >= p["best_val_balanced_acc"] + 0.1
    assert s["test_balanced_acc"] > p["test_balanced_acc"]


def test_the_kept_epoch_is_the_monitors_best(args):
    """Real runs: the summary's best epoch is the first epoch with the best value of the monitored column of
    metrics.jsonl, and best_val_acc / best_val_balanced_acc are that epoch's."""
    kept = {}
    for monitor, pick in (("val_balanced_acc", max), ("val_loss", min), ("val_acc", max)):
        rec, rows, _ = run(args, FREEZE + [f"--run_id=m-{monitor}", f"--monitor={monitor}", "--sampler=balanced"])
        best = pick(rows, key=lambda r: r[monitor])           # max/min return the first of equals
        s = rec["summary"]
        assert s["best_epoch"] == best["epoch"], monitor
        assert (s["best_val_acc"], s["best_val_balanced_acc"]) == (best["val_acc"], best["val_balanced_acc"])
        assert rows[-1]["best_val_balanced_acc"] == best["val_balanced_acc"]
        kept[monitor] = s["best_epoch"]
    # The same training, three choices (seen: epochs 4, 5 and 1): accuracy keeps the majority-only epoch.
    assert kept["val_acc"] != kept["val_balanced_acc"], kept


def test_cached_features_and_images_agree_with_both_levers_on(args):
    """two_phase: a freeze phase, then a partial one, both cut and trained on cached fronts."""
    extra = ["--model=mobilenetv2_100", "--strategy=two_phase", "--epochs=3", "--phase1_epochs=2", "--lr=0.02",
             "--unfreeze_blocks=1", "--class_weighting=balanced", "--sampler=balanced", "--label_smoothing=0.1",
             "--dropout=0.2"]
    cached, rows_c, _ = run(args, extra + ["--run_id=cached"])
    plain, rows_p, _ = run(args, extra + ["--run_id=plain", "--feature_cache=false"])
    assert cached["summary"]["feature_cache"].startswith("freeze: on: pre-logits")
    assert "partial: on: after" in cached["summary"]["feature_cache"]
    assert "off (feature_cache=false)" in plain["summary"]["feature_cache"]
    for a, b in zip(rows_c, rows_p, strict=True):
        for key in ("train_loss", "val_loss", "train_acc", "val_acc", "val_balanced_acc"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), (a["epoch"], key)
    assert cached["summary"]["test_balanced_acc"] == pytest.approx(plain["summary"]["test_balanced_acc"], abs=1e-6)


def test_the_balanced_sampler_draws_classes_equally_over_epochs_of_the_same_length():
    labels = torch.tensor([0] * 120 + [1] * 30 + [2] * 6)
    decoded = data.Decoded(torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8), labels, [], [])
    drawn = data.loader(decoded, lambda x: x, batch_size=16, num_workers=0, seed=3, train=True, sampler="balanced")
    shuffled = data.loader(decoded, lambda x: x, batch_size=16, num_workers=0, seed=3, train=True)
    epochs = [torch.cat([y for _, y in drawn]) for _ in range(10)]
    assert all(len(e) == len(labels) for e in epochs) and len(drawn) == len(shuffled)
    share = torch.bincount(torch.cat(epochs), minlength=3).double() / (10 * len(labels))
    assert torch.allclose(share, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.05), share   # 1,560 draws
    assert not torch.equal(epochs[0], epochs[1])                        # a new draw every epoch
    assert torch.bincount(torch.cat([y for _, y in shuffled])).tolist() == [120, 30, 6]   # random: each image once


def test_the_weighted_loss_with_smoothing_and_soft_targets():
    torch.manual_seed(0)
    logits, hard = torch.randn(8, 3), torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])
    weight = balance.loss_weights("balanced", hard, 3)
    assert weight.tolist() == pytest.approx(compute_class_weight("balanced", classes=np.arange(3), y=hard.numpy()))
    assert balance.loss_weights("none", hard, 3) is None
    soft = torch.softmax(torch.randn(8, 3), 1)          # what timm's Mixup hands over
    mixed = balance.make_loss(weight, 0.1, mixing=True)
    expected = -(weight * soft * torch.log_softmax(logits, 1)).sum(1).mean()
    assert mixed(logits, soft).item() == pytest.approx(expected.item(), rel=1e-6)
    assert balance.make_loss(None, 0.1, mixing=True)(logits, soft).item() == \
        pytest.approx(SoftTargetCrossEntropy()(logits, soft).item(), rel=1e-6)   # unweighted: as before
    smoothed = balance.make_loss(weight, 0.1, mixing=False)(logits, hard)
    assert smoothed.item() == pytest.approx(torch.nn.functional.cross_entropy(
        logits, hard, weight=weight, label_smoothing=0.1).item())


def test_mixup_with_both_levers_runs(args):
    rec, rows, _ = run(args, ["--model=small_cnn", "--strategy=full", "--epochs=1", "--mixup=0.4", "--cutmix=1.0",
                              "--label_smoothing=0.1", "--class_weighting=balanced", "--sampler=balanced"])
    assert rec["state"] == "finished" and np.isfinite(rows[0]["train_loss"])
    assert rec["balancing"]["loss_weights"] == pytest.approx([150 / 240, 150 / 60])
