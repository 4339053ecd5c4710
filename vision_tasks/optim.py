"""Learning-rate schedules and parameter groups shared by the tasks."""

from __future__ import annotations

import math
from typing import Callable

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["PolyLR", "WarmupCosineLR", "param_groups"]


class WarmupCosineLR(LambdaLR):
    """Linear warm-up from ``warmup_factor * lr`` over ``warmup_epochs``, then cosine decay to ``eta_min_factor * lr``.

    Durations are in epochs. Stepped once per epoch by default; a task with
    ``scheduler_interval="step"`` builds it with ``steps_per_epoch`` and steps it every batch, so
    the warm-up and the decay are smooth (torchvision's and timm's per-iteration schedules).
    A torch ``LambdaLR`` (its state dict, resuming and ``get_last_lr`` work as usual), as one class
    so that Hydra (``_partial_``) and LightningCLI (``class_path``) build it from the optimizer alone.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_epochs: int,
        warmup_epochs: float = 0,
        warmup_factor: float = 0.01,
        eta_min_factor: float = 0.0,
        steps_per_epoch: int = 1,
    ) -> None:
        if max_epochs < 1 or steps_per_epoch < 1:
            raise ValueError(f"max_epochs and steps_per_epoch must be >= 1, got {max_epochs}, {steps_per_epoch}")
        total = max_epochs * steps_per_epoch
        # short debugging runs keep a cosine part
        warmup = min(round(warmup_epochs * steps_per_epoch), total - 1)

        def cosine(progress: float) -> float:
            return eta_min_factor + (1 - eta_min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

        super().__init__(optimizer, _warmup_then(cosine, total, warmup, warmup_factor))


class PolyLR(LambdaLR):
    """DeepLab's "poly" schedule: ``lr = base_lr * (1 - step / total_steps) ** power``, stepped every batch.

    Durations are in optimizer steps. Built by a task with ``scheduler_interval="step"`` as
    ``scheduler(optimizer, total_steps=trainer.estimated_stepping_batches)``, so ``trainer.max_steps``
    (TF DeepLab's ``training_number_of_steps``, e.g. 30000) and ``trainer.max_epochs`` both work.

    Args:
        optimizer: the optimizer whose learning rates are scheduled.
        total_steps: length of the schedule in steps; the factor reaches ``min_lr_factor`` there
            and stays at it afterwards.
        power: the polynomial's power (DeepLab: 0.9).
        warmup_steps: linear warm-up from ``warmup_factor * lr`` over this many steps (an integer
            number of steps, not a fraction); the poly decay then runs over the remaining
            ``total_steps - warmup_steps`` steps, as TF DeepLab's ``slow_start_step`` does (whose
            warm-up is a constant ``slow_start_learning_rate`` rather than linear).
        warmup_factor: the factor at step 0 when warming up.
        min_lr_factor: the final factor, TF's ``end_learning_rate / base_learning_rate``:
            ``factor = min + (1 - min) * (1 - progress) ** power``.

    A torch ``LambdaLR``: its state dict, resuming and ``get_last_lr`` work as usual.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        power: float = 0.9,
        warmup_steps: int = 0,
        warmup_factor: float = 0.01,
        min_lr_factor: float = 0.0,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        total = int(total_steps)
        # short debugging runs keep a decaying part
        warmup = min(int(warmup_steps), total - 1)

        def poly(progress: float) -> float:
            return min_lr_factor + (1 - min_lr_factor) * (1 - progress) ** power

        self.total_steps, self.warmup_steps, self.power = total, warmup, power  # for inspection
        super().__init__(optimizer, _warmup_then(poly, total, warmup, warmup_factor))

    def load_state_dict(self, state_dict: dict) -> None:
        # the position (last_epoch) comes from the checkpoint, the shape from the constructor (the current
        # config), as for WarmupCosineLR; the informational attributes must then describe the latter
        shape = {k: self.__dict__[k] for k in ("total_steps", "warmup_steps", "power")}
        super().load_state_dict(state_dict)
        self.__dict__.update(shape)


def _warmup_then(decay: Callable[[float], float], total: int, warmup: int, warmup_factor: float) -> Callable[[int], float]:
    """The factor of step ``s``: linear from ``warmup_factor`` to 1 over ``warmup`` steps, then ``decay``
    of the progress (0 to 1) through the remaining ``total - warmup`` steps, 1 from there on."""

    def factor(step: int) -> float:
        if step < warmup:
            return warmup_factor + (1 - warmup_factor) * step / warmup
        return decay(min(1.0, (step - warmup) / max(1, total - warmup)))

    return factor


def param_groups(model: nn.Module, norm_weight_decay: float | None) -> list[dict]:
    """Parameter groups in which BatchNorm weights and all biases get ``norm_weight_decay``.

    TF-Slim (the paper's code) regularises conv and fully connected weights only; torchvision's
    recipe calls this ``--norm-weight-decay 0``. The other group keeps the optimizer's own
    ``weight_decay``. ``None``: a single group.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if norm_weight_decay is None:
        return [{"params": params}]
    norm_ids = {
        id(p)
        for m in model.modules()
        for name, p in m.named_parameters(recurse=False)
        if name == "bias" or isinstance(m, nn.modules.batchnorm._NormBase)
    }
    return [
        {"params": [p for p in params if id(p) not in norm_ids]},
        {"params": [p for p in params if id(p) in norm_ids], "weight_decay": norm_weight_decay},
    ]
