"""Detection data: COCO and VOC readers and their errors, the synthetic COCO set, box-aware pipelines, data modules."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from vision_tasks.data import (
    SHAPES,
    VOC_CLASSES,
    CocoDetectionDataModule,
    DataError,
    DetectionDataset,
    RandomIoUCrop,
    SyntheticDetectionDataModule,
    VOCDetectionDataModule,
    ZoomOut,
    detection_collate,
    detection_eval_transform,
    detection_train_transform,
    generate_detection,
    read_coco,
    read_voc,
    synthetic_root,
)
from vision_tasks.data import synthetic
from vision_tasks.data.synthetic.cache import SPLIT_KEYS, sample_rng
from vision_tasks.data.transforms.detection import BBOX_FIELDS

# pycocotools' mask decoding, under numpy 2, warns about its own __array__ (not ours).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _save(path: Path, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Path:
    """Write a random image of ``mode``; ``size`` is (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.random.default_rng(len(str(path))).integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(path)
    return path


# A tiny COCO split: three 40x30 images (ids 5, 2, 9; image 9 without boxes), category ids 3, 7, 12.
CATEGORIES = [{"id": 12, "name": "yak"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]  # not sorted on purpose
IMAGES = [
    {"id": 5, "file_name": "a.jpg", "height": 30, "width": 40},
    {"id": 2, "file_name": "b.png", "height": 30, "width": 40},
    {"id": 9, "file_name": "c.jpg", "height": 30, "width": 40},
]
ANNOTATIONS = [
    {"id": 1, "image_id": 5, "category_id": 12, "bbox": [1, 2, 10, 5], "area": 33.5, "iscrowd": 0},
    {"id": 2, "image_id": 5, "category_id": 3, "bbox": [20, 10, 10, 10], "area": 80.0, "iscrowd": 1},
    {"id": 3, "image_id": 2, "category_id": 7, "bbox": [0, 0, 4, 6]},  # no area: the box's
]


def _coco(
    root: Path, split: str = "train2017", *, images=IMAGES, annotations=ANNOTATIONS, categories=CATEGORIES,
    write_images: bool = True,
) -> Path:
    """Write ``root/annotations/instances_<split>.json`` and (``write_images``) random images of the listed sizes."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    if write_images:
        for image in images:
            _save(root / split / image["file_name"], (image["width"], image["height"]))
    return path


# --------------------------------------------------------------------------------------------------
# read_coco


def test_read_coco_labels_boxes_crowd_area_and_negatives(tmp_path):
    path = _coco(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clean data: no warning
        ann = read_coco(path, tmp_path / "train2017")
    assert ann.class_names == ["cat", "dog", "yak"] and ann.category_ids == [3, 7, 12]
    assert [r.image_id for r in ann.records] == [2, 5, 9]  # sorted by id
    b, a, c = ann.records
    assert a.path == tmp_path / "train2017" / "a.jpg" and (a.height, a.width) == (30, 40)
    np.testing.assert_array_equal(a.boxes, [[1, 2, 11, 7], [20, 10, 30, 20]])
    assert a.labels.tolist() == [2, 0]  # category 12 -> label 2 -> back to 12
    assert [ann.category_ids[label] for label in a.labels] == [12, 3]
    assert a.iscrowd.tolist() == [0, 1] and a.area.tolist() == [33.5, 80.0]
    assert b.labels.tolist() == [1] and b.area.tolist() == [24.0]
    assert c.boxes.shape == (0, 4) and c.labels.shape == (0,)  # negatives are kept
    assert [x.dtype for x in (a.boxes, a.labels, a.iscrowd, a.area)] == [np.float32, np.int64, np.int64, np.float32]


def test_read_coco_drops_degenerate_and_clips_with_one_warning(tmp_path):
    boxes = [
        [5, 5, 0, 4],  # zero width: dropped
        [5, 5, 4, -1],  # negative height: dropped
        [50, 40, 5, 5],  # entirely outside the 40x30 image: dropped
        [-4, 2, 10, 5],  # partly outside on the left: clipped to x 0..6
        [35, 25, 10, 10],  # partly outside bottom right: clipped to 35..40, 25..30
        [1, 1, 2, 2],  # fine
    ]
    anns = [{"id": i + 1, "image_id": 5, "category_id": 3, "bbox": b} for i, b in enumerate(boxes)]
    path = _coco(tmp_path, images=[{"id": 5, "file_name": "a.jpg", "height": 30, "width": 40}], annotations=anns)
    with pytest.warns(UserWarning) as record:
        ann = read_coco(path, tmp_path / "train2017")
    assert len(record) == 1
    message = str(record[0].message)
    assert str(path) in message and "dropped 3 box(es)" in message and "clipped 2 box(es)" in message
    np.testing.assert_array_equal(ann.records[0].boxes, [[0, 2, 6, 7], [35, 25, 40, 30], [1, 1, 3, 3]])
    assert ann.records[0].area.tolist() == [30.0, 25.0, 4.0]  # no area given: the clipped box's


def test_read_coco_unparsable_json(tmp_path):
    path = tmp_path / "annotations" / "instances_train2017.json"
    path.parent.mkdir()
    path.write_text('{"images": [')
    with pytest.raises(DataError, match="cannot parse") as info:
        read_coco(path, tmp_path)
    assert str(path) in str(info.value)


def test_read_coco_missing_file_and_missing_keys(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        read_coco(tmp_path / "nothing.json", tmp_path)
    assert "nothing.json" in str(info.value)
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(DataError, match="annotations") as info:
        read_coco(path, tmp_path)
    assert str(path) in str(info.value)


def test_read_coco_missing_images_listed_up_front(tmp_path):
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 30, "width": 40} for i in range(1, 9)]
    path = _coco(tmp_path, images=images, annotations=[], write_images=False)
    _save(tmp_path / "train2017" / "1.jpg")
    with pytest.raises(DataError) as info:
        read_coco(path, tmp_path / "train2017")
    message = str(info.value)
    assert "7 of the 8 images" in message and str(path) in message and "2.jpg" in message and "and 2 more" in message


def test_read_coco_unknown_category_id(tmp_path):
    anns = [{"id": 1, "image_id": 5, "category_id": 99, "bbox": [1, 1, 2, 2]}]
    path = _coco(tmp_path, annotations=anns)
    with pytest.raises(DataError, match=r"\[99\].*\[3, 7, 12\]") as info:
        read_coco(path, tmp_path / "train2017")
    assert str(path) in str(info.value)


def test_read_coco_annotation_of_unlisted_image_or_without_bbox(tmp_path):
    path = _coco(tmp_path, annotations=[{"id": 1, "image_id": 77, "category_id": 3, "bbox": [1, 1, 2, 2]}])
    with pytest.raises(DataError, match="77"):
        read_coco(path, tmp_path / "train2017")
    path = _coco(tmp_path, annotations=[{"id": 1, "image_id": 5, "category_id": 3}])
    with pytest.raises(DataError, match="bbox") as info:
        read_coco(path, tmp_path / "train2017")
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------------------------------
# read_voc


def _voc_xml(objects, *, filename: str | None = "img.jpg", size: tuple[int, int] | None = (40, 30)) -> str:
    """A VOC annotation; objects are (name, difficult, (xmin, ymin, xmax, ymax)) in VOC's 1-based pixels."""
    parts = ["<annotation><folder>VOC</folder>"]
    if filename:
        parts.append(f"<filename>{filename}</filename>")
    if size:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, difficult, (x0, y0, x1, y1) in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated><difficult>{difficult}</difficult>"
            f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def _voc(root: Path, year: str, split: str, items: dict[str, list], **xml_kwargs) -> Path:
    """``root/VOC<year>`` with one 40x30 JPEG and XML per item id, and the split list."""
    base = root / f"VOC{year}"
    (base / "Annotations").mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for name, objects in items.items():
        _save(base / "JPEGImages" / f"{name}.jpg")
        (base / "Annotations" / f"{name}.xml").write_text(_voc_xml(objects, filename=f"{name}.jpg", **xml_kwargs))
    (base / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{name}\n" for name in items))
    return base


VOC_ITEMS = {
    "2008_000001": [("dog", 0, (1, 1, 10, 20)), ("person", 1, (5, 6, 40, 30))],
    "2008_000002": [("cat", 0, (11, 3, 20, 9))],
}


def test_read_voc_one_based_pixels_difficult_and_ids(tmp_path):
    _voc(tmp_path, "2012", "train", VOC_ITEMS)
    ann = read_voc(tmp_path, year="2012", split="train")
    assert ann.class_names == list(VOC_CLASSES) and ann.category_ids == list(range(1, 21))
    first, second = ann.records
    assert (first.image_id, second.image_id) == (0, 1)  # index in the split list
    assert first.path == tmp_path / "VOC2012" / "JPEGImages" / "2008_000001.jpg"
    np.testing.assert_array_equal(first.boxes, [[0, 0, 10, 20], [4, 5, 40, 30]])  # xmin - 1, ymin - 1, xmax, ymax
    assert [VOC_CLASSES[i] for i in first.labels] == ["dog", "person"]
    assert first.iscrowd.tolist() == [0, 1]  # difficult: ignored by evaluation
    assert first.area.tolist() == [200.0, 900.0]
    np.testing.assert_array_equal(second.boxes, [[10, 2, 20, 9]])
    easy = read_voc(tmp_path / "VOC2012", year="2012", split="train", keep_difficult=False)  # root = VOC2012 itself
    assert [VOC_CLASSES[i] for i in easy.records[0].labels] == ["dog"]


def test_read_voc_custom_classes_and_unknown_class(tmp_path):
    _voc(tmp_path, "2007", "trainval", {"a": [("widget", 0, (1, 1, 5, 5))], "b": [("gadget", 0, (2, 2, 6, 6))]})
    ann = read_voc(tmp_path, year="2007", split="trainval", class_names=["gadget", "widget"])
    assert ann.class_names == ["gadget", "widget"] and [r.labels.tolist() for r in ann.records] == [[1], [0]]
    with pytest.raises(DataError) as info:
        read_voc(tmp_path, year="2007", split="trainval", class_names=["gadget"])
    message = str(info.value)
    assert "'widget'" in message and str(tmp_path / "VOC2007" / "Annotations" / "a.xml") in message
    assert "['gadget']" in message


def test_read_voc_malformed_xml(tmp_path):
    base = _voc(tmp_path, "2012", "val", VOC_ITEMS)
    bad = base / "Annotations" / "2008_000002.xml"
    bad.write_text("<annotation><object><name>dog</name>")
    with pytest.raises(DataError, match="cannot parse") as info:
        read_voc(tmp_path, split="val")
    assert str(bad) in str(info.value)
    bad.write_text(_voc_xml([("dog", 0, (1, 1, 5, 5))]).replace("<ymax>5</ymax>", ""))
    with pytest.raises(DataError, match="ymax") as info:
        read_voc(tmp_path, split="val")
    assert str(bad) in str(info.value)


def test_read_voc_missing_pieces(tmp_path):
    with pytest.raises(DataError, match="VOC2012"):
        read_voc(tmp_path)
    base = _voc(tmp_path, "2012", "train", VOC_ITEMS)
    with pytest.raises(DataError, match="val.txt"):
        read_voc(tmp_path, split="val")
    (base / "JPEGImages" / "2008_000002.jpg").unlink()
    with pytest.raises(DataError, match="1 of the 2 images") as info:
        read_voc(tmp_path)
    assert "2008_000002.jpg" in str(info.value)


def test_read_voc_clips_and_drops_with_one_warning_and_size_from_header(tmp_path):
    # VOC boxes are inclusive: xmin == xmax is one pixel wide, xmax = xmin - 1 is empty.
    items = {"x": [("cat", 0, (30, 20, 50, 40)), ("dog", 0, (9, 8, 8, 20)), ("cow", 0, (3, 3, 9, 9))]}
    _voc(tmp_path, "2012", "train", items, size=None)  # no <size>: read from the 40x30 image
    with pytest.warns(UserWarning) as record:
        ann = read_voc(tmp_path)
    assert len(record) == 1 and "dropped 1 box(es)" in str(record[0].message)
    assert "clipped 1 box(es)" in str(record[0].message)
    (r,) = ann.records
    assert (r.height, r.width) == (30, 40)
    np.testing.assert_array_equal(r.boxes, [[29, 19, 40, 30], [2, 2, 9, 9]])


# --------------------------------------------------------------------------------------------------
# DetectionDataset and collate


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_dataset_reads_every_mode_as_three_channels(tmp_path, mode):
    images = [{"id": 1, "file_name": "x.png", "height": 30, "width": 40}]
    path = _coco(tmp_path, images=images, annotations=[], write_images=False)
    _save(tmp_path / "train2017" / "x.png", mode=mode)
    dataset = DetectionDataset(read_coco(path, tmp_path / "train2017").records, detection_eval_transform(16))
    image, target = dataset[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert target["orig_size"].tolist() == [30, 40] and target["orig_size"].dtype == torch.int64


def test_dataset_target_contract_and_no_transform(tmp_path):
    ann = read_coco(_coco(tmp_path), tmp_path / "train2017")
    image, target = DetectionDataset(ann.records)[1]  # image 5, unchanged
    assert image.shape == (3, 30, 40) and 0 <= image.min() and image.max() <= 1
    assert target["image_id"] == 5 and isinstance(target["image_id"], int)
    assert target["boxes"].tolist() == [[1, 2, 11, 7], [20, 10, 30, 20]]
    image, target = DetectionDataset(ann.records, detection_eval_transform(20))[1]  # 40x30 -> 20x20
    assert torch.allclose(target["boxes"], torch.tensor([[0.5, 4 / 3, 5.5, 14 / 3], [10, 20 / 3, 15, 40 / 3]]))
    # the image's own annotation, in the pixels of the image on disk: what evaluation compares with
    assert target["annotations"]["boxes"].tolist() == [[1, 2, 11, 7], [20, 10, 30, 20]]
    assert torch.equal(target["annotations"]["labels"], target["labels"])
    assert set(target["annotations"]) == {"boxes", "labels", "iscrowd", "area"}
    assert 0 <= image.min() and image.max() <= 1  # the model normalises
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["labels"].tolist() == [2, 0] and target["iscrowd"].tolist() == [0, 1]
    assert target["area"].tolist() == [33.5, 80.0] and target["area"].dtype == torch.float32  # original pixels
    _, target = DetectionDataset(ann.records, detection_eval_transform(20))[2]  # no boxes
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["area"].shape == (0,)


def test_dataset_unreadable_or_resized_image_names_it(tmp_path):
    ann = read_coco(_coco(tmp_path), tmp_path / "train2017")
    dataset = DetectionDataset(ann.records, detection_eval_transform(16))
    (tmp_path / "train2017" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="a.jpg"):
        dataset[1]
    _save(tmp_path / "train2017" / "a.jpg", size=(20, 30))
    with pytest.raises(DataError, match="a.jpg is 20x30 but its annotation says 40x30"):
        dataset[1]
    (tmp_path / "train2017" / "a.jpg").unlink()
    with pytest.raises(DataError, match="a.jpg"):
        dataset[1]


def test_collate_stacks_images_and_lists_targets():
    batch = [(torch.zeros(3, 8, 8), {"boxes": torch.zeros(k, 4)}) for k in (0, 2, 1)]
    images, targets = detection_collate(batch)
    assert images.shape == (3, 3, 8, 8) and [len(t["boxes"]) for t in targets] == [0, 2, 1]
    with pytest.raises(ValueError, match="fixed-size resize"):
        detection_collate([(torch.zeros(3, 8, 8), {}), (torch.zeros(3, 8, 9), {})])


# --------------------------------------------------------------------------------------------------
# Pipelines


def _rectangle_sample(height=120, width=160, box=(20, 30, 80, 70)):
    """A dark image with one bright rectangle and its box (x0, y0, x1, y1); off-centre, so a wrong flip shows."""
    image = np.full((height, width, 3), 20, dtype=np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = 235
    fields = dict(labels=np.array([4]), iscrowd=np.array([0]), area=np.array([2400.0], dtype=np.float32))
    return image, np.array([box], dtype=np.float32), fields


def _bright_box(image: torch.Tensor) -> np.ndarray:
    """Tight box of the pixels brighter than halfway between the darkest and the brightest."""
    gray = image.mean(0).numpy()
    mask = gray > (gray.min() + gray.max()) / 2
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


@pytest.mark.parametrize("augmentation", ["ssd", "ssdlite", "flip", "none"])
def test_boxes_follow_the_pixels(augmentation, monkeypatch):
    # a black zoom-out canvas, so that the box can be read back from the bright pixels
    monkeypatch.setattr("vision_tasks.data.transforms.detection.MEAN_PIXEL", (0.0, 0.0, 0.0))
    transform = detection_train_transform(64, augmentation=augmentation)
    transform.set_random_seed(0)
    image, boxes, fields = _rectangle_sample()
    scale = 64 / 160  # the resize alone
    cropped = zoomed = 0
    for _ in range(40):
        out = transform(image=image, bboxes=boxes, **fields)
        assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.float32
        (box,) = out["bboxes"]  # a single box always survives: a crop must contain its centre
        assert out["labels"].tolist() == [4] and out["iscrowd"].tolist() == [0] and out["area"].tolist() == [2400.0]
        np.testing.assert_allclose(box, _bright_box(out["image"]), atol=1.5)
        width = box[2] - box[0]
        cropped += width > 60 * scale + 1  # magnified: a crop
        zoomed += width < 60 * scale - 1  # shrunk: a zoom-out
    if augmentation == "none":
        np.testing.assert_allclose(box, [20 * scale, 30 * 64 / 120, 80 * scale, 70 * 64 / 120], atol=1e-4)
    assert (cropped > 0) == (augmentation in ("ssd", "ssdlite"))
    assert (zoomed > 0) == (augmentation == "ssd")


def test_crop_drops_boxes_with_their_fields():
    crop = RandomIoUCrop(min_scale=0.3, max_scale=0.5, sampler_options=(0.0,))
    transform = A.Compose([crop], bbox_params=A.BboxParams(format="pascal_voc", label_fields=list(BBOX_FIELDS)), seed=1)
    image = np.zeros((200, 200, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 60, 60], [140, 140, 190, 190]], dtype=np.float32)
    fields = dict(labels=np.array([1, 2]), iscrowd=np.array([0, 1]), area=np.array([11.0, 22.0], dtype=np.float32))
    kept = set()
    for _ in range(30):
        out = transform(image=image, bboxes=boxes, **fields)
        assert out["image"].shape[0] <= 100 and out["image"].shape[1] <= 100
        assert len(out["bboxes"]) == 1  # a patch of at most 100 px cannot hold both centres, and holds one
        label = int(out["labels"][0])
        assert (int(out["iscrowd"][0]), float(out["area"][0])) == {1: (0, 11.0), 2: (1, 22.0)}[label]
        kept.add(label)
    assert kept == {1, 2}


def test_crop_respects_the_minimum_iou():
    crop = RandomIoUCrop(sampler_options=(0.7,))
    transform = A.Compose([crop], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]), seed=0)
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    box = np.array([[20, 20, 80, 80]], dtype=np.float32)
    for _ in range(20):
        out = transform(image=image, bboxes=box, labels=[0])
        height, width = out["image"].shape[:2]
        x0, y0, x1, y1 = out["bboxes"][0]
        inter = (x1 - x0) * (y1 - y0)  # the box clipped to the patch
        assert inter / (60 * 60 + height * width - inter) >= 0.7 - 1e-6


def test_zoom_out_places_the_image_on_a_filled_canvas():
    zoom = ZoomOut(side_range=(2.0, 3.0), fill=(10, 20, 30), p=1.0)
    transform = A.Compose([zoom], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]), seed=0)
    image = np.full((20, 30, 3), 200, dtype=np.uint8)
    for _ in range(10):
        out = transform(image=image, bboxes=np.array([[0, 0, 30, 20]], dtype=np.float32), labels=[0])
        canvas = out["image"]
        assert 40 <= canvas.shape[0] <= 60 and 60 <= canvas.shape[1] <= 90
        x0, y0, x1, y1 = np.rint(out["bboxes"][0]).astype(int)
        assert (x1 - x0, y1 - y0) == (30, 20)
        assert (canvas[y0:y1, x0:x1] == 200).all()
        outside = np.ones(canvas.shape[:2], dtype=bool)
        outside[y0:y1, x0:x1] = False
        assert (canvas[outside] == (10, 20, 30)).all()


@pytest.mark.parametrize("augmentation", ["ssd", "ssdlite", "flip", "none"])
def test_sample_without_boxes_passes_through(augmentation):
    transform = detection_train_transform(32, augmentation=augmentation)
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    empty = dict(labels=np.zeros(0, np.int64), iscrowd=np.zeros(0, np.int64), area=np.zeros(0, np.float32))
    for _ in range(5):
        out = transform(image=image, bboxes=np.zeros((0, 4), np.float32), **empty)
        assert out["image"].shape == (3, 32, 32) and len(out["bboxes"]) == 0 and len(out["labels"]) == 0


def test_transform_arguments_are_checked():
    with pytest.raises(ValueError, match="augmentation"):
        detection_train_transform(32, augmentation="yolo")
    with pytest.raises(ValueError, match="image_size"):
        detection_eval_transform(0)
    with pytest.raises(ValueError, match="min_scale"):
        RandomIoUCrop(min_scale=0.0)
    with pytest.raises(ValueError, match="sampler_options"):
        RandomIoUCrop(sampler_options=())
    with pytest.raises(ValueError, match="side_range"):
        ZoomOut(side_range=(0.5, 2.0))


# --------------------------------------------------------------------------------------------------
# Synthetic COCO set

TINY_GEN = dict(num_train=6, num_val=3, image_size=48)


def test_generate_detection_layout_and_pycocotools(tmp_path):
    root = generate_detection(tmp_path / "shapes", **TINY_GEN)
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "synthetic.json", "train2017", "val2017"]
    assert sorted(p.name for p in (root / "val2017").iterdir()) == ["000001.png", "000002.png", "000003.png"]
    manifest = json.loads((root / "synthetic.json").read_text())
    assert manifest["task"] == "detection" and manifest["counts"] == {"train": 6, "val": 3}
    coco = COCO(str(root / "annotations" / "instances_train2017.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES)
    assert coco.getCatIds() == list(range(1, 9)) and {c["supercategory"] for c in coco.cats.values()} == {"shape"}
    assert sorted(coco.getImgIds()) == list(range(1, 7))
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann).astype(bool)
        x0, y0, x1, y1 = synthetic.mask_bbox(mask)
        assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0] and ann["area"] == mask.sum() and ann["iscrowd"] == 0
        assert ann["area"] >= 0.6 * 0.25 * (0.15 * 48) ** 2  # visible, not a sliver
    annotations = read_coco(root / "annotations" / "instances_val2017.json", root / "val2017")
    assert annotations.class_names == list(SHAPES) and len(annotations.records) == 3


def test_generate_detection_boxes_are_tight_around_the_drawn_shapes(tmp_path):
    root = generate_detection(tmp_path / "shapes", **TINY_GEN, seed=3)
    data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    contrasted = 0
    for image_id in range(1, 7):
        # Draw the image again from its seed: the same pixels, and the masks the annotations describe.
        rng = sample_rng(3, SPLIT_KEYS["train"], image_id - 1)
        image, shapes = synthetic.draw_detection_image(48, rng)
        with Image.open(root / "train2017" / f"{image_id:06d}.png") as img:
            np.testing.assert_array_equal(np.asarray(img), image)
        anns = [a for a in data["annotations"] if a["image_id"] == image_id]
        assert [a["category_id"] - 1 for a in anns] == [label for label, _ in shapes]
        for ann, (_, mask) in zip(anns, shapes):
            x0, y0, x1, y1 = synthetic.mask_bbox(mask)
            assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0]
            rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
            # The shape stands out: its pixels differ from those of the ring just outside its box.
            ring = np.zeros_like(mask)
            ring[max(y0 - 2, 0) : y1 + 2, max(x0 - 2, 0) : x1 + 2] = True
            ring[y0:y1, x0:x1] = False
            if ring.any() and not any((m & ring).any() for _, m in shapes):
                inside = image[mask].astype(float).mean(0)
                assert np.linalg.norm(inside - image[ring].astype(float).mean(0)) > 40
                contrasted += 1
    assert contrasted >= 3


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_detection_is_deterministic_and_safe(tmp_path):
    a = generate_detection(tmp_path / "a", **TINY_GEN, seed=1)
    b = generate_detection(tmp_path / "b", **TINY_GEN, seed=1)
    assert _files(a) == _files(b)  # images, annotations and manifest
    fewer = generate_detection(tmp_path / "c", **{**TINY_GEN, "num_train": 2}, seed=1)
    assert (fewer / "train2017" / "000002.png").read_bytes() == (a / "train2017" / "000002.png").read_bytes()
    foreign = tmp_path / "mine"
    (foreign / "annotations").mkdir(parents=True)
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match=str(foreign)):
        generate_detection(foreign, **TINY_GEN)
    assert (foreign / "notes.txt").read_text() == "precious"
    assert synthetic_root("detection") == synthetic_root("detection", num_train=2000, seed=0)


@pytest.mark.parametrize(
    "bad",
    [dict(num_train=0), dict(max_objects=0), dict(min_objects=3, max_objects=2), dict(min_size=0.5, max_size=0.4),
     dict(max_overlap=1.5), dict(min_size=0.05), dict(max_size="big")],
)
def test_generate_detection_rejects_bad_parameters(tmp_path, bad):
    with pytest.raises(ValueError):
        generate_detection(tmp_path / "shapes", **{**TINY_GEN, **bad})
    assert not (tmp_path / "shapes").exists()


def test_generate_detection_impossible_layout_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="lower max_objects"):
        generate_detection(tmp_path / "shapes", **TINY_GEN, min_objects=6, max_objects=6, min_size=0.9, max_size=1.0,
                           max_overlap=0.0)


# --------------------------------------------------------------------------------------------------
# Data modules


def _coco_dataset(root: Path) -> Path:
    images = [{"id": 10 + i, "file_name": f"{i}.jpg", "height": 30, "width": 40} for i in range(5)]
    anns = [
        {"id": i + 1, "image_id": 10 + i, "category_id": [3, 7, 12][i % 3], "bbox": [2, 3, 10 + i, 8]} for i in range(4)
    ]
    _coco(root, "train2017", images=images, annotations=anns)
    _coco(root, "val2017", images=images[:3], annotations=anns[:2])
    return root


def test_coco_datamodule_one_batch(tmp_path):
    root = _coco_dataset(tmp_path / "coco")
    dm = CocoDetectionDataModule(str(root), image_size=32, augmentation="ssdlite", batch_size=2, num_workers=0)
    assert dm.class_names == ["cat", "dog", "yak"] and dm.category_ids == [3, 7, 12]  # before setup: val file
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.val_annotation_file == root / "annotations" / "instances_val2017.json"
    loader = dm.train_dataloader()
    assert len(loader) == 2  # drop_last
    images, targets = next(iter(loader))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert isinstance(targets, list) and len(targets) == 2
    for target in targets:
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
        assert target["labels"].dtype == torch.int64 and target["iscrowd"].dtype == torch.int64
        assert target["area"].dtype == torch.float32 and target["orig_size"].tolist() == [30, 40]
        assert (target["boxes"] >= 0).all() and (target["boxes"] <= 32).all()
    val = dm.val_dataloader()
    assert len(val.dataset) == 3 and [t["image_id"] for _, ts in val for t in ts] == [10, 11, 12]  # in order
    assert dm.test_dataloader().dataset is dm.val_dataset and dm.predict_dataloader().dataset is dm.val_dataset
    assert CocoDetectionDataModule(**dm.hparams).root == root


def test_coco_datamodule_refuses_split_with_other_categories(tmp_path):
    root = _coco_dataset(tmp_path / "coco")
    _coco(root, "val2017", annotations=[], categories=[{"id": 3, "name": "cat"}])
    dm = CocoDetectionDataModule(str(root), image_size=32, num_workers=0)
    with pytest.raises(DataError, match="differ"):
        dm.setup("fit")


def test_voc_datamodule_and_its_coco_annotation_file(tmp_path, monkeypatch):
    monkeypatch.setenv("VISION_TASKS_DATA", str(tmp_path / "cache"))
    root = tmp_path / "VOCdevkit"
    _voc(root, "2007", "trainval", VOC_ITEMS)
    _voc(root, "2012", "trainval", {"2012_a": [("cow", 0, (3, 3, 12, 12))]})
    _voc(root, "2007", "test", {"t1": [("dog", 1, (2, 2, 9, 9)), ("cat", 0, (11, 3, 20, 9))]})
    dm = VOCDetectionDataModule(str(root), image_size=32, batch_size=3, num_workers=0)
    assert dm.num_classes == 20 and dm.category_ids == list(range(1, 21))
    with pytest.raises(RuntimeError, match="setup"):
        dm.val_annotation_file
    dm.setup("fit")
    assert [r.image_id for r in dm.train_dataset.records] == [0, 1, 2]  # 07 + 12 trainval, renumbered
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (3, 3, 32, 32) and len(targets) == 3
    path = dm.val_annotation_file
    assert path.is_relative_to(tmp_path / "cache") and not list(root.rglob("*.json"))  # never into the dataset
    coco = COCO(str(path))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[0]))
    found = [(a["category_id"], a["iscrowd"], a["bbox"]) for a in anns]
    assert found == [(12, 1, [1.0, 1.0, 8.0, 8.0]), (8, 0, [10.0, 2.0, 10.0, 7.0])]  # dog (difficult), cat
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(VOC_CLASSES)
    with pytest.raises(ValueError, match="year, split"):
        VOCDetectionDataModule(str(root), val_set="2007")


def test_voc_coco_annotation_file_written_on_first_access_once(tmp_path, monkeypatch):
    from vision_tasks.data.modules import detection as detection_modules

    cache = tmp_path / "cache"
    monkeypatch.setenv("VISION_TASKS_DATA", str(cache))
    written = []
    write = detection_modules.atomic_write

    def counted_write(path, text):
        written.append(path)
        write(path, text)

    monkeypatch.setattr(detection_modules, "atomic_write", counted_write)
    root = tmp_path / "VOCdevkit"
    _voc(root, "2007", "trainval", VOC_ITEMS)
    _voc(root, "2007", "test", {"t1": [("dog", 1, (2, 2, 9, 9))]})
    args = dict(train_sets=[["2007", "trainval"]], val_set=["2007", "test"], image_size=32, num_workers=0)
    dm = VOCDetectionDataModule(str(root), **args)
    dm.setup("fit")
    assert not (cache / "coco-annotations").exists() and not written  # nothing in training needs it: setup() writes none
    path = dm.val_annotation_file
    assert dm.val_annotation_file == path and written == [path]  # two accesses, one file
    assert path.parent == cache / "coco-annotations" and path.name.startswith("VOC2007-test-")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    mtime = path.stat().st_mtime_ns
    again = VOCDetectionDataModule(str(root), **args)
    again.setup("validate")
    assert again.val_annotation_file == path and written == [path]  # same content: the file is reused
    assert path.stat().st_mtime_ns == mtime
    _voc(root, "2007", "test", {"t1": [("cat", 0, (2, 2, 9, 9))]})  # other content, other file
    changed = VOCDetectionDataModule(str(root), **args)
    changed.setup("validate")
    assert changed.val_annotation_file != path and len(written) == 2


def test_datamodule_hparams_are_the_constructor_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("VISION_TASKS_DATA", str(tmp_path / "cache"))
    voc = VOCDetectionDataModule("~/VOCdevkit", train_sets=[["2012", "train"]], image_size=64, num_workers=0)
    assert voc.hparams["root"] == "~/VOCdevkit" and voc.hparams["train_sets"] == [["2012", "train"]]
    coco = CocoDetectionDataModule(str(tmp_path / "coco"), image_size=48)
    synthetic_dm = SyntheticDetectionDataModule(num_train=4, num_val=2, image_size=48, train_split="train2017")
    assert synthetic_dm.hparams["root"] is None and synthetic_dm.hparams["train_split"] == "train2017"
    given = SyntheticDetectionDataModule(str(tmp_path / "mine"), num_train=4, num_val=2)
    assert given.hparams["root"] == str(tmp_path / "mine")
    for dm in (voc, coco, synthetic_dm, given):
        rebuilt = type(dm)(**dm.hparams)
        assert rebuilt.hparams == dm.hparams and rebuilt.root == dm.root


def test_synthetic_datamodule_generates_and_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("VISION_TASKS_DATA", str(tmp_path))
    dm = SyntheticDetectionDataModule(num_train=6, num_val=3, synthetic_image_size=48, image_size=48, batch_size=4,
                                      num_workers=0)
    assert dm.root.parent == tmp_path and dm.root.name.startswith("detection-")
    assert dm.class_names == list(SHAPES) and dm.category_ids == list(range(1, 9))
    dm.setup("fit")  # generates: no prepare_data() call needed
    assert (dm.root / "synthetic.json").is_file() and len(dm.train_dataset) == 6
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 48, 48) and all(len(t["boxes"]) >= 1 for t in targets)
    assert dm.val_annotation_file == dm.root / "annotations" / "instances_val2017.json"
    assert dm.hparams.root is None and type(dm)(**dm.hparams).root == dm.root
