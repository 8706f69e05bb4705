"""Copy-on-write editing shared by the single-file backends (HDF5, zipped Zarr).

A writer holds an exclusive lock (``.<archive>.lock`` beside the archive),
edits a private working copy, and publishes it on commit with one atomic
``os.replace``. The archive file is therefore always a complete archive in the
state of its last commit: a writer killed mid-import loses only its uncommitted
cases, and a second writer gets :class:`ArchiveLocked` instead of a corrupt file.
A published file keeps the permission bits of the file it replaces, and an
archive path that is a symbolic link is written through to its target (the
lock and working copy live beside the target, so every link to it shares them).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from medmask_store.errors import ArchiveLocked, InvalidArchive, ReadOnlyArchive
from medmask_store.storage.portable import lock_exclusively, sync_folder


class SingleWriter:
    """What single-file backends share: one writer at a time keeps the index exact (no version
    tokens, no listing version), and ``commit`` publishes a snapshot written by ``_write_snapshot``."""

    concurrent_writers = False
    shared_index_blobs = False
    listing_version_is_exact = True  # the one writer publishes the index with the cases
    path: Path
    read_only: bool
    _editor: SingleFileEditor | None
    _dirty: bool

    if TYPE_CHECKING:

        def case_ids(self) -> list[str]: ...

    def case_tokens(self) -> dict[str, str]:
        return dict.fromkeys(self.case_ids(), "")

    def listing_version(self) -> str:
        return ""

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyArchive(f"{self.path} is open read-only (mode 'r')")

    def commit(self) -> None:
        if self._editor is None or not self._dirty:
            return
        self._editor.publish(self._write_snapshot)
        self._dirty = False

    def _write_snapshot(self, destination: Path) -> None:
        """Write the whole archive, as it should be published, to ``destination``."""
        raise NotImplementedError


class SingleFileEditor:
    """The lock, the working copy and atomic publishing of one single-file archive."""

    def __init__(self, archive: Path, mode: str, working_suffix: str) -> None:
        if mode in ("r+",) and not archive.exists():
            raise InvalidArchive(f"{archive} does not exist; open it with mode 'a' or 'w' to create one")
        if mode == "w-" and archive.exists():
            raise InvalidArchive(f"{archive} already exists; mode 'w-' creates new archives only")
        archive = Path(os.path.realpath(archive))  # a link is written through, never replaced by a file
        self.archive = archive
        self._lock = _acquire_lock(archive.with_name(f".{archive.name}.lock"), archive)
        working_copy = re.compile(rf"\.{re.escape(archive.name)}\.\d+\.working.*")
        for stale in archive.parent.iterdir():
            if working_copy.fullmatch(stale.name):
                _remove(stale)  # we hold the lock, so these belong to dead writers
        self.working = archive.with_name(f".{archive.name}.{os.getpid()}.working{working_suffix}")

    def publish(self, write_snapshot: Callable[[Path], None]) -> None:
        """Write a snapshot with ``write_snapshot(path)`` and atomically make it the archive."""
        snapshot = self.archive.with_name(f".{self.archive.name}.{os.getpid()}.working-snapshot")
        try:
            write_snapshot(snapshot)
            with open(snapshot, "rb+") as handle:
                os.fsync(handle.fileno())
            if self.archive.exists():
                shutil.copymode(self.archive, snapshot)  # e.g. a chmod 600 archive stays 600
            os.replace(snapshot, self.archive)
        finally:
            _remove(snapshot)
        sync_folder(self.archive.parent)

    def close(self) -> None:
        _remove(self.working)
        with contextlib.suppress(PermissionError):  # Windows deletes no open file: the lock file stays, unlocked
            Path(self._lock.name).unlink(missing_ok=True)
        self._lock.close()


def _acquire_lock(lock_path: Path, archive: Path) -> IO[str]:
    while True:
        handle = open(lock_path, "a+")
        if not lock_exclusively(handle, wait=False):
            owner = _lock_owner(handle)
            handle.close()
            raise ArchiveLocked(f"{archive} is being written by {owner}; single-file archives take one writer at a time")
        # The previous holder may have unlinked the lock file between our open and lock.
        if lock_path.exists() and os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino:
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()}")
            handle.flush()
            return handle
        handle.close()


def _lock_owner(handle: IO[str]) -> str:
    """Who holds the lock, as its holder wrote it into the lock file."""
    try:
        handle.seek(0)
        return handle.read().strip() or "another process"
    except OSError:  # Windows: the holder's lock covers the bytes themselves
        return "another process"


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
