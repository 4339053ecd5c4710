"""The on-disk formats: one module per reader, with the records and datasets they produce.

- :mod:`.image_folder`: ImageFolder classification (``root/<split>/<class>/*.jpg``).
- :mod:`.detection`: what every detection format shares (records, dataset, batching, box checks);
  :mod:`.coco` (COCO instances JSON), :mod:`.voc_xml` (Pascal VOC XML), :mod:`.voc_folder` (a flat
  folder of images and VOC XML files) and :mod:`.yolo` (YOLO txt labels) read into it.
- :mod:`.masks`: class masks and (image, mask) pairs (records, checks, dataset, batching);
  :mod:`.voc_segmentation` (Pascal VOC / SBD) and :mod:`.mask_folder` (a custom folder) read into it.
- :mod:`.voc`: the Pascal VOC folder layout that both VOC readers share.

Importing this package imports none of them; the public names are re-exported by :mod:`vision_tasks.data`.
"""
