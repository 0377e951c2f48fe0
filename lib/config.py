"""The one typed config of a fine-tuning run, and how it is assembled.

Sources, later wins: defaults < ``--config FILE.yaml`` < command line < the W&B sweep's parameters (the agent's
params file, then ``wandb.config``). Keys are flat so W&B's parallel-coordinates and parameter-importance panels can
use them; a nested sweep group (``optim: {lr: 0.01}``, in any source and any form W&B passes it) only organises: its
leaves are config keys. Every value is checked before any work starts; a bad one raises :class:`ConfigError` with one
line naming the key, the value and what is allowed. This module imports no torch/timm: ``finetune_resnet.py --help``
and config errors answer at once."""
from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib import yamls
from lib.errors import ConfigError
from lib.recipes import AUTO_AUGMENT, STRATEGIES
from lib.run_id import RUN_ID_RULE, valid_run_id
from lib.spelling import closest

LR_AUTO = "auto"   # lr: auto: lib.train.lr_find picks the rate; every consumer after it reads a number


def _opt(default, help, choices=None, min=None, max=None, min_exclusive=False, allowed=None, bookkeeping=False,
         formerly=None, words=()):
    """``allowed``: the text of what is allowed, where the range alone does not say it. ``bookkeeping``:
    the key names, places or speeds up a run but is no part of its recipe (the report groups repeated
    seeds of one configuration by every other key). ``formerly``: old values (lower case) and what they
    now are, so that earlier configs, sweeps and records still read. ``words``: strings a number key also
    takes, which the run turns into a number before it uses it (``lr: auto``)."""
    meta = dict(help=help, choices=choices, min=min, max=max, min_exclusive=min_exclusive, allowed=allowed,
                bookkeeping=bookkeeping, formerly=formerly or {}, words=words)
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)   # checked once, then read everywhere: a run changes it by dataclasses.replace
class Config:
    # --- data ---
    data_dir: str = _opt("data/animal_mnist",
                         "ImageFolder root: train/val/test of class folders, or class folders only")
    val_fraction: float = _opt(0.15, "share of images held out for validation when there is no val/ folder",
                               min=0.0, max=0.9)
    test_fraction: float = _opt(0.15, "share held out for the test split when there is no test/ folder",
                                min=0.0, max=0.9)
    image_size: int = _opt(0, "input side in pixels; 0 = the model's pretrained size, else at least "
                              "16 and the model's total stride", min=0, max=4096,
                              allowed="0 (the model's size) or an integer in [16, 4096]")
    min_image_side: int = _opt(32, "images with a shorter side are skipped (and listed)", min=1)
    augment: str = _opt("auto", "training augmentation; auto: none for freeze (its head then trains on stored "
                                "features: as accurate, many times faster; docs/defaults.md), light for every "
                                "other strategy", choices=("auto", "none", "light", "strong"))
    batch_size: int = _opt(32, "images per step", min=1, max=65536)
    num_workers: int = _opt(0, "DataLoader worker processes (0: decode in the main process)", min=0, max=128,
                            bookkeeping=True)
    # --- a recipe: several keys at once (a W&B grid cannot tie them: no conditional parameters) ---
    recipe: dict = _opt({}, "a mapping of config keys applied together, e.g. {strategy: freeze, lr: 1.0e-3, "
                            "epochs: 15}; keys set explicitly in the same run win over it",
                        allowed="a mapping of config keys to values (YAML/JSON, or Python's str() of a dict)",
                        bookkeeping=True)
    # --- model and weights ---
    model: str = _opt("resnet50", "any timm model name, or small_cnn (from scratch, < 2 MB)")
    weights: str = _opt("pretrained", "pretrained | none | path to a .safetensors/.pth file")
    # --- strategy ---
    strategy: str = _opt("freeze", "which parameters train (docs/training.md). Default freeze: on a few hundred "
                                   "images a trained head on fixed pretrained features is the safe, fast baseline "
                                   "the others must beat", choices=STRATEGIES)
    unfreeze_blocks: int = _opt(2, "partial/two_phase: how many last units train besides the head "
                                   "(<= 0 in two_phase: all)")
    unfreeze_unit: str = _opt("stage", "what unfreeze_blocks counts: timm's coarse stages or fine blocks",
                              choices=("stage", "block"))
    train_bn: bool = _opt(True, "BatchNorm in trainable parts updates its running statistics (frozen parts never do)")
    phase1_epochs: int = _opt(2, "two_phase: epochs of head-only training before unfreezing", min=1)
    surgical_unit: str = _opt("last", "surgical: the one unit that trains (first: input-level shift, "
                                      "last: label shift)", choices=("first", "middle", "last"))
    unfreeze_every: int = _opt(1, "gradual: epochs between unfreezing one more unit from the top", min=1)
    # --- optimisation ---
    optimizer: str = _opt("adamw", "optimizer", choices=("adam", "adamw", "sgd"))
    lr: float = _opt(1e-3, "learning rate of the head (and of everything in single-LR setups); auto: a range test "
                           "picks it before training (docs/lr-auto.md)", min=0.0, min_exclusive=True,
                     allowed=f"a number > 0 or {LR_AUTO}", words=(LR_AUTO,))
    backbone_lr_mult: float = _opt(0.1, "backbone LR = lr x this; two_phase phase 2 runs at lr x this",
                                   min=0.0, max=1e3, min_exclusive=True)
    layer_decay: float = _opt(0.0, "layer-wise LR decay per block towards the input (0 = off; e.g. 0.65)",
                              min=0.0, max=1.0)
    momentum: float = _opt(0.9, "SGD momentum", min=0.0, max=1.0)
    nesterov: bool = _opt(False, "SGD with Nesterov momentum")
    weight_decay: float = _opt(1e-4, "decoupled (adamw) or L2 weight decay; not applied to biases and norms", min=0.0)
    scheduler: str = _opt("cosine", "LR schedule",
                          choices=("cosine", "step", "exponential", "plateau", "onecycle", "constant"))
    warmup_epochs: float = _opt(0.0, "linear warmup length in epochs (fractions allowed)", min=0.0)
    step_epochs: int = _opt(7, "step schedule: epochs between LR drops", min=1)
    gamma: float = _opt(0.1, "step/exponential/plateau: LR factor (exponential: per epoch)",
                        min=0.0, max=1.0, min_exclusive=True)
    epochs: int = _opt(10, "total epochs (two_phase: both phases together)", min=1)
    patience: int = _opt(0, "early stopping after this many epochs without a better value of monitor (0 = off)", min=0)
    monitor: str = _opt("val_acc", "the validation metric that picks the kept weights (best epoch; raw or EMA) and "
                                   "drives early stopping and the plateau schedule: val_acc, val_balanced_acc (mean "
                                   "recall over classes: use it with imbalanced classes) or val_loss (lowest wins); "
                                   "the summary's best_val_acc and best_val_balanced_acc are the kept weights' "
                                   "either way", choices=("val_acc", "val_balanced_acc", "val_loss"))
    # --- regularisation ---
    dropout: float = _opt(0.0, "dropout before the classifier head", min=0.0, max=0.95)
    drop_path: float = _opt(0.0, "stochastic depth rate where the model has it", min=0.0, max=0.95)
    label_smoothing: float = _opt(0.0, "label smoothing of the cross-entropy", min=0.0, max=0.5)
    mixup: float = _opt(0.0, "mixup alpha (0 = off)", min=0.0)
    cutmix: float = _opt(0.0, "cutmix alpha (0 = off)", min=0.0)
    ema: bool = _opt(False, "keep an exponential moving average of the weights (timm's ModelEmaV3, warmed up); "
                            "each epoch evaluates it next to the raw weights and the better is kept")
    ema_decay: float = _opt(0.998, "ema: the average's decay per step, once warmed up", min=0.0, max=0.99999)
    class_weighting: str = _opt("none", "imbalanced classes: balanced weights the cross-entropy (label smoothing and "
                                        "mixup included) by scikit-learn's 'balanced' class weights of the training "
                                        "split, n / (classes x count); none: unweighted (true/false: the old spelling)",
                                choices=("none", "balanced"), formerly={"true": "balanced", "false": "none"})
    sampler: str = _opt("random", "how training batches draw images: random (each once per epoch, shuffled) or "
                                  "balanced (each class equally often: drawn with replacement, weight 1/class count, "
                                  "same epoch length; with class_weighting=balanced too the correction is "
                                  "applied twice)", choices=("random", "balanced"))
    # --- speed ---
    feature_cache: bool = _opt(True, "the frozen front of freeze/partial phases runs once and is stored; the rest "
                                     "trains on its output (exact; off with augmentation or mixing)", bookkeeping=True)
    augment_views: int = _opt(0, "with augmentation on: store this many augmented views of the training "
                                 "set and cycle through them (0 = no caching when augmenting)", min=0, max=64)
    cache_memory_mb: float = _opt(4096.0, "memory budget of a run's caches: larger decoded images are memory-mapped, "
                                          "larger frozen outputs are not stored", min=0.0, bookkeeping=True)
    shared_cache_dir: str = _opt("", "where the runs of a study share decoded images and frozen outputs "
                                     "('' = <runs_dir>/.cache; none = do not share)", bookkeeping=True)
    # --- run ---
    time_limit_s: float = _opt(0.0, "training stops at the first batch after the run has lasted this many seconds "
                                    "(at least one epoch done; 0 = no limit); the best weights so far are tested and "
                                    "the run finishes (a time-budgeted study sets it so its runs end in time)",
                               min=0.0, bookkeeping=True)
    checkpoint_epochs: int = _opt(1, "write the resumable checkpoint (model, optimizer, RNG) every N epochs and at "
                                     "the end of each phase (0 = phase ends only); a resumed run redoes the rest",
                                  min=0, bookkeeping=True)
    seed: int = _opt(42, "seed of the split, the initialisation and the data order",
                     min=0, max=2**32 - 1, bookkeeping=True)
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N | mps", bookkeeping=True)
    amp: bool = _opt(True, "mixed precision on CUDA: bf16 on compute capability 8.0+, fp16 with a grad "
                           "scaler on 7.x and 6.0 (V100, T4, P100), else fp32; the summary's amp_dtype says which")
    compile: bool = _opt(False, "torch.compile the training forward pass (the summary's compile_s: time spent "
                                "compiling); worth it only for long runs where measured faster", bookkeeping=True)
    channels_last: bool = _opt(True, "channels_last memory format on CUDA and CPU (faster convolutions)")
    runs_dir: str = _opt("runs", "where run records go: <runs_dir>/<run_id>/", bookkeeping=True)
    cache_dir: str = _opt(str(Path.home() / ".cache" / "finetune-kit"),
                          "converted pip-shipped weights and other caches", bookkeeping=True)
    run_id: str = _opt("", "run id (default: the W&B sweep run's id, else a new one); an existing id resumes",
                       bookkeeping=True)
    overwrite: bool = _opt(False, "train again over a finished run with the same run_id (else that is refused)",
                           bookkeeping=True)
    run_name: str = _opt("", "readable name (default: model-strategy-lr)", bookkeeping=True)
    project: str = _opt("finetune-study", "W&B project", bookkeeping=True)
    entity: str = _opt("", "W&B entity (team or user); empty = your default", bookkeeping=True)
    group: str = _opt("", "W&B group (the offline sweep runner sets the sweep id)", bookkeeping=True)
    tags: str = _opt("", "extra W&B tags, comma-separated", bookkeeping=True)
    log_model: bool = _opt(True, "upload the best weights to W&B as a model artifact", bookkeeping=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def augmentation(self) -> str:
        """``augment`` as the run applies it: ``auto`` is AUTO_AUGMENT's choice for the strategy."""
        return AUTO_AUGMENT.get(self.strategy, "light") if self.augment == "auto" else self.augment

    def default_run_name(self) -> str:
        lr = self.lr if isinstance(self.lr, str) else f"{self.lr:.0e}".replace("e-0", "e-")
        return f"{self.model}-{self.strategy}-lr{lr}"


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# Not part of a run's recipe (with W&B's own bookkeeping in its config): see _opt's bookkeeping.
BOOKKEEPING = frozenset({name for name, f in FIELDS.items() if f.metadata["bookkeeping"]} | {"wandb_version"})
RECIPE_KEYS = tuple(name for name in FIELDS if name not in BOOKKEEPING)   # in the order of the config

# Annotations are strings under `from __future__ import annotations`; resolve them once.
TYPES = {name: {"str": str, "int": int, "float": float, "bool": bool, "dict": dict}[f.type]
         for name, f in FIELDS.items()}
_TRUE, _FALSE = {"true", "1", "yes", "y", "on"}, {"false", "0", "no", "n", "off"}
MIN_IMAGE_SIZE = 16        # small_cnn's total stride; lib.train.run.checked asks more of deeper models
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_FLAG = re.compile(r"^--[A-Za-z_][\w-]*(=|$)")   # --key or --key=value: an argument that names a key
# W&B's own bookkeeping in wandb.config, its config.yaml and the agent's params file (besides `_*`).
_WANDB_KEYS = {"wandb_version"}
# What other trainers call our keys: an unknown key that is (close to) one of these is pointed here.
ALIASES = {
    "learning_rate": "lr", "base_lr": "lr", "wd": "weight_decay", "bs": "batch_size", "batch": "batch_size",
    "num_epochs": "epochs", "n_epochs": "epochs", "max_epochs": "epochs", "epoch": "epochs",
    "optim": "optimizer", "opt": "optimizer", "sched": "scheduler", "lr_scheduler": "scheduler",
    "arch": "model", "backbone": "model", "model_name": "model", "img_size": "image_size",
    "input_size": "image_size", "resolution": "image_size", "workers": "num_workers", "j": "num_workers",
    "data": "data_dir", "data_path": "data_dir", "dataset": "data_dir", "drop_rate": "dropout",
    "drop_path_rate": "drop_path", "smoothing": "label_smoothing", "warmup": "warmup_epochs",
    "early_stopping": "patience", "output_dir": "runs_dir", "output": "runs_dir", "name": "run_name",
    "pretrained": "weights", "checkpoint": "weights", "aug": "augment", "augmentation": "augment",
}


def allowed_text(f) -> str:   # what a key allows, as --help, errors and docs/config.md say it
    m = f.metadata
    if m.get("allowed"):
        return m["allowed"]
    if m["choices"]:
        return "one of " + ", ".join(m["choices"])
    lo, hi = m["min"], m["max"]
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[TYPES[f.name]]
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if m['min_exclusive'] else '['}{lo}, {hi}]"
    if lo is not None:
        return f"{kind} {'>' if m['min_exclusive'] else '>='} {lo}"
    return kind


def suggest(key: str) -> str | None:
    """The config key a person most likely meant: an alias (learning_rate -> lr) or a close spelling
    of a key or of an alias (lerning_rate -> lr). Every "did you mean" about a config key is this one."""
    k = str(key).strip().lstrip("-").lower().replace("-", "_")
    if k in ALIASES:
        return ALIASES[k]
    close = closest(k, [*FIELDS, *ALIASES], first=FIELDS)
    return ALIASES.get(close[0], close[0]) if close else None


def unknown_key(key: str, path: str = "") -> ConfigError:
    """One line naming the key (``path``: where in a nested group) and the closest known one; the list
    of every key is in --help."""
    hint = suggest(key)
    return ConfigError(f"unknown config key {path or key!r}" + (f": did you mean {hint!r}?" if hint else "")
                       + " (finetune_resnet.py --help lists every key)")


def _coerce(key: str, value: Any) -> Any:
    """Convert a raw value (string from the shell, or YAML/W&B value) to the field's type."""
    if key not in FIELDS:
        raise unknown_key(key)
    f = FIELDS[key]
    bad = ConfigError(f"{key}={value!r} is not valid: expected {allowed_text(f)}")
    if isinstance(value, str) and value.strip().lower() in f.metadata["words"]:
        return value.strip().lower()
    if TYPES[key] is dict:
        return _recipe(value)
    if TYPES[key] is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise bad
    if TYPES[key] in (int, float):   # one reading of a number: a whole one for an int, a finite one for a float
        if isinstance(value, bool):
            raise bad
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not (number.is_integer() if TYPES[key] is int else math.isfinite(number)):
            raise bad
        return int(number) if TYPES[key] is int else number
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise bad
    return f.metadata["formerly"].get(str(value).strip().lower(), str(value))


def _recipe(value: Any) -> dict[str, Any]:
    """A recipe's keys, checked like any other source's (groups inside it organise, as anywhere)."""
    group = _mapping("recipe", value)
    if group is None:
        raise ConfigError(f"recipe={value!r} is not valid: expected {allowed_text(FIELDS['recipe'])}")
    out = {}
    for leaf, _path, raw in _leaves(group, "recipe."):
        if leaf == "recipe":
            raise ConfigError("a recipe cannot hold another recipe")
        out[leaf] = _coerce(leaf, raw)
    return out


def _check_range(key: str, value: Any) -> None:
    f = FIELDS[key]
    m = f.metadata
    bad = ConfigError(f"{key}={value!r} is not valid: expected {allowed_text(f)}")
    if value in m["words"]:
        return
    if m["choices"] and value not in m["choices"]:
        raise bad
    if m["min"] is not None and (value < m["min"] or (m["min_exclusive"] and value == m["min"])):
        raise bad
    if m["max"] is not None and value > m["max"]:
        raise bad


def _unwrap(value: Any) -> Any:
    """W&B's ``{value: x}`` (the agent's params file) and ``{desc: ..., value: x}`` (config.yaml)."""
    if isinstance(value, Mapping) and "value" in value and set(value) <= {"value", "desc"}:
        return value["value"]
    return value


def _mapping(key: str, value: Any) -> dict | None:
    """A dict, or the text of one: JSON, or Python's str() of a dict, which is how ``wandb agent``
    passes a nested group (``--optim={'lr': 0.01, 'nesterov': True}``): read with ast.literal_eval,
    which evaluates literals only, never code. None when the value is not a mapping."""
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str) or not value.lstrip().startswith("{"):
        return None
    for parse in (json.loads, ast.literal_eval):
        try:
            data = parse(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(data, dict):
            return data
    raise ConfigError(f"{key}={value[:60]!r} is not valid: expected a mapping of config keys (JSON or a Python dict)")


def expand(layer: Mapping[str, Any]) -> dict[str, Any]:
    """One source's values as flat config keys. A key that is not a config key but holds a mapping is
    a nested sweep group: it only organises, its leaves are config keys (at any depth). W&B's value
    wrappers are unwrapped and its bookkeeping (``_wandb``, ``wandb_version``) dropped. A leaf given
    twice with different values is an error, never a silent pick."""
    out: dict[str, Any] = {}
    where: dict[str, str] = {}
    for leaf, path, v in _leaves(layer, ""):
        if leaf in out and _coerce(leaf, out[leaf]) != _coerce(leaf, v):
            raise ConfigError(f"{leaf} is given twice with different values: {where[leaf]}={out[leaf]!r} "
                              f"and {path}={v!r}")
        out[leaf], where[leaf] = v, path
    return out


def _leaves(layer: Mapping[str, Any], prefix: str) -> Iterable[tuple[str, str, Any]]:
    """(config key, dotted path, value) for every leaf of ``layer``."""
    for key, raw in layer.items():
        key = str(key)
        if key.startswith("_") or key in _WANDB_KEYS:
            continue
        value = _unwrap(raw)
        if key in FIELDS:   # a dict-valued key gets the parsed dict
            parsed = _mapping(key, value) if TYPES[key] is dict else None
            yield key, prefix + key, value if parsed is None else parsed
            continue
        group = _mapping(prefix + key, value)
        if group is None:
            raise unknown_key(key, prefix + key)
        yield from _leaves(group, f"{prefix}{key}.")


def parse_args(argv: Iterable[str]) -> tuple[str | None, dict[str, Any]]:
    """Parse every form `wandb agent` passes: ``--key=value`` (``${args}``), ``--key value`` (``${args_no_equals}``),
    bare ``--flag`` for true (``${args_no_boolean_flags}``), ``key=value`` (``${args_no_hyphens}``), a JSON object
    (``${args_json}``) or a .json file of one (``${args_json_file}``). A nested group's value may be a dict's text
    (see :func:`expand`). Returns (config file, overrides)."""
    argv = list(argv)
    out: dict[str, Any] = {}
    config_file = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            out.update(_positional(arg))  # ${args_json}, ${args_json_file}, ${args_no_hyphens}
            i += 1
            continue
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            known = key in FIELDS
            # An unknown key takes the next word as its value (a group, or a typo whose value must
            # not be mistaken for a positional argument: the error then names the key).
            takes_value = key == "config" or (known and TYPES[key] is not bool) \
                or (not known and nxt is not None and not nxt.startswith("--"))
            is_bool_value = known and TYPES[key] is bool and nxt is not None \
                and nxt.strip().lower() in _TRUE | _FALSE
            if takes_value or is_bool_value:
                # `--lr --runs_dir X`: the next word is the next key, not this one's value (a value that
                # really starts with -- can still be given as --key=value).
                if nxt is None or _FLAG.match(nxt):
                    raise ConfigError(f"--{key} needs a value" + (f" (the next argument is {nxt.split('=')[0]})"
                                                                  if nxt else ""))
                value, i = nxt, i + 1
            else:
                value = "true"  # a bare boolean flag, as ${args_no_boolean_flags} passes it
        if key == "config":
            config_file = value
        else:
            out[key] = value
        i += 1
    return config_file, out


def _positional(arg: str) -> dict[str, Any]:
    if arg.lstrip().startswith("{"):
        try:
            data = json.loads(arg)
        except json.JSONDecodeError:
            raise ConfigError(f"argument {arg[:40]!r} is not valid JSON") from None
    elif arg.endswith(".json") and Path(arg).is_file():
        try:
            data = json.loads(Path(arg).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"argument file {arg!r} is not valid JSON") from None
    elif "=" in arg and not arg.startswith("="):
        key, _, value = arg.partition("=")
        return {key.replace("-", "_"): value}
    else:
        raise ConfigError(f"unexpected argument {arg!r}: use --key=value or --key value")
    if not isinstance(data, dict):
        raise ConfigError(f"argument {arg[:40]!r} must be a JSON object of key: value")
    return data


def load_yaml(path: str) -> dict[str, Any]:
    """A run config file: ``key: value``, nested groups, or the ``config.yaml`` W&B writes
    (``wandb_version: 1``, ``key: {desc: ..., value: x}``, ``_wandb: ...``); see :func:`expand`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path!r} not found")
    data = yamls.read_file(p, f"config file {path!r}", ConfigError) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must be a mapping of key: value")
    return data


def wants_help(argv: Iterable[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def resolve(argv: Iterable[str], env: Mapping[str, str] | None = None) -> Config:
    """defaults < ``--config FILE`` < command line < the sweep's parameters file. Under ``wandb agent``
    (``WANDB_SWEEP_ID`` set) the agent's params file holds what wandb.config will: read here, a bad
    value fails before W&B starts or a run folder exists. Needs no torch/timm."""
    env = os.environ if env is None else env
    config_file, overrides = parse_args(argv)
    layers = [load_yaml(config_file)] if config_file else []
    layers.append(overrides)
    params = env.get("WANDB_SWEEP_PARAM_PATH")
    if env.get("WANDB_SWEEP_ID") and params and Path(params).is_file():
        layers.append(load_yaml(params))
    return build(*layers)


def recipe_as_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """A run's parameters with its ``recipe`` mapping spread into keys (keys set beside it win, as in
    ``build``): the columns of a status table, a record's config, a bench point."""
    recipe = values.get("recipe") or {}
    return {**recipe, **{k: v for k, v in values.items() if k != "recipe"}}


def build(*layers: dict[str, Any], base: Config | None = None) -> Config:
    """Apply override layers in order on top of ``base`` (defaults), coercing and checking each."""
    values = (base or Config()).to_dict()
    explicit = {key: _coerce(key, raw) for layer in layers for key, raw in expand(layer).items()}
    values.update(explicit.get("recipe", {}))   # a recipe first: keys set explicitly win over it
    values.update(explicit)
    cfg = Config(**values)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Range/choice checks on every key, then the rules that tie keys together."""
    for key in FIELDS:
        _check_range(key, getattr(cfg, key))
    if 0 < cfg.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"image_size={cfg.image_size} is not valid: expected {allowed_text(FIELDS['image_size'])}")
    if cfg.val_fraction + cfg.test_fraction >= 0.95:
        raise ConfigError(f"val_fraction + test_fraction = {cfg.val_fraction + cfg.test_fraction:g} "
                          "leaves too little to train on: expected a sum below 0.95")
    if cfg.strategy == "two_phase" and cfg.phase1_epochs >= cfg.epochs:
        raise ConfigError(f"phase1_epochs={cfg.phase1_epochs} must be smaller than epochs={cfg.epochs} "
                          "for strategy=two_phase")
    if cfg.strategy == "partial" and cfg.unfreeze_blocks < 1:
        raise ConfigError(f"unfreeze_blocks={cfg.unfreeze_blocks} is not valid for strategy=partial: "
                          "expected an integer >= 1")
    if not _DEVICE.match(cfg.device):
        raise ConfigError(f"device={cfg.device!r} is not valid: expected auto, cpu, cuda, cuda:N or mps")
    if cfg.run_id and not valid_run_id(cfg.run_id):
        raise ConfigError(f"run_id={cfg.run_id!r} is not valid: expected {RUN_ID_RULE}")


def help_text() -> str:
    lines = ["usage: finetune_resnet.py [--config FILE.yaml] [--key=value | --key value | --flag | key=value | "
             "JSON | FILE.json ...]",
             "Later wins: defaults < --config FILE (flat keys, nested groups, or W&B's config.yaml) < command "
             "line < the W&B sweep's parameters.",
             "A nested sweep group (--optim=\"{'lr': 0.01}\") only organises: its leaves are the keys below.",
             "Exit codes: 0 finished, 1 failed, 2 bad config or data, 3 preempted, 4 pruned.", "", "Config keys:"]
    defaults = Config().to_dict()   # a default made by a factory (recipe's {}) is not in f.default
    for name, f in FIELDS.items():
        lines.append(f"  --{name:<18} {f.metadata['help']} [default: {defaults[name]!r}; {allowed_text(f)}]")
    return "\n".join(lines)
