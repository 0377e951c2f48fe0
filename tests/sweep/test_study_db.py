"""Results and weights that any machine can read: a study in a real PostgreSQL server, with its trials'
files in an Optuna artifact store, gives `status`, `report` and `export` to a folder that holds none of
its runs (the host's sweep dir is deleted first); `--study` picks one of several studies in a database."""
from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

import finetune_sweep
from lib.files import read_json
from lib.sweep import runner as sweep_runner
from lib.sweep import storage
from lib.sweep import study as sweep_study
from lib.sweep.options import Options
from tests.pg import PASSWORD

KIND = "subprocess"   # the real trainer or runner in child processes: in `make test`, not `make check`

FAKE = str(Path(__file__).parents[1] / "fakes" / "fake_trainer.py")


def _sweep(tmp_path, name, program, parameters) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"program": program, "method": "grid", "parameters": parameters,
                                    "metric": {"name": "best_val_acc", "goal": "maximize"}}))
    return str(path)


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = finetune_sweep.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err
    return code, out, err


def _trials(url, name) -> dict[str, float]:
    study, _, _ = storage.study_in_database(url, name)
    return {t.user_attrs["run_id"]: t.value for t in sweep_study.counted(study)}


def test_report_and_export_from_a_folder_without_the_runs(tmp_path, pg_url, animals, cache_dir, monkeypatch,
                                                          elsewhere, capsys):
    """Two real tiny runs (small_cnn, 32 px); their run.json, metrics and best weights go to a shared folder.
    The report has every run's full record (test predictions: a confusion matrix); the export is the
    winner's, made from the very weights its trainer wrote."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # two cores, shared: no oversubscribed trainer threads
    f = _sweep(tmp_path, "real", "finetune_resnet.py", {"model": {"value": "small_cnn"}, "strategy": {"value": "full"},
                                                        "lr": {"values": [3e-3, 1e-7]}})
    fixed = {"data_dir": str(animals), "image_size": "32", "min_image_side": "16", "epochs": "1", "batch_size": "16",
             "augment": "none", "val_fraction": "0.25", "test_fraction": "0.25", "device": "cpu",
             "cache_dir": cache_dir}
    host, store = tmp_path / "host-a", tmp_path / "shared" / "artifacts"
    opts = Options(sweep_dir=host, storage=pg_url, artifacts=str(store), poll_s=0.05, workers=2)
    assert sweep_runner.run_local(f, opts, fixed) == 0
    values = _trials(pg_url, "real")
    weights = {r: (host / "runs" / r / "model.safetensors").read_bytes() for r in values}
    shutil.rmtree(host)                                   # nothing of the runs is left on any disk but the store

    code, out, _ = _cli(capsys, "status", pg_url)
    assert code == 0 and "trials: complete 2" in out
    code, out, _ = _cli(capsys, "report", pg_url, "--out", "report", "--artifacts", store)
    assert code == 0, out
    table = pd.read_csv(elsewhere / "report" / "runs.csv")
    assert dict(zip(table["run_id"], table["best_val_acc"], strict=True)) == pytest.approx(values)
    assert (elsewhere / "report" / "confusion_matrix.png").is_file()   # the full record: test predictions

    # the record's data_dir chooses no local files: the images come from --data_dir only
    code, _, err = _cli(capsys, "export", pg_url, "--out", "export", "--artifacts", store)
    assert code == 2 and "pass --data_dir" in err and len(err.splitlines()) == 1, err
    code, out, _ = _cli(capsys, "export", pg_url, "--out", "export", "--artifacts", store, "--data_dir", animals)
    assert code == 0, out
    exported = read_json(elsewhere / "export" / "export.json")
    assert values[exported["run_id"]] == max(values.values())
    fetched = elsewhere / "export" / "source_run" / exported["run_id"]
    assert (fetched / "model.safetensors").read_bytes() == weights[exported["run_id"]]
    assert (elsewhere / "export" / "model.onnx").is_file() and exported["parity_top1_agreement"] == 1.0


def test_several_studies_in_one_database_take_study(tmp_path, pg_url, elsewhere, capsys):
    """Without an artifact store the study still gives the report its runs (config, summary, per-epoch
    metric), and export says in one line why it cannot fetch weights."""
    params = {"lr": {"values": [0.1, 0.3]}, "epochs": {"value": 2}}
    for name in ("alpha", "beta"):
        opts = Options(sweep_dir=tmp_path / name, storage=pg_url, poll_s=0.05)
        assert sweep_runner.run_local(_sweep(tmp_path, name, FAKE, params), opts) == 0
    shutil.rmtree(tmp_path / "alpha")

    code, _, err = _cli(capsys, "status", pg_url)
    assert code == 2 and "2 studies (alpha, beta)" in err and "--study" in err and len(err.splitlines()) == 1
    code, _, err = _cli(capsys, "report", pg_url, "--study", "gamma")
    assert code == 2 and "no study 'gamma'" in err and "alpha, beta" in err
    code, out, _ = _cli(capsys, "status", pg_url, "--study", "alpha")
    assert code == 0 and "alpha-001" in out and "beta" not in out

    code, out, _ = _cli(capsys, "report", pg_url, "--study", "alpha", "--out", "report")
    assert code == 0, out
    table = pd.read_csv(elsewhere / "report" / "runs.csv")
    assert dict(zip(table["run_id"], table["best_val_acc"], strict=True)) == pytest.approx(
        {"alpha-000": 0.1, "alpha-001": 0.3})
    assert "alpha-001" in out                              # the verdict names the winner

    code, _, err = _cli(capsys, "export", pg_url, "--study", "alpha", "--out", "export", "--data_dir", tmp_path)
    assert code == 2 and "artifact store" in err and "--artifacts" in err and len(err.splitlines()) == 1


def test_an_artifact_store_is_a_folder_every_machine_mounts_or_a_bucket(tmp_path, monkeypatch):
    from lib.errors import SweepError
    from lib.sweep import artifacts

    monkeypatch.chdir(tmp_path)
    assert artifacts.location("shared") == str(tmp_path / "shared")          # absolute: it means the same elsewhere
    assert artifacts.location("s3://bucket/") == "s3://bucket"
    for bad in ("s3://bucket/prefix", "ftp://host", "gs://"):
        with pytest.raises(SweepError, match="expected a folder, s3://BUCKET or gs://BUCKET"):
            artifacts.location(bad)
    study = optuna.create_study()
    assert artifacts.attach(study, None) is None and artifacts.reader(study, None) is None   # none: the default
    assert artifacts.attach(study, "shared") is not None and (tmp_path / "shared").is_dir()
    assert study.user_attrs["artifact_store"] == str(tmp_path / "shared")  # later runners and readers find it
    assert artifacts.reader(study, None) is None                             # a study names no store to read...
    assert artifacts.reader(study, None, confirm=lambda where: True) is not None   # ...the user confirms it
    (tmp_path / "shared").rmdir()                                             # a share not mounted here
    with pytest.raises(SweepError, match="not a folder on this machine: mount the shared folder"):
        artifacts.reader(study, None, confirm=lambda where: True)
    assert artifacts.reader(study, str(tmp_path)) is not None                # mounted elsewhere: --artifacts


def test_every_command_takes_the_database_url_soup_too(tmp_path, animals, cache_dir, monkeypatch, elsewhere, capsys):
    """One resolver for SOURCE: a study in SQLite (the same storage code as PostgreSQL) with its files in an
    artifact store, read from a folder that holds none of its runs: status, report, export and soup take the
    URL; export ships the run report.json recommends; soup fetches the runs' weights from the store."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    f = _sweep(tmp_path, "lite", "finetune_resnet.py", {"model": {"value": "small_cnn"}, "strategy": {"value": "full"},
                                                        "lr": {"values": [3e-3, 1e-3]}})
    fixed = {"data_dir": str(animals), "image_size": "32", "min_image_side": "16", "epochs": "1", "batch_size": "16",
             "augment": "none", "val_fraction": "0.25", "test_fraction": "0.25", "device": "cpu",
             "cache_dir": cache_dir}
    url, host = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "host"
    opts = Options(sweep_dir=host, storage=url, artifacts=str(tmp_path / "shared"), poll_s=0.05)
    assert sweep_runner.run_local(f, opts, fixed) == 0
    shutil.rmtree(host)

    code, out, _ = _cli(capsys, "status", url)
    assert code == 0 and "trials: complete 2" in out and "best: trial" in out
    store = ("--artifacts", tmp_path / "shared")   # named: what a study records is not read unasked
    code, out, _ = _cli(capsys, "report", url, "--out", "report", *store)
    assert code == 0, out
    recommended = read_json(elsewhere / "report" / "report.json")["recommended"]
    assert f"recommended: run {recommended['run_id']}: {recommended['reason']}" in out.splitlines()
    code, out, err = _cli(capsys, "export", url, "--out", "export", "--data_dir", animals, *store)
    assert code == 0, err
    assert read_json(elsewhere / "export" / "export.json")["run_id"] == recommended["run_id"]
    assert f"ships run {recommended['run_id']}: {recommended['reason']}" in out

    code, out, err = _cli(capsys, "soup", url, "--out", "soup", *store)   # one family: small_cnn, the same seed
    assert code == 0, err
    if out.startswith("soup of 2 run(s)"):
        record = read_json(elsewhere / "soup" / "run.json")
        assert record["state"] == "finished" and (elsewhere / "soup" / "model.safetensors").is_file()
    else:
        assert out.startswith("no soup: adding any other run to ") and not (elsewhere / "soup").exists()
    code, _, err = _cli(capsys, "soup", "nowhere", "--out", "soup2")
    assert code == 2 and "SOURCE is a sweep dir, a runs dir, one run folder, a database URL" in err
