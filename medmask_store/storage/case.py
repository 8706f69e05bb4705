"""Read access to one stored case: metadata from attributes, voxels from chunks.

Every read goes through lazy chunked views, so a region, a slab or one organ
decodes only the chunks it intersects (an organ: only chunks inside its
bounding box).
"""

from __future__ import annotations

import difflib
import functools
import operator
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
from spacetransformer import Space

from medmask_store.errors import ArchiveClosed, CorruptChunk, CorruptMetadata, InvalidRegion, OrganNotFound
from medmask_store.model.attributes import CaseInfo
from medmask_store.model.case_data import CaseData
from medmask_store.model.geometry import nifti_affine
from medmask_store.model.manifest import BINARY_LAYERS, LABEL_VOLUME, ORGAN_CHUNK_VOXELS
from medmask_store.model.palette import Color
from medmask_store.model.region import VoxelBox, WorldBox, box_space, voxel_box
from medmask_store.model.stats import BBox, OrganStats
from medmask_store.storage.backend import StoredArray, StoredCase
from medmask_store.storage.chunked import ChunkCoords, ChunkedArray, iter_chunks

if TYPE_CHECKING:
    import SimpleITK as sitk
    from matplotlib.figure import Figure

    from medmask_store.storage.archive import MaskArchive


def _bbox_slices(bbox: BBox) -> VoxelBox:
    return tuple(slice(start, stop) for start, stop in bbox)  # type: ignore[return-value]


class Case:
    """One case of an archive. Metadata is read at once, voxels only on request."""

    def __init__(self, stored: StoredCase, info: CaseInfo, where: str, source: MaskArchive | None = None) -> None:
        self._stored_case = stored
        self.info = info
        self.where = where  # the archive and case, for messages
        self._source = source  # the archive it was read from: a pickled case reopens it by path
        self._arrays: dict[str, ChunkedArray] = {}
        self._table_rows: tuple[int, np.ndarray] = (-1, np.empty(0))  # see _organ_chunk_row

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as (archive, case id): the receiving process reopens the archive by path and reads the case."""
        if self._source is None:
            raise TypeError(f"{self.where}: a case not read from an archive cannot be pickled")
        return operator.getitem, (self._source, self.case_id)

    def __repr__(self) -> str:
        return f"<Case {self.case_id!r} shape={self.info.shape} organs={len(self.mapping)}>"

    # -- metadata ----------------------------------------------------------
    @property
    def case_id(self) -> str:
        return self.info.case_id

    @property
    def space(self) -> Space:
        return self.info.space

    @property
    def mapping(self) -> dict[str, int]:
        """Organ name -> label value, including organs with no voxels."""
        return dict(self.info.mapping)

    @property
    def stats(self) -> dict[str, OrganStats]:
        return dict(self.info.stats)

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.info.meta)

    @property
    def colors(self) -> dict[str, Color]:
        """Organ name -> RGBA colour (0..255): the one imported or given, else the default palette's for its value."""
        return dict(self.info.colors)

    @property
    def organs(self) -> list[str]:
        return list(self.info.mapping)

    def organ_affine(self, organ: str) -> np.ndarray:
        """The organ's NIfTI affine: the Space's, or its source file's exact one if that differed."""
        self._check_organ(organ)
        affine = self.info.organ_affines.get(organ)
        return nifti_affine(self.space) if affine is None else affine.copy()

    def representation(self, organ: str) -> str:
        """``"binary_layer"`` if the organ has a layer (it overlaps an organ placed before it), else ``"label_volume"``."""
        self._check_organ(organ)
        return self.info.representation(organ)

    def _check_organ(self, name: str) -> None:
        if name not in self.info.mapping:
            close = difflib.get_close_matches(str(name), self.info.mapping, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"it has {len(self.info.mapping)} organs"
            raise OrganNotFound(f"case {self.case_id!r} has no organ {name!r}; {hint}")

    # -- stored arrays -------------------------------------------------------
    def _stored(self, name: str) -> ChunkedArray:
        """A stored array, opened once and checked against the case's manifest."""
        self._check_open()
        if name not in self._arrays:
            self._arrays[name] = self._open_stored(name).checked((self.info.arrays or {})[name], f"{self.where}/{name}")
        return self._arrays[name]

    def _check_open(self) -> None:
        if self._stored_case.closed():
            raise ArchiveClosed(f"case {self.case_id!r}: its archive is closed; read it inside `with MaskArchive(...)`")

    def _open_stored(self, name: str, described: bool = True) -> StoredArray:
        """A stored array; ``described=False`` also reads its own metadata document where the backend may skip it."""
        self._check_open()
        open_described = self._stored_case.open_described_array if described else None
        manifest = (self.info.arrays or {})[name]
        array = self._stored_case.open_array(name) if open_described is None else open_described(name, manifest)
        if array is None:
            raise CorruptMetadata(
                f"{self.where}: its {name} array is missing (the manifest lists {manifest.stored} "
                "stored chunks); restore the archive from a copy, or delete the case and import it again"
            )
        return array

    def arrays_with_changed_bytes(self) -> list[str]:
        """Arrays whose stored chunk bytes differ from those the manifest's digest was taken of.

        Reads every stored chunk (no decoding): ``verify`` uses it to find even
        bits a decoder ignores. Reads of voxels check each chunk they decode.
        """
        changed = []
        for name, manifest in (self.info.arrays or {}).items():
            stored = self._open_stored(name, described=False)
            stored.checked(manifest, f"{self.where}/{name}")  # its metadata document too, as other readers see it
            if not stored.bytes_match(manifest):
                changed.append(name)
        return changed

    def _chunk_in_box(self, coords: ChunkCoords, bbox: BBox) -> bool:
        chunks = self._stored(LABEL_VOLUME).chunks
        return all(start < (c + 1) * n and stop > c * n for c, n, (start, stop) in zip(coords, chunks, bbox))

    def _view(
        self,
        dtype: np.dtype,
        read_chunk: Callable[[ChunkCoords], np.ndarray | None],
        prefetch: Callable[[list[ChunkCoords]], None] | None = None,
    ) -> ChunkedArray:
        labels = self._stored(LABEL_VOLUME)
        batched = labels.fetches_in_batches
        return ChunkedArray(labels.shape, dtype, labels.chunks, read_chunk, 0, (prefetch or self._prefetch) if batched else None)

    def _prefetch(self, wanted: list[ChunkCoords], layers: Iterable[int] | None = None) -> None:
        """Fetch the label chunks and the chunks of ``layers`` (default: all) under these volume chunks, in
        one batch per array where the store is remote."""
        self._stored(LABEL_VOLUME).prefetch(wanted)
        layer_chunks = [
            chunk
            for layer in (range(len(self._layer_windows)) if layers is None else layers)
            for coords in wanted
            if (chunk := self._layer_chunk_coords(layer, coords)) is not None
        ]
        if layer_chunks:
            self._stored(BINARY_LAYERS).prefetch(layer_chunks)

    # -- lazy views ------------------------------------------------------------
    def _layer_chunk(self, layer: int, coords: ChunkCoords) -> np.ndarray | None:
        """One chunk of a binary layer in volume chunk coordinates (None outside its stored window).

        The window comes from the manifest: a chunk outside it does not open the layers array.
        """
        stored = self._layer_chunk_coords(layer, coords)
        chunk = None if stored is None else self._stored(BINARY_LAYERS).read_chunk(stored)
        return None if chunk is None else chunk[0]

    def _layer_chunk_coords(self, layer: int, coords: ChunkCoords) -> ChunkCoords | None:
        """The chunk of the binary layers array holding ``layer`` at volume chunk ``coords`` (None outside its window)."""
        low, high = self._layer_windows[layer]
        if not (low[0] <= coords[0] < high[0] and low[1] <= coords[1] < high[1] and low[2] <= coords[2] < high[2]):
            return None
        return layer, coords[0] - low[0], coords[1] - low[1], coords[2] - low[2]

    @functools.cached_property
    def _layer_windows(self) -> list[tuple[ChunkCoords, ChunkCoords]]:
        """The volume chunks each binary layer's stored window covers: [low, high) per axis, from the manifest."""
        if not self.info.layer_names:
            return []
        windows = (self.info.arrays or {})[BINARY_LAYERS]
        chunks, size = windows.chunks[1:], windows.shape[1:]
        lows = [tuple(o // n for o, n in zip(origin, chunks)) for origin in self.info.layer_origins]
        return [(low, tuple(lo - (-w // n) for lo, w, n in zip(low, size, chunks))) for low in lows]

    def _layer_voxels(self, layer: int, name: str) -> np.ndarray:
        """Sorted flat C-order indices of one binary layer's voxels (reads only its organ's bounding box)."""
        bbox, layers = self.info.stats[name].bbox, self.stored_layers
        if bbox is None or layers is None:
            return np.zeros(0, dtype=np.intp)
        coords = np.nonzero(layers[(layer, *_bbox_slices(bbox))])
        return np.ravel_multi_index(tuple(c + start for c, (start, _) in zip(coords, bbox)), self.info.shape)

    @property
    def labels(self) -> ChunkedArray:
        """Lazy label volume with binary-layer organs painted over it (as :meth:`read_labels`).

        Needs no statistics: each layer's stored window bounds where it paints.
        """
        labels = self._stored(LABEL_VOLUME)
        layer_values = [(k, self.info.mapping[name]) for k, name in enumerate(self.info.layer_names)]

        def read_chunk(coords: ChunkCoords) -> np.ndarray | None:
            chunk, writable = labels.read_chunk(coords), False  # a decoded chunk is read-only
            for layer, value in layer_values:
                layer_chunk = self._layer_chunk(layer, coords)
                if layer_chunk is not None:
                    if not writable:
                        chunk, writable = np.zeros(labels.chunks, labels.dtype) if chunk is None else chunk.copy(), True
                    chunk[layer_chunk] = value  # type: ignore[index]
            return chunk

        return self._view(labels.dtype, read_chunk)

    @property
    def stored_labels(self) -> ChunkedArray:
        """Lazy label volume as stored: without the binary-layer organs."""
        return self._stored(LABEL_VOLUME)

    @property
    def stored_layers(self) -> ChunkedArray | None:
        """Lazy binary layers (layer, i, j, k) over the whole volume, one per ``info.layer_names`` organ
        (its voxels that other organs hold in the label volume); None if no organ overlaps."""
        if not self.info.layer_names:
            return None
        labels = self._stored(LABEL_VOLUME)

        def read_chunk(coords: ChunkCoords) -> np.ndarray | None:
            chunk = self._layer_chunk(coords[0], coords[1:])
            return None if chunk is None else chunk[None]

        def prefetch(wanted: list[ChunkCoords]) -> None:
            stored = (self._layer_chunk_coords(coords[0], coords[1:]) for coords in wanted)
            self._stored(BINARY_LAYERS).prefetch([coords for coords in stored if coords is not None])

        shape = (len(self.info.layer_names), *labels.shape)
        return ChunkedArray(shape, np.dtype(bool), (1, *labels.chunks), read_chunk, False,
                            prefetch if labels.fetches_in_batches else None)

    def organ(self, name: str) -> ChunkedArray:
        """Lazy boolean view of one organ; reads only chunks inside its bounding box."""
        self._check_organ(name)
        bbox = self.info.stats[name].bbox
        value = self.info.mapping[name]
        layer = self.info.layer_names.index(name) if name in self.info.layer_names else None

        def read_chunk(coords: ChunkCoords) -> np.ndarray | None:
            if bbox is None or not self._chunk_in_box(coords, bbox):
                return None
            labels = self._stored(LABEL_VOLUME).read_chunk(coords)
            mask = None if labels is None else labels == value
            if layer is not None:
                layer_chunk = self._layer_chunk(layer, coords)
                if layer_chunk is not None:
                    mask = layer_chunk if mask is None else mask | layer_chunk
            return mask

        def prefetch(wanted: list[ChunkCoords]) -> None:
            inside = [coords for coords in wanted if bbox is not None and self._chunk_in_box(coords, bbox)]
            self._prefetch(inside, [] if layer is None else [layer])

        return self._view(np.dtype(bool), read_chunk, prefetch)

    def organ_chunk_voxels(self, name: str) -> np.ndarray:
        """The organ's voxel count in each chunk of the label volume (an array of the chunk grid's shape).

        Read from the case's stored table (one small chunk) and checked against
        the organ's statistics; cases written before the table count the organ's chunks.
        """
        self._check_organ(name)
        stats, labels = self.info.stats[name], self._stored(LABEL_VOLUME)
        bounds = stats.chunk_voxel_bounds(labels.shape, labels.chunks[0])
        if ORGAN_CHUNK_VOXELS in (self.info.arrays or {}):
            counts = self._organ_chunk_row(sorted(self.info.mapping.values()).index(self.info.mapping[name]))
            counts = counts.reshape(bounds.shape).astype(np.int64)
            error: type[CorruptMetadata | CorruptChunk] = CorruptMetadata
            source = "stored chunk voxel counts"
        else:
            view = self.organ(name)
            regions = (region for _, region in iter_chunks(labels.shape, labels.chunks))
            counts = np.array([np.count_nonzero(view[r]) if b else 0 for b, r in zip(bounds.ravel(), regions)])
            counts, error, source = counts.reshape(bounds.shape), CorruptChunk, "chunks"
        if (counts > bounds).any() or counts.sum() != stats.voxels:
            raise error(
                f"{self.where}: organ {name!r}: its {source} hold {counts.sum()} voxels, its statistics say "
                f"{stats.voxels} in {stats.bbox}: the archive is damaged or crafted"
            )
        return counts

    def _organ_chunk_row(self, row: int) -> np.ndarray:
        """One organ's row of the stored chunk-voxel table; the last table chunk read is kept (one holds
        every organ of a case up to 512³ voxels), so a sampler drawing organ after organ decodes it once."""
        table = self._stored(ORGAN_CHUNK_VOXELS)
        rows = table.chunks[0]
        first = row // rows * rows
        if self._table_rows[0] != first:
            self._table_rows = (first, table[first : first + rows])
        return self._table_rows[1][row - first]

    # -- reads -----------------------------------------------------------------
    def read_labels(self, include_layers: bool = True) -> np.ndarray:
        """The whole label volume; binary-layer organs are painted over it unless ``include_layers=False``.

        Where a layer organ overlaps a label-volume organ, the voxel shows the
        layer organ: use :meth:`read_organ` for every organ exactly.
        """
        return (self.labels if include_layers else self.stored_labels)[...]

    def read_region(self, region: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Labels (layers painted) of a region: voxel slices / (start, stop) pairs, or a :class:`WorldBox`;
        written into ``out`` if given (the region's shape, any integer dtype holding the labels)."""
        return self.labels.read(self._voxel_box(region), out)

    def _voxel_box(self, region: Any) -> VoxelBox:
        """A region as voxel slices: a WorldBox needs the case's Space, voxel regions only its shape."""
        return voxel_box(region, self.space if isinstance(region, WorldBox) else self.info.geometry)

    def region_space(self, region: Any) -> Space:
        """The Space of a region, e.g. to save it as NIfTI with the right affine."""
        return box_space(self._voxel_box(region), self.space)

    @overload
    def read_organ(self, name: str, region: Any = None, crop: Literal[False] = False) -> np.ndarray: ...

    @overload
    def read_organ(self, name: str, region: Any = None, *, crop: Literal[True]) -> tuple[np.ndarray, Space]: ...

    def read_organ(self, name: str, region: Any = None, crop: bool = False) -> np.ndarray | tuple[np.ndarray, Space]:
        """Boolean mask of one organ, decoding only chunks of its bounding box.

        With ``region`` the mask covers that region only. With ``crop=True``
        it is cut to the organ's bounding box and returned with that box's Space.
        """
        view = self.organ(name)
        stats = self.info.stats[name]
        if region is not None:
            if crop:
                raise InvalidRegion("pass either a region or crop=True, not both")
            return view[self._voxel_box(region)]
        if stats.bbox is None:
            if crop:
                raise InvalidRegion(f"case {self.case_id!r}: organ {name!r} has no voxels, so nothing to crop to")
            return np.zeros(self.info.shape, dtype=bool)
        box = _bbox_slices(stats.bbox)
        cropped = view[box]
        if np.count_nonzero(cropped) != stats.voxels:
            raise CorruptChunk(
                f"{self.where}: organ {name!r} reads {np.count_nonzero(cropped)} voxels, "
                f"its statistics say {stats.voxels}: chunks are missing or damaged"
            )
        if crop:
            return cropped, box_space(box, self.space)
        mask = np.zeros(self.info.shape, dtype=bool)
        mask[box] = cropped
        return mask

    def read_organs(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Boolean masks of several organs (all organs by default), decoding each chunk once."""
        names = list(self.organs if names is None else names)
        for name in names:
            self._check_organ(name)
        boxes: list[BBox] = [b for n in names if (b := self.info.stats[n].bbox) is not None]
        if len(boxes) < 2:
            return {name: self.read_organ(name) for name in names}
        union = tuple(slice(min(b[a][0] for b in boxes), max(b[a][1] for b in boxes)) for a in range(3))
        labels = self.stored_labels[union]  # one decode per chunk for all organs
        layers = self.stored_layers
        masks = {}
        for name in names:
            masks[name] = mask = np.zeros(self.info.shape, dtype=bool)
            bbox = self.info.stats[name].bbox
            if bbox is None:
                continue
            region = _bbox_slices(bbox)
            inner = tuple(slice(r.start - u.start, r.stop - u.start) for r, u in zip(region, union))
            mask[region] = labels[inner] == self.info.mapping[name]
            if layers is not None and name in self.info.layer_names:
                mask[region] |= layers[(self.info.layer_names.index(name), *region)]
            if np.count_nonzero(mask[region]) != self.info.stats[name].voxels:
                raise CorruptChunk(
                    f"{self.where}: organ {name!r} reads {np.count_nonzero(mask[region])} voxels, "
                    f"its statistics say {self.info.stats[name].voxels}: chunks are missing or damaged"
                )
        return masks

    def overlapping_organs(self, name: str) -> list[str]:
        """Organs sharing at least one voxel with ``name`` (decodes only ``name``'s bounding box)."""
        bbox = self.info.stats[name].bbox if name in self.info.stats else None
        if bbox is None:
            self._check_organ(name)
            return []
        box = _bbox_slices(bbox)
        inside = self.organ(name)[box]
        return sorted(
            other for other in self.organs
            if other != name and self.info.stats[other].bbox and (self.organ(other)[box] & inside).any()
        )

    def to_case_data(self) -> CaseData:
        """The full in-memory content, as written (used to copy cases between archives)."""
        return CaseData(
            space=self.space,
            mapping=self.mapping,
            label_volume=self.read_labels(include_layers=False),
            layer_voxels={name: self._layer_voxels(k, name) for k, name in enumerate(self.info.layer_names)},
            stats=self.stats,
            meta=self.meta,
            organ_affines=dict(self.info.organ_affines),
            colors=self.colors,
        )

    def to_dask(self, organ: str | None = None) -> Any:
        """The label volume, or one organ's mask, as a lazy ``dask.array`` chunked like the stored chunks;
        see :func:`medmask_store.cluster.case_to_dask`."""
        from medmask_store.cluster.arrays import case_to_dask

        return case_to_dask(self, organ)

    def to_sitk(self, organ: str | None = None) -> sitk.Image:
        """One organ's mask (uint8 0/1), or the label volume (overlap voxels: as :meth:`read_labels`), as a
        SimpleITK image of the case's geometry; see :func:`medmask_store.io.sitk.case_to_sitk`."""
        from medmask_store.io.sitk import case_to_sitk

        return case_to_sitk(self, organ)

    def preview(self, organs: list[str] | None = None, path: str | os.PathLike[str] | None = None) -> Figure:
        """Axial, coronal and sagittal slices through ``organs`` (default: the volume centre), saved as PNG at
        ``path`` if given; see :func:`medmask_store.preview.render_preview`."""
        from medmask_store.preview import render_preview

        return render_preview(self, organs, path)
