"""Callbacks that leave a run directory people can read: metrics.json and a plot of the curves."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.trainer.states import TrainerFn

__all__ = ["RunArtifacts", "ema", "plot_curves"]


def ema(decay: float | None) -> Callback | None:
    """Lightning's exponential moving average of the weights (``EMAWeightAveraging``) with ``decay``, or
    ``None`` (no callback) when ``decay`` is ``None`` or 0: the ``ema`` entry of ``configs/callbacks``."""
    if not decay:
        return None
    from pytorch_lightning.callbacks import EMAWeightAveraging

    return EMAWeightAveraging(decay=float(decay))


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
