"""What a careful reviewer would say about a sweep: the winner, the runner-up, whether the test set
can tell them apart, and every warning (failed runs, small test sets, 100% claims, overfitting,
duplicates between splits, imbalanced classes ranked by plain accuracy, seeds), then a verdict of at
most five lines."""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lib.recipes import strategy_uses
from lib.records import IMBALANCED_RATIO, METRIC_GOALS, State
from lib.report import datasets
from lib.report.page import ci, count, isnan, met, num, pct, time_text
from lib.report.stats import holm, importance, mcnemar, wilson_interval
from lib.report.table import RunTable

SMALL_TEST = 200          # below this many test images, say how wide the interval is
GAP_OVERFIT = 0.10        # train acc - val acc at the best epoch
ALPHA = 0.05
DUPLICATE_RE = re.compile(r"exact cop|duplicate", re.I)
LEVELS = {"critical": 0, "warning": 1, "info": 2}
PLAIN_ACCURACY = ("best_val_acc", "val_acc", "test_acc")   # selection metrics blind to that
TRUST = {"HIGH": "HIGH", "MEDIUM": "MEDIUM — trust with the caveats", "LOW": "LOW — do not trust the ranking"}


@dataclass
class Review:
    warnings: list[dict] = field(default_factory=list)    # {"level", "kind", "text"}, most serious first
    verdict: list[str] = field(default_factory=list)
    best_id: str | None = None
    runner_id: str | None = None
    seed_groups: list[dict] = field(default_factory=list)
    mcnemar: dict | None = None
    distinguishable: bool | None = None
    paired_note: str = ""
    importance: list[dict] = field(default_factory=list)
    soups: list[dict] = field(default_factory=list)       # each soup against its best single ingredient
    trust: str | None = None                              # HIGH | MEDIUM | LOW
    recommended: dict | None = None                       # {"run_id", "reason"}: the run to ship

    def warn(self, level: str, kind: str, text: str) -> None:
        self.warnings.append({"level": level, "kind": kind, "text": text})


def predictions(run: dict):
    preds = run.get("test_predictions") or {}
    yt, yp = preds.get("y_true"), preds.get("y_pred")
    if yt is None or yp is None or len(yt) != len(yp) or len(yt) == 0:
        return None
    return np.asarray(yt), np.asarray(yp)


def _same_test_set(a: dict, b: dict) -> tuple[bool, str]:
    pa, pb = predictions(a), predictions(b)
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


def _val_loss_rise(history: list[dict]) -> tuple[int, float] | None:
    """(epoch of min val loss, relative rise at the end) when val loss rose > 10% while train loss fell."""
    h = [r for r in history
         if isinstance(r.get("val_loss"), (int, float)) and isinstance(r.get("train_loss"), (int, float))
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


def review(s: RunTable) -> Review:
    r = Review()
    _run_states(s, r)
    if s.fin.empty:
        states = state_text(s.df)
        r.verdict = ([f"No run finished with a value of `{s.metric}`: there is no winner ({len(s.df)} run(s): "
                      f"{states}).", "Fix the errors listed below and run the sweep again."]
                     if len(s.df) else ["No runs found: nothing to report."])
        r.warn("critical", "no_finished", "no finished run: nothing can be compared")
    else:
        best = s.fin.iloc[0]
        others = s.fin[s.fin["_group"] != best["_group"]]
        runner = others.iloc[0] if len(others) else None
        r.best_id, r.runner_id = best["run_id"], (runner["run_id"] if runner is not None else None)
        r.seed_groups = _seed_groups(s)
        if runner is not None:
            _top_two(s, r, best, runner)
        perfect = _test_size(s, r, best)
        _overfitting(s, r, best)
        _data(s, r, best)
        _imbalance(s, r)
        for warning in (*datasets.other_data(s.data, s.other_data), *datasets.unmeasured_classes(s.by_id, s.fin)):
            r.warn(*warning)
        _seeds(s, r, best, runner)
        _soups(s, r)
        r.verdict = _verdict(s, r, best, runner, perfect)
        r.importance = importance(s.swept(), list(s.varying), s.metric)
    r.warnings.sort(key=lambda w: LEVELS.get(w["level"], 3))
    return r


def state_text(df: pd.DataFrame) -> str:
    counts = df["state"].value_counts().to_dict() if len(df) else {}
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no runs"


def _run_states(s: RunTable, r: Review) -> None:
    bad = s.df[s.df["state"] != State.FINISHED]
    pruned = bad[bad["state"] == State.PRUNED]
    if len(pruned):
        ids = ", ".join(f"`{i}`" for i in pruned["run_id"].tolist()[:10]) + (" …" if len(pruned) > 10 else "")
        r.warn("info", "run_state", f"{len(pruned)} run(s) pruned by early termination (normal under hyperband): {ids}")
    unfinished = bad[bad["state"] != State.PRUNED]
    for i, (_, row) in enumerate(unfinished.iterrows()):
        if i == 8:
            r.warn("warning", "run_state",
                   f"… and {len(unfinished) - 8} more run(s) that did not finish: see the table")
            break
        err = row.get("error")
        err = "" if isnan(err) or not err else f": {str(err)[:300]}"
        why = {State.RUNNING: "still running (or died without a record)",
               State.PREEMPTED: "preempted (resumable: run the same command again)"}.get(row["state"], row["state"])
        r.warn("warning", "run_state", f"run `{row['run_id']}` ({s.labels.get(row['run_id'])}) {why}{err}")
    for _, row in s.df[(s.df["state"] == State.FINISHED) & s.df[s.metric].isna()].iterrows():
        r.warn("warning", "no_metric", f"run `{row['run_id']}` finished without a value of {s.metric}: left out")


def defaulted_goal(r: Review, metric: str, goal: str) -> None:
    """A W&B sweep whose metric names no goal ran under W&B's default, and the report ranks as W&B did: say
    so, loudly when that default is the wrong way for the metric (a search for the worst runs)."""
    better = METRIC_GOALS.get(metric)
    wrong = f"; but {'higher' if better == 'maximize' else 'lower'} `{metric}` is better, so its search looked for " \
        f"the worst runs: add `goal: {better}` to the sweep and run it again" if better and better != goal else ""
    r.warn("critical" if wrong else "warning", "goal",
           f"the W&B sweep's metric `{metric}` has no goal: W&B {goal}d it (its default) and this report ranks "
           f"the runs the same way{wrong}")


def _seed_groups(s: RunTable) -> list[dict]:
    """Finished runs that differ only in seed (and bookkeeping keys), as mean and sample std."""
    groups = []
    for key, g in s.fin.groupby("_group", sort=False):
        if len(g) < 2:
            continue
        rec = {"config": {k: g.iloc[0][k] for k in s.varying if k in g and strategy_uses(g.iloc[0]["strategy"], k)},
               "n": len(g),
               "seeds": g["seed"].tolist() if "seed" in g else [], "run_ids": g["run_id"].tolist(), "_group": key}
        for col in (s.metric, "test_acc", "test_f1_macro"):
            vals = g[col].astype(float).dropna()
            rec[f"{col}_mean"] = float(vals.mean()) if len(vals) else math.nan
            rec[f"{col}_std"] = float(vals.std(ddof=1)) if len(vals) >= 2 else math.nan
        groups.append(rec)
    sign = -1 if s.maximize else 1
    return sorted(groups, key=lambda g: sign * g[f"{s.metric}_mean"])


def _top_two(s: RunTable, r: Review, best, runner) -> None:
    """McNemar on the same test images, else whether the Wilson intervals overlap."""
    same, why = _same_test_set(s.by_id[r.best_id], s.by_id[r.runner_id])
    paired = r.runner_id if same else _on_winners_images(s, r, runner["_group"])
    if paired is not None:
        pa, pb = predictions(s.by_id[r.best_id]), predictions(s.by_id[paired])
        r.mcnemar = {**mcnemar(pa[0], pa[1], pb[1]), "runs": [r.best_id, paired]}
        p_all = _p_against_every_rival(s, r, best)
        r.mcnemar.update(comparisons=len(p_all), p_holm=holm(list(p_all.values()))[list(p_all).index(paired)])
        r.distinguishable = r.mcnemar["p_holm"] <= ALPHA
        corrected = (f", Holm-corrected for {len(p_all)} comparisons p = {r.mcnemar['p_holm']:.3g}"
                     if len(p_all) > 1 else "")
        r.paired_note = (f"McNemar exact p = {r.mcnemar['p_value']:.3g}{corrected} ({r.mcnemar['b']} image(s) only "
                         f"the winner gets right, {r.mcnemar['c']} only the runner-up"
                         + ("" if same else f"'s configuration in run `{paired}`, on the winner's test images") + ")")
        if not r.distinguishable:
            r.warn("critical", "mcnemar", f"the top two are not distinguishable on the test set: {r.paired_note}; "
                   f"p > {ALPHA} — treat them as tied")
    else:
        r.paired_note = f"no paired test: {why}"
        r.warn("info", "mcnemar", f"McNemar test not possible for the top two: {why}")
    lo1, hi1, lo2, hi2 = best["test_acc_lo"], best["test_acc_hi"], runner["test_acc_lo"], runner["test_acc_hi"]
    if not any(isnan(v) for v in (lo1, hi1, lo2, hi2)):
        if lo1 <= hi2 and lo2 <= hi1:
            r.warn("warning", "wilson_overlap",
                   f"the 95% Wilson intervals of the top two overlap: winner {pct(best['test_acc'])} "
                   f"{ci(lo1, hi1)} (n={int(best['n_test'])}) vs runner-up {pct(runner['test_acc'])} "
                   f"{ci(lo2, hi2)} (n={int(runner['n_test'])}); the test set cannot resolve this difference "
                   "(overlap is conservative: the paired McNemar test decides when both saw the same images)")
            if r.distinguishable is None:
                r.distinguishable = False
        elif r.distinguishable is None:
            r.distinguishable = True
    if best[s.metric] - runner[s.metric] == 0:
        r.warn("warning", "tie", f"the top two tie on {s.metric} ({met(best[s.metric])}); the smaller/faster one is "
               "listed first — the selection metric does not separate them")


def _on_winners_images(s: RunTable, r: Review, group: str) -> str | None:
    """The best run of a configuration tested on the winner's test images. Seeds draw the split of a
    folder without train/val/test, so the winner may be a seed whose split the rival's best run lacks."""
    return next((run_id for run_id in s.fin.loc[s.fin["_group"] == group, "run_id"]
                 if _same_test_set(s.by_id[r.best_id], s.by_id[run_id])[0]), None)


def _p_against_every_rival(s: RunTable, r: Review, best) -> dict[str, float]:
    """McNemar p of the winner against every other configuration's best run seen on the same test
    images (the runner-up among them): the family that Holm's correction accounts for."""
    winner = predictions(s.by_id[r.best_id])
    out = {}
    for group in s.fin.loc[s.fin["_group"] != best["_group"], "_group"].unique():
        run_id = _on_winners_images(s, r, group)
        if run_id is not None:
            out[run_id] = mcnemar(winner[0], winner[1], predictions(s.by_id[run_id])[1])["p_value"]
    return out


def _test_size(s: RunTable, r: Review, best) -> pd.DataFrame:
    """Small test sets, 100% claims and selection on val; returns the runs at 100% test accuracy."""
    n_test = best["n_test"]
    if not isnan(n_test) and n_test < SMALL_TEST and not isnan(best["test_acc"]):
        lo, hi = best["test_acc_lo"], best["test_acc_hi"]
        r.warn("warning", "small_test",
               f"small test set (n={int(n_test)} images): the winner's test accuracy {pct(best['test_acc'])} has a "
               f"95% Wilson interval {ci(lo, hi)}, {100 * (hi - lo):.1f} points wide, and one image is "
               f"{100 / n_test:.1f} points; differences between runs smaller than that are not resolved "
               f"(use ≥ {SMALL_TEST} test images, or cross-validation)")
    perfect = s.fin[(s.fin["test_acc"] >= 1.0 - 1e-9) & s.fin["n_test"].notna()]
    for n, g in perfect.groupby("n_test"):
        lo = wilson_interval(n, n)[0]
        who = ", ".join(f"`{i}`" for i in g["run_id"].tolist()[:8])
        r.warn("warning", "perfect",
               f"100% on n={int(n)} means the true accuracy is ≥ {100 * lo:.1f}% at 95% confidence (Wilson), "
               f"not that the model is perfect; {len(g)} run(s) at 100% ({who})"
               + (" cannot be ranked against each other by this test set" if len(g) > 1 else ""))
    n_val = best["n_val"]
    if not isnan(n_val) and not isnan(best["best_val_acc"]) and len(s.fin) > 1:
        vlo, vhi = wilson_interval(round(best["best_val_acc"] * n_val), n_val)
        r.warn("warning" if n_val < SMALL_TEST else "info", "selection",
               f"the winner was picked on validation accuracy among {len(s.fin)} runs (n_val={int(n_val)}, "
               f"95% interval of its val accuracy {ci(vlo, vhi)}): the best of many noisy scores is optimistic; "
               "quote the test accuracy, not the val accuracy")
    return perfect


def _overfitting(s: RunTable, r: Review, best) -> None:
    for _, row in s.fin[s.fin["train_val_gap"] > GAP_OVERFIT].iterrows():
        r.warn("warning", "overfit",
               f"overfitting: `{row['run_id']}` ({s.labels[row['run_id']]}) trains at "
               f"{pct(row['best_val_acc'] + row['train_val_gap'])} but validates at {pct(row['best_val_acc'])} "
               f"at its best epoch (train–val gap {100 * row['train_val_gap']:.1f} points > {100 * GAP_OVERFIT:.0f})")
    for _, row in s.fin.iterrows():
        rise = _val_loss_rise(s.by_id[row["run_id"]].get("history") or [])
        if rise:
            r.warn("info", "val_loss_rise",
                   f"`{row['run_id']}` ({s.labels[row['run_id']]}): val loss rose {100 * rise[1]:.0f}% after epoch "
                   f"{rise[0]} while train loss kept falling — the overfitting signature (the best-val checkpoint "
                   "is what was tested)")
    epochs = best.get("epochs_run", math.nan)
    if (not isnan(best.get("best_epoch", math.nan)) and not isnan(epochs) and best["best_epoch"] == epochs
            and epochs > 1):
        r.warn("info", "last_epoch", f"the winner's best epoch was its last ({int(epochs)}): "
               "it may not have converged; more epochs might help")


def _data(s: RunTable, r: Review, best) -> None:
    """What the runs reported about their data, counts that cannot be right, and val/test disagreement."""
    dups: dict[str, list[str]] = {}
    other: dict[str, list[str]] = {}
    for run in s.runs:
        for w in run.get("warnings") or []:
            (dups if DUPLICATE_RE.search(str(w)) else other).setdefault(str(w), []).append(str(run.get("id")))
    n_test = best["n_test"]
    for text, ids in dups.items():
        m = re.match(r"\s*(\d+) test image", text)
        share = ""
        if m and not isnan(n_test) and n_test > 0:
            share = (f"; up to {100 * int(m.group(1)) / n_test:.1f} points of the test accuracy (of n={int(n_test)}) "
                     "may come from memorised copies — remove them from test, or dedupe before splitting")
        r.warn("critical" if "test" in text else "warning", "duplicates",
               f"duplicates between splits: {text} (reported by {len(ids)} run(s)){share}")
    for text, ids in other.items():
        r.warn("info", "data", f"{text} (reported by {len(ids)} run(s))")
    for _, row in s.fin[s.fin["trainable_params"] > s.fin["total_params"]].iterrows():
        r.warn("warning", "params", f"`{row['run_id']}` reports more trainable ({count(row['trainable_params'])}) "
               f"than total parameters ({count(row['total_params'])}): the counts are wrong")
    if len(s.fin) > 1 and s.fin["test_acc"].notna().sum() > 1 and not isnan(best["test_acc"]):
        by_test = s.fin.sort_values("test_acc", ascending=False)
        top = by_test.iloc[0]
        if top["run_id"] != r.best_id and top["test_acc"] > best["test_acc"]:
            rank = int(np.where(by_test["run_id"].values == r.best_id)[0][0]) + 1
            r.warn("info", "val_test_rank",
                   f"the winner on {s.metric} is #{rank} on test accuracy (best on test: `{top['run_id']}` at "
                   f"{pct(top['test_acc'])}); do not re-pick the winner on the test set — that would make the test "
                   "score optimistic too")


def class_counts(run: dict) -> tuple[list[int], str] | None:
    """Images per class and the split they were counted in: the record's training split (``class_counts``),
    else the test split (per-class support, else the test labels: what a W&B run's summary holds)."""
    train = (run.get("class_counts") or {}).get("train") if isinstance(run.get("class_counts"), dict) else None
    per_class = run.get("per_class")
    candidates = [(train, "train"), ([p.get("support") for p in per_class if isinstance(p, dict)]
                                     if isinstance(per_class, list) else None, "test")]
    preds = predictions(run)
    if preds is not None:
        with contextlib.suppress(TypeError, ValueError, OverflowError):
            y = np.asarray(preds[0], dtype=np.int64)
            k = len(run["classes"]) if isinstance(run.get("classes"), list) else 0
            candidates.append((np.bincount(y[(y >= 0) & (y < 2**20)], minlength=k).tolist(), "test"))
    for counts, split in candidates:
        if isinstance(counts, list) and len(counts) >= 2 and all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c >= 0
                for c in counts):
            return [int(c) for c in counts], split
    return None


def _imbalance(s: RunTable, r: Review) -> None:
    """Classes imbalanced beyond IMBALANCED_RATIO:1 and the runs ranked by plain accuracy, which a model predicting
    the largest class everywhere scores high on: say what to select on instead."""
    if s.metric not in PLAIN_ACCURACY:
        return
    found = next(filter(None, (class_counts(run) for run in [*(s.by_id[i] for i in s.fin["run_id"]), *s.runs])), None)
    if found is None:
        return
    counts, split = found
    present = [c for c in counts if c > 0]
    if len(present) < 2 or max(present) <= IMBALANCED_RATIO * min(present):
        return
    names = next((run["classes"] for run in s.runs if isinstance(run.get("classes"), list)
                  and len(run["classes"]) == len(counts)), [str(i) for i in range(len(counts))])
    order = sorted(range(len(counts)), key=lambda i: -counts[i])
    shown = ", ".join(f"{names[i]}={counts[i]}" for i in order[:6]) + (", …" if len(counts) > 6 else "")
    r.warn("warning", "imbalance",
           f"classes are imbalanced {max(present) / min(present):.1f}:1 in {split} ({shown}) and the runs are "
           f"ranked by plain accuracy `{s.metric}`: predicting `{names[order[0]]}` for every image scores "
           f"{pct(counts[order[0]] / sum(counts))}; select on `best_val_balanced_acc` (the sweep's metric, or "
           "`report --metric best_val_balanced_acc`) and train with `monitor=val_balanced_acc` (levers: "
           "`class_weighting=balanced`, `sampler=balanced`)")


def _soups(s: RunTable, r: Review) -> None:
    """A model soup against its best single ingredient, on the same test images (McNemar)."""
    for run_id, run in s.by_id.items():
        soup, single = run.get("soup"), s.by_id.get((run.get("soup") or {}).get("best_single"))
        if not soup or single is None or not _same_test_set(run, single)[0]:
            continue
        (y, a), (_, b) = predictions(run), predictions(single)
        test = mcnemar(y, a, b)
        r.soups.append({"run_id": run_id, "best_single": single["id"], **test})
        r.warn("info", "soup", f"soup `{run_id}` of {len(soup['ingredients'])} run(s) vs its best single run "
               f"`{single['id']}` on test: {pct(test['acc_a'])} vs {pct(test['acc_b'])}, McNemar exact p = "
               f"{test['p_value']:.3g} ({test['b']} image(s) only the soup gets right, "
               f"{test['c']} only the single run)")


def _best_group(r: Review, best) -> dict | None:
    return next((g for g in r.seed_groups if g["_group"] == best["_group"]), None)


def _seeds(s: RunTable, r: Review, best, runner) -> None:
    if not any(g["n"] >= 2 for g in r.seed_groups) and len(s.fin) > 1:
        r.warn("info", "seeds", "every configuration ran with one seed: the seed-to-seed spread is unknown, so a "
               "small difference between configurations may be noise (repeat the top configurations with 3+ seeds)")
    group = _best_group(r, best)
    if group and runner is not None and not isnan(group[f"{s.metric}_std"]):
        margin = abs(best[s.metric] - runner[s.metric])
        if margin < group[f"{s.metric}_std"]:
            r.warn("warning", "seeds", f"the winner's lead on {s.metric} ({margin:.4f}) is smaller than its own "
                   f"seed-to-seed std ({group[f'{s.metric}_std']:.4f}, {group['n']} seeds)")


def _verdict(s: RunTable, r: Review, best, runner, perfect: pd.DataFrame) -> list[str]:
    n_test, metric = best["n_test"], s.metric
    test = ""
    if not isnan(best["test_acc"]):
        test = f", test accuracy {pct(best['test_acc'])}" + (
            f" {ci(best['test_acc_lo'], best['test_acc_hi'])} (95% Wilson, n={int(n_test)})"
            if not isnan(n_test) else "")
    lines = [f"Winner: {s.recipe(best)}, run `{r.best_id}`: {metric} {met(best[metric])}{test}."]
    group = _best_group(r, best)
    if group:
        lines.append(f"Over {group['n']} seeds this configuration scores {metric} {group[f'{metric}_mean']:.4f} ± "
                     f"{group[f'{metric}_std']:.4f} (test {pct(group['test_acc_mean'])} ± "
                     f"{100 * group['test_acc_std']:.1f}).")
    if runner is None:
        lines.append("No runner-up: only one configuration finished, so nothing was compared.")
    else:
        lines.append(_runner_line(s, best, runner))
    lines.append(_trust_line(s, r, best, runner))
    if len(perfect):
        n0 = perfect["n_test"].iloc[0]
        ids = perfect.loc[perfect["n_test"] == n0, "run_id"].tolist()
        who = ", ".join(f"`{i}`" for i in ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        lines.append(f"{'Run' if len(ids) == 1 else 'Runs'} {who} {'scores' if len(ids) == 1 else 'score'} 100% test "
                     f"accuracy on n={int(n0)}, which only shows ≥ {100 * wilson_interval(n0, n0)[0]:.1f}% "
                     "at 95% confidence.")
    return lines[:5]


def _runner_line(s: RunTable, best, runner) -> str:
    margin = best[s.metric] - runner[s.metric]
    test_margin = best["test_acc"] - runner["test_acc"]
    lead = f"tied on {s.metric}" if margin == 0 else f"winner leads by {abs(margin):.4f}"
    on_test = ""
    if not isnan(test_margin):
        on_test = ("; same test accuracy" if test_margin == 0 else
                   f"; on test the winner is {abs(100 * test_margin):.1f} points "
                   f"{'ahead' if test_margin > 0 else 'behind'}")
    return (f"Runner-up: {s.recipe(runner)}, run `{runner['run_id']}`: {s.metric} {met(runner[s.metric])} "
            f"({lead}{on_test}).")


def _cost(run) -> tuple[float, float]:
    """What a run costs from here on: the model to ship, then the weights it moved from the pretrained ones
    (fewer stay closer to features that held on other data). Its training time is spent and not counted."""
    def inf(v):
        return np.inf if isnan(v) else v

    return inf(run["model_size_mb"]), inf(run["trainable_params"])


def _cheaper(best, runner):
    """Of two runs the test set cannot tell apart, the cheaper; the winner when they cost the same (the same
    network trained longer, or with another seed) or nothing is recorded."""
    return runner if _cost(runner) < _cost(best) else best


def _trust_line(s: RunTable, r: Review, best, runner) -> str:
    """The trust line of the verdict; sets ``r.trust`` and ``r.recommended``."""
    n_test = best["n_test"]
    against = []
    if runner is not None and r.distinguishable is False:
        against.append("the top two are not distinguishable"
                       + (f" ({r.paired_note})" if r.mcnemar else " (95% intervals overlap)"))
    if runner is not None and r.distinguishable is None:
        against.append("the difference could not be tested (no test accuracy)")
    if not isnan(n_test) and n_test < SMALL_TEST:
        against.append(f"small test set (n={int(n_test)}, interval "
                       f"{100 * (best['test_acc_hi'] - best['test_acc_lo']):.1f} points wide)")
    if isnan(best["test_acc"]):
        against.append("the winner has no test accuracy")
    if any(w["kind"] == "duplicates" and w["level"] == "critical" for w in r.warnings):
        against.append("test images duplicated in train inflate test accuracy")
    if best["train_val_gap"] > GAP_OVERFIT:
        against.append(f"the winner overfits (train–val gap {100 * best['train_val_gap']:.1f} points)")
    tail = ""
    if runner is not None and r.distinguishable is False:
        r.trust = "LOW"
        cheaper = _cheaper(best, runner)
        size = (f"{num(cheaper['model_size_mb'], '{:.1f}')} MB, "
                f"{count(cheaper['trainable_params'])} trainable parameters")
        same = _cost(best) == _cost(runner)
        tail = (f"; treat as a tie: both cost the same to ship ({size}), so the winner `{cheaper['run_id']}` "
                "stands" if same else
                f"; treat as a tie and prefer the cheaper `{cheaper['run_id']}` ({cheaper['model']}/"
                f"{cheaper['strategy']}: {size}, {time_text(cheaper)})")
        tested = (f"McNemar p = {r.mcnemar['p_value']:.3g}, Holm-corrected p = {r.mcnemar['p_holm']:.3g}"
                  if r.mcnemar else "their 95% test intervals overlap")
        r.recommended = {"run_id": cheaper["run_id"],
                         "reason": f"the top two by {s.metric}, `{r.best_id}` and `{r.runner_id}`, are not "
                                   f"distinguishable on the test set ({tested}): a tie, and "
                                   + (f"both cost the same to ship ({size}): the winner stands" if same else
                                      f"`{cheaper['run_id']}` is the cheaper ({size})")}
    elif against:
        r.trust = "MEDIUM"
    else:
        r.trust = "HIGH"
        tail = f" ({r.paired_note})" if r.mcnemar else (" (95% intervals do not overlap)" if runner is not None else "")
    if r.recommended is None:
        r.recommended = {"run_id": r.best_id,
                         "reason": f"the best {s.metric} ({s.goal}) of {len(s.fin)} finished run(s), "
                                   f"{met(best[s.metric])}; trust {r.trust}"
                                   + (f": {against[0]}" if against else "")}
    trust = TRUST[r.trust]
    return f"Trust: {trust}" + (": " + "; ".join(against) if against else "") + tail + "."
