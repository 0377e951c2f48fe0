"""The run folder's contract is declared once, in lib/records.py (issue 18): its file names, the sweep
dir's, the states and the exit codes. Everything else in lib/ and the two entrypoints imports them; an
AST scan fails on one spelled as a literal anywhere else (and is shown to fail on planted examples)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from lib import records
from lib.records import ExitCode, State

ROOT = Path(__file__).resolve().parents[1]
FILE_NAMES = set(records.RUN_FOLDER_FILES) | set(records.SWEEP_DIR_FILES)
STATE_NAMES = {s.value for s in State}
EXIT_CODES = {int(c) for c in ExitCode}
# The same spelling for another thing: the Hugging Face Hub's weights file is named by the Hub, not by us;
# a cache entry's lock is ".<entry>.lock".
NOT_OURS = {("lib/train/weights.py", records.WEIGHTS_FILE), ("lib/train/cache.py", records.LOCK_FILE)}


def _is_str(node, values) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in values


def _is_int(node) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int and node.value in EXIT_CODES


def _codes_returned(func) -> list[ast.AST]:
    """``return N`` in a function that is an entrypoint (main, cmd_*) or returns an ExitCode somewhere."""
    returns = [n for n in ast.walk(func) if isinstance(n, ast.Return) and n.value is not None]
    named = "ExitCode" in {getattr(getattr(r.value, "value", None), "id", None) for r in returns}
    if not (named or func.name == "main" or func.name.startswith("cmd_")):
        return []
    return [r.value for r in returns if _is_int(r.value)] + \
        [v for r in returns if isinstance(r.value, ast.IfExp) for v in (r.value.body, r.value.orelse) if _is_int(v)]


def literals(path: Path) -> list[str]:
    """The contract's names spelled out in ``path``: file names anywhere; ``x / "runs"``; state names
    compared, passed as ``state=``, or in a dict display (a state mapping) or under its ``"state"`` key;
    exit codes returned by entrypoints, passed to sys.exit or as ``exit_code=``, compared with a ``*code``,
    or assigned to an ``EXIT_*`` name."""
    tree, rel = ast.parse(path.read_text()), str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    found: list[tuple[int, str]] = []

    def add(node, what):
        found.append((node.lineno, f"{rel}:{node.lineno}: {what}"))

    for node in ast.walk(tree):
        if _is_str(node, FILE_NAMES) and (rel, node.value) not in NOT_OURS:
            add(node, f"file name {node.value!r}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and _is_str(node.right, {records.SWEEP_RUNS}):
            add(node, f"folder {records.SWEEP_RUNS!r}")
        elif isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                if _is_str(side, STATE_NAMES):
                    add(side, f"state {side.value!r}")
            sides = (node.left, *node.comparators)   # our children's codes: `code`, `exit_code` (not another
            ours = {"code", "exit_code"}              # program's `returncode`), tested for equality
            if any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops) and any(
                    getattr(s, "id", None) in ours or getattr(s, "attr", None) in ours for s in sides):
                for side in filter(_is_int, sides):
                    add(side, f"exit code {side.value}")
        elif isinstance(node, ast.keyword) and node.arg == "state":
            for sub in ast.walk(node.value):
                if _is_str(sub, STATE_NAMES):
                    add(sub, f"state {sub.value!r}")
        elif isinstance(node, ast.keyword) and node.arg == "exit_code" and _is_int(node.value):
            add(node.value, f"exit code {node.value.value}")
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                subs = [key] if key is not None else []
                subs += list(ast.walk(value)) if _is_str(key, {"state"}) else [value]
                for sub in subs:
                    if _is_str(sub, STATE_NAMES):
                        add(sub, f"state {sub.value!r}")
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "sys.exit" and node.args:
            if _is_int(node.args[0]):
                add(node, f"exit code {node.args[0].value}")
        elif isinstance(node, ast.Assign) and _is_int(node.value) and any(
                "EXIT" in getattr(t, "id", "").upper() for t in node.targets):
            add(node, f"exit code {node.value.value}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for value in _codes_returned(node):
                add(value, f"exit code {value.value} returned by {node.name}")
    return [text for _, text in sorted(set(found))]


def test_the_contract_is_spelled_nowhere_else():
    code = [p for p in (ROOT / "lib").rglob("*.py") if p.name != "records.py"]
    code += [ROOT / "finetune_resnet.py", ROOT / "finetune_sweep.py"]
    assert [hit for p in sorted(code) for hit in literals(p)] == []


def test_the_scan_finds_each_kind_of_literal(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('''import sys
EXIT_BUDGET = 3
def main(argv):
    if argv:
        return 2
    return 0 if argv is None else 1
def cmd_x(a, record, tracker, proc, run_dir):
    (run_dir / "last.ckpt").unlink()
    ckpt = run_dir / "runs" / "x"
    record.update(state="finished", error=None)
    tracker.finish(exit_code=4)
    if record.data.get("state") == "preempted" or proc.exit_code == 3:
        sys.exit(130)
    rows = {"id": 1, "state": run_dir.state or "failed"}
    names = {"crashed": "failed"}
    return "pruned" in names
''')
    hits = literals(planted)
    assert [h.split(": ", 1)[1] for h in hits] == [
        "exit code 3", "exit code 2 returned by main", "exit code 0 returned by main",
        "exit code 1 returned by main", "file name 'last.ckpt'", "folder 'runs'", "state 'finished'",
        "exit code 4", "exit code 3", "state 'preempted'", "exit code 130", "state 'failed'", "state 'failed'",
        "state 'pruned'"]


def test_the_exit_codes_and_states():
    assert [(c.name, int(c)) for c in ExitCode] == [("OK", 0), ("FAILED", 1), ("BAD_INPUT", 2), ("PREEMPTED", 3),
                                                    ("PRUNED", 4), ("INTERRUPTED", 130)]
    assert ExitCode.BUDGET_SPENT is ExitCode.PREEMPTED   # one code: "stopped with work left, run it again"
    assert records.STATES == ("running", "finished", "failed", "preempted", "pruned")


def test_the_contract_imports_without_torch():
    """lib.sweep.kaggle must import before the kit's requirements are installed: lib.records, which it
    imports, is standard-library only (as are lib.errors and lib.files)."""
    code = ("import sys; import lib.sweep.kaggle, lib.records; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'numpy', 'yaml', 'pandas', 'optuna', 'wandb', 'sweeps', 'timm')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
