"""What is specific to the HDF5, single-file Zarr and packed (.msk) backends: format choice,
interoperability, chunk encodings (byte-identical binary-layer chunks), binary-layer windows,
checksums, locking and copy-on-write publishing.

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

import google_crc32c
import h5py
import numpy as np
import pytest
import zarr
import zstandard
from helpers import (
    assert_case_matches,
    box,
    flip_byte,
    kill_writer_when_ready,
    packed_chunks,
    packed_manifest,
    read_packed,
    side_files,
    write_packed,
)
from spacetransformer import Space

from medmask_store import CaseData, CorruptChunk, InvalidArchive, MaskArchive, StorageSettings
from medmask_store.errors import ArchiveClosed, ArchiveLocked
from medmask_store.model.manifest import unseal
from medmask_store.phantom import make_phantom

S16 = StorageSettings(chunk_size=16, label_level=3, layer_level=3)
SINGLE_FILE = [".h5", ".zarr.zip", ".msk"]
ALL_SUFFIXES = [".zarr", ".zarr.zip", ".h5", ".hdf5", ".msk"]
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
    pairs = struct.unpack(f"<{2 * n}Q", shard[-(16 * n + 4) : -4])
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


def zarr_document(path: Path, key: str) -> dict | None:
    """A JSON document of a .zarr directory or .zarr.zip (None if absent)."""
    if path.is_dir():
        return json.loads((path / key).read_text()) if (path / key).is_file() else None
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read(key)) if key in zf.namelist() else None


def zarr_object(path: Path, key: str) -> bytes | None:
    if path.is_dir():
        return (path / key).read_bytes() if (path / key).is_file() else None
    with zipfile.ZipFile(path) as zf:
        return zf.read(key) if key in zf.namelist() else None


def stored_chunk_locations(
    path: Path, case_id: str, name: str
) -> tuple[tuple[int, ...], tuple[int, ...], dict[tuple[int, ...], tuple[int, int]]] | None:
    """Shape, chunk shape and stored chunks (coords -> (file offset, nbytes)) of one case array, read
    without medmask_store; None if the array is absent. Zarr: one shard covers the whole array (the
    offsets are within the shard for a directory, within the zip file for a .zarr.zip)."""
    if path.name.endswith(".msk"):
        catalog, data = read_packed(path)
        if name not in catalog["cases"][case_id]["chunks"]:
            return None
        array = packed_manifest(catalog, case_id, name)
        ndim = len(array["shape"])
        start = path.stat().st_size - len(data)
        stored = {tuple(e[:ndim]): (start + e[ndim], e[ndim + 1]) for e in packed_chunks(catalog, case_id, name)}
        return tuple(array["shape"]), tuple(array["chunks"]), stored
    if path.name.endswith((".h5", ".hdf5")):
        with h5py.File(path, "r") as f:
            dataset = f[f"cases/{case_id}"].get(name)
            if dataset is None:
                return None
            return dataset.shape, dataset.chunks, h5_chunks(dataset)
    assert path.name.endswith((".zarr", ".zarr.zip")), path
    metadata = zarr_document(path, f"cases/{case_id}/{name}/zarr.json")
    if metadata is None:
        return None
    shape = tuple(metadata["shape"])
    chunks = tuple(metadata["codecs"][0]["configuration"]["chunk_shape"])
    assert tuple(metadata["chunk_grid"]["configuration"]["chunk_shape"]) == tuple(
        -(-s // c) * c for s, c in zip(shape, chunks)
    )  # one shard
    member = f"cases/{case_id}/{name}/c/" + "/".join("0" * len(shape))
    shard = zarr_object(path, member)
    if shard is None:  # an array without any stored chunk has no shard
        return shape, chunks, {}
    base = 0 if path.is_dir() else zip_member_data_offset(path, member)
    return shape, chunks, {c: (base + o, n) for c, (o, n) in shard_chunks(shard, grid_of(shape, chunks)).items()}


def stored_chunk_bytes(path: Path, case_id: str, name: str) -> dict[tuple[int, ...], bytes]:
    """The stored bytes of every chunk of one case array (see ``stored_chunk_locations``)."""
    found = stored_chunk_locations(path, case_id, name)
    assert found is not None, (path, case_id, name)
    shape, chunks, stored = found
    if path.name.endswith((".h5", ".hdf5")):
        with h5py.File(path, "r") as f:
            dataset = f[f"cases/{case_id}/{name}"]
            result = {}
            for coords in stored:
                filter_mask, raw = dataset.id.read_direct_chunk(tuple(c * n for c, n in zip(coords, chunks)))
                assert filter_mask == 0
                result[coords] = bytes(raw)
            return result
    if path.is_dir():
        raw = zarr_object(path, f"cases/{case_id}/{name}/c/" + "/".join("0" * len(shape)))
        assert raw is not None
        return {c: raw[o : o + n] for c, (o, n) in stored.items()}
    raw = path.read_bytes()
    return {c: raw[o : o + n] for c, (o, n) in stored.items()}


def expected_windows(layers: np.ndarray, origins, extent: tuple[int, ...], chunk: int) -> np.ndarray:
    """The stored windows, from the full-volume layers: each layer cut at its origin to ``extent``
    (zero beyond the volume). Checks the documented rule: origins chunk-aligned, each window holds all of
    its layer's voxels, and ``extent`` is the smallest chunk-aligned extent that holds every layer."""
    assert len(origins) == len(layers)
    spans = []
    windows = np.zeros((len(layers), *extent), dtype=bool)
    for window, layer, origin in zip(windows, layers, origins):
        assert all(o % chunk == 0 for o in origin), origins
        coords = np.argwhere(layer)
        lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
        spans.append([-(-h // chunk) * chunk - lo_ // chunk * chunk for lo_, h in zip(lo, hi)])
        part = layer[tuple(slice(o, o + e) for o, e in zip(origin, extent))]
        window[tuple(slice(0, n) for n in part.shape)] = part
        assert np.count_nonzero(window) == np.count_nonzero(layer), origin  # the whole layer is inside
    assert list(extent) == np.max(spans, axis=0).tolist()
    return windows


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
    elif suffix == ".msk":
        assert path.is_file() and path.read_bytes()[:4] == b"MSKP" and not h5py.is_hdf5(path)
        catalog, _ = read_packed(path)
        assert unseal(catalog["attributes"]["medmask_store"], "root") == {"format_version": 3, "kind": "archive"}
        assert list(catalog["cases"]) == ["c1"]
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
    assert unseal(result["root"], "root") == {"format_version": 3, "kind": "archive"}
    content = unseal(content, "case")
    assert content["format_version"] == 3
    assert content["space"]["shape"] == [70, 60, 50]
    assert content["space"]["spacing"] == [1.5, 1.5, 2.0]
    assert Space.from_dict(content["space"]) == space
    assert content["mapping"] == expected.mapping
    assert list(content["mapping"]) == list(masks)  # order kept
    assert content["binary_layers"] == list(expected.layer_names)
    # binary layers are windows: one chunk-aligned voxel origin per layer, the window shape in the dataset
    with h5py.File(path, "r") as f:
        windows = f["cases/ct 1/binary_layers"]
        assert windows.shape[0] == len(expected.layer_names) and windows.chunks == (1, 16, 16, 16)
        extent = windows.shape[1:]
    assert len(content["layer_origins"]) == len(expected.layer_names)
    expected_windows(expected.binary_layers, content["layer_origins"], extent, 16)
    assert content["meta"] == {"age": 61}
    assert set(content["stats"]["organs"]) == {n for n, m in masks.items() if m.any()}  # columns, non-empty organs


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


# -- 3. chunk encodings: binary-layer chunks byte-identical everywhere; label chunks per backend ------------


def test_binary_layer_chunks_are_byte_identical_in_zarr_hdf5_and_msk(tmp_path):
    settings = StorageSettings(chunk_size=16)
    masks, space = make_phantom(shape=(70, 60, 50), n_organs=6, n_empty=2, seed=3)
    expected = CaseData.from_masks(masks, space=space)
    assert expected.layer_names
    suffixes = (".zarr", ".zarr.zip", ".h5", ".msk")
    for suffix in suffixes:
        with MaskArchive(tmp_path / f"archive{suffix}", "w", settings) as archive:
            archive.add_case("p", masks, space=space)
            origins = archive["p"].info.layer_origins
    chunks = (1, 16, 16, 16)
    layouts = {
        suffix: stored_chunk_locations(tmp_path / f"archive{suffix}", "p", "binary_layers") for suffix in suffixes
    }
    shape = layouts[".zarr"][0]
    assert all(layout[:2] == (shape, chunks) for layout in layouts.values()), layouts
    assert shape[0] == len(expected.layer_names)
    windows = expected_windows(expected.binary_layers, origins, shape[1:], 16)
    assert shape[1:] != tuple(space.shape)  # windows, not the whole volume
    expected_set = nonempty_chunks(windows, chunks)
    assert len(expected_set) > 4  # several chunks, else the comparison says little
    stored = {suffix: stored_chunk_bytes(tmp_path / f"archive{suffix}", "p", "binary_layers") for suffix in suffixes}
    for suffix in suffixes:
        assert set(stored[suffix]) == expected_set, suffix
        for coords, raw in stored[suffix].items():
            assert raw == stored[".zarr"][coords], (suffix, coords)
            # a PackBits+Zstd frame, then its crc32c
            assert raw[:4] == b"PBZ1" and raw[-4:] == struct.pack("<I", google_crc32c.value(raw[:-4])), coords


def test_label_chunk_encodings_per_backend(tmp_path):
    """Zarr and .msk: a Zstd frame (content size, no frame checksum) + crc32c of the stored bytes, as the
    zstd -> crc32c chain of its zarr.json says; HDF5: a Zstd frame with its content checksum (filter 32015)."""
    masks, space = make_phantom(shape=(70, 60, 50), n_organs=6, n_empty=2, seed=3)
    expected = CaseData.from_masks(masks, space=space)
    suffixes = (".zarr", ".zarr.zip", ".h5", ".msk")
    for suffix in suffixes:
        with MaskArchive(tmp_path / f"archive{suffix}", "w", S16) as archive:
            archive.add_case("p", masks, space=space)
    stored = {suffix: stored_chunk_bytes(tmp_path / f"archive{suffix}", "p", "label_volume") for suffix in suffixes}
    expected_set = nonempty_chunks(expected.label_volume, (16, 16, 16))
    decompressor = zstandard.ZstdDecompressor()
    for suffix, chunks in stored.items():
        assert set(chunks) == expected_set, suffix
        for coords, raw in chunks.items():
            if suffix != ".h5":
                frame = raw[:-4]
                assert raw[-4:] == struct.pack("<I", google_crc32c.value(frame)), (suffix, coords)
            else:
                frame = raw
            parameters = zstandard.get_frame_parameters(frame)
            assert parameters.content_size == 16**3, (suffix, coords)
            assert parameters.has_checksum == (suffix == ".h5"), (suffix, coords)
            block = np.zeros((16, 16, 16), np.uint8)
            part = expected.label_volume[tuple(slice(c * 16, (c + 1) * 16) for c in coords)]
            block[tuple(slice(0, n) for n in part.shape)] = part
            assert decompressor.decompress(frame) == block.tobytes(), (suffix, coords)
    assert stored[".zarr"] == stored[".zarr.zip"] == stored[".msk"]
    with h5py.File(tmp_path / "archive.h5", "r") as f:
        plist = f["cases/p/label_volume"].id.get_create_plist()
        assert [plist.get_filter(i)[0] for i in range(plist.get_nfilters())] == [32015]
    metadata = zarr_document(tmp_path / "archive.zarr", "cases/p/label_volume/zarr.json")
    assert metadata is not None
    inner = metadata["codecs"][0]["configuration"]["codecs"]
    assert [c["name"] for c in inner] == ["bytes", "zstd", "crc32c"]  # the chain the frames above follow
    assert inner[1]["configuration"] == {"level": 3, "checksum": False}


ZARR_LABELS_READER = r"""
import json
import os
import sys

import numpy
import tensorstore
import zarr
from zarr.storage import ZipStore

path, expected_file = sys.argv[1:3]
expected = numpy.load(expected_file)
key = "cases/p/label_volume"
if path.endswith(".zip"):
    by_zarr = zarr.open_array(ZipStore(path, mode="r"), path=key, mode="r")[...]
    kvstore = {"driver": "zip", "base": {"driver": "file", "path": path}, "path": key + "/"}
else:
    by_zarr = zarr.open_array(os.path.join(path, key), mode="r")[...]
    kvstore = {"driver": "file", "path": os.path.join(path, key)}
by_tensorstore = tensorstore.open({"driver": "zarr3", "kvstore": kvstore}, read=True).result().read().result()


def same(array):
    return bool(array.dtype == expected.dtype and array.shape == expected.shape and (array == expected).all())


print(json.dumps({
    "zarr": same(by_zarr),
    "tensorstore": same(by_tensorstore),
    "imported": sorted(m for m in sys.modules if m.split(".")[0] == "medmask_store"),
}))
"""


@pytest.mark.parametrize("suffix", [".zarr", ".zarr.zip"], ids=lambda s: s.strip("."))
def test_zarr_shards_read_with_zarr_python_and_tensorstore(tmp_path, suffix):
    """Shards assembled by medmask_store: plain zarr-python and tensorstore read the label volume
    (without medmask_store); zarr-python with medmask_store installed reads the binary-layer windows."""
    masks, space = make_phantom(shape=(70, 60, 50), n_organs=6, n_empty=2, seed=3)
    expected = CaseData.from_masks(masks, space=space)
    path = tmp_path / f"archive{suffix}"
    with MaskArchive(path, "w", S16) as archive:
        archive.add_case("p", masks, space=space)
        origins = archive["p"].info.layer_origins
    expected_file = tmp_path / "expected.npy"
    np.save(expected_file, expected.label_volume)
    result = last_json_line(run_python(ZARR_LABELS_READER, path, expected_file))
    assert result == {"zarr": True, "tensorstore": True, "imported": []}
    key = "cases/p/binary_layers"
    if suffix == ".zarr":
        layers = zarr.open_array(str(path / key), mode="r")[...]
    else:
        layers = zarr.open_array(zarr.storage.ZipStore(path, mode="r"), path=key, mode="r")[...]
    assert layers.dtype == np.bool_
    np.testing.assert_array_equal(layers, expected_windows(expected.binary_layers, origins, layers.shape[1:], 16))


# -- 4. binary layers are stored as windows -------------------------------------------------------------

CORNER_SHAPE = (200, 150, 130)  # chunk grid 4 x 3 x 3 of 64; the corner chunk (3, 2, 2) starts at (192, 128, 128)


def corner_overlap_case() -> tuple[dict[str, np.ndarray], Space]:
    """All overlap voxels in the far corner chunk of a large volume: ``inner`` lies wholly inside ``big``
    (a layer only); ``spread`` has 40 voxels inside ``big`` there (its layer) and a cube at the origin
    (label volume), so its bounding box is the whole volume while its layer is one chunk."""
    big = box(CORNER_SHAPE, (150, 200), (100, 150), (100, 130))
    inner = box(CORNER_SHAPE, (192, 200), (128, 150), (128, 130))
    spread = box(CORNER_SHAPE, (196, 200), (145, 150), (128, 130)) | box(CORNER_SHAPE, (0, 10), (0, 10), (0, 10))
    space = Space(shape=CORNER_SHAPE, spacing=(0.8, 0.8, 2.5))
    return {"big": big, "inner": inner, "spread": spread}, space


def test_binary_layers_are_windows_around_their_voxels(archive_path):
    masks, space = corner_overlap_case()
    settings = StorageSettings(chunk_size=64, label_level=3, layer_level=3)
    with MaskArchive(archive_path, "w", settings) as archive:
        archive.add_case("corner", masks, space=space)
    with MaskArchive(archive_path) as archive:
        case = archive["corner"]
        # placed largest first: big, spread (1040 voxels), inner (352)
        assert case.info.layer_names == ("spread", "inner")
        assert case.representation("big") == "label_volume"
        assert case.representation("spread") == case.representation("inner") == "binary_layer"
        assert case.info.layer_origins == ((192, 128, 128), (192, 128, 128))
        assert_case_matches(case, masks)
        assert case.stored_layers is not None and case.stored_layers.shape == (2, *CORNER_SHAPE)
        layers = case.stored_layers[...]
        stored = case.read_labels(include_layers=False)
    np.testing.assert_array_equal(layers[0], masks["spread"] & masks["big"])
    np.testing.assert_array_equal(layers[1], masks["inner"])
    np.testing.assert_array_equal(stored == 3, masks["spread"] & ~masks["big"])
    # on disk: one (2, 64, 64, 64) window array holding one chunk per layer, at window chunk (0, 0, 0)
    shape, chunks, stored_chunks = stored_chunk_locations(archive_path, "corner", "binary_layers")
    assert (shape, chunks) == ((2, 64, 64, 64), (1, 64, 64, 64))
    assert set(stored_chunks) == {(0, 0, 0, 0), (1, 0, 0, 0)}
    label_shape, _, label_chunks = stored_chunk_locations(archive_path, "corner", "label_volume")
    assert label_shape == CORNER_SHAPE
    assert set(label_chunks) == nonempty_chunks(stored, (64, 64, 64))


# -- 5. empty chunks are never stored ----------------------------------------------------------------


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


@pytest.mark.parametrize("suffix", SINGLE_FILE, ids=lambda s: s.strip("."))
def test_single_file_archives_store_only_nonempty_chunks(tmp_path, suffix):
    masks, space = sparse_case()
    expected = CaseData.from_masks(masks, space=space)
    path = tmp_path / f"archive{suffix}"
    with MaskArchive(path, "w", S16) as archive:
        archive.add_case("sparse", masks, space=space)
        archive.add_case("empty", {"x": np.zeros((20, 20, 20), bool)})
        origins = archive["sparse"].info.layer_origins
    label_shape, _, labels = stored_chunk_locations(path, "sparse", "label_volume")
    layer_shape, _, layers = stored_chunk_locations(path, "sparse", "binary_layers")
    label_expected = nonempty_chunks(expected.label_volume, (16, 16, 16))
    assert label_shape == space.shape
    assert set(labels) == label_expected
    assert len(label_expected) < int(np.prod(grid_of(space.shape, (16,) * 3)))
    # one layer of 27 voxels: a window of one chunk at the volume's first chunk
    assert expected.layer_names == ["inner"] and origins == ((0, 0, 0),)
    assert layer_shape == (1, 16, 16, 16)
    assert set(layers) == {(0, 0, 0, 0)}
    empty_shape, _, empty_labels = stored_chunk_locations(path, "empty", "label_volume")
    assert empty_shape == (20, 20, 20) and empty_labels == {}  # an all-empty case stores no chunk
    assert stored_chunk_locations(path, "empty", "binary_layers") is None
    with MaskArchive(path, "r") as archive:
        assert_case_matches(archive["sparse"], masks)
        assert not archive["empty"].read_labels().any()


# -- 6. checksums: a flipped byte raises CorruptChunk in every backend ----------------------------------


def affected_organ(info, expected: CaseData, array: str, coords: tuple[int, ...]) -> str:
    """An organ whose voxels live in the given stored chunk of ``array``."""
    if array == "binary_layers":
        return info.layer_names[coords[0]]
    block = expected.label_volume[tuple(slice(c * 16, (c + 1) * 16) for c in coords)]
    values = set(np.unique(block).tolist()) - {0}
    names = [n for n, v in info.mapping.items() if v in values]
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


@pytest.mark.parametrize("which", ["first", "middle"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("array", ["label_volume", "binary_layers"])
@pytest.mark.parametrize("suffix", SINGLE_FILE, ids=lambda s: s.strip("."))
def test_flipped_byte_raises_corrupt_chunk(tmp_path, suffix, array, where, which):
    """A byte flipped in a stored chunk (the first one in the file, or the middle one in chunk order)."""
    path = tmp_path / f"archive{suffix}"
    masks, space, info = write_phantom_case(path)
    expected = CaseData.from_masks(masks, space=space)
    _, _, stored = stored_chunk_locations(path, "p", array)
    if which == "first":
        coords, (offset, nbytes) = min(stored.items(), key=lambda item: item[1][0])
    else:
        coords, (offset, nbytes) = sorted(stored.items())[len(stored) // 2]
    organ = affected_organ(info, expected, array, coords)
    flip_byte(path, byte_in(offset, nbytes, where))
    assert_corruption_detected(path, array, organ, masks)


# -- 7. one writer at a time for single-file archives -----------------------------------------------

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


# -- 8. copy-on-write publishing -------------------------------------------------------------------


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
        # while it sits in its batch: its lock exists, readers see only "a"; its working copy is a file
        # beside the archive (.msk: in memory until the commit writes a snapshot)
        working = [name for name in side_files(path) if f".{proc.pid}.working" in name]
        assert working if not path.name.endswith(".msk") else working == [], side_files(path)
        assert f".{path.name}.lock" in side_files(path)
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
    if suffix == ".msk":  # its batch was in memory: leave what a writer killed while publishing leaves
        (path.parent / f".{path.name}.{pid}.working-snapshot").write_bytes(b"MSKP partial snapshot")
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
        p, {"medmask_store": json.dumps({"format_version": 99, "kind": "archive"})}
    ),
    "hdf5_file.zarr.zip": lambda p: make_foreign_hdf5(p, {}),
    "zip_file.h5": make_foreign_zip,
    "empty.h5": lambda p: p.write_bytes(b""),
    "empty.zarr.zip": lambda p: p.write_bytes(b""),
    # archives of format version 1 (binary layers held whole organs, no windows) are refused, never misread
    "version_1.h5": lambda p: make_foreign_hdf5(
        p, {"medmask_store": json.dumps({"format_version": 1, "kind": "archive"})}
    ),
    "text.msk": lambda p: p.write_text("just text\n"),
    "empty.msk": lambda p: p.write_bytes(b""),
    "hdf5_file.msk": lambda p: make_foreign_hdf5(p, {}),
    "zip_file.msk": make_foreign_zip,
    "version_1.msk": lambda p: write_packed(
        p, {"attributes": {"medmask_store": {"format_version": 1, "kind": "archive"}}, "cases": {}, "index": None}, b""
    ),
    "newer_packing.msk": lambda p: p.write_bytes(struct.pack("<4sBII", b"MSKP", 3, 0, 0)),
    # archives of format version 2 (no checksums) are refused, never read unchecked
    "version_2.h5": lambda p: make_foreign_hdf5(
        p, {"medmask_store": json.dumps({"format_version": 2, "kind": "archive"})}
    ),
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
    [".zarr", ".zarr.zip", ".h5", ".msk"],
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
    SINGLE_FILE,
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
