"""``--confirm_top N --repeats K``: a grid runs each configuration with one seed, then its N best
configurations again with seeds seed+1 .. seed+K-1, in the same study."""
from __future__ import annotations

import json

import optuna
from optuna.trial import TrialState

from lib.errors import SweepError
from lib.sweep import spec as sweep_spec
from lib.sweep.options import Options
from lib.sweep.spec import Sweep
from lib.sweep.study import counted, flat, plain, point, ranked


def check_confirm(sweep: Sweep, opts: Options) -> None:
    """Refused before anything starts when that cannot be what runs."""
    if not opts.confirm_top:
        return
    asked = f"--confirm_top {opts.confirm_top} --repeats {opts.repeats}"
    if opts.confirm_top < 1 or opts.repeats < 2:
        raise SweepError(f"{asked}: expected N >= 1 configurations and K >= 2 seeds for each "
                         "(e.g. --confirm_top 2 --repeats 3)")
    if sweep.method != "grid":
        raise SweepError(f"{asked} needs a grid sweep (a random or bayes study has no last trial to wait for)")
    if any(sweep_spec.leaf_name(p.name) == "seed" and "values" in p.config for p in sweep.params):
        raise SweepError(f"{asked} cannot be combined with a swept `seed` parameter")


def grid_trials(study: optuna.Study) -> list:
    """The grid's own trials (not the confirm runs)."""
    return [t for t in counted(study) if "point" in t.user_attrs and "confirm" not in t.user_attrs]


def grid_left(study: optuna.Study) -> int:
    return sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in grid_trials(study))


def enqueue_confirm(study: optuna.Study, sweep: Sweep, opts: Options) -> None:
    """Once the grid is done: its ``confirm_top`` best configurations by the sweep metric (their first
    run, so the choice never moves) again with seeds seed+1 .. seed+repeats-1, enqueued as points of the
    same study (status and report show them with the first run; a point already there is not added)."""
    left = grid_left(study)
    if left:
        print(f"confirm: once the grid's {left} remaining trial(s) are done, its top {opts.confirm_top} "
              f"configuration(s) by {sweep.metric} run with {opts.repeats} seeds")
        return
    top = ranked(grid_trials(study), sweep.metric, sweep.goal)[:opts.confirm_top]
    known = {json.dumps(point(t), sort_keys=True) for t in counted(study)}
    name = next((p.name for p in sweep.params if sweep_spec.leaf_name(p.name) == "seed"), "seed")
    added = 0
    for t in top:
        first = int(flat(point(t)).get("seed", sweep.fixed.get("seed", _default_seed())))
        for seed in range(first + 1, first + opts.repeats):
            p = plain({**point(t), name: seed})
            if json.dumps(p, sort_keys=True) in known:
                continue
            study.enqueue_trial({}, user_attrs={"queued": True, "point": p, "confirm": {"of": t.number, "seed": seed},
                                                "config": {**flat(p), **sweep.fixed, "seed": seed}})
            added += 1
    study.set_user_attr("confirm_size", study.user_attrs.get("confirm_size", 0) + added)
    trials = ", ".join(str(t.number) for t in top) or "none finished"
    print(f"confirm: top {opts.confirm_top} configuration(s) by {sweep.metric} (trials {trials}) with "
          f"{opts.repeats} seeds: {added} trial(s) enqueued" + ("" if added else ", all already in the study"))


def _default_seed() -> int:
    from lib.config import Config

    return Config().seed
