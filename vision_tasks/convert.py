"""Converting weight files into this project's format: a safetensors file plus its record as JSON.

Any source :func:`backbones.load_weights` reads (torchvision ``mobilenet_v2`` and timm
``mobilenetv2_*`` state dicts, the paper authors' TFLite releases, this project's checkpoints and
state dicts) becomes ``DST.safetensors`` and ``DST.json``. The JSON is the weights' record
(:class:`vision_tasks.models.WeightsInfo`): the model class and configuration to rebuild (the
normalisation and padding included, since the models own them), the class names, the input size and
the known accuracy, so that ``tools/test.py weights=DST.safetensors`` and ``tools/predict.py`` rebuild
that model as it was trained (:func:`vision_tasks.models.model_from_weights`).

Example::

    python tools/convert_weights.py ../shared/weights/mobilenet_v2_1.0_224_quant.tflite mnv2_tf.safetensors \\
        --labels ../shared/weights/imagenet_labels.txt
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from safetensors.torch import save

import backbones

from .files import atomic_write, remove_stale_temporaries
from .models import WeightsInfo, build_model, describe_weights, record_path

__all__ = ["convert", "describe_source"]

# Width multipliers tried, in this order, on an ImageNet state dict that does not say its own.
_WIDTHS = (1.0, 0.5, 0.75, 0.35, 1.4, 1.3)


def describe_source(src: str | Path, class_names: list[str] | None = None) -> WeightsInfo:
    """The record of ``src`` with the whole model it holds: a torchvision or timm ImageNet file becomes the
    classifier of the first width that takes it whole; ``class_names`` replace the file's own."""
    info = describe_weights(src)
    if info.model_class is None:
        info = _as_classifier(Path(src), info)
    if class_names is not None:
        info = dataclasses.replace(info, class_names=list(class_names))
    return info


def convert(src: str | Path, dst: str | Path, *, class_names: list[str] | None = None) -> tuple[Path, Path]:
    """Write ``src`` as ``dst`` (safetensors) and its record (``dst`` with ``.json``); returns both paths.

    Nothing is overwritten, and each file appears complete or not at all
    (:func:`vision_tasks.files.atomic_write`). The record is written first and the weights last: the
    weights file, the one users pass, exists only once its record does. A record alone is what an
    interrupted conversion leaves; converting again replaces it (and the temporary files of killed runs).
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"the destination must be a .safetensors file, got {dst}")
    record_file = record_path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst} exists; choose another destination (nothing is overwritten)")
    if record_file.exists() and not _interrupted_record(record_file):
        raise FileExistsError(f"{record_file} exists; choose another destination (nothing is overwritten)")
    info = describe_source(src, class_names)
    model = build_model(info.model_class, info.model_config)
    backbones.load_weights(model, info.source)  # the whole model, checked: a file that does not fit is refused here
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    record = dataclasses.replace(info, source=str(src), kind="converted")
    for name in (dst.name, record_file.name):
        remove_stale_temporaries(dst.parent, name)
    atomic_write(record_file, json.dumps(record.to_json(), indent=2) + "\n")
    atomic_write(dst, save(state, metadata={"format": "pt", "source": src.name}))
    return dst, record_file


def _interrupted_record(path: Path) -> bool:
    """Whether ``path`` is the record of a conversion that did not write its weights (the weights are missing)."""
    try:
        return json.loads(path.read_text()).get("kind") == "converted"
    except (OSError, ValueError, AttributeError):
        return False


def _as_classifier(src: Path, info: WeightsInfo) -> WeightsInfo:
    state = backbones.read_state_dict(info.source)
    sizes = [v.shape[0] for k, v in state.items()
             if k.endswith(("classifier.1.weight", "classifier.weight", "head.fc.weight")) and v.ndim == 2] or [1000]
    settings = info.backbone_settings() if info.preprocessing else {}
    for width in _WIDTHS:
        for num_classes in sizes:
            model = build_model("MobileNetV2Classifier", {"num_classes": num_classes, "width_mult": width, **settings})
            try:
                backbones.load_weights(model, state)
            except backbones.WeightsError:
                continue
            return dataclasses.replace(info, model_class="MobileNetV2Classifier", model_config=dict(model.config),
                                       task="classification")
    raise backbones.WeightsError(
        f"{src}: not a MobileNetV2 classifier of any width in {_WIDTHS} (nor a TFLite release or a vision_tasks "
        "checkpoint); to convert a backbone or another model, load it with backbones.load_weights and save its state_dict"
    )
