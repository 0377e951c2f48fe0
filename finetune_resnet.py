#!/usr/bin/env python
"""Fine-tune one pretrained image classifier: one run of the study.

    python finetune_resnet.py --data_dir data/animal_mnist --model mobilenetv2_100 --strategy two_phase
    python finetune_resnet.py --config my_run.yaml --lr=3e-4
    python finetune_resnet.py --help          # every config key, its default and what is allowed

Under `wandb agent` the sweep's parameters arrive on the command line and in wandb.config; both work.
Exit codes: 0 finished, 1 failed, 2 bad config or data, 3 preempted, 4 pruned.
"""
import os
import sys

from lib import config
from lib.errors import KitError
from lib.records import ExitCode


def main(argv: list[str], env=os.environ) -> int:
    # Help and config errors answer from lib.config alone: torch and timm take seconds to import.
    if config.wants_help(argv):
        print(config.help_text())
        return ExitCode.OK
    try:
        config.resolve(argv, env)
    except KitError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    from lib.train.run import main as run  # the heavy part: torch, timm, W&B

    return run(argv, env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
