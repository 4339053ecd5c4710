"""Starting a task model from pretrained weights whose classes may not be the data's.

Everything but the class layers (``model.CLASS_LAYERS``: the logits of the classifier, of DeepLab's
head and auxiliary head, SSDLite's class predictors) must fit; those follow the classes:

- the weights' classes are the data's (same names, or same COCO category ids, in the same order): all
  kept;
- every class of the data is one of the weights' (fine-tuning the COCO SSDLite release on person / car /
  dog, the VOC DeepLab release on background / cat / dog): the rows of the data's classes are taken
  from the weights' class layers (and SSDLite's background slot), so the model starts out predicting
  them as the release did;
- otherwise (ImageNet weights for your own classes): the class layers start afresh.

torchvision and timm reset the classifier for a new task (``model.reset_classifier(n)``,
``fc = nn.Linear(...)``); keeping the rows of shared classes is what TF's detection API does with
``fine_tune_checkpoint_type: detection`` when the label maps agree, and costs nothing here.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

import backbones
from backbones.weights import canonical_key

from .weights import WeightsInfo, describe_weights

log = logging.getLogger(__name__)

__all__ = ["TransferReport", "load_pretrained", "match_classes", "match_labels", "weights_class_keys"]

HEAD_CHOICES = ("auto", "keep", "reinit")


def match_labels(keys: Sequence[Hashable], other_keys: Sequence[Hashable]) -> list[int]:
    """For each of ``keys`` (category ids or class names, in label order), the index of the same key in
    ``other_keys``, or -1 where it has none.

    Raises:
        ValueError: the two have nothing in common, or ``other_keys`` repeats one of ``keys`` (it cannot be mapped
            then; repeats of other keys, such as the "N/A" of the ids a label map leaves out, do not matter).
    """
    index: dict[Hashable, int] = {}
    repeated = set()
    for label, key in enumerate(other_keys):
        if key in index:
            repeated.add(key)
        index.setdefault(key, label)
    if repeated & set(keys):
        raise ValueError(f"the labels repeat keys, so they cannot be mapped by them: {sorted(map(str, repeated & set(keys)))}")
    mapping = [index.get(key, -1) for key in keys]
    if all(label < 0 for label in mapping):
        raise ValueError(f"the labels {list(keys)[:5]} ... and {list(other_keys)[:5]} ... have no category in common")
    return mapping


def weights_class_keys(info: WeightsInfo) -> tuple[list[Hashable] | None, list[Hashable] | None]:
    """The COCO category ids (detectors of the TF detection API, our detection checkpoints) and the class
    names of the labels of a weight file, each ``None`` when its record does not say."""
    ids = (info.model_config or {}).get("category_ids")
    return (list(ids) if ids else None), (list(info.class_names) if info.class_names else None)


@dataclass
class TransferReport:
    """What :func:`load_pretrained` did with the class layers.

    Attributes:
        kept: the data's classes whose rows were taken from the weights (all of them when ``same``).
        fresh: the class layers (parameter prefixes) that start from their fresh initialisation.
        same: the weights' classes are the data's.
        by: what the classes were matched by (``"category id"``, ``"class name"`` or ``""``).
        not_in_file: other head keys the file lacks (e.g. DeepLab's auxiliary head), freshly initialised.
    """

    kept: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    same: bool = False
    by: str = ""
    not_in_file: list[str] = field(default_factory=list)


def match_classes(ids: Sequence[int] | None, names: Sequence[str] | None, other_ids: Sequence[int] | None,
                  other_names: Sequence[str] | None) -> tuple[list[int] | None, str]:
    """For each of a set of labels (``ids`` / ``names``), the index of the same class among the other labels, -1
    where there is none, and what they were matched by: ``(mapping, "category id" | "class name")``, or
    ``(None, "")`` when nothing relates them.

    Category ids decide when both sides have them and the classes they pair up have the same names wherever
    both are named: COCO's ids are shared by every COCO-format file, but the ids 1..C that formats without ids
    (YOLO, VOC) number their classes with are not COCO's, and their names tell. Otherwise the names decide.
    """
    if ids and other_ids:
        try:
            mapping = match_labels(list(ids), list(other_ids))
        except ValueError:
            mapping = None
        if mapping is not None and (not names or not other_names or all(
                str(names[i]).lower() == str(other_names[j]).lower() for i, j in enumerate(mapping) if j >= 0)):
            return mapping, "category id"
    if names and other_names:
        try:
            return match_labels(list(names), list(other_names)), "class name"
        except ValueError:
            return None, "class name"
    return None, ""


def _correspondence(info: WeightsInfo, class_names: Sequence[str] | None, category_ids: Sequence[int] | None
                    ) -> tuple[list[int] | None, str]:
    """For each data class, the weights' label (:func:`match_classes`)."""
    file_ids, file_names = weights_class_keys(info)
    return match_classes(category_ids, class_names, file_ids, file_names)


def _copy_class_rows(target: torch.Tensor, source: torch.Tensor, rows: list[int], num_source: int,
                     offset: int) -> bool:
    """Copy ``source``'s rows of the classes ``rows`` (one source label per target class) into ``target``.

    Both stack ``groups`` blocks of ``offset + classes`` rows (SSDLite: one block per anchor, with the
    background slot first). Returns False, copying nothing, when the shapes do not follow that layout.
    """
    per_target, per_source = offset + len(rows), offset + num_source
    groups = target.shape[0] // per_target
    if groups * per_target != target.shape[0] or groups * per_source != source.shape[0] or target.shape[1:] != source.shape[1:]:
        return False
    index = torch.tensor([g * per_source + s for g in range(groups)
                          for s in [*range(offset), *(offset + r for r in rows)]])
    target.copy_(source[index])
    return True


def load_pretrained(model: nn.Module, weights: str, class_names: Sequence[str] | None = None,
                    category_ids: Sequence[int] | None = None, head: str = "auto") -> TransferReport:
    """Load ``weights`` (a file or a weight name) into ``model`` to train it on data with ``class_names``
    (and, for COCO-style detection data, ``category_ids``); the class layers follow the module docstring.

    ``head``: ``auto`` as in the module docstring; ``keep`` refuses weights whose classes are not the data's;
    ``reinit`` always starts the class layers afresh.

    Raises:
        ValueError: ``head`` is not one of ``auto``, ``keep``, ``reinit``.
        backbones.WeightsError: a layer outside the head does not fit; ``head=keep`` and other classes.
    """
    if head not in HEAD_CHOICES:
        raise ValueError(f"weights_head must be one of {', '.join(HEAD_CHOICES)}, got {head!r}")
    info = describe_weights(weights)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = backbones.load_weights(model, info.source, strict=False)
    problems = [k for k in loaded.missing + loaded.unexpected + loaded.mismatched
                if not k.startswith(("head.", "aux_head."))]
    if problems:
        raise backbones.WeightsError(f"weights={weights} does not fit the model:\n  " + "\n  ".join(problems[:12]))
    class_prefixes = tuple(getattr(model, "CLASS_LAYERS", ()))
    class_keys = [k for k in fresh if k.startswith(class_prefixes)]
    not_loaded = {m.split(":")[0] for m in loaded.mismatched} | set(loaded.missing)

    rows, by = _correspondence(info, class_names, category_ids)
    file_classes = len(weights_class_keys(info)[0] or weights_class_keys(info)[1] or [])
    same = rows is not None and rows == list(range(len(rows))) and file_classes == len(rows)
    report = TransferReport(same=same, by=by)
    if head == "keep" and (not same or any(k in not_loaded for k in class_keys)):
        raise backbones.WeightsError(
            f"weights_head=keep, but the classes of weights={weights} ({_names(weights_class_keys(info)[1])}) are not "
            f"the data's ({_names(class_names)}); use weights_head=auto to re-initialise the class layers")

    state = model.state_dict()
    subset = head == "auto" and not same and rows is not None and min(rows) >= 0
    file_state = backbones.read_state_dict(info.source) if subset else {}
    file_by_key = {canonical_key(k): v for k, v in file_state.items()}
    offset = int(getattr(model, "CLASS_OFFSET", 0))
    missing = set(loaded.missing)  # never loaded, so still fresh: e.g. DeepLab's auxiliary head, absent from releases
    with torch.no_grad():
        for key in class_keys:
            if key in missing or (same and head != "reinit" and key not in not_loaded):
                continue
            source = file_by_key.get(canonical_key(key))
            if subset and source is not None and _copy_class_rows(state[key], source, rows, file_classes, offset):
                continue
            state[key].copy_(fresh[key])
            report.fresh.append(key.rsplit(".", 1)[0])
    report.fresh = sorted(set(report.fresh))
    if (same and head != "reinit") or (subset and not report.fresh):
        report.kept = list(class_names or [])
    report.not_in_file = sorted({k.rsplit(".", 1)[0] for k in missing})
    _log(report, weights, info, class_names, head)
    return report


def _log(report: TransferReport, weights: str, info: WeightsInfo, class_names: Sequence[str] | None, head: str) -> None:
    also = f"; not in the file, so also fresh: {', '.join(report.not_in_file)}" if report.not_in_file else ""
    if not report.fresh:
        what = "the same classes" if report.same else f"the {len(report.kept)} data classes, matched by {report.by}"
        log.info("weights=%s: every layer loaded, the class layers keep the rows of %s (%s)%s", weights, what,
                 _names(report.kept), also)
        return
    why = ("weights_head=reinit" if head == "reinit" else
           f"the weights' classes ({_names(weights_class_keys(info)[1])}) do not include all the data's "
           f"({_names(class_names)})")
    log.warning("weights=%s: loaded all but the class layers %s, which start afresh (%s)%s", weights,
                ", ".join(report.fresh), why, also)


def _names(names: Sequence[str] | None, limit: int = 6) -> str:
    if not names:
        return "unknown"
    names = [str(n) for n in names]
    return ", ".join(names[:limit]) + (f" ... ({len(names)})" if len(names) > limit else "")
