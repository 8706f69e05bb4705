"""Functions mapped over cases by the tests: importable by name in Dask worker processes and by the CLI."""

from __future__ import annotations

import numpy as np

from medmask_store.storage.case import Case


def organ_voxels(case: Case) -> dict[str, int]:
    """Each organ's voxels, counted from its decoded mask (not the statistics)."""
    return {name: int(np.count_nonzero(case.read_organ(name))) for name in case.organs}


def liver_voxels(case: Case) -> int:
    """A scalar; fails with a KeyError-like OrganNotFound for a case without a liver."""
    return int(np.count_nonzero(case.read_organ("liver")))
