"""`local --confirm_top N --repeats K`: once the grid is done, its N best configurations run again with
K seeds in the same study (the fake trainer's metric is its lr), and the report groups them per configuration."""
import json

import pytest

from lib.report import build_report
from lib.sweep import status as sweep_status
from lib.sweep.spec import SweepError
from tests.sweep.test_sweep_local import fake_sweep, local, trials, write

KIND = "subprocess"   # the real trainer or runner in child processes: in `make test`, not `make check`

GRID = {"lr": {"values": [0.2, 0.8, 0.4, 0.6]}, "seed": {"value": 7}, "epochs": {"value": 2}}
CONFIRMED = [(0.2, 7), (0.4, 7), (0.6, 7), (0.6, 8), (0.6, 9), (0.8, 7), (0.8, 8), (0.8, 9)]


def lr_seed(sweep_dir):
    df = trials(sweep_dir)
    # --set to a fake program: text
    return sorted((lr, int(seed)) for lr, seed in zip(df["lr"], df["seed"], strict=True))


def test_the_top_configurations_get_more_seeds_once_the_grid_is_done(tmp_path, capsys):
    f, out = write(tmp_path, fake_sweep("grid", GRID)), tmp_path / "out"
    assert local(f, out, confirm_top=2, repeats=3, count=2) == 0          # the grid is not done: no confirm yet
    assert "once the grid's 4 remaining trial(s) are done" in capsys.readouterr().out
    assert lr_seed(out) == [(lr, 7) for lr in (0.2, 0.4, 0.6, 0.8)]
    assert local(f, out, confirm_top=2, repeats=3, count=3) == 0          # the grid ends, then 1 confirm trial
    assert "(trials 1, 3) with 3 seeds: 4 trial(s) enqueued" in capsys.readouterr().out
    assert local(f, out) == 0                                            # a plain run continues the rest
    assert lr_seed(out) == CONFIRMED and set(trials(out)["state"]) == {"complete"}
    assert local(f, out, confirm_top=2, repeats=3, workers=2) == 0        # again: nothing is added twice
    assert "0 trial(s) enqueued, all already in the study" in capsys.readouterr().out
    assert lr_seed(out) == CONFIRMED
    table = sweep_status.status_table(out)
    assert "seed" in table.splitlines()[0] and "trials: complete 8" in table
    seeds = sorted((r["config"]["lr"], int(r["config"]["seed"])) for r in
                   (json.loads(p.read_text()) for p in (out / "runs").glob("*/run.json")))
    assert seeds == CONFIRMED                                            # the trainer got each seed
    report = build_report(out, tmp_path / "report")
    groups = sorted((g["config"].get("lr"), sorted(g["seeds"])) for g in report["seed_groups"])
    assert groups == [(0.6, [7, 8, 9]), (0.8, [7, 8, 9])]                # each with its first run


def test_a_set_seed_is_where_the_confirm_seeds_start(tmp_path):
    f, out = write(tmp_path, fake_sweep("grid", GRID)), tmp_path / "out"
    assert local(f, out, fixed={"seed": "100"}, confirm_top=1, repeats=2, workers=2) == 0
    assert lr_seed(out) == [(0.2, 100), (0.4, 100), (0.6, 100), (0.8, 100), (0.8, 101)]


@pytest.mark.parametrize("method, params, opts, needle", [
    ("grid", GRID, {"confirm_top": 2}, "K >= 2 seeds"),
    ("random", {"lr": {"min": 0.1, "max": 0.9}}, {"confirm_top": 2, "repeats": 3}, "needs a grid sweep"),
    ("grid", {**GRID, "seed": {"values": [1, 2]}}, {"confirm_top": 2, "repeats": 3}, "swept `seed`"),
])
def test_confirm_that_cannot_run_is_refused_before_any_trial(tmp_path, method, params, opts, needle):
    with pytest.raises(SweepError, match=needle):
        local(write(tmp_path, fake_sweep(method, params)), tmp_path / "out", **opts)
    assert not (tmp_path / "out").exists()


def test_a_tie_goes_to_the_smaller_model_in_status_and_confirm(tmp_path, capsys):
    """Both trials reach the same metric (lr 2 caps at 1.0), the second with the smaller model: it is the
    configuration confirmed and the best in status (lib.selection: the metric, then size, then the run id)."""
    grid = {"lr": {"value": 2.0}, "size": {"values": [9.0, 3.0]}, "seed": {"value": 7}, "epochs": {"value": 1}}
    f, out = write(tmp_path, fake_sweep("grid", grid)), tmp_path / "out"
    assert local(f, out, confirm_top=1, repeats=2) == 0
    assert "(trials 1) with 2 seeds: 1 trial(s) enqueued" in capsys.readouterr().out
    assert sorted(zip(trials(out)["size"], trials(out)["seed"], strict=True)) == [(3.0, 7), (3.0, 8), (9.0, 7)]
    best = [line for line in sweep_status.status_table(out).splitlines() if line.startswith("best:")]
    assert best == ["best: trial 1 (s-001) best_val_acc = 1.0000  [seed=7, size=3]"], best
