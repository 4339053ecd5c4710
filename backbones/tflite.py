"""Reading the MobileNetV2 TFLite releases (uint8, batch norm folded) into this project's float models.

The paper authors' TF line ships quantized ``.tflite`` files (``/work/shared/weights``; PAPER.md
section 10 reads them operator by operator): the ImageNet classifier (53 convolutions: Table 2 one to
one, the last being the 1001-way logits) and DeepLabv3 + MobileNetV2 (55: the trunk up to the
320-channel ``layer18``, then ``image_pooling``, ``aspp0``, ``concat_projection`` and
``logits/semantic``); the TF Object Detection API exports SSDLite + MobileNetV2 (88, and a
``TFLite_Detection_PostProcess`` operator: the trunk to ``layer19`` built with the API's ``min_depth`` and
scaled last conv, 4 extra layers, a class and a box predictor per map; see :func:`_read_ssdlite`).
:func:`read_tflite` turns such a file into a state dict in our naming:

- trunk: torchvision's ``features.<i>...`` (what ``backbones.load_weights`` matches after stripping
  ``backbone.``); classifier: ``classifier.1.weight/bias`` with the background logit (index 0 of
  1001) dropped, so 1000 classes as torchvision; DeepLab head: ``head.image_pooling.1`` /
  ``head.aspp0.0`` / ``head.projection.0`` / ``head.classifier`` as in :mod:`heads.deeplab`; SSDLite head:
  ``head.extras.<b>.<j>.0`` and ``head.{classification,regression}_head.<map>.{0.0,1}`` as in
  :mod:`heads.ssdlite`, the background logit kept (the head predicts it), the box predictors' outputs
  reordered from TF's ``(ty, tx, th, tw)`` per anchor to :class:`heads.BoxCoder`'s ``(tx, ty, tw, th)``;
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
# The TF Object Detection API's SSD exports end in this custom operator (decoding, NMS); its inputs are the box
# encodings, the class scores and the anchors. SSDLite on MobileNetV2: 52 trunk convs (to layer19), 4 extra
# layers of 3 convs, and per each of the 6 maps a class and a box predictor of 2 convs: 88.
_SSD_POSTPROCESS = "TFLite_Detection_PostProcess"
_SSD_NUM_CONVS = 52 + 4 * 3 + 6 * 2 * 2
_SSD_TAPS = ("layer15_expand", "layer19")  # the TF feature extractor's ``layer_15/expansion_output`` and ``layer_19``
# Trunk variants tried after the plain MobileNetV2: the TF OD API's feature extractors apply ``min_depth`` (16 in its
# SSD configs) and scale the last conv by the depth multiplier (backbones.MobileNetV2's arguments of those names).
_SSD_TRUNK_VARIANTS = ({}, {"min_depth": 16, "scale_last_conv": True}, {"scale_last_conv": True}, {"min_depth": 16})
# TF's faster_rcnn_box_coder encodes (ty, tx, th, tw); heads.BoxCoder (as torchvision) decodes (tx, ty, tw, th).
_TF_TO_XY_ORDER = (1, 0, 3, 2)
_BOX_CODER_SCALES = {"x_scale": 10.0, "y_scale": 10.0, "w_scale": 5.0, "h_scale": 5.0}  # heads.BoxCoder's weights


def read_tflite(path: str | Path, *, bn_eps: float = 1e-5) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a MobileNetV2 classifier, DeepLabv3-MobileNetV2 or SSDLite-MobileNetV2 ``.tflite`` file as a float state dict.

    Args:
        path: the ``.tflite`` file.
        bn_eps: the eps of the BatchNorms the state dict is meant for (``running_var = 1 - eps``).

    Returns:
        ``(state, info)``: the state dict (see the module docstring for the names) and a dict with
        ``kind`` (``"classifier"`` / ``"deeplab"`` / ``"ssdlite"``), ``width_mult``, ``num_classes`` (1000 / 21 /
        the detector's foreground classes),
        ``round_nearest`` (channel rounding, 1 for TF DeepLab's depth multipliers != 1),
        ``background_dropped``, ``input_size`` (H, W), ``mean`` / ``std`` (0..1 units, giving [-1, 1]),
        ``input_quantization`` (the interpreter's uint8 ``scale`` and ``zero_point``), ``padding``
        (``"tf_same"``), ``output_stride``, ``num_convs`` and ``model_kwargs`` (arguments for
        ``mobilenet_v2_classifier`` / ``deeplabv3_mobilenet_v2`` / ``ssdlite_mobilenet_v2`` that fit the state
        dict). SSDLite adds ``min_depth``, ``scale_last_conv``, ``feature_sizes``, ``num_anchors_per_location``,
        ``anchors`` (the file's own, ``(A, 4)`` ``(ycenter, xcenter, height, width)`` in [0, 1]) and
        ``postprocess`` (the options of its post-processing operator); its ``model_kwargs`` carry the anchor
        settings read back from those anchors, the score converter and the operator's NMS settings.

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

    if _SSD_POSTPROCESS in op_names:  # a TF Object Detection API export: SSDLite
        return _read_ssdlite(path, interp, ops, tensors, convs, weight, bias, bn_eps)
    kind = next((k for k, n in _NUM_CONVS.items() if len(convs) == n), None)
    if kind == "deeplab" and "CONCATENATION" not in op_names:
        kind = None
    if kind is None:
        raise WeightsError(
            f"{path}: not a MobileNetV2 TFLite release: {len(convs)} convolutions (CONV_2D + DEPTHWISE_CONV_2D) "
            f"and operators {sorted(op_names)}; a MobileNetV2 classifier has 53, DeepLabv3-MobileNetV2 has 55 "
            f"with a CONCATENATION, SSDLite-MobileNetV2 has {_SSD_NUM_CONVS} and a {_SSD_POSTPROCESS}"
        )

    # Trunk: the convs in graph order are Table 2's, one to one (stem, then per block expand / depthwise /
    # project; the 1280-channel conv for the classifier). Match them to a MobileNetV2 of the right width.
    num_trunk = 52 if kind == "classifier" else 51
    trunk_ops = convs[:num_trunk]
    found = [tuple(weight(op).shape) for op in trunk_ops]
    tap = "layer19" if kind == "classifier" else "layer18"
    width, round_nearest, _, conv_names, why = _match_width(found, tap)
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

    info = _common_info(path, interp, tensors, trunk_ops[-1], len(convs))
    kwargs: dict[str, Any] = {"num_classes": num_classes, "width_mult": width, "padding": "tf_same"}
    if round_nearest != 8:
        kwargs["round_nearest"] = round_nearest
    if kind == "deeplab":
        kwargs.update(output_stride=info["output_stride"], aspp=False, feature="layer18")
    info.update(kind=kind, width_mult=width, round_nearest=round_nearest, num_classes=num_classes,
                background_dropped=background, model_kwargs=kwargs)
    return state, info


def _common_info(path: Path, interp, tensors: dict, trunk_last: dict, num_convs: int) -> dict[str, Any]:
    """What every release's info says of its input, padding and output stride."""
    detail = interp.get_input_details()[0]
    height, width_px = (int(s) for s in detail["shape"][1:3])
    scale, zero_point = detail["quantization"]
    out_h = int(tensors[trunk_last["outputs"][0]]["shape"][1])
    return {
        "file": str(path),
        "input_size": (height, width_px),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "input_quantization": {"scale": float(scale), "zero_point": int(zero_point)},
        "padding": "tf_same",
        "output_stride": next((s for s in (8, 16, 32) if math.ceil(height / s) == out_h), None),
        "num_convs": num_convs,
    }


def load_tflite(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a TFLite release into ``model`` (a classifier, a DeepLab or SSDLite model, or a bare backbone); return its info.

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


def _match_width(
    found: list[tuple[int, ...]], tap: str, variants: tuple[dict[str, Any], ...] = ({},)
) -> tuple[float | None, int, dict[str, Any], list[str], str]:
    """``(width_mult, round_nearest, variant, conv names, "")`` of the MobileNetV2 (up to ``tap``, built with
    the extra arguments ``variant``, the first of ``variants`` that fits) whose convs have exactly the shapes
    ``found``, in order; ``(None, 0, {}, [], why)`` when none has, ``why`` naming the closest candidate's first
    mismatching conv."""
    why, fewest = "", None
    for width in _WIDTHS:
        for round_nearest in _ROUNDINGS:
            for variant in variants:
                net = MobileNetV2(width_mult=width, out_features=(tap,), round_nearest=round_nearest, **variant)
                expected = [(name, tuple(m.weight.shape)) for name, m in net.named_modules()
                            if isinstance(m, nn.Conv2d)]
                if len(expected) != len(found):
                    why = why or f"{len(found)} trunk convolutions, MobileNetV2 up to {tap} has {len(expected)}"
                    continue
                bad = [(i, name, got, want) for i, ((name, want), got) in enumerate(zip(expected, found)) if got != want]
                if not bad:
                    return width, round_nearest, dict(variant), [name for name, _ in expected], ""
                if found[0] == expected[0][1] and (fewest is None or len(bad) < fewest):  # the closest candidate
                    i, name, got, want = bad[0]
                    settings = ", ".join(f"{k}={v}" for k, v in variant.items())
                    why = (f"conv {i} ({name}) is {got}, width {width}{', ' + settings if settings else ''} expects "
                           f"{want} ({len(bad)} of {len(found)} convolutions differ)")
                    fewest = len(bad)
    return None, 0, {}, [], why or f"the stem conv {found[0]} fits no width multiplier in {_WIDTHS}"


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


# ---------------------------------------------------------------------------------------------
# SSDLite (TF Object Detection API export)


def _read_ssdlite(path, interp, ops, tensors, convs, weight, bias, bn_eps) -> tuple[dict[str, torch.Tensor], dict]:
    """SSDLite + MobileNetV2 as the TF Object Detection API exports it (``ssd_mobilenet_v2`` / ``_keras`` feature
    extractor, depthwise box predictor, ``TFLite_Detection_PostProcess``), read by following the graph back from the
    post-processing operator (names in these files are not reliable: the converter shares them between tensors).

    - The post-processing inputs are the box encodings and the class scores, each a CONCATENATION (through
      RESHAPEs, (DE)QUANTIZEs and, for the scores, the score converter LOGISTIC or SOFTMAX) of one predictor per
      feature map; a predictor is a 3x3 depthwise conv (BN + ReLU6 folded) then a 1x1 conv with bias. The depthwise
      conv's input is the feature map.
    - The trunk is every conv the second map (``layer19``) depends on, in graph order; it must be a MobileNetV2
      (:func:`_match_width`, with the OD API's ``min_depth`` / scaled last conv), and the first map must be the
      output of its ``layer15_expand`` conv.
    - The extra layers are the other convs the last map depends on: per map, 1x1 conv, 3x3 depthwise stride 2,
      1x1 conv, each with BN + ReLU6 folded.
    """
    if len(convs) != _SSD_NUM_CONVS:
        raise WeightsError(
            f"{path}: an SSD graph ({_SSD_POSTPROCESS}) with {len(convs)} convolutions; SSDLite-MobileNetV2 has "
            f"{_SSD_NUM_CONVS} (52 in the trunk to layer19, 12 in the 4 extra layers, 24 in the 6 x 2 predictors)"
        )
    producer = {out: op for op in ops for out in op["outputs"]}
    post = next(op for op in ops if op["op_name"] == _SSD_POSTPROCESS)
    passthrough = ("RESHAPE", "QUANTIZE", "DEQUANTIZE")

    def source(tensor: int, skip: tuple[str, ...] = passthrough) -> dict | None:
        op = producer.get(tensor)
        while op is not None and op["op_name"] in skip:
            op = producer.get(op["inputs"][0])
        return op

    def spatial(tensor: int) -> tuple[int, int]:
        return tuple(int(v) for v in tensors[tensor]["shape"][1:3])

    def describe(op: dict) -> str:
        return f"{op['op_name']} #{op['index']} {tuple(weight(op).shape)}"

    box_concat = source(post["inputs"][0])
    converter = source(post["inputs"][1])
    if converter is None or converter["op_name"] not in ("LOGISTIC", "SOFTMAX"):
        raise WeightsError(f"{path}: the class scores of {_SSD_POSTPROCESS} come from "
                           f"{converter and converter['op_name']}, expected a LOGISTIC or SOFTMAX score converter")
    class_concat = source(converter["inputs"][0])
    for what, concat in (("box encodings", box_concat), ("class scores", class_concat)):
        if concat is None or concat["op_name"] != "CONCATENATION":
            raise WeightsError(f"{path}: the {what} of {_SSD_POSTPROCESS} are not a CONCATENATION of per-map predictions")
    if len(box_concat["inputs"]) != len(class_concat["inputs"]):
        raise WeightsError(f"{path}: {len(box_concat['inputs'])} maps of box predictions, "
                           f"{len(class_concat['inputs'])} of class predictions")

    # per map: the feature tensor and its two predictors (depthwise conv, 1x1 conv)
    maps: list[tuple[int, dict[str, tuple[dict, dict]]]] = []
    for k, inputs in enumerate(zip(box_concat["inputs"], class_concat["inputs"])):
        predictors = {}
        for role, tensor in zip(("regression", "classification"), inputs):
            pred = source(tensor)
            dw = producer.get(pred["inputs"][0]) if pred is not None else None
            ok = (pred is not None and pred["op_name"] == "CONV_2D" and weight(pred).shape[-2:] == (1, 1)
                  and dw is not None and dw["op_name"] == "DEPTHWISE_CONV_2D" and weight(dw).shape[-2:] == (3, 3)
                  and spatial(dw["inputs"][0]) == spatial(dw["outputs"][0]))
            if not ok:
                found = " <- ".join(describe(op) for op in (pred, dw) if op is not None and op["op_name"] in _CONV_OPS)
                raise WeightsError(f"{path}: the {role} predictor of map {k} is not a 3x3 stride-1 depthwise conv "
                                   f"then a 1x1 conv (found {found or 'no convolution'})")
            predictors[role] = (dw, pred)
        feature = predictors["regression"][0]["inputs"][0]
        if predictors["classification"][0]["inputs"][0] != feature:
            raise WeightsError(f"{path}: the class and box predictors of map {k} read different tensors")
        maps.append((feature, predictors))
    if len(maps) < 3:
        raise WeightsError(f"{path}: {len(maps)} feature maps; SSDLite-MobileNetV2 has 2 backbone maps and extra layers")

    def ancestors(tensor: int) -> set[int]:
        seen: set[int] = set()
        stack = [tensor]
        while stack:
            op = producer.get(stack.pop())
            if op is not None and op["index"] not in seen:
                seen.add(op["index"])
                stack.extend(t for t in op["inputs"] if t >= 0)
        return seen

    trunk_ids = ancestors(maps[1][0])
    trunk_ops = [op for op in convs if op["index"] in trunk_ids]
    found = [tuple(weight(op).shape) for op in trunk_ops]
    width, round_nearest, variant, conv_names, why = _match_width(found, _SSD_TAPS[-1], _SSD_TRUNK_VARIANTS)
    if width is None:
        raise WeightsError(f"{path}: the convolutions under the second feature map do not fit a MobileNetV2 trunk "
                           f"(SSDLite graph): {why}")
    expand_conv = f"features.{int(_SSD_TAPS[0].split('_')[0][len('layer'):]) - 1}.conv.0.0"  # layer15 -> features.14
    tap_op = trunk_ops[conv_names.index(expand_conv)] if expand_conv in conv_names else None
    if tap_op is None or tap_op["outputs"][0] != maps[0][0]:
        raise WeightsError(f"{path}: the first feature map is not the output of {_SSD_TAPS[0]} ({expand_conv})")
    if trunk_ops[-1]["outputs"][0] != maps[1][0]:
        raise WeightsError(f"{path}: the second feature map is not the trunk's last conv ({conv_names[-1]})")

    state: dict[str, torch.Tensor] = {}
    for name, op in zip(conv_names, trunk_ops):
        state[f"{name}.weight"] = weight(op)
        _put_bn(state, _bn_name(name), bias(op), bn_eps)

    # extra layers: 3 convs per map after the second, chained from the trunk's output
    extra_ids = set().union(*(ancestors(feature) for feature, _ in maps[2:])) - trunk_ids
    extra_ops = [op for op in convs if op["index"] in extra_ids]
    previous = maps[1][0]
    for b, (feature, _) in enumerate(maps[2:]):
        block = extra_ops[3 * b : 3 * b + 3]
        kinds = [(op["op_name"], tuple(weight(op).shape[-2:])) for op in block]
        want = [("CONV_2D", (1, 1)), ("DEPTHWISE_CONV_2D", (3, 3)), ("CONV_2D", (1, 1))]
        chained = (len(block) == 3 and block[0]["inputs"][0] == previous and block[2]["outputs"][0] == feature
                   and block[1]["inputs"][0] == block[0]["outputs"][0] and block[2]["inputs"][0] == block[1]["outputs"][0])
        size_in, size_out = (spatial(block[1][k][0]) for k in ("inputs", "outputs")) if len(block) == 3 else ((0, 0),) * 2
        if kinds != want or not chained or size_out != tuple(math.ceil(v / 2) for v in size_in):
            raise WeightsError(
                f"{path}: extra layer {b} (feature map {b + 2}) is not a 1x1 conv, a 3x3 stride-2 depthwise conv and a "
                f"1x1 conv in a chain from the previous map: found {[describe(op) for op in block]}"
            )
        for j, op in enumerate(block):
            state[f"head.extras.{b}.{j}.0.weight"] = weight(op)
            _put_bn(state, f"head.extras.{b}.{j}.1", bias(op), bn_eps)
        previous = feature
    if len(extra_ops) != 3 * (len(maps) - 2):
        raise WeightsError(f"{path}: {len(extra_ops)} convolutions in the extra layers, expected {3 * (len(maps) - 2)}")

    # predictors: anchors per location from the box outputs (4 per anchor), classes from the class outputs
    per_location, logits = [], set()
    for k, (feature, predictors) in enumerate(maps):
        box_out = int(weight(predictors["regression"][1]).shape[0])
        cls_out = int(weight(predictors["classification"][1]).shape[0])
        if box_out % 4 or cls_out % (box_out // 4):
            raise WeightsError(f"{path}: map {k}: {box_out} box outputs and {cls_out} class outputs do not give "
                               "4 box codes and the same classes per anchor")
        per_location.append(box_out // 4)
        logits.add(cls_out // (box_out // 4))
        for role, head in (("classification", "classification_head"), ("regression", "regression_head")):
            dw, pred = predictors[role]
            state[f"head.{head}.{k}.0.0.weight"] = weight(dw)
            _put_bn(state, f"head.{head}.{k}.0.1", bias(dw), bn_eps)
            w, b = weight(pred), bias(pred)
            if role == "regression":  # TF (ty, tx, th, tw) per anchor -> heads.BoxCoder's (tx, ty, tw, th)
                order = torch.tensor([4 * a + c for a in range(box_out // 4) for c in _TF_TO_XY_ORDER])
                w, b = w[order], b[order]
            state[f"head.{head}.{k}.1.weight"], state[f"head.{head}.{k}.1.bias"] = w.contiguous(), b.contiguous()
    if len(logits) != 1:
        raise WeightsError(f"{path}: the class predictors disagree on the number of classes per anchor: {sorted(logits)}")
    num_classes = logits.pop() - 1  # the background logit comes first and stays (our head predicts it too)

    options = _custom_options(path, post["index"])
    scales = {k: float(options[k]) for k in _BOX_CODER_SCALES if k in options}
    if any(abs(v - _BOX_CODER_SCALES[k]) > 1e-6 for k, v in scales.items()):
        raise WeightsError(f"{path}: box coder scales {scales}; this project's BoxCoder uses {_BOX_CODER_SCALES}")
    if "num_classes" in options and int(options["num_classes"]) != num_classes:
        raise WeightsError(f"{path}: {_SSD_POSTPROCESS} scores {options['num_classes']} classes, the predictors "
                           f"{num_classes} (+ background)")
    sizes = [spatial(feature) for feature, _ in maps]
    anchors = _dequantize(interp, tensors[post["inputs"][2]], path)
    expected_anchors = sum(h * w * a for (h, w), a in zip(sizes, per_location))
    if tuple(anchors.shape) != (expected_anchors, 4):
        raise WeightsError(f"{path}: {tuple(anchors.shape)} anchors, the predictors give {expected_anchors} x 4")

    info = _common_info(path, interp, tensors, trunk_ops[-1], len(convs))
    kwargs: dict[str, Any] = {
        "num_classes": num_classes, "image_size": info["input_size"][0], "width_mult": width, **variant,
        "padding": "tf_same", "head_padding": "tf_same",
        **_anchor_settings(anchors, sizes, per_location, path),
        "classification_loss": "sigmoid" if converter["op_name"] == "LOGISTIC" else "softmax",
        # the file's own post-processing (fast NMS, see info["postprocess"]); weight records may refine them
        "score_thresh": round(float(options.get("nms_score_threshold", 0.0)), 9),
        "nms_thresh": round(float(options.get("nms_iou_threshold", 0.6)), 6),
        "detections_per_img": int(options.get("max_detections", 100)),
    }
    if round_nearest != 8:
        kwargs["round_nearest"] = round_nearest
    info.update(
        kind="ssdlite", width_mult=width, round_nearest=round_nearest, num_classes=num_classes,
        background_dropped=False, min_depth=variant.get("min_depth"), scale_last_conv=variant.get("scale_last_conv", False),
        feature_sizes=sizes, num_anchors_per_location=per_location, anchors=anchors, postprocess=options,
        model_kwargs=kwargs,
    )
    return state, info


def _anchor_settings(anchors: torch.Tensor, sizes: list[tuple[int, int]], per_location: list[int], path: Path) -> dict:
    """The TF ``ssd_anchor_generator`` settings behind a file's anchors (``(ycenter, xcenter, height, width)``,
    normalised): ``anchor_layout="tf"`` (``reduce_boxes_in_lowest_layer``: 3 boxes on the first map, one per aspect
    ratio plus an interpolated one on the others), ``min_scale`` (the first map's 2nd box), ``max_scale`` (the last
    map's 1st box) and ``aspect_ratios`` (width / height of the second map's boxes), rounded to 4 decimals as the
    configs write them. The model's anchors are compared with the file's in ``vision_tasks.models.weights``."""
    num_ratios = per_location[1] - 1
    if per_location[0] != 3 or any(a != num_ratios + 1 for a in per_location[1:]):
        raise WeightsError(f"{path}: {per_location} anchors per location; TF's ssd_anchor_generator with "
                           "reduce_boxes_in_lowest_layer has 3 on the first map and the same number on the others")
    starts = [0]
    for (h, w), a in zip(sizes, per_location):
        starts.append(starts[-1] + h * w * a)
    first = [anchors[start : start + a].double() for start, a in zip(starts, per_location)]  # boxes of location 0
    scale = [(box[:, 2] * box[:, 3]).sqrt() for box in first]
    ratio = [box[:, 3] / box[:, 2] for box in first]
    return {
        "anchor_layout": "tf",
        "min_scale": round(float(scale[0][1]), 4),
        "max_scale": round(float(scale[-1][0]), 4),
        "aspect_ratios": [round(float(r), 4) for r in ratio[1][:num_ratios]],
    }


def _custom_options(path: Path, op_index: int) -> dict[str, Any]:
    """The flexbuffer options of the custom operator ``op_index`` of the file's main graph (for
    ``TFLite_Detection_PostProcess``: ``nms_iou_threshold``, ``max_detections``, ``use_regular_nms``, the box coder
    scales ...); ``{}`` when the flatbuffers reader is not installed."""
    try:
        from ai_edge_litert import schema_py_generated as schema
        from flatbuffers import flexbuffers
    except ImportError:
        return {}
    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    raw = model.Subgraphs(0).Operators(op_index).CustomOptionsAsNumpy()
    if isinstance(raw, int):  # no options
        return {}
    options = flexbuffers.Loads(raw.tobytes())
    return dict(options) if isinstance(options, dict) else {}
