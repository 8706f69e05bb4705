"""Query-scale benchmark: an archive of many small synthetic cases, queried from metadata alone.

Builds --cases synthetic cases (phantoms of --shape with 20 random ellipsoid
organs and 4 empty ones, sizes and presence varying with the seed, random
metadata) into a .zarr and an .h5 archive, then measures in fresh processes
(cold open: no state but the OS page cache) the time to open the archive and:
run a 3-clause query, build ``stats()``, list ``case_ids()``. Times are medians
of --repeats processes. Also reports build time and bytes per case.

    python benchmarks/query_scale.py [--cases 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, publish

from medmask_store import MaskArchive
from medmask_store.phantom import make_phantom

QUERY = "liver.volume_ml > 3 and kidney_left.voxels > 0 and age >= 60"
TARGET_MS = 200.0
MEASURE = r"""
import json, sys, time
start = time.perf_counter()
from medmask_store import MaskArchive
imported = time.perf_counter()
with MaskArchive(sys.argv[1]) as archive:
    if sys.argv[2] == "query":
        result = len(archive.query(sys.argv[3]))
    elif sys.argv[2] == "stats":
        result = len(archive.stats(include_empty=True))
    else:
        result = len(archive.case_ids())
print(json.dumps({"ms": (time.perf_counter() - imported) * 1000, "result": result}))
"""


def build(path: Path, cases: int, shape: tuple[int, int, int]) -> float:
    """Write the synthetic archive; returns seconds per case."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    with MaskArchive(path, "w") as archive, archive.batch():
        for seed in range(cases):
            masks, space = make_phantom(shape=shape, n_organs=20, n_empty=4, seed=seed)
            meta = {"age": int(rng.integers(20, 90)), "sex": str(rng.choice(["F", "M"])), "site": int(seed % 7)}
            archive.add_case(f"case{seed:05d}", masks, space=space, meta=meta)
    return (time.perf_counter() - start) / cases


def archive_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cold(path: Path, what: str, repeats: int) -> tuple[float, int]:
    runs = [json.loads(subprocess.run([sys.executable, "-c", MEASURE, str(path), what, QUERY], check=True,
                                      capture_output=True, text=True).stdout) for _ in range(repeats)]
    return statistics.median(r["ms"] for r in runs), runs[0]["result"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shape", default="32x32x32")
    parser.add_argument("--workdir", type=Path, help="keep the archives here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="measure archives already in --workdir (no build)")
    parser.add_argument("--out", type=Path, default=RESULTS / "query_scale.md")
    args = parser.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for suffix in (".zarr", ".h5"):
            path = workdir / f"scale{suffix}"
            per_case = float("nan") if args.reuse and path.exists() else build(path, args.cases, shape)
            timings = {what: cold(path, what, args.repeats) for what in ("query", "stats", "case_ids")}
            rows.append((suffix, per_case, archive_bytes(path) / args.cases, timings))
    lines = [
        f"# Query scale\n\n`python benchmarks/query_scale.py --cases {args.cases} --repeats {args.repeats}`: "
        f"{args.cases} cases of {args.shape} voxels, 24 organs each (20 non-empty); cold open in a fresh process "
        f"(median of {args.repeats}); query: `{QUERY}`.\n",
        "| backend | build (ms/case) | bytes/case | open + query (ms) | open + stats() (ms) | open + case_ids() (ms) | "
        f"all ≤ {TARGET_MS:.0f} ms |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for suffix, per_case, size, t in rows:
        verdict = "PASS" if all(ms <= TARGET_MS for ms, _ in t.values()) else "FAIL"
        lines.append(
            f"| {suffix} | {'reused' if math.isnan(per_case) else f'{per_case * 1000:.1f}'} | {size:,.0f} | {t['query'][0]:.0f} ({t['query'][1]} matches) | "
            f"{t['stats'][0]:.0f} ({t['stats'][1]:,} rows) | {t['case_ids'][0]:.0f} | {verdict} |"
        )
    report = "\n".join(lines) + "\n"
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
