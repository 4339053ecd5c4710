"""DeepLabv3 + MobileNetV2 (paper section 6.3, Table 7): head layout, shapes, counts, weights."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from backbones import WeightsError
from heads import DeepLabV3Head, aspp_rates, upsample_logits
from conftest import load_tool
from vision_tasks.models import DeepLabV3MobileNetV2, build_model, deeplabv3_mobilenet_v2
from vision_tasks.stats import count_madds, count_params

pytestmark = pytest.mark.usefixtures("one_thread")


def test_aspp_rates_follow_the_output_stride():
    assert aspp_rates(16) == (6, 12, 18)
    assert aspp_rates(8) == (12, 24, 36)
    assert aspp_rates(32) == (3, 6, 9)
    with pytest.raises(ValueError, match="output_stride"):
        aspp_rates(4)


def test_head_layout_is_the_tf_reference():
    """Image pooling first, then the 1x1 branch, then the atrous ones; ReLU (not ReLU6); logits with bias."""
    head = DeepLabV3Head(320, 21, atrous_rates=(6, 12, 18))
    names = [name for name, _ in head.named_children()]
    assert names == ["image_pooling", "aspp0", "aspp", "projection", "dropout", "classifier"]
    assert [branch[0].dilation for branch in head.aspp] == [(6, 6), (12, 12), (18, 18)]
    assert [branch[0].kernel_size for branch in head.aspp] == [(3, 3)] * 3
    assert head.projection[0].in_channels == 5 * 256
    assert not any(isinstance(m, nn.ReLU6) for m in head.modules())
    assert sum(isinstance(m, nn.ReLU) for m in head.modules()) == 6
    assert head.classifier.bias is not None and head.classifier.out_channels == 21
    assert head.dropout.p == pytest.approx(0.1)  # TF keep_prob 0.9

    # the pooled branch is the first 256 channels of the concatenation, constant over space
    x = torch.randn(2, 320, 5, 7)
    head.eval()
    seen = {}
    head.projection.register_forward_hook(lambda m, args, out: seen.update(concat=args[0]))  # returns None
    with torch.no_grad():
        out = head(x)
    assert out.shape == (2, 21, 5, 7)
    pooled = head.image_pooling(x)
    torch.testing.assert_close(seen["concat"][:, :256], pooled.expand(-1, -1, 5, 7))
    torch.testing.assert_close(seen["concat"][:, 256:512], head.aspp0(x))


def test_separable_aspp_branches():
    head = DeepLabV3Head(64, 5, atrous_rates=(2, 4), separable=True, channels=32)
    depthwise, pointwise = head.aspp[0]
    assert depthwise[0].groups == 64 and depthwise[0].dilation == (2, 2) and pointwise[0].kernel_size == (1, 1)
    assert head(torch.randn(2, 64, 9, 9)).shape == (2, 5, 9, 9)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("feature, channels", [("layer18", 320), ("layer19", 1280)])
def test_shapes_for_output_strides_and_taps(output_stride, feature, channels):
    model = deeplabv3_mobilenet_v2(num_classes=7, output_stride=output_stride, aspp=True, feature=feature).eval()
    info = {i.name: i for i in model.backbone.feature_info}
    assert (info[feature].channels, info[feature].stride) == (channels, output_stride)
    seen = {}
    model.head.register_forward_hook(lambda m, args, out: seen.update(shape=args[0].shape))  # returns None
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 65, 97))
    assert logits.shape == (2, 7, 65, 97)
    # odd sizes: every stride-2 layer gives ceil(size / 2), as TF's SAME padding does at odd sizes
    assert seen["shape"] == (2, channels, -(-65 // output_stride), -(-97 // output_stride))
    assert model.head.atrous_rates == aspp_rates(output_stride)


def test_layer18_tap_builds_no_1280_conv():
    model = deeplabv3_mobilenet_v2()
    assert len(model.backbone.features) == 18 and model.backbone.num_features == 320


def test_output_stride_dilation_convention():
    """TF-Slim/DeepLab (PAPER.md section 10): at OS 16 the stride-removed block keeps dilation 1, later blocks get 2."""
    model = deeplabv3_mobilenet_v2(output_stride=16)
    dilations = {i: next(m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1).dilation
                 for i, block in enumerate(model.backbone.features[14:18], start=15)}
    assert dilations == {15: (1, 1), 16: (2, 2), 17: (2, 2), 18: (2, 2)}


def test_logits_are_upsampled_with_corners_aligned():
    low = torch.randn(1, 3, 5, 5)
    up = upsample_logits(low, (17, 17))
    torch.testing.assert_close(up[..., 0, 0], low[..., 0, 0])
    torch.testing.assert_close(up[..., -1, -1], low[..., -1, -1])  # corners aligned: the corner samples agree
    assert upsample_logits(low, (5, 5)) is low


def test_aux_head():
    model = deeplabv3_mobilenet_v2(num_classes=4, width_mult=0.35, aux_feature="layer7").eval()
    assert [i.name for i in model.backbone.feature_info] == ["layer7", "layer18"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits, aux = model.forward_with_aux(x)
        torch.testing.assert_close(logits, model(x))
    assert logits.shape == aux.shape == (1, 4, 64, 64)
    plain = deeplabv3_mobilenet_v2(num_classes=4, width_mult=0.35).eval()
    assert plain.forward_with_aux(x)[1] is None and plain.aux_head is None


def test_a_few_steps_fit_one_batch():
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v2(num_classes=3, width_mult=0.35, output_stride=8)
    x = torch.randn(2, 3, 48, 48)
    target = torch.zeros(2, 48, 48, dtype=torch.long)
    target[:, 8:30, 8:30] = 1
    target[:, 30:, 30:] = 2
    target[:, 0] = 255
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), target, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_config_rebuilds_the_model():
    model = deeplabv3_mobilenet_v2(num_classes=9, width_mult=0.5, output_stride=8, aspp=True, aux_feature="layer7")
    config = json.loads(json.dumps(model.config))
    rebuilt = build_model("DeepLabV3MobileNetV2", config)
    assert type(rebuilt) is DeepLabV3MobileNetV2 and rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_weights_and_backbone_weights(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2()
    tv_file = tmp_path / "mobilenet_v2.pth"
    torch.save(tv.state_dict(), tv_file)
    model = deeplabv3_mobilenet_v2(num_classes=3, backbone_weights=tv_file)  # layer19 and the classifier skipped
    tv_state = tv.state_dict()
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, tv_state[key], rtol=0, atol=0)

    full = tmp_path / "deeplab.pth"
    torch.save(model.state_dict(), full)
    reloaded = deeplabv3_mobilenet_v2(num_classes=3, weights=full).eval()
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reloaded(x), rtol=0, atol=0)
    with pytest.raises(WeightsError, match="head"):  # 3 vs 21 classes
        deeplabv3_mobilenet_v2(weights=full)
    with pytest.raises(ValueError, match="not both"):
        deeplabv3_mobilenet_v2(weights=full, backbone_weights=tv_file)


# ---------------------------------------------------------------------------------------------
# Table 7 counts (PAPER.md section 9: 2.114M / 2.74B at 513 without ASPP, 4.524M with regular ASPP)


def test_table7_counts():
    plain = deeplabv3_mobilenet_v2(num_classes=21, output_stride=16, aspp=False).to("meta")
    params, madds = count_params(plain), count_madds(plain, 513)
    assert abs(params / 2.11e6 - 1) < 0.02 and abs(madds / 2.75e9 - 1) < 0.05  # the tolerances
    assert (params, madds) == (2_113_557, 2_740_709_056)
    aspp = deeplabv3_mobilenet_v2(num_classes=21, output_stride=16, aspp=True).to("meta")
    assert abs(count_params(aspp) / 4.52e6 - 1) < 0.02
    assert round(count_params(aspp) / 1e6, 3) == 4.524 and round(count_madds(aspp, 513) / 1e9, 2) == 5.36
    separable = deeplabv3_mobilenet_v2(aspp=True, separable_aspp=True).to("meta")
    assert round(count_params(separable) / 1e6, 3) == 2.568 and round(count_madds(separable, 513) / 1e9, 2) == 3.23
    os8 = deeplabv3_mobilenet_v2(output_stride=8).to("meta")
    assert count_params(os8) == params and round(count_madds(os8, 513) / 1e9, 2) == 8.83


def test_model_stats_deeplab_section(capsys):
    tool = load_tool("model_stats")
    rows = tool.main(["--section", "deeplab"])
    assert "Table 7" in capsys.readouterr().out
    by_name = {r["model"]: r for r in rows}
    plain = by_name["MNV2* OS16 no ASPP"]
    assert (plain["params"], plain["madds"], plain["paper_madds"]) == (2_113_557, 2_740_709_056, 2.75e9)
    mf = by_name["MNV2* OS8 no ASPP MF"]
    assert abs(mf["d_paper_madds"]) < 0.01  # 12 passes: 152.1B against Table 7's 152.6B
    assert abs(by_name["MNV2* OS16 ASPP"]["d_paper_params"]) < 0.02
