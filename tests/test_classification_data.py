"""ImageFolder reading: scanning and its errors, image modes, transforms, and the two data modules."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vision_tasks.data import (
    SHAPES,
    DataError,
    ImageFolderDataModule,
    ImageFolderDataset,
    SyntheticClassificationDataModule,
    classification_eval_transform,
    classification_train_transform,
    scan_image_folder,
)


def _save(path: Path, mode: str = "RGB", size: tuple[int, int] = (20, 14), fmt: str | None = None) -> Path:
    """Write a random image of ``mode`` (``size`` is width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2, "P": 1}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels)  # mode from the shape
    if mode == "P":
        img = img.convert("P")
        img.info["transparency"] = 0
    img.save(path, format=fmt)
    return path


def _image_folder(root: Path, classes=("cat", "dog", "emu"), per_class: int = 3, size=(20, 14)) -> Path:
    for split in ("train", "val"):
        for name in classes:
            for i in range(per_class):
                _save(root / split / name / f"{i}.jpg", size=size)
    return root


# --------------------------------------------------------------------------------------------------
# scan_image_folder


def test_scan_sorted_classes_labels_and_extensions(tmp_path):
    split = tmp_path / "train"
    _save(split / "b" / "x.JPEG")
    _save(split / "b" / "y.png")
    _save(split / "b" / "nested" / "z.bmp")
    _save(split / "a" / "w.webp", fmt="WEBP")
    _save(split / "a" / ".hidden.jpg")
    (split / "a" / "labels.txt").write_text("not an image")
    (split / ".cache").mkdir()
    with pytest.warns(UserWarning, match="ignored 1 file"):
        samples, classes = scan_image_folder(split, verify_images=True)
    assert classes == ["a", "b"]
    assert [(p.relative_to(split).as_posix(), label) for p, label in samples] == [
        ("a/w.webp", 0),
        ("b/nested/z.bmp", 1),
        ("b/x.JPEG", 1),
        ("b/y.png", 1),
    ]


def test_scan_with_given_class_names(tmp_path):
    root = _image_folder(tmp_path)
    samples, classes = scan_image_folder(root / "train", ["emu", "cat"])
    assert classes == ["emu", "cat"]
    assert sorted({(p.parent.name, label) for p, label in samples}) == [("cat", 1), ("emu", 0)]
    with pytest.raises(DataError, match="yak"):
        scan_image_folder(root / "train", ["cat", "yak"])


def test_scan_missing_folder_names_path_and_layout(tmp_path):
    with pytest.raises(DataError, match="root/{train,val}/<class>") as info:
        scan_image_folder(tmp_path / "nowhere" / "train")
    assert str(tmp_path / "nowhere" / "train") in str(info.value)


def test_scan_folder_without_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    _save(tmp_path / "train" / "loose.jpg")
    with pytest.raises(DataError, match="no class sub-folders") as info:
        scan_image_folder(tmp_path / "train")
    assert str(tmp_path / "train") in str(info.value)


def test_scan_class_folder_without_images(tmp_path):
    _save(tmp_path / "train" / "cat" / "0.jpg")
    (tmp_path / "train" / "dog").mkdir()
    (tmp_path / "train" / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images") as info:
        scan_image_folder(tmp_path / "train")
    assert str(tmp_path / "train" / "dog") in str(info.value)


def test_scan_verification_names_unreadable_file(tmp_path):
    root = _image_folder(tmp_path)
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(DataError, match="1 of the .* images of .* cannot be used") as info:
        scan_image_folder(root / "train", verify_images=True)
    assert str(bad) in str(info.value) and "cannot identify image file" in str(info.value)
    # Without verification the scan passes, and reading the file fails naming it.
    samples, _ = scan_image_folder(root / "train")
    dataset = ImageFolderDataset(samples, classification_eval_transform(8))
    index = [p for p, _ in samples].index(bad)
    with pytest.raises(DataError, match="broken.jpg"):
        dataset[index]


# --------------------------------------------------------------------------------------------------
# ImageFolderDataset and transforms


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA", "P"])
def test_dataset_converts_every_mode_to_rgb(tmp_path, mode):
    path = _save(tmp_path / f"img.png", mode=mode)
    dataset = ImageFolderDataset([(path, 2)], classification_eval_transform(12, resize_size=14))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. PIL's warning on palette images with transparency
        image, label = dataset[0]
    assert image.shape == (3, 12, 12) and image.dtype == torch.float32 and label == 2


def test_dataset_reads_16_bit_grayscale_without_clipping(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((6, 6), 40000, dtype=np.uint16)).save(path)
    image, _ = ImageFolderDataset([(path, 0)])[0]
    assert image.shape == (3, 6, 6)
    assert torch.allclose(image, torch.full_like(image, round(40000 / 257) / 255), atol=1 / 255)


def test_dataset_without_transform_gives_unit_range(tmp_path):
    path = _save(tmp_path / "x.png", size=(5, 4))
    image, _ = ImageFolderDataset([(path, 0)])[0]
    assert image.shape == (3, 4, 5) and image.dtype == torch.float32
    with Image.open(path) as img:
        expected = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    assert torch.equal(image, expected)


def test_eval_transform_resizes_crops_into_0_1():
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    image[:, 40:] = 255  # left half black, right half white
    out = classification_eval_transform(16)(image=image)["image"]  # shorter side -> 18, center crop 16
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert out[:, :, 0].eq(0).all() and out[:, :, -1].eq(1).all()  # the models normalise themselves
    with pytest.raises(ValueError, match="resize_size"):
        classification_eval_transform(16, resize_size=12)


def test_train_transform_output_and_arguments():
    out = classification_train_transform(24, scale=(0.5, 1.0))(image=np.full((30, 50, 3), 128, dtype=np.uint8))["image"]
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, 128 / 255), atol=1e-6)
    with pytest.raises(ValueError, match="scale"):
        classification_train_transform(24, scale=(0.0, 1.0))


# --------------------------------------------------------------------------------------------------
# ImageFolderDataModule


def test_datamodule_batches_and_classes(tmp_path):
    root = _image_folder(tmp_path / "data", per_class=4)
    dm = ImageFolderDataModule(str(root), image_size=16, batch_size=5, num_workers=0)
    with pytest.raises(RuntimeError, match="setup"):
        dm.num_classes
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.class_names == ["cat", "dog", "emu"]
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 3
    assert len(dm.train_dataloader()) == 12 // 5  # drop_last: dataset larger than a batch
    val = dm.val_dataloader()
    assert len(val.dataset) == 12 and len(val) == 3  # keeps the last partial batch
    assert [label for _, label in val.dataset] == sorted(label for _, label in val.dataset)  # not shuffled
    for loader in (dm.test_dataloader(), dm.predict_dataloader()):
        assert loader.dataset is dm.val_dataset
    assert dm.hparams.image_size == 16 and dm.hparams.root == str(root)
    assert ImageFolderDataModule(**dm.hparams).root == root


def test_datamodule_small_dataset_keeps_last_batch_and_eval_workers_persist(tmp_path):
    root = _image_folder(tmp_path / "data", per_class=1)
    dm = ImageFolderDataModule(str(root), image_size=8, batch_size=64, num_workers=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert not loader.drop_last and len(loader) == 1
    # training workers start anew each epoch, seeded from (run seed, epoch, worker id); evaluation's persist
    assert not loader.persistent_workers and loader.num_workers == 1 and loader.worker_init_fn is not None
    assert dm.val_dataloader().persistent_workers
    images, labels = next(iter(loader))  # datasets and transforms survive the trip to a worker
    assert images.shape == (3, 3, 8, 8) and sorted(labels.tolist()) == [0, 1, 2]


def test_datamodule_validate_stage_scans_only_val(tmp_path):
    root = _image_folder(tmp_path / "data")
    for path in (root / "train").rglob("*.jpg"):
        path.write_bytes(b"garbage")  # would fail verification if scanned
    dm = ImageFolderDataModule(str(root), image_size=8, num_workers=0)
    dm.setup("validate")
    assert dm.num_classes == 3 and dm.train_dataset is None
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()


def test_datamodule_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _image_folder(tmp_path / "data")
    dm = ImageFolderDataModule("~/data", image_size=8, num_workers=0)
    assert dm.root == tmp_path / "data"
    dm.setup("fit")
    assert len(dm.train_dataset) == 9


def test_datamodule_accepts_grayscale_and_rgba_files(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val"):
        _save(root / split / "gray" / "0.png", mode="L")
        _save(root / split / "alpha" / "0.png", mode="RGBA")
        _save(root / split / "palette" / "0.png", mode="P")
    dm = ImageFolderDataModule(str(root), image_size=8, batch_size=3, num_workers=0)
    dm.setup("fit")
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (3, 3, 8, 8) and labels.tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "break_it, expected",
    [
        (lambda root: None, "does not exist"),  # missing root
        (lambda root: root.mkdir(), "does not exist"),  # root without splits
        (lambda root: (root / "train").mkdir(parents=True), "no class sub-folders"),
    ],
)
def test_datamodule_missing_or_empty_root(tmp_path, break_it, expected):
    root = tmp_path / "data"
    break_it(root)
    dm = ImageFolderDataModule(str(root), num_workers=0)
    with pytest.raises(DataError, match=expected) as info:
        dm.setup("fit")
    assert str(root / "train") in str(info.value)


def test_datamodule_class_without_images(tmp_path):
    root = _image_folder(tmp_path / "data")
    for path in (root / "val" / "dog").iterdir():
        path.unlink()
    with pytest.raises(DataError, match="no images") as info:
        ImageFolderDataModule(str(root), num_workers=0).setup("fit")
    assert str(root / "val" / "dog") in str(info.value)


def test_datamodule_unreadable_image(tmp_path):
    root = _image_folder(tmp_path / "data")
    bad = root / "val" / "emu" / "corrupt.jpg"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(DataError, match="unreadable") as info:
        ImageFolderDataModule(str(root), num_workers=0).setup("fit")
    assert str(bad) in str(info.value)


def test_datamodule_val_classes_differ_from_train(tmp_path):
    root = _image_folder(tmp_path / "data")
    (root / "val" / "emu").rename(root / "val" / "yak")
    with pytest.raises(DataError, match="differ") as info:
        ImageFolderDataModule(str(root), num_workers=0).setup("fit")
    message = str(info.value)
    assert "yak" in message and "emu" in message and str(root / "val") in message


# --------------------------------------------------------------------------------------------------
# SyntheticClassificationDataModule

TINY = dict(num_train_per_class=4, num_val_per_class=2, synthetic_image_size=32, image_size=32, resize_size=32)


def test_synthetic_datamodule_generates_in_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VISION_TASKS_DATA", str(tmp_path))
    dm = SyntheticClassificationDataModule(**TINY, batch_size=8, num_workers=0)
    assert dm.root.parent == tmp_path and dm.root.name.startswith("classification-")
    dm.prepare_data()
    assert (dm.root / "synthetic.json").is_file()
    dm.setup("fit")
    assert dm.num_classes == len(SHAPES) and dm.class_names == sorted(SHAPES)
    assert len(dm.train_dataset) == 4 * len(SHAPES) and len(dm.val_dataset) == 2 * len(SHAPES)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert 0 <= labels.min() and labels.max() < len(SHAPES)
    images, _ = next(iter(dm.val_dataloader()))
    assert images.shape == (8, 3, 32, 32)
    assert dm.hparams.root is None  # the cache path is resolved where the hyperparameters are loaded
    assert type(dm)(**dm.hparams).root == dm.root
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0.05  # [0, 1]: the model normalises


def test_synthetic_datamodule_hparams_are_its_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("VISION_TASKS_DATA", str(tmp_path / "cache"))
    dm = SyntheticClassificationDataModule(**TINY, seed=3, hflip=0.0, num_workers=0)
    assert dm.hparams["root"] is None and dm.root.parent == tmp_path / "cache"  # the cache folder is not recorded
    assert dm.hparams["seed"] == 3 and dm.hparams["hflip"] == 0.0  # extra keyword arguments are recorded too
    assert "train_dir" not in dm.hparams  # only what this constructor was given, with its own defaults
    given = SyntheticClassificationDataModule(str(tmp_path / "shapes"), **TINY, num_workers=0)
    assert given.hparams["root"] == str(tmp_path / "shapes")
    for module in (dm, given, ImageFolderDataModule("~/data", image_size=16)):
        rebuilt = type(module)(**module.hparams)
        assert rebuilt.hparams == module.hparams and rebuilt.root == module.root


def test_synthetic_datamodule_setup_without_prepare_data(tmp_path):
    dm = SyntheticClassificationDataModule(str(tmp_path / "shapes"), **TINY, num_workers=0)
    dm.setup("validate")
    assert (tmp_path / "shapes" / "synthetic.json").is_file()
    assert len(dm.val_dataset) == 2 * len(SHAPES)


def test_synthetic_datamodule_refuses_foreign_root(tmp_path):
    _image_folder(tmp_path / "real")
    dm = SyntheticClassificationDataModule(str(tmp_path / "real"), **TINY, num_workers=0)
    with pytest.raises(DataError, match=str(tmp_path / "real")):
        dm.prepare_data()
