"""MobileNetV2 as a feature extractor (Sandler et al., 2018, https://arxiv.org/abs/1801.04381).

The network is the paper's Table 2, kept below as data (``TABLE2``). Every knob the paper studies is
an argument with the paper's value as default: the width multiplier (with the paper's rule for the
last layer), the expansion factor, the output stride (by dilation, TF-Slim / DeepLab convention),
the Figure 6 ablations (linear vs ReLU6 bottleneck; shortcut between bottlenecks, between
expansions, or none) and the memory-efficient inference of section 5.1.

Layer names follow the paper's reference code (TF-Slim ``V2_DEF``): ``layer1`` is the stem conv,
``layer2`` ... ``layer18`` are the 17 bottleneck blocks, ``layer19`` is the final 1x1 conv;
``layerN_expand`` is the output of bottleneck N's 1x1 expansion (after its ReLU6). Parameter names
are torchvision's (``features.<i>.conv...``) so that its ``mobilenet_v2`` checkpoints load as they are.

Example::

    net = MobileNetV2(width_mult=1.0, out_features=("layer15_expand", "layer19"))
    feats = net(torch.randn(1, 3, 320, 320))   # {"layer15_expand": (1, 576, 20, 20), "layer19": (1, 1280, 10, 10)}
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TABLE2",
    "Conv2dSame",
    "ConvBNAct",
    "FeatureInfo",
    "InvertedResidual",
    "MobileNetV2",
    "NormLayer",
    "Padding",
    "feature_names",
    "make_divisible",
    "pad_same",
]

# Paper Table 2, the bottleneck rows:  t (expansion), c (output channels), n (repeats), s (first stride).
TABLE2: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32  # Table 2, first row: conv2d 3x3, stride 2
LAST_CHANNELS = 1280  # Table 2, conv2d 1x1 after the bottlenecks

Shortcut = Literal["bottleneck", "expansion", "none"]
Padding = Literal["symmetric", "tf_same"]
PADDINGS = ("symmetric", "tf_same")
NormLayer = Callable[..., nn.Module]  # torchvision-style: norm_layer(num_channels, ...) -> module


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor``, never going down by more than 10 %.

    The rounding both reference implementations apply to ``width_mult * c`` (TF-Slim
    ``_make_divisible``, torchvision ``_utils._make_divisible``). Written out here because
    torchvision's copy is private API and ``backbones`` depends on torch only.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _same_pad_amount(size: int, kernel_size: int, stride: int, dilation: int) -> int:
    """Total padding of TF "SAME" along one axis: enough for ``ceil(size / stride)`` outputs."""
    return max((-(-size // stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)


def pad_same(x: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> torch.Tensor:
    """Zero-pad ``x`` (N, C, H, W) as TensorFlow's ``padding="SAME"`` does, from its size at run time.

    TF gives ``ceil(size / stride)`` outputs and puts the odd pixel of padding at the bottom / right:
    a 3x3 stride-2 conv on an even size pads ``(0, 1)``, on an odd size ``(1, 1)``; stride-1 convs
    (dilated or not) pad symmetrically. The same as timm's ``pad_same`` (its ``tf_`` models).
    """
    pad_h = _same_pad_amount(x.shape[-2], kernel_size[0], stride[0], dilation[0])
    pad_w = _same_pad_amount(x.shape[-1], kernel_size[1], stride[1], dilation[1])
    if pad_h or pad_w:
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return x


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size (see :func:`pad_same`).

    Same parameters (and state-dict names) as ``nn.Conv2d``; its own ``padding`` stays 0.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_same(x, self.kernel_size, self.stride, self.dilation))


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, dilation: int, groups: int,
          padding: str) -> nn.Conv2d:
    """A bias-free conv with symmetric padding (PyTorch) or TF "SAME" padding (:class:`Conv2dSame`)."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if padding == "tf_same" and (kernel_size > 1 or stride > 1):
        return Conv2dSame(in_channels, out_channels, kernel_size, stride, dilation, groups, bias=False)
    pad = (kernel_size - 1) // 2 * dilation
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad, dilation, groups, bias=False)


@dataclass(frozen=True)
class FeatureInfo:
    """One output of a backbone: its name, channel count and stride (reduction) w.r.t. the input."""

    name: str
    channels: int
    stride: int


def _make_norm(norm_layer: NormLayer, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> nn.Module:
    """``norm_layer(channels, eps=eps, momentum=momentum)``, leaving out the keywords it does not take
    (torchvision's ``FrozenBatchNorm2d`` has an ``eps`` but no ``momentum``)."""
    try:
        params = inspect.signature(norm_layer).parameters
    except (TypeError, ValueError):  # a builtin without a signature: the channel count only
        params = {}
    any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in (("eps", eps), ("momentum", momentum)) if any_keyword or k in params}
    return norm_layer(channels, **kwargs)


# Not torchvision's Conv2dNormActivation: backbones depends on torch only, and TF "SAME" padding needs Conv2dSame.
class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm -> optional activation (indices 0, 1, 2 as in torchvision's checkpoints).

    The one conv-BN-activation block of the backbone and of the SSDLite and DeepLab heads.

    Args:
        in_channels, out_channels, kernel_size, stride, dilation, groups: of the conv.
        activation: the activation's class, built with ``inplace=True`` (``nn.ReLU6``: MobileNetV2 and
            SSDLite; ``nn.ReLU``: TF DeepLab's own layers); ``None`` for none.
        bn_eps, bn_momentum: BatchNorm settings, passed to ``norm_layer`` when it takes them.
        padding: ``"symmetric"`` (PyTorch / torchvision, ``(k - 1) // 2 * dilation`` on every side) or
            ``"tf_same"`` (TensorFlow "SAME", computed from the input size, see :func:`pad_same`).
        norm_layer: the normalisation's class or factory, torchvision-style (called with the channel
            count, see :func:`_make_norm`); ``nn.BatchNorm2d`` by default, torchvision's
            ``FrozenBatchNorm2d`` for a frozen one.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        activation: Callable[..., nn.Module] | None = nn.ReLU6,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        padding: Padding = "symmetric",
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        layers: list[nn.Module] = [
            _conv(in_channels, out_channels, kernel_size, stride, dilation, groups, padding),
            _make_norm(norm_layer, out_channels, bn_eps, bn_momentum),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """The bottleneck block of Table 1: 1x1 expansion + ReLU6, 3x3 depthwise + ReLU6, linear 1x1 projection.

    Args:
        in_channels, out_channels: narrow (bottleneck) widths.
        stride: 1 or 2, on the depthwise conv.
        expand_ratio: ``t``; the inner width is ``round(in_channels * t)``. With ``t == 1`` the
            expansion conv is skipped, as in both reference implementations.
        dilation: of the depthwise conv (output-stride control).
        linear_bottleneck: ``False`` adds a ReLU6 after the projection (Figure 6a ablation).
        shortcut: where the residual connection goes when ``stride == 1`` and the widths match
            (section 3.3). ``"bottleneck"`` (the paper's choice) adds the block input to the
            projection output; ``"expansion"`` joins the wide tensors instead: the expansion output
            is added to the depthwise output, before the projection (Figure 6b, "shortcut between
            expansions"; the paper gives no exact wiring, this is the in-block reading);
            ``"none"`` removes it.
        memory_efficient_splits: section 5.1: in eval mode compute the block as the sum of this many
            slices of the inner tensor, so that only ``1/splits`` of it is alive at a time.
            Same outputs, same multiply-adds; ``1`` (default) is the plain computation.
        padding: of the depthwise conv, ``"symmetric"`` or ``"tf_same"`` (see :class:`ConvBNAct`).
        norm_layer: the BatchNorm class (see :class:`ConvBNAct`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: float,
        dilation: int = 1,
        linear_bottleneck: bool = True,
        shortcut: Shortcut = "bottleneck",
        memory_efficient_splits: int = 1,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        padding: Padding = "symmetric",
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if shortcut not in ("bottleneck", "expansion", "none"):
            raise ValueError(f"shortcut must be 'bottleneck', 'expansion' or 'none', got {shortcut!r}")
        hidden = int(round(in_channels * expand_ratio))
        self.in_channels, self.out_channels, self.hidden_channels = in_channels, out_channels, hidden
        self.stride = stride
        self.has_expansion = expand_ratio != 1
        can_add = stride == 1 and in_channels == out_channels
        self.use_res_connect = can_add and shortcut == "bottleneck"
        self.use_expansion_shortcut = can_add and shortcut == "expansion" and self.has_expansion
        self.memory_efficient_splits = int(memory_efficient_splits)
        if not 1 <= self.memory_efficient_splits <= hidden:
            raise ValueError(f"memory_efficient_splits must be in [1, {hidden}], got {memory_efficient_splits}")
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, norm_layer=norm_layer)
        layers: list[nn.Module] = []
        if self.has_expansion:
            layers.append(ConvBNAct(in_channels, hidden, kernel_size=1, **bn))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, dilation, groups=hidden, padding=padding, **bn),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            _make_norm(norm_layer, out_channels, bn_eps, bn_momentum),
        ]
        if not linear_bottleneck:
            layers.append(nn.ReLU6(inplace=True))  # no parameters: checkpoint keys are unchanged
        self.conv = nn.Sequential(*layers)  # named "conv" as in torchvision's checkpoints
        if self.memory_efficient_splits > 1 and self.has_expansion:
            norms = (self.conv[0][1], self.conv[1][1])
            if not all(isinstance(getattr(n, "running_var", None), torch.Tensor) for n in norms):
                raise ValueError("memory_efficient_splits needs BatchNorms with running statistics (per-channel in "
                                 f"eval mode), got {type(norms[0]).__name__}")

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """The expansion output (the ``layerN_expand`` tap); the input itself when ``t == 1``."""
        return self.conv[0](x) if self.has_expansion else x

    def forward_from_expansion(self, x: torch.Tensor, expanded: torch.Tensor) -> torch.Tensor:
        """Finish the block from its input ``x`` and its expansion output."""
        first = 1 if self.has_expansion else 0
        inner = self.conv[first](expanded)
        if self.use_expansion_shortcut:
            inner = inner + expanded
        out = self.conv[first + 1 :](inner)
        return x + out if self.use_res_connect else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_efficient_splits > 1 and not self.training and self.has_expansion:
            return self._forward_split(x)
        return self.forward_from_expansion(x, self.expand(x))

    def _forward_split(self, x: torch.Tensor) -> torch.Tensor:
        # Section 5.1: F(x) = sum_i (B_i o N o A_i)(x) over slices i of the inner channels. The
        # expansion BN + ReLU6 and the depthwise conv + BN + ReLU6 are per channel, so each slice is
        # exact; the projection is linear, so its partial outputs add up before its BN. Eval only:
        # the BNs use their running statistics (nn.BatchNorm2d, or torchvision's FrozenBatchNorm2d,
        # which has the same buffers and eps).
        expand_conv, expand_bn = self.conv[0][0], self.conv[0][1]
        dw_conv, dw_bn = self.conv[1][0], self.conv[1][1]
        project, project_bn, *post = self.conv[2:]
        total = None
        for idx in torch.arange(self.hidden_channels, device=x.device).tensor_split(self.memory_efficient_splits):
            lo, hi = int(idx[0]), int(idx[-1]) + 1
            e = F.relu6(_bn_slice(F.conv2d(x, expand_conv.weight[lo:hi]), expand_bn, lo, hi))
            if isinstance(dw_conv, Conv2dSame):
                e_in = pad_same(e, dw_conv.kernel_size, dw_conv.stride, dw_conv.dilation)
            else:
                e_in = e
            d = F.conv2d(e_in, dw_conv.weight[lo:hi], None, dw_conv.stride, dw_conv.padding, dw_conv.dilation, hi - lo)
            d = F.relu6(_bn_slice(d, dw_bn, lo, hi))
            if self.use_expansion_shortcut:
                d = d + e
            part = F.conv2d(d, project.weight[:, lo:hi])
            total = part if total is None else total + part
        out = project_bn(total)
        for module in post:
            out = module(out)
        return x + out if self.use_res_connect else out


def _bn_slice(x: torch.Tensor, bn: nn.Module, lo: int, hi: int) -> torch.Tensor:
    """Channels ``lo:hi`` of an eval-mode BatchNorm (``nn.BatchNorm2d`` or ``FrozenBatchNorm2d``)."""
    return F.batch_norm(
        x, bn.running_mean[lo:hi], bn.running_var[lo:hi], bn.weight[lo:hi], bn.bias[lo:hi], False, 0.0, bn.eps
    )


def feature_names(num_blocks: int = sum(n for _, _, n, _ in TABLE2)) -> list[str]:
    """All tap names in network order: layer1, layer2, layer3_expand, layer3, ..., layer19."""
    names = ["layer1", "layer2"]  # layer2 (t = 1) has no expansion
    for n in range(3, num_blocks + 2):
        names += [f"layer{n}_expand", f"layer{n}"]
    return names + [f"layer{num_blocks + 2}"]


class MobileNetV2(nn.Module):
    """MobileNetV2 feature extractor returning a dict of named feature maps.

    Args:
        width_mult: width multiplier (section 4). All widths are ``make_divisible(c * width_mult)``;
            the last conv keeps 1280 channels for ``width_mult < 1`` ("we apply width multiplier to
            all layers except the very last convolutional layer") and grows above 1.
        out_features: tap names to return (see module docstring). The network is built only up to
            the deepest one, so e.g. ``("layer18",)`` has no 1280-channel conv.
        output_stride: 32, 16 or 8. Strides beyond it are replaced by dilation, TF-Slim/DeepLab
            convention: the block whose stride is removed keeps the current rate, the blocks after
            it are dilated by the accumulated stride.
        expand_ratio: the expansion factor ``t`` of every row of Table 2 that has ``t != 1``
            (the paper: "rates between 5 and 10 give nearly identical performance"; default 6).
        linear_bottleneck, shortcut, memory_efficient_splits: see :class:`InvertedResidual`.
        freeze_bn: frozen BatchNorms (for fine-tuning with small batches): ``norm_layer`` becomes
            torchvision's ``FrozenBatchNorm2d``, whose statistics and affine terms are buffers, never
            trained nor updated, in training mode too (same state-dict entries as ``nn.BatchNorm2d``
            less ``num_batches_tracked``; torchvision's checkpoints load into it as they are).
        bn_eps, bn_momentum: BatchNorm settings (PyTorch defaults; TF used eps 1e-3, decay 0.997),
            passed to ``norm_layer`` when it takes them (``FrozenBatchNorm2d``: eps only).
        norm_layer: the BatchNorm class, torchvision-style (see :class:`ConvBNAct`); default
            ``nn.BatchNorm2d``. ``memory_efficient_splits`` needs one with running statistics.
        round_nearest: channel rounding (8 in both reference implementations).
        inverted_residual_setting: replace Table 2's ``(t, c, n, s)`` rows.
        in_channels: image channels.
        padding: ``"symmetric"`` (default; PyTorch / torchvision weights) or ``"tf_same"``: TensorFlow
            "SAME" padding computed from the input size at run time, for weights trained in TF (the
            TFLite releases, see :mod:`backbones.tflite`). The two differ only for stride-2 convs on
            even sizes, where "SAME" pads bottom / right only. Parameter names are the same.
        min_depth: the fewest channels any layer gets: widths are ``make_divisible(c * width_mult,
            round_nearest, min_depth)`` (TF-Slim's and the TF Object Detection API's ``min_depth``; the
            expansions, ``t`` times a block's input, are never below it). ``None`` (default) is
            ``round_nearest``, the paper's and torchvision's rule. The TF OD API's SSDLite configs use
            16: at width 0.5 the first bottleneck then has 16 channels, not 8. Shortcuts stay those of the
            network without ``min_depth`` (as in the OD API's Keras MobileNetV2: a block adds its input only
            if the input's width equals the block's width before ``min_depth``), so that first bottleneck,
            16 -> 16 channels at stride 1, still has none.
        scale_last_conv: ``True`` applies ``width_mult`` to the last 1x1 conv below width 1 too (640
            channels at 0.5; TF-Slim's ``finegrain_classification_mode=False``, the TF Object Detection
            API's ``ssd_mobilenet_v2`` feature extractors). ``False`` (default) is the paper's rule above.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        out_features: Sequence[str] = ("layer19",),
        output_stride: int = 32,
        expand_ratio: float = 6,
        linear_bottleneck: bool = True,
        shortcut: Shortcut = "bottleneck",
        memory_efficient_splits: int = 1,
        freeze_bn: bool = False,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        round_nearest: int = 8,
        inverted_residual_setting: Sequence[Sequence[int]] | None = None,
        in_channels: int = 3,
        padding: Padding = "symmetric",
        norm_layer: NormLayer = nn.BatchNorm2d,
        min_depth: int | None = None,
        scale_last_conv: bool = False,
    ) -> None:
        super().__init__()
        if freeze_bn:
            # lazily: backbones alone needs torch only (torchvision is a dependency of the package anyway)
            from torchvision.ops import FrozenBatchNorm2d

            if norm_layer not in (nn.BatchNorm2d, FrozenBatchNorm2d):
                raise ValueError(f"freeze_bn=True means norm_layer=FrozenBatchNorm2d; it does not combine with "
                                 f"norm_layer={norm_layer!r}")
            norm_layer = FrozenBatchNorm2d
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if min_depth is not None and min_depth < 1:
            raise ValueError(f"min_depth must be a positive channel count or None, got {min_depth}")
        setting = [tuple(row) for row in (inverted_residual_setting or TABLE2)]
        if not setting or any(len(row) != 4 for row in setting):
            raise ValueError("inverted_residual_setting must be a non-empty list of (t, c, n, s) rows")
        if isinstance(out_features, str):
            out_features = (out_features,)
        num_blocks = sum(n for _, _, n, _ in setting)
        all_names = feature_names(num_blocks)
        unknown = [name for name in out_features if name not in all_names]
        if unknown or not out_features:
            raise ValueError(f"unknown out_features {unknown or list(out_features)}; choose from {all_names}")
        self.width_mult = width_mult
        self.min_depth = min_depth
        self.scale_last_conv = scale_last_conv
        self.output_stride = output_stride
        self.out_features = tuple(out_features)
        self.freeze_bn = freeze_bn
        self.padding = padding
        last_needed = max(int(name.split("_")[0][len("layer") :]) for name in self.out_features)

        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, norm_layer=norm_layer)

        def width(c: float) -> int:
            return make_divisible(c * width_mult, round_nearest, min_depth)

        channels = width(STEM_CHANNELS)
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, stride=2, padding=padding, **bn)]
        info = {"layer1": FeatureInfo("layer1", channels, 2)}
        current_stride, rate = 2, 1
        for t, c, n, s in setting:
            out_channels = width(c)
            # With min_depth, a block adds its input only if that matches its width *before* min_depth raised it
            # (the Keras MobileNetV2 under the TF OD API: ``in_channels == pointwise_filters``), so no shortcut
            # appears where min_depth made two widths equal (the first bottleneck at 0.5: 16 -> 16, nominally 16 -> 8).
            nominal = make_divisible(c * width_mult, round_nearest)
            t = t if t == 1 else expand_ratio
            for i in range(n):
                if len(layers) >= last_needed:
                    break
                stride = s if i == 0 else 1
                layer = f"layer{len(layers) + 1}"
                if t != 1:  # the expansion runs at the block's input resolution
                    hidden = int(round(channels * t))
                    info[f"{layer}_expand"] = FeatureInfo(f"{layer}_expand", hidden, current_stride)
                if stride > 1 and current_stride >= output_stride:
                    block_rate, stride, rate = rate, 1, rate * stride
                else:
                    block_rate, current_stride = rate, current_stride * stride
                layers.append(
                    InvertedResidual(
                        channels, out_channels, stride, t, block_rate, linear_bottleneck,
                        shortcut if min_depth is None or channels == nominal else "none",
                        memory_efficient_splits if t != 1 else 1, **bn, padding=padding,
                    )
                )
                info[layer] = FeatureInfo(layer, out_channels, current_stride)
                channels = out_channels
        if last_needed == num_blocks + 2:
            scale = width_mult if scale_last_conv else max(1.0, width_mult)  # the paper: never below 1280
            last = make_divisible(LAST_CHANNELS * scale, round_nearest, min_depth)
            layers.append(ConvBNAct(channels, last, kernel_size=1, **bn))
            info[f"layer{len(layers)}"] = FeatureInfo(f"layer{len(layers)}", last, current_stride)
        absent = [name for name in self.out_features if name not in info]
        if absent:  # layerN_expand of a block without expansion (t == 1, e.g. expand_ratio=1)
            raise ValueError(f"out_features {absent} do not exist in this network (blocks with t == 1 have no "
                             f"expansion); choose from {list(info)}")
        self.features = nn.Sequential(*layers)  # named "features" as in torchvision's checkpoints
        self.feature_info: list[FeatureInfo] = [info[name] for name in self.out_features]
        self._init_weights()

    @property
    def num_features(self) -> int:
        """Channels of the last requested feature map."""
        return self.feature_info[-1].channels

    def _init_weights(self) -> None:
        # torchvision's MobileNetV2 initialisation (kaiming fan-out convs, unit BN).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.modules.batchnorm._NormBase) and m.affine:  # FrozenBatchNorm2d: 1 and 0 already
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = set(self.out_features)
        out: dict[str, torch.Tensor] = {}
        for index, layer in enumerate(self.features, start=1):
            name = f"layer{index}"
            if isinstance(layer, InvertedResidual) and f"{name}_expand" in wanted:
                expanded = layer.expand(x)
                out[f"{name}_expand"] = expanded
                x = layer.forward_from_expansion(x, expanded)
            else:
                x = layer(x)
            if name in wanted:
                out[name] = x
        return {name: out[name] for name in self.out_features}
