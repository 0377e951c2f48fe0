"""The training loop: phases of a strategy, epochs, early stopping, best checkpoint, test at the end."""
from __future__ import annotations

import dataclasses
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

from lib.config import Config
from lib.train import features, selection, strategies
from lib.train.metrics import balanced_accuracy, confusion
from lib.train.optim import Schedule, create_optimizer


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


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype that pays on this device, or None (fp32).
    bf16 only where the tensor cores run it natively (compute capability 8.0+: A100, L4, RTX 30xx, H100):
    ``torch.cuda.is_bf16_supported()`` also says yes on a T4 or V100, where bf16 is emulated and slower
    than fp32. fp16 (with a grad scaler) where it is fast: 6.0 (P100) and 7.x (V100, T4); consumer
    Pascal (6.1, 6.2) runs fp16 at a fraction of its fp32 rate, and older cards have no fast fp16."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    if major >= 8:
        return torch.bfloat16
    if major == 7 or (major, minor) == (6, 0):
        return torch.float16
    return None


def amp_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "off")


@dataclass
class Accel:
    """How batches run on the device: autocast dtype, grad scaler, memory format, and torch.compile
    for the training forward pass (``compile_s``: time of each compiled net's first step, which is
    where compilation happens)."""
    device: torch.device
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    memory_format: torch.memory_format
    compile: bool = False
    compile_s: float = 0.0
    _compiled: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def for_config(cls, cfg: Config, device: torch.device) -> Accel:
        dtype = amp_dtype(device) if cfg.amp else None
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        # channels_last also pays on CPU (oneDNN): a MobileNetV2 training step at 64 px took 212 ms
        # instead of 357 ms on this project's 2-core machine.
        fmt = torch.channels_last if cfg.channels_last and device.type in ("cuda", "cpu") else torch.contiguous_format
        return cls(device, dtype, scaler, fmt, compile=cfg.compile)

    @property
    def amp_dtype(self) -> str:
        return amp_name(self.dtype)

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        """Backward and one optimizer step; under fp16 through the grad scaler (bf16 and fp32 need none)."""
        opt.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            opt.step()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()

    def train_forward(self, net: nn.Module):
        """The callable a training step runs: ``net`` itself, or its compiled version (kept per net;
        the net itself stays what is saved, so state dict keys do not change)."""
        if not self.compile:
            return net, False
        first = id(net) not in self._compiled
        if first:
            self._compiled[id(net)] = (net, torch.compile(net))   # net kept: its id stays its own
        return self._compiled[id(net)][1], first

    def to_device(self, x: torch.Tensor, y: torch.Tensor):
        fmt = self.memory_format if x.ndim == 4 else torch.contiguous_format  # cached features are 2-D
        x = x.to(self.device, non_blocking=True, memory_format=fmt)
        return x, y.to(self.device, non_blocking=True)


def make_mixup(cfg: Config, num_classes: int) -> Mixup | None:
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                 num_classes=num_classes)


def forward_loss(forward, x: torch.Tensor, y: torch.Tensor, loss_fn, mixup, accel: Accel):
    """One training batch's logits and loss, mixed (mixup/cutmix) as training mixes it: the training loop
    and the learning-rate range test (lib.train.lr_find) share it."""
    target = y
    if mixup is not None and len(x) % 2 == 0:
        x, target = mixup(x, y)
    with accel.autocast():
        logits = forward(x)
        loss = loss_fn(logits, target)   # soft targets when mixed (lib.train.balance.make_loss)
    return logits, loss


def train_epoch(model, loader, opt, schedule, loss_fn, mixup, accel: Accel, desc: str,
                stop: StopFlag | None = None, after_step=None, may_time_out: bool = False) -> dict:
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    forward, compiling = accel.train_forward(model)
    for x, y in tqdm(loader, desc=desc, leave=False, disable=None, unit="batch"):
        step_start = time.perf_counter()
        x, y = accel.to_device(x, y)
        logits, loss = forward_loss(forward, x, y, loss_fn, mixup, accel)
        if not torch.isfinite(loss):
            raise TrainingFailed(f"loss became {loss.item()} at {desc}: lower lr or check the data")
        accel.step(loss, opt)
        schedule.step_batch()
        if after_step:
            after_step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        if compiling:   # the first step compiles (loss.item() above waited for it)
            accel.compile_s += time.perf_counter() - step_start
            compiling = False
        seen += len(y)
        if stop:
            stop.check()
            if may_time_out and stop.time_up():
                raise TimeUp()
    return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1), "images": seen,
            "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate(model, loader, accel: Accel, stop: StopFlag | None = None) -> dict:
    model.eval()
    total_loss, preds, labels = 0.0, [], []
    for x, y in loader:
        if stop:
            stop.check()
        x, y = accel.to_device(x, y)
        with accel.autocast():
            logits = model(x)
        total_loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
        preds.append(logits.argmax(1).cpu())
        labels.append(y.cpu())
    y_pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    y_true = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    n = len(y_true)
    return {"loss": total_loss / n if n else math.nan,
            "acc": (y_pred == y_true).float().mean().item() if n else math.nan,
            "balanced_acc": balanced_accuracy(confusion(y_true.numpy(), y_pred.numpy())),
            "y_true": y_true.numpy(), "y_pred": y_pred.numpy()}


class EarlyStopping:
    def __init__(self, patience: int):
        self.patience, self.bad = patience, 0

    def step(self, improved: bool) -> bool:
        """Record one epoch; True when training should stop."""
        self.bad = 0 if improved else self.bad + 1
        return bool(self.patience) and self.bad >= self.patience


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived: the run stops at the next batch or image; the last checkpoint resumes it."""


class TimeUp(Exception):
    """The run's ``time_limit_s`` passed during an epoch: that epoch is dropped, the best weights stand."""


@dataclass
class StopFlag:
    """Set by the signal handler; checked after every batch of training, evaluation and feature
    extraction, every decoded image, and between the stages of a run. ``deadline`` (time.monotonic):
    the run's ``time_limit_s``, checked after every training batch once an epoch has kept weights."""
    signal: str | None = None
    deadline: float | None = None

    def check(self) -> None:
        if self.signal:
            raise Interrupted(self.signal)

    def time_up(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


class Ema:
    """timm's ModelEmaV3 of the whole model. Its decay warms up (1 - (1 + step)^-2/3, capped at
    ``decay``): a small dataset gives a few hundred steps, and a fixed 0.999 would leave the average
    at the starting weights. Evaluated by swapping its weights into the model, so a phase training on
    cached features evaluates it on them too (the frozen front is the same in both)."""

    def __init__(self, model: nn.Module, decay: float, state: dict | None = None):
        from timm.utils import ModelEmaV3

        self.ema, self.step = ModelEmaV3(model, decay=decay, use_warmup=True), 0
        if state:
            self.ema.module.load_state_dict(state["weights"])
            self.step = state["step"]

    def update(self, model: nn.Module) -> None:
        self.step += 1
        self.ema.update(model, step=self.step)

    def weights(self) -> dict:
        return self.ema.module.state_dict()

    def state(self) -> dict:
        return {"weights": self.weights(), "step": self.step}

    def evaluate(self, model: nn.Module, net: nn.Module, loader, accel: Accel, stop) -> dict:
        raw = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.weights())
        try:
            return evaluate(net, loader, accel, stop)
        finally:
            model.load_state_dict(raw)


@dataclass
class Progress:
    """Where a run stands after an epoch: with the checkpoint, enough to continue it exactly."""
    epoch: int = 0
    phase_index: int = 0          # the phase to run next
    phase_epoch: int = 0          # epochs of that phase already done
    best_val_acc: float = -1.0    # of the kept weights, whatever the monitor (lib.train.selection)
    best_val_balanced_acc: float = math.nan
    best_score: float = -math.inf  # the monitor's score of the kept weights (higher is better)
    best_epoch: int = 0
    best_train_acc: float = math.nan
    bad_epochs: int = 0
    images: int = 0
    train_time: float = 0.0
    trainable: int = 0
    stopped_early: bool = False
    best_weights: str = "raw"     # raw | ema: which weights are kept


def _rng_state(loader) -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_rest": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": random.getstate(), "loader": loader.generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict, loader) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss, cached = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    random.setstate(_tuplify(state["python"]))
    loader.generator.set_state(state["loader"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def cached_phase(cfg: Config, model: nn.Module, phase_name: str, epochs: int, loaders: dict,
                 store: features.Store | None, accel: Accel) -> features.Cached | str:
    """Loaders over the stored output of the phase's frozen front, or why the phase trains on images."""
    reason = "no store" if store is None else features.why_not(cfg, phase_name)
    if reason:
        return reason
    model.eval()   # the front is frozen: eval mode, as in training
    sample, _ = accel.to_device(features.first_image(loaders["val"]), torch.zeros(1))
    cut = features.find_cut(model, cfg, phase_name, sample)
    return cut if isinstance(cut, str) else features.prepare(cut, cfg, loaders, store, accel, epochs, sample)


@dataclass
class PhaseRun:
    """One phase set up: what is held in eval mode, its optimizer, schedule and early stopping, and
    what trains on which data (the model on images, or its trainable part on cached outputs)."""
    held: list[nn.Module]
    opt: torch.optim.Optimizer
    schedule: Schedule
    stopper: EarlyStopping
    net: nn.Module
    cached: features.Cached | None
    cache_mode: str

    def train_loader(self, loaders: dict, phase_epoch: int):
        return loaders["train"] if self.cached is None else self.cached.train_for(phase_epoch)

    def val_loader(self, loaders: dict):
        return loaders["val"] if self.cached is None else self.cached.val


def _start_phase(cfg: Config, model: nn.Module, phase, index: int, loaders: dict, store, accel: Accel,
                 p: Progress, resume: dict | None) -> PhaseRun:
    strategies.apply(model, strategies.trainable_names(model, cfg, phase))
    held = strategies.frozen_modules(model, cfg.train_bn)
    p.trainable = max(p.trainable, sum(q.numel() for q in model.parameters() if q.requires_grad))
    opt = create_optimizer(model, cfg, phase)
    schedule = Schedule(opt, cfg, phase.epochs, max(1, len(loaders["train"])))
    stopper = EarlyStopping(cfg.patience)
    started = time.perf_counter()
    cached = cached_phase(cfg, model, phase.name, phase.epochs, loaders, store, accel)
    p.train_time += time.perf_counter() - started  # the one forward pass counts as training time
    if resume and p.phase_epoch and resume.get("optimizer_phase") == index:
        opt.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        if accel.scaler and resume.get("scaler"):
            accel.scaler.load_state_dict(resume["scaler"])
        stopper.bad = p.bad_epochs
    if isinstance(cached, str):
        return PhaseRun(held, opt, schedule, stopper, model, None, f"{phase.title}: off ({cached})")
    return PhaseRun(held, opt, schedule, stopper, cached.net, cached, f"{phase.title}: {cached.mode}")


def _checkpoint(p: Progress, model: nn.Module, run: PhaseRun, index: int, loaders: dict, accel: Accel,
                hooks, ema: Ema | None = None) -> dict:
    """Everything to continue exactly, the best weights included. The best weights file is written as soon
    as an epoch improves, the checkpoint only every ``checkpoint_epochs``: a run killed in between resumes
    from an older checkpoint and retrains epochs whose first version may have left the best weights file.
    So the checkpoint is the truth and carries its own best weights (``best``: None when they are the
    checkpoint's model, which is the common case and costs nothing), and resuming writes them back."""
    best = None if p.best_epoch == p.epoch and p.best_weights == "raw" else hooks.load_best()
    return {"progress": dataclasses.asdict(p), "model": model.state_dict(), "best": best,
            "optimizer": run.opt.state_dict(), "optimizer_phase": index, "schedule": run.schedule.state_dict(),
            "rng": _rng_state(loaders["train"]), "scaler": accel.scaler.state_dict() if accel.scaler else None,
            "ema": ema.state() if ema else None}


def fit(cfg: Config, model: nn.Module, loaders: dict, accel: Accel, loss_fn: nn.Module,
        mixup: Mixup | None, hooks, stop: StopFlag | None = None, resume: dict | None = None,
        store: features.Store | None = None) -> dict:
    """Run every phase of the strategy, from the start or from a checkpoint (``resume``).
    ``hooks`` has ``epoch(row)``, ``best(state_dict)``, ``checkpoint(dict)`` and ``load_best()``;
    with a ``store``, phases with a frozen front train on its stored output (lib.train.features)."""
    stop = stop or StopFlag()
    plan = strategies.phases(cfg)
    p = Progress(**resume["progress"]) if resume else Progress()
    if resume and "best_score" not in resume["progress"]:   # a checkpoint from before monitor: it kept val_acc
        p.best_score = p.best_val_acc
    if resume:
        model.load_state_dict(resume["model"])
        _set_rng_state(resume["rng"], loaders["train"])
        if "best" in resume:   # see _checkpoint
            hooks.best(resume["best"] if resume["best"] is not None else resume["model"])
    ema = Ema(model, cfg.ema_decay, (resume or {}).get("ema")) if cfg.ema else None
    bar = tqdm(total=cfg.epochs, initial=p.epoch, desc="epochs", disable=None, unit="epoch")
    cache_modes: list[str] = []
    timed_out = False
    for index in range(p.phase_index, len(plan)):
        phase = plan[index]
        run = _start_phase(cfg, model, phase, index, loaders, store, accel, p, resume)
        cache_modes.append(run.cache_mode)
        for phase_epoch in range(p.phase_epoch, phase.epochs):
            stop.check()
            p.epoch += 1
            strategies.set_train_mode(model, run.held)
            run.net.training = True   # not train(): that would undo the held modules
            lr = max(g["lr"] for g in run.opt.param_groups)
            try:   # once an epoch has kept weights, the run's time limit may end training here
                tr = train_epoch(run.net, run.train_loader(loaders, phase_epoch), run.opt, run.schedule, loss_fn,
                                 mixup, accel, desc=f"epoch {p.epoch}/{cfg.epochs} {phase.title}", stop=stop,
                                 after_step=ema and (lambda: ema.update(model)), may_time_out=p.best_epoch > 0)
            except TimeUp:
                p.epoch -= 1
                p.stopped_early = timed_out = True
                tqdm.write(f"time limit ({cfg.time_limit_s:g} s) reached in epoch {p.epoch + 1}: training stops, "
                           f"the best weights (epoch {p.best_epoch}) are tested", file=sys.stderr)
                break
            va = evaluate(run.net, run.val_loader(loaders), accel, stop)
            va_ema = ema.evaluate(model, run.net, run.val_loader(loaders), accel, stop) if ema else None
            run.schedule.step_epoch(va[selection.MONITORS[cfg.monitor].key])
            p.images, p.train_time = p.images + tr["images"], p.train_time + tr["seconds"]
            kept = selection.offer(p, cfg.monitor, va, va_ema, tr["acc"])   # the better of raw and EMA, if better
            improved = kept is not None
            if improved:
                hooks.best(ema.weights() if kept == "ema" else model.state_dict())
            done = run.stopper.step(improved)
            p.bad_epochs = run.stopper.bad
            p.stopped_early = done and index == len(plan) - 1
            last = done or phase_epoch + 1 == phase.epochs
            p.phase_index, p.phase_epoch = (index + 1, 0) if last else (index, phase_epoch + 1)
            # Every checkpoint_epochs epochs and at phase ends: the model and optimizer state of a big
            # model on a fast GPU can take longer to write than an epoch on cached features takes to run.
            if last or (cfg.checkpoint_epochs and p.epoch % cfg.checkpoint_epochs == 0):
                hooks.checkpoint(_checkpoint(p, model, run, index, loaders, accel, hooks, ema))
            hooks.epoch({"epoch": p.epoch, "phase": phase.title, "lr": lr, "train_loss": tr["loss"],
                         "train_acc": tr["acc"], "val_loss": va["loss"], "val_acc": va["acc"],
                         "val_balanced_acc": va["balanced_acc"], "time_s": round(tr["seconds"], 3),
                         "best_val_acc": p.best_val_acc, "best_val_balanced_acc": p.best_val_balanced_acc,
                         **({"val_loss_ema": va_ema["loss"], "val_acc_ema": va_ema["acc"],
                             "val_balanced_acc_ema": va_ema["balanced_acc"]} if va_ema else {})})
            bar.update(1)
            tqdm.write(f"epoch {p.epoch:>3} {phase.title:<8} lr {lr:.2e}  train loss {tr['loss']:.4f} "
                       f"acc {tr['acc']:.3f}  val loss {va['loss']:.4f} acc {va['acc']:.3f} "
                       f"bal {va['balanced_acc']:.3f}", file=sys.stderr)
            if done:
                break
        p.phase_epoch = 0
        if timed_out:
            break
    bar.close()
    model.load_state_dict(hooks.load_best())
    return {"best_val_acc": p.best_val_acc, "best_val_balanced_acc": p.best_val_balanced_acc,
            "best_epoch": p.best_epoch,
            "train_val_gap": p.best_train_acc - p.best_val_acc, "epochs_run": p.epoch,
            "stopped_early": p.stopped_early, "trainable_params": p.trainable,
            "train_time_s": round(p.train_time, 3),
            "train_images_per_s": round(p.images / p.train_time, 2) if p.train_time else None,
            "feature_cache": "; ".join(cache_modes), "best_weights": p.best_weights,
            "amp_dtype": accel.amp_dtype, "compile_s": round(accel.compile_s, 3) if accel.compile else None}
