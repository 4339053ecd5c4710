#!/usr/bin/env python
"""Run a trained model on an image or a folder of images; draw the predictions and write them as JSON.

    python tools/predict.py task=detection ckpt_path=runs/detection/.../checkpoints/best.ckpt \
        input=photos/ output=predictions/
    python tools/predict.py task=classification ckpt_path=... input=cat.jpg output=out/

Use the data settings of training (data=..., data.image_size=...): they give the evaluation
transform. Writes OUTPUT/<image>.png (predictions drawn) and OUTPUT/predictions.json (original pixels).
"""

import sys

import hydra

from vision_tasks.runner import check_choices


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg) -> None:
    from vision_tasks.predict import predict

    predict(cfg)


if __name__ == "__main__":
    check_choices(sys.argv[1:])
    main()
