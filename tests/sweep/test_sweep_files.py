"""Every shipped W&B sweep file passes the product's own check (lib/sweep/spec.py: W&B's schema, the
metric and its goal, every parameter a config key with valid values, numbers as numbers, every grid point
a valid run), and W&B's own engine proposes runs the config accepts. Each refusal of the check is shown
on a broken sweep, through spec.load or the command a user runs: there is no validator of the tests' own.
Fast: no torch.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import sweeps
import yaml

import finetune_sweep
from lib import config as config_lib
from lib import records
from lib.sweep import spec as sweep_spec
from lib.sweep.spec import SweepError

ROOT = Path(__file__).resolve().parents[2]
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
EXPECTED = {"strategy_grid", "resnet50_freezing", "small_vs_pretrained", "resnet18_vs_mobilenetv3",
            "lr_search", "demo", "quickstart"}
GRID_RUNS = {"strategy_grid": 6, "resnet50_freezing": 6, "small_vs_pretrained": 4,
             "resnet18_vs_mobilenetv3": 2, "demo": 6, "quickstart": 8}  # as each file's description says


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def test_the_sweep_files_exist():
    assert EXPECTED <= {p.stem for p in SWEEP_FILES}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_passes_the_kits_own_checks(path, capsys):
    """What `create` and `local` check before anything starts, with no warning: a file for
    finetune_resnet.py, with a metric and its goal, a description, and as many grid points as it says."""
    sweep = sweep_spec.load(str(path))
    assert capsys.readouterr().err == ""
    assert sweep.ours and sweep.raw["metric"]["goal"] == sweep.goal == records.METRIC_GOALS[sweep.metric]
    assert sweep.raw.get("description"), "say in one line what the sweep is for"
    if sweep.method == "grid" and path.stem in GRID_RUNS:
        assert len(sweep.grid()) == GRID_RUNS[path.stem]


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_wandbs_engine_proposes_a_run_the_config_accepts(path):
    """W&B's own search engine (grid / random / bayes) picks the first run; it must build as a whole."""
    run = sweeps.next_run(_load(path), [])
    assert run is not None
    values = {}

    def walk(cfg):
        for k, v in cfg.items():
            if isinstance(v, dict) and "value" in v:
                v = v["value"]
            if isinstance(v, dict):  # a nested group
                walk(v)
            else:
                values[k] = v.item() if hasattr(v, "item") else v

    walk(run.config)
    config_lib.build(values)


def test_the_metrics_a_sweep_may_name_are_the_ones_the_run_record_page_documents():
    page = (ROOT / "docs" / "run-record.md").read_text()
    assert [k for k in sorted(records.RUN_METRICS | set(records.EPOCH_METRICS)) if f"`{k}`" not in page] == []


def test_demo_sweep_is_the_offline_cpu_study():
    sweep = sweep_spec.load(str(ROOT / "sweeps" / "demo.yaml"))
    params = {sweep_spec.leaf_name(p.name): p.config for p in sweep.params}
    assert sweep.method == "grid" and sweep.hyperband is None
    assert params["data_dir"]["value"] == "data/animal_mnist"  # what `make demo` writes
    recipes = params["recipe"]["values"]
    assert {r["strategy"] for r in recipes if r["model"] == "mobilenetv2_100"} == \
        {"freeze", "partial", "full", "two_phase", "surgical"}
    assert {r["model"] for r in recipes} == {"mobilenetv2_100", "small_cnn"}  # both work with no network


def test_lr_search_uses_hyperband_as_asked():
    cfg = _load(ROOT / "sweeps" / "lr_search.yaml")
    assert cfg["method"] == "bayes" and cfg["run_cap"] == 30
    assert cfg["early_terminate"] == {"type": "hyperband", "min_iter": 2, "eta": 2}
    assert cfg["parameters"]["lr"] == {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2}


# --- each refusal of the product's check, on a broken sweep -------------------------------------------------
GOOD = {"program": "finetune_resnet.py", "method": "grid",
        "metric": {"name": "best_val_acc", "goal": "maximize"},
        "parameters": {"strategy": {"values": ["freeze", "full"]}, "lr": {"value": 1e-3}}}
LOG_LR = {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2}


def _with(**changes) -> dict:
    return {**yaml.safe_load(yaml.safe_dump(GOOD)), **changes}


def _refusal(tmp_path, spec, fixed=None) -> str:
    """spec.load's one-line refusal of ``spec`` (a dict, or YAML text as a user would write it)."""
    path = tmp_path / "s.yaml"
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
    with pytest.raises(SweepError) as refused:
        sweep_spec.load(str(path), fixed)
    assert "\n" not in str(refused.value)
    return str(refused.value)


def test_the_reference_config_passes(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert sweep_spec.load(str(path)).goal == "maximize"


BROKEN = {
    "not a mapping": ("- a list\n", "must be a mapping"),
    "unknown parameter": (_with(parameters={"learning_rate": {"values": [1e-3]}}),
                          "'learning_rate' is not a config key"),
    "unknown nested parameter": (_with(parameters={"optim": {"parameters": {"lr": {"value": 1e-3},
                                                                            "betas": {"value": 0.9}}}}),
                                 "'optim.betas' is not a config key"),
    "one key twice": (_with(parameters={"lr": {"value": 1e-3}, "optim": {"parameters": {"lr": {"value": 1e-4}}}}),
                      "'lr' is set by two parameters"),
    "log of 0": (_with(method="random", parameters={"lr": {**LOG_LR, "min": 0.0}}), "not a valid W&B sweep"),
    "no such distribution": (_with(method="random", parameters={"lr": {"distribution": "gaussian", "mu": 0.0,
                                                                        "sigma": 1.0}}), "not a valid W&B sweep"),
    "min above max": (_with(method="random", parameters={"lr": {"distribution": "uniform", "min": 1e-2,
                                                                 "max": 1e-5}}), "not a valid W&B sweep"),
    "a learning rate <= 0": (_with(method="random", parameters={"lr": {"distribution": "uniform", "min": -1e-3,
                                                                        "max": 1e-3}}), "lr="),
    "a value the config refuses": (_with(parameters={"strategy": {"values": ["freeze", "unfreeze_all"]}}),
                                   "strategy="),
    "a metric no run records": (_with(metric={"name": "accuracy", "goal": "maximize"}), "not recorded by runs"),
    "bayes without a metric": ({k: v for k, v in _with(method="bayes", parameters={"lr": LOG_LR}).items()
                                if k != "metric"}, "method bayes needs a metric"),
    "early termination without a metric": ({k: v for k, v in _with(
        method="random", parameters={"lr": LOG_LR},
        early_terminate={"type": "hyperband", "min_iter": 2}).items() if k != "metric"},
        "early_terminate needs a metric"),
    "a grid over a distribution": (_with(parameters={"lr": LOG_LR}), "grid search needs"),
    "a grid point that is no run": (_with(parameters={"strategy": {"value": "two_phase"}, "epochs": {"value": 3},
                                                      "phase1_epochs": {"values": [1, 3]}}), "phase1_epochs="),
    "a key in a recipe and as a parameter": (_with(parameters={"recipe": {"values": [{"strategy": "freeze",
                                                                                      "lr": 1.0e-3}]},
                                                               "lr": {"value": 0.01}}),
                                             "'lr' is set both in a recipe and as a parameter"),
    # refusals the tests' own validator made and the product did not (issue 18)
    "a metric without a goal": (_with(metric={"name": "best_val_acc"}),
                                "metric best_val_acc has no goal: W&B would minimize it; add goal: maximize "
                                "(or minimize)"),
    "a loss without a goal": (_with(metric={"name": "val_loss"}),
                              "metric val_loss has no goal: W&B would minimize it; add goal: minimize (or maximize)"),
    "an accuracy minimized": (_with(metric={"name": "best_val_acc", "goal": "minimize"}),
                              "would search for the worst runs: higher is better (goal: maximize)"),
    "a loss maximized": (_with(metric={"name": "test_loss", "goal": "maximize"}),
                         "lower is better (goal: minimize)"),
    "run_id as a parameter": (_with(parameters={"run_id": {"value": "abc"}}), "parameter 'run_id': the sweep runner"),
    "runs_dir as a parameter": (_with(parameters={"runs_dir": {"value": "elsewhere"}}), "parameter 'runs_dir'"),
    "group in a nested group": (_with(parameters={"w": {"parameters": {"group": {"value": "g"}}}}),
                                "parameter 'w.group'"),
    "a number YAML reads as text": ("program: finetune_resnet.py\nmethod: grid\n"
                                    "metric: {name: best_val_acc, goal: maximize}\n"
                                    "parameters: {lr: {values: [1e-3]}}\n",   # YAML 1.1: '1e-3' is a string
                                    "parameter 'lr': lr: '1e-3' is text in YAML, not a float "
                                    "(write 1.0e-3: YAML reads 1e-3 as text)"),
    "a quoted number": (_with(parameters={"epochs": {"value": "3"}}),
                        "epochs: '3' is text in YAML, not a int (write it unquoted)"),
    "a quoted boolean": (_with(parameters={"ema": {"values": ["true", False]}}),
                         "ema: 'true' is text in YAML, not a bool (write true or false, unquoted)"),
    "text in a recipe": ("program: finetune_resnet.py\nmethod: grid\nmetric: {name: best_val_acc, goal: maximize}\n"
                         "parameters: {recipe: {values: [{strategy: full, lr: 3e-4}]}}\n",
                         "parameter 'recipe': lr: '3e-4' is text in YAML, not a float (write 3.0e-4"),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_a_broken_sweep_is_refused_in_one_line(tmp_path, case):
    spec, needle = BROKEN[case]
    assert needle in _refusal(tmp_path, spec)


def test_set_cannot_give_a_trial_its_run_id(tmp_path):
    assert "--set run_id: the sweep runner gives each trial its own run_id, runs_dir, group" in \
        _refusal(tmp_path, GOOD, {"run_id": "one"})


def test_text_a_number_key_takes_is_the_configs_to_judge(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_with(parameters={"lr": {"values": ["auto", 1.0e-3]}})))
    assert sweep_spec.load(str(path)).params[0].config["values"] == ["auto", 1.0e-3]
    assert "lr='fast' is not valid" in _refusal(tmp_path, _with(parameters={"lr": {"value": "fast"}}))


def test_set_values_are_typed_by_the_config_not_refused_as_text(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert sweep_spec.load(str(path), {"lr": "3e-4", "ema": "true"}).fixed == {"lr": 3e-4, "ema": True}


def test_another_program_keeps_its_own_keys_but_not_the_runners(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_with(program="train.py", parameters={"learning_rate": {"values": ["1e-3"]}})))
    assert not sweep_spec.load(str(path)).ours
    assert "parameter 'run_id'" in _refusal(tmp_path, _with(program="train.py", parameters={"run_id": {"value": 1}}))


def test_a_sweep_without_a_metric_ranks_by_best_val_acc_as_is_better(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in GOOD.items() if k != "metric"}))
    sweep = sweep_spec.load(str(path))
    assert (sweep.metric, sweep.goal) == ("best_val_acc", "maximize")


@pytest.mark.parametrize("command", ["create", "local"])
def test_create_and_local_refuse_a_metric_without_a_goal(tmp_path, monkeypatch, capsys, command):
    """One line, exit 2, and nothing written: no sweep on W&B (create asks for no key first), no sweep dir."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_with(metric={"name": "best_val_acc"})))
    before = sorted(tmp_path.rglob("*"))
    assert finetune_sweep.main([command, "s.yaml"]) == 2
    err = capsys.readouterr().err
    assert err == "error: s.yaml: metric best_val_acc has no goal: W&B would minimize it; add goal: maximize " \
                  "(or minimize)\n"
    assert sorted(tmp_path.rglob("*")) == before


def test_wandbs_default_goal_is_read_from_its_schema():
    from sweeps.config.schema import sweep_config_jsonschema

    schema = sweep_config_jsonschema["definitions"]["metric"]["properties"]["goal"]
    assert records.wandb_default_goal() == schema["default"] == "minimize"
    assert set(schema["enum"]) == set(records.GOALS)
