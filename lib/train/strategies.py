"""Freeze strategies: which parameters train, in which phases, at which learning-rate scale.

Units come from timm's own ``group_matcher``: ``stage`` = coarse groups (resnet50: layer1..layer4),
``block`` = fine groups (resnet50: layer4.0, layer4.1, layer4.2). The last group is the head group
(the classifier plus whatever timm leaves unmatched next to it, e.g. MobileNetV3's ``conv_head``).

- freeze:    the classifier only.
- partial:   the last ``unfreeze_blocks`` units + the head group.
- full:      everything.
- two_phase: ``phase1_epochs`` of freeze, then partial (or full when ``unfreeze_blocks <= 0``),
             with the whole phase-2 set at ``lr * backbone_lr_mult`` (the guide: 10-100x lower).
             This is LP-FT (Kumar et al., ICLR 2022): a trained head first, so fine-tuning does not
             distort the features to fit a random one.
- surgical:  one unit (``surgical_unit``: first / middle / last) + the classifier (Lee et al., ICLR
             2023: the first unit under input-level shift, the last under label shift).
- bitfit:    every bias + the classifier (Ben Zaken et al., ACL 2022).
- norm_only: the affine parameters of every normalisation layer + the classifier (Frankle et al.,
             ICLR 2021: BatchNorm's parameters alone go a long way).
- gradual:   ULMFiT's gradual unfreezing (Howard & Ruder 2018): the classifier first, then one more
             unit from the top every ``unfreeze_every`` epochs, at discriminative learning rates.

Frozen parts run in eval mode (BatchNorm statistics, dropout and drop-path fixed), so a frozen
backbone is an exact, deterministic feature extractor. ``train_bn=False`` also holds BatchNorm
statistics in trainable parts.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from timm.models import group_parameters
from torch import nn

from lib.config import Config


@dataclass(frozen=True)
class Phase:
    name: str              # strategy that sets the trainable set in this phase
    epochs: int
    lr_scale: float        # applied to every group of this phase (two_phase's phase 2)
    discriminative: bool   # backbone at lr * backbone_lr_mult, head group at lr
    units: int | None = None   # partial: how many units train (None: cfg.unfreeze_blocks)

    @property
    def title(self) -> str:
        """The phase as records show it: gradual's stages are ``partial+1``, ``partial+2``, ..."""
        return self.name if self.units is None else f"{self.name}+{self.units}"


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


SURGICAL_UNITS = ("first", "middle", "last")


def _surgical(model, cfg, n) -> set[str]:
    units = unit_groups(model, cfg.unfreeze_unit)[:-1]
    pick = {"first": 0, "middle": len(units) // 2, "last": len(units) - 1}[cfg.surgical_unit]
    return set(units[pick]) | classifier_names(model)


def _bitfit(model, cfg, n) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.endswith("bias")} | classifier_names(model)


# Normalisation layers of every family: BatchNorm (timm's BatchNormAct2d derives from it), LayerNorm
# (and timm's LayerNorm2d), GroupNorm, InstanceNorm (a _NormBase like BatchNorm).
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _norm_only(model, cfg, n) -> set[str]:
    return {f"{m_name}.{p_name}".lstrip(".") for m_name, m in model.named_modules() if isinstance(m, NORMS)
            for p_name, _ in m.named_parameters(recurse=False)} | classifier_names(model)


# name -> function(model, cfg, units) -> names of trainable parameters
TRAINABLE: dict[str, Callable[[nn.Module, Config, int], set[str]]] = {
    "freeze": _freeze, "partial": _partial, "full": _full,
    "surgical": _surgical, "bitfit": _bitfit, "norm_only": _norm_only,
}


def _two_phase(cfg: Config) -> list[Phase]:
    second = "partial" if cfg.unfreeze_blocks > 0 else "full"
    return [Phase("freeze", cfg.phase1_epochs, 1.0, discriminative=True),
            Phase(second, cfg.epochs - cfg.phase1_epochs, cfg.backbone_lr_mult, discriminative=False)]


def _gradual(cfg: Config) -> list[Phase]:
    """The classifier alone, then one more unit each ``unfreeze_every`` epochs; the last stage runs
    to the end. Past the model's unit count a stage trains every unit (``_partial`` takes them all)."""
    stages = -(-cfg.epochs // cfg.unfreeze_every)
    return [Phase("freeze" if k == 0 else "partial", cfg.unfreeze_every if k < stages - 1
                  else cfg.epochs - k * cfg.unfreeze_every, 1.0, discriminative=True, units=k or None)
            for k in range(stages)]


# strategy -> its phases; a strategy not listed here is one phase of its own trainable set
PLANS: dict[str, Callable[[Config], list[Phase]]] = {"two_phase": _two_phase, "gradual": _gradual}


def phases(cfg: Config) -> list[Phase]:
    if cfg.strategy in PLANS:
        return PLANS[cfg.strategy](cfg)
    return [Phase(cfg.strategy, cfg.epochs, 1.0, discriminative=True)]


def trainable_names(model: nn.Module, cfg: Config, phase: Phase) -> set[str]:
    return TRAINABLE[phase.name](model, cfg, cfg.unfreeze_blocks if phase.units is None else phase.units)


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
