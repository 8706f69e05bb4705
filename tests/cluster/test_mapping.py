"""archive.map_cases and `medmask-store map`: a function over cases on Dask, one row per case, failures per case."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from case_functions import liver_voxels, organ_voxels
from distributed import Client
from helpers import ok, run
from local_cluster import dask_client  # noqa: F401  (a fixture)

from medmask_store import MaskArchive, StorageSettings
from medmask_store.phantom import make_phantom

SETTINGS = StorageSettings(chunk_size=16, label_level=1, layer_level=1)
NO_LIVER = "ct9"  # a case without a liver: liver_voxels fails on it
NO_LIVER_ERROR = "OrganNotFound: case 'ct9' has no organ 'liver'; it has 1 organs"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """Three phantom cases (ct0, ct1, ct2, each with rib_right_12 inside its liver) and ct9 (spleen only)."""
    path = tmp_path_factory.mktemp("map") / "cases.zarr"
    masks = {f"ct{seed}": make_phantom(shape=(32, 30, 20), n_organs=3, n_empty=1, seed=seed)[0] for seed in range(3)}
    masks[NO_LIVER] = {"spleen": np.pad(np.ones((4, 4, 4), bool), ((2, 26), (2, 24), (2, 14)))}
    with MaskArchive(path, "w", SETTINGS) as archive:
        for case_id, case_masks in masks.items():
            archive.add_case(case_id, case_masks, space=make_phantom(shape=(32, 30, 20), n_organs=0, n_empty=0)[1])
    return path, masks


def voxel_rows(masks: dict[str, dict[str, np.ndarray]], case_ids: list[str]) -> pd.DataFrame:
    """What organ_voxels over ``case_ids`` must give, counted with numpy on the masks written."""
    rows = [{"case_id": c, **{n: int(m.sum()) for n, m in masks[c].items()}, "error": None} for c in case_ids]
    return pd.DataFrame(rows)


def test_a_dict_per_case_on_a_cluster(stored, dask_client: Client) -> None:  # noqa: F811
    path, masks = stored
    with MaskArchive(path) as archive:
        frame = archive.map_cases(organ_voxels, dask_client)
    expected = voxel_rows(masks, ["ct0", "ct1", "ct2", NO_LIVER])  # spleen first (ct9's only organ): the order seen
    assert list(frame.columns) == ["case_id", "liver", "spleen", "kidney_left", "rib_right_12", "kidney_right", "error"]
    pd.testing.assert_frame_equal(frame, expected[frame.columns], check_dtype=False)


def test_a_failing_case_is_reported_and_the_others_go_on(stored, dask_client: Client) -> None:  # noqa: F811
    path, masks = stored
    with MaskArchive(path) as archive:
        frame = archive.map_cases(liver_voxels, dask_client, cases=[NO_LIVER, "ct1", "absent"])
    assert list(frame.columns) == ["case_id", "result", "error"]
    assert frame["case_id"].tolist() == [NO_LIVER, "ct1", "absent"]
    assert frame["result"].iloc[1] == masks["ct1"]["liver"].sum() and frame["result"].iloc[[0, 2]].isna().all()
    assert frame["error"].tolist() == [NO_LIVER_ERROR, None, f"CaseNotFound: no case 'absent' in {path}"]


def test_a_result_using_a_reserved_column_is_an_error_of_its_case(stored, dask_client: Client) -> None:  # noqa: F811
    path, _ = stored
    with MaskArchive(path) as archive:
        frame = archive.map_cases(lambda case: {"error": case.case_id}, dask_client, cases=["ct0"])
    expected = "ValueError: the result uses the reserved column name(s) 'error'"
    assert frame.to_dict("records") == [{"case_id": "ct0", "error": expected}]


def test_local_processes_by_default_on_the_cases_a_query_selects(stored) -> None:
    path, masks = stored
    with MaskArchive(path) as archive:
        frame = archive.map_cases(lambda case: {"organs": len(case.organs)}, cases="liver.voxels > 0")
        assert archive.map_cases(organ_voxels, cases=[]).columns.tolist() == ["case_id", "error"]
    assert frame.to_dict("records") == [{"case_id": c, "organs": len(masks[c]), "error": None} for c in ("ct0", "ct1", "ct2")]


def test_cli_prints_one_row_per_case(stored, dask_client: Client) -> None:  # noqa: F811
    path, masks = stored
    address = dask_client.scheduler.address
    result = ok("map", path, "case_functions:organ_voxels", "--scheduler", address, "--csv", "--cases", "spleen.voxels > 0")
    expected = voxel_rows(masks, ["ct0", "ct1", "ct2", NO_LIVER])
    frame = pd.read_csv(io.StringIO(result.stdout))  # an empty error cell reads as NaN
    assert frame.columns[-1] == "error" and frame["error"].isna().all()
    pd.testing.assert_frame_equal(frame.iloc[:, :-1], expected[frame.columns[:-1]], check_dtype=False)
    table = ok("map", path, "case_functions:organ_voxels", "--scheduler", address).stdout
    assert table.splitlines()[0].split() == frame.columns.tolist()


def test_cli_exit_code_1_when_a_case_failed(stored, dask_client: Client) -> None:  # noqa: F811
    path, masks = stored
    result = run("map", path, "case_functions:liver_voxels", "--json", "--scheduler", dask_client.scheduler.address)
    assert result.exit_code == 1 and result.stderr == "1 of 4 case(s) failed\n"
    rows = json.loads(result.stdout)
    assert rows[3] == {"case_id": NO_LIVER, "result": None, "error": NO_LIVER_ERROR}
    assert [row["result"] for row in rows[:3]] == [masks[c]["liver"].sum() for c in ("ct0", "ct1", "ct2")]


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("case_functions", "expected MODULE:FUNCTION, got 'case_functions'"),
        ("case_functions:nothing", "cannot import case_functions:nothing: module 'case_functions' has no attribute 'nothing'"),
        ("no_such_module:fn", "cannot import no_such_module:fn: No module named 'no_such_module'"),
        ("case_functions:np", "case_functions:np is not a function"),
    ],
)
def test_cli_refuses_what_is_not_a_function(stored, function: str, message: str) -> None:
    path, _ = stored
    result = run("map", path, function)
    assert result.exit_code == 2 and message in " ".join(result.output.split())


def test_cli_csv_or_json(stored) -> None:
    path, _ = stored
    result = run("map", path, "case_functions:organ_voxels", "--csv", "--json")
    assert result.exit_code == 2 and "pass --csv or --json, not both" in result.output
