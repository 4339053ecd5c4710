"""Pretrained weights by name, through the libraries' own caches: ``imagenet``, ``torchvision:IMAGENET1K_V1``,
``timm:mobilenetv2_100.ra_in1k`` ...

Every place that takes a weight file (``weights=``, ``model.backbone_weights=``, the model builders,
``tools/test.py``, ``tools/predict.py``, ``tools/convert_weights.py``) also takes one of these names.
A name resolves to a file in the cache its library keeps, and is fetched there the first time
through that library's own loader:

- ``imagenet`` (= ``torchvision:IMAGENET1K_V2``, torchvision's default), ``torchvision:IMAGENET1K_V1``,
  ``torchvision:IMAGENET1K_V2``: torchvision's ``MobileNet_V2_Weights`` (width 1.0), downloaded by
  ``torch.hub.load_state_dict_from_url`` into ``$TORCH_HOME/hub/checkpoints`` (default
  ``~/.cache/torch/hub/checkpoints``) under the release's own file name;
- ``timm:mobilenetv2_050.lamb_in1k``, ``timm:mobilenetv2_100.ra_in1k``, ``timm:mobilenetv2_140.ra_in1k``
  (widths 0.5, 1.0, 1.4; ``timm:mobilenetv2_100`` names the default tag): timm's releases on the
  Hugging Face Hub, through ``huggingface_hub``'s cache (``$HF_HOME/hub``, default
  ``~/.cache/huggingface/hub``). timm's ``mobilenetv2_110d`` / ``_120d`` have more blocks per stage
  than Table 2 and are refused by name.
- the TensorFlow releases are files (``weights=/path/mobilenet_v2_1.0_224_quant.tflite``).

Nothing here needs the network once a file is in its cache; without the file and without network, the
error says which file to put where. Each name brings its record (:func:`vision_tasks.models.describe_weights`):
the normalisation, the input size, the class names and the published accuracy.

Example::

    path = resolve_weights("imagenet")     # ~/.cache/torch/hub/checkpoints/mobilenet_v2-7ebf99e0.pth
    model = mobilenet_v2_classifier(weights="timm:mobilenetv2_140.ra_in1k", width_mult=1.4)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import backbones

__all__ = ["WEIGHT_NAMES", "NamedWeights", "is_weight_name", "list_weights", "resolve_weights"]


@dataclasses.dataclass(frozen=True)
class NamedWeights:
    """A published release: where its library keeps it and what is known of it."""

    name: str
    library: str                # "torchvision" | "timm"
    width_mult: float
    source: str                 # torchvision: the download URL; timm: the Hugging Face Hub repository
    file_name: str              # the file in the cache
    metrics: tuple[tuple[str, float], ...] = ()


_TORCHVISION_URL = "https://download.pytorch.org/models/"
WEIGHT_NAMES: dict[str, NamedWeights] = {
    weights.name: weights
    for weights in (
        NamedWeights("torchvision:IMAGENET1K_V1", "torchvision", 1.0, _TORCHVISION_URL + "mobilenet_v2-b0353104.pth",
                     "mobilenet_v2-b0353104.pth", (("imagenet_acc1", 71.878), ("imagenet_acc5", 90.286))),
        NamedWeights("torchvision:IMAGENET1K_V2", "torchvision", 1.0, _TORCHVISION_URL + "mobilenet_v2-7ebf99e0.pth",
                     "mobilenet_v2-7ebf99e0.pth", (("imagenet_acc1", 72.154), ("imagenet_acc5", 90.822))),
        NamedWeights("timm:mobilenetv2_050.lamb_in1k", "timm", 0.5, "timm/mobilenetv2_050.lamb_in1k", "model.safetensors"),
        NamedWeights("timm:mobilenetv2_100.ra_in1k", "timm", 1.0, "timm/mobilenetv2_100.ra_in1k", "model.safetensors"),
        NamedWeights("timm:mobilenetv2_140.ra_in1k", "timm", 1.4, "timm/mobilenetv2_140.ra_in1k", "model.safetensors"),
    )
}
_ALIASES = {
    "imagenet": "torchvision:IMAGENET1K_V2",  # torchvision's DEFAULT
    "torchvision:DEFAULT": "torchvision:IMAGENET1K_V2",
    "timm:mobilenetv2_050": "timm:mobilenetv2_050.lamb_in1k",
    "timm:mobilenetv2_100": "timm:mobilenetv2_100.ra_in1k",
    "timm:mobilenetv2_140": "timm:mobilenetv2_140.ra_in1k",
}
# timm releases of MobileNetV2 variants that are not Table 2 (more blocks per stage): refused by name.
_REFUSED = {"timm:mobilenetv2_110d": "mobilenetv2_110d", "timm:mobilenetv2_120d": "mobilenetv2_120d"}
# Table 2 widths that timm registers without weights (its "untrained" tags).
_UNTRAINED = ("timm:mobilenetv2_035", "timm:mobilenetv2_075")


def list_weights() -> list[str]:
    """The weight names :func:`resolve_weights` takes (aliases included)."""
    return sorted({*WEIGHT_NAMES, *_ALIASES})


def is_weight_name(value: str | os.PathLike[str]) -> bool:
    """Whether ``value`` reads as a weight name (``imagenet``, ``<library>:<tag>``) rather than a path."""
    text = str(value)
    return text in _ALIASES or text in WEIGHT_NAMES or (text.split(":", 1)[0] in ("torchvision", "timm") and ":" in text)


def named(value: str | os.PathLike[str]) -> NamedWeights | None:
    """The release a name denotes (``None`` for a path); an unknown name raises, listing the names."""
    text = str(value)
    if not is_weight_name(text):
        return None
    base = text.split(".")[0] if text.startswith("timm:") else text
    if base in _REFUSED:
        raise backbones.WeightsError(
            f"weights={text}: timm's {_REFUSED[base]} has more blocks per stage than Table 2, so it does not fit this "
            f"MobileNetV2; the timm names that do: {', '.join(n for n in list_weights() if n.startswith('timm:'))}")
    if base in _UNTRAINED:
        raise backbones.WeightsError(
            f"weights={text}: timm publishes no pretrained weights for {base.split(':')[1]} (its tag is 'untrained'); "
            f"the timm names with weights: {', '.join(n for n in list_weights() if n.startswith('timm:'))}")
    text = _ALIASES.get(text, text)
    if text not in WEIGHT_NAMES:
        raise backbones.WeightsError(f"unknown weight name {value!r}; known names: {', '.join(list_weights())} "
                                     "(or give a file path)")
    return WEIGHT_NAMES[text]


def resolve_weights(value: str | os.PathLike[str]) -> Path:
    """The file behind ``value``: a path as it is, a name through its library's cache (fetched there if missing).

    Raises:
        backbones.WeightsError: an unknown name (the names are listed), or a release that is not in the
            cache and cannot be fetched (no network): the message says which file to place where.
    """
    release = named(value)
    if release is None:
        return Path(value).expanduser()
    if release.library == "torchvision":
        return _torchvision_file(release)
    return _timm_file(release)


def _torchvision_file(release: NamedWeights) -> Path:
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / release.file_name
    if cached.is_file():
        return cached
    from torchvision.models import MobileNet_V2_Weights

    tag = release.name.split(":", 1)[1]
    try:  # torchvision's own loader: downloads into the hub cache, checking the hash in the file name
        MobileNet_V2_Weights[tag].get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # noqa: BLE001 (URLError, HTTPError, socket errors: all "could not fetch")
        raise backbones.WeightsError(
            f"weights={release.name}: not in the torch hub cache and could not be downloaded ({type(err).__name__}: "
            f"{err}). Put the file {release.source} at {cached} (or pass the file itself: weights=/path/{release.file_name})"
        ) from err
    return cached


def _timm_file(release: NamedWeights) -> Path:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as err:  # pragma: no cover (a dependency of this package)
        raise backbones.WeightsError(f"weights={release.name} needs huggingface_hub: pip install huggingface_hub") from err
    try:
        return Path(hf_hub_download(release.source, release.file_name, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    try:
        return Path(hf_hub_download(release.source, release.file_name))
    except Exception as err:  # noqa: BLE001 (no network, hub errors: all "could not fetch")
        from huggingface_hub.constants import HF_HUB_CACHE

        folder = Path(HF_HUB_CACHE) / f"models--{release.source.replace('/', '--')}"
        raise backbones.WeightsError(
            f"weights={release.name}: not in the Hugging Face cache and could not be downloaded ({type(err).__name__}). "
            f"On a machine with network run `huggingface-cli download {release.source} {release.file_name}` and copy "
            f"{folder} here (snapshots/<revision>/{release.file_name} with refs/main naming the revision), or pass the "
            f"file itself: weights=/path/{release.file_name}"
        ) from err
