"""The archive index: columnar segments (JSON and integer columns, no pickle), incremental updates,
and consistency with the stored cases.

- a stored index reads back equal to the index it stores, for random sets of cases (Hypothesis), and
  after random removals and additions applied incrementally to the stored index;
- only organs with voxels have rows; rounded statistics are stored exactly, others as float64;
- adding a case rewrites the last segment and the manifest only, deleting one the segment holding it;
  a query reads the manifest and the columns it uses;
- blobs are checked (checksum, declared sizes, row references) before use; a pickle is never loaded;
- every backend: after adds, a delete and an overwrite, the stored index lists exactly the present
  cases with their current statistics, and ``index()`` equals the truth;
- ``.zarr``: the stored index may be stale (saved on close / every 256 writes), readers reconcile it:
  cases written or deleted by another writer object, or a deleted index.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import zstandard
from helpers import index_blobs, ok, read_packed, suffix_of, write_index_blobs, write_packed
from hypothesis import given, settings
from hypothesis import strategies as st
from spacetransformer import Space

from medmask_store import CaseInfo, CorruptMetadata, MaskArchive, OrganStats
from medmask_store.codecs.chunks import append_crc32c, strip_crc32c
from medmask_store.model.validation import validate_case_id, validate_organ_name
from medmask_store.phantom import make_phantom
from medmask_store.query import ORGAN_FIELDS, ArchiveIndex
from medmask_store.query.index import MANIFEST

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
    """Same cases (ids, tokens, metadata, mappings) and same organ rows, whatever the column dtypes."""
    got_organs, got_cases = normalized(got)
    expected_organs, expected_cases = normalized(expected)
    pd.testing.assert_frame_equal(got_cases, expected_cases)
    pd.testing.assert_frame_equal(got_organs, expected_organs, check_exact=True)
    assert got.mappings() == expected.mappings()


def truth_of(archive: MaskArchive) -> ArchiveIndex:
    """The index built from every present case's attributes, with the backend's current version tokens."""
    tokens = archive._backend.case_tokens()  # the Backend protocol's method; tokens are backend-defined
    assert sorted(tokens) == archive.case_ids()
    return ArchiveIndex.from_cases((archive[c].info, tokens[c]) for c in archive.case_ids())


def voxels_in(index: ArchiveIndex, case_id: str) -> dict[str, int]:
    """Voxels of every organ of the case's mapping (0 for empty organs, which have no row)."""
    rows = index.organ_rows(["voxels"], include_empty=True)
    rows = rows[rows["case_id"].astype(str) == case_id]
    return dict(zip(rows["organ"].astype(str), rows["voxels"].astype(int)))


class Store(dict):
    """Index blobs in memory, as a backend keeps them; counts reads by blob name."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def read(self, name: str) -> bytes | None:
        self.reads.append(name)
        return self.get(name)

    def save(self, index: ArchiveIndex, **options) -> tuple[dict[str, bytes], list[str]]:
        blobs, unused = index.changes(**options)
        assert list(blobs)[-1] == MANIFEST  # the manifest last: it publishes the others
        self.update(blobs)
        for name in unused:
            del self[name]
        return blobs, unused

    def load(self) -> ArchiveIndex:
        index = ArchiveIndex.load(self.read)
        assert index is not None
        return index

    def segments(self) -> set[str]:
        return {name.partition("/")[0] for name in self if name != MANIFEST}


# -- storing ----------------------------------------------------------------------------------

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
# rounded as our statistics are (exact in integer units), or any float (stored as float64)
decimals = st.integers(-(10**9), 10**9).map(lambda n: round(n / 1000, 3)) | finite


@st.composite
def organ_stats(draw) -> OrganStats:
    if draw(st.booleans()):
        return OrganStats.empty()
    bbox = []
    for _ in range(3):
        start = draw(st.integers(0, 500))
        bbox.append((start, start + draw(st.integers(1, 500))))
    return OrganStats(
        voxels=draw(st.integers(1, 10**12)),
        volume_ml=draw(st.integers(0, 10**12).map(lambda n: round(n / 10**6, 6)) | finite),
        bbox=tuple(bbox),
        centroid_voxel=tuple(draw(decimals) for _ in range(3)),
        centroid_lps_mm=tuple(draw(decimals) for _ in range(3)),
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
    store = Store()
    store.save(index)
    back = store.load()
    assert back == index
    assert_same_index(back, index)
    # the rows hold what went in: non-empty organs only, every organ in the mapping
    assert back.case_ids == sorted(info.case_id for info, _ in cases)
    assert back.tokens() == {info.case_id: token for info, token in cases}
    for info, _ in cases:
        assert voxels_in(back, info.case_id) == {o: info.stats[o].voxels for o in info.mapping}
        assert back.cases.set_index("case_id").loc[info.case_id, "meta"] == info.meta
        assert back.mappings()[info.case_id] == info.mapping
    assert len(back.organs) == sum(1 for info, _ in cases for s in info.stats.values() if s.voxels)


@settings(max_examples=30, deadline=None)
@given(index_inputs, st.data())
def test_incremental_changes_match_rebuilding(cases, data):
    """``replace`` on a stored index, stored again incrementally, equals the index built from the final cases."""
    store = Store()
    store.save(ArchiveIndex.from_cases(cases), max_rows=4)
    index = store.load()
    removed = set(data.draw(st.lists(st.sampled_from([i.case_id for i, _ in cases]), unique=True)))
    added = data.draw(st.lists(case_infos(), max_size=3, unique_by=lambda pair: pair[0].case_id))
    index.replace(removed, added)
    added_ids = {info.case_id for info, _ in added}
    final = [pair for pair in cases if pair[0].case_id not in removed | added_ids] + added
    assert_same_index(index, ArchiveIndex.from_cases(final))
    store.save(index, max_rows=4)
    assert_same_index(store.load(), ArchiveIndex.from_cases(final))
    referenced = {s["name"] for s in manifest_of(store)["segments"]}
    assert store.segments() == referenced  # every unused blob was named for deletion


def manifest_of(store: dict[str, bytes]) -> dict:
    return json.loads(zstandard.ZstdDecompressor().decompress(strip_crc32c(store[MANIFEST])))


def test_empty_index_round_trip():
    store = Store()
    store.save(ArchiveIndex())
    back = store.load()
    assert back == ArchiveIndex() and back.case_ids == [] and len(back.organs) == 0
    assert list(back.organs.columns) == ["case_id", "organ", *ORGAN_FIELDS]
    assert set(store) == {MANIFEST}


def info_of(case_id: str, organs: dict[str, int], meta: dict | None = None) -> CaseInfo:
    """A case with the given organs' voxel counts (0: empty) and rounded statistics."""
    stats = {
        organ: OrganStats(n, round(n * 0.003375, 6), ((0, 2), (1, 3), (2, 4)), (0.5, 1.5, 2.5), (-1.25, 2.5, 30.125), True)
        if n else OrganStats.empty()
        for organ, n in organs.items()
    }  # fmt: skip
    mapping = {organ: value for value, organ in enumerate(organs, 1)}
    return CaseInfo(case_id, Space(shape=(8, 8, 8)), mapping, (), stats, meta or {}, {})


def test_only_non_empty_organs_have_rows_and_rounded_statistics_are_integers():
    store = Store()
    store.save(ArchiveIndex.from_cases([(info_of("a", {"liver": 120, "spleen": 0, "kidney": 7}), "")]))
    (segment,) = manifest_of(store)["segments"]
    assert segment["rows"] == 2  # spleen is empty: no row
    kinds = {column: kind for column, (kind, _, _) in segment["blobs"].items()}
    assert kinds["volume_ml"] == "<u4" and kinds["centroid_lps_x_mm"] == "<i2"  # 405000 µl; -1250 µm
    assert kinds["voxels"] == kinds["bbox_i1"] == "|u1" and kinds["centroid_i"] == "<u2"  # 120, 2; 500 milli-voxels
    assert "<f8" not in kinds.values()
    rows = store.load().organ_rows(include_empty=True).astype({"organ": str}).set_index("organ")
    assert rows.loc["liver", "volume_ml"] == 0.405 and rows.loc["liver", "centroid_lps_z_mm"] == 30.125
    assert rows.loc["liver", "centroid_ras_x_mm"] == 1.25 and rows.loc["kidney", "value"] == 3
    assert rows.loc["spleen", "voxels"] == 0 and rows.loc["spleen", "volume_ml"] == 0
    assert all(math.isnan(rows.loc["spleen", f]) for f in ORGAN_FIELDS if f.startswith(("bbox", "centroid")))


def test_adding_a_case_rewrites_the_last_segment_and_the_manifest_only():
    store = Store()
    cases = [(info_of(f"c{i:02d}", {"liver": 10 + i, "spleen": 5, "aorta": i}), str(i)) for i in range(20)]
    store.save(ArchiveIndex.from_cases(cases), max_rows=8)
    before = manifest_of(store)["segments"]
    assert len(before) == 10 and all(s["rows"] <= 8 for s in before)  # 59 rows, cut between cases (3 rows each)
    index = store.load()
    index.replace(set(), [(info_of("new", {"liver": 3, "spleen": 4}), "x")])
    blobs, unused = store.save(index, max_rows=8)
    after = manifest_of(store)["segments"]
    assert [s["name"] for s in after[:-1]] == [s["name"] for s in before[:-1]]  # untouched
    assert {name.partition("/")[0] for name in unused} == {before[-1]["name"]}
    assert {name.partition("/")[0] for name in blobs if name != MANIFEST} == {after[-1]["name"]}
    # deleting a case rewrites only the segment holding it, merged into the unfilled last one
    index = store.load()
    holder = next(s["name"] for s in after if s["cases"] and "c05" in json_column(store, s["name"], "case_id"))
    index.replace({"c05"}, [])
    blobs, unused = store.save(index, max_rows=8)
    assert {name.partition("/")[0] for name in unused} == {holder, after[-1]["name"]}
    assert len({name.partition("/")[0] for name in blobs if name != MANIFEST}) == 1
    assert "c05" not in store.load().case_ids and len(store.load().case_ids) == 20


def json_column(store: dict[str, bytes], segment: str, column: str) -> list:
    return json.loads(zstandard.ZstdDecompressor().decompress(strip_crc32c(store[f"{segment}/{column}"])))


def test_a_query_reads_the_manifest_and_the_columns_it_uses():
    from medmask_store.query.expression import evaluate_query

    store = Store()
    cases = [(info_of(f"c{i}", {"liver": 10 + i, "spleen": i % 2}, {"age": 50 + i, "site": "x"}), "") for i in range(6)]
    store.save(ArchiveIndex.from_cases(cases), max_rows=4)
    store.reads.clear()
    assert evaluate_query("liver.voxels > 12 and age < 55", store.load()) == ["c3", "c4"]
    age = {s["name"]: s["meta"].index("age") for s in manifest_of(store)["segments"]}
    read = {(name.partition("/")[2] if name != MANIFEST else name) for name in store.reads}
    assert read == {MANIFEST, "case_id", "case", "organ", "voxels", "mapping", "mappings", *{f"meta.{n}" for n in age.values()}}
    assert len(store.reads) == len(set(store.reads))  # each blob once


@pytest.mark.parametrize("damage", ["checksum", "size", "row", "pickle"])
def test_damaged_or_crafted_blobs_are_refused(tmp_path, damage):
    sentinel = tmp_path / "unpickled"
    store = Store()
    store.save(ArchiveIndex.from_cases([(info_of("a", {"liver": 120, "spleen": 3}), "")]))
    segment = manifest_of(store)["segments"][0]
    name = f"{segment['name']}/case_id"
    if damage == "checksum":
        data = bytearray(store[name])
        data[3] ^= 1
        store[name] = bytes(data)
        match = "fails its checksum"
    elif damage == "size":  # a blob larger than the manifest declares is not decompressed
        store[name] = append_crc32c(zstandard.ZstdCompressor().compress(b'["a"' + b' ' * 10**6 + b"]"))
        match = "does not declare the manifest's"
    elif damage == "row":  # a row of a case the segment does not hold
        name = f"{segment['name']}/case"
        kind, size, scale = segment["blobs"]["case"]
        store[name] = append_crc32c(zstandard.ZstdCompressor().compress(bytes([0, 7])))
        match = "malformed \\(not a case column of 1 cases\\)"
    else:  # a pickle where JSON is expected: refused, never unpickled
        payload = pickle.dumps(_Payload(str(sentinel)))
        manifest = manifest_of(store)
        manifest["segments"][0]["blobs"]["case_id"][1] = len(payload)
        store[MANIFEST] = append_crc32c(zstandard.ZstdCompressor().compress(json.dumps(manifest).encode()))
        store[name] = append_crc32c(zstandard.ZstdCompressor().compress(payload))
        match = "is malformed"
    with pytest.raises(CorruptMetadata, match=match):
        store.load().organ_rows()
    assert not sentinel.exists()
    if damage == "pickle":  # the sentinel works: unpickling really would have created it
        pickle.loads(pickle.dumps(_Payload(str(sentinel))))
        assert sentinel.exists()


class _Payload:
    """Unpickling this creates a file: a pickle-based loader would betray itself."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_manifest_declaring_too_much_is_refused_before_decompressing():
    store = Store()
    store[MANIFEST] = append_crc32c(zstandard.ZstdCompressor().compress(b" " * (65 << 20)))
    with pytest.raises(CorruptMetadata, match="declares"):
        store.load()


def test_stored_index_blobs_are_json_and_plain_numbers(archive_path):
    with MaskArchive(archive_path, "w") as archive:
        for i in range(3):
            masks, space = phantom(i)
            archive.add_case(f"c{i}", masks, space=space, meta={"age": 50 + i, "site": "x", "tags": [1, 2]})
    blobs = index_blobs(archive_path)
    manifest = manifest_of(blobs)
    for segment in manifest["segments"]:
        for column, (kind, size, _) in segment["blobs"].items():
            raw = zstandard.ZstdDecompressor().decompress(strip_crc32c(blobs[f"{segment['name']}/{column}"]))
            assert len(raw) == size
            if kind == "json":
                json.loads(raw)
    with MaskArchive(archive_path) as archive:
        assert_same_index(ArchiveIndex.load(blobs.get), truth_of(archive))


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
    write_index_blobs(path, {})


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
    shutil.rmtree(path / "index")
    with MaskArchive(path, "r") as reader:
        assert reader.stored_index() is None
        index = reader.index()
        assert_same_index(index, truth_of(reader))
        for case_id, counts in expected.items():
            assert voxels_in(index, case_id) == counts
    assert not (path / "index").exists()  # mode "r" never writes
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
        rows = archive.stored_index().organ_rows(include_empty=True).astype({"organ": str}).set_index("organ")
        for organ, mask in masks.items():
            row = rows.loc[organ]
            assert row["voxels"] == mask.sum()
            if not mask.any():
                assert row["volume_ml"] == 0 and not row["touches_border"]
                assert all(math.isnan(row[f]) for f in ORGAN_FIELDS if f.startswith(("bbox", "centroid")))


# -- the one-blob index of earlier releases, concurrent writers, garbage ---------------------------


def store_legacy_index(path: Path) -> None:
    """Replace the stored index by one in the place and shape of the one-blob index of earlier releases."""
    write_index_blobs(path, {})
    legacy = append_crc32c(b"an npz of an earlier release")
    suffix = suffix_of(path)
    if suffix == ".zarr":
        (path / "index.npz.zst").write_bytes(legacy)
    elif suffix == ".zarr.zip":
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr("index.npz.zst", legacy)
    elif suffix == ".h5":
        with h5py.File(path, "r+") as f:
            f.create_dataset("index", data=np.frombuffer(legacy, dtype=np.uint8))
    else:
        catalog, data = read_packed(path)
        catalog["index"] = [len(data), len(legacy)]
        write_packed(path, catalog, data + legacy)


def test_an_index_of_an_earlier_release_is_ignored_then_replaced(archive_path):
    build_edited_archive(archive_path)
    store_legacy_index(archive_path)
    with MaskArchive(archive_path) as archive:
        assert archive.stored_index() is None
        assert archive.query("note == 'redo'") == ["c"]  # answered from the cases
    if suffix_of(archive_path) == ".zarr.zip":
        return  # a zip is rewritten whole by its next writer
    with MaskArchive(archive_path, "a") as archive:
        masks, space = phantom(60)
        archive.add_case("z", masks, space=space)
    with MaskArchive(archive_path) as archive:
        assert archive.stored_index() == truth_of(archive)
    assert not (archive_path / "index.npz.zst").exists()
    if suffix_of(archive_path) == ".h5":
        with h5py.File(archive_path) as f:
            assert isinstance(f["index"], h5py.Group)


def test_a_reader_whose_index_another_writer_replaced_reads_the_new_one(tmp_path):
    path = tmp_path / "archive.zarr"
    build_edited_archive(path)
    with MaskArchive(path) as reader:
        assert reader.query("age >= 0") == ["a", "c", "d", "e"]  # its index cached, columns of age read
        with MaskArchive(path, "a") as writer:
            writer.delete_case("d")
        assert "d" not in reader.query("note == 'redo' or age >= 0")  # reads a column its old manifest named


def test_object_store_writers_leave_superseded_blobs_for_reindex(tmp_path, monkeypatch):
    """Writers that take no lock (object stores) never delete a blob another writer may still use."""
    path = tmp_path / "archive.zarr"
    build_edited_archive(path)
    from medmask_store.storage.zarr_directory import ZarrDirectoryBackend

    monkeypatch.setattr(ZarrDirectoryBackend, "shared_index_blobs", True)
    with MaskArchive(path, "a") as writer:
        masks, space = phantom(61)
        writer.add_case("y", masks, space=space)
    with MaskArchive(path) as reader:
        used = {s.name for s in reader.stored_index().segments}
    stored = {name.partition("/")[0] for name in index_blobs(path) if name != MANIFEST}
    assert stored > used  # the superseded last segment is still there
    (path / "index" / "stray").write_bytes(b"left by a writer killed before its manifest")
    ok("reindex", path)
    with MaskArchive(path) as reader:
        used = {s.name for s in reader.stored_index().segments}
        assert reader.stored_index() == truth_of(reader)
    assert {name.partition("/")[0] for name in index_blobs(path) if name != MANIFEST} == used


def test_add_rows_builds_what_from_cases_builds_and_refuses_rows_it_cannot_place():
    infos = [(info_of("a", {"liver": 120, "spleen": 4, "aorta": 0}, {"age": 3}), "t"), (info_of("b", {"liver": 5}), "")]
    truth = ArchiveIndex.from_cases(infos)
    rows = truth.organ_rows([f for f in ORGAN_FIELDS if f != "value" and not f.startswith("centroid_ras")])
    cases = truth.cases
    mappings = [truth.mappings()[c] for c in cases["case_id"]]
    index = ArchiveIndex()
    index.add_rows(cases, mappings, rows.astype({"case_id": str, "organ": str}))
    assert index == truth
    with pytest.raises(ValueError, match="not among the cases"):
        ArchiveIndex().add_rows(cases, mappings, rows.assign(case_id="zzz"))
    with pytest.raises(ValueError, match="not in their case's mapping"):
        ArchiveIndex().add_rows(cases, mappings, rows.astype({"case_id": str, "organ": str}).assign(case_id="b"))


def test_zarr_queries_list_no_case_while_the_listing_is_unchanged(tmp_path, monkeypatch):
    from medmask_store.storage.zarr_directory import ZarrDirectoryBackend

    path = tmp_path / "archive.zarr"
    build_edited_archive(path)

    def refuse(self):
        raise AssertionError("the cases were listed")

    with monkeypatch.context() as patched:
        patched.setattr(ZarrDirectoryBackend, "case_ids", refuse)
        patched.setattr(ZarrDirectoryBackend, "case_tokens", refuse)
        with MaskArchive(path) as reader:
            assert reader.query("note == 'redo'") == ["c"]
    with MaskArchive(path, "a") as writer:
        masks, space = phantom(70)
        writer.add_case("f", masks, space=space, meta={"note": "redo"})
        writer._modified.clear()  # as if killed before it saved the index: only .listing tells
    with MaskArchive(path) as reader:
        assert reader.query("note == 'redo'") == ["c", "f"]


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["<i2", "<i4", "<i8", "<f8"]),
    st.lists(st.integers(-(2**15), 2**15 - 1), max_size=300),
)
def test_column_bytes_are_shuffled_as_numcodecs_shuffles_them(kind, numbers):
    """Columns are byte-shuffled with NumPy (a query need not import numcodecs) in numcodecs' ``Shuffle``
    layout, so indexes written either way read alike; and they decode to what was encoded."""
    import numcodecs

    from medmask_store.query.segments import _decode, _encode

    values = np.asarray(numbers, dtype=kind)
    descriptor, blob = _encode(values, scale=0)
    little = np.ascontiguousarray(values, dtype=np.dtype(descriptor[0]))
    raw = zstandard.ZstdDecompressor().decompress(strip_crc32c(blob))
    expected = numcodecs.Shuffle(little.itemsize).encode(little.tobytes()) if little.itemsize > 1 else little.tobytes()
    assert raw == bytes(expected)
    decoded = _decode(blob, descriptor, len(numbers), "test")
    assert decoded.tolist() == values.tolist()
