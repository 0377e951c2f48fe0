"""`local` starts each trial exactly as `wandb agent` starts it, and refuses a study that cannot run
before its first trial.

The reference is W&B's own code, called here: the sweeps engine's first run (``sweeps.next_run``), its
grid (``grid_search_next_runs``), and ``wandb agent``'s ``Agent._command_run`` with only the process
start captured (so its command line, parameters file and JSON file are the agent's, byte for byte).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sweeps
import yaml
from sweeps.grid_search import grid_search_next_runs
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

import finetune_sweep
from lib.files import read_json
from lib.sweep import spec as sweep_spec
from lib.sweep import study as sweep_study
from lib.sweep import trial as sweep_trial
from lib.sweep.spec import SweepError
from lib.train import run as run_lib

KIND = "subprocess"   # the real trainer or runner in child processes: in `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]
FAKE = str(Path(__file__).parents[1] / "fakes" / "fake_trainer.py")
PROGRAM = str(ROOT / "finetune_resnet.py")
METRIC = {"name": "best_val_acc", "goal": "maximize"}


def write(tmp_path, spec, name="s.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def nested_spec(command, data_dir, program="finetune_resnet.py") -> dict:
    """A nested group (a float, a boolean and a string in it), booleans, strings, floats, an int_uniform."""
    return {"program": program, "method": "grid", "metric": METRIC, "command": command,
            "parameters": {"data_dir": {"value": str(data_dir)}, "model": {"value": "small_cnn"},
                           "optim": {"parameters": {"lr": {"values": [0.01, 0.003]}, "nesterov": {"value": True},
                                                    "optimizer": {"value": "sgd"}}},
                           "train_bn": {"value": False}, "label_smoothing": {"value": 0.1},
                           "epochs": {"distribution": "int_uniform", "min": 1, "max": 2},
                           "tags": {"value": "a b"}}}


def first_trial(sweep) -> dict:
    """The flat parameters the offline engine hands its first trial (lib.sweep.study.trial_params)."""
    study = optuna.create_study()
    study.enqueue_trial(sweep.grid()[0])
    return sweep_study.trial_params(study.ask(), sweep)


def agent_run(monkeypatch, tmp_path, command, program, args):
    """What `wandb agent` runs for one trial: its own Agent._command_run, only the process start captured.
    Returns (argv, parameters file text, path of its ${args_json_file})."""
    from wandb import wandb_agent

    started = {}

    class Started:
        def __init__(self, command=None, env=None, **_):
            started["argv"] = command

    monkeypatch.setattr(wandb_agent, "AgentProcess", Started)
    for var, value in (("WANDB_DIR", str(tmp_path / "agent")), ("WANDB_SWEEP_ID", "sw"), ("WANDB_RUN_ID", "r0"),
                       ("WANDB_SWEEP_PARAM_PATH", "")):
        monkeypatch.setenv(var, value)  # the agent sets some of them: restored after the test
    agent = wandb_agent.Agent.__new__(wandb_agent.Agent)   # no server: only the method that starts a run
    agent._sweep_command, agent._in_jupyter, agent._function = list(command), False, None
    agent._forward_signals, agent._run_processes = False, {}
    agent._command_run({"run_id": "r1", "program": program, "args": args})
    params = Path(os.environ["WANDB_SWEEP_PARAM_PATH"])
    monkeypatch.delenv("WANDB_SWEEP_ID")
    return started["argv"], params.read_text(), tmp_path / "agent" / "wandb" / "sweep-sw" / "config-r1.json"


def wandb_formats() -> list[str]:
    """The argument formats of wandb's create_sweep_command_args (each one a ${macro} of `wandb agent`)."""
    return [k for k, v in create_sweep_command_args({"args": {}}).items() if isinstance(v, list)]


ARG_MACROS = [m for m in wandb_formats() if "hydra" not in m] + ["args_json_file"]


@pytest.mark.parametrize("macro", ARG_MACROS)
def test_a_trial_is_started_as_wandb_agent_starts_it(macro, tmp_path, monkeypatch, animals):
    monkeypatch.setenv("MY_TAG", "x1")
    monkeypatch.chdir(tmp_path)          # started from elsewhere: the program is found in the project
    command = ["${env}", "${interpreter}", "${program}", "${" + macro + "}", "--run_name=${envvar:MY_TAG}"]
    spec = nested_spec(command, animals)
    sweep = sweep_spec.load(write(tmp_path, spec))
    params = first_trial(sweep)
    wandb_first = sweeps.next_run(spec, [])                            # W&B's engine: its first run
    assert sweep.run_args(params) == wandb_first.config
    assert wandb_first.config["optim"] == {"value": {"lr": 0.01, "nesterov": True, "optimizer": "sgd"}}

    ours = sweep_trial.build_command(sweep, params, tmp_path, ROOT)
    theirs, their_params, their_json = agent_run(monkeypatch, tmp_path, command, "finetune_resnet.py",
                                                 wandb_first.config)
    # The only differences, on purpose: this Python for `python`, the program and JSON file paths resolved.
    same = {"python": sys.executable, "finetune_resnet.py": PROGRAM, str(their_json): str(tmp_path / "sweep-args.json")}
    assert ours == [same.get(t, t) for t in theirs]
    assert ours[:3] == ["/usr/bin/env", sys.executable, PROGRAM] and ours[-1] == "--run_name=x1"
    if macro == "args_json_file":
        assert (tmp_path / "sweep-args.json").read_text() == their_json.read_text()
    sweep_trial.write_params_file(tmp_path / "params.yaml", sweep, params, {})
    assert (tmp_path / "params.yaml").read_text() == their_params          # W&B's writer, W&B's nested form
    assert yaml.safe_load(their_params)["optim"] == {"value": {"lr": 0.01, "nesterov": True, "optimizer": "sgd"}}

    # finetune_resnet.py's own parser takes the argv alone, and the agent's parameters file on top of it.
    alone = run_lib.resolve_config(ours[3:], env={})
    assert (alone.lr, alone.nesterov, alone.optimizer, alone.model) == (0.01, True, "sgd", "small_cnn")
    assert (alone.label_smoothing, alone.epochs, alone.tags, alone.run_name) == (0.1, 1, "a b", "x1")
    # ${args_no_boolean_flags} drops false flags: under the agent, wandb.config (the params file) brings them
    assert alone.train_bn is (macro == "args_no_boolean_flags")
    swept = run_lib.resolve_config(ours[3:], env={"WANDB_SWEEP_ID": "sw", "WANDB_SWEEP_PARAM_PATH":
                                                  str(tmp_path / "params.yaml")})
    assert swept.train_bn is False and swept.lr == 0.01


def test_other_programs_get_every_macro_wandb_has(tmp_path, monkeypatch, animals):
    """Hydra's +key=value forms and the rest, for a program of its own (finetune_resnet.py reads no Hydra)."""
    command = ["${env}", "${interpreter}", "${program}", *("${" + m + "}" for m in wandb_formats())]
    spec = nested_spec(command, animals, program=FAKE)
    sweep = sweep_spec.load(write(tmp_path, spec))
    params = sweep.flat(sweep.grid()[1])
    ours = sweep_trial.build_command(sweep, params, tmp_path, ROOT)
    theirs, _, _ = agent_run(monkeypatch, tmp_path, command, FAKE, sweeps.next_runs(spec, [], n=2)[1].config)
    assert ours == [{"python": sys.executable}.get(t, t) for t in theirs]
    assert "++optim={'lr': 0.003, 'nesterov': True, 'optimizer': 'sgd'}" in ours and "--epochs" in ours


def test_a_real_trial_takes_nested_groups_and_args_no_equals(tmp_path, animals, cache_dir):
    """Through the CLI, the real trainer: `--optim {...}` (${args_no_equals}), booleans, --set on a nested leaf."""
    spec = nested_spec(["${env}", "${interpreter}", "${program}", "${args_no_equals}"], animals)
    spec["parameters"]["optim"]["parameters"]["lr"] = {"value": 0.01}
    spec["parameters"]["epochs"] = {"value": 1}
    fixed = ["lr=0.02", "image_size=32", "min_image_side=16", "batch_size=16", "augment=none",
             "val_fraction=0.25", "test_fraction=0.25", "device=cpu", f"cache_dir={cache_dir}"]
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "finetune_sweep.py"), "local", write(tmp_path, spec), "--sweep_dir", str(out),
           *(x for kv in fixed for x in ("--set", kv))]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (run_dir,) = (out / "runs").glob("s-*")
    config = read_json(run_dir / "run.json")["config"]
    assert read_json(run_dir / "run.json")["state"] == "finished"
    assert (config["lr"], config["nesterov"], config["optimizer"], config["train_bn"]) == (0.02, True, "sgd", False)
    assert (config["tags"], config["label_smoothing"]) == ("a b", 0.1)
    params = yaml.safe_load((run_dir / "sweep-params.yaml").read_text())
    assert params["optim"] == {"value": {"lr": 0.02, "nesterov": True, "optimizer": "sgd"}}  # --set kept the group


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


def test_an_invalid_grid_point_is_refused_through_the_real_cli(tmp_path, animals):
    f = study(tmp_path, {"data_dir": {"value": str(animals)}, "strategy": {"values": ["freeze", "two_phase"]},
                         "epochs": {"values": [2, 3]}, "phase1_epochs": {"value": 2}})
    for command in (["local", f, "--sweep_dir", str(tmp_path / "out")], ["create", f]):
        done = subprocess.run([sys.executable, str(ROOT / "finetune_sweep.py"), *command], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.strip().splitlines() == [
            "error: s.yaml: grid point 2 of 4 (epochs=2, strategy='two_phase') is not a valid run: "
            "phase1_epochs=2 must be smaller than epochs=2 for strategy=two_phase"]
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
