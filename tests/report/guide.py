"""The 3_Finetuning guide's sweep as run records on disk, shared by the report tests: the helpers that
write runs (``write_run``, ``summ``, ``curve``, ``wrong``) and the ``guide_sweep``/``guide_report`` fixtures,
registered once as a plugin in tests/conftest.py."""
import json
from pathlib import Path

import pytest

from lib.report import build_report

CLASSES = ["beagle", "boxer", "german_shepherd", "golden_retriever", "poodle"]
TEST_FILES = [f"{c}/{c}_{i:03d}.jpg" for c in CLASSES for i in range(25)]   # 125 images, as in the guide
Y_TRUE = [i // 25 for i in range(125)]


def wrong(n: int, offset: int = 0) -> list[int]:
    """Predictions on the 125 test images with exactly n errors (at spread positions)."""
    y = list(Y_TRUE)
    for j in range(n):
        i = (offset + 11 * j) % 125
        y[i] = (y[i] + 1) % 5
    return y


def curve(epochs=4, val_acc=0.9, gap=0.05, rising=False):
    rows = []
    peak = max(1, epochs - 1)                      # the best epoch, as in summ()
    for e in range(1, epochs + 1):
        va = val_acc * (0.7 + 0.3 * min(e, peak) / peak) - (0.005 if e > peak else 0.0)
        vl = 0.65 + 0.03 * (e - 3) if rising and e > 3 else 0.55 + 0.3 / e
        rows.append({"epoch": e, "phase": "freeze" if e <= 1 else "partial", "lr": 1e-3, "train_loss": 0.5 / e,
                     "train_acc": min(1.0, va + gap), "val_loss": vl, "val_acc": va, "time_s": 1.0,
                     "best_val_acc": va})
    return rows


def write_run(root: Path, run_id: str, *, state="finished", config=None, summary=None, history=None,
              y_pred=None, split_test=TEST_FILES, y_true=Y_TRUE, warnings=(), error=None, n_val=117, extra=None):
    d = root / run_id
    d.mkdir(parents=True)
    rec = {"id": run_id, "name": run_id, "state": state,
           "config": {"seed": 42, "run_id": run_id, "runs_dir": str(root), "data_dir": "data/dogs", **(config or {})},
           "summary": summary or {}, "classes": CLASSES, "warnings": list(warnings),
           "split": {"train": [], "val": [f"v{i}" for i in range(n_val)], "test": list(split_test)}}
    if y_pred is not None:
        rec["test_predictions"] = {"y_true": list(y_true), "y_pred": list(y_pred)}
    if error:
        rec["error"] = error
    rec.update(extra or {})
    (d / "run.json").write_text(json.dumps(rec))
    if history:
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return d


def summ(val, test_k, n=125, gap=0.01, trainable=1e6, total=2e6, size=10.0, t=100.0, epochs=4):
    return {"best_val_acc": val, "best_epoch": epochs - 1, "test_acc": test_k / n, "test_loss": 0.1,
            "test_f1_macro": test_k / n - 0.005, "train_val_gap": gap, "trainable_params": int(trainable),
            "total_params": int(total), "model_size_mb": size, "epochs_run": epochs, "train_time_s": t}


DUP = "3 test image(s) are exact copies of training images (e.g. beagle/beagle_001.jpg): test accuracy is inflated"


@pytest.fixture(scope="module")
def guide_sweep(tmp_path_factory):
    """The 3_Finetuning guide's table as a local sweep: 100% test on n=125 for three ResNet-50 runs."""
    root = tmp_path_factory.mktemp("guide")
    (root / "sweep.json").write_text(json.dumps({"name": "guide", "metric": "best_val_acc", "goal": "maximize",
                                                 "storage": None, "method": "grid"}))
    runs = root / "runs"
    r50 = dict(total=25.6e6, size=90.0)
    eff = dict(total=5.3e6, size=15.6)
    table = [  # id, model, strategy, lr, epochs, val, test correct of 125, trainable, time, gap, rising val loss
        ("r50_freeze", "resnet50", "freeze", 1e-3, 15, 0.9915, 125, 10245, 60, 0.0085, False),
        ("r50_partial", "resnet50", "partial", 1e-4, 15, 0.9915, 125, 15.0e6, 90, 0.0085, False),
        ("r50_full", "resnet50", "full", 1e-5, 20, 0.9829, 125, 25.6e6, 150, 0.0171, False),
        ("eff_partial", "efficientnet_b0", "partial", 1e-4, 15, 0.9829, 124, 11.2e6, 50, 0.0171, False),  # sic
        ("eff_freeze", "efficientnet_b0", "freeze", 1e-3, 15, 0.9744, 121, 6405, 30, 0.0256, False),
        ("eff_full", "efficientnet_b0", "full", 1e-5, 20, 0.9316, 115, 5.3e6, 80, 0.0684, True),
    ]
    for rid, model, strategy, lr, epochs, val, k, trainable, t, gap, rising in table:
        size = r50 if model == "resnet50" else eff
        write_run(runs, rid, config={"model": model, "strategy": strategy, "lr": lr, "epochs": epochs},
                  summary=summ(val, k, gap=gap, trainable=trainable, t=t, epochs=epochs, **size),
                  history=curve(epochs=epochs, val_acc=val, gap=gap, rising=rising), y_pred=wrong(125 - k, offset=3),
                  warnings=[DUP] if model == "resnet50" else [])
    write_run(runs, "scratch", config={"model": "small_cnn", "strategy": "full", "lr": 1e-3, "epochs": 20},
              summary=summ(0.60, 70, gap=0.35, trainable=0.42e6, total=0.42e6, size=1.6, t=20, epochs=20),
              history=curve(epochs=20, val_acc=0.6, gap=0.35), y_pred=wrong(55))
    write_run(runs, "r50_full_big_lr", state="failed", config={"model": "resnet50", "strategy": "full", "lr": 1e-2,
                                                               "epochs": 20},
              error="CUDA out of memory. Tried to allocate 2.00 GiB")
    trial = runs / "guide-009"          # a trial that died before writing run.json
    trial.mkdir()
    (trial / "sweep-params.yaml").write_text("wandb_version: 1\nmodel:\n  value: resnet50\nlr:\n  value: 0.1\n")
    (trial / "output.log").write_text("loading\nKilled\n")
    return root


@pytest.fixture(scope="module")
def guide_report(guide_sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("guide_report")
    return build_report(guide_sweep, out, latency={"r50_freeze": 40.0, "eff_partial": 12.0, "scratch": 2.0}), out
