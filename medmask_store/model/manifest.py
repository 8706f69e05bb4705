"""Checksummed metadata: sealed JSON documents and the manifest of a case's stored arrays.

Every piece of metadata a read depends on is verified when it is read:

- **Sealed documents.** The archive's and each case's attributes carry
  ``checksum``, the crc32c of their canonical JSON (sorted keys, no spaces)
  without it; a flipped bit anywhere in a value or a key is a mismatch.
- **Array manifest.** A case's attributes list its arrays: shape, dtype, chunk
  shape, codec, how many chunks are stored, a digest of their coordinates and
  byte lengths, a digest of their bytes, and (for Zarr) the crc32c of the array's
  own ``zarr.json``. Opening an array compares what the backend finds with the
  manifest, so a lost shard, a lost chunk or edited array metadata is an error,
  never zeros; ``verify`` compares every chunk's bytes.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np

from medmask_store.errors import CorruptMetadata
from medmask_store.limits import MAX_CHUNK_VOXELS, MAX_CHUNKS_PER_ARRAY

CHECKSUM_KEY = "checksum"
# The arrays a case stores, and their chunk codecs.
LABEL_VOLUME = "label_volume"
BINARY_LAYERS = "binary_layers"
# Each organ's voxel count in each label-volume chunk (organ in label-value order, chunk in C order), uint32:
# a sampler draws a random voxel of an organ by decoding one chunk. Cases written before it have none.
ORGAN_CHUNK_VOXELS = "organ_chunk_voxels"
LABEL_CODECS = ("zstd", "crackle_zstd")
LAYER_CODEC = "packbits_zstd"
ChunkCoords = tuple[int, ...]


def canonical_json(value: Any) -> bytes:
    """The one serialization checksums are taken of, whatever spacing or key order a store wrote."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(data))


def seal(content: Mapping[str, Any]) -> dict[str, Any]:
    """``content`` with its checksum added."""
    return {**content, CHECKSUM_KEY: crc32c(canonical_json(content))}


def unseal(document: object, what: str) -> dict[str, Any]:
    """The content of a sealed document, after checking its checksum; ``what`` names it in errors."""
    if not isinstance(document, dict) or not isinstance(document.get(CHECKSUM_KEY), int):
        raise CorruptMetadata(f"{what}: not a sealed medmask_store document (no checksum)")
    content = {key: value for key, value in document.items() if key != CHECKSUM_KEY}
    try:
        actual = crc32c(canonical_json(content))
    except ValueError as exc:  # NaN or infinity: never written by us
        raise CorruptMetadata(f"{what}: holds a value JSON cannot hold ({exc})") from exc
    if actual != document[CHECKSUM_KEY]:
        raise CorruptMetadata(f"{what}: checksum mismatch, the metadata was changed or damaged")
    return content


def chunk_list_digest(lengths: Mapping[ChunkCoords, int]) -> int:
    """crc32c of the sorted (coordinates..., byte length) of every stored chunk: checked on every open."""
    keys = sorted(lengths)
    ndim = len(keys[0]) if keys else 0
    coords = np.fromiter(itertools.chain.from_iterable(keys), "<i8", len(keys) * ndim).reshape(len(keys), ndim)
    return sorted_chunk_list_digest(coords, np.fromiter((lengths[k] for k in keys), "<i8", len(keys)))


def sorted_chunk_list_digest(coords: np.ndarray, lengths: np.ndarray) -> int:
    """:func:`chunk_list_digest` of chunks given as arrays already in coordinate order: (chunks, ndim) and (chunks,)."""
    rows = np.empty((len(lengths), coords.shape[1] + 1), dtype="<i8")
    rows[:, :-1] = coords
    rows[:, -1] = lengths
    return crc32c(rows.tobytes())


def chunk_bytes_digest(chunks: Iterable[tuple[ChunkCoords, bytes]]) -> int:
    """crc32c of the sorted (coordinates..., crc32c of the bytes) of every stored chunk: checked by ``verify``,
    which reads them all. It covers bits a decoder ignores (a Zstd frame checksums what it decodes to, not
    the unused bits of its bit streams)."""
    rows = np.array(sorted((*coords, crc32c(data)) for coords, data in chunks), dtype="<i8")
    return crc32c(rows.tobytes())


@dataclass(frozen=True)
class ArrayManifest:
    """What a case's attributes promise about one of its stored arrays."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    codec: str
    stored: int  # number of stored (non-empty) chunks
    chunks_crc32c: int  # chunk_list_digest of the stored chunks
    bytes_crc32c: int  # chunk_bytes_digest of the stored chunks
    metadata_crc32c: int | None = None  # crc32c of the array's own metadata document (Zarr)

    @classmethod
    def of_chunks(
        cls, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...], codec: str,
        encoded: Mapping[ChunkCoords, bytes], metadata_crc32c: int | None = None,
    ) -> ArrayManifest:
        lengths = {coords: len(data) for coords, data in encoded.items()}
        return cls(
            tuple(shape), np.dtype(dtype), tuple(chunks), codec, len(encoded), chunk_list_digest(lengths),
            chunk_bytes_digest(encoded.items()), metadata_crc32c,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        data = {
            "shape": list(self.shape), "dtype": self.dtype.str, "chunks": list(self.chunks), "codec": self.codec,
            "stored": self.stored, "chunks_crc32c": self.chunks_crc32c, "bytes_crc32c": self.bytes_crc32c,
        }  # fmt: skip
        return data if self.metadata_crc32c is None else {**data, "metadata_crc32c": self.metadata_crc32c}

    @classmethod
    def from_json(cls, data: object, what: str) -> ArrayManifest:
        """Parse and bound-check a manifest entry (shapes, chunk sizes, counts), raising :class:`CorruptMetadata`."""
        keys = {"shape", "dtype", "chunks", "codec", "stored", "chunks_crc32c", "bytes_crc32c"}
        if not isinstance(data, dict) or not keys <= set(data) <= keys | {"metadata_crc32c"}:
            raise CorruptMetadata(f"{what}: malformed array manifest {str(data)[:200]}")
        shape, chunks = data["shape"], data["chunks"]
        if not (_ints(shape, 0) and _ints(chunks, 1) and len(shape) == len(chunks)):
            raise CorruptMetadata(f"{what}: malformed shape {shape} or chunk shape {chunks}")
        if math.prod(chunks) > MAX_CHUNK_VOXELS:
            raise CorruptMetadata(f"{what}: chunk shape {chunks} exceeds the limit of {MAX_CHUNK_VOXELS} voxels")
        grid = math.prod(-(-s // c) for s, c in zip(shape, chunks))
        if grid > MAX_CHUNKS_PER_ARRAY:
            raise CorruptMetadata(f"{what}: shape {shape} in chunks {chunks} exceeds {MAX_CHUNKS_PER_ARRAY} chunks")
        if data["dtype"] not in ("|b1", "|u1", "<u2", "<u4") or not isinstance(data["codec"], str):
            raise CorruptMetadata(f"{what}: unsupported dtype {data['dtype']!r} or codec {data['codec']!r}")
        counts = [data["stored"], data["chunks_crc32c"], data["bytes_crc32c"], data.get("metadata_crc32c", 0)]
        if not _ints(counts, 0) or data["stored"] > grid:
            raise CorruptMetadata(f"{what}: malformed chunk count or checksums {counts}")
        return cls(
            tuple(shape), np.dtype(data["dtype"]), tuple(chunks), data["codec"], data["stored"],
            data["chunks_crc32c"], data["bytes_crc32c"], data.get("metadata_crc32c"),
        )  # fmt: skip


def _ints(values: object, minimum: int) -> bool:
    """Whether ``values`` is a list of plain integers >= ``minimum`` (JSON booleans excluded)."""
    return isinstance(values, list) and all(type(v) is int and v >= minimum for v in values)
