"""Runners that died, trials that failed: found and run again under the same run id.

A RUNNING trial whose runner is gone (its pid dead on this machine, or its heartbeat stale on any
machine) is failed once and a copy of it enqueued; the copy supersedes it (lib.sweep.study.counted),
so nothing is lost and nothing runs twice. A dead runner's trainer may still be running: it is stopped
(SIGTERM: it checkpoints) before the trial runs again, so two trainers never write one run folder.
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

from lib.sweep.study import counted, point

CHILD_STOP_S = 60                           # a dead runner's trainer gets this long to checkpoint


def alive(pid: int) -> bool:
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
    if attrs.get("host") != host or not pid or not is_trainer(pid, run_id):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + CHILD_STOP_S
        while is_trainer(pid, run_id) and time.time() < deadline:
            time.sleep(0.1)
        if is_trainer(pid, run_id):
            os.kill(pid, signal.SIGKILL)


def fail_once(study: optuna.Study, trial_id: int) -> bool:
    """Mark a trial failed; False when another process or thread finished it first."""
    try:
        return study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False


def resubmit(study: optuna.Study, t, why: str, **attrs) -> None:
    """Enqueue a finished trial's point again under its run id. The old trial is superseded: it no
    longer counts (``counted``), so nothing is lost and nothing runs twice."""
    p = point(t)
    user_attrs = {"run_id": t.user_attrs.get("run_id"), "retry_of": t.number, "requeued_because": why,
                  "queued": t.user_attrs.get("queued", False), **attrs}
    for key in ("confirm", "plan"):   # a confirm or planned trial keeps its seed and its place in the plan
        if key in t.user_attrs:
            user_attrs[key] = t.user_attrs[key]
    if "point" in t.user_attrs:
        user_attrs["point"] = p
    if t.user_attrs.get("config"):
        user_attrs["config"] = t.user_attrs["config"]
    study.enqueue_trial({} if "point" in t.user_attrs else p, user_attrs=user_attrs)


def requeue_stale(study: optuna.Study, t, host: str) -> None:
    """Optuna's heartbeat callback: ``fail_stale_trials`` failed this trial (its runner stopped beating,
    on whatever machine); run it again."""
    stop_child(t.user_attrs, host)
    resubmit(study, t, "its runner stopped sending heartbeats")


def reap(study: optuna.Study, host: str) -> None:
    """Requeue the RUNNING trials whose runner is gone: on this machine, as soon as its pid is dead; on
    any machine, once its heartbeat is stale."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and pid and not alive(pid) and fail_once(study, t._trial_id):
            stop_child(t.user_attrs, host)
            resubmit(study, t, "its runner died")
    optuna.storages.fail_stale_trials(study)


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
