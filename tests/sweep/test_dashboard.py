"""`finetune_sweep.py dashboard DIR|URL`: a real sweep's study served by optuna-dashboard on the loopback,
read back through the dashboard's own HTTP API (what its pages draw), read-only, stopped cleanly."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml

import finetune_sweep
from lib.sweep import dashboard
from lib.sweep import runner as sweep_runner
from lib.sweep import status as sweep_status
from lib.sweep.options import Options
from tests.pg import PASSWORD, pg_server, pg_url  # noqa: F401 - fixtures

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


def _started(source: str, port: int, *extra: str) -> subprocess.Popen:
    """The command as a user runs it, polled until it answers (or has exited with what it printed)."""
    proc = subprocess.Popen([sys.executable, "finetune_sweep.py", "dashboard", source, "--port", str(port), *extra],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            _get(port, "/api/meta")
            return proc
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"the dashboard did not answer within 60 s: {proc.communicate()}")


def _stopped(proc: subprocess.Popen, how=signal.SIGTERM) -> tuple[str, str]:
    proc.send_signal(how)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in err, (out, err)
    return out, err


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
    port = _free_port()
    proc = _started(str(sweep_dir), port)
    try:
        _shown_as_status_says(port, sweep_dir, "s")
        (study_id,) = [s["study_id"] for s in _get(port, "/api/studies")["study_summaries"]]
        note = urllib.request.Request(f"http://127.0.0.1:{port}/api/studies/{study_id}/note", method="PUT",
                                      data=b'{"version": 1, "body": "x"}', headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(note, timeout=10)
        assert refused.value.code == 405
    finally:
        out, _ = _stopped(proc, signal.SIGINT)   # Ctrl-C
    assert f"http://localhost:{port}/dashboard/studies/{study_id}" in out
    assert f"ssh -N -L {port}:localhost:{port} {socket.gethostname()}" in out
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*")} == before   # nothing written, nothing created


def test_dashboard_of_a_database_url(tmp_path, pg_url, capsys):
    import sqlalchemy

    assert finetune_sweep.main(["dashboard", pg_url]) == 2   # no study yet: said, and no tables made for one
    assert "cannot read a study from" in capsys.readouterr().err
    assert sqlalchemy.inspect(sqlalchemy.create_engine(pg_url)).get_table_names() == []
    sweep_dir = _sweep(tmp_path, tmp_path / "host-a", storage=pg_url)
    port = _free_port()
    proc = _started(pg_url, port)
    try:
        _shown_as_status_says(port, sweep_dir, "s", pg_url)
    finally:
        out, err = _stopped(proc)
    assert PASSWORD not in out + err and os.environ["PGPASSWORD"] == PASSWORD   # libpq read it, nobody printed it


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
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "plain" / dashboard.JOURNAL).exists()


def test_several_studies_open_on_their_list_unless_one_is_named():
    storage = optuna.storages.InMemoryStorage()
    for name in ("a", "b"):
        optuna.create_study(study_name=name, storage=storage)
    assert dashboard.pick_study(storage, None, None, "db") == (None, None)
    assert dashboard.pick_study(storage, None, "b", "db") == ("b", storage.get_study_id_from_name("b"))
    assert dashboard.banner("127.0.0.1", 8080, None, None, "db")[0] == \
        "dashboard of the studies of db: http://localhost:8080/dashboard"
