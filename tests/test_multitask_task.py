"""Joint training (task=multitask): the synthetic multi-task set (COCO with instance masks), the labels every head
gets from the instances, the loss weighting (fixed and Kendall et al.'s uncertainty), a real tools/train.py and
tools/test.py run, and the bad input: data without a head's labels, unknown heads, a loss weight of an absent head."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_tool

from vision_tasks.data import DataError, InstanceRecord, MultiTaskDataset, read_coco_instances, semantic_mask
from vision_tasks.data.formats.instances import image_labels, multitask_collate
from vision_tasks.models import MultiTaskMobileNetV2
from vision_tasks.tasks import MultiTaskTask
from vision_tasks.tasks.multitask import LossWeighting, check_head_labels

TINY_DATA = [
    "data.num_train=8",
    "data.num_val=4",
    "data.synthetic_image_size=64",
    "data.image_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
]


def _model(heads=("classification", "detection", "segmentation"), **kwargs) -> MultiTaskMobileNetV2:
    classes = {"classification": 3, "detection": 3, "segmentation": 4}
    options = {"detection": {"image_size": 64}}
    return MultiTaskMobileNetV2({h: {"num_classes": classes[h], **options.get(h, {})} for h in heads},
                                width_mult=0.35, **kwargs)


# ------------------------------------------------------------------------------------------ the synthetic set
def test_synthetic_multitask_set_is_coco_with_masks_of_the_drawn_shapes(tmp_path):
    from pycocotools.coco import COCO

    from vision_tasks.data.classes import SHAPES
    from vision_tasks.data.synthetic.cache import SPLIT_KEYS, sample_rng
    from vision_tasks.data.synthetic.drawing import draw_detection_image
    from vision_tasks.data.synthetic.multitask import generate_multitask

    root = generate_multitask(tmp_path / "mt", num_train=3, num_val=2, image_size=48)
    manifest = json.loads((root / "synthetic.json").read_text())
    assert manifest["task"] == "multitask" and manifest["params"]["max_objects"] == 3
    for split, count in (("train", 3), ("val", 2)):
        coco = COCO(str(root / "annotations" / f"instances_{split}2017.json"))  # pycocotools reads it
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES)
        assert len(coco.getImgIds()) == count
        for index in range(count):
            image_id = index + 1
            _, shapes = draw_detection_image(48, sample_rng(0, SPLIT_KEYS[split], index), min_objects=1,
                                             max_objects=3, min_size=0.25, max_size=0.6, max_overlap=0.3)
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            assert len(annotations) == len(shapes) >= 1
            for annotation, (label, mask) in zip(annotations, shapes):
                decoded = coco.annToMask(annotation).astype(bool)
                assert annotation["category_id"] == label + 1  # the shape's class, category ids from 1
                assert np.array_equal(decoded, mask) and annotation["area"] == mask.sum()
    # the reader derives each head's labels from them: the class-index mask paints the instances' categories
    records = read_coco_instances(root / "annotations" / "instances_val2017.json", root / "val2017").records
    for record in records:
        mask = semantic_mask(record)
        assert set(np.unique(mask).tolist()) <= {0, *(record.labels + 1).tolist()}
        assert (mask > 0).sum() == int(record.area.sum())  # visible masks never overlap


# ------------------------------------------------------------------------------------------ labels from instances
def _square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _hand_made(tmp_path: Path) -> Path:
    """A COCO file of one 20x16 image: class 1 (polygon) and class 2 (RLE) overlapping, a second class-1
    instance overlapping the first, a crowd region of class 3 and a class-3 box-only-of-a-crowd."""
    from pycocotools import mask as mask_utils

    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 16), (10, 20, 30)).save(tmp_path / "images" / "a.png")
    rle_mask = np.zeros((16, 20), dtype=np.uint8)
    rle_mask[2:8, 6:12] = 1  # overlaps the first square at columns 6..7
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    crowd = np.zeros((16, 20), dtype=np.uint8)
    crowd[12:16, 0:4] = 1
    crowd_rle = mask_utils.encode(np.asfortranarray(crowd))
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8], "segmentation": _square(0, 0, 8, 8),
         "area": 64, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [6, 2, 6, 6],
         "segmentation": {"size": [16, 20], "counts": rle["counts"].decode()}, "area": 36, "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [4, 4, 4, 4], "segmentation": _square(4, 4, 8, 8),
         "area": 16, "iscrowd": 0},
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [0, 12, 4, 4],
         "segmentation": {"size": [16, 20], "counts": crowd_rle["counts"].decode()}, "area": 16, "iscrowd": 1},
    ]
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 16, "width": 20}], "annotations": annotations,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"},
                           {"id": 4, "name": "d"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_semantic_mask_and_image_labels_follow_from_the_instances(tmp_path):
    path = _hand_made(tmp_path)
    annotations = read_coco_instances(path, tmp_path / "images")
    (record,) = annotations.records
    assert isinstance(record, InstanceRecord) and len(record.segmentations) == 4
    dataset = MultiTaskDataset(annotations.records, num_classes=4)  # no transform: the image's own pixels
    image, target = dataset[0]
    mask = target["mask"].numpy()
    expected = np.zeros((16, 20), dtype=np.int64)
    expected[0:8, 0:8] = 1            # class "a" (label 0 -> 1), both its instances (same class: no conflict)
    expected[2:8, 8:12] = 2           # class "b"
    expected[2:8, 6:8] = 255          # "a" and "b" overlap: ignored (torchvision's COCO rule)
    expected[12:16, 0:4] = 255        # crowd region: ignored
    assert np.array_equal(mask, expected)
    # present classes: a, b and the crowd's c; not d
    assert target["image_labels"].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert image_labels([1, 1, 3], 5).tolist() == [0, 1, 0, 1, 0]
    # the detection target is DetectionDataset's
    assert target["boxes"].shape == (4, 4) and target["labels"].tolist() == [0, 1, 0, 2]
    images, batch = multitask_collate([dataset[0], dataset[0]])
    assert images.shape == (2, 3, 16, 20) and batch["segmentation"].shape == (2, 16, 20)
    assert batch["classification"].shape == (2, 4) and len(batch["detection"]) == 2
    assert "mask" not in batch["detection"][0]


def test_transforms_move_the_mask_with_the_boxes(tmp_path):
    from vision_tasks.data.transforms.detection import detection_train_transform

    path = _hand_made(tmp_path)
    records = read_coco_instances(path, tmp_path / "images").records
    flipped = 0
    for seed in range(6):
        torch.manual_seed(seed)
        transform = detection_train_transform(32, augmentation="flip")
        transform.set_random_seed(seed)
        image, target = MultiTaskDataset(records, 4, transform)[0]
        mask = target["mask"]
        assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
        # the crowd square (bottom left on disk) is where the boxes say: follow box 3 (the crowd's)
        x0, y0, x1, y1 = target["boxes"][3].round().long().tolist()
        assert (mask[y0:y1, x0:x1] == 255).all()
        flipped += x0 > 16
    assert 0 < flipped < 6


def test_a_file_of_boxes_only_is_refused_naming_it(tmp_path):
    path = _hand_made(tmp_path)
    data = json.loads(path.read_text())
    for annotation in data["annotations"]:
        annotation.pop("segmentation")
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances\.json: none of its 4 annotations has a 'segmentation'"):
        read_coco_instances(path, tmp_path / "images")
    # without require_masks: plain detection records, and a multi-task data module says it has no masks
    (record,) = read_coco_instances(path, tmp_path / "images", require_masks=False).records
    assert not isinstance(record, InstanceRecord)
    image, target = MultiTaskDataset([record], 4)[0]
    assert "mask" not in target and target["image_labels"].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert multitask_collate([(image, target)])[1]["segmentation"] is None
    data["annotations"][0]["segmentation"] = _square(0, 0, 8, 8)  # one mask among boxes: refused, named
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"an annotation of image 1 \(a.png\) has no 'segmentation'"):
        read_coco_instances(path, tmp_path / "images", require_masks=False)
    data["annotations"][0]["segmentation"] = {"size": [3, 3], "counts": "x"}
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"size \[3, 3\], not the image's \[16, 20\]"):
        read_coco_instances(path, tmp_path / "images")


# ------------------------------------------------------------------------------------------ loss weighting
def test_fixed_loss_weights():
    weighting = LossWeighting(["classification", "detection", "segmentation"],
                              {"classification": 2.0, "detection": 1.0, "segmentation": 0.5})
    losses = {"classification": torch.tensor(1.5), "detection": torch.tensor(3.0), "segmentation": torch.tensor(4.0)}
    assert float(weighting(losses)) == pytest.approx(2 * 1.5 + 3.0 + 0.5 * 4.0)
    # a batch without segmentation labels counts only the others
    assert float(weighting({"detection": torch.tensor(3.0)})) == pytest.approx(3.0)
    assert weighting.log_vars is None and weighting.current()["classification"] == 2.0
    with pytest.raises(ValueError, match="uncertainty"):
        LossWeighting(["detection"], "learned")


def test_uncertainty_loss_weights_are_kendalls():
    weighting = LossWeighting(["detection", "segmentation"], "uncertainty")
    assert set(weighting.log_vars) == {"detection", "segmentation"}
    assert all(float(p.detach()) == 0.0 for p in weighting.log_vars.values())  # weight 1 at the start
    with torch.no_grad():
        weighting.log_vars["detection"].fill_(math.log(2.0))  # sigma^2 = 2: weight 1/2
    det, seg = torch.tensor(3.0, requires_grad=True), torch.tensor(4.0, requires_grad=True)
    total = weighting({"detection": det, "segmentation": seg})
    assert float(total) == pytest.approx(0.5 * 3.0 + math.log(2.0) + 1.0 * 4.0 + 0.0)
    total.backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L: the log variance grows while the loss is large
    assert float(weighting.log_vars["detection"].grad) == pytest.approx(1 - 0.5 * 3.0)
    assert float(weighting.log_vars["segmentation"].grad) == pytest.approx(1 - 4.0)
    assert float(det.grad) == pytest.approx(0.5) and float(seg.grad) == pytest.approx(1.0)
    assert weighting.current()["detection"] == pytest.approx(0.5)


def test_the_learned_weights_are_optimised_and_stay_out_of_the_model():
    model = _model(("detection", "segmentation"))
    task = MultiTaskTask(model, optimizer=lambda groups: torch.optim.SGD(groups, lr=0.1), loss_weights="uncertainty")
    groups = task.param_groups()
    learned = [p for g in groups for p in g["params"] if any(p is q for q in task.loss_weighting.log_vars.values())]
    assert len(learned) == 2 and groups[-1]["weight_decay"] == 0.0
    assert not any(k.startswith("loss_weighting") for k in model.state_dict())
    assert task.monitor == "val/map"


def test_head_losses_on_a_batch(tmp_path):
    torch.manual_seed(0)
    model = _model()
    task = MultiTaskTask(model, loss_weights={"detection": 2.0})
    images = torch.rand(2, 3, 64, 64)
    targets = {
        "classification": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
        "detection": [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([1]),
                       "iscrowd": torch.tensor([0])} for _ in range(2)],
        "segmentation": torch.randint(0, 4, (2, 64, 64)),
    }
    out = model.train().forward_heads(images)
    losses = task.head_losses(out, targets)
    assert set(losses) == {"classification", "detection", "segmentation"}
    assert float(losses["classification"]) == pytest.approx(
        float(torch.nn.functional.binary_cross_entropy_with_logits(out["classification"], targets["classification"])))
    assert float(losses["segmentation"]) == pytest.approx(
        float(torch.nn.functional.cross_entropy(out["segmentation"], targets["segmentation"])), rel=1e-5)
    total = task.loss_weighting(losses)
    assert float(total) == pytest.approx(float(losses["classification"] + 2 * losses["detection"] + losses["segmentation"]))
    # a source without segmentation labels: no segmentation loss
    assert set(task.head_losses(out, {k: v for k, v in targets.items() if k != "segmentation"})) == {
        "classification", "detection"}


# ------------------------------------------------------------------------------------------ bad input
def test_bad_loss_weights_unknown_heads_and_monitors():
    model = _model(("detection", "segmentation"))
    with pytest.raises(ValueError, match="classification, which this model does not have"):
        MultiTaskTask(model, loss_weights={"classification": 1.0})
    with pytest.raises(ValueError, match="unknown head in loss_weights 'depth'"):
        MultiTaskTask(model, loss_weights={"depth": 1.0})
    with pytest.raises(ValueError, match="mapping of head name to weight or 'uncertainty'"):
        MultiTaskTask(model, loss_weights="learned")
    with pytest.raises(ValueError, match="monitor='val/label_map' is no metric of this model's heads"):
        MultiTaskTask(model, monitor="val/label_map")
    with pytest.raises(ValueError, match="unknown head 'depth'"):
        MultiTaskMobileNetV2({"depth": None})
    with pytest.raises(ValueError, match="MultiTaskTask trains a MultiTaskMobileNetV2"):
        MultiTaskTask(torch.nn.Linear(2, 2))


def test_data_without_a_heads_labels_is_refused_before_training():
    class DetectionOnly:
        label_types = ("detection",)

    check_head_labels(["detection"], DetectionOnly())
    with pytest.raises(ValueError, match=r"DetectionOnly\) has no labels for the segmentation head.*gives detection"):
        check_head_labels(["detection", "segmentation"], DetectionOnly())

    from omegaconf import OmegaConf

    from vision_tasks.runner import _fill_head_classes

    class Data(DetectionOnly):
        label_types = ("classification", "detection", "segmentation")
        head_num_classes = {"classification": 8, "detection": 8, "segmentation": 9}

    cfg = {"heads": {"detection": {"num_classes": None}, "segmentation": None}}
    _fill_head_classes(cfg, Data())
    assert cfg["heads"] == {"detection": {"num_classes": 8}, "segmentation": {"num_classes": 9}}
    with pytest.raises(ValueError, match="model.heads: unknown head.*'depth'"):
        _fill_head_classes({"heads": {"depth": {}}}, Data())
    with pytest.raises(ValueError, match=r"model.heads.segmentation.num_classes=8 but the data gives 9"):
        _fill_head_classes({"heads": {"segmentation": {"num_classes": 8}}}, Data())
    with pytest.raises(ValueError, match="has no labels for the segmentation head"):
        _fill_head_classes({"heads": {"segmentation": {}}}, DetectionOnly())
    del OmegaConf


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_train_and_test_multitask(tmp_path, env):
    run_dir = tmp_path / "run"
    run_tool(["tools/train.py", "task=multitask", *TINY_DATA, "model.width_mult=0.35", "task.loss_weights=uncertainty",
              "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
              f"hydra.run.dir={run_dir}"], env)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    expected = {"val/label_map", "val/map", "val/map_50", "val/map_75", "val/miou", "val/pixel_acc", "val/loss",
                "val/loss_classification", "val/loss_detection", "val/loss_segmentation", "val/iou/background"}
    assert expected <= set(metrics), sorted(expected - set(metrics))
    assert metrics["global_step"] == 2
    assert 0 <= metrics["val/label_map"] <= 1 and 0 <= metrics["val/miou"] <= 1
    checkpoint = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    meta = checkpoint["vision_tasks"]
    assert meta["task"] == "multitask" and meta["model_class"] == "MultiTaskMobileNetV2"
    assert {h: o["num_classes"] for h, o in meta["model_config"]["heads"].items()} == {
        "classification": 8, "detection": 8, "segmentation": 9}
    assert any(k.startswith("loss_weighting.log_vars.") for k in checkpoint["state_dict"])

    test_dir = tmp_path / "test"
    run_tool(["tools/test.py", "task=multitask", *TINY_DATA, f"ckpt_path={run_dir}/checkpoints/last.ckpt",
              "trainer.enable_progress_bar=false", f"hydra.run.dir={test_dir}"], env)
    tested = json.loads((test_dir / "metrics.json").read_text())
    for key in ("val/map_50", "val/miou", "val/label_map"):
        assert tested[key] == pytest.approx(metrics[key], abs=1e-6), key

    # a checkpoint of another task is refused
    proc = run_tool(["tools/test.py", "task=detection", *TINY_DATA, f"ckpt_path={run_dir}/checkpoints/last.ckpt",
                     f"hydra.run.dir={tmp_path / 'other'}"], env, expect_ok=False)
    assert "checkpoint of task 'multitask'" in proc.stderr


@pytest.mark.slow
def test_unknown_head_on_the_command_line(tmp_path, env):
    proc = run_tool(["tools/train.py", "task=multitask", *TINY_DATA, "model.width_mult=0.35", "+model.heads.depth={}",
                     "trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path / 'run'}"], env, expect_ok=False)
    assert "model.heads: unknown head(s) 'depth'; the heads are classification, detection, segmentation" in proc.stderr


# ------------------------------------------------------------------------------------------ several sources
def test_combined_sources_give_each_head_its_own_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("VISION_TASKS_DATA", str(tmp_path / "data"))
    from vision_tasks.data import CombinedDataModule, SyntheticDetectionDataModule, SyntheticSegmentationDataModule

    small = dict(num_train=6, num_val=3, synthetic_image_size=48, batch_size=3, num_workers=0)
    dm = CombinedDataModule({"boxes": SyntheticDetectionDataModule(image_size=48, **small),
                             "masks": SyntheticSegmentationDataModule(crop_size=48, **small)})
    assert dm.label_types == ("detection", "segmentation")
    dm.prepare_data()
    dm.setup("fit")
    assert dm.head_num_classes == {"detection": 8, "segmentation": 9}
    assert dm.class_names[0] == "circle" and dm.segmentation_class_names[0] == "background"
    loader = dm.train_dataloader()
    batch, _, _ = next(iter(loader))
    assert set(batch) == {"boxes", "masks"}
    images, targets = batch["boxes"]
    assert images.shape == (3, 3, 48, 48) and set(targets) == {"detection"} and len(targets["detection"]) == 3
    images, targets = batch["masks"]
    assert images.shape == (3, 3, 48, 48) and set(targets) == {"segmentation"} and targets["segmentation"].shape == (3, 48, 48)

    # each head's loss only on the batches that carry its labels: the detection loss on "boxes", the other on "masks"
    model = MultiTaskMobileNetV2({"detection": {"num_classes": 8, "image_size": 48}, "segmentation": {"num_classes": 9}},
                                 width_mult=0.35)
    task = MultiTaskTask(model)
    losses, count, passes = task._batch_losses(batch)
    assert set(losses) == {"detection", "segmentation"} and count == 6 and len(passes) == 2
    boxes_out, masks_out = passes[0][2], passes[1][2]
    with torch.no_grad():
        assert float(losses["detection"]) == pytest.approx(
            float(task.head_losses(boxes_out, batch["boxes"][1])["detection"]))
        assert float(losses["segmentation"]) == pytest.approx(
            float(task.head_losses(masks_out, batch["masks"][1])["segmentation"]))
    # the image-label head has no source: refused before training, naming the data
    with pytest.raises(ValueError, match=r"CombinedDataModule\) has no labels for the classification head"):
        check_head_labels(["classification", "detection"], dm)
    # the hyperparameters are plain data that rebuild the module
    rebuilt = CombinedDataModule(**dm.hparams)
    assert type(rebuilt.sources["masks"]).__name__ == "SyntheticSegmentationDataModule"
    assert rebuilt.sources["boxes"].hparams == dm.sources["boxes"].hparams


@pytest.mark.slow
def test_train_from_two_sources_and_predict(tmp_path, env):
    run_dir = tmp_path / "run"
    sources = [f"data.sources.{name}.{key}" for name in ("boxes", "masks")
               for key in ("num_train=6", "num_val=3", "synthetic_image_size=48", "batch_size=3")]
    run_tool(["tools/train.py", "task=multitask", "data=synthetic_sources", *sources, "data.sources.boxes.image_size=48",
              "data.sources.masks.crop_size=48", "model.width_mult=0.35", "trainer.max_epochs=1",
              "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"], env)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"val/map", "val/map_50", "val/miou", "val/pixel_acc", "val/loss_detection", "val/loss_segmentation"} <= set(
        metrics)
    assert "val/label_map" not in metrics and metrics["global_step"] == 2
    meta = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["vision_tasks"]
    assert set(meta["model_config"]["heads"]) == {"detection", "segmentation"}

    # predict.py with the joint model of the single-source run: one PNG per image with every head drawn
    single = tmp_path / "single"
    run_tool(["tools/train.py", "task=multitask", *TINY_DATA, "model.width_mult=0.35", "trainer.max_epochs=1",
              "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
              f"hydra.run.dir={single}"], env)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (80, 60), (200, 30, 30)).save(photos / "a.png")
    Image.new("RGB", (50, 70), (30, 200, 30)).save(photos / "b.jpg")
    out = tmp_path / "out"
    run_tool(["tools/predict.py", "task=multitask", *TINY_DATA, f"ckpt_path={single}/checkpoints/last.ckpt",
              f"input={photos}", f"output={out}", "draw_threshold=0.0"], env)
    records = json.loads((out / "predictions.json").read_text())
    assert [Path(r["file"]).name for r in records] == ["a.png", "b.jpg"]
    for record, stem, size in zip(records, ("a", "b"), ((60, 80), (70, 50))):
        assert {"detections", "class_fractions", "image_labels", "mask"} <= set(record)
        assert record["image_labels"]["class_names"] and len(record["image_labels"]["all_scores"]) == 8
        with Image.open(out / f"{stem}.png") as drawn:
            factor = -(-384 // max(size))  # small images are drawn enlarged by a whole factor (predict.MIN_DRAW_SIDE)
            assert drawn.width == size[1] * factor and drawn.height >= size[0] * factor  # the legend goes below
        with Image.open(out / f"{stem}_mask.png") as mask:
            assert (mask.height, mask.width) == size


COCO128 = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "coco128"


@pytest.mark.skipif(not (COCO128 / "annotations").is_dir(), reason="needs ../shared/data/coco128")
def test_real_coco_of_boxes_only_gives_no_segmentation_labels():
    from vision_tasks.data import MultiTaskDataModule

    dm = MultiTaskDataModule(str(COCO128), image_size=64, batch_size=2, num_workers=0, verify_images=False)
    dm.setup("validate")  # coco128's files were converted from YOLO labels: boxes, no masks
    assert dm.label_types == ("classification", "detection") and dm.num_classes == 80
    with pytest.raises(ValueError, match=r"\(MultiTaskDataModule\) has no labels for the segmentation head.*"
                                         r"model.heads.segmentation=false"):
        check_head_labels(["classification", "detection", "segmentation"], dm)
    images, targets = next(iter(dm.val_dataloader()))
    assert targets["segmentation"] is None and targets["classification"].shape == (2, 80)
    with pytest.raises(DataError, match="none of its .* annotations has a 'segmentation'"):
        MultiTaskDataModule(str(COCO128), image_size=64, masks=True, verify_images=False).setup("validate")
