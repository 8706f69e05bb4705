"""Storage presets (default: Zstd label volumes, compact: Crackle+Zstd) in every backend, copies between
presets, and the index threshold (no stored index below INDEX_MIN_CASES cases)."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from helpers import assert_case_matches, packed_chunks, packed_manifest, read_packed, suffix_of

import medmask_store.storage.archive as archive_module
from medmask_store import MaskArchive, StorageSettings
from medmask_store.model.case_data import CaseData
from medmask_store.phantom import make_phantom
from medmask_store.storage.layout import PRESETS

DEFAULT_SMALL = StorageSettings(chunk_size=16, label_level=3, layer_level=3)
COMPACT_SMALL = dataclasses.replace(StorageSettings.preset("compact"), chunk_size=16, layer_level=3)
HDF5_FILTERS = {32015: "zstd", 32766: "crackle_zstd"}
ZARR_CHAINS = {("bytes", "zstd", "crc32c"): "zstd", ("crackle_zstd", "crc32c"): "crackle_zstd"}


def label_array(path: Path, case_id: str) -> tuple[str, int]:
    """(codec, stored bytes) of a case's label volume, read from the file without medmask_store."""
    name = path.name
    if name.endswith(".zarr.zip") or name.endswith(".zarr"):
        prefix = f"cases/{case_id}/label_volume/"
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                metadata = json.loads(archive.read(prefix + "zarr.json"))
                stored = sum(i.file_size for i in archive.infolist() if i.filename.startswith(prefix + "c/"))
        else:
            metadata = json.loads((path / prefix / "zarr.json").read_text())
            stored = sum(p.stat().st_size for p in (path / prefix / "c").rglob("*") if p.is_file())
        (sharding,) = metadata["codecs"]
        assert sharding["name"] == "sharding_indexed"
        chain = tuple(codec["name"] for codec in sharding["configuration"]["codecs"])
        return ZARR_CHAINS[chain], stored
    if name.endswith(".h5"):
        with h5py.File(path, "r") as handle:
            dataset = handle[f"cases/{case_id}/label_volume"]
            plist = dataset.id.get_create_plist()
            (filter_id,) = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
            stored = sum(dataset.id.get_chunk_info(i).size for i in range(dataset.id.get_num_chunks()))
        return HDF5_FILTERS[filter_id], stored
    catalog, _ = read_packed(path)
    codec = packed_manifest(catalog, case_id, "label_volume")["codec"]
    return codec, sum(entry[-1] for entry in packed_chunks(catalog, case_id, "label_volume"))


def label_codec(path: Path, case_id: str) -> str:
    return label_array(path, case_id)[0]


def assert_same_cases(a: MaskArchive, b: MaskArchive) -> None:
    """Both archives hold the same cases: ids, spaces, mappings, metadata, statistics, every voxel."""
    assert a.case_ids() == b.case_ids()
    for case_id in a.case_ids():
        x, y = a[case_id], b[case_id]
        assert x.space == y.space
        assert x.mapping == y.mapping
        assert x.meta == y.meta
        assert x.stats == y.stats
        assert x.info.layer_names == y.info.layer_names
        np.testing.assert_array_equal(x.read_labels(include_layers=False), y.read_labels(include_layers=False))
        for name in x.organs:
            np.testing.assert_array_equal(x.read_organ(name), y.read_organ(name), err_msg=f"{case_id} {name}")


@pytest.fixture
def small_phantom():
    return make_phantom(shape=(40, 36, 30), n_organs=5, n_empty=1, seed=7)


# -- the settings ------------------------------------------------------------------------


def test_preset_values() -> None:
    assert list(PRESETS) == ["default", "compact"]
    assert StorageSettings.preset("default") == StorageSettings() == StorageSettings(64, "zstd", 19, 19)
    compact = StorageSettings.preset("compact")
    assert (compact.chunk_size, compact.label_codec, compact.label_level, compact.layer_level) == (
        64,
        "crackle_zstd",
        15,
        19,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        compact.label_level = 3  # type: ignore[misc]
    assert StorageSettings.preset("compact") == compact


@pytest.mark.parametrize("name", ["nope", "", "Compact", "DEFAULT"])
def test_unknown_preset_lists_the_presets(name: str) -> None:
    with pytest.raises(ValueError, match=rf"^unknown preset {name!r}; choose one of default, compact$"):
        StorageSettings.preset(name)


@pytest.mark.parametrize("codec", ["bogus", "packbits_zstd", "ZSTD", ""])
def test_unknown_label_codec(codec: str) -> None:
    with pytest.raises(ValueError, match=rf"^label_codec must be one of \('zstd', 'crackle_zstd'\), got {codec!r}$"):
        StorageSettings(label_codec=codec)


@pytest.mark.parametrize("size", [0, -1, 257, 1024])
def test_chunk_size_out_of_range(size: int) -> None:
    with pytest.raises(ValueError, match=rf"^chunk_size must be in 1\.\.256, got {size}$"):
        StorageSettings(chunk_size=size)


# -- presets in every backend ------------------------------------------------------------


def test_compact_archive_round_trips_bit_exact(archive_path: Path, phantom) -> None:
    masks, space = phantom
    expected = CaseData.from_masks(masks, space=space)
    with MaskArchive(archive_path, "w", COMPACT_SMALL) as archive:
        archive.add_case("s1", masks, space=space, meta={"age": 61})
    assert label_codec(archive_path, "s1") == "crackle_zstd"
    with MaskArchive(archive_path) as archive:  # reading needs no settings
        case = archive["s1"]
        assert_case_matches(case, masks)
        assert case.meta == {"age": 61}
        assert case.space == space
        stored = case.read_labels(include_layers=False)
        assert stored.dtype == expected.label_volume.dtype
        np.testing.assert_array_equal(stored, expected.label_volume)
        assert case.info.layer_names == tuple(expected.layer_names)
        region = (slice(5, 37), slice(17, 60), slice(0, 33))
        np.testing.assert_array_equal(case.read_region(region), case.read_labels()[region])


def test_compact_uint16_label_volume(archive_path: Path) -> None:
    labels = np.zeros((24, 20, 18), dtype=np.uint16)
    labels[1:12, 2:15, 3:9] = 300
    labels[10:24, 0:7, 5:18] = 2
    labels[5, 5, 5] = 65535
    mapping = {"a": 300, "b": 2, "c": 65535}
    with MaskArchive(archive_path, "w", COMPACT_SMALL) as archive:
        archive.add_case("u16", labels, mapping=mapping)
    with MaskArchive(archive_path) as archive:
        stored = archive["u16"].read_labels()
        assert stored.dtype == np.uint16
        np.testing.assert_array_equal(stored, labels)
        assert_case_matches(archive["u16"], {name: labels == value for name, value in mapping.items()})


def test_presets_mix_in_one_archive(archive_path: Path, phantom, small_phantom) -> None:
    masks_a, space_a = phantom
    masks_b, space_b = small_phantom
    with MaskArchive(archive_path, "a", DEFAULT_SMALL) as archive:
        archive.add_case("A", masks_a, space=space_a)
    with MaskArchive(archive_path, "a", COMPACT_SMALL) as archive:
        archive.add_case("B", masks_b, space=space_b)
        assert_case_matches(archive["A"], masks_a)  # a compact writer reads default cases
    assert (label_codec(archive_path, "A"), label_codec(archive_path, "B")) == ("zstd", "crackle_zstd")
    with MaskArchive(archive_path) as archive:
        assert archive.case_ids() == ["A", "B"]
        assert_case_matches(archive["A"], masks_a)
        assert_case_matches(archive["B"], masks_b)
    # overwriting a case stores it with the writer's preset
    with MaskArchive(archive_path, "a", COMPACT_SMALL) as archive:
        archive.add_case("A", masks_a, space=space_a, overwrite=True)
    with MaskArchive(archive_path, "a", DEFAULT_SMALL) as archive:
        archive.add_case("B", masks_b, space=space_b, overwrite=True)
    assert (label_codec(archive_path, "A"), label_codec(archive_path, "B")) == ("crackle_zstd", "zstd")
    with MaskArchive(archive_path) as archive:
        assert_case_matches(archive["A"], masks_a)
        assert_case_matches(archive["B"], masks_b)


def test_compact_label_volume_is_smaller(archive_path: Path, tmp_path: Path) -> None:
    """Preset settings (64^3 chunks) on a phantom with 16 organs: measured 0.75x in every backend."""
    masks, space = make_phantom(shape=(64, 64, 48), n_organs=16, n_empty=0, seed=1)
    sizes = {}
    for preset in ("default", "compact"):
        path = tmp_path / f"{preset}{suffix_of(archive_path)}"
        with MaskArchive(path, "w", StorageSettings.preset(preset)) as archive:
            archive.add_case("c", masks, space=space)
        codec, sizes[preset] = label_array(path, "c")
        assert codec == StorageSettings.preset(preset).label_codec
        with MaskArchive(path) as archive:
            assert_case_matches(archive["c"], masks)
    assert sizes["compact"] < 0.8 * sizes["default"], sizes


def test_compact_label_chunks_are_the_same_bytes_in_every_backend(tmp_path: Path, phantom) -> None:
    """crackle_zstd + crc32c everywhere: the .msk data, the HDF5 chunks and the Zarr shard hold the same bytes."""
    masks, space = phantom
    for suffix in (".zarr", ".h5", ".msk"):
        with MaskArchive(tmp_path / f"a{suffix}", "w", COMPACT_SMALL) as archive:
            archive.add_case("c", masks, space=space)
    catalog, data = read_packed(tmp_path / "a.msk")
    msk = {tuple(e[:3]): data[e[3] : e[3] + e[4]] for e in packed_chunks(catalog, "c", "label_volume")}
    assert len(msk) > 10
    assert all(chunk[:4] == b"CKZ1" for chunk in msk.values())
    with h5py.File(tmp_path / "a.h5", "r") as handle:
        dataset = handle["cases/c/label_volume"]
        infos = [dataset.id.get_chunk_info(i) for i in range(dataset.id.get_num_chunks())]
        h5 = {tuple(o // 16 for o in i.chunk_offset): dataset.id.read_direct_chunk(i.chunk_offset)[1] for i in infos}
    assert h5 == msk
    # one shard of (5, 4, 4) chunks for the (70, 60, 50) volume; its index (offset, length per chunk, C order,
    # all ones for absent chunks) and the index's crc32c end the file
    shard = (tmp_path / "a.zarr" / "cases" / "c" / "label_volume" / "c" / "0" / "0" / "0").read_bytes()
    index = np.frombuffer(shard[-(5 * 4 * 4 * 16 + 4) : -4], dtype="<u8").reshape(5, 4, 4, 2)
    zarr_chunks = {
        coords: shard[int(offset) : int(offset + length)]
        for coords, (offset, length) in zip(np.ndindex(5, 4, 4), index.reshape(-1, 2))
        if offset != 2**64 - 1
    }
    assert zarr_chunks == msk


@pytest.mark.parametrize("direction", ["default-to-compact", "compact-to-default"])
def test_copy_to_between_presets_is_lossless(archive_path: Path, tmp_path: Path, phantom, small_phantom, direction):
    source_settings, target_settings = (
        (DEFAULT_SMALL, COMPACT_SMALL) if direction == "default-to-compact" else (COMPACT_SMALL, DEFAULT_SMALL)
    )
    masks, space = phantom
    small, small_space = small_phantom
    with MaskArchive(archive_path, "w", source_settings) as archive:
        archive.add_case("s1", masks, space=space, meta={"age": 61, "sex": "F"})
        archive.add_case("s2", small, space=small_space, meta={"age": 47})
    # to the same backend and to another one
    other = ".zarr" if suffix_of(archive_path) == ".msk" else ".msk"
    destinations = [tmp_path / "copies" / f"copy{suffix}" for suffix in (suffix_of(archive_path), other)]
    destinations[0].parent.mkdir()
    with MaskArchive(archive_path) as source:
        for destination in destinations:
            copied = source.copy_to(destination, settings=target_settings)
            assert copied.path == destination
            with MaskArchive(destination) as target:
                assert_same_cases(source, target)
                assert_case_matches(target["s1"], masks)
                assert target.query("age > 50") == ["s1"]
            for case_id in ("s1", "s2"):
                assert label_codec(destination, case_id) == target_settings.label_codec
    for case_id in ("s1", "s2"):
        assert label_codec(archive_path, case_id) == source_settings.label_codec


def test_copy_to_keeps_the_source_settings_by_default(archive_path: Path, tmp_path: Path, small_phantom) -> None:
    masks, space = small_phantom
    with MaskArchive(archive_path, "w", COMPACT_SMALL) as archive:
        archive.add_case("c", masks, space=space)
        archive.copy_to(tmp_path / "same.msk")
    assert label_codec(tmp_path / "same.msk", "c") == "crackle_zstd"
    with MaskArchive(archive_path) as archive:  # a reader's settings are the default ones
        archive.copy_to(tmp_path / "reader.msk")
    assert label_codec(tmp_path / "reader.msk", "c") == "zstd"
    for name in ("same.msk", "reader.msk"):
        with MaskArchive(tmp_path / name) as copy:
            assert_case_matches(copy["c"], masks)


# -- the index threshold -----------------------------------------------------------------


def tiny_cases(n: int) -> dict[str, tuple[dict[str, np.ndarray], object]]:
    return {f"c{i}": make_phantom(shape=(20, 18, 16), n_organs=2, n_empty=1, seed=i) for i in range(n)}


def expected_rows(cases: dict, ages: dict[str, int]) -> list[tuple[str, str, int, int]]:
    """(case_id, organ, voxels, age) of every case x organ, sorted."""
    return sorted(
        (case_id, name, int(mask.sum()), ages[case_id])
        for case_id, (masks, _) in cases.items()
        for name, mask in masks.items()
    )


def stats_rows(stats: pd.DataFrame) -> list[tuple[str, str, int, int]]:
    columns = [stats[name].tolist() for name in ("case_id", "organ", "voxels", "age")]
    return sorted((str(c), str(o), int(v), int(a)) for c, o, v, a in zip(*columns))


def test_small_archive_stores_no_index_yet_answers_queries(archive_path: Path, monkeypatch) -> None:
    assert archive_module.INDEX_MIN_CASES == 32
    cases = tiny_cases(3)
    ages = {"c0": 50, "c1": 60, "c2": 70}
    with MaskArchive(archive_path, "w", DEFAULT_SMALL) as archive:
        for case_id, (masks, space) in cases.items():
            archive.add_case(case_id, masks, space=space, meta={"age": ages[case_id]})
        assert archive.stores_index is False
    if archive_path.name.endswith(".zarr"):
        assert not (archive_path / "index.npz.zst").exists()
    if archive_path.name.endswith(".msk"):
        assert read_packed(archive_path)[0]["index"] is None
    with MaskArchive(archive_path) as archive:
        assert archive.stores_index is False
        assert archive.stored_index() is None
        assert archive.query("age >= 60") == ["c1", "c2"]
        liver = {case_id: int(masks["liver"].sum()) for case_id, (masks, _) in cases.items()}
        threshold = sorted(liver.values())[1]
        assert archive.query(f"liver.voxels >= {threshold}") == sorted(c for c, v in liver.items() if v >= threshold)
        assert archive.query("spleen.voxels > 0 and not (age == 50)") == ["c1", "c2"]
        stats = archive.stats(include_empty=True)
        assert stats_rows(stats) == expected_rows(cases, ages)
        assert len(stats) == 3 * 4  # liver, spleen, rib_right_12 and one empty mask per case
    # the same answers as from a stored index
    monkeypatch.setattr(archive_module, "INDEX_MIN_CASES", 1)
    with MaskArchive(archive_path, "r+") as archive:
        archive.reindex()
    with MaskArchive(archive_path) as archive:
        assert archive.stored_index() is not None
        assert archive.stored_index().case_ids == ["c0", "c1", "c2"]
        assert archive.query("age >= 60") == ["c1", "c2"]
        # same values; the categorical case_id/organ columns differ only in their categories' dtype
        # (object when built from case attributes, str when loaded from a stored index, pandas 3)
        pd.testing.assert_frame_equal(archive.stats(include_empty=True), stats, check_dtype=False, check_categorical=False)


def test_index_is_stored_from_index_min_cases_and_removed_below(archive_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(archive_module, "INDEX_MIN_CASES", 3)
    cases = tiny_cases(4)
    ages = {case_id: 40 + 10 * i for i, case_id in enumerate(cases)}
    ids = list(cases)

    def add(archive: MaskArchive, case_id: str) -> None:
        masks, space = cases[case_id]
        archive.add_case(case_id, masks, space=space, meta={"age": ages[case_id]})

    with MaskArchive(archive_path, "w", DEFAULT_SMALL) as archive:
        add(archive, "c0")
        add(archive, "c1")
        assert archive.stores_index is False
    with MaskArchive(archive_path) as archive:
        assert archive.stored_index() is None
        assert archive.query("age > 45") == ["c1"]
    with MaskArchive(archive_path, "a", DEFAULT_SMALL) as archive:
        add(archive, "c2")
        assert archive.stores_index is True
    with MaskArchive(archive_path) as archive:
        assert archive.stores_index is True
        index = archive.stored_index()
        assert index is not None
        assert index.case_ids == ids[:3]
        assert archive.query("age > 45") == ["c1", "c2"]
    with MaskArchive(archive_path, "a", DEFAULT_SMALL) as archive:
        add(archive, "c3")
    with MaskArchive(archive_path) as archive:
        assert archive.stored_index().case_ids == ids
    with MaskArchive(archive_path, "a", DEFAULT_SMALL) as archive:
        archive.delete_case("c0")
        assert archive.stores_index is True  # 3 cases left
        archive.delete_case("c3")
        assert archive.stores_index is False
    with MaskArchive(archive_path) as archive:
        assert archive.stores_index is False
        assert archive.stored_index() is None
        assert archive.case_ids() == ["c1", "c2"]
        assert archive.query("age > 45") == ["c1", "c2"]
        assert sorted(set(archive.stats()["case_id"])) == ["c1", "c2"]
    if archive_path.name.endswith(".zarr"):
        assert not (archive_path / "index.npz.zst").exists()
    if archive_path.name.endswith(".msk"):
        assert read_packed(archive_path)[0]["index"] is None
