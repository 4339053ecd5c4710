"""MobileNetV2 backbone: named taps, widths, output stride, truncation, errors and the paper's ablations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import backbones
from backbones import InvertedResidual, create_backbone, feature_names
from vision_tasks.models import mobilenet_v2_classifier
from vision_tasks.optim import param_groups
from vision_tasks.stats import count_params
from conftest import randomize_bn

ALL_TAPS = tuple(feature_names())
# Layer numbers (paper reference numbering) of the 10 blocks with a residual connection (PAPER.md 1.4:
# blocks 3, 5, 6, 8-10, 12-13, 15-16 of the 17, i.e. layer = block + 1).
RESIDUAL_LAYERS = [4, 6, 7, 9, 10, 11, 13, 14, 16, 17]
# Output of each Table 2 row (its last block) and the stem / last conv.
STAGE_TAPS = ["layer1", "layer2", "layer4", "layer7", "layer11", "layer14", "layer17", "layer18", "layer19"]
# PAPER.md 1.3 "Channel widths after rounding": stem, 16, 24, 32, 64, 96, 160, 320, last.
PAPER_WIDTHS = {
    0.35: [16, 8, 8, 16, 24, 32, 56, 112, 1280],
    0.5: [16, 8, 16, 16, 32, 48, 80, 160, 1280],
    0.75: [24, 16, 24, 24, 48, 72, 120, 240, 1280],
    1.0: [32, 16, 24, 32, 64, 96, 160, 320, 1280],
    1.4: [48, 24, 32, 48, 88, 136, 224, 448, 1792],
}


pytestmark = pytest.mark.usefixtures("one_thread")



def blocks(net: nn.Module) -> dict[int, InvertedResidual]:
    """Bottleneck blocks by paper layer number (layer2 .. layer18 = features[1] .. features[17])."""
    return {i + 1: m for i, m in enumerate(net.features) if isinstance(m, InvertedResidual)}


def depthwise(block: InvertedResidual) -> nn.Conv2d:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(convs) == 1
    return convs[0]


# ------------------------------------------------------------------------------------------------
# feature_info against the real outputs


@pytest.mark.parametrize("size", [(64, 96), (97, 131)])
def test_feature_info_matches_outputs_for_every_tap(size):
    torch.manual_seed(0)
    net = create_backbone("mobilenet_v2", out_features=ALL_TAPS).eval()
    h, w = size
    with torch.no_grad():
        feats = net(torch.randn(1, 3, h, w))
    assert list(feats) == list(ALL_TAPS)
    assert [fi.name for fi in net.feature_info] == list(ALL_TAPS)
    for fi in net.feature_info:
        out = feats[fi.name]
        assert out.shape[1] == fi.channels, fi
        # same padding arithmetic as the reference: every stride-2 3x3 conv gives ceil(size / 2)
        assert out.shape[2:] == (math.ceil(h / fi.stride), math.ceil(w / fi.stride)), fi
        if h % 32 == 0 and w % 32 == 0:
            assert (h // out.shape[2], w // out.shape[3]) == (fi.stride, fi.stride)
    info = {fi.name: fi for fi in net.feature_info}
    # the taps the heads use (DESIGN.md): SSDLite layer15_expand, DeepLab layer18, classifier layer19
    assert (info["layer15_expand"].channels, info["layer15_expand"].stride) == (576, 16)
    assert (info["layer18"].channels, info["layer18"].stride) == (320, 32)
    assert (info["layer19"].channels, info["layer19"].stride) == (1280, 32)
    assert (info["layer1"].stride, info["layer2"].stride, info["layer3_expand"].stride, info["layer3"].stride) == (2, 2, 2, 4)


def test_feature_names_order():
    names = feature_names()
    assert names[:4] == ["layer1", "layer2", "layer3_expand", "layer3"]
    assert names[-3:] == ["layer18_expand", "layer18", "layer19"]
    assert len(names) == 2 + 2 * 16 + 1  # layer2 (t = 1) has no expansion tap


@pytest.mark.parametrize("width", sorted(PAPER_WIDTHS))
def test_channel_widths_follow_paper_table(width):
    net = create_backbone("mobilenet_v2", width_mult=width, out_features=STAGE_TAPS).eval()
    assert [fi.channels for fi in net.feature_info] == PAPER_WIDTHS[width]
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 32, 32))
    assert [feats[name].shape[1] for name in STAGE_TAPS] == PAPER_WIDTHS[width]


# TF Object Detection API widths (min_depth 16, last conv scaled by the width): STAGE_TAPS, then layer15_expand.
TF_OD_WIDTHS = {
    0.5: [16, 16, 16, 16, 32, 48, 80, 160, 640, 288],  # shared/weights README: head inputs 288 and 640
    0.35: [16, 16, 16, 16, 24, 32, 56, 112, 448, 192],
}


@pytest.mark.parametrize("width", sorted(TF_OD_WIDTHS))
def test_min_depth_and_scaled_last_conv(width):
    net = create_backbone("mobilenet_v2", width_mult=width, min_depth=16, scale_last_conv=True,
                          out_features=(*STAGE_TAPS, "layer15_expand")).eval()
    assert [fi.channels for fi in net.feature_info] == TF_OD_WIDTHS[width]
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 64))
    assert [feats[fi.name].shape[1] for fi in net.feature_info] == TF_OD_WIDTHS[width]
    # each alone: min_depth keeps the last conv at 1280, the scaled last conv keeps the 8-channel layers
    alone = create_backbone("mobilenet_v2", width_mult=width, min_depth=16, out_features=STAGE_TAPS)
    assert [fi.channels for fi in alone.feature_info] == TF_OD_WIDTHS[width][:8] + [1280]
    scaled = create_backbone("mobilenet_v2", width_mult=width, scale_last_conv=True, out_features=STAGE_TAPS)
    assert [fi.channels for fi in scaled.feature_info] == PAPER_WIDTHS[width][:8] + TF_OD_WIDTHS[width][8:9]


def test_min_depth_adds_no_shortcut():
    """min_depth widens layers but keeps the network's shortcuts (the OD API's Keras MobileNetV2): at width 0.5
    the first bottleneck goes 16 -> 16 at stride 1 and still adds nothing."""
    net = create_backbone("mobilenet_v2", width_mult=0.5, min_depth=16)
    first = blocks(net)[2]
    assert (first.in_channels, first.out_channels, first.stride) == (16, 16, 1) and not first.use_res_connect
    assert [n for n, b in blocks(net).items() if b.use_res_connect] == RESIDUAL_LAYERS


def test_min_depth_and_last_conv_defaults_unchanged():
    """The defaults are the paper's (and torchvision's): min_depth = the channel rounding, last conv 1280 below
    width 1; the 1000-class classifier at width 1.0 keeps torchvision's 3,504,872 parameters."""
    assert count_params(mobilenet_v2_classifier()) == 3_504_872
    for width in (0.35, 0.5, 1.0, 1.4):
        default = create_backbone("mobilenet_v2", width_mult=width, out_features=STAGE_TAPS)
        explicit = create_backbone("mobilenet_v2", width_mult=width, out_features=STAGE_TAPS, min_depth=8,
                                   scale_last_conv=False)
        assert [fi.channels for fi in default.feature_info] == [fi.channels for fi in explicit.feature_info] \
            == PAPER_WIDTHS[width]
        assert [n for n, b in blocks(default).items() if b.use_res_connect] == RESIDUAL_LAYERS
    # above width 1 the last conv grows either way
    assert create_backbone("mobilenet_v2", width_mult=1.4, scale_last_conv=True).feature_info[-1].channels == 1792
    with pytest.raises(ValueError, match="min_depth"):
        create_backbone("mobilenet_v2", min_depth=0)


# ------------------------------------------------------------------------------------------------
# output stride (TF-Slim / DeepLab dilation convention)

EXPECTED_DW = {  # layer -> (stride, dilation) of the depthwise conv
    32: {**{n: (1, 1) for n in range(2, 19)}, 3: (2, 1), 5: (2, 1), 8: (2, 1), 15: (2, 1)},
    16: {**{n: (1, 1) for n in range(2, 19)}, 3: (2, 1), 5: (2, 1), 8: (2, 1), 15: (1, 1),
         16: (1, 2), 17: (1, 2), 18: (1, 2)},
    8: {**{n: (1, 1) for n in range(2, 19)}, 3: (2, 1), 5: (2, 1), 8: (1, 1),
        **{n: (1, 2) for n in range(9, 15)}, 15: (1, 2), 16: (1, 4), 17: (1, 4), 18: (1, 4)},
}


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_output_stride(output_stride):
    natural = {fi.name: fi.stride for fi in create_backbone("mobilenet_v2", out_features=ALL_TAPS).feature_info}
    net = create_backbone("mobilenet_v2", output_stride=output_stride, out_features=ALL_TAPS).eval()
    for fi in net.feature_info:
        assert fi.stride == min(natural[fi.name], output_stride), fi
    assert max(fi.stride for fi in net.feature_info) == output_stride

    got = {n: (depthwise(b).stride, depthwise(b).dilation) for n, b in blocks(net).items()}
    want = {n: ((s, s), (d, d)) for n, (s, d) in EXPECTED_DW[output_stride].items()}
    assert got == want
    for b in blocks(net).values():  # "same" padding for the dilated 3x3
        assert depthwise(b).padding == depthwise(b).dilation

    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 96))
    for fi in net.feature_info:
        assert feats[fi.name].shape[1:] == (fi.channels, 64 // fi.stride, 96 // fi.stride), fi


def test_output_stride_odd_input_size():
    net = create_backbone("mobilenet_v2", output_stride=16, out_features=("layer15_expand", "layer18")).eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 97, 131))
    assert feats["layer15_expand"].shape == (1, 576, 7, 9)
    assert feats["layer18"].shape == (1, 320, 7, 9)  # ceil(97/16), ceil(131/16)


# ------------------------------------------------------------------------------------------------
# truncation and errors


def test_truncation_layer18_has_no_last_conv():
    net = create_backbone("mobilenet_v2", out_features=("layer18",))
    assert len(net.features) == 18
    assert all(m.out_channels != 1280 for m in net.modules() if isinstance(m, nn.Conv2d))
    assert net.num_features == 320
    with torch.no_grad():
        out = net.eval()(torch.randn(1, 3, 64, 64))
    assert list(out) == ["layer18"] and out["layer18"].shape == (1, 320, 2, 2)


def test_truncation_layer15_expand_stops_at_layer15():
    net = create_backbone("mobilenet_v2", out_features=("layer15_expand",))
    assert len(net.features) == 15
    assert isinstance(net.features[14], InvertedResidual) and net.features[14].out_channels == 160
    with torch.no_grad():
        out = net.eval()(torch.randn(1, 3, 64, 64))
    assert out["layer15_expand"].shape == (1, 576, 4, 4)


@pytest.mark.parametrize("tap", ["layer20", "layer2_expand", "conv5", "layer19_expand"])
def test_unknown_tap_raises_with_choices(tap):
    with pytest.raises(ValueError) as err:
        create_backbone("mobilenet_v2", out_features=(tap,))
    assert tap in str(err.value) and "layer15_expand" in str(err.value) and "layer19" in str(err.value)


def test_expansion_tap_of_block_without_expansion_raises_value_error():
    with pytest.raises(ValueError, match="layer3_expand"):
        create_backbone("mobilenet_v2", expand_ratio=1, out_features=("layer3_expand",))


@pytest.mark.parametrize("output_stride", [4, 64, 0])
def test_bad_output_stride(output_stride):
    with pytest.raises(ValueError, match=r"8, 16 or 32"):
        create_backbone("mobilenet_v2", output_stride=output_stride)


@pytest.mark.parametrize("width", [0, -0.5])
def test_bad_width(width):
    with pytest.raises(ValueError, match="width_mult"):
        create_backbone("mobilenet_v2", width_mult=width)


def test_unknown_backbone_lists_registered():
    assert "mobilenet_v2" in backbones.list_backbones()
    with pytest.raises(KeyError) as err:
        create_backbone("resnet50")
    assert "resnet50" in str(err.value) and str(backbones.list_backbones()) in str(err.value)


# ------------------------------------------------------------------------------------------------
# ablations (Figure 6), expansion factor, memory-efficient inference, frozen BN

BLOCK_TAPS = tuple(f"layer{n}" for n in range(2, 19))


def test_linear_vs_relu6_bottleneck():
    torch.manual_seed(0)
    linear = create_backbone("mobilenet_v2", out_features=BLOCK_TAPS).eval()
    relu = create_backbone("mobilenet_v2", out_features=BLOCK_TAPS, linear_bottleneck=False).eval()
    assert count_params(linear) == count_params(relu)
    assert linear.state_dict().keys() == relu.state_dict().keys()
    relu.load_state_dict(linear.state_dict())
    for b in blocks(relu).values():
        assert isinstance(b.conv[-1], nn.ReLU6)
    for b in blocks(linear).values():
        assert isinstance(b.conv[-1], nn.BatchNorm2d)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out_linear, out_relu = linear(x), relu(x)
    for name in BLOCK_TAPS:
        assert out_relu[name].min() >= 0, name
        assert out_linear[name].min() < 0, name  # the linear bottleneck keeps negative values


def _block_reference(block: InvertedResidual, x: torch.Tensor, mode: str, residual: bool) -> torch.Tensor:
    """The block written out by hand for each shortcut mode."""
    if residual and mode == "bottleneck":
        return x + block.conv(x)
    if residual and mode == "expansion":
        e = block.conv[0](x)
        return block.conv[2:](block.conv[1](e) + e)
    return block.conv(x)


@pytest.mark.parametrize("mode", ["bottleneck", "none", "expansion"])
def test_shortcut_modes_wire_the_right_blocks(mode):
    torch.manual_seed(0)
    net = create_backbone("mobilenet_v2", shortcut=mode).eval()
    randomize_bn(net)
    res = [n for n, b in blocks(net).items() if b.use_res_connect]
    exp = [n for n, b in blocks(net).items() if b.use_expansion_shortcut]
    assert res == (RESIDUAL_LAYERS if mode == "bottleneck" else [])
    assert exp == (RESIDUAL_LAYERS if mode == "expansion" else [])
    with torch.no_grad():
        for n, b in blocks(net).items():
            x = torch.randn(1, b.in_channels, 8, 8)
            want = _block_reference(b, x, mode, n in RESIDUAL_LAYERS)
            torch.testing.assert_close(b(x), want, rtol=1e-5, atol=1e-5)
            if n in RESIDUAL_LAYERS and mode != "none":  # the shortcut really changes the output
                assert not torch.allclose(b(x), b.conv(x), atol=1e-3)


def test_shortcut_modes_same_params_different_outputs():
    torch.manual_seed(0)
    nets = {m: create_backbone("mobilenet_v2", shortcut=m, out_features=("layer18",)).eval()
            for m in ("bottleneck", "none", "expansion")}
    randomize_bn(nets["bottleneck"])
    state = nets["bottleneck"].state_dict()
    for net in nets.values():
        net.load_state_dict(state)
    assert len({count_params(n) for n in nets.values()}) == 1
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = {m: n(x)["layer18"] for m, n in nets.items()}
    assert not torch.allclose(outs["bottleneck"], outs["none"], atol=1e-3)
    assert not torch.allclose(outs["bottleneck"], outs["expansion"], atol=1e-3)
    assert not torch.allclose(outs["none"], outs["expansion"], atol=1e-3)


def test_expand_ratio_sets_hidden_widths():
    # Table 2 inputs of each block: the expansion is applied to the block's input width.
    inputs, c_in = {}, 32
    layer = 2
    for t, c, n, s in backbones.TABLE2:
        for _ in range(n):
            inputs[layer], c_in, layer = c_in, c, layer + 1
    taps = tuple(f"layer{n}_expand" for n in range(3, 19))
    for ratio in (6, 5):
        net = create_backbone("mobilenet_v2", expand_ratio=ratio, out_features=taps).eval()
        want = [inputs[n] * ratio for n in range(3, 19)]
        assert [fi.channels for fi in net.feature_info] == want
        with torch.no_grad():
            feats = net(torch.randn(1, 3, 32, 32))
        assert [feats[t].shape[1] for t in taps] == want
    assert want[:3] == [80, 120, 120] and want[12] == 480  # layer3/4/5_expand, layer15_expand at t = 5
    assert blocks(create_backbone("mobilenet_v2", expand_ratio=5))[2].hidden_channels == 32  # t = 1 row kept
    assert count_params(create_backbone("mobilenet_v2", expand_ratio=5)) < count_params(create_backbone("mobilenet_v2"))


@pytest.mark.parametrize("mode", ["bottleneck", "none", "expansion"])
def test_memory_efficient_splits_same_outputs(mode, monkeypatch):
    torch.manual_seed(0)
    taps = ("layer15_expand", "layer18", "layer19")
    ref = create_backbone("mobilenet_v2", shortcut=mode, out_features=taps).eval()
    randomize_bn(ref)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = ref(x)
    calls = []
    original = InvertedResidual._forward_split
    monkeypatch.setattr(InvertedResidual, "_forward_split", lambda self, x: calls.append(1) or original(self, x))
    for splits in (2, 4):
        net = create_backbone("mobilenet_v2", shortcut=mode, out_features=taps, memory_efficient_splits=splits)
        net.load_state_dict(ref.state_dict())
        net.eval()
        calls.clear()
        with torch.no_grad():
            got = net(x)
        assert len(calls) == 15  # the 16 blocks with an expansion, less layer15 (computed whole for its tap)
        for name in taps:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-5)


def test_freeze_bn_uses_torchvision_frozen_batch_norm():
    torch.manual_seed(0)
    net = create_backbone("mobilenet_v2", freeze_bn=True, out_features=("layer18",), bn_eps=1e-3)
    frozen = [m for m in net.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 51 and not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in net.modules())
    assert {m.eps for m in frozen} == {1e-3}  # bn_eps reaches the frozen BNs
    assert all(m.weight.requires_grad for m in net.modules() if isinstance(m, nn.Conv2d))
    assert all(not p.requires_grad for m in frozen for p in m.parameters())  # no BN parameters to train at all
    assert sum(p.numel() for p in net.parameters()) == sum(
        m.weight.numel() for m in net.modules() if isinstance(m, nn.Conv2d))
    assert param_groups(net, 0.0)[1]["params"] == []  # nothing for the no-decay group
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net(torch.randn(2, 3, 64, 64))["layer18"].sum().backward()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # training mode leaves the statistics alone
    # the same model without freeze_bn does update its running statistics
    free = create_backbone("mobilenet_v2", out_features=("layer18",)).train()
    free_before = {k: v.clone() for k, v in free.state_dict().items()}
    free(torch.randn(2, 3, 64, 64))
    assert not all(torch.equal(free_before[k], v) for k, v in free.state_dict().items())


def test_frozen_backbone_computes_what_the_unfrozen_one_does_in_eval_mode():
    torch.manual_seed(0)
    taps = ("layer15_expand", "layer19")
    free = create_backbone("mobilenet_v2", out_features=taps, bn_eps=1e-3).eval()
    randomize_bn(free)
    frozen = create_backbone("mobilenet_v2", out_features=taps, bn_eps=1e-3, freeze_bn=True)
    frozen.load_state_dict(free.state_dict())  # strict: num_batches_tracked is dropped by FrozenBatchNorm2d
    assert free.state_dict().keys() - frozen.state_dict().keys() == {
        k for k in free.state_dict() if k.endswith("num_batches_tracked")}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, got = free(x), frozen.train()(x)  # the frozen one in training mode too
    for name in taps:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)
    # and back: a frozen model's state dict (no counters) into a plain one, through load_weights
    plain = create_backbone("mobilenet_v2", out_features=taps, bn_eps=1e-3).eval()
    report = backbones.load_weights(plain, frozen.state_dict())
    assert not report.missing and not report.unexpected
    with torch.no_grad():
        torch.testing.assert_close(plain(x)["layer19"], want["layer19"])


def test_torchvision_state_dict_loads_strictly_into_a_frozen_backbone():
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.mobilenet_v2().eval()
    randomize_bn(reference)
    state = reference.state_dict()
    net = create_backbone("mobilenet_v2", freeze_bn=True)
    report = backbones.load_weights(net, state)  # strict by default; num_batches_tracked is not "unexpected"
    assert not report.missing and not report.unexpected and not report.mismatched
    assert sorted(report.ignored) == ["classifier.1.bias", "classifier.1.weight"]  # a bare backbone has no classifier
    net.load_state_dict({k: v for k, v in state.items() if k.startswith("features.")})  # torch's strict load too
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(net(x)["layer19"], reference.features(x), rtol=1e-4, atol=1e-5)


def test_memory_efficient_splits_with_frozen_batch_norms():
    torch.manual_seed(0)
    taps = ("layer18",)
    ref = create_backbone("mobilenet_v2", out_features=taps).eval()
    randomize_bn(ref)
    net = create_backbone("mobilenet_v2", out_features=taps, freeze_bn=True, memory_efficient_splits=4)
    net.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x)["layer18"], ref(x)["layer18"], rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="running statistics"):
        create_backbone("mobilenet_v2", memory_efficient_splits=2, norm_layer=lambda c, **kw: nn.GroupNorm(1, c))


def test_norm_layer_is_an_argument():
    net = create_backbone("mobilenet_v2", out_features=("layer2",), norm_layer=nn.SyncBatchNorm, bn_momentum=0.01)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert norms and all(type(m) is nn.SyncBatchNorm and m.momentum == 0.01 for m in norms)
    with pytest.raises(ValueError, match="freeze_bn=True means norm_layer=FrozenBatchNorm2d"):
        create_backbone("mobilenet_v2", freeze_bn=True, norm_layer=nn.SyncBatchNorm)


def test_freeze_bn_through_classifier_train():
    model = mobilenet_v2_classifier(num_classes=10, freeze_bn=True).train()
    assert model.training and model.head.dropout.training
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == 52
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())


def test_backbone_lr_mult_scales_the_backbone_groups_only():
    from vision_tasks.models import ssdlite_mobilenet_v2
    from vision_tasks.optim import apply_lr_mult

    model = ssdlite_mobilenet_v2(num_classes=2, width_mult=0.35, image_size=96)
    backbone = {id(p) for p in model.backbone.parameters()}
    optimizer = apply_lr_mult(torch.optim.AdamW(param_groups(model, 0.0, backbone_lr_mult=0.1), lr=1e-3, weight_decay=0.01))
    assert len(optimizer.param_groups) == 4  # (head, backbone) x (decayed, not decayed)
    seen = 0
    for group in optimizer.param_groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1  # no group mixes backbone and head parameters
        assert group["lr"] == pytest.approx(1e-4 if in_backbone == {True} else 1e-3)
        seen += len(group["params"])
    assert seen == sum(1 for p in model.parameters() if p.requires_grad)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=2)
    assert [g["initial_lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    apply_lr_mult(optimizer)  # again (e.g. a resumed optimizer): the scheduled groups are left alone
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5e-4, 5e-4, 5e-5, 5e-5])
    del scheduler
    assert len(param_groups(model, None)) == 1 and len(param_groups(model, 0.0)) == 2  # 1.0: the old layout
    with pytest.raises(ValueError, match="backbone_lr_mult"):
        param_groups(model, 0.0, backbone_lr_mult=-1)


def test_task_passes_backbone_lr_mult_to_its_optimizer():
    import functools

    from vision_tasks.tasks import ClassificationTask

    task = ClassificationTask(mobilenet_v2_classifier(num_classes=3, width_mult=0.35), norm_weight_decay=0.0,
                              optimizer=functools.partial(torch.optim.SGD, lr=0.1), backbone_lr_mult=0.0)
    lrs = {id(p): g["lr"] for g in task.configure_optimizers().param_groups for p in g["params"]}
    assert all(lrs[id(p)] == 0.0 for p in task.model.backbone.parameters())
    assert all(lrs[id(p)] == 0.1 for n, p in task.model.named_parameters() if not n.startswith("backbone."))
    with pytest.raises(ValueError, match="backbone_lr_mult"):
        ClassificationTask(mobilenet_v2_classifier(num_classes=3, width_mult=0.35), backbone_lr_mult=-0.5)
