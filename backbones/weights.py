"""Loading weight files into MobileNetV2 backbones and the models built on them, without unpickling.

Accepted files: the paper authors' TFLite releases (``.tflite``, see :mod:`backbones.tflite`; BN folded,
dequantized), torchvision ``mobilenet_v2`` state dicts (``features.*``, ``classifier.1.*``), timm
``mobilenetv2_*`` state dicts (``conv_stem``, ``bn1``, ``blocks.<stage>.<block>.*``, ``conv_head``,
``bn2``, ``classifier``, e.g. timm's ``pytorch_model.bin`` / ``model.safetensors``), this project's
Lightning checkpoints (``state_dict`` with a ``model.`` prefix) and plain state dicts of its models,
optionally wrapped by DDP (``module.``), as ``torch.save`` files (read with ``weights_only=True``) or
safetensors files.

Keys are compared in torchvision's naming: a backbone owns ``features.*``, a classifier's head
``head.fc`` is torchvision's ``classifier.1``; a timm file is recognised by its keys and renamed to
torchvision's names first (:func:`timm_to_torchvision_keys`). A file is checked completely before
anything is copied, so a refused file leaves the model unchanged.

timm variants (checked parameter by parameter against ``timm.create_model(name)``, timm 1.0):
``mobilenetv2_035``, ``_050``, ``_075``, ``_100`` and ``_140`` are Table 2 at width 0.35 / 0.5 / 0.75 /
1.0 / 1.4 and have exactly this package's shapes at that ``width_mult`` (same ``make_divisible``
rounding of every width, stem included; the last conv keeps 1280 channels below width 1 and is
1792 at 1.4; 314 tensors each), so they load and give the same logits. ``mobilenetv2_110d`` and
``mobilenetv2_120d`` have more blocks per stage (depth multiplier 1.2 / 1.4) and are refused by name;
they are told apart by the number of ``blocks.<stage>.<block>`` per stage, as a state dict carries no
model name. Any other timm layout is refused with the names and shapes that do not fit.
"""

from __future__ import annotations

import pickle
import warnings
import re
from pathlib import Path
from typing import Mapping, NamedTuple

import torch
from torch import nn

from .mobilenet_v2 import TABLE2

__all__ = ["LoadReport", "WeightsError", "canonical_key", "load_weights", "read_state_dict", "timm_to_torchvision_keys"]

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
# BN counters a file may lack (old torchvision files predate them) and a model may lack (torchvision's
# FrozenBatchNorm2d, for freeze_bn=True, keeps none): optional both ways
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


class WeightsError(ValueError):
    """A weight file that cannot be read or does not fit the model."""


class LoadReport(NamedTuple):
    loaded: list[str]
    missing: list[str]  # model keys the file does not have
    unexpected: list[str]  # file keys the model does not have
    mismatched: list[str]  # "key: file shape vs model shape"
    ignored: list[str]  # file keys for layers the model does not build (truncated backbone, no classifier)
    source_info: dict | None = None  # what a TFLite file says of itself (backbones.tflite.read_tflite's info)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors``, ``torch.save`` or ``.tflite`` file, never unpickling code.

    Unwraps Lightning / training-script checkpoints (``state_dict``, ``model``) and strips the
    ``module.`` (DDP), ``model.`` (LightningModule attribute) and ``_orig_mod.`` (torch.compile) prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    if path.suffix == ".tflite":  # the paper authors' releases: dequantized, BN folded (backbones.tflite)
        from .tflite import read_tflite

        return read_tflite(path)[0]
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
        except Exception as err:  # noqa: BLE001  # torch.load on arbitrary bytes raises almost anything
            # (IndexError, UnicodeDecodeError, ValueError ... from its unpickler): every failure is the file's fault
            raise WeightsError(
                f"{path}: not a readable PyTorch file, truncated or of another format ({type(err).__name__}: {err}); "
                "expected a state dict saved with torch.save (.pth / .pt / .ckpt), a .safetensors or a .tflite file"
            ) from err
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


# timm (``timm.models.efficientnet``) names, and torchvision's for the same tensors.
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.([^.]+)\.(.+)$")
_TIMM_INVERTED = {  # "ir" block: 1x1 expansion, 3x3 depthwise, linear 1x1 projection
    "conv_pw": "conv.0.0", "bn1": "conv.0.1", "conv_dw": "conv.1.0", "bn2": "conv.1.1", "conv_pwl": "conv.2", "bn3": "conv.3",
}
_TIMM_SEPARABLE = {"conv_dw": "conv.0.0", "bn1": "conv.0.1", "conv_pw": "conv.1", "bn2": "conv.2"}  # "ds" block (t = 1)
_TABLE2_BLOCKS = tuple(n for _, _, n, _ in TABLE2)
# timm variants that are Table 2 with a depth multiplier (fix_stem_head: first and last stage kept).
_TIMM_DEEPER = {(1, 3, 4, 5, 4, 4, 1): "mobilenetv2_110d", (1, 3, 5, 6, 5, 5, 1): "mobilenetv2_120d"}


def _is_timm_layout(keys) -> bool:
    """Whether state dict ``keys`` are timm's EfficientNet-family names (``conv_stem.*``, ``blocks.<s>.<b>.*``)."""
    return any(k.startswith("conv_stem.") or _TIMM_BLOCK.match(k) for k in keys)


def _timm_blocks_per_stage(keys) -> tuple[int, ...]:
    """Number of blocks in each stage of a timm state dict, from its ``blocks.<stage>.<block>.*`` keys."""
    last: dict[int, int] = {}
    for key in keys:
        if match := _TIMM_BLOCK.match(key):
            stage, block = int(match[1]), int(match[2])
            last[stage] = max(last.get(stage, 0), block + 1)
    return tuple(last.get(stage, 0) for stage in range(max(last) + 1)) if last else ()


def timm_to_torchvision_keys(keys) -> dict[str, str]:
    """Map the keys of a timm ``mobilenetv2_*`` state dict to torchvision ``mobilenet_v2`` names.

    ``conv_stem`` / ``bn1`` -> ``features.0.0`` / ``features.0.1``; block ``blocks.<s>.<b>`` ->
    ``features.<i>`` numbered through the stages (``i = 1 + blocks in earlier stages + b``), inside it
    an inverted residual's ``conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3`` -> ``conv.0.0, conv.0.1,
    conv.1.0, conv.1.1, conv.2, conv.3`` and a depthwise-separable block's (no ``conv_pwl`` / ``bn3``,
    the ``t = 1`` row) ``conv_dw, bn1, conv_pw, bn2`` -> ``conv.0.0, conv.0.1, conv.1, conv.2``;
    ``conv_head`` / ``bn2`` -> the last conv ``features.<blocks + 1>.0`` / ``.1``; ``classifier`` ->
    ``classifier.1``. Keys it does not know (e.g. another timm family's ``se.*``) map to themselves,
    so that they are reported as they are in the file. Pure: looks at the names only.

    Example::

        names = timm_to_torchvision_keys(timm.create_model("mobilenetv2_100").state_dict())
        names["blocks.0.0.conv_pw.weight"]    # "features.1.conv.1.weight"
        names["blocks.1.0.conv_pwl.weight"]   # "features.2.conv.2.weight"
        names["conv_head.weight"]             # "features.18.0.weight"
    """
    keys = list(keys)
    blocks = _timm_blocks_per_stage(keys)
    first = [1 + sum(blocks[:stage]) for stage in range(len(blocks))]  # features index of each stage's block 0
    last = 1 + sum(blocks)
    top = {"conv_stem": "features.0.0", "bn1": "features.0.1", "conv_head": f"features.{last}.0",
           "bn2": f"features.{last}.1", "classifier": "classifier.1"}
    inverted = {m.group(1, 2) for k in keys if (m := _TIMM_BLOCK.match(k)) and m[3] in ("conv_pwl", "bn3")}
    mapping = {}
    for key in keys:
        new = key
        if match := _TIMM_BLOCK.match(key):
            stage, block, layer, param = match.groups()
            names = _TIMM_INVERTED if (stage, block) in inverted else _TIMM_SEPARABLE
            if layer in names:
                new = f"features.{first[int(stage)] + int(block)}.{names[layer]}.{param}"
        else:
            layer, _, param = key.partition(".")
            if layer in top and param:
                new = f"{top[layer]}.{param}"
        mapping[key] = new
    return mapping


def _from_timm(name: str, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``state`` in torchvision names, and each renamed key's name in the file.

    Refuses a file whose blocks per stage are not Table 2's (timm's ``mobilenetv2_110d`` /
    ``_120d`` by name): its blocks would be numbered differently from this network's.
    """
    blocks = _timm_blocks_per_stage(state)
    if blocks and blocks != _TABLE2_BLOCKS:
        layout = f"blocks per stage {blocks} in the file, Table 2 has {_TABLE2_BLOCKS}"
        if blocks in _TIMM_DEEPER:
            variant = _TIMM_DEEPER[blocks]
            raise WeightsError(
                f"{name}: timm's {variant} has more blocks per stage than Table 2 ({layout}; it also fixes the "
                f"stem and last conv at 32 and 1280 channels), so its layers have no counterpart in this "
                f"MobileNetV2 and nothing was loaded. timm's mobilenetv2_035/_050/_075/_100/_140 load at "
                f"width_mult 0.35/0.5/0.75/1.0/1.4."
            )
        raise WeightsError(f"{name}: a timm file whose depth does not fit MobileNetV2 ({layout}); nothing was loaded.")
    mapping = timm_to_torchvision_keys(state)
    renamed = {new: key for key, new in mapping.items() if new != key}
    if len(set(mapping.values())) != len(mapping):
        clashes = sorted(key for key, new in mapping.items() if new != key and new in state)
        raise WeightsError(f"{name}: mixes timm and torchvision names for the same tensors ({clashes[:3]}); nothing was loaded.")
    return {mapping[key]: value for key, value in state.items()}, renamed


def canonical_key(key: str) -> str:
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

    A timm ``mobilenetv2_*`` state dict is recognised by its keys and read in torchvision's names
    (:func:`timm_to_torchvision_keys`); the report's ``unexpected`` and ``ignored`` then list the
    file's timm names and ``mismatched`` adds the file key. A timm file with another number of
    blocks per stage than Table 2 (``mobilenetv2_110d``, ``mobilenetv2_120d``) is refused, with
    ``strict=False`` too: its blocks have no counterpart in this network.
    """
    name = str(source) if isinstance(source, (str, Path)) else "state dict"
    info = None
    if isinstance(source, (str, Path)) and Path(source).suffix == ".tflite":
        from .tflite import read_tflite

        state, info = read_tflite(source)
    elif isinstance(source, (str, Path)):
        state = read_state_dict(source)
    else:
        state = {_strip_prefixes(k): v for k, v in source.items()}
    file_names: dict[str, str] = {}  # torchvision name -> the file's timm name, for the messages
    if _is_timm_layout(state):
        state, file_names = _from_timm(name, state)
    target = module.state_dict()
    target_by_canon = {canonical_key(k): k for k in target}
    num_layers = _num_feature_layers(target_by_canon)
    has_classifier = any(k.startswith("classifier.") for k in target_by_canon)

    new_state: dict[str, torch.Tensor] = {}
    unexpected, mismatched, ignored = [], [], []
    for key, value in state.items():
        canon = canonical_key(key)
        if canon in target_by_canon:
            model_key = target_by_canon[canon]
            if tuple(value.shape) != tuple(target[model_key].shape):
                in_file = f" (file key {file_names[key]})" if key in file_names else ""
                mismatched.append(f"{model_key}: file {tuple(value.shape)} vs model {tuple(target[model_key].shape)}{in_file}")
            else:
                new_state[model_key] = value
        elif canon.endswith(_OPTIONAL_SUFFIXES) and f"{canon.rsplit('.', 1)[0]}.running_var" in target_by_canon:
            continue  # a counter of a BN that keeps none (FrozenBatchNorm2d)
        elif _is_outside_model(canon, num_layers, has_classifier):
            ignored.append(file_names.get(key, key))
        else:
            unexpected.append(file_names.get(key, key))
    missing = [k for k in target if k not in new_state and not k.endswith(_OPTIONAL_SUFFIXES)]
    missing = [k for k in missing if not any(m.startswith(k + ":") for m in mismatched)]
    report = LoadReport(sorted(new_state), missing, unexpected, mismatched, ignored, info)

    if not new_state:
        raise WeightsError(
            f"{name}: none of its {len(state)} tensors matches {type(module).__name__} "
            f"(file keys start {sorted(state)[:3]}, model keys {sorted(target)[:3]}): a file of another architecture?"
        )
    if strict and (missing or unexpected or mismatched):
        hint = " Most shapes differ: a file of another width or configuration?" if len(mismatched) > len(target) // 2 else ""
        if file_names:
            hint = (" timm layout, read in torchvision's names." + hint + (" timm's mobilenetv2_035/_050/_075/_100/_140 "
                    "fit width_mult 0.35/0.5/0.75/1.0/1.4." if hint else ""))
        raise WeightsError(f"{name} does not fit {type(module).__name__} (nothing was loaded).{hint}\n" + _describe(report))
    if info is not None:
        _fit_folded_batch_norms(module, new_state, name)
    module.load_state_dict(new_state, strict=False)
    return report


def _fit_folded_batch_norms(module: nn.Module, new_state: dict[str, torch.Tensor], name: str) -> None:
    """TFLite weights come with batch norm folded into the convs; their BNs are identities plus a bias,
    exact when ``running_var = 1 - eps`` with each BN's own eps. Warns when the TF "SAME" padding is off."""
    modules = dict(module.named_modules())
    for key in new_state:
        bn = modules.get(key.rsplit(".", 1)[0])
        # nn.BatchNorm2d or torchvision's FrozenBatchNorm2d (no common base class; both have running_var and eps)
        is_bn = isinstance(getattr(bn, "running_var", None), torch.Tensor) and hasattr(bn, "eps")
        if key.endswith(".running_var") and is_bn:
            new_state[key] = torch.full_like(new_state[key], 1.0 - bn.eps)
    paddings = {getattr(m, "padding", None) for m in module.modules() if type(m).__name__ == "MobileNetV2"}
    if paddings and paddings != {"tf_same"}:
        warnings.warn(f"{name}: TF weights in a backbone with padding={sorted(map(str, paddings))}; build the model "
                      "with padding='tf_same' to compute what the TF model computes", stacklevel=3)


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
