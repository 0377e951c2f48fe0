"""When this process started, on the ``time.monotonic()`` clock: a run's ``time_limit_s`` counts from there,
imports included (torch takes seconds to import)."""
from __future__ import annotations

import os
import time
from pathlib import Path


def process_started() -> float:
    """Linux: /proc's start time of this process; elsewhere: now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])   # field 22: starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.monotonic() - max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic()
