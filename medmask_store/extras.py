"""Optional libraries, imported where they are used: a missing one is an error naming the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from medmask_store.errors import MaskStoreError


class ExtraNotInstalled(MaskStoreError, ImportError):
    """An optional library is missing; the message says which ``pip install "medmask_store[extra]"`` adds it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`ExtraNotInstalled`: "<purpose> needs <module>: pip install ...[<extra>]"."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExtraNotInstalled(
            f"{purpose} needs {module}, which is not installed: pip install 'medmask_store[{extra}]'"
        ) from exc
