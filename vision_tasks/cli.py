"""LightningCLI front end: ``vision-tasks fit --config configs/lightning/classification.yaml``.

Subcommands fit / validate / test / predict. Any LightningModule and LightningDataModule of this
package (or another importable one) is chosen by ``class_path`` in the config, and the plain model,
optimizer and scheduler are nested ``class_path`` entries: the same classes Hydra builds.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI

__all__ = ["main"]


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``vision-tasks`` console script and ``python -m vision_tasks``."""
    LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
