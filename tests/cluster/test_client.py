"""The optional Dask libraries: a clear error naming the extra when missing; a scheduler that does not answer."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import dask
import pytest
from helpers import run

from medmask_store import MaskArchive, MaskStoreError
from medmask_store.cluster import DaskNotInstalled, SchedulerUnreachable, connect
from medmask_store.phantom import make_phantom


def missing(module: str) -> str:
    return f"Dask support needs {module}, which is not installed: pip install 'medmask_store[dask]'"


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    masks, space = make_phantom(shape=(16, 16, 16), n_organs=2, n_empty=0)
    path = tmp_path / "a.zarr"
    with MaskArchive(path, "w") as stored:
        stored.add_case("ct01", masks, space=space)
    return path


@pytest.mark.parametrize("module", ["dask", "dask.array", "distributed"])
def test_without_dask_every_entry_point_names_the_extra(
    archive: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without the extra imports
    with MaskArchive(archive) as stored:
        entry_points = {
            "dask": lambda: stored.map_cases(len),
            "dask.array": lambda: stored["ct01"].to_dask(),
            "distributed": lambda: connect("tcp://127.0.0.1:8786"),
        }
        with pytest.raises(DaskNotInstalled, match=f"^{re.escape(missing(module))}$"):
            entry_points[module]()
    assert issubclass(DaskNotInstalled, ImportError) and issubclass(DaskNotInstalled, MaskStoreError)
    if module == "dask":  # the CLI prints it on one line
        result = run("map", archive, "builtins:len")
        assert result.exit_code == 1 and result.output == f"Error: DaskNotInstalled: {missing('dask')}\n"


def test_a_scheduler_that_does_not_answer(archive: Path) -> None:
    with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}):
        with pytest.raises(SchedulerUnreachable, match=r"^no Dask scheduler answers at tcp://127\.0\.0\.1:9: "):
            connect("tcp://127.0.0.1:9")
        result = run("map", archive, "builtins:len", "--scheduler", "tcp://127.0.0.1:9")
    assert result.exit_code == 1 and result.output.startswith(
        "Error: SchedulerUnreachable: no Dask scheduler answers at"
    )


def test_no_address_runs_locally() -> None:
    with connect(None) as client:
        assert client is None
