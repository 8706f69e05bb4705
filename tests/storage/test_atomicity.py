"""A writer killed with SIGKILL leaves every case complete or absent, and its staging is cleaned up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_case_matches, kill_writer_when_ready, suffix_of

from medmask_store import MaskArchive, StorageSettings

# Shared by the writer subprocess and the test, so both build the very same masks.
MASKS_SOURCE = r'''
import numpy as np

BIG_SHAPE = (300, 300, 300)


def small_masks():
    rng = np.random.default_rng(1)
    shape = (20, 18, 16)
    a = np.zeros(shape, bool)
    a[2:15, 3:12, 1:14] = True
    b = a & (rng.random(shape) < 0.4)  # overlaps a: goes to a binary layer
    c = np.zeros(shape, bool)
    c[16:20, 0:4, 10:16] = True
    return {"a": a, "b": b, "c": c, "empty": np.zeros(shape, bool)}


def big_masks(n=12):
    """Overlapping boxes in a 300^3 volume: several label-volume organs and binary layers."""
    rng = np.random.default_rng(7)
    masks = {}
    for i in range(n):
        size = rng.integers(60, 150, 3)
        lo = [int(rng.integers(0, s - z)) for s, z in zip(BIG_SHAPE, size)]
        mask = np.zeros(BIG_SHAPE, bool)
        mask[tuple(slice(l, l + int(z)) for l, z in zip(lo, size))] = True
        masks[f"organ_{i:02d}"] = mask
    return masks
'''

WRITER_SOURCE = MASKS_SOURCE + r'''
import sys
from medmask_store import CaseData, MaskArchive, StorageSettings

path = sys.argv[1]
big = CaseData.from_masks(big_masks())  # built before "ready": after it, only the write runs
archive = MaskArchive(path, "a", StorageSettings(chunk_size=32, label_level=3, layer_level=3))
archive.add_case("first", small_masks(), meta={"n": 1})
print("ready", flush=True)
archive.add_case("big", big)
print("done", flush=True)
'''

_masks: dict = {}
exec(MASKS_SOURCE, _masks)
small_masks = _masks["small_masks"]
big_masks = _masks["big_masks"]


def staging_entries_of(archive_path: Path, pid: int) -> list[str]:
    staging = archive_path / ".staging"
    if not staging.is_dir():
        return []
    return sorted(e.name for e in staging.iterdir() if e.name.startswith(f"{pid}@"))


def run_and_kill_writer(archive_path: Path, delay: float) -> int:
    """Start the writer, wait for "ready", sleep ``delay``, SIGKILL it and reap it; return its pid."""
    proc = kill_writer_when_ready(WRITER_SOURCE, archive_path, lambda _: time.sleep(delay))
    assert proc.returncode in (-signal.SIGKILL, 0)
    return proc.pid


@pytest.mark.parametrize("delay", [0.05, 0.3, 1.0])
def test_killed_writer_leaves_complete_or_absent_case(archive_path, delay):
    pid = run_and_kill_writer(archive_path, delay)

    # a reader sees the first case intact and the big case complete or not at all
    with MaskArchive(archive_path, "r") as archive:
        ids = archive.case_ids()
        assert "first" in ids
        assert set(ids) <= {"first", "big"}
        first = archive["first"]
        assert_case_matches(first, small_masks())
        assert first.meta == {"n": 1}
        if "big" in ids:
            assert_case_matches(archive["big"], big_masks())
        else:
            assert "big" not in archive
            assert len(archive) == 1

    # a writer reopening the archive removes what the dead process left in staging
    with MaskArchive(archive_path, "a", StorageSettings(chunk_size=16)) as archive:
        assert archive.case_ids() == ids
        if suffix_of(archive_path) == ".zarr":
            assert staging_entries_of(archive_path, pid) == []
        # and the archive is still fully usable
        extra = {"x": np.ones((3, 4, 5), bool)}
        archive.add_case("after", extra)
        assert archive.case_ids() == sorted([*ids, "after"])
    with MaskArchive(archive_path, "r") as archive:
        assert_case_matches(archive["after"], extra)
        assert_case_matches(archive["first"], small_masks())


# -- Zarr directory: staging clean-up rules, deterministic ------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_zarr_staging_cleanup_rules(archive_path):
    if suffix_of(archive_path) != ".zarr":
        pytest.skip("Zarr directory layout only")
    with MaskArchive(archive_path, "w") as archive:
        archive.add_case("s0", {"a": np.ones((2, 2, 2), bool)})
        archive.add_case("lost", {"a": np.ones((2, 2, 2), bool)})
    host = socket.gethostname()
    dead = _dead_pid()
    staging = archive_path / ".staging"
    staging.mkdir(exist_ok=True)
    # a writer that died between moving "lost" aside and renaming its successor in
    os.rename(archive_path / "cases" / "lost", staging / f"{dead}@{host}@replaced-00000000000000aa@lost")
    names = {
        "dead": f"{dead}@{host}@new-0123456789abcdef@s1",
        "dead_replaced_present": f"{dead}@{host}@replaced-0123456789abcdef@s0",
        "alive": f"{os.getpid()}@{host}@new-0123456789abcdef@s2",
        "other_host": f"{dead}@{host}-elsewhere.invalid@new-0123456789abcdef@s3",
        "foreign": "not-a-staging-name",
    }
    for name in names.values():
        (staging / name).mkdir()
        (staging / name / "zarr.json").write_text("{}")
    # a writer that died while writing an index blob or the listing value: a file
    abandoned_file = f"{dead}@{host}@index-0123456789abcdef@index"
    (staging / abandoned_file).write_bytes(b"half a blob")

    # mode "r" never writes, so it leaves staging alone
    with MaskArchive(archive_path, "r") as archive:
        assert archive.case_ids() == ["s0"]
    assert len(list(staging.iterdir())) == len(names) + 2

    with MaskArchive(archive_path, "a") as archive:
        assert archive.case_ids() == ["lost", "s0"]  # the replaced case is restored
        assert_case_matches(archive["lost"], {"a": np.ones((2, 2, 2), bool)})
    remaining = {e.name for e in staging.iterdir()}
    assert names["dead"] not in remaining
    assert names["dead_replaced_present"] not in remaining and abandoned_file not in remaining
    assert remaining == {names["alive"], names["other_host"], names["foreign"]}


def test_zarr_staging_is_never_listed_as_a_case(archive_path):
    if suffix_of(archive_path) != ".zarr":
        pytest.skip("Zarr directory layout only")
    with MaskArchive(archive_path, "w") as archive:
        archive.add_case("s0", {"a": np.ones((2, 2, 2), bool)})
    # a half-written case in staging (as a killed writer leaves it)
    half = archive_path / ".staging" / f"{os.getpid()}@{socket.gethostname()}@new-feedfacefeedface@s1"
    half.mkdir(parents=True)
    (half / "zarr.json").write_text("{}")
    with MaskArchive(archive_path, "r") as archive:
        assert archive.case_ids() == ["s0"]
        assert len(archive) == 1
