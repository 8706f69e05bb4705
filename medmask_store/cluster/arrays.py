"""A stored case as a lazy ``dask.array``: one block per stored chunk, each reading only its chunks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from medmask_store.cluster.client import require

if TYPE_CHECKING:
    import dask.array as da

    from medmask_store.storage.case import Case


class CaseVolume:
    """A case's label volume (``organ=None``) or one organ's boolean mask, as an array for
    :func:`dask.array.from_array`: ``shape``, ``dtype``, ``chunks`` (the stored chunks) and basic
    indexing that decodes only the chunks a selection touches (as ``case.labels`` / ``case.organ``).

    Pickles as its case (the archive's path and the case id) and organ name, never voxels: a
    worker process reopens the archive (opened with mode ``"r"``) and reads what its blocks need.
    """

    def __init__(self, case: Case, organ: str | None = None) -> None:
        self.case = case
        self.organ = organ
        self._view = case.labels if organ is None else case.organ(organ)  # an unknown organ: OrganNotFound
        self.shape, self.dtype, self.chunks = self._view.shape, self._view.dtype, self._view.chunks

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, selection: Any) -> np.ndarray:
        return self._view[selection]

    def __reduce__(self) -> tuple[Any, ...]:
        return CaseVolume, (self.case, self.organ)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        """What the voxels depend on: the case (its arrays' manifests digest their bytes), its mapping and layers."""
        info = self.case.info
        return self.case.where, self.organ, dict(info.arrays or {}), info.mapping, info.layer_origins

    def __repr__(self) -> str:
        return f"<CaseVolume {self.case.case_id!r} {self.organ or 'labels'} shape={self.shape} chunks={self.chunks}>"


def case_to_dask(case: Case, organ: str | None = None) -> da.Array:
    """The case's label volume (binary-layer organs painted over it, as :meth:`Case.read_labels`), or with
    ``organ`` its boolean mask (exact where organs overlap), as a lazy dask array chunked like the stored
    chunks. Computing a block reads only the stored chunks under it; tasks carry the case (archive path and
    case id), not voxels, so distributed workers need the archive opened with mode ``"r"``."""
    dask_array = require("dask.array")
    volume = CaseVolume(case, organ)
    meta = np.empty((0,) * volume.ndim, volume.dtype)  # so that dask reads nothing to learn the block type
    return dask_array.from_array(volume, chunks=volume.chunks, fancy=False, meta=meta)
