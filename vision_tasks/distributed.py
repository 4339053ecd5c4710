"""DDP that does not wait half an hour for a rank that stopped, and says which rank it was.

A rank that hangs (a stuck DataLoader worker, a deadlocked file system, a stopped process) leaves the
other ranks waiting in their next collective until the process group's timeout, 30 minutes by default,
and then they fail with gloo's or NCCL's ``Timed out waiting ...``, which names no rank.
:class:`WatchedDDPStrategy` is Lightning's :class:`~pytorch_lightning.strategies.DDPStrategy` with

- ``timeout_s``: the process-group timeout in seconds, by default short on CPU (gloo) and torch's own on
  GPUs (see :data:`CPU_TIMEOUT_S`);
- a heartbeat: each rank writes where it is (step, phase, time) to ``<default_root_dir>/.ranks/rank<N>.json``
  as it starts a training or validation step, its backward pass, and when it goes for its next batch; when a
  collective times out, the rank that reports it reads them and logs which rank stopped answering, where,
  and since when, then ends the ranks it started (a hung rank would otherwise outlive the job).

A rank that is killed already ends the others within seconds (Lightning's launcher and torch's
collectives notice the closed connection); that is unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy

from .files import atomic_write

__all__ = ["CPU_TIMEOUT_S", "WatchedDDPStrategy", "describe_stalled_ranks"]

log = logging.getLogger(__name__)

# The process-group timeout of CPU runs: long enough for what one rank does while the others wait in a
# barrier (saving a checkpoint, COCO evaluation of a large val split), far shorter than torch's 30 minutes.
# GPU runs keep torch's default (10 minutes for NCCL), where one rank may compile or cache for longer.
CPU_TIMEOUT_S = 180.0

# Where a rank can be, in the order a training step goes through them.
_PHASES = ("in its training step", "in its backward pass", "after its backward pass (optimizer step, next batch)",
           "in a validation step")

HEARTBEAT_DIR = ".ranks"


class WatchedDDPStrategy(DDPStrategy):
    """:class:`~pytorch_lightning.strategies.DDPStrategy` with a timeout in seconds and a rank heartbeat.

    Args:
        timeout_s: process-group timeout: how long a rank waits in a collective (gradient all-reduce,
            barrier, metric sync) for the others before it fails. ``None``: :data:`CPU_TIMEOUT_S` on CPU,
            torch's default on GPUs (``trainer.strategy.timeout_s`` in ``configs/trainer/ddp.yaml``).
        **kwargs: of :class:`~pytorch_lightning.strategies.DDPStrategy` (``find_unused_parameters``, ...).
    """

    def __init__(self, timeout_s: float | None = None, **kwargs: Any) -> None:
        if "timeout" in kwargs:
            raise ValueError("give the process-group timeout as timeout_s (seconds), not timeout")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"trainer.strategy.timeout_s must be a positive number of seconds, got {timeout_s!r}")
        super().__init__(**kwargs)
        self.timeout_s = timeout_s
        self._heartbeat_dir: Path | None = None

    def setup_environment(self) -> None:
        # The accelerator is known now (it is not when the strategy is constructed from a config).
        on_gpu = self.root_device.type == "cuda"
        seconds = self.timeout_s if self.timeout_s is not None else (None if on_gpu else CPU_TIMEOUT_S)
        if seconds is not None:
            self._timeout = timedelta(seconds=float(seconds))
        super().setup_environment()

    @property
    def timeout_seconds(self) -> float:
        """The process-group timeout this run uses, in seconds."""
        return self._timeout.total_seconds() if self._timeout is not None else float("nan")

    def setup(self, trainer: pl.Trainer) -> None:
        self._heartbeat_dir = Path(trainer.default_root_dir) / HEARTBEAT_DIR
        self._heartbeat_dir.mkdir(parents=True, exist_ok=True)
        super().setup(trainer)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        self._beat(_PHASES[0])
        return super().training_step(*args, **kwargs)

    def pre_backward(self, closure_loss: torch.Tensor) -> None:
        self._beat(_PHASES[1])
        super().pre_backward(closure_loss)

    def backward(self, closure_loss: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().backward(closure_loss, *args, **kwargs)
        self._beat(_PHASES[2])
        return loss

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        self._beat(_PHASES[3])
        return super().validation_step(*args, **kwargs)

    def _beat(self, phase: str) -> None:
        if self._heartbeat_dir is None:
            return
        trainer = self.lightning_module.trainer if self.lightning_module is not None else None
        record = {
            "rank": self.global_rank, "pid": os.getpid(), "host": socket.gethostname(), "phase": phase,
            "step": trainer.global_step if trainer is not None else -1,
            "epoch": trainer.current_epoch if trainer is not None else -1, "time": time.time(),
        }
        try:
            # several times a step: no fsync (a heartbeat need not survive a power loss)
            atomic_write(self._heartbeat_dir / f"rank{self.global_rank}.json", json.dumps(record), durable=False)
        except OSError:  # a heartbeat is a diagnosis aid: never the reason a run fails
            pass

    def on_exception(self, exception: BaseException) -> None:
        super().on_exception(exception)
        if not _is_timeout(exception):
            return
        if self._heartbeat_dir is None:  # before setup(): the ranks were still meeting (rendezvous)
            message = (
                f"rank {self.global_rank}: the {self.world_size} ranks did not all join the process group within "
                f"{self.timeout_seconds:.0f} s (trainer.strategy.timeout_s); a rank that starts slowly (imports, "
                "reading the data on a busy machine) needs a longer timeout, a rank that failed to start says why "
                "in its own output."
            )
        else:
            stalled = describe_stalled_ranks(self._heartbeat_dir, self.world_size, me=self.global_rank)
            message = (
                f"rank {self.global_rank}: a collective timed out after {self.timeout_seconds:.0f} s "
                f"(trainer.strategy.timeout_s) waiting for the other ranks. {stalled} Look at that rank's own "
                "output (a DataLoader worker or a file system that hangs, a stopped process: py-spy dump --pid PID "
                "shows where)."
            )
        log.error(message)
        self._end_local_ranks()
        if exception.args and isinstance(exception.args[0], str):
            exception.args = (f"{exception.args[0]}\n\n{message}", *exception.args[1:])

    def _end_local_ranks(self) -> None:
        """Kill the ranks this process started (Lightning's launcher), so that a hung one does not outlive the job.

        SIGKILL, because a rank that hangs may never run a SIGTERM handler (Lightning's only sets a flag).
        """
        launcher = self._launcher
        if launcher is not None and getattr(launcher, "procs", None):
            log.error("rank %d: ending the ranks it started (pids %s)", self.global_rank,
                      ", ".join(str(proc.pid) for proc in launcher.procs))
            launcher.kill(signal.SIGKILL)

    def teardown(self) -> None:
        if self._heartbeat_dir is not None and self.global_rank == 0:
            for path in self._heartbeat_dir.glob("rank*.json"):
                path.unlink(missing_ok=True)
            try:
                self._heartbeat_dir.rmdir()
            except OSError:
                pass
        super().teardown()


def _is_timeout(exception: BaseException) -> bool:
    text = str(exception).lower()
    backend_error = getattr(torch.distributed, "DistBackendError", ())
    return "timed out" in text or "timeout" in text or (bool(backend_error) and isinstance(exception, backend_error))


def describe_stalled_ranks(heartbeat_dir: Path | None, world_size: int, *, me: int = -1,
                           now: float | None = None) -> str:
    """One sentence naming the rank(s) that fell behind, from their heartbeats in ``heartbeat_dir``.

    A rank that fell behind is one at an earlier step or phase than the most advanced rank; when all
    report the same place, the one heard from least recently. Ranks without a heartbeat file (on another
    node whose folder this one does not see, or stopped before their first step) are named as such.
    """
    if heartbeat_dir is None or not heartbeat_dir.is_dir():
        return "No heartbeats were found to say which rank stopped."
    now = time.time() if now is None else now
    beats: dict[int, dict[str, Any]] = {}
    for rank in range(world_size):
        try:
            beats[rank] = json.loads((heartbeat_dir / f"rank{rank}.json").read_text())
        except (OSError, ValueError):
            continue
    silent = [rank for rank in range(world_size) if rank not in beats]
    if not beats:
        return f"No rank wrote a heartbeat to {heartbeat_dir}."

    def place(beat: dict[str, Any]) -> tuple[int, int]:
        phase = beat.get("phase")
        return int(beat.get("step", -1)), _PHASES.index(phase) if phase in _PHASES else -1

    furthest = max(place(beat) for beat in beats.values())
    behind = [rank for rank, beat in beats.items() if place(beat) < furthest and rank != me]
    if not behind and not silent:
        oldest = min(beats, key=lambda rank: beats[rank].get("time", now))
        behind = [oldest] if oldest != me else []
    parts = []
    for rank in behind:
        beat = beats[rank]
        parts.append(
            f"rank {rank} (pid {beat.get('pid')} on {beat.get('host')}) stopped answering: last heard from "
            f"{now - float(beat.get('time', now)):.0f} s ago, at step {beat.get('step')} (epoch {beat.get('epoch')}), "
            f"{beat.get('phase')}"
        )
    if silent:
        parts.append(f"rank(s) {silent} never wrote a heartbeat to {heartbeat_dir} (stopped before their first "
                     "step, or on another node)")
    if not parts:
        return "Every rank reported the same place; none is known to have stopped."
    return "; ".join(parts) + "."
