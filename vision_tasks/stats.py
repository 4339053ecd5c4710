"""Parameter and multiply-add counts, with the paper's counting convention (PAPER.md section 9).

- Params: all parameters, BN affine included (torchvision's convention: 3,504,872 for MobileNetV2
  1.0 with 1000 classes). ``exclude_norm=True`` gives the TF-Slim checkpoint table's convention
  (conv and FC weights only, no BN gamma/beta).
- MAdds: multiply-adds of convolutions and linear layers only (no BN, activations, pooling or
  additions), measured with ``torch.utils.flop_counter.FlopCounterMode`` on one image: its FLOPs
  for these ops are 2 x MAdds. Only the convolution and matrix-multiply operators are summed, so an
  operator that FlopCounterMode may learn to count in the future does not change the convention.

Lightning-free (torch only), so tests and ``tools/model_stats.py`` import it directly::

    from vision_tasks.stats import count_params, count_madds
    count_params(model)               # 3504872
    count_madds(model, 224)           # 300774272
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["MADD_OPS", "count_params", "count_madds", "madds_by_op", "flops_by_op"]

# Operators whose FLOPs are 2 x multiply-adds of a convolution or a linear layer.
MADD_OPS: frozenset[str] = frozenset(
    {
        "aten.convolution",
        "aten._convolution",
        "aten.cudnn_convolution",
        "aten.convolution_overrideable",
        "aten._slow_conv2d_forward",
        "aten.mm",
        "aten.addmm",
        "aten.bmm",
        "aten.baddbmm",
    }
)

_NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm,
)


def count_params(model: nn.Module, *, exclude_norm: bool = False, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (shared tensors counted once).

    Args:
        exclude_norm: leave out the affine parameters of normalisation layers (BatchNorm,
            InstanceNorm, GroupNorm, LayerNorm): the TF-Slim table's convention.
        trainable_only: count only parameters with ``requires_grad``.
    """
    skip: set[int] = set()
    if exclude_norm:
        for module in model.modules():
            if isinstance(module, _NORM_TYPES):
                skip.update(id(p) for p in module.parameters(recurse=False))
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or id(p) in skip or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _example_input(model: nn.Module, input_size: int | Sequence[int], in_channels: int) -> torch.Tensor:
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2:
        raise ValueError(f"input_size must be an int or (height, width), got {input_size!r}")
    ref = next(model.parameters(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    return torch.zeros(1, in_channels, *size, device=device, dtype=dtype)


def flops_by_op(
    model: nn.Module, input_size: int | Sequence[int] = 224, *, in_channels: int = 3, inputs: Any = None
) -> dict[str, int]:
    """FlopCounterMode's FLOPs per operator for one eval-mode forward pass of one image.

    ``inputs`` replaces the default zero image ``(1, in_channels, H, W)`` (a tensor, or a tuple of
    positional arguments). The model's train/eval mode is restored afterwards and nothing is updated
    (no grad, BN in eval mode).
    """
    if inputs is None:
        inputs = _example_input(model, input_size, in_channels)
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*args)
    finally:
        model.train(was_training)
    return {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}


def madds_by_op(
    model: nn.Module, input_size: int | Sequence[int] = 224, *, in_channels: int = 3, inputs: Any = None
) -> dict[str, int]:
    """Multiply-adds per convolution / matrix-multiply operator (FLOPs / 2), other operators left out."""
    flops = flops_by_op(model, input_size, in_channels=in_channels, inputs=inputs)
    return {op: n // 2 for op, n in flops.items() if op in MADD_OPS}


def count_madds(
    model: nn.Module, input_size: int | Sequence[int] = 224, *, in_channels: int = 3, inputs: Any = None
) -> int:
    """Multiply-adds of the convolutions and linear layers for one image of ``input_size``
    (an int for a square image or ``(height, width)``)."""
    return sum(madds_by_op(model, input_size, in_channels=in_channels, inputs=inputs).values())
