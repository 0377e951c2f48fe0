"""W&B's sweep schema (the open-source ``sweeps`` package: what the W&B server applies), its violations
about parameters said the way a person fixes them: ``parameters.lr.values must be a list (got 5)``
instead of jsonschema's ``{'values': 5} is not valid under any of the given schemas``.

A parameter may take one of many shapes (``value``, ``values``, ``min``/``max``, a ``distribution``, a
nested group), so jsonschema can only say that none fits. Which shape was meant is read from the keys
the parameter has; the parameter is then checked against that shape alone, with the schema's own
definition, and its first problem is named with the parameter's path.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match

from lib.errors import SweepError
from lib.spelling import closest

with warnings.catch_warnings():  # sweeps warns about its pydantic-1 config keys on import: noise
    warnings.simplefilter("ignore")
    from sweeps import schema_violations_from_proposed_config
    from sweeps.config.schema import format_checker, sweep_config_jsonschema
    from sweeps.params import PARAM_DEPRECATION_MAP

DEFINITIONS = sweep_config_jsonschema["definitions"]
SHAPES = [ref["$ref"].split("/")[-1] for ref in DEFINITIONS["parameter"]["anyOf"]]
KINDS = {"array": "a list", "number": "a number", "integer": "an integer", "object": "a mapping",
         "string": "a string", "boolean": "true or false"}
FORMATS = {"float": "a number with a decimal point", "integer": "an integer"}


def _distributions(shape: str) -> list[str]:
    """The ``distribution`` names a parameter shape declares (``param_uniform`` nests its variants)."""
    schema = DEFINITIONS[shape]
    variants = schema.get("anyOf", [schema])
    return [d for v in variants for d in v.get("properties", {}).get("distribution", {}).get("enum", [])]


BY_DISTRIBUTION = {d: shape for shape in SHAPES for d in _distributions(shape)}
PARAMETER_KEYS = sorted({k for shape in SHAPES for v in DEFINITIONS[shape].get("anyOf", [DEFINITIONS[shape]])
                         for k in v.get("properties", {})})


def parameter_problems(parameters: Any, prefix: str = "parameters") -> list[str]:
    """One readable line per parameter that W&B's schema refuses (nested groups included)."""
    if not isinstance(parameters, dict):
        return [f"{prefix} must be a mapping of parameter names to their settings (got {_short(parameters)})"]
    out = []
    for name, spec in parameters.items():
        where = f"{prefix}.{name}"
        if isinstance(spec, dict) and "parameters" in spec and set(spec) == {"parameters"}:
            out += parameter_problems(spec["parameters"], f"{where}.parameters")
            continue
        problem = _problem(where, spec)
        if problem:
            out.append(problem)
    return out


def _problem(where: str, spec: Any) -> str | None:
    if not isinstance(spec, dict):
        return (f"{where} must be a mapping such as `value: X`, `values: [X, Y]` or `min: A` with `max: B` "
                f"(got {_short(spec)})")
    if _valid(spec, "parameter"):
        return None
    unknown = [k for k in spec if k not in PARAMETER_KEYS]
    if unknown:
        hint = closest(unknown[0], PARAMETER_KEYS, first=("values", "value", "min", "max", "distribution"))
        return (f"{where}: unknown setting {unknown[0]!r}" + (f": did you mean {hint[0]!r}?" if hint else "")
                + f" (W&B knows {', '.join(PARAMETER_KEYS)})")
    shape = _shape(spec)
    if shape is None:
        if "distribution" in spec:
            return (f"{where}.distribution {spec['distribution']!r} is not one W&B knows: expected one of "
                    f"{', '.join(sorted(BY_DISTRIBUTION))}")
        return f"{where} says no value: give it `value`, `values`, `min` and `max`, or a `distribution`"
    schema = {"definitions": DEFINITIONS, "$ref": f"#/definitions/{shape}"}
    error = best_match(Draft7Validator(schema, format_checker=format_checker).iter_errors(spec))
    while error is not None and error.validator in ("anyOf", "oneOf") and error.context:
        error = _closest_variant(error.context, spec)
    return _said(where, spec, shape, error) if error else None


def _closest_variant(errors, spec: dict):
    """A shape with variants (uniform: with or without ``distribution``, float or int bounds): the first
    problem of the variant with the fewest, among those that do not ask for a key the user left out on
    purpose (``distribution``, which its default fills)."""
    by_variant: dict = {}
    for e in errors:
        by_variant.setdefault(e.relative_schema_path[0], []).append(e)
    def needs_distribution(errs):
        return "distribution" not in spec and any(e.validator == "required" and "distribution" in e.validator_value
                                                   for e in errs)
    candidates = [errs for errs in by_variant.values() if not needs_distribution(errs)] or list(by_variant.values())
    return best_match(min(candidates, key=len))


def _valid(spec: dict, definition: str) -> bool:
    schema = {"definitions": DEFINITIONS, "$ref": f"#/definitions/{definition}"}
    return Draft7Validator(schema, format_checker=format_checker).is_valid(spec)


def _shape(spec: dict) -> str | None:
    """Which of W&B's parameter shapes ``spec`` means, from the keys it has."""
    if "distribution" in spec:
        return BY_DISTRIBUTION.get(spec["distribution"])
    if "values" in spec:
        return "param_categorical_w_probabilities" if "probabilities" in spec else "param_categorical"
    if "value" in spec:
        return "param_single_value"
    if "min" in spec or "max" in spec:
        ints = all(isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool) for k in ("min", "max"))
        return "param_int_uniform" if ints else "param_uniform"
    return None


def _said(where: str, spec: dict, shape: str, error) -> str:
    """One jsonschema error of ``spec`` against its shape, as a line about the parameter at ``where``."""
    field = next((p for p in reversed(error.absolute_path) if isinstance(p, str)), None)
    at = f"{where}.{field}" if field else where
    kind = spec.get("distribution") or shape.removeprefix("param_")
    got = f" (got {_short(error.instance)})"
    of = f" for {kind}" if field not in ("value", "values", "probabilities") else ""
    if error.validator == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"{at} must be {' or '.join(KINDS.get(t, t) for t in types)}{of}{got}"
    if error.validator == "format":
        return f"{at} must be {FORMATS.get(error.validator_value, error.validator_value)}{of}{got}"
    if error.validator == "minItems":
        n = error.validator_value
        return f"{at} must list at least {'one value' if n == 1 else f'{n} values'}{got}"
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in spec]
        return f"{where}: {kind} needs {' and '.join(missing)}"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = [k for k in spec if k not in allowed]
        return f"{where}: {kind} does not take {', '.join(extra)} (it takes {', '.join(allowed)})"
    if error.validator in ("exclusiveMinimum", "minimum"):
        sign = ">" if error.validator == "exclusiveMinimum" else ">="
        return f"{at} must be {sign} {error.validator_value:g}{of}{got}"
    return f"{at}: {error.message}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check(raw: dict, path: Path) -> None:
    """W&B's own schema check. Its deprecation notices (``log_uniform`` takes exponents) are warnings on
    W&B, which runs such sweeps: here too."""
    readable = parameter_problems(raw["parameters"]) if "parameters" in raw else []
    try:
        violations = [" ".join(v.split()) for v in schema_violations_from_proposed_config(raw)]
    except (ValueError, AttributeError, TypeError):   # sweeps assumes every parameter is a mapping
        violations = []
    if readable:   # jsonschema's "not valid under any of the given schemas" for the same parameters
        vague = {f"{spec!r} is not valid under any of the given schemas"
                 for spec in _parameter_specs(raw["parameters"])}
        violations = readable + [v for v in violations if v not in vague
                                 and not v.startswith("invalid hyperparameter configuration:")]
    notices = [v for v in violations if any(v.endswith(m) for m in PARAM_DEPRECATION_MAP.values())]
    for notice in notices:
        print(f"warning: {path.name}: {notice}", file=sys.stderr)
    errors = [v for v in violations if v not in notices]
    if errors:
        hint = ", ".join(_numbers_read_as_text(raw))
        hint = f" (YAML reads {hint} as text: write 1.0e-5, not 1e-5)" if hint else ""
        raise SweepError(f"{path.name}: not a valid W&B sweep: " + "; ".join(errors) + hint)


def _parameter_specs(parameters) -> list:
    """Every parameter's settings, nested groups' included (what jsonschema quotes in its messages)."""
    if not isinstance(parameters, dict):
        return []
    return [spec for spec in parameters.values()
            for spec in [spec, *_parameter_specs(spec.get("parameters") if isinstance(spec, dict) else None)]]


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
