#!/usr/bin/env python
"""Run a trained model on an image or a folder of images; draw the predictions and write them as JSON
(configs/predict.yaml).

    python tools/predict.py task=detection ckpt_path=runs/detection/.../checkpoints/best.ckpt \
        input=photos/ output=predictions/
    python tools/predict.py task=classification ckpt_path=... input=cat.jpg output=out/

The model normalises the photos itself; the data settings of training (data=..., data.image_size=...)
give the evaluation resize. Writes OUTPUT/<image>.png (predictions drawn) and OUTPUT/predictions.json
(in the photos' own pixels).
"""

import hydra


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg) -> None:
    from vision_tasks.predict import predict

    predict(cfg)


if __name__ == "__main__":
    main()
