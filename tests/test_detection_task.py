"""DetectionTask: COCO-protocol mAP on hand-made cases, detections.json equal to pycocotools' own
evaluation of the annotation file, and an SSDLite overfit on a handful of synthetic images."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import pytorch_lightning as pl
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader

from vision_tasks.data import SyntheticDetectionDataModule, detection_collate
from vision_tasks.models import scale_boxes, ssdlite_mobilenet_v2
from vision_tasks.tasks import DetectionTask
from vision_tasks.tasks.detection import detection_label_map


class ScriptedDetector(nn.Module):
    """Returns, batch after batch, the detections it was given (in network-input pixels), mapped back to the
    original images as the real model does (:func:`vision_tasks.models.scale_boxes`)."""

    def __init__(self, batches: list[list[dict[str, torch.Tensor]]], num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.zeros(()))
        self.batches = list(batches)
        self.config = {}

    def forward_head(self, images):
        return {"n": images.shape[0], "image_size": tuple(images.shape[-2:])}

    def loss(self, head_out, targets):
        zero = self.weight * 0
        return {"classification": zero, "localization": zero}

    def postprocess(self, head_out, original_sizes):
        return [{**det, "boxes": scale_boxes(det["boxes"], head_out["image_size"], size)}
                for det, size in zip(self.batches.pop(0), original_sizes)]


def _loader(batches) -> DataLoader:
    """A loader that yields ready-made ``(images, targets)`` batches as they are."""
    return DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch)


def _validate(task: DetectionTask, batches) -> dict[str, float]:
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    return trainer.validate(task, dataloaders=_loader(batches), verbose=False)[0]


def _target(boxes, labels, orig_size, image_id, input_size=(100, 100)):
    """A target as DetectionDataset gives it: boxes of the network input, and the image's own annotation."""
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    original = scale_boxes(boxes, input_size, orig_size)
    fields = {"labels": torch.tensor(labels, dtype=torch.int64), "iscrowd": torch.zeros(len(labels), dtype=torch.int64),
              "area": (original[:, 2] - original[:, 0]) * (original[:, 3] - original[:, 1])}
    return {"boxes": boxes, **fields, "image_id": image_id, "orig_size": torch.tensor(orig_size),
            "annotations": {"boxes": original, **fields}}


def _det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def test_map_on_hand_made_detections(tmp_path):
    images = torch.zeros(2, 3, 100, 100)  # the network input; the images on disk were 200x200
    targets = [_target([[10, 10, 50, 50]], [0], (200, 200), 7), _target([[20, 30, 90, 80]], [1], (200, 200), 9)]
    perfect = [_det([[10, 10, 50, 50]], [0.9], [0]), _det([[20, 30, 90, 80]], [0.8], [1])]
    task = DetectionTask(ScriptedDetector([perfect], num_classes=2))
    task.keep_results = True
    task.category_ids = [3, 11]  # the dataset's own ids of labels 0 and 1
    metrics = _validate(task, [(images, targets)])
    assert metrics["val/map"] == pytest.approx(1.0)
    assert metrics["val/map_50"] == pytest.approx(1.0)

    # detections.json: original pixels (x2), xywh, the dataset's image ids and category ids
    written = json.loads(task.export_results(tmp_path).read_text())
    assert written[0] == {"image_id": 7, "category_id": 3, "bbox": [20.0, 20.0, 80.0, 80.0], "score": 0.9}
    assert written[1]["category_id"] == 11 and written[1]["bbox"] == [40.0, 60.0, 140.0, 100.0]

    # one of the two objects found, one with the wrong class: AP 1 for class 0, 0 for class 1
    half = [_det([[10, 10, 50, 50]], [0.9], [0]), _det([[20, 30, 90, 80]], [0.8], [0])]
    metrics = _validate(DetectionTask(ScriptedDetector([half], num_classes=2)), [(images, targets)])
    assert metrics["val/map"] == pytest.approx(0.5)
    # a box shifted to IoU 0.6 counts at 0.5 but not at 0.75
    shifted = [_det([[10, 10, 50, 50]], [0.9], [0]), _det([[20, 30, 90, 80]], [0.8], [1])]
    shifted[0]["boxes"] = torch.tensor([[10.0, 10.0, 50.0, 50.0 / 0.6 - 10 / 0.6 + 10]])  # height 40 -> 66.7: IoU 0.6
    metrics = _validate(DetectionTask(ScriptedDetector([shifted], num_classes=2)), [(images, targets)])
    assert metrics["val/map_50"] == pytest.approx(1.0)
    assert metrics["val/map_75"] == pytest.approx(0.5)


def test_crowd_boxes_are_ignored_as_coco_does():
    images = torch.zeros(1, 3, 100, 100)
    target = _target([[10, 10, 50, 50], [60, 60, 95, 95]], [0, 0], (100, 100), 1)
    target["iscrowd"] = target["annotations"]["iscrowd"] = torch.tensor([0, 1])
    # a detection on the crowd region is neither a true nor a false positive; the crowd is not a miss
    dets = [_det([[10, 10, 50, 50], [60, 60, 95, 95]], [0.5, 0.9], [0, 0])]
    metrics = _validate(DetectionTask(ScriptedDetector([dets], num_classes=1)), [(images, [target])])
    assert metrics["val/map"] == pytest.approx(1.0)


def test_label_map_relates_a_models_labels_to_the_datasets():
    # a model with the category ids 1..5 (id 2 unused by the dataset), a dataset with the ids 5, 1, 3, 4 (and 7)
    assert detection_label_map([1, 2, 3, 4, 5], [5, 1, 3, 4, 7]) == [1, -1, 2, 3, 0]
    assert detection_label_map(["cat", "N/A", "dog"], ["dog", "cat"]) == [1, -1, 0]
    with pytest.raises(ValueError, match="no category in common"):
        detection_label_map([1, 2], [3, 4])
    with pytest.raises(ValueError, match="repeat"):
        detection_label_map(["a"], ["a", "a"])


def test_detections_of_a_model_with_other_labels_are_mapped_and_dropped(tmp_path):
    """A model with 4 labels (category ids 5, 3, 9, 11) on a dataset of 2 (ids 3, 11): its labels 1 and 3 are the
    dataset's 0 and 1, its labels 0 and 2 have no counterpart, so their detections are dropped before the metric
    and detections.json; the loss sees the ground truth in the model's labels."""
    images = torch.zeros(2, 3, 100, 100)
    targets = [_target([[10, 10, 50, 50]], [0], (200, 200), 7), _target([[20, 30, 90, 80]], [1], (200, 200), 9)]
    dets = [_det([[10, 10, 50, 50], [60, 60, 90, 90]], [0.9, 0.95], [1, 0]),
            _det([[20, 30, 90, 80], [0, 0, 30, 30]], [0.8, 0.99], [3, 2])]
    model = ScriptedDetector([dets], num_classes=4)
    seen = []
    model.loss = lambda head_out, targets: seen.extend(t["labels"].tolist() for t in targets) or {
        "classification": model.weight * 0, "localization": model.weight * 0}
    task = DetectionTask(model, label_map=detection_label_map([5, 3, 9, 11], [3, 11]))
    task.keep_results = True
    task.category_ids = [3, 11]
    metrics = _validate(task, [(images, targets)])
    assert metrics["val/map"] == pytest.approx(1.0)  # the unmapped detections (scores 0.95, 0.99) are not false positives
    assert seen == [[1], [3]]
    results = json.loads(task.export_results(tmp_path).read_text())
    assert [(r["image_id"], r["category_id"]) for r in results] == [(7, 3), (9, 11)]
    with pytest.raises(ValueError, match="label_map"):
        DetectionTask(ScriptedDetector([], num_classes=4), label_map=[0, 1])


def _noisy_detections(datamodule, seed: int = 0):
    """Ground truth jittered, with random scores and some false positives and misses: an mAP in between."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for images, targets in datamodule.val_dataloader():
        batch = []
        for t in targets:
            keep = torch.rand(len(t["boxes"]), generator=g) > 0.2
            boxes = t["boxes"][keep] + torch.randn(int(keep.sum()), 4, generator=g) * 2.0
            false = torch.rand(2, 2, generator=g) * 30
            boxes = torch.cat([boxes, torch.cat([false, false + 10], dim=1)])
            labels = torch.cat([t["labels"][keep], torch.randint(0, datamodule.num_classes, (2,), generator=g)])
            batch.append({"boxes": boxes, "scores": torch.rand(len(boxes), generator=g), "labels": labels})
        batches.append(batch)
    return batches


def test_detections_json_gives_pycocotools_the_same_numbers(tmp_path):
    # 48 px network input for 64 px images: boxes go back to the files' pixels before evaluation
    datamodule = SyntheticDetectionDataModule(
        str(tmp_path / "synthetic"), num_train=2, num_val=12, synthetic_image_size=64, image_size=48,
        batch_size=4, num_workers=0,
    )
    datamodule.prepare_data()
    datamodule.setup("validate")
    task = DetectionTask(ScriptedDetector(_noisy_detections(datamodule), datamodule.num_classes))
    task.keep_results = True
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
                         enable_model_summary=False)
    metrics = trainer.validate(task, datamodule=datamodule, verbose=False)[0]
    assert 0.2 < metrics["val/map"] < 0.95, metrics  # neither trivial nor hopeless
    results = task.export_results(tmp_path / "out")

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(datamodule.val_annotation_file))
        evaluator = COCOeval(coco, coco.loadRes(str(results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert metrics["val/map"] == pytest.approx(evaluator.stats[0], abs=2e-3)
    assert metrics["val/map_50"] == pytest.approx(evaluator.stats[1], abs=2e-3)
    assert metrics["val/map_75"] == pytest.approx(evaluator.stats[2], abs=2e-3)


def test_ssdlite_overfits_a_handful_of_synthetic_images(tmp_path, one_thread):
    torch.manual_seed(0)
    datamodule = SyntheticDetectionDataModule(
        str(tmp_path / "synthetic"), num_train=8, num_val=2, synthetic_image_size=96, image_size=96,
        min_objects=1, max_objects=2, min_size=0.25, max_size=0.6, augmentation="none", batch_size=8,
        num_workers=0,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    images, targets = detection_collate([datamodule.train_dataset[i] for i in range(8)])
    model = ssdlite_mobilenet_v2(num_classes=datamodule.num_classes, image_size=96, width_mult=0.5)
    task = DetectionTask(model, optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0))
    trainer = pl.Trainer(max_steps=80, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", limit_val_batches=0)
    trainer.fit(task, train_dataloaders=_loader([(images, targets)] * 80))
    # evaluated in eval mode on the very images it was trained on; the BatchNorm running statistics
    # are first recomputed for the final weights ("precise BN"), since with momentum 0.03 they lag
    # behind weights that moved this fast
    with torch.no_grad():
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass gives this batch's exact statistics
        model.train()
        model.forward_head(images)
    metrics = _validate(task, [(images, targets)])
    assert metrics["val/map_50"] >= 0.8, metrics


def test_sigmoid_focal_loss_is_torchvisions_over_every_anchor():
    """classification="sigmoid_focal" (the TF SSDLite release's weighted_sigmoid_focal): torchvision's focal loss
    on the foreground columns of every anchor (RetinaNet's targets), no mining, divided by the matches;
    localization_per_coordinate divides the box loss by 4 as well."""
    from torchvision.ops import sigmoid_focal_loss

    from heads import BoxCoder, SSDLoss

    torch.manual_seed(0)
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0], [50.0, 0.0, 60.0, 10.0]])
    logits, regression = torch.randn(1, 3, 3), torch.randn(1, 3, 4)
    targets = [{"boxes": torch.tensor([[20.0, 20.0, 40.0, 40.0]]), "labels": torch.tensor([1])}]
    loss = SSDLoss(BoxCoder(), classification="sigmoid_focal", focal_alpha=0.75, focal_gamma=2.0,
                   localization_per_coordinate=True)(logits, regression, anchors, targets)
    one_hot = torch.tensor([[[0.0, 0], [0, 1], [0, 0]]])  # foreground columns: negatives all zeros, background unused
    expected = sigmoid_focal_loss(logits[..., 1:], one_hot, alpha=0.75, gamma=2.0, reduction="sum")  # one match
    torch.testing.assert_close(loss["classification"], expected)
    plain = SSDLoss(BoxCoder(), classification="sigmoid_focal")(logits, regression, anchors, targets)
    torch.testing.assert_close(loss["localization"], plain["localization"] / 4)
