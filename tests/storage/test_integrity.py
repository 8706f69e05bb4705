"""Trust in every byte: each damage and attack found in review, reproduced, on every backend it applies to.

Damage (a flipped bit, a lost file) must be detected by the read that touches it
and by ``verify``, never returned as data; attacks (an archive edited and resealed
so every checksum passes) must be refused by the checks on names and sizes.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    _zip_members,
    assert_case_matches,
    case_content,
    ok,
    packed_header,
    run,
    run_measuring_peak_rss,
    snapshot,
    suffix_of,
    write_case_content,
    write_zip_members,
)
from spacetransformer import Space

from medmask_store import (
    CaseNotFound,
    CorruptArchive,
    CorruptMetadata,
    DamagedDataWarning,
    InvalidCase,
    MaskArchive,
    StorageSettings,
)
from medmask_store.storage.verify import verify_archive

SMALL = StorageSettings(chunk_size=16, label_level=3, layer_level=3)


@pytest.fixture
def layered(archive_path: Path, phantom) -> Path:
    """Cases 'a' and 'b' (the phantom: rib_right_12 inside liver, so a binary layer) with metadata."""
    masks, space = phantom
    with MaskArchive(archive_path, "w", SMALL) as archive:
        archive.add_case("a", masks, space=space, meta={"age": 61})
        archive.add_case("b", masks, space=space, meta={"age": 70})
        assert archive["a"].info.layer_names
    return archive_path


def zarr_objects(path: Path) -> dict[str, bytes]:
    """Every object of a .zarr directory or .zarr.zip, by key."""
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    return _zip_members(path)


def remove_zarr_object(path: Path, key: str) -> None:
    if path.is_dir():
        (path / key).unlink()
    else:
        members = _zip_members(path)
        del members[key]
        write_zip_members(path, members)


def problems_of(path: Path) -> list[str]:
    with MaskArchive(path) as archive:
        return verify_archive(archive)


# -- 1. path traversal -------------------------------------------------------------------------


@pytest.mark.parametrize("sealed", [False, True], ids=["edited", "crafted"])
def test_organ_name_with_a_path_is_refused_on_read_and_export_writes_nothing(layered, tmp_path, sealed):
    content = case_content(layered, "a")
    mapping = content["mapping"]
    evil = "../../evil"
    mapping[evil] = mapping.pop("liver")
    content["stats"]["organs"] = [evil if o == "liver" else o for o in content["stats"]["organs"]]
    write_case_content(layered, "a", content, sealed=sealed)
    out = tmp_path / "out" / "a" / "b"
    message = "checksum mismatch" if not sealed else "invalid organ name '../../evil'"
    with MaskArchive(layered) as archive, pytest.raises(CorruptMetadata, match=re.escape(message)):
        archive["a"]
    result = run("export", layered, "a", out)
    assert result.exit_code == 1 and "CorruptMetadata" in result.output and message in result.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("evil*"))
    problems = problems_of(layered)
    assert len(problems) == 1 and problems[0].startswith("case 'a': CorruptMetadata") and message in problems[0]


@pytest.mark.parametrize("name", ["x\nmore", "é" * 101, " padded", "zarr.json"], ids=["newline", "long", "space", "reserved"])
def test_case_names_listed_by_a_store_are_validated(tmp_path, phantom, name):
    """A case folder whose name no add_case would accept: reported by name, never used in a path."""
    masks, space = phantom
    path = tmp_path / "a.zip" if name == "zarr.json" else tmp_path / "a.zarr"
    with MaskArchive(path, "w", SMALL, backend="zarr.zip" if name == "zarr.json" else None) as archive:
        archive.add_case("good", masks, space=space)
    if path.is_dir():
        shutil.copytree(path / "cases" / "good", path / "cases" / name)
    else:
        members = _zip_members(path)
        members.update({k.replace("cases/good/", f"cases/{name}/"): v for k, v in members.items() if k.startswith("cases/good/")})
        write_zip_members(path, members)
    with MaskArchive(path) as archive:
        with pytest.raises(CorruptMetadata, match="listed case name is refused"):
            archive.case_ids()
        with pytest.warns(DamagedDataWarning, match="listed case name is refused"):
            assert archive.case_ids(skip_damaged=True) == ["good"]
        problems = verify_archive(archive)
        assert len(problems) == 1 and "listed case name is refused" in problems[0]


@pytest.mark.parametrize("member", ["cases/../../escaped/zarr.json", "/absolute/zarr.json", "cases/x/../../../up"])
def test_zip_members_that_would_leave_the_archive_are_refused(tmp_path, phantom, member):
    masks, space = phantom
    path = tmp_path / "a.zarr.zip"
    with MaskArchive(path, "w", SMALL) as archive:
        archive.add_case("good", masks, space=space)
    members = _zip_members(path)
    members[member] = b"{}"
    write_zip_members(path, members)
    before = snapshot(tmp_path)
    with pytest.raises(CorruptMetadata, match="would be extracted outside the archive"):
        MaskArchive(path, "a")  # a writer extracts the zip: refused before anything is written
    if member.startswith("cases/../"):  # a reader lists the bad case name and refuses it
        with MaskArchive(path) as archive, pytest.raises(CorruptMetadata, match="listed case name is refused"):
            archive.case_ids()
    assert snapshot(tmp_path) == before
    assert not (tmp_path.parent / "escaped").exists() and not Path("/absolute").exists()


# -- 2. silent wrong data ------------------------------------------------------------------------


@pytest.mark.parametrize("array", ["label_volume", "binary_layers"])
def test_lost_shard_is_an_error_not_zeros(layered, array):
    if suffix_of(layered) not in (".zarr", ".zarr.zip"):
        pytest.skip("shards are Zarr objects")
    shard = {"label_volume": "c/0/0/0", "binary_layers": "c/0/0/0/0"}[array]
    remove_zarr_object(layered, f"cases/a/{array}/{shard}")
    with MaskArchive(layered) as archive:
        case = archive["a"]  # the attributes are intact
        layer_box = case.stats[case.info.layer_names[0]].bbox  # a region touching both arrays
        for read in (case.read_labels, lambda: case.read_region(layer_box), case.read_organs):
            with pytest.raises(CorruptMetadata, match=rf"case 'a'/{array}: 0 stored chunks do not match"):
                read()
        assert_case_matches(archive["b"], {n: archive["b"].read_organ(n) for n in archive["b"].organs})
    problems = problems_of(layered)
    assert len(problems) == 1 and problems[0].startswith("case 'a': CorruptMetadata"), problems


def test_shard_index_damage_names_the_archive_case_and_array(layered):
    if suffix_of(layered) != ".zarr":
        pytest.skip("shard files of the directory layout")
    shard = layered / "cases/a/label_volume/c/0/0/0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0x01  # inside the index, before its crc32c
    shard.write_bytes(bytes(data))
    with MaskArchive(layered) as archive, pytest.raises(
        CorruptMetadata, match=rf"^{re.escape(str(layered))}: case 'a'/label_volume: shard index: fails its crc32c checksum$"
    ):
        archive["a"].read_region((slice(0, 4),) * 3)


@pytest.mark.parametrize("key", ["zarr.json", "label_volume/zarr.json", "binary_layers/zarr.json"])
def test_lost_metadata_document_is_detected(layered, key):
    if suffix_of(layered) not in (".zarr", ".zarr.zip"):
        pytest.skip("Zarr documents")
    remove_zarr_object(layered, f"cases/a/{key}")
    with MaskArchive(layered) as archive:
        assert archive.case_ids() == ["a", "b"]  # still listed: damaged, not absent
        with pytest.raises(CorruptMetadata, match=r"case 'a'"):
            archive["a"].read_organs()
        if key == "zarr.json":  # queries read the case attributes (array metadata: only reads need it)
            with pytest.raises(CorruptMetadata, match=r"case 'a': its zarr.json is missing"):
                archive.query("age > 0")
            with pytest.warns(DamagedDataWarning, match="skipped damaged case 'a'"):
                assert archive.query("age > 0", skip_damaged=True) == ["b"]
    problems = problems_of(layered)
    assert len(problems) == 1 and problems[0].startswith("case 'a': CorruptMetadata"), problems


@pytest.mark.parametrize(
    ("field", "edit"),
    [
        ("organ name in the statistics", lambda c: c["stats"]["organs"].__setitem__(0, c["stats"]["organs"][0].replace("e", "u", 1))),
        ("origin", lambda c: c["space"]["origin"].__setitem__(0, c["space"]["origin"][0] + 2)),
        ("spacing", lambda c: c["space"]["spacing"].__setitem__(2, 3.0)),
        ("metadata value", lambda c: c["meta"].__setitem__("age", 16)),
        ("voxel count", lambda c: c["stats"]["voxels"].__setitem__(1, c["stats"]["voxels"][1] + 1)),
        ("a key", lambda c: c.__setitem__("meta_", c.pop("meta"))),
    ],
)
def test_changed_attribute_fails_its_checksum(layered, field, edit):
    content = case_content(layered, "a")
    edit(content)
    write_case_content(layered, "a", content, sealed=False)
    with MaskArchive(layered) as archive:
        with pytest.raises(CorruptMetadata, match=r"case 'a': attributes: checksum mismatch"):
            archive["a"]
        assert archive["b"].meta == {"age": 70}
        with pytest.raises(CorruptMetadata, match=r"case 'a'"):
            archive.query("age > 0")
        with pytest.warns(DamagedDataWarning, match="skipped damaged case 'a'"):
            assert archive.query("age > 0", skip_damaged=True) == ["b"]
    result = run("query", layered, "age > 0")
    assert result.exit_code == 1 and "case 'a'" in result.output
    result = run("query", layered, "age > 0", "--skip-damaged")
    assert result.exit_code == 0 and result.stdout.split() == ["b"] and "warning: skipped damaged case 'a'" in result.stderr
    assert problems_of(layered) == [
        f"case 'a': CorruptMetadata: {layered}: case 'a': attributes: checksum mismatch, the metadata was changed or damaged"
    ]


def test_verify_checks_every_case_and_lists_every_damaged_one(layered, phantom):
    masks, space = phantom
    with MaskArchive(layered, "a", SMALL) as archive:
        archive.add_case("c", masks, space=space)
    for case_id in ("a", "c"):
        content = case_content(layered, case_id)
        content["meta"]["age"] = 1
        write_case_content(layered, case_id, content, sealed=False)
    problems = problems_of(layered)
    assert [p.split(":")[0] for p in problems] == ["case 'a'", "case 'c'"]
    result = run("verify", layered)
    assert result.exit_code == 1 and "3 case(s) checked, 2 problem(s)" in result.output


@pytest.mark.parametrize("damage", ["flipped", "resealed"])
def test_damaged_root_attributes(layered, damage):
    """The archive root: a changed value fails the checksum; a crafted format version is refused."""
    suffix = suffix_of(layered)
    if suffix not in (".zarr", ".zarr.zip"):
        pytest.skip("root documents of the Zarr layout")
    objects = zarr_objects(layered)
    document = json.loads(objects["zarr.json"])
    content = document["attributes"]["medmask_store"]
    content["kind"] = "archive"
    content["cases_group_crc32c"] += 1
    if damage == "resealed":
        from helpers import reseal

        document["attributes"]["medmask_store"] = reseal(content)
    if suffix == ".zarr":
        (layered / "zarr.json").write_text(json.dumps(document))
    else:
        objects["zarr.json"] = json.dumps(document).encode()
        write_zip_members(layered, objects)
    message = "root attributes: checksum mismatch" if damage == "flipped" else "cases/zarr.json is missing or damaged"
    with pytest.raises(CorruptMetadata, match=re.escape(message)):
        MaskArchive(layered)


@pytest.mark.parametrize(
    ("blob", "message"),
    [("manifest", "the query index fails its checksum"), ("voxels", r"the index blob 's[0-9a-f]+/voxels' fails its checksum")],
)
def test_index_damage_is_named_and_skip_damaged_answers_from_the_cases(tmp_path, phantom, index_every_archive, blob, message):
    masks, space = phantom
    path = tmp_path / "a.zarr"
    with MaskArchive(path, "w", SMALL) as archive:
        archive.add_case("a", masks, space=space, meta={"age": 61})
    damaged = next(p for p in (path / "index").rglob("*") if p.name == blob)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x10
    damaged.write_bytes(bytes(data))
    organ = next(o for o, m in masks.items() if m.any())
    with MaskArchive(path) as archive:
        with pytest.raises(CorruptMetadata, match=message):
            archive.query(f"age > 0 and {organ}.voxels > 0")
        with pytest.warns(DamagedDataWarning, match="answering from the case attributes"):
            assert archive.query(f"age > 0 and {organ}.voxels > 0", skip_damaged=True) == ["a"]
        problems = verify_archive(archive)
    assert len(problems) == 1 and problems[0].startswith("index: ") and "fails its checksum" in problems[0]
    ok("reindex", path)
    assert problems_of(path) == []


# -- 3. sizes declared by an archive -------------------------------------------------------------

READ_REGION = """
import sys
from medmask_store import MaskArchive, MaskStoreError
try:
    with MaskArchive(sys.argv[1]) as archive:
        archive["a"].read_region((slice(0, 4),) * 3)
    print("read")
except MaskStoreError as exc:
    print(type(exc).__name__ + ": " + str(exc))
"""


def peak_rss_reading(path: Path) -> tuple[int, str]:
    """Peak RSS (MiB) of a fresh process opening the archive and reading a 4³ region of case 'a', and what happened."""
    outcome, peak = run_measuring_peak_rss(READ_REGION, path)
    return peak, outcome


def test_chunk_shape_edited_to_1024_cubed_is_refused_in_bounded_memory(tmp_path):
    """The edited zarr.json fails its checksum; a crafted one (manifest agreeing) exceeds the chunk limit."""
    path = tmp_path / "a.zarr"
    labels = np.zeros((64, 64, 64), np.uint8)
    labels[:8, :8, :8] = 1
    with MaskArchive(path, "w", StorageSettings(chunk_size=64, label_level=1)) as archive:
        archive.add_case("a", labels, mapping={"x": 1})
    key = path / "cases/a/label_volume/zarr.json"
    metadata = json.loads(key.read_text())
    metadata["codecs"][0]["configuration"]["chunk_shape"] = [1024] * 3
    metadata["chunk_grid"]["configuration"]["chunk_shape"] = [1024] * 3
    key.write_text(json.dumps(metadata))
    rss, outcome = peak_rss_reading(path)
    assert outcome.startswith("CorruptMetadata") and "label_volume" in outcome, outcome
    assert rss < 256, rss
    content = case_content(path, "a")  # crafted: the manifest promises the same chunk shape
    from medmask_store.model.manifest import crc32c

    content["arrays"]["label_volume"]["chunks"] = [1024] * 3
    content["arrays"]["label_volume"]["metadata_crc32c"] = crc32c(key.read_bytes())
    write_case_content(path, "a", content)
    rss, outcome = peak_rss_reading(path)
    assert outcome.startswith("CorruptMetadata") and "exceeds the limit" in outcome, outcome
    assert rss < 256, rss


def test_packed_catalog_bomb_is_refused_in_bounded_memory(tmp_path):
    """A 2 GB catalog in a frame of a few KB: refused from its declared size, before decompression."""

    import zstandard

    from medmask_store.storage.packed import CATALOG_DICTIONARY

    head, pad, tail = b'{"attributes":{},"cases":{},"index":null,"pad":"', 2 * 2**30, b'"}'
    frame = io.BytesIO()  # streamed, so that this process never holds 2 GB (a child inherits its peak RSS)
    compressor = zstandard.ZstdCompressor(level=1, dict_data=CATALOG_DICTIONARY)
    with compressor.stream_writer(frame, size=len(head) + pad + len(tail), closefd=False) as writer:
        writer.write(head)
        for _ in range(pad // 2**20):
            writer.write(b" " * 2**20)
        writer.write(tail)
    path = tmp_path / "bomb.msk"
    path.write_bytes(packed_header(frame.getvalue()) + frame.getvalue())
    assert path.stat().st_size < 1_000_000
    rss, outcome = peak_rss_reading(path)
    assert outcome.startswith("CorruptMetadata") and "the limit is" in outcome, outcome
    assert rss < 256, rss


@pytest.mark.parametrize("location", [[0, 2**62], [2**62, 10]], ids=["length", "offset"])
def test_absurd_packed_chunk_locations_are_refused_before_reading(tmp_path, phantom, location):
    from helpers import read_packed, reseal_packed_case, write_packed

    masks, space = phantom
    path = tmp_path / "a.msk"
    with MaskArchive(path, "w", SMALL) as archive:
        archive.add_case("a", masks, space=space)
    catalog, data = read_packed(path)
    rows = catalog["cases"]["a"]["chunks"]["label_volume"]
    rows[0][-2:] = location
    reseal_packed_case(catalog, "a", data)
    write_packed(path, catalog, data)
    with MaskArchive(path) as archive:
        with pytest.raises(CorruptMetadata, match=r"case 'a': array 'label_volume': chunk locations .* lie outside the file"):
            archive["a"]


# -- 4. readers during commits ---------------------------------------------------------------------

DELETE_CASE = """
import sys
from medmask_store import MaskArchive
with MaskArchive(sys.argv[1], "a") as archive:
    archive.delete_case("b")
"""


@pytest.mark.parametrize("order", ["case-opened-first", "array-opened-first"])
def test_reader_of_a_single_file_archive_is_unaffected_by_a_commit(layered, phantom, order):
    """A reader keeps reading the file it opened after a writer in another process publishes a new one."""
    if suffix_of(layered) == ".zarr":
        pytest.skip("directory archives: see test_reader_of_a_replaced_case_folder")
    masks, _ = phantom
    with MaskArchive(layered) as archive:
        case = archive["a"]
        if order == "array-opened-first":
            case.read_organ("liver")
        subprocess.run([sys.executable, "-c", DELETE_CASE, str(layered)], check=True)
        assert_case_matches(case, masks)
        assert_case_matches(archive["b"], masks)  # the file this reader opened still has it
    with MaskArchive(layered) as archive:
        assert archive.case_ids() == ["a"]


def test_reader_of_a_replaced_case_folder_reports_the_change_never_damage(tmp_path, phantom):
    masks, space = phantom
    path = tmp_path / "a.zarr"
    with MaskArchive(path, "w", SMALL) as archive:
        archive.add_case("a", masks, space=space)
    with MaskArchive(path) as reader:
        case = reader["a"]
        with MaskArchive(path, "a", SMALL) as writer:
            writer.add_case("a", {"x": masks["liver"]}, space=space, overwrite=True)
        # the old folder's files are gone: the reader is told the case changed, not that it is damaged
        with pytest.raises(CaseNotFound, match="was replaced or deleted since it was opened"):
            case.read_organ("liver")
        assert reader["a"].organs == ["x"]


# -- 5. files ------------------------------------------------------------------------------------


def test_commit_keeps_the_permission_bits(layered, phantom):
    if suffix_of(layered) == ".zarr":
        pytest.skip("single-file archives")
    masks, space = phantom
    os.chmod(layered, 0o600)
    with MaskArchive(layered, "a", SMALL) as archive:
        archive.add_case("c", masks, space=space)
    assert stat.S_IMODE(os.stat(layered).st_mode) == 0o600


def test_commit_writes_through_a_symlinked_archive_path(layered, phantom, tmp_path):
    if suffix_of(layered) == ".zarr":
        pytest.skip("single-file archives")
    masks, space = phantom
    link = tmp_path / "links" / f"link{suffix_of(layered)}"
    link.parent.mkdir()
    link.symlink_to(layered)
    with MaskArchive(link, "a", SMALL) as archive:
        archive.add_case("c", masks, space=space)
    assert link.is_symlink() and os.readlink(link) == str(layered)
    with MaskArchive(layered) as archive:
        assert archive.case_ids() == ["a", "b", "c"]
    assert sorted(p.name for p in link.parent.iterdir()) == [link.name]  # no lock or copy left beside the link


def test_deleting_a_symlinked_case_folder_removes_the_link_only(tmp_path, phantom):
    masks, space = phantom
    path, elsewhere = tmp_path / "a.zarr", tmp_path / "shared"
    with MaskArchive(path, "w", SMALL) as archive:
        archive.add_case("real", masks, space=space)
    shutil.move(path / "cases" / "real", elsewhere)
    (path / "cases" / "real").symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    with MaskArchive(path) as archive:
        assert_case_matches(archive["real"], masks)
    with MaskArchive(path, "a") as archive:
        archive.delete_case("real")
        assert archive.case_ids() == []
    assert snapshot(elsewhere) == before
    assert not (path / ".staging").exists() or not any((path / ".staging").iterdir())


def test_organ_name_longer_than_a_file_name_can_hold_is_refused_at_add_case(archive_path, phantom):
    masks, space = phantom
    name = "o" * 249  # + ".nii.gz" = 256 bytes
    with MaskArchive(archive_path, "w", SMALL) as archive:
        with pytest.raises(InvalidCase, match=r"longer than 248 bytes: export writes <organ>\.nii\.gz"):
            archive.add_case("a", {name: masks["liver"]}, space=space)
        archive.add_case("a", {"o" * 248: masks["liver"]}, space=space)
        assert archive["a"].organs == ["o" * 248]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_space_with_non_finite_origin_is_refused(archive_path, phantom, value):
    """spacetransformer accepts a NaN origin (it refuses non-finite spacing itself)."""
    masks, space = phantom
    bad = Space(shape=space.shape, origin=(0.0, value, 0.0), spacing=space.spacing)
    labels = np.zeros(space.shape, np.uint8)
    with MaskArchive(archive_path, "w", SMALL) as archive:
        with pytest.raises(InvalidCase, match=r"space origin must be 3 finite numbers"):
            archive.add_case("a", masks, space=bad)
        with pytest.raises(InvalidCase, match=r"space origin must be 3 finite numbers"):
            archive.add_case("a", labels, mapping={"x": 1}, space=bad)
        assert archive.case_ids() == []


def test_every_failure_is_ours(layered):
    """Damage found on open never escapes as a foreign exception type."""
    content = case_content(layered, "a")
    content["space"] = "not a space"
    write_case_content(layered, "a", content)
    with MaskArchive(layered) as archive, pytest.raises(CorruptArchive, match=r"case 'a': malformed attributes: space"):
        archive["a"]
