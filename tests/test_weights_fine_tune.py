"""Every weight source trains, not only evaluates: a task model started from it the way tools/train.py starts one
(the record's architecture, the class layers following the data's classes, folded BatchNorms unfolded) trains a
few steps on a small batch of real photos from ../shared/data/coco128: the loss falls, and the backbone's
features in training mode are alive and (for the TF releases, once unfolded) those of evaluation mode; folded,
the classifier's layer19 was 99.998% zeros in training mode."""

from __future__ import annotations

import copy
import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from vision_tasks.models import (build_model, describe_weights, mobilenet_v2_classifier, unfold_batch_norms,
                                 weights_settings)
from vision_tasks.models.transfer import load_pretrained

SHARED = Path(__file__).resolve().parents[2] / "shared"
COCO128 = SHARED / "data" / "coco128"
WEIGHTS = SHARED / "weights"
SIDE = 160


def _photos(count: int = 8, side: int = SIDE) -> tuple[list[Path], torch.Tensor]:
    if not (COCO128 / "voc21_masks" / "train2017").is_dir():
        pytest.skip("needs ../shared/data/coco128 (real photos)")
    masks = sorted((COCO128 / "voc21_masks" / "train2017").glob("*.png"))[:count]
    paths = [COCO128 / "train2017" / f"{m.stem}.jpg" for m in masks]
    images = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((side, side))))
                          .permute(2, 0, 1) for p in paths]).float() / 255
    return paths, images


def _masks(paths: list[Path]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(Image.open(COCO128 / "voc21_masks" / "train2017" / f"{p.stem}.png")
                                                  .resize((SIDE, SIDE), Image.NEAREST))).long() for p in paths])


def _detection_targets(paths: list[Path], side: int) -> tuple[list[dict], list[str], list[int]]:
    coco = json.loads((COCO128 / "annotations" / "instances_train2017.json").read_text())
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    label = {c["id"]: i for i, c in enumerate(categories)}
    images = {img["file_name"]: img for img in coco["images"]}
    targets = []
    for path in paths:
        image = images[path.name]
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"] and not a.get("iscrowd")]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes *= torch.tensor([side / image["width"], side / image["height"]] * 2)
        targets.append({"boxes": boxes, "labels": torch.tensor([label[a["category_id"]] for a in anns])})
    return targets, [c["name"] for c in categories], [c["id"] for c in categories]


def _alive(model: nn.Module, images: torch.Tensor) -> float:
    """The share of non-zero values of the backbone's last tap in training mode (on a copy: a training-mode
    forward updates the running statistics)."""
    model = copy.deepcopy(model).train()
    with torch.no_grad():
        features = model.backbone(model.preprocess(images))
    return float((list(features.values())[-1] != 0).float().mean())


def _training_mode_gap(model: nn.Module, images: torch.Tensor) -> float:
    """How far the backbone's last features in training mode (batch statistics) are from those in eval mode."""
    model = copy.deepcopy(model)
    outputs = []
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            outputs.append(list(model.backbone(model.preprocess(images)).values())[-1])
    return float((outputs[0] - outputs[1]).norm() / outputs[1].norm())


def _train(model: nn.Module, loss_fn, lr: float, steps: int = 6) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture()
def offline_caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches, no network: the names resolve to the files the test puts there."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("no network in tests")))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def _cache_torchvision(root: Path) -> None:
    folder = root / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v2().state_dict(), folder / "mobilenet_v2-7ebf99e0.pth")


def _cache_timm(root: Path) -> None:
    timm = pytest.importorskip("timm", reason="timm is a test extra: pip install '.[dev]'")
    from safetensors.torch import save_file

    revision = "0123456789abcdef0123456789abcdef01234567"
    folder = root / "hf" / "hub" / "models--timm--mobilenetv2_050.lamb_in1k"
    (folder / "snapshots" / revision).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    torch.manual_seed(0)
    state = timm.create_model("mobilenetv2_050").state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "snapshots" / revision / "model.safetensors"))


@pytest.mark.parametrize("name, cache, width", [("imagenet", _cache_torchvision, 1.0),
                                                ("timm:mobilenetv2_050.lamb_in1k", _cache_timm, 0.5)])
def test_imagenet_names_fine_tune_a_classifier(offline_caches, one_thread, name, cache, width):
    cache(offline_caches)
    paths, images = _photos()
    labels = torch.arange(len(paths)) % 2
    model = mobilenet_v2_classifier(num_classes=2, width_mult=width, **weights_settings(name))
    report = load_pretrained(model, name, ["a", "b"])
    assert report.fresh == ["head.fc"]
    assert _alive(model, images) > 0.05
    losses = _train(model, lambda: nn.functional.cross_entropy(model(images), labels), lr=1e-3)
    assert losses[-1] < losses[0], losses


def _release(file_name: str) -> Path:
    pytest.importorskip("ai_edge_litert", reason="the TFLite reader is an optional extra: pip install '.[tflite]'")
    path = WEIGHTS / file_name
    if not path.is_file():
        pytest.skip(f"needs {path}")
    return path


@pytest.mark.parametrize("file_name", ["mobilenet_v2_1.0_224_quant.tflite", "deeplabv3_mnv2_pascal_quant.tflite",
                                       "deeplabv3_mnv2_dm05_pascal_quant.tflite",
                                       "ssdlite_mobilenet_v2_coco_0.5_200x200.tflite"])
def test_tf_releases_fine_tune_on_real_photos(one_thread, file_name):
    path = _release(file_name)
    info = describe_weights(path)
    side = int(info.input_size) if info.task == "detection" else SIDE
    paths, images = _photos(side=side)
    config = dict(info.model_config)
    if info.task == "classification":  # two classes of ours: the 1000-way layer starts afresh
        class_names, ids, labels = ["a", "b"], None, torch.arange(len(paths)) % 2
        config["num_classes"] = 2
    elif info.task == "segmentation":  # the release's own 21 VOC classes: everything is kept
        class_names, ids, masks = list(info.class_names), None, _masks(paths)
    else:  # coco128's 80 classes with their COCO ids: the rows of the 90-way head are kept
        targets, class_names, ids = _detection_targets(paths, side)
        config.update(num_classes=len(class_names), category_ids=ids)
    model = build_model(info.model_class, config)
    report = load_pretrained(model, str(path), class_names, ids)
    assert report.fresh == (["head.fc"] if info.task == "classification" else [])
    assert _training_mode_gap(model, images) > 0.5  # folded: training-mode batch statistics erase the features
    unfold_batch_norms(model, [images])
    assert _training_mode_gap(model, images) < 0.1  # unfolded: they reproduce the release
    if info.task == "classification":
        assert _alive(model, images) > 0.05
    if info.task == "classification":
        loss_fn, lr = (lambda: nn.functional.cross_entropy(model(images), labels)), 1e-3
    elif info.task == "segmentation":
        loss_fn, lr = (lambda: nn.functional.cross_entropy(model(images), masks, ignore_index=255)), 1e-4
    else:
        def loss_fn():
            losses = model.loss(model.forward_head(images), targets)
            return losses["classification"] + losses["localization"]
        lr = 1e-4
    losses = _train(model, loss_fn, lr)
    assert losses[-1] < losses[0], losses
