"""The archive index: serialization (npz, no pickle), and consistency with the stored cases.

- ``ArchiveIndex.from_bytes(idx.to_bytes()) == idx`` for random sets of cases (Hypothesis);
  the npz holds no object arrays and a pickled payload is refused, never unpickled.
- every backend: after adds, a delete and an overwrite, the stored index lists exactly the present
  cases with their current statistics, and ``index()`` equals the truth;
- ``.zarr``: the stored index may be stale (saved on close / every 256 writes), readers reconcile it:
  cases written or deleted by another writer object, or a deleted the index file.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import zstandard
from helpers import packed_index, set_packed_index, suffix_of
from hypothesis import given, settings
from hypothesis import strategies as st
from spacetransformer import Space

from medmask_store import CaseInfo, CorruptMetadata, MaskArchive, OrganStats
from medmask_store.codecs.chunks import append_crc32c
from medmask_store.model.validation import validate_case_id, validate_organ_name
from medmask_store.phantom import make_phantom
from medmask_store.query import ORGAN_FIELDS, ArchiveIndex
from medmask_store.storage.layout import INDEX

pytestmark = pytest.mark.usefixtures("index_every_archive")

SHAPE = (16, 16, 16)


def phantom(seed: int, n_organs: int = 6, n_empty: int = 1):
    return make_phantom(SHAPE, n_organs=n_organs, n_empty=n_empty, seed=seed)


def normalized(index: ArchiveIndex) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Organ rows and case rows sorted, as plain Python values (no dtype differences)."""
    organs = index.organs.astype({"case_id": str, "organ": str}).sort_values(["case_id", "organ"])
    organs = organs[["case_id", "organ", *ORGAN_FIELDS]].reset_index(drop=True)
    organs = organs.astype({f: "float64" for f in ORGAN_FIELDS if f != "touches_border"}).astype(
        {"case_id": object, "organ": object, "touches_border": bool}
    )
    cases = index.cases[["case_id", "token", "meta"]].astype(object).sort_values("case_id").reset_index(drop=True)
    return organs, cases


def assert_same_index(got: ArchiveIndex, expected: ArchiveIndex) -> None:
    """Same cases (ids, tokens, metadata) and same organ rows, whatever the column dtypes."""
    got_organs, got_cases = normalized(got)
    expected_organs, expected_cases = normalized(expected)
    pd.testing.assert_frame_equal(got_cases, expected_cases)
    pd.testing.assert_frame_equal(got_organs, expected_organs, check_exact=True)


def truth_of(archive: MaskArchive) -> ArchiveIndex:
    """The index built from every present case's attributes, with the backend's current version tokens."""
    tokens = archive._backend.case_tokens()  # the Backend protocol's method; tokens are backend-defined
    assert sorted(tokens) == archive.case_ids()
    return ArchiveIndex.from_cases((archive[c].info, tokens[c]) for c in archive.case_ids())


def voxels_in(index: ArchiveIndex, case_id: str) -> dict[str, int]:
    rows = index.organs[index.organs["case_id"].astype(str) == case_id]
    return dict(zip(rows["organ"].astype(str), rows["voxels"].astype(int)))


# -- serialization --------------------------------------------------------------------------

NAME_CHARS = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"))


def valid(validator):
    def check(name: str) -> bool:
        try:
            validator(name)
        except ValueError:
            return False
        return True

    return check


case_ids = st.text(NAME_CHARS, min_size=1, max_size=12).filter(valid(validate_case_id))
organ_names = st.text(NAME_CHARS, min_size=1, max_size=12).filter(valid(validate_organ_name))
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | finite | st.text(max_size=8)
metas = st.dictionaries(st.text(max_size=8), json_scalars | st.lists(json_scalars, max_size=3), max_size=4)


@st.composite
def organ_stats(draw) -> OrganStats:
    if draw(st.booleans()):
        return OrganStats.empty()
    bbox = []
    for _ in range(3):
        start = draw(st.integers(0, 500))
        bbox.append((start, start + draw(st.integers(1, 500))))
    return OrganStats(
        voxels=draw(st.integers(1, 10**9)),
        volume_ml=draw(finite),
        bbox=tuple(bbox),
        centroid_voxel=tuple(draw(finite) for _ in range(3)),
        centroid_lps_mm=tuple(draw(finite) for _ in range(3)),
        touches_border=draw(st.booleans()),
    )


@st.composite
def case_infos(draw) -> tuple[CaseInfo, str]:
    case_id = draw(case_ids)
    organs = draw(st.lists(organ_names, min_size=1, max_size=5, unique=True))
    values = draw(st.lists(st.integers(1, 65535), min_size=len(organs), max_size=len(organs), unique=True))
    info = CaseInfo(
        case_id=case_id,
        geometry=Space(shape=(8, 8, 8)),
        mapping=dict(zip(organs, values)),
        layer_names=(),
        stats={organ: draw(organ_stats()) for organ in organs},
        meta=draw(metas),
        organ_affines={},
    )
    token = draw(st.text(st.sampled_from("0123456789-abcdef"), max_size=24))
    return info, token


index_inputs = st.lists(case_infos(), min_size=1, max_size=5, unique_by=lambda pair: pair[0].case_id)


@settings(max_examples=60, deadline=None)
@given(index_inputs)
def test_round_trip_of_random_cases(cases):
    index = ArchiveIndex.from_cases(cases)
    data = index.to_bytes()
    back = ArchiveIndex.from_bytes(data)
    assert back == index
    assert_same_index(back, index)
    assert back.to_bytes() == data  # deterministic: a re-save is byte-identical
    # the rows hold what went in
    assert back.case_ids == sorted(info.case_id for info, _ in cases)
    assert back.tokens() == {info.case_id: token for info, token in cases}
    for info, _ in cases:
        assert voxels_in(back, info.case_id) == {o: info.stats[o].voxels for o in info.mapping}
        stored_meta = back.cases.set_index("case_id").loc[info.case_id, "meta"]
        assert stored_meta == info.meta
    assert len(back.organs) == sum(len(info.mapping) for info, _ in cases)


@settings(max_examples=30, deadline=None)
@given(index_inputs, st.data())
def test_replace_matches_rebuilding(cases, data):
    """``replace`` (used by reconcile) gives the same index as building from the final set of cases."""
    index = ArchiveIndex.from_cases(cases)
    removed = set(data.draw(st.lists(st.sampled_from([i.case_id for i, _ in cases]), unique=True)))
    added = data.draw(st.lists(case_infos(), max_size=3, unique_by=lambda pair: pair[0].case_id))
    index.replace(removed, added)
    added_ids = {info.case_id for info, _ in added}
    final = [pair for pair in cases if pair[0].case_id not in removed | added_ids] + added
    assert_same_index(index, ArchiveIndex.from_cases(final))
    assert_same_index(ArchiveIndex.from_bytes(index.to_bytes()), ArchiveIndex.from_cases(final))


def test_round_trip_of_empty_index():
    empty = ArchiveIndex.from_cases([])
    assert ArchiveIndex.from_bytes(empty.to_bytes()) == empty


def test_empty_index_round_trip_content():
    back = ArchiveIndex.from_bytes(ArchiveIndex.from_cases([]).to_bytes())
    assert back.case_ids == [] and len(back.organs) == 0
    assert list(back.organs.columns) == ["case_id", "organ", *ORGAN_FIELDS]


def test_npz_holds_no_object_arrays():
    cases = [
        (CaseInfo("a", Space(shape=(8, 8, 8)), {"liver": 1, "x": 2}, (),
                  {"liver": OrganStats(5, 0.1, ((0, 1), (0, 1), (0, 5)), (0, 0, 2), (1, 2, 3), True),
                   "x": OrganStats.empty()}, {"age": 3, "tags": ["a", 1]}, {}), "7-9"),
        (CaseInfo("b", Space(shape=(8, 8, 8)), {"y": 3}, (), {"y": OrganStats.empty()}, {}, {}), ""),
    ]  # fmt: skip
    data = zstandard.ZstdDecompressor().decompress(ArchiveIndex.from_cases(cases).to_bytes()[:-4])  # less its crc32c
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    assert arrays, "an npz with arrays"
    for key, array in arrays.items():
        assert array.dtype != object, key
        assert array.dtype.kind in "biufU", (key, array.dtype)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # a plain npz inside the Zstd frame, as documented
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


class _Payload:
    """Unpickling this creates a file: a pickle-based loader would betray itself."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickled_npz_is_refused_and_never_unpickled(tmp_path):
    sentinel = tmp_path / "unpickled"
    good = ArchiveIndex.from_cases(
        [(CaseInfo("a", Space(shape=(8, 8, 8)), {"x": 1}, (), {"x": OrganStats.empty()}, {}, {}), "")]
    ).to_bytes()
    with np.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(good[:-4])), allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays["meta"] = np.array([_Payload(str(sentinel))], dtype=object)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    assert not sentinel.exists()
    crafted = append_crc32c(zstandard.ZstdCompressor().compress(buffer.getvalue()))  # passes its checksum
    with pytest.raises(CorruptMetadata, match="allow_pickle"):
        ArchiveIndex.from_bytes(crafted)
    assert not sentinel.exists()
    # the sentinel works: unpickling really would have created it
    pickle.loads(pickle.dumps(_Payload(str(sentinel))))
    assert sentinel.exists()


def stored_index_bytes(path: Path) -> bytes | None:
    """The raw stored index, read without the library."""
    suffix = suffix_of(path)
    if suffix == ".msk":
        return packed_index(path)
    if suffix == ".zarr":
        file = path / INDEX
        return file.read_bytes() if file.exists() else None
    if suffix == ".zarr.zip":
        with zipfile.ZipFile(path) as zf:
            return zf.read(INDEX) if INDEX in zf.namelist() else None
    with h5py.File(path, "r") as f:
        return f["index"][...].tobytes() if "index" in f else None


def test_stored_index_file_has_no_object_arrays(archive_path):
    with MaskArchive(archive_path, "w") as archive:
        for i in range(3):
            masks, space = phantom(i)
            archive.add_case(f"c{i}", masks, space=space, meta={"age": 50 + i, "site": "x", "tags": [1, 2]})
    data = stored_index_bytes(archive_path)
    assert data is not None
    with np.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(data[:-4])), allow_pickle=False) as stored:
        assert {k: stored[k].dtype.kind for k in stored.files} and all(stored[k].dtype != object for k in stored.files)
    with MaskArchive(archive_path) as archive:
        assert_same_index(ArchiveIndex.from_bytes(data), truth_of(archive))


# -- consistency with the stored cases, every backend ----------------------------------------


def build_edited_archive(path: Path) -> dict[str, dict[str, int]]:
    """Cases a..e; b deleted, c overwritten with other masks; returns the expected voxel counts."""
    expected: dict[str, dict[str, int]] = {}
    with MaskArchive(path, "w") as archive:
        for i, case_id in enumerate("abcde"):
            masks, space = phantom(i, n_organs=6 + i % 3)
            archive.add_case(case_id, masks, space=space, meta={"age": 40 + i, "sex": "FM"[i % 2]})
            expected[case_id] = {o: int(m.sum()) for o, m in masks.items()}
        archive.delete_case("b")
        del expected["b"]
        masks, space = phantom(99, n_organs=9, n_empty=2)
        archive.add_case("c", masks, space=space, meta={"age": 77, "note": "redo"}, overwrite=True)
        new_counts = {o: int(m.sum()) for o, m in masks.items()}
        assert new_counts != expected["c"]
        expected["c"] = new_counts
    return expected


def test_stored_index_lists_exactly_the_present_cases(archive_path):
    expected = build_edited_archive(archive_path)
    with MaskArchive(archive_path, "r") as archive:
        assert archive.case_ids() == ["a", "c", "d", "e"]
        stored = archive.stored_index()
        assert stored is not None
        truth = truth_of(archive)
        assert stored == truth  # both fresh from ArchiveIndex constructors: same dtypes
        assert_same_index(stored, truth)
        assert stored.case_ids == ["a", "c", "d", "e"]
        for case_id, counts in expected.items():
            assert voxels_in(stored, case_id) == counts
        assert stored.cases.set_index("case_id").loc["c", "meta"] == {"age": 77, "note": "redo"}
        assert_same_index(archive.index(), truth)
        assert archive.query("note == 'redo'") == ["c"]
        assert archive.query("age == 41") == []  # b is gone


def test_index_equals_truth_with_eq(archive_path):
    build_edited_archive(archive_path)
    with MaskArchive(archive_path, "r") as archive:
        assert archive.index() == truth_of(archive)


def test_index_inside_writer_follows_every_change(archive_path):
    """Before any commit (inside a batch) the writer's own index() already reflects its writes."""
    with MaskArchive(archive_path, "w") as archive, archive.batch():
        for i, case_id in enumerate("abc"):
            masks, space = phantom(i)
            archive.add_case(case_id, masks, space=space, meta={"age": i})
        assert_same_index(archive.index(), truth_of(archive))
        assert archive.query("age >= 0") == ["a", "b", "c"]
        archive.delete_case("a")
        assert archive.query("age >= 0") == ["b", "c"]
        masks, space = phantom(50, n_organs=8)
        archive.add_case("b", masks, space=space, meta={"age": 9}, overwrite=True)
        assert archive.query("age == 9") == ["b"]
        assert voxels_in(archive.index(), "b") == {o: int(m.sum()) for o, m in masks.items()}
        assert_same_index(archive.index(), truth_of(archive))
    with MaskArchive(archive_path) as archive:
        assert_same_index(archive.stored_index(), truth_of(archive))


@pytest.mark.parametrize("suffix", [".zarr.zip", ".h5"])
def test_single_file_archives_store_the_index_at_every_commit(tmp_path, suffix):
    archive_path = tmp_path / f"archive{suffix}"
    with MaskArchive(archive_path, "w") as writer:
        for i, case_id in enumerate("abc"):
            masks, space = phantom(i)
            writer.add_case(case_id, masks, space=space, meta={"age": i})  # commits on return
            with MaskArchive(archive_path, "r") as reader:
                stored = reader.stored_index()
                assert stored is not None and stored.case_ids == list("abc"[: i + 1])
                assert_same_index(stored, truth_of(reader))
        writer.delete_case("b")
        with MaskArchive(archive_path, "r") as reader:
            assert reader.stored_index().case_ids == ["a", "c"]
        with writer.batch():
            masks, space = phantom(7, n_organs=9)
            writer.add_case("d", masks, space=space)
            writer.add_case("a", masks, space=space, overwrite=True)
            with MaskArchive(archive_path, "r") as reader:  # nothing published inside the batch
                assert reader.stored_index().case_ids == ["a", "c"]
                assert reader.case_ids() == ["a", "c"]
        with MaskArchive(archive_path, "r") as reader:
            assert reader.stored_index().case_ids == ["a", "c", "d"]
            assert voxels_in(reader.stored_index(), "a") == {o: int(m.sum()) for o, m in masks.items()}
            assert_same_index(reader.stored_index(), truth_of(reader))


def test_reindex_rebuilds_a_deleted_index(archive_path):
    build_edited_archive(archive_path)
    remove_stored_index(archive_path)
    with MaskArchive(archive_path, "r") as archive:
        assert archive.stored_index() is None
        assert_same_index(archive.index(), truth_of(archive))  # reconciled from the cases alone
    with MaskArchive(archive_path, "r+") as archive:
        archive.reindex()
    with MaskArchive(archive_path, "r") as archive:
        assert archive.stored_index() == truth_of(archive)


def remove_stored_index(path: Path) -> None:
    suffix = suffix_of(path)
    if suffix == ".zarr":
        (path / INDEX).unlink()
    elif suffix == ".h5":
        with h5py.File(path, "r+") as f:
            del f["index"]
    elif suffix == ".msk":
        set_packed_index(path, None)
    else:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename: zf.read(i) for i in zf.infolist() if i.filename != INDEX}
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    assert stored_index_bytes(path) is None


# -- .zarr: stale stored index, reconciled by readers ----------------------------------------


def test_zarr_reader_reconciles_cases_of_an_open_writer(tmp_path):
    path = tmp_path / "archive.zarr"
    build_edited_archive(path)  # closed: index saved with a, c, d, e
    with MaskArchive(path, "r") as reader:
        assert reader.stored_index().case_ids == ["a", "c", "d", "e"]
    with MaskArchive(path, "a") as writer:
        masks, space = phantom(20)
        writer.add_case("f", masks, space=space, meta={"age": 1})
        writer.delete_case("d")
        new_masks, new_space = phantom(21, n_organs=10, n_empty=0)
        writer.add_case("e", new_masks, space=new_space, meta={"age": 2}, overwrite=True)
        # the writer has not saved its index yet (directory archives save every 256 writes / on close)
        with MaskArchive(path, "r") as reader:
            stale = reader.stored_index()
            assert stale.case_ids == ["a", "c", "d", "e"]
            index = reader.index()
            assert_same_index(index, truth_of(reader))
            assert index.case_ids == ["a", "c", "e", "f"]
            assert voxels_in(index, "e") == {o: int(m.sum()) for o, m in new_masks.items()}
            assert voxels_in(index, "e") != voxels_in(stale, "e")
            assert reader.query("age <= 2") == ["e", "f"]
            stats = reader.stats(include_empty=True)
            assert sorted(stats["case_id"].unique()) == ["a", "c", "e", "f"]
            assert len(stats) == sum(len(reader[c].mapping) for c in reader.case_ids())
    with MaskArchive(path, "r") as reader:  # closed: the index is saved, complete and current
        assert reader.stored_index() == truth_of(reader)


def test_zarr_two_writer_objects_one_closed_first(tmp_path):
    """Writer 1 closes (saving its index) while writer 2's cases are committed but not yet indexed by it."""
    path = tmp_path / "archive.zarr"
    MaskArchive(path, "w").close()
    first, second = MaskArchive(path, "a"), MaskArchive(path, "a")
    try:
        for i in range(3):
            masks, space = phantom(i)
            first.add_case(f"one{i}", masks, space=space)
            masks, space = phantom(10 + i)
            second.add_case(f"two{i}", masks, space=space)
        first.close()
        with MaskArchive(path, "r") as reader:
            assert_same_index(reader.stored_index(), truth_of(reader))  # first reconciled second's cases
        masks, space = phantom(30, n_organs=9)
        second.add_case("one0", masks, space=space, overwrite=True)
        second.delete_case("one1")
        with MaskArchive(path, "r") as reader:
            assert "one1" in reader.stored_index().case_ids  # stale until second saves
            assert_same_index(reader.index(), truth_of(reader))
            assert voxels_in(reader.index(), "one0") == {o: int(m.sum()) for o, m in masks.items()}
    finally:
        first.close()
        second.close()
    with MaskArchive(path, "r") as reader:
        assert reader.stored_index() == truth_of(reader)
        assert reader.stored_index().case_ids == ["one0", "one2", "two0", "two1", "two2"]


def test_zarr_index_file_deleted(tmp_path):
    path = tmp_path / "archive.zarr"
    expected = build_edited_archive(path)
    (path / INDEX).unlink()
    with MaskArchive(path, "r") as reader:
        assert reader.stored_index() is None
        index = reader.index()
        assert_same_index(index, truth_of(reader))
        for case_id, counts in expected.items():
            assert voxels_in(index, case_id) == counts
    assert not (path / INDEX).exists()  # mode "r" never writes
    with MaskArchive(path, "a") as writer:
        masks, space = phantom(40)
        writer.add_case("z", masks, space=space)
    with MaskArchive(path, "r") as reader:  # the next writer's save restores a complete index
        assert reader.stored_index() == truth_of(reader)
        assert reader.stored_index().case_ids == ["a", "c", "d", "e", "z"]


def test_zarr_index_saved_every_256_writes(tmp_path, monkeypatch):
    """The periodic save: with the period lowered to 3, the 3rd write saves the index (no close)."""
    import medmask_store.storage.archive as archive_module

    monkeypatch.setattr(archive_module, "INDEX_SAVE_EVERY", 3)
    path = tmp_path / "archive.zarr"
    with MaskArchive(path, "w") as writer:
        for i in range(4):
            masks, space = phantom(i)
            writer.add_case(f"c{i}", masks, space=space)
            with MaskArchive(path, "r") as reader:
                stored = reader.stored_index()
                assert (stored.case_ids if stored else []) == (["c0", "c1", "c2"] if i >= 2 else [])
                assert_same_index(reader.index(), truth_of(reader))
    with MaskArchive(path, "r") as reader:
        assert reader.stored_index() == truth_of(reader)


def test_zarr_tokens_change_on_overwrite(tmp_path):
    path = tmp_path / "archive.zarr"
    with MaskArchive(path, "w") as archive:
        masks, space = phantom(1)
        archive.add_case("a", masks, space=space)
        before = archive._backend.case_tokens()["a"]
        archive.add_case("a", masks, space=space, overwrite=True)
        after = archive._backend.case_tokens()["a"]
    assert before and after and before != after
    with MaskArchive(path, "r") as reader:
        assert reader.stored_index().tokens() == {"a": after}


def test_nan_statistics_of_empty_organs(archive_path):
    masks, space = phantom(3, n_organs=6, n_empty=3)
    with MaskArchive(archive_path, "w") as archive:
        archive.add_case("a", masks, space=space)
    with MaskArchive(archive_path) as archive:
        rows = archive.stored_index().organs.astype({"organ": str}).set_index("organ")
        for organ, mask in masks.items():
            row = rows.loc[organ]
            assert row["voxels"] == mask.sum()
            if not mask.any():
                assert row["volume_ml"] == 0 and not row["touches_border"]
                assert all(math.isnan(row[f]) for f in ORGAN_FIELDS if f.startswith(("bbox", "centroid")))
