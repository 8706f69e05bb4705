"""Partial-read benchmark: 64³, 96³ and 192³ regions, whole label volumes, one small organ, cold opens.

Compares medmask_store (every backend, default settings) with the same label
volume stored as a plain Zarr v3 array (bytes + zstd, 64³ chunks) read by
zarr-python and by tensorstore, and as a chunked Zstd HDF5 dataset read by
h5py (chunk cache off, as tensorstore's); "tensorstore, our .zarr" reads the
very array our ``.zarr`` archive stores (sharded, crc32c). Runs on s0000 and on
s0000 upsampled nearest-neighbour to ~512×512×450. Times are medians of
--repeats runs (time.perf_counter), all in one process, readers interleaved.
"Cold open + 64³": a new ``archive[case]`` (or a new ``ts.open``) and one 64³
read, the cost of a patch from a case not yet open.

"label volume" columns read the stored label volume, the very array the peers
hold (``case.stored_labels``); "+ layers" columns read what ``read_region`` /
``read_labels`` return: the label volume with the binary-layer organs painted
over it, work the peers do not do.

    pip install -e ".[bench]"
    python benchmarks/partial_reads.py [--case ../shared/data/s0000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import tensorstore as ts
import zarr
from common import DEFAULT_CASE, RESULTS, interleaved_median_ms, median_ms, package_versions, publish
from zarr.codecs import BytesCodec, ZstdCodec

from medmask_store import CaseData, MaskArchive
from medmask_store.io.nifti import load_mask_folder

FULL_SHAPE = (512, 512, 450)
SMALL_ORGAN = "iliac_artery_left"
BACKENDS = (".zarr", ".zarr.zip", ".h5")
REGION = 64
PACKAGES = ("medmask_store", "tensorstore", "zarr", "h5py", "zstandard")
PATCHES = {64: 16, 96: 16, 192: 4}  # region edge -> random boxes read per repeat


class UpsampledMasks(Mapping[str, np.ndarray]):
    """Nearest-neighbour upsampled organ masks, produced one at a time."""

    def __init__(self, case: CaseData, shape: tuple[int, int, int]) -> None:
        self.case = case
        self.index = np.ix_(*(np.arange(new) * old // new for new, old in zip(shape, case.space.shape)))
        self.names = [n for n, s in case.stats.items() if s.voxels]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.case.organ_mask(name)[self.index]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def full_resolution(case: CaseData, shape: tuple[int, int, int]) -> CaseData:
    masks = UpsampledMasks(case, shape)
    space = case.space.apply_shape(shape)
    return CaseData.from_masks(masks, space=space, mapping={n: case.mapping[n] for n in masks})


Reader = Callable[[tuple[slice, ...]], np.ndarray]


def write_peers(labels: np.ndarray, workdir: Path) -> dict[str, Reader]:
    """The label volume as plain Zarr v3 (64³ chunks, zstd) and chunked Zstd HDF5; their readers."""
    zarr_path = workdir / "plain.zarr"
    array = zarr.create_array(zarr_path, shape=labels.shape, dtype=labels.dtype, chunks=(REGION,) * 3,
                              serializer=BytesCodec(), compressors=[ZstdCodec(level=3)], fill_value=0)
    array[...] = labels
    h5_path = workdir / "plain.h5"
    with h5py.File(h5_path, "w") as f:
        f.create_dataset("labels", data=labels, chunks=(REGION,) * 3, **hdf5plugin.Zstd(clevel=3))
    zarr_array = zarr.open_array(zarr_path, mode="r")
    h5_dataset = h5py.File(h5_path, "r", rdcc_nbytes=0)["labels"]
    return {
        "zarr-python": lambda box: zarr_array[box],
        "tensorstore": tensorstore_reader(zarr_path),
        "h5py": lambda box: h5_dataset[box],
    }


def tensorstore_array(path: Path) -> ts.TensorStore:
    return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}, read=True).result()


def tensorstore_reader(path: Path) -> Reader:
    store = tensorstore_array(path)
    return lambda box: store[box].read().result()


def region_boxes(shape: tuple[int, ...], edge: int, count: int, seed: int = 0) -> list[tuple[slice, ...]]:
    rng = np.random.default_rng(seed)
    starts = [rng.integers(0, [max(s - edge, 0) + 1 for s in shape]) for _ in range(count)]
    return [tuple(slice(int(a), min(int(a) + edge, s)) for a, s in zip(start, shape)) for start in starts]


def measure(name: str, case: CaseData, workdir: Path, repeats: int) -> list[dict[str, object]]:
    boxes = {edge: region_boxes(case.space.shape, edge, count) for edge, count in PATCHES.items()}
    first, whole = boxes[REGION][0], (slice(None),) * 3
    readers: dict[str, Reader] = write_peers(case.label_volume, workdir)
    archives = {}
    for suffix in BACKENDS:
        path = workdir / f"ours{suffix}"
        with MaskArchive(path, "w") as archive:
            archive.add_case(name, case)
        archives[suffix] = archive = MaskArchive(path)
        readers[f"medmask_store {suffix}"] = archive[name].stored_labels.__getitem__
    our_zarr = workdir / "ours.zarr" / "cases" / name / "label_volume"
    readers["tensorstore, our .zarr"] = tensorstore_reader(our_zarr)
    for reader, read in readers.items():
        assert np.array_equal(read(first), case.label_volume[first]), reader
    rows: dict[str, dict[str, object]] = {reader: {"case": name, "reader": reader} for reader in readers}
    for edge, edge_boxes in boxes.items():
        runs = {reader: (lambda read=read: [read(b) for b in edge_boxes]) for reader, read in readers.items()}
        for reader, ms in interleaved_median_ms(runs, repeats).items():
            rows[reader][f"r{edge}_ms"] = ms / len(edge_boxes)
    for reader, ms in interleaved_median_ms({r: (lambda read=read: read(whole)) for r, read in readers.items()}, repeats).items():
        rows[reader]["whole_ms"] = ms
    cold = {"tensorstore, our .zarr": lambda: tensorstore_array(our_zarr)[first].read().result()}
    for suffix, archive in archives.items():
        cold[f"medmask_store {suffix}"] = lambda archive=archive: archive[name].stored_labels[first]
        cold[f"medmask_store {suffix} + layers"] = lambda archive=archive: archive[name].read_region(first)
    for run, ms in interleaved_median_ms(cold, repeats * 8).items():
        rows[run.removesuffix(" + layers")]["cold_layers_ms" if run.endswith("layers") else "cold_ms"] = ms
    for suffix, archive in archives.items():
        stored = archive[name]
        rows[f"medmask_store {suffix}"].update({
            "region_layers_ms": median_ms(lambda: [stored.read_region(b) for b in boxes[REGION]], repeats) / len(boxes[REGION]),
            "whole_layers_ms": median_ms(stored.read_labels, repeats),
            "organ_ms": median_ms(lambda: stored.read_organ(SMALL_ORGAN, crop=True), repeats),
        })  # fmt: skip
        archive.close()
    return list(rows.values())


COLUMNS = {
    "r64_ms": "64³ (ms)", "r96_ms": "96³ (ms)", "r192_ms": "192³ (ms)", "whole_ms": "whole (ms)",
    "cold_ms": "cold open + 64³ (ms)", "region_layers_ms": "64³ + layers (ms)", "whole_layers_ms": "whole + layers (ms)",
    "cold_layers_ms": "cold open + 64³ + layers (ms)", "organ_ms": f"{SMALL_ORGAN} crop (ms)",
}  # fmt: skip


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| case | reader | " + " | ".join(COLUMNS.values()) + " |", "|---|---|" + "---:|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r[key]:.3f}" if key in r else "" for key in COLUMNS]
        lines.append(f"| {r['case']} | {r['reader']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(rows: list[dict[str, object]]) -> str:
    lines = ["| case | backend | 64³ ≤ tensorstore | 64³ ≥ 5× faster than zarr-python | 96³, 192³, whole ≤ 0.7× "
             "tensorstore on our .zarr | cold open + 64³ ≤ tensorstore's | organ crop ≥ 20× faster than whole "
             "(full resolution) |", "|---|---|---|---|---|---|---|"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    for case in cases:
        peer = {r["reader"]: r for r in rows if r["case"] == case}
        ts_row, zp_row, same = peer["tensorstore"], peer["zarr-python"], peer["tensorstore, our .zarr"]
        for suffix in BACKENDS:
            ours = peer[f"medmask_store {suffix}"]
            ratios = [ours[k] / same[k] for k in ("r96_ms", "r192_ms", "whole_ms")]  # type: ignore[operator]
            cells = [
                _verdict(ours["r64_ms"] <= ts_row["r64_ms"], f"{ours['r64_ms']:.3f} vs {ts_row['r64_ms']:.3f} ms"),
                _verdict(zp_row["r64_ms"] >= 5 * ours["r64_ms"], f"{zp_row['r64_ms'] / ours['r64_ms']:.1f}×"),
                _verdict(max(ratios) <= 0.7, ", ".join(f"{r:.2f}×" for r in ratios)),
                _verdict(ours["cold_ms"] <= same["cold_ms"], f"{ours['cold_ms']:.3f} vs {same['cold_ms']:.3f} ms"),
                _verdict(ours["whole_ms"] >= 20 * ours["organ_ms"], f"{ours['whole_ms'] / ours['organ_ms']:.0f}×")
                if case == cases[-1] else f"n/a ({ours['whole_ms'] / ours['organ_ms']:.0f}×)",
            ]  # fmt: skip
            lines.append(f"| {case} | {suffix} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(passed: object, detail: str) -> str:
    return f"{'PASS' if passed else 'FAIL'} ({detail})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="a TotalSegmentator-style mask folder")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--full-shape", default="x".join(map(str, FULL_SHAPE)), help="upsampled shape, e.g. 512x512x450")
    parser.add_argument("--out", type=Path, default=RESULTS / "partial_reads.md")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    case = load_mask_folder(args.case)
    full_shape = tuple(int(s) for s in args.full_shape.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += measure(args.case.name, case, Path(tmp) / "native", args.repeats)
        rows += measure(f"{args.case.name} at {args.full_shape}", full_resolution(case, full_shape),
                        Path(tmp) / "full", args.repeats)
    report = (f"# Partial reads\n\n`python benchmarks/partial_reads.py --repeats {args.repeats}`; medians of "
              f"{args.repeats} repeats ({os.cpu_count()} cores, load average {load:.2f} at the start; "
              f"{package_versions(PACKAGES)}); regions: mean over "
              f"{', '.join(f'{n} random unaligned {e}³ boxes' for e, n in PATCHES.items())}; cold opens: medians "
              f"of {args.repeats * 8}.\n\n"
              f"{table(rows)}\n\nTargets:\n\n{verdicts(rows)}\n")
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
