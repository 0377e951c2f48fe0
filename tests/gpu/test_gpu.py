"""CUDA-only checks (marked ``gpu``, skipped without a CUDA device): an AMP run learns and scores
like fp32, batches arrive channels_last, augmentation on the GPU has the right shapes, ranges and
distribution, and a worker given one GPU by CUDA_VISIBLE_DEVICES sees exactly that one."""
import os
import subprocess
import sys

import pytest
import torch

from lib.config import build
from lib.train import data, training
from tests.train.test_speed import _ramps
from tests.train.test_training import run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA_ARGS = ["--device=cuda", "--model=mobilenetv2_100", "--image_size=64", "--strategy=full", "--epochs=4",
             "--lr=1e-2", "--backbone_lr_mult=0.01", "--optimizer=adam", "--scheduler=constant"]


def test_amp_run_learns_and_scores_like_fp32(base_args):
    amp, amp_rows, _ = run(base_args, CUDA_ARGS + ["--run_id=amp", "--amp=true"])
    fp32, _, _ = run(base_args, CUDA_ARGS + ["--run_id=fp32", "--amp=false"])
    expected = training.amp_name(training.amp_dtype(torch.device("cuda")))
    assert amp["summary"]["amp_dtype"] == expected and fp32["summary"]["amp_dtype"] == "off"
    assert amp_rows[-1]["train_loss"] < amp_rows[0]["train_loss"]
    n = len(amp["test_predictions"]["y_true"])
    for key in ("best_val_acc", "test_acc"):   # within a point, or one image of these small splits
        assert abs(amp["summary"][key] - fp32["summary"][key]) <= max(0.01, 1 / n) + 1e-9, key


def test_batches_arrive_channels_last_on_the_gpu():
    from lib.train.run import make_loaders

    cfg = build({"device": "cuda", "augment": "light", "batch_size": 4})
    accel = training.Accel.for_config(cfg, torch.device("cuda"))
    decoded = data.Decoded(_ramps(10), torch.arange(10) % 2, [f"{i}.png" for i in range(10)], [""] * 10)
    dc = {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear",
          "crop_pct": 0.875}
    loaders = make_loaders(cfg, dc, {"train": decoded, "val": decoded, "test": decoded}, False, torch.device("cuda"))
    for split in ("train", "val"):
        x, y = accel.to_device(*next(iter(loaders[split])))
        assert x.is_cuda and y.is_cuda and x.shape == (4, 3, 64, 64)
        assert x.is_contiguous(memory_format=torch.channels_last)


def test_gpu_augmentation_shapes_ranges_and_distribution():
    from tests.train.test_amp import load_bench_gpu

    bench_gpu = load_bench_gpu()

    aug = data.BatchAugment(48, mean=(0.5,) * 3, std=(0.25,) * 3)
    out = aug(_ramps(32).cuda())
    assert out.is_cuda and out.shape == (32, 3, 48, 48) and out.dtype == torch.float32
    pixels = out * 0.25 + 0.5
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    dc = {"input_size": [3, 48, 48], "mean": [0.5] * 3, "std": [0.25] * 3}
    assert bench_gpu.augment(torch.device("cuda"), dc, _ramps(4096))["equal"]


def test_one_worker_per_gpu_sees_only_its_gpu():
    """What a worker started with CUDA_VISIBLE_DEVICES=i gets: one device, GPU i, as cuda:0."""
    last = torch.cuda.device_count() - 1
    name = torch.cuda.get_device_name(last)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(last)}
    code = "import torch; print(torch.cuda.device_count(), torch.cuda.get_device_name(0), sep='|')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == f"1|{name}"
