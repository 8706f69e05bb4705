"""Per-organ statistics computed at write time from the organ's voxel indices."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from spacetransformer import Space

BBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class OrganStats:
    """Statistics of one organ; ``bbox`` is ``((start, stop), ...)`` per axis, stop exclusive."""

    voxels: int
    volume_ml: float
    bbox: BBox | None
    centroid_voxel: tuple[float, float, float] | None
    centroid_mm: tuple[float, float, float] | None
    touches_border: bool

    @classmethod
    def empty(cls) -> OrganStats:
        return cls(0, 0.0, None, None, None, False)

    @classmethod
    def from_flat_indices(cls, flat_indices: np.ndarray, space: Space) -> OrganStats:
        """Compute statistics from C-order flat indices into a volume of ``space.shape``."""
        if flat_indices.size == 0:
            return cls.empty()
        coords = np.unravel_index(flat_indices, space.shape)
        bbox = tuple((int(c.min()), int(c.max()) + 1) for c in coords)
        centroid = np.array([c.mean() for c in coords])
        centroid_mm = space.to_world_transform.apply_point(centroid[None])[0]
        touches = any(start == 0 or stop == size for (start, stop), size in zip(bbox, space.shape))
        return cls(
            voxels=int(flat_indices.size),
            volume_ml=round(float(flat_indices.size * np.prod(space.spacing) / 1000.0), 6),
            bbox=bbox,  # type: ignore[arg-type]
            centroid_voxel=tuple(round(float(c), 3) for c in centroid),  # type: ignore[arg-type]
            centroid_mm=tuple(round(float(c), 3) for c in centroid_mm),  # type: ignore[arg-type]
            touches_border=touches,
        )

    def to_json(self) -> dict[str, Any]:
        return {key: _listify(value) for key, value in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OrganStats:
        def tup(value: Any) -> Any:
            return None if value is None else tuple(tup(v) if isinstance(v, list) else v for v in value)

        return cls(
            voxels=int(data["voxels"]),
            volume_ml=float(data["volume_ml"]),
            bbox=tup(data["bbox"]),
            centroid_voxel=tup(data["centroid_voxel"]),
            centroid_mm=tup(data["centroid_mm"]),
            touches_border=bool(data["touches_border"]),
        )


def _listify(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_listify(v) for v in value]
    return value
