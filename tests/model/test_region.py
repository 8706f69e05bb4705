"""Regions of a case: voxel boxes, world (mm) boxes through the Space, region Spaces, and the errors
of region, crop and organ reads.

World boxes are built from the world coordinates of voxel centres computed with the Space's
forward transform (``to_world_transform``); the code under test maps them back with the inverse.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spacetransformer import Space

from medmask_store import MaskArchive, OrganNotFound, StorageSettings
from medmask_store.errors import InvalidRegion
from medmask_store.model.geometry import lps_affine
from medmask_store.model.region import WorldBox, box_space, voxel_box
from medmask_store.phantom import make_phantom

HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- Spaces ----------------------------------------------------------------------------------

# Rotations by multiples of 90 degrees (signed permutations, determinant +1): a world box around a
# voxel box's centres maps back to exactly that voxel box.
RIGHT_ANGLE_ROTATIONS = [
    np.eye(3),
    np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]]),
    np.array([[-1, 0, 0], [0, -1, 0], [0, 0, 1]]),
    np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]]),
    np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]),
    np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]]) @ np.diag([1, -1, -1]),
]


def space_with(rotation: np.ndarray, shape, spacing, origin) -> Space:
    columns = [tuple(float(v) for v in rotation[:, a]) for a in range(3)]
    return Space(shape=tuple(shape), spacing=tuple(spacing), origin=tuple(origin),
                 x_orientation=columns[0], y_orientation=columns[1], z_orientation=columns[2])


def oblique_space(shape=(20, 16, 12)) -> Space:
    """Rotated 17 degrees about the third axis and 9 degrees about the first; anisotropic."""
    a, b = np.deg2rad(17.0), np.deg2rad(9.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return space_with(rz @ rx, shape, (0.8, 1.3, 2.5), (-120.5, 40.25, -7.0))


def world(space: Space, points) -> np.ndarray:
    """World coordinates (mm) of index-space points."""
    return space.to_world_transform.apply_point(np.asarray(points, dtype=float).reshape(-1, 3))


def box_around(space: Space, low, high) -> WorldBox:
    """The axis-aligned world box around the index-space box with corners ``low`` and ``high``."""
    corners = world(space, list(itertools.product(*zip(low, high))))
    return WorldBox(tuple(corners.min(axis=0)), tuple(corners.max(axis=0)))


def as_bounds(box) -> list[tuple[int, int, int]]:
    return [(s.start, s.stop, s.step) for s in box]


@st.composite
def right_angle_spaces(draw):
    shape = tuple(draw(st.integers(1, 25)) for _ in range(3))
    spacing = tuple(draw(st.floats(0.3, 4.0)) for _ in range(3))
    origin = tuple(draw(st.floats(-400, 400)) for _ in range(3))
    rotation = draw(st.sampled_from(RIGHT_ANGLE_ROTATIONS))
    return space_with(rotation, shape, spacing, origin)


@st.composite
def index_boxes(draw, shape):
    starts, stops = [], []
    for size in shape:
        start = draw(st.integers(0, size - 1))
        starts.append(start)
        stops.append(draw(st.integers(start + 1, size)))
    return starts, stops


# -- world boxes -----------------------------------------------------------------------------


@HYPOTHESIS
@given(space=right_angle_spaces(), data=st.data())
def test_world_box_of_voxel_centres_selects_exactly_that_voxel_box(space: Space, data) -> None:
    starts, stops = data.draw(index_boxes(tuple(space.shape)))
    wb = box_around(space, starts, [s - 1 for s in stops])  # corners: first and last voxel centres
    expected = [(a, b, 1) for a, b in zip(starts, stops)]
    assert as_bounds(voxel_box(wb, space)) == expected
    assert as_bounds(voxel_box(WorldBox(wb.hi, wb.lo), space)) == expected  # corners in either order


@HYPOTHESIS
@given(space=right_angle_spaces(), data=st.data())
def test_world_box_partly_outside_is_clipped_to_the_volume(space: Space, data) -> None:
    shape = tuple(space.shape)
    starts, stops = data.draw(index_boxes(shape))
    below = data.draw(st.lists(st.booleans(), min_size=3, max_size=3))
    above = data.draw(st.lists(st.booleans(), min_size=3, max_size=3))
    low = [-data.draw(st.floats(0.6, 50)) if out else a for out, a in zip(below, starts)]
    high = [size - 1 + data.draw(st.floats(0.6, 50)) if out else b - 1 for out, b, size in zip(above, stops, shape)]
    expected = [(0 if lo_out else a, size if hi_out else b, 1)
                for lo_out, hi_out, a, b, size in zip(below, above, starts, stops, shape)]
    assert as_bounds(voxel_box(box_around(space, low, high), space)) == expected


@HYPOTHESIS
@given(space=right_angle_spaces(), data=st.data())
def test_world_box_between_voxel_centres_selects_only_centres_inside(space: Space, data) -> None:
    """Box edges a fraction of a voxel beyond centres do not add the next voxel."""
    starts, stops = data.draw(index_boxes(tuple(space.shape)))
    margin = data.draw(st.floats(0.0, 0.45))
    low = [a - margin for a in starts]
    high = [b - 1 + margin for b in stops]
    assert as_bounds(voxel_box(box_around(space, low, high), space)) == [(a, b, 1) for a, b in zip(starts, stops)]


def test_world_box_in_the_oblique_space_around_one_centre_selects_that_voxel() -> None:
    space = oblique_space()
    for voxel in [(0, 0, 0), (7, 3, 5), (19, 15, 11), (10, 0, 11)]:
        centre = world(space, voxel)[0]
        assert as_bounds(voxel_box(WorldBox(tuple(centre - 1e-3), tuple(centre + 1e-3)), space)) == [
            (v, v + 1, 1) for v in voxel
        ]
        assert as_bounds(voxel_box(WorldBox(tuple(centre), tuple(centre)), space)) == [(v, v + 1, 1) for v in voxel]


def test_world_box_in_the_oblique_space_covers_every_centre_inside_it() -> None:
    """Oblique: the selection is the voxel-aligned box around the world box; it holds the voxel box
    the world box was built around and every voxel whose centre lies inside the world box."""
    space = oblique_space()
    shape = tuple(space.shape)
    centres = world(space, np.argwhere(np.ones(shape, bool))).reshape(*shape, 3)
    for starts, stops in [((3, 4, 2), (9, 10, 7)), ((0, 0, 0), (20, 16, 12)), ((12, 2, 9), (13, 3, 10))]:
        wb = box_around(space, starts, [s - 1 for s in stops])
        got = voxel_box(wb, space)
        for s, a, b in zip(got, starts, stops):
            assert s.start <= a and s.stop >= b and s.step == 1
        inside = np.all((centres >= np.array(wb.lo) - 1e-9) & (centres <= np.array(wb.hi) + 1e-9), axis=-1)
        selected = np.zeros(shape, bool)
        selected[got] = True
        assert not (inside & ~selected).any()


@pytest.mark.parametrize("rotation", [0, 1], ids=["axis_aligned", "rotated"])
def test_world_box_entirely_outside_raises(rotation: int) -> None:
    space = space_with(RIGHT_ANGLE_ROTATIONS[rotation], (10, 8, 6), (1.0, 2.0, 3.0), (5.0, -7.0, 11.0))
    far = world(space, [(50, 50, 50), (60, 60, 60)])
    with pytest.raises(InvalidRegion, match="no voxel centre"):
        voxel_box(WorldBox(tuple(far.min(axis=0)), tuple(far.max(axis=0))), space)
    # inside the volume's extent, but between two neighbouring centres on one axis
    between = world(space, [(2.2, 1, 1), (2.8, 5, 4)])
    with pytest.raises(InvalidRegion, match="no voxel centre"):
        voxel_box(WorldBox(tuple(between.min(axis=0)), tuple(between.max(axis=0))), space)
    # just beyond the last centre (outside by half a voxel): still nothing
    edge = world(space, [(9.4, 0, 0), (9.6, 7, 5)])
    with pytest.raises(InvalidRegion, match="no voxel centre"):
        voxel_box(WorldBox(tuple(edge.min(axis=0)), tuple(edge.max(axis=0))), space)


@pytest.mark.parametrize("corner", [(0.0, 1.0), (0, 1, 2, 3), ("a", 1, 2), (None, 1.0, 2.0)])
def test_world_box_corners_must_be_three_numbers(corner) -> None:
    with pytest.raises(InvalidRegion, match="3 numbers"):
        WorldBox(corner, (1.0, 2.0, 3.0))
    with pytest.raises(InvalidRegion, match="3 numbers"):
        WorldBox((1.0, 2.0, 3.0), corner)


@pytest.mark.parametrize("lo, hi", [((math.nan, 0.0, 0.0), (5.0, 5.0, 5.0)),
                                    ((-math.inf,) * 3, (math.inf,) * 3)], ids=["nan", "infinite"])
def test_world_box_with_non_finite_corners_raises_invalid_region(lo, hi) -> None:
    space = Space(shape=(10, 8, 6), spacing=(1.0, 2.0, 3.0), origin=(5.0, -7.0, 11.0))
    with pytest.raises(InvalidRegion):
        voxel_box(WorldBox(lo, hi), space)


# -- voxel regions ---------------------------------------------------------------------------

SPACE = Space(shape=(10, 8, 6), spacing=(1.0, 2.0, 3.0), origin=(5.0, -7.0, 11.0))


@pytest.mark.parametrize(
    "region, expected",
    [
        (((1, 4), (0, 8), (2, 3)), [(1, 4, 1), (0, 8, 1), (2, 3, 1)]),
        ([slice(None), slice(2, None), slice(None, 5)], [(0, 10, 1), (2, 8, 1), (0, 5, 1)]),
        ((slice(1, 9, 3), [0, 8], slice(0, 6, 2)), [(1, 9, 3), (0, 8, 1), (0, 6, 2)]),
        (((2, 5), (np.int64(1), np.int32(7)), slice(np.int16(0), 6)), [(2, 5, 1), (1, 7, 1), (0, 6, 1)]),
    ],
)
def test_voxel_regions_as_slices_or_pairs(region, expected) -> None:
    got = voxel_box(region, SPACE)
    assert as_bounds(got) == expected
    assert all(type(v) is int for s in got for v in (s.start, s.stop, s.step))


@pytest.mark.parametrize(
    "region",
    [((0.0, 4), (0, 8), (0, 6)), ((0, 4), slice(0, 8.5), (0, 6)), ((0, 4), (0, 8), (np.float64(1), 3))],
)
def test_floats_in_a_voxel_region_point_to_world_box(region) -> None:
    with pytest.raises(InvalidRegion, match="WorldBox"):
        voxel_box(region, SPACE)


@pytest.mark.parametrize(
    "region, axis",
    [
        (((0, 11), (0, 8), (0, 6)), 0),  # stop beyond the size
        (((0, 10), (-1, 8), (0, 6)), 1),  # negative start
        (((0, 10), (0, 8), (3, 3)), 2),  # empty
        (((0, 10), (5, 2), (0, 6)), 1),  # stop before start
        (((0, 10), (0, 8), slice(6, None)), 2),  # start at the size: empty
        (((0, 10), slice(0, 8, -1), (0, 6)), 1),  # negative step
        (((0, 10), slice(0, 8, 0), (0, 6)), 1),  # zero step
        (((True, 4), (0, 8), (0, 6)), 0),  # bools are not indices
        (((0, 10), (0, 8), 3), 2),  # an int is no region
        (((0, 10), (0, 4, 8), (0, 6)), 1),  # three numbers
    ],
)
def test_bad_voxel_region_names_the_axis(region, axis: int) -> None:
    with pytest.raises(InvalidRegion, match=f"axis {axis}"):
        voxel_box(region, SPACE)


@pytest.mark.parametrize("region", [((0, 4), (0, 8)), ((0, 4),) * 4, "0:4,0:8,0:6", None, slice(0, 4)])
def test_voxel_region_needs_three_axes(region) -> None:
    with pytest.raises(InvalidRegion, match="three"):
        voxel_box(region, SPACE)


@pytest.mark.parametrize("rotation", [0, 4], ids=["axis_aligned", "rotated"])
def test_box_space_is_the_spaces_bbox(rotation: int) -> None:
    space = space_with(RIGHT_ANGLE_ROTATIONS[rotation], (10, 8, 6), (1.0, 2.0, 3.0), (5.0, -7.0, 11.0))
    box = voxel_box(((2, 7), (1, 8), (3, 4)), space)
    got = box_space(box, space)
    expected = space.apply_bbox(np.array([[2, 7], [1, 8], [3, 4]]))
    assert tuple(got.shape) == tuple(expected.shape) == (5, 7, 1)
    assert np.allclose(lps_affine(got), lps_affine(expected), rtol=0, atol=1e-9)
    # independently: the region's first voxel sits where the box's first voxel sits in the volume
    assert np.allclose(got.origin, world(space, (2, 1, 3))[0], rtol=0, atol=1e-9)
    assert np.allclose(world(got, (4, 6, 0)), world(space, (6, 7, 3)), rtol=0, atol=1e-9)


def test_stepped_box_has_no_space() -> None:
    with pytest.raises(InvalidRegion, match="step"):
        box_space(voxel_box((slice(0, 10, 2), (0, 8), (0, 6)), SPACE), SPACE)


# -- errors of a stored case -----------------------------------------------------------------


@pytest.fixture
def stored(archive_path: Path) -> tuple[Path, dict[str, np.ndarray], Space]:
    """A small phantom (rib_right_12 a binary layer inside liver, one empty organ), read-only below."""
    masks, space = make_phantom(shape=(30, 26, 20), n_organs=3, n_empty=1, seed=5)
    with MaskArchive(archive_path, "w", StorageSettings(chunk_size=8, label_level=1, layer_level=1)) as archive:
        archive.add_case("c", masks, space=space)
    return archive_path, masks, space


def test_unknown_organ_raises_organ_not_found_with_a_hint(stored) -> None:
    path, masks, _ = stored
    with MaskArchive(path) as archive:
        case = archive["c"]
        for read in (lambda n: case.read_organ(n), lambda n: case.organ(n), lambda n: case.read_organ(n, crop=True),
                     lambda n: case.read_organ(n, region=((0, 5), (0, 5), (0, 5)))):
            with pytest.raises(OrganNotFound, match="did you mean liver") as caught:
                read("livr")
            assert isinstance(caught.value, KeyError)
            assert "'livr'" in str(caught.value)
        with pytest.raises(KeyError, match=f"it has {len(masks)} organs"):
            case.read_organ("xyzzy_qqq")


def test_region_and_crop_together_raise(stored) -> None:
    path, _, _ = stored
    with MaskArchive(path) as archive:
        with pytest.raises(InvalidRegion, match="not both"):
            archive["c"].read_organ("liver", region=((0, 5), (0, 5), (0, 5)), crop=True)


def test_crop_of_an_empty_organ_raises(stored) -> None:
    path, masks, _ = stored
    empty = [name for name, mask in masks.items() if not mask.any()]
    assert empty
    with MaskArchive(path) as archive:
        case = archive["c"]
        for name in empty:
            with pytest.raises(InvalidRegion, match="no voxels"):
                case.read_organ(name, crop=True)
            # without crop it is simply all False, whole or in a region
            assert not case.read_organ(name).any() and case.read_organ(name).shape == tuple(case.space.shape)
            assert case.read_organ(name, region=((1, 4), (2, 3), (0, 20))).shape == (3, 1, 20)


def test_view_index_out_of_range_raises_index_error(stored) -> None:
    path, _, _ = stored
    with MaskArchive(path) as archive:
        case = archive["c"]
        assert case.representation("rib_right_12") == "binary_layer"
        for view in (case.labels, case.stored_labels, case.organ("liver"), case.organ("rib_right_12")):
            assert view.shape == (30, 26, 20)
            for selection in [30, -31, (0, 26), (0, 0, 20), (..., -21), (5, slice(None), 99)]:
                with pytest.raises(IndexError, match="out of bounds"):
                    view[selection]
            assert view[29, -26, 19].shape == ()  # the last in-range indices still read


def test_region_errors_of_a_case(stored) -> None:
    path, _, space = stored
    with MaskArchive(path) as archive:
        case = archive["c"]
        with pytest.raises(InvalidRegion, match="axis 1"):
            case.read_region(((0, 30), (0, 27), (0, 20)))
        with pytest.raises(InvalidRegion, match="axis 2"):
            case.read_organ("liver", region=((0, 30), (0, 26), (-2, 20)))
        with pytest.raises(InvalidRegion, match="WorldBox"):
            case.read_region(((0.5, 3.5), (0, 26), (0, 20)))
        far = world(space, [(100, 100, 100), (120, 120, 120)])
        with pytest.raises(InvalidRegion, match="no voxel centre"):
            case.read_region(WorldBox(tuple(far.min(axis=0)), tuple(far.max(axis=0))))


def test_region_space_of_a_case(stored) -> None:
    path, _, space = stored
    with MaskArchive(path) as archive:
        case = archive["c"]
        for region, bbox in [(((3, 17), (0, 26), (5, 6)), [[3, 17], [0, 26], [5, 6]]),
                             ((slice(None), slice(10, None), (2, 9)), [[0, 30], [10, 26], [2, 9]])]:
            got = case.region_space(region)
            expected = space.apply_bbox(np.array(bbox))
            assert tuple(got.shape) == tuple(expected.shape)
            assert np.allclose(got.origin, expected.origin, rtol=0, atol=1e-9)
            assert got.shape == case.read_region(region).shape
        # a world box: the Space of the voxel box it selects
        wb = box_around(space, (4, 5, 6), (10, 11, 12))
        got = case.region_space(wb)
        assert tuple(got.shape) == (7, 7, 7)
        assert np.allclose(got.origin, world(space, (4, 5, 6))[0], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(case.read_region(wb), case.read_labels()[4:11, 5:12, 6:13])
        # a stepped region reads fine but has no Space
        assert case.read_region((slice(0, 30, 2), (0, 26), (0, 20))).shape == (15, 26, 20)
        with pytest.raises(InvalidRegion, match="step"):
            case.region_space((slice(0, 30, 2), (0, 26), (0, 20)))
