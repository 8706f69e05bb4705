"""How many threads one process uses for the work numpy, Zstd and Crackle do without the GIL.

A single ``add_case`` scans masks and encodes chunks on two threads. Import
workers run one case per process and set this to 1 (:func:`use_threads`): the
processes already keep every core busy, and more threads would only contend.
"""

from __future__ import annotations

import os

_threads = min(2, os.cpu_count() or 1)


def worker_threads() -> int:
    """Threads for scanning masks and encoding chunks in this process."""
    return _threads


def use_threads(count: int) -> None:
    """Set :func:`worker_threads` for this process (import workers use 1)."""
    global _threads
    if count < 1:
        raise ValueError(f"thread count must be at least 1, got {count}")
    _threads = count
