"""Archives and cases pickle by path: worker processes (spawn or fork) reopen them and read the same voxels."""

from __future__ import annotations

import multiprocessing
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from medmask_store import MaskArchive
from medmask_store.errors import InvalidArchive
from medmask_store.phantom import make_phantom
from medmask_store.storage.case import Case

REGION = (slice(8, 40), slice(4, 36), slice(0, 32))


@pytest.fixture
def stored(archive_path: Path) -> Path:
    with MaskArchive(archive_path, "w") as archive:
        for seed, case_id in enumerate(("ct01", "ct02")):
            masks, space = make_phantom(seed=seed)
            archive.add_case(case_id, masks, space=space)
    return archive_path


def organ_patches(case: Case) -> dict[str, np.ndarray]:
    """What a training worker reads: every organ's mask in a patch, and the label patch."""
    return {"labels": case.read_region(REGION), **{name: case.read_organ(name, REGION) for name in case.organs}}


def read_case_of(archive_and_id: tuple[MaskArchive, str]) -> dict[str, np.ndarray]:
    archive, case_id = archive_and_id
    return organ_patches(archive[case_id])


def assert_same_patches(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_worker_processes_read_through_pickled_archives_and_cases(stored: Path, start_method: str) -> None:
    with MaskArchive(stored) as archive:
        expected = {case_id: organ_patches(archive[case_id]) for case_id in ("ct01", "ct02")}
        with multiprocessing.get_context(start_method).Pool(2) as pool:
            through_archive = pool.map(read_case_of, [(archive, "ct01"), (archive, "ct02")])
            through_cases = pool.map(organ_patches, [archive["ct02"], archive["ct01"]])
    for got, case_id in zip(through_archive, ("ct01", "ct02")):
        assert_same_patches(got, expected[case_id])
    for got, case_id in zip(through_cases, ("ct02", "ct01")):
        assert_same_patches(got, expected[case_id])


def test_an_unpickled_archive_reopens_by_path_after_the_original_is_closed(stored: Path) -> None:
    with MaskArchive(stored) as archive:
        expected = organ_patches(archive["ct01"])
        payload = pickle.dumps(archive["ct01"])
        archive_payload = pickle.dumps(archive)
    assert str(stored).encode() in payload  # the path travels, not a file descriptor or HDF5 handle
    assert_same_patches(organ_patches(pickle.loads(payload)), expected)
    with pickle.loads(archive_payload) as reopened:
        assert reopened.mode == "r"
        assert reopened.case_ids() == ["ct01", "ct02"]


def test_an_unpickled_archive_that_is_never_used_opens_nothing(stored: Path) -> None:
    with MaskArchive(stored) as archive:
        payload = pickle.dumps(archive)
    moved = stored.with_name("moved-" + stored.name)
    stored.rename(moved)
    unused = pickle.loads(payload)  # would fail if unpickling opened the archive
    unused.close()
    with pytest.raises((FileNotFoundError, InvalidArchive), match=re.escape(stored.name)):
        pickle.loads(payload).case_ids()


@pytest.mark.parametrize("mode", ["w", "a"])
def test_archives_open_for_writing_refuse_to_pickle(archive_path: Path, mode: str) -> None:
    with MaskArchive(archive_path, mode) as archive:
        masks, space = make_phantom(seed=0)
        archive.add_case("ct01", masks, space=space)
        with pytest.raises(TypeError, match=r"open for writing \(mode '[wa]'\); only archives opened with mode 'r'"):
            pickle.dumps(archive)
        with pytest.raises(TypeError, match="open for writing"):
            pickle.dumps(archive["ct01"])
