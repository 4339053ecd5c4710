"""The MobileNetV2 image classifier of paper Table 2 (section 6.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

import backbones
from heads import ClassifierHead

from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocessing
from .hub import resolve_weights
from .weights import weights_settings

__all__ = ["MobileNetV2Classifier", "mobilenet_v2_classifier"]


class MobileNetV2Classifier(nn.Module):
    """MobileNetV2 image classifier (paper Table 2): backbone up to ``layer19`` + :class:`heads.ClassifierHead`.

    Takes float images ``(N, 3, H, W)`` in [0, 1] (or uint8) and normalises them inside
    (:class:`~vision_tasks.models.ImagePreprocessing`; ``mean``/``std`` are those of the weights);
    returns logits ``(N, num_classes)``. At width 1.0 with 1000 classes: 3,504,872 parameters and
    300.8M multiply-adds at 224x224. Loads torchvision ``mobilenet_v2`` state dicts
    (``backbones.load_weights``) and then returns the same logits as torchvision's model on the same
    normalised input.

    Args:
        num_classes: number of output logits.
        width_mult, expand_ratio, linear_bottleneck, shortcut, memory_efficient_splits, freeze_bn,
            round_nearest: see :class:`backbones.MobileNetV2`.
        dropout: dropout rate before the linear layer.
        padding: ``"symmetric"`` (PyTorch / torchvision weights) or ``"tf_same"`` (TensorFlow "SAME",
            for TF weights such as the TFLite releases, :mod:`backbones.tflite`).
        mean, std, normalization, grayscale: the input normalisation (see :mod:`vision_tasks.models.preprocessing`).
    """

    # The layers whose outputs are the classes (re-initialised when fine-tuning on other classes).
    CLASS_LAYERS = ("head.fc.",)

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        expand_ratio: float = 6,
        linear_bottleneck: bool = True,
        shortcut: str = "bottleneck",
        memory_efficient_splits: int = 1,
        freeze_bn: bool = False,
        padding: str = "symmetric",
        round_nearest: int = 8,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        normalization: str = "standard",
        grayscale: bool = False,
    ) -> None:
        super().__init__()
        self.preprocess = ImagePreprocessing(mean, std, normalization, grayscale)
        self.config: dict[str, Any] = dict(
            num_classes=num_classes, width_mult=width_mult, dropout=dropout, expand_ratio=expand_ratio,
            linear_bottleneck=linear_bottleneck, shortcut=shortcut,
            memory_efficient_splits=memory_efficient_splits, freeze_bn=freeze_bn, padding=padding,
            round_nearest=round_nearest,
            **self.preprocess.config,
        )
        self.backbone = backbones.create_backbone(
            "mobilenet_v2", width_mult=width_mult, out_features=("layer19",), expand_ratio=expand_ratio,
            linear_bottleneck=linear_bottleneck, shortcut=shortcut,
            memory_efficient_splits=memory_efficient_splits, freeze_bn=freeze_bn, padding=padding,
            round_nearest=round_nearest,
        )
        self.head = ClassifierHead(self.backbone.num_features, num_classes, dropout)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.preprocess(images))["layer19"])


def mobilenet_v2_classifier(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    weights: str | Path | None = None,
    padding: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalization: str | None = None,
    grayscale: bool | None = None,
    **kwargs: Any,
) -> MobileNetV2Classifier:
    """Build a :class:`MobileNetV2Classifier`, optionally loading ``weights``: torchvision or timm
    ``mobilenet_v2`` files, the TFLite releases, this project's checkpoints and safetensors files.

    The weights decide what is not given explicitly (see :func:`vision_tasks.models.describe_weights`):
    the normalisation (ImageNet's mean/std for torchvision and timm files, [-1, 1] for the TensorFlow
    releases), the padding (``"tf_same"`` for TF weights) and the channel rounding; without weights,
    ImageNet's normalisation and symmetric padding.

    Example::

        model = mobilenet_v2_classifier(weights="mobilenet_v2-b0353104.pth").eval()
        logits = model(images)  # images (N, 3, H, W) in [0, 1]; logits (N, 1000)
        tf_model = mobilenet_v2_classifier(weights="mobilenet_v2_1.0_224_quant.tflite")  # [-1, 1], tf_same inside
    """
    settings = weights_settings(weights, padding=padding, mean=mean, std=std, normalization=normalization,
                                grayscale=grayscale, **kwargs)
    model = MobileNetV2Classifier(num_classes=num_classes, width_mult=width_mult, **settings)
    if weights is not None:
        backbones.load_weights(model, resolve_weights(weights))
    return model
