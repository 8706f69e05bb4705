"""File locks, positional reads and folders on every platform: Windows has no ``fcntl``, ``os.pread``,
``O_DIRECTORY`` or ``dir_fd``, and cannot open a folder to sync it.

Locks come from portalocker: ``fcntl.flock`` on POSIX (the very lock taken before),
``msvcrt.locking`` on Windows; the operating system drops either when its holder dies.
Where ``os.pread`` is missing, a read seeks and reads under one lock per process, on a
handle whose position no one else uses (:func:`reading_handle`). Where a folder cannot be
held open (:class:`OpenedFolder`), its files are opened by path.
"""

from __future__ import annotations

import os
import threading
import weakref
from functools import partial
from pathlib import Path
from typing import IO, Any

# Files can be opened relative to a folder held open: a folder replaced after it was opened keeps its files.
FOLDER_DESCRIPTORS = hasattr(os, "O_DIRECTORY") and os.open in os.supports_dir_fd


class OpenedFolder:
    """A folder whose files are opened through it: through a descriptor of the folder where the platform has
    them (the folder's own files, even after its path names another folder), else by path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if FOLDER_DESCRIPTORS:
            descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            weakref.finalize(self, os.close, descriptor)
            self._opener: Any = partial(_open_at, folder=descriptor)
            self._identity = os.fstat(descriptor).st_ino
        else:
            self._opener = None
            self._identity = os.stat(path).st_ino

    def open(self, key: str) -> IO[bytes]:
        """The folder's file ``key``, unbuffered, for reading."""
        if self._opener is None:
            return open(self.path / key, "rb", buffering=0)  # noqa: SIM115 - the caller closes it
        return open(key, "rb", buffering=0, opener=self._opener)  # noqa: SIM115 - the caller closes it

    def moved(self) -> bool:
        """Whether the folder's path now names another folder, or nothing."""
        try:
            return os.stat(self.path).st_ino != self._identity
        except FileNotFoundError:
            return True


def _open_at(path: str, flags: int, folder: int) -> int:
    return os.open(path, flags, dir_fd=folder)


def sync_folder(path: Path) -> None:
    """Make a rename in folder ``path`` durable (fsync of the folder); Windows opens no folder, and needs none."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except PermissionError:  # Windows: a folder cannot be opened; its renames are durable once done
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def lock_exclusively(handle: IO[Any], wait: bool = True) -> bool:
    """Lock an open file exclusively until it is closed; False when ``wait`` is off and another handle holds it."""
    import portalocker  # 0.1 s to import (it reads its version metadata): paid by writers only

    flags = portalocker.LockFlags.EXCLUSIVE
    if not wait:
        flags |= portalocker.LockFlags.NON_BLOCKING
    try:
        portalocker.lock(handle, flags)
    except portalocker.AlreadyLocked:
        return False
    return True


if hasattr(os, "pread"):

    def read_at(handle: IO[bytes], length: int, offset: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` of an unbuffered file; concurrent calls do not disturb each other."""
        return os.pread(handle.fileno(), length, offset)

    def reading_handle(descriptor: int, path: str) -> IO[bytes]:
        """An unbuffered handle for :func:`read_at` on the file open as ``descriptor`` (elsewhere at ``path``)."""
        return os.fdopen(os.dup(descriptor), "rb", buffering=0)

else:
    _seek_then_read = threading.Lock()

    def read_at(handle: IO[bytes], length: int, offset: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` of an unbuffered file; concurrent calls do not disturb each other."""
        with _seek_then_read:
            handle.seek(offset)
            return handle.read(length)

    def reading_handle(descriptor: int, path: str) -> IO[bytes]:
        """An unbuffered handle for :func:`read_at` on the file open as ``descriptor`` (elsewhere at ``path``)."""
        # Opened again, not duplicated: a duplicate shares its position with the descriptor's owner
        # (HDF5 seeks it, and skips the seek when it believes it is already in place).
        return open(path, "rb", buffering=0)  # noqa: SIM115 - the caller closes it
