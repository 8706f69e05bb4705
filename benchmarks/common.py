"""Measuring helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import importlib.metadata
import shutil
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "s0000"  # ../shared beside the repo


def timed_ms(run: Callable[[], object]) -> float:
    """Milliseconds one call takes (time.perf_counter)."""
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000


def median_ms(run: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls, after one warm-up call (file handles, metadata, pools)."""
    run()
    return statistics.median(timed_ms(run) for _ in range(repeats))


def interleaved_median_ms(runs: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each run, timed in ``repeats`` rounds that call every run once (after one warm-up round),
    so a load that comes and goes weighs on all of them."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats + 1):
        for name, run in runs.items():
            elapsed = timed_ms(run)
            if round_:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def disk_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def remove(path: Path) -> None:
    """Delete a file or a directory tree, if present."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def package_versions(names: Iterable[str]) -> str:
    """``name version`` of each installed distribution, ``(not installed)`` for the others."""
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def publish(report: str, out: Path) -> None:
    """Print a Markdown report and write it to ``out``."""
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
