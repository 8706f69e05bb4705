"""Reliability benchmark: the reliability suite of tests/reliability at full counts, a table per backend.

Per backend: random bit flips, truncations and deleted files (each read in full and verified), writers
SIGKILLed during import / overwrite / delete / convert, readers in other processes during commits, and
random add / overwrite / delete / read / reopen / convert sequences against a model. Then every hostile
input of tests/reliability/bad_inputs.py, each in a fresh process: the error it raises, whether every file
stayed byte-identical, and the process's peak memory.

    python benchmarks/reliability.py [--flips 100] [--truncations 30] [--deletions 30] [--kills 20]
                                     [--reader-seconds 10] [--machine-examples 40] [--seed 0]

It runs the test harness, so it needs the test extra: ``pip install -e ".[test]"``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import RESULTS, package_versions, publish

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS / "reliability"), str(TESTS)]

import bad_inputs  # noqa: E402
import harness  # noqa: E402
from helpers import run_measuring_peak_rss  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis.stateful import run_state_machine_as_test  # noqa: E402
from test_state_machine import machine_for  # noqa: E402

RUN_BAD_INPUT = f"""
import json, sys
sys.path[:0] = [{str(TESTS / "reliability")!r}, {str(TESTS)!r}]
from pathlib import Path
from bad_inputs import BY_NAME, run_bad_input
print(json.dumps(run_bad_input(BY_NAME[sys.argv[1]], Path(sys.argv[2])).__dict__))
"""
IMPORTS_ONLY = f"""
import sys
sys.path[:0] = [{str(TESTS / "reliability")!r}, {str(TESTS)!r}]
import bad_inputs
"""
RSS_LIMIT_MIB = 256


def damage_counts(suffix: str, counts: dict[str, int], seed: int, workdir: Path) -> dict[str, tuple[Counter[str], Counter[str]]]:
    """Per kind of damage: the outcomes, and where the flips with no effect were (bytes no reader parses)."""
    found = {}
    for kind, trials in counts.items():
        if kind == "delete" and suffix in (".h5", ".msk"):
            continue
        results = harness.damage_trials(suffix, kind, trials, seed, workdir)
        for r in results:
            if r.outcome not in ("detected", "verify only") and not (r.outcome == "no effect" and r.unread):
                print(f"  {suffix} {kind}: {r}", flush=True)
        unread = Counter(r.unread for r in results if r.outcome == "no effect")
        found[kind] = (Counter(r.outcome for r in results), unread)
    return found


def kill_counts(suffix: str, trials: int, seed: int, workdir: Path) -> dict[str, tuple[int, int, int]]:
    """Per operation: (trials, consistent, lost cases), killed at delays uniform over one run's duration."""
    rng = random.Random(f"{seed}-{suffix}")
    found = {}
    for operation in harness.OPERATIONS:
        duration = harness.calibrate(suffix, operation, workdir)
        results = [harness.kill_trial(suffix, operation, rng.uniform(0, duration), workdir) for _ in range(trials)]
        for r in results:
            if not r.consistent:
                print(f"  {suffix} {operation}: {r}", flush=True)
        found[operation] = (len(results), sum(r.consistent for r in results), sum(r.lost_cases for r in results))
    return found


def machine_runs(suffix: str, examples: int) -> str:
    runs = settings(max_examples=examples, stateful_step_count=12, deadline=None, suppress_health_check=list(HealthCheck))
    try:
        run_state_machine_as_test(machine_for(suffix), settings=runs)
    except Exception as exc:  # noqa: BLE001 - a failing sequence is a finding to report
        return f"FAIL: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return f"{examples} sequences, all matched the model"


def bad_input_rows(workdir: Path) -> list[tuple[str, str, str, bool, int]]:
    rows = []
    for bad in bad_inputs.BAD_INPUTS:
        folder = workdir / f"bad{len(rows)}"
        folder.mkdir()
        bad_inputs.prepare(bad, folder)
        output, peak = run_measuring_peak_rss(RUN_BAD_INPUT, bad.name, folder)
        outcome = json.loads(output)
        rows.append((bad.group, bad.name, outcome["error"] if outcome["named"] else f"NOT OURS: {outcome['error']}",
                     outcome["unchanged"], peak))  # fmt: skip
        harness.remove(folder)
    return rows


def _cell(counts: Counter[str], total: int) -> str:
    order = ["detected", "verify only", "no effect", "silent wrong", "other exception", "missed by verify"]
    return " / ".join(str(counts.get(outcome, 0)) for outcome in order) + f" of {total}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flips", type=int, default=100)
    parser.add_argument("--truncations", type=int, default=30)
    parser.add_argument("--deletions", type=int, default=30)
    parser.add_argument("--kills", type=int, default=20, help="trials per backend and operation")
    parser.add_argument("--reader-seconds", type=float, default=10.0)
    parser.add_argument("--machine-examples", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "reliability.md")
    args = parser.parse_args(argv)
    damage_plan = {"flip": args.flips, "truncate": args.truncations, "delete": args.deletions}
    start = time.perf_counter()
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in harness.BACKENDS:
            workdir = Path(tmp) / suffix.strip(".")
            workdir.mkdir()
            print(f"{suffix}: damage", flush=True)
            damage = damage_counts(suffix, damage_plan, args.seed, workdir)
            print(f"{suffix}: killed writers", flush=True)
            kills = kill_counts(suffix, args.kills, args.seed, workdir)
            print(f"{suffix}: readers during commits", flush=True)
            readers = harness.readers_during_commits(suffix, args.reader_seconds, 2, workdir)
            print(f"{suffix}: state machine", flush=True)
            machine = machine_runs(suffix, args.machine_examples)
            rows.append((suffix, damage, kills, readers, machine))
            unread = sum((where for _, where in damage.values()), Counter())
            if unread:
                notes.append(f"{suffix}: flips with no effect, all in bytes no reader parses: " +
                             ", ".join(f"{n} × {where}" for where, n in unread.items()))
        print("bad inputs", flush=True)
        bad_rows = bad_input_rows(Path(tmp))
        baseline = run_measuring_peak_rss(IMPORTS_ONLY)[1]
    lines = [
        "# Reliability\n",
        f"`python benchmarks/reliability.py --flips {args.flips} --truncations {args.truncations} "
        f"--deletions {args.deletions} --kills {args.kills} --reader-seconds {args.reader_seconds:g} "
        f"--machine-examples {args.machine_examples} --seed {args.seed}` "
        f"({time.perf_counter() - start:.0f} s; {package_versions(['zarr', 'h5py', 'numpy'])}).\n",
        "Archives: two phantom cases (40×36×30, 16³ chunks, one default-preset and one compact-preset case, "
        "each with a binary layer). Damage outcomes, per kind: **detected** (the full read raised a named "
        "`MaskStoreError` and `verify` reported it) / **verify only** (the read was bit-exact, `verify` reported "
        "it) / **no effect** (read exact, verify clean) / **silent wrong** / **other exception** / "
        "**missed by verify**.\n",
        "| backend | bit flips | truncations | deleted files or members | killed writers: consistent (lost cases) | "
        "readers during commits | state machine |",
        "|---|---|---|---|---|---|---|",
    ]
    for suffix, damage, kills, readers, machine in rows:
        cells = [_cell(damage[k][0], damage_plan[k]) if k in damage else "n/a (one file)" for k in damage_plan]
        kill_cell = ", ".join(f"{op} {ok}/{n} ({lost})" for op, (n, ok, lost) in kills.items())
        reader_cell = ", ".join(f"{n} {what}" for what, n in sorted(readers.items()))
        lines.append(f"| {suffix} | {' | '.join(cells)} | {kill_cell} | {reader_cell} | {machine} |")
    lines += [""] + [f"- {note}" for note in notes]
    named = sum(error.split(":")[0] != "NOT OURS" for _, _, error, _, _ in bad_rows)
    unchanged = sum(u for *_, u, _ in bad_rows)
    worst = max(peak for *_, peak in bad_rows)
    lines += [
        "\n## Bad inputs\n",
        f"{len(bad_rows)} inputs: {named} raised a named `MaskStoreError`, {unchanged} left every file "
        f"byte-identical; peak RSS of each fresh process at most {worst} MiB (limit {RSS_LIMIT_MIB}; the "
        f"imports alone: {baseline} MiB).\n",
        "| group | input | error | files unchanged | peak RSS (MiB) |",
        "|---|---|---|---|---:|",
    ]
    lines += [f"| {g} | {name} | {error} | {'yes' if u else 'NO'} | {peak} |" for g, name, error, u, peak in bad_rows]
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
