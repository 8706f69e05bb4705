"""Partial-read benchmark: 64³ regions, whole label volumes and one small organ.

Compares medmask_store (every backend, default settings) with the same label
volume stored as a plain Zarr v3 array (bytes + zstd, 64³ chunks) read by
zarr-python and by tensorstore, and as a chunked Zstd HDF5 dataset read by
h5py (chunk cache off, as tensorstore's). Runs on s0000 and on s0000 upsampled
nearest-neighbour to ~512×512×450. Times are medians of --repeats runs
(time.perf_counter), all in one process.

"label volume" columns read the stored label volume, the very array the peers
hold (``case.stored_labels``); "+ layers" columns read what ``read_region`` /
``read_labels`` return: the label volume with the binary-layer organs painted
over it, work the peers do not do.

    pip install -e ".[bench]"
    python benchmarks/partial_reads.py [--case ../shared/data/s0000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import tensorstore as ts
import zarr
from common import DEFAULT_CASE, RESULTS, median_ms, publish
from zarr.codecs import BytesCodec, ZstdCodec

from medmask_store import CaseData, MaskArchive
from medmask_store.io.nifti import load_mask_folder

FULL_SHAPE = (512, 512, 450)
SMALL_ORGAN = "iliac_artery_left"
BACKENDS = (".zarr", ".zarr.zip", ".h5")
REGION = 64


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


def write_peers(labels: np.ndarray, workdir: Path) -> dict[str, Callable[[tuple[slice, ...]], np.ndarray]]:
    """The label volume as plain Zarr v3 (64³ chunks, zstd) and chunked Zstd HDF5; their readers."""
    zarr_path = workdir / "plain.zarr"
    array = zarr.create_array(zarr_path, shape=labels.shape, dtype=labels.dtype, chunks=(REGION,) * 3,
                              serializer=BytesCodec(), compressors=[ZstdCodec(level=3)], fill_value=0)
    array[...] = labels
    h5_path = workdir / "plain.h5"
    with h5py.File(h5_path, "w") as f:
        f.create_dataset("labels", data=labels, chunks=(REGION,) * 3, **hdf5plugin.Zstd(clevel=3))
    zarr_array = zarr.open_array(zarr_path, mode="r")
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(zarr_path)}}, read=True).result()
    h5_dataset = h5py.File(h5_path, "r", rdcc_nbytes=0)["labels"]
    return {
        "zarr-python": lambda box: zarr_array[box],
        "tensorstore": lambda box: store[box].read().result(),
        "h5py": lambda box: h5_dataset[box],
    }


def region_boxes(shape: tuple[int, ...], count: int, seed: int = 0) -> list[tuple[slice, ...]]:
    rng = np.random.default_rng(seed)
    starts = [rng.integers(0, [s - REGION + 1 for s in shape]) for _ in range(count)]
    return [tuple(slice(int(a), int(a) + REGION) for a in start) for start in starts]


def measure(name: str, case: CaseData, workdir: Path, repeats: int) -> list[dict[str, object]]:
    boxes = region_boxes(case.space.shape, 16)
    whole = (slice(None),) * 3
    peers = write_peers(case.label_volume, workdir)
    rows = []
    for peer, read in peers.items():
        expected = read(boxes[0])
        assert np.array_equal(expected, case.label_volume[boxes[0]]), peer
        rows.append({"case": name, "reader": peer,
                     "region_ms": median_ms(lambda: [read(b) for b in boxes], repeats) / len(boxes),
                     "whole_ms": median_ms(lambda: read(whole), repeats)})
    for suffix in BACKENDS:
        path = workdir / f"ours{suffix}"
        with MaskArchive(path, "w") as archive:
            archive.add_case(name, case)
        with MaskArchive(path) as archive:
            stored = archive[name]
            labels = stored.stored_labels
            assert np.array_equal(labels[boxes[0]], case.label_volume[boxes[0]])
            rows.append({
                "case": name, "reader": f"medmask_store {suffix}",
                "region_ms": median_ms(lambda: [labels[b] for b in boxes], repeats) / len(boxes),
                "whole_ms": median_ms(lambda: labels[...], repeats),
                "region_layers_ms": median_ms(lambda: [stored.read_region(b) for b in boxes], repeats) / len(boxes),
                "whole_layers_ms": median_ms(stored.read_labels, repeats),
                "organ_ms": median_ms(lambda: stored.read_organ(SMALL_ORGAN, crop=True), repeats),
            })
    return rows


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| case | reader | 64³ region, label volume (ms) | whole label volume (ms) | "
             f"64³ region + layers (ms) | whole + layers (ms) | {SMALL_ORGAN} crop (ms) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        extra = [f"{r[key]:.3f}" if key in r else "" for key in ("region_layers_ms", "whole_layers_ms", "organ_ms")]
        lines.append(f"| {r['case']} | {r['reader']} | {r['region_ms']:.3f} | {r['whole_ms']:.1f} | " + " | ".join(extra) + " |")
    return "\n".join(lines)


def verdicts(rows: list[dict[str, object]]) -> str:
    lines = ["| case | backend | 64³ ≤ tensorstore | 64³ ≥ 5× faster than zarr-python | "
             "whole ≤ 1.5× tensorstore | organ crop ≥ 20× faster than whole (full resolution) |",
             "|---|---|---|---|---|---|"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    for case in cases:
        peer = {r["reader"]: r for r in rows if r["case"] == case}
        for suffix in BACKENDS:
            ours = peer[f"medmask_store {suffix}"]
            ts_row, zp_row = peer["tensorstore"], peer["zarr-python"]
            checks = [
                (ours["region_ms"], ts_row["region_ms"], ours["region_ms"] <= ts_row["region_ms"]),
                (zp_row["region_ms"] / ours["region_ms"], None, zp_row["region_ms"] >= 5 * ours["region_ms"]),
                (ours["whole_ms"] / ts_row["whole_ms"], None, ours["whole_ms"] <= 1.5 * ts_row["whole_ms"]),
                (ours["whole_ms"] / ours["organ_ms"], None, ours["whole_ms"] >= 20 * ours["organ_ms"]),
            ]
            cells = [
                f"{'PASS' if checks[0][2] else 'FAIL'} ({checks[0][0]:.3f} vs {checks[0][1]:.3f} ms)",
                f"{'PASS' if checks[1][2] else 'FAIL'} ({checks[1][0]:.1f}×)",
                f"{'PASS' if checks[2][2] else 'FAIL'} ({checks[2][0]:.2f}×)",
                f"{'PASS' if checks[3][2] else 'FAIL'} ({checks[3][0]:.0f}×)"
                if case == cases[-1] else f"n/a ({checks[3][0]:.0f}×)",
            ]
            lines.append(f"| {case} | {suffix} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="a TotalSegmentator-style mask folder")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--full-shape", default="x".join(map(str, FULL_SHAPE)), help="upsampled shape, e.g. 512x512x450")
    parser.add_argument("--out", type=Path, default=RESULTS / "partial_reads.md")
    args = parser.parse_args(argv)
    case = load_mask_folder(args.case)
    full_shape = tuple(int(s) for s in args.full_shape.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += measure(args.case.name, case, Path(tmp) / "native", args.repeats)
        rows += measure(f"{args.case.name} at {args.full_shape}", full_resolution(case, full_shape),
                        Path(tmp) / "full", args.repeats)
    report = (f"# Partial reads\n\n`python benchmarks/partial_reads.py --repeats {args.repeats}`; medians of "
              f"{args.repeats} repeats; 64³ regions: mean over 16 random unaligned boxes.\n\n"
              f"{table(rows)}\n\nTargets:\n\n{verdicts(rows)}\n")
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
