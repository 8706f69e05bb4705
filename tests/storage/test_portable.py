"""Every local backend works where ``fcntl``, ``os.pread`` and folder descriptors do not exist (Windows), simulated
on this machine.

A subprocess (and the import workers it starts) runs with a ``sitecustomize`` that makes
``import fcntl`` fail, deletes ``os.pread`` and ``os.O_DIRECTORY``, refuses to open a
folder (``dir_fd`` included) and to load a C library by ``None`` before medmask_store is imported. Only
portalocker, imported first, keeps its own reference to ``fcntl``: on Windows it locks
with ``msvcrt`` instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SIMULATION = """
import ctypes
import os
import sys

import portalocker  # noqa: F401 - the locking library brings its platform's lock

sys.modules["fcntl"] = None  # import fcntl raises ImportError from now on
del os.pread
del os.O_DIRECTORY  # no folder descriptors: files open by path
os.supports_dir_fd = os.supports_dir_fd - {os.open}
_open = os.open


def open_no_folder(path, flags, mode=0o777, *, dir_fd=None):
    if dir_fd is not None or os.path.isdir(path):  # Windows opens no folder
        raise PermissionError(13, "Permission denied", path)
    return _open(path, flags, mode)


os.open = open_no_folder


class CDLL(ctypes.CDLL):  # Windows loads no C library by None (medmask_store tunes glibc's malloc where it can)
    def __init__(self, name, *args, **kwargs):
        if name is None:
            raise TypeError("expected str, bytes or os.PathLike object, not NoneType")
        super().__init__(name, *args, **kwargs)


ctypes.CDLL = CDLL
"""

ROUND_TRIPS = """
import os
import sys
from pathlib import Path

import numpy as np
from helpers import assert_case_matches, write_case_folder

from medmask_store import MaskArchive
from medmask_store.cli.main import main
from medmask_store.errors import ArchiveLocked
from medmask_store.phantom import make_phantom

try:
    import fcntl  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("fcntl is still importable")
assert not hasattr(os, "pread") and not hasattr(os, "O_DIRECTORY"), "os.pread or os.O_DIRECTORY is still there"
from medmask_store.storage import portable  # noqa: E402

assert not portable.FOLDER_DESCRIPTORS, "folders are still opened by descriptor"

root = Path(sys.argv[1])
masks, space = make_phantom(shape=(70, 60, 50), n_organs=6, n_empty=2, seed=3)
for suffix in [".zarr", ".zarr.zip", ".h5", ".msk"]:
    path = root / f"archive{suffix}"
    with MaskArchive(path, "w") as archive:
        archive.add_case("ct", masks, space=space)
        try:
            MaskArchive(path, "a").close()
        except ArchiveLocked as exc:
            print(suffix, f"second writer in process {os.getpid()}:", exc)
    with MaskArchive(path) as archive:
        assert_case_matches(archive["ct"], masks)
        labels = archive["ct"].read_labels()
    with MaskArchive(path, "a") as archive:  # the file as published: appended to, then read again
        archive.add_case("ct2", masks, space=space)
    with MaskArchive(path) as archive:
        assert archive.case_ids() == ["ct", "ct2"], archive.case_ids()
        for case_id in ["ct", "ct2"]:
            assert_case_matches(archive[case_id], masks)
            assert np.array_equal(archive[case_id].read_labels(), labels)
    print(suffix, "round trip: bit-exact")

sources = {f"case{seed}": write_case_folder(root / "dataset" / f"case{seed}", seed) for seed in (1, 2)}
for suffix in [".zarr"]:  # its import workers write cases and update the index under the lock
    path = root / f"imported{suffix}"
    main(["import", str(path), str(root / "dataset"), "--jobs", "2", "--quiet"], standalone_mode=False)
    with MaskArchive(path) as archive:
        assert archive.case_ids() == sorted(sources), archive.case_ids()
        for case_id, case_masks in sources.items():
            assert_case_matches(archive[case_id], case_masks)
    print(suffix, "import with 2 jobs: bit-exact")
"""


def test_every_local_backend_works_without_fcntl_and_pread(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(SIMULATION)
    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(tests), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", ROUND_TRIPS, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    locked = [line.split(maxsplit=6) for line in lines if "second writer" in line]
    assert [suffix for suffix, *_ in locked] == [".zarr.zip", ".h5", ".msk"]  # .zarr takes concurrent writers
    for suffix, *_, process, message in locked:
        archive = os.path.realpath(tmp_path / f"archive{suffix}")
        pid = process.rstrip(":")
        assert message == f"{archive} is being written by process {pid}; single-file archives take one writer at a time"
    summary = next(line for line in lines if line.startswith("imported"))
    assert summary.startswith("imported 2, skipped 0 (already in the archive), failed 0 in ")
    assert " with 2 job(s), " in summary
    assert [line for line in lines if line.startswith(".") and "second writer" not in line] == [
        ".zarr round trip: bit-exact",
        ".zarr.zip round trip: bit-exact",
        ".h5 round trip: bit-exact",
        ".msk round trip: bit-exact",
        ".zarr import with 2 jobs: bit-exact",
    ]
