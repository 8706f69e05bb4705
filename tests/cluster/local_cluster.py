"""The test session's one Dask LocalCluster (2 worker processes, 1 thread each), started by the first test
that asks for ``dask_client`` and closed when pytest ends. Test modules import the fixture from here."""

from __future__ import annotations

import warnings

import pytest
from distributed import Client, LocalCluster

CLIENT = pytest.StashKey[Client]()


@pytest.fixture
def dask_client(request: pytest.FixtureRequest) -> Client:
    """A client of the session's LocalCluster (one cluster, however many modules use it: ~3 s to start)."""
    config = request.config
    if CLIENT not in config.stash:
        with warnings.catch_warnings():  # the scheduler's HTTP server (health, metrics) takes another port then
            warnings.filterwarnings("ignore", "Port 8787 is already in use", UserWarning)
            cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
        config.add_cleanup(cluster.close)
        client = config.stash[CLIENT] = Client(cluster)
        config.add_cleanup(client.close)  # cleanups run last-in first-out: the client closes first
    return config.stash[CLIENT]
