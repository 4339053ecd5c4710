#!/usr/bin/env python
"""Evaluate a training checkpoint or a weight file; writes metrics.json in the run directory (configs/eval.yaml).

The run directory is runs/<task>/test-<time>-<process id> unless hydra.run.dir= is given; a directory that already
holds a run's records (a training run's, an earlier evaluation's) keeps them, and the evaluation writes into a new
test-<time> subfolder of it.

    python tools/test.py task=classification ckpt_path=runs/classification/.../checkpoints/last.ckpt
    python tools/test.py task=classification weights=mobilenet_v2-b0353104.pth data=imagenet data.root=/data/imagenet
    python tools/test.py task=detection data=coco data.root=/data/coco weights=ssdlite_mobilenet_v2_coco_0.5_200x200.tflite

A detection weight file evaluates at the input size of its record (200 for that TFLite release) unless
data.image_size= is given; a detector with its own label set (that release: 90 COCO category ids) is mapped to
the dataset's categories by id (or class name), the detections of categories the dataset lacks dropped.
"""

import hydra

from vision_tasks.runner import test


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg) -> None:
    test(cfg)


if __name__ == "__main__":
    main()
