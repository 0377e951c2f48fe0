"""Speed without changing results. Never pay twice: decoded images and frozen outputs are computed
once per study, shared by its runs, invalidated by any change that matters, safe with concurrent
writers, and equal to the plain loop. Augmentation can run on whole batches on the device."""
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from lib.config import build
from lib.train import data, features
from lib.train.cache import SharedCache
from tests.train.test_training import run

MOBILENET = ["--model=mobilenetv2_100", "--epochs=3", "--phase1_epochs=2", "--dropout=0.2", "--lr=0.02",
             "--image_size=48", "--unfreeze_blocks=1"]


def entries(base_args) -> set[str]:
    runs_dir = Path(next(a.split("=", 1)[1] for a in base_args if a.startswith("--runs_dir=")))
    return {p.name for p in (runs_dir / ".cache").iterdir() if not p.name.startswith(".")}


@pytest.mark.parametrize("strategy,mode", [("freeze", "freeze: on: pre-logits, exact"),
                                           ("partial", "partial: on: after blocks.5."),
                                           ("two_phase", "freeze: on: pre-logits, exact")])
def test_cached_runs_match_the_plain_loop(base_args, strategy, mode):
    extra = MOBILENET + [f"--strategy={strategy}"]
    cached, rows_c, _ = run(base_args, extra + [f"--run_id={strategy}-cached"])
    plain, rows_p, _ = run(base_args, extra + [f"--run_id={strategy}-plain", "--feature_cache=false"])
    assert cached["summary"]["feature_cache"].startswith(mode)
    assert "off (feature_cache=false)" in plain["summary"]["feature_cache"]
    for a, b in zip(rows_c, rows_p, strict=True):
        for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), (a["epoch"], key)
    assert cached["summary"]["test_acc"] == pytest.approx(plain["summary"]["test_acc"], abs=1e-6)


def test_later_runs_reuse_the_study_cache(base_args):
    first, _, _ = run(base_args, MOBILENET + ["--strategy=freeze", "--run_id=a"])
    made = entries(base_args)
    second, _, _ = run(base_args, MOBILENET + ["--strategy=two_phase", "--lr=0.05", "--run_id=b"])
    assert first["data_cache"] == "0 of 3 splits reused from the sweep cache"
    assert second["data_cache"] == "3 of 3 splits reused from the sweep cache"
    assert second["summary"]["feature_cache"].startswith("freeze: on: pre-logits, exact, 2 of 2 reused")
    assert "partial: on: after blocks.5" in second["summary"]["feature_cache"]
    assert made < entries(base_args)           # the partial phase's cut is new; nothing was rebuilt
    assert first["split"] == second["split"] and first["skipped"] == second["skipped"]


def test_changed_image_weights_or_size_invalidate(base_args, animals, tmp_path):
    base, _, _ = run(base_args, MOBILENET + ["--strategy=freeze", "--run_id=base"])
    before = entries(base_args)
    run(base_args, MOBILENET + ["--strategy=freeze", "--run_id=size", "--image_size=40"])
    by_size = entries(base_args) - before
    assert {e.split("-")[0] for e in by_size} == {"decoded", "features"}
    # weights: the backbone of an earlier run's fine-tune instead of ImageNet's
    _, _, full = run(base_args, MOBILENET + ["--strategy=full", "--epochs=1", "--run_id=tuned"])
    known = entries(base_args)
    run(base_args, MOBILENET + ["--strategy=freeze", "--run_id=w", f"--weights={full / 'model.safetensors'}"])
    assert {e.split("-")[0] for e in entries(base_args) - known} == {"features"}
    # another model: its own features
    known = entries(base_args)
    run(base_args, MOBILENET + ["--strategy=freeze", "--run_id=m", "--model=small_cnn"])
    assert "features" in {e.split("-")[0] for e in entries(base_args) - known}
    # one changed image: its split is decoded again and every feature entry is rebuilt
    known = entries(base_args)
    image = Path(animals) / base["split"]["train"][0]
    original = image.read_bytes()
    try:
        Image.new("RGB", (28, 28), (255, 0, 0)).save(image)
        rec, _, _ = run(base_args, MOBILENET + ["--strategy=freeze", "--run_id=changed"])
    finally:
        image.write_bytes(original)
    new = entries(base_args) - known
    assert sum(e.startswith("decoded") for e in new) == 1 and sum(e.startswith("features") for e in new) >= 1
    assert rec["data_cache"] == "2 of 3 splits reused from the sweep cache"


def _build_once(root, counter):
    cache = SharedCache(Path(root), memory_mb=64)

    def build(_space):
        with open(counter, "a") as f:
            f.write("x")
        time.sleep(0.5)
        return {"x": np.arange(1000, dtype=np.float32)}, {"note": "made"}
    e = cache.get("features", {"k": 1}, build)
    assert e.meta["note"] == "made" and float(e.arrays["x"].sum()) == 499500.0


def test_concurrent_processes_build_an_entry_once(tmp_path):
    counter = tmp_path / "builds"
    procs = [mp.get_context("fork").Process(target=_build_once, args=(tmp_path / "c", counter)) for _ in range(4)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 4
    finally:
        for p in procs:   # one that hangs is not left behind
            if p.is_alive():
                p.kill()
                p.join(10)
    assert counter.read_text() == "x"
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".tmp")]


def test_large_entries_are_memory_mapped_and_half_written_ones_ignored(tmp_path):
    cache = SharedCache(tmp_path, memory_mb=0.01)                 # 10 kB budget
    data = np.random.default_rng(0).integers(0, 255, (64, 3, 16, 16), dtype=np.uint8)
    made = cache.get("decoded", "k", lambda _: ({"images": data}, {}))
    assert made.reused is False
    read = cache.get("decoded", "k", lambda _: pytest.fail("rebuilt"))
    assert isinstance(read.arrays["images"], np.memmap) and read.meta["memory_mapped"]
    assert np.array_equal(read.arrays["images"], data)
    # a writer killed before its rename leaves a .tmp folder that no reader sees, and the next writer replaces
    (tmp_path / ".tmp-decoded-x").mkdir()
    again = cache.get("decoded", "other", lambda _: ({"images": data[:2]}, {}))
    assert again.reused is False and np.array_equal(again.arrays["images"], data[:2])


def test_a_split_over_budget_is_decoded_straight_into_the_cache_file(animals, tmp_path):
    root = Path(animals)
    items = [(str(p.relative_to(root)), 0) for p in sorted(root.rglob("*.png"))[:40]] + [("cat/missing.png", 0)]
    skipped_mem, skipped_disk = [], []
    in_memory = data.decode_split(root, items, 36, "bilinear", 16, skipped_mem, "t")
    allocated = []

    class Spy(SharedCache):    # what the builder was given to write into
        def get(self, kind, key, build):
            return super().get(kind, key, lambda space: (allocated.append(space), build(space))[1])
    cache = Spy(tmp_path / "c", memory_mb=0.05)       # 50 kB: 40 images of 36 px are 152 kB
    on_disk = data.decode_cached(cache, root, items, 36, "bilinear", 16, skipped_disk, "t")
    assert isinstance(allocated[0].mapped["images"], np.memmap)                  # written into the entry's file
    assert torch.equal(on_disk.images, in_memory.images)
    assert len(on_disk.images) == 40   # the missing file's row dropped
    assert skipped_disk == skipped_mem and skipped_disk[0]["path"] == "cat/missing.png"
    again = data.decode_cached(SharedCache(tmp_path / "c", memory_mb=0.05), root, items, 36, "bilinear", 16, [], "t")
    assert again.reused and torch.equal(again.images, in_memory.images)


@pytest.mark.parametrize("name,splits", [("resnet18", True), ("efficientnet_b0", True),
                                         ("vit_tiny_patch16_224", False)])
def test_models_are_cut_only_where_the_forward_is_a_plain_sequence(name, splits):
    model = timm.create_model(name, pretrained=False, num_classes=3).eval()
    size = 224 if name.startswith("vit") else 64
    units = features.sequential_units(model, torch.randn(2, 3, size, size))
    assert (units is not None) == splits
    if splits:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.get_classifier().parameters():
            p.requires_grad_(True)
        names = [n for n, _ in units]
        last = names[-1]
        for p in model.get_submodule(last).parameters():
            p.requires_grad_(True)
        cut = features.find_cut(model, build({"strategy": "partial"}), "partial", torch.randn(2, 3, size, size))
        assert cut.name == f"after {names[-2]}"
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert torch.allclose(cut.net(cut.front(x)), model(x), atol=1e-5)


def test_frozen_stages_with_drop_path_are_still_cut():
    """A frozen unit is held in eval mode whole, so its drop-path is off: it belongs to the front."""
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=3, drop_path_rate=0.1)
    cfg = build({"strategy": "partial", "unfreeze_blocks": 1})
    from lib.train import strategies
    strategies.apply(model, strategies.trainable_names(model, cfg, strategies.phases(cfg)[0]))
    model.eval()
    cut = features.find_cut(model, cfg, "partial", torch.randn(2, 3, 64, 64))
    assert cut.name == "after stages.2"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(cut.net(cut.front(x)), model(x), atol=1e-5)


def test_over_budget_falls_back_and_says_so(base_args):
    rec, _, _ = run(base_args, MOBILENET + ["--strategy=partial", "--cache_memory_mb=0.001"])
    assert rec["summary"]["feature_cache"].startswith("partial: off (the frozen output needs")
    assert rec["state"] == "finished"


def test_augmented_views_are_cached_and_cycled(base_args):
    rec, rows, _ = run(base_args, MOBILENET + ["--strategy=freeze", "--augment=light", "--augment_views=2",
                                               "--run_id=views"])
    assert rec["summary"]["feature_cache"] == \
        "freeze: on: pre-logits, 2 augmented view(s), reused cyclically, 0 of 3 reused from the sweep cache"
    assert sum(e.startswith("features") for e in entries(base_args)) == 3   # 2 train views + val
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    off, _, _ = run(base_args, MOBILENET + ["--strategy=freeze", "--augment=light", "--run_id=noviews"])
    assert off["summary"]["feature_cache"].startswith("freeze: off (augment=light")


def test_no_sharing_when_asked(base_args):
    rec, _, _ = run(base_args, MOBILENET + ["--strategy=freeze", "--shared_cache_dir=none"])
    assert rec["summary"]["feature_cache"].endswith("not shared")
    runs_dir = Path(next(a.split("=", 1)[1] for a in base_args if a.startswith("--runs_dir=")))
    assert not (runs_dir / ".cache").exists()
    assert os.listdir(runs_dir) == [rec["id"]]


def _ramps(n: int, side: int = 73) -> torch.Tensor:
    """n copies of an image whose red rises left to right and green top to bottom: a flip reverses
    the red ramp, a crop changes both ranges."""
    ramp = torch.linspace(0, 255, side).round().to(torch.uint8)
    img = torch.stack([ramp.view(1, side).expand(side, side), ramp.view(side, 1).expand(side, side),
                       torch.full((side, side), 128, dtype=torch.uint8)])
    return img.expand(n, 3, side, side).contiguous()


def test_batch_augment_crops_and_flips_each_image_on_its_own():
    aug = data.BatchAugment(64, mean=(0.5,) * 3, std=(0.25,) * 3)
    torch.manual_seed(0)
    out = aug(_ramps(16))
    torch.manual_seed(0)
    assert torch.equal(out, aug(_ramps(16)))                        # seeded: reproducible
    assert out.shape == (16, 3, 64, 64) and out.dtype == torch.float32
    pixels = out * 0.25 + 0.5
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5       # normalised from [0, 1]
    rows = pixels[:, 0, 32]
    rising = rows[:, -1] > rows[:, 0]
    assert 0 < int(rising.sum()) < 16                                # some flipped, some not
    assert len(torch.unique(out.flatten(1), dim=0)) == 16            # a crop of its own per image
    spans = (rows[:, -1] - rows[:, 0]).abs()
    assert spans.min() > 0.5            # at least half the area at aspect >= 3/4: over 60% of the ramp


def test_loader_transforms_whole_batches_on_the_given_device():
    decoded = data.Decoded(_ramps(10), torch.arange(10) % 2, [f"{i}.png" for i in range(10)], [""] * 10)
    aug = data.BatchAugment(32, mean=(0.5,) * 3, std=(0.25,) * 3)
    loader = data.loader(decoded, aug, 4, 0, 0, train=True, batched=True, device=torch.device("cpu"),
                         pin_memory=True)
    assert loader.dataset.device == torch.device("cpu") and loader.pin_memory is False
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted((torch.arange(10) % 2).tolist())
