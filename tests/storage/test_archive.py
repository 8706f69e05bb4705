"""MaskArchive API (backend-neutral), a Hypothesis round trip, and Zarr-directory specifics."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import BACKEND_SUFFIXES
from helpers import assert_case_matches, box, flip_byte, snapshot, suffix_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spacetransformer import Space

from medmask_store import (
    CaseData,
    CaseExists,
    CaseNotFound,
    CorruptArchive,
    CorruptChunk,
    InvalidArchive,
    InvalidCase,
    MaskArchive,
    OrganNotFound,
    ReadOnlyArchive,
    StorageSettings,
)

SMALL = StorageSettings(chunk_size=16, label_level=3, layer_level=3)
CHUNK8 = StorageSettings(chunk_size=8, label_level=3, layer_level=3)


# -- fixtures --------------------------------------------------------------------


@pytest.fixture
def filled_archive(archive_path, phantom):
    """An archive with the phantom as 's1' and a tiny case 's0', closed again."""
    masks, space = phantom
    with MaskArchive(archive_path, "w", SMALL) as archive:
        archive.add_case("s1", masks, space=space, meta={"age": 61})
        archive.add_case("s0", {"a": box((4, 5, 6), (0, 2), (1, 3), (2, 6))})
    return archive_path


# -- modes --------------------------------------------------------------------------


def test_mode_r_never_writes(filled_archive, phantom):
    before = snapshot(filled_archive)
    masks, space = phantom
    with MaskArchive(filled_archive, "r") as archive:
        assert archive.case_ids() == ["s0", "s1"]
        with pytest.raises(ReadOnlyArchive):
            archive.add_case("s2", masks, space=space)
        with pytest.raises(ReadOnlyArchive):
            archive.add_case("s1", masks, space=space, overwrite=True)
        with pytest.raises(ReadOnlyArchive):
            archive.delete_case("s1")
        with pytest.raises(ReadOnlyArchive):
            archive.delete_case("missing")
        assert isinstance(ReadOnlyArchive("x"), PermissionError)
        case = archive["s1"]
        assert_case_matches(case, masks)
        case.read_labels()
        assert archive.case_ids() == ["s0", "s1"]
    assert snapshot(filled_archive) == before
    with MaskArchive(filled_archive, "r") as archive:
        assert_case_matches(archive["s1"], masks)


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_read_modes_on_missing_path(archive_path, mode):
    with pytest.raises(InvalidArchive):
        MaskArchive(archive_path, mode)
    assert not archive_path.exists()


def test_unknown_mode(archive_path):
    with pytest.raises(ValueError, match=r"mode must be one of"):
        MaskArchive(archive_path, "rw")
    assert not archive_path.exists()


def test_mode_w_replaces(filled_archive):
    with MaskArchive(filled_archive, "w", SMALL) as archive:
        assert archive.case_ids() == []
        assert len(archive) == 0
        archive.add_case("new", {"a": box((3, 3, 3), (0, 1), (0, 1), (0, 1))})
    with MaskArchive(filled_archive, "r") as archive:
        assert archive.case_ids() == ["new"]
        assert "s1" not in archive


def test_mode_w_dash_refuses_existing(filled_archive):
    before = snapshot(filled_archive)
    with pytest.raises(InvalidArchive):
        MaskArchive(filled_archive, "w-")
    assert snapshot(filled_archive) == before


def test_mode_w_dash_creates(archive_path):
    with MaskArchive(archive_path, "w-", SMALL) as archive:
        assert archive.case_ids() == []
        archive.add_case("x", {"a": box((3, 3, 3), (0, 1), (0, 1), (0, 1))})
    with MaskArchive(archive_path, "r") as archive:
        assert archive.case_ids() == ["x"]


def test_mode_a_creates_and_appends(archive_path):
    m1 = box((5, 6, 7), (0, 2), (0, 2), (0, 2))
    m2 = box((5, 6, 7), (3, 5), (3, 6), (3, 7))
    with MaskArchive(archive_path, "a", SMALL) as archive:
        assert archive.case_ids() == []
        archive.add_case("one", {"a": m1})
    assert archive_path.exists()
    with MaskArchive(archive_path, "a", SMALL) as archive:
        assert archive.case_ids() == ["one"]
        archive.add_case("two", {"b": m2})
    with MaskArchive(archive_path, "r") as archive:
        assert archive.case_ids() == ["one", "two"]
        assert_case_matches(archive["one"], {"a": m1})
        assert_case_matches(archive["two"], {"b": m2})


def test_mode_r_plus_writes_existing(filled_archive):
    with MaskArchive(filled_archive, "r+", SMALL) as archive:
        archive.delete_case("s0")
        archive.add_case("s9", {"a": box((3, 3, 3), (1, 2), (1, 2), (1, 2))})
    with MaskArchive(filled_archive, "r") as archive:
        assert archive.case_ids() == ["s1", "s9"]


def test_unknown_suffix_lists_accepted(archive_path, tmp_path):
    bad = tmp_path / "x.foo"
    with pytest.raises(InvalidArchive) as info:
        MaskArchive(bad, "a")
    message = str(info.value)
    for suffix in BACKEND_SUFFIXES:
        assert suffix in message
    assert suffix_of(archive_path) in message
    assert not bad.exists()


# -- listing and lookup -----------------------------------------------------------


def test_case_ids_sorted_contains_len_iter(archive_path):
    ids = ["b", "s10", "a", "s2", "Z"]
    mask = {"a": box((3, 3, 3), (0, 1), (0, 1), (0, 1))}
    with MaskArchive(archive_path, "w", SMALL) as archive:
        for i in ids:
            archive.add_case(i, mask)
        expected = sorted(ids)
        assert archive.case_ids() == expected
        assert list(archive) == expected
        assert len(archive) == len(ids)
        for i in ids:
            assert i in archive
        assert "c" not in archive
        assert 5 not in archive
        assert None not in archive
    with MaskArchive(archive_path, "r") as archive:
        assert archive.case_ids() == expected
        assert list(archive) == expected
        assert len(archive) == len(ids)


def test_missing_case_raises_case_not_found(filled_archive):
    with MaskArchive(filled_archive, "r") as archive:
        with pytest.raises(CaseNotFound, match=r"missing"):
            archive["missing"]
        with pytest.raises(KeyError):
            archive["missing"]
        assert "missing" not in archive


def test_getitem_invalid_id(filled_archive):
    with MaskArchive(filled_archive, "r") as archive:
        with pytest.raises(InvalidCase):
            archive["../s1"]


def test_missing_organ(filled_archive):
    with MaskArchive(filled_archive, "r") as archive:
        case = archive["s0"]
        with pytest.raises(OrganNotFound, match=r"nope"):
            case.read_organ("nope")
        with pytest.raises(KeyError):
            case.representation("nope")


# -- writing ---------------------------------------------------------------------


def test_add_existing_raises_unless_overwrite(filled_archive, phantom):
    masks, space = phantom
    new_shape = (6, 7, 8)
    new_masks = {"x": box(new_shape, (0, 3), (0, 3), (0, 3)), "y": box(new_shape, (2, 6), (2, 7), (2, 8))}
    with MaskArchive(filled_archive, "a", SMALL) as archive:
        with pytest.raises(CaseExists, match=r"s1"):
            archive.add_case("s1", new_masks)
        assert isinstance(CaseExists("x"), FileExistsError)
        assert_case_matches(archive["s1"], masks)
        case = archive.add_case("s1", new_masks, meta={"v": 2}, overwrite=True)
        assert_case_matches(case, new_masks)
        assert archive.case_ids() == ["s0", "s1"]
    with MaskArchive(filled_archive, "r") as archive:
        case = archive["s1"]
        assert_case_matches(case, new_masks)
        assert tuple(case.space.shape) == new_shape
        assert case.meta == {"v": 2}
        assert case.representation("x") == "binary_layer"  # the smaller of the overlapping pair
        assert case.representation("y") == "label_volume"


def test_overwrite_new_id_is_plain_add(archive_path):
    mask = {"a": box((3, 3, 3), (0, 1), (0, 1), (0, 1))}
    with MaskArchive(archive_path, "w", SMALL) as archive:
        archive.add_case("fresh", mask, overwrite=True)
        assert archive.case_ids() == ["fresh"]


def test_delete_case(filled_archive):
    with MaskArchive(filled_archive, "a") as archive:
        archive.delete_case("s1")
        assert "s1" not in archive
        assert archive.case_ids() == ["s0"]
        with pytest.raises(CaseNotFound):
            archive["s1"]
        with pytest.raises(CaseNotFound, match=r"s1"):
            archive.delete_case("s1")
        with pytest.raises(CaseNotFound):
            archive.delete_case("never")
    with MaskArchive(filled_archive, "r") as archive:
        assert archive.case_ids() == ["s0"]


def test_delete_then_add_again(filled_archive):
    mask = {"q": box((2, 2, 2), (0, 1), (0, 1), (0, 1))}
    with MaskArchive(filled_archive, "a", SMALL) as archive:
        archive.delete_case("s1")
        archive.add_case("s1", mask)
    with MaskArchive(filled_archive, "r") as archive:
        assert_case_matches(archive["s1"], mask)


def test_add_case_from_label_volume(archive_path):
    space = Space(shape=(20, 18, 16), spacing=(0.8, 0.8, 2.5), origin=(1.0, 2.0, 3.0))
    rng = np.random.default_rng(4)
    labels = rng.choice(np.array([0, 1, 3, 300], dtype=np.uint16), size=space.shape, p=[0.6, 0.2, 0.15, 0.05])
    mapping = {"one": 1, "three": 3, "many": 300, "none": 7}
    with MaskArchive(archive_path, "w", SMALL) as archive:
        archive.add_case("lab", labels, space=space, mapping=mapping)
    with MaskArchive(archive_path, "r") as archive:
        case = archive["lab"]
        assert case.mapping == mapping
        assert case.space == space
        got = case.read_labels()
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, labels)
        np.testing.assert_array_equal(case.read_labels(include_layers=False), labels)
        for name, value in mapping.items():
            np.testing.assert_array_equal(case.read_organ(name), labels == value)
            assert case.representation(name) == "label_volume"
            assert case.stats[name].voxels == int((labels == value).sum())
        assert case.stats["none"].bbox is None


def test_add_case_label_volume_unmapped(archive_path):
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[1, 1, 1] = 4
    labels[2, 2, 2] = 1
    with MaskArchive(archive_path, "w", SMALL) as archive:
        with pytest.raises(InvalidCase, match=r"\[4\]"):
            archive.add_case("lab", labels, mapping={"one": 1})
        with pytest.raises(InvalidCase, match=r"needs a mapping"):
            archive.add_case("lab", labels)
        assert archive.case_ids() == []
        case = archive.add_case("lab", labels, mapping={"one": 1}, unmapped="name")
        assert case.mapping == {"one": 1, "label_4": 4}
        np.testing.assert_array_equal(case.read_organ("label_4"), labels == 4)


def test_add_case_data_object(archive_path, phantom):
    masks, space = phantom
    data = CaseData.from_masks(masks, space, meta={"k": "v"})
    with MaskArchive(archive_path, "w", SMALL) as archive:
        archive.add_case("cd", data)
    with MaskArchive(archive_path, "r") as archive:
        case = archive["cd"]
        assert_case_matches(case, masks)
        assert case.meta == {"k": "v"}
        assert case.stats == data.stats
        assert case.info.layer_names == tuple(data.layer_names)


def test_meta_round_trip(archive_path):
    meta = {"age": 61, "scanner": "X"}
    mask = {"a": box((3, 3, 3), (0, 1), (0, 1), (0, 1))}
    with MaskArchive(archive_path, "w", SMALL) as archive:
        case = archive.add_case("m", mask, meta=meta)
        assert case.meta == meta
        archive.add_case("no_meta", mask)
    with MaskArchive(archive_path, "r") as archive:
        assert archive["m"].meta == meta
        assert archive["no_meta"].meta == {}


def test_phantom_round_trip_and_representation(archive_path, phantom):
    masks, space = phantom
    expected = CaseData.from_masks(masks, space)
    with MaskArchive(archive_path, "w", SMALL) as archive:
        archive.add_case("p", masks, space=space)
    with MaskArchive(archive_path, "r") as archive:
        case = archive["p"]
        assert case.space == space
        assert case.mapping == expected.mapping
        assert case.stats == expected.stats
        assert_case_matches(case, masks)
        for name in masks:
            representation = "binary_layer" if name in expected.layer_names else "label_volume"
            assert case.representation(name) == representation
        assert "binary_layer" in {case.representation(n) for n in masks}
        assert "rib_right_12" in expected.layer_names or case.representation("liver") == "binary_layer"
        np.testing.assert_array_equal(case.read_labels(include_layers=False), expected.label_volume)
        painted = expected.label_volume.copy()
        for name in expected.layer_names:
            painted[masks[name]] = expected.mapping[name]
        np.testing.assert_array_equal(case.read_labels(), painted)
        empties = [n for n, m in masks.items() if not m.any()]
        assert empties
        for name in empties:
            assert case.stats[name].voxels == 0
            assert not case.read_organ(name).any()
        subset = case.read_organs([empties[0], "liver"])
        assert list(subset) == [empties[0], "liver"]
        copied = case.to_case_data()
        np.testing.assert_array_equal(copied.label_volume, expected.label_volume)
        np.testing.assert_array_equal(copied.binary_layers, expected.binary_layers)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"case_id": "bad", "data": "wrong_shape"}, InvalidCase),
        ({"case_id": "bad", "data": "float"}, InvalidCase),
        ({"case_id": "a/b", "data": "ok"}, InvalidCase),
        ({"case_id": ".hidden", "data": "ok"}, InvalidCase),
        ({"case_id": "bad", "data": "ok", "meta": {"x": float("nan")}}, InvalidCase),
        ({"case_id": "bad", "data": "ok", "mapping": {"liver": 0}}, InvalidCase),
        ({"case_id": "s1", "data": "ok"}, CaseExists),
    ],
    ids=["wrong-shape", "float-mask", "slash-id", "hidden-id", "nan-meta", "zero-value", "exists"],
)
def test_bad_add_case_leaves_archive_unchanged(filled_archive, phantom, kwargs, error):
    masks, space = phantom
    kwargs = dict(kwargs)  # the parameter dict is shared by every backend's run
    data = {
        "ok": {"liver": masks["liver"]},
        "wrong_shape": {"liver": masks["liver"], "spleen": masks["spleen"][:, :, :-1]},
        "float": {"liver": masks["liver"], "spleen": masks["spleen"].astype(np.float32)},
    }[kwargs.pop("data")]
    before = snapshot(filled_archive)
    with MaskArchive(filled_archive, "a", SMALL) as archive:
        ids = archive.case_ids()
        with pytest.raises(error):
            archive.add_case(data=data, space=space, **kwargs)
        assert archive.case_ids() == ids
    after = snapshot(filled_archive)
    assert sorted(after) == sorted(before), "no file or folder may appear or vanish"
    if filled_archive.is_dir():  # single-file backends may legitimately touch their file on open/close
        assert after == before
    with MaskArchive(filled_archive, "r") as archive:
        assert archive.case_ids() == ["s0", "s1"]
        assert_case_matches(archive["s1"], masks)


def test_wrong_shape_message(archive_path, phantom):
    masks, space = phantom
    with MaskArchive(archive_path, "w", SMALL) as archive:
        with pytest.raises(InvalidCase, match=r"spleen.*\(70, 60, 49\).*\(70, 60, 50\)"):
            archive.add_case("x", {"liver": masks["liver"], "spleen": masks["spleen"][:, :, :-1]}, space=space)
        assert archive.case_ids() == []


@pytest.mark.parametrize("reserved", ["zarr.json", "ZARR.JSON", ".zgroup"])
def test_case_ids_reserved_for_store_metadata_are_refused(archive_path, reserved):
    mask = {"a": box((3, 3, 3), (0, 2), (0, 2), (0, 2))}
    with MaskArchive(archive_path, "w", SMALL) as archive:
        archive.add_case("s0", mask)
        with pytest.raises(InvalidCase, match="reserved|leading"):
            archive.add_case(reserved, mask, overwrite=True)
        assert archive.case_ids() == ["s0"]
        assert_case_matches(archive["s0"], mask)


# -- Hypothesis round trip -------------------------------------------------------------


@st.composite
def cases(draw):
    chunk = draw(st.sampled_from([4, 8, 16]))
    max_axis = 16 if chunk == 4 else 40  # keep the number of chunks (and the run time) small
    shape = tuple(draw(st.integers(1, max_axis)) for _ in range(3))
    n = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    masks = {}
    for i in range(n):
        kind = draw(st.sampled_from(["box", "noise", "empty", "full", "dup"]))
        if kind == "empty":
            m = np.zeros(shape, bool)
        elif kind == "full":
            m = np.ones(shape, bool)
        elif kind == "dup" and masks:
            m = next(iter(masks.values())).copy()
        else:
            lo = [int(rng.integers(0, s)) for s in shape]
            hi = [int(rng.integers(a + 1, s + 1)) for a, s in zip(lo, shape)]
            m = box(shape, *zip(lo, hi))
            if kind == "noise":
                m &= rng.random(shape) < draw(st.sampled_from([0.05, 0.5, 0.95]))
        if draw(st.booleans()):
            m = np.asfortranarray(m)
        masks[f"organ_{i}"] = m
    values = draw(st.lists(st.integers(1, 65535), min_size=n, max_size=n, unique=True) | st.none())
    mapping = None if values is None else dict(zip(masks, values))
    spacing = tuple(draw(st.sampled_from([0.5, 1.0, 2.5])) for _ in range(3))
    space = Space(shape=shape, spacing=spacing, origin=(draw(st.floats(-500, 500)), 0.0, 1.25))
    level = draw(st.sampled_from([1, 19]))
    storage = StorageSettings(chunk_size=chunk, label_level=level, layer_level=level)
    meta = draw(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5) | st.none(), max_size=3))
    return masks, mapping, space, storage, meta


@pytest.mark.parametrize("suffix", BACKEND_SUFFIXES, ids=lambda s: s.strip("."))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(example=cases())
def test_round_trip_hypothesis(suffix, example):
    masks, mapping, space, storage, meta = example
    expected = CaseData.from_masks(masks, space, mapping=mapping, meta=meta)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"archive{suffix}"
        with MaskArchive(path, "w", storage) as archive:
            archive.add_case("case", masks, space=space, mapping=mapping, meta=meta)
        with MaskArchive(path, "r") as archive:
            assert archive.case_ids() == ["case"]
            case = archive["case"]
            assert case.space == space
            assert case.mapping == expected.mapping
            assert list(case.mapping) == list(masks)
            assert case.stats == expected.stats
            assert case.meta == expected.meta
            for name, mask in masks.items():
                got = case.read_organ(name)
                assert got.dtype == np.bool_
                np.testing.assert_array_equal(got, mask, err_msg=name)
                representation = "binary_layer" if name in expected.layer_names else "label_volume"
                assert case.representation(name) == representation
            organs = case.read_organs()
            assert list(organs) == list(masks)
            for name, mask in masks.items():
                np.testing.assert_array_equal(organs[name], mask, err_msg=name)
            labels = case.read_labels(include_layers=False)
            assert labels.dtype == expected.label_volume.dtype
            np.testing.assert_array_equal(labels, expected.label_volume)
            layers = case.stored_layers
            for name, mask in masks.items():
                in_labels = labels == case.mapping[name]
                layer = np.zeros_like(mask, dtype=bool)
                if name in expected.layer_names:
                    layer = layers[expected.layer_names.index(name)]
                    # a layer holds the organ's voxels that another organ holds in the label volume
                    assert not (layer & in_labels).any() and not (layer & (labels == 0)).any(), name
                np.testing.assert_array_equal(in_labels | layer, mask, err_msg=name)


# -- Zarr directory layout ----------------------------------------------------------------


@pytest.fixture
def zarr_path(archive_path):
    if suffix_of(archive_path) != ".zarr":
        pytest.skip("Zarr directory layout only")
    return archive_path


def stored_chunk_files(case_dir: Path, array: str) -> list[Path]:
    files = sorted(p for p in (case_dir / array).rglob("*") if p.is_file() and p.name != "zarr.json")
    assert files, f"no stored chunk file under {case_dir / array}"
    return files


def present_inner_chunks(shard_file: Path, n_inner: int) -> int:
    """Inner chunks the shard index (at the end, n x (offset, nbytes) uint64 + crc32c) marks as stored."""
    data = shard_file.read_bytes()
    index = data[-(16 * n_inner + 4):-4]
    pairs = struct.unpack(f"<{2 * n_inner}Q", index)
    empty = 2**64 - 1
    return sum(1 for off, size in zip(pairs[::2], pairs[1::2]) if not (off == empty and size == empty))


def test_zarr_at_most_seven_files_per_case(zarr_path, phantom):
    masks, space = phantom
    with MaskArchive(zarr_path, "w", CHUNK8) as archive:
        archive.add_case("many", masks, space=space)
        archive.add_case("few", {"a": masks["liver"]}, space=space)
        assert archive["many"].info.layer_names
    for case_id in ("many", "few"):
        case_dir = zarr_path / "cases" / case_id
        n_files = sum(len(files) for _, _, files in os.walk(case_dir))
        assert 1 <= n_files <= 7, n_files  # zarr.json of the case and of each array, and one shard per array


def test_zarr_empty_chunks_not_stored(zarr_path):
    shape = (32, 32, 32)  # 4 x 4 x 4 = 64 inner chunks of 8^3
    corner = box(shape, (0, 8), (0, 8), (0, 8))
    inner = box(shape, (1, 3), (1, 3), (1, 3))  # inside the corner: goes to a binary layer
    full = np.ones(shape, bool)
    with MaskArchive(zarr_path, "w", CHUNK8) as archive:
        archive.add_case("corner", {"corner": corner, "inner": inner})
        archive.add_case("full", {"full": full, "inner": inner})
        assert archive["corner"].representation("inner") == "binary_layer"
    sizes = {}
    for case_id in ("corner", "full"):
        case_dir = zarr_path / "cases" / case_id
        (label_shard,) = stored_chunk_files(case_dir, "label_volume")
        (layer_shard,) = stored_chunk_files(case_dir, "binary_layers")
        sizes[case_id] = label_shard.stat().st_size
        # the single layer is a window of one 8^3 chunk around its voxels
        assert present_inner_chunks(layer_shard, 1) == 1
        assert present_inner_chunks(label_shard, 64) == (1 if case_id == "corner" else 64)
    assert sizes["corner"] < sizes["full"]
    with MaskArchive(zarr_path, "r") as archive:
        assert_case_matches(archive["corner"], {"corner": corner, "inner": inner})
        assert_case_matches(archive["full"], {"full": full, "inner": inner})


def test_zarr_all_empty_case_stores_no_chunk(zarr_path):
    with MaskArchive(zarr_path, "w", CHUNK8) as archive:
        archive.add_case("empty", {"a": np.zeros((16, 16, 16), bool)})
        assert not archive["empty"].read_labels().any()
    case_dir = zarr_path / "cases" / "empty"
    chunk_files = [p for p in (case_dir / "label_volume").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert all(present_inner_chunks(p, 8) == 0 for p in chunk_files)


def test_zarr_inner_chunks_have_crc32c(zarr_path, phantom):
    masks, space = phantom
    with MaskArchive(zarr_path, "w", SMALL) as archive:
        archive.add_case("p", masks, space=space)
    for array in ("label_volume", "binary_layers"):
        meta = json.loads((zarr_path / "cases" / "p" / array / "zarr.json").read_text())
        (sharding,) = [c for c in meta["codecs"] if c["name"] == "sharding_indexed"]
        config = sharding["configuration"]
        assert config["chunk_shape"][-3:] == [16, 16, 16]
        inner = [c["name"] for c in config["codecs"]]
        assert inner[-1] == "crc32c", inner
        assert "crc32c" in [c["name"] for c in config["index_codecs"]]
    layers = json.loads((zarr_path / "cases" / "p" / "binary_layers" / "zarr.json").read_text())
    inner = [c["name"] for c in layers["codecs"][0]["configuration"]["codecs"]]
    assert inner == ["packbits_zstd", "crc32c"]


@pytest.mark.parametrize("array", ["label_volume", "binary_layers"])
@pytest.mark.parametrize("where", ["first", "middle", "index", "last"])
def test_zarr_flipped_byte_raises_corrupt_chunk(zarr_path, phantom, array, where):
    masks, space = phantom
    with MaskArchive(zarr_path, "w", SMALL) as archive:
        archive.add_case("p", masks, space=space)
        layer_names = archive["p"].info.layer_names
    (shard,) = stored_chunk_files(zarr_path / "cases" / "p", array)
    size = shard.stat().st_size
    position = {"first": 0, "middle": size // 3, "index": size - 40, "last": size - 1}[where]
    flip_byte(shard, position)
    in_array = [n for n in masks if masks[n].any() and (n in layer_names) == (array == "binary_layers")]
    with MaskArchive(zarr_path, "r") as archive:
        case = archive["p"]
        # read_organ decodes only the chunks of the organ's bounding box: some organ must hit the bad one
        failing = []
        for name in in_array:
            try:
                got = case.read_organ(name)
            except CorruptArchive:
                failing.append(name)
            else:
                np.testing.assert_array_equal(got, masks[name])  # never silently wrong
        assert failing
        with pytest.raises(CorruptArchive):
            case.read_labels()
        with pytest.raises(CorruptArchive):
            case.read_organs()
        if array == "label_volume":
            with pytest.raises(CorruptArchive):
                case.read_labels(include_layers=False)
        with pytest.raises(CorruptArchive):
            case.to_case_data()


def test_zarr_emptied_chunk_file_raises_corrupt_chunk(zarr_path, phantom):
    masks, space = phantom
    with MaskArchive(zarr_path, "w", SMALL) as archive:
        archive.add_case("p", masks, space=space)
    (shard,) = stored_chunk_files(zarr_path / "cases" / "p", "label_volume")
    shard.write_bytes(b"")
    with MaskArchive(zarr_path, "r") as archive:
        case = archive["p"]
        with pytest.raises(CorruptChunk):
            case.read_organ("spleen")  # partial read
        with pytest.raises(CorruptChunk):
            case.read_labels(include_layers=False)  # full read


def test_mode_w_refuses_to_replace_a_folder_that_is_not_an_archive(tmp_path):
    folder = tmp_path / "precious.zarr"
    folder.mkdir()
    (folder / "thesis.txt").write_text("do not delete")
    with pytest.raises(InvalidArchive, match="not a medmask_store archive"):
        MaskArchive(folder, "w")
    assert (folder / "thesis.txt").read_text() == "do not delete"


def test_a_file_where_a_zarr_directory_is_expected_is_refused(tmp_path):
    path = tmp_path / "file.zarr"
    path.write_bytes(b"not a directory")
    for mode in ("r", "a", "w"):
        with pytest.raises(InvalidArchive, match="is a file"):
            MaskArchive(path, mode)
    assert path.read_bytes() == b"not a directory"
