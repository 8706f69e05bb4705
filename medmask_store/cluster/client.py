"""The optional Dask libraries, imported where they are used, and the connection to a scheduler."""

from __future__ import annotations

import importlib
from contextlib import AbstractContextManager, nullcontext
from types import ModuleType
from typing import TYPE_CHECKING

from medmask_store.errors import MaskStoreError

if TYPE_CHECKING:
    from distributed import Client


class DaskNotInstalled(MaskStoreError, ImportError):
    """Dask or distributed is missing: they come with the extra ``dask``."""


class SchedulerUnreachable(MaskStoreError, OSError):
    """No Dask scheduler answers at the address given."""


def require(module: str) -> ModuleType:
    """Import ``module`` (``dask``, ``dask.array``, ``distributed``), or raise :class:`DaskNotInstalled` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DaskNotInstalled(f"{module} is not installed; Dask support needs: pip install 'medmask_store[dask]'") from exc


def connect(address: str | None) -> AbstractContextManager[Client | None]:
    """A ``distributed.Client`` of the scheduler at ``address`` (e.g. ``tcp://host:8786``), closed when the
    ``with`` block ends; None without an address (the work then runs in local processes)."""
    if address is None:
        return nullcontext()
    distributed = require("distributed")
    try:
        return distributed.Client(address)
    except OSError as exc:  # refused, unknown host, timed out
        raise SchedulerUnreachable(f"no Dask scheduler answers at {address}: {exc}") from exc
