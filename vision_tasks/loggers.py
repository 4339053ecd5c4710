"""Loggers of a training run whose records survive resuming it.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its writer starts in a directory that holds one,
so resuming a run in its own directory erased the rows of its first part, and ``curves.png`` then
showed the resumed part only. :class:`ResumableCSVLogger` keeps them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from .files import atomic_write

__all__ = ["ResumableCSVLogger"]


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` that continues an existing ``metrics.csv`` instead of deleting it.

    A resumed run appends its rows to those of the run it continues, so the file and the curves drawn
    from it cover the whole run. Rows of the earlier part from the first step the resumed run logs on
    (a run killed after its last checkpoint logged steps that the resumed run does again) are replaced
    by the new ones, and a last row cut short by a kill is dropped. Header changes are rewritten
    atomically (:func:`vision_tasks.files.atomic_write`). Same arguments as ``CSVLogger``; local
    directories only.
    """

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        if not isinstance(self._fs, LocalFileSystem):
            return super().experiment
        Path(self.root_dir).mkdir(parents=True, exist_ok=True)
        self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment


class _ContinuingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Lightning removes metrics.csv here; read it instead, and keep its columns
        self._previous: list[dict[str, Any]] | None = None
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as f:
            lines = f.read().splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]  # a row cut short by a kill
        reader = csv.DictReader(lines)
        self._previous = [row for row in reader if row.get("step")]
        self.metrics_keys = sorted(reader.fieldnames or [])

    def save(self) -> None:
        if self.metrics and self._previous is not None:
            first_step = min(int(m["step"]) for m in self.metrics)
            kept = [row for row in self._previous if int(float(row["step"])) < first_step]
            self._record_new_keys()
            self._write_all(kept)
            self._previous = None
        super().save()

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        self._write_all(rows, fieldnames)

    def _write_all(self, rows: list[dict[str, Any]], fieldnames: list[str] | None = None) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fieldnames or self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.metrics_file_path, text.getvalue())
