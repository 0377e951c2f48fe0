"""Freeze strategies: which parameters train, in which phases, at which learning-rate scale.

Units come from timm's own ``group_matcher``: ``stage`` = coarse groups (resnet50: layer1..layer4),
``block`` = fine groups (resnet50: layer4.0, layer4.1, layer4.2). The last group is the head group
(the classifier plus whatever timm leaves unmatched next to it, e.g. MobileNetV3's ``conv_head``).

- freeze:    the classifier only.
- partial:   the last ``unfreeze_blocks`` units + the head group.
- full:      everything.
- two_phase: ``phase1_epochs`` of freeze, then partial (or full when ``unfreeze_blocks <= 0``),
             with the whole phase-2 set at ``lr * backbone_lr_mult`` (the guide: 10-100x lower).

Frozen parts run in eval mode (BatchNorm statistics, dropout and drop-path fixed), so a frozen
backbone is an exact, deterministic feature extractor. ``train_bn=False`` also holds BatchNorm
statistics in trainable parts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from timm.models import group_parameters
from torch import nn

from lib.config import Config


@dataclass(frozen=True)
class Phase:
    name: str              # strategy that sets the trainable set in this phase
    epochs: int
    lr_scale: float        # applied to every group of this phase (two_phase's phase 2)
    discriminative: bool   # backbone at lr * backbone_lr_mult, head group at lr


def unit_groups(model: nn.Module, unit: str) -> list[list[str]]:
    """Parameter names grouped by timm's matcher, input to output; the last group is the head."""
    groups = group_parameters(model, model.group_matcher(coarse=unit == "stage"))
    return [groups[k] for k in sorted(groups)]


def classifier_names(model: nn.Module) -> set[str]:
    head = model.get_classifier()
    ids = {id(p) for p in head.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def head_group(model: nn.Module) -> set[str]:
    return set(unit_groups(model, "stage")[-1]) | classifier_names(model)


def _freeze(model, cfg, n) -> set[str]:
    return classifier_names(model)


def _partial(model, cfg, n) -> set[str]:
    groups = unit_groups(model, cfg.unfreeze_unit)
    units = groups[:-1]
    chosen = units[-n:] if n > 0 else []
    return set().union(groups[-1], classifier_names(model), *chosen)


def _full(model, cfg, n) -> set[str]:
    return {n for n, _ in model.named_parameters()}


# name -> function(model, cfg, unfreeze_blocks) -> names of trainable parameters
TRAINABLE: dict[str, Callable[[nn.Module, Config, int], set[str]]] = {
    "freeze": _freeze, "partial": _partial, "full": _full,
}


def phases(cfg: Config) -> list[Phase]:
    if cfg.strategy != "two_phase":
        return [Phase(cfg.strategy, cfg.epochs, 1.0, discriminative=True)]
    second = "partial" if cfg.unfreeze_blocks > 0 else "full"
    return [Phase("freeze", cfg.phase1_epochs, 1.0, discriminative=True),
            Phase(second, cfg.epochs - cfg.phase1_epochs, cfg.backbone_lr_mult, discriminative=False)]


def trainable_names(model: nn.Module, cfg: Config, phase: Phase) -> set[str]:
    return TRAINABLE[phase.name](model, cfg, cfg.unfreeze_blocks)


def apply(model: nn.Module, names: set[str]) -> None:
    """Set requires_grad so exactly ``names`` train."""
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)


def frozen_modules(model: nn.Module, train_bn: bool) -> list[nn.Module]:
    """Modules to hold in eval mode while training: every module all of whose parameters are
    frozen (with its parameter-free children: dropout, drop-path), and, unless ``train_bn``,
    every BatchNorm."""
    held = []
    for _, m in model.named_modules():
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            held.append(m)
        elif not train_bn and isinstance(m, nn.modules.batchnorm._BatchNorm):
            held.append(m)
    return held


def set_train_mode(model: nn.Module, held: list[nn.Module]) -> None:
    """``model.train()`` except the held modules, which stay in eval mode."""
    model.train()
    for m in held:
        m.eval()
