"""Dataset import on a Dask cluster (``import_cases(..., client=)``, ``medmask-store import --scheduler``):
the cases bit-exact as a one-process import stores them, one bad case reported while the others import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from distributed import Client
from helpers import assert_case_matches, ok, run, snapshot, write_case_folder
from local_cluster import dask_client  # noqa: F401  (a fixture)

from medmask_store import MaskArchive, StorageSettings
from medmask_store.ingest import import_cases, plan_import

SETTINGS = StorageSettings(chunk_size=16, label_level=3, layer_level=3)
GOOD = ["ct0", "ct1", "ct2", "ct3"]
Dataset = tuple[Path, dict[str, dict[str, np.ndarray]]]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """Case folders ct0..ct3 and ``broken`` (a truncated mask)."""
    root = tmp_path_factory.mktemp("import") / "dataset"
    masks = {case_id: write_case_folder(root / case_id, seed, organs=4) for seed, case_id in enumerate(GOOD)}
    write_case_folder(root / "broken", seed=9, organs=4)
    liver = root / "broken" / "liver.nii.gz"
    liver.write_bytes(liver.read_bytes()[:-40])
    return root, masks


def assert_bad_case_reported(report, root: Path) -> None:
    assert sorted(report.imported) == GOOD and list(report.failed) == ["broken"]
    reason = report.failed["broken"]
    assert reason.startswith("NiftiError: ") and str(root / "broken" / "liver.nii.gz") in reason and "truncated" in reason


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])  # workers store their cases / hand them to this process
def test_on_a_cluster_the_archive_is_the_one_a_single_process_writes(
    tmp_path: Path, dataset: Dataset, dask_client: Client, suffix: str  # noqa: F811
) -> None:
    root, masks = dataset
    on_cluster, in_one_process = tmp_path / f"cluster{suffix}", tmp_path / f"local{suffix}"
    with MaskArchive(on_cluster, "a", SETTINGS) as archive:
        report = import_cases(archive, plan_import(archive, [root]), client=dask_client)
    assert_bad_case_reported(report, root)
    assert report.jobs == 2 and "with 2 job(s)" in report.summary()
    with MaskArchive(in_one_process, "a", SETTINGS) as archive:
        assert_bad_case_reported(archive.import_cases([root], jobs=1), root)
    with MaskArchive(on_cluster) as archive, MaskArchive(in_one_process) as local:
        assert archive.case_ids() == GOOD
        for case_id in GOOD:
            assert_case_matches(archive[case_id], masks[case_id])
            np.testing.assert_array_equal(archive[case_id].read_labels(), local[case_id].read_labels())
    if suffix == ".zarr":  # every byte: chunks, attributes, manifests (.listing is a random value per write)
        files = [{name: data for name, data in snapshot(path).items() if name != ".listing"} for path in (on_cluster, in_one_process)]
        assert files[0] == files[1]


def test_jobs_and_a_client_are_exclusive(tmp_path: Path, dataset: Dataset, dask_client: Client) -> None:  # noqa: F811
    root, _ = dataset
    with MaskArchive(tmp_path / "a.zarr", "a") as archive, pytest.raises(ValueError, match=r"^pass jobs \(local"):
        import_cases(archive, plan_import(archive, [root]), jobs=2, client=dask_client)


def test_cli_import_on_a_scheduler_with_relative_paths(
    tmp_path: Path, dataset: Dataset, dask_client: Client, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    root, masks = dataset
    monkeypatch.chdir(root.parent)  # the workers run elsewhere: the CLI sends them absolute paths
    address = dask_client.scheduler.address
    result = run("import", "cases.zarr", "dataset", "--scheduler", address, "--quiet")
    assert result.exit_code == 1
    assert "imported 4, skipped 0 (already in the archive), failed 1 in " in result.stdout
    assert "with 2 job(s)" in result.stdout and f"into {root.parent / 'cases.zarr'}" in result.stdout
    assert "broken: NiftiError: " in result.stderr
    with MaskArchive(root.parent / "cases.zarr") as archive:
        for case_id in GOOD:
            assert_case_matches(archive[case_id], masks[case_id])
    again = run("import", "cases.zarr", "dataset", "--scheduler", address, "--quiet")
    assert "imported 0, skipped 4 (already in the archive), failed 1" in again.stdout
    both = run("import", "cases.zarr", "dataset", "--scheduler", address, "--jobs", "2")
    assert both.exit_code == 2 and "--jobs sets local processes, --scheduler a cluster's workers" in both.output


def test_cli_import_on_a_scheduler_encodes_with_the_preset_chosen(dataset: Dataset, dask_client: Client, tmp_path: Path) -> None:  # noqa: F811
    root, masks = dataset
    path = tmp_path / "cases.zarr"
    ok("import", path, root / "ct0", root / "ct1", "--scheduler", dask_client.scheduler.address, "--preset", "compact")
    with MaskArchive(path) as archive:
        assert archive.case_ids() == ["ct0", "ct1"]
        for case_id in ("ct0", "ct1"):
            assert archive[case_id].info.arrays["label_volume"].codec == "crackle_zstd"  # encoded so on the workers
            assert_case_matches(archive[case_id], masks[case_id])
