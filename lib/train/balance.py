"""Levers for imbalanced classes: a class-weighted loss and a class-balanced sampler.

``class_weighting=balanced`` weights the cross-entropy by scikit-learn's 'balanced' class weights of the
training split, n / (classes x count): each class then carries the same total weight in an epoch.
``sampler=balanced`` draws training images with probability 1 / (its class's count), with replacement,
as many per epoch as there are training images: each class is drawn equally often on average, and an
epoch keeps its number of steps (the schedules count on it). Both act on the plain loop and on cached
frozen features alike: the loss is the same module, and the feature loaders reuse the image loader's
sampler and generator (lib.train.features), so the two paths draw the same batches.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import WeightedRandomSampler


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels.long(), minlength=num_classes).tolist()


def loss_weights(kind: str, labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """The cross-entropy's class weights for ``class_weighting=kind`` (None: unweighted). A class absent
    from the training labels (warned about by the data checks) counts as one image: it is never the
    target, so its weight changes nothing, but it must not divide by zero."""
    if kind == "none":
        return None
    counts = torch.bincount(labels.long(), minlength=num_classes).double().clamp(min=1)
    return (len(labels) / (num_classes * counts)).float()


def make_loss(weight: torch.Tensor | None, label_smoothing: float, mixing: bool) -> nn.Module:
    """Cross-entropy, class-weighted when ``weight`` is given. Mixing (timm's Mixup) hands over soft targets
    it has already smoothed: PyTorch's cross-entropy takes them as class probabilities, weighted per class
    (the sum over classes of -weight x target x log-probability, averaged over the batch), and equals
    timm's SoftTargetCrossEntropy when unweighted; a batch Mixup left alone (odd size) keeps hard labels."""
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=0.0 if mixing else label_smoothing)


def make_sampler(kind: str, labels: torch.Tensor, generator: torch.Generator) -> WeightedRandomSampler | None:
    """The training sampler for ``sampler=kind`` (None: the DataLoader's own shuffle)."""
    if kind == "random":
        return None
    counts = torch.bincount(labels.long()).double()
    weights = 1.0 / counts[labels.long()]
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)
