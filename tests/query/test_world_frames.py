"""World coordinates name their frame: an organ's centroid in LPS (the Space's, DICOM's) and in RAS
(NIfTI's) agrees with nibabel's own computation from the file's affine, through the API and the CLI
(the "colon check" of issue 17: LPS (37.1, -111.5, 340.0) is nibabel's (-37.1, 111.5, 340.0))."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import box, ok

from medmask_store import MaskArchive, WorldBox
from medmask_store.errors import InvalidRegion

CASE = "s0001"
SHAPE = (40, 36, 24)
# A RAS affine as TotalSegmentator writes them (x and y flipped), tilted 20 degrees about x (gantry tilt).
TILT = np.deg2rad(20.0)
AFFINE = np.array([
    [-1.5, 0.0, 0.0, 30.0],
    [0.0, -1.5 * np.cos(TILT), -3.0 * np.sin(TILT), 80.0],
    [0.0, -1.5 * np.sin(TILT), 3.0 * np.cos(TILT), 300.0],
    [0.0, 0.0, 0.0, 1.0],
])  # fmt: skip
MASKS = {"colon": box(SHAPE, (25, 38), (20, 33), (3, 14)), "liver": box(SHAPE, (5, 17), (2, 12), (10, 22))}
OLD_NAME_WARNING = (
    "colon.centroid_x_mm is deprecated: world coordinates name their frame; it reads colon.centroid_lps_x_mm "
    "(LPS, as before), and colon.centroid_ras_x_mm is the RAS one (NIfTI, nibabel: x and y negated)"
)


def nibabel_centroid(organ: str) -> np.ndarray:
    """The organ's centroid in RAS millimetres as nibabel users compute it: the affine applied to the mean index."""
    return nib.affines.apply_affine(AFFINE, np.argwhere(MASKS[organ]).mean(axis=0))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One case imported from a folder of NIfTI masks (RAS affine)."""
    root = tmp_path_factory.mktemp("frames")
    folder = root / CASE
    folder.mkdir()
    for organ, mask in MASKS.items():
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), folder / f"{organ}.nii.gz")
    path = root / "archive.zarr"
    ok("import", path, folder, "--jobs", "1")
    return path


def test_the_affine_puts_the_colon_on_the_patients_left() -> None:
    """The premise of the checks below: RAS x < 0 for the colon (so LPS x > 0), the reverse for the liver."""
    assert nibabel_centroid("colon")[0] < 0 < nibabel_centroid("liver")[0]


@pytest.mark.parametrize("organ", list(MASKS))
def test_organ_stats_give_the_centroid_in_both_frames(archive: Path, organ: str) -> None:
    ras = nibabel_centroid(organ)
    with MaskArchive(archive) as store:
        stats = store[CASE].stats[organ]
    np.testing.assert_allclose(stats.centroid_ras_mm, ras, rtol=0, atol=5e-3)
    assert stats.centroid_ras_mm == (-stats.centroid_lps_mm[0], -stats.centroid_lps_mm[1], stats.centroid_lps_mm[2])
    assert stats.to_json()["centroid_ras_mm"] == list(stats.centroid_ras_mm)
    assert stats.to_json()["centroid_lps_mm"] == list(stats.centroid_lps_mm)


def test_stats_table_has_frame_named_centroid_columns(archive: Path) -> None:
    with MaskArchive(archive) as store:
        table = store.stats().set_index("organ")
    for organ in MASKS:
        ras = nibabel_centroid(organ)
        lps = ras * (-1, -1, 1)
        got_ras = table.loc[organ, ["centroid_ras_x_mm", "centroid_ras_y_mm", "centroid_ras_z_mm"]].to_numpy(float)
        got_lps = table.loc[organ, ["centroid_lps_x_mm", "centroid_lps_y_mm", "centroid_lps_z_mm"]].to_numpy(float)
        np.testing.assert_allclose(got_ras, ras, rtol=0, atol=5e-3)
        np.testing.assert_allclose(got_lps, lps, rtol=0, atol=5e-3)
    assert not {"centroid_x_mm", "centroid_y_mm", "centroid_z_mm"} & set(table.columns)


def test_queries_take_either_frame(archive: Path) -> None:
    with MaskArchive(archive) as store:
        assert store.query("colon.centroid_ras_x_mm < 0 and colon.centroid_lps_x_mm > 0") == [CASE]
        assert store.query("liver.centroid_ras_x_mm < 0") == []
        assert store.query("colon.centroid_ras_y_mm == -colon.centroid_lps_y_mm") == [CASE]


def test_old_centroid_names_read_lps_with_a_warning(archive: Path) -> None:
    with MaskArchive(archive) as store, pytest.warns(FutureWarning) as caught:
        assert store.query("colon.centroid_x_mm > 0 and colon.centroid_x_mm < 1000") == [CASE]
        assert store.query("liver.centroid_x_mm > 0") == []
    renames = [str(w.message) for w in caught if w.category is FutureWarning]
    assert renames == [OLD_NAME_WARNING, OLD_NAME_WARNING.replace("colon", "liver")]  # once per query, not per use


def test_ras_world_box_reads_the_voxels_nibabel_places_there(archive: Path) -> None:
    """A box around the RAS position nibabel gives voxel (30, 25, 7) holds exactly that voxel."""
    centre = nib.affines.apply_affine(AFFINE, [30, 25, 7])
    ras_box = WorldBox.from_ras(tuple(centre - 1e-3), tuple(centre + 1e-3))
    lps_centre = centre * (-1, -1, 1)
    with MaskArchive(archive) as store:
        case = store[CASE]
        assert case.read_organ("colon", region=ras_box).shape == (1, 1, 1)
        # the region's origin is the voxel's LPS centre (to the precision of the file's float32 affine)
        assert case.region_space(ras_box).origin == pytest.approx(tuple(lps_centre), abs=1e-4)
        lps_box = WorldBox(tuple(lps_centre - 1e-3), tuple(lps_centre + 1e-3))
        np.testing.assert_array_equal(case.read_region(ras_box), case.read_region(lps_box))


@pytest.mark.parametrize("corner", [(1.0, 2.0), ("a", 0.0, 0.0), None])
def test_ras_world_box_refuses_a_bad_corner(corner: object) -> None:
    with pytest.raises(InvalidRegion, match=r"WorldBox.from_ras takes two corners of 3 numbers \(x, y, z in RAS mm\)"):
        WorldBox.from_ras(corner, (0.0, 0.0, 0.0))  # type: ignore[arg-type]


def test_cli_prints_centroids_in_both_frames(archive: Path) -> None:
    table = pd.read_csv(io.StringIO(ok("stats", archive, "--csv").output)).set_index("organ")
    ras = nibabel_centroid("colon")
    np.testing.assert_allclose(
        table.loc["colon", ["centroid_ras_x_mm", "centroid_ras_y_mm", "centroid_ras_z_mm"]].to_numpy(float), ras,
        rtol=0, atol=5e-3,
    )  # fmt: skip
    info = json.loads(ok("info", archive, CASE, "--json").output)["organs"]["colon"]
    np.testing.assert_allclose(info["centroid_ras_mm"], ras, rtol=0, atol=5e-3)
    np.testing.assert_allclose(info["centroid_lps_mm"], ras * (-1, -1, 1), rtol=0, atol=5e-3)
    assert ok("query", archive, "colon.centroid_ras_x_mm < 0").output == f"{CASE}\n"
    old = ok("query", archive, "colon.centroid_x_mm > 0")
    assert old.stdout == f"{CASE}\n" and f"warning: {OLD_NAME_WARNING}" in old.stderr
    assert "centroid_lps_* are LPS (DICOM, ITK, Slicer), centroid_ras_* RAS" in " ".join(
        ok("query", archive, "--help").output.split()
    )


def test_cli_reads_a_ras_box_as_nibabel_places_it(archive: Path, tmp_path: Path) -> None:
    centre = nib.affines.apply_affine(AFFINE, [30, 25, 7])
    text = ",".join(f"{c - 1e-3!r}:{c + 1e-3!r}" for c in centre.tolist())
    out = tmp_path / "voxel.nii.gz"
    ok("read", archive, CASE, "--mm-ras", text, "--out", out)
    image = nib.load(out)
    assert image.shape == (1, 1, 1) and np.asanyarray(image.dataobj)[0, 0, 0] == 1  # colon's value
    np.testing.assert_allclose(image.affine[:3, 3], centre, rtol=0, atol=1e-4)
