"""Weight loading: torchvision parity, accepted file layouts, and refusals that leave the model unchanged."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

import backbones
from backbones import WeightsError, create_backbone, load_weights
from vision_tasks.models import mobilenet_v2_classifier
from conftest import RAW, randomize_bn, refuse


pytestmark = pytest.mark.usefixtures("one_thread")


def randomized_torchvision(width: float = 1.0, num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """torchvision's mobilenet_v2 with random weights and random BN statistics / affine, in eval mode."""
    torch.manual_seed(seed)
    model = torchvision.models.mobilenet_v2(width_mult=width, num_classes=num_classes)
    randomize_bn(model, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.num_batches_tracked.fill_(1234)
        model.classifier[1].weight.normal_(0, 0.05, generator=g)
        model.classifier[1].bias.normal_(0, 0.1, generator=g)
    return model.eval()


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    """A width-1.0 torchvision state dict on disk, and the model it came from."""
    model = randomized_torchvision(1.0)
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2_tv.pth"
    torch.save(model.state_dict(), path)
    return path, model


def assert_same_weights(model: nn.Module, tv: nn.Module) -> None:
    """Every torchvision tensor is in ``model`` (our naming: backbone.features.*, head.fc.*)."""
    ours = model.state_dict()
    for key, value in tv.state_dict().items():
        our_key = "backbone." + key if key.startswith("features.") else key.replace("classifier.1.", "head.fc.")
        assert torch.equal(ours[our_key], value), key


# ------------------------------------------------------------------------------------------------
# torchvision parity


@pytest.mark.parametrize("width", [1.0, 0.5])
def test_torchvision_logits_parity(width, tmp_path):
    tv = randomized_torchvision(width)
    path = tmp_path / f"tv_{width}.pth"
    torch.save(tv.state_dict(), path)
    model = mobilenet_v2_classifier(width_mult=width, weights=path, **RAW).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want, got = tv(x), model(x)
        untrained = mobilenet_v2_classifier(width_mult=width, **RAW).eval()(x)
    assert got.shape == (2, 1000)
    assert want.std() > 0.05  # logits carry signal, so the comparison means something
    assert (got - want).abs().max().item() < 1e-4
    assert (untrained - want).abs().max().item() > 1e-2
    assert_same_weights(model, tv)


def test_bare_backbone_loads_classifier_file_and_ignores_extra_layers(tv_file):
    path, tv = tv_file
    net = create_backbone("mobilenet_v2", out_features=("layer18",)).eval()
    report = load_weights(net, path)
    assert not report.missing and not report.unexpected and not report.mismatched
    assert sorted(report.ignored) == sorted(k for k in tv.state_dict() if k.startswith(("features.18.", "classifier.")))
    assert len(report.loaded) == len(net.state_dict())
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(net(x)["layer18"], tv.features[:18](x), rtol=0, atol=1e-5)


def test_create_backbone_weights_argument(tv_file):
    path, tv = tv_file
    net = create_backbone("mobilenet_v2", weights=str(path), out_features=("layer15_expand",))
    assert torch.equal(net.features[14].conv[0][0].weight, tv.features[14].conv[0][0].weight)


def test_safetensors_file_loads(tv_file, tmp_path):
    _, tv = tv_file
    path = tmp_path / "mnv2.safetensors"
    save_file({k: v.contiguous() for k, v in tv.state_dict().items()}, str(path))
    model = mobilenet_v2_classifier(weights=path)
    assert_same_weights(model, tv)


def test_ddp_prefixed_file_loads(tv_file, tmp_path):
    _, tv = tv_file
    path = tmp_path / "ddp.pth"
    torch.save({"module." + k: v for k, v in tv.state_dict().items()}, path)
    model = mobilenet_v2_classifier(weights=path)
    assert_same_weights(model, tv)


def test_lightning_checkpoint_loads(tv_file, tmp_path):
    _, tv = tv_file
    source = mobilenet_v2_classifier(weights=tv_file[0])
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "global_step": 120, "state_dict": {"model." + k: v for k, v in source.state_dict().items()},
                "hyper_parameters": {"lr": 0.045}}, path)
    model = mobilenet_v2_classifier()
    report = load_weights(model, path)
    assert len(report.loaded) == len(model.state_dict())
    assert_same_weights(model, tv)
    # a bare backbone takes the backbone part of the same checkpoint
    net = create_backbone("mobilenet_v2")
    load_weights(net, path)
    assert torch.equal(net.features[18][0].weight, tv.features[18][0].weight)


# ------------------------------------------------------------------------------------------------
# refusals


def test_refuses_other_width(tmp_path):
    path = tmp_path / "w05.pth"
    torch.save(randomized_torchvision(0.5).state_dict(), path)
    msg = refuse(mobilenet_v2_classifier(), path)
    assert "shape mismatch" in msg
    assert "backbone.features.0.0.weight: file (16, 3, 3, 3) vs model (32, 3, 3, 3)" in msg
    with pytest.raises(WeightsError, match="shape mismatch"):  # through the builder too
        mobilenet_v2_classifier(weights=path)


def test_refuses_other_architecture(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    msg = refuse(mobilenet_v2_classifier(), path)
    assert "bn1." in msg and "another architecture" in msg


def test_refuses_missing_key(tv_file, tmp_path):
    state = dict(tv_file[1].state_dict())
    del state["features.7.conv.2.weight"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    msg = refuse(mobilenet_v2_classifier(), path)
    assert "missing" in msg and "features.7.conv.2.weight" in msg
    assert msg.count("features.") == 1  # only the key that is missing is named


def test_refuses_unexpected_key(tv_file, tmp_path):
    state = dict(tv_file[1].state_dict())
    state["features.3.conv.9.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    msg = refuse(mobilenet_v2_classifier(), path)
    assert "not in model" in msg and "features.3.conv.9.weight" in msg


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_refuses_truncated_file(tv_file, tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tv_file[1].state_dict().items()}, str(full))
    else:
        torch.save(tv_file[1].state_dict(), full)
    data = full.read_bytes()
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(data[: len(data) // 2])
    msg = refuse(mobilenet_v2_classifier(), path)
    assert "truncated" in msg.lower() or "not a readable" in msg
    assert path.name in msg


_EXECUTED: list[str] = []


def _side_effect() -> str:
    _EXECUTED.append("code from the weight file ran")
    return "payload"


class Payload:
    """Unpickling this calls ``_side_effect``: what an untrusted checkpoint could do."""

    def __reduce__(self):
        return (_side_effect, ())


def test_refuses_pickled_objects_without_running_them(tv_file, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({**tv_file[1].state_dict(), "extra": Payload()}, path)
    msg = refuse(mobilenet_v2_classifier(), path)
    assert "weights_only" in msg
    assert _EXECUTED == []


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no_such_file.pth"):
        load_weights(mobilenet_v2_classifier(), "no_such_file.pth")


def test_head_of_other_size_refused_strict_reported_non_strict(tv_file):
    path, tv = tv_file
    model = mobilenet_v2_classifier(num_classes=8)
    msg = refuse(model, path)
    assert "head.fc.weight: file (1000, 1280) vs model (8, 1280)" in msg

    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    report = load_weights(model, path, strict=False)
    assert sorted(report.mismatched) == sorted(
        ["head.fc.weight: file (1000, 1280) vs model (8, 1280)", "head.fc.bias: file (1000,) vs model (8,)"]
    )
    assert not report.missing and not report.unexpected
    for k, v in tv.features.state_dict().items():
        assert torch.equal(model.backbone.features.state_dict()[k], v), k
    for k, v in model.head.state_dict().items():
        assert torch.equal(v, head_before[k])
