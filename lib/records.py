"""The run folder's contract, declared once: ``<runs_dir>/<run_id>/`` with ``run.json``, ``metrics.jsonl``
and ``model.safetensors`` (and, while it runs or under a sweep, the other files below), the states a run
is in, and the exit codes of the trainer and the sweep commands. The trainer, the sweep runner, the W&B
agent wrapper, the Kaggle helpers and the readers import these names; tests/test_layout.py fails on one of
them spelled as a literal elsewhere in lib/. Readable without W&B; every file is written atomically (temp +
rename), so a crash leaves the previous version, never half a file.

Standard library only at import (the Kaggle helpers import it before the kit's requirements are installed).
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.util
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.files import atomic_write, json_default, read_json, write_json

IMBALANCED_RATIO = 2.0   # largest / smallest class beyond this: plain accuracy rewards the majority class

# --- the files of a run folder ------------------------------------------------------------------------
RUN_FILE = "run.json"                   # the record: config, state, summary, test predictions, ...
METRICS_FILE = "metrics.jsonl"          # one row per epoch
WEIGHTS_FILE = "model.safetensors"      # the kept epoch's weights
CHECKPOINT_FILE = "last.ckpt"           # model, optimizer, schedule, RNG states: written every epoch, to resume
LOCK_FILE = ".lock"                     # an flock held by the one process writing the folder (also the sweep dir's)
STOP_FILE = "STOP"                      # the sweep runner writes "pruned" there before its SIGTERM
TRIAL_FILE = "trial.json"               # the sweep runner's word on how the trial ended: its state and error
LOG_FILE = "output.log"                 # a sweep trial's stdout and stderr
PARAMS_FILE = "sweep-params.yaml"       # the agent's parameters file (WANDB_SWEEP_PARAM_PATH)
ARGS_FILE = "sweep-args.json"           # the agent's ${args_json_file}, when the command asks for it
LR_FIND_FILE = "lr_find.json"           # lr: auto: the range test's curve and the rate it picked
LR_FIND_PLOT = "lr_find.png"            # ... and its plot
# --- the files of a sweep dir (``finetune_sweep.py local``) ----------------------------------------------
SWEEP_META = "sweep.json"               # name, metric, goal, method, storage (no password), --set values
SWEEP_COPY = "sweep.yaml"               # the sweep file as the study first ran it
JOURNAL_FILE = "optuna.journal"         # the study, without --storage
SWEEP_RUNS = "runs"                     # DIR/runs/<run_id>/: the trials' run folders
RUN_FOLDER_FILES = (RUN_FILE, METRICS_FILE, WEIGHTS_FILE, CHECKPOINT_FILE, LOCK_FILE, STOP_FILE, TRIAL_FILE,
                    LOG_FILE, PARAMS_FILE, ARGS_FILE, LR_FIND_FILE, LR_FIND_PLOT)
SWEEP_DIR_FILES = (SWEEP_META, SWEEP_COPY, JOURNAL_FILE)


class State(enum.StrEnum):
    """run.json's ``state`` (and trial.json's, and the reports'): a str, so records stay plain JSON."""
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    PREEMPTED = "preempted"     # stopped by a signal with its checkpoint kept: the same run id resumes it
    PRUNED = "pruned"           # stopped by the sweep's early termination: final


STATES = tuple(State)


class ExitCode(enum.IntEnum):
    """How finetune_resnet.py and finetune_sweep.py end (their ``--help`` says the same)."""
    OK = 0
    FAILED = 1                  # a run that failed; a sweep stopped by failed trials
    BAD_INPUT = 2               # bad config, data, sweep file or arguments: one line on stderr, nothing written
    PREEMPTED = 3               # a run stopped by SIGTERM/SIGINT, checkpointed: start it again to resume
    BUDGET_SPENT = 3            # a sweep command whose --time_budget ran out with work left: run it again.
    #                             The same code on purpose: both mean "stopped with work left, resumable".
    PRUNED = 4                  # a run stopped by the sweep's early termination
    INTERRUPTED = 130           # a sweep command stopped by Ctrl-C or SIGTERM (128 + SIGINT, as a shell says)


# --- what a sweep ranks by ---------------------------------------------------------------------------------
GOALS = ("maximize", "minimize")
# each metrics.jsonl row (best_*: of the weights kept so far), and the direction that is better
EPOCH_GOALS = {"train_loss": "minimize", "train_acc": "maximize", "val_loss": "minimize", "val_acc": "maximize",
               "val_balanced_acc": "maximize", "best_val_acc": "maximize", "best_val_balanced_acc": "maximize"}
EPOCH_METRICS = tuple(EPOCH_GOALS)


@functools.cache
def wandb_default_goal() -> str:
    """The goal W&B gives a sweep metric that names none: the default in its sweep schema (the open-source
    ``sweeps`` package: the check W&B's server applies), read as a file: this module stays standard-library."""
    package = importlib.util.find_spec("sweeps")
    schema = json.loads((Path(package.origin).parent / "config" / "schema.json").read_text())
    return schema["definitions"]["metric"]["properties"]["goal"]["default"]


def _value(help: str, metric: bool = True, goal: str | None = None):
    """A summary field; ``metric``: a number a sweep may rank by and the report tabulates; ``goal``: the
    direction that is better, where one is (a sweep that optimises the other way is refused)."""
    return field(default=None, metadata={"help": help, "metric": metric, "goal": goal})


@dataclass
class RunSummary:
    """What a finished run measured: run.json's ``summary``, W&B's run summary, the numbers of the report
    and the model card, and (``metric`` fields) what a sweep may name as its metric. A new result is one
    field here, filled where it is measured: every list of keys is derived from this one."""
    best_val_acc: float | None = _value("validation accuracy of the kept weights", goal="maximize")
    best_val_balanced_acc: float | None = _value("validation balanced accuracy (mean recall over classes) of the "
                                                 "kept weights: the score to select on when classes are imbalanced",
                                                 goal="maximize")
    best_epoch: int | None = _value("epoch of the kept weights")
    train_val_gap: float | None = _value("training minus validation accuracy at the best epoch: overfitting",
                                         goal="minimize")
    epochs_run: int | None = _value("epochs trained (early stopping may end a run before its epochs)")
    stopped_early: bool | None = _value("early stopping ended the run", metric=False)
    trainable_params: int | None = _value("parameters the strategy trains")
    train_time_s: float | None = _value("seconds spent training (not decoding or testing)", goal="minimize")
    train_images_per_s: float | None = _value("training throughput", goal="maximize")
    feature_cache: str | None = _value("how each phase's frozen front was served", metric=False)
    best_weights: str | None = _value("raw or ema: which weights were kept", metric=False)
    amp_dtype: str | None = _value("mixed precision used: bfloat16, float16 or none", metric=False)
    compile_s: float | None = _value("seconds torch.compile took (compile on only)", metric=False)
    lr_found: float | None = _value("the rate lr: auto picked before training (lr_find.json; None: a fixed lr)",
                                    metric=False)
    test_acc: float | None = _value("test accuracy of the kept weights", goal="maximize")
    test_loss: float | None = _value("test loss", goal="minimize")
    test_precision_macro: float | None = _value("test precision, mean over classes", goal="maximize")
    test_recall_macro: float | None = _value("test recall, mean over classes", goal="maximize")
    test_f1_macro: float | None = _value("test F1, mean over classes", goal="maximize")
    test_balanced_acc: float | None = _value("test balanced accuracy: recall averaged over the classes present "
                                             "(scikit-learn's balanced_accuracy_score); chance is 1/classes",
                                             goal="maximize")
    test_mcc: float | None = _value("test Matthews correlation coefficient, -1 to 1 (0: no better than chance "
                                    "or one class predicted; scikit-learn's matthews_corrcoef)", goal="maximize")
    total_params: int | None = _value("parameters of the model")
    model_size_mb: float | None = _value("size of the saved weights", goal="minimize")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RUN_METRICS = frozenset(f.name for f in dataclasses.fields(RunSummary) if f.metadata["metric"])
METRIC_GOALS = {**EPOCH_GOALS, **{f.name: f.metadata["goal"] for f in dataclasses.fields(RunSummary)
                                  if f.metadata["goal"]}}   # the better direction of each metric that has one


def metric_value(summary: dict | None, history: list[dict] | None, metric: str, maximize: bool = True) -> float | None:
    """A run's value of ``metric``: its summary's, else the best of its epochs' (a metric logged per epoch
    only, or a run that stopped before its summary); None when it has none."""
    value = (summary or {}).get(metric)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    values = [r[metric] for r in history or [] if isinstance(r.get(metric), (int, float))
              and not isinstance(r[metric], bool) and math.isfinite(r[metric])]
    return float(max(values) if maximize else min(values)) if values else None


class RunRecord:
    """Owns one run folder. ``data`` mirrors run.json; ``update`` rewrites it."""

    def __init__(self, runs_dir: str, run_id: str):
        self.dir = Path(runs_dir) / run_id
        self.path = self.dir / "run.json"
        # Damage found on opening (a disk that lost a write, a file truncated by hand): the run goes on
        # from what is left, and these lines go to the record's warnings and to stderr.
        self.notes: list[str] = []
        self.data: dict[str, Any] = self._read_record()
        self.metrics: list[dict] = self._read_metrics()

    def _read_record(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            data = read_json(self.path)
            if isinstance(data, dict):
                return data
            why = f"a JSON {type(data).__name__}, not an object"
        except (OSError, ValueError) as e:   # ValueError: bad JSON or bad UTF-8
            why = " ".join(str(e).split())[:120] or type(e).__name__
        self.notes.append(f"run.json was damaged ({why}): its earlier contents are lost")
        return {}

    def _read_metrics(self) -> list[dict]:
        path = self.dir / "metrics.jsonl"
        try:
            lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        except (OSError, ValueError):
            lines = ["?"]
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                rows.append(row)
        if len(rows) < len(lines):
            self.notes.append(f"metrics.jsonl was damaged: {len(lines) - len(rows)} unreadable row(s) dropped")
        return rows

    def start_fresh(self) -> None:
        """Forget an earlier attempt with this id (a requeued or repeated run)."""
        self.start_fresh_epochs()
        self.data = {}

    def start_fresh_epochs(self) -> None:
        self.metrics = []
        (self.dir / "metrics.jsonl").unlink(missing_ok=True)

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.data["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(self.path, self.data)

    def log_epoch(self, row: dict) -> None:
        self.metrics.append(row)
        text = "".join(json.dumps(r, default=json_default) + "\n" for r in self.metrics)
        atomic_write(self.dir / "metrics.jsonl", lambda tmp: Path(tmp).write_text(text))

    def save_weights(self, state_dict: dict, name: str = "model.safetensors") -> Path:
        from safetensors.torch import save_file  # here: reading records must not need torch

        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        path = self.dir / name
        atomic_write(path, lambda tmp: save_file(tensors, tmp))
        return path

    def load_weights(self, name: str = "model.safetensors") -> dict:
        from safetensors.torch import load_file

        return load_file(self.dir / name)
