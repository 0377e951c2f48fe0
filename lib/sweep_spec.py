"""A W&B sweep YAML, read with W&B's own semantics so the same file runs on W&B or offline.

Validation is W&B's (the open-source ``sweeps`` package: the schema the W&B server applies), plus
ours: every parameter must be a config key of ``finetune_resnet.py`` and every value valid for it,
the metric must be one a run records, and anything the offline engine cannot honour is rejected
before a trial starts. Sampling uses W&B's own distributions (``HyperParameter.ppf``): the search
engine proposes a point in [0, 1] per parameter and W&B's inverse CDF turns it into the value, so
``log_uniform`` takes exponents, ``log_uniform_values`` takes values, q-variants round, etc.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

with warnings.catch_warnings():  # sweeps warns about its pydantic-1 config keys on import: noise
    warnings.simplefilter("ignore")
    from sweeps import schema_violations_from_proposed_config
    from sweeps.params import HyperParameter, HyperParameterSet

from lib import config as config_lib

RUN_KEYS = {"best_val_acc", "best_epoch", "test_acc", "test_loss", "test_precision_macro", "test_recall_macro",
            "test_f1_macro", "train_val_gap", "trainable_params", "total_params", "model_size_mb", "epochs_run",
            "train_time_s", "train_images_per_s"}
EPOCH_KEYS = {"val_acc", "val_loss", "train_acc", "train_loss", "best_val_acc"}
METHODS = ("grid", "random", "bayes")
MACROS = ("${env}", "${interpreter}", "${program}", "${args}", "${args_no_boolean_flags}", "${args_json}",
          "${args_json_file}", "${args_no_hyphens}")
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
DISCRETE = (HyperParameter.CONSTANT, HyperParameter.CATEGORICAL, HyperParameter.CATEGORICAL_PROB)


class SweepError(ValueError):
    """A sweep file that cannot run; one line, exit code 2, before any trial starts."""


@dataclass
class Sweep:
    path: Path
    raw: dict
    method: str
    metric: str
    goal: str                                   # maximize | minimize
    params: list[HyperParameter]
    program: str
    command: list[str]
    run_cap: int | None
    hyperband: dict | None                      # {min_iter, max_iter, eta} when early_terminate is set
    fixed: dict[str, Any] = field(default_factory=dict)   # --set overrides from the command line

    @property
    def name(self) -> str:
        return self.raw.get("name") or self.path.stem

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point, in W&B's order (parameters sorted by name, values as listed)."""
        names = [p.name for p in self.params]
        choices = [p.config["values"] if "values" in p.config else [p.config["value"]] for p in self.params]
        return [dict(zip(names, combo)) for combo in itertools.product(*choices)]


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


def load(path: str, fixed: dict[str, str] | None = None) -> Sweep:
    p = Path(path)
    if not p.is_file():
        raise SweepError(f"sweep file {path!r} not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"sweep file {path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise SweepError(f"sweep file {path!r} must be a mapping (program, method, metric, parameters)")
    return parse(raw, p, fixed or {})


def parse(raw: dict, path: Path, fixed: dict[str, str]) -> Sweep:
    violations = schema_violations_from_proposed_config(raw)
    if violations:
        hint = ", ".join(_numbers_read_as_text(raw))
        hint = f" (YAML reads {hint} as text: write 1.0e-5, not 1e-5)" if hint else ""
        raise SweepError(f"{path.name}: not a valid W&B sweep: "
                         + "; ".join(" ".join(v.split()) for v in violations) + hint)
    method = raw["method"]
    if method not in METHODS:
        raise SweepError(f"{path.name}: method {method!r} is not supported offline: expected one of {', '.join(METHODS)}")
    metric = raw.get("metric") or {}
    if method == "bayes" and not metric.get("name"):
        raise SweepError(f"{path.name}: method bayes needs metric.name (e.g. best_val_acc)")
    name, goal = metric.get("name", "best_val_acc"), metric.get("goal", "maximize")
    if name not in RUN_KEYS | EPOCH_KEYS:
        raise SweepError(f"{path.name}: metric {name!r} is not recorded by runs: expected one of "
                         f"{', '.join(sorted(RUN_KEYS | EPOCH_KEYS))}")
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
    params = [p for p in params if leaf_name(p.name) not in fixed_values]
    _check_params(params, path, method, ours)
    return Sweep(path=path, raw=raw, method=method, metric=name, goal=goal, params=params,
                 program=program, command=_check_command(raw, path),
                 run_cap=raw.get("run_cap"), hyperband=_check_early_terminate(raw, path), fixed=fixed_values)


def _numbers_read_as_text(x) -> list[str]:
    """Strings that look like numbers: YAML 1.1 (PyYAML, and wandb itself) reads 1e-5 as a string."""
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, list):
        return [s for v in x for s in _numbers_read_as_text(v)]
    try:
        return [x] if isinstance(x, str) and float(x) == float(x) else []  # nan is not a number here
    except ValueError:
        return []



def _check_keys(values: dict, path: Path, where: str) -> dict:
    unknown = [k for k in values if k not in config_lib.FIELDS]
    if unknown:
        raise SweepError(f"{path.name}: {where} {unknown[0]!r} is not a config key of finetune_resnet.py")
    return values


def _check_params(params: list[HyperParameter], path: Path, method: str, ours: bool) -> None:
    for p in params:
        key = leaf_name(p.name)
        if method == "grid" and p.type not in DISCRETE:
            raise SweepError(f"{path.name}: grid search needs `value` or `values` for {p.name!r}, "
                             f"not a distribution")
        if not ours:
            continue
        if key not in config_lib.FIELDS:
            raise SweepError(f"{path.name}: parameter {p.name!r} is not a config key of finetune_resnet.py "
                             f"(see finetune_resnet.py --help)")
        samples = p.config.get("values", [p.config["value"]] if "value" in p.config else
                               [p.ppf(q) for q in (0.01, 0.5, 0.99)])
        for value in samples:
            try:
                config_lib.build({key: _plain(value)}, base=_lenient_base())
            except config_lib.ConfigError as e:
                raise SweepError(f"{path.name}: parameter {p.name!r}: {e}") from None


def _lenient_base() -> config_lib.Config:
    # Single-key checks must not trip over rules that tie keys together (phase1_epochs < epochs).
    return config_lib.Config(epochs=10_000)


def _check_command(raw: dict, path: Path) -> list[str]:
    command = raw.get("command", DEFAULT_COMMAND)
    for token in command:
        for macro in re.findall(r"\$\{[^}]*\}", str(token)):
            if macro not in MACROS and not macro.startswith("${envvar:"):
                raise SweepError(f"{path.name}: command macro {macro} is not supported: expected one of "
                                 f"{', '.join(MACROS)} or ${{envvar:NAME}}")
    return [str(t) for t in command]


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
    """W&B's value of ``param`` at quantile ``u`` (what its random search would draw)."""
    return _plain(param.ppf(min(max(u, 0.0), 1.0 - 1e-12)))


def build_command(sweep: Sweep, params: dict[str, Any], workdir: Path, env: dict[str, str],
                  project_root: Path) -> list[str]:
    """Expand the sweep's ``command`` the way ``wandb agent`` does; an argv list, never a shell."""
    program = sweep.program if Path(sweep.program).is_absolute() or (Path.cwd() / sweep.program).exists() \
        else str(project_root / sweep.program)
    flat = {k: v for k, v in params.items()}
    args = [f"--{k}={v}" for k, v in flat.items()]
    json_file = workdir / "sweep-args.json"
    expansions = {
        "${env}": ["/usr/bin/env"] if os.name != "nt" else [],
        "${interpreter}": [sys.executable],
        "${program}": [program],
        "${args}": args,
        "${args_no_boolean_flags}": [f"--{k}" if v is True else f"--{k}={v}"
                                     for k, v in flat.items() if v is not False],
        "${args_no_hyphens}": [f"{k}={v}" for k, v in flat.items()],
        "${args_json}": [json.dumps(flat)],
        "${args_json_file}": [str(json_file)],
    }
    if any("${args_json_file}" in t for t in sweep.command):
        json_file.write_text(json.dumps(flat))
    argv: list[str] = []
    for token in sweep.command:
        if token in expansions:
            argv += expansions[token]
        else:
            argv.append(re.sub(r"\$\{envvar:([^}]*)\}", lambda m: env.get(m.group(1), ""), token))
    return argv
