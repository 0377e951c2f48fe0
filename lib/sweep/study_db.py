"""A study in a database, read from a machine that ran none of its trials: its runs as the same dicts
``lib.runs.load_local`` returns (for `report URL`), and a trial's files fetched into a run folder (for
`export URL`).

A run's full record (config, summary, classes, split, test predictions, per-class figures, confusion
matrix) and its per-epoch rows come from the artifact store (``lib.sweep.artifacts``). A trial without
them there (no store, or a trial that ended before it had one) still has what the study keeps: its
config, state, summary, error and the sweep metric of each epoch: enough for the table, the ranking and
the curves, not for the paired tests or the confusion matrix.
"""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lib.config import recipe_as_keys
from lib.errors import SweepError
from lib.files import write_json
from lib.records import METRICS_FILE, RUN_FILE, State
from lib.runs import load_local
from lib.sources import Source
from lib.sweep import artifacts
from lib.sweep.storage import public_url, study_in_database
from lib.sweep.study import check_run_ids, counted, trial_config

TRIAL_STATES = {TrialState.RUNNING: State.RUNNING, TrialState.COMPLETE: State.FINISHED,
                TrialState.PRUNED: State.PRUNED, TrialState.FAIL: State.FAILED}


@dataclass
class DatabaseStudy:
    study: optuna.Study
    meta: dict            # as sweep.json says it: name, metric, goal, method, storage (no password)
    store: Any            # the artifact store, or None
    unread: str | None = None   # the store the study names, not read: neither --artifacts nor confirmed

    @property
    def source(self) -> str:
        return f"study {self.meta['name']} in {public_url(self.meta['storage'], hide=True)}"

    def runs(self, full: bool = True) -> list[dict]:
        """Every trial that started, as a run dict (waiting grid points are not runs yet). ``full``: with
        each run's files from the store; without, what the study keeps (enough to pick a run to export)."""
        trials = [t for t in counted(self.study) if t.state in TRIAL_STATES and t.user_attrs.get("run_id")]
        check_run_ids(trials)   # each names a folder below: never outside it
        for t in trials:
            trial_config(t)
        if full and self.unread:
            print(f"note: {self.source} keeps its trials' files in the artifact store {self.unread}; not read "
                  f"(a study does not choose which local files are copied): pass --artifacts {self.unread} to "
                  "read them", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="study-runs-") as tmp:
            for t in trials:
                self._mirror(t, Path(tmp) / t.user_attrs["run_id"], full)
            runs = load_local(tmp) if trials else []
        ids = {t.user_attrs["run_id"]: t for t in trials}
        for run in runs:   # the mirror folder is gone: what stands for the run is its trial
            run.pop("dir", None)
            t = ids[run["id"]]
            # the trial's state, as `status` shows it (a run whose metric went missing finished, its trial failed)
            run.update(state=TRIAL_STATES[t.state], source=self.source, trial=t.number, host=t.user_attrs.get("host"),
                       artifacts=_ids(t))
        return runs

    def _mirror(self, t, folder: Path, full: bool) -> None:
        """The trial as a run folder: its files from the store, else a record made of what the study keeps."""
        ids = _ids(t)
        folder.mkdir(parents=True)
        got = artifacts.download(self.store, ids, artifacts.RUN_FILES, folder) if full and self.store and ids else []
        if RUN_FILE not in got:
            write_json(folder / RUN_FILE, _essentials(t))
        if METRICS_FILE not in got:
            metric = self.meta["metric"]
            rows = [{"epoch": step, metric: value} for step, value in sorted(t.intermediate_values.items())]
            (folder / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def fetch(self, run: dict, dest: Path) -> Path:
        """The run's weights and run.json from the store into ``dest``: a run folder export can read."""
        ids = run.get("artifacts") or {}
        if self.store is None or artifacts.WEIGHTS not in ids:
            raise SweepError(f"run {run['id']} of {self.source} has no weights in an artifact store: run `local` "
                             f"with --artifacts to keep them where every machine can fetch them")
        artifacts.download(self.store, ids, (RUN_FILE, artifacts.WEIGHTS), Path(dest))
        return Path(dest)


def _ids(t) -> dict:
    """A trial's artifact ids ({file name: id}); {} when the study holds none or something else."""
    ids = t.user_attrs.get(artifacts.TRIAL_ATTR)
    return ids if isinstance(ids, dict) else {}


def _essentials(t) -> dict:
    """What the study keeps of a run (user attribute ``run``), in run.json's shape."""
    kept = t.user_attrs.get("run")
    kept = kept if isinstance(kept, dict) else {}
    config = recipe_as_keys(trial_config(t))   # as run.json has it
    state = TRIAL_STATES[t.state]
    error = kept.get("error") or t.user_attrs.get("error")
    return {"id": t.user_attrs["run_id"], "name": config.get("run_name") or t.user_attrs["run_id"], "state": state,
            "config": config, "summary": kept.get("summary") or {}, **({"error": error} if error else {}),
            **{k: kept[k] for k in ("started_at", "finished_at") if k in kept}}


def confirm_store(where: str) -> bool:
    """At a terminal, the user's yes to the store the study names; elsewhere no (then --artifacts)."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    print(f"the study keeps its trials' files in the artifact store {where}", file=sys.stderr)
    try:
        return input("read them from there? [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def open_database(url: str, name: str | None = None, store: str | None = None, confirm=confirm_store) -> DatabaseStudy:
    """The study ``name`` (by default the database's only one) and its artifact store: ``store`` where
    given (the shared folder's path on this machine), else the one the study recorded once ``confirm``-ed."""
    study, meta, _ = study_in_database(url, name)
    opened = artifacts.reader(study, store, confirm)
    unread = artifacts.recorded(study) if opened is None else None
    return DatabaseStudy(study, meta, opened, unread)


class DatabaseSource(Source):
    """A study's database URL as a SOURCE (lib.sources): opened when its runs or its sweep are asked for.
    Its runs come from the study and its artifact store; a run's weights from the store."""

    form = "database"

    def __init__(self, url: str, study: str | None = None, artifacts: str | None = None, **_):
        super().__init__(url)
        self.study_name, self.artifacts, self._db = study, artifacts, None

    @property
    def db(self) -> DatabaseStudy:
        if self._db is None:
            self._db = open_database(self.text, self.study_name, self.artifacts)
        return self._db

    def open(self) -> None:
        _ = self.db   # the database holds the study (read-only: nothing is created)

    @property
    def no_weights(self) -> str:
        """Why none of its finished runs has weights here: a store the study names but nobody confirmed, or none."""
        if self.db.unread:
            return (f"they are in the artifact store {self.db.unread}: pass --artifacts {self.db.unread} to fetch "
                    "them from there (a study does not choose which local files are copied)")
        return ("no weights in an artifact store, so export cannot fetch them: run `local` with --artifacts DIR "
                "(a folder every machine mounts) to keep them there")

    @property
    def name(self) -> str:
        return self._db.source if self._db is not None else public_url(self.text, hide=True)

    def _load(self, full: bool) -> list[dict]:
        return self.db.runs(full)

    def meta(self) -> dict:
        return {**self.db.meta, "source": self.db.source}

    def has_weights(self, run: dict) -> bool:
        return self.db.store is not None and artifacts.WEIGHTS in (run.get("artifacts") or {})

    def fetch(self, run: dict, dest: Path) -> Path:
        return self.db.fetch(run, dest)
