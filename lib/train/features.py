"""Frozen work done once: the output of a model's frozen front, cached, and only the rest trained.

A frozen part runs in eval mode (lib.train.strategies), so its output for an image never changes. When a
phase's frozen part comes first in the forward pass - the whole backbone in ``freeze`` (and
``two_phase``'s first phase), the first stages in ``partial`` - and the pixels are the same every
epoch (no augmentation, no mixing), recomputing it every step is waste: we compute it once and train
the remaining layers on the stored output. Same parameters, same optimizer, same batches in the same
order, so results match the plain loop to floating-point noise (tested).

The stored outputs go to the study's shared cache (lib.train.cache), keyed by the decoded images, the
frozen weights, the cut and the preprocessing, so the next run of the sweep with the same backbone
(every ``freeze`` run, whatever its learning rate) reads them instead of computing them.

With augmentation on, ``augment_views=K`` stores K augmented views of the training set and epoch e
trains on view e mod K: an approximation of fresh augmentation every epoch, recorded as such.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from timm.layers import DropPath
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from lib.config import Config
from lib.train.cache import SharedCache, tensors_fingerprint

# Modules that behave differently in training mode even without parameters of their own.
RANDOM_IN_TRAINING = (nn.modules.dropout._DropoutNd, DropPath)


class FeatureHead(nn.Module):
    """Dropout then the model's classifier: what a frozen model trains, fed pre-logits features."""

    def __init__(self, classifier: nn.Module, dropout: float):
        super().__init__()
        self.classifier, self.dropout = classifier, dropout

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(nn.functional.dropout(features, self.dropout, self.training))


class Suffix(nn.Module):
    """The layers after a frozen prefix, then the model's own head. It holds the whole model so that
    ``eval()`` reaches the head's dropout too."""

    def __init__(self, model: nn.Module, tail: list[nn.Module]):
        super().__init__()
        self.model, self.tail = model, nn.Sequential(*tail)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.tail(x))


@dataclass
class Cut:
    """A model split into a frozen front (computed once) and the part that trains on its output."""
    name: str                                     # "pre-logits" or "after <module>"
    front: Callable[[torch.Tensor], torch.Tensor]
    net: nn.Module
    frozen_state: dict[str, torch.Tensor] = field(repr=False)


def sequential_units(model: nn.Module, sample: torch.Tensor) -> list[tuple[str, nn.Module]] | None:
    """``forward_features`` as a flat list of modules applied one after another (Sequential
    containers opened), or None when the model is not built that way (e.g. a ViT adds position
    embeddings between modules). Found by recording the order children run in, then checked: the
    composed list must reproduce ``forward_features`` on ``sample``."""
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _a, n=n: order.append(n) if n not in order else None)
             for n, m in model.named_children()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model.forward_features(sample)
            units = [u for n in order for u in _open(n, model.get_submodule(n))]
            got = sample
            for _, m in units:
                got = m(got)
    except Exception:  # noqa: BLE001 - a module that cannot run alone: not a sequential model
        return None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    same = got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    return units if same else None


def _open(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    if type(module).forward is nn.Sequential.forward:
        return [u for n, m in module.named_children() for u in _open(f"{name}.{n}", m)]
    return [(name, module)]


def _frozen(module: nn.Module) -> bool:
    """Deterministic in training: a unit with parameters, all frozen, is held in eval mode with everything
    inside it (lib.train.strategies); a parameter-free one must hold nothing random (dropout, drop-path)."""
    params = list(module.parameters())
    if params:
        return not any(p.requires_grad for p in params)
    return not any(isinstance(m, RANDOM_IN_TRAINING) for m in module.modules())


def find_cut(model: nn.Module, cfg: Config, phase_name: str, sample: torch.Tensor) -> Cut | str:
    """Where this phase's model can be cut, or why it cannot."""
    if phase_name == "freeze":
        classifier = {id(p) for p in model.get_classifier().parameters()}
        state = {n: p for n, p in model.state_dict(keep_vars=True).items() if id(p) not in classifier}
        return Cut("pre-logits", lambda x: model.forward_head(model.forward_features(x), pre_logits=True),
                   FeatureHead(model.get_classifier(), cfg.dropout), state)
    units = sequential_units(model, sample)
    if units is None:
        return f"{type(model).__name__}'s forward is not a plain sequence of modules"
    k = 0
    while k < len(units) and _frozen(units[k][1]):
        k += 1
    if k == 0:
        return "its first layer trains"
    front = nn.Sequential(*(m for _, m in units[:k]))
    return Cut(f"after {units[k - 1][0]}", front, Suffix(model, [m for _, m in units[k:]]),
               {f"{i}.{n}": t for i, (_, m) in enumerate(units[:k]) for n, t in m.state_dict().items()})


# Strategies with nothing frozen in front of what trains: there is no front to store.
NO_FRONT = {"full": "everything trains", "bitfit": "biases train in every layer",
            "norm_only": "normalisation layers train in every stage"}


def why_not(cfg: Config, phase_name: str) -> str | None:
    """None when the phase's data allows caching, else the reason it does not."""
    if phase_name in NO_FRONT:
        return NO_FRONT[phase_name]
    if not cfg.feature_cache:
        return "feature_cache=false"
    if cfg.mixup > 0 or cfg.cutmix > 0:
        return "mixup/cutmix mix pixels"
    if cfg.augmentation() != "none" and cfg.augment_views == 0:
        return f"augment={cfg.augmentation()}: every epoch sees new pixels (augment_views=K caches K views)"
    return None


@torch.no_grad()
def extract(front: Callable, loader: DataLoader, accel, desc: str, stop=None) -> np.ndarray:
    """The front's output for every image, in the loader's order (it must not shuffle). ``stop``: a
    lib.train.training.StopFlag, checked every batch (a preemption must not wait for the whole split)."""
    out = []
    for x, y in tqdm(loader, desc=desc, leave=False, disable=None, unit="batch"):
        if stop:
            stop.check()
        x, _ = accel.to_device(x, y)
        with accel.autocast():
            out.append(front(x).float().cpu())
    return torch.cat(out).numpy()


def first_image(loader: DataLoader) -> torch.Tensor:
    """A batch of one image from the loader's dataset, transformed as the loader would."""
    return next(iter(DataLoader(loader.dataset, batch_size=1, collate_fn=loader.collate_fn,
                                generator=torch.Generator())))[0]   # see ``ordered`` in prepare()


@dataclass
class Cached:
    """Loaders over stored outputs that stand in for the image loaders of a phase."""
    net: nn.Module
    train: list[DataLoader]      # one per view; epoch e uses train[e % len(train)]
    val: DataLoader
    mode: str

    def train_for(self, phase_epoch: int) -> DataLoader:
        return self.train[phase_epoch % len(self.train)]


@dataclass
class Store:
    """What caching needs besides the loaders: the decoded splits (their fingerprints), the model's
    preprocessing, the shared cache, and the run's stop flag (lib.train.training.StopFlag)."""
    decoded: dict
    data_config: dict
    cache: SharedCache
    stop: object = None


def prepare(cut: Cut, cfg: Config, loaders: dict, store: Store, accel, epochs: int,
            sample: torch.Tensor) -> Cached | str:
    """Outputs of the frozen front for val and each training view (from the shared cache when
    another run made them), or why not (over the memory budget). ``sample``: one input image."""
    augment = cfg.augmentation()
    n_views = 1 if augment == "none" else min(cfg.augment_views, epochs)
    with torch.no_grad(), accel.autocast():
        per_image = cut.front(sample).numel() * 4
    decoded, cache = store.decoded, store.cache
    total = per_image * (len(decoded["train"].labels) * n_views + len(decoded["val"].labels))
    cache.release("features")   # an earlier phase's outputs: this phase's replace them
    if total > cache.room():    # the budget bounds the run: decoded images in memory count too
        return (f"the frozen output needs {total / 2**20:.1f} MB > the {max(cache.room(), 0) / 2**20:.1f} MB "
                f"left of cache_memory_mb={cfg.cache_memory_mb:g} beside the decoded images")
    key = {"weights": tensors_fingerprint(cut.frozen_state), "cut": cut.name, "model": cfg.model,
           "preprocessing": store.data_config, "dtype": str(accel.dtype), "device": accel.device.type}
    reused = []

    def stored(split: str, view: int | None, images: DataLoader) -> TensorDataset:
        # Its own generator: a DataLoader without one draws its seed from the global RNG, which the
        # plain loop would not, and every later dropout mask would differ.
        ordered = DataLoader(images.dataset, batch_size=cfg.batch_size, shuffle=False,
                             collate_fn=images.collate_fn, generator=torch.Generator())

        def build(_space):
            with torch.random.fork_rng(devices=range(torch.cuda.device_count())):   # GPU augmentation draws there
                if view is not None:
                    torch.manual_seed(cfg.seed * 1000 + view)   # view v: the same pixels in every run
                return {"x": extract(cut.front, ordered, accel, f"{cut.name} {split}", store.stop)}, {}
        entry = cache.get("features", {**key, "data": decoded[split].key, "split": split,
                                       "view": None if view is None else [augment, view, cfg.seed]}, build)
        reused.append(entry.reused)
        return TensorDataset(torch.from_numpy(entry.arrays["x"]), decoded[split].labels)

    train = loaders["train"]
    views = [None] if augment == "none" else list(range(n_views))
    train_sets = [stored("train", v, train) for v in views]   # its transform augments, if on
    # Training shares the image loader's sampler and generator, so it draws the same batches as the plain
    # loop (shuffled, or class-balanced: lib.train.balance); the sampler only needs the length, the same.
    out_train = [DataLoader(s, batch_size=cfg.batch_size, sampler=train.sampler, generator=train.generator,
                            drop_last=train.drop_last) for s in train_sets]
    val = DataLoader(stored("val", None, loaders["val"]), batch_size=cfg.batch_size,
                     generator=torch.Generator())
    exact = "exact" if augment == "none" else f"{n_views} augmented view(s), reused cyclically"
    source = f"{sum(reused)} of {len(reused)} reused from the sweep cache" if cache.root else "not shared"
    return Cached(cut.net, out_train, val, f"on: {cut.name}, {exact}, {source}")
