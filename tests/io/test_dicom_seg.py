"""DICOM SEG export and import: lossless round trips on an oblique phantom with overlaps, the file as highdicom
reads it, SEGs from other tools, and bad CT series and files."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_series import write_ct_series
from helpers import assert_case_matches, tilted_space
from spacetransformer import Space

from medmask_store import Case, CaseData, MaskArchive
from medmask_store.errors import DicomSegError
from medmask_store.extras import ExtraNotInstalled
from medmask_store.io.dicom_seg import (
    export_dicom_seg,
    is_dicom_seg,
    load_dicom_seg,
)
from medmask_store.model.geometry import lps_affine, nifti_affine, space_from_lps_affine, space_from_nifti_affine
from medmask_store.phantom import make_phantom

# Label values as a table might give them: neither 1..N nor in name order.
VALUES = {"liver": 5, "spleen": 1, "kidney_left": 117, "kidney_right": 42, "stomach": 300, "rib_right_12": 17}
EMPTY = {"pancreas": 9, "aorta": 2}
COLORS = {"liver": (200, 120, 40, 128), "rib_right_12": (1, 2, 3, 255), "aorta": (250, 10, 10, 0)}
PAD = 2  # empty slices at both ends: the SEG has no frames there


@pytest.fixture(scope="module")
def masks() -> dict[str, np.ndarray]:
    """The phantom's organs (rib_right_12 inside liver, two empty organs), with empty first and last slices."""
    phantom, _ = make_phantom(shape=(34, 30, 16), n_organs=5, n_empty=2, seed=3)
    assert set(phantom) == set(VALUES) | set(EMPTY)
    return {name: np.pad(mask, [(0, 0), (0, 0), (PAD, PAD)]) for name, mask in phantom.items()}


@pytest.fixture(scope="module")
def space(masks: dict[str, np.ndarray]) -> Space:
    return tilted_space(next(iter(masks.values())).shape)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dicom_seg")


@pytest.fixture(scope="module")
def case(folder: Path, masks: dict[str, np.ndarray], space: Space) -> Case:
    data = CaseData.from_masks(masks, space=space, mapping=VALUES | EMPTY)
    data.colors.update(COLORS)
    return MaskArchive(folder / "archive.zarr", "w").add_case("ct01", data)


@pytest.fixture(scope="module")
def ct_series(folder: Path, space: Space) -> list[Path]:
    return write_ct_series(space, folder / "ct")


@pytest.fixture(scope="module")
def exported(folder: Path, case: Case, ct_series: list[Path]) -> Path:
    return export_dicom_seg(case, folder / "ct01.dcm", ct_series[0].parent)


def imported(path: Path, tmp_path: Path) -> Case:
    return MaskArchive(tmp_path / "back.zarr", "w").add_case("back", load_dicom_seg(path))


# -- round trip -------------------------------------------------------------------------------
def test_round_trip_keeps_every_voxel_name_value_colour_and_the_geometry(
    exported: Path, case: Case, masks: dict[str, np.ndarray], tmp_path: Path
) -> None:
    back = imported(exported, tmp_path)
    assert_case_matches(back, masks)
    assert back.mapping == case.mapping == VALUES | EMPTY
    assert back.colors == case.colors and back.colors["liver"] == COLORS["liver"]
    assert back.space.shape == case.space.shape
    np.testing.assert_allclose(lps_affine(back.space), lps_affine(case.space), atol=1e-5)
    assert back.representation("rib_right_12") == "binary_layer"  # the overlap came back as an overlap
    assert back.stats["pancreas"].voxels == back.stats["aorta"].voxels == 0


def test_highdicom_reads_one_segment_per_organ_with_the_organs_voxels(
    exported: Path, case: Case, masks: dict[str, np.ndarray], space: Space
) -> None:
    seg = hd.seg.segread(exported)
    names = sorted(case.mapping, key=case.mapping.__getitem__)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.segmentation_type.value == "BINARY"
    assert seg.SegmentsOverlap == "YES"
    assert list(seg.segment_numbers) == list(range(1, len(names) + 1))
    assert [seg.get_segment_description(n).segment_label for n in seg.segment_numbers] == names
    # highdicom converts the NIfTI (RAS) affine itself: the frames must land on the case's voxels.
    grid = hd.VolumeGeometry(lps_affine(space), space.shape, "PATIENT")
    for number, name in enumerate(names, 1):
        description = seg.get_segment_description(number)
        assert description.segmented_property_category.meaning == "Anatomical Structure"
        assert description.segmented_property_type.meaning == "Organ"
        lab = hd.color.CIELabColor.from_dicom_value(list(description.RecommendedDisplayCIELabValue))
        assert lab.to_rgb() == case.colors[name][:3], name
        volume = seg.get_volume(segment_numbers=[number], dtype=bool).match_geometry(grid)
        np.testing.assert_array_equal(volume.array[..., 0], masks[name], err_msg=name)
    frames_per_segment = np.bincount(
        [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in seg.PerFrameFunctionalGroupsSequence]
    )
    assert frames_per_segment[names.index("pancreas") + 1] == 0  # an empty organ: a segment without frames


def test_frames_take_the_positions_and_references_of_the_ct_slices(
    exported: Path, ct_series: list[Path], space: Space
) -> None:
    seg = hd.seg.segread(exported)
    slices = [pydicom.dcmread(path, stop_before_pixels=True) for path in ct_series]
    positions = {s.SOPInstanceUID: [float(v) for v in s.ImagePositionPatient] for s in slices}
    assert seg.StudyInstanceUID == slices[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == slices[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == slices[0].SeriesInstanceUID
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == positions[source]
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert [float(v) for v in orientation] == [float(v) for v in slices[0].ImageOrientationPatient]
    assert seg.get_volume_geometry().spatial_shape[0] < space.shape[2]  # the empty end slices have no frames


def test_values_alphas_and_the_full_grid_are_in_image_comments(exported: Path, case: Case, space: Space) -> None:
    extras = json.loads(pydicom.dcmread(exported, stop_before_pixels=True).ImageComments)["medmask_store"]
    names = sorted(case.mapping, key=case.mapping.__getitem__)
    assert extras["values"] == [case.mapping[name] for name in names]
    assert extras["alphas"] == [case.colors[name][3] for name in names]
    assert extras["slices"] == space.shape[2]
    np.testing.assert_allclose(extras["origin"], lps_affine(space)[:3, 3], atol=1e-9)


def test_patient_coordinates_are_the_nifti_world_in_lps() -> None:
    """A coronal grid: its slice axis runs along y, where spacetransformer's own origin/orientation misplace it."""
    affine = np.array([[0.8, 0.0, 0.0, 10.0], [0.0, 0.0, -2.0, 20.0], [0.0, 1.5, 0.0, 30.0], [0.0, 0.0, 0.0, 1.0]])
    space = space_from_nifti_affine(affine, (4, 5, 6))
    lps = lps_affine(space)
    index = np.array([1.0, 2.0, 3.0, 1.0])
    np.testing.assert_allclose(lps @ index, np.diag([-1, -1, 1, 1]) @ affine @ index)
    np.testing.assert_allclose(
        lps, hd.VolumeGeometry(affine, (4, 5, 6), "PATIENT", from_reference_convention="RAS").affine
    )
    np.testing.assert_allclose(nifti_affine(space_from_lps_affine(lps, (4, 5, 6))), affine, atol=1e-12)


def test_organ_names_keep_their_characters(tmp_path: Path) -> None:
    space = Space(shape=(10, 8, 6), spacing=(0.5, 0.5, 1.0))
    mask = np.zeros(space.shape, bool)
    mask[2:4, 2:5, 1:3] = True
    case = MaskArchive(tmp_path / "a.zarr", "w").add_case(
        "c", {"lésion_ü 1": mask}, space=space, mapping={"lésion_ü 1": 65535}
    )
    write_ct_series(space, tmp_path / "ct")
    data = load_dicom_seg(export_dicom_seg(case, tmp_path / "c.dcm", tmp_path / "ct"))
    assert data.mapping == {"lésion_ü 1": 65535}
    np.testing.assert_array_equal(data.organ_mask("lésion_ü 1"), mask)


# -- SEGs written by other tools ----------------------------------------------------------------
@pytest.mark.parametrize("segmentation_type", ["BINARY", "LABELMAP"])
def test_a_seg_from_another_tool_numbers_organs_by_segment_over_the_slices_its_frames_span(
    tmp_path: Path, segmentation_type: str
) -> None:
    space = Space(shape=(20, 16, 8), spacing=(0.7, 0.7, 2.5), origin=(-50.0, -40.0, 100.0))
    slices = [pydicom.dcmread(path) for path in write_ct_series(space, tmp_path / "ct")]
    labels = np.zeros((8, 16, 20), np.uint8)  # (slice, row, column)
    labels[2:5, 3:9, 4:10], labels[5:7, 10:12, 4:6] = 1, 2
    codes = (
        hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        hd.sr.CodedConcept("91772007", "SCT", "Organ"),
    )
    descriptions = [
        hd.seg.SegmentDescription(
            1, "tumour", *codes, "MANUAL", display_color=hd.color.CIELabColor.from_rgb(0, 128, 255)
        ),
        hd.seg.SegmentDescription(2, "node", *codes, "MANUAL"),
    ]
    seg = hd.seg.Segmentation(
        slices, labels, segmentation_type, descriptions, hd.UID(), 1, hd.UID(), 1, "x", "x", "1", "1"
    )
    seg.save_as(tmp_path / "other.dcm")
    data = load_dicom_seg(tmp_path / "other.dcm")
    assert data.mapping == {"tumour": 1, "node": 2}
    assert data.colors == {"tumour": (0, 128, 255, 255)}  # node has no colour: the palette's
    assert data.space.shape == (20, 16, 5)  # slices 2..6, where frames are
    np.testing.assert_allclose(data.space.origin, (-50.0, -40.0, 105.0))
    np.testing.assert_array_equal(data.organ_mask("tumour"), labels[2:7].transpose(2, 1, 0) == 1)
    np.testing.assert_array_equal(data.organ_mask("node"), labels[2:7].transpose(2, 1, 0) == 2)


# -- bad CT series -------------------------------------------------------------------------------
def test_export_needs_the_ct_series_folder(case: Case, tmp_path: Path) -> None:
    with pytest.raises(DicomSegError, match=rf"^{re.escape(str(tmp_path / 'nowhere'))}: no such folder; .*CT series"):
        export_dicom_seg(case, tmp_path / "out.dcm", tmp_path / "nowhere")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no DICOM here")
    with pytest.raises(DicomSegError, match=r"notes: holds no DICOM images"):
        export_dicom_seg(case, tmp_path / "out.dcm", tmp_path / "notes")
    assert not (tmp_path / "out.dcm").exists()


def other_geometry(space: Space, change: str) -> Space:
    """``space`` with one thing changed, as a CT series of another geometry has it."""
    i, j, k = space.shape
    changed = {
        "shifted": {"origin": tuple(np.add(space.origin, (0.0, 0.0, 1.0)))},
        "fewer-slices": {"shape": (i, j, k - 1)},
        "wider": {"shape": (i + 1, j, k)},
        "spacing": {"spacing": (1.0, 1.1, 3.0)},
        "orientation": {
            "x_orientation": space.y_orientation,
            "y_orientation": space.x_orientation,
            "z_orientation": tuple(-np.array(space.z_orientation)),
        },
    }[change]
    return dataclasses.replace(space, **changed)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("shifted", r"slice_0000\.dcm at .* is not a slice of the case's grid"),
        ("fewer-slices", r"19 slices, the case has 20"),
        ("wider", r"columns x rows \[\(35, 30\)\], the case's slices are 34 x 30"),
        ("spacing", r"pixel spacing \[1\.1, 1\.0\], the case's is \[1\.1, 0\.9\]"),
        ("orientation", r"orientation .*, the case's is"),
    ],
)
def test_export_refuses_a_series_of_another_geometry_naming_it_and_what_differs(
    case: Case, space: Space, tmp_path: Path, change: str, message: str
) -> None:
    other = write_ct_series(other_geometry(space, change), tmp_path / "ct")
    uid = pydicom.dcmread(other[0], stop_before_pixels=True).SeriesInstanceUID
    expected = (
        rf"ct: no CT series has the case's geometry: series {uid} \(\d+ files, e\.g\. slice_0000\.dcm\): .*{message}"
    )
    with pytest.raises(DicomSegError, match=expected):
        export_dicom_seg(case, tmp_path / "out.dcm", tmp_path / "ct")


def test_export_picks_the_matching_series_among_several(
    case: Case, space: Space, ct_series: list[Path], tmp_path: Path
) -> None:
    write_ct_series(Space(shape=(8, 8, 4)), tmp_path / "ct" / "scout")
    write_ct_series(space, tmp_path / "ct" / "axial")
    seg = hd.seg.segread(export_dicom_seg(case, tmp_path / "out.dcm", tmp_path / "ct"))
    axial = pydicom.dcmread(tmp_path / "ct" / "axial" / "slice_0000.dcm", stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == axial.SeriesInstanceUID


def test_export_refuses_organ_names_longer_than_a_segment_label(
    space: Space, ct_series: list[Path], tmp_path: Path
) -> None:
    name = "n" * 65
    long = MaskArchive(tmp_path / "a.zarr", "w").add_case("c", {name: np.ones(space.shape, bool)}, space=space)
    with pytest.raises(DicomSegError, match=r"organ names longer than 64 characters cannot be DICOM segment labels"):
        export_dicom_seg(long, tmp_path / "out.dcm", ct_series[0].parent)


# -- bad SEG files -------------------------------------------------------------------------------
def test_is_dicom_seg_tells_a_seg_from_other_files(exported: Path, ct_series: list[Path], tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"DICM")
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), tmp_path / "mask.nii.gz")
    assert is_dicom_seg(exported) and is_dicom_seg(str(exported))
    for other in (ct_series[0], tmp_path / "short", tmp_path / "mask.nii.gz", tmp_path / "missing.dcm", tmp_path):
        assert not is_dicom_seg(other), other


def test_import_refuses_what_is_not_a_seg(ct_series: list[Path], tmp_path: Path) -> None:
    with pytest.raises(DicomSegError, match=rf"^{re.escape(str(ct_series[0]))}: not a DICOM SEG file"):
        load_dicom_seg(ct_series[0])
    (tmp_path / "x.dcm").write_text("hello")
    with pytest.raises(DicomSegError, match=r"x\.dcm: not a DICOM SEG file"):
        load_dicom_seg(tmp_path / "x.dcm")


def test_import_refuses_a_fractional_seg(ct_series: list[Path], tmp_path: Path) -> None:
    slices = [pydicom.dcmread(path) for path in ct_series]
    probabilities = np.zeros((len(slices), slices[0].Rows, slices[0].Columns, 1), np.float32)
    probabilities[5, 3:6, 3:6] = 0.5
    code = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
    description = hd.seg.SegmentDescription(1, "liver", code, code, "MANUAL")
    seg = hd.seg.Segmentation(
        slices, probabilities, "FRACTIONAL", [description], hd.UID(), 1, hd.UID(), 1, "x", "x", "1", "1"
    )
    seg.save_as(tmp_path / "fractional.dcm")
    with pytest.raises(DicomSegError, match=r"fractional\.dcm: a FRACTIONAL segmentation .* is not supported"):
        load_dicom_seg(tmp_path / "fractional.dcm")


def test_import_refuses_a_truncated_seg(exported: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(exported.read_bytes()[: exported.stat().st_size // 2])
    with pytest.raises(DicomSegError, match=r"truncated\.dcm: cannot be read as a DICOM SEG"):
        load_dicom_seg(truncated)


def rewritten(exported: Path, tmp_path: Path, **extras: object) -> Path:
    """A copy of ``exported`` whose medmask_store document has ``extras`` changed."""
    dataset = pydicom.dcmread(exported)
    document = json.loads(dataset.ImageComments)
    document["medmask_store"].update(extras)
    dataset.ImageComments = json.dumps(document)
    dataset.save_as(tmp_path / "changed.dcm")
    return tmp_path / "changed.dcm"


def test_import_refuses_frames_off_the_grid_its_comments_give(exported: Path, space: Space, tmp_path: Path) -> None:
    origin = lps_affine(space)[:3, 3]
    too_few = rewritten(exported, tmp_path, slices=PAD + 1)
    with pytest.raises(
        DicomSegError, match=r"changed\.dcm: inconsistent geometry: its frames span .* outside the grid of 3 slices"
    ):
        load_dicom_seg(too_few)
    half_slice = rewritten(exported, tmp_path, origin=list(origin + 0.5 * lps_affine(space)[:3, 2]))
    with pytest.raises(DicomSegError, match=r"changed\.dcm: inconsistent geometry"):
        load_dicom_seg(half_slice)


def test_import_refuses_a_malformed_document_and_repeated_labels(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(DicomSegError, match=r"changed\.dcm: its ImageComments hold a malformed medmask_store document"):
        load_dicom_seg(rewritten(exported, tmp_path, values="liver"))
    with pytest.raises(
        DicomSegError, match=r"changed\.dcm: its medmask_store document gives 3 values and 8 alphas for 8 segments"
    ):
        load_dicom_seg(rewritten(exported, tmp_path, values=[1, 2, 3]))
    with pytest.raises(DicomSegError, match=r"changed\.dcm: .*label value"):
        load_dicom_seg(rewritten(exported, tmp_path, values=[1] * 8))
    dataset = pydicom.dcmread(exported)
    dataset.SegmentSequence[1].SegmentLabel = dataset.SegmentSequence[0].SegmentLabel
    dataset.save_as(tmp_path / "twice.dcm")
    with pytest.raises(DicomSegError, match=r"twice\.dcm: several segments have the SegmentLabel 'spleen'"):
        load_dicom_seg(tmp_path / "twice.dcm")


@pytest.mark.parametrize("module", ["highdicom", "pydicom"])
def test_without_the_dicom_extra_the_error_names_it(
    exported: Path, case: Case, ct_series: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without the extra imports
    missing = f"DICOM SEG needs {module}, which is not installed: pip install 'medmask_store[dicom]'"
    with pytest.raises(ExtraNotInstalled, match=re.escape(missing)):
        export_dicom_seg(case, tmp_path / "out.dcm", ct_series[0].parent)
    with pytest.raises(ExtraNotInstalled, match=re.escape(missing)):
        load_dicom_seg(exported)
    assert not is_dicom_seg(tmp_path)  # not a DICOM file: no library needed to say so
