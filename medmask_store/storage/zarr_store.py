"""Zarr v3 pieces shared by the directory and zip backends.

Writing goes through zarr-python. Reading bypasses it: case attributes are the
``zarr.json`` documents, and array chunks are located through the shard index
and decoded here, so a 64³ read costs one ranged read and one Zstd decode.
Every document is read with a size limit and parsed defensively; every ranged
read is checked against the object's size before anything is allocated.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medmask_store.codecs.chunks import ZARR_ENCODERS, append_crc32c, strip_crc32c
from medmask_store.errors import CaseNotFound, CorruptChunk, CorruptMetadata, InvalidArchive
from medmask_store.limits import MAX_CHUNK_VOXELS, MAX_CHUNKS_PER_ARRAY, MAX_DOCUMENT_BYTES
from medmask_store.model.attributes import archive_attributes, case_document, check_archive_attributes
from medmask_store.model.manifest import ArrayManifest, chunk_list_digest, crc32c, sorted_chunk_list_digest
from medmask_store.model.plain_attributes import array_attributes
from medmask_store.storage.backend import StoredArray, StoredCase
from medmask_store.storage.chunked import ChunkCoords
from medmask_store.storage.layout import CASES_GROUP, INDEX_FOLDER, EncodedArray, EncodedCase
from medmask_store.storage.portable import OpenedFolder, read_at

COMPACT_JSON = {"json_indent": None}
EMPTY_ENTRY = 2**64 - 1
# Our codec chains (inside the sharding codec), by the chunk codec they amount to.
CODEC_CHAINS = {
    ("bytes", "zstd", "crc32c"): "zstd",
    ("crackle_zstd", "crc32c"): "crackle_zstd",
    ("packbits_zstd", "crc32c"): "packbits_zstd",
}
CASES_GROUP_CHECKSUM = "cases_group_crc32c"  # root attribute: crc32c of cases/zarr.json


def create_archive_root(path: Path) -> None:
    """The root group, the empty ``cases`` group, and the sealed archive attributes covering both."""
    import zarr  # imported by the writers only: readers never call zarr-python
    from zarr.storage import LocalStore

    with zarr.config.set(COMPACT_JSON):
        zarr.create_group(LocalStore(path), zarr_format=3).create_group(CASES_GROUP)
    cases_document = compact_document(path / CASES_GROUP / "zarr.json")
    compact_document(path / "zarr.json", archive_attributes(**{CASES_GROUP_CHECKSUM: crc32c(cases_document)}))


def compact_document(path: Path, attributes: dict[str, Any] | None = None) -> bytes:
    """Rewrite a ``zarr.json`` zarr-python wrote without spaces (zarr-python writes ", " and ": "; on a case
    that is ~0.7 KB), with ``attributes`` if given; returns its bytes."""
    document = json.loads(path.read_bytes())
    if attributes is not None:
        document["attributes"] = attributes
    raw = json.dumps(document, separators=(",", ":")).encode()
    path.write_bytes(raw)
    return raw


def write_case_group(directory: Path, case: EncodedCase) -> None:
    """Write one case as a Zarr group in ``directory``: each array as one shard, then the sealed attributes.

    zarr-python writes the metadata (rewritten without spaces); the shard is
    assembled here from chunks encoded in parallel, in the ``sharding_indexed``
    layout: the chunks, then the index of (offset, length) pairs and its crc32c.
    The case's manifest records each array's chunks and the crc32c of its ``zarr.json``, attributes
    for readers without medmask_store (:mod:`~medmask_store.model.plain_attributes`) included.
    """
    import zarr
    from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
    from zarr.storage import LocalStore

    from medmask_store.codecs.zarr3 import CrackleZstdCodec, PackBitsZstdCodec

    serializers = {"crackle_zstd": CrackleZstdCodec, "packbits_zstd": PackBitsZstdCodec}
    with zarr.config.set(COMPACT_JSON):
        group = zarr.create_group(LocalStore(directory), zarr_format=3)
    manifests = {}
    for array in case.arrays:
        shard = tuple(count * chunk for count, chunk in zip(array.grid, array.chunks))
        serializer: Any = BytesCodec()
        compressors: list[Any] = [Crc32cCodec()]
        if array.codec == "zstd":
            compressors.insert(0, ZstdCodec(level=array.level))
        else:
            serializer = serializers[array.codec](level=array.level)
        group.create_array(
            array.name,
            shape=array.shape,
            dtype=array.dtype,
            chunks=array.chunks,
            shards=shard,
            serializer=serializer,
            compressors=compressors,
            fill_value=0,
            dimension_names=array.dimension_names,
            config={"write_empty_chunks": False},
            attributes=array_attributes(array.name, array.codec, case.content),
        )
        _write_shard(directory / array.name / shard_key(len(array.shape)), array)
        metadata = compact_document(directory / array.name / "zarr.json")
        manifests[array.name] = array.manifest(crc32c(metadata))
    compact_document(directory / "zarr.json", case_document(case.content, manifests))


def shard_key(ndim: int) -> str:
    """The key of an array's one shard (default chunk key encoding)."""
    return "c/" + "/".join("0" * ndim)


def _write_shard(path: Path, array: EncodedArray) -> None:
    encoded = array.encoded
    if not encoded:
        return  # an empty shard is not stored
    index = np.full((*array.grid, 2), EMPTY_ENTRY, dtype="<u8")
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

    name: str
    size: int

    def read(self, start: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class ByteSource(Protocol):
    """Read access to the objects of a Zarr store (or of one case in it), by key.

    Local sources answer from files; object stores (:mod:`.remote`) answer each
    of these calls with one request.
    """

    def open(self, key: str) -> StoredObject | None:
        """The object, or None if absent."""
        ...

    def read_whole(self, key: str, limit: int | None = None) -> bytes | None:
        """The whole object, or None if absent; :class:`ObjectTooLarge` above ``limit`` bytes, before reading it."""
        ...

    def open_tail(self, key: str, length: int) -> tuple[StoredObject, bytes] | None:
        """The object and its last ``length`` bytes (fewer if it is shorter), or None if absent."""
        ...


class ObjectTooLarge(Exception):
    """An object larger than its reader's limit (``size``: its size in bytes)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class OpenedSource:
    """:meth:`ByteSource.read_whole` and :meth:`ByteSource.open_tail` for sources whose opens cost nothing remote."""

    def open(self, key: str) -> StoredObject | None:
        raise NotImplementedError

    def read_whole(self, key: str, limit: int | None = None) -> bytes | None:
        stored = self.open(key)
        if stored is None:
            return None
        if limit is not None and stored.size > limit:
            raise ObjectTooLarge(stored.size)
        return stored.read(0, stored.size)

    def open_tail(self, key: str, length: int) -> tuple[StoredObject, bytes] | None:
        stored = self.open(key)
        if stored is None:
            return None
        length = min(length, stored.size)
        return stored, stored.read(stored.size - length, length)


def _checked_range(stored: StoredObject, start: int, length: int) -> None:
    """Refuse a read beyond the object before any buffer is allocated for it."""
    if start < 0 or length < 0 or start + length > stored.size:
        raise CorruptChunk(f"{stored.name}: {length} bytes at {start} lie beyond its end ({stored.size} bytes)")


class FileObject:
    """A file; ranged reads (``os.pread`` where it exists) on one descriptor, so every read sees the same file."""

    def __init__(self, handle: Any, name: str) -> None:
        self.handle = handle  # lives as long as the object
        self.name = name
        self.size = os.fstat(handle.fileno()).st_size

    def read(self, start: int, length: int) -> bytes:
        _checked_range(self, start, length)
        return read_at(self.handle, length, start)

    def close(self) -> None:
        self.handle.close()


class FolderBytes(OpenedSource):
    """The files of a folder, opened through a descriptor of the folder.

    A case folder replaced or deleted after it was opened keeps reading its own
    files; a file missing because of that is reported as a changed case
    (:class:`CaseNotFound`), not as damage.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._folder = OpenedFolder(path)

    def open(self, key: str) -> FileObject | None:
        try:
            return FileObject(self._folder.open(key), f"{self.what}/{key}")
        except FileNotFoundError:
            if self.moved():
                raise CaseNotFound(f"{self.what} was replaced or deleted since it was opened; open it again") from None
            return None
        except OSError as exc:  # a folder where a file belongs, a permission, a loop of links
            raise CorruptMetadata(f"{self.what}/{key}: cannot be read ({exc})") from exc

    def moved(self) -> bool:
        """Whether the folder's path now names another folder, or nothing."""
        return self._folder.moved()


class ZipMember:
    """A stored (uncompressed) member of a zip: a byte range of the zip file."""

    def __init__(self, file: StoredObject, name: str, offset: int, size: int) -> None:
        self._file, self.name, self.offset, self.size = file, name, offset, size
        if hasattr(file, "read_many"):  # a zip in an object store: many chunks in one batch of requests
            self.read_many = self._read_many

    def read(self, start: int, length: int) -> bytes:
        _checked_range(self, start, length)
        return self._file.read(self.offset + start, length)

    def _read_many(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        for start, length in ranges:
            _checked_range(self, start, length)
        return self._file.read_many([(self.offset + start, length) for start, length in ranges])  # type: ignore[attr-defined]

    def close(self) -> None:
        """The zip's file is closed with the zip."""


LOCAL_HEADER = struct.Struct("<4s5H3L2H")
DIRECTORY_RECORD = struct.Struct("<4s6H3L5H2L")
END_RECORD = struct.Struct("<4s4H2LH")


class ZipBytes(OpenedSource):
    """Objects of a zip store whose members are stored uncompressed, read in place.

    Each member's local header must repeat what the central directory says of
    it (name, sizes, crc, flags, time), so a damaged header is an error, never
    a read from the wrong place.
    """

    def __init__(self, file: StoredObject) -> None:
        from medmask_store.storage.remote import as_file

        self.path = file.name
        self._file = file  # one open file (or object) for the directory and every read: never two versions
        try:
            try:
                with zipfile.ZipFile(as_file(file)) as archive:
                    infos, directory = archive.infolist(), archive.start_dir
            except Exception as exc:  # zipfile raises many types (BadZipFile, struct.error, ValueError...) on damage
                raise CorruptMetadata(f"{self.path}: the zip directory is damaged ({type(exc).__name__}: {exc})") from exc
            self._members = {info.filename: info for info in infos}
            self._size = file.size
            self._check_directory(infos, directory)
        except BaseException:
            file.close()
            raise

    def _read(self, start: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``start`` (fewer at the end of the file, none beyond it)."""
        start = min(max(start, 0), self._size)
        return self._file.read(start, min(length, self._size - start))

    def _check_directory(self, infos: list[zipfile.ZipInfo], start: int) -> None:
        """Each directory record must hold exactly the name, extra field and comment zipfile read from it
        (zipfile reads short at the end of the directory), the records must end at an end record, and
        that record's comment at the end of the file."""
        raw = self._read(start, self._size - start)
        position = 0
        for info in infos:
            header = raw[position : position + DIRECTORY_RECORD.size]
            if len(header) < DIRECTORY_RECORD.size:
                raise CorruptMetadata(f"{self.path}: the zip directory is truncated")
            name_length, extra_length, comment_length, disk = DIRECTORY_RECORD.unpack(header)[10:14]
            name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
            if (name_length, extra_length, comment_length, disk) != (len(name), len(info.extra), len(info.comment), 0):
                raise CorruptMetadata(f"{self.path}: the zip directory record of {info.orig_filename!r} is damaged")
            position += DIRECTORY_RECORD.size + name_length + extra_length + comment_length
        end = raw[position : position + END_RECORD.size]
        if end[:4] == b"PK\x05\x06":  # the end record, and its comment, must end the file
            if position + END_RECORD.size + END_RECORD.unpack(end)[-1] != len(raw):
                raise CorruptMetadata(f"{self.path}: the zip end record is damaged")
        elif end[:4] != b"PK\x06\x06":  # a ZIP64 end record
            raise CorruptMetadata(f"{self.path}: the zip directory does not end where its records do")

    @property
    def names(self) -> list[str]:
        return list(self._members)

    def open(self, key: str) -> ZipMember | None:
        info = self._members.get(key)
        if info is None:
            return None
        where = f"{self.path}: member {key}"
        if info.compress_type != zipfile.ZIP_STORED:
            raise InvalidArchive(f"{where} is compressed; medmask_store zips are stored")
        name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        header = self._read(max(info.header_offset, 0), LOCAL_HEADER.size + len(name))
        if info.header_offset < 0 or len(header) < LOCAL_HEADER.size:
            raise CorruptMetadata(f"{where}: its local header lies outside the file")
        fields = LOCAL_HEADER.unpack_from(header)
        # With a data descriptor (flag 0x08) the local header leaves crc and sizes zero; ZIP64 caps them.
        sums = (0, 0, 0) if info.flag_bits & 0x08 else (info.CRC, *(min(n, 0xFFFFFFFF) for n in (info.compress_size, info.file_size)))
        expected = (b"PK\x03\x04", info.extract_version, info.flag_bits, info.compress_type,
                    *_dos_time(info.date_time), *sums, len(name))  # fmt: skip
        if fields[:-1] != expected or header[LOCAL_HEADER.size :] != name:
            raise CorruptMetadata(f"{where}: its local header disagrees with the zip directory")
        member = ZipMember(self._file, where, info.header_offset + LOCAL_HEADER.size + len(name) + fields[-1], info.file_size)
        if member.offset + member.size > self._size:
            raise CorruptMetadata(f"{where}: its data lies beyond the end of the file")
        return member

    def close(self) -> None:
        self._file.close()


def _dos_time(date_time: tuple[int, ...]) -> tuple[int, int]:
    """(time, date) as a zip header stores them."""
    year, month, day, hour, minute, second = date_time
    return hour << 11 | minute << 5 | second // 2, (year - 1980) << 9 | month << 5 | day


class PrefixBytes:
    """The objects of a store under a key prefix (one case of a zip or of an object store)."""

    def __init__(self, source: ByteSource, prefix: str) -> None:
        self._source, self._prefix = source, prefix

    def open(self, key: str) -> StoredObject | None:
        return self._source.open(self._prefix + key)

    def read_whole(self, key: str, limit: int | None = None) -> bytes | None:
        return self._source.read_whole(self._prefix + key, limit)

    def open_tail(self, key: str, length: int) -> tuple[StoredObject, bytes] | None:
        return self._source.open_tail(self._prefix + key, length)


def read_raw(source: ByteSource, key: str, what: str) -> bytes | None:
    """A whole metadata object (at most ``MAX_DOCUMENT_BYTES``), or None if absent."""
    try:
        return source.read_whole(key, MAX_DOCUMENT_BYTES)
    except ObjectTooLarge as exc:
        raise CorruptMetadata(f"{what}/{key}: {exc.size} bytes, above the limit of {MAX_DOCUMENT_BYTES} for metadata") from None


def parse_document(raw: bytes, what: str) -> dict[str, Any]:
    """A JSON object, or :class:`CorruptMetadata` naming ``what``."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CorruptMetadata(f"{what}: not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(document, dict):
        raise CorruptMetadata(f"{what}: not a JSON object")
    return document


def group_attributes(source: ByteSource, key: str, what: str) -> dict[str, Any] | None:
    """The attributes of a Zarr v3 group document, or None if it is absent."""
    raw = read_raw(source, key, what)
    if raw is None:
        return None
    document = parse_document(raw, f"{what}/{key}")
    attributes = document.get("attributes")
    if document.get("zarr_format") != 3 or document.get("node_type") != "group" or not isinstance(attributes, dict):
        raise CorruptMetadata(f"{what}/{key}: not a Zarr v3 group document")
    return attributes


def check_archive_root(source: ByteSource, where: object) -> None:
    """Raise unless the root is a readable archive whose root and ``cases`` group documents are intact."""
    attributes = group_attributes(source, "zarr.json", str(where))
    if attributes is None:
        raise InvalidArchive(f"{where} is not a medmask_store archive (no root zarr.json)")
    content = check_archive_attributes(attributes, where)
    cases = read_raw(source, f"{CASES_GROUP}/zarr.json", str(where))
    if cases is None or crc32c(cases) != content.get(CASES_GROUP_CHECKSUM):
        raise CorruptMetadata(f"{where}: {CASES_GROUP}/zarr.json is missing or damaged")


def open_sharded_array(source: ByteSource, name: str, what: str) -> StoredArray | None:
    """One of our sharded arrays of a case (``source``: the case's objects), or None if it has none."""
    raw = read_raw(source, f"{name}/zarr.json", what)
    if raw is None:
        return None
    where = f"{what}/{name}"
    metadata = parse_document(raw, f"{where}/zarr.json")
    try:
        shape = tuple(metadata["shape"])
        dtype = np.dtype(metadata["data_type"])
        sharding = metadata["codecs"][0]["configuration"]
        chunks = tuple(sharding["chunk_shape"])
        shard = tuple(metadata["chunk_grid"]["configuration"]["chunk_shape"])
        codec = _chunk_codec(metadata)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
        raise CorruptMetadata(f"{where}/zarr.json: not one of our sharded arrays ({type(exc).__name__}: {exc})") from exc
    sizes = (*shape, *chunks, *shard)
    if codec is None or not all(type(n) is int and n >= 0 for n in sizes) or 0 in chunks or len(chunks) != len(shape):
        raise CorruptMetadata(f"{where}/zarr.json: unsupported array metadata (codecs {metadata.get('codecs')})")
    grid = tuple(-(-n // c) for n, c in zip(shape, chunks))
    if math.prod(chunks) > MAX_CHUNK_VOXELS or math.prod(grid) > MAX_CHUNKS_PER_ARRAY:
        raise CorruptMetadata(f"{where}/zarr.json: chunks {chunks} of shape {shape} exceed the limits")
    if shard != tuple(g * c for g, c in zip(grid, chunks)):
        raise CorruptMetadata(f"{where}/zarr.json: shard shape {shard} is not the whole array")
    stored = ShardedChunks(source, f"{name}/{shard_key(len(shape))}", grid, where).stored_array()
    return replace(stored, layout=(shape, dtype.str, chunks, codec), metadata_crc32c=crc32c(raw))


def open_described_array(source: ByteSource, name: str, manifest: ArrayManifest, what: str) -> StoredArray:
    """One of our sharded arrays of a case, located from its manifest: its shard index, without its ``zarr.json``."""
    grid = tuple(-(-n // c) for n, c in zip(manifest.shape, manifest.chunks))
    return ShardedChunks(source, f"{name}/{shard_key(len(grid))}", grid, f"{what}/{name}").stored_array()


class ShardedChunks:
    """The chunks of an array stored as one shard, located through its index (crc32c-checked)."""

    def __init__(self, source: ByteSource, key: str, grid: tuple[int, ...], where: str) -> None:
        self.path = where
        self.lengths: dict[ChunkCoords, int] = {}  # of the stored chunks
        self.chunks_crc32c = chunk_list_digest({})  # of ``lengths``, from the index's arrays (every open checks it)
        self._strides = [math.prod(grid[axis + 1 :]) for axis in range(len(grid))]
        self._stored: StoredObject | None = None
        index_bytes = math.prod(grid) * 16 + 4
        opened = source.open_tail(key, index_bytes)
        if opened is None:
            return  # an absent shard holds only empty chunks (the manifest says whether any should be stored)
        self._stored, tail = opened
        data_bytes = self._stored.size - index_bytes
        if data_bytes < 0:
            raise CorruptChunk(f"{where}: shard of {self._stored.size} bytes is shorter than its index ({index_bytes} bytes)")
        try:
            raw = strip_crc32c(tail)
        except CorruptChunk as exc:
            raise CorruptMetadata(f"{where}: shard index: {exc}") from exc
        self._index = np.frombuffer(raw, dtype="<u8").reshape(-1, 2)
        stored = np.flatnonzero(self._index[:, 0] != EMPTY_ENTRY)
        offsets, lengths = self._index[stored, 0], self._index[stored, 1]
        if (offsets > data_bytes).any() or (lengths > data_bytes - np.minimum(offsets, data_bytes)).any():
            raise CorruptMetadata(f"{where}: shard index points beyond the shard's {data_bytes} bytes of chunks")
        coords = np.stack(np.unravel_index(stored, grid), axis=1)  # in C order: sorted by coordinates
        self.chunks_crc32c = sorted_chunk_list_digest(coords, lengths)  # without sorting a dict
        self.lengths = dict(zip(map(tuple, coords.tolist()), lengths.tolist()))

    def _row(self, coords: ChunkCoords) -> int:
        """The index row (offset, length) of a chunk."""
        return sum(c * s for c, s in zip(coords, self._strides))

    def fetch(self, coords: ChunkCoords) -> bytes:
        """The bytes of one stored chunk."""
        assert self._stored is not None
        offset, length = self._index[self._row(coords)]
        return self._stored.read(int(offset), int(length))

    def stored_array(self) -> StoredArray:
        """The array's stored chunks (its layout is the caller's to add); where the shard lives in an object
        store, many chunks are fetched in one batch of requests."""
        read_many = getattr(self._stored, "read_many", None)

        def fetch_many(coords: list[ChunkCoords]) -> list[bytes]:
            assert read_many is not None
            rows = self._index[[self._row(point) for point in coords]]
            return read_many([(int(offset), int(length)) for offset, length in rows])

        return StoredArray(
            lengths=self.lengths,
            fetch=self.fetch,
            zarr_chunks=True,
            chunks_crc32c=self.chunks_crc32c,
            fetch_many=fetch_many if read_many is not None else None,
        )


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


class ZarrCaseReader:
    """Reads case groups under ``cases/`` of a Zarr store (directory or zip)."""

    closed: bool
    chunk_encoders = ZARR_ENCODERS
    listing_version_is_exact = False
    shared_index_blobs = False

    def __init__(self, source: ByteSource, where: object) -> None:
        self._source = source
        self._where = where

    def _case_source(self, case_id: str) -> ByteSource:
        """The objects of one stored case; :class:`CaseNotFound` if it is not stored."""
        raise NotImplementedError

    def open_case(self, case_id: str) -> StoredCase:
        what = f"{self._where}: case {case_id!r}"
        source = self._case_source(case_id)
        attributes = group_attributes(source, "zarr.json", what)
        if attributes is None:
            raise self._missing_case(case_id)
        return StoredCase(attributes, partial(open_sharded_array, source, what=what), lambda: self.closed)

    def _missing_case(self, case_id: str) -> Exception:
        """What a case without its group document is (damage, in stores that list case folders)."""
        return CorruptMetadata(
            f"{self._where}: case {case_id!r}: its zarr.json is missing; restore the archive from a copy, or delete the case"
        )

    def read_index_blob(self, name: str) -> bytes | None:
        return self._source.read_whole(f"{INDEX_FOLDER}/{name}")
