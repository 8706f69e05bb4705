"""Random sequences of add / overwrite / delete / read / reopen / convert, on every backend, against an
in-memory model of what the archive must hold (hypothesis ``RuleBasedStateMachine``)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from harness import BACKENDS, SETTINGS, case_view, read_view, truth
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from medmask_store import CaseExists, CaseNotFound, MaskArchive
from medmask_store.storage.verify import verify_archive

CASE_IDS = st.sampled_from(["a", "b", "c"])
SEEDS = st.integers(0, 3)


class ArchiveMachine(RuleBasedStateMachine):
    """The archive under test and the model: case id -> truth seed."""

    first_backend = ".zarr"

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="medmask-state-"))
        self.model: dict[str, int] = {}
        self.converted = 0

    @initialize()
    def create(self) -> None:
        self.path = self.folder / f"archive{self.first_backend}"
        self.archive = MaskArchive(self.path, "w", SETTINGS["default"])

    def _add(self, case_id: str, seed: int, overwrite: bool) -> None:
        masks, space, meta = truth(seed)
        self.archive.add_case(case_id, masks, space=space, meta=meta, overwrite=overwrite)
        self.model[case_id] = seed

    @rule(case_id=CASE_IDS, seed=SEEDS)
    def add(self, case_id: str, seed: int) -> None:
        if case_id in self.model:
            with pytest.raises(CaseExists):
                self._add(case_id, seed, overwrite=False)
        else:
            self._add(case_id, seed, overwrite=False)

    @rule(case_id=CASE_IDS, seed=SEEDS)
    def overwrite(self, case_id: str, seed: int) -> None:
        self._add(case_id, seed, overwrite=True)

    @rule(case_id=CASE_IDS)
    def delete(self, case_id: str) -> None:
        if case_id in self.model:
            self.archive.delete_case(case_id)
            del self.model[case_id]
        else:
            with pytest.raises(CaseNotFound):
                self.archive.delete_case(case_id)

    @rule(case_id=CASE_IDS)
    def read(self, case_id: str) -> None:
        if case_id not in self.model:
            with pytest.raises(CaseNotFound):
                self.archive[case_id]
            return
        assert read_view(self.archive[case_id]) == case_view(self.model[case_id])

    @rule()
    def reopen(self) -> None:
        self.archive.close()
        self.archive = MaskArchive(self.path, "a", SETTINGS["compact"])  # later cases: the other codec

    @rule()
    def convert(self) -> None:
        """Copy to the next backend and carry on there."""
        self.converted += 1
        suffix = BACKENDS[(BACKENDS.index(self.first_backend) + self.converted) % len(BACKENDS)]
        self.archive.commit()
        target = self.folder / f"copy{self.converted}{suffix}"
        self.archive.copy_to(target)
        self.archive.close()
        self.path, self.archive = target, MaskArchive(target, "a", SETTINGS["default"])

    @invariant()
    def lists_the_model(self) -> None:
        if hasattr(self, "archive"):
            assert self.archive.case_ids() == sorted(self.model)
            if self.model:  # a query needs a metadata field some case has
                assert self.archive.query("age >= 0") == sorted(self.model)

    def teardown(self) -> None:
        if hasattr(self, "archive"):
            self.archive.close()
            with MaskArchive(self.path) as archive:
                assert archive.case_ids() == sorted(self.model)
                assert verify_archive(archive) == []
        shutil.rmtree(self.folder, ignore_errors=True)


SMALL_RUNS = settings(max_examples=10, stateful_step_count=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def machine_for(suffix: str) -> type[ArchiveMachine]:
    """The machine starting on one backend (later ``convert`` steps move it to the others)."""
    return SMALL_RUNS(type(f"ArchiveMachine{suffix.replace('.', '_')}", (ArchiveMachine,), {"first_backend": suffix}))


TestZarr = machine_for(".zarr").TestCase
TestZarrZip = machine_for(".zarr.zip").TestCase
TestHdf5 = machine_for(".h5").TestCase
TestPacked = machine_for(".msk").TestCase
