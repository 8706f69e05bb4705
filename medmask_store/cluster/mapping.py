"""A function mapped over an archive's cases on a Dask scheduler: one row of results per case."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from medmask_store.cluster.client import require

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

    from medmask_store.storage.archive import MaskArchive
    from medmask_store.storage.case import Case

# The columns every row has; a function's result must not use these names.
CASE_ID, ERROR = "case_id", "error"
RESULT = "result"  # the column of a function that returns a scalar


def map_cases(
    archive: MaskArchive,
    fn: Callable[[Case], Any],
    client: Client | None = None,
    cases: str | Iterable[str] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Run ``fn(case)`` over the archive's cases on Dask: local processes, or ``client``'s cluster.

    ``cases``: all (None), a list of ids, or a query expression (see :meth:`MaskArchive.query`).
    Returns one row per case: ``case_id``, the keys of the dict ``fn`` returned (or ``result`` for
    any other value) and ``error``: None, or ``"ExcType: message"`` if ``fn`` (or opening the case)
    raised; the other cases go on. Tasks carry the archive by path (opened with mode ``"r"``) and
    the case id; ``fn`` must pickle (a lambda does: Dask uses cloudpickle). ``progress``: a progress bar
    on stderr (Dask's).
    """
    dask = require("dask")
    import pandas as pd

    case_ids = archive.case_ids() if cases is None else archive.query(cases) if isinstance(cases, str) else list(cases)
    shared = dask.delayed(archive)  # one key: each distributed worker unpickles (reopens) the archive once
    tasks = [dask.delayed(case_row, pure=False)(fn, shared, case_id) for case_id in case_ids]
    if client is None:
        from dask.diagnostics import ProgressBar

        with ProgressBar(out=sys.stderr) if progress else contextlib.nullcontext():
            rows = dask.compute(*tasks, scheduler="processes")
    else:
        futures = client.compute(tasks)
        if progress:
            from distributed import progress as show_progress

            show_progress(futures)
        rows = client.gather(futures)
    values = dict.fromkeys(key for row in rows for key in row if key not in (CASE_ID, ERROR))
    frame = pd.DataFrame(list(rows), columns=[CASE_ID, *values, ERROR])
    frame[ERROR] = pd.Series([row[ERROR] for row in rows], index=frame.index, dtype=object)  # None, not NaN
    return frame


def case_row(fn: Callable[[Case], Any], archive: MaskArchive, case_id: str) -> dict[str, Any]:
    """One row of :func:`map_cases`: ``fn``'s result for the case, or what it raised as ``error``."""
    try:
        result = fn(archive[case_id])
        values = dict(result) if isinstance(result, Mapping) else {RESULT: result}
        if reserved := sorted({CASE_ID, ERROR} & values.keys()):
            raise ValueError(f"the result uses the reserved column name(s) {', '.join(map(repr, reserved))}")
    except Exception as exc:  # reported in the case's row: one case must not end the run
        return {CASE_ID: case_id, ERROR: f"{type(exc).__name__}: {exc}"}
    return {CASE_ID: case_id, **values, ERROR: None}
