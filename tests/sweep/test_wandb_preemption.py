"""A preempted W&B sweep run's checkpoint outlives its machine. W&B puts the preempted run back on the
sweep's queue and the next agent, anywhere, starts it under the same run id (WANDB_RUN_ID) with the same
parameters (lib/train/tracking.py cites wandb's source). So, on SIGTERM under an online sweep, the real
finetune_resnet.py logs ``checkpoint-<run_id>`` (last.ckpt, run.json, metrics.jsonl); started on another
machine with that run id and no checkpoint there, it fetches the artifact and resumes from it. The W&B
server is the stand-in of tests/fakes (real SDK, offline records); the trainer is real (small_cnn, 32 px)."""
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from lib.records import RunRecord, read_json
from lib.train.run import fetch_preempted_checkpoint
from tests.fakes.wandb_api import logged_artifacts, offline_records
from tests.procs import started

KIND = "subprocess"   # the real trainer or runner in child processes: in `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "tests" / "fakes" / "wandb_server"
RUN_ID = "prmt0001"


def _agent_env(tmp_path, artifacts: dict) -> dict:
    """What `wandb agent` gives the run it starts (wandb_agent.py _command_run), online, plus the stand-in."""
    params = tmp_path / "wandb" / f"config-{RUN_ID}.yaml"
    params.parent.mkdir(parents=True, exist_ok=True)
    params.write_text(yaml.safe_dump({"lr": {"value": 3e-3}, "epochs": {"value": 3}}))
    return {**os.environ, "WANDB_MODE": "online", "WANDB_SWEEP_ID": "swp12345", "WANDB_RUN_ID": RUN_ID,
            "WANDB_SWEEP_PARAM_PATH": str(params), "WANDB_ERROR_REPORTING": "false", "WANDB_SILENT": "true",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SERVER), "FAKE_WANDB_ARTIFACTS": json.dumps(artifacts),
            "FAKE_WANDB_LOG": str(tmp_path / "asked.jsonl")}


def _argv(base_args, runs_dir):
    args = [a for a in base_args if not a.startswith(("--runs_dir", "--epochs"))]
    return [sys.executable, str(ROOT / "finetune_resnet.py"), *args, f"--runs_dir={runs_dir}",
            "--model=small_cnn", "--strategy=full"]


def _md5(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def _artifact_metadata(run_file: Path, name: str) -> dict:
    [rec] = [r for r in offline_records(run_file)
             if r.WhichOneof("record_type") == "artifact" and r.artifact.name == name]
    return json.loads(rec.artifact.metadata)


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_preempted_sweep_run_resumes_on_another_machine_from_its_wandb_checkpoint(tmp_path, base_args):
    # Machine A: the run's first start (W&B has no checkpoint of it), SIGTERM after its first checkpoint.
    a_runs, b_runs = tmp_path / "a" / "runs", tmp_path / "b" / "runs"
    a_dir = a_runs / RUN_ID
    with started(_argv(base_args, a_runs), env=_agent_env(tmp_path / "a", {}), stderr=subprocess.STDOUT,
                 ready=lambda: (a_dir / "last.ckpt").exists() and (a_dir / "metrics.jsonl").exists(),
                 timeout=240) as a:
        assert a.stop(signal.SIGTERM, timeout=120) == 3, a.out
    assert read_json(a_dir / "run.json")["state"] == "preempted"
    asked = [json.loads(line) for line in (tmp_path / "a" / "asked.jsonl").read_text().splitlines()]
    assert asked and asked[0][0].endswith(f"checkpoint-{RUN_ID}:latest") and asked[0][1] == "checkpoint"
    [wandb_file] = a_dir.glob(f"wandb/offline-run-*/run-{RUN_ID}.wandb")
    logged = logged_artifacts(wandb_file)[f"checkpoint-{RUN_ID}"]
    files = {name: a_dir / name for name in ("last.ckpt", "run.json", "metrics.jsonl")}
    assert logged["type"] == "checkpoint" and "latest" in logged["aliases"]
    assert logged["files"] == {name: _md5(path) for name, path in files.items()}   # exactly what was on disk
    done = _epochs(a_dir)
    metadata = _artifact_metadata(wandb_file, f"checkpoint-{RUN_ID}")
    assert metadata == {"epochs_logged": len(done)}

    # Machine B: W&B hands it the same run id; its disk has nothing of the run, W&B has the artifact.
    b = subprocess.run(_argv(base_args, b_runs), cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=_agent_env(tmp_path / "b", {f"checkpoint-{RUN_ID}:latest": {
                           "files": [str(p) for p in files.values()], "metadata": metadata}}))
    assert b.returncode == 0, b.stdout + b.stderr
    assert "checkpoint of its preempted start fetched from W&B" in b.stderr
    record = read_json(b_runs / RUN_ID / "run.json")
    assert record["state"] == "finished" and record["resumed_from_epoch"] == done[-1] >= 1
    assert _epochs(b_runs / RUN_ID) == [1, 2, 3]                   # A's epochs kept, the rest trained on B
    assert not (b_runs / RUN_ID / "last.ckpt").exists()
    [b_file] = (b_runs / RUN_ID).glob(f"wandb/offline-run-*/run-{RUN_ID}.wandb")
    assert f"checkpoint-{RUN_ID}" not in logged_artifacts(b_file)   # finished: nothing left to hand on


class _Tracker:
    def __init__(self):
        self.asked = []

    def fetch_checkpoint(self, dest, newer_than):
        self.asked.append(newer_than)
        return False


def test_a_checkpoint_here_is_replaced_only_by_one_that_got_further(tmp_path):
    """Preempted on A, resumed and preempted again on B, then handed back to A: A's own checkpoint is
    stale, so W&B's is fetched when it logged more epochs than A's record holds (and never offline)."""
    record = RunRecord(str(tmp_path), RUN_ID)
    online = {"WANDB_SWEEP_ID": "s", "WANDB_MODE": "online"}
    tracker = _Tracker()
    assert not fetch_preempted_checkpoint(record, tracker, online) and tracker.asked == [-1]   # nothing here
    for epoch in (1, 2):
        record.log_epoch({"epoch": epoch})
    (record.dir / "last.ckpt").write_bytes(b"x")
    fetch_preempted_checkpoint(record, tracker, online)
    fetch_preempted_checkpoint(record, tracker, {"WANDB_SWEEP_ID": "s", "WANDB_MODE": "offline"})
    assert tracker.asked == [-1, 2]
