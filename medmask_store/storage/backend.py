"""What a storage backend must do; everything else lives in the backend-neutral core.

Backends move bytes: they list cases, hand out a case's attributes and arrays
(:class:`StoredCase`, :class:`StoredArray`) and write whole cases. The core
checks everything a backend hands out against the case's checksummed manifest
(:meth:`StoredArray.checked`), so no backend can return wrong data silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from medmask_store.codecs.chunks import Encoder, chunk_decoder
from medmask_store.errors import CorruptChunk, CorruptMetadata
from medmask_store.model.manifest import ArrayManifest, chunk_bytes_digest, chunk_list_digest
from medmask_store.storage.chunked import ChunkCoords, ChunkedArray
from medmask_store.storage.layout import EncodedCase

# (shape, dtype string, chunk shape, chunk codec) of an array, as its own metadata describes it.
ArrayLayout = tuple[tuple[int, ...], str, tuple[int, ...], str]


@dataclass(frozen=True)
class StoredArray:
    """One array as a backend found it: its stored chunks and, where the store describes arrays, its layout."""

    lengths: dict[ChunkCoords, int]  # byte length of every stored chunk
    fetch: Callable[[ChunkCoords], bytes]  # the bytes of one stored chunk
    zarr_chunks: bool  # Zstd label chunks carry Zarr's crc32c suffix (else a Zstd frame checksum)
    layout: ArrayLayout | None = None  # None where the store keeps no description of its own (.msk)
    metadata_crc32c: int | None = None  # crc32c of the array's metadata document, where it has one
    chunks_crc32c: int | None = None  # chunk_list_digest(lengths), where the backend computed it faster
    # Object stores: the bytes of many stored chunks in one batch of concurrent ranged requests.
    fetch_many: Callable[[list[ChunkCoords]], list[bytes]] | None = None

    def checked(self, manifest: ArrayManifest, where: str) -> ChunkedArray:
        """A lazy array over these chunks, once they agree with the case's manifest.

        ``where`` names the archive, case and array in every error.
        """
        fix = "restore the archive from a copy, or delete the case and import it again"
        expected = (manifest.shape, manifest.dtype.str, manifest.chunks, manifest.codec)
        if self.layout is not None and self.layout != expected:
            raise CorruptMetadata(f"{where}: stored as {self.layout}, its manifest says {expected}; {fix}")
        if None not in (manifest.metadata_crc32c, self.metadata_crc32c) and self.metadata_crc32c != manifest.metadata_crc32c:
            raise CorruptMetadata(f"{where}: its metadata document was changed or damaged (checksum mismatch); {fix}")
        digest = self.chunks_crc32c if self.chunks_crc32c is not None else chunk_list_digest(self.lengths)
        if len(self.lengths) != manifest.stored or digest != manifest.chunks_crc32c:
            raise CorruptMetadata(
                f"{where}: {len(self.lengths)} stored chunks do not match the {manifest.stored} of its manifest "
                f"(chunks or files are missing, added or damaged); {fix}"
            )
        lengths, fetch = self.lengths, self.fetch

        def whole(coords: ChunkCoords, data: bytes) -> bytes:
            if len(data) != lengths[coords]:
                raise CorruptChunk(f"truncated: {len(data)} of {lengths[coords]} bytes")
            return data

        def fetch_stored(coords: ChunkCoords) -> bytes | None:
            return whole(coords, fetch(coords)) if coords in lengths else None

        fetch_many = None
        if self.fetch_many is not None:
            fetch_all = self.fetch_many

            def fetch_many(wanted: list[ChunkCoords]) -> dict[ChunkCoords, bytes]:
                stored = [coords for coords in wanted if coords in lengths]
                fetched = dict(zip(stored, fetch_all(stored))) if stored else {}
                for coords, data in fetched.items():
                    try:
                        whole(coords, data)
                    except CorruptChunk as exc:
                        raise CorruptChunk(f"chunk {coords}: {exc}") from exc
                return fetched

        decode = chunk_decoder(manifest.codec, manifest.dtype, manifest.chunks, zarr=self.zarr_chunks)
        return ChunkedArray.of_stored(manifest.shape, manifest.dtype, manifest.chunks, fetch_stored, decode, where, fetch_many)

    def bytes_match(self, manifest: ArrayManifest) -> bool:
        """Whether every stored chunk's bytes are those the manifest's digest was taken of (reads them all)."""
        return chunk_bytes_digest((coords, self.fetch(coords)) for coords in self.lengths) == manifest.bytes_crc32c


@dataclass(frozen=True)
class StoredCase:
    """One case as a backend holds it, opened: attributes and arrays of one version of the case."""

    attributes: dict[str, Any]
    open_array: Callable[[str], StoredArray | None]  # None when the case stores no such array
    closed: Callable[[], bool]  # whether the archive was closed since
    # Object stores: an array opened from its checked manifest, without a request for its own metadata
    # document (which only other readers use; ``verify`` reads it).
    open_described_array: Callable[[str, ArrayManifest], StoredArray] | None = None


class Backend(Protocol):
    """Moves case attributes and arrays between the core and one kind of store."""

    read_only: bool
    closed: bool
    # Directory archives take concurrent writers; their index may lag behind the cases
    # and is reconciled through version tokens. Single-file archives have one writer.
    concurrent_writers: bool
    # Whether an unchanged listing version proves the stored index lists every case (object stores,
    # where listing costs requests): queries then read no listing.
    listing_version_is_exact: bool
    # Whether writers on other machines may still read index blobs another writer supersedes (object
    # stores, where writers take no lock): only ``reindex`` deletes them.
    shared_index_blobs: bool
    # How this store's chunks are encoded, by chunk codec (HDF5's label chunks differ from Zarr's).
    chunk_encoders: dict[str, Encoder]

    def case_ids(self) -> list[str]:
        """The names of the stored cases, as listed (the core validates them)."""
        ...

    def open_case(self, case_id: str) -> StoredCase:
        """The case's attributes and arrays; :class:`CaseNotFound` if it is not stored."""
        ...

    def write_case(self, case_id: str, case: EncodedCase, overwrite: bool) -> None:
        """Write a whole case, its chunks encoded with :attr:`chunk_encoders`: afterwards it is listed
        complete, or not at all."""
        ...

    def delete_case(self, case_id: str) -> None: ...

    def case_tokens(self) -> dict[str, str]:
        """Every case id with a token that changes when the case is rewritten ("" if untracked)."""
        ...

    def listing_version(self) -> str:
        """Changes whenever a case is added, replaced or deleted ("" where one writer keeps the index exact)."""
        ...

    def read_index_blob(self, name: str) -> bytes | None:
        """One blob of the archive index (:mod:`medmask_store.query.index`), or None if it is not stored."""
        ...

    def index_blob_names(self) -> list[str]:
        """Every stored blob of the archive index."""
        ...

    def update_index(self, build: Callable[[], tuple[dict[str, bytes], list[str]]]) -> None:
        """Exclusively among this store's writers: write the blobs ``build()`` returns, in order (the
        manifest, listed last, publishes the others), then delete the blobs it names as unused."""
        ...

    def commit(self) -> None:
        """Make every write so far durable and visible to other processes."""
        ...

    def close(self) -> None: ...
