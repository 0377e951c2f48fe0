"""The plan of a time-budgeted study (lib.sweep.plan, lib.sweep.planner) on measured-cost inputs: it fits
the budget, gives the most promising recipe more budget, and stops before the deadline. The FLOPs below
are the quickstart's 8 recipes as lib.train.throughput counts them at 128 px; the rates are of the same
order as the study's own runs measured on this 2-core machine."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from lib.sweep import plan as rules
from lib.sweep import spec as sweep_spec
from lib.sweep.options import Options
from lib.sweep.planner import ATTR, Planner

ROOT = Path(__file__).resolve().parents[2]
MOBILENET = {"freeze": (0.19559, 5.1e-06), "surgical": (0.16746, 0.02813), "partial": (0.13705, 0.05854)}
LITE0 = {"freeze": (0.25072, 5.1e-06), "surgical": (0.21840, 0.03232), "partial": (0.15887, 0.09185)}
RECIPES = ("freeze", "freeze", "surgical", "partial")   # the quickstart's: freeze at two learning rates
FLOPS = [rules.Flops(128, *table[name], full=sum(table[name])) for table in (MOBILENET, LITE0) for name in RECIPES]
KEYS = [f"{m}-{name}" for m in ("mobilenetv2_100", "tf_efficientnet_lite0") for name in RECIPES]
FACTS = rules.Facts(train=1400, val=300, test=300, classes=2, counts=[1500, 500], side=28)
TARGET = rules.target_size(FACTS.side)


def measured() -> rules.Rates:
    return rules.Rates(fwd=0.045, step=0.2, per_step=0.01, startup=15.0)


def total(fc: rules.Forecast, rates: rules.Rates) -> float:
    return fc.seconds


# --- the rules ------------------------------------------------------------------------------------------
def test_image_size_follows_the_data():
    assert rules.target_size(8)[0] == rules.target_size(28)[0] == 128          # small images: BiT's 128 px
    assert rules.target_size(150)[0] == 160                                      # their own size, on the ladder
    assert rules.target_size(300)[0] == rules.target_size(1000)[0] == 224        # up to the model's
    assert rules.target_size(300, model_size=192)[0] == 192


@pytest.mark.parametrize("budget_s", [300, 600, 1200, 3600])
def test_the_forecast_fits_the_budget(budget_s):
    fc = rules.forecast(FLOPS, KEYS, FACTS, measured(), budget_s, TARGET, {})
    assert fc.seconds <= budget_s
    assert fc.size <= TARGET[0] and fc.size >= min(rules.SIZES)
    epochs = [e for _, e in fc.rungs]
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)   # each rung longer than the last
    counts = [n for n, _ in fc.rungs]
    assert counts == sorted(counts, reverse=True) and counts[-1] >= 1


def test_more_budget_buys_a_larger_size_then_longer_runs():
    sizes = [rules.forecast(FLOPS, KEYS, FACTS, measured(), b, TARGET, {}).size for b in (120, 400, 1200, 7200)]
    assert sizes == sorted(sizes) and sizes[-1] == TARGET[0] and sizes[0] < TARGET[0]
    big = rules.forecast(FLOPS, KEYS, FACTS, measured(), 7200, TARGET, {})
    small = rules.forecast(FLOPS, KEYS, FACTS, measured(), 1200, TARGET, {})
    assert big.rungs[-1][1] >= small.rungs[-1][1]


def test_a_tight_budget_leaves_the_middle_rung_out_before_the_size_goes_down():
    tight = rules.forecast(FLOPS, KEYS, FACTS, measured(), 800, TARGET, {})
    roomy = rules.forecast(FLOPS, KEYS, FACTS, measured(), 1200, TARGET, {})
    assert tight.size == roomy.size == TARGET[0]
    assert len(tight.rungs) == 2 and len(roomy.rungs) == 3 and tight.rungs[-1][0] == 1


def test_a_budget_too_small_for_the_screen_runs_the_cheapest_recipes_only():
    fc = rules.forecast(FLOPS, KEYS, FACTS, measured(), 60, TARGET, {})
    assert fc.size == min(rules.SIZES)
    assert 1 <= fc.screened < len(FLOPS) and fc.rungs == [(fc.screened, fc.screen_epochs)]
    assert "the cheapest" in rules.plan_line(fc, len(FLOPS))


def test_screen_epochs_give_enough_steps():
    assert rules.screen_epochs(FACTS) * FACTS.steps_per_epoch >= rules.SCREEN_STEPS
    big = rules.Facts(train=20000, val=100, test=100, classes=2, counts=[1, 1], side=28)
    assert rules.screen_epochs(big) == rules.MIN_EPOCHS


def test_a_size_set_by_the_user_is_kept():
    fc = rules.forecast(FLOPS, KEYS, FACTS, measured(), 1200, TARGET, {"image_size": 96})
    assert fc.size == 96 and fc.rungs[0][0] == 8 and len(fc.rungs) == 3


@pytest.mark.parametrize("budget_s", [2400, 7200])
def test_the_screen_takes_what_the_ladder_and_its_seeds_leave(budget_s):
    """A screen of the fewest epochs that rank recipes left half of a 20-minute budget unused once the
    winner's curve flattened (fashion3k: 10m26s of 20m); the screen now grows while the whole ladder, a
    last run ETA times the rung before and the seeds still fit."""
    rates = measured()
    fc = rules.forecast(FLOPS, KEYS, FACTS, rates, budget_s, TARGET, {})
    e0 = fc.screen_epochs
    assert e0 > rules.screen_epochs(FACTS) and [e for _, e in fc.rungs] == [e0, 3 * e0, 9 * e0]

    def whole(e):
        steps = rules.ladder(FLOPS, KEYS, FACTS, rates, fc.size, e, rules.rung_sizes(len(FLOPS)))
        return sum(sec for _, _, sec in steps) + rules.MAX_SEEDS * rules.seed_seconds(FLOPS, FACTS, rates, fc.size,
                                                                                        steps[-1][1])
    capped = 9 * (e0 + 1) > rules.max_epochs(FACTS)          # a last run past BiT's schedule buys nothing
    assert whole(e0) <= budget_s and (capped or whole(e0 + 1) > budget_s)
    assert (0.75 * budget_s if not capped else 0) <= fc.seconds <= budget_s
    assert capped == (budget_s == 7200)
    tight = rules.forecast(FLOPS, KEYS, FACTS, rates, 1200, TARGET, {})   # no time to spare: the fewest epochs
    assert tight.screen_epochs == rules.screen_epochs(FACTS)


def test_only_a_grid_that_leaves_the_epochs_to_the_plan_is_planned(tmp_path):
    from lib.sweep.planner import why_not

    quickstart = str(ROOT / "sweeps" / "quickstart.yaml")
    assert why_not(sweep_spec.load(quickstart, {"data_dir": str(tmp_path)}), Options(sweep_dir=tmp_path)) is None
    pinned = sweep_spec.load(quickstart, {"data_dir": str(tmp_path), "epochs": "6"})
    assert "epochs" in why_not(pinned, Options(sweep_dir=tmp_path))
    demo = sweep_spec.load(str(ROOT / "sweeps" / "demo.yaml"))          # its recipes set their epochs
    assert "epochs" in why_not(demo, Options(sweep_dir=tmp_path))
    plain = Options(sweep_dir=tmp_path, trial_estimate_s=60.0)
    assert "--trial_estimate" in why_not(sweep_spec.load(quickstart, {"data_dir": str(tmp_path)}), plain)


def test_promotion_takes_the_best_and_breaks_ties_by_cost():
    results = [{"recipe": 0, "value": 0.90, "seconds": 10}, {"recipe": 1, "value": 0.95, "seconds": 50},
               {"recipe": 2, "value": 0.95, "seconds": 20}, {"recipe": 3, "value": None, "seconds": 5}]
    assert rules.promote(results, 2, maximize=True) == [2, 1]
    assert rules.promote(results, 1, maximize=False) == [0]


def test_the_last_run_takes_what_is_left_up_to_its_cap():
    fl, rates = FLOPS[3], measured()
    rising = {"epochs": 9, "best_epoch": 9}
    last = rules.last_run(rising, fl, FACTS, rates, 3, 600)
    assert rules.run_seconds(fl, FACTS, last.epochs, rates, 3, front_cached=True) <= 600
    assert last.epochs == rules.max_epochs(FACTS) or \
        rules.run_seconds(fl, FACTS, last.epochs + 1, rates, 3, front_cached=True) > 600
    assert "still rising" in last.why
    flat = rules.last_run({"epochs": 9, "best_epoch": 3}, fl, FACTS, rates, 3, 6000)
    assert flat.epochs == rules.ETA * 9                     # a curve that flattened gets ETA times, no more
    assert rules.last_run(rising, fl, FACTS, rates, 3, 10) is None   # no time for a longer run


def test_rates_learn_from_a_finished_run():
    rates, fl = measured(), FLOPS[3]
    run = {"duration_s": 95.0, "train_time_s": 60.0, "epoch_s": [15.0, 14.0, 16.0], "views": 1, "computed_front": True}
    after = rules.observe(rates, fl, FACTS, 3, run)
    assert after.epoch_s(fl, FACTS, 3) == 15.0                          # its own epochs, as measured
    assert after.fwd == pytest.approx(15.0 / (fl.front * (FACTS.train + FACTS.val)))   # extraction: 60 - 45 s
    predicted = rules.run_seconds(fl, FACTS, 3, after, 3)
    assert predicted == pytest.approx(95.0, rel=0.05)                   # the run it learned from, priced again
    cheap = rules.observe(after, FLOPS[0], FACTS, 0, {"duration_s": 30, "train_time_s": 3, "epoch_s": [0.5, 0.5]})
    assert cheap.per_step == pytest.approx(0.5 / FACTS.steps_per_epoch)   # a head on cached features: its steps


def test_imbalanced_classes_weight_the_loss_unless_set():
    assert rules.balancing(FACTS, {}) == {"class_weighting": "balanced"}        # 3:1
    assert rules.balancing(FACTS, {"class_weighting": "none"}) == {}
    even = rules.Facts(train=100, val=10, test=10, classes=2, counts=[60, 60], side=28)
    assert rules.balancing(even, {}) == {}


# --- the planner on a study, one trial at a time ---------------------------------------------------------
VALUES = {0: 0.80, 1: 0.70, 2: 0.90, 3: 0.95, 4: 0.85, 5: 0.60, 6: 0.88, 7: 0.93}   # partial (3, 7) lead


def planner(tmp_path, budget_s):
    sweep = sweep_spec.load(str(ROOT / "sweeps" / "quickstart.yaml"), {"data_dir": str(tmp_path)})
    study = optuna.create_study(direction="maximize")
    p = Planner(sweep, Options(sweep_dir=tmp_path), study)
    p.margin = 10.0
    points = [sweep_study_point(x) for x in sweep.grid()]
    p.compose(points, FACTS, FLOPS, KEYS, measured(), budget_s, budget_s - p.margin, TARGET, {})
    p.state["invocations"] = [{"start": 0, "budget_s": budget_s, "deadline": budget_s, "ready": 0}]
    return p, study


def sweep_study_point(point):
    from lib.sweep.study import plain

    return plain(point)


def run_plan(p, study, budget_s, slower=1.0, until=None, score=None, flat=False):
    """Run the planner's trials on a clock: each takes ``slower`` times what the planned rates say (and the
    planner observes it, as the runner makes it do), and ends with VALUES (or ``score(rung, attrs)``), its
    best epoch its last (``flat``: a third of the way); ``until(rung, attrs)``: the deadline comes as that
    trial ends."""
    truth = rules.Rates(**{**p.state["rates"], "samples": {"fwd": [], "step": [], "per_step": [], "startup": [],
                                                            "epoch": {}}})
    clock, order = 0.0, []
    while p.next_trial(study, budget_s - clock) == "start":
        trial = study.ask()
        a = trial.user_attrs[ATTR]
        rung = p.state["rungs"][a["rung"]]
        epochs = rung["epochs"]
        fl = p.flops(a["recipe"])
        cached = "seed" not in a and any(t.state.is_finished() and p.state["keys"][t.user_attrs[ATTR][
            "recipe"]] == p.state["keys"][a["recipe"]] for t in study.get_trials()[:-1])
        took = slower * rules.run_seconds(fl, FACTS, epochs, truth, front_cached=cached)
        epoch = slower * truth.epoch_s(fl, FACTS)
        front = slower * fl.front * (FACTS.train + FACTS.val) * truth.fwd
        p.observe(a, {"duration_s": took, "train_time_s": (0 if cached else front) + epochs * epoch,
                      "epoch_s": [epoch] * epochs, "views": 1, "computed_front": not cached})
        best = max(1, epochs // 3) if flat else epochs
        # training 20 points above validation, as a fine-tune on a small set runs: no lever of the plan
        trial.set_user_attr("run", {"summary": {"epochs_run": epochs, "best_epoch": best, "train_val_gap": 0.2}})
        clock += took
        order.append((a["rung"], a["recipe"], epochs, clock))
        study.tell(trial, score(rung, a) if score else VALUES[a["recipe"]] + 0.001 * a["rung"])
        if until and until(rung, a):
            break
    return order, clock


def last_seed(rung, a):
    return rung.get("kind") == "seed" and a["slot"] == len(rung["recipes"]) - 1


def test_a_plan_whose_last_seed_ends_at_the_deadline_is_done(tmp_path):
    """The deadline came as the last seed run finished: the runner said "run the same command again to
    continue" of a plan with nothing left, and exited as if the budget had cut it short."""
    p, study = planner(tmp_path, 7200)              # time for the last run and two seeds
    run_plan(p, study, 7200, until=last_seed)
    assert p.state["rungs"][-1]["kind"] == "seed" and not p.state["done"]
    p.end(study)
    assert p.state["done"] and p.state["end"] == "its seeds ran"


def test_a_plan_cut_short_before_its_seeds_is_not_done(tmp_path):
    p, study = planner(tmp_path, 7200)
    _, clock = run_plan(p, study, 7200, until=lambda rung, a: rung.get("kind") == "last")
    p.end(study)
    assert not p.state["done"] and p.next_trial(study, 7200 - clock) == "start"     # the seeds are left
    assert p.state["rungs"][-1]["kind"] == "seed"


@pytest.mark.parametrize("last_scores", [0.99, 0.90])
def test_seeds_repeat_the_best_run_of_the_winner(tmp_path, capsys, last_scores):
    """The last run better than its rung before: the seeds repeat it. Worse (its longer schedule did not
    pay): they repeat the earlier run, the one the report recommends, not the one that lost."""
    p, study = planner(tmp_path, 7200)

    def score(rung, a):
        return last_scores if rung.get("kind") == "last" else VALUES[a["recipe"]] + 0.001 * a["rung"]
    run_plan(p, study, 7200, score=score)
    rungs = p.state["rungs"]
    last = next(i for i, r in enumerate(rungs) if r.get("kind") == "last")
    seeds = rungs[-1]
    assert seeds["kind"] == "seed" and set(seeds["recipes"]) == set(rungs[last]["recipes"]) == {3}
    repeated = rungs[last] if last_scores > 0.95 else rungs[last - 1]
    assert seeds["epochs"] == repeated["epochs"]
    assert (f"at {repeated['epochs']} epochs (its best run)" in capsys.readouterr().out) == (last_scores < 0.95)


def test_the_plan_ends_within_its_budget_and_the_best_recipe_gets_the_most(tmp_path):
    p, study = planner(tmp_path, 2400)
    order, clock = run_plan(p, study, 2400)
    assert clock <= 2400 - p.margin
    rungs = p.state["rungs"]
    assert {j for r, j, _, _ in order if r == 0} == set(range(8))                  # every recipe screened
    assert rungs[1]["recipes"] == [3, 7, 2]                                         # the best third goes on
    last = next(r for r in rungs if r.get("kind") == "last")
    assert last["recipes"] == [3] and last["epochs"] > rungs[1]["epochs"] > rungs[0]["epochs"]
    spent = {j: sum(e for _, k, e, _ in order if k == j) for j in range(8)}
    assert max(spent, key=spent.get) == 3                                           # most epochs to the best
    assert p.state["done"]
    configs = [t.user_attrs["config"] for t in study.get_trials()]
    assert {c["augment"] for c in configs} == {"none"} and not any("augment_views" in c for c in configs)
    # the last run overfit (its training 20 points above validation) and is still not augmented: four
    # cached views did not pay on validation in the evidence (docs/quickstart.md#augmentation)


@pytest.mark.parametrize("flat", [False, True])
def test_the_plan_spends_its_budget_whether_or_not_the_curve_flattens(tmp_path, flat):
    """Flat curves cap the last run at ETA times the rung before; the screen was sized for that, so the
    study still spends most of its budget (with a screen of the fewest epochs it ended after half of it on
    fashion3k and fashion-shirts, and here after 51% when flat)."""
    p, study = planner(tmp_path, 4800)
    _, clock = run_plan(p, study, 4800, flat=flat)
    assert 0.8 * 4800 <= clock <= 4800 - p.margin and p.state["done"]
    assert [r.get("kind", "rung") for r in p.state["rungs"]][:3] == ["rung", "rung", "last"]


def test_time_the_prior_rates_overestimated_goes_to_the_middle_rung(tmp_path):
    """The screen is sized on prior rates; runs twice as fast as planned leave time that a middle rung of
    ETA times the screen would leave unused at the end: the middle rung grows while its last run and the
    seeds still fit."""
    p, study = planner(tmp_path, 2400)
    _, clock = run_plan(p, study, 2400, slower=0.5, flat=True)
    rungs = p.state["rungs"]
    assert rungs[1]["epochs"] > rules.ETA * rungs[0]["epochs"]
    assert 0.8 * 2400 <= clock <= 2400 - p.margin


def test_time_left_at_bits_schedule_widens_the_middle_rung(tmp_path, capsys):
    """Cheap recipes reach BiT's schedule (the last run's cap) with time to spare (fashion-shirts: the plan
    ended after 288 s of 20 min): the middle rung takes more of the ranked recipes, best first, while a last
    run and its seeds (priced for an average of them) still fit; without the time it keeps the best third."""
    p, study = planner(tmp_path, 7200)
    _, clock = run_plan(p, study, 7200, slower=0.5)
    rungs = p.state["rungs"]
    ranked = sorted(VALUES, key=VALUES.get, reverse=True)
    assert rungs[1]["epochs"] == rules.max_epochs(FACTS) // rules.ETA             # at the cap
    assert len(rungs[1]["recipes"]) > 3 and rungs[1]["recipes"] == ranked[:len(rungs[1]["recipes"])]
    assert "more than the best third" in capsys.readouterr().out
    assert rungs[-1]["kind"] == "seed" and clock <= 7200 - p.margin
    p, study = planner(tmp_path, 4800)
    run_plan(p, study, 4800)
    assert p.state["rungs"][1]["recipes"] == ranked[:3]


def test_without_time_for_the_middle_rung_the_screen_winner_gets_the_last_run(tmp_path, capsys):
    p, study = planner(tmp_path, 1200)
    _, clock = run_plan(p, study, 1200)
    assert clock <= 1200 - p.margin
    assert "straight to the last run" in capsys.readouterr().out
    assert [r.get("kind", "rung") for r in p.state["rungs"]][:2] == ["rung", "last"]
    assert p.state["rungs"][1]["recipes"] == [3] and p.state["rungs"][1]["epochs"] > 3 * p.state["rungs"][0]["epochs"]


def test_slower_runs_than_planned_are_skipped_before_the_deadline(tmp_path):
    p, study = planner(tmp_path, 1200)
    _, clock = run_plan(p, study, 1200, slower=2.5)
    assert clock <= 1200   # after the first run the rates are measured ones: nothing runs past the deadline
    assert p.state["done"] and p.state["size"] < TARGET[0]   # the first run showed 128 px would not fit
    limits = p.limits(study.get_trials()[-1], 100.0)
    assert 0 < limits["time_limit_s"] < 100.0


def test_the_plan_is_kept_in_the_study_and_a_new_planner_continues_it(tmp_path):
    p, study = planner(tmp_path, 1200)
    for _ in range(3):
        assert p.next_trial(study, 1200) == "start"
        trial = study.ask()
        trial.set_user_attr("run", {"summary": {"epochs_run": 3, "best_epoch": 3, "train_val_gap": 0.0}})
        study.tell(trial, 0.5)
    again = Planner(p.sweep, p.opts, study)
    assert again.state["rungs"] == p.state["rungs"] and again.state["line"] == p.state["line"]
    said = again.start(study, 1800, 1800)                               # the same command, another budget
    assert said[0] == p.state["line"] and "made for 20m" in said[1] and "may spend 30m" in said[1]
    assert "sized to that" in said[1] and "time budget 30m, until " in said[-1]
    assert again.next_trial(study, 1800) == "start"
    assert study.get_trials()[-1].user_attrs[ATTR]["slot"] == 3    # the fourth recipe of the screen, not the first
    assert len(again.state["invocations"]) == 2


def test_a_planned_study_refuses_an_edited_sweep(tmp_path):
    from lib.errors import SweepError
    from lib.sweep.runner import open_study

    quickstart = str(ROOT / "sweeps" / "quickstart.yaml")
    opts = Options(sweep_dir=tmp_path / "s", time_budget_s=600.0)
    study = open_study(sweep_spec.load(quickstart, {"data_dir": str(tmp_path)}), opts)
    assert not study.get_trials()                       # a plan enqueues its own trials, not the grid
    study.set_user_attr(ATTR, {"line": "plan: ..."})
    edited = sweep_spec.load(quickstart, {"data_dir": str(tmp_path), "weight_decay": "0.01"})
    with pytest.raises(SweepError, match="planned to its time budget"):
        open_study(edited, Options(sweep_dir=tmp_path / "s", extend=True))
