"""TF "SAME" padding, and the paper authors' TFLite releases read into our float models (backbones.tflite).

The padding tests need torch only. The TFLite tests need ``ai_edge_litert`` and the repository's
sibling ``../shared/weights``; they skip with a reason when either is absent.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from backbones import MobileNetV2, WeightsError
from backbones.mobilenet_v2 import Conv2dSame
from backbones.tflite import load_tflite, read_tflite
from vision_tasks.models import deeplabv3_mobilenet_v2, mobilenet_v2_classifier
from conftest import assert_unchanged, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = Path(__file__).parents[2] / "shared" / "weights"
CLASSIFIER = WEIGHTS / "mobilenet_v2_1.0_224_quant.tflite"
DEEPLAB = WEIGHTS / "deeplabv3_mnv2_pascal_quant.tflite"
# shared/weights/README.md: the interpreter's top-1 (1001-way index), whole photo resized bilinearly to 224.
LABELLED = {"cat.bmp": 286, "bird.bmp": 20, "grace_hopper.bmp": 653, "parrot.jpg": 89, "owl.jpg": 83,
            "hot_dog.jpg": 935, "sunflower.bmp": 986, "dragonfly.bmp": 320}

needs_tflite = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None or not (CLASSIFIER.is_file() and DEEPLAB.is_file()),
    reason=f"needs ai_edge_litert (pip install 'vision-tasks[tflite]') and the TFLite releases in {WEIGHTS}",
)


# ------------------------------------------------------------------------------------------------
# TF "SAME" padding


@pytest.mark.parametrize("size", [7, 8, 224, 225, 513])
def test_tf_same_output_sizes(size):
    conv = Conv2dSame(3, 4, 3, stride=2)
    assert conv(torch.randn(1, 3, size, size)).shape[-1] == math.ceil(size / 2)  # TF: ceil(size / stride)
    net = MobileNetV2(padding="tf_same", out_features=("layer1", "layer19")).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, size, size))
    assert out["layer1"].shape[-1] == math.ceil(size / 2)
    assert out["layer19"].shape[-1] == math.ceil(size / 32)


@pytest.mark.parametrize("groups,dilation", [(1, 1), (6, 1), (6, 2)])
def test_tf_same_equals_explicit_padding(groups, dilation):
    g = torch.Generator().manual_seed(0)
    same2 = Conv2dSame(6, 6, 3, stride=2, groups=groups, bias=False)
    same1 = Conv2dSame(6, 6, 3, stride=1, dilation=dilation, groups=groups, bias=False)
    for conv in (same2, same1):
        nn.init.normal_(conv.weight, generator=g)
    with torch.no_grad():
        even = torch.randn(2, 6, 16, 16, generator=g)
        odd = torch.randn(2, 6, 15, 15, generator=g)
        # even size, stride 2: pad bottom / right only
        want = F.conv2d(F.pad(even, (0, 1, 0, 1)), same2.weight, stride=2, groups=groups)
        assert torch.equal(same2(even), want)
        # odd size, stride 2, and stride 1 (dilated or not) at any size: symmetric padding
        assert torch.equal(same2(odd), F.conv2d(odd, same2.weight, stride=2, padding=1, groups=groups))
        for x in (even, odd):
            want = F.conv2d(x, same1.weight, padding=dilation, dilation=dilation, groups=groups)
            assert torch.equal(same1(x), want)


def test_tf_same_backbone_names_and_odd_sizes():
    torch.manual_seed(0)
    sym = MobileNetV2(output_stride=16, out_features=("layer18",)).eval()
    same = MobileNetV2(output_stride=16, out_features=("layer18",), padding="tf_same").eval()
    assert list(sym.state_dict()) == list(same.state_dict())  # checkpoints load either way
    assert not any(isinstance(m, Conv2dSame) for m in sym.modules())  # default unchanged
    same.load_state_dict(sym.state_dict())
    split = MobileNetV2(output_stride=16, out_features=("layer18",), padding="tf_same", memory_efficient_splits=3)
    split.load_state_dict(sym.state_dict())
    split.eval()

    def rel(a: dict, b: dict) -> float:
        a, b = a["layer18"], b["layer18"]
        return ((a - b).abs().max() / b.abs().max()).item()

    with torch.no_grad():
        odd = torch.randn(1, 3, 129, 129)  # 129 -> 65 -> 33 -> 17 -> 9: every size odd, SAME = symmetric
        assert rel(same(odd), sym(odd)) < 1e-5
        even = torch.randn(1, 3, 128, 128)
        assert rel(same(even), sym(even)) > 1e-2
        assert rel(split(even), same(even)) < 1e-5  # the section 5.1 path pads the same way


def test_padding_kept_in_config():
    with pytest.raises(ValueError, match="padding"):
        MobileNetV2(padding="same")
    assert mobilenet_v2_classifier(padding="tf_same").config["padding"] == "tf_same"
    assert deeplabv3_mobilenet_v2(padding="tf_same").config["padding"] == "tf_same"


# ------------------------------------------------------------------------------------------------
# TFLite releases


def photo(name: str, size: int) -> np.ndarray:
    return np.asarray(Image.open(WEIGHTS / name).convert("RGB").resize((size, size), Image.BILINEAR))


def uint8_batch(q: np.ndarray) -> torch.Tensor:
    """The photo as the models take it: (1, 3, H, W) uint8 (they normalise it themselves, here to [-1, 1])."""
    return torch.from_numpy(q).permute(2, 0, 1)[None].contiguous()


def interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()

    def run(q: np.ndarray) -> np.ndarray:
        interp.set_tensor(interp.get_input_details()[0]["index"], q[None])
        interp.invoke()
        return interp.get_tensor(interp.get_output_details()[0]["index"])[0]

    return run


@needs_tflite
def test_read_tflite_classifier_state_and_info():
    state, info = read_tflite(CLASSIFIER)
    assert info["kind"] == "classifier" and info["width_mult"] == 1.0 and info["num_classes"] == 1000
    assert info["padding"] == "tf_same" and info["input_size"] == (224, 224) and info["mean"] == info["std"] == (0.5,) * 3
    tv_keys = set(torchvision_keys())
    assert set(state) == tv_keys  # exactly torchvision's names: what backbones.load_weights matches
    assert state["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)  # depthwise 1HWO -> O1HW
    assert state["classifier.1.weight"].shape == (1000, 1280)
    bn = {k.rsplit(".", 1)[1]: v for k, v in state.items() if k.startswith("features.0.1.")}
    assert torch.equal(bn["weight"], torch.ones(32)) and torch.equal(bn["running_mean"], torch.zeros(32))
    assert torch.equal(bn["running_var"], torch.full((32,), 1 - 1e-5))


def torchvision_keys() -> list[str]:
    return [k.removeprefix("backbone.").replace("head.fc.", "classifier.1.")
            for k in mobilenet_v2_classifier().state_dict()]


@needs_tflite
def test_classifier_matches_interpreter_on_labelled_photos():
    # the weights' record sets TF's "SAME" padding and [-1, 1] inputs: the model takes the photo as it is
    model = mobilenet_v2_classifier(weights=CLASSIFIER).eval()
    assert model.config["padding"] == "tf_same" and model.config["mean"] == model.config["std"] == [0.5] * 3
    run = interpreter(CLASSIFIER)
    got = {}
    for name in LABELLED:
        q = photo(name, 224)
        with torch.no_grad():
            ours = int(model(uint8_batch(q)).argmax()) + 1  # 1000-way -> the file's 1001-way index
        got[name] = (ours, int(run(q).argmax()))
    assert got == {name: (want, want) for name, want in LABELLED.items()}


@needs_tflite
def test_deeplab_matches_interpreter():
    state, info = read_tflite(DEEPLAB)
    assert info["kind"] == "deeplab" and info["num_classes"] == 21 and info["output_stride"] == 16
    assert {k for k in state if k.startswith("head.")} >= {"head.image_pooling.1.weight", "head.aspp0.0.weight",
                                                            "head.projection.0.weight", "head.classifier.bias"}
    model = deeplabv3_mobilenet_v2(weights=DEEPLAB).eval()
    assert model.config["padding"] == "tf_same" and model.config["mean"] == [0.5] * 3
    run = interpreter(DEEPLAB)
    for name in ("bird_segmentation.bmp", "dog_segmentation.bmp"):
        q = photo(name, 513)
        with torch.no_grad():
            ours = model(uint8_batch(q))[0].argmax(0).numpy()
        theirs = run(q)
        assert len(np.unique(theirs)) > 1  # something is segmented, so agreement means something
        assert (ours == theirs).mean() >= 0.98, name


@needs_tflite
def test_refuses_truncated_and_foreign_files(tmp_path):
    data = CLASSIFIER.read_bytes()
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated.tflite"):
        read_tflite(truncated)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer" * 64)
    with pytest.raises(WeightsError, match="not a TFLite file"):
        read_tflite(junk)
    model = mobilenet_v2_classifier(padding="tf_same")
    before = snapshot(model)
    for bad in (truncated, DEEPLAB):  # a DeepLab file does not fit a classifier
        with pytest.raises(WeightsError):
            load_tflite(model, bad)
    assert_unchanged(model, before)


@needs_tflite
def test_refuses_other_graphs(monkeypatch):
    """A TFLite graph that is not MobileNetV2: other conv count, other conv shapes (simulated on the release)."""
    from ai_edge_litert.interpreter import Interpreter

    ops_details = Interpreter._get_ops_details
    monkeypatch.setattr(Interpreter, "_get_ops_details", lambda self: ops_details(self)[:-20])
    with pytest.raises(WeightsError, match=r"mobilenet_v2_1.0_224_quant.tflite.*convolutions"):
        read_tflite(CLASSIFIER)
    monkeypatch.undo()

    get_tensor = Interpreter.get_tensor

    def narrower(self, index, *args):
        value = get_tensor(self, index, *args)
        name = next(t["name"] for t in self.get_tensor_details() if t["index"] == index)
        return value[:24] if name.startswith("MobilenetV2/expanded_conv_3/project/Conv2D") else value

    monkeypatch.setattr(Interpreter, "get_tensor", narrower)
    with pytest.raises(WeightsError, match=r"conv 11 \(features.4.conv.2\)"):
        read_tflite(CLASSIFIER)
