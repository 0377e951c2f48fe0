"""``lr: auto`` (lib.train.lr_find): read from every source the config reads; the range test on real
Animal-MNIST images leaves the model and every random state as it found them (a run with lr: auto trains
exactly as a fixed-lr run at the rate it found); the curve and its plot are in the run folder and the
found rate is the run's config.lr, in run.json and on W&B; a resumed run keeps its pick; a flat or too
short curve falls back to the recipe's rate; and the pick trains at least as well as the recipe's fixed
rate on 2- and 3-class subsets."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import yaml
from PIL import Image

from lib import config
from lib.config import ConfigError
from lib.files import read_json
from lib.train import data, features, lr_find, training
from lib.train import run as run_module
from lib.train.cache import SharedCache
from lib.train.demo_data import prepare
from lib.train.run import apply_sweep, main, make_loaders, make_loss
from tests.fakes.wandb_api import FakeApi, FakeRun, offline_records

KIND = "training"   # real training in this process: in `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]
MOBILENET = ["--model=mobilenetv2_100", "--image_size=64", "--strategy=freeze", "--optimizer=adamw"]


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "time_s"}
            for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- parsing, every source
@pytest.mark.parametrize("argv", [["--lr", "auto"], ["--lr=auto"], ["--lr=AUTO"], ["lr=auto"], ['{"lr": "auto"}'],
                                  ["--optim={'lr': 'auto'}"], ["--recipe={'strategy': 'partial', 'lr': 'auto'}"],
                                  ['--recipe={"lr": "auto", "epochs": 3}']])
def test_lr_auto_from_the_command_line_and_recipes(argv):
    assert config.resolve(argv, env={}).lr == config.LR_AUTO


def test_lr_auto_from_a_config_file_a_recipe_in_it_and_a_sweeps_parameters(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("lr: auto\nepochs: 3\n")
    assert config.resolve([f"--config={f}"], env={}).lr == "auto"
    f.write_text("recipe: {strategy: freeze, lr: auto, epochs: 3}\n")
    assert config.resolve([f"--config={f}"], env={}).lr == "auto"
    params = tmp_path / "params.yaml"   # wandb agent's parameters file: W&B passes the string
    params.write_text(yaml.safe_dump({"wandb_version": 1, "lr": {"value": "auto"}}))
    env = {"WANDB_SWEEP_ID": "s1", "WANDB_SWEEP_PARAM_PATH": str(params)}
    assert config.resolve(["--lr=0.01"], env=env).lr == "auto"
    assert config.resolve(["--lr=auto"], env={**env, "WANDB_SWEEP_PARAM_PATH": str(f)}).lr == "auto"


def test_lr_auto_from_wandb_config_and_back_to_a_number():
    class FakeTracker:   # what wandb.config holds under a sweep
        def __init__(self, values):
            self.values = values

        def sweep_overrides(self):
            return self.values

    cfg = apply_sweep(config.build({"lr": 0.1, "model": "small_cnn"}), FakeTracker({"lr": "auto", "_wandb": {}}))
    assert cfg.lr == "auto"
    assert apply_sweep(cfg, FakeTracker({"lr": 3e-3})).lr == 3e-3


def test_a_sweep_file_may_list_auto_among_its_rates(tmp_path):
    from lib.sweep import spec

    f = tmp_path / "s.yaml"
    f.write_text("program: finetune_resnet.py\nmethod: grid\nmetric: {name: best_val_acc, goal: maximize}\n"
                 "parameters:\n  lr: {values: [auto, 1.0e-3]}\n  model: {value: small_cnn}\n")
    assert [p["lr"] for p in spec.load(str(f)).grid()] == ["auto", 1e-3]


@pytest.mark.parametrize("value, shown", [("fast", "'fast'"), ("0", "0.0"), ("-1e-3", "-0.001"), ("nan", "'nan'"),
                                          ("auto-ish", "'auto-ish'")])
def test_a_bad_lr_is_one_line_naming_number_or_auto(value, shown):
    with pytest.raises(ConfigError) as e:
        config.resolve([f"--lr={value}"], env={})
    assert str(e.value) == f"lr={shown} is not valid: expected a number > 0 or auto"


def test_a_bad_lr_exits_2_before_any_run_folder(base_args, tmp_path, capsys):
    assert main(base_args + ["--model=small_cnn", "--lr=fast"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: lr='fast' is not valid: expected a number > 0 or auto"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_default_name_of_an_auto_run_says_auto():
    assert config.Config(model="m", strategy="freeze", lr="auto").default_run_name() == "m-freeze-lrauto"
    assert config.Config(model="m", strategy="freeze", lr=3e-4).default_run_name() == "m-freeze-lr3e-4"


# --------------------------------------------------------------------------- the range test itself
def setup(animals, **over):
    """A small_cnn on real images with the run's own loaders, loss and cache, as lib.train.run builds them."""
    cfg = config.build({"model": "small_cnn", "strategy": "partial", "unfreeze_blocks": 1, "augment": "none",
                        "batch_size": 16, "image_size": 32, "dropout": 0.1, "seed": 3, "lr": "auto", **over})
    splits = data.discover(animals, 0.25, 0.25, seed=0)
    dc = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0,
          "interpolation": "bilinear"}
    cache = SharedCache(None, 256)
    decoded = {s: data.decode_cached(cache, Path(animals), splits.items[s], 32, "bilinear", 16, [], s)
               for s in data.SPLITS}
    torch.manual_seed(0)
    model = timm.create_model("small_cnn", num_classes=len(splits.classes), drop_rate=cfg.dropout)
    accel = training.Accel.for_config(cfg, torch.device("cpu"))
    loaders = make_loaders(cfg, dc, decoded, False, torch.device("cpu"))
    loss = make_loss(cfg, decoded["train"], len(splits.classes), False)
    return cfg, model, loaders, accel, loss, features.Store(decoded, dc, cache)


def test_the_range_test_leaves_weights_modes_and_random_states_as_it_found_them(animals):
    cfg, model, loaders, accel, loss, store = setup(animals)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    rng, gen = torch.get_rng_state(), loaders["train"].generator.get_state()
    curve = lr_find.range_test(cfg, model, loaders, accel, loss, None, store)
    assert len(curve.lrs) >= lr_find.MIN_POINTS and curve.data.startswith("cached")   # partial: the front cached
    assert curve.lrs[0] == pytest.approx(lr_find.START_LR) and curve.lrs == sorted(curve.lrs)
    assert max(curve.losses) > min(curve.losses) * 1.5   # the loss moved: the weights did train meanwhile
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)   # BatchNorm statistics included
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(loaders["train"].generator.get_state(), gen)


def test_the_rule_on_a_descent_a_flat_curve_and_a_short_one():
    n = 60
    lrs = lr_find.rates(n).tolist()
    falling = [2.0 if i < 20 else 2.0 - 1.8 * min(1.0, (i - 20) / 20) for i in range(n)]
    curve = lr_find.Curve(lrs=lrs, losses=falling, smoothed=falling, planned=n)
    choice = lr_find.pick(curve)
    start, end = choice.descent
    assert (start, end) == (23, 38)   # past 10% and 90% of the fall from 2.0 to 0.2
    assert choice.lr == lrs[30] and choice.why_not is None
    flat = lr_find.Curve(lrs=lrs, losses=[1.0] * n, smoothed=[1.0 - 1e-4 * i for i in range(n)], planned=n)
    assert lr_find.pick(flat).lr is None and "flat" in lr_find.pick(flat).why_not
    short = lr_find.Curve(lrs=lrs[:4], losses=falling[:4], smoothed=falling[:4], planned=n, stopped="diverged")
    assert lr_find.pick(short).lr is None and "too short" in lr_find.pick(short).why_not


# --------------------------------------------------------------------------- whole runs
def test_an_auto_run_records_the_curve_and_trains_as_a_fixed_run_at_its_pick(base_args, tmp_path):
    """The range test must not leak into training: the same epochs, to the bit, as lr=<the pick>."""
    runs = tmp_path / "runs"
    assert main(base_args + MOBILENET + ["--lr=auto", "--run_id=auto", "--epochs=3"]) == 0
    rec = read_json(runs / "auto" / "run.json")
    lr = rec["config"]["lr"]
    assert isinstance(lr, float) and lr_find.START_LR <= lr <= lr_find.END_LR
    found = rec["lr_find"]
    assert found["auto"] is True and found["lr"] == lr and found["rule"] == lr_find.RULE and found["fallback"] is None
    assert found["data"].startswith("cached") and rec["summary"]["lr_found"] == lr
    curve = read_json(runs / "auto" / "lr_find.json")
    assert len(curve["rates"]) == len(curve["losses"]) == len(curve["smoothed"]) == found["steps"] >= 50
    assert curve["lr"] == lr and curve["rates"][curve["index"]] == lr
    with Image.open(runs / "auto" / "lr_find.png") as im:
        assert im.format == "PNG" and im.size[0] >= 400
    assert rows(runs / "auto")[0]["lr"] == pytest.approx(lr)

    assert main(base_args + MOBILENET + [f"--lr={lr!r}", "--run_id=fixed", "--epochs=3"]) == 0
    assert rows(runs / "auto") == rows(runs / "fixed")
    fixed = read_json(runs / "fixed" / "run.json")
    assert "lr_find" not in fixed and fixed["summary"]["lr_found"] is None
    assert not (runs / "fixed" / "lr_find.json").exists()
    for key in ("best_val_acc", "test_acc", "test_loss"):
        assert rec["summary"][key] == fixed["summary"][key]


def test_partial_auto_trains_as_a_fixed_run_at_its_pick(base_args, tmp_path):
    """partial: trainable BatchNorm statistics and the backbone group at lr x backbone_lr_mult; the balanced
    sampler draws from the loader's generator and the class weights weigh the range test's loss too."""
    runs = tmp_path / "runs"
    args = base_args + ["--model=small_cnn", "--strategy=partial", "--unfreeze_blocks=1", "--epochs=2",
                        "--sampler=balanced", "--class_weighting=balanced"]
    assert main(args + ["--lr=auto", "--run_id=auto"]) == 0
    lr = read_json(runs / "auto" / "run.json")["config"]["lr"]
    assert main(args + [f"--lr={lr!r}", "--run_id=fixed"]) == 0
    assert rows(runs / "auto") == rows(runs / "fixed")


def test_two_phase_auto_is_the_heads_rate_and_phase_2_runs_at_it_times_backbone_lr_mult(base_args, tmp_path):
    runs = tmp_path / "runs"
    assert main(base_args + ["--model=small_cnn", "--strategy=two_phase", "--epochs=3", "--phase1_epochs=1",
                             "--backbone_lr_mult=0.1", "--scheduler=constant", "--lr=auto", "--run_id=tp"]) == 0
    rec = read_json(runs / "tp" / "run.json")
    lr = rec["config"]["lr"]
    assert rec["lr_find"]["data"].startswith("cached")   # phase 1 (the head on the frozen backbone) was tested
    assert [(r["phase"], r["lr"]) for r in rows(runs / "tp")] == [("freeze", lr), ("partial", pytest.approx(lr * 0.1)),
                                                                  ("partial", pytest.approx(lr * 0.1))]


def test_a_flat_or_short_curve_falls_back_to_the_recipes_rate_with_a_warning(base_args, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    monkeypatch.setattr(lr_find, "END_LR", 1e-6)   # rates too small to move the loss: a flat curve
    args = base_args + MOBILENET + ["--epochs=1"]
    assert main(args + ["--recipe={'lr': 'auto', 'epochs': 1}", "--run_id=flat"]) == 0
    rec = read_json(runs / "flat" / "run.json")
    assert rec["config"]["lr"] == 1e-3 and "flat" in rec["lr_find"]["fallback"]   # the config's default
    assert "warning: lr: auto: no pick (the curve is flat" in capsys.readouterr().err
    assert (runs / "flat" / "lr_find.png").exists()
    monkeypatch.setattr(lr_find, "START_LR", 1e4)    # diverges at once: too short
    monkeypatch.setattr(lr_find, "END_LR", 1e6)
    assert main(args + ["--recipe={'lr': 0.02}", "--lr=auto", "--run_id=short"]) == 0
    rec = read_json(runs / "short" / "run.json")
    assert rec["config"]["lr"] == 0.02 and "too short" in rec["lr_find"]["fallback"]   # the recipe's rate


def test_a_resumed_run_keeps_its_pick_and_does_not_test_again(base_args, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    args = base_args + MOBILENET + ["--lr=auto", "--epochs=3"]
    assert main(args + ["--run_id=straight"]) == 0
    logged = run_module.Hooks.epoch

    def cut_after_first(self, row):
        logged(self, row)
        raise training.Interrupted("SIGTERM")   # as the signal handler's flag makes the loop do
    monkeypatch.setattr(run_module.Hooks, "epoch", cut_after_first)
    assert main(args + ["--run_id=cut"]) == 3
    monkeypatch.setattr(run_module.Hooks, "epoch", logged)
    monkeypatch.setattr(lr_find, "range_test", lambda *a, **k: pytest.fail("a resumed run tested again"))
    assert main(args + ["--run_id=cut"]) == 0
    rec, straight = read_json(runs / "cut" / "run.json"), read_json(runs / "straight" / "run.json")
    assert rec["resumed_from_epoch"] == 1 and rec["lr_find"]["resumed"] is True
    assert rec["config"]["lr"] == straight["config"]["lr"] == rec["summary"]["lr_found"]
    assert rows(runs / "cut") == rows(runs / "straight")


def wandb_values(run_dir: Path, kind: str) -> dict:
    """The run's config or summary as its offline W&B file has it, once W&B's writer has written it all
    (it may still be writing when the run returns: read until the exit record is in)."""
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    deadline = time.time() + 60
    records = offline_records(run_file)
    while not (records and records[-1].WhichOneof("record_type") == "exit") and time.time() < deadline:
        time.sleep(0.05)
        records = offline_records(run_file)
    out = {}
    for r in records:
        which = r.WhichOneof("record_type")
        if which == kind or (kind == "config" and which == "run"):   # the run record carries the first config
            items = r.run.config.update if which == "run" else getattr(r, kind).update
            out.update({u.key: json.loads(u.value_json) for u in items})
    return out


def test_wandb_shows_the_number(base_args, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(base_args + MOBILENET + ["--lr=auto", "--epochs=1", "--run_id=wb"]) == 0
    lr = read_json(tmp_path / "runs" / "wb" / "run.json")["config"]["lr"]
    assert wandb_values(tmp_path / "runs" / "wb", "config")["lr"] == lr
    assert wandb_values(tmp_path / "runs" / "wb", "summary")["lr_found"] == lr


def test_under_a_wandb_sweep_the_parameter_stays_auto_and_the_summary_has_the_number(base_args, tmp_path):
    """W&B locks a sweep's parameters (an update is ignored) and its grid search recognises the points it
    ran by them: lr stays "auto" in wandb.config, the number is the summary's lr_found (lib.runs reads it)."""
    params = tmp_path / "sweep-params.yaml"
    params.write_text(yaml.safe_dump({"wandb_version": 1, "lr": {"value": "auto"}}))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SWEEP_ID": "sw1", "WANDB_RUN_ID": "agentrun",
           "WANDB_SWEEP_PARAM_PATH": str(params), "WANDB_PROJECT": "p", "WANDB_SILENT": "false"}
    proc = subprocess.run([sys.executable, "finetune_resnet.py", *base_args, *MOBILENET, "--lr=0.1", "--epochs=1"],
                          check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = tmp_path / "runs" / "agentrun"
    lr = read_json(run_dir / "run.json")["config"]["lr"]
    assert isinstance(lr, float)
    assert "locked" not in proc.stderr.split("lr: auto:")[1]   # no update W&B would ignore, after the pick
    assert wandb_values(run_dir, "config")["lr"] == "auto"
    assert wandb_values(run_dir, "summary")["lr_found"] == lr


def test_a_report_from_wandb_shows_the_number_a_sweep_run_found():
    from lib.runs import read_wandb

    api = FakeApi([FakeRun("a", "finished", {"lr": {"value": "auto"}, "strategy": "freeze"},
                           {"best_val_acc": 0.9, "lr_found": 0.0042}, []),
                   FakeRun("b", "finished", {"lr": 1e-3}, {"best_val_acc": 0.8, "lr_found": None}, [])])
    runs, _ = read_wandb("e/p/s", api=api, history=False)
    assert [r["config"]["lr"] for r in runs] == [0.0042, 1e-3]


def test_the_report_groups_the_seeds_of_an_auto_recipe_though_each_found_its_own_rate(tmp_path):
    from lib.records import RunRecord
    from lib.report import build_report

    for seed, lr, val in ((0, 2.1e-3, 0.90), (1, 3.4e-3, 0.92), (2, 1.7e-3, 0.94)):
        rec = RunRecord(str(tmp_path / "runs"), f"auto{seed}")
        rec.update(id=f"auto{seed}", state="finished", lr_find={"auto": True, "lr": lr},
                   config={"model": "mobilenetv2_100", "strategy": "freeze", "lr": lr, "seed": seed},
                   summary={"best_val_acc": val, "test_acc": val, "lr_found": lr})
    rec = RunRecord(str(tmp_path / "runs"), "fixed")
    rec.update(id="fixed", state="finished", config={"model": "mobilenetv2_100", "strategy": "freeze", "lr": 1e-3,
                                                     "seed": 0}, summary={"best_val_acc": 0.91, "test_acc": 0.9})
    res = build_report(tmp_path / "runs", tmp_path / "out")
    (group,) = res["seed_groups"]
    assert sorted(group["run_ids"]) == ["auto0", "auto1", "auto2"] and group["best_val_acc_mean"] == pytest.approx(0.92)


# --------------------------------------------------------------------------- the pick against the fixed rate
@pytest.fixture(scope="module", params=[2, 3], ids=["2-class", "3-class"])
def subset(request, tmp_path_factory):
    return prepare(tmp_path_factory.mktemp(f"animals{request.param}"), per_class=300, classes=request.param, seed=4)


def test_the_pick_trains_at_least_as_well_as_the_recipes_fixed_rate(subset, tmp_path, cache_dir):
    """freeze on pretrained MobileNetV2 features, 5 epochs: best_val_acc with lr: auto against lr=1e-3 (the
    config's default), same seeds. What keeps it from being flaky: every run is deterministic on a CPU; the
    validation split is large (240 / 360 images: one image is 0.4 / 0.3 points); the gap is averaged over two
    seeds; and the tolerance (1 point) is for floating-point differences between machines, not for luck.
    Measured here (docs/lr-auto.md): the gap was positive in all 8 seed x subset runs, +2.0 / +2.4 points on
    average over 4 seeds; bench/lr_auto.py measures it on more subsets, sizes and strategies."""
    args = [f"--data_dir={subset}", f"--runs_dir={tmp_path}", f"--cache_dir={cache_dir}", "--min_image_side=16",
            "--augment=none", "--val_fraction=0.4", "--test_fraction=0.1", "--epochs=5", "--batch_size=32",
            "--device=cpu", "--log_model=false", *MOBILENET]
    gaps = []
    for seed in (0, 1):
        assert main(args + ["--lr=auto", f"--seed={seed}", f"--run_id=auto{seed}"]) == 0
        assert main(args + ["--lr=1e-3", f"--seed={seed}", f"--run_id=fixed{seed}"]) == 0
        auto = read_json(tmp_path / f"auto{seed}" / "run.json")
        fixed = read_json(tmp_path / f"fixed{seed}" / "run.json")
        assert auto["lr_find"]["fallback"] is None and auto["lr_find"]["seconds"] < 5   # on cached features
        gaps.append(auto["summary"]["best_val_acc"] - fixed["summary"]["best_val_acc"])
    assert sum(gaps) / len(gaps) >= -0.01, gaps
