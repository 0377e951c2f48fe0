"""The README's first command, for real: `local sweeps/quickstart.yaml --time_budget` plans the study, says
so, shows the time left in `status` and ends within its budget (the plan's rules: tests/sweep/test_plan.py)."""
from __future__ import annotations

from lib.sweep.planner import ATTR

KIND = "subprocess"   # the real trainer or runner in child processes: in `make test`, not `make check`


def test_a_tiny_budget_is_planned_said_and_kept(animals, tmp_path):
    """`local sweeps/quickstart.yaml --set data_dir=D --time_budget 150s` on 160 real images: the plan is printed
    before the first trial, `status` shows the time left while it runs, and the command ends within the
    budget and a small slack (the interpreter's start, the last trial's checkpoint at the deadline)."""
    import re
    import subprocess
    import sys
    import time

    import pandas  # noqa: F401 - status's table: imported before the clock runs, not while it does

    from lib.sweep import status as sweep_status
    from tests.procs import started

    out = tmp_path / "study"
    cmd = [sys.executable, "finetune_sweep.py", "local", "sweeps/quickstart.yaml", "--set", f"data_dir={animals}",
           "--set", "min_image_side=16", "--time_budget", "150s", "--sweep_dir", str(out)]
    began = time.monotonic()
    with started(cmd, stderr=subprocess.DEVNULL) as proc:
        line = proc.wait_line("plan: ", timeout=150)
        assert re.match(r"plan: \d+ runs? at \d+ px, .*: ~\d+ (min|s)$", line.strip()), line
        proc.wait_line("time budget 2m30s, until ", timeout=30)     # the plan is in the study: status reads it
        live = sweep_status.status_table(out)
        assert "time budget 2m30s: " in live, live
        # the time left, unless making the plan took all of it (a machine at a load of 20 can take minutes)
        assert " left (until " in live or time.monotonic() - began > 150, live
        code = proc.wait(240)
    took = time.monotonic() - began
    assert code in (0, 3), proc.tail()                       # done, or the deadline stopped a trial
    assert took <= 150 + 30, f"{took:.0f} s for a 150 s budget"
    ended = sweep_status.status_table(out)
    assert "the study ended after" in ended
    plan = optuna_plan(out)
    for t in plan["trials"]:
        assert t["image_size"] == plan["size"] <= 128         # 28 px images: at most BiT's 128, smaller to fit


def optuna_plan(sweep_dir):
    from lib.sweep import storage

    study, _, _ = storage.read_study(sweep_dir)
    state = study.user_attrs[ATTR]
    trials = [t.user_attrs["config"] for t in study.get_trials() if ATTR in t.user_attrs]
    return {"size": state["size"], "trials": trials}
