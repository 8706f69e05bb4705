"""The S3 test infrastructure (tests/s3server.py): SeaweedFS behind a counting proxy, as obstore, s3fs,
zarr-python and tensorstore see it, and the S3 semantics of SeaweedFS that archive code may rely on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import obstore
import pytest
import s3fs
import tensorstore as ts
import zarr
from obstore.exceptions import AlreadyExistsError, PreconditionError
from obstore.store import S3Store
from s3server import S3Service, start_seaweedfs

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes, each offset recognisable


def object_store(s3: S3Service, prefix: str | None = None) -> S3Store:
    """An obstore client that goes through the proxy."""
    return S3Store(
        s3.bucket,
        prefix=prefix,
        endpoint=s3.endpoint,
        access_key_id=s3.key,
        secret_access_key=s3.secret,
        region=s3.region,
        client_options={"allow_http": True},
    )


def key_of(s3: S3Service, url: str) -> str:
    """The object key of an ``s3://<bucket>/<key>`` URL."""
    return url.removeprefix(f"s3://{s3.bucket}/")


def test_a_started_server_serves_its_bucket_at_once_and_stops_cleanly(tmp_path: Path) -> None:
    server = start_seaweedfs(tmp_path)
    try:
        store = S3Store(
            server.bucket,
            endpoint=server.endpoint,
            access_key_id=server.key,
            secret_access_key=server.secret,
            region=server.region,
            client_options={"allow_http": True},
        )
        assert obstore.list(store).collect() == []  # no NoSuchBucket
    finally:
        server.stop()
    assert server.process.poll() is not None
    assert not any(path.exists() for path in server.grpc_sockets)  # weed leaves them in /tmp


def test_put_and_ranged_get_are_counted(s3_server: S3Service, s3_prefix: str) -> None:
    store, key, proxy = object_store(s3_server), key_of(s3_server, s3_prefix) + "blob.bin", s3_server.proxy
    proxy.reset()
    obstore.put(store, key, PAYLOAD)
    assert [(r.method, r.path, r.status) for r in proxy.requests] == [("PUT", f"/{s3_server.bucket}/{key}", 200)]

    proxy.reset()
    assert bytes(obstore.get_range(store, key, start=1000, length=5000)) == PAYLOAD[1000:6000]
    [get] = proxy.requests
    assert (get.method, get.path, get.range, get.status, get.nbytes) == (
        "GET",
        f"/{s3_server.bucket}/{key}",
        "bytes=1000-5999",
        206,
        5000,
    )
    assert proxy.count("GET") == proxy.count(path_contains=key) == 1
    assert proxy.bytes_received() == 5000

    proxy.reset()
    assert obstore.head(store, key)["size"] == len(PAYLOAD)  # HEAD keeps the object's Content-Length
    assert proxy.count("HEAD") == 1 and proxy.bytes_received() == 0


def test_concurrent_ranged_reads_are_all_counted(s3_server: S3Service, s3_prefix: str) -> None:
    store, key, proxy = object_store(s3_server), key_of(s3_server, s3_prefix) + "blob.bin", s3_server.proxy
    obstore.put(store, key, PAYLOAD)
    starts = [i * 12_000 for i in range(8)]
    proxy.reset()
    parts = obstore.get_ranges(store, key, starts=starts, lengths=[1000] * 8, coalesce=0)  # 8 GETs in parallel
    assert [bytes(part) for part in parts] == [PAYLOAD[start : start + 1000] for start in starts]
    assert sorted(r.range or "" for r in proxy.requests) == sorted(f"bytes={s}-{s + 999}" for s in starts)
    assert proxy.count("GET") == 8 and proxy.bytes_received() == 8000


def test_s3fs_lists_and_reads_through_the_proxy(s3_server: S3Service, s3_prefix: str) -> None:
    prefix, proxy = key_of(s3_server, s3_prefix), s3_server.proxy
    store = object_store(s3_server)
    for name in ("a.bin", "b.bin"):
        obstore.put(store, prefix + name, PAYLOAD)
    fs = s3fs.S3FileSystem(
        key=s3_server.key,
        secret=s3_server.secret,
        client_kwargs={"endpoint_url": s3_server.endpoint, "region_name": s3_server.region},
        skip_instance_cache=True,
    )
    proxy.reset()
    assert sorted(fs.ls(s3_prefix)) == [f"{s3_server.bucket}/{prefix}{name}" for name in ("a.bin", "b.bin")]
    assert fs.cat_file(s3_prefix + "b.bin", start=10, end=20) == PAYLOAD[10:20]
    [listing, get] = proxy.requests
    assert listing.method == "GET" and "list-type=2" in listing.query
    assert (get.path, get.range, get.nbytes) == (f"/{s3_server.bucket}/{prefix}b.bin", "bytes=10-19", 10)


def test_tensorstore_reads_what_zarr_python_wrote(
    s3_server: S3Service, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix, proxy = key_of(s3_server, s3_prefix) + "labels.zarr", s3_server.proxy
    data = np.random.default_rng(0).integers(0, 5, size=(128, 64, 64), dtype=np.uint8)
    array = zarr.create_array(
        zarr.storage.ObjectStore(object_store(s3_server, prefix)),
        shape=data.shape,
        chunks=(16, 16, 16),
        shards=(64, 64, 64),
        dtype=data.dtype,
        fill_value=0,
    )
    array[:] = data

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    spec = {
        "driver": "zarr3",
        "kvstore": {
            "driver": "s3",
            "bucket": s3_server.bucket,
            "path": prefix + "/",
            "endpoint": s3_server.endpoint,
            "aws_region": s3_server.region,
            "aws_credentials": {"type": "environment"},
        },
    }
    proxy.reset()
    reader = ts.open(spec, read=True).result()
    np.testing.assert_array_equal(reader[64:128].read().result(), data[64:128])
    assert proxy.count("GET", path_contains=prefix) >= 2  # zarr.json, then the shard


def test_seaweedfs_honours_suffix_ranges_and_conditional_puts(s3_server: S3Service, s3_prefix: str) -> None:
    store, key = object_store(s3_server), key_of(s3_server, s3_prefix) + "blob.bin"
    first = obstore.put(store, key, PAYLOAD, mode="create")  # If-None-Match: *
    with pytest.raises(AlreadyExistsError):
        obstore.put(store, key, b"again", mode="create")

    tail = obstore.get(store, key, options={"range": {"suffix": 500}})  # Range: bytes=-500
    assert bytes(tail.bytes()) == PAYLOAD[-500:]
    assert tail.range == (len(PAYLOAD) - 500, len(PAYLOAD)) and tail.meta["size"] == len(PAYLOAD)

    with pytest.raises(PreconditionError):  # If-Match: <a stale e-tag>
        obstore.put(store, key, b"stale", mode={"e_tag": '"0123456789abcdef0123456789abcdef"'})
    obstore.put(store, key, b"fresh", mode={"e_tag": first["e_tag"]})
    assert bytes(obstore.get(store, key).bytes()) == b"fresh"
