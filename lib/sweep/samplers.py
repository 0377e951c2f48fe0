"""The search: a seeded study repeats itself and never repeats a draw; hyperband prunes.

Grid points are enqueued (lib.sweep.study), never sampled; random -> RandomSampler, bayes -> TPE,
``early_terminate: hyperband`` -> HyperbandPruner fed with each epoch's metric.
"""
from __future__ import annotations

import threading
import zlib
from types import SimpleNamespace

import numpy as np
import optuna

from lib.sweep.spec import Sweep


def draw_seed(seed: int, number: int, name: str) -> int:
    """The seed of one trial's draw of one parameter (``name``; "" for a joint draw)."""
    return int(np.random.SeedSequence([seed % 2**32, number, zlib.crc32(name.encode())]).generate_state(1)[0])


class TrialSeeded:
    """Mixin for Optuna samplers: each trial draws from an RNG of its own, seeded by (seed, trial
    number, parameter), not from one RNG per sampler object. A seeded study then repeats itself however
    its trials are spread over worker threads and runner processes, and no two trials share a draw."""

    def __init__(self, *args, seed: int, **kwargs):
        super().__init__(*args, seed=seed, **kwargs)
        self._study_seed = seed
        self._draw_lock = threading.Lock()   # one sampler serves every worker thread of the process

    def _drawing(self, trial, name: str, sample):
        rng = SimpleNamespace(rng=np.random.RandomState(draw_seed(self._study_seed, trial.number, name)))
        owners = [s for s in (self, getattr(self, "_random_sampler", None)) if s is not None]  # TPE's startup
        with self._draw_lock:
            saved = [s._rng for s in owners]
            for s in owners:
                s._rng = rng
            try:
                return sample()
            finally:
                for s, r in zip(owners, saved, strict=True):
                    s._rng = r

    def sample_relative(self, study, trial, search_space):
        parent = super().sample_relative
        return self._drawing(trial, "", lambda: parent(study, trial, search_space))

    def sample_independent(self, study, trial, param_name, param_distribution):
        parent = super().sample_independent
        return self._drawing(trial, param_name, lambda: parent(study, trial, param_name, param_distribution))


class SeededRandom(TrialSeeded, optuna.samplers.RandomSampler):
    pass


class SeededTPE(TrialSeeded, optuna.samplers.TPESampler):
    pass


def sampler(sweep: Sweep, seed: int | None) -> optuna.samplers.BaseSampler:
    """One per runner process, shared by its workers. Grid points are enqueued, never sampled."""
    if sweep.method == "bayes":   # constant_liar: parallel trials do not all crowd the same best guess
        cls = SeededTPE if seed is not None else optuna.samplers.TPESampler
        return cls(multivariate=True, constant_liar=True, seed=seed)
    return SeededRandom(seed=seed) if seed is not None else optuna.samplers.RandomSampler()


def pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    hb = sweep.hyperband
    if not hb:
        return optuna.pruners.NopPruner()
    return optuna.pruners.HyperbandPruner(min_resource=hb["min_iter"], max_resource=hb["max_iter"],
                                          reduction_factor=hb["eta"])
