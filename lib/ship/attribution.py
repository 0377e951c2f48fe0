"""Why the exported model predicts what it predicts: Captum attributions on test images.

For each chosen image: the input as the model sees it (after the centre crop), Integrated Gradients
(which input pixels move the predicted class's logit, from a mean-image baseline), and Grad-CAM on
the last convolutional feature map (which region the last stage looks at), with the true and the
predicted label. Correct and misclassified images go to separate PNG grids.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

# Global pooling / flattening modules: the feature map Grad-CAM needs is the one *before* them.
_POOL_WORDS = ("pool", "flatten")


def find_cam_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module] | None:
    """The module whose output is the last spatial (N, C, H, W) feature map before global pooling.

    Rule (generic, found with forward hooks on every module):
    - a model with ``forward_features`` (every timm model): its output is the final feature map;
      the layer is the module that finished last returning that very tensor (else one of its
      shape), i.e. the outermost one: ``bn2`` of MobileNetV2/EfficientNet, ``layer4`` of ResNet,
      ``norm_pre`` of ConvNeXt, ``blocks`` of ``small_cnn``. None when that output is not
      (N, C, H, W): a vision transformer's tokens, Swin's channels-last maps;
    - any other model: the module that finished last with a 4-D output during the whole forward,
      skipping pooling/flatten modules and anything inside them."""
    names = {m: n for n, m in model.named_modules()}
    finished: list[tuple[str, nn.Module, torch.Tensor]] = []

    def hook(module, model_inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            finished.append((names[module], module, output))

    handles = [m.register_forward_hook(hook) for m in names if m is not model]
    run = getattr(model, "forward_features", None)
    try:
        with torch.no_grad():
            feats = (run or model)(x[:1])
    finally:
        for h in handles:
            h.remove()
    if run is not None:
        if not isinstance(feats, torch.Tensor) or feats.dim() != 4:
            return None
        channels = getattr(model, "num_features", None)
        if channels and feats.shape[1] != channels and feats.shape[-1] == channels:
            return None  # channels-last: Grad-CAM would sum over H
        same = [e for e in finished if e[2] is feats] or [e for e in finished if e[2].shape == feats.shape]
        return same[-1][:2] if same else None
    pooling = [n for m, n in names.items() if n and any(w in type(m).__name__.lower() for w in _POOL_WORDS)]
    for name, module, _out in reversed(finished):
        if not any(name == p or name.startswith(p + ".") for p in pooling):
            return name, module
    return None


def choose(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> tuple[list[int], list[int]]:
    """Up to ``n`` image indices: half misclassified when there are enough (more when correct ones
    run out), the rest correct; within each group, round-robin over the true classes so several
    classes appear. Returns (correct, misclassified)."""
    right = [i for i in range(len(y_true)) if y_true[i] == y_pred[i]]
    wrong = [i for i in range(len(y_true)) if y_true[i] != y_pred[i]]
    n_wrong = min(len(wrong), max(n - len(right), (n + 1) // 2 if right else n))
    n_right = min(len(right), n - n_wrong)

    def spread(idx: list[int], k: int) -> list[int]:
        by_class: dict[int, list[int]] = {}
        for i in idx:
            by_class.setdefault(int(y_true[i]), []).append(i)
        queues, out = [by_class[c] for c in sorted(by_class)], []
        while len(out) < k:
            for q in queues:
                if q and len(out) < k:
                    out.append(q.pop(0))
        return out

    return spread(right, n_right), spread(wrong, n_wrong)


def attribute(model: nn.Module, x: torch.Tensor, target: torch.Tensor, ig_steps: int = 32,
              internal_batch_size: int | None = None) -> dict:
    """Integrated Gradients (baseline: zeros after normalisation = the mean image) and Grad-CAM
    (upsampled to the input size) for ``target`` classes. Returns numpy maps and the layer used.

    All images go through IG together, ``internal_batch_size`` interpolation steps per forward/
    backward pass (default: about 16 at 224 px, more for smaller inputs): on a CPU, a few large
    batches are several times faster than one small batch per image."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam

    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # gradients with respect to the input only
    if internal_batch_size is None:
        pixels = x.shape[-1] * x.shape[-2]
        internal_batch_size = int(min(256, max(8, 16 * 224 * 224 // pixels)))
    target_list = [int(t) for t in target]
    ig = IntegratedGradients(model)
    ig_maps = ig.attribute(x, baselines=torch.zeros_like(x), target=target_list, n_steps=ig_steps,
                           internal_batch_size=max(internal_batch_size, len(x))).detach()
    found = find_cam_layer(model, x)
    cam = None
    if found is not None:
        gc = LayerGradCam(model, found[1])
        raw = gc.attribute(x, target=target_list, relu_attributions=True).detach()
        cam = LayerAttribution.interpolate(raw, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
        cam = cam.numpy()
    return {"ig": ig_maps.numpy(), "cam": cam, "cam_layer": found[0] if found else None}


def _ig_heat(attr: np.ndarray) -> np.ndarray:
    """(3, H, W) attributions -> (H, W) in [0, 1]: absolute value summed over channels, scaled by
    the 99th percentile so a few extreme pixels do not wash the map out."""
    heat = np.abs(attr).sum(0)
    top = np.percentile(heat, 99) or heat.max() or 1.0
    return np.clip(heat / top, 0, 1)


def _cam_norm(cam: np.ndarray) -> np.ndarray:
    top = cam.max()
    return cam / top if top > 0 else cam


def save_grid(path: Path, images: np.ndarray, maps: dict, rows: list[int], y_true, y_pred, probs,
              classes: list[str], title: str, cam_layer: str | None) -> Path:
    """One row per image: original | Integrated Gradients | Grad-CAM overlay. ``images`` (uint8
    N, 3, H, W) and ``maps`` are parallel to ``rows``, the images' indices into the label arrays.
    A bare Figure (no pyplot): headless, and no global backend switch. Mathtext off: class names are
    data, and a name with two `$` would be parsed as TeX (a bad formula fails the figure)."""
    from matplotlib import rc_context

    with rc_context({"text.parse_math": False}):
        return _grid(path, images, maps, rows, y_true, y_pred, probs, classes, title, cam_layer)


def _grid(path, images, maps, rows, y_true, y_pred, probs, classes, title, cam_layer) -> Path:
    from matplotlib.figure import Figure

    cols = 3
    fig = Figure(figsize=(3 * 2.4, len(rows) * 2.8 + 0.6), dpi=100)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, i in enumerate(rows):
        img = images[r].transpose(1, 2, 0)
        ax = axes[r]
        ax[0].imshow(img)
        ax[0].set_title(f"true: {classes[int(y_true[i])]}\npred: {classes[int(y_pred[i])]} "
                        f"({probs[i]:.2f})", fontsize=8)
        ax[1].imshow(_ig_heat(maps["ig"][r]), cmap="inferno", vmin=0, vmax=1)
        ax[1].set_title("Integrated Gradients", fontsize=8)
        if maps["cam"] is not None:
            ax[2].imshow(img.mean(2), cmap="gray")
            ax[2].imshow(_cam_norm(maps["cam"][r]), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax[2].set_title(f"Grad-CAM ({cam_layer})", fontsize=8)
        else:
            ax[2].text(0.5, 0.5, "no 4-D feature map:\nno Grad-CAM", ha="center", va="center", fontsize=8)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def explain(model: nn.Module, shown, inputs, y_true, y_pred, probs, classes: list[str], out_dir: Path,
            n: int, ig_steps: int = 32) -> dict:
    """Attributions for ``n`` images chosen among those with labels ``y_true`` and predictions
    ``y_pred`` (``probs``: probability of the prediction). ``shown(indices)`` gives them as uint8
    (N, 3, H, W) as the model sees them (after the crop), ``inputs(indices)`` as the model takes
    them (normalised); only the chosen ones are made. Written as ``out_dir/correct.png`` and
    ``out_dir/misclassified.png`` (the latter only when a shown image is misclassified). Returns what was written
    and the layers used."""
    y_true, y_pred, probs = np.asarray(y_true), np.asarray(y_pred), np.asarray(probs)
    right, wrong = choose(y_true, y_pred, n)
    out = {"files": [], "cam_layer": None, "ig_steps": ig_steps, "correct": len(right), "misclassified": len(wrong)}
    rows = right + wrong
    if not rows:
        return out
    maps = attribute(model, inputs(rows), torch.as_tensor(y_pred[rows]), ig_steps=ig_steps)
    pictures = shown(rows).numpy()
    out["cam_layer"] = maps["cam_layer"]
    start = 0
    for name, group in (("correct", right), ("misclassified", wrong)):
        if not group:
            continue
        part = slice(start, start + len(group))
        start += len(group)
        grid = {"ig": maps["ig"][part], "cam": None if maps["cam"] is None else maps["cam"][part]}
        save_grid(Path(out_dir) / f"{name}.png", pictures[part], grid, group, y_true, y_pred, probs, classes,
                  f"{name}: attributions for the predicted class", maps["cam_layer"])
        out["files"].append(f"{name}.png")
    return out
