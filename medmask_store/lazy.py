"""Lazy package exports (PEP 562): a package names its public objects, and imports each one's module on first use.

``import medmask_store`` then costs no NumPy, Zarr, HDF5 or pandas import, and the
command line starts fast; type checkers see the names through a ``TYPE_CHECKING``
block beside the package's ``__all__``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, origins: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose ``origins`` map each exported name to its module."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        if name not in origins:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(origins[name]), name)
        namespace[name] = value  # later look-ups find it without calling __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *origins})

    return __getattr__, __dir__
