"""What ``tools/predict.py`` does: run a trained model on images and draw what it sees.

For every image of ``input`` (a file or a folder) it writes a PNG with the predictions drawn on the
image (detection: boxes with class names and scores; classification: the top-1 class;
segmentation: the class colours blended over the image, plus the class-index mask itself as a VOC
palette PNG, ``<name>_mask.png``) into ``output``, and all predictions, in original-image pixels,
into ``output/predictions.json``.
Nothing is written over: ``output`` must be new or empty and must not be the input folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from PIL import Image, ImageDraw
from torch import nn
from torchvision.utils import draw_bounding_boxes
from tqdm import tqdm

import backbones

from .checkpoints import model_from_checkpoint
from .convert import apply_sidecar, model_from_sidecar, weights_description
from .data import IMAGE_EXTENSIONS, load_rgb
from .data.segmentation import voc_colormap
from .tasks.segmentation import MF_SCALES, multi_scale_logits

log = logging.getLogger(__name__)

__all__ = ["predict", "list_images", "draw_detections", "mask_image", "overlay_mask"]


def list_images(source: str | Path) -> list[Path]:
    """The image files of ``source``: the file itself, or the images directly inside the folder, sorted."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input={source}: no such image or folder")
    images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise FileNotFoundError(f"input={source}: the folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
    return images


def _prepare_output(output: str | Path, inputs: list[Path]) -> Path:
    out = Path(output).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output={output} exists and is not an empty folder; choose a new one (nothing is overwritten)")
    if any(p.parent.resolve() == out.resolve() for p in inputs):
        raise ValueError(f"output={output} is the input folder; choose another one (the inputs must stay untouched)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _apply(transform: Callable[..., dict[str, Any]], image: np.ndarray) -> torch.Tensor:
    """Run an evaluation pipeline on an image alone (bbox-aware albumentations pipelines get no boxes)."""
    extra: dict[str, Any] = {}
    processor = getattr(transform, "processors", {}).get("bboxes")
    if processor is not None:
        extra["bboxes"] = np.zeros((0, 4), dtype=np.float32)
        extra.update({name: [] for name in processor.params.label_fields or ()})
    return transform(image=image, **extra)["image"].float()  # some normalisations give float64


def draw_detections(
    image: np.ndarray, detection: dict[str, torch.Tensor], class_names: list[str], score_thresh: float = 0.3
) -> Image.Image:
    """Draw the boxes scoring at least ``score_thresh`` with "name score" captions (torchvision's drawing utility)."""
    keep = detection["scores"] >= score_thresh
    boxes, scores, labels = detection["boxes"][keep], detection["scores"][keep], detection["labels"][keep]
    captions = [f"{class_names[int(l)]} {float(s):.2f}" for l, s in zip(labels, scores)]
    palette = _palette(len(class_names))
    canvas = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    width = max(1, round(max(image.shape[:2]) / 200))
    drawn = draw_bounding_boxes(canvas, boxes, labels=captions, colors=[palette[int(l)] for l in labels], width=width)
    return Image.fromarray(drawn.permute(1, 2, 0).numpy())


def _draw_label(image: np.ndarray, text: str) -> Image.Image:
    img = Image.fromarray(image)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((4, 4), text)
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 255))
    return img


def _palette(n: int) -> list[tuple[int, int, int]]:
    import colorsys

    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(1, n), 0.85, 1.0)) for i in range(n)]


def _classification(model: nn.Module, batch: torch.Tensor, images: list[np.ndarray], names: list[str]):
    probs = model(batch).softmax(dim=1)
    scores, labels = probs.topk(min(5, probs.shape[1]), dim=1)
    for image, s, l in zip(images, scores, labels):
        record = {"labels": l.tolist(), "scores": [round(v, 5) for v in s.tolist()],
                  "class_names": [names[i] for i in l.tolist()]}
        yield record, _draw_label(image, f"{names[int(l[0])]} {float(s[0]):.2f}")


def _detection(model: nn.Module, batch: torch.Tensor, images: list[np.ndarray], names: list[str], score_thresh: float):
    for image, det in zip(images, model(batch)):
        scale = det["boxes"].new_tensor([image.shape[1] / batch.shape[-1], image.shape[0] / batch.shape[-2]] * 2)
        det = {**det, "boxes": det["boxes"] * scale}
        record = {"boxes": [[round(v, 2) for v in b] for b in det["boxes"].tolist()],
                  "scores": [round(v, 5) for v in det["scores"].tolist()], "labels": det["labels"].tolist(),
                  "class_names": [names[i] for i in det["labels"].tolist()]}
        yield record, draw_detections(image, det, names, score_thresh)


def overlay_mask(image: np.ndarray, mask: np.ndarray, colormap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """``image`` with the colours of ``mask``'s classes blended in (background, class 0, left as it is)."""
    colours = colormap[mask].astype(np.float32)
    blend = np.where((mask > 0)[..., None], (1 - alpha) * image + alpha * colours, image)
    return Image.fromarray(np.rint(blend).astype(np.uint8))


def mask_image(mask: np.ndarray, colormap: np.ndarray) -> Image.Image:
    """A class-index mask as a palette PNG image (the format of VOC's SegmentationClass: it reads back as indices)."""
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(colormap[:256].astype(np.uint8).flatten().tolist())
    return img


def _segmentation(model: nn.Module, batch: torch.Tensor, images: list[np.ndarray], names: list[str], scales, flip):
    logits = multi_scale_logits(model, batch, scales, flip)  # one scale without flip: the plain forward
    colormap = voc_colormap(256)
    for image, classes in zip(images, logits.argmax(dim=1)):
        mask = classes[: image.shape[0], : image.shape[1]].numpy()  # drop the evaluation padding (bottom/right)
        counts = np.bincount(mask.ravel(), minlength=len(names))
        present = {names[i]: round(float(counts[i]) / mask.size, 5) for i in np.flatnonzero(counts)}
        yield {"class_fractions": present}, (overlay_mask(image, mask, colormap), mask_image(mask, colormap))


def predict(cfg: DictConfig) -> Path:
    """Predict ``cfg.input`` with ``cfg.ckpt_path`` (or ``cfg.weights``) and write into ``cfg.output``; returns it.

    The evaluation transform (size, normalisation) is that of the configured data module, so use
    the same ``data=`` settings as for training.
    """
    if not cfg.input or not cfg.output:
        raise ValueError("tools/predict.py needs input=IMAGE_OR_FOLDER and output=NEW_FOLDER")
    if bool(cfg.ckpt_path) == bool(cfg.weights):
        raise ValueError("tools/predict.py needs exactly one of ckpt_path=CHECKPOINT or weights=STATE_DICT_FILE")
    task_name = get_class(cfg.task._target_).name
    paths = list_images(cfg.input)
    out = _prepare_output(cfg.output, paths)
    sidecar = weights_description(cfg.weights) if cfg.weights else None
    if sidecar is not None:  # converted or TFLite weights: their model and preprocessing (tools/convert_weights.py)
        apply_sidecar(cfg, sidecar)
    datamodule = instantiate(cfg.data, _convert_="all")  # for its evaluation transform only: no data is read
    if cfg.ckpt_path:
        model, meta = model_from_checkpoint(cfg.ckpt_path, expected_task=task_name)
        names = meta.get("class_names")
    elif sidecar is not None:
        model, names = model_from_sidecar(cfg.weights, sidecar), sidecar.get("class_names")
    else:
        model = instantiate(cfg.model, _convert_="all")
        backbones.load_weights(model, cfg.weights)
        names = None
    names = list(names) if names else [f"class {i}" for i in range(model.num_classes)]
    model.eval()
    run = {"classification": _classification, "detection": _detection, "segmentation": _segmentation}.get(task_name)
    if run is None:
        raise ValueError(f"tools/predict.py does not handle task={task_name} yet")
    extra: tuple = ()
    if task_name == "detection":
        extra = (cfg.draw_threshold,)
    elif task_name == "segmentation":
        extra = (MF_SCALES, True) if cfg.get("mf") else ((1.0,), False)
    records = []
    with torch.inference_mode():
        for path in tqdm(paths, desc="predict", unit="image"):
            image = load_rgb(path)
            batch = _apply(datamodule.eval_transform, image).unsqueeze(0)
            for record, drawn in run(model, batch, [image], names, *extra):
                # a.jpg and a.png in one folder: the second one's outputs keep its extension in the name
                stem = path.stem if not (out / f"{path.stem}.png").exists() else path.name
                if isinstance(drawn, tuple):  # segmentation: the overlay and the mask itself
                    drawn, mask = drawn
                    mask.save(out / f"{stem}_mask.png")
                    record = {"mask": f"{stem}_mask.png", **record}
                drawn.save(out / f"{stem}.png")
                records.append({"file": str(path), "height": image.shape[0], "width": image.shape[1], **record})
    (out / "predictions.json").write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {len(records)} images and predictions.json to {out.resolve()}")
    return out
