"""GPU workers and sessions that end (issue 12): `--time_budget` and `--gpus` on both engines.

No GPU here: the device list is patched (sweep_gpus.gpu_devices), and the fake trainer records the
CUDA_VISIBLE_DEVICES it was given. The agents are real child processes standing in for `wandb agent`
(test_wandb_sweep.fake_popen)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

import finetune_sweep
from lib.files import read_json
from lib.records import ExitCode
from lib.sweep import budget, wandb_sweep
from lib.sweep import gpus as sweep_gpus
from lib.sweep import runner as sweep_runner
from lib.sweep import status as sweep_status
from lib.sweep.options import Options
from tests.sweep.test_wandb_sweep import events, fake_popen

KIND = "subprocess"   # the real trainer or runner in child processes: in `make test`, not `make check`

FAKE = str(Path(__file__).parents[1] / "fakes" / "fake_trainer.py")


def sweep_file(tmp_path, parameters, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"program": FAKE, "method": "grid", "parameters": parameters,
                                    "metric": {"name": "best_val_acc", "goal": "maximize"}}))
    return str(path)


def local(f, out, *args):
    return finetune_sweep.main(["local", f, "--sweep_dir", str(out), *args])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(sweep_gpus, "gpu_devices", lambda: ["0", "1"])


# --- durations --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [("11h30m", 41400), ("45m", 2700), ("90s", 90), ("90", 90),
                                           ("1h", 3600), ("1.5h", 5400), ("2m30s", 150)])
def test_durations(text, seconds):
    assert budget.parse_duration(text) == seconds


@pytest.mark.parametrize("argv", [["--time_budget", "11x"], ["--time_budget", "0m"], ["--time_budget", "1h30"],
                                  ["--time_budget", "1h", "--trial_estimate", "soon"]])
def test_a_bad_duration_is_one_line_exit_2(tmp_path, capsys, argv):
    f = sweep_file(tmp_path, {"lr": {"value": 0.1}})
    assert local(f, tmp_path / "out", *argv) == 2
    assert "expected a duration" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()
    assert finetune_sweep.main(["agent", "me/dogs/abc123", *argv]) == 2
    assert "expected a duration" in one_line_error(capsys)


# --- local: time budget -------------------------------------------------------------------------------
def test_no_trial_starts_when_the_budget_is_below_the_stated_estimate(tmp_path, capsys):
    f = sweep_file(tmp_path, {"lr": {"values": [0.1, 0.2]}})
    assert local(f, tmp_path / "out", "--time_budget", "5s", "--trial_estimate", "1m") == 3
    out = capsys.readouterr().out
    assert "a trial is taken to last 1m (--trial_estimate)" in out
    assert "below one trial (~1m, --trial_estimate): no new trial starts" in out
    assert not list((tmp_path / "out" / "runs").glob("*/run.json"))
    assert "trials: waiting 2" in sweep_status.status_table(tmp_path / "out")


def test_the_estimate_is_the_median_of_finished_trials(tmp_path, capsys):
    f = sweep_file(tmp_path, {"lr": {"values": [0.1, 0.2, 0.3]}, "sleep": {"value": 1.0}, "epochs": {"value": 2}})
    assert local(f, tmp_path / "out", "--count", "1") == 0          # one trial, >= 2 s: the study's measure
    capsys.readouterr()
    # 1s left is below the measured trial, whatever --trial_estimate says: the study's own figure wins
    assert local(f, tmp_path / "out", "--time_budget", "1s", "--trial_estimate", "1s") == 3
    out = capsys.readouterr().out
    assert "(median of 1 finished trial(s))" in out and "no new trial starts" in out
    df, _ = sweep_status.trials_frame(tmp_path / "out")
    assert sorted(df["state"]) == ["complete", "waiting", "waiting"]


def test_at_the_deadline_a_trial_is_preempted_and_the_next_local_resumes_it(tmp_path, capsys):
    f = sweep_file(tmp_path, {"lr": {"value": 0.5}, "sleep": {"value": 0.5}, "epochs": {"value": 8}})
    t = time.monotonic()
    assert local(f, tmp_path / "out", "--time_budget", "2s") == 3  # no estimate yet: the trial starts
    assert time.monotonic() - t < 30
    out = capsys.readouterr().out
    assert "no trial length known yet" in out and "time budget spent" in out
    [run] = list((tmp_path / "out" / "runs").glob("*/run.json"))
    assert read_json(run)["state"] == "preempted"                     # SIGTERM: it checkpointed and said so
    df, _ = sweep_status.trials_frame(tmp_path / "out")
    assert list(df["state"]) == ["waiting"] and list(df["run_id"]) == [run.parent.name]   # requeued, same id
    assert local(f, tmp_path / "out") == 0
    df, _ = sweep_status.trials_frame(tmp_path / "out")
    assert list(df["state"]) == ["complete"] and list(df["run_id"]) == [run.parent.name]
    assert read_json(run)["state"] == "finished"


# --- local: one worker per GPU -------------------------------------------------------------------------
def test_local_runs_one_worker_per_gpu_each_seeing_its_own(tmp_path, two_gpus, capsys, monkeypatch):
    # a wandb-core inherited from a process that used W&B (a notebook) would outlive a killed trainer and
    # hold its run id: every trainer starts its own
    monkeypatch.setenv("WANDB_SERVICE", "2-1234-unix-/tmp/wandb-service.sock")
    f = sweep_file(tmp_path, {"lr": {"values": [0.1, 0.2, 0.3, 0.4]}, "sleep": {"value": 0.5},
                              "epochs": {"value": 2}})
    assert local(f, tmp_path / "out", "--gpus", "all") == 0
    df, _ = sweep_status.trials_frame(tmp_path / "out")
    assert set(df["state"]) == {"complete"} and len(df) == 4
    for run_id, gpu in zip(df["run_id"], df["gpu"], strict=True):
        env = read_json(tmp_path / "out" / "runs" / run_id / "run.json")["env"]
        assert env["CUDA_VISIBLE_DEVICES"] == gpu                    # the trial ran where it says it did
        assert env["WANDB_SERVICE"] is None
    assert set(df["gpu"]) == {"0", "1"}                               # both workers took trials
    table = sweep_status.status_table(tmp_path / "out").splitlines()
    assert table[0].split()[-1] == "gpu" and {line.split()[-1] for line in table[1:5]} == {"0", "1"}


def test_status_has_no_gpu_column_without_gpus(tmp_path):
    f = sweep_file(tmp_path, {"lr": {"value": 0.1}})
    assert local(f, tmp_path / "out") == 0
    assert "gpu" not in sweep_status.status_table(tmp_path / "out").splitlines()[0]
    assert "gpu" not in sweep_status.trials_frame(tmp_path / "out")[0].columns


@pytest.mark.parametrize("gpus, argv, message", [
    (["0", "1"], ["--gpus", "3"], "--gpus 3: no GPU 3 here; this machine has 2: 0,1"),
    (["0", "1"], ["--gpus", "0,0"], "a GPU listed twice"),
    (["0", "1"], ["--gpus", "0,1", "--workers", "3"], "--workers 3 with --gpus 0,1: one worker per GPU"),
    ([], ["--gpus", "all"], "--gpus all: no GPU on this machine"),
    ([], ["--gpus", "0"], "--gpus 0: no GPU on this machine"),
])
def test_gpus_that_are_not_there_are_one_line_exit_2(tmp_path, monkeypatch, capsys, gpus, argv, message):
    monkeypatch.setattr(sweep_gpus, "gpu_devices", lambda: gpus)
    f = sweep_file(tmp_path, {"lr": {"value": 0.1}})
    assert local(f, tmp_path / "out", *argv) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_discovery_follows_the_parents_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert sweep_gpus.gpu_devices() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert sweep_gpus.gpu_devices() == []


# --- agent: one per GPU, and the time budget ----------------------------------------------------------------
def test_agent_gpus_all_starts_one_agent_per_discovered_gpu(tmp_path, two_gpus, capsys):
    code = wandb_sweep.agent("me/dogs/abc123", 1, "all", stagger_s=0.0, popen=fake_popen(tmp_path, {"0": 0, "1": 0}))
    assert code == 0
    assert [events(tmp_path / f"gpu{g}.jsonl")[0]["gpu"] for g in "01"] == ["0", "1"]
    assert "agent 2: gpu 1" in capsys.readouterr().out


def test_agent_gpus_that_are_not_there_start_nothing(tmp_path, two_gpus):
    with pytest.raises(wandb_sweep.SweepError, match=r"--gpus 3: no GPU 3 here; this machine has 2: 0,1") as e:
        wandb_sweep.agent("me/dogs/abc123", None, "3", stagger_s=0.0, popen=fake_popen(tmp_path))
    assert "\n" not in str(e.value) and not list(tmp_path.glob("gpu*.jsonl"))


def test_agent_is_not_started_when_the_budget_is_below_one_trial(tmp_path, two_gpus, capsys):
    code = wandb_sweep.agent("me/dogs/abc123", None, "all", stagger_s=0.0, popen=fake_popen(tmp_path),
                       time_budget_s=60, trial_estimate_s=600)
    assert code == ExitCode.BUDGET_SPENT and not list(tmp_path.glob("gpu*.jsonl"))
    assert "below one trial (--trial_estimate 10m): no agent started" in capsys.readouterr().err


def test_agents_get_sigterm_at_the_deadline(tmp_path, two_gpus, capsys):
    t = time.monotonic()
    code = wandb_sweep.agent("me/dogs/abc123", None, "all", stagger_s=0.2, popen=fake_popen(tmp_path),
                       time_budget_s=1.5)
    assert code == ExitCode.BUDGET_SPENT and time.monotonic() - t < 20
    assert [events(tmp_path / f"gpu{g}.jsonl")[-1]["event"] for g in "01"] == ["got SIGTERM"] * 2
    assert "time budget spent: SIGTERM to the agents" in capsys.readouterr().out


# --- the real trainer ---------------------------------------------------------------------------------------
def test_a_real_trial_at_the_deadline_checkpoints_is_preempted_and_resumes(tmp_path, animals, cache_dir,
                                                                          monkeypatch):
    """finetune_resnet.py (small_cnn, 32 px): the deadline falls once its first epoch is logged (moved there
    by the test: its start-up time varies too much on shared cores for a fixed budget), the trial gets
    SIGTERM, keeps its checkpoint, is recorded preempted, and the next `local` resumes the same run."""
    import threading

    from lib.sweep import spec as sweep_spec

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"program": "finetune_resnet.py", "method": "grid",
                                    "metric": {"name": "best_val_acc", "goal": "maximize"},
                                    "parameters": {"model": {"value": "small_cnn"}, "strategy": {"value": "full"},
                                                   "lr": {"value": 3e-3}}}))
    fixed = {"data_dir": str(animals), "image_size": "32", "min_image_side": "16", "epochs": "6",
             "batch_size": "16", "augment": "none", "val_fraction": "0.25", "test_fraction": "0.25",
             "device": "cpu", "cache_dir": cache_dir}
    out = tmp_path / "out"
    runner = sweep_runner.Runner(sweep_spec.load(str(path), fixed),
                                Options(sweep_dir=out, poll_s=0.05, time_budget_s=3600))

    def deadline_after_the_first_epoch():
        end = time.monotonic() + 300
        while time.monotonic() < end and not any(p.read_text().strip() for p in out.glob("runs/*/metrics.jsonl")):
            time.sleep(0.05)
        runner.deadline = time.monotonic()

    threading.Thread(target=deadline_after_the_first_epoch, daemon=True).start()
    assert runner.run() == ExitCode.BUDGET_SPENT
    [run_dir] = [p.parent for p in out.glob("runs/*/run.json")]
    assert read_json(run_dir / "run.json")["state"] == "preempted" and (run_dir / "last.ckpt").exists()
    df, _ = sweep_status.trials_frame(out)
    assert list(df["state"]) == ["waiting"] and list(df["run_id"]) == [run_dir.name]
    assert sweep_runner.run_local(str(path), Options(sweep_dir=out, poll_s=0.05), fixed) == 0
    record = read_json(run_dir / "run.json")
    assert record["state"] == "finished" and record["resumed_from_epoch"] >= 1
    epochs = [r["epoch"] for r in map(yaml.safe_load, (run_dir / "metrics.jsonl").read_text().splitlines())]
    assert epochs == [1, 2, 3, 4, 5, 6]
