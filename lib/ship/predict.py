"""Classify images with an exported model: ONNX Runtime, numpy and Pillow only (no torch).

The ONNX file carries everything needed in its metadata (written by ``lib.ship.export``): ``classes``
and ``preprocessing`` (input size, mean/std, interpolation, resize side). Images are prepared
exactly as training decoded them (``lib.train.data.decode`` + the eval transform): EXIF rotation, first
frame, any mode to RGB (transparency onto white, 16-bit scaled), shorter side resized to
``resize_side`` and centre-cropped square in one resampling step (``ImageOps.fit``), centre crop
to the input size, /255, normalised.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from lib.cells import csv_cell, display_width, pad
from lib.errors import PredictError
from lib.files import atomic_write
from lib.images import IMAGE_EXTENSIONS, fit_square, load_rgb

BATCH = 32
MAX_SIDE = 8192   # larger preprocessing sizes in the metadata are damage, not a model (config allows 4096)


def _metadata(path: Path, meta: dict, n_outputs) -> tuple[list[str], dict]:
    """Classes and preprocessing from the ONNX metadata, checked: the file may come from anywhere."""
    missing = [k for k in ("classes", "preprocessing") if k not in meta]
    if missing:
        raise PredictError(f"{path} has no {' or '.join(missing)} metadata: not a model exported by "
                           "`finetune_sweep.py export`")
    try:
        classes, pre = json.loads(meta["classes"]), json.loads(meta["preprocessing"])
        mean, std = np.asarray(pre["mean"], np.float32), np.asarray(pre["std"], np.float32)
        sides = int(pre["resize_side"]), int(pre["input_size"][-1])
        ok = (isinstance(classes, list) and len(classes) > 0 and all(isinstance(c, str) for c in classes)
              and mean.shape == std.shape == (3,) and np.isfinite(mean).all() and np.isfinite(std).all()
              and (std != 0).all() and all(0 < side <= MAX_SIDE for side in sides))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        ok = False
    if not ok:
        raise PredictError(f"{path}: its classes/preprocessing metadata is damaged: export the model again")
    if isinstance(n_outputs, int) and n_outputs != len(classes):
        raise PredictError(f"{path}: the model has {n_outputs} outputs but its metadata names {len(classes)} classes")
    return classes, pre


class Model:
    """An exported ONNX classifier with its classes and preprocessing."""

    def __init__(self, model_path):
        import onnxruntime as ort

        path = Path(model_path)
        if path.is_dir():  # an export folder
            path = path / "model.onnx"
        if not path.is_file():
            raise PredictError(f"no ONNX model at {model_path}" + (" (the folder has no model.onnx)" if
                                                                   Path(model_path).is_dir() else ""))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's own classes: truncated, not ONNX, bad graph
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PredictError(f"{path} is not a usable ONNX model: {first[:300]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.classes, self.pre = _metadata(path, meta, self.session.get_outputs()[0].shape[-1])
        self.path = path
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


def check_request(paths, top_k: int, csv_path=None) -> None:
    """What the command line asks, checked before the model is loaded: every path exists, there is at
    least one image, ``top_k`` >= 1, and the CSV can be written where asked. PredictError otherwise."""
    if int(top_k) < 1:
        raise PredictError(f"--top {top_k}: expected an integer >= 1 (how many classes to show per image)")
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise PredictError(f"no such file or folder: {missing[0]}" + (f" (and {len(missing) - 1} more)"
                                                                      if len(missing) > 1 else ""))
    if not expand(paths):
        raise PredictError(f"no images in {', '.join(map(str, paths))}: looked for "
                           f"{', '.join(sorted(IMAGE_EXTENSIONS))} files")
    if csv_path is not None and Path(csv_path).is_dir():
        raise PredictError(f"--csv {csv_path} is a folder: name the CSV file to write")


def predict(model_path, paths: list[str], top_k: int = 3) -> list[dict]:
    """Top-k classes with probabilities for each image: ``[{path, top: [(class, prob), ...]}]``.
    Folders are walked recursively; an image that cannot be used gets ``{path, error}`` instead.
    ``model_path``: an ONNX file written by lib.ship.export, or the export folder (its model.onnx).
    PredictError when the model cannot be used or ``top_k`` < 1."""
    if int(top_k) < 1:
        raise PredictError(f"top_k={top_k}: expected an integer >= 1")
    model = Model(model_path)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = expand(paths)
    k = min(int(top_k), len(model.classes))
    results: list[dict] = [{"path": f} for f in files]
    ready: list[tuple[int, np.ndarray]] = []

    def flush():
        if not ready:
            return
        probs = softmax(model.logits(np.stack([x for _, x in ready])))
        for (i, _), p in zip(ready, probs, strict=True):
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
    # Widths in terminal columns, not characters: a CJK or emoji file name takes two per character.
    widths = [max(display_width(row[i]) for row in [header] + rows) for i in range(len(header))]
    # an error spans the probability columns: do not widen them for it
    for i in range(1, len(header)):
        widths[i] = max([len(header[i])] + [display_width(row[i]) for row in rows
                                            if not row[1].startswith("error: ")])

    def line(cells):
        return "  ".join(pad(c, w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    for row in rows:
        out.append(line(row) if not row[1].startswith("error: ") else f"{pad(row[0], widths[0])}  {row[1]}")
    return "\n".join(out)


def skipped(results: list[dict], most: int = 20) -> list[str]:
    """Lines for stderr: each image that could not be classified and why (the first ``most``), then how
    many more and for which reasons. None for a single image: :func:`check_classified`'s line names it."""
    bad = [r for r in results if "error" in r]
    if len(results) == 1:
        return []
    lines = [f"skipped {r['path']}: {r['error']}" for r in bad[:most]]
    if len(bad) > most:
        reasons = Counter(_kind(r["error"]) for r in bad[most:])
        lines.append(f"skipped {len(bad) - most} more: " + ", ".join(f"{n} {why}" for why, n in reasons.most_common()))
    return lines


def _kind(error: str) -> str:
    """The kind of an image error without its details: ``corrupt or truncated: <what PIL said>``."""
    return error.split(" (")[0].split(":")[0]


def check_classified(results: list[dict]) -> None:
    """PredictError (bad input, exit 2) when not one image could be classified: a text file, a folder of
    unreadable files. Some classified and some not is a partial result, not an error."""
    bad = [r for r in results if "error" in r]
    if not results or len(bad) < len(results):
        return
    if len(bad) == 1:
        raise PredictError(f"nothing could be classified: {bad[0]['path']}: {bad[0]['error']}")
    reasons = Counter(_kind(r["error"]) for r in bad).most_common()
    why = ", ".join(f"{n} {reason}" for reason, n in reasons[:3]) + (", ..." if len(reasons) > 3 else "")
    raise PredictError(f"nothing could be classified: all {len(bad)} files were skipped ({why})")


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
        # File and class names come from outside (the model's metadata, the folder): never formulas.
        writer.writerow([csv_cell(c) for c in cells + [r.get("error", "")]])
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))
    return path
