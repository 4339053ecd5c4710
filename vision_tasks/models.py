"""Plain task models (backbone + head) that run without Lightning.

Each model takes float images ``(N, 3, H, W)`` normalised the way its weights were trained and
keeps its constructor arguments in ``model.config``, which checkpoints carry so a model can be
rebuilt from a checkpoint alone (see :func:`build_model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

import backbones
from heads import (
    EXTRA_DEPTHS,
    BoxCoder,
    ClassifierHead,
    DeepLabV3Head,
    DefaultBoxGenerator,
    FCNAuxHead,
    SSDLiteHead,
    SSDLoss,
    aspp_rates,
    postprocess_detections,
    upsample_logits,
)

__all__ = [
    "DeepLabV3MobileNetV2",
    "MobileNetV2Classifier",
    "SSDLiteMobileNetV2",
    "mobilenet_v2_classifier",
    "ssdlite_mobilenet_v2",
    "build_model",
    "deeplabv3_mobilenet_v2",
    "MODELS",
]


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
        padding: ``"symmetric"`` (PyTorch / torchvision weights) or ``"tf_same"`` (TensorFlow "SAME",
            for TF weights such as the TFLite releases, :mod:`backbones.tflite`); see
            :class:`backbones.MobileNetV2`.
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
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(
            num_classes=num_classes, width_mult=width_mult, dropout=dropout, expand_ratio=expand_ratio,
            linear_bottleneck=linear_bottleneck, shortcut=shortcut,
            memory_efficient_splits=memory_efficient_splits, freeze_bn=freeze_bn, padding=padding,
        )
        self.backbone = backbones.create_backbone(
            "mobilenet_v2", width_mult=width_mult, out_features=("layer19",), expand_ratio=expand_ratio,
            linear_bottleneck=linear_bottleneck, shortcut=shortcut,
            memory_efficient_splits=memory_efficient_splits, freeze_bn=freeze_bn, padding=padding,
        )
        self.head = ClassifierHead(self.backbone.num_features, num_classes, dropout)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images)["layer19"])


def mobilenet_v2_classifier(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    padding: str | None = None,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> MobileNetV2Classifier:
    """Build a :class:`MobileNetV2Classifier`, optionally loading ``weights``: torchvision or timm
    ``mobilenet_v2`` files, the TFLite releases, this project's checkpoints and safetensors files.

    ``padding`` defaults to ``"tf_same"`` for a ``.tflite`` file (the TF convention its weights were
    trained with) and to ``"symmetric"`` otherwise.

    Example::

        model = mobilenet_v2_classifier(weights="mobilenet_v2-b0353104.pth").eval()
        logits = model(images)  # (N, 1000)
        tf_model = mobilenet_v2_classifier(weights="mobilenet_v2_1.0_224_quant.tflite")  # inputs in [-1, 1]
    """
    padding = _default_padding(padding, weights)
    model = MobileNetV2Classifier(num_classes=num_classes, width_mult=width_mult, padding=padding, **kwargs)
    if weights is not None:
        backbones.load_weights(model, weights)
    return model


class SSDLiteMobileNetV2(nn.Module):
    """SSDLite object detector on MobileNetV2 (paper section 6.2, Table 6), anchors to NMS included.

    The backbone is tapped at ``layer15_expand`` (576 channels at width 1.0, stride 16) and
    ``layer19`` (1280, stride 32) and extended by :class:`heads.SSDLiteHead`'s four extra maps.
    With the TF anchor layout, 80 classes and a 320x320 input it has 4,337,013 parameters and 0.79B
    multiply-adds (Table 6: 4.3M, 0.8B; PAPER.md section 9).

    ``model(images)`` takes float images ``(N, 3, H, W)`` of any size (anchors follow the input
    size, cached per size, device and dtype). In training mode it returns the head outputs
    (:meth:`forward_head`) for :meth:`loss`; in eval mode a list with one dict per image: ``boxes``
    ``(D, 4)`` ``xyxy`` in input pixels, ``scores`` ``(D,)``, ``labels`` ``(D,)`` int64 in
    ``0..num_classes-1``.

    Args:
        num_classes: foreground classes; the head predicts ``num_classes + 1`` logits, index 0
            being the background.
        image_size: the default (training / export) input side; the model runs at any size.
        width_mult: of the backbone and the extra maps (TF ``depth_multiplier``).
        anchor_layout, min_scale, max_scale, aspect_ratios: see :class:`heads.DefaultBoxGenerator`.
        classification_loss: ``"softmax"`` (torchvision) or ``"sigmoid"`` (the TF config); also
            the score conversion at inference.
        neg_pos_ratio, iou_threshold: see :class:`heads.SSDLoss`.
        score_thresh, nms_thresh, topk_candidates, detections_per_img: see
            :func:`heads.postprocess_detections`.
        freeze_bn: freeze the backbone's BatchNorms (see :class:`backbones.MobileNetV2`).
        bn_eps, bn_momentum: BatchNorm settings of backbone and head (torchvision's ssdlite values).

    Example::

        model = ssdlite_mobilenet_v2(num_classes=80, backbone_weights="mobilenet_v2-b0353104.pth")
        head_out = model(images)                      # training mode
        losses = model.loss(head_out, targets)        # {"classification", "localization"}
        detections = model.eval()(images)             # [{"boxes", "scores", "labels"}, ...]
    """

    FEATURES = ("layer15_expand", "layer19")

    def __init__(
        self,
        num_classes: int = 80,
        image_size: int = 320,
        width_mult: float = 1.0,
        anchor_layout: str = "tf",
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5, 3.0, 1 / 3),
        classification_loss: str = "softmax",
        neg_pos_ratio: float = 3,
        iou_threshold: float = 0.5,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.6,
        topk_candidates: int = 300,
        detections_per_img: int = 100,
        freeze_bn: bool = False,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.03,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes (foreground classes) must be >= 1, got {num_classes}")
        self.config: dict[str, Any] = dict(
            num_classes=num_classes, image_size=image_size, width_mult=width_mult, anchor_layout=anchor_layout,
            min_scale=min_scale, max_scale=max_scale, aspect_ratios=[float(a) for a in aspect_ratios],
            classification_loss=classification_loss, neg_pos_ratio=neg_pos_ratio, iou_threshold=iou_threshold,
            score_thresh=score_thresh, nms_thresh=nms_thresh, topk_candidates=topk_candidates,
            detections_per_img=detections_per_img, freeze_bn=freeze_bn, bn_eps=bn_eps, bn_momentum=bn_momentum,
        )
        self.num_classes = num_classes
        self.image_size = image_size
        self.backbone = backbones.create_backbone(
            "mobilenet_v2", width_mult=width_mult, out_features=self.FEATURES, bn_eps=bn_eps,
            bn_momentum=bn_momentum, freeze_bn=freeze_bn,
        )
        self.anchor_generator = DefaultBoxGenerator(
            aspect_ratios, min_scale, max_scale, num_maps=len(self.backbone.feature_info) + len(EXTRA_DEPTHS),
            layout=anchor_layout,
        )
        self.head = SSDLiteHead(
            [info.channels for info in self.backbone.feature_info], self.anchor_generator.num_anchors_per_location(),
            num_classes + 1, EXTRA_DEPTHS, width_mult=width_mult, bn_eps=bn_eps, bn_momentum=bn_momentum,
        )
        self.box_coder = BoxCoder()
        self.criterion = SSDLoss(self.box_coder, neg_pos_ratio, iou_threshold=iou_threshold,
                                 classification=classification_loss)
        self.postprocess_settings = dict(
            score_thresh=score_thresh, nms_thresh=nms_thresh, topk_candidates=topk_candidates,
            detections_per_img=detections_per_img, classification=classification_loss,
        )
        self._anchor_cache: dict[tuple, torch.Tensor] = {}

    def anchors(self, feature_sizes: Sequence[tuple[int, int]], image_size: Sequence[int],
                device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Default boxes ``(A, 4)`` for an input of ``image_size`` (cached; they depend on the size only)."""
        key = (int(image_size[0]), int(image_size[1]), device, dtype)
        if key not in self._anchor_cache:
            self._anchor_cache[key] = self.anchor_generator(feature_sizes, key[:2], device, dtype)
        return self._anchor_cache[key]

    def forward_head(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Network outputs: ``cls_logits`` (N, A, num_classes + 1), ``bbox_regression`` (N, A, 4) and
        ``anchors`` (A, 4)."""
        features = self.backbone(images)
        cls_logits, bbox_regression, feature_sizes = self.head([features[name] for name in self.FEATURES])
        anchors = self.anchors(feature_sizes, images.shape[-2:], images.device, images.dtype)
        return {"cls_logits": cls_logits, "bbox_regression": bbox_regression, "anchors": anchors}

    def loss(
        self, head_out: dict[str, torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """``{"classification", "localization"}`` (see :class:`heads.SSDLoss`); labels in ``0..num_classes-1``."""
        return self.criterion(head_out["cls_logits"], head_out["bbox_regression"], head_out["anchors"], targets)

    def postprocess(
        self, head_out: dict[str, torch.Tensor], image_size: Sequence[int]
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image (see :func:`heads.postprocess_detections`) for inputs of ``image_size`` (H, W)."""
        return postprocess_detections(
            head_out["cls_logits"], head_out["bbox_regression"], head_out["anchors"], tuple(image_size),
            box_coder=self.box_coder, **self.postprocess_settings,
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        head_out = self.forward_head(images)
        if self.training:
            return head_out
        return self.postprocess(head_out, images.shape[-2:])


def ssdlite_mobilenet_v2(
    *,
    num_classes: int = 80,
    image_size: int = 320,
    width_mult: float = 1.0,
    weights: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    **kwargs: Any,
) -> SSDLiteMobileNetV2:
    """Build an :class:`SSDLiteMobileNetV2`, optionally loading weights.

    Args:
        weights: a whole-model file (this project's checkpoint or state dict).
        backbone_weights: an ImageNet classifier or backbone file (torchvision ``mobilenet_v2``,
            timm, or this project's classifier) for the backbone; its classifier is ignored.
        kwargs: the other :class:`SSDLiteMobileNetV2` arguments.

    Example::

        model = ssdlite_mobilenet_v2(num_classes=80, backbone_weights="mobilenet_v2-b0353104.pth")
    """
    if weights is not None and backbone_weights is not None:
        raise ValueError("pass either weights (the whole model) or backbone_weights (ImageNet backbone), not both")
    model = SSDLiteMobileNetV2(num_classes=num_classes, image_size=image_size, width_mult=width_mult, **kwargs)
    if backbone_weights is not None:
        backbones.load_weights(model.backbone, backbone_weights)
    if weights is not None:
        backbones.load_weights(model, weights)
    return model


class DeepLabV3MobileNetV2(nn.Module):
    """Mobile DeepLabv3 (paper section 6.3, Table 7): MobileNetV2 with dilation + :class:`heads.DeepLabV3Head`.

    The backbone runs at ``output_stride`` 16 or 8 (later strides become dilation, TF-Slim/DeepLab
    convention) and is tapped at ``feature`` (``layer18``, the 320-channel "second last feature
    map" of the paper's "MNet V2*"; ``layer19`` is the 1280-channel alternative). The head's logits
    are resized to the input size bilinearly with corners aligned (TF DeepLab); take the argmax after
    that. With 21 classes at width 1.0 and 513x513 input: 2.11M parameters and 2.74B multiply-adds
    without ASPP at output stride 16 (Table 7: 2.11M, 2.75B), 4.52M with ASPP (Table 7: 4.52M).

    ``model(images)`` returns logits ``(N, num_classes, H, W)`` at the input size.
    :meth:`forward_with_aux` also returns the auxiliary head's logits (``aux_feature``), used for an
    auxiliary training loss.

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

    Example::

        model = deeplabv3_mobilenet_v2(num_classes=21, output_stride=16, aspp=False)
        logits = model(torch.randn(1, 3, 513, 513))   # (1, 21, 513, 513)
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
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.config: dict[str, Any] = dict(
            num_classes=num_classes, output_stride=output_stride, aspp=aspp, separable_aspp=separable_aspp,
            width_mult=width_mult, feature=feature, head_channels=head_channels, dropout=dropout,
            aux_feature=aux_feature, freeze_bn=freeze_bn, bn_eps=bn_eps, bn_momentum=bn_momentum, padding=padding,
            round_nearest=round_nearest,
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
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.head = DeepLabV3Head(
            channels[feature], num_classes, channels=head_channels,
            atrous_rates=aspp_rates(output_stride) if aspp else None, separable=separable_aspp, dropout=dropout, **bn,
        )
        self.aux_head = None if aux_feature is None else FCNAuxHead(channels[aux_feature], num_classes, **bn)

    def forward_with_aux(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits, aux_logits)``, both ``(N, num_classes, H, W)`` at the input size; ``aux_logits`` is
        ``None`` without an auxiliary head."""
        features = self.backbone(images)
        size = images.shape[-2:]
        logits = upsample_logits(self.head(features[self.feature]), size)
        if self.aux_head is None:
            return logits, None
        return logits, upsample_logits(self.aux_head(features[self.aux_feature]), size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        return upsample_logits(self.head(features[self.feature]), images.shape[-2:])


def deeplabv3_mobilenet_v2(
    *,
    num_classes: int = 21,
    output_stride: int = 16,
    aspp: bool = False,
    width_mult: float = 1.0,
    padding: str | None = None,
    weights: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    **kwargs: Any,
) -> DeepLabV3MobileNetV2:
    """Build a :class:`DeepLabV3MobileNetV2`, optionally loading weights.

    Args:
        weights: a whole-model file (this project's checkpoint, state dict or safetensors file, or
            a TF DeepLab ``.tflite`` release: then ``padding`` defaults to ``"tf_same"`` and
            ``round_nearest`` to the file's channel rounding).
        backbone_weights: an ImageNet classifier or backbone file (torchvision ``mobilenet_v2``,
            this project's classifier) for the backbone; layers past the tap are skipped.
        kwargs: the other :class:`DeepLabV3MobileNetV2` arguments.

    Example::

        model = deeplabv3_mobilenet_v2(num_classes=21, backbone_weights="mobilenet_v2-b0353104.pth")
    """
    if weights is not None and backbone_weights is not None:
        raise ValueError("pass either weights (the whole model) or backbone_weights (ImageNet backbone), not both")
    padding = _default_padding(padding, weights if weights is not None else backbone_weights)
    if weights is not None and Path(weights).suffix == ".tflite" and "round_nearest" not in kwargs:
        from backbones.tflite import read_tflite

        kwargs["round_nearest"] = read_tflite(weights)[1]["round_nearest"]
    model = DeepLabV3MobileNetV2(
        num_classes=num_classes, output_stride=output_stride, aspp=aspp, width_mult=width_mult, padding=padding,
        **kwargs,
    )
    if backbone_weights is not None:
        backbones.load_weights(model.backbone, backbone_weights)
    if weights is not None:
        backbones.load_weights(model, weights)
    return model



def _default_padding(padding: str | None, weights: str | Path | None) -> str:
    """``padding`` if given; else TF's "SAME" for TFLite weights and PyTorch's symmetric padding otherwise."""
    if padding is not None:
        return padding
    return "tf_same" if weights is not None and Path(weights).suffix == ".tflite" else "symmetric"


# Classes that checkpoints may name; rebuilding never imports an arbitrary path read from a file.
MODELS: dict[str, type[nn.Module]] = {
    "MobileNetV2Classifier": MobileNetV2Classifier,
    "SSDLiteMobileNetV2": SSDLiteMobileNetV2,
    "DeepLabV3MobileNetV2": DeepLabV3MobileNetV2,
}


def build_model(class_name: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from the ``class_name`` and ``config`` a checkpoint carries."""
    if class_name not in MODELS:
        raise ValueError(f"unknown model class {class_name!r}; known: {sorted(MODELS)}")
    return MODELS[class_name](**config)
