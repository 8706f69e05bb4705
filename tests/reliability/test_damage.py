"""Random damage to every backend (seeded, small counts; benchmarks/reliability.py runs the full ones):
flipped bits, truncated files, deleted files and zip members. Every one is detected by the reads and by
verify, or touches bytes nothing reads (HDF5 free space); none returns wrong data or a foreign exception."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import BACKENDS, DAMAGES, damage_trials

TRIALS = 15


@pytest.mark.parametrize("kind", DAMAGES)
@pytest.mark.parametrize("suffix", BACKENDS, ids=lambda s: s.strip("."))
def test_damage_is_detected_never_silent(tmp_path: Path, suffix: str, kind: str) -> None:
    if kind == "delete" and suffix in (".h5", ".msk"):
        pytest.skip("a single file has no files or members to lose")
    results = damage_trials(suffix, kind, TRIALS, seed=0, workdir=tmp_path)
    for result in results:
        if result.outcome == "verify only":  # read exact; HDF5 label chunks are plain Zstd frames (for h5py),
            assert suffix == ".h5", result  # whose ignored bits only the manifest's bytes digest covers
        else:
            assert result.outcome == "detected" or (result.outcome == "no effect" and result.unread), result
