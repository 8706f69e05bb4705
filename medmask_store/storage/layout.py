"""Backend-neutral on-disk layout: array names, chunking and codec settings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from medmask_store.codecs.chunks import Encoder
from medmask_store.concurrency import thread_pool
from medmask_store.errors import InvalidCase
from medmask_store.limits import MAX_CHUNK_EDGE, MAX_CHUNKS_PER_ARRAY
from medmask_store.model import manifest
from medmask_store.model.attributes import case_attributes
from medmask_store.model.case_data import CaseData
from medmask_store.model.manifest import BINARY_LAYERS, LABEL_CODECS, LABEL_VOLUME, LAYER_CODEC, ArrayManifest
from medmask_store.model.voxels import occupied_box
from medmask_store.storage.chunked import ChunkCoords, iter_chunks

CASES_GROUP = "cases"
INDEX_FOLDER = "index"  # the archive index's blobs (medmask_store.query.index)
LEGACY_INDEX = "index.npz.zst"  # the one-blob index of releases before the columnar one: removed on update
# The dimension names each array of a case is stored with.
DIMENSION_NAMES = {
    LABEL_VOLUME: ("i", "j", "k"), BINARY_LAYERS: ("layer", "i", "j", "k"), manifest.ORGAN_CHUNK_VOXELS: ("organ", "chunk"),
}  # fmt: skip
COUNTS_PER_CHUNK = 2**16  # organ chunk-voxel counts per stored chunk (256 KB decoded): all organs of a 512³ case


@dataclass(frozen=True)
class StorageSettings:
    """How arrays are chunked and compressed.

    ``chunk_size`` is the edge of the cubic chunks (the unit of partial reads).
    ``label_codec`` is ``"zstd"`` (plain Zarr v3 Zstd: zarr-python, tensorstore
    and h5py+hdf5plugin read label volumes without medmask_store) or
    ``"crackle_zstd"`` (smaller; needs medmask_store to read). ``label_level``
    and ``layer_level`` are the Zstd levels of the label volume and of the
    PackBits+Zstd binary layers. :meth:`preset` names the tested combinations.
    """

    chunk_size: int = 64
    label_codec: str = "zstd"
    label_level: int = 19
    layer_level: int = 19

    def __post_init__(self) -> None:
        if self.label_codec not in LABEL_CODECS:
            raise ValueError(f"label_codec must be one of {LABEL_CODECS}, got {self.label_codec!r}")
        if not 1 <= self.chunk_size <= MAX_CHUNK_EDGE:
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_EDGE}, got {self.chunk_size}")

    @classmethod
    def preset(cls, name: str) -> StorageSettings:
        """``"default"`` (plain Zstd label volumes) or ``"compact"`` (Crackle+Zstd, ~20 % smaller)."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


PRESETS = {"default": StorageSettings(), "compact": StorageSettings(label_codec="crackle_zstd", label_level=15)}


@dataclass(frozen=True)
class ArrayToWrite:
    """One array of a case: its name, data, inner chunk shape and dimension names."""

    name: str
    data: np.ndarray
    chunks: tuple[int, ...]
    dimension_names: tuple[str, ...]
    codec: str  # "zstd" / "crackle_zstd" (label volume) or "packbits_zstd" (binary layers)
    level: int

    def encode(self, encoders: dict[str, Encoder]) -> EncodedArray:
        """Every non-empty chunk, zero-padded to the chunk shape and encoded, in chunk order.

        Only chunks inside the volume's occupied box are looked at; encoding runs
        on ``worker_threads()`` threads: Zstd and Crackle release the GIL.
        """
        encode = encoders[self.codec]
        regions = list(iter_chunks(self.data.shape, self.chunks))
        box = occupied_box(self.data) if self.data.ndim == 3 else tuple(slice(0, n) for n in self.data.shape)
        regions = [(coords, region) for coords, region in regions if box is not None and _overlap(region, box)]

        def encoded(region: tuple[slice, ...]) -> bytes | None:
            block = self.data[region]
            if not block.any():
                return None
            padded = np.zeros(self.chunks, dtype=self.data.dtype)
            padded[tuple(slice(0, n) for n in block.shape)] = block
            return encode(padded, self.level)

        with thread_pool() as pool:
            results = list(pool.map(encoded, (region for _, region in regions)))
        chunks = [(coords, data) for (coords, _), data in zip(regions, results) if data is not None]
        return EncodedArray(
            self.name, self.data.shape, self.data.dtype, self.chunks, self.dimension_names, self.codec, self.level, chunks
        )


@dataclass(frozen=True)
class EncodedArray:
    """One array of a case with its non-empty chunks encoded (chunk coordinates, bytes): what backends write."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    dimension_names: tuple[str, ...]
    codec: str
    level: int
    encoded: list[tuple[ChunkCoords, bytes]]

    @property
    def grid(self) -> tuple[int, ...]:
        """Chunks per axis."""
        return tuple(-(-size // chunk) for size, chunk in zip(self.shape, self.chunks))

    def manifest(self, metadata_crc32c: int | None = None) -> ArrayManifest:
        """What the case's attributes promise about this array once written."""
        return ArrayManifest.of_chunks(self.shape, self.dtype, self.chunks, self.codec, dict(self.encoded), metadata_crc32c)


@dataclass(frozen=True)
class EncodedCase:
    """A case ready to write: its attributes (unsealed, see :func:`case_document`) and encoded arrays.

    Encoding is the costly part of a write; it needs no archive, so import
    workers encode cases in parallel and one writer stores them.
    """

    content: dict[str, Any]
    arrays: list[EncodedArray]

    @property
    def stored_bytes(self) -> int:
        return sum(len(data) for array in self.arrays for _, data in array.encoded)


def encode_case(data: CaseData, settings: StorageSettings, encoders: dict[str, Encoder]) -> EncodedCase:
    """Split a case into its arrays and encode their chunks with a backend's ``encoders``."""
    arrays, layer_origins = arrays_to_write(data, settings)
    return EncodedCase(case_attributes(data, layer_origins), [array.encode(encoders) for array in arrays])


def arrays_to_write(data: CaseData, settings: StorageSettings) -> tuple[list[ArrayToWrite], list[list[int]]]:
    """The arrays of a case, and where each binary-layer window starts (voxels, chunk-aligned).

    Binary layers are stored as windows: each layer keeps only the chunk-aligned
    box around its voxels (all windows share the largest box's shape), so a
    layer of a few overlap voxels costs one chunk index entry, not one per chunk
    of the volume. The binary-layer array is omitted when no organ overlaps. The organ
    chunk-voxel table (:func:`organ_chunk_voxels`) is omitted when the case has no organs.
    """
    cube = (settings.chunk_size,) * 3
    chunk_count = math.prod(-(-n // settings.chunk_size) for n in data.label_volume.shape)
    if chunk_count > MAX_CHUNKS_PER_ARRAY:
        raise InvalidCase(
            f"a volume of shape {data.label_volume.shape} makes {chunk_count} chunks of {settings.chunk_size}³, "
            f"more than the {MAX_CHUNKS_PER_ARRAY} an array may hold; choose a larger chunk_size"
        )
    label_volume = ArrayToWrite(
        LABEL_VOLUME, data.label_volume, cube, DIMENSION_NAMES[LABEL_VOLUME], settings.label_codec, settings.label_level
    )
    arrays, origins = [label_volume], []  # type: list[ArrayToWrite], list[list[int]]
    if data.layer_names:
        origins, windows = _layer_windows(data, settings.chunk_size)
        arrays.append(ArrayToWrite(
            BINARY_LAYERS, windows, (1, *cube), DIMENSION_NAMES[BINARY_LAYERS], LAYER_CODEC, settings.layer_level
        ))  # fmt: skip
    if data.mapping:
        counts = organ_chunk_voxels(data, settings.chunk_size)
        rows = max(1, min(len(counts), COUNTS_PER_CHUNK // counts.shape[1]))
        arrays.append(ArrayToWrite(
            manifest.ORGAN_CHUNK_VOXELS, counts, (rows, counts.shape[1]), DIMENSION_NAMES[manifest.ORGAN_CHUNK_VOXELS], "zstd", settings.label_level
        ))  # fmt: skip
    return arrays, origins


def organ_chunk_voxels(data: CaseData, chunk: int) -> np.ndarray:
    """Each organ's voxel count in each chunk of the volume's ``chunk``³ grid, as stored in ``ORGAN_CHUNK_VOXELS``:
    rows are organs in label-value order, columns chunks in C order (uint32)."""
    volume = data.label_volume
    grid = tuple(-(-n // chunk) for n in volume.shape)
    values = sorted(data.mapping.values())
    row_of = np.zeros(values[-1] + 1, dtype=np.intp)
    row_of[values] = np.arange(len(values))
    counts = np.zeros((len(values), math.prod(grid)), dtype=np.uint32)
    box = occupied_box(volume)
    for coords, region in iter_chunks(volume.shape, (chunk,) * 3):
        if box is not None and _overlap(region, box):
            found = np.bincount(volume[region].ravel(), minlength=len(row_of))
            present = np.flatnonzero(found[1:]) + 1
            counts[row_of[present], np.ravel_multi_index(coords, grid)] = found[present]
    for name, indices in data.layer_voxels.items():  # layer voxels the label volume gives another organ
        voxels = np.unravel_index(indices, volume.shape)
        outside = volume[voxels] != data.mapping[name]
        cells = np.ravel_multi_index(tuple(c[outside] // chunk for c in voxels), grid)
        counts[row_of[data.mapping[name]]] += np.bincount(cells, minlength=counts.shape[1]).astype(np.uint32)
    return counts


def _overlap(region: tuple[slice, ...], box: tuple[slice, ...]) -> bool:
    return all(r.start < b.stop and b.start < r.stop for r, b in zip(region, box))


def _layer_windows(data: CaseData, chunk: int) -> tuple[list[list[int]], np.ndarray]:
    shape = data.label_volume.shape
    coords = [np.unravel_index(indices, shape) for indices in data.layer_voxels.values()]
    boxes = [
        [(int(c.min()) // chunk * chunk, int(c.max()) + 1) if c.size else (0, 1) for c in layer]
        for layer in coords
    ]
    grid = [-(-size // chunk) * chunk for size in shape]
    extent = [max(-(-(stop - start) // chunk) * chunk for start, stop in (box[axis] for box in boxes)) for axis in range(3)]
    origins = [[min(start, g - e) for (start, _), g, e in zip(box, grid, extent)] for box in boxes]
    windows = np.zeros((len(boxes), *extent), dtype=bool)
    for window, layer, origin in zip(windows, coords, origins):
        window[tuple(c - o for c, o in zip(layer, origin))] = True
    return origins, windows
