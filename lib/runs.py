"""A sweep's runs, from a local sweep dir, a runs dir or a W&B sweep, as one list of run dicts
(``id``, ``name``, ``state``, ``config``, ``summary``, ``history`` and, where recorded, ``classes``,
``split``, ``test_predictions``, ``per_class``, ``confusion_matrix``, ``warnings``) and one table."""
from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from lib import records, yamls
from lib.config import LR_AUTO
from lib.errors import ExportError, ReportError, SweepError
from lib.files import read_json, read_jsonl, tail
from lib.records import GOALS, RUN_FILE, State, wandb_default_goal

# Our states (lib.records.State), and the other names a run's state has: W&B's (crashed, killed,
# preempting, pending) and Optuna's trial states as trial.json has them (complete, fail, waiting).
STATE_MAP = {**{s.value: s for s in State}, "crashed": State.FAILED, "killed": State.FAILED,
             "preempting": State.PREEMPTED, "pending": State.RUNNING, "complete": State.FINISHED,
             "fail": State.FAILED, "waiting": State.RUNNING}


def _history_rows(rows: Iterable[dict]) -> list[dict]:
    """Per-epoch rows, one per epoch (a resumed run may repeat one: the last wins), in epoch order."""
    by_epoch: dict[Any, dict] = {}
    for row in rows:
        if not isinstance(row, dict) or row.get("epoch") is None:
            continue
        clean = {k: v for k, v in row.items()
                 if not str(k).startswith("_") and (v is None or isinstance(v, (int, float, str, bool)))}
        with contextlib.suppress(TypeError, ValueError):
            by_epoch[int(clean["epoch"])] = clean
    return [by_epoch[k] for k in sorted(by_epoch)]


def _trial_info(run_dir: Path) -> dict:
    """What the sweep runner said of the trial (``trial.json``: state, error), if it ran one: the reason a
    run died before it could write its own record."""
    with contextlib.suppress(OSError, ValueError):
        info = read_json(run_dir / records.TRIAL_FILE)
        if isinstance(info, dict):
            return {"state": STATE_MAP.get(str(info.get("state")), info.get("state")), "error": info.get("error")}
    return {}


def _stub_from_folder(run_dir: Path, trial: dict | None) -> dict | None:
    """A trial folder with no run.json (the run died before writing one): what we can still say."""
    params_file, log = run_dir / records.PARAMS_FILE, run_dir / records.LOG_FILE
    if not (params_file.exists() or log.exists() or trial):
        return None
    config = {}
    if params_file.exists():
        with contextlib.suppress(Exception):
            raw = yamls.safe_load(params_file.read_text(), str(params_file)) or {}
            config = {k: v.get("value") if isinstance(v, dict) else v for k, v in raw.items()
                      if k != "wandb_version"}
    trial = trial or {}
    error = trial.get("error") or tail(log) or f"no {RUN_FILE} was written"
    return {"id": run_dir.name, "name": config.get("run_name") or run_dir.name,
            "state": trial.get("state") or State.FAILED, "config": config, "summary": {}, "error": error,
            "history": [], "dir": str(run_dir), "source": "local"}


def load_local(sweep_dir) -> list[dict]:
    """Every run of a local sweep dir (``DIR/runs/<run_id>/run.json`` + ``metrics.jsonl`` as ``history``).
    Also accepts a plain runs dir (``DIR/<run_id>/run.json``) or one run folder."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ReportError(f"{root} is a file, not a folder: pass a sweep dir, a runs dir or one run folder"
                          if root.exists() else f"no such folder: {root}")
    if (root / RUN_FILE).exists():
        folders = [root]
    else:
        runs_dir = root / records.SWEEP_RUNS
        base = runs_dir if (root / records.SWEEP_META).exists() or runs_dir.is_dir() else root
        folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    runs = []
    for folder in folders:
        path = folder / RUN_FILE
        if path.exists():
            try:
                rec = read_json(path)
            except (OSError, json.JSONDecodeError) as e:
                rec = {"id": folder.name, "state": State.FAILED, "error": f"unreadable {RUN_FILE}: {e}"}
        else:
            stub = _stub_from_folder(folder, _trial_info(folder))
            if stub:
                runs.append(stub)
            continue
        rec = dict(rec)
        rec.setdefault("id", folder.name)
        rec["state"] = STATE_MAP.get(str(rec.get("state")), str(rec.get("state") or "unknown"))
        if rec["state"] != State.FINISHED and not rec.get("error"):
            rec["error"] = _trial_info(folder).get("error") or tail(folder / records.LOG_FILE) or None
        rec["history"] = _history_rows(read_jsonl(folder / records.METRICS_FILE))
        rec["dir"] = str(folder)
        rec["source"] = "local"
        runs.append(rec)
    return runs


def _as_dict(obj) -> dict:
    if obj is None:
        return {}
    if isinstance(obj, str):
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(obj)
        return {}
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(getattr(obj, "_json_dict", None), dict):
        return dict(obj._json_dict)
    if hasattr(obj, "items"):
        return dict(obj.items())
    if hasattr(obj, "keys"):
        return {k: obj[k] for k in obj.keys()}
    return dict(obj)


def _unwrap(value):
    """W&B's raw config form {"value": v, "desc": ...} -> v."""
    if isinstance(value, dict) and "value" in value and set(value) <= {"value", "desc"}:
        return value["value"]
    return value


# --------------------------------------------------------------------------- W&B
def has_credentials() -> bool:
    """Whether wandb would find credentials without prompting (env, settings file, netrc, identity token).

    Asked before wandb.sweep because, without credentials, wandb.sweep prompts for a key on a terminal
    (and waits) instead of failing. update_session=False: only look, change nothing, print nothing.
    """
    from wandb.errors import AuthenticationError
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    settings = wandb_setup.singleton().settings
    host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)  # a self-hosted server has its own netrc entry
    try:
        return wbauth.authenticate_session(host=host, source="finetune_sweep.py", prompt=False,
                                           update_session=False) is not None
    except AuthenticationError:  # a malformed key: let wandb.sweep report it in its own words
        return True


def is_sweep_path(source) -> bool:
    """``entity/project/sweep_id`` that is not a local path (report and export take either)."""
    return isinstance(source, str) and not Path(source).exists() and \
        re.fullmatch(r"[^/\s]+/[^/\s]+/[^/\s]+", source) is not None


def public_api():
    """``wandb.Api()`` for reading sweeps, runs and artifacts, or a one-line SweepError without a key
    (where wandb.Api would raise deep in its auth code)."""
    import wandb

    if not has_credentials():
        raise SweepError("reading a W&B sweep needs an API key: run `wandb login` (or set WANDB_API_KEY); "
                         "offline, pass the local sweep dir instead")
    try:
        return wandb.Api()
    except wandb.errors.Error as e:
        raise SweepError(f"W&B: {' '.join(str(e).split())}") from None


def load_wandb(path: str, api=None, history: bool = True) -> list[dict]:
    """Every run of the W&B sweep ``entity/project/sweep_id``, as the same dicts as ``load_local``.
    ``classes``, ``test_predictions``, ``per_class``, ``confusion_matrix``, ``warnings`` come from
    summary keys of those names when the runs logged them (ours do not: McNemar is then unavailable)."""
    return read_wandb(path, api, history)[0]


def _wandb_metric(sweep) -> dict:
    """The sweep config's metric as sweep.json has it ({"metric", "goal"}), or {} when it names none. A
    metric without a goal is what W&B optimised it as: its default (``goal_defaulted``: the report says so)."""
    with contextlib.suppress(Exception):   # a sweep without a readable config still has runs
        metric = _as_dict(getattr(sweep, "config", None)).get("metric") or {}
        if isinstance(metric, dict) and isinstance(metric.get("name"), str):
            goal = metric.get("goal")
            if goal in GOALS:
                return {"metric": metric["name"], "goal": goal}
            return {"metric": metric["name"], "goal": wandb_default_goal(), "goal_defaulted": True}
    return {}


def read_wandb(path: str, api=None, history: bool = True) -> tuple[list[dict], dict]:
    """``load_wandb``'s runs, and the sweep's metric from its config ({"metric", "goal"}, or {})."""
    if api is None:
        api = public_api()
    try:
        sweep = api.sweep(path)
    except Exception as e:  # noqa: BLE001 - no such sweep, no access, no network: one line
        raise SweepError(f"cannot read W&B sweep {path}: {' '.join(str(e).split())[:300]}") from None
    runs = []
    for r in sweep.runs:
        config = {k: _unwrap(v) for k, v in _as_dict(getattr(r, "config", None)).items() if not str(k).startswith("_")}
        raw = _as_dict(getattr(r, "summary", None))
        extras = {}
        for key in ("classes", "test_predictions", "per_class", "confusion_matrix", "warnings", "split", "counts"):
            if key in raw:
                extras[key] = raw.pop(key)
        if "test_predictions" not in extras and "test_y_true" in raw and "test_y_pred" in raw:
            extras["test_predictions"] = {"y_true": raw.pop("test_y_true"), "y_pred": raw.pop("test_y_pred")}
        summary = {k: v for k, v in raw.items() if not str(k).startswith("_")
                   and (v is None or isinstance(v, (int, float, str, bool)))}
        if config.get("lr") == LR_AUTO and isinstance(summary.get("lr_found"), (int, float)):
            config["lr"] = summary["lr_found"]   # W&B keeps a sweep's parameter as given: the rate used
        rows = []
        if history:   # one request per run: only the report draws curves
            with contextlib.suppress(Exception):   # a run without history is still a run
                rows = r.history(pandas=False) or []
        wandb_state = str(getattr(r, "state", "unknown"))
        rec = {"id": getattr(r, "id", None), "name": getattr(r, "name", None) or getattr(r, "id", None),
               "state": STATE_MAP.get(wandb_state, wandb_state), "wandb_state": wandb_state,
               "config": config, "summary": summary, "history": _history_rows(rows),
               "source": f"wandb:{path}", **extras}
        if rec["state"] != State.FINISHED:
            rec["error"] = raw.get("error") or (f"W&B state {wandb_state}" if wandb_state != rec["state"] else None)
        runs.append(rec)
    return runs, _wandb_metric(sweep)


MODEL_FILES = (records.WEIGHTS_FILE, records.RUN_FILE)   # a finished run's model artifact `model-<run_id>:best`


def artifact_name(sweep_path: str, run_id: str) -> str:
    entity, project, _ = sweep_path.split("/")
    return f"{entity}/{project}/model-{run_id}:best"


def download_run(sweep_path: str, run_id: str, dest: Path, api) -> Path:
    """The run's model artifact as a run folder in ``dest``."""
    name = artifact_name(sweep_path, run_id)
    try:
        folder = Path(api.artifact(name, type="model").download(root=str(dest)))
    except Exception as e:  # noqa: BLE001 - no such artifact, no access, no network
        raise ExportError(f"cannot fetch {name} for run {run_id}: {' '.join(str(e).split())[:300]} "
                          "(runs log it unless log_model=false)") from None
    missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
    if missing:
        raise ExportError(f"{name} lacks {', '.join(missing)}: not an artifact of finetune_resnet.py")
    return folder


# --------------------------------------------------------------------------- frames
def given_config(run: dict) -> dict:
    """The config a run was given, which groups the seeds of one configuration: ``lr`` is ``auto`` where a
    range test picked it (``summary.lr_found``), though its config and its row show the rate it found:
    each seed finds its own."""
    config = dict(run.get("config") or {})
    found = (run.get("summary") or {}).get("lr_found")
    if isinstance(found, (int, float)) and not isinstance(found, bool):
        config["lr"] = LR_AUTO
    return config


def as_scalar(v):
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return v


def _n_split(run: dict, split: str) -> float:
    if split == "test":
        preds = run.get("test_predictions") or {}
        if preds.get("y_true") is not None:
            return len(preds["y_true"])
    counts = run.get("counts") or {}
    if isinstance(counts.get(split), (int, float)):
        return int(counts[split])
    paths = (run.get("split") or {}).get(split)
    if isinstance(paths, list) and paths:
        return len(paths)
    if split == "test" and run.get("per_class"):
        with contextlib.suppress(TypeError, KeyError):
            return int(sum(r["support"] for r in run["per_class"]))
    n = (run.get("summary") or {}).get(f"n_{split}")
    return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else math.nan


def runs_frame(runs) -> pd.DataFrame:
    """One row per run: run_id, name, state, the config keys, the summary keys (as they are), then
    error, n_val, n_test. A summary key that is also a config key is named ``summary.<key>``."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run_id": run.get("id"), "name": run.get("name"), "state": run.get("state")}
        for k, v in (run.get("config") or {}).items():
            if k not in row:
                row[k] = as_scalar(v)
        for k, v in (run.get("summary") or {}).items():
            row[k if k not in row else f"summary.{k}"] = as_scalar(v)
        row["error"] = run.get("error")
        row["n_val"] = _n_split(run, "val")
        row["n_test"] = _n_split(run, "test")
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["run_id", "name", "state", "error", "n_val", "n_test"])
    return df


