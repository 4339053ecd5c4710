#!/usr/bin/env python
"""Convert a weight file into this project's format: DST.safetensors plus DST.json (its weight record).

    python tools/convert_weights.py SRC DST.safetensors [--labels LABELS.txt]

SRC: a torchvision mobilenet_v2 or timm mobilenetv2_* state dict, one of the paper authors' TFLite
releases (pip install "vision-tasks[tflite]"), or a vision_tasks checkpoint / state dict. The JSON
says which model to rebuild (its configuration includes the input normalisation and the padding),
the class names and the input size; tools/test.py and tools/predict.py read it when given
weights=DST.safetensors, e.g.

    python tools/convert_weights.py ../shared/weights/deeplabv3_mnv2_pascal_quant.tflite deeplab_tf.safetensors
    python tools/test.py task=segmentation data=voc data.root=/data/VOCdevkit weights=deeplab_tf.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vision_tasks.convert import convert  # noqa: E402


def read_labels(path: Path, num_classes: int | None = None) -> list[str]:
    """One class name per line; a leading "background" line of TF's 1001-way lists is dropped for 1000 classes."""
    labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if num_classes is not None and len(labels) == num_classes + 1:
        labels = labels[1:]
    return labels


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="the weight file to convert")
    parser.add_argument("dst", type=Path, help="the .safetensors file to write (its .json goes beside it)")
    parser.add_argument("--labels", type=Path, default=None, help="class names, one per line")
    args = parser.parse_args(argv)
    from vision_tasks.models import is_weight_name

    if not args.src.is_file() and not is_weight_name(args.src):
        parser.error(f"{args.src} does not exist (nor is it a weight name such as imagenet or timm:mobilenetv2_100.ra_in1k)")
    labels = None
    if args.labels is not None:
        from vision_tasks.convert import describe_source

        num_classes = describe_source(args.src).model_config.get("num_classes")
        labels = read_labels(args.labels, num_classes)
        if num_classes is not None and len(labels) != num_classes:
            parser.error(f"{args.labels} has {len(labels)} names but the model has {num_classes} classes")
    weights, sidecar = convert(args.src, args.dst, class_names=labels)
    record = json.loads(sidecar.read_text())
    print(f"wrote {weights} ({record['model_class']} {record['model_config']})")
    print(f"wrote {sidecar} (preprocessing {record['preprocessing']}, padding {record['padding']}, "
          f"input {record['input_size']})")
    return weights, sidecar


if __name__ == "__main__":
    main()
