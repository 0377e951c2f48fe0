"""Exporting from a W&B sweep: the chosen run's model artifact is fetched by its source (lib.runs); the
export is logged back here.

Every finished run logs ``model-<run_id>:best`` (type ``model``): its ``model.safetensors`` and its
final ``run.json`` (config, classes, preprocessing, split) - all ``lib.ship.export`` needs besides the
images. After the export, a ``job_type=export`` run in the sweep's project holds the result: the
ONNX files, model card and export.json as an ``export-<run_id>`` model artifact (linked to the
source artifact when online, for W&B's lineage graph), the parity/accuracy/latency figures in its
summary, and the attribution grids as ``wandb.Image``.
"""
from __future__ import annotations

from pathlib import Path

from lib.runs import artifact_name
from lib.ship import ATTR_DIR, CARD_FILE, EXPORT_FILE, INT8_FILE, ONNX_FILE


def _summary(result: dict) -> dict:
    keys = ("parity_max_abs_diff", "parity_top1_agreement", "pytorch_test_acc", "fp32_test_acc", "int8_test_acc",
            "onnx_file_bytes")
    out = {k: result[k] for k in keys if result.get(k) is not None}
    out.update({f"latency_ms_{k}": v for k, v in (result.get("latency_ms_per_image") or {}).items()})
    return out


def log_export(sweep_path: str, run_id: str, out: Path, result: dict) -> str:
    """Log an export to W&B; returns the export run's id."""
    import os

    from lib.train.tracking import prepare_environment

    prepare_environment(os.environ)   # offline when there is no API key (before wandb is imported)
    import wandb

    entity, project, sweep_id = sweep_path.split("/")
    run = wandb.init(entity=entity, project=project, job_type="export", name=f"export-{run_id}",
                     mode=os.environ["WANDB_MODE"],   # W&B's process-wide setup may predate the variable
                     group=f"sweep-{sweep_id}", dir=str(out), reinit="finish_previous",
                     config={"source_run": run_id, "sweep": sweep_path,
                             "source_artifact": artifact_name(sweep_path, run_id)})
    try:
        if not (run.offline or run.disabled):   # lineage needs the server; offline the config names the source
            run.use_artifact(artifact_name(sweep_path, run_id))
        run.summary.update(_summary(result))
        grids = sorted((out / ATTR_DIR).glob("*.png"))
        if grids:
            run.log({f"attributions/{p.stem}": wandb.Image(str(p), caption=p.stem) for p in grids})
        art = wandb.Artifact(f"export-{run_id}", type="model", metadata=_summary(result))
        for name in (ONNX_FILE, INT8_FILE, CARD_FILE, EXPORT_FILE):
            if (out / name).is_file():
                art.add_file(str(out / name))
        run.log_artifact(art, aliases=["latest"])
        return run.id
    finally:
        run.finish()
