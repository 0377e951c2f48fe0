"""The report of a sweep: which fine-tuning recipe won, by how much, and whether to believe it.

Reads run records (any SOURCE: lib.sources), and writes to ``out_dir``: ``runs.csv`` (one row per run),
``report.md`` (tables + PNG links), a self-contained ``report.html`` (the same, plots embedded as base64
PNG), ``report.json`` (the verdict and the recommended run, for programs: lib.report.result) and the plots
as PNG files.

The statistics are the ones a careful reviewer asks for on small data:
- accuracy on ``n`` test images is a binomial proportion: its 95% **Wilson** score interval says how
  far the true accuracy may be (100% on 125 images only shows >= 97.0%);
- two runs tested on the *same* images are compared **paired**, with the exact McNemar test on the
  images exactly one of them gets right (``scipy.stats.binomtest``);
- runs that differ only in ``seed`` are aggregated (mean +- std): the seed-to-seed spread is the
  noise floor a difference between recipes has to clear;
- hyperparameter importance is descriptive: |Spearman rho| for numeric keys, eta^2 (share of the
  metric's variance between the key's levels) for categorical keys.

May import the shared modules of lib/ only (runs come from lib.runs, or as a list from the caller, e.g. a
study read from a database by lib.sweep): never lib.train, lib.sweep or lib.ship.
"""
from lib.report.build import build_report
from lib.report.result import recommend
from lib.report.stats import eta_squared, importance, mcnemar, pareto_front, wilson_interval
from lib.runs import STATE_MAP, ReportError, load_local, load_wandb, read_wandb, runs_frame

__all__ = ["build_report", "recommend", "STATE_MAP", "ReportError", "load_local", "load_wandb", "read_wandb",
           "runs_frame", "eta_squared", "importance", "mcnemar", "pareto_front", "wilson_interval"]
