"""``lr: auto``: a learning-rate range test before training, and the rule that picks a rate from its curve.

The test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", section 3.3; fastai's
``lr_find``): train with the run's own optimizer, parameter groups and trainable set, raising the rate
exponentially from 1e-7 to 10 step by step, and record the loss; stop once the smoothed loss passes 4x
its minimum (diverged). A phase whose frozen front can be cached (lib.train.features) runs the test on the
cached outputs, as its training will: then it costs almost nothing. The model, its modes, the random
states, the data order and the grad scaler are put back afterwards, so training starts exactly where a
run with a fixed rate would (tested: the same epochs, to the bit, as a fixed-lr run at the found rate).

The rate it sweeps is the head's: every parameter group keeps its ratio to it (``backbone_lr_mult``,
``layer_decay``), so the found rate is ``lr`` as the config means it. Strategies in phases (two_phase,
gradual) test their first phase, the head on the frozen backbone: later phases run at the rates they
derive from ``lr`` as with a fixed one (two_phase's phase 2 at ``lr * backbone_lr_mult``).

The rule (``descent-midpoint``): the descent of the smoothed loss, from where it has made 10% of its fall
(from the loss before the rates do anything to its minimum) to where it has made 90%, and the rate half
way through it on the log scale (the geometric mean of the two). Why there: the descent begins where the
rate first moves the loss and ends near the minimum, the edge of stability; a whole run at the edge
overshoots, one at the beginning learns slowly; half way is the steep middle, a safe factor below the edge.
This is fastai's ``valley`` (its default suggestion since 2021: the middle of the longest descending
stretch), with the stretch found by thresholds instead of a longest decreasing subsequence, which rides
noise (a flat start, a loss near zero): its picks were mostly 1e-5..1e-4 (median 6e-5), 10 points
of validation accuracy worse. The minimum / 10 (fastai's older rule) picked 1.0 on heads over frozen
features, whose loss falls to ~0 and never diverges (a convex problem). lr_find.json records what the
other rules would have picked; docs/lr-auto.md has the measurements.

Tiny or hopeless data: a curve with fewer than MIN_POINTS steps (it diverged at once), or whose smoothed
loss falls by less than MIN_DROP of its start (flat: nothing to read), gives no pick; the run then uses
the recipe's rate (the config's default where the recipe has none) and says so in a warning.
"""
from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lib.config import FIELDS, LR_AUTO, Config
from lib.files import atomic_write, write_json
from lib.records import LR_FIND_FILE, LR_FIND_PLOT
from lib.train import strategies, training
from lib.train.optim import create_optimizer

START_LR, END_LR = 1e-7, 10.0
MAX_STEPS = {"images": 100, "cached": 200}   # fastai's 100 on images; cached outputs cost ~nothing a step
MIN_STEPS = 50          # the curve's resolution: ~6 steps per decade of rates
EPOCHS_OF_DATA = 4      # at most this many passes over a small training split (cycled), above MIN_STEPS
WINDOW = 0.05           # the loss's exponential average spans this share of the planned steps
DIVERGE = 4.0           # stop once the smoothed loss passes this many times its minimum
MIN_POINTS = 10         # a shorter curve gives no pick
MIN_DROP = 0.05         # a fall of less than this share of the starting loss is flat: no pick
EDGE = 0.1              # the descent: from 10% to 90% of the fall from the starting loss to the minimum
RULE = "descent-midpoint"
CURVE_FILE, PLOT_FILE = LR_FIND_FILE, LR_FIND_PLOT   # in the run folder (its contract: lib.records)


@dataclass
class Curve:
    """What the range test measured: one point per step."""
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    planned: int = 0
    stopped: str = "end of the range"
    data: str = "images"
    seconds: float = 0.0     # the steps
    front_s: float = 0.0     # storing the frozen front's outputs, which training then reads from the cache


@dataclass
class Choice:
    """The rule's answer: a rate (with the step it is at and the descent it came from), or why none."""
    lr: float | None
    index: int | None = None
    descent: tuple[int, int] | None = None
    why_not: str | None = None
    alternatives: dict = field(default_factory=dict)


def planned_steps(batches_per_epoch: int, cached: bool) -> int:
    """Up to a few hundred steps; on a small split at most EPOCHS_OF_DATA passes (but MIN_STEPS)."""
    return max(MIN_STEPS, min(MAX_STEPS["cached" if cached else "images"], EPOCHS_OF_DATA * batches_per_epoch))


def rates(steps: int) -> np.ndarray:
    return START_LR * (END_LR / START_LR) ** (np.arange(steps) / max(steps - 1, 1))


class Saved:
    """Everything the range test changes, put back by ``restore``: weights and buffers (a copy on the
    CPU), requires_grad, train/eval modes, gradients, the random states (torch, CUDA, numpy, Python,
    the training loader's generator: the data order) and the grad scaler. DataLoader worker processes
    (num_workers > 0 with augmentation) keep their own random streams: those are not put back."""

    def __init__(self, model: nn.Module, loader, accel: training.Accel):
        self.model, self.loader, self.accel = model, loader, accel
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self.grad = {n: p.requires_grad for n, p in model.named_parameters()}
        self.modes = [(m, m.training) for m in model.modules()]
        self.rng = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
                    loader.generator.get_state() if loader.generator is not None else None,
                    torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
        self.scaler = accel.scaler.state_dict() if accel.scaler else None

    def restore(self) -> None:
        self.model.load_state_dict(self.weights)
        for n, p in self.model.named_parameters():
            p.requires_grad_(self.grad[n])
            p.grad = None
        for m, mode in self.modes:
            m.training = mode
        cpu, np_state, py_state, loader_state, cuda = self.rng
        torch.set_rng_state(cpu)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if loader_state is not None:
            self.loader.generator.set_state(loader_state)
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
        if self.scaler:
            self.accel.scaler.load_state_dict(self.scaler)


def range_test(cfg: Config, model: nn.Module, loaders: dict, accel: training.Accel, loss_fn: nn.Module,
               mixup, store=None, stop: training.StopFlag | None = None) -> Curve:
    """The loss at exponentially rising rates on the first phase of the strategy; the model and every
    random state as they were before."""
    saved = Saved(model, loaders["train"], accel)
    try:
        phase = strategies.phases(cfg)[0]
        strategies.apply(model, strategies.trainable_names(model, cfg, phase))
        held = strategies.frozen_modules(model, cfg.train_bn)
        # Built at lr=1: each group's rate is then its ratio to the head's, which the test multiplies.
        opt = create_optimizer(model, dataclasses.replace(cfg, lr=1.0), phase)
        ratios = [g["lr"] for g in opt.param_groups]
        started = time.perf_counter()
        cached = training.cached_phase(cfg, model, phase.name, phase.epochs, loaders, store, accel)
        front_s, started = time.perf_counter() - started, time.perf_counter()
        if isinstance(cached, str):
            net, loader, data = model, loaders["train"], f"images (no cache: {cached})"
        else:
            net, loader, data = cached.net, cached.train_for(0), f"cached: {cached.mode}"
        steps = planned_steps(len(loader), not isinstance(cached, str))
        strategies.set_train_mode(model, held)
        net.training = True   # not train(): that would undo the held modules
        curve = _sweep(net, loader, opt, ratios, loss_fn, mixup, accel, rates(steps), stop)
        curve.data, curve.seconds, curve.front_s = data, round(time.perf_counter() - started, 3), round(front_s, 3)
        return curve
    finally:
        saved.restore()


def _sweep(net, loader, opt, ratios, loss_fn, mixup, accel, lrs, stop) -> Curve:
    curve, avg, best, beta = Curve(planned=len(lrs)), 0.0, math.inf, smoothing(len(lrs))
    batches = _cycle(loader)
    for i, lr in enumerate(tqdm(lrs, desc="lr_find", leave=False, disable=None, unit="step")):
        if stop:
            stop.check()
        for group, ratio in zip(opt.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        x, y = accel.to_device(*next(batches))
        _, loss = training.forward_loss(net, x, y, loss_fn, mixup, accel)
        value = loss.item()
        if not math.isfinite(value):
            curve.stopped = f"the loss became {value} at lr {lr:.2e}"
            break
        accel.step(loss, opt)
        avg = beta * avg + (1 - beta) * value   # the running (causal) average: divergence is seen as it comes
        running = avg / (1 - beta ** (i + 1))
        curve.lrs.append(float(lr))
        curve.losses.append(value)
        if running > DIVERGE * best:
            curve.stopped = f"diverged at lr {lr:.2e} (smoothed loss > {DIVERGE:g}x its minimum)"
            break
        best = min(best, running)
    curve.smoothed = smooth(curve.losses, beta)
    return curve


def smoothing(steps: int) -> float:
    """The average's factor: a window of about WINDOW of the planned steps (fastai's fixed 0.98 is a
    50-step window: on a 50-step curve it would still show the loss of the first rates at the last)."""
    return 1 - 1 / max(2.0, steps * WINDOW)


def smooth(values: list[float], beta: float) -> list[float]:
    """Bias-corrected exponential average run forwards, then backwards over the result: smooth, and in
    phase with the rates (a forward average alone lags a falling loss by beta/(1-beta) steps)."""
    def ema(xs):
        out, avg = [], 0.0
        for i, x in enumerate(xs):
            avg = beta * avg + (1 - beta) * x
            out.append(avg / (1 - beta ** (i + 1)))
        return out
    return ema(ema(values)[::-1])[::-1]


def _cycle(loader):
    while True:
        yield from loader


def pick(curve: Curve) -> Choice:
    """The rate half way (log scale) through the descent of the smoothed loss; see the module's docstring.
    No rate (``why_not``) when the curve is too short or flat."""
    s, n = np.asarray(curve.smoothed), len(curve.smoothed)
    if n < MIN_POINTS:
        return Choice(None, why_not=f"the curve is too short ({n} step(s): {curve.stopped})")
    top = float(np.median(curve.losses[:max(3, n // 10)]))   # the loss before the rate moves anything
    low = float(s.min())
    fall = top - low
    alternatives = _alternatives(curve)
    if fall < MIN_DROP * abs(top):
        return Choice(None, alternatives=alternatives,
                      why_not=f"the curve is flat (the smoothed loss falls {fall:.3g} from {top:.3g})")
    start, end = descent(s, top, low)
    index = start + (end - start) // 2   # rates are log-spaced: the middle step is the geometric mean
    return Choice(curve.lrs[index], index, descent=(start, end), alternatives=alternatives)


def descent(s: np.ndarray, top: float, low: float) -> tuple[int, int]:
    """First step below 10% of the fall from ``top`` to ``low``, and first step past 90% of it."""
    end = int(np.argmax(s <= low + EDGE * (top - low)))
    start = int(np.argmax(s[:end + 1] < top - EDGE * (top - low)))
    return start, end


def valley(s: list[float]) -> tuple[int, int]:
    """fastai's valley: first and last step of the longest strictly decreasing subsequence of ``s``."""
    n = len(s)
    length, first = [1] * n, list(range(n))
    for i in range(n):
        for j in range(i):
            if s[i] < s[j] and length[j] + 1 > length[i]:
                length[i], first[i] = length[j] + 1, first[j]
    end = max(range(n), key=lambda i: (length[i], -i))
    return first[end], end


def _alternatives(curve: Curve) -> dict:
    """What the other usual rules pick on this curve: measured beside ours (docs/lr-auto.md)."""
    s, lrs = np.asarray(curve.smoothed), np.asarray(curve.lrs)
    slope = np.gradient(s, np.log(lrs))
    a, b = valley(curve.smoothed)
    return {"min_over_10": float(lrs[int(np.argmin(s))] / 10), "steepest": float(lrs[int(np.argmin(slope))]),
            "fastai_valley": float(lrs[a + (b - a) // 2])}


def fallback_lr(cfg: Config) -> float:
    """The recipe's rate, else the config's default: what the run uses when the curve gives no pick."""
    recipe_lr = cfg.recipe.get("lr")
    return float(recipe_lr) if isinstance(recipe_lr, (int, float)) and not isinstance(recipe_lr, bool) \
        else float(FIELDS["lr"].default)


def resolve(cfg: Config, model: nn.Module, loaders: dict, accel: training.Accel, loss_fn: nn.Module, mixup,
            store, stop, folder: Path, stored: dict | None = None) -> tuple[Config, dict]:
    """``cfg`` with ``lr: auto`` replaced by a number, and what run.json records of how (``lr_find``).
    ``stored``: the record of an earlier start of this run (its checkpoint): a resumed run keeps that
    pick and does not test again. Writes lr_find.json and lr_find.png to ``folder``."""
    if cfg.lr != LR_AUTO:
        return cfg, {}
    if stored and isinstance(stored.get("lr"), float):
        print(f"lr: auto: {stored['lr']:.3g}, as picked at the run's first start ({CURVE_FILE})", file=sys.stderr)
        return dataclasses.replace(cfg, lr=stored["lr"]), {**stored, "resumed": True}
    curve = range_test(cfg, model, loaders, accel, loss_fn, mixup, store, stop)
    choice = pick(curve)
    lr = choice.lr if choice.lr is not None else fallback_lr(cfg)
    info = {"auto": True, "lr": lr, "rule": RULE, "fallback": choice.why_not, "steps": len(curve.lrs),
            "planned_steps": curve.planned, "stopped": curve.stopped, "data": curve.data,
            "seconds": curve.seconds, "front_s": curve.front_s, "curve": CURVE_FILE, "plot": PLOT_FILE}
    write_json(folder / CURVE_FILE, {**info, "range": [START_LR, END_LR], "beta": smoothing(curve.planned),
                                     "diverge": DIVERGE, "edge": EDGE,
                                     "index": choice.index, "descent": choice.descent,
                                     "alternatives": choice.alternatives, "rates": curve.lrs,
                                     "losses": curve.losses, "smoothed": curve.smoothed})
    plot(curve, choice, lr, folder / PLOT_FILE)
    if choice.lr is None:
        print(f"warning: lr: auto: no pick ({choice.why_not}): using lr={lr:g}, the recipe's rate", file=sys.stderr)
    else:
        print(f"lr: auto: {lr:.3g} ({RULE} of {len(curve.lrs)} steps, {curve.data}; {CURVE_FILE})", file=sys.stderr)
    return dataclasses.replace(cfg, lr=lr), info


def plot(curve: Curve, choice: Choice, lr: float, path: Path) -> None:
    """The curve on a log rate axis: raw and smoothed loss, the descent shaded, the rate used marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    try:
        ax.plot(curve.lrs, curve.losses, color="0.75", lw=1, label="loss")
        ax.plot(curve.lrs, curve.smoothed, color="C0", lw=2, label="smoothed loss")
        if choice.descent and choice.lr is not None:
            a, b = choice.descent
            ax.axvspan(curve.lrs[a], curve.lrs[b], color="C2", alpha=0.12, label="descent (10% to 90% of the fall)")
            ax.plot([lr], [curve.smoothed[choice.index]], "o", color="C3", ms=8)
        ax.axvline(lr, color="C3", ls="-" if choice.lr is not None else "--",
                   label=f"lr = {lr:.3g}" + ("" if choice.lr is not None else " (fallback: no pick)"))
        ax.set_xscale("log")
        if curve.smoothed:   # the divergence would squash the descent
            top = max(curve.smoothed[0], min(curve.smoothed)) * 1.5
            ax.set_ylim(min(min(curve.losses), min(curve.smoothed)) * 0.9, max(top, 1e-6))
        ax.set_xlabel("learning rate (head)")
        ax.set_ylabel("training loss")
        ax.set_title(f"lr_find: {len(curve.lrs)} steps, {curve.stopped}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
