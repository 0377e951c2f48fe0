"""`finetune_sweep.py dashboard DIR|URL`: a real sweep's study served by optuna-dashboard on the loopback,
read back through the dashboard's own HTTP API (what its pages draw), read-only, answering only to its own
names, stopped at once by SIGINT or SIGTERM (even inherited as ignored, even with a request hanging)."""
from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import yaml

import finetune_sweep
from lib.records import JOURNAL_FILE
from lib.sweep import dashboard
from lib.sweep import runner as sweep_runner
from lib.sweep import status as sweep_status
from lib.sweep.options import Options
from tests.pg import PASSWORD
from tests.procs import started

KIND = "server"   # a server process: in `make test`, not `make check`

FAKE = str(Path(__file__).parents[1] / "fakes" / "fake_trainer.py")
ROOT = Path(__file__).resolve().parents[2]
LRS = (0.3, 0.8)   # the fake trainer's best_val_acc is lr at its last epoch


def _sweep(tmp_path, sweep_dir, storage=None) -> Path:
    """A real two-trial grid sweep (the fake trainer: a second a trial), in a journal or a database."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"program": FAKE, "method": "grid", "parameters": {"lr": {"values": list(LRS)},
                                    "epochs": {"value": 2}}, "metric": {"name": "best_val_acc", "goal": "maximize"}}))
    opts = Options(sweep_dir=sweep_dir, poll_s=0.05, storage=storage)
    assert sweep_runner.run_local(str(path), opts) == 0
    return sweep_dir


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("dashboard")
    return _sweep(tmp, tmp / "sweep")


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


@contextmanager
def _dashboard(source: str, *extra: str, ignoring: str = ""):
    """The command as a user runs it (--port 0: a free port), ready once it has printed where it listens,
    and its port. ``ignoring``: signals it inherits as ignored, as a background job of a non-interactive
    shell (`nohup make test &`) inherits SIGINT."""
    argv = [sys.executable, "finetune_sweep.py", "dashboard", source, "--port", "0", *extra]
    if ignoring:
        argv = ["bash", "-c", f"trap '' {ignoring}; exec {shlex.join(argv)}"]
    with started(argv, ready="Ctrl-C stops it", timeout=120) as proc:
        yield proc, int(re.search(r"http://[^:]+:(\d+)/", proc.out).group(1))


def _stopped(proc, how=signal.SIGTERM, within: float = 20) -> str:
    """What it printed, once ``how`` has ended it with 0 and no traceback within ``within`` seconds."""
    sent = time.monotonic()
    code = proc.stop(how, timeout=within)
    assert code == 0 and "Traceback" not in proc.err and time.monotonic() - sent < within, proc.tail()
    return proc.out


def _raw(port: int, path: str, host: str | None = None, encoding: bool = True) -> tuple[int, bytes]:
    """A plain client's GET: http.client sends exactly the headers asked for (urllib adds its own)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=host is not None, skip_accept_encoding=not encoding)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _shown_as_status_says(port: int, sweep_dir, name: str, storage: str | None = None) -> None:
    """The dashboard's study and trials are the ones `status` reads: name, count, states and metric values."""
    (summary,) = [s for s in _get(port, "/api/studies")["study_summaries"] if s["study_name"] == name]
    study = _get(port, f"/api/studies/{summary['study_id']}")
    frame, _ = sweep_status.trials_frame(sweep_dir, storage)
    assert study["name"] == name and len(study["trials"]) == len(frame) == len(LRS)
    assert [t["state"].lower() for t in study["trials"]] == list(frame["state"])
    assert [t["values"][0] for t in study["trials"]] == pytest.approx(list(frame["best_val_acc"]))
    assert sorted(t["values"][0] for t in study["trials"]) == pytest.approx(sorted(LRS))
    assert all([v["step"] for v in t["intermediate_values"]] == [1, 2] for t in study["trials"])   # per epoch
    assert study["best_trials"][0]["values"] == [pytest.approx(max(LRS))]


def test_dashboard_serves_a_local_sweep_read_only(swept):
    sweep_dir = swept   # its journal, run folders and sweep.json must come out untouched
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*")}
    with _dashboard(str(sweep_dir)) as (proc, port):
        _shown_as_status_says(port, sweep_dir, "s")
        (study_id,) = [s["study_id"] for s in _get(port, "/api/studies")["study_summaries"]]
        note = urllib.request.Request(f"http://127.0.0.1:{port}/api/studies/{study_id}/note", method="PUT",
                                      data=b'{"version": 1, "body": "x"}', headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(note, timeout=10)
        assert refused.value.code == 405
        out = _stopped(proc, signal.SIGINT)   # Ctrl-C
    assert f"http://localhost:{port}/dashboard/studies/{study_id}" in out
    assert f"ssh -N -L {port}:localhost:{port} {socket.gethostname()}" in out
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*")} == before   # nothing written, nothing created


def test_dashboard_of_a_database_url(tmp_path, pg_url, capsys):
    import sqlalchemy

    assert finetune_sweep.main(["dashboard", pg_url]) == 2   # no study yet: said, and no tables made for one
    assert "cannot read a study from" in capsys.readouterr().err
    assert sqlalchemy.inspect(sqlalchemy.create_engine(pg_url)).get_table_names() == []
    sweep_dir = _sweep(tmp_path, tmp_path / "host-a", storage=pg_url)
    with _dashboard(pg_url) as (proc, port):
        _shown_as_status_says(port, sweep_dir, "s", pg_url)
        _stopped(proc)
    # libpq read it, nobody printed it
    assert PASSWORD not in proc.out + proc.err and os.environ["PGPASSWORD"] == PASSWORD


def test_bad_input_is_one_line_and_exit_2(tmp_path, swept, capsys):
    (tmp_path / "plain").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases = {(str(tmp_path / "nowhere"),): "no such folder",
                 (str(tmp_path / "plain"),): "not a sweep dir",
                 (str(swept), "--study", "other"): "holds no study 'other' (it holds: s)",
                 (str(swept), "--port", str(busy.getsockname()[1])): "choose another with --port",
                 (f"sqlite:///{tmp_path / 'none.db'}",): "no such SQLite file"}
        for args, needle in cases.items():
            assert finetune_sweep.main(["dashboard", *args]) == 2
            err = capsys.readouterr().err
            assert needle in err and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "plain" / JOURNAL_FILE).exists()


def test_several_studies_open_on_their_list_unless_one_is_named():
    storage = optuna.storages.InMemoryStorage()
    for name in ("a", "b"):
        optuna.create_study(study_name=name, storage=storage)
    assert dashboard.pick_study(storage, None, None, "db") == (None, None)
    assert dashboard.pick_study(storage, None, "b", "db") == ("b", storage.get_study_id_from_name("b"))
    assert dashboard.banner("127.0.0.1", 8080, None, None, "db")[0] == \
        "dashboard of the studies of db: http://localhost:8080/dashboard"


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_it_even_when_inherited_as_ignored(swept, how):
    """`nohup make test &` from a script starts the suite, and so the dashboard, with SIGINT ignored: the
    dashboard installs its own handlers, or Ctrl-C and the test's SIGINT are lost (it ran on after the suite)."""
    with _dashboard(str(swept), ignoring="INT TERM") as (proc, port):
        assert _get(port, "/api/meta")
        assert "dashboard stopped" in _stopped(proc, how, within=15)


def test_a_hanging_request_does_not_delay_stopping(swept):
    """A client that sends half a request and waits (a stalled proxy, a slow link): stopping used to join
    its thread, that is, wait for ever."""
    with _dashboard(str(swept)) as (proc, port), socket.create_connection(("127.0.0.1", port)) as stalled:
        stalled.sendall(f"GET /api/studies HTTP/1.1\r\nHost: localhost:{port}\r\n".encode())   # no blank line
        assert _get(port, "/api/meta")   # connections are accepted in order: the stalled one has its thread
        _stopped(proc, signal.SIGINT, within=5)


def test_it_answers_only_to_its_own_names(swept):
    """DNS rebinding: a page of evil.example, its name rebound to 127.0.0.1, reaches the loopback with
    `Host: evil.example:PORT`; that is refused, and so is any port but the dashboard's."""
    with _dashboard(str(swept)) as (proc, port):
        for name in ("localhost", "127.0.0.1", "[::1]", "LocalHost"):
            assert _raw(port, "/api/meta", host=f"{name}:{port}")[0] == 200, name
        for host in (f"evil.example:{port}", "evil.example", f"localhost:{port + 1}", f"localhost.evil.example:{port}",
                     f"127.0.0.1.nip.io:{port}", ""):
            status, body = _raw(port, "/api/studies", host=host)
            assert status == 421 and body.count(b"\n") == 1 and b"DNS rebinding" in body, (host, status, body)
            assert b"study" not in body
        _stopped(proc)


def test_a_client_without_accept_encoding_gets_the_files(swept):
    """curl and proxies may send no Accept-Encoding: optuna-dashboard read it unchecked (HTTP 500 and a
    KeyError traceback on the terminal). Such a client gets the plain files; a gzip client the gzipped ones."""
    import optuna_dashboard

    plain = (Path(optuna_dashboard.__file__).parent / "img" / "favicon.ico").read_bytes()
    with _dashboard(str(swept)) as (proc, port):
        for path in ("/favicon.ico", "/static/bundle.js", "/dashboard"):
            status, body = _raw(port, path, host=f"localhost:{port}", encoding=False)
            assert status == 200 and body, (path, status, body[:200])
        assert _raw(port, "/favicon.ico", host=f"localhost:{port}", encoding=False)[1] == plain
        _stopped(proc)
    assert "KeyError" not in proc.err and "Traceback" not in proc.err, proc.err


@pytest.mark.parametrize("key", ["password", "passwd", "PASSWORD"])
def test_a_password_in_the_query_string_is_not_shown(tmp_path, pg_url, key, capsys):
    """libpq takes the password from the URL's query string too; the error line shows the URL without it."""
    url = f"{pg_url}?sslmode=disable&{key}={PASSWORD}"     # the database has no study: an error line
    assert finetune_sweep.main(["dashboard", url]) == 2
    err = capsys.readouterr().err
    assert "cannot read a study from" in err and err.count("\n") == 1, err
    assert PASSWORD not in err and f"{key}=***" in err and "sslmode=disable" in err
