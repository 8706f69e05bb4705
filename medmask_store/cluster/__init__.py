"""Dask (optional extra ``dask``): cases as lazy dask arrays, functions mapped over cases on a cluster.

Imports of the whole dataset run on a cluster too: ``import_cases(..., client=)``
in :mod:`medmask_store.ingest`, ``medmask-store import --scheduler``.
"""

from typing import TYPE_CHECKING

from medmask_store.lazy import lazy_exports

if TYPE_CHECKING:
    from medmask_store.cluster.arrays import CaseVolume, case_to_dask
    from medmask_store.cluster.client import DaskNotInstalled, SchedulerUnreachable, connect, require
    from medmask_store.cluster.mapping import map_cases

__all__ = ["CaseVolume", "DaskNotInstalled", "SchedulerUnreachable", "case_to_dask", "connect", "map_cases", "require"]

# Imported on first use, as in every package of medmask_store (see medmask_store.lazy).
__getattr__, __dir__ = lazy_exports(__name__, {
    "CaseVolume": "medmask_store.cluster.arrays",
    "DaskNotInstalled": "medmask_store.cluster.client",
    "SchedulerUnreachable": "medmask_store.cluster.client",
    "case_to_dask": "medmask_store.cluster.arrays",
    "connect": "medmask_store.cluster.client",
    "map_cases": "medmask_store.cluster.mapping",
    "require": "medmask_store.cluster.client",
})
