"""The one error type the data readers raise for bad user data."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A dataset on disk is missing, malformed or unreadable; the message names the path and the reason.

    Readers raise it while scanning, before training starts, so that a bad file costs seconds rather
    than the hours of training that would run before reaching it.
    """
