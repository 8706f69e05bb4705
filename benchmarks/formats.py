"""Formats benchmark: one case in every format the archive imports from or exports to — bytes, write, read, lossless.

The case (default: the real TotalSegmentator case s0000, 117 organs, overlapping
ones included) is stored once in a medmask_store ``.zarr`` archive; each format is
then written from that opened case with ``export_case`` (the archive's own rows:
``add_case`` of the in-memory case) and read back as an import reads it, into a
``CaseData`` (the archive's rows: open + ``to_case_data``). Bytes: every file
written (metadata included; the DICOM SEG's referenced CT series, written once
before, is not counted). Times: medians of --repeats interleaved rounds after one
warm-up round. Every organ of every read is compared bit-exact with the original
once; "lossless" says whether all 117 were, and the geometry (affine within 1e-5).
OME-Zarr is read by ``load_ome_zarr`` (ome-zarr-py's reader, the organs rebuilt
from its label images).

    pip install -e ".[bench,formats]"
    python benchmarks/formats.py [--case-dir ../shared/data/s0000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import DEFAULT_CASE, RESULTS, disk_bytes, interleaved_median_ms, package_versions, publish, remove

from medmask_store import CaseData, MaskArchive
from medmask_store.io.dicom_seg import load_dicom_seg
from medmask_store.io.formats import export_case
from medmask_store.io.nifti import load_mask_folder, load_multilabel
from medmask_store.io.ome_zarr import load_ome_zarr
from medmask_store.io.slicer import load_seg_nrrd
from medmask_store.model.geometry import lps_affine
from medmask_store.phantom import CtPhantom
from medmask_store.storage.case import Case

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dicom_series import write_ct_series  # noqa: E402

PACKAGES = ("medmask_store", "nibabel", "zarr", "h5py", "slicerio", "pynrrd", "highdicom", "pydicom", "ome-zarr")
PHANTOM_SHAPE = (160, 128, 112)


@dataclass
class Format:
    name: str
    path: Path
    write: Callable[[], object]
    read: Callable[[], CaseData]
    note: str = ""


@dataclass
class Row:
    name: str
    bytes: int
    write_ms: float
    read_ms: float
    lossless: str
    note: str


def compare(original: CaseData, read: CaseData) -> str:
    """ "yes", or what differs: organs missing or not bit-exact, geometry."""
    wrong = [
        name for name in original.mapping
        if name not in read.mapping or not np.array_equal(read.organ_mask(name), original.organ_mask(name))
    ]  # fmt: skip
    problems = (
        [f"{len(wrong)} organ(s) differ ({', '.join(wrong[:3])}{', ...' if len(wrong) > 3 else ''})"] if wrong else []
    )
    if not np.allclose(lps_affine(read.space), lps_affine(original.space), atol=1e-5):
        problems.append("geometry differs")
    return "; ".join(problems) or "yes"


def formats(case: Case, data: CaseData, workdir: Path) -> list[Format]:
    ct_series = workdir / "ct"
    write_ct_series(data.space, ct_series)
    out = {
        name: workdir / name
        for name in ("a.zarr", "a.h5", "nifti", "case.nii.gz", "case.seg.nrrd", "case.dcm", "case.ome.zarr")
    }

    def archive_write(path: Path) -> Callable[[], object]:
        def write() -> None:
            with MaskArchive(path, "w") as archive:
                archive.add_case("case", data)

        return write

    def archive_read(path: Path) -> Callable[[], CaseData]:
        def read() -> CaseData:
            with MaskArchive(path) as archive:
                return archive["case"].to_case_data()

        return read

    def exporting(fmt: str, path: Path, **options: object) -> Callable[[], object]:
        def write() -> None:
            remove(path)
            if path.suffix == ".gz":
                remove(path.with_name("case.json"))
            export_case(case, path, fmt, **options)  # type: ignore[arg-type]

        return write

    return [
        Format("medmask_store `.zarr`", out["a.zarr"], archive_write(out["a.zarr"]), archive_read(out["a.zarr"])),
        Format("medmask_store `.h5`", out["a.h5"], archive_write(out["a.h5"]), archive_read(out["a.h5"])),
        Format(
            "NIfTI folder (a `.nii.gz` per organ)",
            out["nifti"],
            exporting("nifti", out["nifti"]),
            lambda: load_mask_folder(out["nifti"]),
        ),
        Format(
            "multi-label NIfTI (+ `.json`)",
            out["case.nii.gz"],
            exporting("multilabel", out["case.nii.gz"], allow_overlap=True),
            lambda: load_multilabel(out["case.nii.gz"]),
            "one label per voxel: overlapping organs painted over their neighbours",
        ),
        Format(
            "3D Slicer `.seg.nrrd`",
            out["case.seg.nrrd"],
            exporting("seg.nrrd", out["case.seg.nrrd"]),
            lambda: load_seg_nrrd(out["case.seg.nrrd"]),
        ),
        Format(
            "DICOM SEG (binary)",
            out["case.dcm"],
            exporting("dicom-seg", out["case.dcm"], ct_series=ct_series),
            lambda: load_dicom_seg(out["case.dcm"]),
            "the referenced CT series not counted",
        ),
        Format(
            "OME-Zarr image + labels",
            out["case.ome.zarr"],
            exporting("ome-zarr", out["case.ome.zarr"]),
            lambda: load_ome_zarr(out["case.ome.zarr"]),
        ),
    ]


def measure(case: Case, data: CaseData, workdir: Path, repeats: int) -> list[Row]:
    entries = formats(case, data, workdir)
    writes = interleaved_median_ms({f.name: f.write for f in entries}, repeats)
    reads = interleaved_median_ms({f.name: f.read for f in entries}, repeats)
    extra = {f.name: disk_bytes(f.path.with_name("case.json")) if f.path.name == "case.nii.gz" else 0 for f in entries}
    return [
        Row(f.name, disk_bytes(f.path) + extra[f.name], writes[f.name], reads[f.name], compare(data, f.read()), f.note)
        for f in entries
    ]


def table(rows: list[Row]) -> str:
    ours = rows[0].bytes
    lines = [
        "| format | bytes | × `.zarr` | write ms | read ms | every organ bit-exact, geometry kept | note |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.bytes:,} | {r.bytes / ours:.1f} | {r.write_ms:.0f} | {r.read_ms:.0f} | {r.lossless} | {r.note} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case-dir", type=Path, default=DEFAULT_CASE)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "formats.md")
    args = parser.parse_args(argv)
    started, load = time.perf_counter(), os.getloadavg()
    if args.case_dir.is_dir():
        data, described = load_mask_folder(args.case_dir), f"the real TotalSegmentator case `{args.case_dir.name}`"
    else:
        phantom = CtPhantom(PHANTOM_SHAPE, seed=0, spacing=(1.5, 1.5, 1.5))
        data = CaseData.from_masks(dict(phantom), space=phantom.space)
        described = f"a synthetic CtPhantom {'×'.join(map(str, PHANTOM_SHAPE))} ({args.case_dir} is absent)"
    with tempfile.TemporaryDirectory(prefix="formats_") as tmp:
        workdir = Path(tmp)
        with MaskArchive(workdir / "source.zarr", "w") as archive:
            archive.add_case("case", data)
        with MaskArchive(workdir / "source.zarr") as archive:
            rows = measure(archive["case"], data, workdir, args.repeats)
    command = " ".join(["python benchmarks/formats.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    report = (
        f"# One case in every format\n\n`{command}`; {os.cpu_count()} cores, load average {load[0]:.2f}, {load[1]:.2f}, "
        f"{load[2]:.2f} (1, 5, 15 min) at the start; {package_versions(PACKAGES)}; whole run "
        f"{time.perf_counter() - started:.0f} s.\n\n"
        f"Data: {described}, {len(data.mapping)} organs ({len(data.layer_voxels)} overlapping others), "
        f"{'×'.join(map(str, data.space.shape))} voxels. Write: the archive's rows `add_case` of the in-memory case, the "
        f"others `export_case` from the case opened in a `.zarr` archive. Read: the archive's rows open + "
        f"`to_case_data`, the others the importer's loader (`load_mask_folder`, `load_multilabel`, `load_seg_nrrd`, "
        f"`load_dicom_seg`, `load_ome_zarr`: ome-zarr-py's reader) into a `CaseData`. Medians of {args.repeats} "
        f"interleaved rounds.\n\n{table(rows)}\n"
    )
    publish(report, args.out)
    lossless_claimed = [r for r in rows if not r.note.startswith("one label per voxel")]
    return 0 if all(r.lossless == "yes" for r in lossless_claimed) else 1


if __name__ == "__main__":
    sys.exit(main())
