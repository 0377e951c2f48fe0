"""Classify images with an exported model: ONNX Runtime, numpy and Pillow only (no torch).

The ONNX file carries everything needed in its metadata (written by ``lib.export``): ``classes``
and ``preprocessing`` (input size, mean/std, interpolation, resize side). Images are prepared
exactly as training decoded them (``lib.data.decode`` + the eval transform): EXIF rotation, first
frame, any mode to RGB (transparency onto white, 16-bit scaled), shorter side resized to
``resize_side`` and centre-cropped square in one resampling step (``ImageOps.fit``), centre crop
to the input size, /255, normalised.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
from lib.images import IMAGE_EXTENSIONS, fit_square, load_rgb
from lib.records import atomic_write

BATCH = 32


class Model:
    """An exported ONNX classifier with its classes and preprocessing."""

    def __init__(self, model_path):
        import onnxruntime as ort

        path = Path(model_path)
        if path.is_dir():  # an export folder
            path = path / "model.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {model_path}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in ("classes", "preprocessing") if k not in meta]
        if missing:
            raise ValueError(f"{path} has no {' or '.join(missing)} metadata: export it with lib.export")
        self.path = path
        self.classes: list[str] = json.loads(meta["classes"])
        self.pre: dict = json.loads(meta["preprocessing"])
        self.input_name = self.session.get_inputs()[0].name
        self.mean = np.asarray(self.pre["mean"], np.float32).reshape(3, 1, 1)
        self.std = np.asarray(self.pre["std"], np.float32).reshape(3, 1, 1)

    def prepare(self, path) -> np.ndarray:
        """One image file -> (3, H, W) float32, as the model was trained. ValueError if unusable."""
        img, _ = load_rgb(path)
        side, size = int(self.pre["resize_side"]), int(self.pre["input_size"][-1])
        arr = fit_square(img, side, self.pre.get("interpolation", "bilinear"))
        top, left = center_offset(arr.shape[0], size), center_offset(arr.shape[1], size)
        arr = arr[top:top + size, left:left + size] if side >= size else _pad(arr, size)
        x = arr.transpose(2, 0, 1).astype(np.float32) / 255.0
        return (x - self.mean) / self.std

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


def center_offset(length: int, size: int) -> int:
    """torchvision's CenterCrop offset (round half to even, as Python's round)."""
    return int(round((length - size) / 2.0))


def _pad(arr: np.ndarray, size: int) -> np.ndarray:
    """torchvision's CenterCrop pads with zeros when the image is smaller than the crop."""
    h, w = arr.shape[:2]
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - h) // 2, (size - w) // 2
    out[top:top + h, left:left + w] = arr
    return out


def expand(paths) -> list[str]:
    """Files as given; folders walked recursively (sorted, symlinked folders not followed) for
    image files. A path that does not exist is kept, to be reported."""
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p, followlinks=False):
                dirs.sort()
                out += [str(Path(root) / f) for f in sorted(files)
                        if Path(f).suffix.lower() in IMAGE_EXTENSIONS and not f.startswith(".")]
        else:
            out.append(str(p))
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(model_path, paths: list[str], top_k: int = 3) -> list[dict]:
    """Top-k classes with probabilities for each image: ``[{path, top: [(class, prob), ...]}]``.
    Folders are walked recursively; an image that cannot be used gets ``{path, error}`` instead.
    ``model_path``: an ONNX file written by lib.export, or the export folder (its model.onnx)."""
    model = Model(model_path)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = expand(paths)
    k = max(1, min(int(top_k), len(model.classes)))
    results: list[dict] = [{"path": f} for f in files]
    ready: list[tuple[int, np.ndarray]] = []

    def flush():
        if not ready:
            return
        probs = softmax(model.logits(np.stack([x for _, x in ready])))
        for (i, _), p in zip(ready, probs):
            order = np.argsort(-p, kind="stable")[:k]
            results[i]["top"] = [(model.classes[j], float(p[j])) for j in order]
        ready.clear()

    for i, f in enumerate(files):
        if not Path(f).exists():
            results[i]["error"] = "no such file"
            continue
        try:
            ready.append((i, model.prepare(f)))
        except ValueError as e:
            results[i]["error"] = str(e)
            continue
        if len(ready) >= BATCH:
            flush()
    flush()
    return results


def format_table(results: list[dict]) -> str:
    """A plain-text table: path, then the top classes with probabilities (or the error)."""
    if not results:
        return "no images"
    k = max((len(r.get("top", [])) for r in results), default=1) or 1
    header = ["path"] + [f"top{i + 1}" for i in range(k)]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["path"], f"error: {r['error']}"] + [""] * (k - 1))
        else:
            rows.append([r["path"]] + [f"{c} {p:.3f}" for c, p in r["top"]] + [""] * (k - len(r["top"])))
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    # an error spans the probability columns: do not widen them for it
    for i in range(1, len(header)):
        widths[i] = max([len(header[i])] + [len(row[i]) for row in rows if not row[1].startswith("error: ")])

    def line(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    for row in rows:
        out.append(line(row) if not row[1].startswith("error: ") else f"{row[0].ljust(widths[0])}  {row[1]}")
    return "\n".join(out)


def write_csv(results: list[dict], path) -> Path:
    """One row per image: path, top1, top1_prob, ..., error (empty when it was classified)."""
    k = max((len(r.get("top", [])) for r in results), default=0)
    header = ["path"] + [f for i in range(k) for f in (f"top{i + 1}", f"top{i + 1}_prob")] + ["error"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for r in results:
        cells = [r["path"]]
        for i in range(k):
            top = r.get("top", [])
            cells += [top[i][0], f"{top[i][1]:.6f}"] if i < len(top) else ["", ""]
        writer.writerow(cells + [r.get("error", "")])
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))
    return path
