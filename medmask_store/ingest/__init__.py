"""Import of whole datasets: cases read and encoded in worker processes, resumable, one bad case reported."""

from medmask_store.ingest.run import CaseOutcome, ImportPlan, ImportReport, import_cases, plan_import

__all__ = ["CaseOutcome", "ImportPlan", "ImportReport", "import_cases", "plan_import"]
