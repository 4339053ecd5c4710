"""The synthetic shape generator: layout, manifest, determinism, safety, and that shapes are visible."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vision_tasks.data import DataError, SHAPES, default_data_dir, generate_classification, synthetic_root
from vision_tasks.data import synthetic
from vision_tasks.data.synthetic import classification as synthetic_classification

TINY = dict(num_train_per_class=3, num_val_per_class=2, image_size=32)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_default_data_dir_env_and_home(monkeypatch, tmp_path):
    monkeypatch.setenv("VISION_TASKS_DATA", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache"
    monkeypatch.delenv("VISION_TASKS_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".cache" / "vision_tasks"


def test_synthetic_root_encodes_task_and_params(monkeypatch, tmp_path):
    monkeypatch.setenv("VISION_TASKS_DATA", str(tmp_path))
    root = synthetic_root("classification", **TINY)
    assert root.parent == tmp_path and root.name.startswith("classification-")
    assert len(root.name) == len("classification-") + 8
    # The generator's defaults are filled in before hashing.
    assert synthetic_root("classification") == synthetic_root("classification", seed=0, image_size=64)
    assert synthetic_root("classification", **TINY, seed=1) != root
    assert synthetic_root("classification", **{**TINY, "image_size": 33}) != root
    with pytest.raises(ValueError, match="no synthetic generator"):
        synthetic_root("nonsense")
    with pytest.raises(TypeError, match="colour"):
        synthetic_root("classification", colour=3)


def test_layout_counts_and_manifest(tmp_path):
    root = generate_classification(tmp_path / "shapes", **TINY, seed=5)
    assert root == tmp_path / "shapes"
    assert sorted(p.name for p in root.iterdir()) == ["synthetic.json", "train", "val"]
    for split, per_class in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(SHAPES)
        for kind in SHAPES:
            names = sorted(p.name for p in (root / split / kind).iterdir())
            assert names == [f"{i:05d}.png" for i in range(per_class)]
    with Image.open(root / "train" / "star" / "00000.png") as img:
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (32, 32))
    manifest = json.loads((root / "synthetic.json").read_text())
    assert manifest["task"] == "classification"
    assert manifest["version"] == synthetic.GENERATOR_VERSION
    assert manifest["params"] == {**TINY, "seed": 5, "clutter": False}
    assert manifest["classes"] == list(SHAPES)
    assert manifest["counts"] == {"train": 3 * len(SHAPES), "val": 2 * len(SHAPES)}
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]  # no temporary folder left behind


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = _files(generate_classification(tmp_path / "a", **TINY, seed=1))
    b = _files(generate_classification(tmp_path / "b", **TINY, seed=1))
    c = _files(generate_classification(tmp_path / "c", **TINY, seed=2))
    assert len(a) == 5 * len(SHAPES) and a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)
    assert len(set(a.values())) == len(a)  # no two images alike, train and val included


def test_images_do_not_depend_on_how_many_are_generated(tmp_path):
    few = _files(generate_classification(tmp_path / "few", num_train_per_class=2, num_val_per_class=1, image_size=32))
    many = _files(generate_classification(tmp_path / "many", **TINY))
    assert few.items() <= many.items()


def test_second_call_reuses_without_rewriting(tmp_path, monkeypatch):
    root = generate_classification(tmp_path / "shapes", **TINY)
    before = _mtimes(root)

    def must_not_draw(*args, **kwargs):
        raise AssertionError("regenerated an existing dataset")

    monkeypatch.setattr(synthetic_classification, "draw_classification_image", must_not_draw)  # what the writer calls
    assert generate_classification(str(tmp_path / "shapes"), **TINY) == root
    assert _mtimes(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]


def test_generates_into_existing_empty_folder(tmp_path):
    (tmp_path / "shapes").mkdir()
    root = generate_classification(tmp_path / "shapes", **TINY)
    assert len(_files(root)) == 5 * len(SHAPES)


def test_refuses_non_empty_folder_without_manifest(tmp_path):
    root = tmp_path / "mine"
    (root / "train").mkdir(parents=True)
    (root / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match=str(root)):
        generate_classification(root, **TINY)
    assert sorted(p.name for p in root.rglob("*")) == ["notes.txt", "train"]
    assert (root / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_refuses_folder_generated_with_other_params(tmp_path):
    root = generate_classification(tmp_path / "shapes", **TINY, seed=0)
    before = _mtimes(root)
    with pytest.raises(DataError, match="seed"):
        generate_classification(root, **TINY, seed=1)
    assert _mtimes(root) == before


def test_refuses_a_file_as_root(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        generate_classification(tmp_path / "file", **TINY)


@pytest.mark.parametrize(
    "bad",
    [dict(num_train_per_class=0), dict(num_val_per_class=-1), dict(image_size=8), dict(seed=-1), dict(image_size=32.0)],
)
def test_rejects_bad_parameters(tmp_path, bad):
    with pytest.raises(ValueError):
        generate_classification(tmp_path / "shapes", **{**TINY, **bad})
    assert not (tmp_path / "shapes").exists()


# Fraction of the bounding box a shape covers (box side 48 px): geometry, whatever the rotation.
EXPECTED_FILL = {
    "circle": (0.75, 0.82),
    "square": (0.47, 0.53),
    "triangle": (0.30, 0.36),
    "cross": (0.36, 0.56),
    "ring": (0.43, 0.66),
    "star": (0.26, 0.40),
    "hexagon": (0.62, 0.69),
    "crescent": (0.24, 0.44),
}


@pytest.mark.parametrize("kind", SHAPES)
def test_shape_mask_geometry(kind):
    box = (8.0, 8.0, 56.0, 56.0)
    for seed in range(5):
        mask = synthetic.shape_mask(kind, box, np.random.default_rng(seed), canvas_size=(64, 64))
        assert mask.dtype == bool and mask.shape == (64, 64)
        x0, y0, x1, y1 = synthetic.mask_bbox(mask)
        assert 8 <= x0 < x1 <= 56 and 8 <= y0 < y1 <= 56  # inside its box
        low, high = EXPECTED_FILL[kind]
        assert low <= mask[8:56, 8:56].mean() <= high


def test_shape_coverage_is_clipped_to_the_canvas():
    rng = np.random.default_rng(0)
    coverage = synthetic.shape_coverage("circle", (-20.0, -20.0, 20.0, 20.0), rng, canvas_size=(32, 48))
    assert coverage.shape == (32, 48) and 0 <= coverage.min() and coverage.max() <= 1
    assert coverage[0, 0] == 1.0 and coverage[31, 47] == 0.0
    assert 0 < ((coverage > 0) & (coverage < 1)).sum() < 0.2 * (coverage > 0).sum()  # anti-aliased rim only
    with pytest.raises(ValueError, match="unknown shape"):
        synthetic.shape_mask("blob", (0, 0, 10, 10), np.random.default_rng(0), canvas_size=(16, 16))


def test_shapes_differ_from_each_other():
    box, size = (4.0, 4.0, 60.0, 60.0), (64, 64)
    masks = {k: synthetic.shape_mask(k, box, np.random.default_rng(7), canvas_size=size) for k in SHAPES}
    for a, b in itertools.combinations(SHAPES, 2):
        iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert iou < 0.9, (a, b, iou)
    assert masks["ring"][32, 32] == 0 and masks["circle"][32, 32] == 1  # the ring has its hole


@pytest.mark.parametrize("kind", SHAPES)
def test_rendered_shape_stands_out_from_background(kind):
    for seed in range(12):
        image, coverage = synthetic.draw_classification_image(kind, 32, np.random.default_rng(seed))
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
        mask = coverage >= 0.5
        assert 0.03 <= mask.mean() <= 0.75  # 35-85 % of the side, nearly all inside
        x0, y0, x1, y1 = synthetic.mask_bbox(mask)
        around = np.zeros_like(mask)
        around[max(y0 - 3, 0) : y1 + 3, max(x0 - 3, 0) : x1 + 3] = True  # the shape's surroundings
        around &= coverage == 0
        inside = image[coverage == 1].astype(float).mean(0)
        outside = image[around].astype(float).mean(0)
        assert np.linalg.norm(inside - outside) > 60, (kind, seed)


def test_render_shapes_reports_visible_coverage_after_occlusion():
    rng = np.random.default_rng(0)
    image, (below, above) = synthetic.render_shapes(
        (48, 48), ["circle", "circle"], [(4.0, 4.0, 36.0, 36.0), (20.0, 20.0, 44.0, 44.0)], rng
    )
    assert image.shape == (48, 48, 3)
    assert below[30, 30] == 0 and above[30, 30] == 1  # the upper circle hides this part of the lower one
    assert below[10, 10] == 1 and above[10, 10] == 0  # and not this one
    assert np.all(below + above <= 1 + 1e-6)


def test_clutter_variant_is_a_separate_dataset(tmp_path):
    plain = synthetic.generate_classification(tmp_path / "plain", **TINY)
    cluttered = synthetic.generate_classification(tmp_path / "clutter", **TINY, clutter=True)
    assert json.loads((cluttered / "synthetic.json").read_text())["params"]["clutter"] is True
    same = sorted(p.relative_to(plain) for p in plain.rglob("*.png"))
    assert same == sorted(p.relative_to(cluttered) for p in cluttered.rglob("*.png"))
    assert all((plain / p).read_bytes() != (cluttered / p).read_bytes() for p in same)
    assert synthetic.synthetic_root("classification", clutter=True) != synthetic.synthetic_root("classification")
