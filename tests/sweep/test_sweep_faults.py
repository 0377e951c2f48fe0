"""Faults in the offline sweep runner (issue 19, section 2 and 3): a runner killed while it recovers a
trial, a new study in an old sweep dir, hyperband at the last epoch, `--retry_failed` with `--confirm_top`,
YAML that expands without end, run ids from a damaged study, and escape sequences in a trial's error.
The fake trainer (tests/fakes/fake_trainer.py) keeps each run to a fraction of a second."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from finetune_sweep import main
from lib.files import read_json
from lib.sweep import recovery, samplers, storage
from lib.sweep import runner as sweep_runner
from lib.sweep import spec as sweep_spec
from lib.sweep import status as sweep_status
from lib.sweep.options import Options
from lib.sweep.trial import TrialProcess
from tests.procs import started, wait_for

KIND = "subprocess"   # the real trainer or runner in child processes: in `make test`, not `make check`

FAKE = str(Path(__file__).parents[1] / "fakes" / "fake_trainer.py")
ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, spec, name="s.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def fake_sweep(method, parameters, **extra) -> dict:
    return {"program": FAKE, "method": method, "metric": {"name": "best_val_acc", "goal": "maximize"},
            "parameters": parameters, **extra}


def local(sweep_file, sweep_dir, **opts) -> int:
    return sweep_runner.run_local(sweep_file, Options(sweep_dir=Path(sweep_dir), poll_s=0.05, **opts))


def study_of(sweep_dir) -> optuna.Study:
    meta = read_json(Path(sweep_dir) / "sweep.json")
    return optuna.load_study(study_name=meta["name"], storage=storage.open_storage(Options(sweep_dir=Path(sweep_dir))))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# --- recovery --------------------------------------------------------------------------------------------
def test_a_runner_killed_while_it_recovers_a_trial_loses_nothing(tmp_path, monkeypatch):
    """Runner A is killed alone: its trainer (one that ignores SIGTERM) runs on. Runner B finds the trial,
    and used to fail it first, then wait up to 60 s in silence for the trainer, then requeue it: B killed
    in that wait left the trial FAIL with no copy, and a plain `local` did nothing. Now B enqueues the copy
    first and says what it waits for; killed there, the next runner stops the trainer and runs the copy."""
    f = write(tmp_path, fake_sweep("grid", {"lr": {"value": 0.5}, "epochs": {"value": 300}, "sleep": {"value": 0.1},
                                            "resume": {"value": True}, "ignore_sigterm": {"value": True}}))
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "finetune_sweep.py"), "local", f, "--sweep_dir", str(out)]
    with started(cmd, stdout=subprocess.DEVNULL) as a:
        wait_for(lambda: list(out.glob("runs/*/metrics.jsonl")), 120, "runner A's first epoch", a)
        a.send(signal.SIGKILL)
        a.wait()
    orphan = study_of(out).get_trials()[0].user_attrs["child_pid"]
    try:
        with started(cmd, ready="recovery: stopping the trainer its dead runner left running") as b:
            b.send(signal.SIGKILL)                      # in the wait for the trainer to stop
            b.wait()
        trials = study_of(out).get_trials()
        assert [t.state.name for t in trials] == ["FAIL", "WAITING"]         # the copy is there
        assert trials[1].user_attrs["retry_of"] == 0 and trials[1].user_attrs["orphan"]["child_pid"] == orphan
        assert "60 s" in b.out
        monkeypatch.setattr(recovery, "CHILD_STOP_S", 1)   # the trainer ignores SIGTERM: killed after 1 s
        assert local(f, out) == 0
    finally:
        if recovery.is_trainer(orphan, "s-000"):   # the test failed before the runner stopped it
            os.kill(orphan, signal.SIGKILL)
    trials = study_of(out).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"] and trials[1].user_attrs["run_id"] == "s-000"
    assert read_json(out / "runs" / "s-000" / "run.json")["state"] == "finished"


# --- a new study in an old sweep dir -----------------------------------------------------------------------
def test_a_new_trial_never_takes_an_existing_run_folder(tmp_path):
    """A folder left by a deleted study (preempted, with its checkpoint) used to be taken by trial 0 of a new
    study, which resumed it under another configuration. Finished or not, it is skipped and left as it was."""
    out = tmp_path / "out"
    old = out / "runs" / "s-000"
    old.mkdir(parents=True)
    (old / "run.json").write_text(json.dumps({"id": "s-000", "state": "preempted", "config": {"lr": 0.9}}))
    (old / "last.ckpt").write_bytes(b"another configuration's checkpoint")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.1, 0.2]}, "resume": {"value": True}}))
    assert local(f, out) == 0
    ids = sorted(t.user_attrs["run_id"] for t in study_of(out).get_trials())
    assert ids == ["s-000-2", "s-001"]
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before


# --- hyperband ----------------------------------------------------------------------------------------------
def test_hyperband_never_prunes_a_run_at_its_last_epoch(tmp_path, monkeypatch):
    """With max_iter equal to the epochs, a run whose every epoch had run was pruned while it tested (exit 0,
    then its record rewritten finished -> pruned). A pruner that prunes everything shows it: a 3-epoch run is
    pruned at its first, a 1-epoch run (its first epoch is its last) finishes."""
    monkeypatch.setattr(samplers, "pruner", lambda sweep: optuna.pruners.ThresholdPruner(lower=2.0))
    f = write(tmp_path, fake_sweep("grid", {"lr": {"value": 0.5}, "epochs": {"values": [1, 3]},
                                            "sleep": {"value": 0.3}, "linger": {"value": 1.0}},
                                   early_terminate={"type": "hyperband", "min_iter": 1, "eta": 2}))
    out = tmp_path / "out"
    assert local(f, out) == 0
    by_epochs = {t.user_attrs["config"]["epochs"]: t for t in study_of(out).get_trials()}
    assert by_epochs[3].state.name == "PRUNED"
    assert by_epochs[1].state.name == "COMPLETE"
    assert read_json(out / "runs" / by_epochs[1].user_attrs["run_id"] / "run.json")["state"] == "finished"


def test_a_finished_record_is_never_relabelled_pruned(tmp_path):
    """Whatever the runner meant (it asked the run to stop as pruned), a run that finished with exit 0 is a
    result: the trial completes and its run.json stays as the trainer wrote it."""
    f = write(tmp_path, fake_sweep("grid", {"lr": {"value": 0.5}},
                                   early_terminate={"type": "hyperband", "min_iter": 1, "eta": 2}))
    study = optuna.create_study(direction="maximize")
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"id": "r", "state": "finished", "summary": {"best_val_acc": 0.7}}))
    before = (run_dir / "run.json").read_bytes()
    process = TrialProcess(sweep_spec.load(f), Options(sweep_dir=tmp_path), study, study.ask(), "r")
    outcome = process.outcome(0, pruned=True)
    assert outcome.state.name == "COMPLETE" and outcome.value == 0.7
    assert (run_dir / "run.json").read_bytes() == before


# --- retry_failed with confirm_top ------------------------------------------------------------------------------
def test_retry_failed_with_confirm_top_retries_each_failed_trial_once(tmp_path):
    """`local --retry_failed --confirm_top N` opens the study twice (the grid, then its top N): each open
    retried the failed trials, so each ran twice in one call."""
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.2, 0.4]}, "fail": {"values": [False, True]}}))
    out = tmp_path / "out"
    assert local(f, out, confirm_top=1, repeats=2) == 0
    assert local(f, out, confirm_top=1, repeats=2, retry_failed=True) == 0
    retried = [t for t in study_of(out).get_trials() if t.user_attrs.get("requeued_because") == "--retry_failed"]
    assert len(retried) == 2 and len({t.user_attrs["retry_of"] for t in retried}) == 2   # the 2 failed, once each


# --- YAML that never ends ------------------------------------------------------------------------------------------
BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"]
                 + [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]"
                    for a, b in zip("abcdefgh", "bcdefghi", strict=True)]) + "\n"


def test_an_alias_bomb_sweep_file_is_one_line_at_once(tmp_path):
    """1 KB of nested aliases (`&a [*a, *a, ...]`) expands to 387 million values: `local` spun on it for
    minutes. It is refused once read, in one line, exit 2, nothing written."""
    spec = fake_sweep("grid", {"lr": {"values": [0.1]}})
    path = tmp_path / "bomb.yaml"
    path.write_text(yaml.safe_dump(spec) + BOMB)
    assert len(path.read_bytes()) < 1500
    cmd = [sys.executable, str(ROOT / "finetune_sweep.py"), "local", str(path), "--sweep_dir", str(tmp_path / "out")]
    with started(cmd) as proc:
        assert proc.wait(timeout=60) == 2
    err = proc.err.strip().splitlines()
    assert len(err) == 1 and "expands to more than" in err[0], err
    assert not (tmp_path / "out").exists()


# --- what a study says is input --------------------------------------------------------------------------------
@pytest.mark.parametrize("run_id", ["../../escape", "ABSOLUTE", 7])
def test_run_ids_from_the_study_are_checked_before_any_folder_is_made(tmp_path, capsys, run_id):
    """A trial whose run id was `/abs/path/x` or `../../x` made the runner take a folder outside the sweep
    dir, write its trial.json and upload its weights; an int was a TypeError. One line, exit 2, nothing made."""
    run_id = str(tmp_path / "elsewhere") if run_id == "ABSOLUTE" else run_id
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.1]}}))
    out = tmp_path / "a" / "b" / "out"
    assert local(f, out) == 0
    study_of(out).enqueue_trial({}, user_attrs={"queued": True, "point": {"lr": 0.3}, "config": {"lr": 0.3},
                                                "run_id": run_id})
    listing = sorted(str(p) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert main(["local", f, "--sweep_dir", str(out)]) == 2
    line = one_error_line(capsys)
    assert "not a run id" in line and repr(str(run_id))[:20] in line
    assert sorted(str(p) for p in tmp_path.rglob("*")) == listing


def test_status_shows_escape_sequences_in_an_error_escaped(tmp_path):
    """A trial's error is the tail of its trainer's output: escape sequences there cleared the screen or
    retitled the terminal of whoever ran `status`."""
    program = tmp_path / "hostile.py"
    program.write_text("import sys\nsys.stderr.write('\\x1b]0;owned\\x07\\x1b[2Jboom\\n')\nsys.exit(1)\n")
    f = write(tmp_path, {**fake_sweep("grid", {"lr": {"values": [0.1]}}), "program": str(program)})
    assert local(f, tmp_path / "out") == 1   # no trial completed
    table = sweep_status.status_table(tmp_path / "out")
    assert "\x1b" not in table and "\x07" not in table
    assert "\\x1b[2Jboom" in table and "\\x1b]0;owned\\x07" in table
