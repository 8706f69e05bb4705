"""NIfTI (RAS) and LPS affines of a Space agree with nibabel and SimpleITK for any orientation, tilted or flipped."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from spacetransformer import Space
from spacetransformer.core.exceptions import ValidationError

from medmask_store.model.geometry import lps_affine, nifti_affine, space_from_lps_affine, space_from_nifti_affine

SHAPE = (7, 5, 4)
INDICES = np.array([[0, 0, 0], [1, 2, 3], [6, 4, 3], [6, 0, 2]], dtype=float)
RAS_TO_LPS_POINTS = np.array([-1.0, -1.0, 1.0])
GEOMETRY = settings(max_examples=60, deadline=None)


@st.composite
def orientations(draw: st.DrawFn) -> np.ndarray:
    """An orthonormal 3x3 matrix: any rotation (from a unit quaternion), possibly with flipped axes (left-handed)."""
    q = np.array([draw(st.floats(-1, 1)) for _ in range(4)])
    norm = np.linalg.norm(q)
    if norm < 0.1:
        q, norm = np.array([1.0, 0.0, 0.0, 0.0]), 1.0
    w, x, y, z = q / norm
    rotation = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip
    flips = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3))
    return rotation * flips


@st.composite
def nifti_affines(draw: st.DrawFn) -> np.ndarray:
    """A RAS affine: an orientation, anisotropic spacing and an origin."""
    spacing = np.array([draw(st.floats(0.2, 6.0)) for _ in range(3)])
    affine = np.eye(4)
    affine[:3, :3] = draw(orientations()) * spacing
    affine[:3, 3] = [draw(st.floats(-500, 500)) for _ in range(3)]
    return affine


def tilted_affine() -> np.ndarray:
    """Axes tilted out of the axial plane (30 degrees about x, 20 about y), anisotropic spacing."""
    a, b = np.deg2rad(30), np.deg2rad(20)
    about_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    about_y = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = about_y @ about_x * [0.8, 1.3, 2.5]
    affine[:3, 3] = [-12.5, 40.25, 7.0]
    return affine


def nibabel_lps(affine: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """World coordinates of voxel ``indices`` as nibabel gives them (RAS), turned to LPS."""
    return nib.affines.apply_affine(affine, indices) * RAS_TO_LPS_POINTS


def space_lps(space: Space, indices: np.ndarray) -> np.ndarray:
    """World coordinates of voxel ``indices`` by the Space's definition: origin + R @ (spacing * ijk)."""
    return np.asarray(space.origin) + (space.orientation_matrix @ (np.asarray(space.spacing) * indices).T).T


def sitk_lps(space: Space, indices: np.ndarray) -> np.ndarray:
    """World coordinates of voxel ``indices`` in a SimpleITK image of the Space's origin, spacing and direction."""
    image = sitk.Image([int(n) for n in space.shape], sitk.sitkUInt8)
    image.SetOrigin(space.origin)
    image.SetSpacing(space.spacing)
    image.SetDirection(space.to_sitk_direction())
    return np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(ijk)) for ijk in indices])


@GEOMETRY
@given(affine=nifti_affines())
def test_space_of_a_nifti_affine_puts_every_voxel_where_nibabel_does(affine: np.ndarray) -> None:
    space = space_from_nifti_affine(affine, SHAPE)
    expected = nibabel_lps(affine, INDICES)
    np.testing.assert_allclose(space_lps(space, INDICES), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(space.to_world_transform.apply_point(INDICES), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(nib.affines.apply_affine(lps_affine(space), INDICES), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(sitk_lps(space, INDICES), expected, rtol=0, atol=1e-9)


@GEOMETRY
@given(affine=nifti_affines())
def test_nifti_affine_inverts_space_from_nifti_affine(affine: np.ndarray) -> None:
    space = space_from_nifti_affine(affine, SHAPE)
    np.testing.assert_allclose(nifti_affine(space), affine, rtol=0, atol=1e-12)
    assert tuple(space.shape) == SHAPE
    np.testing.assert_allclose(space.spacing, np.linalg.norm(affine[:3, :3], axis=0), rtol=1e-15)


@GEOMETRY
@given(affine=nifti_affines())
def test_space_from_lps_affine_inverts_lps_affine(affine: np.ndarray) -> None:
    space = space_from_lps_affine(affine, SHAPE)  # any orthonormal affine is also an LPS one
    np.testing.assert_allclose(lps_affine(space), affine, rtol=0, atol=1e-12)


def test_simpleitk_reads_a_tilted_nifti_file_as_its_space(tmp_path: Path) -> None:
    """ITK's own NIfTI reader (RAS header to LPS image) gives the Space's origin, spacing and direction."""
    affine = tilted_affine()
    path = tmp_path / "tilted.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), affine), path)
    image, space = sitk.ReadImage(str(path)), space_from_nifti_affine(affine, SHAPE)
    assert image.GetSize() == SHAPE
    np.testing.assert_allclose(image.GetOrigin(), space.origin, rtol=0, atol=1e-4)  # the header holds float32
    np.testing.assert_allclose(image.GetSpacing(), space.spacing, rtol=0, atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), space.to_sitk_direction(), rtol=0, atol=1e-5)


def test_spacetransformer_conversion_differs_only_for_axes_out_of_the_axial_plane() -> None:
    """Why this module exists: ``Space.from_nifti`` negates columns, which is right only for axial slice stacks."""
    axial = np.eye(4)
    axial[:3, :3] = np.array([[0.9, -0.3, 0], [0.3, 0.9, 0], [0, 0, 1.5]])  # rotated about z, as s0000
    sagittal = np.eye(4)[:, [1, 2, 0, 3]]  # axis-aligned, slices stacked along x
    for affine, affected in ((axial, False), (sagittal, True), (tilted_affine(), True)):
        theirs = Space.from_nifti(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), affine))
        ours = space_from_nifti_affine(affine, SHAPE)
        same = np.allclose(lps_affine(theirs), lps_affine(ours), rtol=0, atol=1e-6)
        assert same != affected
        np.testing.assert_allclose(space_lps(ours, INDICES), nibabel_lps(affine, INDICES), rtol=0, atol=1e-9)


@pytest.mark.parametrize("column", [0, 2])
def test_an_axis_of_length_zero_is_refused(column: int) -> None:
    affine = tilted_affine()
    affine[:3, column] = 0
    with pytest.raises(ValidationError, match="[Ss]pacing"):
        space_from_nifti_affine(affine, SHAPE)


def test_shear_is_refused() -> None:
    affine = tilted_affine()
    affine[:3, 1] += 0.5 * affine[:3, 0]
    with pytest.raises(ValidationError, match="orthonormal"):
        space_from_nifti_affine(affine, SHAPE)
