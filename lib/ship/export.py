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

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lib.errors import ExportError, one_line
from lib.files import atomic_write, write_json
from lib.runs import is_sweep_path, public_api
from lib.ship import ATTR_DIR, CARD_FILE, EXPORT_FILE, INT8_FILE, ONNX_FILE
from lib.ship.card import model_card
from lib.ship.latency import LATENCY_IMAGES, LATENCY_WARMUP, latency_ms
from lib.ship.onnx_model import PARITY_MAX_ABS_DIFF, onnx_accuracy, ort_session, parity, write_onnx
from lib.ship.quantize import quantize_int8
from lib.ship.select import candidates, check_request
from lib.train.restore import data_root, decode_recorded, eval_batches, load_run_model, model_inputs

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
    root = data_root(data_dir or record["config"]["data_dir"], run_dir)
    if not root.is_dir():
        raise ExportError(f"the run's images are not at {root}: pass data_dir= where they are now "
                          "(parity is checked on the test images)")
    out.mkdir(parents=True, exist_ok=True)
    for stale in (INT8_FILE, f"{ATTR_DIR}/correct.png", f"{ATTR_DIR}/misclassified.png", EXPORT_FILE):
        (out / stale).unlink(missing_ok=True)  # an earlier export's files would mislead

    split = "test" if record.get("split", {}).get("test") else "val"
    decoded, skipped = decode_recorded(record, split, root)
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
    check = parity(model, session, eval_batches(decoded, dc, batch_size=64))
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

    singles = [model_inputs(decoded, dc, [i % len(decoded.labels)]).numpy() for i in range(LATENCY_IMAGES)]
    latency: dict = {}
    calls = result["latency_calls"] = {}
    with torch.inference_mode():
        latency["pytorch"], calls["pytorch"] = latency_ms(lambda a: model(torch.from_numpy(a)), singles)
    latency["onnx_fp32"], calls["onnx_fp32"] = latency_ms(lambda a: session.run(["logits"], {"input": a}), singles)
    timings["latency"], mark = _lap(mark), time.time()

    if quantize:
        train, _ = decode_recorded(record, "train", root, limit=calibration_images, seed=0)
        calibration = [x.numpy() for x, _ in eval_batches(train, dc, batch_size=16)]
        try:
            result["int8"] = quantize_int8(out / ONNX_FILE, out / INT8_FILE, calibration)
        except ExportError as e:
            result["error"] = str(e)
            result["latency_ms_per_image"] = latency
            _finish(out, result, record, started)
            raise
        int8 = ort_session(out / INT8_FILE, torch.get_num_threads())
        acc, int8_pred = onnx_accuracy(int8, eval_batches(decoded, dc))
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
        from torchvision.transforms import v2

        from lib.ship import attribution

        logits = check["logits"]
        exp = np.exp(logits - logits.max(1, keepdims=True))
        probs = (exp / exp.sum(1, keepdims=True)).max(1)
        try:
            result["attributions"] = attribution.explain(
                model, lambda idx: v2.CenterCrop(dc["input_size"][-1])(decoded.images[idx]),
                lambda idx: model_inputs(decoded, dc, idx), decoded.labels.numpy(), logits.argmax(1), probs,
                record["classes"], out / ATTR_DIR, int(attributions))
            result["attributions"]["files"] = [f"{ATTR_DIR}/{f}" for f in result["attributions"]["files"]]
        except Exception as e:  # noqa: BLE001 - a diagnostic: the exported model is still good
            result["attributions"] = {"error": one_line(e), "files": []}
            print(f"warning: attributions failed, export goes on: {one_line(e)}", file=sys.stderr)
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

def _nothing_to_export(source, metric: str, max_size_mb: float | None, api, runs) -> str:
    """Why no run can be exported; under a size limit, the smallest size there is (the limit to ask for)."""
    limit = f" within {max_size_mb} MB" if max_size_mb is not None else ""
    line = f"no finished run with {metric} and weights{limit} in {source}"
    sizes = [(r["summary"]["model_size_mb"], r["id"]) for r in (candidates(source, metric, None, api, runs)
                                                                 if max_size_mb is not None else [])
             if isinstance(r["summary"].get("model_size_mb"), (int, float))]
    if sizes:
        size, run_id = min(sizes)
        line += f": the smallest is {size:g} MB (run {run_id}; --max_size_mb {size:g} or more exports it)"
    return line


def export_best(source, out_dir, *, metric: str = "best_val_acc", max_size_mb: float | None = None,
                max_latency_ms: float | None = None, quantize: bool = False, attributions: int = 0,
                data_dir=None, api=None, runs: list[dict] | None = None, fetch=None) -> dict:
    """Export the best run that meets the constraints. Latency is what the exported ONNX model
    measures here, so a candidate over ``max_latency_ms`` is exported, measured, and passed over.
    From a W&B sweep the run's model artifact is fetched into ``out_dir/source_run/`` and the export
    is logged back to W&B (lib.ship.wandb_export); ``api`` stands in for ``wandb.Api()``. ``runs`` and
    ``fetch``: the candidates of another source (``source`` then only names it) and ``fetch(run, dest)``,
    which puts a run's folder (run.json, weights) at ``dest`` and returns it: a study's artifact store."""
    check_request(source, out_dir, max_size_mb, max_latency_ms, attributions, runs)
    from_wandb = is_sweep_path(source)
    if (from_wandb or fetch is not None) and not data_dir:
        # its config.data_dir is whatever was written there: it must not choose which local files are read
        # (for parity) and drawn (attribution grids, which go back to W&B)
        raise ExportError(f"a run from {'W&B' if from_wandb else 'a study database'} brings its own data_dir, which "
                          "decides nothing here: pass --data_dir, the folder of its images on this machine")
    if from_wandb and api is None:
        api = public_api()
    given, runs = runs, candidates(source, metric, max_size_mb, api, runs)
    if not runs:
        raise ExportError(_nothing_to_export(source, metric, max_size_mb, api, given))
    out = Path(out_dir)
    for run in runs:
        if from_wandb:
            from lib.ship import wandb_export

            run_dir = wandb_export.download_run(source, run["id"], out / "source_run" / run["id"], api)
        elif fetch is not None:
            run_dir = fetch(run, out / "source_run" / run["id"])
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
