"""Offline sweeps: the same W&B sweep YAML, with no W&B server, on one machine or many.

Optuna does the search and the coordination: grid points are enqueued once; random ->
RandomSampler, bayes -> TPE, hyperband -> HyperbandPruner fed with the per-epoch metric. The study
lives in a journal file in the sweep dir, or in an RDB (``--storage postgresql://...``) that workers
on several machines share. Each trial runs the sweep's ``command`` in a fresh subprocess, exactly as
``wandb agent`` would start it (parameters file, ``WANDB_SWEEP_ID``, ``WANDB_RUN_ID``), with W&B
offline; its record lands in ``DIR/runs/<run_id>/``.

A study folder holds one sweep: the sweep as first run (kept in the study and in ``DIR/sweep.yaml``) is
what it runs; an edited file is refused with what changed, unless ``--extend`` adopts it. Every running
trial's runner beats a heartbeat into the study; a trial whose runner stopped beating (killed, on any
machine) or whose runner pid is gone (on this machine) is requeued under the same run id.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat  # the interface fail_stale_trials works with
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tqdm import tqdm

from lib import config as config_lib
from lib.errors import SweepError
from lib.files import locked, read_json, read_jsonl, tail, write_json
from lib.records import RunRecord, metric_value
from lib.runs import TRIAL_FILE
from lib.sweep import artifacts, cloud
from lib.sweep import spec as sweep_spec
from lib.sweep.spec import Sweep

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXIT_PREEMPTED, EXIT_PRUNED = 3, 4          # finetune_resnet.py's exit codes
STOP_FILE = "STOP"                          # <run_dir>/STOP = "pruned": why the runner stops a trial
STUDY_LOCK_KEY = 0x5EE9_5EE9                # PostgreSQL advisory lock: one runner at a time opens the study
HEARTBEAT = "heartbeat"                     # journal trials: wall time of the runner's last beat
CHILD_STOP_S = 60                           # a dead runner's trainer gets this long to checkpoint
optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats are "experimental" in Optuna and "meant for optimize()": we use them with ask/tell on purpose.
warnings.filterwarnings("ignore", category=ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


@dataclass
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

    def __post_init__(self):
        if self.gpus:   # one worker per GPU
            self.workers = len(self.gpus)

    @property
    def grace(self) -> float:
        return self.grace_s if self.grace_s is not None else 4 * self.heartbeat_s


# --- storage: journal or RDB, both with heartbeats -----------------------------------------------
class _HeartbeatJournal(JournalStorage, BaseHeartbeat):
    """Optuna 5 keeps heartbeats for RDB storages only; a journal gets the same: each beat is a system
    attribute of the trial (the beating host's wall time), stale after ``grace`` seconds without one.
    Hosts sharing a journal should keep their clocks within a fraction of the grace period (NTP)."""

    def __init__(self, backend, interval: float, grace: float, callback):
        super().__init__(backend)
        self._interval, self._grace, self._callback = interval, grace, callback

    def record_heartbeat(self, trial_id: int) -> None:
        with contextlib.suppress(UpdateFinishedTrialError):
            self.set_trial_system_attr(trial_id, HEARTBEAT, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if now - t.system_attrs.get(HEARTBEAT, now) > self._grace]

    def get_heartbeat_interval(self) -> float:
        return self._interval

    def get_heartbeat_stale_trial_callback(self):
        return self._callback


def storage(opts: Options):
    callback = functools.partial(_requeue_stale, host=opts.host)
    if opts.storage:
        return _open_rdb(opts.storage, heartbeat_interval=max(1, math.ceil(opts.heartbeat_s)),
                         grace_period=max(1, math.ceil(opts.grace)), heartbeat_stale_trial_callback=callback)
    return _HeartbeatJournal(JournalFileBackend(str(opts.sweep_dir / "optuna.journal")), opts.heartbeat_s,
                             opts.grace, callback)


def _open_rdb(url: str, **heartbeat) -> optuna.storages.RDBStorage:
    """The database's own clock judges heartbeats: hosts' clocks need not agree. Runners starting at once
    on a fresh database race to create Optuna's tables: the losers retry (the tables are there then)."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, **heartbeat)
        except (IntegrityError, ProgrammingError):
            if attempt == 4:
                raise
            time.sleep(0.2 + 0.3 * attempt)


@contextlib.contextmanager
def _shared_lock(opts: Options):
    """The study's storage, held under a lock that every runner sharing it sees: the sweep dir's lock file
    serializes one machine's runners only, and runners on other machines share nothing but the database.
    PostgreSQL: an advisory lock (MySQL: GET_LOCK), released with its connection."""
    st = storage(opts)
    engine = getattr(st, "engine", None)
    dialect = engine.dialect.name if engine is not None else None
    if dialect not in ("postgresql", "mysql"):
        yield st
        return
    from sqlalchemy import text

    with engine.connect() as con:
        if dialect == "postgresql":
            con.execute(text("SELECT pg_advisory_lock(:key)"), {"key": STUDY_LOCK_KEY})
        else:
            con.execute(text("SELECT GET_LOCK('finetune_sweep', -1)"))
        try:
            yield st
        finally:
            con.execute(text("SELECT pg_advisory_unlock(:key)" if dialect == "postgresql"
                             else "SELECT RELEASE_LOCK('finetune_sweep')"), {"key": STUDY_LOCK_KEY})


def public_url(url: str | None, hide: bool = False) -> str | None:
    """A storage URL fit to write down: without its password (libpq finds it in PGPASSWORD or
    ~/.pgpass), or with ``***`` in its place for display."""
    if not url or "://" not in url:
        return url
    from sqlalchemy.engine import URL, make_url

    try:
        u = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: keep nothing that could be a secret
        return url.split("://")[0] + "://***"
    if u.password is None:
        return url
    if hide:
        return u.render_as_string(hide_password=True)
    return URL.create(u.drivername, u.username, None, u.host, u.port, u.database, u.query) \
        .render_as_string(hide_password=False)


# --- sampling: a seeded study repeats itself, and never repeats a draw ---------------------------------
def _draw_seed(seed: int, number: int, name: str) -> int:
    return int(np.random.SeedSequence([seed % 2**32, number, zlib.crc32(name.encode())]).generate_state(1)[0])


class _TrialSeeded:
    """Mixin for Optuna samplers: each trial draws from an RNG of its own, seeded by (seed, trial
    number, parameter), not from one RNG per sampler object. A seeded study then repeats itself however
    its trials are spread over worker threads and runner processes, and no two trials share a draw."""

    def __init__(self, *args, seed: int, **kwargs):
        super().__init__(*args, seed=seed, **kwargs)
        self._study_seed = seed
        self._draw_lock = threading.Lock()   # one sampler serves every worker thread of the process

    def _drawing(self, trial, name: str, sample):
        rng = SimpleNamespace(rng=np.random.RandomState(_draw_seed(self._study_seed, trial.number, name)))
        owners = [s for s in (self, getattr(self, "_random_sampler", None)) if s is not None]  # TPE's startup
        with self._draw_lock:
            saved = [s._rng for s in owners]
            for s in owners:
                s._rng = rng
            try:
                return sample()
            finally:
                for s, r in zip(owners, saved):
                    s._rng = r

    def sample_relative(self, study, trial, search_space):
        parent = super().sample_relative
        return self._drawing(trial, "", lambda: parent(study, trial, search_space))

    def sample_independent(self, study, trial, param_name, param_distribution):
        parent = super().sample_independent
        return self._drawing(trial, param_name, lambda: parent(study, trial, param_name, param_distribution))


class _SeededRandom(_TrialSeeded, optuna.samplers.RandomSampler):
    pass


class _SeededTPE(_TrialSeeded, optuna.samplers.TPESampler):
    pass


def _sampler(sweep: Sweep, seed: int | None) -> optuna.samplers.BaseSampler:
    """One per runner process, shared by its workers. Grid points are enqueued, never sampled."""
    if sweep.method == "bayes":   # constant_liar: parallel trials do not all crowd the same best guess
        cls = _SeededTPE if seed is not None else optuna.samplers.TPESampler
        return cls(multivariate=True, constant_liar=True, seed=seed)
    return _SeededRandom(seed=seed) if seed is not None else optuna.samplers.RandomSampler()


def _pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    hb = sweep.hyperband
    if not hb:
        return optuna.pruners.NopPruner()
    return optuna.pruners.HyperbandPruner(min_resource=hb["min_iter"], max_resource=hb["max_iter"],
                                          reduction_factor=hb["eta"])


# --- the study folder: one sweep, as first run unless extended ------------------------------------------
def _plain(x: Any) -> Any:
    """JSON's view of a value, so a stored and a fresh definition compare equal."""
    return json.loads(json.dumps(x, default=str))


def _definition(sweep: Sweep) -> dict:
    return _plain({"yaml": sweep.raw, "set": sweep.fixed})


def open_study(sweep: Sweep, opts: Options) -> optuna.Study:
    """Create or join the study (refusing an edited or different sweep); enqueue the grid once; requeue
    trials of dead runners; with ``retry_failed``, the failed trials."""
    opts.sweep_dir.mkdir(parents=True, exist_ok=True)
    with locked(opts.sweep_dir / ".lock"), _shared_lock(opts) as shared:
        meta_path = opts.sweep_dir / "sweep.json"
        held = read_json(meta_path).get("name") if meta_path.exists() else None
        if held and held != sweep.name:
            raise SweepError(f"{opts.sweep_dir} holds the study {held!r}, not {sweep.name!r}: one study per "
                             f"folder, so give this one its own --sweep_dir")
        study = optuna.create_study(
            study_name=sweep.name, storage=shared, load_if_exists=True, sampler=_sampler(sweep, opts.seed),
            pruner=_pruner(sweep), direction="maximize" if sweep.goal == "maximize" else "minimize")
        stored = study.user_attrs.get("sweep") or _legacy_definition(opts.sweep_dir, sweep)
        new = _definition(sweep)
        changed = stored is not None and stored != new
        if changed:
            _check_extension(sweep, stored, opts)
        if changed or "sweep" not in study.user_attrs:
            study.set_user_attr("sweep", new)
            (opts.sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(sweep.raw, sort_keys=False))
        if sweep.method == "grid":
            _enqueue_grid(study, sweep, extending=changed)
            if opts.confirm_top:
                _enqueue_confirm(study, sweep, opts)
        elif changed:
            _new_search_space(study, sweep, stored)
        if opts.retry_failed:
            _retry_failed(study)
        _reap(study, opts.host)
        meta = {"name": sweep.name, "sweep_file": str(sweep.path), "storage": public_url(opts.storage),
                "metric": sweep.metric, "goal": sweep.goal, "method": sweep.method,
                "set": {k: str(v) for k, v in sweep.fixed.items()},
                "heartbeat_s": opts.heartbeat_s, "grace_s": opts.grace}
        write_json(meta_path, meta)
    return study


def _legacy_definition(sweep_dir: Path, sweep: Sweep) -> dict | None:
    """A study made before the sweep was kept in it: its sweep.yaml copy (the --set values unknown)."""
    path = sweep_dir / "sweep.yaml"
    if not path.exists():
        return None
    return _plain({"yaml": yaml.safe_load(path.read_text()), "set": sweep.fixed})


def _check_extension(sweep: Sweep, stored: dict, opts: Options) -> None:
    old = stored.get("yaml") or {}
    if not opts.extend:
        diff = _diff({**old, "--set": stored.get("set", {})}, {**sweep.raw, "--set": sweep.fixed})
        raise SweepError(
            f"{sweep.path} is not the sweep this folder runs ({opts.sweep_dir / 'sweep.yaml'}): pass --extend to "
            f"adopt it (grid: only its new points run), or give it another --sweep_dir. What changed:\n"
            + "\n".join(f"  {line}" for line in diff))
    old_metric = old.get("metric") or {}
    for what, before, now in (("method", old.get("method"), sweep.method),
                              ("metric", old_metric.get("name", "best_val_acc"), sweep.metric),
                              ("metric goal", old_metric.get("goal", "maximize"), sweep.goal)):
        if before != now:
            raise SweepError(f"--extend cannot change the {what} of a study ({before} -> {now}): "
                             f"give the new sweep its own --sweep_dir")


def _diff(old: Any, new: Any, prefix: str = "", limit: int = 8) -> list[str]:
    """What changed between two definitions, one line per changed leaf (dotted paths)."""
    def leaves(x, p):
        if isinstance(x, dict) and x:
            return {k: v for key, sub in x.items() for k, v in leaves(sub, f"{p}.{key}" if p else str(key)).items()}
        return {p: x}

    def shown(leaf, key):
        return json.dumps(leaf[key]) if key in leaf else "(absent)"

    a, b = leaves(_plain(old), prefix), leaves(_plain(new), prefix)
    lines = [f"{k}: {shown(a, k)} -> {shown(b, k)}" for k in sorted(set(a) | set(b))
             if shown(a, k) != shown(b, k)]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def _enqueue_grid(study: optuna.Study, sweep: Sweep, extending: bool) -> None:
    """Each grid point once. A point lives in the trial's user attributes, not as Optuna parameters,
    so an extended grid (a value added to a list) never clashes with the choices Optuna recorded."""
    if "grid_size" in study.user_attrs and not extending:
        return
    known = {json.dumps(_point(t), sort_keys=True) for t in _counted(study)}
    new = [p for p in sweep.grid() if json.dumps(_plain(p), sort_keys=True) not in known]
    for point in new:
        study.enqueue_trial({}, user_attrs={"queued": True, "point": _plain(point),
                                            "config": {**_flat(point), **sweep.fixed}})
    study.set_user_attr("grid_size", study.user_attrs.get("grid_size", 0) + len(new))
    if extending:
        print(f"extended: {len(new)} new grid point(s) enqueued; trials already run are kept")


def _new_search_space(study: optuna.Study, sweep: Sweep, stored: dict) -> None:
    """random/bayes --extend: new trials draw from the new space. A parameter whose definition changed
    gets a new name inside Optuna (``lr~1``), so the search starts afresh on it, not on old draws."""
    from sweeps.params import HyperParameterSet

    old = {p.name: p.config for p in HyperParameterSet.from_config((stored.get("yaml") or {}).get("parameters", {}))}
    versions = dict(study.user_attrs.get("versions", {}))
    for p in sweep.params:
        if p.name in old and _plain(old[p.name]) != _plain(p.config):
            versions[p.name] = versions.get(p.name, 0) + 1
    study.set_user_attr("versions", versions)
    print("extended: new trials draw from the edited search space; trials already run are kept")


def _flat(point: dict) -> dict:
    """W&B parameter names (nested groups) -> the config keys they set."""
    return {sweep_spec.leaf_name(k): v for k, v in point.items()}


def _point(t) -> dict:
    """A trial's point: the grid point it was given, else its Optuna parameters, else what was enqueued."""
    return t.user_attrs.get("point") or dict(t.params) or dict(t.system_attrs.get("fixed_params") or {})


# --- runners that died, trials that failed ------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_trainer(pid: int, run_id: str) -> bool:
    """``pid`` is still the trainer of ``run_id`` (pids are reused; a zombie is gone)."""
    if not Path("/proc/self/environ").exists():
        return _alive(pid)           # no /proc: trust the pid
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return _alive(pid)
    return f"WANDB_RUN_ID={run_id}".encode() in env.split(b"\0")


def _stop_child(attrs: dict, host: str) -> None:
    """A runner killed alone (SIGKILL) leaves its trainer running: stop it (SIGTERM: it checkpoints)
    before the trial runs again, so two trainers never write one run folder. Only on its own machine."""
    pid, run_id = attrs.get("child_pid"), attrs.get("run_id")
    if attrs.get("host") != host or not pid or not _is_trainer(pid, run_id):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + CHILD_STOP_S
        while _is_trainer(pid, run_id) and time.time() < deadline:
            time.sleep(0.1)
        if _is_trainer(pid, run_id):
            os.kill(pid, signal.SIGKILL)


def _fail_once(study: optuna.Study, trial_id: int) -> bool:
    """Mark a trial failed; False when another process or thread finished it first."""
    try:
        return study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False


def _resubmit(study: optuna.Study, t, why: str, **attrs) -> None:
    """Enqueue a finished trial's point again under its run id. The old trial is superseded: it no
    longer counts (``_counted``), so nothing is lost and nothing runs twice."""
    point = _point(t)
    user_attrs = {"run_id": t.user_attrs.get("run_id"), "retry_of": t.number, "requeued_because": why,
                  "queued": t.user_attrs.get("queued", False), **attrs}
    if "confirm" in t.user_attrs:   # a confirm trial keeps its seed (a --set seed must not win over it)
        user_attrs["confirm"] = t.user_attrs["confirm"]
    if "point" in t.user_attrs:
        user_attrs["point"] = point
    if t.user_attrs.get("config"):
        user_attrs["config"] = t.user_attrs["config"]
    study.enqueue_trial({} if "point" in t.user_attrs else point, user_attrs=user_attrs)


def _requeue_stale(study: optuna.Study, t, host: str) -> None:
    """Optuna's heartbeat callback: ``fail_stale_trials`` failed this trial (its runner stopped beating,
    on whatever machine); run it again."""
    _stop_child(t.user_attrs, host)
    _resubmit(study, t, "its runner stopped sending heartbeats")


def _reap(study: optuna.Study, host: str) -> None:
    """Requeue the RUNNING trials whose runner is gone: on this machine, as soon as its pid is dead; on
    any machine, once its heartbeat is stale."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and pid and not _alive(pid) and _fail_once(study, t._trial_id):
            _stop_child(t.user_attrs, host)
            _resubmit(study, t, "its runner died")
    optuna.storages.fail_stale_trials(study)


def _retry_failed(study: optuna.Study) -> None:
    failed = [t for t in _counted(study) if t.state == TrialState.FAIL]
    for t in failed:
        _resubmit(study, t, "--retry_failed", fresh=True)
    print(f"retrying {len(failed)} failed trial(s) under their run ids")


# --- confirm: the grid's best configurations again, with more seeds ------------------------------------------
def _check_confirm(sweep: Sweep, opts: Options) -> None:
    """``--confirm_top N --repeats K``: a grid that runs each configuration with one seed, then K seeds
    for its N best. Refused before anything starts when that cannot be what runs."""
    if not opts.confirm_top:
        return
    asked = f"--confirm_top {opts.confirm_top} --repeats {opts.repeats}"
    if opts.confirm_top < 1 or opts.repeats < 2:
        raise SweepError(f"{asked}: expected N >= 1 configurations and K >= 2 seeds for each "
                         "(e.g. --confirm_top 2 --repeats 3)")
    if sweep.method != "grid":
        raise SweepError(f"{asked} needs a grid sweep (a random or bayes study has no last trial to wait for)")
    if any(sweep_spec.leaf_name(p.name) == "seed" and "values" in p.config for p in sweep.params):
        raise SweepError(f"{asked} cannot be combined with a swept `seed` parameter")


def _grid_trials(study: optuna.Study) -> list:
    return [t for t in _counted(study) if "point" in t.user_attrs and "confirm" not in t.user_attrs]


def _grid_left(study: optuna.Study) -> int:
    return sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in _grid_trials(study))


def _enqueue_confirm(study: optuna.Study, sweep: Sweep, opts: Options) -> None:
    """Once the grid is done: its ``confirm_top`` best configurations by the sweep metric (their first
    run, so the choice never moves) again with seeds seed+1 .. seed+repeats-1, enqueued as points of the
    same study (status and report show them with the first run; a point already there is not added)."""
    left = _grid_left(study)
    if left:
        print(f"confirm: once the grid's {left} remaining trial(s) are done, its top {opts.confirm_top} "
              f"configuration(s) by {sweep.metric} run with {opts.repeats} seeds")
        return
    done = [t for t in _grid_trials(study) if t.state == TrialState.COMPLETE and t.value is not None]
    sign = -1 if sweep.goal == "maximize" else 1
    top = sorted(done, key=lambda t: (sign * t.value, t.number))[:opts.confirm_top]
    known = {json.dumps(_point(t), sort_keys=True) for t in _counted(study)}
    name = next((p.name for p in sweep.params if sweep_spec.leaf_name(p.name) == "seed"), "seed")
    added = 0
    for t in top:
        first = int(_flat(_point(t)).get("seed", sweep.fixed.get("seed", _default_seed())))
        for seed in range(first + 1, first + opts.repeats):
            point = _plain({**_point(t), name: seed})
            if json.dumps(point, sort_keys=True) in known:
                continue
            study.enqueue_trial({}, user_attrs={"queued": True, "point": point, "confirm": {"of": t.number, "seed": seed},
                                                "config": {**_flat(point), **sweep.fixed, "seed": seed}})
            added += 1
    study.set_user_attr("confirm_size", study.user_attrs.get("confirm_size", 0) + added)
    trials = ", ".join(str(t.number) for t in top) or "none finished"
    print(f"confirm: top {opts.confirm_top} configuration(s) by {sweep.metric} (trials {trials}) with "
          f"{opts.repeats} seeds: {added} trial(s) enqueued" + ("" if added else ", all already in the study"))


def _default_seed() -> int:
    from lib.config import Config

    return Config().seed


def _gone(t, stale: set[int], host: str) -> bool:
    """A RUNNING trial whose runner is dead (same machine) or silent past the grace period."""
    pid = t.user_attrs.get("pid")
    return t.state == TrialState.RUNNING and (
        t._trial_id in stale or (t.user_attrs.get("host") == host and bool(pid) and not _alive(pid)))


def suggest(trial: optuna.Trial, sweep: Sweep, versions: dict | None = None) -> dict[str, Any]:
    """Parameters of one trial (flat config keys): a grid point as enqueued, or drawn with W&B's own
    distributions."""
    from sweeps.params import HyperParameter as HP

    if trial.user_attrs.get("point") is not None:
        confirm = trial.user_attrs.get("confirm") or {}
        return {**_flat(trial.user_attrs["point"]), **sweep.fixed, **({"seed": confirm["seed"]} if confirm else {})}
    values = {}
    for p in sweep.params:
        name = f"{p.name}~{versions[p.name]}" if versions and versions.get(p.name) else p.name
        if p.type == HP.CONSTANT:
            value = p.config["value"]
        elif p.type == HP.CATEGORICAL or (p.type == HP.CATEGORICAL_PROB and sweep.method == "grid"):
            value = trial.suggest_categorical(name, p.config["values"])
        else:  # a quantile for the engine, W&B's inverse CDF for the value
            value = sweep_spec.value_of(p, trial.suggest_float(name, 0.0, 1.0))
        values[sweep_spec.leaf_name(p.name)] = value
    return {**values, **sweep.fixed}


class _Stopping(Exception):
    """SIGTERM reached the runner: stop like Ctrl-C."""


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
        # the budget counts from the command's start; "budget" says why the runner stopped early, if it did
        self.deadline = time.monotonic() + opts.time_budget_s if opts.time_budget_s else None
        self.budget: str | None = None
        self.sampler = _sampler(sweep, opts.seed)   # one per process: its draws are per trial, not per thread
        study = open_study(sweep, opts)
        self.store = artifacts.attach(study, opts.artifacts)
        self.versions = study.user_attrs.get("versions", {})
        total = study.user_attrs.get("grid_size", 0) + study.user_attrs.get("confirm_size", 0) \
            or opts.count or sweep.run_cap
        self.confirm_waiting = bool(opts.confirm_top) and _grid_left(study) > 0   # confirm after this pass
        self.bar = tqdm(total=total, desc=f"sweep {sweep.name}", unit="trial", disable=None)
        self.bar.update(sum(1 for t in _counted(study) if t.state.is_finished()))
        self.t0 = time.time()

    # -- the loop of one worker ------------------------------------------------
    def work(self, gpu: str | None = None) -> None:
        try:
            self._work(gpu)
        except Exception as e:  # noqa: BLE001 - a broken worker stops the sweep with its reason
            with self.lock:
                self.stop_reason = f"stopped: worker error: {type(e).__name__}: {e}"
            self.stop.set()

    def _work(self, gpu: str | None) -> None:
        study = optuna.load_study(study_name=self.sweep.name, storage=storage(self.opts), sampler=self.sampler,
                                  pruner=_pruner(self.sweep))
        while not self.stop.is_set():
            _reap(study, self.opts.host)
            step = self._next(study)
            if step == "done":
                return
            if step == "wait":   # another runner's trial may yet fail and come back
                self.stop.wait(min(5.0, max(self.opts.poll_s, self.opts.heartbeat_s / 2)))
                continue
            trial = study.ask()
            if self.sweep.method == "grid" and not trial.user_attrs.get("queued"):
                trial.set_user_attr("surplus", True)   # another worker took the last grid point
                study.tell(trial, state=TrialState.FAIL)
                continue
            self._run(study, trial, gpu)

    def _next(self, study: optuna.Study) -> str:
        """start (a trial), wait (for trials running elsewhere), or done."""
        with self.lock:
            if self.opts.count is not None and self.started >= self.opts.count:
                return "done"
            trials = _counted(study)
            if self.sweep.method == "grid":
                can_start = any(t.state == TrialState.WAITING for t in trials)
            else:
                started = sum(t.state != TrialState.WAITING for t in trials)
                can_start = not self.sweep.run_cap or started < self.sweep.run_cap
            if can_start and self._no_time_for_a_trial(trials):
                return "done"
            if can_start:
                self.started += 1
                return "start"
            mine = (self.opts.host, os.getpid())
            elsewhere = any(t.state == TrialState.RUNNING and "heartbeat_s" in t.user_attrs
                            and (t.user_attrs.get("host"), t.user_attrs.get("pid")) != mine for t in trials)
            return "wait" if elsewhere else "done"

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
        if self.deadline is None:
            return False
        left = self.deadline - time.monotonic()
        estimate, source = self._trial_estimate(trials)
        if left > (estimate or 0):
            return False
        if self.budget is None:
            self.budget = (f"time budget: {cloud.format_duration(left)} left, below one trial "
                           f"(~{cloud.format_duration(estimate or 0)}, {source or 'the deadline has passed'}): "
                           f"no new trial starts")
            print(self.budget, flush=True)
        return True

    def _run(self, study: optuna.Study, trial: optuna.Trial, gpu: str | None = None) -> None:
        run_id = trial.user_attrs.get("run_id") or self._new_run_id(trial.number)
        for key, value in (("run_id", run_id), ("host", self.opts.host), ("pid", os.getpid()),
                           ("heartbeat_s", self.opts.heartbeat_s)):
            trial.set_user_attr(key, value)
        study._storage.record_heartbeat(trial._trial_id)
        try:
            params = suggest(trial, self.sweep, self.versions)
        except Exception as e:  # noqa: BLE001 - a bad draw is a failed trial, not a dead worker
            return self._finish(study, trial, TrialState.FAIL, None, f"parameters: {e}")
        trial.set_user_attr("config", params)
        if gpu is not None:
            trial.set_user_attr("gpu", gpu)
        state, value, error = self._execute(study, trial, run_id, params, gpu)
        if state is None or (self.stop.is_set() and state == TrialState.FAIL):
            # preempted or interrupted, not failed: requeued under the same run id, which resumes it
            trial.set_user_attr("error", "interrupted; requeued")
            if _fail_once(study, trial._trial_id):
                _resubmit(study, study._storage.get_trial(trial._trial_id), "interrupted")
            return
        self._finish(study, trial, state, value, error)

    def rest(self) -> Options:
        """What this invocation has left for another pass: trials (--count) and time (--time_budget)."""
        count = None if self.opts.count is None else self.opts.count - self.started
        left = None if self.deadline is None else max(0.001, self.deadline - time.monotonic())
        return replace(self.opts, count=count, time_budget_s=left)

    def _new_run_id(self, number: int) -> str:
        """``<sweep>-<trial number>``; never the id of a finished run (a folder left by a deleted study)."""
        base = run_id = f"{_slug(self.sweep.name)}-{number:03d}"
        n = 1
        while _record(self.opts.sweep_dir / "runs" / run_id).get("state") == "finished":
            n += 1
            run_id = f"{base}-{n}"
        return run_id

    def _execute(self, study, trial: optuna.Trial, run_id: str, params: dict,
                 gpu: str | None = None) -> tuple[TrialState | None, float | None, str | None]:
        run_dir = self.opts.sweep_dir / "runs" / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / STOP_FILE).unlink(missing_ok=True)
        if trial.user_attrs.get("fresh"):   # --retry_failed: start over, not from the failed run's checkpoint
            (run_dir / "last.ckpt").unlink(missing_ok=True)
        elif "retry_of" in trial.user_attrs and _record(run_dir).get("state") == "finished":
            # the trainer of a dead runner finished the run on its own: take its result, do not rerun it
            return self._outcome(0, run_dir, False)
        param_file = run_dir / "sweep-params.yaml"
        owned = {"runs_dir": str(self.opts.sweep_dir / "runs"), "group": self.sweep.name, "run_id": run_id}
        sweep_spec.write_params_file(param_file, self.sweep, params, owned)   # nested groups as W&B writes them
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SWEEP_ID": self.sweep.name, "WANDB_RUN_ID": run_id,
               "WANDB_SWEEP_PARAM_PATH": str(param_file), "WANDB_DIR": str(run_dir),
               "WANDB_ERROR_REPORTING": "false", "WANDB_SILENT": "true"}
        # Parallel trials share the cores: give each its share instead of oversubscribing them all.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.opts.workers)))
        if gpu is not None:   # this worker's GPU only: the trainer's cuda:0 is it
            env["CUDA_VISIBLE_DEVICES"] = gpu
        argv = sweep_spec.build_command(self.sweep, params, run_dir, PROJECT_ROOT)
        with open(run_dir / "output.log", "ab") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())
            with self.lock:
                self.children.add(proc)
            try:
                trial.set_user_attr("child_pid", proc.pid)
                pruned = self._watch(study, proc, trial, run_dir)
            finally:
                with self.lock:
                    self.children.discard(proc)
        trial.set_user_attr("exit_code", proc.returncode)
        return self._outcome(proc.returncode, run_dir, pruned)

    def _watch(self, study, proc: subprocess.Popen, trial: optuna.Trial, run_dir: Path) -> bool:
        """Wait for the run, beating the trial's heartbeat; feed hyperband each epoch's metric and stop
        the run when it is pruned (STOP file, then SIGTERM: the trainer records ``pruned``)."""
        reported, pruned, signalled, beat = 0, False, False, time.monotonic()
        while proc.poll() is None:
            time.sleep(self.opts.poll_s)
            if time.monotonic() - beat >= self.opts.heartbeat_s:
                study._storage.record_heartbeat(trial._trial_id)
                beat = time.monotonic()
            if self.stop.is_set() and not signalled:
                proc.terminate()
                signalled = True
            if signalled or not self.sweep.hyperband:
                continue
            rows = read_jsonl(run_dir / "metrics.jsonl")
            for row in rows[reported:]:
                value = row.get(self.sweep.metric)
                if value is not None and math.isfinite(value):
                    trial.report(float(value), step=int(row["epoch"]))
            reported = len(rows)
            if reported and trial.should_prune():
                (run_dir / STOP_FILE).write_text("pruned\n")
                proc.terminate()
                pruned = signalled = True
        return pruned

    def _store_record(self, trial: optuna.Trial) -> None:
        """The run record's essentials and each epoch's metric go into the study, so that `status URL`
        works on any machine with the database, not only the one holding the run folder."""
        run_dir = self.opts.sweep_dir / "runs" / str(trial.user_attrs.get("run_id"))
        record = _record(run_dir)
        trial.set_user_attr("run", {k: record[k] for k in ("state", "summary", "error", "started", "finished")
                                    if record.get(k) is not None})
        if self.sweep.hyperband:   # its epochs were reported as they came
            return
        for row in read_jsonl(run_dir / "metrics.jsonl"):
            value = row.get(self.sweep.metric)
            if isinstance(value, (int, float)) and math.isfinite(value) and "epoch" in row:
                trial.report(float(value), step=int(row["epoch"]))

    def _upload(self, trial: optuna.Trial, state: TrialState) -> None:
        """The trial's files into the artifact store, for `report URL` and `export URL` on other machines.
        A failed upload is said and recorded, but does not fail a trial whose run finished."""
        if self.store is None:
            return
        run_dir = self.opts.sweep_dir / "runs" / str(trial.user_attrs.get("run_id"))
        try:
            artifacts.upload_run(self.store, trial, run_dir, finished=state == TrialState.COMPLETE)
        except Exception as e:  # noqa: BLE001 - a full disk or a lost bucket must not cost the trial
            why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            trial.set_user_attr("artifacts_error", why)
            print(f"warning: trial {trial.number}: its files did not reach the artifact store: {why}", flush=True)

    def _outcome(self, code: int, run_dir: Path, pruned: bool) -> tuple[TrialState | None, float | None, str | None]:
        """(state, metric value, error); state None: the run was preempted and can resume. Pruned comes
        first: a pruned run stopped by SIGTERM must not pass for a preempted one (and be resumed)."""
        record = _record(run_dir)
        if pruned or code == EXIT_PRUNED or record.get("state") == "pruned":
            if record.get("state") != "pruned":   # the trainer died before it could say so
                RunRecord(str(run_dir.parent), run_dir.name).update(state="pruned")
            return TrialState.PRUNED, None, None
        if record.get("state") == "preempted" or code == EXIT_PREEMPTED:
            return None, None, None
        if code == 0 and record.get("state") == "finished":
            return TrialState.COMPLETE, metric_value(record.get("summary"), read_jsonl(run_dir / "metrics.jsonl"),
                                                   self.sweep.metric, self.sweep.goal == "maximize"), None
        error = record.get("error") or tail(run_dir / "output.log") or f"exit code {code}"
        return TrialState.FAIL, None, f"exit code {code}: {error}"

    def _finish(self, study, trial, state, value, error) -> None:
        if error:
            trial.set_user_attr("error", error[-500:])
        self._store_record(trial)
        if state == TrialState.COMPLETE and value is None:
            state, error = TrialState.FAIL, f"metric {self.sweep.metric} missing from the run"
        self._write_trial_file(trial, state, error)
        self._upload(trial, state)
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

    def _write_trial_file(self, trial: optuna.Trial, state: TrialState, error: str | None) -> None:
        """The trial's end in its run folder (lib.runs.TRIAL_FILE): why a run failed is read with the runs,
        also where it died before writing its own record, without opening the study."""
        run_dir = self.opts.sweep_dir / "runs" / str(trial.user_attrs.get("run_id"))
        write_json(run_dir / TRIAL_FILE, {"trial": trial.number, "state": state.name.lower(),
                                          "error": error[-500:] if error else None})

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
        """Ctrl-C and SIGTERM alike: the trials get SIGTERM, save their checkpoints and are requeued
        (their runs resume under the same ids); the runner exits 130 once they have."""
        def on_sigterm(_n, _f):
            raise _Stopping()

        main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        if main:
            signal.signal(signal.SIGTERM, on_sigterm)
        gpus = self.opts.gpus or [None] * self.opts.workers
        threads = [threading.Thread(target=self.work, args=(gpu,), name=f"worker-{i}" + (f"-gpu{gpu}" if gpu else ""),
                                    daemon=True) for i, gpu in enumerate(gpus)]
        if self.deadline is not None:
            with self.lock:
                estimate, source = self._trial_estimate(_counted(optuna.load_study(
                    study_name=self.sweep.name, storage=storage(self.opts))))
            print(cloud.budget_line(self.opts.time_budget_s, estimate, source,
                                    "running trials get SIGTERM, checkpoint and are requeued"), flush=True)
        try:
            for i, t in enumerate(threads):
                t.start()
                if i + 1 < len(threads):
                    time.sleep(0.2)  # let the first ask() land before the next worker asks
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.5)
                self._check_deadline()
        except (KeyboardInterrupt, _Stopping):
            return self._interrupted(threads, main)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.bar.close()
        if self.stop_reason:
            print(self.stop_reason)
            return 1
        if self.budget:
            print(f"{self.budget.split(':')[0]} spent: run the same command again to continue the sweep")
            return cloud.EXIT_BUDGET
        return 0

    def _check_deadline(self) -> None:
        """At the deadline the workers stop their trials (SIGTERM: they checkpoint, and are requeued under
        their run ids) and start no more."""
        if self.deadline is None or time.monotonic() < self.deadline or self.stop.is_set():
            return
        with self.lock:
            self.budget = "time budget"
        print("time budget spent: running trials get SIGTERM, checkpoint and are requeued", flush=True)
        self.stop.set()

    def _interrupted(self, threads: list[threading.Thread], main: bool) -> int:
        self.stop.set()
        if main:   # a second Ctrl-C or SIGTERM must not leave the trials orphaned: keep waiting for them
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda _n, _f: print("stopping: waiting for the trials to save their "
                                                        "checkpoints", flush=True))
        with self.lock:
            for proc in self.children:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.5)
        self.bar.close()
        print("interrupted: run the same command again to continue the sweep")
        return 130


def _counted(study: optuna.Study) -> list:
    """Trials that stand for work: not a worker's surplus ask, not one superseded by its requeued copy."""
    trials = study.get_trials(deepcopy=False)
    superseded = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return [t for t in trials if not t.user_attrs.get("surplus") and not t.user_attrs.get("requeued")
            and t.number not in superseded]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40]


def _record(run_dir: Path) -> dict:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        return read_json(run_dir / "run.json")
    return {}


def run_local(sweep_file: str, opts: Options, fixed: dict[str, str] | None = None) -> int:
    sweep = sweep_spec.load(sweep_file, fixed, 1 if opts.confirm_top else opts.repeats)   # confirm: K seeds for the top N
    _check_confirm(sweep, opts)
    sweep_spec.check_here(sweep)   # data_dir, weights: before anything is started or written
    runner = Runner(sweep, opts)
    code = runner.run()
    if code == 0 and runner.confirm_waiting and runner.rest().count != 0:   # the grid ended here: its top next
        code = Runner(sweep, runner.rest()).run()
    print(status_table(opts.sweep_dir, opts.storage))
    return code


# --- status ---------------------------------------------------------------------------------------------
def _study_in_database(url: str, name: str | None = None) -> tuple[optuna.Study, dict, Options]:
    """The study ``name`` of a database URL (by default its only one) and what sweep.json would say
    about it: `status URL`, `report URL`, `export URL` from a machine that holds none of the runs."""
    opts = Options(sweep_dir=Path("."), storage=url)
    st = storage(opts)
    name = choose_study(url, [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)],
                        name)
    study = optuna.load_study(study_name=name, storage=st)
    definition = study.user_attrs.get("sweep") or {}
    raw = definition.get("yaml") or {}
    meta = {"name": name, "storage": public_url(url), "metric": (raw.get("metric") or {}).get("name", "value"),
            "goal": (raw.get("metric") or {}).get("goal", "maximize"), "method": raw.get("method"),
            "set": {k: str(v) for k, v in (definition.get("set") or {}).items()}}
    return study, meta, opts


def choose_study(url: str, names: list[str], name: str | None) -> str:
    """``--study NAME``, which must be in the database; without it, the database's only study."""
    where = public_url(url, hide=True)
    if name is not None and name not in names:
        raise SweepError(f"{where} holds no study {name!r}: it holds {', '.join(names) or 'none'}")
    if name is None and len(names) != 1:
        raise SweepError(f"{where} holds {len(names)} studies ({', '.join(names) or 'none'}): "
                         + ("pick one with --study NAME" if names else "run `local --storage` first"))
    return name or names[0]


def _trial_rows(sweep_dir: Path | str, storage_url: str | None = None,
                study_name: str | None = None) -> tuple[list[dict], dict]:
    """One dict per trial (number, state, run id, config, value, duration, error) and sweep.json."""
    if "://" in str(sweep_dir):
        study, meta, opts = _study_in_database(str(sweep_dir), study_name)
    else:
        meta_path = Path(sweep_dir) / "sweep.json"
        if not meta_path.exists():
            raise SweepError(f"{sweep_dir} is not a sweep dir (no sweep.json): run `finetune_sweep.py local` first")
        meta = read_json(meta_path)
        if study_name not in (None, meta["name"]):   # a sweep dir holds one study
            raise SweepError(f"{sweep_dir} holds the study {meta['name']!r}, not {study_name!r}")
        opts = Options(sweep_dir=Path(sweep_dir), storage=storage_url or meta.get("storage"),
                       heartbeat_s=meta.get("heartbeat_s", 30.0), grace_s=meta.get("grace_s"))
        study = optuna.load_study(study_name=meta["name"], storage=storage(opts))
    stale = set(study._storage._get_stale_trial_ids(study._study_id))
    rows = []
    for t in _counted(study):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        config = t.user_attrs.get("config") or _flat(_point(t))
        config = config_lib.recipe_as_keys(config)   # as columns
        rows.append({"trial": t.number, "state": "interrupted" if _gone(t, stale, opts.host) else t.state.name.lower(),
                     "run_id": t.user_attrs.get("run_id"), "config": config, "value": t.value,
                     "duration_s": round(duration, 1) if duration else None, "error": t.user_attrs.get("error"),
                     "gpu": t.user_attrs.get("gpu")})
    return rows, meta


def trials_frame(sweep_dir: Path, storage_url: str | None = None, study_name: str | None = None):
    """One row per trial: number, state, run id, parameters, metric, duration, error."""
    import pandas as pd

    rows, meta = _trial_rows(sweep_dir, storage_url, study_name)
    gpus = any(r["gpu"] is not None for r in rows)   # a column only where trials ran on chosen GPUs
    return pd.DataFrame([{"trial": r["trial"], "state": r["state"], "run_id": r["run_id"], **r["config"],
                          meta["metric"]: r["value"], "duration_s": r["duration_s"],
                          **({"gpu": r["gpu"]} if gpus else {}), "error": r["error"]}
                         for r in rows]), meta


def _cell(value: Any) -> str:
    """As written in the sweep: 15 stays 15 (a table column with gaps would print 15.0)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def status_table(sweep_dir: Path, storage_url: str | None = None, study_name: str | None = None) -> str:
    import pandas as pd

    rows, meta = _trial_rows(sweep_dir, storage_url, study_name)
    if not rows:
        return "no trials yet"
    metric = meta["metric"]
    keys = list(dict.fromkeys(k for r in rows for k in r["config"]))
    varying = [k for k in keys if len({_cell(r["config"].get(k)) for r in rows}) > 1]
    gpu = ["gpu"] if any(r["gpu"] is not None for r in rows) else []
    table = pd.DataFrame([[str(r["trial"]), r["state"], r["run_id"] or "-", *(_cell(r["config"].get(k)) for k in varying),
                           f"{r['value']:.4f}" if r["value"] is not None else "-", _cell(r["duration_s"]),
                           *(_cell(r["gpu"]) for _ in gpu)]
                          for r in rows], columns=["trial", "state", "run_id", *varying, metric, "duration_s", *gpu])
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines = [table.to_string(index=False), "", "trials: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    if done:
        best = (max if meta["goal"] == "maximize" else min)(done, key=lambda r: r["value"])
        shown = ", ".join(f"{k}={_cell(best['config'].get(k))}" for k in varying)
        lines.append(f"best: trial {best['trial']} ({best['run_id']}) {metric} = {best['value']:.4f}"
                     + (f"  [{shown}]" if shown else ""))
    failed = [r for r in rows if r["state"] == "fail"]
    for r in failed[-3:]:
        lines.append(f"failed: trial {r['trial']} ({r['run_id']}): {str(r['error'] or '?')[:200]}")
    if counts.get("interrupted"):
        lines.append(f"interrupted: {counts['interrupted']} trial(s) lost their runner: `local` (the command "
                     f"below without --retry_failed) requeues and resumes them")
    if failed or counts.get("interrupted"):
        lines.append(("to retry the failed trials once their cause is fixed: " if failed else "")
                     + _local_command(sweep_dir, meta, storage_url, retry=bool(failed)))
    return "\n".join(lines)


def _local_command(sweep_dir: Path, meta: dict, storage_url: str | None, retry: bool) -> str:
    url = public_url(storage_url or meta.get("storage"), hide=True)
    if "://" in str(sweep_dir):   # status URL: the sweep file and folder are the machine's own business
        sweep_dir, meta = "DIR", {**meta, "sweep_file": "SWEEP.yaml"}
    parts = ["python", "finetune_sweep.py", "local", meta.get("sweep_file") or str(Path(sweep_dir) / "sweep.yaml"),
             "--sweep_dir", str(sweep_dir), *(x for k, v in (meta.get("set") or {}).items() for x in ("--set", f"{k}={v}")),
             *(["--storage", url] if url else []), *(["--retry_failed"] if retry else [])]
    return shlex.join(parts)
