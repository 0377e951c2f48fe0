"""One fine-tuning run end to end: config -> data -> model -> training -> test -> record (+ W&B)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import signal
import string
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from lib import clock, records
from lib import config as config_lib
from lib.config import Config
from lib.errors import ConfigError, DataError, KitError
from lib.files import atomic_write, run_lock
from lib.records import CHECKPOINT_FILE, ExitCode, RunRecord, RunSummary, State
from lib.train import balance, data, features, lr_find, models, training
from lib.train.cache import SharedCache
from lib.train.metrics import test_metrics

CONFIG_HASH = "config_hash"   # in the checkpoint: config_hash of the configuration it was made with
# What a resumed checkpoint must share with the run: the recipe, and the seed (bookkeeping to the report,
# which groups seeds of one recipe, but it fixes the split and the order of the data a run resumes into).
RUN_DEFINING_KEYS = (*config_lib.RECIPE_KEYS, "seed")


def new_run_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def resolve_config(argv: list[str], env=None) -> Config:
    """defaults < --config FILE < command line < the sweep's params file; checked before any work."""
    return checked(config_lib.resolve(argv, env))


def checked(cfg: Config) -> Config:
    """The checks that need timm, torch or the file system, on top of the config's own."""
    models.check_name(cfg)
    models.check_weights(cfg)
    check_device(cfg)
    models.check_fits(cfg)
    return cfg


def check_device(cfg: Config) -> None:
    """``device`` as torch reads it, and present on this machine (one line, not a CUDA traceback later)."""
    if cfg.device == "auto":
        return
    try:
        device = torch.device(cfg.device)
    except RuntimeError as e:
        raise ConfigError(f"device={cfg.device!r} is not valid: {str(e).splitlines()[0]}") from None
    if device.type == "cuda":
        n = torch.cuda.device_count()
        if (device.index or 0) >= n:
            have = f"{n} CUDA device(s): cuda:0..cuda:{n - 1}" if n else "no CUDA device visible to torch"
            raise ConfigError(f"device={cfg.device!r} is not available: this machine has {have}; "
                              "expected auto or cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device={cfg.device!r} is not available here (no Apple MPS); expected auto or cpu")


def check_data(cfg: Config) -> None:
    """The data checks that need no decoding (data_dir is a folder with at least two class folders of
    images), run before a run folder exists: a run that cannot start leaves nothing behind."""
    data.discover(cfg.data_dir, cfg.val_fraction, cfg.test_fraction, cfg.seed)


def check_can_start(cfg: Config) -> None:
    """What the machine must provide, checked before a run folder, a lock or a W&B run exists: the data,
    and the initial weights (offline: the hub is not retried for minutes; lib.train.weights.availability)."""
    check_data(cfg)
    models.check_available(cfg)


DATA_KEYS = ("data_dir", "val_fraction", "test_fraction", "seed")
WEIGHTS_KEYS = ("model", "weights", "cache_dir")


def apply_sweep(cfg: Config, tracker) -> Config:
    """Under a W&B sweep, wandb.config (the agent's parameters file) wins over everything. Nested groups
    only organise (``config_lib.expand``). wandb.config also holds our own config, handed to wandb.init:
    a key still equal to ours is no override (so a group's leaf may differ from it)."""
    held = {k: v for k, v in tracker.sweep_overrides().items()
            if not (k in config_lib.FIELDS and getattr(cfg, k) == v)}
    new = config_lib.build(held, base=cfg)
    if new == cfg:
        return cfg
    checked(new)
    if any(getattr(new, k) != getattr(cfg, k) for k in DATA_KEYS):
        check_data(new)
    if any(getattr(new, k) != getattr(cfg, k) for k in WEIGHTS_KEYS):
        models.check_available(new)
    return new


def shared_cache(cfg: Config) -> SharedCache:
    root = {"": Path(cfg.runs_dir) / ".cache", "none": None}.get(cfg.shared_cache_dir, Path(cfg.shared_cache_dir))
    return SharedCache(root, cfg.cache_memory_mb)


def load_data(cfg: Config, splits: data.Splits, data_cfg: dict, record: RunRecord, cache: SharedCache,
              stop: training.StopFlag | None = None) -> dict:
    """Decode every split once per study; drop what cannot be used (listed in ``splits.skipped``)."""
    side = data.resize_side(data_cfg)
    decoded = {s: data.decode_cached(cache, Path(cfg.data_dir), splits.items[s], side, data_cfg["interpolation"],
                                     cfg.min_image_side, splits.skipped, desc=f"decode {s}", stop=stop)
               for s in data.SPLITS}
    for split in ("train", "val"):
        if len(decoded[split].labels) == 0:
            reasons = Counter(s["reason"].split(" (")[0] for s in splits.skipped)
            why = f"; most skipped files: {reasons.most_common(1)[0][0]}" if reasons else ""
            raise DataError(f"no usable {split} images in {cfg.data_dir!r} "
                            f"({len(splits.skipped)} file(s) skipped{why})")
    splits.warnings += data.data_warnings(splits.classes, decoded)
    splits.items = {s: [(p, int(label)) for p, label in zip(d.paths, d.labels, strict=True)]
                    for s, d in decoded.items()}
    splits.sizes = data.source_sizes(Path(cfg.data_dir), decoded["train"].paths, data_cfg)
    upscaled = data.upscale_warning(splits.sizes, cfg.model, cfg.image_size, models.min_input_side(cfg.model))
    splits.warnings += [upscaled] if upscaled else []
    for w in splits.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if splits.skipped:
        print(f"skipped {len(splits.skipped)} file(s); see {record.path}", file=sys.stderr)
    return decoded


def make_loaders(cfg: Config, data_cfg: dict, decoded: dict, mixing: bool, device: torch.device) -> dict:
    """On CUDA (main-process loading), uint8 batches go to the GPU and are transformed there, light
    augmentation included; elsewhere deterministic transforms run per batch and augmentation per image."""
    gpu = device.type == "cuda" and cfg.num_workers == 0

    augment = cfg.augmentation()

    def one(split, train):
        batched = not train or augment == "none" or (augment == "light" and gpu)
        return data.loader(decoded[split], data.transforms(data_cfg, augment, train, on_device=gpu),
                           cfg.batch_size, cfg.num_workers, cfg.seed, train=train, drop_last=train and mixing,
                           pin_memory=device.type == "cuda", batched=batched, device=device if gpu else None,
                           sampler=cfg.sampler)
    return {"train": one("train", True), "val": one("val", False), "test": one("test", False)}


def make_loss(cfg: Config, decoded: data.Decoded, num_classes: int, mixing: bool) -> nn.Module:
    """The training loss: cross-entropy, smoothed, class-weighted by ``class_weighting`` (lib.train.balance)."""
    weight = balance.loss_weights(cfg.class_weighting, decoded.labels, num_classes)
    return balance.make_loss(weight, cfg.label_smoothing, mixing)


def execute(cfg: Config, env: dict) -> int:
    """Run one experiment. The caller has prepared W&B's environment (lib.train.tracking)."""
    from lib.train.tracking import in_sweep

    run_id = cfg.run_id or (env.get("WANDB_RUN_ID") if in_sweep(env) else "") or new_run_id()
    check_writable(cfg.runs_dir)
    if cfg.shared_cache_dir not in ("", "none"):
        check_writable(cfg.shared_cache_dir, "shared_cache_dir")
    # From here on SIGTERM/SIGINT only set the flag, which every long stage checks (training.StopFlag):
    # a preempted run records where it stood and exits 3 instead of dying half-way through a write.
    stop = training.StopFlag()
    previous = {sig: signal.signal(sig, lambda n, _f: setattr(stop, "signal", signal.Signals(n).name))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with run_lock(Path(cfg.runs_dir) / run_id, records.LOCK_FILE):   # held until the run ends: one writer
            refuse_finished(cfg, run_id)
            return _execute(cfg, env, run_id, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def refuse_finished(cfg: Config, run_id: str) -> None:
    """A finished run is a result: training over it takes --overwrite (a sweep runner never reuses one)."""
    record = RunRecord(cfg.runs_dir, run_id)
    if record.data.get("state") == State.FINISHED and not cfg.overwrite:
        raise ConfigError(f"run {run_id} already finished ({record.path}): pass --overwrite to train it "
                          "again, or another --run_id")


def _execute(cfg: Config, env: dict, run_id: str, stop: training.StopFlag) -> int:
    from lib.train.tracking import Tracker

    # WANDB_DIR (W&B's own variable) lets a sweep runner put W&B's files next to the record.
    tracker = Tracker(cfg, Path(env.get("WANDB_DIR") or Path(cfg.runs_dir) / run_id), run_id)
    try:
        cfg = apply_sweep(cfg, tracker)
    except KitError:
        tracker.finish(exit_code=ExitCode.BAD_INPUT)
        raise
    cfg = dataclasses.replace(cfg, run_id=run_id)
    if cfg.time_limit_s:
        stop.deadline = clock.process_started() + cfg.time_limit_s   # imports count
    tracker.update_config(cfg)
    record = RunRecord(cfg.runs_dir, run_id)
    if fetch_preempted_checkpoint(record, tracker, env):
        record = RunRecord(cfg.runs_dir, run_id)   # as the preempted run left it, on whichever machine
    defined_by = config_hash(cfg.to_dict())   # as given: an out-of-memory retry's batch size is not
    try:
        resume = load_checkpoint(record, cfg, defined_by)
    except KitError:
        tracker.finish(exit_code=ExitCode.BAD_INPUT)
        raise
    for note in record.notes:
        print(f"warning: {note}", file=sys.stderr)
    if resume:
        print(f"resuming run {run_id} from epoch {resume['progress']['epoch']}", file=sys.stderr)
    else:
        record.start_fresh()
    started = time.time()
    record.update(id=run_id, name=cfg.run_name or cfg.default_run_name(), state=State.RUNNING,
                  config=cfg.to_dict(), started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  resumed_from_epoch=resume["progress"]["epoch"] if resume else None,
                  wandb={"mode": env.get("WANDB_MODE"), "run_id": tracker.run.id,
                         "sweep_id": env.get("WANDB_SWEEP_ID")})
    try:
        summary = train_with_oom_retries(cfg, record, tracker, stop, resume, defined_by)
    except training.Interrupted as e:
        stop_file = record.dir / records.STOP_FILE   # a sweep runner writes "pruned" there before its SIGTERM
        if stop_file.exists() and stop_file.read_text().strip() == State.PRUNED:
            # Pruned by the sweep (hyperband): final, not resumable; the epochs run so far stay recorded.
            record.update(state=State.PRUNED, pruned_by=str(e))
            (record.dir / CHECKPOINT_FILE).unlink(missing_ok=True)
            tracker.finish(exit_code=ExitCode.PRUNED)
            print(f"run {run_id} pruned by the sweep after {len(record.metrics)} epoch(s)", file=sys.stderr)
            return ExitCode.PRUNED
        # Resumable: the last epoch's checkpoint is on disk; the same run_id continues it.
        record.update(state=State.PREEMPTED, preempted_by=str(e))
        keep_preempted_checkpoint(record, tracker, env)
        tracker.mark_preempting()
        tracker.finish(exit_code=ExitCode.PREEMPTED)
        print(f"run {run_id} preempted by {e}: start it again with --run_id={run_id} to resume", file=sys.stderr)
        return ExitCode.PREEMPTED
    except KitError as e:
        record.update(state=State.FAILED, error=str(e))
        tracker.finish(exit_code=ExitCode.BAD_INPUT)
        raise
    except training.TrainingFailed as e:
        record.update(state=State.FAILED, error=str(e))
        tracker.finish(exit_code=ExitCode.FAILED)
        print(f"error: run {run_id} failed: {e}", file=sys.stderr)
        return ExitCode.FAILED
    except Exception as e:  # noqa: BLE001 - recorded, then re-raised for the traceback
        record.update(state=State.FAILED, error=f"{type(e).__name__}: {e}")
        tracker.finish(exit_code=ExitCode.FAILED)
        raise
    record.update(state=State.FINISHED, summary=summary, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  wall_time_s=round(time.time() - started, 2))
    (record.dir / CHECKPOINT_FILE).unlink(missing_ok=True)  # large, and only needed to resume
    if cfg.log_model:   # after the record says finished: the artifact carries the final record
        tracker.log_model(summary, [record.dir / records.WEIGHTS_FILE, record.path])
    tracker.finish(exit_code=ExitCode.OK)
    print(f"run {run_id} finished: best_val_acc {summary['best_val_acc']:.4f}"
          + (f", test_acc {summary['test_acc']:.4f}" if summary["test_acc"] is not None else "")
          + f" -> {record.dir}")
    return ExitCode.OK


def train_with_oom_retries(cfg: Config, record: RunRecord, tracker, stop, resume, defined_by: str = "") -> dict:
    """Out of GPU memory: halve the batch size (recorded) and start the run again, down to 1.
    ``defined_by``: the configuration's hash as given, which every checkpoint carries."""
    while True:
        try:
            return _train(cfg, record, tracker, stop, resume, defined_by)
        except torch.OutOfMemoryError:
            if cfg.batch_size <= 1:
                raise training.TrainingFailed("out of memory even at batch_size=1") from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size // 2)
            resume = None
            record.start_fresh_epochs()
            record.update(config=cfg.to_dict(), oom_retries=record.data.get("oom_retries", 0) + 1)
            print(f"warning: out of memory: retrying with batch_size={cfg.batch_size}", file=sys.stderr)


def check_writable(folder: str, key: str = "runs_dir") -> None:
    """Fail before any work when records cannot be written (a file in the way, permissions, full disk).
    The probe file is this process's own: the workers of a sweep start together in one runs_dir."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as e:
        raise ConfigError(f"{key}={folder!r} is not writable: {e.strerror or e}") from None


class Hooks:
    """What the training loop hands back each epoch: the record, W&B and the checkpoint. ``extra``: what
    the checkpoint carries besides the loop's state (the pick of ``lr: auto``, which a resumed run keeps)."""

    def __init__(self, record: RunRecord, tracker, extra: dict | None = None):
        self.record, self.tracker, self.extra = record, tracker, extra or {}

    def epoch(self, row: dict) -> None:
        self.record.log_epoch(row)
        self.tracker.log(row)

    def best(self, state: dict) -> None:
        self.record.save_weights(state)

    def load_best(self) -> dict:
        return self.record.load_weights()

    def checkpoint(self, state: dict) -> None:
        atomic_write(self.record.dir / CHECKPOINT_FILE, lambda tmp: torch.save({**state, **self.extra}, tmp))


def _online_sweep(env) -> bool:
    from lib.train.tracking import in_sweep

    return in_sweep(env) and env.get("WANDB_MODE") == "online"


def keep_preempted_checkpoint(record: RunRecord, tracker, env) -> None:
    """Online under a W&B sweep, the checkpoint (and the record) goes to W&B: W&B requeues the run under
    the same run id, and the agent that takes it may be on another machine (lib/train/tracking.py says
    what W&B does, from its source). Offline, the next start is on this disk (`local` resumes it there)."""
    path = record.dir / CHECKPOINT_FILE
    if not _online_sweep(env) or not path.exists():
        return
    try:
        tracker.log_checkpoint([path, record.path, record.dir / records.METRICS_FILE], len(record.metrics))
    except Exception as e:  # noqa: BLE001 - the run is still preempted; the next start may begin over
        print(f"warning: checkpoint not uploaded to W&B ({type(e).__name__}: {e})", file=sys.stderr)


def fetch_preempted_checkpoint(record: RunRecord, tracker, env) -> bool:
    """A sweep run W&B handed to this agent after a preemption elsewhere: the checkpoint it left on W&B
    (``checkpoint-<run_id>``), with its record, is put in its folder, unless the one here is as far on
    (preempted here, or here again after a start elsewhere that got further)."""
    if not _online_sweep(env):
        return False
    here = len(record.metrics) if (record.dir / CHECKPOINT_FILE).exists() else -1
    if tracker.fetch_checkpoint(record.dir, newer_than=here):
        print(f"run {record.dir.name}: checkpoint of its preempted start fetched from W&B", file=sys.stderr)
        return True
    return False


def load_checkpoint(record: RunRecord, cfg: Config | None = None, defined_by: str | None = None) -> dict | None:
    """The checkpoint of an unfinished run with this id, with epochs logged after it dropped. A damaged
    one (a truncated or zeroed file) is noted in the record and the run starts over: there is no older
    checkpoint to fall back to, and a fresh start is always correct. One made with another configuration
    (``defined_by``: ``config_hash``) is refused: resumed, it would be recorded as a run of this one."""
    path = record.dir / CHECKPOINT_FILE
    if not path.exists() or record.data.get("state") == State.FINISHED:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        done = state["progress"]["epoch"]
        int(done), state["model"], state["rng"]   # what resuming needs is there (else KeyError)
    except Exception as e:  # noqa: BLE001 - whatever torch.load raises on a damaged file (Runtime, EOF, Unpickling...)
        detail = " ".join(str(e).split())[:120] or type(e).__name__
        record.notes.append(f"{CHECKPOINT_FILE} was damaged ({detail}): the run starts over from the beginning")
        return None
    made_with = state.get(CONFIG_HASH)
    if defined_by and made_with and made_with != defined_by:   # checkpoints from before the hash: trusted
        raise ConfigError(f"run {record.dir.name}: its checkpoint {path} was made with another configuration"
                          f"{_changed(record, cfg)}: refused, resuming it would mix two runs; run it with its "
                          f"own configuration, or give this one another --run_id")
    for row in [r for r in record.metrics if r["epoch"] > done]:
        record.metrics.remove(row)
    return state


def config_hash(values: dict) -> str:
    """The digest of RUN_DEFINING_KEYS in a config dict, which every checkpoint carries."""
    defining = {k: values.get(k) for k in RUN_DEFINING_KEYS}
    return hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _changed(record: RunRecord, cfg: Config | None) -> str:
    """`` (lr: 0.01 -> 0.1)``: what differs from the configuration the record says the run started with."""
    before = record.data.get("config")
    if cfg is None or not isinstance(before, dict):
        return ""
    now = cfg.to_dict()
    keys = [k for k in RUN_DEFINING_KEYS if k in before and before[k] != now.get(k)
            and now.get(k) != config_lib.LR_AUTO]   # the record holds the rate lr: auto picked
    shown = ", ".join(f"{k}: {before[k]!r} -> {now.get(k)!r}" for k in keys[:4])
    return f" ({shown}{', ...' if len(keys) > 4 else ''})" if shown else ""


def _train(cfg: Config, record: RunRecord, tracker, stop: training.StopFlag, resume: dict | None,
           defined_by: str = "") -> dict:
    training.seed_everything(cfg.seed)
    device = training.pick_device(cfg.device)
    # The head needs the class count and decoding needs the model's preprocessing: discover first.
    # A preemption grace period is short: the stop flag is checked between stages and inside every long
    # one (decoding, feature extraction, evaluation), not only between training batches.
    splits = data.discover(cfg.data_dir, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    stop.check()
    model, source, data_cfg = models.create(cfg, len(splits.classes), models.weights_dir(cfg))
    stop.check()
    cache = shared_cache(cfg)
    decoded = load_data(cfg, splits, data_cfg, record, cache, stop)
    record.update(classes=splits.classes, split=splits.as_record(), skipped=splits.skipped,
                  warnings=[*record.notes, *splits.warnings], weights_source=source, data_config=data_cfg,
                  image_sizes=splits.sizes, augmentation=cfg.augmentation(),   # augment=auto as applied
                  device=str(device), counts={s: len(d.labels) for s, d in decoded.items()},
                  class_counts={s: balance.class_counts(d.labels, len(splits.classes)) for s, d in decoded.items()},
                  data_cache=f"{sum(d.reused for d in decoded.values())} of {len(decoded)} splits reused "
                             "from the sweep cache" if cache.root else "not shared")
    trainable0, total = models.count_params(model)
    accel = training.Accel.for_config(cfg, device)
    model.to(device, memory_format=accel.memory_format)
    mixup = training.make_mixup(cfg, len(splits.classes))
    loaders = make_loaders(cfg, data_cfg, decoded, mixup is not None, device)
    loss_fn = make_loss(cfg, decoded["train"], len(splits.classes), mixup is not None).to(device)
    record.update(balancing={"class_weighting": cfg.class_weighting, "sampler": cfg.sampler,
                             "loss_weights": None if loss_fn.weight is None else loss_fn.weight.tolist()})
    store = features.Store(decoded, data_cfg, cache, stop)
    cfg, found = auto_lr(cfg, record, tracker, (model, loaders, accel, loss_fn, mixup, store, stop), resume)
    # what the checkpoint carries besides the loop's state: the configuration it may be resumed with
    # (load_checkpoint), and the pick of lr: auto
    hooks = Hooks(record, tracker, {CONFIG_HASH: defined_by, **({"lr_find": found} if found else {})})
    fitted = training.fit(cfg, model, loaders, accel, loss_fn, mixup, hooks, stop, resume, store)
    test = training.evaluate(model, loaders["test"], accel, stop)
    test_summary, per_class, cm = test_metrics(test, splits.classes)
    weights_file = record.dir / records.WEIGHTS_FILE
    summary = RunSummary(**fitted, **test_summary, total_params=total, lr_found=found.get("lr"),
                         model_size_mb=round(weights_file.stat().st_size / 2**20, 3)).to_dict()
    record.update(per_class=per_class, confusion_matrix=cm,
                  test_predictions={"y_true": test["y_true"].tolist(), "y_pred": test["y_pred"].tolist()})
    tracker.finish_run(summary, splits.classes, test["y_true"], test["y_pred"], per_class)
    return summary


def auto_lr(cfg: Config, record: RunRecord, tracker, setup: tuple, resume: dict | None) -> tuple[Config, dict]:
    """``lr: auto`` made a number by the range test (lib.train.lr_find) before training; a resumed run keeps
    the pick its checkpoint carries. The record's config and W&B then hold the number, ``lr_find`` says how."""
    cfg, found = lr_find.resolve(cfg, *setup, folder=record.dir, stored=(resume or {}).get("lr_find"))
    if found:
        record.update(config=cfg.to_dict(), lr_find=found)
        tracker.found_lr(cfg.lr)
    return cfg, found


def main(argv: list[str], env=os.environ) -> int:
    from lib.train import tracking

    if config_lib.wants_help(argv):
        print(config_lib.help_text())
        return ExitCode.OK
    try:
        cfg = resolve_config(argv, env)
        check_can_start(cfg)               # before any run folder exists
        tracking.prepare_environment(env)  # before wandb is imported anywhere
        return execute(cfg, env)
    except KitError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
