"""Plan and run the import of many cases into one archive.

Cases are read and encoded in worker processes: ``jobs`` local ones, or the
workers of a Dask cluster (``client``), through the same ``concurrent.futures``
loop. Directory archives (``.zarr``) take concurrent writers, so each worker
stores its own cases; for single-file archives the workers hand encoded cases to
this process, the one writer, which publishes every ``commit_every`` cases. A
case already in the archive is skipped unless ``overwrite`` (a damaged one is
replaced), a bad case is reported with its file and reason while the others go
on, and a worker process that dies (killed, out of memory) costs only the case
it was importing.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medmask_store.concurrency import keep_freed_memory, use_threads, worker_threads
from medmask_store.errors import CorruptArchive, InvalidArchive, InvalidCase
from medmask_store.ingest.worker import CaseResult, WorkerSetup, import_case
from medmask_store.io.labels import LabelSource
from medmask_store.io.sources import CaseSource, discover_cases
from medmask_store.model.case_data import Unmapped
from medmask_store.model.validation import validate_case_id, validate_meta

if TYPE_CHECKING:
    from distributed import Client

    from medmask_store.storage.archive import MaskArchive

Action = Literal["import", "replace", "skip"]
Status = Literal["imported", "replaced", "skipped", "failed"]


@dataclass(frozen=True)
class PlannedCase:
    """One case of an import and what will happen to it (``reason`` says why it is skipped or replaced)."""

    case_id: str
    source: CaseSource
    action: Action
    reason: str = ""


@dataclass(frozen=True)
class ImportPlan:
    """Every case the sources hold, in order, with its action."""

    cases: list[PlannedCase]

    @property
    def to_import(self) -> list[PlannedCase]:
        return [case for case in self.cases if case.action != "skip"]


@dataclass(frozen=True)
class CaseOutcome:
    """What happened to one case."""

    case_id: str
    path: Path
    status: Status
    seconds: float = 0.0
    detail: str = ""  # why it failed, was skipped or replaced


@dataclass
class ImportReport:
    """The outcome of every case of an import, and its duration."""

    outcomes: list[CaseOutcome] = field(default_factory=list)
    seconds: float = 0.0
    jobs: int = 1

    def with_status(self, *statuses: Status) -> list[CaseOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status in statuses]

    @property
    def imported(self) -> list[str]:
        """Ids of the cases stored by this import (new or replaced)."""
        return [outcome.case_id for outcome in self.with_status("imported", "replaced")]

    @property
    def skipped(self) -> list[str]:
        return [outcome.case_id for outcome in self.with_status("skipped")]

    @property
    def failed(self) -> dict[str, str]:
        """Case id -> why it failed (naming the file)."""
        return {outcome.case_id: outcome.detail for outcome in self.with_status("failed")}

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """One line: counts, duration and throughput."""
        stored = len(self.imported)
        rate = f", {stored / self.seconds * 60:.1f} cases/min" if stored and self.seconds else ""
        return (
            f"imported {stored}, skipped {len(self.skipped)} (already in the archive), failed {len(self.failed)} "
            f"in {self.seconds:.1f} s with {self.jobs} job(s){rate}"
        )


def plan_import(
    archive: MaskArchive | None,
    sources: Iterable[str | os.PathLike[str]],
    labels: LabelSource | None = None,
    unmapped: Unmapped = "error",
    overwrite: bool = False,
    case_id: str | None = None,
) -> ImportPlan:
    """The cases ``sources`` hold and what importing them into ``archive`` (None: a new one) does,
    without reading any voxel.

    Cases present and intact are skipped (replaced with ``overwrite``); a present
    case that is damaged is replaced. ``case_id`` renames a single case.
    """
    found = [case for source in sources for case in discover_cases(Path(source), labels, unmapped)]
    if case_id is not None:
        if len(found) != 1:
            raise InvalidCase(f"a case id can only be given for a single case; the sources hold {len(found)}")
        found = [CaseSource(validate_case_id(case_id), found[0].path, found[0].load)]
    seen: dict[str, Path] = {}
    planned = []
    for case in found:
        validate_case_id(case.case_id)
        if case.case_id in seen:
            raise InvalidCase(
                f"case id {case.case_id!r} comes from two sources, {seen[case.case_id]} and {case.path}; "
                "import them separately with --case, or rename one"
            )
        seen[case.case_id] = case.path
        planned.append(_planned(archive, case, overwrite))
    return ImportPlan(planned)


def _planned(archive: MaskArchive | None, case: CaseSource, overwrite: bool) -> PlannedCase:
    if archive is None or case.case_id not in archive:
        return PlannedCase(case.case_id, case, "import")
    if overwrite:
        return PlannedCase(case.case_id, case, "replace", "replaced (--overwrite)")
    try:
        archive[case.case_id]  # opening checks its attributes and the manifests of its arrays
    except (CorruptArchive, InvalidArchive) as exc:
        return PlannedCase(case.case_id, case, "replace", f"replaced a damaged copy ({exc})")
    return PlannedCase(case.case_id, case, "skip", "already in the archive (--overwrite replaces it)")


def import_cases(
    archive: MaskArchive,
    plan: ImportPlan,
    jobs: int | None = None,
    meta: Mapping[str, Any] | None = None,
    commit_every: int = 50,
    on_outcome: Callable[[CaseOutcome], None] = lambda _: None,
    client: Client | None = None,
) -> ImportReport:
    """Run ``plan``: every case to import is read and encoded in one of ``jobs`` processes (default: all cores),
    or with ``client`` (a ``distributed.Client``) on its cluster's workers, one case per worker thread.

    On a cluster the workers must reach the sources and a directory archive at the same paths (a shared
    file system). ``on_outcome`` is called once per case as it ends (skipped cases first).
    """
    started = time.perf_counter()
    todo = plan.to_import
    if client is not None:
        if jobs is not None:
            raise ValueError("pass jobs (local processes) or client (a Dask cluster's workers), not both")
        jobs = max(1, sum(client.nthreads().values()))
    else:
        jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo) or 1))
    report = ImportReport(jobs=jobs)

    def record(outcome: CaseOutcome) -> None:
        report.outcomes.append(outcome)
        on_outcome(outcome)

    for case in plan.cases:
        if case.action == "skip":
            record(CaseOutcome(case.case_id, case.source.path, "skipped", detail=case.reason))
    by_id = {case.case_id: case for case in todo}
    stored_since_commit = 0

    def finish(result: CaseResult) -> None:
        nonlocal stored_since_commit
        case = by_id[result.case_id]
        if result.error is None and result.encoded is not None:
            try:
                archive.write_encoded(case.case_id, result.encoded, overwrite=case.action == "replace")
            except (InvalidCase, CorruptArchive, InvalidArchive) as exc:
                result = CaseResult(case.case_id, result.seconds, error=f"{type(exc).__name__}: {exc}")
        elif result.error is None:
            archive.record_written(case.case_id)  # a worker stored it
        if result.error is not None:
            record(CaseOutcome(case.case_id, case.source.path, "failed", result.seconds, result.error))
            return
        status: Status = "replaced" if case.action == "replace" else "imported"
        record(CaseOutcome(case.case_id, case.source.path, status, result.seconds, case.reason))
        stored_since_commit += 1
        if stored_since_commit >= commit_every:
            archive.commit()
            stored_since_commit = 0

    meta = validate_meta(meta)
    setup = _worker_setup(archive)
    with archive.batch():
        if client is not None:
            client.run(keep_freed_memory)  # as the local pool's initializer does: Dask workers trim freed memory
            with client.get_executor(pure=False) as executor:  # leaving waits for the cases in flight
                _run_on(executor, jobs, setup, meta, finish, todo)
        elif jobs == 1:
            _run_here(replace(setup, directory_archive=None), todo, meta, finish)
        else:
            _run_in_workers(setup, todo, meta, jobs, finish)
    report.seconds = time.perf_counter() - started
    return report


def _worker_setup(archive: MaskArchive) -> WorkerSetup:
    """What the workers need; for a directory archive (concurrent writers) they store their own cases in it."""
    directory = archive.path if archive.concurrent_writers else None
    return WorkerSetup(archive.settings, archive.chunk_encoders, directory, archive.backend)


def _run_here(setup: WorkerSetup, todo: list[PlannedCase], meta: dict[str, Any], finish: Callable[[CaseResult], None]) -> None:
    """One job: import in this process, on one thread (``jobs`` counts the cores an import uses)."""
    previous = worker_threads()
    try:
        for case in todo:
            finish(import_case(setup, case.source, case.case_id, meta, case.action == "replace"))
    finally:
        use_threads(previous)


def _run_in_workers(
    setup: WorkerSetup, todo: list[PlannedCase], meta: dict[str, Any], jobs: int, finish: Callable[[CaseResult], None]
) -> None:
    """``jobs`` worker processes, one case each at a time.

    When a worker dies, the pool breaks and every case in flight is interrupted:
    each is retried alone in a fresh pool, so only the case that kills its
    worker fails, and the rest go on in a new pool. (A Dask scheduler retries
    such a case on other workers itself, then reports it failed.)
    """
    run = partial(_run_pool, setup, meta, finish)
    pending = todo
    while pending:
        pending, interrupted = run(pending, jobs)
        for case in interrupted:
            _, died = run([case], 1)
            if died:
                message = "its worker process died (killed, or out of memory?); the other cases went on"
                finish(CaseResult(case.case_id, 0.0, error=message))


def _run_pool(
    setup: WorkerSetup, meta: dict[str, Any], finish: Callable[[CaseResult], None], cases: list[PlannedCase], width: int
) -> tuple[list[PlannedCase], list[PlannedCase]]:
    """Import ``cases`` on ``width`` worker processes until done or a worker dies: (cases not started, cases in flight then)."""
    # forkserver: workers fork from a clean server process (the parent may hold threads, e.g. zarr's
    # event loop), with the modules they use imported once there rather than once per worker
    # (the chunk codecs and zarr-python are otherwise imported on first use).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["medmask_store.ingest.worker", "medmask_store.codecs.zarr3", "medmask_store.storage.zarr_directory"])
    with ProcessPoolExecutor(width, context, initializer=keep_freed_memory) as pool:
        try:
            return _run_on(pool, width, setup, meta, finish, cases)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _run_on(
    executor: Executor,
    width: int,
    setup: WorkerSetup,
    meta: dict[str, Any],
    finish: Callable[[CaseResult], None],
    cases: list[PlannedCase],
) -> tuple[list[PlannedCase], list[PlannedCase]]:
    """Import ``cases`` on ``executor``, ``width`` at a time, until done or it breaks (a worker process died):
    (cases not started, cases in flight then). A case whose task fails otherwise is reported failed."""
    pending = list(reversed(cases))
    running: dict[Future[CaseResult], PlannedCase] = {}
    while pending or running:
        while pending and len(running) < width:  # as many cases in flight as workers
            case = pending.pop()
            running[executor.submit(import_case, setup, case.source, case.case_id, meta, case.action == "replace")] = case
        done, _ = wait(running, return_when="FIRST_COMPLETED")
        for future in done:
            failure = future.exception()
            if isinstance(failure, BrokenExecutor):
                continue
            case = running.pop(future)
            if failure is None:
                finish(future.result())
            else:  # e.g. Dask's KilledWorker: every worker that tried the case died
                finish(CaseResult(case.case_id, 0.0, error=f"its worker failed: {type(failure).__name__}: {failure}"))
        if any(isinstance(future.exception(), BrokenExecutor) for future in done):
            return list(reversed(pending)), list(running.values())
    return [], []
