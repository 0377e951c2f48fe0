"""build_report: read a sweep's runs, review them, and write runs.csv, report.md and report.html."""
from __future__ import annotations

import contextlib
import html
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lib.cells import csv_cell
from lib.errors import ReportError
from lib.files import atomic_write, write_json
from lib.records import State
from lib.report.expected import MIN_TRIALS, study_curve
from lib.report.page import CSS, Doc, ci, count, hp, isnan, met, num, pct
from lib.report.plots import (
    MAX_CURVE_RUNS,
    confusion_plot,
    curves_plot,
    expected_best_plot,
    overlay_plot,
    params_plot,
    tradeoff_plot,
)
from lib.report.result import REPORT_JSON, assess, result
from lib.report.review import GAP_OVERFIT, LEVELS, Review, defaulted_goal, predictions, state_text
from lib.report.table import NOISE_KEYS, RunTable
from lib.selection import selection
from lib.sources import Source, resolve

MAX_TABLE_ROWS = 100
MAX_CLASSES = 1000        # a confusion matrix from labels alone (no class names recorded) stops here
PLOT_FILES = ("curves.png", "curves_all.png", "confusion_matrix.png", "tradeoff.png", "params.png", "expected_best.png")


def _labels(values) -> np.ndarray:
    """Recorded labels as ints, one by one; anything that is not an integer (a damaged record) is -1."""
    out = np.full(len(values), -1, dtype=np.int64)
    for i, v in enumerate(values):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and 0 <= v < 2**62:
            out[i] = int(v)
    return out


def _confusion(run: dict) -> tuple[np.ndarray, list[str], int] | None:
    """The test confusion matrix (recorded, else counted from the test predictions), its class
    names, and how many predictions were left out because a label is outside the classes (a
    damaged or edited record): those must neither crash the report nor land in another cell."""
    classes = [str(c) for c in run["classes"]] if isinstance(run.get("classes"), list) else []
    cm = run.get("confusion_matrix")
    if cm is not None:
        with contextlib.suppress(TypeError, ValueError, OverflowError):
            cm = np.asarray(cm, dtype=np.int64)
            if cm.ndim == 2 and cm.shape[0] == cm.shape[1] and cm.size and (cm >= 0).all():
                names = classes if len(classes) == cm.shape[0] else [str(i) for i in range(cm.shape[0])]
                return cm, names, 0
    if predictions(run) is None:
        return None
    # Label by label, not as one array: a single text label would make every label text.
    y_true, y_pred = (_labels(run["test_predictions"][k]) for k in ("y_true", "y_pred"))
    # Without class names, the labels seen in y_true are the classes (bounded: a plot of more is unreadable).
    n = len(classes) or min(int(y_true.max()) + 1, MAX_CLASSES)
    ok = (y_true >= 0) & (y_true < n) & (y_pred >= 0) & (y_pred < n)
    if n <= 0 or not ok.any():
        return None
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true[ok], y_pred[ok]), 1)
    return cm, classes or [str(i) for i in range(n)], int((~ok).sum())


def _per_class(run: dict, cmc) -> list[dict]:
    if isinstance(run.get("per_class"), list) and run["per_class"]:
        return [p for p in run["per_class"] if isinstance(p, dict)]
    if cmc is None:
        return []
    cm, classes = cmc[0], cmc[1]
    out = []
    for i, c in enumerate(classes):
        tp, support, predicted = cm[i, i], cm[i].sum(), cm[:, i].sum()
        p = tp / predicted if predicted else 0.0
        r = tp / support if support else 0.0
        out.append({"class": c, "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                    "support": int(support)})
    return out


def _load_source(source_runs, sweep: dict | None = None) -> tuple[list[dict], str, dict]:
    """The runs, a name for the source, and what the sweep says of itself ({"metric", "goal"} or {})."""
    if isinstance(source_runs, (str, Path, Source)):
        source = resolve(source_runs)
        return source.runs(), source.name, source.meta()
    runs, sweep = list(source_runs), sweep or {}
    return runs, sweep.get("source") or f"{len(runs)} run records", sweep


def build_report(source_runs, out_dir, metric: str | None = None, latency: dict | None = None,
                 goal: str | None = None, title: str | None = None, sweep: dict | None = None) -> dict:
    """Write runs.csv, report.md, report.html and the plots to ``out_dir``.

    ``source_runs``: a list of run dicts (from ``load_local``/``load_wandb``) or any SOURCE
    (``lib.sources``). ``metric``/``goal``: what ranks the runs (``lib.selection``). ``latency``: run_id ->
    CPU latency in ms (adds a latency/accuracy front). ``sweep``: with a list of runs, what sweep.json says
    of their sweep ({"metric", "goal", "source"}: a study read from a database, say). Raises ReportError (one
    line) on no runs or an unknown metric, before writing anything: an earlier report in ``out_dir`` stays as it was.
    Returns {"verdict", "best_run_id", "runner_up_id", "warnings", "paths", ...}."""
    runs, source, meta = _load_source(source_runs, sweep)
    if not runs:
        raise ReportError(f"no runs in {source}: expected a sweep dir (sweep.json and runs/), a runs dir "
                          "(<run_id>/run.json) or one run folder")
    sel = selection(meta, metric, goal, runs)
    metric, goal = sel.metric, sel.goal
    s, r = assess(runs, sel, {str(k): float(v) for k, v in (latency or {}).items()})
    if meta.get("goal_defaulted") and metric == meta.get("metric") and goal == meta.get("goal"):
        defaulted_goal(r, metric, goal)
    cmc = _confusion(s.by_id[r.best_id]) if r.best_id is not None else None
    if cmc is not None and cmc[2]:
        r.warn("warning", "labels", f"the winner's record has {cmc[2]} test prediction(s) with a label outside its "
               f"{len(cmc[1])} classes (damaged or edited?): left out of its confusion matrix")
        r.warnings.sort(key=lambda w: LEVELS.get(w["level"], 3))
    out = Path(out_dir)
    doc, files = Doc(), {}
    doc.h(1, title or "Fine-tuning sweep report")
    doc.p(f"Source: `{source}` · {len(s.df)} run(s): {state_text(s.df)} · selection metric: `{metric}` ({goal}) · "
          f"generated {time.strftime('%Y-%m-%d %H:%M')}", cls="meta")
    curve, more = study_curve(s, r)
    _verdict_section(doc, r, more)
    if not s.fin.empty:
        _tables(doc, s, r)
        _expected_section(doc, s, curve, more, files)
    _curves_section(doc, s, files)
    if not s.fin.empty:
        _best_section(doc, s, r, cmc, files)
        _tradeoff_section(doc, s, files)
        _params_section(doc, s, r, files)
    _failed_section(doc, s)
    _methods_section(doc, s)
    outcome = result(s, r, source)
    paths = _write(out, s, doc, title, files, outcome)
    plots = {name.rsplit(".", 1)[0]: str(out / name) for name in files}
    pareto = s.fin.loc[s.fin["pareto_size"], "run_id"].tolist() if not s.fin.empty else []
    return {"verdict": "\n".join(r.verdict), "best_run_id": r.best_id, "runner_up_id": r.runner_id,
            "warnings": [w["text"] for w in r.warnings], "warning_details": r.warnings, "mcnemar": r.mcnemar,
            "soups": r.soups, "seed_groups": [{k: v for k, v in g.items() if k != "_group"} for g in r.seed_groups],
            "pareto_size": pareto, "importance": r.importance, "metric": metric, "goal": goal,
            "other_data": s.other_data or [],
            "n_runs": len(s.df), "n_finished": len(s.fin), "trust": r.trust, "recommended": r.recommended,
            "expected_best": curve, "more_trials": more,
            "paths": paths, "plots": plots, **paths}


def _verdict_section(doc: Doc, r: Review, more: dict | None) -> None:
    doc.h(2, "Verdict", "verdict")
    doc.verdict(r.verdict)
    if more:
        doc.p(more["text"])
    if r.recommended:
        doc.p(f"Recommended: `{r.recommended['run_id']}`: {r.recommended['reason']} (report.json; `export` ships it).")
    doc.h(2, f"What a careful reviewer would say ({len(r.warnings)})", "warnings")
    if r.warnings:
        doc.bullets([(w["level"], w["text"]) for w in r.warnings], cls="warnings")
    else:
        doc.p("Nothing to flag.")


def _tables(doc: Doc, s: RunTable, r: Review) -> None:
    """The comparison by model x strategy, every finished run, and seed groups."""
    metric, fin = s.metric, s.fin
    doc.h(2, "Comparison by model × strategy", "comparison")
    header = ["model", "strategy", "runs", "best run", metric] + (["val acc"] if metric != "best_val_acc" else []) + \
             ["test acc", "95% CI", "n test", "test bal acc", "test MCC", "macro F1", "trainable", "total", "size MB",
              "train–val gap", "train s", "wall s"]
    rows = []
    for (m, st), g in fin.groupby(["model", "strategy"], sort=False):
        x = g.iloc[0]
        rows.append([m, st, str(len(g)), str(x["run_id"]), met(x[metric])]
                    + ([pct(x["best_val_acc"])] if metric != "best_val_acc" else [])
                    + [pct(x["test_acc"]), ci(x["test_acc_lo"], x["test_acc_hi"]), num(x["n_test"]),
                       pct(x["test_balanced_acc"]), num(x["test_mcc"], "{:.3f}"), num(x["test_f1_macro"], "{:.3f}"),
                       count(x["trainable_params"]), count(x["total_params"]),
                       num(x["model_size_mb"], "{:.1f}"), num(x["train_val_gap"], "{:+.3f}"),
                       num(x["train_time_s"], "{:.3g}"), num(x["wall_time_s"], "{:.3g}")])
    doc.table(header, rows, highlight=0,
              note=f"Best run of each cell by {metric}, sorted by it. 95% CI: Wilson score interval of the test "
                   "accuracy. Bal acc: recall averaged over classes (chance: 1/classes); MCC: Matthews correlation "
                   "(0: chance or one class predicted). Gap: train accuracy − val accuracy at the best epoch. Train s: "
                   "seconds in the training epochs (decoding, frozen features computed once, and testing not "
                   "counted: a cached freeze run may train in under a second); wall s: the whole run.")

    doc.h(2, "All finished runs", "runs")
    header = ["run", "model", "strategy", *s.shown_hp, metric, "test acc", "95% CI", "test bal acc", "test MCC",
              "macro F1", "gap", "epochs run", "size MB"] + (["latency ms"] if s.latency else [])
    rows = [[str(x["run_id"]), x["model"], x["strategy"], *[hp(x[k]) if s.reads(x, k) else "–" for k in s.shown_hp],
             met(x[metric]),
             pct(x["test_acc"]), ci(x["test_acc_lo"], x["test_acc_hi"]), pct(x["test_balanced_acc"]),
             num(x["test_mcc"], "{:.3f}"), num(x["test_f1_macro"], "{:.3f}"),
             num(x["train_val_gap"], "{:+.3f}"), num(x.get("epochs_run", math.nan)), num(x["model_size_mb"], "{:.1f}")]
            + ([num(x["latency_ms"], "{:.1f}")] if s.latency else []) for _, x in fin.head(MAX_TABLE_ROWS).iterrows()]
    doc.table(header, rows, highlight=0,
              note=("–: the run's strategy does not read the key (or the run is a soup)."
                    + ("" if len(fin) <= MAX_TABLE_ROWS
                       else f" First {MAX_TABLE_ROWS} of {len(fin)}; all in runs.csv.")))

    doc.h(2, "Seeds: runs that differ only in seed", "seeds")
    if not r.seed_groups:
        doc.p("Every configuration ran with a single seed: no seed-to-seed spread is available.")
        return
    header = ["configuration", "runs", "seeds", f"{metric} mean ± std", "test acc mean ± std", "macro F1 mean ± std"]
    rows = [[", ".join(f"{k}={hp(v)}" for k, v in g["config"].items()) or "(all the same)", str(g["n"]),
             ", ".join(hp(x) for x in g["seeds"]),
             f"{g[f'{metric}_mean']:.4f} ± {num(g[f'{metric}_std'], '{:.4f}')}",
             f"{pct(g['test_acc_mean'])} ± {num(100 * g['test_acc_std'], '{:.1f}')}",
             f"{num(g['test_f1_macro_mean'], '{:.3f}')} ± {num(g['test_f1_macro_std'], '{:.3f}')}"]
            for g in r.seed_groups]
    doc.table(header, rows, note="Grouped by every config key except seed and bookkeeping keys "
                                 f"({', '.join(sorted(NOISE_KEYS - {'seed'}))}); std is the sample std (ddof=1).")


def _expected_section(doc: Doc, s: RunTable, curve: list[dict], more: dict, files: dict) -> None:
    doc.h(2, "What more trials would buy", "expected")
    doc.p(more["text"])
    png = expected_best_plot(curve, s.metric, s.maximize, (more["from_n"], more["to_n"]) if more["flat"] is not None
                             else None) if len(curve) >= MIN_TRIALS else None
    if png:
        _image(doc, files, "expected_best.png", png,
               f"expected best {s.metric} of n trials, ± std, n = 1..{len(curve)}")
    picks = sorted({1, 2, 3, 5, len(curve) // 2, len(curve)} & set(range(1, len(curve) + 1)))
    doc.table(["trials n", f"expected best {s.metric}", "std"],
              [[str(n), met(curve[n - 1]["value"]), met(curve[n - 1]["std"])] for n in picks],
              note="All of n = 1..N in the result's `expected_best`.")
    doc.p(f"The expected best of n trials and its std are those of the best `{s.metric}` over every set of n of the "
          f"study's {len(curve)} finished runs (Dodge et al. 2019, with the unbiased estimator of Tang et al. 2020: "
          "drawn without replacement). Each finished run is one trial, seeds included; model soups are not trials. "
          "Configurations re-run with more seeds because they led, and adaptive samplers (TPE, hyperband), make the "
          "curve lean optimistic. Flattened: the gain from N/2 to N trials is below the larger of the pooled "
          "seed-to-seed std and half a point (1% of the value for a score outside [0, 1]).", cls="note")


def _curves_section(doc: Doc, s: RunTable, files: dict) -> None:
    finished = set(s.fin["run_id"])
    ordered = [s.by_id[i] for i in s.fin["run_id"]] + [x for x in s.runs if x.get("id") not in finished]
    png = curves_plot(ordered, s.labels)
    if not png:
        return
    doc.h(2, "Training curves", "curves")
    n_hist = sum(1 for x in ordered if x.get("history"))
    if n_hist > MAX_CURVE_RUNS:
        doc.p(f"Showing the first {MAX_CURVE_RUNS} of {n_hist} runs with curves (best first); all runs are "
              "overlaid in the next figure.")
    _image(doc, files, "curves.png", png, "loss and accuracy per epoch, train and val, best runs first")
    over = overlay_plot(ordered, s.metric)
    if over:
        _image(doc, files, "curves_all.png", over, "val loss and val accuracy of every run")


def _best_section(doc: Doc, s: RunTable, r: Review, cmc, files: dict) -> None:
    best_run = s.by_id[r.best_id]
    doc.h(2, f"Best run `{r.best_id}`: errors by class", "best")
    if cmc is not None:
        png = confusion_plot(cmc[0], cmc[1], f"confusion matrix of {s.labels[r.best_id]} (test)")
        _image(doc, files, "confusion_matrix.png", png,
               f"test confusion matrix of {r.best_id} (counts; colour = row share)")
    pcs = _per_class(best_run, cmc)
    if pcs:
        rows = [[str(p.get("class")), num(p.get("precision"), "{:.3f}"), num(p.get("recall"), "{:.3f}"),
                 num(p.get("f1"), "{:.3f}"), num(p.get("support"))] for p in pcs]
        unmeasured = [str(p.get("class")) for p in pcs if p.get("support") == 0]
        doc.table(["class", "precision", "recall", "F1", "support"], rows,
                  note="Per-class metrics on the test set; with few images per class, each error moves recall "
                       "by 1/support." + (f" Support 0 ({', '.join(unmeasured)}): no test image of the class, so its "
                                          "0s are a convention (scikit-learn's zero_division=0), not a measurement."
                                          if unmeasured else ""))
    if cmc is None and not pcs:
        doc.p("This run recorded no test predictions, confusion matrix or per-class metrics.")


def _tradeoff_section(doc: Doc, s: RunTable, files: dict) -> None:
    fin, metric = s.fin, s.metric
    png = tradeoff_plot(fin, metric, s.maximize, bool(s.latency))
    doc.h(2, "Accuracy against cost", "tradeoff")
    if not png:
        doc.p("No model sizes recorded.")
        return
    _image(doc, files, "tradeoff.png", png, f"{metric} against model size" + (" and CPU latency" if s.latency else ""))
    front = fin[fin["pareto_size"]].sort_values("model_size_mb")
    doc.p("Pareto front (size): " + ", ".join(f"`{x['run_id']}` {x['model']}/{x['strategy']} "
                                             f"{num(x['model_size_mb'], '{:.1f}')} MB → {met(x[metric])}"
                                             for _, x in front.iterrows()))
    if s.latency:
        front = fin[fin["pareto_latency"]].sort_values("latency_ms")
        doc.p("Pareto front (latency): " + ", ".join(f"`{x['run_id']}` {num(x['latency_ms'], '{:.1f}')} ms → "
                                                    f"{met(x[metric])}" for _, x in front.iterrows()))


def _params_section(doc: Doc, s: RunTable, r: Review, files: dict) -> None:
    doc.h(2, "Swept parameters", "params")
    if not s.varying:
        doc.p("No parameter varies across the finished runs.")
        return
    swept = s.swept()
    png = params_plot(swept, s.varying, s.metric)
    if png:
        _image(doc, files, "params.png", png, f"{s.metric} against each parameter that varies across runs")
    if r.importance:
        rows = [[x["key"], x["kind"], x["method"], num(x["importance"], "{:.2f}"), x["direction"],
                 num(x["p_value"], "{:.3g}"), str(x["levels"]), str(x["n"])] for x in r.importance]
        doc.table(["parameter", "kind", "method", "importance", "direction", "p", "levels", "runs"], rows)
    doc.p("Importance is descriptive, one parameter at a time over the finished runs: |Spearman rank "
          "correlation| between a numeric parameter and the metric; for a categorical one, eta² = the share "
          "of the metric's variance that lies between its levels (SS_between / SS_total). Both ignore "
          "interactions, and eta² is inflated when levels have one run each. A parameter counts only in the runs "
          "whose strategy reads it (freeze trains no backbone: its backbone_lr_mult is no level of anything), and "
          "a model soup is a candidate, not a level.", cls="note")


def _failed_section(doc: Doc, s: RunTable) -> None:
    bad = s.df[s.df["state"] != State.FINISHED]
    if not len(bad):
        return
    doc.h(2, f"Runs that did not finish ({len(bad)})", "failed")
    rows = [[str(x["run_id"]), str(x["state"]), s.labels.get(x["run_id"], ""),
             ("" if isnan(x.get("error")) or not x.get("error") else str(x["error"])[:240])] for _, x in bad.iterrows()]
    doc.table(["run", "state", "recipe", "error"], rows)


def _methods_section(doc: Doc, s: RunTable) -> None:
    doc.h(2, "Methods", "methods")
    doc.bullets([
        "Test accuracy k/n gets a 95% Wilson score interval: "
        "(p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n), z=1.96.",
        "Two runs tested on the same images are compared with the exact McNemar test: a two-sided binomial test "
        "(scipy.stats.binomtest) of b out of b+c at 1/2, where b and c count the images exactly one of the two "
        "gets right.",
        f"The winner is the finished run with the best `{s.metric}` ({s.goal}); ties go to the smaller model. "
        "The runner-up is the best run of a different configuration (not just another seed).",
        f"Seed aggregation groups runs by every config key except {', '.join(sorted(NOISE_KEYS))}, and except the "
        "keys a run's strategy does not read (lib.config declares which: a freeze run has no backbone_lr_mult).",
        "Runs trained on different data (another data_dir or class list) are not ranked together: the dataset "
        "with the most finished runs is ranked, the others are named in a critical warning.",
        "Pareto front: runs no other run beats on both the metric and the cost (size, latency).",
        f"Overfitting flag: train accuracy − val accuracy at the best epoch > {GAP_OVERFIT:.2f}; "
        "also noted when val loss rises > 10% from its minimum while train loss keeps falling.",
    ])


def _write(out: Path, s: RunTable, doc: Doc, title: str | None, files: dict[str, bytes], outcome: dict) -> dict:
    """Every file at the end, each one atomically: a report that fails on the way writes nothing, and
    plots an earlier report had but this one has not are removed (they would show other runs)."""
    csv_df = s.df.copy()
    if not s.fin.empty:
        for col in ("pareto_size", "pareto_latency"):
            csv_df[col] = False
            csv_df.loc[s.fin.index, col] = s.fin[col].astype(bool)
        csv_df["rank"] = math.nan
        csv_df.loc[s.fin.index, "rank"] = range(1, len(s.fin) + 1)
    csv_df = csv_df.drop(columns=[c for c in csv_df if c.startswith("_")])
    for col in csv_df.columns:   # names and errors from records (text columns): never formulas
        if not pd.api.types.is_numeric_dtype(csv_df[col]):
            csv_df[col] = csv_df[col].map(csv_cell)
    csv_df.columns = [csv_cell(str(c)) for c in csv_df.columns]   # config keys from records too (`=1+1`)
    page = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>"
            + html.escape(title or "Fine-tuning sweep report") + f"</title><style>{CSS}</style></head><body>"
            + "\n".join(doc.html) + "</body></html>\n")
    texts = {"runs.csv": csv_df.to_csv(index=False), "report.md": "\n".join(doc.md), "report.html": page}
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file, not a folder")
    for name, data in files.items():
        atomic_write(out / name, lambda tmp, data=data: Path(tmp).write_bytes(data))
    for name in set(PLOT_FILES) - set(files):
        (out / name).unlink(missing_ok=True)
    for name, text in texts.items():
        atomic_write(out / name, lambda tmp, text=text: Path(tmp).write_text(text))
    write_json(out / REPORT_JSON, outcome)
    return {"runs_csv": str(out / "runs.csv"), "report_md": str(out / "report.md"),
            "report_html": str(out / "report.html"), "report_json": str(out / REPORT_JSON)}


def _image(doc: Doc, files: dict, name: str, png: bytes, alt: str) -> None:
    files[name] = png
    doc.image(name, png, alt)
