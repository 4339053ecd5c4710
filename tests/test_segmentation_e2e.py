"""Segmentation end to end through the real entry points: train.py, test.py (plain and MF), predict.py,
the VOC reader on a VOC-layout folder, the paper experiment's composition, and LightningCLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from conftest import ROOT, run_tool
from hydra.errors import MissingConfigException

from vision_tasks.runner import CONFIG_DIR

pytestmark = pytest.mark.slow

# A synthetic segmentation set and model small enough for seconds on 2 CPU cores.
DATA = [
    "data.num_train=8",
    "data.num_val=4",
    "data.synthetic_image_size=64",
    "data.crop_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
]
RUN = [
    "model.width_mult=0.35",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.enable_progress_bar=false",
]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=["run_dir=unused", *overrides])


def test_segmentation_config_composes_with_poly_schedule():
    cfg = _compose("task=segmentation")
    assert cfg.task._target_ == "vision_tasks.tasks.SegmentationTask"
    assert cfg.model._target_ == "vision_tasks.models.deeplabv3_mobilenet_v2"
    assert cfg.data._target_ == "vision_tasks.data.SyntheticSegmentationDataModule"
    assert cfg.task.scheduler._target_ == "vision_tasks.optim.PolyLR" and cfg.task.scheduler.power == 0.9
    assert cfg.model.width_mult == 0.5 and cfg.model.feature == "layer18"  # the synthetic recipe, the paper's tap
    # the scheduler stays a choice, and the other tasks keep theirs
    assert _compose("task=segmentation", "scheduler=warmup_cosine").task.scheduler._target_.endswith("WarmupCosineLR")
    assert _compose("task=detection").task.scheduler._target_.endswith("WarmupCosineLR")


def test_paper_deeplabv3_experiment_is_the_tf_recipe():
    cfg = _compose("experiment=paper_deeplabv3_voc", "data.root=/voc")
    assert cfg.data._target_ == "vision_tasks.data.VOCSegmentationDataModule"
    assert (cfg.data.train_split, cfg.data.train_masks, cfg.data.val_split) == ("train_aug", "SegmentationClassAug", "val")
    assert (cfg.data.crop_size, list(cfg.data.scale_range), cfg.data.batch_size) == (513, [0.5, 2.0], 16)
    assert (cfg.model.output_stride, cfg.model.aspp, cfg.model.feature) == (16, False, "layer18")
    optimizer = instantiate(cfg.task.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.007, 0.9, 4e-5, False)
    scheduler = instantiate(cfg.task.scheduler)(optimizer, total_steps=cfg.trainer.max_steps)
    assert scheduler.power == 0.9 and scheduler.total_steps == 30000


def test_experiments_choose_their_task_and_hydra_names_a_source_the_task_lacks():
    # the paper experiments name their task, so "experiment=..." alone is a complete command
    assert _compose("experiment=paper_ssdlite_coco", "data.root=/coco").task._target_.endswith("DetectionTask")
    voc = _compose("experiment=paper_deeplabv3_voc", "data=voc", "data.root=/voc")  # VOC 2012 without SBD
    assert voc.data._target_ == "vision_tasks.data.VOCSegmentationDataModule" and voc.data.train_split == "train"
    assert voc.task.eval_pad_size == 513  # TF evaluates VOC padded to 513x513
    # Hydra's own message names the task/source pair and lists the pairs there are
    with pytest.raises(MissingConfigException) as error:
        _compose("experiment=paper_deeplabv3_voc", "data=coco")
    message = str(error.value)
    assert "Could not find 'datamodule/segmentation_coco'" in message
    assert "segmentation_voc_aug" in message and "detection_coco" in message


def test_train_test_mf_predict(tmp_path, env):
    run_dir = tmp_path / "run"
    run_tool(["tools/train.py", "task=segmentation", *DATA, *RUN, f"hydra.run.dir={run_dir}"], env)
    for name in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "config.yaml", "metrics.json", "curves.png"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"val/miou", "val/pixel_acc", "val/loss", "val/iou/background"} <= set(metrics)
    assert 0.0 <= metrics["val/miou"] <= 1.0 and metrics["global_step"] == 2
    meta = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["vision_tasks"]
    assert meta["task"] == "segmentation" and meta["model_class"] == "DeepLabV3MobileNetV2"
    assert meta["class_names"][:2] == ["background", "circle"] and meta["model_config"]["num_classes"] == 9

    # test.py: the same metrics from the checkpoint alone; mf=true evaluates 6 scales x 2 flips
    ckpt = f"ckpt_path={run_dir}/checkpoints/last.ckpt"
    test_dir, mf_dir = tmp_path / "test", tmp_path / "test_mf"
    run_tool(["tools/test.py", "task=segmentation", *DATA, ckpt, f"hydra.run.dir={test_dir}",
              "trainer.enable_progress_bar=false"], env)
    assert json.loads((test_dir / "metrics.json").read_text())["val/miou"] == pytest.approx(metrics["val/miou"], abs=1e-6)
    run_tool(["tools/test.py", "task=segmentation", *DATA, ckpt, "mf=true", f"hydra.run.dir={mf_dir}",
              "trainer.enable_progress_bar=false"], env)
    assert "mf: true" in (mf_dir / "config.yaml").read_text()
    assert 0.0 <= json.loads((mf_dir / "metrics.json").read_text())["val/miou"] <= 1.0

    # predict.py: an overlay at the image's own size and a palette mask that reads back as class indices
    images = tmp_path / "images"
    images.mkdir()
    data_root = next(Path(env["VISION_TASKS_DATA"]).glob("segmentation-*/VOC2012"))  # the generated set
    sources = sorted((data_root / "JPEGImages").glob("*.png"))[:2]
    for i, path in enumerate(sources):
        Image.open(path).convert("L").resize((70, 50)).save(images / f"photo{i}.jpg")  # grey, another size
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    out = tmp_path / "predictions"
    run_tool(["tools/predict.py", "task=segmentation", *DATA, ckpt, f"input={images}", f"output={out}",
              f"hydra.run.dir={tmp_path / 'p'}"], env)
    assert sorted(p.name for p in out.iterdir()) == [
        "photo0.png", "photo0_mask.png", "photo1.png", "photo1_mask.png", "predictions.json"]
    overlay = Image.open(out / "photo0.png")  # the photo, then a legend naming each colour below it
    assert overlay.width == 70 * 6 and overlay.height > 50 * 6  # enlarged for drawing: 70 x 6 >= 384
    mask = Image.open(out / "photo0_mask.png")
    assert mask.mode == "P" and mask.size == (70, 50) and np.asarray(mask).max() < 9
    records = json.loads((out / "predictions.json").read_text())
    assert [r["mask"] for r in records] == ["photo0_mask.png", "photo1_mask.png"]
    assert sum(records[0]["class_fractions"].values()) == pytest.approx(1.0, abs=1e-3)
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before


def test_voc_layout_and_paper_experiment_run(tmp_path, env):
    # The synthetic set is written in VOC layout: data=voc reads it with the real reader, and the paper
    # recipe (SGD, poly, random scale 0.5-2, crop, evaluation padded to the crop) runs one batch on it.
    from vision_tasks.data.synthetic import generate_segmentation

    root = generate_segmentation(tmp_path / "voc", num_train=4, num_val=2, image_size=48)
    run_tool(["tools/train.py", "experiment=paper_deeplabv3_voc", "data=voc", f"data.root={root}",
              "data.crop_size=65", "task.eval_pad_size=65", "data.batch_size=2", "data.num_workers=0",
              "model.num_classes=null", "model.width_mult=0.35", "trainer.fast_dev_run=true",
              "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"], env)
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "torch.optim.SGD" in config and "PolyLR" in config and "crop_size: 65" in config


def test_lightning_cli_fast_dev_run(tmp_path, env):
    config = ROOT / "configs/lightning/segmentation.yaml"
    tiny = ["--data.init_args.num_train=8", "--data.init_args.num_val=4", "--data.init_args.synthetic_image_size=64",
            "--data.init_args.crop_size=64", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
            "--model.init_args.model.init_args.width_mult=0.35", "--trainer.enable_progress_bar=false"]
    run_tool(["-m", "vision_tasks", "fit", f"--config={config}", *tiny, "--trainer.max_epochs=1",
              "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"], env, cwd=tmp_path)
    log_dir = tmp_path / "runs/lightning/segmentation/version_0"
    assert {"val/miou", "val/pixel_acc"} <= set(json.loads((log_dir / "metrics.json").read_text()))
    script = shutil.which("vision-tasks")
    assert script, "the vision-tasks console script is not installed (pip install -e .)"
    proc = subprocess.run([script, "fit", f"--config={config}", *tiny, "--trainer.fast_dev_run=1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
