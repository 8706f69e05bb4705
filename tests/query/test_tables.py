"""``archive.stats(organs, fields, wide, include_empty)``, ``archive.query_table`` and ``archive.organ_census``.

Three hand-made cases of 10 mm³ voxels with known voxel counts, so every table is checked exactly:
long and wide shapes, integers kept integer (nullable ``Int64`` where a cell is missing), empty organs
left out unless asked for, filters and their errors, the percentiles of the organ census.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from spacetransformer import Space

from medmask_store import MaskArchive
from medmask_store.errors import InvalidQuery, OrganNotFound
from medmask_store.query import ORGAN_FIELDS

SPACE = Space(shape=(8, 8, 8), spacing=(1.0, 2.0, 5.0))  # 10 mm³ = 0.01 ml per voxel
VOXELS = {  # case: organ -> voxel count (0: an empty organ); "kidney" is not in c2's mapping
    "c0": {"liver": 8, "spleen": 2, "kidney": 0},
    "c1": {"liver": 27, "spleen": 0, "kidney": 4},
    "c2": {"liver": 64, "spleen": 1},
}
META = {"c0": {"age": 40, "sex": "F"}, "c1": {"age": 70, "sex": "M"}, "c2": {"age": 65, "sex": "F"}}


def block(count: int, start: int) -> np.ndarray:
    """A mask holding a cube of ``count`` voxels (a cube number, or 2) from ``start`` on every axis."""
    mask = np.zeros(SPACE.shape, dtype=bool)
    edge = round(count ** (1 / 3))
    if edge**3 == count:
        mask[start : start + edge, start : start + edge, start : start + edge] = True
    else:
        mask.flat[:count] = True
    return mask


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("tables") / "archive.zarr"
    with MaskArchive(path, "w") as store:
        for case_id, organs in VOXELS.items():
            masks = {organ: block(n, start=4 if organ == "spleen" else 0) for organ, n in organs.items()}
            store.add_case(case_id, masks, space=SPACE, meta=META[case_id])
    with MaskArchive(path) as store:
        yield store


def test_long_stats_leave_out_empty_organs_and_keep_integers(archive):
    stats = archive.stats()
    assert list(zip(stats["case_id"], stats["organ"])) == [
        ("c0", "liver"), ("c0", "spleen"), ("c1", "kidney"), ("c1", "liver"), ("c2", "liver"), ("c2", "spleen"),
    ]  # fmt: skip
    assert list(stats.columns) == ["case_id", "organ", *ORGAN_FIELDS, "age", "sex"]
    assert stats["voxels"].tolist() == [8, 2, 4, 27, 64, 1]
    assert stats["volume_ml"].tolist() == pytest.approx([0.08, 0.02, 0.04, 0.27, 0.64, 0.01])
    for field in ("value", "voxels", "bbox_i0", "bbox_k1"):
        assert stats[field].dtype == np.int64, field
    assert stats.to_csv(index=False).splitlines()[1].startswith("c0,liver,1,8,0.08,0,2,0,2,0,2,")  # no 2.0


def test_include_empty_gives_nullable_integers(archive):
    stats = archive.stats(include_empty=True)
    assert len(stats) == 8
    empty = stats[stats["voxels"] == 0]
    assert list(zip(empty["case_id"], empty["organ"])) == [("c0", "kidney"), ("c1", "spleen")]
    assert stats["bbox_i0"].dtype == pd.Int64Dtype() and empty["bbox_i0"].isna().all()
    assert stats["voxels"].dtype == np.int64


def test_organs_and_fields_filter_rows_and_columns(archive):
    stats = archive.stats(organs=["spleen"], fields=["voxels", "sex"])
    assert stats.to_dict("list") == {
        "case_id": ["c0", "c2"],
        "organ": ["spleen", "spleen"],
        "voxels": [2, 1],
        "sex": ["F", "F"],
    }


def test_wide_has_one_row_per_case_with_organ_field_columns(archive):
    wide = archive.stats(wide=True, fields=["voxels", "touches_border", "age"])
    assert list(wide.columns) == [
        "case_id", "kidney.voxels", "kidney.touches_border", "liver.voxels", "liver.touches_border",
        "spleen.voxels", "spleen.touches_border", "age",
    ]  # fmt: skip
    assert wide["case_id"].tolist() == ["c0", "c1", "c2"]
    assert wide["kidney.voxels"].dtype == pd.Int64Dtype()
    assert wide["kidney.voxels"].tolist() == [pd.NA, 4, pd.NA]  # empty in c0, absent from c2
    assert wide["liver.voxels"].dtype == np.int64 and wide["liver.voxels"].tolist() == [8, 27, 64]
    assert wide["liver.touches_border"].tolist() == [True, True, True]
    assert wide["age"].tolist() == [40, 70, 65]


def test_wide_include_empty_keeps_zero_voxels(archive):
    wide = archive.stats(organs=["kidney"], fields=["voxels"], wide=True, include_empty=True)
    assert list(wide.columns) == ["case_id", "kidney.voxels"]
    assert wide["kidney.voxels"].tolist() == [0, 4, pd.NA] and wide["kidney.voxels"].dtype == pd.Int64Dtype()


def test_wide_keeps_the_columns_of_an_organ_asked_for_that_no_case_fills(tmp_path):
    path = tmp_path / "a.zarr"
    with MaskArchive(path, "w") as store:
        store.add_case("c0", {"liver": block(8, 0), "cyst": block(0, 0)}, space=SPACE)
    with MaskArchive(path) as store:
        wide = store.stats(organs=["cyst"], fields=["voxels", "bbox_i0"], wide=True)
    assert list(wide.columns) == ["case_id", "cyst.voxels", "cyst.bbox_i0"]
    assert wide.loc[0, ["cyst.voxels", "cyst.bbox_i0"]].isna().all()


def test_a_metadata_key_named_like_a_statistic_has_one_name_in_every_table(tmp_path):
    path = tmp_path / "a.zarr"
    with MaskArchive(path, "w") as store:
        store.add_case("c0", {"liver": block(8, 0)}, space=SPACE, meta={"voxels": 7})
    with MaskArchive(path) as store:
        for fields in (["meta.voxels"], ["voxels", "meta.voxels"], None):
            long = store.stats(fields=fields)
            wide = store.stats(fields=fields, wide=True)
            assert long["meta.voxels"].tolist() == wide["meta.voxels"].tolist() == [7], fields
        assert store.stats(fields=["meta.voxels"]).columns.tolist() == ["case_id", "organ", "meta.voxels"]


def test_unknown_organ_and_field_are_refused_with_suggestions(archive):
    with pytest.raises(OrganNotFound, match=r"no case has an organ 'livr' \(did you mean liver\?\)"):
        archive.stats(organs=["livr"])
    with pytest.raises(
        InvalidQuery,
        match=r"unknown field 'volume' \(did you mean volume_ml, value\?\); organ fields: .*; metadata fields: age, sex$",
    ):
        archive.stats(fields=["volume"])


def test_query_table_gives_the_matching_cases_columns(archive):
    table = archive.query_table("age >= 65", ["liver.volume_ml", "age", "spleen.voxels"])
    assert list(table.columns) == ["case_id", "liver.volume_ml", "age", "spleen.voxels"]
    assert table["case_id"].tolist() == ["c1", "c2"]
    assert table["liver.volume_ml"].tolist() == pytest.approx([0.27, 0.64])
    assert table["spleen.voxels"].tolist() == [pd.NA, 1]
    assert archive.query_table("age >= 65", ["spleen.voxels"], include_empty=True)["spleen.voxels"].tolist() == [0, 1]


def test_query_table_without_matches_has_its_columns(archive):
    table = archive.query_table("age > 100", ["liver.voxels", "sex"])
    assert list(table.columns) == ["case_id", "liver.voxels", "sex"] and table.empty


@pytest.mark.parametrize(
    ("column", "error", "message"),
    [
        ("liver.volum", InvalidQuery, r"unknown organ field 'volum' in 'liver.volum' \(did you mean volume_ml"),
        ("lung.voxels", OrganNotFound, r"no case has an organ 'lung'"),
        ("ag", InvalidQuery, r"unknown column 'ag' \(did you mean age\?\): write organ.field"),
    ],
)
def test_query_table_refuses_unknown_columns(archive, column, error, message):
    with pytest.raises(error, match=message):
        archive.query_table("age > 0", [column])


def test_organ_census_counts_non_empty_cases_and_volume_percentiles(archive):
    census = archive.organ_census()
    assert list(census.columns) == ["organ", "cases", "volume_ml_p5", "volume_ml_p50", "volume_ml_p95"]
    assert census["organ"].tolist() == ["kidney", "liver", "spleen"]
    assert census["cases"].tolist() == [1, 3, 2] and census["cases"].dtype == np.int64
    liver = census.set_index("organ").loc["liver"]
    expected = np.percentile([0.08, 0.27, 0.64], [5, 50, 95])
    assert [liver["volume_ml_p5"], liver["volume_ml_p50"], liver["volume_ml_p95"]] == pytest.approx(expected, abs=1e-3)
