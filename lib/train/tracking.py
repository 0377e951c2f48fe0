"""Weights & Biases: one run per fine-tuning run, offline when there is no API key.

``prepare_environment`` must run before ``wandb`` is imported: W&B reads its mode from the
environment at import/setup time, and in offline mode we also switch off its background error
reporting so an air-gapped run makes no network call at all.
"""
from __future__ import annotations

import netrc
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lib import config as config_lib
from lib.config import Config

QUIET_MODES = ("offline", "disabled", "dryrun")


def _has_api_key(env: MutableMapping[str, str]) -> bool:
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(env.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def prepare_environment(env: MutableMapping[str, str]) -> str:
    """Pick W&B's mode (offline unless an API key is configured) and return it."""
    if not env.get("WANDB_MODE"):
        env["WANDB_MODE"] = "online" if _has_api_key(env) else "offline"
    if env["WANDB_MODE"] in QUIET_MODES:
        env.setdefault("WANDB_ERROR_REPORTING", "false")  # else a background post with a 10 s timeout
    env.setdefault("WANDB_SILENT", "true")
    env.setdefault("WANDB_CONSOLE", "off")
    return env["WANDB_MODE"]


def in_sweep(env: MutableMapping[str, str]) -> bool:
    return bool(env.get("WANDB_SWEEP_ID"))


def sweep_keys(env: MutableMapping[str, str]) -> set[str]:
    """The config keys a W&B sweep sets for this run (its parameters file, read as lib.config reads it)."""
    path = env.get("WANDB_SWEEP_PARAM_PATH")
    if not in_sweep(env) or not path or not Path(path).is_file():
        return set()
    return set(config_lib.expand(config_lib.load_yaml(path)))


class Tracker:
    """Thin wrapper over one ``wandb`` run: config, per-epoch metrics, summary, artifacts."""

    def __init__(self, cfg: Config, run_dir: Path, run_id: str):
        import wandb

        self.wandb = wandb
        run_dir.mkdir(parents=True, exist_ok=True)
        extra = [t.strip() for t in cfg.tags.split(",") if t.strip()]
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity or None, group=cfg.group or None, id=run_id,
            name=cfg.run_name or cfg.default_run_name(), tags=[cfg.model, cfg.strategy, *extra],
            config=cfg.to_dict(), dir=str(run_dir), resume="allow", job_type="finetune",
            mode=os.environ.get("WANDB_MODE"),   # W&B's process-wide setup may predate the variable
            reinit="finish_previous")
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")
        self.run.define_metric("val_acc", summary="max")
        self.run.define_metric("best_val_acc", summary="max")
        self.run.define_metric("val_balanced_acc", summary="max")
        self.run.define_metric("best_val_balanced_acc", summary="max")
        self.run.define_metric("val_loss", summary="min")
        self.sweep_keys = sweep_keys(os.environ)

    def sweep_overrides(self) -> dict[str, Any]:
        """Config values W&B holds: ours, plus a sweep's parameters file (which wins)."""
        return dict(self.run.config)

    def update_config(self, cfg: Config) -> None:
        self.run.config.update(cfg.to_dict(), allow_val_change=True)
        self.run.name = cfg.run_name or cfg.default_run_name()
        self.run.tags = tuple(dict.fromkeys([*self.run.tags, cfg.model, cfg.strategy]))

    def found_lr(self, lr: float) -> None:
        """The rate ``lr: auto`` picked, as the run's ``lr`` (W&B shows a number, not "auto"). A sweep's own
        parameter stays as the sweep gave it: W&B locks it (the update is ignored), and its grid search
        finds the points already run by these values. The summary's ``lr_found`` has the number there."""
        self.run.summary["lr_found"] = lr
        if "lr" not in self.sweep_keys:
            self.run.config.update({"lr": lr}, allow_val_change=True)

    def log(self, row: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in row.items() if isinstance(v, (int, float))})

    def finish_run(self, summary: dict[str, Any], classes: list[str], y_true, y_pred,
                   per_class: list[dict]) -> None:
        # The test predictions let a report read from W&B compare the top runs (McNemar), as a local one does.
        self.run.summary.update({**summary, "classes": list(classes), "test_y_true": list(map(int, y_true)),
                                 "test_y_pred": list(map(int, y_pred))})
        if len(y_true):
            self.run.log({"test_confusion_matrix": self.wandb.plot.confusion_matrix(
                y_true=list(map(int, y_true)), preds=list(map(int, y_pred)), class_names=classes)})
            cols = ["class", "precision", "recall", "f1", "support"]
            self.run.log({"test_per_class": self.wandb.Table(
                columns=cols, data=[[r[c] for c in cols] for r in per_class])})

    def log_model(self, summary: dict[str, Any], files: list[Path]) -> None:
        """The best weights and the finished run record as ``model-<run_id>:best`` (what export fetches)."""
        art = self.wandb.Artifact(f"model-{self.run.id}", type="model",
                                  metadata={k: v for k, v in summary.items() if v is not None})
        for f in files:
            if f.exists():
                art.add_file(str(f))
        self.run.log_artifact(art, aliases=["best"])

    # What W&B does with a preempted sweep run (wandb 0.31.0's SDK, and W&B's docs for the server side):
    # mark_preempting() only tells the server (wandb/sdk/wandb_run.py:3694, publish_preempting); a run so
    # marked that exits non-zero is put back, itself, on the sweep's run queue, which agents drain before
    # the search suggests new runs (docs: models/runs/resuming.mdx, "Resume preemptible Sweeps runs").
    # The agent that takes it gets a `resume` command, handled exactly as `run` (wandb/wandb_agent.py:575)
    # and started with WANDB_RUN_ID = that command's run_id (wandb_agent.py:611-619): the same run id and
    # parameters, on whichever machine asked, while wandb.init's own id= is ignored under a sweep
    # (wandb/sdk/wandb_init.py:240-280, clear_run_path_if_sweep_or_launch). So the checkpoint travels by
    # run id: ``checkpoint-<run_id>`` (type "checkpoint", a new version per preemption, alias latest).
    def log_checkpoint(self, files: list[Path], epochs_logged: int) -> None:
        """A preempted run's checkpoint and record, for the agent W&B hands the run to next."""
        art = self.wandb.Artifact(f"checkpoint-{self.run.id}", type="checkpoint",
                                  metadata={"epochs_logged": epochs_logged})
        for f in files:
            if f.exists():
                art.add_file(str(f))
        self.run.log_artifact(art, aliases=["latest"])

    def fetch_checkpoint(self, dest: Path, newer_than: int = -1) -> bool:
        """Download ``checkpoint-<run_id>:latest`` into ``dest`` if it logged more than ``newer_than``
        epochs; False when there is none (a run's first start), it is older, or W&B cannot be read (the
        run then goes on from what it has here, or starts over, which is always correct)."""
        name = "/".join(p for p in (self.run.entity, self.run.project, f"checkpoint-{self.run.id}:latest") if p)
        try:
            art = self.wandb.Api().artifact(name, type="checkpoint")
            if (getattr(art, "metadata", None) or {}).get("epochs_logged", 0) <= newer_than:
                return False
            art.download(root=str(dest))
        except Exception:  # noqa: BLE001 - not found (CommError), no network, no key: start over
            return False
        return True

    def mark_preempting(self) -> None:
        self.run.mark_preempting()

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)

