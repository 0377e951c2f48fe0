"""Config: precedence (defaults < file < command line < wandb.config), `wandb agent` argument forms,
and one-line rejection of bad values."""
import subprocess
import sys

import pytest

from lib import config
from lib.config import Config, ConfigError
from lib.run import resolve_config


def test_defaults_are_valid():
    config.validate(Config())


def test_command_line_forms_of_wandb_agent():
    # ${args}: --key=value ; ${args_no_boolean_flags}: bare --flag for true, omitted for false
    _, out = config.parse_args(["--lr=0.01", "--epochs", "3", "--train_bn", "--amp=False", "--model", "resnet18"])
    cfg = config.build(out)
    assert (cfg.lr, cfg.epochs, cfg.train_bn, cfg.amp, cfg.model) == (0.01, 3, True, False, "resnet18")


def test_bool_flag_followed_by_value_and_by_next_flag():
    _, out = config.parse_args(["--train_bn", "false", "--amp", "--epochs=4"])
    cfg = config.build(out)
    assert cfg.train_bn is False and cfg.amp is True and cfg.epochs == 4


def test_precedence_file_then_command_line(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("lr: 0.05\nepochs: 7\nmodel: resnet18\nstrategy: {value: partial}\n")
    cfg = resolve_config([f"--config={f}", "--epochs=9"])
    assert (cfg.lr, cfg.epochs, cfg.model, cfg.strategy) == (0.05, 9, "resnet18", "partial")


def test_sweep_config_wins_over_command_line():
    from lib.run import apply_sweep

    class FakeTracker:  # what wandb.config holds after init under a sweep
        def sweep_overrides(self):
            return {"lr": 0.0003, "strategy": "full", "_wandb": {"x": 1}}

    cfg = apply_sweep(config.build({"lr": 0.1, "strategy": "freeze"}), FakeTracker())
    assert (cfg.lr, cfg.strategy) == (0.0003, "full")


@pytest.mark.parametrize("argv, needle", [
    (["--lr=abc"], "lr='abc'"),
    (["--lr=0"], "lr=0.0"),
    (["--epochs=2.5"], "epochs='2.5'"),
    (["--strategy=bogus"], "one of freeze, partial, full, two_phase"),
    (["--optimizer=adagrad"], "one of adam, adamw, sgd"),
    (["--scheduler=linear"], "scheduler='linear'"),
    (["--colour=red"], "unknown config key 'colour'"),
    (["--amp=maybe"], "true or false"),
    (["--model=resnet5000"], "timm model name"),
    (["--weights=/no/such/file.pth"], "weights='/no/such/file.pth'"),
    (["--strategy=two_phase", "--epochs=2", "--phase1_epochs=2"], "phase1_epochs=2"),
    (["--strategy=partial", "--unfreeze_blocks=0"], "unfreeze_blocks=0"),
    (["--val_fraction=0.5", "--test_fraction=0.5"], "val_fraction + test_fraction"),
    (["--device=tpu"], "device='tpu'"),
    (["--dropout=1.5"], "dropout=1.5"),
])
def test_bad_values_are_named_in_one_line(argv, needle):
    with pytest.raises(ConfigError) as e:
        resolve_config(argv)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_config_exits_2_with_one_line_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "finetune_resnet.py", "--optimizer=adagrad",
                           f"--runs_dir={tmp_path}/runs"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: optimizer='adagrad' is not valid: expected one of adam, adamw, sgd"]
    assert not (tmp_path / "runs").exists()


def test_help_lists_every_key():
    text = config.help_text()
    assert all(f"--{k}" in text for k in config.FIELDS)
