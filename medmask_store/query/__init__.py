"""Dataset-scale queries: the archive index of per-organ statistics and an expression engine."""

from medmask_store.query.expression import evaluate_query
from medmask_store.query.index import ORGAN_FIELDS, ArchiveIndex

__all__ = ["ORGAN_FIELDS", "ArchiveIndex", "evaluate_query"]
