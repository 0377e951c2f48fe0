"""Interruption: SIGTERM during training saves a resumable checkpoint, marks the run preempted and exits
non-zero; starting the same run_id again resumes it and ends with the same metrics and weights as a run
that was never interrupted (CPU, fixed seed)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from lib.files import read_json
from lib.train.demo_data import prepare
from lib.train.run import main
from tests.procs import started

KIND = "subprocess"   # the real trainer or runner in child processes: in `make test`, not `make check`

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

    metrics = tmp_path / "cut" / "metrics.jsonl"
    with started(args + ["--run_id=cut"], env=env,
                 ready=lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, timeout=240) as proc:
        assert proc.stop(signal.SIGTERM, timeout=120) == 3, proc.err[-1500:]   # during epoch 3 of 5
        err = proc.err
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


def sigterm_after_rows(args: list[str], run_dir: Path, rows: int) -> int:
    """``main(args)`` in this process, sent a real SIGTERM once ``rows`` epochs are in its metrics.jsonl."""
    metrics = run_dir / "metrics.jsonl"

    def watch():
        deadline = time.time() + 120
        while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= rows):
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    saved = signal.signal(signal.SIGTERM, lambda *_: None)   # a signal after the run restored this: harmless
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        return main(args)
    finally:
        watcher.join(timeout=130)
        signal.signal(signal.SIGTERM, saved)


def test_a_resume_says_so_and_tests_the_checkpoints_best_weights(base_args, tmp_path, capsys, monkeypatch):
    """The best weights file runs ahead of the checkpoint (written when an epoch improves, the checkpoint every
    checkpoint_epochs): a kill in between leaves weights of an epoch that the resumed run retrains, maybe
    differently (GPU nondeterminism). The checkpoint is the truth: resuming writes its best weights back."""
    from lib.train import run as run_module
    from lib.train.training import Interrupted

    def preempted_while_testing(*_args, **_kwargs):
        raise Interrupted("SIGTERM")

    run_dir = tmp_path / "runs" / "cut"
    args = base_args + ["--model=small_cnn", "--strategy=full", "--epochs=3", "--run_id=cut"]
    with monkeypatch.context() as m:   # every epoch ran and was checkpointed; the test split was cut short
        m.setattr(run_module, "test_metrics", preempted_while_testing)
        assert main(args) == 3
    epoch = len(rows(run_dir))
    assert epoch == 3
    best = load_file(run_dir / "model.safetensors")
    # What a writer killed after saving an improved epoch but before its checkpoint leaves behind.
    save_file({k: v + 1.0 if v.is_floating_point() else v for k, v in best.items()}, run_dir / "model.safetensors")
    capsys.readouterr()

    # Resumed with nothing left to train, it goes straight to the test split.
    assert main(args) == 0
    assert f"resuming run cut from epoch {epoch}" in capsys.readouterr().err
    rec = read_json(run_dir / "run.json")
    assert rec["state"] == "finished" and rec["resumed_from_epoch"] == epoch
    final = load_file(run_dir / "model.safetensors")
    assert all(final[k].equal(best[k]) for k in best)


def test_a_checkpoint_resumes_only_under_the_configuration_it_was_made_with(base_args, tmp_path, capsys):
    """A new study in an old sweep dir, or a run id given twice, used to resume another configuration's
    checkpoint and record the mix as a run of the new one. The checkpoint carries the hash of what defines
    the run (lib.train.run.RUN_DEFINING_KEYS): another lr is one line and exit 2, and nothing is touched;
    bookkeeping (checkpoint_epochs, the run's name) may differ."""
    run_dir = tmp_path / "runs" / "cfg"
    args = base_args + ["--model=small_cnn", "--strategy=full", "--epochs=6", "--run_id=cfg"]
    assert sigterm_after_rows(args, run_dir, rows=1) == 3
    files = {name: (run_dir / name).read_bytes() for name in ("run.json", "metrics.jsonl", "last.ckpt")}
    capsys.readouterr()

    for other, changed in (("--lr=0.1", "lr: 0.001 -> 0.1"), ("--seed=7", "seed: 42 -> 7")):
        assert main(args + [other]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "was made with another configuration" in err[0] and changed in err[0], err
        assert {name: (run_dir / name).read_bytes() for name in files} == files   # nothing touched

    assert main(args + ["--checkpoint_epochs=2", "--run_name=renamed"]) == 0
    assert "resuming run cfg from epoch" in capsys.readouterr().err
    assert read_json(run_dir / "run.json")["state"] == "finished"


def test_a_damaged_checkpoint_and_record_start_the_run_over_with_a_warning(base_args, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "dmg"
    args = base_args + ["--model=small_cnn", "--strategy=full", "--epochs=25", "--run_id=dmg"]
    assert sigterm_after_rows(args, run_dir, rows=1) == 3
    ckpt = run_dir / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])     # a torn write
    (run_dir / "run.json").write_bytes(b"")                             # a lost one
    capsys.readouterr()

    assert main(args[:-2] + ["--epochs=2", "--run_id=dmg"]) == 0
    err = capsys.readouterr().err
    rec = read_json(run_dir / "run.json")
    assert rec["state"] == "finished" and rec["resumed_from_epoch"] is None
    assert [r["epoch"] for r in rows(run_dir)] == [1, 2]                # started over
    for name in ("run.json was damaged", "last.ckpt was damaged"):
        assert any(name in w for w in rec["warnings"]), rec["warnings"]
        assert f"warning: {name}" in err


@pytest.fixture(scope="module")
def big_images(tmp_path_factory):
    """2 classes x 80 photos of 3000 x 3000 px (hard links to one JPEG): decoding them takes tens of seconds."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("big")
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).resize((3000, 3000)).save(root / "one.jpg", quality=85)
    for cls in ("a", "b"):
        (root / "data" / cls).mkdir(parents=True)
        for i in range(80):
            os.link(root / "one.jpg", root / "data" / cls / f"{i}.jpg")
    return root / "data"


def test_sigterm_while_decoding_stops_within_seconds(big_images, tmp_path, cache_dir):
    args = [sys.executable, "finetune_resnet.py", f"--data_dir={big_images}", f"--runs_dir={tmp_path}",
            f"--cache_dir={cache_dir}", "--model=small_cnn", "--image_size=32", "--device=cpu", "--run_id=dec"]
    with started(args, ready=lambda: list((tmp_path / ".cache").glob(".tmp-decoded-*"))) as proc:   # decoding
        sent = time.time()
        code = proc.stop(signal.SIGTERM, timeout=30)
        took = time.time() - sent
    assert code == 3, proc.err[-1500:]
    assert took < 10, took                                 # not after the 160 images (tens of seconds)
    rec = read_json(tmp_path / "dec" / "run.json")
    assert rec["state"] == "preempted" and rec["preempted_by"] == "SIGTERM"
    assert not list((tmp_path / ".cache").glob(".tmp-*"))  # no half-built cache entry left behind


def test_ema_weights_survive_a_resume(base_args, tmp_path):
    """The EMA's averaged weights and step count are in the checkpoint: a run cut after epoch 2 and resumed
    evaluates the same EMA weights every epoch as one never cut, and keeps the same best weights."""
    args = base_args + ["--model=small_cnn", "--strategy=full", "--epochs=4", "--ema=true", "--ema_decay=0.9",
                        "--scheduler=cosine"]
    runs = tmp_path / "runs"
    assert main(args + ["--run_id=straight"]) == 0
    assert sigterm_after_rows(args + ["--run_id=cut"], runs / "cut", rows=2) == 3
    assert main(args + ["--run_id=cut"]) == 0
    cut, straight = rows(runs / "cut"), rows(runs / "straight")
    assert len(cut) == 4 and all("val_acc_ema" in r for r in cut)
    assert cut == straight
    a, b = read_json(runs / "cut" / "run.json"), read_json(runs / "straight" / "run.json")
    assert a["resumed_from_epoch"] >= 2
    for key in ("best_weights", "best_val_acc", "test_acc", "test_loss"):
        assert a["summary"][key] == b["summary"][key], key
    wa, wb = load_file(runs / "cut" / "model.safetensors"), load_file(runs / "straight" / "model.safetensors")
    assert all(wa[k].equal(wb[k]) for k in wa)


def test_a_resumed_run_keeps_the_epoch_its_monitor_picks_as_an_uncut_one(base_args, imbalanced, tmp_path):
    """monitor=val_balanced_acc with EMA, patience, a class-weighted loss and the balanced sampler on 4:1 data:
    the kept score, the early-stopping count and the sampler's draws are in the checkpoint, so a run cut
    after epoch 2 and resumed keeps the same epoch and weights as one never cut."""
    args = [a for a in base_args if not a.startswith("--data_dir=")] + [
        f"--data_dir={imbalanced}", "--model=small_cnn", "--strategy=full", "--epochs=5", "--lr=3e-3",
        "--monitor=val_balanced_acc", "--ema=true", "--ema_decay=0.9", "--patience=3",
        "--class_weighting=balanced", "--sampler=balanced"]
    runs = tmp_path / "runs"
    assert main(args + ["--run_id=straight"]) == 0
    assert sigterm_after_rows(args + ["--run_id=cut"], runs / "cut", rows=2) == 3
    assert main(args + ["--run_id=cut"]) == 0
    cut, straight = rows(runs / "cut"), rows(runs / "straight")
    assert cut == straight and all("val_balanced_acc_ema" in r for r in cut)
    a, b = read_json(runs / "cut" / "run.json"), read_json(runs / "straight" / "run.json")
    assert a["resumed_from_epoch"] >= 2
    for key in ("best_epoch", "best_weights", "best_val_acc", "best_val_balanced_acc", "stopped_early",
                "test_balanced_acc", "test_mcc"):
        assert a["summary"][key] == b["summary"][key], key
    wa, wb = load_file(runs / "cut" / "model.safetensors"), load_file(runs / "straight" / "model.safetensors")
    assert all(wa[k].equal(wb[k]) for k in wa)
