"""Fine-tuning from a task's weights (vision_tasks.models.transfer.load_pretrained): the class layers are kept
when the classes match, keep the rows of the data's classes when those are a subset of the weights' (by name,
or by COCO category id), start afresh otherwise (weights_head=auto), are kept or refused on demand (keep), or
always start afresh (reinit)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

import backbones
from vision_tasks.convert import convert
from vision_tasks.models import (WeightsInfo, deeplabv3_mobilenet_v2, mobilenet_v2_classifier, record_path,
                                 ssdlite_mobilenet_v2)
from vision_tasks.models.transfer import load_pretrained, match_labels

NAMES = ["cat", "dog", "fox"]
LOGGER = "vision_tasks.models.transfer"


@pytest.fixture()
def converted(tmp_path):
    """A 3-class classifier saved with its class names (a converted file and its record)."""
    torch.manual_seed(0)
    source = mobilenet_v2_classifier(num_classes=3, width_mult=0.35)
    torch.save(source.state_dict(), tmp_path / "source.pth")
    weights, _ = convert(tmp_path / "source.pth", tmp_path / "pets.safetensors", class_names=NAMES)
    return str(weights), source


def _save_whole(model, path, task, class_names):
    """A whole-model file with its record, as tools/convert_weights.py writes them."""
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    info = WeightsInfo(source=str(path), kind="converted", model_class=type(model).__name__,
                       model_config=dict(model.config), task=task, class_names=list(class_names))
    record_path(path).write_text(json.dumps(info.to_json()))
    return path


def _fresh(num_classes: int = 3):
    torch.manual_seed(1)
    return mobilenet_v2_classifier(num_classes=num_classes, width_mult=0.35)


def test_match_labels():
    assert match_labels([3, 1, 9], [1, 2, 3]) == [2, 0, -1]
    with pytest.raises(ValueError, match="no category in common"):
        match_labels(["a"], ["b"])
    with pytest.raises(ValueError, match="repeat"):
        match_labels(["a"], ["a", "a"])
    assert match_labels(["a", "b"], ["N/A", "b", "N/A", "a"]) == [3, 1]  # repeats of keys not asked for do not matter


def test_same_classes_keep_the_head(converted, caplog):
    weights, source = converted
    model = _fresh()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        report = load_pretrained(model, weights, NAMES)
    assert torch.equal(model.head.fc.weight, source.head.fc.weight)
    assert report.same and report.kept == NAMES and report.fresh == []
    assert "every layer loaded" in caplog.text


def test_a_subset_of_the_classes_keeps_their_rows_in_the_data_order(converted, caplog):
    weights, source = converted
    model = _fresh(num_classes=2)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        report = load_pretrained(model, weights, ["fox", "cat"])
    assert torch.equal(model.head.fc.weight, source.head.fc.weight[[2, 0]])
    assert torch.equal(model.head.fc.bias, source.head.fc.bias[[2, 0]])
    assert not report.same and report.kept == ["fox", "cat"] and report.by == "class name"
    assert "matched by class name" in caplog.text


def test_other_classes_start_the_head_afresh_and_say_so(converted, caplog):
    weights, source = converted
    model = _fresh()
    initial = model.head.fc.weight.clone()
    with caplog.at_level(logging.WARNING, logger=LOGGER):  # "cat" is shared, but "car" and "bus" are not
        report = load_pretrained(model, weights, ["car", "bus", "cat"])
    assert torch.equal(model.head.fc.weight, initial) and not torch.equal(initial, source.head.fc.weight)
    assert torch.equal(model.backbone.features[3].conv[0][0].weight, source.backbone.features[3].conv[0][0].weight)
    assert report.fresh == ["head.fc"] and report.kept == []
    assert "head.fc, which start afresh" in caplog.text and "do not include all the data's (car, bus, cat)" in caplog.text


def test_keep_refuses_and_reinit_always_starts_afresh(converted):
    weights, source = converted
    with pytest.raises(backbones.WeightsError, match="weights_head=keep, but the classes"):
        load_pretrained(_fresh(), weights, ["car", "bus", "bike"], head="keep")
    with pytest.raises(backbones.WeightsError, match="weights_head=keep"):  # a subset is not the same classes
        load_pretrained(_fresh(num_classes=2), weights, ["cat", "dog"], head="keep")
    model = _fresh()
    initial = model.head.fc.weight.clone()
    load_pretrained(model, weights, NAMES, head="reinit")
    assert torch.equal(model.head.fc.weight, initial)
    five = _fresh(num_classes=5)  # another count, other classes: the head starts afresh, the rest is loaded
    load_pretrained(five, weights, NAMES + ["owl", "hen"])
    assert torch.equal(five.backbone.features[0][0].weight, source.backbone.features[0][0].weight)
    with pytest.raises(ValueError, match="weights_head must be"):
        load_pretrained(_fresh(), weights, NAMES, head="sometimes")


def test_ssdlite_subset_by_category_id_keeps_background_and_class_rows(tmp_path):
    """A 4-class COCO-style detector (ids 1, 3, 18, 44) fine-tuned on data with ids 18 and 1: the class
    predictors' per-anchor blocks keep the background slot and the two classes' rows, so the fine-tuned
    model's class logits start out as the release's, column for column."""
    torch.manual_seed(0)
    kwargs = dict(image_size=96, width_mult=0.35, classification_loss="sigmoid")
    source = ssdlite_mobilenet_v2(num_classes=4, category_ids=[1, 3, 18, 44], **kwargs).eval()
    weights = _save_whole(source, tmp_path / "det.safetensors", "detection", ["person", "car", "dog", "bottle"])
    torch.manual_seed(1)
    model = ssdlite_mobilenet_v2(num_classes=2, category_ids=[18, 1], **kwargs).eval()
    report = load_pretrained(model, weights, ["Dog", "person"], category_ids=[18, 1])
    assert report.by == "category id" and report.kept == ["Dog", "person"] and report.fresh == []
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        ours, theirs = model.forward_head(images)["cls_logits"], source.forward_head(images)["cls_logits"]
    assert ours.shape[-1] == 3 and theirs.shape[-1] == 5
    torch.testing.assert_close(ours, theirs[..., [0, 3, 1]])


def test_deeplab_subset_by_name_keeps_the_logit_rows(tmp_path):
    torch.manual_seed(0)
    voc = ["background", "aeroplane", "bicycle", "bird", "boat"]
    source = deeplabv3_mobilenet_v2(num_classes=5, width_mult=0.35).eval()
    weights = _save_whole(source, tmp_path / "seg.safetensors", "segmentation", voc)
    model = deeplabv3_mobilenet_v2(num_classes=3, width_mult=0.35).eval()
    load_pretrained(model, weights, ["background", "bird", "aeroplane"])
    images = torch.rand(1, 3, 65, 65)
    with torch.no_grad():
        torch.testing.assert_close(model(images), source(images)[:, [0, 3, 1]])


def test_a_whole_model_file_brings_its_architecture_to_training(tmp_path):
    """runner._model: weights= holding a whole detector (here 0.35 wide, 4 COCO classes) train that detector,
    with the data's classes and category ids, the data's image size and the config's freeze_bn and bn_momentum,
    whatever model.width_mult says; load_pretrained then keeps the rows of the data's classes."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from vision_tasks.models import SSDLiteMobileNetV2, describe_weights
    from vision_tasks.runner import CONFIG_DIR, _model

    torch.manual_seed(0)
    source = ssdlite_mobilenet_v2(num_classes=4, category_ids=[1, 3, 18, 44], image_size=96, width_mult=0.35)
    weights = _save_whole(source, tmp_path / "det.safetensors", "detection", ["person", "car", "dog", "bottle"])
    record = json.loads(record_path(weights).read_text())  # a release's record need not name every argument
    del record["model_config"]["freeze_bn"]
    record_path(weights).write_text(json.dumps(record))
    cfg = OmegaConf.create({"model": OmegaConf.load(CONFIG_DIR / "model" / "detection.yaml"), "data": {"image_size": 128}})
    cfg.model.freeze_bn = True
    cfg.model.bn_momentum = 0.1
    data = SimpleNamespace(num_classes=2, category_ids=[18, 1], class_names=["dog", "person"], image_size=128)
    model = _model(cfg, data, describe_weights(str(weights)))
    assert isinstance(model, SSDLiteMobileNetV2) and model.num_classes == 2 and model.category_ids == [18, 1]
    assert model.config["width_mult"] == 0.35 and model.config["freeze_bn"] is True and model.config["image_size"] == 128
    head_bns = [m for m in model.head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert head_bns and {m.momentum for m in head_bns} == {0.1}  # the source's 0.03 gives way to the config's
    report = load_pretrained(model, str(weights), data.class_names, data.category_ids)
    assert report.kept == ["dog", "person"] and report.fresh == []


def test_category_ids_decide_only_when_the_names_agree():
    """COCO's category ids are shared by COCO-format files; the 1..C that YOLO / VOC data number their classes
    with are not COCO's, and the names tell: person / car / dog must map to COCO's 1 / 3 / 18, not 1 / 2 / 3."""
    from vision_tasks.models.transfer import match_classes

    coco_ids, coco_names = [1, 2, 3, 18], ["person", "bicycle", "car", "dog"]
    assert match_classes([1, 2, 3], ["person", "car", "dog"], coco_ids, coco_names) == ([0, 2, 3], "class name")
    assert match_classes([18, 1], ["Dog", "person"], coco_ids, coco_names) == ([3, 0], "category id")
    assert match_classes([18, 1], None, coco_ids, coco_names) == ([3, 0], "category id")
    assert match_classes(None, ["cat"], coco_ids, coco_names) == (None, "class name")
    assert match_classes(None, None, coco_ids, coco_names) == (None, "")


def _run(run_dir, *overrides):
    from hydra import compose, initialize_config_dir

    from conftest import TINY
    from vision_tasks import runner

    with initialize_config_dir(config_dir=str(runner.CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"run_dir={run_dir}", "task=classification", *TINY, *overrides])
    return runner.train(cfg)


@pytest.mark.parametrize("validate_start", [True, False])
def test_fine_tuning_a_whole_model_never_leaves_a_best_checkpoint_worse_than_the_start(tmp_path, env, one_thread,
                                                                                       caplog, validate_start):
    """weights= a whole classifier of the data's classes, trained one step at lr 0 with frozen BatchNorm: no epoch
    can beat the start, so best.ckpt is the start's own checkpoint (written before training, global step 0, its
    weights those of the file); with validate_start=false best.ckpt is the epoch's, as before."""
    first = _run(tmp_path / "first")
    start = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    with caplog.at_level(logging.INFO, logger="vision_tasks.runner"):
        second = _run(tmp_path / "second", f"weights={first / 'checkpoints' / 'last.ckpt'}", "task.optimizer.lr=0.0",
                      "model.freeze_bn=true", "trainer.limit_train_batches=1", f"validate_start={validate_start}")
    best = torch.load(second / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 1
    if validate_start:
        assert best["global_step"] == 0 and "optimizer_states" not in best  # the start, validated before training
        assert best["vision_tasks"]["task"] == "classification"  # tools/test.py and predict.py read it as any other
        assert best["state_dict"] and set(best["state_dict"]) <= set(start)  # frozen BNs: no num_batches_tracked
        for key, value in best["state_dict"].items():
            torch.testing.assert_close(value, start[key], rtol=0, atol=0, msg=key)
        assert "no epoch beat the weights the run started from" in caplog.text
    else:
        assert best["global_step"] == 1 and "no epoch beat" not in caplog.text


def test_a_detector_checkpoint_is_evaluated_at_the_size_it_was_trained_at():
    """tools/test.py ckpt_path=<a fine-tuned SSDLite release, trained at 200>: data.image_size follows the checkpoint's
    model (at the config's 320 its anchors missed: val/map 0.043 instead of 0.196), unless given on the command line."""
    from omegaconf import OmegaConf

    from vision_tasks.runner import _record_input_size

    model = ssdlite_mobilenet_v2(num_classes=2, width_mult=0.35, image_size=200)
    cfg = OmegaConf.create({"data": {"image_size": 320}, "ckpt_path": "best.ckpt", "weights": None})
    _record_input_size(cfg, None, model)
    assert cfg.data.image_size == 200
    cfg = OmegaConf.create({"data": {"image_size": 320}, "ckpt_path": "best.ckpt", "weights": None,
                            "hydra": {"overrides": {"task": ["data.image_size=320"]}}})
    _record_input_size(cfg, None, model)
    assert cfg.data.image_size == 320
