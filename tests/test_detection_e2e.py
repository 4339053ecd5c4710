"""Detection end to end through the real entry points: train.py, test.py (detections.json), predict.py,
the COCO reader on a COCO-layout folder, the paper experiment's composition, and LightningCLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import ROOT, run_tool

pytestmark = pytest.mark.slow

# A synthetic detection set and model small enough for seconds on 2 CPU cores.
DATA = [
    "data.num_train=8",
    "data.num_val=4",
    "data.synthetic_image_size=64",
    "data.image_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
]
RUN = [
    "model.width_mult=0.35",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.enable_progress_bar=false",
]


def test_train_test_predict(tmp_path, env):
    run_dir = tmp_path / "run"
    run_tool(["tools/train.py", "task=detection", *DATA, *RUN, f"hydra.run.dir={run_dir}"], env)
    for name in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "config.yaml", "metrics.json", "curves.png"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"val/map", "val/map_50", "val/map_75", "val/map_small", "val/loss"} <= set(metrics)
    assert metrics["global_step"] == 2
    meta = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["vision_tasks"]
    assert meta["task"] == "detection" and meta["model_class"] == "SSDLiteMobileNetV2"
    assert meta["class_names"][0] == "circle" and meta["model_config"]["num_classes"] == 8

    # test.py: the same metrics, and detections.json in the COCO results format with the file's ids
    test_dir = tmp_path / "test"
    run_tool(["tools/test.py", "task=detection", *DATA, f"ckpt_path={run_dir}/checkpoints/last.ckpt",
              f"hydra.run.dir={test_dir}", "trainer.enable_progress_bar=false"], env)
    assert json.loads((test_dir / "metrics.json").read_text())["val/map"] == pytest.approx(metrics["val/map"], abs=1e-6)
    detections = json.loads((test_dir / "detections.json").read_text())
    val_file = next(Path(env["VISION_TASKS_DATA"]).glob("detection-*/annotations/instances_val2017.json"))
    annotations = json.loads(val_file.read_text())
    assert detections, "an untrained model still scores above the 0.01 threshold somewhere"
    assert {d["image_id"] for d in detections} <= {im["id"] for im in annotations["images"]}
    assert {d["category_id"] for d in detections} <= {c["id"] for c in annotations["categories"]}
    assert all(len(d["bbox"]) == 4 and 0 <= d["score"] <= 1 for d in detections)

    # predict.py: drawn PNGs (small images enlarged by a whole factor to a long side >= 384: 80 x 5) and
    # predictions.json in the images' own pixels; the inputs stay untouched
    images = tmp_path / "images"
    images.mkdir()
    for i, path in enumerate(sorted(val_file.parent.parent.glob("val2017/*.png"))[:2]):
        Image.open(path).convert("L").resize((80, 50)).save(images / f"photo{i}.jpg")  # grey, another size
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    out = tmp_path / "predictions"
    run_tool(["tools/predict.py", "task=detection", *DATA, f"ckpt_path={run_dir}/checkpoints/last.ckpt",
              f"input={images}", f"output={out}", "draw_threshold=0.0", f"hydra.run.dir={tmp_path / 'p'}"], env)
    assert sorted(p.name for p in out.iterdir()) == ["photo0.png", "photo1.png", "predictions.json"]
    assert Image.open(out / "photo0.png").size == (400, 250)
    records = json.loads((out / "predictions.json").read_text())
    assert [r["file"].endswith(f"photo{i}.jpg") for i, r in enumerate(records)] == [True, True]
    for record in records:
        assert len(record["boxes"]) == len(record["scores"]) == len(record["class_names"])
        assert all(0 <= b[0] <= b[2] <= 80 and 0 <= b[1] <= b[3] <= 50 for b in record["boxes"])
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before
    # nothing is written over: the same output folder again is refused
    proc = run_tool(["tools/predict.py", "task=detection", *DATA, f"ckpt_path={run_dir}/checkpoints/last.ckpt",
                     f"input={images}", f"output={out}", f"hydra.run.dir={tmp_path / 'p2'}"], env, expect_ok=False)
    assert "not an empty folder" in proc.stderr


def test_coco_layout_and_paper_experiment_compose(tmp_path, env):
    # The synthetic set is written in COCO layout: data=coco reads it with the real reader, and the
    # paper recipe (RMSProp, StepLR per batch, sigmoid loss, 320 input) runs one batch on it.
    from vision_tasks.data.synthetic import generate_detection

    root = generate_detection(tmp_path / "coco", num_train=4, num_val=2, image_size=64)
    run_tool(["tools/train.py", "task=detection", "experiment=paper_ssdlite_coco", "data=coco", f"data.root={root}",
              "data.image_size=96", "data.batch_size=2", "data.num_workers=0", "model.width_mult=0.35",
              "trainer.fast_dev_run=true", "trainer.enable_progress_bar=false",
              f"hydra.run.dir={tmp_path / 'run'}"], env)
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "torch.optim.RMSprop" in config and "StepLR" in config and "classification_loss: sigmoid" in config


def test_lightning_cli_fast_dev_run(tmp_path, env):
    config = ROOT / "configs/lightning/detection.yaml"
    tiny = ["--data.init_args.num_train=8", "--data.init_args.num_val=4", "--data.init_args.synthetic_image_size=64",
            "--data.init_args.image_size=64", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
            "--model.init_args.model.init_args.width_mult=0.35", "--model.init_args.model.init_args.image_size=64",
            "--trainer.enable_progress_bar=false"]
    run_tool(["-m", "vision_tasks", "fit", f"--config={config}", *tiny, "--trainer.max_epochs=1",
              "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"], env, cwd=tmp_path)
    log_dir = tmp_path / "runs/lightning/detection/version_0"
    assert {"val/map", "val/map_50"} <= set(json.loads((log_dir / "metrics.json").read_text()))
    script = shutil.which("vision-tasks")
    assert script, "the vision-tasks console script is not installed (pip install -e .)"
    import subprocess

    proc = subprocess.run([script, "fit", f"--config={config}", *tiny, "--trainer.fast_dev_run=1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
