"""Learning-rate schedules and parameter groups shared by the tasks."""

from __future__ import annotations

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

__all__ = ["WarmupCosineLR", "param_groups"]


class WarmupCosineLR(SequentialLR):
    """Linear warm-up for ``warmup_epochs`` from ``warmup_factor * lr``, then cosine decay to ``eta_min``.

    torch's ``LinearLR`` + ``CosineAnnealingLR`` chained by ``SequentialLR``, as one class so that
    Hydra (``_partial_``) and LightningCLI (``class_path``) both build it from the optimizer alone.
    Stepped once per epoch; warm-up is shortened to ``max_epochs - 1`` for very short runs.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_epochs: int,
        warmup_epochs: int = 0,
        warmup_factor: float = 0.1,
        eta_min: float = 0.0,
    ) -> None:
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
        warmup_epochs = min(warmup_epochs, max_epochs - 1)  # short debugging runs keep a cosine part
        cosine = CosineAnnealingLR(optimizer, T_max=max_epochs - warmup_epochs, eta_min=eta_min)
        if warmup_epochs == 0:
            super().__init__(optimizer, [cosine], milestones=[])
        else:
            warmup = LinearLR(optimizer, start_factor=warmup_factor, total_iters=warmup_epochs)
            super().__init__(optimizer, [warmup, cosine], milestones=[warmup_epochs])


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
