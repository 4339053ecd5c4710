"""Callbacks that leave a run directory people can read: metrics.json and a plot of the curves."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info

__all__ = ["RunArtifacts", "UnfoldBatchNorm", "ema", "plot_curves"]


def ema(decay: float | None) -> Callback | None:
    """Lightning's exponential moving average of the weights (``EMAWeightAveraging``) with ``decay``, or
    ``None`` (no callback) when ``decay`` is ``None`` or 0: the ``ema`` entry of ``configs/callbacks``."""
    if not decay:
        return None
    from pytorch_lightning.callbacks import EMAWeightAveraging

    return EMAWeightAveraging(decay=float(decay))


class UnfoldBatchNorm(Callback):
    """Before training, give a TensorFlow release's folded BatchNorms the statistics of the training data
    (:func:`vision_tasks.models.unfold_batch_norms`), so that training-mode batch norm reproduces the release
    instead of erasing it. A no-op for any other model (nothing is folded), and when resuming (the
    checkpoint's BatchNorms are already unfolded).

    Args:
        num_batches: training batches measured (with the training augmentation).
    """

    def __init__(self, num_batches: int = 20) -> None:
        self.num_batches = int(num_batches)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from .models.batchnorm import folded_batch_norms, unfold_batch_norms

        model = getattr(pl_module, "model", pl_module)
        if not folded_batch_norms(model):
            return
        datamodule = trainer.datamodule
        loader = datamodule.train_dataloader() if datamodule is not None else trainer.fit_loop._data_source.dataloader()
        images = (batch[0] if isinstance(batch, (tuple, list)) else batch for batch in loader)
        count = unfold_batch_norms(model, images, num_batches=self.num_batches)
        if trainer.world_size > 1:  # each process measured its own batches: agree on their mean
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    for tensor in (module.weight, module.bias, module.running_mean, module.running_var):
                        tensor.data.copy_(trainer.strategy.reduce(tensor.data.clone(), reduce_op="mean"))
        rank_zero_info(f"UnfoldBatchNorm: {count} folded BatchNorms of the pretrained weights now hold the statistics "
                       f"of the first training batches (up to {self.num_batches}), so that batch statistics reproduce "
                       "the release")


class RunArtifacts(Callback):
    """Writes ``metrics.json`` (final ``val/...`` metrics under flat keys) and ``curves.png``.

    After ``fit`` it stores the metrics of the last validation; after ``validate`` / ``test`` the
    metrics of that run. ``dirpath`` defaults to the trainer's log directory. Rank 0 only.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def _dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)

    def _write(self, trainer: pl.Trainer, prefixes: tuple[str, ...], training: bool = False) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {
            key: float(value)
            for key, value in sorted(trainer.callback_metrics.items())
            if key.startswith(prefixes) and value.numel() == 1
        }
        if training:
            metrics.update(epoch=trainer.current_epoch, global_step=trainer.global_step)
        out = self._dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, ("val/",), training=True)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, CSVLogger):
                    logger.save()
                    plot_curves(Path(logger.log_dir) / "metrics.csv", self._dir(trainer) / "curves.png")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._write(trainer, ("val/",))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, ("test/",))


def plot_curves(metrics_csv: Path, out_png: Path) -> Path | None:
    """Plot every logged epoch-level metric of a CSVLogger file against the epoch, one panel per name."""
    if not metrics_csv.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = {}
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            for key, value in row.items():
                if key in ("epoch", "step") or not value or key.endswith("_step") or key.startswith("lr-"):
                    continue
                series.setdefault(key.removesuffix("_epoch"), []).append((float(row["epoch"]), float(value)))
    if not series:
        return None
    # one panel per metric family (loss, acc...), train and val curves together
    panels: dict[str, list[str]] = {}
    for key in sorted(series):
        panels.setdefault(key.split("/")[-1], []).append(key)
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, panels.items()):
        for key in keys:
            xs, ys = zip(*series[key])
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
