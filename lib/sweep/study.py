"""The study of a sweep folder: one sweep, as first run unless extended, and its trials' points.

The sweep as first run (its YAML and --set values) is kept in the study; an edited file is refused with
what changed, unless ``--extend`` adopts it (grid: its new points are enqueued; random/bayes: new trials
draw from the new space). Grid points are enqueued once and live in the trials' user attributes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna

from lib import yamls
from lib.errors import SweepError
from lib.records import SWEEP_COPY
from lib.run_id import RUN_ID_RULE, valid_run_id
from lib.selection import Selection, rank_by
from lib.sweep import spec as sweep_spec
from lib.sweep.options import Options
from lib.sweep.spec import Sweep


def plain(x: Any) -> Any:
    """JSON's view of a value, so a stored and a fresh definition compare equal."""
    return json.loads(json.dumps(x, default=str))


def definition(sweep: Sweep) -> dict:
    """What the study keeps of its sweep (user attribute ``sweep``)."""
    return plain({"yaml": sweep.raw, "set": sweep.fixed})


def legacy_definition(sweep_dir: Path, sweep: Sweep) -> dict | None:
    """A study made before the sweep was kept in it: its sweep.yaml copy (the --set values unknown)."""
    path = sweep_dir / SWEEP_COPY
    if not path.exists():
        return None
    return plain({"yaml": yamls.safe_load(path.read_text(), str(path), SweepError), "set": sweep.fixed})


def check_extension(sweep: Sweep, stored: dict, opts: Options, study: optuna.Study) -> None:
    """An edited sweep runs only with --extend, and never with another method, metric or goal (the goal the
    study runs in: a study made when a metric could lack one has no goal in its stored sweep)."""
    old = stored.get("yaml") or {}
    if not opts.extend:
        changes = diff({**old, "--set": stored.get("set", {})}, {**sweep.raw, "--set": sweep.fixed})
        raise SweepError(
            f"{sweep.path} is not the sweep this folder runs ({opts.sweep_dir / SWEEP_COPY}): pass --extend to "
            f"adopt it (grid: only its new points run), or give it another --sweep_dir. What changed:\n"
            + "\n".join(f"  {line}" for line in changes))
    old_metric = old.get("metric") or {}
    for what, before, now in (("method", old.get("method"), sweep.method),
                              ("metric", old_metric.get("name", sweep_spec.DEFAULT_METRIC), sweep.metric),
                              ("metric goal", study.direction.name.lower(), sweep.goal)):
        if before != now:
            raise SweepError(f"--extend cannot change the {what} of a study ({before} -> {now}): "
                             f"give the new sweep its own --sweep_dir")


def diff(old: Any, new: Any, prefix: str = "", limit: int = 8) -> list[str]:
    """What changed between two definitions, one line per changed leaf (dotted paths). An empty mapping
    is no leaf: ``--set`` given nothing before and ``epochs=2`` now is the one change ``--set.epochs``."""
    def leaves(x, p):
        if isinstance(x, dict):
            return {k: v for key, sub in x.items() for k, v in leaves(sub, f"{p}.{key}" if p else str(key)).items()}
        return {p: x}

    def shown(leaf, key):
        return json.dumps(leaf[key]) if key in leaf else "(absent)"

    a, b = leaves(plain(old), prefix), leaves(plain(new), prefix)
    lines = [f"{k}: {shown(a, k)} -> {shown(b, k)}" for k in sorted(set(a) | set(b))
             if shown(a, k) != shown(b, k)]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def enqueue_grid(study: optuna.Study, sweep: Sweep, extending: bool) -> None:
    """Each grid point once. A point lives in the trial's user attributes, not as Optuna parameters,
    so an extended grid (a value added to a list) never clashes with the choices Optuna recorded."""
    if "grid_size" in study.user_attrs and not extending:
        return
    known = {json.dumps(point(t), sort_keys=True) for t in counted(study)}
    new = [p for p in sweep.grid() if json.dumps(plain(p), sort_keys=True) not in known]
    for p in new:
        study.enqueue_trial({}, user_attrs={"queued": True, "point": plain(p), "config": {**flat(p), **sweep.fixed}})
    study.set_user_attr("grid_size", study.user_attrs.get("grid_size", 0) + len(new))
    if extending:
        print(f"extended: {len(new)} new grid point(s) enqueued; trials already run are kept")


def new_search_space(study: optuna.Study, sweep: Sweep, stored: dict) -> None:
    """random/bayes --extend: new trials draw from the new space. A parameter whose definition changed
    gets a new name inside Optuna (``lr~1``), so the search starts afresh on it, not on old draws."""
    from sweeps.params import HyperParameterSet

    old = {p.name: p.config for p in HyperParameterSet.from_config((stored.get("yaml") or {}).get("parameters", {}))}
    versions = dict(study.user_attrs.get("versions", {}))
    for p in sweep.params:
        if p.name in old and plain(old[p.name]) != plain(p.config):
            versions[p.name] = versions.get(p.name, 0) + 1
    study.set_user_attr("versions", versions)
    print("extended: new trials draw from the edited search space; trials already run are kept")


# --- a trial's point and parameters ---------------------------------------------------------------------
def flat(point: dict) -> dict:
    """W&B parameter names (nested groups) -> the config keys they set."""
    return {sweep_spec.leaf_name(k): v for k, v in point.items()}


def point(t) -> dict:
    """A trial's point: the grid point it was given, else its Optuna parameters, else what was enqueued."""
    return t.user_attrs.get("point") or dict(t.params) or dict(t.system_attrs.get("fixed_params") or {})


def trial_config(t) -> dict:
    """The config keys a trial ran with (user attribute ``config``, else its point), checked: a study is
    input, and a damaged one is one line, not a traceback further on."""
    config = t.user_attrs.get("config")
    if not config:
        config = flat(point(t)) if isinstance(point(t), dict) else point(t)
    if not isinstance(config, dict) or not isinstance(config.get("recipe") or {}, dict):
        raise SweepError(f"trial {t.number} of the study has a config that is not a mapping of keys "
                         f"({type(config).__name__}): a damaged or edited study")
    return config


def counted(study: optuna.Study) -> list:
    """Trials that stand for work: not a worker's surplus ask, not one superseded by its requeued copy."""
    trials = study.get_trials(deepcopy=False)
    superseded = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return [t for t in trials if not t.user_attrs.get("surplus") and not t.user_attrs.get("requeued")
            and t.number not in superseded]


def kept_size(t) -> float | None:
    """The model size a finished trial's record kept (TrialProcess.keep_record), if any."""
    return ((t.user_attrs.get("run") or {}).get("summary") or {}).get("model_size_mb")


def ranked(trials: list, metric: str, goal: str) -> list:
    """Finished trials with a value, best first by the kit's one rule (lib.selection): the metric, then the
    smaller model (the size the trial's record kept), then the run id."""
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    return rank_by(done, Selection(metric, goal), lambda t: t.value, kept_size,
                   lambda t: t.user_attrs.get("run_id") or f"{t.number:09d}")


def trial_params(trial: optuna.Trial, sweep: Sweep, versions: dict | None = None) -> dict[str, Any]:
    """Parameters of one trial (flat config keys): a grid point as enqueued, or drawn with W&B's own
    distributions."""
    from sweeps.params import HyperParameter as HP

    if trial.user_attrs.get("point") is not None:   # a confirm or a planned seed run keeps its seed over --set
        seeded = trial.user_attrs.get("confirm") or trial.user_attrs.get("plan") or {}
        return {**flat(trial.user_attrs["point"]), **sweep.fixed,
                **({"seed": seeded["seed"]} if "seed" in seeded else {})}
    values = {}
    for p in sweep.params:
        name = f"{p.name}~{versions[p.name]}" if versions and versions.get(p.name) else p.name
        if p.type == HP.CONSTANT:
            value = p.config["value"]
        elif p.type == HP.CATEGORICAL or (p.type == HP.CATEGORICAL_PROB and sweep.method == "grid"):
            value = trial.suggest_categorical(name, p.config["values"])
        else:  # a quantile for the engine, W&B's inverse CDF for the value
            value = sweep_spec.value_of(p, trial.suggest_float(name, 0.0, 1.0))
        values[sweep_spec.leaf_name(p.name)] = value
    return {**values, **sweep.fixed}


def check_run_ids(trials: list) -> None:
    """Every run id a study holds must name a folder inside the runs dir (lib.run_id): a study is
    input, and a damaged or hostile one could name ``../../x`` or ``/abs/path``."""
    for t in trials:
        run_id = t.user_attrs.get("run_id")
        if run_id is not None and not valid_run_id(run_id):
            raise SweepError(bad_run_id(t.number, run_id))


def bad_run_id(number: int, run_id) -> str:
    return (f"trial {number} of the study has the run id {str(run_id)[:80]!r}, which is not a run id "
            f"({RUN_ID_RULE}): a damaged or edited study; refused, it would name a folder outside the runs dir")
