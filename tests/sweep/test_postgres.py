"""One study in a real PostgreSQL server, run by two "hosts": runner processes with separate working
folders and host names, sharing nothing but the database URL (the fake trainer stands in for training)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import optuna
import yaml

from lib.sweep import status as sweep_status
from lib.sweep import storage
from lib.sweep import study as sweep_study
from lib.sweep.options import Options
from tests.pg import PASSWORD, ROLE
from tests.procs import started, wait_for

KIND = "server"   # a server process: in `make test`, not `make check`

FAKE = str(Path(__file__).parents[1] / "fakes" / "fake_trainer.py")
ROOT = Path(__file__).resolve().parents[2]
BEAT = {"heartbeat_s": 0.5, "grace_s": 3.0}   # a killed host's trial is requeued within seconds


def _sweep(tmp_path, method, parameters) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"program": FAKE, "method": method, "parameters": parameters,
                                    "metric": {"name": "best_val_acc", "goal": "maximize"}}))
    return str(path)


def _host(sweep_file, sweep_dir, url, host, env=None, **opts):
    """`local` on another machine: its own folder, its own host name (liveness by heartbeat, not pid);
    a context manager (stopped, with its trainers, when the block ends)."""
    opts = {"poll_s": 0.05, **BEAT, **opts}
    code = ("import sys; from pathlib import Path; from lib.sweep import runner as sweep_runner; "
            "from lib.sweep.options import Options\n"
            f"sys.exit(sweep_runner.run_local({sweep_file!r}, Options(sweep_dir=Path({str(sweep_dir)!r}),"
            f" storage={url!r}, host={host!r}, **{opts!r})))")
    return started([sys.executable, "-c", code], group=True, stderr=subprocess.STDOUT, env=env)


def _finish(*hosts, timeout=180) -> list[str]:
    """Each host run to its end (exit 0); what each printed."""
    with ExitStack() as stack:
        procs = [stack.enter_context(h) for h in hosts]
        codes = [p.wait(timeout) for p in procs]
        assert codes == [0] * len(procs), [p.out for p in procs]
        return [p.out for p in procs]


def _study(url):
    opts = Options(sweep_dir=Path("."), storage=url, **BEAT)
    st = storage.open_storage(opts)
    (summary,) = optuna.get_all_study_summaries(st)
    return optuna.load_study(study_name=summary.study_name, storage=st)


def _done(url) -> list:
    return [t for t in sweep_study.counted(_study(url)) if t.state.name == "COMPLETE"]


def _no_password(outputs, *dirs):
    for text in outputs:
        assert PASSWORD not in text
    for d in dirs:
        for path in Path(d).rglob("*"):
            assert not path.is_file() or PASSWORD.encode() not in path.read_bytes(), path


def test_two_hosts_run_one_grid_every_point_once(tmp_path, pg_url):
    f = _sweep(tmp_path, "grid", {"lr": {"values": [0.1, 0.2, 0.3]}, "epochs": {"values": [1, 2]},
                                  "sleep": {"value": 0.05}})
    a, b = tmp_path / "host-a", tmp_path / "host-b"
    outs = _finish(_host(f, a, pg_url, "host-a"), _host(f, b, pg_url, "host-b"))
    done = _done(pg_url)
    points = sorted((t.params.get("lr", t.user_attrs.get("point", {}).get("lr")),
                     t.params.get("epochs", t.user_attrs.get("point", {}).get("epochs"))) for t in done)
    assert points == sorted((lr, e) for lr in (0.1, 0.2, 0.3) for e in (1, 2))
    runs = [p.parent.name for d in (a, b) for p in d.glob("runs/*/run.json")]
    assert len(runs) == len(set(runs)) == 6                        # each run in one host's folder only
    assert {t.user_attrs["host"] for t in done} <= {"host-a", "host-b"}
    for t in done:   # the run record's essentials and each epoch's metric live in the database too
        assert t.user_attrs["run"]["state"] == "finished" and "summary" in t.user_attrs["run"]
        assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["config"]["epochs"] + 1))
    elsewhere = tmp_path / "no-runs-here"                          # a machine that ran none of them
    elsewhere.mkdir()
    status = subprocess.run([sys.executable, str(ROOT / "finetune_sweep.py"), "status", pg_url], cwd=elsewhere,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert "trials: complete 6" in status.stdout and "best: trial" in status.stdout and "lr=0.3" in status.stdout
    assert not list(elsewhere.iterdir())
    _no_password([*outs, status.stdout, status.stderr], a, b)


def test_a_seeded_random_study_draws_no_value_twice_across_hosts(tmp_path, pg_url):
    f = _sweep(tmp_path, "random", {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1.0},
                                    "epochs": {"value": 1}})
    _finish(*[_host(f, tmp_path / h, pg_url, h, seed=7, count=3) for h in ("host-a", "host-b")])
    lrs = [t.params["lr"] for t in _done(pg_url)]
    assert len(lrs) == 6 and len(set(lrs)) == 6


def test_a_killed_host_is_requeued_by_heartbeat_and_finished_by_the_other(tmp_path, pg_url, pg_server):
    """host-a is SIGKILLed mid-trial (runner and trainer: the machine is gone). host-b, given the password
    in its URL instead of PGPASSWORD, finds the trial by its stale heartbeat and runs it; `local` again on
    host-a then continues the study (nothing left, nothing run twice); `status` works from either folder."""
    f = _sweep(tmp_path, "grid", {"lr": {"values": [0.1, 0.2]}, "epochs": {"value": 30}, "sleep": {"value": 0.1}})
    a, b = tmp_path / "host-a", tmp_path / "host-b"
    with _host(f, a, pg_url, "host-a") as first:
        wait_for(lambda: list(a.glob("runs/*/metrics.jsonl")), 120, "host-a's first trial", first)
        first.send(signal.SIGKILL)
        first.wait()
        killed_out = first.out
    with_password = pg_url.replace(f"{ROLE}@", f"{ROLE}:{PASSWORD}@")
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    outs = _finish(_host(f, b, with_password, "host-b", env=env))
    done = _done(pg_url)
    assert sorted(t.params.get("lr", t.user_attrs.get("point", {}).get("lr")) for t in done) == [0.1, 0.2]
    requeued = [t for t in done if "retry_of" in t.user_attrs]
    assert len(requeued) == 1 and "heartbeat" in requeued[0].user_attrs["requeued_because"]
    assert requeued[0].user_attrs["host"] == "host-b"
    assert (b / "runs" / requeued[0].user_attrs["run_id"] / "run.json").exists()
    outs += _finish(_host(f, a, pg_url, "host-a"))                 # host-a back: the study goes on
    assert len(_done(pg_url)) == 2
    for d in (a, b):
        status = sweep_status.status_table(d)
        assert "trials: complete 2" in status and "interrupted" not in status
        outs.append(status)
    _no_password([killed_out, *outs], a, b)
