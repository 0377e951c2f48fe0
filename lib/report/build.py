"""build_report: read a sweep's runs, review them, write runs.csv, report.md and report.html."""
from __future__ import annotations

import contextlib
import html
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lib.report.page import CSS, Doc, ci, count, hp, isnan, met, num, pct
from lib.report.plots import (MAX_CURVE_RUNS, _confusion_plot, _curves_plot, _overlay_plot, _params_plot,
                              _tradeoff_plot)
from lib.report.sources import _read_json, _scalar, load_local, load_wandb, runs_frame
from lib.report.stats import importance, mcnemar, pareto_front, wilson_interval

# Config keys that are bookkeeping, not part of the recipe: they never define a "configuration".
NOISE_KEYS = {"seed", "run_id", "run_name", "runs_dir", "cache_dir", "group", "tags", "project", "entity",
              "device", "num_workers", "log_model", "wandb_version", "config",
              "feature_cache", "cache_memory_mb", "shared_cache_dir"}   # caches are exact: not the recipe
SMALL_TEST = 200          # below this many test images, say how wide the interval is
GAP_OVERFIT = 0.10        # train acc - val acc at the best epoch
ALPHA = 0.05
MAX_TABLE_ROWS = 100
DUPLICATE_RE = re.compile(r"exact cop|duplicate", re.I)


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
    for c in ("test_acc", "test_f1_macro", "trainable_params", "total_params", "model_size_mb",
              "train_val_gap", "train_time_s", "best_val_acc", metric, "n_test", "n_val"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["test_k"] = (df["test_acc"] * df["n_test"]).round()
    intervals = [wilson_interval(k, n) for k, n in zip(df["test_k"], df["n_test"])]
    df["test_acc_lo"] = [c[0] for c in intervals]
    df["test_acc_hi"] = [c[1] for c in intervals]

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
        keys = shown_hp or [k for k in ("lr",) if k in row and not isnan(row[k])]
        return ", ".join(f"{k}={hp(row[k])}" for k in keys if k in row and not isnan(row[k]))

    labels = {}
    for _, row in df.iterrows():
        params = hp_text(row)
        labels[row["run_id"]] = f"{row['model']}/{row['strategy']}" + (f" {params}" if params else "") + f" [{row['run_id']}]"
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
        err = "" if isnan(err) or not err else f": {str(err)[:300]}"
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
            if not any(isnan(v) for v in (lo1, hi1, lo2, hi2)):
                overlap = lo1 <= hi2 and lo2 <= hi1
                if overlap:
                    warn("warning", "wilson_overlap",
                         f"the 95% Wilson intervals of the top two overlap: winner {pct(best['test_acc'])} "
                         f"{ci(lo1, hi1)} (n={int(best['n_test'])}) vs runner-up {pct(runner['test_acc'])} "
                         f"{ci(lo2, hi2)} (n={int(runner['n_test'])}); the test set cannot resolve this difference "
                         "(overlap is conservative: the paired McNemar test decides when both saw the same images)")
                    if distinguishable is None:
                        distinguishable = False
                elif distinguishable is None:
                    distinguishable = True
            if not isnan(margin) and margin == 0:
                warn("warning", "tie", f"the top two tie on {metric} ({met(best[metric])}); the smaller/faster one is "
                     "listed first — the selection metric does not separate them")

        # ---------------- small test sets and 100% claims
        if not isnan(n_test) and n_test < SMALL_TEST and not isnan(best["test_acc"]):
            lo, hi = best["test_acc_lo"], best["test_acc_hi"]
            warn("warning", "small_test",
                 f"small test set (n={int(n_test)} images): the winner's test accuracy {pct(best['test_acc'])} has a "
                 f"95% Wilson interval {ci(lo, hi)}, {100 * (hi - lo):.1f} points wide, and one image is "
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
        if not isnan(n_val) and not isnan(best["best_val_acc"]) and len(fin) > 1:
            vlo, vhi = wilson_interval(round(best["best_val_acc"] * n_val), n_val)
            level = "warning" if n_val < SMALL_TEST else "info"
            warn(level, "selection",
                 f"the winner was picked on validation accuracy among {len(fin)} runs (n_val={int(n_val)}, "
                 f"95% interval of its val accuracy {ci(vlo, vhi)}): the best of many noisy scores is optimistic; "
                 "quote the test accuracy, not the val accuracy")

        # ---------------- overfitting
        gap = fin[fin["train_val_gap"] > GAP_OVERFIT]
        for _, row in gap.iterrows():
            warn("warning", "overfit",
                 f"overfitting: `{row['run_id']}` ({labels[row['run_id']]}) trains at "
                 f"{pct(row['best_val_acc'] + row['train_val_gap'])} but validates at {pct(row['best_val_acc'])} "
                 f"at its best epoch (train–val gap {100 * row['train_val_gap']:.1f} points > {100 * GAP_OVERFIT:.0f})")
        for _, row in fin.iterrows():
            rise = _val_loss_rise(by_id[row["run_id"]].get("history") or [])
            if rise:
                warn("info", "val_loss_rise",
                     f"`{row['run_id']}` ({labels[row['run_id']]}): val loss rose {100 * rise[1]:.0f}% after epoch "
                     f"{rise[0]} while train loss kept falling — the overfitting signature (the best-val checkpoint "
                     "is what was tested)")
        if not isnan(best.get("best_epoch", math.nan)) and "epochs_run" in best and not isnan(best["epochs_run"]) \
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
            if m and not isnan(n_test) and n_test > 0:
                share = (f"; up to {100 * int(m.group(1)) / n_test:.1f} points of the test accuracy (of n={int(n_test)}) "
                         "may come from memorised copies — remove them from test, or dedupe before splitting")
            warn(level, "duplicates", f"duplicates between splits: {text} (reported by {len(ids)} run(s)){share}")
        for text, ids in other.items():
            warn("info", "data", f"{text} (reported by {len(ids)} run(s))")
        odd = fin[fin["trainable_params"] > fin["total_params"]]
        for _, row in odd.iterrows():
            warn("warning", "params", f"`{row['run_id']}` reports more trainable ({count(row['trainable_params'])}) "
                 f"than total parameters ({count(row['total_params'])}): the counts are wrong")
        if len(fin) > 1 and fin["test_acc"].notna().sum() > 1 and not isnan(best["test_acc"]):
            by_test = fin.sort_values("test_acc", ascending=False)
            if by_test.iloc[0]["run_id"] != best_id and by_test.iloc[0]["test_acc"] > best["test_acc"]:
                rank = int(np.where(by_test["run_id"].values == best_id)[0][0]) + 1
                warn("info", "val_test_rank",
                     f"the winner on {metric} is #{rank} on test accuracy (best on test: "
                     f"`{by_test.iloc[0]['run_id']}` at {pct(by_test.iloc[0]['test_acc'])}); do not re-pick the "
                     "winner on the test set — that would make the test score optimistic too")
        multi = [g for g in seed_groups if g["n"] >= 2]
        if not multi and len(fin) > 1:
            warn("info", "seeds", "every configuration ran with one seed: the seed-to-seed spread is unknown, so a "
                 "small difference between configurations may be noise (repeat the top configurations with 3+ seeds)")
        best_group = next((g for g in seed_groups if g["_group"] == best["_group"]), None)
        if best_group and runner is not None and not isnan(best_group[f"{metric}_std"]) \
                and abs(margin) < best_group[f"{metric}_std"]:
            warn("warning", "seeds", f"the winner's lead on {metric} ({abs(margin):.4f}) is smaller than its own "
                 f"seed-to-seed std ({best_group[f'{metric}_std']:.4f}, {best_group['n']} seeds)")

        # ---------------- verdict
        def recipe(row) -> str:
            params = hp_text(row)
            return f"**{row['model']} / {row['strategy']}**" + (f" ({params})" if params else "")

        line1 = (f"Winner: {recipe(best)}, run `{best_id}`: {metric} {met(best[metric])}"
                 + (f", test accuracy {pct(best['test_acc'])} {ci(best['test_acc_lo'], best['test_acc_hi'])} "
                    f"(95% Wilson, n={int(n_test)})" if not isnan(best["test_acc"]) and not isnan(n_test) else
                    (f", test accuracy {pct(best['test_acc'])}" if not isnan(best["test_acc"]) else "")) + ".")
        verdict_lines.append(line1)
        if best_group:
            verdict_lines.append(f"Over {best_group['n']} seeds this configuration scores {metric} "
                                 f"{best_group[f'{metric}_mean']:.4f} ± {best_group[f'{metric}_std']:.4f} "
                                 f"(test {pct(best_group['test_acc_mean'])} ± {100 * best_group['test_acc_std']:.1f}).")
        if runner is None:
            verdict_lines.append("No runner-up: only one configuration finished, so nothing was compared.")
        else:
            lead = f"tied on {metric}" if margin == 0 else f"winner leads by {abs(margin):.4f}"
            on_test = ""
            if not isnan(test_margin):
                on_test = ("; same test accuracy" if test_margin == 0 else
                           f"; on test the winner is {abs(100 * test_margin):.1f} points "
                           f"{'ahead' if test_margin > 0 else 'behind'}")
            verdict_lines.append(f"Runner-up: {recipe(runner)}, run `{runner_id}`: {metric} {met(runner[metric])} "
                                 f"({lead}{on_test}).")
        against = []
        if runner is not None and distinguishable is False:
            against.append("the top two are not distinguishable" + (f" ({paired_note})" if mc else
                                                                   " (95% intervals overlap)"))
        if runner is not None and distinguishable is None:
            against.append("the difference could not be tested (no test accuracy)")
        if not isnan(n_test) and n_test < SMALL_TEST:
            against.append(f"small test set (n={int(n_test)}, interval {100 * (best['test_acc_hi'] - best['test_acc_lo']):.1f} points wide)")
        if isnan(best["test_acc"]):
            against.append("the winner has no test accuracy")
        if any(w["kind"] == "duplicates" and w["level"] == "critical" for w in warnings):
            against.append("test images duplicated in train inflate test accuracy")
        if best["train_val_gap"] > GAP_OVERFIT:
            against.append(f"the winner overfits (train–val gap {100 * best['train_val_gap']:.1f} points)")
        if runner is not None and distinguishable is False:
            trust = "LOW — do not trust the ranking"
            inf = lambda v: np.inf if isnan(v) else v  # noqa: E731
            cheaper = min((best, runner), key=lambda r: (inf(r["model_size_mb"]), inf(r["trainable_params"]),
                                                         inf(r["train_time_s"])))
            tail = (f"; treat as a tie and prefer the cheaper `{cheaper['run_id']}` ({cheaper['model']}/"
                    f"{cheaper['strategy']}: {num(cheaper['model_size_mb'], '{:.1f}')} MB, "
                    f"{count(cheaper['trainable_params'])} trainable parameters, "
                    f"{num(cheaper['train_time_s'], '{:.0f}')} s of training)")
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
            rows.append([m, s, str(len(g)), str(r["run_id"]), met(r[metric])]
                        + ([pct(r["best_val_acc"])] if metric != "best_val_acc" else [])
                        + [pct(r["test_acc"]), ci(r["test_acc_lo"], r["test_acc_hi"]), num(r["n_test"]),
                           num(r["test_f1_macro"], "{:.3f}"), count(r["trainable_params"]), count(r["total_params"]),
                           num(r["model_size_mb"], "{:.1f}"), num(r["train_val_gap"], "{:+.3f}"),
                           num(r["train_time_s"], "{:.0f}")])
        doc.table(header, rows, highlight=0,
                  note=f"Best run of each cell by {metric}, sorted by it. 95% CI: Wilson score interval of the test "
                       "accuracy. Gap: train accuracy − val accuracy at the best epoch.")

        doc.h(2, "All finished runs", "runs")
        header = ["run", "model", "strategy", *shown_hp, metric, "test acc", "95% CI", "macro F1", "gap", "epochs run",
                  "size MB"] + (["latency ms"] if latency else [])
        rows = []
        for _, r in fin.head(MAX_TABLE_ROWS).iterrows():
            rows.append([str(r["run_id"]), r["model"], r["strategy"], *[hp(r[k]) for k in shown_hp], met(r[metric]),
                         pct(r["test_acc"]), ci(r["test_acc_lo"], r["test_acc_hi"]),
                         num(r["test_f1_macro"], "{:.3f}"), num(r["train_val_gap"], "{:+.3f}"),
                         num(r.get("epochs_run", math.nan)), num(r["model_size_mb"], "{:.1f}")]
                        + ([num(r["latency_ms"], "{:.1f}")] if latency else []))
        doc.table(header, rows, highlight=0,
                  note=None if len(fin) <= MAX_TABLE_ROWS else f"first {MAX_TABLE_ROWS} of {len(fin)}; all in runs.csv")

        doc.h(2, "Seeds: runs that differ only in seed", "seeds")
        if seed_groups:
            header = ["configuration", "runs", "seeds", f"{metric} mean ± std", "test acc mean ± std",
                      "macro F1 mean ± std"]
            rows = []
            for g in seed_groups:
                cfg = ", ".join(f"{k}={hp(v)}" for k, v in g["config"].items()) or "(all the same)"
                rows.append([cfg, str(g["n"]), ", ".join(hp(s) for s in g["seeds"]),
                             f"{g[f'{metric}_mean']:.4f} ± {num(g[f'{metric}_std'], '{:.4f}')}",
                             f"{pct(g['test_acc_mean'])} ± {num(100 * g['test_acc_std'], '{:.1f}')}",
                             f"{num(g['test_f1_macro_mean'], '{:.3f}')} ± {num(g['test_f1_macro_std'], '{:.3f}')}"])
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
            rows = [[str(p.get("class")), num(p.get("precision"), "{:.3f}"), num(p.get("recall"), "{:.3f}"),
                     num(p.get("f1"), "{:.3f}"), num(p.get("support"))] for p in pcs]
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
                                                     f"{num(r['model_size_mb'], '{:.1f}')} MB → {met(r[metric])}"
                                                     for _, r in front.iterrows()))
            if latency:
                front = fin[fin["pareto_latency"]].sort_values("latency_ms")
                doc.p("Pareto front (latency): " + ", ".join(f"`{r['run_id']}` {num(r['latency_ms'], '{:.1f}')} ms → "
                                                            f"{met(r[metric])}" for _, r in front.iterrows()))
        else:
            doc.p("No model sizes recorded.")

        doc.h(2, "Swept parameters", "params")
        if varying:
            png = _params_plot(fin, varying, metric)
            if png:
                _save(out, "params.png", png, plots)
                doc.image("params.png", png, f"{metric} against each parameter that varies across runs")
            if imp:
                rows = [[r["key"], r["kind"], r["method"], num(r["importance"], "{:.2f}"), r["direction"],
                         num(r["p_value"], "{:.3g}"), str(r["levels"]), str(r["n"])] for r in imp]
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
                 ("" if isnan(r.get("error")) or not r.get("error") else str(r["error"])[:240])] for _, r in bad.iterrows()]
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

