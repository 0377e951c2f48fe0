"""The recommendation as a result: ``report.json``, what a program (``export``, a CI job) reads of a report.

``recommend(runs, selection)`` is the one way a run is recommended: ``report`` writes it to report.json,
and ``export`` calls it when no current report exists. It holds:

- ``verdict``: ``winner`` and ``runner_up`` (run ids), ``trust`` (HIGH, MEDIUM or LOW), ``p`` (``raw``: the
  exact McNemar p of the winner against the runner-up, ``holm``: Holm-corrected for every configuration
  it was compared with; None where no paired test was possible) and ``text`` (the verdict's lines);
- ``seeds``: the configurations run with several seeds, as mean and std;
- ``recommended``: ``{run_id, reason}``: the winner, except when the test set cannot tell the top two apart
  (trust LOW: "treat as a tie and prefer the cheaper X"), where it is X, the cheaper to ship (the winner
  when both cost the same: "so the winner X stands");
- ``expected_best`` and ``more_trials``: what n more trials of this study would be expected to reach
  (lib.report.expected), None below its minimum of trials;
- ``ranking``: the finished runs best first (``run_id``, ``value``, ``model_size_mb``), the runs it was made of.
"""
from __future__ import annotations

import math
from typing import Any

from lib.files import read_json
from lib.report.expected import study_curve
from lib.report.review import Review, review
from lib.report.table import RunTable, run_table
from lib.selection import Selection, rank, value_of

REPORT_JSON = "report.json"


def assess(runs: list[dict], sel: Selection, latency: dict[str, float] | None = None) -> tuple[RunTable, Review]:
    """The runs as one table, and what a careful reviewer says of them."""
    table = run_table(runs, sel.metric, sel.goal, latency or {})
    return table, review(table)


def plain(value: Any) -> Any:
    """JSON's own types: numpy scalars as numbers, NaN as null."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def result(s: RunTable, r: Review, source: str) -> dict:
    """report.json's content (see the module docstring)."""
    test = r.mcnemar or {}
    fin = s.fin
    return plain({
        "source": source, "metric": s.metric, "goal": s.goal,
        "verdict": {"winner": r.best_id, "runner_up": r.runner_id, "trust": r.trust,
                    "p": {"raw": test.get("p_value"), "holm": test.get("p_holm"),
                          "comparisons": test.get("comparisons")},
                    "text": r.verdict},
        "seeds": [{k: v for k, v in g.items() if k != "_group"} for g in r.seed_groups],
        "recommended": r.recommended,
        **dict(zip(("expected_best", "more_trials"), study_curve(s, r), strict=True)),
        "ranking": [{"run_id": i, "value": v, "model_size_mb": m}
                    for i, v, m in zip(fin["run_id"], fin[s.metric], fin["model_size_mb"], strict=True)],
    })


def recommend(runs: list[dict], sel: Selection, source: str = "") -> dict:
    """report.json's content for ``runs`` ranked by ``sel``, made as ``report`` makes it."""
    return result(*assess(runs, sel), source)


def current(path, runs: list[dict], sel: Selection) -> dict | None:
    """The report.json at ``path`` if it was made of these runs by this metric and goal (their ids and
    values), else None: a report made before the runs changed, or by another metric, is not the answer."""
    try:
        saved = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or (saved.get("metric"), saved.get("goal")) != (sel.metric, sel.goal) \
            or not isinstance(saved.get("recommended"), dict):
        return None
    ranking = [(x.get("run_id"), x.get("value")) for x in saved.get("ranking") or [] if isinstance(x, dict)]
    return saved if ranking == [(r.get("id"), value_of(r, sel)) for r in rank(runs, sel)] else None
