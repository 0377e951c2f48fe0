"""Frozen work done once (lib.train.features) on its own, with small_cnn on real Animal-MNIST images:
the stored outputs are what a plain forward pass of the frozen backbone gives the classifier, in the
loader's order; a second run reads them instead of computing them, a change of the frozen weights
does not; the memory budget is checked before anything is computed; augmented views are the seeded
pixels of each view; and a model is cut only after its frozen layers."""
from pathlib import Path

import pytest
import timm
import torch

from lib import config
from lib.train import data, features, models, strategies  # noqa: F401 - models registers small_cnn
from lib.train.cache import SharedCache
from lib.train.run import make_loaders
from lib.train.training import Accel

DATA_CFG = {"input_size": (3, 32, 32), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "crop_pct": 0.875, "interpolation": "bilinear"}
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny batches on a shared 2-core machine: a second thread only waits
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def items(animals):
    splits = data.discover(animals, 0.25, 0.25, seed=0)
    return {"train": splits.items["train"][::5], "val": splits.items["val"][::4], "test": splits.items["test"][:2]}


def setup(animals, items, cache_root: Path, memory_mb: float = 64, **over):
    cfg = config.build({"model": "small_cnn", "strategy": "freeze", "augment": "none", "batch_size": 8,
                        "image_size": 32, "dropout": 0.1, "seed": 5, **over})
    cache = SharedCache(cache_root, memory_mb)
    decoded = {s: data.decode_cached(cache, Path(animals), items[s], data.resize_side(DATA_CFG), "bilinear", 16, [], s)
               for s in data.SPLITS}
    loaders = make_loaders(cfg, DATA_CFG, decoded, mixing=False, device=CPU)
    return cfg, cache, decoded, loaders


def frozen_small_cnn(cfg, seed: int = 0):
    torch.manual_seed(seed)
    model = timm.create_model("small_cnn", num_classes=4, drop_rate=cfg.dropout)
    phase = strategies.phases(cfg)[0]
    strategies.apply(model, strategies.trainable_names(model, cfg, phase))
    return model.eval(), phase


def cached(model, cfg, cache, decoded, loaders, epochs: int = 2):
    """What training does at the start of a phase (lib.train.training.cached_phase)."""
    accel = Accel.for_config(cfg, CPU)
    sample, _ = accel.to_device(features.first_image(loaders["val"]), torch.zeros(1))
    cut = features.find_cut(model, cfg, strategies.phases(cfg)[0].name, sample)
    return features.prepare(cut, cfg, loaders, features.Store(decoded, DATA_CFG, cache), accel, epochs, sample)


def classifier_inputs(model, images: torch.Tensor) -> torch.Tensor:
    """What the classifier sees in a plain forward pass of the whole model (a hook on it, one image at a time)."""
    seen = []
    hook = model.get_classifier().register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    evaluate = data.transforms(DATA_CFG, "none", train=False)
    try:
        with torch.no_grad():
            for img in images:
                model(evaluate(img).unsqueeze(0))
    finally:
        hook.remove()
    return torch.cat(seen)


def test_stored_features_are_the_frozen_backbones_output_in_order(animals, items, tmp_path):
    cfg, cache, decoded, loaders = setup(animals, items, tmp_path / "cache")
    model, _ = frozen_small_cnn(cfg)
    result = cached(model, cfg, cache, decoded, loaders)
    assert isinstance(result, features.Cached), result
    assert result.mode == "on: pre-logits, exact, 0 of 2 reused from the sweep cache"
    for split, loader in (("train", result.train_for(0)), ("val", result.val)):
        stored, labels = loader.dataset.tensors
        assert torch.equal(labels, decoded[split].labels)
        expected = classifier_inputs(model, decoded[split].images)
        assert stored.shape == expected.shape == (len(decoded[split].labels), 128)
        assert torch.allclose(stored, expected, atol=1e-5), split
    assert result.train_for(0) is result.train_for(1)                    # one exact view for every epoch
    # what trains on them: dropout then the model's own classifier, the same logits in eval mode
    net = result.net.eval()
    x = torch.stack([data.transforms(DATA_CFG, "none", False)(im) for im in decoded["val"].images])
    with torch.no_grad():
        assert torch.allclose(net(result.val.dataset.tensors[0]), model(x), atol=1e-5)
    assert {id(p) for p in net.parameters()} == {id(p) for p in model.get_classifier().parameters()}


def test_a_second_run_reads_them_and_other_frozen_weights_do_not(animals, items, tmp_path, monkeypatch):
    cfg, cache, decoded, loaders = setup(animals, items, tmp_path / "cache")
    model, _ = frozen_small_cnn(cfg)
    first = cached(model, cfg, cache, decoded, loaders)
    # the next run of the study: another head (another learning rate, another init) - nothing computed
    cfg2, cache2, decoded2, loaders2 = setup(animals, items, tmp_path / "cache", lr=0.5)
    model2, _ = frozen_small_cnn(cfg2, seed=1)
    model2.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head.")}, strict=False)
    assert not torch.equal(model2.head.weight, model.head.weight)

    def no_compute(*_a, **_k):
        raise AssertionError("extracted again")
    with monkeypatch.context() as m:
        m.setattr(features, "extract", no_compute)
        second = cached(model2, cfg2, cache2, decoded2, loaders2)
    assert second.mode.endswith("2 of 2 reused from the sweep cache")
    for a, b in ((first.train_for(0), second.train_for(0)), (first.val, second.val)):
        assert torch.equal(a.dataset.tensors[0], b.dataset.tensors[0])
    # one frozen weight nudged: a new entry, computed from the new weights
    with torch.no_grad():
        model2.blocks[0][0].weight[0, 0, 0, 0] += 0.5
    third = cached(model2, cfg2, SharedCache(tmp_path / "cache", 64), decoded2, loaders2)
    assert third.mode.endswith("0 of 2 reused from the sweep cache")
    assert torch.allclose(third.val.dataset.tensors[0], classifier_inputs(model2, decoded2["val"].images), atol=1e-5)


def test_the_budget_is_checked_before_computing_with_the_decoded_images_counted(animals, items, tmp_path, monkeypatch):
    cfg, cache, decoded, loaders = setup(animals, items, tmp_path / "cache")
    held = sum(cache.held.values())
    assert held == sum(d.images.numel() + 8 * len(d.labels) for d in decoded.values())   # uint8 + int64 labels
    need = 128 * 4 * (len(decoded["train"].labels) + len(decoded["val"].labels))          # float32 pre-logits
    model, _ = frozen_small_cnn(cfg)
    with monkeypatch.context() as m:
        m.setattr(features, "extract", lambda *_a, **_k: pytest.fail("computed over the budget"))
        cfg_b, cache_b, decoded_b, loaders_b = setup(animals, items, tmp_path / "cache",
                                                     memory_mb=(held + need - 1) / 2**20)
        assert sum(cache_b.held.values()) == held                      # every split fits on its own
        why = cached(model, cfg_b, cache_b, decoded_b, loaders_b)
    assert why == (f"the frozen output needs {need / 2**20:.1f} MB > the {(need - 1) / 2**20:.1f} MB "
                   f"left of cache_memory_mb={cfg_b.cache_memory_mb:g} beside the decoded images")
    cfg_b, cache_b, decoded_b, loaders_b = setup(animals, items, tmp_path / "cache", memory_mb=(held + need) / 2**20)
    assert isinstance(cached(model, cfg_b, cache_b, decoded_b, loaders_b), features.Cached)
    assert sum(cache_b.held.values()) == held + need                 # exactly the budget


def test_augmented_views_are_the_seeded_pixels_of_each_view(animals, items, tmp_path):
    cfg, cache, decoded, loaders = setup(animals, items, tmp_path / "cache", augment="light", augment_views=2)
    model, _ = frozen_small_cnn(cfg)
    result = cached(model, cfg, cache, decoded, loaders, epochs=3)
    assert result.mode == "on: pre-logits, 2 augmented view(s), reused cyclically, 0 of 3 reused from the sweep cache"
    assert len(result.train) == 2 and result.train_for(2) is result.train_for(0) is not result.train_for(1)
    augment = data.transforms(DATA_CFG, "light", train=True)
    for view in (0, 1):
        torch.manual_seed(cfg.seed * 1000 + view)                   # view v: these pixels in every run
        pixels = [augment(im) for im in decoded["train"].images]
        expected = classifier_inputs_of(model, pixels)
        assert torch.allclose(result.train[view].dataset.tensors[0], expected, atol=1e-5), view
    assert not torch.allclose(result.train[0].dataset.tensors[0], result.train[1].dataset.tensors[0])
    val_plain = classifier_inputs(model, decoded["val"].images)
    assert torch.allclose(result.val.dataset.tensors[0], val_plain, atol=1e-5)   # val is never augmented


def classifier_inputs_of(model, pixels: list[torch.Tensor]) -> torch.Tensor:
    seen = []
    hook = model.get_classifier().register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    try:
        with torch.no_grad():
            for x in pixels:
                model(x.unsqueeze(0))
    finally:
        hook.remove()
    return torch.cat(seen)


@pytest.mark.parametrize("over, phase, reason", [
    ({}, "full", "everything trains"),
    ({}, "bitfit", "biases train in every layer"),
    ({}, "norm_only", "normalisation layers train in every stage"),
    ({"feature_cache": False}, "freeze", "feature_cache=false"),
    ({"mixup": 0.2}, "freeze", "mixup/cutmix mix pixels"),
    ({"cutmix": 1.0}, "partial", "mixup/cutmix mix pixels"),
    ({"augment": "strong"}, "freeze", "augment=strong: every epoch sees new pixels"),
    ({"augment": "light", "augment_views": 2}, "freeze", None),
    ({"augment": "none"}, "partial", None),
])
def test_when_a_phase_can_use_stored_outputs(over, phase, reason):
    got = features.why_not(config.build(over), phase)
    assert got == reason if reason is None else got.startswith(reason)


def test_small_cnn_is_cut_after_its_last_frozen_layer():
    cfg = config.build({"model": "small_cnn", "strategy": "partial", "unfreeze_blocks": 2})
    model, _ = frozen_small_cnn(cfg)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cut = features.find_cut(model, cfg, "partial", x)
    # blocks.0 and blocks.1 are frozen; each opens into conv, bn, relu, maxpool
    assert cut.name == "after blocks.1.3"
    # its units in order: 0 conv, 1 bn, 2 relu, 3 maxpool (blocks.0), 4 conv, 5 bn, ... (blocks.1)
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    assert set(cut.frozen_state) == {"0.weight", "4.weight"} | {f"{i}.{k}" for i in (1, 5) for k in bn}
    with torch.no_grad():
        assert torch.allclose(cut.net(cut.front(x)), model(x), atol=1e-5)
    full = config.build({"model": "small_cnn", "strategy": "full"})
    model_full, _ = frozen_small_cnn(full)
    assert features.find_cut(model_full, full, "full", x) == "its first layer trains"
