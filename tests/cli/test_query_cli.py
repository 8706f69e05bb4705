"""``medmask-store query / stats / reindex / verify`` on every backend, and verify's findings.

- query prints the API's ids one per line, ``--json`` the same list, ``--csv`` the matching
  statistics rows; ``stats --csv`` parses back to ``archive.stats()``; none of them writes;
- a bad expression exits 1 with ``InvalidQuery`` and no traceback;
- verify (API and CLI) is clean on a sound archive and reports a flipped chunk byte (naming the case),
  an index entry deleted / altered / naming a case not stored, and a missing index;
  ``reindex`` makes it clean again.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import BACKEND_SUFFIXES
from helpers import (
    flip_byte,
    index_blobs,
    ok,
    packed_chunks,
    read_packed,
    run,
    snapshot,
    suffix_of,
    write_index_blobs,
    write_packed,
)

from medmask_store import MaskArchive
from medmask_store.phantom import make_phantom
from medmask_store.query import ArchiveIndex
from medmask_store.storage.verify import verify_archive

pytestmark = pytest.mark.usefixtures("index_every_archive")

SHAPE = (16, 16, 16)
CASES = {  # id: (n_organs, n_empty, meta)
    "k0": (8, 0, {"age": 71, "sex": "F", "site": "A"}),
    "k1": (6, 0, {"age": 45, "sex": "M"}),
    "k2": (7, 2, {"age": 66, "sex": "F"}),
    "k3": (6, 3, {"age": 80, "sex": "M", "site": "B"}),
    "k4": (10, 0, {"age": 30, "sex": "F"}),
    "k5": (9, 1, {"age": 59, "sex": "M", "site": "A"}),
}
EXPRESSIONS = [
    "liver.voxels > 50",
    "aorta.voxels > 0 and age >= 60",
    'sex == "F" or site == "B"',
    "not (aorta.voxels > 0)",
    "liver.voxels + spleen.voxels > 2 * stomach.voxels",
    "age > 1000",  # nothing matches
]


@pytest.fixture(scope="module", params=BACKEND_SUFFIXES, ids=lambda s: s.strip("."))
def pristine(request, tmp_path_factory) -> Path:
    """The six-case archive, built once per backend; tests must not modify it (see ``small``)."""
    path = tmp_path_factory.mktemp("pristine") / f"archive{request.param}"
    with MaskArchive(path, "w") as archive, archive.batch():
        for i, (case_id, (n_organs, n_empty, meta)) in enumerate(CASES.items()):
            masks, space = make_phantom(SHAPE, n_organs=n_organs, n_empty=n_empty, seed=100 + i)
            archive.add_case(case_id, masks, space=space, meta=meta)
    return path


@pytest.fixture
def small(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of ``pristine``, free to damage."""
    path = tmp_path / pristine.name
    if pristine.is_dir():
        shutil.copytree(pristine, path)
    else:
        shutil.copyfile(pristine, path)
    return path


def api_query(path: Path, expression: str) -> list[str]:
    with MaskArchive(path) as archive:
        return archive.query(expression)


def api_stats(path: Path) -> pd.DataFrame:
    with MaskArchive(path) as archive:
        return archive.stats()


def assert_frames_equal(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Equal column names and values (CSV does not keep dtypes: compare as float / bool / str)."""
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(expected)
    got, expected = got.reset_index(drop=True), expected.reset_index(drop=True)
    for column in expected.columns:
        want, have = expected[column], got[column]
        if column == "touches_border":
            assert have.astype(bool).tolist() == want.astype(bool).tolist(), column
        elif pd.api.types.is_numeric_dtype(have) and not pd.api.types.is_bool_dtype(have):
            np.testing.assert_array_equal(have.to_numpy(float), pd.to_numeric(want).to_numpy(float), err_msg=column)
        else:
            assert [None if pd.isna(v) else str(v) for v in have] == [None if pd.isna(v) else str(v) for v in want]


# -- query and stats ------------------------------------------------------------------------


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_query_prints_ids_one_per_line(pristine, expression):
    expected = api_query(pristine, expression)
    result = ok("query", pristine, expression)
    assert result.stdout.splitlines() == expected
    if expression != "age > 1000":
        assert 0 < len(expected) < len(CASES), expression
    else:
        assert result.stdout == ""


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_query_json(pristine, expression):
    expected = api_query(pristine, expression)
    result = ok("query", pristine, expression, "--json")
    assert json.loads(result.stdout) == expected


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_query_csv_rows_of_matching_cases(pristine, expression):
    expected_ids = api_query(pristine, expression)
    stats = api_stats(pristine)
    result = ok("query", pristine, expression, "--csv")
    frame = pd.read_csv(io.StringIO(result.stdout), keep_default_na=True)
    assert sorted(set(frame["case_id"])) == expected_ids
    assert_frames_equal(frame, stats[stats["case_id"].isin(expected_ids)])


def test_stats_csv_parses_back_to_the_api_frame(pristine):
    expected = api_stats(pristine)
    assert len(expected) == sum(n + 1 for n, _, _ in CASES.values())  # non-empty organs, + rib_right_12 per case
    result = ok("stats", pristine, "--csv")
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert_frames_equal(frame, expected)


def test_stats_table_lists_every_row(pristine):
    expected = api_stats(pristine)
    lines = ok("stats", pristine).stdout.splitlines()
    assert lines[0].split()[:4] == ["case_id", "organ", "value", "voxels"]
    body = [line.split() for line in lines[1:]]
    assert [(b[0], b[1], int(b[3])) for b in body] == list(
        zip(expected["case_id"], expected["organ"], expected["voxels"].astype(int))
    )


def test_query_stats_verify_never_write(pristine):
    before = snapshot(pristine)
    ok("query", pristine, "liver.voxels > 0")
    ok("query", pristine, "liver.voxels > 0", "--csv")
    ok("stats", pristine, "--csv")
    ok("verify", pristine)
    assert snapshot(pristine) == before


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("liver.voxels.real > 1", "only organ.field attributes"),
        ("__import__('os').system('true')", "Call is not allowed"),
        ("livr.voxels > 1", "did you mean liver"),
        ("liver.voxel > 1", "did you mean voxels"),
        ("agee > 1", "unknown metadata field 'agee'"),
        ("liver > 1", "organ.field"),
        ("liver.voxels + 1", "does not give true/false"),
        ("", "cannot parse"),
        ("age >", "cannot parse"),
    ],
)
def test_bad_expression_exits_1(pristine, expression, message):
    result = run("query", pristine, expression)
    assert result.exit_code == 1, result.output
    assert "InvalidQuery" in result.output and message in result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_reindex_then_verify(small):
    result = ok("reindex", small)
    assert f"indexed {len(CASES)} case(s)" in result.stdout
    result = ok("verify", small)
    assert f"{len(CASES)} case(s) checked, 0 problem(s)" in result.stdout
    with MaskArchive(small) as archive:
        assert verify_archive(archive) == []
        assert archive.stored_index().case_ids == sorted(CASES)


# -- verify finds problems -------------------------------------------------------------------


def stored(path: Path) -> ArchiveIndex:
    """The stored index, read from its blobs."""
    index = ArchiveIndex.load(index_blobs(path).get)
    assert index is not None
    return index


def store(path: Path, index: ArchiveIndex) -> None:
    """Store ``index``'s changes behind the library's back, as a writer would."""
    blobs = index_blobs(path)
    new, unused = index.changes()
    write_index_blobs(path, {name: data for name, data in {**blobs, **new}.items() if name not in unused})


def rewrite_zip(path: Path, changes: dict[str, bytes | None]) -> None:
    """Rewrite a stored zip with members replaced (bytes) or removed (None)."""
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    for name, data in changes.items():
        if data is None:
            members.pop(name)
        else:
            members[name] = data
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def verify_both(path: Path) -> tuple[list[str], str]:
    """Problems from the API and the CLI (which must agree); the CLI's stdout."""
    with MaskArchive(path) as archive:
        problems = verify_archive(archive)
    result = run("verify", path)
    assert result.exit_code == (1 if problems else 0), result.output
    lines = result.stdout.splitlines()
    assert lines[:-1] == problems
    assert lines[-1].endswith(f"{len(problems)} problem(s)")
    return problems, result.stdout


def chunk_position(path: Path, case_id: str) -> int:
    """A file offset in the middle of the case's stored label-volume chunk."""
    suffix = suffix_of(path)
    if suffix == ".h5":
        with h5py.File(path, "r") as f:
            info = f[f"cases/{case_id}/label_volume"].id.get_chunk_info(0)
            return info.byte_offset + info.size // 2
    if suffix == ".msk":
        catalog, data = read_packed(path)
        *_, offset, nbytes = packed_chunks(catalog, case_id, "label_volume")[0]
        return path.stat().st_size - len(data) + offset + nbytes // 2
    member = f"cases/{case_id}/label_volume/c/0/0/0"
    if suffix == ".zarr":
        shard, start = (path / member).read_bytes(), 0
    else:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(member)
            assert info.compress_type == zipfile.ZIP_STORED
            shard = zf.read(member)
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            header = handle.read(30)
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_length + extra_length
    offset, nbytes = struct.unpack("<QQ", shard[-20:-4])  # one inner chunk: its index entry before the crc32c
    assert offset + nbytes <= len(shard) - 20
    return start + offset + nbytes // 2


def test_verify_clean_on_every_backend(pristine):
    problems, out = verify_both(pristine)
    assert problems == []
    assert f"{len(CASES)} case(s) checked, 0 problem(s)" in out


def test_verify_empty_archive_without_index(archive_path):
    MaskArchive(archive_path, "w").close()
    assert index_blobs(archive_path) == {}
    assert verify_both(archive_path)[0] == []


def test_verify_reports_flipped_chunk_byte(small):
    file = small / "cases/k2/label_volume/c/0/0/0" if suffix_of(small) == ".zarr" else small
    flip_byte(file, chunk_position(small, "k2"))
    problems, out = verify_both(small)
    assert problems and all(p.startswith("case 'k2': CorruptChunk: ") for p in problems), problems
    assert "k2" in out
    assert not any(c in out for c in CASES if c != "k2")


def test_verify_reports_deleted_index_entry_and_reindex_fixes_it(small):
    index = stored(small)
    index.replace({"k3"}, [])
    assert index.case_ids == sorted(set(CASES) - {"k3"})
    store(small, index)
    problems, out = verify_both(small)
    assert problems == ["index: case 'k3' has no entry"]
    with MaskArchive(small) as archive:  # the listing did not change: queries trust the index, verify does not
        assert "k3" not in archive.query("age == 80")
        assert "k3" in archive.case_ids()
    ok("reindex", small)
    assert verify_both(small)[0] == []
    assert "k3" in stored(small).case_ids


def test_verify_reports_missing_index_and_reindex_fixes_it(small):
    write_index_blobs(small, {})
    problems, _ = verify_both(small)
    assert problems == ["index: missing (run `medmask-store reindex`)"] + [
        f"index: case {c!r} has no entry" for c in sorted(CASES)
    ]
    ok("reindex", small)
    assert verify_both(small)[0] == []


def test_verify_reports_altered_index_entry(small):
    index = stored(small)
    with MaskArchive(small) as archive:
        info = archive["k1"].info
    liver = dataclasses.replace(info.stats["liver"], voxels=info.stats["liver"].voxels + 1)
    index.replace(set(), [(dataclasses.replace(info, stats={**info.stats, "liver": liver}), index.tokens()["k1"])])
    store(small, index)
    problems, _ = verify_both(small)
    assert problems == ["index: entry of case 'k1' differs from its attributes"]
    ok("reindex", small)
    assert verify_both(small)[0] == []


def test_verify_reports_index_entry_of_a_case_not_stored(small):
    """A case removed behind the library's back (its index entry left behind)."""
    suffix = suffix_of(small)
    if suffix == ".zarr":
        shutil.rmtree(small / "cases" / "k4")
    elif suffix == ".h5":
        with h5py.File(small, "r+") as f:
            del f["cases/k4"]
    elif suffix == ".msk":
        catalog, data = read_packed(small)
        del catalog["cases"]["k4"]
        write_packed(small, catalog, data)
    else:
        with zipfile.ZipFile(small) as zf:
            names = [n for n in zf.namelist() if n.startswith("cases/k4/")]
        assert names
        rewrite_zip(small, dict.fromkeys(names))
    problems, _ = verify_both(small)
    assert problems == ["index: lists case 'k4', which is not stored"]
    with MaskArchive(small) as archive:
        assert "k4" not in archive.case_ids()
    ok("reindex", small)
    assert verify_both(small)[0] == []
