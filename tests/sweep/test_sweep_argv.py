"""`local` starts each trial exactly as `wandb agent` starts it (W&B's grid and the refusals of a study
that cannot run: tests/sweep/test_sweep_spec.py).

The reference is W&B's own code, called here: the sweeps engine's first run (``sweeps.next_run``), its
grid (``grid_search_next_runs``), and ``wandb agent``'s ``Agent._command_run`` with only the process
start captured (so its command line, parameters file and JSON file are the agent's, byte for byte).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sweeps
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from lib.files import read_json
from lib.sweep import spec as sweep_spec
from lib.sweep import study as sweep_study
from lib.sweep import trial as sweep_trial
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


# --- a grid point that cannot run, refused by the real command line --------------------------------------
def study(tmp_path, parameters, method="grid", name="s.yaml") -> str:
    return write(tmp_path, {"program": "finetune_resnet.py", "method": method, "metric": METRIC,
                            "parameters": parameters}, name)


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
