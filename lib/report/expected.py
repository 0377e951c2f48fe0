"""What more trials would buy: the expected best validation score of n trials drawn from the study.

Dodge et al. 2019 ("Show Your Work: Improved Reporting of Experimental Results", EMNLP) report the
*expected validation performance*: the expected best score among n trials, for n = 1..N, estimated
from the N trials run. Their estimator draws the n trials from the empirical distribution *with*
replacement; Tang et al. 2020 ("Showing Your Work Doesn't Always Work", ACL) show it is biased and
give the unbiased one used here: the n trials are drawn *without* replacement from the N observed
scores. With the scores sorted, v_(1) <= ... <= v_(N), the chance that v_(i) is the largest of n
drawn is p_i = C(i-1, n-1) / C(N, n), so

    E[max of n] = sum_i p_i v_(i),    std = sqrt(sum_i p_i (v_(i) - E)^2),

the mean and the standard deviation of the best score over all C(N, n) subsets of n trials. At n = 1
that is the mean of the scores, at n = N their best (std 0). Ties need nothing special: with equal
scores in any order, the sum is still the average over subsets.

What counts as a trial (``trial_values``): every finished run with a value of the selection metric
is one draw, seeds included. A run is what the budget buys, and the seed is part of what a trial's
score is (Dodge et al. count each training run, with its own seed, as one assignment). Two caveats,
said in the report's methods: a configuration re-run with more seeds because it led (``--confirm_top``,
a budget plan's seed runs) weighs the sample towards the top, and an adaptive sampler (TPE, hyperband)
does not draw its trials independently; both make the curve lean optimistic. A model soup is not a
trial (it averages trials), so it is left out.

Whether the curve has flattened (``more_trials``): the gain from n = N // 2 to n = N, what the second
half of the study added in expectation, is compared with a floor. For distributions of the kind these
studies give (bounded, or with thin tails) the gain per doubling of n shrinks, so this gain bounds
what doubling the study again would buy. The floor is the larger of
- the pooled seed-to-seed std of the metric (when some configuration ran with several seeds): a gain
  below it is within what re-running one configuration with another seed moves, and the expected max of
  pure seed noise rises by about a third of its std from N/2 to N trials, so selection on it is chasing
  luck, not a better recipe;
- MIN_GAIN: half a point (0.005) for a score in [0, 1] (an accuracy), about one test image in 200, the
  smallest difference a test set of a few hundred images resolves; 1% of the expected best otherwise (a loss).
Below MIN_TRIALS trials, nothing is said about the slope.
"""
from __future__ import annotations

import math

import numpy as np

MIN_TRIALS = 4            # below this, the gain from N//2 to N rests on one or two runs
MIN_GAIN = 0.005          # half a point on a score in [0, 1]
MIN_GAIN_RELATIVE = 0.01  # of the expected best, for a score that is not in [0, 1]


def expected_max(values) -> tuple[np.ndarray, np.ndarray]:
    """E[max of n] and its std for n = 1..N, n drawn without replacement from the finite ``values``."""
    v = np.sort(np.asarray([x for x in np.asarray(values, dtype=float).ravel() if math.isfinite(x)]))
    big = len(v)
    means, stds = np.empty(big), np.empty(big)
    k = np.arange(2, big + 1, dtype=float)
    for n in range(1, big + 1):
        # p_N = n/N and p_(k-1) = p_k (k-n)/(k-1): products of numbers in [0, 1], so no binomial
        # coefficient overflows at large N and no weight suffers cancellation; p_i = 0 for i < n.
        tail = np.cumprod(((k - n) / (k - 1))[::-1])[::-1]
        p = np.maximum(np.append(tail, 1.0) * (n / big), 0.0)
        means[n - 1] = p @ v
        stds[n - 1] = math.sqrt(p @ (v - means[n - 1]) ** 2)
    # Mathematically non-decreasing and within [min, max]; this only irons out rounding (~1e-16).
    means = np.clip(np.maximum.accumulate(means), v[0], v[-1]) if big else means
    return means, stds


def expected_best(values, maximize: bool = True) -> list[dict]:
    """``[{"n": 1, "value": ..., "std": ...}, ..., {"n": N, ...}]``: the expected best of n trials drawn
    from ``values`` (non-finite ones left out) and its std; the best is the minimum when not ``maximize``."""
    sign = 1.0 if maximize else -1.0
    means, stds = expected_max(sign * np.asarray(values, dtype=float))
    return [{"n": n, "value": float(sign * m), "std": float(s)}
            for n, m, s in zip(range(1, len(means) + 1), means, stds, strict=True)]


def trial_values(fin, metric: str) -> list[float]:
    """The selection metric of each trial: the ranked finished runs (RunTable.fin) that are not model soups."""
    trials = fin[~fin["_soup"].astype(bool)] if "_soup" in fin else fin
    return [float(x) for x in trials[metric]]


def pooled_std(groups: list[tuple[int, float]]) -> float | None:
    """The seed-to-seed std pooled over configurations, from (runs, sample std) pairs: sqrt of the
    variances weighted by their degrees of freedom; None when no configuration has two seeds."""
    ok = [(n - 1, s * s) for n, s in groups if n >= 2 and s is not None and math.isfinite(s)]
    dof = sum(d for d, _ in ok)
    return math.sqrt(sum(d * var for d, var in ok) / dof) if dof else None


def is_proportion(metric: str, values) -> bool:
    """A score on [0, 1] (an accuracy, a balanced accuracy): its gains read as points (x100)."""
    vals = [float(x) for x in values]
    return "loss" not in metric and bool(vals) and all(0.0 <= x <= 1.0 for x in vals)


def more_trials(curve: list[dict], metric: str, maximize: bool, seed_std: float | None = None) -> dict:
    """Whether ``curve`` (``expected_best``'s) has flattened, by the rule in the module docstring:
    ``{"flat": bool | None, "gain", "floor", "from_n", "to_n", "text"}`` (``text``: one line)."""
    big = len(curve)
    if big < MIN_TRIALS:
        return {"flat": None, "gain": None, "floor": None, "from_n": None, "to_n": big,
                "text": f"Too few trials ({big}) to tell what more would buy: the curve needs at least {MIN_TRIALS}."}
    half, full = curve[big // 2 - 1], curve[-1]
    points = is_proportion(metric, [c["value"] for c in curve])
    gain = abs(full["value"] - half["value"])
    floors = [(MIN_GAIN, "half a point") if points else
              (MIN_GAIN_RELATIVE * abs(full["value"]), "1% of the expected best")]
    if seed_std is not None:
        floors.append((seed_std, f"the seed-to-seed std ({_amount(seed_std, points)})"))
    floor, why = max(floors, key=lambda f: f[0])
    flat = gain < floor or gain == 0
    moves = "rises" if maximize else "falls"
    head = "More trials would buy little" if flat else f"Still {'rising' if maximize else 'falling'}"
    text = (f"{head}: the expected best `{metric}` {moves} {_amount(gain, points)} from {half['n']} to "
            f"{full['n']} trials, {'less' if flat else 'more'} than {why}"
            + ("." if flat else "; more trials are likely to find a better run."))
    return {"flat": flat, "gain": gain, "floor": floor, "from_n": half["n"], "to_n": full["n"], "text": text}


def study_curve(table, review) -> tuple[list[dict], dict | None]:
    """A report's ``expected_best`` and ``more_trials`` from its RunTable and Review: the ranked finished
    runs but soups, and the seed groups' pooled std as the floor; ([], None) when no run finished."""
    if table.fin.empty:
        return [], None
    curve = expected_best(trial_values(table.fin, table.metric), table.maximize)
    seed_std = pooled_std([(g["n"], g[f"{table.metric}_std"]) for g in review.seed_groups])
    return curve, more_trials(curve, table.metric, table.maximize, seed_std)


def _amount(x: float, points: bool) -> str:
    return f"{100 * x:.1f} points" if points else f"{x:.4g}"
