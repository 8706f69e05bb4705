"""Zarr v3 directory-store backend.

Layout::

    archive.zarr/
      zarr.json                      root group; attributes name the format
      cases/zarr.json
      cases/<case_id>/zarr.json      case attributes (Space, mapping, stats, meta)
      cases/<case_id>/label_volume/  uint8|uint16, one shard of 64^3 Zstd chunks
      cases/<case_id>/binary_layers/ bool (layer, i, j, k), one shard of
                                     (1, 64, 64, 64) PackBits+Zstd chunks
      index/manifest                 the query index: its manifest, and one blob per column
      index/<segment>/<column>       of each segment (medmask_store.query.index)
      .staging/                      cases being written (not part of the archive)

Every inner chunk carries a crc32c checksum; empty chunks are not stored.  A
case is written under ``.staging/`` and renamed into ``cases/`` in one
``rename`` call, so a killed writer leaves it absent, never half-listed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

from medmask_store.errors import CaseExists, CaseNotFound, InvalidArchive
from medmask_store.storage.layout import CASES_GROUP, INDEX_FOLDER, LEGACY_INDEX, EncodedCase, StorageSettings
from medmask_store.storage.portable import lock_exclusively
from medmask_store.storage.zarr_store import (
    FolderBytes,
    ZarrCaseReader,
    check_archive_root,
    create_archive_root,
    write_case_group,
)

STAGING = ".staging"
LISTING = ".listing"  # a new random value after every add, replace and delete: the listing version


class ZarrDirectoryBackend(ZarrCaseReader):
    """Cases as Zarr v3 groups under ``<path>/cases``; each case committed by one rename."""

    concurrent_writers = True
    listing_version_is_exact = True  # every writer rewrites LISTING after each change

    def __init__(self, path: Path, mode: str, settings: StorageSettings) -> None:
        self.path = path
        self.read_only = mode == "r"
        self.closed = False
        self.settings = settings
        if path.exists() and not path.is_dir():
            raise InvalidArchive(f"{path} is a file, not a Zarr directory archive")
        exists = (path / "zarr.json").exists()
        if mode in ("r", "r+") and not exists:
            raise InvalidArchive(f"{path} is not a medmask_store archive (no zarr.json); open it with mode 'a' or 'w' to create one")
        if mode == "w-" and path.exists():
            raise InvalidArchive(f"{path} already exists; mode 'w-' creates new archives only")
        replaced = None
        if mode == "w" and exists:
            check_archive_root(FolderBytes(path, str(path)), path)  # replace archives only, never other folders
            replaced = path.with_name(f".{path.name}.{os.getpid()}.replaced")
            os.rename(path, replaced)  # then the new root is renamed in: a killed writer leaves one or the other
            exists = False
        if not exists:
            if path.exists() and any(path.iterdir()):
                raise InvalidArchive(f"{path} exists and is not a medmask_store archive; refusing to write into it")
            _create_atomically(path)
        if replaced is not None:
            shutil.rmtree(replaced)
        source = FolderBytes(path, str(path))
        check_archive_root(source, path)
        super().__init__(source, path)
        if not self.read_only:
            self._remove_abandoned_staging()
            if not (path / LISTING).exists():  # an archive of an earlier release, or a new one
                self._bump_listing()

    def _case_dir(self, case_id: str) -> Path:
        return self.path / CASES_GROUP / case_id

    def _case_source(self, case_id: str) -> FolderBytes:
        try:
            return FolderBytes(self._case_dir(case_id), f"{self.path}: case {case_id!r}")
        except (FileNotFoundError, NotADirectoryError):
            raise CaseNotFound(f"no case {case_id!r} in {self.path}") from None

    def case_ids(self) -> list[str]:
        with os.scandir(self.path / CASES_GROUP) as entries:
            return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))

    def case_tokens(self) -> dict[str, str]:
        """Inode and change time of each case folder: a rewrite renames in a new folder."""
        with os.scandir(self.path / CASES_GROUP) as entries:
            return {
                e.name: f"{e.inode()}-{e.stat().st_ctime_ns}"
                for e in entries
                if e.is_dir() and not e.name.startswith(".")
            }

    def listing_version(self) -> str:
        """The value of ``.listing``, which every add, replace and delete rewrites after renaming its case."""
        try:
            return (self.path / LISTING).read_text()
        except FileNotFoundError:  # never opened for writing by this release: every query lists the cases
            return ""

    def _bump_listing(self) -> None:
        temporary = self._staging_path("listing", "listing")
        temporary.parent.mkdir(exist_ok=True)
        temporary.write_text(uuid.uuid4().hex)
        os.replace(temporary, self.path / LISTING)

    def index_blob_names(self) -> list[str]:
        folder = self.path / INDEX_FOLDER
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []

    def update_index(self, build: Callable[[], tuple[dict[str, bytes], list[str]]]) -> None:
        """Write the index blobs under an exclusive lock, each by atomic rename (the manifest last), then
        delete the unused ones."""
        with open(self.path / ".index.lock", "a") as lock:
            lock_exclusively(lock)
            blobs, unused = build()
            folder = self.path / INDEX_FOLDER
            for name, data in blobs.items():
                temporary = self._staging_path("index", "index")
                temporary.parent.mkdir(exist_ok=True)
                temporary.write_bytes(data)
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(temporary, folder / name)
            for name in unused:
                (folder / name).unlink(missing_ok=True)
            for segment in {(folder / name).parent for name in unused} - {folder}:
                with contextlib.suppress(OSError):  # still holding blobs: a concurrent writer's
                    segment.rmdir()
            (self.path / LEGACY_INDEX).unlink(missing_ok=True)

    def write_case(self, case_id: str, case: EncodedCase, overwrite: bool) -> None:
        staging = self._staging_path("new", case_id)
        staging.mkdir(parents=True)
        try:
            write_case_group(staging, case)
            self._commit_case(staging, case_id, overwrite)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _commit_case(self, staging: Path, case_id: str, overwrite: bool) -> None:
        target = self._case_dir(case_id)
        replaced = None
        if target.exists():
            if not overwrite:
                raise CaseExists(f"case {case_id!r} already exists in {self.path}; pass overwrite=True to replace it")
            replaced = self._staging_path("replaced", case_id)
            os.rename(target, replaced)
        try:
            os.rename(staging, target)
        except OSError as exc:
            raise CaseExists(f"case {case_id!r} was written concurrently by another process") from exc
        self._bump_listing()
        if replaced is not None:
            remove_tree(replaced)

    def delete_case(self, case_id: str) -> None:
        target = self._case_dir(case_id)
        if not target.exists():
            raise CaseNotFound(f"no case {case_id!r} in {self.path}")
        trash = self._staging_path("deleted", case_id)
        trash.parent.mkdir(exist_ok=True)
        os.rename(target, trash)
        self._bump_listing()
        remove_tree(trash)

    def commit(self) -> None:
        """Nothing to do: every case was committed by its rename."""

    def _staging_path(self, purpose: str, case_id: str) -> Path:
        """A unique folder recording the owning process, host, purpose and case."""
        return self.path / STAGING / f"{os.getpid()}@{socket.gethostname()}@{purpose}-{uuid.uuid4().hex}@{case_id}"

    def _remove_abandoned_staging(self) -> None:
        """Clean up after writers on this host that died mid-write.

        A case being replaced is moved aside before its successor is renamed in;
        if the writer died between the two renames the old case is restored,
        so an overwrite leaves the old or the new case, never neither.
        """
        staging_root = self.path / STAGING
        if not staging_root.exists():
            return
        host = socket.gethostname()
        for entry in staging_root.iterdir():
            parts = entry.name.split("@", 3)
            if len(parts) != 4 or parts[1] != host or not parts[0].isdigit() or process_alive(int(parts[0])):
                continue
            purpose, case_id = parts[2].split("-")[0], parts[3]
            if purpose == "replaced" and not self._case_dir(case_id).exists():
                os.rename(entry, self._case_dir(case_id))
            else:
                remove_tree(entry)

    def close(self) -> None:
        self.closed = True


def _create_atomically(path: Path) -> None:
    """Create an empty archive at ``path`` (absent or an empty folder) by renaming a complete one into place,
    so a writer killed while creating it never leaves a folder that is not an archive."""
    creating = path.with_name(f".{path.name}.{os.getpid()}.creating")
    remove_tree(creating)
    creating.mkdir(parents=True)
    try:
        create_archive_root(creating)
        os.rename(creating, path)  # replaces an empty folder
    except OSError:
        if not (path / "zarr.json").exists():  # not another writer creating the same archive meanwhile
            raise
    finally:
        remove_tree(creating)


def remove_tree(path: Path) -> None:
    """Remove a folder (or a file: an abandoned index blob or listing value), or only the link where a case
    folder is a symbolic link (never its target)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
