"""Dask on archives in object storage, against the real SeaweedFS server: a 2-process LocalCluster imports
a dataset straight into s3://, maps a function over its cases, and computes lazy arrays of them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from distributed import Client
from s3server import S3Service

from medmask_store import MaskArchive

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
from case_functions import organ_voxels  # noqa: E402  (importable by name in the workers)
from local_cluster import dask_client  # noqa: E402, F401  (a fixture)
from test_import import GOOD, Dataset, assert_bad_case_reported, dataset  # noqa: E402, F401  (dataset: a fixture)


def options(s3: S3Service) -> dict[str, object]:
    return {"endpoint": s3.endpoint, "access_key_id": s3.key, "secret_access_key": s3.secret, "region": s3.region}


def test_a_cluster_imports_into_and_computes_over_an_s3_archive(
    s3_server: S3Service, s3_prefix: str, dataset: Dataset, dask_client: Client  # noqa: F811
) -> None:
    root, masks = dataset
    url = s3_prefix + "cluster.zarr"
    proxy = s3_server.proxy
    with MaskArchive(url, "a", storage_options=options(s3_server)) as archive:
        proxy.reset()
        report = archive.import_cases([root], client=dask_client)
        # each worker wrote its own cases: this process sent no case's arrays
        uploads = {r.path.split("/cases/")[1].split("/")[0] for r in proxy.requests if r.method == "PUT" and "/cases/" in r.path}
    assert_bad_case_reported(report, root)
    assert uploads == set(GOOD) and report.jobs == 2
    archive = MaskArchive(url, storage_options=options(s3_server))
    assert archive.case_ids() == GOOD
    for case_id in GOOD:
        for name, mask in masks[case_id].items():
            assert np.array_equal(archive[case_id].read_organ(name), mask), (case_id, name)
    table = archive.map_cases(organ_voxels, client=dask_client).set_index("case_id")
    assert table["error"].isna().all()
    for case_id in GOOD:
        assert {n: table.loc[case_id, n] for n in masks[case_id]} == {n: m.sum() for n, m in masks[case_id].items()}
    lazy = archive["ct1"].to_dask(organ="rib_right_12")  # an organ inside another: its layer, exactly
    assert np.array_equal(lazy.compute(scheduler=dask_client.get), masks["ct1"]["rib_right_12"])
