"""Dataset-scale queries: the archive index of per-organ statistics and an expression engine."""

from typing import TYPE_CHECKING

from medmask_store.lazy import lazy_exports

if TYPE_CHECKING:
    from medmask_store.query.expression import evaluate_query
    from medmask_store.query.index import ORGAN_FIELDS, ArchiveIndex

__all__ = ["ORGAN_FIELDS", "ArchiveIndex", "evaluate_query"]

# Imported on first use: NumPy and the index codecs, which only queries and statistics pay for.
__getattr__, __dir__ = lazy_exports(__name__, {
    "ORGAN_FIELDS": "medmask_store.query.index",
    "ArchiveIndex": "medmask_store.query.index",
    "evaluate_query": "medmask_store.query.expression",
})
