"""Dataset import: worker processes, resuming, one bad case reported while the others go on."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_case_matches, case_content, ok, run, snapshot, write_case_content, write_case_folder

from medmask_store.errors import InvalidCase
from medmask_store.ingest import plan_import
from medmask_store.io.sources import CaseSource
from medmask_store.storage.archive import MaskArchive

CASES = 3


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """A folder of CASES case folders (ct0, ct1, ...) and a bad one (``broken``: a truncated mask)."""
    root = tmp_path / "dataset"
    masks = {f"ct{i}": write_case_folder(root / f"ct{i}", seed=i) for i in range(CASES)}
    write_case_folder(root / "broken", seed=9)
    liver = root / "broken" / "liver.nii.gz"
    liver.write_bytes(liver.read_bytes()[:-40])
    return root, masks


@pytest.mark.parametrize("jobs", [1, 2])
def test_bad_case_is_reported_and_the_others_are_imported(archive_path: Path, dataset, jobs: int) -> None:
    root, masks = dataset
    with MaskArchive(archive_path, "a") as archive:
        report = archive.import_cases([root], jobs=jobs)
    assert sorted(report.imported) == sorted(masks)
    assert list(report.failed) == ["broken"]
    assert str(root / "broken" / "liver.nii.gz") in report.failed["broken"] and "truncated" in report.failed["broken"]
    assert not report.ok
    with MaskArchive(archive_path) as archive:
        assert archive.case_ids() == sorted(masks)
        for case_id, case_masks in masks.items():
            assert_case_matches(archive[case_id], case_masks)
        assert archive.query("liver.voxels > 0") == sorted(masks)  # the index covers what workers wrote


def test_rerun_skips_finished_cases_and_changes_nothing(archive_path: Path, dataset) -> None:
    root, masks = dataset
    (root / "broken" / "liver.nii.gz").unlink()  # every case imports
    with MaskArchive(archive_path, "a") as archive:
        first = archive.import_cases([root], jobs=2)
    assert first.ok and len(first.imported) == CASES + 1
    before = snapshot(archive_path)
    with MaskArchive(archive_path, "a") as archive:
        again = archive.import_cases([root], jobs=2)
    assert again.imported == [] and sorted(again.skipped) == sorted([*masks, "broken"])
    assert snapshot(archive_path) == before


def test_overwrite_replaces_and_a_damaged_case_is_replaced(archive_path: Path, dataset) -> None:
    root, masks = dataset
    with MaskArchive(archive_path, "a") as archive:
        archive.import_cases([root / "ct0", root / "ct1"], jobs=1)
    content = case_content(archive_path, "ct1")
    content["meta"] = {"flipped": True}
    write_case_content(archive_path, "ct1", content, sealed=False)  # damage: checksum no longer matches
    with MaskArchive(archive_path, "a") as archive:
        report = archive.import_cases([root / "ct0", root / "ct1"], jobs=1)
    assert report.skipped == ["ct0"] and report.imported == ["ct1"]
    assert "damaged" in report.outcomes[-1].detail
    with MaskArchive(archive_path, "a") as archive:
        assert_case_matches(archive["ct1"], masks["ct1"])
        assert archive.import_cases([root / "ct0"], overwrite=True, jobs=1).imported == ["ct0"]


def test_a_worker_that_dies_costs_only_its_case(tmp_path: Path, dataset) -> None:
    root, masks = dataset
    path = tmp_path / "a.zarr"
    with MaskArchive(path, "a") as archive:
        plan = plan_import(archive, [root / f"ct{i}" for i in range(CASES)])
        dying = CaseSource("dies", root, partial(os._exit, 3))  # the process ends as if killed
        plan.cases.insert(1, type(plan.cases[0])("dies", dying, "import"))
        from medmask_store.ingest import import_cases

        report = import_cases(archive, plan, jobs=2)
    assert sorted(report.imported) == sorted(masks)
    assert list(report.failed) == ["dies"] and "worker process died" in report.failed["dies"]
    with MaskArchive(path) as archive:
        assert archive.case_ids() == sorted(masks)


def test_two_sources_with_one_case_id_are_refused(tmp_path: Path) -> None:
    write_case_folder(tmp_path / "a" / "ct0", 0)
    write_case_folder(tmp_path / "b" / "ct0", 1)
    with pytest.raises(InvalidCase, match=r"case id 'ct0' comes from two sources"):
        plan_import(None, [tmp_path / "a", tmp_path / "b"])


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_summary_and_exit_code(archive_path: Path, dataset) -> None:
    root, masks = dataset
    result = run("import", archive_path, root, "--jobs", "2")
    assert result.exit_code == 1
    assert f"imported {CASES}, skipped 0 (already in the archive), failed 1" in result.output
    assert "broken: NiftiError" in result.output and "liver.nii.gz" in result.output
    again = run("import", archive_path, root, "--quiet")
    assert f"imported 0, skipped {CASES} (already in the archive), failed 1" in again.output


def test_cli_dry_run_changes_nothing(tmp_path: Path, dataset) -> None:
    root, masks = dataset
    path = tmp_path / "new.h5"
    result = ok("import", path, root, "--dry-run")
    assert not path.exists()
    assert f"would import {CASES + 1}, skip 0" in result.output
    assert "import   ct0" in result.output
    ok("import", path, root / "ct0")
    assert "skip     ct0" in ok("import", path, root, "--dry-run").output


def test_cli_failed_first_import_leaves_no_archive(archive_path: Path, dataset) -> None:
    root, _ = dataset
    assert run("import", archive_path, root / "broken").exit_code == 1
    assert not archive_path.exists()


def test_cli_progress_bar_only_when_asked_or_on_a_terminal(tmp_path: Path, dataset) -> None:
    root, _ = dataset
    quiet = ok("import", tmp_path / "a.zarr", root / "ct0", root / "ct1", "--jobs", "1")
    assert "case/s" not in quiet.output  # CliRunner's stderr is not a terminal
    shown = ok("import", tmp_path / "b.zarr", root / "ct0", root / "ct1", "--jobs", "1", "--progress")
    assert "case/s" in shown.output or "s/case" in shown.output


def test_cli_meta_needs_one_case(tmp_path: Path, dataset) -> None:
    root, _ = dataset
    result = run("import", tmp_path / "a.zarr", root, "--meta", '{"age": 3}')
    assert result.exit_code == 2 and "--case and --meta need exactly one case" in result.output
