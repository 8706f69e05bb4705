"""Whole-case benchmark: every mask of one case in each format — bytes, write, read-all, read-one.

Loads every ``<organ>.nii.gz`` of a case folder once with nibabel (as bool masks,
``np.asanyarray(img.dataobj)`` like medmask_store's importer; Space from
the affine of the first file), then for each format measures bytes on
disk (all files, metadata included), write time (in-memory masks to a closed
file on disk), read-all time (open + every organ's mask) and read-one time
(open + one organ). Formats: the NIfTI folder, medmask's ``.mska`` archive (when
importable), crackle (when importable: one label volume, so overlapping organs
are NOT kept; reported, not counted as a failure), and medmask_store archives
(``.zarr``, ``.zarr.zip``, ``.h5``, ``.msk``) × storage preset. Times are medians of
--repeats runs after one warm-up (time.perf_counter). Every organ is checked
bit-exact once; the script exits 1 if a format that claims losslessness is not.

    python benchmarks/whole_case.py [--case-dir ../shared/data/s0000] [--repeats 5] [--organ iliac_artery_left]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from common import DEFAULT_CASE, RESULTS, disk_bytes, median_ms, package_versions, publish, remove, timed_ms
from spacetransformer import Space

from medmask_store import MaskArchive, StorageSettings
from medmask_store.model.geometry import space_from_nifti_affine

try:
    import medmask
    import medmask.storage
except ImportError:  # optional peer
    medmask = None
try:
    import crackle
except ImportError:  # optional peer
    crackle = None

NIFTI = ".nii.gz"
CASE_ID = "s0000"
PACKAGES = ("medmask_store", "numpy", "nibabel", "zarr", "h5py", "medmask", "crackle-codec")
BACKENDS = (".zarr", ".zarr.zip", ".h5", ".msk")
PRESETS = ("default", "compact")
MEDMASK = "medmask .mska"
CRACKLE = "crackle (label volume, overlaps lost)"
BEST_KB, DEFAULT_KB, WRITE_SPEEDUP, TARGET_CHUNKS = 40.0, 50.0, 10.0, (64, 64, 64)


@dataclass
class LoadedCase:
    """Every mask of a case folder, loaded once."""

    files: dict[str, Path]
    masks: dict[str, np.ndarray]  # bool, nibabel array order
    images: dict[str, Any]  # nibabel images (affine + header, for rewriting)
    space: Space


@dataclass(frozen=True)
class Format:
    label: str
    suffix: str
    write: Callable[[Path], None]
    read_all: Callable[[Path], dict[str, Any]]
    read_one: Callable[[Path], Any]
    size: Callable[[Path], int]
    lossless: bool = True  # False: losses are expected and reported, not a failure
    chunks: Callable[[Path], tuple[int, ...]] | None = None
    preset: str | None = None


@dataclass(frozen=True)
class Result:
    size: int
    files: int
    write_ms: float
    read_all_ms: float
    read_one_ms: float
    inexact: list[str]  # organs not bit-exact
    chunks: tuple[int, ...] | None
    written: int  # bytes of what the write produced (NIfTI: the rewritten folder; others: = size)


def load_case(case_dir: Path) -> LoadedCase:
    files = {p.name.removesuffix(NIFTI): p for p in sorted(case_dir.glob(f"*{NIFTI}"))}
    images = {name: nib.load(path) for name, path in files.items()}
    masks = {name: np.asanyarray(image.dataobj).astype(bool, copy=False) for name, image in images.items()}
    first = next(iter(images.values()))
    return LoadedCase(files, masks, images, space_from_nifti_affine(first.affine, first.shape))


def file_count(path: Path) -> int:
    return 1 if path.is_file() else sum(1 for p in path.rglob("*") if p.is_file())


# -- formats ---------------------------------------------------------------
def nifti_format(case: LoadedCase) -> Format:
    """Bytes and reads: the original files; write: nib.save of every mask into a fresh folder."""

    def write(path: Path) -> None:
        path.mkdir()
        for name, mask in case.masks.items():
            image = case.images[name]
            nib.save(nib.Nifti1Image(mask.view(np.uint8), image.affine, image.header), path / f"{name}{NIFTI}")

    def read_all(path: Path) -> dict[str, np.ndarray]:
        return {name: np.asanyarray(nib.load(file).dataobj) for name, file in case.files.items()}

    def read_one(organ: str) -> Callable[[Path], np.ndarray]:
        return lambda path: np.asanyarray(nib.load(case.files[organ]).dataobj)

    def size(path: Path) -> int:
        return sum(file.stat().st_size for file in case.files.values())

    return Format("NIfTI folder (original files)", "", write, read_all, read_one, size)


def medmask_format(case: LoadedCase) -> Format:
    def write(path: Path) -> None:
        archive = medmask.storage.MaskArchive(str(path), "w")
        for name, mask in case.masks.items():
            archive.add_segmask(medmask.SegmentationMask(mask, {name: 1}, space=case.space), name)

    def read_all(path: Path) -> dict[str, np.ndarray]:
        # each stored array is the organ's bool mask: .data is the mask, no comparison needed
        return {
            name: segmask.data for name, segmask in medmask.storage.MaskArchive(str(path), "r").read_all_masks().items()
        }

    def read_one(organ: str) -> Callable[[Path], np.ndarray]:
        return lambda path: medmask.storage.MaskArchive(str(path), "r").load_segmask(organ).data

    return Format(MEDMASK, ".mska", write, read_all, read_one, disk_bytes)


def crackle_format(case: LoadedCase) -> Format:
    """One uint8/uint16 label volume painted in file order: an organ overlapped by a later one loses voxels."""
    values = {name: value for value, name in enumerate(case.masks, start=1)}
    dtype = np.uint8 if len(values) < 256 else np.uint16

    def write(path: Path) -> None:
        labels = np.zeros(case.space.shape, dtype=dtype, order="F")
        for name, mask in case.masks.items():
            labels[mask] = values[name]
        path.write_bytes(crackle.compress(labels))

    def read_all(path: Path) -> dict[str, np.ndarray]:
        labels = crackle.decompress(path.read_bytes())
        return {name: labels == value for name, value in values.items()}

    def read_one(organ: str) -> Callable[[Path], np.ndarray]:
        return lambda path: crackle.decompress(path.read_bytes(), label=values[organ])

    return Format(CRACKLE, ".ckl", write, read_all, read_one, disk_bytes, lossless=False)


def ours_format(case: LoadedCase, suffix: str, preset: str) -> Format:
    settings = StorageSettings.preset(preset)

    def write(path: Path) -> None:
        with MaskArchive(path, "w", settings=settings) as archive:
            archive.add_case(CASE_ID, case.masks, space=case.space)

    def read_all(path: Path) -> dict[str, np.ndarray]:
        with MaskArchive(path) as archive:
            return archive[CASE_ID].read_organs()

    def read_one(organ: str) -> Callable[[Path], np.ndarray]:
        def read(path: Path) -> np.ndarray:
            with MaskArchive(path) as archive:
                return archive[CASE_ID].read_organ(organ)

        return read

    def chunks(path: Path) -> tuple[int, ...]:
        with MaskArchive(path) as archive:
            return tuple(archive[CASE_ID].stored_labels.chunks)

    return Format(f"ours {suffix} {preset}", suffix, write, read_all, read_one, disk_bytes, True, chunks, preset)


def all_formats(case: LoadedCase, presets: Sequence[str], backends: Sequence[str]) -> list[Format]:
    formats = [nifti_format(case)]
    if medmask is not None:
        formats.append(medmask_format(case))
    if crackle is not None:
        formats.append(crackle_format(case))
    return formats + [ours_format(case, suffix, preset) for suffix in backends for preset in presets]


# -- measuring -------------------------------------------------------------
def inexact_organs(case: LoadedCase, read: dict[str, Any], one: Any, organ: str) -> list[str]:
    """Organs whose read-back differs from the input (a missing organ counts), checking read-one too."""
    bad = [name for name, mask in case.masks.items() if name not in read or not np.array_equal(read[name], mask)]
    bad += [f"{extra} (unexpected)" for extra in set(read) - set(case.masks)]
    if not np.array_equal(one, case.masks[organ]):
        bad.append(f"{organ} (read-one)")
    return bad


def measure(fmt: Format, case: LoadedCase, organ: str, workdir: Path, repeats: int) -> Result:
    """Warm-up + ``repeats`` writes (each to a fresh path); checked reads; ``repeats`` reads of each kind."""
    stem = "".join(c if c.isalnum() else "_" for c in fmt.label)
    paths = [workdir / f"{stem}-{i}{fmt.suffix}" for i in range(repeats + 1)]
    fmt.write(paths[0])
    write_ms = statistics.median(timed_ms(lambda: fmt.write(path)) for path in paths[1:])
    last = paths[-1]
    for path in paths[:-1]:
        remove(path)
    read_one = fmt.read_one(organ)
    inexact = inexact_organs(case, fmt.read_all(last), read_one(last), organ)
    result = Result(
        size=fmt.size(last),
        files=len(case.files) if not fmt.suffix else file_count(last),
        write_ms=write_ms,
        read_all_ms=median_ms(lambda: fmt.read_all(last), repeats),
        read_one_ms=median_ms(lambda: read_one(last), repeats),
        inexact=inexact,
        chunks=fmt.chunks(last) if fmt.chunks else None,
        written=disk_bytes(last),
    )
    remove(last)
    print(f"  measured {fmt.label}", file=sys.stderr)
    return result


# -- report ----------------------------------------------------------------
def ratio(peer: float | None, value: float) -> str:
    if peer is None:
        return "n/a"
    x = peer / value
    return f"{x:.1f}×" if x >= 1 else f"{x:.2g}×"


def exactness(fmt: Format, result: Result, total: int) -> str:
    if not result.inexact:
        return f"all {total}"
    return f"{total - len(result.inexact)} of {total}" + ("" if fmt.lossless else " (expected)")


def results_table(formats: list[Format], results: dict[str, Result], total: int) -> str:
    peer = results.get(MEDMASK)
    lines = [
        "| format | files | KB | write (ms) | read-all (ms) | read-one (ms) | size: medmask / format | "
        "write: medmask / format | read-all: medmask / format | read-one: medmask / format | label chunks | "
        "organs bit-exact |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for fmt in formats:
        r = results[fmt.label]
        chunks = "×".join(map(str, r.chunks)) if r.chunks else ""
        lines.append(
            f"| {fmt.label} | {r.files} | {r.size / 1024:,.1f} | {r.write_ms:,.1f} | {r.read_all_ms:,.1f} | "
            f"{r.read_one_ms:,.2f} | {ratio(peer and peer.size, r.size)} | {ratio(peer and peer.write_ms, r.write_ms)} | "
            f"{ratio(peer and peer.read_all_ms, r.read_all_ms)} | {ratio(peer and peer.read_one_ms, r.read_one_ms)} | "
            f"{chunks} | {exactness(fmt, r, total)} |"
        )
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def size_targets(formats: list[Format], results: dict[str, Result]) -> list[str]:
    lines = []
    for suffix in dict.fromkeys(f.suffix for f in formats if f.preset):
        ours = [f for f in formats if f.preset and f.suffix == suffix]
        best = min(ours, key=lambda f: results[f.label].size)
        r = results[best.label]
        ok = r.size / 1024 <= BEST_KB and r.chunks == TARGET_CHUNKS
        lines.append(
            f"- {verdict(ok)} {suffix}: best preset ({best.preset}) total ≤ {BEST_KB:.0f} KB with 64³ chunks "
            f"({r.size / 1024:.1f} KB, label chunks {r.chunks})"
        )
        default = next((f for f in ours if f.preset == "default"), None)
        if default is not None:
            size = results[default.label].size / 1024
            lines.append(
                f"- {verdict(size <= DEFAULT_KB)} {suffix}: default preset ≤ {DEFAULT_KB:.0f} KB ({size:.1f} KB)"
            )
    return lines


def write_targets(formats: list[Format], results: dict[str, Result]) -> list[str]:
    peer = results.get(MEDMASK)
    lines = []
    for fmt in (f for f in formats if f.preset):
        if peer is None:
            lines.append(
                f"- SKIP {fmt.label}: write ≥ {WRITE_SPEEDUP:.0f}× faster than medmask (medmask not importable)"
            )
            continue
        speedup = peer.write_ms / results[fmt.label].write_ms
        lines.append(
            f"- {verdict(speedup >= WRITE_SPEEDUP)} {fmt.label}: write ≥ {WRITE_SPEEDUP:.0f}× faster than medmask "
            f"({speedup:.1f}×: {results[fmt.label].write_ms:,.0f} vs {peer.write_ms:,.0f} ms)"
        )
    return lines


def report(
    argv: Sequence[str], args: argparse.Namespace, case: LoadedCase, formats: list[Format], results: dict[str, Result]
) -> str:
    rewritten_kb = results[formats[0].label].written / 1024
    total = len(case.masks)
    nonempty = sum(1 for mask in case.masks.values() if mask.any())
    shape = "×".join(map(str, case.space.shape))
    lines = [
        "# Whole case",
        "",
        f"`{shlex.join(['python', 'benchmarks/whole_case.py', *argv])}`",
        "",
        f"Machine: Python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs; "
        f"{datetime.now().astimezone().isoformat(timespec='seconds')}. Packages: {package_versions(PACKAGES)}.",
        "",
        f"Case `{args.case_dir.name}`: {total} masks ({nonempty} non-empty), {shape} voxels. Times: medians of "
        f"{args.repeats} runs after a warm-up; write = in-memory masks to a closed file on disk; read-all = open + "
        f"every organ's mask; read-one = open + `{args.organ}`. Ratios are medmask's number / the format's "
        "(> 1: smaller or faster than medmask).",
        "",
        results_table(formats, results, total),
        "",
        f"- NIfTI: bytes and reads are those of the original files; write = `nib.save` of all {total} masks "
        f"(uint8 view, each file's affine and header) into a fresh folder, which came to {rewritten_kb:,.1f} KB.",
        "- medmask: `MaskArchive(path, 'w')` + `add_segmask(SegmentationMask(mask, {name: 1}, space=space), name)` "
        "per organ; read-all = `read_all_masks()` and each mask's `.data` (the stored bool mask).",
        "- crackle: one label volume painted in file order (organ i → value i), `crackle.compress`; no names, no "
        "geometry in the file; an organ overlapped by a later one loses those voxels, so it is not lossless for "
        "this case. Its write time includes painting the label volume.",
        "- ours: `MaskArchive(path, 'w', settings=StorageSettings.preset(p))` + `add_case(case_id, masks, "
        "space=space)`; KB is every file of the archive (index and metadata included).",
        "",
        "## Targets",
        "",
        *size_targets(formats, results),
        *write_targets(formats, results),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case-dir", type=Path, default=DEFAULT_CASE, help="a folder of <organ>.nii.gz binary masks")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--organ", default="iliac_artery_left", help="the organ of the read-one measurement")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help="StorageSettings presets for our archives")
    parser.add_argument(
        "--backends", nargs="+", default=list(BACKENDS), help="archive suffixes for our archives (also: .msk)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "whole_case.md")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if not (args.case_dir / f"{args.organ}{NIFTI}").is_file():
        parser.error(f"no {args.case_dir / (args.organ + NIFTI)}")
    case = load_case(args.case_dir)
    formats = all_formats(case, args.presets, args.backends)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        results = {fmt.label: measure(fmt, case, args.organ, workdir, args.repeats) for fmt in formats}
    text = report(argv, args, case, formats, results)
    failures = [
        f"{f.label}: {', '.join(results[f.label].inexact)}" for f in formats if f.lossless and results[f.label].inexact
    ]
    if failures:
        text += "\n## Losslessness\n\nNOT bit-exact: " + "; ".join(failures) + "\n"
    publish(text, args.out)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
