"""TotalSegmentator output folders: written organ by organ as nibabel writes them, imported bit-exact by the CLI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import assert_case_matches, box, ok

from medmask_store.io.totalsegmentator import TOTAL_CLASSES, write_totalsegmentator_folder
from medmask_store.model.geometry import nifti_affine
from medmask_store.phantom import CtPhantom
from medmask_store.storage.archive import MaskArchive

# A reduced CT phantom: pelvis to heart on a coarse grid.
SHAPE, SPACING, START = (64, 64, 48), (6.6, 6.6, 11.7), -120.0


@pytest.fixture(scope="module")
def phantom() -> CtPhantom:
    return CtPhantom(SHAPE, seed=2, spacing=SPACING, start=START)


@pytest.fixture(scope="module")
def folder(phantom: CtPhantom, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("totalsegmentator") / "ct_phantom"
    write_totalsegmentator_folder(phantom, phantom.space, path)
    return path


def test_every_class_is_a_uint8_file_with_one_affine(phantom: CtPhantom, folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{name}.nii.gz" for name in TOTAL_CLASSES)
    first = nib.load(folder / f"{TOTAL_CLASSES[0]}.nii.gz").affine
    np.testing.assert_allclose(first, nifti_affine(phantom.space), atol=1e-4)  # the header holds float32
    for name, mask in phantom.items():
        image = nib.load(folder / f"{name}.nii.gz")
        voxels = np.asanyarray(image.dataobj)
        assert voxels.dtype == np.uint8, name
        assert np.array_equal(image.affine, first), name
        assert np.array_equal(voxels, mask), name


def test_classes_not_given_are_written_empty(phantom: CtPhantom, tmp_path: Path) -> None:
    liver = box(SHAPE, (10, 30), (12, 40), (5, 20))
    write_totalsegmentator_folder({"liver": liver}, phantom.space, tmp_path / "case")
    assert len(list((tmp_path / "case").iterdir())) == len(TOTAL_CLASSES)
    assert np.array_equal(np.asanyarray(nib.load(tmp_path / "case" / "liver.nii.gz").dataobj), liver)
    assert not np.asanyarray(nib.load(tmp_path / "case" / "spleen.nii.gz").dataobj).any()


def test_names_outside_the_classes_are_refused(phantom: CtPhantom, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tumour"):
        write_totalsegmentator_folder({"tumour": np.zeros(SHAPE, bool)}, phantom.space, tmp_path / "case")
    assert not (tmp_path / "case").exists()


def test_cli_imports_the_folder_bit_exact(phantom: CtPhantom, folder: Path, tmp_path: Path) -> None:
    archive = tmp_path / "cases.zarr"
    ok("import", archive, folder)
    with MaskArchive(archive) as opened:
        assert_case_matches(opened["ct_phantom"], dict(phantom))
