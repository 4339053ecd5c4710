"""timm ``mobilenetv2_*`` checkpoints: key translation, logits parity per width, and refusals that leave the model unchanged."""

from __future__ import annotations

import pytest

timm = pytest.importorskip("timm", reason="timm is not installed: the timm checkpoint tests build timm's models as the reference")

import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from backbones import create_backbone, load_weights
from backbones.weights import timm_to_torchvision_keys
from vision_tasks.models import mobilenet_v2_classifier
from conftest import RAW, randomize_bn, refuse, snapshot


pytestmark = pytest.mark.usefixtures("one_thread")

# timm variants that are Table 2 at a width multiplier: our width_mult for each.
WIDTHS = {"mobilenetv2_035": 0.35, "mobilenetv2_050": 0.5, "mobilenetv2_075": 0.75, "mobilenetv2_100": 1.0,
          "mobilenetv2_140": 1.4}
SIZES = (224, 160)


def randomized_timm(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """timm's model with random weights, random BN statistics / affine and a random classifier, in eval mode."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    randomize_bn(model, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.num_batches_tracked.fill_(321)
        if isinstance(model.classifier, nn.Linear):
            model.classifier.weight.normal_(0, 0.05, generator=g)
            model.classifier.bias.normal_(0, 0.1, generator=g)
    return model.eval()


def save(state: dict[str, torch.Tensor], path) -> None:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


def images(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))


@pytest.fixture(scope="module")
def timm_ref(tmp_path_factory):
    """Per variant (built on first use): the randomised timm model, its .pth and .safetensors files,
    and its eval-mode logits and final feature map for each size in SIZES."""
    root, cache = tmp_path_factory.mktemp("timm_weights"), {}

    def get(name: str) -> dict:
        if name not in cache:
            model = randomized_timm(name, seed=len(cache))
            files = {}
            for suffix in (".pth", ".safetensors"):
                files[suffix] = root / f"{name}{suffix}"
                save(model.state_dict(), files[suffix])
            with torch.no_grad():
                features = {s: model.forward_features(images(s)) for s in SIZES}
                logits = {s: model.forward_head(f) for s, f in features.items()}
            cache[name] = dict(model=model, files=files, features=features, logits=logits)
        return cache[name]

    return get


# ------------------------------------------------------------------------------------------------
# the key translation


def test_translation_gives_torchvision_names_and_shapes():
    """timm's mobilenetv2_100 read through the translation is torchvision's mobilenet_v2, key for key and shape for shape."""
    timm_state = timm.create_model("mobilenetv2_100").state_dict()
    names = timm_to_torchvision_keys(timm_state)
    tv_state = torchvision.models.mobilenet_v2().state_dict()
    assert sorted(names.values()) == sorted(tv_state)
    for key, value in timm_state.items():
        assert tuple(value.shape) == tuple(tv_state[names[key]].shape), key
    assert names["conv_stem.weight"] == "features.0.0.weight"
    assert names["blocks.0.0.conv_dw.weight"] == "features.1.conv.0.0.weight"  # the t = 1 (depthwise-separable) block
    assert names["blocks.0.0.conv_pw.weight"] == "features.1.conv.1.weight"
    assert names["blocks.3.2.bn3.running_var"] == "features.9.conv.3.running_var"
    assert names["conv_head.weight"] == "features.18.0.weight"
    assert names["bn2.num_batches_tracked"] == "features.18.1.num_batches_tracked"
    assert names["classifier.weight"] == "classifier.1.weight"
    assert timm_to_torchvision_keys(["blocks.1.0.se.conv_reduce.weight"]) == {
        "blocks.1.0.se.conv_reduce.weight": "blocks.1.0.se.conv_reduce.weight"}  # unknown names are kept


# ------------------------------------------------------------------------------------------------
# parity per width


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("name", list(WIDTHS))
def test_timm_logits_parity(name, suffix, timm_ref):
    ref = timm_ref(name)
    model = mobilenet_v2_classifier(width_mult=WIDTHS[name], **RAW).eval()
    untrained = snapshot(model)
    report = load_weights(model, ref["files"][suffix])
    assert not report.missing and not report.unexpected and not report.mismatched and not report.ignored
    assert len(report.loaded) == len(model.state_dict()) == len(ref["model"].state_dict()) == 314
    with torch.no_grad():
        for size in SIZES:
            want, got = ref["logits"][size], model(images(size))
            assert got.shape == (2, 1000)
            assert want.std() > 0.05  # logits carry signal, so the comparison means something
            assert (got - want).abs().max().item() < 1e-4, size
    model.load_state_dict(untrained)
    with torch.no_grad():
        assert (model(images(224)) - ref["logits"][224]).abs().max().item() > 1e-2


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("name", list(WIDTHS))
def test_bare_backbone_loads_timm_file(name, suffix, timm_ref):
    ref = timm_ref(name)
    net = create_backbone("mobilenet_v2", width_mult=WIDTHS[name]).eval()
    report = load_weights(net, ref["files"][suffix])
    assert sorted(report.ignored) == ["classifier.bias", "classifier.weight"]  # the file's timm names
    assert not report.missing and not report.unexpected and not report.mismatched
    assert len(report.loaded) == len(net.state_dict())
    with torch.no_grad():
        got = net(images(160))["layer19"]
    assert (got - ref["features"][160]).abs().max().item() < 1e-4


def test_truncated_backbone_tap_matches_timm_blocks(timm_ref):
    """layer15_expand is timm's blocks.5.0 expansion (conv_pw + bn1 + ReLU6); the layers past it are ignored."""
    ref = timm_ref("mobilenetv2_100")
    tm = ref["model"]
    net = create_backbone("mobilenet_v2", out_features=("layer15_expand",), weights=str(ref["files"][".pth"])).eval()
    report = load_weights(net, ref["files"][".safetensors"])
    assert {k.split(".")[0] for k in report.ignored} == {"blocks", "conv_head", "bn2", "classifier"}
    assert {".".join(k.split(".")[:3]) for k in report.ignored if k.startswith("blocks.")} == {
        "blocks.5.1", "blocks.5.2", "blocks.6.0"}
    x = images(96)
    with torch.no_grad():
        y = tm.blocks[:5](tm.bn1(tm.conv_stem(x)))
        want = tm.blocks[5][0].bn1(tm.blocks[5][0].conv_pw(y))
        got = net(x)["layer15_expand"]
    assert got.shape == (2, 576, 6, 6)
    assert (got - want).abs().max().item() < 1e-4


def test_timm_head_of_other_size_refused_strict_reported_non_strict(tmp_path):
    path = tmp_path / "mnv2_10cls.safetensors"
    tm = randomized_timm("mobilenetv2_100", num_classes=10)
    save(tm.state_dict(), path)
    model = mobilenet_v2_classifier()
    msg = refuse(model, path)
    assert "head.fc.weight: file (10, 1280) vs model (1000, 1280) (file key classifier.weight)" in msg
    assert "timm layout" in msg
    report = load_weights(model, path, strict=False)
    assert sorted(report.mismatched) == [
        "head.fc.bias: file (10,) vs model (1000,) (file key classifier.bias)",
        "head.fc.weight: file (10, 1280) vs model (1000, 1280) (file key classifier.weight)",
    ]
    assert torch.equal(model.backbone.features[18][0].weight, tm.conv_head.weight)
    # ... and a model with 10 classes takes it whole, with timm's logits
    model10 = mobilenet_v2_classifier(num_classes=10, weights=path, **RAW).eval()
    with torch.no_grad():
        assert (model10(images(160)) - tm(images(160))).abs().max().item() < 1e-4


# ------------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize("variant", ["mobilenetv2_110d", "mobilenetv2_120d"])
def test_refuses_deeper_timm_variants_by_name(variant, tmp_path):
    path = tmp_path / "pytorch_model.bin"  # a state dict carries no model name: told by its blocks per stage
    torch.save(timm.create_model(variant).state_dict(), path)
    for model in (mobilenet_v2_classifier(), create_backbone("mobilenet_v2")):
        msg = refuse(model, path)
        assert f"timm's {variant} has more blocks per stage than Table 2" in msg
        assert "(1, 2, 3, 4, 3, 3, 1)" in msg and path.name in msg
    assert f"timm's {variant}" in refuse(mobilenet_v2_classifier(), path, strict=False)  # no partial load either


@pytest.mark.parametrize(
    "name, width, expected",
    [
        ("mobilenetv2_050", 1.0, "backbone.features.0.0.weight: file (16, 3, 3, 3) vs model (32, 3, 3, 3) (file key conv_stem.weight)"),
        ("mobilenetv2_140", 1.0, "backbone.features.0.0.weight: file (48, 3, 3, 3) vs model (32, 3, 3, 3) (file key conv_stem.weight)"),
        # same stem (16) at both widths; the first difference is block 2's projection (8 vs 16 channels)
        ("mobilenetv2_035", 0.5, "backbone.features.2.conv.2.weight: file (8, 48, 1, 1) vs model (16, 48, 1, 1) (file key blocks.1.0.conv_pwl.weight)"),
    ],
)
def test_refuses_timm_file_of_other_width(name, width, expected, timm_ref):
    path = timm_ref(name)["files"][".pth"]
    msg = refuse(mobilenet_v2_classifier(width_mult=width), path)
    assert "shape mismatch" in msg and expected in msg
    assert "timm layout" in msg and "mobilenetv2_035/_050/_075/_100/_140" in msg
    refuse(create_backbone("mobilenet_v2", width_mult=width), timm_ref(name)["files"][".safetensors"])


def test_refuses_other_timm_layouts(tmp_path):
    # another depth: efficientnet_b0 (blocks per stage 1, 2, 2, 3, 3, 4, 1)
    path = tmp_path / "efficientnet_b0.pth"
    torch.save(timm.create_model("efficientnet_b0").state_dict(), path)
    msg = refuse(mobilenet_v2_classifier(), path)
    assert "timm file whose depth does not fit" in msg and "(1, 2, 2, 3, 3, 4, 1)" in msg
    # Table 2's depth with layers MobileNetV2 has not (squeeze-excitation): named as in the file
    state = dict(timm.create_model("mobilenetv2_100").state_dict())
    state["blocks.3.0.se.conv_reduce.weight"] = torch.zeros(16, 192, 1, 1)
    path = tmp_path / "se.pth"
    torch.save(state, path)
    msg = refuse(mobilenet_v2_classifier(), path)
    assert "not in model (1)" in msg and "blocks.3.0.se.conv_reduce.weight" in msg
    # a timm file missing a tensor: the model's name of it is given
    state = dict(timm.create_model("mobilenetv2_100").state_dict())
    del state["blocks.2.1.conv_dw.weight"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    msg = refuse(mobilenet_v2_classifier(), path)
    assert "missing from file (1)" in msg and "backbone.features.5.conv.1.0.weight" in msg


def test_refuses_mixed_timm_and_torchvision_names(tmp_path):
    state = dict(timm.create_model("mobilenetv2_100").state_dict())
    state["features.0.0.weight"] = state["conv_stem.weight"].clone()
    path = tmp_path / "mixed.pth"
    torch.save(state, path)
    msg = refuse(mobilenet_v2_classifier(), path)
    assert "mixes timm and torchvision names" in msg and "conv_stem.weight" in msg


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_refuses_truncated_timm_file(suffix, timm_ref, tmp_path):
    data = timm_ref("mobilenetv2_100")["files"][suffix].read_bytes()
    path = tmp_path / f"model_truncated{suffix}"
    path.write_bytes(data[: len(data) // 2])
    msg = refuse(mobilenet_v2_classifier(), path)
    assert "truncated" in msg.lower() or "not a readable" in msg
    assert path.name in msg
