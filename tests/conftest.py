"""Shared fixtures: synthetic phantoms, one archive path per backend, the optional real case, an S3 server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from s3server import CountingProxy, S3Service, SeaweedStartError, start_seaweedfs
from spacetransformer import Space

from medmask_store.phantom import make_phantom

# helpers.py holds shared assertions: give them the same rewritten (introspecting) asserts as the tests.
pytest.register_assert_rewrite("helpers")

REAL_CASE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "s0000"

# Every backend the archive supports; backend-neutral tests take ``archive_path``.
BACKEND_SUFFIXES = [".zarr", ".zarr.zip", ".h5", ".msk"]


@pytest.fixture(params=BACKEND_SUFFIXES, ids=lambda s: s.strip("."))
def archive_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A not-yet-existing archive path, once per backend."""
    return tmp_path / f"archive{request.param}"


@pytest.fixture
def phantom() -> tuple[dict[str, np.ndarray], Space]:
    """Small phantom: 6 ellipsoid organs, rib_right_12 inside liver, 2 empty masks."""
    return make_phantom(shape=(70, 60, 50), n_organs=6, n_empty=2, seed=3)


@pytest.fixture
def real_case_dir() -> Path:
    """The TotalSegmentator case s0000 in ../shared; tests using it skip when it is absent."""
    if not REAL_CASE.is_dir():
        pytest.skip(f"real case not available at {REAL_CASE}")
    return REAL_CASE


@pytest.fixture(scope="module")
def index_every_archive() -> Iterator[None]:
    """Store the index from the first case on (archives store none below INDEX_MIN_CASES), so
    index behaviour is exercised with a few cases; module-scoped to cover module-scoped archives."""
    import medmask_store.storage.archive as archive_module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(archive_module, "INDEX_MIN_CASES", 1)
        yield


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    """A SeaweedFS S3 server for the session behind a ``CountingProxy``: clients use ``.endpoint`` (the proxy).

    Skips when weed cannot start, except on CI (``CI=true``), where that fails.
    """
    try:
        server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    except SeaweedStartError as error:
        reason = f"SeaweedFS did not start: {error}"
        if os.environ.get("CI", "").lower() == "true":
            raise pytest.fail.Exception(reason, pytrace=False) from None
        raise pytest.skip.Exception(reason) from None
    proxy = CountingProxy(server.endpoint)
    try:
        yield S3Service(server, proxy)
    finally:
        proxy.close()
        server.stop()


@pytest.fixture
def s3_prefix(s3_server: S3Service) -> str:
    """A fresh ``s3://<bucket>/<hex>/`` URL prefix, so tests do not see each other's objects."""
    return f"s3://{s3_server.bucket}/{uuid.uuid4().hex}/"
