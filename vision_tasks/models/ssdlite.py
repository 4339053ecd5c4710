"""SSDLite on MobileNetV2 (paper section 6.2, Table 6): normalisation, anchors, box decoding and NMS inside."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

import backbones
from heads import EXTRA_DEPTHS, BoxCoder, DefaultBoxGenerator, SSDLiteHead, SSDLoss, postprocess_detections

from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocessing
from .hub import resolve_weights
from .weights import weights_settings

__all__ = ["SSDLiteMobileNetV2", "SSDLiteParts", "scale_boxes", "ssdlite_mobilenet_v2"]


def scale_boxes(boxes: Tensor, from_size: Sequence[int], to_size: Sequence[int]) -> Tensor:
    """``xyxy`` boxes in pixels of an image of ``from_size`` (H, W) -> pixels of the same image at ``to_size``.

    The one place that maps detections from the network input (the resized image) back to the
    image on disk, as torchvision's ``GeneralizedRCNNTransform.postprocess`` does.
    """
    scale = boxes.new_tensor([float(to_size[1]) / float(from_size[1]), float(to_size[0]) / float(from_size[0])] * 2)
    return boxes * scale


class SSDLiteParts(nn.Module):
    """What SSDLite adds to a backbone's maps: :class:`heads.SSDLiteHead` (``head``), anchors, box coding, loss
    and post-processing (NMS).

    The base of :class:`SSDLiteMobileNetV2` and of the detection branch of
    :class:`~vision_tasks.models.MultiTaskMobileNetV2`, which run it on maps of their own backbone:
    :meth:`_build_ssdlite` builds the parts in a subclass's ``__init__``, :meth:`predict` turns the backbone
    maps into the head outputs that :meth:`loss` and :meth:`postprocess` take.
    """

    # The layers whose outputs are the classes (re-initialised when fine-tuning on other classes): the 1x1
    # classification predictors of every map.
    CLASS_LAYERS = tuple(f"head.classification_head.{i}.1." for i in range(2 + len(EXTRA_DEPTHS)))
    CLASS_OFFSET = 1  # the class layers give each anchor a background slot before its classes

    def _build_ssdlite(
        self, in_channels: Sequence[int], *, num_classes: int, width_mult: float, anchor_layout: str,
        min_scale: float, max_scale: float, aspect_ratios: Sequence[float], classification_loss: str,
        focal_alpha: float, focal_gamma: float, localization_per_coordinate: bool, neg_pos_ratio: float,
        iou_threshold: float, score_thresh: float, nms_thresh: float, topk_candidates: int, detections_per_img: int,
        bn_eps: float, bn_momentum: float, head_padding: str, min_depth: int | None,
    ) -> None:
        """Build the parts for backbone maps of ``in_channels`` (the arguments: see :class:`SSDLiteMobileNetV2`)."""
        self.anchor_generator = DefaultBoxGenerator(
            aspect_ratios, min_scale, max_scale, num_maps=len(in_channels) + len(EXTRA_DEPTHS), layout=anchor_layout,
        )
        self.head = SSDLiteHead(
            list(in_channels), self.anchor_generator.num_anchors_per_location(),
            num_classes + 1, EXTRA_DEPTHS, width_mult=width_mult, bn_eps=bn_eps, bn_momentum=bn_momentum,
            padding=head_padding, **({} if min_depth is None else {"min_depth": min_depth}),
        )
        self.box_coder = BoxCoder()
        self.criterion = SSDLoss(self.box_coder, neg_pos_ratio, iou_threshold=iou_threshold,
                                 classification=classification_loss, focal_alpha=focal_alpha, focal_gamma=focal_gamma,
                                 localization_per_coordinate=localization_per_coordinate)
        self.postprocess_settings = dict(
            score_thresh=score_thresh, nms_thresh=nms_thresh, topk_candidates=topk_candidates,
            detections_per_img=detections_per_img, classification=classification_loss,
        )
        self._anchor_cache: dict[tuple, Tensor] = {}

    def anchors(self, feature_sizes: Sequence[tuple[int, int]], image_size: Sequence[int],
                device: torch.device, dtype: torch.dtype) -> Tensor:
        """Default boxes ``(A, 4)`` for an input of ``image_size`` (cached; they depend on the size only)."""
        key = (int(image_size[0]), int(image_size[1]), device, dtype)
        if key not in self._anchor_cache:
            self._anchor_cache[key] = self.anchor_generator(feature_sizes, key[:2], device, dtype)
        return self._anchor_cache[key]

    def predict(self, maps: Sequence[Tensor], image_size: Sequence[int]) -> dict[str, Tensor]:
        """Head outputs for the backbone ``maps`` of an input of ``image_size`` (H, W): ``cls_logits``
        (N, A, num_classes + 1), ``bbox_regression`` (N, A, 4), ``anchors`` (A, 4) and ``image_size``."""
        cls_logits, bbox_regression, feature_sizes = self.head(list(maps))
        anchors = self.anchors(feature_sizes, image_size, cls_logits.device, cls_logits.dtype)
        return {"cls_logits": cls_logits, "bbox_regression": bbox_regression, "anchors": anchors,
                "image_size": tuple(int(s) for s in image_size)}

    def loss(self, head_out: dict[str, Tensor], targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """``{"classification", "localization"}`` (see :class:`heads.SSDLoss`); target boxes in input pixels,
        labels in ``0..num_classes-1``."""
        return self.criterion(head_out["cls_logits"], head_out["bbox_regression"], head_out["anchors"], targets)

    def postprocess(
        self, head_out: dict[str, Tensor], original_sizes: Sequence[Sequence[int]] | Tensor | None = None
    ) -> list[dict[str, Tensor]]:
        """Detections per image (see :func:`heads.postprocess_detections`), in input pixels, or in the pixels
        of the original images when their ``original_sizes`` ((H, W) per image) are given."""
        image_size = head_out["image_size"]
        detections = postprocess_detections(
            head_out["cls_logits"], head_out["bbox_regression"], head_out["anchors"], image_size,
            box_coder=self.box_coder, **self.postprocess_settings,
        )
        if original_sizes is None:
            return detections
        if len(original_sizes) != len(detections):
            raise ValueError(f"original_sizes has {len(original_sizes)} entries for {len(detections)} images")
        return [{**det, "boxes": scale_boxes(det["boxes"], image_size, [int(v) for v in size])}
                for det, size in zip(detections, original_sizes)]


class SSDLiteMobileNetV2(SSDLiteParts):
    """SSDLite object detector on MobileNetV2 (paper section 6.2, Table 6), anchors to NMS included.

    The backbone is tapped at ``layer15_expand`` (576 channels at width 1.0, stride 16) and
    ``layer19`` (1280, stride 32) and extended by :class:`heads.SSDLiteHead`'s four extra maps.
    With the TF anchor layout, 80 classes and a 320x320 input it has 4,337,013 parameters and 0.79B
    multiply-adds (Table 6: 4.3M, 0.8B; PAPER.md section 9).

    ``model(images)`` takes float images ``(N, 3, H, W)`` in [0, 1] (or uint8) of any size and
    normalises them inside (``mean``/``std`` of the weights; anchors follow the input size, cached
    per size, device and dtype). In training mode it returns the head outputs (:meth:`forward_head`)
    for :meth:`loss`; in eval mode a list with one dict per image: ``boxes`` ``(D, 4)`` ``xyxy``,
    ``scores`` ``(D,)``, ``labels`` ``(D,)`` int64 in ``0..num_classes-1``. The boxes are in pixels of
    the input, or, with ``original_sizes`` (``(N, 2)`` heights and widths of the images before they
    were resized to the input), in pixels of the original images.

    Args:
        num_classes: foreground classes; the head predicts ``num_classes + 1`` logits, index 0
            being the background.
        image_size: the default (training / export) input side; the model runs at any size.
        width_mult: of the backbone and the extra maps (TF ``depth_multiplier``).
        anchor_layout, min_scale, max_scale, aspect_ratios: see :class:`heads.DefaultBoxGenerator`.
        classification_loss: ``"softmax"`` (torchvision), ``"sigmoid"`` (the TF ssdlite config) or
            ``"sigmoid_focal"`` (the TF SSDLite 0.5 200x200 release's); also the score conversion at inference.
        focal_alpha, focal_gamma, localization_per_coordinate, neg_pos_ratio, iou_threshold: see
            :class:`heads.SSDLoss`.
        score_thresh, nms_thresh, topk_candidates, detections_per_img: see
            :func:`heads.postprocess_detections`.
        freeze_bn: freeze the backbone's BatchNorms (see :class:`backbones.MobileNetV2`).
        bn_eps, bn_momentum: BatchNorm settings of backbone and head (torchvision's ssdlite values).
        padding, round_nearest: of the backbone (``"tf_same"`` for TensorFlow-derived weights).
        mean, std, normalization, grayscale: the input normalisation (:mod:`vision_tasks.models.preprocessing`).
        min_depth: the fewest channels of any backbone layer and extra layer (TF ``min_depth``; see
            :class:`backbones.MobileNetV2`); ``None`` (default): the backbone's channel rounding (8) and the
            head's 16, as before.
        scale_last_conv: scale the backbone's last 1x1 conv by ``width_mult`` below 1 too (the TF Object
            Detection API's feature extractor: 640 channels at 0.5); default the paper's 1280.
        head_padding: of the head's 3x3 convs (``"tf_same"`` for TensorFlow-trained heads, whose stride-2
            extra layers pad bottom / right on even sizes); default ``"symmetric"``.
        category_ids: the dataset category id of each label (``num_classes`` entries), when the model
            was trained on a dataset whose ids it should be matched by, e.g. the COCO ids 1..90 of the TF
            Object Detection API's 90-way label map (which has 10 unused ids). Kept in ``config`` so that
            checkpoints and weight records carry it; evaluation on a dataset with other labels maps by it
            (``tools/test.py``). ``None``: labels are ``0..num_classes-1`` and nothing more is known.

    Example::

        model = ssdlite_mobilenet_v2(num_classes=80, backbone_weights="mobilenet_v2-b0353104.pth")
        head_out = model(images)                      # training mode; images in [0, 1]
        losses = model.loss(head_out, targets)        # {"classification", "localization"}
        detections = model.eval()(images, original_sizes=sizes)   # [{"boxes", "scores", "labels"}, ...]
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
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        localization_per_coordinate: bool = False,
        neg_pos_ratio: float = 3,
        iou_threshold: float = 0.5,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.6,
        topk_candidates: int = 300,
        detections_per_img: int = 100,
        freeze_bn: bool = False,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.03,
        padding: str = "symmetric",
        round_nearest: int = 8,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        normalization: str = "standard",
        grayscale: bool = False,
        min_depth: int | None = None,
        scale_last_conv: bool = False,
        head_padding: str = "symmetric",
        category_ids: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes (foreground classes) must be >= 1, got {num_classes}")
        if category_ids is not None:
            category_ids = [int(i) for i in category_ids]
            if len(category_ids) != num_classes or len(set(category_ids)) != num_classes:
                raise ValueError(f"category_ids must give {num_classes} distinct ids (one per class), got "
                                 f"{len(category_ids)} ({len(set(category_ids))} distinct)")
        self.preprocess = ImagePreprocessing(mean, std, normalization, grayscale)
        self.config: dict[str, Any] = dict(
            num_classes=num_classes, image_size=image_size, width_mult=width_mult, anchor_layout=anchor_layout,
            min_scale=min_scale, max_scale=max_scale, aspect_ratios=[float(a) for a in aspect_ratios],
            classification_loss=classification_loss, focal_alpha=focal_alpha, focal_gamma=focal_gamma,
            localization_per_coordinate=localization_per_coordinate, neg_pos_ratio=neg_pos_ratio, iou_threshold=iou_threshold,
            score_thresh=score_thresh, nms_thresh=nms_thresh, topk_candidates=topk_candidates,
            detections_per_img=detections_per_img, freeze_bn=freeze_bn, bn_eps=bn_eps, bn_momentum=bn_momentum,
            padding=padding, round_nearest=round_nearest, min_depth=min_depth, scale_last_conv=scale_last_conv,
            head_padding=head_padding, category_ids=category_ids,
            **self.preprocess.config,
        )
        self.category_ids = category_ids
        self.num_classes = num_classes
        self.image_size = image_size
        self.backbone = backbones.create_backbone(
            "mobilenet_v2", width_mult=width_mult, out_features=self.FEATURES, bn_eps=bn_eps,
            bn_momentum=bn_momentum, freeze_bn=freeze_bn, padding=padding, round_nearest=round_nearest,
            min_depth=min_depth, scale_last_conv=scale_last_conv,
        )
        self._build_ssdlite(
            [info.channels for info in self.backbone.feature_info], num_classes=num_classes, width_mult=width_mult,
            anchor_layout=anchor_layout, min_scale=min_scale, max_scale=max_scale, aspect_ratios=aspect_ratios,
            classification_loss=classification_loss, focal_alpha=focal_alpha, focal_gamma=focal_gamma,
            localization_per_coordinate=localization_per_coordinate, neg_pos_ratio=neg_pos_ratio,
            iou_threshold=iou_threshold, score_thresh=score_thresh, nms_thresh=nms_thresh,
            topk_candidates=topk_candidates, detections_per_img=detections_per_img, bn_eps=bn_eps,
            bn_momentum=bn_momentum, head_padding=head_padding, min_depth=min_depth,
        )

    def forward_head(self, images: Tensor) -> dict[str, Tensor]:
        """Network outputs for images in [0, 1]: ``cls_logits`` (N, A, num_classes + 1), ``bbox_regression``
        (N, A, 4) and ``anchors`` (A, 4), plus ``image_size`` (the input's (H, W))."""
        features = self.backbone(self.preprocess(images))
        return self.predict([features[name] for name in self.FEATURES], images.shape[-2:])

    def forward(
        self, images: Tensor, original_sizes: Sequence[Sequence[int]] | Tensor | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        head_out = self.forward_head(images)
        if self.training:
            return head_out
        return self.postprocess(head_out, original_sizes)


def ssdlite_mobilenet_v2(
    *,
    num_classes: int = 80,
    image_size: int = 320,
    width_mult: float = 1.0,
    weights: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    padding: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalization: str | None = None,
    grayscale: bool | None = None,
    **kwargs: Any,
) -> SSDLiteMobileNetV2:
    """Build an :class:`SSDLiteMobileNetV2`, optionally loading weights.

    Args:
        weights: a whole-model file (this project's checkpoint or state dict).
        backbone_weights: an ImageNet classifier or backbone file (torchvision ``mobilenet_v2``,
            timm, a TFLite classifier release, this project's classifier) for the backbone; its
            classifier is ignored.
        padding, mean, std, normalization, grayscale: ``None`` = what the weights say (TF weights: "SAME"
            padding and [-1, 1] inputs), else ImageNet's normalisation and symmetric padding.
        kwargs: the other :class:`SSDLiteMobileNetV2` arguments.

    Example::

        model = ssdlite_mobilenet_v2(num_classes=80, backbone_weights="mobilenet_v2-b0353104.pth")
    """
    if weights is not None and backbone_weights is not None:
        raise ValueError("pass either weights (the whole model) or backbone_weights (ImageNet backbone), not both")
    settings = weights_settings(weights if weights is not None else backbone_weights, padding=padding, mean=mean,
                                std=std, normalization=normalization, grayscale=grayscale, **kwargs)
    model = SSDLiteMobileNetV2(num_classes=num_classes, image_size=image_size, width_mult=width_mult, **settings)
    if backbone_weights is not None:
        backbones.load_weights(model.backbone, resolve_weights(backbone_weights))
    if weights is not None:
        backbones.load_weights(model, resolve_weights(weights))
    return model
