"""The ``medmask-store`` commands, through click's CliRunner (and once as the installed script)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import Result
from helpers import FOUND_WHILE_READING, HOSTILE_NIFTI, case_folder_with, ok, run, snapshot
from spacetransformer import Space

from medmask_store.model.geometry import nifti_affine, space_from_nifti_affine
from medmask_store.phantom import make_phantom
from medmask_store.storage.archive import MaskArchive


def oblique_space(shape: tuple[int, int, int]) -> Space:
    """A Space rotated 17 degrees about the third axis, with anisotropic spacing."""
    angle = np.deg2rad(17.0)
    affine = np.eye(4)
    affine[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    affine[:3, :3] = affine[:3, :3] @ np.diag([0.9, 1.1, 3.0])
    affine[:3, 3] = [-210.5, 12.25, -305.0]
    return space_from_nifti_affine(affine, shape)


def write_case_folder(folder: Path, masks: dict[str, np.ndarray], space: Space) -> Path:
    folder.mkdir(parents=True)
    for name, mask in masks.items():
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), nifti_affine(space)), folder / f"{name}.nii.gz")
    return folder


def failed(*args: object) -> Result:
    result = run(*args)
    assert result.exit_code != 0, result.output
    return result


@pytest.fixture
def masks(phantom: tuple[dict[str, np.ndarray], Space]) -> dict[str, np.ndarray]:
    return phantom[0]


@pytest.fixture
def case_folder(tmp_path: Path, masks: dict[str, np.ndarray]) -> Path:
    """tmp_path/ct01: the phantom as a TotalSegmentator-style folder with an oblique affine."""
    return write_case_folder(tmp_path / "ct01", masks, oblique_space(next(iter(masks.values())).shape))


@pytest.fixture
def imported(archive_path: Path, case_folder: Path) -> Path:
    ok("import", archive_path, case_folder)
    return archive_path


@pytest.fixture
def labels_file(tmp_path: Path, masks: dict[str, np.ndarray]) -> tuple[Path, dict[str, int], np.ndarray]:
    """tmp_path/seg/seg.nii.gz, a multi-label file without overlaps, and its mapping (with an empty organ)."""
    mapping = {"spleen": 3, "kidney_right": 9, "liver": 20, "aorta": 41}
    labels = np.zeros(masks["spleen"].shape, np.uint8)
    for name, value in mapping.items():
        labels[masks[name]] = value
    (tmp_path / "seg").mkdir()
    path = tmp_path / "seg" / "seg.nii.gz"
    nib.save(nib.Nifti1Image(labels, nifti_affine(oblique_space(labels.shape))), path)
    return path, mapping, labels


def info_json(archive: Path, case_id: str) -> dict:
    return json.loads(ok("info", archive, case_id, "--json").output)


# -- import / ls ---------------------------------------------------------------
def test_import_case_folder_then_ls(imported: Path, masks: dict[str, np.ndarray]) -> None:
    assert ok("ls", imported).output.splitlines() == ["ct01"]
    with MaskArchive(imported) as archive:
        case = archive["ct01"]
        for name, mask in masks.items():
            assert np.array_equal(case.read_organ(name), mask), name


def test_import_folder_of_case_folders(tmp_path: Path, archive_path: Path) -> None:
    dataset = tmp_path / "dataset"
    cases = {}
    for case_id, seed in [("ct_a", 1), ("ct_b", 2), ("ct_c", 3)]:
        cases[case_id], space = make_phantom(shape=(40, 36, 30), n_organs=3, n_empty=1, seed=seed)
        write_case_folder(dataset / case_id, cases[case_id], space)
    (dataset / "not_a_case").mkdir()  # no masks: skipped
    (dataset / "README.txt").write_text("dataset notes")

    assert "imported 3, skipped 0 (already in the archive), failed 0" in ok("import", archive_path, dataset).output
    assert ok("ls", archive_path).output.splitlines() == ["ct_a", "ct_b", "ct_c"]
    with MaskArchive(archive_path) as archive:
        for case_id, case_masks in cases.items():
            case = archive[case_id]
            assert set(case.organs) == set(case_masks)
            for name, mask in case_masks.items():
                assert np.array_equal(case.read_organ(name), mask), (case_id, name)


def test_import_with_case_id_and_meta(archive_path: Path, case_folder: Path) -> None:
    ok("import", archive_path, case_folder, "--case", "patient-7", "--meta", '{"age": 61, "sex": "F"}')
    assert ok("ls", archive_path).output.splitlines() == ["patient-7"]
    assert info_json(archive_path, "patient-7")["meta"] == {"age": 61, "sex": "F"}


@pytest.mark.parametrize("map_source", ["--labels", "sidecar"])
def test_import_multilabel(archive_path: Path, tmp_path: Path, labels_file, map_source: str) -> None:
    path, mapping, labels = labels_file
    if map_source == "--labels":
        (tmp_path / "map.json").write_text(json.dumps(mapping))
        ok("import", archive_path, path, "--labels", tmp_path / "map.json")
    else:
        (path.parent / "seg.json").write_text(json.dumps(mapping))
        ok("import", archive_path, path)
    assert ok("ls", archive_path).output.splitlines() == ["seg"]
    with MaskArchive(archive_path) as archive:
        case = archive["seg"]
        assert case.mapping == mapping
        assert np.array_equal(case.read_labels(), labels)


def test_import_multilabel_without_label_map_fails(archive_path: Path, labels_file) -> None:
    path, _, _ = labels_file
    result = failed("import", archive_path, path)
    assert result.exit_code == 1
    assert "NiftiError" in result.output and "seg.json" in result.output
    assert not archive_path.exists()


@pytest.mark.parametrize("flag", [[], ["--name-unmapped"]])
def test_import_multilabel_with_unmapped_label(archive_path: Path, tmp_path: Path, labels_file, flag: list[str]) -> None:
    path, mapping, labels = labels_file
    partial = {name: value for name, value in mapping.items() if name != "liver"}
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    if not flag:
        result = failed("import", archive_path, path, "--labels", tmp_path / "partial.json")
        assert "seg.nii.gz" in result.output and "20" in result.output
        return
    ok("import", archive_path, path, "--labels", tmp_path / "partial.json", *flag)
    assert info_json(archive_path, "seg")["organs"]["label_20"]["voxels"] == int((labels == 20).sum())


# -- info ------------------------------------------------------------------------
def test_info_json(imported: Path, masks: dict[str, np.ndarray]) -> None:
    summary = info_json(imported, "ct01")
    organs = summary["organs"]
    assert summary["case_id"] == "ct01"
    assert set(organs) == set(masks)
    assert sorted(organ["value"] for organ in organs.values()) == list(range(1, len(masks) + 1))
    for name, mask in masks.items():
        assert organs[name]["voxels"] == np.count_nonzero(mask), name
        assert organs[name]["representation"] in ("label_volume", "binary_layer")
        overlaps = [other for other in masks if other != name and (mask & masks[other]).any()]
        if not overlaps:
            assert organs[name]["representation"] == "label_volume", name
        for other in overlaps:  # one of any two overlapping organs needs a binary layer
            assert "binary_layer" in (organs[name]["representation"], organs[other]["representation"])
    assert summary["space"]["shape"] == list(next(iter(masks.values())).shape)


def test_info_human_lists_organs(imported: Path, masks: dict[str, np.ndarray]) -> None:
    lines = ok("info", imported, "ct01").output.splitlines()
    assert lines[0].startswith("case ct01")
    for name, mask in masks.items():
        row = next(line.split() for line in lines if line.split()[0] == name)
        assert int(row[2]) == np.count_nonzero(mask)
        assert row[-1] in ("label_volume", "binary_layer")


# -- export ----------------------------------------------------------------------
def test_export_files_equal_inputs(imported: Path, case_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert f"wrote {len(list(case_folder.iterdir()))} file(s)" in ok("export", imported, "ct01", out).output
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in case_folder.iterdir())
    for source in case_folder.iterdir():
        original, exported = nib.load(source), nib.load(out / source.name)
        assert np.array_equal(np.asanyarray(exported.dataobj), np.asanyarray(original.dataobj)), source.name
        assert np.allclose(exported.affine, original.affine, rtol=0, atol=1e-5), source.name


def test_export_multilabel_refuses_overlap_unless_allowed(imported: Path, tmp_path: Path) -> None:
    layers = [name for name, organ in info_json(imported, "ct01")["organs"].items() if organ["representation"] == "binary_layer"]
    assert layers
    result = failed("export", imported, "ct01", tmp_path / "out", "--multilabel")
    assert result.exit_code == 1
    assert "NiftiError" in result.output and "overlapping" in result.output
    for name in layers:
        assert name in result.output
    assert not (tmp_path / "out" / "ct01.nii.gz").exists()

    ok("export", imported, "ct01", tmp_path / "out", "--multilabel", "--allow-overlap")
    with MaskArchive(imported) as archive:
        case = archive["ct01"]
        assert np.array_equal(np.asanyarray(nib.load(tmp_path / "out" / "ct01.nii.gz").dataobj), case.read_labels())
        assert json.loads((tmp_path / "out" / "ct01.json").read_text()) == case.mapping


def test_export_multilabel_round_trip(archive_path: Path, labels_file, tmp_path: Path) -> None:
    path, mapping, labels = labels_file
    (path.parent / "seg.json").write_text(json.dumps(mapping))
    ok("import", archive_path, path)
    ok("export", archive_path, "seg", tmp_path / "out", "--multilabel")
    exported = nib.load(tmp_path / "out" / "seg.nii.gz")
    assert np.array_equal(np.asanyarray(exported.dataobj), labels)
    assert np.allclose(exported.affine, nib.load(path).affine, rtol=0, atol=1e-5)
    assert json.loads((tmp_path / "out" / "seg.json").read_text()) == mapping


# -- errors ----------------------------------------------------------------------
@pytest.mark.parametrize("command", ["info", "export"])
def test_missing_case(imported: Path, tmp_path: Path, command: str) -> None:
    args = [command, imported, "no_such_case"] + ([tmp_path / "out"] if command == "export" else [])
    result = failed(*args)
    assert result.exit_code == 1
    assert "CaseNotFound" in result.output and "no_such_case" in result.output


@pytest.mark.parametrize("meta", ["{age: 61}", "[61]", "61"])
def test_bad_meta_is_a_usage_error(archive_path: Path, case_folder: Path, meta: str) -> None:
    result = failed("import", archive_path, case_folder, "--meta", meta)
    assert "--meta" in result.output
    assert not archive_path.exists()


@pytest.mark.parametrize("meta", ['{"x": NaN}', '{"x": Infinity}'])
def test_non_json_number_in_meta_is_refused(archive_path: Path, case_folder: Path, meta: str) -> None:
    failed("import", archive_path, case_folder, "--meta", meta)


@pytest.mark.parametrize("option", [["--case", "x"], ["--meta", '{"age": 61}']])
def test_single_case_options_with_two_sources(archive_path: Path, tmp_path: Path, masks, option: list[str]) -> None:
    space = oblique_space(next(iter(masks.values())).shape)
    first = write_case_folder(tmp_path / "a", masks, space)
    second = write_case_folder(tmp_path / "b", masks, space)
    result = failed("import", archive_path, first, second, *option)
    assert "--case" in result.output and "exactly one case" in result.output
    assert not archive_path.exists()


def test_import_skips_an_existing_case_unless_overwrite(imported: Path, case_folder: Path) -> None:
    before = snapshot(imported)
    assert "imported 0, skipped 1" in ok("import", imported, case_folder).output
    assert snapshot(imported) == before
    assert "imported 1, skipped 0" in ok("import", imported, case_folder, "--overwrite").output


# -- hostile NIfTI input ---------------------------------------------------------------
# Faults refused before the archive is opened (header, size, affine); FOUND_WHILE_READING are found later.
HOSTILE_KINDS = ["truncated_in_voxels.nii.gz", "random_bytes.nii.gz", "header_bomb.nii.gz", "nan_affine.nii.gz"]


def hostile_source(tmp_path: Path, kind: str, as_folder: bool) -> tuple[Path, list[object]]:
    """The hostile file ``kind`` alone (with a --labels map) or in a case folder; the file and the import arguments."""
    if as_folder:
        folder = case_folder_with(tmp_path / "bad_case", f"aa_{kind}", HOSTILE_NIFTI[kind])
        return folder / f"aa_{kind}", [folder]
    bad = tmp_path / kind
    bad.write_bytes(HOSTILE_NIFTI[kind])
    (tmp_path / "map.json").write_text('{"liver": 1}')
    return bad, [bad, "--labels", tmp_path / "map.json"]


def assert_one_line_error(result: Result, path: Path) -> None:
    assert result.exit_code == 1, result.output
    assert "Aborted!" not in result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: NiftiError: {path}: "), result.output


@pytest.mark.parametrize("as_folder", [False, True], ids=["multilabel_file", "case_folder"])
@pytest.mark.parametrize("kind", [*HOSTILE_KINDS, *sorted(FOUND_WHILE_READING)])
def test_import_of_a_hostile_file_fails_in_one_line_leaving_the_archive_unchanged(
    imported: Path, tmp_path: Path, kind: str, as_folder: bool
) -> None:
    bad, args = hostile_source(tmp_path, kind, as_folder)
    before = snapshot(imported)
    assert_one_line_error(run("import", imported, *args), bad)
    assert snapshot(imported) == before


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_import_refuses_a_bad_header_before_creating_the_archive(archive_path: Path, tmp_path: Path, kind: str) -> None:
    bad, args = hostile_source(tmp_path, kind, as_folder=True)
    assert_one_line_error(run("import", archive_path, *args), bad)
    assert not archive_path.exists()


@pytest.mark.parametrize("content", [b"[" * 100_000, b"\xff\xfe{}", b"[1, 2]"], ids=["nested", "not_utf8", "not_an_object"])
def test_import_with_a_bad_label_map_fails_in_one_line(archive_path: Path, tmp_path: Path, labels_file, content: bytes) -> None:
    label_map = tmp_path / "map.json"
    label_map.write_bytes(content)
    assert_one_line_error(run("import", archive_path, labels_file[0], "--labels", label_map), label_map)
    assert not archive_path.exists()


# -- demo and the installed script ----------------------------------------------------
def test_demo_on_builtin_phantom() -> None:
    output = ok("demo").output
    assert "bit-exact" in output and "FAILED" not in output


def test_demo_on_a_folder(case_folder: Path, tmp_path: Path, masks: dict[str, np.ndarray]) -> None:
    output = ok("demo", case_folder, "--workdir", tmp_path / "work").output
    assert "bit-exact" in output
    assert f"({len(masks)} organs, {sum(m.any() for m in masks.values())} non-empty)" in output
    assert sorted(p.name for p in (tmp_path / "work" / "exported").iterdir()) == sorted(p.name for p in case_folder.iterdir())


def test_installed_console_script() -> None:
    completed = subprocess.run(["medmask-store", "--help"], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    for command in ("import", "export", "info", "ls", "demo"):
        assert command in completed.stdout
