"""Which run is best: the one rule every command that picks or names a run follows (report, export, soup,
``--confirm_top``, ``status``'s "best:", the W&B export path).

- **What ranks the runs**: the metric and goal asked for (``--metric``/``--goal``), else the sweep's own
  (``sweep.json``, the W&B sweep's config, the study in a database), else ``best_val_acc``, maximized.
  A metric asked for without a goal is minimized when its name says loss, else maximized.
- **The order**: the finished runs that have a value of the metric, best value first; among equal values
  the smaller model (``model_size_mb``; a run that recorded none after those that did), then the run id,
  so the same runs always rank the same way, whoever asks.

Standard library and ``lib.records`` only: every layer imports it.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from lib.errors import ReportError
from lib.records import EPOCH_METRICS, RUN_METRICS, State, metric_value

GOALS = ("maximize", "minimize")
DEFAULT_METRIC = "best_val_acc"
T = TypeVar("T")


@dataclass(frozen=True)
class Selection:
    metric: str
    goal: str                      # maximize | minimize

    @property
    def maximize(self) -> bool:
        return self.goal != "minimize"

    def __str__(self) -> str:
        return f"{self.metric} ({self.goal})"


def default_goal(metric: str) -> str:
    """The direction of a metric named without one (``--metric test_loss``)."""
    return "minimize" if "loss" in metric else "maximize"


def sweep_metric(meta: dict | None) -> tuple[str | None, str | None]:
    """The metric and goal a source's own description names ({"metric", "goal"}: sweep.json, a W&B
    sweep's config, a study's sweep), each None where it names none."""
    meta = meta or {}
    metric = meta.get("metric") if isinstance(meta.get("metric"), str) else None
    goal = meta.get("goal") if meta.get("goal") in GOALS else None
    return metric, goal


def selection(meta: dict | None = None, metric: str | None = None, goal: str | None = None,
              runs: Iterable[dict] | None = None) -> Selection:
    """What ranks the runs of a source (see the module docstring). With ``runs``, a metric that no run
    records and no run of the kit can record is a typo: one line naming the close match."""
    own, own_goal = sweep_metric(meta)
    if goal is not None and goal not in GOALS:
        raise ReportError(f"--goal {goal}: expected maximize or minimize")
    chosen = metric or own or DEFAULT_METRIC
    if runs is not None:
        known = recorded_metrics(runs) | RUN_METRICS | set(EPOCH_METRICS) | ({own} if own else set())
        if chosen not in known:
            close = difflib.get_close_matches(chosen, sorted(known), n=1)
            raise ReportError(f"unknown metric {chosen!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                              + f": the runs record {', '.join(sorted(known))}")
    if goal is None:
        goal = own_goal if chosen == own and own_goal else default_goal(chosen)
    return Selection(chosen, goal)


def recorded_metrics(runs: Iterable[dict]) -> set[str]:
    """Numeric keys of the runs' summaries and per-epoch rows: what runs can be ranked by."""
    keys = set()
    for run in runs:
        for row in [run.get("summary") or {}, *(run.get("history") or [])]:
            keys |= {k for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return keys


# --------------------------------------------------------------------------- the order
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def sort_key(sel: Selection, value: float, size: Any, key: Any) -> tuple:
    """The rule itself: best value first, then the smaller model, then the id."""
    size = _number(size)
    return (-value if sel.maximize else value, math.inf if size is None else size, str(key))


def rank_by(items: Iterable[T], sel: Selection, value: Callable[[T], Any], size: Callable[[T], Any],
            key: Callable[[T], Any]) -> list[T]:
    """``items`` that have a value, best first by ``sort_key``: for things that are not run dicts (a
    study's trials, a table's rows)."""
    scored = [(v, item) for item in items if (v := _number(value(item))) is not None]
    return [item for _, item in sorted(scored, key=lambda p: sort_key(sel, p[0], size(p[1]), key(p[1])))]


def value_of(run: dict, sel: Selection) -> float | None:
    """A run's value of the metric: its summary's, else the best of its epochs'."""
    return metric_value(run.get("summary"), run.get("history"), sel.metric, sel.maximize)


def size_of(run: dict) -> float | None:
    return _number((run.get("summary") or {}).get("model_size_mb"))


def rank(runs: Iterable[dict], sel: Selection) -> list[dict]:
    """The finished runs with a value of the metric, best first."""
    return rank_by([r for r in runs if r.get("state") == State.FINISHED], sel, lambda r: value_of(r, sel), size_of,
                   lambda r: r.get("id"))


def best(runs: Iterable[dict], sel: Selection) -> dict | None:
    ranked = rank(runs, sel)
    return ranked[0] if ranked else None
