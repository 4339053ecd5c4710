"""Exports (vision_tasks.export, tools/export.py): every task model as ONNX (run by ONNX Runtime) and as a
torch.export program (.pt2), run in its runtime at other batch sizes than traced, against the PyTorch model.

Tiny models (width 0.35, 64-pixel inputs, 3-5 classes). The detector's BatchNorm statistics are those of a batch
of images, so that its outputs depend on the image, and its class biases are set so that it finds 2-20 objects
per image: the comparison of detections scoring >= 0.3, of the counts and of the padding means something.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, run_tool
from vision_tasks.export import (DETECTION_OUTPUTS, ExportableDetector, check_export, export_model, export_program,
                                 report_path)
from vision_tasks.models import deeplabv3_mobilenet_v2, mobilenet_v2_classifier, ssdlite_mobilenet_v2

needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs onnx, onnxscript and onnxruntime (pip install 'vision-tasks[export]')")

SIZE = 64
LIMIT = 20  # detections_per_img of the tiny detector


def _images(n: int, seed: int = 1) -> torch.Tensor:
    """Blocky random images: large uniform patches give a random network something to see."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=(SIZE, SIZE), mode="nearest")


def tiny_detector(classification_loss: str = "sigmoid") -> torch.nn.Module:
    torch.manual_seed(0)
    model = ssdlite_mobilenet_v2(num_classes=3, image_size=SIZE, width_mult=0.35, score_thresh=0.2,
                                 detections_per_img=LIMIT, classification_loss=classification_loss, bn_momentum=1.0,
                                 padding="tf_same", head_padding="tf_same")
    with torch.no_grad():
        model.train()(torch.rand(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2)))  # BN stats of a batch
        for predictor in model.head.classification_head:
            predictor[1].bias.fill_(-2.0)
            predictor[1].bias.view(-1, 4)[:, 0] = 0.0  # the background logit (softmax: background stays likely)
    return model.eval()


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "classification": mobilenet_v2_classifier(num_classes=5, width_mult=0.35, padding="tf_same",
                                                  mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).eval(),
        "segmentation": deeplabv3_mobilenet_v2(num_classes=4, width_mult=0.35).eval(),
        "detection": tiny_detector(),
    }


FORMATS = [pytest.param("onnx", marks=needs_onnx), "pt2"]


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """Each model exported once per format (ONNX exports take 20-40 s here), for the tests below to share."""
    folder = tmp_path_factory.mktemp("exports")
    cache = {}

    def get(task: str, fmt: str):
        if (task, fmt) not in cache:
            cache[task, fmt] = export_model(models[task], folder / f"{task}.{fmt}", fmt, image_size=SIZE,
                                            metadata={"class_names": [f"c{i}" for i in range(models[task].num_classes)]})
        return cache[task, fmt]

    return get


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
def test_export_runs_in_its_runtime_at_any_batch_and_matches_pytorch(models, exported, task, fmt):
    model = models[task]
    images = _images(5)
    # batches of 2, 2 and 1: the export was traced at another batch (2 random images), its batch axis is dynamic
    assert_parity(check_export(exported(task, fmt), model, images, batch_size=2), task, images=5)


def assert_parity(report: dict, task: str, images: int) -> None:
    """A float export's check: logits to 1e-4 with every argmax equal; for a detector, some detections >= 0.3 (not
    vacuous), every count and padding right, every such detection matched with its box within 1e-3."""
    assert report["ok"], report
    if task != "detection":
        assert report["max_abs_diff"] <= 1e-4 and report["argmax_agreement"] == 1.0
        return
    assert report["detections_eager>=0.3"] > 0
    assert report["images_count_equal"] == report["images_padding_ok"] == images
    assert report["max_box_diff"] <= 1e-3 and report["unmatched_eager"] == report["unmatched_exported"] == 0


def _run(path, images):
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == list(DETECTION_OUTPUTS)
        return [torch.from_numpy(o) for o in session.run(None, {"images": images.numpy()})]
    return list(torch.export.load(str(path)).module()(images))


@pytest.mark.parametrize("fmt", FORMATS)
def test_detection_outputs_are_padded_as_documented(models, exported, fmt):
    """num_detections is the eager model's number of detections; the rows after it are boxes and scores 0 and
    labels -1; the rows before it are the eager detections in their order (scores decreasing)."""
    model = models["detection"]
    images = _images(4, seed=3)
    boxes, scores, labels, count = _run(exported("detection", fmt), images)
    assert boxes.shape == (4, LIMIT, 4) and scores.shape == labels.shape == (4, LIMIT) and count.shape == (4,)
    assert labels.dtype == count.dtype == torch.int64
    with torch.no_grad():
        eager = model(images)
    counts = [len(d["boxes"]) for d in eager]
    assert count.tolist() == counts
    assert max(counts) == LIMIT and min(counts) < LIMIT  # both the limit and the padding are exercised
    for i, d in enumerate(eager):
        n = counts[i]
        assert (boxes[i, n:] == 0).all() and (scores[i, n:] == 0).all() and (labels[i, n:] == -1).all()
        assert (scores[i, :n].diff() <= 0).all()
        confident = d["scores"] >= 0.3
        torch.testing.assert_close(labels[i, :n][confident], d["labels"][confident], rtol=0, atol=0)
        torch.testing.assert_close(boxes[i, :n][confident], d["boxes"][confident], rtol=0, atol=1e-3)


def test_softmax_detector_and_another_export_size(tmp_path):
    """The score conversion follows the model (softmax here), and the anchors follow the export size."""
    model = tiny_detector("softmax")
    wrapper = ExportableDetector(model, image_size=(64, 96))
    assert wrapper.post.anchors.shape == model.forward_head(torch.zeros(1, 3, 64, 96))["anchors"].shape
    path = export_program(model, tmp_path / "det.pt2", image_size=(64, 96))
    images = F.interpolate(_images(3), size=(64, 96), mode="nearest")
    report = check_export(path, model, images, batch_size=3)
    assert report["ok"] and report["detections_eager>=0.3"] > 0, report


@needs_onnx
def test_exports_carry_their_metadata(exported):
    import onnx

    props = {p.key: p.value for p in onnx.load(str(exported("classification", "onnx"))).metadata_props}
    meta = json.loads(props["vision_tasks"])
    assert meta["task"] == "classification" and meta["input"]["shape"] == ["N", 3, SIZE, SIZE]
    assert meta["class_names"] == [f"c{i}" for i in range(5)] and meta["model_config"]["mean"] == [0.5, 0.5, 0.5]
    extra = {"vision_tasks.json": ""}
    torch.export.load(str(exported("detection", "pt2")), extra_files=extra)
    meta = json.loads(extra["vision_tasks.json"])
    assert meta["outputs"] == list(DETECTION_OUTPUTS) and "labels -1" in meta["detections"]


def test_bad_requests_are_refused_and_nothing_is_overwritten(models, tmp_path):
    model = models["classification"]
    with pytest.raises(ValueError, match="format='tf' is not an export format; choose one of: onnx, pt2, tflite"):
        export_model(model, tmp_path / "m.tf", "tf")
    existing = tmp_path / "mine.onnx"
    existing.write_bytes(b"the user's file")
    for fmt in ("onnx", "pt2"):  # refused before anything is exported or imported
        with pytest.raises(FileExistsError, match="never writes over"):
            export_model(model, existing, fmt)
    assert existing.read_bytes() == b"the user's file"
    with pytest.raises(TypeError, match="no export for Linear"):
        export_program(torch.nn.Linear(2, 2), tmp_path / "x.pt2")


def _tiny_checkpoint(model: torch.nn.Module, task: str, path, class_names: list[str]):
    """A checkpoint as tools/train.py writes it, reduced to what loading reads."""
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "vision_tasks": {"task": task, "model_class": type(model).__name__, "model_config": model.config,
                                 "class_names": class_names}}, path)
    return path


@pytest.mark.slow
def test_cli_exports_a_checkpoint_and_writes_the_parity_report(tmp_path, env):
    from PIL import Image

    ckpt = _tiny_checkpoint(tiny_detector(), "detection", tmp_path / "det.ckpt", ["cat", "dog", "cup"])
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(_images(3, seed=4)):  # any size: the check resizes them to the export's
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).resize((80, 60)).save(photos / f"{i}.png")
    out = tmp_path / "exports" / "det"
    proc = run_tool(["tools/export.py", "task=detection", f"ckpt_path={ckpt}", "format=pt2", f"out={out}",
                     f"check_images={photos}", f"hydra.run.dir={tmp_path / 'run'}"], env, timeout=900)
    exported = out.with_name("det.pt2")
    assert exported.is_file() and "parity OK" in proc.stdout
    report = json.loads(report_path(exported).read_text())
    assert report["ok"] and report["images"] == 3 and report["input_size"] == [SIZE, SIZE]
    extra = {"vision_tasks.json": ""}
    torch.export.load(str(exported), extra_files=extra)
    assert json.loads(extra["vision_tasks.json"])["class_names"] == ["cat", "dog", "cup"]
    # again: the export exists, so it is refused and left as it is
    before = exported.read_bytes()
    proc = run_tool(["tools/export.py", "task=detection", f"ckpt_path={ckpt}", "format=pt2", f"out={exported}",
                     f"hydra.run.dir={tmp_path / 'run2'}"], env, expect_ok=False)
    assert "exists; an export never writes over a file" in proc.stderr and exported.read_bytes() == before


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("export", overrides=list(overrides))


def test_export_config_takes_a_converted_weight_file_and_says_what_is_wrong(models, tmp_path):
    from vision_tasks.convert import convert
    from vision_tasks.export import export

    ckpt = _tiny_checkpoint(models["segmentation"], "segmentation", tmp_path / "seg.ckpt", ["bg", "a", "b", "c"])
    weights, _ = convert(ckpt, tmp_path / "seg.safetensors")
    out = export(_compose("task=segmentation", f"weights={weights}", "format=pt2", f"out={tmp_path / 'seg'}",
                          f"image_size={SIZE}"))
    assert out == tmp_path / "seg.pt2" and out.is_file()
    with pytest.raises(ValueError, match="format=tf is not an export format; choose one of: onnx, pt2, tflite"):
        export(_compose("task=segmentation", f"weights={weights}", "format=tf", f"out={tmp_path / 'x'}"))
    with pytest.raises(ValueError, match="holds a segmentation model, but task=detection"):
        export(_compose("task=detection", f"weights={weights}", f"out={tmp_path / 'x'}"))
    with pytest.raises(ValueError, match="needs out=FILE"):
        export(_compose("task=segmentation", f"weights={weights}"))
    with pytest.raises(FileExistsError, match="never writes over"):
        export(_compose("task=segmentation", f"weights={weights}", "format=pt2", f"out={out}"))


def tiny_joint() -> torch.nn.Module:
    """The joint model with all three heads, tiny, its detector finding 2-20 objects per image (as tiny_detector)."""
    from vision_tasks.models import multitask_mobilenet_v2

    torch.manual_seed(0)
    model = multitask_mobilenet_v2(
        heads={"classification": {"num_classes": 5},
               "detection": {"num_classes": 3, "image_size": SIZE, "score_thresh": 0.2, "detections_per_img": LIMIT},
               "segmentation": {"num_classes": 4, "skip_feature": "layer7"}},
        width_mult=0.35, output_stride=16, bn_momentum=1.0, padding="tf_same")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(torch.rand(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2)))
        for predictor in model.detection.head.classification_head:
            predictor[1].bias.fill_(-2.0)
    return model.eval()


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_joint_model_exports_as_one_graph_with_every_head(tmp_path, fmt):
    """One backbone pass, the heads' outputs in a flat tuple (classification logits, the detector's four padded
    outputs, segmentation logits), each matching the eager joint model as the single-task exports do."""
    from vision_tasks.export import ExportableMultiTask, _runner, output_names

    model = tiny_joint()
    path = export_model(model, tmp_path / f"joint.{fmt}", fmt, image_size=SIZE)
    assert output_names(ExportableMultiTask(model)) == ["classification_logits", *DETECTION_OUTPUTS,
                                                         "segmentation_logits"]
    images = _images(5)
    cls, boxes, scores, labels, count, seg = _runner(path)(images[:3])
    assert cls.shape == (3, 5) and boxes.shape == (3, LIMIT, 4) and count.shape == (3,) and seg.shape == (3, 4, SIZE, SIZE)
    report = check_export(path, model, images, batch_size=2)
    assert report["ok"] and report["task"] == "multitask", report
    assert report["classification"]["max_abs_diff"] <= 1e-4 and report["segmentation"]["max_abs_diff"] <= 1e-4
    det = report["detection"]
    assert det["detections_eager>=0.3"] > 0 and det["images_count_equal"] == 5, det  # not vacuous
    assert det["unmatched_eager"] == det["unmatched_exported"] == 0


def test_an_exported_detector_scores_map_1_on_its_own_detections(tmp_path, env):
    """evaluate_detections (tools/eval_export.py) on a COCO folder whose ground truth is the eager model's own
    confident detections, scaled to photos of another size: the export finds them all first, so its mAP is 1.0;
    a file without boxes is refused."""
    from PIL import Image

    from vision_tasks.export import evaluate_detections, load_check_images

    model = tiny_detector()
    path = export_model(model, tmp_path / "det.pt2", "pt2", image_size=SIZE,
                        metadata={"category_ids": [11, 22, 33]})
    photos = tmp_path / "val"
    photos.mkdir()
    w, h = 96, 80  # the photos on disk: another size than the export's 64 x 64
    for i, image in enumerate(_images(4, seed=5)):
        big = F.interpolate(image[None], size=(h, w), mode="nearest")[0]
        Image.fromarray((big.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(photos / f"{i}.png")
    # the ground truth: the eager model's confident detections on the photos resized as the evaluation resizes them
    with torch.no_grad():
        eager = model(load_check_images(photos, (SIZE, SIZE)))
    images, annotations = [], []
    for i, det in enumerate(eager):
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        for box, score, label in zip(det["boxes"], det["scores"], det["labels"]):
            if score < 0.3:
                continue
            x0, y0, x1, y1 = (box * torch.tensor([w / SIZE, h / SIZE] * 2)).tolist()
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": [11, 22, 33][int(label)],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    assert len(annotations) >= 4
    coco = tmp_path / "instances_val.json"
    coco.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": c, "name": f"c{c}"} for c in (11, 22, 33)]}))
    scores = evaluate_detections(path, coco, photos)
    assert scores["images"] == 4 and scores["map"] == pytest.approx(1.0, abs=1e-3), scores
    out = tmp_path / "map.json"
    proc = run_tool(["tools/eval_export.py", str(path), "--images", str(photos), "--annotations", str(coco),
                     "--out", str(out)], env, timeout=300)
    assert "map_50" in proc.stdout and json.loads(out.read_text())[str(path)]["map"] == pytest.approx(scores["map"])
    classifier = export_program(mobilenet_v2_classifier(num_classes=3, width_mult=0.35).eval(), tmp_path / "c.pt2",
                                image_size=SIZE)
    with pytest.raises(ValueError, match="not a detector's export"):
        evaluate_detections(classifier, coco, photos)
