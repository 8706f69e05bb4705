"""``medmask-store query`` forgives nothing silently, and its help lists the fields (issue 17).

- a value no case holds: exit 0, no ids, a warning with the close values on stderr;
- ``=``: exit 1 with the query rewritten with ``==``;
- ``import --meta`` of a value of another type than the archive's fails naming case and field;
- ``query --help`` lists every organ field and how metadata fields are named.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ok, run, write_case_folder

from medmask_store import MaskArchive, StorageSettings
from medmask_store.phantom import make_phantom
from medmask_store.query import ORGAN_FIELDS


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-checks") / "small.h5"
    with MaskArchive(path, "w", StorageSettings(chunk_size=16)) as writer:
        for seed, meta in enumerate([{"age": 70, "sex": "F"}, {"age": 40, "sex": "M"}]):
            masks, space = make_phantom((16, 16, 16), n_organs=2, n_empty=0, seed=seed)
            writer.add_case(f"c{seed}", masks, space=space, meta=meta)
    return path


def test_value_no_case_holds_is_reported_on_stderr(archive):
    result = ok("query", archive, "sex == 'm'")
    assert result.stdout == ""
    assert result.stderr == "warning: no case has sex == 'm'; did you mean 'M'?\nno case matches \"sex == 'm'\"\n"


def test_single_equals_sign_exits_1_suggesting_double(archive):
    result = run("query", archive, "age = 60")
    assert result.exit_code == 1
    assert (
        result.stderr == "Error: InvalidQuery: cannot parse query 'age = 60': = assigns, == compares; write age == 60\n"
    )


def test_import_of_a_value_of_another_type_fails_naming_case_and_field(archive, tmp_path):
    write_case_folder(tmp_path / "ct7", seed=7, organs=2)
    result = run("import", archive, tmp_path / "ct7", "--meta", '{"age": "old"}')
    assert result.exit_code == 1
    assert (
        "case 'ct7': metadata field 'age' is text ('old'), but a number in the archive's 2 other case(s)"
        in result.stderr
    )
    assert "ct7" not in MaskArchive(archive).case_ids()


def test_help_lists_the_fields():
    text = " ".join(ok("query", "--help").stdout.split())
    assert f"FIELD is one of {', '.join(ORGAN_FIELDS)}" in text
    assert "NAME a case metadata field by its key, e.g. age or sex" in text
