"""Data (lib.train.data) on its own: how real image folders are split (sizes, stratification, class
order), what decoding gives (square, centre crop, uint8), when the study's decode cache is reused,
what the transforms and loaders hand the model, and what the data warnings flag. Expected values are
computed here from the rules, not copied from a run."""
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib.errors import DataError
from lib.train import data
from lib.train.cache import SharedCache
from lib.train.demo_data import CLASSES

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DATA_CFG = {"input_size": (3, 32, 32), "mean": MEAN, "std": STD, "crop_pct": 0.875, "interpolation": "bilinear"}


def pngs(root: Path, cls: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / cls).glob("*.png"))


def copy_tree(animals: Path, out: Path, counts: dict[str, int]) -> Path:
    """Real Animal-MNIST images, ``counts[class]`` of each, under ``out/<class>/``."""
    for cls, n in counts.items():
        (out / cls).mkdir(parents=True)
        for rel in pngs(animals, cls)[:n]:
            shutil.copy(animals / rel, out / rel)
    return out


# --- discover: splits -------------------------------------------------------------------------------
def test_class_folders_only_are_split_stratified_by_the_fractions(animals):
    root = Path(animals)
    splits = data.discover(str(root), val_fraction=0.25, test_fraction=0.25, seed=3)
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert splits.classes == names == sorted(CLASSES[:4])
    # test first: round(40 * 0.25) = 10 per class; val from the 30 left: 0.25 / (1 - 0.25) of them = 10
    per_class = {"test": 10, "val": 10, "train": 20}
    for split, n in per_class.items():
        assert Counter(label for _, label in splits.items[split]) == {i: n for i in range(4)}, split
    everything = [it for s in data.SPLITS for it in splits.items[s]]
    assert len(everything) == len(set(everything)) == 160                       # disjoint, nothing lost
    for rel, label in everything:
        assert rel.split("/")[0] == splits.classes[label]                      # label = index of its folder
    assert splits.skipped == [] and splits.warnings == []                     # nothing to say: no split folders
    assert splits.as_record() == {s: [p for p, _ in splits.items[s]] for s in data.SPLITS}


def test_the_split_depends_on_the_seed_only(animals):
    a = data.discover(animals, 0.25, 0.25, seed=3)
    b = data.discover(animals, 0.25, 0.25, seed=3)
    c = data.discover(animals, 0.25, 0.25, seed=4)
    assert a.items == b.items
    assert set(a.items["test"]) != set(c.items["test"])


def test_a_class_too_small_for_the_fraction_still_gives_one_image(animals, tmp_path):
    root = copy_tree(Path(animals), tmp_path / "d", {"bear": 2, "bird": 10, "cat": 1})
    splits = data.discover(str(root), val_fraction=0.1, test_fraction=0.0, seed=0)
    val = Counter(splits.classes[label] for _, label in splits.items["val"])
    # bear: round(0.2) = 0, raised to 1 (two images); bird: round(1.0) = 1; cat: its only image stays in train
    assert val == {"bear": 1, "bird": 1}
    assert Counter(splits.classes[label] for _, label in splits.items["train"]) == {"bear": 1, "bird": 9, "cat": 1}
    assert splits.items["test"] == []


def test_split_folders_keep_their_images_and_odd_entries_are_listed(animals, tmp_path):
    src = Path(animals)
    root = tmp_path / "d"
    for split, per in (("train", 6), ("val", 3)):
        for cls in ("cat", "bird"):
            (root / split / cls).mkdir(parents=True)
            for rel in pngs(src, cls)[:per] if split == "train" else pngs(src, cls)[-per:]:
                shutil.copy(src / rel, root / split / rel)
    (root / "val" / "horse").mkdir()                                 # a class train does not have
    shutil.copy(src / pngs(src, "bear")[0], root / "val" / "horse" / "h.png")
    (root / "train" / "readme.txt").write_text("not a class")        # a file beside the class folders
    (root / "train" / "empty").mkdir()                               # a class folder without images
    splits = data.discover(str(root), val_fraction=0.5, test_fraction=0.0, seed=0)
    assert splits.classes == ["bird", "cat"]                          # sorted; the empty class left out
    assert len(splits.items["train"]) == 12 and len(splits.items["val"]) == 6 and splits.items["test"] == []
    assert all(p.startswith("val/") for p, _ in splits.items["val"])  # the folder, not a carve-out
    assert {s["path"]: s["reason"] for s in splits.skipped} == {
        "train/readme.txt": "file outside any class folder", "val/horse/h.png": "class 'horse' not in train"}
    assert any("'empty'" in w for w in splits.warnings)
    assert any("val/horse is not a training class: 1 images" in w for w in splits.warnings)


@pytest.mark.parametrize("layout", [{"only": 3}, {"a": 0, "b": 2}])
def test_fewer_than_two_classes_with_images_is_a_data_error(animals, tmp_path, layout):
    root = tmp_path / "d"
    root.mkdir()
    for cls, n in layout.items():
        (root / cls).mkdir()
        for i, rel in enumerate(pngs(Path(animals), "bear")[:n]):
            shutil.copy(Path(animals) / rel, root / cls / f"{i}.png")
    with pytest.raises(DataError, match="a classifier needs at least two"):
        data.discover(str(root), 0.2, 0.2, seed=0)


# --- decode ---------------------------------------------------------------------------------------
def test_decode_is_the_centre_square_at_the_asked_side(tmp_path):
    # 80 x 40: black bands of 20 px left and right, white centre; the centre square is all white
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 20:60] = 255
    Image.fromarray(arr).save(tmp_path / "wide.png")
    out, digest = data.decode(tmp_path / "wide.png", 20, "nearest", min_side=16)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert (out == 255).all()
    import hashlib
    assert digest == hashlib.sha1((tmp_path / "wide.png").read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="smaller than min_image_side=41"):
        data.decode(tmp_path / "wide.png", 20, "nearest", min_side=41)


def test_decode_split_keeps_order_labels_and_lists_what_it_drops(animals, tmp_path):
    root = copy_tree(Path(animals), tmp_path / "d", {"cat": 5})
    good = [(rel, i % 4) for i, rel in enumerate(pngs(root, "cat"))]
    (root / "cat" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    items = good[:2] + [("cat/bad.png", 1), ("cat/missing.png", 2)] + good[2:]
    skipped = []
    d = data.decode_split(root, items, 37, "bilinear", 16, skipped, "t", threads=2)
    assert d.paths == [p for p, _ in good] and d.labels.tolist() == [label for _, label in good]
    assert d.images.shape == (5, 3, 37, 37) and d.images.dtype == torch.uint8
    assert [s["path"] for s in skipped] == ["cat/bad.png", "cat/missing.png"]
    assert skipped[0]["reason"].startswith(("corrupt or truncated", "not a readable image"))
    assert skipped[1]["reason"].startswith("cannot read")
    for i, (rel, _) in enumerate(good):                              # each row is its own file, channels first
        alone, _ = data.decode(root / rel, 37, "bilinear", 16)
        assert torch.equal(d.images[i], torch.from_numpy(alone.transpose(2, 0, 1).copy()))


# --- the decode cache ----------------------------------------------------------------------------------
def test_decode_cache_is_reused_until_a_file_changes(animals, tmp_path):
    root = copy_tree(Path(animals), tmp_path / "d", {"bear": 6, "cow": 6})
    items = [(rel, 0) for rel in pngs(root, "bear")] + [(rel, 1) for rel in pngs(root, "cow")]
    cache_dir = tmp_path / "cache"
    first = data.decode_cached(SharedCache(cache_dir, 64), root, items, 37, "bilinear", 16, [], "t")
    again = data.decode_cached(SharedCache(cache_dir, 64), root, items, 37, "bilinear", 16, [], "t")
    assert (first.reused, again.reused) == (False, True) and again.key == first.key
    assert torch.equal(first.images, again.images) and first.paths == again.paths
    # another side or interpolation is another entry
    other = data.decode_cached(SharedCache(cache_dir, 64), root, items, 40, "bilinear", 16, [], "t")
    assert not other.reused and other.key != first.key and other.images.shape[-1] == 40
    # one image replaced by a white square: a new key, decoded again, the new pixels served
    Image.new("L", (28, 28), 255).save(root / items[0][0])
    changed = data.decode_cached(SharedCache(cache_dir, 64), root, items, 37, "bilinear", 16, [], "t")
    assert not changed.reused and changed.key != first.key
    assert (changed.images[0] == 255).all() and not (first.images[0] == 255).all()
    assert torch.equal(changed.images[1:], first.images[1:])


def test_decode_cache_gives_later_runs_the_same_skipped_list(animals, tmp_path):
    root = copy_tree(Path(animals), tmp_path / "d", {"bear": 3})
    (root / "bear" / "empty.png").write_bytes(b"")
    items = [(rel, 0) for rel in pngs(root, "bear")]
    first, second = [], []
    data.decode_cached(SharedCache(tmp_path / "c", 64), root, items, 37, "bilinear", 16, first, "t")
    d = data.decode_cached(SharedCache(tmp_path / "c", 64), root, items, 37, "bilinear", 16, second, "t")
    assert d.reused and first == second == [{"path": "bear/empty.png", "reason": "empty file"}]
    assert len(d.labels) == 3


# --- transforms and loaders --------------------------------------------------------------------------
def test_resize_side_is_the_input_over_crop_pct():
    assert data.resize_side(DATA_CFG) == round(32 / 0.875) == 37
    assert data.resize_side({"input_size": (3, 224, 224), "crop_pct": 0.95}) == round(224 / 0.95)


def test_eval_transform_is_centre_crop_then_normalise():
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 37, 37), dtype=np.uint8))
    out = data.transforms(DATA_CFG, "light", train=False)(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    # torchvision's centre crop of 37 -> 32 starts at round(2.5) = 2 (half to even)
    crop = img.numpy()[:, 2:34, 2:34].astype(np.float64) / 255
    expected = (crop - np.array(MEAN).reshape(3, 1, 1)) / np.array(STD).reshape(3, 1, 1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    assert torch.equal(data.transforms(DATA_CFG, "none", train=True)(img), out)   # augment=none: the same


@pytest.mark.parametrize("augment", ["light", "strong"])
def test_training_augmentations_keep_the_shape_and_the_normalised_range(augment):
    img = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 37, 37), dtype=np.uint8))
    t = data.transforms(DATA_CFG, augment, train=True)
    torch.manual_seed(0)
    outs = torch.stack([t(img) for _ in range(8)])
    assert outs.shape == (8, 3, 32, 32) and outs.dtype == torch.float32
    low = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    high = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    per_channel = outs.transpose(0, 1).flatten(1)
    assert (per_channel.min(1).values >= low - 1e-5).all() and (per_channel.max(1).values <= high + 1e-5).all()
    assert len(torch.unique(outs.flatten(1), dim=0)) > 1            # random: not one fixed output
    assert isinstance(data.transforms(DATA_CFG, "light", True, on_device=True), data.BatchAugment)


def _decoded(n: int) -> data.Decoded:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 37, 37).contiguous()
    return data.Decoded(images, torch.arange(n) % 3, [f"{i}.png" for i in range(n)], [str(i) for i in range(n)])


def test_loaders_batch_shuffle_by_seed_and_keep_eval_order():
    d = _decoded(10)
    evaluate = data.transforms(DATA_CFG, "none", train=False)
    val = list(data.loader(d, evaluate, 4, 0, seed=0, train=False, batched=True))
    assert [tuple(x.shape) for x, _ in val] == [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)]
    assert torch.cat([y for _, y in val]).tolist() == d.labels.tolist()          # in order
    # a batched transform gives what the per-image one gives
    per_image = torch.stack([evaluate(im) for im in d.images])
    assert torch.allclose(torch.cat([x for x, _ in val]), per_image)

    def order(seed):
        batches = data.loader(d, evaluate, 4, 0, seed=seed, train=True, drop_last=True)
        # each image is filled with its index: read it back from the normalised pixels
        return [round(float(x[i, 0, 0, 0]) * STD[0] * 255 + MEAN[0] * 255) for x, _ in batches for i in range(len(x))]
    first = order(7)
    assert len(first) == 8 and len(set(first)) == 8                  # drop_last: 2 batches of 4
    assert first == order(7) and first != order(8)
    small = data.loader(_decoded(3), evaluate, 4, 0, seed=0, train=True, drop_last=True)
    assert sum(len(y) for _, y in small) == 3                          # fewer than a batch: nothing dropped


# --- data warnings -----------------------------------------------------------------------------------
def _with_labels(counts: list[int], hashes=None, paths=None) -> data.Decoded:
    labels = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])
    n = len(labels)
    return data.Decoded(torch.zeros(n, 3, 1, 1, dtype=torch.uint8), labels, paths or [f"{i}.png" for i in range(n)],
                        hashes or [f"h{i}" for i in range(n)])


@pytest.mark.parametrize("counts, warned", [([10, 2], True), ([10, 3], False), ([9, 2], False), ([4, 0], "none")])
def test_imbalance_is_warned_from_five_to_one(counts, warned):
    empty = _with_labels([0, 0])
    warnings = data.data_warnings(["a", "b"], {"train": _with_labels(counts), "val": empty, "test": empty})
    if warned == "none":
        assert warnings == ["classes with no usable training image: b"]
    elif warned:
        assert warnings == [f"class imbalance {counts[0] / counts[1]:.0f}:1 in train (a={counts[0]}, b={counts[1]}); "
                            "consider --class_weighting=balanced or --sampler=balanced, and --monitor=val_balanced_acc"]
    else:
        assert warnings == []


def test_exact_copies_of_training_images_are_flagged_per_split():
    train = _with_labels([2, 2], hashes=["x", "y", "z", "w"])
    val = _with_labels([1, 1], hashes=["q", "z"], paths=["v0.png", "v1.png"])
    test = _with_labels([1, 1], hashes=["x", "y"], paths=["t0.png", "t1.png"])
    warnings = data.data_warnings(["a", "b"], {"train": train, "val": val, "test": test})
    assert warnings == ["1 val image(s) are exact copies of training images (e.g. v1.png): val accuracy is inflated",
                        "2 test image(s) are exact copies of training images (e.g. t0.png): test accuracy is inflated"]


def test_real_duplicate_files_share_their_decoded_hash(animals, tmp_path):
    root = copy_tree(Path(animals), tmp_path / "d", {"bear": 2})
    first, second = pngs(root, "bear")
    shutil.copy(root / first, root / "bear" / "copy.png")
    os.utime(root / "bear" / "copy.png", ns=(1, 1))                 # another mtime: only the bytes matter
    d = data.decode_split(root, [(p, 0) for p in pngs(root, "bear")], 37, "bilinear", 16, [], "t")
    by_path = dict(zip(d.paths, d.hashes, strict=True))
    assert by_path["bear/copy.png"] == by_path[first] != by_path[second]
