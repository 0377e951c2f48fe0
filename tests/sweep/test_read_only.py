"""Commands that read never write (issue 18): `status`, `report`, `export` and `dashboard` pointed at a
database open it with table creation off, through the one opener they share (lib.sweep.storage); a
database without a study, a SQLite file or a journal that does not exist is one line, exit 2, and nothing
is created: not Optuna's tables in a real PostgreSQL database that holds something else, not a SQLite
file, not a journal."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml

import finetune_sweep
from lib.files import write_json
from lib.records import JOURNAL_FILE, SWEEP_META
from lib.sweep import dashboard, status, storage, study_db
from lib.sweep import runner as sweep_runner
from lib.sweep.options import Options
from tests.pg import PASSWORD

KIND = "server"   # a server process: in `make test`, not `make check`

FAKE = str(Path(__file__).parents[1] / "fakes" / "fake_trainer.py")
READERS = {"status": [], "report": ["--out", "report"], "export": ["--out", "export"], "dashboard": ["--port", "0"]}


def _refused(capsys, command: str, source: str) -> str:
    """The command's one line, once it has exited 2."""
    assert finetune_sweep.main([command, source, *READERS[command]]) == 2
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def _tables(url: str) -> list[str]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        return sorted(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_every_reader_shares_the_one_read_only_opener():
    assert dashboard.open_source is storage.open_source
    for module in (dashboard, status, study_db):
        assert not [n for n in vars(module) if n in ("_journal", "_database", "open_rdb", "open_storage")]


@pytest.mark.parametrize("command", list(READERS))
def test_an_unrelated_postgresql_database_gets_no_tables(command, tmp_path, pg_url, monkeypatch, capsys):
    """A mistyped URL that points at another application's database: the reader says it holds no study and
    leaves it as it was (the old code gave it Optuna's thirteen tables, then said so)."""
    import psycopg

    monkeypatch.chdir(tmp_path)
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute("CREATE TABLE invoices (id int PRIMARY KEY, total numeric)")
        con.execute("INSERT INTO invoices VALUES (1, 9.5)")
    err = _refused(capsys, command, pg_url)
    assert "holds no Optuna study" in err and "check the URL" in err
    assert _tables(pg_url) == ["invoices"]
    assert not list(tmp_path.iterdir())   # no report, no export folder


def test_an_empty_postgresql_database_and_one_that_does_not_exist(tmp_path, pg_url, capsys):
    for command in READERS:
        assert "holds no Optuna study" in _refused(capsys, command, pg_url)
    assert _tables(pg_url) == []
    missing = pg_url.rsplit("/", 1)[0] + "/no_such_db"
    assert 'database "no_such_db" does not exist' in _refused(capsys, "status", missing)


@pytest.mark.parametrize("command", list(READERS))
def test_a_sqlite_file_that_does_not_exist_is_not_created(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert "no such SQLite file" in _refused(capsys, command, f"sqlite:///{tmp_path / 'typo.db'}")
    assert "no such SQLite file" in _refused(capsys, command, "sqlite:///relative.db")
    assert not list(tmp_path.iterdir())


def test_a_sqlite_file_of_another_application_is_left_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE notes (body text)")
    con.close()
    before = other.read_bytes()
    for command in READERS:
        assert "holds no Optuna study" in _refused(capsys, command, f"sqlite:///{other}")
    assert other.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_a_sweep_dir_without_its_journal_is_not_given_one(tmp_path, capsys):
    """sweep.json says the study is in the folder's journal, which is gone: one line, no empty journal."""
    folder = tmp_path / "sweep"
    folder.mkdir()
    write_json(folder / SWEEP_META, {"name": "s", "metric": "best_val_acc", "goal": "maximize", "storage": None})
    for command in ("status", "dashboard"):
        assert f"has no {JOURNAL_FILE}" in _refused(capsys, command, str(folder))
    assert sorted(p.name for p in folder.iterdir()) == [SWEEP_META]


def test_reading_a_study_writes_nothing_to_its_sweep_dir(tmp_path, capsys):
    """`status` of a real study in a journal (the fake trainer: a second a trial): its files come out as
    they were, with no journal lock file left or made."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"program": FAKE, "method": "grid", "parameters": {"lr": {"values": [0.3, 0.8]},
                                    "epochs": {"value": 1}}, "metric": {"name": "best_val_acc", "goal": "maximize"}}))
    folder = tmp_path / "sweep"
    assert sweep_runner.run_local(str(path), Options(sweep_dir=folder, poll_s=0.05)) == 0
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    capsys.readouterr()
    assert finetune_sweep.main(["status", str(folder)]) == 0
    assert "trials: complete 2" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


@pytest.mark.parametrize("url, needle", [("mysql://u@db.example/x", "No module named"),
                                         ("postgresql://u@db.example:port/x", "not a database URL"),
                                         ("nosuch://x", "Can't load plugin")])
def test_a_url_no_driver_can_open_is_one_line(url, needle, capsys):
    assert needle in _refused(capsys, "status", url)
