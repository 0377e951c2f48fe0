"""A stand-in for finetune_resnet.py that honours the run contract the sweep runner relies on
(W&B agent environment + parameters file in, run.json + metrics.jsonl out) in a fraction of a second,
so the engine's search, pruning and recovery can be tested on many trials. Its "val_acc" per epoch is
a known function of the parameters: lr * epoch / epochs (capped at 1). Test knobs: ``sleep`` (per epoch),
``linger`` (after the last epoch, as the real trainer's test split), ``resume`` (an unfinished run with this
id goes on from its last epoch, as from a checkpoint), ``ignore_sigterm`` (a trainer that will not stop)."""
import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lib.config import parse_args
from lib.records import ExitCode, RunRecord, State

params = {k: v["value"] for k, v in yaml.safe_load(open(os.environ["WANDB_SWEEP_PARAM_PATH"])).items()
          if isinstance(v, dict)}
_, cli = parse_args(sys.argv[1:])
cfg = {**cli, **params}
if cfg.get("fail") in (True, "true", "True"):
    print("boom: this trial was told to fail", file=sys.stderr)
    sys.exit(ExitCode.FAILED)
record = RunRecord(cfg["runs_dir"], os.environ["WANDB_RUN_ID"])
resuming = cfg.get("resume") in (True, "true", "True") and record.data.get("state") in ("running", "preempted")
if not resuming:
    record.start_fresh()
# The environment the runner gave it (which GPU it may see): a test reads it back from run.json.
record.update(id=os.environ["WANDB_RUN_ID"], state=State.RUNNING, config=cfg, argv=sys.argv[1:],
              env={k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "WANDB_SERVICE")})


def preempted(_signum, _frame):   # as finetune_resnet.py: SIGTERM or Ctrl-C -> recorded preempted, exit code 3
    record.update(state=State.PREEMPTED)
    sys.exit(ExitCode.PREEMPTED)


ignore = cfg.get("ignore_sigterm") in (True, "true", "True")
signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore else preempted)
signal.signal(signal.SIGINT, preempted)
epochs, lr, sleep = int(cfg.get("epochs", 3)), float(cfg.get("lr", 0.5)), float(cfg.get("sleep", 0.0))
best = max([r.get("best_val_acc", 0.0) for r in record.metrics], default=0.0)
for epoch in range(len(record.metrics) + 1, epochs + 1):
    time.sleep(sleep)
    acc = min(1.0, lr * epoch / epochs)
    best = max(best, acc)
    record.log_epoch({"epoch": epoch, "val_acc": acc, "best_val_acc": best})
time.sleep(float(cfg.get("linger", 0.0)))
size = {"model_size_mb": float(cfg["size"])} if "size" in cfg else {}   # a model's size, where a test gives one
record.update(state=State.FINISHED, summary={"best_val_acc": best, **size})
print(json.dumps({"finished": record.dir.name}))
