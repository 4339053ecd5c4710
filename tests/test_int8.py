"""Int8 post-training quantization of ONNX exports (vision_tasks.export.quantize_onnx: ONNX Runtime's static QDQ
quantization): the int8 file holds QuantizeLinear / DequantizeLinear nodes, runs in ONNX Runtime and agrees with
the float model; a detector's post-processing (TopK, NonMaxSuppression) stays float; nothing is overwritten.

Tiny models (width 0.35, 64-pixel inputs). Their BatchNorm statistics are those of a batch of images, so that
the activations have the ranges of real ones and the outputs depend on the image.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F

from test_export import SIZE, _images, tiny_detector
from vision_tasks.export import check_export, export_onnx, int8_path, quantize_onnx
from vision_tasks.models import deeplabv3_mobilenet_v2, mobilenet_v2_classifier

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs onnx, onnxscript and onnxruntime (pip install 'vision-tasks[export]')")


def _bn_of_a_batch(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(_images(8, seed=2))
    return model.eval()


def _separated_classifier() -> tuple[torch.nn.Module, torch.Tensor]:
    """A 5-class classifier whose logits are well separated by construction, and 20 test images: class i is
    images of one plain colour (black, white, red, green, blue) with blocky noise; the last layer is set (least
    squares on the centred pooled features of the plain colours) so that colour i has logit 8 for class i and -2
    for the others."""
    torch.manual_seed(0)
    model = _bn_of_a_batch(mobilenet_v2_classifier(num_classes=5, width_mult=0.35, padding="tf_same"))
    colours = torch.tensor([[0.0, 0, 0], [1, 1, 1], [0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])
    plain = colours.view(5, 3, 1, 1).expand(5, 3, SIZE, SIZE)
    with torch.no_grad():
        pooled = torch.flatten(model.head.pool(model.backbone(model.preprocess(plain))["layer19"]), 1)
        centred = pooled - pooled.mean(0)
        target = 10 * (torch.eye(5) - 0.2)
        weight = target.T @ torch.linalg.pinv(centred).T  # (5, features): weight @ centred_i = target_i
        model.head.fc.weight.copy_(weight)
        model.head.fc.bias.copy_(-weight @ pooled.mean(0))
    noise = 0.02 * (_images(20, seed=7) - 0.5)
    images = (plain.repeat(4, 1, 1, 1) + noise).clamp(0, 1)
    return model, images


def _ops(path) -> list[str]:
    import onnx

    return [node.op_type for node in onnx.load(str(path)).graph.node]


def _quantized(model, tmp_path, name, images, **kwargs):
    float_path = export_onnx(model, tmp_path / f"{name}.onnx", image_size=SIZE)
    return float_path, quantize_onnx(float_path, int8_path(float_path), images, **kwargs)


def test_a_quantized_classifier_has_qdq_nodes_runs_and_agrees_with_float(tmp_path):
    model, images = _separated_classifier()
    with torch.no_grad():
        reference = model(images).argmax(1)
    assert reference.tolist() == list(range(5)) * 4  # separated by construction
    calibration = torch.cat([images[:8], _images(8, seed=9)])
    float_path, path = _quantized(model, tmp_path, "cls", calibration)
    assert path == tmp_path / "cls.int8.onnx" and path.is_file() and float_path.is_file()
    ops = _ops(path)
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10 and "Conv" in ops
    meta = json.loads({p.key: p.value for p in __import__("onnx").load(str(path)).metadata_props}["vision_tasks"])
    assert meta["task"] == "classification" and meta["int8"]["format"] == "QDQ"
    assert meta["int8"]["calibration_images"] == 16
    report = check_export(path, model, images, batch_size=3)  # runs in ONNX Runtime at another batch
    # classes separated by construction: int8 keeps them (measured 1.0 with 7- and 8-bit weights; 0.45 before the
    # ReLU6 were quantized with their convolutions, see INT8_OP_TYPES)
    assert report["images"] == 20 and report["argmax_agreement"] >= 0.9, report
    assert report["max_abs_diff"] > 0  # int8: not the float export
    float_report = check_export(float_path, model, images, batch_size=4)
    assert float_report["ok"] and float_report["argmax_agreement"] == 1.0


def test_a_quantized_segmenter_agrees_with_float_pixelwise(tmp_path):
    torch.manual_seed(0)
    model = _bn_of_a_batch(deeplabv3_mobilenet_v2(num_classes=4, width_mult=0.35))
    images = _images(4, seed=11)
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (4, 4, SIZE, SIZE)
    _, path = _quantized(model, tmp_path, "seg", _images(8, seed=12), activation_type="qint8")
    ops = _ops(path)
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    import onnxruntime as ort

    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": images.numpy()})[0]
    assert out.shape == (4, 4, SIZE, SIZE) and out.dtype == "float32"
    report = check_export(path, model, images, batch_size=2)
    # a random network's pixel argmax has near-ties; above chance (0.25) only, measured 0.55 (7-bit weights) and
    # 0.59 (8-bit)
    assert report["argmax_agreement"] >= 0.4, report


def test_a_quantized_detector_keeps_its_post_processing_float(tmp_path):
    import onnx

    model = tiny_detector()
    _, path = _quantized(model, tmp_path, "det", _images(8, seed=13))
    graph = onnx.load(str(path)).graph
    producers = {out: node for node in graph.node for out in node.output}
    nms = [node for node in graph.node if node.op_type == "NonMaxSuppression"]
    topk = [node for node in graph.node if node.op_type == "TopK"]
    assert nms and topk and any(node.op_type == "QuantizeLinear" for node in graph.node)
    for node in nms + topk:  # the boxes and scores reach NMS and TopK from float ops, not through a DequantizeLinear
        for name in node.input:
            assert name not in producers or producers[name].op_type != "DequantizeLinear", node
    quantized_ops = {producers[n].op_type for node in graph.node if node.op_type == "QuantizeLinear"
                     for n in node.input[:1] if n in producers}
    assert quantized_ops <= {"Conv", "Clip", "Relu", "Add", "Transpose", "Reshape", "Concat", "Sub", "Div", "Mul",
                             "DequantizeLinear", "Pad", "Identity"}, quantized_ops
    images = _images(4, seed=3)
    import onnxruntime as ort

    boxes, scores, labels, count = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": images.numpy()})
    assert boxes.shape == (4, 20, 4) and scores.shape == labels.shape == (4, 20) and count.shape == (4,)
    for i, n in enumerate(count):  # padded as the float export
        assert (boxes[i, n:] == 0).all() and (scores[i, n:] == 0).all() and (labels[i, n:] == -1).all()
    report = check_export(path, model, images, batch_size=2)
    assert report["detections_eager>=0.3"] > 0 and report["agreement_iou0.5"] >= 0.3, report  # measured 0.48


def test_an_existing_int8_file_is_refused(tmp_path):
    existing = tmp_path / "m.int8.onnx"
    existing.write_bytes(b"the user's file")
    with pytest.raises(FileExistsError, match="never writes over"):
        quantize_onnx(tmp_path / "m.onnx", existing, _images(2))
    assert existing.read_bytes() == b"the user's file"
    with pytest.raises(ValueError, match="method='kl'"):
        quantize_onnx(tmp_path / "m.onnx", tmp_path / "x.onnx", _images(2), method="kl")


def test_export_config_int8_says_what_is_missing(tmp_path):
    from test_export import _compose
    from vision_tasks.export import export

    with pytest.raises(ValueError, match=r"int8=true quantizes ONNX .* and LiteRT .* exports; format=pt2 has no int8"):
        export(_compose("task=classification", "weights=x.safetensors", "format=pt2", "int8=true",
                        f"calibration_images={tmp_path}", f"out={tmp_path / 'm'}"))
    with pytest.raises(ValueError, match="calibration_method=entropy: format=tflite calibrates with one of minmax, "
                                         "moving_average"):
        export(_compose("task=classification", "weights=x.safetensors", "format=tflite", "int8=true",
                        "calibration_method=entropy", f"calibration_images={tmp_path}", f"out={tmp_path / 'm'}"))
    with pytest.raises(ValueError, match="int8=true needs calibration_images=DIR"):
        export(_compose("task=classification", "weights=x.safetensors", "int8=true", f"out={tmp_path / 'm'}"))
    (tmp_path / "m.int8.onnx").write_bytes(b"the user's file")  # the int8 sibling is refused before anything runs
    with pytest.raises(FileExistsError, match="m.int8.onnx exists"):
        export(_compose("task=classification", "weights=x.safetensors", "int8=true", f"calibration_images={tmp_path}",
                        f"out={tmp_path / 'm'}"))
