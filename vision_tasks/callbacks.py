"""Callbacks that leave a run directory people can read (metrics.json, a plot of the curves), that stop a
diverging run before it costs a good checkpoint, and that make each epoch's randomness follow from the seed."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info

from .checkpoints import non_finite_tensors
from .data.seeding import derive_seed
from .files import atomic_write

__all__ = ["DivergenceGuard", "EpochSeed", "TrainingDiverged", "RunArtifacts", "UnfoldBatchNorm", "ema", "plot_curves"]


class TrainingDiverged(RuntimeError):
    """The loss, the gradients or the weights of a training run became NaN or infinite."""


class DivergenceGuard(Callback):
    """Stop training at the first non-finite loss, gradient or weight, before it reaches a checkpoint.

    The loss (before the backward pass) and the gradients (before the optimizer step) are checked every
    step; a non-finite one stops the run before the optimizer applies it, so the weights in memory and on
    disk stay the last good ones. The weights are checked after each step as well (an update can overflow
    while loss and gradients are finite). The :class:`TrainingDiverged` error names the step, the epoch and
    the last good checkpoint to resume from. With a gradient scaler (``precision=16-mixed``) non-finite
    gradients are the scaler's business (it skips that step and lowers its scale); the weights are still
    checked. Checkpoints themselves refuse non-finite weights (:class:`vision_tasks.checkpoints.AtomicCheckpointIO`).

    Each check reduces every tensor to its largest magnitude (finite iff all values are) and syncs once.
    """

    def __init__(self) -> None:
        self._batch_idx = 0
        self._bad_loss: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self._bad_loss is None and not bool(torch.isfinite(loss.detach()).all()):
            self._bad_loss = float(loss.detach().float().sum())  # accumulated batches: the first bad one

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        bad_loss, self._bad_loss = self._bad_loss, None
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # GradScaler skips steps whose gradients are not finite
        if bad_loss is not None:
            self._stop(trainer, f"the loss is {bad_loss}", "the optimizer did not apply it")
        grads = {name: p.grad for name, p in pl_module.named_parameters() if p.grad is not None}
        bad = non_finite_tensors(grads)
        if bad:
            self._stop(trainer, f"the gradients of {_names(bad)} are NaN or infinite", "the optimizer did not apply them")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bad = non_finite_tensors(dict(pl_module.named_parameters()) | dict(pl_module.named_buffers()))
        if bad:
            self._stop(trainer, f"the weights {_names(bad)} became NaN or infinite",
                       "no checkpoint was written from them")

    def _stop(self, trainer: pl.Trainer, what: str, consequence: str) -> None:
        good, saved_at = _last_good_checkpoint(trainer)
        raise TrainingDiverged(
            f"training diverged at global step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
            f"{self._batch_idx}): {what}; {consequence}. Last good checkpoint: "
            + (f"{good}{saved_at}. " if good else "none (no checkpoint was written yet). ")
            + "Lower the learning rate or check its schedule (or clip the gradients: trainer.gradient_clip_val), "
            + (f"then resume with ckpt_path={good}" if good else "then train again")
        )


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _last_good_checkpoint(trainer: pl.Trainer) -> tuple[Path | None, str]:
    """The newest checkpoint of this run on disk (or the one it resumed from), and its epoch and step."""
    paths = {cb.best_model_path for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)}
    paths |= {cb.last_model_path for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)}
    paths.add(trainer.ckpt_path or "")
    files = [Path(p) for p in paths if p and Path(p).is_file()]
    if not files:
        return None, ""
    newest = max(files, key=lambda p: p.stat().st_mtime_ns)
    try:
        checkpoint = torch.load(newest, map_location="cpu", weights_only=True, mmap=True)
        return newest, f" (epoch {checkpoint['epoch']}, global step {checkpoint['global_step']})"
    except Exception:  # noqa: BLE001 (the path alone still helps)
        return newest, ""


class EpochSeed(Callback):
    """Reseed torch, numpy and ``random`` at the start of every training epoch from ``(seed, epoch, rank)``.

    The model's own randomness (dropout) draws from the global generators, whose state at epoch k depends on
    everything that ran before it in the process, and Lightning's checkpoints do not keep it: a run resumed from
    its last checkpoint would draw other dropout masks than an uninterrupted one. Reseeded per epoch, epoch k draws
    the same in both. (Not ``pl.seed_everything``: that would also replace ``PL_GLOBAL_SEED``, the run's seed.)
    The data order and augmentations have their own per-epoch seeding (:mod:`vision_tasks.data.seeding`).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed = derive_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)


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

    After ``fit`` it stores the metrics of the last validation of that fit (and leaves an existing
    ``metrics.json`` as it is when the fit validated nothing, e.g. a resumed run that was already finished);
    after ``validate`` / ``test`` the metrics of that run. ``metrics.json`` is always valid JSON: a NaN or
    infinite metric is written as ``null`` and named under ``"non_finite"``. Files are written atomically.
    ``dirpath`` defaults to the trainer's log directory. Rank 0 only.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self._validated = False

    def _dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)

    def _write(self, trainer: pl.Trainer, prefixes: tuple[str, ...], training: bool = False) -> None:
        if not trainer.is_global_zero:
            return
        metrics: dict[str, Any] = {
            key: float(value)
            for key, value in sorted(trainer.callback_metrics.items())
            if key.startswith(prefixes) and value.numel() == 1
        }
        non_finite = {key: str(value) for key, value in metrics.items() if not math.isfinite(value)}
        metrics.update({key: None for key in non_finite})
        if training:
            metrics.update(epoch=trainer.current_epoch, global_step=trainer.global_step)
        if non_finite:  # JSON has no NaN / Infinity: null, and what it stood for
            metrics["non_finite"] = non_finite
        atomic_write(self._dir(trainer) / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = False

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validated or not (self._dir(trainer) / "metrics.json").exists():
            self._write(trainer, ("val/",), training=True)
        elif trainer.is_global_zero:
            rank_zero_info(f"RunArtifacts: no validation ran in this fit; {self._dir(trainer) / 'metrics.json'} "
                           "is left as it was")
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, CSVLogger):
                    logger.save()
                    plot_curves(Path(logger.log_dir) / "metrics.csv", self._dir(trainer) / "curves.png")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._write(trainer, ("val/",))
        elif not trainer.sanity_checking:
            self._validated = True

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
    atomic_write(out_png, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return out_png
