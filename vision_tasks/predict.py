"""What ``tools/predict.py`` does: run a trained model on images and draw what it sees.

For every image of ``input`` (a file or a folder) it writes a PNG with the predictions drawn on the
image (detection: boxes with class names and scores; classification: the top-1 class;
segmentation: the class colours blended over the image, plus the class-index mask itself as a VOC
palette PNG, ``<name>_mask.png``; the joint model: the mask overlay, the boxes and the image labels in one
picture, and the mask PNG) into ``output``, and all predictions, in original-image pixels,
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
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torchvision.ops import nms
from torchvision.utils import draw_bounding_boxes
from tqdm import tqdm

from .checkpoints import model_from_checkpoint
from .data import IMAGE_EXTENSIONS, load_rgb, voc_colormap
from .files import atomic_write
from .models import MF_SCALES, describe_weights, model_from_weights

log = logging.getLogger(__name__)

__all__ = ["predict", "list_images", "load_model", "draw_detections", "draw_legend", "mask_image", "overlay_mask"]


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
    """Run an evaluation pipeline (resize / crop, then [0, 1]) on an image alone (bbox-aware pipelines get no boxes)."""
    extra: dict[str, Any] = {}
    processor = getattr(transform, "processors", {}).get("bboxes")
    if processor is not None:
        extra["bboxes"] = np.zeros((0, 4), dtype=np.float32)
        extra.update({name: [] for name in processor.params.label_fields or ()})
    return transform(image=image, **extra)["image"]


def _font(image_height: int) -> tuple[str, int]:
    """A TrueType font that ships with matplotlib (a dependency) and a size readable at this image height."""
    from matplotlib import font_manager

    return font_manager.findfont("DejaVu Sans"), max(11, round(image_height / 32))


def draw_detections(
    image: np.ndarray,
    detection: dict[str, torch.Tensor],
    class_names: list[str],
    score_thresh: float = 0.3,
    overlap: float = 0.7,
) -> Image.Image:
    """Draw the boxes scoring at least ``score_thresh`` with "name score" captions (torchvision's drawing utility).

    Per-class NMS keeps one box per class, so one object may carry two classes' boxes; the picture shows each
    object once, with its best class: among the drawn boxes, one overlapping a higher-scoring box by more than
    ``overlap`` IoU is left out (``torchvision.ops.nms``). ``predictions.json`` keeps every detection.
    """
    keep = detection["scores"] >= score_thresh
    boxes, scores, labels = detection["boxes"][keep], detection["scores"][keep], detection["labels"][keep]
    keep = nms(boxes.float(), scores.float(), overlap)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if len(boxes) == 0:  # the photo as it is (torchvision's drawing would warn "boxes doesn't contain any box")
        return Image.fromarray(image)
    captions = [f"{class_names[int(l)]} {float(s):.2f}" for l, s in zip(labels, scores)]
    palette = _palette(len(class_names))
    canvas = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    width = max(2, round(max(image.shape[:2]) / 250))
    font, size = _font(image.shape[0])
    drawn = draw_bounding_boxes(canvas, boxes, labels=captions, colors=[palette[int(l)] for l in labels], width=width,
                                font=font, font_size=size, fill_labels=True, label_colors="white")
    return Image.fromarray(drawn.permute(1, 2, 0).numpy())


def _draw_label(image: np.ndarray, text: str) -> Image.Image:
    img = Image.fromarray(image)
    draw = ImageDraw.Draw(img)
    path, size = _font(image.shape[0])
    font = ImageFont.truetype(path, size)
    left, top, right, bottom = draw.textbbox((6, 6), text, font=font)
    draw.rectangle((left - 4, top - 4, right + 4, bottom + 4), fill=(0, 0, 0))
    draw.text((6, 6), text, fill=(255, 255, 255), font=font)
    return img


def draw_legend(image: Image.Image, entries: list[tuple[str, tuple[int, int, int], float]]) -> Image.Image:
    """``image`` with a legend below it: a colour swatch, the class name and its share of the image, per entry."""
    if not entries:
        return image
    path, size = _font(image.height)
    font = ImageFont.truetype(path, size)
    pad, swatch = size // 2, size
    texts = [f"{name} {share:.0%}" if share >= 0.01 else f"{name} <1%" for name, _, share in entries]
    widths = [font.getbbox(text)[2] + swatch + 3 * pad for text in texts]
    rows, row, used = [], [], 0
    for (_, colour, _), text, w in zip(entries, texts, widths):  # wrapped over as many rows as the width needs
        if row and used + w > image.width:
            rows.append(row)
            row, used = [], 0
        row.append(((text, colour), w))
        used += w
    rows.append(row)
    line = swatch + 2 * pad
    canvas = Image.new("RGB", (image.width, image.height + line * len(rows)), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for r, items in enumerate(rows):
        x, y = pad, image.height + r * line + pad
        for (text, colour), w in items:
            draw.rectangle((x, y, x + swatch, y + swatch), fill=tuple(int(c) for c in colour), outline=(0, 0, 0))
            draw.text((x + swatch + pad, y + swatch // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
            x += w
    return canvas


def _palette(n: int) -> list[tuple[int, int, int]]:
    import colorsys

    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(1, n), 0.85, 1.0)) for i in range(n)]


# pictures of small images (the synthetic defaults' 96-128 px) are drawn enlarged to at least this long side, so that
# the labels and legend stay readable; the records keep the images' own pixels
MIN_DRAW_SIDE = 384


def _enlarged(image: np.ndarray, det: dict | None = None, mask: np.ndarray | None = None):
    """``image`` (and its detections' boxes, its mask) scaled by a whole factor to a long side >= MIN_DRAW_SIDE
    (pixel replication for the mask, bilinear for the image); unchanged when already that large."""
    factor = -(-MIN_DRAW_SIDE // max(image.shape[:2]))  # ceil
    if factor <= 1:
        return image, det, mask
    h, w = image.shape[:2]
    image = np.asarray(Image.fromarray(image).resize((w * factor, h * factor), Image.BILINEAR))
    if det is not None:
        det = {**det, "boxes": det["boxes"] * factor}
    if mask is not None:
        mask = mask.repeat(factor, axis=0).repeat(factor, axis=1)
    return image, det, mask


def _classification(model: nn.Module, batch: torch.Tensor, images: list[np.ndarray], names: list[str]):
    probs = model(batch).softmax(dim=1)
    scores, labels = probs.topk(min(5, probs.shape[1]), dim=1)
    for image, s, l in zip(images, scores, labels):
        record = {"labels": l.tolist(), "scores": [round(v, 5) for v in s.tolist()],
                  "class_names": [names[i] for i in l.tolist()]}
        yield record, _draw_label(image, f"{names[int(l[0])]} {float(s[0]):.2f}")


def _detection(model: nn.Module, batch: torch.Tensor, images: list[np.ndarray], names: list[str], score_thresh: float):
    detections = model(batch, original_sizes=[image.shape[:2] for image in images])  # in the photos' own pixels
    for image, det in zip(images, detections):
        record = {"boxes": [[round(v, 2) for v in b] for b in det["boxes"].tolist()],
                  "scores": [round(v, 5) for v in det["scores"].tolist()], "labels": det["labels"].tolist(),
                  "class_names": [names[i] for i in det["labels"].tolist()]}
        yield record, draw_detections(*_enlarged(image, det)[:2], names, score_thresh)


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


def _segmentation(model: nn.Module, batch: torch.Tensor, images: list[np.ndarray], names: list[str], settings):
    logits = model.segment(batch, **settings)  # padded, multi-scale / flipped if asked, cropped back to each image
    colormap = voc_colormap(256)
    for image, image_logits in zip(images, logits):
        mask = image_logits.argmax(dim=0).numpy()
        counts = np.bincount(mask.ravel(), minlength=len(names))
        present = {names[i]: round(float(counts[i]) / mask.size, 5) for i in np.flatnonzero(counts)}
        legend = [(names[i], colormap[i], counts[i] / mask.size) for i in np.argsort(-counts) if counts[i] and i > 0]
        if counts[0]:  # class 0 is left uncoloured: a blank swatch, last, so that the legend is never empty
            legend.append((names[0], (255, 255, 255), counts[0] / mask.size))
        big, _, big_mask = _enlarged(image, mask=mask)
        drawn = draw_legend(overlay_mask(big, big_mask, colormap), legend)  # each colour of the overlay, named
        yield {"class_fractions": present}, (drawn, mask_image(mask, colormap))


def _multitask(model: nn.Module, batch: torch.Tensor, images: list[np.ndarray], names: list[str], score_thresh: float):
    """The joint model: the class-index mask blended in, the boxes on it, the image labels (sigmoid score >= 0.5, or
    the best one) in the corner and the mask's legend below, in one picture; every head's output in the record."""
    from heads.deeplab import upsample_logits

    out = model(batch, original_sizes=[image.shape[:2] for image in images])
    colormap = voc_colormap(256)
    for index, image in enumerate(images):
        record: dict[str, Any] = {}
        big = _enlarged(image)[0]
        picture = Image.fromarray(big)
        legend: list = []
        mask = None
        if "segmentation" in out:
            logits = upsample_logits(out["segmentation"][index : index + 1], image.shape[:2])[0]
            mask = logits.argmax(dim=0).numpy()
            seg_names = ["background", *names] if logits.shape[0] == len(names) + 1 else [
                f"class {i}" for i in range(logits.shape[0])]
            counts = np.bincount(mask.ravel(), minlength=len(seg_names))
            record["class_fractions"] = {seg_names[i]: round(float(counts[i]) / mask.size, 5)
                                         for i in np.flatnonzero(counts)}
            legend = [(seg_names[i], colormap[i], counts[i] / mask.size) for i in np.argsort(-counts) if counts[i] and i > 0]
            picture = overlay_mask(big, _enlarged(image, mask=mask)[2], colormap)
        if "detection" in out:
            det = out["detection"][index]
            record["detections"] = {
                "boxes": [[round(v, 2) for v in b] for b in det["boxes"].tolist()],
                "scores": [round(v, 5) for v in det["scores"].tolist()], "labels": det["labels"].tolist(),
                "class_names": [names[i] for i in det["labels"].tolist()]}
            picture = draw_detections(np.asarray(picture), _enlarged(image, det)[1], names, score_thresh)
        if "classification" in out:
            probs = out["classification"][index].sigmoid()
            order = probs.argsort(descending=True).tolist()
            present = [i for i in order if probs[i] >= 0.5] or order[:1]
            record["image_labels"] = {"labels": present, "scores": [round(float(probs[i]), 5) for i in present],
                                      "class_names": [names[i] for i in present],
                                      "all_scores": [round(v, 5) for v in probs.tolist()]}
            picture = _draw_label(np.asarray(picture), ", ".join(f"{names[i]} {float(probs[i]):.2f}" for i in present))
        picture = draw_legend(picture, legend)
        yield record, (picture, mask_image(mask, colormap)) if mask is not None else picture


def load_model(cfg: DictConfig, task_name: str) -> tuple[nn.Module, list[str] | None]:
    """The model of ``cfg.ckpt_path`` or ``cfg.weights`` (``tools/predict.py``, ``tools/export.py``) and its class
    names: from the checkpoint, from the weights' record, or ``cfg.model`` with ``weights=`` loaded into it (a
    plain state dict)."""
    if cfg.ckpt_path:
        model, meta = model_from_checkpoint(cfg.ckpt_path, expected_task=task_name)
        return model, meta.get("class_names")
    info = describe_weights(cfg.weights)
    if info.model_class is not None:  # a converted file, a TFLite release, a checkpoint given as weights=
        return model_from_weights(cfg.weights, info)[0], info.class_names
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if "num_classes" in model_cfg and model_cfg["num_classes"] is None:
        if not info.class_names:
            raise ValueError(
                f"weights={cfg.weights} is a plain state dict without metadata: it does not say how many classes it "
                "predicts (nor their names); set model.num_classes=N (the rows of its class layer) with the model.* "
                "settings it was trained with, or predict with the run's checkpoint (ckpt_path=RUN/checkpoints/best.ckpt)")
        model_cfg["num_classes"] = len(info.class_names)
    return instantiate(model_cfg, weights=cfg.weights), info.class_names


def predict(cfg: DictConfig) -> Path:
    """Predict ``cfg.input`` with ``cfg.ckpt_path`` (or ``cfg.weights``) and write into ``cfg.output``; returns it.

    The model normalises the images itself; the configured data module gives the evaluation resize
    (classification: shorter side and center crop; detection: the square input; segmentation: none,
    the whole image), so use the same ``data=`` settings as for training.
    """
    if not cfg.input or not cfg.output:
        raise ValueError("tools/predict.py needs input=IMAGE_OR_FOLDER and output=NEW_FOLDER")
    if bool(cfg.ckpt_path) == bool(cfg.weights):
        raise ValueError("tools/predict.py needs exactly one of ckpt_path=CHECKPOINT or weights=WEIGHT_FILE")
    task_name = get_class(cfg.task._target_).name
    paths = list_images(cfg.input)
    out = _prepare_output(cfg.output, paths)
    datamodule = instantiate(cfg.data, _convert_="all")  # for its evaluation transform only: no data is read
    model, names = load_model(cfg, task_name)
    if not names:
        count = getattr(model, "num_classes", None)
        if count is None:  # the joint model: its detection or classification head's classes
            count = next(getattr(model, h).num_classes for h in ("detection", "classification", "segmentation")
                         if getattr(model, h, None) is not None)
        names = [f"class {i}" for i in range(count)]
    names = list(names)
    model.eval()
    run = {"classification": _classification, "detection": _detection, "segmentation": _segmentation,
           "multitask": _multitask}.get(task_name)
    if run is None:
        raise ValueError(f"tools/predict.py does not handle task={task_name} yet")
    extra: tuple = ()
    if task_name in ("detection", "multitask"):
        extra = (cfg.draw_threshold,)
    elif task_name == "segmentation":
        mf = bool(cfg.get("mf"))
        extra = ({"pad_to": cfg.task.get("eval_pad_size"), "scales": MF_SCALES if mf else tuple(cfg.task.eval_scales),
                  "flip": mf or bool(cfg.task.eval_flip), "average": cfg.task.eval_average},)
    records = []
    with torch.inference_mode():
        for path in tqdm(paths, desc="predict", unit="image"):
            image = load_rgb(path)
            batch = _apply(datamodule.eval_transform, image).unsqueeze(0)
            for record, drawn in run(model, batch, [image], names, *extra):
                # a.jpg and a.png in one folder: the second one's outputs keep its extension in the name
                stem = path.stem if not (out / f"{path.stem}.png").exists() else path.name
                if isinstance(drawn, tuple):  # segmentation (and the joint model): the overlay and the mask itself
                    drawn, mask = drawn
                    atomic_write(out / f"{stem}_mask.png", lambda f, mask=mask: mask.save(f, format="PNG"))
                    record = {"mask": f"{stem}_mask.png", **record}
                atomic_write(out / f"{stem}.png", lambda f, drawn=drawn: drawn.save(f, format="PNG"))
                records.append({"file": str(path), "height": image.shape[0], "width": image.shape[1], **record})
    atomic_write(out / "predictions.json", json.dumps(records, indent=1) + "\n")
    print(f"wrote {len(records)} images and predictions.json to {out.resolve()}")
    return out
