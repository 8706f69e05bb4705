"""Label tables: JSON, text, NIfTI and built-in sources, their checks, and numbering of organs they lack."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medmask_store.errors import InvalidCase, NiftiError
from medmask_store.io.caret import label_table_xml
from medmask_store.io.labels import LabelTable, load_labels
from medmask_store.io.totalsegmentator import TOTAL_LABELS
from medmask_store.limits import MAX_LABEL_TABLE_BYTES


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def raises_naming(path: Path, reason: str, source: object = None) -> None:
    with pytest.raises(NiftiError) as caught:
        load_labels(path if source is None else source)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message, message


# -- JSON --------------------------------------------------------------------------------------------
def test_json_map(tmp_path: Path) -> None:
    table = load_labels(write(tmp_path / "map.json", '{"liver": 5, "spleen": 1}'))
    assert table == LabelTable({"liver": 5, "spleen": 1}) and table.colors == {}


@pytest.mark.parametrize(
    "content, reason",
    [
        ('{"liver": 5, "liver": 6}', "organ 'liver' is given more than once"),
        ('{"liver": 0}', "label value 0 of organ 'liver' is outside 1..65535"),
        ('{"liver": 5, "spleen": 5}', "organs 'liver' and 'spleen' share label value 5"),
        ('{"liver": 5.0}', "must be an integer"),
        ('{"liver": true}', "must be an integer"),
        ('{"a/b": 1}', "invalid organ name 'a/b'"),
        ("{}", "names no organ"),
        ("[1, 2]", "must be a JSON object"),
        ("{liver: 1}", "not valid JSON"),
    ],
)
def test_bad_json_map_names_the_file_and_entry(tmp_path: Path, content: str, reason: str) -> None:
    raises_naming(write(tmp_path / "map.json", content), reason)


# -- text --------------------------------------------------------------------------------------------
def test_text_line_n_names_value_n(tmp_path: Path) -> None:
    content = "# organs of my model\nspleen\n\n  liver  \r\n# 5: not segmented\n\nkidney cyst\n"
    table = load_labels(write(tmp_path / "classes.txt", content))
    assert table.values == {"spleen": 2, "liver": 4, "kidney cyst": 7}


def test_text_without_trailing_newline_and_any_suffix(tmp_path: Path) -> None:
    assert load_labels(write(tmp_path / "labels", "spleen\nkidney_right")).values == {"spleen": 1, "kidney_right": 2}


@pytest.mark.parametrize(
    "content, reason",
    [
        ("spleen\nliver\nspleen\n", "line 3: organ 'spleen' is already named on line 1"),
        ("spleen\n../liver\n", "line 2: invalid organ name '../liver'"),
        ("spleen\nliv\ter\n", "line 2: invalid organ name"),
        ("\n# nothing\n  \n", "names no organ"),
        ("x\n" * 65536, "more than 65,535 lines"),
        (b"spleen\n\xff\n", "not UTF-8"),
    ],
)
def test_bad_text_names_the_file_and_line(tmp_path: Path, content: str | bytes, reason: str) -> None:
    raises_naming(write(tmp_path / "classes.txt", content), reason)


def test_65535_lines_fit(tmp_path: Path) -> None:
    table = load_labels(write(tmp_path / "classes.txt", "".join(f"o{n}\n" for n in range(1, 65536))))
    assert len(table.values) == 65535 and table.values["o65535"] == 65535


@pytest.mark.parametrize("name", ["map.json", "classes.txt"])
def test_label_file_above_the_limit_is_refused_before_parsing(tmp_path: Path, name: str) -> None:
    raises_naming(write(tmp_path / name, b" " * (MAX_LABEL_TABLE_BYTES + 1)), "MAX_LABEL_TABLE_BYTES")


# -- NIfTI, built-in, objects -------------------------------------------------------------------------
def test_nifti_with_a_label_table(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    xml = label_table_xml({"liver": 5, "spleen": 1}, {"liver": (255, 0, 0, 255), "spleen": (1, 2, 3, 4)})
    image.header.extensions.append(nib.nifti1.Nifti1Extension(0, xml))
    nib.save(image, tmp_path / "atlas.nii.gz")
    table = load_labels(tmp_path / "atlas.nii.gz")
    assert table.values == {"spleen": 1, "liver": 5}
    assert table.colors == {"liver": (255, 0, 0, 255), "spleen": (1, 2, 3, 4)}


def test_nifti_without_a_label_table(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), tmp_path / "plain.nii.gz")
    raises_naming(tmp_path / "plain.nii.gz", "holds no label table in its header")


def test_builtin_totalsegmentator() -> None:
    table = load_labels("totalsegmentator")
    assert table.values == TOTAL_LABELS and table.values["liver"] == 5 and len(table.values) == 117


def test_builtin_name_is_a_string_not_a_path(tmp_path: Path) -> None:
    raises_naming(tmp_path / "totalsegmentator", "no such file", tmp_path / "totalsegmentator")
    raises_naming(Path("totalsegmentator"), "no such file")


def test_missing_file_lists_the_accepted_sources(tmp_path: Path) -> None:
    raises_naming(tmp_path / "nope.json", "no such file; a label table is a JSON, text or NIfTI file, or one of: totalsegmentator")


def test_tables_and_mappings_pass_through() -> None:
    table = LabelTable({"liver": 5}, {"liver": (1, 2, 3, 4)})
    assert load_labels(table) is table
    assert load_labels({"liver": np.uint16(5)}).values == {"liver": 5}


@pytest.mark.parametrize(
    "values, colors, reason",
    [
        ({"liver": 70000}, {}, "outside 1..65535"),
        ({"liver": 5}, {"spleen": (1, 2, 3, 4)}, "colour of organ 'spleen', which the mapping does not name"),
        ({"liver": 5}, {"liver": (1, 2, 3)}, "must be RGBA"),
        ({"liver": 5}, {"liver": (1, 2, 3, 256)}, "must be RGBA"),
        ({"liver": 5}, {"liver": (1, 2, 3, True)}, "must be RGBA"),
        ({"liver": 5}, {"liver": "red"}, "must be RGBA"),
    ],
)
def test_label_table_checks_values_and_colours(values: dict, colors: dict, reason: str) -> None:
    with pytest.raises(InvalidCase, match=re.escape(reason)):
        LabelTable(values, colors)


# -- numbering organs a table lacks -------------------------------------------------------------------
@given(
    st.dictionaries(st.sampled_from("abcdefghij"), st.integers(1, 60000), max_size=6).filter(
        lambda values: len(set(values.values())) == len(values)
    ),
    st.sets(st.sampled_from("abcdefghijklmnop"), min_size=1),
)
def test_values_for_keeps_table_values_and_numbers_the_rest_above_its_largest(table_values: dict, names: set) -> None:
    values = LabelTable(table_values).values_for(names)
    assert set(values) == names
    assert all(values[name] == table_values[name] for name in names & set(table_values))
    lacking = sorted(names - set(table_values))
    top = max(table_values.values(), default=0)
    assert [values[name] for name in lacking] == list(range(top + 1, top + 1 + len(lacking)))
    assert list(values.values()) == sorted(values.values())
