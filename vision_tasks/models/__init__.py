"""Plain task models (backbone + head) that run without Lightning, and the records of their weights.

Each model takes float images ``(N, 3, H, W)`` in [0, 1] (or uint8) and normalises them inside
(:class:`ImagePreprocessing`, with the ``mean``/``std`` of its weights), and keeps its constructor
arguments, normalisation included, in ``model.config``, which checkpoints and converted files carry
so that a model can be rebuilt from them alone (:func:`build_model`, :func:`model_from_weights`).
:class:`MultiTaskMobileNetV2` runs one backbone for any subset of the three heads. The builders
(:func:`mobilenet_v2_classifier`, :func:`ssdlite_mobilenet_v2`, :func:`deeplabv3_mobilenet_v2`,
:func:`multitask_mobilenet_v2`) let the loaded weights decide the normalisation and the padding
(:func:`describe_weights`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

import backbones

from .batchnorm import folded_batch_norms, unfold_batch_norms
from .classifier import MobileNetV2Classifier, mobilenet_v2_classifier
from .deeplab import MF_SCALES, DeepLabV3MobileNetV2, deeplabv3_mobilenet_v2, multi_scale_logits, scale_dimension
from .multitask import HEADS, MultiTaskMobileNetV2, multitask_mobilenet_v2
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocessing, preprocessing_config
from .ssdlite import SSDLiteMobileNetV2, scale_boxes, ssdlite_mobilenet_v2
from .hub import is_weight_name, list_weights, resolve_weights
from .weights import WeightsInfo, describe_weights, imagenet_categories, read_record, record_path, weights_settings

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MF_SCALES",
    "MODELS",
    "DeepLabV3MobileNetV2",
    "HEADS",
    "ImagePreprocessing",
    "MobileNetV2Classifier",
    "MultiTaskMobileNetV2",
    "SSDLiteMobileNetV2",
    "WeightsInfo",
    "build_model",
    "deeplabv3_mobilenet_v2",
    "describe_weights",
    "folded_batch_norms",
    "imagenet_categories",
    "is_weight_name",
    "list_weights",
    "mobilenet_v2_classifier",
    "model_from_weights",
    "multi_scale_logits",
    "multitask_mobilenet_v2",
    "preprocessing_config",
    "read_record",
    "record_path",
    "resolve_weights",
    "scale_boxes",
    "scale_dimension",
    "ssdlite_mobilenet_v2",
    "unfold_batch_norms",
    "weights_settings",
]

# Classes that checkpoints and weight records may name; rebuilding never imports an arbitrary path read from a file.
MODELS: dict[str, type[nn.Module]] = {
    "MobileNetV2Classifier": MobileNetV2Classifier,
    "SSDLiteMobileNetV2": SSDLiteMobileNetV2,
    "DeepLabV3MobileNetV2": DeepLabV3MobileNetV2,
    "MultiTaskMobileNetV2": MultiTaskMobileNetV2,
}


def build_model(class_name: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from the ``class_name`` and ``config`` a checkpoint or weight record carries."""
    if class_name not in MODELS:
        raise ValueError(f"unknown model class {class_name!r}; known: {sorted(MODELS)}")
    return MODELS[class_name](**config)


def model_from_weights(weights: str | Path, info: WeightsInfo | None = None) -> tuple[nn.Module, WeightsInfo]:
    """The whole task model a weight file describes (a checkpoint, a converted file, a TFLite release),
    rebuilt from its record and with the weights loaded; returns it with the record.

    Raises:
        backbones.WeightsError: the file does not say which model it holds (a plain state dict, a
            torchvision or timm ImageNet file): build the model with a builder and ``weights=`` instead.
    """
    info = info or describe_weights(weights)
    if info.model_class is None or info.model_config is None:
        raise backbones.WeightsError(
            f"{weights} ({info.kind} weights) does not say which model it holds; build the model with "
            "mobilenet_v2_classifier / ssdlite_mobilenet_v2 / deeplabv3_mobilenet_v2 and pass weights= to it"
        )
    model = build_model(info.model_class, info.model_config)
    backbones.load_weights(model, info.source)
    return model, info
