"""Loading weight files into MobileNetV2 backbones and the models built on them, without unpickling.

Accepted files: torchvision ``mobilenet_v2`` state dicts (``features.*``, ``classifier.1.*``), this
project's Lightning checkpoints (``state_dict`` with a ``model.`` prefix) and plain state dicts of
its models, optionally wrapped by DDP (``module.``), as ``torch.save`` files (read with
``weights_only=True``) or safetensors files.

Keys are compared in torchvision's naming: a backbone owns ``features.*``, a classifier's head
``head.fc`` is torchvision's ``classifier.1``. A file is checked completely before anything is
copied, so a refused file leaves the model unchanged.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Mapping, NamedTuple

import torch
from torch import nn

__all__ = ["LoadReport", "WeightsError", "load_weights", "read_state_dict"]

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)  # old torchvision files predate this buffer


class WeightsError(ValueError):
    """A weight file that cannot be read or does not fit the model."""


class LoadReport(NamedTuple):
    loaded: list[str]
    missing: list[str]  # model keys the file does not have
    unexpected: list[str]  # file keys the model does not have
    mismatched: list[str]  # "key: file shape vs model shape"
    ignored: list[str]  # file keys for layers the model does not build (truncated backbone, no classifier)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` or ``torch.save`` file, never unpickling code.

    Unwraps Lightning / training-script checkpoints (``state_dict``, ``model``) and strips the
    ``module.`` (DDP), ``model.`` (LightningModule attribute) and ``_orig_mod.`` (torch.compile) prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightsError(f"{path}: not a readable safetensors file ({err})") from err
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise WeightsError(
                f"{path}: refused, it holds Python objects other than tensors and plain containers, and "
                f"loading it would run code from the file (weights_only=True). Re-save its state_dict. Detail: {err}"
            ) from err
        except (RuntimeError, EOFError, OSError) as err:
            raise WeightsError(f"{path}: not a readable PyTorch file, truncated or of another format ({err})") from err
    for key in _WRAPPER_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a mapping of parameter names to tensors, got {type(state).__name__}")
    return {_strip_prefixes(k): v for k, v in state.items()}


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _canonical(key: str) -> str:
    """Our model keys in torchvision's naming: ``backbone.features.*`` -> ``features.*``, ``head.fc`` -> ``classifier.1``."""
    key = key.removeprefix("backbone.")
    return re.sub(r"^head\.fc\.", "classifier.1.", key)


def load_weights(
    module: nn.Module, source: str | Path | Mapping[str, torch.Tensor], *, strict: bool = True
) -> LoadReport:
    """Copy the weights of ``source`` (a file or a state dict) into ``module``.

    With ``strict=True`` (default) every parameter and buffer of the module must be in the file with
    the same shape; otherwise a :class:`WeightsError` lists the missing, unexpected and mismatching
    names and shapes, and the module is left unchanged. File keys of layers the module does not build
    (the layers past a truncated backbone's last tap, a classifier when loading a bare backbone) are
    ignored. ``strict=False`` loads whatever fits and reports the rest, e.g. to fine-tune a
    1000-class checkpoint on another number of classes.
    """
    name = str(source) if isinstance(source, (str, Path)) else "state dict"
    state = read_state_dict(source) if isinstance(source, (str, Path)) else {_strip_prefixes(k): v for k, v in source.items()}
    target = module.state_dict()
    target_by_canon = {_canonical(k): k for k in target}
    num_layers = _num_feature_layers(target_by_canon)
    has_classifier = any(k.startswith("classifier.") for k in target_by_canon)

    new_state: dict[str, torch.Tensor] = {}
    unexpected, mismatched, ignored = [], [], []
    for key, value in state.items():
        canon = _canonical(key)
        if canon in target_by_canon:
            model_key = target_by_canon[canon]
            if tuple(value.shape) != tuple(target[model_key].shape):
                mismatched.append(f"{model_key}: file {tuple(value.shape)} vs model {tuple(target[model_key].shape)}")
            else:
                new_state[model_key] = value
        elif _is_outside_model(canon, num_layers, has_classifier):
            ignored.append(key)
        else:
            unexpected.append(key)
    missing = [k for k in target if k not in new_state and not k.endswith(_OPTIONAL_SUFFIXES)]
    missing = [k for k in missing if not any(m.startswith(k + ":") for m in mismatched)]
    report = LoadReport(sorted(new_state), missing, unexpected, mismatched, ignored)

    if not new_state:
        raise WeightsError(
            f"{name}: none of its {len(state)} tensors matches {type(module).__name__} "
            f"(file keys start {sorted(state)[:3]}, model keys {sorted(target)[:3]}): a file of another architecture?"
        )
    if strict and (missing or unexpected or mismatched):
        hint = " Most shapes differ: a file of another width or configuration?" if len(mismatched) > len(target) // 2 else ""
        raise WeightsError(f"{name} does not fit {type(module).__name__} (nothing was loaded).{hint}\n" + _describe(report))
    module.load_state_dict(new_state, strict=False)
    return report


def _num_feature_layers(canonical_keys) -> int:
    indices = [int(m.group(1)) for k in canonical_keys if (m := re.match(r"features\.(\d+)\.", k))]
    return max(indices) + 1 if indices else 0


def _is_outside_model(canon: str, num_layers: int, has_classifier: bool) -> bool:
    match = re.match(r"features\.(\d+)\.", canon)
    if match and num_layers:
        return int(match.group(1)) >= num_layers
    return canon.startswith("classifier.") and not has_classifier


def _describe(report: LoadReport, limit: int = 12) -> str:
    lines = []
    for label, items in (("shape mismatch", report.mismatched), ("missing from file", report.missing),
                         ("not in model", report.unexpected)):
        if items:
            shown = "\n    ".join(items[:limit]) + (f"\n    ... and {len(items) - limit} more" if len(items) > limit else "")
            lines.append(f"  {label} ({len(items)}):\n    {shown}")
    return "\n".join(lines)
