"""What an import worker process does with one case: load it, encode it, and (directory archives) store it.

Workers exchange only plain values with the parent: a case source in, a case id,
counts and, for single-file archives, the :class:`EncodedCase` out. Chunks are
encoded as the target backend stores them, so the parent only writes bytes.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmask_store.codecs.chunks import Encoder
from medmask_store.concurrency import keep_freed_memory, use_threads
from medmask_store.errors import MaskStoreError
from medmask_store.io.sources import CaseSource
from medmask_store.storage.backend import Backend
from medmask_store.storage.layout import EncodedCase, StorageSettings, encode_case


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker of one import needs: how to encode, and where directory archives are written."""

    settings: StorageSettings
    encoders: dict[str, Encoder]
    directory_archive: Path | None  # set when workers store their own cases (concurrent writers)
    threads: int = 1


@dataclass(frozen=True)
class CaseResult:
    """One case's outcome in a worker: ``encoded`` for the parent to store, or ``error`` (one line)."""

    case_id: str
    seconds: float
    organs: int = 0
    stored_bytes: int = 0
    encoded: EncodedCase | None = None
    error: str | None = None


_setup: WorkerSetup | None = None
_directory_backend: Backend | None = None


def start_worker(setup: WorkerSetup) -> None:
    """Process initializer: reuse freed memory, then :func:`configure`."""
    keep_freed_memory()
    configure(setup)


def configure(setup: WorkerSetup) -> None:
    """Remember the setup, open a directory archive once, limit threads (also for an import run in-process)."""
    global _setup, _directory_backend
    from medmask_store.storage.zarr_directory import ZarrDirectoryBackend

    _setup = setup
    use_threads(setup.threads)
    if setup.directory_archive is not None:
        _directory_backend = ZarrDirectoryBackend(setup.directory_archive, "r+", setup.settings)


def import_case(source: CaseSource, case_id: str, meta: dict[str, Any], overwrite: bool) -> CaseResult:
    """Load, encode and (directory archives) store one case; a failure becomes ``CaseResult.error``."""
    assert _setup is not None, "start_worker was not called in this process"
    started = time.perf_counter()
    try:
        data = source.load()
        data.meta.update(meta)
        encoded = encode_case(data, _setup.settings, _setup.encoders)
        if _directory_backend is not None:
            _directory_backend.write_case(case_id, encoded, overwrite)
    except MaskStoreError as exc:
        return CaseResult(case_id, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a bug must not end the whole import: report it with where it happened
        where = traceback.extract_tb(exc.__traceback__)[-1]
        detail = f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno}; please report it)"
        return CaseResult(case_id, time.perf_counter() - started, error=f"internal error: {detail}")
    return CaseResult(
        case_id,
        time.perf_counter() - started,
        organs=len(data.mapping),
        stored_bytes=encoded.stored_bytes,
        encoded=None if _directory_backend is not None else encoded,
    )
