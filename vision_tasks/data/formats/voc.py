"""The Pascal VOC folder layout that the detection and the segmentation readers share.

``root`` is the folder holding ``VOC<year>`` (e.g. ``VOCdevkit``) or that folder itself;
:func:`voc_base` finds which. The readers are :func:`~vision_tasks.data.formats.voc_xml.read_voc`
(detection XML) and :func:`~vision_tasks.data.formats.voc_segmentation.read_voc_segmentation`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError

__all__ = ["VOC_LAYOUT", "VOC_SEG_LAYOUT", "voc_base"]

VOC_LAYOUT = "root/VOC<year>/{Annotations,JPEGImages,ImageSets/Main/<split>.txt}"

VOC_SEG_LAYOUT = (
    "root/VOC<year>/ImageSets/Segmentation/<split>.txt listing ids, with root/VOC<year>/JPEGImages/<id>.jpg "
    "and root/VOC<year>/<masks>/<id>.png"
)

# The folders (relative to VOC<year>) that mark a VOC<year> folder holding the data of a task.
_MARKERS: dict[str, tuple[str, ...]] = {
    "detection": ("Annotations",),
    "segmentation": ("ImageSets/Segmentation", "JPEGImages"),
}


def voc_base(root: Path, year: str, task: str) -> Path:
    """``root/VOC<year>``, or ``root`` itself when it is that folder.

    ``task`` (``"detection"`` or ``"segmentation"``) says which folders mark it: ``Annotations``
    for detection; ``ImageSets/Segmentation`` or ``JPEGImages`` for segmentation.

    Raises:
        DataError: neither folder holds them; the message names what was looked for and the layout.
    """
    if task not in _MARKERS:
        raise ValueError(f"task must be one of {sorted(_MARKERS)}, got {task!r}")
    for base in (root / f"VOC{year}", root):
        if any((base / marker).is_dir() for marker in _MARKERS[task]):
            return base
    if task == "detection":
        raise DataError(
            f"no VOC{year} data under {root}: found no {root / f'VOC{year}' / 'Annotations'}; expected the layout "
            f"{VOC_LAYOUT}"
        )
    raise DataError(
        f"no VOC{year} segmentation data under {root}: found neither {root / f'VOC{year}' / 'ImageSets'} nor "
        f"{root / 'ImageSets'}; expected the layout {VOC_SEG_LAYOUT}"
    )
