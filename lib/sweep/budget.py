"""Time budgets, shared by both engines (``local`` and ``agent`` take ``--time_budget``): durations as
people write them, and the line that says what the budget will do. A command whose budget ran out with
work left exits with lib.records.ExitCode.BUDGET_SPENT."""
from __future__ import annotations

import re
import time

from lib.errors import SweepError


def parse_duration(text: str, option: str = "--time_budget") -> float:
    """``11h30m``, ``45m``, ``90s``, ``1h`` (or plain seconds) -> seconds; a one-line error otherwise."""
    s = str(text).strip().lower()
    s = s + "s" if re.fullmatch(r"\d+(?:\.\d+)?", s) else s
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", s)
    if not s or not m or not any(m.groups()):
        raise SweepError(f"{option} {text!r}: expected a duration such as 11h30m, 45m or 90s")
    h, mi, sec = (float(g) if g else 0.0 for g in m.groups())
    seconds = 3600 * h + 60 * mi + sec
    if seconds <= 0:
        raise SweepError(f"{option} {text!r}: expected a duration above zero, such as 45m")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"


def budget_line(budget_s: float, estimate_s: float | None, source: str | None, at_deadline: str) -> str:
    """The log line that says what the time budget will do, and what one trial is taken to last."""
    ends = time.strftime("%H:%M:%S", time.localtime(time.time() + budget_s))
    how = (f"a trial is taken to last {format_duration(estimate_s)} ({source}): none starts with less left"
           if estimate_s else "no trial length known yet (pass --trial_estimate): trials start until the deadline")
    return f"time budget {format_duration(budget_s)}, until {ends}: {how}; at the deadline {at_deadline}"
