"""Task heads on top of a backbone's named feature maps. Plain ``nn.Module``s (torch + torchvision.ops only)."""

from .classifier import ClassifierHead
from .detection import BoxCoder, DefaultBoxGenerator, SSDLoss, match_anchors, postprocess_detections
from .ssdlite import EXTRA_DEPTHS, SSDLiteHead

__all__ = [
    "EXTRA_DEPTHS",
    "BoxCoder",
    "ClassifierHead",
    "DefaultBoxGenerator",
    "SSDLiteHead",
    "SSDLoss",
    "match_anchors",
    "postprocess_detections",
]
