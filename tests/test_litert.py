"""LiteRT (TensorFlow Lite) exports (vision_tasks.export.export_litert, litert-torch) run by the ai-edge-litert
interpreter, and their int8 quantization (quantize_litert, ai-edge-quantizer).

Tiny models (width 0.35, 64-pixel inputs), as in test_export.py. The float files match the PyTorch models to 1e-4
(logits) and 1e-3 (boxes); a detector's file stops before NMS, which the host finishes to the ONNX export's
padded outputs; the int8 files quantize the network and keep float inputs and outputs.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from test_export import SIZE, _images, assert_parity, tiny_detector
from test_int8 import _bn_of_a_batch, _separated_classifier
from vision_tasks.export import (DetectionCandidates, ExportableDetector, check_export, export_litert, export_model,
                                 int8_path, quantize_litert, read_metadata)
from vision_tasks.models import deeplabv3_mobilenet_v2

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer")),
    reason="needs litert-torch, ai-edge-litert and ai-edge-quantizer (pip install 'vision-tasks[litert]')")


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    classifier, _ = _separated_classifier()
    return {"classification": classifier,
            "segmentation": _bn_of_a_batch(deeplabv3_mobilenet_v2(num_classes=4, width_mult=0.35)),
            "detection": tiny_detector()}


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """Each model converted once (15-20 s each here) for the tests below to share."""
    folder = tmp_path_factory.mktemp("litert")
    cache = {}

    def get(task: str):
        if task not in cache:
            cache[task] = export_model(models[task], folder / f"{task}.tflite", "tflite", image_size=SIZE,
                                       metadata={"class_names": [f"c{i}" for i in range(models[task].num_classes)]})
        return cache[task]

    return get


def _interpreter(path):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path))


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
def test_litert_export_runs_in_the_interpreter_and_matches_pytorch(models, exported, task):
    model, path = models[task], exported(task)
    interpreter = _interpreter(path)
    (inp,) = interpreter.get_input_details()
    assert inp["shape"].tolist() == [1, 3, SIZE, SIZE] and inp["dtype"] == np.float32  # NCHW float in [0, 1]
    report = check_export(path, model, _images(5), batch_size=2)
    assert report["format"] == "tflite"
    assert_parity(report, task, images=5)


def test_a_litert_detector_stops_before_nms_with_the_best_candidates(models, exported):
    """The file's three outputs are ExportableDetector.candidates: the same boxes, scores and labels, scores in
    decreasing order; the host's select_detections makes the ONNX export's padded outputs of them."""
    model = models["detection"]
    path = exported("detection")
    meta = read_metadata(path)
    assert meta["outputs"] == ["boxes", "scores", "labels"] and meta["input"]["shape"] == [1, 3, SIZE, SIZE]
    assert meta["postprocess"]["num_classes"] == 3 and meta["postprocess"]["detections_per_img"] == 20
    assert meta["class_names"] == ["c0", "c1", "c2"]
    image = _images(1, seed=3)
    runner = _interpreter(path).get_signature_runner()
    out = runner(**{next(iter(runner.get_input_details())): image.numpy()})
    boxes, scores, labels = (torch.from_numpy(out[k]) for k in sorted(out))
    with torch.no_grad():
        expected = DetectionCandidates(ExportableDetector(model, SIZE))(image)
    m = expected[1].shape[1]
    assert boxes.shape == (1, m, 4) and scores.shape == labels.shape == (1, m) and m < 288 * 3
    assert (scores.diff(dim=1) <= 1e-6).all()
    torch.testing.assert_close(scores, expected[1], rtol=0, atol=1e-4)
    torch.testing.assert_close(boxes, expected[0], rtol=0, atol=1e-3)
    assert (labels.long() == expected[2]).float().mean() > 0.99  # equal scores may swap places


def test_a_quantized_litert_classifier_keeps_float_io_and_agrees(models, exported, tmp_path):
    from collections import Counter

    from ai_edge_litert import schema_py_generated as schema

    model, float_path = models["classification"], exported("classification")
    _, images = _separated_classifier()
    path = quantize_litert(float_path, tmp_path / "cls.int8.tflite", torch.cat([images[:8], _images(8, seed=9)]))
    interpreter = _interpreter(path)
    assert interpreter.get_input_details()[0]["dtype"] == interpreter.get_output_details()[0]["dtype"] == np.float32
    flat = schema.Model.GetRootAs(path.read_bytes(), 0)
    graph, codes = flat.Subgraphs(0), [flat.OperatorCodes(i) for i in range(flat.OperatorCodesLength())]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = Counter(names[max(codes[graph.Operators(i).OpcodeIndex()].BuiltinCode(),
                            codes[graph.Operators(i).OpcodeIndex()].DeprecatedBuiltinCode())]
                  for i in range(graph.OperatorsLength()))
    # int8 from the first convolution to the last: one QUANTIZE in, one DEQUANTIZE out
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1 and ops["CONV_2D"] > 10, ops
    int8_weights = [graph.Tensors(i) for i in range(graph.TensorsLength())
                    if graph.Tensors(i).Type() == schema.TensorType.INT8]
    assert len(int8_weights) > 30
    meta = read_metadata(path)
    assert meta["int8"]["tool"] == "ai-edge-quantizer" and meta["int8"]["calibration_images"] == 16
    assert meta["task"] == "classification" and meta["class_names"] == [f"c{i}" for i in range(5)]
    report = check_export(path, model, images, batch_size=3)
    assert report["argmax_agreement"] >= 0.9 and report["max_abs_diff"] > 0, report  # classes separated by construction


def test_a_quantized_litert_detector_decodes_in_float(models, exported, tmp_path):
    model = models["detection"]
    path = quantize_litert(exported("detection"), int8_path(exported("detection")).with_name("det.int8.tflite"),
                           _images(8, seed=13))
    interpreter = _interpreter(path)
    outputs = interpreter.get_output_details()
    assert [o["dtype"] for o in sorted(outputs, key=lambda o: o["name"])] == [np.float32, np.float32, np.int32]
    report = check_export(path, model, _images(4, seed=3), batch_size=2)
    assert report["images_padding_ok"] == 4 and report["detections_eager>=0.3"] > 0
    assert report["agreement_iou0.5"] >= 0.3, report  # a random network, int8: above chance only


def test_litert_refuses_to_overwrite_and_says_what_is_wrong(models, exported, tmp_path):
    existing = tmp_path / "mine.tflite"
    existing.write_bytes(b"the user's file")
    with pytest.raises(FileExistsError, match="never writes over"):
        export_litert(models["classification"], existing)
    with pytest.raises(FileExistsError, match="never writes over"):
        quantize_litert(exported("classification"), existing, _images(2))
    assert existing.read_bytes() == b"the user's file"
    with pytest.raises(ValueError, match="non-empty"):
        quantize_litert(exported("classification"), tmp_path / "x.tflite", torch.zeros(0, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"\['CONVOLUTION'\] are not ai-edge-quantizer operation names"):
        quantize_litert(exported("classification"), tmp_path / "x.tflite", _images(2), op_types=["CONVOLUTION"])
    assert not (tmp_path / "x.tflite").exists()


def test_the_joint_model_exports_to_litert_with_its_nms_on_the_host(tmp_path):
    from test_export import tiny_joint

    model = tiny_joint()
    path = export_litert(model, tmp_path / "joint.tflite", image_size=SIZE, metadata={"class_names": None})
    meta = read_metadata(path)
    assert meta["task"] == "multitask" and meta["heads"] == ["classification", "detection", "segmentation"]
    assert meta["outputs"] == ["classification_logits", "boxes", "scores", "labels", "segmentation_logits"]
    assert meta["postprocess"]["num_classes"] == 3
    report = check_export(path, model, _images(3), batch_size=2)
    assert report["ok"], report
    assert report["detection"]["detections_eager>=0.3"] > 0 and report["detection"]["images_count_equal"] == 3
    assert report["classification"]["max_abs_diff"] <= 1e-4 and report["segmentation"]["max_abs_diff"] <= 1e-4


def test_a_missing_runtime_package_is_named_with_its_extra(monkeypatch):
    import importlib.util as util

    from vision_tasks.export import require

    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name == "litert_torch" else real(name, *a))
    with pytest.raises(ImportError, match=r"format=tflite needs litert-torch: pip install 'vision-tasks\[litert\]'"):
        require("tflite")
    require("pt2")  # nothing to install
