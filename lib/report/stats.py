"""The statistics a careful reviewer asks for on small data: Wilson intervals, the exact McNemar
test, Pareto fronts, and descriptive parameter importance."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats


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


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the given order: the winner was compared with every other
    configuration, so its smallest p-values are the likeliest to be luck (family-wise error at alpha)."""
    m, out, running = len(p_values), [1.0] * len(p_values), 0.0
    for rank, i in enumerate(np.argsort(p_values, kind="stable")):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


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


def is_numeric(series: pd.Series) -> bool:
    vals = [v for v in series if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return bool(vals) and all(isinstance(v, (int, float, np.integer, np.floating))
                              and not isinstance(v, (bool, np.bool_)) for v in vals)


def importance(df: pd.DataFrame, keys: list[str], metric: str) -> list[dict]:
    out = []
    for key in keys:
        sub = df[[key, metric]].dropna()
        if len(sub) < 3 or sub[key].astype(str).nunique() < 2:
            continue
        if is_numeric(sub[key]):
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


