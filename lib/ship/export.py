"""Ship a finished run: one self-describing ONNX file, checked against PyTorch on the run's test
images, optionally an INT8 version, attributions, a model card and ``export.json``.

``export_run(run_dir, out_dir)`` writes to ``out_dir``:
- ``model.onnx``: one file, input ``input`` (N, 3, H, W) float32 with a dynamic batch, output
  ``logits``; metadata ``classes``, ``preprocessing``, ``run_id``, ``model`` (all ``lib.ship.predict``
  needs). Parity with PyTorch is measured on the test images and must be exact to 1e-3, same top-1;
- ``model.int8.onnx`` (``quantize=True``): static INT8 (QDQ, per-channel weights, QUInt8
  activations) calibrated on training images, with its test accuracy next to fp32's;
- ``attributions/`` (``attributions=N``): Integrated Gradients and Grad-CAM grids;
- ``model_card.md`` and ``export.json`` (every number above, latencies, file sizes).
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from lib.cells import md_cell, md_code, md_text
from lib.records import atomic_write, read_json, write_json

ONNX_FILE, INT8_FILE, CARD_FILE, EXPORT_FILE, ATTR_DIR = (
    "model.onnx", "model.int8.onnx", "model_card.md", "export.json", "attributions")
PARITY_MAX_ABS_DIFF = 1e-3
LATENCY_IMAGES, LATENCY_WARMUP, LATENCY_BUDGET_S = 20, 3, 5.0


class ExportError(RuntimeError):
    """The run cannot be exported, or the export does not match PyTorch; the message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


# ---------------------------------------------------------------------------------------------
# The run: model and images
# ---------------------------------------------------------------------------------------------

def load_run_model(run_dir) -> tuple[torch.nn.Module, dict]:
    """The run's best weights in an eval-mode model, and its run.json."""
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    if not path.is_file():
        raise ExportError(f"{run_dir} is not a run folder: no run.json")
    try:
        record = read_json(path)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} cannot be read: {_one_line(e)}") from None
    if record.get("state") != "finished":
        raise ExportError(f"run {record.get('id', run_dir.name)} is {record.get('state')!r}, not finished: "
                          "only finished runs have final weights and test metrics")
    for key in ("config", "classes", "data_config"):
        if key not in record:
            raise ExportError(f"{path} has no {key!r}: not a complete run record")
    check_record(record, path)
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise ExportError(f"run {record.get('id', run_dir.name)} has no weights: {weights} is missing")
    import timm

    import lib.train.models  # registers small_cnn in timm; sizes fixed-size models
    from safetensors.torch import load_file

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
        raise ExportError(f"cannot create model {name!r}: {_one_line(e)}") from None
    try:
        model.load_state_dict(load_file(weights))
    except Exception as e:  # noqa: BLE001 - corrupt file, other architecture
        raise ExportError(f"{weights} does not fit {name} with {len(record['classes'])} classes: "
                          f"{_one_line(e)}") from None
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


def _data_root(data_dir: str, run_dir: Path) -> Path:
    """The images' folder; a relative one is tried from here, then from the run folder's parents
    (a run trained in the project root with ``data_dir=data/x`` and ``runs_dir=runs/...``)."""
    root = Path(data_dir)
    if root.is_dir() or root.is_absolute():
        return root
    for parent in run_dir.resolve().parents:
        if (parent / root).is_dir():
            return parent / root
    return root


def _decode(record: dict, split: str, data_dir: Path, limit: int | None = None, seed: int = 0):
    """Decode a split's images exactly as training did (lib.train.data). ``limit``: a seeded sample,
    so a class-sorted list still gives every class."""
    from lib.train import data

    paths = record.get("split", {}).get(split) or []
    labels = _labels(record, split) if paths else []
    items = list(zip(paths, labels))
    if limit is not None and len(items) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(items), limit, replace=False))
        items = [items[i] for i in keep]
    dc = record["data_config"]
    skipped: list[dict] = []
    decoded = data.decode_split(data_dir, items, data.resize_side(dc), dc["interpolation"],
                                int(record["config"].get("min_image_side", 1)), skipped, desc=f"decode {split}")
    return decoded, skipped


def _inputs(decoded, data_cfg: dict, idx) -> torch.Tensor:
    """The model inputs of some decoded images (lib.train.data's eval transform)."""
    from lib.train import data

    transform = data.transforms(data_cfg, "none", False)
    return torch.stack([transform(decoded.images[int(i)]) for i in idx])


def _batches(decoded, data_cfg: dict, batch_size: int = 32):
    """Normalised float batches (lib.train.data's eval transform), as during training's evaluation."""
    from lib.train import data

    return data.loader(decoded, data.transforms(data_cfg, "none", False), batch_size, 0, 0, train=False)


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------

def preprocessing(record: dict) -> dict:
    from lib.train import data

    dc = record["data_config"]
    return {"input_size": list(dc["input_size"]), "mean": list(dc["mean"]), "std": list(dc["std"]),
            "interpolation": dc["interpolation"], "crop_pct": dc["crop_pct"],
            "crop_mode": dc.get("crop_mode", "center"), "resize_side": data.resize_side(dc)}


def _to_onnx(model: torch.nn.Module, example: torch.Tensor, tmp: Path) -> tuple[object, dict]:
    """ModelProto of the model: torch.export (dynamo) first, the TorchScript exporter if that fails."""
    import onnx

    info: dict = {}
    try:
        program = torch.onnx.export(
            model, (example,), None, dynamo=True, external_data=False, verbose=False,
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}},
            input_names=["input"], output_names=["logits"])
        info["exporter"] = "dynamo"
        return program.model_proto, info
    except Exception as e:  # noqa: BLE001 - any model torch.export cannot trace
        info["dynamo_error"] = _one_line(e)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, input_names=["input"],
                              output_names=["logits"], opset_version=17,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        info["exporter"] = "torchscript"
        return onnx.load(str(tmp)), info
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"ONNX export failed with both exporters: dynamo: {info['dynamo_error']}; "
                          f"torchscript: {_one_line(e)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_onnx(model: torch.nn.Module, record: dict, path: Path) -> dict:
    """Export to one ONNX file with the metadata ``lib.ship.predict`` needs; returns export facts."""
    import onnx

    example = torch.zeros(2, *record["data_config"]["input_size"])  # batch 2: keeps the batch dynamic
    proto, info = _to_onnx(model, example, path.with_name(f".{path.name}.legacy.tmp"))
    meta = {"classes": json.dumps(record["classes"]), "preprocessing": json.dumps(preprocessing(record)),
            "run_id": str(record["id"]), "model": record["config"]["model"]}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    proto.doc_string = f"{record['config']['model']} fine-tuned by run {record['id']}; classes and preprocessing in metadata"
    if proto.ByteSize() >= 2**31:
        raise ExportError(f"{record['config']['model']} is over 2 GB: it cannot be one ONNX file")
    atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))
    info["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return info


def ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity(model: torch.nn.Module, session, batches) -> dict:
    """PyTorch vs ONNX Runtime on the same normalised batches (large ones: switching runtimes per
    batch lets each one's idle spinning threads slow the other a little)."""
    diff, agree, n, correct_pt, correct_ort, ort_logits = 0.0, 0, 0, 0, 0, []
    for x, y in batches:
        with torch.inference_mode():
            expected = model(x).numpy()
        got = session.run(["logits"], {"input": x.numpy()})[0]
        y = y.numpy()
        diff = max(diff, float(np.abs(expected - got).max()))
        agree += int((expected.argmax(1) == got.argmax(1)).sum())
        correct_pt += int((expected.argmax(1) == y).sum())
        correct_ort += int((got.argmax(1) == y).sum())
        n += len(y)
        ort_logits.append(got)
    return {"max_abs_diff": diff if n else math.nan, "top1_agreement": agree / n if n else math.nan, "images": n,
            "pytorch_acc": correct_pt / n if n else math.nan, "onnx_acc": correct_ort / n if n else math.nan,
            "logits": np.concatenate(ort_logits) if ort_logits else np.zeros((0, 0), np.float32)}


def onnx_accuracy(session, batches) -> tuple[float, np.ndarray]:
    preds, labels = [], []
    for x, y in batches:
        preds.append(session.run(["logits"], {"input": x.numpy()})[0].argmax(1))
        labels.append(y.numpy())
    if not preds:
        return math.nan, np.zeros(0, np.int64)
    pred = np.concatenate(preds)
    return float((pred == np.concatenate(labels)).mean()), pred


def quantize_int8(fp32: Path, out: Path, calibration: list[np.ndarray]) -> dict:
    """Static 8-bit: ``quant_pre_process`` (shape inference + graph optimisation), then
    ``quantize_static`` in QDQ format, per-channel weights, uint8 activations, MinMax calibration on
    real training images (per-tensor weights cost MobileNetV2 ~12 points here). Weights are uint8
    (U8U8), not int8: on x86 CPUs without VNNI (AVX2 only, like this project's machines) U8S8 kernels
    saturate, as ONNX Runtime's quantization guide warns; a 64 px MobileNetV2 head lost 20 points of
    40 test images with U8S8 and 5 with U8U8 (48 calibration images)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {"input": batch}

    if not calibration:
        raise ExportError("int8 quantization needs calibration images: the run has no readable training images")
    pre = out.with_name(f".{out.stem}.pre.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32), str(pre))
            atomic_write(out, lambda tmp: quantize_static(
                str(pre), tmp, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8))
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"int8 quantization failed: {_one_line(e)}") from None
    finally:
        pre.unlink(missing_ok=True)
    return {"format": "QDQ", "weights": "uint8 per-channel", "activations": "uint8",
            "calibration_images": int(sum(len(b) for b in calibration)), "calibration_method": "MinMax"}


def latency_ms(fn, images: list[np.ndarray], budget_s: float = LATENCY_BUDGET_S) -> tuple[float, int]:
    """Median milliseconds for one image (batch 1) after warm-up, and how many calls were timed:
    up to ``len(images)``, fewer (at least 5) when they take longer than ``budget_s`` in all, so a
    slow model or a busy machine does not stall the export."""
    start = time.perf_counter()
    for x in images[:LATENCY_WARMUP]:
        fn(x)
    times: list[float] = []
    for x in images:
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1000)
        if len(times) >= 5 and time.perf_counter() - start > budget_s:
            break
    return round(statistics.median(times), 3), len(times)


# ---------------------------------------------------------------------------------------------
# The whole export
# ---------------------------------------------------------------------------------------------

def export_run(run_dir, out_dir, *, quantize=False, attributions=0, calibration_images=64,
               data_dir=None) -> dict:
    """Export a finished run to ``out_dir`` (see the module docstring); returns export.json's dict.
    ``data_dir`` overrides the run's ``config.data_dir`` (the images moved). Raises ExportError
    (one line) when the run cannot be exported or ONNX Runtime disagrees with PyTorch; the files
    written so far stay in ``out_dir`` to look at."""
    run_dir, out = Path(run_dir), Path(out_dir)
    started = time.time()
    model, record = load_run_model(run_dir)
    root = _data_root(data_dir or record["config"]["data_dir"], run_dir)
    if not root.is_dir():
        raise ExportError(f"the run's images are not at {root}: pass data_dir= where they are now "
                          "(parity is checked on the test images)")
    out.mkdir(parents=True, exist_ok=True)
    for stale in (INT8_FILE, f"{ATTR_DIR}/correct.png", f"{ATTR_DIR}/misclassified.png", EXPORT_FILE):
        (out / stale).unlink(missing_ok=True)  # an earlier export's files would mislead

    split = "test" if record.get("split", {}).get("test") else "val"
    decoded, skipped = _decode(record, split, root)
    if len(decoded.labels) == 0:
        raise ExportError(f"none of the run's {split} images could be read under {root} "
                          f"({len(skipped)} skipped): parity cannot be checked")
    dc = record["data_config"]

    result: dict = {"run_id": record["id"], "model": record["config"]["model"], "config": record["config"],
                    "classes": record["classes"], "metrics": record.get("summary", {}),
                    "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "versions": _versions(), "parity_split": split, "parity_images": len(decoded.labels),
                    "parity_skipped": [s["path"] for s in skipped]}
    timings = result["timings_s"] = {"load": _lap(started)}
    mark = time.time()
    info = write_onnx(model, record, out / ONNX_FILE)
    result.update(info)
    timings["onnx_export"], mark = _lap(mark), time.time()
    session = ort_session(out / ONNX_FILE, torch.get_num_threads())
    check = parity(model, session, _batches(decoded, dc, batch_size=64))
    result.update(parity_max_abs_diff=check["max_abs_diff"], parity_top1_agreement=check["top1_agreement"],
                  pytorch_test_acc=check["pytorch_acc"], fp32_test_acc=check["onnx_acc"], int8_test_acc=None)
    timings["parity"], mark = _lap(mark), time.time()
    if check["top1_agreement"] < 1.0 or not check["max_abs_diff"] <= PARITY_MAX_ABS_DIFF:
        message = (f"ONNX Runtime disagrees with PyTorch on {check['images']} {split} images of run "
                   f"{record['id']}: max |logit diff| {check['max_abs_diff']:.3g} (limit {PARITY_MAX_ABS_DIFF:g}), "
                   f"top-1 agreement {check['top1_agreement']:.4f} (need 1.0); files left in {out}")
        result["error"] = message
        _finish(out, result, record, started)
        raise ExportError(message)

    singles = [_inputs(decoded, dc, [i % len(decoded.labels)]).numpy() for i in range(LATENCY_IMAGES)]
    latency: dict = {}
    calls = result["latency_calls"] = {}
    with torch.inference_mode():
        latency["pytorch"], calls["pytorch"] = latency_ms(lambda a: model(torch.from_numpy(a)), singles)
    latency["onnx_fp32"], calls["onnx_fp32"] = latency_ms(lambda a: session.run(["logits"], {"input": a}), singles)
    timings["latency"], mark = _lap(mark), time.time()

    if quantize:
        train, _ = _decode(record, "train", root, limit=calibration_images, seed=0)
        calibration = [x.numpy() for x, _ in _batches(train, dc, batch_size=16)]
        try:
            result["int8"] = quantize_int8(out / ONNX_FILE, out / INT8_FILE, calibration)
        except ExportError as e:
            result["error"] = str(e)
            result["latency_ms_per_image"] = latency
            _finish(out, result, record, started)
            raise
        int8 = ort_session(out / INT8_FILE, torch.get_num_threads())
        acc, int8_pred = onnx_accuracy(int8, _batches(decoded, dc))
        result["int8_test_acc"] = acc
        result["int8_top1_agreement_with_fp32"] = float((int8_pred == check["logits"].argmax(1)).mean())
        latency["onnx_int8"], calls["onnx_int8"] = latency_ms(lambda a: int8.run(["logits"], {"input": a}), singles)
        timings["int8"], mark = _lap(mark), time.time()
    result["latency_ms_per_image"] = latency
    result["latency_note"] = (f"median of up to {LATENCY_IMAGES} single-image calls (latency_calls) after "
                              f"{LATENCY_WARMUP} warm-up, "
                              f"CPU ({platform.machine()}, {os.cpu_count()} cores), {torch.get_num_threads()} threads "
                              f"each, load average {os.getloadavg()[0]:.1f} (other work on the machine slows "
                              "multi-threaded PyTorch most)")

    if attributions > 0:
        from lib.ship import attribution
        from torchvision.transforms import v2

        logits = check["logits"]
        exp = np.exp(logits - logits.max(1, keepdims=True))
        probs = (exp / exp.sum(1, keepdims=True)).max(1)
        try:
            result["attributions"] = attribution.explain(
                model, lambda idx: v2.CenterCrop(dc["input_size"][-1])(decoded.images[idx]),
                lambda idx: _inputs(decoded, dc, idx), decoded.labels.numpy(), logits.argmax(1), probs,
                record["classes"], out / ATTR_DIR, int(attributions))
            result["attributions"]["files"] = [f"{ATTR_DIR}/{f}" for f in result["attributions"]["files"]]
        except Exception as e:  # noqa: BLE001 - a diagnostic: the exported model is still good
            result["attributions"] = {"error": _one_line(e), "files": []}
            print(f"warning: attributions failed, export goes on: {_one_line(e)}", file=sys.stderr)
        timings["attributions"] = _lap(mark)
    return _finish(out, result, record, started)


def _lap(since: float) -> float:
    return round(time.time() - since, 2)


def _finish(out: Path, result: dict, record: dict, started: float) -> dict:
    result["files"] = _files(out)
    atomic_write(out / CARD_FILE, lambda tmp: Path(tmp).write_text(model_card(result, record)))
    result["files"] = _files(out)
    result["export_time_s"] = round(time.time() - started, 2)
    write_json(out / EXPORT_FILE, result)
    return result


def _files(out: Path) -> dict:
    names = [ONNX_FILE, INT8_FILE, CARD_FILE, f"{ATTR_DIR}/correct.png", f"{ATTR_DIR}/misclassified.png"]
    return {n: (out / n).stat().st_size for n in names if (out / n).is_file()}


def _versions() -> dict:
    import onnx
    import onnxruntime
    import timm

    return {"torch": torch.__version__, "timm": timm.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------

def _wilson(acc: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if not n or acc is None or (isinstance(acc, float) and math.isnan(acc)):
        return math.nan, math.nan
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB"


def _params_line(summary: dict) -> str:
    total, trained = summary.get("total_params"), summary.get("trainable_params")
    if isinstance(total, int) and isinstance(trained, int):
        return f"- parameters: {total:,} total, {trained:,} trained"
    return "- parameters: n/a"


def model_card(result: dict, record: dict) -> str:
    cfg, s = record["config"], record.get("summary", {})
    counts = record.get("counts") or {k: len(v) for k, v in record.get("split", {}).items()}
    n_test = counts.get("test", 0)
    lo, hi = _wilson(s.get("test_acc"), n_test)
    keys = ["strategy", "unfreeze_blocks", "unfreeze_unit", "optimizer", "lr", "backbone_lr_mult",
            "weight_decay", "scheduler", "epochs", "batch_size", "image_size", "augment", "label_smoothing",
            "mixup", "cutmix", "dropout", "weights", "seed"]
    lines = [
        f"# Model card: {md_text(cfg['model'])} ({len(record['classes'])} classes)", "",
        f"- run id: {md_code(record['id'])}" + (f" ({md_text(record['name'])})" if record.get("name") else ""),
        f"- backbone: {md_code(cfg['model'])}, initial weights: "
        f"{md_text(json.dumps(record.get('weights_source', cfg.get('weights'))))}",
        _params_line(s),
        f"- exported: {result['exported_at']} with the {result.get('exporter', 'n/a')} exporter "
        f"(ONNX opset {result.get('opset', 'n/a')})", "",
        "## Training configuration", "",
        "| key | value |", "|---|---|",
        *[f"| {k} | {md_cell(cfg[k])} |" for k in keys if k in cfg], "",
        "## Classes", "", ", ".join(md_code(c) for c in record["classes"]), "",
        "## Data", "",
        f"- data folder: {md_code(cfg.get('data_dir'))}",
        f"- images: train {counts.get('train', 'n/a')}, val {counts.get('val', 'n/a')}, test {n_test}",
        f"- skipped as unusable during training: {len(record.get('skipped', []))}",
        *[f"- warning: {md_text(w)}" for w in record.get("warnings") or []], "",
        "## Metrics", "",
        "| metric | value |", "|---|---|",
        f"| best validation accuracy | {_fmt(s.get('best_val_acc'))} (epoch {s.get('best_epoch', 'n/a')}) |",
        f"| test accuracy (PyTorch, at training) | {_fmt(s.get('test_acc'))} (95% CI {_fmt(lo, 3)}-{_fmt(hi, 3)}, n={n_test}) |",
        f"| test macro F1 | {_fmt(s.get('test_f1_macro'))} |",
        f"| test accuracy, ONNX fp32 | {_fmt(result.get('fp32_test_acc'))} |",
        f"| test accuracy, ONNX int8 | {_fmt(result.get('int8_test_acc'))} |", "",
    ]
    per_class = record.get("per_class") or []
    if per_class:
        lines += ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|",
                  *["| " + " | ".join(md_cell(_fmt(p.get(k), 3)) for k in ("class", "precision", "recall", "f1",
                                                                          "support")) + " |"
                    for p in per_class if isinstance(p, dict)], ""]
    lat = result.get("latency_ms_per_image", {})
    lines += ["## Files, speed and parity", "",
              "| file | size |", "|---|---|",
              *[f"| `{n}` | {_size(b)} |" for n, b in result.get("files", {}).items()], "",
              "| runtime | ms per image (batch 1) |", "|---|---|",
              *[f"| {k} | {v:.2f} |" for k, v in lat.items()], "",
              f"Latency: {result.get('latency_note', 'not measured')}.", "",
              f"ONNX Runtime vs PyTorch on {result.get('parity_images')} {result.get('parity_split')} images: "
              f"max |logit difference| {result['parity_max_abs_diff']:.2e}, "
              f"top-1 agreement {_fmt(result.get('parity_top1_agreement'))}."]
    if "int8" in result:
        q = result["int8"]
        lines += ["", f"INT8: static quantization ({q['format']}, {q['weights']} weights, {q['activations']} "
                      f"activations, {q['calibration_method']} calibration on {q['calibration_images']} training "
                      f"images); agrees with fp32 on "
                      f"{_fmt(result.get('int8_top1_agreement_with_fp32'), 3)} of the test images."]
    if result.get("error"):
        lines += ["", f"**EXPORT FAILED:** {md_text(result['error'])}"]
    lines += ["", "## Use", "",
              "```python", "from lib.ship.predict import predict, format_table   # ONNX Runtime + Pillow, no torch",
              "print(format_table(predict(\"model.onnx\", [\"photo.jpg\", \"a/folder\"], top_k=3)))",
              "```", "",
              "The ONNX file carries its class names and preprocessing in its metadata (`classes`, "
              "`preprocessing`): decode, EXIF-rotate, convert to RGB, resize the shorter side to "
              f"{preprocessing(record)['resize_side']} px ({record['data_config']['interpolation']}), centre-crop "
              f"{record['data_config']['input_size'][-1]} px, scale to [0, 1], normalise with the stored mean/std.",
              "", "## Intended use and limitations", "",
              f"- Classifies images into exactly these {len(record['classes'])} classes; any other input still gets "
              "one of them, often with high confidence. There is no \"unknown\" class.",
              f"- The test set has only {n_test} images: the test accuracy is uncertain by about "
              f"±{_fmt((hi - lo) / 2 if not math.isnan(lo) else math.nan, 3)} (95% Wilson interval); differences between "
              "models smaller than that are not evidence.",
              "- Expect lower accuracy on images unlike the training data (other cameras, lighting, backgrounds, "
              "image sizes); check on your own data before relying on it.",
              "- Validation accuracy picked the checkpoint (and possibly the hyperparameters), so it is optimistic; "
              "the test accuracy is the honest estimate."]
    if (result.get("attributions") or {}).get("files"):
        lines += ["- Attributions (`attributions/`) show where the model looks for a few test images; "
                  "they are a sanity check, not an explanation of every decision."]
    return "\n".join(lines) + "\n"


def is_wandb_sweep(source) -> bool:
    """``entity/project/sweep_id`` that is not a local path."""
    from lib.sweep.cloud import is_sweep_path

    return is_sweep_path(source)


def candidates(source, metric: str = "best_val_acc", max_size_mb: float | None = None, api=None) -> list[dict]:
    """Finished runs of a sweep dir, runs dir, single run dir or W&B sweep path, best first by
    ``metric``; ties go to the smaller model. Runs over ``max_size_mb`` are left out."""
    from lib.report import ReportError, load_local, load_wandb

    if is_wandb_sweep(source):
        runs = [r for r in load_wandb(source, api, history=False) if r.get("state") == "finished"]
    else:
        try:
            runs = [r for r in load_local(source) if r.get("state") == "finished"
                    and (Path(r["dir"]) / "model.safetensors").exists()]
        except ReportError as e:   # no such folder: the same one line, as export's own error
            raise ExportError(str(e)) from None
    runs = [r for r in runs if (r.get("summary") or {}).get(metric) is not None]
    if max_size_mb is not None:
        runs = [r for r in runs if r["summary"].get("model_size_mb", float("inf")) <= max_size_mb]
    lower_is_better = "loss" in metric
    return sorted(runs, key=lambda r: ((1 if lower_is_better else -1) * r["summary"][metric],
                                       r["summary"].get("model_size_mb", 0.0)))


def _check_request(source, out_dir, max_size_mb, max_latency_ms, attributions) -> None:
    """Arguments that cannot work, caught before anything is read or written."""
    if not is_wandb_sweep(source) and not Path(source).exists():
        raise ExportError(f"no such folder: {source} (and not a W&B sweep path ENTITY/PROJECT/SWEEP_ID)")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ExportError(f"--out {out_dir} is a file, not a folder")
    for name, value in (("--max-size-mb", max_size_mb), ("--max-latency-ms", max_latency_ms)):
        if value is not None and not value > 0:
            raise ExportError(f"{name} {value}: expected a number > 0")
    if attributions < 0:
        raise ExportError(f"--attributions {attributions}: expected 0 (none) or more test images")


def export_best(source, out_dir, *, metric: str = "best_val_acc", max_size_mb: float | None = None,
                max_latency_ms: float | None = None, quantize: bool = False, attributions: int = 0,
                data_dir=None, api=None) -> dict:
    """Export the best run that meets the constraints. Latency is what the exported ONNX model
    measures here, so a candidate over ``max_latency_ms`` is exported, measured, and passed over.
    From a W&B sweep the run's model artifact is fetched into ``out_dir/source_run/`` and the export
    is logged back to W&B (lib.ship.wandb_export); ``api`` stands in for ``wandb.Api()``."""
    _check_request(source, out_dir, max_size_mb, max_latency_ms, attributions)
    from_wandb = is_wandb_sweep(source)
    if from_wandb and api is None:
        from lib.sweep.cloud import public_api

        api = public_api()
    runs = candidates(source, metric, max_size_mb, api)
    if not runs:
        limit = f" within {max_size_mb} MB" if max_size_mb is not None else ""
        raise ExportError(f"no finished run with {metric} and weights{limit} in {source}")
    out = Path(out_dir)
    for run in runs:
        if from_wandb:
            from lib.ship import wandb_export

            run_dir = wandb_export.download_run(source, run["id"], out / "source_run" / run["id"], api)
        else:
            run_dir = run["dir"]
        result = export_run(run_dir, out, quantize=quantize, attributions=attributions, data_dir=data_dir)
        latency = (result.get("latency_ms_per_image") or {}).get("onnx_int8" if quantize else "onnx_fp32")
        if max_latency_ms is None or (latency is not None and latency <= max_latency_ms):
            if from_wandb:
                result["wandb_export_run"] = wandb_export.log_export(source, run["id"], out, result)
                write_json(out / EXPORT_FILE, result)
            return result
        print(f"run {run['id']}: {latency:.2f} ms per image > {max_latency_ms} ms, trying the next best")
    raise ExportError(f"no run meets max_latency_ms={max_latency_ms} (fastest tried: see {out_dir}/export.json)")
