"""YAML a user hands the kit (a sweep file, a run's --config, a sweep dir's copies), read safely.

``yaml.safe_load`` builds no objects, but it keeps aliases as shared references: a 1 KB file of nested
``&a [*a, *a, ...]`` (a "billion laughs") loads at once into a structure that every later walk (a
comparison, a JSON dump, a deep copy) expands into billions of values. Such a file is refused once
loaded, by counting what it expands to and stopping at a bound that no real sweep or config comes near.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lib.errors import KitError, yaml_problem

MAX_VALUES = 100_000   # values (mappings, lists and scalars) a file may expand to; a big sweep has hundreds


def expanded_size(data: Any, limit: int = MAX_VALUES) -> int:
    """How many values ``data`` holds with every alias expanded, counting no further than ``limit + 1``:
    the walk stops at the bound, so a bomb costs as much as a legitimate file of the bound's size."""
    count, todo = 0, [data]
    while todo and count <= limit:
        item = todo.pop()
        count += 1
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    return count


def safe_load(text: str, what: str, error: type[KitError] = KitError) -> Any:
    """``text`` (the file named ``what``) parsed with ``yaml.safe_load``; ``error`` (one line) when it is
    not YAML or expands to more than MAX_VALUES values."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{what} is not valid YAML: {yaml_problem(e)}") from None
    except RecursionError:   # a mapping nested thousands deep
        raise error(f"{what} is nested too deep to read") from None
    if expanded_size(data) > MAX_VALUES:
        raise error(f"{what} expands to more than {MAX_VALUES:,} values (YAML aliases repeated inside each "
                    "other?): refused, reading it would never end")
    return data


def read_file(path: Path | str, what: str, error: type[KitError] = KitError) -> Any:
    """The YAML file at ``path`` (named ``what`` in messages), read as safe_load reads text; ``error`` (one
    line, with the line and column) when it is not UTF-8 text or not YAML."""
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError as e:
        raise error(f"{what} is not valid YAML: {yaml_problem(e)}") from None
    return safe_load(text, what, error)
