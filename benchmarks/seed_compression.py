"""Seed compression benchmark: the seed's NIfTI vs NPZ vs MedMask tables, with peers and ours.

Reproduces the benchmark of the project's seed document on a TotalSegmentator-style
case folder: Table 1 (six binary masks), Table 2 (three multi-label groups, built
as the seed builds ``multi``) and Section 4 (PackBits + Zstandard sizes of one
mask). Formats: NIfTI, NPZ, medmask 0.1.3 and crackle (each when importable), and
medmask_store: the ``SegmentationMask`` single file (``.msk``) and every archive
backend (``.zarr``, ``.zarr.zip``, ``.h5``) × storage preset. Sizes are bytes on
disk (a directory archive: all its files) in KB = 1024 B; encode and decode
times are medians of --repeats runs after one warm-up (time.perf_counter). Every
round trip is checked bit-exact once; the script exits 1 if any is not.

    python benchmarks/seed_compression.py [--case-dir ../shared/data/s0000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gzip
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

import matplotlib
import nibabel as nib
import numpy as np
import zstandard
from common import DEFAULT_CASE, RESULTS, disk_bytes, package_versions, publish, remove, timed_ms
from spacetransformer import Space

from medmask_store import MaskArchive, PackBitsZstd, SegmentationMask, StorageSettings
from medmask_store.model.geometry import space_from_nifti_affine

try:
    import medmask
except ImportError:  # optional peer
    medmask = None
try:
    import crackle
except ImportError:  # optional peer
    crackle = None

NIFTI = ".nii.gz"
PACKAGES = ("medmask_store", "numpy", "nibabel", "zstandard", "medmask", "crackle-codec")
SEED_BINARY = (
    "gluteus_maximus_right",
    "urinary_bladder",
    "colon",
    "iliopsoas_left",
    "iliac_artery_left",
    "small_bowel",
)
SEED_GROUPS = {
    "Gluteus muscles": ("gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right"),
    "Femur + Hip": ("femur_left", "femur_right", "hip_left", "hip_right"),
    "Pelvic organs": ("urinary_bladder", "colon", "small_bowel"),
}
BACKENDS = (".zarr", ".zarr.zip", ".h5")
PRESETS = ("default", "compact")
OURS = "ours .msk"
OURS_COMPACT = "ours .msk compact"
CHART_FORMATS = ("NIfTI", "NPZ", "medmask", "crackle", OURS, OURS_COMPACT)  # + "ours .zarr <preset>" for each preset

Decoded = np.ndarray | dict[str, np.ndarray]


@dataclass
class Row:
    """One table row: a mask (Table 1) or a multi-label group (Table 2), as the seed builds it."""

    name: str
    data: np.ndarray  # uint8
    mapping: dict[str, int]
    space: Space
    affine: np.ndarray
    original: Path | None  # the NIfTI file itself (Table 1); None: nib.save of ``data`` (Table 2)
    missing: tuple[str, ...] = ()

    @property
    def nonzero(self) -> int:
        return int(np.count_nonzero(self.data))


@dataclass(frozen=True)
class Format:
    """How one format encodes a row to ``path``, decodes it, and how big it is."""

    label: str
    suffix: str
    encode: Callable[[Row, Path], None]
    decode: Callable[[Row, Path], Decoded]
    size: Callable[[Row, Path], int]


@dataclass(frozen=True)
class Result:
    size: int  # bytes
    encode_ms: float
    decode_ms: float
    lossless: bool


Table = dict[str, dict[str, Result]]  # row name -> format label -> result


# -- formats ---------------------------------------------------------------
def file_size(row: Row, path: Path) -> int:
    return disk_bytes(path)


def nifti_size(row: Row, path: Path) -> int:
    return row.original.stat().st_size if row.original else disk_bytes(path)


def nifti_encode(row: Row, path: Path) -> None:
    nib.save(nib.Nifti1Image(row.data, row.affine), path)


def nifti_decode(row: Row, path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(row.original or path).dataobj)


def npz_encode(row: Row, path: Path) -> None:
    np.savez_compressed(path, mask=row.data)


def npz_decode(row: Row, path: Path) -> np.ndarray:
    with np.load(path) as npz:
        return npz["mask"]


def medmask_encode(row: Row, path: Path) -> None:
    medmask.SegmentationMask(row.data, row.mapping, space=row.space).save(str(path))


def medmask_decode(row: Row, path: Path) -> dict[str, np.ndarray]:
    loaded = medmask.SegmentationMask.load(str(path))
    return {name: loaded.get_binary_mask_by_names(name) for name in row.mapping}


def crackle_encode(row: Row, path: Path) -> None:
    path.write_bytes(crackle.compress(row.data))


def crackle_decode(row: Row, path: Path) -> np.ndarray:
    return crackle.decompress(path.read_bytes())


def ours_encode(row: Row, path: Path) -> None:
    SegmentationMask(row.data, row.mapping, space=row.space).save(str(path))


def ours_compact_encode(row: Row, path: Path) -> None:
    SegmentationMask(row.data, row.mapping, space=row.space).save(str(path), preset="compact")


def ours_decode(row: Row, path: Path) -> dict[str, np.ndarray]:
    loaded = SegmentationMask.load(str(path))
    return {name: loaded.get_binary_mask_by_names(name) for name in row.mapping}


def archive_format(suffix: str, preset: str) -> Format:
    settings = StorageSettings.preset(preset)

    def encode(row: Row, path: Path) -> None:
        with MaskArchive(path, "w", settings=settings) as archive:
            archive.add_case("mask", row.data, mapping=row.mapping, space=row.space)

    def decode(row: Row, path: Path) -> dict[str, np.ndarray]:
        with MaskArchive(path) as archive:
            case = archive["mask"]
            return {name: case.read_organ(name) for name in row.mapping}

    return Format(f"ours {suffix} {preset}", suffix, encode, decode, file_size)


def all_formats(presets: Sequence[str], backends: Sequence[str]) -> list[Format]:
    formats = [
        Format("NIfTI", NIFTI, nifti_encode, nifti_decode, nifti_size),
        Format("NPZ", ".npz", npz_encode, npz_decode, file_size),
    ]
    if medmask is not None:
        formats.append(Format("medmask", ".msk", medmask_encode, medmask_decode, file_size))
    if crackle is not None:
        formats.append(Format("crackle", ".ckl", crackle_encode, crackle_decode, file_size))
    formats.append(Format(OURS, ".msk", ours_encode, ours_decode, file_size))
    formats.append(Format(OURS_COMPACT, ".msk", ours_compact_encode, ours_decode, file_size))
    formats += [archive_format(suffix, preset) for suffix in backends for preset in presets]
    return formats


# -- measuring -------------------------------------------------------------
def is_lossless(row: Row, decoded: Decoded) -> bool:
    if isinstance(decoded, dict):
        return set(decoded) == set(row.mapping) and all(
            np.array_equal(decoded[name], row.data == value) for name, value in row.mapping.items()
        )
    return decoded.shape == row.data.shape and np.array_equal(decoded, row.data)


def measure(fmt: Format, row: Row, workdir: Path, repeats: int) -> Result:
    """Warm-up + ``repeats`` encodes (each to a fresh path), then a checked decode + ``repeats`` decodes."""
    stem = "".join(c if c.isalnum() else "_" for c in f"{fmt.label}-{row.name}")
    paths = [workdir / f"{stem}-{i}{fmt.suffix}" for i in range(repeats + 1)]
    fmt.encode(row, paths[0])
    encode_ms = [timed_ms(lambda: fmt.encode(row, path)) for path in paths[1:]]
    last = paths[-1]
    for path in paths[:-1]:
        remove(path)
    lossless = is_lossless(row, fmt.decode(row, last))
    decode_ms = [timed_ms(lambda: fmt.decode(row, last)) for _ in range(repeats)]
    size = fmt.size(row, last)
    remove(last)
    return Result(size, statistics.median(encode_ms), statistics.median(decode_ms), lossless)


def measure_table(rows: list[Row], formats: list[Format], workdir: Path, repeats: int) -> Table:
    table: Table = {}
    for row in rows:
        table[row.name] = {fmt.label: measure(fmt, row, workdir, repeats) for fmt in formats}
        print(f"  measured {row.name}", file=sys.stderr)
    return table


# -- data, as the seed builds it -----------------------------------------------
def organ_path(case_dir: Path, organ: str) -> Path:
    return case_dir / f"{organ.removesuffix(NIFTI)}{NIFTI}"


def binary_row(case_dir: Path, organ: str) -> Row:
    path = organ_path(case_dir, organ)
    nii: Any = nib.load(path)
    data = nii.get_fdata().astype(np.uint8)
    name = organ.removesuffix(NIFTI)
    return Row(name, data, {name: 1}, space_from_nifti_affine(nii.affine, nii.shape), nii.affine, path)


def group_row(case_dir: Path, group: str, organs: Sequence[str]) -> Row:
    first: Any = nib.load(organ_path(case_dir, organs[0]))
    multi = np.zeros(first.shape, dtype=np.uint8)
    mapping: dict[str, int] = {}
    missing = []
    for idx, organ in enumerate(organs, start=1):
        path = organ_path(case_dir, organ)
        if not path.exists():  # the seed skips missing files
            missing.append(organ)
            continue
        data = nib.load(path).get_fdata().astype(np.uint8)
        multi[data > 0] = idx
        mapping[organ.removesuffix(NIFTI)] = idx
    return Row(group, multi, mapping, space_from_nifti_affine(first.affine, first.shape), first.affine, None, tuple(missing))


def nonempty_masks(case_dir: Path) -> tuple[list[str], int]:
    """The non-empty masks of the folder (derived from the voxels), and how many masks there are."""
    files = sorted(case_dir.glob(f"*{NIFTI}"))
    names = [p.name.removesuffix(NIFTI) for p in files if np.asanyarray(nib.load(p).dataobj).any()]
    return names, len(files)


def section4(case_dir: Path, organ: str) -> tuple[list[tuple[str, int]], bool]:
    """The seed's Section 4 sizes (zstd at its default level), plus our codec at its default level."""
    data = nib.load(organ_path(case_dir, organ)).get_fdata() > 0
    raw = data.tobytes()
    packbits = np.packbits(data).tobytes()
    codec = PackBitsZstd()
    ours = codec.encode(data)
    lossless = np.array_equal(codec.decode(ours), data.reshape(-1))
    sizes = [
        ("Raw", len(raw)),
        ("PackBits", len(packbits)),
        ("Gzip", len(gzip.compress(raw))),
        ("Zstd", len(zstandard.ZstdCompressor().compress(raw))),
        ("PackBits + Zstd", len(zstandard.ZstdCompressor().compress(packbits))),
        (f"ours: PackBitsZstd(level={codec.level}), 12-byte header included", len(ours)),
    ]
    return sizes, lossless


# -- report ----------------------------------------------------------------
def kb(size: float) -> str:
    return f"{size / 1024:,.1f}"


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


def size_table(kind: str, rows: list[Row], table: Table, labels: list[str]) -> str:
    head = f"| {kind} | Labels | Nonzero voxels | " + " | ".join(f"{label} KB (NIfTI/·)" for label in labels) + " |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(labels)]
    for row in rows:
        res = table[row.name]
        cells = [f"{kb(res[label].size)} ({res['NIfTI'].size / res[label].size:.1f}×)" for label in labels]
        lines.append(f"| {row.name} | {len(row.mapping)} | {row.nonzero:,} | " + " | ".join(cells) + " |")
    mean_sizes = {label: mean([table[r.name][label].size for r in rows]) for label in labels}
    mean_ratios = {
        label: mean([table[r.name]["NIfTI"].size / table[r.name][label].size for r in rows]) for label in labels
    }
    cells = [f"{kb(mean_sizes[label])} (**{mean_ratios[label]:.1f}×**)" for label in labels]
    lines.append(
        f"| **Average** (mean of per-row ratios) | {mean([len(r.mapping) for r in rows]):.1f} | "
        f"{mean([r.nonzero for r in rows]):,.0f} | " + " | ".join(cells) + " |"
    )
    cells = [f"({mean_sizes['NIfTI'] / mean_sizes[label]:.1f}×)" for label in labels]
    lines.append("| Ratio of mean sizes | | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def time_table(kind: str, rows: list[Row], table: Table, labels: list[str], field: str) -> str:
    lines = [f"| {kind} | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for row in rows:
        lines.append(
            f"| {row.name} | " + " | ".join(f"{getattr(table[row.name][label], field):.1f}" for label in labels) + " |"
        )
    averages = [mean([getattr(table[r.name][label], field) for r in rows]) for label in labels]
    lines.append("| **Average** | " + " | ".join(f"{value:.1f}" for value in averages) + " |")
    return "\n".join(lines)


def table_section(title: str, kind: str, rows: list[Row], table: Table, labels: list[str], repeats: int) -> str:
    notes = [f"{row.name}: {', '.join(row.missing)} missing, skipped as the seed does" for row in rows if row.missing]
    return "\n\n".join(
        [
            f"## {title}",
            "Size on disk in KB (1024 B), with the ratio NIfTI size / format size in parentheses.",
            size_table(kind, rows, table, labels),
            "The **Average** row holds the mean of each column; its ratio is the **mean of the per-row ratios** "
            '(this is how medmask\'s "16.1×" on Table 1 is computed). *Ratio of mean sizes* is mean NIfTI size / '
            "mean format size.",
            *notes,
            f"Encode time (ms, median of {repeats}; to a file on disk):",
            time_table(kind, rows, table, labels, "encode_ms"),
            f"Decode time (ms, median of {repeats}; array formats: the array; medmask and ours: every organ's "
            "binary mask, as the seed decodes MedMask):",
            time_table(kind, rows, table, labels, "decode_ms"),
        ]
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def mean_ratio(rows: list[Row], table: Table, label: str) -> float:
    return mean([table[r.name]["NIfTI"].size / table[r.name][label].size for r in rows])


def every_row(rows: list[Row], table: Table, field: str, peer: str) -> tuple[bool, str]:
    """Whether ours ≤ peer on ``field`` on every row, and the rows where it is not."""
    worse = [
        f"{r.name} {getattr(table[r.name][OURS], field):.1f} vs {getattr(table[r.name][peer], field):.1f}"
        for r in rows
        if getattr(table[r.name][OURS], field) > getattr(table[r.name][peer], field)
    ]
    return not worse, "; ".join(worse)


def comparison_line(text: str, tables: list[tuple[str, list[Row], Table]], field: str, peer: str) -> str:
    if not all(peer in table[rows[0].name] for _, rows, table in tables):
        return f"- SKIP {text} ({peer} not importable)"
    outcomes = [(name, *every_row(rows, table, field, peer)) for name, rows, table in tables]
    ok = all(passed for _, passed, _ in outcomes)
    detail = "; ".join(f"{name}: {worse}" for name, passed, worse in outcomes if not passed)
    return f"- {verdict(ok)} {text}" + (f" (not on: {detail})" if detail else "")


def targets(rows1: list[Row], t1: Table, rows2: list[Row], t2: Table) -> str:
    r1, r2 = mean_ratio(rows1, t1, OURS), mean_ratio(rows2, t2, OURS)
    both = [("Table 1", rows1, t1), ("Table 2", rows2, t2)]
    lines = [
        "## Targets",
        "",
        f'"Ours" is the `SegmentationMask` single file (`{OURS}`); times in ms.',
        "",
        f"- {verdict(r1 >= 30)} Table 1 mean per-row ratio NIfTI/ours ≥ 30× ({r1:.1f}×)",
        comparison_line("Table 1 ours size ≤ medmask on every row", both[:1], "size", "medmask"),
        f"- {verdict(r2 >= 7)} Table 2 mean per-row ratio NIfTI/ours ≥ 7× ({r2:.1f}×)",
        f"- (compact preset, `{OURS_COMPACT}`: Table 1 {mean_ratio(rows1, t1, OURS_COMPACT):.1f}×, "
        f"Table 2 {mean_ratio(rows2, t2, OURS_COMPACT):.1f}×)",
        comparison_line("decode time ≤ NPZ on every row (Tables 1 and 2)", both, "decode_ms", "NPZ"),
        comparison_line("decode time ≤ medmask on every row (Tables 1 and 2)", both, "decode_ms", "medmask"),
        comparison_line("Table 2 ours size ≤ medmask on every row", both[1:], "size", "medmask"),
        comparison_line("encode time ≤ medmask on every row (Tables 1 and 2; issue 13)", both, "encode_ms", "medmask"),
    ]
    return "\n".join(lines)


def section4_text(organ: str, sizes: list[tuple[str, int]]) -> str:
    raw = sizes[0][1]
    lines = [
        f"## Section 4: PackBits + Zstandard ({organ})",
        "",
        "As the seed computes them: `data = get_fdata() > 0`, raw = `data.tobytes()`, gzip at its default level, "
        "Zstd at its default level (3); ours is the medmask_store codec at its default level.",
        "",
        "| Encoding | KB | raw / encoding |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {size / 1024:,.2f} | {raw / size:,.0f}× |" for name, size in sizes]
    return "\n".join(lines)


def header(argv: Sequence[str], case_dir: Path, nonempty: list[str], total: int) -> str:
    command = shlex.join(["python", "benchmarks/seed_compression.py", *argv])
    return "\n".join(
        [
            "# Seed compression benchmark",
            "",
            f"`{command}`",
            "",
            f"Machine: Python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs; "
            f"{datetime.now().astimezone().isoformat(timespec='seconds')}. Packages: {package_versions(PACKAGES)}.",
            "",
            f"Case `{case_dir.name}`: {total} masks, {len(nonempty)} non-empty (derived from the voxels): "
            f"{', '.join(nonempty)}.",
            "",
            "Formats: NIfTI (Table 1: the original file's size, decode reads it; encode = `nib.save` of the uint8 "
            "data with the file's affine; Table 2: `nib.save` of the uint8 `multi` with the first file's affine — "
            "the seed used an identity affine), NPZ (`np.savez_compressed`), medmask (`SegmentationMask(...).save`), "
            "crackle (`crackle.compress` bytes written to a file), ours `.msk` (`medmask_store.SegmentationMask"
            "(...).save`), ours archives (`MaskArchive(path, 'w', settings=StorageSettings.preset(p))` + `add_case`; "
            "size = every file of the archive).",
        ]
    )


def chart(path: Path, rows: list[Row], table1_rows: int, tables: Table, archives: Sequence[str]) -> None:
    """Sizes, encode and decode times per row: peers, ours ``.msk`` and ``archives`` (our archive labels)."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    labels = [label for label in (*CHART_FORMATS, *archives) if label in tables[rows[0].name]]
    fig, axes = plt.subplots(3, 1, figsize=(15, 14), constrained_layout=True)
    panels = [
        ("size", "size on disk (KB, log)", 1 / 1024),
        ("encode_ms", "encode (ms, log)", 1.0),
        ("decode_ms", "decode (ms, log)", 1.0),
    ]
    x = np.arange(len(rows))
    width = 0.85 / len(labels)
    colors = plt.get_cmap("tab10").colors
    for ax, (field, ylabel, scale) in zip(axes, panels):
        for i, label in enumerate(labels):
            values = [getattr(tables[r.name][label], field) * scale for r in rows]
            ax.bar(x + (i - (len(labels) - 1) / 2) * width, values, width, label=label, color=colors[i % 10])
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.LogFormatter())
        ax.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.set_ylabel(ylabel)
        ax.set_xticks(x, [r.name.replace("_", " ") for r in rows], rotation=20, ha="right")
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.axvline(table1_rows - 0.5, color="grey", linestyle="--", linewidth=1)
    axes[0].set_title("Seed benchmark: Table 1 (binary masks, left of the dashed line), Table 2 (multi-label groups)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ------------------------------------------------------------------
def parse_groups(values: Sequence[str] | None) -> dict[str, tuple[str, ...]]:
    if not values:
        return dict(SEED_GROUPS)
    groups = {}
    for value in values:
        name, sep, organs = value.partition("=")
        if not sep or not organs:
            raise argparse.ArgumentTypeError(f"--groups takes NAME=organ,organ,...; got {value!r}")
        groups[name] = tuple(o.strip() for o in organs.split(",") if o.strip())
    return groups


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case-dir", type=Path, default=DEFAULT_CASE, help="a folder of <organ>.nii.gz binary masks")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--binary", nargs="+", metavar="ORGAN", default=list(SEED_BINARY), help="Table 1 organs")
    parser.add_argument("--groups", nargs="+", metavar="NAME=ORGAN,ORGAN", help="Table 2 groups (default: the seed's)")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help="StorageSettings presets for our archives")
    parser.add_argument(
        "--backends", nargs="+", default=list(BACKENDS), help="archive suffixes for our archives (also: .msk)"
    )
    parser.add_argument("--section4-organ", default="urinary_bladder")
    parser.add_argument("--out", type=Path, default=RESULTS / "seed_compression.md")
    parser.add_argument("--chart", type=Path, default=RESULTS / "seed_compression.png")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        args.groups = parse_groups(args.groups)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    needed = [*args.binary, args.section4_organ, *(organs[0] for organs in args.groups.values())]
    missing = [organ for organ in needed if not organ_path(args.case_dir, organ).is_file()]
    if missing:
        parser.error(f"no {', '.join(str(organ_path(args.case_dir, o)) for o in missing)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    nonempty, total = nonempty_masks(args.case_dir)
    formats = all_formats(args.presets, args.backends)
    labels = [fmt.label for fmt in formats]
    rows1 = [binary_row(args.case_dir, organ) for organ in args.binary]
    rows2 = [group_row(args.case_dir, name, organs) for name, organs in args.groups.items()]
    with tempfile.TemporaryDirectory() as tmp:
        t1 = measure_table(rows1, formats, Path(tmp), args.repeats)
        t2 = measure_table(rows2, formats, Path(tmp), args.repeats)
    sizes, codec_lossless = section4(args.case_dir, args.section4_organ)
    failures = [
        f"{row} / {label}" for t in (t1, t2) for row, res in t.items() for label, r in res.items() if not r.lossless
    ]
    if not codec_lossless:
        failures.append(f"Section 4 / PackBitsZstd on {args.section4_organ}")
    parts = [
        header(argv, args.case_dir, nonempty, total),
        table_section("Table 1: binary masks", "Mask", rows1, t1, labels, args.repeats),
        table_section("Table 2: multi-label groups", "Group", rows2, t2, labels, args.repeats),
        section4_text(args.section4_organ, sizes),
        targets(rows1, t1, rows2, t2),
        "## Losslessness\n\n"
        + (f"FAILED round trips: {', '.join(failures)}" if failures else "Every round trip above was bit-exact."),
    ]
    report = "\n\n".join(parts) + "\n"
    publish(report, args.out)
    args.chart.parent.mkdir(parents=True, exist_ok=True)
    chart_backend = ".zarr" if ".zarr" in args.backends else args.backends[0]
    archives = [f"ours {chart_backend} {preset}" for preset in args.presets]
    chart(args.chart, rows1 + rows2, len(rows1), {**t1, **t2}, archives)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
