"""The LightningDataModules, one module per task: :mod:`.classification`, :mod:`.detection` (with
:mod:`.detection_custom`: a flat VOC folder, YOLO txt), :mod:`.segmentation`, on the shared loader plumbing
of :mod:`.base`.

Importing this package imports none of them; the public names are re-exported by :mod:`vision_tasks.data`.
"""
