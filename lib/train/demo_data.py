"""The bundled demo dataset: Animal-MNIST (PyPI ``animal-mnist``, MIT), 10 classes of 28x28
grayscale animal silhouettes, written once as an ImageFolder of PNGs (class folders only; the run
carves val and test). Real images that arrive by pip, so the demo and tests need no downloader."""
from __future__ import annotations

import argparse
import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

# Label order of the package's arrays (alphabetical, as its README lists them).
CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")


def load_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        import animal_mnist
    except ImportError:
        raise SystemExit("error: the animal-mnist package is missing: "
                         "pip install --no-deps -r requirements-assets.txt") from None
    folder = Path(animal_mnist.__file__).parent / "data" / "Animal_MNIST"
    with gzip.open(folder / "animal_data_version_3.gz") as f:
        images = pickle.load(f)  # noqa: S301 - the package's own data file, shipped by pip
    with gzip.open(folder / "animal_label_version_3.gz") as f:
        labels = pickle.load(f)  # noqa: S301 - as above: the package's own file
    return np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


def prepare(out_dir: str | Path, per_class: int = 500, classes: int = 10, seed: int = 0) -> Path:
    """Write ``per_class`` images of each of the first ``classes`` classes; reuse a finished tree."""
    out = Path(out_dir)
    marker = out.parent / f".{out.name}.complete"  # outside the tree: not a data file
    wanted = f"{per_class} {classes} {seed}"
    if marker.exists() and marker.read_text() == wanted:
        return out
    images, labels = load_arrays()
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES[:classes]):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        idx = rng.permutation(np.flatnonzero(labels == label))[:per_class]
        for i in idx:
            Image.fromarray(images[i], mode="L").save(folder / f"{name}_{i:05d}.png")
    marker.write_text(wanted)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="data/animal_mnist")
    ap.add_argument("--per_class", type=int, default=500)
    ap.add_argument("--classes", type=int, default=10)
    args = ap.parse_args()
    print(prepare(args.out, args.per_class, args.classes))
