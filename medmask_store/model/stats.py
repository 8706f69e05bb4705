"""Per-organ statistics computed at write time from the organ's voxel indices."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from spacetransformer import Space

from medmask_store.model.geometry import lps_to_ras_point

BBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class OrganStats:
    """Statistics of one organ; ``bbox`` is ``((start, stop), ...)`` per axis, stop exclusive.

    ``centroid_lps_mm`` is in the Space's world frame, LPS (DICOM, ITK, Slicer); :attr:`centroid_ras_mm`
    is the same point in NIfTI's RAS (nibabel), x and y negated.
    """

    voxels: int
    volume_ml: float
    bbox: BBox | None
    centroid_voxel: tuple[float, float, float] | None
    centroid_lps_mm: tuple[float, float, float] | None
    touches_border: bool

    @classmethod
    def empty(cls) -> OrganStats:
        return cls(0, 0.0, None, None, None, False)

    @property
    def centroid_ras_mm(self) -> tuple[float, float, float] | None:
        """The world centroid in RAS (NIfTI, nibabel): :attr:`centroid_lps_mm` with x and y negated."""
        return lps_to_ras_point(self.centroid_lps_mm) if self.centroid_lps_mm else None

    @classmethod
    def from_flat_indices(cls, flat_indices: np.ndarray, space: Space) -> OrganStats:
        """Compute statistics from C-order flat indices into a volume of ``space.shape``."""
        return cls.from_coords(np.unravel_index(flat_indices, space.shape), space)  # type: ignore[arg-type]

    @classmethod
    def from_coords(cls, coords: tuple[np.ndarray, np.ndarray, np.ndarray], space: Space) -> OrganStats:
        """Compute statistics from the (i, j, k) coordinate arrays of the organ's voxels."""
        if coords[0].size == 0:
            return cls.empty()
        bbox = tuple((int(c.min()), int(c.max()) + 1) for c in coords)
        centroid = tuple(round(float(c.mean()), 3) for c in coords)
        return cls.from_summary(int(coords[0].size), bbox, centroid, space)  # type: ignore[arg-type]

    @classmethod
    def from_summary(
        cls, voxels: int, bbox: BBox, centroid_voxel: tuple[float, float, float], space: Space
    ) -> OrganStats:
        """Complete the stored statistics (count, box, centroid) with those the Space implies."""
        return cls.from_summaries([voxels], [bbox], [centroid_voxel], space)[0]

    @classmethod
    def from_summaries(
        cls, voxels: list[int], bboxes: list[BBox], centroids: list[tuple[float, float, float]], space: Space
    ) -> list[OrganStats]:
        """:meth:`from_summary` of several organs, with one world transform for all of them."""
        if not voxels:
            return []
        world = space.to_world_transform.apply_point(np.array(centroids, dtype=float).reshape(-1, 3))
        voxel_volume = np.prod(space.spacing)
        return [
            cls(
                voxels=count,
                volume_ml=round(float(count * voxel_volume / 1000.0), 6),
                bbox=bbox,
                centroid_voxel=centroid,
                centroid_lps_mm=tuple(round(float(c), 3) for c in centroid_lps),  # type: ignore[arg-type]
                touches_border=any(start == 0 or stop == size for (start, stop), size in zip(bbox, space.shape)),
            )
            for count, bbox, centroid, centroid_lps in zip(voxels, bboxes, centroids, world)
        ]

    def chunk_voxel_bounds(self, shape: tuple[int, ...], edge: int) -> np.ndarray:
        """The most voxels the organ can have in each chunk of an ``edge``³ grid over ``shape``: the chunk's
        overlap with the bounding box (0 outside it); a stored chunk-voxel count above it is corrupt."""
        overlaps = []
        for size, (start, stop) in zip(shape, self.bbox or ((0, 0),) * 3):
            lows = np.arange(-(-size // edge)) * edge
            overlaps.append(np.clip(np.minimum(lows + edge, stop) - np.maximum(lows, start), 0, None))
        return overlaps[0][:, None, None] * overlaps[1][None, :, None] * overlaps[2][None, None, :]

    def to_json(self) -> dict[str, Any]:
        """The statistics as JSON values, the world centroid in both frames (``centroid_lps_mm``, ``centroid_ras_mm``)."""
        fields = {key: _listify(value) for key, value in asdict(self).items()}
        return {**fields, "centroid_ras_mm": _listify(self.centroid_ras_mm)}


def stats_to_attributes(stats: dict[str, OrganStats]) -> dict[str, Any]:
    """Columns of what non-empty organs store; everything else follows from them and the Space."""
    present = {name: s for name, s in stats.items() if s.voxels}
    return {
        "organs": list(present),
        "voxels": [s.voxels for s in present.values()],
        "bbox": [[v for pair in s.bbox for v in pair] for s in present.values()],  # type: ignore[union-attr]
        "centroid_voxel": [list(s.centroid_voxel) for s in present.values()],  # type: ignore[arg-type]
    }


def stats_from_attributes(stored: dict[str, Any], organs: list[str], space: Space) -> dict[str, OrganStats]:
    """Statistics of every organ in ``organs`` (organs absent from ``stored`` are empty)."""
    bboxes = [tuple((int(b[i]), int(b[i + 1])) for i in (0, 2, 4)) for b in stored["bbox"]]
    centroids = [tuple(map(float, c)) for c in stored["centroid_voxel"]]
    present = OrganStats.from_summaries([int(v) for v in stored["voxels"]], bboxes, centroids, space)  # type: ignore[arg-type]
    return {**dict.fromkeys(organs, OrganStats.empty()), **dict(zip(stored["organs"], present))}


def _listify(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_listify(v) for v in value]
    return value
