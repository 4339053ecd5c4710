"""Making the TensorFlow releases fine-tunable: their batch norm is folded into the convolutions.

The TFLite releases ship each conv with its batch norm folded in (weight and bias); we load them as
convs followed by BatchNorms that are the identity plus the folded bias (``weight = 1``,
``running_mean = 0``, ``running_var = 1 - eps``: exact in eval mode, :mod:`backbones.tflite`). In
training mode a BatchNorm normalises with the batch's own statistics instead, which throws away the
scale and offset the folded conv produces: the converted classifier's ``layer19`` activations are
then almost all zero and its logits constant across a batch, so fine-tuning cannot start.

:func:`unfold_batch_norms` gives every such identity BatchNorm the statistics of the user's data
and the affine parameters that keep its eval output unchanged: with the per-channel mean ``m`` and
(biased) variance ``v`` of its input on a few batches, ``running_mean = m``, ``running_var = v``,
``weight = sqrt(v + eps)``, ``bias = folded_bias + m``. In eval mode the layer still computes
``x + folded_bias`` exactly; in training mode the batch statistics are close to ``m`` and ``v``, so it
computes nearly the same, and the network trains as a normal BatchNorm network from the release's
function. The alternatives (freezing the statistics, i.e. training a network without batch norm, or
re-estimating only the running statistics, which changes the eval output) are worse: see the
README's fine-tuning figures.

Example::

    model = mobilenet_v2_classifier(num_classes=2, weights="mobilenet_v2_1.0_224_quant.tflite")
    unfold_batch_norms(model, (images for images, _ in loader), num_batches=20)
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn

__all__ = ["folded_batch_norms", "unfold_batch_norms"]


def folded_batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The BatchNorms of ``model`` that are a folded release's identities: weight 1, running mean 0 and
    running variance ``1 - eps`` everywhere (a fresh BatchNorm has variance 1, a trained one anything)."""
    found = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine and module.track_running_stats:
            eps = torch.tensor(1.0 - module.eps, dtype=module.running_var.dtype)
            if (torch.all(module.weight == 1) and torch.all(module.running_mean == 0)
                    and torch.all(module.running_var == eps)):
                found.append(module)
    return found


@torch.no_grad()
def unfold_batch_norms(
    model: nn.Module,
    batches: Iterable[Tensor],
    num_batches: int = 20,
    forward: Callable[[Tensor], object] | None = None,
) -> int:
    """Give the folded BatchNorms of ``model`` the statistics of ``batches`` (see the module docstring);
    returns how many were unfolded (0 when the model has none: then nothing runs).

    Args:
        model: a task model (or any module) holding folded BatchNorms.
        batches: image batches as the model takes them (e.g. the training loader's images).
        num_batches: how many batches to measure on.
        forward: what to run on a batch (default ``model.forward_head`` when the model has one, the
            model itself otherwise); the model is in eval mode meanwhile, so the release's function is
            what is measured.
    """
    norms = folded_batch_norms(model)
    if not norms:
        return 0
    forward = forward or getattr(model, "forward_head", model)
    sums: dict[nn.Module, list] = {norm: [0, 0.0, 0.0] for norm in norms}

    def measure(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        x = inputs[0].detach().double().transpose(0, 1).flatten(1)  # (C, N*H*W)
        entry = sums[module]
        entry[0] += x.shape[1]
        entry[1] = entry[1] + x.sum(dim=1)
        entry[2] = entry[2] + (x * x).sum(dim=1)

    hooks = [norm.register_forward_pre_hook(measure) for norm in norms]
    was_training = model.training
    model.eval()
    try:
        seen = 0
        for images in batches:
            if seen >= num_batches:
                break
            forward(images.to(next(model.parameters()).device))
            seen += 1
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("unfold_batch_norms needs at least one batch of images")
    for norm, (count, total, squares) in sums.items():
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0)
        dtype = norm.running_mean.dtype
        norm.running_mean.copy_(mean.to(dtype))
        norm.running_var.copy_(var.to(dtype))
        norm.weight.copy_(torch.sqrt(var + norm.eps).to(dtype))
        norm.bias.add_(mean.to(dtype))
    return len(norms)
