"""The case model: Space + label mapping + voxels, statistics and validation."""

from medmask_store.model.attributes import CaseInfo
from medmask_store.model.case_data import CaseData
from medmask_store.model.stats import OrganStats

__all__ = ["CaseData", "CaseInfo", "OrganStats"]
