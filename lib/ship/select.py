"""Which run to ship: the finished runs of a source (a sweep dir, runs dir, run dir or W&B sweep),
best first, within the size limit."""
from __future__ import annotations

from pathlib import Path

from lib.errors import ExportError, ReportError
from lib.records import WEIGHTS_FILE, State
from lib.runs import is_sweep_path, load_local, load_wandb


def candidates(source, metric: str = "best_val_acc", max_size_mb: float | None = None, api=None,
               runs: list[dict] | None = None) -> list[dict]:
    """Finished runs of a sweep dir, runs dir, single run dir or W&B sweep path (or ``runs``, read from
    elsewhere by the caller), best first by ``metric``; ties go to the smaller model. Runs over
    ``max_size_mb`` are left out."""
    if runs is not None:
        runs = [r for r in runs if r.get("state") == State.FINISHED]
    elif is_sweep_path(source):
        runs = [r for r in load_wandb(source, api, history=False) if r.get("state") == State.FINISHED]
    else:
        try:
            runs = [r for r in load_local(source) if r.get("state") == State.FINISHED
                    and (Path(r["dir"]) / WEIGHTS_FILE).exists()]
        except ReportError as e:   # no such folder: the same one line, as export's own error
            raise ExportError(str(e)) from None
    runs = [r for r in runs if (r.get("summary") or {}).get(metric) is not None]
    if max_size_mb is not None:
        runs = [r for r in runs if r["summary"].get("model_size_mb", float("inf")) <= max_size_mb]
    lower_is_better = "loss" in metric
    return sorted(runs, key=lambda r: ((1 if lower_is_better else -1) * r["summary"][metric],
                                       r["summary"].get("model_size_mb", 0.0)))


def check_request(source, out_dir, max_size_mb, max_latency_ms, attributions, runs=None) -> None:
    """Arguments that cannot work, caught before anything is read or written."""
    if runs is None and not is_sweep_path(source) and not Path(source).exists():
        raise ExportError(f"no such folder: {source} (and not a W&B sweep path ENTITY/PROJECT/SWEEP_ID)")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ExportError(f"--out {out_dir} is a file, not a folder")
    for name, value in (("--max_size_mb", max_size_mb), ("--max_latency_ms", max_latency_ms)):
        if value is not None and not value > 0:
            raise ExportError(f"{name} {value}: expected a number > 0")
    if attributions < 0:
        raise ExportError(f"--attributions {attributions}: expected 0 (none) or more test images")
