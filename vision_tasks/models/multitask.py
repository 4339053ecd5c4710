"""One MobileNetV2 backbone pass feeding any subset of the paper's three heads (classifier, SSDLite, DeepLabv3).

The three single-task models of this package each own a backbone; :class:`MultiTaskMobileNetV2` owns one,
tapped at the union of what its heads read, and runs the heads of the single-task models on it (their
parts after the backbone: :class:`~vision_tasks.models.ssdlite.SSDLiteParts`,
:class:`~vision_tasks.models.deeplab.DeepLabParts`, :class:`heads.ClassifierHead`). Heads and backbone
load from single-task files (:meth:`MultiTaskMobileNetV2.from_single_task`, :meth:`~MultiTaskMobileNetV2.load_head`,
:meth:`~MultiTaskMobileNetV2.load_backbone`) and freeze one by one (:meth:`~MultiTaskMobileNetV2.freeze`).

The output-stride question: SSDLite reads stride 16 (``layer15_expand``) and stride 32 (``layer19``) of an
output-stride-32 backbone; the paper's DeepLab reads ``layer18`` at output stride 16 (the last stage
dilated). One backbone cannot be both, so ``output_stride`` chooses:

- 32 (default): the classifier and SSDLite read what they read alone (``layer19`` at stride 32;
  ``layer15_expand`` at 16 and ``layer19`` at 32); DeepLab reads ``layer18`` at stride 32, or, with the
  segmentation option ``skip_feature`` (e.g. ``"layer14"``, 96 channels at stride 16), that map resized to
  the skip tap and concatenated with it, so that the head runs at stride 16 on an output-stride-32 backbone.
- 16: the last stage is dilated as in the paper's DeepLab, which reads ``layer18`` at stride 16 as it does
  alone; SSDLite's second map ``layer19`` is then at stride 16 too, and its four extra layers take over the
  downsampling (maps at strides 16, 16, 32, 64, 128, 256 instead of 16, 32, ... 512; more anchors); the
  classifier pools ``layer19`` at stride 16.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence, Union

import torch
from torch import Tensor, nn

import backbones
from backbones import WeightsError
from backbones.mobilenet_v2 import feature_names
from heads import ClassifierHead
from heads.deeplab import upsample_logits

from .classifier import MobileNetV2Classifier
from .deeplab import DeepLabParts, DeepLabV3MobileNetV2
from .hub import resolve_weights
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocessing
from .ssdlite import SSDLiteMobileNetV2, SSDLiteParts
from .weights import describe_weights, weights_settings

__all__ = ["HEADS", "OUTPUT_STRIDES", "MultiTaskMobileNetV2", "head_defaults", "multitask_mobilenet_v2"]

HEADS: tuple[str, ...] = ("classification", "detection", "segmentation")
OUTPUT_STRIDES: tuple[int, ...] = (32, 16)
# The single-task model whose head each head is, by the class name checkpoints and weight records carry.
SINGLE_TASK: dict[str, type[nn.Module]] = {
    "classification": MobileNetV2Classifier,
    "detection": SSDLiteMobileNetV2,
    "segmentation": DeepLabV3MobileNetV2,
}
# Arguments of the single-task models that configure the backbone or the input, not the head; the joint
# model takes them once (BatchNorm settings are the backbone's here and each head's own option there).
BACKBONE_ARGS: tuple[str, ...] = (
    "width_mult", "output_stride", "padding", "round_nearest", "min_depth", "scale_last_conv", "freeze_bn",
    "bn_eps", "bn_momentum", "mean", "std", "normalization", "grayscale",
)
# Single-task arguments the joint model does not offer: the Figure 6 ablations and section 5.1's splits.
_NOT_OFFERED = ("expand_ratio", "linear_bottleneck", "shortcut", "memory_efficient_splits")
_HEAD_ONLY = {"bn_eps", "bn_momentum"}  # head options although single-task models share them with the backbone
_EXTRA_OPTIONS = {"segmentation": {"skip_feature": None}}  # options the single-task model does not have

Source = Union[str, Path, nn.Module, Mapping[str, Tensor]]


def _defaults(cls: type[nn.Module]) -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def head_defaults(head: str) -> dict[str, Any]:
    """The options of ``head`` and their defaults: its single-task model's arguments that are not the backbone's
    (plus the joint model's own, e.g. segmentation's ``skip_feature``)."""
    options = {k: v for k, v in _defaults(SINGLE_TASK[head]).items()
               if (k not in BACKBONE_ARGS or k in _HEAD_ONLY) and k not in _NOT_OFFERED}
    return {**options, **_EXTRA_OPTIONS.get(head, {})}


def _plain(value: Any) -> Any:
    """Tuples (and Hydra's lists) -> lists, so that ``config`` is plain data (YAML, JSON, checkpoints)."""
    return [_plain(v) for v in value] if isinstance(value, Sequence) and not isinstance(value, str) else value


def _check_head_names(names: Sequence[str], what: str = "head") -> None:
    unknown = [name for name in names if name not in HEADS]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}; the heads are {', '.join(HEADS)}")


def _head_options(heads: Sequence[str] | Mapping[str, Mapping[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """``heads`` (names, or names -> options) -> every chosen head's full options, checked."""
    if isinstance(heads, str):
        heads = (heads,)
    chosen = dict(heads) if isinstance(heads, Mapping) else {name: None for name in heads}
    if not chosen:
        raise ValueError(f"a MultiTaskMobileNetV2 needs at least one head; choose from {', '.join(HEADS)}")
    _check_head_names(list(chosen))
    resolved = {}
    for name in HEADS:  # a fixed order: the output dict and the state dict do not depend on how heads were listed
        if name not in chosen:
            continue
        options, given = head_defaults(name), dict(chosen[name] or {})
        unknown = sorted(set(given) - set(options))
        if unknown:
            raise ValueError(f"unknown {name} option(s) {', '.join(unknown)}; the {name} options are "
                             f"{', '.join(sorted(options))}")
        resolved[name] = {k: _plain(v) for k, v in {**options, **given}.items()}
    return resolved


class ClassificationBranch(nn.Module):
    """The classifier of Table 2 on ``layer19``: :class:`heads.ClassifierHead` (``head``), logits ``(N, C)``."""

    FEATURES = ("layer19",)
    CLASS_LAYERS = MobileNetV2Classifier.CLASS_LAYERS

    def __init__(self, channels: Mapping[str, int], *, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.head = ClassifierHead(channels["layer19"], num_classes, dropout)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        return self.head(features["layer19"])


class DetectionBranch(SSDLiteParts):
    """SSDLite on ``layer15_expand`` and ``layer19`` (:class:`~vision_tasks.models.ssdlite.SSDLiteParts`):
    ``forward(features, image_size)`` returns the head outputs that :meth:`loss` and :meth:`postprocess` take."""

    FEATURES = SSDLiteMobileNetV2.FEATURES

    def __init__(self, channels: Mapping[str, int], *, width_mult: float, min_depth: int | None, num_classes: int,
                 image_size: int, category_ids: Sequence[int] | None, **options: Any) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"detection num_classes (foreground classes) must be >= 1, got {num_classes}")
        self.num_classes, self.image_size = num_classes, image_size
        self.category_ids = None if category_ids is None else [int(i) for i in category_ids]
        if self.category_ids is not None and len(set(self.category_ids)) != num_classes:
            raise ValueError(f"detection category_ids must give {num_classes} distinct ids (one per class), got "
                             f"{len(self.category_ids)}")
        self._build_ssdlite([channels[name] for name in self.FEATURES], num_classes=num_classes,
                            width_mult=width_mult, min_depth=min_depth, **options)

    def forward(self, features: Mapping[str, Tensor], image_size: Sequence[int]) -> dict[str, Tensor]:
        return self.predict([features[name] for name in self.FEATURES], image_size)


class SegmentationBranch(DeepLabParts):
    """DeepLabv3 on ``feature`` (:class:`~vision_tasks.models.deeplab.DeepLabParts`), optionally on ``feature``
    resized to ``skip_feature`` and concatenated with it; ``forward(features, size)`` returns
    ``(logits, aux_logits)`` at ``size``."""

    def __init__(self, channels: Mapping[str, int], *, output_stride: int, num_classes: int, feature: str,
                 aux_feature: str | None, skip_feature: str | None, **options: Any) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"segmentation num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.feature, self.aux_feature, self.skip_feature = feature, aux_feature, skip_feature
        in_channels = channels[feature] + (channels[skip_feature] if skip_feature else 0)
        self._build_deeplab(in_channels, None if aux_feature is None else channels[aux_feature],
                            num_classes=num_classes, output_stride=output_stride, **options)

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(name for name in (self.feature, self.skip_feature, self.aux_feature) if name)

    def forward(self, features: Mapping[str, Tensor], size: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        x = features[self.feature]
        if self.skip_feature:
            skip = features[self.skip_feature]
            x = torch.cat([upsample_logits(x, skip.shape[-2:]), skip], dim=1)
        return self.predict(x, size, None if self.aux_feature is None else features[self.aux_feature])


class MultiTaskMobileNetV2(nn.Module):
    """One MobileNetV2 backbone pass feeding any subset of the classifier, SSDLite and DeepLabv3 heads.

    The backbone is tapped at the union of the maps its heads read and runs once per call; each head is the
    one of its single-task model (same modules, same state-dict keys under ``<head>.``: ``classification.head.fc.*``,
    ``detection.head.*``, ``segmentation.head.*`` / ``segmentation.aux_head.*``), so a head loads from a
    single-task checkpoint or release and, with the same backbone weights and output stride, gives the same
    outputs. See the module docstring for what ``output_stride`` 32 and 16 feed to which head.

    ``model(images)`` takes float images ``(N, 3, H, W)`` in [0, 1] (or uint8), normalises them once inside
    and returns one entry per head, in eval mode:

    - ``classification``: logits ``(N, num_classes)``;
    - ``detection``: one dict per image, ``boxes`` ``(D, 4)`` xyxy (in the pixels of ``original_sizes`` when
      given), ``scores``, ``labels`` (see :class:`~vision_tasks.models.SSDLiteMobileNetV2`);
    - ``segmentation``: logits ``(N, num_classes, H, W)`` at the input size.

    In training mode ``detection`` is the head outputs (``cls_logits``, ``bbox_regression``, ``anchors``,
    ``image_size``) for ``model.detection.loss(out["detection"], targets)``, as ``forward_head`` of the
    single-task model gives; the others are as in eval mode, plus ``segmentation_aux`` (the auxiliary logits)
    when the segmentation head has an ``aux_feature``.

    Args:
        heads: the head names (any non-empty subset of :data:`HEADS`), or a mapping of head name to its
            options (``None`` or ``{}``: the defaults). The options of a head are its single-task model's
            arguments that do not configure the backbone (:func:`head_defaults`), e.g. ``num_classes``;
            ``bn_eps`` / ``bn_momentum`` there are the head's. Segmentation also takes ``skip_feature``.
        width_mult: of the backbone (and of SSDLite's extra layers, as in the single-task model).
        output_stride: 32 or 16 (see the module docstring).
        frozen: parts to freeze from the start (``"backbone"`` and head names; see :meth:`freeze`).
        padding, round_nearest, min_depth, scale_last_conv, freeze_bn, bn_eps, bn_momentum: of the backbone
            (see :class:`backbones.MobileNetV2`; ``min_depth`` also floors SSDLite's extra layers, as there).
        mean, std, normalization, grayscale: the input normalisation (:mod:`vision_tasks.models.preprocessing`).

    Example::

        model = MultiTaskMobileNetV2({"classification": {"num_classes": 10}, "detection": {"num_classes": 20},
                                      "segmentation": {"num_classes": 21}}, output_stride=32)
        model.load_backbone("imagenet")
        out = model.eval()(images)   # {"classification": (N, 10), "detection": [{...}, ...], "segmentation": (N, 21, H, W)}
        joint = MultiTaskMobileNetV2.from_single_task({"detection": "ssdlite.ckpt", "segmentation": "deeplab.ckpt"},
                                                      backbone="detection", frozen=["backbone", "detection"])
    """

    def __init__(
        self,
        heads: Sequence[str] | Mapping[str, Mapping[str, Any] | None] = HEADS,
        *,
        width_mult: float = 1.0,
        output_stride: int = 32,
        frozen: Sequence[str] = (),
        padding: str = "symmetric",
        round_nearest: int = 8,
        min_depth: int | None = None,
        scale_last_conv: bool = False,
        freeze_bn: bool = False,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        normalization: str = "standard",
        grayscale: bool = False,
    ) -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES} (see MultiTaskMobileNetV2), "
                             f"got {output_stride!r}")
        options = _head_options(heads)
        self.preprocess = ImagePreprocessing(mean, std, normalization, grayscale)
        self.width_mult, self.output_stride = width_mult, output_stride
        self.head_names: tuple[str, ...] = tuple(options)
        taps: set[str] = set()
        if "classification" in options:
            taps.update(ClassificationBranch.FEATURES)
        if "detection" in options:
            taps.update(DetectionBranch.FEATURES)
        if "segmentation" in options:
            seg = options["segmentation"]
            taps.update(name for name in (seg["feature"], seg["aux_feature"], seg["skip_feature"]) if name)
        order = feature_names()
        unknown = sorted(taps - set(order))
        if unknown:
            raise ValueError(f"unknown segmentation tap(s) {unknown}; choose from {order}")
        self.backbone = backbones.create_backbone(
            "mobilenet_v2", width_mult=width_mult, output_stride=output_stride,
            out_features=tuple(sorted(taps, key=order.index)), padding=padding, round_nearest=round_nearest,
            min_depth=min_depth, scale_last_conv=scale_last_conv, freeze_bn=freeze_bn, bn_eps=bn_eps,
            bn_momentum=bn_momentum,
        )
        channels = {info.name: info.channels for info in self.backbone.feature_info}
        self.classification = self.detection = self.segmentation = None
        if "classification" in options:
            self.classification = ClassificationBranch(channels, **options["classification"])
        if "detection" in options:
            self.detection = DetectionBranch(channels, width_mult=width_mult, min_depth=min_depth,
                                             **options["detection"])
        if "segmentation" in options:
            self.segmentation = SegmentationBranch(channels, output_stride=output_stride, **options["segmentation"])
        self.config: dict[str, Any] = dict(
            heads=options, width_mult=width_mult, output_stride=output_stride, frozen=[], padding=padding,
            round_nearest=round_nearest, min_depth=min_depth, scale_last_conv=scale_last_conv, freeze_bn=freeze_bn,
            bn_eps=bn_eps, bn_momentum=bn_momentum, **self.preprocess.config,
        )
        self._frozen: list[str] = []
        self.freeze(*frozen)

    # ------------------------------------------------------------------------------------------ running
    def forward(
        self, images: Tensor, original_sizes: Sequence[Sequence[int]] | Tensor | None = None
    ) -> dict[str, Any]:
        """One output per head (see the class docstring); ``original_sizes`` ((H, W) per image) maps the
        detections back to the images before they were resized, as the single-task detector does."""
        out = self.forward_heads(images)
        if not self.training:
            out.pop("segmentation_aux", None)
            if self.detection is not None:
                out["detection"] = self.detection.postprocess(out["detection"], original_sizes)
        return out

    def forward_heads(self, images: Tensor) -> dict[str, Any]:
        """The head outputs as training mode gives them, in either mode (what the losses take: the detection
        head outputs for ``model.detection.loss``, ``segmentation_aux`` when the segmentation head has an
        ``aux_feature``), so that an evaluation computes its losses and its detections
        (``model.detection.postprocess``) from one pass."""
        features = self.backbone(self.preprocess(images))
        size = tuple(int(s) for s in images.shape[-2:])
        out: dict[str, Any] = {}
        if self.classification is not None:
            out["classification"] = self.classification(features)
        if self.detection is not None:
            out["detection"] = self.detection(features, size)
        if self.segmentation is not None:
            logits, aux_logits = self.segmentation(features, size)
            out["segmentation"] = logits
            if aux_logits is not None:
                out["segmentation_aux"] = aux_logits
        return out

    def check_loss_weights(self, loss_weights: Mapping[str, float] | None = None) -> dict[str, float]:
        """The weight of each head's loss: ``loss_weights`` (head name -> weight) with 1.0 for the heads it
        leaves out.

        Raises:
            ValueError: an unknown head name, a head this model does not have, or a negative or non-finite weight.
        """
        weights = dict(loss_weights or {})
        _check_head_names(list(weights), "head in loss_weights")
        absent = [name for name in weights if name not in self.head_names]
        if absent:
            raise ValueError(f"loss weight(s) for {', '.join(absent)}, which this model does not have; its heads are "
                             f"{', '.join(self.head_names)} (on the command line: "
                             f"{' '.join('~task.loss_weights.' + name for name in absent)}, or task.loss_weights=null)")
        for name, value in weights.items():
            if not (isinstance(value, (int, float)) and 0 <= float(value) < float("inf")):
                raise ValueError(f"the loss weight of {name} must be a finite number >= 0, got {value!r}")
        return {name: float(weights.get(name, 1.0)) for name in self.head_names}

    # ------------------------------------------------------------------------------------------ freezing
    def _part(self, name: str) -> nn.Module:
        if name == "backbone":
            return self.backbone
        parts = ("backbone", *self.head_names)
        if name not in HEADS:
            raise ValueError(f"unknown part {name!r}; this model's parts are {', '.join(parts)}")
        if name not in self.head_names:
            raise ValueError(f"this model has no {name} head; its parts are {', '.join(parts)}")
        return getattr(self, name)

    @property
    def frozen(self) -> tuple[str, ...]:
        """The frozen parts (``"backbone"`` and head names)."""
        return tuple(self._frozen)

    def freeze(self, *parts: str) -> "MultiTaskMobileNetV2":
        """Freeze ``parts`` (``"backbone"`` and head names): their parameters get ``requires_grad=False`` and they
        stay in eval mode when the model trains (BatchNorm keeps its running statistics, dropout is off), so a
        head is retrained without touching the others. Returns the model."""
        for name in parts:
            module = self._part(name)
            for parameter in module.parameters():
                parameter.requires_grad_(False)
            module.eval()
            if name not in self._frozen:
                self._frozen.append(name)
        self.config["frozen"] = [name for name in ("backbone", *self.head_names) if name in self._frozen]
        return self

    def unfreeze(self, *parts: str) -> "MultiTaskMobileNetV2":
        """Undo :meth:`freeze` for ``parts`` (their mode follows the model's again). Returns the model."""
        for name in parts:
            module = self._part(name)
            for parameter in module.parameters():
                parameter.requires_grad_(True)
            module.train(self.training)
            if name in self._frozen:
                self._frozen.remove(name)
        self.config["frozen"] = [name for name in ("backbone", *self.head_names) if name in self._frozen]
        return self

    def train(self, mode: bool = True) -> "MultiTaskMobileNetV2":
        super().train(mode)
        for name in self._frozen:
            self._part(name).eval()
        return self

    # ------------------------------------------------------------------------------------------ loading
    def load_backbone(self, source: Source) -> backbones.LoadReport:
        """Load the backbone from ``source``: ImageNet weights (a file, or a name such as ``imagenet``,
        ``timm:mobilenetv2_100``), a single-task or joint model, its checkpoint, weight file or state dict; its
        heads are ignored, layers past this backbone's last tap too.

        Raises:
            backbones.WeightsError: a source of another width (both named), or whose backbone does not fit
                (missing or mismatching tensors listed); the model is left unchanged.
        """
        source = _read_source(source)
        config = source.config or {}
        if "width_mult" in config and float(config["width_mult"]) != float(self.width_mult):
            raise WeightsError(f"{source.name}: its backbone has width_mult={config['width_mult']}, this model's "
                               f"width_mult={self.width_mult}; nothing was loaded")
        return _load_part(self.backbone, source.loadable, source.name, "the backbone")

    def load_head(self, head: str, source: Source, *, strict_output_stride: bool = True) -> backbones.LoadReport:
        """Load ``head`` (a head name of this model) from ``source``: a single-task model of that task (or a
        joint model with that head), its Lightning checkpoint, weight file (a release, a converted file, a weight
        name) or state dict. Only the head is loaded (see :meth:`load_backbone` for the backbone).

        Args:
            strict_output_stride: refuse a head trained at another output stride than this model's (its
                outputs would change); ``False`` takes it anyway, e.g. as the start of fine-tuning.

        Raises:
            ValueError: ``head`` is not a head of this model.
            backbones.WeightsError: a source of another task, of another backbone width or output stride
                (both values and the source named), or whose head does not fit (tensors listed); the model is
                left unchanged.
        """
        module = self._part(head)
        if head == "backbone":
            raise ValueError("load_head loads heads; use load_backbone for the backbone")
        source = _read_source(source)
        name, state, config, model_class = source
        if model_class == type(self).__name__:  # a joint model: its head's keys are prefixed with the head name
            if head not in (config or {}).get("heads", {head: None}):
                raise WeightsError(f"{name}: a {model_class} without a {head} head; its heads are "
                                   f"{', '.join((config or {}).get('heads', {}))}")
            state = {k[len(head) + 1:]: v for k, v in _state_dict(source).items() if k.startswith(f"{head}.")}
        elif model_class is not None and model_class != SINGLE_TASK[head].__name__:
            raise WeightsError(f"{name} holds a {model_class}, not a {SINGLE_TASK[head].__name__}: it has no "
                               f"{head} head; nothing was loaded")
        if config is not None:
            width = float(config.get("width_mult", 1.0))
            if width != float(self.width_mult):
                raise WeightsError(
                    f"{name}: its {head} head was trained on a backbone of width_mult={config.get('width_mult', 1.0)}, "
                    f"this model's backbone has width_mult={self.width_mult}; nothing was loaded")
            stride = int(config.get("output_stride", 32))  # the classifier and SSDLite run at 32
            if strict_output_stride and stride != self.output_stride:
                raise WeightsError(
                    f"{name}: its {head} head was trained at output_stride={stride}, this model runs at "
                    f"output_stride={self.output_stride}; build the model with output_stride={stride}, or pass "
                    "strict_output_stride=False to take the head anyway (to fine-tune it); nothing was loaded")
        return _load_part(module, state, name, f"the {head} head")

    @classmethod
    def from_single_task(
        cls,
        sources: Mapping[str, Source],
        *,
        backbone: str | Source | None = None,
        heads: Mapping[str, Mapping[str, Any] | None] | Sequence[str] | None = None,
        strict_output_stride: bool = True,
        **kwargs: Any,
    ) -> "MultiTaskMobileNetV2":
        """A joint model whose heads are loaded from single-task models, checkpoints or weight files.

        Each head's options come from its source's configuration (a model, a checkpoint, a weight record;
        a plain state dict has none: give them in ``heads``), the backbone's settings (width, padding,
        normalisation, BatchNorm) from the backbone's source.

        Args:
            sources: head name -> source (see :meth:`load_head`).
            backbone: where the backbone's weights come from: a head name of ``sources`` (the backbone of that
                source), any source :meth:`load_backbone` takes (``"imagenet"`` ...), or ``None``: the first of
                ``sources``.
            heads: more heads (fresh ones, not in ``sources``) or options overriding the sources', as in the
                constructor.
            strict_output_stride: see :meth:`load_head`.
            kwargs: the other constructor arguments; ``output_stride`` defaults to the one the head sources
                were trained at (32 for classifiers and SSDLite).

        Raises:
            ValueError: unknown head names; head sources of different output strides without ``output_stride``.
            backbones.WeightsError: see :meth:`load_head` and :meth:`load_backbone`.
        """
        _check_head_names(list(sources))
        if not sources and backbone is None:
            raise ValueError("from_single_task needs at least one source (or build MultiTaskMobileNetV2 directly)")
        read = {head: _read_source(source) for head, source in sources.items()}
        extra = _head_options(heads) if heads else {}
        extra_given = dict(heads) if isinstance(heads, Mapping) else {name: None for name in (heads or ())}
        options: dict[str, dict[str, Any]] = {}
        for head in HEADS:
            if head in read:
                config = read[head].config or {}
                if read[head].model_class == cls.__name__:  # a joint model: the head's options are under "heads"
                    config = {**config, **((config.get("heads") or {}).get(head) or {})}
                known = head_defaults(head)
                options[head] = {k: v for k, v in config.items() if k in known}
                options[head].update(extra_given.get(head) or {})
            elif head in extra:
                options[head] = dict(extra_given.get(head) or {})
        if backbone is None:
            backbone_source = next(iter(read.values()), None)
        elif isinstance(backbone, str) and backbone in HEADS:
            if backbone not in read:
                raise ValueError(f"backbone={backbone!r} names no source; the sources are {', '.join(read)}")
            backbone_source = read[backbone]
        else:
            backbone_source = _read_source(backbone)
        settings = _backbone_settings(backbone_source, read)
        if "output_stride" not in kwargs:
            strides = {head: int(r.config.get("output_stride", 32)) for head, r in read.items() if r.config is not None}
            if len(set(strides.values())) > 1:
                named = ", ".join(f"{head} {stride} ({read[head].name})" for head, stride in strides.items())
                raise ValueError(f"the head sources were trained at different output strides: {named}; pass "
                                 "output_stride=32 or 16 (and strict_output_stride=False to take the other heads anyway)")
            settings["output_stride"] = next(iter(strides.values()), 32)
        settings.update(kwargs)
        model = cls(options, **{k: v for k, v in settings.items() if k != "frozen"})
        if backbone_source is not None:
            model.load_backbone(backbone_source)
        for head, source in read.items():
            model.load_head(head, source, strict_output_stride=strict_output_stride)
        return model.freeze(*settings.get("frozen", ()))


# ---------------------------------------------------------------------------------------------- sources
class _Source(NamedTuple):
    """A weight source, read once: its name for messages, what to load (a file or a state dict), the model
    configuration and class it records (``None`` when it does not say)."""

    name: str
    loadable: Any
    config: dict[str, Any] | None
    model_class: str | None


def _read_source(source: Source | _Source) -> _Source:
    if isinstance(source, _Source):
        return source
    if isinstance(source, nn.Module):
        return _Source(f"the {type(source).__name__} passed in", source.state_dict(),
                       dict(getattr(source, "config", {})) or None, type(source).__name__)
    if isinstance(source, Mapping):
        return _Source("the state dict passed in", dict(source), None, None)
    info = describe_weights(source)  # files, checkpoints, releases and weight names (resolved to the cached file)
    return _Source(str(source), info.source, info.model_config, info.model_class)


def _state_dict(source: _Source) -> dict[str, Tensor]:
    loadable = source.loadable
    return dict(loadable) if isinstance(loadable, Mapping) else backbones.read_state_dict(loadable)


def _backbone_settings(backbone: _Source | None, heads: Mapping[str, _Source]) -> dict[str, Any]:
    """Constructor arguments from the configuration of the backbone's source (or, for a file without one, from
    its record: normalisation, padding, rounding), with ``width_mult`` from a head source if it does not say."""
    settings: dict[str, Any] = {}
    if backbone is not None and backbone.config is not None:
        settings = {k: backbone.config[k] for k in BACKBONE_ARGS if k in backbone.config and k != "output_stride"}
    elif backbone is not None and not isinstance(backbone.loadable, Mapping):
        settings = weights_settings(backbone.loadable)
    if "width_mult" not in settings:
        widths = [source.config["width_mult"] for source in heads.values() if "width_mult" in (source.config or {})]
        if widths:
            settings["width_mult"] = widths[0]
    return settings


def _load_part(module: nn.Module, loadable: Any, name: str, what: str) -> backbones.LoadReport:
    """Load the tensors of ``loadable`` (a file or a state dict) that belong to ``module`` (a backbone or a
    head branch, keys as in the single-task models); the file's other parts are ignored. All or nothing."""
    before = {k: v.clone() for k, v in module.state_dict().items()}
    try:
        report = backbones.load_weights(module, loadable, strict=False)
    except WeightsError as err:
        raise WeightsError(f"{name} has no {what} of this model: {err}") from err
    # an auxiliary head the source lacks (the TF DeepLab release has none) starts fresh, as in transfer.load_pretrained
    missing = [k for k in report.missing if not k.startswith("aux_head.")]
    if missing or report.mismatched:
        module.load_state_dict(before)
        lines = [f"shape mismatch: {m}" for m in report.mismatched[:12]] + [f"missing from the source: {m}"
                                                                            for m in missing[:12]]
        raise WeightsError(f"{name} does not fit {what} of this model (a source of another width or "
                           "configuration?); nothing was loaded:\n  " + "\n  ".join(lines))
    return report


def multitask_mobilenet_v2(
    *,
    heads: Sequence[str] | Mapping[str, Mapping[str, Any] | None] = HEADS,
    width_mult: float = 1.0,
    output_stride: int = 32,
    weights: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    padding: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalization: str | None = None,
    grayscale: bool | None = None,
    **kwargs: Any,
) -> MultiTaskMobileNetV2:
    """Build a :class:`MultiTaskMobileNetV2`, optionally loading weights.

    Args:
        weights: a whole joint-model file (this project's checkpoint, state dict or safetensors file).
        backbone_weights: ImageNet weights or any single-task file for the backbone (see
            :meth:`MultiTaskMobileNetV2.load_backbone`); its heads are ignored.
        padding, mean, std, normalization, grayscale: ``None`` = what the weights say, else ImageNet's
            normalisation and symmetric padding.
        kwargs: the other :class:`MultiTaskMobileNetV2` arguments.

    Example::

        model = multitask_mobilenet_v2(heads={"detection": {"num_classes": 20}, "segmentation": {"num_classes": 21}},
                                       backbone_weights="imagenet")
    """
    if weights is not None and backbone_weights is not None:
        raise ValueError("pass either weights (the whole model) or backbone_weights (its backbone), not both")
    settings = weights_settings(weights if weights is not None else backbone_weights, padding=padding, mean=mean,
                                std=std, normalization=normalization, grayscale=grayscale, **kwargs)
    model = MultiTaskMobileNetV2(heads, width_mult=width_mult, output_stride=output_stride, **settings)
    if backbone_weights is not None:
        model.load_backbone(resolve_weights(backbone_weights))
    if weights is not None:
        backbones.load_weights(model, resolve_weights(weights))
    return model
