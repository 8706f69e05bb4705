"""``import --labels`` with every kind of label table, tables read from multi-label files, colours in
``info --json`` and in exports."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import ok, run, save_totalsegmentator_multilabel, totalsegmentator_labels, totalsegmentator_xml
from spacetransformer import Space

from medmask_store.io.totalsegmentator import TOTAL_LABELS
from medmask_store.model.geometry import nifti_affine
from medmask_store.model.palette import default_color


def info_organs(archive: Path, case_id: str) -> dict:
    return json.loads(ok("info", archive, case_id, "--json").output)["organs"]


@pytest.fixture
def case_folder(tmp_path: Path, phantom: tuple[dict[str, np.ndarray], Space]) -> Path:
    """tmp_path/s0001: nine TotalSegmentator masks."""
    masks, space = phantom
    folder = tmp_path / "s0001"
    folder.mkdir()
    for name, mask in masks.items():
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), nifti_affine(space)), folder / f"{name}.nii.gz")
    return folder


@pytest.fixture
def ts_multilabel(tmp_path: Path, phantom) -> Path:
    """tmp_path/seg/seg.nii.gz: liver and spleen with TotalSegmentator's label table (liver in its own colour)."""
    masks, space = phantom
    labels = np.zeros(space.shape, np.uint8)
    labels[masks["liver"] & ~masks["rib_right_12"]], labels[masks["spleen"]] = 5, 1
    (tmp_path / "seg").mkdir()
    table = totalsegmentator_xml({1: "spleen", 5: "liver"}, {5: (200, 100, 50)})
    return save_totalsegmentator_multilabel(tmp_path / "seg" / "seg.nii.gz", labels, nifti_affine(space), table)


def test_folder_with_builtin_totalsegmentator_table(archive_path: Path, case_folder: Path) -> None:
    ok("import", archive_path, case_folder, "--labels", "totalsegmentator")
    organs = info_organs(archive_path, "s0001")
    assert {name: organ["value"] for name, organ in organs.items()} == {name: TOTAL_LABELS[name] for name in organs}
    assert organs["liver"]["value"] == 5 and organs["liver"]["color"] == list(default_color(5))


@pytest.mark.parametrize("kind", ["json", "text"])
def test_folder_with_a_label_file(archive_path: Path, case_folder: Path, tmp_path: Path, kind: str) -> None:
    names = ["liver", "spleen", "kidney_left", "kidney_right", "stomach", "pancreas", "rib_right_12", "aorta", "inferior_vena_cava"]
    if kind == "json":
        expected = {name: 10 * n for n, name in enumerate(names, 1)}
        source = tmp_path / "labels.json"
        source.write_text(json.dumps(expected))
    else:
        expected = {name: n for n, name in enumerate(names, 2)}  # line 1 is a comment
        source = tmp_path / "labels.txt"
        source.write_text("# my model\n" + "\n".join(names) + "\n")
    ok("import", archive_path, case_folder, "--labels", source)
    assert {name: organ["value"] for name, organ in info_organs(archive_path, "s0001").items()} == expected


def test_folder_files_the_table_lacks_fail_in_one_line_before_the_archive_exists(
    archive_path: Path, case_folder: Path, tmp_path: Path
) -> None:
    (tmp_path / "map.json").write_text('{"liver": 5, "spleen": 1}')
    result = run("import", archive_path, case_folder, "--labels", tmp_path / "map.json")
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
    assert result.output.startswith(f"Error: NiftiError: {case_folder}: the label table names no organ for aorta.nii.gz")
    assert not archive_path.exists()
    ok("import", archive_path, case_folder, "--labels", tmp_path / "map.json", "--name-unmapped")
    values = {name: organ["value"] for name, organ in info_organs(archive_path, "s0001").items()}
    assert values["liver"] == 5 and values["spleen"] == 1 and sorted(values.values()) == [1, 5, 6, 7, 8, 9, 10, 11, 12]


def test_multilabel_file_with_its_own_table_needs_no_labels(archive_path: Path, ts_multilabel: Path, tmp_path: Path) -> None:
    ok("import", archive_path, ts_multilabel)
    organs = info_organs(archive_path, "seg")
    assert {name: (organ["value"], organ["color"]) for name, organ in organs.items()} == {
        "spleen": (1, list(default_color(1))), "liver": (5, [200, 100, 50, 255])
    }
    ok("export", archive_path, "seg", tmp_path / "out", "--multilabel")
    exported = nib.load(tmp_path / "out" / "seg.nii.gz").header.extensions[0].get_content()
    assert totalsegmentator_labels(exported) == {1: "spleen", 5: "liver"}
    assert json.loads((tmp_path / "out" / "seg.json").read_text()) == {"spleen": 1, "liver": 5}


def test_labels_from_another_nifti_file(archive_path: Path, ts_multilabel: Path, case_folder: Path) -> None:
    ok("import", archive_path, case_folder, "--labels", ts_multilabel, "--name-unmapped")
    organs = info_organs(archive_path, "s0001")
    assert organs["liver"]["value"] == 5 and organs["liver"]["color"] == [200, 100, 50, 255]
    assert organs["aorta"]["value"] == 6  # first in name order among the organs the table lacks


def test_labels_that_are_neither_a_file_nor_a_builtin_table_are_a_usage_error(archive_path: Path, case_folder: Path) -> None:
    result = run("import", archive_path, case_folder, "--labels", "totalsegmentor")
    assert result.exit_code == 2
    assert "'totalsegmentor' is neither a file nor a built-in table (totalsegmentator)" in result.output


def test_help_names_every_kind_of_label_table() -> None:
    text = " ".join(ok("import", "--help").output.split())
    assert "FILE|totalsegmentator" in text and "text file (line n names value n)" in text and "NIfTI file" in text
