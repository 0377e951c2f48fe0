"""The training loop: phases of a strategy, epochs, early stopping, best checkpoint, test at the end."""
from __future__ import annotations

import copy
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from timm.data import Mixup
from torch import nn
from tqdm import tqdm

from lib import strategies
from lib.config import Config
from lib.optim import Schedule, create_optimizer


class TrainingFailed(RuntimeError):
    """The run cannot go on (e.g. the loss became NaN); the run is marked failed with this reason."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class Accel:
    """How batches run on the device: autocast dtype, grad scaler, memory format."""
    device: torch.device
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    memory_format: torch.memory_format

    @classmethod
    def for_config(cls, cfg: Config, device: torch.device) -> "Accel":
        cuda = device.type == "cuda"
        dtype = None
        if cfg.amp and cuda:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        fmt = torch.channels_last if cfg.channels_last and cuda else torch.contiguous_format
        return cls(device, dtype, scaler, fmt)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()

    def to_device(self, x: torch.Tensor, y: torch.Tensor):
        x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return x, y.to(self.device, non_blocking=True)


def make_mixup(cfg: Config, num_classes: int) -> Mixup | None:
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                 num_classes=num_classes)


def train_epoch(model, loader, opt, schedule, loss_fn, mixup, accel: Accel, desc: str) -> dict:
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for x, y in tqdm(loader, desc=desc, leave=False, disable=None, unit="batch"):
        x, y = accel.to_device(x, y)
        target = y
        if mixup is not None and len(x) % 2 == 0:
            x, target = mixup(x, y)
        with accel.autocast():
            logits = model(x)
            loss = loss_fn(logits, target) if mixup is None or target.ndim == 2 else \
                nn.functional.cross_entropy(logits, target)
        if not torch.isfinite(loss):
            raise TrainingFailed(f"loss became {loss.item()} at {desc}: lower lr or check the data")
        opt.zero_grad(set_to_none=True)
        if accel.scaler:
            accel.scaler.scale(loss).backward()
            accel.scaler.step(opt)
            accel.scaler.update()
        else:
            loss.backward()
            opt.step()
        schedule.step_batch()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1), "images": seen,
            "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate(model, loader, accel: Accel) -> dict:
    model.eval()
    total_loss, preds, labels = 0.0, [], []
    for x, y in loader:
        x, y = accel.to_device(x, y)
        with accel.autocast():
            logits = model(x)
        total_loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
        preds.append(logits.argmax(1).cpu())
        labels.append(y.cpu())
    y_pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    y_true = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    n = len(y_true)
    return {"loss": total_loss / n if n else math.nan, "acc": (y_pred == y_true).float().mean().item() if n else math.nan,
            "y_true": y_true.numpy(), "y_pred": y_pred.numpy()}


class EarlyStopping:
    def __init__(self, patience: int):
        self.patience, self.bad = patience, 0

    def step(self, improved: bool) -> bool:
        """Record one epoch; True when training should stop."""
        self.bad = 0 if improved else self.bad + 1
        return bool(self.patience) and self.bad >= self.patience


def fit(cfg: Config, model: nn.Module, loaders: dict, accel: Accel, loss_fn: nn.Module,
        mixup: Mixup | None, on_epoch, on_best) -> dict:
    """Run every phase of the strategy. ``on_epoch(row)`` gets each epoch's metrics,
    ``on_best(state_dict)`` each new best model. Returns what the summary needs."""
    best = {"val_acc": -1.0, "epoch": 0, "train_acc": math.nan, "state": None}
    epoch, images, train_time, stopped_early, trainable = 0, 0, 0.0, False, 0
    plan = strategies.phases(cfg)
    bar = tqdm(total=cfg.epochs, desc="epochs", disable=None, unit="epoch")
    for index, phase in enumerate(plan):
        strategies.apply(model, strategies.trainable_names(model, cfg, phase))
        held = strategies.frozen_modules(model, cfg.train_bn)
        trainable = max(trainable, sum(p.numel() for p in model.parameters() if p.requires_grad))
        opt = create_optimizer(model, cfg, phase)
        schedule = Schedule(opt, cfg, phase.epochs, max(1, len(loaders["train"])))
        stopper = EarlyStopping(cfg.patience)
        for _ in range(phase.epochs):
            epoch += 1
            strategies.set_train_mode(model, held)
            lr = max(g["lr"] for g in opt.param_groups)
            tr = train_epoch(model, loaders["train"], opt, schedule, loss_fn, mixup, accel,
                             desc=f"epoch {epoch}/{cfg.epochs} {phase.name}")
            va = evaluate(model, loaders["val"], accel)
            schedule.step_epoch(va["acc"])
            images, train_time = images + tr["images"], train_time + tr["seconds"]
            row = {"epoch": epoch, "phase": phase.name, "lr": lr, "train_loss": tr["loss"],
                   "train_acc": tr["acc"], "val_loss": va["loss"], "val_acc": va["acc"],
                   "time_s": round(tr["seconds"], 3)}
            improved = va["acc"] > best["val_acc"]
            if improved:
                best.update(val_acc=va["acc"], epoch=epoch, train_acc=tr["acc"],
                            state=copy.deepcopy(model.state_dict()))
                on_best(best["state"])
            row["best_val_acc"] = best["val_acc"]
            on_epoch(row)
            bar.update(1)
            tqdm.write(f"epoch {epoch:>3} {phase.name:<8} lr {lr:.2e}  train loss {tr['loss']:.4f} "
                       f"acc {tr['acc']:.3f}  val loss {va['loss']:.4f} acc {va['acc']:.3f}",
                       file=sys.stderr)
            if stopper.step(improved):
                stopped_early = index == len(plan) - 1
                break
    bar.close()
    model.load_state_dict(best["state"])
    return {"best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
            "train_val_gap": best["train_acc"] - best["val_acc"], "epochs_run": epoch,
            "stopped_early": stopped_early, "trainable_params": trainable,
            "train_time_s": round(train_time, 3),
            "train_images_per_s": round(images / train_time, 2) if train_time else None}
