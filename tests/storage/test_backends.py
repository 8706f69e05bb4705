"""What is specific to the HDF5 and single-file Zarr backends: format choice, interoperability,
byte-identical chunks, checksums, locking and copy-on-write publishing.

Backend-neutral behaviour (round trips, modes, errors) is covered in test_archive.py.
"""

from __future__ import annotations

import itertools
import json
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import assert_case_matches, flip_byte, kill_writer_when_ready, side_files
from spacetransformer import Space

from medmask_store import CaseData, CorruptChunk, InvalidArchive, MaskArchive, StorageSettings
from medmask_store.errors import ArchiveClosed, ArchiveLocked
from medmask_store.phantom import make_phantom

S16 = StorageSettings(chunk_size=16, label_level=3, layer_level=3)
SINGLE_FILE = [".h5", ".zarr.zip"]
ALL_SUFFIXES = [".zarr", ".zarr.zip", ".h5", ".hdf5"]
EMPTY_ENTRY = 2**64 - 1


# -- helpers ---------------------------------------------------------------------------------


def small_phantom(seed: int, shape=(36, 32, 28)) -> tuple[dict[str, np.ndarray], Space]:
    return make_phantom(shape=shape, n_organs=4, n_empty=1, seed=seed)


def run_python(source: str, *args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", source, *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def last_json_line(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def grid_of(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(-(-s // c) for s, c in zip(shape, chunks))


def nonempty_chunks(data: np.ndarray, chunks: tuple[int, ...]) -> set[tuple[int, ...]]:
    """Chunk coordinates (numpy, brute force) whose block holds a non-zero / True element."""
    found = set()
    for coords in itertools.product(*map(range, grid_of(data.shape, chunks))):
        block = data[tuple(slice(c * n, (c + 1) * n) for c, n in zip(coords, chunks))]
        if block.any():
            found.add(coords)
    return found


def shard_chunks(shard: bytes, inner_grid: tuple[int, ...]) -> dict[tuple[int, ...], tuple[int, int]]:
    """Stored inner chunks of a Zarr v3 shard: coords -> (offset, nbytes), read from the index at its end.

    The index is prod(inner_grid) little-endian uint64 (offset, nbytes) pairs in C order of the
    inner chunk grid, followed by a 4-byte crc32c; (2**64-1, 2**64-1) marks an empty chunk.
    """
    n = int(np.prod(inner_grid))
    assert len(shard) >= 16 * n + 4
    pairs = struct.unpack(f"<{2 * n}Q", shard[-(16 * n + 4):-4])
    stored = {}
    for i, coords in enumerate(itertools.product(*map(range, inner_grid))):
        offset, nbytes = pairs[2 * i], pairs[2 * i + 1]
        if (offset, nbytes) == (EMPTY_ENTRY, EMPTY_ENTRY):
            continue
        assert offset != EMPTY_ENTRY and nbytes != EMPTY_ENTRY
        assert offset + nbytes <= len(shard) - (16 * n + 4)
        stored[coords] = (offset, nbytes)
    return stored


def h5_chunks(dataset: h5py.Dataset) -> dict[tuple[int, ...], tuple[int, int]]:
    """Stored chunks of an HDF5 dataset: grid coords -> (file offset, size)."""
    stored = {}
    for i in range(dataset.id.get_num_chunks()):
        info = dataset.id.get_chunk_info(i)
        coords = tuple(o // c for o, c in zip(info.chunk_offset, dataset.chunks))
        stored[coords] = (info.byte_offset, info.size)
    return stored


def zip_member_data_offset(path: Path, member: str) -> int:
    """File offset of a stored (uncompressed) zip member's data, from its local file header."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
        assert info.compress_type == zipfile.ZIP_STORED
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
    assert header[:4] == b"PK\x03\x04"
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    assert name_length == len(member.encode())
    return info.header_offset + 30 + name_length + extra_length


def byte_in(offset: int, nbytes: int, where: str) -> int:
    return offset + {"first": 0, "middle": nbytes // 2, "last": nbytes - 1}[where]


def file_bytes(path: Path) -> bytes:
    return path.read_bytes()


def write_phantom_case(path: Path, case_id: str = "p", settings: StorageSettings = S16, **kwargs):
    masks, space = make_phantom(shape=(70, 60, 50), n_organs=6, n_empty=2, seed=3)
    with MaskArchive(path, "w", settings) as archive:
        archive.add_case(case_id, masks, space=space, **kwargs)
        info = archive[case_id].info
    return masks, space, info


# -- 1. backend selection ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ALL_SUFFIXES, ids=lambda s: s.strip("."))
def test_each_suffix_selects_its_backend(tmp_path, suffix):
    masks, space = small_phantom(1)
    path = tmp_path / f"store{suffix}"
    with MaskArchive(path, "a", S16) as archive:
        archive.add_case("c1", masks, space=space, meta={"age": 61})
    if suffix == ".zarr":
        assert path.is_dir() and (path / "zarr.json").is_file()
        assert json.loads((path / "zarr.json").read_text())["zarr_format"] == 3
    elif suffix == ".zarr.zip":
        assert path.is_file() and zipfile.is_zipfile(path)
        with zipfile.ZipFile(path) as zf:
            assert "zarr.json" in zf.namelist()
            assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
    else:
        assert path.is_file() and h5py.is_hdf5(path)
    assert side_files(path) == []
    with MaskArchive(path, "r") as archive:
        assert archive.case_ids() == ["c1"]
        assert archive["c1"].meta == {"age": 61}
        assert_case_matches(archive["c1"], masks)


@pytest.mark.parametrize("name", ["x.foo", "x.zip", "x.h5.bak", "x", "x.zarr.zip.tmp", "x.hdf"])
@pytest.mark.parametrize("mode", ["r", "a", "w"])
def test_unknown_suffix_raises_and_lists_every_accepted_suffix(tmp_path, name, mode):
    path = tmp_path / name
    with pytest.raises(InvalidArchive) as info:
        MaskArchive(path, mode)
    message = str(info.value)
    for suffix in ALL_SUFFIXES:
        assert suffix in message, (suffix, message)
    assert str(path) in message
    assert list(tmp_path.iterdir()) == []


# -- 2. HDF5 interoperability: plain h5py, without medmask_store -----------------------------------

H5PY_LABELS_READER = r"""
import json
import sys

import h5py
import hdf5plugin  # registers the Zstd filter (id 32015)
import numpy

path, case_id, expected_file = sys.argv[1:4]
expected = numpy.load(expected_file)
with h5py.File(path, "r") as f:
    group = f["cases"][case_id]
    labels = group["label_volume"][...]
    attributes = json.loads(group.attrs["medmask_store"])
    root = json.loads(f.attrs["medmask_store"])
    stored_chunks = group["label_volume"].id.get_num_chunks()
print(json.dumps({
    "equal": bool(labels.dtype == expected.dtype and labels.shape == expected.shape and (labels == expected).all()),
    "dtype": str(labels.dtype),
    "stored_chunks": stored_chunks,
    "attributes": attributes,
    "root": root,
    "imported": sorted(m for m in sys.modules if m.split(".")[0] == "medmask_store"),
}))
"""

H5PY_LAYERS_READER = r"""
import json
import sys

import h5py
if sys.argv[2] == "with-plugin":
    import hdf5plugin

path = sys.argv[1]
result = {}
with h5py.File(path, "r") as f:
    dataset = f["cases/p/binary_layers"]
    result["codec"] = json.loads(dataset.attrs["medmask_store"])["codec"]
    first = dataset.id.get_chunk_info(0).chunk_offset
    one_chunk = tuple(slice(o, o + c) for o, c in zip(first, dataset.chunks))
    for name, selection in [("all", ()), ("one_chunk", one_chunk)]:
        try:
            data = dataset[selection]
        except OSError as exc:
            result[name] = {"raised": "OSError", "message": str(exc)}
        except Exception as exc:
            result[name] = {"raised": type(exc).__name__, "message": str(exc)}
        else:
            result[name] = {"raised": None, "any": bool(data.any())}
result["imported"] = sorted(m for m in sys.modules if m.split(".")[0] == "medmask_store")
print(json.dumps(result))
"""


@pytest.mark.parametrize("suffix", [".h5", ".hdf5"])
def test_plain_h5py_reads_label_volume_and_attributes(tmp_path, suffix):
    masks, space = make_phantom(shape=(70, 60, 50), n_organs=6, n_empty=2, seed=3)
    expected = CaseData.from_masks(masks, space=space)
    path = tmp_path / f"archive{suffix}"
    with MaskArchive(path, "w", S16) as archive:
        archive.add_case("ct 1", masks, space=space, meta={"age": 61})
    expected_file = tmp_path / "expected.npy"
    np.save(expected_file, expected.label_volume)

    result = last_json_line(run_python(H5PY_LABELS_READER, path, "ct 1", expected_file))
    assert result["imported"] == []  # medmask_store was never imported
    assert result["equal"], result["dtype"]
    assert result["stored_chunks"] == len(nonempty_chunks(expected.label_volume, (16, 16, 16)))
    content = result["attributes"]
    assert result["root"] == {"format_version": 1, "kind": "archive"}
    assert content["format_version"] == 1
    assert content["space"]["shape"] == [70, 60, 50]
    assert content["space"]["spacing"] == [1.5, 1.5, 2.0]
    assert Space.from_dict(content["space"]) == space
    assert content["mapping"] == expected.mapping
    assert list(content["mapping"]) == list(masks)  # order kept
    assert content["binary_layers"] == list(expected.layer_names)
    assert content["meta"] == {"age": 61}
    assert {n for n, s in content["stats"].items()} == {n for n, m in masks.items() if m.any()}


@pytest.mark.parametrize("plugin", ["with-plugin", "without-plugin"])
def test_plain_h5py_refuses_binary_layers(tmp_path, plugin):
    path = tmp_path / "archive.h5"
    _, _, info = write_phantom_case(path)
    assert info.layer_names
    result = last_json_line(run_python(H5PY_LAYERS_READER, path, plugin))
    assert result["imported"] == []
    assert result["codec"] == "packbits_zstd"
    for name in ("all", "one_chunk"):
        assert result[name]["raised"] == "OSError", result[name]  # never data, never another error


# -- 3. binary-layer chunks are byte-identical in Zarr and HDF5 -----------------------------------


def test_binary_layer_chunks_are_byte_identical_in_zarr_and_hdf5(tmp_path):
    settings = StorageSettings(chunk_size=16)
    masks, space = make_phantom(shape=(70, 60, 50), n_organs=6, n_empty=2, seed=3)
    expected = CaseData.from_masks(masks, space=space)
    assert expected.layer_names
    for suffix in (".zarr", ".h5"):
        with MaskArchive(tmp_path / f"archive{suffix}", "w", settings) as archive:
            archive.add_case("p", masks, space=space)
    chunks = (1, 16, 16, 16)
    layers = expected.binary_layers
    inner_grid = grid_of(layers.shape, chunks)  # one shard covers the whole array
    shard = (tmp_path / "archive.zarr" / "cases" / "p" / "binary_layers" / "c" / "0" / "0" / "0" / "0").read_bytes()
    zarr_chunks = shard_chunks(shard, inner_grid)
    with h5py.File(tmp_path / "archive.h5", "r") as f:
        dataset = f["cases/p/binary_layers"]
        assert dataset.chunks == chunks and dataset.shape == layers.shape
        stored = h5_chunks(dataset)
        hdf5_bytes = {coords: dataset.id.read_direct_chunk(tuple(c * n for c, n in zip(coords, chunks)))
                      for coords in stored}
    assert len(stored) > 4  # several chunks, else the comparison says little
    expected_set = nonempty_chunks(layers, chunks)
    assert set(zarr_chunks) == set(stored) == expected_set
    for coords, (filter_mask, raw) in hdf5_bytes.items():
        offset, nbytes = zarr_chunks[coords]
        assert filter_mask == 0
        assert bytes(raw) == shard[offset:offset + nbytes], coords


# -- 4. empty chunks are never stored ----------------------------------------------------------------


def sparse_case() -> tuple[dict[str, np.ndarray], Space]:
    """Organs in a few corners of a 64x48x40 volume (4x3x3 chunks of 16): most chunks empty."""
    shape = (64, 48, 40)
    a = np.zeros(shape, bool)
    a[2:20, 3:14, 1:9] = True  # spans two chunks along i
    b = np.zeros(shape, bool)
    b[40:64, 33:48, 33:40] = True
    inner = np.zeros(shape, bool)
    inner[5:8, 5:8, 5:8] = True  # inside a: a binary layer with one chunk
    return {"a": a, "b": b, "inner": inner, "none": np.zeros(shape, bool)}, Space(shape=shape)


def test_h5_stores_only_nonempty_chunks(tmp_path):
    masks, space = sparse_case()
    expected = CaseData.from_masks(masks, space=space)
    path = tmp_path / "archive.h5"
    with MaskArchive(path, "w", S16) as archive:
        archive.add_case("sparse", masks, space=space)
        archive.add_case("empty", {"x": np.zeros((20, 20, 20), bool)})
    with h5py.File(path, "r") as f:
        labels = f["cases/sparse/label_volume"]
        layers = f["cases/sparse/binary_layers"]
        label_expected = nonempty_chunks(expected.label_volume, (16, 16, 16))
        layer_expected = nonempty_chunks(expected.binary_layers, (1, 16, 16, 16))
        assert labels.id.get_num_chunks() == len(label_expected) < int(np.prod(grid_of(space.shape, (16,) * 3)))
        assert layers.id.get_num_chunks() == len(layer_expected) == 1
        assert set(h5_chunks(labels)) == label_expected
        assert set(h5_chunks(layers)) == layer_expected
        assert f["cases/empty/label_volume"].id.get_num_chunks() == 0
        assert "binary_layers" not in f["cases/empty"]
    with MaskArchive(path, "r") as archive:
        assert_case_matches(archive["sparse"], masks)
        assert not archive["empty"].read_labels().any()


def test_zarr_zip_stores_only_nonempty_chunks(tmp_path):
    masks, space = sparse_case()
    expected = CaseData.from_masks(masks, space=space)
    path = tmp_path / "archive.zarr.zip"
    with MaskArchive(path, "w", S16) as archive:
        archive.add_case("sparse", masks, space=space)
        archive.add_case("empty", {"x": np.zeros((20, 20, 20), bool)})
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        label_shard = zf.read("cases/sparse/label_volume/c/0/0/0")
        layer_shard = zf.read("cases/sparse/binary_layers/c/0/0/0/0")
        empty_shards = [n for n in names if n.startswith("cases/empty/label_volume/c/")]
        empty_indexes = [shard_chunks(zf.read(n), (2, 2, 2)) for n in empty_shards]
    label_stored = shard_chunks(label_shard, grid_of(space.shape, (16, 16, 16)))
    layer_stored = shard_chunks(layer_shard, grid_of(expected.binary_layers.shape, (1, 16, 16, 16)))
    assert set(label_stored) == nonempty_chunks(expected.label_volume, (16, 16, 16))
    assert set(layer_stored) == nonempty_chunks(expected.binary_layers, (1, 16, 16, 16))
    assert len(layer_stored) == 1
    assert all(index == {} for index in empty_indexes)  # an all-empty case stores no chunk
    with MaskArchive(path, "r") as archive:
        assert_case_matches(archive["sparse"], masks)
        assert not archive["empty"].read_labels().any()


# -- 5. checksums: a flipped byte raises CorruptChunk in every backend ----------------------------------


def affected_organ(info, expected: CaseData, array: str, coords: tuple[int, ...]) -> str:
    """An organ whose voxels live in the given stored chunk of ``array``."""
    if array == "binary_layers":
        return info.layer_names[coords[0]]
    block = expected.label_volume[tuple(slice(c * 16, (c + 1) * 16) for c in coords)]
    values = set(np.unique(block).tolist()) - {0}
    names = [n for n, v in info.mapping.items() if v in values and n not in info.layer_names]
    assert names, coords
    return names[0]


def assert_corruption_detected(path: Path, array: str, organ: str, masks: dict[str, np.ndarray]) -> None:
    with MaskArchive(path, "r") as archive:
        case = archive["p"]
        with pytest.raises(CorruptChunk):
            case.read_organ(organ)
        if array == "label_volume":
            with pytest.raises(CorruptChunk):
                case.read_labels(include_layers=False)
        with pytest.raises(CorruptChunk):
            case.read_labels()
        with pytest.raises(CorruptChunk):
            case.to_case_data()
        # organs whose bounding box avoids the bad chunk still read exactly; none reads wrong data
        for name, mask in masks.items():
            try:
                got = case.read_organ(name)
            except CorruptChunk:
                continue
            np.testing.assert_array_equal(got, mask, err_msg=name)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("array", ["label_volume", "binary_layers"])
def test_h5_flipped_byte_raises_corrupt_chunk(tmp_path, array, where):
    path = tmp_path / "archive.h5"
    masks, space, info = write_phantom_case(path)
    expected = CaseData.from_masks(masks, space=space)
    with h5py.File(path, "r") as f:
        dataset = f[f"cases/p/{array}"]
        if array == "label_volume":
            plist = dataset.id.get_create_plist()
            filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
            assert filters == [32015]  # Zstd; each chunk is a Zstd frame carrying its content checksum
        stored = h5_chunks(dataset)
    coords, (offset, nbytes) = sorted(stored.items())[len(stored) // 2]
    organ = affected_organ(info, expected, array, coords)
    flip_byte(path, byte_in(offset, nbytes, where))
    assert_corruption_detected(path, array, organ, masks)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("array", ["label_volume", "binary_layers"])
def test_zarr_zip_flipped_byte_raises_corrupt_chunk(tmp_path, array, where):
    path = tmp_path / "archive.zarr.zip"
    masks, space, info = write_phantom_case(path)
    expected = CaseData.from_masks(masks, space=space)
    shape = expected.label_volume.shape if array == "label_volume" else expected.binary_layers.shape
    chunks = (16, 16, 16) if array == "label_volume" else (1, 16, 16, 16)
    member = f"cases/p/{array}/c/" + "/".join("0" * len(shape))
    with zipfile.ZipFile(path) as zf:
        shard = zf.read(member)
    stored = shard_chunks(shard, grid_of(shape, chunks))
    coords, (offset, nbytes) = min(stored.items(), key=lambda item: item[1][0])  # the shard's first chunk
    organ = affected_organ(info, expected, array, coords)
    flip_byte(path, zip_member_data_offset(path, member) + byte_in(offset, nbytes, where))
    assert_corruption_detected(path, array, organ, masks)


# -- 6. one writer at a time for single-file archives -----------------------------------------------

TRY_WRITER = r"""
import json
import sys

from medmask_store import MaskArchive
from medmask_store.errors import ArchiveClosed, ArchiveLocked

path = sys.argv[1]
result = {}
try:
    MaskArchive(path, "a").close()
except ArchiveLocked as exc:
    result["writer"] = {"raised": "ArchiveLocked", "message": str(exc)}
except Exception as exc:
    result["writer"] = {"raised": type(exc).__name__, "message": str(exc)}
else:
    result["writer"] = {"raised": None}
with MaskArchive(path, "r") as archive:
    result["reader"] = archive.case_ids()
print(json.dumps(result))
"""


@pytest.mark.parametrize("suffix", SINGLE_FILE, ids=lambda s: s.strip("."))
def test_single_file_archives_take_one_writer(tmp_path, suffix):
    path = tmp_path / f"archive{suffix}"
    masks_a, space_a = small_phantom(1)
    masks_b, space_b = small_phantom(2)
    with MaskArchive(path, "w", S16) as archive:
        archive.add_case("a", masks_a, space=space_a)
    writer = MaskArchive(path, "a", S16)
    try:
        with writer.batch():
            writer.add_case("b", masks_b, space=space_b)
            before = file_bytes(path)
            for mode in ("a", "r+", "w"):
                with pytest.raises(ArchiveLocked) as info:
                    MaskArchive(path, mode)
                assert str(path) in str(info.value)
            assert file_bytes(path) == before  # mode "w" did not truncate it
            result = last_json_line(run_python(TRY_WRITER, path))
            assert result["writer"]["raised"] == "ArchiveLocked", result
            assert str(path) in result["writer"]["message"]
            assert result["reader"] == ["a"]
            with MaskArchive(path, "r") as reader:
                assert reader.case_ids() == ["a"]
                assert_case_matches(reader["a"], masks_a)
    finally:
        writer.close()
    # released: a new writer (here and in another process) gets in
    result = last_json_line(run_python(TRY_WRITER, path))
    assert result == {"writer": {"raised": None}, "reader": ["a", "b"]}
    with MaskArchive(path, "a", S16) as archive:
        assert archive.case_ids() == ["a", "b"]
        assert_case_matches(archive["b"], masks_b)
    assert side_files(path) == []


def test_zarr_directory_allows_two_writers(tmp_path):
    """Unlike the single-file backends, a .zarr directory takes concurrent writers (one rename per case)."""
    path = tmp_path / "archive.zarr"
    masks_a, space_a = small_phantom(1)
    masks_b, space_b = small_phantom(2)
    first = MaskArchive(path, "a", S16)
    try:
        second = MaskArchive(path, "a", S16)  # no ArchiveLocked
        try:
            first.add_case("one", masks_a, space=space_a)
            second.add_case("two", masks_b, space=space_b)
            result = last_json_line(run_python(TRY_WRITER, path))
            assert result["writer"] == {"raised": None}
            assert second.case_ids() == ["one", "two"]
        finally:
            second.close()
    finally:
        first.close()
    with MaskArchive(path, "r") as archive:
        assert archive.case_ids() == ["one", "two"]
        assert_case_matches(archive["one"], masks_a)
        assert_case_matches(archive["two"], masks_b)


# -- 7. copy-on-write publishing -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", SINGLE_FILE, ids=lambda s: s.strip("."))
def test_batch_is_invisible_to_readers_until_it_ends(tmp_path, suffix):
    path = tmp_path / f"archive{suffix}"
    cases = {f"c{i}": small_phantom(i) for i in range(4)}

    def visible() -> list[str]:
        with MaskArchive(path, "r") as reader:
            return reader.case_ids()

    with MaskArchive(path, "a", S16) as writer:
        writer.add_case("c0", cases["c0"][0], space=cases["c0"][1])  # committed on return
        assert visible() == ["c0"]
        with writer.batch():
            writer.add_case("c1", cases["c1"][0], space=cases["c1"][1])
            with writer.batch():  # nested: only the outermost batch publishes
                writer.add_case("c2", cases["c2"][0], space=cases["c2"][1])
            assert writer.case_ids() == ["c0", "c1", "c2"]
            assert_case_matches(writer["c1"], cases["c1"][0])  # readable through the same object
            assert_case_matches(writer["c2"], cases["c2"][0])
            assert visible() == ["c0"]
        assert visible() == ["c0", "c1", "c2"]
        with writer.batch():
            writer.add_case("c3", cases["c3"][0], space=cases["c3"][1])
            writer.delete_case("c0")
            assert visible() == ["c0", "c1", "c2"]
            writer.commit()
            assert visible() == ["c1", "c2", "c3"]
            writer.delete_case("c1")
            assert visible() == ["c1", "c2", "c3"]
        assert visible() == ["c2", "c3"]
    with MaskArchive(path, "r") as reader:
        for case_id in ("c2", "c3"):
            assert_case_matches(reader[case_id], cases[case_id][0])


KILLED_WRITER = r"""
import sys
import time

from medmask_store import MaskArchive, StorageSettings
from medmask_store.phantom import make_phantom

path = sys.argv[1]
masks_a, space_a = make_phantom(shape=(36, 32, 28), n_organs=4, n_empty=1, seed=1)
masks_b, space_b = make_phantom(shape=(36, 32, 28), n_organs=4, n_empty=1, seed=2)
archive = MaskArchive(path, "a", StorageSettings(chunk_size=16, label_level=3, layer_level=3))
archive.add_case("a", masks_a, space=space_a)
with archive.batch():
    archive.add_case("b", masks_b, space=space_b)
    print("ready", flush=True)
    time.sleep(300)
"""


def run_killed_writer(path: Path) -> int:
    """Start a writer that adds "a", then "b" inside a batch; SIGKILL it inside the batch."""

    def inside_the_batch(proc: subprocess.Popen[str]) -> None:
        # while it sits in its batch: its working copy and lock exist, readers see only "a"
        assert any(f".{proc.pid}.working" in name for name in side_files(path)), side_files(path)
        with MaskArchive(path, "r") as reader:
            assert reader.case_ids() == ["a"]

    proc = kill_writer_when_ready(KILLED_WRITER, path, inside_the_batch)
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


@pytest.mark.parametrize("suffix", SINGLE_FILE, ids=lambda s: s.strip("."))
def test_killed_writer_keeps_committed_cases_and_leftovers_are_cleaned(tmp_path, suffix):
    path = tmp_path / f"archive{suffix}"
    pid = run_killed_writer(path)
    masks_a, _ = small_phantom(1)
    leftovers = [name for name in side_files(path) if f".{pid}.working" in name]
    assert leftovers  # the dead writer's working copy is still there
    assert f".{path.name}.lock" in side_files(path)

    with MaskArchive(path, "r") as archive:  # a reader never cleans up (it never writes)
        assert archive.case_ids() == ["a"]
        assert_case_matches(archive["a"], masks_a)
    assert [name for name in side_files(path) if f".{pid}.working" in name] == leftovers

    masks_c, space_c = small_phantom(3)
    with MaskArchive(path, "a", S16) as archive:  # the stale lock file does not block
        assert [name for name in side_files(path) if f".{pid}.working" in name] == []
        assert archive.case_ids() == ["a"]
        archive.add_case("c", masks_c, space=space_c)
    assert side_files(path) == []
    with MaskArchive(path, "r") as archive:
        assert archive.case_ids() == ["a", "c"]
        assert_case_matches(archive["a"], masks_a)
        assert_case_matches(archive["c"], masks_c)


def make_foreign_hdf5(path: Path, attributes: dict) -> None:
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(10)
        f.create_group("cases")
        for key, value in attributes.items():
            f.attrs[key] = value


def make_foreign_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", "not a zarr store")


NON_ARCHIVES = {
    "text.h5": lambda p: p.write_text("just text\n"),
    "text.zarr.zip": lambda p: p.write_text("just text\n"),
    "no_attributes.h5": lambda p: make_foreign_hdf5(p, {}),
    "other_kind.hdf5": lambda p: make_foreign_hdf5(p, {"medmask_store": json.dumps({"kind": "case"})}),
    "newer_version.h5": lambda p: make_foreign_hdf5(
        p, {"medmask_store": json.dumps({"format_version": 99, "kind": "archive"})}),
    "hdf5_file.zarr.zip": lambda p: make_foreign_hdf5(p, {}),
    "zip_file.h5": make_foreign_zip,
    "empty.h5": lambda p: p.write_bytes(b""),
    "empty.zarr.zip": lambda p: p.write_bytes(b""),
}


@pytest.mark.parametrize("mode", ["r", "r+", "a", "w", "w-"])
@pytest.mark.parametrize("name", list(NON_ARCHIVES))
def test_non_archive_files_are_refused_and_left_untouched(tmp_path, name, mode):
    path = tmp_path / name
    NON_ARCHIVES[name](path)
    before = file_bytes(path)
    with pytest.raises(InvalidArchive):
        MaskArchive(path, mode)
    assert file_bytes(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no lock file or working copy left


FOREIGN_HDF5_OPENER = r"""
import json
import sys
import threading

import h5py
from h5py._objects import phil

from medmask_store import InvalidArchive, MaskArchive

path, mode, attributes = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with h5py.File(path, "w") as f:
    f["data"] = list(range(10))
    for key, value in attributes.items():
        f.attrs[key] = value
before = open(path, "rb").read()
kept = None
try:
    MaskArchive(path, mode)
except Exception as exc:
    kept = exc  # kept alive, as a logger, a debugger or a test framework keeps it
    raised = type(exc).__name__


def probe(out):  # can another thread use h5py now?
    acquired = phil.acquire(False)
    if acquired:
        phil.release()
    out.append(acquired)


out = []
thread = threading.Thread(target=probe, args=(out,))
thread.start()
thread.join()
print(json.dumps({"raised": raised if kept is not None else None, "unchanged": open(path, "rb").read() == before,
                  "h5py_lock_free": out[0]}))
"""
FOREIGN_ATTRIBUTES = [{"creator": "scanner software 1.2"}, {"version": 2}]


@pytest.mark.parametrize("attributes", FOREIGN_ATTRIBUTES, ids=["non-json-string", "integer"])
@pytest.mark.parametrize("mode", ["r", "a", "w"])
def test_hdf5_file_with_foreign_attributes_is_refused(tmp_path, attributes, mode):
    """An HDF5 file written by another tool, whose root attributes are not JSON strings.

    Run in a subprocess: the failure this documents leaves h5py's global lock held
    (see the next test), which can deadlock a later test of this process.
    """
    result = last_json_line(run_python(FOREIGN_HDF5_OPENER, tmp_path / "foreign.h5", mode, json.dumps(attributes)))
    assert result["unchanged"]
    assert result["raised"] == "InvalidArchive", result


@pytest.mark.parametrize("attributes", FOREIGN_ATTRIBUTES, ids=["non-json-string", "integer"])
def test_refusing_a_foreign_hdf5_file_leaves_h5py_usable_from_other_threads(tmp_path, attributes):
    result = last_json_line(run_python(FOREIGN_HDF5_OPENER, tmp_path / "foreign.h5", "r", json.dumps(attributes)))
    assert result["raised"] is not None and result["unchanged"]
    assert result["h5py_lock_free"], result


@pytest.mark.parametrize("mode", ["r", "a", "w"])
def test_zip_that_is_not_a_zarr_store_is_refused(tmp_path, mode):
    path = tmp_path / "foreign.zarr.zip"
    make_foreign_zip(path)
    before = file_bytes(path)
    try:
        with pytest.raises(InvalidArchive):
            MaskArchive(path, mode)
    finally:
        assert file_bytes(path) == before


@pytest.mark.parametrize("suffix", SINGLE_FILE, ids=lambda s: s.strip("."))
def test_mode_w_without_writes_publishes_an_empty_archive(tmp_path, suffix):
    path = tmp_path / f"archive{suffix}"
    masks, space = small_phantom(1)
    with MaskArchive(path, "w", S16) as archive:
        archive.add_case("old", masks, space=space)
    with MaskArchive(path, "w", S16) as archive:
        assert archive.case_ids() == []
    with MaskArchive(path, "r") as archive:
        assert archive.case_ids() == []


def test_h5_delete_and_overwrite_are_compacted_on_publish(tmp_path):
    cases = {f"c{i}": small_phantom(i, shape=(60, 52, 44)) for i in range(5)}
    path = tmp_path / "edited.h5"
    with MaskArchive(path, "w", S16) as archive:
        for case_id, (masks, space) in cases.items():
            archive.add_case(case_id, masks, space=space)
    full_size = path.stat().st_size
    replacement, space_r = small_phantom(42, shape=(60, 52, 44))
    for _ in range(3):  # separate sessions
        with MaskArchive(path, "a", S16) as archive:
            archive.add_case("c1", cases["c2"][0], space=cases["c2"][1], overwrite=True)
            archive.add_case("c1", replacement, space=space_r, overwrite=True)
    with MaskArchive(path, "a", S16) as archive, archive.batch():  # one session, one publish
        for case_id in ("c0", "c3", "c4"):
            archive.delete_case(case_id)
        archive.add_case("c2", cases["c0"][0], space=cases["c0"][1], overwrite=True)
        archive.add_case("c2", cases["c2"][0], space=cases["c2"][1], overwrite=True)
    fresh = tmp_path / "fresh.h5"
    with MaskArchive(fresh, "w", S16) as archive:
        archive.add_case("c1", replacement, space=space_r)
        archive.add_case("c2", cases["c2"][0], space=cases["c2"][1])
    edited_size, fresh_size = path.stat().st_size, fresh.stat().st_size
    assert edited_size <= fresh_size + max(4096, fresh_size // 50), (edited_size, fresh_size)
    assert edited_size < full_size
    with MaskArchive(path, "r") as archive:
        assert archive.case_ids() == ["c1", "c2"]
        assert_case_matches(archive["c1"], replacement)
        assert_case_matches(archive["c2"], cases["c2"][0])


@pytest.mark.parametrize(
    "suffix",
    [".zarr", ".zarr.zip", ".h5"],
    ids=lambda s: s.strip("."),
)
def test_case_read_after_its_writer_closed_is_never_silently_wrong(tmp_path, suffix):
    path = tmp_path / f"archive{suffix}"
    masks, space = small_phantom(1)
    with MaskArchive(path, "w", S16) as archive:
        case = archive.add_case("c1", masks, space=space)
        for name, mask in masks.items():  # read once while open (as an export inside the block would)
            np.testing.assert_array_equal(case.read_organ(name), mask, err_msg=name)
    for name in masks:
        with pytest.raises(ArchiveClosed, match="archive is closed"):
            case.read_organ(name)


@pytest.mark.parametrize(
    "suffix",
    [".zarr.zip", ".h5"],
    ids=lambda s: s.strip("."),
)
def test_writers_of_two_archives_with_related_names_do_not_interfere(tmp_path, suffix):
    """Two single-file archives in one folder, one name extending the other (e.g. a versioned copy)."""
    masks, space = small_phantom(1)
    first = tmp_path / f"study{suffix}"
    second = tmp_path / f"study{suffix}.2{suffix}"
    writer_2 = MaskArchive(second, "a", S16)
    try:
        writer_2.add_case("one", masks, space=space)
        with MaskArchive(first, "a", S16) as writer_1:
            writer_1.add_case("x", masks, space=space)
        writer_2.add_case("two", masks, space=space)
    finally:
        writer_2.close()
    with MaskArchive(second, "r") as archive:
        assert archive.case_ids() == ["one", "two"]
        assert_case_matches(archive["two"], masks)
    with MaskArchive(first, "r") as archive:
        assert archive.case_ids() == ["x"]
