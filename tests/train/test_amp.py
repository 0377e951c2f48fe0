"""AMP that fits the card, checked without a GPU: the capability is patched. bf16 only where it is
native (8.0+), fp16 with a grad scaler on V100/T4/P100, fp32 elsewhere; the run record says which."""
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lib.config import build
from lib.train import training
from tests.train.test_training import run

KIND = "training"   # real training in this process: in `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]


def load_bench_gpu():
    """bench/gpu.py as a module (by path: `gpu` is also tests/gpu's package name)."""
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def accel_on(monkeypatch, capability, amp=True):
    """Accel for a CUDA device whose compute capability is ``capability`` (None: no CUDA at all)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # what the old choice asked: it says yes on a T4 too (bf16 emulated there)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    device = torch.device("cuda" if capability else "cpu")
    return training.Accel.for_config(build({"amp": amp}), device)


@pytest.mark.filterwarnings("ignore::UserWarning")   # GradScaler: CUDA is not really there
@pytest.mark.parametrize("capability,card,dtype,scaled", [
    ((9, 0), "H100", "bfloat16", False), ((8, 6), "RTX 3090", "bfloat16", False),
    ((8, 0), "A100", "bfloat16", False), ((7, 5), "T4", "float16", True), ((7, 0), "V100", "float16", True),
    ((6, 0), "P100", "float16", True), ((6, 1), "GTX 1080", "off", False), ((5, 2), "M60", "off", False),
    (None, "CPU", "off", False)])
def test_amp_dtype_follows_the_card(monkeypatch, capability, card, dtype, scaled):
    accel = accel_on(monkeypatch, capability)
    assert accel.amp_dtype == dtype, card
    assert (accel.scaler is not None) == scaled, card
    assert isinstance(accel.autocast(), torch.autocast) == (dtype != "off")


def test_amp_off_is_fp32_on_any_card(monkeypatch):
    accel = accel_on(monkeypatch, (9, 0), amp=False)
    assert accel.amp_dtype == "off" and accel.scaler is None


def test_the_record_says_which_precision_and_no_compile(base_args):
    rec, _, _ = run(base_args, ["--model=small_cnn", "--strategy=full", "--epochs=1"])
    assert rec["summary"]["amp_dtype"] == "off"          # CPU: fp32
    assert rec["summary"]["compile_s"] is None
    assert rec["config"]["compile"] is False


def _compiled_run(base_args):
    rec, rows, folder = run(base_args, ["--model=small_cnn", "--strategy=full", "--epochs=2", "--compile=true",
                                        "--lr=3e-3"])
    assert rec["state"] == "finished" and len(rows) == 2
    assert rec["summary"]["compile_s"] > 0
    from safetensors.torch import load_file
    assert not any(k.startswith("_orig_mod") for k in load_file(folder / "model.safetensors"))


def test_compiled_training_finishes_and_records_its_compile_time(base_args, monkeypatch):
    """The kit's compile path with dynamo + AOTAutograd (backend aot_eager): inductor's C++ code
    generation alone takes 70 s for small_cnn's first step on this 2-core machine (the slow test below)."""
    import functools
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    _compiled_run(base_args)


@pytest.mark.opt_in   # inductor compiles for 70+ s on this CPU
def test_compiled_training_with_inductor(base_args):
    _compiled_run(base_args)


def test_bench_gpu_cpu_smoke(tmp_path):
    """bench/gpu.py --cpu: the GPU check's every section at toy sizes on the CPU."""
    out = tmp_path / "gpu.json"
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--cpu", "--out", str(out), "--work", str(tmp_path / "w")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["seconds"] < 180, time.perf_counter() - t
    tp = res["throughput"]
    for key in ("synthetic", "data_path", "fp32", "contiguous", "compiled"):
        assert tp[key]["images_per_s"] > 0, key
    assert tp["data_path_vs_synthetic"] > 0
    aug = res["augment"]
    assert set(aug) >= {"cpu", "device", "max_mean_diff", "max_std_diff", "equal"}
    assert aug["equal"] is True
    st = res["study"]
    assert st["kit_s"] > 0 and st["baseline_s"] > 0 and st["speedup"] > 0
    assert 0 <= st["kit_best_val_acc"] <= 1 and 0 <= st["baseline_best_val_acc"] <= 1
    assert "images/s" in proc.stdout          # the table


def test_batch_augment_crops_like_the_cpu_transform():
    """BatchAugment (light augmentation on the GPU) against the CPU's RandomResizedCrop + flip, run here
    on the CPU: 4,096 crops of a ramp image agree in mean and spread (a first version clamped crops
    that did not fit, and drew positions off the pixel grid: 7% less spread in crop positions)."""
    from tests.train.test_speed import _ramps

    bench_gpu = load_bench_gpu()

    dc = {"input_size": [3, 48, 48], "mean": [0.5] * 3, "std": [0.25] * 3}
    res = bench_gpu.augment(torch.device("cpu"), dc, _ramps(4096))
    assert res["shape"] == [3, 48, 48]
    assert res["equal"], (res["max_mean_diff"], res["max_std_diff"])
