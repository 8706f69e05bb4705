"""A Space's affines: voxel index (i, j, k) to LPS world coordinates, and to NIfTI's RAS.

A :class:`~spacetransformer.Space` is LPS: ``origin + R @ (spacing * ijk)``, the columns of ``R``
the directions of voxel axes i, j and k. NIfTI affines map the same index to RAS, which differs
from LPS in the sign of the world x and y coordinates: RAS to LPS negates the first two **rows**
of the affine. spacetransformer-core 0.2.7 (``Space.from_nifti``, ``Space.to_nifti_affine``)
negates the first two **columns** instead, which is the same only while no voxel axis tilts out
of the axial plane (axis-aligned images, rotations about z); use these functions instead.
"""

from __future__ import annotations

import numpy as np
from spacetransformer import Space

#: Negates world x and y: RAS to LPS, and back (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras_point(point: tuple[float, float, float]) -> tuple[float, float, float]:
    """A world point from LPS to RAS, or back (x and y negated; z kept)."""
    x, y, z = point
    return (0.0 - x, 0.0 - y, z)  # not -x: a 0 would print as -0.0


def lps_affine(space: Space) -> np.ndarray:
    """The 4x4 matrix from voxel index (i, j, k) to LPS world coordinates (mm)."""
    affine = np.eye(4)
    affine[:3, :3] = np.column_stack([space.x_orientation, space.y_orientation, space.z_orientation]) * space.spacing
    affine[:3, 3] = space.origin
    return affine


def space_from_lps_affine(affine: np.ndarray, shape: tuple[int, ...]) -> Space:
    """The Space of ``shape`` whose :func:`lps_affine` is ``affine`` (spacing: column norms).

    A column of length 0 or directions that are not orthonormal (shear) raise
    spacetransformer's ``ValidationError``, as the Space's own checks do.
    """
    columns = np.asarray(affine, dtype=float)[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    cosines = columns / np.where(spacing > 0, spacing, 1.0)  # a zero column: the Space refuses its spacing
    return Space(
        shape=tuple(int(n) for n in shape),
        origin=tuple(float(v) for v in np.asarray(affine, dtype=float)[:3, 3]),
        spacing=tuple(spacing.tolist()),
        x_orientation=tuple(cosines[:, 0].tolist()),
        y_orientation=tuple(cosines[:, 1].tolist()),
        z_orientation=tuple(cosines[:, 2].tolist()),
    )


def nifti_affine(space: Space) -> np.ndarray:
    """The NIfTI (RAS) affine of ``space``: its :func:`lps_affine` with world x and y negated."""
    return RAS_TO_LPS @ lps_affine(space)


def space_from_nifti_affine(affine: np.ndarray, shape: tuple[int, ...]) -> Space:
    """The LPS Space of a NIfTI image of ``shape`` with (RAS) ``affine``: the inverse of :func:`nifti_affine`."""
    return space_from_lps_affine(RAS_TO_LPS @ np.asarray(affine, dtype=float), shape)
