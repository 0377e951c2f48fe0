"""The ONNX file: written with its classes and preprocessing as metadata, opened in ONNX Runtime, and
checked against PyTorch (parity) and on the test images (accuracy)."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from lib.errors import ExportError, one_line
from lib.files import atomic_write
from lib.train.restore import preprocessing

PARITY_MAX_ABS_DIFF = 1e-3

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
        info["dynamo_error"] = one_line(e)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, input_names=["input"],
                              output_names=["logits"], opset_version=17,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        info["exporter"] = "torchscript"
        return onnx.load(str(tmp)), info
    except Exception as e:  # noqa: BLE001 - whatever the TorchScript exporter raises: one line
        raise ExportError(f"ONNX export failed with both exporters: dynamo: {info['dynamo_error']}; "
                          f"torchscript: {one_line(e)}") from None
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
    proto.doc_string = (f"{record['config']['model']} fine-tuned by run {record['id']}; "
                        "classes and preprocessing in metadata")
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
