"""What one invocation of the offline engine (``finetune_sweep.py local``) was asked to do."""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Options:
    sweep_dir: Path
    workers: int = 1
    count: int | None = None          # trials this invocation may start (all workers together)
    storage: str | None = None        # RDB URL; default: a journal file in sweep_dir
    seed: int | None = None           # seeds the sampler: a random/bayes study can be repeated
    max_failures: int = 3             # consecutive failed trials that stop the sweep
    poll_s: float = 0.5
    extend: bool = False              # adopt an edited sweep file (grid: its new points only)
    repeats: int = 1                  # grid: every point with this many seeds (a `seed` parameter)
    confirm_top: int = 0              # grid: once done, its N best configurations with `repeats` seeds each
    retry_failed: bool = False        # run the failed trials again, under their run ids
    heartbeat_s: float = 30.0         # a running trial's runner beats this often...
    grace_s: float | None = None      # ...and is taken for dead after this long without a beat (4 beats)
    host: str = field(default_factory=socket.gethostname)   # this machine, as trials record it
    gpus: list[str] | None = None     # one worker per GPU, its trials see only it (CUDA_VISIBLE_DEVICES)
    time_budget_s: float | None = None     # no trial starts past it that would not end in time; SIGTERM at it
    trial_estimate_s: float | None = None  # how long a trial takes, until the study has finished one
    artifacts: str | None = None      # artifact store for every trial's files (default: the study's own, if any)
    started: float = field(default_factory=time.monotonic)   # the time budget counts from here: the command's start

    def __post_init__(self):
        if self.gpus:   # one worker per GPU
            object.__setattr__(self, "workers", len(self.gpus))

    @property
    def grace(self) -> float:
        return self.grace_s if self.grace_s is not None else 4 * self.heartbeat_s
