"""Reading this project's Lightning checkpoints safely (``weights_only=True``) and rebuilding their models, and
writing them so that a failed save never costs the previous one (:class:`AtomicCheckpointIO`)."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import nn

import backbones

from .files import atomic_write
from .models import build_model
from .models.weights import CHECKPOINT_KEY, describe_checkpoint

__all__ = ["AtomicCheckpointIO", "CheckpointError", "checkpoint_progress", "non_finite_tensors",
           "read_checkpoint_meta", "model_from_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for the requested task, or that is refused a write."""


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """The names of the floating-point tensors of ``state`` that hold a NaN or an infinity."""
    names = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    # the largest magnitude of each tensor (a reduction, no copy) is finite iff all its values are; one sync
    device = state[names[0]].device
    peaks = torch.stack([torch.linalg.vector_norm(state[k].detach(), ord=math.inf).float().to(device) for k in names])
    finite = torch.isfinite(peaks).tolist()
    return [name for name, ok in zip(names, finite) if not ok]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose local saves are atomic and never hold non-finite weights.

    A checkpoint is written with :func:`vision_tasks.files.atomic_write` (a temporary file in the
    checkpoint's folder, flushed, fsynced, then renamed), so a kill or a full disk during a save leaves the
    previous ``last.ckpt`` whole; Lightning's own save stages the file in the system temp folder and copies
    it over the checkpoint when that is another filesystem. A checkpoint whose ``state_dict`` holds NaN or
    infinite values (a diverged run) is refused: the error names the file and the tensors, and the previous
    file stays. Remote paths (``s3://`` ...) go through Lightning's own save.

    Hydra: ``trainer.plugins`` of ``configs/trainer/``; LightningCLI: ``trainer.plugins`` of
    ``configs/lightning/*.yaml``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        bad = non_finite_tensors(checkpoint.get("state_dict") or {})
        if bad:
            raise CheckpointError(
                f"refusing to write {path}: the weights hold NaN or infinite values ({', '.join(bad[:5])}"
                f"{' ...' if len(bad) > 5 else ''}), so training diverged; {path} keeps its previous content"
            )
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_write(os.fspath(path), lambda f: torch.save(checkpoint, f))


def read_checkpoint_meta(path: str | Path, expected_task: str | None = None) -> dict[str, Any]:
    """The ``vision_tasks`` entry of a checkpoint (task, model class and config, class names).

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable, not one of this
    project's checkpoints, or (with ``expected_task``) a checkpoint of another task.
    """
    return _read(path, expected_task)[CHECKPOINT_KEY]


def checkpoint_progress(path: str | Path) -> tuple[int, int]:
    """``(epochs whose training is done, global step)`` of a Lightning training checkpoint."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return int(progress.get("processed", checkpoint.get("epoch", 0))), int(checkpoint.get("global_step", 0))


def _read(path: str | Path, expected_task: str | None) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused, it holds Python objects that weights_only=True does not load, or is not a PyTorch file "
            f"at all ({err}); expected a checkpoint written by vision_tasks training (RUN/checkpoints/last.ckpt)") from err
    except Exception as err:  # noqa: BLE001  # torch.load on arbitrary bytes raises almost anything (IndexError,
        # UnicodeDecodeError, ValueError ... from its unpickler): every failure to read is the file's fault
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, truncated or of another format ({type(err).__name__}: {err}); "
            "expected a checkpoint written by vision_tasks training (RUN/checkpoints/last.ckpt or best.ckpt)"
        ) from err
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
    # the model's tensors only: a task may keep parameters of its own (MultiTaskTask's learned loss weights)
    state = checkpoint.get("state_dict") or {}
    model_state = {k: v for k, v in state.items() if k.startswith("model.")}
    backbones.load_weights(model, model_state if model_state and len(model_state) < len(state) else path)
    return model, {**checkpoint[CHECKPOINT_KEY], "model_config": info.model_config}
