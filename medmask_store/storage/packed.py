"""Packed single-file backend (``.msk``): a whole archive in one file with almost no overhead.

Made for single masks (:class:`~medmask_store.SegmentationMask` files) and small
collections, where the fixed costs of Zarr (a JSON document per array, a shard
index entry per chunk) or HDF5 (object headers, B-trees) outweigh the voxels.

Layout (integers little-endian)::

    offset  size  field
    0       4     magic   b"MSKP"
    4       1     format version (1)
    5       4     n       byte length of the catalog
    9       n     catalog one Zstd frame (with checksum) of a JSON document, compressed
                  with :data:`CATALOG_DICTIONARY` (raw content; a one-organ catalog: ~280 bytes)
    9 + n   ...   data    chunk bytes (and the archive index), located by the catalog

The catalog holds the archive attributes and, per case, the case attributes
(as in Zarr) and its arrays: shape, dtype, chunk shape, chunk codec and
``[chunk coords..., offset, length]`` of every stored chunk (offsets from the
start of the data). Chunks are encoded as in HDF5 (:data:`~medmask_store.codecs.chunks.ENCODERS`),
each with its own checksum, so a read of one region decodes only its chunks.

Readers read the catalog once and chunks with ``os.pread``. Writers hold the
lock of :mod:`.single_file`, keep the archive in memory and rewrite the file on
commit (atomic replace): fine for small archives, wrong for thousands of cases.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from medmask_store.codecs.chunks import chunk_decoder
from medmask_store.errors import CaseExists, CaseNotFound, CorruptChunk, InvalidArchive
from medmask_store.model.attributes import ARCHIVE_ATTRIBUTES, check_archive_attributes
from medmask_store.storage.chunked import ChunkCoords, ChunkedArray
from medmask_store.storage.layout import ArrayToWrite, StorageSettings
from medmask_store.storage.single_file import SingleFileEditor, SingleWriter

MAGIC = b"MSKP"
VERSION = 1
HEADER = struct.Struct("<4sBI")
CATALOG_LEVEL = 19
# Part of the format: a typical catalog, so small catalogs cost their values, not their keys.
CATALOG_DICTIONARY = zstandard.ZstdCompressionDict(
    b'{"attributes":{"medmask_store":{"format_version":2,"kind":"archive"}},"cases":{"mask":{"attributes":'
    b'{"medmask_store":{"format_version":2,"space":{"shape":[512,512,300],"origin":[0.0,0.0,0.0],'
    b'"spacing":[1.5,1.5,1.5],"x_orientation":[1.0,0.0,0.0],"y_orientation":[0.0,1.0,0.0],'
    b'"z_orientation":[0.0,0.0,1.0]},"mapping":{"liver":1},"binary_layers":[],"layer_origins":[[0,0,0]],'
    b'"stats":{"organs":["liver"],"voxels":[1000],"bbox":[[0,10,0,10,0,10]],"centroid_voxel":[[5.0,5.0,5.0]]},'
    b'"meta":{"array_dtype":"uint8"},"organ_affines":{"affines":[],"organs":{}}}},"arrays":{"label_volume":'
    b'{"shape":[512,512,300],"dtype":"|u1","chunks":[64,64,64],"codec":"zstd","stored":[[0,0,0,0,100]]},'
    b'"binary_layers":{"shape":[1,64,64,64],"dtype":"|b1","chunks":[1,64,64,64],"codec":"packbits_zstd",'
    b'"stored":[[0,0,0,0,0,100]]}}}},"index":null,"crackle_zstd"}',
    dict_type=zstandard.DICT_TYPE_RAWCONTENT,
)


@dataclass
class PackedArray:
    """One stored array: its description and where its chunks are (data offsets or bytes in memory)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    codec: str
    locations: dict[ChunkCoords, tuple[int, int]] = field(default_factory=dict)
    in_memory: dict[ChunkCoords, bytes] = field(default_factory=dict)

    def to_json(self, locations: dict[ChunkCoords, tuple[int, int]]) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype.str,
            "chunks": list(self.chunks),
            "codec": self.codec,
            "stored": [[*coords, offset, length] for coords, (offset, length) in sorted(locations.items())],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PackedArray:
        ndim = len(data["shape"])
        locations = {tuple(entry[:ndim]): (entry[ndim], entry[ndim + 1]) for entry in data["stored"]}
        return cls(tuple(data["shape"]), np.dtype(data["dtype"]), tuple(data["chunks"]), data["codec"], locations)


@dataclass
class PackedCase:
    attributes: dict[str, Any]
    arrays: dict[str, PackedArray]


class PackedFileBackend(SingleWriter):
    """Cases of a ``.msk`` file: catalog in memory, chunks read with ``os.pread``."""

    def __init__(self, path: Path, mode: str, settings: StorageSettings) -> None:
        self.path = path
        self.read_only = mode == "r"
        self.closed = False
        self._editor = None if self.read_only else SingleFileEditor(path, mode, ".msk")
        self._descriptor: int | None = None
        self._cases: dict[str, PackedCase] = {}
        self._index: tuple[int, int] | bytes | None = None
        self._dirty = False
        try:
            if path.exists():
                self._load()  # also refuses to replace anything but a packed archive
            elif self.read_only:
                raise InvalidArchive(f"{path} does not exist; open it with mode 'a' or 'w' to create one")
            if mode == "w" or not path.exists():
                self._cases, self._index, self._dirty = {}, None, True
            elif not self.read_only:
                self._hold_in_memory()
        except BaseException:
            self.close()
            raise

    # -- reading the file --------------------------------------------------
    def _load(self) -> None:
        self._descriptor = os.open(self.path, os.O_RDONLY)
        header = os.pread(self._descriptor, HEADER.size, 0)
        if len(header) < HEADER.size or header[:4] != MAGIC:
            raise InvalidArchive(f"{self.path} is not a packed medmask_store file (no {MAGIC!r} header)")
        _, version, length = HEADER.unpack(header)
        if version != VERSION:
            raise InvalidArchive(f"{self.path} is packed format version {version}; this medmask_store reads {VERSION}")
        frame = os.pread(self._descriptor, length, HEADER.size)
        try:
            decompressor = zstandard.ZstdDecompressor(dict_data=CATALOG_DICTIONARY).decompressobj()
            text = decompressor.decompress(frame)
            if not decompressor.eof or decompressor.unused_data:  # the frame must end where the header says
                raise ValueError(f"the catalog frame does not end at byte {HEADER.size + length}")
            catalog = json.loads(text)
        except (zstandard.ZstdError, ValueError) as exc:
            raise InvalidArchive(f"{self.path}: the catalog is corrupt ({exc})") from exc
        check_archive_attributes(catalog.get("attributes", {}), self.path)
        self._data_start = HEADER.size + length
        self._cases = {
            case_id: PackedCase(
                entry["attributes"], {name: PackedArray.from_json(a) for name, a in entry["arrays"].items()}
            )
            for case_id, entry in catalog["cases"].items()
        }
        self._index = tuple(catalog["index"]) if catalog.get("index") else None  # type: ignore[assignment]

    def _hold_in_memory(self) -> None:
        """Writers keep every chunk in memory: the file is rewritten on commit."""
        for case in self._cases.values():
            for array in case.arrays.values():
                array.in_memory = {c: self._read(*where) for c, where in array.locations.items()}
                array.locations = {}
        if isinstance(self._index, tuple):
            self._index = self._read(*self._index)

    def _read(self, offset: int, length: int) -> bytes:
        assert self._descriptor is not None
        data = os.pread(self._descriptor, length, self._data_start + offset)
        if len(data) != length:
            raise CorruptChunk(f"{self.path} is truncated: {length} bytes at data offset {offset} are missing")
        return data

    # -- Backend: reading ----------------------------------------------------
    def case_ids(self) -> list[str]:
        return sorted(self._cases)

    def read_case_attributes(self, case_id: str) -> dict[str, Any]:
        return self._case(case_id).attributes

    def _case(self, case_id: str) -> PackedCase:
        if case_id not in self._cases:
            raise CaseNotFound(f"no case {case_id!r} in {self.path}")
        return self._cases[case_id]

    def open_array(self, case_id: str, name: str) -> ChunkedArray | None:
        case = self._case(case_id)
        array = case.arrays.get(name)
        if array is None:
            return None
        decode = chunk_decoder(array.codec, array.dtype, array.chunks, zarr=False)
        where = f"{self.path}:{case_id}/{name}"

        def fetch(coords: ChunkCoords) -> bytes | None:
            if self._cases.get(case_id) is not case:
                raise CaseNotFound(f"case {case_id!r} was replaced or deleted since it was opened; open it again")
            if coords in array.locations:
                return self._read(*array.locations[coords])
            return array.in_memory.get(coords)

        return ChunkedArray.of_stored(array.shape, array.dtype, array.chunks, fetch, decode, where)

    def read_index(self) -> bytes | None:
        if isinstance(self._index, tuple):
            return self._read(*self._index)
        return self._index

    # -- Backend: writing ----------------------------------------------------
    def write_case(
        self, case_id: str, attributes: dict[str, Any], arrays: list[ArrayToWrite], overwrite: bool
    ) -> None:
        self._check_writable()
        if case_id in self._cases and not overwrite:
            raise CaseExists(f"case {case_id!r} already exists in {self.path}; pass overwrite=True to replace it")
        stored = {
            array.name: PackedArray(
                array.data.shape, array.data.dtype, array.chunks, array.codec, in_memory=dict(array.encoded_chunks())
            )
            for array in arrays
        }
        self._cases[case_id] = PackedCase(json.loads(json.dumps(attributes)), stored)
        self._dirty = True

    def delete_case(self, case_id: str) -> None:
        self._check_writable()
        self._case(case_id)
        del self._cases[case_id]
        self._dirty = True

    def update_index(self, build: Callable[[bytes | None], bytes]) -> None:
        self._check_writable()
        self._index = build(self.read_index()) or None
        self._dirty = True

    def _write_snapshot(self, destination: Path) -> None:
        blobs: list[bytes] = []
        offset = 0

        def place(data: bytes) -> list[int]:
            nonlocal offset
            blobs.append(data)
            offset += len(data)
            return [offset - len(data), len(data)]

        cases = {}
        for case_id, case in sorted(self._cases.items()):
            arrays = {}
            for name, array in case.arrays.items():
                locations = {coords: tuple(place(data)) for coords, data in sorted(array.in_memory.items())}
                arrays[name] = array.to_json(locations)  # type: ignore[arg-type]
            cases[case_id] = {"attributes": case.attributes, "arrays": arrays}
        index = place(self._index) if isinstance(self._index, bytes) else None
        catalog = {"attributes": ARCHIVE_ATTRIBUTES, "cases": cases, "index": index}
        text = json.dumps(catalog, separators=(",", ":")).encode()
        compressor = zstandard.ZstdCompressor(
            level=CATALOG_LEVEL, dict_data=CATALOG_DICTIONARY, write_checksum=True, write_dict_id=False
        )
        frame = compressor.compress(text)
        with open(destination, "wb") as handle:
            handle.write(HEADER.pack(MAGIC, VERSION, len(frame)))
            handle.write(frame)
            handle.writelines(blobs)

    def close(self) -> None:
        self.closed = True
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
        if self._editor is not None:
            self._editor.close()
            self._editor = None
