"""A W&B sweep YAML, read with W&B's own semantics so the same file runs on W&B or offline.

Validation is W&B's (the open-source ``sweeps`` package: the schema the W&B server applies), plus
ours: every parameter must be a config key of ``finetune_resnet.py`` and every value valid for it,
every grid point (and at least some draws of a random/bayes search) a valid run, the metric one a run
records, and anything the offline engine cannot honour is rejected before a trial starts. Sampling
uses W&B's own distributions (``HyperParameter.ppf``): the search engine proposes a point in [0, 1]
per parameter and W&B's inverse CDF turns it into the value, so ``log_uniform`` takes exponents,
``log_uniform_values`` takes values, q-variants round, etc. A grid is W&B's grid (``int_uniform`` and
``q_uniform`` ranges enumerated as ``sweeps.grid_search`` does, repeated values run once).

A trial's parameters are in W&B's nested form (``HyperParameterSet.to_config``, :meth:`Sweep.run_args`):
a nested ``parameters:`` group reaches the program as W&B hands it over (``--optim={'lr': 0.01}``); the
command line and parameters file are made from them by lib.sweep.trial, with ``wandb agent``'s own
functions. The engine and ``status`` work on the flat form (leaf config keys).
"""
from __future__ import annotations

import itertools
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

with warnings.catch_warnings():  # sweeps warns about its pydantic-1 config keys on import: noise
    warnings.simplefilter("ignore")
    from sweeps.grid_search import yaml_hash
    from sweeps.params import HyperParameter, HyperParameterSet

from lib import config as config_lib
from lib import yamls
from lib.errors import SweepError
from lib.records import EPOCH_METRICS, GOALS, METRIC_GOALS, RUN_METRICS, wandb_default_goal
from lib.sweep import wandb_schema

METHODS = ("grid", "random", "bayes")
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
DISCRETE = (HyperParameter.CONSTANT, HyperParameter.CATEGORICAL)
# The macros wandb_agent.Agent._command_run adds to create_sweep_command_args' formats.
AGENT_MACROS = ("env", "interpreter", "program", "args_json_file")
HYDRA_MACROS = ("args_append_hydra", "args_override_hydra")   # +key=value: for Hydra programs
ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")               # wandb's SWEEP_COMMAND_ENV_VAR_REGEX
DRAWS_CHECKED = 256            # random/bayes: draws tried before the first trial (seeded: same every time)
DEFAULT_METRIC = "best_val_acc"   # what a sweep without a metric ranks by
# The sweep runner gives each trial these (its own run id, its folder under the sweep dir, the sweep as
# its group): a parameter or --set value would be overridden offline, and one run_id would make every
# trial of a W&B sweep resume the same run.
RUNNER_KEYS = ("run_id", "runs_dir", "group")


@dataclass
class Sweep:
    path: Path
    raw: dict
    method: str
    metric: str
    goal: str                                   # maximize | minimize
    params: list[HyperParameter]                # W&B's order; --set keys are constants here
    program: str
    command: list[str]
    run_cap: int | None
    hyperband: dict | None                      # {min_iter, max_iter, eta} when early_terminate is set
    fixed: dict[str, Any] = field(default_factory=dict)   # --set overrides from the command line
    ours: bool = True                           # the program is finetune_resnet.py (its config keys apply)

    @property
    def name(self) -> str:
        return self.raw.get("name") or self.path.stem

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point once, in W&B's order (parameters sorted by name, values as listed; a value
        listed twice runs once, as ``sweeps.grid_search`` dedupes by its yaml hash)."""
        names = [p.name for p in self.params]
        choices = [p.config["values"] if "values" in p.config else [p.config["value"]] for p in self.params]
        seen, points = set(), []
        for combo in itertools.product(*choices):
            key = tuple(yaml_hash(v) for v in combo)
            if key not in seen:
                seen.add(key)
                points.append(dict(zip(names, combo, strict=True)))
        return points

    def flat(self, point: dict[str, Any]) -> dict[str, Any]:
        """A point keyed by W&B parameter names -> leaf config keys (what our checks and status use)."""
        return {leaf_name(k): v for k, v in point.items()}

    def run_args(self, params: dict[str, Any]) -> dict[str, dict]:
        """One trial's flat parameters in W&B's form, as the agent receives them (``command["args"]``):
        ``{key: {"value": v}}`` with nested groups rebuilt by W&B's own ``HyperParameterSet.to_config``."""
        names = {leaf_name(p.name): p.name for p in self.params}
        return HyperParameterSet([HyperParameter(names.get(k, k), {"value": _plain(v)})
                                  for k, v in params.items()]).to_config()


def _plain(value: Any) -> Any:
    """numpy scalars from W&B's samplers -> plain Python (JSON, YAML and our config want those)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def leaf_name(name: str) -> str:
    """Nested parameter groups only organise: ``optim.lr`` sets the flat config key ``lr``."""
    return name.split(HyperParameterSet.NESTING_DELIMITER)[-1]


def shown(name: str) -> str:
    """``optim.lr`` for a nested parameter (W&B's internal delimiter is unreadable)."""
    return name.replace(HyperParameterSet.NESTING_DELIMITER, ".")


def load(path: str, fixed: dict[str, str] | None = None, repeats: int = 1) -> Sweep:
    p = Path(path)
    if not p.is_file():
        raise SweepError(f"sweep file {path!r} not found")
    raw = yamls.read_file(p, f"sweep file {path!r}", SweepError)
    if not isinstance(raw, dict):
        raise SweepError(f"sweep file {path!r} must be a mapping (program, method, metric, parameters)")
    fixed = dict(fixed or {})
    return parse(with_repeats(raw, repeats, fixed, p.name), p, fixed)


def with_repeats(raw: dict, repeats: int, fixed: dict, name: str) -> dict:
    """``--repeats K``: every grid point with K seeds, written as what it is on W&B, a ``seed`` parameter
    with K values starting at the file's (or --set's) seed, so the stored sweep says how it was run."""
    if repeats == 1:
        return raw
    if repeats < 1 or raw.get("method") != "grid":
        raise SweepError(f"{name}: --repeats {repeats} needs a grid sweep and K >= 1 (a random or bayes "
                         "study repeats nothing: add a `seed` parameter instead)")
    params = dict(raw.get("parameters") or {})
    seed = params.get("seed", {"value": fixed.pop("seed", 42)})
    if set(seed) != {"value"}:
        raise SweepError(f"{name}: --repeats cannot be combined with a swept `seed` parameter")
    start = int(seed["value"])
    params["seed"] = {"values": list(range(start, start + repeats))}
    return {**raw, "parameters": params}


def parse(raw: dict, path: Path, fixed: dict[str, str]) -> Sweep:
    wandb_schema.check(raw, path)
    method = raw["method"]
    if method not in METHODS:
        raise SweepError(f"{path.name}: method {method!r} is not supported offline: "
                         f"expected one of {', '.join(METHODS)}")
    name, goal = _check_metric(raw, path)
    try:
        params = list(HyperParameterSet.from_config(raw.get("parameters", {})))
    except Exception as e:  # sweeps raises assertion/validation errors of several kinds
        raise SweepError(f"{path.name}: bad parameters: {str(e).splitlines()[0]}") from None
    program = raw.get("program", "finetune_resnet.py")
    ours = Path(program).name == "finetune_resnet.py"  # another program has keys of its own
    if ours:
        _check_keys(fixed, path, "--set")
    fixed_values = {k: getattr(config_lib.build({k: v}, base=_lenient_base()), k) if ours else v
                    for k, v in fixed.items()}
    if method == "grid":
        params = [_grid_param(p, path) for p in params]
    _check_runner_keys(params, fixed, path)
    params = _with_fixed(params, fixed_values, path)
    _check_params(params, path, ours, set(fixed))
    if ours:
        _check_recipes(params, path, fixed_values)
    sweep = Sweep(path=path, raw=raw, method=method, metric=name, goal=goal, params=params,
                  program=program, command=_check_command(raw, path, ours), run_cap=raw.get("run_cap"),
                  hyperband=_check_early_terminate(raw, path), fixed=fixed_values, ours=ours)
    if ours:
        _check_points(sweep)
    return sweep


def _check_metric(raw: dict, path: Path) -> tuple[str, str]:
    """The metric and its goal. A metric needs a goal: W&B's default (minimize) would search a sweep of
    accuracies for the worst run, while a goal the metric has no sense in (minimize an accuracy) is a slip.
    Without a metric (grid, random: W&B optimises nothing) the runs rank by DEFAULT_METRIC."""
    metric = raw.get("metric")
    if not metric:
        if raw["method"] == "bayes" or raw.get("early_terminate"):
            why = "method bayes" if raw["method"] == "bayes" else "early_terminate"
            raise SweepError(f"{path.name}: {why} needs a metric to optimise, e.g. metric: "
                             f"{{name: {DEFAULT_METRIC}, goal: {METRIC_GOALS[DEFAULT_METRIC]}}}")
        return DEFAULT_METRIC, METRIC_GOALS[DEFAULT_METRIC]
    name, goal = metric["name"], metric.get("goal")   # the schema has checked: a name, a goal of GOALS or none
    if name not in RUN_METRICS | set(EPOCH_METRICS):
        raise SweepError(f"{path.name}: metric {name!r} is not recorded by runs: expected one of "
                         f"{', '.join(sorted(RUN_METRICS | set(EPOCH_METRICS)))}")
    better = METRIC_GOALS.get(name)
    if goal is None:
        suggested = better or GOALS[0]
        raise SweepError(f"{path.name}: metric {name} has no goal: W&B would {wandb_default_goal()} it; add goal: "
                         f"{suggested} (or {next(g for g in GOALS if g != suggested)})")
    if better and goal != better:
        raise SweepError(f"{path.name}: metric {name} with goal {goal} would search for the worst runs: "
                         f"{'higher' if better == 'maximize' else 'lower'} is better (goal: {better})")
    return name, goal


def _grid_param(p: HyperParameter, path: Path) -> HyperParameter:
    """W&B's grid (``sweeps.grid_search``): int_uniform and q_uniform ranges become their values; any
    other distribution, and ``probabilities``, are refused there, so here too."""
    if p.type in DISCRETE:
        return p
    if p.type == HyperParameter.INT_UNIFORM:
        values = list(range(p.config["min"], p.config["max"] + 1))
    elif p.type == HyperParameter.Q_UNIFORM:
        values = np.arange(p.config["min"], p.config["max"], p.config["q"]).tolist()
    else:
        kind = "probabilities" if p.type == HyperParameter.CATEGORICAL_PROB else \
            f"a distribution ({p.config.get('distribution', 'uniform')})"
        raise SweepError(f"{path.name}: grid search needs `value` or `values` (or an int_uniform / q_uniform "
                         f"range) for {shown(p.name)!r}, not {kind}")
    return HyperParameter(p.name, {"distribution": "categorical", "values": values})


def _with_fixed(params: list[HyperParameter], fixed: dict[str, Any], path: Path) -> list[HyperParameter]:
    """--set KEY=VALUE makes KEY a constant where the file has it (its nesting kept, as if the file said
    ``value: VALUE``), or a top-level constant. A config key set by two parameters is ambiguous."""
    leaves = [leaf_name(p.name) for p in params]
    twice = sorted({k for k in leaves if leaves.count(k) > 1})
    if twice:
        where = " and ".join(shown(p.name) for p in params if leaf_name(p.name) == twice[0])
        raise SweepError(f"{path.name}: config key {twice[0]!r} is set by two parameters ({where}): "
                         "nested groups share one flat config")
    out = [HyperParameter(p.name, {"value": fixed[leaf_name(p.name)]}) if leaf_name(p.name) in fixed else p
           for p in params]
    return out + [HyperParameter(k, {"value": v}) for k, v in fixed.items() if k not in leaves]


def _not_a_key(path: Path, what: str, key: str) -> SweepError:
    """One line: ``what`` is not a config key, with the key it most likely meant (lib.config.suggest)."""
    hint = config_lib.suggest(key)
    return SweepError(f"{path.name}: {what} is not a config key of finetune_resnet.py"
                      + (f": did you mean {hint!r}?" if hint else "") + " (finetune_resnet.py --help lists every key)")


def _check_keys(values: dict, path: Path, where: str) -> dict:
    unknown = [k for k in values if k not in config_lib.FIELDS]
    if unknown:
        raise _not_a_key(path, f"{where} {unknown[0]!r}", unknown[0])
    return values


def _check_runner_keys(params: list[HyperParameter], fixed: dict, path: Path) -> None:
    for key in RUNNER_KEYS:
        where = [f"parameter {shown(p.name)!r}" for p in params if leaf_name(p.name) == key] + \
            (["--set " + key] if key in fixed else [])
        if where:
            raise SweepError(f"{path.name}: {where[0]}: the sweep runner gives each trial its own "
                             f"{', '.join(RUNNER_KEYS)} (one run_id would make every trial resume the same run): "
                             "remove it")


def _check_params(params: list[HyperParameter], path: Path, ours: bool, fixed: set[str]) -> None:
    if not ours:
        return
    for p in params:
        key = leaf_name(p.name)
        if key not in config_lib.FIELDS:
            raise _not_a_key(path, f"parameter {shown(p.name)!r}", key)
        listed = p.config.get("values", [p.config["value"]] if "value" in p.config else None)
        for value in listed if listed is not None and key not in fixed else []:   # --set values are typed already
            text = _text_for(key, value)
            if text:
                raise SweepError(f"{path.name}: parameter {shown(p.name)!r}: {text}")
        for value in listed if listed is not None else [p.ppf(q) for q in (0.01, 0.5, 0.99)]:
            try:
                config_lib.build({key: _plain(value)}, base=_lenient_base())
            except config_lib.ConfigError as e:
                raise SweepError(f"{path.name}: parameter {shown(p.name)!r}: {e}") from None


def _text_for(key: str, value: Any) -> str | None:
    """A number or boolean the YAML holds as text: the run would convert it, but W&B logs it as a string
    (its panels cannot plot it). YAML 1.1 (PyYAML, and wandb itself) reads 1e-5 as text, and quotes make any
    value text. A recipe's keys are checked as if each were set on its own."""
    want = config_lib.TYPES[key]
    if want is dict and isinstance(value, dict):
        return next((t for k, v in value.items() if k in config_lib.TYPES and (t := _text_for(k, v))), None)
    if want not in (int, float, bool) or not isinstance(value, str) or not _reads_as(key, value):
        return None   # other text is the config's to judge (lr: auto)
    exponent = re.fullmatch(r"([+-]?\d+)([eE][+-]?\d+)", value.strip())
    hint = "write true or false, unquoted" if want is bool else \
        f"write {exponent[1]}.0{exponent[2]}: YAML reads {value} as text" if exponent else "write it unquoted"
    return f"{key}: {value!r} is text in YAML, not a {want.__name__} ({hint})"


def _check_recipes(params: list[HyperParameter], path: Path, fixed: dict) -> None:
    """A key both in a recipe and a parameter of its own: the run's explicit key would silently win over
    the recipe (as on W&B, which passes both), so say so instead. --set is not the file's: it wins."""
    own = {leaf_name(p.name) for p in params} - set(fixed)
    for p in params:
        if leaf_name(p.name) != "recipe":
            continue
        for recipe in p.config.get("values", [p.config.get("value")]):
            both = sorted(set(recipe or {}) & own) if isinstance(recipe, dict) else []
            if both:
                raise SweepError(f"{path.name}: {both[0]!r} is set both in a recipe and as a parameter, and the "
                                 "parameter would win in every run: set it in one place")


def _reads_as(key: str, text: str) -> bool:
    """Whether the config reads ``text`` as a number (or truth value): not text it takes as it is (lr: auto)."""
    try:
        return not isinstance(getattr(config_lib.build({key: text}, base=_lenient_base()), key), str)
    except config_lib.ConfigError:   # not valid at all: _check_params says why
        return False


def _lenient_base() -> config_lib.Config:
    # Single-key checks must not trip over rules that tie keys together (phase1_epochs < epochs).
    return config_lib.Config(epochs=10_000)


def _check_points(sweep: Sweep) -> None:
    """Whole runs, not single keys: every grid point must be a valid config (a bad one is named before
    the first trial); a random/bayes search must have valid draws (all of DRAWS_CHECKED seeded draws
    invalid: nothing could ever run). Rules that tie keys together (phase1_epochs < epochs) live here."""
    if sweep.method == "grid":
        points = sweep.grid()
        for i, point in enumerate(points, 1):
            error = _invalid(sweep.flat(point))
            if error:
                raise SweepError(f"{sweep.path.name}: grid point {i} of {len(points)} "
                                 f"({_describe(sweep, point)}) is not a valid run: {error}")
        return
    rng = np.random.default_rng(0)
    draws = [{p.name: value_of(p, rng.uniform()) for p in sweep.params} for _ in range(DRAWS_CHECKED)]
    errors = [e for e in (_invalid(sweep.flat(d)) for d in draws) if e]
    if len(errors) == len(draws):
        raise SweepError(f"{sweep.path.name}: no parameter draw is a valid run ({len(draws)} tried; "
                         f"e.g. {_describe(sweep, draws[0])}): {errors[0]}")
    if errors:
        print(f"warning: {sweep.path.name}: {len(errors)} of {len(draws)} sampled draws are not valid runs "
              f"(e.g. {errors[0]}): those trials will fail", file=sys.stderr)


def _invalid(values: dict[str, Any]) -> str | None:
    try:
        config_lib.build({k: _plain(v) for k, v in values.items()})
    except config_lib.ConfigError as e:
        return str(e)
    return None


def _describe(sweep: Sweep, point: dict[str, Any]) -> str:
    """The varying part of a point (what tells it from the others), ``key=value, ...``."""
    varying = {p.name for p in sweep.params if p.type != HyperParameter.CONSTANT}
    return ", ".join(f"{shown(k)}={_plain(v)!r}" for k, v in point.items() if k in varying) or "the constants"


def _check_command(raw: dict, path: Path, ours: bool) -> list[str]:
    """The macros `wandb agent` expands: whole elements only (``${envvar:NAME}`` also inside one).
    Anything it would drop silently or pass on literally is refused here, naming it."""
    command = [str(t) for t in raw.get("command") or DEFAULT_COMMAND]
    known = agent_macros()
    for token in command:
        if token.startswith("${") and token.endswith("}") and not ENVVAR.fullmatch(token):
            macro = token[2:-1]
            if macro.startswith("envvar:"):
                raise SweepError(f"{path.name}: command macro {token}: W&B reads only names of A-Z, 0-9 and _")
            if macro not in known:
                raise SweepError(f"{path.name}: command macro {token} is not one `wandb agent` expands: "
                                 f"expected one of {', '.join('${' + m + '}' for m in known)} or ${{envvar:NAME}}")
            if ours and macro in HYDRA_MACROS:
                raise SweepError(f"{path.name}: command macro {token} passes Hydra overrides (+key=value), "
                                 "which finetune_resnet.py does not read: use ${args}")
            continue
        literal = [m for m in re.findall(r"\$\{[^}]*\}", token) if not ENVVAR.fullmatch(m)]
        if literal:
            raise SweepError(f"{path.name}: command element {token!r}: `wandb agent` expands {literal[0]} only "
                             "as a whole element (inside one it would be passed on literally)")
    return command


def agent_macros() -> list[str]:
    """Every macro ``wandb agent`` expands: the list-valued formats of ``create_sweep_command_args``
    (``${args}``, ``${args_no_equals}``, ...) and the four the agent adds itself."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    formats = create_sweep_command_args({"args": {}})
    return sorted({k for k, v in formats.items() if isinstance(v, list)} | set(AGENT_MACROS))


def _check_early_terminate(raw: dict, path: Path) -> dict | None:
    et = raw.get("early_terminate")
    if not et:
        return None
    if et.get("type") != "hyperband":
        raise SweepError(f"{path.name}: early_terminate type {et.get('type')!r} is not supported: expected hyperband")
    eta = int(et.get("eta", 3))
    if "min_iter" in et:
        min_iter = int(et["min_iter"])
        max_iter = int(et.get("max_iter", min_iter * eta ** int(et.get("s", 3))))
    elif "max_iter" in et:
        max_iter = int(et["max_iter"])
        min_iter = max(1, round(max_iter / eta ** int(et.get("s", 3))))
    else:
        raise SweepError(f"{path.name}: early_terminate hyperband needs min_iter, or max_iter and s")
    return {"min_iter": min_iter, "max_iter": max_iter, "eta": eta}


def value_of(param: HyperParameter, u: float) -> Any:
    """W&B's value of ``param`` at quantile ``u`` (what its random search would draw). The open ends are
    kept off: W&B draws from random.uniform, and at exactly 0 its int_uniform gives min - 1, normal -inf."""
    return _plain(param.ppf(min(max(u, 1e-12), 1.0 - 1e-12)))


# --- the machine the study runs on ------------------------------------------------------------------
def check_here(sweep: Sweep) -> None:
    """Before the first offline trial: what every trial of the study needs from this machine, by the
    trainer's own checks (a study that cannot run says so once, not once per failed trial). Every
    ``data_dir`` it can take exists (relative paths from here, where the trials run) and holds what a run
    accepts (lib.train.data.discover: two class folders of images; files listed, nothing decoded); every
    model is known to timm and has its ``weights`` obtainable here, offline included
    (lib.train.models.weights_unavailable)."""
    if not sweep.ours:
        return
    from lib.errors import DataError
    from lib.train import data, models  # torch and timm: the trials need them anyway

    for row in _combinations(sweep, ("data_dir", "val_fraction", "test_fraction", "seed")):
        if not Path(row["data_dir"]).expanduser().is_dir():
            raise SweepError(f"{sweep.path.name}: data_dir={row['data_dir']!r} does not exist here "
                             f"({Path.cwd()}): point the study at your images with --set data_dir=/path/to/images")
        try:
            data.discover(str(Path(row["data_dir"]).expanduser()), row["val_fraction"], row["test_fraction"],
                          row["seed"])
        except DataError as e:
            raise SweepError(f"{sweep.path.name}: no trial can start: {e}; point the study at your images "
                             "with --set data_dir=/path/to/images") from None
    for row in _combinations(sweep, ("model", "weights", "cache_dir")):
        cfg = config_lib.build(row, base=_lenient_base())
        problem = models.unknown_model(cfg.model)
        if problem:
            raise SweepError(f"{sweep.path.name}: {problem}")
        reason = models.weights_unavailable(cfg)
        if reason:
            raise SweepError(f"{sweep.path.name}: trials with model={cfg.model!r}, weights={cfg.weights!r} cannot "
                             f"start: {reason} (for every trial: --set weights=...)")


def _combinations(sweep: Sweep, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The distinct values the trials can give ``keys`` together (set directly, by a ``recipe``, or left
    at the default): the grid's own points, else every combination of the values listed for them."""
    if sweep.method == "grid":
        rows = [sweep.flat(point) for point in sweep.grid()]
    else:
        listed = {leaf_name(p.name): p.config.get("values", [p.config.get("value")]) for p in sweep.params
                  if leaf_name(p.name) in (*keys, "recipe") and ("values" in p.config or "value" in p.config)}
        rows = [dict(zip(listed, combo, strict=True)) for combo in itertools.product(*listed.values())]
    out = []
    for row in rows:
        try:
            cfg = config_lib.build({k: row[k] for k in (*keys, "recipe") if k in row}, base=_lenient_base())
        except config_lib.ConfigError:   # an invalid draw: reported by _check_points, it starts nothing
            continue
        values = {k: getattr(cfg, k) for k in keys}
        if values not in out:
            out.append(values)
    return out
