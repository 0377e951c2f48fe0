"""What the pieces of a run cost, before it runs: forward FLOPs per image of the frozen front (computed
once per run and cached, lib.train.features), of the part that trains (each step and each validation
pass) and of the whole model (the test split); and how fast this machine turns FLOPs into seconds.

FLOPs are counted on one image of random weights (a fraction of a second per recipe) and do not depend
on the machine or its load; the planner of a time-budgeted study (lib.sweep.plan) turns
them into seconds with rates it measures on the study's own runs, and before the first run with
:func:`speed`, timed on one thread.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from lib.config import Config
from lib.train import features, models, strategies

CUT_PROBE_SIDE = 32    # where the cut falls does not depend on the input size: found on a small input


@dataclass(frozen=True)
class RecipeFlops:
    """Forward GFLOPs per image at ``size`` px (a convolutional network's cost grows with the pixels)."""
    size: int
    front: float     # the frozen front, once per run (0 when the phase trains on images)
    net: float       # what trains, forward (a step costs about three: forward and backward)
    full: float      # the whole model (test)
    cached: bool     # trains on the front's stored output

    def at(self, size: int) -> RecipeFlops:
        k = (size / self.size) ** 2
        return RecipeFlops(size, self.front * k, self.net * k, self.full * k, self.cached)

    def as_dict(self) -> dict:
        return asdict(self)


def _gflops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 1e9


def _models(cfg: Config, num_classes: int, made: dict):
    """One random-weight model per architecture (real, where the cut is found on a small input) and its
    copy on the meta device (where FLOPs are counted at full size without arithmetic), shared by recipes."""
    if cfg.model not in made:
        quiet = Config(**{**cfg.to_dict(), "weights": "none", "dropout": 0.0, "drop_path": 0.0})
        model, _, data_cfg = models.create(quiet, num_classes, Path(cfg.cache_dir) / "weights")
        made[cfg.model] = (model.eval(), copy.deepcopy(model).to("meta"), data_cfg)
    return made[cfg.model]


def recipe_flops(cfg: Config, num_classes: int, made: dict | None = None) -> RecipeFlops:
    """Of ``cfg``'s most expensive phase (its last: two_phase's fine-tuning, gradual's widest stage), per
    image at ``cfg.image_size`` (``made``: a dict to share models between calls)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # a few small forward passes: threads would only wait for each other
    try:
        model, meta, data_cfg = _models(cfg, num_classes, {} if made is None else made)
        side = cfg.image_size or data_cfg["input_size"][-1]
        phase = strategies.phases(cfg)[-1]
        strategies.apply(model, strategies.trainable_names(model, cfg, phase))
        x = torch.empty(1, 3, side, side, device="meta")
        full = _gflops(lambda: meta(x))
        plain = Config(**{**cfg.to_dict(), "augment": "none", "mixup": 0.0, "cutmix": 0.0})
        probe = torch.zeros(1, 3, CUT_PROBE_SIDE, CUT_PROBE_SIDE)
        cut = features.find_cut(model, plain, phase.name, probe) if features.why_not(plain, phase.name) is None \
            else "no cache"
        if isinstance(cut, str):
            return RecipeFlops(side, 0.0, full, full, cached=False)
        if cut.name == "pre-logits":   # the classifier alone trains
            with torch.no_grad():
                pre_logits = meta.forward_head(meta.forward_features(x), pre_logits=True)
            head = _gflops(lambda: meta.get_classifier()(pre_logits))
            return RecipeFlops(side, full - head, head, full, cached=True)
        names = [n for n, _ in features.sequential_units(model, probe)]
        front = names[:names.index(cut.name.removeprefix("after ")) + 1]

        def run_front():
            y = x
            for name in front:
                y = meta.get_submodule(name)(y)
        front_flops = _gflops(run_front)
        return RecipeFlops(side, front_flops, full - front_flops, full, cached=True)
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Speed:
    """One thread's forward pass here: CPU seconds per GFLOP, and wall seconds per CPU second (1 on an idle
    machine; more when other processes share the cores)."""
    cpu_s_per_gflop: float
    slowdown: float


def speed(model_name: str, size: int = 128, batch: int = 8) -> Speed:
    """Timed on one thread: a forward pass of ``batch`` images (random weights, eval mode)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = models.create(Config(model=model_name, weights="none", image_size=size), 2, Path("."))[0].eval()
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            model(x[:2])   # kernels' first-call set-up
            wall, cpu = time.perf_counter(), time.process_time()
            model(x)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        gflops = _gflops(lambda: model(x)) or 1e-9
        return Speed(cpu / gflops, max(1.0, wall / max(cpu, 1e-9)))
    finally:
        torch.set_num_threads(threads)
