#!/usr/bin/env python
"""Our float models with the TFLite releases' weights vs the uint8 TFLite interpreter, side by side.

The models are what the releases' weight records describe (``vision_tasks.models.model_from_weights``:
the weights dequantized and batch norm folded by ``backbones.tflite.read_tflite``, ``padding="tf_same"``,
inputs normalised inside the model to [-1, 1]). Both get the same photo: resized bilinearly (PIL) to
the file's input size as uint8 ``q``; the interpreter takes ``q``, our model the [0, 1] image that its
own normalisation turns into exactly the interpreter's float reading of ``q``, ``(q - zero_point) *
scale`` (``(q - 128) / 128``; ``q / 255`` would give ``(q - 127.5) / 127.5``).

1. Classifier (``mobilenet_v2_1.0_224_quant.tflite``, whole photo resized to 224x224):
   top-1 on the 8 labelled photos of shared/weights (README table), and on the 128 coco128 val
   photos the fraction where our top-1 equals the interpreter's (target >= 0.92; a faithful port
   reaches 0.938, PAPER.md section 10) and where ours lies in the interpreter's top-2 (target >= 0.99).
   The interpreter's ranking is that of its uint8 logits (the tensor before its softmax; the uint8
   softmax ties too often); "in its top-2" means our class's logit is >= its second-highest logit.
2. DeepLab (``deeplabv3_mnv2_pascal_quant.tflite``; ``--dm05`` adds the width-0.5 release): on the
   coco128 val photos that have a VOC-21 mask, photo resized to 513x513; pixel argmax agreement at
   513x513 (target >= 0.985; faithful port 0.994), and the mIoU of both against the masks. For the
   mIoU both 513x513 label maps are resized back to the mask's resolution (nearest neighbour) and
   scored as the segmentation task scores (``SegmentationTask``): a torchmetrics confusion matrix
   summed over all photos (label 255 ignored), the IoU averaged over the classes present in the
   ground truth (``segmentation_scores``) (PAPER.md: interpreter 0.508, float port 0.500; ours must
   be within 0.03 of the interpreter's).

3. Detector (``ssdlite_mobilenet_v2_coco_0.5_200x200.tflite``, TF OD API SSDLite, whole photo resized to
   200x200): on the 128 coco128 val photos, the share of the interpreter's detections scoring >= 0.3 that
   ours matches (same class, IoU >= 0.8; per photo, and over all of them), and how much of the shortfall the
   NMS difference alone explains (the interpreter's own raw outputs through our post-processing); the raw
   head outputs on the first photos (max abs difference of the 91 class logits and of the box encodings,
   before the post-processing operator, also in int8 steps of the file's tensors); the anchors, ours
   against the constant the file feeds its post-processing operator; and the COCO mAP (pycocotools
   through torchmetrics, as the detection task) of the interpreter and ours on the same 200x200 photos,
   plus ours on photos resized as the framework's evaluation pipeline resizes them (albumentations
   ``A.Resize``: cv2 bilinear without antialiasing, where PIL's bilinear filters over the whole footprint
   when shrinking).
   The interpreter's detections are the float outputs of its ``TFLite_Detection_PostProcess`` operator
   (the file's uint8 outputs round the class index to steps of 0.35 and the box corners to steps of
   0.0046: scored from them, mAP 0.174, AP50 0.302, AP75 0.168, the weights README's figures; from the
   float outputs 0.181). That operator runs a class-agnostic "fast" NMS with one class per anchor, ours
   the pipeline config's per-class NMS (score 1e-8, IoU 0.6, 100 per image).

Usage::

    python tools/tflite_parity.py                 # classifier + DeepLab 1.0 + detector
    python tools/tflite_parity.py --dm05          # also the width-0.5 DeepLab
    python tools/tflite_parity.py --skip-classifier --skip-deeplab     # the detector only
    python tools/tflite_parity.py --skip-classifier --limit 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchmetrics.classification import MulticlassConfusionMatrix
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from backbones.tflite import read_tflite  # noqa: E402
from vision_tasks.models import model_from_weights  # noqa: E402
from vision_tasks.tasks.segmentation import segmentation_scores  # noqa: E402

SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights"
COCO_VAL = SHARED / "data" / "coco128" / "val2017"
VOC_MASKS = SHARED / "data" / "coco128" / "voc21_masks" / "val2017"

# shared/weights/README.md: the interpreter's top-1 (1001-way index) on the labelled photos.
LABELLED = {"cat.bmp": 286, "bird.bmp": 20, "grace_hopper.bmp": 653, "parrot.jpg": 89, "owl.jpg": 83,
            "hot_dog.jpg": 935, "sunflower.bmp": 986, "dragonfly.bmp": 320}
TARGETS = {"top1_agree": 0.92, "in_top2": 0.99, "pixel_agree": 0.985, "miou_gap": 0.03, "det_match": 0.9, "det_map": 0.16}
DETECTOR = "ssdlite_mobilenet_v2_coco_0.5_200x200.tflite"
COCO_VAL_JSON = SHARED / "data" / "coco128" / "annotations" / "instances_val2017.json"


def load_photo(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The photo as uint8 (H, W, 3), resized bilinearly (whole photo, no crop) to ``size`` (H, W)."""
    return np.asarray(Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BILINEAR))


def to_float(q: np.ndarray, info: dict, model: torch.nn.Module) -> torch.Tensor:
    """(1, 3, H, W) input for ``model`` that its normalisation maps onto the interpreter's own float reading of
    its uint8 input, ``(q - zero_point) * scale``."""
    quant = info["input_quantization"]
    x = (torch.tensor(q, dtype=torch.float32) - quant["zero_point"]) * quant["scale"]
    x = x.permute(2, 0, 1)[None].contiguous()
    return x * model.preprocess.std + model.preprocess.mean


class TFLiteRunner:
    """The int8 interpreter on one uint8 image; ``tensor`` names an extra tensor to read back (e.g. the logits)."""

    def __init__(self, path: Path, before_op: str | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        # To read an intermediate tensor, run without delegates (XNNPACK would fuse it away).
        kwargs = dict(experimental_preserve_all_tensors=True,
                      experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES) if before_op else {}
        self.interp = Interpreter(model_path=str(path), **kwargs)
        self.interp.allocate_tensors()
        self.input = self.interp.get_input_details()[0]["index"]
        self.output = self.interp.get_output_details()[0]["index"]
        self.extra = None
        if before_op:
            op = next(o for o in self.interp._get_ops_details() if o["op_name"] == before_op)  # noqa: SLF001
            self.extra = op["inputs"][0]

    def __call__(self, q: np.ndarray) -> np.ndarray:
        self.interp.set_tensor(self.input, q[None])
        self.interp.invoke()
        return self.interp.get_tensor(self.extra if self.extra is not None else self.output)[0].copy()


def build(path: Path):
    _, info = read_tflite(path)
    model, _ = model_from_weights(path)
    return model.eval(), info


def classifier_parity(limit: int | None) -> None:
    path = WEIGHTS / "mobilenet_v2_1.0_224_quant.tflite"
    model, info = build(path)
    runner = TFLiteRunner(path, before_op="SOFTMAX")  # the uint8 logits, 1001-way
    size = info["input_size"]

    print(f"\n== classifier: {path.name} (width {info['width_mult']}, {size[0]}x{size[1]}, padding {info['padding']})")
    print(f"{'photo':<18}{'README':>8}{'interpreter':>13}{'ours':>7}")
    ok_readme = ok_interp = 0
    for name, want in LABELLED.items():
        q = load_photo(WEIGHTS / name, size)
        with torch.no_grad():
            ours = int(model(to_float(q, info, model)).argmax()) + 1  # back to the 1001-way index
        theirs = int(runner(q).reshape(-1).argmax())
        ok_readme += ours == want
        ok_interp += ours == theirs
        print(f"{name:<18}{want:>8}{theirs:>13}{ours:>7}")
    print(f"labelled photos: ours = README {ok_readme}/{len(LABELLED)}, ours = interpreter {ok_interp}/{len(LABELLED)} "
          f"(target 8/8)")

    photos = sorted(COCO_VAL.glob("*.jpg"))[:limit]
    same = in_top2 = 0
    for photo in tqdm(photos, desc="classifier coco128 val", leave=False, mininterval=5):
        q = load_photo(photo, size)
        with torch.no_grad():
            ours = int(model(to_float(q, info, model)).argmax()) + 1
        logits = runner(q).reshape(-1).astype(np.int32)[1:]  # drop background: argmax over the 1000 classes
        logits = np.concatenate([[np.iinfo(np.int32).min], logits])
        same += ours == int(logits.argmax())
        in_top2 += logits[ours] >= np.sort(logits)[-2]
    n = len(photos)
    print(f"coco128 val ({n} photos): top-1 agreement {same / n:.3f} (target >= {TARGETS['top1_agree']}, "
          f"faithful port 0.938); ours in interpreter top-2 {in_top2 / n:.3f} (target >= {TARGETS['in_top2']})")


def deeplab_parity(filename: str, limit: int | None) -> None:
    path = WEIGHTS / filename
    model, info = build(path)
    runner = TFLiteRunner(path)  # output: the (513, 513) argmax
    size, k = info["input_size"], info["num_classes"]
    masks = sorted(VOC_MASKS.glob("*.png"))[:limit]
    print(f"\n== DeepLab: {path.name} (width {info['width_mult']}, {size[0]}x{size[1]}, output stride "
          f"{info['output_stride']}, padding {info['padding']})")
    agree, worst = [], (1.0, "")
    # the segmentation task's metric (SegmentationTask: ignore_index 255, VOC's "void")
    conf_ours, conf_theirs = (MulticlassConfusionMatrix(k, ignore_index=255) for _ in range(2))
    for mask_path in tqdm(masks, desc=f"deeplab {path.stem}", leave=False, mininterval=5):
        q = load_photo(COCO_VAL / f"{mask_path.stem}.jpg", size)
        with torch.no_grad():
            ours = model(to_float(q, info, model))[0].argmax(0).numpy().astype(np.uint8)
        theirs = runner(q).astype(np.uint8)
        a = float((ours == theirs).mean())
        agree.append(a)
        worst = min(worst, (a, mask_path.stem))
        gt = np.asarray(Image.open(mask_path))
        for pred, conf in ((ours, conf_ours), (theirs, conf_theirs)):
            resized = np.asarray(Image.fromarray(pred).resize(gt.shape[::-1], Image.NEAREST))
            conf.update(torch.from_numpy(resized.astype(np.int64)), torch.from_numpy(gt.astype(np.int64)))
    mean_agree = float(np.mean(agree))
    m_ours, m_theirs = (float(segmentation_scores(conf.compute())["miou"]) for conf in (conf_ours, conf_theirs))
    print(f"{len(masks)} coco128 val photos with VOC-21 masks")
    print(f"pixel argmax agreement at {size[0]}x{size[1]}: {mean_agree:.4f} (worst {worst[0]:.3f}, {worst[1]}); "
          f"target >= {TARGETS['pixel_agree']}, faithful port 0.994")
    print(f"mIoU at mask resolution (classes present in ground truth): interpreter {m_theirs:.3f}, ours {m_ours:.3f}, "
          f"gap {abs(m_ours - m_theirs):.3f} (target <= {TARGETS['miou_gap']}; PAPER.md: 0.508 / 0.500)")


class DetectorRunner:
    """The SSDLite release in the interpreter (no delegates, every tensor kept): per uint8 photo its detections
    (the post-processing operator's float outputs, boxes ``xyxy`` in [0, 1], labels = label-map id - 1, which is
    our label) and its raw head outputs (91 class logits and the box encodings (ty, tx, th, tw) per anchor)."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self.interp.allocate_tensors()
        ops = self.interp._get_ops_details()  # noqa: SLF001
        producer = {out: op for op in ops for out in op["outputs"]}
        self.post = next(op for op in ops if op["op_name"] == "TFLite_Detection_PostProcess")
        self.box_encodings = self.post["inputs"][0]  # float (1, A, 4)
        converter = producer[self.post["inputs"][1]]  # DEQUANTIZE <- LOGISTIC <- the logits
        while converter["op_name"] != "LOGISTIC":
            converter = producer[converter["inputs"][0]]
        self.logits = converter["inputs"][0]
        self.details = {t["index"]: t for t in self.interp.get_tensor_details()}
        # int8 steps of the two outputs: the logits' own, and that of the tensor the box encodings are dequantized from
        self.logit_step = float(self.details[self.logits]["quantization"][0])
        self.box_step = float(self.details[producer[self.box_encodings]["inputs"][0]]["quantization"][0])

    def __call__(self, q: np.ndarray) -> dict[str, np.ndarray]:
        self.interp.set_tensor(self.interp.get_input_details()[0]["index"], q[None])
        self.interp.invoke()
        boxes, classes, scores, count = (self.interp.get_tensor(i)[0].copy() for i in self.post["outputs"])
        n = int(count.reshape(-1)[0])
        scale, zero_point = self.details[self.logits]["quantization"]
        logits = (self.interp.get_tensor(self.logits)[0].astype(np.float32) - zero_point) * scale
        return {"boxes": boxes[:n][:, [1, 0, 3, 2]], "labels": classes[:n].astype(np.int64), "scores": scores[:n],
                "logits": logits, "box_encodings": self.interp.get_tensor(self.box_encodings)[0].copy()}


def _share_matched(theirs: dict, ours: dict, min_score: float, min_iou: float) -> tuple[int, int]:
    """(matched, total): the interpreter's detections scoring >= ``min_score`` that ours has with the same label
    at IoU >= ``min_iou`` (boxes in the same units)."""
    from torchvision.ops import box_iou

    wanted = theirs["scores"] >= min_score
    if not wanted.any():
        return 0, 0
    t_boxes, t_labels = torch.from_numpy(theirs["boxes"][wanted]), torch.from_numpy(theirs["labels"][wanted])
    if len(ours["boxes"]) == 0:
        return 0, int(wanted.sum())
    iou = box_iou(t_boxes, ours["boxes"])
    same = t_labels[:, None] == ours["labels"][None, :]
    return int(((iou >= min_iou) & same).any(dim=1).sum()), int(wanted.sum())


def detector_parity(limit: int | None) -> None:
    import cv2
    from pycocotools.coco import COCO
    from torchmetrics.detection import MeanAveragePrecision
    from torchvision.ops import box_convert

    from vision_tasks.models.tf_od_api import check_anchors

    path = WEIGHTS / DETECTOR
    model, info = build(path)
    record = model_from_weights(path)[1]
    runner = DetectorRunner(path)
    size = info["input_size"]
    print(f"\n== detector: {path.name} (SSDLite, width {info['width_mult']}, min_depth {info['min_depth']}, last conv "
          f"{'scaled' if info['scale_last_conv'] else '1280'}, {size[0]}x{size[1]}, {info['num_classes']} classes + "
          f"background, {info['anchors'].shape[0]} "
          f"anchors, padding {info['padding']})")
    diff = check_anchors(info, record.model_config, path)
    print(f"anchors: ours vs the file's constant (yc, xc, h, w in [0, 1]): max abs difference {diff:.2e} "
          "(one float32 ulp; TF computes them in float32, we in float64 rounded once)")

    coco = COCO(str(COCO_VAL_JSON))
    ids = model.category_ids  # our label -> COCO category id (the interpreter's class c is label-map id c + 1: the same)
    maps = {k: MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
            for k in ("interpreter", "interpreter_our_nms", "ours", "ours_cv2")}
    photos = sorted(COCO_VAL.glob("*.jpg"))[:limit]
    matched = total = baseline = 0
    per_photo, raw = [], {"logits": 0.0, "boxes": 0.0, "logits_mean": [], "boxes_mean": []}
    for n, photo in enumerate(tqdm(photos, desc="detector coco128 val", leave=False, mininterval=5)):
        image = Image.open(photo).convert("RGB")
        q = load_photo(photo, size)
        theirs = runner(q)
        head = model.forward_head(to_float(q, info, model))
        ours = model.postprocess(head)[0]
        ours_01 = {**ours, "boxes": ours["boxes"] / ours["boxes"].new_tensor([size[1], size[0]] * 2)}
        m, t = _share_matched(theirs, ours_01, 0.3, 0.8)
        matched, total = matched + m, total + t
        # the interpreter's own raw outputs through our post-processing: what the NMS difference alone accounts for
        their_head = {**head, "cls_logits": torch.from_numpy(theirs["logits"])[None],
                      "bbox_regression": torch.from_numpy(theirs["box_encodings"][:, [1, 0, 3, 2]])[None]}
        their_ours_nms = model.postprocess(their_head)[0]
        their_ours_nms["boxes"] = their_ours_nms["boxes"] / their_ours_nms["boxes"].new_tensor([size[1], size[0]] * 2)
        baseline += _share_matched(theirs, their_ours_nms, 0.3, 0.8)[0]
        if t:
            per_photo.append((m / t, photo.stem, m, t))
        if n < 8:  # raw outputs; our box codes (tx, ty, tw, th) back in TF's order
            d_logits = np.abs(head["cls_logits"][0].numpy() - theirs["logits"])
            d_boxes = np.abs(head["bbox_regression"][0].numpy()[:, [1, 0, 3, 2]] - theirs["box_encodings"])
            raw["logits"], raw["boxes"] = max(raw["logits"], float(d_logits.max())), max(raw["boxes"], float(d_boxes.max()))
            raw["logits_mean"].append(float(d_logits.mean()))
            raw["boxes_mean"].append(float(d_boxes.mean()))

        # mAP on the photo's own pixels, category ids as labels
        image_id = int(photo.stem)
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))]
        target = {"boxes": box_convert(torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4),
                                       "xywh", "xyxy"),
                  "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                  "iscrowd": torch.tensor([a["iscrowd"] for a in anns], dtype=torch.int64),
                  "area": torch.tensor([a["area"] for a in anns], dtype=torch.float32)}
        scale = torch.tensor([image.width, image.height] * 2, dtype=torch.float32)
        cat = torch.tensor(ids)
        maps["interpreter"].update([{"boxes": torch.from_numpy(theirs["boxes"]) * scale,
                                     "scores": torch.from_numpy(theirs["scores"]),
                                     "labels": cat[torch.from_numpy(theirs["labels"])]}], [target])
        maps["ours"].update([{**ours_01, "boxes": ours_01["boxes"] * scale, "labels": cat[ours["labels"]]}], [target])
        maps["interpreter_our_nms"].update([{**their_ours_nms, "boxes": their_ours_nms["boxes"] * scale,
                                             "labels": cat[their_ours_nms["labels"]]}], [target])
        resized = cv2.resize(np.asarray(image), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)  # as A.Resize
        det = model(torch.from_numpy(resized).permute(2, 0, 1)[None], original_sizes=[(image.height, image.width)])[0]
        maps["ours_cv2"].update([{**det, "labels": cat[det["labels"]]}], [target])

    n = len(photos)
    print(f"{n} coco128 val photos: ours has {matched} of the interpreter's {total} detections scoring >= 0.3 "
          f"(same class, IoU >= 0.8): {matched / max(total, 1):.3f} (target >= {TARGETS['det_match']}); per photo: "
          f"mean {np.mean([p[0] for p in per_photo]):.3f}, worst "
          f"{', '.join(f'{s} {a}/{b}' for _, s, a, b in sorted(per_photo)[:3])}")
    print(f"  the NMS difference alone: the interpreter's raw outputs through our per-class NMS have {baseline} of them "
          f"({baseline / max(total, 1):.3f})")
    if raw["logits_mean"]:
        print(f"raw head outputs, first {len(raw['logits_mean'])} photos: class logits max |diff| {raw['logits']:.3f} "
              f"({raw['logits'] / runner.logit_step:.1f} int8 steps of the file's logits), "
              f"mean {np.mean(raw['logits_mean']):.4f}; "
              f"box encodings max |diff| {raw['boxes']:.3f} ({raw['boxes'] / runner.box_step:.1f} steps), mean "
              f"{np.mean(raw['boxes_mean']):.4f}")
    results = {k: metric.compute() for k, metric in maps.items()}
    for key, label in (("interpreter", "interpreter (int8), PIL bilinear 200x200"),
                       ("interpreter_our_nms", "interpreter's raw outputs, our per-class NMS"),
                       ("ours", "ours (float), same photos"),
                       ("ours_cv2", "ours, cv2 bilinear (A.Resize, tools/test.py)")):
        r = results[key]
        print(f"mAP {label:<46} {float(r['map']):.3f}  AP50 {float(r['map_50']):.3f}  AP75 {float(r['map_75']):.3f}")
    print(f"(shared/weights/README.md: interpreter mAP 0.175, AP50 0.302; target for ours >= {TARGETS['det_map']})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dm05", action="store_true", help="also the width-0.5 DeepLab release")
    parser.add_argument("--skip-classifier", action="store_true")
    parser.add_argument("--skip-deeplab", action="store_true")
    parser.add_argument("--skip-detector", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos (quick check)")
    args = parser.parse_args(argv)
    if not WEIGHTS.is_dir():
        sys.exit(f"{WEIGHTS} not found: this tool needs the repository's sibling ../shared")
    torch.set_grad_enabled(False)
    if not args.skip_classifier:
        classifier_parity(args.limit)
    if not args.skip_deeplab:
        deeplab_parity("deeplabv3_mnv2_pascal_quant.tflite", args.limit)
        if args.dm05:
            deeplab_parity("deeplabv3_mnv2_dm05_pascal_quant.tflite", args.limit)
    if not args.skip_detector:
        detector_parity(args.limit)


if __name__ == "__main__":
    main()
