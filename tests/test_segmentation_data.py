"""Segmentation data: VOC / SBD / mask-folder readers, masks, dataset, collate, transforms, synthetic set, data modules.

Every dataset here is written by the test itself, in the real on-disk formats, a few 40x30 images each.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vision_tasks.data import (
    IGNORE_INDEX,
    MEAN_PIXEL,
    SHAPES,
    VOC_CLASSES,
    VOC_SEG_CLASSES,
    DataError,
    SegmentationDataset,
    SegmentationFolderDataModule,
    SegmentationRecord,
    SyntheticSegmentationDataModule,
    VOCSegmentationDataModule,
    generate_segmentation,
    load_mask,
    read_segmentation_folder,
    read_voc_segmentation,
    segmentation_collate,
    segmentation_eval_collate,
    segmentation_eval_transform,
    segmentation_train_transform,
    synthetic_root,
    voc_colormap,
)
from vision_tasks.data.synthetic import MANIFEST_NAME, draw_detection_image, draw_segmentation_image
from vision_tasks.data.synthetic.cache import sample_rng

COCO128 = Path("/work/shared/data/coco128")
SIZE = (30, 40)  # height, width of the test images


# --------------------------------------------------------------------------------------------------
# Writers of tiny datasets in the real formats


def _image(seed: int, size=SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _mask(seed: int, size=SIZE, num_classes: int = 21) -> np.ndarray:
    """A block mask: background, two classes, a 255 border line."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(size, dtype=np.uint8)
    a, b = (int(v) for v in rng.integers(1, num_classes, 2))
    mask[5:15, 5:20] = a
    mask[18:28, 22:38] = b
    mask[4, 5:20] = 255
    return mask


def _save_palette(path: Path, mask: np.ndarray) -> None:
    img = Image.fromarray(mask)
    img.putpalette(voc_colormap(256).tobytes())
    assert img.mode == "P"
    img.save(path)


def write_voc(
    root: Path, splits=None, *, masks: str = "SegmentationClass", palette: bool = True, image_ext: str = ".jpg"
) -> Path:
    """``root/VOC2012`` with images, masks and ImageSets/Segmentation lists; returns ``root``."""
    splits = splits or {"train": ["2007_000001", "2007_000002", "2007_000003"], "val": ["2007_000004"]}
    base = root / "VOC2012"
    for sub in ("JPEGImages", masks, "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    seed = 0
    for split, ids in splits.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i in ids:
            seed += 1
            Image.fromarray(_image(seed)).save(base / "JPEGImages" / f"{i}{image_ext}")
            mask = _mask(seed)
            if palette:
                _save_palette(base / masks / f"{i}.png", mask)
            else:
                Image.fromarray(mask).save(base / masks / f"{i}.png")  # mode "L", as SegmentationClassAug
    return root


def write_folder(root: Path, split: str, stems, *, unlabelled=(), num_classes: int = 5) -> Path:
    """``root/images/<split>/<stem>.jpg`` and ``root/masks/<split>/<stem>.png`` (grayscale); returns ``root``."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "masks" / split).mkdir(parents=True, exist_ok=True)
    for k, stem in enumerate([*stems, *unlabelled]):
        Image.fromarray(_image(k)).save(root / "images" / split / f"{stem}.jpg")
        if stem in stems:
            Image.fromarray(_mask(k, num_classes=num_classes)).save(root / "masks" / split / f"{stem}.png")
    return root


# --------------------------------------------------------------------------------------------------
# Colour map and classes


def test_voc_colormap_and_classes():
    cmap = voc_colormap(256)
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    assert tuple(cmap[0]) == (0, 0, 0)
    assert tuple(cmap[1]) == (128, 0, 0)
    assert tuple(cmap[2]) == (0, 128, 0)
    assert tuple(cmap[15]) == (192, 128, 128)  # person
    assert tuple(cmap[255]) == (224, 224, 192)  # ignore
    assert len({tuple(c) for c in cmap.tolist()}) == 256
    np.testing.assert_array_equal(voc_colormap(21), cmap[:21])
    assert len(VOC_SEG_CLASSES) == 21 and VOC_SEG_CLASSES[0] == "background"
    assert VOC_SEG_CLASSES[1:] == VOC_CLASSES and VOC_SEG_CLASSES[15] == "person"
    assert IGNORE_INDEX == 255


# --------------------------------------------------------------------------------------------------
# Readers


def test_read_voc_segmentation(tmp_path):
    root = write_voc(tmp_path / "VOCdevkit")
    train = read_voc_segmentation(root, "train")
    assert [r.image.name for r in train] == ["2007_000001.jpg", "2007_000002.jpg", "2007_000003.jpg"]
    assert [r.mask for r in train] == [root / "VOC2012" / "SegmentationClass" / f"2007_00000{i}.png" for i in (1, 2, 3)]
    assert all(isinstance(r, SegmentationRecord) for r in train)
    # root may be VOC2012 itself
    val = read_voc_segmentation(root / "VOC2012", "val")
    assert val == [SegmentationRecord(root / "VOC2012/JPEGImages/2007_000004.jpg",
                                      root / "VOC2012/SegmentationClass/2007_000004.png")]
    # palette masks read as class indices
    np.testing.assert_array_equal(load_mask(val[0].mask, 21), _mask(4))


def test_read_voc_segmentation_png_images_fallback(tmp_path):
    root = write_voc(tmp_path, {"train": ["a", "b"]}, image_ext=".png")
    Image.fromarray(_image(9)).save(root / "VOC2012/JPEGImages/b.jpg")  # .jpg is preferred when both exist
    records = read_voc_segmentation(root, "train")
    assert [r.image.name for r in records] == ["a.png", "b.jpg"]


def test_read_sbd_train_aug(tmp_path):
    root = write_voc(tmp_path, {"train_aug": ["x1", "x2"]}, masks="SegmentationClassAug", palette=False)
    records = read_voc_segmentation(root, "train_aug", masks="SegmentationClassAug")
    assert len(records) == 2 and all(r.mask.parent.name == "SegmentationClassAug" for r in records)
    assert Image.open(records[0].mask).mode == "L"
    np.testing.assert_array_equal(load_mask(records[0].mask, 21), _mask(1))


def test_voc_missing_files_name_the_list(tmp_path):
    root = write_voc(tmp_path)
    base = root / "VOC2012"
    with pytest.raises(DataError, match=r"train_aug\.txt does not exist.*SegmentationClassAug"):
        read_voc_segmentation(root, "train_aug", masks="SegmentationClassAug")
    with pytest.raises(DataError, match="no VOC2007 segmentation data"):
        read_voc_segmentation(root, "train", year="2007")

    (base / "JPEGImages" / "2007_000002.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of the 3 ids listed in .*train\.txt have no image.*2007_000002") as info:
        read_voc_segmentation(root, "train")
    assert str(base / "ImageSets" / "Segmentation" / "train.txt") in str(info.value)

    (base / "SegmentationClass" / "2007_000004.png").unlink()
    with pytest.raises(DataError, match=r"val\.txt have no mask <id>\.png in .*SegmentationClass: 2007_000004"):
        read_voc_segmentation(root, "val")

    ids = [f"m{i}" for i in range(8)]
    (base / "ImageSets" / "Segmentation" / "many.txt").write_text("\n".join(ids))
    with pytest.raises(DataError, match=r"8 of the 8 ids .*m0, m1, m2, m3, m4 \.\.\. and 3 more"):
        read_voc_segmentation(root, "many")
    (base / "ImageSets" / "Segmentation" / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match=r"empty\.txt is empty"):
        read_voc_segmentation(root, "empty")


def test_voc_size_mismatch_names_both_files(tmp_path):
    root = write_voc(tmp_path)
    mask_path = root / "VOC2012/SegmentationClass/2007_000003.png"
    _save_palette(mask_path, np.zeros((31, 40), np.uint8))
    with pytest.raises(DataError) as info:
        read_voc_segmentation(root, "train")
    message = str(info.value)
    assert str(root / "VOC2012/JPEGImages/2007_000003.jpg") in message and str(mask_path) in message
    assert "40x30" in message and "40x31" in message


def test_read_segmentation_folder(tmp_path):
    root = write_folder(tmp_path, "train", ["b", "a", "c"], unlabelled=["z"])
    with pytest.warns(UserWarning, match=r"skipped 1 of 4 image\(s\) without a mask.*z\.jpg"):
        records = read_segmentation_folder(root, "train")
    assert [(r.image.name, r.mask.name) for r in records] == [(f"{s}.jpg", f"{s}.png") for s in "abc"]
    assert all(r.image.parent == root / "images" / "train" for r in records)

    Image.fromarray(_mask(0)).save(root / "masks" / "train" / "orphan.png")
    with pytest.raises(DataError, match=r"1 of the 4 masks in .* have no image of the same name.*orphan\.png"):
        read_segmentation_folder(root, "train")
    with pytest.raises(DataError, match=r"mask folder .*masks/val does not exist; expected the layout"):
        read_segmentation_folder(root, "val")
    (root / "masks" / "empty").mkdir()
    (root / "images" / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no \.png masks; expected the layout .*images/empty/<name>\.jpg"):
        read_segmentation_folder(root, "empty")


def test_read_segmentation_folder_custom_layout_and_size_check(tmp_path):
    (tmp_path / "val2017").mkdir()
    (tmp_path / "labels" / "val2017").mkdir(parents=True)
    Image.fromarray(_image(0)).save(tmp_path / "val2017" / "001.jpg")
    Image.fromarray(_mask(0)[:, :39]).save(tmp_path / "labels" / "val2017" / "001.png")
    with pytest.raises(DataError, match=r"001\.jpg is 40x30 but its mask .*001\.png is 39x30"):
        read_segmentation_folder(tmp_path, "val2017", images="{split}", masks="labels/{split}")


@pytest.mark.skipif(not (COCO128 / "voc21_masks" / "val2017").is_dir(), reason="coco128 VOC-21 masks not present")
def test_read_segmentation_folder_coco128():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 28 val images have no mask
        records = read_segmentation_folder(COCO128, "val2017", images="{split}", masks="voc21_masks/{split}")
    assert len(records) == 100
    assert all(r.image.stem == r.mask.stem and r.image.suffix == ".jpg" for r in records)
    image, mask = SegmentationDataset(records[:1], 21)[0]
    assert image.shape[1:] == mask.shape and mask.dtype == torch.int64


# --------------------------------------------------------------------------------------------------
# Masks


def test_load_mask_refuses_values_outside_the_classes(tmp_path):
    path = tmp_path / "x.png"
    mask = _mask(0, num_classes=5)
    mask[0, 0], mask[0, 1] = 21, 37
    Image.fromarray(mask).save(path)
    with pytest.raises(DataError, match=r"mask .*x\.png has values \[21, 37\] outside 0\.\.20 and 255 \(ignore\)"):
        load_mask(path, 21)
    assert load_mask(path, 38).max() == 255
    # 16-bit grayscale masks: values above 255 are refused too
    wide = mask.astype(np.uint16)
    wide[1, 1] = 300
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode.startswith("I")
    with pytest.raises(DataError, match=r"wide\.png has values \[21, 37, 300\] outside 0\.\.20"):
        load_mask(tmp_path / "wide.png", 21)


def test_load_mask_rgb_colours_map_through_the_palette(tmp_path):
    mask = _mask(3)
    rgb = voc_colormap(256)[mask]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    out = load_mask(tmp_path / "rgb.png", 21)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, mask)
    Image.fromarray(np.dstack([rgb, np.full(SIZE, 255, np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "rgba.png", 21), mask)
    # a custom palette
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    Image.fromarray(palette[np.array([[0, 1], [2, 1]])]).save(tmp_path / "custom.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "custom.png", 3, palette=palette), [[0, 1], [2, 1]])

    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad\.png is an RGB image with 1 colour\(s\) .*\[\(1, 2, 3\)\]"):
        load_mask(tmp_path / "bad.png", 21)


def test_load_mask_unreadable(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read mask .*broken\.png"):
        load_mask(tmp_path / "broken.png", 21)


# --------------------------------------------------------------------------------------------------
# Dataset and collate


def test_dataset_grayscale_and_rgba_images_become_rgb(tmp_path):
    gray = _image(0)[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgba = np.dstack([_image(1), np.full(SIZE, 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    _save_palette(tmp_path / "m0.png", _mask(0))
    _save_palette(tmp_path / "m1.png", _mask(1))
    records = [SegmentationRecord(tmp_path / "gray.png", tmp_path / "m0.png"),
               SegmentationRecord(tmp_path / "rgba.png", tmp_path / "m1.png")]
    dataset = SegmentationDataset(records, 21)
    assert len(dataset) == 2
    image, mask = dataset[0]
    assert image.shape == (3, *SIZE) and image.dtype == torch.float32
    assert mask.shape == SIZE and mask.dtype == torch.int64
    for channel in range(3):  # without a transform: [0, 1], as the other datasets
        np.testing.assert_allclose(image[channel].numpy(), gray.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(mask.numpy(), _mask(0))
    image, _ = dataset[1]
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), rgba[..., :3].astype(np.float32) / 255.0)

    transformed = SegmentationDataset(records, 21, segmentation_eval_transform())
    image, mask = transformed[1]
    assert image.shape == (3, *SIZE) and image.dtype == torch.float32 and mask.dtype == torch.int64


def test_dataset_checks_size_and_values_at_load(tmp_path):
    Image.fromarray(_image(0)).save(tmp_path / "img.png")
    _save_palette(tmp_path / "small.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match=r"image .*img\.png is 40x30 but its mask .*small\.png is 10x10"):
        SegmentationDataset([SegmentationRecord(tmp_path / "img.png", tmp_path / "small.png")], 21)[0]
    _save_palette(tmp_path / "m.png", _mask(0))
    with pytest.raises(DataError, match=r"m\.png has values \[\d+(, \d+)?\] outside 0\.\.1 "):
        SegmentationDataset([SegmentationRecord(tmp_path / "img.png", tmp_path / "m.png")], 2)[0]


def test_collate_stacks_training_crops_and_lists_evaluation_images():
    a = (torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.int64))
    b = (torch.full((3, 6, 3), 2.0), torch.ones(6, 3, dtype=torch.int64))
    images, masks = segmentation_collate([a, a])
    assert images.shape == (2, 3, 4, 5) and masks.shape == (2, 4, 5)
    with pytest.raises(ValueError, match="different sizes"):
        segmentation_collate([a, b])
    # evaluation: whole images at their own size, nothing padded (the model pads and crops back)
    images, masks = segmentation_eval_collate([a, b])
    assert [tuple(i.shape) for i in images] == [(3, 4, 5), (3, 6, 3)] and masks[1] is b[1]


# --------------------------------------------------------------------------------------------------
# Transforms


def test_train_transform_crops_and_keeps_mask_values():
    image, mask = _image(0), _mask(0)
    values = set(np.unique(mask).tolist())
    transform = segmentation_train_transform(24)
    for _ in range(6):
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (3, 24, 24) and out["image"].dtype == torch.float32
        assert out["mask"].shape == (24, 24)
        assert set(out["mask"].unique().tolist()) <= values  # nearest: no new values
    # scaled down 2x (20x15) and padded to 48: the mean pixel in the image, 255 in the mask; images in [0, 1]
    out = segmentation_train_transform(48, scale_range=(0.5, 0.5), hflip=0)(image=image, mask=mask)
    assert out["image"].shape == (3, 48, 48) and 0 <= out["image"].min() and out["image"].max() <= 1
    assert out["mask"][15:].eq(255).all() and out["mask"][:, 20:].eq(255).all()
    mean_pixel = torch.tensor(MEAN_PIXEL).view(3, 1, 1)
    assert torch.allclose(out["image"][:, 15:], mean_pixel.expand(3, 33, 48))
    assert torch.allclose(out["image"][:, :, 20:], mean_pixel.expand(3, 48, 28))
    assert set(out["mask"][:15, :20].unique().tolist()) <= values
    # scaled up 2x: a 60x80 image, cropped
    out = segmentation_train_transform(50, scale_range=(2.0, 2.0))(image=image, mask=mask)
    assert out["image"].shape == (3, 50, 50) and set(out["mask"].unique().tolist()) <= values


def test_transform_arguments_are_checked():
    with pytest.raises(ValueError, match="crop_size"):
        segmentation_train_transform(0)
    with pytest.raises(ValueError, match="scale_range"):
        segmentation_train_transform(32, scale_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="scale_range"):
        segmentation_train_transform(32, scale_range=(2.0, 1.0))


def test_eval_transform_keeps_full_size_in_0_1():
    image, mask = _image(0), _mask(0)
    out = segmentation_eval_transform()(image=image, mask=mask)
    assert out["image"].shape == (3, *SIZE) and out["image"].dtype == torch.float32
    np.testing.assert_array_equal(out["mask"].numpy(), mask)
    torch.testing.assert_close(out["image"], torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    assert segmentation_eval_transform()(image=image)["image"].shape == (3, *SIZE)  # an image alone (prediction)


# --------------------------------------------------------------------------------------------------
# Synthetic set

SMALL = dict(num_train=4, num_val=2, image_size=48)


def test_generate_segmentation_layout_and_masks(tmp_path):
    root = generate_segmentation(tmp_path / "seg", **SMALL)
    base = root / "VOC2012"
    train = (base / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (base / "ImageSets/Segmentation/val.txt").read_text().split()
    assert train == ["000001", "000002", "000003", "000004"] and val == ["000005", "000006"]
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["task"] == "segmentation" and manifest["classes"] == ["background", *SHAPES]
    assert manifest["counts"] == {"train": 4, "val": 2}
    records = read_voc_segmentation(root, "train") + read_voc_segmentation(root, "val")
    assert len(records) == 6
    ignored = 0
    for record in records:
        assert record.image.suffix == ".png" and Image.open(record.image).mode == "RGB"
        assert Image.open(record.mask).mode == "P" and Image.open(record.mask).size == (48, 48)
        mask = load_mask(record.mask, 9)
        values = set(np.unique(mask).tolist())
        assert 0 in values and values & set(range(1, 9)) and values <= {*range(9), 255}
        ignored += int((mask == 255).sum())
        assert (mask == 255).mean() < 0.1  # a thin border only
    assert ignored > 0


def test_segmentation_mask_agrees_with_detection_masks():
    layout = dict(min_objects=2, max_objects=3, min_size=0.25, max_size=0.6, max_overlap=0.3)
    for index in range(3):
        image, mask = draw_segmentation_image(64, sample_rng(0, 0, index), **layout)
        same_image, shapes = draw_detection_image(64, sample_rng(0, 0, index), **layout)
        np.testing.assert_array_equal(image, same_image)  # the same layout and picture
        foreground = np.zeros(mask.shape, bool)
        for label, shape_mask in shapes:  # visible coverage > 0.5: that shape's class or the ignore border
            assert np.isin(mask[shape_mask], [label + 1, 255]).all()
            assert (mask[shape_mask] == label + 1).mean() > 0.7
            foreground |= shape_mask
        assert np.isin(mask[~foreground], [0, 255]).all()
        # the ignore band is the ~1 px anti-aliased edge: every ignored pixel has a labelled neighbour, and
        # nearly all have neighbours of two labels (the band lies between them)
        ys, xs = np.nonzero(mask == 255)
        assert len(ys) > 0
        padded = np.pad(mask, 1, mode="edge")
        labels_around = [
            len(set(window[window != 255].tolist()))
            for window in (padded[y : y + 3, x : x + 3] for y, x in zip(ys, xs))
        ]
        assert min(labels_around) >= 1
        assert np.mean(np.array(labels_around) >= 2) > 0.9


def test_generate_segmentation_deterministic_and_reused(tmp_path, monkeypatch):
    a = generate_segmentation(tmp_path / "a", **SMALL)
    b = generate_segmentation(tmp_path / "b", **SMALL)
    for sub in ("JPEGImages", "SegmentationClass"):
        for path in sorted((a / "VOC2012" / sub).iterdir()):
            assert path.read_bytes() == (b / "VOC2012" / sub / path.name).read_bytes()
    stamp = (a / MANIFEST_NAME).stat().st_mtime_ns
    assert generate_segmentation(tmp_path / "a", **SMALL) == a  # reused
    assert (a / MANIFEST_NAME).stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="holds synthetic data generated with"):
        generate_segmentation(tmp_path / "a", **{**SMALL, "seed": 1})
    other = generate_segmentation(tmp_path / "c", **{**SMALL, "seed": 1})
    assert (other / "VOC2012/SegmentationClass/000001.png").read_bytes() != (
        a / "VOC2012/SegmentationClass/000001.png"
    ).read_bytes()
    monkeypatch.setenv("VISION_TASKS_DATA", str(tmp_path / "cache"))
    assert synthetic_root("segmentation", **SMALL).name.startswith("segmentation-")
    assert synthetic_root("segmentation") == synthetic_root("segmentation", seed=0, max_objects=3)


# --------------------------------------------------------------------------------------------------
# Data modules


def test_voc_data_module(tmp_path):
    root = write_voc(tmp_path)
    dm = VOCSegmentationDataModule(str(root), crop_size=32, batch_size=2, num_workers=0)
    assert dm.num_classes == 21 and dm.class_names == list(VOC_SEG_CLASSES) and dm.ignore_index == 255
    assert dm.hparams["crop_size"] == 32 and dm.hparams["root"] == str(root)
    assert VOCSegmentationDataModule(**dm.hparams).hparams == dm.hparams
    dm.setup("fit")
    assert len(dm.train_dataset) == 3 and len(dm.val_dataset) == 1
    loader = dm.train_dataloader()
    assert loader.collate_fn is segmentation_collate
    images, masks = next(iter(loader))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert masks.shape == (2, 32, 32) and masks.dtype == torch.int64
    images, masks = next(iter(dm.val_dataloader()))  # whole images, as lists
    assert [tuple(i.shape) for i in images] == [(3, *SIZE)] and [tuple(m.shape) for m in masks] == [SIZE]
    with pytest.raises(ValueError, match="crop_size"):
        VOCSegmentationDataModule(str(root), crop_size=0)
    with pytest.raises(ValueError, match="scale_range"):
        VOCSegmentationDataModule(str(root), scale_range=(1.0, 0.5))


def test_data_module_checks_every_mask_before_training(tmp_path):
    """A bad mask value stops setup() (naming the file and the values), not an epoch half-way through."""
    root = write_voc(tmp_path, {"train": ["a", "b", "c"], "val": ["d"]})
    bad = _mask(7)
    bad[0, 0], bad[0, 1] = 30, 44
    _save_palette(root / "VOC2012" / "SegmentationClass" / "b.png", bad)
    dm = VOCSegmentationDataModule(str(root), crop_size=32, batch_size=2, num_workers=0)
    with pytest.raises(DataError, match=r"1 of 3 masks .*\n  mask .*b\.png has values \[30, 44\] outside 0\.\.20"):
        dm.setup("fit")
    lazy = VOCSegmentationDataModule(str(root), crop_size=32, batch_size=2, num_workers=0, verify_masks=False)
    lazy.setup("fit")  # without the check the same error comes when the mask is loaded
    with pytest.raises(DataError, match=r"b\.png has values \[30, 44\]"):
        lazy.train_dataset[1]


def test_voc_aug_data_module(tmp_path):
    root = write_voc(tmp_path, {"train_aug": ["a", "b"]}, masks="SegmentationClassAug", palette=False)
    write_voc(tmp_path, {"val": ["c"]})
    dm = VOCSegmentationDataModule(
        str(root), train_split="train_aug", train_masks="SegmentationClassAug", crop_size=16, batch_size=2,
        num_workers=0,
    )
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 16, 16) and masks.shape == (2, 16, 16)


def test_folder_data_module(tmp_path):
    root = write_folder(tmp_path, "train", ["a", "b", "c"], num_classes=5)
    write_folder(tmp_path, "val", ["d", "e"], num_classes=5)
    Image.fromarray(_image(0, (20, 40))).save(root / "images" / "val" / "e.jpg")  # a smaller val image
    Image.fromarray(_mask(0, (20, 40), num_classes=5)).save(root / "masks" / "val" / "e.png")
    names = ["background", "a", "b", "c", "d"]
    dm = SegmentationFolderDataModule(str(root), names, crop_size=24, batch_size=2, num_workers=0)
    assert dm.num_classes == 5 and dm.class_names == names
    assert dm.hparams["class_names"] == names and SegmentationFolderDataModule(**dm.hparams).hparams == dm.hparams
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 24, 24) and masks.shape == (2, 24, 24)
    images, masks = next(iter(dm.val_dataloader()))  # full size, each its own (the model pads them)
    assert [tuple(i.shape) for i in images] == [(3, 30, 40), (3, 20, 40)]
    assert [tuple(m.shape) for m in masks] == [(30, 40), (20, 40)]

    assert SegmentationFolderDataModule(str(root), "voc").num_classes == 21
    for bad in ([], ["a", "a"], "coco", ["a", 3]):
        with pytest.raises(ValueError, match="class_names"):
            SegmentationFolderDataModule(str(root), bad)
    # mask values beyond the classes stop setup(), naming the files
    dm = SegmentationFolderDataModule(str(root), ["background", "a"], crop_size=24, batch_size=2, num_workers=0)
    with pytest.raises(DataError, match=r"(?s)2 of 2 masks .*masks/val/d\.png has values \[\d"):
        dm.setup("validate")


def test_synthetic_data_module(tmp_path, monkeypatch):
    monkeypatch.setenv("VISION_TASKS_DATA", str(tmp_path / "cache"))
    dm = SyntheticSegmentationDataModule(
        num_train=4, num_val=2, synthetic_image_size=48, crop_size=32, batch_size=2, num_workers=0
    )
    assert dm.hparams["root"] is None  # resolved on the machine that loads the hyperparameters
    assert dm.root == synthetic_root("segmentation", **SMALL)
    assert dm.class_names == ["background", *SHAPES] and dm.num_classes == 9
    dm.setup("fit")  # generates: prepare_data() was skipped
    assert (dm.root / MANIFEST_NAME).is_file()
    assert len(dm.train_dataset) == 4 and len(dm.val_dataset) == 2
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32) and masks.dtype == torch.int64
    assert 0 <= images.min() and images.max() <= 1  # the model normalises (and turns grey)
    images, masks = next(iter(dm.val_dataloader()))
    assert [tuple(i.shape) for i in images] == [(3, 48, 48)] * 2
    assert set(torch.cat([m.flatten() for m in masks]).unique().tolist()) <= {*range(9), 255}
    explicit = SyntheticSegmentationDataModule(str(tmp_path / "here"), num_train=4, num_val=2, synthetic_image_size=48)
    assert explicit.hparams["root"] == str(tmp_path / "here")
    for module in (dm, explicit):  # the recorded arguments rebuild the module
        rebuilt = type(module)(**module.hparams)
        assert rebuilt.hparams == module.hparams and rebuilt.root == module.root
    explicit.prepare_data()
    assert os.path.isfile(tmp_path / "here" / "VOC2012/ImageSets/Segmentation/train.txt")
