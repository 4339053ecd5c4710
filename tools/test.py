#!/usr/bin/env python
"""Evaluate a training checkpoint or a plain weight file; writes metrics.json in the run directory.

    python tools/test.py task=classification ckpt_path=runs/classification/.../checkpoints/last.ckpt
    python tools/test.py task=classification weights=mobilenet_v2-b0353104.pth data=imagenet data.root=/data/imagenet
"""

import sys

import hydra

from vision_tasks.runner import check_choices, test


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg) -> None:
    test(cfg)


if __name__ == "__main__":
    check_choices(sys.argv[1:])
    main()
