"""Strategies: the exact set of parameters that receive gradients, per model and strategy, and
BatchNorm statistics that stay fixed where they must."""
import pytest
import timm
import torch

from lib import config, strategies
from lib.optim import create_optimizer

MODELS_EXPECTED = {
    # model: {(strategy, unit, n): prefixes of the parameters that must train}
    "resnet50": {
        ("freeze", "stage", 0): ["fc."],
        ("partial", "stage", 1): ["layer4.", "fc."],
        ("partial", "stage", 2): ["layer3.", "layer4.", "fc."],
        ("partial", "block", 2): ["layer4.1.", "layer4.2.", "fc."],
    },
    "efficientnet_b0": {
        ("freeze", "stage", 0): ["classifier."],
        ("partial", "stage", 2): ["blocks.5.", "blocks.6.", "conv_head.", "bn2.", "classifier."],
        ("partial", "block", 2): ["blocks.5.3.", "blocks.6.0.", "conv_head.", "bn2.", "classifier."],
    },
    "mobilenetv3_large_100": {
        ("freeze", "stage", 0): ["classifier."],
        ("partial", "block", 2): ["blocks.5.2.", "blocks.6.0.", "conv_head.", "classifier."],
    },
    "mobilenetv2_100": {
        ("freeze", "stage", 0): ["classifier."],
        ("partial", "stage", 1): ["blocks.6.", "conv_head.", "bn2.", "classifier."],
        ("partial", "block", 2): ["blocks.5.2.", "blocks.6.0.", "conv_head.", "bn2.", "classifier."],
    },
}
CASES = [(m, *key, prefixes) for m, table in MODELS_EXPECTED.items() for key, prefixes in table.items()]
_models = {}


def fresh(name):
    if name not in _models:
        torch.manual_seed(0)
        m = timm.create_model(name, pretrained=False, num_classes=5)
        for mod in m.modules():  # undo timm's zero-init of last-BN gammas: those block all gradients
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                torch.nn.init.uniform_(mod.weight, 0.5, 1.5)
        _models[name] = m
    m = timm.create_model(name, pretrained=False, num_classes=5)
    m.load_state_dict(_models[name].state_dict())
    return m


def grads_after_one_step(model, cfg, phase):
    strategies.apply(model, strategies.trainable_names(model, cfg, phase))
    strategies.set_train_mode(model, strategies.frozen_modules(model, cfg.train_bn))
    opt = create_optimizer(model, cfg, phase)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("name, strategy, unit, n, prefixes", CASES)
def test_exact_parameters_receive_gradients(name, strategy, unit, n, prefixes):
    model = fresh(name)
    cfg = config.build({"strategy": strategy, "unfreeze_unit": unit, "unfreeze_blocks": max(n, 1),
                        "train_bn": True})
    expected = {k for k, _ in model.named_parameters() if k.startswith(tuple(prefixes))}
    got = grads_after_one_step(model, cfg, strategies.phases(cfg)[0])
    assert got == expected
    assert {k for k, p in model.named_parameters() if p.requires_grad} == expected


@pytest.mark.parametrize("name", list(MODELS_EXPECTED))
def test_full_trains_everything(name):
    model = fresh(name)
    cfg = config.build({"strategy": "full"})
    got = grads_after_one_step(model, cfg, strategies.phases(cfg)[0])
    assert got == {k for k, _ in model.named_parameters()}


def bn_stats(model):
    return {n: m.running_mean.clone() for n, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


@pytest.mark.parametrize("train_bn", [False, True])
def test_frozen_batchnorm_statistics_do_not_move(train_bn):
    model = fresh("resnet50")
    cfg = config.build({"strategy": "partial", "unfreeze_blocks": 1, "train_bn": train_bn})
    before = bn_stats(model)
    grads_after_one_step(model, cfg, strategies.phases(cfg)[0])
    after = bn_stats(model)
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    in_layer4 = {n for n in before if n.startswith("layer4.")}
    assert moved == (in_layer4 if train_bn else set())


def test_freeze_holds_the_whole_backbone_in_eval_mode():
    model = fresh("efficientnet_b0")
    cfg = config.build({"strategy": "freeze", "drop_path": 0.2})
    strategies.apply(model, strategies.trainable_names(model, cfg, strategies.phases(cfg)[0]))
    strategies.set_train_mode(model, strategies.frozen_modules(model, train_bn=True))
    assert model.training
    assert not any(m.training for n, m in model.named_modules() if n.startswith(("blocks.", "conv_stem")))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.forward_features(x), model.forward_features(x))  # exact feature extractor


def test_two_phase_plan_and_learning_rates():
    cfg = config.build({"strategy": "two_phase", "epochs": 5, "phase1_epochs": 2, "lr": 1e-2,
                        "backbone_lr_mult": 0.01, "unfreeze_blocks": 1})
    p1, p2 = strategies.phases(cfg)
    assert (p1.name, p1.epochs, p2.name, p2.epochs) == ("freeze", 2, "partial", 3)
    model = fresh("resnet50")
    strategies.apply(model, strategies.trainable_names(model, cfg, p2))
    lrs = {g["lr"] for g in create_optimizer(model, cfg, p2).param_groups}
    assert sorted(lrs) == pytest.approx([1e-4])
    cfg_all = config.build({"strategy": "two_phase", "epochs": 3, "phase1_epochs": 1, "unfreeze_blocks": 0})
    assert strategies.phases(cfg_all)[1].name == "full"


def test_discriminative_and_layer_decay_learning_rates():
    model = fresh("resnet50")
    cfg = config.build({"strategy": "full", "lr": 1e-3, "backbone_lr_mult": 0.1, "layer_decay": 0.5,
                        "weight_decay": 0.05})
    phase = strategies.phases(cfg)[0]
    strategies.apply(model, strategies.trainable_names(model, cfg, phase))
    opt = create_optimizer(model, cfg, phase)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["fc.weight"])] == (pytest.approx(1e-3), 0.05)
    assert lr_of[id(named["fc.bias"])][1] == 0.0                         # no decay on biases
    assert lr_of[id(named["layer4.2.conv1.weight"])][0] == pytest.approx(1e-4 * 0.5)
    assert lr_of[id(named["layer4.1.conv1.weight"])][0] == pytest.approx(1e-4 * 0.25)
    assert lr_of[id(named["conv1.weight"])][0] < lr_of[id(named["layer1.0.conv1.weight"])][0]
