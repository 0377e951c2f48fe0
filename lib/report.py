"""The report of a sweep: which fine-tuning recipe won, by how much, and whether to believe it.

Reads run records (a local sweep dir, a plain runs dir, or a W&B sweep), and writes to ``out_dir``:
``runs.csv`` (one row per run), ``report.md`` (tables + PNG links), a self-contained ``report.html``
(the same, plots embedded as base64 PNG) and the plots as PNG files.

The statistics are the ones a careful reviewer asks for on small data:
- accuracy on ``n`` test images is a binomial proportion: its 95% **Wilson** score interval says how
  far the true accuracy may be (100% on 125 images only shows >= 97.0%);
- two runs tested on the *same* images are compared **paired**, with the exact McNemar test on the
  images exactly one of them gets right (``scipy.stats.binomtest``);
- runs that differ only in ``seed`` are aggregated (mean +- std): the seed-to-seed spread is the
  noise floor a difference between recipes has to clear;
- hyperparameter importance is descriptive: |Spearman rho| for numeric keys, eta^2 (share of the
  metric's variance between the key's levels) for categorical keys.
"""
from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy import stats

# Config keys that are bookkeeping, not part of the recipe: they never define a "configuration".
NOISE_KEYS = {"seed", "run_id", "run_name", "runs_dir", "cache_dir", "group", "tags", "project", "entity",
              "device", "num_workers", "log_model", "wandb_version", "config",
              "feature_cache", "cache_memory_mb", "shared_cache_dir"}   # caches are exact: not the recipe
STATE_MAP = {"finished": "finished", "running": "running", "failed": "failed", "crashed": "failed",
             "killed": "failed", "preempted": "preempted", "preempting": "preempted", "pruned": "pruned",
             "pending": "running", "complete": "finished", "fail": "failed", "waiting": "running"}
SMALL_TEST = 200          # below this many test images, say how wide the interval is
GAP_OVERFIT = 0.10        # train acc - val acc at the best epoch
ALPHA = 0.05
MAX_CURVE_RUNS = 16
MAX_TABLE_ROWS = 100
DUPLICATE_RE = re.compile(r"exact cop|duplicate", re.I)


# --------------------------------------------------------------------------- loading
def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


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


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return _history_rows(rows)


def _tail(path: Path, lines: int = 3) -> str:
    if not path.exists():
        return ""
    text = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    return " | ".join(text[-lines:])


def _trial_info(sweep_dir: Path) -> dict[str, dict]:
    """run_id -> {state, error} from the local sweep's study, when it can be read (else nothing)."""
    if not (sweep_dir / "sweep.json").exists():
        return {}
    with contextlib.suppress(Exception):
        meta = _read_json(sweep_dir / "sweep.json")
        if not meta.get("storage") and not (sweep_dir / "optuna.journal").exists():
            return {}  # opening a missing journal would create one: reading must not write
    try:
        from lib.sweep_local import trials_frame

        df, _ = trials_frame(sweep_dir)
    except Exception:  # noqa: BLE001 - the study is a bonus: the run folders are the record
        return {}
    out = {}
    for row in df.to_dict("records"):
        if row.get("run_id"):
            error = row.get("error")
            out[row["run_id"]] = {"state": STATE_MAP.get(str(row.get("state")), str(row.get("state"))),
                                  "error": error if isinstance(error, str) else None}
    return out


def _stub_from_folder(run_dir: Path, trial: dict | None) -> dict | None:
    """A trial folder with no run.json (the run died before writing one): what we can still say."""
    params_file, log = run_dir / "sweep-params.yaml", run_dir / "output.log"
    if not (params_file.exists() or log.exists() or trial):
        return None
    config = {}
    if params_file.exists():
        with contextlib.suppress(Exception):
            import yaml

            raw = yaml.safe_load(params_file.read_text()) or {}
            config = {k: v.get("value") if isinstance(v, dict) else v for k, v in raw.items()
                      if k != "wandb_version"}
    trial = trial or {}
    error = trial.get("error") or _tail(log) or "no run.json was written"
    return {"id": run_dir.name, "name": config.get("run_name") or run_dir.name,
            "state": trial.get("state") or "failed", "config": config, "summary": {}, "error": error,
            "history": [], "dir": str(run_dir), "source": "local"}


def load_local(sweep_dir) -> list[dict]:
    """Every run of a local sweep dir (``DIR/runs/<run_id>/run.json`` + ``metrics.jsonl`` as ``history``).
    Also accepts a plain runs dir (``DIR/<run_id>/run.json``) or one run folder."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    if (root / "run.json").exists():
        folders = [root]
    else:
        base = root / "runs" if ((root / "sweep.json").exists() or (root / "runs").is_dir()) else root
        folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    trials: dict | None = None  # the study is read only when a folder needs it (it can be slow)

    def trial(run_id: str) -> dict:
        nonlocal trials
        if trials is None:
            trials = _trial_info(root)
        return trials.get(run_id) or {}

    runs = []
    for folder in folders:
        path = folder / "run.json"
        if path.exists():
            try:
                rec = _read_json(path)
            except (OSError, json.JSONDecodeError) as e:
                rec = {"id": folder.name, "state": "failed", "error": f"unreadable run.json: {e}"}
        else:
            stub = _stub_from_folder(folder, trial(folder.name))
            if stub:
                runs.append(stub)
            continue
        rec = dict(rec)
        rec.setdefault("id", folder.name)
        rec["state"] = STATE_MAP.get(str(rec.get("state")), str(rec.get("state") or "unknown"))
        if rec["state"] != "finished" and not rec.get("error"):
            rec["error"] = trial(rec["id"]).get("error") or _tail(folder / "output.log") or None
        rec["history"] = _read_metrics(folder / "metrics.jsonl")
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


def load_wandb(path: str, api=None) -> list[dict]:
    """Every run of the W&B sweep ``entity/project/sweep_id``, as the same dicts as ``load_local``.
    ``classes``, ``test_predictions``, ``per_class``, ``confusion_matrix``, ``warnings`` come from
    summary keys of those names when the runs logged them (ours do not: McNemar is then unavailable)."""
    if api is None:
        from lib.cloud import public_api

        api = public_api()
    try:
        sweep = api.sweep(path)
    except Exception as e:  # noqa: BLE001 - no such sweep, no access, no network: one line
        from lib.cloud import SweepError

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
        try:
            history = r.history(pandas=False)
        except Exception:  # noqa: BLE001 - a run without history is still a run
            history = []
        wandb_state = str(getattr(r, "state", "unknown"))
        rec = {"id": getattr(r, "id", None), "name": getattr(r, "name", None) or getattr(r, "id", None),
               "state": STATE_MAP.get(wandb_state, wandb_state), "wandb_state": wandb_state,
               "config": config, "summary": summary, "history": _history_rows(history or []),
               "source": f"wandb:{path}", **extras}
        if rec["state"] != "finished":
            rec["error"] = raw.get("error") or (f"W&B state {wandb_state}" if wandb_state != rec["state"] else None)
        runs.append(rec)
    return runs


# --------------------------------------------------------------------------- frames
def _scalar(v):
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
                row[k] = _scalar(v)
        for k, v in (run.get("summary") or {}).items():
            row[k if k not in row else f"summary.{k}"] = _scalar(v)
        row["error"] = run.get("error")
        row["n_val"] = _n_split(run, "val")
        row["n_test"] = _n_split(run, "test")
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["run_id", "name", "state", "error", "n_val", "n_test"])
    return df


# --------------------------------------------------------------------------- statistics
def wilson_interval(k, n, z: float = 1.96) -> tuple[float, float]:
    """95% (z=1.96) Wilson score interval for k successes in n trials."""
    if n is None or not np.isfinite(n) or n <= 0 or k is None or not np.isfinite(k):
        return (math.nan, math.nan)
    k = min(max(float(k), 0.0), float(n))
    p, z2 = k / n, z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return (lo, hi)


def mcnemar(y_true, pred_a, pred_b) -> dict:
    """Exact McNemar test of two classifiers on the same test images.
    b = images A gets right and B wrong, c = the reverse; p = two-sided binomial test of b out of
    b + c at 1/2 (1.0 when no image is discordant)."""
    yt, a, b = (np.asarray(x).ravel() for x in (y_true, pred_a, pred_b))
    if not (len(yt) == len(a) == len(b)):
        raise ValueError(f"lengths differ: y_true {len(yt)}, pred_a {len(a)}, pred_b {len(b)}")
    ra, rb = a == yt, b == yt
    nb, nc = int(np.sum(ra & ~rb)), int(np.sum(~ra & rb))
    p = 1.0 if nb + nc == 0 else float(stats.binomtest(nb, nb + nc, 0.5).pvalue)
    return {"b": nb, "c": nc, "n_discordant": nb + nc, "p_value": p, "n": int(len(yt)),
            "acc_a": float(ra.mean()) if len(yt) else math.nan, "acc_b": float(rb.mean()) if len(yt) else math.nan}


def pareto_front(xs, ys, maximize_y: bool = True) -> list[bool]:
    """Membership of the front that minimises x and maximises (or minimises) y; NaN points are off it."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if not maximize_y:
        ys = -ys
    out = []
    for i in range(len(xs)):
        if not (np.isfinite(xs[i]) and np.isfinite(ys[i])):
            out.append(False)
            continue
        dominated = any(np.isfinite(xs[j]) and np.isfinite(ys[j]) and xs[j] <= xs[i] and ys[j] >= ys[i]
                        and (xs[j] < xs[i] or ys[j] > ys[i]) for j in range(len(xs)) if j != i)
        out.append(not dominated)
    return out


def eta_squared(groups, values) -> float:
    """Share of the variance of ``values`` between the levels of ``groups`` (SS_between / SS_total)."""
    v = np.asarray(values, float)
    g = np.asarray([str(x) for x in groups])
    ok = np.isfinite(v)
    v, g = v[ok], g[ok]
    total = float(np.sum((v - v.mean()) ** 2)) if len(v) else 0.0
    if total == 0:
        return math.nan
    between = sum(len(v[g == lvl]) * (v[g == lvl].mean() - v.mean()) ** 2 for lvl in np.unique(g))
    return float(between / total)


def _is_numeric(series: pd.Series) -> bool:
    vals = [v for v in series if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return bool(vals) and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                              for v in vals)


def importance(df: pd.DataFrame, keys: list[str], metric: str) -> list[dict]:
    out = []
    for key in keys:
        sub = df[[key, metric]].dropna()
        if len(sub) < 3 or sub[key].astype(str).nunique() < 2:
            continue
        if _is_numeric(sub[key]):
            rho, p = stats.spearmanr(sub[key].astype(float), sub[metric].astype(float))
            out.append({"key": key, "kind": "numeric", "method": "|Spearman rho|",
                        "importance": abs(float(rho)) if np.isfinite(rho) else math.nan,
                        "direction": "higher is better" if np.isfinite(rho) and rho > 0 else
                        ("lower is better" if np.isfinite(rho) and rho < 0 else ""),
                        "p_value": float(p) if np.isfinite(p) else math.nan, "n": len(sub),
                        "levels": int(sub[key].nunique())})
        else:
            levels = sub[key].astype(str)
            means = sub.groupby(levels)[metric].mean().sort_values(ascending=False)
            out.append({"key": key, "kind": "categorical", "method": "eta^2",
                        "importance": eta_squared(levels, sub[metric]),
                        "direction": f"best level: {means.index[0]}", "p_value": math.nan, "n": len(sub),
                        "levels": int(levels.nunique())})
    out.sort(key=lambda r: -(r["importance"] if np.isfinite(r["importance"]) else -1))
    return out


# --------------------------------------------------------------------------- formatting
def _isnan(v) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and not np.isfinite(v)) or v is pd.NA


def _pct(v, digits=1) -> str:
    return "–" if _isnan(v) else f"{100 * float(v):.{digits}f}%"


def _ci(lo, hi) -> str:
    return "–" if _isnan(lo) or _isnan(hi) else f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def _num(v, fmt="{:.4g}") -> str:
    if _isnan(v):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return fmt.format(float(v))
    return str(v)


def _met(v) -> str:
    return _num(v, "{:.4f}")


def _count(v) -> str:
    if _isnan(v):
        return "–"
    v = float(v)
    return f"{v / 1e6:.2f}M" if v >= 1e6 else (f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}")


def _hp(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3g}"
    return str(value)


class Doc:
    """The report, built once for both Markdown and HTML."""

    def __init__(self):
        self.md: list[str] = []
        self.html: list[str] = []

    def h(self, level: int, text: str, anchor: str | None = None):
        self.md.append(f"{'#' * level} {text}\n")
        aid = f' id="{anchor}"' if anchor else ""
        self.html.append(f"<h{level}{aid}>{html.escape(text)}</h{level}>")

    def p(self, text: str, cls: str | None = None):
        self.md.append(text + "\n")
        c = f' class="{cls}"' if cls else ""
        self.html.append(f"<p{c}>{_inline(text)}</p>")

    def bullets(self, items: list[tuple[str, str]] | list[str], cls: str = ""):
        if not items:
            return
        pairs = [it if isinstance(it, tuple) else ("", it) for it in items]
        self.md.append("\n".join(f"- {('**' + lvl.upper() + '** ') if lvl else ''}{t}" for lvl, t in pairs) + "\n")
        lis = "".join(f'<li class="{lvl}">{("<b>" + lvl.upper() + "</b> ") if lvl else ""}{_inline(t)}</li>'
                      for lvl, t in pairs)
        self.html.append(f'<ul class="{cls}">{lis}</ul>')

    def verdict(self, lines: list[str]):
        self.md.append("\n".join(f"> {line}  " for line in lines) + "\n")
        self.html.append('<div class="verdict">' + "".join(f"<p>{_inline(line)}</p>" for line in lines) + "</div>")

    def table(self, header: list[str], rows: list[list[str]], note: str | None = None, highlight: int | None = None):
        if not rows:
            return
        esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        md = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
        self.md.append("\n".join(md) + "\n")
        num = [' class="n"' if all(_NUMISH.fullmatch(str(r[j])) for r in rows) else "" for j in range(len(header))]
        head = "".join(f"<th{num[j]}>{html.escape(str(h))}</th>" for j, h in enumerate(header))
        best = ' class="best"'
        body = "".join(f"<tr{best if i == highlight else ''}>"
                       + "".join(f"<td{num[j]}>{html.escape(str(c))}</td>" for j, c in enumerate(r))
                       + "</tr>" for i, r in enumerate(rows))
        self.html.append(f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')
        if note:
            self.p(note, cls="note")

    def image(self, name: str, png: bytes, alt: str):
        self.md.append(f"![{alt}]({name})\n")
        data = base64.b64encode(png).decode()
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
                         f"<figcaption>{html.escape(alt)}</figcaption></figure>")


_NUMISH = re.compile(r"[-+−–±\s\d.,%\[\]Mke]*\d[-+−–±\s\d.,%\[\]Mke]*|–")


def _inline(text: str) -> str:
    """Escape, then the little Markdown we use: **bold** and `code`."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1150px;color:#222;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;border-bottom:2px solid #e3e6ea;padding-bottom:4px;margin-top:32px}
h3{font-size:16px}.meta{color:#666}.note{color:#555;font-size:12.5px}
.verdict{background:#f3f8ff;border-left:5px solid #2f6fdf;padding:8px 16px;margin:12px 0}
.verdict p{margin:6px 0}
ul.warnings li{margin:4px 0}li.critical b{color:#b00020}li.warning b{color:#b36b00}li.info b{color:#2f6fdf}
.tw{overflow-x:auto}table{border-collapse:collapse;margin:8px 0;font-size:12.5px}
th,td{border:1px solid #d9dde3;padding:3px 8px;text-align:left;white-space:nowrap}td.n,th.n{text-align:right}
td{max-width:520px;overflow:hidden;text-overflow:ellipsis}
th{background:#f1f3f5}tr.best td{background:#e8f5e9;font-weight:600}
tbody tr:nth-child(even):not(.best){background:#fafbfc}
figure{margin:12px 0}img{max-width:100%;border:1px solid #eee}figcaption{color:#666;font-size:12px}
code{background:#f1f3f5;padding:0 3px;border-radius:3px}
"""


# --------------------------------------------------------------------------- plots
def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:2]) or text

def _figure(w, h, layout: str | None = "constrained"):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    return Figure(figsize=(w, h), dpi=90, layout=layout)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _curves_plot(runs: list[dict], labels: dict[str, str]) -> bytes | None:
    from matplotlib.ticker import MaxNLocator

    runs = [r for r in runs if r.get("history")][:MAX_CURVE_RUNS]
    if not runs:
        return None
    per_row = 1 if len(runs) == 1 else 2
    nrows = math.ceil(len(runs) / per_row)
    height = 2.6 * nrows + 0.6
    fig = _figure(6.5 * per_row, height, layout=None)   # constrained layout is slow with many axes
    fig.subplots_adjust(left=0.06, right=0.99, wspace=0.32, hspace=0.75, top=1 - 0.85 / height,
                        bottom=0.45 / height)
    axes = fig.subplots(nrows, per_row * 2, squeeze=False)
    for i in range(nrows * per_row):
        ax_l, ax_a = axes[i // per_row][2 * (i % per_row)], axes[i // per_row][2 * (i % per_row) + 1]
        if i >= len(runs):
            ax_l.set_visible(False)
            ax_a.set_visible(False)
            continue
        run = runs[i]
        h = pd.DataFrame(run["history"])
        ep = h["epoch"] if "epoch" in h else pd.Series(range(1, len(h) + 1))
        for ax, key, name in ((ax_l, "loss", "loss"), (ax_a, "acc", "accuracy")):
            for split, style, color in (("train", "--", "#888888"), ("val", "-", "#2f6fdf")):
                col = f"{split}_{key}"
                if col in h and pd.to_numeric(h[col], errors="coerce").notna().any():
                    ax.plot(ep, pd.to_numeric(h[col], errors="coerce"), style, color=color, marker=".", label=split)
            best = (run.get("summary") or {}).get("best_epoch")
            if isinstance(best, (int, float)) and not _isnan(best):
                ax.axvline(best, color="#2e7d32", lw=0.8, ls=":")
            if "phase" in h:
                changes = [ep.iloc[j] - 0.5 for j in range(1, len(h)) if h["phase"].iloc[j] != h["phase"].iloc[j - 1]]
                for x in changes:
                    ax.axvline(x, color="#c0c0c0", lw=0.8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch", fontsize=8)
            ax.set_ylabel(name, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        ax_l.set_title(_wrap(labels.get(run.get("id"), str(run.get("id"))), 62), fontsize=8, loc="left")
        if i == 0:
            ax_a.legend(fontsize=7, loc="lower right")
    fig.suptitle("training curves (train dashed, val solid; green dotted = best epoch, grey = phase change)",
                 fontsize=10, y=1 - 0.12 / height)
    return _png(fig)


def _overlay_plot(runs: list[dict], metric_label: str) -> bytes | None:
    runs = [r for r in runs if r.get("history")]
    if len(runs) <= MAX_CURVE_RUNS:
        return None
    fig = _figure(11, 4)
    ax_l, ax_a = fig.subplots(1, 2)
    for r in runs:
        h = pd.DataFrame(r["history"])
        for ax, col in ((ax_l, "val_loss"), (ax_a, "val_acc")):
            if col in h:
                ax.plot(h["epoch"], pd.to_numeric(h[col], errors="coerce"), lw=0.8, alpha=0.6)
    ax_l.set_title("val loss, all runs", fontsize=9)
    ax_a.set_title("val accuracy, all runs", fontsize=9)
    for ax in (ax_l, ax_a):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return _png(fig)


def _confusion_plot(cm: np.ndarray, classes: list[str], title: str) -> bytes:
    n = len(classes)
    side = min(12, max(4.5, 0.45 * n + 2.5))
    fig = _figure(side + 1, side)
    ax = fig.subplots()
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=classes, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center",
                  fontsize=8)
    ax.set_yticks(range(n), labels=classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7 if n > 12 else 9,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class")
    ax.set_title(_wrap(title, int(9 * side)), fontsize=10)
    return _png(fig)


def _tradeoff_plot(fin: pd.DataFrame, metric: str, maximize: bool, has_latency: bool) -> bytes | None:
    panels = [("model_size_mb", "model size (MB)", "pareto_size")]
    if has_latency:
        panels.append(("latency_ms", "CPU latency (ms)", "pareto_latency"))
    panels = [p for p in panels if p[0] in fin and fin[p[0]].notna().any()]
    if not panels or fin[metric].notna().sum() == 0:
        return None
    fig = _figure(6 * len(panels), 4.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (col, label, front_col) in zip(axes, panels):
        sub = fin[fin[col].notna() & fin[metric].notna()]
        on = sub[sub[front_col].astype(bool)]
        off = sub[~sub[front_col].astype(bool)]
        ax.scatter(off[col], off[metric], color="#9aa5b1", s=30, label="dominated", zorder=2)
        ax.scatter(on[col], on[metric], color="#d62728", s=45, label="Pareto front", zorder=3)
        front = on.sort_values(col)
        ax.step(front[col], front[metric], where="post", color="#d62728", lw=1, alpha=0.6)
        for (x, y), g in sub.groupby([sub[col].round(6), sub[metric].round(6)]):
            names = list(dict.fromkeys(g["_label_short"]))
            ax.annotate(", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else ""), (x, y),
                        fontsize=6.5, xytext=(3, 3), textcoords="offset points")
        if (sub[col] > 0).all() and sub[col].max() / max(sub[col].min(), 1e-12) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if maximize else "upper right")
    fig.suptitle(f"{metric} vs cost ({'higher' if maximize else 'lower'} is better; front = not beaten on both axes)",
                 fontsize=10)
    return _png(fig)


def _params_plot(fin: pd.DataFrame, keys: list[str], metric: str) -> bytes | None:
    keys = [k for k in keys if k in fin][:12]
    if not keys:
        return None
    ncol = min(3, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    fig = _figure(4.3 * ncol, 3.3 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= len(keys):
            ax.set_visible(False)
            continue
        key = keys[i]
        sub = fin[[key, metric]].dropna()
        if _is_numeric(sub[key]) and sub[key].nunique() > 6:
            x = sub[key].astype(float)
            ax.scatter(x, sub[metric], color="#2f6fdf", s=28, alpha=0.8)
            if (x > 0).all() and x.max() / max(x.min(), 1e-300) >= 20:
                ax.set_xscale("log")
        else:
            as_text = sub[key].map(_hp)
            if _is_numeric(sub[key]):   # few numeric levels: one column each, in numeric order
                levels = [_hp(v) for v in sorted(sub[key].astype(float).unique())]
            else:
                levels = sorted(as_text.unique(), key=lambda s: (len(s), s))
            data = [sub[metric][as_text == lvl].astype(float).values for lvl in levels]
            if max(len(d) for d in data) >= 3:
                ax.boxplot(data, positions=range(len(levels)), widths=0.5, showfliers=False)
            rng = np.random.default_rng(0)
            for j, d in enumerate(data):
                ax.scatter(j + rng.uniform(-0.12, 0.12, len(d)), d, color="#2f6fdf", s=24, alpha=0.8, zorder=3)
            ax.set_xticks(range(len(levels)), labels=levels, rotation=30 if len(levels) > 3 else 0, fontsize=8)
        ax.set_title(key, fontsize=9)
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} against each swept parameter (finished runs)", fontsize=10)
    return _png(fig)


# --------------------------------------------------------------------------- the report
def _metric_value(run: dict, metric: str, maximize: bool) -> float:
    v = (run.get("summary") or {}).get(metric)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    vals = [r[metric] for r in run.get("history") or [] if isinstance(r.get(metric), (int, float))
            and np.isfinite(r[metric])]
    if not vals:
        return math.nan
    return float(max(vals) if maximize else min(vals))


def _config_keys(runs: list[dict]) -> list[str]:
    keys: dict[str, None] = {}
    for r in runs:
        for k in (r.get("config") or {}):
            keys.setdefault(k, None)
    return list(keys)


def _predictions(run: dict):
    preds = run.get("test_predictions") or {}
    yt, yp = preds.get("y_true"), preds.get("y_pred")
    if yt is None or yp is None or len(yt) != len(yp) or len(yt) == 0:
        return None
    return np.asarray(yt), np.asarray(yp)


def _same_test_set(a: dict, b: dict) -> tuple[bool, str]:
    pa, pb = _predictions(a), _predictions(b)
    if pa is None or pb is None:
        return False, "no test predictions in " + ("either run" if pa is None and pb is None else
                                                   "one of the runs")
    if len(pa[0]) != len(pb[0]) or not np.array_equal(pa[0], pb[0]):
        return False, "the two runs were tested on different test sets"
    ta, tb = (a.get("split") or {}).get("test"), (b.get("split") or {}).get("test")
    if isinstance(ta, list) and isinstance(tb, list):
        if ta != tb:
            return False, "the two runs were tested on different test images (different splits)"
        return True, "same test images"
    return True, "same test labels in the same order (image lists not recorded: assumed the same images)"


def _confusion(run: dict) -> tuple[np.ndarray, list[str]] | None:
    classes = run.get("classes")
    cm = run.get("confusion_matrix")
    if cm is not None:
        cm = np.asarray(cm, dtype=int)
        if cm.ndim == 2 and cm.shape[0] == cm.shape[1] and cm.size:
            classes = classes if classes and len(classes) == cm.shape[0] else [str(i) for i in range(cm.shape[0])]
            return cm, list(classes)
    pred = _predictions(run)
    if pred is None:
        return None
    n = max(int(pred[0].max()), int(pred[1].max())) + 1
    n = max(n, len(classes or []))
    cm = np.zeros((n, n), dtype=int)
    for t, p in zip(pred[0], pred[1]):
        cm[int(t), int(p)] += 1
    classes = classes if classes and len(classes) == n else [str(i) for i in range(n)]
    return cm, list(classes)


def _per_class(run: dict, cmc) -> list[dict]:
    if run.get("per_class"):
        return list(run["per_class"])
    if cmc is None:
        return []
    cm, classes = cmc
    out = []
    for i, c in enumerate(classes):
        tp, support, predicted = cm[i, i], cm[i].sum(), cm[:, i].sum()
        p = tp / predicted if predicted else 0.0
        r = tp / support if support else 0.0
        out.append({"class": c, "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                    "support": int(support)})
    return out


def _val_loss_rise(history: list[dict]) -> tuple[int, float] | None:
    """(epoch of min val loss, relative rise at the end) when val loss rose > 10% while train loss fell."""
    h = [r for r in history if isinstance(r.get("val_loss"), (int, float)) and isinstance(r.get("train_loss"), (int, float))
         and np.isfinite(r["val_loss"]) and np.isfinite(r["train_loss"])]
    if len(h) < 3:
        return None
    vl = [r["val_loss"] for r in h]
    j = int(np.argmin(vl))
    if j == len(h) - 1 or vl[j] <= 0:
        return None
    rise = (vl[-1] - vl[j]) / vl[j]
    if rise > 0.10 and h[-1]["train_loss"] < h[j]["train_loss"]:
        return int(h[j]["epoch"]), float(rise)
    return None


def _load_source(source_runs) -> tuple[list[dict], str, dict]:
    if isinstance(source_runs, (str, Path)):
        path = Path(source_runs)
        if path.exists():
            meta = {}
            if (path / "sweep.json").exists():
                with contextlib.suppress(Exception):
                    meta = _read_json(path / "sweep.json")
            return load_local(path), str(path), meta
        if isinstance(source_runs, str) and re.fullmatch(r"[^/\s]+/[^/\s]+/[^/\s]+", source_runs):
            return load_wandb(source_runs), f"W&B sweep {source_runs}", {}
        raise FileNotFoundError(f"{source_runs}: neither a directory nor a W&B sweep path entity/project/sweep_id")
    runs = list(source_runs)
    return runs, f"{len(runs)} run records", {}


def build_report(source_runs, out_dir, metric: str = "best_val_acc", latency: dict | None = None,
                 goal: str | None = None, title: str | None = None) -> dict:
    """Write runs.csv, report.md, report.html and the plots to ``out_dir``.

    ``source_runs``: a list of run dicts (from ``load_local``/``load_wandb``), a local sweep or runs dir,
    or a W&B sweep path. ``latency``: run_id -> CPU latency in ms (adds a latency/accuracy front).
    ``goal``: maximize/minimize (default: the sweep's, else minimize for a metric named *loss*).
    Returns {"verdict", "best_run_id", "runner_up_id", "warnings", "paths", ...}."""
    runs, source, meta = _load_source(source_runs)
    if goal is None:
        goal = meta.get("goal") if meta.get("metric") == metric and meta.get("goal") else \
            ("minimize" if "loss" in metric else "maximize")
    maximize = goal != "minimize"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    latency = {str(k): float(v) for k, v in (latency or {}).items()}

    df = runs_frame(runs)
    by_id = {r.get("id"): r for r in runs}
    df[metric] = [_metric_value(r, metric, maximize) for r in runs] if runs else []
    df["latency_ms"] = [latency.get(str(r.get("id")), math.nan) for r in runs] if runs else []
    for col in ("model", "strategy", "test_acc", "test_f1_macro", "trainable_params", "total_params",
                "model_size_mb", "train_val_gap", "train_time_s", "best_val_acc"):
        if col not in df:
            df[col] = math.nan if col not in ("model", "strategy") else "?"
    df["model"] = df["model"].fillna("?").astype(str)
    df["strategy"] = df["strategy"].fillna("?").astype(str)
    num = lambda c: pd.to_numeric(df[c], errors="coerce")  # noqa: E731
    for c in ("test_acc", "test_f1_macro", "trainable_params", "total_params", "model_size_mb",
              "train_val_gap", "train_time_s", "best_val_acc", metric, "n_test", "n_val"):
        df[c] = num(c)
    df["test_k"] = (df["test_acc"] * df["n_test"]).round()
    ci = [wilson_interval(k, n) for k, n in zip(df["test_k"], df["n_test"])]
    df["test_acc_lo"] = [c[0] for c in ci]
    df["test_acc_hi"] = [c[1] for c in ci]

    config_keys = _config_keys(runs)
    recipe_keys = [k for k in config_keys if k not in NOISE_KEYS]
    df["_group"] = [json.dumps({k: _scalar((r.get("config") or {}).get(k)) for k in recipe_keys}, sort_keys=True,
                               default=str) for r in runs] if runs else []

    fin = df[(df["state"] == "finished") & df[metric].notna()].copy()
    fin["_size_key"] = fin["model_size_mb"].fillna(np.inf)
    fin = fin.sort_values([metric, "_size_key", "train_time_s"], ascending=[not maximize, True, True],
                          na_position="last")
    varying = [k for k in recipe_keys if k in fin and fin[k].astype(str).nunique() > 1]
    shown_hp = [k for k in varying if k not in ("model", "strategy")]

    def hp_text(row) -> str:
        keys = shown_hp or [k for k in ("lr",) if k in row and not _isnan(row[k])]
        return ", ".join(f"{k}={_hp(row[k])}" for k in keys if k in row and not _isnan(row[k]))

    labels = {}
    for _, row in df.iterrows():
        hp = hp_text(row)
        labels[row["run_id"]] = f"{row['model']}/{row['strategy']}" + (f" {hp}" if hp else "") + f" [{row['run_id']}]"
    df["_label_short"] = [f"{m}/{s}" for m, s in zip(df["model"], df["strategy"])]
    fin["_label_short"] = df.loc[fin.index, "_label_short"]

    warnings: list[dict] = []

    def warn(level: str, kind: str, text: str):
        warnings.append({"level": level, "kind": kind, "text": text})

    # ---------------- failed / unfinished runs
    bad = df[df["state"] != "finished"]
    pruned = bad[bad["state"] == "pruned"]
    if len(pruned):
        ids = ", ".join(f"`{r}`" for r in pruned["run_id"].tolist()[:10]) + (" …" if len(pruned) > 10 else "")
        warn("info", "run_state", f"{len(pruned)} run(s) pruned by early termination (normal under hyperband): {ids}")
    unfinished = bad[bad["state"] != "pruned"]
    for i, (_, row) in enumerate(unfinished.iterrows()):
        if i == 8:
            warn("warning", "run_state", f"… and {len(unfinished) - 8} more run(s) that did not finish: see the table")
            break
        err = row.get("error")
        err = "" if _isnan(err) or not err else f": {str(err)[:300]}"
        why = {"running": "still running (or died without a record)",
               "preempted": "preempted (resumable: run the same command again)"}.get(row["state"], row["state"])
        warn("warning", "run_state", f"run `{row['run_id']}` ({labels.get(row['run_id'])}) {why}{err}")
    no_metric = df[(df["state"] == "finished") & df[metric].isna()]
    for _, row in no_metric.iterrows():
        warn("warning", "no_metric", f"run `{row['run_id']}` finished without a value of {metric}: left out")

    best_id = runner_id = None
    verdict_lines: list[str] = []
    seed_groups: list[dict] = []
    imp: list[dict] = []
    pareto_ids: list[str] = []
    mc = None
    plots: dict[str, str] = {}
    doc = Doc()

    counts = df["state"].value_counts().to_dict() if len(df) else {}
    state_text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no runs"
    doc.h(1, title or "Fine-tuning sweep report")
    doc.p(f"Source: `{source}` · {len(df)} run(s): {state_text} · selection metric: `{metric}` ({goal}) · "
          f"generated {time.strftime('%Y-%m-%d %H:%M')}", cls="meta")

    if fin.empty:
        verdict_lines = [f"No run finished with a value of `{metric}`: there is no winner "
                         f"({len(df)} run(s): {state_text}).",
                         "Fix the errors listed below and run the sweep again."]
        if len(df) == 0:
            verdict_lines = ["No runs found: nothing to report."]
        warn("critical", "no_finished", "no finished run: nothing can be compared")
    else:
        fin["pareto_size"] = pareto_front(fin["model_size_mb"], fin[metric], maximize)
        fin["pareto_latency"] = pareto_front(fin["latency_ms"], fin[metric], maximize)
        pareto_ids = fin.loc[fin["pareto_size"], "run_id"].tolist()
        best = fin.iloc[0]
        best_id = best["run_id"]
        best_run = by_id[best_id]
        others = fin[fin["_group"] != best["_group"]]
        runner = others.iloc[0] if len(others) else None
        runner_id = runner["run_id"] if runner is not None else None

        # ---------------- seed aggregation
        for gkey, g in fin.groupby("_group", sort=False):
            if len(g) < 2:
                continue
            rec = {"config": {k: g.iloc[0][k] for k in varying if k in g}, "n": len(g),
                   "seeds": [s for s in (g["seed"].tolist() if "seed" in g else [])],
                   "run_ids": g["run_id"].tolist()}
            for col in (metric, "test_acc", "test_f1_macro"):
                vals = g[col].astype(float).dropna()
                rec[f"{col}_mean"] = float(vals.mean()) if len(vals) else math.nan
                rec[f"{col}_std"] = float(vals.std(ddof=1)) if len(vals) >= 2 else math.nan
            rec["_group"] = gkey
            seed_groups.append(rec)
        seed_groups.sort(key=lambda r: -r[f"{metric}_mean"] if maximize else r[f"{metric}_mean"])

        # ---------------- statistics on the top two
        n_test = best["n_test"]
        margin = (best[metric] - runner[metric]) if runner is not None else math.nan
        test_margin = (best["test_acc"] - runner["test_acc"]) if runner is not None else math.nan
        distinguishable: bool | None = None
        paired_note = ""
        if runner is not None:
            same, why = _same_test_set(best_run, by_id[runner_id])
            if same:
                pa, pb = _predictions(best_run), _predictions(by_id[runner_id])
                mc = mcnemar(pa[0], pa[1], pb[1])
                mc["runs"] = [best_id, runner_id]
                distinguishable = mc["p_value"] <= ALPHA
                paired_note = (f"McNemar exact p = {mc['p_value']:.3g} ({mc['b']} image(s) only the winner gets right, "
                               f"{mc['c']} only the runner-up)")
                if not distinguishable:
                    warn("critical", "mcnemar",
                         f"the top two are not distinguishable on the test set: {paired_note}; "
                         f"p > {ALPHA} — treat them as tied")
            else:
                paired_note = f"no paired test: {why}"
                warn("info", "mcnemar", f"McNemar test not possible for the top two: {why}")
            lo1, hi1, lo2, hi2 = best["test_acc_lo"], best["test_acc_hi"], runner["test_acc_lo"], runner["test_acc_hi"]
            if not any(_isnan(v) for v in (lo1, hi1, lo2, hi2)):
                overlap = lo1 <= hi2 and lo2 <= hi1
                if overlap:
                    warn("warning", "wilson_overlap",
                         f"the 95% Wilson intervals of the top two overlap: winner {_pct(best['test_acc'])} "
                         f"{_ci(lo1, hi1)} (n={int(best['n_test'])}) vs runner-up {_pct(runner['test_acc'])} "
                         f"{_ci(lo2, hi2)} (n={int(runner['n_test'])}); the test set cannot resolve this difference "
                         "(overlap is conservative: the paired McNemar test decides when both saw the same images)")
                    if distinguishable is None:
                        distinguishable = False
                elif distinguishable is None:
                    distinguishable = True
            if not _isnan(margin) and margin == 0:
                warn("warning", "tie", f"the top two tie on {metric} ({_met(best[metric])}); the smaller/faster one is "
                     "listed first — the selection metric does not separate them")

        # ---------------- small test sets and 100% claims
        if not _isnan(n_test) and n_test < SMALL_TEST and not _isnan(best["test_acc"]):
            lo, hi = best["test_acc_lo"], best["test_acc_hi"]
            warn("warning", "small_test",
                 f"small test set (n={int(n_test)} images): the winner's test accuracy {_pct(best['test_acc'])} has a "
                 f"95% Wilson interval {_ci(lo, hi)}, {100 * (hi - lo):.1f} points wide, and one image is "
                 f"{100 / n_test:.1f} points; differences between runs smaller than that are not resolved "
                 f"(use ≥ {SMALL_TEST} test images, or cross-validation)")
        perfect = fin[(fin["test_acc"] >= 1.0 - 1e-9) & fin["n_test"].notna()]
        for n, g in perfect.groupby("n_test"):
            lo = wilson_interval(n, n)[0]
            who = ", ".join(f"`{r}`" for r in g["run_id"].tolist()[:8])
            warn("warning", "perfect",
                 f"100% on n={int(n)} means the true accuracy is ≥ {100 * lo:.1f}% at 95% confidence (Wilson), "
                 f"not that the model is perfect; {len(g)} run(s) at 100% ({who})"
                 + (" cannot be ranked against each other by this test set" if len(g) > 1 else ""))
        n_val = best["n_val"]
        if not _isnan(n_val) and not _isnan(best["best_val_acc"]) and len(fin) > 1:
            vlo, vhi = wilson_interval(round(best["best_val_acc"] * n_val), n_val)
            level = "warning" if n_val < SMALL_TEST else "info"
            warn(level, "selection",
                 f"the winner was picked on validation accuracy among {len(fin)} runs (n_val={int(n_val)}, "
                 f"95% interval of its val accuracy {_ci(vlo, vhi)}): the best of many noisy scores is optimistic; "
                 "quote the test accuracy, not the val accuracy")

        # ---------------- overfitting
        gap = fin[fin["train_val_gap"] > GAP_OVERFIT]
        for _, row in gap.iterrows():
            warn("warning", "overfit",
                 f"overfitting: `{row['run_id']}` ({labels[row['run_id']]}) trains at "
                 f"{_pct(row['best_val_acc'] + row['train_val_gap'])} but validates at {_pct(row['best_val_acc'])} "
                 f"at its best epoch (train–val gap {100 * row['train_val_gap']:.1f} points > {100 * GAP_OVERFIT:.0f})")
        for _, row in fin.iterrows():
            rise = _val_loss_rise(by_id[row["run_id"]].get("history") or [])
            if rise:
                warn("info", "val_loss_rise",
                     f"`{row['run_id']}` ({labels[row['run_id']]}): val loss rose {100 * rise[1]:.0f}% after epoch "
                     f"{rise[0]} while train loss kept falling — the overfitting signature (the best-val checkpoint "
                     "is what was tested)")
        if not _isnan(best.get("best_epoch", math.nan)) and "epochs_run" in best and not _isnan(best["epochs_run"]) \
                and best["best_epoch"] == best["epochs_run"] and best["epochs_run"] > 1:
            warn("info", "last_epoch", f"the winner's best epoch was its last ({int(best['epochs_run'])}): "
                 "it may not have converged; more epochs might help")

        # ---------------- data problems reported by the runs
        dups: dict[str, list[str]] = {}
        other: dict[str, list[str]] = {}
        for r in runs:
            for w in r.get("warnings") or []:
                (dups if DUPLICATE_RE.search(str(w)) else other).setdefault(str(w), []).append(str(r.get("id")))
        for text, ids in dups.items():
            level = "critical" if "test" in text else "warning"
            m = re.match(r"\s*(\d+) test image", text)
            share = ""
            if m and not _isnan(n_test) and n_test > 0:
                share = (f"; up to {100 * int(m.group(1)) / n_test:.1f} points of the test accuracy (of n={int(n_test)}) "
                         "may come from memorised copies — remove them from test, or dedupe before splitting")
            warn(level, "duplicates", f"duplicates between splits: {text} (reported by {len(ids)} run(s)){share}")
        for text, ids in other.items():
            warn("info", "data", f"{text} (reported by {len(ids)} run(s))")
        odd = fin[fin["trainable_params"] > fin["total_params"]]
        for _, row in odd.iterrows():
            warn("warning", "params", f"`{row['run_id']}` reports more trainable ({_count(row['trainable_params'])}) "
                 f"than total parameters ({_count(row['total_params'])}): the counts are wrong")
        if len(fin) > 1 and fin["test_acc"].notna().sum() > 1 and not _isnan(best["test_acc"]):
            by_test = fin.sort_values("test_acc", ascending=False)
            if by_test.iloc[0]["run_id"] != best_id and by_test.iloc[0]["test_acc"] > best["test_acc"]:
                rank = int(np.where(by_test["run_id"].values == best_id)[0][0]) + 1
                warn("info", "val_test_rank",
                     f"the winner on {metric} is #{rank} on test accuracy (best on test: "
                     f"`{by_test.iloc[0]['run_id']}` at {_pct(by_test.iloc[0]['test_acc'])}); do not re-pick the "
                     "winner on the test set — that would make the test score optimistic too")
        multi = [g for g in seed_groups if g["n"] >= 2]
        if not multi and len(fin) > 1:
            warn("info", "seeds", "every configuration ran with one seed: the seed-to-seed spread is unknown, so a "
                 "small difference between configurations may be noise (repeat the top configurations with 3+ seeds)")
        best_group = next((g for g in seed_groups if g["_group"] == best["_group"]), None)
        if best_group and runner is not None and not _isnan(best_group[f"{metric}_std"]) \
                and abs(margin) < best_group[f"{metric}_std"]:
            warn("warning", "seeds", f"the winner's lead on {metric} ({abs(margin):.4f}) is smaller than its own "
                 f"seed-to-seed std ({best_group[f'{metric}_std']:.4f}, {best_group['n']} seeds)")

        # ---------------- verdict
        def recipe(row) -> str:
            hp = hp_text(row)
            return f"**{row['model']} / {row['strategy']}**" + (f" ({hp})" if hp else "")

        line1 = (f"Winner: {recipe(best)}, run `{best_id}`: {metric} {_met(best[metric])}"
                 + (f", test accuracy {_pct(best['test_acc'])} {_ci(best['test_acc_lo'], best['test_acc_hi'])} "
                    f"(95% Wilson, n={int(n_test)})" if not _isnan(best["test_acc"]) and not _isnan(n_test) else
                    (f", test accuracy {_pct(best['test_acc'])}" if not _isnan(best["test_acc"]) else "")) + ".")
        verdict_lines.append(line1)
        if best_group:
            verdict_lines.append(f"Over {best_group['n']} seeds this configuration scores {metric} "
                                 f"{best_group[f'{metric}_mean']:.4f} ± {best_group[f'{metric}_std']:.4f} "
                                 f"(test {_pct(best_group['test_acc_mean'])} ± {100 * best_group['test_acc_std']:.1f}).")
        if runner is None:
            verdict_lines.append("No runner-up: only one configuration finished, so nothing was compared.")
        else:
            lead = f"tied on {metric}" if margin == 0 else f"winner leads by {abs(margin):.4f}"
            on_test = ""
            if not _isnan(test_margin):
                on_test = ("; same test accuracy" if test_margin == 0 else
                           f"; on test the winner is {abs(100 * test_margin):.1f} points "
                           f"{'ahead' if test_margin > 0 else 'behind'}")
            verdict_lines.append(f"Runner-up: {recipe(runner)}, run `{runner_id}`: {metric} {_met(runner[metric])} "
                                 f"({lead}{on_test}).")
        against = []
        if runner is not None and distinguishable is False:
            against.append("the top two are not distinguishable" + (f" ({paired_note})" if mc else
                                                                   " (95% intervals overlap)"))
        if runner is not None and distinguishable is None:
            against.append("the difference could not be tested (no test accuracy)")
        if not _isnan(n_test) and n_test < SMALL_TEST:
            against.append(f"small test set (n={int(n_test)}, interval {100 * (best['test_acc_hi'] - best['test_acc_lo']):.1f} points wide)")
        if _isnan(best["test_acc"]):
            against.append("the winner has no test accuracy")
        if any(w["kind"] == "duplicates" and w["level"] == "critical" for w in warnings):
            against.append("test images duplicated in train inflate test accuracy")
        if best["train_val_gap"] > GAP_OVERFIT:
            against.append(f"the winner overfits (train–val gap {100 * best['train_val_gap']:.1f} points)")
        if runner is not None and distinguishable is False:
            trust = "LOW — do not trust the ranking"
            inf = lambda v: np.inf if _isnan(v) else v  # noqa: E731
            cheaper = min((best, runner), key=lambda r: (inf(r["model_size_mb"]), inf(r["trainable_params"]),
                                                         inf(r["train_time_s"])))
            tail = (f"; treat as a tie and prefer the cheaper `{cheaper['run_id']}` ({cheaper['model']}/"
                    f"{cheaper['strategy']}: {_num(cheaper['model_size_mb'], '{:.1f}')} MB, "
                    f"{_count(cheaper['trainable_params'])} trainable parameters, "
                    f"{_num(cheaper['train_time_s'], '{:.0f}')} s of training)")
        elif against:
            trust, tail = "MODERATE — trust with the caveats", ""
        else:
            trust = "HIGH"
            tail = f" ({paired_note})" if mc else (" (95% intervals do not overlap)" if runner is not None else "")
        verdict_lines.append(f"Trust: {trust}" + (": " + "; ".join(against) if against else "") + tail + ".")
        if perfect.shape[0]:
            n0 = perfect["n_test"].iloc[0]
            verdict_lines.append(f"100% test accuracy on n={int(n0)} only shows ≥ {100 * wilson_interval(n0, n0)[0]:.1f}% "
                                 "at 95% confidence.")
        verdict_lines = verdict_lines[:5]

        # ---------------- importance
        imp = importance(fin, [k for k in varying], metric)

    # =================================================================== document
    doc.h(2, "Verdict", "verdict")
    doc.verdict(verdict_lines)
    order = {"critical": 0, "warning": 1, "info": 2}
    warnings.sort(key=lambda w: order.get(w["level"], 3))
    doc.h(2, f"What a careful reviewer would say ({len(warnings)})", "warnings")
    if warnings:
        doc.bullets([(w["level"], w["text"]) for w in warnings], cls="warnings")
    else:
        doc.p("Nothing to flag.")

    if not fin.empty:
        # comparison by model x strategy
        doc.h(2, "Comparison by model × strategy", "comparison")
        cells = fin.groupby(["model", "strategy"], sort=False)
        header = ["model", "strategy", "runs", "best run", metric] + (["val acc"] if metric != "best_val_acc" else []) + \
                 ["test acc", "95% CI", "n test", "macro F1", "trainable", "total", "size MB", "train–val gap",
                  "train s"]
        rows = []
        for (m, s), g in cells:
            r = g.iloc[0]
            rows.append([m, s, str(len(g)), str(r["run_id"]), _met(r[metric])]
                        + ([_pct(r["best_val_acc"])] if metric != "best_val_acc" else [])
                        + [_pct(r["test_acc"]), _ci(r["test_acc_lo"], r["test_acc_hi"]), _num(r["n_test"]),
                           _num(r["test_f1_macro"], "{:.3f}"), _count(r["trainable_params"]), _count(r["total_params"]),
                           _num(r["model_size_mb"], "{:.1f}"), _num(r["train_val_gap"], "{:+.3f}"),
                           _num(r["train_time_s"], "{:.0f}")])
        doc.table(header, rows, highlight=0,
                  note=f"Best run of each cell by {metric}, sorted by it. 95% CI: Wilson score interval of the test "
                       "accuracy. Gap: train accuracy − val accuracy at the best epoch.")

        doc.h(2, "All finished runs", "runs")
        header = ["run", "model", "strategy", *shown_hp, metric, "test acc", "95% CI", "macro F1", "gap", "epochs run",
                  "size MB"] + (["latency ms"] if latency else [])
        rows = []
        for _, r in fin.head(MAX_TABLE_ROWS).iterrows():
            rows.append([str(r["run_id"]), r["model"], r["strategy"], *[_hp(r[k]) for k in shown_hp], _met(r[metric]),
                         _pct(r["test_acc"]), _ci(r["test_acc_lo"], r["test_acc_hi"]),
                         _num(r["test_f1_macro"], "{:.3f}"), _num(r["train_val_gap"], "{:+.3f}"),
                         _num(r.get("epochs_run", math.nan)), _num(r["model_size_mb"], "{:.1f}")]
                        + ([_num(r["latency_ms"], "{:.1f}")] if latency else []))
        doc.table(header, rows, highlight=0,
                  note=None if len(fin) <= MAX_TABLE_ROWS else f"first {MAX_TABLE_ROWS} of {len(fin)}; all in runs.csv")

        doc.h(2, "Seeds: runs that differ only in seed", "seeds")
        if seed_groups:
            header = ["configuration", "runs", "seeds", f"{metric} mean ± std", "test acc mean ± std",
                      "macro F1 mean ± std"]
            rows = []
            for g in seed_groups:
                cfg = ", ".join(f"{k}={_hp(v)}" for k, v in g["config"].items()) or "(all the same)"
                rows.append([cfg, str(g["n"]), ", ".join(_hp(s) for s in g["seeds"]),
                             f"{g[f'{metric}_mean']:.4f} ± {_num(g[f'{metric}_std'], '{:.4f}')}",
                             f"{_pct(g['test_acc_mean'])} ± {_num(100 * g['test_acc_std'], '{:.1f}')}",
                             f"{_num(g['test_f1_macro_mean'], '{:.3f}')} ± {_num(g['test_f1_macro_std'], '{:.3f}')}"])
            doc.table(header, rows, note="Grouped by every config key except seed and bookkeeping keys "
                                         f"({', '.join(sorted(NOISE_KEYS - {'seed'}))}); std is the sample std (ddof=1).")
        else:
            doc.p("Every configuration ran with a single seed: no seed-to-seed spread is available.")

    # curves
    ordered = [by_id[i] for i in fin["run_id"]] + [r for r in runs if r.get("id") not in set(fin["run_id"])]
    png = _curves_plot(ordered, labels)
    if png:
        doc.h(2, "Training curves", "curves")
        n_hist = sum(1 for r in ordered if r.get("history"))
        if n_hist > MAX_CURVE_RUNS:
            doc.p(f"Showing the first {MAX_CURVE_RUNS} of {n_hist} runs with curves (best first); all runs are "
                  "overlaid in the next figure.")
        _save(out, "curves.png", png, plots)
        doc.image("curves.png", png, "loss and accuracy per epoch, train and val, best runs first")
        over = _overlay_plot(ordered, metric)
        if over:
            _save(out, "curves_all.png", over, plots)
            doc.image("curves_all.png", over, "val loss and val accuracy of every run")

    if not fin.empty:
        best_run = by_id[best_id]
        cmc = _confusion(best_run)
        doc.h(2, f"Best run `{best_id}`: errors by class", "best")
        if cmc is not None:
            png = _confusion_plot(cmc[0], cmc[1], f"confusion matrix of {labels[best_id]} (test)")
            _save(out, "confusion_matrix.png", png, plots)
            doc.image("confusion_matrix.png", png, f"test confusion matrix of {best_id} (counts; colour = row share)")
        pcs = _per_class(best_run, cmc)
        if pcs:
            rows = [[str(p.get("class")), _num(p.get("precision"), "{:.3f}"), _num(p.get("recall"), "{:.3f}"),
                     _num(p.get("f1"), "{:.3f}"), _num(p.get("support"))] for p in pcs]
            doc.table(["class", "precision", "recall", "F1", "support"], rows,
                      note="Per-class metrics on the test set; with few images per class, each error moves recall "
                           "by 1/support.")
        if cmc is None and not pcs:
            doc.p("This run recorded no test predictions, confusion matrix or per-class metrics.")

        png = _tradeoff_plot(fin, metric, maximize, bool(latency))
        doc.h(2, "Accuracy against cost", "tradeoff")
        if png:
            _save(out, "tradeoff.png", png, plots)
            doc.image("tradeoff.png", png, f"{metric} against model size" + (" and CPU latency" if latency else ""))
            front = fin[fin["pareto_size"]].sort_values("model_size_mb")
            doc.p("Pareto front (size): " + ", ".join(f"`{r['run_id']}` {r['model']}/{r['strategy']} "
                                                     f"{_num(r['model_size_mb'], '{:.1f}')} MB → {_met(r[metric])}"
                                                     for _, r in front.iterrows()))
            if latency:
                front = fin[fin["pareto_latency"]].sort_values("latency_ms")
                doc.p("Pareto front (latency): " + ", ".join(f"`{r['run_id']}` {_num(r['latency_ms'], '{:.1f}')} ms → "
                                                            f"{_met(r[metric])}" for _, r in front.iterrows()))
        else:
            doc.p("No model sizes recorded.")

        doc.h(2, "Swept parameters", "params")
        if varying:
            png = _params_plot(fin, varying, metric)
            if png:
                _save(out, "params.png", png, plots)
                doc.image("params.png", png, f"{metric} against each parameter that varies across runs")
            if imp:
                rows = [[r["key"], r["kind"], r["method"], _num(r["importance"], "{:.2f}"), r["direction"],
                         _num(r["p_value"], "{:.3g}"), str(r["levels"]), str(r["n"])] for r in imp]
                doc.table(["parameter", "kind", "method", "importance", "direction", "p", "levels", "runs"], rows)
            doc.p("Importance is descriptive, one parameter at a time over the finished runs: |Spearman rank "
                  "correlation| between a numeric parameter and the metric; for a categorical one, eta² = the share "
                  "of the metric's variance that lies between its levels (SS_between / SS_total). Both ignore "
                  "interactions, and eta² is inflated when levels have one run each.", cls="note")
        else:
            doc.p("No parameter varies across the finished runs.")

    if len(bad):
        doc.h(2, f"Runs that did not finish ({len(bad)})", "failed")
        rows = [[str(r["run_id"]), str(r["state"]), labels.get(r["run_id"], ""),
                 ("" if _isnan(r.get("error")) or not r.get("error") else str(r["error"])[:240])] for _, r in bad.iterrows()]
        doc.table(["run", "state", "recipe", "error"], rows)

    doc.h(2, "Methods", "methods")
    doc.bullets([
        "Test accuracy k/n gets a 95% Wilson score interval: (p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n), z=1.96.",
        "Two runs tested on the same images are compared with the exact McNemar test: a two-sided binomial test "
        "(scipy.stats.binomtest) of b out of b+c at 1/2, where b and c count the images exactly one of the two gets right.",
        f"The winner is the finished run with the best `{metric}` ({goal}); ties go to the smaller model. The runner-up "
        "is the best run of a different configuration (not just another seed).",
        f"Seed aggregation groups runs by every config key except {', '.join(sorted(NOISE_KEYS))}.",
        "Pareto front: runs no other run beats on both the metric and the cost (size, latency).",
        f"Overfitting flag: train accuracy − val accuracy at the best epoch > {GAP_OVERFIT:.2f}; "
        "also noted when val loss rises > 10% from its minimum while train loss keeps falling.",
    ])

    # =================================================================== files
    csv_df = df.copy()
    if not fin.empty:
        for col in ("pareto_size", "pareto_latency"):
            csv_df[col] = False
            csv_df.loc[fin.index, col] = fin[col].astype(bool)
        csv_df["rank"] = math.nan
        csv_df.loc[fin.index, "rank"] = range(1, len(fin) + 1)
    csv_df = csv_df.drop(columns=[c for c in csv_df if c.startswith("_")])
    paths = {"runs_csv": str(out / "runs.csv"), "report_md": str(out / "report.md"),
             "report_html": str(out / "report.html")}
    csv_df.to_csv(paths["runs_csv"], index=False)
    Path(paths["report_md"]).write_text("\n".join(doc.md))
    page = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>"
            + html.escape(title or "Fine-tuning sweep report") + f"</title><style>{CSS}</style></head><body>"
            + "\n".join(doc.html) + "</body></html>\n")
    Path(paths["report_html"]).write_text(page)

    return {"verdict": "\n".join(verdict_lines), "best_run_id": best_id, "runner_up_id": runner_id,
            "warnings": [w["text"] for w in warnings], "warning_details": warnings,
            "mcnemar": mc, "seed_groups": [{k: v for k, v in g.items() if k != "_group"} for g in seed_groups],
            "pareto_size": pareto_ids, "importance": imp, "metric": metric, "goal": goal,
            "n_runs": len(df), "n_finished": len(fin), "paths": paths, "plots": plots, **paths}


def _save(out: Path, name: str, png: bytes, plots: dict):
    (out / name).write_bytes(png)
    plots[name.rsplit(".", 1)[0]] = str(out / name)
