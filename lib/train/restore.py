"""A finished run back from its folder: its record checked (it may come from anywhere: W&B, a shared
store), its best weights in an eval-mode model, and its images decoded and preprocessed as at training.
What export ships and what a soup averages."""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from lib.errors import ExportError, one_line
from lib.files import read_json
from lib.records import RUN_FILE, WEIGHTS_FILE, State


def load_run_model(run_dir) -> tuple[torch.nn.Module, dict]:
    """The run's best weights in an eval-mode model, and its run.json."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise ExportError(f"{run_dir} is not a run folder: no {RUN_FILE}")
    try:
        record = read_json(path)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} cannot be read: {one_line(e)}") from None
    if record.get("state") != State.FINISHED:
        raise ExportError(f"run {record.get('id', run_dir.name)} is {record.get('state')!r}, not finished: "
                          "only finished runs have final weights and test metrics")
    for key in ("config", "classes", "data_config"):
        if key not in record:
            raise ExportError(f"{path} has no {key!r}: not a complete run record")
    check_record(record, path)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ExportError(f"run {record.get('id', run_dir.name)} has no weights: {weights} is missing")
    import timm
    from safetensors.torch import load_file

    import lib.train.models  # registers small_cnn in timm; sizes fixed-size models

    name = record["config"]["model"]
    if not timm.is_model(name):
        # hf-hub:/local-dir: names make timm fetch or read a config from elsewhere; training only
        # accepts architecture names, so a record with another one was edited.
        raise ExportError(f"{path}: model {name!r} is not a timm architecture name (as training uses): refused, "
                          "it would be fetched from the network or read from another folder")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=len(record["classes"]),
                                  **lib.train.models.size_kwargs(name, int(record["config"].get("image_size") or 0)))
    except Exception as e:  # noqa: BLE001 - unknown name, timm version without it...
        raise ExportError(f"cannot create model {name!r}: {one_line(e)}") from None
    try:
        model.load_state_dict(load_file(weights))
    except Exception as e:  # noqa: BLE001 - corrupt file, other architecture
        raise ExportError(f"{weights} does not fit {name} with {len(record['classes'])} classes: "
                          f"{one_line(e)}") from None
    return model.eval(), record


def _unsafe_path(p) -> bool:
    """A split path that could read outside data_dir: not text, absolute (POSIX or with a Windows
    drive), or with a '..' part (either separator: a record may come from a Windows machine)."""
    if not isinstance(p, str) or not p or "\0" in p:
        return True
    pure = PurePosixPath(p.replace("\\", "/"))
    return pure.is_absolute() or ".." in pure.parts or re.match(r"[A-Za-z]:", p) is not None


def check_record(record: dict, path: Path) -> None:
    """What export takes from run.json, checked: a record downloaded from W&B is only as trustworthy
    as everyone who can write to the project. Split paths stay inside data_dir (the images read are
    uploaded back as attribution grids); classes are names; the model is checked in load_run_model."""
    classes, config, dc = record.get("classes"), record.get("config"), record.get("data_config")
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
        raise ExportError(f"{path}: 'classes' is not a list of class names: a damaged or edited record")
    if not (isinstance(config, dict) and isinstance(config.get("model"), str) and isinstance(dc, dict)):
        raise ExportError(f"{path}: 'config.model' or 'data_config' is missing or not what training writes")
    split = record.get("split") or {}
    if not isinstance(split, dict) or not all(isinstance(v, list) for v in split.values()):
        raise ExportError(f"{path}: 'split' is not lists of image paths: a damaged or edited record")
    for name, paths in split.items():
        bad = next((p for p in paths if _unsafe_path(p)), None)
        if bad is not None:
            raise ExportError(f"{path}: {name} image path {str(bad)[:200]!r} is not relative to data_dir "
                              "(absolute or with '..'): refused, it would read files outside the data folder")


def _labels(record: dict, split: str) -> list[int]:
    """Labels of a split's images: the recorded test labels, else the class folder in the path."""
    paths = record["split"][split]
    y_true = (record.get("test_predictions") or {}).get("y_true")
    n = len(record["classes"])
    if split == "test" and isinstance(y_true, list) and len(y_true) == len(paths) and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n for v in y_true):
        return list(y_true)
    index = {c: i for i, c in enumerate(record["classes"])}
    out = []
    for p in paths:
        label = next((index[part] for part in Path(p).parts[:-1] if part in index), None)
        if label is None:
            raise ExportError(f"cannot tell the class of {p}: no class folder in its path")
        out.append(label)
    return out


def data_root(data_dir: str, run_dir: Path) -> Path:
    """The images' folder; a relative one is tried from here, then from the run folder's parents
    (a run trained in the project root with ``data_dir=data/x`` and ``runs_dir=runs/...``)."""
    root = Path(data_dir)
    if root.is_dir() or root.is_absolute():
        return root
    for parent in run_dir.resolve().parents:
        if (parent / root).is_dir():
            return parent / root
    return root


def decode_recorded(record: dict, split: str, data_dir: Path, limit: int | None = None, seed: int = 0):
    """Decode a split's images exactly as training did (lib.train.data). ``limit``: a seeded sample,
    so a class-sorted list still gives every class."""
    from lib.train import data

    paths = record.get("split", {}).get(split) or []
    labels = _labels(record, split) if paths else []
    items = list(zip(paths, labels, strict=True))
    if limit is not None and len(items) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(items), limit, replace=False))
        items = [items[i] for i in keep]
    dc = record["data_config"]
    skipped: list[dict] = []
    decoded = data.decode_split(data_dir, items, data.resize_side(dc), dc["interpolation"],
                                int(record["config"].get("min_image_side", 1)), skipped, desc=f"decode {split}")
    return decoded, skipped


def model_inputs(decoded, data_cfg: dict, idx) -> torch.Tensor:
    """The model inputs of some decoded images (lib.train.data's eval transform)."""
    from lib.train import data

    transform = data.transforms(data_cfg, "none", False)
    return torch.stack([transform(decoded.images[int(i)]) for i in idx])


def eval_batches(decoded, data_cfg: dict, batch_size: int = 32):
    """Normalised float batches (lib.train.data's eval transform), as during training's evaluation."""
    from lib.train import data

    return data.loader(decoded, data.transforms(data_cfg, "none", False), batch_size, 0, 0, train=False)


def preprocessing(record: dict) -> dict:
    from lib.train import data

    dc = record["data_config"]
    return {"input_size": list(dc["input_size"]), "mean": list(dc["mean"]), "std": list(dc["std"]),
            "interpolation": dc["interpolation"], "crop_pct": dc["crop_pct"],
            "crop_mode": dc.get("crop_mode", "center"), "resize_side": data.resize_side(dc)}
