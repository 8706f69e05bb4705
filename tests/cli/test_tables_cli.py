"""Tables on the command line: ``stats`` filters / ``--wide`` / ``--include-empty``, ``query --columns``, ``organs``,
``--json`` on every command that prints data (ls, stats, organs, query, verify, import, convert), and a query
matching nothing (a message on stderr, exit 0). Each output equals the API's table.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import ok, run, write_case_folder

from medmask_store import MaskArchive
from medmask_store.phantom import make_phantom

SHAPE = (16, 16, 16)
CASES = {
    "k0": (6, 1, {"age": 71, "sex": "F"}),
    "k1": (5, 2, {"age": 45, "sex": "M"}),
    "k2": (7, 0, {"age": 66, "sex": "F"}),
}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tables") / "archive.zarr"
    with MaskArchive(path, "w") as store:
        for i, (case_id, (n_organs, n_empty, meta)) in enumerate(CASES.items()):
            masks, space = make_phantom(SHAPE, n_organs=n_organs, n_empty=n_empty, seed=7 + i)
            store.add_case(case_id, masks, space=space, meta=meta)
    return path


def api(archive: Path, method: str, *args: object, **kwargs: object) -> pd.DataFrame:
    with MaskArchive(archive) as store:
        return getattr(store, method)(*args, **kwargs)


def test_stats_filters_and_wide_csv_equal_the_api(archive):
    expected = api(archive, "stats", ["liver", "spleen"], ["voxels", "bbox_i0", "age"], wide=True)
    out = ok("stats", archive, "--organs", "liver,spleen", "--fields", "voxels,bbox_i0,age", "--wide", "--csv").stdout
    assert out == expected.to_csv(index=False)
    assert out.splitlines()[0] == "case_id,liver.voxels,liver.bbox_i0,spleen.voxels,spleen.bbox_i0,age"
    assert ".0," not in out  # integers print as integers


def test_stats_json_is_records_with_null_for_missing(archive):
    expected = api(archive, "stats", wide=True, fields=["voxels"])
    records = json.loads(ok("stats", archive, "--wide", "--fields", "voxels", "--json").stdout)
    assert len(records) == len(CASES) and [r["case_id"] for r in records] == list(CASES)
    assert records == json.loads(expected.to_json(orient="records"))
    assert any(value is None for record in records for value in record.values())  # an organ k2 lacks


def test_stats_leaves_out_empty_organs_unless_asked(archive):
    default = pd.read_csv(io.StringIO(ok("stats", archive, "--csv").stdout))
    everything = pd.read_csv(io.StringIO(ok("stats", archive, "--csv", "--include-empty").stdout))
    assert (default["voxels"] > 0).all() and len(default) == len(api(archive, "stats"))
    assert len(everything) - len(default) == sum(n_empty for _, n_empty, _ in CASES.values())


def test_stats_refuses_csv_with_json(archive):
    result = run("stats", archive, "--csv", "--json")
    assert result.exit_code == 2 and "pass --csv or --json, not both" in result.output


def test_stats_unknown_organ_exits_1_naming_it(archive):
    result = run("stats", archive, "--organs", "livr")
    assert result.exit_code == 1
    assert "OrganNotFound: no case has an organ 'livr' (did you mean liver?)" in result.stderr


def test_organs_lists_cases_and_volume_percentiles(archive):
    expected = api(archive, "organ_census")
    assert ok("organs", archive, "--csv").stdout == expected.to_csv(index=False)
    records = json.loads(ok("organs", archive, "--json").stdout)
    assert [set(r) for r in records[:1]] == [{"organ", "cases", "volume_ml_p5", "volume_ml_p50", "volume_ml_p95"}]
    liver = next(r for r in records if r["organ"] == "liver")
    assert liver["cases"] == 3 and liver["volume_ml_p5"] <= liver["volume_ml_p50"] <= liver["volume_ml_p95"]
    text = ok("organs", archive).stdout.splitlines()
    assert text[0].split() == ["organ", "cases", "volume_ml_p5", "volume_ml_p50", "volume_ml_p95"]
    assert len(text) == len(expected) + 1


def test_query_columns_prints_the_matching_cases_rows(archive):
    expected = api(archive, "query_table", "age >= 60", ["liver.volume_ml", "age"])
    assert expected["case_id"].tolist() == ["k0", "k2"]
    assert ok("query", archive, "age >= 60", "--columns", "liver.volume_ml,age", "--csv").stdout == expected.to_csv(
        index=False
    )
    records = json.loads(ok("query", archive, "age >= 60", "--columns", "liver.volume_ml,age", "--json").stdout)
    assert records == json.loads(expected.to_json(orient="records"))
    text = ok("query", archive, "age >= 60", "--columns", "liver.volume_ml,age").stdout.splitlines()
    assert text[0].split() == ["case_id", "liver.volume_ml", "age"] and len(text) == 3


def test_query_columns_refuses_an_unknown_field(archive):
    result = run("query", archive, "age > 0", "--columns", "liver.volum")
    assert result.exit_code == 1
    assert "InvalidQuery: unknown organ field 'volum' in 'liver.volum' (did you mean volume_ml" in result.stderr


@pytest.mark.parametrize(
    ("options", "stdout"),
    [
        ((), ""),
        (("--json",), "[]\n"),
        (("--columns", "age", "--json"), "[]\n"),
        (("--columns", "age", "--csv"), "case_id,age\n"),
    ],
)
def test_query_matching_nothing_says_so_on_stderr_and_exits_0(archive, options, stdout):
    result = ok("query", archive, "age > 1000", *options)
    assert result.stdout == stdout
    assert result.stderr == "no case matches 'age > 1000'\n"


def test_ls_json(archive):
    assert json.loads(ok("ls", archive, "--json").stdout) == list(CASES)


def test_verify_json(archive):
    assert json.loads(ok("verify", archive, "--json", "--quiet").stdout) == {"cases": 3, "problems": []}


def test_convert_json(archive, tmp_path):
    destination = tmp_path / "copy.h5"
    summary = json.loads(ok("convert", archive, destination, "--json", "--quiet").stdout)
    assert summary == {"source": str(archive), "destination": str(destination), "cases": 3}


def test_import_json_summary_and_dry_run_plan(tmp_path):
    write_case_folder(tmp_path / "src" / "p0", seed=1)
    write_case_folder(tmp_path / "src" / "p1", seed=2)
    target = tmp_path / "new.zarr"
    plan = json.loads(ok("import", target, tmp_path / "src", "--dry-run", "--json").stdout)
    assert [(p["case_id"], p["action"]) for p in plan] == [("p0", "import"), ("p1", "import")]
    summary = json.loads(ok("import", target, tmp_path / "src", "--json", "--jobs", "1").stdout)
    assert {k: summary[k] for k in ("archive", "imported", "skipped", "failed", "jobs")} == {
        "archive": str(target), "imported": ["p0", "p1"], "skipped": [], "failed": {}, "jobs": 1,
    }  # fmt: skip
    again = json.loads(ok("import", target, tmp_path / "src", "--json", "--jobs", "1").stdout)
    assert again["imported"] == [] and again["skipped"] == ["p0", "p1"]
