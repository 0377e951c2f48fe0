"""Runners that died, trials that failed: found and run again under the same run id.

A RUNNING trial whose runner is gone (its pid dead on this machine, or its heartbeat stale on any
machine) gets a copy enqueued, and only then is it failed: a runner killed in between leaves the copy
waiting (and the original still RUNNING, which the next runner fails without a second copy), never a
lost trial. The copy supersedes it (lib.sweep.study.counted), so nothing is lost and nothing runs twice.
A dead runner's trainer may still be running: it is stopped (SIGTERM: it checkpoints) before the trial
runs again, by the runner that found it and by whichever runner starts the copy, so two trainers never
write one run folder.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from lib.files import locked
from lib.records import LOCK_FILE
from lib.sweep import storage
from lib.sweep.options import Options
from lib.sweep.study import counted, point

CHILD_STOP_S = 60                           # a dead runner's trainer gets this long to checkpoint
CARRIED = ("confirm", "plan", "after_kill")   # what a requeued copy keeps of its original, besides its point


def alive(pid: int) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:   # a damaged study: not a process here
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_trainer(pid: int, run_id: str) -> bool:
    """``pid`` is still the trainer of ``run_id`` (pids are reused; a zombie is gone)."""
    if not Path("/proc/self/environ").exists():
        return alive(pid)           # no /proc: trust the pid
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return alive(pid)
    return f"WANDB_RUN_ID={run_id}".encode() in env.split(b"\0")


def stop_child(attrs: dict, host: str) -> None:
    """A runner killed alone (SIGKILL) leaves its trainer running: stop it (SIGTERM: it checkpoints)
    before the trial runs again, so two trainers never write one run folder. Only on its own machine."""
    pid, run_id = attrs.get("child_pid"), attrs.get("run_id")
    if attrs.get("host") != host or not isinstance(pid, int) or not pid or not is_trainer(pid, run_id):
        return
    print(f"recovery: stopping the trainer its dead runner left running (run {run_id}, pid {pid}): up to "
          f"{CHILD_STOP_S} s for it to save its checkpoint", flush=True)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + CHILD_STOP_S
        while is_trainer(pid, run_id) and time.time() < deadline:
            time.sleep(0.1)
        if is_trainer(pid, run_id):
            print(f"recovery: trainer pid {pid} did not stop within {CHILD_STOP_S} s: killed", flush=True)
            os.kill(pid, signal.SIGKILL)


def fail_once(study: optuna.Study, trial_id: int) -> bool:
    """Mark a trial failed; False when another process or thread finished it first."""
    try:
        return study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False


def resubmit(study: optuna.Study, t, why: str, **attrs) -> None:
    """Enqueue a trial's point again under its run id. The old trial is superseded: it no longer counts
    (``counted``), so nothing is lost and nothing runs twice. A trainer it left running is named in the
    copy (``orphan``): the runner that starts the copy stops it first."""
    p = point(t)
    user_attrs = {"run_id": t.user_attrs.get("run_id"), "retry_of": t.number, "requeued_because": why,
                  "queued": t.user_attrs.get("queued", False), **attrs}
    for key in CARRIED:   # a confirm or planned trial keeps its seed and its place in the plan
        if key in t.user_attrs and key not in user_attrs:
            user_attrs[key] = t.user_attrs[key]
    if "point" in t.user_attrs:
        user_attrs["point"] = p
    if t.user_attrs.get("config"):
        user_attrs["config"] = t.user_attrs["config"]
    if t.user_attrs.get("child_pid") and t.state == TrialState.RUNNING:
        user_attrs["orphan"] = {k: t.user_attrs.get(k) for k in ("child_pid", "run_id", "host")}
    study.enqueue_trial({} if "point" in t.user_attrs else p, user_attrs=user_attrs)


@contextlib.contextmanager
def study_lock(opts: Options):
    """Every runner of the study, on this machine and on others, waits here: two runners that find the
    same lost trial enqueue one copy of it."""
    with locked(opts.sweep_dir / LOCK_FILE), storage.shared_lock(opts):
        yield


def requeue(study: optuna.Study, trial_id: int, why: str, **attrs) -> dict | None:
    """Run a RUNNING trial again: its copy enqueued first (unless an earlier attempt, killed half-way,
    already did), then the trial failed. Call under ``study_lock``. Returns the trial's attributes (for
    ``stop_child``), or None when it was not RUNNING any more (another runner took care of it)."""
    t = study._storage.get_trial(trial_id)
    if t.state != TrialState.RUNNING:
        return None
    if not any(x.user_attrs.get("retry_of") == t.number for x in study.get_trials(deepcopy=False)):
        resubmit(study, t, why, **attrs)
    fail_once(study, trial_id)
    return dict(t.user_attrs)


def requeue_gone(study: optuna.Study, host: str) -> list[dict]:
    """Requeue the RUNNING trials whose runner is gone (on this machine, as soon as its pid is dead; on
    any machine, once its heartbeat is stale). Call under ``study_lock``; returns what ``stop_child``
    must stop once the lock is released (it may take a minute)."""
    stale = storage.stale_trial_ids(study)
    found = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if gone(t, stale, host):
            why = "its runner stopped sending heartbeats" if t._trial_id in stale else "its runner died"
            attrs = requeue(study, t._trial_id, why)
            if attrs is not None:
                found.append(attrs)
    return found


def reap(study: optuna.Study, opts: Options) -> None:
    """A running runner's look for lost trials (between trials): the lock only when there is one."""
    stale = storage.stale_trial_ids(study)
    if not any(gone(t, stale, opts.host) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
        return
    with study_lock(opts):
        found = requeue_gone(study, opts.host)
    for attrs in found:
        stop_child(attrs, opts.host)


def retry_failed(study: optuna.Study) -> None:
    failed = [t for t in counted(study) if t.state == TrialState.FAIL]
    for t in failed:
        resubmit(study, t, "--retry_failed", fresh=True)
    print(f"retrying {len(failed)} failed trial(s) under their run ids")


def gone(t, stale: set[int], host: str) -> bool:
    """A RUNNING trial whose runner is dead (same machine) or silent past the grace period."""
    pid = t.user_attrs.get("pid")
    return t.state == TrialState.RUNNING and (
        t._trial_id in stale or (t.user_attrs.get("host") == host and bool(pid) and not alive(pid)))

