"""MaskArchive: many cases in one store, behind one backend-neutral API."""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from medmask_store.errors import (
    CaseExists,
    CaseNotFound,
    CorruptMetadata,
    DamagedDataWarning,
    InvalidArchive,
    InvalidCase,
    ReadOnlyArchive,
)
from medmask_store.io.sitk import case_data_from_sitk, holds_sitk_images
from medmask_store.model.attributes import CaseInfo
from medmask_store.model.case_data import CaseData, Unmapped
from medmask_store.model.meta_types import FieldTypes
from medmask_store.model.validation import validate_case_id
from medmask_store.storage.backend import Backend
from medmask_store.storage.case import Case
from medmask_store.storage.index_upkeep import IndexUpkeep
from medmask_store.storage.layout import EncodedCase, StorageSettings, encode_case
from medmask_store.storage.remote import RemoteLocation, parse_location

if TYPE_CHECKING:
    import pandas as pd
    import SimpleITK as sitk
    from spacetransformer import Space

    from medmask_store.codecs.chunks import Encoder
    from medmask_store.ingest import CaseOutcome, ImportReport
    from medmask_store.io.labels import LabelSource
    from medmask_store.query.index import ArchiveIndex

T = TypeVar("T")
MODES = ("r", "r+", "a", "w", "w-")
INDEX_SAVE_EVERY = 256
# Below this many cases no index is stored: reading every case's attributes is as fast,
# and a one-case archive stays ~3 KB smaller.
INDEX_MIN_CASES = 32
BackendFactory = Callable[[Any, str, StorageSettings], Backend]  # (Path or RemoteLocation, mode, settings)
# Backend name -> (file suffixes, "module:factory"); names are what ``MaskArchive(..., backend=)``
# takes. A backend's module (and its library, e.g. h5py) is imported when an archive of it is opened.
BACKENDS: dict[str, tuple[tuple[str, ...], str]] = {
    "zarr.zip": ((".zarr.zip",), "medmask_store.storage.zarr_zip:open_zarr_zip"),
    "zarr": ((".zarr",), "medmask_store.storage.zarr_directory:ZarrDirectoryBackend"),
    "h5": ((".h5", ".hdf5"), "medmask_store.storage.hdf5:Hdf5Backend"),
    "msk": ((".msk",), "medmask_store.storage.packed:PackedFileBackend"),
}
# Backend name -> "module:factory" of its reader (and, for "zarr", writer) of archives in object stores.
REMOTE_BACKENDS: dict[str, str] = {
    "zarr": "medmask_store.storage.zarr_remote:RemoteZarrBackend",
    "zarr.zip": "medmask_store.storage.zarr_zip:open_zarr_zip",  # single files: read-only, in place
    "h5": "medmask_store.storage.hdf5:Hdf5Backend",
    "msk": "medmask_store.storage.packed:PackedFileBackend",
}
# What existing single files start with, for paths whose suffix names no backend
# (b"MSKP" is storage.packed.MAGIC).
MAGIC_BYTES = {b"PK\x03\x04": "zarr.zip", b"\x89HDF": "h5", b"MSKP": "msk"}


def backend_factory(name: str, location: Path | RemoteLocation) -> BackendFactory:
    """What opens archives of backend ``name`` at ``location`` (its module imported on first use)."""
    if isinstance(location, RemoteLocation):
        if name not in REMOTE_BACKENDS:
            raise InvalidArchive(f"{location}: {name} archives are not read from object stores; use {', '.join(REMOTE_BACKENDS)}")
        module, factory = REMOTE_BACKENDS[name].split(":")
    else:
        module, factory = BACKENDS[name][1].split(":")
    return getattr(importlib.import_module(module), factory)


def backend_name(path: Path | RemoteLocation, backend: str | None = None) -> str:
    """The backend for a path: ``backend`` if given, else by suffix, else by an existing file's magic bytes."""
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        return backend
    for name, (suffixes, _) in BACKENDS.items():
        if path.name.endswith(suffixes):
            return name
    if isinstance(path, Path) and path.is_file():
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if magic in MAGIC_BYTES:
            return MAGIC_BYTES[magic]
    known = ", ".join(s for names, _ in BACKENDS.values() for s in names)
    raise InvalidArchive(f"cannot tell the archive format of {path}: use one of the suffixes {known}, or pass backend=")


class MaskArchive:
    """A collection of segmentation cases keyed by case id.

    Parameters
    ----------
    path : str or Path
        Archive location; the suffix picks the backend: ``.zarr`` (Zarr v3
        directory), ``.zarr.zip`` (single-file Zarr), ``.h5`` / ``.hdf5``, or
        ``.msk`` (packed single file, for single masks and small collections);
        other suffixes: ``backend``, or the magic bytes of an existing file.
    mode : {"r", "r+", "a", "w", "w-"}
        ``r`` read only (never writes), ``r+`` read/write an existing archive,
        ``a`` read/write, creating it if needed, ``w`` create (replacing an
        existing archive), ``w-`` create, failing if the path exists.
    settings : StorageSettings, optional
        Chunking and compression of newly written cases, e.g.
        ``StorageSettings.preset("compact")``.
    backend : {"zarr", "zarr.zip", "h5", "msk"}, optional
        The format, whatever the suffix.
    storage_options : dict, optional
        For URLs (``s3://bucket/archive.zarr``, ``gs://``, ``az://``, ``https://``):
        obstore's options, e.g. ``endpoint``, ``access_key_id``, ``secret_access_key``,
        ``region``; without them the standard environment variables (``AWS_*``) apply.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | RemoteLocation,
        mode: str = "r",
        settings: StorageSettings | None = None,
        backend: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self._opened: Backend | None
        location = parse_location(path, storage_options)
        self._attach(location, mode, settings or StorageSettings(), backend_name(location, backend))
        self._opened = backend_factory(self.backend, self.path)(self.path, mode, self.settings)

    def _attach(self, path: Path | RemoteLocation, mode: str, settings: StorageSettings, backend: str) -> None:
        self.path = path
        self.mode = mode
        self.settings = settings
        self.backend = backend
        self._opened = None
        self._batch_depth = 0
        self._index: ArchiveIndex | None = None
        self._modified: set[str] = set()  # cases written or deleted since the index was saved
        self._field_types: FieldTypes | None = None  # loaded from the index by the first write

    @property
    def _backend(self) -> Backend:
        """The open backend; an archive unpickled in another process opens its own on first use."""
        if self._opened is None:
            self._opened = backend_factory(self.backend, self.path)(self.path, self.mode, self.settings)
        return self._opened

    def __getstate__(self) -> dict[str, Any]:
        """Pickle by path, for worker processes (DataLoader, multiprocessing, fork or spawn).

        No file descriptor or HDF5 handle crosses processes: the receiving process
        reopens the archive read-only on first use. Only archives opened with mode
        ``"r"`` pickle: a writer's uncommitted cases exist in its own process only.
        """
        if self.mode != "r":
            raise TypeError(
                f"{self.path} is open for writing (mode {self.mode!r}); only archives opened with mode 'r' "
                "can be pickled (worker processes reopen them by path)"
            )
        path = self.path if isinstance(self.path, RemoteLocation) else str(self.path.absolute())
        return {"path": path, "backend": self.backend, "settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        path = state["path"]
        self._attach(path if isinstance(path, RemoteLocation) else Path(path), "r", state["settings"], state["backend"])

    def __enter__(self) -> MaskArchive:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Commit pending writes (and the index) and release the archive."""
        if self._opened is None:  # unpickled and never used: nothing to release
            return
        try:
            if not self._opened.read_only:
                self.commit()
        finally:
            self._opened.close()

    def commit(self) -> None:
        """Make all writes so far, and the index, durable and visible to other processes."""
        if self._modified:
            self._save_index()
        self._backend.commit()

    @contextmanager
    def batch(self) -> Iterator[MaskArchive]:
        """Defer commits to the end of the block (one publish for single-file archives).

        Outside a batch every ``add_case`` / ``delete_case`` is committed on
        return. Inside, a killed writer loses the batch's cases but never
        earlier ones.
        """
        self._batch_depth += 1
        try:
            yield self
        finally:
            self._batch_depth -= 1
        if self._batch_depth == 0:
            self.commit()

    def _committed(self, case_id: str) -> None:
        """After a write: single-file archives commit it with the index at once; directory
        archives (each case already committed by its rename) save the index every
        ``INDEX_SAVE_EVERY`` writes and on close, readers reconciling it meanwhile."""
        self._modified.add(case_id)
        self._index = None
        if self._batch_depth == 0:
            if not self._backend.concurrent_writers or len(self._modified) >= INDEX_SAVE_EVERY:
                self._save_index()
            self._backend.commit()

    # -- index and queries -------------------------------------------------
    @property
    def _upkeep(self) -> IndexUpkeep:
        read_info = lambda case_id: self[case_id].info  # noqa: E731
        remote = isinstance(self.path, RemoteLocation)
        return IndexUpkeep(lambda: self._backend, self.path, remote, read_info, self.case_ids, self._modified)

    def _answer(self, skip_damaged: bool, question: Callable[[ArchiveIndex], T]) -> T:
        """``question(index)``; asked again of a fresh index if another writer replaced the index meanwhile,
        or, with ``skip_damaged``, of one rebuilt from the cases if a column of it is damaged."""
        from medmask_store.query.segments import MissingBlob

        try:
            return question(self.index(skip_damaged))
        except MissingBlob:
            self._index = None
            return question(self.index(skip_damaged))
        except CorruptMetadata as exc:
            if not skip_damaged:
                raise
            warnings.warn(f"{exc}; answering from the case attributes", DamagedDataWarning, stacklevel=3)
            return question(self._upkeep.from_cases())

    def _save_index(self) -> None:
        self._backend.update_index(lambda: self._upkeep.changes(self.stores_index))
        self._modified.clear()

    @property
    def stores_index(self) -> bool:
        """Whether the archive keeps a stored index: from ``INDEX_MIN_CASES`` (32) cases on.

        Smaller archives answer queries from their cases' attributes.
        """
        return len(self._backend.case_ids()) >= INDEX_MIN_CASES

    def index(self, skip_damaged: bool = False) -> ArchiveIndex:
        """The archive index (its manifest read; columns as they are used), reconciled with the cases present.

        A damaged index or case raises a :class:`CorruptArchive` naming it, or with
        ``skip_damaged=True`` is left out with a :class:`DamagedDataWarning`.
        """
        if skip_damaged:
            return self._upkeep.reconciled(skip_damaged=True)
        if self._index is None:
            self._index = self._upkeep.reconciled(skip_damaged=False)
        return self._index

    def stats(
        self, organs: Sequence[str] | None = None, fields: Sequence[str] | None = None, wide: bool = False,
        include_empty: bool = False, skip_damaged: bool = False,
    ) -> pd.DataFrame:  # fmt: skip
        """Statistics of ``organs`` and ``fields`` (default: all): one row per case × non-empty organ, with the
        case's scalar metadata, or with ``wide`` one row per case (:func:`medmask_store.query.tables.stats_table`)."""
        from medmask_store.query.tables import stats_table

        return self._answer(skip_damaged, lambda index: stats_table(index, organs, fields, wide, include_empty))

    def query(self, expression: str, skip_damaged: bool = False) -> list[str]:
        """Ids of the cases matching an expression such as ``"liver.volume_ml > 2000 and age >= 60"``."""
        from medmask_store.query.expression import evaluate_query

        return self._answer(skip_damaged, lambda index: evaluate_query(expression, index))

    def query_table(
        self, expression: str, columns: Sequence[str], include_empty: bool = False, skip_damaged: bool = False
    ) -> pd.DataFrame:
        """The matching cases, one row each: ``case_id`` and ``columns`` (``liver.volume_ml``, ``age``, ...)."""
        from medmask_store.query.expression import evaluate_query
        from medmask_store.query.tables import columns_table

        return self._answer(
            skip_damaged, lambda index: columns_table(index, evaluate_query(expression, index), columns, include_empty)
        )

    def organ_census(self, skip_damaged: bool = False) -> pd.DataFrame:
        """Every organ with the number of cases holding it (non-empty) and volume percentiles in ml."""
        from medmask_store.query.tables import organ_census

        return self._answer(skip_damaged, organ_census)

    def reindex(self, progress: Callable[[Iterable[str]], Iterable[str]] = iter) -> None:
        """Rebuild the stored index from every case's attributes (damaged cases left out, with a warning),
        and delete every index blob it does not use (also those other writers superseded)."""
        self._check_writable()
        version = self._backend.listing_version()

        def build() -> tuple[dict[str, bytes], list[str]]:
            rebuilt = self._upkeep.rebuilt(version, progress)  # every case read (and checked), even if none is stored
            return rebuilt if self.stores_index else ({}, self._backend.index_blob_names())

        self._backend.update_index(build)
        self._modified.clear()
        self._index = None
        self._backend.commit()

    def stored_index(self) -> ArchiveIndex | None:
        """The index as stored, without reconciliation (None if none was written)."""
        return self._upkeep.stored(skip_damaged=False)

    def __repr__(self) -> str:
        return f"<MaskArchive {str(self.path)!r} mode={self.mode!r}>"

    # -- reading ---------------------------------------------------------
    def listing(self) -> tuple[list[str], list[str]]:
        """The stored case ids (sorted) and one problem line per listed name that is not a valid case id.

        Names come from the store (folders, zip members, groups, a catalog) and
        are validated like ids given to :meth:`add_case`: a crafted name such as
        ``../x`` is reported, never used to build a path.
        """
        valid, problems = [], []
        for name in self._backend.case_ids():
            try:
                valid.append(validate_case_id(name))
            except InvalidCase as exc:
                problems.append(f"{self.path}: listed case name is refused: {exc}")
        return sorted(valid), problems

    def case_ids(self, skip_damaged: bool = False) -> list[str]:
        """Ids of all complete cases, sorted.

        A listed name that is not a valid case id raises :class:`CorruptMetadata`,
        or with ``skip_damaged=True`` is left out with a :class:`DamagedDataWarning`.
        """
        valid, problems = self.listing()
        if problems and not skip_damaged:
            raise CorruptMetadata(f"{problems[0]} ({len(problems)} such names; run `medmask-store verify`)")
        for problem in problems:
            warnings.warn(problem, DamagedDataWarning, stacklevel=2)
        return valid

    def __contains__(self, case_id: object) -> bool:
        return isinstance(case_id, str) and case_id in self._backend.case_ids()

    def __len__(self) -> int:
        return len(self.case_ids())

    def __iter__(self) -> Iterator[str]:
        return iter(self.case_ids())

    def __getitem__(self, case_id: str) -> Case:
        validate_case_id(case_id)
        stored = self._backend.open_case(case_id)
        where = f"{self.path}: case {case_id!r}"
        return Case(stored, CaseInfo.from_attributes(case_id, stored.attributes, self.path), where, source=self)

    # -- writing ---------------------------------------------------------
    def _check_writable(self) -> None:
        if self._backend.read_only:
            raise ReadOnlyArchive(f"{self.path} is open read-only (mode 'r'); open it with mode 'a' to write")

    def add_case(
        self,
        case_id: str,
        data: Mapping[str, np.ndarray] | Mapping[str, sitk.Image] | np.ndarray | sitk.Image | CaseData,
        *,
        space: Space | None = None,
        mapping: Mapping[str, int] | None = None,
        meta: Mapping[str, Any] | None = None,
        unmapped: Unmapped = "error",
        overwrite: bool = False,
    ) -> Case:
        """Store a case atomically and return it.

        ``data`` is a dict of binary masks (organ name -> bool array; overlaps
        are kept losslessly), a label volume with ``mapping`` (name -> value),
        or a :class:`CaseData`; arrays may be SimpleITK images, which bring their
        geometry (:mod:`medmask_store.io.sitk`).
        """
        self._check_writable()
        validate_case_id(case_id)
        if not overwrite and case_id in self:
            raise CaseExists(f"case {case_id!r} already exists in {self.path}; pass overwrite=True to replace it")
        case_data = self._to_case_data(data, space, mapping, meta, unmapped)
        self.write_encoded(case_id, self.encode(case_data), overwrite=overwrite)
        return self[case_id]

    def encode(self, data: CaseData) -> EncodedCase:
        """A case encoded as this archive stores it (no archive access: import workers call it in parallel)."""
        return encode_case(data, self.settings, self._backend.chunk_encoders)

    def write_encoded(self, case_id: str, case: EncodedCase, overwrite: bool = False) -> None:
        """Store a case :meth:`encode` made, atomically; :class:`InvalidCase` if a metadata value's type
        differs from its field's in the other cases (:class:`~medmask_store.model.meta_types.FieldTypes`)."""
        self._check_writable()
        validate_case_id(case_id)
        field_types = self.metadata_types()
        field_types.check(case_id, case.content["meta"])
        self._backend.write_case(case_id, case, overwrite)
        field_types.set(case_id, case.content["meta"])
        self._committed(case_id)

    def metadata_types(self) -> FieldTypes:
        """The metadata field types of the stored cases (from the index, read once; this process's writes kept)."""
        if self._field_types is None:
            cases = self._answer(True, lambda index: index.cases)
            self._field_types = FieldTypes(zip(cases["case_id"], cases["meta"]))
        return self._field_types

    @staticmethod
    def _to_case_data(
        data: Mapping[str, Any] | np.ndarray | sitk.Image | CaseData,
        space: Space | None,
        mapping: Mapping[str, int] | None,
        meta: Mapping[str, Any] | None,
        unmapped: Unmapped,
    ) -> CaseData:
        if isinstance(data, CaseData):
            return data
        if holds_sitk_images(data):
            return case_data_from_sitk(data, space, mapping, meta, unmapped)
        if isinstance(data, Mapping):
            return CaseData.from_masks(data, space=space, mapping=mapping, meta=meta)
        if mapping is None:
            raise InvalidCase("a label volume needs a mapping (organ name -> label value)")
        return CaseData.from_labels(np.asarray(data), mapping, space=space, meta=meta, unmapped=unmapped)

    def record_written(self, case_id: str) -> None:
        """Note a case another process stored in this directory archive: the index covers it at the next commit."""
        self._committed(case_id)

    @property
    def concurrent_writers(self) -> bool:
        """Whether other processes may write cases while this archive is open (directory archives)."""
        return self._backend.concurrent_writers

    @property
    def chunk_encoders(self) -> dict[str, Encoder]:
        """How this archive's backend encodes chunks, by chunk codec (what :meth:`encode` uses)."""
        return self._backend.chunk_encoders

    def import_cases(
        self,
        sources: Iterable[str | os.PathLike[str]],
        *,
        jobs: int | None = None,
        labels: LabelSource | None = None,
        unmapped: Unmapped = "error",
        overwrite: bool = False,
        meta: Mapping[str, Any] | None = None,
        commit_every: int = 50,
        on_outcome: Callable[[CaseOutcome], None] = lambda _: None,
        client: Any = None,
    ) -> ImportReport:
        """Import case folders, multi-label NIfTI files or folders of cases, on ``jobs`` processes (default: all cores),
        or on the workers of a Dask cluster given its ``distributed.Client`` as ``client``.

        Cases already here are skipped (``overwrite`` replaces them; a damaged one is
        replaced); a bad case is reported in the returned :class:`ImportReport`
        with its file and reason, and the others go on.
        """
        from medmask_store.ingest import import_cases, plan_import

        self._check_writable()
        plan = plan_import(self, sources, labels, unmapped, overwrite)
        return import_cases(self, plan, jobs, meta, commit_every, on_outcome, client)

    def delete_case(self, case_id: str) -> None:
        """Remove a case; raises :class:`CaseNotFound` if absent."""
        self._check_writable()
        validate_case_id(case_id)
        self._backend.delete_case(case_id)
        if self._field_types is not None:
            self._field_types.remove(case_id)
        self._committed(case_id)

    def rename_case(self, case_id: str, new_id: str) -> Case:
        """Give a case another id, its stored bytes unchanged: written under ``new_id``, then deleted (one commit
        in single-file archives; an interrupted rename in a directory leaves both ids). Refuses a missing
        ``case_id`` (:class:`CaseNotFound`) or an existing ``new_id`` (:class:`CaseExists`)."""
        from medmask_store.storage.rename import stored_encoded_case

        self._check_writable()
        if validate_case_id(case_id) not in self:
            raise CaseNotFound(f"cannot rename case {case_id!r}: there is no such case in {self.path}")
        if validate_case_id(new_id) in self:
            raise CaseExists(f"cannot rename case {case_id!r} to {new_id!r}: {new_id!r} already exists in {self.path}")
        stored = self._backend.open_case(case_id)
        encoded = stored_encoded_case(stored, self.settings, f"{self.path}: case {case_id!r}")
        with self.batch():
            self.write_encoded(new_id, encoded)
            self.delete_case(case_id)
        return self[new_id]

    def copy_case_from(self, case: Case, case_id: str | None = None, overwrite: bool = False) -> Case:
        """Copy a case from another archive (any backend), losslessly."""
        return self.add_case(case_id or case.case_id, case.to_case_data(), overwrite=overwrite)

    def copy_to(
        self,
        destination: str | Path,
        mode: str = "w-",
        settings: StorageSettings | None = None,
        progress: Callable[[Iterable[str]], Iterable[str]] = iter,
        storage_options: Mapping[str, Any] | None = None,
    ) -> MaskArchive:
        """Copy every case to a new archive of any backend (picked by suffix; a URL for object stores), losslessly.

        ``progress`` wraps the case ids, e.g. ``tqdm``. Returns the destination, closed.
        """
        location = parse_location(destination, storage_options)
        if str(location) == str(self.path) or (
            isinstance(location, Path) and isinstance(self.path, Path) and location.exists() and os.path.samefile(location, self.path)
        ):
            raise InvalidArchive(f"cannot copy {self.path} onto itself")
        with MaskArchive(location, mode, settings or self.settings, storage_options=storage_options) as target, target.batch():
            for case_id in progress(self.case_ids()):
                target.copy_case_from(self[case_id])
        return target

    def map_cases(
        self, fn: Callable[[Case], Any], client: Any = None, cases: str | Iterable[str] | None = None, progress: bool = False
    ) -> pd.DataFrame:
        """``fn(case)`` for every case (or ``cases``: ids or a query) on Dask (a ``distributed.Client``, else local
        processes): one row per case, errors per case; see :func:`medmask_store.cluster.map_cases`."""
        from medmask_store.cluster.mapping import map_cases

        return map_cases(self, fn, client, cases, progress)
