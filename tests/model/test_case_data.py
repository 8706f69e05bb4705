"""CaseData: split of organs into label volume / binary layers, statistics, input validation."""

from __future__ import annotations

import itertools
import re
import weakref
from collections.abc import Iterator, Mapping

import numpy as np
import pytest
from helpers import box
from spacetransformer import Space

from medmask_store import concurrency
from medmask_store.errors import InvalidCase
from medmask_store.model.case_data import CaseData

SHAPE = (12, 10, 8)
SPACE = Space(shape=SHAPE, spacing=(0.5, 2.0, 3.0), origin=(10.0, -20.0, 5.0))


def assert_stats_brute_force(stats, mask: np.ndarray, space: Space) -> None:
    """Compare one OrganStats with statistics computed directly from the mask (axis-aligned space)."""
    coords = np.argwhere(mask)
    if coords.size == 0:
        assert stats.voxels == 0
        assert stats.volume_ml == 0.0
        assert stats.bbox is None
        assert stats.centroid_voxel is None
        assert stats.centroid_lps_mm is None
        assert stats.touches_border is False
        return
    voxels = len(coords)
    assert stats.voxels == voxels
    assert stats.volume_ml == pytest.approx(voxels * float(np.prod(space.spacing)) / 1000.0, rel=1e-6, abs=1e-6)
    bbox = tuple((int(coords[:, a].min()), int(coords[:, a].max()) + 1) for a in range(3))
    assert tuple(tuple(int(v) for v in axis) for axis in stats.bbox) == bbox
    centroid = coords.mean(axis=0)
    assert np.allclose(stats.centroid_voxel, centroid, rtol=0, atol=1e-3)
    # axis-aligned Space: world = origin + spacing * index; centroid_lps_mm is derived from the
    # stored centroid_voxel (rounded to 0.001 voxel), so it is exact to 0.001 voxel in mm
    tolerance = 1e-3 * float(max(space.spacing))
    centroid_mm = np.asarray(space.origin) + np.asarray(space.spacing) * centroid
    assert np.allclose(stats.centroid_lps_mm, centroid_mm, rtol=0, atol=tolerance)
    via_space = space.to_world_transform.apply_point(np.array([stats.centroid_voxel]))[0]
    assert np.allclose(stats.centroid_lps_mm, via_space, rtol=0, atol=1e-3)
    touches = any(lo == 0 or hi == n for (lo, hi), n in zip(bbox, space.shape))
    assert stats.touches_border is touches


def assert_consistent_split(data: CaseData, masks: dict[str, np.ndarray]) -> None:
    """Every organ is reproduced exactly; the label volume gives each organ voxel to the largest
    organ holding it; a layer holds exactly its organ's voxels given to another organ."""
    assert set(data.mapping) == set(masks)
    assert data.label_volume.shape == tuple(data.space.shape)
    assert data.binary_layers.dtype == np.bool_
    assert data.binary_layers.shape == (len(data.layer_names), *data.space.shape)
    assert len(set(data.layer_names)) == len(data.layer_names)
    for name, mask in masks.items():
        got = data.organ_mask(name)
        assert got.dtype == np.bool_
        np.testing.assert_array_equal(got, mask.astype(bool), err_msg=name)
    # placed largest first (ties: mask order): each voxel holds the first organ containing it
    expected = np.zeros(data.space.shape, dtype=np.int64)
    for name in sorted(masks, key=lambda n: -int(np.count_nonzero(masks[n]))):
        free = masks[name].astype(bool) & (expected == 0)
        expected[free] = data.mapping[name]
    np.testing.assert_array_equal(data.label_volume.astype(np.int64), expected)
    for name, mask in masks.items():
        given_away = mask.astype(bool) & (expected != data.mapping[name])
        if name in data.layer_names:
            np.testing.assert_array_equal(data.binary_layers[data.layer_names.index(name)], given_away, err_msg=name)
        else:
            assert not given_away.any(), f"{name} lost voxels to another organ but has no layer"


# -- overlaps ---------------------------------------------------------------


def test_phantom_overlaps_split_and_every_organ_exact(phantom):
    masks, space = phantom
    data = CaseData.from_masks(masks, space)
    assert_consistent_split(data, masks)
    overlapping_pairs = [
        (a, b) for a, b in itertools.combinations(masks, 2) if (masks[a] & masks[b]).any()
    ]
    assert overlapping_pairs, "the phantom is supposed to contain overlaps"
    assert data.layer_names
    for a, b in overlapping_pairs:
        assert a in data.layer_names or b in data.layer_names
    # rib_right_12 lies inside liver: at most one of them can be in the label volume
    assert "rib_right_12" in data.layer_names or "liver" in data.layer_names
    # a layer's voxels belong, in the label volume, to organs at least as large (placed largest first)
    sizes = {n: int(m.sum()) for n, m in masks.items()}
    by_value = {v: n for n, v in data.mapping.items()}
    for k, layer in enumerate(data.layer_names):
        hosts = {by_value[int(v)] for v in np.unique(data.label_volume[data.binary_layers[k]])}
        assert hosts and min(sizes[h] for h in hosts) >= sizes[layer]
    # organs that overlap nothing stay in the label volume
    for name, mask in masks.items():
        if not any((mask & other).any() for o, other in masks.items() if o != name):
            assert name not in data.layer_names


@pytest.mark.parametrize("small_first", [False, True], ids=["big-first", "small-first"])
def test_smaller_of_overlapping_pair_goes_to_layer(small_first):
    big = box(SHAPE, (0, 8), (0, 8), (0, 6))
    small = box(SHAPE, (5, 11), (5, 9), (4, 8))  # partially overlaps big, fewer voxels
    assert small.sum() < big.sum() and (big & small).any()
    separate = box(SHAPE, (10, 12), (0, 3), (7, 8))  # overlaps nothing
    items = [("small", small), ("big", big), ("separate", separate)]
    masks = dict(items if small_first else items[::-1])
    data = CaseData.from_masks(masks, SPACE)
    assert data.layer_names == ["small"]
    assert_consistent_split(data, masks)


def test_nested_organ_goes_to_layer():
    host = box(SHAPE, (1, 11), (1, 9), (1, 7))
    inner = box(SHAPE, (4, 6), (4, 6), (3, 5))
    data = CaseData.from_masks({"inner": inner, "host": host}, SPACE)
    assert data.layer_names == ["inner"]
    assert (data.label_volume[inner] == data.mapping["host"]).all()
    assert_consistent_split(data, {"inner": inner, "host": host})


def test_no_overlap_means_no_layers():
    masks = {"a": box(SHAPE, (0, 4), (0, 10), (0, 8)), "b": box(SHAPE, (4, 12), (0, 10), (0, 8))}
    data = CaseData.from_masks(masks, SPACE)
    assert data.layer_names == []
    assert data.binary_layers.shape == (0, *SHAPE)
    assert_consistent_split(data, masks)


def test_identical_masks_both_exact():
    m = box(SHAPE, (2, 5), (2, 5), (2, 5))
    masks = {"a": m, "b": m.copy(), "c": m.copy()}
    data = CaseData.from_masks(masks, SPACE)
    assert len(data.layer_names) == 2
    assert_consistent_split(data, masks)


# -- mapping ------------------------------------------------------------------


def test_default_values_are_1_to_n_in_mask_order():
    names = ["zeta", "alpha", "mid", "empty"]
    masks = {n: box(SHAPE, (i, i + 1), (0, 2), (0, 2)) for i, n in enumerate(names[:3])}
    masks["empty"] = np.zeros(SHAPE, bool)
    data = CaseData.from_masks(masks, SPACE)
    assert data.mapping == {"zeta": 1, "alpha": 2, "mid": 3, "empty": 4}
    assert list(data.mapping) == names
    assert data.label_volume.dtype == np.uint8


def test_explicit_mapping_honoured():
    masks = {"a": box(SHAPE, (0, 3), (0, 3), (0, 3)), "b": box(SHAPE, (5, 7), (5, 7), (5, 7))}
    mapping = {"b": 42, "a": 7}
    data = CaseData.from_masks(masks, SPACE, mapping=mapping)
    assert data.mapping == mapping
    assert set(np.unique(data.label_volume).tolist()) == {0, 7, 42}
    assert (data.label_volume[masks["a"]] == 7).all()
    assert (data.label_volume[masks["b"]] == 42).all()
    assert data.label_volume.dtype == np.uint8
    assert_consistent_split(data, masks)


def test_large_mapping_values_use_uint16():
    masks = {"a": box(SHAPE, (0, 3), (0, 3), (0, 3)), "b": box(SHAPE, (5, 7), (5, 7), (5, 7))}
    data = CaseData.from_masks(masks, SPACE, mapping={"a": 300, "b": 65535})
    assert data.label_volume.dtype == np.uint16
    assert (data.label_volume[masks["a"]] == 300).all()
    assert (data.label_volume[masks["b"]] == 65535).all()
    assert_consistent_split(data, masks)


def test_mapping_value_255_stays_uint8():
    data = CaseData.from_masks({"a": box(SHAPE, (0, 1), (0, 1), (0, 1))}, SPACE, mapping={"a": 255})
    assert data.label_volume.dtype == np.uint8
    assert data.label_volume[0, 0, 0] == 255


# -- statistics ----------------------------------------------------------------


def test_stats_match_brute_force_on_phantom(phantom):
    masks, space = phantom
    data = CaseData.from_masks(masks, space)
    assert set(data.stats) == set(masks)
    for name, mask in masks.items():
        assert_stats_brute_force(data.stats[name], mask, space)


def test_stats_match_brute_force_border_and_interior():
    rng = np.random.default_rng(5)
    masks = {
        "corner": box(SHAPE, (0, 3), (0, 2), (0, 4)),
        "far_face": box(SHAPE, (9, 12), (3, 6), (2, 4)),
        "interior": box(SHAPE, (3, 7), (2, 8), (1, 7)) & (rng.random(SHAPE) < 0.5),
        "single": box(SHAPE, (6, 7), (4, 5), (3, 4)),
        "z_border": box(SHAPE, (4, 5), (4, 5), (7, 8)),
    }
    data = CaseData.from_masks(masks, SPACE)
    for name, mask in masks.items():
        assert_stats_brute_force(data.stats[name], mask, SPACE)
    assert data.stats["corner"].touches_border is True
    assert data.stats["far_face"].touches_border is True
    assert data.stats["z_border"].touches_border is True
    assert data.stats["interior"].touches_border is False
    assert data.stats["single"].bbox == ((6, 7), (4, 5), (3, 4))
    assert data.stats["single"].voxels == 1
    assert data.stats["single"].volume_ml == pytest.approx(0.5 * 2.0 * 3.0 / 1000.0)


def test_empty_masks_keep_their_name():
    masks = {
        "present": box(SHAPE, (1, 4), (1, 4), (1, 4)),
        "empty_a": np.zeros(SHAPE, bool),
        "empty_b": np.zeros(SHAPE, np.uint8),
    }
    data = CaseData.from_masks(masks, SPACE)
    assert list(data.mapping) == ["present", "empty_a", "empty_b"]
    for name in ("empty_a", "empty_b"):
        s = data.stats[name]
        assert (s.voxels, s.volume_ml, s.bbox, s.centroid_voxel, s.centroid_lps_mm, s.touches_border) == (
            0, 0.0, None, None, None, False,
        )
        assert not data.organ_mask(name).any()
        assert not (data.label_volume == data.mapping[name]).any()
    assert data.stats["present"].voxels == 27


def test_only_empty_masks():
    data = CaseData.from_masks({"a": np.zeros(SHAPE, bool), "b": np.zeros(SHAPE, bool)}, SPACE)
    assert not data.label_volume.any()
    assert data.layer_names == []
    assert all(s.voxels == 0 and s.bbox is None for s in data.stats.values())


# -- memory layouts and dtypes ---------------------------------------------------


def assert_same_case(a: CaseData, b: CaseData) -> None:
    assert a.space == b.space
    assert a.mapping == b.mapping
    assert a.layer_names == b.layer_names
    assert a.label_volume.dtype == b.label_volume.dtype
    np.testing.assert_array_equal(a.label_volume, b.label_volume)
    np.testing.assert_array_equal(a.binary_layers, b.binary_layers)
    assert a.stats == b.stats


def test_fortran_ordered_masks_give_identical_results(phantom):
    masks, space = phantom
    fortran = {n: np.asfortranarray(m) for n, m in masks.items()}
    assert all(m.flags.f_contiguous and not m.flags.c_contiguous for m in fortran.values())
    c_data = CaseData.from_masks(masks, space)
    f_data = CaseData.from_masks(fortran, space)
    assert_same_case(c_data, f_data)
    assert_consistent_split(f_data, masks)


def test_mixed_and_strided_layouts_give_identical_results():
    rng = np.random.default_rng(11)
    base = {n: rng.random(SHAPE) < p for n, p in [("a", 0.3), ("b", 0.1), ("c", 0.6)]}
    mixed = {
        "a": np.asfortranarray(base["a"]),
        "b": np.ascontiguousarray(base["b"]),
        # non-contiguous view
        "c": np.asfortranarray(np.repeat(base["c"], 2, axis=1))[:, ::2, :],
    }
    np.testing.assert_array_equal(mixed["c"], base["c"])
    assert_same_case(CaseData.from_masks(base, SPACE), CaseData.from_masks(mixed, SPACE))


def test_uint8_zero_one_masks_accepted(phantom):
    masks, space = phantom
    as_uint8 = {n: m.astype(np.uint8) for n, m in masks.items()}
    assert_same_case(CaseData.from_masks(masks, space), CaseData.from_masks(as_uint8, space))
    as_f_int16 = {n: np.asfortranarray(m.astype(np.int16)) for n, m in masks.items()}
    assert_same_case(CaseData.from_masks(masks, space), CaseData.from_masks(as_f_int16, space))


def test_space_defaults_to_mask_shape():
    m = box(SHAPE, (0, 2), (0, 2), (0, 2))
    data = CaseData.from_masks({"a": m})
    assert tuple(data.space.shape) == SHAPE
    assert tuple(data.space.spacing) == (1.0, 1.0, 1.0)
    assert data.stats["a"].volume_ml == pytest.approx(8 / 1000.0)


def test_meta_is_kept():
    data = CaseData.from_masks({"a": box(SHAPE, (0, 1), (0, 1), (0, 1))}, SPACE, meta={"age": 61, "tags": ("x",)})
    assert data.meta == {"age": 61, "tags": ["x"]}


# -- invalid input to from_masks -----------------------------------------------------


def _ok() -> np.ndarray:
    return box(SHAPE, (0, 2), (0, 2), (0, 2))


def test_float_mask_refused():
    with pytest.raises(InvalidCase, match=r"mask 'liver' has dtype float64"):
        CaseData.from_masks({"liver": _ok().astype(np.float64)}, SPACE)


def test_float32_zero_one_mask_refused():
    with pytest.raises(InvalidCase, match=r"dtype float32"):
        CaseData.from_masks({"a": _ok(), "liver": _ok().astype(np.float32)}, SPACE)


@pytest.mark.parametrize("bad_value", [2, 255, -1])
def test_mask_with_non_binary_value_refused(bad_value):
    m = _ok().astype(np.int16)
    m[5, 5, 5] = bad_value
    with pytest.raises(InvalidCase, match=r"mask 'spleen' holds values other than 0 and 1"):
        CaseData.from_masks({"spleen": m}, SPACE)


def test_wrong_shape_names_organ_and_both_shapes():
    masks = {"liver": _ok(), "kidney_left": np.zeros((12, 10, 9), bool)}
    with pytest.raises(InvalidCase) as info:
        CaseData.from_masks(masks, SPACE)
    message = str(info.value)
    assert "kidney_left" in message
    assert "(12, 10, 9)" in message
    assert "(12, 10, 8)" in message
    assert "liver" not in message


def test_wrong_shape_without_space_uses_first_mask():
    masks = {"liver": _ok(), "kidney_left": np.zeros((3, 3, 3), bool)}
    with pytest.raises(InvalidCase, match=r"kidney_left.*\(3, 3, 3\).*\(12, 10, 8\)"):
        CaseData.from_masks(masks)


def test_non_3d_mask_without_space_refused():
    with pytest.raises(InvalidCase, match=r"must be 3-D"):
        CaseData.from_masks({"a": np.zeros((4, 4), bool)})


def test_space_must_be_a_space():
    with pytest.raises(InvalidCase, match=r"spacetransformer\.Space"):
        CaseData.from_masks({"a": _ok()}, space=(12, 10, 8))


def test_empty_dict_refused():
    with pytest.raises(InvalidCase, match=r"at least one organ"):
        CaseData.from_masks({}, SPACE)


@pytest.mark.parametrize(
    "mapping, pattern",
    [
        ({"a": 1}, r"mapping does not match the masks: no value for \['b'\], no mask for \[\]"),
        ({"a": 1, "b": 2, "c": 3}, r"mapping does not match the masks: no value for \[\], no mask for \['c'\]"),
        ({"a": 1, "x": 2}, r"no value for \['b'\], no mask for \['x'\]"),
    ],
    ids=["missing", "extra", "renamed"],
)
def test_mapping_not_matching_masks(mapping, pattern):
    with pytest.raises(InvalidCase, match=pattern):
        CaseData.from_masks({"a": _ok(), "b": _ok()}, SPACE, mapping=mapping)


def test_duplicate_values_refused():
    with pytest.raises(InvalidCase, match=r"organs 'a' and 'b' share label value 4"):
        CaseData.from_masks({"a": _ok(), "b": _ok()}, SPACE, mapping={"a": 4, "b": 4})


@pytest.mark.parametrize("value", [0, 70000, -3, 65536])
def test_value_out_of_range_refused(value):
    with pytest.raises(InvalidCase, match=rf"label value {value} of organ 'a' is outside 1\.\.65535"):
        CaseData.from_masks({"a": _ok()}, SPACE, mapping={"a": value})


@pytest.mark.parametrize("value", [1.0, "1", True, None])
def test_non_integer_value_refused(value):
    with pytest.raises(InvalidCase, match=r"label value of organ 'a' must be an integer"):
        CaseData.from_masks({"a": _ok()}, SPACE, mapping={"a": value})


def test_numpy_integer_values_accepted():
    data = CaseData.from_masks({"a": _ok()}, SPACE, mapping={"a": np.uint16(9)})
    assert data.mapping == {"a": 9}
    assert type(data.mapping["a"]) is int


@pytest.mark.parametrize("name", ["a/b", "", "\x01", "a\\b", "..", "tab\there", "\x7f"])
def test_invalid_organ_name_refused(name):
    with pytest.raises(InvalidCase, match=re.escape(f"invalid organ name {name!r}")):
        CaseData.from_masks({"ok": _ok(), name: _ok()}, SPACE)


@pytest.mark.parametrize("name", ["a/b", "", "\x01"])
def test_invalid_organ_name_refused_with_explicit_mapping(name):
    with pytest.raises(InvalidCase, match=re.escape(f"invalid organ name {name!r}")):
        CaseData.from_masks({name: _ok()}, SPACE, mapping={name: 1})


# -- from_labels ---------------------------------------------------------------------


def _labels() -> np.ndarray:
    rng = np.random.default_rng(2)
    labels = rng.choice(np.array([0, 1, 2, 5], dtype=np.uint8), size=SHAPE, p=[0.5, 0.2, 0.2, 0.1])
    labels[0, 0, 0] = 5
    return labels


def test_from_labels_stats_per_label():
    labels = _labels()
    mapping = {"one": 1, "two": 2, "five": 5}
    data = CaseData.from_labels(labels, mapping, space=SPACE)
    assert data.mapping == mapping
    assert data.layer_names == []
    assert data.binary_layers.shape == (0, *SHAPE)
    np.testing.assert_array_equal(data.label_volume, labels)
    assert data.label_volume.dtype == np.uint8
    for name, value in mapping.items():
        assert_stats_brute_force(data.stats[name], labels == value, SPACE)
        np.testing.assert_array_equal(data.organ_mask(name), labels == value)


def test_from_labels_fortran_order_and_wide_dtype():
    labels = _labels()
    wide = np.asfortranarray(labels.astype(np.int64))
    mapping = {"one": 1, "two": 2, "five": 5}
    a = CaseData.from_labels(labels, mapping, space=SPACE)
    b = CaseData.from_labels(wide, mapping, space=SPACE)
    assert_same_case(a, b)
    assert b.label_volume.dtype == np.uint8


@pytest.mark.parametrize(
    "max_value, dtype", [(255, np.uint8), (256, np.uint16), (300, np.uint16), (65535, np.uint16)]
)
def test_from_labels_dtype_follows_largest_value(max_value, dtype):
    labels = np.zeros(SHAPE, dtype=np.int32)
    labels[1:3, 1:3, 1:3] = 7
    labels[5:6, 5:8, 2:4] = max_value
    data = CaseData.from_labels(labels, {"small": 7, "big": max_value}, space=SPACE)
    assert data.label_volume.dtype == dtype
    np.testing.assert_array_equal(data.label_volume, labels)
    assert data.stats["big"].voxels == 6
    assert data.stats["big"].bbox == ((5, 6), (5, 8), (2, 4))
    assert data.stats["small"].voxels == 8


def test_from_labels_mapping_value_above_255_without_voxels_uses_uint16():
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[0] = 1
    data = CaseData.from_labels(labels, {"a": 1, "never": 300}, space=SPACE)
    assert data.label_volume.dtype == np.uint16
    np.testing.assert_array_equal(data.label_volume, labels)


def test_from_labels_unmapped_values_refused_by_name():
    labels = _labels()
    labels[3, 3, 3] = 9
    labels[4, 4, 4] = 7
    with pytest.raises(InvalidCase, match=r"values \[7, 9\] that the mapping does not name"):
        CaseData.from_labels(labels, {"one": 1, "two": 2, "five": 5}, space=SPACE)


def test_from_labels_unmapped_named():
    labels = _labels().astype(np.uint16)
    labels[3, 3, 3] = 9
    labels[4:6, 4, 4] = 300
    data = CaseData.from_labels(labels, {"one": 1, "two": 2}, space=SPACE, unmapped="name")
    assert data.mapping == {"one": 1, "two": 2, "label_5": 5, "label_9": 9, "label_300": 300}
    assert data.label_volume.dtype == np.uint16
    np.testing.assert_array_equal(data.label_volume, labels)
    for name, value in data.mapping.items():
        assert_stats_brute_force(data.stats[name], labels == value, SPACE)
    assert data.stats["label_9"].voxels == 1
    assert data.stats["label_300"].voxels == 2


def test_from_labels_unmapped_name_collision_is_refused():
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[0] = 3  # the organ the user called "label_5"
    labels[1] = 5  # unmapped
    with pytest.raises(InvalidCase, match=r"already uses the names \['label_5'\]"):
        CaseData.from_labels(labels, {"label_5": 3}, space=SPACE, unmapped="name")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.bool_])
def test_from_labels_non_integer_volume_refused(dtype):
    labels = _labels().astype(dtype)
    with pytest.raises(InvalidCase, match=r"label volume must have an integer dtype"):
        CaseData.from_labels(labels, {"one": 1}, space=SPACE, unmapped="name")


def test_from_labels_mapping_names_without_voxels_kept_empty():
    labels = _labels()
    mapping = {"one": 1, "two": 2, "five": 5, "absent": 3, "gone": 400}
    data = CaseData.from_labels(labels, mapping, space=SPACE)
    assert data.mapping == mapping
    for name in ("absent", "gone"):
        assert data.stats[name].voxels == 0
        assert data.stats[name].bbox is None
        assert not data.organ_mask(name).any()


def test_from_labels_shape_mismatch_refused():
    with pytest.raises(InvalidCase, match=r"label volume has shape \(12, 10, 7\).*\(12, 10, 8\)"):
        CaseData.from_labels(np.zeros((12, 10, 7), np.uint8), {"a": 1}, space=SPACE)


def test_from_labels_mapping_validated():
    with pytest.raises(InvalidCase, match=r"share label value 1"):
        CaseData.from_labels(_labels(), {"one": 1, "uno": 1, "two": 2, "five": 5}, space=SPACE)
    with pytest.raises(InvalidCase, match=r"outside 1\.\.65535"):
        CaseData.from_labels(_labels(), {"zero": 0, "one": 1, "two": 2, "five": 5}, space=SPACE)


def test_from_labels_unmapped_value_out_of_range_refused():
    labels = np.zeros(SHAPE, dtype=np.int32)
    labels[0, 0, 0] = 70000
    with pytest.raises(InvalidCase, match=r"70000"):
        CaseData.from_labels(labels, {"a": 1}, space=SPACE, unmapped="name")


class CountingMasks(Mapping[str, np.ndarray]):
    """A lazy mapping (as a NIfTI folder is) that counts how many of its masks are alive at once."""

    def __init__(self, masks: dict[str, np.ndarray]) -> None:
        self.masks = masks
        self.alive = self.most_alive = 0

    def __getitem__(self, name: str) -> np.ndarray:
        mask = self.masks[name].copy()  # a fresh array, as a NIfTI read gives
        self.alive += 1
        self.most_alive = max(self.most_alive, self.alive)
        weakref.finalize(mask, self._released)
        return mask

    def __iter__(self) -> Iterator[str]:
        return iter(self.masks)

    def __len__(self) -> int:
        return len(self.masks)

    def _released(self) -> None:
        self.alive -= 1


@pytest.mark.parametrize("threads", [1, 2])
def test_masks_are_taken_one_per_thread(phantom, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(concurrency, "_threads", threads)
    masks = CountingMasks(phantom[0])
    data = CaseData.from_masks(masks, space=phantom[1])
    assert masks.most_alive <= threads
    for name, mask in phantom[0].items():
        np.testing.assert_array_equal(data.organ_mask(name), mask, err_msg=name)


def test_from_labels_refuses_negative_values() -> None:
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[1, 2, 3], labels[4, 4, 4] = -2, 1
    with pytest.raises(InvalidCase, match=r"negative values \(down to -2\)"):
        CaseData.from_labels(labels, {"a": 1}, SPACE)
