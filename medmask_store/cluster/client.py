"""The optional Dask libraries, imported where they are used, and the connection to a scheduler."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from types import ModuleType
from typing import TYPE_CHECKING

from medmask_store.errors import MaskStoreError
from medmask_store.extras import ExtraNotInstalled
from medmask_store.extras import require as require_extra

if TYPE_CHECKING:
    from distributed import Client


class DaskNotInstalled(ExtraNotInstalled):
    """Dask or distributed is missing: they come with the extra ``dask``."""


class SchedulerUnreachable(MaskStoreError, OSError):
    """No Dask scheduler answers at the address given."""


def require(module: str) -> ModuleType:
    """Import ``module`` (``dask``, ``dask.array``, ``distributed``), or raise :class:`DaskNotInstalled` naming the extra."""
    try:
        return require_extra(module, "dask", "Dask support")
    except ExtraNotInstalled as exc:
        raise DaskNotInstalled(str(exc)) from exc.__cause__


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
