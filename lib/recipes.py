"""What each fine-tuning strategy reads of the config, and what `augment=auto` means for it: shared by
the config (choices), training and the report (which keys a run's recipe really has). Standard library
only: the config imports it before torch."""

# Implemented in lib.train.strategies. The keys only some of them read (every other key: all of them), checked
# by tests/train/test_strategies.py: freeze trains the classifier alone, so the backbone's keys are nothing to it.
STRATEGIES = ("freeze", "partial", "full", "two_phase", "surgical", "bitfit", "norm_only", "gradual")
STRATEGY_KEYS = {"unfreeze_blocks": ("partial", "two_phase"),
                 "unfreeze_unit": ("partial", "two_phase", "surgical", "gradual"),
                 "phase1_epochs": ("two_phase",), "surgical_unit": ("surgical",), "unfreeze_every": ("gradual",),
                 **dict.fromkeys(("train_bn", "backbone_lr_mult", "layer_decay"),
                                 tuple(s for s in STRATEGIES if s != "freeze"))}

# What augment=auto is for a strategy (else light). freeze trains a head on a frozen backbone: without
# augmentation its features are computed once and stored (lib.train.features), which measured as accurate
# as light augmentation recomputed every epoch, and 10-30x faster (docs/defaults.md, bench/freeze_default.py).
AUTO_AUGMENT = {"freeze": "none"}


def strategy_uses(strategy: str, key: str) -> bool:
    """Whether a run of ``strategy`` reads ``key`` (a freeze run's backbone_lr_mult is no part of its recipe);
    a strategy the kit does not train itself (a model soup) is taken to read every key."""
    return key not in STRATEGY_KEYS or strategy not in STRATEGIES or strategy in STRATEGY_KEYS[key]
