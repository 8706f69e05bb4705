"""Import of whole datasets: cases read and encoded in worker processes (local, or a Dask cluster's), resumable,
one bad case reported."""

from typing import TYPE_CHECKING

from medmask_store.lazy import lazy_exports

if TYPE_CHECKING:
    from medmask_store.ingest.run import CaseOutcome, ImportPlan, ImportReport, import_cases, plan_import

__all__ = ["CaseOutcome", "ImportPlan", "ImportReport", "import_cases", "plan_import"]

# Imported on first use, as in every package of medmask_store (see medmask_store.lazy).
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(__all__, "medmask_store.ingest.run"))
