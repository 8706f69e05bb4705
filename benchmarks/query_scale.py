"""Query-scale benchmark of the archive index (issue 17): many TotalSegmentator-like cases, queried from the index alone.

Part A builds --cases synthetic cases (a 24x24x24 uint8 label volume, spacing varied per case, the
117-organ TotalSegmentator mapping, 24-30 labels painted as boxes of organ-typical sizes of which at
least 20 survive the overlaps, varied metadata) into a .zarr and an .h5 archive (the two built in
parallel), then measures in fresh processes (cold open: no state but the OS page cache; median of
--repeats processes after one discarded warm-up, timed from after ``from medmask_store import MaskArchive``
to the answer, every import the call makes included; and the whole process, interpreter start to exit):
open + a 3-clause query, open + ``stats(organs=[3 organs], wide=True)``, open + ``organ_census()``;
and the index bytes per non-empty organ row.

Part B builds the index alone (``ArchiveIndex.add_rows``, no archive) of --index-cases cases of
synthetic CT-sized statistics (20-30 non-empty organs each), in chunks of --chunk cases, stores its
blobs as files, then measures a cold load + query in fresh processes, and the blobs one added
case and one deleted case rewrite.

    python benchmarks/query_scale.py [--cases 20000] [--index-cases 100000] [--repeats 5] [--workdir DIR [--reuse]]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np
from common import RESULTS, disk_bytes, publish
from spacetransformer import Space
from synthetic_index import ORGANS, SIDE, WEIGHT, reader, store_blobs, synthetic_rows

import medmask_store
from medmask_store import MaskArchive
from medmask_store.io.totalsegmentator import TOTAL_LABELS
from medmask_store.query.index import ArchiveIndex

QUERY = "liver.volume_ml > 10 and kidney_left.voxels > 0 and age >= 60"
STATS_ORGANS = ["liver", "spleen", "kidney_left"]
SHAPE = (24, 24, 24)
MIN_ORGANS = 20
TARGET_BYTES_PER_ROW = 40.0
TARGET_QUERY_MS = 300.0
TARGET_INDEX_QUERY_MS = 1000.0
TARGET_ADD_BYTES = 1 << 20
VALUES = np.array([TOTAL_LABELS[name] for name in ORGANS])

# -- Part A: archives -------------------------------------------------------------------------------


def synthetic_case(seed: int) -> tuple[np.ndarray, Space, dict[str, object]]:
    """A label volume of at least MIN_ORGANS non-empty organs, its space and metadata."""
    rng = np.random.default_rng(seed)
    shape = np.array(SHAPE)
    while True:
        chosen = rng.choice(len(ORGANS), size=int(rng.integers(24, 31)), replace=False, p=WEIGHT)
        sides = np.clip(np.rint(SIDE[chosen, None] * rng.uniform(0.6, 1.4, (len(chosen), 3))), 1, 16).astype(int)
        labels = np.zeros(SHAPE, dtype=np.uint8)
        for n in np.argsort(-sides.prod(axis=1), kind="stable"):  # largest first: small organs survive
            start = rng.integers(0, shape - sides[n] + 1)
            i, j, k = (slice(a, a + s) for a, s in zip(start, sides[n]))
            labels[i, j, k] = VALUES[chosen[n]]
        if np.count_nonzero(np.bincount(labels.ravel(), minlength=256)[1:]) >= MIN_ORGANS:
            break
    xy = round(float(rng.uniform(1.5, 4.0)), 3)
    space = Space(shape=SHAPE, spacing=(xy, xy, round(float(rng.uniform(2.0, 5.0)), 3)))
    meta: dict[str, object] = {
        "age": int(rng.integers(18, 91)),
        "sex": str(rng.choice(["F", "M"])),
        "site": int(rng.integers(0, 12)),
        "scanner": str(rng.choice(["Siemens Somatom", "GE Revolution", "Philips IQon", "Canon Aquilion"])),
        "bmi": round(float(rng.normal(26.0, 4.5)), 1),
    }
    if rng.random() < 0.35:  # a key only some cases hold
        meta["contrast_phase"] = str(rng.choice(["arterial", "venous", "delayed"]))
    return labels, space, meta


def build(path: Path, cases: int) -> float:
    """Write the synthetic archive; returns seconds (the closing commit and index included)."""
    start = time.perf_counter()
    with MaskArchive(path, "w") as archive, archive.batch():
        for seed in range(cases):
            labels, space, meta = synthetic_case(seed)
            archive.add_case(f"case{seed:06d}", labels, mapping=dict(TOTAL_LABELS), space=space, meta=meta)
            if (seed + 1) % 2000 == 0:
                print(
                    f"{path.name}: {seed + 1} cases, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True
                )
    return time.perf_counter() - start


MEASURE = r"""
import json, sys, time
from medmask_store import MaskArchive
path, what, query, organs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
start = time.perf_counter()
with MaskArchive(path) as archive:
    if what == "query":
        result = len(archive.query(query))
    elif what == "stats":
        result = len(archive.stats(organs=organs, wide=True))
    elif what == "census":
        result = len(archive.organ_census())
    else:
        result = len(archive.stats())
print(json.dumps({"ms": (time.perf_counter() - start) * 1000, "result": result}))
"""


# Child processes may write bytecode, as an installed package has it: without, every run compiles the library.
CHILD_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def run_json(code: str, *args: str) -> dict[str, float]:
    """The child's JSON answer, with ``process_ms``: the wall time of the whole process, as the parent saw it."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, env=CHILD_ENV
    )
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"process_ms": (time.perf_counter() - start) * 1000}


def cold(code: str, args: list[str], repeats: int) -> tuple[float, float, int]:
    """Median milliseconds of ``repeats`` fresh processes running ``code`` (after one warm-up run, discarded):
    as the child timed it and for the whole process; and the answer's size."""
    runs = [run_json(code, *args) for _ in range(repeats + 1)][1:]
    return (
        statistics.median(r["ms"] for r in runs),
        statistics.median(r["process_ms"] for r in runs),
        int(runs[0]["result"]),
    )


def index_bytes(path: Path) -> int:
    """Bytes of the stored index: files under ``<archive>/index/``, or the HDF5 group ``/index``'s datasets."""
    if path.is_dir():
        return sum(p.stat().st_size for p in (path / "index").rglob("*") if p.is_file())
    sizes: list[int] = []
    with h5py.File(path, "r") as file:
        file["index"].visititems(
            lambda _, item: sizes.append(item.id.get_storage_size()) if isinstance(item, h5py.Dataset) else None
        )
    return sum(sizes)


# -- Part B: the index alone ------------------------------------------------------------------------


def build_index(folder: Path, cases: int, chunk: int) -> tuple[float, int]:
    """Build the index in chunks (add_rows + changes per chunk, blobs stored); returns seconds and rows."""
    index, rows, seconds = ArchiveIndex(), 0, 0.0
    for first in range(0, cases, chunk):
        table = synthetic_rows(first, min(chunk, cases - first))  # generating the statistics is not timed
        start = time.perf_counter()
        index.add_rows(*table)
        store_blobs(folder, *index.changes())
        seconds += time.perf_counter() - start
        rows += len(table[2])
        print(f"index: {first + len(table[0])} cases, {seconds:.0f} s", file=sys.stderr, flush=True)
    return seconds, rows


INDEX_QUERY = r"""
import json, sys, time
from pathlib import Path
from medmask_store.query.expression import evaluate_query
from medmask_store.query.index import ArchiveIndex
folder = Path(sys.argv[1])
start = time.perf_counter()
index = ArchiveIndex.load(lambda name: (folder / name).read_bytes() if (folder / name).exists() else None)
result = len(evaluate_query(sys.argv[2], index))
print(json.dumps({"ms": (time.perf_counter() - start) * 1000, "result": result}))
"""


def index_update(folder: Path, cases: int, repeats: int) -> dict[str, float]:
    """Median time and bytes of adding one case to, and deleting one case from, the stored index (nothing written)."""
    added = synthetic_rows(cases, 1, seed=1)
    victim = f"case{cases // 2:06d}"
    add_ms, delete_ms, add_bytes, delete_bytes = [], [], 0, 0
    for _ in range(repeats):
        index = ArchiveIndex.load(reader(folder))
        start = time.perf_counter()
        index.add_rows(*added)
        blobs, _ = index.changes()
        add_ms.append((time.perf_counter() - start) * 1000)
        add_bytes, add_blobs = sum(map(len, blobs.values())), len(blobs)
        index = ArchiveIndex.load(reader(folder))
        start = time.perf_counter()
        index.replace({victim}, [])
        blobs, unused = index.changes()
        delete_ms.append((time.perf_counter() - start) * 1000)
        delete_bytes, delete_blobs, delete_unused = sum(map(len, blobs.values())), len(blobs), len(unused)
    return {
        "add_ms": statistics.median(add_ms), "add_bytes": add_bytes, "add_blobs": add_blobs, "add_rows": len(added[2]),
        "delete_ms": statistics.median(delete_ms), "delete_bytes": delete_bytes, "delete_blobs": delete_blobs,
        "delete_unused": delete_unused,
    }  # fmt: skip


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20_000, help="cases of each archive (Part A)")
    parser.add_argument("--index-cases", type=int, default=100_000, help="cases of the index alone (Part B)")
    parser.add_argument("--chunk", type=int, default=5000, help="cases per add_rows call (Part B)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--workdir", type=Path, help="keep the archives and the index here (default: a temporary folder)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="measure archives and index already in --workdir (no build)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "query_scale.md")
    args = parser.parse_args(argv)
    command = "python benchmarks/query_scale.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        paths = {suffix: workdir / f"scale{args.cases}{suffix}" for suffix in (".zarr", ".h5")}
        # Part A: build the two archives in parallel (2 processes), then measure one at a time.
        todo = [p for p in paths.values() if not (args.reuse and p.exists())]
        build_start = time.perf_counter()
        with ProcessPoolExecutor(max_workers=2) as pool:
            futures = {p: pool.submit(build, p, args.cases) for p in todo}
            built = {p: f.result() for p, f in futures.items()}
        build_wall = time.perf_counter() - build_start
        archives = []
        for suffix, path in paths.items():
            rows = int(run_json(MEASURE, str(path), "rows", QUERY, "")["result"])
            timings = {
                what: cold(MEASURE, [str(path), what, QUERY, ",".join(STATS_ORGANS)], args.repeats)
                for what in ("query", "stats", "census")
            }
            archives.append((suffix, built.get(path), disk_bytes(path), index_bytes(path), rows, timings))
        # Part B: the index alone.
        folder = workdir / f"index{args.index_cases}"
        index_build = None
        if not (args.reuse and (folder / "manifest").exists()):
            if folder.exists():
                subprocess.run(["rm", "-rf", str(folder)], check=True)
            folder.mkdir()
            index_build = build_index(folder, args.index_cases, args.chunk)
        index_rows = index_build[1] if index_build else len(ArchiveIndex.load(reader(folder)).organ_rows(["voxels"]))
        index_size = disk_bytes(folder)
        index_blobs = sum(1 for p in folder.rglob("*") if p.is_file())
        index_query = cold(INDEX_QUERY, [str(folder), QUERY], args.repeats)
        update = index_update(folder, args.index_cases, args.repeats)
    wall = time.perf_counter() - started

    lines = [
        "# Query scale (issue 17: the scalable index)\n",
        f"`{command}`\n",
        f"Load at the start (`uptime`): `{uptime}`; 2-core shared machine. Whole run: {wall / 60:.1f} min. "
        f"Library: `{Path(medmask_store.__file__).parent}`.\n",
        "## Part A: archives\n",
        f"{args.cases:,} synthetic cases of {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} uint8 labels (spacing 1.5-4.0 mm in-plane, "
        f"2.0-5.0 mm between slices, varied per case), the 117-organ TotalSegmentator mapping, 24-30 labels painted "
        f"as boxes of which at least {MIN_ORGANS} survive, metadata `age`, `sex`, `site`, `scanner`, `bmi` and "
        "`contrast_phase` (35% of cases). Both archives were built in parallel (one process each), so each build "
        "shared the 2 cores with the other. Cold: a fresh process per measurement (the OS page cache warm), "
        f"median of {args.repeats} after one warm-up run, bytecode written as an installed package has it. Cells: "
        "*open + call*, timed in the process from after `from medmask_store import MaskArchive` (NumPy and the "
        "archive modules imported) to the answer, every import the call makes included (the query modules; "
        "pandas for the tables, which queries do not import) / *whole process*, interpreter start to exit, as "
        "the parent saw it.\n",
        f"- query: `{QUERY}`",
        f"- stats: `archive.stats(organs={STATS_ORGANS}, wide=True)`",
        "- census: `archive.organ_census()`",
        "- rows: `len(archive.stats())`, one row per case × non-empty organ; index bytes: files under "
        "`<archive>/index/` (.zarr), `get_storage_size()` of the datasets of the group `/index` (.h5)\n",
        f"| backend | build (s) | build (ms/case) | archive bytes/case | non-empty rows | index bytes | index bytes/row "
        f"| ≤ {TARGET_BYTES_PER_ROW:.0f} B/row | open + query / process (ms) | open + query ≤ {TARGET_QUERY_MS:.0f} ms "
        "| open + stats wide / process (ms) | open + organ_census / process (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for suffix, seconds, size, index_size_a, rows, t in archives:
        per_row = index_size_a / rows
        build_cells = "reused | reused" if seconds is None else f"{seconds:,.0f} | {seconds * 1000 / args.cases:.1f}"
        lines.append(
            f"| {suffix} | {build_cells} | {size / args.cases:,.0f} | {rows:,} | {index_size_a:,} | {per_row:.1f} "
            f"| {verdict(per_row <= TARGET_BYTES_PER_ROW)} | {t['query'][0]:.0f} / {t['query'][1]:.0f} "
            f"({t['query'][2]:,} matches) | {verdict(t['query'][0] <= TARGET_QUERY_MS)} "
            f"| {t['stats'][0]:.0f} / {t['stats'][1]:.0f} ({t['stats'][2]:,} rows) "
            f"| {t['census'][0]:.0f} / {t['census'][1]:.0f} ({t['census'][2]} rows) |"
        )
    if built:
        lines.append(f"\nWall time of the parallel build: {build_wall:,.0f} s.\n")
    add_ok, b = update["add_bytes"] <= TARGET_ADD_BYTES, update
    lines += [
        "\n## Part B: the index alone\n",
        f"{args.index_cases:,} cases of synthetic statistics (shape 512x512x200-700, spacing 0.6-1.0 mm in-plane, "
        "0.8-5.0 mm between slices; 20-30 non-empty organs per case, each organ's typical volume drawn once and "
        f"varied per case), added with `ArchiveIndex.add_rows` in chunks of {args.chunk:,} cases, `changes()` "
        "after each chunk, every blob stored as a file. Cold query: a fresh process per measurement, timed from "
        "after importing `ArchiveIndex` and `evaluate_query` to the answer: "
        f"`ArchiveIndex.load(read)` + `evaluate_query(QUERY, index)`, median of {args.repeats} after one warm-up "
        "run (the whole process in brackets). Add and delete: "
        f"on an index loaded from the files (nothing written back), median time of {args.repeats}.\n",
        "| measure | value | target | verdict |",
        "|---|---:|---|---|",
        "| build (add_rows + changes + writing, s) | "
        + (
            "reused"
            if index_build is None
            else f"{index_build[0]:,.1f} ({index_build[0] * 1e6 / args.index_cases:,.0f} µs/case)"
        )
        + " | | |",
        f"| non-empty rows | {index_rows:,} | | |",
        f"| index bytes ({index_blobs:,} blobs) | {index_size:,} | | |",
        f"| index bytes per row | {index_size / index_rows:.1f} | ≤ {TARGET_BYTES_PER_ROW:.0f} | "
        f"{verdict(index_size / index_rows <= TARGET_BYTES_PER_ROW)} |",
        f"| cold load + query (ms; {index_query[2]:,} matches) | {index_query[0]:.0f} ({index_query[1]:.0f}) "
        f"| ≤ {TARGET_INDEX_QUERY_MS:.0f} | "
        f"{verdict(index_query[0] <= TARGET_INDEX_QUERY_MS)} |",
        f"| add 1 case ({b['add_rows']} rows): bytes rewritten ({b['add_blobs']} blobs, manifest included) "
        f"| {b['add_bytes']:,} | ≤ {TARGET_ADD_BYTES:,} | {verdict(add_ok)} |",
        f"| add 1 case: add_rows + changes (ms) | {b['add_ms']:.0f} | | |",
        f"| delete 1 case: bytes rewritten ({b['delete_blobs']} blobs, manifest included; {b['delete_unused']} "
        f"blobs unused) | {b['delete_bytes']:,} | | |",
        f"| delete 1 case: replace + changes (ms) | {b['delete_ms']:.0f} | | |",
    ]
    report = "\n".join(lines) + "\n"
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
