"""Acceptance on TotalSegmentator case s0000 (117 masks): lossless round trip, size, statistics.

The real case is imported and exported once per route (CLI, Python API) in
module-scoped fixtures; every test skips when ../shared/data/s0000 is absent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medmask_store.cli.main import main
from medmask_store.io.nifti import export_mask_folder, load_mask_folder
from medmask_store.storage.archive import MaskArchive

# Same location as conftest.REAL_CASE; module-scoped fixtures cannot use the function-scoped `real_case_dir`.
REAL_CASE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "s0000"
CASE_ID = "s0000"
N_ORGANS = 117


@dataclass(frozen=True)
class RoundTrip:
    archive: Path
    exported: Path


def input_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.nii.gz"))


def voxels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def compare_with_inputs(source: Path, exported: Path) -> Iterator[str]:
    """Names of exported files that are missing or differ from their input in voxels or affine."""
    for path in input_files(source):
        copy = exported / path.name
        if not copy.exists():
            yield f"{path.name}: missing"
            continue
        original, written = nib.load(path), nib.load(copy)
        if not np.allclose(written.affine, original.affine, rtol=0, atol=1e-5):
            yield f"{path.name}: affine"
        if not np.array_equal(np.asanyarray(written.dataobj), np.asanyarray(original.dataobj)):
            yield f"{path.name}: voxels"


def require_real_case() -> Path:
    if not REAL_CASE.is_dir():
        pytest.skip(f"real case not available at {REAL_CASE}")
    return REAL_CASE


@pytest.fixture(scope="module")
def via_cli(tmp_path_factory: pytest.TempPathFactory) -> RoundTrip:
    """``import a.zarr s0000/`` then ``export a.zarr s0000 out/``."""
    source = require_real_case()
    workdir = tmp_path_factory.mktemp("real_cli")
    archive, out = workdir / "a.zarr", workdir / "out"
    runner = CliRunner()
    for args in (["import", str(archive), str(source)], ["export", str(archive), CASE_ID, str(out)]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    return RoundTrip(archive, out)


@pytest.fixture(scope="module")
def via_api(tmp_path_factory: pytest.TempPathFactory) -> RoundTrip:
    """``MaskArchive.add_case(load_mask_folder(...))`` then ``export_mask_folder``."""
    source = require_real_case()
    workdir = tmp_path_factory.mktemp("real_api")
    archive, out = workdir / "b.zarr", workdir / "out"
    with MaskArchive(archive, "w") as store:
        store.add_case(CASE_ID, load_mask_folder(source))
    with MaskArchive(archive) as store:
        export_mask_folder(store[CASE_ID], out)
    return RoundTrip(archive, out)


def test_cli_export_writes_all_117_files(real_case_dir: Path, via_cli: RoundTrip) -> None:
    names = sorted(p.name for p in input_files(real_case_dir))
    assert len(names) == N_ORGANS
    assert sorted(p.name for p in via_cli.exported.iterdir()) == names


def test_cli_round_trip_is_bit_exact_with_each_files_affine(real_case_dir: Path, via_cli: RoundTrip) -> None:
    assert list(compare_with_inputs(real_case_dir, via_cli.exported)) == []


def test_api_round_trip_is_bit_exact_with_each_files_affine(real_case_dir: Path, via_api: RoundTrip) -> None:
    assert len(list(via_api.exported.iterdir())) == N_ORGANS
    assert list(compare_with_inputs(real_case_dir, via_api.exported)) == []


def test_inputs_carry_float_noise_affines(real_case_dir: Path) -> None:
    """The case really exercises per-file affines: some inputs differ from the first by > 1e-5."""
    files = input_files(real_case_dir)
    first = nib.load(files[0]).affine
    noisy = [p for p in files if not np.allclose(nib.load(p).affine, first, rtol=0, atol=1e-5)]
    assert noisy


def test_info_json_lists_117_organs_with_nibabel_counts(real_case_dir: Path, via_cli: RoundTrip) -> None:
    result = CliRunner().invoke(main, ["info", str(via_cli.archive), CASE_ID, "--json"])
    assert result.exit_code == 0, result.output
    organs = json.loads(result.output)["organs"]
    assert len(organs) == N_ORGANS
    for path in input_files(real_case_dir):
        name = path.name[: -len(".nii.gz")]
        assert organs[name]["voxels"] == np.count_nonzero(voxels(path)), name
    listed = (real_case_dir / "nonzero_masks.txt").read_text().split()
    assert sorted(f"{name}.nii.gz" for name, organ in organs.items() if organ["voxels"]) == sorted(listed)


def test_archive_is_small(real_case_dir: Path, via_cli: RoundTrip) -> None:
    files = [p for p in via_cli.archive.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 60 * 1024
    assert len([p for p in (via_cli.archive / "cases" / CASE_ID).rglob("*") if p.is_file()]) <= 7


def test_rib_right_12_inside_sacrum_reads_back_exactly(real_case_dir: Path, via_cli: RoundTrip) -> None:
    rib, sacrum = (voxels(real_case_dir / f"{name}.nii.gz").astype(bool) for name in ("rib_right_12", "sacrum"))
    assert (rib & sacrum).any()
    with MaskArchive(via_cli.archive) as store:
        case = store[CASE_ID]
        assert np.array_equal(case.read_organ("rib_right_12"), rib)
        assert np.array_equal(case.read_organ("sacrum"), sacrum)
        assert "binary_layer" in (case.representation("rib_right_12"), case.representation("sacrum"))


@pytest.fixture(scope="module")
def real_case_data():
    return load_mask_folder(require_real_case())


@pytest.mark.parametrize("suffix", [".h5", ".zarr.zip"])
def test_single_file_archives_are_bit_exact_and_small(
    real_case_dir: Path, real_case_data, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"s0000{suffix}"
    with MaskArchive(path, "w") as store:
        store.add_case(CASE_ID, real_case_data)
    assert path.stat().st_size <= 60 * 1024
    with MaskArchive(path) as store:
        case = store[CASE_ID]
        assert len(case.organs) == N_ORGANS
        for name in case.organs:
            assert np.array_equal(case.read_organ(name), real_case_data.organ_mask(name)), name
