"""Zarr v3 archives in an object store (``s3://bucket/path/archive.zarr``): the directory layout, as objects.

Object stores have no rename, so a case is published by the order of its writes:
its arrays' objects first, its group document ``cases/<id>/zarr.json`` last. A
case is listed only once that document exists, so a writer killed mid-case leaves
objects that no reader lists (the next write of that case id replaces them). A
replaced case is hidden first (its document deleted), rewritten, then published
again; a deleted case is hidden first, then removed.

After every add, replace or delete, a writer rewrites the small ``listing`` object
with a new value. The index manifest records the value it was built from, so a query
reads the manifest, ``listing`` and the index columns it uses: when the two agree, the
index is exact and no case is listed; when they differ, the index is reconciled with a
listing of the cases. Writers on many machines may add cases at once: concurrent index
updates can only leave an index older than ``listing``, which the next query reconciles,
and no writer deletes an index object another may still use (``reindex`` collects them).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from medmask_store.errors import CaseExists, CaseNotFound, InvalidArchive, ReadOnlyArchive
from medmask_store.storage.backend import StoredCase
from medmask_store.storage.layout import CASES_GROUP, INDEX_FOLDER, LEGACY_INDEX, EncodedCase, StorageSettings
from medmask_store.storage.remote import READ_ONLY_SCHEMES, RemoteBytes, RemoteLocation, requests_to
from medmask_store.storage.zarr_store import (
    PrefixBytes,
    ZarrCaseReader,
    check_archive_root,
    create_archive_root,
    open_described_array,
    write_case_group,
)

LISTING = "listing"  # rewritten after every add, replace and delete: the version queries compare
CASE_DOCUMENT = "zarr.json"


class RemoteZarrBackend(ZarrCaseReader):
    """Cases as Zarr v3 groups under ``<url>/cases/``, each published by writing its group document last."""

    concurrent_writers = True
    listing_version_is_exact = True
    shared_index_blobs = True

    def __init__(self, location: RemoteLocation, mode: str, settings: StorageSettings) -> None:
        import obstore

        self.location = location
        self.read_only = mode == "r"
        self.closed = False
        self.settings = settings
        if not self.read_only and location.scheme in READ_ONLY_SCHEMES:
            raise ReadOnlyArchive(f"{location}: {location.scheme}:// archives are read-only; open them with mode 'r'")
        self._obstore, self._store = obstore, location.store
        source = RemoteBytes(location)
        if mode in ("r", "r+"):  # the root documents are read once, by check_archive_root
            exists = True
        else:
            exists = source.read_whole("zarr.json") is not None
        if mode == "w-" and (exists or self._keys("")):
            raise InvalidArchive(f"{location} already exists; mode 'w-' creates new archives only")
        if mode == "w" and exists:
            check_archive_root(source, location)  # replace archives only, never other objects
            self._delete([key for key in self._keys("") if key != "zarr.json"] + ["zarr.json"])
            exists = False
        if not exists:
            if self._keys(""):
                raise InvalidArchive(f"{location} holds objects and is not a medmask_store archive; refusing to write into it")
            self._create_root()
        super().__init__(source, location)
        self._root_checked = False
        if not self.read_only:
            self._check_root()

    def _check_root(self) -> None:
        """The root documents, read and checked once: by writers at open, by readers before they list cases.

        Readers that open a case by id (its sealed document) or query through a stored index (our own
        format, checked as it is parsed) need no root: one request opens a case, as tensorstore opens an
        array, and two answer a query.
        """
        if not self._root_checked:
            check_archive_root(self._source, self.location)
            self._root_checked = True

    def _create_root(self) -> None:
        with tempfile.TemporaryDirectory() as directory:
            create_archive_root(Path(directory))
            self._upload(Path(directory), "", [f"{CASES_GROUP}/zarr.json", "zarr.json"])

    # -- listing ------------------------------------------------------------------
    def _keys(self, prefix: str) -> list[str]:
        return [meta["path"] for meta in self._objects(prefix)]

    def _objects(self, prefix: str) -> list[Any]:
        with requests_to(f"{self.location}/{prefix}"):
            return [meta for batch in self._obstore.list(self._store, prefix=prefix or None) for meta in batch]

    def case_tokens(self) -> dict[str, str]:
        """The ETag of each published case's group document (a rewrite changes it)."""
        self._check_root()
        tokens = {}
        for meta in self._objects(f"{CASES_GROUP}/"):
            parts = meta["path"].split("/")
            if len(parts) == 3 and parts[2] == CASE_DOCUMENT:
                tokens[parts[1]] = str(meta["e_tag"])
        return tokens

    def case_ids(self) -> list[str]:
        return sorted(self.case_tokens())

    def listing_version(self) -> str:
        try:
            with requests_to(f"{self.location}/{LISTING}"):
                return str(self._obstore.head(self._store, LISTING)["e_tag"])
        except FileNotFoundError:
            return ""

    def _case_source(self, case_id: str) -> PrefixBytes:
        return PrefixBytes(self._source, f"{CASES_GROUP}/{case_id}/")

    def open_case(self, case_id: str) -> StoredCase:
        """The case, its arrays opened from its manifest: a read makes no request for their metadata documents."""
        stored = super().open_case(case_id)
        what = f"{self._where}: case {case_id!r}"
        return replace(stored, open_described_array=partial(open_described_array, self._case_source(case_id), what=what))

    def _missing_case(self, case_id: str) -> Exception:
        self._check_root()  # no archive at all is said as such
        return CaseNotFound(f"no case {case_id!r} in {self.location}")

    # -- writing ------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyArchive(f"{self.location} is open read-only (mode 'r'); open it with mode 'a' to write")

    def write_case(self, case_id: str, case: EncodedCase, overwrite: bool) -> None:
        self._check_writable()
        prefix = f"{CASES_GROUP}/{case_id}/"
        previous = self._keys(prefix)
        if prefix + CASE_DOCUMENT in previous and not overwrite:
            raise CaseExists(f"case {case_id!r} already exists in {self.location}; pass overwrite=True to replace it")
        if prefix + CASE_DOCUMENT in previous:
            self._delete([prefix + CASE_DOCUMENT])  # hidden while it is rewritten
        with tempfile.TemporaryDirectory() as directory:
            root = Path(directory)
            write_case_group(root, case)
            files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != CASE_DOCUMENT)
            files += sorted(str(p.relative_to(root)) for p in root.rglob(CASE_DOCUMENT) if p.parent != root)
            self._delete([key for key in previous if key[len(prefix) :] not in files and key != prefix + CASE_DOCUMENT])
            self._upload(root, prefix, [*files, CASE_DOCUMENT])  # the group document last: it publishes the case
        self._bump_listing()

    def delete_case(self, case_id: str) -> None:
        self._check_writable()
        prefix = f"{CASES_GROUP}/{case_id}/"
        keys = self._keys(prefix)
        if prefix + CASE_DOCUMENT not in keys:
            raise CaseNotFound(f"no case {case_id!r} in {self.location}")
        self._delete([prefix + CASE_DOCUMENT])  # unlisted first
        self._bump_listing()
        self._delete([key for key in keys if key != prefix + CASE_DOCUMENT])

    def _upload(self, root: Path, prefix: str, files: list[str]) -> None:
        for name in files:
            with requests_to(f"{self.location}/{prefix}{name}"):
                self._obstore.put(self._store, prefix + name, (root / name).read_bytes())

    def _delete(self, keys: list[str]) -> None:
        if keys:
            with requests_to(f"{self.location}/{keys[0]}"):
                self._obstore.delete(self._store, keys)

    def _bump_listing(self) -> None:
        with requests_to(f"{self.location}/{LISTING}"):
            self._obstore.put(self._store, LISTING, uuid.uuid4().hex.encode())

    def index_blob_names(self) -> list[str]:
        prefix = f"{INDEX_FOLDER}/"
        return sorted(key[len(prefix) :] for key in self._keys(prefix))

    def update_index(self, build: Callable[[], tuple[dict[str, bytes], list[str]]]) -> None:
        """Put the index objects (the manifest last), then delete the unused ones. Writers take no lock: a
        concurrent writer's manifest can only be older than ``listing``, and is then reconciled by readers."""
        self._check_writable()
        blobs, unused = build()
        for name, data in blobs.items():
            with requests_to(f"{self.location}/{INDEX_FOLDER}/{name}"):
                self._obstore.put(self._store, f"{INDEX_FOLDER}/{name}", data)
        legacy = [LEGACY_INDEX] if self._source.read_whole(LEGACY_INDEX) is not None else []
        self._delete([*(f"{INDEX_FOLDER}/{name}" for name in unused), *legacy])

    def commit(self) -> None:
        """Nothing to do: every case was published by its group document."""

    def close(self) -> None:
        self.closed = True
