"""Backbones: any timm model by name, plus ``small_cnn`` (a compact CNN trained from scratch).

``small_cnn`` is registered in timm's own registry, so it is created, grouped into stages
(``group_matcher``), and has its head reset exactly like every timm model: the strategies,
optimizers and exporters never special-case it.
"""
from __future__ import annotations

import functools
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_model_data_config
from timm.models import get_pretrained_cfg, load_state_dict, register_model
from torch import nn

from lib.config import MIN_IMAGE_SIZE, Config, ConfigError
from lib.errors import WeightsError
from lib.spelling import closest
from lib.train import strategies
from lib.train import weights as weights_lib

# Models with no pretrained weights anywhere: `weights=pretrained` means "from scratch" for them.
FROM_SCRATCH = {"small_cnn"}


class SmallCNN(nn.Module):
    """Four conv blocks and two fully connected layers (~0.42M parameters, ~1.6 MB in fp32):
    the defect-model note's size budget of 2 MB, trained single-phase from scratch."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5,
                 widths=(32, 64, 128, 256), hidden: int = 128, **_):
        super().__init__()
        blocks, c_in = [], in_chans
        for c_out in widths:
            blocks.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.num_features = c_in
        self.drop_rate = drop_rate
        self.fc1 = nn.Linear(c_in, hidden)
        self.num_classes = num_classes
        self.head = nn.Linear(hidden, num_classes)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        # Every conv block is both a stage and a block; fc1 is left unmatched, so it joins the head.
        return dict(blocks=r"^blocks\.(\d+)")

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool=None):
        self.num_classes = num_classes
        self.head = nn.Linear(self.fc1.out_features, num_classes)

    def forward_features(self, x):
        return self.blocks(x)

    def forward_head(self, x, pre_logits: bool = False):
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        x = nn.functional.dropout(torch.relu(self.fc1(x)), self.drop_rate, self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model
def small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    for k in ("pretrained_cfg", "cache_dir"):
        kwargs.pop(k, None)
    model = SmallCNN(**kwargs)
    if pretrained and overlay.get("file"):  # --weights=FILE: e.g. an earlier run's model.safetensors
        state = load_state_dict(overlay["file"], weights_only=True)
        own = model.state_dict()
        keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not any(k.startswith("blocks.") for k in keep):
            raise ValueError(f"{overlay['file']} holds no small_cnn weights")
        model.load_state_dict(keep, strict=False)  # a head of another class count stays fresh
    model.pretrained_cfg = model.default_cfg = dict(
        architecture="small_cnn", input_size=(3, 224, 224), interpolation="bilinear", crop_pct=0.875,
        crop_mode="center", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        num_classes=model.num_classes, classifier="head", first_conv="blocks.0.0")
    return model


# The families people reach for first: a typo's suggestions list them before rarer names as close.
COMMON_MODELS = ("resnet50", "resnet18", "resnet34", "resnet101", "mobilenetv2_100", "mobilenetv3_large_100",
                 "mobilenetv3_small_100", "efficientnet_b0", "efficientnet_b1", "tf_efficientnet_lite0",
                 "convnext_tiny", "convnext_small", "vit_small_patch16_224", "vit_base_patch16_224",
                 "regnety_016", "densenet121", "small_cnn")


def similar_models(name: str, n: int = 5) -> list[str]:
    """timm model names a person most likely meant by ``name``: the common ones that start with it (a
    family typed alone: ``mobilenetv3``), then the closest (lib.config.closest: fewest edits, the common
    families first); else names that contain its first word, the common ones first."""
    known = timm.list_models()
    word = name.strip().lower()
    family = [m for m in COMMON_MODELS if m.startswith(word) and m in known]
    close = list(dict.fromkeys(family + closest(word, known, n=n, first=COMMON_MODELS)))[:n]
    if close:
        return close
    word = word.split("_")[0]
    rank = {m: i for i, m in enumerate(COMMON_MODELS)}
    holding = [m for m in known if word and word in m]
    return sorted(holding, key=lambda m: (rank.get(m, len(rank)), len(m), m))[:n]


def unknown_model(name: str) -> str | None:
    """None for a model timm (or this kit: small_cnn) knows, else the one line that says so."""
    if timm.is_model(name):
        return None
    close = similar_models(name)
    hint = f"; did you mean {', '.join(close[:-1])} or {close[-1]}?" if len(close) > 1 else \
        f"; did you mean {close[0]}?" if close else ""
    return f"model={name!r} is not valid: expected a timm model name (timm.list_models()) or small_cnn{hint}"


def check_name(cfg: Config) -> None:
    """Reject an unknown model name before any work (one line, with the closest names)."""
    problem = unknown_model(cfg.model)
    if problem:
        raise ConfigError(problem)


def check_weights(cfg: Config) -> None:
    if cfg.weights not in ("pretrained", "none") and not Path(cfg.weights).is_file():
        raise ConfigError(f"weights={cfg.weights!r} is not valid: expected pretrained, none, "
                          "or the path of an existing .safetensors/.pth file")


def initial_weights(cfg: Config) -> str:
    """``weights`` as :func:`create` uses it: a model with no pretrained weights anywhere starts from scratch."""
    return "none" if cfg.model in FROM_SCRATCH and cfg.weights == "pretrained" else cfg.weights


def weights_dir(cfg: Config) -> Path:
    """Where converted pip-shipped weights are kept (lib.train.weights.pip_weights_file)."""
    return Path(cfg.cache_dir) / "weights"


def weights_unavailable(cfg: Config) -> str | None:
    """Why the run's initial weights cannot be had on this machine, or None. Local sources first, the hub
    last and within a few seconds (lib.train.weights.availability): checked before a run folder or a
    study's first trial exists, not found out after W&B has started."""
    return weights_lib.availability(cfg.model, initial_weights(cfg), weights_dir(cfg))


def check_available(cfg: Config) -> None:
    problem = weights_unavailable(cfg)
    if problem:
        raise WeightsError(problem)


@functools.lru_cache(maxsize=16)
def skeleton(model_name: str, image_size: int) -> nn.Module | None:
    """The model's structure on the meta device: no weights, no memory, about 0.1 s (resnet50: 0.07 s).
    None for a model whose constructor needs real tensors: its limits are then met in training."""
    try:
        with torch.device("meta"):
            return timm.create_model(model_name, pretrained=False, **size_kwargs(model_name, image_size))
    except Exception:  # noqa: BLE001 - timm's constructors raise many kinds; the check is best-effort
        return None


def total_stride(model: nn.Module | None) -> int | None:
    """How much smaller than the input the model's last feature map is (None: the model does not say)."""
    info = getattr(model, "feature_info", None)
    return info[-1].get("reduction") if isinstance(info, list) and info and isinstance(info[-1], dict) else None


def min_input_side(model_name: str) -> int:
    """The smallest ``image_size`` the model takes: its total stride, at least the config's minimum."""
    return max(MIN_IMAGE_SIZE, total_stride(skeleton(model_name, 0)) or 0)


def check_fits(cfg: Config) -> None:
    """``image_size`` and ``unfreeze_blocks`` against the model itself, before any work: an input
    smaller than the total stride leaves no feature map; more units than the model has silently
    meant "all of them"."""
    model = skeleton(cfg.model, cfg.image_size)
    if model is None:
        return
    stride = total_stride(model)
    if cfg.image_size and stride and cfg.image_size < stride:
        raise ConfigError(f"image_size={cfg.image_size} is too small for {cfg.model}: its last feature map is "
                          f"1/{stride} of the input; expected 0 (its own size) or at least {stride}")
    if cfg.strategy in ("partial", "two_phase") and cfg.unfreeze_blocks > 0:
        from lib.train.strategies import unit_groups

        units = len(unit_groups(model, cfg.unfreeze_unit)) - 1   # the last group is the head
        if cfg.unfreeze_blocks > units:
            raise ConfigError(f"unfreeze_blocks={cfg.unfreeze_blocks} is more than {cfg.model} has: {units} "
                              f"{cfg.unfreeze_unit}s besides the head (unfreeze_unit={cfg.unfreeze_unit}); "
                              f"expected 1..{units}")


def create(cfg: Config, num_classes: int, cache_dir: Path) -> tuple[nn.Module, dict, dict]:
    """Model with a fresh ``num_classes`` head, its weights source, and its preprocessing config."""
    weights = initial_weights(cfg)
    kwargs = {"drop_rate": cfg.dropout}
    if cfg.drop_path > 0:
        kwargs["drop_path_rate"] = cfg.drop_path
    kwargs.update(size_kwargs(cfg.model, cfg.image_size))
    try:
        model, source = weights_lib.create_model(cfg.model, weights, num_classes, cache_dir, **kwargs)
    except TypeError as e:
        if "drop_path_rate" in str(e):
            raise ConfigError(f"drop_path={cfg.drop_path} is not valid for model={cfg.model}: "
                              "it has no stochastic depth; expected 0") from None
        raise
    if not head_from_file(model, source):
        zero_head(model)
    return model, source, data_config(model, cfg)


def head_from_file(model: nn.Module, source: dict) -> bool:
    """Whether a weights file supplied this head (a fine-tuned checkpoint with the same classes)."""
    if source.get("kind") != "file":
        return False
    state = load_state_dict(source["file"], weights_only=True)
    head = {n: p for n, p in model.named_parameters() if n in strategies.classifier_names(model)}
    return all(n in state and state[n].shape == p.shape for n, p in head.items())


def zero_head(model: nn.Module) -> None:
    """Start the new classifier at zero, as BiT does (Kolesnikov et al. 2020).

    Each timm family initialises its head its own way: EfficientNet/MobileNet draw it uniformly in
    +-1/sqrt(num_classes), so with 2-3 classes the first logits reach about +-9 and the first loss is
    ~10x ln(C); a study that starts strategies from such a head compares broken runs. A zero head
    predicts the uniform distribution whatever the feature scale, so the first loss is exactly ln(C).
    It still learns from the first step (its gradient is features x error); the backbone's gradient
    through it is zero for that one step only."""
    with torch.no_grad():
        for p in model.get_classifier().parameters():
            p.zero_()


def size_kwargs(model_name: str, image_size: int) -> dict:
    """A model built for one input size (ViT, Swin: position embeddings, windows) is built for
    ``image_size``; timm resamples pretrained position embeddings to fit. Others take any size."""
    pretrained_cfg = get_pretrained_cfg(model_name)
    fixed = pretrained_cfg is not None and pretrained_cfg.fixed_input_size
    return {"img_size": image_size} if image_size and fixed else {}


def data_config(model: nn.Module, cfg: Config) -> dict:
    """Input size, mean/std, interpolation and crop from the model's pretrained config
    (timm's own resolution), with ``image_size`` overriding the side when set."""
    dc = resolve_model_data_config(model)
    if cfg.image_size:
        dc["input_size"] = (3, cfg.image_size, cfg.image_size)
    return {"input_size": list(dc["input_size"]), "interpolation": dc["interpolation"],
            "mean": [float(v) for v in dc["mean"]], "std": [float(v) for v in dc["std"]],
            "crop_pct": float(dc["crop_pct"]), "crop_mode": dc.get("crop_mode", "center")}


def count_params(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
