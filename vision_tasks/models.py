"""Plain task models (backbone + head) that run without Lightning.

Each model takes float images ``(N, 3, H, W)`` normalised the way its weights were trained and
keeps its constructor arguments in ``model.config``, which checkpoints carry so a model can be
rebuilt from a checkpoint alone (see :func:`build_model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

import backbones
from heads import ClassifierHead

__all__ = ["MobileNetV2Classifier", "mobilenet_v2_classifier", "build_model", "MODELS"]


class MobileNetV2Classifier(nn.Module):
    """MobileNetV2 image classifier (paper Table 2): backbone up to ``layer19`` + :class:`ClassifierHead`.

    At width 1.0 with 1000 classes: 3,504,872 parameters and 300.8M multiply-adds at 224x224.
    Loads torchvision ``mobilenet_v2`` state dicts (``backbones.load_weights``) and then returns the
    same logits as torchvision's model.

    Args:
        num_classes: number of output logits.
        width_mult, expand_ratio, linear_bottleneck, shortcut, memory_efficient_splits, freeze_bn:
            see :class:`backbones.MobileNetV2`.
        dropout: dropout rate before the linear layer.
    """

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
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(
            num_classes=num_classes, width_mult=width_mult, dropout=dropout, expand_ratio=expand_ratio,
            linear_bottleneck=linear_bottleneck, shortcut=shortcut,
            memory_efficient_splits=memory_efficient_splits, freeze_bn=freeze_bn,
        )
        self.backbone = backbones.create_backbone(
            "mobilenet_v2", width_mult=width_mult, out_features=("layer19",), expand_ratio=expand_ratio,
            linear_bottleneck=linear_bottleneck, shortcut=shortcut,
            memory_efficient_splits=memory_efficient_splits, freeze_bn=freeze_bn,
        )
        self.head = ClassifierHead(self.backbone.num_features, num_classes, dropout)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images)["layer19"])


def mobilenet_v2_classifier(
    *, num_classes: int = 1000, width_mult: float = 1.0, weights: str | Path | None = None, **kwargs: Any
) -> MobileNetV2Classifier:
    """Build a :class:`MobileNetV2Classifier`, optionally loading ``weights`` (torchvision or own file).

    Example::

        model = mobilenet_v2_classifier(weights="mobilenet_v2-b0353104.pth").eval()
        logits = model(images)  # (N, 1000)
    """
    model = MobileNetV2Classifier(num_classes=num_classes, width_mult=width_mult, **kwargs)
    if weights is not None:
        backbones.load_weights(model, weights)
    return model


# Classes that checkpoints may name; rebuilding never imports an arbitrary path read from a file.
MODELS: dict[str, type[nn.Module]] = {"MobileNetV2Classifier": MobileNetV2Classifier}


def build_model(class_name: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from the ``class_name`` and ``config`` a checkpoint carries."""
    if class_name not in MODELS:
        raise ValueError(f"unknown model class {class_name!r}; known: {sorted(MODELS)}")
    return MODELS[class_name](**config)
