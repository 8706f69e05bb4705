"""Chunk-grid arithmetic of ``medmask_store.storage.chunked`` against numpy and brute force (Hypothesis).

The reference is always numpy itself: a selection is applied to an array of
flat element numbers, so "which elements, in which order" and "which chunks do
they live in" come from numpy's basic indexing, never from the code under test.
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest
from helpers import selections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medmask_store import concurrency
from medmask_store.errors import CorruptChunk
from medmask_store.storage.chunked import ChunkedArray, chunks_touched, iter_chunks, normalize_selection

PAD = -7  # what a chunk source holds beyond the array's edge; must never reach the output
HYPOTHESIS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ---------------------------------------------------------------------------

@st.composite
def shape_and_chunks(draw, min_size: int = 0):
    shape = draw(st.lists(st.integers(min_size, 11), min_size=1, max_size=4).map(tuple))
    chunks = tuple(draw(st.integers(1, 7)) for _ in shape)
    return shape, chunks


@st.composite
def cases(draw, min_size: int = 0):
    shape, chunks = draw(shape_and_chunks(min_size))
    selection = draw(selections(shape))
    seed = draw(st.integers(0, 2**16))
    return shape, chunks, selection, seed


# -- helpers ---------------------------------------------------------------------------


def make_data(shape: tuple[int, ...], chunks: tuple[int, ...], seed: int) -> np.ndarray:
    """Distinct non-zero values, with some whole chunks zeroed (their source returns None)."""
    data = np.arange(1, int(np.prod(shape)) + 1, dtype=np.int64).reshape(shape)
    rng = np.random.default_rng(seed)
    for _, region in iter_chunks(shape, chunks):
        if rng.random() < 0.3:
            data[region] = 0
    return data


class CountingSource:
    """A chunk source over a numpy array that records every chunk it is asked for.

    Chunks are handed out full-sized, the part beyond the array's edge filled
    with PAD, as an HDF5 direct chunk read would; all-zero chunks are None.
    """

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...]) -> None:
        self.data = data
        self.chunks = chunks
        self.calls: Counter[tuple[int, ...]] = Counter()

    def __call__(self, coords: tuple[int, ...]) -> np.ndarray | None:
        assert all(isinstance(c, int) for c in coords), coords
        self.calls[coords] += 1
        grid = tuple(-(-s // c) for s, c in zip(self.data.shape, self.chunks))
        assert len(coords) == self.data.ndim and all(0 <= c < g for c, g in zip(coords, grid)), (coords, grid)
        region = tuple(slice(c * n, (c + 1) * n) for c, n in zip(coords, self.chunks))
        block = self.data[region]
        if not block.any():
            return None
        chunk = np.full(self.chunks, PAD, dtype=self.data.dtype)
        chunk[tuple(slice(0, n) for n in block.shape)] = block
        return chunk


def touched_by_brute_force(shape, chunks, selection) -> set[tuple[int, ...]]:
    """Chunks holding at least one element numpy's indexing selects."""
    flat = np.arange(int(np.prod(shape))).reshape(shape)
    selected = np.asarray(flat[selection]).ravel()
    if selected.size == 0:
        return set()
    coords = np.stack(np.unravel_index(selected, shape), axis=1) // np.array(chunks)
    return {tuple(int(c) for c in row) for row in coords}


# -- ChunkedArray against numpy -------------------------------------------------------------


@HYPOTHESIS
@given(case=cases())
def test_chunked_array_equals_numpy_indexing(case):
    shape, chunks, selection, seed = case
    data = make_data(shape, chunks, seed)
    source = CountingSource(data, chunks)
    array = ChunkedArray(shape, data.dtype, chunks, source, fill_value=0)
    expected = np.asarray(data[selection])
    got = array[selection]
    assert isinstance(got, np.ndarray)
    assert got.shape == expected.shape, (selection, got.shape, expected.shape)
    assert got.dtype == data.dtype
    np.testing.assert_array_equal(got, expected, err_msg=repr(selection))
    assert not (got == PAD).any()


@HYPOTHESIS
@given(case=cases())
def test_read_into_a_view_of_another_dtype_writes_every_voxel(case):
    shape, chunks, selection, seed = case
    data = make_data(shape, chunks, seed)  # all-zero chunks are None: the fill value must be written for them
    expected = np.asarray(data[selection])
    frame = np.full(tuple(n + 2 for n in expected.shape), -7, dtype=np.int64)  # garbage around and under the view
    inner = (*(slice(1, n + 1) for n in expected.shape), Ellipsis)  # a view even of 0-d selections
    view = frame[inner]
    assert ChunkedArray(shape, data.dtype, chunks, CountingSource(data, chunks)).read(selection, out=view) is view
    np.testing.assert_array_equal(frame[inner], expected, err_msg=repr(selection))
    rim = np.ones(frame.shape, bool)
    rim[inner] = False
    assert (frame[rim] == -7).all()  # nothing written outside the view


def test_read_into_an_array_of_another_shape_is_refused():
    array = ChunkedArray((4, 4), np.dtype(np.uint8), (2, 2), lambda c: None)
    with pytest.raises(ValueError, match=r"out has shape \(2, 3\), the selection \(2, 2\)"):
        array.read((slice(0, 2), slice(0, 2)), out=np.empty((2, 3), np.int16))


@HYPOTHESIS
@given(case=cases())
def test_each_touched_chunk_is_read_exactly_once(case):
    shape, chunks, selection, seed = case
    data = make_data(shape, chunks, seed)
    source = CountingSource(data, chunks)
    ChunkedArray(shape, data.dtype, chunks, source)[selection]
    expected = touched_by_brute_force(shape, chunks, selection)
    assert set(source.calls) == expected, selection
    assert all(n == 1 for n in source.calls.values()), source.calls


@HYPOTHESIS
@given(case=cases())
def test_chunks_touched_equals_brute_force(case):
    shape, chunks, selection, _ = case
    touched = chunks_touched(normalize_selection(selection, shape), chunks)
    assert len(touched) == len(set(touched)), touched  # no chunk listed twice
    assert set(touched) == touched_by_brute_force(shape, chunks, selection), selection


@HYPOTHESIS
@given(data=st.data())
def test_fill_value_where_no_chunk_is_stored(data):
    shape, chunks = data.draw(shape_and_chunks())
    selection = data.draw(selections(shape))
    calls: list[tuple[int, ...]] = []
    array = ChunkedArray(shape, np.dtype(np.uint16), chunks, lambda c: calls.append(c), fill_value=9)
    got = array[selection]
    expected = np.full(shape, 9, dtype=np.uint16)[selection]
    assert got.shape == np.shape(expected) and got.dtype == np.uint16
    assert (got == 9).all()
    assert set(calls) == touched_by_brute_force(shape, chunks, selection)


def test_negative_step_across_chunk_edges_example():
    data = np.arange(1, 31).reshape(5, 6)
    source = CountingSource(data, (2, 4))
    array = ChunkedArray(data.shape, data.dtype, (2, 4), source)
    for selection in [(slice(None, None, -1), slice(None, None, -2)), (slice(4, 0, -3), -1),
                      (Ellipsis, slice(5, None, -4)), (slice(3, 3), Ellipsis), (-5, -6)]:
        source.calls.clear()
        np.testing.assert_array_equal(array[selection], data[selection], err_msg=repr(selection))
        assert set(source.calls) == touched_by_brute_force(data.shape, (2, 4), selection)
        assert set(source.calls.values()) <= {1}


# -- invalid selections ----------------------------------------------------------------------


@HYPOTHESIS
@given(data=st.data())
def test_out_of_range_int_raises_index_error(data):
    shape, chunks = data.draw(shape_and_chunks())
    axis = data.draw(st.integers(0, len(shape) - 1))
    size = shape[axis]
    bad = data.draw(st.integers(size, size + 5) | st.integers(-size - 5, -size - 1))
    selection = tuple(slice(None) if a != axis else bad for a in range(axis + 1))
    calls: list = []
    array = ChunkedArray(shape, np.dtype(np.int64), chunks, lambda c: calls.append(c))
    with pytest.raises(IndexError):
        np.zeros(shape)[selection]  # numpy agrees that it is out of range
    with pytest.raises(IndexError):
        array[selection]
    with pytest.raises(IndexError):
        normalize_selection(selection, shape)
    assert calls == []


@HYPOTHESIS
@given(data=st.data())
def test_too_many_indices_raise_index_error(data):
    shape, chunks = data.draw(shape_and_chunks(min_size=1))
    extra = data.draw(st.integers(1, 2))
    selection = [0] * (len(shape) + extra)
    if data.draw(st.booleans()):
        selection.insert(data.draw(st.integers(0, len(selection))), Ellipsis)
    selection = tuple(selection)
    calls: list = []
    array = ChunkedArray(shape, np.dtype(np.int64), chunks, lambda c: calls.append(c))
    with pytest.raises(IndexError):
        np.zeros(shape)[selection]
    with pytest.raises(IndexError):
        array[selection]
    assert calls == []


@pytest.mark.parametrize("selection", [(Ellipsis, Ellipsis), (0, Ellipsis, 0, Ellipsis), (True,), (1.0,), ("a",), (None,)])
def test_invalid_index_types_raise_index_error(selection):
    array = ChunkedArray((4, 5), np.dtype(np.int64), (2, 2), lambda c: None)
    with pytest.raises(IndexError):
        array[selection]


# -- iter_chunks --------------------------------------------------------------------------------


@HYPOTHESIS
@given(sc=shape_and_chunks())
def test_iter_chunks_covers_the_array_exactly_once(sc):
    shape, chunks = sc
    cover = np.zeros(shape, dtype=np.int64)
    listed = list(iter_chunks(shape, chunks))
    grid = tuple(-(-s // c) for s, c in zip(shape, chunks))
    assert len(listed) == int(np.prod(grid))
    assert len({coords for coords, _ in listed}) == len(listed)
    for coords, region in listed:
        assert len(coords) == len(shape) and len(region) == len(shape)
        for c, r, n, s in zip(coords, region, chunks, shape):
            assert 0 <= c < -(-s // n)
            assert r.start == c * n and r.stop == min((c + 1) * n, s) and r.step in (None, 1)
            assert r.stop > r.start  # no empty regions
        cover[region] += 1
    assert (cover == 1).all()


@HYPOTHESIS
@given(sc=shape_and_chunks(min_size=1))
def test_full_read_touches_every_chunk_once(sc):
    shape, chunks = sc
    data = np.arange(1, int(np.prod(shape)) + 1).reshape(shape)
    source = CountingSource(data, chunks)
    np.testing.assert_array_equal(ChunkedArray(shape, data.dtype, chunks, source)[...], data)
    assert sorted(source.calls) == sorted(coords for coords, _ in iter_chunks(shape, chunks))
    assert set(source.calls.values()) == {1}


def test_reads_of_many_chunks_run_on_two_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_data((12, 12, 12), (3, 3, 3), seed=1)  # 64 chunks
    threads: dict[tuple[int, ...], int] = {}
    source = CountingSource(data, (3, 3, 3))

    def read_chunk(coords):
        threads[coords] = threading.get_ident()
        return source(coords)

    array = ChunkedArray(data.shape, data.dtype, (3, 3, 3), read_chunk)
    np.testing.assert_array_equal(array[...], data)
    assert len(set(threads.values())) == 2 and len(threads) == 64
    threads.clear()
    np.testing.assert_array_equal(array[:6, :6, :3], data[:6, :6, :3])  # 4 chunks: below PARALLEL_CHUNKS
    assert set(threads.values()) == {threading.get_ident()}
    monkeypatch.setattr(concurrency, "_threads", 1)  # as import workers set it: one thread
    threads.clear()
    np.testing.assert_array_equal(array[...], data)
    assert set(threads.values()) == {threading.get_ident()}


def test_an_error_in_the_helper_thread_is_raised_by_the_read() -> None:
    data = make_data((12, 12, 12), (3, 3, 3), seed=1)
    source = CountingSource(data, (3, 3, 3))
    caller = threading.get_ident()

    def read_chunk(coords):
        if threading.get_ident() != caller:
            raise CorruptChunk(f"chunk {coords}: damaged")
        return source(coords)

    with pytest.raises(CorruptChunk, match="damaged"):
        ChunkedArray(data.shape, data.dtype, (3, 3, 3), read_chunk)[...]
