"""Readers in other processes, reading every case while a writer overwrites, deletes and adds cases:
never wrong data, never a false report of damage (a case replaced under a reader is reported as such)."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import BACKENDS, readers_during_commits


@pytest.mark.parametrize("suffix", BACKENDS, ids=lambda s: s.strip("."))
def test_readers_during_commits_see_exact_data_or_a_changed_case(tmp_path: Path, suffix: str) -> None:
    counts = readers_during_commits(suffix, seconds=3.0, readers=1, workdir=tmp_path)
    allowed = {"exact", "case changed while read (told so)"}
    assert set(counts) <= allowed, counts
    assert counts["exact"] > 10, counts
