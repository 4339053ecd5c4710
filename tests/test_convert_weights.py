"""tools/convert_weights.py: any supported source -> safetensors + its weight record as JSON (model class and
configuration, normalisation and padding included, class names, input size), which tools/test.py picks up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file

import backbones
from conftest import RAW, TINY, load_tool, run_tool
from vision_tasks.convert import convert, describe_source
from vision_tasks.models import mobilenet_v2_classifier, model_from_weights, read_record

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"


def test_torchvision_file_becomes_safetensors_with_its_description(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2(width_mult=0.5).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    labels = tmp_path / "labels.txt"
    labels.write_text("background\n" + "".join(f"class{i}\n" for i in range(1000)))  # TF's 1001-way list
    weights, sidecar = load_tool("convert_weights").main([str(tmp_path / "tv.pth"), str(tmp_path / "out" / "mnv2.safetensors"),
                                     "--labels", str(labels)])
    meta = json.loads(sidecar.read_text())
    assert meta["model_class"] == "MobileNetV2Classifier" and meta["kind"] == "converted" and meta["task"] == "classification"
    assert meta["model_config"]["width_mult"] == 0.5 and meta["model_config"]["num_classes"] == 1000
    assert meta["model_config"]["mean"] == [0.485, 0.456, 0.406] and meta["model_config"]["padding"] == "symmetric"
    assert meta["preprocessing"]["std"] == [0.229, 0.224, 0.225] and meta["input_size"] == 224
    assert meta["class_names"][0] == "class0" and len(meta["class_names"]) == 1000  # background dropped
    record = read_record(weights)
    assert record.model_config == meta["model_config"] and record.class_names == meta["class_names"]
    model, _ = model_from_weights(weights)  # the record rebuilds the model, ImageNet normalisation inside
    x = torch.rand(1, 3, 96, 96)
    normalised = (x - torch.tensor(meta["model_config"]["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        meta["model_config"]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), tv(normalised), rtol=0, atol=1e-5)
    assert not list(weights.parent.glob(".*tmp*"))  # written under temporary names, then renamed
    assert all(t.is_contiguous() for t in load_file(str(weights)).values())
    with pytest.raises(FileExistsError, match="nothing is overwritten"):
        convert(tmp_path / "tv.pth", weights)


def test_a_file_that_is_no_mobilenet_v2_is_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, tmp_path / "other.pth")
    with pytest.raises(backbones.WeightsError, match="not a MobileNetV2 classifier"):
        describe_source(tmp_path / "other.pth")
    assert not list(tmp_path.glob("*.safetensors"))


def test_test_py_uses_the_converted_model_and_preprocessing(tmp_path, env):
    """A converted checkpoint is evaluated with the model and normalisation it was trained with, whatever model.* says."""
    run_dir = tmp_path / "run"
    run_tool(["tools/train.py", "task=classification", *TINY, f"hydra.run.dir={run_dir}"], env)
    weights, sidecar = convert(run_dir / "checkpoints/last.ckpt", tmp_path / "converted.safetensors")
    meta = json.loads(sidecar.read_text())
    assert meta["preprocessing"]["normalization"] == "image" and meta["preprocessing"]["grayscale"] is True
    assert meta["model_config"]["width_mult"] == 0.35 and meta["class_names"][0] == "circle"
    trained = json.loads((run_dir / "metrics.json").read_text())["val/acc1"]
    out = tmp_path / "test"
    # model.width_mult=1.0 and a standard normalisation would be wrong: the record replaces them
    run_tool(["tools/test.py", "task=classification", *TINY[:7], "model.width_mult=1.0", "model.normalization=standard",
              f"weights={weights}", "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false",
              f"hydra.run.dir={out}"], env)
    assert json.loads((out / "metrics.json").read_text())["val/acc1"] == pytest.approx(trained, abs=1e-6)


@pytest.mark.skipif(not (SHARED_WEIGHTS / "mobilenet_v2_1.0_224_quant.tflite").is_file(),
                    reason="../shared/weights is not beside this checkout")
def test_tflite_release_converts(tmp_path):
    pytest.importorskip("ai_edge_litert", reason="the TFLite reader is an optional extra: pip install '.[tflite]'")
    weights, sidecar = convert(SHARED_WEIGHTS / "deeplabv3_mnv2_dm05_pascal_quant.tflite", tmp_path / "dl.safetensors")
    meta = json.loads(sidecar.read_text())
    assert meta["model_class"] == "DeepLabV3MobileNetV2" and meta["task"] == "segmentation"
    assert meta["model_config"]["width_mult"] == 0.5 and meta["model_config"]["padding"] == "tf_same"
    assert meta["model_config"]["mean"] == [0.5, 0.5, 0.5] and meta["model_config"]["std"] == [0.5, 0.5, 0.5]
    assert meta["model_config"]["round_nearest"] == 1 and meta["input_size"] == 513
    assert meta["class_names"][15] == "person"


def test_timm_file_converts_to_our_classifier(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is a test extra: pip install '.[dev]'")
    reference = timm.create_model("mobilenetv2_075", pretrained=False).eval()
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    weights, sidecar = convert(tmp_path / "timm.pth", tmp_path / "timm.safetensors")
    meta = json.loads(sidecar.read_text())
    assert meta["model_class"] == "MobileNetV2Classifier" and meta["model_config"]["width_mult"] == 0.75
    model = mobilenet_v2_classifier(width_mult=0.75, weights=weights, **RAW).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-4)
