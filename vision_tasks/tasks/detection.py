"""Object detection (paper section 6.2): SSD losses, COCO-protocol mAP from torchmetrics over pycocotools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Hashable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_convert

from ..files import atomic_write
from ..models.transfer import match_labels
from .base import OptimizerFactory, SchedulerFactory, VisionTask

__all__ = ["MAP_KEYS", "DetectionTask", "detection_label_map", "detection_losses", "log_map", "map_metric"]

# The scalar results of torchmetrics' MeanAveragePrecision that are logged (COCO's AP/AR summary).
MAP_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")


def map_metric() -> MeanAveragePrecision:
    """The COCO-protocol box mAP of every detection evaluation (torchmetrics over pycocotools, boxes xyxy)."""
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")


def log_map(module: Any, metric: MeanAveragePrecision, stage: str) -> None:
    """Log ``<stage>/<key>`` for the :data:`MAP_KEYS` of ``metric`` from ``module`` (a LightningModule), then reset it."""
    results = metric.compute()
    for key in MAP_KEYS:  # already reduced over processes by torchmetrics
        module.log(f"{stage}/{key}", results[key].float(), prog_bar=key in ("map", "map_50"))
    metric.reset()


def detection_losses(losses: dict[str, torch.Tensor], localization_weight: float) -> dict[str, torch.Tensor]:
    """``{"loss", "loss_cls", "loss_box"}`` from an SSD loss's ``{"classification", "localization"}``:
    ``loss = classification + localization_weight * localization``."""
    total = losses["classification"] + localization_weight * losses["localization"]
    return {"loss": total, "loss_cls": losses["classification"], "loss_box": losses["localization"]}


def detection_label_map(model_keys: Sequence[Hashable], data_keys: Sequence[Hashable]) -> list[int]:
    """For each label of a model, the dataset label with the same key, or -1 where the dataset has none.

    The keys are the category ids (or, lacking those, the class names) of the model's labels and of the
    dataset's, in label order: e.g. a COCO detector of the TF Object Detection API has 90 outputs with the
    category ids 1..90, ten of which COCO never annotated, and a COCO dataset has 80 labels with the ids
    1, 2, ..., 90 less those ten.

    Raises:
        ValueError: the keys have nothing in common, or the dataset's repeat one (no mapping then).
    """
    try:
        return match_labels(model_keys, data_keys)
    except ValueError as err:
        raise ValueError(f"the model's labels and the dataset's: {err}") from None


class DetectionTask(VisionTask):
    """Trains and evaluates an SSD-style detector such as :func:`vision_tasks.models.ssdlite_mobilenet_v2`.

    The model provides ``forward_head(images)``, ``loss(head_out, targets)`` and
    ``postprocess(head_out, original_sizes)`` (see :class:`~vision_tasks.models.SSDLiteMobileNetV2`:
    images in [0, 1], detections mapped back to the images on disk by the model itself); batches are
    ``(images, targets)`` as :func:`vision_tasks.data.detection_collate` makes them, each target with
    the boxes of the network input (for the loss), the image's ``orig_size`` and its own
    ``annotations`` in the pixels of the image on disk (for the metric).

    Evaluation follows the COCO protocol through torchmetrics' ``MeanAveragePrecision``
    (pycocotools backend) on each image's original pixels: crowd (and VOC "difficult") boxes are
    ignored as COCO does, and the annotation ``area`` decides small / medium / large. Logs ``val/map``, ``val/map_50``, ``val/map_75``,
    ``val/map_{small,medium,large}``, ``val/mar_{1,10,100}``, ``val/loss`` and the training losses.

    With ``keep_results = True`` (set by ``tools/test.py``) the detections of the last evaluation
    are kept and :meth:`export_results` writes them as ``detections.json`` in the COCO results
    format, with the dataset's own image and category ids.

    A model whose labels are not the dataset's (a released detector with its own label set, e.g. the 90
    COCO ids of the TF Object Detection API on an 80-category COCO dataset) is evaluated through
    ``label_map`` (:func:`detection_label_map`): its detections take the dataset's labels, those of
    classes the dataset lacks are dropped, before the metric and ``detections.json``; the evaluation
    loss sees the ground truth in the model's labels (boxes of classes the model lacks left out).
    Training and ``predict_step`` keep the model's own labels.

    Args:
        model: the detector; it must expose an integer ``num_classes`` (foreground classes).
        optimizer, scheduler, scheduler_interval, norm_weight_decay, monitor, backbone_lr_mult: see :class:`VisionTask`.
        localization_weight: weight of the box loss against the classification loss (TF: 1.0).
        label_map: for evaluation, the dataset label of each of the model's ``num_classes`` labels, -1 for
            none; ``None`` (default): the model's labels are the dataset's.
    """

    name = "detection"
    monitor = "val/map"

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        norm_weight_decay: float | None = None,
        localization_weight: float = 1.0,
        monitor: str | None = None,
        backbone_lr_mult: float = 1.0,
        label_map: Sequence[int] | None = None,
    ) -> None:
        super().__init__(model, optimizer, scheduler, scheduler_interval, norm_weight_decay, monitor, backbone_lr_mult)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        if not isinstance(getattr(model, "num_classes", None), int):
            raise ValueError(f"{type(model).__name__} must expose an integer num_classes attribute")
        for method in ("forward_head", "loss", "postprocess"):
            if not callable(getattr(model, method, None)):
                raise ValueError(f"{type(model).__name__} has no {method}() method; DetectionTask needs an SSD-style model")
        self.localization_weight = localization_weight
        if label_map is not None:
            label_map = [int(label) for label in label_map]
            if len(label_map) != model.num_classes or min(label_map) < -1:
                raise ValueError(f"label_map needs one dataset label (or -1) per model class ({model.num_classes}), "
                                 f"got {len(label_map)} entries")
        self.label_map = label_map
        self.val_map = self._map_metric()
        self.test_map = self._map_metric()
        self.category_ids: list[int] | None = None
        self.detections: list[dict[str, Any]] = []

    @staticmethod
    def _map_metric() -> MeanAveragePrecision:
        return map_metric()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        ids = getattr(datamodule, "category_ids", None)
        if ids is not None:
            self.category_ids = [int(i) for i in ids]

    # ---------------------------------------------------------------- training
    def _losses(self, head_out: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return detection_losses(self.model.loss(head_out, targets), self.localization_weight)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self._losses(self.model.forward_head(images), targets)
        batch_size = images.shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, on_step=False, on_epoch=True,
                      batch_size=batch_size)
        return losses["loss"]

    # ---------------------------------------------------------------- evaluation
    def _evaluate(self, batch, metric: MeanAveragePrecision, stage: str) -> None:
        images, targets = batch
        head_out = self.model.forward_head(images)
        loss = self._losses(head_out, self._model_targets(targets))["loss"]
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=images.shape[0])
        # the model maps its detections back to the images on disk; the ground truth is their own annotation
        detections = self._dataset_labels(self.model.postprocess(head_out, [t["orig_size"] for t in targets]))
        metric.update(detections, [t["annotations"] for t in targets])
        if self.keep_results:
            self.detections += self._coco_results(detections, targets)

    def _dataset_labels(self, detections: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """Detections with the dataset's labels (``label_map``), those of classes the dataset lacks dropped."""
        if self.label_map is None:
            return detections
        mapped = []
        for det in detections:
            labels = torch.as_tensor(self.label_map, device=det["labels"].device)[det["labels"]]
            keep = labels >= 0
            mapped.append({**{k: v[keep] for k, v in det.items()}, "labels": labels[keep]})
        return mapped

    def _model_targets(self, targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Targets with the model's labels (the inverse of ``label_map``), boxes of classes the model lacks left out."""
        if self.label_map is None:
            return targets
        size = max(max(self.label_map) + 1, max((int(t["labels"].max()) + 1 for t in targets if t["labels"].numel()),
                                                default=0))
        inverse = torch.full((size,), -1, dtype=torch.int64)
        for model_label, data_label in enumerate(self.label_map):
            if data_label >= 0:
                inverse[data_label] = model_label
        mapped = []
        for target in targets:
            labels = inverse.to(target["labels"].device)[target["labels"]]
            keep = labels >= 0
            per_box = {k: target[k][keep] for k in ("boxes", "iscrowd", "area") if k in target}
            mapped.append({**target, **per_box, "labels": labels[keep]})
        return mapped

    def _log_map(self, metric: MeanAveragePrecision, stage: str) -> None:
        log_map(self, metric, stage)

    def on_validation_epoch_start(self) -> None:
        self.detections = []

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_map, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")

    def on_test_epoch_start(self) -> None:
        self.detections = []

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_map, "test")

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")

    def predict_step(self, batch, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        """Detections per image in the pixels of the image on disk."""
        images, targets = batch
        return self.model.postprocess(self.model.forward_head(images), [t["orig_size"] for t in targets])

    # ---------------------------------------------------------------- COCO results
    def _coco_results(self, detections: list[dict[str, torch.Tensor]], targets: list[dict[str, Any]]) -> list[dict]:
        """Detections in the COCO results format: the dataset's image and category ids, xywh boxes."""
        ids = self.category_ids or list(range(1, self.model.num_classes + 1))
        results = []
        for det, target in zip(detections, targets):
            image_id = int(target["image_id"])
            boxes = box_convert(det["boxes"], "xyxy", "xywh").tolist()
            for box, score, label in zip(boxes, det["scores"].tolist(), det["labels"].tolist()):
                results.append({"image_id": image_id, "category_id": ids[label],
                                "bbox": [round(v, 2) for v in box], "score": round(score, 5)})
        return results

    def export_results(self, run_dir: str | Path) -> Path | None:
        """Write the kept detections of the last evaluation as ``run_dir/detections.json`` (all processes' results)."""
        detections = self.detections
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[list[dict]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, detections)
            detections = [d for part in gathered for d in part]
        if self._trainer is not None and not self._trainer.is_global_zero:
            return None
        return atomic_write(Path(run_dir) / "detections.json", json.dumps(detections))
