"""SegmentationMask / LabelMapping: the medmask 0.1.3 API on a one-case archive."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import box
from hypothesis import given, settings
from hypothesis import strategies as st
from spacetransformer import Space

from medmask_store import (
    InvalidArchive,
    InvalidCase,
    LabelMapping,
    MaskArchive,
    OrganNotFound,
    SegmentationMask,
)
from medmask_store.segmentation_mask import CASE_ID, DTYPE_KEY

SHAPE = (9, 7, 5)
SPACE = Space(shape=SHAPE, origin=(-100.25, 3.5, 7.0), spacing=(0.8, 0.75, 2.5))
# every archive suffix, plus arbitrary ones that get the compact single-file backend
CORNER = box(SHAPE, (0, 1), (0, 1), (0, 1))
SUFFIXES = [".zarr", ".zarr.zip", ".h5", ".hdf5", ".medmask", ".msk"]
BACKEND_OF = {".zarr": "zarr", ".zarr.zip": "zarr.zip", ".h5": "h5", ".hdf5": "h5", ".medmask": "msk", ".msk": "msk"}


def sample(dtype) -> tuple[np.ndarray, dict[str, int]]:
    """A label array of ``dtype`` with two organs (one only for bool) and its mapping."""
    if dtype == np.bool_:
        return box(SHAPE, (1, 4), (2, 6), (0, 3)), {"liver": 1}
    top = 200 if dtype == np.uint8 else 65535
    array = np.zeros(SHAPE, dtype=dtype)
    array[1:4, 2:6, 0:3] = 3
    array[5:8, 0:2, 1:5] = top
    return array, {"kidney": 3, "aorta": top, "empty_organ": 7}


def assert_same_mask(got: SegmentationMask, array: np.ndarray, mapping: dict[str, int], space: Space) -> None:
    assert got.data.dtype == array.dtype
    np.testing.assert_array_equal(got.data, array)
    assert got.space == space
    assert got.mapping.to_dict() == mapping


# -- LabelMapping --------------------------------------------------------------------------


def test_label_mapping_lookups_both_ways():
    m = LabelMapping({"liver": 1, "spleen": 5})
    assert (m["liver"], m("spleen"), m.liver) == (1, 5, 1)
    assert m.inverse(5) == "spleen"
    assert m.has_label(1) and not m.has_label(2)
    assert list(m) == ["liver", "spleen"] and len(m) == 2
    assert list(m.items()) == [("liver", 1), ("spleen", 5)]
    assert "liver" in m and "kidney" not in m and 1 not in m
    assert m.get("kidney") is None


def test_label_mapping_set_moves_a_renamed_label():
    m = LabelMapping()
    m["liver"] = 1
    m["liver"] = 4
    assert m.to_dict() == {"liver": 4}
    assert not m.has_label(1) and m.inverse(4) == "liver"


def test_label_mapping_json_dict_repr_eq():
    m = LabelMapping({"liver": 1, "aorta": 300})
    assert LabelMapping.from_json(m.to_json()) == m
    assert json.loads(m.to_json()) == {"liver": 1, "aorta": 300}
    assert m == {"aorta": 300, "liver": 1} and m != {"liver": 1}
    assert m.to_dict() is not m.to_dict()
    assert repr(m) == "LabelMapping({'liver': 1, 'aorta': 300})"
    assert str(m) == "{'liver': 1, 'aorta': 300}"  # as medmask prints it


def test_label_mapping_copies_its_input():
    source = {"liver": 1}
    m = LabelMapping(source)
    m["spleen"] = 2
    assert source == {"liver": 1}


def test_label_mapping_unknown_name_or_label():
    m = LabelMapping({"liver": 1})
    with pytest.raises(OrganNotFound, match=r"no organ named 'livr'.*did you mean liver") as err:
        m["livr"]
    assert isinstance(err.value, KeyError)
    with pytest.raises(OrganNotFound, match="'kidney'"):
        m("kidney")
    with pytest.raises(OrganNotFound, match="no organ has label 9"):
        m.inverse(9)
    with pytest.raises(AttributeError, match="'kidney'"):
        m.kidney  # noqa: B018


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"liver": 1, "spleen": 1}, r"label 1 already belongs to organ 'liver'; cannot also name it 'spleen'"),
        ({"background": 0}, r"label 0 of organ 'background' is outside 1\.\.65535 \(0 is the background\)"),
        ({"big": 65536}, r"label 65536 of organ 'big' is outside"),
        ({"liver": 1.0}, r"label of organ 'liver' must be an integer, got 1\.0"),
        ({"liver": True}, r"label of organ 'liver' must be an integer, got True"),
        ({"a/b": 1}, r"invalid organ name 'a/b'"),
        ([("liver", 1)], r"must be a dict of name -> label, got list"),
    ],
)
def test_label_mapping_rejects(mapping, message):
    with pytest.raises(InvalidCase, match=message) as err:
        LabelMapping(mapping)
    assert isinstance(err.value, ValueError)


def test_label_mapping_from_bad_json():
    with pytest.raises(InvalidCase, match="does not parse"):
        LabelMapping.from_json("{liver: 1")
    with pytest.raises(InvalidCase, match="must be an object"):
        LabelMapping.from_json("[1, 2]")


# -- construction -----------------------------------------------------------------------------


def test_defaults_and_properties():
    array, mapping = sample(np.uint8)
    mask = SegmentationMask(array, mapping)
    assert mask.space == Space(shape=SHAPE)
    assert isinstance(mask.mapping, LabelMapping) and mask.mapping == mapping
    assert mask.bit_depth == 8
    assert repr(mask) == f"SegmentationMask(shape={SHAPE}, dtype=uint8, mapping={mapping!r})"
    with pytest.raises(ValueError, match="read-only"):
        mask.data[0, 0, 0] = 1


@pytest.mark.parametrize(("dtype", "bits"), [(np.bool_, 1), (np.uint8, 8), (np.uint16, 16), (np.uint32, 32)])
def test_bit_depth(dtype, bits):
    assert SegmentationMask(np.zeros(SHAPE, dtype), {}).bit_depth == bits


def test_mapping_is_not_shared_with_the_caller():
    array, _ = sample(np.bool_)
    given_mapping = LabelMapping({"liver": 1})
    mask = SegmentationMask(array, given_mapping)
    mask.mapping["other"] = 9
    assert given_mapping == {"liver": 1}


def test_unnamed_labels_get_idx_names():
    array, _ = sample(np.uint16)
    mask = SegmentationMask(array, {"kidney": 3})
    assert mask.mapping == {"kidney": 3, "idx_65535": 65535}
    assert SegmentationMask(CORNER, {}).mapping == {"idx_1": 1}


def test_unnamed_label_whose_default_name_is_taken():
    array, _ = sample(np.uint8)
    with pytest.raises(InvalidCase, match=r"label 200 is in the array.*'idx_200' is taken by label 3"):
        SegmentationMask(array, {"idx_200": 3})


@pytest.mark.parametrize(
    ("array", "space", "message"),
    [
        (np.zeros(SHAPE, np.float32), None, r"dtype float32; use bool, uint8, uint16 or uint32"),
        (np.zeros(SHAPE, np.int16), None, r"dtype int16"),
        (np.zeros((4, 5), np.uint8), None, r"must be 3-D, got shape \(4, 5\)"),
        (np.full(SHAPE, 70000, np.uint32), None, r"holds label 70000; labels must be at most 65535"),
        (np.zeros(SHAPE, np.uint8), Space(shape=(5, 7, 9)), r"shape \(9, 7, 5\), its Space has shape \(5, 7, 9\)"),
        (np.zeros(SHAPE, np.uint8), "space", r"must be a spacetransformer.Space, got str"),
    ],
)
def test_construction_errors(array, space, message):
    with pytest.raises(InvalidCase, match=message):
        SegmentationMask(array, {}, space=space)


def test_no_axis_reversal():
    """The array's axis order is the caller's: a (z, y, x) array pairs with a (z, y, x) Space."""
    array = np.zeros((5, 7, 9), np.uint8)
    mask = SegmentationMask(array, {}, space=Space(shape=(5, 7, 9)))
    assert mask.data.shape == tuple(mask.space.shape) == (5, 7, 9)


# -- lazy_init and add_label ------------------------------------------------------------------


def test_lazy_init_then_add_labels():
    mask = SegmentationMask.lazy_init(8, space=SPACE)
    assert mask.data.dtype == np.uint8 and not mask.data.any() and mask.space is SPACE
    first = box(SHAPE, (0, 5), (0, 7), (0, 5))
    second = box(SHAPE, (3, 9), (0, 7), (0, 5)).astype(np.uint8) * 7  # nonzero counts as inside
    mask.add_label(first, 2, "liver")
    before = mask.data
    mask.add_label(second, 9, "spleen")
    expected = np.where(second > 0, 9, np.where(first, 2, 0))
    np.testing.assert_array_equal(mask.data, expected)
    assert mask.data.dtype == np.uint8
    assert mask.mapping == {"liver": 2, "spleen": 9}
    np.testing.assert_array_equal(before, np.where(first, 2, 0))  # earlier views stay as they were


@pytest.mark.parametrize(("bits", "dtype"), [(1, np.bool_), (16, np.uint16), (32, np.uint32)])
def test_lazy_init_dtypes_and_shape(bits, dtype):
    mask = SegmentationMask.lazy_init(bits, shape=SHAPE)
    assert mask.data.dtype == dtype and mask.data.shape == SHAPE and mask.space == Space(shape=SHAPE)
    mask.add_label(box(SHAPE, (0, 2), (0, 2), (0, 2)), 1, "a")
    assert mask.data.dtype == dtype and mask.data.sum() == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bit_depth": 4, "shape": SHAPE}, r"bit_depth must be one of 1, 8, 16, 32, got 4"),
        ({"bit_depth": True, "shape": SHAPE}, r"bit_depth must be one of"),
        ({"bit_depth": 8}, r"needs a space or a shape"),
        ({"bit_depth": 8, "space": SPACE, "shape": (1, 2, 3)}, r"shape \(1, 2, 3\) differs from the Space's shape"),
    ],
)
def test_lazy_init_errors(kwargs, message):
    with pytest.raises(InvalidCase, match=message):
        SegmentationMask.lazy_init(**kwargs)


@pytest.mark.parametrize(
    ("bits", "mask", "label", "name", "message"),
    [
        (8, CORNER, 5, "spleen", r"label 5 already exists \(organ 'liver'\)"),
        (8, CORNER, 6, "liver", r"organ 'liver' already exists \(label 5\)"),
        (8, CORNER, 256, "big", r"label 256 of organ 'big' exceeds the 8-bit mask's limit \(255"),
        (1, CORNER, 2, "two", r"exceeds the 1-bit mask's limit \(1\)"),
        (32, CORNER, 65536, "big", r"label 65536 of organ 'big' is outside 1\.\.65535"),
        (8, CORNER, 0, "zero", r"label 0 of organ 'zero' is outside"),
        (8, np.ones((2, 2, 2), bool), 6, "small", r"organ 'small' has shape \(2, 2, 2\), expected \(9, 7, 5\)"),
        (8, CORNER, 6, "a/b", r"invalid organ name 'a/b'"),
    ],
)
def test_add_label_errors(bits, mask, label, name, message):
    seg = SegmentationMask.lazy_init(bits, shape=SHAPE)
    if bits == 8:
        seg.add_label(box(SHAPE, (4, 5), (4, 5), (4, 5)), 5, "liver")
    before, mapping = seg.data.copy(), seg.mapping.to_dict()
    with pytest.raises(InvalidCase, match=message):
        seg.add_label(mask, label, name)
    np.testing.assert_array_equal(seg.data, before)  # a rejected add_label changes nothing
    assert seg.mapping == mapping


# -- queries --------------------------------------------------------------------------------


def test_binary_masks_by_names_and_labels():
    array, mapping = sample(np.uint16)
    mask = SegmentationMask(array, mapping)
    kidney, aorta = array == 3, array == 65535
    np.testing.assert_array_equal(mask.get_binary_mask_by_names("kidney"), kidney)
    np.testing.assert_array_equal(mask.get_binary_mask_by_names(["kidney", "aorta"]), kidney | aorta)
    np.testing.assert_array_equal(mask.get_binary_mask_by_labels(65535), aorta)
    np.testing.assert_array_equal(mask.get_binary_mask_by_labels(np.uint16(3)), kidney)
    np.testing.assert_array_equal(mask.get_binary_mask_by_labels([3, 65535]), kidney | aorta)
    np.testing.assert_array_equal(mask.get_binary_mask_by_labels((3, 42)), kidney)  # unused labels match nothing
    assert not mask.get_binary_mask_by_names("empty_organ").any()
    assert not mask.get_binary_mask_by_labels([]).any()
    np.testing.assert_array_equal(mask.to_binary(), kidney | aorta)
    assert mask.to_binary().dtype == np.bool_


def test_binary_masks_of_a_bool_mask():
    array, mapping = sample(np.bool_)
    mask = SegmentationMask(array, mapping)
    np.testing.assert_array_equal(mask.get_binary_mask_by_names("liver"), array)
    np.testing.assert_array_equal(mask.get_binary_mask_by_names(["liver"]), array)
    np.testing.assert_array_equal(mask.get_binary_mask_by_labels([1]), array)


def test_query_errors():
    array, mapping = sample(np.uint8)
    mask = SegmentationMask(array, mapping)
    with pytest.raises(OrganNotFound, match=r"no organ named 'kidny'.*did you mean kidney"):
        mask.get_binary_mask_by_names("kidny")
    with pytest.raises(OrganNotFound, match="'lung'"):
        mask.get_binary_mask_by_names(["kidney", "lung"])
    with pytest.raises(InvalidCase, match=r"labels must be an integer or a list of integers, got '3'"):
        mask.get_binary_mask_by_labels("3")
    with pytest.raises(InvalidCase, match=r"labels must be integers, got 2\.5 in \[3, 2\.5\]"):
        mask.get_binary_mask_by_labels([3, 2.5])
    with pytest.raises(InvalidCase, match="got True"):
        mask.get_binary_mask_by_labels(True)


# -- persistence ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", SUFFIXES, ids=lambda s: s.strip("."))
@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.uint16], ids=lambda d: np.dtype(d).name)
def test_round_trip_is_bit_exact(tmp_path, suffix, dtype):
    array, mapping = sample(dtype)
    path = tmp_path / f"mask{suffix}"
    SegmentationMask(array, mapping, space=SPACE).save(path)
    assert_same_mask(SegmentationMask.load(path), array, mapping, SPACE)
    assert_same_mask(SegmentationMask.load(str(path), case_id=CASE_ID), array, mapping, SPACE)


@pytest.mark.parametrize("suffix", [".zarr.zip", ".medmask"])
def test_uint32_round_trip_keeps_its_dtype(tmp_path, suffix):
    array = np.zeros(SHAPE, np.uint32)
    array[2:5, 1:3, :] = 40000
    path = tmp_path / f"mask{suffix}"
    SegmentationMask(array, {"organ": 40000}, space=SPACE).save(path)
    assert_same_mask(SegmentationMask.load(path), array, {"organ": 40000}, SPACE)


@pytest.mark.parametrize("suffix", SUFFIXES, ids=lambda s: s.strip("."))
def test_saved_file_is_a_one_case_archive(tmp_path, suffix):
    array, mapping = sample(np.uint8)
    path = tmp_path / f"mask{suffix}"
    SegmentationMask(array, mapping, space=SPACE).save(path)
    with MaskArchive(path) as archive:
        assert archive.backend == BACKEND_OF[suffix]
        assert archive.case_ids() == [CASE_ID]
        case = archive[CASE_ID]
        assert case.space == SPACE and case.mapping == mapping
        assert case.meta == {DTYPE_KEY: "uint8"}
        for name, label in mapping.items():
            np.testing.assert_array_equal(case.read_organ(name), array == label, err_msg=name)


def test_compact_backend_is_one_file_whatever_the_suffix(tmp_path):
    array, mapping = sample(np.uint8)
    for name in ("tempfile.medmask", "mask.msk", "no_suffix"):
        SegmentationMask(array, mapping).save(tmp_path / name)
        assert (tmp_path / name).is_file()
        with MaskArchive(tmp_path / name) as archive:  # recognised by its magic bytes
            assert archive.backend == "msk"
        assert SegmentationMask.load(tmp_path / name).mapping == mapping


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "mask.medmask"
    SegmentationMask(*sample(np.uint16), space=SPACE).save(path)
    array, mapping = sample(np.bool_)
    SegmentationMask(array, mapping, space=SPACE).save(path)
    assert_same_mask(SegmentationMask.load(path), array, mapping, SPACE)


def test_empty_mask_round_trips(tmp_path):
    path = tmp_path / "empty.zarr.zip"
    SegmentationMask.lazy_init(16, space=SPACE).save(path)
    assert_same_mask(SegmentationMask.load(path), np.zeros(SHAPE, np.uint16), {}, SPACE)


def test_load_chooses_among_several_cases(tmp_path, phantom):
    masks, space = phantom
    path = tmp_path / "cases.zarr.zip"
    kidney = {"kidney_left": masks["kidney_left"]}
    with MaskArchive(path, "w") as archive:
        archive.add_case("s1", kidney, space=space, mapping={"kidney_left": 4})
        archive.add_case("s2", masks, space=space)
    with pytest.raises(InvalidArchive, match=r"holds 2 cases \('s1', 's2'\); pass case_id=\.\.\. to choose one"):
        SegmentationMask.load(path)
    loaded = SegmentationMask.load(path, case_id="s1")
    assert loaded.mapping == {"kidney_left": 4} and loaded.space == space
    np.testing.assert_array_equal(loaded.data, masks["kidney_left"].astype(np.uint8) * 4)
    assert loaded.data.dtype == np.uint8  # no dtype in meta: the stored label dtype


def test_from_case_refuses_overlapping_organs(tmp_path, phantom):
    masks, space = phantom  # rib_right_12 lies inside liver; other ellipsoids overlap too
    with MaskArchive(tmp_path / "cases.h5", "w") as archive:
        case = archive.add_case("s1", masks, space=space)
        layered = ", ".join(map(repr, case.info.layer_names))
        assert "rib_right_12" in layered or "liver" in layered
        message = rf"case 's1' has overlapping organs \({re.escape(layered)} overlap others\).*case\.read_organ\(name\)"
        with pytest.raises(InvalidCase, match=message):
            SegmentationMask.from_case(case)


def test_from_case_of_organs_without_overlap(tmp_path, phantom):
    masks, space = phantom
    liver_only = {"liver": masks["liver"], "spleen": masks["spleen"] & ~masks["liver"]}
    with MaskArchive(tmp_path / "cases.zarr", "w") as archive:
        case = archive.add_case("s1", liver_only, space=space)
        mask = SegmentationMask.from_case(case)
    assert mask.space == space and mask.mapping == case.mapping
    for name, organ in liver_only.items():
        np.testing.assert_array_equal(mask.get_binary_mask_by_names(name), organ, err_msg=name)


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ("float32", r"case 's1': unsupported array_dtype 'float32' in its metadata"),
        ("bool", r"case 's1': its labels do not fit its array_dtype 'bool'"),
    ],
)
def test_from_case_with_a_bad_stored_dtype(tmp_path, stored, message):
    array, mapping = sample(np.uint8)
    with MaskArchive(tmp_path / "cases.zarr.zip", "w") as archive:
        case = archive.add_case("s1", array, mapping=mapping, meta={DTYPE_KEY: stored})
        with pytest.raises(InvalidCase, match=message):
            SegmentationMask.from_case(case)


def test_load_errors(tmp_path):
    empty = tmp_path / "empty.zarr"
    MaskArchive(empty, "w").close()
    with pytest.raises(InvalidArchive, match="holds no case"):
        SegmentationMask.load(empty)
    for missing in ("missing.zarr.zip", "missing.medmask"):
        with pytest.raises(InvalidArchive, match=f"cannot load a mask from .*{missing}: no such file"):
            SegmentationMask.load(tmp_path / missing)
    (tmp_path / "notes.txt").write_text("not an archive")
    with pytest.raises(InvalidArchive, match="cannot tell the archive format"):
        SegmentationMask.load(tmp_path / "notes.txt")


# -- property -----------------------------------------------------------------------------------


@st.composite
def label_masks(draw):
    """A small label array of a random supported dtype, and a mapping naming some of its labels."""
    dtype = draw(st.sampled_from([np.bool_, np.uint8, np.uint16]))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=3, max_size=3)))
    top = {np.bool_: 1, np.uint8: 255, np.uint16: 65535}[dtype]
    palette = draw(st.lists(st.integers(1, top), min_size=1, max_size=5, unique=True))
    cells = draw(st.lists(st.sampled_from([0, *palette]), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    array = np.array(cells, dtype=np.int64).reshape(shape).astype(dtype)
    extra = draw(st.lists(st.integers(1, top), max_size=2, unique=True))  # possibly empty organs
    named = draw(st.lists(st.sampled_from(sorted(set(palette) | set(extra))), unique=True))
    mapping = {f"organ_{label}": label for label in named}
    return array, mapping


@settings(max_examples=40, deadline=None)
@given(label_masks(), st.sampled_from([".zarr.zip", ".medmask"]))
def test_round_trip_property(example, suffix):
    array, mapping = example
    space = Space(shape=array.shape, spacing=(0.5, 1.25, 3.0))
    mask = SegmentationMask(array, mapping, space=space)
    present = {int(v) for v in np.unique(array) if v}
    expected = {**mapping, **{f"idx_{v}": v for v in present if v not in mapping.values()}}
    assert mask.mapping == expected
    for name, label in expected.items():
        np.testing.assert_array_equal(mask.get_binary_mask_by_names(name), array == label)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"mask{suffix}"
        mask.save(path)
        assert_same_mask(SegmentationMask.load(path), array, expected, space)
