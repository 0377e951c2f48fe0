"""The run record: run.json, metrics.jsonl and model.safetensors, readable without W&B; the best
checkpoint is what the test metrics come from; `wandb agent`'s contract (parameters file + env)."""
import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml

from lib.config import Config
from lib.files import read_json
from lib.records import EPOCH_METRICS, RunRecord
from lib.train import data, training
from lib.train.run import main
from tests.fakes.wandb_api import logged_artifacts, offline_records

SUMMARY_KEYS = {"best_val_acc", "best_epoch", "test_acc", "test_loss", "test_precision_macro",
                "test_recall_macro", "test_f1_macro", "train_val_gap", "trainable_params", "total_params",
                "model_size_mb", "epochs_run", "stopped_early", "train_time_s", "train_images_per_s",
                "best_val_balanced_acc", "test_balanced_acc", "test_mcc"}
ROW_KEYS = {"epoch", "phase", "lr", "time_s", *EPOCH_METRICS}   # every per-epoch metric a sweep may name


def only_run(runs_dir):
    (run_dir,) = [p for p in Path(runs_dir).iterdir() if p.name != ".cache"]   # .cache: the study's shared cache
    return run_dir, read_json(run_dir / "run.json")


def test_record_contents(base_args, tmp_path, animals):
    assert main(base_args + ["--model=small_cnn", "--strategy=full", "--run_id=rec1"]) == 0
    run_dir, rec = only_run(tmp_path / "runs")
    assert run_dir.name == "rec1" and rec["id"] == "rec1" and rec["state"] == "finished"
    assert rec["config"]["model"] == "small_cnn" and rec["config"]["run_id"] == "rec1"
    assert set(rec["summary"]) >= SUMMARY_KEYS
    assert rec["classes"] == ["bear", "bird", "cat", "cow"]
    split = rec["split"]
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 160
    assert not set(split["train"]) & set(split["test"])
    assert all((Path(animals) / p).is_file() for p in split["test"])
    assert rec["skipped"] == [] and rec["weights_source"]["kind"] == "none"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(set(r) >= ROW_KEYS for r in rows)
    assert not list(run_dir.glob(".*.tmp"))                      # atomic writes leave no temp files
    assert rec["summary"]["best_val_acc"] == max(r["val_acc"] for r in rows)


def test_best_checkpoint_reproduces_test_metrics(base_args, tmp_path, animals):
    assert main(base_args + ["--model=mobilenetv2_100", "--strategy=freeze", "--epochs=3", "--lr=0.02"]) == 0
    run_dir, rec = only_run(tmp_path / "runs")
    cfg = Config(**rec["config"])
    model = timm.create_model("mobilenetv2_100", num_classes=len(rec["classes"]))
    model.load_state_dict(RunRecord(cfg.runs_dir, rec["id"]).load_weights())
    dc = rec["data_config"]
    items = [(p, rec["classes"].index(Path(p).parent.name)) for p in rec["split"]["test"]]
    decoded = data.decode_split(Path(animals), items, data.resize_side(dc), dc["interpolation"], 16, [], "t")
    loader = data.loader(decoded, data.transforms(dc, "none", False), 16, 0, 0, train=False)
    result = training.evaluate(model, loader, training.Accel.for_config(cfg, torch.device("cpu")))
    assert result["acc"] == rec["summary"]["test_acc"]
    assert result["y_pred"].tolist() == rec["test_predictions"]["y_pred"]


def test_wandb_agent_contract(base_args, tmp_path):
    """`wandb agent` starts the program with ${args} and hands the run its parameters in a file named by
    WANDB_SWEEP_PARAM_PATH, plus WANDB_SWEEP_ID and WANDB_RUN_ID. With W&B offline, the run must pick
    the parameters up from wandb.config (which wins) and take the agent's run id."""
    params = tmp_path / "sweep-params.yaml"
    params.write_text(yaml.safe_dump({"wandb_version": 1, "lr": {"value": 0.003},
                                      "strategy": {"value": "full"}, "model": {"value": "small_cnn"}}))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SWEEP_ID": "abc123", "WANDB_RUN_ID": "agentrun1",
           "WANDB_SWEEP_PARAM_PATH": str(params), "WANDB_PROJECT": "p"}
    cmd = [sys.executable, "finetune_resnet.py", *base_args, "--lr=0.1", "--model=small_cnn", "--epochs=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir, rec = only_run(tmp_path / "runs")
    assert run_dir.name == "agentrun1"
    assert rec["config"]["lr"] == 0.003 and rec["config"]["strategy"] == "full"
    assert rec["wandb"] == {"mode": "offline", "run_id": "agentrun1", "sweep_id": "abc123"}
    assert list((run_dir / "wandb").glob("offline-run-*/run-agentrun1.wandb"))


def test_bad_sweep_parameter_fails_with_exit_2(base_args, tmp_path):
    params = tmp_path / "sweep-params.yaml"
    params.write_text(yaml.safe_dump({"lr": {"value": "fast"}}))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SWEEP_ID": "s", "WANDB_RUN_ID": "badrun",
           "WANDB_SWEEP_PARAM_PATH": str(params)}
    proc = subprocess.run([sys.executable, "finetune_resnet.py", *base_args, "--model=small_cnn"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "lr='fast' is not valid" in proc.stderr.strip().splitlines()[-1]


def test_wandb_run_logs_test_predictions_and_the_finished_record(base_args, tmp_path, monkeypatch):
    """What `report` and `export` read back from W&B: test predictions and classes in the summary, and
    the artifact model-<run_id>:best with the weights and the *finished* run record."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(base_args + ["--model=small_cnn", "--strategy=full", "--epochs=1", "--run_id=wb1"]) == 0
    run_dir, rec = only_run(tmp_path / "runs")
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-wb1.wandb")
    art = logged_artifacts(run_file)["model-wb1"]
    assert art["type"] == "model" and "best" in art["aliases"]
    assert sorted(art["files"]) == ["model.safetensors", "run.json"]
    md5 = base64.b64encode(hashlib.md5((run_dir / "run.json").read_bytes()).digest()).decode()
    assert art["files"]["run.json"] == md5 and rec["state"] == "finished"   # the final record, as on disk
    summary = {}
    for r in offline_records(run_file):
        if r.WhichOneof("record_type") == "summary":
            summary.update({u.key: json.loads(u.value_json) for u in r.summary.update})
    assert summary["test_y_true"] == rec["test_predictions"]["y_true"]
    assert summary["test_y_pred"] == rec["test_predictions"]["y_pred"]
    assert summary["classes"] == rec["classes"] and summary["best_val_acc"] == rec["summary"]["best_val_acc"]
    for key in ("best_val_balanced_acc", "test_balanced_acc", "test_mcc"):   # every RunSummary key, these too
        assert summary[key] == rec["summary"][key], key


@pytest.mark.parametrize("every,expected", [(1, [1, 2, 3]), (2, [2, 3]), (0, [3])])
def test_checkpoint_interval(base_args, monkeypatch, every, expected):
    """The resumable checkpoint: every N epochs and at the end of each phase."""
    from lib.train import run as run_module

    written = []
    monkeypatch.setattr(run_module.Hooks, "checkpoint", lambda self, state: written.append(state["progress"]["epoch"]))
    assert main(base_args + ["--model=small_cnn", "--strategy=full", "--epochs=3", f"--checkpoint_epochs={every}"]) == 0
    assert written == expected
