"""Optimizers and schedules (lib.train.optim) on their own: which learning rate and weight decay each
parameter gets (head vs backbone, backbone_lr_mult, layer_decay, no decay on biases and norms, frozen
parameters left out), and the learning rate at given steps of each schedule, warmup included,
against the formulas written out here."""
import math

import pytest
import timm
import torch
from torch import nn

from lib import config
from lib.train import (
    models,  # noqa: F401 - registers small_cnn with timm
    strategies,
)
from lib.train.optim import OPTIMIZERS, Schedule, create_optimizer, param_groups


def small_cnn(cfg):
    torch.manual_seed(0)
    model = timm.create_model("small_cnn", num_classes=3)
    phase = strategies.phases(cfg)[0]
    strategies.apply(model, strategies.trainable_names(model, cfg, phase))
    return model, phase


def settings(model, groups) -> dict[str, tuple[float, float]]:
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}


def no_decay(model) -> set[str]:
    """Biases and the affine parameters of norm layers, found from the module types."""
    out = set()
    for m_name, m in model.named_modules():
        for p_name, _ in m.named_parameters(recurse=False):
            if p_name == "bias" or isinstance(m, nn.modules.batchnorm._NormBase):
                out.add(f"{m_name}.{p_name}")
    return out


# --- parameter groups --------------------------------------------------------------------------------
def test_head_at_lr_backbone_at_the_multiplier_and_no_decay_on_biases_and_norms():
    cfg = config.build({"strategy": "full", "lr": 0.02, "backbone_lr_mult": 0.1, "weight_decay": 0.05})
    model, phase = small_cnn(cfg)
    got = settings(model, param_groups(model, cfg, phase))
    assert set(got) == {n for n, _ in model.named_parameters()}                 # everything trains, once
    skip = no_decay(model)
    assert skip and any(".1.weight" in n for n in skip)                         # BatchNorm weights among them
    for name in got:
        # small_cnn's head group: fc1 (left unmatched by its group_matcher) and the classifier
        lr = 0.02 if name.startswith(("fc1.", "head.")) else 0.02 * 0.1
        assert got[name] == (pytest.approx(lr), 0.0 if name in skip else 0.05), name
    groups = param_groups(model, cfg, phase)
    assert len(groups) == 4                                                    # {head, backbone} x {decay, none}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_frozen_parameters_are_left_out():
    cfg = config.build({"strategy": "freeze", "lr": 0.01, "weight_decay": 0.0})
    model, phase = small_cnn(cfg)
    got = settings(model, param_groups(model, cfg, phase))
    assert set(got) == {"head.weight", "head.bias"}
    assert set(got.values()) == {(0.01, 0.0)}


def test_layer_decay_scales_each_block_by_its_distance_from_the_head():
    cfg = config.build({"strategy": "full", "lr": 0.1, "backbone_lr_mult": 0.5, "layer_decay": 0.5})
    model, phase = small_cnn(cfg)
    got = settings(model, param_groups(model, cfg, phase))
    # blocks 0..3, then the head group (fc1, head) as layer 4: block i is 4 - i layers from it
    for name, (lr, _) in got.items():
        if name.startswith("blocks."):
            i = int(name.split(".")[1])
            assert lr == pytest.approx(0.1 * 0.5 * 0.5 ** (4 - i)), name
        else:
            assert lr == pytest.approx(0.1), name


def test_a_phase_scale_without_discrimination_is_one_rate_for_all():
    cfg = config.build({"strategy": "two_phase", "epochs": 3, "phase1_epochs": 1, "unfreeze_blocks": 0,
                        "lr": 0.01, "backbone_lr_mult": 0.2})
    model, _ = small_cnn(cfg)
    phase2 = strategies.phases(cfg)[1]
    strategies.apply(model, strategies.trainable_names(model, cfg, phase2))
    got = settings(model, param_groups(model, cfg, phase2))
    assert phase2.name == "full" and set(got) == {n for n, _ in model.named_parameters()}
    assert [lr for lr, _ in got.values()] == pytest.approx([0.01 * 0.2] * len(got))   # head included


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_optimizers_by_name_keep_the_groups(name, cls):
    cfg = config.build({"strategy": "full", "optimizer": name, "lr": 0.03, "momentum": 0.8, "nesterov": True,
                        "weight_decay": 0.01})
    model, phase = small_cnn(cfg)
    opt = create_optimizer(model, cfg, phase)
    assert type(opt) is cls and set(OPTIMIZERS) == {"adam", "adamw", "sgd"}
    assert settings(model, opt.param_groups) == settings(model, param_groups(model, cfg, phase))
    if name == "sgd":
        assert all(g["momentum"] == 0.8 and g["nesterov"] for g in opt.param_groups)


def test_sgd_without_momentum_is_not_nesterov():
    cfg = config.build({"optimizer": "sgd", "momentum": 0.0, "nesterov": True})
    model, phase = small_cnn(cfg)
    assert not any(g["nesterov"] for g in create_optimizer(model, cfg, phase).param_groups)


# --- schedules ---------------------------------------------------------------------------------------
def lrs(cfg, epochs: int, steps_per_epoch: int, base=(1.0, 0.1)) -> list[list[float]]:
    """The learning rate of each group before every batch of the phase."""
    params = [nn.Parameter(torch.zeros(1)) for _ in base]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base, strict=True)], lr=base[0])
    schedule = Schedule(opt, cfg, epochs, steps_per_epoch)
    out = []
    for _ in range(epochs * steps_per_epoch):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        schedule.step_batch()
    return out


def warmup_factor(t: int, warmup: int) -> float:
    return 1e-3 + (1 - 1e-3) * t / warmup


def test_cosine_with_warmup_steps_at_the_formula():
    cfg = config.build({"scheduler": "cosine", "warmup_epochs": 1})
    got = lrs(cfg, epochs=3, steps_per_epoch=4)                    # warmup 4 steps, then cosine over 8
    for t, row in enumerate(got):
        f = warmup_factor(t, 4) if t < 4 else (1 + math.cos(math.pi * (t - 4) / 8)) / 2
        assert row == pytest.approx([1.0 * f, 0.1 * f], rel=1e-6, abs=1e-12), t


def test_cosine_without_warmup_and_fractional_warmup():
    got = lrs(config.build({"scheduler": "cosine"}), epochs=2, steps_per_epoch=5)
    assert [r[0] for r in got] == pytest.approx([(1 + math.cos(math.pi * t / 10)) / 2 for t in range(10)])
    # 0.5 epoch of 3 steps: ceil(1.5) = 2 warmup steps, then cosine over 9 - 2 = 7
    got = lrs(config.build({"scheduler": "cosine", "warmup_epochs": 0.5}), epochs=3, steps_per_epoch=3)
    expected = [warmup_factor(t, 2) if t < 2 else (1 + math.cos(math.pi * (t - 2) / 7)) / 2 for t in range(9)]
    assert [r[0] for r in got] == pytest.approx(expected, rel=1e-6)


def test_warmup_longer_than_the_phase_leaves_its_last_step_at_full_rate():
    got = lrs(config.build({"scheduler": "constant", "warmup_epochs": 10}), epochs=1, steps_per_epoch=4)
    # capped at 4 - 1 = 3 steps of warmup
    assert [r[0] for r in got] == pytest.approx([warmup_factor(t, 3) for t in range(3)] + [1.0])


def test_step_exponential_and_constant_schedules():
    spe = 3
    step = lrs(config.build({"scheduler": "step", "step_epochs": 2, "gamma": 0.5}), epochs=5, steps_per_epoch=spe)
    assert [r[0] for r in step] == pytest.approx([0.5 ** (t // (2 * spe)) for t in range(5 * spe)])
    expo = lrs(config.build({"scheduler": "exponential", "gamma": 0.5}), epochs=3, steps_per_epoch=spe)
    assert [r[1] for r in expo] == pytest.approx([0.1 * 0.5 ** (t / spe) for t in range(3 * spe)], rel=1e-6)
    const = lrs(config.build({"scheduler": "constant"}), epochs=2, steps_per_epoch=spe)
    assert const == [[1.0, 0.1]] * (2 * spe)


def test_onecycle_rises_to_each_groups_rate_then_anneals():
    total = 20
    got = lrs(config.build({"scheduler": "onecycle"}), epochs=4, steps_per_epoch=5, base=(1.0, 0.1))
    peak = 0.3 * total - 1                                           # torch's default pct_start = 0.3
    for t, row in enumerate(got):
        for max_lr, lr in zip((1.0, 0.1), row, strict=True):
            start, end = max_lr / 25, max_lr / 25 / 1e4
            if t <= peak:
                a, b, pct = start, max_lr, t / peak
            else:
                a, b, pct = max_lr, end, (t - peak) / (total - 1 - peak)
            assert lr == pytest.approx(b + (a - b) / 2 * (1 + math.cos(math.pi * pct)), rel=1e-6), t


def test_plateau_cuts_the_rate_after_two_epochs_without_a_better_val_accuracy():
    params = [nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr=1.0)
    schedule = Schedule(opt, config.build({"scheduler": "plateau", "gamma": 0.1}), epochs=10, steps_per_epoch=2)
    seen = []
    for acc in (0.5, 0.6, 0.7, 0.7, 0.65, 0.7, 0.8, 0.8, 0.8):
        for _ in range(2):
            opt.step()
            schedule.step_batch()                                   # no effect per batch
        schedule.step_epoch(acc)
        seen.append(opt.param_groups[0]["lr"])
    # mode max, patience 1: the second epoch in a row with no new best cuts by gamma
    assert seen == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01])


def test_a_schedule_resumed_from_its_state_continues_the_same():
    cfg = config.build({"scheduler": "cosine", "warmup_epochs": 1})
    whole = lrs(cfg, epochs=3, steps_per_epoch=4)
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [param], "lr": 1.0}], lr=1.0)
    first = Schedule(opt, cfg, 3, 4)
    for _ in range(6):
        opt.step()
        first.step_batch()
    state, opt_state = first.state_dict(), opt.state_dict()
    param2 = nn.Parameter(torch.zeros(1))
    opt2 = torch.optim.SGD([{"params": [param2], "lr": 1.0}], lr=1.0)
    second = Schedule(opt2, cfg, 3, 4)
    opt2.load_state_dict(opt_state)
    second.load_state_dict(state)
    rest = []
    for _ in range(6):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        second.step_batch()
    assert rest == pytest.approx([r[0] for r in whole[6:]], rel=1e-6)
