"""``finetune_sweep.py status``: a study's trials as a table (state, run id, what varies, the metric,
duration), the best so far, why trials failed, and the command that continues it. Reads the study
only: from a sweep dir, or from a database URL on a machine that holds none of the runs."""
from __future__ import annotations

import math
import shlex
import time
from pathlib import Path
from typing import Any

from lib import config as config_lib
from lib.cells import terminal_text
from lib.records import SWEEP_COPY
from lib.selection import rank_by, selection
from lib.sweep import plan, storage
from lib.sweep import study as sweep_study
from lib.sweep.recovery import gone
from lib.sweep.study import counted, kept_size


def trial_rows(sweep_dir: Path | str, storage_url: str | None = None,
               study_name: str | None = None) -> tuple[list[dict], dict]:
    """One dict per trial (number, state, run id, config, value, duration, error) and sweep.json."""
    study, meta, opts = storage.read_study(sweep_dir, storage_url, study_name)
    stale = storage.stale_trial_ids(study)
    rows = []
    for t in counted(study):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        config = trial_config(t)
        rows.append({"trial": t.number, "state": "interrupted" if gone(t, stale, opts.host) else t.state.name.lower(),
                     "run_id": t.user_attrs.get("run_id"), "config": config, "value": t.value,
                     "duration_s": round(duration, 1) if duration else None, "error": t.user_attrs.get("error"),
                     "gpu": t.user_attrs.get("gpu"),
                     "model_size_mb": kept_size(t)})
    meta = {**meta, "plan": study.user_attrs.get("plan")}
    return rows, meta


def trial_config(t) -> dict[str, Any]:
    """A trial's parameters as config keys (checked: a damaged study is one line), its recipe spread into
    them: the columns of the table."""
    return config_lib.recipe_as_keys(sweep_study.trial_config(t))


def varying_keys(configs: list[dict]) -> list[str]:
    """The keys whose value differs between trials (as shown): what tells one trial from another."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if len({cell(c.get(k)) for c in configs}) > 1]


def trials_frame(sweep_dir: Path, storage_url: str | None = None, study_name: str | None = None):
    """One row per trial: number, state, run id, parameters, metric, duration, error."""
    import pandas as pd

    rows, meta = trial_rows(sweep_dir, storage_url, study_name)
    gpus = any(r["gpu"] is not None for r in rows)   # a column only where trials ran on chosen GPUs
    return pd.DataFrame([{"trial": r["trial"], "state": r["state"], "run_id": r["run_id"], **r["config"],
                          meta["metric"]: r["value"], "duration_s": r["duration_s"],
                          **({"gpu": r["gpu"]} if gpus else {}), "error": r["error"]}
                         for r in rows]), meta


def cell(value: Any) -> str:
    """As written in the sweep: 15 stays 15 (a table column with gaps would print 15.0). Text from the
    study is shown with its control characters escaped (lib.cells.terminal_text)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return terminal_text(value)


def status_table(sweep_dir: Path, storage_url: str | None = None, study_name: str | None = None) -> str:
    import pandas as pd

    rows, meta = trial_rows(sweep_dir, storage_url, study_name)
    planned = plan.status_lines(meta["plan"], time.time()) if meta.get("plan") else []   # plan, time left
    if not rows:
        return "\n".join(["no trials yet", *planned])
    sel = selection(meta)   # the study's metric and goal, read as every command reads them
    metric = sel.metric
    varying = varying_keys([r["config"] for r in rows])
    gpu = ["gpu"] if any(r["gpu"] is not None for r in rows) else []
    table = pd.DataFrame([[str(r["trial"]), r["state"], cell(r["run_id"] or "-"),
                           *(cell(r["config"].get(k)) for k in varying),
                           f"{r['value']:.4f}" if r["value"] is not None else "-", cell(r["duration_s"]),
                           *(cell(r["gpu"]) for _ in gpu)]
                          for r in rows], columns=["trial", "state", "run_id", *map(cell, varying), cell(metric),
                                                   "duration_s", *gpu])
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines = [table.to_string(index=False), "", "trials: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    done = rank_by([r for r in rows if r["state"] == "complete" and r["value"] is not None], sel,
                   lambda r: r["value"], lambda r: r["model_size_mb"], lambda r: r["run_id"] or f"{r['trial']:09d}")
    if done:   # the kit's one rule (lib.selection): the metric, then the smaller model, then the run id
        best = done[0]
        shown = ", ".join(f"{cell(k)}={cell(best['config'].get(k))}" for k in varying)
        lines.append(f"best: trial {best['trial']} ({cell(best['run_id'])}) {cell(metric)} = {best['value']:.4f}"
                     + (f"  [{shown}]" if shown else ""))
    failed = [r for r in rows if r["state"] == "fail"]
    for r in failed[-3:]:
        error = terminal_text(str(r["error"] or "?")[:200])
        lines.append(f"failed: trial {r['trial']} ({cell(r['run_id'])}): {error}")
    if counts.get("interrupted"):
        lines.append(f"interrupted: {counts['interrupted']} trial(s) lost their runner: `local` (the command "
                     f"below without --retry_failed) requeues and resumes them")
    lines += planned
    if failed or counts.get("interrupted"):
        lines.append(("to retry the failed trials once their cause is fixed: " if failed else "")
                     + _local_command(sweep_dir, meta, storage_url, retry=bool(failed)))
    return "\n".join(lines)


def _local_command(sweep_dir: Path, meta: dict, storage_url: str | None, retry: bool) -> str:
    url = storage.public_url(storage_url or meta.get("storage"), hide=True)
    if "://" in str(sweep_dir):   # status URL: the sweep file and folder are the machine's own business
        sweep_dir, meta = "DIR", {**meta, "sweep_file": "SWEEP.yaml"}
    parts = ["python", "finetune_sweep.py", "local", meta.get("sweep_file") or str(Path(sweep_dir) / SWEEP_COPY),
             "--sweep_dir", str(sweep_dir),
             *(x for k, v in (meta.get("set") or {}).items() for x in ("--set", f"{k}={v}")),
             *(["--storage", url] if url else []), *(["--retry_failed"] if retry else [])]
    return shlex.join(parts)
