"""File locks and positional reads on every platform: Windows has neither ``fcntl`` nor ``os.pread``.

Locks come from portalocker: ``fcntl.flock`` on POSIX (the very lock taken before),
``msvcrt.locking`` on Windows; the operating system drops either when its holder dies.
Where ``os.pread`` is missing, a read seeks and reads under one lock per process, on a
handle whose position no one else uses (:func:`reading_handle`).
"""

from __future__ import annotations

import os
import threading
from typing import IO, Any


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
