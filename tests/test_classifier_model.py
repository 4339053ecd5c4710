"""The MobileNetV2 classifier: paper counts (params, multiply-adds), torchvision agreement, rebuild from config."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from conftest import load_tool
from vision_tasks.models import MobileNetV2Classifier, build_model, mobilenet_v2_classifier
from vision_tasks.stats import count_madds, count_params, madds_by_op

# PAPER.md 1.5: [CALC] MACs at 224 (M) and the Slim table's params (M; no BN, 1001 classes).
CALC_MACS_224 = {0.35: 59.3, 0.5: 97.1, 0.75: 209.1, 1.0: 300.8, 1.4: 582.2}
SLIM_PARAMS = {0.35: 1.66, 0.5: 1.95, 0.75: 2.61, 1.0: 3.47, 1.4: 6.06}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_width_1_has_torchvision_parameter_count():
    model = mobilenet_v2_classifier()
    assert count_params(model) == 3_504_872
    assert sum(p.numel() for p in model.parameters()) == 3_504_872


def test_width_1_madds_at_224():
    model = mobilenet_v2_classifier()
    madds = count_madds(model, 224)
    assert abs(madds / 1e6 - 300.8) / 300.8 < 1e-3
    assert madds == count_madds(torchvision.models.mobilenet_v2(), 224)
    by_op = madds_by_op(model, 224)
    assert set(by_op) == {"aten.convolution", "aten.addmm"}
    assert by_op["aten.addmm"] == 1280 * 1000  # the classifier


@pytest.mark.parametrize("width", sorted(CALC_MACS_224))
def test_width_grid_against_paper_and_torchvision(width):
    ours = mobilenet_v2_classifier(width_mult=width)
    tv = torchvision.models.mobilenet_v2(width_mult=width)
    assert count_params(ours) == count_params(tv)
    madds = count_madds(ours, 224)
    assert abs(madds / 1e6 - CALC_MACS_224[width]) / CALC_MACS_224[width] < 0.01
    assert madds == count_madds(tv, 224)
    # the Slim checkpoint table's convention reproduces its 2-decimal params column
    slim = count_params(mobilenet_v2_classifier(width_mult=width, num_classes=1001), exclude_norm=True)
    assert abs(slim / 1e6 - SLIM_PARAMS[width]) <= 0.005


def test_madds_scale_with_resolution():
    model = mobilenet_v2_classifier()
    # Slim table: 1.0_160 = 154M, 1.0_96 = 56M (rounded)
    assert round(count_madds(model, 160) / 1e6) == 154
    assert round(count_madds(model, 96) / 1e6) == 56


def test_counting_helpers_follow_the_convention():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=True), nn.BatchNorm2d(4), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    ).train()
    # conv: 8*8 outputs x 4 channels x (3*3*3) MACs; linear 4*2; BN, ReLU6, pool and biases are not counted
    assert count_madds(net, 8) == 8 * 8 * 4 * 27 + 4 * 2
    assert count_madds(net, (8, 4)) == 8 * 4 * 4 * 27 + 4 * 2
    assert net.training  # mode restored
    assert net[1].num_batches_tracked.item() == 0  # no BN update during counting
    assert count_params(net) == (4 * 27 + 4) + (4 + 4) + (4 * 2 + 2)
    assert count_params(net, exclude_norm=True) == (4 * 27 + 4) + (4 * 2 + 2)
    net[0].requires_grad_(False)
    assert count_params(net, trainable_only=True) == (4 + 4) + (4 * 2 + 2)


def test_forward_shape_any_resolution():
    model = mobilenet_v2_classifier(num_classes=7, width_mult=0.5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 97, 131)).shape == (2, 7)


@pytest.mark.parametrize(
    "config",
    [
        {},
        dict(num_classes=10, width_mult=0.75, shortcut="none", linear_bottleneck=False, expand_ratio=5,
             memory_efficient_splits=2, dropout=0.1, freeze_bn=True),
    ],
)
def test_build_model_rebuilds_the_architecture(config):
    model = mobilenet_v2_classifier(**config)
    rebuilt = build_model("MobileNetV2Classifier", model.config)
    assert type(rebuilt) is MobileNetV2Classifier
    assert rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    rebuilt.load_state_dict(model.state_dict())
    model.eval(), rebuilt.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


def test_build_model_unknown_class():
    with pytest.raises(ValueError, match="MobileNetV2Classifier") as err:
        build_model("os.system", {})
    assert "os.system" in str(err.value)


def _load_model_stats():
    return load_tool("model_stats")


def test_model_stats_tool(tmp_path, capsys):
    tool = _load_model_stats()
    out = tmp_path / "stats.json"
    rows = tool.main(["--section", "classification", "--widths", "1.0", "--resolution", "224", "160", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "3,504,872" in printed and "300.77" in printed and "aten.convolution" in printed
    assert json.loads(out.read_text()) == rows
    r224, r160 = rows
    assert (r224["params"], r224["tv_params"], r224["madds"]) == (3_504_872, 3_504_872, 300_774_272)
    assert r224["params_slim_convention"] == count_params(mobilenet_v2_classifier(num_classes=1001), exclude_norm=True)
    assert r224["slim_macs_m"] == 300 and r224["calc_macs_m"] == 300.8 and abs(r224["d_calc_macs"]) < 1e-3
    assert r160["slim_macs_m"] == 154 and r160["calc_macs_m"] is None and r160["madds"] == r160["tv_madds"]
