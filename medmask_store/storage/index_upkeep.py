"""An archive's stored query index, kept: read, reconciled with the cases present, saved, rebuilt.

Backend-neutral: the backend stores the index's blobs (:meth:`Backend.read_index_blob`,
:meth:`Backend.update_index`) and says how far its listing version can be trusted; the index's
format is :mod:`medmask_store.query.index`'s.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from medmask_store.errors import CorruptArchive, CorruptMetadata, DamagedDataWarning, InvalidArchive
from medmask_store.model.attributes import CaseInfo
from medmask_store.storage.backend import Backend

if TYPE_CHECKING:
    from medmask_store.query.index import ArchiveIndex

Blobs = tuple[dict[str, bytes], list[str]]  # blobs to write (the manifest last), blobs no longer used


class IndexUpkeep:
    """The stored index of one archive: its ``backend()`` (in an object store if ``remote``), cases read with
    ``read_info``, listed with ``case_ids(skip_damaged)``; ``modified`` holds the cases this process wrote or
    deleted since it saved."""

    def __init__(
        self,
        backend: Callable[[], Backend],
        where: object,
        remote: bool,
        read_info: Callable[[str], CaseInfo],
        case_ids: Callable[[bool], list[str]],
        modified: set[str],
    ) -> None:
        self._backend, self._where, self._remote = backend, where, remote
        self._read_info, self._case_ids, self._modified = read_info, case_ids, modified

    def skipping_damaged(self, case_id: str) -> CaseInfo | None:
        """The case's metadata, or None with a warning if it is damaged."""
        try:
            return self._read_info(case_id)
        except (CorruptArchive, InvalidArchive) as exc:
            warnings.warn(f"skipped damaged case {case_id!r}: {exc}", DamagedDataWarning, stacklevel=5)
            return None

    def stored(self, skip_damaged: bool) -> ArchiveIndex | None:
        """The stored index, its manifest read (None if there is none); with ``skip_damaged`` a damaged one
        is None, with a :class:`DamagedDataWarning`."""
        from medmask_store.query.index import PARALLEL_READS, ArchiveIndex  # pandas: imported by index users only

        read, where = self._backend().read_index_blob, f"{self._where}: the query index"
        try:
            return ArchiveIndex.load(read, where, PARALLEL_READS if self._remote else 1)
        except CorruptMetadata as exc:
            if not skip_damaged:
                raise
            warnings.warn(f"{exc}; answering from the case attributes", DamagedDataWarning, stacklevel=5)
            return None

    def reconciled(self, skip_damaged: bool) -> ArchiveIndex:
        """The stored index, completed with cases added, replaced or deleted since it was written.

        When the backend's listing version still equals the one the index was built from
        (and this process wrote nothing since), no case is looked at. With ``skip_damaged``,
        damaged cases are left out and a damaged index is rebuilt from the cases, with a
        :class:`DamagedDataWarning` each; otherwise they raise.
        """
        from medmask_store.query.index import ArchiveIndex

        backend = self._backend()
        stored = self.stored(skip_damaged)
        version = backend.listing_version()
        index = stored or ArchiveIndex()
        exact = backend.listing_version_is_exact and (version or not backend.concurrent_writers)
        if stored and not self._modified and index.listing_version == version and exact:
            return index  # the store's listing version proves the index lists every case: none is listed
        listed = set(self._case_ids(skip_damaged))
        tokens = {c: t for c, t in backend.case_tokens().items() if c in listed}
        try:
            if not stored or self._modified or index.listing_version != version or set(index.case_ids) != listed:
                index.replace(self._modified, [])
                index.reconcile(tokens, self.skipping_damaged if skip_damaged else self._read_info)
        except CorruptMetadata as exc:  # a damaged segment of the index
            if not skip_damaged or stored is None:
                raise
            warnings.warn(f"{exc}; answering from the case attributes", DamagedDataWarning, stacklevel=4)
            index = ArchiveIndex()
            index.reconcile(tokens, self.skipping_damaged)
        index.listing_version = version
        return index

    def from_cases(self) -> ArchiveIndex:
        """An index built from every case's attributes (damaged cases left out, with a warning)."""
        from medmask_store.query.index import ArchiveIndex

        index = ArchiveIndex()
        index.reconcile(self._backend().case_tokens(), self.skipping_damaged)
        return index

    def changes(self, stores_index: bool) -> Blobs:
        """What saving the reconciled index writes and deletes (removing it, unless ``stores_index``).

        A writer leaves damaged cases out (with a warning) and rebuilds a damaged
        index, rather than fail a write over a case it did not touch.
        """
        backend = self._backend()
        if not stores_index:
            return {}, backend.index_blob_names()
        index = self.reconciled(skip_damaged=True)
        try:
            blobs, unused = index.changes()
        except CorruptMetadata as exc:  # a damaged segment, read to be rewritten
            warnings.warn(f"{exc}; rebuilding the index from the case attributes", DamagedDataWarning, stacklevel=5)
            return self.rebuilt(index.listing_version)
        return blobs, [] if backend.shared_index_blobs else unused

    def rebuilt(self, version: str, progress: Callable[[Iterable[str]], Iterable[str]] = iter) -> Blobs:
        """Blobs of an index built afresh from every case, and every other stored blob as unused."""
        from medmask_store.query.index import ArchiveIndex

        backend = self._backend()
        tokens = backend.case_tokens()
        infos = ((self.skipping_damaged(c), tokens[c]) for c in progress(self._case_ids(True)))
        fresh = ArchiveIndex.from_cases((info, token) for info, token in infos if info is not None)
        fresh.listing_version = version
        blobs, _ = fresh.changes()
        return blobs, [name for name in backend.index_blob_names() if name not in blobs]
