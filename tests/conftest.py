"""Shared fixtures: real images (Animal-MNIST silhouettes, shipped by pip), W&B kept offline."""
from __future__ import annotations

import os

import pytest

# W&B must never reach the network from tests; set before anything imports wandb.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
os.environ["HF_HUB_OFFLINE"] = "1"  # no hub here: fail in 0.1 s, not after retries


@pytest.fixture(scope="session")
def animals(tmp_path_factory):
    """4 classes x 40 real images, class folders only (the run carves val and test)."""
    from lib.train.demo_data import prepare

    return prepare(tmp_path_factory.mktemp("animals"), per_class=40, classes=4, seed=1)


@pytest.fixture
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.getbasetemp() / "weights-cache")


@pytest.fixture
def base_args(animals, tmp_path, cache_dir):
    """Command-line arguments of a tiny, fast, real run on the fixture images."""
    return [f"--data_dir={animals}", f"--runs_dir={tmp_path / 'runs'}", f"--cache_dir={cache_dir}",
            "--image_size=32", "--min_image_side=16", "--batch_size=16", "--augment=none",
            "--val_fraction=0.25", "--test_fraction=0.25", "--epochs=2", "--device=cpu"]
