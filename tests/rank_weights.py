"""A callback for the DDP test: each process saves its parameters at the start and end of training.

Parameters only: DDP all-reduces gradients, so parameters stay equal; BatchNorm running statistics
are broadcast from rank 0 before each forward and then updated on each rank's own batch.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch


class SaveRankWeights(pl.Callback):
    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save(_params(pl_module), self.dirpath / f"start{trainer.global_rank}.pt")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save(_params(pl_module), self.dirpath / f"rank{trainer.global_rank}.pt")
        (self.dirpath / f"world{trainer.global_rank}.txt").write_text(str(trainer.world_size))


def _params(pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in pl_module.model.named_parameters()}


class HangRank(pl.Callback):
    """For the DDP timeout tests: rank ``rank`` stops answering (sleeps), or dies, at the start of training batch ``batch``."""

    def __init__(self, rank: int = 1, batch: int = 1, seconds: float = 300.0, kill: bool = False) -> None:
        self.rank, self.batch, self.seconds, self.kill = rank, batch, seconds, kill

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and batch_idx == self.batch:
            import os
            import signal
            import time

            if self.kill:  # the rank dies instead (kill -9)
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(self.seconds)
