"""Offline sweeps (`finetune_sweep.py local`): W&B semantics, grid exactly once with several workers,
seeded random/bayes search, hyperband pruning, failures, and continuing an interrupted sweep."""
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from sweeps.params import HyperParameter

from lib import sweep_local, sweep_spec
from lib.records import read_json
from lib.sweep_spec import SweepError

FAKE = str(Path(__file__).parent / "fakes" / "fake_trainer.py")
ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, spec, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def fake_sweep(method, parameters, **extra):
    return {"program": FAKE, "method": method, "metric": {"name": "best_val_acc", "goal": "maximize"},
            "parameters": parameters, **extra}


def local(sweep_file, sweep_dir, fixed=None, **opts):
    return sweep_local.run_local(sweep_file, sweep_local.Options(sweep_dir=Path(sweep_dir), poll_s=0.05, **opts),
                                 fixed)


def trials(sweep_dir):
    df, _ = sweep_local.trials_frame(Path(sweep_dir))
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


def test_command_macros(tmp_path):
    sweep = sweep_spec.parse(fake_sweep("grid", {"lr": {"value": 0.1}}, command=[
        "${env}", "${interpreter}", "${program}", "${args}", "${args_no_boolean_flags}", "${args_no_hyphens}",
        "${args_json}", "${args_json_file}", "--tag=${envvar:MY_TAG}"]), tmp_path / "s.yaml", {})
    argv = sweep_spec.build_command(sweep, {"lr": 0.1, "amp": True, "train_bn": False}, tmp_path,
                                    {"MY_TAG": "x1"}, ROOT)
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
     "needs metric.name"),
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
    assert sorted(zip(df["lr"], df["epochs"])) == sorted((lr, e) for lr in (0.1, 0.2, 0.3) for e in (1, 2))
    assert set(df["state"]) == {"complete"}
    assert len(list((tmp_path / "out" / "runs").glob("*/run.json"))) == 6


def test_two_runner_processes_share_one_grid(tmp_path):
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.1, 0.2, 0.3, 0.4]}, "warmup": {"value": 0}}))
    cmd = [sys.executable, str(ROOT / "finetune_sweep.py"), "local", f, "--sweep_dir", str(tmp_path / "out")]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    assert [p.wait(timeout=240) for p in procs] == [0, 0]
    df = trials(tmp_path / "out")
    assert sorted(df["lr"]) == [0.1, 0.2, 0.3, 0.4] and set(df["state"]) == {"complete"}


def test_random_search_is_repeatable_with_a_seed(tmp_path):
    spec = fake_sweep("random", {"lr": {"distribution": "log_uniform_values", "min": 0.01, "max": 1.0},
                                 "epochs": {"distribution": "int_uniform", "min": 1, "max": 3}})
    f = write(tmp_path, spec)
    draws = []
    for out in ("a", "b"):
        assert local(f, tmp_path / out, count=4, seed=7) == 0
        draws.append(list(zip(trials(tmp_path / out)["lr"], trials(tmp_path / out)["epochs"])))
    assert draws[0] == draws[1] and len(set(draws[0])) == 4
    assert all(0.01 <= lr <= 1.0 and e in (1, 2, 3) for lr, e in draws[0])
    assert local(f, tmp_path / "c", count=4, seed=8) == 0
    assert list(zip(trials(tmp_path / "c")["lr"], trials(tmp_path / "c")["epochs"])) != draws[0]


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
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "out" / "runs").glob("*/metrics.jsonl")):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)                                     # runner and trial, mid-trial
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
    for run_id, lr in zip(df["run_id"], df["lr"]):
        rec = read_json(tmp_path / "out" / "runs" / run_id / "run.json")
        assert rec["config"]["lr"] == lr and rec["config"]["group"] == "s" and rec["state"] == "finished"
        assert rec["wandb"]["sweep_id"] == "s" and rec["wandb"]["mode"] == "offline"
        assert list((tmp_path / "out" / "runs" / run_id / "wandb").glob("offline-run-*"))
    assert "best: trial" in sweep_local.status_table(tmp_path / "out")


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
