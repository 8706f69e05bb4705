"""A writer SIGKILLed during import, overwrite, delete or convert leaves, on every backend, an archive in one
of the states the operation passes through: every committed case bit-exact, none lost, verify clean, and
writable again (seeded delays; benchmarks/reliability.py runs 20+ trials per backend and operation)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from harness import BACKENDS, OPERATIONS, kill_trial

DELAYS = (0.0, 0.15, 0.4)  # seconds after the writer is ready; the operations take 0.3-0.7 s here


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("suffix", BACKENDS, ids=lambda s: s.strip("."))
def test_killed_writer_leaves_a_consistent_archive(tmp_path: Path, suffix: str, operation: str) -> None:
    delay = random.Random(f"{suffix}-{operation}").choice(DELAYS)
    result = kill_trial(suffix, operation, delay, tmp_path)
    assert result.consistent, result
    assert result.lost_cases == 0, result
