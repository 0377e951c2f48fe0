"""cache_memory_mb bounds everything a run holds in memory (decoded splits and frozen outputs together),
not each array on its own."""
from pathlib import Path

from lib.files import read_json
from lib.train import data
from lib.train.cache import SharedCache
from lib.train.run import main

SIDE = 37                       # image_size 32 / crop_pct 0.875: how small_cnn's images are stored
IMAGE_BYTES = 3 * SIDE * SIDE + 8   # uint8 pixels and an int64 label


def test_decoded_splits_share_one_budget(animals, tmp_path):
    root = Path(animals)
    splits = data.discover(animals, 0.25, 0.25, seed=0)
    size = {s: len(splits.items[s]) * IMAGE_BYTES for s in data.SPLITS}
    budget = size["train"] + size["val"] + size["test"] // 2   # each split fits alone; all three do not
    cache = SharedCache(tmp_path / "cache", memory_mb=budget / 2**20)
    decoded = {s: data.decode_cached(cache, root, splits.items[s], SIDE, "bilinear", 16, [], s) for s in data.SPLITS}
    assert sum(cache.held.values()) == size["train"] + size["val"] <= budget     # the test split is memory-mapped
    again = SharedCache(tmp_path / "cache", memory_mb=budget / 2**20)            # the next run of the study
    reread = {s: data.decode_cached(again, root, splits.items[s], SIDE, "bilinear", 16, [], s) for s in data.SPLITS}
    assert sum(again.held.values()) <= budget
    assert all(reread[s].reused and (reread[s].images == decoded[s].images).all() for s in data.SPLITS)


def test_frozen_outputs_get_only_what_decoded_images_leave(base_args, tmp_path):
    # 160 decoded images (658 kB) fit in 0.65 MB, and so would the frozen outputs alone (120 x 128 floats,
    # 61 kB), but not both.
    assert main(base_args + ["--model=small_cnn", "--strategy=freeze", "--epochs=1", "--cache_memory_mb=0.65",
                             "--run_id=budget"]) == 0
    rec = read_json(tmp_path / "runs" / "budget" / "run.json")
    assert rec["summary"]["feature_cache"].startswith("freeze: off (the frozen output needs"), rec["summary"]
    assert "beside the decoded images" in rec["summary"]["feature_cache"]
