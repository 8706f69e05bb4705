"""Index storage formats: our Zstd column segments against Parquet (pyarrow) and Zarr arrays, on the same index.

Builds one synthetic index of --cases cases (117 TotalSegmentator organ names, 20-30 non-empty organs
per case with CT-like statistics, metadata ``age``, ``sex``, ``site``) and stores it:

- ours: ``ArchiveIndex`` segments (one Zstd blob per column per ~16k rows, a checksummed manifest),
  each blob a file, built by ``add_rows`` + ``changes()`` in chunks of --chunk cases;
- parquet: an organ-row table and a case table (pyarrow, zstd), plain (case_id/organ as dictionary
  strings, int64/float64 statistics) and tuned (int codes, narrow ints, rounded decimals stored as
  integers of their unit, as ours does), row groups of 16k or 64k rows;
- zarr: one 1-D array per column (zarr-python 3, Blosc zstd + byte shuffle), chunked by 16k or 64k rows.

Then measures total bytes and bytes per non-empty row, a cold query in fresh processes (median of
--repeats, the formats interleaved round by round, timed from after the imports to the answer), and
adding (and, where it is a single call, deleting) one case: bytes written and milliseconds.

    python benchmarks/index_formats.py [--cases 100000] [--repeats 5] [--chunk 5000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from common import RESULTS, disk_bytes, package_versions, publish
from synthetic_index import ORGANS, reader, store_blobs, synthetic_rows

from medmask_store.io.totalsegmentator import TOTAL_LABELS
from medmask_store.query.index import ArchiveIndex

QUERY = "liver.volume_ml > 1500 and kidney_left.voxels > 0 and age >= 60"
MAPPING_JSON = json.dumps(TOTAL_LABELS, separators=(",", ":"))
TARGET_BYTES_PER_ROW = 40.0
TARGET_QUERY_MS = 1000.0
TARGET_ADD_BYTES = 1 << 20
ZSTD_LEVEL = 9  # ours compresses at level 9: the libraries get the same level
ADDS = 1000  # one-case files appended to the Parquet dataset before the "many files" query
STAT_COLUMNS = [
    "voxels", "volume_ml", "bbox_i0", "bbox_i1", "bbox_j0", "bbox_j1", "bbox_k0", "bbox_k1",
    "centroid_i", "centroid_j", "centroid_k", "centroid_lps_x_mm", "centroid_lps_y_mm", "centroid_lps_z_mm",
    "touches_border",
]  # fmt: skip
# Tuned layout (Parquet and Zarr alike): dtype with headroom for later appends, and the unit of rounded decimals.
TUNED = {
    "case": ("int32", 1), "organ": ("uint8", 1), "voxels": ("int32", 1), "volume_ml": ("int64", 10**6),
    **{f"bbox_{a}{e}": ("int16", 1) for a in "ijk" for e in "01"},
    **{f"centroid_{a}": ("int32", 1000) for a in "ijk"},
    **{f"centroid_lps_{a}_mm": ("int32", 1000) for a in "xyz"},
    "touches_border": ("bool", 1),
}  # fmt: skip


def synthetic(first: int, count: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cases ``first`` .. ``first + count - 1`` (case_id, token, meta: age, sex, site) and their non-empty organ rows."""
    cases, _, rows = synthetic_rows(first, count, seed, rich_meta=False)
    return cases, rows


# -- writing -------------------------------------------------------------------------------------------------


def case_columns(cases: pd.DataFrame, first: int) -> dict[str, np.ndarray]:
    """The case table as columns: position, id, token, mapping (JSON) and the flattened metadata."""
    return {
        "case": np.arange(first, first + len(cases), dtype=np.int32),
        "case_id": cases["case_id"].to_numpy(dtype=object),
        "token": cases["token"].to_numpy(dtype=object),
        "mapping": np.full(len(cases), MAPPING_JSON, dtype=object),
        "age": np.array([m["age"] for m in cases["meta"]], dtype=np.int16),
        "sex": np.array([m["sex"] for m in cases["meta"]], dtype=object),
        "site": np.array([m["site"] for m in cases["meta"]], dtype=np.int16),
    }


def tuned_rows(rows: pd.DataFrame, first: int, ids: pd.Series) -> dict[str, np.ndarray]:
    """Organ rows with int codes and rounded decimals as integers of their unit (:data:`TUNED`)."""
    position = pd.Series(np.arange(first, first + len(ids)), index=ids.to_numpy())
    organ_code = {name: code for code, name in enumerate(ORGANS)}
    columns = {
        "case": position.reindex(rows["case_id"].to_numpy()).to_numpy(),
        "organ": rows["organ"].map(organ_code).to_numpy(),
    }
    for key in STAT_COLUMNS:
        dtype, scale = TUNED[key]
        values = rows[key].to_numpy()
        columns[key] = (np.rint(values * scale) if scale > 1 else values).astype(dtype)
    return columns


def parquet_tables(cases: pd.DataFrame, rows: pd.DataFrame, first: int, tuned: bool) -> tuple[pa.Table, pa.Table]:
    """The organ-row table and the case table of a Parquet variant."""
    case_table = pa.table(case_columns(cases, first))
    if tuned:
        organ_table = pa.table(tuned_rows(rows, first, cases["case_id"]))
        scales = {key: scale for key, (_, scale) in TUNED.items() if scale > 1}
    else:
        organ_table = pa.table({key: rows[key].to_numpy() for key in ["case_id", "organ", *STAT_COLUMNS]})
        scales = {}
    meta = {b"organs": json.dumps(ORGANS).encode(), b"scales": json.dumps(scales).encode()}
    return organ_table.replace_schema_metadata(meta), case_table


def write_parquet(table: pa.Table, path: Path, row_group: int) -> int:
    """Zstd; a tuned organ table byte-stream-split (Parquet's shuffle), ``case`` delta-encoded, string
    keys (if any) dictionary-encoded; other tables with pyarrow's default dictionary encoding."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, object] = {"use_dictionary": True}
    names = table.column_names
    if "voxels" in names and table.schema.field("voxels").type == pa.int32():  # a tuned organ table
        keys = [c for c in ("case_id", "organ") if c in names and not pa.types.is_integer(table.schema.field(c).type)]
        encodings = {c: "BYTE_STREAM_SPLIT" for c in names if c not in ("case", "touches_border", *keys)}
        if "case" in names:
            encodings["case"] = "DELTA_BINARY_PACKED"
        options = {"use_dictionary": keys or False, "column_encoding": encodings}
    pq.write_table(table, path, compression="zstd", compression_level=ZSTD_LEVEL, row_group_size=row_group, **options)
    return path.stat().st_size


def zarr_columns(cases: pd.DataFrame, rows: pd.DataFrame, first: int, tuned: bool) -> dict[str, np.ndarray]:
    """Every array of a Zarr variant: organ rows (tuned: int codes and units; plain: float64) and case columns."""
    columns = tuned_rows(rows, first, cases["case_id"])
    if not tuned:
        for key in STAT_COLUMNS:
            columns[key] = rows[key].to_numpy()
    return columns | {f"cases.{key}": values for key, values in case_columns(cases, first).items()}


def zarr_create(folder: Path, columns: dict[str, np.ndarray], chunk: int) -> None:
    group = zarr.open_group(folder, mode="w")
    group.attrs.update({"organs": ORGANS, "scales": {k: s for k, (_, s) in TUNED.items() if s > 1}})
    for key, values in columns.items():
        text = values.dtype == object
        group.create_array(
            key,
            shape=(0,),
            dtype=str if text else values.dtype,
            chunks=(chunk,),
            compressors=zarr.codecs.ZstdCodec(level=ZSTD_LEVEL)
            if text
            else zarr.codecs.BloscCodec(cname="zstd", clevel=ZSTD_LEVEL, shuffle="shuffle"),
        )
    zarr_append(folder, columns)


def zarr_append(folder: Path, columns: dict[str, np.ndarray]) -> None:
    group = zarr.open_group(folder, mode="r+")
    for key, values in columns.items():
        group[key].append(values.astype(str) if values.dtype == object else values)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (s.st_size, s.st_mtime_ns) for p in folder.rglob("*") if p.is_file() for s in [p.stat()]}


def written(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """Bytes and files that are new or changed between two snapshots."""
    changed = [path for path, stamp in after.items() if before.get(path) != stamp]
    return sum(after[p][0] for p in changed), len(changed)


# -- cold queries ----------------------------------------------------------------------------------------------

COLD = r"""
import json, sys, time
from pathlib import Path
kind, folder, query = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
import numpy as np, pandas as pd
if kind.startswith("ours"):
    from medmask_store.query.expression import evaluate_query
    from medmask_store.query.index import ArchiveIndex
elif kind == "parquet":
    import pyarrow.parquet as pq
else:
    import zarr

def answer(organs, case, organ, volume, voxels, case_key, case_id, age, scales):
    code = {name: n for n, name in enumerate(organs)}
    frame = pd.DataFrame({"case": case, "organ": organ, "volume_ml": volume, "voxels": voxels})
    if pd.api.types.is_integer_dtype(frame["organ"].dtype):
        liver, kidney = frame["organ"] == code["liver"], frame["organ"] == code["kidney_left"]
    else:
        liver, kidney = frame["organ"] == "liver", frame["organ"] == "kidney_left"
    volume = frame.loc[liver].set_index("case")["volume_ml"] / scales.get("volume_ml", 1)
    voxels = frame.loc[kidney].set_index("case")["voxels"]
    wide = pd.DataFrame({"case_id": case_id, "age": age}, index=pd.Index(case_key, name="case"))
    wide["liver"], wide["kidney"] = volume.reindex(wide.index).to_numpy(), voxels.reindex(wide.index).to_numpy()
    return sorted(wide["case_id"][(wide["liver"] > 1500) & (wide["kidney"] > 0) & (wide["age"] >= 60)])

start = time.perf_counter()
files = 0
seen = []  # list.append is thread-safe: ours reads blobs from a thread pool
def read(name):
    path = folder / name
    seen.append(name)
    return path.read_bytes() if path.exists() else None
if kind == "ours":
    result = evaluate_query(query, ArchiveIndex.load(read))
elif kind == "ours_columns":  # the same 7 columns as the libraries, the same pandas predicate
    index = ArchiveIndex.load(read)
    parts, ids, ages, offset = {k: [] for k in ("case", "organ", "volume_ml", "voxels")}, [], [], 0
    for s in index.segments:
        for k in parts:
            parts[k].append(s.column(k) + offset if k == "case" else s.column(k))
        ids += s.column("case_id")
        age = np.full(s.cases, np.nan)
        positions, values = s.meta_column("age")
        age[positions] = values
        ages.append(age)
        offset += s.cases
    joined = {k: np.concatenate(v) for k, v in parts.items()}
    result = answer(index.organ_names, joined["case"], joined["organ"], joined["volume_ml"], joined["voxels"],
                    np.arange(offset), ids, np.concatenate(ages), {})
elif kind == "parquet":
    string_keys = "case_id" in pq.read_schema(next((folder / "organs").iterdir())).names
    key = "case_id" if string_keys else "case"
    rows = pq.read_table(folder / "organs", columns=[key, "organ", "volume_ml", "voxels"])
    cases = pq.read_table(folder / "cases", columns=["case", "case_id", "age"])
    meta = rows.schema.metadata
    organs, scales = json.loads(meta[b"organs"]), json.loads(meta[b"scales"])
    files = len(list((folder / "organs").iterdir())) + len(list((folder / "cases").iterdir()))
    c = rows.column(key).to_pandas()
    result = answer(organs, c.astype(object) if string_keys else c, rows.column("organ").to_pandas(),
                    rows.column("volume_ml").to_numpy(), rows.column("voxels").to_numpy(),
                    cases.column(key).to_numpy(zero_copy_only=False), cases.column("case_id").to_pylist(),
                    cases.column("age").to_numpy(), scales)
else:
    group = zarr.open_group(folder, mode="r")
    organs, scales = group.attrs["organs"], group.attrs["scales"]
    if group["volume_ml"].dtype.kind == "f":
        scales = {}
    get = lambda name: group[name][:]
    case_ids = get("cases.case_id")
    result = answer(organs, get("case"), get("organ"), get("volume_ml"), get("voxels"),
                    get("cases.case"), case_ids, get("cases.age"), scales)
    used = ["case", "organ", "volume_ml", "voxels", "cases.case", "cases.case_id", "cases.age"]
    files = 1 + sum(1 for name in used for p in (folder / name).rglob("*") if p.is_file())
files = len(seen) if kind.startswith("ours") else files
print(json.dumps({"ms": (time.perf_counter() - start) * 1000, "matches": len(result), "first": result[:1], "files": files}))
"""


def cold(kind: str, folder: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", COLD, kind, str(folder), QUERY], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- conclusion ---------------------------------------------------------------------------------------------


def conclusion(cases: int, n_rows: int, sizes: dict, runs: dict, add: dict, delete: dict) -> str:
    """The verdict paragraph, from the measured numbers."""
    q = {name: median([float(r["ms"]) for r in rs]) for name, rs in runs.items()}
    b = {name: size / n_rows for name, size in sizes.items()}
    ours, cols, pt, zt16, zt64 = (
        "ours",
        "ours: the 7 columns read + the pandas predicate",
        "parquet tuned, 64k row groups",
        "zarr tuned, 16k chunks",
        "zarr tuned, 64k chunks",
    )
    many = next(name for name in runs if "one-case files" in name)
    ok = lambda value, target: "meets" if value <= target else "misses"  # noqa: E731
    worst16, worst64 = 16384 * b[zt16], 65536 * b[zt64]
    return (
        f"At {cases:,} cases ({n_rows:,} rows) the size target is set by the encoding, not the container: with "
        f"rounded decimals stored as integers of their unit, narrow ints and a byte shuffle, ours "
        f"({b[ours]:.1f} B/row), Parquet ({b[pt]:.1f}) and Zarr ({b[zt16]:.1f} / {b[zt64]:.1f}) all land within "
        f"a few bytes of each other and under {TARGET_BYTES_PER_ROW:.0f} B/row, while the plain float64 layouts "
        f"miss it ({b['parquet plain, 64k row groups']:.1f} and {b['zarr plain, 16k chunks']:.1f} B/row). "
        f"Cold query: ours {ok(q[ours], TARGET_QUERY_MS)} the {TARGET_QUERY_MS:.0f} ms target ({q[ours]:,.0f} ms "
        f"with `evaluate_query`; {q[cols]:,.0f} ms when it only reads the same 7 columns as the libraries and runs "
        f"the same pandas predicate), Parquet tuned {ok(q[pt], TARGET_QUERY_MS)} it ({q[pt]:,.0f} ms, 2 files), "
        f"Zarr tuned {ok(q[zt16], TARGET_QUERY_MS)} it ({q[zt16]:,.0f} ms at 16k chunks, {q[zt64]:,.0f} ms at "
        f"64k). One add: ours rewrites {add[ours][1]:,} bytes (the last, unfilled segment and the manifest; "
        f"a delete {delete[ours][1]:,}), {ok(add[ours][1], TARGET_ADD_BYTES)} the 1 MB target; Parquet files "
        f"are immutable, so an add either rewrites the whole table ({add[pt + ': rewrite'][1]:,} bytes, "
        f"{add[pt + ': rewrite'][0] / 1000:.1f} s: misses) or adds a file per table "
        f"({add[pt + ': new file'][1]:,} bytes: meets), and after {ADDS} such adds the query opens "
        f"{int(runs[many][0]['files']):,} files and takes {q[many]:,.0f} ms "
        f"({ok(q[many], TARGET_QUERY_MS)}; it needs a compaction, i.e. the full rewrite again). Zarr `append` "
        f"rewrites each array's last chunk ({add[zt16][1]:,} bytes at 16k chunks, up to ~{worst16 / 1e6:.2f} MB "
        f"when the chunks are full; {add[zt64][1]:,} bytes at 64k, up to ~{worst64 / 1e6:.2f} MB: "
        f"{ok(worst64, TARGET_ADD_BYTES)} in the worst case); Zarr at 16k chunks "
        f"{ok(b[zt16], TARGET_BYTES_PER_ROW)} the size target and {ok(q[zt16], TARGET_QUERY_MS)} the query one, "
        "and its arrays are published one by one (no atomic add across columns, no checksummed manifest), it has no "
        "delete short of rewriting or tombstones, and building it was the slowest. Parquet meets size and query "
        "but not an incremental add without a growing file count. Ours is the only layout that meets size and "
        "add (including delete) with an atomic publish; whether it meets the query target depends on the query "
        "path more than on the format (see the two ours rows)."
    )


# -- main ----------------------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=0, help="cases per add_rows call building ours (0: one call)")
    parser.add_argument("--workdir", type=Path, help="keep the stores here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS / "index_formats.md")
    args = parser.parse_args(argv)
    command = "python benchmarks/index_formats.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    started = time.perf_counter()
    log = lambda text: print(f"[{time.perf_counter() - started:6.0f} s] {text}", file=sys.stderr, flush=True)  # noqa: E731

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        if args.workdir and work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        step = args.chunk or args.cases
        chunks = [synthetic(first, min(step, args.cases - first)) for first in range(0, args.cases, step)]
        cases = pd.concat([c for c, _ in chunks], ignore_index=True)
        rows = pd.concat([r for _, r in chunks], ignore_index=True)
        n_rows = len(rows)
        log(f"synthetic: {args.cases} cases, {n_rows} rows")

        # Each variant: name -> (query kind, folder); build seconds.
        variants: dict[str, tuple[str, Path]] = {}
        build_s: dict[str, float] = {}
        notes: dict[str, str] = {}

        folder = work / "ours"
        folder.mkdir()
        begin = time.perf_counter()
        index = ArchiveIndex()
        for c, r in chunks if args.chunk else [(cases, rows)]:
            index.add_rows(c, [TOTAL_LABELS] * len(c), r)
            store_blobs(folder, *index.changes())
        build_s["ours"] = time.perf_counter() - begin
        variants["ours"] = ("ours", folder)
        variants["ours: the 7 columns read + the pandas predicate"] = ("ours_columns", folder)
        del index
        log("ours built")

        parquet_sizes = {}
        for tuned in (False, True):
            organ_table, case_table = parquet_tables(cases, rows, 0, tuned)
            for row_group in (16384, 65536):
                if not tuned and row_group == 16384:
                    continue
                name = f"parquet {'tuned' if tuned else 'plain'}, {row_group // 1024}k row groups"
                folder = work / name.replace(" ", "_").replace(",", "")
                begin = time.perf_counter()
                write_parquet(organ_table, folder / "organs" / "part-000000.parquet", row_group)
                write_parquet(case_table, folder / "cases" / "part-000000.parquet", row_group)
                build_s[name] = time.perf_counter() - begin
                variants[name] = ("parquet", folder)
                parquet_sizes[name] = disk_bytes(folder / "organs"), disk_bytes(folder / "cases")
        # case_id / organ as dictionary strings vs int codes, all else equal (tuned 64k)
        tuned_organs = parquet_tables(cases, rows, 0, True)[0]
        as_strings = tuned_organs.drop(["case", "organ"]).append_column("case_id", pa.array(rows["case_id"]))
        as_strings = as_strings.append_column("organ", pa.array(rows["organ"]))
        probe = work / "probe.parquet"
        key_bytes = {
            "int codes": write_parquet(tuned_organs, probe, 65536),
            "dictionary strings": write_parquet(as_strings, probe, 65536),
        }
        probe.unlink()
        del tuned_organs, as_strings, organ_table, case_table
        log("parquet built")

        for tuned in (False, True):
            for chunk in (16384, 65536):
                if not tuned and chunk == 65536:
                    continue
                name = f"zarr {'tuned' if tuned else 'plain'}, {chunk // 1024}k chunks"
                folder = work / name.replace(" ", "_").replace(",", "")
                begin = time.perf_counter()
                zarr_create(folder, zarr_columns(cases, rows, 0, tuned), chunk)
                build_s[name] = time.perf_counter() - begin
                variants[name] = ("zarr", folder)
        log("zarr built")

        sizes = {name: disk_bytes(folder) for name, (_, folder) in variants.items()}
        notes["ours: the 7 columns read + the pandas predicate"] = "(same store as ours)"
        file_counts = {name: sum(1 for p in folder.rglob("*") if p.is_file()) for name, (_, folder) in variants.items()}

        # -- updates: one case added (and deleted), on scratch copies ----------------------------------------
        add: dict[str, tuple[float, int, int]] = {}  # ms, bytes, files
        delete: dict[str, tuple[float, int, int]] = {}

        def measure(name: str, source: Path, step: Callable[[Path, int], None], into: dict) -> None:
            scratch = work / "scratch"
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.copytree(source, scratch)
            times, stamp = [], (0, 0)
            for n in range(args.repeats):
                before = snapshot(scratch)
                begin = time.perf_counter()
                step(scratch, n)
                times.append((time.perf_counter() - begin) * 1000)
                stamp = written(before, snapshot(scratch))
            into[name] = (median(times), *stamp)
            shutil.rmtree(scratch)

        def ours_add(folder: Path, n: int) -> None:
            index = ArchiveIndex.load(reader(folder))
            extra_cases, extra_rows = synthetic(args.cases + n, 1, seed=1)
            index.add_rows(extra_cases, [TOTAL_LABELS], extra_rows)
            store_blobs(folder, *index.changes())

        def ours_delete(folder: Path, n: int) -> None:
            index = ArchiveIndex.load(reader(folder))
            index.replace({f"case{args.cases // 2 + n:06d}"}, [])
            store_blobs(folder, *index.changes())

        measure("ours", variants["ours"][1], ours_add, add)
        measure("ours", variants["ours"][1], ours_delete, delete)
        log("ours updates measured")

        for name, (kind, source) in variants.items():
            if kind == "parquet":
                tuned, row_group = "tuned" in name, 16384 if "16k" in name else 65536

                def rewrite(folder: Path, n: int, tuned: bool = tuned, row_group: int = row_group) -> None:
                    extra = parquet_tables(*synthetic(args.cases + n, 1, seed=1), args.cases + n, tuned)
                    for table_name, new in zip(("organs", "cases"), extra):
                        path = folder / table_name / "part-000000.parquet"
                        old = pq.read_table(path)
                        write_parquet(
                            pa.concat_tables([old, new.cast(old.schema)]), path.with_suffix(".tmp"), row_group
                        )
                        path.with_suffix(".tmp").replace(path)

                def remove_case(folder: Path, n: int, row_group: int = row_group) -> None:
                    gone = f"case{args.cases // 2 + n:06d}"
                    cases_path = folder / "cases" / "part-000000.parquet"
                    case_table = pq.read_table(cases_path)
                    position = case_table.column("case").to_numpy()[
                        case_table.column("case_id").to_numpy(zero_copy_only=False) == gone
                    ]
                    for path in (folder / "organs" / "part-000000.parquet", cases_path):
                        old = pq.read_table(path)
                        key = "case_id" if "case_id" in old.column_names else "case"
                        keep = old.column(key).to_numpy(zero_copy_only=False) != (
                            gone if key == "case_id" else position[0]
                        )
                        write_parquet(old.filter(pa.array(keep)), path.with_suffix(".tmp"), row_group)
                        path.with_suffix(".tmp").replace(path)

                def new_file(folder: Path, n: int, tuned: bool = tuned, row_group: int = row_group) -> None:
                    extra = parquet_tables(*synthetic(args.cases + n, 1, seed=1), args.cases + n, tuned)
                    for table_name, new in zip(("organs", "cases"), extra):
                        write_parquet(new, folder / table_name / f"part-{n + 1:06d}.parquet", row_group)

                measure(f"{name}: rewrite", source, rewrite, add)
                measure(f"{name}: rewrite", source, remove_case, delete)
                measure(f"{name}: new file", source, new_file, add)
            elif kind == "zarr":

                def append(folder: Path, n: int, tuned: bool = "tuned" in name) -> None:
                    extra_cases, extra_rows = synthetic(args.cases + n, 1, seed=1)
                    zarr_append(folder, zarr_columns(extra_cases, extra_rows, args.cases + n, tuned))

                measure(name, source, append, add)
        log("library updates measured")

        # The Parquet dataset after ADDS one-case files (tuned, 64k row groups): what a query then opens.
        many_source = variants["parquet tuned, 64k row groups"][1]
        many = work / f"parquet_tuned_64k_plus_{ADDS}_files"
        shutil.copytree(many_source, many)
        begin = time.perf_counter()
        for n in range(ADDS):
            extra = parquet_tables(*synthetic(args.cases + n, 1, seed=1), args.cases + n, True)
            for table_name, new in zip(("organs", "cases"), extra):
                write_parquet(new, many / table_name / f"part-{n + 1:06d}.parquet", 65536)
        many_name = f"parquet tuned, 64k row groups + {ADDS} one-case files"
        variants[many_name] = ("parquet", many)
        sizes[many_name] = disk_bytes(many)
        file_counts[many_name] = sum(1 for p in many.rglob("*") if p.is_file())
        notes[many_name] = f"{ADDS} adds written in {time.perf_counter() - begin:.0f} s"
        log("many-files dataset built")

        # -- cold queries, interleaved round by round (round 0 warms the page cache, untimed) ----------------
        runs: dict[str, list[dict[str, object]]] = {name: [] for name in variants}
        for round_ in range(args.repeats + 1):
            for name, (kind, folder) in variants.items():
                result = cold(kind, folder)
                if round_:
                    runs[name].append(result)
            log(f"query round {round_} done")
    wall = time.perf_counter() - started

    # -- report ---------------------------------------------------------------------------------------------
    def cell(table: dict, key: str) -> tuple[str, str]:
        if key not in table:
            return "—", "—"
        ms, size, files = table[key]
        return f"{size:,} ({files} files)", f"{ms:,.0f}"

    lines = [
        "# Index storage formats: our column segments vs Parquet vs Zarr arrays\n",
        f"`{command}`\n",
        f"Load at the start (`uptime`): `{uptime}`; 2-core shared machine (other benchmarks running). "
        f"Whole run: {wall / 60:.1f} min. {package_versions(['pyarrow', 'zarr', 'numcodecs', 'pandas', 'zstandard'])}.\n",
        f"Data: {args.cases:,} synthetic cases, {n_rows:,} non-empty organ rows ({n_rows / args.cases:.1f} per case; "
        "117 TotalSegmentator organ names, 20-30 non-empty per case), shape 512x512x200-700, spacing 0.6-1.0 mm "
        "in-plane and 0.8-5.0 mm between slices; per row voxels, volume_ml (1e-6 ml), bbox (6 ints), voxel "
        "centroid (1e-3), LPS centroid in mm (1e-3), touches_border; per case id, token, the 117-organ mapping "
        "and metadata age/sex/site. Every store holds all of it; Zstd level 9 everywhere (ours uses 9).\n",
        "- **ours**: `ArchiveIndex.add_rows` "
        + (
            f"in chunks of {args.chunk:,} cases + `changes()` after each"
            if args.chunk
            else "of every case + `changes()`"
        )
        + ", every blob a file (the query counts the blobs it reads).",
        "- **parquet plain**: `case_id`/`organ` dictionary-encoded strings, int64 / float64 statistics; "
        "**tuned**: int codes (case int32, organ uint8), narrow ints, rounded decimals stored as integers of "
        "their unit (what ours does), BYTE_STREAM_SPLIT (Parquet's byte shuffle) without dictionaries, `case` "
        "DELTA_BINARY_PACKED (the smallest of the encodings tried); a case table (case, case_id, token, mapping JSON, age, sex, site). "
        "One file per table (`organs/`, `cases/`), read as a dataset directory.",
        "- **zarr**: one 1-D array per column in a local directory store (zarr-python 3, `BloscCodec(zstd, "
        "shuffle)`, text arrays `ZstdCodec`), chunked by rows; plain = float64 statistics, tuned = as Parquet "
        "tuned.",
        f"- cold query: `{QUERY}`, a fresh process per run (page cache warm after an untimed first round), "
        "timed from after the imports to the sorted list of case ids; ours = `ArchiveIndex.load` + "
        "`evaluate_query` (parses and checks the expression, builds the per-organ table with empty organs); "
        "the libraries = read the 4 row columns + 3 case columns, then the same predicate in pandas. "
        f"Median of {args.repeats}, formats interleaved round by round.",
        f"- add: one case (~25 rows) added to a copy of the store, {args.repeats} times in a row (each a new "
        "case); bytes = sizes of files created or changed (mtime/size) by the last add, time = median, write "
        "included. Ours: load + `add_rows` + `changes()` + write; Parquet rewrite: read the whole table, "
        "concatenate, write it again; Parquet new file: one more small file per table; Zarr: "
        "`array.append` on every array.\n",
        f"| store | bytes | bytes/row | ≤ {TARGET_BYTES_PER_ROW:.0f} B/row | files | build (s) | cold query (ms) "
        f"| ≤ {TARGET_QUERY_MS:.0f} ms | files read by the query | matches | add 1 case: bytes written "
        "| add (ms) | ≤ 1 MB | delete 1 case: bytes written | delete (ms) |",
        "|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name in variants:
        query_ms = median([float(r["ms"]) for r in runs[name]])
        matches = {int(r["matches"]) for r in runs[name]}
        per_row = sizes[name] / n_rows
        update_keys = [k for k in add if k == name or k.startswith(f"{name}:")] or [None]
        for n, key in enumerate(update_keys):
            head = (
                f"| {name} | {sizes[name]:,} | {per_row:.1f} | {'PASS' if per_row <= TARGET_BYTES_PER_ROW else 'FAIL'} "
                f"| {file_counts[name]:,} | {build_s.get(name, float('nan')):.1f} | {query_ms:,.0f} "
                f"| {'PASS' if query_ms <= TARGET_QUERY_MS else 'FAIL'} | {runs[name][0]['files']:,} "
                f"| {'/'.join(map(str, sorted(matches)))} "
            )
            if n:
                head = f"| ↳ {key.split(': ')[1]} | | | | | | | | | "
            elif key and key != name:
                head = head.replace(f"| {name} |", f"| {name} ({key.split(': ')[1]}) |", 1)
            if key is None:
                lines.append(head + f"| {notes.get(name, '—')} | | | | |")
                continue
            add_cell = cell(add, key)
            ok = "PASS" if add[key][1] <= TARGET_ADD_BYTES else "FAIL"
            del_cell = cell(delete, key)
            lines.append(head + f"| {add_cell[0]} | {add_cell[1]} | {ok} | {del_cell[0]} | {del_cell[1]} |")
    lines += [
        "",
        f"Parquet organ table (tuned, 64k row groups) with `case`/`organ` as int codes: {key_bytes['int codes']:,} "
        f"bytes; as dictionary-encoded strings (`case_id`, `organ`): {key_bytes['dictionary strings']:,} bytes.",
        "Parquet tables (organs + cases bytes): "
        + "; ".join(f"{name}: {o:,} + {c:,}" for name, (o, c) in parquet_sizes.items())
        + ".",
        "",
        "Zarr: the arrays are separate objects, each with its own `zarr.json`; an append writes every array's "
        "last chunk and metadata one after the other, so a reader (or a crash) between two of them sees columns "
        "of different lengths — several arrays cannot be published atomically together (ours publishes by "
        "writing the manifest last; a Parquet dataset by adding a file). Zarr has no row delete: deleting a "
        "case means rewriting every chunk after its rows (a shift) or keeping a tombstone array, so it is not "
        "measured.",
        "",
        "## Conclusion\n",
        conclusion(args.cases, n_rows, sizes, runs, add, delete),
    ]
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
