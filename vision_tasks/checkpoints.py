"""Reading this project's Lightning checkpoints safely (``weights_only=True``) and rebuilding their models."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

import backbones

from .models import build_model
from .models.weights import CHECKPOINT_KEY, describe_checkpoint

__all__ = ["CheckpointError", "read_checkpoint_meta", "model_from_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for the requested task."""


def read_checkpoint_meta(path: str | Path, expected_task: str | None = None) -> dict[str, Any]:
    """The ``vision_tasks`` entry of a checkpoint (task, model class and config, class names).

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable, not one of this
    project's checkpoints, or (with ``expected_task``) a checkpoint of another task.
    """
    return _read(path, expected_task)[CHECKPOINT_KEY]


def _read(path: str | Path, expected_task: str | None) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refused, it holds Python objects that weights_only=True does not load ({err})") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    meta = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if meta is None:
        raise CheckpointError(
            f"{path} is not a checkpoint written by vision_tasks training (no '{CHECKPOINT_KEY}' entry); "
            "for a plain state dict such as torchvision's, pass weights=PATH instead of ckpt_path=PATH"
        )
    if expected_task is not None and meta.get("task") != expected_task:
        raise CheckpointError(f"{path} is a checkpoint of task {meta.get('task')!r}, but task={expected_task} was asked for")
    return checkpoint


def model_from_checkpoint(path: str | Path, expected_task: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the plain model saved in a checkpoint and load its weights (EMA weights when EMA was on).

    Returns the model and the checkpoint's ``vision_tasks`` entry. Checkpoints written before the models
    owned their normalisation get it from their data module's saved hyperparameters
    (:func:`vision_tasks.models.weights.describe_checkpoint`)."""
    checkpoint = _read(path, expected_task)
    info = describe_checkpoint(checkpoint, path)
    model = build_model(info.model_class, info.model_config)
    backbones.load_weights(model, path)
    return model, {**checkpoint[CHECKPOINT_KEY], "model_config": info.model_config}
