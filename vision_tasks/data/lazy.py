"""Lazy re-exports (PEP 562) for the packages of :mod:`vision_tasks.data`.

A package lists ``name -> submodule`` and re-exports each name on first access, so that importing
the package (or one of its submodules, which imports the package first) loads no other submodule:
``import vision_tasks.data.modules.classification`` does not pull in the COCO or mask readers.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``, which re-exports ``exports``.

    ``exports`` maps each public name to the module that defines it, relative to ``package``: a
    submodule name (``"common"``), or a relative name with leading dots (``"..common"``: a module of
    the parent package). Usage, in the package's ``__init__``::

        _EXPORTS = {"load_rgb": "common", ...}
        __all__ = list(_EXPORTS)
        __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
    """

    def __getattr__(name: str) -> Any:
        try:
            submodule = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        relative = submodule if submodule.startswith(".") else f".{submodule}"
        value = getattr(importlib.import_module(relative, package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
