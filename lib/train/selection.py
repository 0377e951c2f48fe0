"""Which weights a run keeps: the validation metric named by the config's ``monitor`` decides.

Every epoch, the raw weights (and, with ``ema``, their average) are evaluated on the validation split;
the better of the two by the monitor is the epoch's candidate, and it replaces the kept weights when it
beats them (strictly: on a tie the earlier epoch and the raw weights stay). The same decision drives
early stopping (an epoch that keeps nothing counts towards ``patience``) and, through the monitor's
direction, the plateau schedule (lib.train.optim). It spans the phases of a strategy (two_phase,
gradual) and is checkpointed with the run's progress, so a resumed run decides as an uninterrupted one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Monitor:
    key: str          # in lib.train.training.evaluate's result
    maximize: bool

    def score(self, result: dict) -> float:
        """Higher is better; a value that is not a finite number never wins."""
        value = result[self.key]
        if value is None or not math.isfinite(value):
            return -math.inf
        return value if self.maximize else -value


# The config's ``monitor`` choices (lib.config declares them; tests/train/test_selection.py ties the two).
MONITORS = {"val_acc": Monitor("acc", True), "val_balanced_acc": Monitor("balanced_acc", True),
            "val_loss": Monitor("loss", False)}


def candidate(monitor: str, raw: dict, ema: dict | None) -> tuple[str, dict, float]:
    """The epoch's better weights by ``monitor``: ("raw" or "ema", their validation result, score)."""
    m = MONITORS[monitor]
    if ema is not None and m.score(ema) > m.score(raw):
        return "ema", ema, m.score(ema)
    return "raw", raw, m.score(raw)


def offer(progress, monitor: str, raw: dict, ema: dict | None, train_acc: float) -> str | None:
    """Epoch ``progress.epoch``'s results: when its better weights beat the kept ones (the first epoch
    always does), they become the kept ones - ``progress``'s best_* fields are set - and "raw" or "ema",
    the weights to save, is returned; else None."""
    which, result, score = candidate(monitor, raw, ema)
    if progress.best_epoch and not score > progress.best_score:
        return None
    progress.best_score, progress.best_epoch, progress.best_weights = score, progress.epoch, which
    progress.best_val_acc, progress.best_train_acc = result["acc"], train_acc
    progress.best_val_balanced_acc = result["balanced_acc"]
    return which
