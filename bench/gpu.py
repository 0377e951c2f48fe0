#!/usr/bin/env python
"""The GPU check: one script, at most 8 minutes on one GPU, printing a table and writing JSON.

    python bench/gpu.py --out bench/results/gpu.json     # on a CUDA machine
    python bench/gpu.py --cpu --out /tmp/gpu.json        # the same sections at toy sizes (< 2 min)

1. throughput: training images/s of resnet50 at 224 px (``--cpu``: small_cnn at 32 px) with the
   kit's AMP choice (lib.train.training.amp_dtype) and channels_last on synthetic batches already on the
   device, against the kit's real data path (uint8 images from the decode cache, ``light``
   augmentation on the device, lib.train.run.make_loaders) - goal: the data path keeps >= 90% - and
   fp32, contiguous memory and torch.compile each against it.
2. augment: lib.train.data.BatchAugment on the device against the CPU's per-image RandomResizedCrop + flip
   on the same images: the means and standard deviations of the crops must agree.
3. study: bench/run.py's demo study (MobileNetV2 under the four strategies) on the device, the kit
   against the seed-style baseline side by side - goal: >= 5x, best val accuracy within a point.
Speed is measured here, never asserted in tests (the smoke test checks the JSON's shape).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: lib/ is one folder up
sys.path.insert(0, str(Path(__file__).resolve().parent))       # and bench/run.py is `run`, ahead of lib/

import run as bench_run  # bench/run.py: the demo study and the seed-style baseline
import timm
import torch
from torch import nn

from lib.config import build
from lib.files import read_json, write_json
from lib.train import data, demo_data, models
from lib.train.cache import SharedCache
from lib.train.run import make_loaders
from lib.train.training import Accel

ROOT = Path(__file__).resolve().parents[1]

# Sizes: the GPU check, and --cpu's toy version of the same sections.
SIZES = {
    "cuda": {"model": "resnet50", "image_size": 224, "batch_size": 128, "warmup": 5, "steps": 25,
             "per_class": 500, "augment_images": 4096, "study_quick": False, "compile_backend": "inductor"},
    # aot_eager: dynamo and AOTAutograd without inductor's C++ code generation, which takes minutes here
    "cpu": {"model": "small_cnn", "image_size": 32, "batch_size": 16, "warmup": 1, "steps": 3,
            "per_class": 20, "augment_images": 256, "study_quick": True, "compile_backend": "aot_eager"},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(name: str, batches, accel: Accel, size: dict, compile_backend: str | None = None) -> dict:
    """Images/s of full training steps (SGD) over ``batches`` (an endless iterator of device batches),
    after ``warmup`` steps; with ``compile_backend`` the forward is torch.compiled and the warmup's
    time (where compiling happens) is reported as compile_s."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).to(accel.device, memory_format=accel.memory_format).train()
    forward = torch.compile(model, backend=compile_backend) if compile_backend else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    t0 = time.perf_counter()
    n = 0
    for i in range(size["warmup"] + size["steps"]):
        if i == size["warmup"]:
            sync(accel.device)
            warm_s, t, n = time.perf_counter() - t0, time.perf_counter(), 0
        x, y = next(batches)
        with accel.autocast():
            loss = nn.functional.cross_entropy(forward(x), y)
        accel.step(loss, opt)
        n += len(y)
    sync(accel.device)
    out = {"images_per_s": round(n / (time.perf_counter() - t), 1), "amp_dtype": accel.amp_dtype,
           "channels_last": accel.memory_format == torch.channels_last, "compile": bool(compile_backend)}
    return {**out, "compile_s": round(warm_s, 2)} if compile_backend else out


def synthetic(accel: Accel, size: dict):
    x = torch.randn(size["batch_size"], 3, size["image_size"], size["image_size"])
    x, y = accel.to_device(x, torch.randint(0, 10, (size["batch_size"],)))
    while True:
        yield x, y


def real_batches(cfg, dc: dict, decoded: dict, accel: Accel):
    """The kit's data path of a training run: make_loaders' train loader (on CUDA, uint8 batches cross
    to the GPU and light augmentation runs there), epoch after epoch."""
    loader = make_loaders(cfg, dc, decoded, False, accel.device)["train"]
    while True:
        for x, y in loader:
            yield accel.to_device(x, y)


def accel_for(device: torch.device, amp: bool = True, channels_last: bool = True) -> Accel:
    return Accel.for_config(build({"amp": amp, "channels_last": channels_last}), device)


def throughput(device: torch.device, size: dict, decoded: dict, dc: dict, cfg) -> dict:
    name, best = size["model"], accel_for(device)
    out = {"model": name, "image_size": size["image_size"], "batch_size": size["batch_size"],
           "synthetic": train_rate(name, synthetic(best, size), best, size),
           "data_path": train_rate(name, real_batches(cfg, dc, decoded, best), best, size)}
    fp32, contiguous = accel_for(device, amp=False), accel_for(device, channels_last=False)
    out["fp32"] = train_rate(name, synthetic(fp32, size), fp32, size)
    out["contiguous"] = train_rate(name, synthetic(contiguous, size), contiguous, size)
    out["compiled"] = train_rate(name, synthetic(best, size), best, size, size["compile_backend"])
    ref = out["synthetic"]["images_per_s"]
    out["data_path_vs_synthetic"] = round(out["data_path"]["images_per_s"] / ref, 3)
    out["amp_speedup"] = round(ref / out["fp32"]["images_per_s"], 3)
    out["channels_last_speedup"] = round(ref / out["contiguous"]["images_per_s"], 3)
    out["compile_speedup"] = round(out["compiled"]["images_per_s"] / ref, 3)
    return out


def augment(device: torch.device, dc: dict, images: torch.Tensor) -> dict:
    """BatchAugment on the device against the CPU's per-image transforms, same images, same sizes:
    mean and std of the pixels, and the spread of the per-image means (how much the crops vary)."""
    torch.manual_seed(0)
    cpu_tf, dev_tf = data.transforms(dc, "light", True), data.transforms(dc, "light", True, on_device=True)
    on_cpu = torch.stack([cpu_tf(img) for img in images])
    on_dev = dev_tf(images.to(device)).float().cpu()

    def stats(x):
        per_image = x.mean((2, 3))
        return {"mean": x.mean((0, 2, 3)).tolist(), "std": x.std((0, 2, 3)).tolist(),
                "image_mean_std": per_image.std(0).tolist()}
    a, b = stats(on_cpu), stats(on_dev)
    # Both sides crop at random: they agree when they differ by under 4 standard errors (of a mean:
    # std / sqrt(n); of a std, relative: about 1 / sqrt(n) for the difference of two). 4,096 images
    # tell a 6% narrower spread of crop positions apart (BatchAugment's first version clamped crops).
    n = len(images)
    se = [s / n ** 0.5 for s in a["image_mean_std"]]
    mean_diff = [abs(x - y) for x, y in zip(a["mean"], b["mean"], strict=True)]
    std_diff = [abs(x - y) / max(x, 1e-2)
                for x, y in zip(a["std"] + a["image_mean_std"], b["std"] + b["image_mean_std"], strict=True)]
    return {"images": n, "shape": list(on_dev.shape[1:]), "cpu": a, "device": b,
            "max_mean_diff": round(max(mean_diff), 4), "max_std_diff": round(max(std_diff), 4),
            "equal": (all(d <= 4 * s + 1e-3 for d, s in zip(mean_diff, se, strict=True))
                      and max(std_diff) <= 4 / n ** 0.5)}


def study(device: torch.device, work: Path, quick: bool) -> dict:
    """bench/run.py's study with device set: per strategy the kit (from an empty study cache) and
    the seed-style baseline. --cpu: freeze only, 20 images a class, 1 epoch, 32 px."""
    spec = bench_run.study(quick)
    common, strategies, per_class = {**spec["common"], "device": device.type}, spec["strategies"], spec["per_class"]
    if device.type == "cpu":
        common.update(epochs=1, image_size=32)
        strategies, per_class = ["freeze"], 20
    data_dir = demo_data.prepare(work / "study-data", per_class=per_class, classes=10, seed=0)
    shutil.rmtree(work / "runs", ignore_errors=True)
    out = {"strategies": {}, "kit_s": 0.0, "baseline_s": 0.0}
    for strategy in strategies:
        k_s, k_acc = bench_run.run_kit(data_dir, work / "runs", common, strategy)
        split = read_json(work / "runs" / f"kit-{strategy}" / "run.json")["split"]
        b_s, b_acc = bench_run.run_baseline(data_dir, split, common, strategy, device=device)
        out["strategies"][strategy] = {"kit_s": round(k_s, 2), "baseline_s": round(b_s, 2),
                                       "kit_val_acc": k_acc, "baseline_val_acc": b_acc}
        out["kit_s"], out["baseline_s"] = out["kit_s"] + k_s, out["baseline_s"] + b_s
    runs = out["strategies"].values()
    out.update(kit_s=round(out["kit_s"], 2), baseline_s=round(out["baseline_s"], 2),
               speedup=round(out["baseline_s"] / out["kit_s"], 2),
               kit_best_val_acc=max(r["kit_val_acc"] for r in runs),
               baseline_best_val_acc=max(r["baseline_val_acc"] for r in runs))
    out["acc_diff"] = round(out["kit_best_val_acc"] - out["baseline_best_val_acc"], 4)
    return out


def load_images(device: torch.device, size: dict, work: Path):
    """Demo images decoded through the study cache the way a run does (lib.train.data.decode_cached)."""
    cfg = build({"model": size["model"], "image_size": size["image_size"], "batch_size": size["batch_size"],
                 "augment": "light", "device": device.type, "seed": 0})
    model = timm.create_model(size["model"], num_classes=10) if size["model"] != "small_cnn" else models.small_cnn()
    dc = models.data_config(model, cfg)
    root = demo_data.prepare(work / "data", per_class=size["per_class"], classes=10, seed=0)
    splits = data.discover(str(root), 0.15, 0.15, 0)
    cache = SharedCache(work / "cache", cfg.cache_memory_mb)
    decoded = {s: data.decode_cached(cache, root, splits.items[s], data.resize_side(dc), dc["interpolation"], 16,
                                     [], desc=f"decode {s}") for s in data.SPLITS}
    return cfg, dc, decoded


def table(res: dict) -> str:
    tp, lines = res["throughput"], []
    lines.append(f"{tp['model']} training at {tp['image_size']} px, batch {tp['batch_size']} on {res['device_name']}")
    lines.append(f"{'variant':<34}{'images/s':>10}")
    for key, label in (("synthetic", "AMP + channels_last, synthetic"), ("data_path", "AMP + channels_last, data path"),
                       ("fp32", "fp32 + channels_last"), ("contiguous", "AMP, contiguous"),
                       ("compiled", "AMP + channels_last + compile")):
        lines.append(f"{label:<34}{tp[key]['images_per_s']:>10.1f}")
    lines.append(f"data path / synthetic {tp['data_path_vs_synthetic']:.2f} (goal >= 0.90); "
                 f"AMP ({tp['synthetic']['amp_dtype']}) "
                 f"x{tp['amp_speedup']:.2f}; channels_last x{tp['channels_last_speedup']:.2f}; compile "
                 f"x{tp['compile_speedup']:.2f} after {tp['compiled']['compile_s']:.1f} s")
    au = res["augment"]
    lines.append(f"augmentation on the device vs CPU: max mean diff {au['max_mean_diff']}, max std diff "
                 f"{au['max_std_diff']:.1%}: {'equal' if au['equal'] else 'DIFFERENT'}")
    st = res["study"]
    lines.append(f"study: kit {st['kit_s']:.1f} s vs baseline {st['baseline_s']:.1f} s = x{st['speedup']:.2f} "
                 f"(goal >= 5); best val acc kit {st['kit_best_val_acc']:.3f} baseline "
                 f"{st['baseline_best_val_acc']:.3f}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="run on the CPU at toy sizes (the test suite's smoke test)")
    ap.add_argument("--out", default="bench/results/gpu.json")
    ap.add_argument("--work", default="", help="folder for images, caches and runs (default bench/results/gpu-work)")
    args = ap.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("error: no CUDA device: run on a GPU machine, or pass --cpu for the toy version", file=sys.stderr)
        return 2
    started = time.perf_counter()
    device = torch.device("cpu" if args.cpu else "cuda")
    size = SIZES[device.type]
    work = Path(args.work or ROOT / "bench" / "results" / ("gpu-work-cpu" if args.cpu else "gpu-work"))
    res = {"device": device.type, "torch": torch.__version__, "machine": platform.machine(),
           "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
           "capability": list(torch.cuda.get_device_capability(0)) if device.type == "cuda" else None}
    res["section_s"] = {}

    def timed(name, fn, *a):   # each section's seconds: where the 8 minutes go
        t = time.perf_counter()
        res[name] = fn(*a)
        res["section_s"][name] = round(time.perf_counter() - t, 1)
    timed("images", load_images, device, size, work)
    cfg, dc, decoded = res.pop("images")
    timed("throughput", throughput, device, size, decoded, dc, cfg)
    train = decoded["train"].images
    timed("augment", augment, device, dc, train[torch.arange(size["augment_images"]) % len(train)])
    timed("study", study, device, work, size["study_quick"])
    res["seconds"] = round(time.perf_counter() - started, 1)
    print(table(res))
    print(f"{res['seconds']:.0f} s")
    write_json(Path(args.out), res)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
