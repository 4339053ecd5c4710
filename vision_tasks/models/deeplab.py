"""Mobile DeepLabv3 (paper section 6.3, Table 7) and its evaluation: padding, multi-scale + flip, cropping back."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import backbones
from heads import DeepLabV3Head, FCNAuxHead, aspp_rates, upsample_logits

from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocessing
from .hub import resolve_weights
from .weights import weights_settings

__all__ = ["MF_SCALES", "DeepLabParts", "DeepLabV3MobileNetV2", "deeplabv3_mobilenet_v2", "multi_scale_logits", "scale_dimension"]

# The paper's "MF" evaluation (Table 7): inputs at these scales, each also left-right flipped.
MF_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


class DeepLabParts(nn.Module):
    """What DeepLabv3 adds to a backbone: :class:`heads.DeepLabV3Head` (``head``), the optional auxiliary
    :class:`heads.FCNAuxHead` (``aux_head``), and logits resized to the input.

    The base of :class:`DeepLabV3MobileNetV2` and of the segmentation branch of
    :class:`~vision_tasks.models.MultiTaskMobileNetV2`: :meth:`_build_deeplab` builds the heads in a subclass's
    ``__init__``, :meth:`predict` turns backbone maps into logits at the input size.
    """

    # The layers whose outputs are the classes (re-initialised when fine-tuning on other classes).
    CLASS_LAYERS = ("head.classifier.", "aux_head.4.")

    def _build_deeplab(
        self, in_channels: int, aux_channels: int | None, *, num_classes: int, output_stride: int, aspp: bool,
        separable_aspp: bool, head_channels: int, dropout: float, bn_eps: float, bn_momentum: float,
    ) -> None:
        """Build the head for a tap of ``in_channels`` and, with ``aux_channels``, the auxiliary head (the other
        arguments: see :class:`DeepLabV3MobileNetV2`; ``output_stride`` sets the ASPP rates)."""
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.head = DeepLabV3Head(
            in_channels, num_classes, channels=head_channels,
            atrous_rates=aspp_rates(output_stride) if aspp else None, separable=separable_aspp, dropout=dropout, **bn,
        )
        self.aux_head = None if aux_channels is None else FCNAuxHead(aux_channels, num_classes, **bn)

    def predict(self, x: Tensor, size: Sequence[int], aux_x: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``(logits, aux_logits)`` at ``size`` (H, W) from the head's tap ``x`` and the auxiliary head's tap
        ``aux_x``; ``aux_logits`` is ``None`` without an auxiliary head (or without ``aux_x``)."""
        logits = upsample_logits(self.head(x), size)
        if self.aux_head is None or aux_x is None:
            return logits, None
        return logits, upsample_logits(self.aux_head(aux_x), size)


class DeepLabV3MobileNetV2(DeepLabParts):
    """Mobile DeepLabv3 (paper section 6.3, Table 7): MobileNetV2 with dilation + :class:`heads.DeepLabV3Head`.

    The backbone runs at ``output_stride`` 16 or 8 (later strides become dilation, TF-Slim/DeepLab
    convention) and is tapped at ``feature`` (``layer18``, the 320-channel "second last feature
    map" of the paper's "MNet V2*"; ``layer19`` is the 1280-channel alternative). The head's logits
    are resized to the input size bilinearly with corners aligned (TF DeepLab); take the argmax after
    that. With 21 classes at width 1.0 and 513x513 input: 2.11M parameters and 2.74B multiply-adds
    without ASPP at output stride 16 (Table 7: 2.11M, 2.75B), 4.52M with ASPP (Table 7: 4.52M).

    ``model(images)`` takes float images ``(N, 3, H, W)`` in [0, 1] (or uint8), normalises them inside
    (``mean``/``std`` of the weights) and returns logits ``(N, num_classes, H, W)`` at the input size.
    :meth:`forward_with_aux` also returns the auxiliary head's logits (``aux_feature``), used for an
    auxiliary training loss. :meth:`segment` evaluates whole images of different sizes the way TF
    DeepLab does: normalised, padded with the mean pixel to a common size, optionally at several
    scales and flipped, and cropped back to each image.

    Args:
        num_classes: classes including the background (21 for Pascal VOC).
        output_stride: 8, 16 or 32 (the backbone's; see :class:`backbones.MobileNetV2`).
        aspp: add the three 3x3 atrous branches, rates from :func:`heads.aspp_rates` (6/12/18 at 16,
            12/24/36 at 8).
        separable_aspp: depthwise-separable ASPP branches (TF's default) instead of regular convs.
        width_mult: backbone width multiplier.
        feature: the backbone tap the head reads.
        head_channels: width of the head (TF ``depth = 256``).
        dropout: before the logits (TF keep probability 0.9).
        aux_feature: a backbone tap for an auxiliary FCN head (e.g. ``"layer7"``, 32 channels at
            stride 8), or ``None``.
        freeze_bn, bn_eps, bn_momentum: BatchNorm settings of backbone and head.
        padding: of the backbone, ``"symmetric"`` or ``"tf_same"`` (TF weights; see
            :class:`backbones.MobileNetV2`). The head's convs are 1x1 or stride 1, where both agree.
        round_nearest: the backbone's channel rounding (8; TF DeepLab's width-0.5 release uses 1).
        mean, std, normalization, grayscale: the input normalisation (:mod:`vision_tasks.models.preprocessing`).

    Example::

        model = deeplabv3_mobilenet_v2(num_classes=21, output_stride=16, aspp=False)
        logits = model(torch.rand(1, 3, 513, 513))   # (1, 21, 513, 513)
        labels = logits.argmax(1)
    """

    def __init__(
        self,
        num_classes: int = 21,
        output_stride: int = 16,
        aspp: bool = False,
        separable_aspp: bool = False,
        width_mult: float = 1.0,
        feature: str = "layer18",
        head_channels: int = 256,
        dropout: float = 0.1,
        aux_feature: str | None = None,
        freeze_bn: bool = False,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        padding: str = "symmetric",
        round_nearest: int = 8,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        normalization: str = "standard",
        grayscale: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.preprocess = ImagePreprocessing(mean, std, normalization, grayscale)
        self.config: dict[str, Any] = dict(
            num_classes=num_classes, output_stride=output_stride, aspp=aspp, separable_aspp=separable_aspp,
            width_mult=width_mult, feature=feature, head_channels=head_channels, dropout=dropout,
            aux_feature=aux_feature, freeze_bn=freeze_bn, bn_eps=bn_eps, bn_momentum=bn_momentum, padding=padding,
            round_nearest=round_nearest,
            **self.preprocess.config,
        )
        self.num_classes = num_classes
        self.feature = feature
        self.aux_feature = aux_feature
        taps = (feature,) if aux_feature is None else (aux_feature, feature)
        self.backbone = backbones.create_backbone(
            "mobilenet_v2", width_mult=width_mult, output_stride=output_stride, out_features=taps,
            freeze_bn=freeze_bn, bn_eps=bn_eps, bn_momentum=bn_momentum, padding=padding,
            round_nearest=round_nearest,
        )
        channels = {info.name: info.channels for info in self.backbone.feature_info}
        self._build_deeplab(
            channels[feature], None if aux_feature is None else channels[aux_feature], num_classes=num_classes,
            output_stride=output_stride, aspp=aspp, separable_aspp=separable_aspp, head_channels=head_channels,
            dropout=dropout, bn_eps=bn_eps, bn_momentum=bn_momentum,
        )

    def logits(self, x: Tensor) -> Tensor:
        """Logits at the size of ``x``, an already normalised batch (what :meth:`forward` runs after
        :attr:`preprocess`)."""
        return self.predict(self.backbone(x)[self.feature], x.shape[-2:])[0]

    def forward_with_aux(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(logits, aux_logits)``, both ``(N, num_classes, H, W)`` at the input size; ``aux_logits`` is
        ``None`` without an auxiliary head."""
        features = self.backbone(self.preprocess(images))
        return self.predict(features[self.feature], images.shape[-2:],
                            None if self.aux_feature is None else features[self.aux_feature])

    def forward(self, images: Tensor) -> Tensor:
        return self.logits(self.preprocess(images))

    def segment(
        self,
        images: Sequence[Tensor] | Tensor,
        *,
        pad_to: int | None = None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        average: str = "logits",
    ) -> list[Tensor]:
        """Logits ``(num_classes, H_i, W_i)`` for each image ``(3, H_i, W_i)`` (in [0, 1]), at its own size.

        The evaluation of TF DeepLab, in one place: every image is normalised on its own, the batch
        is padded bottom/right with 0 (after normalisation: the mean pixel) to the largest height and
        width of the batch, or to ``pad_to`` if larger (TF evaluates Pascal VOC padded to 513x513);
        with several ``scales`` and/or ``flip`` the padded batch is run at every scale and flipped
        (:func:`multi_scale_logits`, the paper's MF with :data:`MF_SCALES` and ``flip=True``); and
        each image's logits are cropped back from the padded ones.
        """
        normalised = [self.preprocess(image.unsqueeze(0) if image.dim() == 3 else image) for image in images]
        sizes = [tuple(x.shape[-2:]) for x in normalised]
        height = max([h for h, _ in sizes] + [pad_to or 0])
        width = max([w for _, w in sizes] + [pad_to or 0])
        batch = torch.cat([F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2])) for x in normalised])
        logits = multi_scale_logits(self.logits, batch, scales, flip, average)
        return [logits[i, :, :h, :w] for i, (h, w) in enumerate(sizes)]


def deeplabv3_mobilenet_v2(
    *,
    num_classes: int = 21,
    output_stride: int = 16,
    aspp: bool = False,
    width_mult: float = 1.0,
    weights: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    padding: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalization: str | None = None,
    grayscale: bool | None = None,
    **kwargs: Any,
) -> DeepLabV3MobileNetV2:
    """Build a :class:`DeepLabV3MobileNetV2`, optionally loading weights.

    Args:
        weights: a whole-model file (this project's checkpoint, state dict or safetensors file, or
            a TF DeepLab ``.tflite`` release).
        backbone_weights: an ImageNet classifier or backbone file (torchvision ``mobilenet_v2``,
            timm, a TFLite release, this project's classifier) for the backbone; layers past the tap are skipped.
        padding, mean, std, normalization, grayscale: ``None`` = what the weights say (TF weights: "SAME"
            padding, [-1, 1] inputs and the file's channel rounding), else ImageNet's normalisation and
            symmetric padding.
        kwargs: the other :class:`DeepLabV3MobileNetV2` arguments.

    Example::

        model = deeplabv3_mobilenet_v2(num_classes=21, backbone_weights="mobilenet_v2-b0353104.pth")
    """
    if weights is not None and backbone_weights is not None:
        raise ValueError("pass either weights (the whole model) or backbone_weights (ImageNet backbone), not both")
    settings = weights_settings(weights if weights is not None else backbone_weights, padding=padding, mean=mean,
                                std=std, normalization=normalization, grayscale=grayscale, **kwargs)
    model = DeepLabV3MobileNetV2(
        num_classes=num_classes, output_stride=output_stride, aspp=aspp, width_mult=width_mult, **settings,
    )
    if backbone_weights is not None:
        backbones.load_weights(model.backbone, resolve_weights(backbone_weights))
    if weights is not None:
        backbones.load_weights(model, resolve_weights(weights))
    return model


def scale_dimension(dim: int, scale: float) -> int:
    """A side ``dim`` resized by ``scale`` as TF DeepLab does: ``int((dim - 1) * scale + 1)``.

    With ``align_corners=True`` this maps the first and last pixels onto each other exactly and
    keeps DeepLab's ``8k + 1`` sizes (513 at 0.5 -> 257, at 1.75 -> 897).
    """
    return max(1, int((dim - 1) * scale + 1))


def multi_scale_logits(
    logits_fn: Callable[[Tensor], Tensor],
    images: Tensor,
    scales: Sequence[float] = MF_SCALES,
    flip: bool = True,
    average: str = "logits",
) -> Tensor:
    """Multi-scale (and flipped) inference, as DeepLab's ``predict_labels_multi_scale``.

    For every scale ``s`` the batch is resized bilinearly (``align_corners=True``) to
    :func:`scale_dimension` of its height and width (scale 1.0: not resized), run through
    ``logits_fn``, and the logits are resized back to the input size (bilinear, ``align_corners=True``);
    with ``flip`` the horizontally flipped input is run as well and its logits flipped back.

    Args:
        logits_fn: returns logits ``(N, C, h, w)`` for a batch ``(N, 3, h, w)`` (a model, or
            :meth:`DeepLabV3MobileNetV2.logits` on normalised tensors).
        images: the batch ``(N, 3, H, W)``.
        scales: the input scales; the paper's MF is :data:`MF_SCALES` with ``flip=True``.
        flip: also run the left-right flipped images.
        average: ``"logits"`` returns the mean of all the logits; ``"probs"`` averages softmax
            probabilities as TF DeepLab does and returns their logarithm (log-probabilities are
            logits of the same distribution: same argmax, and cross-entropy on them is the
            negative log-likelihood of the averaged probabilities).

    Returns:
        ``(N, C, H, W)``, at the input size.
    """
    if average not in ("logits", "probs"):
        raise ValueError(f"average must be 'logits' or 'probs', got {average!r}")
    if not scales:
        raise ValueError("multi_scale_logits needs at least one scale")
    height, width = images.shape[-2:]
    outputs = []
    for scale in scales:
        size = (scale_dimension(height, scale), scale_dimension(width, scale))
        scaled = images if size == (height, width) else upsample_logits(images, size)
        for flipped in (False, True) if flip else (False,):
            logits = logits_fn(scaled.flip(-1) if flipped else scaled)
            if flipped:
                logits = logits.flip(-1)
            logits = upsample_logits(logits, (height, width))
            outputs.append(logits if average == "logits" else logits.log_softmax(dim=1))
    if len(outputs) == 1:
        return outputs[0]
    stacked = torch.stack(outputs)
    if average == "logits":
        return stacked.mean(dim=0)
    return torch.logsumexp(stacked, dim=0) - math.log(len(outputs))  # log of the mean probability, stably
