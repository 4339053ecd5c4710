"""What every task model does to its input first: float images in [0, 1] -> what its weights expect.

The task models of :mod:`vision_tasks.models` own their input normalisation, as torchvision's
detection models do (``GeneralizedRCNNTransform``): images go in as float tensors ``(N, 3, H, W)`` in
[0, 1] (or uint8 in [0, 255]), and the mean/std the weights were trained with are part of the model's
configuration, so checkpoints, converted files and exports carry them and nothing outside the model
has to know them. ``backbones.create_backbone`` stays raw (normalised input), as timm's feature
extractors are.

- ``normalization="standard"``: ``(x - mean) / std`` with the weights' ``mean`` / ``std`` (in [0, 1]
  units): ImageNet's for torchvision and timm weights, ``mean = std = 0.5`` (inputs in [-1, 1]) for the
  TensorFlow releases.
- ``normalization="image"`` / ``"image_per_channel"``: every image standardised by its own statistics
  (all pixels, or per channel), as albumentations' ``Normalize(normalization="image")`` does
  (population std plus 1e-4 in 0..255 units, clipped to +-20); for data whose absolute colours carry
  no information, such as the synthetic shapes.
- ``grayscale=True`` first replaces each pixel by its luma (0.299 R + 0.587 G + 0.114 B, OpenCV's and
  albumentations' ``ToGray``) in all three channels.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from backbones import IMAGENET_MEAN, IMAGENET_STD  # torchvision's and timm's ImageNet statistics

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "ImagePreprocessing", "TF_MEAN", "TF_STD",
           "preprocessing_config"]

# TensorFlow's MobileNetV2 / DeepLab / SSD inputs: [0, 255] -> [-1, 1].
TF_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
TF_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

NORMALIZATIONS: tuple[str, ...] = ("standard", "image", "image_per_channel")
_LUMA = (0.299, 0.587, 0.114)
_PER_IMAGE_EPS = 1e-4 / 255.0  # albumentations adds 1e-4 to the std of 0..255 values
_PER_IMAGE_CLIP = 20.0


def preprocessing_config(
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalization: str | None = None,
    grayscale: bool | None = None,
    *,
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The four preprocessing settings, each the given value, else ``defaults``' (e.g. what loaded weights
    say), else ImageNet's standard normalisation in colour. Checked: a bad value raises ``ValueError``."""
    defaults = defaults or {}
    config = {
        "mean": mean if mean is not None else defaults.get("mean", IMAGENET_MEAN),
        "std": std if std is not None else defaults.get("std", IMAGENET_STD),
        "normalization": normalization if normalization is not None else defaults.get("normalization", "standard"),
        "grayscale": grayscale if grayscale is not None else defaults.get("grayscale", False),
    }
    for key in ("mean", "std"):
        values = config[key]
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be three numbers (in [0, 1] units), got {values!r}") from None
        if len(values) != 3:
            raise ValueError(f"{key} must be three numbers (in [0, 1] units), one per RGB channel, got {values}")
        config[key] = values
    if any(s <= 0 for s in config["std"]):
        raise ValueError(f"std must be positive, got {config['std']}")
    if config["normalization"] not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {config['normalization']!r}")
    config["grayscale"] = bool(config["grayscale"])
    return config


class ImagePreprocessing(nn.Module):
    """Images ``(N, 3, H, W)``, float in [0, 1] or uint8, -> normalised float tensors (see the module docstring).

    ``mean`` and ``std`` are non-persistent buffers: they follow ``.to(device)`` but stay out of the
    state dict (weight files keep torchvision's keys); the model's ``config`` records them.

    Example::

        pre = ImagePreprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))   # TF: [0, 1] -> [-1, 1]
        pre(torch.ones(1, 3, 4, 4)).max()                                     # tensor(1.)
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        normalization: str = "standard",
        grayscale: bool = False,
    ) -> None:
        super().__init__()
        config = preprocessing_config(mean, std, normalization, grayscale)
        self.normalization: str = config["normalization"]
        self.grayscale: bool = config["grayscale"]
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)

    @property
    def config(self) -> dict[str, Any]:
        """The four settings as a model's ``config`` records them (plain lists and values)."""
        return {"mean": [round(float(v), 6) for v in self.mean.flatten()],
                "std": [round(float(v), 6) for v in self.std.flatten()],
                "normalization": self.normalization, "grayscale": self.grayscale}

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = images.float().div(255.0)
        elif not images.is_floating_point():
            raise TypeError(f"expected float images in [0, 1] or uint8 images, got {images.dtype}")
        if self.grayscale:
            images = (images * self.luma.to(images.dtype)).sum(dim=1, keepdim=True).expand(-1, 3, -1, -1)
        if self.normalization == "standard":
            return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        dims = (1, 2, 3) if self.normalization == "image" else (2, 3)
        mean = images.mean(dim=dims, keepdim=True)
        std = images.std(dim=dims, keepdim=True, correction=0) + _PER_IMAGE_EPS
        return ((images - mean) / std).clamp(-_PER_IMAGE_CLIP, _PER_IMAGE_CLIP)

    def extra_repr(self) -> str:
        if self.normalization != "standard":
            return f"normalization={self.normalization!r}, grayscale={self.grayscale}"
        mean = [round(v, 4) for v in self.mean.flatten().tolist()]
        std = [round(v, 4) for v in self.std.flatten().tolist()]
        return f"mean={mean}, std={std}, grayscale={self.grayscale}"
