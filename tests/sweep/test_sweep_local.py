"""Offline sweeps (`finetune_sweep.py local`): W&B semantics, grid exactly once with several workers,
seeded random/bayes search, hyperband pruning, failures, and continuing an interrupted sweep."""
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from sweeps.params import HyperParameter

from lib.files import read_json
from lib.sweep import runner as sweep_runner
from lib.sweep import spec as sweep_spec
from lib.sweep import status as sweep_status
from lib.sweep import storage
from lib.sweep import trial as sweep_trial
from lib.sweep.options import Options
from lib.sweep.spec import SweepError
from tests.procs import started, wait_for

KIND = "subprocess"   # the real trainer or runner in child processes: in `make test`, not `make check`

FAKE = str(Path(__file__).parents[1] / "fakes" / "fake_trainer.py")
ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, spec, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def fake_sweep(method, parameters, **extra):
    return {"program": FAKE, "method": method, "metric": {"name": "best_val_acc", "goal": "maximize"},
            "parameters": parameters, **extra}


def local(sweep_file, sweep_dir, fixed=None, **opts):
    return sweep_runner.run_local(sweep_file, Options(sweep_dir=Path(sweep_dir), poll_s=0.05, **opts),
                                 fixed)


def trials(sweep_dir):
    df, _ = sweep_status.trials_frame(Path(sweep_dir))
    return df


# --- W&B semantics ------------------------------------------------------------------------------
def test_distributions_follow_wandb():
    assert sweep_spec.value_of(HyperParameter("a", {"distribution": "log_uniform", "min": -3, "max": 0}), 0.0) \
        == pytest.approx(math.exp(-3))                                      # exponents
    assert sweep_spec.value_of(HyperParameter("a", {"distribution": "log_uniform_values", "min": 1e-4,
                                                    "max": 1e-2}), 0.5) == pytest.approx(1e-3)
    q = sweep_spec.value_of(HyperParameter("a", {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.25}), 0.6)
    assert q in (0.5, 0.75)
    i = sweep_spec.value_of(HyperParameter("a", {"distribution": "int_uniform", "min": 2, "max": 5}), 0.99)
    assert i == 5 and isinstance(i, int)
    probs = HyperParameter("a", {"values": ["x", "y"], "probabilities": [0.9, 0.1]})
    draws = [sweep_spec.value_of(probs, u) for u in np.linspace(0, 1, 101)]
    assert 85 <= draws.count("x") <= 95


def test_command_macros(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TAG", "x1")        # wandb agent reads ${envvar:NAME} from its own environment
    sweep = sweep_spec.parse(fake_sweep("grid", {"lr": {"value": 0.1}}, command=[
        "${env}", "${interpreter}", "${program}", "${args}", "${args_no_boolean_flags}", "${args_no_hyphens}",
        "${args_json}", "${args_json_file}", "--tag=${envvar:MY_TAG}"]), tmp_path / "s.yaml", {})
    argv = sweep_trial.build_command(sweep, {"lr": 0.1, "amp": True, "train_bn": False}, tmp_path, ROOT)
    assert argv[:3] == ["/usr/bin/env", sys.executable, FAKE]
    assert argv[3:6] == ["--lr=0.1", "--amp=True", "--train_bn=False"]
    assert argv[6:8] == ["--lr=0.1", "--amp"]                               # false flags are dropped
    assert argv[8:11] == ["lr=0.1", "amp=True", "train_bn=False"]
    assert yaml.safe_load(argv[11]) == {"lr": 0.1, "amp": True, "train_bn": False}
    assert Path(argv[12]).read_text() == argv[11] and argv[13] == "--tag=x1"


@pytest.mark.parametrize("spec, needle", [
    ({"program": "finetune_resnet.py", "method": "grid", "parameters": {"colour": {"values": [1]}}},
     "parameter 'colour' is not a config key"),
    ({"program": "finetune_resnet.py", "method": "grid", "parameters": {"lr": {"min": 0.1, "max": 1.0}}},
     "grid search needs `value` or `values`"),
    ({"program": "finetune_resnet.py", "method": "random", "parameters": {"strategy": {"values": ["x"]}}},
     "strategy='x'"),
    ({"program": "finetune_resnet.py", "method": "bayes", "parameters": {"lr": {"min": 0.1, "max": 1.0}}},
     "method bayes needs a metric"),
    ({"program": "finetune_resnet.py", "method": "grid", "metric": {"name": "speed"},
      "parameters": {"lr": {"value": 0.1}}}, "metric 'speed'"),
    ({"program": "finetune_resnet.py", "method": "grid", "parameters": {"lr": {"value": 0.1}},
      "command": ["${interpreter}", "${program}", "${args_yaml}"]}, "macro ${args_yaml}"),
    ({"program": "finetune_resnet.py", "method": "grid", "parameters": {"lr": {"distribution": "zipf"}}},
     "not a valid W&B sweep"),
    ({"program": "finetune_resnet.py", "method": "grid", "parameters": {"lr": {"value": 0.1}},
      "early_terminate": {"type": "envelope"}}, "not a valid W&B sweep"),
])
def test_unsupported_or_bad_sweeps_are_rejected_before_any_trial(tmp_path, spec, needle):
    with pytest.raises(SweepError) as e:
        local(write(tmp_path, spec), tmp_path / "out")
    assert needle in str(e.value)
    assert not (tmp_path / "out" / "runs").exists()


# --- the engine, on the fake trainer ------------------------------------------------------------------
def test_grid_runs_every_point_exactly_once_with_two_workers(tmp_path):
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.1, 0.2, 0.3]}, "epochs": {"values": [1, 2]}}))
    assert local(f, tmp_path / "out", workers=2) == 0
    df = trials(tmp_path / "out")
    assert sorted(zip(df["lr"], df["epochs"], strict=True)) == sorted((lr, e) for lr in (0.1, 0.2, 0.3) for e in (1, 2))
    assert set(df["state"]) == {"complete"}
    assert len(list((tmp_path / "out" / "runs").glob("*/run.json"))) == 6


def test_two_runner_processes_share_one_grid(tmp_path):
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.1, 0.2, 0.3, 0.4]}, "warmup": {"value": 0}}))
    cmd = [sys.executable, str(ROOT / "finetune_sweep.py"), "local", f, "--sweep_dir", str(tmp_path / "out")]
    with started(cmd, stdout=subprocess.DEVNULL) as one, started(cmd, stdout=subprocess.DEVNULL) as two:
        assert [one.wait(240), two.wait(240)] == [0, 0], (one.err, two.err)
    df = trials(tmp_path / "out")
    assert sorted(df["lr"]) == [0.1, 0.2, 0.3, 0.4] and set(df["state"]) == {"complete"}


def test_random_search_is_repeatable_with_a_seed(tmp_path):
    spec = fake_sweep("random", {"lr": {"distribution": "log_uniform_values", "min": 0.01, "max": 1.0},
                                 "epochs": {"distribution": "int_uniform", "min": 1, "max": 3}})
    f = write(tmp_path, spec)
    draws = []
    for out in ("a", "b"):
        assert local(f, tmp_path / out, count=4, seed=7) == 0
        draws.append(list(zip(trials(tmp_path / out)["lr"], trials(tmp_path / out)["epochs"], strict=True)))
    assert draws[0] == draws[1] and len(set(draws[0])) == 4
    assert all(0.01 <= lr <= 1.0 and e in (1, 2, 3) for lr, e in draws[0])
    assert local(f, tmp_path / "c", count=4, seed=8) == 0
    assert list(zip(trials(tmp_path / "c")["lr"], trials(tmp_path / "c")["epochs"], strict=True)) != draws[0]


def test_bayes_search_improves_on_a_known_objective(tmp_path):
    f = write(tmp_path, fake_sweep("bayes", {"lr": {"distribution": "uniform", "min": 0.0, "max": 1.0},
                                             "epochs": {"value": 1}}, run_cap=10))
    assert local(f, tmp_path / "out", seed=0) == 0
    df = trials(tmp_path / "out")
    assert len(df) == 10                                                    # run_cap honoured
    assert df["best_val_acc"].max() > 0.9                                   # objective = lr


def test_hyperband_prunes_poor_trials(tmp_path):
    f = write(tmp_path, fake_sweep("random", {"lr": {"distribution": "uniform", "min": 0.0, "max": 1.0},
                                              "epochs": {"value": 8}, "sleep": {"value": 0.15}},
                                   early_terminate={"type": "hyperband", "min_iter": 1, "eta": 2}))
    assert local(f, tmp_path / "out", count=10, seed=3) == 0
    df = trials(tmp_path / "out")
    pruned = df[df["state"] == "pruned"]
    assert len(pruned) >= 1
    for run_id in pruned["run_id"]:
        rec = read_json(tmp_path / "out" / "runs" / run_id / "run.json")
        assert rec["state"] == "pruned" and rec.get("summary") is None       # stopped mid-training


def test_a_failing_trial_does_not_stop_the_sweep(tmp_path):
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.1, 0.2, 0.3]}, "fail": {"values": [False, True]}}))
    assert local(f, tmp_path / "out", max_failures=5) == 0
    df = trials(tmp_path / "out")
    assert sorted(df["state"]) == ["complete"] * 3 + ["fail"] * 3
    assert all("boom" in e for e in df[df["state"] == "fail"]["error"])


def test_consecutive_failures_stop_the_sweep_with_a_message(tmp_path, capsys):
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]},
                                            "fail": {"value": True}}))
    assert local(f, tmp_path / "out", max_failures=3) == 1
    assert "3 trials failed in a row" in capsys.readouterr().out
    df = trials(tmp_path / "out")
    assert (df["state"] == "fail").sum() == 3 and (df["state"] == "waiting").sum() == 3


def test_a_killed_sweep_continues_without_losing_or_repeating_points(tmp_path):
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.1, 0.2, 0.3]}, "epochs": {"value": 4},
                                            "sleep": {"value": 0.5}}))
    cmd = [sys.executable, str(ROOT / "finetune_sweep.py"), "local", f, "--sweep_dir", str(tmp_path / "out")]
    with started(cmd, group=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                 ready=lambda: list((tmp_path / "out" / "runs").glob("*/metrics.jsonl"))) as proc:
        proc.send(signal.SIGKILL)                                           # runner and trial, mid-trial
        proc.wait()
    assert local(f, tmp_path / "out") == 0
    df = trials(tmp_path / "out")
    done = df[df["state"] == "complete"]
    assert sorted(done["lr"]) == [0.1, 0.2, 0.3]                             # each point once
    assert len(list((tmp_path / "out" / "runs").glob("*/run.json"))) == 3  # the killed run id was reused


# --- the real trainer ------------------------------------------------------------------------------
def test_real_trials_run_finetune_resnet_like_wandb_agent(tmp_path, animals):
    spec = {"program": "finetune_resnet.py", "method": "grid", "metric": {"name": "best_val_acc", "goal": "maximize"},
            "command": ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"],
            "parameters": {"model": {"value": "small_cnn"}, "optim": {"parameters": {
                "lr": {"values": [0.003, 0.01]}}}}}
    fixed = {"data_dir": str(animals), "image_size": "32", "min_image_side": "16", "epochs": "1",
             "batch_size": "16", "augment": "none", "val_fraction": "0.25", "test_fraction": "0.25",
             "device": "cpu"}
    assert local(write(tmp_path, spec), tmp_path / "out", fixed, workers=2) == 0
    df = trials(tmp_path / "out")
    assert sorted(df["lr"]) == [0.003, 0.01] and set(df["state"]) == {"complete"}
    for run_id, lr in zip(df["run_id"], df["lr"], strict=True):
        rec = read_json(tmp_path / "out" / "runs" / run_id / "run.json")
        assert rec["config"]["lr"] == lr and rec["config"]["group"] == "s" and rec["state"] == "finished"
        assert rec["wandb"]["sweep_id"] == "s" and rec["wandb"]["mode"] == "offline"
        assert list((tmp_path / "out" / "runs" / run_id / "wandb").glob("offline-run-*"))
    assert "best: trial" in sweep_status.status_table(tmp_path / "out")


@pytest.mark.parametrize("sweep_file", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_study_runs_unchanged_offline(sweep_file, tmp_path, animals, cache_dir):
    """Each YAML as shipped, shrunk only through --set (data, size, epochs; random init where no
    ImageNet weights can arrive offline): its first trial runs to the end under `local`."""
    fixed = {"data_dir": str(animals), "image_size": "32", "min_image_side": "16", "epochs": "2",
             "phase1_epochs": "1", "batch_size": "16", "val_fraction": "0.25", "test_fraction": "0.25",
             "weights": "none", "device": "cpu", "cache_dir": cache_dir}
    assert local(str(sweep_file), tmp_path / "out", fixed, count=1, seed=0) == 0
    df = trials(tmp_path / "out")
    assert list(df[df["state"] != "waiting"]["state"]) == ["complete"], df.get("error")


# --- seeded draws, editing and retrying a study, runners that die (fake trainer) -------------------------
def _gone(pid: int) -> bool:
    """No such process, or a zombie nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _runner(args, **popen):
    """`local` as a command, in a `with` (stopped when the block ends)."""
    cmd = [sys.executable, str(ROOT / "finetune_sweep.py"), "local", *map(str, args)]
    return started(cmd, stdout=subprocess.DEVNULL, **popen)


def _wait_for_epoch(sweep_dir, proc=None, timeout=120):
    wait_for(lambda: list((Path(sweep_dir) / "runs").glob("*/metrics.jsonl")), timeout, "a trial's first epoch", proc)


def _all_trials(sweep_dir):
    meta = read_json(Path(sweep_dir) / "sweep.json")
    opts = Options(sweep_dir=Path(sweep_dir), **{k: meta[k] for k in ("heartbeat_s", "grace_s") if k in meta})
    return optuna.load_study(study_name=meta["name"], storage=storage.open_storage(opts)).get_trials()


def test_seeded_random_never_repeats_a_draw_across_workers_or_runners(tmp_path):
    """Each worker thread used to seed its own sampler: with --workers 2, trials 0 and 1 drew the same lr."""
    f = write(tmp_path, fake_sweep("random", {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1.0},
                                              "epochs": {"value": 1}}))
    draws = []
    for out in ("a", "b"):
        assert local(f, tmp_path / out, count=4, seed=7, workers=2) == 0
        draws.append(sorted(trials(tmp_path / out)["lr"]))
    assert len(set(draws[0])) == 4 and draws[0] == draws[1]            # no repeat; the same study again
    args = [f, "--sweep_dir", tmp_path / "c", "--seed", 7, "--count", 2]
    with _runner(args) as one, _runner(args) as two:
        assert [one.wait(240), two.wait(240)] == [0, 0], (one.err, two.err)
    assert len(set(trials(tmp_path / "c")["lr"])) == 4                  # two runner processes, one study


def test_an_edited_sweep_is_refused_with_what_changed_and_extend_runs_only_new_points(tmp_path, capsys):
    from finetune_sweep import main

    spec = fake_sweep("grid", {"lr": {"values": [0.1, 0.2]}, "epochs": {"value": 1}})
    f = write(tmp_path, spec)
    assert local(f, tmp_path / "out") == 0
    stored = (tmp_path / "out" / "sweep.yaml").read_text()
    spec["parameters"]["lr"]["values"] = [0.1, 0.2, 0.3]
    write(tmp_path, spec)
    capsys.readouterr()
    assert main(["local", f, "--sweep_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and "--extend" in err[0]
    assert any("parameters.lr.values: [0.1, 0.2] -> [0.1, 0.2, 0.3]" in line for line in err[1:])
    assert (tmp_path / "out" / "sweep.yaml").read_text() == stored   # the stored sweep is untouched
    assert local(f, tmp_path / "out", extend=True) == 0
    df = trials(tmp_path / "out")
    assert sorted(df["lr"]) == [0.1, 0.2, 0.3] and set(df["state"]) == {"complete"}   # 0.3 only was added
    assert yaml.safe_load((tmp_path / "out" / "sweep.yaml").read_text())["parameters"]["lr"]["values"][-1] == 0.3
    other = write(tmp_path, spec, name="other.yaml")
    with pytest.raises(SweepError, match="holds the study 's', not 'other'"):
        local(other, tmp_path / "out")


def test_failed_points_are_retried_under_their_run_ids(tmp_path):
    flag = tmp_path / "data-missing"
    flag.touch()
    program = tmp_path / "flaky.py"           # fails while the flag exists: a cause the user then fixes
    program.write_text(f"import os, runpy, sys\nif {str(flag)!r} in sys.argv[-1] and os.path.exists({str(flag)!r}):\n"
                       f"    sys.exit('boom: data missing')\nrunpy.run_path({FAKE!r}, run_name='__main__')\n")
    f = write(tmp_path, {**fake_sweep("grid", {"lr": {"values": [0.1]}, "marker": {"values": ["ok", str(flag)]}}),
                         "program": str(program)})
    assert local(f, tmp_path / "out") == 0
    df = trials(tmp_path / "out")
    failed_id = df[df["state"] == "fail"]["run_id"].item()
    status = sweep_status.status_table(tmp_path / "out")
    assert "--retry_failed" in status and f"--sweep_dir {tmp_path / 'out'}" in status
    assert local(f, tmp_path / "out") == 0                                  # a plain rerun retries nothing
    assert list(trials(tmp_path / "out")["state"]).count("fail") == 1
    flag.unlink()
    assert local(f, tmp_path / "out", retry_failed=True) == 0
    df = trials(tmp_path / "out")
    assert set(df["state"]) == {"complete"} and len(df) == 2 and failed_id in set(df["run_id"])
    assert read_json(tmp_path / "out" / "runs" / failed_id / "run.json")["state"] == "finished"


def test_status_after_a_killed_runner_and_its_orphaned_trainer_is_stopped(tmp_path, request):
    """SIGKILL kills the runner alone: status says interrupted (not running), lists the pending points
    with their parameters (integers as integers), and the next `local` stops the orphaned trainer
    before the trial runs again."""
    f = write(tmp_path, fake_sweep("grid", {"lr": {"value": 0.5}, "epochs": {"values": [50, 2, 3]},
                                            "sleep": {"value": 0.1}}))
    with _runner([f, "--sweep_dir", tmp_path / "out"]) as runner:
        _wait_for_epoch(tmp_path / "out", runner)
        runner.send(signal.SIGKILL)                                         # the runner alone
        runner.wait()
    child = next(t.user_attrs["child_pid"] for t in _all_trials(tmp_path / "out") if "child_pid" in t.user_attrs)
    request.addfinalizer(lambda: _gone(child) or os.kill(child, signal.SIGKILL))   # if an assert fails first
    assert not _gone(child)                                                 # the trainer outlived its runner
    status = sweep_status.status_table(tmp_path / "out")
    rows = [line.split() for line in status.splitlines()[1:4]]
    assert [r[1] for r in rows] == ["interrupted", "waiting", "waiting"] and "running" not in status
    assert [r[3] for r in rows] == ["50", "2", "3"] and "50.0" not in status
    sweep = sweep_spec.load(f)
    sweep_runner.open_study(sweep, Options(sweep_dir=tmp_path / "out"))
    assert _gone(child)                                                     # stopped before any requeue runs
    assert local(f, tmp_path / "out") == 0
    df = trials(tmp_path / "out")
    assert sorted(df["epochs"]) == [2, 3, 50] and set(df["state"]) == {"complete"}


def test_a_trial_whose_runner_died_on_another_machine_is_requeued_by_its_heartbeat(tmp_path):
    """Two runners share one journal; the one on 'another machine' is SIGKILLed. Its pid means nothing
    here: its heartbeat goes stale, and the runner still alive runs its trial again."""
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.1, 0.2]}, "epochs": {"value": 20},
                                            "sleep": {"value": 0.1}}))
    beat = {"heartbeat_s": 0.2, "grace_s": 1.5}
    elsewhere = ("import sys; from pathlib import Path; from lib.sweep import runner as sweep_runner; "
                 "from lib.sweep.options import Options\n"
                 f"sys.exit(sweep_runner.run_local({f!r}, Options(sweep_dir=Path({str(tmp_path / 'out')!r}),"
                 f" poll_s=0.05, host='another-machine', **{beat!r})))")
    with started([sys.executable, "-c", elsewhere], group=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL) as other:
        _wait_for_epoch(tmp_path / "out", other)
        other.send(signal.SIGKILL)                                          # that machine is gone
        other.wait()
    # by heartbeat (once it is grace_s old), not by pid
    wait_for(lambda: "interrupted" in sweep_status.status_table(tmp_path / "out"), 60, "the trial seen interrupted")
    assert local(f, tmp_path / "out", **beat) == 0
    df = trials(tmp_path / "out")
    assert sorted(df["lr"]) == [0.1, 0.2] and set(df["state"]) == {"complete"}
    requeued = [t for t in _all_trials(tmp_path / "out") if "retry_of" in t.user_attrs]
    assert len(requeued) == 1 and "heartbeat" in requeued[0].user_attrs["requeued_because"]


def test_a_storage_password_is_never_written(tmp_path, monkeypatch, capsys):
    """A password in --storage connects the runner, and appears in no file of the sweep dir and no output
    (the database itself is SQLite here; only the URL's way through the kit is under test)."""
    url, secret = "postgresql://alice:s3cret-pw@db.example/studies", "s3cret-pw"
    seen, real = [], storage.open_rdb

    def sqlite(u, **how):   # the runner's way (creating tables) and status's (reading only) alike
        seen.append(u)
        return real(f"sqlite:///{tmp_path / 'study.db'}", **how)

    monkeypatch.setattr(storage, "open_rdb", sqlite)
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.1]}, "fail": {"values": [False, True]}}))
    assert local(f, tmp_path / "out", storage=url, max_failures=5) == 0
    out = capsys.readouterr()
    assert url in seen                                                      # the runner used it to connect
    assert "--storage 'postgresql://alice:***@db.example/studies'" in out.out   # its retry hint, masked
    assert read_json(tmp_path / "out" / "sweep.json")["storage"] == "postgresql://alice@db.example/studies"
    status = sweep_status.status_table(tmp_path / "out")     # connects without it (libpq: PGPASSWORD, .pgpass)
    assert "--storage postgresql://alice@db.example/studies" in status
    assert secret not in out.out + out.err + status
    for path in (tmp_path / "out").rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path


def test_extend_gives_a_random_study_its_edited_search_space(tmp_path):
    """Optuna refuses new choices for a parameter it has seen: an edited parameter is searched afresh."""
    spec = fake_sweep("random", {"lr": {"values": [0.1, 0.2]}, "epochs": {"value": 1}})
    f = write(tmp_path, spec)
    assert local(f, tmp_path / "out", count=2, seed=1) == 0
    spec["parameters"]["lr"]["values"] = [0.3, 0.4]
    write(tmp_path, spec)
    with pytest.raises(SweepError, match=r"parameters\.lr\.values: \[0\.1, 0\.2\] -> \[0\.3, 0\.4\]"):
        local(f, tmp_path / "out", count=2, seed=1)
    assert local(f, tmp_path / "out", count=2, seed=1, extend=True) == 0
    df = trials(tmp_path / "out")
    assert set(df["state"]) == {"complete"} and set(df["lr"][2:]) <= {0.3, 0.4} and set(df["lr"][:2]) <= {0.1, 0.2}


# --- repeats and recipes ------------------------------------------------------------------------------
def test_repeats_run_every_grid_point_with_k_seeds(tmp_path):
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.1, 0.2]}, "seed": {"value": 7}}))
    assert local(f, tmp_path / "out", repeats=3) == 0
    df = trials(tmp_path / "out")
    assert sorted(zip(df["lr"], df["seed"], strict=True)) == [(lr, s) for lr in (0.1, 0.2) for s in (7, 8, 9)]
    stored = yaml.safe_load((tmp_path / "out" / "sweep.yaml").read_text())
    assert stored["parameters"]["seed"] == {"values": [7, 8, 9]}      # what the same study is on W&B
    with pytest.raises(SweepError, match="needs a grid sweep"):
        local(write(tmp_path, fake_sweep("random", {"lr": {"min": 0.1, "max": 0.2}}), "r.yaml"),
              tmp_path / "r", repeats=2, count=1)


def test_a_recipe_grid_runs_each_recipe_once(tmp_path):
    recipes = [{"strategy": "freeze", "lr": 0.001, "epochs": 15}, {"strategy": "full", "lr": 1.0e-5, "epochs": 20}]
    f = write(tmp_path, fake_sweep("grid", {"recipe": {"values": recipes}, "model": {"values": ["a", "b"]}}))
    assert local(f, tmp_path / "out", workers=2) == 0
    df = trials(tmp_path / "out")
    assert len(df) == 4 and set(df["state"]) == {"complete"}
    got = sorted((r["model"], r["recipe"]["strategy"]) for r in
                 (read_json(p)["config"] for p in (tmp_path / "out" / "runs").glob("*/run.json")))
    assert got == [("a", "freeze"), ("a", "full"), ("b", "freeze"), ("b", "full")]
