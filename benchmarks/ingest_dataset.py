"""Dataset for the whole-dataset ingest benchmark: TotalSegmentator case folders, made in parallel.

Small cases are copies of the real case s0000 (294 × 192 × 179, 117 masks), each
with its own transform shared by all its masks: a shift of a few voxels
(zero-filled), a crop of a few voxels and slices (the affine follows the crop)
and, for about half, a left-right mirror with the left/right class names
swapped (classes without a counterpart, lung_middle_lobe_right, keep their
name). Full-resolution cases are CtPhantom bodies on a 512 × 512 × depth grid.
Every case is written as TotalSegmentator writes its output (117
``<class>.nii.gz``, uint8, one affine) into ``OUTDIR/.partial/`` and moved to
``OUTDIR/<case>`` once complete, so a re-run skips finished cases and redoes
interrupted ones. Case names carry the seed (and depth), so runs with other
settings add cases instead of mistaking them for their own.

    python benchmarks/ingest_dataset.py OUTDIR [--small 40] [--full 4] [--full-depth 450] [--seed 0] [--jobs N]
        [--source ../shared/data/s0000]      (--small 0 writes phantoms only, without the real case)
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import DEFAULT_CASE, disk_bytes
from spacetransformer import Space

from medmask_store.io.nifti import NiftiMaskFolder
from medmask_store.io.totalsegmentator import TOTAL_CLASSES, write_totalsegmentator_folder
from medmask_store.phantom import CtPhantom

PARTIAL = ".partial"
MAX_SHIFT = 6  # voxels, either way, per axis
MAX_CROP = (8, 8, 12)  # voxels cut at each end of each axis, at most
SIDES = {"left": "right", "right": "left"}


@dataclass(frozen=True)
class Variant:
    """How one copy of the real case differs from it: mirrored, shifted (voxels), voxels cropped at each end."""

    mirror: bool
    shift: tuple[int, ...]
    crop: tuple[tuple[int, ...], ...]

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Variant:
        shift = tuple(rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, 3).tolist())
        crop = tuple(tuple(rng.integers(0, most + 1, 2).tolist()) for most in MAX_CROP)
        return cls(bool(rng.random() < 0.5), shift, crop)

    def __str__(self) -> str:
        return f"{'mirrored, ' if self.mirror else ''}shift {self.shift}, crop {self.crop}"


@dataclass(frozen=True)
class Source:
    """The real case, small in memory: each non-empty mask as its bounding box and the mask inside it."""

    space: Space
    crops: dict[str, tuple[tuple[slice, ...], np.ndarray]]


@functools.cache
def load_source(folder: Path) -> Source:
    """Read the real case once per process (workers forked after the first call share it)."""
    masks = NiftiMaskFolder(folder)
    crops = {}
    for name in masks:
        mask = masks[name]
        if mask.any():
            box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
            crops[name] = (box, mask[box].copy())
    return Source(masks.space, crops)


class VariantCase(Mapping[str, np.ndarray]):
    """Class name -> mask of one copy of the real case, transformed when asked (its non-empty classes only)."""

    def __init__(self, source: Source, variant: Variant) -> None:
        self.source, self.variant = source, variant
        self.names = {mirrored_name(name) if variant.mirror else name: name for name in source.crops}
        kept = [(lo, n - hi) for (lo, hi), n in zip(variant.crop, source.space.shape)]
        self.space = source.space.apply_bbox(np.array(kept))
        self.window = tuple(slice(lo, hi) for lo, hi in kept)

    def __getitem__(self, name: str) -> np.ndarray:
        box, crop = self.source.crops[self.names[name]]
        volume = np.zeros(self.source.space.shape, bool)
        volume[box] = crop
        if self.variant.mirror:  # the patient mirrored on the same grid: organs change sides, the affine stays
            volume = volume[::-1]
        return np.asfortranarray(shifted(volume, self.variant.shift)[self.window])  # NIfTI's order: nibabel writes it as is

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def mirrored_name(name: str) -> str:
    """The class on the other side (rib_left_3 -> rib_right_3), or ``name`` if it has no counterpart."""
    swapped = "_".join(SIDES.get(word, word) for word in name.split("_"))
    return swapped if swapped in TOTAL_CLASSES else name


def shifted(volume: np.ndarray, offset: Sequence[int]) -> np.ndarray:
    """``volume`` moved by ``offset`` voxels, filling with False (np.roll would wrap organs round the edges)."""
    out = np.zeros_like(volume)
    source = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, volume.shape))
    target = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, volume.shape))
    out[target] = volume[source]
    return out


@dataclass(frozen=True)
class Job:
    case: str
    seed: tuple[int, int]
    source: Path | None = None  # the real case for a copy; None for a phantom
    depth: int = 0


@dataclass(frozen=True)
class Row:
    case: str
    made_from: str
    shape: tuple[int, ...]
    seconds: float | None  # None: the case was already there
    megabytes: float


def write_case(job: Job, outdir: Path) -> Row:
    """Write one case folder (unless complete already) and describe it."""
    done = outdir / job.case
    if is_complete(done):
        return Row(job.case, "(already written)", (), None, disk_bytes(done) / 1e6)
    start = time.perf_counter()
    masks: Mapping[str, np.ndarray]
    if job.source is None:
        masks = phantom = CtPhantom((512, 512, job.depth), seed=job.seed)
        space, made_from = phantom.space, f"CtPhantom seed {job.seed}"
    else:
        variant = Variant.draw(np.random.default_rng(job.seed))
        masks = case = VariantCase(load_source(job.source), variant)
        space, made_from = case.space, f"{job.source.name}: {variant}"
    partial = outdir / PARTIAL / job.case
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
    write_totalsegmentator_folder(masks, space, partial)
    shutil.rmtree(done, ignore_errors=True)
    partial.rename(done)
    return Row(job.case, made_from, tuple(space.shape), time.perf_counter() - start, disk_bytes(done) / 1e6)


def is_complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / f"{name}.nii.gz").is_file() for name in TOTAL_CLASSES)


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    """Phantoms first: they take longest, so the pool ends with short jobs."""
    phantoms = [Job(f"phantom{args.full_depth}_seed{args.seed}_{i:02d}", (args.seed, i), depth=args.full_depth) for i in range(args.full)]
    copies = [Job(f"{args.source.name}_seed{args.seed}_{i:03d}", (args.seed, i), source=args.source.resolve()) for i in range(args.small)]
    return phantoms + copies


def table(rows: list[Row]) -> str:
    lines = ["| case | made from | shape | seconds | MB |", "|---|---|---|---:|---:|"]
    for row in sorted(rows, key=lambda r: r.case):
        seconds = "skipped" if row.seconds is None else f"{row.seconds:.1f}"
        shape = "×".join(map(str, row.shape))
        lines.append(f"| {row.case} | {row.made_from} | {shape} | {seconds} | {row.megabytes:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path, help="folder to fill with case folders")
    parser.add_argument("--small", type=int, default=40, help="copies of the real case (0: phantoms only)")
    parser.add_argument("--full", type=int, default=4, help="full-resolution phantom cases")
    parser.add_argument("--full-depth", type=int, default=450, help="slices of a phantom case (512 × 512 × depth)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="worker processes (default: cores)")
    parser.add_argument("--source", type=Path, default=DEFAULT_CASE, help="the real case folder (117 .nii.gz)")
    args = parser.parse_args(argv)
    if args.small and not args.source.is_dir():
        parser.error(f"real case not found at {args.source}: pass --source DIR, or --small 0 to write phantoms only")
    if args.small:
        load_source(args.source.resolve())  # fails here on a bad case; forked workers inherit it
    args.outdir.mkdir(parents=True, exist_ok=True)
    rows = []
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(write_case, job, args.outdir) for job in plan_jobs(args)]
        for future in as_completed(futures):
            row = future.result()
            rows.append(row)
            print(f"{row.case}: {'already written' if row.seconds is None else f'written in {row.seconds:.1f} s'}", flush=True)
    shutil.rmtree(args.outdir / PARTIAL, ignore_errors=True)
    written = sum(row.seconds is not None for row in rows)
    print(f"\n{written} case(s) written, {len(rows) - written} already there, in {time.perf_counter() - start:.0f} s "
          f"with {args.jobs} job(s); {sum(r.megabytes for r in rows):.0f} MB in {args.outdir}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
