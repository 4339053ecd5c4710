"""Task heads on top of a backbone's named feature maps (classifier, SSDLite, DeepLabv3). Plain ``nn.Module``s (torch + torchvision.ops only)."""

from .classifier import ClassifierHead
from .deeplab import ASPP_BASE_RATES, DeepLabV3Head, FCNAuxHead, aspp_rates, upsample_logits
from .detection import BoxCoder, DefaultBoxGenerator, SSDLoss, match_anchors, postprocess_detections
from .ssdlite import EXTRA_DEPTHS, SSDLiteHead

__all__ = [
    "ASPP_BASE_RATES",
    "DeepLabV3Head",
    "FCNAuxHead",
    "aspp_rates",
    "upsample_logits",
    "EXTRA_DEPTHS",
    "BoxCoder",
    "ClassifierHead",
    "DefaultBoxGenerator",
    "SSDLiteHead",
    "SSDLoss",
    "match_anchors",
    "postprocess_detections",
]
