"""Procedural shape datasets, written once to disk in the real formats so the real readers serve them.

Every task's embedded default dataset is drawn here from a seed: one of :data:`SHAPES` per image for
classification (ImageFolder layout); several shapes per image for detection (COCO JSON, with tight
boxes and RLE masks of what is visible of each shape); several shapes per image for segmentation
(Pascal VOC layout, palette PNG class masks with a 255 "ignore" border on anti-aliased edges). Only the
shape outline carries the class: size, position, rotation, fill (colour and texture), background and
distractors are random nuisances, so a model has to learn shape to score well, and a broken pipeline
(labels shuffled, wrong normalisation) shows up as chance accuracy.

Modules:

- :mod:`.drawing` (with the outlines in :mod:`.outlines`): the shape primitives, whole pictures
  (:func:`render_shapes`) and one sample of each task (``draw_*_image``).
- :mod:`.cache`: where the sets go (:func:`synthetic_root`), their manifest, atomic generation, the
  parameter checks and the per-sample generators.
- :mod:`.classification`, :mod:`.detection`, :mod:`.segmentation`: the ``generate_*`` writers
  (ImageFolder, COCO JSON: the only module that imports pycocotools, Pascal VOC); :mod:`.multitask`: the
  multi-task set, the detection set's COCO writer with instance masks under its own name and defaults.

Each image draws from its own generator, seeded by ``(seed, split, class, index)``, so an image does
not depend on how many others are generated or in which order. Datasets are written into a
temporary sibling folder and renamed into place, with a ``synthetic.json`` manifest; an existing
folder is reused only when its manifest has the same parameters, and a folder the generator did not
write is never touched. The names below are re-exported lazily: importing one writer loads no other.

Example::

    root = generate_classification(synthetic_root("classification"), num_train_per_class=300)
    # root/train/circle/00000.png ... root/val/crescent/00049.png, root/synthetic.json
    root = generate_detection(synthetic_root("detection"))
    # root/annotations/instances_{train,val}2017.json, root/{train,val}2017/000001.png ...
    root = generate_segmentation(synthetic_root("segmentation"))
    # root/VOC2012/{JPEGImages,SegmentationClass}/000001.png, root/VOC2012/ImageSets/Segmentation/{train,val}.txt
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "SHAPES": "..classes",
    "DATA_DIR_ENV": "..common",
    "default_data_dir": "..common",
    "GENERATOR_VERSION": "cache",
    "MANIFEST_NAME": "cache",
    "synthetic_root": "cache",
    "MAX_LAYOUT_ATTEMPTS": "drawing",
    "MIN_CONTRAST": "drawing",
    "MIN_LABEL_FRACTION": "drawing",
    "MIN_VISIBLE_FRACTION": "drawing",
    "add_distractors": "drawing",
    "composite": "drawing",
    "contrasting_fill": "drawing",
    "draw_classification_image": "drawing",
    "draw_detection_image": "drawing",
    "draw_segmentation_image": "drawing",
    "mask_bbox": "drawing",
    "random_background": "drawing",
    "random_box": "drawing",
    "render_shapes": "drawing",
    "shape_coverage": "drawing",
    "shape_mask": "drawing",
    "generate_classification": "classification",
    "generate_detection": "detection",
    "generate_segmentation": "segmentation",
    "generate_multitask": "multitask",
    "write_coco_shapes": "detection",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
