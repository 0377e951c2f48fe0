"""Config: precedence (defaults < file < command line < wandb.config), `wandb agent` argument forms,
and one-line rejection of bad values."""
import os
import shutil
import subprocess
import sys
import time

import pytest

from lib import config
from lib.config import Config, ConfigError
from lib.train.run import resolve_config


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
    from lib.train.run import apply_sweep

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
    (["--monitor=val_f1"], "monitor='val_f1' is not valid: expected one of val_acc, val_balanced_acc, val_loss"),
    (["--class_weighting=inverse"], "expected one of none, balanced"),
    (["--sampler=weighted"], "expected one of random, balanced"),
    (["--run_id=../x"], "run_id='../x' is not valid: expected letters, digits, - and _"),
    (["--run_id=caf\u00e9"], "run_id='caf\u00e9' is not valid"),        # the same ASCII rule everywhere ids are read
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


def test_an_alias_bomb_config_file_is_one_line_at_once(tmp_path):
    """1 KB of nested YAML aliases (`&a [*a, *a, ...]`) expands to 387 million values: refused once read,
    in one line, exit 2, before any run folder exists (it used to spin for minutes)."""
    bomb = tmp_path / "bomb.yaml"
    nested = ["&a [x, x, x, x, x, x, x, x, x]"] + [f"&{b} [{', '.join([f'*{a}'] * 9)}]"
                                                   for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
    bomb.write_text(f"lr: 0.01\ntags: [{', '.join(nested)}]\n")   # a known key: its value is looked at
    proc = subprocess.run([sys.executable, "finetune_resnet.py", "--config", str(bomb), f"--runs_dir={tmp_path}/runs"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "expands to more than" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_class_weighting_reads_its_old_boolean_spelling():
    """class_weighting was a boolean: true/false in earlier configs, sweeps and records still read."""
    for old, now in ((True, "balanced"), (False, "none"), ("true", "balanced"), ("False", "none"),
                     ("balanced", "balanced")):
        assert config.build({"class_weighting": old}).class_weighting == now
    assert config.build({"recipe": {"class_weighting": True}}).class_weighting == "balanced"


def test_help_lists_every_key():
    text = config.help_text()
    assert all(f"--{k}" in text for k in config.FIELDS)


# --- W&B's argument forms, nested sweep groups, W&B's own config files -------------------------------

# A sweep's parameters as the W&B server hands them to the agent: a nested group (two levels), bools
# inside and outside it, floats, strings, an int.
AGENT_ARGS = {
    "optim": {"value": {"lr": 0.0125, "weight_decay": 0.0, "sched": {"scheduler": "step", "gamma": 0.5},
                        "train_bn": False}},
    "ema": {"value": True}, "class_weighting": {"value": "balanced"}, "dropout": {"value": 0.25},
    "model": {"value": "small_cnn"},
    "strategy": {"value": "partial"}, "unfreeze_blocks": {"value": 2}, "run_name": {"value": "a b"},
}
EXPECTED = dict(lr=0.0125, weight_decay=0.0, scheduler="step", gamma=0.5, train_bn=False, ema=True,
                class_weighting="balanced",
                dropout=0.25, model="small_cnn", strategy="partial", unfreeze_blocks=2, run_name="a b")


def _agent_argv(form: str, tmp_path) -> list[str]:
    """The argv `wandb agent` builds for ${<form>}, with W&B's own function."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    made = create_sweep_command_args({"args": AGENT_ARGS})
    if form == "args_json_file":  # what the agent writes for ${args_json_file}
        (tmp_path / "config-x.json").write_text(made["args_json"][0])
        return [str(tmp_path / "config-x.json")]
    return made[form]


@pytest.mark.parametrize("form", ["args", "args_no_equals", "args_no_hyphens", "args_no_boolean_flags",
                                  "args_json", "args_json_file"])
def test_every_wandb_agent_form_with_a_nested_group(form, tmp_path):
    cfg = resolve_config(_agent_argv(form, tmp_path), env={})
    assert {k: getattr(cfg, k) for k in EXPECTED} == EXPECTED


def test_the_agents_params_file_with_a_nested_group_wins(tmp_path):
    """Under `wandb agent` (WANDB_SWEEP_ID set) the params file, written by W&B's own function, is the
    last layer: read before W&B or a run folder starts."""
    from wandb.sdk.lib import config_util

    params = tmp_path / "config-x.yaml"
    config_util.save_config_file_from_dict(str(params), AGENT_ARGS)
    env = {"WANDB_SWEEP_ID": "abc", "WANDB_SWEEP_PARAM_PATH": str(params)}
    cfg = resolve_config(["--lr=0.9", "--dropout=0.5", "--epochs=4"], env=env)
    assert {k: getattr(cfg, k) for k in EXPECTED} == EXPECTED and cfg.epochs == 4


def test_a_wandb_config_yaml_works_as_config_file(tmp_path):
    """The config.yaml W&B writes into a run's files: wandb_version, {desc, value} and _wandb."""
    f = tmp_path / "config.yaml"
    f.write_text("wandb_version: 1\n\n_wandb:\n  desc: null\n  value:\n    cli_version: 0.31.0\n    t: {1: [1, 41]}\n"
                 "lr:\n  desc: null\n  value: 0.003\nmodel:\n  desc: null\n  value: small_cnn\n"
                 "optim:\n  desc: null\n  value:\n    weight_decay: 0.01\n    nesterov: true\n")
    cfg = resolve_config([f"--config={f}", "--epochs=3"], env={})
    assert (cfg.lr, cfg.model, cfg.weight_decay, cfg.nesterov, cfg.epochs) == (0.003, "small_cnn", 0.01, True, 3)


def test_nested_groups_in_yaml_and_a_key_given_twice(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model: small_cnn\noptim: {lr: 0.02, sched: {scheduler: constant}}\n")
    cfg = resolve_config([f"--config={f}"], env={})
    assert (cfg.lr, cfg.scheduler) == (0.02, "constant")
    with pytest.raises(ConfigError, match=r"lr is given twice with different values: lr='0.1' and optim.lr=0.2$"):
        config.resolve(["--lr=0.1", "--optim={'lr': 0.2}"], env={})
    assert config.resolve(["--lr=0.2", "--optim={'lr': 0.2}"], env={}).lr == 0.2   # the same value: fine


def test_a_group_from_wandb_config_overrides_our_own_value():
    """wandb.config holds our config (given to wandb.init) and the sweep's group: the group's leaf wins."""
    from lib.train.run import apply_sweep

    class FakeTracker:
        def sweep_overrides(self):
            return {"lr": 0.1, "dropout": 0.0, "optim": {"lr": 0.004, "nesterov": True}, "_wandb": {}}

    cfg = apply_sweep(config.build({"lr": 0.1, "model": "small_cnn"}), FakeTracker())
    assert (cfg.lr, cfg.nesterov) == (0.004, True)


# --- bounds that need the model or the machine -----------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--seed=4294967296"], "seed=4294967296 is not valid: expected an integer in [0, 4294967295]"),
    (["--batch_size=100000"], "batch_size=100000 is not valid: expected an integer in [1, 65536]"),
    (["--num_workers=1000"], "num_workers=1000 is not valid: expected an integer in [0, 128]"),
    (["--augment_views=1000"], "augment_views=1000 is not valid: expected an integer in [0, 64]"),
    (["--image_size=8"], "image_size=8 is not valid: expected 0 (the model's size) or an integer in [16, 4096]"),
    (["--model=resnet18", "--image_size=16"],
     "image_size=16 is too small for resnet18: its last feature map is 1/32 of the input; "
     "expected 0 (its own size) or at least 32"),
    (["--model=mobilenetv2_100", "--strategy=partial", "--unfreeze_blocks=9"],
     "unfreeze_blocks=9 is more than mobilenetv2_100 has: 8 stages besides the head "
     "(unfreeze_unit=stage); expected 1..8"),
    (["--model=small_cnn", "--strategy=two_phase", "--unfreeze_unit=block", "--unfreeze_blocks=5"],
     "unfreeze_blocks=5 is more than small_cnn has: 4 blocks besides the head "
     "(unfreeze_unit=block); expected 1..4"),
    (["--device=cuda:99"], "device='cuda:99' is not available: this machine has"),
    (["--device=cuda:x"], "device='cuda:x' is not valid"),
])
def test_bounds_of_the_model_and_the_machine(argv, message):
    with pytest.raises(ConfigError) as e:
        resolve_config(argv, env={})
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_values_at_the_bounds_are_accepted():
    cfg = resolve_config(["--model=mobilenetv2_100", "--strategy=partial", "--unfreeze_blocks=8",
                          "--image_size=32", "--seed=4294967295", "--device=cpu"], env={})
    assert (cfg.unfreeze_blocks, cfg.image_size, cfg.seed) == (8, 32, 2**32 - 1)


def test_cuda_on_a_machine_without_one_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=r"^device='cuda' is not available: this machine has no CUDA device"):
        resolve_config(["--device=cuda"], env={})


# --- messages a person can act on -------------------------------------------------------------------

def _typo_sources(tmp_path):
    (tmp_path / "run.yaml").write_text("lerning_rate: 0.01\n")
    (tmp_path / "params.yaml").write_text("wandb_version: 1\nlerning_rate:\n  value: 0.01\n")
    sweep_env = {"WANDB_SWEEP_ID": "abc", "WANDB_SWEEP_PARAM_PATH": str(tmp_path / "params.yaml")}
    return {"--key=value": (["--lerning_rate=0.01"], {}), "--key value": (["--lerning_rate", "0.01"], {}),
            "key=value": (["lerning_rate=0.01"], {}), "json": (['{"lerning_rate": 0.01}'], {}),
            "yaml": ([f"--config={tmp_path / 'run.yaml'}"], {}), "sweep params": ([], sweep_env),
            "group": (["--optim={'lerning_rate': 0.01}"], {})}


@pytest.mark.parametrize("source", ["--key=value", "--key value", "key=value", "json", "yaml", "sweep params",
                                    "group"])
def test_a_misspelled_key_names_the_closest_one_in_every_form(source, tmp_path):
    argv, env = _typo_sources(tmp_path)[source]
    with pytest.raises(ConfigError) as e:
        resolve_config(argv, env=env)
    text = str(e.value)
    assert "lerning_rate" in text and "did you mean 'lr'?" in text and "\n" not in text
    assert "weight_decay" not in text   # the list of every key is --help's, not the error's


@pytest.mark.parametrize("key, meant", [("learning_rate", "lr"), ("wd", "weight_decay"), ("bs", "batch_size"),
                                        ("bacth_size", "batch_size"), ("epoch", "epochs"), ("img_size", "image_size")])
def test_aliases_and_close_spellings(key, meant):
    with pytest.raises(ConfigError, match=f"did you mean '{meant}'"):
        config.build({key: 1})


def test_a_misspelled_key_from_wandb_config_names_the_closest_one():
    from lib.train.run import apply_sweep

    class FakeTracker:
        def sweep_overrides(self):
            return {"lerning_rate": 0.01}

    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        apply_sweep(config.build({"model": "small_cnn"}), FakeTracker())


@pytest.mark.parametrize("argv, rc", [(["--help"], 0), (["--lerning_rate=0.01"], 2), (["--lr=abc"], 2)])
def test_help_and_config_errors_answer_without_torch(argv, rc):
    """No torch/timm import for --help or a pure config error: they answer at once."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "finetune_resnet.py", *argv],
                          capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - started
    assert proc.returncode == rc
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "timm", "wandb", "lib.train.run"}
    if rc == 0:
        assert all(f"--{k}" in proc.stdout for k in config.FIELDS)
    else:
        errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
        assert len(errors) == 1 and errors[0].startswith("error: ")
    assert took < 3, f"{argv} took {took:.2f} s"   # about 0.1 s alone; slack for a busy 2-core machine


# --- a run that cannot start leaves nothing behind ---------------------------------------------------

def _one_class(root, animals):
    folder = root / "only_class"
    folder.mkdir(parents=True)
    for src in sorted(next(p for p in sorted(animals.iterdir()) if p.is_dir()).glob("*.png"))[:5]:
        shutil.copy(src, folder / src.name)
    return root


def _no_run_folder(runs) -> bool:
    return not runs.exists() or not [p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")]


@pytest.mark.parametrize("case, needle", [("missing", "is not a folder"),
                                          ("bad sweep value", "lr='fast' is not valid")])
def test_a_run_that_cannot_start_writes_no_run_folder(case, needle, tmp_path, animals):
    """Checks that fail before any work write nothing: one line, exit 2, no run folder (the real entrypoint)."""
    data_dir = tmp_path / "nowhere" if case == "missing" else animals
    env = dict(os.environ)
    if case == "bad sweep value":   # a wandb-agent run whose params file holds a bad value
        (tmp_path / "params.yaml").write_text("wandb_version: 1\nlr:\n  value: fast\n")
        env.update(WANDB_SWEEP_ID="abc", WANDB_RUN_ID="r1", WANDB_SWEEP_PARAM_PATH=str(tmp_path / "params.yaml"))
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "finetune_resnet.py", f"--data_dir={data_dir}", f"--runs_dir={runs}",
                           "--model=small_cnn", "--image_size=32", "--epochs=1", "--device=cpu"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert _no_run_folder(runs)


def test_a_single_class_writes_no_run_folder(tmp_path, animals, capsys):
    from lib.train.run import main

    folder = tmp_path / "one" / "only_class"
    folder.mkdir(parents=True)
    for src in sorted(next(p for p in sorted(animals.iterdir()) if p.is_dir()).glob("*.png"))[:5]:
        shutil.copy(src, folder / src.name)
    runs = tmp_path / "runs"
    assert main([f"--data_dir={folder.parent}", f"--runs_dir={runs}", "--model=small_cnn", "--image_size=32",
                 "--device=cpu"], env=dict(os.environ)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 class folder(s) with images: a classifier needs at least two" in err[0]
    assert _no_run_folder(runs)


# --- recipes: several keys at once, as one value of a W&B grid ------------------------------------
GUIDE = {"strategy": "partial", "lr": 1.0e-4, "epochs": 15, "unfreeze_blocks": 1}


def test_a_recipe_sets_its_keys_and_explicit_keys_win():
    cfg = config.build({"recipe": GUIDE})
    assert (cfg.strategy, cfg.lr, cfg.epochs, cfg.unfreeze_blocks) == ("partial", 1e-4, 15, 1)
    cfg = config.build({"recipe": GUIDE}, {"epochs": 3})
    assert (cfg.strategy, cfg.epochs) == ("partial", 3)
    cfg = config.build({"epochs": 3}, {"recipe": GUIDE})          # explicit wins, whatever the order
    assert cfg.epochs == 3
    assert cfg.to_dict()["recipe"] == GUIDE                       # the recipe itself stays in the record


def test_a_recipe_as_wandb_agent_passes_it():
    """The argv `wandb agent` builds for a dict value (W&B's own function): --recipe={'strategy': ...}."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    args = create_sweep_command_args({"args": {"recipe": {"value": GUIDE}, "model": {"value": "resnet18"}}})
    for form in ("args", "args_no_equals", "args_json", "args_no_hyphens"):
        cfg = resolve_config(args[form])
        assert (cfg.model, cfg.strategy, cfg.lr, cfg.epochs) == ("resnet18", "partial", 1e-4, 15), form


@pytest.mark.parametrize("recipe, needle", [
    ({"strategy": "freeze", "lerning_rate": 1e-3}, "'recipe.lerning_rate': did you mean 'lr'?"),
    ({"strategy": "sideways"}, "strategy='sideways' is not valid"),
    ({"recipe": {"lr": 1.0}}, "cannot hold another recipe"),
    ("fast", "recipe='fast' is not valid: expected a mapping of config keys"),
    ({"strategy": "two_phase", "epochs": 2, "phase1_epochs": 2}, "phase1_epochs=2 must be smaller")])
def test_a_bad_recipe_is_one_line(recipe, needle):
    with pytest.raises(ConfigError, match=None) as e:
        config.build({"recipe": recipe})
    assert needle in str(e.value) and "\n" not in str(e.value)


# --- what a new user meets in the first hour (issue 22) -----------------------------------------------

def test_help_shows_every_default_as_a_value():
    """recipe's default comes from a factory: --help printed <dataclasses._MISSING_TYPE object at 0x...>."""
    proc = subprocess.run([sys.executable, "finetune_resnet.py", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "MISSING" not in proc.stdout
    recipe = next(line for line in proc.stdout.splitlines() if line.lstrip().startswith("--recipe "))
    assert "[default: {};" in recipe


@pytest.mark.parametrize("argv, key, nxt", [(["--lr", "--runs_dir", "X"], "lr", "--runs_dir"),
                                            (["--model", "--lr=0.1"], "model", "--lr"),
                                            (["--config", "--epochs", "3"], "config", "--epochs"),
                                            (["--epochs"], "epochs", None)])
def test_a_key_followed_by_another_flag_needs_a_value(argv, key, nxt):
    """`--lr --runs_dir X` said "unexpected argument 'X'": the key that lacks its value is named."""
    proc = subprocess.run([sys.executable, "finetune_resnet.py", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    said = f"error: --{key} needs a value" + (f" (the next argument is {nxt})" if nxt else "")
    assert proc.stderr.strip().splitlines() == [said]
    _, out = config.parse_args(["--lr", "-0.5", "--tags", "a"])      # a negative number is a value, not a flag
    assert out == {"lr": "-0.5", "tags": "a"}


@pytest.mark.parametrize("typo, first", [("resnet5", ["resnet50", "resnet18"]), ("resnt18", ["resnet18"]),
                                         ("ResNet50", ["resnet50"]), ("mobilenetv3", ["mobilenetv3_large_100"]),
                                         ("efficientnet_b", ["efficientnet_b0"])])
def test_a_misspelled_model_suggests_the_closest_common_names_first(typo, first):
    """`--model resnet5` suggested cspresnet50 ... lambda_resnet50ts: now by edit distance, common families first."""
    with pytest.raises(ConfigError) as e:
        resolve_config([f"--model={typo}"], env={})
    text = str(e.value)
    hint = text.split("did you mean ")[1].rstrip("?").replace(" or ", ", ").split(", ")
    assert hint[:len(first)] == first and "\n" not in text


@pytest.mark.parametrize("key, meant", [("lerning_rate", "lr"), ("lrr", "lr"), ("weigth_decay", "weight_decay"),
                                        ("ema_decy", "ema_decay"), ("colour", None), ("x", None)])
def test_one_suggestion_for_every_misspelled_key(key, meant):
    assert config.suggest(key) == meant


def test_a_model_whose_weights_cannot_be_had_leaves_nothing_behind(tmp_path, animals):
    """The default model (resnet50) offline, with nothing in the hub cache: refused before a run folder, a
    lock, a run.json or a W&B offline run exists (it used to leave all four, after W&B had started)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "HF_HOME": str(tmp_path / "hf"),
           "WANDB_DIR": str(tmp_path / "wandb-dir")}
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "finetune_resnet.py", f"--data_dir={animals}", f"--runs_dir={runs}",
                           f"--cache_dir={tmp_path / 'cache'}", "--device=cpu"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no network to download pretrained weights for resnet50")
    assert "--weights=none" in lines[0] and "mobilenetv2_100" in lines[0]
    assert not runs.exists() and not (tmp_path / "wandb-dir").exists()
    assert not list(tmp_path.rglob("*.wandb")) and not list(tmp_path.rglob(".lock"))
