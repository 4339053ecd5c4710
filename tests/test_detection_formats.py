"""Custom detection data as labelling tools export it: the flat VOC folder and YOLO txt readers, their data
modules and configs, and tools/convert_dataset.py (COCO -> YOLO / VOC folder / ImageFolder crops)."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from pycocotools.coco import COCO

import vision_tasks.runner
from conftest import load_tool, run_tool
from vision_tasks.data import (
    DataError,
    VOCFolderDetectionDataModule,
    YOLODetectionDataModule,
    read_coco,
    read_voc_folder,
    read_yolo,
    scan_image_folder,
)
from vision_tasks.data.formats.voc_folder import split_by_fraction


def _save(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    """A random RGB image of ``size`` = (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(str(path))).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@contextlib.contextmanager
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --------------------------------------------------------------------------------------------------
# YOLO


def _yolo(root: Path, labels: dict[str, dict[str, str | None]], names=("cat", "dog"), size=(40, 30)) -> Path:
    """``root/images/<split>/<stem>.jpg`` of ``size`` and ``root/labels/<split>/<stem>.txt`` (None: no label file),
    with ``root/data.yaml`` (``names`` as a mapping) unless ``names`` is None."""
    for split, items in labels.items():
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for stem, text in items.items():
            _save(root / "images" / split / f"{stem}.jpg", size)
            if text is not None:
                (root / "labels" / split / f"{stem}.txt").write_text(text)
    if names is not None:
        (root / "data.yaml").write_text(yaml.safe_dump({"names": dict(enumerate(names))}))
    return root


def test_read_yolo_boxes_in_pixels_labels_and_negatives(tmp_path):
    root = _yolo(tmp_path / "set", {"train": {
        "b": "1 0.5 0.5 0.5 0.2\n0 0.25 0.25 0.5 0.5\n",  # 40x30: x 10..30, y 12..18; x 0..20, y 0..15
        "a": "",  # an empty label file: a negative
        "c": None,  # no label file: a negative
    }})
    with _no_warnings():
        ann = read_yolo(root, "train")
    assert ann.class_names == ["cat", "dog"] and ann.category_ids == [1, 2]
    a, b, c = ann.records
    assert [(r.path.name, r.image_id) for r in ann.records] == [("a.jpg", 0), ("b.jpg", 1), ("c.jpg", 2)]
    assert (b.height, b.width) == (30, 40) and b.path == root / "images" / "train" / "b.jpg"
    np.testing.assert_allclose(b.boxes, [[10, 12, 30, 18], [0, 0, 20, 15]])
    assert b.labels.tolist() == [1, 0] and b.iscrowd.tolist() == [0, 0] and b.area.tolist() == [120.0, 300.0]
    assert a.boxes.shape == (0, 4) and c.boxes.shape == (0, 4) and c.labels.shape == (0,)
    assert [x.dtype for x in (b.boxes, b.labels, b.iscrowd, b.area)] == [np.float32, np.int64, np.int64, np.float32]


def test_read_yolo_names_from_a_list_or_class_names_and_the_yaml_as_root(tmp_path):
    root = _yolo(tmp_path / "set", {"val": {"a": "2 0.5 0.5 0.5 0.5\n"}}, names=None)
    with pytest.raises(DataError, match="no data.yaml.*class_names"):
        read_yolo(root, "val")
    assert read_yolo(root, "val", class_names=["x", "y", "z"]).class_names == ["x", "y", "z"]
    (root / "data.yaml").write_text("nc: 3\nnames: [x, y, z]\n")
    assert read_yolo(root / "data.yaml", "val").records[0].labels.tolist() == [2]
    (root / "data.yaml").write_text("nc: 2\nnames: [x, y, z]\n")
    with pytest.raises(DataError, match="nc is 2 but 'names' has 3"):
        read_yolo(root, "val")
    (root / "data.yaml").write_text("names:\n  0: x\n  2: z\n")
    with pytest.raises(DataError, match=r"keys of 'names' must be 0..1"):
        read_yolo(root, "val")


def test_read_yolo_roboflow_layout_through_the_yaml_keys(tmp_path):
    # Roboflow: root/{train,valid}/{images,labels}, data.yaml beside them with ../train/images
    root = tmp_path / "roboflow"
    for folder, stem in (("train", "t"), ("valid", "v")):
        _save(root / folder / "images" / f"{stem}.jpg")
        (root / folder / "labels").mkdir(parents=True)
        (root / folder / "labels" / f"{stem}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 1\nnames: ['thing']\n")
    train, val = read_yolo(root, "train"), read_yolo(root / "data.yaml", "val")
    assert [r.path for r in train.records] == [root / "train" / "images" / "t.jpg"]
    assert [r.path for r in val.records] == [root / "valid" / "images" / "v.jpg"] and len(val.records[0].boxes) == 1
    # Ultralytics: 'path' (here relative to the yaml's folder) + folders relative to it
    (root / "data.yaml").write_text("path: .\ntrain: train/images\nval: valid/images\nnames: {0: thing}\n")
    assert [r.path.name for r in read_yolo(root, "val").records] == ["v.jpg"]
    with pytest.raises(DataError, match="the image folder of 'test'") as info:
        (root / "data.yaml").write_text("train: train/images\ntest: nowhere/images\nnames: [thing]\n")
        read_yolo(root, "test")
    assert "nowhere" in str(info.value)


BAD_LINES = [
    ("0 0.5 0.5 0.2", r"4 fields, expected 5: class x_center y_center width height"),
    ("0 0.5 0.5 0.2 0.2 0.9", r"6 fields, expected 5"),
    ("0 0.1 0.1 0.5 0.1 0.3 0.4", r"segmentation polygon .*a polygon is not a box"),
    ("1.0 0.5 0.5 0.2 0.2", r"the class '1.0' is not an integer"),
    ("cat 0.5 0.5 0.2 0.2", r"the class 'cat' is not an integer"),
    ("2 0.5 0.5 0.2 0.2", r"class 2 is not one of the 2 classes 0..1 \(the names of .*data.yaml\)"),
    ("-1 0.5 0.5 0.2 0.2", r"class -1 is not one of the 2 classes"),
    ("0 0.5 abc 0.2 0.2", r"'abc' is not a finite number"),
    ("0 0.5 nan 0.2 0.2", r"'nan' is not a finite number"),
    ("0 1.2 0.5 0.1 0.1", r"box outside the image: x 1.15..1.25"),
    ("0 0.95 0.5 0.2 0.2", r"box outside the image: x 0.85..1.05"),
    ("0 0.5 0.5 0.2 1.00001", r"box outside the image"),  # past the 1e-6 tolerance
    ("0 20 15 10 10", r"box outside the image.*fractions of the image's width and height"),  # pixels
    ("0 0.5 0.5 -0.1 0.2", r"negative width \(-0.1\)"),
]


@pytest.mark.parametrize("line, message", BAD_LINES, ids=[line for line, _ in BAD_LINES])
def test_read_yolo_refuses_a_bad_line_naming_the_file_and_line(tmp_path, line, message):
    root = _yolo(tmp_path / "set", {"train": {"a": "0 0.5 0.5 0.2 0.2\n", "b": f"1 0.5 0.5 0.1 0.1\n{line}\n"}})
    with pytest.raises(DataError, match=message) as info:
        read_yolo(root, "train")
    text = str(info.value)
    assert f"{root / 'labels' / 'train' / 'b.txt'}, line 2:" in text
    assert text.startswith("1 of the 2 images of split 'train'")


def test_read_yolo_lists_every_bad_file_at_once(tmp_path):
    labels = {f"{i}": "0 0.5 0.5 0.2\n" for i in range(7)}
    root = _yolo(tmp_path / "set", {"train": labels})
    with pytest.raises(DataError) as info:
        read_yolo(root, "train")
    assert str(info.value).startswith("7 of the 7 images") and "... and 2 more" in str(info.value)


def test_read_yolo_label_without_image_unreadable_image_missing_names(tmp_path):
    root = _yolo(tmp_path / "set", {"train": {"a": "0 0.5 0.5 0.2 0.2\n"}})
    (root / "labels" / "train" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "train" / "classes.txt").write_text("cat\ndog\n")  # LabelImg's class list: no image's labels
    with pytest.raises(DataError, match=r"1 label file\(s\) in .*labels/train have no image .*: ghost.txt"):
        read_yolo(root, "train")
    (root / "labels" / "train" / "ghost.txt").unlink()
    (root / "images" / "train" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"a.jpg: cannot read the image"):
        read_yolo(root, "train")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\n")
    with pytest.raises(DataError, match=r"data.yaml has no 'names'"):
        read_yolo(root, "train")
    with pytest.raises(DataError, match="images/nothing"):
        read_yolo(root, "nothing", class_names=["cat"])
    with pytest.raises(DataError, match="does not exist"):
        read_yolo(tmp_path / "elsewhere", "train")


def test_read_yolo_clips_tiny_overshoots_and_drops_degenerate_boxes_with_one_warning(tmp_path):
    root = _yolo(tmp_path / "set", {"train": {"a": (
        "0 0.5 0.5 1.0000005 0.2\n"  # x from -2.5e-7 to 1 + 2.5e-7: within the tolerance, clipped
        "1 0.5 0.5 0 0.2\n"  # zero width: dropped
        "0 0.25 0.5 0.50000000001 0.2\n"  # the text's rounding (1e-11): neither clipped nor counted
    )}})
    with pytest.warns(UserWarning) as record:
        ann = read_yolo(root, "train")
    assert len(record) == 1
    message = str(record[0].message)
    assert "dropped 1 box(es)" in message and "clipped 1 box(es)" in message and "labels/train (train)" in message
    np.testing.assert_allclose(ann.records[0].boxes, [[0, 12, 40, 18], [0, 12, 20, 18]], atol=1e-4)
    assert ann.records[0].labels.tolist() == [0, 0]


# --------------------------------------------------------------------------------------------------
# Flat VOC folder


def _xml(objects, size: tuple[int, int] | None = (40, 30)) -> str:
    """A VOC annotation; objects are (name, difficult, (xmin, ymin, xmax, ymax)) in VOC's 1-based pixels."""
    parts = ["<annotation><filename>ignored.jpg</filename>"]
    if size:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, difficult, (x0, y0, x1, y1) in objects:
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
                     f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


ITEMS = {
    "img1": [("dog", 0, (1, 1, 10, 20)), ("cat", 1, (5, 6, 40, 30))],
    "img2": [("cat", 0, (11, 3, 20, 9))],
    "img3": [],
}


def _voc_folder(root: Path, items=ITEMS, images: str = ".", annotations: str = ".", unannotated=("extra",)) -> Path:
    for stem, objects in items.items():
        _save(root / images / f"{stem}.jpg")
        (root / annotations).mkdir(parents=True, exist_ok=True)
        (root / annotations / f"{stem}.xml").write_text(_xml(objects))
    for stem in unannotated:
        _save(root / images / f"{stem}.jpg")
    return root


def _by_name(ann) -> dict:
    return {r.path.stem: r for r in ann.records}


@pytest.mark.parametrize("layout", [(".", "."), ("images", "annotations"), ("pics", "xml")])
def test_read_voc_folder_layouts_one_based_pixels_and_difficult(tmp_path, layout):
    images, annotations = layout
    root = _voc_folder(tmp_path / "set", images=images, annotations=annotations)
    given = {} if layout != ("pics", "xml") else {"images": "pics", "annotations": "xml"}
    with pytest.warns(UserWarning, match=r"skipped 1 of 4 image\(s\) without an XML file .*extra.jpg.*keep_unannot"):
        splits = read_voc_folder(root, train_list=["img1", "img3.jpg"], val_list=["img2"], class_names=["cat", "dog"],
                                 **given)
    train, val = _by_name(splits["train"]), _by_name(splits["val"])
    assert sorted(train) == ["img1", "img3"] and sorted(val) == ["img2"]
    assert splits["train"].class_names == ["cat", "dog"] and splits["val"].category_ids == [1, 2]
    one = train["img1"]
    assert one.path == root / images / "img1.jpg" and (one.height, one.width) == (30, 40)
    np.testing.assert_array_equal(one.boxes, [[0, 0, 10, 20], [4, 5, 40, 30]])  # xmin - 1, ymin - 1, xmax, ymax
    assert one.labels.tolist() == [1, 0] and one.iscrowd.tolist() == [0, 1] and one.area.tolist() == [200.0, 900.0]
    np.testing.assert_array_equal(val["img2"].boxes, [[10, 2, 20, 9]])
    assert train["img3"].boxes.shape == (0, 4)  # an XML without objects: a negative
    assert [one.image_id, val["img2"].image_id, train["img3"].image_id] == [0, 1, 2]  # index among all, by stem
    easy = read_voc_folder(root, train_list=["img1", "img3", "extra"], val_list=["img2"], class_names=["cat", "dog"],
                           keep_difficult=False, keep_unannotated=True, **given)
    assert _by_name(easy["train"])["img1"].labels.tolist() == [1] and not len(_by_name(easy["train"])["extra"].boxes)


def test_read_voc_folder_split_lists_from_files(tmp_path):
    root = _voc_folder(tmp_path / "set", unannotated=())
    (root / "train.txt").write_text("img1\n\nimg3.jpg\n")
    (tmp_path / "val.txt").write_text("img2.xml\n")
    splits = read_voc_folder(root, train_list="train.txt", val_list=str(tmp_path / "val.txt"),
                             class_names=["cat", "dog"])
    assert [r.path.stem for r in splits["train"].records] == ["img1", "img3"]
    assert [r.path.stem for r in splits["val"].records] == ["img2"]
    (root / "train.txt").write_text("img1\nimg9\n")
    with pytest.raises(DataError, match=r"(?s)1 entries of train_list .*train.txt, line 2: 'img9' is not an image"):
        read_voc_folder(root, train_list="train.txt", val_list=["img2"], class_names=["cat", "dog"])
    with pytest.raises(DataError, match=r"1 image\(s\) are in both train_list and val_list: img1"):
        read_voc_folder(root, train_list=["img1", "img2"], val_list=["img1"], class_names=["cat", "dog"])
    with pytest.raises(ValueError, match="both train_list and val_list"):
        read_voc_folder(root, train_list=["img1"], class_names=["cat", "dog"])
    with pytest.raises(DataError, match="missing.txt"):
        read_voc_folder(root, train_list="missing.txt", val_list=["img2"])
    with pytest.warns(UserWarning, match=r"1 of 3 image\(s\) are in neither"):
        read_voc_folder(root, train_list=["img1"], val_list=["img2"], class_names=["cat", "dog"])


def test_split_by_ratio_is_seeded_disjoint_and_independent_of_file_order(tmp_path):
    stems = [f"photo_{i:02d}" for i in range(20)]
    train, val = split_by_fraction(stems, 0.2, seed=0)
    assert len(val) == 4 and len(train) == 16 and set(train) | set(val) == set(stems) and not set(train) & set(val)
    shuffled = list(stems)
    random.Random(3).shuffle(shuffled)
    assert split_by_fraction(shuffled, 0.2, seed=0) == (train, val)
    assert split_by_fraction(stems, 0.2, seed=1) != (train, val)
    assert split_by_fraction(stems[:2], 0.01, seed=0)[1] and split_by_fraction(stems[:2], 0.99, seed=0)[0]  # 1 each
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_fraction(stems, 1.0, seed=0)

    # two folders with the same files, written in opposite orders, split the same way
    items = {stem: [("cat", 0, (2, 2, 9, 9))] for stem in stems}
    first = _voc_folder(tmp_path / "first", items, unannotated=())
    second = _voc_folder(tmp_path / "second", dict(reversed(items.items())), unannotated=())
    a = read_voc_folder(first, class_names=["cat"])
    b = read_voc_folder(second, class_names=["cat"], val_fraction=0.2, split_seed=0)
    assert [r.path.stem for r in a["val"].records] == [r.path.stem for r in b["val"].records] == val
    assert [r.path.stem for r in a["train"].records] == train


def test_read_voc_folder_implicit_class_names_warn(tmp_path):
    root = _voc_folder(tmp_path / "set", unannotated=())
    with pytest.warns(UserWarning, match=r"class_names not given.*\['cat', 'dog'\].*implicit.*data.class_names"):
        splits = read_voc_folder(root, train_list=["img1", "img3"], val_list=["img2"])
    assert splits["train"].class_names == ["cat", "dog"]
    with pytest.raises(DataError, match=r"'dog' in .*img1.xml.*\['cat'\]"):
        read_voc_folder(root, train_list=["img1", "img3"], val_list=["img2"], class_names=["cat"])


def test_read_voc_folder_bad_input(tmp_path):
    root = _voc_folder(tmp_path / "set", unannotated=())
    (root / "ghost.xml").write_text(_xml([]))
    with pytest.raises(DataError, match=r"1 of the 4 VOC annotation files .* have no image .*ghost.xml"):
        read_voc_folder(root, class_names=["cat", "dog"])
    (root / "ghost.xml").unlink()
    (root / "img2.xml").write_text(_xml([("cat", 0, (1, 1, 5, 5))], size=(50, 30)))
    with pytest.raises(DataError, match=r"img2.xml says 50x30, .*img2.jpg is 40x30"):
        read_voc_folder(root, class_names=["cat", "dog"])
    (root / "img2.xml").write_text(_xml([("cat", 0, (1, 1, 5, 5))], size=None))  # no <size>: the header's
    assert {r.height for r in read_voc_folder(root, class_names=["cat", "dog"])["train"].records} == {30}
    (root / "img2.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match=r"cannot parse the VOC annotation .*img2.xml"):
        read_voc_folder(root, class_names=["cat", "dog"])
    _save(root / "img2.png")
    with pytest.raises(DataError, match=r"several image files.*img2.jpg / img2.png"):
        read_voc_folder(root, class_names=["cat", "dog"])
    with pytest.raises(DataError, match="found no images"):
        read_voc_folder(tmp_path / "set" / "..", class_names=["cat"])
    with pytest.raises(DataError, match="does not exist"):
        read_voc_folder(tmp_path / "nothing")


def test_read_voc_folder_keeps_unannotated_images_as_negatives(tmp_path):
    root = _voc_folder(tmp_path / "set", unannotated=("extra", "more"))
    with _no_warnings():
        splits = read_voc_folder(root, class_names=["cat", "dog"], keep_unannotated=True, val_fraction=0.4)
    records = splits["train"].records + splits["val"].records
    assert len(records) == 5 and len(splits["val"].records) == 2
    assert {r.path.stem for r in records if not len(r.boxes)} == {"extra", "more", "img3"}


# --------------------------------------------------------------------------------------------------
# Data modules and configs


def _yolo_set(root: Path) -> Path:
    lines = ["0 0.5 0.5 0.5 0.5\n", "1 0.3 0.4 0.2 0.3\n0 0.7 0.6 0.3 0.3\n", "", None]
    counts = {"train": 6, "val": 3}
    return _yolo(root, {split: {f"{split}{i}": lines[i % 4] for i in range(n)} for split, n in counts.items()})


def test_yolo_datamodule_one_batch_and_coco_file(tmp_path, monkeypatch):
    monkeypatch.setenv("VISION_TASKS_DATA", str(tmp_path / "cache"))
    root = _yolo_set(tmp_path / "set")
    dm = YOLODetectionDataModule(str(root), image_size=32, batch_size=4, num_workers=0)
    assert dm.class_names == ["cat", "dog"] and dm.category_ids == [1, 2] and dm.num_classes == 2  # before setup
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and len(targets) == 4
    assert all(t["orig_size"].tolist() == [30, 40] and (t["boxes"] <= 32).all() for t in targets)
    coco = COCO(str(dm.val_annotation_file))
    assert dm.val_annotation_file.is_relative_to(tmp_path / "cache") and not list(root.rglob("*.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog"] and coco.getCatIds() == [1, 2]
    (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[0]))
    assert ann["category_id"] == 1 and ann["bbox"] == pytest.approx([10, 7.5, 20, 15])  # pixels of 40x30
    rebuilt = type(dm)(**dm.hparams)
    assert rebuilt.hparams == dm.hparams and rebuilt.root == dm.root
    assert set(dm.hparams) == set(inspect.signature(YOLODetectionDataModule).parameters)


def test_voc_folder_datamodule_one_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("VISION_TASKS_DATA", str(tmp_path / "cache"))
    items = {f"im{i}": [("dog", 0, (1, 1, 10 + i, 20))] for i in range(6)}
    root = _voc_folder(tmp_path / "set", items, images="images", annotations="annotations", unannotated=())
    dm = VOCFolderDetectionDataModule(str(root), class_names=["cat", "dog"], val_fraction=0.5, image_size=32,
                                      batch_size=2, num_workers=0)
    assert dm.category_ids == [1, 2]
    dm.setup("fit")
    assert len(dm.train_dataset) == 3 and len(dm.val_dataset) == 3
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32) and [t["labels"].tolist() for t in targets] == [[1], [1]]
    assert COCO(str(dm.val_annotation_file)).getCatIds() == [1, 2]
    assert set(dm.hparams) == set(inspect.signature(VOCFolderDetectionDataModule).parameters)
    assert type(dm)(**dm.hparams).hparams == dm.hparams
    implicit = VOCFolderDetectionDataModule(str(root), image_size=32, num_workers=0)
    with pytest.raises(RuntimeError, match="setup"):
        implicit.class_names
    with pytest.raises(ValueError, match="both train_list and val_list"):
        VOCFolderDetectionDataModule(str(root), train_list="train.txt")


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(vision_tasks.runner.CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=["run_dir=unused", "task=detection", *overrides])


@pytest.mark.parametrize("source, module",
                         [("yolo", YOLODetectionDataModule), ("voc_folder", VOCFolderDetectionDataModule)])
def test_configs_compose_with_every_argument(tmp_path, source, module):
    cfg = _compose(f"data={source}", f"data.root={tmp_path}")
    data = dict(cfg.data)
    assert data.pop("_target_") == f"vision_tasks.data.{module.__name__}"
    assert set(data) == set(inspect.signature(module).parameters)  # every argument a user may override
    assert (data["root"], data["image_size"], data["augmentation"], data["batch_size"], data["num_workers"]) == (
        str(tmp_path), 320, "ssdlite", 16, 2)
    dm = instantiate(cfg.data, _convert_="all")
    assert isinstance(dm, module) and dm.root == tmp_path
    assert OmegaConf.is_missing(_compose(f"data={source}").data, "root")


@pytest.mark.slow
def test_train_end_to_end_on_a_yolo_set(tmp_path, env):
    root = _yolo_set(tmp_path / "set")
    run_dir, test_dir = tmp_path / "run", tmp_path / "test"
    common = ["task=detection", "data=yolo", f"data.root={root}", "data.image_size=64", "data.num_workers=0"]
    smoke_dir = tmp_path / "smoke"  # a run directory of its own: a new run never writes over another's records
    run_tool(["tools/train.py", *common, "model.width_mult=0.35", "trainer.fast_dev_run=true",
              f"hydra.run.dir={smoke_dir}"], env)
    assert (smoke_dir / "config.yaml").is_file()
    run_tool(["tools/train.py", *common, "model.width_mult=0.35", "trainer.max_epochs=1",
              "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"], env)
    run_tool(["tools/test.py", *common, f"ckpt_path={run_dir}/checkpoints/last.ckpt", f"hydra.run.dir={test_dir}",
              "trainer.enable_progress_bar=false"], env)
    detections = json.loads((test_dir / "detections.json").read_text())
    assert {d["category_id"] for d in detections} <= {1, 2} and {d["image_id"] for d in detections} <= {0, 1, 2}
    assert "val/map" in json.loads((test_dir / "metrics.json").read_text())


# --------------------------------------------------------------------------------------------------
# tools/convert_dataset.py

convert_dataset = load_tool("convert_dataset")

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 12, "name": "yak"}]


def _tiny_coco(root: Path) -> Path:
    """train2017 and val2017, 3 images each (of one name in both splits, 64x48), boxes of three classes, a crowd."""
    boxes = [  # image index, category id, [x, y, w, h], iscrowd
        (0, 3, [1.25, 2.5, 40, 30], 0), (0, 7, [30, 10, 33.5, 37.75], 0), (0, 12, [0, 0, 10, 10], 0),
        (1, 7, [5, 5, 20, 12], 0), (1, 3, [0, 0, 64, 48], 1), (2, 12, [10, 10, 5, 5], 0),
    ]
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        images = [{"id": 10 + i, "file_name": f"{i:03d}.jpg", "height": 48, "width": 64} for i in range(3)]
        for image in images:
            _save(root / split / image["file_name"], (64, 48))
        annotations = [{"id": k + 1, "image_id": 10 + i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": z}
                       for k, (i, c, b, z) in enumerate(boxes)]
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return root


def _expected(root: Path, split: str, classes: list[str], crowd: bool):
    """The source boxes of ``classes`` per image stem: (boxes, labels in ``classes`` order, iscrowd)."""
    ann = read_coco(root / "annotations" / f"instances_{split}.json", root / split)
    out = {}
    for record in ann.records:
        keep = [i for i, label in enumerate(record.labels.tolist())
                if ann.class_names[label] in classes and (crowd or not record.iscrowd[i])]
        labels = [classes.index(ann.class_names[label]) for label in record.labels[keep].tolist()]
        out[record.path.stem] = (record.boxes[keep], labels, record.iscrowd[keep].tolist())
    return out


def test_coco2yolo_round_trip(tmp_path):
    root = _tiny_coco(tmp_path / "coco")
    out = tmp_path / "yolo"
    assert convert_dataset.main(["coco2yolo", "--root", str(root), "--classes", "dog", "cat", "--out", str(out)]) == 0
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "dog", 1: "cat"} and data["nc"] == 2 and "path" not in data
    assert (out / "images" / "train" / "000.jpg").is_symlink() and not list(tmp_path.glob(".yolo*"))
    for split, source in (("train", "train2017"), ("val", "val2017")):
        expected = _expected(root, source, ["dog", "cat"], crowd=False)
        with _no_warnings():
            ann = read_yolo(out, split)
        assert ann.class_names == ["dog", "cat"] and len(ann.records) == 3  # image 2 (a yak only): a negative
        for record in ann.records:
            boxes, labels, _ = expected[record.path.stem]
            np.testing.assert_allclose(record.boxes, boxes, atol=1e-3)
            assert record.labels.tolist() == labels
    summary = json.loads((out / "conversion.json").read_text())
    assert summary["counts"]["train"] == {"images": 3, "negatives": 1, "boxes": {"cat": 1, "dog": 2}}
    copied = tmp_path / "copied"
    assert convert_dataset.main(["coco2yolo", "--root", str(root), "--out", str(copied), "--copy", "--skip-empty"]) == 0
    assert not (copied / "images" / "train" / "000.jpg").is_symlink()
    assert yaml.safe_load((copied / "data.yaml").read_text())["names"] == {0: "cat", 1: "dog", 2: "yak"}


def test_coco2voc_round_trip(tmp_path):
    root = _tiny_coco(tmp_path / "coco")
    out = tmp_path / "voc"
    assert convert_dataset.main(["coco2voc", "--root", str(root), "--classes", "cat", "dog", "--out", str(out)]) == 0
    # the file names are in both splits: prefixed with the split in the one folder
    assert (out / "train.txt").read_text().split() == ["train_000", "train_001", "train_002"]
    with _no_warnings():
        splits = read_voc_folder(out, train_list="train.txt", val_list="val.txt", class_names=["cat", "dog"])
    for split, source in (("train", "train2017"), ("val", "val2017")):
        expected = _expected(root, source, ["cat", "dog"], crowd=True)
        assert len(splits[split].records) == 3
        for record in splits[split].records:
            boxes, labels, crowd = expected[record.path.stem.split("_", 1)[1]]
            np.testing.assert_allclose(record.boxes, boxes, atol=1e-3)
            assert record.labels.tolist() == labels and record.iscrowd.tolist() == crowd  # crowd -> difficult
    assert any(r.iscrowd.any() for r in splits["train"].records)


def test_coco2crops_counts_and_sizes(tmp_path):
    root = _tiny_coco(tmp_path / "coco")
    out = tmp_path / "crops"
    args = ["coco2crops", "--root", str(root), "--classes", "cat", "dog", "--out", str(out), "--min-size", "12"]
    assert convert_dataset.main(args) == 0
    samples, classes = scan_image_folder(out / "train")
    assert classes == ["cat", "dog"]
    # cat 1.25,2.5 40x30 (+ 4 / 3 px each side): x floor(-2.75)->0 .. ceil(45.25)=46, y floor(-0.5)->0 .. ceil(35.5)=36;
    # dog 30,10 33.5x37.75: x 26..64 (clipped), y 6..48 (clipped); dog 5,5 20x12: x 3..27, y 3..19; the crowd cat: none
    sizes = sorted((p.parent.name, Image.open(p).size) for p, _ in samples)
    assert sizes == [("cat", (46, 36)), ("dog", (24, 16)), ("dog", (38, 42))]
    assert json.loads((out / "conversion.json").read_text())["counts"]["val"] == {"cat": 1, "dog": 2}
    fewer = tmp_path / "fewer"
    assert convert_dataset.main([*args[:-4], "--out", str(fewer), "--min-size", "13", "--max-per-class", "1"]) == 0
    assert sorted(p.parent.name for p in (fewer / "val").rglob("*.jpg")) == ["cat", "dog"]  # dog 20x12: too small
    assert convert_dataset.main([*args[:-4], "--out", str(tmp_path / "none"), "--min-size", "41"]) == 2
    assert not (tmp_path / "none").exists()


def test_converter_never_overwrites_and_leaves_nothing_on_error(tmp_path, capsys):
    root = _tiny_coco(tmp_path / "coco")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    assert convert_dataset.main(["coco2yolo", "--root", str(root), "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err and os.listdir(out) == ["mine.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert convert_dataset.main(["coco2voc", "--root", str(root), "--out", str(empty)]) == 0  # an empty folder is fine
    assert (empty / "train.txt").is_file()
    unicorn = ["coco2yolo", "--root", str(root), "--classes", "unicorn", "--out", str(tmp_path / "u")]
    assert convert_dataset.main(unicorn) == 2
    assert "has no class ['unicorn']" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco", "empty", "taken"]  # no output, no temporary folder


def test_converter_command_line(tmp_path, env):
    root = _tiny_coco(tmp_path / "coco")
    proc = run_tool(["tools/convert_dataset.py", "coco2yolo", "--root", str(root), "--out", str(tmp_path / "y")], env)
    assert "train: " in proc.stdout and (tmp_path / "y" / "data.yaml").is_file()
