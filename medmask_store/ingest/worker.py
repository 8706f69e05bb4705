"""What an import worker does with one case: load it, encode it, and (directory archives) store it.

Workers exchange only plain values with the parent: the import's setup, a case
source in, a case id, counts and, for single-file archives, the
:class:`EncodedCase` out. Chunks are encoded as the target backend stores them,
so the parent only writes bytes. A worker is a process of the import's own pool
or of a Dask cluster, where one process may serve several imports in turn (or at
once, on several threads): each task carries its setup.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmask_store.codecs.chunks import Encoder
from medmask_store.concurrency import use_threads
from medmask_store.errors import MaskStoreError
from medmask_store.io.sources import CaseSource
from medmask_store.storage.layout import EncodedCase, StorageSettings, encode_case

if TYPE_CHECKING:
    from medmask_store.storage.archive import MaskArchive
    from medmask_store.storage.remote import RemoteLocation


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker of one import needs: how to encode, and which directory archive to write to."""

    settings: StorageSettings
    encoders: dict[str, Encoder]
    # The archive's location (its ``path``: a Path, or a URL with its storage options) when workers
    # store their own cases (concurrent writers).
    directory_archive: Path | RemoteLocation | None
    backend: str  # the archive's backend (MaskArchive's ``backend=``)
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


# This process's writers of directory archives, by location and backend: opened by the first case of each.
_writers: dict[tuple[str, str], MaskArchive] = {}
_writers_lock = threading.Lock()


def _writer(setup: WorkerSetup) -> MaskArchive:
    """This process's writer of the setup's directory archive (``"r+"``: one that is absent is an error, never created)."""
    from medmask_store.storage.archive import MaskArchive

    assert setup.directory_archive is not None
    key = (str(setup.directory_archive), setup.backend)
    with _writers_lock:
        if key not in _writers:
            _writers[key] = MaskArchive(setup.directory_archive, "r+", setup.settings, setup.backend)
        return _writers[key]


def import_case(setup: WorkerSetup, source: CaseSource, case_id: str, meta: dict[str, Any], overwrite: bool) -> CaseResult:
    """Load, encode and (directory archives) store one case; a failure becomes ``CaseResult.error``."""
    started = time.perf_counter()
    use_threads(setup.threads)
    try:
        data = source.load()
        data.meta.update(meta)
        encoded = encode_case(data, setup.settings, setup.encoders)
        if setup.directory_archive is not None:
            _writer(setup).write_encoded(case_id, encoded, overwrite)
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
        encoded=None if setup.directory_archive is not None else encoded,
    )
