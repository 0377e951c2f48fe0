"""What a study database and its artifact store say is input, not truth (issue 19, section 3), on a real
PostgreSQL server: run ids that name folders elsewhere, a damaged config, a wrong password or a server
that is not there are one line each; `report URL` and `export URL` read only from a store the user names,
and only inside it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

import finetune_sweep
from lib.sweep import storage
from tests.pg import PASSWORD

KIND = "subprocess"   # the real trainer or runner in child processes: in `make test`, not `make check`

SWEEP = {"yaml": {"method": "grid", "metric": {"name": "best_val_acc", "goal": "maximize"}}, "set": {}}


def _cli(capsys, *argv) -> tuple[int, str, list[str]]:
    code = finetune_sweep.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err
    return code, out, err.strip().splitlines()


def _study(url: str, *trials: dict, **study_attrs) -> optuna.Study:
    """A study "s" as a runner leaves it, with finished trials carrying ``trials``' user attributes."""
    study = optuna.create_study(study_name="s", storage=storage.open_rdb(url), direction="maximize")
    study.set_user_attr("sweep", SWEEP)
    for key, value in study_attrs.items():
        study.set_user_attr(key, value)
    for i, attrs in enumerate(trials):
        user_attrs = {"run_id": f"s-{i:03d}", "config": {"lr": 0.1 * (i + 1)},
                      "run": {"state": "finished", "summary": {"best_val_acc": 0.5 + i / 10}}, **attrs}
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5 + i / 10, user_attrs=user_attrs))
    return study


@pytest.mark.parametrize("attrs, needle", ids=["dotdot", "absolute", "int", "config-list"], argvalues=[
    ({"run_id": "../escape-x"}, "not a run id"),
    ({"run_id": "ABSOLUTE"}, "not a run id"),
    ({"run_id": 7}, "not a run id"),
    ({"config": [1, 2]}, "config that is not a mapping"),
])
def test_a_damaged_study_is_one_line_and_writes_nothing_outside(tmp_path, pg_url, elsewhere, capsys, attrs, needle):
    """`report URL` with a run id `../../x` wrote run.json outside its folder; an int run id was a TypeError,
    a config that is a list an AttributeError. Each is one line, exit 2, for report and export alike."""
    if attrs.get("run_id") == "ABSOLUTE":
        attrs = {"run_id": str(tmp_path / "abs-x")}
    _study(pg_url, {}, attrs)
    before = sorted(tmp_path.rglob("*"))
    for argv in (("report", pg_url, "--out", "rep"), ("export", pg_url, "--out", "exp", "--data_dir", tmp_path)):
        code, _, err = _cli(capsys, *argv)
        assert code == 2 and len(err) == 1 and needle in err[0], (argv[0], err)
    assert sorted(tmp_path.rglob("*")) == before
    if "config" in attrs:
        code, _, err = _cli(capsys, "status", pg_url)
        assert code == 2 and len(err) == 1 and needle in err[0], err


def test_a_wrong_password_or_no_server_is_one_line(pg_url, monkeypatch, capsys):
    _study(pg_url, {})
    monkeypatch.setenv("PGPASSWORD", "not-the-password")
    code, _, err = _cli(capsys, "status", pg_url)
    assert code == 2 and len(err) == 1 and "cannot read a study from" in err[0], err
    assert "password authentication failed" in err[0] and "not-the-password" not in err[0]
    code, _, err = _cli(capsys, "report", "postgresql://nobody@127.0.0.1:1/none")   # nothing listens on port 1
    assert code == 2 and len(err) == 1 and "cannot read a study from" in err[0], err


def _secret(tmp_path: Path) -> Path:
    """A private file (mode 0600) shaped like a run record: read, its name would show in the report."""
    secret = tmp_path / "private" / "secret.json"
    secret.parent.mkdir()
    secret.write_text(json.dumps({"id": "s-000", "name": "SECRET-NAME", "state": "finished", "config": {"lr": 0.1},
                                  "summary": {"best_val_acc": 0.5}}))
    os.chmod(secret, 0o600)
    return secret


def test_the_study_does_not_choose_the_store_report_and_export_read(tmp_path, pg_url, elsewhere, capsys):
    """A study attribute `artifact_store="/"` and an artifact id naming a private file made `export URL` copy
    it into the export folder, readable by all. The recorded store is read only once the user names it
    (--artifacts) or confirms it at a terminal; until then the report says so and uses what the study keeps."""
    secret = _secret(tmp_path)
    ids = {"run.json": str(secret).lstrip("/"), "model.safetensors": str(secret).lstrip("/")}
    _study(pg_url, {"artifacts": ids}, {}, artifact_store="/")
    code, out, err = _cli(capsys, "report", pg_url, "--out", "rep")
    assert code == 0, err
    assert any("--artifacts /" in line for line in err), err
    assert "SECRET-NAME" not in (elsewhere / "rep" / "runs.csv").read_text()
    code, _, err = _cli(capsys, "export", pg_url, "--out", "exp", "--data_dir", tmp_path)
    assert code == 2 and len(err) == 1 and "pass --artifacts /" in err[0], err
    assert not list(elsewhere.rglob("secret*")) and not (elsewhere / "exp" / "source_run").exists()


@pytest.mark.parametrize("how", ["dotdot", "symlink"])
def test_an_artifact_id_never_leaves_the_store(tmp_path, pg_url, elsewhere, capsys, how):
    """With the store named (--artifacts), an id `../secret.json` was Optuna's ValueError, and a symlink in
    the store led anywhere. Both are one line, exit 2, and nothing is copied."""
    secret, store = _secret(tmp_path), tmp_path / "store"
    store.mkdir()
    if how == "symlink":
        (store / "innocent").symlink_to(secret)
    artifact_id = "../private/secret.json" if how == "dotdot" else "innocent"
    _study(pg_url, {"artifacts": {"run.json": artifact_id, "model.safetensors": artifact_id}})
    for argv in (("report", pg_url, "--out", "rep", "--artifacts", store),
                 ("export", pg_url, "--out", "exp", "--artifacts", store, "--data_dir", tmp_path)):
        code, _, err = _cli(capsys, *argv)
        assert code == 2 and len(err) == 1 and "outside the artifact store" in err[0], (argv[0], err)
    assert not list(elsewhere.rglob("*.json")) and not list(elsewhere.rglob("*.safetensors"))
