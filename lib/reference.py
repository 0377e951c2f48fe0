"""The reference pages' tables, generated from the declarations they document, so they cannot drift:
``docs/config.md`` from :class:`lib.config.Config` (every key: type, default, allowed values, help) and
``docs/run-record.md`` from :mod:`lib.records` (the run folder's and the sweep dir's files, ``RunSummary``,
the per-epoch metrics, the states).

The prose around a table is written by hand; the table sits between ``<!-- generated: NAME -->`` and
``<!-- end generated: NAME -->`` and only that span is rewritten. ``python -m lib.reference`` (``make
docs``) rewrites the pages; ``--check`` rewrites nothing and exits 1 naming each stale page
(tests/test_docs.py runs the same check).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

from lib import config, records
from lib.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]
_GROUP = re.compile(r"^\s*# --- (.+?) ---")
_FIELD = re.compile(r"^\s*(\w+)\s*:")

# What each file of the contract (lib.records: RUN_FOLDER_FILES, SWEEP_DIR_FILES) holds. Keyed by the
# contract's own constants: a name is spelled once, there; tests/test_docs.py checks that every file the
# contract declares is described here, and nothing else.
R = records
RUN_FILE_DOCS = {
    R.LOCK_FILE: "held (flock) by the process running the run, whose pid it names; a second process on the same "
                 "run id is refused",
    R.RUN_FILE: "the record: id, name, state, config, summary, classes, split, warnings, test predictions, ... "
                "(see below)",
    R.METRICS_FILE: "one row per epoch (see below)",
    R.WEIGHTS_FILE: "the kept weights: best epoch by `monitor` (the test metrics come from them)",
    R.CHECKPOINT_FILE: "while the run is unfinished: what resuming needs (model, best weights, optimizer, schedule, "
                       "RNG states, early-stopping state, a hash of what defines the run); removed once the run "
                       "finishes",
    R.LR_FIND_FILE: "`lr: auto` only: the range test's curve and the rate it picked",
    R.LR_FIND_PLOT: "`lr: auto` only: the curve's plot",
    R.LOG_FILE: "under `finetune_sweep.py local`: the trial's stdout and stderr",
    R.STOP_FILE: "under `finetune_sweep.py local`: `pruned`, written by the runner before its SIGTERM",
    R.TRIAL_FILE: "under `finetune_sweep.py local`: the runner's word on how the trial ended (its state and error)",
    R.PARAMS_FILE: "under `finetune_sweep.py local`: the trial's parameters as `wandb agent` writes them "
                   "(`WANDB_SWEEP_PARAM_PATH`)",
    R.ARGS_FILE: "under `finetune_sweep.py local`: the `${args_json_file}`, when the sweep's command asks for it",
}
WANDB_DIR_DOC = ("wandb/", "the offline W&B run (`offline-run-*`), for `wandb sync`")   # W&B's folder, not ours
SWEEP_DIR_DOCS = {
    R.SWEEP_META: "the study's name, metric, goal, method, storage (no password) and `--set` values",
    R.SWEEP_COPY: "the sweep file as the study first ran it (an edit is refused, or adopted with `--extend`)",
    R.JOURNAL_FILE: "the study itself (Optuna's journal), when no `--storage` database holds it",
    f"{R.SWEEP_RUNS}/": "one run folder per trial: `runs/<run_id>/`, as above",
    R.LOCK_FILE: "held by a runner while it opens the study (grid enqueued once) and requeues dead runners' "
                 "trials",
}


def _cell(text: object) -> str:
    """One Markdown table cell: pipes escaped, one line."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(value: object) -> str:
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if value == "":
        return '`""`'
    text = str(value)
    home = str(Path.home())
    if isinstance(value, str) and text.startswith(home + "/"):   # the same page on every machine
        text = "~" + text[len(home):]
    return f"`{text}`"


def _groups() -> dict[str, str]:
    """Each config key's group, from the ``# --- group ---`` lines of Config's source."""
    out, group = {}, "other"
    for line in inspect.getsource(config.Config).splitlines():
        if m := _GROUP.match(line):
            group = m.group(1).split(":")[0].strip()
        elif (m := _FIELD.match(line)) and m.group(1) in config.FIELDS:
            out[m.group(1)] = group
    return out


def config_table() -> str:
    defaults, groups = config.Config(), _groups()
    rows = ["| key | type | default | allowed | what it does |", "|---|---|---|---|---|"]
    last = None
    for name, f in config.FIELDS.items():
        group = groups.get(name, "other")
        if group != last:
            rows.append(f"| **{_cell(group)}** | | | | |")
            last = group
        kind = " (bookkeeping: not part of the recipe)" if name in config.BOOKKEEPING else ""
        rows.append(f"| `{name}` | {config.TYPES[name].__name__} | {_cell(_default(getattr(defaults, name)))} "
                    f"| {_cell(config.allowed_text(f))} | {_cell(f.metadata['help'] + kind)} |")
    return "\n".join(rows)


def _file_rows(docs: dict[str, str]) -> str:
    rows = ["| file | what |", "|---|---|"]
    rows += [f"| `{name}` | {_cell(what)} |" for name, what in docs.items()]
    return "\n".join(rows)


def files_table() -> str:
    return _file_rows({**RUN_FILE_DOCS, WANDB_DIR_DOC[0]: WANDB_DIR_DOC[1]})


def sweep_files_table() -> str:
    return _file_rows(SWEEP_DIR_DOCS)


def summary_table() -> str:
    rows = ["| key | a sweep's metric | what |", "|---|---|---|"]
    for f in dataclasses.fields(records.RunSummary):
        metric = "yes" if f.name in records.RUN_METRICS else ""
        rows.append(f"| `{f.name}` | {metric} | {_cell(f.metadata['help'])} |")
    return "\n".join(rows)


def epoch_metrics() -> str:
    return ", ".join(f"`{m}`" for m in records.EPOCH_METRICS)


def states() -> str:
    return ", ".join(f"`{s}`" for s in records.STATES)


PAGES: dict[str, dict[str, Callable[[], str]]] = {
    "docs/config.md": {"config-keys": config_table},
    "docs/run-record.md": {"run-files": files_table, "sweep-files": sweep_files_table,
                           "summary": summary_table, "epoch-metrics": epoch_metrics,
                           "states": states},
}


def render(text: str, sections: dict[str, Callable[[], str]]) -> str:
    """``text`` with each generated span replaced by its section's current output."""
    for name, make in sections.items():
        begin, end = f"<!-- generated: {name} -->", f"<!-- end generated: {name} -->"
        if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
            raise ValueError(f"expected one {begin} ... {end} span")
        head, rest = text.split(begin)
        text = f"{head}{begin}\n{make()}\n{end}{rest.split(end, 1)[1]}"
    return text


def stale(root: Path = ROOT) -> list[str]:
    """The pages whose generated spans differ from what the code declares now."""
    return [page for page, sections in PAGES.items()
            if render((root / page).read_text(), sections) != (root / page).read_text()]


def write(root: Path = ROOT) -> list[str]:
    """Regenerate every page; the ones that changed."""
    changed = stale(root)
    for page in changed:
        path = root / page
        text = render(path.read_text(), PAGES[page])
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text))
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.reference", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 if a page is stale")
    args = ap.parse_args(argv)
    if args.check:
        pages = stale()
        for page in pages:
            print(f"{page} is stale: run `make docs`", file=sys.stderr)
        return records.ExitCode.FAILED if pages else records.ExitCode.OK
    for page in write():
        print(f"wrote {page}")
    return records.ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
