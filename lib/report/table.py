"""The runs of a sweep as one table, ready to review and to show: the selection metric, Wilson
intervals of test accuracy, the recipe of each run, the finished runs best first, Pareto fronts."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

from lib.config import BOOKKEEPING
from lib.recipes import strategy_uses
from lib.records import State, metric_value
from lib.report import datasets
from lib.report.page import hp, isnan
from lib.report.stats import pareto_front, wilson_interval
from lib.runs import as_scalar, given_config, runs_frame
from lib.selection import Selection, rank_by

# Config keys that are bookkeeping, not part of the recipe (declared in lib.config): they never define a
# "configuration". "config" is the --config file a run was given: its keys are in the config themselves.
NOISE_KEYS = BOOKKEEPING | {"config"}
NUMERIC = ("test_acc", "test_f1_macro", "test_balanced_acc", "test_mcc", "trainable_params", "total_params",
           "model_size_mb", "train_val_gap", "train_time_s", "best_val_acc", "best_val_balanced_acc", "n_test", "n_val")


@dataclass
class RunTable:
    runs: list[dict]
    by_id: dict[str, dict]
    df: pd.DataFrame            # every run
    fin: pd.DataFrame           # finished runs with a value of the metric, best first (lib.selection's order)
    metric: str
    goal: str                   # maximize | minimize
    varying: list[str]          # recipe keys that differ between finished runs whose strategy reads them
    shown_hp: list[str]         # ... other than model and strategy
    labels: dict[str, str]      # run id -> "model/strategy lr=... [id]"
    latency: dict[str, float]
    data: dict | None = None    # the data the ranked runs were trained on: {"data_dir", "classes", "run_ids"}
    other_data: list[dict] | None = None   # finished runs of other data: the same, per dataset; not ranked

    @property
    def maximize(self) -> bool:
        return self.goal != "minimize"

    def hp_text(self, row) -> str:
        """The run's recipe keys that vary, those its strategy reads only (a freeze run has no
        backbone_lr_mult); a soup is named by its ingredients, not by the settings of the best of them."""
        if row.get("_soup"):
            return f"of {str(row['soup']).replace('+', ', ')}" if not isnan(row.get("soup")) else ""
        keys = self.shown_hp or [k for k in ("lr",) if k in row and not isnan(row[k])]
        return ", ".join(f"{k}={hp(row[k])}" for k in keys if self.reads(row, k) and not isnan(row[k]))

    @staticmethod
    def reads(row, key: str) -> bool:
        """Whether the run's recipe has ``key``: its strategy reads it (lib.config), and it is no soup."""
        return key in row and not row.get("_soup") and strategy_uses(row["strategy"], key)

    def recipe(self, row) -> str:
        params = self.hp_text(row)
        return f"**{row['model']} / {row['strategy']}**" + (f" ({params})" if params else "")

    def swept(self) -> pd.DataFrame:
        """The finished runs as levels of the swept parameters: no soups (a soup is a candidate, not a
        setting), and a key blank where the run's strategy does not read it (it says nothing of it)."""
        out = self.fin[~self.fin["_soup"]].copy()
        for key in self.varying:
            out[key] = out[key].where(_reads(out, key))
        return out


def _reads(frame: pd.DataFrame, key: str) -> pd.Series:
    return frame["strategy"].map(lambda strategy: strategy_uses(strategy, key)).astype(bool)


def _config_keys(runs: list[dict]) -> list[str]:
    keys: dict[str, None] = {}
    for r in runs:
        for k in (r.get("config") or {}):
            keys.setdefault(k, None)
    return list(keys)


def _frame(runs: list[dict], metric: str, maximize: bool, latency: dict[str, float]) -> pd.DataFrame:
    df = runs_frame(runs)
    values = [metric_value(r.get("summary"), r.get("history"), metric, maximize) for r in runs]
    df[metric] = [math.nan if v is None else v for v in values] if runs else []
    df["latency_ms"] = [latency.get(str(r.get("id")), math.nan) for r in runs] if runs else []
    for col in ("model", "strategy", *NUMERIC):
        if col not in df:
            df[col] = "?" if col in ("model", "strategy") else math.nan
    for col in ("model", "strategy"):
        df[col] = df[col].fillna("?").astype(str)
    for col in (*NUMERIC, metric):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["test_k"] = (df["test_acc"] * df["n_test"]).round()
    intervals = [wilson_interval(k, n) for k, n in zip(df["test_k"], df["n_test"], strict=True)]
    df["test_acc_lo"] = [c[0] for c in intervals]
    df["test_acc_hi"] = [c[1] for c in intervals]
    df["_label_short"] = [f"{m}/{s}" for m, s in zip(df["model"], df["strategy"], strict=True)]
    df["wall_time_s"] = pd.to_numeric(pd.Series([r.get("wall_time_s") for r in runs], index=df.index, dtype=object),
                                      errors="coerce") if runs else []
    df["_soup"] = [isinstance(r.get("soup"), dict) for r in runs] if runs else []
    df["_data"] = datasets.data_keys(runs) if runs else []
    return df


def run_table(runs: list[dict], metric: str, goal: str, latency: dict[str, float]) -> RunTable:
    maximize = goal != "minimize"
    df = _frame(runs, metric, maximize, latency)
    recipe_keys = [k for k in _config_keys(runs) if k not in NOISE_KEYS]
    # a configuration is the keys its strategy reads: freeze runs that differ only in backbone_lr_mult are seeds of one
    df["_group"] = [json.dumps({k: as_scalar(given_config(r).get(k)) for k in recipe_keys
                                if strategy_uses(str(given_config(r).get("strategy")), k)}, sort_keys=True,
                               default=str) for r in runs] if runs else []
    fin = df[(df["state"] == State.FINISHED) & df[metric].notna()]
    order = rank_by(range(len(fin)), Selection(metric, goal), lambda i: fin[metric].iloc[i],
                    lambda i: fin["model_size_mb"].iloc[i], lambda i: fin["run_id"].iloc[i])
    fin = fin.iloc[order].copy()   # the kit's one order (lib.selection)
    fin, data, other_data = datasets.one_dataset(fin)
    if not fin.empty:
        fin["pareto_size"] = pareto_front(fin["model_size_mb"], fin[metric], maximize)
        fin["pareto_latency"] = pareto_front(fin["latency_ms"], fin[metric], maximize)
    levels = fin[~fin["_soup"]]
    varying = [k for k in recipe_keys if k in levels and levels.loc[_reads(levels, k), k].astype(str).nunique() > 1]
    table = RunTable(runs, {r.get("id"): r for r in runs}, df, fin, metric, goal, varying,
                     [k for k in varying if k not in ("model", "strategy")], {}, latency, data, other_data)
    for _, row in df.iterrows():
        params = table.hp_text(row)
        table.labels[row["run_id"]] = f"{row['model']}/{row['strategy']}" + (f" {params}" if params else "") \
            + f" [{row['run_id']}]"
    return table
