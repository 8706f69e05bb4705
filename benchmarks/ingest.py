"""Dataset import throughput against the floor of decoding its NIfTI files (issue 13).

    python benchmarks/ingest.py DATASET [--backends .zarr,.h5,.zarr.zip,.msk] [--jobs 1,2] [--workdir DIR]

DATASET holds TotalSegmentator case folders (``benchmarks/ingest_dataset.py`` writes
them: copies of s0000 and 512×512×N phantoms); cases are grouped by their voxel
grid. For each group and process count P, interleaved: the **floor** (nibabel
decoding every input file, ``np.asanyarray(nib.load(f).dataobj)``, in P
processes) and ``medmask-store import ARCHIVE CASES... --jobs P --quiet`` per
backend, as a fresh process (wall time, so start-up counts), with the peak RSS
of every process it starts sampled from ``/proc`` (VmHWM). Then the same
import again (a finished import resumed), and medmask 0.1.3 saving the same
decoded masks as one ``.mska`` archive per case, for reference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from common import RESULTS, disk_bytes, package_versions, publish, remove

try:
    import medmask
    import medmask.storage
except ImportError:  # optional peer: pip install -e ".[bench]"
    medmask = None

PACKAGES = ("medmask_store", "numpy", "nibabel", "deflate", "zstandard", "medmask")
TOTALSEGMENTATOR_CASES = 1228
SPEEDUP_TARGET, FLOOR_TARGET, WORKER_RSS_TARGET, RESUME_TARGET = 1.8, 1.25, 1.5 * 2**30, 2.0


@dataclass(frozen=True)
class Group:
    """Case folders of one resolution class (s0000 copies differ by a few voxels of crop)."""

    shapes: list[tuple[int, ...]]
    folders: list[Path]

    @property
    def label(self) -> str:
        low, high = min(self.shapes, key=np.prod), max(self.shapes, key=np.prod)
        shapes = "×".join(map(str, low)) + (f" to {'×'.join(map(str, high))}" if low != high else "")
        return f"{len(self.folders)} cases of {shapes}"


def groups_of(dataset: Path) -> list[Group]:
    """Case folders grouped by voxel count within a factor of 2, smallest first."""
    found = []
    for folder in sorted(p for p in dataset.iterdir() if p.is_dir() and not p.name.startswith(".")):
        first = next(folder.glob("*.nii.gz"), None)
        if first is not None:
            found.append((tuple(nib.load(first).shape), folder))
    groups: list[list[tuple[tuple[int, ...], Path]]] = []
    for shape, folder in sorted(found, key=lambda item: np.prod(item[0])):
        if not groups or np.prod(shape) > 2 * np.prod(groups[-1][0][0]):
            groups.append([])
        groups[-1].append((shape, folder))
    return [Group([s for s, _ in members], sorted(f for _, f in members)) for members in groups]


def decode_case(folder: Path) -> int:
    """Decode every mask of a case as nibabel users do; the voxel count (so nothing is optimized away)."""
    return sum(np.asanyarray(nib.load(path).dataobj).size for path in sorted(folder.glob("*.nii.gz")))


def floor_seconds(folders: list[Path], processes: int) -> float:
    """Wall time to decode every file of ``folders`` in ``processes`` fresh processes (start-up included)."""
    started = time.perf_counter()
    with ProcessPoolExecutor(processes, mp_context=__import__("multiprocessing").get_context("spawn")) as pool:
        sum(pool.map(decode_case, folders))
    return time.perf_counter() - started


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[parent].append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children[todo.pop()]:
            found.append(child)
            todo.append(child)
    return found


def peak_rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Run:
    seconds: float
    main_rss: int  # the medmask-store process
    worker_rss: int  # the largest of the processes it started (0: none)
    summary: str  # its last line
    resumed_seconds: float = 0.0  # the same import run again
    stored_bytes: int = 0


def run_import(archive: Path, folders: list[Path], jobs: int) -> Run:
    """``medmask-store import`` in a fresh process, its peak RSS and that of every process it starts."""
    command = [sys.executable, "-m", "medmask_store", "import", str(archive), *map(str, folders), "--jobs", str(jobs), "--quiet"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid in [process.pid, *descendants(process.pid)]:
                rss = peak_rss(pid)
                if rss is not None:
                    peaks[pid] = max(peaks.get(pid, 0), rss)
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"import failed ({process.returncode}):\n{output}")
    main = peaks.pop(process.pid, 0)
    return Run(seconds, main, max(peaks.values(), default=0), output.strip().splitlines()[-1])


def medmask_save_seconds(folders: list[Path], workdir: Path) -> float | None:
    """Median seconds medmask 0.1.3 takes to save one case's decoded masks as a .mska archive."""
    if medmask is None:
        return None
    from medmask_store.model.geometry import space_from_nifti_affine

    times = []
    for folder in folders:
        files = sorted(folder.glob("*.nii.gz"))
        first = nib.load(files[0])
        space = space_from_nifti_affine(first.affine, first.shape)
        masks = {path.name[: -len(".nii.gz")]: np.asanyarray(nib.load(path).dataobj).astype(bool) for path in files}
        path = workdir / "medmask.mska"
        remove(path)
        started = time.perf_counter()
        archive = medmask.storage.MaskArchive(str(path), "w")
        for name, mask in masks.items():
            archive.add_segmask(medmask.SegmentationMask(mask, {name: 1}, space=space), name)
        times.append(time.perf_counter() - started)
        del masks
    return statistics.median(times)


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="folder of TotalSegmentator case folders (benchmarks/ingest_dataset.py)")
    parser.add_argument("--backends", default=".zarr,.h5,.zarr.zip,.msk")
    parser.add_argument("--jobs", default="1,2", help="process counts to measure")
    parser.add_argument("--groups", default="", help="only these voxel-grid groups (indices, smallest first), e.g. 0")
    parser.add_argument("--medmask-cases", type=int, default=3, help="cases per group medmask saves (0: skip)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ingest_bench"))
    parser.add_argument("--out", type=Path, default=RESULTS / "ingest.md")
    args = parser.parse_args()
    backends = args.backends.split(",")
    job_counts = [int(j) for j in args.jobs.split(",")]
    groups = groups_of(args.dataset)
    if args.groups:
        groups = [groups[int(i)] for i in args.groups.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]

    lines = [
        "# Dataset import",
        "",
        f"`python benchmarks/ingest.py {args.dataset} --backends {args.backends} --jobs {args.jobs}` "
        f"({os.cpu_count()} cores, load average {load:.2f} at the start; {package_versions(PACKAGES)}).",
        "",
        "Floor: nibabel decoding every input file (`np.asanyarray(nib.load(f).dataobj)`) in P fresh processes, "
        "measured before and after the imports of each group (mean). Import: `medmask-store import ARCHIVE CASES... "
        "--jobs P --quiet` in a fresh process (wall time, start-up included). Peak RSS: VmHWM of the command and of "
        "the largest process it starts (its workers).",
        "",
    ]
    checks: list[str] = []
    for group in groups:
        lines += [f"## {group.label}", "", "| backend | jobs | import (s) | cases/min | floor (s) | import / floor | "
                  "peak RSS: command, worker (MiB) | resumed (s) | stored KB/case |", "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
        throughput: dict[tuple[str, int], float] = {}
        for jobs in job_counts:
            before = floor_seconds(group.folders, jobs)
            runs = {}
            for backend in backends:
                archive = args.workdir / f"import{backend}"
                remove(archive)
                runs[backend] = run_import(archive, group.folders, jobs)
                runs[backend].resumed_seconds = run_import(archive, group.folders, jobs).seconds
                runs[backend].stored_bytes = disk_bytes(archive)
            floor = (before + floor_seconds(group.folders, jobs)) / 2
            for backend, run in runs.items():
                cases = len(group.folders)
                throughput[backend, jobs] = cases / run.seconds * 60
                ratio = run.seconds / floor
                lines.append(
                    f"| {backend} | {jobs} | {run.seconds:.1f} | {throughput[backend, jobs]:.1f} | {floor:.1f} | "
                    f"{ratio:.2f} | {run.main_rss / 2**20:.0f}, {run.worker_rss / 2**20:.0f} | {run.resumed_seconds:.2f} | "
                    f"{run.stored_bytes / cases / 1024:.1f} |"
                )
                checks.append(f"- {verdict(ratio <= FLOOR_TARGET)} {group.label}, {backend}, --jobs {jobs}: "
                              f"import {ratio:.2f}× the floor (target ≤ {FLOOR_TARGET})")
                rss = max(run.main_rss if jobs == 1 else 0, run.worker_rss)
                checks.append(f"- {verdict(rss <= WORKER_RSS_TARGET)} {group.label}, {backend}, --jobs {jobs}: "
                              f"peak RSS per worker {rss / 2**20:.0f} MiB (target ≤ {WORKER_RSS_TARGET / 2**20:.0f})")
                if cases >= 40:
                    checks.append(f"- {verdict(run.resumed_seconds <= RESUME_TARGET)} {group.label}, {backend}: "
                                  f"re-running the finished import {run.resumed_seconds:.2f} s (target ≤ {RESUME_TARGET} s)")
        if 1 in job_counts and 2 in job_counts:
            for backend in backends:
                speedup = throughput[backend, 2] / throughput[backend, 1]
                checks.append(f"- {verdict(speedup >= SPEEDUP_TARGET)} {group.label}, {backend}: --jobs 2 "
                              f"{speedup:.2f}× the throughput of --jobs 1 (target ≥ {SPEEDUP_TARGET})")
        best = max(throughput.values())
        lines += ["", f"Projected for {TOTALSEGMENTATOR_CASES:,} TotalSegmentator cases of this size at the best rate "
                  f"({best:.1f} cases/min): {TOTALSEGMENTATOR_CASES / best / 60:.1f} h.", ""]
        if args.medmask_cases:
            saved = medmask_save_seconds(group.folders[: args.medmask_cases], args.workdir)
            if saved is not None:
                lines += [f"medmask 0.1.3 saving one case's decoded masks (.mska, median of {args.medmask_cases}): "
                          f"{saved:.1f} s per case (decoding not included).", ""]
    lines += ["## Targets", "", *checks, ""]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
