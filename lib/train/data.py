"""Data: find the images, split them, decode each once, and serve augmented batches.

``data_dir`` is an ImageFolder tree: ``train/`` (+ optional ``val/``, ``test/``) of class folders,
or class folders only. Missing splits are carved from the training images, stratified by class with
``seed``. Every image is decoded once (EXIF rotation applied, any mode to RGB, first frame of an
animation), resized so its shorter side is the model's resize size and centre-cropped square, and
kept as uint8. Files that cannot be used are skipped and listed with the reason - never a crash,
never a silent drop.
"""
from __future__ import annotations

import math
import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import roi_align
from torchvision.transforms import v2
from tqdm import tqdm

from lib.errors import DataError
from lib.images import IMAGE_EXTENSIONS, fit_square, load_rgb, unusable_file
from lib.train.balance import make_sampler
from lib.train.cache import SharedCache, files_fingerprint, fingerprint

SPLITS = ("train", "val", "test")
CHUNK = 32   # images per decoding task


@dataclass
class Splits:
    classes: list[str]
    items: dict[str, list[tuple[str, int]]]      # split -> [(path relative to data_dir, label)]
    skipped: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sizes: dict = field(default_factory=dict)      # source_sizes: how large the images are before resizing

    def as_record(self) -> dict:
        return {s: [p for p, _ in self.items[s]] for s in SPLITS}


def _list_files(folder: Path) -> list[Path]:
    """All files under ``folder``, sorted; symlinked folders are not followed (no loops)."""
    out = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        out += [Path(root) / f for f in sorted(files)]
    return out


def _scan_classes(folder: Path, root: Path, skipped: list[dict]) -> dict[str, list[str]]:
    classes = {}
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir():
            skipped.append({"path": str(entry.relative_to(root)), "reason": "file outside any class folder"})
            continue
        files = []
        for f in _list_files(entry):
            rel = str(f.relative_to(root))
            why = "not an image file" if f.suffix.lower() not in IMAGE_EXTENSIONS else unusable_file(f)
            if why:
                skipped.append({"path": rel, "reason": why})
            else:
                files.append(rel)
        classes[entry.name] = files
    return classes


def _carve(items: list[tuple[str, int]], fraction: float, seed: int) -> tuple[list, list]:
    """Stratified split: ``fraction`` of each class (rounded, at least one when asked for and the
    class has two or more) goes to the second list."""
    rng = random.Random(seed)
    by_class: dict[int, list] = {}
    for it in items:
        by_class.setdefault(it[1], []).append(it)
    keep, out = [], []
    for label in sorted(by_class):
        group = sorted(by_class[label])
        rng.shuffle(group)
        k = int(round(len(group) * fraction))
        if fraction > 0 and k == 0 and len(group) >= 2:
            k = 1
        out += group[:k]
        keep += group[k:]
    return sorted(keep), sorted(out)


def discover(data_dir: str, val_fraction: float, test_fraction: float, seed: int) -> Splits:
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data_dir {data_dir!r} is not a folder: expected an ImageFolder tree "
                        "(train/, val/, test/ of class folders, or class folders only)")
    skipped: list[dict] = []
    notes: list[str] = []
    has_splits = (root / "train").is_dir()
    found = {s: _scan_classes(root / s, root, skipped) for s in SPLITS if (root / s).is_dir()} \
        if has_splits else {"train": _scan_classes(root, root, skipped)}
    train_classes = found["train"]
    for name, files in train_classes.items():
        if not files:
            notes.append(f"class folder {name!r} has no images in train: left out")
    classes = sorted(n for n, f in train_classes.items() if f)
    if len(classes) < 2:
        raise DataError(f"data_dir {data_dir!r} has {len(classes)} class folder(s) with images: "
                        "a classifier needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    items = {s: [] for s in SPLITS}
    for split, by_class in found.items():
        for name, files in by_class.items():
            if name not in index:
                if split != "train" and files:
                    notes.append(f"{split}/{name} is not a training class: {len(files)} images left out")
                    skipped += [{"path": f, "reason": f"class {name!r} not in train"} for f in files]
                continue
            items[split] += [(f, index[name]) for f in files]
    # Carve what is missing from train (test first, so val comes from what remains).
    for split, fraction, salt in (("test", test_fraction, 1), ("val", val_fraction, 2)):
        if split not in found and fraction > 0:
            share = fraction / (1.0 - (test_fraction if split == "val" and "test" not in found else 0.0))
            items["train"], items[split] = _carve(items["train"], share, seed * 1000 + salt)
            if has_splits:
                notes.append(f"no {split}/ folder: {len(items[split])} images carved from train/")
    return Splits(classes, items, skipped, notes)


def decode(path: Path, side: int, interpolation: str, min_side: int) -> tuple[np.ndarray, str]:
    """Decode one image to a ``side`` x ``side`` RGB uint8 array (HWC) and its content hash.
    Raises ValueError with the reason when the file cannot be used."""
    img, digest = load_rgb(path)
    if min(img.size) < min_side:
        raise ValueError(f"smaller than min_image_side={min_side} px ({img.size[0]}x{img.size[1]})")
    return fit_square(img, side, interpolation), digest


@dataclass
class Decoded:
    images: torch.Tensor          # (N, 3, S, S) uint8
    labels: torch.Tensor          # (N,) int64
    paths: list[str]
    hashes: list[str]
    key: str = ""                 # fingerprint of the files and decoding settings (lib.train.cache)
    reused: bool = False          # read from the study's shared cache


def decode_split(root: Path, items: list[tuple[str, int]], side: int, interpolation: str, min_side: int,
                 skipped: list[dict], desc: str, threads: int | None = None, empty=np.empty, stop=None) -> Decoded:
    """``empty(shape, dtype)`` allocates the images (lib.train.cache's Space: a file when over budget).
    ``stop`` (lib.train.training.StopFlag) is checked before every image: its Interrupted ends the decoding
    within one image per thread, the tasks not started yet included."""
    def one(item):
        if stop:
            stop.check()
        try:
            return item, *decode(root / item[0], side, interpolation, min_side), None
        except (ValueError, OSError) as e:
            return item, None, None, str(e)

    def chunk(part):   # a future per image costs as much as decoding a small one
        return [one(item) for item in part]

    # Written in place, channels first: the decoded split is held once, never also as a list or a copy.
    images = empty((len(items), 3, side, side), np.uint8)
    labels, paths, hashes = [], [], []
    parts = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool, \
            tqdm(total=len(items), desc=desc, leave=False, disable=None, unit="img") as bar:
        for results in pool.map(chunk, parts):
            bar.update(len(results))
            for (path, label), arr, digest, err in results:
                if err is not None:
                    skipped.append({"path": path, "reason": err})
                    continue
                images[len(labels)] = arr.transpose(2, 0, 1)
                labels.append(label)
                paths.append(path)
                hashes.append(digest)
    return Decoded(torch.from_numpy(images[:len(labels)]), torch.tensor(labels, dtype=torch.long), paths, hashes)


def decode_cached(cache: SharedCache, root: Path, items: list[tuple[str, int]], side: int, interpolation: str,
                  min_side: int, skipped: list[dict], desc: str, stop=None) -> Decoded:
    """``decode_split`` once per study: later runs read the uint8 arrays from the shared cache
    (memory-mapped when larger than the budget, and then decoded straight into the file) and get
    the same skipped-file list."""
    key = {"files": files_fingerprint(root, items), "side": side, "interpolation": interpolation,
           "min_side": min_side}

    def build(space):
        dropped: list[dict] = []
        d = decode_split(root, items, side, interpolation, min_side, dropped, desc,
                         empty=lambda shape, dtype: space.empty("images", shape, dtype), stop=stop)
        return {"images": d.images.numpy(), "labels": d.labels.numpy()}, \
            {"paths": d.paths, "hashes": d.hashes, "skipped": dropped}
    entry = cache.get("decoded", key, build)
    skipped += entry.meta["skipped"]
    return Decoded(torch.from_numpy(entry.arrays["images"]), torch.from_numpy(entry.arrays["labels"]),
                   entry.meta["paths"], entry.meta["hashes"], key=fingerprint(key), reused=entry.reused)


class BatchAugment:
    """``light`` augmentation for a whole uint8 batch at once, on the batch's device: a random resized
    crop per image (area 50-100%, aspect 3/4-4/3, like RandomResizedCrop) as one ``roi_align`` call,
    a random horizontal flip per image, then normalisation. Used on CUDA, where a batch takes a
    kernel launch or two; on the CPU, per-image transforms are faster (77 ms vs 233 ms for 64 images
    at 256 px on this project's 2-core machine)."""

    def __init__(self, size: int, mean, std, scale=(0.5, 1.0)):
        self.size, self.scale = size, scale
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        u = torch.rand(n, 3, device=x.device)
        cw, ch = self._crop_sizes(n, h, w, x.device)
        # whole pixels, as RandomResizedCrop places them (its randint gives each end half a pixel more room)
        x0, y0 = (u[:, 0] * (w - cw + 1)).floor(), (u[:, 1] * (h - ch + 1)).floor()
        boxes = torch.stack([torch.arange(n, device=x.device, dtype=cw.dtype), x0, y0, x0 + cw, y0 + ch], 1)
        out = roi_align(x.float(), boxes, (self.size, self.size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
        out = torch.where((u[:, 2] < 0.5).view(n, 1, 1, 1), out.flip(-1), out)
        return (out / 255 - self.mean.to(x.device)) / self.std.to(x.device)

    def _crop_sizes(self, n: int, h: int, w: int, device, tries: int = 10):
        """Crop widths and heights drawn as RandomResizedCrop draws them: up to ``tries`` (area, aspect)
        candidates per image, the first that fits is used, else the whole image. Clamping a candidate
        that does not fit instead would favour wide and tall crops (bench/gpu.py compares the two)."""
        u = torch.rand(n, tries, 2, device=device)
        area = h * w * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[..., 0])
        ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * u[..., 1])
        cw, ch = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
        fits = (cw <= w) & (ch <= h) & (cw > 0) & (ch > 0)
        first, ok = fits.float().argmax(1, keepdim=True), fits.any(1)
        return (torch.where(ok, cw.gather(1, first).squeeze(1), float(w)),
                torch.where(ok, ch.gather(1, first).squeeze(1), float(h)))


def transforms(data_cfg: dict, augment: str, train: bool, on_device: bool = False):
    """The transform of a split. ``on_device``: batches are on the GPU, augment there (BatchAugment)."""
    size = data_cfg["input_size"][-1]
    norm = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(data_cfg["mean"], data_cfg["std"])]
    if not train or augment == "none":
        return v2.Compose([v2.CenterCrop(size), *norm])
    if augment == "light" and on_device:
        return BatchAugment(size, data_cfg["mean"], data_cfg["std"])
    if augment == "light":
        return v2.Compose([v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
                           v2.RandomHorizontalFlip(), *norm])
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                       v2.RandAugment(num_ops=2, magnitude=9), *norm, v2.RandomErasing(p=0.25)])


class TensorImages(Dataset):
    """Decoded images through a transform. A batch transform (no augmentation, or BatchAugment) runs
    once per batch on the stacked uint8 tensor instead of once per image (``__getitems__``), on
    ``device`` when given: a uint8 batch crosses to the GPU at a quarter of the float size."""

    def __init__(self, decoded: Decoded, transform, batched: bool = False, device: torch.device | None = None):
        self.decoded, self.transform, self.batched, self.device = decoded, transform, batched, device

    def __len__(self):
        return len(self.decoded.labels)

    def __getitem__(self, i):
        return self.transform(self.decoded.images[i]), self.decoded.labels[i]

    def __getitems__(self, indices: list[int]):
        if not self.batched:
            return [self[i] for i in indices]
        index = torch.as_tensor(indices)
        images = self.decoded.images[index]
        return self.transform(images if self.device is None else images.to(self.device)), self.decoded.labels[index]


def _as_is(batch):
    return batch


def loader(decoded: Decoded, transform, batch_size: int, num_workers: int, seed: int, train: bool,
           drop_last: bool = False, pin_memory: bool = False, batched: bool = False,
           device: torch.device | None = None, sampler: str = "random") -> DataLoader:
    """``device``: batched transforms run there (main process only; nothing left to pin). ``sampler``:
    how a training loader draws (lib.train.balance: random shuffles, balanced draws classes equally)."""
    gen = torch.Generator().manual_seed(seed)
    on_device = device is not None and batched and num_workers == 0
    drawn = make_sampler(sampler, decoded.labels, gen) if train else None
    return DataLoader(TensorImages(decoded, transform, batched, device if on_device else None),
                      batch_size=batch_size, shuffle=train and drawn is None, sampler=drawn,
                      drop_last=drop_last and len(decoded.labels) > batch_size,
                      generator=gen, num_workers=num_workers, pin_memory=pin_memory and not on_device,
                      persistent_workers=num_workers > 0, collate_fn=_as_is if batched else None)


def resize_side(data_cfg: dict) -> int:
    """Side at which images are stored: timm's eval resize (input / crop_pct)."""
    return int(round(data_cfg["input_size"][-1] / data_cfg["crop_pct"]))


def source_sizes(root: Path, paths: list[str], data_cfg: dict, most: int = 256) -> dict:
    """How large the images are before the model's resize: the median shorter side of up to ``most`` of
    them (evenly spread), read from their headers (nothing decoded), beside the model's input side."""
    step = max(1, len(paths) // most)
    sides = []
    for rel in paths[::step][:most]:
        try:
            with Image.open(root / rel) as img:
                sides.append(min(img.size))
        except (OSError, ValueError):   # decoded fine a moment ago: a file changed since, not our concern here
            continue
    return {"median_source_side": int(np.median(sides)) if sides else None, "sampled": len(sides),
            "input_side": int(data_cfg["input_size"][-1]), "resize_side": resize_side(data_cfg)}


def upscale_warning(sizes: dict, model: str, image_size: int, smallest: int) -> str | None:
    """Images smaller than the model's input are stretched to it: said, with how to keep them small
    (``--image_size``, at least ``smallest``: the model's stride), when the size is the model's default.
    An explicit ``image_size`` is the user's choice: recorded (``image_sizes``), not warned about."""
    median, side = sizes["median_source_side"], sizes["input_side"]
    if median is None or median >= side or image_size:
        return None
    keep = max(median, smallest)
    return (f"images are upscaled: their median shorter side is {median} px and {model}'s input is {side} px "
            f"(resized to {sizes['resize_side']} px, then centre-cropped); --image_size {keep} keeps them near "
            f"their own size ({'the smallest ' + model + ' takes; ' if keep > median else ''}faster per image; "
            "whether it costs accuracy is for a study to say)")


def data_warnings(classes: list[str], decoded: dict[str, Decoded]) -> list[str]:
    """What a careful reviewer would flag about the data itself."""
    out = []
    counts = Counter(decoded["train"].labels.tolist())
    present = [counts.get(i, 0) for i in range(len(classes))]
    if min(present) == 0:
        empty = [c for c, n in zip(classes, present, strict=True) if n == 0]
        out.append(f"classes with no usable training image: {', '.join(empty)}")
    elif max(present) / min(present) >= 5:
        detail = ", ".join(f"{c}={n}" for c, n in zip(classes, present, strict=True))
        out.append(f"class imbalance {max(present) / min(present):.0f}:1 in train ({detail}); "
                   "consider --class_weighting=balanced or --sampler=balanced, and --monitor=val_balanced_acc")
    train_hashes = set(decoded["train"].hashes)
    for split in ("val", "test"):
        dup = [p for p, h in zip(decoded[split].paths, decoded[split].hashes, strict=True) if h in train_hashes]
        if dup:
            out.append(f"{len(dup)} {split} image(s) are exact copies of training images "
                       f"(e.g. {dup[0]}): {split} accuracy is inflated")
    return out
