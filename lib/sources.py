"""What SOURCE is: the one answer for every command that reads runs (status, report, export, soup,
dashboard). A SOURCE is a sweep dir (``sweep.json`` and ``runs/``), a runs dir (``<run_id>/run.json``),
one run folder (``run.json``), a study's database URL (``postgresql://...``, ``sqlite:///...``) or a W&B
sweep path ``ENTITY/PROJECT/SWEEP_ID``; ``resolve`` turns it into a ``Source``: its runs, what the sweep
says of itself (metric, goal), and a run's weights.

The forms are recognised here; opening a database is the sweep layer's (``lib.sweep.study_db``), which
this shared module may not import: the entrypoint registers it (``register``). Nothing is opened until
it is asked for, so a command that only needs the form (status, dashboard) pays nothing more.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path

from lib import runs as runs_lib
from lib.errors import SourceError
from lib.files import read_json
from lib.records import RUN_FILE, SWEEP_META, WEIGHTS_FILE, State

ACCEPTED = ("a sweep dir, a runs dir, one run folder, a database URL (postgresql://USER@HOST/DB, "
            "sqlite:///FILE) or a W&B sweep path ENTITY/PROJECT/SWEEP_ID")


class Source:
    """A source of runs. ``form``: "sweep dir" | "runs dir" | "run folder" | "database" | "W&B sweep"."""

    form = "?"
    no_weights = ""   # why none of its finished runs has weights, where the source can say

    def __init__(self, text: str):
        self.text = str(text)
        self._runs: dict[bool, list[dict]] = {}

    @property
    def name(self) -> str:
        """The source as it may be printed (a database URL without its password)."""
        return self.text

    @property
    def location(self):
        """Where it is: a folder's Path, else the text as given (a URL, a W&B path)."""
        return self.text

    def runs(self, full: bool = True) -> list[dict]:
        """Every run as ``lib.runs.load_local`` returns them. ``full``: with per-epoch history and every
        record a report reads; without, enough to rank and pick a run (cheaper from W&B or a database)."""
        if not full and True in self._runs:   # the full records hold the rest
            return self._runs[True]
        if full not in self._runs:
            self._runs[full] = self._load(full)
        return self._runs[full]

    def _load(self, full: bool) -> list[dict]:
        raise NotImplementedError

    def meta(self) -> dict:
        """What the sweep says of itself ({"metric", "goal", ...}), {} when nothing does."""
        return {}

    def open(self) -> None:
        """What can be checked before anything is read from it (a W&B key, a database that holds the study):
        one line when it cannot be opened."""

    def has_weights(self, run: dict) -> bool:
        """Whether ``fetch`` can give the run's weights."""
        return False

    def fetch(self, run: dict, dest: Path) -> Path:
        """A run folder with the run's ``run.json`` and weights (at ``dest`` when they must be copied)."""
        raise SourceError(f"{self.name}: run {run.get('id')} has no weights to fetch")

    def require(self, forms: tuple[str, ...], command: str) -> None:
        """``command`` reads only some forms (a study: a sweep dir or a database): one line otherwise."""
        if self.form not in forms:
            raise SourceError(f"{self.name} is a {self.form}, not a {' or a '.join(forms)}: {command} reads those "
                              "(a sweep dir is made by `finetune_sweep.py local`)")


STUDY_FORMS = ("sweep dir", "database")   # the forms that hold a study (status, dashboard)


class FolderSource(Source):
    """A sweep dir, a runs dir or one run folder on this machine."""

    def __init__(self, text: str):
        super().__init__(text)
        self.path = Path(text)
        if not self.path.is_dir():
            raise SourceError(f"{self.path} is a file, not a folder: SOURCE is {ACCEPTED}")
        self.form = ("run folder" if (self.path / RUN_FILE).exists() else
                     "sweep dir" if (self.path / SWEEP_META).exists() else "runs dir")

    @property
    def location(self) -> Path:
        return self.path

    def runs(self, full: bool = True) -> list[dict]:
        return super().runs(True)   # a folder's records are whole either way: read once

    def _load(self, full: bool) -> list[dict]:
        return runs_lib.load_local(self.path)

    def meta(self) -> dict:
        with contextlib.suppress(OSError, ValueError):
            meta = read_json(self.path / SWEEP_META)
            return meta if isinstance(meta, dict) else {}
        return {}

    def has_weights(self, run: dict) -> bool:
        return bool(run.get("dir")) and (Path(run["dir"]) / WEIGHTS_FILE).is_file()

    def fetch(self, run: dict, dest: Path) -> Path:
        if not self.has_weights(run):
            return super().fetch(run, dest)
        return Path(run["dir"])   # already a run folder: nothing to copy


class WandbSource(Source):
    """A W&B sweep: runs and its config from the API, weights from each run's model artifact."""

    form = "W&B sweep"

    def __init__(self, text: str, api=None):
        super().__init__(text)
        self._api, self._meta = api, None

    @property
    def api(self):
        if self._api is None:   # no key: one line (before anything heavy is imported)
            self._api = runs_lib.public_api()
        return self._api

    @property
    def name(self) -> str:
        return f"W&B sweep {self.text}"

    def open(self) -> None:
        _ = self.api   # the key, read here: nothing is asked of W&B yet

    def _load(self, full: bool) -> list[dict]:
        runs, self._meta = runs_lib.read_wandb(self.text, self.api, history=full)
        return runs

    def meta(self) -> dict:
        if self._meta is None:
            self.runs()
        return self._meta

    def has_weights(self, run: dict) -> bool:
        return run.get("state") == State.FINISHED   # every finished run logs its model artifact (log_model)

    def fetch(self, run: dict, dest: Path) -> Path:
        return runs_lib.download_run(self.text, run["id"], Path(dest), self.api)


# --------------------------------------------------------------------------- the forms, in the order they are tried
def _is_database(text: str) -> bool:
    return "://" in text


FORMS: list[tuple[str, Callable[[str], bool]]] = [
    ("database", _is_database),
    ("folder", lambda text: Path(text).exists()),
    ("W&B sweep", runs_lib.is_sweep_path),
]
OPENERS: dict[str, Callable[..., Source]] = {
    "folder": lambda text, **_: FolderSource(text),
    "W&B sweep": lambda text, api=None, **_: WandbSource(text, api),
}


def register(form: str, opener: Callable[..., Source]) -> None:
    """``opener(text, study=None, artifacts=None, **_)`` opens sources of ``form`` (the entrypoint
    registers the database reader of lib.sweep, which this layer may not import)."""
    OPENERS[form] = opener


def form_of(text: str) -> str | None:
    return next((form for form, matches in FORMS if matches(str(text))), None)


def resolve(source, *, study: str | None = None, artifacts: str | None = None, api=None) -> Source:
    """The ``Source`` of ``source`` (a ``Source`` passes through). ``study``/``artifacts``: a database's
    study and artifact store; ``api``: stands in for ``wandb.Api()``."""
    if isinstance(source, Source):
        return source
    text = str(source)
    form = form_of(text)
    if form is None:
        hint = " (a W&B sweep path has three parts)" if re.fullmatch(r"[^/\s]+(/[^/\s]+)?", text) and "/" in text \
            else ""
        raise SourceError(f"no such folder: {text}, and not a database URL or a W&B sweep path{hint}: "
                          f"SOURCE is {ACCEPTED}")
    if form not in OPENERS:
        raise SourceError(f"{form} sources are read by finetune_sweep.py (lib.sweep registers the reader)")
    return OPENERS[form](text, study=study, artifacts=artifacts, api=api)
