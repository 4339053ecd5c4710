"""Converting weight files into this project's format: a safetensors file plus a JSON of how to use it.

Any source :func:`backbones.load_weights` reads (torchvision ``mobilenet_v2`` and timm
``mobilenetv2_*`` state dicts, the paper authors' TFLite releases, this project's checkpoints and
state dicts) becomes ``DST.safetensors`` and ``DST.json``. The JSON ("sidecar") names the model
class and configuration to rebuild, the class names and the preprocessing the weights were trained
with (``mean``/``std`` in 0..1 units, ``normalization``, ``input_size``, ``padding``), so that
``tools/test.py weights=DST.safetensors`` and ``tools/predict.py`` rebuild that model and normalise
images the way it expects (see :func:`apply_sidecar`).

Example::

    python tools/convert_weights.py ../shared/weights/mobilenet_v2_1.0_224_quant.tflite mnv2_tf.safetensors \\
        --labels ../shared/weights/imagenet_labels.txt
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict
from safetensors.torch import save_file
from torch import nn

import backbones

from .models import MODELS, build_model

__all__ = ["SIDECAR_VERSION", "apply_sidecar", "convert", "describe_source", "model_from_sidecar", "read_sidecar",
           "sidecar_path", "weights_description"]

SIDECAR_VERSION = 1
IMAGENET_PREPROCESSING = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "normalization": "standard",
                          "input_size": 224, "padding": "symmetric"}
# Width multipliers tried, in this order, on a plain state dict that does not say its own.
_WIDTHS = (1.0, 0.5, 0.75, 0.35, 1.4, 1.3)


def sidecar_path(weights: str | Path) -> Path:
    """``model.safetensors`` -> ``model.json``: where the description of a converted file lives."""
    return Path(weights).with_suffix(".json")


def weights_description(weights: str | Path) -> dict[str, Any] | None:
    """How to use ``weights``: its sidecar JSON (a converted file), what a TFLite release says of itself,
    or ``None`` for files that do not say (plain state dicts: the configured model is used)."""
    if Path(weights).suffix == ".tflite":
        return describe_source(weights)
    return read_sidecar(weights)


def read_sidecar(weights: str | Path) -> dict[str, Any] | None:
    """The sidecar JSON of ``weights`` if there is one (``None`` otherwise); refuses one it cannot use."""
    path = sidecar_path(weights)
    if not path.is_file() or path == Path(weights):
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise backbones.WeightsError(f"{path}: the description of {weights} is not readable JSON ({err})") from err
    missing = [k for k in ("model_class", "model_config", "preprocessing") if k not in meta]
    if missing or meta.get("model_class") not in MODELS:
        raise backbones.WeightsError(
            f"{path}: not a vision_tasks weight description (missing {missing}, model_class "
            f"{meta.get('model_class')!r}; known {sorted(MODELS)})"
        )
    return meta


def describe_source(src: str | Path, class_names: list[str] | None = None) -> dict[str, Any]:
    """What ``src`` holds: ``model_class``, ``model_config``, ``class_names`` and ``preprocessing``."""
    src = Path(src)
    if src.suffix == ".tflite":
        from backbones.tflite import read_tflite

        _, info = read_tflite(src)
        model_class = "MobileNetV2Classifier" if info["kind"] == "classifier" else "DeepLabV3MobileNetV2"
        config = dict(build_model(model_class, info["model_kwargs"]).config)  # every argument, as checkpoints keep
        preprocessing = {"mean": list(info["mean"]), "std": list(info["std"]), "normalization": "standard",
                         "input_size": int(info["input_size"][0]), "padding": info["padding"]}
        if class_names is None and info["kind"] == "deeplab" and info["num_classes"] == 21:
            from .data.segmentation import VOC_SEG_CLASSES

            class_names = list(VOC_SEG_CLASSES)
        return _described(model_class, config, class_names, preprocessing)

    checkpoint = _load_checkpoint(src)
    if checkpoint is not None:  # this project's Lightning checkpoint: everything is in it
        meta = checkpoint["vision_tasks"]
        data = checkpoint.get("datamodule_hyper_parameters") or {}
        preprocessing = {
            "mean": list(data.get("mean", IMAGENET_PREPROCESSING["mean"])),
            "std": list(data.get("std", IMAGENET_PREPROCESSING["std"])),
            "normalization": data.get("normalization", "standard"),
            "input_size": int(data.get("image_size", data.get("crop_size", 224))),
            "padding": meta["model_config"].get("padding", "symmetric"),
        }
        if data.get("grayscale"):
            preprocessing["grayscale"] = True
        return _described(meta["model_class"], dict(meta["model_config"]), class_names or meta.get("class_names"),
                          preprocessing)

    # A plain state dict (torchvision, timm, ours): the classifier of the first width that takes it whole.
    state = backbones.read_state_dict(src)
    for width in _WIDTHS:
        for num_classes in _classifier_sizes(state):
            model = build_model("MobileNetV2Classifier", {"num_classes": num_classes, "width_mult": width})
            try:
                backbones.load_weights(model, state)
            except backbones.WeightsError:
                continue
            return _described("MobileNetV2Classifier", dict(model.config), class_names, dict(IMAGENET_PREPROCESSING))
    raise backbones.WeightsError(
        f"{src}: not a MobileNetV2 classifier of any width in {_WIDTHS} (nor a TFLite release or a vision_tasks "
        "checkpoint); to convert a backbone or another model, load it with backbones.load_weights and save its state_dict"
    )


def convert(src: str | Path, dst: str | Path, *, class_names: list[str] | None = None) -> tuple[Path, Path]:
    """Write ``src`` as ``dst`` (safetensors) and its sidecar JSON; returns both paths. Nothing is overwritten."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"the destination must be a .safetensors file, got {dst}")
    for path in (dst, sidecar_path(dst)):
        if path.exists():
            raise FileExistsError(f"{path} exists; choose another destination (nothing is overwritten)")
    description = describe_source(src, class_names)
    model = build_model(description["model_class"], description["model_config"])
    backbones.load_weights(model, src)  # the whole model, checked: a file that does not fit is refused here
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dst), metadata={"format": "pt", "source": src.name})
    sidecar = {"version": SIDECAR_VERSION, "source": str(src), **description}
    sidecar_path(dst).write_text(json.dumps(sidecar, indent=2) + "\n")
    return dst, sidecar_path(dst)


def apply_sidecar(cfg: DictConfig, meta: dict[str, Any]) -> None:
    """Make ``cfg`` evaluate converted weights the way they were trained: the model class and
    configuration of the sidecar (``cfg.model``), its ``mean`` / ``std`` / ``normalization`` in
    ``cfg.data`` (where the data module has those keys)."""
    with open_dict(cfg):
        for key in ("mean", "std", "normalization", "grayscale"):
            if key in meta["preprocessing"] and key in cfg.data:
                cfg.data[key] = meta["preprocessing"][key]


def model_from_sidecar(weights: str | Path, meta: dict[str, Any]) -> nn.Module:
    """The model a sidecar describes, with ``weights`` loaded."""
    model = build_model(meta["model_class"], meta["model_config"])
    backbones.load_weights(model, weights)
    return model


def _described(model_class: str, config: dict[str, Any], class_names, preprocessing: dict[str, Any]) -> dict[str, Any]:
    return {"model_class": model_class, "model_config": config,
            "class_names": list(class_names) if class_names else None, "preprocessing": preprocessing}


def _load_checkpoint(src: Path) -> dict[str, Any] | None:
    if src.suffix == ".safetensors":
        return None
    try:
        checkpoint = torch.load(src, map_location="cpu", weights_only=True)
    except Exception:  # read_state_dict gives the precise error for unreadable files
        return None
    return checkpoint if isinstance(checkpoint, dict) and "vision_tasks" in checkpoint else None


def _classifier_sizes(state: dict[str, torch.Tensor]) -> list[int]:
    sizes = [v.shape[0] for k, v in state.items() if k.endswith(("classifier.1.weight", "classifier.weight", "head.fc.weight"))
             and v.ndim == 2]
    return sizes or [1000]
