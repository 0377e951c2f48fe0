#!/usr/bin/env python
"""The logistic-regression probe of issue 21: frozen pretrained features + scikit-learn's
LogisticRegression, the baseline a fine-tuning study has to beat.

    python bench/probe.py data/bench/mnist5k [--image_size 224] [--seed 42] [--json out.json]

- Split: the kit's own (``lib.train.data.discover``, same ``val_fraction``/``test_fraction`` defaults),
  so with the same seed the probe is scored on exactly the test images of the study's seed-42 runs.
- Features: the backbone built as the kit builds it (``lib.train.models.create``: timm, the ImageNet
  weights shipped by pip, timm's preprocessing with ``image_size`` as the side), images decoded as the
  kit decodes them (shorter side to input/crop_pct, centre crop), pre-logits features in eval mode.
- Classifier: features standardised, L2 logistic regression; C picked from a small grid on the
  validation split by balanced accuracy (= accuracy on balanced classes), then scored once on test.
Prints one JSON object (and writes it with --json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # before timm: the weights come from pip, never the hub
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: lib/ is one folder up

import numpy as np
import torch

from lib.config import build
from lib.errors import DataError
from lib.files import write_json
from lib.train import data, models

ROOT = Path(__file__).resolve().parents[1]

C_GRID = (0.01, 0.1, 1.0, 10.0)


def features(model: torch.nn.Module, decoded: data.Decoded, data_cfg: dict, batch_size: int = 64) -> np.ndarray:
    transform = data.transforms(data_cfg, "none", train=False)
    out = []
    with torch.inference_mode():
        for i in range(0, len(decoded.labels), batch_size):
            x = transform(decoded.images[i:i + batch_size])
            out.append(model.forward_head(model.forward_features(x), pre_logits=True).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def fit_and_score(feats: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(c):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
        return clf.fit(feats["train"], labels["train"])

    val = {c: balanced_accuracy_score(labels["val"], fit(c).predict(feats["val"])) for c in C_GRID}
    best_c = max(C_GRID, key=lambda c: (val[c], -c))   # ties: the stronger regularisation
    pred = fit(best_c).predict(feats["test"])
    return {"C": best_c, "val_balanced_acc": {str(c): round(v, 4) for c, v in val.items()},
            "test_acc": float(accuracy_score(labels["test"], pred)),
            "test_balanced_acc": float(balanced_accuracy_score(labels["test"], pred))}


def probe(data_dir: str, image_size: int = 224, seed: int = 42, model_name: str = "mobilenetv2_100",
          min_image_side: int = 1) -> dict:
    cfg = build({"data_dir": data_dir, "model": model_name, "image_size": image_size, "seed": seed,
                 "device": "cpu", "min_image_side": min_image_side})
    splits = data.discover(cfg.data_dir, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    torch.manual_seed(seed)
    model, source, data_cfg = models.create(cfg, len(splits.classes), Path(cfg.cache_dir) / "weights")
    model.eval()
    side = data.resize_side(data_cfg)
    t0 = time.perf_counter()
    feats, labels = {}, {}
    for split in data.SPLITS:
        decoded = data.decode_split(Path(cfg.data_dir), splits.items[split], side, data_cfg["interpolation"],
                                    cfg.min_image_side, splits.skipped, desc=f"decode {split}")
        feats[split], labels[split] = features(model, decoded, data_cfg), decoded.labels.numpy()
    feature_s = time.perf_counter() - t0
    result = fit_and_score(feats, labels)
    return {"data_dir": str(data_dir), "model": model_name, "weights": source.get("kind"),
            "image_size": data_cfg["input_size"][-1], "stored_side": side, "seed": seed,
            "classes": splits.classes, "n": {s: len(labels[s]) for s in data.SPLITS},
            "skipped": len(splits.skipped), "feature_s": round(feature_s, 1), **result}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir")
    ap.add_argument("--image_size", type=int, default=224, help="input side (default 224, the weights' own)")
    ap.add_argument("--seed", type=int, default=42, help="the split's seed (default 42: the study's grid runs)")
    ap.add_argument("--model", default="mobilenetv2_100")
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args(argv)
    try:
        result = probe(a.data_dir, a.image_size, a.seed, a.model)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        write_json(Path(a.json), result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
