"""SSD box machinery: default boxes, the box coder, the anchor matcher, the loss and the post-processing.

Small pure units shared by the SSDLite model (paper section 6.2) and its tests. Boxes are ``xyxy``
in input pixels throughout; anchors are ordered map by map, row-major over locations, then the
boxes of one location, which is the order of a head output ``(N, B*K, H, W)`` viewed as
``(N, B, K, H, W)``, permuted to ``(N, H, W, B, K)`` and flattened (torchvision's SSD heads, the TF
Object Detection API's convolutional box predictor).

The defaults are those of the TF Object Detection API's ``ssdlite_mobilenet_v2_coco.config``
(PAPER.md section 3.2) unless stated otherwise.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, sigmoid_focal_loss

__all__ = ["BoxCoder", "DefaultBoxGenerator", "SSDLoss", "match_anchors", "postprocess_detections"]

AnchorLayout = Literal["tf", "torchvision"]
Classification = Literal["softmax", "sigmoid", "sigmoid_focal"]

# TF ssd_anchor_generator with reduce_boxes_in_lowest_layer: the first map's three (scale, ratio)
# boxes, the first scale a fixed 0.1 rather than derived from min_scale.
_TF_LOWEST_LAYER_SCALE = 0.1


def _check_classification(classification: str) -> None:
    if classification not in ("softmax", "sigmoid", "sigmoid_focal"):
        raise ValueError(f"classification must be 'softmax', 'sigmoid' or 'sigmoid_focal', got {classification!r}")


class DefaultBoxGenerator(nn.Module):
    """SSD default boxes (anchors) for a list of feature-map sizes, ``xyxy`` in input pixels.

    Scales are linear from ``min_scale`` to ``max_scale`` over the ``num_maps`` maps, plus
    ``s_{num_maps} = 1.0`` for the interpolated box. A box of scale ``s`` and aspect ratio ``ar``
    is ``s * sqrt(ar)`` wide and ``s / sqrt(ar)`` high in units of the image side (normalised
    coordinates, scaled to pixels by the image width and height); the box centres of an ``h x w``
    map are ``((j + 0.5) / w, (i + 0.5) / h)``.

    Layouts (the boxes of one location, in order):

    - ``"tf"``: the TF Object Detection API's ``ssd_anchor_generator`` with
      ``reduce_boxes_in_lowest_layer`` (the ``ssdlite_mobilenet_v2_coco`` config): the first map has
      3 boxes, ``(0.1, 1.0), (s_0, 2.0), (s_0, 0.5)``; every other map has one box per aspect ratio
      at ``s_k`` followed by ``sqrt(s_k * s_{k+1})`` at ratio 1.0. 1917 boxes at 300x300.
    - ``"torchvision"``: ``torchvision.models.detection.anchor_utils.DefaultBoxGenerator`` as
      torchvision's ssdlite builds it (``[[2, 3]] * 6``): ``s_k`` at ratio 1.0, ``sqrt(s_k * s_{k+1})``
      at ratio 1.0, then the aspect ratios other than 1.0 in the given order, on every map.

    Args:
        aspect_ratios: width / height ratios (TF config: 1.0, 2.0, 0.5, 3.0, 0.3333).
        min_scale, max_scale: the first and last map's scale, as fractions of the image side.
        num_maps: number of feature maps.
        layout: ``"tf"`` or ``"torchvision"``, see above.
        clip: clamp every box's normalised width and height to [0, 1] (torchvision's ``clip``,
            on by default there; the box centres are unchanged, so boxes can still cross the image
            border).

    Example::

        gen = DefaultBoxGenerator()
        anchors = gen([(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)], (300, 300))  # (1917, 4)
    """

    def __init__(
        self,
        aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5, 3.0, 1 / 3),
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        num_maps: int = 6,
        layout: AnchorLayout = "tf",
        clip: bool = False,
    ) -> None:
        super().__init__()
        if layout not in ("tf", "torchvision"):
            raise ValueError(f"layout must be 'tf' or 'torchvision', got {layout!r}")
        if num_maps < 2:
            raise ValueError(f"num_maps must be >= 2 (scales are interpolated between maps), got {num_maps}")
        if not 0 < min_scale <= max_scale <= 1:
            raise ValueError(f"need 0 < min_scale <= max_scale <= 1, got min_scale={min_scale}, max_scale={max_scale}")
        if not aspect_ratios or any(ar <= 0 for ar in aspect_ratios):
            raise ValueError(f"aspect_ratios must be a non-empty list of positive numbers, got {list(aspect_ratios)}")
        self.aspect_ratios = tuple(float(ar) for ar in aspect_ratios)
        self.layout = layout
        self.clip = clip
        self.num_maps = num_maps
        self.scales = [min_scale + (max_scale - min_scale) * k / (num_maps - 1) for k in range(num_maps)] + [1.0]
        # (scale, aspect ratio) of each box of one location, per map
        self.box_specs: list[list[tuple[float, float]]] = [self._box_specs(k) for k in range(num_maps)]

    def _box_specs(self, k: int) -> list[tuple[float, float]]:
        s_k, s_interp = self.scales[k], math.sqrt(self.scales[k] * self.scales[k + 1])
        if self.layout == "torchvision":
            return [(s_k, 1.0), (s_interp, 1.0)] + [(s_k, ar) for ar in self.aspect_ratios if ar != 1.0]
        if k == 0:
            return [(_TF_LOWEST_LAYER_SCALE, 1.0), (s_k, 2.0), (s_k, 0.5)]
        return [(s_k, ar) for ar in self.aspect_ratios] + [(s_interp, 1.0)]

    def num_anchors_per_location(self) -> list[int]:
        """Boxes per location of each map (the head's ``num_anchors``)."""
        return [len(specs) for specs in self.box_specs]

    def forward(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        image_size: tuple[int, int],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Default boxes ``(A, 4)``, ``xyxy`` in pixels of an ``image_size = (height, width)`` input.

        ``feature_sizes`` are the ``(height, width)`` of the ``num_maps`` maps, first map first.
        Computed in float64 and returned as ``dtype`` (default float32) on ``device``.
        """
        if len(feature_sizes) != self.num_maps:
            raise ValueError(
                f"expected {self.num_maps} feature map sizes, got {len(feature_sizes)}: {list(feature_sizes)}"
            )
        height, width = int(image_size[0]), int(image_size[1])
        boxes = []
        for (fh, fw), specs in zip(feature_sizes, self.box_specs):
            wh = torch.tensor([[s * math.sqrt(ar), s / math.sqrt(ar)] for s, ar in specs], dtype=torch.float64)
            if self.clip:
                wh = wh.clamp(0.0, 1.0)
            cy, cx = torch.meshgrid(
                (torch.arange(int(fh), dtype=torch.float64) + 0.5) / int(fh),
                (torch.arange(int(fw), dtype=torch.float64) + 0.5) / int(fw),
                indexing="ij",
            )
            centers = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2)  # (locations, 1, 2)
            half = 0.5 * wh.unsqueeze(0)  # (1, boxes per location, 2)
            boxes.append(torch.cat((centers - half, centers + half), dim=-1).reshape(-1, 4))
        scale = torch.tensor([width, height, width, height], dtype=torch.float64)
        return (torch.cat(boxes) * scale).to(device=device, dtype=dtype or torch.float32)

    def extra_repr(self) -> str:
        return (f"layout={self.layout!r}, aspect_ratios={list(self.aspect_ratios)}, "
                f"scales={[round(s, 4) for s in self.scales]}, clip={self.clip}")


class BoxCoder:
    """Center-size box coder (Faster R-CNN / SSD; the TF config's ``faster_rcnn_box_coder``).

    ``encode`` turns boxes into deltas ``(dx, dy, dw, dh)`` w.r.t. anchors: center offsets in units
    of the anchor size and log size ratios, multiplied by ``weights`` (TF: x/y scale 10, w/h scale
    5). ``decode`` inverts it, clamping ``dw, dh`` at ``bbox_xform_clip`` before ``exp``.
    torchvision's equivalent lives in the private ``torchvision.models.detection._utils``, so this
    module keeps its own copy of the ~20 lines rather than depend on private API. Boxes must have
    positive width and height (``SSDLoss`` checks its targets).
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"weights must be 4 numbers (wx, wy, ww, wh), got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """Deltas ``(..., 4)`` of ``boxes`` w.r.t. ``anchors`` (both ``xyxy``, broadcastable)."""
        wx, wy, ww, wh = self.weights
        aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
        ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
        bw, bh = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        bx, by = boxes[..., 0] + 0.5 * bw, boxes[..., 1] + 0.5 * bh
        return torch.stack(
            (wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)), dim=-1
        )

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes ``(..., 4)`` ``xyxy`` from ``deltas`` w.r.t. ``anchors`` (broadcastable)."""
        wx, wy, ww, wh = self.weights
        aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
        ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
        cx = deltas[..., 0] / wx * aw + ax
        cy = deltas[..., 1] / wy * ah + ay
        half_w = 0.5 * torch.exp((deltas[..., 2] / ww).clamp(max=self.bbox_xform_clip)) * aw
        half_h = 0.5 * torch.exp((deltas[..., 3] / wh).clamp(max=self.bbox_xform_clip)) * ah
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip:.4f})"


def match_anchors(gt_boxes: Tensor, anchors: Tensor, iou_threshold: float = 0.5, force_match: bool = True) -> Tensor:
    """Index of the ground-truth box each anchor is matched to, or -1 (background); ``(A,)`` int64.

    An anchor matches the box it overlaps most if that IoU is ``>= iou_threshold`` (TF
    ``argmax_matcher`` with matched = unmatched threshold). With ``force_match`` every box also gets
    its best anchor whatever the IoU (TF ``force_match_for_each_row``, torchvision ``SSDMatcher``);
    when several boxes have the same best anchor, the first of them gets it (TF's rule).

    Args:
        gt_boxes: ``(K, 4)`` ``xyxy``; ``K == 0`` gives all -1.
        anchors: ``(A, 4)`` ``xyxy``.
    """
    num_anchors = anchors.shape[0]
    if gt_boxes.shape[0] == 0:
        return torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
    iou = box_iou(gt_boxes, anchors)  # (K, A)
    best_iou, best_gt = iou.max(dim=0)
    matches = torch.where(best_iou >= iou_threshold, best_gt, torch.full_like(best_gt, -1))
    if force_match:
        best_anchor = iou.argmax(dim=1)  # (K,)
        forced = F.one_hot(best_anchor, num_anchors).T  # (A, K): anchor a is the best of box k
        is_forced = forced.any(dim=1)
        matches = torch.where(is_forced, forced.argmax(dim=1), matches)  # argmax: the first such box
    return matches


def _check_targets(targets: Sequence[dict[str, Tensor]], num_images: int, num_classes: int) -> None:
    if len(targets) != num_images:
        raise ValueError(f"got {len(targets)} targets for {num_images} images")
    for i, target in enumerate(targets):
        boxes, labels = target["boxes"], target["labels"]
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(f"target {i}: expected boxes (K, 4) and labels (K,), got {tuple(boxes.shape)} "
                             f"and {tuple(labels.shape)}")
        valid = (boxes[:, 2:] > boxes[:, :2]).all(dim=1)
        if not bool(valid.all()):
            raise ValueError(f"target {i}: boxes need positive width and height, got {boxes[~valid][:3].tolist()}")
        if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
            raise ValueError(f"target {i}: labels must be in [0, {num_classes - 1}] (foreground classes), "
                             f"got min {int(labels.min())} max {int(labels.max())}")


class SSDLoss(nn.Module):
    """SSD multibox loss with hard-negative mining (TF ``ssdlite_mobilenet_v2_coco`` settings).

    Per image, crowd boxes (``iscrowd != 0``) are left out, the rest matched to the anchors
    (:func:`match_anchors`). The classification loss is summed over the positives and the
    ``max(neg_pos_ratio * num_positives, min_negatives)`` negatives of highest loss (TF
    ``max_negatives_per_positive`` 3, ``min_negatives_per_image`` 3, so images without boxes still
    train the background). The localization loss is smooth L1 (beta 1) on the encoded deltas of
    the positives. Both are divided by the number of positives in the batch, at least 1 (TF
    ``normalize_loss_by_num_matches``; torchvision's SSD). TF's miner also runs an NMS at IoU 0.99
    over the candidate anchors and caps them at 3000; this loss does not.

    Args:
        box_coder: the coder the regression outputs are trained for.
        neg_pos_ratio, min_negatives: hard-negative mining, see above.
        iou_threshold: matching threshold.
        classification: ``"softmax"`` (cross-entropy over the ``C + 1`` logits, torchvision),
            ``"sigmoid"`` (binary cross-entropy per logit against the one-hot target including the
            background column, summed per anchor: the TF config's ``weighted_sigmoid``) or
            ``"sigmoid_focal"`` (``torchvision.ops.sigmoid_focal_loss`` with ``focal_alpha`` and
            ``focal_gamma`` on the foreground columns, negatives all zeros as in RetinaNet, over every
            anchor with no hard-negative mining: the TF config's ``weighted_sigmoid_focal``, which the
            SSDLite 0.5 200x200 release was trained with; its background logit stays unused).
        localization_per_coordinate: divide the localization loss by the code size 4 as well (TF
            ``normalize_loc_loss_by_codesize``).

    ``forward(cls_logits (N, A, C+1), bbox_regression (N, A, 4), anchors (A, 4), targets)`` where
    each target has ``boxes`` (K, 4) ``xyxy`` pixels, ``labels`` (K,) int64 foreground classes
    ``0..C-1`` (logit ``label + 1``; logit 0 is the background) and optionally ``iscrowd`` (K,);
    returns ``{"classification": Tensor, "localization": Tensor}``. Targets are checked first
    (shapes, positive box sizes, label range; as torchvision's detection models do) and a
    ``ValueError`` names the offending image.
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        neg_pos_ratio: float = 3,
        min_negatives: int = 3,
        iou_threshold: float = 0.5,
        classification: Classification = "softmax",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        localization_per_coordinate: bool = False,
    ) -> None:
        super().__init__()
        _check_classification(classification)
        if neg_pos_ratio < 0 or min_negatives < 0:
            raise ValueError(f"neg_pos_ratio and min_negatives must be >= 0, got {neg_pos_ratio}, {min_negatives}")
        self.box_coder = box_coder
        self.neg_pos_ratio = neg_pos_ratio
        self.min_negatives = min_negatives
        self.iou_threshold = iou_threshold
        self.classification = classification
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.localization_per_coordinate = bool(localization_per_coordinate)

    def forward(
        self, cls_logits: Tensor, bbox_regression: Tensor, anchors: Tensor, targets: Sequence[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        num_images, num_anchors, num_logits = cls_logits.shape
        _check_targets(targets, num_images, num_logits - 1)
        cls_targets, pred_deltas, target_deltas = [], [], []
        for target, regression in zip(targets, bbox_regression):
            boxes, labels = target["boxes"], target["labels"]
            if "iscrowd" in target:
                keep = target["iscrowd"] == 0
                boxes, labels = boxes[keep], labels[keep]
            matches = match_anchors(boxes, anchors, self.iou_threshold)
            positive = matches >= 0
            cls_target = torch.zeros(num_anchors, dtype=torch.int64, device=cls_logits.device)
            cls_target[positive] = labels[matches[positive]] + 1
            cls_targets.append(cls_target)
            pred_deltas.append(regression[positive])
            target_deltas.append(self.box_coder.encode(boxes[matches[positive]], anchors[positive]))
        cls_target = torch.stack(cls_targets)  # (N, A)
        positive = cls_target > 0
        normalizer = positive.sum().clamp(min=1).to(cls_logits.dtype)

        localization = F.smooth_l1_loss(torch.cat(pred_deltas), torch.cat(target_deltas), beta=1.0, reduction="sum")
        if self.localization_per_coordinate:
            localization = localization / 4
        per_anchor = self._per_anchor_classification(cls_logits, cls_target)
        if self.classification == "sigmoid_focal":  # the focal term weighs the easy negatives down instead of mining
            return {"classification": per_anchor.sum() / normalizer, "localization": localization / normalizer}
        selected = positive | self._hard_negatives(per_anchor.detach(), positive)
        return {"classification": per_anchor[selected].sum() / normalizer, "localization": localization / normalizer}

    def _per_anchor_classification(self, cls_logits: Tensor, cls_target: Tensor) -> Tensor:
        if self.classification == "softmax":
            return F.cross_entropy(cls_logits.flatten(0, 1), cls_target.flatten(), reduction="none").view_as(cls_target)
        one_hot = F.one_hot(cls_target, cls_logits.shape[-1]).to(cls_logits.dtype)
        if self.classification == "sigmoid_focal":
            # foreground columns only, as RetinaNet (torchvision's too): negatives are all zeros and the background
            # column gets no gradient (the TF SSDLite release's stays near 0.003 on negatives: it was not trained to 1)
            return sigmoid_focal_loss(cls_logits[..., 1:], one_hot[..., 1:], self.focal_alpha, self.focal_gamma,
                                      reduction="none").sum(dim=-1)
        return F.binary_cross_entropy_with_logits(cls_logits, one_hot, reduction="none").sum(dim=-1)

    def _hard_negatives(self, loss: Tensor, positive: Tensor) -> Tensor:
        """Per image, the ``max(neg_pos_ratio * num_pos, min_negatives)`` negatives of highest loss."""
        num_negatives = (self.neg_pos_ratio * positive.sum(dim=1)).clamp(min=self.min_negatives)
        ranked = loss.masked_fill(positive, -math.inf).argsort(dim=1, descending=True, stable=True)
        rank = ranked.argsort(dim=1)  # rank of each anchor's loss among its image's negatives
        return (rank < num_negatives.unsqueeze(1)) & ~positive


def postprocess_detections(
    cls_logits: Tensor,
    bbox_regression: Tensor,
    anchors: Tensor,
    image_size: tuple[int, int],
    *,
    box_coder: BoxCoder,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.6,
    topk_candidates: int = 300,
    detections_per_img: int = 100,
    classification: Classification = "softmax",
) -> list[dict[str, Tensor]]:
    """Detections per image from the head outputs: decode, score, threshold, per-class NMS.

    Scores are the softmax (or sigmoid) of the ``C + 1`` logits with the background (logit 0)
    dropped. Per class, the ``topk_candidates`` anchors of highest score above ``score_thresh``
    are kept; their decoded boxes, clipped to the image, go through a per-class NMS
    (``torchvision.ops.batched_nms`` at ``nms_thresh``) and the ``detections_per_img`` best survive.

    Returns one dict per image: ``boxes`` (D, 4) ``xyxy`` pixels, ``scores`` (D,) in decreasing
    order, ``labels`` (D,) int64 foreground classes ``0..C-1``.
    """
    _check_classification(classification)
    probs = cls_logits.softmax(dim=-1) if classification == "softmax" else cls_logits.sigmoid()  # both sigmoid losses
    scores = probs[..., 1:]  # (N, A, C)
    boxes = clip_boxes_to_image(box_coder.decode(bbox_regression, anchors), (int(image_size[0]), int(image_size[1])))
    num_anchors, num_classes = scores.shape[1:]
    k = min(topk_candidates, num_anchors)
    class_ids = torch.arange(num_classes, device=scores.device).expand(k, num_classes)
    detections = []
    for image_scores, image_boxes in zip(scores, boxes):
        top_scores, top_anchors = image_scores.topk(k, dim=0)  # per class (column): (k, C)
        keep = top_scores > score_thresh
        det_scores, det_labels, det_boxes = top_scores[keep], class_ids[keep], image_boxes[top_anchors[keep]]
        keep = batched_nms(det_boxes, det_scores, det_labels, nms_thresh)[:detections_per_img]
        detections.append({"boxes": det_boxes[keep], "scores": det_scores[keep], "labels": det_labels[keep]})
    return detections
