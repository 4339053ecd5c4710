"""SegmentationTask: mIoU / pixel accuracy on hand-made masks, the loss and its ignore pixels, multi-scale and
flipped evaluation, DeepLab's poly schedule, and a tiny conv net overfitting a few synthetic masks."""

from __future__ import annotations

import functools
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vision_tasks.optim import PolyLR
from vision_tasks.tasks import TASKS, SegmentationTask
from vision_tasks.models import MF_SCALES, multi_scale_logits, scale_dimension

NO_TRAINER_LOG = "ignore:You are trying to `self.log\\(\\)`"  # training_step called directly, outside a Trainer


class ScriptedSegmenter(nn.Module):
    """Returns, batch after batch, logits whose argmax is the class map it was given."""

    def __init__(self, predictions: list[torch.Tensor], num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.zeros(()))
        self.predictions = list(predictions)

    def forward(self, images):
        prediction = self.predictions.pop(0)
        return F.one_hot(prediction, self.num_classes).permute(0, 3, 1, 2).float() * 5 + self.weight


class PixelSegmenter(nn.Module):
    """A 1x1 conv (flip-equivariant), with an optional auxiliary 1x1 conv."""

    def __init__(self, num_classes: int = 3, aux: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(3, num_classes, 1)
        self.aux = nn.Conv2d(3, num_classes, 1) if aux else None

    def forward(self, images):
        return self.conv(images)

    def forward_with_aux(self, images):
        return self.conv(images), self.aux(images) if self.aux is not None else None


class TinySegmenter(nn.Module):
    """A few 3x3 convs, no BatchNorm: enough receptive field to tell squares by colour."""

    def __init__(self, num_classes: int = 3, width: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, num_classes, 3, padding=1),
        )

    def forward(self, images):
        return self.body(images)


def _loader(batches) -> DataLoader:
    """A loader that yields ready-made ``(images, masks)`` batches as they are."""
    return DataLoader(batches, batch_size=None)


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


def _validate(task: SegmentationTask, batches) -> dict[str, float]:
    return _trainer().validate(task, dataloaders=_loader(batches), verbose=False)[0]


# ---------------------------------------------------------------- metrics
def test_miou_and_pixel_accuracy_on_hand_made_masks():
    # batch 1: 2x4, two ignore pixels (predicted 0 and 1: they must count nowhere); class 3 predicted but absent
    gt1 = torch.tensor([[[0, 0, 1, 1], [0, 2, 255, 255]]])
    pred1 = torch.tensor([[[0, 1, 1, 1], [3, 2, 0, 1]]])
    # batch 2: 2x2, all class 1, one pixel predicted 0
    gt2 = torch.tensor([[[1, 1], [1, 1]]])
    pred2 = torch.tensor([[[1, 1], [1, 0]]])
    task = SegmentationTask(ScriptedSegmenter([pred1, pred2], num_classes=4))
    task.class_names = ["background", "cat", "dog", "bird"]
    metrics = _validate(task, [(torch.zeros(1, 3, 2, 4), gt1), (torch.zeros(1, 3, 2, 2), gt2)])

    # accumulated over both batches (not the mean of per-batch scores):
    # class 0: TP 1, FN 2 (two 0s predicted 1 and 3), FP 1 (batch 2)   -> 1/4
    # class 1: TP 2 + 3, FP 1 (batch 1), FN 1 (batch 2)               -> 5/7
    # class 2: TP 1                                                    -> 1
    # class 3: TP 0, FP 1, absent from the ground truth                -> not in the mean
    iou = {"background": 1 / 4, "cat": 5 / 7, "dog": 1.0}
    assert metrics["val/miou"] == pytest.approx(sum(iou.values()) / 3)
    assert metrics["val/pixel_acc"] == pytest.approx((4 + 3) / (6 + 4))  # 10 labelled pixels, 7 right
    assert set(metrics) == {"val/miou", "val/pixel_acc", "val/loss"} | {f"val/iou/{name}" for name in iou}
    for name, value in iou.items():
        assert metrics[f"val/iou/{name}"] == pytest.approx(value)

    # without class names, the class indices; test/ metrics as well
    task = SegmentationTask(ScriptedSegmenter([pred1], num_classes=4))
    metrics = _trainer().test(task, dataloaders=_loader([(torch.zeros(1, 3, 2, 4), gt1)]), verbose=False)[0]
    assert set(metrics) == {"test/miou", "test/pixel_acc", "test/loss", "test/iou/0", "test/iou/1", "test/iou/2"}
    assert metrics["test/iou/0"] == pytest.approx(1 / 3)  # TP 1, FN 2: the 0 predicted on an ignore pixel is no FP
    assert metrics["test/iou/1"] == pytest.approx(2 / 3)
    assert metrics["test/miou"] == pytest.approx((1 / 3 + 2 / 3 + 1) / 3)
    assert metrics["test/pixel_acc"] == pytest.approx(4 / 6)


def test_validate_logs_the_loss_of_the_evaluation_logits():
    torch.manual_seed(0)
    model = PixelSegmenter(num_classes=3)
    images, masks = torch.randn(2, 3, 6, 5), torch.randint(0, 3, (2, 6, 5))
    metrics = _validate(SegmentationTask(model), [(images, masks)])
    with torch.no_grad():
        assert metrics["val/loss"] == pytest.approx(F.cross_entropy(model(images), masks).item(), rel=1e-5)
    # multi-scale evaluation: the loss and the predictions come from the merged logits
    task = SegmentationTask(model, eval_scales=(0.5, 1.0), eval_flip=True)
    metrics = _validate(task, [(images, masks)])
    with torch.no_grad():
        merged = multi_scale_logits(model, images, (0.5, 1.0), flip=True)
        assert metrics["val/loss"] == pytest.approx(F.cross_entropy(merged, masks).item(), rel=1e-5)
        assert torch.equal(torch.stack(task.predict_step((images, masks), 0)), merged.argmax(dim=1))


# ---------------------------------------------------------------- multi-scale inference
def test_multi_scale_logits():
    torch.manual_seed(0)
    model = PixelSegmenter(num_classes=3)
    images = torch.randn(2, 3, 9, 13)
    with torch.no_grad():
        plain = model(images)
        assert torch.equal(multi_scale_logits(model, images, (1.0,), flip=False), plain)
        # a 1x1 conv is flip-equivariant: the flipped run, flipped back, is the plain one
        torch.testing.assert_close(multi_scale_logits(model, images, (1.0,), flip=True), plain)
        # ... and commutes with resizing: averaged over scales it is the mean of resized-and-back images' logits
        merged = multi_scale_logits(model, images, MF_SCALES, flip=True)
        assert merged.shape == plain.shape
        back = [F.interpolate(F.interpolate(images, size=(scale_dimension(9, s), scale_dimension(13, s)),
                                            mode="bilinear", align_corners=True),
                              size=(9, 13), mode="bilinear", align_corners=True) for s in MF_SCALES]
        torch.testing.assert_close(merged, torch.stack([model(b) for b in back]).mean(dim=0))
        # TF DeepLab's average of probabilities, returned as log-probabilities
        probs = multi_scale_logits(model, images, (0.5, 1.0), flip=False, average="probs")
        expected = torch.stack([model(back[0]).softmax(dim=1), plain.softmax(dim=1)]).mean(dim=0)
        torch.testing.assert_close(probs.exp(), expected)
        single = multi_scale_logits(model, images, (1.0,), flip=False, average="probs")
        torch.testing.assert_close(single, plain.log_softmax(dim=1))
    # DeepLab's scaled sizes keep 8k + 1 crops at 8k + 1
    assert [scale_dimension(513, s) for s in MF_SCALES] == [257, 385, 513, 641, 769, 897]
    with pytest.raises(ValueError, match="average"):
        multi_scale_logits(model, images, average="median")


# ---------------------------------------------------------------- loss
@pytest.mark.filterwarnings(NO_TRAINER_LOG)
def test_loss_ignores_unlabelled_pixels_and_adds_the_auxiliary_loss():
    torch.manual_seed(0)
    model = PixelSegmenter(num_classes=3, aux=True)
    images = torch.randn(2, 3, 5, 5)
    masks = torch.full((2, 5, 5), 255)
    masks[0, 1, 2], masks[1, 4, 0], masks[1, 0, 3] = 2, 0, 1
    task = SegmentationTask(model)
    loss = task.training_step((images, masks), 0)
    with torch.no_grad():
        logits = model(images)
        few = torch.stack([logits[0, :, 1, 2], logits[1, :, 4, 0], logits[1, :, 0, 3]])
        expected = F.cross_entropy(few, torch.tensor([2, 0, 1]))
        torch.testing.assert_close(loss.detach(), expected)
        # no labelled pixel at all: 0, not NaN, and still differentiable
        assert task.cross_entropy(logits, torch.full((2, 5, 5), 255)).item() == 0.0

        aux_masks = torch.randint(0, 3, (2, 5, 5))
        aux_masks[0, 0] = 255
        task = SegmentationTask(model, aux_weight=0.4)
        expected = (F.cross_entropy(model(images), aux_masks, ignore_index=255)
                    + 0.4 * F.cross_entropy(model.aux(images), aux_masks, ignore_index=255))
        torch.testing.assert_close(task.training_step((images, aux_masks), 0), expected)

    # aux_weight > 0 needs auxiliary logits: at init when there is no forward_with_aux, else at the first step
    with pytest.raises(ValueError, match="forward_with_aux"):
        SegmentationTask(TinySegmenter(), aux_weight=0.4)
    task = SegmentationTask(PixelSegmenter(aux=False), aux_weight=0.4)
    with pytest.raises(ValueError, match="aux_weight=0"):
        task.training_step((images, aux_masks), 0)
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationTask(nn.Conv2d(3, 3, 1))
    assert TASKS["segmentation"] is SegmentationTask and SegmentationTask.monitor == "val/miou"


# ---------------------------------------------------------------- poly schedule
def test_poly_lr_values_warmup_and_resume():
    def lrs(scheduler, steps):
        values = []
        for _ in range(steps):
            values.append(scheduler.get_last_lr()[0])
            scheduler.optimizer.step()
            scheduler.step()
        return values + [scheduler.get_last_lr()[0]]

    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    values = lrs(PolyLR(optimizer, total_steps=10), 12)
    assert values[0] == pytest.approx(0.1)
    assert values[5] == pytest.approx(0.1 * 0.5 ** 0.9)
    assert values[10] == pytest.approx(0.0) and values[12] == pytest.approx(0.0)  # stays at the end

    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    values = lrs(PolyLR(optimizer, total_steps=12, power=1.0, warmup_steps=2, warmup_factor=0.5), 12)
    assert values[:3] == pytest.approx([0.05, 0.075, 0.1])  # linear warm-up, then the decay over the 10 steps left
    assert values[7] == pytest.approx(0.1 * 0.5)
    assert values[12] == pytest.approx(0.0)

    # resume: the position from the state dict
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = PolyLR(optimizer, total_steps=10)
    lrs(scheduler, 4)
    resumed = PolyLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), total_steps=10)
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed.last_epoch == 4 and resumed.total_steps == 10
    assert resumed.get_last_lr()[0] == pytest.approx(0.1 * 0.6 ** 0.9)


@pytest.mark.parametrize("limits", [{"max_steps": 7}, {"max_epochs": 2}])
def test_configure_optimizers_gives_poly_lr_the_total_number_of_steps(limits, one_thread):
    torch.manual_seed(0)
    batches = [(torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))) for _ in range(5)]
    task = SegmentationTask(PixelSegmenter(), optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                            scheduler=functools.partial(PolyLR, power=0.9))
    trainer = _trainer(limit_val_batches=0, **limits)
    trainer.fit(task, train_dataloaders=_loader(batches * 2))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    expected = limits.get("max_steps", 20)  # max_epochs=2 of 10 batches
    assert isinstance(scheduler, PolyLR) and scheduler.total_steps == expected
    assert trainer.global_step == expected and scheduler.get_last_lr()[0] == pytest.approx(0.0)


# ---------------------------------------------------------------- overfit
def _squares(n: int, size: int = 24, seed: int = 0):
    """Dark noisy images with a red square (class 1) and a green square (class 2); a thin ignore border."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 0.2
    masks = torch.zeros(n, size, size, dtype=torch.int64)
    for i in range(n):
        for label in (1, 2):
            side = int(torch.randint(5, 10, (), generator=g))
            y, x = (int(v) for v in torch.randint(0, size - side, (2,), generator=g))
            images[i, label - 1, y:y + side, x:x + side] = 0.9
            masks[i, y:y + side, x:x + side] = label
    masks[:, 0], masks[:, -1] = 255, 255
    return images, masks


def test_tiny_net_overfits_a_few_synthetic_masks(one_thread):
    torch.manual_seed(0)
    images, masks = _squares(4)
    task = SegmentationTask(TinySegmenter(), optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
                            scheduler=functools.partial(PolyLR, warmup_steps=3))
    trainer = _trainer(max_steps=60, check_val_every_n_epoch=1, num_sanity_val_steps=0)
    trainer.fit(task, train_dataloaders=_loader([(images, masks)] * 60), val_dataloaders=_loader([(images, masks)]))
    metrics = trainer.callback_metrics
    assert metrics["val/miou"] > 0.9, metrics
    assert metrics["val/pixel_acc"] > 0.95, metrics
    assert math.isfinite(float(metrics["train/loss"]))


def test_deeplab_overfits_a_handful_of_synthetic_images(tmp_path, one_thread):
    """The real model and data path: DeepLabv3 (width 0.35) learns 8 images of the synthetic VOC set."""
    from vision_tasks.data import SegmentationDataset, SyntheticSegmentationDataModule, segmentation_collate
    from vision_tasks.models import deeplabv3_mobilenet_v2

    datamodule = SyntheticSegmentationDataModule(str(tmp_path / "voc"), num_train=8, num_val=2,
                                                 synthetic_image_size=64, crop_size=64, batch_size=8)
    datamodule.prepare_data()
    datamodule.setup("fit")
    unaugmented = SegmentationDataset(datamodule.train_dataset.records, 9, datamodule.eval_transform)
    batch = segmentation_collate([unaugmented[i] for i in range(8)])
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v2(num_classes=9, width_mult=0.35, output_stride=8)
    task = SegmentationTask(model, optimizer=lambda params: torch.optim.AdamW(params, lr=5e-3, weight_decay=0.0),
                            scheduler=functools.partial(PolyLR, warmup_steps=5))
    _trainer(max_steps=120, limit_val_batches=0).fit(task, train_dataloaders=_loader([batch] * 120))
    # evaluated in eval mode on the images it was trained on, after recomputing the BatchNorm statistics
    # for the final weights ("precise BN": with momentum 0.1 the running ones lag weights that moved this fast)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: one pass gives this batch's exact statistics
        model.train()
        model(batch[0])
    metrics = _validate(task, [batch])
    assert metrics["val/miou"] > 0.8, metrics
