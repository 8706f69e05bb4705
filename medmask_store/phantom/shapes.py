"""Solids that phantom organs are made of, in millimetres, rasterized only inside their own bounds.

Coordinates follow a Space with identity orientation (LPS): x towards the
patient's left, y towards the back, z towards the head. A grid is given by the
voxel-centre coordinates along each axis (``Axes``, increasing); a shape fills
the voxels of the grid whose centres it contains, computing only over the part
of the grid inside its bounding box, so a vessel costs what its box holds, not
what the volume holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike

Axes = tuple[np.ndarray, np.ndarray, np.ndarray]
Bounds = tuple[np.ndarray, np.ndarray]
Box = tuple[slice, slice, slice]


class Region(Protocol):
    @property
    def bounds(self) -> Bounds:
        """Lowest and highest corner (mm) of a box holding the region."""
        ...

    def inside(self, axes: Axes) -> np.ndarray:
        """Bool array over the grid ``axes``: which voxel centres the region contains."""
        ...


class Shape(Region, Protocol):
    def mapped(self, matrix: np.ndarray, offset: np.ndarray) -> Shape:
        """The shape moved by ``p -> matrix @ p + offset`` (a similarity or a mirror)."""
        ...


def windows(lo: np.ndarray, hi: np.ndarray, axes: Axes) -> tuple[np.ndarray, np.ndarray]:
    """First and end grid index along each axis of the boxes ``lo``..``hi`` (n × 3): n × 3 each."""
    starts = np.column_stack([np.searchsorted(a, lo[:, k]) for k, a in enumerate(axes)])
    stops = np.column_stack([np.searchsorted(a, hi[:, k], "right") for k, a in enumerate(axes)])
    return starts, stops


def window(bounds: Bounds, axes: Axes) -> Box | None:
    """The part of the grid ``axes`` inside ``bounds``, or None if they miss each other."""
    (start,), (stop,) = windows(bounds[0][None], bounds[1][None], axes)
    if np.any(start >= stop):
        return None
    return slice(start[0], stop[0]), slice(start[1], stop[1]), slice(start[2], stop[2])


def within(part: Box, axes: Axes) -> Axes:
    """The coordinates of the grid ``axes`` inside ``part``."""
    return axes[0][part[0]], axes[1][part[1]], axes[2][part[2]]


def paint(out: np.ndarray, shape: Region, axes: Axes, erase: bool = False) -> None:
    """Set (or, with ``erase``, clear) the voxels of ``out``, a grid over ``axes``, that ``shape`` contains."""
    part = window(shape.bounds, axes)
    if part is None:
        return
    hit = shape.inside(within(part, axes))
    if erase:
        out[part] &= ~hit
    else:
        out[part] |= hit


@dataclass(frozen=True, eq=False)
class Ellipsoid:
    """Points p with ``(p - center) @ form @ (p - center) <= 1``."""

    center: np.ndarray
    form: np.ndarray

    @classmethod
    def of(cls, center: ArrayLike, radii: ArrayLike, turn: ArrayLike = (0, 0, 0)) -> Ellipsoid:
        """Semi-axes ``radii`` along x, y, z, then turned by ``turn`` degrees about z, y and x."""
        turned = rotation(turn)
        form = turned @ np.diag(1 / np.square(radii)) @ turned.T
        return cls(np.asarray(center, float), form)

    @cached_property
    def bounds(self) -> Bounds:
        half = np.sqrt(np.diag(np.linalg.inv(self.form)))
        return self.center - half, self.center + half

    def inside(self, axes: Axes) -> np.ndarray:
        dx, dy, dz = (np.asarray(a - c) for a, c in zip(axes, self.center))
        f = self.form
        # The quadratic form split by axis: only the terms in z need the 3-D grid, and those in float32.
        plane = (f[0, 0] * dx**2)[:, None] + 2 * f[0, 1] * np.outer(dx, dy) + (f[1, 1] * dy**2)[None, :]
        slope = 2 * (f[0, 2] * dx[:, None] + f[1, 2] * dy[None, :])
        plane, slope = (terms.astype(np.float32)[:, :, None] for terms in (plane, slope))
        dz = dz.astype(np.float32)
        return plane + slope * dz + float(f[2, 2]) * dz**2 <= 1

    def mapped(self, matrix: np.ndarray, offset: np.ndarray) -> Ellipsoid:
        inverse = np.linalg.inv(matrix)
        return Ellipsoid(matrix @ self.center + offset, inverse.T @ self.form @ inverse)


@dataclass(frozen=True, eq=False)
class Capsule:
    """Points within a radius (linear from ``ra`` to ``rb``) of the segment from ``a`` to ``b``."""

    a: np.ndarray
    b: np.ndarray
    ra: float
    rb: float

    @property
    def bounds(self) -> Bounds:
        r = max(self.ra, self.rb)
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r

    def inside(self, axes: Axes) -> np.ndarray:
        direction = (self.b - self.a).astype(np.float32)
        length2 = max(float(direction @ direction), 1e-9)
        dx, dy, dz = (np.asarray(axis - start, np.float32) for axis, start in zip(axes, self.a))
        along = ((dx * direction[0])[:, None] + (dy * direction[1])[None, :])[:, :, None] + dz * direction[2]
        t = np.clip(along / length2, 0, 1)
        distance2 = (dx**2)[:, None, None] + (dy**2)[None, :, None] + dz**2 - 2 * t * along + t**2 * length2
        radius = self.ra if self.ra == self.rb else self.ra + t * (self.rb - self.ra)
        return distance2 <= radius**2


@dataclass(frozen=True, eq=False)
class Tube:
    """A chain of capsules through ``points`` (N × 3) with a radius per point."""

    points: np.ndarray
    radii: np.ndarray

    @classmethod
    def of(cls, points: ArrayLike, radius: ArrayLike, smooth: int = 2) -> Tube:
        """A tube through control points, rounded by ``smooth`` rounds of corner cutting (Chaikin)."""
        centres = np.asarray(points, float)
        path = np.column_stack([centres, np.broadcast_to(np.asarray(radius, float), (len(centres),))])
        for _ in range(smooth):
            cut = np.empty((2 * len(path) - 2, 4))
            cut[0::2] = 0.75 * path[:-1] + 0.25 * path[1:]
            cut[1::2] = 0.25 * path[:-1] + 0.75 * path[1:]
            path = np.vstack([path[:1], cut, path[-1:]])  # keep the ends where they were put
        return cls(path[:, :3], path[:, 3])

    @cached_property
    def bounds(self) -> Bounds:
        r = self.radii.max()
        return self.points.min(axis=0) - r, self.points.max(axis=0) + r

    def inside(self, axes: Axes) -> np.ndarray:
        out = np.zeros(tuple(len(a) for a in axes), bool)
        a, b, ra, rb = self.points[:-1], self.points[1:], self.radii[:-1], self.radii[1:]
        r = np.maximum(ra, rb)[:, None]
        # All segments' grid windows at once: a tube has dozens of segments and most miss a slab.
        starts, stops = windows(np.minimum(a, b) - r, np.maximum(a, b) + r, axes)
        for i in np.flatnonzero(np.all(starts < stops, axis=1)):
            part = (slice(starts[i, 0], stops[i, 0]), slice(starts[i, 1], stops[i, 1]),
                    slice(starts[i, 2], stops[i, 2]))
            out[part] |= Capsule(a[i], b[i], float(ra[i]), float(rb[i])).inside(within(part, axes))
        return out

    def mapped(self, matrix: np.ndarray, offset: np.ndarray) -> Tube:
        return Tube(self.points @ matrix.T + offset, self.radii * abs(np.linalg.det(matrix)) ** (1 / 3))


@dataclass(frozen=True, eq=False)
class HalfSpace:
    """Points on the side of a plane that ``normal`` points to; unbounded, so only used to cut."""

    point: np.ndarray
    normal: np.ndarray

    @classmethod
    def of(cls, point: ArrayLike, normal: ArrayLike) -> HalfSpace:
        return cls(np.asarray(point, float), np.asarray(normal, float))

    @property
    def bounds(self) -> Bounds:
        return np.full(3, -np.inf), np.full(3, np.inf)

    def inside(self, axes: Axes) -> np.ndarray:
        dx, dy, dz = (np.asarray(a - p, np.float32) for a, p in zip(axes, self.point))
        n = self.normal.astype(np.float32)
        return ((n[0] * dx)[:, None] + (n[1] * dy)[None, :])[:, :, None] + n[2] * dz >= 0

    def mapped(self, matrix: np.ndarray, offset: np.ndarray) -> HalfSpace:
        return HalfSpace(matrix @ self.point + offset, np.linalg.inv(matrix).T @ self.normal)


@dataclass(frozen=True, eq=False)
class Solid:
    """The union of ``parts`` less the union of ``holes``: one organ's shape."""

    parts: tuple[Shape, ...]
    holes: tuple[Shape, ...] = ()

    @cached_property
    def bounds(self) -> Bounds:
        if not self.parts:  # an organ absent from this body: a box holding nothing
            return np.full(3, np.inf), np.full(3, -np.inf)
        corners = [part.bounds for part in self.parts]
        return np.min([lo for lo, _ in corners], axis=0), np.max([hi for _, hi in corners], axis=0)

    def inside(self, axes: Axes) -> np.ndarray:
        out = np.zeros(tuple(len(a) for a in axes), bool)
        for part in self.parts:
            paint(out, part, axes)
        if out.any():
            for hole in self.holes:
                paint(out, hole, axes, erase=True)
        return out

    def mapped(self, matrix: np.ndarray, offset: np.ndarray) -> Solid:
        parts, holes = (tuple(s.mapped(matrix, offset) for s in shapes) for shapes in (self.parts, self.holes))
        return Solid(parts, holes)

    def mirrored(self) -> Solid:
        """The same solid on the patient's other side."""
        return self.mapped(np.diag([-1.0, 1.0, 1.0]), np.zeros(3))


def rotation(turn: ArrayLike) -> np.ndarray:
    """The rotation matrix Rz @ Ry @ Rx for ``turn`` = (degrees about z, about y, about x)."""
    cz, cy, cx = np.cos(np.radians(turn))
    sz, sy, sx = np.sin(np.radians(turn))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx
