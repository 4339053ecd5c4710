"""The SSDLite head of paper section 6.2: extra feature maps and separable box predictors.

"We replace all the regular convolutions with separable convolutions (depthwise followed by 1x1
projection) in SSD prediction layers." The layout is the TF Object Detection API's
``ssd_mobilenet_v2`` feature extractor with ``use_depthwise`` (PAPER.md section 3.2), which is also
what torchvision's ``ssdlite`` builds (``_extra_block``, ``_prediction_block``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from backbones.mobilenet_v2 import ConvBNAct

__all__ = ["EXTRA_DEPTHS", "SSDLiteHead"]

# TF feature_map_layout layer_depth of the four extra maps (after layer_15/expansion_output and layer_19).
EXTRA_DEPTHS: tuple[int, ...] = (512, 256, 256, 128)


def _extra_block(in_channels: int, mid_channels: int, out_channels: int, bn: dict, padding: str) -> nn.Sequential:
    """1x1 conv to ``mid``, 3x3 depthwise stride 2, 1x1 conv to ``out``; each with BN + ReLU6."""
    return nn.Sequential(
        ConvBNAct(in_channels, mid_channels, kernel_size=1, **bn),
        ConvBNAct(mid_channels, mid_channels, kernel_size=3, stride=2, groups=mid_channels, padding=padding, **bn),
        ConvBNAct(mid_channels, out_channels, kernel_size=1, **bn),
    )


def _prediction_block(in_channels: int, out_channels: int, bn: dict, padding: str) -> nn.Sequential:
    """3x3 depthwise conv with BN + ReLU6, then a 1x1 conv with bias to the predictions."""
    return nn.Sequential(
        ConvBNAct(in_channels, in_channels, kernel_size=3, groups=in_channels, padding=padding, **bn),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
    )


def _flatten_predictions(x: Tensor, columns: int) -> Tensor:
    """``(N, B * columns, H, W)`` -> ``(N, H * W * B, columns)``: locations row-major, then boxes."""
    n, _, h, w = x.shape
    return x.view(n, -1, columns, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, columns)


class SSDLiteHead(nn.Module):
    """Extra feature maps plus separable classification and box-regression predictors.

    The last backbone map is extended by one extra block per ``extra_depths`` entry: a 1x1 conv to
    half the depth, a 3x3 depthwise conv of stride 2 and a 1x1 conv to the depth, all with BN and
    ReLU6 (TF ``multi_resolution_feature_maps`` with ``insert_1x1_conv`` and ``use_depthwise``).
    Depths are ``max(int(d * width_mult), min_depth)``, the intermediate ones included (TF
    ``depth_multiplier`` and ``min_depth``). Every map (the backbone's and the extras) gets a
    classification and a regression predictor: a 3x3 depthwise conv with BN and ReLU6, then a 1x1
    conv with bias to ``num_anchors * num_classes`` or ``num_anchors * 4`` channels (TF
    ``convolutional_box_predictor`` with ``use_depthwise``, kernel 3, no extra layers).

    Args:
        in_channels: channels of the backbone maps the head takes (read from ``feature_info``).
        num_anchors: boxes per location of every map, backbone maps first
            (``len(in_channels) + len(extra_depths)`` entries).
        num_classes: classification outputs per box, background included.
        extra_depths: output depths of the extra blocks (TF: 512, 256, 256, 128).
        width_mult, min_depth: depth multiplier and floor of the extra blocks.
        bn_eps, bn_momentum: BatchNorm settings (torchvision's ssdlite: 1e-3, 0.03).
        padding: of the 3x3 convs, ``"symmetric"`` (default) or ``"tf_same"`` (TensorFlow "SAME", for
            TF-trained heads: the stride-2 extra layers on even sizes pad bottom / right only, e.g.
            4x4 -> 2x2 and 2x2 -> 1x1 at a 200x200 input; see :class:`backbones.mobilenet_v2.ConvBNAct`).

    ``forward(features)`` takes the backbone maps in ``in_channels`` order and returns
    ``(cls_logits (N, A, num_classes), bbox_regression (N, A, 4), feature_sizes)``, where
    ``feature_sizes`` lists the ``(height, width)`` of every map for the anchor generator.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_anchors: Sequence[int],
        num_classes: int,
        extra_depths: Sequence[int] = EXTRA_DEPTHS,
        width_mult: float = 1.0,
        min_depth: int = 16,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.03,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        if not in_channels:
            raise ValueError("in_channels must name at least one backbone map")
        if len(num_anchors) != len(in_channels) + len(extra_depths):
            raise ValueError(f"num_anchors needs one entry per map: {len(in_channels)} backbone + "
                             f"{len(extra_depths)} extra maps, got {len(num_anchors)}: {list(num_anchors)}")
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)

        def depth(d: int) -> int:
            return max(int(d * width_mult), min_depth)

        self.in_channels = list(in_channels)
        self.num_classes = num_classes
        self.extras = nn.ModuleList()
        channels = self.in_channels[-1]
        map_channels = list(self.in_channels)
        for d in extra_depths:
            self.extras.append(_extra_block(channels, depth(d // 2), depth(d), bn, padding))
            channels = depth(d)
            map_channels.append(channels)
        self.classification_head = nn.ModuleList(
            _prediction_block(c, a * num_classes, bn, padding) for c, a in zip(map_channels, num_anchors)
        )
        self.regression_head = nn.ModuleList(
            _prediction_block(c, a * 4, bn, padding) for c, a in zip(map_channels, num_anchors)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision/models/detection/ssdlite.py `_normal_init` (applied to the extras and both
        # predictors): normal(0, 0.03) conv weights, zero biases. TF: truncated normal, stddev 0.03.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, mean=0.0, std=0.03)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} backbone feature maps, got {len(features)}")
        maps = list(features)
        x = maps[-1]
        for block in self.extras:
            x = block(x)
            maps.append(x)
        cls_logits = torch.cat(
            [_flatten_predictions(head(m), self.num_classes) for head, m in zip(self.classification_head, maps)], dim=1
        )
        bbox_regression = torch.cat(
            [_flatten_predictions(head(m), 4) for head, m in zip(self.regression_head, maps)], dim=1
        )
        return cls_logits, bbox_regression, [(m.shape[-2], m.shape[-1]) for m in maps]
