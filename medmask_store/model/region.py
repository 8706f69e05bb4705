"""Regions of a case: voxel boxes, and world-millimetre boxes converted through the Space.

World boxes are in the Space's frame, LPS (DICOM, ITK, Slicer); :meth:`WorldBox.from_ras` takes
the corners in NIfTI's RAS (nibabel), whose x and y are negated.

A world box selects the voxels whose **centres** lie inside it. For an oblique
volume the box is mapped to index space and its voxel-aligned bounding box is
taken. Boxes partly outside the volume are clipped to it; a box containing no
voxel centre of the volume is an error.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from spacetransformer import Space

from medmask_store.errors import InvalidRegion
from medmask_store.model.geometry import lps_to_ras_point

VoxelBox = tuple[slice, slice, slice]
# Tolerance so that a box edge exactly on a voxel centre includes that voxel.
CENTRE_ATOL = 1e-6


@dataclass(frozen=True)
class WorldBox:
    """An axis-aligned box in LPS world millimetres, given by two opposite corners (x, y, z) in either order."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    @classmethod
    def from_ras(cls, lo: tuple[float, float, float], hi: tuple[float, float, float]) -> WorldBox:
        """The box with opposite corners ``lo`` and ``hi`` given in RAS millimetres (NIfTI, nibabel)."""
        try:
            corners = lps_to_ras_point(lo), lps_to_ras_point(hi)
        except (TypeError, ValueError) as exc:  # not 3 numbers: unpacking or negation fails
            raise InvalidRegion(
                f"WorldBox.from_ras takes two corners of 3 numbers (x, y, z in RAS mm), got {lo!r} and {hi!r}"
            ) from exc
        return cls(*corners)

    def __post_init__(self) -> None:
        for name in ("lo", "hi"):
            corner = getattr(self, name)
            if len(corner) != 3 or not all(isinstance(v, (int, float, np.number)) for v in corner):
                raise InvalidRegion(f"WorldBox.{name} must be 3 numbers (x, y, z in LPS mm), got {corner!r}")
            if not np.isfinite(np.asarray(corner, dtype=float)).all():
                raise InvalidRegion(f"WorldBox.{name} must be finite millimetres, got {corner!r}")


class Shaped(Protocol):
    """Anything with a volume's shape (a Space, or a stored case's space fields)."""

    @property
    def shape(self) -> tuple[int, ...]: ...


def voxel_box(region: Any, space: Space | Shaped) -> VoxelBox:
    """A region (voxel slices / (start, stop) pairs, or a :class:`WorldBox`) as three slices; voxel regions
    need only the volume's shape, a WorldBox its Space."""
    if isinstance(region, WorldBox):
        if not isinstance(space, Space):
            raise TypeError(f"a WorldBox needs the volume's Space, got {type(space).__name__}")
        return _world_to_voxels(region, space)
    if not isinstance(region, (tuple, list)) or len(region) != 3:
        raise InvalidRegion(
            f"a voxel region is three slices or (start, stop) pairs, one per axis (i, j, k), got {region!r}; "
            "for millimetres pass WorldBox(lo, hi)"
        )
    return tuple(_axis_slice(item, axis, size) for axis, (item, size) in enumerate(zip(region, space.shape)))  # type: ignore[return-value]


def _axis_slice(item: Any, axis: int, size: int) -> slice:
    if isinstance(item, slice):
        start, stop, step = item.start, item.stop, item.step
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        (start, stop), step = item, None
    else:
        raise InvalidRegion(f"axis {axis}: expected a slice or a (start, stop) pair, got {item!r}")
    for value in (start, stop, step):
        if value is not None and not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise InvalidRegion(
                f"axis {axis}: voxel regions take integers, got {item!r}; for millimetres pass WorldBox(lo, hi)"
            )
    start = 0 if start is None else int(start)
    stop = size if stop is None else int(stop)
    step = 1 if step is None else int(step)
    if step < 1:
        raise InvalidRegion(f"axis {axis}: region steps must be positive, got {step}")
    if not 0 <= start < stop <= size:
        raise InvalidRegion(f"axis {axis}: region {start}:{stop} is empty or outside the volume (size {size})")
    return slice(start, stop, step)


def _world_to_voxels(box: WorldBox, space: Space) -> VoxelBox:
    corners = np.array(list(itertools.product(*zip(box.lo, box.hi))), dtype=float)
    indices = space.from_world_transform.apply_point(corners)
    low, high = indices.min(axis=0), indices.max(axis=0)
    slices = []
    for axis, (lo, hi, size) in enumerate(zip(low, high, space.shape)):
        start = max(0, math.ceil(lo - CENTRE_ATOL))
        stop = min(size, math.floor(hi + CENTRE_ATOL) + 1)
        if start >= stop:
            raise InvalidRegion(
                f"world box {box.lo}..{box.hi} (LPS mm) holds no voxel centre of the volume on axis {axis} "
                f"(index range {lo:.2f}..{hi:.2f}, volume 0..{size - 1}); is it a voxel box? pass slices instead"
            )
        slices.append(slice(start, stop, 1))
    return tuple(slices)  # type: ignore[return-value]


def box_space(box: VoxelBox, space: Space) -> Space:
    """The Space of a voxel box (steps must be 1)."""
    if any(s.step not in (None, 1) for s in box):
        raise InvalidRegion("a region with steps has no Space of its own; use steps of 1")
    return space.apply_bbox(np.array([[s.start, s.stop] for s in box]))
