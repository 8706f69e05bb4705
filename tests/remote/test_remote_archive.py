"""Archives in object storage, against a real SeaweedFS S3 server: round trips, requests counted at the server's door."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import obstore
import pytest
from helpers import assert_case_matches, kill_writer_when_ready, ok, run
from s3server import S3Service

from medmask_store import MaskArchive
from medmask_store.errors import CaseExists, CaseNotFound, InvalidArchive, ReadOnlyArchive, StorageUnavailable
from medmask_store.phantom import make_phantom
from medmask_store.storage.remote import MERGE_GAP, RemoteLocation

SHAPE = (150, 70, 60)  # chunk grid 3 x 2 x 1 of 64³ chunks


@pytest.fixture(scope="module")
def masks() -> dict[str, np.ndarray]:
    """Organs with an overlap (rib_right_12 inside liver), spread over several chunks."""
    found, _ = make_phantom(shape=SHAPE, n_organs=6, n_empty=1, seed=5)
    return found


def options(s3: S3Service) -> dict[str, object]:
    return {"endpoint": s3.endpoint, "access_key_id": s3.key, "secret_access_key": s3.secret, "region": s3.region}


@pytest.fixture
def aws_environment(s3_server: S3Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard AWS variables naming the test server, as a CLI user sets them."""
    for name, value in [("AWS_ACCESS_KEY_ID", s3_server.key), ("AWS_SECRET_ACCESS_KEY", s3_server.secret),
                        ("AWS_ENDPOINT_URL", s3_server.endpoint), ("AWS_REGION", s3_server.region)]:
        monkeypatch.setenv(name, value)


def write(url: str, s3: S3Service, cases: dict[str, dict[str, np.ndarray]]) -> None:
    with MaskArchive(url, "w", storage_options=options(s3)) as archive:
        for case_id, case_masks in cases.items():
            archive.add_case(case_id, case_masks)


def test_round_trip_replace_and_delete(s3_server: S3Service, s3_prefix: str, masks: dict[str, np.ndarray]) -> None:
    url = s3_prefix + "cases.zarr"
    write(url, s3_server, {"a": masks, "b": masks})
    smaller = {"liver": masks["liver"][:, :, ::-1].copy()}  # one organ: no binary layers
    with MaskArchive(url, "a", storage_options=options(s3_server)) as archive:
        assert archive.case_ids() == ["a", "b"]
        assert_case_matches(archive["a"], masks)  # every organ bit-exact, overlaps included
        with pytest.raises(CaseExists, match="'a' already exists"):
            archive.add_case("a", smaller)
        archive.add_case("a", smaller, overwrite=True)
        assert_case_matches(archive["a"], smaller)
        archive.delete_case("b")
        assert archive.case_ids() == ["a"]
        with pytest.raises(CaseNotFound, match="no case 'b'"):
            archive["b"]
    keys = [meta["path"] for batch in obstore.list(RemoteLocation(url, options(s3_server)).store) for meta in batch]
    assert not [key for key in keys if key.startswith("cases/b/")]  # a deleted case leaves no object behind
    assert not [key for key in keys if key.startswith("cases/a/binary_layers/")]  # the replaced case's layers are gone


def test_region_and_organ_reads_request_only_their_chunks(
    s3_server: S3Service, s3_prefix: str, masks: dict[str, np.ndarray]
) -> None:
    url = s3_prefix + "reads.zarr"
    write(url, s3_server, {"a": masks})
    proxy = s3_server.proxy
    proxy.reset()
    case = MaskArchive(url, storage_options=options(s3_server))["a"]  # a cold open: one request, as tensorstore's
    assert [(r.method, r.path.split("/")[-2:]) for r in proxy.requests] == [("GET", ["a", "zarr.json"])]
    proxy.reset()
    corner = case.stored_labels[:64, :64, :]  # exactly chunk (0, 0, 0)
    # the shard index (one suffix range), the one chunk; the array's metadata comes from the case's manifest
    assert [r.range for r in proxy.requests][:1] == [f"bytes=-{3 * 2 * 1 * 16 + 4}"]
    assert len(proxy.requests) == 2 and proxy.requests[1].range.startswith("bytes=0-")
    stored = case.stored_labels
    whole = stored[...]
    assert np.array_equal(corner, whole[:64, :64, :])
    lengths = case._open_stored("label_volume").lengths
    offsets = dict(zip(sorted(lengths), np.cumsum([0] + [lengths[c] for c in sorted(lengths)]).tolist()))  # C order
    for box in [(slice(40, 104), slice(0, 64), slice(0, 60)), (slice(100, 150), slice(30, 70), slice(10, 50)),
                (slice(0, 150), slice(0, 70), slice(0, 60))]:
        touched = [c for c in sorted(lengths) if all(s.start < (i + 1) * 64 and s.stop > i * 64 for i, s in zip(c, box))]
        spans: list[list[int]] = []  # ranges less than MERGE_GAP bytes apart are one request
        for start, stop in ((offsets[c], offsets[c] + lengths[c]) for c in touched):
            if spans and start - spans[-1][1] <= MERGE_GAP:
                spans[-1][1] = stop
            else:
                spans.append([start, stop])
        proxy.reset()
        region = stored[box]
        assert proxy.count() == len(spans)
        assert proxy.bytes_received() == sum(stop - start for start, stop in spans)
        assert np.array_equal(region, whole[box])
    proxy.reset()
    organ, _ = case.read_organ("rib_right_12", crop=True)  # an overlapping organ: label chunks and its layer
    assert np.array_equal(organ, masks["rib_right_12"][tuple(slice(*pair) for pair in case.info.stats["rib_right_12"].bbox)])
    assert 0 < proxy.count() <= 3  # the layers' shard index, at most one run of chunks per array


def test_cold_query_reads_the_index_manifest_the_listing_version_and_the_columns_it_uses(
    s3_server: S3Service, s3_prefix: str, masks: dict[str, np.ndarray], index_every_archive: None
) -> None:
    url = s3_prefix + "query.zarr"
    small = {"liver": masks["liver"], "spleen": masks["spleen"]}
    write(url, s3_server, {"a": small, "b": {"liver": masks["liver"]}, "c": small})
    proxy = s3_server.proxy
    archive = MaskArchive(url, storage_options=options(s3_server))
    proxy.reset()
    assert archive.query("spleen.voxels > 0") == ["a", "c"]
    requests = [(r.method, r.path.rsplit("/", 1)[-1]) for r in proxy.requests]
    assert requests[:2] == [("GET", "manifest"), ("HEAD", "listing")]
    # then the columns the query needs, of the one segment: no case is listed or opened
    columns = {"case_id", "mapping", "mappings", "case", "organ", "voxels"}
    assert sorted(requests[2:]) == sorted(("GET", column) for column in columns)
    # a writer killed before it saved the index: its case is listed, so the next query reconciles
    writer = MaskArchive(url, "a", storage_options=options(s3_server))
    with writer.batch():
        writer.add_case("d", small)
        writer._modified.clear()  # as if killed before the index was saved at the end of the batch
    assert MaskArchive(url, storage_options=options(s3_server)).query("spleen.voxels > 0") == ["a", "c", "d"]


def test_urls_never_become_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidArchive, match="unsupported URL scheme 'ftp'"):
        MaskArchive("ftp://host/cases.zarr", "a")
    with pytest.raises(InvalidArchive, match="cannot tell the archive format"):
        MaskArchive("s3://bucket/cases.txt", storage_options={"endpoint": "http://127.0.0.1:9"})
    with pytest.raises(ReadOnlyArchive, match="read-only"):
        MaskArchive("https://example.org/cases.zarr", "a")
    assert list(tmp_path.iterdir()) == []
    local = tmp_path / "local.zarr"
    with MaskArchive(local.as_uri(), "w") as archive:  # file:// URLs are local paths
        archive.add_case("a", {"liver": np.ones((4, 4, 4), bool)})
    assert MaskArchive(local).case_ids() == ["a"]


def test_refused_credentials_are_a_clear_error(s3_server: S3Service, s3_prefix: str) -> None:
    wrong = {**options(s3_server), "secret_access_key": "not-the-secret"}
    archive = MaskArchive(s3_prefix + "cases.zarr", storage_options=wrong)  # a reader makes no request yet
    with pytest.raises(StorageUnavailable, match=r"cases\.zarr/zarr\.json: the object store failed the request"):
        archive.case_ids()
    with pytest.raises(StorageUnavailable, match=r"cases\.zarr/zarr\.json: the object store failed the request"):
        MaskArchive(s3_prefix + "cases.zarr", "a", storage_options=wrong)


def test_environment_credentials_and_the_cli(
    s3_server: S3Service, s3_prefix: str, masks: dict[str, np.ndarray], aws_environment: None, tmp_path: Path
) -> None:
    url = s3_prefix + "cli.zarr"
    with MaskArchive(url, "w") as archive:  # no storage_options: the AWS_* variables
        archive.add_case("a", {"liver": masks["liver"]})
    assert "a" in ok("ls", url).output
    ok("read", url, "a", "--organ", "liver", "--out", tmp_path / "liver.npy")
    assert np.load(tmp_path / "liver.npy").sum() == masks["liver"].sum()
    missing = run("ls", s3_prefix + "missing.zarr")
    assert missing.exit_code == 1 and "not a medmask_store archive" in missing.output


def _read_region(archive: MaskArchive) -> int:
    return int(archive["a"].read_region((slice(0, 96), slice(0, 70), slice(0, 60))).sum())


def test_archives_pickle_by_url_into_spawned_workers(
    s3_server: S3Service, s3_prefix: str, masks: dict[str, np.ndarray]
) -> None:
    url = s3_prefix + "spawn.zarr"
    write(url, s3_server, {"a": masks})
    archive = MaskArchive(url, storage_options=options(s3_server))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.map(_read_region, [archive, archive]) == [_read_region(archive)] * 2


WRITER = """
import sys, time
import numpy as np
from medmask_store import MaskArchive
from medmask_store.storage import zarr_remote

upload = zarr_remote.RemoteZarrBackend._upload
def upload_then_stall(self, root, prefix, files):
    if prefix.startswith("cases/killed/"):
        upload(self, root, prefix, files[:-1])  # every object but the group document
        print("ready", flush=True)
        time.sleep(60)
    upload(self, root, prefix, files)
zarr_remote.RemoteZarrBackend._upload = upload_then_stall
with MaskArchive(sys.argv[1], "a") as archive:
    archive.add_case("killed", {"liver": np.ones((70, 70, 70), bool)})
"""


def test_a_writer_killed_mid_case_leaves_it_invisible(
    s3_server: S3Service, s3_prefix: str, masks: dict[str, np.ndarray], aws_environment: None
) -> None:
    url = s3_prefix + "killed.zarr"
    write(url, s3_server, {"a": {"liver": masks["liver"]}})

    def while_ready(_: object) -> None:
        keys = [m["path"] for batch in obstore.list(RemoteLocation(url).store, prefix="cases/killed/") for m in batch]
        assert "cases/killed/label_volume/c/0/0/0" in keys and "cases/killed/zarr.json" not in keys

    kill_writer_when_ready(WRITER, url, while_ready)  # type: ignore[arg-type]
    with MaskArchive(url, "a") as archive:
        assert archive.case_ids() == ["a"] and "killed" not in archive
        with pytest.raises(CaseNotFound):
            archive["killed"]
        archive.add_case("killed", {"spleen": masks["spleen"]})  # the id is free; stale objects are replaced
        assert_case_matches(archive["killed"], {"spleen": masks["spleen"]})


@pytest.mark.parametrize("suffix", [".zarr.zip", ".h5", ".msk"])
def test_single_file_archives_read_in_place_by_ranges(
    s3_server: S3Service, s3_prefix: str, masks: dict[str, np.ndarray], tmp_path: Path, suffix: str
) -> None:
    local = tmp_path / f"cases{suffix}"
    with MaskArchive(local, "w") as archive:
        archive.add_case("a", masks)
        archive.add_case("b", {"liver": masks["liver"]})
    url = f"{s3_prefix}cases{suffix}"
    obstore.put(RemoteLocation(s3_prefix, options(s3_server)).store, local.name, local.read_bytes())
    proxy = s3_server.proxy
    proxy.reset()
    archive = MaskArchive(url, storage_options=options(s3_server))
    assert archive.case_ids() == ["a", "b"]
    assert_case_matches(archive["a"], masks)
    assert all(r.method in ("GET", "HEAD") for r in proxy.requests)
    case = archive["a"]
    case.stored_labels[:64, :64, :]  # opened, and its one chunk's metadata read
    proxy.reset()
    region = case.stored_labels[40:104, :, :]
    assert np.array_equal(region, MaskArchive(local)["a"].stored_labels[40:104, :, :])
    assert proxy.count() <= 4 and all(r.range for r in proxy.requests)  # at most one range per touched chunk
    with pytest.raises(ReadOnlyArchive, match="read-only"):
        MaskArchive(url, "a", storage_options=options(s3_server))


def test_verify_reads_the_array_documents_reads_skip(
    s3_server: S3Service, s3_prefix: str, masks: dict[str, np.ndarray], aws_environment: None
) -> None:
    url = s3_prefix + "verify.zarr"
    write(url, s3_server, {"a": {"liver": masks["liver"]}})
    store = RemoteLocation(url, options(s3_server)).store
    document = bytes(obstore.get(store, "cases/a/label_volume/zarr.json").bytes())
    obstore.put(store, "cases/a/label_volume/zarr.json", document.replace(b'"fill_value":0', b'"fill_value":1'))
    archive = MaskArchive(url, storage_options=options(s3_server))
    assert np.array_equal(archive["a"].read_organ("liver"), masks["liver"])  # reads use the checked manifest
    result = run("verify", url)
    assert result.exit_code == 1 and "its metadata document was changed or damaged" in result.output
