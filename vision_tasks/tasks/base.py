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

from ..models.weights import CHECKPOINT_KEY  # checkpoint entry: task name, model class/config, class names
from ..optim import apply_lr_mult, param_groups

OptimizerFactory = Callable[[Iterable], Optimizer]
SchedulerFactory = Callable[[Optimizer], LRScheduler]


class VisionTask(pl.LightningModule):
    """Base LightningModule: the training recipe around a plain ``model``.

    The model, the optimizer and the scheduler are injected (``optimizer`` and ``scheduler`` are
    callables: Hydra ``_partial_: true`` objects or LightningCLI ``class_path`` entries), so the same
    recipe is reachable from both front ends. A scheduler that takes ``total_steps`` and / or
    ``steps_per_epoch`` (:class:`~vision_tasks.optim.WarmupCosineLR`, :class:`~vision_tasks.optim.PolyLR`,
    torch's ``OneCycleLR`` ...) is built with the run's length, so that no config carries it:
    ``total_steps`` = the scheduler steps of the whole run (``trainer.estimated_stepping_batches`` with
    ``scheduler_interval="step"``, where the scheduler is stepped every batch; the number of epochs with
    ``"epoch"``) and ``steps_per_epoch`` (the optimizer steps per epoch, 1 when stepped per epoch).
    Other schedulers (StepLR, ExponentialLR ...) are built from the optimizer alone and count steps
    themselves. Subclasses set ``name`` (the task name used by the configs) and ``monitor`` (the
    default metric that selects the best checkpoint, maximised); the ``monitor`` argument chooses
    another one (e.g. ``val/map_50``). ``norm_weight_decay`` is the weight decay of BatchNorm weights and
    biases (:func:`~vision_tasks.optim.param_groups`); ``backbone_lr_mult`` scales the learning rate of
    ``model.backbone`` (0.1 when fine-tuning a pretrained backbone under fresh heads with Adam-type
    optimizers, whose equal-sized steps otherwise wash out small pretrained weights; 0 trains the heads only).

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
        monitor: str | None = None,
        backbone_lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(backbone_lr_mult, (int, float)) or backbone_lr_mult < 0:
            raise ValueError(f"backbone_lr_mult must be a number >= 0, got {backbone_lr_mult!r}")
        if monitor is not None:
            if not isinstance(monitor, str) or not monitor.startswith("val/"):
                raise ValueError(f"monitor must name a validation metric such as {type(self).monitor!r}, got {monitor!r}")
            self.monitor = monitor
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.norm_weight_decay = norm_weight_decay
        self.backbone_lr_mult = float(backbone_lr_mult)
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
        optimizer = apply_lr_mult(self.optimizer_factory(self.param_groups()))
        if self.scheduler_factory is None:
            return optimizer
        wanted = [name for name in ("total_steps", "steps_per_epoch") if _accepts(self.scheduler_factory, name)]
        scheduler = self.scheduler_factory(optimizer, **self._run_length(wanted))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups: the model's (:func:`~vision_tasks.optim.param_groups`); a task with
        parameters of its own (learned loss weights) adds theirs."""
        return param_groups(self.model, self.norm_weight_decay, self.backbone_lr_mult)

    def _run_length(self, wanted: list[str]) -> dict[str, int]:
        """The ``wanted`` of ``total_steps`` (scheduler steps of the whole run) and ``steps_per_epoch``
        (optimizer steps per epoch; 1 when the scheduler is stepped per epoch)."""
        if not wanted:
            return {}
        trainer = self.trainer
        stepping = trainer.estimated_stepping_batches  # optimizer steps of the run; loads the train dataloader
        if not math.isfinite(stepping) or stepping < 1:
            raise ValueError("a scheduler built with the run's length (total_steps / steps_per_epoch) needs a finite "
                             "run: set trainer.max_epochs or trainer.max_steps")
        if self.scheduler_interval == "step" and "steps_per_epoch" not in wanted:
            return {"total_steps": int(stepping)}
        if trainer.train_dataloader is None:  # max_epochs=-1: estimated_stepping_batches did not load it
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) and batches else None
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        if self.scheduler_interval == "step":
            if per_epoch is None:  # an iterable dataset without a length
                per_epoch = max(1, int(stepping) // (epochs or 1))
            length = {"total_steps": int(stepping), "steps_per_epoch": per_epoch}
        else:  # stepped after every epoch: the epochs run (the last one partly when max_steps ends it)
            if per_epoch is not None:
                epochs = math.ceil(stepping / per_epoch)
            if epochs is None:
                raise ValueError("a scheduler stepped per epoch and built with the run's length needs trainer.max_epochs")
            length = {"total_steps": int(epochs), "steps_per_epoch": 1}
        return {name: length[name] for name in wanted}

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
