"""Which epoch's weights a run keeps (lib.train.selection): the monitor named by the config decides, for
the raw weights and their EMA alike, and the plateau schedule watches the same metric in its direction."""
import math

import pytest
import torch

from lib import config
from lib.train.optim import Schedule
from lib.train.selection import MONITORS, candidate, offer
from lib.train.training import Progress


def ev(acc, bal, loss):
    return {"acc": acc, "balanced_acc": bal, "loss": loss}


# A crafted validation history of an imbalanced split (80% one class): epoch 1 predicts the majority only
# (best accuracy, balanced accuracy 0.5), epoch 3 separates the classes (best balanced accuracy), epoch 2
# has the lowest loss. Each epoch: (raw weights, EMA weights or None, train accuracy).
HISTORY = [
    (ev(0.80, 0.50, 0.60), None, 0.80),
    (ev(0.74, 0.66, 0.45), ev(0.76, 0.70, 0.50), 0.82),
    (ev(0.70, 0.60, 0.55), ev(0.78, 0.80, 0.58), 0.85),
    (ev(0.80, 0.80, 0.70), ev(0.79, 0.79, 0.65), 0.90),    # ties epoch 3's balanced accuracy: not better
]


def replay(monitor: str, history=HISTORY) -> tuple[Progress, list[str | None]]:
    p, saved = Progress(), []
    for epoch, (raw, ema, train_acc) in enumerate(history, 1):
        p.epoch = epoch
        saved.append(offer(p, monitor, raw, ema, train_acc))
    return p, saved


@pytest.mark.parametrize("monitor, epoch, weights, val_acc, val_bal, saved", [
    ("val_acc", 1, "raw", 0.80, 0.50, ["raw", None, None, None]),           # 0.80 is never beaten, only tied
    ("val_balanced_acc", 3, "ema", 0.78, 0.80, ["raw", "ema", "ema", None]),
    ("val_loss", 2, "raw", 0.74, 0.66, ["raw", "raw", None, None]),         # the raw 0.45 beats its EMA's 0.50
])
def test_the_monitor_picks_the_kept_epoch_and_weights(monitor, epoch, weights, val_acc, val_bal, saved):
    p, got = replay(monitor)
    assert (p.best_epoch, p.best_weights, got) == (epoch, weights, saved)
    # best_val_acc and best_val_balanced_acc are those of the kept weights, whatever picked them
    assert (p.best_val_acc, p.best_val_balanced_acc) == (val_acc, val_bal)
    assert p.best_train_acc == HISTORY[epoch - 1][2]


def test_ties_keep_the_earlier_epoch_and_the_raw_weights():
    which, _, score = candidate("val_balanced_acc", ev(0.7, 0.7, 1.0), ev(0.9, 0.7, 0.1))
    assert which == "raw" and score == 0.7
    assert candidate("val_loss", ev(0.7, 0.7, 1.0), ev(0.9, 0.7, 0.1))[0] == "ema"


def test_a_value_that_is_not_a_number_never_wins_but_the_first_epoch_is_kept():
    p, saved = replay("val_loss", [(ev(0.5, 0.5, math.nan), None, 0.5), (ev(0.5, 0.5, 2.0), None, 0.5),
                                   (ev(0.6, 0.6, math.inf), None, 0.6)])
    assert saved == ["raw", "raw", None] and p.best_epoch == 2 and p.best_score == -2.0


def test_the_config_choices_are_the_monitors():
    assert set(config.FIELDS["monitor"].metadata["choices"]) == set(MONITORS)
    assert config.Config().monitor == "val_acc"                       # today's behaviour by default


@pytest.mark.parametrize("monitor, mode", [("val_acc", "max"), ("val_balanced_acc", "max"), ("val_loss", "min")])
def test_the_plateau_schedule_watches_the_monitor_in_its_direction(monitor, mode):
    cfg = config.build({"scheduler": "plateau", "monitor": monitor, "gamma": 0.5})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = Schedule(opt, cfg, epochs=10, steps_per_epoch=1)
    assert schedule.plateau.mode == mode
    worse = [0.5, 0.4, 0.3] if mode == "max" else [0.5, 0.6, 0.7]     # patience 1: the third epoch cuts the rate
    for value in worse:
        schedule.step_epoch(value)
    assert opt.param_groups[0]["lr"] == 0.5
