"""albumentations pipelines that augment uint8 HWC RGB arrays and end in float CHW tensors in [0, 1].

One module per task: :mod:`.classification`, :mod:`.detection` (boxes with their per-box fields,
the SSD augmentations), :mod:`.segmentation` (class masks, DeepLab's augmentation); :mod:`.common`
holds the tensor tail they share. The models normalise the images themselves. The names are
re-exported here lazily: importing one task's pipelines loads no other task's.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "MEAN_PIXEL": "common",
    "classification_eval_transform": "classification",
    "classification_train_transform": "classification",
    "BBOX_FIELDS": "detection",
    "DETECTION_AUGMENTATIONS": "detection",
    "RandomIoUCrop": "detection",
    "ZoomOut": "detection",
    "detection_eval_transform": "detection",
    "detection_train_transform": "detection",
    "segmentation_eval_transform": "segmentation",
    "segmentation_train_transform": "segmentation",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
