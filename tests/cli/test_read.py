"""``medmask-store read ARCHIVE CASE [--organ NAME] [--region ... | --mm-lps ... | --mm-ras ...] --out FILE``, through
click's CliRunner, on every backend: the written voxels equal the Python API's result and a NIfTI
output carries the region's (or the organ crop's) affine."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import ok, run
from spacetransformer import Space

from medmask_store import MaskArchive, StorageSettings
from medmask_store.cli.main import main
from medmask_store.model.geometry import nifti_affine
from medmask_store.model.region import WorldBox, voxel_box
from medmask_store.phantom import make_phantom

CASE = "ct1"


def oblique_space(shape: tuple[int, int, int]) -> Space:
    """Rotated 17 degrees about the third axis, anisotropic, negative origin coordinates."""
    a = np.deg2rad(17.0)
    c, s = float(np.cos(a)), float(np.sin(a))
    return Space(shape=shape, spacing=(0.9, 1.1, 3.0), origin=(-210.5, -12.25, -305.0),
                 x_orientation=(c, s, 0.0), y_orientation=(-s, c, 0.0), z_orientation=(0.0, 0.0, 1.0))


@pytest.fixture
def stored(archive_path: Path) -> Path:
    """A phantom (binary layer rib_right_12 inside liver, one empty organ) in an oblique Space."""
    masks, space = make_phantom(shape=(34, 28, 22), n_organs=4, n_empty=1, seed=11)
    with MaskArchive(archive_path, "w", StorageSettings(chunk_size=8, label_level=1, layer_level=1)) as archive:
        archive.add_case(CASE, masks, space=oblique_space(space.shape))
    return archive_path


def mm_box(space: Space, low, high) -> tuple[str, WorldBox]:
    """The --mm-lps text and WorldBox of the world box around the centres of an index box (corners inclusive)."""
    corners = space.to_world_transform.apply_point(np.array(list(itertools.product(*zip(low, high))), dtype=float))
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    text = ",".join(f"{a!r}:{b!r}" for a, b in zip(lo.tolist(), hi.tolist()))
    return text, WorldBox(tuple(lo.tolist()), tuple(hi.tolist()))


def as_ras(lps_text: str) -> str:
    """The --mm-ras text of the box an --mm-lps text gives: x and y negated (the ranges reversed)."""
    ranges = [tuple(float(v) for v in part.split(":")) for part in lps_text.split(",")]
    ras = [(-hi, -lo) for lo, hi in ranges[:2]] + ranges[2:]
    return ",".join(f"{a!r}:{b!r}" for a, b in ras)


def api_result(path: Path, organ: str | None, region) -> tuple[np.ndarray, Space]:
    """What the read command should write: the Python API's voxels and Space."""
    with MaskArchive(path) as archive:
        case = archive[CASE]
        if organ and region is None:
            return case.read_organ(organ, crop=True)
        if organ:
            return case.read_organ(organ, region=region), case.region_space(region)
        if region is not None:
            return case.read_region(region), case.region_space(region)
        return case.read_labels(), case.space


def read_args(kind: str, space: Space) -> tuple[list[str], str | None, object]:
    """CLI options, organ and API region of each kind of read."""
    region_text, region = "2:20,5:27,8:19", ((2, 20), (5, 27), (8, 19))  # parts of liver and rib_right_12
    mm_text, world_box = mm_box(space, (4, 2, 12), (25, 20, 20))
    return {
        "labels": ([], None, None),
        "region": (["--region", region_text], None, region),
        "mm": (["--mm-lps", mm_text], None, world_box),
        "mm_ras": (["--mm-ras", as_ras(mm_text)], None, world_box),
        "organ": (["--organ", "liver"], "liver", None),
        "layer_organ": (["--organ", "rib_right_12"], "rib_right_12", None),
        "organ_region": (["--organ", "liver", "--region", region_text], "liver", region),
        "layer_organ_mm": (["--organ", "rib_right_12", "--mm-lps", mm_text], "rib_right_12", world_box),
    }[kind]


KINDS = ["labels", "region", "mm", "mm_ras", "organ", "layer_organ", "organ_region", "layer_organ_mm"]


def case_space(path: Path) -> Space:
    with MaskArchive(path) as archive:
        return archive[CASE].space


@pytest.mark.parametrize("kind", KINDS)
def test_npy_output_equals_the_api_result(stored: Path, tmp_path: Path, kind: str) -> None:
    args, organ, region = read_args(kind, case_space(stored))
    out = tmp_path / "out.npy"
    result = ok("read", stored, CASE, *args, "--out", out)
    expected, _ = api_result(stored, organ, region)
    got = np.load(out)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert expected.any(), "the chosen read must hold voxels"
    assert f"shape {expected.shape}" in result.output
    assert f"{np.count_nonzero(expected)} non-zero voxels" in result.output


@pytest.mark.parametrize(
    "kind, suffix", [(kind, ".nii.gz") for kind in KINDS] + [("region", ".nii"), ("organ", ".nii")]
)
def test_nifti_output_has_the_api_voxels_and_the_regions_affine(
    stored: Path, tmp_path: Path, kind: str, suffix: str
) -> None:
    space = case_space(stored)
    args, organ, region = read_args(kind, space)
    out = tmp_path / f"out{suffix}"
    ok("read", stored, CASE, *args, "--out", out)
    expected, expected_space = api_result(stored, organ, region)
    image = nib.load(out)
    voxels = np.asanyarray(image.dataobj)
    assert voxels.shape == expected.shape
    np.testing.assert_array_equal(voxels, expected.astype(np.uint8) if expected.dtype == np.bool_ else expected)
    assert np.allclose(image.affine, nifti_affine(expected_space), rtol=0, atol=1e-5)
    # independently of the API's Space: voxel (0, 0, 0) of the output is the first voxel of the region
    if organ and region is None:
        with MaskArchive(stored) as archive:
            start = [a for a, _ in archive[CASE].stats[organ].bbox]
    elif isinstance(region, WorldBox):
        start = [s.start for s in voxel_box(region, space)]
    elif region is not None:
        start = [a for a, _ in region]
    else:
        start = [0, 0, 0]
    assert np.allclose(image.affine @ [0, 0, 0, 1], nifti_affine(space) @ [*start, 1], rtol=0, atol=1e-5)
    assert np.allclose(image.affine[:3, :3], nifti_affine(space)[:3, :3], rtol=0, atol=1e-6)


def test_mm_read_covers_the_voxel_box_it_was_built_around(stored: Path, tmp_path: Path) -> None:
    """--mm-lps with an axis-aligned world box in the oblique case: the output holds the index box the box was
    built around (oblique: the voxel-aligned box around the world box, so possibly more)."""
    space = case_space(stored)
    text, _ = mm_box(space, (10, 8, 4), (12, 9, 6))
    out = tmp_path / "out.npy"
    ok("read", stored, CASE, "--mm-lps", text, "--out", out)
    got = np.load(out)
    assert all(g >= n for g, n in zip(got.shape, (3, 2, 3)))
    # a tiny box around one voxel centre: exactly that voxel
    centre = space.to_world_transform.apply_point(np.array([[10.0, 8.0, 4.0]]))[0]
    tiny = ",".join(f"{c - 1e-3!r}:{c + 1e-3!r}" for c in centre.tolist())
    ok("read", stored, CASE, "--mm-lps", tiny, "--out", out)
    with MaskArchive(stored) as archive:
        expected = archive[CASE].read_labels()[10:11, 8:9, 4:5]
    np.testing.assert_array_equal(np.load(out), expected)


# -- errors: non-zero exit, a clear message, no traceback, no output file ---------------------


def failed(*args: object) -> str:
    result = run(*args)
    assert result.exit_code != 0, result.output
    return result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--region", "0:5,0:5,0:5", "--mm-lps", "0:1,0:1,0:1"], "not --region and --mm-lps"),
        (["--mm-lps", "0:1,0:1,0:1", "--mm-ras", "0:1,0:1,0:1"], "not --mm-lps and --mm-ras"),
        (["--mm-lps", "0:1,0:1,0:1", "--mm", "0:1,0:1,0:1"], "not --mm-lps and --mm"),
        (["--region", "0:5,0:5"], "three start:stop ranges"),
        (["--region", "0:5,0:5,0:5:7"], "three start:stop ranges"),
        (["--region", "a:5,0:5,0:5"], "--region"),
        (["--region", "0.5:5,0:5,0:5"], "--region"),
        (["--mm-lps", "x:1,0:1,0:1"], "--mm-lps"),
        (["--mm-ras", "0:1,0:1"], "--mm-ras"),
        (["--region", "0:35,0:5,0:5"], "axis 0"),
        (["--region", "0:5,4:4,0:5"], "axis 1"),
        (["--mm-lps", "1e5:2e5,1e5:2e5,1e5:2e5"], "no voxel centre"),
        (["--mm-ras", "1e5:2e5,1e5:2e5,1e5:2e5"], "no voxel centre"),
        (["--organ", "livr"], "did you mean liver"),
        (["--organ", "no_such_organ_at_all"], "OrganNotFound"),
        (["--organ", "stomach"], "no voxels"),  # the empty organ: nothing to crop to
    ],
)
def test_bad_reads_fail_cleanly(stored: Path, tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out.npy"
    output = failed("read", stored, CASE, *args, "--out", out)
    assert message in output
    assert not out.exists()


@pytest.mark.parametrize("name", ["out.txt", "out.nii.bz2", "out.npz", "out"])
def test_bad_output_suffix_fails_cleanly(stored: Path, tmp_path: Path, name: str) -> None:
    output = failed("read", stored, CASE, "--out", tmp_path / name)
    assert ".npy, .nii or .nii.gz" in output
    assert not (tmp_path / name).exists()


def test_missing_out_and_missing_case_fail_cleanly(stored: Path, tmp_path: Path) -> None:
    assert "--out" in failed("read", stored, CASE)
    assert "no case 'ct9'" in failed("read", stored, "ct9", "--out", tmp_path / "out.npy")


@pytest.mark.parametrize("option", ["--mm-lps", "--mm-ras"])
@pytest.mark.parametrize("mm", ["-inf:inf,-inf:inf,-inf:inf", "nan:1,0:1,0:1"], ids=["inf", "nan"])
def test_non_finite_mm_fails_cleanly(stored: Path, tmp_path: Path, option: str, mm: str) -> None:
    result = CliRunner().invoke(main, ["read", str(stored), CASE, option, mm, "--out", str(tmp_path / "o.npy")])
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_deprecated_mm_reads_the_lps_box_with_a_warning(stored: Path, tmp_path: Path) -> None:
    """--mm is the old name of --mm-lps: the same voxels, and a warning naming both frames' options."""
    text, _ = mm_box(case_space(stored), (4, 2, 12), (25, 20, 20))
    ok("read", stored, CASE, "--mm-lps", text, "--out", tmp_path / "lps.npy")
    result = CliRunner().invoke(main, ["read", str(stored), CASE, "--mm", text, "--out", str(tmp_path / "old.npy")])
    assert result.exit_code == 0, result.output
    assert "warning: --mm is deprecated; it is --mm-lps (LPS millimetres); for nibabel's RAS pass --mm-ras" in result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "old.npy"), np.load(tmp_path / "lps.npy"))
