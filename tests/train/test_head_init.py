"""Every run starts from a head that can learn: the first loss is ln(num_classes) for every timm family
and small_cnn, at 2, 3 and 10 classes, with pretrained and random backbones (issue: a 2-class freeze run
of a family whose own head init gives logits of about +-9 barely beat the majority class)."""
import math

import pytest
import torch

from lib.config import Config
from lib.train import data, models

KIND = "training"   # real training in this process: in `make test`, not `make check`

# (model, weights, image_size): a pretrained backbone where pip ships one, random weights elsewhere
# (a zero head gives ln(C) whatever the backbone; the random ones cover the families' own head inits).
FAMILIES = [("mobilenetv2_100", "pretrained", 64), ("tf_efficientnet_lite0", "pretrained", 64),
            ("resnet18", "none", 64), ("efficientnet_b0", "none", 64), ("mobilenetv3_small_100", "none", 64),
            ("convnext_atto", "none", 64), ("vit_tiny_patch16_224", "none", 32), ("small_cnn", "pretrained", 64)]


@pytest.fixture(scope="module")
def images(animals):
    splits = data.discover(str(animals), 0.2, 0.2, seed=0)
    return splits, animals


def first_loss(name, weights, size, num_classes, images, cache_dir):
    splits, root = images
    cfg = Config(model=name, weights=weights, image_size=size, data_dir=str(root))
    model, _, data_cfg = models.create(cfg, num_classes, cache_dir)
    items = [(p, label % num_classes) for p, label in splits.items["train"][:32]]
    decoded = data.decode_split(root, items, data.resize_side(data_cfg), data_cfg["interpolation"], 1, [], "x")
    x = data.transforms(data_cfg, "none", train=False)(decoded.images)
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model.eval()(x), decoded.labels).item()


@pytest.mark.parametrize("name,weights,size", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_first_loss_is_ln_num_classes(name, weights, size, images, cache_dir):
    for num_classes in (2, 3, 10):
        loss = first_loss(name, weights, size, num_classes, images, cache_dir)
        assert abs(loss - math.log(num_classes)) <= 0.1 * math.log(num_classes), (name, num_classes, loss)


def test_head_of_a_fine_tuned_file_is_kept(tmp_path, images, cache_dir):
    """--weights=FILE of a run with the same classes continues from its head, not from zero."""
    from safetensors.torch import save_file

    model, _, _ = models.create(Config(model="small_cnn", weights="none"), 3, cache_dir)
    torch.nn.init.normal_(model.head.weight)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    again, _, _ = models.create(Config(model="small_cnn", weights=str(tmp_path / "w.safetensors")), 3, cache_dir)
    assert torch.equal(again.head.weight, model.head.weight)
    other, _, _ = models.create(Config(model="small_cnn", weights=str(tmp_path / "w.safetensors")), 5, cache_dir)
    assert other.head.weight.abs().sum() == 0          # another class count: a fresh (zero) head
