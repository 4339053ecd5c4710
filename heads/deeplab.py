"""The DeepLabv3 head of paper section 6.3 (Table 7), in the layout of the TF DeepLab reference.

The paper's mobile rows put the head on MobileNetV2's "second last feature map" (``layer18``, 320
channels at width 1.0; "MNet V2*") and compare three branch types: (a) ASPP, three 3x3 atrous
convolutions, (b) a 1x1 convolution and (c) image-level features. The released TF models
(``model_variant=mobilenet_v2``) use (b) and (c) only: the bold "no ASPP" row of Table 7.
PAPER.md section 10 reads that graph operator by operator; this module builds the same thing:

- ``image_pooling``: global average pool -> 1x1 conv to 256 + BN + ReLU -> bilinear resize back to
  the feature size (a broadcast of the 1x1 map);
- ``aspp0``: 1x1 conv to 256 + BN + ReLU;
- with ``atrous_rates``: one 3x3 atrous conv + BN + ReLU per rate (``aspp1``, ``aspp2`` ...);
  regular convolutions by default, since Table 7's 4.52M parameters imply them (PAPER.md section 9),
  or TF's depthwise-separable ones with ``separable=True``;
- concatenation in that order (image pooling first), ``projection`` 1x1 conv to 256 + BN + ReLU,
  dropout (TF keep probability 0.9), ``classifier`` 1x1 conv with bias to the class logits.

The activations are ReLU, not ReLU6 (TF DeepLab's ``tf.nn.relu`` in its own layers).
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.mobilenet_v2 import ConvBNAct

__all__ = ["ASPP_BASE_RATES", "DeepLabV3Head", "FCNAuxHead", "aspp_rates", "upsample_logits"]

# DeepLabv3's atrous rates at output stride 16; they scale inversely with the output stride
# (12/24/36 at 8, the DeepLab model zoo's convention; PAPER.md section 4.1).
ASPP_BASE_RATES: tuple[int, int, int] = (6, 12, 18)


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    """The ASPP atrous rates for ``output_stride``: (6, 12, 18) at 16, (12, 24, 36) at 8, (3, 6, 9) at 32."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    return tuple(rate * 16 // output_stride for rate in ASPP_BASE_RATES)


class DeepLabV3Head(nn.Module):
    """Image pooling + 1x1 branch (+ optional ASPP), projection, dropout, logits (see the module docstring).

    Returns logits at the resolution of its input feature map; the model upsamples them. In
    training mode the image-pooling BatchNorm sees one value per channel and image, so batches need
    at least two images (as with torchvision's ``ASPPPooling``).

    Args:
        in_channels: channels of the backbone tap (320 for ``layer18`` at width 1.0).
        num_classes: output logits (21 for Pascal VOC, background included).
        channels: width of every branch and of the projection (TF ``depth = 256``).
        atrous_rates: rates of the 3x3 ASPP branches; ``None`` or empty for none (the released
            MobileNetV2 models). Use :func:`aspp_rates` to derive them from the output stride.
        separable: ASPP branches as depthwise 3x3 atrous + BN + ReLU, then 1x1 + BN + ReLU (TF's
            ``aspp_with_separable_conv``) instead of regular 3x3 convolutions.
        dropout: dropout rate before the logits (TF keep probability 0.9 = rate 0.1).
        bn_eps, bn_momentum: BatchNorm settings (TF DeepLab: eps 1e-5, decay 0.9997 = momentum 3e-4).

    Example::

        head = DeepLabV3Head(320, num_classes=21)
        logits = head(torch.randn(1, 320, 33, 33))   # (1, 21, 33, 33)
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: int = 256,
        atrous_rates: Sequence[int] | None = None,
        separable: bool = False,
        dropout: float = 0.1,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        rates = tuple(int(r) for r in (atrous_rates or ()))
        if any(r < 1 for r in rates):
            raise ValueError(f"atrous_rates must be positive integers, got {tuple(atrous_rates or ())}")
        self.atrous_rates = rates
        conv_bn_relu = functools.partial(ConvBNAct, activation=nn.ReLU, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.image_pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(in_channels, channels, 1))
        self.aspp0 = conv_bn_relu(in_channels, channels, 1)
        self.aspp = nn.ModuleList(
            nn.Sequential(
                conv_bn_relu(in_channels, in_channels, 3, dilation=rate, groups=in_channels),
                conv_bn_relu(in_channels, channels, 1),
            )
            if separable
            else conv_bn_relu(in_channels, channels, 3, dilation=rate)
            for rate in rates
        )
        self.projection = conv_bn_relu(channels * (2 + len(rates)), channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.image_pooling(x)
        # TF resizes the 1x1 map bilinearly (corners aligned): every position gets the pooled vector. As a resize
        # (torchvision's ASPPPooling does the same), not an expand or repeat: litert-torch 0.10 converts those with
        # shapes that miss its NCHW -> NHWC layout change, and the LiteRT file fails to load or to convert.
        size = tuple(int(s) for s in x.shape[-2:])
        branches = [F.interpolate(pooled, size=size, mode="bilinear", align_corners=True), self.aspp0(x), *(branch(x) for branch in self.aspp)]
        return self.classifier(self.dropout(self.projection(torch.cat(branches, dim=1))))


class FCNAuxHead(nn.Sequential):
    """Auxiliary classifier on an intermediate tap: 3x3 conv to ``in/4`` + BN + ReLU, dropout, 1x1 logits.

    torchvision's ``FCNHead`` (the auxiliary loss of its DeepLabv3 / FCN models); not part of the
    paper's models, and only used for the training loss.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        inner = max(in_channels // 4, 8)
        super().__init__(
            *ConvBNAct(in_channels, inner, 3, activation=nn.ReLU, bn_eps=bn_eps, bn_momentum=bn_momentum),
            nn.Dropout(dropout),
            nn.Conv2d(inner, num_classes, kernel_size=1),
        )


def upsample_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of logits to ``size`` (H, W) with corners aligned, as TF DeepLab (PAPER.md section 10)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(int(s) for s in size), mode="bilinear", align_corners=True)

