"""Frozen-backbone features, computed once per run instead of once per epoch.

In a ``freeze`` phase (``freeze`` runs, ``two_phase``'s first phase) the backbone is a fixed function:
frozen parts run in eval mode, so its output for an image never changes. With no augmentation and no
mixing, every epoch would recompute exactly the same features; we compute them once and train the
classifier on them. The trainable end is the model's own classifier (same parameters, same optimizer)
behind the same dropout, fed the same batches in the same order, so results match the uncached loop
to floating-point noise (tested) at the cost of one forward pass over the data.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lib.config import Config


class FeatureHead(nn.Module):
    """Dropout then the model's classifier: what a frozen model trains, fed cached features."""

    def __init__(self, classifier: nn.Module, dropout: float):
        super().__init__()
        self.classifier, self.dropout = classifier, dropout

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(nn.functional.dropout(features, self.dropout, self.training))


def why_not(cfg: Config, phase_name: str) -> str | None:
    """None when a phase can train on cached features, else the reason it cannot."""
    if phase_name != "freeze":
        return "backbone trains"
    if not cfg.feature_cache:
        return "feature_cache=false"
    if cfg.augment != "none":
        return f"augment={cfg.augment}: every epoch sees new pixels"
    if cfg.mixup > 0 or cfg.cutmix > 0:
        return "mixup/cutmix mix pixels"
    return None


@torch.no_grad()
def extract(model: nn.Module, loader: DataLoader, accel) -> TensorDataset:
    """Pre-logits features of every image, in the loader's order (it must not shuffle)."""
    model.eval()
    feats, labels = [], []
    for x, y in loader:
        x, _ = accel.to_device(x, y)
        with accel.autocast():
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu())
        labels.append(y)
    return TensorDataset(torch.cat(feats), torch.cat(labels))


def cached_loaders(model: nn.Module, loaders: dict, accel, batch_size: int) -> dict:
    """Feature loaders standing in for the image loaders. The training one shares the image loader's
    generator, so it draws the same shuffles as the uncached loop would."""
    train = loaders["train"]
    # Its own generator: a DataLoader without one draws its seed from the global RNG, which the
    # plain loop would not, and every later dropout mask would differ.
    ordered = DataLoader(train.dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    out = {"train": DataLoader(extract(model, ordered, accel), batch_size=batch_size, shuffle=True,
                               generator=train.generator, drop_last=train.drop_last)}
    # Only what the loop trains and selects on: the test split is scored once, by the full model.
    out["val"] = DataLoader(extract(model, loaders["val"], accel), batch_size=batch_size,
                            generator=loaders["val"].generator)
    return out
