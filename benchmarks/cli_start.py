"""Command-line start-up time: ``medmask-store --help`` and ``ls`` per backend, as fresh processes (issue 13).

    python benchmarks/cli_start.py [--repeats 5] [--cases 4] [--workdir DIR]

Builds one small archive per backend (--cases phantom cases), then runs each
command --repeats times as a new process (the installed ``medmask-store``
script beside this Python, else ``python -m medmask_store``) and reports the
median wall time against the 0.3 s target, the median CPU time (user + system:
what a shared machine's load changes least), and the heavy packages each
command imported (from ``-X importtime``). ``info`` and ``stats`` are measured
for reference, without a target. Bytecode is cached (in a temporary
PYTHONPYCACHEPREFIX, even under PYTHONDONTWRITEBYTECODE), as after an install;
the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, publish

from medmask_store import MaskArchive
from medmask_store.phantom import make_phantom

TARGET_S = 0.3
BACKEND_SUFFIXES = (".zarr", ".zarr.zip", ".h5", ".msk")
HEAVY = ("numpy", "pandas", "zarr", "numcodecs", "h5py", "hdf5plugin", "nibabel", "spacetransformer", "crackle", "tqdm")


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("medmask-store")
    return [str(script)] if script.exists() else [sys.executable, "-m", "medmask_store"]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def heavy_imports(args: list[str], env: dict[str, str]) -> list[str]:
    """The packages of HEAVY that a command imports, from a ``python -X importtime`` run."""
    script = "import sys; from medmask_store.cli.main import main; main(sys.argv[1:])"
    stderr = subprocess.run([sys.executable, "-P", "-X", "importtime", "-c", script, *args], check=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env).stderr
    modules = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in stderr.splitlines() if line.startswith("import time:")}
    return [name for name in HEAVY if name in modules]


def build(workdir: Path, cases: int) -> dict[str, Path]:
    masks, space = make_phantom()
    paths = {}
    for suffix in BACKEND_SUFFIXES:
        paths[suffix] = workdir / f"start{suffix}"
        with MaskArchive(paths[suffix], "w") as archive, archive.batch():
            for i in range(cases):
                archive.add_case(f"case{i:02d}", masks, space=space)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--workdir", type=Path, help="keep the archives here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS / "cli_start.md")
    args = parser.parse_args(argv)
    cli = cli_command()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        paths = build(workdir, args.cases)
        env = {**os.environ, "PYTHONPYCACHEPREFIX": str(Path(tmp) / "bytecode")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        commands = [("--help", ["--help"], True)]
        commands += [(f"ls {suffix}", ["ls", str(path)], True) for suffix, path in paths.items()]
        commands += [("info .zarr", ["info", str(paths[".zarr"]), "case00"], False),
                     ("stats .zarr", ["stats", str(paths[".zarr"])], False)]
        rows = []
        for label, command_args, targeted in commands:
            timed(cli + command_args, env)  # warm-up: bytecode written, modules in the page cache
            walls, cpus = zip(*(timed(cli + command_args, env) for _ in range(args.repeats)))
            rows.append((label, statistics.median(walls), min(walls), statistics.median(cpus), targeted,
                         heavy_imports(command_args, env)))
    load_after = os.getloadavg()
    lines = [
        "# CLI start-up\n",
        f"`python benchmarks/cli_start.py --repeats {args.repeats} --cases {args.cases}`: `{' '.join(Path(c).name for c in cli)} "
        f"COMMAND` as a fresh process, wall time, median of {args.repeats} runs after one warm-up; archives of "
        f"{args.cases} phantom cases; {os.cpu_count()} cores, load average "
        f"(1, 5, 15 min) {'/'.join(f'{x:.2f}' for x in load_before)} before, {'/'.join(f'{x:.2f}' for x in load_after)} after.\n",
        f"| command | wall, median (s) | wall, min (s) | CPU, median (s) | wall ≤ {TARGET_S} s | heavy packages imported |",
        "|---|---:|---:|---:|---|---|",
    ]
    for label, median, fastest, cpu, targeted, heavy in rows:
        verdict = ("PASS" if median <= TARGET_S else "FAIL") if targeted else "n/a"
        lines.append(f"| `{label}` | {median:.3f} | {fastest:.3f} | {cpu:.3f} | {verdict} | {', '.join(heavy) or 'none'} |")
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
