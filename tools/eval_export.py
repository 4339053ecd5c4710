#!/usr/bin/env python
"""COCO box mAP of an exported detector (.onnx, .tflite, .pt2; a joint model's detection head too) on a COCO folder,
each file run in its own runtime, as tools/test.py scores the PyTorch model (vision_tasks.export.evaluate_detections).

    python tools/eval_export.py ssdlite.int8.tflite --images ../shared/data/coco128/val2017 \
        --annotations ../shared/data/coco128/annotations/instances_val2017.json
    python tools/eval_export.py ssdlite.onnx ssdlite.int8.onnx ssdlite.int8.tflite --images ... --annotations ...

The images are resized to the export's input size and its boxes scaled back to them. Prints one line per file
(map, map_50, map_75) and, with --out FILE, writes all the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="exported detectors (tools/export.py)")
    parser.add_argument("--images", required=True, type=Path, help="the folder of the annotated images")
    parser.add_argument("--annotations", required=True, type=Path, help="a COCO instances JSON file")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images (in image-id order)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON (refused if it exists)")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists():
        parser.error(f"--out {args.out} exists; choose another file (nothing is overwritten)")
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")

    from vision_tasks.export import evaluate_detections
    from vision_tasks.files import atomic_write

    results = {}
    for path in args.files:
        scores = evaluate_detections(path, args.annotations, args.images, batch_size=args.batch_size,
                                     limit=args.limit)
        results[str(path)] = scores
        print(f"{path}: map {scores['map']:.4f}  map_50 {scores['map_50']:.4f}  map_75 {scores['map_75']:.4f}  "
              f"({scores['images']} images)", flush=True)
    if args.out is not None:
        atomic_write(args.out, json.dumps(results, indent=1) + "\n")
        print(f"written: {args.out}")
    return results


if __name__ == "__main__":
    main()
