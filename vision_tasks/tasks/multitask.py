"""Joint training of the heads of :class:`~vision_tasks.models.MultiTaskMobileNetV2`: the single-task losses, summed
with fixed weights or learned per-task uncertainty weights (Kendall et al., CVPR 2018), and the single-task metrics.

Batches are ``(images, targets)`` with ``targets`` by head name (:func:`~vision_tasks.data.formats.instances.multitask_collate`):
``classification`` the multi-hot image labels ``(N, C)``, ``detection`` the list of detection targets,
``segmentation`` the class-index masks ``(N, H, W)``. A batch that lacks a head's labels counts no loss for that
head; a batch may also be a mapping of source name to such pairs (several sources at once, e.g. from
Lightning's ``CombinedLoader``), each head's loss then being the mean over the sources that carry its labels.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix, MultilabelAveragePrecision

from ..models.multitask import HEADS
from .base import OptimizerFactory, SchedulerFactory, VisionTask
from .detection import MAP_KEYS, detection_losses, log_map, map_metric
from .segmentation import log_segmentation_scores, pixel_cross_entropy

__all__ = ["HEAD_METRICS", "LossWeighting", "MultiTaskTask", "check_head_labels"]

# The validation metrics each head logs (``val/<name>``), under the single-task runs' names.
HEAD_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("label_map",),
    "detection": MAP_KEYS,
    "segmentation": ("miou", "pixel_acc"),
}
UNCERTAINTY = "uncertainty"


def check_head_labels(heads: Sequence[str], datamodule: Any) -> None:
    """Refuse, before training, a data source that carries none of the labels a chosen head needs.

    ``datamodule.label_types`` lists the heads a data module has labels for (a multi-task data module: all
    three); a data module without it is taken to serve all. Raises ValueError naming the source, the heads
    without labels and the labels it has.
    """
    label_types = getattr(datamodule, "label_types", None)
    if label_types is None:
        return
    missing = [head for head in heads if head not in label_types]
    if missing:
        raise ValueError(
            f"the data ({type(datamodule).__name__}) has no labels for the {', '.join(missing)} head(s) of the model: "
            f"it gives {', '.join(label_types) or 'none'}; drop those heads ({', '.join(f'model.heads.{h}=false' for h in missing)}) "
            "or add a data source with their labels")


class LossWeighting(nn.Module):
    """The total loss of the heads' losses: fixed weights, or learned per-task uncertainty (Kendall et al. 2018).

    Fixed: ``sum_h w_h * L_h``. ``"uncertainty"``: each head ``h`` learns ``s_h = log sigma_h^2`` (``log_vars``,
    starting at 0, i.e. weight 1) and the total is ``sum_h exp(-s_h) * L_h + s_h`` (Kendall, Gal and Cipolla,
    "Multi-Task Learning Using Uncertainty to Weigh Losses", CVPR 2018, eq. 7-10 with the log variance learned
    for numerical stability, section 3.2; the factor 1/2 of the regression terms is dropped, as in common
    implementations: it scales the weight, not what is learned). Heads missing from the losses of a batch
    (no labels there) add nothing.

    Args:
        heads: the head names.
        weights: head -> weight (heads left out: 1.0), or ``"uncertainty"``.
    """

    def __init__(self, heads: Sequence[str], weights: Mapping[str, float] | str | None = None) -> None:
        super().__init__()
        self.heads = tuple(heads)
        self.learned = weights == UNCERTAINTY
        if isinstance(weights, str) and not self.learned:
            raise ValueError(f"loss_weights must be a mapping of head name to weight or {UNCERTAINTY!r}, got {weights!r}")
        self.weights = {head: 1.0 for head in self.heads} if self.learned or weights is None else dict(weights)
        self.log_vars = nn.ParameterDict({head: nn.Parameter(torch.zeros(())) for head in self.heads}) \
            if self.learned else None

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        terms = []
        for head, loss in losses.items():
            if self.log_vars is not None:
                log_var = self.log_vars[head]
                terms.append(torch.exp(-log_var) * loss + log_var)
            else:
                terms.append(self.weights[head] * loss)
        if not terms:
            raise ValueError("a batch with labels for none of the heads")
        return torch.stack(terms).sum()

    def current(self) -> dict[str, float]:
        """The weight of each head's loss now (``exp(-s_h)`` when learned)."""
        if self.log_vars is None:
            return dict(self.weights)
        return {head: float(torch.exp(-p.detach())) for head, p in self.log_vars.items()}


class MultiTaskTask(VisionTask):
    """Trains and evaluates a :class:`~vision_tasks.models.MultiTaskMobileNetV2` on every head it has, at once.

    Losses, each the single-task one: classification (multi-label: which classes are present) binary
    cross-entropy with logits, averaged over the classes; detection the SSD loss
    (:func:`~vision_tasks.tasks.detection.detection_losses`, ``localization_weight``); segmentation the pixel-wise
    cross-entropy ignoring ``ignore_index`` (:func:`~vision_tasks.tasks.segmentation.pixel_cross_entropy`), plus
    ``aux_weight`` times that of the auxiliary logits. They are summed by :class:`LossWeighting`
    (``loss_weights``).

    Metrics, under the single-task names: ``val/label_map`` (torchmetrics' ``MultilabelAveragePrecision``, the
    mean over the classes of the average precision of the image labels), ``val/map``, ``val/map_50``, ...
    (:data:`~vision_tasks.tasks.detection.MAP_KEYS`, COCO protocol on each image's own pixels, as
    :class:`~vision_tasks.tasks.DetectionTask`), ``val/miou``, ``val/pixel_acc``, ``val/iou/<class>`` (at the
    network input's size); ``val/loss`` (the sum of the heads' losses, unweighted) and ``val/loss_<head>``;
    ``train/loss``, ``train/loss_<head>`` and, learned, ``train/loss_weight/<head>``. Likewise ``test/...``.

    Args:
        model: a :class:`~vision_tasks.models.MultiTaskMobileNetV2`.
        optimizer, scheduler, scheduler_interval, norm_weight_decay, backbone_lr_mult: see :class:`VisionTask`; the
            learned log variances are in a group of their own without weight decay.
        loss_weights: head -> weight (heads left out: 1; a head the model lacks is refused:
            ``MultiTaskMobileNetV2.check_loss_weights``), or ``"uncertainty"``.
        monitor: the metric of ``best.ckpt``; ``None``: ``val/map`` with a detection head, else ``val/miou``, else
            ``val/label_map``. A metric no head of the model logs is refused.
        localization_weight: of the detection box loss (see :class:`~vision_tasks.tasks.DetectionTask`).
        ignore_index, aux_weight: of the segmentation loss (see :class:`~vision_tasks.tasks.SegmentationTask`).

    Example::

        model = MultiTaskMobileNetV2({"classification": {"num_classes": 8}, "detection": {"num_classes": 8},
                                      "segmentation": {"num_classes": 9}}, width_mult=0.5)
        task = MultiTaskTask(model, optimizer=functools.partial(torch.optim.AdamW, lr=3e-3), loss_weights="uncertainty")
        pl.Trainer(max_epochs=10).fit(task, datamodule=SyntheticMultiTaskDataModule())
    """

    name = "multitask"
    monitor = "val/map"

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "step",
        norm_weight_decay: float | None = None,
        loss_weights: Mapping[str, float] | str | None = None,
        monitor: str | None = None,
        backbone_lr_mult: float = 1.0,
        localization_weight: float = 1.0,
        ignore_index: int = 255,
        aux_weight: float = 0.0,
    ) -> None:
        super().__init__(model, optimizer, scheduler, scheduler_interval, norm_weight_decay, monitor, backbone_lr_mult)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        heads = getattr(model, "head_names", None)
        if heads is None or not callable(getattr(model, "forward_heads", None)):
            raise ValueError(f"MultiTaskTask trains a MultiTaskMobileNetV2, not a {type(model).__name__}")
        self.heads: tuple[str, ...] = tuple(heads)
        if loss_weights != UNCERTAINTY:
            if isinstance(loss_weights, str):
                raise ValueError(f"task.loss_weights must be a mapping of head name to weight or {UNCERTAINTY!r}, "
                                 f"got {loss_weights!r}")
            loss_weights = model.check_loss_weights(loss_weights)  # unknown heads, heads the model lacks, values
        self.loss_weighting = LossWeighting(self.heads, loss_weights)
        if monitor is None:
            self.monitor = next(f"val/{HEAD_METRICS[h][0]}" for h in ("detection", "segmentation", "classification")
                                if h in self.heads)
        logged = {f"val/{m}" for h in self.heads for m in HEAD_METRICS[h]} | {"val/loss"} | {
            f"val/loss_{h}" for h in self.heads}
        if self.monitor not in logged and not self.monitor.startswith("val/iou/"):
            raise ValueError(f"monitor={self.monitor!r} is no metric of this model's heads ({', '.join(self.heads)}); "
                             f"choose from {', '.join(sorted(logged))}")
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        self.localization_weight, self.ignore_index, self.aux_weight = localization_weight, ignore_index, aux_weight
        self.segmentation_class_names: list[str] | None = None
        self.metrics = nn.ModuleDict({stage: self._stage_metrics() for stage in ("val", "test")})
        # each head's evaluation loss, averaged over the images of the sources with its labels (one value per epoch,
        # whichever loaders carry it: several sources are evaluated one after the other)
        self.eval_losses = nn.ModuleDict({stage: nn.ModuleDict({h: MeanMetric() for h in self.heads})
                                          for stage in ("val", "test")})

    def _stage_metrics(self) -> nn.ModuleDict:
        metrics: dict[str, nn.Module] = {}
        if "classification" in self.heads:
            metrics["classification"] = MultilabelAveragePrecision(self.model.classification.num_classes,
                                                                   average="macro")
        if "detection" in self.heads:
            metrics["detection"] = map_metric()
        if "segmentation" in self.heads:
            metrics["segmentation"] = MulticlassConfusionMatrix(self.model.segmentation.num_classes,
                                                                ignore_index=self.ignore_index)
        return nn.ModuleDict(metrics)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        check_head_labels(self.heads, datamodule)
        counts = getattr(datamodule, "head_num_classes", None) or {}
        for head in self.heads:
            have = getattr(self.model, head).num_classes
            if head in counts and counts[head] != have:
                raise ValueError(f"the {head} head has {have} classes but the data gives {counts[head]} for it "
                                 f"({type(datamodule).__name__}); build the model with the data's classes")
        names = getattr(datamodule, "segmentation_class_names", None)
        if names is not None:
            self.segmentation_class_names = list(names)

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        if self.loss_weighting.log_vars is not None:
            groups.append({"params": list(self.loss_weighting.log_vars.values()), "weight_decay": 0.0})
        return groups

    # ---------------------------------------------------------------- losses
    def head_losses(self, out: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Each head's loss, for the heads whose labels ``targets`` carries."""
        losses: dict[str, torch.Tensor] = {}
        if "classification" in self.heads and targets.get("classification") is not None:
            labels = targets["classification"]
            losses["classification"] = F.binary_cross_entropy_with_logits(out["classification"], labels.to(
                out["classification"].dtype))
        if "detection" in self.heads and targets.get("detection") is not None:
            parts = detection_losses(self.model.detection.loss(out["detection"], targets["detection"]),
                                     self.localization_weight)
            losses["detection"] = parts["loss"]
        if "segmentation" in self.heads and targets.get("segmentation") is not None:
            masks = targets["segmentation"]
            loss = pixel_cross_entropy(out["segmentation"], masks, self.ignore_index)
            if self.aux_weight > 0 and out.get("segmentation_aux") is not None:
                loss = loss + self.aux_weight * pixel_cross_entropy(out["segmentation_aux"], masks, self.ignore_index)
            losses["segmentation"] = loss
        return losses

    @staticmethod
    def _sources(batch: Any) -> list[tuple[torch.Tensor, Mapping[str, Any]]]:
        """The ``(images, targets)`` pairs of a batch: itself, or the values of a mapping of sources."""
        if isinstance(batch, Mapping):
            return [pair for pair in batch.values() if pair is not None]
        return [batch]

    def _batch_losses(self, batch: Any) -> tuple[dict[str, torch.Tensor], int, list]:
        """Each head's loss over the sources of ``batch`` (mean over the sources with its labels), the number of
        images, and per source ``(images, targets, outputs)``."""
        per_head: dict[str, list[torch.Tensor]] = {}
        passes, count = [], 0
        for images, targets in self._sources(batch):
            out = self.model.forward_heads(images)
            for head, loss in self.head_losses(out, targets).items():
                per_head.setdefault(head, []).append(loss)
            passes.append((images, targets, out))
            count += images.shape[0]
        return {head: torch.stack(values).mean() for head, values in per_head.items()}, count, passes

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        losses, batch_size, _ = self._batch_losses(batch)
        loss = self.loss_weighting(losses)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log_dict({f"train/loss_{head}": value for head, value in losses.items()}, on_step=False, on_epoch=True,
                      batch_size=batch_size)
        if self.loss_weighting.learned:
            self.log_dict({f"train/loss_weight/{head}": w for head, w in self.loss_weighting.current().items()},
                          on_step=False, on_epoch=True, batch_size=batch_size)
        return loss

    # ---------------------------------------------------------------- evaluation
    def _evaluate(self, batch, stage: str) -> None:
        losses, _, passes = self._batch_losses(batch)
        for head, value in losses.items():
            count = sum(images.shape[0] for images, targets, _ in passes if targets.get(head) is not None)
            self.eval_losses[stage][head].update(value.detach(), count)
        metrics = self.metrics[stage]
        for images, targets, out in passes:
            if "classification" in metrics and targets.get("classification") is not None:
                metrics["classification"].update(out["classification"].sigmoid(), targets["classification"].long())
            if "detection" in metrics and targets.get("detection") is not None:
                detections = self.model.detection.postprocess(out["detection"],
                                                             [t["orig_size"] for t in targets["detection"]])
                metrics["detection"].update(detections, [t["annotations"] for t in targets["detection"]])
            if "segmentation" in metrics and targets.get("segmentation") is not None:
                masks = targets["segmentation"]
                logits = out["segmentation"]
                if tuple(logits.shape[-2:]) != tuple(masks.shape[-2:]):
                    logits = F.interpolate(logits, size=tuple(masks.shape[-2:]), mode="bilinear", align_corners=True)
                metrics["segmentation"].update(logits.argmax(dim=1).flatten(), masks.flatten())

    def _log_metrics(self, stage: str) -> None:
        losses = {}
        for head, mean in self.eval_losses[stage].items():
            if mean.update_count:
                losses[head] = mean.compute()
            mean.reset()
        for head, value in losses.items():
            self.log(f"{stage}/loss_{head}", value)
        if losses:
            self.log(f"{stage}/loss", torch.stack(list(losses.values())).sum())
        metrics = self.metrics[stage]
        if "classification" in metrics:
            metric = metrics["classification"]
            if metric.update_count:
                value = metric.compute()
                self.log(f"{stage}/label_map", value.float() if torch.isfinite(value) else value.new_zeros(()).float(),
                         prog_bar=stage == "val")
            metric.reset()
        if "detection" in metrics:
            log_map(self, metrics["detection"], stage)
        if "segmentation" in metrics:
            log_segmentation_scores(self, metrics["segmentation"], stage, self.segmentation_class_names)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch, batch_idx: int) -> dict[str, Any]:
        """Per head, as the model gives it in eval mode (detections in the pixels of the images on disk)."""
        images, targets = self._sources(batch)[0]
        sizes = [t["orig_size"] for t in targets["detection"]] if isinstance(targets, Mapping) and \
            targets.get("detection") is not None else None
        return self.model(images, original_sizes=sizes)
