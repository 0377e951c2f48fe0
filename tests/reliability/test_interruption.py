"""Interruption: SIGTERM during training saves a resumable checkpoint, marks the run preempted and exits
non-zero; starting the same run_id again resumes it and ends with the same metrics and weights as a run
that was never interrupted (CPU, fixed seed)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lib.demo_data import prepare
from lib.records import read_json

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def more_animals(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("more-animals"), per_class=150, classes=4, seed=2)


def rows(run_dir):
    return [{k: v for k, v in json.loads(x).items() if k != "time_s"}
            for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sigterm_then_resume_equals_an_uninterrupted_run(more_animals, tmp_path, cache_dir):
    args = [sys.executable, "finetune_resnet.py", f"--data_dir={more_animals}", f"--runs_dir={tmp_path}",
            f"--cache_dir={cache_dir}", "--model=small_cnn", "--strategy=full", "--epochs=5", "--image_size=32",
            "--min_image_side=16", "--augment=light", "--dropout=0.3", "--batch_size=32", "--device=cpu",
            "--scheduler=cosine", "--optimizer=adamw"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    subprocess.run(args + ["--run_id=straight"], env=env, check=True, cwd=ROOT, capture_output=True, timeout=300)

    proc = subprocess.Popen(args + ["--run_id=cut"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)                       # during epoch 3 of 5
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-1500:]
    rec = read_json(tmp_path / "cut" / "run.json")
    assert rec["state"] == "preempted" and rec["preempted_by"] == "SIGTERM"
    assert (tmp_path / "cut" / "last.ckpt").exists()
    assert "--run_id=cut" in err.strip().splitlines()[-1]

    done = subprocess.run(args + ["--run_id=cut"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    rec = read_json(tmp_path / "cut" / "run.json")
    assert rec["state"] == "finished" and rec["resumed_from_epoch"] >= 2
    straight = read_json(tmp_path / "straight" / "run.json")
    assert rows(tmp_path / "cut") == rows(tmp_path / "straight")
    for key in ("best_val_acc", "test_acc", "test_loss", "best_epoch"):
        assert rec["summary"][key] == straight["summary"][key]
    a, b = load_file(tmp_path / "cut" / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    assert all(a[k].equal(b[k]) for k in a)
    assert not (tmp_path / "cut" / "last.ckpt").exists()    # removed once finished
