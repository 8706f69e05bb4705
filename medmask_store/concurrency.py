"""Per-process tuning: threads for the work numpy, Zstd and Crackle do without the GIL; memory reuse.

A single ``add_case`` scans masks and encodes chunks on two threads. Import
workers run one case per process and set this to 1 (:func:`use_threads`): the
processes already keep every core busy, and more threads would only contend.
"""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

# glibc's mallopt parameters, and the values an import sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MAX_HEAP_ALLOCATION = 2**30
KEEP_FREED_BYTES = 2**31 - 1

_threads = min(2, os.cpu_count() or 1)


def worker_threads() -> int:
    """Threads for scanning masks and encoding chunks in this process."""
    return _threads


def thread_pool() -> ThreadPoolExecutor:
    """A pool of :func:`worker_threads` threads (``concurrent.futures`` loads on first use: the CLI starts without it)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(worker_threads())


def use_threads(count: int) -> None:
    """Set :func:`worker_threads` for this process (import workers use 1)."""
    global _threads
    if count < 1:
        raise ValueError(f"thread count must be at least 1, got {count}")
    _threads = count


def keep_freed_memory() -> None:
    """Have glibc serve large allocations from the heap and keep freed memory for reuse (elsewhere: nothing).

    An import decodes one same-sized volume after another. By default glibc maps
    every allocation above 32 MiB afresh and the kernel zero-fills each page on
    first touch: two thirds of inflating a 512×512×450 mask (100 ms, 36 ms when
    the buffer is reused). Import worker processes and the CLI call this; the
    freed memory stays with the process until it exits, so peak RSS is unchanged.
    """
    try:
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library the interpreter runs on
    except (OSError, TypeError):  # Windows: no process-wide C library to load by None
        return
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MAX_HEAP_ALLOCATION)
        mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)
