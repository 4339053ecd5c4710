"""Deployable files of the task models and the joint model: ONNX (run by ONNX Runtime), LiteRT (TensorFlow Lite,
run by ai-edge-litert's interpreter) and ``torch.export`` programs (``.pt2``, the entry to ExecuTorch), each
checked against the PyTorch model it came from; int8 versions of the ONNX and LiteRT files.

Every export takes float images ``(N, 3, H, W)`` in [0, 1] at the export's input size, with a dynamic batch
axis, and normalises them inside (the models' own :class:`~vision_tasks.models.ImagePreprocessing`):

- classification: ``logits (N, num_classes)``;
- segmentation: ``logits (N, num_classes, H, W)`` at the input size (spatial size fixed at export: TF "SAME"
  padding and the aligned-corner upsampling depend on it);
- detection: :class:`ExportableDetector`, the model with its anchors (a constant for the export size), box
  decoding and class-aware NMS inside the graph, returning fixed-size padded outputs as TFLite's detection
  post-processing does: ``boxes (N, K, 4)`` ``xyxy`` in input pixels, ``scores (N, K)``, ``labels (N, K)``
  (int64, ``0..num_classes-1``) and ``num_detections (N,)`` (int64), ``K = detections_per_img``. Rows past
  ``num_detections`` are padding: boxes and scores 0, labels -1;
- the joint model: :class:`ExportableMultiTask`, one backbone pass, the heads' outputs in one flat tuple
  (``classification_logits``, the detector's four, ``segmentation_logits``).

Formats: ``export_onnx`` (``torch.onnx.export(dynamo=True)``: ``torch.export`` then onnxscript's translation,
whose ``torchvision::nms`` becomes ONNX ``NonMaxSuppression``), ``export_program`` (``torch.export.export`` +
``torch.export.save``; ``torchvision::nms`` is a registered custom op, so the program keeps it as one op and
loading it needs ``import torchvision``) and ``export_litert`` (litert-torch; batch 1, and a detector stops before
its NMS, :class:`DetectionCandidates`: the host finishes with :func:`select_detections`). ``quantize_onnx`` and
``quantize_litert`` make int8 files of the float ones. :func:`check_export` runs an exported file in its runtime
beside the PyTorch model on the same images and returns the differences.

Example::

    model = ssdlite_mobilenet_v2(weights="ssdlite_mobilenet_v2_coco_0.5_200x200.tflite").eval()
    export_onnx(model, "ssdlite.onnx")
    report = check_export("ssdlite.onnx", model, images)   # images (N, 3, 200, 200) in [0, 1]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import nms

from .files import atomic_write
from .models import DeepLabV3MobileNetV2, MobileNetV2Classifier, MultiTaskMobileNetV2, SSDLiteMobileNetV2

log = logging.getLogger(__name__)

__all__ = ["DETECTION_OUTPUTS", "FORMATS", "DetectionCandidates", "DetectionPostprocess", "ExportableDetector",
           "ExportableMultiTask", "check_export", "evaluate_detections", "export_litert", "export_model", "export_onnx",
           "export_program", "exportable", "input_size", "int8_path", "load_check_images", "quantize_litert",
           "quantize_onnx", "read_metadata", "require", "select_detections", "task_of"]

FORMATS: dict[str, str] = {"onnx": ".onnx", "pt2": ".pt2", "tflite": ".tflite"}
DETECTION_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
DEFAULT_SIZES = {"classification": 224, "segmentation": 513, "multitask": 320}
# the parity the issue asks of an export (float): logits to 1e-4; detection boxes to 1e-3 and the same labels
# for the detections scoring at least 0.3
LOGIT_TOLERANCE, BOX_TOLERANCE, SCORE_THRESHOLD = 1e-4, 1e-3, 0.3


def task_of(model: nn.Module) -> str:
    """``classification``, ``detection`` or ``segmentation`` for a task model of :mod:`vision_tasks.models`."""
    for cls, task in ((MobileNetV2Classifier, "classification"), (SSDLiteMobileNetV2, "detection"),
                      (DeepLabV3MobileNetV2, "segmentation"), (ExportableDetector, "detection"),
                      (MultiTaskMobileNetV2, "multitask"), (ExportableMultiTask, "multitask")):
        if isinstance(model, cls):
            return task
    raise TypeError(f"no export for {type(model).__name__}: expected a classifier, SSDLite, DeepLab or joint model "
                    "of vision_tasks.models")


def input_size(model: nn.Module, size: int | Sequence[int] | None = None) -> tuple[int, int]:
    """The (H, W) an export of ``model`` takes: ``size`` if given, else a detector's own ``image_size`` (its
    anchors are for it), 224 for a classifier, 513 for a segmenter (TF DeepLab's evaluation size)."""
    if size is None:
        joint_detector = getattr(model, "detection", None) if isinstance(model, MultiTaskMobileNetV2) else None
        if isinstance(model, (SSDLiteMobileNetV2, ExportableDetector, ExportableMultiTask)):
            size = model.image_size
        elif joint_detector is not None:
            size = joint_detector.image_size
        else:
            size = DEFAULT_SIZES[task_of(model)]
    if isinstance(size, int):
        size = (size, size)
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"image_size must be positive, got {size}")
    return height, width


class DetectionPostprocess(nn.Module):
    """The fixed-size post-processing of SSDLite head outputs for one input size, as one graph: what
    :func:`heads.postprocess_detections` does, without its data-dependent branches.

    ``parts``: the SSDLite model or the joint model's detection head (their ``box_coder``, ``num_classes`` and
    ``postprocess_settings``); ``anchors``: the default boxes for ``image_size`` (a constant of the graph).
    :meth:`candidates` takes the head outputs to scores (softmax or sigmoid, as the model), boxes decoded and
    clipped to the image, and per class the ``topk_candidates`` best anchors, of which it keeps the
    ``candidates_per_image`` best (anchor, class) pairs; :meth:`select` applies the score threshold, the
    class-aware NMS and the padding (:func:`select_detections`).

    One NMS over everything costs (candidates x survivors): with the TF release's score threshold of 1e-8
    that is 300 x 90 candidates per image, and torchvision's CPU kernel took minutes per batch (the eager
    model runs one small NMS per class instead, which a graph would have to unroll class by class). So only
    the ``candidates_per_image`` best-scoring candidates of each image enter the NMS. The result is the eager
    model's whenever at least ``detections_per_img`` of them survive (or there are no more candidates): a box
    is suppressed only by better-scoring boxes of its class, all of which are among the best, and any survivor
    outside them scores below all of them. :func:`check_export` compares the counts with the eager model's.
    """

    def __init__(self, parts: nn.Module, anchors: Tensor, image_size: Sequence[int],
                 candidates_per_image: int = 2000) -> None:
        super().__init__()
        self.box_coder = parts.box_coder
        self.candidates_per_image = int(candidates_per_image)
        self.image_size = tuple(int(s) for s in image_size)
        self.num_classes = int(parts.num_classes)
        settings = parts.postprocess_settings
        self.score_thresh = float(settings["score_thresh"])
        self.nms_thresh = float(settings["nms_thresh"])
        self.topk_candidates = int(settings["topk_candidates"])
        self.detections_per_img = int(settings["detections_per_img"])
        self.classification = settings["classification"]
        self.register_buffer("anchors", anchors.detach().clone(), persistent=False)

    def forward(self, cls_logits: Tensor, bbox_regression: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.select(*self.candidates(cls_logits, bbox_regression))

    def candidates(self, cls_logits: Tensor, bbox_regression: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``boxes (N, m, 4)`` (``xyxy``, input pixels, clipped), ``scores (N, m)`` in decreasing order and
        ``labels (N, m)`` (int64, ``0..num_classes-1``): the best ``m`` (anchor, class) pairs of each image."""
        height, width = self.image_size
        probs = cls_logits.softmax(dim=-1) if self.classification == "softmax" else cls_logits.sigmoid()
        scores = probs[..., 1:]  # (N, A, C): the background dropped
        boxes = self.box_coder.decode(bbox_regression, self.anchors)
        # clip_boxes_to_image, with the constant size
        boxes = torch.stack((boxes[..., 0].clamp(0, width), boxes[..., 1].clamp(0, height),
                             boxes[..., 2].clamp(0, width), boxes[..., 3].clamp(0, height)), dim=-1)
        num_images, num_anchors, num_classes = scores.shape
        k = min(self.topk_candidates, num_anchors)
        top_scores, top_anchors = scores.topk(k, dim=1)  # per image and class: (N, k, C)
        # the candidates_per_image best of the image's k * C (see the class docstring); flattened as (anchor, class)
        m = min(self.candidates_per_image, k * num_classes)
        cand_scores, order = top_scores.reshape(num_images, k * num_classes).topk(m, dim=1)  # (N, m)
        cand_anchors = top_anchors.reshape(num_images, k * num_classes).gather(1, order)
        cand_boxes = boxes.gather(1, cand_anchors.unsqueeze(-1).expand(-1, -1, 4))
        return cand_boxes, cand_scores, order % num_classes

    def select(self, boxes: Tensor, scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The score threshold, NMS and padding on the output of :meth:`candidates` (:func:`select_detections`
        with this detector's settings)."""
        return select_detections(boxes, scores, labels, image_size=self.image_size, num_classes=self.num_classes,
                                 score_thresh=self.score_thresh, nms_thresh=self.nms_thresh,
                                 detections_per_img=self.detections_per_img)

    def settings(self) -> dict[str, Any]:
        """What a host needs to finish a LiteRT file's candidates (:func:`select_detections`)."""
        return {"num_classes": self.num_classes, "score_thresh": self.score_thresh, "nms_thresh": self.nms_thresh,
                "detections_per_img": self.detections_per_img, "candidates_per_image": self.candidates_per_image}


def _anchors(model: nn.Module, image_size: tuple[int, int], head_out) -> Tensor:
    """The anchors ``head_out(probe)`` gives for an input of ``image_size``, computed in eval mode."""
    was_training = model.training
    with torch.no_grad():
        probe = torch.zeros(1, 3, *image_size, device=next(model.parameters()).device)
        anchors = head_out(model.eval(), probe)["anchors"]
    model.train(was_training)
    return anchors


class ExportableDetector(nn.Module):
    """An :class:`~vision_tasks.models.SSDLiteMobileNetV2` whose whole inference is one graph of fixed-size outputs.

    The eager model returns a list of variable-length dicts and its NMS (``torchvision.ops.batched_nms``)
    chooses its algorithm from the number of boxes, which ``torch.export`` cannot trace. This wrapper runs
    normalisation, network and :class:`DetectionPostprocess` (the steps of :func:`heads.postprocess_detections`
    for one input size, its anchors a constant).

    ``forward(images (N, 3, H, W) in [0, 1])`` returns ``boxes (N, K, 4)`` (``xyxy``, input pixels),
    ``scores (N, K)``, ``labels (N, K)`` int64, ``num_detections (N,)`` int64, ``K = detections_per_img``,
    each image's detections in decreasing score; rows past ``num_detections`` hold boxes and scores 0 and
    labels -1. :meth:`candidates` is the part before the score threshold and NMS (what a LiteRT export holds).
    """

    def __init__(self, model: SSDLiteMobileNetV2, image_size: int | Sequence[int] | None = None,
                 candidates_per_image: int = 2000) -> None:
        super().__init__()
        self.model = model
        self.image_size = input_size(model, image_size)
        anchors = _anchors(model, self.image_size, lambda m, x: m.forward_head(x))
        self.post = DetectionPostprocess(model, anchors, self.image_size, candidates_per_image)

    def _head(self, images: Tensor) -> tuple[Tensor, Tensor]:
        model = self.model
        features = model.backbone(model.preprocess(images))
        cls_logits, bbox_regression, _ = model.head([features[name] for name in model.FEATURES])
        return cls_logits, bbox_regression

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.post(*self._head(images))

    def candidates(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``boxes (N, m, 4)``, ``scores (N, m)``, ``labels (N, m)``: :meth:`DetectionPostprocess.candidates`."""
        return self.post.candidates(*self._head(images))

    def select(self, boxes: Tensor, scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.post.select(boxes, scores, labels)


class ExportableMultiTask(nn.Module):
    """A :class:`~vision_tasks.models.MultiTaskMobileNetV2` as one graph: one backbone pass, each head's output
    in a flat tuple, in the order of :data:`vision_tasks.models.HEADS`: ``classification_logits (N, classes)``;
    the detector's ``boxes``, ``scores``, ``labels``, ``num_detections`` (as :class:`ExportableDetector`'s, its
    :class:`DetectionPostprocess` for ``image_size``); ``segmentation_logits (N, classes, H, W)``.
    :meth:`candidates` stops the detection before its score threshold and NMS (a LiteRT export)."""

    def __init__(self, model: MultiTaskMobileNetV2, image_size: int | Sequence[int] | None = None,
                 candidates_per_image: int = 2000) -> None:
        super().__init__()
        self.model = model
        self.image_size = input_size(model, image_size)
        self.heads = tuple(model.head_names)
        self.post = None
        if model.detection is not None:
            anchors = _anchors(model, self.image_size, lambda m, x: m.forward_heads(x)["detection"])
            self.post = DetectionPostprocess(model.detection, anchors, self.image_size, candidates_per_image)

    def _outputs(self, images: Tensor, detection) -> tuple[Tensor, ...]:
        out = self.model.forward_heads(images)
        result: list[Tensor] = []
        for head in ("classification", "detection", "segmentation"):
            if head not in out:
                continue
            if head == "detection":
                result.extend(detection(out[head]["cls_logits"], out[head]["bbox_regression"]))
            else:
                result.append(out[head])
        return tuple(result)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return self._outputs(images, self.post)

    def candidates(self, images: Tensor) -> tuple[Tensor, ...]:
        return self._outputs(images, None if self.post is None else self.post.candidates)


def select_detections(boxes: Tensor, scores: Tensor, labels: Tensor, *, image_size: Sequence[int], num_classes: int,
                      score_thresh: float, nms_thresh: float,
                      detections_per_img: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The end of a detector's inference on its candidates (:meth:`ExportableDetector.candidates`, or the outputs of
    a LiteRT export): the score threshold (strictly above ``score_thresh``), the class-aware NMS at ``nms_thresh``
    and the padded outputs ``boxes (N, K, 4)``, ``scores (N, K)``, ``labels (N, K)`` (-1 past the count),
    ``num_detections (N,)``, ``K = detections_per_img``. Traceable (the ONNX and .pt2 exports hold it), and what
    the host runs after a LiteRT export, whose runtime has no NMS."""
    height, width = (int(s) for s in image_size)
    num_images, m = scores.shape
    device = scores.device
    cand_boxes, cand_scores, cand_labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1).long()
    cand_images = torch.arange(num_images, device=device).unsqueeze(1).expand(-1, m).reshape(-1)
    keep = torch.nonzero(cand_scores > score_thresh).squeeze(1)  # as the eager model, strictly above
    cand_scores, cand_boxes = cand_scores[keep], cand_boxes[keep]
    cand_labels, cand_images = cand_labels[keep], cand_images[keep]
    # class-aware NMS over all images at once: each (image, class) group is shifted by a multiple of the
    # largest coordinate + 1, so boxes of different groups never overlap (torchvision's batched_nms does
    # this with boxes.max(); the boxes are clipped, so the bound is known and needs no data-dependent branch)
    group = cand_images * num_classes + cand_labels
    offsets = (group.to(cand_boxes.dtype) * float(max(height, width) + 1)).unsqueeze(1)
    kept = nms(cand_boxes + offsets, cand_scores, nms_thresh)  # decreasing score
    kept_images = cand_images[kept]
    # the rank of each kept box among its image's, in score order: its row in the padded outputs
    one_hot = (kept_images.unsqueeze(1) == torch.arange(num_images, device=device)).to(torch.int64)
    rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1
    limit = detections_per_img
    slots = num_images * limit
    # the detections past the limit go to spare rows after the outputs, one each (distinct indices, no
    # boolean mask), which are cut off
    spare = slots + torch.arange(kept.shape[0], device=device)
    row = torch.where(rank < limit, kept_images * limit + rank, spare)
    total = slots + kept.shape[0]
    out_boxes = cand_boxes.new_zeros(total, 4).index_copy(0, row, cand_boxes[kept])
    out_scores = cand_scores.new_zeros(total).index_copy(0, row, cand_scores[kept])
    out_labels = torch.full((total,), -1, dtype=torch.int64, device=device).index_copy(0, row, cand_labels[kept])
    count = one_hot.sum(0).clamp(max=limit)
    return (out_boxes[:slots].reshape(num_images, limit, 4), out_scores[:slots].reshape(num_images, limit),
            out_labels[:slots].reshape(num_images, limit), count)


class DetectionCandidates(nn.Module):
    """The graph of a LiteRT export with a detector (:class:`ExportableDetector` or :class:`ExportableMultiTask`):
    its ``candidates`` (normalisation, network, scores, decoded and clipped boxes, the best candidates), the
    detection as ``boxes (N, m, 4)``, ``scores (N, m)``, ``labels (N, m)``. LiteRT has no NMS that a PyTorch
    graph can be converted to (litert-torch lowers no ``torchvision::nms``); the host finishes with
    :func:`select_detections`, a torchvision NMS over at most ``m`` boxes per image, as :func:`check_export`
    does."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return self.module.candidates(images)


def exportable(model: nn.Module, image_size: int | Sequence[int] | None = None) -> nn.Module:
    """What is exported for ``model``, in eval mode: an :class:`ExportableDetector` for a detector (its anchors
    for ``image_size``), an :class:`ExportableMultiTask` for a joint model, the model itself otherwise."""
    task = task_of(model)
    if task == "detection" and not isinstance(model, ExportableDetector):
        return ExportableDetector(model.eval(), image_size).eval()
    if task == "multitask" and not isinstance(model, ExportableMultiTask):
        return ExportableMultiTask(model.eval(), image_size).eval()
    return model.eval()


def _heads(module: nn.Module) -> tuple[str, ...]:
    """The heads an exportable module outputs, in their order (a single-task model: its task)."""
    task = task_of(module)
    if task != "multitask":
        return (task,)
    return tuple(module.heads if isinstance(module, ExportableMultiTask) else module.head_names)


def output_names(module: nn.Module | str, litert: bool = False) -> list[str]:
    """The names of an export's outputs, in order: ``logits``; a detector's ``boxes``, ``scores``, ``labels``,
    ``num_detections`` (LiteRT: the first three, its candidates); a joint model's per head, prefixed by the head
    for the logits (``classification_logits``, ..., ``segmentation_logits``)."""
    detection = ["boxes", "scores", "labels"] if litert else list(DETECTION_OUTPUTS)
    task = module if isinstance(module, str) else task_of(module)
    if task != "multitask":
        return detection if task == "detection" else ["logits"]
    heads = _heads(module) if not isinstance(module, str) else ("classification", "detection", "segmentation")
    names: list[str] = []
    for head in heads:
        names.extend(detection if head == "detection" else [f"{head}_logits"])
    return names


def _metadata(model: nn.Module, task: str, size: tuple[int, int], fmt: str,
              extra: dict[str, Any] | None) -> dict[str, Any]:
    inner = model.model if isinstance(model, (ExportableDetector, ExportableMultiTask)) else model
    meta: dict[str, Any] = {
        "format": fmt, "task": task, "model_class": type(inner).__name__, "model_config": getattr(inner, "config", None),
        "input": {"name": "images", "shape": ["N", 3, size[0], size[1]], "dtype": "float32", "range": [0.0, 1.0],
                  "layout": "NCHW, RGB; normalised inside the model"},
        "outputs": output_names(model, litert=fmt == "tflite"),
    }
    if task == "multitask":
        meta["heads"] = list(_heads(model))
    post = getattr(model, "post", None)
    if post is not None and fmt == "tflite":
        meta["input"]["shape"][0] = 1
        meta["detections"] = (
            "boxes (1, m, 4) xyxy in input pixels, scores (1, m) decreasing, labels (1, m) int32 0..num_classes-1: "
            "the best m (anchor, class) candidates, before the score threshold and NMS; finish with "
            "vision_tasks.export.select_detections (the settings in 'postprocess') or any class-aware NMS")
        meta["postprocess"] = post.settings()
    elif post is not None:
        meta["detections"] = ("boxes (N, K, 4) xyxy in input pixels, scores (N, K), labels (N, K) int64 "
                              "0..num_classes-1, num_detections (N,) int64; rows past num_detections: boxes and "
                              f"scores 0, labels -1; K = {post.detections_per_img}")
    elif fmt == "tflite":
        meta["input"]["shape"][0] = 1
    meta.update(extra or {})
    return meta


# what each format (and its int8 step) imports, and the extra of pyproject.toml that installs it
REQUIREMENTS = {"onnx": (("onnx", "onnxscript", "onnxruntime"), "export"),
                "tflite": (("litert_torch", "ai_edge_litert", "ai_edge_quantizer"), "litert"), "pt2": ((), None)}


def require(fmt: str) -> None:
    """Raise an ImportError that says what to install when a package ``fmt`` needs is missing."""
    import importlib.util

    modules, extra = REQUIREMENTS[fmt]
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"format={fmt} needs {', '.join(m.replace('_', '-') for m in missing)}: "
                          f"pip install 'vision-tasks[{extra}]' (or pip install -e '.[{extra}]' in a checkout)")


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise FileExistsError(f"{path} exists; an export never writes over a file: choose another out= (or remove it)")


def _example(size: tuple[int, int], model: nn.Module) -> Tensor:
    """The tracing input: two random images. Two, not one: ``torch.export`` specialises a dimension it sees as 1
    (the batch would be fixed at 1); traced at 2 with ``Dim("batch", min=1)``, the graph runs at any batch."""
    param = next(model.parameters())
    return torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)).to(param.device)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without torchvision's own FutureWarning about its NMS registration (``create_unbacked_symint``), which
    every export of a detector would show the user, who can do nothing about it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*create_unbacked_symint.*", category=FutureWarning)
        yield


def _dynamic_batch() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def export_program(model: nn.Module, path: str | os.PathLike, *, image_size: int | Sequence[int] | None = None,
                   metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a ``torch.export`` program (``.pt2``) with a dynamic batch axis; returns the path.

    ``torch.export.load(path).module()(images)`` runs it (a detector's program holds ``torchvision::nms``:
    ``import torchvision`` first). The file carries ``vision_tasks.json`` (task, input, outputs, the model's
    configuration and ``metadata``) among its extra files. An existing ``path`` is refused.
    """
    path = Path(path)
    _refuse_existing(path)
    module = exportable(model, image_size)
    task, size = task_of(module), input_size(module, image_size)
    with torch.no_grad(), _quiet():
        program = torch.export.export(module, (_example(size, module),), dynamic_shapes=_dynamic_batch())
    meta = json.dumps(_metadata(module, task, size, "pt2", metadata))
    return atomic_write(path, lambda f: torch.export.save(program, f, extra_files={"vision_tasks.json": meta}))


def export_onnx(model: nn.Module, path: str | os.PathLike, *, image_size: int | Sequence[int] | None = None,
                opset_version: int | None = None, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis (input ``images``; outputs ``logits``, or for a detector
    ``boxes``, ``scores``, ``labels``, ``num_detections``); returns the path.

    Exported with ``torch.onnx.export(dynamo=True)``: ``torch.export`` captures the graph (the detector's NMS
    included: ``torchvision::nms`` becomes ``NonMaxSuppression``) and onnxscript translates it. The
    TorchScript exporter (``dynamo=False``) is deprecated in torch 2.9+. The model's metadata (task, input,
    outputs, configuration, class names in ``metadata``) is stored as the ``vision_tasks`` metadata property.
    An existing ``path`` is refused.
    """
    path = Path(path)
    _refuse_existing(path)
    require("onnx")
    import onnx

    module = exportable(model, image_size)
    task, size = task_of(module), input_size(module, image_size)
    for name in ("onnx_ir", "onnxscript"):  # their optimiser logs every initializer it merges at INFO
        logging.getLogger(name).setLevel(max(logging.getLogger(name).getEffectiveLevel(), logging.WARNING))
    with torch.no_grad(), _quiet():
        program = torch.onnx.export(
            module, (_example(size, module),), dynamo=True, dynamic_shapes=_dynamic_batch(),
            input_names=["images"], output_names=output_names(module), opset_version=opset_version,
            external_data=False, verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {"vision_tasks": json.dumps(_metadata(module, task, size, "onnx", metadata))})
    return atomic_write(path, proto.SerializeToString())


# what int8 post-training quantization quantizes: the convolutions and fully connected layers (weights per output
# channel, int8; their input and output activations per tensor) and the activations after them. Listing Clip
# (ReLU6) and Relu lets the quantizer fuse them into the convolution: its output is quantized on the clipped
# range ([0, 6]) instead of the raw one, which reaches tens (measured, MobileNetV2 TF release, top-1 agreement
# with float on coco128 val: 72% with Conv / Gemm / MatMul alone, 88% with the activations). For detection this
# leaves the score conversion, box decoding, TopK, NMS and padding in float: none of them is one of these.
INT8_OP_TYPES = ("Conv", "Gemm", "MatMul", "Clip", "Relu")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# what an int8 check calls agreement enough (issue 13): top-1 / pixel argmax equal to the float model's; for
# detection the target is mAP within 0.01 of float, which a parity check on unlabelled images cannot
# measure: it asks 90% of the detections scoring >= 0.3 paired by label and IoU >= 0.5 instead
INT8_TARGETS = {"classification": 0.97, "segmentation": 0.98, "detection": 0.9}


def cpu_has_vnni() -> bool | None:
    """Whether this machine's x86 CPU has VNNI (AVX512-VNNI or AVX-VNNI) from ``/proc/cpuinfo``; ``None`` where
    that cannot be read (not Linux, not x86)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    if "flags" not in flags:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags


def int8_path(path: str | os.PathLike) -> Path:
    """Where the int8 sibling of a float ONNX export goes: ``model.onnx`` -> ``model.int8.onnx``."""
    path = Path(path)
    return path.with_name(path.stem + ".int8" + path.suffix)


def quantize_onnx(float_path: str | os.PathLike, out_path: str | os.PathLike, calibration_images: Tensor, *,
                  batch_size: int = 1, method: str = "minmax", activation_type: str = "quint8",
                  per_channel: bool = True, reduce_range: bool | None = None, op_types: Sequence[str] = INT8_OP_TYPES,
                  preprocess: bool = True,
                  metadata: dict[str, Any] | None = None) -> Path:
    """Int8 post-training static quantization of a float ONNX export (:func:`export_onnx`) with ONNX Runtime's
    ``quantize_static`` in the QDQ format; returns ``out_path``.

    ``calibration_images``: float ``(N, 3, H, W)`` in [0, 1] at the export's size (as :func:`load_check_images`
    gives them), fed in batches of ``batch_size`` to collect the activation ranges (``method``: ``minmax``,
    ``percentile`` (99.999) or ``entropy``; the histogram methods hold every activation of every image in memory,
    too much for DeepLab at 513 px). Weights are int8, per output channel (``per_channel``); activations
    ``quint8`` (asymmetric) or ``qint8``. ``reduce_range``: 7-bit weights, ONNX Runtime's remedy for
    its u8s8 kernels on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI), whose 16-bit intermediate sums
    saturate with full 8-bit weights (measured on an AVX2 CPU: MobileNetV2 top-1 agreement 58% without it); the
    file then runs right on any CPU but loses accuracy where VNNI is present (88% against 80% on an AVX512-VNNI
    CPU). ``None`` (the default) decides by this machine's CPU (:func:`cpu_has_vnni`): full 8-bit weights with
    VNNI, 7-bit without; pass ``True`` for a file that will run on CPUs without VNNI. Only ``op_types`` are
    quantized (default :data:`INT8_OP_TYPES`: Conv, Gemm, MatMul and their Clip / Relu): in a detector the post-processing (box decoding, TopK, NonMaxSuppression, padding) stays float. The model first
    goes through ``quant_pre_process`` (shape inference and graph optimisation, the documented first step; skipped
    with ``preprocess=False``). The file keeps the export's ``vision_tasks`` metadata with an ``int8`` entry
    (the settings and ``metadata``). An existing ``out_path`` is refused; the file is written atomically.
    """
    import tempfile

    require("onnx")
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    float_path, out_path = Path(float_path), Path(out_path)
    _refuse_existing(out_path)
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method={method!r}: choose one of {', '.join(CALIBRATION_METHODS)}")
    types = {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}
    if activation_type not in types:
        raise ValueError(f"activation_type={activation_type!r}: choose quint8 or qint8")
    if calibration_images.ndim != 4 or calibration_images.shape[0] < 1:
        raise ValueError(f"calibration_images must be a non-empty (N, 3, H, W) batch, got {tuple(calibration_images.shape)}")
    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    source = onnx.load(str(float_path))
    name = source.graph.input[0].name
    images = calibration_images.detach().cpu().float().contiguous().numpy()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.start >= len(images):
                return None
            batch = images[self.start:self.start + batch_size]
            self.start += batch_size
            return {name: batch}

        def rewind(self) -> None:
            self.start = 0

    calib = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}[method]
    settings = {"format": "QDQ", "weights": ("int8 (7-bit range)" if reduce_range else "int8") + (" per channel" if per_channel else " per tensor"),
                "activations": activation_type + " per tensor", "calibration": method,
                "calibration_images": int(images.shape[0]), "op_types": list(op_types), "preprocess": preprocess}
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=out_path.parent if out_path.parent.is_dir() else None) as tmp:
        model_in = float_path
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            model_in = Path(tmp) / "pre.onnx"
            try:
                quant_pre_process(str(float_path), str(model_in))
            except Exception as error:  # symbolic shape inference may not know an op (NMS output sizes)
                log.warning("quant_pre_process failed (%s); retried without symbolic shape inference", error)
                quant_pre_process(str(float_path), str(model_in), skip_symbolic_shape=True)
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(str(model_in), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(op_types), per_channel=per_channel, reduce_range=reduce_range,
                        activation_type=types[activation_type], weight_type=QuantType.QInt8,
                        calibrate_method=calib)
        proto = onnx.load(str(quantized))
    props = {p.key: p.value for p in source.metadata_props}
    try:
        meta = json.loads(props.get("vision_tasks", "{}"))
    except ValueError:
        meta = {}
    meta["int8"] = {**settings, "float_model": float_path.name, **(metadata or {})}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {**{k: v for k, v in props.items() if k != "vision_tasks"},
                                        "vision_tasks": json.dumps(meta)})
    return atomic_write(out_path, proto.SerializeToString())


# --- LiteRT (TensorFlow Lite): the paper's own runtime ------------------------------------------------------------

LITERT_METADATA = "vision_tasks"
# what int8 quantization of a LiteRT export quantizes (ai-edge-quantizer's names of TFLite ops): from the first
# convolution to the last, everything the network does (convolutions, fully connected layers, residual additions,
# paddings, poolings, resizes, concatenations, layout transposes); the normalisation before it and whatever follows
# (a detector's score conversion and box decoding) stay float, and so do the file's input and outputs: one
# QUANTIZE after the normalisation, one DEQUANTIZE per output.
LITERT_INT8_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "PAD", "MEAN", "AVERAGE_POOL_2D",
                   "RESIZE_BILINEAR", "CONCATENATION", "TRANSPOSE", "RESHAPE")


def _tflite_with_metadata(flatbuffer: bytes, meta: dict[str, Any]) -> bytes:
    """``flatbuffer`` (a ``.tflite`` model) with ``meta`` as JSON in its ``vision_tasks`` metadata entry, the
    schema's own place for descriptions of a model (where TFLite Support's metadata goes too)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
    for buffer in model.buffers:  # data stored after the flatbuffer (ai-edge-quantizer writes so) moves inside it
        if (buffer.offset or 0) > 1:
            buffer.data = np.frombuffer(flatbuffer, dtype=np.uint8, count=buffer.size, offset=buffer.offset)
            buffer.offset = buffer.size = 0
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = LITERT_METADATA, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (LITERT_METADATA, LITERT_METADATA.encode())]
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(flatbuffer) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``vision_tasks`` metadata of an export (task, input, outputs, model configuration, class names, int8
    settings): an ONNX metadata property, a ``.pt2`` extra file or a ``.tflite`` metadata entry."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props.get("vision_tasks", "{}"))
    if path.suffix == ".pt2":
        extra = {"vision_tasks.json": ""}
        torch.export.load(str(path), extra_files=extra)
        return json.loads(extra["vision_tasks.json"] or "{}")
    if path.suffix == ".tflite":
        from ai_edge_litert import schema_py_generated as schema

        model = schema.Model.GetRootAs(path.read_bytes(), 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() in (LITERT_METADATA, LITERT_METADATA.encode()):
                return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
        return {}
    raise ValueError(f"{path}: not an export this module reads (.onnx, .pt2 or .tflite)")


@contextlib.contextmanager
def _litert_quiet() -> Iterator[None]:
    """Without litert-torch's own progress lines (a dozen per conversion, printed with colours)."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    before = os.environ.get(key)
    os.environ[key] = "n"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def export_litert(model: nn.Module, path: str | os.PathLike, *, image_size: int | Sequence[int] | None = None,
                  metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a LiteRT (TensorFlow Lite) flatbuffer, the paper's own runtime, through litert-torch
    (``torch.export``, then StableHLO, then TFLite ops in NHWC; the input stays NCHW float in [0, 1] and the
    normalisation is inside); returns the path. Run it with ``ai_edge_litert``'s interpreter.

    Batch 1, as on a phone (a LiteRT graph has static shapes; :func:`check_export` runs images one by one).
    Classification and segmentation: ``logits``. Detection: :class:`DetectionCandidates`, the network, scores and
    decoded boxes up to the best ``candidates_per_image`` (anchor, class) pairs, ``boxes (1, m, 4)``,
    ``scores (1, m)``, ``labels (1, m)`` (int32); the score threshold, NMS and padding run on the host
    (:func:`select_detections`, with the settings in the metadata's ``postprocess``), since LiteRT has no NMS a
    PyTorch graph converts to. The joint model: its heads' outputs in order, the detection as those three. The
    ``vision_tasks`` metadata entry of the file says this (:func:`read_metadata`). An existing ``path`` is
    refused; the file is written atomically.
    """
    path = Path(path)
    _refuse_existing(path)
    require("tflite")
    with _litert_quiet():
        import litert_torch

        module = exportable(model, image_size)
        task, size = task_of(module), input_size(module, image_size)
        graph = DetectionCandidates(module).eval() if getattr(module, "post", None) is not None else module
        with torch.no_grad(), _quiet():
            edge = litert_torch.convert(graph, (_example(size, module)[:1],))
    meta = _metadata(module, task, size, "tflite", metadata)
    with _litert_quiet():
        content = edge.model_content()
    return atomic_write(path, _tflite_with_metadata(content, meta))


LITERT_CALIBRATIONS = ("minmax", "moving_average")


def quantize_litert(float_path: str | os.PathLike, out_path: str | os.PathLike, calibration_images: Tensor, *,
                    method: str = "minmax", op_types: Sequence[str] = LITERT_INT8_OPS,
                    metadata: dict[str, Any] | None = None) -> Path:
    """Int8 post-training quantization of a float LiteRT export (:func:`export_litert`) with ai-edge-quantizer,
    Google's maintained quantizer for LiteRT models; returns ``out_path``.

    Static int8: weights int8 per output channel, activations int8 per tensor, their ranges collected on
    ``calibration_images`` (float ``(N, 3, H, W)`` in [0, 1] at the export's size, run one by one): ``method``
    ``minmax`` (the default), the smallest and largest value over all images, as ONNX Runtime's MinMax; or
    ``moving_average``, ai-edge-quantizer's own default, an exponential moving average (0.95) of each image's
    minimum and maximum, which clips what few images reach and weighs the first images most. Only
    ``op_types`` are quantized (:data:`LITERT_INT8_OPS`): the file keeps its float input and outputs, and a
    detector's box decoding stays float.

    Not PyTorch's PT2E flow: litert-torch's ``PT2EQuantizer`` (the XNNPACK quantizer's counterpart for LiteRT)
    gives ReLU6 the quantization parameters of the convolution before it, whose range reaches tens, so the
    [0, 6] output keeps ~50 of 256 levels; measured with the TF release's classifier on coco128 val, top-1
    agreement with float: 26% through PT2E, 76% with ai-edge-quantizer on the same calibration images.
    """
    require("tflite")
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, quantizer
    from ai_edge_quantizer.qtyping import TFLOperationName
    from ai_edge_quantizer.utils import qsv_utils

    float_path, out_path = Path(float_path), Path(out_path)
    _refuse_existing(out_path)
    if calibration_images.ndim != 4 or calibration_images.shape[0] < 1:
        raise ValueError(f"calibration_images must be a non-empty (N, 3, H, W) batch, got {tuple(calibration_images.shape)}")
    if method not in LITERT_CALIBRATIONS:
        raise ValueError(f"method={method!r}: choose one of {', '.join(LITERT_CALIBRATIONS)}")
    unknown = [op for op in op_types if op not in TFLOperationName.__members__]
    if unknown:
        raise ValueError(f"op_types {unknown} are not ai-edge-quantizer operation names")
    signatures = Interpreter(model_path=str(float_path)).get_signature_list()
    signature = next(iter(signatures))
    input_name = signatures[signature]["inputs"][0]
    q = quantizer.Quantizer(str(float_path))
    for op in op_types:
        q.add_static_config(".*", TFLOperationName[op], activation_num_bits=8, weight_num_bits=8)
    images = calibration_images.detach().cpu().float().contiguous().numpy()
    import io

    printed = io.StringIO()  # ai-edge-quantizer prints the model's name and sizes: to the log instead
    with _litert_quiet(), contextlib.redirect_stdout(printed), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")  # its calibration's own
        # Quantizer.calibrate's own steps, with the range update chosen: it has no say in it (always the moving
        # average) and takes the recipe from its private _recipe_manager, as here
        update = qsv_utils.min_max_update if method == "minmax" else qsv_utils.moving_average_update
        calib = calibrator.Calibrator(str(float_path), num_threads=max(1, torch.get_num_threads()),
                                      qsv_update_func=update)
        calib.calibrate({signature: [{input_name: images[i:i + 1]} for i in range(len(images))]},
                        q._recipe_manager)
        content = q.quantize(calib.get_model_qsvs()).quantized_model
    log.info("ai-edge-quantizer: %s", " ".join(printed.getvalue().split()))
    meta = read_metadata(float_path)
    meta["int8"] = {"tool": "ai-edge-quantizer", "weights": "int8 per channel", "activations": "int8 per tensor",
                    "calibration": method, "calibration_images": int(images.shape[0]), "op_types": list(op_types),
                    "float_model": float_path.name, **(metadata or {})}
    return atomic_write(out_path, _tflite_with_metadata(bytes(content), meta))


def export_model(model: nn.Module, path: str | os.PathLike, fmt: str, **kwargs: Any) -> Path:
    """:func:`export_onnx`, :func:`export_program` or :func:`export_litert` by ``fmt`` (``onnx``, ``pt2``,
    ``tflite``)."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not an export format; choose one of: {', '.join(FORMATS)}")
    return {"onnx": export_onnx, "pt2": export_program, "tflite": export_litert}[fmt](model, path, **kwargs)


def _runner(path: Path, num_threads: int | None = None):
    """A function running the exported file in its runtime: images (N, 3, H, W) -> tuple of tensors (for a LiteRT
    detector, its candidates finished on the host by :func:`select_detections`: the ONNX export's four outputs)."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda images: tuple(torch.from_numpy(np.asarray(o)) for o in session.run(None, {name: images.numpy()}))
    if path.suffix == ".pt2":
        import torchvision  # noqa: F401  (registers torchvision::nms, which a detector's program calls)

        module = torch.export.load(str(path)).module()
        return lambda images: tuple(o.detach() for o in (lambda out: out if isinstance(out, tuple) else (out,))(
            module(images)))
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        meta = read_metadata(path)
        signature = Interpreter(model_path=str(path), num_threads=num_threads).get_signature_runner()
        name = next(iter(signature.get_input_details()))
        post = meta.get("postprocess")
        first = meta.get("outputs", []).index("boxes") if post else None  # where the candidates are

        def run(images: Tensor) -> tuple[Tensor, ...]:
            outs = [signature(**{name: images[i:i + 1].numpy()}) for i in range(images.shape[0])]  # batch 1
            keys = sorted(outs[0], key=lambda k: int(k.rsplit("_", 1)[-1]) if k.rsplit("_", 1)[-1].isdigit() else k)
            tensors = tuple(torch.cat([torch.from_numpy(np.asarray(o[k])) for o in outs]) for k in keys)
            if post is None:
                return tensors
            detections = select_detections(
                *tensors[first:first + 3], image_size=meta["input"]["shape"][-2:], num_classes=post["num_classes"],
                score_thresh=post["score_thresh"], nms_thresh=post["nms_thresh"],
                detections_per_img=post["detections_per_img"])
            return tensors[:first] + detections + tensors[first + 3:]

        return run
    raise ValueError(f"{path}: not an export this module reads (.onnx, .pt2 or .tflite)")


def load_check_images(folder: str | os.PathLike, size: Sequence[int], limit: int | None = None) -> Tensor:
    """The images of ``folder`` (sorted; at most ``limit``), each resized to ``size`` (H, W) bilinearly, as one
    float batch in [0, 1]."""
    from .predict import list_images

    return _load_resized(list_images(folder)[:limit], size)


def _load_resized(paths: Sequence[str | os.PathLike], size: Sequence[int]) -> Tensor:
    """The images at ``paths``, each resized to ``size`` (H, W) bilinearly (antialiased), as one float batch in
    [0, 1]: what the checks and :func:`evaluate_detections` feed an export."""
    import torch.nn.functional as F

    from .data import load_rgb

    batch = []
    for p in paths:
        image = torch.from_numpy(load_rgb(p)).permute(2, 0, 1).float().div(255).unsqueeze(0)
        batch.append(F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(batch).clamp(0, 1)


def _match(eager: dict[str, Tensor], boxes: Tensor, scores: Tensor, labels: Tensor, threshold: float,
           tolerance: float) -> dict[str, Any]:
    """Compare one image's eager detections with the exported ones (rows ``:num_detections``) at ``threshold``.

    A detection is matched when the other side has one of the same label whose box differs by at most
    ``tolerance`` in every coordinate; a detection scoring within 1e-3 of the threshold on one side may be
    just below it on the other, so the other side is searched down to ``threshold - 1e-3``."""
    slack = threshold - 1e-3
    sides = [(eager["boxes"], eager["scores"], eager["labels"]), (boxes, scores, labels)]
    unmatched, box_diffs, score_diffs = [0, 0], [], []
    for i, (b, s, l) in enumerate(sides):
        ob, os_, ol = sides[1 - i]
        for box, score, label in zip(b[s >= threshold], s[s >= threshold], l[s >= threshold]):
            same = (ol == label) & (os_ >= slack)
            if not bool(same.any()):
                unmatched[i] += 1
                continue
            diff = (ob[same] - box).abs().amax(dim=1)
            j = int(diff.argmin())
            if float(diff[j]) > tolerance:
                unmatched[i] += 1
            if i == 0:
                box_diffs.append(float(diff[j]))
                score_diffs.append(abs(float(os_[same][j]) - float(score)))
    # the agreement of a quantized export, where exact parity is not expected: the detections scoring at least
    # ``threshold`` on both sides paired one to one (greedily, by decreasing IoU) by label and IoU >= 0.5
    from torchvision.ops import box_iou

    e_keep, x_keep = eager["scores"] >= threshold, scores >= threshold
    iou = box_iou(eager["boxes"][e_keep].float(), boxes[x_keep].float())
    iou = iou * (eager["labels"][e_keep].unsqueeze(1) == labels[x_keep].unsqueeze(0))
    paired = 0
    while iou.numel() and float(iou.max()) >= 0.5:
        i, j = divmod(int(iou.argmax()), iou.shape[1])
        iou[i, :], iou[:, j] = 0, 0
        paired += 1
    return {"paired_iou0.5": paired,
            "eager": int((sides[0][1] >= threshold).sum()), "exported": int((scores >= threshold).sum()),
            "unmatched_eager": unmatched[0], "unmatched_exported": unmatched[1],
            "max_box_diff": max(box_diffs, default=0.0), "max_score_diff": max(score_diffs, default=0.0)}


def check_export(path: str | os.PathLike, model: nn.Module, images: Tensor, *, batch_size: int = 4,
                 logit_tolerance: float = LOGIT_TOLERANCE, box_tolerance: float = BOX_TOLERANCE,
                 score_threshold: float = SCORE_THRESHOLD) -> dict[str, Any]:
    """Run the exported ``path`` in its runtime (ONNX Runtime for ``.onnx``, ``torch.export.load`` for ``.pt2``,
    the LiteRT interpreter for ``.tflite``, one image at a time and a detector's NMS on the host) beside the
    PyTorch ``model`` on ``images`` (float ``(N, 3, H, W)`` in [0, 1] at the export's size), in
    batches of ``batch_size``, and report the differences.

    A joint model's report has one such entry per head (``ok`` when all are).

    Classification / segmentation: ``max_abs_diff`` of the logits (``ok`` when within ``logit_tolerance``) and
    the share of equal argmaxes. Detection: per image, the exported ``num_detections`` against the eager
    model's number of detections, the padding rows (boxes and scores 0, labels -1), and the detections scoring
    at least ``score_threshold`` matched both ways by label and box (``box_tolerance`` per coordinate); ``ok``
    when every count is equal, the padding is right and every such detection is matched. For int8 exports, where
    exact parity is not expected: ``agreement_iou0.5``, the detections scoring at least ``score_threshold`` on
    both sides paired one to one by label and IoU >= 0.5, as 2 x pairs / (eager + exported detections).
    """
    path = Path(path)
    run = _runner(path)
    inner = model.model if isinstance(model, (ExportableDetector, ExportableMultiTask)) else model
    inner.eval()
    task = task_of(inner)
    heads = _heads(inner)
    report: dict[str, Any] = {"file": str(path), "format": path.suffix.lstrip("."), "task": task,
                              "images": int(images.shape[0]), "input_size": list(images.shape[-2:]),
                              "batch_size": batch_size}
    checks = {head: (_DetectionCheck(score_threshold, box_tolerance) if head == "detection"
                     else _LogitsCheck(logit_tolerance)) for head in heads}
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size]
            exported = list(run(batch))
            reference = inner(batch)
            reference = reference if task == "multitask" else {task: reference}
            for head in heads:  # the exported outputs, in the heads' order: four for a detector, one otherwise
                count = 4 if head == "detection" else 1
                checks[head].add(exported[:count], reference[head])
                exported = exported[count:]
    n = report["images"]
    if task != "multitask":
        report.update(checks[task].report(n))
    else:
        report.update({head: checks[head].report(n) for head in heads})
        report["ok"] = all(report[head]["ok"] for head in heads)
    return report


class _LogitsCheck:
    """Logits (classification, segmentation) of an export against the PyTorch model's."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance, self.diffs, self.agree, self.total = tolerance, [], 0, 0

    def add(self, exported: list[Tensor], reference: Tensor) -> None:
        logits = exported[0].to(reference.dtype)
        self.diffs.append(float((logits - reference).abs().max()))
        self.agree += int((logits.argmax(1) == reference.argmax(1)).sum())
        self.total += reference.argmax(1).numel()

    def report(self, images: int) -> dict[str, Any]:
        diff = max(self.diffs, default=0.0)
        return {"max_abs_diff": diff, "tolerance": self.tolerance, "argmax_agreement": self.agree / max(self.total, 1),
                "ok": diff <= self.tolerance}


class _DetectionCheck:
    """A detector's padded outputs (boxes, scores, labels, num_detections) against the eager detections."""

    KEYS = ("paired_iou0.5", "eager", "exported", "unmatched_eager", "unmatched_exported")

    def __init__(self, score_threshold: float, box_tolerance: float) -> None:
        self.score_threshold, self.box_tolerance = score_threshold, box_tolerance
        self.det: dict[str, Any] = {**{k: 0 for k in self.KEYS}, "max_box_diff": 0.0, "max_score_diff": 0.0,
                                    "count_equal": 0, "padding_ok": 0}

    def add(self, exported: list[Tensor], reference: list[dict[str, Tensor]]) -> None:
        boxes, scores, labels, count = exported
        det = self.det
        for i, eager in enumerate(reference):
            n = int(count[i])
            det["count_equal"] += int(n == len(eager["boxes"]))
            det["padding_ok"] += int(bool((boxes[i, n:] == 0).all() and (scores[i, n:] == 0).all()
                                          and (labels[i, n:] == -1).all()))
            one = _match(eager, boxes[i, :n], scores[i, :n], labels[i, :n], self.score_threshold, self.box_tolerance)
            for key in self.KEYS:
                det[key] += one[key]
            det["max_box_diff"] = max(det["max_box_diff"], one["max_box_diff"])
            det["max_score_diff"] = max(det["max_score_diff"], one["max_score_diff"])

    def report(self, images: int) -> dict[str, Any]:
        det, threshold = self.det, self.score_threshold
        return {f"detections_eager>={threshold}": det["eager"], f"detections_exported>={threshold}": det["exported"],
                "unmatched_eager": det["unmatched_eager"], "unmatched_exported": det["unmatched_exported"],
                "max_box_diff": det["max_box_diff"], "max_score_diff": det["max_score_diff"],
                "images_count_equal": det["count_equal"], "images_padding_ok": det["padding_ok"],
                "box_tolerance": self.box_tolerance,
                # for int8 exports: the detections paired by label and IoU >= 0.5, 2 x paired / (eager + exported)
                "paired_iou0.5": det["paired_iou0.5"],
                "agreement_iou0.5": 2 * det["paired_iou0.5"] / max(det["eager"] + det["exported"], 1),
                "ok": (det["count_equal"] == images and det["padding_ok"] == images and det["unmatched_eager"] == 0
                       and det["unmatched_exported"] == 0)}


def evaluate_detections(path: str | os.PathLike, annotation_file: str | os.PathLike, image_dir: str | os.PathLike, *,
                        batch_size: int = 8, limit: int | None = None) -> dict[str, float]:
    """COCO box mAP of an exported detector (or joint model) on a COCO folder: each image of ``annotation_file``
    (at most ``limit``) resized to the export's size as :func:`load_check_images` does, run in the file's runtime
    (a LiteRT file with its NMS on the host), its boxes scaled back to the image and scored with torchmetrics'
    COCO mAP (pycocotools), as ``tools/test.py`` scores the PyTorch model. The labels are matched to the dataset by
    the export's ``category_ids`` (its metadata; ``tools/export.py`` writes them) or, lacking them, as the
    dataset's sorted categories. Returns ``map``, ``map_50``, ... (:data:`~vision_tasks.tasks.detection.MAP_KEYS`)
    and ``images``."""
    from .data.formats.coco import read_coco
    from .tasks.detection import MAP_KEYS, map_metric

    path = Path(path)
    meta = read_metadata(path)
    outputs = meta.get("outputs", [])
    if "boxes" not in outputs:
        raise ValueError(f"{path}: not a detector's export (its outputs are {outputs}); mAP needs boxes")
    first = outputs.index("boxes")
    data = read_coco(annotation_file, image_dir)
    model_ids = meta.get("category_ids") or None
    if model_ids is None:
        num_classes = (meta.get("postprocess") or {}).get("num_classes")
        if num_classes not in (None, len(data.category_ids)):
            raise ValueError(f"{path} has {num_classes} classes and no category_ids in its metadata; "
                             f"{annotation_file} has {len(data.category_ids)} categories: no way to match them")
        model_ids = data.category_ids
    height, width = (int(s) for s in meta["input"]["shape"][-2:])
    run = _runner(path)
    metric = map_metric()
    records = data.records[:limit]
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        batch = _load_resized([r.path for r in chunk], (height, width))
        boxes, scores, labels, count = run(batch)[first:first + 4]
        preds, targets = [], []
        for i, record in enumerate(chunk):
            n = int(count[i])
            scale = boxes.new_tensor([record.width / width, record.height / height] * 2)
            preds.append({"boxes": boxes[i, :n].float() * scale, "scores": scores[i, :n].float(),
                          "labels": torch.tensor([model_ids[int(label)] for label in labels[i, :n]], dtype=torch.int64)})
            targets.append({"boxes": torch.from_numpy(record.boxes).float(),
                            "labels": torch.tensor([data.category_ids[int(label)] for label in record.labels],
                                                   dtype=torch.int64),
                            "iscrowd": torch.from_numpy(record.iscrowd).long(),
                            "area": torch.from_numpy(record.area).float()})
        metric.update(preds, targets)
    results = metric.compute()
    return {**{key: float(results[key]) for key in MAP_KEYS}, "images": len(records)}


def report_path(path: str | os.PathLike) -> Path:
    """Where the parity report of an export goes: ``model.onnx`` -> ``model.onnx.parity.json``."""
    path = Path(path)
    return path.with_name(path.name + ".parity.json")


def export(cfg: Any) -> Path:
    """What ``tools/export.py`` does with its config (``configs/export.yaml``): load the model of ``ckpt_path=``
    or ``weights=`` (as ``tools/predict.py`` does), export it as ``format=`` to ``out=`` and, with
    ``check_images=``, check the export on those images and write the report beside it. Returns the export."""
    from hydra.utils import get_class

    from .models import describe_weights
    from .predict import load_model

    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt} is not an export format; choose one of: {', '.join(FORMATS)}")
    if not cfg.get("out"):
        raise ValueError(f"tools/export.py needs out=FILE (the {FORMATS[fmt]} file to write)")
    if bool(cfg.ckpt_path) == bool(cfg.weights):
        raise ValueError("tools/export.py needs exactly one of ckpt_path=CHECKPOINT or weights=WEIGHT_FILE")
    require(fmt)  # before the model is loaded: a missing package is said first
    out = Path(str(cfg.out)).expanduser()
    if out.suffix != FORMATS[fmt]:
        out = out.with_name(out.name + FORMATS[fmt])
    report_file = report_path(out)
    int8 = bool(cfg.get("int8", False))
    int8_out = int8_path(out)
    if int8 and fmt == "pt2":
        raise ValueError("int8=true quantizes ONNX (ONNX Runtime) and LiteRT (format=tflite) exports; format=pt2 has "
                         "no int8 path here")
    method = str(cfg.get("calibration_method") or "minmax")
    methods = LITERT_CALIBRATIONS if fmt == "tflite" else CALIBRATION_METHODS
    if int8 and method not in methods:
        raise ValueError(f"calibration_method={method}: format={fmt} calibrates with one of {', '.join(methods)}")
    if int8 and not cfg.get("calibration_images"):
        raise ValueError("int8=true needs calibration_images=DIR (a few hundred images like those the model sees)")
    targets = [out] + ([int8_out] if int8 else [])
    for path in targets + ([report_path(p) for p in targets] if cfg.get("check_images") else []):
        _refuse_existing(path)
    from .predict import list_images

    for folder in (cfg.get("check_images"), cfg.get("calibration_images") if int8 else None):
        if folder:  # a bad folder is said now, not after the export
            list_images(folder)
    task_name = get_class(cfg.task._target_).name
    if cfg.weights:
        info = describe_weights(cfg.weights)
        if info.task not in (None, task_name):
            raise ValueError(f"weights={cfg.weights} holds a {info.task} model, but task={task_name} was asked for")
    model, names = load_model(cfg, task_name)
    model.eval()
    size = cfg.get("image_size")
    size = None if size is None else (int(size) if isinstance(size, (int, str)) else [int(s) for s in size])
    metadata = {"class_names": list(names) if names else None,
                "source": str(cfg.ckpt_path or cfg.weights)}
    if task_name in ("detection", "multitask"):
        detector = model if task_name == "detection" else getattr(model, "detection", None)
        metadata["category_ids"] = getattr(detector, "category_ids", None)
    module = exportable(model, size)
    export_model(module, out, fmt, image_size=size, metadata=metadata)
    outputs = output_names(module, litert=fmt == "tflite")
    shape = ", ".join(map(str, (1 if fmt == "tflite" else "N", 3, *input_size(module, size))))
    print(f"wrote {out.resolve()} ({fmt}, task={task_name}, input ({shape}) float in [0, 1]; "
          f"outputs: {', '.join(outputs)})")
    if int8:
        calibration = load_check_images(cfg.calibration_images, input_size(module, size),
                                        int(cfg.get("calibration_limit") or 300))
        if cfg.get("calibration_flip"):  # a small calibration set doubled by its mirror images (more ranges seen)
            calibration = torch.cat([calibration, calibration.flip(-1)])
        if fmt == "tflite":
            quantize_litert(out, int8_out, calibration, method=method,
                            metadata={"calibration_folder": str(cfg.calibration_images)})
            kind = "int8 LiteRT, ai-edge-quantizer"
        else:
            quantize_onnx(out, int8_out, calibration, method=method,
                          activation_type=str(cfg.get("int8_activations") or "quint8"),
                          reduce_range=cfg.get("int8_reduce_range"),
                          metadata={"calibration_folder": str(cfg.calibration_images)})
            kind = "int8 QDQ, ONNX Runtime"
        print(f"wrote {int8_out.resolve()} ({kind}; calibrated on {calibration.shape[0]} images of "
              f"{cfg.calibration_images})")
    if cfg.get("check_images"):
        images = load_check_images(cfg.check_images, input_size(module, size), int(cfg.check_limit))
        report = check_export(out, model, images, batch_size=int(cfg.check_batch_size))
        report["check_images"] = str(cfg.check_images)
        atomic_write(report_file, json.dumps(report, indent=1) + "\n")
        print(json.dumps(report, indent=1))
        print(f"parity {'OK' if report['ok'] else 'NOT within the tolerances'}; report written to {report_file.resolve()}")
        if int8:
            report = check_export(int8_out, model, images, batch_size=int(cfg.check_batch_size))
            report["check_images"] = str(cfg.check_images)
            # int8 is not expected to match to 1e-4: its report says the agreement against the targets
            verdicts = []
            for head, part in ({task_name: report} if task_name != "multitask"
                               else {h: report[h] for h in _heads(module)}).items():
                key, target = (("agreement_iou0.5", INT8_TARGETS["detection"]) if head == "detection"
                               else ("argmax_agreement", INT8_TARGETS[head]))
                part["ok"] = part[key] >= target
                part["target"] = {key: target}
                verdicts.append(f"{'' if head == task_name else head + ' '}{key} {part[key]:.4f} "
                                f"({'meets' if part['ok'] else 'BELOW'} the target {target})")
            if task_name == "multitask":
                report["ok"] = all(report[h]["ok"] for h in _heads(module))
            atomic_write(report_path(int8_out), json.dumps(report, indent=1) + "\n")
            print(json.dumps(report, indent=1))
            print(f"int8 {'; '.join(verdicts)}; report written to {report_path(int8_out).resolve()}")
    return out
