"""The layout of lib/: every module imports, dependencies point one way, no cycles (issue 14).

shared (lib/*.py) <- train <- sweep;  shared <- report <- ship (ship may use train). Imports inside
functions count too: a lazy import that dodges a cycle is still a cycle."""
import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {"shared": {"shared"}, "train": {"shared", "train"}, "sweep": {"shared", "train", "sweep"},
           "report": {"shared", "report"}, "ship": {"shared", "report", "train", "ship"}}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "lib").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else "shared"


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The lib modules ``module`` imports, anywhere in its body (``from lib.x import y``: lib.x.y if
    that is a module, else lib.x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("lib")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lib"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            out |= subs or {node.module}
    return {m for m in out if m in known and m != module}


GRAPH = {m: imports(m, p, set(modules())) for m, p in modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{m} ({layer(m)}) imports {d} ({layer(d)})" for m, deps in GRAPH.items() for d in sorted(deps)
              if layer(d) not in ALLOWED[layer(m)] and d != "lib"]
    assert upward == []


def test_no_import_cycle():
    assert {"lib.train.restore", "lib.ship.card"} <= GRAPH["lib.ship.export"]   # the graph is read, not empty
    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for dep in GRAPH.get(node, ()):
                if dep == start:
                    return trail + [dep]
                # a package's __init__ importing its own modules is how packages are built
                if dep not in seen and not (node == "lib.report" and dep.startswith("lib.report.")):
                    seen.add(dep)
                    stack.append((dep, trail + [dep]))
        return None
    cycles = [" -> ".join(c) for m in sorted(GRAPH) if (c := cycle_from(m))]
    assert cycles == []


MAX_LINES = 500   # a module a reader can hold in mind (issue 20)


def test_no_module_is_over_max_lines():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def private_imports(path: Path) -> list[str]:
    """``from lib.x import _name`` and ``lib_module._name`` uses: another module's private name."""
    tree = ast.parse(path.read_text())
    aliases = {a.asname or a.name.split(".")[-1] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               and n.module and n.module.startswith("lib") for a in n.names if f"{n.module}.{a.name}" in GRAPH}
    aliases |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                if a.name.startswith("lib")}
    found = [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
             and n.module.startswith("lib") for a in n.names if a.name.startswith("_")]
    found += [f"{n.value.id}.{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute)
              and isinstance(n.value, ast.Name) and n.value.id in aliases
              and n.attr.startswith("_") and not n.attr.startswith("__")]
    return found


def test_no_module_uses_another_modules_private_name(tmp_path):
    code = [*(ROOT / "lib").rglob("*.py"), ROOT / "finetune_sweep.py", ROOT / "finetune_resnet.py",
            *(ROOT / "bench").glob("*.py")]
    used = {str(p.relative_to(ROOT)): found for p in code if (found := private_imports(p))}
    assert used == {}
    sneaky = tmp_path / "x.py"   # the check can fail
    sneaky.write_text("from lib.sweep.study import _x\nfrom lib.sweep import runner\nrunner._Stopping\n")
    assert private_imports(sneaky) == ["lib.sweep.study._x", "runner._Stopping"]


def test_errors_are_caught_by_type_not_by_name():
    """One KitError caught in each entrypoint; no error class matched by its name as a string."""
    for path in [*(ROOT / "lib").rglob("*.py"), ROOT / "finetune_sweep.py", ROOT / "finetune_resnet.py"]:
        assert "__name__ not in" not in path.read_text() and "__name__ in" not in path.read_text(), path
    from lib import errors

    kit = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert len(kit) >= 9 and all(issubclass(c, errors.KitError) for c in kit)
    assert str(errors.ExportError("two\n  lines")) == "two lines"


def test_what_a_run_measures_is_declared_once(tmp_path):
    """RunSummary is the one list: every metric field is a metric a sweep file may name and the report may
    rank by; bookkeeping keys come from the config's fields; state names map onto the record's."""
    import yaml

    from lib import config, records, runs
    from lib.report.table import NOISE_KEYS
    from lib.selection import selection
    from lib.sweep import spec

    assert records.RUN_METRICS == {f for f in records.RunSummary.__dataclass_fields__
                                   if records.RunSummary.__dataclass_fields__[f].metadata["metric"]}
    for metric in sorted(records.RUN_METRICS):
        path = tmp_path / f"{metric}.yaml"
        goal = records.METRIC_GOALS.get(metric, "maximize")   # the other way is refused where one is better
        path.write_text(yaml.safe_dump({"method": "grid", "metric": {"name": metric, "goal": goal},
                                        "parameters": {"lr": {"values": [0.1]}}}))
        assert spec.load(str(path)).metric == metric
        assert selection({}, metric, None, []).metric == metric
    assert {"seed", "run_id", "runs_dir", "device"} <= NOISE_KEYS and not NOISE_KEYS & {"lr", "strategy", "model"}
    assert set(config.RECIPE_KEYS) == set(config.FIELDS) - config.BOOKKEEPING
    assert set(runs.STATE_MAP.values()) <= set(records.STATES)


def test_the_architecture_page_names_every_module_and_no_other():
    """docs/architecture.md's layout table: every lib module listed, nothing listed that does not exist."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    table = page[page.index("| path | what |"):page.index("\n## ")]
    modules = [p for p in sorted((ROOT / "lib").rglob("*.py")) if p.name != "__init__.py"]
    missing = [str(p.relative_to(ROOT)) for p in modules
               if f"`{p.name}`" not in table and f"`{p.relative_to(ROOT)}`" not in table]
    assert missing == []
    names = {p.name for p in modules} | {str(p.relative_to(ROOT)) for p in modules}
    paths = [row.split("|")[1] for row in table.splitlines()[2:]]   # the path column
    scripts = {"finetune_resnet.py", "finetune_sweep.py"}
    listed = {m for cell in paths for m in re.findall(r"`([\w/]+\.py)`", cell)} - scripts
    assert listed and listed - names == set()
