"""What every task's LightningModule shares: the injected model, optimizer and schedule, checkpoint metadata."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, Iterable

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..optim import param_groups

OptimizerFactory = Callable[[Iterable], Optimizer]
SchedulerFactory = Callable[[Optimizer], LRScheduler]

CHECKPOINT_KEY = "vision_tasks"  # checkpoint entry with the task name, model class/config and class names


class VisionTask(pl.LightningModule):
    """Base LightningModule: the training recipe around a plain ``model``.

    The model, the optimizer and the scheduler are injected (``optimizer`` and ``scheduler`` are
    callables: Hydra ``_partial_: true`` objects or LightningCLI ``class_path`` entries), so the same
    recipe is reachable from both front ends. With ``scheduler_interval="step"`` the scheduler is
    stepped every batch and built as ``scheduler(optimizer, steps_per_epoch=N)``
    (:class:`~vision_tasks.optim.WarmupCosineLR` accepts it) or, for a schedule that takes
    ``total_steps`` instead (:class:`~vision_tasks.optim.PolyLR`), as
    ``scheduler(optimizer, total_steps=trainer.estimated_stepping_batches)``. Subclasses set ``name``
    (the task name used by the configs) and ``monitor`` (the metric that selects the best
    checkpoint, maximised).

    Checkpoints carry ``checkpoint["vision_tasks"]`` = task name, model class, model config and
    class names, so ``tools/test.py`` rebuilds the model from the checkpoint alone and refuses a
    checkpoint of another task.
    """

    name: str = ""
    monitor: str = ""

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        norm_weight_decay: float | None = None,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.norm_weight_decay = norm_weight_decay
        self.class_names: list[str] | None = None
        self.keep_results = False  # tools/test.py: keep per-sample results for export_results()

    def forward(self, images: torch.Tensor) -> Any:
        return self.model(images)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, "class_names", None) if datamodule is not None else None
        if names is not None:
            self.class_names = list(names)

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError(f"{type(self).__name__} needs an optimizer to train (config key task.optimizer)")
        optimizer = self.optimizer_factory(param_groups(self.model, self.norm_weight_decay))
        if self.scheduler_factory is None:
            return optimizer
        if self.scheduler_interval == "step" and _accepts(self.scheduler_factory, "steps_per_epoch"):
            # per-batch schedules given in epochs are built knowing the epoch length (see WarmupCosineLR);
            # others (StepLR, ExponentialLR ...) count batches themselves
            epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
            steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // epochs)
            scheduler = self.scheduler_factory(optimizer, steps_per_epoch=int(steps_per_epoch))
        elif self.scheduler_interval == "step" and _accepts(self.scheduler_factory, "total_steps"):
            # per-batch schedules given in steps (PolyLR) span the whole run: max_steps or max_epochs
            total_steps = self.trainer.estimated_stepping_batches
            if not math.isfinite(total_steps):
                raise ValueError("a scheduler built with total_steps needs a finite run: set trainer.max_steps or "
                                 "trainer.max_epochs")
            scheduler = self.scheduler_factory(optimizer, total_steps=int(total_steps))
        else:
            scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    def export_results(self, run_dir) -> Any:
        """Write the results kept during the last evaluation (``keep_results``) into ``run_dir``; none by default."""
        return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "task": self.name,
            "model_class": type(self.model).__name__,
            "model_config": dict(getattr(self.model, "config", {})),
            "class_names": self.class_names,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(CHECKPOINT_KEY)
        if meta is not None and meta.get("task") != self.name:
            raise ValueError(f"this checkpoint was trained for task {meta.get('task')!r}, not {self.name!r}")
        if meta is not None and meta.get("class_names"):
            self.class_names = list(meta["class_names"])


def _accepts(factory: Callable, name: str) -> bool:
    """Whether ``factory`` (a class, function or ``functools.partial``) takes a keyword argument ``name``.

    LightningCLI (jsonargparse) builds callables as ``partial(call, instantiator, SchedulerClass,
    **init_args)``, whose signature is ``(*args, **kwargs)``: look at the bound keywords and at the
    class itself, so that its per-batch schedules get the run's length as Hydra's do.
    """
    if isinstance(factory, functools.partial):
        if name in (factory.keywords or {}):
            return True
        bound_class = next((arg for arg in factory.args if inspect.isclass(arg)), None)
        if bound_class is not None:
            return _accepts(bound_class, name)
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
