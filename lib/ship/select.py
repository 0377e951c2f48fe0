"""Which run to ship: the run the report recommends (lib.report.result: ``report.json``, or the same
recommendation made here when no current report exists), among the finished runs of a SOURCE that have
weights and meet the constraints; or the run asked for (``--run``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lib.errors import ExportError
from lib.records import State
from lib.report.result import REPORT_JSON, current, recommend
from lib.selection import Selection, size_of, value_of
from lib.sources import Source

REPORT_DIR = "report"   # report's default --out inside a sweep dir or runs dir: where export looks for report.json


@dataclass
class Choice:
    run: dict
    reason: str            # why this run: export.json's ``reason``, the model card's "Why this run"
    recommended_by: str    # report.json's path, or how the recommendation was made here


def candidates(source: Source, sel: Selection, max_size_mb: float | None = None,
               passed_over: tuple[str, ...] = ()) -> list[dict]:
    """The finished runs with a value of the metric and weights the source can give, within the size
    limit, less those passed over (over the latency limit). One line when there are none."""
    # what the study keeps first (cheap, and silent about a store it does not read), every record once a run
    # with weights is there to rank
    finished = [r for r in source.runs(full=False) if r.get("state") == State.FINISHED]
    runs = [r for r in finished if value_of(r, sel) is not None and source.has_weights(r)]
    if finished and not runs and source.no_weights:
        raise ExportError(f"{source.name}: none of its {len(finished)} finished run(s) has weights: "
                          f"{source.no_weights}")
    if not runs:
        raise ExportError(f"no finished run with {sel.metric} and weights in {source.name}")
    if max_size_mb is not None:
        within = [r for r in runs if (size_of(r) if size_of(r) is not None else math.inf) <= max_size_mb]
        if not within:   # the smallest size there is: the limit to ask for
            line = f"no finished run with {sel.metric} and weights within {max_size_mb} MB in {source.name}"
            sizes = sorted((size_of(r), str(r.get("id"))) for r in runs if size_of(r) is not None)
            if sizes:
                size, run_id = sizes[0]
                line += f": the smallest is {size:g} MB (run {run_id}; --max_size_mb {size:g} or more exports it)"
            raise ExportError(line)
        runs = within
    full = {r.get("id"): r for r in source.runs(full=True)}
    left = [full.get(r.get("id"), r) for r in runs if r.get("id") not in passed_over]
    if not left:
        raise ExportError(f"no run meets the latency limit: {', '.join(passed_over)} measured over it")
    return left


def asked(source: Source, run_id: str) -> Choice:
    """``--run RUN_ID``: that run, finished and with weights."""
    runs = source.runs()
    run = next((r for r in runs if str(r.get("id")) == run_id), None)
    if run is None:
        ids = ", ".join(str(r.get("id")) for r in runs) or "none"
        raise ExportError(f"--run {run_id}: {source.name} has no such run; its runs: {ids}")
    if run.get("state") != State.FINISHED or not source.has_weights(run):
        raise ExportError(f"--run {run_id}: the run is {run.get('state')}"
                          + ("" if run.get("state") != State.FINISHED else ", with no weights to export"))
    return Choice(run, "asked for with --run", "--run")


def recommended(source: Source, sel: Selection, max_size_mb: float | None = None,
                passed_over: tuple[str, ...] = ()) -> Choice:
    """The recommendation among the candidates: report.json's where it was made of exactly these runs by this
    metric, else made here by the same function (``lib.report.result.recommend``)."""
    runs = candidates(source, sel, max_size_mb, passed_over)
    limits = ([f"within {max_size_mb:g} MB"] if max_size_mb is not None else []) \
        + ([f"{', '.join(passed_over)} over the latency limit"] if passed_over else [])
    saved = Path(source.text) / REPORT_DIR / REPORT_JSON if source.form in ("sweep dir", "runs dir") else None
    report = current(saved, runs, sel) if saved is not None and saved.is_file() and not limits else None
    rec = (report or recommend(runs, sel, source.name))["recommended"]
    run = next(r for r in runs if r.get("id") == rec["run_id"])
    if report:
        how = str(saved)
    elif limits:
        how = f"made by export among the runs that meet the limits ({'; '.join(limits)})"
    else:
        how = "made by export: " + (f"{saved} was made of other runs or by another metric"
                                    if saved is not None and saved.is_file() else "no report.json")
    return Choice(run, rec["reason"] + (f" (among the runs {'; '.join(limits)})" if limits else ""), how)


def check_request(out_dir, max_size_mb, max_latency_ms, attributions) -> None:
    """Arguments that cannot work, caught before anything is read or written."""
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ExportError(f"--out {out_dir} is a file, not a folder")
    for name, value in (("--max_size_mb", max_size_mb), ("--max_latency_ms", max_latency_ms)):
        if value is not None and not value > 0:
            raise ExportError(f"{name} {value}: expected a number > 0")
    if attributions < 0:
        raise ExportError(f"--attributions {attributions}: expected 0 (none) or more test images")


def check_data_dir(source: Source, data_dir) -> None:
    """A run from W&B or a database brings a config.data_dir that is whatever was written there: it must not
    choose which local files are read (for parity) and drawn (attribution grids, which go back to W&B)."""
    if source.form in ("W&B sweep", "database") and not data_dir:
        raise ExportError(f"a run from {'W&B' if source.form == 'W&B sweep' else 'a study database'} brings its own "
                          "data_dir, which decides nothing here: pass --data_dir, the folder of its images on this "
                          "machine")
