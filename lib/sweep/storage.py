"""Where a study lives: a journal file in the sweep dir, or an RDB (``--storage postgresql://...``) that
runners on several machines share; both with heartbeats, so a trial whose runner stopped beating is
found from any machine. Also the locks around opening a study, the one way commands that only read
(status, report, export, soup, dashboard) open one, and storage URLs fit to print or write down (no
password).

Reading never writes: a database is opened with table creation off and must already hold Optuna's
tables (a mistyped URL must not give another database thirteen tables), a SQLite file or a journal that
does not exist is not created, and a journal is read without its lock."""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat  # the interface of heartbeats (is_heartbeat_enabled...)
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from lib.errors import SweepError
from lib.files import read_json
from lib.records import JOURNAL_FILE, SWEEP_META
from lib.sources import form_of
from lib.sweep.options import Options
from lib.sweep.spec import DEFAULT_METRIC
from lib.urls import without_query_secrets

STUDY_LOCK_KEY = 0x5EE9_5EE9                # PostgreSQL advisory lock: one runner at a time opens the study
HEARTBEAT = "heartbeat"                     # journal trials: wall time of the runner's last beat


class HeartbeatJournal(JournalStorage, BaseHeartbeat):
    """Optuna 5 keeps heartbeats for RDB storages only; a journal gets the same: each beat is a system
    attribute of the trial (the beating host's wall time), stale after ``grace`` seconds without one.
    Hosts sharing a journal should keep their clocks within a fraction of the grace period (NTP)."""

    def __init__(self, backend, interval: float, grace: float):
        super().__init__(backend)
        self._interval, self._grace = interval, grace

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
        return None   # no Optuna callback: lib.sweep.recovery requeues a stale trial before it fails it


def open_storage(opts: Options) -> optuna.storages.BaseStorage:
    """The study's storage for a runner. Stale trials are found by ``stale_trial_ids`` and requeued by
    lib.sweep.recovery (Optuna's ``fail_stale_trials`` fails first and requeues after: a runner killed in
    between would lose the trial)."""
    if opts.storage:
        return open_rdb(opts.storage, **_beats(opts))
    return HeartbeatJournal(JournalFileBackend(str(opts.sweep_dir / JOURNAL_FILE)), opts.heartbeat_s, opts.grace)


def _beats(opts: Options) -> dict:
    """Optuna's RDB heartbeat settings (whole seconds) for the options' beat and grace period."""
    return {"heartbeat_interval": max(1, math.ceil(opts.heartbeat_s)), "grace_period": max(1, math.ceil(opts.grace))}


def open_rdb(url: str, read_only: bool = False, **heartbeat) -> optuna.storages.RDBStorage:
    """The one way a URL becomes a storage. The database's own clock judges heartbeats: hosts' clocks need
    not agree. Runners starting at once on a fresh database race to create Optuna's tables: the losers
    retry (the tables are there then). ``read_only``: for a command that reads (read_database)."""
    from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError, ProgrammingError

    if read_only:
        return read_database(url, **heartbeat)
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, **heartbeat)
        except (IntegrityError, ProgrammingError):
            if attempt == 4:
                raise
            time.sleep(0.2 + 0.3 * attempt)
        except (OperationalError, ArgumentError, NoSuchModuleError, ValueError) as e:
            # a wrong password, an unreachable server, a URL no driver reads: the user's to fix, in one line
            raise SweepError(f"cannot open the study database {public_url(url, hide=True)}: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    """The driver's own words (psycopg: "password authentication failed for user ..."; Optuna and SQLAlchemy
    wrap them in theirs), on one line, without SQLAlchemy's background link or anything that could hold the URL."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = " ".join(str(getattr(e, "orig", None) or e).split())
    return text.split(" (Background on this error")[0][:300] or type(e).__name__


def stale_trial_ids(study: optuna.Study) -> set[int]:
    """Trials whose runner has not beaten within the grace period (Optuna's own rule, for RDB and journal)."""
    return set(study._storage._get_stale_trial_ids(study._study_id))


def record_heartbeat(study: optuna.Study, trial: optuna.Trial) -> None:
    study._storage.record_heartbeat(trial._trial_id)


@contextlib.contextmanager
def shared_lock(opts: Options):
    """The study's storage, held under a lock that every runner sharing it sees: the sweep dir's lock file
    serializes one machine's runners only, and runners on other machines share nothing but the database.
    PostgreSQL: an advisory lock (MySQL: GET_LOCK), released with its connection."""
    st = open_storage(opts)
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
        shown = url
    elif hide:
        shown = u.render_as_string(hide_password=True)
    else:
        shown = URL.create(u.drivername, u.username, None, u.host, u.port, u.database, u.query) \
            .render_as_string(hide_password=False)
    # libpq also takes the password from the query string (?password=...): never shown, never stored
    return without_query_secrets(shown, mask="***" if hide else None)


# --- a study read by a command that does not run it: status, report, export, soup, dashboard --------------
OPTUNA_TABLES = {"studies", "trials", "version_info", "alembic_version"}   # opening writes unless all are there


def open_source(source: Path | str, storage_url: str | None = None) -> tuple[optuna.storages.BaseStorage,
                                                                            dict | None, Options]:
    """The storage of a sweep dir (its sweep.json names the study and where it lives; ``storage_url`` where
    it lives if sweep.json's URL, which has no password, is not enough) or of a database URL, opened to read;
    with sweep.json (None for a URL) and the heartbeat settings the study runs with."""
    if form_of(str(source)) == "database":   # lib.sources: the one answer to what SOURCE is
        opts = Options(sweep_dir=Path("."), storage=str(source))
        return open_to_read(opts), None, opts
    folder = Path(source)
    if not folder.is_dir():
        raise SweepError(f"{source}: no such folder (expected a sweep dir, or a database URL such as "
                         f"postgresql://user@host/db)")
    try:
        meta = read_json(folder / SWEEP_META)
    except FileNotFoundError:
        raise SweepError(f"{source} is not a sweep dir (no {SWEEP_META}): run `finetune_sweep.py local` "
                         "first") from None
    except (OSError, ValueError) as e:
        raise SweepError(f"{folder / SWEEP_META} cannot be read: {' '.join(str(e).split())[:200]}") from None
    opts = Options(sweep_dir=folder, storage=storage_url or meta.get("storage"),
                   heartbeat_s=meta.get("heartbeat_s", 30.0), grace_s=meta.get("grace_s"))
    return open_to_read(opts), meta, opts


def open_to_read(opts: Options) -> optuna.storages.BaseStorage:
    """The study's storage, opened so that reading it writes nothing, with its runners' heartbeat settings
    (``stale_trial_ids`` then finds the trials whose runner stopped beating)."""
    if opts.storage:
        return open_rdb(opts.storage, read_only=True, **_beats(opts))
    path = opts.sweep_dir / JOURNAL_FILE
    if not path.is_file():   # the backend would create an empty one
        raise SweepError(f"{opts.sweep_dir} has no {JOURNAL_FILE}: its study is in a database (pass its URL) "
                         "or was never started")
    return HeartbeatJournal(JournalFileBackend(str(path)), opts.heartbeat_s, opts.grace)   # no lock to read


def read_database(url: str, **heartbeat) -> optuna.storages.RDBStorage:
    """An RDB storage that creates nothing: no SQLite file where there is none, and no tables: a database
    without Optuna's (all of them: Optuna would otherwise write its version rows on opening) is refused."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    where = public_url(url, hide=True)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise SweepError(f"{where}: not a database URL (e.g. postgresql://user@host/db)") from None
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:") \
            and not Path(parsed.database).is_file():
        raise SweepError(f"{where}: no such SQLite file")   # connecting would create it
    try:
        engine = create_engine(url)
        try:
            missing = OPTUNA_TABLES - set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
        if missing:
            raise SweepError(f"cannot read a study from {where}: it holds no Optuna study (no table "
                             f"{sorted(missing)[0]!r}); check the URL, or run `finetune_sweep.py local` with "
                             "--storage first")
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True, **heartbeat)
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError, RuntimeError, ImportError) as e:
        # unreachable, refused, an older schema, no driver for the URL's database
        raise SweepError(f"cannot read a study from {where}: {_reason(e)}") from None
    return storage


def study_names(st: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in st.get_all_studies()]


def choose_study(url: str, names: list[str], name: str | None) -> str:
    """``--study NAME``, which must be in the database; without it, the database's only study."""
    where = public_url(url, hide=True)
    if name is not None and name not in names:
        raise SweepError(f"{where} holds no study {name!r}: it holds {', '.join(names) or 'none'}")
    if name is None and len(names) != 1:
        raise SweepError(f"{where} holds {len(names)} studies ({', '.join(names) or 'none'}): "
                         + ("pick one with --study NAME" if names else "run `local --storage` first"))
    return name or names[0]


def read_study(source: Path | str, storage_url: str | None = None,
               study_name: str | None = None) -> tuple[optuna.Study, dict, Options]:
    """The study of a sweep dir or of a database URL (``study_name``, by default its only one), opened to
    read, with what sweep.json says of it (made from the study itself for a URL)."""
    st, meta, opts = open_source(source, storage_url)
    if meta is None:
        name = choose_study(str(source), study_names(st), study_name)
        study = optuna.load_study(study_name=name, storage=st)
        return study, _meta(study, str(source)), opts
    if study_name not in (None, meta["name"]):   # a sweep dir holds one study
        raise SweepError(f"{source} holds the study {meta['name']!r}, not {study_name!r}")
    return optuna.load_study(study_name=meta["name"], storage=st), meta, opts


def study_in_database(url: str, name: str | None = None) -> tuple[optuna.Study, dict, Options]:
    """The study ``name`` of a database URL (by default its only one), opened to read, and what sweep.json
    would say about it: `status URL`, `report URL`, `export URL` from a machine that holds none of the runs."""
    return read_study(url, None, name)


def _meta(study: optuna.Study, url: str) -> dict:
    """sweep.json's view of a study, from the sweep it keeps. Its goal is the direction it runs in: a study
    made when a metric could lack a goal ran it the kit's old way (maximize), not W&B's default."""
    definition = study.user_attrs.get("sweep") or {}
    metric = (definition.get("yaml") or {}).get("metric") or {}
    return {"name": study.study_name, "storage": public_url(url), "metric": metric.get("name", DEFAULT_METRIC),
            "goal": metric.get("goal") or study.direction.name.lower(),
            "method": (definition.get("yaml") or {}).get("method"),
            "set": {k: str(v) for k, v in (definition.get("set") or {}).items()}}
