#!/usr/bin/env python
"""Fine-tune one pretrained image classifier: one run of the study.

    python finetune_resnet.py --data_dir data/animal_mnist --model mobilenetv2_100 --strategy two_phase
    python finetune_resnet.py --config my_run.yaml --lr=3e-4
    python finetune_resnet.py --help          # every config key, its default and what is allowed

Under `wandb agent` the sweep's parameters arrive on the command line and in wandb.config; both work.
Exit codes: 0 finished, 1 failed, 2 bad config or data.
"""
import sys

from lib.run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
