"""What more trials would buy: the expected best of n trials (Dodge et al. 2019, Tang et al. 2020's unbiased
estimator), checked against every n-subset, and the rule that says whether the curve has flattened."""
import itertools
import math

import numpy as np
import pytest

from lib.report.expected import MIN_GAIN, expected_best, expected_max, more_trials, pooled_std, trial_values


def brute_force(values, n, best=max):
    """Mean and (population) std of the best of every n-subset of ``values``."""
    bests = np.array([best(c) for c in itertools.combinations(values, n)], dtype=float)
    return bests.mean(), bests.std()


def arrays():
    rng = np.random.default_rng(21)
    for size in range(1, 10):
        yield rng.normal(0.8, 0.05, size)                       # accuracy-like, distinct
        yield np.round(rng.uniform(0.6, 0.9, size), 2)          # few levels: ties
        yield rng.integers(0, 3, size).astype(float)            # many ties
    yield np.array([0.5, 0.5, 0.5, 0.5])                        # all tied
    yield np.array([-3.0, 1e-9, 7.5, 7.5, -3.0, 2.0])


@pytest.mark.parametrize("values", list(arrays()), ids=lambda v: f"N{len(v)}")
def test_every_n_matches_the_average_over_all_n_subsets(values):
    for maximize, best in ((True, max), (False, min)):
        curve = expected_best(values, maximize)
        assert [c["n"] for c in curve] == list(range(1, len(values) + 1))
        for c in curve:
            mean, std = brute_force(values.tolist(), c["n"], best)
            assert c["value"] == pytest.approx(mean, abs=1e-12, rel=0)
            assert c["std"] == pytest.approx(std, abs=1e-12, rel=0)


@pytest.mark.parametrize("values", list(arrays()), ids=lambda v: f"N{len(v)}")
def test_ends_and_monotone(values):
    up = expected_best(values, maximize=True)
    down = expected_best(values, maximize=False)
    assert up[0]["value"] == pytest.approx(values.mean(), abs=1e-12) == down[0]["value"]
    assert up[-1]["value"] == values.max() and up[-1]["std"] == 0.0
    assert down[-1]["value"] == values.min() and down[-1]["std"] == 0.0
    assert all(a["value"] <= b["value"] for a, b in itertools.pairwise(up))        # never worse with more trials
    assert all(a["value"] >= b["value"] for a, b in itertools.pairwise(down))
    if len(values) > 1 and np.ptp(values) > 0:
        assert up[0]["std"] == pytest.approx(values.std(), abs=1e-12)      # n=1: one draw, the scores' spread


def test_minimize_mirrors_maximize():
    v = np.random.default_rng(3).normal(0.3, 0.1, 11)
    for lo, hi in zip(expected_best(v, maximize=False), expected_best(-v, maximize=True), strict=True):
        assert lo["value"] == pytest.approx(-hi["value"], abs=1e-15)
        assert lo["std"] == pytest.approx(hi["std"], abs=1e-15)


def test_unbiased_where_dodges_with_replacement_estimator_is_not():
    """Two runs at 0 and 1: two draws without replacement always see the 1 (Tang et al.); with replacement
    (Dodge et al.'s empirical CDF) a quarter of the draws see only 0s."""
    curve = expected_best([0.0, 1.0])
    assert curve[1] == {"n": 2, "value": 1.0, "std": 0.0}
    assert curve[0]["value"] == 0.5 and curve[0]["std"] == 0.5


def test_ties_and_non_finite_values():
    assert [c["value"] for c in expected_best([0.7] * 5)] == [0.7] * 5
    assert all(c["std"] == 0.0 for c in expected_best([0.7] * 5))
    # a tie at the top: the best of 2 out of {a, b, b} is always b
    # (to rounding: the BLAS dot product's summation order differs between CPUs)
    tie = expected_best([0.6, 0.9, 0.9])[1]
    assert tie["n"] == 2 and tie["value"] == pytest.approx(0.9, abs=1e-12) and tie["std"] == pytest.approx(0, abs=1e-7)
    assert expected_best([0.6, float("nan"), 0.9, float("inf")]) == expected_best([0.6, 0.9])
    assert expected_best([]) == []


def test_large_studies_stay_finite_and_fast():
    """C(2000, 1000) overflows a float: the weights are products of ratios in [0, 1] instead."""
    v = np.random.default_rng(0).beta(8, 2, 2000)
    means, stds = expected_max(v)
    assert np.isfinite(means).all() and np.isfinite(stds).all() and (stds >= 0).all()
    assert means[0] == pytest.approx(v.mean(), abs=1e-12) and means[-1] == v.max()
    assert (np.diff(means) >= 0).all()
    n = 7   # one n, exactly: C(i-1, n-1)/C(N, n) from Python's integers
    exact = sum(math.comb(i - 1, n - 1) * x for i, x in enumerate(np.sort(v), start=1)) / math.comb(len(v), n)
    assert means[n - 1] == pytest.approx(exact, rel=1e-12)


# ---------------------------------------------------------------- has it flattened?
def curve_of(values, maximize=True):
    return expected_best(values, maximize)


def test_a_flat_curve_says_more_trials_would_buy_little():
    # twelve runs within 0.4 points: the second half of the study added less than half a point
    values = [0.900, 0.902, 0.901, 0.903, 0.899, 0.904, 0.900, 0.902, 0.901, 0.903, 0.902, 0.900]
    more = more_trials(curve_of(values), "best_val_acc", True)
    assert more["flat"] is True and (more["from_n"], more["to_n"]) == (6, 12)
    assert more["gain"] < MIN_GAIN and more["floor"] == MIN_GAIN
    assert more["text"].startswith("More trials would buy little: the expected best `best_val_acc` rises 0.")
    assert "points from 6 to 12 trials, less than half a point." in more["text"]
    assert "\n" not in more["text"]


def test_a_rising_curve_says_still_rising():
    values = [0.60, 0.62, 0.65, 0.70, 0.72, 0.75, 0.78, 0.80, 0.83, 0.90]   # a long upper tail
    more = more_trials(curve_of(values), "best_val_acc", True)
    curve = curve_of(values)
    assert more["flat"] is False and more["gain"] == pytest.approx(curve[9]["value"] - curve[4]["value"])
    assert more["text"].startswith("Still rising: the expected best `best_val_acc` rises ")
    assert f"{100 * more['gain']:.1f} points from 5 to 10 trials, more than half a point" in more["text"]


def test_the_seed_to_seed_std_is_the_floor_when_it_is_larger():
    values = [0.60, 0.62, 0.65, 0.70, 0.72, 0.75, 0.78, 0.80, 0.83, 0.90]
    gain = more_trials(curve_of(values), "best_val_acc", True)["gain"]
    noisy = more_trials(curve_of(values), "best_val_acc", True, seed_std=gain * 1.5)
    assert noisy["flat"] is True and noisy["floor"] == gain * 1.5
    assert f"less than the seed-to-seed std ({100 * gain * 1.5:.1f} points)" in noisy["text"]
    quiet = more_trials(curve_of(values), "best_val_acc", True, seed_std=0.001)   # below half a point: unused
    assert quiet["flat"] is False and quiet["floor"] == MIN_GAIN


def test_pure_seed_noise_reads_as_flat():
    """Twelve runs of one recipe that differ only in seed: the best of more of them is luck, not a better recipe."""
    values = np.random.default_rng(5).normal(0.85, 0.02, 12)
    more = more_trials(curve_of(values), "best_val_acc", True, seed_std=float(np.std(values, ddof=1)))
    assert more["flat"] is True


def test_a_minimized_loss_falls_and_is_not_read_in_points():
    losses = [0.90, 0.70, 0.55, 0.50, 0.45, 0.40, 0.38, 0.36, 0.33, 0.30]
    more = more_trials(curve_of(losses, maximize=False), "best_val_loss", False)
    assert more["flat"] is False
    assert more["text"].startswith("Still falling: the expected best `best_val_loss` falls 0.")
    assert "points" not in more["text"] and "1% of the expected best" in more["text"]
    flat = more_trials(curve_of([0.3001, 0.3002, 0.3000, 0.3001], maximize=False), "best_val_loss", False)
    assert flat["flat"] is True and "falls" in flat["text"]


def test_too_few_trials_say_so():
    more = more_trials(curve_of([0.8, 0.9, 0.7]), "best_val_acc", True)
    assert more["flat"] is None and "Too few trials (3)" in more["text"]


def test_pooled_std_and_trial_values():
    assert pooled_std([(3, 0.02), (3, 0.04)]) == pytest.approx(math.sqrt((2 * 0.0004 + 2 * 0.0016) / 4))
    assert pooled_std([(1, float("nan")), (2, float("nan"))]) is None and pooled_std([]) is None
    import pandas as pd

    fin = pd.DataFrame({"run_id": ["a", "soup", "b"], "m": [0.9, 0.95, 0.8], "_soup": [False, True, False]})
    assert trial_values(fin, "m") == [0.9, 0.8]


def test_the_curve_is_drawn_on_a_log_axis_for_many_trials():
    from lib.report.plots import expected_best_plot

    many = expected_best(np.random.default_rng(1).normal(0.4, 0.1, 80), maximize=False)
    for curve in (many, expected_best([0.7, 0.8, 0.75, 0.9])):
        assert expected_best_plot(curve, "best_val_loss", False, (len(curve) // 2, len(curve)))[:4] == b"\x89PNG"
    assert expected_best_plot(expected_best([0.7]), "best_val_acc", True) is None
