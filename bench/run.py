#!/usr/bin/env python
"""Benchmark: the kit against the plain approach of the user's documents, side by side in one run.

    python bench/run.py --quick --out bench/results/quick.json

Both sides run the same study (sweeps/demo.yaml's strategies on pretrained MobileNetV2, or a smaller
CPU-sized subset with --quick) with the same hyperparameters, epochs and seeds:
- kit: `finetune_resnet.py`'s code path (images decoded once per study, the frozen front of
  freeze/partial phases computed once and shared by the study's runs, channels_last; W&B off),
  starting from an empty study cache, so the study pays for building it;
- baseline: torchvision ImageFolder + PIL transforms every epoch, fp32, a fresh model per run, the
  backbone frozen with requires_grad only, recomputed every epoch (the way the seed scripts do it).
Prints one line per figure and writes JSON. Speed is measured here, never asserted in tests.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: lib/ is one folder up

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from lib.config import build, recipe_as_keys
from lib.files import read_json, write_json
from lib.sweep import spec as sweep_spec
from lib.train import demo_data, strategies
from lib.train.run import main as kit_main

ROOT = Path(__file__).resolve().parents[1]

DEMO = ROOT / "sweeps" / "demo.yaml"
CPU = torch.device("cpu")   # run_baseline's default device
FOUR = ("freeze", "partial", "full", "two_phase")   # the demo's strategies the figures below were measured on


def study(quick: bool) -> dict:
    """The pretrained side of sweeps/demo.yaml's grid (MobileNetV2 under each strategy) with the
    YAML's fixed settings; --quick: 1,500 images and 3 epochs instead of 5,000 and the YAML's 4."""
    flat = [recipe_as_keys(p) for p in sweep_spec.load(str(DEMO)).grid()]
    points = [p for p in flat if p["model"] == "mobilenetv2_100" and p["strategy"] in FOUR]
    # Every strategy at partial's settings (4 epochs, constant LR): demo.yaml gives freeze 15 cheap epochs on
    # stored features, which the baseline would pay for in full; side by side, both do the same work.
    shared = next(p for p in points if p["strategy"] == "partial")
    common = {k: v for k, v in shared.items() if k not in ("strategy", "data_dir")}
    common.update(device="cpu", **({"epochs": 3} if quick else {}))
    return {"per_class": 150 if quick else 500, "common": common, "strategies": [p["strategy"] for p in points]}


def run_kit(data_dir: Path, runs_dir: Path, common: dict, strategy: str) -> tuple[float, float]:
    args = [f"--{k}={v}" for k, v in {**common, "strategy": strategy}.items()]
    t = time.perf_counter()
    assert kit_main(args + [f"--data_dir={data_dir}", f"--runs_dir={runs_dir}", f"--run_id=kit-{strategy}"]) == 0
    seconds = time.perf_counter() - t
    return seconds, read_json(runs_dir / f"kit-{strategy}" / "run.json")["summary"]["best_val_acc"]


def run_baseline(data_dir: Path, split: dict, common: dict, strategy: str,
                 device: torch.device = CPU) -> tuple[float, float]:
    """The seed scripts' loop: ImageFolder + PIL every epoch, requires_grad freezing, fp32
    (``device``: the model and each batch moved there, as the seed scripts do on a GPU)."""
    t = time.perf_counter()
    torch.manual_seed(common["seed"])
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=10)
    model.load_state_dict(_kit_initial_weights(), strict=False)
    model.to(device)
    train, val, _ = baseline_data(model, data_dir, split, common["image_size"])
    kit_cfg = build({**common, "strategy": strategy})
    best = 0.0
    for phase in strategies.phases(kit_cfg):
        strategies.apply(model, strategies.trainable_names(model, kit_cfg, phase))
        lr = common["lr"] * (phase.lr_scale if not phase.discriminative else 1.0)
        opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=lr)
        for _ in range(phase.epochs):
            model.train()
            for x, y in DataLoader(train, batch_size=common["batch_size"], shuffle=True):
                x, y = x.to(device), y.to(device)
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y, label_smoothing=common.get("label_smoothing", 0.0)).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                hits = sum((model(x.to(device)).argmax(1).cpu() == y).sum().item()
                           for x, y in DataLoader(val, batch_size=common["batch_size"]))
            best = max(best, hits / len(val))
    return time.perf_counter() - t, best


def baseline_data(model, data_dir: Path, split: dict, size: int) -> list[Subset]:
    """The seed scripts' data: an ImageFolder decoded with PIL on every access."""
    cfg = timm.data.resolve_model_data_config(model)
    tf = transforms.Compose([transforms.Grayscale(3), transforms.Resize(int(size / cfg["crop_pct"])),
                             transforms.CenterCrop(size), transforms.ToTensor(),
                             transforms.Normalize(cfg["mean"], cfg["std"])])
    folder = datasets.ImageFolder(str(data_dir), transform=tf)
    index = {p: i for i, (p, _) in enumerate(folder.samples)}
    return [Subset(folder, [index[str(data_dir / p)] for p in split[s]]) for s in ("train", "val", "test")]


def _kit_initial_weights() -> dict:
    from safetensors.torch import load_file

    from lib.train.weights import pip_weights_file
    state = load_file(pip_weights_file("mobilenetv2_100", Path.home() / ".cache" / "finetune-kit" / "weights"))
    return {k: v for k, v in state.items() if not k.startswith("classifier")}


def throughput(model, batches, steps=10) -> float:
    """Images per second of full fine-tuning steps over the given batches."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    n, t = 0, time.perf_counter()
    for i, (x, y) in enumerate(batches):
        if i == steps:
            break
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        n += len(y)
    return n / (time.perf_counter() - t)


def efficiency(data_dir: Path, runs_dir: Path, common: dict, freeze_s: float) -> dict:
    """full_efficiency: full fine-tuning throughput on the kit's real batches / on synthetic tensors
    already in memory (how busy the data path keeps the model).
    freeze_efficiency: one plain pass over the data - read and decode every image a run uses (train,
    val, test) and run the model over it once, the baseline's way: the least a freeze run can do -
    / the kit's freeze run (which decodes, extracts, trains its epochs, tests and writes records).
    freeze_efficiency_vs_kit_forward: the same with the kit's own forward pass over decoded images
    (no decoding, channels_last) as the reference: what the run costs beyond its forward pass."""
    from lib.train import data as data_lib
    from lib.train.models import data_config
    from lib.train.training import Accel

    cfg = build({**common, "strategy": "full"})
    accel = Accel.for_config(cfg, torch.device("cpu"))
    model = timm.create_model("mobilenetv2_100", num_classes=10).to(memory_format=accel.memory_format)
    dc = data_config(model, cfg)
    rec = read_json(runs_dir / "kit-full" / "run.json")
    decoded = {s: data_lib.decode_split(data_dir, [(p, rec["classes"].index(Path(p).parent.name)) for p in paths],
                                        data_lib.resize_side(dc), dc["interpolation"], 16, [], s)
               for s, paths in rec["split"].items()}

    def batches(split):
        return ((accel.to_device(x, y)) for x, y in data_lib.loader(
            decoded[split], data_lib.transforms(dc, "none", False), common["batch_size"], 0, 0,
            train=split == "train", batched=True))
    x, y = next(batches("train"))
    synthetic = [(torch.randn_like(x), torch.randint(0, 10, y.shape))] * 10
    throughput(model, synthetic, 2)
    # Alternating rounds, median ratio: this shared machine's speed drifts between seconds.
    ratios = [throughput(model, batches("train")) / throughput(model, synthetic) for _ in range(5)]
    model.eval()
    t = time.perf_counter()
    with torch.no_grad():
        for split in decoded:
            for x, _ in batches(split):
                model(x)
    kit_forward_s = time.perf_counter() - t
    plain = timm.create_model("mobilenetv2_100", num_classes=10).eval()
    t = time.perf_counter()
    with torch.no_grad():
        for subset in baseline_data(plain, data_dir, rec["split"], common["image_size"]):
            for x, _ in DataLoader(subset, batch_size=common["batch_size"]):
                plain(x)
    plain_pass_s = time.perf_counter() - t
    return {"full_efficiency": round(statistics.median(ratios), 3), "plain_pass_s": round(plain_pass_s, 2),
            "kit_forward_s": round(kit_forward_s, 2), "freeze_efficiency": round(plain_pass_s / freeze_s, 3),
            "freeze_efficiency_vs_kit_forward": round(kit_forward_s / freeze_s, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a CPU-sized subset (a few minutes on 2 cores)")
    ap.add_argument("--out", default="bench/results/latest.json")
    args = ap.parse_args()
    spec = study(args.quick)
    work = ROOT / "bench" / "results" / ("quick" if args.quick else "full")
    data_dir = demo_data.prepare(work / "data", per_class=spec["per_class"], classes=10, seed=0)
    common = spec["common"]
    shutil.rmtree(work / "runs", ignore_errors=True)   # the kit pays for its study cache inside the study
    out: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                             "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                             "torch": torch.__version__}, "quick": args.quick}
    kit_total = base_total = 0.0
    strategies_run = spec["strategies"]
    for strategy in strategies_run:
        k_s, k_acc = run_kit(data_dir, work / "runs", common, strategy)
        split = read_json(work / "runs" / f"kit-{strategy}" / "run.json")["split"]
        b_s, b_acc = run_baseline(data_dir, split, common, strategy)
        kit_total, base_total = kit_total + k_s, base_total + b_s
        out[f"{strategy}_speedup"] = round(b_s / k_s, 2)
        out[f"{strategy}_kit_s"], out[f"{strategy}_baseline_s"] = round(k_s, 2), round(b_s, 2)
        out[f"{strategy}_kit_val_acc"], out[f"{strategy}_baseline_val_acc"] = k_acc, b_acc
        print(f"{strategy:<10} kit {k_s:7.1f}s val {k_acc:.3f} | baseline {b_s:7.1f}s val {b_acc:.3f} "
              f"| speedup {b_s / k_s:.2f}x", flush=True)
    out.update(kit_study_s=round(kit_total, 2), baseline_study_s=round(base_total, 2),
               study_speedup=round(base_total / kit_total, 2),
               kit_best_val_acc=max(out[f"{s}_kit_val_acc"] for s in strategies_run),
               baseline_best_val_acc=max(out[f"{s}_baseline_val_acc"] for s in strategies_run))
    out.update(efficiency(data_dir, work / "runs", common, out["freeze_kit_s"]))
    for key in ("kit_study_s", "baseline_study_s", "study_speedup", "full_efficiency", "freeze_efficiency",
                "freeze_efficiency_vs_kit_forward", "kit_best_val_acc", "baseline_best_val_acc"):
        print(f"{key}: {out[key]}")
    write_json(Path(args.out), out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
