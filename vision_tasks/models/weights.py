"""What a weight file is and how to use it: one record per source, like torchvision's ``WeightsEnum.meta``
and timm's ``pretrained_cfg``.

:func:`describe_weights` reads any file :func:`backbones.load_weights` accepts and returns a
:class:`WeightsInfo`: the preprocessing the weights were trained with (``mean`` / ``std`` /
``normalization`` / ``grayscale``), the backbone's padding (TF "SAME" for TensorFlow-derived
weights) and channel rounding, the input size, the class names, the model class and configuration
when the file holds a whole task model, and where known the accuracy it reaches. The model builders
of :mod:`vision_tasks.models` read it, so that whatever weights are loaded set the model's
normalisation and padding; ``tools/convert_weights.py`` writes it beside a converted file as JSON.

Sources:

- torchvision ``mobilenet_v2`` files: ImageNet mean/std, symmetric padding, 224, the 1000 ImageNet
  categories; the published accuracy when the file name is that of a torchvision release.
- timm ``mobilenetv2_*`` files: ImageNet mean/std (timm's ``pretrained_cfg`` for these models), 224.
- the paper authors' TFLite releases: inputs in [-1, 1], TF "SAME" padding, 224 / 513, the model
  configuration the file fits (``backbones.tflite.read_tflite``).
- this project's Lightning checkpoints: everything is in the checkpoint (older checkpoints, whose
  model configuration predates the model-owned normalisation, take it from their data module's
  saved hyperparameters).
- converted files (``X.safetensors`` + ``X.json``): the record itself.
- plain state dicts of this project's models: nothing known (the configured model's settings apply).

Example::

    info = describe_weights("mobilenet_v2-b0353104.pth")
    info.preprocessing      # {"mean": [0.485, 0.456, 0.406], "std": [...], "normalization": "standard", "grayscale": False}
    info.padding, info.input_size, info.metrics   # "symmetric", 224, {"imagenet_acc1": 71.878, ...}
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import torch

import backbones

from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, TF_MEAN, TF_STD, preprocessing_config

__all__ = ["RECORD_VERSION", "WeightsInfo", "describe_weights", "imagenet_categories", "read_record", "record_path",
           "weights_settings"]

RECORD_VERSION = 2  # 1: the sidecar of the first converter (model class/config, class names, "preprocessing")
CHECKPOINT_KEY = "vision_tasks"  # the entry of this project's Lightning checkpoints (see vision_tasks.tasks.base)
_IMAGENET = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "normalization": "standard", "grayscale": False}
_PREPROCESSING_KEYS = ("mean", "std", "normalization", "grayscale")


@dataclasses.dataclass
class WeightsInfo:
    """How to use a weight file (see the module docstring).

    Attributes:
        source: the file.
        kind: ``"torchvision"``, ``"timm"``, ``"tflite"``, ``"checkpoint"``, ``"converted"`` or ``"state_dict"``.
        preprocessing: ``mean``, ``std`` (0..1 units), ``normalization``, ``grayscale``; ``None`` when the file
            does not say (a plain state dict of this project).
        padding: the backbone's padding the weights were trained with (``"symmetric"`` / ``"tf_same"``).
        round_nearest: the backbone's channel rounding (8; TF DeepLab's width-0.5 release: 1).
        input_size: the side the weights were trained or evaluated at, if known.
        class_names: the names of the outputs, in order, if known.
        model_class, model_config: the task model that takes the file whole (``vision_tasks.models.MODELS``
            name and constructor arguments), for whole-model files.
        task: the task of a whole-model file (``classification``, ``detection``, ``segmentation``).
        metrics: published or measured accuracy, e.g. ``{"imagenet_acc1": 71.878}``.
        name: the weight name it was asked for by (``imagenet`` ...), if any; ``source`` is then the cached file.
    """

    source: str
    kind: str
    preprocessing: dict[str, Any] | None = None
    padding: str = "symmetric"
    round_nearest: int = 8
    input_size: int | None = None
    class_names: list[str] | None = None
    model_class: str | None = None
    model_config: dict[str, Any] | None = None
    task: str | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    name: str | None = None

    def backbone_settings(self) -> dict[str, Any]:
        """The model arguments these weights decide: preprocessing, padding and (if not 8) channel rounding."""
        settings: dict[str, Any] = dict(self.preprocessing or {})
        settings["padding"] = self.padding
        if self.round_nearest != 8:
            settings["round_nearest"] = self.round_nearest
        return settings

    def to_json(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str | Path) -> "WeightsInfo":
        fields = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in fields}
        known["source"] = str(source)
        return cls(**known)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in label order (torchvision's, which TF-Slim's 1001 labels follow after
    their background entry)."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def record_path(weights: str | Path) -> Path:
    """``model.safetensors`` -> ``model.json``: where the record of a converted file lives."""
    return Path(weights).with_suffix(".json")


def read_record(weights: str | Path) -> WeightsInfo | None:
    """The record beside a converted file (``X.json`` for ``X.safetensors``), or ``None`` if there is none."""
    path = record_path(weights)
    if not path.is_file() or path == Path(weights):
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise backbones.WeightsError(f"{path}: the description of {weights} is not readable JSON ({err})") from err
    if not isinstance(data, dict) or "model_class" not in data:
        raise backbones.WeightsError(f"{path}: not a vision_tasks weight description (no 'model_class'); "
                                     "remove it or convert the weights again with tools/convert_weights.py")
    if data.get("version", 1) == 1:  # the first converter's sidecar: preprocessing under its own key
        pre = data.get("preprocessing") or {}
        data = {**data, "kind": "converted", "padding": pre.get("padding", "symmetric"),
                "input_size": pre.get("input_size"),
                "preprocessing": {k: pre[k] for k in _PREPROCESSING_KEYS if k in pre} or None}
        if data["preprocessing"] is not None:
            data["preprocessing"] = {**_IMAGENET, **data["preprocessing"]}
        config = dict(data.get("model_config") or {})
        for key, value in (data["preprocessing"] or {}).items():
            config.setdefault(key, value)
        data["model_config"] = config
    return WeightsInfo.from_json(data, weights)


def describe_weights(weights: str | Path) -> WeightsInfo:
    """What ``weights`` holds and how to use it (see the module docstring): a file, or a weight name
    (``imagenet``, ``timm:mobilenetv2_100.ra_in1k`` ...: :mod:`vision_tasks.models.hub`), whose ``source``
    in the record is then the file in the library's cache.

    Raises:
        FileNotFoundError: no such file.
        backbones.WeightsError: a file that cannot be read (named, with the reason); an unknown weight name, or
            a named release that is neither cached nor downloadable (the message says where to put it).
    """
    from .hub import named, resolve_weights

    release = named(weights)
    path = resolve_weights(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    info = _describe_file(path)
    if release is not None:
        info = dataclasses.replace(info, name=release.name, metrics={**info.metrics, **dict(release.metrics)})
    return info


def _describe_file(path: Path) -> WeightsInfo:
    if path.suffix == ".tflite":
        return _describe_tflite(path)
    record = read_record(path)
    if record is not None:
        return record
    checkpoint = _read_checkpoint(path)
    if checkpoint is not None:
        return describe_checkpoint(checkpoint, path)
    state = backbones.read_state_dict(path)
    keys = list(state)
    if backbones.weights._is_timm_layout(keys):  # noqa: SLF001 (the one place that knows timm's names)
        return WeightsInfo(str(path), "timm", dict(_IMAGENET), input_size=224,
                           class_names=_imagenet_names_if(_classifier_size(state)))
    if any(k.startswith("features.") for k in keys):
        return WeightsInfo(str(path), "torchvision", dict(_IMAGENET), input_size=224,
                           class_names=_imagenet_names_if(_classifier_size(state)), metrics=_torchvision_metrics(path))
    return WeightsInfo(str(path), "state_dict")


def weights_settings(
    weights: str | Path | None,
    *,
    padding: str | None = None,
    mean: Any = None,
    std: Any = None,
    normalization: str | None = None,
    grayscale: bool | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Model arguments for a model that will load ``weights``: ``kwargs`` as given, plus the settings the
    weights decide (normalisation, padding, channel rounding). A value given explicitly wins, then what
    the weights' record says, then the defaults (ImageNet's normalisation, symmetric padding)."""
    info = describe_weights(weights) if weights is not None else None
    settings = {**kwargs, **preprocessing_config(mean, std, normalization, grayscale,
                                                 defaults=info.preprocessing if info else None)}
    settings["padding"] = padding if padding is not None else (info.padding if info else "symmetric")
    if info is not None and info.round_nearest != 8:
        settings.setdefault("round_nearest", info.round_nearest)
    return settings


def describe_checkpoint(checkpoint: dict[str, Any], source: str | Path) -> WeightsInfo:
    """The record of one of this project's Lightning checkpoints (already loaded with ``weights_only=True``).

    The model configuration of checkpoints written before the models owned their normalisation lacks
    ``mean`` / ``std`` / ``normalization`` / ``grayscale``: they are taken from the data module's saved
    hyperparameters, which normalised the images then.
    """
    meta = checkpoint[CHECKPOINT_KEY]
    config = dict(meta.get("model_config") or {})
    if "mean" not in config:
        data = checkpoint.get("datamodule_hyper_parameters") or {}
        for key in _PREPROCESSING_KEYS:
            config[key] = data.get(key, _IMAGENET[key])
        config["mean"], config["std"] = list(config["mean"]), list(config["std"])
    preprocessing = {key: config[key] for key in _PREPROCESSING_KEYS}
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    size = data.get("image_size", data.get("crop_size"))
    return WeightsInfo(
        str(source), "checkpoint", preprocessing, padding=config.get("padding", "symmetric"),
        round_nearest=int(config.get("round_nearest", 8)), input_size=int(size) if size else None,
        class_names=list(meta["class_names"]) if meta.get("class_names") else None,
        model_class=meta.get("model_class"), model_config=config, task=meta.get("task"),
    )


def _describe_tflite(path: Path) -> WeightsInfo:
    from backbones.tflite import read_tflite

    _, info = read_tflite(path)
    preprocessing = {"mean": list(TF_MEAN), "std": list(TF_STD), "normalization": "standard", "grayscale": False}
    config = {**info["model_kwargs"], **preprocessing}
    if info["kind"] == "classifier":
        model_class, task = "MobileNetV2Classifier", "classification"
        names = _imagenet_names_if(info["num_classes"])
    elif info["kind"] == "ssdlite":
        # a TF Object Detection API export: class names and the category id of each output from its label map,
        # the evaluation's post-processing from its pipeline config (both beside the file when present; see
        # vision_tasks.models.tf_od_api), and anchors checked against the file's own
        from .tf_od_api import check_anchors, ssdlite_record_settings

        model_class, task = "SSDLiteMobileNetV2", "detection"
        names, category_ids, post_processing = ssdlite_record_settings(path, info)
        config.update(post_processing, category_ids=category_ids)
        check_anchors(info, config, path)
    else:
        from ..data.classes import VOC_SEG_CLASSES

        model_class, task = "DeepLabV3MobileNetV2", "segmentation"
        names = list(VOC_SEG_CLASSES) if info["num_classes"] == len(VOC_SEG_CLASSES) else None
    return WeightsInfo(
        str(path), "tflite", preprocessing, padding=info["padding"], round_nearest=info["round_nearest"],
        input_size=int(info["input_size"][0]), class_names=names, model_class=model_class, model_config=config,
        task=task, metrics=dict(_TFLITE_METRICS.get(path.name, {})),
    )


# Published figures of the releases (PAPER.md sections 4 and 10: the float checkpoints' own numbers).
_TFLITE_METRICS = {
    "deeplabv3_mnv2_pascal_quant.tflite": {"voc2012_val_miou_float_checkpoint": 75.32},
    # shared/weights/README.md: the release's own eval log (float checkpoint, COCO val2017) and the int8
    # interpreter on coco128 val (plain bilinear resize to 200x200, pycocotools); mAP as fractions, as torchmetrics
    "ssdlite_mobilenet_v2_coco_0.5_200x200.tflite": {
        "coco2017_val_map_float_checkpoint": 0.133, "coco2017_val_map_50_float_checkpoint": 0.245,
        "coco128_val_map_interpreter": 0.175, "coco128_val_map_50_interpreter": 0.302,
        "coco128_val_map_75_interpreter": 0.168,
    },
}


def _read_checkpoint(path: Path) -> dict[str, Any] | None:
    """This project's Lightning checkpoint as a dict, or None for any other file (read_state_dict then
    gives the precise error for an unreadable one)."""
    if path.suffix == ".safetensors":
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  # any failure: not a checkpoint; read_state_dict names the file and reason
        return None
    return checkpoint if isinstance(checkpoint, dict) and CHECKPOINT_KEY in checkpoint else None


def _classifier_size(state: dict[str, torch.Tensor]) -> int | None:
    for key, value in state.items():
        if key.endswith(("classifier.1.weight", "classifier.weight", "head.fc.weight")) and value.ndim == 2:
            return int(value.shape[0])
    return None


def _imagenet_names_if(num_classes: int | None) -> list[str] | None:
    return imagenet_categories() if num_classes == 1000 else None


def _torchvision_metrics(path: Path) -> dict[str, float]:
    """ImageNet accuracy of a torchvision release recognised by its file name (``mobilenet_v2-b0353104.pth``)."""
    from torchvision.models import MobileNet_V2_Weights

    for weights in MobileNet_V2_Weights:
        if weights.url.rsplit("/", 1)[-1] == path.name:
            found = weights.meta.get("_metrics", {}).get("ImageNet-1K", {})
            return {"imagenet_acc1": float(found["acc@1"]), "imagenet_acc5": float(found["acc@5"])} if found else {}
    return {}
