"""Backbones: MobileNetV2 as a feature extractor, with named taps and weight loading.

Depends on torch only, so other projects can ``pip install`` and import it without the training stack::

    import backbones
    net = backbones.create_backbone("mobilenet_v2", width_mult=1.0, out_features=("layer15_expand", "layer19"))
    feats = net(images)              # {"layer15_expand": (N, 576, H/16, W/16), "layer19": (N, 1280, H/32, W/32)}
    net.feature_info                 # [FeatureInfo(name, channels, stride), ...]
    backbones.load_weights(net, "mobilenet_v2-b0353104.pth")
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .mobilenet_v2 import TABLE2, FeatureInfo, InvertedResidual, MobileNetV2, feature_names, make_divisible
from .weights import LoadReport, WeightsError, load_weights, read_state_dict

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TABLE2",
    "FeatureInfo",
    "InvertedResidual",
    "LoadReport",
    "MobileNetV2",
    "WeightsError",
    "create_backbone",
    "feature_names",
    "list_backbones",
    "load_weights",
    "make_divisible",
    "read_state_dict",
    "register_backbone",
]

# The input normalisation of torchvision's and timm's ImageNet weights, in [0, 1] units: a backbone takes
# ``(images - IMAGENET_MEAN) / IMAGENET_STD`` (the task models of vision_tasks.models apply it themselves).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {"mobilenet_v2": MobileNetV2}


def register_backbone(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make ``builder`` available as ``create_backbone(name, ...)``."""
    if name in _REGISTRY:
        raise ValueError(f"backbone {name!r} is already registered")
    _REGISTRY[name] = builder


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`."""
    return sorted(_REGISTRY)


def create_backbone(name: str, *, weights: str | None = None, **kwargs) -> nn.Module:
    """Build a registered backbone; ``weights`` optionally names a file to load (see :func:`load_weights`)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; registered backbones: {list_backbones()}")
    net = _REGISTRY[name](**kwargs)
    if weights is not None:
        load_weights(net, weights)
    return net
