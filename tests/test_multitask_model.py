"""MultiTaskMobileNetV2: one backbone pass for any subset of the three heads; heads loaded from single-task
models give the single-task outputs; freezing; counts; bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from backbones import WeightsError
from conftest import randomize_bn
from vision_tasks.models import (
    HEADS,
    DeepLabV3MobileNetV2,
    MobileNetV2Classifier,
    MultiTaskMobileNetV2,
    SSDLiteMobileNetV2,
    build_model,
    multitask_mobilenet_v2,
)
from vision_tasks.models.weights import CHECKPOINT_KEY
from vision_tasks.stats import count_params

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTH = 0.35
OPTIONS = {"classification": {"num_classes": 5}, "detection": {"num_classes": 3}, "segmentation": {"num_classes": 4}}
SUBSETS = [c for r in (1, 2, 3) for c in itertools.combinations(HEADS, r)]


def _images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _model(heads=HEADS, **kwargs) -> MultiTaskMobileNetV2:
    torch.manual_seed(0)
    return MultiTaskMobileNetV2({name: OPTIONS[name] for name in heads}, width_mult=WIDTH, **kwargs)


def _checkpoint(tmp_path, model, task: str):
    """A file as this project's Lightning checkpoints are written (vision_tasks.tasks.base)."""
    path = tmp_path / f"{task}.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                CHECKPOINT_KEY: {"task": task, "model_class": type(model).__name__, "model_config": model.config,
                                 "class_names": None}}, path)
    return path


def _assert_same_detections(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys()
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-5, rtol=1e-5)
        assert torch.equal(a["labels"], b["labels"])


# ---------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("output_stride", [32, 16])
@pytest.mark.parametrize("heads", SUBSETS, ids="+".join)
def test_eval_outputs_of_every_head_subset(heads, output_stride):
    model = _model(heads, output_stride=output_stride).eval()
    with torch.no_grad():
        out = model(_images(2, 64), original_sizes=[(128, 64), (64, 32)])
    assert list(out) == list(heads)
    if "classification" in heads:
        assert out["classification"].shape == (2, 5)
    if "detection" in heads:
        assert len(out["detection"]) == 2
        for det, (h, w) in zip(out["detection"], [(128, 64), (64, 32)]):
            assert set(det) == {"boxes", "scores", "labels"} and det["boxes"].shape[1] == 4
            if len(det["boxes"]):
                assert det["boxes"][:, 2].max() <= w + 1e-3 and det["boxes"][:, 3].max() <= h + 1e-3
            assert det["labels"].dtype == torch.int64 and (det["labels"] < 3).all()
    if "segmentation" in heads:
        assert out["segmentation"].shape == (2, 4, 64, 64)


def test_taps_are_the_union_of_the_heads_needs():
    assert _model(("segmentation",)).backbone.out_features == ("layer18",)  # no 1280-channel conv built
    assert _model(("classification",)).backbone.out_features == ("layer19",)
    assert _model().backbone.out_features == ("layer15_expand", "layer18", "layer19")
    skip = MultiTaskMobileNetV2({"segmentation": {"num_classes": 4, "skip_feature": "layer14", "aux_feature": "layer7"}},
                                width_mult=WIDTH)
    assert skip.backbone.out_features == ("layer7", "layer14", "layer18")


@pytest.mark.parametrize("output_stride, strides", [(32, [16, 32, 32]), (16, [16, 16, 16])])
def test_output_stride_options(output_stride, strides):
    """32: SSDLite's maps at 16 and 32, DeepLab on layer18 at 32; 16: everything the backbone gives at 16, and
    SSDLite's extra layers do the downsampling (its anchors grow accordingly)."""
    model = _model(output_stride=output_stride).eval()
    assert [info.stride for info in model.backbone.feature_info] == strides
    features = model.backbone(_images(1, 128))
    head_out = model.detection(features, (128, 128))
    _, _, sizes = model.detection.head([features[name] for name in model.detection.FEATURES])
    if output_stride == 32:
        assert sizes == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    else:
        assert sizes == [(8, 8), (8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    per_location = model.detection.anchor_generator.num_anchors_per_location()
    assert head_out["anchors"].shape[0] == sum(h * w * a for (h, w), a in zip(sizes, per_location))
    assert model.segmentation.head.atrous_rates == ()


def test_skip_feature_runs_the_deeplab_head_at_stride_16():
    model = MultiTaskMobileNetV2({"segmentation": {"num_classes": 4, "skip_feature": "layer14"}}, width_mult=WIDTH).eval()
    seen = []
    model.segmentation.head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    with torch.no_grad():
        logits = model(_images(1, 128))["segmentation"]
    channels = {info.name: info.channels for info in model.backbone.feature_info}
    assert seen == [(1, channels["layer18"] + channels["layer14"], 8, 8)]
    assert logits.shape == (1, 4, 128, 128)


def test_backbone_runs_once_per_forward():
    model = _model()
    calls = []
    model.backbone.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        model.eval()(_images())
        assert len(calls) == 1
        model.train()(_images())
    assert len(calls) == 2


def test_training_outputs_feed_the_single_task_losses():
    model = MultiTaskMobileNetV2({"classification": {"num_classes": 5}, "detection": {"num_classes": 3},
                                  "segmentation": {"num_classes": 4, "aux_feature": "layer7"}}, width_mult=WIDTH).train()
    out = model(_images(2, 128))
    assert set(out) == {"classification", "detection", "segmentation", "segmentation_aux"}
    assert set(out["detection"]) == {"cls_logits", "bbox_regression", "anchors", "image_size"}
    assert out["segmentation"].shape == out["segmentation_aux"].shape == (2, 4, 128, 128)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model.detection.loss(out["detection"], targets)
    masks = torch.randint(0, 4, (2, 128, 128))
    total = (F.cross_entropy(out["classification"], torch.tensor([0, 4])) + losses["classification"]
             + losses["localization"] + F.cross_entropy(out["segmentation"], masks)
             + F.cross_entropy(out["segmentation_aux"], masks))
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------------------------------- counts
def test_parameter_count_is_one_backbone_plus_the_three_heads():
    joint = _model()
    classifier = MobileNetV2Classifier(num_classes=5, width_mult=WIDTH)
    detector = SSDLiteMobileNetV2(num_classes=3, width_mult=WIDTH)
    segmenter = DeepLabV3MobileNetV2(num_classes=4, width_mult=WIDTH, output_stride=32)
    singles = count_params(classifier) + count_params(detector) + count_params(segmenter)
    # the detector's backbone is the joint one (up to layer19); the classifier's is the same, DeepLab's stops at layer18
    assert count_params(joint) == singles - count_params(classifier.backbone) - count_params(segmenter.backbone)
    assert count_params(joint.backbone) == count_params(detector.backbone)
    for name, single in (("classification", classifier), ("detection", detector), ("segmentation", segmenter)):
        assert count_params(getattr(joint, name)) == count_params(single) - count_params(single.backbone)


def test_config_rebuilds_the_model():
    model = _model(output_stride=16, frozen=("backbone",))
    rebuilt = build_model("MultiTaskMobileNetV2", model.config)
    assert rebuilt.config == model.config and rebuilt.frozen == ("backbone",)
    rebuilt.load_state_dict(model.state_dict())
    assert model.state_dict().keys() == rebuilt.state_dict().keys()
    assert {k.split(".")[0] for k in model.state_dict()} == {"backbone", *HEADS}


# ---------------------------------------------------------------------------------------------- parity
def test_detection_head_from_an_ssdlite_model_gives_its_detections():
    torch.manual_seed(1)
    single = SSDLiteMobileNetV2(num_classes=3, width_mult=WIDTH, score_thresh=0.2)
    randomize_bn(single, seed=1)
    single.eval()
    joint = MultiTaskMobileNetV2.from_single_task({"detection": single}).eval()
    assert joint.output_stride == 32 and joint.config["bn_eps"] == single.config["bn_eps"]
    images, sizes = _images(2, 96, seed=3), [(200, 100), (96, 96)]
    with torch.no_grad():
        ours, theirs = joint(images, original_sizes=sizes)["detection"], single(images, original_sizes=sizes)
    assert sum(len(d["boxes"]) for d in theirs) > 0
    _assert_same_detections(ours, theirs)


@pytest.mark.parametrize("output_stride", [32, 16])
def test_segmentation_head_from_a_deeplab_model_gives_its_logits(output_stride):
    torch.manual_seed(2)
    single = DeepLabV3MobileNetV2(num_classes=4, width_mult=WIDTH, output_stride=output_stride, aspp=True,
                                  aux_feature="layer7")
    randomize_bn(single, seed=2)
    single.eval()
    joint = MultiTaskMobileNetV2.from_single_task({"segmentation": single}).eval()
    assert joint.output_stride == output_stride
    images = _images(2, 80, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(joint(images)["segmentation"], single(images), atol=1e-5, rtol=1e-5)
        assert single.segment(list(images))  # the single-task model is unchanged by lending its head


def test_all_three_heads_from_single_task_models_sharing_a_backbone():
    """With one backbone (copied into the three single-task models), the joint model gives each one's outputs."""
    torch.manual_seed(3)
    classifier = MobileNetV2Classifier(num_classes=5, width_mult=WIDTH)
    detector = SSDLiteMobileNetV2(num_classes=3, width_mult=WIDTH, bn_eps=1e-5, bn_momentum=0.1, score_thresh=0.2)
    segmenter = DeepLabV3MobileNetV2(num_classes=4, width_mult=WIDTH, output_stride=32)
    for model in (classifier, detector, segmenter):
        randomize_bn(model, seed=3)
    detector.backbone.load_state_dict(classifier.backbone.state_dict())
    segmenter.backbone.load_state_dict(classifier.backbone.state_dict(), strict=False)  # it stops at layer18
    joint = MultiTaskMobileNetV2.from_single_task(
        {"classification": classifier, "detection": detector, "segmentation": segmenter}, backbone="classification")
    images = _images(2, 96, seed=5)
    for model in (joint, classifier, detector, segmenter):
        model.eval()
    with torch.no_grad():
        out = joint(images)
        torch.testing.assert_close(out["classification"], classifier(images), atol=1e-5, rtol=1e-5)
        _assert_same_detections(out["detection"], detector(images))
        torch.testing.assert_close(out["segmentation"], segmenter(images), atol=1e-5, rtol=1e-5)


def test_heads_and_backbone_load_from_checkpoint_files(tmp_path):
    torch.manual_seed(4)
    detector = SSDLiteMobileNetV2(num_classes=3, width_mult=WIDTH, score_thresh=0.2)
    segmenter = DeepLabV3MobileNetV2(num_classes=4, width_mult=WIDTH, output_stride=32)
    randomize_bn(detector, seed=4)
    randomize_bn(segmenter, seed=5)
    det_file, seg_file = _checkpoint(tmp_path, detector, "detection"), _checkpoint(tmp_path, segmenter, "segmentation")
    joint = MultiTaskMobileNetV2.from_single_task({"detection": det_file, "segmentation": seg_file},
                                                  backbone="detection", frozen=["backbone", "detection"])
    assert joint.frozen == ("backbone", "detection")
    for key, value in detector.state_dict().items():
        target = key if key.startswith("backbone.") else f"detection.{key}"
        assert torch.equal(joint.state_dict()[target], value), key
    for key, value in segmenter.state_dict().items():
        if not key.startswith("backbone."):
            assert torch.equal(joint.state_dict()[f"segmentation.{key}"], value), key
    # and the joint model's own file loads back, whole or head by head
    joint_file = _checkpoint(tmp_path, joint, "multitask")
    again = multitask_mobilenet_v2(heads=joint.config["heads"], width_mult=WIDTH, weights=str(joint_file))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in joint.state_dict().items())
    fresh = _model(("detection",))
    fresh.load_head("detection", joint_file)
    fresh.load_backbone(joint_file)
    assert all(torch.equal(v, joint.state_dict()[k]) for k, v in fresh.state_dict().items())


# ---------------------------------------------------------------------------------------------- freezing
def _train_step(model: MultiTaskMobileNetV2) -> None:
    out = model(_images(2, 96))
    loss = out["classification"].logsumexp(1).mean() + out["segmentation"].mean()
    loss = loss + out["detection"]["cls_logits"].mean() + out["detection"]["bbox_regression"].square().mean()
    loss.backward()


def test_freezing_one_head_leaves_the_others_training():
    model = _model(frozen=("detection",)).train()
    assert not model.detection.training and model.classification.training and model.backbone.training
    before = {k: v.clone() for k, v in model.detection.state_dict().items() if "running" in k}
    _train_step(model)
    assert all(p.grad is None and not p.requires_grad for p in model.detection.parameters())
    for part in (model.backbone, model.classification, model.segmentation):
        assert all(p.grad is not None for p in part.parameters())
    assert all(torch.equal(v, model.detection.state_dict()[k]) for k, v in before.items())  # BN statistics kept


def test_freezing_the_backbone_keeps_its_batchnorm_statistics():
    model = _model().freeze("backbone")
    model.train()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    _train_step(model)
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for name in HEADS for p in getattr(model, name).parameters())
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in before.items())
    assert model.config["frozen"] == ["backbone"]
    model.unfreeze("backbone")
    assert model.backbone.training and all(p.requires_grad for p in model.backbone.parameters())
    assert model.config["frozen"] == []


# ---------------------------------------------------------------------------------------------- bad input
def test_unknown_and_missing_heads_are_refused():
    with pytest.raises(ValueError, match=r"unknown head 'depth'; the heads are classification, detection, segmentation"):
        MultiTaskMobileNetV2(("classification", "depth"), width_mult=WIDTH)
    with pytest.raises(ValueError, match="at least one head"):
        MultiTaskMobileNetV2((), width_mult=WIDTH)
    with pytest.raises(ValueError, match=r"unknown detection option\(s\) num_class; .*num_classes"):
        MultiTaskMobileNetV2({"detection": {"num_class": 3}}, width_mult=WIDTH)
    with pytest.raises(ValueError, match=r"output_stride must be one of \(32, 16\).*got 8"):
        MultiTaskMobileNetV2(width_mult=WIDTH, output_stride=8)
    model = _model(("classification", "detection"))
    with pytest.raises(ValueError, match="no segmentation head; its parts are backbone, classification, detection"):
        model.freeze("segmentation")
    with pytest.raises(ValueError, match="unknown part 'heads'"):
        model.freeze("heads")
    with pytest.raises(ValueError, match="no segmentation head"):
        model.load_head("segmentation", DeepLabV3MobileNetV2(num_classes=4, width_mult=WIDTH))


def test_loss_weights_for_absent_or_unknown_heads_are_refused():
    model = _model(("classification", "detection"))
    assert model.check_loss_weights({"detection": 2}) == {"classification": 1.0, "detection": 2.0}
    with pytest.raises(ValueError, match="loss weight.* for segmentation, which this model does not have; its heads "
                                         "are classification, detection"):
        model.check_loss_weights({"segmentation": 1.0})
    with pytest.raises(ValueError, match="unknown head in loss_weights 'depth'"):
        model.check_loss_weights({"depth": 1.0})
    with pytest.raises(ValueError, match="finite number >= 0"):
        model.check_loss_weights({"detection": -1})


def test_head_of_another_width_is_refused_naming_both_and_the_file(tmp_path):
    detector = SSDLiteMobileNetV2(num_classes=3, width_mult=0.5)
    path = _checkpoint(tmp_path, detector, "detection")
    model = _model(("detection",))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=rf"{path}: its detection head was trained on a backbone of width_mult=0.5, "
                                           rf"this model's backbone has width_mult={WIDTH}"):
        model.load_head("detection", path)
    with pytest.raises(WeightsError, match=rf"{path}: its backbone has width_mult=0.5, this model's width_mult={WIDTH}"):
        model.load_backbone(path)
    with pytest.raises(WeightsError, match="(?s)does not fit the detection head of this model.*shape mismatch"):  # no config: by shapes
        model.load_head("detection", detector.state_dict())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_head_of_another_output_stride_is_refused_naming_both(tmp_path):
    segmenter = DeepLabV3MobileNetV2(num_classes=4, width_mult=WIDTH, output_stride=16)
    path = _checkpoint(tmp_path, segmenter, "segmentation")
    model = _model(("segmentation",))
    with pytest.raises(WeightsError, match=rf"{path}: its segmentation head was trained at output_stride=16, this "
                                           "model runs at output_stride=32"):
        model.load_head("segmentation", path)
    model.load_head("segmentation", path, strict_output_stride=False)  # taken knowingly, to fine-tune
    detector = SSDLiteMobileNetV2(num_classes=3, width_mult=WIDTH)
    with pytest.raises(ValueError, match=r"different output strides: detection 32 \(.*\), segmentation 16 \(.*\); "
                                         "pass output_stride"):
        MultiTaskMobileNetV2.from_single_task({"detection": detector, "segmentation": path})
    with pytest.raises(WeightsError, match="trained at output_stride=32, this model runs at output_stride=16"):
        MultiTaskMobileNetV2.from_single_task({"detection": detector, "segmentation": path}, output_stride=16)


def test_head_of_another_task_is_refused(tmp_path):
    path = _checkpoint(tmp_path, DeepLabV3MobileNetV2(num_classes=4, width_mult=WIDTH, output_stride=32), "segmentation")
    with pytest.raises(WeightsError, match=rf"{path} holds a DeepLabV3MobileNetV2, not a SSDLiteMobileNetV2"):
        _model(("detection",)).load_head("detection", path)


def test_heads_from_single_head_joint_checkpoints_keep_their_options(tmp_path):
    # "separate heads": two joint models with one head each (e.g. trained on one frozen backbone) combined into
    # one; each head's options (num_classes, skip_feature) come from the joint file's "heads" entry
    torch.manual_seed(0)
    det = MultiTaskMobileNetV2({"detection": {"num_classes": 3}}, width_mult=WIDTH, output_stride=16)
    seg = MultiTaskMobileNetV2({"segmentation": {"num_classes": 4, "skip_feature": "layer7"}}, width_mult=WIDTH,
                               output_stride=16)
    seg.load_backbone(det)  # the same backbone (seg needs fewer layers: layer19 is SSDLite's)
    joint = MultiTaskMobileNetV2.from_single_task(
        {"detection": _checkpoint(tmp_path, det, "multitask"), "segmentation": _checkpoint(tmp_path / "..", seg, "multitask")},
        backbone="detection")
    assert joint.output_stride == 16 and joint.config["heads"]["segmentation"]["skip_feature"] == "layer7"
    images = _images()
    with torch.no_grad():
        out = joint.eval()(images)
        torch.testing.assert_close(out["segmentation"], seg.eval()(images)["segmentation"])
        _assert_same_detections(out["detection"], det.eval()(images)["detection"])
