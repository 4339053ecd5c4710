"""Writing files so that a kill, a full disk or a crash never leaves half of one in place of the previous one.

:func:`atomic_write` is the one way this package writes a file that someone reads later (checkpoints,
``metrics.json``, ``config.yaml``, plots, converted weights, cached annotations): the content goes to a
temporary file in the destination's own folder, is flushed and fsynced, and only then renamed over the
destination (``os.replace``, atomic within one filesystem). On any error, the previous file stays whole
and the temporary file is removed; a writer killed outright leaves a hidden ``.NAME.tmp-HOST-PID-XXXX``
that :func:`remove_stale_temporaries` recognises (its writer is gone) and removes.

Lightning's ``_atomic_save`` and fsspec's local transactions stage the file in the system temp folder
and ``shutil.move`` it: when the destination is on another filesystem, that is a copy over the
destination, and a kill or a full disk during the copy truncates the good file. Hence this module.

Example::

    atomic_write(run_dir / "metrics.json", json.dumps(metrics))
    atomic_write(run_dir / "checkpoints" / "last.ckpt", lambda f: torch.save(checkpoint, f))
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Union

__all__ = ["atomic_write", "remove_stale_temporaries", "is_temporary"]

Content = Union[bytes, str, Callable[[BinaryIO], object]]

_MARK = ".tmp-"
_HOST = socket.gethostname().replace("-", "_")  # '-' separates the name's fields


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}{_MARK}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: str | os.PathLike, content: Content, *, encoding: str = "utf-8", durable: bool = True) -> Path:
    """Write ``content`` to ``path`` completely or not at all; returns ``path``.

    ``content`` is bytes, text (encoded with ``encoding``) or a function that writes into the binary
    file object it is given (``lambda f: torch.save(obj, f)``, ``lambda f: image.save(f, format="PNG")``).
    Readers see the previous file or the whole new one, never a part; if writing, flushing or syncing
    fails (a full disk, an interrupt), the error is raised and the previous file is untouched.
    ``durable=False`` skips the two fsyncs (file and folder): still all or nothing for readers, but a power
    loss may lose the write; for files rewritten many times a second (heartbeats).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        # open(..., "xb") rather than tempfile.mkstemp: mkstemp creates the file with mode 0600, and the
        # published file would then be unreadable to the group; "x" (O_EXCL) gives 0666 minus the umask
        with open(tmp, "xb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode(encoding) if isinstance(content, str) else content)
            f.flush()
            if durable:
                os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)  # the rename itself survives a power loss
    return path


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and Windows) do not sync folders
        pass
    finally:
        os.close(fd)


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_write`."""
    return _parse(path) is not None


def _parse(path: Path) -> tuple[str, int] | None:
    name = path.name
    if not name.startswith(".") or _MARK not in name:
        return None
    fields = name.rsplit(_MARK, 1)[1].split("-")
    if len(fields) != 3 or not fields[1].isdigit():
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporary files that killed writers of :func:`atomic_write` left in ``folder`` (only those
    of ``name`` when given): those written on this host by a process that no longer runs. Returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.glob(f".{name or '*'}{_MARK}*"):
        parsed = _parse(path)
        if parsed is not None and parsed[0] == _HOST and not _alive(parsed[1]):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
