"""What W&B accepts, and a study that cannot run refused before its first trial: one line, exit code 2,
nothing written (lib/sweep/spec.py through `finetune_sweep.py local` and `create`, in-process). The
trial's command line against `wandb agent`'s own code: tests/sweep/test_sweep_argv.py."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from sweeps.grid_search import grid_search_next_runs

import finetune_sweep
from lib.sweep import spec as sweep_spec
from lib.sweep.spec import SweepError
from lib.train import run as run_lib

METRIC = {"name": "best_val_acc", "goal": "maximize"}


def write(tmp_path, spec, name="s.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


# --- what W&B accepts ---------------------------------------------------------------------------------
def test_the_grid_is_wandbs_grid(tmp_path):
    """int_uniform and q_uniform ranges, a nested group, a value listed twice: the points and their order
    are those of W&B's own grid search."""
    spec = {"program": "finetune_resnet.py", "method": "grid", "metric": METRIC,
            "parameters": {"epochs": {"distribution": "int_uniform", "min": 2, "max": 4},
                           "warmup_epochs": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.5},
                           "optim": {"parameters": {"lr": {"values": [0.1, 0.1, 0.2]}}},
                           "strategy": {"value": "full"}}}
    sweep = sweep_spec.load(write(tmp_path, spec))
    wandb_grid = [r.config for r in grid_search_next_runs([], spec, n=100) if r is not None]
    assert [sweep.run_args(sweep.flat(p)) for p in sweep.grid()] == wandb_grid
    assert len(wandb_grid) == 3 * 2 * 2


def test_every_distribution_wandb_allows_runs_offline(tmp_path, capsys):
    spec = {"program": "finetune_resnet.py", "method": "random", "metric": METRIC, "parameters": {
        "lr": {"distribution": "log_uniform", "min": -9.2, "max": -4.6},            # exponents (W&B: a notice)
        "weight_decay": {"distribution": "inv_log_uniform_values", "min": 1.0e-5, "max": 1.0e-2},
        "epochs": {"distribution": "int_uniform", "min": 2, "max": 5},
        "step_epochs": {"distribution": "q_log_uniform_values", "min": 1, "max": 8, "q": 1},
        "dropout": {"distribution": "q_beta", "a": 2.0, "b": 5.0, "q": 0.05},
        "label_smoothing": {"distribution": "q_normal", "mu": 0.1, "sigma": 0.01, "q": 0.01},
        "momentum": {"distribution": "log_normal", "mu": -0.5, "sigma": 0.05},
        "train_bn": {"values": [True, False], "probabilities": [0.7, 0.3]}}}
    sweep = sweep_spec.load(write(tmp_path, spec))
    assert "log_uniform, where min/max specify base-e exponents" in capsys.readouterr().err
    epochs = next(p for p in sweep.params if p.name == "epochs")
    assert sweep_spec.value_of(epochs, 0.0) == 2 and sweep_spec.value_of(epochs, 1.0) == 5   # never min - 1


@pytest.mark.parametrize("command, needle", [
    (["${interpreter}", "${program}", "${args_dict}"], "${args_dict} is not one `wandb agent` expands"),
    (["${interpreter}", "${program}", "--x=${args}"], "expands ${args} only as a whole element"),
    (["${interpreter}", "${program}", "${envvar:my_tag}"], "only names of A-Z, 0-9 and _"),
    (["${interpreter}", "${program}", "${args_append_hydra}"], "finetune_resnet.py does not read"),
])
def test_commands_the_agent_would_mangle_are_refused(tmp_path, command, needle):
    spec = {"program": "finetune_resnet.py", "method": "grid", "metric": METRIC, "command": command,
            "parameters": {"lr": {"value": 0.1}}}
    with pytest.raises(SweepError) as e:
        sweep_spec.load(write(tmp_path, spec))
    assert needle in str(e.value)


def test_a_config_key_set_by_two_parameters_is_refused(tmp_path):
    spec = {"program": "finetune_resnet.py", "method": "grid", "metric": METRIC,
            "parameters": {"lr": {"value": 0.1}, "optim": {"parameters": {"lr": {"value": 0.2}}}}}
    with pytest.raises(SweepError, match=r"'lr' is set by two parameters \(lr and optim.lr\)"):
        sweep_spec.load(write(tmp_path, spec))


def test_grid_with_probabilities_is_refused_as_on_wandb(tmp_path):
    spec = {"program": "finetune_resnet.py", "method": "grid", "metric": METRIC,
            "parameters": {"dropout": {"values": [0.0, 0.1], "probabilities": [0.5, 0.5]}}}
    with pytest.raises(ValueError):
        grid_search_next_runs([], spec)
    with pytest.raises(SweepError, match="not probabilities"):
        sweep_spec.load(write(tmp_path, spec))


# --- a study that cannot run stops before its first trial: one line, exit code 2, nothing written --------------
def cli(capsys, *argv) -> tuple[int, list[str]]:
    code = finetune_sweep.main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


def study(tmp_path, parameters, method="grid", name="s.yaml") -> str:
    return write(tmp_path, {"program": "finetune_resnet.py", "method": method, "metric": METRIC,
                            "parameters": parameters}, name)


@pytest.mark.parametrize("flag, value", [("--workers", 0), ("--workers", -2), ("--count", 0), ("--count", -1),
                                         ("--max_failures", 0), ("--seed", -1)])
def test_counts_that_would_run_nothing_are_refused(tmp_path, capsys, animals, flag, value):
    f = study(tmp_path, {"data_dir": {"value": str(animals)}, "model": {"value": "small_cnn"}})
    code, err = cli(capsys, "local", f, "--sweep_dir", tmp_path / "out", flag, value)
    assert (code, len(err)) == (2, 1) and err[0].startswith(f"error: {flag}={value}: expected an integer")
    assert not (tmp_path / "out").exists()


def test_a_missing_data_dir_is_refused(tmp_path, capsys, animals):
    f = study(tmp_path, {"data_dir": {"values": [str(animals), str(tmp_path / "nope")]},
                         "model": {"value": "small_cnn"}})
    code, err = cli(capsys, "local", f, "--sweep_dir", tmp_path / "out")
    assert (code, len(err)) == (2, 1) and f"data_dir='{tmp_path / 'nope'}' does not exist here" in err[0]
    assert "--set data_dir=" in err[0]
    f = study(tmp_path, {"model": {"value": "small_cnn"}}, name="t.yaml")
    code, err = cli(capsys, "local", f, "--sweep_dir", tmp_path / "out", "--set", "data_dir=/no/such/images")
    assert (code, len(err)) == (2, 1) and "data_dir='/no/such/images' does not exist" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_model_without_offline_weights_is_refused_at_once(tmp_path, capsys, animals, cache_dir):
    """HF hub unreachable (conftest): resnet50 has no weights here; mobilenetv2_100's ship with pip."""
    f = study(tmp_path, {"data_dir": {"value": str(animals)}, "model": {"values": ["mobilenetv2_100", "resnet50"]},
                         "cache_dir": {"value": cache_dir}})
    started = time.monotonic()
    code, err = cli(capsys, "local", f, "--sweep_dir", tmp_path / "out")
    assert time.monotonic() - started < 10                       # no hub retries
    assert (code, len(err)) == (2, 1) and "model='resnet50', weights='pretrained'" in err[0]
    assert "mobilenetv2_100" in err[0] and "--weights=/path/to/weights.safetensors" in err[0]
    assert not (tmp_path / "out").exists()
    sweep_spec.check_here(sweep_spec.load(f, {"weights": "none"}))   # --set weights=none: both can start
    f = study(tmp_path, {"data_dir": {"value": str(animals)}, "recipe": {"values": [
        {"model": "small_cnn", "lr": 0.01}, {"model": "resnet50", "strategy": "freeze"}]}}, name="r.yaml")
    code, err = cli(capsys, "local", f, "--sweep_dir", tmp_path / "out")       # a model set by a recipe
    assert (code, len(err)) == (2, 1) and "model='resnet50', weights='pretrained'" in err[0]


def test_a_combination_invalid_for_every_draw_is_refused(tmp_path, capsys, animals):
    """two_phase with phase1_epochs >= epochs fixed in the file: every draw would fail. On local and create."""
    f = study(tmp_path, {"data_dir": {"value": str(animals)}, "strategy": {"value": "two_phase"},
                         "epochs": {"value": 3}, "phase1_epochs": {"value": 3},
                         "lr": {"distribution": "log_uniform_values", "min": 1.0e-4, "max": 1.0e-2}}, method="random")
    for command in (["local", f, "--sweep_dir", tmp_path / "out"], ["create", f]):
        code, err = cli(capsys, *command)
        assert (code, len(err)) == (2, 1) and "no parameter draw is a valid run" in err[0]
        assert "phase1_epochs=3 must be smaller than epochs=3" in err[0]
    assert not (tmp_path / "out").exists()


def test_some_invalid_draws_are_a_warning_not_an_error(tmp_path, capsys):
    f = study(tmp_path, {"strategy": {"value": "two_phase"}, "phase1_epochs": {"value": 2},
                         "epochs": {"distribution": "int_uniform", "min": 2, "max": 6}}, method="random")
    sweep_spec.load(f)
    assert "sampled draws are not valid runs" in capsys.readouterr().err


# --- what a new user meets in the first hour (issue 22) -------------------------------------------------------
def _one_class(root: Path, animals) -> Path:
    folder = root / "only_class"
    folder.mkdir(parents=True)
    for src in sorted(next(p for p in sorted(Path(animals).iterdir()) if p.is_dir()).glob("*.png"))[:5]:
        (folder / src.name).write_bytes(src.read_bytes())
    return root


@pytest.mark.parametrize("case, needle", [("one class", ("has 1 class folder(s) with images: a classifier needs at "
                                                        "least two")),
                                          ("empty", "has 0 class folder(s) with images"),
                                          ("no images", "has 0 class folder(s) with images")])
def test_a_data_dir_the_trainer_would_refuse_is_refused_before_the_first_trial(tmp_path, capsys, animals, case,
                                                                               needle):
    """By the trainer's own check (lib.train.data.discover): one line, exit 2, no sweep dir, no trial."""
    data = {"one class": lambda: _one_class(tmp_path / "one", animals),
            "empty": lambda: (tmp_path / "empty").mkdir() or tmp_path / "empty",
            "no images": lambda: ((tmp_path / "txt" / "a").mkdir(parents=True),
                                  (tmp_path / "txt" / "a" / "x.txt").write_text("x"), tmp_path / "txt")[-1]}[case]()
    f = study(tmp_path, {"model": {"value": "small_cnn"}, "lr": {"values": [0.01, 0.1]}})
    code, err = cli(capsys, "local", f, "--sweep_dir", tmp_path / "out", "--set", f"data_dir={data}")
    assert (code, len(err)) == (2, 1), err
    assert err[0].startswith("error: s.yaml: no trial can start: ") and needle in err[0]
    assert "--set data_dir=" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_misspelled_model_or_key_in_a_study_gets_the_trainers_suggestions(tmp_path, capsys, animals):
    """`--set model=resnet5` said only "see timm.list_models()"; `--set lerning_rate=` and a parameter `lrr`
    had no suggestion although `--lerning_rate` did: one suggestion function everywhere."""
    f = study(tmp_path, {"data_dir": {"value": str(animals)}, "lr": {"values": [0.01]}})
    code, err = cli(capsys, "local", f, "--sweep_dir", tmp_path / "out", "--set", "model=resnet5")
    assert (code, len(err)) == (2, 1) and "model='resnet5' is not valid" in err[0]
    assert "did you mean resnet50, resnet18, " in err[0]
    code, err = cli(capsys, "local", f, "--sweep_dir", tmp_path / "out", "--set", "lerning_rate=1e-3")
    assert (code, len(err)) == (2, 1) and "--set 'lerning_rate' is not a config key" in err[0]
    assert "did you mean 'lr'?" in err[0]
    f = study(tmp_path, {"data_dir": {"value": str(animals)}, "lrr": {"values": [0.01]}}, name="p.yaml")
    code, err = cli(capsys, "local", f, "--sweep_dir", tmp_path / "out")
    assert (code, len(err)) == (2, 1) and "parameter 'lrr' is not a config key" in err[0]
    assert "did you mean 'lr'?" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_broken_yaml_names_its_line_and_column(tmp_path, capsys):
    f = tmp_path / "broken.yaml"
    f.write_text("program: finetune_resnet.py\nmethod: grid\nparameters:\n  lr:\n    values: [0.1, 0.2\n"
                 "  epochs: {value: 1}\n")
    code, err = cli(capsys, "local", f, "--sweep_dir", tmp_path / "out")
    assert (code, len(err)) == (2, 1)
    assert err[0] == ("error: sweep file '" + str(f) + "' is not valid YAML: line 6, column 9: expected ',' or ']', "
                      "but got ':' (while parsing a flow sequence started at line 5, column 13)")
    run_file = tmp_path / "run.yaml"
    run_file.write_text("lr: 0.1\nepochs: [3\n")
    with pytest.raises(run_lib.ConfigError, match=r"is not valid YAML: line 3, column 1: "):
        run_lib.resolve_config([f"--config={run_file}"], env={})


@pytest.mark.parametrize("parameter, said", [
    ({"values": 5}, "parameters.lr.values must be a list (got 5)"),
    ({"values": []}, "parameters.lr.values must list at least one value (got [])"),
    ({"value": 1, "values": [1]}, "parameters.lr: categorical does not take value (it takes distribution, values)"),
    ({"valuse": [1]}, "parameters.lr: unknown setting 'valuse': did you mean 'values'?"),
    ({"min": 0.1}, "parameters.lr: uniform needs max"),
    ({"min": "a", "max": 1.0}, "parameters.lr.min must be a number for uniform (got 'a')"),
    ({"distribution": "int_uniform", "min": 0.5, "max": 3}, "parameters.lr.min must be an integer for int_uniform"),
    ({"distribution": "log_uniform_values", "min": 0, "max": 1},
     "parameters.lr.min must be > 0 for log_uniform_values (got 0)"),
    ({"distribution": "zipf"}, "parameters.lr.distribution 'zipf' is not one W&B knows: expected one of beta, "),
    (5, "parameters.lr must be a mapping such as `value: X`"),
    ({"parameters": {"lr": {"values": 5}}}, "parameters.lr.parameters.lr.values must be a list (got 5)"),
])
def test_wandb_schema_violations_are_said_as_what_to_fix(tmp_path, capsys, parameter, said):
    """`values: 5` gave jsonschema's "{'values': 5} is not valid under any of the given schemas"."""
    f = study(tmp_path, {"lr": parameter}, method="random")
    code, err = cli(capsys, "local", f, "--sweep_dir", tmp_path / "out")
    assert (code, len(err)) == (2, 1), err
    assert err[0].startswith("error: s.yaml: not a valid W&B sweep: " + said), err[0]
    assert "not valid under any of the given schemas" not in err[0] and "invalid hyperparameter" not in err[0]
    assert not (tmp_path / "out").exists()
