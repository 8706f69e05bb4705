"""Queries that forgive nothing silently, and metadata typed per field (issue 17).

- ``=`` is refused with the query rewritten with ``==``;
- ``field == 'value'`` (or ``!=``) where no case holds the value warns (QueryWarning), suggesting the
  close values in any letter case; a value present, or an ordering comparison, does not;
- a metadata value of another type than its field's in the other cases is refused at ``add_case`` and
  import (InvalidCase naming case, field and both types), the archive unchanged, also once reopened;
  replacing the only case holding a field may change its type, and ``null`` fits every field;
- an archive written before types were checked (one list-valued ``age``) still answers ``age > 60``:
  that case counts as missing, with a warning naming it.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from helpers import write_case_folder

from medmask_store import InvalidCase, InvalidQuery, MaskArchive, QueryWarning, StorageSettings
from medmask_store.model.meta_types import FieldTypes
from medmask_store.phantom import make_phantom

FAST = StorageSettings(chunk_size=16, label_level=1, layer_level=1)
METAS = {"c0": {"age": 70, "sex": "F"}, "c1": {"age": 40, "sex": "M"}, "c2": {"age": 65, "sex": "F", "site": "B"}}
AGE_LIST = (
    "case 'c9': metadata field 'age' is a list ([60, 61]), but a number in the archive's 3 other case(s) "
    "that hold it; give a number, or use another field name"
)


def add(archive: MaskArchive, case_id: str, meta: dict[str, object], seed: int = 0, overwrite: bool = False) -> None:
    masks, space = make_phantom((16, 16, 16), n_organs=2, n_empty=0, seed=seed)
    archive.add_case(case_id, masks, space=space, meta=meta, overwrite=overwrite)


@pytest.fixture(params=[".h5", ".zarr"], ids=lambda s: s.strip("."))
def small_archive(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / f"small{request.param}"
    with MaskArchive(path, "w", FAST) as archive, archive.batch():
        for seed, (case_id, meta) in enumerate(METAS.items()):
            add(archive, case_id, meta, seed)
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("checks") / "small.h5"
    with MaskArchive(path, "w", FAST) as writer, writer.batch():
        for seed, (case_id, meta) in enumerate(METAS.items()):
            add(writer, case_id, meta, seed)
    with MaskArchive(path) as reader:
        yield reader


def query_quietly(archive: MaskArchive, expression: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return archive.query(expression)


# -- = and == ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "written"),
    [
        ("age = 60", "age == 60"),
        ("age > 60 and sex = 'F'", "age > 60 and sex == 'F'"),
        ("sex = 'a=b'", "sex == 'a=b'"),  # an = inside text stays
        ("age >= 60 and (sex = 'M' or site = 'B')", "age >= 60 and (sex == 'M' or site == 'B')"),
    ],
)
def test_single_equals_sign_suggests_double(archive, expression, written):
    message = f"cannot parse query {expression!r}: = assigns, == compares; write {written}"
    with pytest.raises(InvalidQuery, match=f"^{re.escape(message)}$"):
        archive.query(expression)


def test_other_syntax_errors_keep_their_message(archive):
    with pytest.raises(InvalidQuery, match=r"^cannot parse query 'age >': invalid syntax; write e\.g\. "):
        archive.query("age >")


# -- values no case holds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "note", "expected"),
    [
        ("sex == 'm'", "no case has sex == 'm'; did you mean 'M'?", []),
        ("'m' == sex", "no case has sex == 'm'; did you mean 'M'?", []),
        ("sex != 'f'", "no case has sex == 'f'; did you mean 'F'?", ["c0", "c1", "c2"]),
        ("site == 'b' or age > 60", "no case has site == 'b'; did you mean 'B'?", ["c0", "c2"]),
        ("sex == 'X'", "no case has sex == 'X'", []),
        ("age == 'old'", "no case has age == 'old'", []),
        ("sex == 1", "no case has sex == 1", []),
    ],
)
def test_compared_value_no_case_holds_warns_with_the_close_ones(archive, expression, note, expected):
    with pytest.warns(QueryWarning, match=f"^{re.escape(note)}$") as caught:
        assert archive.query(expression) == expected
    assert len(caught) == 1


@pytest.mark.parametrize(
    ("expression", "expected"),
    [("sex == 'M'", ["c1"]), ("sex != 'F'", ["c1"]), ("sex < 'm'", ["c0", "c1", "c2"]), ("age == 61", [])],
)
def test_values_present_and_orderings_do_not_warn(archive, expression, expected):
    assert query_quietly(archive, expression) == expected


# -- metadata types at write time ----------------------------------------------------------------


def test_value_of_another_type_is_refused_naming_case_field_and_types(small_archive):
    with MaskArchive(small_archive, "a", FAST) as archive:
        with pytest.raises(InvalidCase, match=f"^{re.escape(AGE_LIST)}$"):
            add(archive, "c9", {"age": [60, 61]})
        with pytest.raises(InvalidCase, match=r"^case 'c9': metadata field 'sex' is a number \(1\), but text in "):
            add(archive, "c9", {"sex": 1})
        assert archive.case_ids() == ["c0", "c1", "c2"]
    with MaskArchive(small_archive, "a", FAST) as reopened:  # the types come from the stored cases
        with pytest.raises(InvalidCase, match=f"^{re.escape(AGE_LIST)}$"):
            add(reopened, "c9", {"age": [60, 61]})
        add(reopened, "c9", {"age": 61.5, "sex": None, "weight": [70, 71]})  # int and float are numbers; null fits
        assert reopened.case_ids() == ["c0", "c1", "c2", "c9"]


def test_a_field_can_change_type_once_no_other_case_holds_it(small_archive):
    with MaskArchive(small_archive, "a", FAST) as archive:
        add(archive, "c2", {"age": 65, "sex": "F", "site": 2}, overwrite=True)  # c2 alone held site
        with pytest.raises(InvalidCase, match=r"field 'site' is text \('B'\), but a number in the archive's 1 other"):
            add(archive, "c3", {"site": "B"})
        archive.delete_case("c2")
        add(archive, "c3", {"site": "B"})
        assert archive.query("site == 'B'") == ["c3"]


def test_import_refuses_a_value_of_another_type(small_archive, tmp_path):
    write_case_folder(tmp_path / "sources" / "ct7", seed=7, organs=2)
    with MaskArchive(small_archive, "a", FAST) as archive:
        report = archive.import_cases([tmp_path / "sources"], jobs=1, meta={"age": "old"})
        assert report.failed == {
            "ct7": "InvalidCase: case 'ct7': metadata field 'age' is text ('old'), but a number in the archive's 3 "
            "other case(s) that hold it; give a number, or use another field name"
        }
        assert archive.case_ids() == ["c0", "c1", "c2"]


# -- archives written before types were checked ----------------------------------------------------


def test_one_case_of_another_type_no_longer_fails_the_query(small_archive, monkeypatch):
    with monkeypatch.context() as patch, MaskArchive(small_archive, "a", FAST) as archive:
        patch.setattr(FieldTypes, "check", lambda *_: None)  # an archive written before the check
        add(archive, "c9", {"age": [60, 61], "sex": "M"})
    with MaskArchive(small_archive) as archive:
        note = "metadata field 'age' is a number in 3 case(s) but another type in 1 ('c9'): the query treats it as missing there"
        with pytest.warns(QueryWarning, match=f"^{re.escape(note)}$"):
            assert archive.query("age > 60") == ["c0", "c2"]
        with pytest.warns(QueryWarning):
            assert archive.query("not (age > 60)") == ["c1", "c9"]
