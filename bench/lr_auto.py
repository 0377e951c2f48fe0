#!/usr/bin/env python
"""Benchmark: ``lr: auto`` against the recipe's fixed rate, and the rule against the other usual rules.

    python bench/lr_auto.py --out bench/results/lr_auto.json

On 2- and 3-class subsets of Animal-MNIST (real grayscale silhouettes, by pip), several seeds each, the
real run (lib.train.run.main, W&B off): one run with ``lr: auto``, then fixed-rate runs with the same
seed at the recipe's rate and at what the other rules picked on the same curve (fastai's valley, the
minimum / 10, the steepest descent: lr_find.json's ``alternatives``). Prints one line per run and writes
JSON; docs/lr-auto.md and bench/RESULTS.md quote it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: lib/ is one folder up

import numpy as np
from PIL import Image

from lib.files import read_json, write_json
from lib.train import demo_data
from lib.train.run import main

ROOT = Path(__file__).resolve().parents[1]

SUBSETS = {"cat-dog": ("cat", "dog"), "bird-zebra": ("bird", "zebra"),
           "cow-horse-sheep": ("cow", "horse", "sheep"), "bear-elephant-giraffe": ("bear", "elephant", "giraffe")}


def subset(out: Path, names: tuple[str, ...], per_class: int) -> Path:
    """An ImageFolder of ``per_class`` images of each named class (reused when already written)."""
    if out.exists():
        return out
    images, labels = demo_data.load_arrays()
    rng = np.random.default_rng(0)
    for name in names:
        folder = out / name
        folder.mkdir(parents=True)
        label = demo_data.CLASSES.index(name)
        for i in rng.permutation(np.flatnonzero(labels == label))[:per_class]:
            Image.fromarray(images[i], mode="L").save(folder / f"{name}_{i:05d}.png")
    return out


def one(args: list[str], run_id: str, lr: str) -> dict:
    started = time.time()
    code = main(args + [f"--lr={lr}", f"--run_id={run_id}", "--overwrite"])
    assert code == 0, f"{run_id} exited {code}"
    runs_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("--runs_dir=")))
    rec = read_json(runs_dir / run_id / "run.json")
    return {"run_id": run_id, "lr_arg": lr, "lr": rec["config"]["lr"], "best_val_acc": rec["summary"]["best_val_acc"],
            "test_acc": rec["summary"]["test_acc"], "wall_s": round(time.time() - started, 2),
            "lr_find": rec.get("lr_find"),
            "alternatives": (read_json(runs_dir / run_id / "lr_find.json")["alternatives"]
                             if rec.get("lr_find") else None)}


def main_(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/lr_auto_bench")
    ap.add_argument("--out", default="bench/results/lr_auto.json")
    ap.add_argument("--per_class", type=int, nargs="+", default=[40, 150])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--strategies", nargs="+", default=["freeze", "partial"])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--fixed", default="1e-3", help="the recipe's rate (the config's default)")
    a = ap.parse_args(argv)
    work = Path(a.work)
    rows = []
    for name, classes in SUBSETS.items():
        for per in a.per_class:
            data = subset(work / "data" / f"{name}-{per}", classes, per)
            for strategy in a.strategies:
                for seed in range(a.seeds):
                    args = [f"--data_dir={data}", f"--runs_dir={work / 'runs'}", f"--cache_dir={work / 'weights'}",
                            "--model=mobilenetv2_100", "--image_size=64", "--min_image_side=16", "--augment=none",
                            "--val_fraction=0.25", "--test_fraction=0.25", f"--epochs={a.epochs}", "--device=cpu",
                            f"--strategy={strategy}", "--unfreeze_blocks=1", f"--seed={seed}", "--log_model=false"]
                    tag = f"{name}-{per}-{strategy}-s{seed}"
                    auto = one(args, f"{tag}-auto", "auto")
                    point = {"subset": name, "classes": len(classes), "per_class": per, "strategy": strategy,
                             "seed": seed, "auto": auto, "fixed": one(args, f"{tag}-fixed", a.fixed), "rules": {}}
                    for rule, lr in (auto["alternatives"] or {}).items():
                        point["rules"][rule] = one(args, f"{tag}-{rule}", repr(lr))
                    rows.append(point)
                    print(f"{tag}: auto lr {auto['lr']:.2e} val {auto['best_val_acc']:.3f} "
                          f"(test {auto['test_acc']:.3f}, range test {auto['lr_find']['seconds']} s) | "
                          f"fixed {a.fixed} val {point['fixed']['best_val_acc']:.3f} | " +
                          " ".join(f"{r} {v['lr']:.1e}:{v['best_val_acc']:.3f}" for r, v in point["rules"].items()),
                          flush=True)
    gaps = [r["auto"]["best_val_acc"] - r["fixed"]["best_val_acc"] for r in rows]
    print(f"auto - fixed best_val_acc: mean {statistics.mean(gaps):+.4f}, min {min(gaps):+.4f} over {len(gaps)} runs")
    for rule in rows[0]["rules"]:
        g = [r["rules"][rule]["best_val_acc"] - r["fixed"]["best_val_acc"] for r in rows]
        print(f"{rule} - fixed: mean {statistics.mean(g):+.4f}, min {min(g):+.4f}")
    write_json(Path(a.out), {"argv": sys.argv[1:], "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
