"""WarmupCosineLR and PolyLR are torch's own schedulers (SequentialLR of LinearLR and CosineAnnealingLR /
PolynomialLR): the same learning rates as the former closed-form LambdaLR schedules, resuming, and the run's
length given by the task in both scheduler intervals."""

from __future__ import annotations

import functools
import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, PolynomialLR, SequentialLR
from torch.utils.data import DataLoader, TensorDataset

from vision_tasks.optim import PolyLR, WarmupCosineLR
from vision_tasks.tasks import ClassificationTask

BASE_LRS = (0.1, 0.02)  # two parameter groups with their own learning rates


# ---------------------------------------------------------------- the former closed forms
def _old_factor(decay, total: int, warmup: int, warmup_factor: float):
    """vision_tasks.optim._warmup_then before the move to torch's schedulers."""

    def factor(step: int) -> float:
        if step < warmup:
            return warmup_factor + (1 - warmup_factor) * step / warmup
        return decay(min(1.0, (step - warmup) / max(1, total - warmup)))

    return factor


def old_cosine(total_epochs, warmup_epochs, warmup_factor, eta_min_factor, steps_per_epoch):
    total = total_epochs * steps_per_epoch
    warmup = min(round(warmup_epochs * steps_per_epoch), total - 1)
    return _old_factor(lambda p: eta_min_factor + (1 - eta_min_factor) * 0.5 * (1 + math.cos(math.pi * p)),
                       total, warmup, warmup_factor)


def old_poly(total_steps, power, warmup_steps, warmup_factor):
    warmup = min(int(warmup_steps), total_steps - 1)
    return _old_factor(lambda p: (1 - p) ** power, total_steps, warmup, warmup_factor)


def _optimizer(lrs=BASE_LRS) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs], lr=lrs[0])


def assert_same(got: list[list[float]], want: list[list[float]], tol: float = 1e-6) -> None:
    """Equal lengths and every learning rate within ``tol`` (absolute and relative)."""
    assert len(got) == len(want)
    flat_got, flat_want = [x for row in got for x in row], [x for row in want for x in row]
    assert flat_got == pytest.approx(flat_want, abs=tol, rel=tol)


def _run(optimizer, scheduler, steps: int) -> list[list[float]]:
    """The learning rates of every group before each of ``steps`` steps, and after the last."""
    lrs = []
    for _ in range(steps):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs + [[group["lr"] for group in optimizer.param_groups]]


# ---------------------------------------------------------------- same sequence as before
@pytest.mark.parametrize("epochs, steps_per_epoch, warmup_epochs, warmup_factor, eta_min_factor", [
    (24, 1, 1, 0.01, 0.0),      # stepped per epoch, the Hydra default
    (13, 50, 0.2, 0.01, 0.0),   # the detection recipe, per batch
    (5, 37, 1.5, 0.1, 0.0),     # a warm-up of a fractional number of epochs
    (4, 10, 0, 0.01, 0.0),      # no warm-up: CosineAnnealingLR alone
    (3, 1, 5, 0.01, 0.0),       # warm-up longer than the run: cut to total - 1
    (1, 1, 1, 0.01, 0.0),       # a one-step run
    (6, 20, 1, 0.01, 0.05),     # a floor (one learning rate for all groups)
])
def test_warmup_cosine_equals_the_closed_form(epochs, steps_per_epoch, warmup_epochs, warmup_factor, eta_min_factor):
    lrs = BASE_LRS if not eta_min_factor else (0.1, 0.1)
    optimizer = _optimizer(lrs)
    total = epochs * steps_per_epoch
    scheduler = WarmupCosineLR(optimizer, total_steps=total, warmup_epochs=warmup_epochs, warmup_factor=warmup_factor,
                               eta_min_factor=eta_min_factor, steps_per_epoch=steps_per_epoch)
    assert isinstance(scheduler, SequentialLR) and isinstance(scheduler._schedulers[-1], CosineAnnealingLR)
    assert isinstance(scheduler._schedulers[0], LinearLR) == (scheduler.warmup_steps > 0)
    factor = old_cosine(epochs, warmup_epochs, warmup_factor, eta_min_factor, steps_per_epoch)
    got = _run(optimizer, scheduler, total + 5)  # and a few steps past the end: the final value stays
    want = [[base * factor(step) for base in lrs] for step in range(total + 6)]
    assert_same(got, want)
    assert scheduler.get_last_lr() == pytest.approx(want[-1])


@pytest.mark.parametrize("total, power, warmup_steps, warmup_factor", [
    (30000, 0.9, 0, 0.01),   # TF DeepLab's recipe
    (500, 0.9, 100, 0.01),   # the synthetic recipe's warm-up
    (12, 1.0, 2, 0.5),
    (7, 0.9, 50, 0.01),      # warm-up longer than the run: cut to total - 1
    (1, 0.9, 0, 0.01),
])
def test_poly_equals_the_closed_form(total, power, warmup_steps, warmup_factor):
    optimizer = _optimizer()
    scheduler = PolyLR(optimizer, total_steps=total, power=power, warmup_steps=warmup_steps, warmup_factor=warmup_factor)
    assert isinstance(scheduler, SequentialLR) and isinstance(scheduler._schedulers[-1], PolynomialLR)
    assert (scheduler.total_steps, scheduler.power) == (total, power)
    factor = old_poly(total, power, warmup_steps, warmup_factor)
    got = _run(optimizer, scheduler, total + 3)
    want = [[base * factor(step) for base in BASE_LRS] for step in range(total + 4)]
    assert_same(got, want)
    assert got[-1] == [0.0, 0.0]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="warmup_factor must be in"):  # torch's LinearLR cannot start at 0
        WarmupCosineLR(_optimizer(), total_steps=10, warmup_epochs=1, warmup_factor=0.0)
    with pytest.raises(ValueError, match="total_steps .* is required"):  # the task passes it
        PolyLR(_optimizer())
    with pytest.raises(ValueError, match="total_steps and steps_per_epoch must be >= 1"):
        WarmupCosineLR(_optimizer(), total_steps=0)
    with pytest.raises(ValueError, match="single eta_min"):
        WarmupCosineLR(_optimizer(), total_steps=10, eta_min_factor=0.1)
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        PolyLR(_optimizer(), total_steps=10, warmup_steps=-1)
    with pytest.raises(TypeError, match="min_lr_factor"):  # dropped: PolynomialLR decays to 0
        PolyLR(_optimizer(), total_steps=10, min_lr_factor=0.1)


# ---------------------------------------------------------------- resume
SCHEDULES = {
    "cosine": functools.partial(WarmupCosineLR, total_steps=60, warmup_epochs=1, steps_per_epoch=10),
    "cosine_no_warmup": functools.partial(WarmupCosineLR, total_steps=60),
    "poly": functools.partial(PolyLR, total_steps=60, warmup_steps=10),
    "poly_no_warmup": functools.partial(PolyLR, total_steps=60),
}


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("stop", [0, 4, 10, 11, 37, 60, 63])  # in the warm-up, at its end, in the decay, past the run
def test_resumed_scheduler_continues_the_same_sequence(name, stop):
    make = SCHEDULES[name]
    optimizer = _optimizer()
    scheduler = make(optimizer)
    whole = _run(optimizer, scheduler, 66)

    optimizer = _optimizer()
    scheduler = make(optimizer)
    _run(optimizer, scheduler, stop)
    saved_optimizer, saved_scheduler = optimizer.state_dict(), scheduler.state_dict()
    # as Lightning resumes: a new optimizer and scheduler from the config, then the optimizer's state, then the scheduler's
    optimizer = _optimizer()
    scheduler = make(optimizer)
    optimizer.load_state_dict(saved_optimizer)
    scheduler.load_state_dict(saved_scheduler)
    assert scheduler.last_epoch == stop
    resumed = _run(optimizer, scheduler, 66 - stop)
    assert_same(resumed, whole[stop:], 1e-9)


def test_resumed_with_a_longer_run_follows_the_new_length():
    """The position comes from the state dict, the shape from the constructor (the current config), as with the
    former LambdaLR: a run resumed with a larger trainer.max_epochs continues on the stretched cosine. (A bare
    SequentialLR would restore the old T_max, and torch's cosine would rise again after it.)"""
    optimizer = _optimizer()
    scheduler = WarmupCosineLR(optimizer, total_steps=40, warmup_epochs=1, steps_per_epoch=10)
    _run(optimizer, scheduler, 30)
    saved_optimizer, saved_scheduler = optimizer.state_dict(), scheduler.state_dict()
    optimizer = _optimizer()
    scheduler = WarmupCosineLR(optimizer, total_steps=80, warmup_epochs=1, steps_per_epoch=10)
    optimizer.load_state_dict(saved_optimizer)
    scheduler.load_state_dict(saved_scheduler)
    factor = old_cosine(8, 1, 0.01, 0.0, 10)
    got = _run(optimizer, scheduler, 55)
    assert scheduler.total_steps == 80
    assert_same(got, [[base * factor(step) for base in BASE_LRS] for step in range(30, 86)])


def test_resumes_from_the_former_lambda_lr_state_dict():
    """Checkpoints written before the move to torch's schedulers hold a LambdaLR state dict; its position is read."""
    from torch.optim.lr_scheduler import LambdaLR

    factor = old_poly(50, 0.9, 10, 0.01)
    optimizer = _optimizer()
    old = LambdaLR(optimizer, factor)
    _run(optimizer, old, 23)
    saved_optimizer, saved_scheduler = optimizer.state_dict(), old.state_dict()
    optimizer = _optimizer()
    scheduler = PolyLR(optimizer, total_steps=50, warmup_steps=10)
    optimizer.load_state_dict(saved_optimizer)
    scheduler.load_state_dict(saved_scheduler)
    assert_same(_run(optimizer, scheduler, 30), [[base * factor(step) for base in BASE_LRS] for step in range(23, 54)])


# ---------------------------------------------------------------- the run's length from the trainer
class _Linear(nn.Module):
    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


def _fit(scheduler, interval: str, batches: int = 6, **limits) -> tuple[pl.Trainer, list[float]]:
    """Fit a linear classifier on ``batches`` batches per epoch; the learning rate of every batch."""
    seen: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    task = ClassificationTask(_Linear(), optimizer=functools.partial(torch.optim.SGD, lr=1.0), scheduler=scheduler,
                              scheduler_interval=interval)
    data = DataLoader(TensorDataset(torch.randn(batches * 2, 4), torch.randint(0, 3, (batches * 2,))), batch_size=2)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[Record()], **limits)
    trainer.fit(task, train_dataloaders=data)
    return trainer, seen


@pytest.mark.parametrize("interval, limits, total, per_epoch, stepped", [
    ("step", {"max_epochs": 4}, 24, 6, 24),
    ("step", {"max_epochs": -1, "max_steps": 15}, 15, 6, 15),   # TF-style max_steps: the epoch is still 6 batches
    ("step", {"max_epochs": 4, "accumulate_grad_batches": 4}, 8, 2, 8),
    ("epoch", {"max_epochs": 4}, 4, 1, 4),
    # the epochs that max_steps reaches, the last one partly (Lightning steps the scheduler after the 2 whole ones)
    ("epoch", {"max_epochs": -1, "max_steps": 15}, 3, 1, 2),
])
def test_task_passes_the_run_length(interval, limits, total, per_epoch, stepped, one_thread):
    trainer, seen = _fit(functools.partial(WarmupCosineLR, warmup_epochs=1), interval, **limits)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert (scheduler.total_steps, scheduler.steps_per_epoch, scheduler.warmup_steps) == (total, per_epoch, per_epoch)
    assert scheduler.last_epoch == stepped
    if stepped == total:  # the cosine reaches its end with the run
        assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    if interval == "epoch":  # one learning rate per epoch: the closed form of the epoch
        factor = old_cosine(total, 1, 0.01, 0.0, 1)
        assert seen == pytest.approx([factor(step // 6) for step in range(len(seen))])
