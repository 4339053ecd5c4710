"""One LightningModule per task, each the training recipe around a plain model."""

from .base import CHECKPOINT_KEY, VisionTask
from .classification import ClassificationTask
from .detection import DetectionTask
from .multitask import MultiTaskTask
from .segmentation import SegmentationTask

TASKS: dict[str, type[VisionTask]] = {cls.name: cls for cls in (ClassificationTask, DetectionTask, SegmentationTask, MultiTaskTask)}

__all__ = ["CHECKPOINT_KEY", "TASKS", "ClassificationTask", "DetectionTask", "MultiTaskTask", "SegmentationTask", "VisionTask"]
