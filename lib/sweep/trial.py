"""One trial: its run folder, the trainer in a subprocess exactly as ``wandb agent`` starts it, and what
came of it.

The trainer gets the agent's parameters file (``WANDB_SWEEP_PARAM_PATH``), ``WANDB_SWEEP_ID`` and
``WANDB_RUN_ID``, with W&B offline; its record lands in ``DIR/runs/<run_id>/``. While it runs, the
trial's heartbeat is beaten and, under hyperband, each epoch's metric is reported and the run stopped
when it is pruned.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from optuna.trial import TrialState

from lib import records
from lib.files import read_json, read_jsonl, tail, write_json
from lib.records import ExitCode, RunRecord, State, metric_value
from lib.run_id import RUN_ID
from lib.sweep import artifacts, recovery, storage
from lib.sweep import spec as sweep_spec
from lib.sweep.options import Options
from lib.sweep.spec import Sweep

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Outcome(NamedTuple):
    """How a trial ended: ``state`` None when the run can resume (preempted, or killed once: ``error``
    says why, and ``mark`` names the attribute its requeued copy gets, so that it happens once)."""
    state: TrialState | None
    value: float | None = None
    error: str | None = None
    mark: str | None = None


AFTER_KILL = "after_kill"   # a trial whose trainer was killed (SIGKILL) once already: the next kill fails it


class Children:
    """The trainers this runner started, so that a stopping runner can signal them all."""

    def __init__(self):
        self._lock, self._procs = threading.Lock(), set()

    @contextlib.contextmanager
    def watching(self, proc: subprocess.Popen):
        with self._lock:
            self._procs.add(proc)
        try:
            yield proc
        finally:
            with self._lock:
                self._procs.discard(proc)

    def terminate(self) -> None:
        with self._lock:
            for proc in self._procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()


def read_record(run_dir: Path) -> dict:
    """The run's run.json, or {} when there is none (yet) or it cannot be read."""
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        return read_json(run_dir / records.RUN_FILE)
    return {}


def slug(name: str) -> str:
    """A sweep name as the start of a run id (lib.run_id)."""
    return "".join(c if RUN_ID.fullmatch(c) else "-" for c in name)[:40]


class TrialProcess:
    """One trial of ``study`` run as ``run_id`` in ``opts.sweep_dir/runs/<run_id>``."""

    def __init__(self, sweep: Sweep, opts: Options, study: optuna.Study, trial: optuna.Trial, run_id: str):
        self.sweep, self.opts, self.study, self.trial = sweep, opts, study, trial
        self.run_dir = opts.sweep_dir / records.SWEEP_RUNS / run_id

    def run(self, params: dict, gpu: str | None, stop: threading.Event, children: Children) -> Outcome:
        """Start the trainer, watch it to its end, and say how it ended."""
        run_dir, trial = self.run_dir, self.trial
        # a dead runner's trainer may still write this folder: stopped first (the runner that found it may
        # have died while waiting for it)
        orphan = trial.user_attrs.get("orphan")
        if isinstance(orphan, dict) and orphan.get("run_id") == run_dir.name:
            recovery.stop_child(orphan, self.opts.host)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / records.STOP_FILE).unlink(missing_ok=True)
        if trial.user_attrs.get("fresh"):   # --retry_failed: start over, not from the failed run's checkpoint
            (run_dir / records.CHECKPOINT_FILE).unlink(missing_ok=True)
        elif "retry_of" in trial.user_attrs and read_record(run_dir).get("state") == State.FINISHED:
            # the trainer of a dead runner finished the run on its own: take its result, do not rerun it
            return self.outcome(ExitCode.OK, False)
        with open(run_dir / records.LOG_FILE, "ab") as log:
            proc = subprocess.Popen(self._argv(params), env=self._env(gpu), stdout=log, stderr=subprocess.STDOUT,
                                    cwd=os.getcwd())
            with children.watching(proc):
                trial.set_user_attr("child_pid", proc.pid)
                pruned = self._watch(proc, stop)
        trial.set_user_attr("exit_code", proc.returncode)
        return self.outcome(proc.returncode, pruned)

    def _argv(self, params: dict) -> list[str]:
        owned = dict(zip(sweep_spec.RUNNER_KEYS, (self.run_dir.name, str(self.run_dir.parent), self.sweep.name),
                         strict=True))
        write_params_file(self.run_dir / records.PARAMS_FILE, self.sweep, params, owned)   # nested, as W&B writes
        return build_command(self.sweep, params, self.run_dir, PROJECT_ROOT)

    def _env(self, gpu: str | None) -> dict[str, str]:
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SWEEP_ID": self.sweep.name,
               "WANDB_RUN_ID": self.run_dir.name, "WANDB_SWEEP_PARAM_PATH": str(self.run_dir / records.PARAMS_FILE),
               "WANDB_DIR": str(self.run_dir), "WANDB_ERROR_REPORTING": "false", "WANDB_SILENT": "true"}
        # Each trainer starts its own wandb-core: one inherited from a process that used W&B (a notebook, a
        # test run) would outlive a killed trainer and hold its run id, so its resumed run could not start.
        env.pop("WANDB_SERVICE", None)
        # Parallel trials share the cores: give each its share instead of oversubscribing them all.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.opts.workers)))
        if gpu is not None:   # this worker's GPU only: the trainer's cuda:0 is it
            env["CUDA_VISIBLE_DEVICES"] = gpu
        return env

    def _watch(self, proc: subprocess.Popen, stop: threading.Event) -> bool:
        """Wait for the run, beating the trial's heartbeat; feed hyperband each epoch's metric and stop
        the run when it is pruned (STOP file, then SIGTERM: the trainer records ``pruned``)."""
        reported, pruned, signalled, beat = 0, False, False, time.monotonic()
        while proc.poll() is None:
            time.sleep(self.opts.poll_s)
            if time.monotonic() - beat >= self.opts.heartbeat_s:
                storage.record_heartbeat(self.study, self.trial)
                beat = time.monotonic()
            if stop.is_set() and not signalled:
                proc.terminate()
                signalled = True
            if signalled or not self.sweep.hyperband:
                continue
            rows = read_jsonl(self.run_dir / records.METRICS_FILE)
            for row in rows[reported:]:
                value = row.get(self.sweep.metric)
                if value is not None and math.isfinite(value):
                    self.trial.report(float(value), step=int(row["epoch"]))
            reported = len(rows)
            if reported and not self._last_epoch(rows[-1]) and self.trial.should_prune():
                (self.run_dir / records.STOP_FILE).write_text(f"{State.PRUNED}\n")
                proc.terminate()
                pruned = signalled = True
        return pruned

    def _last_epoch(self, row: dict) -> bool:
        """``row`` is the run's last epoch: every epoch ran, and what is left is its test, not to be pruned."""
        epochs = (read_record(self.run_dir).get("config") or {}).get("epochs")
        epoch = row.get("epoch")
        return isinstance(epochs, int) and isinstance(epoch, int) and epoch >= epochs

    def outcome(self, code: int, pruned: bool) -> Outcome:
        """A finished run is a result, whatever the runner meant to do with it: never relabelled. Then
        pruned: a pruned run stopped by SIGTERM must not pass for a preempted one (and be resumed)."""
        record = read_record(self.run_dir)
        state = record.get("state")
        if code == ExitCode.OK and state == State.FINISHED:
            return Outcome(TrialState.COMPLETE, metric_value(record.get("summary"),
                                                             read_jsonl(self.run_dir / records.METRICS_FILE),
                                                             self.sweep.metric, self.sweep.goal == "maximize"))
        if pruned or code == ExitCode.PRUNED or state == State.PRUNED:
            if state not in (State.PRUNED, State.FINISHED):   # the trainer died before it could say so
                RunRecord(str(self.run_dir.parent), self.run_dir.name).update(state=State.PRUNED)
            return Outcome(TrialState.PRUNED)
        if state == State.PREEMPTED or code == ExitCode.PREEMPTED:
            return Outcome(None)
        if code == -signal.SIGKILL and not self.trial.user_attrs.get(AFTER_KILL):
            # the out-of-memory killer, most likely: its checkpoint is sound, so it resumes, once
            return Outcome(None, None, "its trainer was killed (SIGKILL: out of memory?)", AFTER_KILL)
        error = record.get("error") or tail(self.run_dir / records.LOG_FILE) or f"exit code {code}"
        return Outcome(TrialState.FAIL, None, f"exit code {code}: {error}")

    def keep_record(self) -> None:
        """The run record's essentials and each epoch's metric go into the study, so that `status URL`
        works on any machine with the database, not only the one holding the run folder."""
        record = read_record(self.run_dir)
        self.trial.set_user_attr("run", {k: record[k] for k in ("state", "summary", "error", "started_at",
                                                                "finished_at") if record.get(k) is not None})
        if self.sweep.hyperband:   # its epochs were reported as they came
            return
        for row in read_jsonl(self.run_dir / records.METRICS_FILE):
            value = row.get(self.sweep.metric)
            if isinstance(value, (int, float)) and math.isfinite(value) and "epoch" in row:
                self.trial.report(float(value), step=int(row["epoch"]))

    def upload(self, store, state: TrialState) -> None:
        """The trial's files into the artifact store, for `report URL` and `export URL` on other machines.
        A failed upload is said and recorded, but does not fail a trial whose run finished."""
        if store is None:
            return
        try:
            artifacts.upload_run(store, self.trial, self.run_dir, finished=state == TrialState.COMPLETE)
        except Exception as e:  # noqa: BLE001 - a full disk or a lost bucket must not cost the trial
            why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            self.trial.set_user_attr("artifacts_error", why)
            print(f"warning: trial {self.trial.number}: its files did not reach the artifact store: {why}", flush=True)

    def write_trial_file(self, state: TrialState, error: str | None) -> None:
        """The trial's end in its run folder (lib.records.TRIAL_FILE): why a run failed is read with the runs,
        also where it died before writing its own record, without opening the study."""
        write_json(self.run_dir / records.TRIAL_FILE, {"trial": self.trial.number, "state": state.name.lower(),
                                               "error": error[-500:] if error else None})


# --- one trial, as `wandb agent` starts it ---------------------------------------------------------------
def build_command(sweep: Sweep, params: dict[str, Any], workdir: Path, project_root: Path) -> list[str]:
    """The trial's argv (never a shell), made as ``wandb agent`` makes it (wandb_agent.Agent._command_run):
    ``create_sweep_command`` fills ``${envvar:NAME}`` from this environment, ``create_sweep_command_args``
    formats the parameters, and each whole-element macro is replaced by its list. One difference, on
    purpose: ``${interpreter}`` is this Python (the kit's environment) where the agent says ``python``."""
    from wandb.sdk.launch.sweeps import utils as wandb_sweeps

    program = sweep.program if Path(sweep.program).is_absolute() or (Path.cwd() / sweep.program).exists() \
        else str(project_root / sweep.program)
    command = wandb_sweeps.create_sweep_command(list(sweep.command))   # it edits the list it is given
    formats = wandb_sweeps.create_sweep_command_args({"args": sweep.run_args(params)})
    json_file = workdir / records.ARGS_FILE
    if "${args_json_file}" in command:
        json_file.write_text(formats["args_json"][0])
    formats.update(interpreter=[sys.executable], program=[program], args_json_file=[str(json_file)],
                   env=["/usr/bin/env"] if platform.system() != "Windows" else [])
    argv: list[str] = []
    for token in map(str, command):
        if token.startswith("${") and token.endswith("}"):
            argv += formats.get(token[2:-1]) or []
        else:
            argv.append(token)
    return argv


def write_params_file(path: Path, sweep: Sweep, params: dict[str, Any], owned: dict[str, Any]) -> None:
    """The agent's parameters file (``WANDB_SWEEP_PARAM_PATH``), by W&B's own writer: the trial's
    parameters in W&B's nested form, plus the keys the offline runner owns (runs_dir, group, run_id)."""
    from wandb.sdk.lib import config_util

    args = {**sweep.run_args(params), **{k: {"value": v} for k, v in owned.items()}}
    config_util.save_config_file_from_dict(str(path), args)
