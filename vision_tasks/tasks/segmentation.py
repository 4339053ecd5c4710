"""Semantic segmentation (paper section 6.3, DeepLabv3): pixel-wise cross-entropy, mIoU from a confusion matrix."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from ..models.deeplab import multi_scale_logits, upsample_logits
from .base import OptimizerFactory, SchedulerFactory, VisionTask

__all__ = ["SegmentationTask", "log_segmentation_scores", "pixel_cross_entropy", "segmentation_scores"]


def pixel_cross_entropy(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int = 255,
                        reduction: str = "mean") -> torch.Tensor:
    """Pixel-wise cross-entropy of ``logits`` (N, C, h, w) against ``masks`` (N, H, W), the logits upsampled to the
    masks' size when they differ, pixels ``ignore_index`` left out: the sum, or (``"mean"``) the mean over the
    labelled pixels (0, still in the graph, when there are none)."""
    if tuple(logits.shape[-2:]) != tuple(masks.shape[-2:]):  # DeepLab upsamples its logits to the labels
        logits = upsample_logits(logits, tuple(masks.shape[-2:]))
    total = F.cross_entropy(logits, masks, ignore_index=ignore_index, reduction="sum")
    if reduction == "sum":
        return total
    return total / (masks != ignore_index).sum().clamp_min(1)


def log_segmentation_scores(module, confusion: MulticlassConfusionMatrix, stage: str,
                            class_names: Sequence[str] | None) -> None:
    """Log ``<stage>/miou``, ``<stage>/pixel_acc`` and ``<stage>/iou/<class>`` (every class present in the ground
    truth; its index when ``class_names`` does not give one per class) of ``confusion`` from ``module`` (a
    LightningModule), then reset it."""
    scores = segmentation_scores(confusion.compute())  # already reduced over processes by torchmetrics
    confusion.reset()
    module.log(f"{stage}/miou", scores["miou"], prog_bar=stage == "val")
    module.log(f"{stage}/pixel_acc", scores["pixel_acc"])
    names = class_names if class_names and len(class_names) == len(scores["iou"]) else None
    for index in scores["present"].nonzero().flatten().tolist():
        module.log(f"{stage}/iou/{names[index] if names else index}", scores["iou"][index])


def segmentation_scores(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """IoU per class, mIoU and pixel accuracy from a confusion matrix (rows: ground truth, columns: prediction).

    IoU = TP / (TP + FP + FN). The mIoU averages the classes present in the ground truth only
    (``present``): a class the evaluated set lacks has no meaningful IoU (0 if it was ever
    predicted, 0/0 otherwise) and is left out. On PASCAL VOC val every class occurs, so this is the
    standard VOC mIoU. Pixel accuracy = correct / labelled pixels. Both are 0 for an empty matrix.
    """
    confusion = confusion.double()
    true_positive = confusion.diag()
    ground_truth = confusion.sum(dim=1)
    predicted = confusion.sum(dim=0)
    union = ground_truth + predicted - true_positive
    iou = true_positive / union.clamp_min(1)
    present = ground_truth > 0
    total = confusion.sum()
    miou = iou[present].mean() if present.any() else iou.new_zeros(())
    pixel_acc = true_positive.sum() / total if total > 0 else iou.new_zeros(())
    return {"iou": iou.float(), "present": present, "miou": miou.float(), "pixel_acc": pixel_acc.float()}


class SegmentationTask(VisionTask):
    """Trains and evaluates a semantic segmentation model such as DeepLabv3 on MobileNetV2.

    The model takes images in [0, 1] and returns logits ``(N, num_classes, H, W)`` at the input
    size; it exposes an integer ``num_classes``, for an auxiliary loss ``forward_with_aux(images) ->
    (logits, aux_logits)`` (``aux_logits`` also at the input size, ``None`` without an auxiliary
    head), and for evaluating whole images of different sizes ``segment(images, pad_to=, scales=,
    flip=, average=)`` (:meth:`vision_tasks.models.DeepLabV3MobileNetV2.segment`: the one place that
    pads and crops back). Training batches are ``(images (N, 3, H, W), masks (N, H, W) int64)``;
    evaluation batches may also be lists of images ``(3, H_i, W_i)`` and masks ``(H_i, W_i)`` (the
    evaluation loaders give lists: images keep their own size). ``ignore_index`` (255) marks
    unlabelled pixels.

    Loss: pixel-wise cross-entropy averaged over the labelled pixels (0 for a batch with none),
    plus ``aux_weight`` times that of the auxiliary logits.

    Evaluation: :meth:`evaluation_logits` (single scale, or multi-scale with ``eval_scales`` /
    ``eval_flip``: the paper's MF is ``eval_scales=MF_SCALES, eval_flip=True``, see
    :func:`~vision_tasks.models.multi_scale_logits`), images padded to ``eval_pad_size`` as TF
    DeepLab evaluates; the argmax predictions accumulate into a torchmetrics confusion matrix
    (synchronised across DDP processes), from which :func:`segmentation_scores` gives, once per
    epoch, ``val/miou`` (mean IoU over the classes present in the ground truth), ``val/pixel_acc``
    and ``val/iou/<class name>`` for every present class (the class index when the datamodule has no
    ``class_names``); ``val/loss`` is the cross-entropy of the evaluation logits. Likewise ``test/...``.

    Args:
        model: the segmentation model; it must expose an integer ``num_classes``.
        optimizer, scheduler, scheduler_interval, norm_weight_decay, monitor, backbone_lr_mult: see :class:`VisionTask`;
            DeepLab's recipe is SGD with :class:`~vision_tasks.optim.PolyLR` stepped per batch.
        ignore_index: the mask value of unlabelled pixels, left out of the loss and the metrics.
        aux_weight: weight of the auxiliary loss; > 0 needs a model whose ``forward_with_aux``
            returns auxiliary logits.
        eval_scales: input scales at evaluation (and prediction).
        eval_flip: also evaluate the left-right flipped images.
        eval_average: how the multi-scale outputs are merged, ``"logits"`` (mean logits) or
            ``"probs"`` (mean softmax probabilities, TF DeepLab).
        eval_pad_size: pad evaluation images (after normalisation, with the mean pixel) to at least this
            side, as TF DeepLab evaluates Pascal VOC at 513x513; ``None``: to the largest image of the batch.

    Example::

        task = SegmentationTask(model, optimizer=functools.partial(torch.optim.SGD, lr=0.007, momentum=0.9),
                                scheduler=functools.partial(PolyLR, power=0.9))
        pl.Trainer(max_steps=30000).fit(task, datamodule=...)
    """

    name = "segmentation"
    monitor = "val/miou"

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "step",
        norm_weight_decay: float | None = None,
        ignore_index: int = 255,
        aux_weight: float = 0.0,
        eval_scales: Sequence[float] = (1.0,),
        eval_flip: bool = False,
        eval_average: str = "logits",
        eval_pad_size: int | None = None,
        monitor: str | None = None,
        backbone_lr_mult: float = 1.0,
    ) -> None:
        super().__init__(model, optimizer, scheduler, scheduler_interval, norm_weight_decay, monitor, backbone_lr_mult)
        eval_scales = [float(s) for s in eval_scales]  # plain floats in the hyperparameters (a Hydra ListConfig, ...)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        num_classes = getattr(model, "num_classes", None)
        if not isinstance(num_classes, int):
            raise ValueError(f"{type(model).__name__} must expose an integer num_classes attribute")
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        if aux_weight > 0 and not callable(getattr(model, "forward_with_aux", None)):
            raise ValueError(f"aux_weight={aux_weight} needs auxiliary logits, but {type(model).__name__} has no "
                             "forward_with_aux() method")
        if not eval_scales or any(s <= 0 for s in eval_scales):
            raise ValueError(f"eval_scales must be a non-empty list of positive scales, got {eval_scales}")
        if eval_average not in ("logits", "probs"):
            raise ValueError(f"eval_average must be 'logits' or 'probs', got {eval_average!r}")
        if eval_pad_size is not None and (isinstance(eval_pad_size, bool) or int(eval_pad_size) < 1):
            raise ValueError(f"eval_pad_size must be a positive side or None, got {eval_pad_size!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        self.eval_scales = tuple(eval_scales)
        self.eval_flip = eval_flip
        self.eval_average = eval_average
        self.eval_pad_size = None if eval_pad_size is None else int(eval_pad_size)
        self.val_confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)
        self.test_confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)

    # ---------------------------------------------------------------- training
    def cross_entropy(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the labelled pixels of ``masks`` (0, still in the graph, when there are none)."""
        return self._cross_entropy_sum(logits, masks) / (masks != self.ignore_index).sum().clamp_min(1)

    def _cross_entropy_sum(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return pixel_cross_entropy(logits, masks, self.ignore_index, reduction="sum")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        batch_size = images.shape[0]
        if self.aux_weight > 0:
            logits, aux_logits = self.model.forward_with_aux(images)
            if aux_logits is None:
                raise ValueError(f"aux_weight={self.aux_weight} needs auxiliary logits, but "
                                 f"{type(self.model).__name__}.forward_with_aux() returned None for them "
                                 "(a model without an auxiliary head: set aux_weight=0)")
            loss_aux = self.cross_entropy(aux_logits, masks)
            loss = self.cross_entropy(logits, masks) + self.aux_weight * loss_aux
            self.log("train/loss_aux", loss_aux, on_step=False, on_epoch=True, batch_size=batch_size)
        else:
            loss = self.cross_entropy(self.model(images), masks)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        return loss

    # ---------------------------------------------------------------- evaluation
    def evaluation_logits(self, images: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Logits ``(C, H_i, W_i)`` per image at its own size: plain, or multi-scale / flipped per ``eval_scales``."""
        settings = dict(scales=self.eval_scales, flip=self.eval_flip, average=self.eval_average)
        if callable(getattr(self.model, "segment", None)):
            return self.model.segment(images, pad_to=self.eval_pad_size, **settings)
        batch = images if isinstance(images, torch.Tensor) else torch.stack(list(images))  # a model without segment()
        return list(multi_scale_logits(self.model, batch, **settings))

    def _evaluate(self, batch, confusion: MulticlassConfusionMatrix, stage: str) -> None:
        images, masks = batch
        logits = self.evaluation_logits(images)
        loss = sum(self._cross_entropy_sum(l.unsqueeze(0), m.unsqueeze(0)) for l, m in zip(logits, masks))
        labelled = sum(int((m != self.ignore_index).sum()) for m in masks)
        self.log(f"{stage}/loss", loss / max(1, labelled), sync_dist=True, batch_size=len(masks))
        confusion.update(torch.cat([l.argmax(dim=0).flatten() for l in logits]),
                         torch.cat([m.flatten() for m in masks]))

    def _log_scores(self, confusion: MulticlassConfusionMatrix, stage: str) -> None:
        log_segmentation_scores(self, confusion, stage, self.class_names)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_confusion, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_confusion, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_confusion, "test")

    def on_test_epoch_end(self) -> None:
        self._log_scores(self.test_confusion, "test")

    def predict_step(self, batch, batch_idx: int) -> list[torch.Tensor]:
        """Class maps ``(H_i, W_i)`` int64, one per image, at its own size."""
        images = batch[0] if isinstance(batch, tuple) else batch  # (images, masks) from the loaders
        return [logits.argmax(dim=0) for logits in self.evaluation_logits(images)]
