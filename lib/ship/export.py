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
from lib.selection import selection
from lib.ship import ATTR_DIR, CARD_FILE, EXPORT_FILE, INT8_FILE, ONNX_FILE
from lib.ship.card import model_card
from lib.ship.latency import LATENCY_IMAGES, LATENCY_WARMUP, latency_ms
from lib.ship.onnx_model import PARITY_MAX_ABS_DIFF, onnx_accuracy, ort_session, parity, write_onnx
from lib.ship.quantize import quantize_int8
from lib.ship.select import asked, check_data_dir, check_request, recommended
from lib.sources import resolve
from lib.train.restore import data_root, decode_recorded, eval_batches, load_run_model, model_inputs

# ---------------------------------------------------------------------------------------------
# The whole export
# ---------------------------------------------------------------------------------------------

def export_run(run_dir, out_dir, *, quantize=False, attributions=0, calibration_images=64,
               data_dir=None, why: dict | None = None) -> dict:
    """Export a finished run to ``out_dir`` (see the module docstring); returns export.json's dict.
    ``data_dir`` overrides the run's ``config.data_dir`` (the images moved). Raises ExportError
    (one line) when the run cannot be exported or ONNX Runtime disagrees with PyTorch; the files
    written so far stay in ``out_dir`` to look at. ``why``: {"reason", "recommended_by"}, why this run was
    chosen (export.json and the model card keep it)."""
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

    result: dict = {"run_id": record["id"], **(why or {}), "model": record["config"]["model"],
                    "config": record["config"],
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
# The run to ship
# ---------------------------------------------------------------------------------------------

def export_best(source, out_dir, *, metric: str | None = None, goal: str | None = None, run_id: str | None = None,
                max_size_mb: float | None = None, max_latency_ms: float | None = None, quantize: bool = False,
                attributions: int = 0, data_dir=None, api=None, study: str | None = None,
                artifacts: str | None = None) -> dict:
    """Export the recommended run (lib.ship.select: the report's recommendation, by the source's own metric
    unless ``metric``/``goal`` say otherwise) among the runs that meet the constraints, or ``run_id``.
    Latency is what the exported ONNX model measures here, so a run over ``max_latency_ms`` is exported,
    measured, and passed over for the recommendation among the rest. ``source``: any SOURCE
    (lib.sources; ``api`` stands in for ``wandb.Api()``, ``study``/``artifacts`` pick a database's). The
    run's files are fetched into ``out_dir/source_run/`` when they are elsewhere; from a W&B sweep the
    export is logged back (lib.ship.wandb_export). export.json and the model card say why this run."""
    check_request(out_dir, max_size_mb, max_latency_ms, attributions)
    source = resolve(source, api=api, study=study, artifacts=artifacts)
    check_data_dir(source, data_dir)
    sel = selection(source.meta(), metric, goal, source.runs(full=False))   # what the report reads: the same answer
    out, passed = Path(out_dir), ()
    while True:
        choice = asked(source, run_id) if run_id is not None else recommended(source, sel, max_size_mb, passed)
        run = choice.run
        run_dir = source.fetch(run, out / "source_run" / str(run["id"]))
        result = export_run(run_dir, out, quantize=quantize, attributions=attributions, data_dir=data_dir,
                            why={"reason": choice.reason, "recommended_by": choice.recommended_by})
        latency = (result.get("latency_ms_per_image") or {}).get("onnx_int8" if quantize else "onnx_fp32")
        if max_latency_ms is None or (latency is not None and latency <= max_latency_ms):
            break
        if run_id is not None:
            raise ExportError(f"run {run_id}: {latency:.2f} ms per image > --max_latency_ms {max_latency_ms:g} "
                              f"(see {out / EXPORT_FILE})")
        passed += (str(run["id"]),)
        print(f"run {run['id']}: {latency:.2f} ms per image > {max_latency_ms:g} ms: the recommendation among the rest")
    if source.form == "W&B sweep":
        from lib.ship import wandb_export

        result["wandb_export_run"] = wandb_export.log_export(source.text, run["id"], out, result)
        write_json(out / EXPORT_FILE, result)
    return result
