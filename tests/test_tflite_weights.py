"""TF "SAME" padding, and the paper authors' TFLite releases read into our float models (backbones.tflite).

The padding tests need torch only. The TFLite tests need ``ai_edge_litert`` and the repository's
sibling ``../shared/weights``; they skip with a reason when either is absent.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from backbones import MobileNetV2, WeightsError, load_weights
from backbones.mobilenet_v2 import Conv2dSame
from backbones.tflite import load_tflite, read_tflite
from vision_tasks.models import (deeplabv3_mobilenet_v2, describe_weights, mobilenet_v2_classifier, model_from_weights,
                                 ssdlite_mobilenet_v2)
from conftest import assert_unchanged, load_tool, snapshot

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
SSDLITE = WEIGHTS / "ssdlite_mobilenet_v2_coco_0.5_200x200.tflite"
needs_ssdlite = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None or not SSDLITE.is_file(),
    reason=f"needs ai_edge_litert (pip install 'vision-tasks[tflite]') and {SSDLITE}",
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


# ------------------------------------------------------------------------------------------------
# SSDLite release of the TF Object Detection API (SSDLite + MobileNetV2 0.5, 200x200, COCO 90 classes)


@needs_ssdlite
def test_ssdlite_release_reads_loads_strictly_and_describes_itself():
    state, info = read_tflite(SSDLITE)
    assert (info["kind"], info["num_classes"], info["width_mult"], info["input_size"]) == ("ssdlite", 90, 0.5, (200, 200))
    assert (info["min_depth"], info["scale_last_conv"], info["num_convs"]) == (16, True, 88)
    assert info["feature_sizes"] == [(13, 13), (7, 7), (4, 4), (2, 2), (1, 1), (1, 1)]
    assert info["num_anchors_per_location"] == [3, 6, 6, 6, 6, 6]
    model = ssdlite_mobilenet_v2(**info["model_kwargs"])
    # shared/weights/README.md: head inputs 288 (layer-15 expansion) and 640, extra layers of 256, 128, 128, 64
    assert [fi.channels for fi in model.backbone.feature_info] == [288, 640]
    assert [block[-1][0].out_channels for block in model.head.extras] == [256, 128, 128, 64]
    assert model.head.classification_head[0][1].out_channels == 3 * 91
    report = load_weights(model, SSDLITE)  # strict: every tensor of the model from the file, nothing left over
    assert not (report.missing or report.unexpected or report.mismatched or report.ignored)
    assert len(report.loaded) == len(state)

    record = describe_weights(SSDLITE)
    assert (record.task, record.model_class, record.input_size, record.padding) == (
        "detection", "SSDLiteMobileNetV2", 200, "tf_same")
    config = record.model_config
    assert config["category_ids"] == list(range(1, 91))  # output i = label-map id i + 1 = COCO category id
    assert record.class_names[:3] == ["person", "bicycle", "car"] and record.class_names[11] == "N/A"  # id 12
    assert (config["score_thresh"], config["nms_thresh"], config["detections_per_img"]) == (1e-8, 0.6, 100)
    assert (config["classification_loss"], config["head_padding"], config["mean"]) == ("sigmoid_focal", "tf_same", [0.5] * 3)
    # the pipeline config's training loss, so that fine-tuning keeps the release's objective
    assert (config["focal_alpha"], config["focal_gamma"], config["localization_per_coordinate"]) == (0.75, 2.0, True)
    assert record.metrics["coco128_val_map_interpreter"] == 0.175


@needs_ssdlite
def test_ssdlite_anchors_are_the_files():
    """The file feeds TF's anchors (ycenter, xcenter, h, w in [0, 1]) to its post-processing operator as a constant:
    ours at 200x200 are the same 933 boxes. TF computes them in float32, we in float64 rounded once: they agree
    to one float32 ulp (2.4e-7 for the sides between 1 and 2); a wrong setting (aspect ratio 1/3 where the config
    says 0.3333) is off by 8e-5."""
    _, info = read_tflite(SSDLITE)
    model = model_from_weights(SSDLITE)[0].eval()
    with torch.no_grad():
        anchors = model.forward_head(torch.zeros(1, 3, 200, 200))["anchors"]
    from torchvision.ops import box_convert

    ours = box_convert(anchors.double() / 200, "xyxy", "cxcywh")[:, [1, 0, 3, 2]].float()
    assert ours.shape == info["anchors"].shape == (933, 4)
    torch.testing.assert_close(ours, info["anchors"], rtol=0, atol=2.5e-7)


@needs_ssdlite
def test_ssdlite_raw_outputs_match_interpreter():
    """The 91 class logits and the box encodings of every anchor, ours (float) against the int8 interpreter's.

    Tolerance, from int8 noise: fed the interpreter's own input, each of our 88 convs reproduces its int8 output
    to half a quantization step (rounding). End to end, the rounding of some 70 requantized activations
    accumulates: on these two photos our logits differ by at most 0.30 (6 int8 steps of the logit tensor, 0.050)
    and the box codes by 0.87 (10 steps of 0.086); a simulation that rounds each of our activations onto the
    file's own int8 grid differs from the interpreter as much (0.30 / 0.68), so this is int8 noise, not a port
    error. The bounds below leave room (10 and 14 steps); the port errors fall far outside them: symmetric
    padding in the backbone or the head, or a shortcut in the first bottleneck, give logit differences of 2.2-6.
    """
    runner = load_tool("tflite_parity").DetectorRunner(SSDLITE)
    model = model_from_weights(SSDLITE)[0].eval()
    for name in ("bird_segmentation.bmp", "dog_segmentation.bmp"):
        q = photo(name, 200)
        theirs = runner(q)
        x = (torch.tensor(q, dtype=torch.float32) - 127) / 127.5  # the interpreter's reading of q (zero point 127)
        with torch.no_grad():
            head = model.forward_head(x.permute(2, 0, 1)[None] * 0.5 + 0.5)  # the model maps [0, 1] to [-1, 1]
        logits = head["cls_logits"][0].numpy()
        boxes = head["bbox_regression"][0].numpy()[:, [1, 0, 3, 2]]  # ours (tx, ty, tw, th) -> TF's (ty, tx, th, tw)
        d_logits, d_boxes = np.abs(logits - theirs["logits"]), np.abs(boxes - theirs["box_encodings"])
        assert d_logits.max() <= 10 * runner.logit_step and d_logits.mean() <= 1.5 * runner.logit_step, name
        assert d_boxes.max() <= 14 * runner.box_step and d_boxes.mean() <= runner.box_step, name


@needs_ssdlite
def test_ssdlite_detections_match_interpreter():
    """Every detection of the interpreter scoring >= 0.5 on the photos of shared/weights is among ours, same class,
    IoU >= 0.8 (its operator's float outputs; ours with the pipeline config's per-class NMS)."""
    tool = load_tool("tflite_parity")
    runner = tool.DetectorRunner(SSDLITE)
    model = model_from_weights(SSDLITE)[0].eval()
    photos = sorted(p for p in WEIGHTS.iterdir() if p.suffix in (".jpg", ".bmp") and "mask" not in p.name)
    found = wanted = 0
    for path in photos:
        q = photo(path.name, 200)
        with torch.no_grad():
            ours = model(uint8_batch(q))[0]  # the photo as it is: the model normalises it
        ours["boxes"] = ours["boxes"] / 200
        matched, total = tool._share_matched(runner(q), ours, 0.5, 0.8)
        assert matched == total, path.name
        found, wanted = found + matched, wanted + total
    assert wanted >= 8  # the photos do hold confident detections (10 with these photos)


@needs_ssdlite
def test_ssdlite_refuses_a_trunk_that_does_not_fit(monkeypatch):
    """A conv of another width (simulated on the release: the first 32-channel projection cut to 8 channels) is
    named, with the closest MobileNetV2's expectation."""
    import backbones.tflite as tflite

    dequantize = tflite._dequantize

    def narrower(interp, detail, path):
        value = dequantize(interp, detail, path)
        return value[:8] if detail["name"].endswith("block_6_project/Conv2D") else value

    monkeypatch.setattr(tflite, "_dequantize", narrower)
    with pytest.raises(WeightsError, match=r"ssdlite.*do not fit a MobileNetV2 trunk.*conv 20 \(features.7.conv.2\)"):
        read_tflite(SSDLITE)


COCO128 = WEIGHTS.parent / "data" / "coco128"
needs_coco128 = pytest.mark.skipif(not (COCO128 / "annotations" / "instances_val2017.json").is_file(),
                                   reason=f"needs the coco128 set in {COCO128}")


def _eval_config(tmp_path, *overrides: str):
    """configs/eval.yaml as tools/test.py composes it, with Hydra's record of the command-line overrides."""
    from hydra import compose, initialize_config_dir

    from vision_tasks.runner import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"run_dir={tmp_path}", "task=detection", "data=coco", f"data.root={COCO128}",
                                         "data.num_workers=0", "data.batch_size=16", "trainer.limit_val_batches=1",
                                         "trainer.enable_progress_bar=false", *overrides], return_hydra_config=True)
    from omegaconf import open_dict

    with open_dict(cfg):  # of Hydra's own node only what a run of tools/test.py keeps resolvable: the overrides
        cfg.hydra = {"overrides": {"task": list(cfg.hydra.overrides.task)}}
    return cfg


@needs_ssdlite
@needs_coco128
def test_tools_test_evaluates_the_ssdlite_release_on_coco(tmp_path):
    """tools/test.py weights=<the release> data=coco: at the record's 200x200, its 90 outputs mapped to the dataset's 80
    categories by COCO id (10 unused ids dropped), detections.json in the dataset's ids. (Full coco128 val: mAP 0.196.)"""
    from omegaconf import OmegaConf

    from vision_tasks import runner

    cfg = _eval_config(tmp_path / "run", f"weights={SSDLITE}")
    metrics = runner.test(cfg)
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").data.image_size == 200
    assert metrics["val/map"] > 0.1  # the first 16 photos
    categories = json.loads((COCO128 / "annotations" / "instances_val2017.json").read_text())["categories"]
    dataset_ids = {c["id"] for c in categories}
    detections = json.loads((tmp_path / "run" / "detections.json").read_text())
    assert detections and {d["category_id"] for d in detections} <= dataset_ids

    # data.image_size on the command line wins over the record
    cfg = _eval_config(tmp_path / "run320", f"weights={SSDLITE}", "data.image_size=320")
    runner.test(cfg)
    assert OmegaConf.load(tmp_path / "run320" / "config.yaml").data.image_size == 320


@needs_coco128
def test_tools_test_refuses_a_detector_whose_labels_nothing_relates(tmp_path):
    """A detector with 3 classes on an 80-category dataset: refused when its record names neither category ids nor
    classes, mapped by class name when it names its classes."""
    from safetensors.torch import save_file

    from vision_tasks import runner
    from vision_tasks.models import WeightsInfo

    model = ssdlite_mobilenet_v2(num_classes=3, width_mult=0.35)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "det.safetensors"))
    record = WeightsInfo(str(tmp_path / "det.safetensors"), "converted", model.preprocess.config, input_size=64,
                         model_class="SSDLiteMobileNetV2", model_config=model.config, task="detection")
    (tmp_path / "det.json").write_text(json.dumps(record.to_json()))
    with pytest.raises(ValueError, match="3 classes but the dataset has 80.*nothing relates"):
        runner.test(_eval_config(tmp_path / "run", f"weights={tmp_path / 'det.safetensors'}"))

    record.class_names = ["person", "N/A", "dog"]
    (tmp_path / "det.json").write_text(json.dumps(record.to_json()))
    metrics = runner.test(_eval_config(tmp_path / "run2", f"weights={tmp_path / 'det.safetensors'}"))
    assert "val/map" in metrics
