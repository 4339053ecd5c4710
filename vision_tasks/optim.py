"""Learning-rate schedules and parameter groups shared by the tasks."""

from __future__ import annotations

from bisect import bisect_right

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, PolynomialLR, SequentialLR

__all__ = ["PolyLR", "WarmupCosineLR", "apply_lr_mult", "param_groups"]


class _WarmupThen(SequentialLR):
    """torch's ``LinearLR`` from ``warmup_factor`` to 1 over ``warmup_steps`` steps, then ``decay`` (built
    over the remaining ``total_steps - warmup_steps``), as a ``SequentialLR``; no warm-up: ``decay`` alone.

    Two departures from a bare ``SequentialLR``, both what the former ``LambdaLR`` schedules did:
    past ``total_steps`` the learning rate stays at its final value (torch's cosine would rise again),
    and :meth:`load_state_dict` takes the position from the state dict but keeps the constructor's
    shape (run length, warm-up): a run resumed with a longer ``trainer.max_epochs`` continues on the
    stretched schedule, where ``SequentialLR`` would restore the old ``T_max`` / ``total_iters``.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int, warmup_factor: float,
                 decay: type[LRScheduler], **decay_kwargs) -> None:
        if not 0 < warmup_factor <= 1:
            raise ValueError(f"warmup_factor must be in (0, 1] (torch's LinearLR starts at a positive factor), "
                             f"got {warmup_factor}")
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        schedulers: list[LRScheduler] = []
        if self.warmup_steps:
            schedulers.append(LinearLR(optimizer, warmup_factor, 1.0, total_iters=self.warmup_steps))
        schedulers.append(decay(optimizer, self.total_steps - self.warmup_steps, **decay_kwargs))
        super().__init__(optimizer, schedulers, milestones=[self.warmup_steps] if self.warmup_steps else [])

    def step(self) -> None:  # type: ignore[override]
        if self.last_epoch >= self.total_steps:  # past the run's end: keep the final learning rate
            self.last_epoch += 1
            return
        super().step()

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_epoch = int(state_dict["last_epoch"])
        # the learning rates of that position on this schedule, in closed form from the base learning
        # rates (the optimizer's initial_lr, restored with its state); later steps continue from there
        position = min(self.last_epoch, self.total_steps)
        index = bisect_right(self._milestones, position)
        active = self._schedulers[index]
        base_lrs = [group["initial_lr"] for group in self.optimizer.param_groups]
        for scheduler in self._schedulers:
            scheduler.base_lrs = list(base_lrs)
        active.last_epoch = position - (self._milestones[index - 1] if index else 0)
        lrs = active._get_closed_form_lr()  # noqa: SLF001 (torch's own formula, as step(epoch) uses it)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        active._last_lr = self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def _check_length(total_steps: int | None, steps_per_epoch: int = 1) -> None:
    # total_steps defaults to None only so that LightningCLI accepts a config without it (jsonargparse
    # wants every required argument but the optimizer); VisionTask.configure_optimizers passes it
    if total_steps is None:
        raise ValueError("total_steps (the run's length in scheduler steps) is required; VisionTask."
                         "configure_optimizers passes it (trainer.estimated_stepping_batches, or the number of "
                         "epochs when stepped per epoch)")
    if total_steps < 1 or steps_per_epoch < 1:
        raise ValueError(f"total_steps and steps_per_epoch must be >= 1, got {total_steps}, {steps_per_epoch}")


class WarmupCosineLR(_WarmupThen):
    """Linear warm-up from ``warmup_factor * lr`` over ``warmup_epochs``, then cosine decay to ``eta_min_factor * lr``.

    torch's ``SequentialLR`` of ``LinearLR`` and ``CosineAnnealingLR`` (just the latter without warm-up).
    ``total_steps`` is the number of scheduler steps in the whole run and ``steps_per_epoch`` the
    number per epoch: a task passes both (:meth:`~vision_tasks.tasks.base.VisionTask.configure_optimizers`;
    stepped every batch with ``scheduler_interval="step"``, which makes warm-up and decay smooth as in
    torchvision's and timm's recipes; per epoch, ``total_steps`` is the number of epochs and
    ``steps_per_epoch`` 1), so no config carries the run's length. The warm-up is given in epochs and
    rounded to whole steps; it is cut to ``total_steps - 1`` so that short debugging runs keep a
    cosine part. ``warmup_factor`` must be positive (torch's ``LinearLR``). One class, so that Hydra
    (``_partial_``) and LightningCLI (``class_path``) build it from the optimizer alone.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int | None = None,
        warmup_epochs: float = 0,
        warmup_factor: float = 0.01,
        eta_min_factor: float = 0.0,
        steps_per_epoch: int = 1,
    ) -> None:
        _check_length(total_steps, steps_per_epoch)
        lrs = [float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups]
        if eta_min_factor and len(set(lrs)) > 1:
            raise ValueError(f"eta_min_factor={eta_min_factor} needs one learning rate for all parameter groups "
                             f"(torch's CosineAnnealingLR has a single eta_min), got {lrs}")
        self.steps_per_epoch = int(steps_per_epoch)
        warmup = min(round(warmup_epochs * steps_per_epoch), int(total_steps) - 1)
        super().__init__(optimizer, total_steps, warmup, warmup_factor, CosineAnnealingLR,
                         eta_min=eta_min_factor * lrs[0])


class PolyLR(_WarmupThen):
    """DeepLab's "poly" schedule: ``lr = base_lr * (1 - step / total_steps) ** power``, stepped every batch.

    torch's ``PolynomialLR`` (after a ``LinearLR`` warm-up, as a ``SequentialLR``). Durations are in
    scheduler steps. A task builds it as ``scheduler(optimizer, total_steps=...)`` with the run's length
    (``trainer.estimated_stepping_batches`` stepped per batch), so ``trainer.max_steps`` (TF DeepLab's
    ``training_number_of_steps``, e.g. 30000) and ``trainer.max_epochs`` both work.

    Args:
        optimizer: the optimizer whose learning rates are scheduled.
        total_steps: length of the schedule in steps; the learning rate reaches 0 there and stays at it.
        power: the polynomial's power (DeepLab: 0.9).
        warmup_steps: linear warm-up from ``warmup_factor * lr`` over this many steps (an integer
            number of steps, not a fraction; cut to ``total_steps - 1``); the poly decay then runs
            over the remaining ``total_steps - warmup_steps`` steps, as TF DeepLab's
            ``slow_start_step`` does (whose warm-up is a constant ``slow_start_learning_rate`` rather
            than linear).
        warmup_factor: the factor at step 0 when warming up; positive (torch's ``LinearLR``).

    TF's ``end_learning_rate`` (a floor other than 0; the DeepLab recipes leave it at 0) has no
    counterpart in ``PolynomialLR``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int | None = None,
        power: float = 0.9,
        warmup_steps: int = 0,
        warmup_factor: float = 0.01,
    ) -> None:
        _check_length(total_steps)
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.power = power
        warmup = min(int(warmup_steps), int(total_steps) - 1)
        super().__init__(optimizer, total_steps, warmup, warmup_factor, PolynomialLR, power=power)


def param_groups(model: nn.Module, norm_weight_decay: float | None, backbone_lr_mult: float = 1.0) -> list[dict]:
    """Parameter groups in which BatchNorm weights and all biases get ``norm_weight_decay`` and the
    backbone's parameters the learning rate times ``backbone_lr_mult``.

    TF-Slim (the paper's code) regularises conv and fully connected weights only; torchvision's
    recipe calls this ``--norm-weight-decay 0``. The other group keeps the optimizer's own
    ``weight_decay``. ``None``: no group of its own for them.

    ``backbone_lr_mult`` (mmdetection's ``paramwise_cfg`` ``lr_mult``, DETR's ``lr_backbone``): the
    parameters of ``model.backbone`` are put in groups marked ``"lr_mult"``; :func:`apply_lr_mult`
    scales their learning rate once the optimizer is built (the groups' lr is not known before).
    At 1.0 (default) no such groups are made.
    """
    if backbone_lr_mult < 0:
        raise ValueError(f"backbone_lr_mult must be >= 0, got {backbone_lr_mult}")
    params = [p for p in model.parameters() if p.requires_grad]
    norm_ids = set() if norm_weight_decay is None else {
        id(p)
        for m in model.modules()
        for name, p in m.named_parameters(recurse=False)
        if name == "bias" or isinstance(m, nn.modules.batchnorm._NormBase)
    }
    backbone = getattr(model, "backbone", None)
    backbone_ids = set() if backbone_lr_mult == 1.0 or not isinstance(backbone, nn.Module) else {
        id(p) for p in backbone.parameters()}
    groups = []
    for in_backbone in (False, True) if backbone_ids else (False,):
        for is_norm in (False, True) if norm_weight_decay is not None else (False,):
            # empty groups are kept: the layout then depends on the settings only (optimizer states resume)
            members = [p for p in params if (id(p) in backbone_ids) == in_backbone and (id(p) in norm_ids) == is_norm]
            group: dict = {"params": members}
            if is_norm:
                group["weight_decay"] = norm_weight_decay
            if in_backbone:
                group["lr_mult"] = float(backbone_lr_mult)
            groups.append(group)
    return groups


def apply_lr_mult(optimizer: Optimizer) -> Optimizer:
    """Scale the ``lr`` of each group marked ``"lr_mult"`` (:func:`param_groups`), before a scheduler
    records it as the group's ``initial_lr``."""
    for group in optimizer.param_groups:
        if "lr_mult" in group and "initial_lr" not in group:
            group["lr"] = group["lr"] * group["lr_mult"]
    return optimizer
