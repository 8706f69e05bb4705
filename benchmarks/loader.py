"""Training-patch loader benchmark (issue 14): medmask_store's PatchSampler against nnU-Net v2's blosc2 files and tensorstore.

Builds --cases CtPhantom cases at 512 × 512 × --depth three ways under --workdir, on --jobs processes (kept:
a re-run reuses finished cases and rebuilds interrupted ones): our archive (--backend), nnU-Net v2.8.1's blosc2
files, and a plain Zarr v3 array read by tensorstore. Then patches/s for 96³ and 192³, uniform and 33 %
foreground, 0 and 2 worker processes, and bytes per case; ``METHOD`` below, repeated in the report, says how.

    pip install -e ".[bench]"
    python benchmarks/loader.py [--cases 20] [--depth 450] [--patches 200 50] [--repeats 3]
        [--backend zarr] [--jobs 2] [--workdir /tmp/loader_bench]
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing
import os
import pickle
import shutil
import statistics
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc2
import numpy as np
import tensorstore as ts
import zarr
from common import RESULTS, disk_bytes, median_ms, package_versions, publish
from zarr.codecs import BytesCodec, ZstdCodec

from medmask_store import CaseData, MaskArchive
from medmask_store.concurrency import use_threads
from medmask_store.phantom import CtPhantom
from medmask_store.sampling import Patch, PatchSampler
from medmask_store.storage.layout import EncodedCase, StorageSettings, encode_case

PATCH_SIZES = (96, 192)
FOREGROUND = (0.0, 0.33)
WORKERS = (0, 2)
STORES = ("blosc2", "medmask_store", "tensorstore")  # timed in this order: peer, ours, peer
PACKAGES = ("medmask_store", "numpy", "zarr", "blosc2", "tensorstore")
METHOD = (
    "Stores: our archive, sampled by `PatchSampler` end to end (case opening and its LRU, organ locations read from "
    "the archive); the labels as nnU-Net v2.8.1 preprocesses them (int16 (1, x, y, z) blosc2, LZ4HC 5, the filter it "
    "picks by trial, its `comp_blosc2_params` blocks/chunks for each patch size, class locations in a pickle; images "
    "left out), file and pickle opened for every patch as `nnUNetDatasetBlosc2.load_case` does (mmap, one thread); "
    "a plain Zarr v3 array (bytes + zstd 3, 64³ chunks) read by tensorstore, handles and class locations kept per "
    "process. The peers place patches as `nnUNetDataLoader.get_bbox` does (uniform lower corner; foreground, drawn "
    "by its probabilistic oversampling, centred on a stored location of a random present class, clamped below only) "
    "and pad with -1 as `crop_and_pad_nd`. Patches/s = patches / wall time, medians of the repeats, the stores "
    "interleaved (blosc2, ours, tensorstore) in each. Before timing, the stores are checked to hold identical labels "
    "(a whole case, a patch across its borders), every store's files are read once (page cache warm for all), and "
    "each sampler makes one untimed run of N patches, keeping its state after it: open cases (ours: `open_cases` = "
    "all cases, as the tensorstore peer keeps every handle) and the organ locations found so far (ours) or loaded "
    "(tensorstore: every case's precomputed nnU-Net class locations, in memory). With workers: a spawn pool per store and setting, started and warmed before timing; "
    "each worker draws N / workers patches with its own seed and returns a checksum, not the patch."
)
B2_CODEC, B2_LEVEL = blosc2.Codec.LZ4HC, 5  # nnUNetDatasetBlosc2.save_case defaults (nnU-Net v2.8.1)


@dataclass(frozen=True)
class Layout:
    """Where each store of the dataset lives under the work directory."""

    workdir: Path
    archive: Path

    def b2nd(self, case_id: str, size: int) -> Path:
        return self.workdir / "blosc2" / f"{case_id}_seg_{size}.b2nd"

    def pkl(self, case_id: str) -> Path:
        return self.workdir / "blosc2" / f"{case_id}.pkl"

    def zarr(self, case_id: str) -> Path:
        return self.workdir / "zarr" / f"{case_id}.zarr"

    def peer_files(self, case_id: str) -> list[Path]:
        return [*(self.b2nd(case_id, s) for s in PATCH_SIZES), self.pkl(case_id), self.zarr(case_id)]


# -- nnU-Net v2.8.1 (PyPI nnunetv2; MIC-DKFZ/nnUNet): training/dataloading/nnunet_dataset.py, preprocessing/preprocessors/default_preprocessor.py
def comp_blosc2_params(image: tuple[int, ...], patch: tuple[int, ...], itemsize: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Blocks and chunks of a (1, x, y, z) array: ``comp_blosc2_params`` for 3D patches, its default caps."""
    max_block, max_chunk, spatial = 128 * 1024, 6 * 1024**2, image[1:]
    target = [max(1, min(n, math.floor(1.5 * p))) for n, p in zip(spatial, patch)]

    def nbytes(shape: list[int]) -> int:
        return math.prod(shape) * itemsize

    block = [min(1 << (p - 1).bit_length() if p > 1 else 1, n) for p, n in zip(patch, spatial)]
    while nbytes(block) > min(max_block, max_chunk):  # halve the axis longest against its target, later axes first
        axis = max((a for a in range(3) if block[a] > 1), key=lambda a: (block[a] / target[a], a))
        block[axis] = 1 << ((block[axis] - 1).bit_length() - 1)
    chunk = block.copy()
    while True:  # grow the least covered axis by one block while the chunk stays under the cap
        grown = []
        for a in range(3):
            if chunk[a] < min(spatial[a], target[a]):
                candidate = chunk.copy()
                candidate[a] = min(chunk[a] + block[a], spatial[a], target[a])
                if nbytes(candidate) <= max_chunk:
                    grown.append((chunk[a] / target[a], -spatial[a], a, -nbytes(candidate), candidate))
        if not grown:
            return (1, *block), (1, *chunk)
        chunk = min(grown, key=lambda g: g[:4])[4]


def select_filter(seg: np.ndarray, blocks: tuple[int, ...], chunks: tuple[int, ...]) -> blosc2.Filter:
    """``nnUNetDatasetBlosc2._select_filter``: NOFILTER or SHUFFLE, whichever compresses a centred chunk smaller."""
    slab_shape = [min(c, s) for c, s in zip(chunks, seg.shape)]
    slab = np.ascontiguousarray(seg[tuple(slice((s - c) // 2, (s - c) // 2 + c) for s, c in zip(seg.shape, slab_shape))])
    sizes = {f: blosc2.asarray(slab, chunks=tuple(slab_shape), blocks=tuple(min(b, c) for b, c in zip(blocks, slab_shape)),
                               cparams={"codec": B2_CODEC, "clevel": B2_LEVEL, "nthreads": 4, "filters": [f]}).schunk.cbytes
             for f in (blosc2.Filter.NOFILTER, blosc2.Filter.SHUFFLE)}
    return min(sizes, key=lambda f: sizes[f])  # ties: NOFILTER, first


def class_locations(seg: np.ndarray, labels: list[int]) -> dict[int, Any]:
    """``DefaultPreprocessor._sample_foreground_locations``: per label max(min(10,000, n), ⌈1 % n⌉) voxels (c, x, y, z)."""
    rng = np.random.RandomState(1234)
    voxels = np.flatnonzero(seg)
    found = seg.reshape(-1)[voxels]
    order = np.argsort(found, kind="stable")
    ordered = found[order]
    locations: dict[int, Any] = {}
    for label in labels:
        lo, hi = np.searchsorted(ordered, [label, label + 1])
        if hi == lo:
            locations[label] = []  # nnU-Net's entry for a class absent from the case
            continue
        picked = rng.choice(hi - lo, max(min(10_000, hi - lo), math.ceil((hi - lo) * 0.01)), replace=False)
        locations[label] = np.stack(np.unravel_index(voxels[order[lo + picked]], seg.shape), axis=1)
    return locations


# -- the dataset ----------------------------------------------------------------------------------
def build_case(layout: Layout, case_id: str, index: int, depth: int, settings: StorageSettings, encoders: Any) -> EncodedCase:
    """Write one phantom case's peer files (each atomically) and return it encoded for our archive."""
    phantom = CtPhantom((512, 512, depth), seed=(0, index))
    data = CaseData.from_masks(phantom, space=phantom.space)
    labels = data.label_volume.copy()
    for name, voxels in data.layer_voxels.items():  # what read_region returns: binary-layer organs painted over
        labels.reshape(-1)[voxels] = data.mapping[name]
    seg = labels[None].astype(np.int16)  # run_case_save: seg.astype(np.int16) before saving
    for size in PATCH_SIZES:
        blocks, chunks = comp_blosc2_params(seg.shape, (size,) * 3, seg.itemsize)
        cparams = {"codec": B2_CODEC, "clevel": B2_LEVEL, "nthreads": 4, "filters": [select_filter(seg, blocks, chunks)]}
        partial = layout.b2nd(case_id, size).with_suffix(".partial.b2nd")
        blosc2.asarray(seg, urlpath=str(partial), chunks=chunks, blocks=blocks, cparams=cparams, mode="w")
        os.replace(partial, layout.b2nd(case_id, size))
    properties = {"class_locations": class_locations(seg, sorted(data.mapping.values())), "spacing": phantom.space.spacing}
    layout.pkl(case_id).with_suffix(".partial").write_bytes(pickle.dumps(properties))
    os.replace(layout.pkl(case_id).with_suffix(".partial"), layout.pkl(case_id))
    partial_zarr = layout.zarr(case_id).with_suffix(".partial")
    shutil.rmtree(partial_zarr, ignore_errors=True)
    array = zarr.create_array(partial_zarr, shape=labels.shape, dtype=labels.dtype, chunks=(64,) * 3,
                              serializer=BytesCodec(), compressors=[ZstdCodec(level=3)], fill_value=0)
    array[...] = labels
    shutil.rmtree(layout.zarr(case_id), ignore_errors=True)
    partial_zarr.rename(layout.zarr(case_id))
    return encode_case(data, settings, encoders)


def build_dataset(layout: Layout, case_ids: list[str], depth: int, jobs: int) -> None:
    """Build the cases missing from any store; each lands in our archive last, so it marks the case complete."""
    for folder in ("blosc2", "zarr"):
        (layout.workdir / folder).mkdir(parents=True, exist_ok=True)
    with MaskArchive(layout.archive, "a") as archive:
        todo = [(i, c) for i, c in enumerate(case_ids) if c not in archive or not all(p.exists() for p in layout.peer_files(c))]
        with ProcessPoolExecutor(jobs, multiprocessing.get_context("spawn")) as pool:
            futures = {c: pool.submit(build_case, layout, c, i, depth, archive.settings, archive.chunk_encoders) for i, c in todo}
            for case_id, future in futures.items():
                archive.write_encoded(case_id, future.result(), overwrite=True)
                print(f"{case_id}: built", flush=True)
    print(f"{len(todo)} case(s) built, {len(case_ids) - len(todo)} reused from {layout.workdir}", flush=True)


# -- the peers' loaders: nnU-Net v2.8.1's nnUNetDataLoader.get_bbox and crop_and_pad_nd --------------
class NnUNetLoader:
    """Label patches of int16, -1 outside the volume, placed as nnU-Net v2 places them."""

    def __init__(self, layout: Layout, case_ids: list[str], size: int, foreground: float, seed: int = 0) -> None:
        self.layout, self.case_ids, self.size, self.foreground = layout, case_ids, size, foreground
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def load_case(self, case_id: str) -> tuple[Any, tuple[int, ...], dict[int, Any]]:
        """A reader of voxel boxes, the volume's shape and the class locations."""
        raise NotImplementedError

    def sample(self) -> np.ndarray:
        read, shape, locations = self.load_case(self.case_ids[int(self.rng.integers(len(self.case_ids)))])
        return self.patch(read, shape, self.bbox(shape, self.rng.random() < self.foreground, locations))

    def bbox(self, shape: tuple[int, ...], force_fg: bool, locations: dict[int, Any]) -> list[int]:
        need = [max(self.size - n, 0) for n in shape]
        lbs = [-p // 2 for p in need]  # nnU-Net's `- need_to_pad[i] // 2`: floor of the negative
        ubs = [n + p // 2 + p % 2 - self.size for n, p in zip(shape, need)]
        eligible = [c for c, voxels in locations.items() if len(voxels)] if force_fg else []
        if not eligible:
            return [int(self.rng.integers(lo, hi + 1)) for lo, hi in zip(lbs, ubs)]
        voxels = locations[eligible[int(self.rng.integers(len(eligible)))]]
        voxel = voxels[int(self.rng.integers(len(voxels)))]
        return [max(lo, int(v) - self.size // 2) for lo, v in zip(lbs, voxel[1:])]  # no upper clamp, as nnU-Net

    def patch(self, read: Any, shape: tuple[int, ...], start: list[int]) -> np.ndarray:
        inside = tuple(slice(max(s, 0), min(s + self.size, n)) for s, n in zip(start, shape))
        out = np.full((self.size,) * 3, -1, dtype=np.int16)
        out[tuple(slice(i.start - s, i.stop - s) for i, s in zip(inside, start))] = read(inside)
        return out


class Blosc2Loader(NnUNetLoader):
    """``nnUNetDatasetBlosc2.load_case`` per patch: the seg file opened (mmap, one thread), its pickle loaded."""

    def load_case(self, case_id: str) -> tuple[Any, tuple[int, ...], dict[int, Any]]:
        seg = blosc2.open(str(self.layout.b2nd(case_id, self.size)), mode="r", dparams={"nthreads": 1}, mmap_mode="r")
        with open(self.layout.pkl(case_id), "rb") as f:
            properties = pickle.load(f)
        return lambda box: seg[(slice(None), *box)][0], seg.shape[1:], properties["class_locations"]


class TensorstoreLoader(NnUNetLoader):
    """A plain Zarr v3 array per case, opened once per process with its class locations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: dict[str, tuple[Any, tuple[int, ...], dict[int, Any]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "opened": {}}

    def load_case(self, case_id: str) -> tuple[Any, tuple[int, ...], dict[int, Any]]:
        if case_id not in self.opened:
            spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(self.layout.zarr(case_id))}}
            store = ts.open(spec, read=True).result()
            with open(self.layout.pkl(case_id), "rb") as f:
                locations = pickle.load(f)["class_locations"]
            self.opened[case_id] = (lambda box: store[box].read().result(), tuple(store.shape), locations)
        return self.opened[case_id]


# -- timing -------------------------------------------------------------------------------------------
_source: Any = None  # the sampler of this process (a pool worker's, or the one being timed here)


def start_worker(source: Any) -> None:
    global _source
    _source = source
    use_threads(1)  # as medmask_store.torch does in DataLoader workers: the processes fill the cores


def draw(task: tuple[int, int]) -> int:
    """``count`` patches from ``seed``; a checksum of a strided sample of each (the patch stays in the worker)."""
    seed, count = task
    _source.reseed(seed)
    patches = (_source.sample() for _ in range(count))
    return sum(int((p.data if isinstance(p, Patch) else p)[::16, ::16, ::16].sum()) for p in patches)


class Runner:
    """One store's sampler, in this process or in a spawn pool of ``workers`` processes started once."""

    def __init__(self, source: Any, workers: int) -> None:
        self.source, self.workers = source, workers
        self.pool = multiprocessing.get_context("spawn").Pool(workers, start_worker, (source,)) if workers else None

    def rate(self, count: int, seed: int) -> float:
        """Patches per second: ``count`` patches here, or ``count // workers`` per worker (seeds seed * 100 + w)."""
        started = time.perf_counter()
        if self.pool is None:
            start_worker(self.source)
            draw((seed, count))
        else:
            count = count // self.workers * self.workers
            self.pool.map(draw, [(seed * 100 + w, count // self.workers) for w in range(self.workers)], chunksize=1)
        return count / (time.perf_counter() - started)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


def check_stores(layout: Layout, archive: MaskArchive, case_id: str) -> None:
    """The three stores hold the same labels: the whole volume, and one patch across the borders per size."""
    case = archive[case_id]
    labels = case.read_labels()
    for size in PATCH_SIZES:
        blosc2_peer, ts_peer = Blosc2Loader(layout, [case_id], size, 0), TensorstoreLoader(layout, [case_id], size, 0)
        whole = (slice(None),) * 3
        assert np.array_equal(blosc2_peer.load_case(case_id)[0](whole), labels), f"{case_id}: blosc2 differs"
        assert np.array_equal(ts_peer.load_case(case_id)[0](whole), labels), f"{case_id}: tensorstore differs"
        start = [-size // 3, labels.shape[1] // 2 - size // 2, labels.shape[2] - size // 2]
        ours = PatchSampler(archive, size, cases=[case_id]).read(case, start)
        for peer in (blosc2_peer, ts_peer):
            read, shape, _ = peer.load_case(case_id)
            assert np.array_equal(peer.patch(read, shape, start), ours), f"{case_id}: {type(peer).__name__} patch differs"


def measure(layout: Layout, archive: MaskArchive, case_ids: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Median patches/s of every store at every setting; one sampler (or pool) per store and setting."""
    rows = []
    for (size, count), fg, workers in itertools.product(zip(PATCH_SIZES, args.patches), FOREGROUND, WORKERS):
        sources = {"blosc2": Blosc2Loader(layout, case_ids, size, fg), "tensorstore": TensorstoreLoader(layout, case_ids, size, fg),
                   "medmask_store": PatchSampler(archive, size, cases=case_ids, foreground_fraction=fg, open_cases=len(case_ids))}
        runners = {s: Runner(sources[s], workers) for s in STORES}
        for runner in runners.values():  # the same warm-up for every store: one untimed run
            runner.rate(count, seed=99)
        rates: dict[str, list[float]] = {s: [] for s in STORES}
        for repeat in range(args.repeats):
            for store, runner in runners.items():
                rates[store].append(runner.rate(count, seed=repeat + 1))
        for runner in runners.values():
            runner.close()
        rows.append({"size": size, "fg": fg, "workers": workers, **{s: statistics.median(r) for s, r in rates.items()}})
        print(rows[-1], flush=True)
    return rows


# -- the report ------------------------------------------------------------------------------------------
def verdict(ok: bool, detail: str) -> str:
    return f"{'PASS' if ok else 'FAIL'} ({detail})"


def report(rows: list[dict[str, Any]], sizes: dict[str, float], pickle_ms: float) -> str:
    speed = ["| patch | sampling | workers | " + " | ".join(STORES) + " | ours / blosc2 | ours / tensorstore |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    checks = ["| patch | sampling | workers | ≥ 1.2× blosc2 | ≥ 1.0× tensorstore | 2 workers ≥ 1.7× 0 workers |",
              "|---|---|---:|---|---|---|"]
    for r in rows:
        ours, sampling = r["medmask_store"], "uniform" if r["fg"] == 0 else f"{r['fg']:.0%} foreground"
        vs_blosc2, vs_ts = ours / r["blosc2"], ours / r["tensorstore"]
        alone = next(o for o in rows if (o["size"], o["fg"], o["workers"]) == (r["size"], r["fg"], 0))["medmask_store"]
        setting = f"| {r['size']}³ | {sampling} | {r['workers']} |"
        speed.append(f"{setting} " + " | ".join(f"{r[s]:.1f}" for s in STORES) + f" | {vs_blosc2:.2f}× | {vs_ts:.2f}× |")
        checks.append(f"{setting} {verdict(vs_blosc2 >= 1.2, f'{vs_blosc2:.2f}×')} | {verdict(vs_ts >= 1.0, f'{vs_ts:.2f}×')} | "
                      + (verdict(ours >= 1.7 * alone, f"{ours / alone:.2f}×") if r["workers"] else "") + " |")
    disk = ["| store | MB per case |", "|---|---:|", *(f"| {name} | {mb:.2f} |" for name, mb in sizes.items())]
    ours = sizes["medmask_store (whole archive / cases)"]
    for size in PATCH_SIZES:
        peer = next(mb for name, mb in sizes.items() if name.startswith(f"blosc2, {size}³"))
        disk.append(f"| **target: ours ≤ blosc2, {size}³ plan** | {verdict(ours <= peer, f'{ours / peer:.2f}×')} |")
    return ("## Patches per second (medians)\n\n" + "\n".join(speed)
            + "\n\n## Bytes on disk per case (labels; means)\n\n" + "\n".join(disk)
            + "\n\nThe blosc2 peer loads its case's class-location pickle with every patch, as nnU-Net's `load_case` "
            f"does: {pickle_ms:.1f} ms per load (median, one case, page cache warm).\n\n## Targets\n\n" + "\n".join(checks) + "\n")


def mean_mb(paths: Iterable[Path]) -> float:
    return statistics.mean(disk_bytes(p) for p in paths) / 1e6


def warm_page_cache(paths: list[Path]) -> None:
    """Read every file once, so that no store starts from disk."""
    for path in paths:
        for file in [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]:
            file.read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--depth", type=int, default=450, help="slices: cases are 512 × 512 × depth")
    parser.add_argument("--patches", type=int, nargs=2, default=[200, 50], metavar=("N96", "N192"), help="patches per run and size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", choices=("zarr", "zarr.zip", "h5"), default="zarr", help="our archive's format")
    parser.add_argument("--jobs", type=int, default=2, help="processes building the dataset")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/loader_bench"), help="the dataset, kept between runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "loader.md")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    layout = Layout(args.workdir.resolve(), args.workdir.resolve() / f"ours.{args.backend}")
    case_ids = [f"phantom{args.depth}_{i:02d}" for i in range(args.cases)]
    build_dataset(layout, case_ids, args.depth, args.jobs)
    with MaskArchive(layout.archive) as archive:
        check_stores(layout, archive, case_ids[0])
        warm_page_cache([layout.archive, *(p for c in case_ids for p in layout.peer_files(c))])
        sizes = {"medmask_store (whole archive / cases)": disk_bytes(layout.archive) / len(archive) / 1e6}
        for size in PATCH_SIZES:
            blocks, chunks = comp_blosc2_params((1, 512, 512, args.depth), (size,) * 3, 2)
            sizes[f"blosc2, {size}³ plan (chunks {chunks[1:]}, blocks {blocks[1:]})"] = mean_mb(layout.b2nd(c, size) for c in case_ids)
        sizes["tensorstore (plain Zarr v3)"] = mean_mb(layout.zarr(c) for c in case_ids)
        sizes["(nnU-Net's class-location pickle, not counted)"] = mean_mb(layout.pkl(c) for c in case_ids)
        pickle_ms = median_ms(lambda: pickle.loads(layout.pkl(case_ids[0]).read_bytes()), 5)
        rows = measure(layout, archive, case_ids, args)
    command = " ".join(["python benchmarks/loader.py", *(sys.argv[1:] if argv is None else argv)])
    header = (
        f"# Training-patch loader\n\n`{command}`: {args.cases} CtPhantom cases at 512×512×{args.depth}, our archive "
        f"`.{args.backend}`; {os.cpu_count()} cores, load average (1, 5, 15 min) {'/'.join(f'{x:.2f}' for x in load)} at "
        f"the start; {package_versions(PACKAGES)}.\n\n{METHOD}"
    )
    publish(f"{header}\n\n{report(rows, sizes, pickle_ms)}", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
