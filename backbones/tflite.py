"""Reading the MobileNetV2 TFLite releases (uint8, batch norm folded) into this project's float models.

The paper authors' TF line ships quantized ``.tflite`` files (``/work/shared/weights``; PAPER.md
section 10 reads them operator by operator): the ImageNet classifier (53 convolutions: Table 2 one to
one, the last being the 1001-way logits) and DeepLabv3 + MobileNetV2 (55: the trunk up to the
320-channel ``layer18``, then ``image_pooling``, ``aspp0``, ``concat_projection`` and
``logits/semantic``). :func:`read_tflite` turns such a file into a state dict in our naming:

- trunk: torchvision's ``features.<i>...`` (what ``backbones.load_weights`` matches after stripping
  ``backbone.``); classifier: ``classifier.1.weight/bias`` with the background logit (index 0 of
  1001) dropped, so 1000 classes as torchvision; DeepLab head: ``head.image_pooling.1`` /
  ``head.aspp0.0`` / ``head.projection.0`` / ``head.classifier`` as in :mod:`heads.deeplab`;
- weights dequantized as ``(q - zero_point) * scale`` (per tensor or per output channel), TF layouts
  transposed to PyTorch's (conv OHWI -> OIHW, depthwise 1HWO -> O1HW);
- batch norm is folded into the TF convs (weight and bias). Each of our Conv -> BN pairs gets the
  folded weight in the conv and a BN that is the identity plus the folded bias: ``weight = 1``,
  ``bias = folded bias``, ``running_mean = 0``, ``running_var = 1 - eps``. In eval mode BN computes
  ``(x - mean) / sqrt(var + eps) * weight + bias`` and ``sqrt((1 - eps) + eps) = 1``, so it adds the
  bias and nothing else, and the model keeps its architecture (and stays fine-tunable).

The TF models use "SAME" padding: build the model with ``padding="tf_same"`` (the returned info says
so, with the other constructor arguments in ``info["model_kwargs"]``). Inputs: the interpreter takes
uint8 ``q`` and computes on ``(q - 128) / 128``; in float terms ``(x - 0.5) / 0.5`` for ``x`` in
[0, 1] (``info["mean"]``, ``info["std"]``).

Example::

    state, info = read_tflite("mobilenet_v2_1.0_224_quant.tflite")
    model = mobilenet_v2_classifier(**info["model_kwargs"]).eval()     # padding="tf_same", 1000 classes
    load_tflite(model, "mobilenet_v2_1.0_224_quant.tflite")            # or model.load_state_dict(...)

The interpreter (``ai-edge-litert``) is imported only when a file is read; the module itself needs
torch only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .mobilenet_v2 import MobileNetV2
from .weights import WeightsError

__all__ = ["load_tflite", "read_tflite"]

_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
_WIDTHS = (1.0, 0.5, 0.75, 0.35, 1.3, 1.4)  # the released MobileNetV2 depth multipliers
# Channel rounding: 8 (TF-Slim, torchvision); TF DeepLab builds depth multipliers != 1 with
# ``divisible_by=1`` (dm 0.5: 12 channels where Slim has 16).
_ROUNDINGS = (8, 1)
_NUM_CONVS = {"classifier": 53, "deeplab": 55}  # PAPER.md section 10: 52 trunk + logits; 51 trunk + 4 head


def read_tflite(path: str | Path, *, bn_eps: float = 1e-5) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a MobileNetV2 classifier or DeepLabv3-MobileNetV2 ``.tflite`` file as a float state dict.

    Args:
        path: the ``.tflite`` file.
        bn_eps: the eps of the BatchNorms the state dict is meant for (``running_var = 1 - eps``).

    Returns:
        ``(state, info)``: the state dict (see the module docstring for the names) and a dict with
        ``kind`` (``"classifier"`` / ``"deeplab"``), ``width_mult``, ``num_classes`` (1000 / 21),
        ``round_nearest`` (channel rounding, 1 for TF DeepLab's depth multipliers != 1),
        ``background_dropped``, ``input_size`` (H, W), ``mean`` / ``std`` (0..1 units, giving [-1, 1]),
        ``input_quantization`` (the interpreter's uint8 ``scale`` and ``zero_point``), ``padding``
        (``"tf_same"``), ``output_stride``, ``num_convs`` and ``model_kwargs`` (arguments for
        ``mobilenet_v2_classifier`` / ``deeplabv3_mobilenet_v2`` that fit the state dict).

    Raises:
        WeightsError: not a TFLite file (or truncated), or not a MobileNetV2 graph (convolution count or
            shapes differ); the message names the file and what did not match.
        ImportError: ``ai-edge-litert`` is not installed.
    """
    path = Path(path)
    interp = _open(path)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()  # noqa: SLF001 (the only API listing operators and their tensors)
    convs = [op for op in ops if op["op_name"] in _CONV_OPS]
    op_names = {op["op_name"] for op in ops}
    kind = next((k for k, n in _NUM_CONVS.items() if len(convs) == n), None)
    if kind == "deeplab" and "CONCATENATION" not in op_names:
        kind = None
    if kind is None:
        raise WeightsError(
            f"{path}: not a MobileNetV2 TFLite release: {len(convs)} convolutions (CONV_2D + DEPTHWISE_CONV_2D) "
            f"and operators {sorted(op_names)}; a MobileNetV2 classifier has 53, DeepLabv3-MobileNetV2 has 55 "
            f"with a CONCATENATION"
        )

    def weight(op: dict) -> torch.Tensor:  # TF layout -> PyTorch's
        w = _dequantize(interp, tensors[op["inputs"][1]], path)
        if w.ndim != 4:
            raise WeightsError(f"{path}: {op['op_name']} #{op['index']} has a {w.ndim}-d weight, expected 4-d")
        w = w.permute(3, 0, 1, 2) if op["op_name"] == "DEPTHWISE_CONV_2D" else w.permute(0, 3, 1, 2)
        return w.contiguous()

    def bias(op: dict) -> torch.Tensor:
        if len(op["inputs"]) < 3 or op["inputs"][2] < 0:
            raise WeightsError(f"{path}: {op['op_name']} #{op['index']} has no bias (the folded batch norm)")
        return _dequantize(interp, tensors[op["inputs"][2]], path)

    # Trunk: the convs in graph order are Table 2's, one to one (stem, then per block expand / depthwise /
    # project; the 1280-channel conv for the classifier). Match them to a MobileNetV2 of the right width.
    num_trunk = 52 if kind == "classifier" else 51
    trunk_ops = convs[:num_trunk]
    found = [tuple(weight(op).shape) for op in trunk_ops]
    tap = "layer19" if kind == "classifier" else "layer18"
    width, round_nearest, conv_names, why = _match_width(found, tap)
    if width is None:
        raise WeightsError(f"{path}: the convolutions do not fit a MobileNetV2 trunk ({kind} graph): {why}")

    state: dict[str, torch.Tensor] = {}
    for name, op in zip(conv_names, trunk_ops):
        state[f"{name}.weight"] = weight(op)
        _put_bn(state, _bn_name(name), bias(op), bn_eps)

    if kind == "classifier":
        fc = convs[52]
        w, b = weight(fc).flatten(1), bias(fc)  # (1001, 1280, 1, 1) 1x1 conv -> linear
        if w.shape[1] != found[-1][0]:
            raise WeightsError(f"{path}: logits conv reads {w.shape[1]} channels, the trunk gives {found[-1][0]}")
        background = w.shape[0] == 1001
        if background:  # TF-Slim's class 0 is "background"; torchvision's 1000 classes start at 1
            w, b = w[1:], b[1:]
        state["classifier.1.weight"], state["classifier.1.bias"] = w.contiguous(), b.contiguous()
        num_classes = int(w.shape[0])
    else:
        background = False
        num_classes = _read_deeplab_head(state, convs[51:], trunk_ops[-1], ops, tensors, weight, bias, bn_eps, path)

    detail = interp.get_input_details()[0]
    height, width_px = (int(s) for s in detail["shape"][1:3])
    scale, zero_point = detail["quantization"]
    out_h = int(tensors[trunk_ops[-1]["outputs"][0]]["shape"][1])
    output_stride = next((s for s in (8, 16, 32) if math.ceil(height / s) == out_h), None)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "width_mult": width, "padding": "tf_same"}
    if round_nearest != 8:
        kwargs["round_nearest"] = round_nearest
    if kind == "deeplab":
        kwargs.update(output_stride=output_stride, aspp=False, feature="layer18")
    info = {
        "kind": kind,
        "file": str(path),
        "width_mult": width,
        "round_nearest": round_nearest,
        "num_classes": num_classes,
        "background_dropped": background,
        "input_size": (height, width_px),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "input_quantization": {"scale": float(scale), "zero_point": int(zero_point)},
        "padding": "tf_same",
        "output_stride": output_stride,
        "num_convs": len(convs),
        "model_kwargs": kwargs,
    }
    return state, info


def load_tflite(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a TFLite release into ``model`` (a classifier, a DeepLab model or a bare backbone); return its info.

    The same as ``backbones.load_weights(model, path)`` (every key and shape checked before anything
    is copied, BN variances fitted to each BN's eps, a warning when the padding is not ``"tf_same"``),
    returning :func:`read_tflite`'s info.
    """
    from .weights import load_weights

    return load_weights(model, path).source_info



# ---------------------------------------------------------------------------------------------


def _open(path: Path):
    """An interpreter for ``path`` without delegates (so the operator list is the file's own)."""
    if not path.is_file():
        raise FileNotFoundError(f"TFLite file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise WeightsError(f"{path}: not a TFLite file (no 'TFL3' flatbuffer identifier at byte 4)")
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as err:
        raise ImportError(
            'reading .tflite files needs the LiteRT interpreter: pip install "vision-tasks[tflite]" '
            "(the ai-edge-litert package)"
        ) from err
    try:
        return Interpreter(
            model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    except (ValueError, RuntimeError) as err:
        raise WeightsError(f"{path}: not a readable TFLite file, truncated or corrupt ({err})") from err


def _dequantize(interp, detail: dict, path: Path) -> torch.Tensor:
    """``(q - zero_point) * scale``, per tensor or along ``quantized_dimension`` (per channel); floats as they are."""
    try:
        q = interp.get_tensor(detail["index"])
    except ValueError as err:
        raise WeightsError(f"{path}: tensor {detail['name']!r} cannot be read ({err})") from err
    if np.issubdtype(q.dtype, np.floating):
        return torch.from_numpy(q.astype(np.float32))
    params = detail["quantization_parameters"]
    scales, zero_points = params["scales"].astype(np.float64), params["zero_points"].astype(np.float64)
    if scales.size == 0:
        raise WeightsError(f"{path}: tensor {detail['name']!r} is {q.dtype} without quantization parameters")
    shape = [1] * q.ndim
    if scales.size > 1:
        shape[params["quantized_dimension"]] = -1
    value = (q.astype(np.float64) - zero_points.reshape(shape)) * scales.reshape(shape)
    return torch.from_numpy(value.astype(np.float32))


def _match_width(found: list[tuple[int, ...]], tap: str) -> tuple[float | None, int, list[str], str]:
    """``(width_mult, round_nearest, conv names, "")`` of the MobileNetV2 (up to ``tap``) whose convs have
    exactly the shapes ``found``, in order; ``(None, 0, [], why)`` when none has."""
    why = ""
    for width in _WIDTHS:
        for round_nearest in _ROUNDINGS:
            net = MobileNetV2(width_mult=width, out_features=(tap,), round_nearest=round_nearest)
            expected = [(name, tuple(m.weight.shape)) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
            if len(expected) != len(found):
                why = f"{len(found)} trunk convolutions, MobileNetV2 up to {tap} has {len(expected)}"
                continue
            bad = [(i, name, got, want) for i, ((name, want), got) in enumerate(zip(expected, found)) if got != want]
            if not bad:
                return width, round_nearest, [name for name, _ in expected], ""
            if found[0] == expected[0][1] and not why.startswith("conv"):  # report the closest candidate
                i, name, got, want = bad[0]
                why = (f"conv {i} ({name}) is {got}, width {width} expects {want} "
                       f"({len(bad)} of {len(found)} convolutions differ)")
    return None, 0, [], why or f"the stem conv {found[0]} fits no width multiplier in {_WIDTHS}"


def _bn_name(conv_name: str) -> str:
    """The BN after a conv: same parent, next index (``features.0.0`` -> ``features.0.1``, ``conv.1`` -> ``conv.2``)."""
    parent, index = conv_name.rsplit(".", 1)
    return f"{parent}.{int(index) + 1}"


def _put_bn(state: dict[str, torch.Tensor], name: str, folded_bias: torch.Tensor, eps: float) -> None:
    """An identity BatchNorm plus ``folded_bias`` (see the module docstring)."""
    n = folded_bias.numel()
    state[f"{name}.weight"] = torch.ones(n)
    state[f"{name}.bias"] = folded_bias.clone()
    state[f"{name}.running_mean"] = torch.zeros(n)
    state[f"{name}.running_var"] = torch.full((n,), 1.0 - eps)
    state[f"{name}.num_batches_tracked"] = torch.tensor(0)


def _read_deeplab_head(state, head_ops, trunk_last, ops, tensors, weight, bias, bn_eps, path) -> int:
    """The four head convs, told apart by what they read (PAPER.md section 10); returns the class count."""
    producer = {out: op for op in ops for out in op["outputs"]}

    def source(tensor: int) -> dict | None:
        """The conv / pool / concat that produced ``tensor``, through resizes and (re)quantizations."""
        op = producer.get(tensor)
        while op is not None and op["op_name"] in ("RESIZE_BILINEAR", "QUANTIZE", "DEQUANTIZE", "RESHAPE"):
            op = producer.get(op["inputs"][0])
        return op

    trunk_out = trunk_last["outputs"][0]
    roles: dict[str, dict] = {}
    for op in head_ops:
        src = source(op["inputs"][0])
        if src is not None and src["op_name"] == "AVERAGE_POOL_2D":
            roles["image_pooling"] = op
        elif src is not None and src["op_name"] == "CONCATENATION":
            roles["projection"] = op
        elif op["inputs"][0] == trunk_out:
            roles["aspp0"] = op
    if "projection" in roles:
        for op in head_ops:
            if source(op["inputs"][0]) is roles["projection"]:
                roles["classifier"] = op
    if len(roles) != 4 or len({id(op) for op in roles.values()}) != 4:
        raise WeightsError(f"{path}: DeepLab head not recognised: found {sorted(roles)}, expected "
                           "image_pooling, aspp0, projection (on a CONCATENATION) and the logits conv")
    # Our head concatenates image pooling first, then aspp0 (as the released graph); permute if not.
    concat = source(roles["projection"]["inputs"][0])
    parts = [source(t) for t in concat["inputs"]]
    order = {id(roles["image_pooling"]): 0, id(roles["aspp0"]): 1}
    if sorted(order.get(id(p), -1) for p in parts) != [0, 1]:
        raise WeightsError(f"{path}: the head's concatenation does not join image pooling and aspp0")
    projection = weight(roles["projection"])
    if order[id(parts[0])] == 1:  # aspp0 first in the file
        half = projection.shape[1] // 2
        projection = torch.cat([projection[:, half:], projection[:, :half]], dim=1)

    for name, conv_key, op, w in (
        ("image_pooling", "head.image_pooling.1", roles["image_pooling"], weight(roles["image_pooling"])),
        ("aspp0", "head.aspp0.0", roles["aspp0"], weight(roles["aspp0"])),
        ("projection", "head.projection.0", roles["projection"], projection),
    ):
        state[f"{conv_key}.weight"] = w.contiguous()
        _put_bn(state, _bn_name(conv_key), bias(op), bn_eps)
    state["head.classifier.weight"] = weight(roles["classifier"]).contiguous()
    state["head.classifier.bias"] = bias(roles["classifier"])
    return int(state["head.classifier.weight"].shape[0])
