"""The packed single-file backend (``.msk``): layout, size, magic-byte sniffing, corruption, locking,
copy-on-write visibility, and chunk reads by ``os.pread``."""

from __future__ import annotations

import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    assert_case_matches,
    box,
    flip_byte,
    packed_chunks,
    packed_manifest,
    read_packed,
    reseal_packed_case,
    side_files,
    snapshot,
    write_packed,
)

from medmask_store import (
    ArchiveLocked,
    CorruptArchive,
    CorruptChunk,
    CorruptMetadata,
    DamagedDataWarning,
    InvalidArchive,
    MaskArchive,
    StorageSettings,
)
from medmask_store.codecs.chunks import append_crc32c
from medmask_store.model.manifest import unseal
from medmask_store.phantom import make_phantom

SMALL = StorageSettings(chunk_size=16, label_level=3, layer_level=3)
COMPACT_SMALL = StorageSettings(chunk_size=16, label_codec="crackle_zstd", label_level=3, layer_level=3)
HEADER = 13  # magic, version, catalog length, catalog crc32c
ALL_SUFFIXES = ".zarr.zip, .zarr, .h5, .hdf5, .msk"


def data_start(path: Path) -> int:
    """File offset of the data section (header + catalog)."""
    return HEADER + struct.unpack_from("<I", path.read_bytes(), 5)[0]


def stored_chunks(path: Path, case_id: str, array: str) -> list[list[int]]:
    """[coords..., offset, length] of every stored chunk of an array, from the catalog."""
    catalog, _ = read_packed(path)
    return packed_chunks(catalog, case_id, array)


@pytest.fixture
def small_phantom() -> tuple[dict[str, np.ndarray], object]:
    return make_phantom(shape=(40, 36, 30), n_organs=4, n_empty=1, seed=3)


@pytest.fixture
def packed(tmp_path: Path, phantom) -> Path:
    """tmp_path/one.msk: the phantom as case 's1' with meta, written with 16^3 chunks."""
    masks, space = phantom
    path = tmp_path / "one.msk"
    with MaskArchive(path, "w", SMALL) as archive:
        archive.add_case("s1", masks, space=space, meta={"age": 61})
    return path


# -- layout and size ---------------------------------------------------------------------


def test_file_layout(packed: Path, phantom) -> None:
    masks, _ = phantom
    raw = packed.read_bytes()
    assert raw[:4] == b"MSKP"
    assert raw[4] == 2
    catalog, data = read_packed(packed)
    assert data_start(packed) + len(data) == len(raw)
    assert unseal(catalog["attributes"]["medmask_store"], "root") == {"format_version": 3, "kind": "archive"}
    assert catalog["index"] is None  # one case: no stored index
    assert list(catalog["cases"]) == ["s1"]
    case = catalog["cases"]["s1"]
    assert set(case) == {"attributes", "chunks"}
    assert unseal(case["attributes"]["medmask_store"], "case")["meta"]["age"] == 61
    arrays = case["attributes"]["medmask_store"]["arrays"]
    assert sorted(arrays) == sorted(case["chunks"]) == ["binary_layers", "label_volume", "organ_chunk_voxels"]
    labels, layers, counts = arrays["label_volume"], arrays["binary_layers"], arrays["organ_chunk_voxels"]
    assert (labels["shape"], labels["dtype"], labels["chunks"], labels["codec"]) == (
        [70, 60, 50],
        "|u1",
        [16] * 3,
        "zstd",
    )
    assert (layers["dtype"], layers["chunks"], layers["codec"]) == ("|b1", [1, 16, 16, 16], "packbits_zstd")
    organs = len(unseal(case["attributes"]["medmask_store"], "case")["mapping"])
    assert (counts["shape"], counts["dtype"], counts["chunks"], counts["codec"]) == ([organs, 80], "<u4", [organs, 80], "zstd")
    # chunks are packed back to back from the start of the data section, nothing else in between
    label_chunks, layer_chunks, count_chunks = (case["chunks"][name] for name in ("label_volume", "binary_layers", "organ_chunk_voxels"))
    assert (labels["stored"], layers["stored"], counts["stored"]) == (len(label_chunks), len(layer_chunks), len(count_chunks))
    entries = label_chunks + layer_chunks + count_chunks
    assert [e[-2] for e in entries] == list(np.cumsum([0] + [e[-1] for e in entries])[:-1])
    assert sum(e[-1] for e in entries) == len(data)
    # every label chunk is a Zstd frame (then its crc32c, as in Zarr); every layer chunk a PackBits+Zstd frame
    assert all(data[e[-2] : e[-2] + 4] == b"\x28\xb5\x2f\xfd" for e in label_chunks)
    assert all(data[e[-2] : e[-2] + 4] == b"PBZ1" for e in layer_chunks)
    with MaskArchive(packed) as archive:
        assert archive.backend == "msk"
        assert_case_matches(archive["s1"], masks)


def test_compact_label_chunks_in_a_packed_file(tmp_path: Path, small_phantom) -> None:
    masks, space = small_phantom
    path = tmp_path / "compact.msk"
    with MaskArchive(path, "w", COMPACT_SMALL) as archive:
        archive.add_case("c", masks, space=space)
    catalog, data = read_packed(path)
    assert packed_manifest(catalog, "c", "label_volume")["codec"] == "crackle_zstd"
    assert all(data[e[-2] : e[-2] + 4] == b"CKZ1" for e in packed_chunks(catalog, "c", "label_volume"))
    with MaskArchive(path) as archive:
        assert_case_matches(archive["c"], masks)


def test_one_case_file_is_far_smaller_than_zarr_zip(tmp_path: Path, phantom) -> None:
    masks, space = phantom
    sizes = {}
    for suffix in (".msk", ".zarr.zip"):
        with MaskArchive(tmp_path / f"case{suffix}", "w", SMALL) as archive:
            archive.add_case("s1", masks, space=space)
        sizes[suffix] = (tmp_path / f"case{suffix}").stat().st_size
    # measured: 6347 vs 11469 bytes (0.55x)
    assert sizes[".msk"] < 0.6 * sizes[".zarr.zip"]


def test_one_organ_mask_costs_little_more_than_its_voxels(tmp_path: Path) -> None:
    mask = box((512, 512, 300), (100, 180), (200, 260), (50, 120))
    sizes = {}
    for suffix in (".msk", ".zarr.zip"):
        with MaskArchive(tmp_path / f"mask{suffix}", "w") as archive:
            archive.add_case("mask", {"liver": mask})
        sizes[suffix] = (tmp_path / f"mask{suffix}").stat().st_size
    path = tmp_path / "mask.msk"
    # measured: header + catalog 228 bytes, whole file 732 bytes, its organ table 59 + 92 of them (.zarr.zip: 8866)
    assert data_start(path) < 260
    assert sizes[".msk"] < 0.1 * sizes[".zarr.zip"]
    with MaskArchive(path) as archive:
        assert_case_matches(archive["mask"], {"liver": mask})


# -- backend selection -------------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "backend"), [(".msk", "msk"), (".h5", "h5"), (".zarr.zip", "zarr.zip")])
def test_renamed_single_file_opens_by_magic_bytes(tmp_path: Path, small_phantom, suffix: str, backend: str) -> None:
    masks, space = small_phantom
    original = tmp_path / f"archive{suffix}"
    with MaskArchive(original, "w", SMALL) as archive:
        archive.add_case("a", masks, space=space)
    renamed = tmp_path / "x.whatever"
    original.rename(renamed)
    with MaskArchive(renamed) as archive:
        assert archive.backend == backend
        assert archive.case_ids() == ["a"]
        assert_case_matches(archive["a"], masks)
    with MaskArchive(renamed, "a", SMALL) as archive:  # and writes in the same format
        assert archive.backend == backend
        archive.add_case("b", {"liver": masks["liver"]}, space=space)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.whatever"]
    with MaskArchive(renamed) as archive:
        assert archive.backend == backend
        assert archive.case_ids() == ["a", "b"]
        assert_case_matches(archive["b"], {"liver": masks["liver"]})


@pytest.mark.parametrize("mode", ["r", "a", "w", "w-"])
def test_unknown_suffix_of_a_new_path_names_the_suffixes(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "cases.foo"
    with pytest.raises(InvalidArchive) as info:
        MaskArchive(path, mode)
    message = str(info.value)
    assert str(path) in message
    assert ALL_SUFFIXES in message
    assert "backend=" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"MSK", b"hello, world\n", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_existing_file_of_unknown_format_is_refused_and_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    for mode in ("r", "a", "w"):
        with pytest.raises(InvalidArchive, match="use one of the suffixes"):
            MaskArchive(path, mode)
    assert path.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_unknown_backend_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^unknown backend 'nope'; choose one of zarr\.zip, zarr, h5, msk$"):
        MaskArchive(tmp_path / "a.msk", "w", backend="nope")
    assert list(tmp_path.iterdir()) == []


def test_backend_msk_for_any_suffix(tmp_path: Path, small_phantom) -> None:
    masks, space = small_phantom
    path = tmp_path / "mask.bin"
    with MaskArchive(path, "w", SMALL, backend="msk") as archive:
        assert archive.backend == "msk"
        archive.add_case("a", masks, space=space)
    assert path.read_bytes()[:5] == b"MSKP\x02"
    with MaskArchive(path) as archive:  # found again by its magic bytes
        assert archive.backend == "msk"
        assert_case_matches(archive["a"], masks)


# -- corruption --------------------------------------------------------------------------


def test_every_flipped_catalog_byte_is_an_invalid_archive(tmp_path: Path) -> None:
    path = tmp_path / "mask.msk"
    with MaskArchive(path, "w", SMALL) as archive:
        archive.add_case("a", {"liver": box((20, 18, 16), (2, 9), (3, 12), (1, 15))})
    good = path.read_bytes()
    start = data_start(path)
    assert start - HEADER > 50
    for position in range(HEADER, start):
        path.write_bytes(good)
        flip_byte(path, position)
        bad = path.read_bytes()
        with pytest.raises(CorruptMetadata, match=rf"^{re.escape(str(path))}: the catalog is corrupt \("):
            MaskArchive(path)
        if position % 16 == 0:  # writers refuse it too, and leave it alone
            with pytest.raises(CorruptMetadata, match="catalog is corrupt"):
                MaskArchive(path, "a")
            assert path.read_bytes() == bad
            assert side_files(path) == []


@pytest.mark.parametrize("version", [0, 1, 255])
@pytest.mark.parametrize("mode", ["r", "r+", "a"])
def test_wrong_version_byte(packed: Path, version: int, mode: str) -> None:
    raw = bytearray(packed.read_bytes())
    raw[4] = version
    packed.write_bytes(bytes(raw))
    with pytest.raises(
        InvalidArchive,
        match=rf"^{re.escape(str(packed))} is packed format version {version}; this medmask_store reads 2$",
    ):
        MaskArchive(packed, mode)
    assert packed.read_bytes() == bytes(raw)
    assert side_files(packed) == []


@pytest.mark.parametrize("content", [b"MSKQ\x01\x00\x00\x00\x00", b"MSKP", b""], ids=["magic", "short", "empty"])
def test_msk_suffix_without_a_packed_header(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.msk"
    path.write_bytes(content)
    for mode in ("r", "a"):
        with pytest.raises(
            InvalidArchive, match=rf"^{re.escape(str(path))} is not a packed medmask_store file \(no b'MSKP' header\)$"
        ):
            MaskArchive(path, mode)
    assert path.read_bytes() == content


@pytest.mark.parametrize("cut", ["one", "half", "all"])
def test_truncated_data_section(packed: Path, phantom, cut: str) -> None:
    masks, _ = phantom
    raw = packed.read_bytes()
    data_length = len(raw) - data_start(packed)
    missing = {"one": 1, "half": data_length // 2, "all": data_length}[cut]
    packed.write_bytes(raw[:-missing])
    damaged = rf"^{re.escape(str(packed))}: case 's1': array '(label_volume|binary_layers|organ_chunk_voxels)': chunk locations are malformed or lie outside the file"
    with MaskArchive(packed) as archive:  # the catalog is intact: the case is listed ...
        assert archive.case_ids() == ["s1"]
        with pytest.raises(CorruptMetadata, match=damaged):
            archive["s1"]  # ... but names its damage when opened
        with pytest.raises(CorruptMetadata, match=damaged):
            archive.query("age == 61")
        with pytest.warns(DamagedDataWarning, match="skipped damaged case 's1'"):
            assert archive.stats(skip_damaged=True).empty
    with pytest.raises(CorruptMetadata, match=damaged):
        MaskArchive(packed, "a")  # a writer loads every chunk
    assert packed.read_bytes() == raw[:-missing]
    assert side_files(packed) == []


@pytest.mark.parametrize(
    ("settings", "array"),
    [(SMALL, "label_volume"), (COMPACT_SMALL, "label_volume"), (SMALL, "binary_layers")],
    ids=["zstd-labels", "crackle-labels", "layers"],
)
def test_flipped_chunk_byte_raises_corrupt_chunk(tmp_path: Path, small_phantom, settings, array: str) -> None:
    """Every byte of one chunk, flipped three ways: CorruptChunk naming the file, the array and the chunk
    (every chunk ends with the crc32c of its stored bytes, so even bits Zstd never reads are caught)."""
    masks, space = small_phantom
    path = tmp_path / "a.msk"
    with MaskArchive(path, "w", settings) as archive:
        archive.add_case("a", masks, space=space)
    *coords, offset, length = stored_chunks(path, "a", array)[0]
    start = data_start(path) + offset
    good = path.read_bytes()
    detected = 0
    for position in range(start, start + length):
        for xor in (0x01, 0x5A, 0x80):
            path.write_bytes(good)
            with open(path, "r+b") as handle:
                handle.seek(position)
                byte = handle.read(1)[0]
                handle.seek(position)
                handle.write(bytes([byte ^ xor]))
            with MaskArchive(path) as archive:
                case = archive["a"]
                try:
                    organs = case.read_organs()
                    labels = case.read_labels()
                except CorruptChunk as exc:
                    assert str(exc).startswith(f"{path}: case 'a'/{array}: chunk {tuple(coords)}: "), exc
                    detected += 1
                    continue
            for name, mask in masks.items():
                np.testing.assert_array_equal(organs[name], mask, err_msg=f"{position} {xor} {name}")
            assert labels.shape == masks["liver"].shape
    assert detected == 3 * length


def _huge_frame(declared: int) -> bytes:
    """A Zstd frame whose header declares ``declared`` content bytes (8-byte field, checksum flag),
    then a few RLE blocks: what a flipped frame-header byte can turn a label chunk into."""
    header = b"\x28\xb5\x2f\xfd" + bytes([0b1110_0100]) + struct.pack("<Q", declared)
    rle_block = ((4096 << 3) | (1 << 1) | 1).to_bytes(3, "little") + b"\x00"
    return header + rle_block + b"\x00\x00\x00\x00"


def test_label_chunk_declaring_a_huge_size_raises_corrupt_chunk(tmp_path: Path) -> None:
    path = tmp_path / "a.msk"
    with MaskArchive(path, "w", SMALL) as archive:
        archive.add_case("a", {"liver": box((16, 16, 16), (2, 9), (3, 12), (1, 15))})
    catalog, _ = read_packed(path)
    frame = append_crc32c(_huge_frame(2**60))
    catalog["cases"]["a"]["chunks"] = {"label_volume": [[0, 0, 0, 0, len(frame)]]}  # the frame is all the data left:
    del catalog["cases"]["a"]["attributes"]["medmask_store"]["arrays"]["organ_chunk_voxels"]  # no organ table
    reseal_packed_case(catalog, "a", frame)  # crafted: every checksum passes
    write_packed(path, catalog, frame)
    with MaskArchive(path) as archive, pytest.raises(CorruptChunk, match=re.escape(f"{path}: case 'a'/label_volume")):
        archive["a"].read_labels()


def test_catalog_length_running_past_the_catalog_is_detected(tmp_path: Path) -> None:
    labels = np.zeros((48, 16, 16), np.uint8)
    labels[0:16, 1:9, 1:9] = 3
    labels[0:16, 10:12, 10:14] = 1
    labels[16:32, 2:5, 2:5] = 2
    labels[32:] = np.random.default_rng(0).integers(1, 4, (16, 16, 16))
    path = tmp_path / "a.msk"
    with MaskArchive(path, "w", StorageSettings(chunk_size=16, label_level=3)) as archive:
        archive.add_case("a", labels, mapping={"x": 1, "y": 2, "z": 3})
    (_, _, _, _, first), (_, _, _, _, second), _ = stored_chunks(path, "a", "label_volume")
    assert second < first  # the shifted read of chunk 0 then holds all of chunk 1's frame
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 5, struct.unpack_from("<I", raw, 5)[0] + first)
    path.write_bytes(bytes(raw))
    region = (slice(0, 16), slice(0, 16), slice(0, 16))
    try:
        with MaskArchive(path) as archive:
            got = archive["a"].read_region(region)
    except (InvalidArchive, CorruptArchive):
        return
    np.testing.assert_array_equal(got, labels[region])


# -- writers and readers -----------------------------------------------------------------


def test_second_writer_is_locked_out(packed: Path, phantom) -> None:
    masks, space = phantom
    with MaskArchive(packed, "a", SMALL) as writer:
        for mode in ("a", "r+", "w"):
            with pytest.raises(
                ArchiveLocked, match=rf"^{re.escape(str(packed))} is being written by process {os.getpid()}; "
            ):
                MaskArchive(packed, mode)
        with MaskArchive(packed) as reader:  # readers are never locked out
            assert reader.case_ids() == ["s1"]
        writer.add_case("s2", {"liver": masks["liver"]}, space=space)
    with MaskArchive(packed, "a", SMALL) as writer:  # the lock is released on close
        assert writer.case_ids() == ["s1", "s2"]
    assert side_files(packed) == []


def test_reader_opened_before_a_commit_keeps_reading_the_old_content(packed: Path, phantom, small_phantom) -> None:
    masks, space = phantom
    other, other_space = small_phantom
    before = packed.read_bytes()
    with MaskArchive(packed) as reader:
        old_case = reader["s1"]
        old_labels = old_case.read_labels()
        with MaskArchive(packed, "a", SMALL) as writer:
            writer.add_case("s1", other, space=other_space, overwrite=True)
            writer.add_case("s2", masks, space=space)
        assert packed.read_bytes() != before
        # the reader's catalog and file descriptor are those of the file it opened
        assert reader.case_ids() == ["s1"]
        assert reader.query("age == 61") == ["s1"]
        for case in (old_case, reader["s1"]):
            assert case.meta == {"age": 61}
            assert_case_matches(case, masks)
            np.testing.assert_array_equal(case.read_labels(), old_labels)
    with MaskArchive(packed) as fresh:
        assert fresh.case_ids() == ["s1", "s2"]
        assert_case_matches(fresh["s1"], other)
        assert_case_matches(fresh["s2"], masks)


def test_batch_is_published_once(packed: Path, small_phantom) -> None:
    masks, space = small_phantom
    before = packed.read_bytes()
    with MaskArchive(packed, "a", SMALL) as writer, writer.batch():
        writer.add_case("b1", masks, space=space)
        writer.delete_case("s1")
        assert packed.read_bytes() == before  # nothing published inside the batch
        with MaskArchive(packed) as reader:
            assert reader.case_ids() == ["s1"]
    with MaskArchive(packed) as reader:
        assert reader.case_ids() == ["b1"]


def test_delete_and_overwrite_leave_no_dead_space(tmp_path: Path, phantom, small_phantom) -> None:
    masks, space = phantom
    other, other_space = small_phantom
    path = tmp_path / "edit.msk"
    with MaskArchive(path, "w", SMALL) as archive:
        archive.add_case("a", masks, space=space)
        archive.add_case("b", other, space=other_space)
    with MaskArchive(path, "a", SMALL) as archive:
        archive.delete_case("a")
        archive.add_case("b", masks, space=space, overwrite=True, meta={"v": 2})
    with MaskArchive(path) as archive:
        assert archive.case_ids() == ["b"]
        assert archive["b"].meta == {"v": 2}
        assert_case_matches(archive["b"], masks)
    # the rewritten file is byte for byte what a fresh archive of the final state would be
    fresh = tmp_path / "fresh.msk"
    with MaskArchive(fresh, "w", SMALL) as archive:
        archive.add_case("b", masks, space=space, meta={"v": 2})
    assert path.read_bytes() == fresh.read_bytes()
    with MaskArchive(path, "a", SMALL) as archive:
        archive.delete_case("b")
    with MaskArchive(path) as archive:
        assert archive.case_ids() == []
    catalog, data = read_packed(path)
    assert catalog["cases"] == {}
    assert data == b""
    assert side_files(path) == []


def test_mode_r_changes_nothing(packed: Path) -> None:
    before = snapshot(packed)
    with MaskArchive(packed) as archive:
        archive["s1"].read_labels()
        archive.stats()
    assert snapshot(packed) == before
    assert side_files(packed) == []


# -- reads with os.pread -----------------------------------------------------------------


@pytest.fixture
def pread_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(length, file offset) of every os.pread the packed backend makes from now on."""
    calls: list[tuple[int, int]] = []
    real_pread = os.pread

    def counting_pread(fd: int, length: int, offset: int) -> bytes:
        calls.append((length, offset))
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", counting_pread)  # the packed backend reads through os.pread only
    return calls


def test_every_chunk_read_is_one_pread_of_its_stored_length(packed: Path, phantom, pread_calls) -> None:
    masks, _ = phantom
    catalog, _ = read_packed(packed)
    start = data_start(packed)
    arrays = catalog["cases"]["s1"]["chunks"]
    chunk_reads = {name: sorted((e[-1], start + e[-2]) for e in rows) for name, rows in arrays.items()}
    with MaskArchive(packed) as archive:
        assert pread_calls == [(HEADER, 0), (start - HEADER, HEADER)]  # the header, then the catalog
        pread_calls.clear()
        case = archive["s1"]
        assert pread_calls == []  # attributes come from the catalog
        np.testing.assert_array_equal(case.read_labels(include_layers=False) > 0, np.any(list(masks.values()), axis=0))
        assert sorted(pread_calls) == chunk_reads["label_volume"]  # each stored label chunk once, nothing else
        pread_calls.clear()
        case.read_labels()
        assert sorted(pread_calls) == sorted(chunk_reads["label_volume"] + chunk_reads["binary_layers"])
        every_chunk = set(chunk_reads["label_volume"] + chunk_reads["binary_layers"])
        for name, mask in masks.items():
            pread_calls.clear()
            np.testing.assert_array_equal(case.read_organ(name), mask)
            assert len(pread_calls) == len(set(pread_calls)), name
            assert set(pread_calls) <= every_chunk, name
        labels = case.read_labels()
        pread_calls.clear()
        region = (slice(16, 32), slice(16, 32), slice(16, 32))  # exactly label chunk (1, 1, 1)
        np.testing.assert_array_equal(case.read_region(region), labels[region])
        (label_chunk,) = [e for e in arrays["label_volume"] if e[:3] == [1, 1, 1]]
        assert (label_chunk[-1], start + label_chunk[-2]) in pread_calls
        assert len(pread_calls) == len(set(pread_calls))
        assert set(pread_calls) <= {(label_chunk[-1], start + label_chunk[-2]), *chunk_reads["binary_layers"]}


def test_index_blobs_end_the_data_and_a_query_preads_only_those_it_uses(packed: Path, phantom, monkeypatch, pread_calls) -> None:
    import medmask_store.storage.archive as archive_module

    masks, space = phantom
    monkeypatch.setattr(archive_module, "INDEX_MIN_CASES", 2)
    with MaskArchive(packed, "a", SMALL) as archive:
        archive.add_case("s2", masks, space=space, meta={"age": 40})
    catalog, data = read_packed(packed)
    locations = catalog["index"]
    assert max(offset + length for offset, length in locations.values()) == len(data)
    assert sum(length for _, length in locations.values()) == len(data) - min(offset for offset, _ in locations.values())
    pread_calls.clear()
    with MaskArchive(packed) as archive:
        pread_calls.clear()
        assert archive.query("age < 50") == ["s2"]
        used = {name: where for name, where in locations.items() if name.rpartition("/")[2] in ("manifest", "case_id", "meta.0")}
        assert sorted(pread_calls) == sorted((length, data_start(packed) + offset) for offset, length in used.values())


def test_chunks_read_after_a_copy_of_the_file_match(packed: Path, tmp_path: Path, phantom) -> None:
    """A .msk file is self-contained: a byte copy elsewhere reads the same."""
    masks, _ = phantom
    copy = tmp_path / "elsewhere" / "copy.msk"
    copy.parent.mkdir()
    shutil.copyfile(packed, copy)
    with MaskArchive(copy) as archive:
        assert_case_matches(archive["s1"], masks)
