"""Optimizers and learning-rate schedules, looked up by name.

Parameter groups carry the discriminative learning rates: the head group at ``lr``, the backbone
at ``lr * backbone_lr_mult``, and with ``layer_decay`` each block a further factor of
``layer_decay`` per block away from the head (timm's ``--layer-decay``). Biases and norm weights
get no weight decay. Schedules step once per batch (``plateau`` once per epoch, on the validation metric
the config's ``monitor`` names, in its direction).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim import lr_scheduler as sched

from lib.config import Config
from lib.train.selection import MONITORS
from lib.train.strategies import Phase, head_group, unit_groups


def param_groups(model: torch.nn.Module, cfg: Config, phase: Phase) -> list[dict]:
    head = head_group(model)
    layers = unit_groups(model, "block") if cfg.layer_decay else [[]]
    layer_of = {n: i for i, names in enumerate(layers) for n in names}
    last = len(layers) - 1
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = phase.lr_scale
        if phase.discriminative and name not in head:
            scale *= cfg.backbone_lr_mult
        if cfg.layer_decay:
            scale *= cfg.layer_decay ** (last - layer_of.get(name, last))
        decay = 0.0 if p.ndim <= 1 or name.endswith(".bias") else cfg.weight_decay
        groups.setdefault((scale, decay), []).append(p)
    return [{"params": ps, "lr": cfg.lr * scale, "weight_decay": decay}
            for (scale, decay), ps in sorted(groups.items(), key=lambda kv: kv[0])]


OPTIMIZERS: dict[str, Callable[[list[dict], Config], torch.optim.Optimizer]] = {
    "adam": lambda groups, cfg: torch.optim.Adam(groups, lr=cfg.lr),
    "adamw": lambda groups, cfg: torch.optim.AdamW(groups, lr=cfg.lr),
    "sgd": lambda groups, cfg: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                               nesterov=cfg.nesterov and cfg.momentum > 0),
}


def create_optimizer(model: torch.nn.Module, cfg: Config, phase: Phase) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](param_groups(model, cfg, phase), cfg)


# name -> function(optimizer, cfg, total_steps, steps_per_epoch) -> per-batch scheduler
SCHEDULES: dict[str, Callable] = {
    "cosine": lambda opt, cfg, total, spe: sched.CosineAnnealingLR(opt, T_max=max(1, total)),
    "step": lambda opt, cfg, total, spe: sched.StepLR(opt, step_size=cfg.step_epochs * spe, gamma=cfg.gamma),
    "exponential": lambda opt, cfg, total, spe: sched.ExponentialLR(opt, gamma=cfg.gamma ** (1.0 / spe)),
    "constant": lambda opt, cfg, total, spe: sched.ConstantLR(opt, factor=1.0, total_iters=0),
    "onecycle": lambda opt, cfg, total, spe: sched.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=max(2, total)),
}


class Schedule:
    """One schedule for one phase: optional linear warmup, then the named schedule."""

    def __init__(self, opt: torch.optim.Optimizer, cfg: Config, epochs: int, steps_per_epoch: int):
        warmup = min(int(math.ceil(cfg.warmup_epochs * steps_per_epoch)), epochs * steps_per_epoch - 1)
        total = epochs * steps_per_epoch - max(warmup, 0)
        self.plateau = None
        if cfg.scheduler == "plateau":
            self.plateau = sched.ReduceLROnPlateau(opt, mode="max" if MONITORS[cfg.monitor].maximize else "min",
                                                   factor=cfg.gamma, patience=1)
            main = sched.ConstantLR(opt, factor=1.0, total_iters=0)
        else:
            main = SCHEDULES[cfg.scheduler](opt, cfg, total, steps_per_epoch)
        if warmup > 0:
            ramp = sched.LinearLR(opt, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
            main = sched.SequentialLR(opt, [ramp, main], milestones=[warmup])
        self.per_batch = main

    def step_batch(self) -> None:
        self.per_batch.step()

    def step_epoch(self, monitored: float) -> None:
        """Once per epoch: the raw weights' value of the monitored validation metric."""
        if self.plateau is not None:
            self.plateau.step(monitored)

    def state_dict(self) -> dict:
        return {"per_batch": self.per_batch.state_dict(),
                "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict) -> None:
        self.per_batch.load_state_dict(state["per_batch"])
        if self.plateau:
            self.plateau.load_state_dict(state["plateau"])
