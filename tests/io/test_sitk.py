"""SimpleITK images in and out: exact geometry (LPS, oblique, left-handed), bit-exact voxels in SimpleITK's axis order, clear errors."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import assert_case_matches
from spacetransformer import Space

from medmask_store import MaskArchive
from medmask_store.errors import InvalidCase
from medmask_store.extras import ExtraNotInstalled
from medmask_store.io.nifti import load_mask_folder
from medmask_store.model.geometry import lps_affine, nifti_affine
from medmask_store.phantom import make_phantom

SHAPE = (26, 20, 14)  # asymmetric: a mixed-up axis order cannot go unnoticed


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """Rodrigues' rotation matrix about ``axis``."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    angle = np.deg2rad(degrees)
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def space_of(shape: tuple[int, int, int], directions: np.ndarray) -> Space:
    """Anisotropic spacing, an off-grid origin, and ``directions`` (columns: the directions of axes i, j, k)."""
    x, y, z = (tuple(directions[:, axis]) for axis in range(3))
    return Space(
        shape=shape,
        origin=(-120.5, 33.25, 401.0),
        spacing=(0.8, 1.3, 2.5),
        x_orientation=x,
        y_orientation=y,
        z_orientation=z,
    )


GEOMETRIES = {
    "oblique": rotation((1, 2, 3), 25.0),
    "left_handed": rotation((0, 0, 1), 17.0) @ np.diag([-1.0, 1.0, 1.0]),  # as NIfTI's RAS files read into LPS
    "axis_aligned": np.eye(3),
}


@pytest.fixture(params=list(GEOMETRIES))
def space(request: pytest.FixtureRequest) -> Space:
    return space_of(SHAPE, GEOMETRIES[request.param])


def to_image(voxels: np.ndarray, space: Space) -> sitk.Image:
    """An [i, j, k] array as SimpleITK holds it ([k, j, i]), with the Space's geometry (direction: row-major,
    its columns the axes' directions)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels.transpose(2, 1, 0)))
    image.SetOrigin(space.origin)
    image.SetSpacing(space.spacing)
    image.SetDirection(space.orientation_matrix.ravel().tolist())
    return image


def assert_geometry(image: sitk.Image, space: Space) -> None:
    assert image.GetSize() == tuple(space.shape)
    np.testing.assert_allclose(image.GetOrigin(), space.origin, rtol=0, atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), space.spacing, rtol=0, atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), space.orientation_matrix.ravel(), rtol=0, atol=1e-6)


def voxels_of(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


@pytest.fixture
def masks() -> dict[str, np.ndarray]:
    """4 organs (rib_right_12 inside the first: an overlap) and an empty one."""
    return make_phantom(shape=SHAPE, n_organs=3, n_empty=1, seed=5)[0]


def labels_and_mapping() -> tuple[np.ndarray, dict[str, int]]:
    labels = np.random.default_rng(2).choice(np.array([0, 3, 7, 300], np.uint16), size=SHAPE)
    return labels, {"liver": 3, "spleen": 7, "aorta": 300, "empty": 9}


# -- round trips -------------------------------------------------------------------------------


def test_mask_images_round_trip_with_exact_geometry(
    archive_path: Path, masks: dict[str, np.ndarray], space: Space
) -> None:
    images = {name: to_image(mask.astype(np.uint8), space) for name, mask in masks.items()}
    with MaskArchive(archive_path, "w") as archive:
        archive.add_case("ct01", images)
    with MaskArchive(archive_path) as archive:
        case = archive["ct01"]
        assert_case_matches(case, masks)
        np.testing.assert_allclose(lps_affine(case.space), lps_affine(space), rtol=0, atol=1e-6)
        for name, mask in masks.items():
            image = case.to_sitk(name)
            assert image.GetPixelID() == sitk.sitkUInt8 and image.GetNumberOfComponentsPerPixel() == 1
            assert_geometry(image, space)
            np.testing.assert_array_equal(voxels_of(image), mask.astype(np.uint8), err_msg=name)


def test_label_image_round_trip_with_exact_geometry(tmp_path: Path, space: Space) -> None:
    labels, mapping = labels_and_mapping()
    with MaskArchive(tmp_path / "a.zarr", "w") as archive:
        case = archive.add_case("ct01", to_image(labels, space), mapping=mapping)
        assert case.mapping == mapping and case.stats["empty"].voxels == 0
        np.testing.assert_array_equal(case.read_labels(), labels)
        image = case.to_sitk()
    assert image.GetPixelID() == sitk.sitkUInt16
    assert_geometry(image, space)
    np.testing.assert_array_equal(voxels_of(image), labels)


def test_signed_label_images_are_taken(tmp_path: Path) -> None:
    labels = np.zeros(SHAPE, np.int32)
    labels[3:9, 2:5, 1:4] = 2
    with MaskArchive(tmp_path / "a.zarr", "w") as archive:
        case = archive.add_case("ct01", to_image(labels, Space(shape=SHAPE)), mapping={"kidney": 2})
        np.testing.assert_array_equal(case.read_organ("kidney"), labels == 2)


def test_the_label_image_gives_overlap_voxels_to_the_binary_layer_organ(
    tmp_path: Path, masks: dict[str, np.ndarray]
) -> None:
    """Overlapping organs: each organ's image is exact; the label image is read_labels' (the layer organ on top)."""
    with MaskArchive(tmp_path / "a.zarr", "w") as archive:
        case = archive.add_case("ct01", masks)
        rib, host = masks["rib_right_12"], masks[next(iter(masks))]
        assert "rib_right_12" in case.info.layer_names and (rib & host).any()
        labels = voxels_of(case.to_sitk())
        np.testing.assert_array_equal(labels, case.read_labels())
        other_layers = [masks[name] for name in case.info.layer_names if name != "rib_right_12"]
        only_rib = rib & ~np.logical_or.reduce(other_layers)
        assert (only_rib & host).any() and (labels[only_rib] == case.mapping["rib_right_12"]).all()
        for name, mask in masks.items():
            np.testing.assert_array_equal(voxels_of(case.to_sitk(name)), mask.astype(np.uint8), err_msg=name)


# -- axis order: single voxels, checked through SimpleITK's own index and world ----------------


def test_a_voxel_keeps_its_index_and_world_position_both_ways(tmp_path: Path) -> None:
    space = space_of((5, 4, 3), GEOMETRIES["oblique"])
    voxel = (4, 1, 2)
    image = sitk.Image(list(space.shape), sitk.sitkUInt8)
    image.SetOrigin(space.origin)
    image.SetSpacing(space.spacing)
    image.SetDirection(space.orientation_matrix.ravel().tolist())
    image.SetPixel(voxel, 1)
    with MaskArchive(tmp_path / "a.zarr", "w") as archive:
        case = archive.add_case("ct01", {"dot": image})
        assert np.argwhere(case.read_organ("dot")).tolist() == [list(voxel)]
        world = case.space.to_world_transform.apply_point(np.array([voxel], float))[0]
        np.testing.assert_allclose(world, image.TransformIndexToPhysicalPoint(voxel), rtol=0, atol=1e-6)
        exported = case.to_sitk("dot")
    assert exported.GetPixel(voxel) == 1 and int(sitk.GetArrayViewFromImage(exported).sum()) == 1
    np.testing.assert_allclose(exported.TransformIndexToPhysicalPoint(voxel), world, rtol=0, atol=1e-6)


# -- errors ------------------------------------------------------------------------------------


@pytest.fixture
def archive(tmp_path: Path) -> MaskArchive:
    return MaskArchive(tmp_path / "a.zarr", "w")


def test_a_2d_image_is_refused(archive: MaskArchive) -> None:
    flat = sitk.Image([6, 5], sitk.sitkUInt8)
    with pytest.raises(InvalidCase, match=re.escape("the label image is 2-D (size (6, 5)); a case needs a 3-D image")):
        archive.add_case("ct01", flat, mapping={"liver": 1})
    with pytest.raises(InvalidCase, match=re.escape("organ 'liver' is 2-D (size (6, 5)); a case needs a 3-D image")):
        archive.add_case("ct01", {"liver": flat})


@pytest.mark.parametrize("pixel", [sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorUInt8])
def test_non_integer_pixels_are_refused(archive: MaskArchive, pixel: int) -> None:
    image = sitk.Image(list(SHAPE), pixel)
    kind = image.GetPixelIDTypeAsString()
    with pytest.raises(InvalidCase, match=rf"^the label image has pixels of type {kind}; .*need scalar integer pixels"):
        archive.add_case("ct01", image, mapping={"liver": 1})
    masks = {"liver": sitk.Image(list(SHAPE), sitk.sitkUInt8), "spleen": image}
    with pytest.raises(InvalidCase, match=rf"^organ 'spleen' has pixels of type {kind}; "):
        archive.add_case("ct01", masks)


def test_masks_of_different_geometry_are_refused_naming_the_organ(archive: MaskArchive) -> None:
    space = space_of(SHAPE, GEOMETRIES["oblique"])
    moved = Space(shape=SHAPE, origin=(-120.5, 33.25, 402.0), spacing=space.spacing, x_orientation=space.x_orientation,
                  y_orientation=space.y_orientation, z_orientation=space.z_orientation)  # fmt: skip
    mask = np.zeros(SHAPE, np.uint8)
    images = {"liver": to_image(mask, space), "spleen": to_image(mask, space), "aorta": to_image(mask, moved)}
    message = r"^organ 'aorta' has geometry size \(26, 20, 14\), origin \[-120\.5, 33\.25, 402\.0\].*organ 'liver' has .*origin \[-120\.5, 33\.25, 401\.0\].*share one geometry"
    with pytest.raises(InvalidCase, match=message):
        archive.add_case("ct01", images)
    smaller = to_image(np.zeros((26, 20, 13), np.uint8), space)
    with pytest.raises(InvalidCase, match=r"^organ 'spleen' has geometry size \(26, 20, 13\)"):
        archive.add_case("ct01", {"liver": images["liver"], "spleen": smaller})


def test_a_space_given_with_images_must_agree(archive: MaskArchive) -> None:
    space = space_of(SHAPE, GEOMETRIES["oblique"])
    labels, mapping = labels_and_mapping()
    image = to_image(labels, space)
    with pytest.raises(
        InvalidCase,
        match=r"^space= \(size \(26, 20, 14\), origin \[0\.0, 0\.0, 0\.0\].*disagrees with the geometry of the label image",
    ):
        archive.add_case("ct01", image, mapping=mapping, space=Space(shape=SHAPE))
    with pytest.raises(InvalidCase, match=r"disagrees with the geometry of the mask images"):
        archive.add_case("ct01", {"liver": to_image((labels == 3).astype(np.uint8), space)}, space=Space(shape=SHAPE))
    case = archive.add_case("ct01", image, mapping=mapping, space=space)  # agreeing: taken
    np.testing.assert_array_equal(case.read_labels(), labels)


def test_a_label_image_needs_a_mapping_and_masks_must_all_be_images(archive: MaskArchive) -> None:
    image = to_image(np.zeros(SHAPE, np.uint8), Space(shape=SHAPE))
    with pytest.raises(InvalidCase, match=r"^a label image needs a mapping \(organ name -> label value\)$"):
        archive.add_case("ct01", image)
    with pytest.raises(InvalidCase, match=r"^organ 'spleen' is not a SimpleITK image but ndarray; pass every mask"):
        archive.add_case("ct01", {"liver": image, "spleen": np.zeros(SHAPE, bool)})


def test_mask_values_other_than_0_and_1_are_refused(archive: MaskArchive) -> None:
    mask = np.zeros(SHAPE, np.uint8)
    mask[1, 2, 3] = 2
    with pytest.raises(InvalidCase, match=r"mask 'liver' holds values other than 0 and 1"):
        archive.add_case("ct01", {"liver": to_image(mask, Space(shape=SHAPE))})


# -- the optional library ----------------------------------------------------------------------


def test_without_simpleitk_arrays_still_work_and_images_out_name_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # what an environment without the extra imports
    with MaskArchive(tmp_path / "a.zarr", "w") as archive:
        case = archive.add_case("ct01", {"liver": np.ones(SHAPE, bool)})  # never imports SimpleITK
        missing = "SimpleITK images needs SimpleITK, which is not installed: pip install 'medmask_store[sitk]'"
        with pytest.raises(ExtraNotInstalled, match=f"^{re.escape(missing)}$"):
            case.to_sitk("liver")


# -- agreement with SimpleITK's own NIfTI reader ----------------------------------------------


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_simpleitk_reading_a_nifti_folder_gives_the_nifti_import(
    tmp_path: Path, masks: dict[str, np.ndarray], geometry: str
) -> None:
    """The same files read by SimpleITK (ITK turns their RAS affines to LPS) and by our NIfTI import: the same case."""
    space = space_of(SHAPE, GEOMETRIES[geometry])
    folder = tmp_path / "ct01"
    folder.mkdir()
    for name, mask in masks.items():
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), nifti_affine(space)), folder / f"{name}.nii.gz")
    images = {name: sitk.ReadImage(str(folder / f"{name}.nii.gz")) for name in masks}
    expected = load_mask_folder(folder)
    with MaskArchive(tmp_path / "a.zarr", "w") as archive:
        case = archive.add_case("ct01", images)
        assert_case_matches(case, masks)
        np.testing.assert_allclose(lps_affine(case.space), lps_affine(expected.space), rtol=0, atol=1e-5)
    np.testing.assert_allclose(lps_affine(expected.space), lps_affine(space), rtol=0, atol=1e-4)  # float32 header
