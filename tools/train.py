#!/usr/bin/env python
"""Train a task on the embedded synthetic data or on real data (configs/train.yaml).

    python tools/train.py task=classification                              # synthetic default
    python tools/train.py task=classification data=imagenet data.root=/data/imagenet trainer=ddp trainer.devices=8
    python tools/train.py experiment=paper_imagenet data.root=/data/imagenet
    python tools/train.py task=classification ckpt_path=RUN/checkpoints/last.ckpt hydra.run.dir=RUN   # resume in place

Configs are in configs/ (Hydra); any key can be overridden (trainer.max_epochs=3, model.width_mult=0.5).
A run holds RUN/.lock while it trains, and stops with the step, the epoch and the last good checkpoint if its loss,
gradients or weights become NaN or infinite.
"""

import hydra

from vision_tasks.runner import train


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
