"""The case model: Space + label mapping + voxels, statistics and validation."""

from typing import TYPE_CHECKING

from medmask_store.lazy import lazy_exports

if TYPE_CHECKING:
    from medmask_store.model.attributes import CaseInfo
    from medmask_store.model.case_data import CaseData
    from medmask_store.model.stats import OrganStats

__all__ = ["CaseData", "CaseInfo", "OrganStats"]

# Imported on first use, so that importing one model module does not import them all.
__getattr__, __dir__ = lazy_exports(__name__, {
    "CaseData": "medmask_store.model.case_data",
    "CaseInfo": "medmask_store.model.attributes",
    "OrganStats": "medmask_store.model.stats",
})
