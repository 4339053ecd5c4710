"""Semantic segmentation (paper section 6.3, DeepLabv3): pixel-wise cross-entropy, mIoU from a confusion matrix."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from .base import OptimizerFactory, SchedulerFactory, VisionTask

# The paper's "MF" evaluation (Table 7): inputs at these scales, each also left-right flipped.
MF_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def scale_dimension(dim: int, scale: float) -> int:
    """A side ``dim`` resized by ``scale`` as TF DeepLab does: ``int((dim - 1) * scale + 1)``.

    With ``align_corners=True`` this maps the first and last pixels onto each other exactly and
    keeps DeepLab's ``8k + 1`` sizes (513 at 0.5 -> 257, at 1.75 -> 897).
    """
    return max(1, int((dim - 1) * scale + 1))


def multi_scale_logits(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float] = MF_SCALES,
    flip: bool = True,
    average: str = "logits",
) -> torch.Tensor:
    """Multi-scale (and flipped) inference, as DeepLab's ``predict_labels_multi_scale``.

    For every scale ``s`` the batch is resized bilinearly (``align_corners=True``) to
    :func:`scale_dimension` of its height and width (scale 1.0: not resized), run through
    ``model``, and the logits are resized back to the input size (bilinear, ``align_corners=True``);
    with ``flip`` the horizontally flipped input is run as well and its logits flipped back.

    Args:
        model: returns logits ``(N, C, h, w)`` for images ``(N, 3, h, w)``.
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
        scaled = images if size == (height, width) else _resize(images, size)
        for flipped in (False, True) if flip else (False,):
            logits = model(scaled.flip(-1) if flipped else scaled)
            if flipped:
                logits = logits.flip(-1)
            if tuple(logits.shape[-2:]) != (height, width):
                logits = _resize(logits, (height, width))
            outputs.append(logits if average == "logits" else logits.log_softmax(dim=1))
    if len(outputs) == 1:
        return outputs[0]
    stacked = torch.stack(outputs)
    if average == "logits":
        return stacked.mean(dim=0)
    return torch.logsumexp(stacked, dim=0) - math.log(len(outputs))  # log of the mean probability, stably


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


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

    The model returns logits ``(N, num_classes, H, W)`` at the input size, exposes an integer
    ``num_classes`` and, for an auxiliary loss, ``forward_with_aux(images) -> (logits, aux_logits)``
    (``aux_logits`` also at the input size, ``None`` without an auxiliary head). Batches are
    ``(images (N, 3, H, W), masks (N, H, W) int64)`` with ``ignore_index`` (255) on unlabelled
    pixels. Logits of another size than the masks are resized to them (bilinear,
    ``align_corners=True``, as DeepLab upsamples its logits to the labels).

    Loss: pixel-wise cross-entropy averaged over the labelled pixels (0 for a batch with none),
    plus ``aux_weight`` times that of the auxiliary logits.

    Evaluation: :meth:`evaluation_logits` (single scale, or :func:`multi_scale_logits` with
    ``eval_scales`` / ``eval_flip``; the paper's MF: ``eval_scales=MF_SCALES, eval_flip=True``); the
    argmax predictions accumulate into a torchmetrics confusion matrix (synchronised across DDP
    processes), from which :func:`segmentation_scores` gives, once per epoch, ``val/miou`` (mean IoU
    over the classes present in the ground truth), ``val/pixel_acc`` and ``val/iou/<class name>``
    for every present class (the class index when the datamodule has no ``class_names``);
    ``val/loss`` is the cross-entropy of the evaluation logits. Likewise ``test/...``.

    Args:
        model: the segmentation model; it must expose an integer ``num_classes``.
        optimizer, scheduler, scheduler_interval, norm_weight_decay: see :class:`VisionTask`;
            DeepLab's recipe is SGD with :class:`~vision_tasks.optim.PolyLR` stepped per batch.
        ignore_index: the mask value of unlabelled pixels, left out of the loss and the metrics.
        aux_weight: weight of the auxiliary loss; > 0 needs a model whose ``forward_with_aux``
            returns auxiliary logits.
        eval_scales: input scales at evaluation (and prediction).
        eval_flip: also evaluate the left-right flipped images.
        eval_average: how the multi-scale outputs are merged, ``"logits"`` (mean logits) or
            ``"probs"`` (mean softmax probabilities, TF DeepLab); see :func:`multi_scale_logits`.

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
    ) -> None:
        super().__init__(model, optimizer, scheduler, scheduler_interval, norm_weight_decay)
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
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        self.eval_scales = tuple(eval_scales)
        self.eval_flip = eval_flip
        self.eval_average = eval_average
        self.val_confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)
        self.test_confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)

    # ---------------------------------------------------------------- training
    def cross_entropy(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the labelled pixels of ``masks`` (0, still in the graph, when there are none)."""
        if tuple(logits.shape[-2:]) != tuple(masks.shape[-2:]):
            logits = _resize(logits, tuple(masks.shape[-2:]))
        total = F.cross_entropy(logits, masks, ignore_index=self.ignore_index, reduction="sum")
        return total / (masks != self.ignore_index).sum().clamp_min(1)

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
    def evaluation_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, C, H, W)`` at the input size: a plain forward, or multi-scale / flipped per ``eval_scales``."""
        if self.eval_scales == (1.0,) and not self.eval_flip:
            return self.model(images)
        return multi_scale_logits(self.model, images, self.eval_scales, self.eval_flip, self.eval_average)

    def _evaluate(self, batch, confusion: MulticlassConfusionMatrix, stage: str) -> None:
        images, masks = batch
        logits = self.evaluation_logits(images)
        if tuple(logits.shape[-2:]) != tuple(masks.shape[-2:]):
            logits = _resize(logits, tuple(masks.shape[-2:]))
        self.log(f"{stage}/loss", self.cross_entropy(logits, masks), sync_dist=True, batch_size=images.shape[0])
        confusion.update(logits.argmax(dim=1), masks)

    def _log_scores(self, confusion: MulticlassConfusionMatrix, stage: str) -> None:
        scores = segmentation_scores(confusion.compute())  # already reduced over processes by torchmetrics
        confusion.reset()
        self.log(f"{stage}/miou", scores["miou"], prog_bar=stage == "val")
        self.log(f"{stage}/pixel_acc", scores["pixel_acc"])
        names = self.class_names if self.class_names and len(self.class_names) == self.num_classes else None
        for index in scores["present"].nonzero().flatten().tolist():
            self.log(f"{stage}/iou/{names[index] if names else index}", scores["iou"][index])

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_confusion, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_confusion, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_confusion, "test")

    def on_test_epoch_end(self) -> None:
        self._log_scores(self.test_confusion, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Class maps ``(N, H, W)`` int64 at the input size."""
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.evaluation_logits(images).argmax(dim=1)
