#!/usr/bin/env python
"""Issue 21's evidence: on each bench dataset (bench/datasets.py), three arms side by side, each timed
(wall, and CPU of its child processes), rows appended to bench/RESULTS.md as they finish.

    python bench/quickstart.py                                  # every dataset, every arm
    python bench/quickstart.py --dataset digits --arm fixed --arm probe

Arms:
  readme  the README's first command exactly (``--readme_cmd``, default below), then ``report``;
  fixed   today's quickstart kept as sweeps/quickstart_fixed.yaml, run as its header says
          (``--confirm_top 2 --repeats 3``), then ``report``;
  probe   bench/probe.py: frozen MobileNetV2 features at 224 px + logistic regression, on the kit's
          seed-42 split (the test images of the studies' grid runs).
A study's score is its recommended run's test accuracy and balanced accuracy: the run report.json
names (when the report writes one), else the report's rank-1 run in runs.csv; read from its run.json
(``test_balanced_acc``, or ``test_recall_macro``: the mean per-class recall is balanced accuracy).
The 1-minute load average is sampled every 10 s while an arm runs: the machine is shared.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script: lib/ is one folder up

from bench.datasets import REGISTRY, MissingPackage, materialise
from lib.files import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]

# The README's first command as a new user types it (no --set for small images: the plan handles them),
# in a sweep dir of its own.
README_CMD = ("{python} finetune_sweep.py local sweeps/quickstart.yaml --set data_dir={data_dir} "
              "--time_budget 20m --sweep_dir {sweep_dir}")
FIXED_CMD = ("{python} finetune_sweep.py local sweeps/quickstart_fixed.yaml --set data_dir={data_dir} {sets} "
             "--confirm_top 2 --repeats 3 --sweep_dir {sweep_dir}")
REPORT_CMD = "{python} finetune_sweep.py report {sweep_dir} --out {sweep_dir}/report"
PROBE_CMD = "{python} bench/probe.py {data_dir} --image_size 224 --seed 42 --json {sweep_dir}/probe.json"
ARMS = ("readme", "fixed", "probe")
BUDGET_REACHED = 3   # finetune_sweep.py local's exit code when --time_budget ended the study
HEADER = """# Measured results

Figures measured on this project's machine (2 CPU cores, shared with other work), with the command that
made them.
"""
SECTION = """
## Issue 21's evidence: `bench/quickstart.py` (today's quickstart, the LR probe, the README's first command)

Each dated table below is one `bench/quickstart.py` invocation, appended as it ran (newest last). Wall and
CPU seconds cover an arm's commands (study + report, or the probe); CPU is user+sys of the child
processes. Load: the 1-minute load average while the arm ran (min / median / max), sampled every 10 s.
Scores: the recommended run's test accuracy and balanced accuracy.
"""


class LoadSampler:
    """The 1-minute load average every ``every`` seconds, in a thread, until stopped."""

    def __init__(self, every: float = 10.0):
        self.every, self.values, self._stop = every, [os.getloadavg()[0]], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            self.values.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.values.append(os.getloadavg()[0])

    def text(self) -> str:
        return f"{min(self.values):.1f} / {statistics.median(self.values):.1f} / {max(self.values):.1f}"


@dataclass
class Measured:
    commands: list[str]
    rc: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    load: str = ""
    scores: dict = field(default_factory=dict)
    note: str = ""
    budget_reached: bool = False


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_commands(commands: list[str], log: Path) -> Measured:
    """Run each command in turn (stopping at the first failure), output to ``log``. A study's exit 3
    (``local --time_budget`` reached: its finished trials stand) is not a failure: the report follows."""
    m = Measured(commands)
    log.parent.mkdir(parents=True, exist_ok=True)
    cpu0, t0 = children_cpu(), time.perf_counter()
    with LoadSampler() as load, open(log, "a") as out:
        for cmd in commands:
            out.write(f"$ {cmd}\n")
            out.flush()
            rc = subprocess.run(shlex.split(cmd), check=False, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT).returncode
            if rc == BUDGET_REACHED and "local" in shlex.split(cmd):
                m.budget_reached = True
                continue
            m.rc = rc
            if rc != 0:
                m.note = f"exit {rc} from `{cmd}` (log: {log})"
                break
    m.wall_s, m.cpu_s, m.load = time.perf_counter() - t0, children_cpu() - cpu0, load.text()
    return m


def recommended_run(sweep_dir: Path) -> tuple[str | None, str]:
    """The report's recommended run id and where it was read."""
    report = sweep_dir / "report"
    if (report / "report.json").exists():
        meta = read_json(report / "report.json")
        for key in ("recommended_run_id", "recommended", "best_run_id"):
            value = meta.get(key)
            if isinstance(value, dict):
                value = value.get("run_id")
            if isinstance(value, str):
                return value, f"report.json {key}"
    if (report / "runs.csv").exists():
        with open(report / "runs.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row.get("rank") and float(row["rank"]) == 1:
                    return row["run_id"], "runs.csv rank 1"
    return None, "no report"


# Config keys that differ between the seed runs of one configuration without changing it.
NOT_CONFIG = {"seed", "run_id", "run_name", "runs_dir", "overwrite", "tags", "group"}


def balanced(summary: dict):
    return summary.get("test_balanced_acc", summary.get("test_recall_macro"))


def seed_group(sweep_dir: Path, record: dict) -> str:
    """The recommended configuration over its seeds: mean ± sd of test acc (and balanced acc)."""
    def key(r):
        return json.dumps({k: v for k, v in (r.get("config") or {}).items() if k not in NOT_CONFIG}, sort_keys=True)
    mine = key(record)
    members = [r for r in (read_json(p) for p in sorted((sweep_dir / "runs").glob("*/run.json")))
               if key(r) == mine and (r.get("summary") or {}).get("test_acc") is not None]
    if len(members) < 2:
        return ""
    accs = [r["summary"]["test_acc"] for r in members]
    bals = [balanced(r["summary"]) for r in members if balanced(r["summary"]) is not None]
    out = f"its {len(members)} seeds: acc {pct(statistics.mean(accs))} ± {pct(statistics.stdev(accs))}"
    return out + (f", bal. acc {pct(statistics.mean(bals))} ± {pct(statistics.stdev(bals))}" if len(bals) > 1 else "")


def study_scores(sweep_dir: Path) -> tuple[dict, str]:
    run_id, where = recommended_run(sweep_dir)
    if run_id is None:
        return {}, where
    path = sweep_dir / "runs" / run_id / "run.json"
    if not path.exists():
        return {}, f"{where}: {run_id} has no run.json"
    record = read_json(path)
    summary = record.get("summary") or {}
    runs = len(list((sweep_dir / "runs").glob("*/run.json")))
    scores = {"test_acc": summary.get("test_acc"), "test_balanced_acc": balanced(summary),
              "best_val_acc": summary.get("best_val_acc"), "best_epoch": summary.get("best_epoch"),
              "epochs_run": summary.get("epochs_run")}
    cfg = record.get("config") or {}
    what = f"{cfg.get('model')} {cfg.get('strategy')} lr {cfg.get('lr')}, best epoch {summary.get('best_epoch')}/" \
           f"{summary.get('epochs_run')}"
    seeds = seed_group(sweep_dir, record)
    return scores, f"{run_id} ({where}; {runs} runs): {what}" + (f"; {seeds}" if seeds else "")


def commands_for(arm: str, python: str, data_dir: Path, sweep_dir: Path, sets: str, readme_cmd: str) -> list[str]:
    fmt = {"python": python, "data_dir": shlex.quote(str(data_dir)), "sweep_dir": shlex.quote(str(sweep_dir)),
           "sets": sets}
    if arm == "probe":
        return [PROBE_CMD.format(**fmt)]
    study = readme_cmd if arm == "readme" else FIXED_CMD
    return [" ".join(study.format(**fmt).split()), REPORT_CMD.format(**fmt)]


def run_arm(arm: str, name: str, data_dir: Path, out_root: Path, readme_cmd: str) -> Measured:
    sweep_dir = out_root / name / arm
    if sweep_dir.exists() and arm != "probe":
        raise SystemExit(f"error: {sweep_dir} exists: a study there would be continued, not measured; "
                         "remove it or pass another --out_root")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sets = " ".join(f"--set {s}" for s in REGISTRY[name].kit_sets)
    python = os.path.relpath(sys.executable, ROOT) if Path(sys.executable).is_relative_to(ROOT) else sys.executable
    m = run_commands(commands_for(arm, python, data_dir, sweep_dir, sets, readme_cmd), sweep_dir / "bench.log")
    if m.rc == 0 and arm == "probe":
        r = read_json(sweep_dir / "probe.json")
        m.scores = {"test_acc": r["test_acc"], "test_balanced_acc": r["test_balanced_acc"]}
        m.note = f"C={r['C']}, n={r['n']}, features {r['feature_s']} s"
    elif m.rc == 0:
        m.scores, m.note = study_scores(sweep_dir)
        m.note += "; time budget reached (exit 3)" if m.budget_reached else ""
    write_json(sweep_dir / "bench.json", {"dataset": name, "arm": arm, **m.__dict__})
    return m


def pct(v) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "–"


def start_table(results: Path, args_line: str) -> None:
    if not results.exists():
        results.write_text(HEADER)
    if "## Issue 21's evidence" not in results.read_text():
        with open(results, "a") as f:
            f.write(SECTION)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    with open(results, "a") as f:
        f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M')} · `{args_line}` · commit {commit or '?'} · "
                f"{platform.node()}, {os.cpu_count()} cores\n\n"
                "| dataset | arm | command | wall s | CPU s | load | test acc % | test bal. acc % | notes |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")


def append_row(results: Path, name: str, arm: str, m: Measured) -> None:
    ds = REGISTRY[name]
    balanced = pct(m.scores.get("test_balanced_acc")) if m.scores else "–"
    cmd = " && ".join(m.commands).replace("|", "\\|")
    note = (m.note or "").replace("|", "\\|") if m.rc == 0 else f"FAILED: {m.note}"
    with open(results, "a") as f:
        f.write(f"| {name} ({ds.images} img, {ds.classes} cl, {ds.imbalance:g}:1) | {arm} | `{cmd}` | {m.wall_s:.0f} | "
                f"{m.cpu_s:.0f} | {m.load} | {pct(m.scores.get('test_acc'))} | {balanced} | {note} |\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", action="append", choices=sorted(REGISTRY), help="only these (default: all)")
    ap.add_argument("--arm", action="append", choices=ARMS, help="only these (default: all three)")
    ap.add_argument("--data_root", default="data/bench", help="where the datasets are written (default data/bench)")
    ap.add_argument("--out_root", default="runs/bench",
                    help="sweep dirs: OUT_ROOT/<dataset>/<arm> (default runs/bench)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--readme_cmd", default=README_CMD,
                    help="the README's first command, with {python} {data_dir} {sweep_dir} (and {sets}: the "
                         "datasets' --set flags, if wanted) "
                         "(default: %(default)s)")
    a = ap.parse_args(argv)
    for key in ("{data_dir}", "{sweep_dir}"):
        if key not in a.readme_cmd:
            print(f"error: --readme_cmd has no {key}: the study would not run on the bench data", file=sys.stderr)
            return 2
    names, arms = a.dataset or list(REGISTRY), a.arm or list(ARMS)
    try:
        dirs = {n: materialise(n, a.data_root) for n in names}
    except MissingPackage as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = Path(a.results)
    start_table(results, " ".join(["bench/quickstart.py", *(argv if argv is not None else sys.argv[1:])]))
    failed = 0
    for name in names:
        for arm in arms:
            print(f"{name} / {arm} ...", flush=True)
            m = run_arm(arm, name, dirs[name], Path(a.out_root), a.readme_cmd)
            append_row(results, name, arm, m)
            failed += m.rc != 0
            print(f"{name} / {arm}: rc {m.rc}, {m.wall_s:.0f} s wall, {m.cpu_s:.0f} CPU-s, load {m.load}, "
                  f"{json.dumps(m.scores)} {m.note}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
