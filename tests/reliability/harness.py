"""Fault injection against every backend, shared by the reliability tests (small, seeded counts) and
``benchmarks/reliability.py`` (full counts).

- **Damage** (:func:`damage_trial`): a random bit flipped, a file truncated, a file or zip member
  deleted. Every case is then read in full and the archive verified; the outcome is *detected*
  (a ``MaskStoreError`` from the read and a problem from ``verify``), *no effect* (every read
  exact and ``verify`` clean: the byte is one nothing reads), *silent wrong* (a read differs from
  the truth without an error), or *other exception*.
- **Killed writers** (:func:`kill_trial`): an import, overwrite, delete or convert in a child
  process, SIGKILLed after a random delay. The archive must open, verify clean, hold every
  committed case bit-exact, lose none, and stay writable.
- **Readers during commits** (:func:`readers_during_commits`): readers in other processes read
  every case while a writer overwrites, deletes and adds cases.

Everything here compares against truth built from seeded phantoms, never against the code under test.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from helpers import chunk_voxels
from spacetransformer import Space

from medmask_store import Case, MaskArchive, MaskStoreError, StorageSettings
from medmask_store.errors import CaseNotFound, CorruptArchive
from medmask_store.phantom import make_phantom
from medmask_store.storage.verify import verify_archive

BACKENDS = (".zarr", ".zarr.zip", ".h5", ".msk")
HERE = Path(__file__).resolve().parent
SHAPE = (40, 36, 30)
# Both label codecs: case seeds below COMPACT_FROM are stored with the default preset, the others compact.
CHUNK_SIZE = 16
SETTINGS = {
    "default": StorageSettings(chunk_size=CHUNK_SIZE, label_level=3, layer_level=3),
    "compact": StorageSettings(chunk_size=CHUNK_SIZE, label_codec="crackle_zstd", label_level=3, layer_level=3),
}
COMPACT_FROM = 1


# -- truth -------------------------------------------------------------------------------------


@cache
def truth(seed: int) -> tuple[dict[str, np.ndarray], Space, dict[str, Any]]:
    """Case ``seed``: phantom masks (overlapping: a binary layer), their Space and metadata."""
    masks, space = make_phantom(shape=SHAPE, n_organs=5, n_empty=1, seed=seed)
    return masks, space, {"age": seed, "site": f"s{seed % 3}"}


def add_truth_case(archive: MaskArchive, case_id: str, seed: int, overwrite: bool = False) -> None:
    masks, space, meta = truth(seed)
    archive.add_case(case_id, masks, space=space, meta=meta, overwrite=overwrite)


def build_archive(path: Path, cases: dict[str, int]) -> None:
    """An archive holding case id -> truth seed, default and compact presets mixed."""
    for case_id, seed in cases.items():
        preset = "compact" if seed >= COMPACT_FROM else "default"
        with MaskArchive(path, "a", SETTINGS[preset]) as archive:
            add_truth_case(archive, case_id, seed)


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.packbits(array.astype(bool)).tobytes() + str(array.shape).encode()).hexdigest()[:16]


def case_view(seed: int) -> dict[str, Any]:
    """What a correct read of case ``seed`` gives (from the truth masks, never from an archive)."""
    masks, space, meta = truth(seed)
    return {
        "space": (tuple(space.shape), tuple(space.origin), tuple(space.spacing)),
        "meta": meta,
        "voxels": {name: int(mask.sum()) for name, mask in masks.items()},
        "organs": {name: digest(mask) for name, mask in masks.items()},
        "chunk_voxels": {name: chunk_voxels(mask, CHUNK_SIZE).tolist() for name, mask in masks.items()},
    }



def read_view(case: Case) -> dict[str, Any]:
    """Everything a user reads of a case: its geometry, metadata, statistics, every organ's voxels and its
    voxels per chunk (what samplers draw from), and the painted label volume; comparable to :func:`case_view`."""
    organs = case.read_organs()
    case.read_labels()  # decodes every chunk, layers painted
    return {
        "space": (tuple(case.space.shape), tuple(case.space.origin), tuple(case.space.spacing)),
        "meta": case.meta,
        "voxels": {name: s.voxels for name, s in case.stats.items()},
        "organs": {name: digest(mask) for name, mask in organs.items()},
        "chunk_voxels": {name: case.organ_chunk_voxels(name).tolist() for name in organs},
    }


def observe(path: Path) -> dict[str, Any]:
    """Every case's :func:`read_view` and a query over the metadata."""
    with MaskArchive(path) as archive:
        cases = {case_id: read_view(archive[case_id]) for case_id in archive.case_ids()}
        matches = archive.query("age >= 0") if cases else []
    return {"cases": cases, "query": matches}


def expected_view(cases: dict[str, int]) -> dict[str, Any]:
    return {"cases": {case_id: case_view(seed) for case_id, seed in sorted(cases.items())}, "query": sorted(cases)}


# -- damage --------------------------------------------------------------------------------------

DAMAGES = ("flip", "truncate", "delete")
OUTCOMES = ("detected", "no effect", "verify only", "missed by verify", "silent wrong", "other exception")


def archive_files(path: Path) -> list[Path]:
    """The files holding the archive (a directory's lock file and staging folder hold none of it)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.relative_to(path).parts[0].startswith("."))


def damage(path: Path, kind: str, rng: random.Random) -> tuple[str, Path | None, int | None]:
    """Damage the archive at ``path`` once; returns where (as text), and for a flip the file (relative to a
    directory archive) and the byte."""
    files = archive_files(path)
    sizes = [f.stat().st_size for f in files]
    if kind == "delete":
        if path.is_dir():
            victim = rng.choice(files)
            victim.unlink()
            return f"deleted {victim.relative_to(path)}", None, None
        with zipfile.ZipFile(path) as zf:
            members = {info.filename: zf.read(info) for info in zf.infolist()}
        victim_name = rng.choice(sorted(members))
        del members[victim_name]
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        return f"deleted member {victim_name}", None, None
    file = rng.choices(files, weights=sizes)[0]
    where = file.name if path.is_file() else str(file.relative_to(path))
    if kind == "truncate":
        length = rng.randrange(file.stat().st_size)
        os.truncate(file, length)
        return f"truncated {where} to {length} bytes", None, None
    position, bit = rng.randrange(file.stat().st_size), rng.randrange(8)
    with open(file, "r+b") as handle:
        handle.seek(position)
        byte = handle.read(1)[0]
        handle.seek(position)
        handle.write(bytes([byte ^ (1 << bit)]))
    return f"flipped bit {bit} of byte {position} of {where}", Path(where) if path.is_dir() else Path(), position


def _read_outcome(path: Path, expected: dict[str, Any]) -> str:
    try:
        seen = observe(path)
    except MaskStoreError:
        return "detected"
    except Exception as exc:  # noqa: BLE001 - counting exceptions that are not ours is the point
        return f"foreign {type(exc).__name__}: {exc}"
    return "correct" if seen == expected else "silent"


def _verify_outcome(path: Path) -> str:
    try:
        with MaskArchive(path) as archive:
            return "reported" if verify_archive(archive) else "clean"
    except MaskStoreError:
        return "reported"  # refusing to open the archive names the problem too
    except Exception as exc:  # noqa: BLE001
        return f"foreign {type(exc).__name__}: {exc}"


def classify(read: str, verify: str) -> str:
    if read.startswith("foreign") or verify.startswith("foreign"):
        return "other exception"
    if read == "silent":
        return "silent wrong"
    if read == "detected":
        return "detected" if verify == "reported" else "missed by verify"
    return "verify only" if verify == "reported" else "no effect"


@dataclass
class DamageResult:
    outcome: str
    where: str
    read: str
    verify: str
    unread: str = ""  # for a flip with no effect: the part of the file no reader parses, if it is one


# Fields of a zip central directory entry that no reader of a stored zip uses: (start, stop, name).
UNREAD_ZIP_FIELDS = ((4, 6, "version made by"), (36, 38, "internal attributes"), (38, 42, "external attributes"))


def unread_part(data: bytes, position: int) -> str:
    """Which part of a file no reader parses holds ``position``: a run of zero bytes an allocator left
    unused (HDF5 free space), or a zip field that only file managers use; "" if it is none of these."""
    if data[position] == 0:
        start, stop = position, position
        while start > 0 and data[start - 1] == 0:
            start -= 1
        while stop < len(data) and data[stop] == 0:
            stop += 1
        if stop - start >= 16:
            return "free space (a run of zero bytes)"
    if data[:4] == b"PK\x03\x04":
        entry = data.rfind(b"PK\x01\x02", 0, position + 1)
        for first, last, name in UNREAD_ZIP_FIELDS:
            if entry >= 0 and entry + first <= position < entry + last:
                return f"zip central directory: {name}"
    return ""


def damage_trial(pristine: Path, work: Path, kind: str, rng: random.Random, expected: dict[str, Any]) -> DamageResult:
    """Copy the pristine archive to ``work``, damage it once, read everything and verify it."""
    _replace(pristine, work)
    where, file, position = damage(work, kind, rng)
    read, verify = _read_outcome(work, expected), _verify_outcome(work)
    unread = ""
    if file is not None and position is not None:
        unread = unread_part((pristine / file if pristine.is_dir() else pristine).read_bytes(), position)
    return DamageResult(classify(read, verify), where, read, verify, unread)


def damage_trials(suffix: str, kind: str, trials: int, seed: int, workdir: Path) -> list[DamageResult]:
    """``trials`` damages of one kind to a two-case archive of one backend."""
    cases = {"c0": 0, "c1": 1}
    pristine = workdir / f"pristine{suffix}"
    if not pristine.exists():
        build_archive(pristine, cases)
    expected = expected_view(cases)
    assert observe(pristine) == expected
    rng = random.Random(f"{seed}-{suffix}-{kind}")
    return [damage_trial(pristine, workdir / f"damaged{suffix}", kind, rng, expected) for _ in range(trials)]


def _replace(source: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)


# -- killed writers --------------------------------------------------------------------------------

OPERATIONS = ("import", "overwrite", "delete", "convert")
BASE_CASES = {"c0": 0, "c1": 1}
IMPORTED = [f"c{i}" for i in range(2, 6)]  # written in this order by the import writer
WRITER = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/.."]  # harness, and the helpers it imports
from harness import run_writer
run_writer(*sys.argv[2:])
"""


def run_writer(operation: str, path: str, source: str = "") -> None:
    """The child process of a kill trial: prints "ready", then runs the operation."""
    if operation == "convert":
        with MaskArchive(source) as archive:
            print("ready", flush=True)
            archive.copy_to(path, settings=SETTINGS["default"])
        return
    with MaskArchive(path, "a", SETTINGS["default"]) as archive:
        print("ready", flush=True)
        if operation == "import":
            for case_id in IMPORTED:
                add_truth_case(archive, case_id, int(case_id[1:]))
        elif operation == "overwrite":
            for case_id, seed in BASE_CASES.items():
                add_truth_case(archive, case_id, 10 + seed, overwrite=True)
        else:
            for case_id in BASE_CASES:
                archive.delete_case(case_id)


def _allowed_states(operation: str) -> list[dict[str, int]]:
    """Every state (case id -> truth seed) the archive may be left in when the writer is killed."""
    base = dict(BASE_CASES)
    if operation == "import":
        return [{**base, **{c: int(c[1:]) for c in IMPORTED[:n]}} for n in range(len(IMPORTED) + 1)]
    if operation == "overwrite":
        return [base, {"c0": 10, "c1": 1}, {"c0": 10, "c1": 11}]
    if operation == "delete":
        return [base, {"c1": 1}, {}]
    return [{}, {"c0": 0}, base]  # convert: the destination, when it exists


@dataclass
class KillResult:
    consistent: bool
    lost_cases: int
    state: str  # the state found ("c0=0,c1=1"), or what was wrong


def kill_trial(suffix: str, operation: str, delay: float, workdir: Path) -> KillResult:
    """Run one operation in a child process, SIGKILL it ``delay`` seconds after it is ready, check the archive."""
    path = workdir / f"killed{suffix}"
    source = workdir / ("source.h5" if suffix == ".zarr" else "source.zarr")
    remove(path)
    for leftover in workdir.glob(f".{path.name}*"):
        remove(leftover)
    if operation == "convert":
        if not source.exists():
            build_archive(source, BASE_CASES)
    else:
        build_archive(path, BASE_CASES)
    run_writer_until(operation, path, source, delay)
    return check_after_kill(path, operation)


def run_writer_until(operation: str, path: Path, source: Path, delay: float) -> float:
    """Run the operation in a child; SIGKILL it ``delay`` seconds after it is ready unless it ended before.
    Returns the seconds it ran after "ready"."""
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(HERE), operation, str(path), str(source)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"writer did not start: {line!r} {child.stderr.read() if child.stderr else ''}")
        start = time.perf_counter()
        try:
            child.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
        return time.perf_counter() - start
    finally:
        child.kill()
        child.communicate()


def check_after_kill(path: Path, operation: str) -> KillResult:
    """The archive a killed writer left: one of the allowed states, read bit-exact, verify clean, writable."""
    states = _allowed_states(operation)
    if operation == "convert" and not _is_archive(path):
        present: dict[str, int] | None = {}  # the destination was never published
    else:
        present = next((state for state in states if _holds(path, state)), None)
    if present is None:
        return KillResult(False, _lost(path, states), "no allowed state matches")
    if _is_archive(path):
        with MaskArchive(path, "a", SETTINGS["default"]) as archive:  # a writer cleans up after the dead one
            if verify_archive(archive):
                return KillResult(False, 0, "verify reports problems")
            add_truth_case(archive, "after", 7)
        if not _holds(path, {**present, "after": 7}):
            return KillResult(False, 0, "not writable afterwards")
    return KillResult(True, 0, ",".join(f"{c}={s}" for c, s in sorted(present.items())) or "empty")


def _lost(path: Path, states: list[dict[str, int]]) -> int:
    """Cases every allowed state keeps that the archive no longer lists (all of them if it cannot be opened)."""
    kept = set.intersection(*(set(state) for state in states))
    try:
        with MaskArchive(path) as archive:
            return len(kept - set(archive.case_ids()))
    except MaskStoreError:
        return len(kept)


def _holds(path: Path, state: dict[str, int]) -> bool:
    try:
        return observe(path) == expected_view(state)
    except MaskStoreError:
        return False


def _is_archive(path: Path) -> bool:
    try:
        MaskArchive(path).close()
    except MaskStoreError:
        return False
    return True


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def calibrate(suffix: str, operation: str, workdir: Path) -> float:
    """Seconds one uninterrupted run of the operation takes after "ready" (kill delays are drawn below it)."""
    kill_trial(suffix, operation, 0.0, workdir)  # sets up the source/archive as a trial does
    path = workdir / f"killed{suffix}"
    remove(path)
    if operation != "convert":
        build_archive(path, BASE_CASES)
    return run_writer_until(operation, path, workdir / ("source.h5" if suffix == ".zarr" else "source.zarr"), 600.0)


# -- readers during commits ------------------------------------------------------------------------

READER = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/.."]  # harness, and the helpers it imports
from harness import read_repeatedly
print(json.dumps(read_repeatedly(sys.argv[2], float(sys.argv[3]))))
"""
CHURN = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/.."]  # harness, and the helpers it imports
from harness import churn
churn(sys.argv[2], float(sys.argv[3]))
"""
VERSIONS = {"c0": (0, 20), "c1": (1,), "c2": (2,), "c3": (3, 23)}


def churn(path: str, seconds: float) -> None:
    """The writer: overwrite c0 and c3 with alternating versions, delete and re-add c3, each committed."""
    end, turn = time.perf_counter() + seconds, 0
    with MaskArchive(path, "a", SETTINGS["default"]) as archive:
        while time.perf_counter() < end:
            turn += 1
            add_truth_case(archive, "c0", VERSIONS["c0"][turn % 2], overwrite=True)
            if "c3" in archive:
                archive.delete_case("c3")
            else:
                add_truth_case(archive, "c3", VERSIONS["c3"][turn % 2])


def read_repeatedly(path: str, seconds: float) -> dict[str, int]:
    """A reader: open the archive, read every case in full, compare with its allowed versions; count outcomes."""
    counts: Counter[str] = Counter()
    views = {c: [case_view(seed) for seed in seeds] for c, seeds in VERSIONS.items()}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        try:
            with MaskArchive(path) as archive:
                for case_id in archive.case_ids():
                    try:
                        view = read_view(archive[case_id])
                    except CaseNotFound:
                        counts["case changed while read (told so)"] += 1
                        continue
                    counts["exact" if view in views[case_id] else "silent wrong"] += 1
        except CorruptArchive as exc:
            counts[f"false corruption: {exc}"] += 1
        except MaskStoreError as exc:
            counts[f"other error: {type(exc).__name__}"] += 1
        except Exception as exc:  # noqa: BLE001
            counts[f"other exception: {type(exc).__name__}: {exc}"] += 1
    return dict(counts)


def readers_during_commits(suffix: str, seconds: float, readers: int, workdir: Path) -> Counter[str]:
    """Counts of reader outcomes while a writer commits in another process."""
    path = workdir / f"busy{suffix}"
    remove(path)
    build_archive(path, {c: seeds[0] for c, seeds in VERSIONS.items()})
    writer = subprocess.Popen([sys.executable, "-c", CHURN, str(HERE), str(path), str(seconds)])
    procs = [
        subprocess.Popen([sys.executable, "-c", READER, str(HERE), str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
        for _ in range(readers)
    ]
    totals: Counter[str] = Counter()
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 120)
        totals.update(json.loads(out))
    writer.wait(timeout=seconds + 120)
    return totals
