"""Label tables through NIfTI import and export: folder values, where a multi-label file's table comes from,
colours, and TotalSegmentator reading our exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import (
    assert_case_matches,
    save_totalsegmentator_multilabel,
    totalsegmentator_colors,
    totalsegmentator_labels,
    totalsegmentator_xml,
)
from spacetransformer import Space

from medmask_store.errors import NiftiError
from medmask_store.io.labels import LabelTable, load_labels
from medmask_store.io.nifti import export_mask_folder, export_multilabel, load_mask_folder, load_multilabel
from medmask_store.io.sources import discover_cases
from medmask_store.io.totalsegmentator import TOTAL_LABELS
from medmask_store.model.geometry import nifti_affine
from medmask_store.model.palette import default_color
from medmask_store.storage.archive import MaskArchive


def write_mask_folder(folder: Path, masks: dict[str, np.ndarray], space: Space) -> Path:
    folder.mkdir(parents=True)
    for name, mask in masks.items():
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), nifti_affine(space)), folder / f"{name}.nii.gz")
    return folder


@pytest.fixture
def masks(phantom: tuple[dict[str, np.ndarray], Space]) -> dict[str, np.ndarray]:
    """Nine TotalSegmentator organs: liver holds rib_right_12, aorta and inferior_vena_cava are empty."""
    return phantom[0]


@pytest.fixture
def case_folder(tmp_path: Path, masks: dict[str, np.ndarray], phantom) -> Path:
    return write_mask_folder(tmp_path / "s0001", masks, phantom[1])


@pytest.fixture
def ts_multilabel(tmp_path: Path, masks: dict[str, np.ndarray], phantom) -> tuple[Path, np.ndarray]:
    """A TotalSegmentator multi-label file (no overlaps: rib_right_12 left out) with its label table; liver
    gets a colour of its own, the others TotalSegmentator's palette."""
    organs = [name for name in masks if name != "rib_right_12"]
    labels = np.zeros(phantom[1].shape, np.uint8)
    for name in organs:
        labels[masks[name]] = TOTAL_LABELS[name]
    table = totalsegmentator_xml({TOTAL_LABELS[name]: name for name in organs}, {TOTAL_LABELS["liver"]: (128, 64, 32)})
    path = save_totalsegmentator_multilabel(tmp_path / "s0001.nii.gz", labels, nifti_affine(phantom[1]), table)
    return path, labels


# -- mask folders ------------------------------------------------------------------------------------
def test_folder_with_totalsegmentator_table_takes_its_values(case_folder: Path, masks, archive_path: Path) -> None:
    with MaskArchive(archive_path, "w") as archive:
        case = archive.add_case("s0001", load_mask_folder(case_folder, labels="totalsegmentator"))
        assert case.mapping == {name: TOTAL_LABELS[name] for name in sorted(masks, key=TOTAL_LABELS.get)}
        assert case.mapping["liver"] == 5 and case.organs[:2] == ["spleen", "kidney_right"]  # value order
        assert case.colors == {name: default_color(value) for name, value in case.mapping.items()}
        assert_case_matches(case, masks)


def test_folder_without_table_is_numbered_in_file_name_order(case_folder: Path, masks) -> None:
    assert load_mask_folder(case_folder).mapping == {name: n for n, name in enumerate(sorted(masks), 1)}


def test_folder_file_the_table_lacks_is_an_error_naming_it(case_folder: Path) -> None:
    table = {"liver": 5, "spleen": 1, "kidney_left": 3, "kidney_right": 2, "stomach": 6, "pancreas": 7}
    pattern = re.escape(f"{case_folder}: the label table names no organ for ") + r"aorta\.nii\.gz, inferior_vena_cava"
    with pytest.raises(NiftiError, match=pattern + r".*rib_right_12\.nii\.gz; add them to the table"):
        load_mask_folder(case_folder, labels=table)
    with pytest.raises(NiftiError, match=pattern):  # found when the import is planned, before any case loads
        discover_cases(case_folder, table)


def test_unmapped_folder_files_are_numbered_after_the_table_s_largest_value(case_folder: Path, masks) -> None:
    table = {"liver": 5, "spleen": 1, "kidney_left": 3, "kidney_right": 2, "stomach": 6, "pancreas": 70}
    case = load_mask_folder(case_folder, labels=table, unmapped="name")
    assert case.mapping == {**table, "aorta": 71, "inferior_vena_cava": 72, "rib_right_12": 73}
    for name, mask in masks.items():
        assert np.array_equal(case.organ_mask(name), mask), name


def test_folder_takes_the_colours_of_a_nifti_table(case_folder: Path, ts_multilabel, masks) -> None:
    table = load_labels(ts_multilabel[0])  # lacks rib_right_12
    case = load_mask_folder(case_folder, labels=table, unmapped="name")
    assert case.colors == {name: color for name, color in table.colors.items() if name in masks}
    assert case.colors["liver"] == (128, 64, 32, 255)


def test_folder_of_case_folders_shares_the_table(tmp_path: Path, masks, phantom) -> None:
    for case_id in ("a", "b"):
        write_mask_folder(tmp_path / "dataset" / case_id, {"liver": masks["liver"], "spleen": masks["spleen"]}, phantom[1])
    cases = discover_cases(tmp_path / "dataset", "totalsegmentator")
    assert [case.load().mapping for case in cases] == [{"spleen": 1, "liver": 5}] * 2


# -- where a multi-label file's table comes from ------------------------------------------------------
def test_multilabel_table_in_the_header_is_used_without_labels(ts_multilabel, masks) -> None:
    path, labels = ts_multilabel
    case = load_multilabel(path)
    assert case.mapping == {name: TOTAL_LABELS[name] for name in masks if name != "rib_right_12"}
    assert case.colors["liver"] == (128, 64, 32, 255) and case.colors["spleen"] == default_color(1)
    assert np.array_equal(case.label_volume, labels)
    [source] = discover_cases(path)
    assert source.load().mapping == case.mapping


def test_sidecar_json_comes_before_the_header_and_labels_before_both(ts_multilabel, masks, tmp_path: Path) -> None:
    path, labels = ts_multilabel
    renamed = {f"organ_{value}": value for value in np.unique(labels)[1:].tolist()}
    (tmp_path / "s0001.json").write_text(json.dumps(renamed))
    assert load_multilabel(path).mapping == renamed
    assert discover_cases(path)[0].load().mapping == renamed
    given = {f"given_{value}": value for value in renamed.values()}
    assert load_multilabel(path, given).mapping == given
    assert discover_cases(path, LabelTable(given))[0].load().mapping == given


def test_multilabel_without_any_table_names_the_three_sources(tmp_path: Path, masks, phantom) -> None:
    path = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(masks["liver"].astype(np.uint8), nifti_affine(phantom[1])), path)
    message = re.escape(f"{path}: a multi-label file needs a label table: --labels") + ".*seg.json beside it, or one in its header"
    with pytest.raises(NiftiError, match=message):
        load_multilabel(path)
    with pytest.raises(NiftiError, match=message):
        discover_cases(path)


# -- export: TotalSegmentator reads what we write -------------------------------------------------------
def test_totalsegmentator_round_trip(ts_multilabel, archive_path: Path, tmp_path: Path) -> None:
    """TotalSegmentator file with its table -> import (no --labels) -> export: same names, values, colours."""
    path, labels = ts_multilabel
    original = nib.load(path).header.extensions[0].get_content()
    with MaskArchive(archive_path, "w") as archive:
        archive.add_case("s0001", load_multilabel(path))
    with MaskArchive(archive_path) as archive:
        case = archive["s0001"]
        exported, sidecar = export_multilabel(case, tmp_path / "out" / "s0001.nii.gz")
    written = nib.load(exported).header.extensions[0].get_content()
    assert totalsegmentator_labels(written) == totalsegmentator_labels(original)
    assert totalsegmentator_colors(written) == totalsegmentator_colors(original)
    assert np.array_equal(np.asanyarray(nib.load(exported).dataobj), labels)
    assert json.loads(sidecar.read_text()) == case.mapping
    again = load_multilabel(exported, exported)  # the export's own header, even with the .json beside it
    assert (again.mapping, again.colors) == (case.mapping, case.colors)


def test_mask_folder_files_carry_their_one_label_table(case_folder: Path, archive_path: Path, tmp_path: Path) -> None:
    with MaskArchive(archive_path, "w") as archive:
        data = load_mask_folder(case_folder, labels="totalsegmentator")
        data.colors["liver"] = (10, 20, 30, 40)
        case = archive.add_case("s0001", data)
        export_mask_folder(case, tmp_path / "out")
    liver = load_labels(tmp_path / "out" / "liver.nii.gz")
    assert (liver.values, liver.colors) == ({"liver": 1}, {"liver": (10, 20, 30, 40)})
    spleen = load_labels(tmp_path / "out" / "spleen.nii.gz")
    assert spleen.colors == {"spleen": default_color(TOTAL_LABELS["spleen"])}  # its colour, not value 1's


def test_export_of_a_name_xml_cannot_carry_names_the_case(archive_path: Path, tmp_path: Path, masks) -> None:
    with MaskArchive(archive_path, "w") as archive:
        case = archive.add_case("odd", {"liver\ufffe": masks["liver"]})
        with pytest.raises(NiftiError, match=r"case 'odd': organ name 'liver\\ufffe' holds U\+FFFE"):
            export_multilabel(case, tmp_path / "odd.nii.gz")
