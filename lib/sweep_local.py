"""Offline sweeps: the same W&B sweep YAML, with no W&B server, on one machine or many.

Optuna does the search and the coordination: grid points are enqueued once; random ->
RandomSampler, bayes -> TPE, hyperband -> HyperbandPruner fed with the per-epoch metric. The study
lives in a journal file in the sweep dir, or in an RDB (``--storage postgresql://...``) that workers
on several machines share. Each trial runs the sweep's ``command`` in a fresh subprocess, exactly as
``wandb agent`` would start it (parameters file, ``WANDB_SWEEP_ID``, ``WANDB_RUN_ID``), with W&B
offline; its record lands in ``DIR/runs/<run_id>/``.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tqdm import tqdm

from lib import sweep_spec
from lib.records import RunRecord, read_json, write_json
from lib.sweep_spec import Sweep, SweepError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Options:
    sweep_dir: Path
    workers: int = 1
    count: int | None = None          # trials this invocation may start (all workers together)
    storage: str | None = None        # RDB URL; default: a journal file in sweep_dir
    seed: int | None = None           # seeds the sampler: a random/bayes study can be repeated
    max_failures: int = 3             # consecutive failed trials that stop the sweep
    poll_s: float = 0.5


def storage(opts: Options):
    if opts.storage:
        return opts.storage
    return JournalStorage(JournalFileBackend(str(opts.sweep_dir / "optuna.journal")))


def _sampler(sweep: Sweep, seed: int | None) -> optuna.samplers.BaseSampler:
    if sweep.method == "bayes":
        return optuna.samplers.TPESampler(multivariate=True, seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # grid points are enqueued, never sampled


def _pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    hb = sweep.hyperband
    if not hb:
        return optuna.pruners.NopPruner()
    return optuna.pruners.HyperbandPruner(min_resource=hb["min_iter"], max_resource=hb["max_iter"],
                                          reduction_factor=hb["eta"])


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_study(sweep: Sweep, opts: Options) -> optuna.Study:
    """Create or join the study; enqueue the grid once; requeue trials of dead workers."""
    opts.sweep_dir.mkdir(parents=True, exist_ok=True)
    with _locked(opts.sweep_dir / ".lock"):
        study = optuna.create_study(
            study_name=sweep.name, storage=storage(opts), load_if_exists=True, sampler=_sampler(sweep, opts.seed),
            pruner=_pruner(sweep), direction="maximize" if sweep.goal == "maximize" else "minimize")
        if sweep.method == "grid" and "grid_size" not in study.user_attrs:
            for point in sweep.grid():
                study.enqueue_trial(point, user_attrs={"queued": True}, skip_if_exists=False)
            study.set_user_attr("grid_size", len(sweep.grid()))
        _requeue_dead(study)
        meta = {"name": sweep.name, "sweep_file": str(sweep.path), "storage": opts.storage,
                "metric": sweep.metric, "goal": sweep.goal, "method": sweep.method}
        write_json(opts.sweep_dir / "sweep.json", meta)
        (opts.sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(sweep.raw, sort_keys=False))
    return study


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _requeue_dead(study: optuna.Study) -> None:
    """A RUNNING trial whose runner process is gone (SIGKILL, reboot) is marked failed and its point
    enqueued again with the same run id, so nothing is lost and nothing runs twice."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
        if host == socket.gethostname() and pid and not _alive(pid):
            _requeue(study, t.number, t._trial_id, t.params, t.user_attrs.get("run_id"), "runner died")


def _requeue(study: optuna.Study, number: int, trial_id: int, params: dict, run_id: str | None, why: str) -> None:
    optuna.trial.Trial(study, trial_id).set_user_attr("error", f"{why}; requeued")
    optuna.trial.Trial(study, trial_id).set_user_attr("requeued", True)
    study.tell(number, state=TrialState.FAIL)
    study.enqueue_trial(params, user_attrs={"run_id": run_id, "retry_of": number, "queued": True})


def suggest(trial: optuna.Trial, sweep: Sweep) -> dict[str, Any]:
    """Parameters of one trial (flat config keys), drawn with W&B's own distributions."""
    from sweeps.params import HyperParameter as HP

    values = {}
    for p in sweep.params:
        if p.type == HP.CONSTANT:
            value = p.config["value"]
        elif p.type == HP.CATEGORICAL or (p.type == HP.CATEGORICAL_PROB and sweep.method == "grid"):
            value = trial.suggest_categorical(p.name, p.config["values"])
        else:  # a quantile for the engine, W&B's inverse CDF for the value
            value = sweep_spec.value_of(p, trial.suggest_float(p.name, 0.0, 1.0))
        values[sweep_spec.leaf_name(p.name)] = value
    return {**values, **sweep.fixed}


class Runner:
    """Workers (threads) that each take a trial, run it in a subprocess, and report it."""

    def __init__(self, sweep: Sweep, opts: Options):
        self.sweep, self.opts = sweep, opts
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.started = 0
        self.failures_in_a_row = 0
        self.stop_reason: str | None = None
        self.children: set[subprocess.Popen] = set()
        study = open_study(sweep, opts)
        total = study.user_attrs.get("grid_size") or opts.count or sweep.run_cap
        self.bar = tqdm(total=total, desc=f"sweep {sweep.name}", unit="trial", disable=None)
        self.bar.update(sum(1 for t in _counted(study) if t.state.is_finished()))
        self.t0 = time.time()

    # -- the loop of one worker ------------------------------------------------
    def work(self) -> None:
        try:
            self._work()
        except Exception as e:  # noqa: BLE001 - a broken worker stops the sweep with its reason
            with self.lock:
                self.stop_reason = f"stopped: worker error: {type(e).__name__}: {e}"
            self.stop.set()

    def _work(self) -> None:
        study = optuna.load_study(study_name=self.sweep.name, storage=storage(self.opts),
                                  sampler=_sampler(self.sweep, self.opts.seed), pruner=_pruner(self.sweep))
        while not self.stop.is_set() and self._may_start(study):
            trial = study.ask()
            if self.sweep.method == "grid" and not trial.user_attrs.get("queued"):
                trial.set_user_attr("surplus", True)   # another worker took the last grid point
                study.tell(trial, state=TrialState.FAIL)
                return
            self._run(study, trial)

    def _may_start(self, study: optuna.Study) -> bool:
        with self.lock:
            if self.opts.count is not None and self.started >= self.opts.count:
                return False
            trials = _counted(study)
            if self.sweep.method == "grid" and not any(t.state == TrialState.WAITING for t in trials):
                return False
            started = [t for t in trials if t.state != TrialState.WAITING]
            if self.sweep.run_cap and len(started) >= self.sweep.run_cap:
                return False
            self.started += 1
            return True

    def _run(self, study: optuna.Study, trial: optuna.Trial) -> None:
        run_id = trial.user_attrs.get("run_id") or f"{_slug(self.sweep.name)}-{trial.number:03d}"
        for key, value in (("run_id", run_id), ("host", socket.gethostname()), ("pid", os.getpid())):
            trial.set_user_attr(key, value)
        try:
            params = suggest(trial, self.sweep)
        except Exception as e:  # noqa: BLE001 - a bad draw is a failed trial, not a dead worker
            return self._finish(study, trial, TrialState.FAIL, None, f"parameters: {e}")
        trial.set_user_attr("config", params)
        state, value, error = self._execute(trial, run_id, params)
        if state is None or (self.stop.is_set() and state != TrialState.COMPLETE):
            # preempted or interrupted, not failed: requeued under the same run id, which resumes it
            return _requeue(study, trial.number, trial._trial_id, trial.params, run_id, "interrupted")
        self._finish(study, trial, state, value, error)

    def _execute(self, trial: optuna.Trial, run_id: str, params: dict) -> tuple[TrialState, float | None, str | None]:
        run_dir = self.opts.sweep_dir / "runs" / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        param_file = run_dir / "sweep-params.yaml"
        owned = {"runs_dir": str(self.opts.sweep_dir / "runs"), "group": self.sweep.name, "run_id": run_id}
        wandb_params = {"wandb_version": 1, **{k: {"value": v} for k, v in {**params, **owned}.items()}}
        param_file.write_text(yaml.safe_dump(wandb_params, sort_keys=False))
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SWEEP_ID": self.sweep.name, "WANDB_RUN_ID": run_id,
               "WANDB_SWEEP_PARAM_PATH": str(param_file), "WANDB_DIR": str(run_dir),
               "WANDB_ERROR_REPORTING": "false", "WANDB_SILENT": "true"}
        # Parallel trials share the cores: give each its share instead of oversubscribing them all.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.opts.workers)))
        argv = sweep_spec.build_command(self.sweep, params, run_dir, env, PROJECT_ROOT)
        with open(run_dir / "output.log", "ab") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())
            with self.lock:
                self.children.add(proc)
            pruned = self._watch(proc, trial, run_dir)
            with self.lock:
                self.children.discard(proc)
        return self._outcome(proc.returncode, run_dir, pruned)

    def _watch(self, proc: subprocess.Popen, trial: optuna.Trial, run_dir: Path) -> bool:
        """Wait for the run; feed hyperband each epoch's metric and stop the run when it is pruned."""
        reported = 0
        while proc.poll() is None:
            time.sleep(self.opts.poll_s)
            if self.stop.is_set():
                proc.terminate()
            if not self.sweep.hyperband:
                continue
            rows = _rows(run_dir)
            for row in rows[reported:]:
                value = row.get(self.sweep.metric)
                if value is not None and math.isfinite(value):
                    trial.report(float(value), step=int(row["epoch"]))
            reported = len(rows)
            if reported and trial.should_prune():
                proc.terminate()
                proc.wait()
                return True
        return False

    def _outcome(self, code: int, run_dir: Path, pruned: bool) -> tuple[TrialState | None, float | None, str | None]:
        """(state, metric value, error); state None: the run was preempted and can resume."""
        record = read_json(run_dir / "run.json") if (run_dir / "run.json").exists() else {}
        if record.get("state") == "preempted":
            return None, None, None
        if pruned:
            RunRecord(str(run_dir.parent), run_dir.name).update(state="pruned")
            return TrialState.PRUNED, None, None
        if code == 0 and record.get("state") == "finished":
            return TrialState.COMPLETE, metric_value(record, _rows(run_dir), self.sweep.metric, self.sweep.goal), None
        error = record.get("error") or _tail(run_dir / "output.log") or f"exit code {code}"
        return TrialState.FAIL, None, f"exit code {code}: {error}"

    def _finish(self, study, trial, state, value, error) -> None:
        if error:
            trial.set_user_attr("error", error[-500:])
        if state == TrialState.COMPLETE and value is None:
            state, error = TrialState.FAIL, f"metric {self.sweep.metric} missing from the run"
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        with self.lock:
            self.failures_in_a_row = self.failures_in_a_row + 1 if state == TrialState.FAIL else 0
            if self.failures_in_a_row >= self.opts.max_failures and not self.stop.is_set():
                self.stop_reason = (f"stopped: {self.failures_in_a_row} trials failed in a row "
                                    f"(last: {(error or '').splitlines()[-1][:200] if error else '?'})")
                self.stop.set()
            self.bar.update(1)
            progress = self._postfix(study)
            self.bar.set_postfix_str(progress)
            if self.bar.disable:  # not a terminal: one plain line per finished trial
                shown = f"{value:.4f}" if value is not None else "-"
                print(f"trial {trial.number} {state.name.lower()} {self.sweep.metric}={shown} | {progress}",
                      flush=True)

    def _postfix(self, study: optuna.Study) -> str:
        trials = _counted(study)
        n = {s: sum(t.state == s for t in trials) for s in TrialState}
        best = ""
        with contextlib.suppress(ValueError):
            best = f" best {study.best_value:.4f}"
        return (f"done {n[TrialState.COMPLETE]} running {n[TrialState.RUNNING]} failed {n[TrialState.FAIL]} "
                f"pruned {n[TrialState.PRUNED]}{best} {time.time() - self.t0:.0f}s")

    # -- all workers -------------------------------------------------------------
    def run(self) -> int:
        threads = [threading.Thread(target=self.work, name=f"worker-{i}", daemon=True) for i in range(self.opts.workers)]
        for i, t in enumerate(threads):
            t.start()
            if i + 1 < len(threads):
                time.sleep(0.2)  # let the first ask() land before the next worker asks
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.5)
        except KeyboardInterrupt:
            self.stop.set()
            with self.lock:
                for proc in self.children:
                    proc.terminate()
            for t in threads:
                t.join()
            self.bar.close()
            print("interrupted: run the same command again to continue the sweep")
            return 130
        self.bar.close()
        if self.stop_reason:
            print(self.stop_reason)
            return 1
        return 0


def _counted(study: optuna.Study) -> list:
    """Trials that stand for work: not a worker's surplus ask, not a copy that was requeued."""
    return [t for t in study.get_trials(deepcopy=False)
            if not t.user_attrs.get("surplus") and not t.user_attrs.get("requeued")]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40]


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def _tail(path: Path, lines: int = 3) -> str:
    if not path.exists():
        return ""
    text = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    return " | ".join(text[-lines:])


def metric_value(record: dict, rows: list[dict], metric: str, goal: str) -> float | None:
    """The run's value of the sweep metric: its summary value, else the best epoch's."""
    summary = record.get("summary") or {}
    if summary.get(metric) is not None:
        return float(summary[metric])
    values = [r[metric] for r in rows if r.get(metric) is not None]
    if not values:
        return None
    return float(max(values) if goal == "maximize" else min(values))


def run_local(sweep_file: str, opts: Options, fixed: dict[str, str] | None = None) -> int:
    sweep = sweep_spec.load(sweep_file, fixed)
    runner = Runner(sweep, opts)
    code = runner.run()
    print(status_table(opts.sweep_dir))
    return code


def trials_frame(sweep_dir: Path):
    """One row per trial: number, state, run id, parameters, metric, duration, error."""
    import pandas as pd

    meta_path = Path(sweep_dir) / "sweep.json"
    if not meta_path.exists():
        raise SweepError(f"{sweep_dir} is not a sweep dir (no sweep.json): run `finetune_sweep.py local` first")
    meta = read_json(meta_path)
    opts = Options(sweep_dir=Path(sweep_dir), storage=meta.get("storage"))
    study = optuna.load_study(study_name=meta["name"], storage=storage(opts))
    rows = []
    for t in _counted(study):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        rows.append({"trial": t.number, "state": t.state.name.lower(), "run_id": t.user_attrs.get("run_id"),
                     **(t.user_attrs.get("config") or {}), meta["metric"]: t.value,
                     "duration_s": round(duration, 1) if duration else None, "error": t.user_attrs.get("error")})
    return pd.DataFrame(rows), meta


def status_table(sweep_dir: Path) -> str:
    df, meta = trials_frame(sweep_dir)
    if df.empty:
        return "no trials yet"
    varying = [c for c in df.columns if c not in ("trial", "state", "run_id", meta["metric"], "duration_s", "error")
               and df[c].astype(str).nunique() > 1]
    shown = df[["trial", "state", "run_id", *varying, meta["metric"], "duration_s"]]
    counts = df["state"].value_counts().to_dict()
    lines = [shown.to_string(index=False), "",
             "trials: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    done = df[df["state"] == "complete"].dropna(subset=[meta["metric"]])
    if not done.empty:
        best = done.loc[done[meta["metric"]].idxmax() if meta["goal"] == "maximize" else done[meta["metric"]].idxmin()]
        lines.append(f"best: trial {best['trial']} ({best['run_id']}) {meta['metric']} = {best[meta['metric']]:.4f}"
                     + (f"  [{', '.join(f'{c}={best[c]}' for c in varying)}]" if varying else ""))
    failed = df[df["state"] == "fail"].dropna(subset=["error"])
    for _, row in failed.tail(3).iterrows():
        lines.append(f"failed: trial {row['trial']} ({row['run_id']}): {str(row['error'])[:200]}")
    return "\n".join(lines)
