"""Box-first voxel scans: the occupied box and the nonzero voxels, for every memory order and dtype."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medmask_store.model.voxels import nonzero_voxels, occupied_box

volumes = st.builds(
    np.ndarray.astype,
    arrays(np.uint8, st.tuples(*(st.integers(1, 9),) * 3), elements=st.integers(0, 3), fill=st.just(0)),
    st.sampled_from([np.uint8, np.uint16, np.int16, np.int32, np.bool_]),
)
layouts = st.sampled_from(["C", "F", "transposed"])


def in_layout(volume: np.ndarray, layout: str) -> np.ndarray:
    if layout == "F":
        return np.asfortranarray(volume)
    if layout == "transposed":
        return np.ascontiguousarray(volume.transpose(2, 0, 1)).transpose(1, 2, 0)  # neither C nor F order
    return volume


@settings(max_examples=300, deadline=None)
@given(volumes, layouts)
def test_occupied_box_is_the_tightest_box_around_the_nonzero_voxels(volume: np.ndarray, layout: str) -> None:
    volume = in_layout(volume, layout)
    found = np.argwhere(volume)
    box = occupied_box(volume)
    if found.size == 0:
        assert box is None
    else:
        assert box == tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(found.min(axis=0), found.max(axis=0)))


@settings(max_examples=300, deadline=None)
@given(volumes, layouts)
def test_nonzero_voxels_are_every_nonzero_voxel_with_its_value(volume: np.ndarray, layout: str) -> None:
    volume = in_layout(volume, layout)
    coords, values = nonzero_voxels(volume)
    got = sorted(zip(*(c.tolist() for c in coords), values.tolist()))
    want = sorted((*map(int, ijk), volume[tuple(ijk)].item()) for ijk in np.argwhere(volume))
    assert got == want
    assert values.dtype == volume.dtype


def test_fortran_volumes_are_scanned_in_memory_order_without_a_transposed_copy() -> None:
    volume = np.zeros((6, 5, 4), dtype=np.uint8, order="F")
    volume[1, 2, 3] = volume[4, 0, 1] = 7
    coords, _ = nonzero_voxels(volume)
    flat_f = np.ravel_multi_index(coords, volume.shape, order="F")
    assert np.all(np.diff(flat_f) > 0)  # F order: first axis fastest


def test_occupied_box_refuses_other_dimensions() -> None:
    with pytest.raises(ValueError, match=r"3-D array, got shape \(4, 4\)"):
        occupied_box(np.ones((4, 4), dtype=np.uint8))
