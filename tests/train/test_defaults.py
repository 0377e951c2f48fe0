"""Defaults that work without a sweep: `freeze` with every default but the data and the model ends
within a few points of a logistic-regression probe on the same frozen features (scikit-learn, measured
here), on real few-class data the kit was not tuned on: Animal-MNIST subsets of 2 and 3 classes."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib.config import Config
from lib.files import read_json
from lib.train import data, models
from lib.train.demo_data import CLASSES, load_arrays
from lib.train.run import main

KIND = "training"   # real training in this process: in `make test`, not `make check`


def subset(out: Path, names: tuple[str, ...], per_class: int, seed: int = 3) -> Path:
    images, labels = load_arrays()
    rng = np.random.default_rng(seed)
    for name in names:
        folder = out / name
        folder.mkdir(parents=True)
        for i in rng.permutation(np.flatnonzero(labels == CLASSES.index(name)))[:per_class]:
            Image.fromarray(images[i], mode="L").save(folder / f"{i:05d}.png")
    return out


def features(record: dict, root: Path, split: str):
    """Pre-logits features of the run's own split, from the same pretrained backbone and preprocessing."""
    cfg = Config(**record["config"])
    model, _, data_cfg = models.create(cfg, len(record["classes"]), Path(cfg.cache_dir) / "weights")
    items = [(p, record["classes"].index(Path(p).parts[0])) for p in record["split"][split]]
    decoded = data.decode_split(root, items, data.resize_side(data_cfg), data_cfg["interpolation"], 1, [], split)
    x = data.transforms(data_cfg, "none", train=False)(decoded.images)
    with torch.no_grad():
        return model.eval().forward_head(model.forward_features(x), pre_logits=True).numpy(), decoded.labels.numpy()


@pytest.mark.parametrize("names", [("cow", "horse"), ("bird", "cat", "elephant")], ids=["2 classes", "3 classes"])
def test_freeze_with_defaults_is_as_good_as_a_linear_probe(names, tmp_path, cache_dir):
    from sklearn.linear_model import LogisticRegression

    root = subset(tmp_path / "data", names, per_class=200)
    args = [f"--data_dir={root}", f"--runs_dir={tmp_path / 'runs'}", f"--cache_dir={cache_dir}",
            "--model=mobilenetv2_100", "--image_size=64", "--min_image_side=16", "--device=cpu", "--run_id=d"]
    assert main(args) == 0                      # strategy, optimizer, lr, epochs, augment: the defaults
    record = read_json(tmp_path / "runs" / "d" / "run.json")
    assert record["config"]["strategy"] == "freeze"
    probe = LogisticRegression(max_iter=5000).fit(*features(record, root, "train"))
    test_x, test_y = features(record, root, "test")
    probe_acc, kit_acc = probe.score(test_x, test_y), record["summary"]["test_acc"]
    majority = np.bincount(test_y).max() / len(test_y)
    assert probe_acc > majority + 0.15          # the features do carry the classes
    assert kit_acc >= probe_acc - 0.05, (kit_acc, probe_acc)


def test_the_default_freeze_is_the_fast_path(tmp_path, cache_dir):
    """--help calls freeze "the safe, fast baseline", yet its default augment=light kept the frozen features
    from being stored (feature_cache: freeze: off). augment=auto is none for freeze (docs/defaults.md has
    the evidence) and light for a strategy that trains the backbone."""
    from lib import config, recipes

    root = subset(tmp_path / "data", ("bear", "zebra"), per_class=20)
    args = [f"--data_dir={root}", f"--runs_dir={tmp_path / 'runs'}", f"--cache_dir={cache_dir}",
            "--model=mobilenetv2_100", "--image_size=32", "--min_image_side=16", "--device=cpu", "--epochs=2"]
    assert main([*args, "--run_id=f"]) == 0                      # strategy and augment: the defaults
    record = read_json(tmp_path / "runs" / "f" / "run.json")
    assert (record["config"]["strategy"], record["config"]["augment"], record["augmentation"]) == \
        ("freeze", "auto", "none")
    assert record["summary"]["feature_cache"].startswith("freeze: on: pre-logits, exact")
    assert main([*args, "--run_id=p", "--strategy=partial", "--unfreeze_blocks=1"]) == 0
    assert read_json(tmp_path / "runs" / "p" / "run.json")["augmentation"] == "light"
    assert (config.Config().augmentation(), config.Config(strategy="full").augmentation(),
            config.Config(augment="light").augmentation()) == ("none", "light", "light")
    assert "freeze" in recipes.AUTO_AUGMENT and "fast baseline" in config.help_text()
