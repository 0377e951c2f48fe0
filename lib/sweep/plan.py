"""The plan of a time-budgeted grid study (``local SWEEP --time_budget 20m``): which runs, at which image
size, for how many epochs, so that the run the report recommends is as good as the budget buys and the
study ends in time. Pure decisions on measured inputs (the data's facts, each recipe's FLOPs, the rates
this machine showed on the study's own runs); lib.sweep.planner applies them to the study.

The shape is successive halving (Jamieson & Talwalkar 2016; Hyperband's inner loop, Li et al. 2017):
every recipe of the grid for a short screen, then the best third for longer, ..., then the best one for
what is left. Each is a run of its own from the first epoch, so its cosine schedule fits its length.
The rules, each following from the data or from a measurement:

- image size: images under 96x96 px are trained at 128 px, larger ones at their own size up to the
  model's pretraining size (224) (BiT-HyperRule, Kolesnikov et al. 2020); smaller, down the ladder
  ``SIZES``, until the screen and a last run ``ETA`` x ``ETA`` times as long fit the budget (a middle
  rung is left out before the size goes down);
- the screen's epochs: enough for ``SCREEN_STEPS`` optimizer steps, at least ``MIN_EPOCHS``, and more while
  the whole ladder and its seeds still fit (successive halving sized to its total budget): a longer
  screen ranks the recipes on more of their curves, and the time a flattening curve would leave unused
  at the end goes to it; each later rung ``ETA`` times the epochs of the one before, if the time left
  pays for it and for a last run ``ETA`` times longer again (and more, at measured rates, while that
  last run and its seeds still fit);
- who goes on: the best third by the sweep's metric (ties: the cheaper run), and more of the ranked
  rest while the time left still pays for the last run and its seeds (cheap recipes at BiT's schedule);
- the last run's epochs: all that is left, up to BiT's schedule for small sets (``EXAMPLES`` images
  seen) while the winner's validation curve was still rising, ``ETA`` times its epochs otherwise;
  its augmentation as the sweep sets it (the quickstart: none; four cached augmented views, tried on
  the last runs that overfit, scored no higher on validation and cost 19-39% more: docs/quickstart.md);
- time left after it: the winner's best run again with other seeds (the report's seed spread): the last
  run, or its rung before when the last run scored lower;
- classes imbalanced beyond 2:1 (lib.records.IMBALANCED_RATIO): every run weights its loss;
- images smaller than ``min_image_side`` all over (8 px digits): the runs keep those of half the median side.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

from lib.records import IMBALANCED_RATIO
from lib.sweep.budget import format_duration

ETA = 3                  # successive halving: each rung keeps the best 1/ETA
SCREEN_STEPS = 100       # a screen run trains at least this many optimizer steps...
MIN_EPOCHS = 2           # ...and epochs
SMALL_SIDE, SMALL_SIZE = 96, 128          # BiT-HyperRule: images under 96x96 px are trained at 128 px
SIZES = (224, 192, 160, 128, 96, 64)  # the sizes a plan may take, largest first: below 64 px a stride-32
                                      # network sees a 1x1 map; a tight budget drops runs instead
EXAMPLES = 500 * 512     # BiT's schedule for sets under 20k images: 500 steps of 512 images...
MAX_EPOCHS = 100         # ...in epochs, at most this many
MAX_SEEDS = 2            # extra seeds of the last configuration when time is left
PLANNED = ("image_size", "epochs", "class_weighting", "min_image_side")   # the keys a plan sets


@dataclass(frozen=True)
class Facts:
    """What the planner knows of the data before any run: from the file list and a sample of headers."""
    train: int
    val: int
    test: int
    classes: int
    counts: list[int]           # images per class, all splits
    side: int                   # median shorter side of a sample of images, px
    batch_size: int = 32

    @property
    def images(self) -> int:
        return self.train + self.val + self.test

    @property
    def imbalance(self) -> float:
        present = [c for c in self.counts if c]
        return max(present) / min(present) if present else 1.0

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.train / self.batch_size))


@dataclass(frozen=True)
class Flops:
    """Forward GFLOPs per image of one recipe at ``size`` px (lib.train.throughput.RecipeFlops)."""
    size: int
    front: float
    net: float
    full: float
    cached: bool = True

    def at(self, size: int) -> Flops:
        k = (size / self.size) ** 2
        return Flops(size, self.front * k, self.net * k, self.full * k, self.cached)


@dataclass
class Rates:
    """Wall seconds: per forward GFLOP (extraction, evaluation, test); per forward GFLOP of what trains, for
    each training image (forward, backward, update); per optimizer step besides its FLOPs (the loop, the
    optimizer, the loader: what a head on cached features costs); per run besides its images (process,
    imports, model, decoding, records). Priors until runs measure them, then the median of what they
    measured; a recipe that ran has its own epoch time."""
    fwd: float
    step: float
    per_step: float
    startup: float
    samples: dict = field(default_factory=lambda: {"fwd": [], "step": [], "per_step": [], "startup": [], "epoch": {}})

    def epoch_s(self, fl: Flops, facts: Facts, recipe: int | None = None) -> float:
        """One epoch's training (validation aside)."""
        mine = self.samples["epoch"].get(str(recipe))
        if mine:
            return statistics.median(mine)
        return facts.steps_per_epoch * self.per_step + fl.net * facts.train * self.step

    def as_dict(self) -> dict:
        return asdict(self)


STARTUP_CPU_S = 15.0     # a run's CPU seconds besides its images: imports, model and weights, decoding, records
STEP_CPU_S = 0.01        # an optimizer step's CPU seconds besides its FLOPs
TINY_GFLOPS = 1.0        # an epoch of fewer forward GFLOPs than this costs its steps, not its FLOPs


def prior_rates(cpu_s_per_gflop: float, slowdown: float, threads: int) -> Rates:
    """Before any run, from one thread's forward pass here (lib.train.throughput.speed): on an idle machine
    the trial's threads share the work at 80% efficiency; on a busy one (``slowdown`` above 1.5: wall over
    CPU time) they only wait for each other. A training step at 4.5 forwards (backward is about two, and
    runs slower per FLOP)."""
    parallel = 0.8 * threads if slowdown < 1.5 else 1.0
    fwd = cpu_s_per_gflop * slowdown / max(1.0, parallel)
    return Rates(fwd=fwd, step=4.5 * fwd, per_step=STEP_CPU_S * slowdown, startup=STARTUP_CPU_S * slowdown)


def run_seconds(fl: Flops, facts: Facts, epochs: int, rates: Rates, recipe: int | None = None,
                front_cached: bool = False) -> float:
    """One run: start-up, the front over train and val unless cached, epochs of steps and validation, the
    test split through the whole model."""
    front = 0.0 if front_cached else fl.front * (facts.train + facts.val) * rates.fwd
    epoch = rates.epoch_s(fl, facts, recipe) + fl.net * facts.val * rates.fwd
    return rates.startup + front + epochs * epoch + fl.full * facts.test * rates.fwd


def observe(rates: Rates, fl: Flops, facts: Facts, recipe: int, run: dict) -> Rates:
    """Rates after one finished run: ``run`` has ``duration_s``, ``train_time_s``, ``epoch_s`` (each epoch's
    training seconds), ``views`` and ``computed_front`` (its front was not in the study cache)."""
    s = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in rates.samples.items()}
    epochs = [t for t in run.get("epoch_s") or [] if t and t > 0]
    extraction = (run.get("train_time_s") or 0.0) - sum(epochs)
    images = facts.train * run.get("views", 1) + facts.val
    if run.get("computed_front") and fl.front > 0 and extraction > 1.0:
        s["fwd"] = s["fwd"] + [extraction / (fl.front * images)]
    fwd = statistics.median(s["fwd"]) if s["fwd"] else rates.fwd
    if epochs:
        epoch = statistics.median(epochs)
        s["epoch"][str(recipe)] = s["epoch"].get(str(recipe), []) + [epoch]
        per_step = statistics.median(s["per_step"]) if s["per_step"] else rates.per_step
        work = fl.net * facts.train
        if work < TINY_GFLOPS:
            s["per_step"] = s["per_step"] + [epoch / facts.steps_per_epoch]
        elif epoch > facts.steps_per_epoch * per_step:
            s["step"] = s["step"] + [(epoch - facts.steps_per_epoch * per_step) / work]
    if run.get("duration_s"):
        rest = run["duration_s"] - (run.get("train_time_s") or 0.0) \
            - len(epochs) * fl.net * facts.val * fwd - fl.full * facts.test * fwd
        s["startup"] = s["startup"] + [max(1.0, rest)]

    def median(key, prior):
        return statistics.median(s[key]) if s[key] else prior
    return Rates(fwd=fwd, step=median("step", rates.step * fwd / rates.fwd),
                 per_step=median("per_step", rates.per_step), startup=median("startup", rates.startup), samples=s)


# --- decisions ---------------------------------------------------------------------------------------
def target_size(side: int, model_size: int = 224) -> tuple[int, str]:
    """The image size the data asks for, and why (BiT-HyperRule)."""
    if side < SMALL_SIDE:
        return SMALL_SIZE, f"under {SMALL_SIDE} px: {SMALL_SIZE} px (BiT's rule)"
    fit = min(model_size, next((s for s in reversed(SIZES) if s >= side), SIZES[0]))
    return fit, f"{fit} px: their own size up to the model's {model_size} (BiT's rule)"


def screen_epochs(facts: Facts) -> int:
    return max(MIN_EPOCHS, math.ceil(SCREEN_STEPS / facts.steps_per_epoch))


def max_epochs(facts: Facts) -> int:
    return max(MIN_EPOCHS, min(MAX_EPOCHS, math.ceil(EXAMPLES / max(1, facts.train))))


def rung_sizes(n: int) -> list[int]:
    """Recipes per rung: all, then the best third, ..., one."""
    sizes = [n]
    while sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / ETA))
    return sizes


def shared_front(keys: list[str]) -> list[bool]:
    """Whether each recipe's front is already cached by an earlier one in the list (same model and cut)."""
    return [k in keys[:i] for i, k in enumerate(keys)]


def screen_seconds(flops: list[Flops], keys: list[str], facts: Facts, epochs: int, rates: Rates) -> list[float]:
    cached = shared_front(keys)
    return [run_seconds(fl, facts, epochs, rates, j, front_cached=c)
            for j, (fl, c) in enumerate(zip(flops, cached, strict=True))]


def most_epochs(cost, budget_s: float, low: int, high: int) -> int | None:
    """The most epochs E in [low, high] with cost(E) <= budget_s (cost grows with E), or None."""
    if high < low or cost(low) > budget_s:
        return None
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if cost(mid) <= budget_s else (low, mid - 1)
    return low


@dataclass
class Forecast:
    size: int
    size_why: str
    screen_epochs: int
    rungs: list[tuple[int, int]]         # (recipes, epochs), the screen first
    seconds: float                       # all of it, estimated
    screened: int                        # recipes the screen can afford (all, when the budget allows)

    @property
    def runs(self) -> int:
        return sum(n for n, _ in self.rungs)


def ladder(flops: list[Flops], keys: list[str], facts: Facts, rates: Rates, size: int, e0: int,
           rungs: list[int]) -> list[tuple[int, int, float]]:
    """Successive halving's ladder at ``size``: (recipes, epochs, seconds) of each rung, the screen first,
    each later rung ETA times the epochs of the one before, priced for an average recipe of the grid (the
    promoted recipes are known only when their rung starts) on fronts the screen cached."""
    at = [f.at(size) for f in flops]
    out = [(rungs[0], e0, sum(screen_seconds(at, keys, facts, e0, rates)))]
    for count in rungs[1:]:
        epochs = min(out[-1][1] * ETA, max_epochs(facts))
        mean = statistics.mean(run_seconds(f, facts, epochs, rates, j, front_cached=True) for j, f in enumerate(at))
        out.append((count, epochs, count * mean))
    return out


def seed_seconds(flops: list[Flops], facts: Facts, rates: Rates, size: int, epochs: int) -> float:
    """One seed run of an average recipe: its own split, so its own front."""
    return statistics.mean(run_seconds(f.at(size), facts, epochs, rates, j) for j, f in enumerate(flops))


def longest_screen(flops: list[Flops], keys: list[str], facts: Facts, rates: Rates, budget_s: float, size: int,
                   e0: int, rungs: list[int]) -> int:
    """The screen's epochs at ``size``: the most, from ``e0``, at which the whole ladder (each rung ETA times
    the one before, the last run too) and ``MAX_SEEDS`` seeds of the last run fit the budget, priced as the
    rest of the forecast is (an average recipe); ``e0`` when they do not fit, and no more than keeps the
    last run within ``max_epochs``."""
    def cost(e):
        steps = ladder(flops, keys, facts, rates, size, e, rungs)
        return sum(sec for _, _, sec in steps) + MAX_SEEDS * seed_seconds(flops, facts, rates, size, steps[-1][1])
    high = max(e0, max_epochs(facts) // ETA ** (len(rungs) - 1))
    return most_epochs(cost, budget_s, e0, high) or e0


def middle_epochs(cost, usable_s: float, low: int, facts: Facts) -> int:
    """A middle rung's epochs, once the runs before it measured this machine: ``low`` (ETA times the rung
    before), more while ``cost(E)`` (the rung, a last run ETA times longer, and its seeds) fits the time
    left, no more than keeps that last run within ``max_epochs``. The screen was sized on prior rates; what
    they overestimated goes here rather than unused at the end."""
    return most_epochs(cost, usable_s, low, max(low, max_epochs(facts) // ETA)) or low


def middle_width(cost, usable_s: float, low: int, high: int) -> int:
    """A middle rung's recipes at its epochs: ``low`` (the best 1/ETA), then one more of the ranked rest at
    a time while ``cost(m)`` (the rung's m runs, and a last run and its seeds priced for an average of them,
    as the rung's epochs were) fits the time left. A grid of cheap recipes reaches BiT's schedule with time
    to spare: successive halving then prunes less, so a recipe that ranks lower on a short run (full
    fine-tuning converges later than a frozen head) still gets the longer one."""
    m = low
    while m < high and cost(m + 1) <= usable_s:
        m += 1
    return m


def forecast(flops: list[Flops], keys: list[str], facts: Facts, rates: Rates, budget_s: float,
             target: tuple[int, str], pinned: dict) -> Forecast:
    """The whole plan as it looks before it starts: the largest size (up to the data's) at which the screen
    and the ladder's last run fit the budget, the screen's epochs the budget pays for, the middle rungs that
    fit beside them, and the last run's epochs from what they leave (the rungs are sized again with
    measured costs when they start)."""
    e0, n = screen_epochs(facts), len(flops)
    rungs = rung_sizes(n)
    sizes = [int(pinned["image_size"])] if "image_size" in pinned else \
        [s for s in SIZES if s <= target[0]] or [SIZES[-1]]
    for size in sizes:   # the size the images ask for before a middle rung: a smaller one costs more accuracy
        steps = ladder(flops, keys, facts, rates, size, e0, rungs)
        if steps[0][2] + steps[-1][2] * (len(steps) > 1) <= budget_s:   # the screen and the last run
            break
    if len(steps) > 1:
        e0 = longest_screen(flops, keys, facts, rates, budget_s, size, e0, rungs)
        steps = ladder(flops, keys, facts, rates, size, e0, rungs)
    why = target[1] if size == target[0] else f"{size} px: at {target[0]} px the plan would not fit the budget"
    if "image_size" in pinned:
        why = f"{size} px (set)"
    screen = screen_seconds([f.at(size) for f in flops], keys, facts, e0, rates)
    affordable = _affordable(screen, budget_s)
    plan = [(affordable, e0)]
    spent = sum(sorted(screen)[:affordable])
    for count, epochs, seconds in (steps[1:-1] if affordable == n else []):
        if spent + seconds + steps[-1][2] > budget_s:
            continue   # the middle rung is left out; the last run keeps its share
        plan.append((count, epochs))
        spent += seconds
    if affordable == n and len(steps) > 1:   # the last run: ETA times the rung before (as a curve that has
        at = [f.at(size) for f in flops]       # flattened gets it; one still rising gets more), then seeds

        def last(e):
            return statistics.mean(run_seconds(f, facts, e, rates, j, front_cached=True) for j, f in enumerate(at))
        epochs = most_epochs(last, budget_s - spent, plan[-1][1] + 1, min(ETA * plan[-1][1], max_epochs(facts)))
        if epochs is not None:
            plan.append((1, epochs))
            spent += last(epochs)
            seed_s = seed_seconds(flops, facts, rates, size, epochs)
            spent += seed_count(budget_s - spent, seed_s) * seed_s
    return Forecast(size, why, e0, plan, spent, affordable)


def _affordable(costs: list[float], budget_s: float) -> int:
    """How many of the runs, cheapest first, fit in ``budget_s`` (at least one)."""
    total, n = 0.0, 0
    for c in sorted(costs):
        if total + c > budget_s and n:
            break
        total, n = total + c, n + 1
    return n


def promote(results: list[dict], count: int, maximize: bool) -> list[int]:
    """The ``count`` best recipes of a rung: ``results`` are ``{recipe, value, seconds}``; ties go to the
    cheaper run."""
    done = [r for r in results if r.get("value") is not None]
    done.sort(key=lambda r: ((-r["value"] if maximize else r["value"]), r.get("seconds") or 0.0))
    return [r["recipe"] for r in done[:count]]


def still_rising(best_epoch: int | None, epochs: int | None) -> bool:
    """The kept epoch is in the last third of the run: more epochs may still help."""
    return bool(best_epoch and epochs) and best_epoch > epochs - max(1, epochs // 3)


@dataclass
class Last:
    epochs: int
    why: str


def last_run(prev: dict, fl: Flops, facts: Facts, rates: Rates, recipe: int, left_s: float) -> Last | None:
    """The last run of the winner: ``prev`` is its latest run (``epochs``, ``best_epoch``). None when the time
    left buys no run longer than that one."""
    rising = still_rising(prev.get("best_epoch"), prev["epochs"])
    cap = max_epochs(facts) if rising else min(max_epochs(facts), ETA * prev["epochs"])
    epochs = most_epochs(lambda e: run_seconds(fl, facts, e, rates, recipe, front_cached=True), left_s,
                         prev["epochs"] + 1, cap)
    if epochs is None:
        return None
    return Last(epochs, f"its validation curve was {'still rising' if rising else 'flat'} at epoch "
                        f"{prev['epochs']} (best {prev.get('best_epoch')})")


def seed_count(left_s: float, run_s: float) -> int:
    return max(0, min(MAX_SEEDS, int(left_s // max(run_s, 1e-9))))


def small_images(facts: Facts, pinned: dict, min_side: int) -> dict:
    """Images with a shorter side under ``min_image_side`` are skipped as stray thumbnails; when the data's
    own images are that small (8 px digits, 28 px scans) every one would be: keep those of at least half
    the median side (unless set)."""
    if "min_image_side" in pinned or facts.side >= min_side:
        return {}
    return {"min_image_side": max(1, facts.side // 2)}


def balancing(facts: Facts, pinned: dict) -> dict:
    """Classes imbalanced beyond 2:1: every run weights its loss by the classes (unless set)."""
    if facts.imbalance > IMBALANCED_RATIO and "class_weighting" not in pinned:
        return {"class_weighting": "balanced"}
    return {}


def plan_line(fc: Forecast, recipes: int, extra: str = "") -> str:
    """``plan: 12 runs at 128 px, 8 recipes for 3 epochs, the best 3 for 9, the best for ~27: ~18 min``"""
    first = fc.rungs[0]
    parts = [f"{first[0]} recipe{'s' * (first[0] != 1)} for {first[1]} epochs"
             + (f" (the cheapest {first[0]} of {recipes}: the budget buys no more)" if fc.screened < recipes else "")]
    for n, e in fc.rungs[1:]:
        parts.append(f"the best {n} for {e}" if n > 1 else f"the best for ~{e}")
    return (f"plan: {fc.runs} run{'s' * (fc.runs != 1)} at {fc.size} px, {', '.join(parts)}"
            f"{extra if len(fc.rungs) > 1 else ''}: ~{minutes(fc.seconds)}")


def minutes(seconds: float) -> str:
    """``18 min`` (to the minute from 2 minutes on), ``45 s``."""
    return f"{max(0, round(seconds / 60))} min" if seconds >= 120 else f"{max(0, round(seconds))} s"


def status_lines(state: dict, now: float) -> list[str]:
    """What ``status`` says of a planned study: the plan, where it stands, and the time budget."""
    import time as _time

    lines = [state["line"]]
    rung = state["rungs"][-1]
    where = {"last": "the last run", "seed": "seed runs"}.get(rung.get("kind"), f"rung {len(state['rungs']) - 1}"
                                                             + (" (the screen)" if len(state["rungs"]) == 1 else ""))
    lines.append(f"plan: {'done (' + state.get('end', '') + ')' if state.get('done') else 'at ' + where}"
                 f", {state['size']} px, {rung['epochs']} epochs")
    inv = (state.get("invocations") or [None])[-1]
    if inv:
        clock = _time.strftime("%H:%M:%S", _time.localtime(inv["deadline"]))
        budget = format_duration(inv["budget_s"])
        if "end" in inv:
            lines.append(f"time budget {budget}: the study ended after {format_duration(inv['end'] - inv['start'])}, "
                         f"{format_duration(max(0.0, inv['deadline'] - inv['end']))} unused")
        elif inv["deadline"] > now:
            lines.append(f"time budget {budget}: {format_duration(inv['deadline'] - now)} left (until {clock})")
        else:
            lines.append(f"time budget {budget}: its deadline passed at {clock}")
    return lines
