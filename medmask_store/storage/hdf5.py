"""HDF5 backend (h5py): the same groups, attributes and chunk bytes as the Zarr backends.

Layout::

    archive.h5
      /                      attribute medmask_store = JSON {"format_version": 3, "kind": "archive", "checksum": ...}
      /cases/<case_id>       attribute medmask_store = JSON case attributes, sealed, with the array
                             manifest (as in Zarr)
        label_volume         uint8|uint16, chunks 64^3, filter Zstd (hdf5plugin, id 32015);
                             each chunk a Zstd frame with its content checksum: any h5py
                             reader with hdf5plugin decodes (and verifies) it
                             (compact preset: filter id 32766, crackle_zstd, chunks as in Zarr)
        binary_layers        bool (layer, i, j, k), chunks (1, 64, 64, 64), filter id 32767
                             (packbits_zstd): chunks written with direct chunk writes and
                             byte-identical to the Zarr backend's (PackBits+Zstd frame + crc32c);
                             plain h5py refuses to read them (unknown filter), never misreads

Each dataset's attributes (JSON) describe it to plain h5py readers, as the Zarr
backends' array attributes do (:mod:`medmask_store.model.plain_attributes`): the
label volume's organ names and colours, which organs' overlap voxels are in
``binary_layers``, and the codec of an array stored with one of ours.

Chunks are encoded here and written with direct chunk writes (only non-empty
ones). Reads locate each dataset's chunks once (``H5Dchunk_iter``) and then read
their bytes with ``os.pread`` and decode them here, bypassing per-chunk h5py calls.
Writers work on a copy and publish it on commit (see :mod:`.single_file`).
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import h5py
import numpy as np

from medmask_store.codecs.chunks import ENCODERS
from medmask_store.errors import CaseExists, CaseNotFound, CorruptMetadata, InvalidArchive, MaskStoreError
from medmask_store.limits import MAX_CHUNK_VOXELS, MAX_CHUNKS_PER_ARRAY, MAX_DOCUMENT_BYTES
from medmask_store.model.attributes import ATTRIBUTE_KEY, archive_attributes, case_document, check_archive_attributes
from medmask_store.model.manifest import ArrayManifest
from medmask_store.model.plain_attributes import array_attributes
from medmask_store.storage.backend import StoredArray, StoredCase
from medmask_store.storage.chunked import ChunkCoords
from medmask_store.storage.layout import CASES_GROUP, EncodedArray, EncodedCase, StorageSettings
from medmask_store.storage.portable import reading_handle
from medmask_store.storage.remote import RemoteLocation, as_file, open_archive_file
from medmask_store.storage.single_file import SingleFileEditor, SingleWriter
from medmask_store.storage.zarr_store import FileObject

# Filter ids by chunk codec: Zstd's registered id (hdf5plugin.ZSTD_ID; hdf5plugin is imported by the
# writer only: chunks are read here, without HDF5 filters). Ours (32766, 32767) are unregistered ids:
# chunks are written and read here, and plain h5py reports an unknown filter instead of returning wrong data.
FILTER_IDS = {"zstd": 32015, "crackle_zstd": 32766, "packbits_zstd": 32767}
CODECS_BY_FILTER = {filter_id: codec for codec, filter_id in FILTER_IDS.items()}
# HDF5 1.10 object and chunk-index formats: ~10 KB less metadata per case than 1.8's,
# and checksums on every object header and chunk index (HDF5 verifies them on read).
LIBVER = ("v110", "latest")
STAGING_GROUP = "staging"
INDEX_GROUP = "index"  # the archive index: one uint8 dataset per blob (medmask_store.query.index)
Method = TypeVar("Method", bound=Callable[..., Any])


def _hdf5_errors(method: Method) -> Method:
    """Turn the errors h5py raises on a damaged file (OSError, RuntimeError, KeyError...) into ours."""

    @functools.wraps(method)
    def translated(self: Hdf5Backend, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except MaskStoreError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise CorruptMetadata(f"{self.path}: the HDF5 structure is damaged ({type(exc).__name__}: {exc})") from exc

    return translated  # type: ignore[return-value]


def _write_json_attributes(node: h5py.Group | h5py.Dataset, attributes: dict[str, Any]) -> None:
    """JSON texts as fixed-length UTF-8 string attributes: stored in the (checksummed) object header,
    not in a global heap whose unused 4 KB would be bytes no reader checks."""
    for key, value in attributes.items():
        node.attrs[key] = np.bytes_(json.dumps(value, separators=(",", ":")).encode())


def _read_json_attributes(node: h5py.Group, what: str, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The node's attributes (or only ``keys``), each a JSON text of at most ``MAX_DOCUMENT_BYTES``."""
    raw = dict(node.attrs.items())  # materialized first: a failing decode must not hold h5py's lock
    attributes = {}
    for key, value in raw.items():
        if keys is not None and key not in keys:
            continue
        if not isinstance(value, (str, bytes)) or len(value) > MAX_DOCUMENT_BYTES:
            raise CorruptMetadata(f"{what}: attribute {key!r} is not a JSON text of at most {MAX_DOCUMENT_BYTES} bytes")
        try:
            attributes[key] = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise CorruptMetadata(f"{what}: attribute {key!r} is not valid JSON ({exc})") from exc
    return attributes


class Hdf5Backend(SingleWriter):
    """Cases as HDF5 groups under ``/cases``."""

    chunk_encoders = ENCODERS

    def __init__(self, path: Path | RemoteLocation, mode: str, settings: StorageSettings) -> None:
        self.path = path  # type: ignore[assignment]
        self.read_only = mode == "r"
        self.closed = False
        # Bumped when a case is replaced or deleted: HDF5 reuses freed space, so readers
        # opened before must stop rather than read bytes now belonging to other chunks.
        self._versions: dict[str, int] = {}
        self._index: h5py.Group | None = None  # a reader's index group, looked up once
        self.settings = settings
        self._editor: SingleFileEditor | None = None
        if isinstance(path, RemoteLocation):  # read in place, by ranges: HDF5's own reads buffered
            self._chunk_file = open_archive_file(path, mode)
            self._file = self._open_existing(path, "r", as_file(self._chunk_file))
            return
        if self.read_only:
            self._file = self._open_existing(path, "r")
        else:
            self._editor = SingleFileEditor(path, mode, ".h5")
            try:
                self._file = self._open_working_copy(path, mode)
            except BaseException:
                self._editor.close()
                raise
            self._dirty = not path.exists() or mode == "w"
        # Chunks are read through HDF5's own descriptor (duplicated): the very file HDF5
        # opened, even if the path has since been replaced by a writer's commit. Without
        # os.pread it is opened again instead (Windows, which replaces no open file).
        handle = reading_handle(self._file.id.get_vfd_handle(), self._file.filename)
        self._chunk_file = FileObject(handle, str(path))

    def _open_working_copy(self, path: Path, mode: str) -> h5py.File:
        assert self._editor is not None
        if path.exists():
            self._open_existing(path, "r").close()  # refuse to replace or extend anything but an archive
        if path.exists() and mode != "w":
            shutil.copyfile(path, self._editor.working)
            return h5py.File(self._editor.working, "r+", libver=LIBVER)
        file = h5py.File(self._editor.working, "w", libver=LIBVER)
        _write_json_attributes(file, archive_attributes())
        file.create_group(CASES_GROUP)
        return file

    @staticmethod
    def _open_existing(path: Path | RemoteLocation, mode: str, file_object: IO[bytes] | None = None) -> h5py.File:
        if isinstance(path, Path) and not path.exists():
            raise InvalidArchive(f"{path} does not exist; open it with mode 'a' or 'w' to create one")
        try:
            file = h5py.File(file_object or path, mode)
        except OSError as exc:
            raise InvalidArchive(f"{path} cannot be opened as an HDF5 archive: {exc}") from exc
        try:
            try:  # other tools' files have attributes of their own: only ours must be JSON
                root = _read_json_attributes(file, f"{path}: root", keys=(ATTRIBUTE_KEY,))
            except CorruptMetadata as exc:
                raise InvalidArchive(f"{path} is not a medmask_store archive ({exc})") from exc
            check_archive_attributes(root, path)
            if not isinstance(file.get(CASES_GROUP), h5py.Group):
                raise CorruptMetadata(f"{path}: has no /{CASES_GROUP} group")
        except BaseException as exc:
            file.close()
            if isinstance(exc, MaskStoreError):
                raise
            raise CorruptMetadata(f"{path}: the HDF5 structure is damaged ({type(exc).__name__}: {exc})") from exc
        return file

    # -- reading ---------------------------------------------------------
    @_hdf5_errors
    def case_ids(self) -> list[str]:
        return sorted(self._file[CASES_GROUP].keys())

    def _index_group(self) -> h5py.Group | None:
        if self.read_only and self._index is not None:
            return self._index
        group = self._file.get(INDEX_GROUP)
        group = group if isinstance(group, h5py.Group) else None  # a dataset: the one-blob index of old releases
        if self.read_only:
            self._index = group
        return group

    @_hdf5_errors
    def read_index_blob(self, name: str) -> bytes | None:
        group = self._index_group()
        try:  # the low-level open: a query opens hundreds of blobs, 3x faster than group.get
            stored = None if group is None else h5py.h5o.open(group.id, name.encode())
        except KeyError:
            return None
        if not isinstance(stored, h5py.h5d.DatasetID):
            return None
        offset = stored.get_offset() if self.read_only else None  # a writer's file changes under it
        if offset is None:  # not stored contiguously (or being written): through h5py
            return h5py.Dataset(stored)[...].tobytes()
        return self._chunk_file.read(offset, stored.get_storage_size())  # as chunks are read: 3x faster

    @_hdf5_errors
    def index_blob_names(self) -> list[str]:
        group, names = self._index_group(), []
        if group is not None:
            group.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        return sorted(names)

    @_hdf5_errors
    def update_index(self, build: Callable[[], tuple[dict[str, bytes], list[str]]]) -> None:
        self._check_writable()
        blobs, unused = build()
        if INDEX_GROUP in self._file and self._index_group() is None:
            del self._file[INDEX_GROUP]
        group = self._file.require_group(INDEX_GROUP)
        for name in [*blobs, *unused]:
            if name in group:
                del group[name]
        for name, data in blobs.items():
            group.create_dataset(name, data=np.frombuffer(data, dtype=np.uint8))
        for parent in {name.rpartition("/")[0] for name in unused} - {""}:
            if parent in group and not len(group[parent]):
                del group[parent]
        self._dirty = True

    def _case_group(self, case_id: str) -> h5py.Group:
        group = self._file[CASES_GROUP].get(case_id)
        if group is None:
            raise CaseNotFound(f"no case {case_id!r} in {self.path}")
        if not isinstance(group, h5py.Group):
            raise CorruptMetadata(f"{self.path}: case {case_id!r} is not an HDF5 group")
        return group

    @_hdf5_errors
    def open_case(self, case_id: str) -> StoredCase:
        group = self._case_group(case_id)
        what = f"{self.path}: case {case_id!r}"
        attributes = _read_json_attributes(group, what)
        version = self._versions.get(case_id, 0)

        def check_current() -> None:
            if self._versions.get(case_id, 0) != version:
                raise CaseNotFound(f"case {case_id!r} was replaced or deleted since it was opened; open it again")

        open_array = functools.partial(self._open_array, group=group, what=what, check_current=check_current)
        return StoredCase(attributes, open_array, lambda: self.closed)

    @_hdf5_errors
    def _open_array(self, name: str, group: h5py.Group, what: str, check_current: Callable[[], None]) -> StoredArray | None:
        check_current()
        dataset = group.get(name)
        if dataset is None:
            return None
        where = f"{what}/{name}"
        if not isinstance(dataset, h5py.Dataset) or dataset.chunks is None:
            raise CorruptMetadata(f"{where}: not a chunked HDF5 dataset")
        if not self.read_only:
            self._file.flush()  # chunk bytes are read from the file itself
        chunks = tuple(dataset.chunks)
        grid = [-(-n // c) for n, c in zip(dataset.shape, chunks)]
        if math.prod(chunks) > MAX_CHUNK_VOXELS or math.prod(grid) > MAX_CHUNKS_PER_ARRAY:
            raise CorruptMetadata(f"{where}: chunks {chunks} of shape {dataset.shape} exceed the limits")
        filter_id = dataset.id.get_create_plist().get_filter(0)[0]
        if filter_id not in CODECS_BY_FILTER:
            raise CorruptMetadata(f"{where}: unsupported filter id {filter_id}")
        locations: dict[ChunkCoords, tuple[int, int]] = {}

        def locate(info: Any) -> None:
            locations[tuple(o // n for o, n in zip(info.chunk_offset, chunks))] = (info.byte_offset, info.size)

        dataset.id.chunk_iter(locate)
        file = self._chunk_file
        if isinstance(file, FileObject):  # a writer's file grows: bound reads by its size as of this open
            file = FileObject(file.handle, file.name)

        def fetch(coords: ChunkCoords) -> bytes:
            check_current()
            return file.read(*locations[coords])

        def fetch_many(wanted: list[ChunkCoords]) -> list[bytes]:
            return file.read_many([locations[coords] for coords in wanted])  # type: ignore[attr-defined]

        return StoredArray(
            lengths={coords: length for coords, (_, length) in locations.items()},
            fetch=fetch,
            fetch_many=fetch_many if hasattr(file, "read_many") else None,
            zarr_chunks=False,
            layout=(tuple(dataset.shape), np.dtype(dataset.dtype).str, chunks, CODECS_BY_FILTER[filter_id]),
        )

    # -- writing ---------------------------------------------------------
    @_hdf5_errors
    def write_case(self, case_id: str, case: EncodedCase, overwrite: bool) -> None:
        self._check_writable()
        cases = self._file[CASES_GROUP]
        if case_id in cases and not overwrite:
            raise CaseExists(f"case {case_id!r} already exists in {self.path}; pass overwrite=True to replace it")
        staging_name = f"{STAGING_GROUP}/{uuid.uuid4().hex}"
        try:
            group = self._file.create_group(staging_name)
            manifests = {array.name: self._write_array(group, array, case.content) for array in case.arrays}
            _write_json_attributes(group, case_document(case.content, manifests))
            if case_id in cases:
                del cases[case_id]
                self._versions[case_id] = self._versions.get(case_id, 0) + 1
            self._file.move(staging_name, f"{CASES_GROUP}/{case_id}")
        finally:
            if staging_name in self._file:
                del self._file[staging_name]
            if not len(self._file[STAGING_GROUP]):
                del self._file[STAGING_GROUP]
        self._dirty = True

    def _write_array(self, group: h5py.Group, array: EncodedArray, content: dict[str, Any]) -> ArrayManifest:
        chunks = array.chunks
        # HDF5 refuses chunks larger than the maximum shape; Zarr allows them, and the
        # chunk shape must match Zarr's for byte-identical chunks.
        grid_shape = tuple(count * chunk for count, chunk in zip(array.grid, chunks))
        if array.codec == "zstd":
            import hdf5plugin

            filters: dict[str, Any] = dict(hdf5plugin.Zstd(clevel=array.level))
        else:
            filters = {"compression": FILTER_IDS[array.codec], "allow_unknown_filter": True}
        dataset = group.create_dataset(
            array.name, shape=array.shape, maxshape=grid_shape, dtype=array.dtype, chunks=chunks, **filters
        )
        described = array_attributes(array.name, array.codec, content)
        _write_json_attributes(dataset, {"dimension_names": list(array.dimension_names), **described})
        for coords, chunk in array.encoded:
            dataset.id.write_direct_chunk(tuple(c * n for c, n in zip(coords, chunks)), chunk)
        return array.manifest()

    @_hdf5_errors
    def delete_case(self, case_id: str) -> None:
        self._check_writable()
        self._case_group(case_id)
        del self._file[CASES_GROUP][case_id]
        self._versions[case_id] = self._versions.get(case_id, 0) + 1
        self._dirty = True

    @_hdf5_errors
    def _write_snapshot(self, destination: Path) -> None:
        """Copy the live objects into a fresh file: compact (no space left by deletes) and closed."""
        with h5py.File(destination, "w", libver=LIBVER) as snapshot:
            for key, value in self._file.attrs.items():
                snapshot.attrs[key] = value
            self._file.copy(self._file[CASES_GROUP], snapshot, CASES_GROUP)
            if self._index_group() is not None:
                self._file.copy(self._file[INDEX_GROUP], snapshot, INDEX_GROUP)

    def close(self) -> None:
        self.closed = True
        self._chunk_file.close()
        try:
            self._file.close()
        finally:
            if self._editor is not None:
                self._editor.close()
