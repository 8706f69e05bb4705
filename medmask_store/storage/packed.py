"""Packed single-file backend (``.msk``): a whole archive in one file with almost no overhead.

Made for single masks (:class:`~medmask_store.SegmentationMask` files) and small
collections, where the fixed costs of Zarr (a JSON document per array, a shard
index entry per chunk) or HDF5 (object headers, B-trees) outweigh the voxels.

Layout (integers little-endian)::

    offset  size  field
    0       4     magic   b"MSKP"
    4       1     format version (2)
    5       4     n       byte length of the catalog
    9       4     crc32c  of the catalog's n bytes
    13      n     catalog one Zstd frame of a JSON document, compressed with
                  :data:`CATALOG_DICTIONARY` (raw content; a one-organ catalog: ~260 bytes)
    13 + n  ...   data    chunk bytes (and the archive index), located by the catalog

The catalog holds the sealed archive attributes and, per case, its sealed
attributes (as in Zarr, with the manifest of its arrays: shape, dtype, chunk
shape, codec, chunk digest) and ``[chunk coords..., offset, length]`` of every
stored chunk of each array (offsets from the start of the data). Chunks are
encoded as in Zarr (:data:`~medmask_store.codecs.chunks.ZARR_ENCODERS`: each ends with
the crc32c of its stored bytes), so a read of one region decodes only its chunks and
detects any changed bit of them. Every byte of the file is covered by a checksum.

Readers read the catalog once (refusing catalogs above ``MAX_CATALOG_BYTES`` or
locations outside the file before allocating) and chunks with ``os.pread``.
Writers hold the lock of :mod:`.single_file`, keep the archive in memory and
rewrite the file on commit (atomic replace): fine for small archives, wrong for
thousands of cases.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import zstandard

from medmask_store.codecs.chunks import ZARR_ENCODERS
from medmask_store.errors import CaseExists, CaseNotFound, CorruptMetadata, InvalidArchive
from medmask_store.limits import MAX_CATALOG_BYTES
from medmask_store.model.attributes import archive_attributes, case_document, check_archive_attributes
from medmask_store.model.manifest import crc32c
from medmask_store.storage.backend import StoredArray, StoredCase
from medmask_store.storage.chunked import ChunkCoords
from medmask_store.storage.layout import EncodedCase, StorageSettings
from medmask_store.storage.remote import RemoteLocation, open_archive_file
from medmask_store.storage.single_file import SingleFileEditor, SingleWriter
from medmask_store.storage.zarr_store import StoredObject

MAGIC = b"MSKP"
VERSION = 2
HEADER = struct.Struct("<4sBII")
CATALOG_LEVEL = 19
# Part of the format: a typical catalog, so small catalogs cost their values, not their keys.
CATALOG_DICTIONARY = zstandard.ZstdCompressionDict(
    b'{"attributes":{"medmask_store":{"format_version":3,"kind":"archive","checksum":1234567890}},"cases":{"mask":'
    b'{"attributes":{"medmask_store":{"format_version":3,"space":{"shape":[512,512,300],"origin":[0.0,0.0,0.0],'
    b'"spacing":[1.5,1.5,1.5],"x_orientation":[1.0,0.0,0.0],"y_orientation":[0.0,1.0,0.0],'
    b'"z_orientation":[0.0,0.0,1.0]},"mapping":{"liver":1},"binary_layers":[],"layer_origins":[[0,0,0]],'
    b'"stats":{"organs":["liver"],"voxels":[1000],"bbox":[[0,10,0,10,0,10]],"centroid_voxel":[[5.0,5.0,5.0]]},'
    b'"meta":{"array_dtype":"uint8"},"organ_affines":{"affines":[],"organs":{}},"arrays":{"label_volume":'
    b'{"shape":[512,512,300],"dtype":"|u1","chunks":[64,64,64],"codec":"zstd","stored":100,"chunks_crc32c":1234567890},'
    b'"binary_layers":{"shape":[1,64,64,64],"dtype":"|b1","chunks":[1,64,64,64],"codec":"packbits_zstd","stored":1,'
    b'"chunks_crc32c":1234567890}},"checksum":1234567890}},"chunks":{"label_volume":[[0,0,0,0,100]],'
    b'"binary_layers":[[0,0,0,0,0,100]]}}},"index":null,"crackle_zstd"}',
    dict_type=zstandard.DICT_TYPE_RAWCONTENT,
)
Location = tuple[int, int]  # (offset from the start of the data, byte length)


@dataclass
class PackedCase:
    """One case: its sealed attributes and, per array, where its chunks are (in the file or in memory)."""

    attributes: dict[str, Any]
    locations: dict[str, dict[ChunkCoords, Location]] = field(default_factory=dict)
    in_memory: dict[str, dict[ChunkCoords, bytes]] = field(default_factory=dict)

    def to_json(self, place: Callable[[bytes], Location]) -> dict[str, Any]:
        """The catalog entry, placing every in-memory chunk with ``place``."""
        chunks = {
            name: [[*coords, *place(data)] for coords, data in sorted(stored.items())]
            for name, stored in self.in_memory.items()
        }
        return {"attributes": self.attributes, "chunks": chunks}

    @classmethod
    def from_json(cls, entry: object, data_size: int, what: str) -> PackedCase:
        """A catalog entry, every chunk location checked to lie inside the data section."""
        if not isinstance(entry, dict) or set(entry) != {"attributes", "chunks"} or not isinstance(entry["chunks"], dict):
            raise CorruptMetadata(f"{what}: malformed catalog entry")
        locations = {}
        for name, rows in entry["chunks"].items():
            if not isinstance(rows, list) or not all(_location_row(row, data_size) for row in rows):
                raise CorruptMetadata(f"{what}: array {name!r}: chunk locations are malformed or lie outside the file")
            locations[name] = {tuple(row[:-2]): (row[-2], row[-1]) for row in rows}
        return cls(entry["attributes"], locations)


def _location_row(row: object, data_size: int, coordinates: bool = True) -> bool:
    """Whether ``row`` is ``[coords..., offset, length]`` (or ``[offset, length]``) of plain
    integers locating bytes inside a data section of ``data_size`` bytes."""
    return (
        isinstance(row, list) and (len(row) > 2 if coordinates else len(row) == 2)
        and all(type(v) is int and v >= 0 for v in row) and row[-2] + row[-1] <= data_size
    )  # fmt: skip


class PackedFileBackend(SingleWriter):
    """Cases of a ``.msk`` file: catalog in memory, chunks read with ``os.pread``."""

    chunk_encoders = ZARR_ENCODERS

    def __init__(self, path: Path | RemoteLocation, mode: str, settings: StorageSettings) -> None:
        self.path = path  # type: ignore[assignment]
        self.read_only = mode == "r"
        self.closed = False
        self._file: StoredObject | None = None
        self._cases: dict[str, PackedCase] = {}
        self._damaged: dict[str, CorruptMetadata] = {}
        self._index: dict[str, Location | bytes] = {}  # the archive index's blobs by name
        self._dirty = False
        if isinstance(path, RemoteLocation):  # read in place, by ranges
            self._editor = None
            self._load(open_archive_file(path, mode))
            return
        self._editor = None if self.read_only else SingleFileEditor(path, mode, ".msk")
        try:
            if path.exists():
                self._load(open_archive_file(path, "r"))  # also refuses to replace anything but a packed archive
            elif self.read_only:
                raise InvalidArchive(f"{path} does not exist; open it with mode 'a' or 'w' to create one")
            if mode == "w" or not path.exists():
                self._cases, self._damaged, self._index, self._dirty = {}, {}, {}, True
            elif not self.read_only:
                self._hold_in_memory()
        except BaseException:
            self.close()
            raise

    # -- reading the file --------------------------------------------------
    def _load(self, file: StoredObject) -> None:
        self._file = file
        file_size = file.size
        header = file.read(0, min(HEADER.size, file_size))
        if len(header) < HEADER.size or header[:4] != MAGIC:
            raise InvalidArchive(f"{self.path} is not a packed medmask_store file (no {MAGIC!r} header)")
        _, version, length, checksum = HEADER.unpack(header)
        if version != VERSION:
            raise InvalidArchive(f"{self.path} is packed format version {version}; this medmask_store reads {VERSION}")
        if length > min(file_size - HEADER.size, MAX_CATALOG_BYTES):
            raise CorruptMetadata(f"{self.path}: the header declares a catalog of {length} bytes, the file holds {file_size}")
        frame = file.read(HEADER.size, length)
        if crc32c(frame) != checksum:
            raise CorruptMetadata(f"{self.path}: the catalog is corrupt (it fails its crc32c checksum)")
        catalog = self._read_catalog(frame)
        self._data_start = HEADER.size + length
        data_size = file_size - self._data_start
        cases, index = catalog["cases"], catalog["index"]
        if isinstance(index, list):  # the one-blob index of releases before the columnar one: rebuilt by writers
            index = None
        blobs_valid = isinstance(index, dict) and all(_location_row(row, data_size, coordinates=False) for row in index.values())
        if not isinstance(cases, dict) or not (index is None or blobs_valid):
            raise CorruptMetadata(f"{self.path}: the catalog is malformed (cases or index locations)")
        self._cases, self._damaged = {}, {}  # a damaged case fails when opened, not the whole file
        for case_id, entry in cases.items():
            try:
                self._cases[case_id] = PackedCase.from_json(entry, data_size, f"{self.path}: case {case_id!r}")
            except CorruptMetadata as exc:
                self._damaged[case_id] = exc
        self._index = {name: (row[0], row[1]) for name, row in (index or {}).items()}

    def _read_catalog(self, frame: bytes) -> dict[str, Any]:
        """The catalog document; its declared size is bounded before it is decompressed."""
        try:
            declared = zstandard.get_frame_parameters(frame).content_size
            if not 0 <= declared <= MAX_CATALOG_BYTES:
                raise ValueError(f"it declares {declared} bytes, the limit is {MAX_CATALOG_BYTES}")
            decompressor = zstandard.ZstdDecompressor(dict_data=CATALOG_DICTIONARY)
            catalog = json.loads(decompressor.decompress(frame, allow_extra_data=False))
        except (zstandard.ZstdError, ValueError, RecursionError) as exc:
            raise CorruptMetadata(f"{self.path}: the catalog is corrupt ({type(exc).__name__}: {exc})") from exc
        if not isinstance(catalog, dict) or set(catalog) != {"attributes", "cases", "index"}:
            raise CorruptMetadata(f"{self.path}: the catalog is malformed")
        check_archive_attributes(catalog["attributes"], self.path)
        return catalog

    def _hold_in_memory(self) -> None:
        """Writers keep every chunk in memory: the file is rewritten on commit."""
        if self._damaged:
            error = next(iter(self._damaged.values()))
            raise CorruptMetadata(f"{error}; a writer cannot keep this case: restore the file from a copy") from error
        for case in self._cases.values():
            case.in_memory = {
                name: {coords: self._read(*where) for coords, where in stored.items()}
                for name, stored in case.locations.items()
            }
            case.locations = {}
        self._index = {name: self._read(*where) if isinstance(where, tuple) else where for name, where in self._index.items()}

    def _read(self, offset: int, length: int) -> bytes:
        """Bytes of the data section (locations were checked against the file size on load)."""
        assert self._file is not None
        return self._file.read(self._data_start + offset, length)

    # -- Backend: reading ----------------------------------------------------
    def case_ids(self) -> list[str]:
        return sorted([*self._cases, *self._damaged])

    def open_case(self, case_id: str) -> StoredCase:
        if case_id in self._damaged:
            raise self._damaged[case_id]
        if case_id not in self._cases:
            raise CaseNotFound(f"no case {case_id!r} in {self.path}")
        case = self._cases[case_id]
        return StoredCase(case.attributes, partial(self._open_array, case_id, case), lambda: self.closed)

    def _open_array(self, case_id: str, case: PackedCase, name: str) -> StoredArray | None:
        on_file, in_memory = case.locations.get(name), case.in_memory.get(name)
        if on_file is not None:
            lengths = {coords: length for coords, (_, length) in on_file.items()}
            read: Callable[[ChunkCoords], bytes] = lambda coords: self._read(*on_file[coords])  # noqa: E731
        elif in_memory is not None:
            lengths = {coords: len(data) for coords, data in in_memory.items()}
            read = in_memory.__getitem__
        else:
            return None

        def fetch(coords: ChunkCoords) -> bytes:
            if self._cases.get(case_id) is not case:
                raise CaseNotFound(f"case {case_id!r} was replaced or deleted since it was opened; open it again")
            return read(coords)

        fetch_many = None
        if on_file is not None and hasattr(self._file, "read_many"):  # in an object store: one batch per read
            start, file = self._data_start, self._file

            def fetch_many(wanted: list[ChunkCoords]) -> list[bytes]:
                return file.read_many([(start + on_file[c][0], on_file[c][1]) for c in wanted])  # type: ignore[union-attr]

        return StoredArray(lengths, fetch, zarr_chunks=True, fetch_many=fetch_many)

    def read_index_blob(self, name: str) -> bytes | None:
        where = self._index.get(name)
        return self._read(*where) if isinstance(where, tuple) else where

    def index_blob_names(self) -> list[str]:
        return sorted(self._index)

    # -- Backend: writing ----------------------------------------------------
    def write_case(self, case_id: str, case: EncodedCase, overwrite: bool) -> None:
        self._check_writable()
        if case_id in self._cases and not overwrite:
            raise CaseExists(f"case {case_id!r} already exists in {self.path}; pass overwrite=True to replace it")
        manifests = {array.name: array.manifest() for array in case.arrays}
        attributes = json.loads(json.dumps(case_document(case.content, manifests)))  # plain JSON, as a reader sees it
        self._cases[case_id] = PackedCase(attributes, in_memory={array.name: dict(array.encoded) for array in case.arrays})
        self._dirty = True

    def delete_case(self, case_id: str) -> None:
        self._check_writable()
        if case_id not in self._cases:
            raise CaseNotFound(f"no case {case_id!r} in {self.path}")
        del self._cases[case_id]
        self._dirty = True

    def update_index(self, build: Callable[[], tuple[dict[str, bytes], list[str]]]) -> None:
        self._check_writable()
        blobs, unused = build()
        for name in unused:
            self._index.pop(name, None)
        self._index.update(blobs)
        self._dirty = True

    def _write_snapshot(self, destination: Path) -> None:
        blobs: list[bytes] = []
        offset = 0

        def place(data: bytes) -> Location:
            nonlocal offset
            blobs.append(data)
            offset += len(data)
            return offset - len(data), len(data)

        cases = {case_id: case.to_json(place) for case_id, case in sorted(self._cases.items())}
        index = {name: list(place(data)) for name, data in sorted(self._index.items()) if isinstance(data, bytes)} or None
        catalog = {"attributes": archive_attributes(), "cases": cases, "index": index}
        text = json.dumps(catalog, separators=(",", ":")).encode()
        compressor = zstandard.ZstdCompressor(level=CATALOG_LEVEL, dict_data=CATALOG_DICTIONARY, write_dict_id=False)
        frame = compressor.compress(text)
        with open(destination, "wb") as handle:
            handle.write(HEADER.pack(MAGIC, VERSION, len(frame), crc32c(frame)))
            handle.write(frame)
            handle.writelines(blobs)

    def close(self) -> None:
        self.closed = True
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._editor is not None:
            self._editor.close()
            self._editor = None
