"""The contract between the offline sweep runner and the real finetune_resnet.py (no fake trainer):
a pruned trial ends pruned for good, and a runner stopped by SIGTERM leaves no trainer behind and its
trial resumes where it stopped. Tiny runs: small_cnn at 32 px on 160 real Animal-MNIST images."""
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from lib.files import read_json
from lib.sweep import runner as sweep_runner
from lib.sweep import storage
from lib.sweep.options import Options
from tests.procs import started

KIND = "subprocess"   # the real trainer or runner in child processes: in `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One math thread per trainer: on a few shared cores, oversubscribed OpenMP threads make a 0.8 s
    epoch take 8 s (the runner only sets a share when the variable is unset)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _sweep(tmp_path, lrs, **extra) -> str:
    spec = {"program": "finetune_resnet.py", "method": "grid", "metric": {"name": "best_val_acc", "goal": "maximize"},
            "parameters": {"model": {"value": "small_cnn"}, "strategy": {"value": "full"}, "lr": {"values": lrs}},
            **extra}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _fixed(animals, cache_dir, epochs) -> dict:
    return {"data_dir": str(animals), "image_size": "32", "min_image_side": "16", "epochs": str(epochs),
            "batch_size": "16", "augment": "none", "val_fraction": "0.25", "test_fraction": "0.25",
            "device": "cpu", "cache_dir": cache_dir}


def _study_trials(sweep_dir: Path):
    meta = read_json(sweep_dir / "sweep.json")
    opts = Options(sweep_dir=sweep_dir)
    return optuna.load_study(study_name=meta["name"], storage=storage.open_storage(opts)).get_trials()


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_hyperband_prunes_real_runs_for_good(tmp_path, animals, cache_dir):
    """The runner stops a pruned trial with SIGTERM; the trainer used to take that for preemption, and the
    trial was requeued and resumed to the end. One bracket (s: 0), so the trials compete: the good lr runs
    to the end, the hopeless ones are pruned after their first epoch and stay pruned."""
    f = _sweep(tmp_path, [3e-3, 1e-7, 2e-7], early_terminate={"type": "hyperband", "min_iter": 1, "eta": 2, "s": 0})
    out = tmp_path / "out"
    opts = dict(sweep_dir=out, poll_s=0.05)
    assert sweep_runner.run_local(f, Options(**opts), _fixed(animals, cache_dir, epochs=5)) == 0
    trials = _study_trials(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "PRUNED"]   # none requeued
    for t in trials[1:]:
        run_dir = out / "runs" / t.user_attrs["run_id"]
        record = read_json(run_dir / "run.json")
        assert record["state"] == "pruned" and t.user_attrs["exit_code"] == 4     # said by the trainer itself
        epochs = [r["epoch"] for r in map(yaml.safe_load, (run_dir / "metrics.jsonl").read_text().splitlines())]
        assert epochs and epochs == list(range(1, len(epochs) + 1)) and len(epochs) < 5   # kept, stopped early
        assert not (run_dir / "last.ckpt").exists() and "pruned by the sweep" in (run_dir / "output.log").read_text()
    assert sweep_runner.run_local(f, Options(**opts), _fixed(animals, cache_dir, epochs=5)) == 0
    assert [t.state.name for t in _study_trials(out)] == ["COMPLETE", "PRUNED", "PRUNED"]   # for good


def test_sigterm_to_the_runner_stops_its_trainer_and_the_trial_resumes(tmp_path, animals, cache_dir):
    """SIGTERM used to kill the runner alone, leaving its trainer running (and the next `local` started a
    second one in the same run folder). Now it is Ctrl-C: the trainer checkpoints, the trial is requeued,
    the runner exits 130, and the next `local` resumes the run from its checkpoint."""
    f, out = _sweep(tmp_path, [3e-3]), tmp_path / "out"
    fixed = _fixed(animals, cache_dir, epochs=12)   # epochs enough to be mid-run when SIGTERM lands on a busy machine
    cmd = [sys.executable, str(ROOT / "finetune_sweep.py"), "local", f, "--sweep_dir", str(out),
           *(x for k, v in fixed.items() for x in ("--set", f"{k}={v}"))]
    with started(cmd, stdout=subprocess.DEVNULL, ready=lambda: list(out.glob("runs/*/metrics.jsonl")),
                 timeout=180) as runner:
        assert runner.stop(signal.SIGTERM, timeout=120) == 130, runner.err[-1500:]   # the runner alone
    first = _study_trials(out)[0]
    assert _gone(first.user_attrs["child_pid"])                               # no trainer left behind
    run_dir = out / "runs" / first.user_attrs["run_id"]
    assert read_json(run_dir / "run.json")["state"] == "preempted" and (run_dir / "last.ckpt").exists()
    assert sweep_runner.run_local(f, Options(sweep_dir=out, poll_s=0.05), fixed) == 0
    trials = [t for t in _study_trials(out) if t.state.name != "FAIL"]
    assert [t.state.name for t in trials] == ["COMPLETE"] and trials[0].user_attrs["run_id"] == run_dir.name
    record = read_json(run_dir / "run.json")
    assert record["state"] == "finished" and record["resumed_from_epoch"] >= 1
    epochs = [r["epoch"] for r in map(yaml.safe_load, (run_dir / "metrics.jsonl").read_text().splitlines())]
    assert epochs == list(range(1, 13))
