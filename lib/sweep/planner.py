"""A grid study planned to its time budget (lib.sweep.plan's rules) and run by the offline engine.

``local SWEEP --time_budget 20m`` on a new grid study of finetune_resnet.py: before the first trial the
planner reads the data (file list, a sample of image headers), counts each recipe's FLOPs, times one
thread, prints the plan and keeps it in the study (user attribute ``plan``). It then hands the runner
one trial at a time: the screen, each rung's promoted recipes, the last run, seeds; each sized to the
time left with the rates the finished runs measured, and each given a ``time_limit_s`` so that it
ends in time. Running the same command again continues the plan; ``--time_budget`` is what that
invocation may spend. A grid whose epochs are fixed (by ``--set``, a swept value or its recipes), a study
first run without a plan, or ``--trial_estimate``, ``--count``, ``--confirm_top``, ``--repeats``: the plain
budget (the grid as written; no trial starts that would not end in time).
"""
from __future__ import annotations

import io
import json
import os
import random
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lib import config as config_lib
from lib.errors import SweepError
from lib.images import read_image_file
from lib.records import METRICS_FILE, State
from lib.sweep import plan as rules
from lib.sweep import spec as sweep_spec
from lib.sweep.budget import format_duration
from lib.sweep.options import Options
from lib.sweep.spec import Sweep
from lib.sweep.study import counted, flat, plain

ATTR = "plan"                    # the study's user attribute holding the plan
HEADER_SAMPLE = 64               # image headers read for the native size
SEEDS_RAN = "its seeds ran"      # why a plan that ran to its end is done (status prints it)
FRONT_KEYS = ("model", "strategy", "unfreeze_blocks", "unfreeze_unit", "surgical_unit", "phase1_epochs",
              "unfreeze_every", "train_bn")   # what decides a recipe's frozen front (and its FLOPs)


def why_not(sweep: Sweep, opts: Options) -> str | None:
    """None when this invocation may plan a new study; else why it keeps the plain budget."""
    for flag, given in (("--trial_estimate", opts.trial_estimate_s), ("--count", opts.count is not None),
                        ("--confirm_top", opts.confirm_top), ("--repeats", opts.repeats > 1)):
        if given:
            return f"{flag} given"
    if sweep.method != "grid" or not sweep.ours:
        return "not a grid of finetune_resnet.py"
    if any(sweep_spec.leaf_name(p.name) == "data_dir" and "values" in p.config for p in sweep.params):
        return "data_dir is swept"
    if "epochs" in _pinned(sweep):   # successive halving needs the epochs: a grid of fixed runs is run as written
        return "epochs is set by --set, swept, or set in a recipe"
    return None


def check_extension(study: optuna.Study, changed: bool) -> None:
    """A planned study runs the grid it was planned with: an edited sweep is a new study."""
    if changed and ATTR in study.user_attrs:
        raise SweepError("this study was planned to its time budget with the sweep as first run: --extend cannot "
                         "add to its plan; give the edited sweep its own --sweep_dir")


def planning(study: optuna.Study, sweep: Sweep, opts: Options) -> bool:
    """Whether this study is (or becomes) a planned one: a study keeps what it was first run as."""
    if ATTR in study.user_attrs:
        return True
    if "grid_size" in study.user_attrs or not opts.time_budget_s:
        return False
    return why_not(sweep, opts) is None


def _pinned(sweep: Sweep) -> dict:
    """Planned keys the user fixed: --set, swept by the grid, or set by a recipe."""
    pinned = {k: v for k, v in sweep.fixed.items() if k in rules.PLANNED}
    for p in sweep.params:
        key = sweep_spec.leaf_name(p.name)
        if key in rules.PLANNED and "values" in p.config and len(p.config["values"]) > 1:
            pinned[key] = "swept"
        for value in p.config.get("values", []):
            if isinstance(value, dict) and key == "recipe":
                pinned.update({k: v for k, v in value.items() if k in rules.PLANNED})
    return pinned


def read_facts(cfg) -> rules.Facts:
    """Split sizes and class counts from the file list (the trials' own split), the native size from a
    sample of image headers (PIL reads the size without decoding)."""
    from PIL import Image

    from lib.train import data

    splits = data.discover(cfg.data_dir, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    items = [it for s in data.SPLITS for it in splits.items[s]]
    counts = [0] * len(splits.classes)
    for _, label in items:
        counts[label] += 1
    sides = []
    for rel, _ in random.Random(0).sample(items, min(HEADER_SAMPLE, len(items))):
        try:   # read as the trials read it (no FIFO, a size cap); PIL takes the size from the header
            with Image.open(io.BytesIO(read_image_file(Path(cfg.data_dir) / rel))) as im:
                sides.append(min(im.size))
        except (OSError, ValueError, Image.DecompressionBombError):   # the trials skip it and say so
            continue
    return rules.Facts(train=len(splits.items["train"]), val=len(splits.items["val"]),
                       test=len(splits.items["test"]), classes=len(splits.classes), counts=counts,
                       side=int(statistics.median(sides)) if sides else rules.SMALL_SIZE, batch_size=cfg.batch_size)


def _recipe_config(sweep: Sweep, point: dict, extra: dict):
    return config_lib.build({**flat(point), **sweep.fixed, **extra})


class Planner:
    """The plan of one study, and the next trial it asks for."""

    def __init__(self, sweep: Sweep, opts: Options, study: optuna.Study):
        self.sweep, self.opts = sweep, opts
        self.state: dict = dict(study.user_attrs.get(ATTR) or {})
        self.maximize = sweep.goal != "minimize"
        self.names = {sweep_spec.leaf_name(p.name): p.name for p in sweep.params}
        self.margin = 0.0

    # -- the plan, made once ------------------------------------------------------------------------
    def start(self, study: optuna.Study, budget_s: float, left_s: float) -> list[str]:
        """Make the plan (a new study) or take it up again; the lines that say so. ``left_s``: of the budget,
        once the command has read the sweep and checked the data and weights."""
        began = time.monotonic()
        self.margin = max(10.0, 0.03 * budget_s)
        lines = []
        if not self.state:
            lines = self._make(budget_s, left_s)
        elif self.state.get("done"):
            done = f"plan: done ({self.state.get('end')}): nothing left to run; another --sweep_dir plans a new study"
            lines += [self.state["line"], done]
        else:
            made = self.state["made_for_s"]
            lines.append(self.state["line"])
            lines.append(f"plan continued (made for {format_duration(made)}): this invocation may spend "
                         f"{format_duration(budget_s)}" + ("" if abs(made - budget_s) < 1 else
                                                        ", and what is left of the plan is sized to that"))
        now = time.time() - (time.monotonic() - began)   # left_s was measured before the plan was made
        inv = {"start": now - (budget_s - left_s), "budget_s": budget_s, "deadline": now + left_s,
               "ready": time.time()}
        self.state.setdefault("invocations", []).append(inv)
        self._save(study)
        until = time.strftime("%H:%M:%S", time.localtime(inv["deadline"]))
        said = (f"time budget {format_duration(budget_s)}, until {until}: each run is sized to the time left and stops "
                "training in time; at the deadline running trials get SIGTERM")
        return [*lines, said]

    def _make(self, budget_s: float, left_s: float) -> list[str]:
        """Measure what the plan needs (the data, each recipe's FLOPs, this machine's speed) and make it."""
        from lib.train import throughput  # torch and timm: only for a study that plans

        made_at = time.monotonic()
        sweep = self.sweep
        points = [plain(p) for p in sweep.grid()]
        first = _recipe_config(sweep, points[0], {})
        model_size = first_model_size(first)
        pinned = {k: (getattr(first, k) if v == "swept" else v) for k, v in _pinned(sweep).items()}
        if pinned.get("image_size") in (0, "0"):   # the model's own size
            pinned["image_size"] = model_size
        facts = read_facts(first)
        target = rules.target_size(facts.side, model_size)
        size = int(pinned.get("image_size", target[0]))
        flops, keys, seen, made = [], [], {}, {}
        for p in points:
            cfg = _recipe_config(sweep, p, {"image_size": size} if "image_size" not in pinned else {})
            key = json.dumps({k: getattr(cfg, k) for k in FRONT_KEYS} | {"size": cfg.image_size}, sort_keys=True)
            if key not in seen:
                seen[key] = rules.Flops(**throughput.recipe_flops(cfg, facts.classes, made).as_dict())
            flops.append(seen[key])
            keys.append(key)
        threads = max(1, (os.cpu_count() or 1) // self.opts.workers)
        here = throughput.speed(first.model)
        rates = rules.prior_rates(here.cpu_s_per_gflop, here.slowdown, threads)
        usable = left_s - (time.monotonic() - made_at) - self.margin   # making the plan took some of it
        return self.compose(points, facts, flops, keys, rates, budget_s, usable, target, pinned, first.min_image_side)

    def compose(self, points: list[dict], facts: rules.Facts, flops: list[rules.Flops], keys: list[str],
                rates: rules.Rates, budget_s: float, usable_s: float, target: tuple[int, str], pinned: dict,
                min_side: int = 32) -> list[str]:
        """The plan from what was measured (no torch here: the tests give it measured costs)."""
        fc = rules.forecast(flops, keys, facts, rates, usable_s, target, pinned)
        balance = rules.balancing(facts, pinned)
        small = rules.small_images(facts, pinned, min_side)
        order = sorted(range(len(points)), key=lambda j: rules.run_seconds(flops[j].at(fc.size), facts,
                                                                            fc.screen_epochs, rates, j))
        extra = ", seeds with the time left"
        self.state = {"v": 1, "made_for_s": budget_s, "made_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "facts": asdict(facts), "points": points, "keys": keys,
                      "flops": [asdict(f) for f in flops], "rates": rates.as_dict(), "pinned": pinned,
                      "size": fc.size, "target": list(target), "constants": {**balance, **small}, "done": False,
                      "rungs": [{"epochs": fc.screen_epochs, "recipes": order, "skipped": []}],
                      "sizes": rules.rung_sizes(len(points)),
                      "line_extra": extra, "line": rules.plan_line(fc, len(points), extra)}
        self.state["why"] = (
            f"why: {facts.images:,} images of ~{facts.side} px ({fc.size_why}"
            + (f"; min_image_side={small['min_image_side']}, not {min_side}, or all would be skipped" if small else "")
            + f"), {facts.classes} classes"
            + (f" at {facts.imbalance:.1f}:1 (every run weights its loss: class_weighting=balanced)" if balance
               else f", {facts.imbalance:.1f}:1") + f"; {facts.train:,} training images = {facts.steps_per_epoch} "
            f"steps an epoch, a screen run >= {rules.SCREEN_STEPS} steps; costs from each recipe's FLOPs at "
            f"{1 / rates.fwd:.1f} GFLOP/s here (the runs measure it); {format_duration(self.margin)} kept for the end; "
            f"selects on {self.sweep.metric}")
        return [self.state["line"], self.state["why"]]

    # -- one trial at a time ----------------------------------------------------------------------------
    def next_trial(self, study: optuna.Study, left_s: float) -> str:
        """Enqueue the next planned trial: "start"; "wait" for running ones (a rung's barrier); "done"."""
        usable = left_s - self.margin
        while not self.state.get("done"):
            trials = self._trials(study)
            rung = len(self.state["rungs"]) - 1
            current = self.state["rungs"][rung]
            todo = self._todo(trials, rung)
            if todo:
                est = {i: self.estimate(current["recipes"][i], current, study) for i in todo}
                # the screen's first trial starts whatever its estimate
                first = rung == 0 and not any(self._of(t, rung) for t in trials) and usable > self.rates.startup
                fits = [i for i in todo if est[i] <= usable] or ([todo[0]] if first else [])
                late = [i for i in todo if i not in fits]
                if late:
                    current["skipped"] += late
                    print(f"plan: no time for {', '.join(self.label(current['recipes'][i]) for i in late)} "
                          f"(~{format_duration(min(est[i] for i in late))} or more; {format_duration(max(usable, 0))} "
                          f"left): left out", flush=True)
                if fits:
                    self._enqueue(study, fits[0], rung, current)
                    return "start"
                continue
            if _busy(trials):
                return "wait"
            self._advance(study, trials, usable)
        self._save(study)
        return "done"

    def _advance(self, study, trials, usable: float) -> None:
        """The rung is complete: the next rung, the last run, seeds, or the end."""
        rung = len(self.state["rungs"]) - 1
        current = self.state["rungs"][rung]
        kind = current.get("kind", "rung")
        results = [self._result(t) for t in trials if self._of(t, rung) and t.state == TrialState.COMPLETE]
        if kind == "seed" or not results:
            return self._finish(SEEDS_RAN if kind == "seed" else f"no run of rung {rung} finished")
        best = rules.promote(results, 1, self.maximize)[0]
        later = len(self.state["sizes"]) - 1 - rung
        if kind == "last" or later == 0:
            return self._seeds(study, best, self._best_rung(trials, best, rung), usable)
        if later >= 2 and self._middle(study, results, rung, usable):
            return None
        return self._last(study, results, best, usable)

    def _middle(self, study, results: list[dict], rung: int, usable: float) -> bool:
        """The next rung of successive halving (ETA times the epochs), if the time left pays for it and then
        for a last run ETA times longer again of whichever of its recipes wins; longer, then wider (more of
        the rung's recipes, best first), while that last run and its seeds still fit."""
        ranked = rules.promote(results, len(results), self.maximize)
        third = self.state["sizes"][rung + 1]
        promoted = ranked[:third]
        facts, rates = self.facts, self.rates

        def run_s(j, e, seeds=0):   # cached front; seeds on their own splits compute theirs
            return (rules.run_seconds(self.flops(j), facts, e, rates, j, front_cached=True)
                    + seeds * rules.run_seconds(self.flops(j), facts, e, rates, j))

        def rung_s(js, e):
            return sum(run_s(j, e) for j in js)

        def last_s(js, e, seeds=0):   # a last run ETA times longer of whichever of ``js`` wins
            return statistics.mean(run_s(j, min(rules.ETA * e, rules.max_epochs(facts)), seeds) for j in js)
        epochs = min(rules.ETA * self.state["rungs"][rung]["epochs"], rules.max_epochs(facts))
        cost, last = rung_s(promoted, epochs), last_s(promoted, epochs)
        if cost + last <= usable:
            epochs = rules.middle_epochs(lambda e: rung_s(promoted, e) + last_s(promoted, e, rules.MAX_SEEDS),
                                         usable, epochs, facts)
            promoted = ranked[:rules.middle_width(
                lambda m: rung_s(ranked[:m], epochs) + last_s(ranked[:m], epochs, rules.MAX_SEEDS),
                usable, third, len(ranked))]
            cost = rung_s(promoted, epochs)
        if cost + last > usable:
            print(f"plan: no time for the best {len(promoted)} at {epochs} epochs (~{format_duration(cost)}) and a "
                  f"longer last run (~{format_duration(last)}): {format_duration(max(usable, 0))} left: straight to "
                  f"the last run", flush=True)
            return False
        self.state["rungs"].append({"epochs": epochs, "recipes": promoted, "skipped": []})
        wider = (f" ({len(promoted) - third} more than the best third: their runs cost little beside the time left)"
                 if len(promoted) > third else "")
        print(f"plan: the best {len(promoted)} ({', '.join(self.label(j) for j in promoted)}) for {epochs} epochs: "
              f"~{format_duration(cost)}{wider}", flush=True)
        return True

    def _last(self, study, results: list[dict], winner: int, usable: float) -> None:
        prev = next(r for r in results if r["recipe"] == winner)
        last = rules.last_run(prev, self.flops(winner), self.facts, self.rates, winner, usable)
        if last is None:
            return self._finish(f"no time for a run of {self.label(winner)} longer than {prev['epochs']} epochs")
        self.state["rungs"].append({"kind": "last", "epochs": last.epochs, "recipes": [winner], "skipped": []})
        print(f"plan: last run: {self.label(winner)} for {last.epochs} epochs ({last.why}): "
              f"~{format_duration(self.estimate(winner, self.state['rungs'][-1], study))}", flush=True)

    def _best_rung(self, trials, recipe: int, last: int) -> dict:
        """The rung whose run of ``recipe`` scored best (the later on a tie). A last run that scored below the
        rung before it (longer, and no better) is not the run the report will recommend: the
        seeds repeat the one it will."""
        sign = 1 if self.maximize else -1
        scored = [(sign * t.value, r) for r in range(last + 1) for t in trials
                  if self._of(t, r) and t.state == TrialState.COMPLETE and t.value is not None
                  and t.user_attrs[ATTR]["recipe"] == recipe]
        return self.state["rungs"][max(scored)[1]]

    def _seeds(self, study, winner: int, rung: dict, usable: float) -> None:
        """The time left: the best run of the best configuration again with the next seeds (their own
        splits), so the report's seed spread is the recommended configuration's."""
        seed = int(_recipe_config(self.sweep, self.state["points"][winner], {}).seed)
        run = {"kind": "seed", "epochs": rung["epochs"], "skipped": []}
        est = self.estimate(winner, run, study)
        n = rules.seed_count(usable, est)
        if not n:
            return self._finish(f"no time for another seed (~{format_duration(est)})")
        self.state["rungs"].append({**run, "recipes": [winner] * n, "seeds": [seed + i for i in range(1, n + 1)]})
        which = "" if rung is self.state["rungs"][-2] else f" at {rung['epochs']} epochs (its best run)"
        print(f"plan: {n} more seed(s) of {self.label(winner)}{which}: ~{format_duration(n * est)}", flush=True)

    def _finish(self, why: str) -> None:
        self.state["done"] = True
        self.state["end"] = why
        print(f"plan: done ({why})", flush=True)

    # -- bookkeeping ------------------------------------------------------------------------------------
    @property
    def facts(self) -> rules.Facts:
        return rules.Facts(**self.state["facts"])

    @property
    def rates(self) -> rules.Rates:
        return rules.Rates(**self.state["rates"])

    def flops(self, j: int) -> rules.Flops:
        return rules.Flops(**self.state["flops"][j]).at(self.state["size"])

    def label(self, j: int) -> str:
        cfg = config_lib.recipe_as_keys(flat(self.state["points"][j]))
        parts = [str(cfg.get(k)) for k in ("model", "strategy") if cfg.get(k) is not None]
        return "/".join(parts) + (f" lr {cfg['lr']:g}" if isinstance(cfg.get("lr"), (int, float)) else "")

    def estimate(self, j: int, rung: dict, study) -> float:
        cached = rung.get("kind") != "seed" and self._front_cached(study, j)
        return rules.run_seconds(self.flops(j), self.facts, rung["epochs"], self.rates, j, front_cached=cached)

    def _front_cached(self, study, j: int) -> bool:
        key = self.state["keys"][j]
        return any(t.state == TrialState.COMPLETE and self.state["keys"][t.user_attrs[ATTR]["recipe"]] == key
                   and t.user_attrs[ATTR].get("size") == self.state["size"] and "seed" not in t.user_attrs[ATTR]
                   for t in self._trials(study))

    def _trials(self, study) -> list:
        return [t for t in counted(study) if ATTR in t.user_attrs]

    def _of(self, t, rung: int) -> bool:
        a = t.user_attrs[ATTR]
        return a["rung"] == rung and a.get("size") == self.state["size"]

    def _result(self, t) -> dict:
        summary = (t.user_attrs.get("run") or {}).get("summary") or {}
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        return {"recipe": t.user_attrs[ATTR]["recipe"], "value": t.value, "seconds": seconds,
                "epochs": summary.get("epochs_run") or self.state["rungs"][t.user_attrs[ATTR]["rung"]]["epochs"],
                "best_epoch": summary.get("best_epoch")}

    def _enqueue(self, study, slot: int, rung: int, current: dict) -> None:
        j = current["recipes"][slot]
        values = {"epochs": current["epochs"], "image_size": self.state["size"], **self.state["constants"]}
        attrs = {"rung": rung, "slot": slot, "recipe": j, "size": self.state["size"]}
        if current.get("kind") == "seed":
            values["seed"] = attrs["seed"] = current["seeds"][slot]
        pinned = self.state["pinned"]
        point = dict(self.state["points"][j])
        for key, value in values.items():
            if key not in pinned:
                point[self.names.get(key, key)] = value
        point = plain(point)
        study.enqueue_trial({}, user_attrs={"queued": True, "point": point,
                                            "config": {**flat(point), **self.sweep.fixed}, ATTR: attrs})
        self._save(study)

    def _save(self, study) -> None:
        study.set_user_attr(ATTR, plain(self.state))

    def limits(self, trial, left_s: float) -> dict:
        """The trial's time limit: it must end before the deadline, its test split included. The whole margin
        is kept: a seed run at the end, priced at rates measured earlier on a machine that grew busier,
        once ran its wrap-up (last batch, test, records, exit) into the deadline's SIGTERM."""
        if ATTR not in trial.user_attrs:
            return {}
        test = self.flops(trial.user_attrs[ATTR]["recipe"]).full * self.facts.test * self.rates.fwd
        return {"time_limit_s": round(max(1.0, left_s - self.margin - test - self.rates.startup / 2), 1)}

    def after(self, study, trial, run_dir: Path, duration_s: float) -> None:
        """A planned trial ended: what it measured updates the rates; the first one also checks the image
        size against them (the priors may be far off on a loaded or unusual machine)."""
        from lib.files import read_jsonl
        from lib.sweep.trial import read_record

        a = trial.user_attrs.get(ATTR)
        record = read_record(run_dir)
        summary = record.get("summary") or {}
        if not a or record.get("state") != State.FINISHED:
            return
        rows = read_jsonl(run_dir / METRICS_FILE)
        cache = summary.get("feature_cache") or ""
        self.observe(a, {"duration_s": duration_s, "train_time_s": summary.get("train_time_s"),
                         "epoch_s": [r.get("time_s") for r in rows],
                         "views": (record.get("config") or {}).get("augment_views") or 1,
                         "computed_front": "reused" in cache and not _all_reused(cache)})
        self._save(study)

    def observe(self, attrs: dict, run: dict) -> None:
        """What one planned run measured (lib.sweep.plan.observe's ``run``)."""
        self.state["rates"] = rules.observe(self.rates, self.flops(attrs["recipe"]), self.facts, attrs["recipe"],
                                            run).as_dict()
        if attrs["rung"] == 0 and not self.state.get("rechecked"):
            self.state["rechecked"] = True
            self._recheck()

    def _recheck(self) -> None:
        """After the first run: the size whose screen fits its share at the measured rates."""
        s = self.state
        ref = [rules.Flops(**f) for f in s["flops"]]
        inv = s["invocations"][-1]
        budget = inv["deadline"] - inv["ready"] - self.margin   # what the plan was made for
        fc = rules.forecast(ref, s["keys"], self.facts, self.rates, budget, tuple(s["target"]), s["pinned"])
        if fc.size == s["size"]:
            return
        print(f"plan: the first run measured {1 / self.rates.fwd:.1f} GFLOP/s: the screen runs at {fc.size} px "
              f"instead of {s['size']} px ({fc.size_why})", flush=True)
        s["size"] = fc.size
        s["rates"]["samples"]["epoch"] = {}   # measured at the other size
        s["rungs"][0]["recipes"] = sorted(s["rungs"][0]["recipes"], key=lambda j: rules.run_seconds(
            self.flops(j), self.facts, s["rungs"][0]["epochs"], self.rates, j))
        s["line"] = rules.plan_line(fc, len(s["points"]), s["line_extra"])

    def end(self, study) -> None:
        """The invocation ends. When the deadline came as the last seed run finished, the plan is done:
        nothing is left for the same command to continue."""
        if self.state.get("invocations"):
            self.state["invocations"][-1]["end"] = time.time()
        if not self.state.get("done") and self._seeds_done(study):
            self._finish(SEEDS_RAN)
        self._save(study)

    def _seeds_done(self, study) -> bool:
        """What next_trial would find: the seed rung has no slot left and no trial running or queued."""
        rung = len(self.state.get("rungs") or []) - 1
        if rung < 0 or self.state["rungs"][rung].get("kind") != "seed":
            return False
        trials = self._trials(study)
        return not self._todo(trials, rung) and not _busy(trials)

    def _todo(self, trials, rung: int) -> list[int]:
        """The slots of a rung no trial has taken and the plan has not left out."""
        current = self.state["rungs"][rung]
        taken = {t.user_attrs[ATTR]["slot"] for t in trials if self._of(t, rung)}
        return [i for i in range(len(current["recipes"])) if i not in taken and i not in current["skipped"]]


def _busy(trials) -> bool:
    return any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)


def _all_reused(cache: str) -> bool:
    """``freeze: on: pre-logits, exact, 2 of 2 reused from the sweep cache``: every part came from the cache."""
    import re

    pairs = re.findall(r"(\d+) of (\d+) reused", cache)
    return bool(pairs) and all(a == b for a, b in pairs)


def first_model_size(cfg) -> int:
    """The model's pretraining input size (timm's config), 224 when it has none."""
    from timm.models import get_pretrained_cfg

    pc = get_pretrained_cfg(cfg.model)
    return int(pc.input_size[-1]) if pc is not None and getattr(pc, "input_size", None) else 224
