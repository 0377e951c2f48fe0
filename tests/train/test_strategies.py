"""Strategies: the exact set of parameters that receive gradients, per model and strategy, and
BatchNorm statistics that stay fixed where they must."""
import pytest
import timm
import torch

from lib import config, recipes
from lib.train import strategies
from lib.train.optim import create_optimizer

KIND = "training"   # real training in this process: in `make test`, not `make check`

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


# --- the literature's strategies -------------------------------------------------------------------
SURGICAL = {
    # model: {(surgical_unit, unfreeze_unit): prefixes that must train}; units are timm's groups
    "resnet50": {("first", "stage"): ["conv1.", "bn1.", "fc."], ("middle", "stage"): ["layer2.", "fc."],
                 ("last", "stage"): ["layer4.", "fc."], ("last", "block"): ["layer4.2.", "fc."]},
    "efficientnet_b0": {("first", "stage"): ["conv_stem.", "bn1.", "classifier."],
                        ("last", "stage"): ["blocks.6.", "conv_head.", "bn2.", "classifier."]},
    "mobilenetv3_large_100": {("middle", "stage"): ["blocks.3.", "classifier."],
                              ("last", "stage"): ["blocks.6.", "classifier."]},
    "mobilenetv2_100": {("last", "block"): ["blocks.6.0.", "conv_head.", "bn2.", "classifier."],
                        ("first", "block"): ["conv_stem.", "bn1.", "classifier."]},
}
SURGICAL_CASES = [(m, *key, prefixes) for m, table in SURGICAL.items() for key, prefixes in table.items()]


@pytest.mark.parametrize("name, which, unit, prefixes", SURGICAL_CASES)
def test_surgical_trains_one_unit_and_the_classifier(name, which, unit, prefixes):
    model = fresh(name)
    cfg = config.build({"strategy": "surgical", "surgical_unit": which, "unfreeze_unit": unit})
    expected = {k for k, _ in model.named_parameters() if k.startswith(tuple(prefixes))}
    assert grads_after_one_step(model, cfg, strategies.phases(cfg)[0]) == expected


def classifier(model):
    return {f"{n}.{p}".lstrip(".") for n, m in model.named_modules() if m is model.get_classifier()
            for p, _ in m.named_parameters()}


def expected_bitfit(model):
    """Every bias of every layer (BatchNorm's shift included) and the whole classifier."""
    return {f"{n}.bias" for n, m in model.named_modules() if getattr(m, "bias", None) is not None
            and isinstance(m.bias, torch.nn.Parameter)} | classifier(model)


def expected_norm_only(model):
    norms = (torch.nn.BatchNorm2d, torch.nn.LayerNorm, torch.nn.GroupNorm)
    return {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, norms)
            for p in ("weight", "bias")} | classifier(model)


@pytest.mark.parametrize("name", list(MODELS_EXPECTED))
@pytest.mark.parametrize("strategy, expected", [("bitfit", expected_bitfit), ("norm_only", expected_norm_only)])
def test_bitfit_and_norm_only_trainable_sets(name, strategy, expected):
    model = fresh(name)
    cfg = config.build({"strategy": strategy})
    got = grads_after_one_step(model, cfg, strategies.phases(cfg)[0])
    assert got == expected(model)
    assert all(n.endswith(("bias", "weight")) for n in got)
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for n, p in model.named_parameters() if n in got) < 0.05 * total  # a sliver


@pytest.mark.parametrize("strategy, train_bn, moves", [
    ("bitfit", True, "all"), ("bitfit", False, "none"), ("norm_only", False, "none"),
    ("surgical", True, "layer4"), ("surgical", False, "none")])
def test_batchnorm_statistics_under_the_new_strategies(strategy, train_bn, moves):
    """BatchNorm with a trainable parameter updates its statistics only when train_bn says so;
    BatchNorm in frozen units never does."""
    model = fresh("resnet50")
    cfg = config.build({"strategy": strategy, "train_bn": train_bn, "surgical_unit": "last"})
    before = bn_stats(model)
    grads_after_one_step(model, cfg, strategies.phases(cfg)[0])
    after = bn_stats(model)
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved == {"all": set(before), "none": set(),
                     "layer4": {n for n in before if n.startswith("layer4.")}}[moves]


def test_gradual_unfreezes_one_unit_from_the_top_each_stage():
    cfg = config.build({"strategy": "gradual", "epochs": 5, "unfreeze_every": 2, "unfreeze_unit": "stage",
                        "lr": 1e-2, "backbone_lr_mult": 0.1})
    plan = strategies.phases(cfg)
    assert [(p.title, p.epochs) for p in plan] == [("freeze", 2), ("partial+1", 2), ("partial+2", 1)]
    model = fresh("resnet50")
    sets = [strategies.trainable_names(model, cfg, p) for p in plan]
    def top(*prefixes):
        return {k for k, _ in model.named_parameters() if k.startswith(prefixes)}

    assert sets == [top("fc."), top("layer4.", "fc."), top("layer3.", "layer4.", "fc.")]
    strategies.apply(model, sets[2])
    lrs = {g["lr"] for g in create_optimizer(model, cfg, plan[2]).param_groups}
    assert sorted(lrs) == pytest.approx([1e-3, 1e-2])       # discriminative: backbone x0.1, head at lr


# One value per strategy-specific key, other than its default: what a run would change it to.
OTHER_VALUE = {"unfreeze_blocks": 1, "unfreeze_unit": "block", "train_bn": False, "phase1_epochs": 3,
               "surgical_unit": "first", "unfreeze_every": 3, "backbone_lr_mult": 0.5, "layer_decay": 0.65}


def what_trains(model, cfg) -> list:
    """Per phase: its plan, the parameters that train and at which learning rate, the modules held in eval."""
    from lib.train.optim import param_groups

    names = {id(p): n for n, p in model.named_parameters()}
    modules = {id(m): n for n, m in model.named_modules()}
    out = []
    for phase in strategies.phases(cfg):
        strategies.apply(model, strategies.trainable_names(model, cfg, phase))
        lrs = sorted((names[id(p)], g["lr"]) for g in param_groups(model, cfg, phase) for p in g["params"])
        held = sorted(modules[id(m)] for m in strategies.frozen_modules(model, cfg.train_bn))
        out.append((phase, lrs, held))
    return out


@pytest.mark.parametrize("strategy", recipes.STRATEGIES)
def test_the_keys_a_strategy_reads_are_the_ones_declared(strategy):
    """lib.config declares which strategies read each strategy-specific key (the report credits a run only
    with those): changing a key its strategy does not read changes nothing that trains, and changing one
    it reads changes something."""
    assert set(OTHER_VALUE) == set(recipes.STRATEGY_KEYS)
    model = fresh("resnet50")
    base = config.build({"strategy": strategy, "epochs": 6})
    before = what_trains(model, base)
    for key, value in OTHER_VALUE.items():
        changed = what_trains(model, config.build({"strategy": strategy, "epochs": 6, key: value}))
        if recipes.strategy_uses(strategy, key):
            assert changed != before, f"{strategy} is declared to read {key}, but {key}={value!r} changed nothing"
        else:
            assert changed == before, f"{strategy} is declared not to read {key}, but {key}={value!r} changed it"
