"""One export entry point for every format, and imports of single-file cases, from the API and the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from dicom_series import write_ct_series
from helpers import assert_case_matches, ok, run

from medmask_store import Case, MaskArchive
from medmask_store.io.formats import ExportError, export_case, export_format_of
from medmask_store.io.slicer import export_seg_nrrd
from medmask_store.io.sources import discover_cases
from medmask_store.phantom import make_phantom


@pytest.fixture
def masks() -> dict[str, np.ndarray]:
    return make_phantom(shape=(40, 36, 30), n_organs=5, n_empty=1, seed=5)[0]


@pytest.fixture
def archive_path(tmp_path: Path, masks: dict[str, np.ndarray]) -> Path:
    path = tmp_path / "a.zarr"
    with MaskArchive(path, "w") as archive:
        archive.add_case("ct01", masks, space=make_phantom(shape=(40, 36, 30), seed=5)[1])
    return path


@pytest.fixture
def case(archive_path: Path) -> Iterator[Case]:
    with MaskArchive(archive_path) as archive:
        yield archive["ct01"]


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("x.seg.nrrd", "seg.nrrd"), ("X.SEG.NRRD", "seg.nrrd"), ("x.dcm", "dicom-seg"), ("x.ome.zarr", "ome-zarr"),
     ("x.nii.gz", "multilabel"), ("x.nii", "multilabel"), ("out", "nifti"), ("x.zarr", "nifti")],
)  # fmt: skip
def test_the_format_follows_the_file_name(name: str, fmt: str) -> None:
    assert export_format_of(Path("/tmp") / name) == fmt


def test_a_folder_gets_the_case_named_file(case: Case, masks: dict[str, np.ndarray], tmp_path: Path) -> None:
    written = export_case(case, tmp_path / "out", "seg.nrrd")
    assert written == [tmp_path / "out" / "ct01.seg.nrrd"]
    multilabel = export_case(case, tmp_path / "ml", "multilabel", allow_overlap=True)
    assert [p.name for p in multilabel] == ["ct01.nii.gz", "ct01.json"]
    assert sorted(p.name for p in export_case(case, tmp_path / "folder")) == sorted(f"{n}.nii.gz" for n in masks)


@pytest.mark.parametrize(
    ("fmt", "options", "message"),
    [
        ("tiff", {}, "unknown export format 'tiff'; choose one of nifti, multilabel, seg.nrrd, dicom-seg, ome-zarr"),
        ("seg.nrrd", {"ct_series": "ct"}, "a CT series is for DICOM SEG exports only, not seg.nrrd"),
        (
            "nifti",
            {"allow_overlap": True},
            "allow_overlap is for multilabel exports only, not nifti: nifti keeps overlapping organs",
        ),
        (
            "dicom-seg",
            {},
            "a DICOM SEG refers to the CT series it segments: give the folder of case 'ct01''s CT series",
        ),
    ],
)
def test_options_a_format_does_not_take_are_refused(
    case: Case, tmp_path: Path, fmt: str, options: dict, message: str
) -> None:
    with pytest.raises(ExportError) as error:
        export_case(case, tmp_path / "out", fmt, **options)  # type: ignore[arg-type]
    assert str(error.value) == message
    assert not (tmp_path / "out").exists()


def test_import_finds_single_case_files_and_folders(case: Case, masks: dict[str, np.ndarray], tmp_path: Path) -> None:
    folder = tmp_path / "dataset"
    export_seg_nrrd(case, folder / "ct01.seg.nrrd")
    export_seg_nrrd(case, folder / "ct02.seg.nrrd")
    export_case(case, folder / "ct03.ome.zarr")
    (folder / "notes.txt").write_text("not a case")
    (folder / "empty").mkdir()
    assert [c.case_id for c in discover_cases(folder / "ct02.seg.nrrd")] == ["ct02"]
    assert [c.case_id for c in discover_cases(folder / "ct03.ome.zarr")] == ["ct03"]
    found = discover_cases(folder)
    assert [(c.case_id, c.path.name) for c in found] == [
        ("ct01", "ct01.seg.nrrd"), ("ct02", "ct02.seg.nrrd"), ("ct03", "ct03.ome.zarr")
    ]  # fmt: skip
    for source in (found[0], found[2]):
        loaded = source.load()
        assert all(np.array_equal(loaded.organ_mask(name), mask) for name, mask in masks.items()), source.case_id


@pytest.mark.parametrize(
    ("out", "options", "written"),
    [("ct01.seg.nrrd", [], "ct01.seg.nrrd"), ("ome", ["--ome-zarr"], "ome/ct01.ome.zarr"),
     ("seg", ["--format", "seg.nrrd"], "seg/ct01.seg.nrrd")],
)  # fmt: skip
def test_cli_exports_and_reimports_losslessly(
    archive_path: Path, masks: dict[str, np.ndarray], tmp_path: Path, out: str, options: list[str], written: str
) -> None:
    for _ in range(2):  # a second export replaces the first
        assert (
            ok("export", archive_path, "ct01", tmp_path / out, *options).output
            == f"wrote 1 file(s) to {tmp_path / out}\n"
        )
    ok("import", tmp_path / "back.zarr", tmp_path / written)
    with MaskArchive(tmp_path / "back.zarr") as back, MaskArchive(archive_path) as original:
        assert back.case_ids() == ["ct01"]
        assert_case_matches(back["ct01"], masks)
        assert np.allclose(back["ct01"].space.origin, original["ct01"].space.origin, atol=1e-5)
        assert np.allclose(back["ct01"].space.spacing, original["ct01"].space.spacing, atol=1e-5)


def test_cli_refuses_two_formats_and_a_file_that_is_no_case(archive_path: Path, tmp_path: Path) -> None:
    result = run("export", archive_path, "ct01", tmp_path / "out", "--multilabel", "--ome-zarr")
    assert result.exit_code == 2 and "choose one format, got multilabel, ome-zarr" in result.output
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    result = run("import", tmp_path / "new.zarr", other)
    assert result.exit_code == 1 and f"{other}: not a NIfTI, .seg.nrrd or DICOM SEG file" in result.output
    assert not (tmp_path / "new.zarr").exists()


def test_cli_exports_dicom_seg_of_a_ct_series_and_imports_it_back(
    archive_path: Path, masks: dict[str, np.ndarray], tmp_path: Path
) -> None:
    with MaskArchive(archive_path) as archive:
        space = archive["ct01"].space
    write_ct_series(space, tmp_path / "ct")
    result = run("export", archive_path, "ct01", tmp_path / "out", "--format", "dicom-seg")
    assert result.exit_code == 1 and "a DICOM SEG refers to the CT series it segments" in result.output
    ok("export", archive_path, "ct01", tmp_path / "out", "--format", "dicom-seg", "--ct-series", tmp_path / "ct")
    ok("import", tmp_path / "back.zarr", tmp_path / "out")  # a folder holding ct01.dcm
    with MaskArchive(tmp_path / "back.zarr") as back:
        assert back.case_ids() == ["ct01"]
        assert_case_matches(back["ct01"], masks)
