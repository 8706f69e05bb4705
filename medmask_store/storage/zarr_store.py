"""Zarr v3 pieces shared by the directory and zip backends.

Writing goes through zarr-python. Reading bypasses it: case attributes are the
``zarr.json`` documents, and array chunks are located through the shard index
and decoded here, so a 64³ read costs one ranged read and one Zstd decode.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

from medmask_store.codecs.chunks import ZARR_ENCODERS, append_crc32c, chunk_decoder, strip_crc32c
from medmask_store.codecs.zarr3 import CrackleZstdCodec, PackBitsZstdCodec
from medmask_store.errors import CaseNotFound, CorruptChunk, InvalidArchive
from medmask_store.model.attributes import ARCHIVE_ATTRIBUTES, check_archive_attributes
from medmask_store.storage.chunked import ChunkCoords, ChunkedArray
from medmask_store.storage.layout import CASES_GROUP, INDEX, ArrayToWrite

COMPACT_JSON = {"json_indent": None}
EMPTY_ENTRY = 2**64 - 1
SERIALIZERS = {"crackle_zstd": CrackleZstdCodec, "packbits_zstd": PackBitsZstdCodec}
# Our codec chains (inside the sharding codec), by the chunk codec they amount to.
CODEC_CHAINS = {
    ("bytes", "zstd", "crc32c"): "zstd",
    ("crackle_zstd", "crc32c"): "crackle_zstd",
    ("packbits_zstd", "crc32c"): "packbits_zstd",
}


def create_archive_root(store: Store) -> None:
    """The root group with the archive attributes, and the empty ``cases`` group."""
    with zarr.config.set(COMPACT_JSON):
        root = zarr.create_group(store, attributes=ARCHIVE_ATTRIBUTES, zarr_format=3)
        root.create_group(CASES_GROUP)


def write_case_group(directory: Path, attributes: dict[str, Any], arrays: list[ArrayToWrite]) -> None:
    """Write one case as a Zarr group in ``directory``: attributes, then each array as one shard.

    zarr-python writes the metadata; the shard is assembled here from chunks
    encoded in parallel, in the ``sharding_indexed`` layout: the chunks, then
    the index of (offset, length) pairs and its crc32c.
    """
    with zarr.config.set(COMPACT_JSON):
        group = zarr.create_group(LocalStore(directory), attributes=attributes, zarr_format=3)
        for array in arrays:
            shard = tuple(-(-size // chunk) * chunk for size, chunk in zip(array.data.shape, array.chunks))
            serializer: Any = BytesCodec()
            compressors: list[Any] = [Crc32cCodec()]
            if array.codec == "zstd":
                compressors.insert(0, ZstdCodec(level=array.level))
            else:
                serializer = SERIALIZERS[array.codec](level=array.level)
            group.create_array(
                array.name,
                shape=array.data.shape,
                dtype=array.data.dtype,
                chunks=array.chunks,
                shards=shard,
                serializer=serializer,
                compressors=compressors,
                fill_value=0,
                dimension_names=array.dimension_names,
                config={"write_empty_chunks": False},
            )
            _write_shard(directory / array.name / "c" / "/".join("0" * array.data.ndim), array)


def _write_shard(path: Path, array: ArrayToWrite) -> None:
    encoded = array.encoded_chunks(ZARR_ENCODERS)
    if not encoded:
        return  # an empty shard is not stored
    grid = tuple(-(-size // chunk) for size, chunk in zip(array.data.shape, array.chunks))
    index = np.full((*grid, 2), EMPTY_ENTRY, dtype="<u8")
    offset = 0
    for coords, data in encoded:
        index[coords] = offset, len(data)
        offset += len(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.writelines(data for _, data in encoded)
        handle.write(append_crc32c(index.tobytes()))


class StoredObject(Protocol):
    """One object of a store, opened: its size and ranged reads (always of the same version)."""

    @property
    def size(self) -> int: ...

    def read(self, start: int, length: int) -> bytes: ...


class ByteSource(Protocol):
    """Read access to the objects of a Zarr store, by key."""

    def open(self, key: str) -> StoredObject | None:
        """The object, or None if absent."""
        ...

    def close(self) -> None: ...


class DirectoryObject:
    """A file of a directory store; ranged reads with ``os.pread`` on one descriptor."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - lives as long as the object
        self.size = os.fstat(self._file.fileno()).st_size

    def read(self, start: int, length: int) -> bytes:
        return os.pread(self._file.fileno(), length, start)


class DirectoryBytes:
    """Objects of a directory store."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self, key: str) -> DirectoryObject | None:
        try:
            return DirectoryObject(self.root / key)
        except FileNotFoundError:
            return None

    def close(self) -> None:
        """Nothing is held open beyond the objects handed out."""


@dataclass(frozen=True)
class ZipMember:
    """A stored (uncompressed) member of a zip: a byte range of the zip file."""

    descriptor: int
    offset: int
    size: int

    def read(self, start: int, length: int) -> bytes:
        return os.pread(self.descriptor, length, self.offset + start)


class ZipBytes:
    """Objects of a zip store whose members are stored uncompressed, read in place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with zipfile.ZipFile(path) as archive:
            self._members = {info.filename: info for info in archive.infolist()}
        self._descriptor = os.open(path, os.O_RDONLY)

    @property
    def names(self) -> list[str]:
        return list(self._members)

    def open(self, key: str) -> ZipMember | None:
        info = self._members.get(key)
        if info is None:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            raise InvalidArchive(f"{self.path}: member {key} is compressed; medmask_store zips are stored")
        header = os.pread(self._descriptor, 30, info.header_offset)
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        return ZipMember(self._descriptor, info.header_offset + 30 + name_length + extra_length, info.file_size)

    def close(self) -> None:
        os.close(self._descriptor)


def read_json(source: ByteSource, key: str) -> dict[str, Any] | None:
    stored = source.open(key)
    return None if stored is None else json.loads(stored.read(0, stored.size))


def check_archive_root(source: ByteSource, where: object) -> None:
    document = read_json(source, "zarr.json")
    if document is None:
        raise InvalidArchive(f"{where} is not a medmask_store archive (no root zarr.json)")
    check_archive_attributes(document.get("attributes", {}), where)


class ShardedChunks:
    """The chunks of one sharded array, located through each shard's index (crc32c-checked)."""

    def __init__(self, source: ByteSource, path: str, metadata: dict[str, Any]) -> None:
        sharding = metadata["codecs"][0]["configuration"]
        self.source = source
        self.path = path
        self.chunks = tuple(sharding["chunk_shape"])
        shard_shape = metadata["chunk_grid"]["configuration"]["chunk_shape"]
        self.per_shard = tuple(s // c for s, c in zip(shard_shape, self.chunks))
        self._shards: dict[ChunkCoords, tuple[StoredObject, np.ndarray] | None] = {}

    def _shard(self, shard: ChunkCoords) -> tuple[StoredObject, np.ndarray] | None:
        """The shard object and its index (absent shards hold only empty chunks)."""
        if shard not in self._shards:
            key = f"{self.path}/c/{'/'.join(map(str, shard))}"
            stored = self.source.open(key)
            index_bytes = int(np.prod(self.per_shard)) * 16 + 4
            if stored is None:
                self._shards[shard] = None
            elif stored.size < index_bytes:
                raise CorruptChunk(f"{key}: shard of {stored.size} bytes is shorter than its index ({index_bytes} bytes)")
            else:
                raw = strip_crc32c(stored.read(stored.size - index_bytes, index_bytes))
                self._shards[shard] = stored, np.frombuffer(raw, dtype="<u8").reshape(*self.per_shard, 2)
        return self._shards[shard]

    def fetch(self, coords: ChunkCoords) -> bytes | None:
        """The stored bytes of one chunk, or None if it is empty (not stored)."""
        shard = self._shard(tuple(c // n for c, n in zip(coords, self.per_shard)))
        if shard is None:
            return None
        stored, index = shard
        offset, length = index[tuple(c % n for c, n in zip(coords, self.per_shard))]
        if offset == EMPTY_ENTRY:
            return None
        return stored.read(int(offset), int(length))


def _chunk_codec(metadata: dict[str, Any]) -> str | None:
    """The chunk codec of one of our sharded arrays, or None for any other codec chain."""
    codecs = metadata.get("codecs", [])
    if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
        return None
    configuration = codecs[0]["configuration"]
    index = [c["name"] for c in configuration.get("index_codecs", [])]
    if index != ["bytes", "crc32c"] or configuration.get("index_location", "end") != "end":
        return None
    return CODEC_CHAINS.get(tuple(c["name"] for c in configuration["codecs"]))


def open_sharded_array(source: ByteSource, path: str, metadata: dict[str, Any], where: str) -> ChunkedArray:
    """A lazy array over one of our sharded arrays (label volume or binary layers)."""
    dtype = np.dtype(metadata["data_type"])
    chunks_reader = ShardedChunks(source, path, metadata)
    codec = _chunk_codec(metadata)
    if codec is None:
        raise InvalidArchive(f"{where}: unsupported codec chain {metadata.get('codecs')}")
    decode = chunk_decoder(codec, dtype, chunks_reader.chunks, zarr=True)
    return ChunkedArray.of_stored(tuple(metadata["shape"]), dtype, chunks_reader.chunks, chunks_reader.fetch, decode, where)


class ZarrCaseReader:
    """Reads case groups under ``cases/`` of a Zarr store (directory or zip)."""

    def __init__(self, source: ByteSource, where: object) -> None:
        self._source = source
        self._where = where

    def read_case_attributes(self, case_id: str) -> dict[str, Any]:
        document = read_json(self._source, f"{CASES_GROUP}/{case_id}/zarr.json")
        if document is None:
            raise CaseNotFound(f"no case {case_id!r} in {self._where}")
        return document.get("attributes", {})

    def read_index(self) -> bytes | None:
        stored = self._source.open(INDEX)
        return None if stored is None else stored.read(0, stored.size)

    def open_array(self, case_id: str, name: str) -> ChunkedArray | None:
        path = f"{CASES_GROUP}/{case_id}/{name}"
        metadata = read_json(self._source, f"{path}/zarr.json")
        if metadata is None:
            return None
        return open_sharded_array(self._source, path, metadata, f"{self._where}/{path}")
