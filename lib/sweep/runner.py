"""Offline sweeps: the same W&B sweep YAML, with no W&B server, on one machine or many.

Optuna does the search and the coordination (lib.sweep.samplers); the study lives in a journal file in
the sweep dir or in a database that runners on several machines share (lib.sweep.storage). A runner
opens the study (lib.sweep.study: one sweep per folder, grid enqueued once), requeues the trials of dead
runners (lib.sweep.recovery), and its workers (threads) each take a trial and run it in a subprocess
(lib.sweep.trial) until the study, ``--count`` or ``--time_budget`` is done. Ctrl-C and SIGTERM stop
it the same way: the trials checkpoint and are requeued under their run ids. The runner sets both handlers
itself (a background job of a non-interactive shell starts with SIGINT ignored) and exits once its trainers
have.
"""
from __future__ import annotations

import contextlib
import enum
import os
import signal
import threading
import time
import warnings
from dataclasses import replace

import numpy as np
import optuna
import yaml
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState
from tqdm import tqdm

from lib.errors import SweepError
from lib.files import locked, read_json, write_json
from lib.recipes import strategy_uses
from lib.records import LOCK_FILE, SWEEP_COPY, SWEEP_META, SWEEP_RUNS, ExitCode
from lib.run_id import valid_run_id
from lib.sweep import artifacts, budget, confirm, planner, recovery, samplers, storage
from lib.sweep import spec as sweep_spec
from lib.sweep import study as sweep_study
from lib.sweep.options import Options
from lib.sweep.spec import Sweep
from lib.sweep.status import cell, status_table, trial_config, varying_keys
from lib.sweep.trial import Children, TrialProcess, slug

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats are "experimental" in Optuna and "meant for optimize()": we use them with ask/tell on purpose.
warnings.filterwarnings("ignore", category=ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


class Step(enum.Enum):
    """What a worker does next."""
    START = "start"    # take a trial
    WAIT = "wait"      # for trials running elsewhere: one may yet fail and come back
    DONE = "done"


def open_study(sweep: Sweep, opts: Options) -> optuna.Study:
    """Create or join the study (refusing an edited or different sweep); enqueue the grid once; requeue
    trials of dead runners; with ``retry_failed``, the failed trials."""
    opts.sweep_dir.mkdir(parents=True, exist_ok=True)
    with locked(opts.sweep_dir / LOCK_FILE), storage.shared_lock(opts) as shared:
        meta_path = opts.sweep_dir / SWEEP_META
        held = read_json(meta_path).get("name") if meta_path.exists() else None
        if held and held != sweep.name:
            raise SweepError(f"{opts.sweep_dir} holds the study {held!r}, not {sweep.name!r}: one study per "
                             f"folder, so give this one its own --sweep_dir")
        study = optuna.create_study(
            study_name=sweep.name, storage=shared, load_if_exists=True, sampler=samplers.sampler(sweep, opts.seed),
            pruner=samplers.pruner(sweep), direction="maximize" if sweep.goal == "maximize" else "minimize")
        stored = study.user_attrs.get("sweep") or sweep_study.legacy_definition(opts.sweep_dir, sweep)
        new = sweep_study.definition(sweep)
        changed = stored is not None and stored != new
        if changed:
            sweep_study.check_extension(sweep, stored, opts, study)
            planner.check_extension(study, changed)
        if changed or "sweep" not in study.user_attrs:
            study.set_user_attr("sweep", new)
            (opts.sweep_dir / SWEEP_COPY).write_text(yaml.safe_dump(sweep.raw, sort_keys=False))
        if sweep.method == "grid" and not planner.planning(study, sweep, opts):   # a plan enqueues its own
            sweep_study.enqueue_grid(study, sweep, extending=changed)
            if opts.confirm_top:
                confirm.enqueue_confirm(study, sweep, opts)
        elif changed:
            sweep_study.new_search_space(study, sweep, stored)
        sweep_study.check_run_ids(study.get_trials(deepcopy=False))
        if opts.retry_failed:
            recovery.retry_failed(study)
        orphans = recovery.requeue_gone(study, opts.host)
        meta = {"name": sweep.name, "sweep_file": str(sweep.path), "storage": storage.public_url(opts.storage),
                "metric": sweep.metric, "goal": sweep.goal, "method": sweep.method,
                "set": {k: str(v) for k, v in sweep.fixed.items()},
                "heartbeat_s": opts.heartbeat_s, "grace_s": opts.grace}
        write_json(meta_path, meta)
    for attrs in orphans:   # after the lock: stopping a trainer may take a minute
        recovery.stop_child(attrs, opts.host)
    return study


def _storage(opts: Options):
    return storage.open_storage(opts)


class Signals:
    """SIGINT and SIGTERM while the runner runs, whatever the process inherited (a background job of a
    non-interactive shell, `nohup ... &`, starts with SIGINT ignored). The handler only counts them, and
    the main loop reads the count: a handler that raised inside ``Thread.join`` would leave Python taking
    a still-running worker for ended, and the runner would exit before its trainers. Outside the main
    thread (a runner started by a test or a notebook) the process's own handlers stay."""

    def __init__(self):
        self.count, self._old = 0, {}

    def _heard(self, _signum, _frame) -> None:
        self.count += 1

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._heard) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *_exc) -> None:
        for sig, handler in self._old.items():
            if handler is not None:   # None: set outside Python, nothing to put back
                signal.signal(sig, handler)


class Runner:
    """Workers (threads) that each take a trial, run it in a subprocess, and report it."""

    def __init__(self, sweep: Sweep, opts: Options, started: float | None = None):
        """``started``: when the command began (time.time()), so a second pass (the confirm runs) goes on
        counting the elapsed time of the first."""
        self.sweep, self.opts = sweep, opts
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.started = 0
        self.failures_in_a_row = 0
        self.stop_reason: str | None = None
        self.children = Children()
        # the budget counts from the command's start; "budget" says why the runner stopped early, if it did
        self.budget: str | None = None
        self.sampler = samplers.sampler(sweep, opts.seed)   # one per process: its draws are per trial, not per thread
        study = open_study(sweep, opts)
        self.planner = planner.Planner(sweep, opts, study) if planner.planning(study, sweep, opts) else None
        if self.planner is not None and not opts.time_budget_s:   # a planned study keeps its budget
            opts = self.opts = replace(opts, time_budget_s=self.planner.state["made_for_s"])
            print(f"time budget: {budget.format_duration(opts.time_budget_s)}, the plan's own", flush=True)
        self.deadline = opts.started + opts.time_budget_s if opts.time_budget_s else None
        self.store = artifacts.attach(study, opts.artifacts)
        self.versions = study.user_attrs.get("versions", {})
        total = study.user_attrs.get("grid_size", 0) + study.user_attrs.get("confirm_size", 0) \
            or opts.count or sweep.run_cap
        self.confirm_waiting = bool(opts.confirm_top) and confirm.grid_left(study) > 0   # confirm after this pass
        self.bar = tqdm(total=total, desc=f"sweep {sweep.name}", unit="trial", disable=None)
        self.bar.update(sum(1 for t in sweep_study.counted(study) if t.state.is_finished()))
        self.t0 = started or time.time()

    # -- the loop of one worker ------------------------------------------------
    def work(self, gpu: str | None = None, done: threading.Event | None = None) -> None:
        """``done`` is set when this worker has reported its last trial: the runner waits on it (see
        Signals), and prints its table only once every interrupted trial has been requeued."""
        try:
            self._work(gpu)
        except Exception as e:  # noqa: BLE001 - a broken worker stops the sweep with its reason
            with self.lock:
                self.stop_reason = f"stopped: worker error: {type(e).__name__}: {e}"
            self.stop.set()
        finally:
            if done is not None:
                done.set()

    def _work(self, gpu: str | None) -> None:
        study = optuna.load_study(study_name=self.sweep.name, storage=_storage(self.opts), sampler=self.sampler,
                                  pruner=samplers.pruner(self.sweep))
        while not self.stop.is_set():
            recovery.reap(study, self.opts)
            step = self._next(study)
            if step is Step.DONE:
                return
            if step is Step.WAIT:   # another runner's trial may yet fail and come back
                self.stop.wait(min(5.0, max(self.opts.poll_s, self.opts.heartbeat_s / 2)))
                continue
            trial = study.ask()
            if self.sweep.method == "grid" and not trial.user_attrs.get("queued"):
                trial.set_user_attr("surplus", True)   # another worker took the last grid point
                study.tell(trial, state=TrialState.FAIL)
                continue
            self._run(study, trial, gpu)

    def _next(self, study: optuna.Study) -> Step:
        with self.lock:
            if self.opts.count is not None and self.started >= self.opts.count:
                return Step.DONE
            trials = sweep_study.counted(study)
            if self.sweep.method == "grid":
                can_start = any(t.state == TrialState.WAITING for t in trials)
                if not can_start and self.planner is not None:   # the plan's next trial, sized to the time left
                    step = self.planner.next_trial(study, self._left())
                    if step != "start":
                        return Step.WAIT if step == "wait" else Step.DONE
                    can_start = True
            else:
                started = sum(t.state != TrialState.WAITING for t in trials)
                can_start = not self.sweep.run_cap or started < self.sweep.run_cap
            if can_start and self._no_time_for_a_trial(trials):
                return Step.DONE
            if can_start:
                self.started += 1
                return Step.START
            mine = (self.opts.host, os.getpid())
            elsewhere = any(t.state == TrialState.RUNNING and "heartbeat_s" in t.user_attrs
                            and (t.user_attrs.get("host"), t.user_attrs.get("pid")) != mine for t in trials)
            return Step.WAIT if elsewhere else Step.DONE

    def _trial_estimate(self, trials: list) -> tuple[float | None, str | None]:
        """How long one trial takes: the median of the study's finished trials, else --trial_estimate.
        A trial that resumed a preempted run ran only its rest: it would make trials look shorter."""
        durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                     if t.state == TrialState.COMPLETE and t.datetime_complete and t.datetime_start
                     and ("retry_of" not in t.user_attrs or t.user_attrs.get("fresh"))]
        if durations:
            return float(np.median(durations)), f"median of {len(durations)} finished trial(s)"
        if self.opts.trial_estimate_s:
            return self.opts.trial_estimate_s, "--trial_estimate"
        return None, None

    def _no_time_for_a_trial(self, trials: list) -> bool:
        """Past the deadline, or less time left than one trial takes: start nothing (called under the lock)."""
        if self.deadline is None or self.planner is not None:   # a plan sizes its trials itself
            return False
        left = self.deadline - time.monotonic()
        estimate, source = self._trial_estimate(trials)
        if left > (estimate or 0):
            return False
        if self.budget is None:
            self.budget = (f"time budget: {budget.format_duration(left)} left, below one trial "
                           f"(~{budget.format_duration(estimate or 0)}, {source or 'the deadline has passed'}): "
                           f"no new trial starts")
            print(self.budget, flush=True)
        return True

    def _run(self, study: optuna.Study, trial: optuna.Trial, gpu: str | None = None) -> None:
        run_id = trial.user_attrs.get("run_id") or self._new_run_id(trial.number)
        if not valid_run_id(run_id):   # a study is input: no folder is made or touched for it
            why = sweep_study.bad_run_id(trial.number, run_id)
            trial.set_user_attr("error", why)
            print(f"error: {why}", flush=True)
            study.tell(trial, state=TrialState.FAIL)
            return
        for key, value in (("run_id", run_id), ("host", self.opts.host), ("pid", os.getpid()),
                           ("heartbeat_s", self.opts.heartbeat_s)):
            trial.set_user_attr(key, value)
        storage.record_heartbeat(study, trial)
        process = TrialProcess(self.sweep, self.opts, study, trial, run_id)
        try:
            params = sweep_study.trial_params(trial, self.sweep, self.versions)
        except Exception as e:  # noqa: BLE001 - a bad draw is a failed trial, not a dead worker
            return self._finish(study, process, TrialState.FAIL, None, f"parameters: {e}")
        trial.set_user_attr("config", params)
        if self.planner is not None:
            params = {**params, **self.planner.limits(trial, self._left())}
        if gpu is not None:
            trial.set_user_attr("gpu", gpu)
        state, value, error, mark = process.run(params, gpu, self.stop, self.children)
        if state is None or (self.stop.is_set() and state == TrialState.FAIL):
            # preempted, interrupted or killed once: not failed, requeued under the same run id, which resumes it
            why = error if state is None and error else "interrupted"
            trial.set_user_attr("error", f"{why}; requeued")
            if state is None and error:
                print(f"trial {trial.number} ({run_id}): {why}: requeued, it resumes from its checkpoint", flush=True)
            with recovery.study_lock(self.opts):
                recovery.requeue(study, trial._trial_id, why, **({mark: True} if mark else {}))
            return
        self._finish(study, process, state, value, error)

    def _left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def rest(self) -> Options:
        """What this invocation has left for another pass: trials (--count) and time (--time_budget)."""
        count = None if self.opts.count is None else self.opts.count - self.started
        left = None if self.deadline is None else max(0.001, self.deadline - time.monotonic())
        # the failed trials were retried when this invocation opened the study: not once per pass
        return replace(self.opts, count=count, time_budget_s=left, started=time.monotonic(), retry_failed=False)

    def _new_run_id(self, number: int) -> str:
        """``<sweep>-<trial number>``, in a folder of its own: never one that exists (a run of a deleted or
        another study, finished or not, whose checkpoint would be resumed as this trial's). The folder is
        made here, so two runners can never take one id."""
        runs = self.opts.sweep_dir / SWEEP_RUNS
        runs.mkdir(parents=True, exist_ok=True)
        base = run_id = f"{slug(self.sweep.name)}-{number:03d}"
        n = 1
        while True:
            try:
                (runs / run_id).mkdir()
                return run_id
            except FileExistsError:
                n += 1
                run_id = f"{base}-{n}"

    def _finish(self, study, process: TrialProcess, state, value, error) -> None:
        trial = process.trial
        if error:
            trial.set_user_attr("error", error[-500:])
        process.keep_record()
        if state == TrialState.COMPLETE and value is None:
            state, error = TrialState.FAIL, f"metric {self.sweep.metric} missing from the run"
        process.write_trial_file(state, error)
        process.upload(self.store, state)
        if self.planner is not None:   # what the run measured re-prices the rest of the plan
            with self.lock:
                self.planner.after(study, trial, process.run_dir, time.time() - trial.datetime_start.timestamp())
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        with self.lock:
            self.failures_in_a_row = self.failures_in_a_row + 1 if state == TrialState.FAIL else 0
            if self.failures_in_a_row >= self.opts.max_failures and not self.stop.is_set():
                self.stop_reason = (f"stopped: {self.failures_in_a_row} trials failed in a row "
                                    f"(last: {(error or '').splitlines()[-1][:200] if error else '?'})")
                self.stop.set()
            self.bar.update(1)
            trials = sweep_study.counted(study)
            progress = self._postfix(study, trials)
            self.bar.set_postfix_str(progress)
            if self.bar.disable:  # not a terminal (a log file): one plain line per finished trial
                print(f"{self._trial_line(trial, state, value, trials)} | {progress}", flush=True)

    def _trial_line(self, trial, state: TrialState, value: float | None, trials: list) -> str:
        """``trial 3 complete best_val_acc=0.8889 [model=resnet18 strategy=freeze lr=0.01]``: the trial by
        the keys that tell the study's trials apart, as in the status table."""
        shown = f"{value:.4f}" if value is not None else "-"
        configs = {t.number: trial_config(t) for t in trials}
        config, keys = configs.get(trial.number, {}), varying_keys(list(configs.values()))
        strategy = str(config.get("strategy"))   # only the keys its strategy reads (a freeze has no backbone LR)
        recipe = " ".join(f"{k}={cell(config.get(k))}" for k in keys if k in config and strategy_uses(strategy, k))
        return (f"trial {trial.number} {state.name.lower()} {self.sweep.metric}={shown}"
                + (f" [{recipe}]" if recipe else ""))

    def _postfix(self, study: optuna.Study, trials: list) -> str:
        """``4 of 12 finished (complete 3, failed 1, pruned 0), running 1, best 0.9000, 1m35s``; the time
        counts from the command's start, across the confirm pass."""
        n = {s: sum(t.state == s for t in trials) for s in TrialState}
        finished = n[TrialState.COMPLETE] + n[TrialState.FAIL] + n[TrialState.PRUNED]
        total = f" of {self.bar.total}" if self.bar.total else ""
        later = " + confirm runs" if self.confirm_waiting else ""
        best = ""
        with contextlib.suppress(ValueError):
            best = f", best {study.best_value:.4f}"
        return (f"{finished}{total}{later} finished (complete {n[TrialState.COMPLETE]}, failed {n[TrialState.FAIL]}, "
                f"pruned {n[TrialState.PRUNED]}), running {n[TrialState.RUNNING]}{best}, "
                f"{budget.format_duration(time.time() - self.t0)}")

    # -- all workers -------------------------------------------------------------
    def run(self) -> int:
        """Ctrl-C and SIGTERM alike: the trials get SIGTERM, save their checkpoints and are requeued
        (their runs resume under the same ids); the runner exits ExitCode.INTERRUPTED once they have. The main thread
        waits on each worker's done event, never in a join a signal could cut short."""
        with Signals() as signals:
            gpus = self.opts.gpus or [None] * self.opts.workers
            done = [threading.Event() for _ in gpus]
            threads = [threading.Thread(target=self.work, args=(gpu, d), daemon=True,
                                        name=f"worker-{i}" + (f"-gpu{gpu}" if gpu else ""))
                       for i, (gpu, d) in enumerate(zip(gpus, done, strict=True))]
            if self.planner is not None:
                self._start_plan()
            elif self.deadline is not None:
                with self.lock:
                    estimate, source = self._trial_estimate(sweep_study.counted(optuna.load_study(
                        study_name=self.sweep.name, storage=_storage(self.opts))))
                print(budget.budget_line(self.opts.time_budget_s, estimate, source,
                                         "running trials get SIGTERM, checkpoint and are requeued"), flush=True)
            for i, t in enumerate(threads):
                if signals.count:
                    break
                t.start()
                if i + 1 < len(threads):
                    time.sleep(0.2)  # let the first ask() land before the next worker asks
            started = [d for d, t in zip(done, threads, strict=True) if t.ident is not None]
            while not signals.count and not all(d.is_set() for d in started):
                next(d for d in started if not d.is_set()).wait(0.5)
                self._check_deadline()
            if signals.count:
                return self._interrupted(started, signals)
        self.bar.close()
        if self.planner is not None:
            self.planner.end(optuna.load_study(study_name=self.sweep.name, storage=_storage(self.opts)))
        if self.stop_reason:
            print(self.stop_reason)
            return ExitCode.FAILED
        if self.budget:
            spent = self.budget.split(":")[0]
            if self.planner is not None and self.planner.state.get("done"):
                print(f"{spent} spent as its plan ended: nothing is left to run")
                return self._outcome()
            print(f"{spent} spent: run the same command again to continue the sweep")
            return ExitCode.BUDGET_SPENT
        return self._outcome()

    def _outcome(self) -> int:
        """OK, or FAILED when the study has failed trials and not one complete: a sweep that produced nothing
        must not pass for a successful one (in a script, a CI job, a notebook cell)."""
        trials = sweep_study.counted(optuna.load_study(study_name=self.sweep.name, storage=_storage(self.opts)))
        n = {s: sum(t.state == s for t in trials) for s in TrialState}
        if n[TrialState.COMPLETE] or not n[TrialState.FAIL]:
            return ExitCode.OK
        pruned = f", {n[TrialState.PRUNED]} pruned" if n[TrialState.PRUNED] else ""
        print(f"failed: no trial of the study completed ({n[TrialState.FAIL]} failed{pruned}): the errors and "
              f"the command that retries them are below", flush=True)
        return ExitCode.FAILED

    def _start_plan(self) -> None:
        """The plan, made (or taken up) before the first trial, and said."""
        study = optuna.load_study(study_name=self.sweep.name, storage=_storage(self.opts))
        for line in self.planner.start(study, self.opts.time_budget_s, self._left()):
            print(line, flush=True)

    def _check_deadline(self) -> None:
        """At the deadline the workers stop their trials (SIGTERM: they checkpoint, and are requeued under
        their run ids) and start no more."""
        if self.deadline is None or time.monotonic() < self.deadline or self.stop.is_set():
            return
        with self.lock:
            self.budget = "time budget"
        print("time budget spent: running trials get SIGTERM, checkpoint and are requeued", flush=True)
        self.stop.set()

    def _interrupted(self, done: list[threading.Event], signals: Signals) -> int:
        """Every trial stopped (SIGTERM: it checkpoints) and requeued before the runner exits; a second
        Ctrl-C or SIGTERM must not leave the trials orphaned: it is answered, and the wait goes on."""
        self.stop.set()
        self.children.terminate()
        seen = signals.count
        while not all(d.is_set() for d in done):
            next(d for d in done if not d.is_set()).wait(0.5)
            if signals.count > seen:
                seen = signals.count
                print("stopping: waiting for the trials to save their checkpoints", flush=True)
        self.bar.close()
        print("interrupted: run the same command again to continue the sweep")
        return ExitCode.INTERRUPTED


def run_local(sweep_file: str, opts: Options, fixed: dict[str, str] | None = None) -> int:
    """``finetune_sweep.py local``: the sweep offline, then its status table."""
    # confirm: K seeds for the top N
    sweep = sweep_spec.load(sweep_file, fixed, 1 if opts.confirm_top else opts.repeats)
    confirm.check_confirm(sweep, opts)
    sweep_spec.check_here(sweep)   # data_dir, weights: before anything is started or written
    runner = Runner(sweep, opts)
    code = runner.run()
    if code == ExitCode.OK and runner.confirm_waiting and runner.rest().count != 0:   # the grid ended: its top next
        code = Runner(sweep, runner.rest(), started=runner.t0).run()
    print(status_table(opts.sweep_dir, opts.storage))
    return code
