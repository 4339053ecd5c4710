"""Broken and huge images: found before training (and remembered), skipped on request, decoded reduced."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_detection_data import _coco
from test_segmentation_data import write_folder
from vision_tasks.data import CocoDetectionDataModule, DataError, ImageFolderDataModule, SegmentationFolderDataModule
from vision_tasks.data import verify


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Each test its own cache of checked images."""
    monkeypatch.setenv("VISION_TASKS_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _coco_with_bad_images(root: Path) -> Path:
    for split in ("train2017", "val2017"):
        _coco(root, split)
    _truncate(root / "train2017" / "a.jpg")  # header fine, pixels cut off: only decoding finds it
    (root / "train2017" / "b.png").write_bytes(b"")  # 0 bytes
    return root


def test_broken_coco_images_stop_setup_naming_each(tmp_path):
    root = _coco_with_bad_images(tmp_path / "coco")
    dm = CocoDetectionDataModule(str(root), image_size=32, batch_size=2, num_workers=0)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    text = str(err.value)
    assert text.startswith("2 of the 3 training images cannot be used")
    assert f"{root / 'train2017' / 'a.jpg'}: image file is truncated" in text
    assert f"{root / 'train2017' / 'b.png'}: cannot identify image file" in text
    assert "data.bad_images=skip" in text


def test_bad_images_skip_leaves_them_out_and_lists_them(tmp_path):
    root = _coco_with_bad_images(tmp_path / "coco")
    dm = CocoDetectionDataModule(str(root), image_size=32, batch_size=2, num_workers=0, bad_images="skip")
    with pytest.warns(UserWarning, match=r"left out 2 of the 3 training images \(data.bad_images=skip\)") as caught:
        dm.setup("fit")
    assert "a.jpg" in str(caught[0].message) and "b.png" in str(caught[0].message)
    assert [r.path.name for r in dm.train_dataset.records] == ["c.jpg"]
    assert len(dm.val_dataset) == 3  # the val split is whole
    image, _ = dm.train_dataset[0]
    assert image.shape == (3, 32, 32)
    with pytest.raises(ValueError, match="bad_images must be one of"):
        CocoDetectionDataModule(str(root), bad_images="ignore")


def test_an_image_of_another_size_than_annotated_is_found_before_training(tmp_path):
    root = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        _coco(root, split)
    Image.new("RGB", (41, 30)).save(root / "val2017" / "c.jpg")
    dm = CocoDetectionDataModule(str(root), image_size=32, batch_size=2, num_workers=0)
    with pytest.raises(DataError, match=r"c.jpg: the image is 41x30 but its annotation says 40x30"):
        dm.setup("validate")


def test_image_folder_and_segmentation_folder_images_are_decoded_before_training(tmp_path):
    folder = tmp_path / "cls"
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (folder / split / name).mkdir(parents=True)
            for k in range(2):
                Image.fromarray(np.full((20, 20, 3), 40 * k, np.uint8)).save(folder / split / name / f"{k}.png")
    _truncate(folder / "val" / "dog" / "1.png")
    with pytest.raises(DataError, match=r"1 of the 4 images of .*val cannot be used:\n  .*dog/1.png"):
        ImageFolderDataModule(str(folder), image_size=16, resize_size=16, batch_size=2, num_workers=0).setup("fit")
    dm = ImageFolderDataModule(str(folder), image_size=16, resize_size=16, batch_size=2, num_workers=0,
                               verify_images=False)
    dm.setup("fit")  # not checked: found when read, as before
    assert len(dm.val_dataset) == 4

    seg = write_folder(tmp_path / "seg", "train", ["a", "b"])
    write_folder(seg, "val", ["c"])
    _truncate(seg / "images" / "train" / "b.jpg")
    with pytest.raises(DataError, match=r"1 of the 2 training images cannot be used"):
        SegmentationFolderDataModule(str(seg), class_names=["bg", "a", "b", "c", "d"], crop_size=16, batch_size=1,
                                     num_workers=0).setup("fit")


def test_checks_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch, cache_dir):
    root = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        _coco(root, split)
    decoded: list[str] = []
    check = verify._check_file
    monkeypatch.setattr(verify, "_check_file", lambda path: decoded.append(Path(path).name) or check(path))

    def setup():
        CocoDetectionDataModule(str(root), image_size=32, batch_size=2, num_workers=0).setup("fit")

    setup()
    assert sorted(decoded) == ["a.jpg", "a.jpg", "b.png", "b.png", "c.jpg", "c.jpg"]  # train and val
    assert len(list((cache_dir / verify.CACHE_DIR).glob("*.json"))) == 2  # one file per folder of images
    decoded.clear()
    setup()
    assert decoded == []  # the second run reads the cache
    path = root / "train2017" / "b.png"
    Image.new("RGB", (40, 30), "red").save(path)  # rewritten: other size and mtime
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    setup()
    assert decoded == ["b.png"]
    decoded.clear()
    _truncate(path)  # a file that went bad since it was checked is checked again, and found
    with pytest.raises(DataError, match="b.png"):
        setup()
    assert decoded == ["b.png"]


def test_a_decompression_bomb_gives_a_clear_error(tmp_path, monkeypatch):
    root = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        _coco(root, split)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 40x30 = 1200 pixels > 2 x 500
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(DataError) as err:
            CocoDetectionDataModule(str(root), image_size=32, batch_size=2, num_workers=0).setup("fit")
    text = str(err.value)
    assert "a.jpg: Image size (1200 pixels) exceeds limit of 1000 pixels" in text
    assert "VISION_TASKS_MAX_IMAGE_PIXELS" in text and "downscale it" in text


def test_verify_images_unit(tmp_path):
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    Image.new("RGB", (8, 6)).save(good)
    bad.write_bytes(b"not an image")
    with pytest.warns(UserWarning, match=r"left out 1 of the 3 images"):
        assert verify.verify_images([good, bad, good], bad_images="skip", cache=False) == [True, False, True]
    assert verify.verify_images([good], expected_sizes=[(6, 8)]) == [True]
    with pytest.raises(DataError, match=r"good.jpg: the image is 8x6 but its annotation says 6x8"):
        verify.verify_images([good], expected_sizes=[(8, 6)])
    cache = json.loads(next((Path(os.environ["VISION_TASKS_DATA"]) / verify.CACHE_DIR).glob("*.json")).read_text())
    assert cache["files"][str(good)][2:] == [8, 6, None]


# --------------------------------------------------------------------------------------------------
# Huge images: decoded reduced, boxes and masks alike


def _photo(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x // 37 + y // 29) % 2 * 255], -1).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_load_rgb_decodes_a_large_image_reduced(tmp_path, suffix):
    from vision_tasks.data.common import load_rgb, reduced_size

    path = tmp_path / f"big{suffix}"
    Image.fromarray(_photo(1600, 1200)).save(path)
    full = load_rgb(path)
    small = load_rgb(path, max_side=400)
    assert full.shape == (1200, 1600, 3) and small.shape == (300, 400, 3) == (*reduced_size(1200, 1600, 400), 3)
    # the same picture: the full decode resized agrees with the reduced one (JPEG's DCT scaling is not a resize)
    expected = np.asarray(Image.fromarray(full).resize((400, 300), Image.BILINEAR), dtype=np.float32)
    assert np.abs(expected - small).mean() < 6
    assert load_rgb(path, max_side=1600).shape == (1200, 1600, 3)  # not larger than max_side: as it is


def test_a_large_detection_image_gives_the_same_boxes_decoded_reduced(tmp_path):
    from vision_tasks.data.formats.detection import DetectionDataset, detection_record
    from vision_tasks.data.transforms.detection import detection_eval_transform

    path = tmp_path / "big.jpg"
    Image.fromarray(_photo(1600, 1200)).save(path)
    record = detection_record(path, 1, 1200, 1600, np.array([[100, 300, 900, 1100]]), np.array([0]),
                              np.array([0]), np.array([640000.0]))
    transform = detection_eval_transform(64)
    (image_full, target_full), (image_small, target_small) = (
        DetectionDataset([record], transform, max_side=side)[0] for side in (None, 256))
    torch = pytest.importorskip("torch")
    torch.testing.assert_close(target_small["boxes"], target_full["boxes"], atol=0.05, rtol=0)  # 64x64 input pixels
    assert target_small["orig_size"].tolist() == [1200, 1600]  # detections still map back to the image on disk
    torch.testing.assert_close(target_small["annotations"]["boxes"], target_full["annotations"]["boxes"])
    # the same picture (the 64x64 resize aliases the checkerboard differently from 1600 and from 256 pixels)
    assert (image_small - image_full).abs().mean() < 0.08


def test_a_large_segmentation_image_is_decoded_reduced_with_its_mask(tmp_path):
    from vision_tasks.data.formats.masks import SegmentationDataset, SegmentationRecord

    image, mask = tmp_path / "big.jpg", tmp_path / "big.png"
    Image.fromarray(_photo(1000, 800)).save(image)
    values = np.zeros((800, 1000), np.uint8)
    values[200:600, 100:500] = 2
    values[0:8] = 255
    Image.fromarray(values).save(mask)
    pixels, labels = SegmentationDataset([SegmentationRecord(image, mask)], 3, max_side=250)[0]
    assert pixels.shape == (3, 200, 250) and labels.shape == (200, 250)
    assert set(labels.unique().tolist()) == {0, 2, 255}  # nearest neighbour: no blended class values
    assert labels[50:150, 25:125].eq(2).all() and labels[0:2].eq(255).all()
