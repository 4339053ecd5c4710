"""Image classification (paper section 6.1): cross-entropy, top-1 / top-5 accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from .base import OptimizerFactory, SchedulerFactory, VisionTask


class ClassificationTask(VisionTask):
    """Trains and evaluates an image classifier returning logits ``(N, num_classes)``.

    Logs ``train/loss``, ``train/acc1``, ``val/loss``, ``val/acc1``, ``val/acc5`` (and ``test/...``),
    accuracy from torchmetrics (synchronised across DDP processes).

    Args:
        model: a classifier, e.g. :func:`vision_tasks.models.mobilenet_v2_classifier`; it must have
            a ``num_classes`` attribute.
        optimizer, scheduler, scheduler_interval, norm_weight_decay, monitor, backbone_lr_mult: see :class:`VisionTask`.
        label_smoothing: cross-entropy label smoothing (TF-Slim's MobileNetV2 recipe: 0.1).

    Example::

        task = ClassificationTask(mobilenet_v2_classifier(num_classes=8),
                                  optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9))
        pl.Trainer(max_epochs=1).fit(task, datamodule=SyntheticClassificationDataModule())
    """

    name = "classification"
    monitor = "val/acc1"

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        norm_weight_decay: float | None = None,
        label_smoothing: float = 0.0,
        monitor: str | None = None,
        backbone_lr_mult: float = 1.0,
    ) -> None:
        super().__init__(model, optimizer, scheduler, scheduler_interval, norm_weight_decay, monitor, backbone_lr_mult)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        num_classes = getattr(model, "num_classes", None)
        if not isinstance(num_classes, int):
            raise ValueError(f"{type(model).__name__} must expose an integer num_classes attribute")
        self.label_smoothing = label_smoothing
        self.train_metrics = MetricCollection({"acc1": MulticlassAccuracy(num_classes, top_k=1)}, prefix="train/")
        eval_metrics = MetricCollection(
            {
                "acc1": MulticlassAccuracy(num_classes, top_k=1),
                "acc5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes)),
            }
        )
        self.val_metrics = eval_metrics.clone(prefix="val/")
        self.test_metrics = eval_metrics.clone(prefix="test/")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        self.train_metrics.update(logits.detach(), labels)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch, metrics: MetricCollection, stage: str) -> None:
        images, labels = batch
        logits = self.model(images)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), sync_dist=True)
        metrics.update(logits, labels)
        self.log_dict(metrics, prog_bar=stage == "val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        probs = self.model(images).softmax(dim=1)
        scores, labels = probs.topk(min(5, probs.shape[1]), dim=1)
        return {"labels": labels, "scores": scores}
