"""Signals and kills around the offline runner, with the real finetune_resnet.py (issue 19, section 2): a
one-worker `local` stopped by SIGTERM, or by SIGINT after starting with SIGINT ignored (`nohup ... &`),
exits only once its trainer has checkpointed and its trial is requeued; a trainer killed by the
out-of-memory killer (SIGKILL) resumes from its checkpoint, once. Tiny runs: small_cnn at 32 px."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from lib.files import read_json
from lib.sweep import storage
from lib.sweep.options import Options
from tests.procs import started, wait_for

KIND = "subprocess"   # the real trainer or runner in child processes: in `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One math thread per trainer: the machine's few cores are shared."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _local(tmp_path, animals, cache_dir, epochs: int) -> tuple[list[str], Path]:
    spec = {"program": "finetune_resnet.py", "method": "grid", "metric": {"name": "best_val_acc", "goal": "maximize"},
            "parameters": {"model": {"value": "small_cnn"}, "strategy": {"value": "full"}, "lr": {"values": [3e-3]}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    fixed = {"data_dir": str(animals), "image_size": "32", "min_image_side": "16", "epochs": str(epochs),
             "batch_size": "16", "augment": "none", "val_fraction": "0.25", "test_fraction": "0.25",
             "device": "cpu", "cache_dir": cache_dir}
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "finetune_sweep.py"), "local", str(tmp_path / "s.yaml"), "--sweep_dir", str(out),
           *(x for k, v in fixed.items() for x in ("--set", f"{k}={v}"))]
    return cmd, out


def _trials(out: Path) -> list:
    return optuna.load_study(study_name="s", storage=storage.open_storage(Options(sweep_dir=out))).get_trials()


def _gone(pid: int) -> bool:
    """No such process, or a zombie nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # what a non-interactive shell gives a background job


@pytest.mark.parametrize("sig, inherited", [(signal.SIGTERM, None), (signal.SIGINT, "SIGINT ignored")],
                         ids=["sigterm", "sigint-after-nohup"])
def test_a_one_worker_runner_exits_after_its_trainer(tmp_path, animals, cache_dir, sig, inherited):
    """SIGTERM used to raise inside Thread.join, after which Python took the still-running worker for
    ended: the runner exited 130 at once, its trainer checkpointing alone, the trial left RUNNING. And a
    runner started with SIGINT ignored never heard Ctrl-C. Now both stop it the same way: the trainer
    checkpoints and is gone before the runner exits, the trial is requeued under its run id."""
    cmd, out = _local(tmp_path, animals, cache_dir, epochs=40)
    with started(cmd, stdout=subprocess.DEVNULL, preexec_fn=_ignore_sigint if inherited else None,
                 ready=lambda: list(out.glob("runs/*/metrics.jsonl")), timeout=240) as runner:
        assert runner.stop(sig, timeout=90) == 130, runner.err[-1500:]
    first, *copies = _trials(out)
    assert _gone(first.user_attrs["child_pid"])                       # not left checkpointing alone
    assert first.state.name == "FAIL" and [t.state.name for t in copies] == ["WAITING"]
    assert copies[0].user_attrs["requeued_because"] == "interrupted"
    assert copies[0].user_attrs["run_id"] == first.user_attrs["run_id"]
    run_dir = out / "runs" / first.user_attrs["run_id"]
    assert read_json(run_dir / "run.json")["state"] == "preempted" and (run_dir / "last.ckpt").exists()


def test_a_trainer_killed_by_sigkill_resumes_from_its_checkpoint_once(tmp_path, animals, cache_dir):
    """The out-of-memory killer's SIGKILL (exit -9) ended the trial FAIL, and the way back, --retry_failed,
    deletes its checkpoint. Now the trial is requeued and resumes from last.ckpt; killed again, it fails
    (once per trial: a run that is killed every time must not loop)."""
    cmd, out = _local(tmp_path, animals, cache_dir, epochs=60)

    def running_trainer(seen: set):
        trials = [t for t in _trials(out) if t.state.name == "RUNNING" and t.user_attrs.get("child_pid")]
        return next((t for t in trials if t.number not in seen), None)

    with started(cmd, ready=lambda: list(out.glob("runs/*/last.ckpt")), timeout=240) as runner:
        first = wait_for(lambda: running_trainer(set()), 60, "the first trainer", runner)
        run_dir = out / "runs" / first.user_attrs["run_id"]
        os.kill(first.user_attrs["child_pid"], signal.SIGKILL)
        copy = wait_for(lambda: running_trainer({first.number}), 120, "the requeued trial's trainer", runner)
        wait_for(lambda: (read_json(run_dir / "run.json").get("resumed_from_epoch") or 0) >= 1, 120,
                 "the resumed run", runner)
        os.kill(copy.user_attrs["child_pid"], signal.SIGKILL)
        assert runner.wait(timeout=120) == 1, runner.err[-1500:]   # no trial completed: exit 1
    trials = _trials(out)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert "SIGKILL" in trials[1].user_attrs["requeued_because"] and trials[1].user_attrs["run_id"] == run_dir.name
    assert trials[1].user_attrs["exit_code"] == -9 and "exit code -9" in trials[1].user_attrs["error"]
    assert "requeued, it resumes from its checkpoint" in runner.out
    assert (run_dir / "last.ckpt").exists()                            # kept: --retry_failed decides
