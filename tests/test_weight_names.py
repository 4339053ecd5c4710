"""Pretrained weights by name (imagenet, torchvision:..., timm:...) through the libraries' own caches, without
the network: the tests put generated files where torch hub and huggingface_hub look."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import backbones
from conftest import RAW
from vision_tasks.models import (
    describe_weights,
    is_weight_name,
    list_weights,
    mobilenet_v2_classifier,
    resolve_weights,
    ssdlite_mobilenet_v2,
)


@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache; downloads fail as they would without network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache in offline mode."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _put_in_hub_cache(cache, repo: str, filename: str, state: dict) -> None:
    """The layout huggingface_hub keeps: models--org--name/snapshots/<revision>/<file>, refs/main -> revision."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (folder / "snapshots" / revision).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "snapshots" / revision / filename))


def test_names_are_recognised_and_unknown_ones_list_the_names():
    assert is_weight_name("imagenet") and is_weight_name("timm:mobilenetv2_100.ra_in1k")
    assert not is_weight_name("weights/imagenet.pth") and not is_weight_name("C:/weights.pth")
    assert {"imagenet", "torchvision:IMAGENET1K_V1", "timm:mobilenetv2_140.ra_in1k"} <= set(list_weights())
    with pytest.raises(backbones.WeightsError, match=r"unknown weight name 'torchvision:IMAGENET1K_V9'; known names: .*imagenet"):
        resolve_weights("torchvision:IMAGENET1K_V9")
    with pytest.raises(backbones.WeightsError, match="more blocks per stage than Table 2"):
        resolve_weights("timm:mobilenetv2_110d.ra_in1k")
    with pytest.raises(backbones.WeightsError, match="timm publishes no pretrained weights for mobilenetv2_035"):
        resolve_weights("timm:mobilenetv2_035.untrained")


def test_imagenet_resolves_to_torchvision_file_in_the_torch_hub_cache(torch_home):
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2().eval()
    torch_home.mkdir(parents=True)
    torch.save(tv.state_dict(), torch_home / "mobilenet_v2-7ebf99e0.pth")  # torchvision's IMAGENET1K_V2 file name
    assert resolve_weights("imagenet") == torch_home / "mobilenet_v2-7ebf99e0.pth"
    info = describe_weights("imagenet")
    assert info.name == "torchvision:IMAGENET1K_V2" and info.kind == "torchvision" and info.input_size == 224
    assert info.metrics["imagenet_acc1"] == pytest.approx(72.154) and info.class_names[1] == "goldfish"
    model = mobilenet_v2_classifier(weights="imagenet", **RAW).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=0, atol=1e-4)
    # the backbone of a detector, with the ImageNet normalisation the name brings
    detector = ssdlite_mobilenet_v2(num_classes=3, backbone_weights="imagenet")
    assert detector.config["mean"] == [0.485, 0.456, 0.406]
    assert torch.equal(detector.backbone.features[0][0].weight, tv.features[0][0].weight)


def test_a_release_not_cached_and_no_network_says_where_to_put_it(torch_home):
    with pytest.raises(backbones.WeightsError) as error:
        resolve_weights("torchvision:IMAGENET1K_V1")
    message = str(error.value)
    assert "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth" in message
    assert str(torch_home / "mobilenet_v2-b0353104.pth") in message


def test_timm_name_resolves_through_the_hugging_face_cache(hf_cache):
    timm = pytest.importorskip("timm", reason="timm is a test extra: pip install '.[dev]'")
    torch.manual_seed(0)
    reference = timm.create_model("mobilenetv2_140").eval()
    _put_in_hub_cache(hf_cache, "timm/mobilenetv2_140.ra_in1k", "model.safetensors", reference.state_dict())
    path = resolve_weights("timm:mobilenetv2_140.ra_in1k")
    assert path.name == "model.safetensors" and hf_cache in path.parents
    info = describe_weights("timm:mobilenetv2_140")  # the architecture alone names its default tag
    assert info.kind == "timm" and info.name == "timm:mobilenetv2_140.ra_in1k" and info.preprocessing["std"][0] == 0.229
    model = mobilenet_v2_classifier(weights="timm:mobilenetv2_140.ra_in1k", width_mult=1.4, **RAW).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-4)


def test_timm_release_not_cached_offline_says_how_to_get_it(hf_cache):
    with pytest.raises(backbones.WeightsError) as error:
        resolve_weights("timm:mobilenetv2_100.ra_in1k")
    message = str(error.value)
    assert "huggingface-cli download timm/mobilenetv2_100.ra_in1k model.safetensors" in message
    assert "models--timm--mobilenetv2_100.ra_in1k" in message
