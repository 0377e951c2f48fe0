"""The one typed config of a fine-tuning run, and how it is assembled.

Sources, later wins: defaults < ``--config FILE.yaml`` < command line < ``wandb.config`` (sweeps).
Keys are flat so W&B's parallel-coordinates and parameter-importance panels can use them.
Every value is checked before any work starts; a bad one raises :class:`ConfigError` with one line
naming the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the entrypoint prints it on one line and exits with code 2."""


def _opt(default, help, choices=None, min=None, max=None, min_exclusive=False):
    meta = dict(help=help, choices=choices, min=min, max=max, min_exclusive=min_exclusive)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # --- data ---
    data_dir: str = _opt("data/animal_mnist", "ImageFolder root: train/val/test of class folders, or class folders only")
    val_fraction: float = _opt(0.15, "share of images held out for validation when there is no val/ folder", min=0.0, max=0.9)
    test_fraction: float = _opt(0.15, "share held out for the test split when there is no test/ folder", min=0.0, max=0.9)
    image_size: int = _opt(0, "input side in pixels; 0 = the model's pretrained size", min=0, max=4096)
    min_image_side: int = _opt(32, "images with a shorter side are skipped (and listed)", min=1)
    augment: str = _opt("light", "training augmentation", choices=("none", "light", "strong"))
    batch_size: int = _opt(32, "images per step", min=1)
    num_workers: int = _opt(0, "DataLoader worker processes (0: decode in the main process)", min=0)
    # --- model and weights ---
    model: str = _opt("resnet50", "any timm model name, or small_cnn (from scratch, < 2 MB)")
    weights: str = _opt("pretrained", "pretrained | none | path to a .safetensors/.pth file")
    # --- strategy ---
    strategy: str = _opt("freeze", "which parameters train (README: Strategies). Default freeze: on a few hundred "
                                   "images a trained head on fixed pretrained features is the safe, fast baseline "
                                   "the others must beat", choices=("freeze", "partial", "full", "two_phase",
                                                                    "surgical", "bitfit", "norm_only", "gradual"))
    unfreeze_blocks: int = _opt(2, "partial/two_phase: how many last units train besides the head (<= 0 in two_phase: all)")
    unfreeze_unit: str = _opt("stage", "what unfreeze_blocks counts: timm's coarse stages or fine blocks", choices=("stage", "block"))
    train_bn: bool = _opt(True, "BatchNorm in trainable parts updates its running statistics (frozen parts never do)")
    phase1_epochs: int = _opt(2, "two_phase: epochs of head-only training before unfreezing", min=1)
    surgical_unit: str = _opt("last", "surgical: the one unit that trains (first: input-level shift, "
                                      "last: label shift)", choices=("first", "middle", "last"))
    unfreeze_every: int = _opt(1, "gradual: epochs between unfreezing one more unit from the top", min=1)
    # --- optimisation ---
    optimizer: str = _opt("adamw", "optimizer", choices=("adam", "adamw", "sgd"))
    lr: float = _opt(1e-3, "learning rate of the head (and of everything in single-LR setups)", min=0.0, min_exclusive=True)
    backbone_lr_mult: float = _opt(0.1, "backbone LR = lr x this; two_phase phase 2 runs at lr x this", min=0.0, max=1e3, min_exclusive=True)
    layer_decay: float = _opt(0.0, "layer-wise LR decay per block towards the input (0 = off; e.g. 0.65)", min=0.0, max=1.0)
    momentum: float = _opt(0.9, "SGD momentum", min=0.0, max=1.0)
    nesterov: bool = _opt(False, "SGD with Nesterov momentum")
    weight_decay: float = _opt(1e-4, "decoupled (adamw) or L2 weight decay; not applied to biases and norms", min=0.0)
    scheduler: str = _opt("cosine", "LR schedule", choices=("cosine", "step", "exponential", "plateau", "onecycle", "constant"))
    warmup_epochs: float = _opt(0.0, "linear warmup length in epochs (fractions allowed)", min=0.0)
    step_epochs: int = _opt(7, "step schedule: epochs between LR drops", min=1)
    gamma: float = _opt(0.1, "step/exponential/plateau: LR factor (exponential: per epoch)", min=0.0, max=1.0, min_exclusive=True)
    epochs: int = _opt(10, "total epochs (two_phase: both phases together)", min=1)
    patience: int = _opt(0, "early stopping after this many epochs without a better val accuracy (0 = off)", min=0)
    # --- regularisation ---
    dropout: float = _opt(0.0, "dropout before the classifier head", min=0.0, max=0.95)
    drop_path: float = _opt(0.0, "stochastic depth rate where the model has it", min=0.0, max=0.95)
    label_smoothing: float = _opt(0.0, "label smoothing of the cross-entropy", min=0.0, max=0.5)
    mixup: float = _opt(0.0, "mixup alpha (0 = off)", min=0.0)
    cutmix: float = _opt(0.0, "cutmix alpha (0 = off)", min=0.0)
    class_weighting: bool = _opt(False, "weight the loss by inverse class frequency (imbalanced data)")
    # --- speed ---
    feature_cache: bool = _opt(True, "the frozen front of freeze/partial phases runs once and is stored; "
                                      "the rest trains on its output (exact; off with augmentation or mixing)")
    augment_views: int = _opt(0, "with augmentation on: store this many augmented views of the training "
                                 "set and cycle through them (0 = no caching when augmenting)", min=0)
    cache_memory_mb: float = _opt(4096.0, "memory budget of a run's caches: larger decoded images are "
                                          "memory-mapped, larger frozen outputs are not stored", min=0.0)
    shared_cache_dir: str = _opt("", "where the runs of a study share decoded images and frozen outputs "
                                     "('' = <runs_dir>/.cache; none = do not share)")
    # --- run ---
    checkpoint_epochs: int = _opt(1, "write the resumable checkpoint (model, optimizer, RNG) every N epochs and "
                                     "at the end of each phase (0 = phase ends only); a resumed run redoes the rest", min=0)
    seed: int = _opt(42, "seed of the split, the initialisation and the data order", min=0)
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N | mps")
    amp: bool = _opt(True, "mixed precision on CUDA (bf16 where supported, else fp16)")
    channels_last: bool = _opt(True, "channels_last memory format on CUDA and CPU (faster convolutions)")
    runs_dir: str = _opt("runs", "where run records go: <runs_dir>/<run_id>/")
    cache_dir: str = _opt(str(Path.home() / ".cache" / "finetune-kit"), "converted pip-shipped weights and other caches")
    run_id: str = _opt("", "run id (default: the W&B sweep run's id, else a new one); an existing id resumes")
    run_name: str = _opt("", "readable name (default: model-strategy-lr)")
    project: str = _opt("finetune-study", "W&B project")
    entity: str = _opt("", "W&B entity (team or user); empty = your default")
    group: str = _opt("", "W&B group (the offline sweep runner sets the sweep id)")
    tags: str = _opt("", "extra W&B tags, comma-separated")
    log_model: bool = _opt(True, "upload the best weights to W&B as a model artifact")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def default_run_name(self) -> str:
        return f"{self.model}-{self.strategy}-lr{self.lr:.0e}".replace("e-0", "e-")


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# Annotations are strings under `from __future__ import annotations`; resolve them once.
TYPES = {name: {"str": str, "int": int, "float": float, "bool": bool}[f.type] for name, f in FIELDS.items()}
_TRUE, _FALSE = {"true", "1", "yes", "y", "on"}, {"false", "0", "no", "n", "off"}


def _allowed(f) -> str:
    m = f.metadata
    if m["choices"]:
        return "one of " + ", ".join(m["choices"])
    lo, hi = m["min"], m["max"]
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[TYPES[f.name]]
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if m['min_exclusive'] else '['}{lo}, {hi}]"
    if lo is not None:
        return f"{kind} {'>' if m['min_exclusive'] else '>='} {lo}"
    return kind


def _coerce(key: str, value: Any) -> Any:
    """Convert a raw value (string from the shell, or YAML/W&B value) to the field's type."""
    if key not in FIELDS:
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(FIELDS)}")
    f = FIELDS[key]
    bad = ConfigError(f"{key}={value!r} is not valid: expected {_allowed(f)}")
    if TYPES[key] is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise bad
    if TYPES[key] is int:
        if isinstance(value, bool):
            raise bad
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not as_float.is_integer():
            raise bad
        return int(as_float)
    if TYPES[key] is float:
        if isinstance(value, bool):
            raise bad
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(out):
            raise bad
        return out
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise bad
    return str(value)


def _check_range(key: str, value: Any) -> None:
    f = FIELDS[key]
    m = f.metadata
    bad = ConfigError(f"{key}={value!r} is not valid: expected {_allowed(f)}")
    if m["choices"] and value not in m["choices"]:
        raise bad
    if m["min"] is not None and (value < m["min"] or (m["min_exclusive"] and value == m["min"])):
        raise bad
    if m["max"] is not None and value > m["max"]:
        raise bad


def parse_args(argv: Iterable[str]) -> tuple[str | None, dict[str, Any]]:
    """Parse the forms `wandb agent` passes: ``--key=value`` and ``--key value`` (``${args}``), bare
    ``--flag`` for true (``${args_no_boolean_flags}``), ``key=value`` (``${args_no_hyphens}``), a JSON
    object (``${args_json}``) or a .json file of one (``${args_json_file}``).
    Returns (config file, overrides)."""
    argv = list(argv)
    out: dict[str, str] = {}
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
            takes_value = key == "config" or (key in FIELDS and TYPES[key] is not bool)
            is_bool_value = key in FIELDS and TYPES[key] is bool and nxt is not None \
                and nxt.strip().lower() in _TRUE | _FALSE
            if takes_value or is_bool_value:
                if nxt is None:
                    raise ConfigError(f"--{key} needs a value")
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
        data = json.loads(Path(arg).read_text())
    elif "=" in arg and not arg.startswith("="):
        key, _, value = arg.partition("=")
        return {key.replace("-", "_"): value}
    else:
        raise ConfigError(f"unexpected argument {arg!r}: use --key=value or --key value")
    if not isinstance(data, dict):
        raise ConfigError(f"argument {arg[:40]!r} must be a JSON object of key: value")
    return data


def load_yaml(path: str) -> dict[str, Any]:
    """A run config file: flat ``key: value`` (W&B's ``key: {value: x}`` form is accepted too)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path!r} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must be a mapping of key: value")
    return {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in data.items()
            if not str(k).startswith("_wandb")}


def build(*layers: dict[str, Any], base: Config | None = None) -> Config:
    """Apply override layers in order on top of ``base`` (defaults), coercing and checking each."""
    values = (base or Config()).to_dict()
    for layer in layers:
        for key, raw in layer.items():
            values[key] = _coerce(key, raw)
    cfg = Config(**values)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Range/choice checks on every key, then the rules that tie keys together."""
    for key in FIELDS:
        _check_range(key, getattr(cfg, key))
    if cfg.val_fraction + cfg.test_fraction >= 0.95:
        raise ConfigError(f"val_fraction + test_fraction = {cfg.val_fraction + cfg.test_fraction:g} "
                          "leaves too little to train on: expected a sum below 0.95")
    if cfg.strategy == "two_phase" and cfg.phase1_epochs >= cfg.epochs:
        raise ConfigError(f"phase1_epochs={cfg.phase1_epochs} must be smaller than epochs={cfg.epochs} "
                          "for strategy=two_phase")
    if cfg.strategy == "partial" and cfg.unfreeze_blocks < 1:
        raise ConfigError(f"unfreeze_blocks={cfg.unfreeze_blocks} is not valid for strategy=partial: "
                          "expected an integer >= 1")
    if cfg.device != "auto" and cfg.device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={cfg.device!r} is not valid: expected auto, cpu, cuda, cuda:N or mps")
    if cfg.run_id and not all(c.isalnum() or c in "-_" for c in cfg.run_id):
        raise ConfigError(f"run_id={cfg.run_id!r} is not valid: expected letters, digits, - and _")


def help_text() -> str:
    lines = ["Config keys (--key=value or --key value; --config FILE.yaml):"]
    for name, f in FIELDS.items():
        lines.append(f"  --{name:<18} {f.metadata['help']} [default: {f.default!r}; {_allowed(f)}]")
    return "\n".join(lines)

