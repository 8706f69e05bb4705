"""3D Slicer .seg.nrrd export and import: lossless round trips, the file as slicerio reads it, bad files."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import nrrd
import numpy as np
import pytest
import slicerio
from helpers import assert_case_matches, box, tilted_space
from spacetransformer import Space

from medmask_store import Case, CaseData, MaskArchive
from medmask_store.errors import SlicerError
from medmask_store.extras import ExtraNotInstalled
from medmask_store.io.nifti import load_mask_folder
from medmask_store.io.slicer import META_FIELD, export_seg_nrrd, is_seg_nrrd, load_seg_nrrd, segment_layers
from medmask_store.model.geometry import lps_affine
from medmask_store.phantom import make_phantom

SHAPE = (40, 36, 30)
META = {"patient": "P-17", "phase": "venous", "series": [3, 4]}
COLORS = {"liver": (200, 120, 40, 255), "rib_right_12": (1, 2, 3, 255)}


def ijk_to_lps(space: Space) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = np.column_stack([space.x_orientation, space.y_orientation, space.z_orientation]) * space.spacing
    matrix[:3, 3] = space.origin
    return matrix


@pytest.fixture
def masks() -> dict[str, np.ndarray]:
    """A phantom: rib_right_12 inside liver, random ellipsoids overlapping, 2 empty organs."""
    phantom, _ = make_phantom(shape=SHAPE, n_organs=6, n_empty=2, seed=3)
    return phantom


@pytest.fixture(params=[".zarr", ".h5"], ids=lambda s: s.strip("."))
def suffix(request: pytest.FixtureRequest) -> str:
    """The archive backend of a round trip."""
    return str(request.param)


@pytest.fixture
def stored(suffix: str, tmp_path: Path, masks: dict[str, np.ndarray]) -> Iterator[Case]:
    """The phantom on an oblique grid, with colours and metadata, in an archive of each backend."""
    data = CaseData.from_masks(masks, space=tilted_space(SHAPE), meta=META)
    data.colors.update(COLORS)
    with MaskArchive(tmp_path / f"source{suffix}", "w") as archive:
        yield archive.add_case("ct01", data)


# -- round trips -------------------------------------------------------------
def test_round_trip_is_exact(stored: Case, masks: dict[str, np.ndarray], suffix: str, tmp_path: Path) -> None:
    exported = export_seg_nrrd(stored, tmp_path / "out" / "ct01.seg.nrrd")
    assert exported == tmp_path / "out" / "ct01.seg.nrrd"
    with MaskArchive(tmp_path / f"back{suffix}", "w") as archive:
        back = archive.add_case("ct01", load_seg_nrrd(exported))
        assert_case_matches(back, masks)
        assert back.organs == stored.organs and back.mapping == stored.mapping  # empty organs included, values kept
        assert back.colors == stored.colors and back.colors["liver"] == COLORS["liver"]
        assert back.meta == META
        np.testing.assert_allclose(lps_affine(back.space), lps_affine(stored.space), atol=1e-5)
        assert back.space.shape == stored.space.shape


def test_slicerio_reads_segments_layers_values_colours_and_geometry(
    stored: Case, masks: dict[str, np.ndarray], tmp_path: Path
) -> None:
    path = export_seg_nrrd(stored, tmp_path / "ct01.seg.nrrd")
    segmentation = slicerio.read_segmentation(str(path))
    segments = {segment["name"]: segment for segment in segmentation["segments"]}
    assert list(segments) == stored.organs
    assert {name: s["labelValue"] for name, s in segments.items()} == stored.mapping
    for name, segment in segments.items():
        np.testing.assert_allclose(segment["color"], np.array(stored.colors[name][:3]) / 255)
        np.testing.assert_array_equal(slicerio.segment_mask(segmentation, name), masks[name], err_msg=name)
    layers = {name: s["layer"] for name, s in segments.items()}
    assert layers == segment_layers(stored) and max(layers.values()) == 2  # the phantom's overlaps need 3 layers
    assert segmentation["voxels"].shape == (3, *SHAPE)
    np.testing.assert_allclose(segmentation["ijkToLPS"], ijk_to_lps(stored.space), atol=1e-9)
    assert segmentation[META_FIELD] == '{"patient": "P-17", "phase": "venous", "series": [3, 4]}'


def test_organs_on_one_layer_never_overlap(stored: Case, masks: dict[str, np.ndarray]) -> None:
    layers = segment_layers(stored)
    for name, layer in layers.items():
        others = [other for other, on in layers.items() if on == layer and other != name]
        assert not any((masks[name] & masks[other]).any() for other in others), name
        if not stored.overlapping_organs(name):
            assert layer == 0, name


def test_layers_are_packed_greedily(tmp_path: Path) -> None:
    """Nested organs need a layer each; disjoint organs inside one organ share the next layer."""
    shape = (20, 20, 20)
    masks = {
        "body": box(shape, (0, 20), (0, 20), (0, 12)),
        "kidney": box(shape, (2, 8), (2, 8), (2, 8)),
        "tumour": box(shape, (3, 5), (3, 5), (3, 5)),
        "spleen": box(shape, (12, 18), (12, 18), (2, 8)),
        "head": box(shape, (0, 20), (0, 20), (14, 20)),
    }
    with MaskArchive(tmp_path / "a.zarr", "w") as archive:
        case = archive.add_case("ct01", masks)
        assert segment_layers(case) == {"body": 0, "head": 0, "kidney": 1, "spleen": 1, "tumour": 2}
        path = export_seg_nrrd(case, tmp_path / "ct01.seg.nrrd")
    back = load_seg_nrrd(path)
    for name, mask in masks.items():
        np.testing.assert_array_equal(back.organ_mask(name), mask, err_msg=name)


def test_a_case_without_overlaps_is_one_label_volume(tmp_path: Path) -> None:
    shape = (12, 10, 8)
    masks = {"left": box(shape, (0, 6), (0, 10), (0, 8)), "right": box(shape, (6, 12), (0, 10), (0, 8))}
    with MaskArchive(tmp_path / "a.zarr", "w") as archive:
        case = archive.add_case("ct01", masks, mapping={"left": 300, "right": 7})
        path = export_seg_nrrd(case, tmp_path / "ct01.seg.nrrd")
    header = nrrd.read_header(str(path))
    assert header["dimension"] == 3 and header["type"] == "uint16"  # a value above 255
    assert load_seg_nrrd(path).mapping == {"left": 300, "right": 7}


def test_real_case_round_trip(real_case_dir: Path, tmp_path: Path) -> None:
    with MaskArchive(tmp_path / "source.zarr", "w") as archive:
        case = archive.add_case("s0000", load_mask_folder(real_case_dir))
        path = export_seg_nrrd(case, tmp_path / "s0000.seg.nrrd")
        with MaskArchive(tmp_path / "back.zarr", "w") as target:
            back = target.add_case("s0000", load_seg_nrrd(path))
            assert len(back.organs) == 117 and back.organs == case.organs
            assert back.mapping == case.mapping and back.colors == case.colors
            np.testing.assert_allclose(lps_affine(back.space), lps_affine(case.space), atol=1e-5)
            for name in case.organs:  # same box, same voxels in it: the same mask (crops check their voxel counts)
                assert back.stats[name].bbox == case.stats[name].bbox, name
                if case.stats[name].bbox is not None:
                    cropped, _ = case.read_organ(name, crop=True)
                    assert np.array_equal(back.read_organ(name, crop=True)[0], cropped), name


# -- files written by Slicer (slicerio) ----------------------------------------
def slicer_file(path: Path, masks: dict[str, np.ndarray], ijk: np.ndarray | None = None) -> Path:
    """A segmentation as Slicer stores one: each layer numbers its segments from 1."""
    segmentation = slicerio.create_segmentation(next(iter(masks.values())).shape, np.eye(4) if ijk is None else ijk)
    for name, mask in masks.items():
        slicerio.add_segment(segmentation, mask, {"id": name, "name": name, "color": [0.2, 0.4, 1.0]})
    slicerio.write_segmentation(str(path), segmentation)
    return path


def test_a_slicer_file_with_label_values_repeated_across_layers(tmp_path: Path) -> None:
    shape = (10, 12, 14)
    masks = {
        "a": box(shape, (0, 6), (0, 6), (0, 6)),
        "b": box(shape, (4, 9), (4, 9), (4, 9)),
        "c": box(shape, (8, 10), (0, 2), (0, 2)),
    }
    ijk = ijk_to_lps(tilted_space(shape))
    case = load_seg_nrrd(slicer_file(tmp_path / "s.seg.nrrd", masks, ijk))
    assert case.mapping == {"a": 1, "b": 2, "c": 3}  # a (layer 0) and b (layer 1) both have value 1: renumbered
    for name, mask in masks.items():
        np.testing.assert_array_equal(case.organ_mask(name), mask, err_msg=name)
    assert case.colors == dict.fromkeys(masks, (51, 102, 255, 255))
    np.testing.assert_allclose(ijk_to_lps(case.space), ijk, atol=1e-9)
    assert case.meta == {}


def test_a_right_anterior_superior_file_is_turned_into_lps(tmp_path: Path) -> None:
    shape = (6, 6, 6)
    path = slicer_file(tmp_path / "s.seg.nrrd", {"a": box(shape, (1, 3), (1, 3), (1, 3))})
    voxels, header = nrrd.read(str(path))
    header["space"] = "right-anterior-superior"
    header["space origin"] = np.array([10.0, 20.0, 30.0])
    nrrd.write(str(path), voxels, header)
    space = load_seg_nrrd(path).space
    np.testing.assert_allclose(space.origin, (-10.0, -20.0, 30.0))
    np.testing.assert_allclose(space.orientation_matrix, np.diag([-1.0, -1.0, 1.0]))


def test_a_file_without_layer_fields_holds_one_segment_per_layer(tmp_path: Path) -> None:
    """Slicer before 4.11 wrote no Layer and LabelValue fields: segment N is layer N, at label 1."""
    voxels = np.zeros((2, 4, 4, 4), np.uint8)
    voxels[0, :2] = voxels[1, 1:3] = 1
    header = {
        "space": "left-posterior-superior",
        "kinds": ["list", "domain", "domain", "domain"],
        "space directions": np.vstack([np.full(3, np.nan), np.eye(3)]),
        "space origin": np.zeros(3),
        "Segment0_ID": "a", "Segment0_Name": "a", "Segment1_ID": "b", "Segment1_Name": "b",
    }  # fmt: skip
    nrrd.write(str(tmp_path / "old.seg.nrrd"), voxels, header)
    case = load_seg_nrrd(tmp_path / "old.seg.nrrd")
    assert case.mapping == {"a": 1, "b": 2}
    np.testing.assert_array_equal(case.organ_mask("a"), voxels[0] == 1)
    np.testing.assert_array_equal(case.organ_mask("b"), voxels[1] == 1)


# -- bad input ------------------------------------------------------------------
def segmentation_file(path: Path, voxels: np.ndarray, segments: list[dict], ijk: np.ndarray | None = None) -> None:
    slicerio.write_segmentation(
        str(path), {"voxels": voxels, "ijkToLPS": np.eye(4) if ijk is None else ijk, "segments": segments}
    )


LABELS = np.zeros((4, 4, 4), np.uint8)
LABELS[:2] = 1
SHEAR = np.array([[1.0, 0.5, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
BAD_FILES: dict[str, tuple[Callable[[Path], object], str]] = {
    "not a NRRD": (lambda p: p.write_bytes(b"GIF89a not a volume"), "not a readable 3D Slicer segmentation"),
    "a plain volume": (lambda p: nrrd.write(str(p), LABELS), "not a 3D Slicer segmentation"),
    "shear": (lambda p: segmentation_file(p, LABELS, [{"name": "a", "labelValue": 1}], SHEAR), "shear"),
    "no name": (
        lambda p: segmentation_file(p, LABELS, [{"id": "S1", "labelValue": 1}]),
        "segment 0 (ID 'S1') has no name",
    ),
    "duplicate names": (
        lambda p: segmentation_file(p, LABELS, [{"name": "a", "labelValue": 1}, {"name": "a", "labelValue": 2}]),
        "several segments are named 'a'",
    ),
    "float voxels": (
        lambda p: segmentation_file(p, LABELS.astype(np.float32), [{"name": "a", "labelValue": 1}]),
        "voxels are float32; a segmentation holds integer label values",
    ),
    "unnamed voxels": (
        lambda p: segmentation_file(p, LABELS * 3, [{"name": "a", "labelValue": 1}]),
        "layer 0 holds 32 voxels whose label value no segment names",
    ),
    "missing layer": (
        lambda p: segmentation_file(p, LABELS, [{"name": "a", "labelValue": 1, "layer": 2}]),
        "is on layer 2, but the file holds 1 layer",
    ),
    "bad organ name": (
        lambda p: segmentation_file(p, LABELS, [{"name": "a/b", "labelValue": 1}]),
        "invalid organ name 'a/b'",
    ),
    "bad colour": (
        lambda p: segmentation_file(p, LABELS, [{"name": "a", "labelValue": 1, "color": [2.0, 0.0, 0.0]}]),
        "has colour [2.0, 0.0, 0.0]",
    ),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_files_are_refused_naming_the_file(tmp_path: Path, kind: str) -> None:
    write, reason = BAD_FILES[kind]
    path = tmp_path / "bad.seg.nrrd"
    write(path)
    with pytest.raises(SlicerError, match=f"^{re.escape(str(path))}: .*{re.escape(reason)}"):
        load_seg_nrrd(path)


def test_metadata_that_is_not_a_json_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.seg.nrrd"
    slicerio.write_segmentation(
        str(path), {"voxels": LABELS, "ijkToLPS": np.eye(4), "segments": [{"name": "a"}], META_FIELD: "[1]"}
    )
    with pytest.raises(SlicerError, match=f"field {META_FIELD} holds list, not a JSON object"):
        load_seg_nrrd(path)


def test_export_refuses_other_names_and_non_ascii_organs(tmp_path: Path) -> None:
    with MaskArchive(tmp_path / "a.zarr", "w") as archive:
        case = archive.add_case("ct01", {"Leber_ü": box((4, 4, 4), (0, 2), (0, 2), (0, 2))})
        with pytest.raises(
            SlicerError, match=r"ct01\.nrrd: 3D Slicer opens a segmentation from a file named <name>\.seg\.nrrd"
        ):
            export_seg_nrrd(case, tmp_path / "ct01.nrrd")
        with pytest.raises(SlicerError, match=r"case 'ct01': organ names \['Leber_ü'\] are not ASCII"):
            export_seg_nrrd(case, tmp_path / "ct01.seg.nrrd")


def test_is_seg_nrrd() -> None:
    assert is_seg_nrrd("a/ct01.seg.nrrd") and is_seg_nrrd(Path("CT01.SEG.NRRD"))
    assert not is_seg_nrrd("ct01.nrrd") and not is_seg_nrrd("ct01.nii.gz")


@pytest.mark.parametrize("module", ["slicerio", "nrrd"])
def test_without_the_extra_the_error_names_it(
    stored: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without the extra imports
    expected = f"needs {module}, which is not installed: pip install 'medmask_store[slicer]'"
    with pytest.raises(ExtraNotInstalled, match=re.escape(expected)):
        export_seg_nrrd(stored, tmp_path / "ct01.seg.nrrd")
    with pytest.raises(ExtraNotInstalled, match=re.escape(expected)):
        load_seg_nrrd(tmp_path / "ct01.seg.nrrd")
