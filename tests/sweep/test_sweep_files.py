"""Every shipped W&B sweep file is one the W&B server accepts and one finetune_resnet.py can run.

Checks, per ``sweeps/*.yaml``: safe YAML; W&B's own schema validation (the open-source ``sweeps``
package, the same check the server applies); a method and metric W&B and the offline runner can use;
the program; every parameter (nested groups flattened) a real config key; every value, and the range
of every distribution, valid for that key. Negative tests prove the checks can fail. Fast: no torch.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import sweeps
import yaml
from sweeps import schema_violations_from_proposed_config
from sweeps.params import HyperParameter, HyperParameterSet

from lib import config as config_lib
from lib.sweep import spec as sweep_spec

ROOT = Path(__file__).resolve().parents[2]
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
EXPECTED = {"strategy_grid", "resnet50_freezing", "small_vs_pretrained", "resnet18_vs_mobilenetv3",
            "lr_search", "demo", "quickstart"}

# What a run records (README "The record of every run"): summary keys, and per-epoch keys.
SUMMARY_KEYS = {"best_val_acc", "best_epoch", "test_acc", "test_loss", "test_precision_macro",
                "test_recall_macro", "test_f1_macro", "train_val_gap", "trainable_params", "total_params",
                "model_size_mb", "epochs_run", "stopped_early", "train_time_s", "train_images_per_s"}
EPOCH_KEYS = {"epoch", "phase", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "time_s",
              "best_val_acc"}
METRIC_KEYS = (SUMMARY_KEYS | EPOCH_KEYS) - {"phase"}  # a phase name is text: W&B logs only numbers
# W&B's goal defaults to minimize: a missing goal on an accuracy would search for the worst runs.
MAXIMIZE = {"best_val_acc", "val_acc", "train_acc", "test_acc", "test_precision_macro",
            "test_recall_macro", "test_f1_macro", "train_images_per_s"}
MINIMIZE = {"val_loss", "train_loss", "test_loss", "train_val_gap", "model_size_mb", "train_time_s"}
METHODS = {"grid", "random", "bayes"}
GRID_TYPES = {HyperParameter.CONSTANT, HyperParameter.CATEGORICAL, HyperParameter.INT_UNIFORM,
              HyperParameter.Q_UNIFORM}  # what W&B's grid search accepts (sweeps/grid_search.py)


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def _load_method(path: Path):
    cfg = _load(path)
    return cfg.get("method") if isinstance(cfg, dict) else None


def _leaves(parameters: dict) -> list[HyperParameter]:
    """W&B's own flattening: nested groups become ``group.key``; the leaf is the config key."""
    return list(HyperParameterSet.from_config(parameters))


def _leaf(name: str) -> str:
    return name.split(HyperParameterSet.NESTING_DELIMITER)[-1]


def _shown(name: str) -> str:
    """``group.key`` for a nested parameter (W&B's internal delimiter is unreadable)."""
    return name.replace(HyperParameterSet.NESTING_DELIMITER, ".")


def _type_problem(key: str, value) -> str | None:
    """YAML 1.1 reads ``1e-3`` as a string: W&B would log it as text, not a number (and its panels
    could not plot it). Numbers must be YAML numbers, booleans YAML booleans."""
    want = config_lib.TYPES[key]
    if want is dict and isinstance(value, dict):   # a recipe: each of its keys as if set on its own
        return next((p for k, v in value.items() if k in config_lib.TYPES and (p := _type_problem(k, v))), None)
    ok = {dict: False, bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}[want]
    return None if ok else f"{key}: {value!r} is a {type(value).__name__}, expected a YAML {want.__name__}"


def sweep_problems(cfg) -> list[str]:
    """Everything wrong with one sweep config (a dict as yaml.safe_load gives it); [] when runnable."""
    if not isinstance(cfg, dict):
        return ["a sweep file must be a mapping"]
    try:
        problems = [f"W&B schema: {m}" for m in schema_violations_from_proposed_config(cfg)]
    except ValueError as e:  # raised for shapes the schema cannot even walk
        return [f"W&B schema: {e}"]
    method = cfg.get("method")
    if method not in METHODS:
        problems.append(f"method {method!r}: expected one of {sorted(METHODS)}")
    if cfg.get("program") != "finetune_resnet.py":
        problems.append(f"program {cfg.get('program')!r}: expected finetune_resnet.py")

    metric = cfg.get("metric")
    if not isinstance(metric, dict) or not metric.get("name"):
        if method == "bayes" or cfg.get("early_terminate"):
            problems.append("bayes search and early_terminate need metric.name")
    else:
        name, goal = metric["name"], metric.get("goal")
        if name not in METRIC_KEYS:
            problems.append(f"metric {name!r} is not recorded by runs: expected one of {sorted(METRIC_KEYS)}")
        if goal is None:
            problems.append(f"metric {name!r} has no goal (W&B's default is minimize)")
        elif (name in MAXIMIZE and goal != "maximize") or (name in MINIMIZE and goal != "minimize"):
            problems.append(f"metric {name!r} with goal {goal!r} optimises in the wrong direction")
    if problems:
        return problems  # the parameter checks below assume a schema-valid config

    try:
        params = _leaves(cfg["parameters"])
    except Exception as e:  # noqa: BLE001 - sweeps raises several kinds for a bad parameter
        return [f"parameters: {e}"]
    problems += [f"parameter {_shown(p.name)!r} is not a config key of finetune_resnet.py"
                 for p in params if _leaf(p.name) not in config_lib.FIELDS]
    known = [p for p in params if _leaf(p.name) in config_lib.FIELDS]
    leaves = [_leaf(p.name) for p in known]
    problems += [f"config key {k!r} is set by two parameters (nested groups share one flat config)"
                 for k in sorted({k for k in leaves if leaves.count(k) > 1})]
    # Single-key checks, built on the file's own constants so that rules tying keys together
    # (phase1_epochs < epochs for two_phase) see the file's values, not the defaults.
    constants = {_leaf(p.name): p.config["value"] for p in known if p.type == HyperParameter.CONSTANT}
    try:
        base = config_lib.build(constants)
    except config_lib.ConfigError as e:
        return problems + [f"constant parameters: {e}"]
    for p in known:
        key = _leaf(p.name)
        if key == "run_id":
            problems.append("run_id must not be a sweep parameter: every trial would resume one run")
        if method == "grid" and p.type not in GRID_TYPES:
            problems.append(f"{_shown(p.name)}: grid search needs value/values (or int_uniform/q_uniform)")
        if p.type == HyperParameter.CONSTANT:
            samples = [p.config["value"]]
        elif p.type in (HyperParameter.CATEGORICAL, HyperParameter.CATEGORICAL_PROB):
            samples = list(p.config["values"])
        else:  # a distribution: what W&B draws near both ends and in the middle
            samples = [p.ppf(q) for q in (1e-6, 0.5, 1 - 1e-6)]
            samples = [v.item() if hasattr(v, "item") else v for v in samples]
            if any(isinstance(v, float) and not math.isfinite(v) for v in samples):
                problems.append(f"{_shown(p.name)}: distribution draws non-finite values")
                continue
        for value in samples:
            if p.type in (HyperParameter.CONSTANT, HyperParameter.CATEGORICAL,
                          HyperParameter.CATEGORICAL_PROB):
                bad_type = _type_problem(key, value)
                if bad_type:
                    problems.append(bad_type)
                    continue
            try:
                config_lib.build({key: value}, base=base)
            except config_lib.ConfigError as e:
                problems.append(f"{_shown(p.name)}: {e}")
    return problems


def test_the_sweep_files_exist():
    assert EXPECTED <= {p.stem for p in SWEEP_FILES}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_is_valid_for_wandb_and_for_the_config(path):
    cfg = _load(path)
    assert sweep_problems(cfg) == []
    assert cfg.get("description"), "say in one line what the sweep is for"


GRID_RUNS = {"strategy_grid": 6, "resnet50_freezing": 6, "small_vs_pretrained": 4,
             "resnet18_vs_mobilenetv3": 2, "demo": 6, "quickstart": 8}  # as each file's description says


@pytest.mark.parametrize("path", [p for p in SWEEP_FILES if _load_method(p) == "grid"], ids=lambda p: p.name)
def test_every_grid_point_is_a_valid_run_config(path):
    """The whole combination, not just single keys: what each of the grid's runs will be built from."""
    params = _leaves(_load(path)["parameters"])
    names = [_leaf(p.name) for p in params]
    choices = [p.config["values"] if "values" in p.config else [p.config["value"]] for p in params]
    points = [dict(zip(names, combo)) for combo in itertools.product(*choices)]
    for point in points:
        config_lib.build(point)
    if path.stem in GRID_RUNS:
        assert len(points) == GRID_RUNS[path.stem]


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


def test_metric_keys_are_the_ones_the_readme_documents():
    readme = (ROOT / "README.md").read_text()
    assert [k for k in sorted(SUMMARY_KEYS | EPOCH_KEYS) if f"`{k}`" not in readme] == []


def test_demo_sweep_is_the_offline_cpu_study():
    cfg = _load(ROOT / "sweeps" / "demo.yaml")
    params = {_leaf(p.name): p.config for p in _leaves(cfg["parameters"])}
    assert cfg["method"] == "grid" and "early_terminate" not in cfg
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


# --- the same checks catch broken sweeps ---------------------------------------------------------

GOOD = {"program": "finetune_resnet.py", "method": "grid",
        "metric": {"name": "best_val_acc", "goal": "maximize"},
        "parameters": {"strategy": {"values": ["freeze", "full"]}, "lr": {"value": 1e-3}}}


def _with(**changes) -> dict:
    return {**yaml.safe_load(yaml.safe_dump(GOOD)), **changes}


def test_the_reference_config_passes():
    assert sweep_problems(_with()) == []


def test_unknown_parameter_is_caught():
    cfg = _with(parameters={"learning_rate": {"values": [1e-3]}, "strategy": {"value": "full"}})
    assert any("'learning_rate' is not a config key" in p for p in sweep_problems(cfg))
    nested = _with(parameters={"optim": {"parameters": {"lr": {"value": 1e-3}, "betas": {"value": 0.9}}}})
    assert any("'optim.betas' is not a config key" in p for p in sweep_problems(nested))
    twice = _with(parameters={"lr": {"value": 1e-3}, "optim": {"parameters": {"lr": {"value": 1e-4}}}})
    assert any("'lr' is set by two parameters" in p for p in sweep_problems(twice))


def test_bad_distribution_is_caught():
    for bad in ({"distribution": "log_uniform_values", "min": 0.0, "max": 1e-2},   # log of 0
                {"distribution": "gaussian", "mu": 0.0, "sigma": 1.0},              # no such distribution
                {"distribution": "uniform", "min": 1e-2, "max": 1e-5}):             # min above max
        cfg = _with(method="random", parameters={"lr": bad})
        assert any(p.startswith("W&B schema") for p in sweep_problems(cfg)), bad
    # schema-valid, but lr <= 0 is not a valid learning rate for the run
    cfg = _with(method="random", parameters={"lr": {"distribution": "uniform", "min": -1e-3, "max": 1e-3}})
    assert any("lr=" in p for p in sweep_problems(cfg))


def test_bayes_without_metric_is_caught():
    cfg = _with(method="bayes", parameters={"lr": {"distribution": "log_uniform_values",
                                                   "min": 1e-5, "max": 1e-2}})
    del cfg["metric"]
    assert any("need metric.name" in p for p in sweep_problems(cfg))


def test_bad_values_metric_and_yaml_traps_are_caught():
    assert any("strategy=" in p for p in sweep_problems(
        _with(parameters={"strategy": {"values": ["freeze", "unfreeze_all"]}})))
    assert any("is a str" in p for p in sweep_problems(
        yaml.safe_load("program: finetune_resnet.py\nmethod: grid\n"
                       "metric: {name: best_val_acc, goal: maximize}\n"
                       "parameters: {lr: {values: [1e-3]}}\n")))  # YAML 1.1: '1e-3' is a string
    assert any("not recorded" in p for p in sweep_problems(_with(metric={"name": "accuracy", "goal": "maximize"})))
    assert any("no goal" in p for p in sweep_problems(_with(metric={"name": "best_val_acc"})))
    assert any("grid search needs" in p for p in sweep_problems(
        _with(parameters={"lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2}})))
    assert any("phase1_epochs=" in p for p in sweep_problems(
        _with(parameters={"strategy": {"value": "two_phase"}, "epochs": {"value": 3},
                          "phase1_epochs": {"values": [1, 3]}})))
    assert any("program" in p for p in sweep_problems(_with(program="train.py")))
    assert any("run_id" in p for p in sweep_problems(_with(parameters={"run_id": {"value": "abc"}})))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_passes_the_kits_own_checks(path, capsys):
    """What `create` and `local` check before anything starts (lib/sweep_spec: W&B's schema, the command
    the agent would run, every grid point or enough random draws a valid run), with no warning."""
    from lib.sweep import spec as sweep_spec

    sweep = sweep_spec.load(str(path))
    assert capsys.readouterr().err == ""
    if sweep.method == "grid" and path.stem in GRID_RUNS:
        assert len(sweep.grid()) == GRID_RUNS[path.stem]


def test_a_key_in_a_recipe_and_as_a_parameter_is_refused(tmp_path):
    """The run's explicit key would win over the recipe in every run (W&B passes both): say so."""
    spec = {"program": "finetune_resnet.py", "method": "grid", "metric": {"name": "best_val_acc", "goal": "maximize"},
            "parameters": {"recipe": {"values": [{"strategy": "freeze", "lr": 1.0e-3}]}, "lr": {"value": 0.01}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(sweep_spec.SweepError, match="'lr' is set both in a recipe and as a parameter"):
        sweep_spec.load(str(path))
