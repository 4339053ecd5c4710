"""The TF Object Detection API's files beside an exported detector: label map and pipeline config.

An OD API export (``X.tflite``) usually comes with its training configuration (``X.pipeline.config`` or
``pipeline.config``, protobuf text) and its label map (``*.pbtxt``, named by the config's
``label_map_path``). :func:`ssdlite_record_settings` reads what a weight record needs from them (class
names, the dataset category id of each output, the evaluation's post-processing) and checks the model's
anchors against the file's own. Only the few fields used here are parsed, with regular expressions: the
files are protobuf text, and a full parser would need TensorFlow or the OD API's protos.

Example::

    names, ids, settings = ssdlite_record_settings(Path("ssdlite_mobilenet_v2_coco_0.5_200x200.tflite"), info)
    ids[:12]       # [1, 2, ..., 12]: output i is label-map id i + 1, COCO's category ids (12 is unused)
    settings       # {"score_thresh": 1e-08, "nms_thresh": 0.6, "detections_per_img": 100}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import box_convert

import backbones
from heads import DefaultBoxGenerator

__all__ = ["ANCHOR_TOLERANCE", "check_anchors", "coco_category_names", "find_pipeline_config", "read_label_map",
           "read_post_processing", "read_training_loss", "ssdlite_record_settings"]

# Anchors are compared in normalised units. TF computes them in float32, DefaultBoxGenerator in float64 rounded
# once to float32: the two differ by at most one float32 ulp (2.4e-7 for the sides between 1 and 2 of the last
# map); a wrong setting differs by far more (aspect ratio 1/3 instead of the config's 0.3333: 8e-5).
ANCHOR_TOLERANCE = 1e-6
_NA = "N/A"  # the name of a category id that the label map leaves out (torchvision's COCO list does the same)


def find_pipeline_config(weights: Path) -> Path | None:
    """``X.pipeline.config`` beside ``X.tflite``, else ``pipeline.config`` in its folder (the export's own name)."""
    for candidate in (weights.with_suffix(".pipeline.config"), weights.parent / "pipeline.config"):
        if candidate.is_file():
            return candidate
    return None


def read_label_map(path: Path) -> dict[int, str]:
    """``{id: display_name (or name)}`` of an OD API label map (``item { id: 1 display_name: "person" }``)."""
    labels: dict[int, str] = {}
    for block in re.findall(r"item\s*\{(.*?)\}", path.read_text(), flags=re.S):
        found = re.search(r"\bid\s*:\s*(\d+)", block)
        name = re.search(r'\bdisplay_name\s*:\s*"([^"]*)"', block) or re.search(r'\bname\s*:\s*"([^"]*)"', block)
        if found and name:
            labels[int(found.group(1))] = name.group(1)
    if not labels:
        raise backbones.WeightsError(f"{path}: no 'item {{ id: ... display_name: ... }}' entries: not a label map")
    return labels


def read_post_processing(pipeline: Path) -> dict[str, Any]:
    """The evaluation's post-processing of a pipeline config (``post_processing { batch_non_max_suppression {...} }``)
    as :class:`~vision_tasks.models.SSDLiteMobileNetV2` arguments; ``{}`` when the config has none."""
    text = pipeline.read_text()
    block = re.search(r"batch_non_max_suppression\s*\{(.*?)\}", text, flags=re.S)
    if block is None:
        return {}
    fields = {"score_threshold": "score_thresh", "iou_threshold": "nms_thresh",
              "max_total_detections": "detections_per_img"}
    settings: dict[str, Any] = {}
    for field, argument in fields.items():
        found = re.search(rf"\b{field}\s*:\s*([0-9.eE+-]+)", block.group(1))
        if found:
            value = float(found.group(1))
            settings[argument] = int(value) if argument == "detections_per_img" else value
    return settings


def read_training_loss(pipeline: Path) -> dict[str, Any]:
    """The training loss of a pipeline config (``loss { classification_loss {...} }``, ``normalize_loc_loss_by_codesize``)
    as :class:`~vision_tasks.models.SSDLiteMobileNetV2` arguments, so that fine-tuning continues with the objective
    the weights were trained for; ``{}`` when the config names neither loss this project has."""
    text = pipeline.read_text()
    settings: dict[str, Any] = {}
    focal = re.search(r"weighted_sigmoid_focal\s*\{(.*?)\}", text, flags=re.S)
    if focal is not None:
        settings["classification_loss"] = "sigmoid_focal"
        for field, argument in (("alpha", "focal_alpha"), ("gamma", "focal_gamma")):
            found = re.search(rf"\b{field}\s*:\s*([0-9.eE+-]+)", focal.group(1))
            if found:
                settings[argument] = float(found.group(1))
    elif re.search(r"\bweighted_sigmoid\s*\{", text):
        settings["classification_loss"] = "sigmoid"
    elif re.search(r"\bweighted_softmax\s*\{", text):
        settings["classification_loss"] = "softmax"
    if re.search(r"\bnormalize_loc_loss_by_codesize\s*:\s*true", text):
        settings["localization_per_coordinate"] = True
    return settings


def _label_map_path(weights: Path, pipeline: Path | None) -> Path | None:
    """The label map the pipeline config names (looked up beside the weights), else ``mscoco_label_map.pbtxt`` there."""
    names = []
    if pipeline is not None:
        names += [Path(n).name for n in re.findall(r'label_map_path\s*:\s*"([^"]+)"', pipeline.read_text())]
    names.append("mscoco_label_map.pbtxt")
    return next((weights.parent / n for n in names if (weights.parent / n).is_file()), None)


def coco_category_names() -> dict[int, str]:
    """COCO's category id -> name (ids 1..90; torchvision's list, "N/A" for the ten ids COCO never annotated)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    categories = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # index = category id, 0 = background
    return {i: name for i, name in enumerate(categories) if i > 0}


def check_anchors(info: dict[str, Any], config: dict[str, Any], weights: Path) -> float:
    """The largest difference between the anchors of the model ``config`` describes and the file's own
    (``info["anchors"]``, TF's ``(ycenter, xcenter, height, width)`` in [0, 1] units); raises a
    ``WeightsError`` above :data:`ANCHOR_TOLERANCE`."""
    generator = DefaultBoxGenerator(config["aspect_ratios"], config["min_scale"], config["max_scale"],
                                    num_maps=len(info["feature_sizes"]), layout=config["anchor_layout"])
    ours = generator(info["feature_sizes"], (1, 1), dtype=torch.float64)
    ours = box_convert(ours, "xyxy", "cxcywh")[:, [1, 0, 3, 2]].float()
    theirs = info["anchors"]
    if ours.shape != theirs.shape:
        raise backbones.WeightsError(f"{weights}: the model has {ours.shape[0]} anchors, the file {theirs.shape[0]}")
    diff = float((ours - theirs).abs().max())
    if diff > ANCHOR_TOLERANCE:
        index = int((ours - theirs).abs().amax(dim=1).argmax())
        raise backbones.WeightsError(
            f"{weights}: the file's anchors are not those of anchor_layout={config['anchor_layout']!r}, min_scale="
            f"{config['min_scale']}, max_scale={config['max_scale']}, aspect_ratios={config['aspect_ratios']}: anchor "
            f"{index} is {theirs[index].tolist()} (yc, xc, h, w), ours {ours[index].tolist()} (max difference {diff:.2e})"
        )
    return diff


def ssdlite_record_settings(
    weights: Path, info: dict[str, Any]
) -> tuple[list[str] | None, list[int] | None, dict[str, Any]]:
    """``(class_names, category_ids, post-processing settings)`` of an OD API SSD export read by
    ``backbones.tflite.read_tflite`` (``info``).

    - Output ``i`` is the label-map id ``i + 1`` (the OD API's convention: background first, then the
      classes by id from 1), so ``category_ids`` is ``1 .. num_classes``; with the COCO label map these are
      COCO's category ids, ten of which (12, 26, ...) COCO never annotated.
    - Class names: the label map the pipeline config names, or ``mscoco_label_map.pbtxt``, beside the file;
      without one, COCO's names when the model has 90 classes; else ``None``. Ids the label map leaves
      out are named "N/A".
    - Post-processing: the pipeline config's ``batch_non_max_suppression`` (score threshold, IoU,
      detections per image), the evaluation the OD API ran; ``{}`` without a config (the model keeps what
      the file's own operator does).
    - Training loss (:func:`read_training_loss`): the config's classification loss (``weighted_sigmoid_focal``
      with its alpha and gamma here) and ``normalize_loc_loss_by_codesize``, for fine-tuning.
    """
    num_classes = int(info["num_classes"])
    pipeline = find_pipeline_config(weights)
    label_map = _label_map_path(weights, pipeline)
    ids = list(range(1, num_classes + 1))
    if label_map is not None:
        labels = read_label_map(label_map)
        outside = sorted(set(labels) - set(ids))
        if outside:
            raise backbones.WeightsError(f"{label_map}: ids {outside[:5]} lie outside the model's 1..{num_classes}")
        names: list[str] | None = [labels.get(i, _NA) for i in ids]
    elif num_classes == 90:
        coco = coco_category_names()
        names = [coco[i] for i in ids]
    else:
        names = None
    settings = {**read_post_processing(pipeline), **read_training_loss(pipeline)} if pipeline is not None else {}
    return names, ids, settings
