"""SSDLite MobileNetV2 (paper section 6.2, Tables 5 and 6): head layout, model outputs, training, counts, weights."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from backbones import WeightsError
from heads import SSDLiteHead
from conftest import load_tool
from vision_tasks.models import SSDLiteMobileNetV2, build_model, ssdlite_mobilenet_v2
from vision_tasks.stats import count_madds, count_params

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = 128  # input side where counts are not the point


def _targets():
    """Targets for a batch of 4 (the extra maps are 1x1 at 128x128: BN needs more than 2 values per channel)."""
    return [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 5.0, 120.0, 40.0]]), "labels": torch.tensor([3, 0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without boxes
        {"boxes": torch.tensor([[0.0, 0.0, 128.0, 128.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 30.0, 50.0, 44.0], [0.0, 64.0, 64.0, 128.0]]), "labels": torch.tensor([2, 2]),
         "iscrowd": torch.tensor([0, 1])},
    ]


# ---------------------------------------------------------------------------------------------
# SSDLiteHead


def test_head_predictions_are_laid_out_like_the_anchors():
    """Output anchor n of map 0 is location n // B (row-major) and box n % B, as DefaultBoxGenerator orders them."""
    head = SSDLiteHead([8, 16], [3, 6, 6, 6, 6, 6], num_classes=3).eval()
    h, w, boxes = 4, 5, 3
    location = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w) / 100
    features = [location.expand(1, 8, h, w), torch.zeros(1, 16, 2, 3)]
    with torch.no_grad():
        for block, columns in ((head.regression_head[0], 4), (head.classification_head[0], 3)):
            depthwise, projection = block[0][0], block[1]
            depthwise.weight.zero_()
            depthwise.weight[:, 0, 1, 1] = 1.0  # identity (BN at init is identity up to eps)
            projection.weight.zero_()
            for b in range(boxes):
                projection.bias[b * columns] = b  # column 0: the box index
                projection.weight[b * columns + 1, 0] = 1.0  # column 1: the location index / 100
        cls_logits, bbox_regression, sizes = head(features)
    assert sizes == [(4, 5), (2, 3), (1, 2), (1, 1), (1, 1), (1, 1)]
    num = h * w * boxes
    n = torch.arange(num)
    bn_scale = (1 + head.regression_head[0][0][1].eps) ** -0.5
    for out in (bbox_regression, cls_logits):
        assert out.shape[1] == num + 6 * (6 + 2 + 1 + 1 + 1)
        torch.testing.assert_close(out[0, :num, 0], (n % boxes).float())
        torch.testing.assert_close(out[0, :num, 1], (n // boxes).float() / 100 * bn_scale)


def test_head_extra_depths_follow_width_and_min_depth():
    head = SSDLiteHead([16, 32], [6] * 6, num_classes=2, width_mult=0.05)
    # TF depth_fn: max(int(d * 0.05), 16) for the 1x1 intermediates and the outputs
    assert [block[2][0].out_channels for block in head.extras] == [25, 16, 16, 16]
    assert [block[0][0].out_channels for block in head.extras] == [16, 16, 16, 16]
    with pytest.raises(ValueError, match="num_anchors needs one entry per map"):
        SSDLiteHead([16, 32], [6] * 5, num_classes=2)


def test_head_init_follows_torchvision():
    head = SSDLiteHead([576, 1280], [3, 6, 6, 6, 6, 6], num_classes=81)
    weights = torch.cat([m.weight.flatten() for m in head.modules() if isinstance(m, nn.Conv2d)])
    assert abs(weights.std().item() - 0.03) < 0.001
    assert all(m.bias is None or m.bias.abs().max() == 0 for m in head.modules() if isinstance(m, nn.Conv2d))
    bns = [m for m in head.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)


# ---------------------------------------------------------------------------------------------
# The model


@pytest.mark.parametrize("width, channels", [(0.5, [288, 1280]), (1.0, [576, 1280]), (1.4, [816, 1792])])
def test_channels_come_from_feature_info(width, channels):
    model = ssdlite_mobilenet_v2(num_classes=5, width_mult=width)
    assert [f.channels for f in model.backbone.feature_info] == channels
    assert model.head.in_channels == channels
    assert [f.stride for f in model.backbone.feature_info] == [16, 32]
    out = model.train()(torch.randn(2, 3, SMALL, SMALL))
    assert out["cls_logits"].shape == (2, out["anchors"].shape[0], 6)
    assert out["bbox_regression"].shape == (2, out["anchors"].shape[0], 4)


def test_anchor_count_and_cache():
    model = ssdlite_mobilenet_v2(num_classes=3, width_mult=0.35)
    x = torch.randn(2, 3, 320, 320)
    with torch.no_grad():
        first = model.train().forward_head(x)
        again = model.forward_head(x)
        other = model.forward_head(torch.randn(2, 3, 300, 300))
    assert first["anchors"].shape == (2034, 4) and other["anchors"].shape == (1917, 4)
    assert again["anchors"] is first["anchors"]  # cached per input size, device and dtype
    assert first["cls_logits"].shape == (2, 2034, 4)


def test_eval_output_format():
    model = ssdlite_mobilenet_v2(num_classes=7, width_mult=0.5, detections_per_img=20).eval()
    height, width = SMALL, 160  # not square
    with torch.no_grad():
        detections = model(torch.randn(3, 3, height, width))
    assert isinstance(detections, list) and len(detections) == 3
    for det in detections:
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].dtype == det["scores"].dtype == torch.float32 and det["labels"].dtype == torch.int64
        d = det["scores"].shape[0]
        assert 0 < d <= 20 and det["boxes"].shape == (d, 4) and det["labels"].shape == (d,)
        boxes = det["boxes"]
        assert bool((boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= width).all())
        assert bool((boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= height).all())
        assert bool((boxes[:, 2:] >= boxes[:, :2]).all())
        assert det["labels"].min() >= 0 and det["labels"].max() < 7
        assert bool((det["scores"][:-1] >= det["scores"][1:]).all()) and bool((det["scores"] > 0.01).all())


@pytest.mark.parametrize("classification_loss", ["softmax", "sigmoid"])
def test_training_step_is_finite_and_reaches_every_part(classification_loss):
    torch.manual_seed(0)
    model = ssdlite_mobilenet_v2(num_classes=4, width_mult=0.35, classification_loss=classification_loss).train()
    losses = model.loss(model(torch.randn(4, 3, SMALL, SMALL)), _targets())
    assert set(losses) == {"classification", "localization"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    for prefix in ("backbone.features.0.", "head.extras.3.", "head.classification_head.5.", "head.regression_head.0."):
        assert any(g.abs().sum() > 0 for name, g in grads.items() if name.startswith(prefix)), prefix


def test_a_few_steps_fit_one_batch():
    torch.manual_seed(0)
    model = ssdlite_mobilenet_v2(num_classes=4, width_mult=0.35).train()
    images = torch.randn(4, 3, SMALL, SMALL)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(8):
        loss = sum(model.loss(model(images), _targets()).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.7 * history[0], history


def test_config_rebuilds_the_model():
    model = ssdlite_mobilenet_v2(num_classes=11, width_mult=0.5, anchor_layout="torchvision", nms_thresh=0.5)
    config = json.loads(json.dumps(model.config))  # JSON-able, as checkpoints carry it
    rebuilt = build_model("SSDLiteMobileNetV2", config)
    assert type(rebuilt) is SSDLiteMobileNetV2 and rebuilt.config == model.config
    assert rebuilt.num_classes == 11 and rebuilt.image_size == 320
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_weights_and_backbone_weights(tmp_path):
    torch.manual_seed(0)
    tv_file = tmp_path / "mobilenet_v2.pth"
    tv = torchvision.models.mobilenet_v2()
    torch.save(tv.state_dict(), tv_file)
    model = ssdlite_mobilenet_v2(num_classes=3, backbone_weights=tv_file)  # the classifier is ignored
    tv_state = tv.state_dict()
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, tv_state[key], rtol=0, atol=0)

    full = tmp_path / "ssdlite.pth"
    torch.save(model.state_dict(), full)
    reloaded = ssdlite_mobilenet_v2(num_classes=3, weights=full).eval()
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        a, b = model.eval().forward_head(x), reloaded.forward_head(x)
    torch.testing.assert_close(a["cls_logits"], b["cls_logits"], rtol=0, atol=0)
    with pytest.raises(WeightsError, match="head"):  # 3 vs 5 classes
        ssdlite_mobilenet_v2(num_classes=5, weights=full)
    with pytest.raises(ValueError, match="not both"):
        ssdlite_mobilenet_v2(weights=full, backbone_weights=tv_file)


# ---------------------------------------------------------------------------------------------
# Counts (PAPER.md section 9; Tables 5 and 6)


def test_paper_counts_80_classes_tf_layout():
    model = ssdlite_mobilenet_v2(num_classes=80, anchor_layout="tf")
    params, madds = count_params(model), count_madds(model, 320)
    head_params = count_params(model.head)
    print(f"SSDLite MNV2 80 classes, TF layout: params {params:,}, MAdds at 320 {madds:,}, head params {head_params:,}")
    assert abs(params / 4.3e6 - 1) < 0.05  # Table 6: 4.3M
    assert abs(madds / 0.8e9 - 1) < 0.10  # Table 6: 0.8B
    assert abs(head_params / 2.1e6 - 1) < 0.05  # Table 5: SSDLite head 2.1M
    assert (params, madds, head_params) == (4_337_013, 788_830_144, 2_113_141)
    # eval-mode counting (post-processing included) adds no multiply-adds to the network's
    model.train()
    assert count_madds(model, 320) == madds and model.training


@pytest.mark.parametrize(
    "num_classes, layout, params_m, madds_300_b, madds_320_b",
    [
        (90, "tf", 4.501, 0.750, 0.804),
        (90, "torchvision", 4.665, 0.809, 0.870),
        (80, "torchvision", 4.484, 0.788, 0.848),
    ],
)
def test_counts_match_the_reference_assemblies(num_classes, layout, params_m, madds_300_b, madds_320_b):
    """PAPER.md section 9's counts of straightforward PyTorch assemblies, to their printed digits."""
    model = ssdlite_mobilenet_v2(num_classes=num_classes, anchor_layout=layout)
    assert round(count_params(model) / 1e6, 3) == params_m
    assert round(count_madds(model, 300) / 1e9, 3) == madds_300_b
    assert round(count_madds(model, 320) / 1e9, 3) == madds_320_b


def test_model_stats_ssdlite_section(capsys):
    tool = load_tool("model_stats")
    tf, tv = tool.main(["--section", "ssdlite", "--ssdlite-resolution", "320"])
    assert "Table 6" in capsys.readouterr().out
    assert (tf["anchor_layout"], tf["num_anchors"], tf["params"], tf["madds"]) == ("tf", 2034, 4_337_013, 788_830_144)
    assert tf["head_params"] == 2_113_141 and abs(tf["d_paper_madds"]) < 0.1 and abs(tf["d_head_params"]) < 0.05
    assert tf["head_madds"] == tf["madds"] - count_madds(ssdlite_mobilenet_v2().backbone, 320)
    assert (tv["anchor_layout"], tv["num_anchors"], tv["params"]) == ("torchvision", 3234, 4_484_148)
