#!/usr/bin/env python
"""Evaluate a training checkpoint or a weight file; writes metrics.json in the run directory (configs/eval.yaml).

    python tools/test.py task=classification ckpt_path=runs/classification/.../checkpoints/last.ckpt
    python tools/test.py task=classification weights=mobilenet_v2-b0353104.pth data=imagenet data.root=/data/imagenet
"""

import hydra

from vision_tasks.runner import test


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg) -> None:
    test(cfg)


if __name__ == "__main__":
    main()
