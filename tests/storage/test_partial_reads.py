"""Partial reads of a stored case, on every backend.

Two kinds of checks:

* values (Hypothesis): every lazy view (``case.labels``, ``case.stored_labels``,
  ``case.organ(name)``) indexed with random basic selections equals numpy
  indexing of the full reads, and region / crop reads equal the full reads cut
  to the region / bounding box; the full reads equal the masks that were written;
* chunk reads, counted exactly: the raw chunk reads of the backend are
  instrumented (``ShardedChunks.fetch`` for .zarr / .zarr.zip, the ``os.pread``
  calls of ``medmask_store.storage.hdf5`` for .h5 and of
  ``medmask_store.storage.packed`` for .msk) and each read must decode exactly
  the stored chunks its selection intersects (an organ: only those inside its
  bounding box: label chunks, and for an organ with a binary layer also the
  layer chunks), each once. The expected chunks always come from numpy on the
  masks that were written (placed by the documented rule: organs largest
  first, each voxel to the first organ placed there, an organ's other voxels
  in its binary layer), never from the code under test. Binary layers are
  stored as chunk-aligned windows: volume chunk ``c`` of layer ``l`` is stored
  chunk ``(l, *(c - origin // chunk))``, ``origin`` from ``info.layer_origins``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from conftest import BACKEND_SUFFIXES
from helpers import read_packed, selections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spacetransformer import Space

from medmask_store import MaskArchive, StorageSettings
from medmask_store.io.nifti import load_mask_folder
from medmask_store.model.geometry import nifti_affine
from medmask_store.storage.portable import read_at
from medmask_store.storage.zarr_store import ShardedChunks

LABELS, LAYERS = "label_volume", "binary_layers"
FAST = {"label_level": 1, "layer_level": 1}
VALUES = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
COUNTS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- selections ------------------------------------------------------------------------------


@st.composite
def voxel_regions(draw, shape: tuple[int, ...], steps: bool = True):
    """A valid voxel region: per axis a (start, stop) pair or a slice, maybe with a step;
    returned with the plain slices numpy takes for it."""
    region, slices = [], []
    for size in shape:
        start = draw(st.integers(0, size - 1))
        stop = draw(st.integers(start + 1, size))
        step = draw(st.sampled_from([None, 1, 2, 3])) if steps else None
        if step is None and draw(st.booleans()):
            region.append((start, stop))
        else:
            region.append(slice(start, stop, step))
        slices.append(slice(start, stop, step))
    return tuple(region), tuple(slices)


def touched(shape: tuple[int, ...], chunks: tuple[int, ...], selection) -> set[tuple[int, ...]]:
    """Chunks holding at least one element numpy's indexing selects (brute force)."""
    flat = np.arange(int(np.prod(shape))).reshape(shape)
    selected = np.asarray(flat[selection]).ravel()
    coords = np.stack(np.unravel_index(selected, shape), axis=1) // np.array(chunks)
    return {tuple(int(c) for c in row) for row in coords}


def nonempty_chunks(data: np.ndarray, chunks: tuple[int, ...]) -> set[tuple[int, ...]]:
    """Chunks of ``data`` holding a non-zero value: the ones a backend stores."""
    coords = np.argwhere(data) // np.array(chunks)
    return {tuple(int(c) for c in row) for row in np.unique(coords, axis=0)}


def box_chunks(box: tuple[slice, ...], chunks: tuple[int, ...]) -> set[tuple[int, ...]]:
    """Chunks a box of unit-step slices intersects, axis by axis (for volumes too big for ``touched``)."""
    per_axis = [np.unique(np.arange(s.start, s.stop) // c).tolist() for s, c in zip(box, chunks)]
    return {(i, j, k) for i in per_axis[0] for j in per_axis[1] for k in per_axis[2]}


def bbox_of(mask: np.ndarray) -> tuple[slice, slice, slice]:
    coords = np.argwhere(mask)
    return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(coords.min(axis=0), coords.max(axis=0)))  # type: ignore[return-value]


def assert_same(got: np.ndarray, expected, what: object) -> None:
    expected = np.asarray(expected)
    assert isinstance(got, np.ndarray), what
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    assert got.dtype == expected.dtype, (what, got.dtype, expected.dtype)
    np.testing.assert_array_equal(got, expected, err_msg=repr(what))


def placed(masks: dict[str, np.ndarray], mapping: dict[str, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The stored label volume and binary layers the documented rule gives, computed with numpy.

    Organs are placed largest first (equal sizes in the order the masks were given); a voxel goes to
    the first organ placed there, and an organ's voxels already taken go to its binary layer. The
    layers come in placement order (the order of ``info.layer_names``).
    """
    shape = next(iter(masks.values())).shape
    volume = np.zeros(shape, np.uint16 if max(mapping.values()) > 255 else np.uint8)
    layers: dict[str, np.ndarray] = {}
    for name in sorted(masks, key=lambda n: -int(np.count_nonzero(masks[n]))):
        taken = masks[name] & (volume != 0)
        if taken.any():
            layers[name] = taken
        volume[masks[name] & ~taken] = mapping[name]
    return volume, layers


def painted(volume: np.ndarray, layers: dict[str, np.ndarray], mapping: dict[str, int]) -> np.ndarray:
    """``read_labels()``: the label volume with each layer painted over it, in layer order."""
    out = volume.copy()
    for name, layer in layers.items():
        out[layer] = mapping[name]
    return out


# -- random phantom-like cases ------------------------------------------------------------


def oblique(spacing: tuple[float, float, float], origin: tuple[float, float, float], shape) -> Space:
    angle = np.deg2rad(17.0)
    c, s = float(np.cos(angle)), float(np.sin(angle))
    return Space(
        shape=shape,
        origin=origin,
        spacing=spacing,
        x_orientation=(c, s, 0.0),
        y_orientation=(-s, c, 0.0),
        z_orientation=(0.0, 0.0, 1.0),
    )


@st.composite
def phantom_cases(draw):
    """A small description of a case (Hypothesis shows it on failure); ``build_case`` makes the case."""
    return {
        "shape": tuple(draw(st.integers(5, 40)) for _ in range(3)),
        "chunk": draw(st.sampled_from([4, 8])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "boxes": draw(st.integers(2, 4)),
        "empty_organ": draw(st.booleans()),
        "uint16": draw(st.booleans()),
        "oblique": draw(st.booleans()),
    }


def build_case(spec: dict) -> tuple[dict[str, np.ndarray], Space, dict[str, int]]:
    """Random masks (boxes, some with holes) that overlap, so binary layers exist; a Space; a mapping."""
    shape = spec["shape"]
    rng = np.random.default_rng(spec["seed"])
    masks: dict[str, np.ndarray] = {}
    boxes = []
    for n in range(spec["boxes"]):
        bounds = []
        for size in shape:
            start = int(rng.integers(0, size))
            bounds.append((start, int(rng.integers(start + 1, size + 1))))
        box = tuple(slice(a, b) for a, b in bounds)
        mask = np.zeros(shape, bool)
        mask[box] = rng.random(mask[box].shape) < rng.choice([1.0, 0.7])
        mask[tuple(a for a, _ in bounds)] = True
        masks[f"organ_{n}"] = mask
        boxes.append(bounds)
    # an organ inside organ_0: always an overlap, so at least one binary layer
    sub = tuple(slice(a + int(rng.integers(0, b - a)), b) for a, b in boxes[0])
    inner = np.zeros(shape, bool)
    inner[sub] = masks["organ_0"][sub]
    if not inner.any():
        inner[tuple(a for a, _ in boxes[0])] = True
    masks["inner"] = inner
    if spec["empty_organ"]:
        masks["empty"] = np.zeros(shape, bool)
    names = list(masks)
    if spec["uint16"]:  # values beyond 255: a uint16 label volume
        values = rng.choice(np.arange(1, 1000), size=len(names), replace=False)
        if values.max() <= 255:
            values[np.argmax(values)] = 999
    else:
        values = rng.permutation(len(names)) + 1
    mapping = {name: int(v) for name, v in zip(names, values)}
    spacing = tuple(float(v) for v in rng.uniform(0.4, 3.0, 3))
    origin = tuple(float(v) for v in rng.uniform(-300, 300, 3))
    space = oblique(spacing, origin, shape) if spec["oblique"] else Space(shape=shape, origin=origin, spacing=spacing)
    return masks, space, mapping


@contextmanager
def stored_case(path: Path, data, chunk: int, case_id: str = "c", **kwargs) -> Iterator:
    """Write one case (masks dict or label volume), then yield it from the archive opened read-only."""
    with MaskArchive(path, "w", StorageSettings(chunk_size=chunk, **FAST)) as archive:
        archive.add_case(case_id, data, **kwargs)
    with MaskArchive(path) as archive:
        yield archive[case_id]


# -- 1. values: views, regions and crops against numpy on the full reads ------------------


@pytest.mark.parametrize("suffix", BACKEND_SUFFIXES)
@VALUES
@given(spec=phantom_cases(), data=st.data())
def test_views_regions_and_crops_equal_numpy_on_full_reads(suffix, spec, data):
    masks, space, mapping = build_case(spec)
    chunk = spec["chunk"]
    shape = tuple(space.shape)
    label_dtype = np.dtype(np.uint16 if max(mapping.values()) > 255 else np.uint8)
    with (
        tempfile.TemporaryDirectory() as tmp,
        stored_case(Path(tmp) / f"archive{suffix}", masks, chunk, space=space, mapping=mapping) as case,
    ):
        assert case.info.layer_names, "the case must have binary layers"
        full = case.read_labels()
        stored = case.read_labels(include_layers=False)
        organs = {name: case.read_organ(name) for name in masks}

        # the full reads are what was written
        for name, mask in masks.items():
            assert_same(organs[name], mask, name)
        assert full.dtype == stored.dtype == label_dtype
        covering = sum(m.astype(int) for m in masks.values())
        for name, mask in masks.items():  # voxels of exactly one organ show that organ
            assert (full[mask & (covering == 1)] == mapping[name]).all(), name
        assert (full[covering == 0] == 0).all() and (stored[covering == 0] == 0).all()

        # the split: the label volume holds each voxel's first-placed organ, the layers the overlap voxels
        volume, layers = placed(masks, mapping)
        assert case.info.layer_names == tuple(layers)
        assert_same(stored, volume, "stored label volume")
        assert_same(full, painted(volume, layers, mapping), "painted label volume")
        assert case.stored_layers is not None
        stored_layers = case.stored_layers[...]
        assert_same(stored_layers, np.stack(list(layers.values())), "stored_layers")
        for name, mask in masks.items():  # every organ is exactly (label volume == value) | layer
            assert case.representation(name) == ("binary_layer" if name in layers else "label_volume"), name
            layer = stored_layers[list(layers).index(name)] if name in layers else np.zeros(shape, bool)
            assert_same((stored == mapping[name]) | layer, mask, ("label volume | layer", name))
            assert not (layer & (stored == mapping[name])).any(), name  # a layer holds only voxels others took

        # the views' array attributes
        views = {"labels": case.labels, "stored_labels": case.stored_labels}
        views.update({name: case.organ(name) for name in masks})
        for what, view in views.items():
            assert view.shape == shape, what
            assert view.ndim == 3, what
            assert view.dtype == (label_dtype if what in ("labels", "stored_labels") else np.bool_), what
        assert_same(np.asarray(case.labels), full, "asarray(labels)")
        for name in masks:
            assert_same(np.asarray(case.organ(name)), organs[name], f"asarray(organ({name}))")

        # basic selections
        for _ in range(3):
            sel = data.draw(selections(shape), label="selection")
            assert_same(case.labels[sel], full[sel], ("labels", sel))
            assert_same(case.stored_labels[sel], stored[sel], ("stored_labels", sel))
            for name in masks:
                assert_same(case.organ(name)[sel], organs[name][sel], (name, sel))

        # regions
        region, slices = data.draw(voxel_regions(shape), label="region")
        assert_same(case.read_region(region), full[slices], ("read_region", region))
        for name in masks:
            assert_same(case.read_organ(name, region=region), organs[name][slices], ("read_organ region", name, region))

        # crops to the bounding box, with that box's Space
        for name, mask in masks.items():
            if not mask.any():
                continue
            box = bbox_of(mask)
            cropped, crop_space = case.read_organ(name, crop=True)
            assert tuple(case.stats[name].bbox) == tuple((s.start, s.stop) for s in box), name
            assert_same(cropped, organs[name][box], ("crop", name))
            expected_space = case.space.apply_bbox(np.array([[s.start, s.stop] for s in box]))
            assert tuple(crop_space.shape) == tuple(expected_space.shape) == cropped.shape
            assert np.allclose(crop_space.origin, expected_space.origin, rtol=0, atol=1e-6)
            # independently: the crop's origin is the world position of the box's first voxel centre
            start = np.array([[s.start for s in box]], dtype=float)
            assert np.allclose(crop_space.origin, space.to_world_transform.apply_point(start)[0], rtol=0, atol=1e-6)
            assert np.allclose(crop_space.spacing, space.spacing)


# -- 2. chunk reads, counted exactly ---------------------------------------------------------

ChunkTable = dict[int, tuple[str, tuple[int, ...], int]]


def h5_chunk_table(path: Path) -> ChunkTable:
    """Byte offset of every stored chunk of every case array -> (array name, chunk coords, size)."""
    table: ChunkTable = {}
    with h5py.File(path, "r") as file:
        for case_id in file["cases"]:
            for name, dataset in file["cases"][case_id].items():
                chunks = dataset.chunks

                def add(info, name=name, chunks=chunks):
                    coords = tuple(int(o) // n for o, n in zip(info.chunk_offset, chunks))
                    table[int(info.byte_offset)] = (name, coords, int(info.size))

                dataset.id.chunk_iter(add)
    return table


def msk_chunk_table(path: Path) -> ChunkTable:
    """The same for a packed .msk file, from its catalog (read without the library): chunk offsets
    in the catalog count from the start of the data section, which follows the catalog."""
    catalog, data = read_packed(path)
    data_start = path.stat().st_size - len(data)
    table: ChunkTable = {}
    for entry in catalog["cases"].values():
        for name, rows in entry["chunks"].items():
            for stored in rows:
                coords, (offset, length) = tuple(stored[:-2]), stored[-2:]
                table[data_start + offset] = (name, coords, length)
    return table


@contextmanager
def counting_chunk_reads(path: Path) -> Iterator[list[tuple[str, tuple[int, ...]]]]:
    """Record (array name, chunk coords) of every stored chunk read from the archive at ``path``."""
    reads: list[tuple[str, tuple[int, ...]]] = []
    with pytest.MonkeyPatch.context() as mp:
        if path.name.endswith((".h5", ".msk")):
            # the hdf5 and packed backends read chunk bytes with os.pread, through portable.read_at
            table = h5_chunk_table(path) if path.name.endswith(".h5") else msk_chunk_table(path)
            original_pread = os.pread

            def pread(fd: int, length: int, offset: int) -> bytes:
                result = original_pread(fd, length, offset)
                if sys._getframe(1).f_code is read_at.__code__:
                    name, coords, size = table.get(offset, (f"not a chunk: offset {offset}", (), -1))
                    assert length == size, (name, coords, length, size)
                    reads.append((name, coords))
                return result

            mp.setattr(os, "pread", pread)
        else:
            original_fetch = ShardedChunks.fetch

            def fetch(self: ShardedChunks, coords: tuple[int, ...]) -> bytes | None:
                result = original_fetch(self, coords)
                if result is not None:  # only stored chunks
                    reads.append((self.path.rsplit("/", 1)[-1], tuple(int(c) for c in coords)))
                return result

            mp.setattr(ShardedChunks, "fetch", fetch)
        yield reads


def expect(*groups: tuple[str, set[tuple[int, ...]]]) -> Counter:
    """Each chunk of each (array, chunk set) read exactly once."""
    return Counter((array, coords) for array, chunk_set in groups for coords in chunk_set)


def layer_reads(case, name: str, volume_chunks: set[tuple[int, ...]], chunks: tuple[int, ...]) -> Counter:
    """Each of the given volume chunks of ``name``'s binary layer read once, under the coordinates it is
    stored at: ``(layer, *(c - origin // chunk))`` in the layer's window (origin: ``info.layer_origins``)."""
    layer = case.info.layer_names.index(name)
    origin = case.info.layer_origins[layer]
    return Counter(
        (LAYERS, (layer, *(c - o // n for c, o, n in zip(coords, origin, chunks)))) for coords in volume_chunks
    )


COUNT_SHAPE = (37, 30, 21)
COUNT_CHUNKS = (8, 8, 8)  # a grid of 5 x 4 x 3 = 60 chunks
ALL_CHUNKS = {(i, j, k) for i in range(5) for j in range(4) for k in range(3)}
SMALL_BOX = (slice(14, 18), slice(15, 17), slice(7, 9))  # straddles a chunk edge on every axis: 8 chunks


def dense_labels() -> np.ndarray:
    """Values 1..3 in every voxel (so every label chunk is stored), a small organ 4 in SMALL_BOX."""
    labels = np.random.default_rng(7).integers(1, 4, size=COUNT_SHAPE).astype(np.uint8)
    labels[SMALL_BOX] = 4
    return labels


def layered_masks() -> dict[str, np.ndarray]:
    """``body`` fills the volume but a slab at i >= 34 (label volume; every label chunk stays stored).
    ``core`` (two blobs far apart inside body: a large bounding box with few layer chunks) overlaps it
    wholly, so it lives in its binary layer only; ``spot`` straddles the slab: its voxels inside body are
    its layer, the others are in the label volume."""
    body = np.ones(COUNT_SHAPE, bool)
    body[34:] = False
    core = np.zeros(COUNT_SHAPE, bool)
    core[2:5, 3:6, 1:4] = True
    core[25:27, 17:20, 14:17] = True
    spot = np.zeros(COUNT_SHAPE, bool)
    spot[31:36, 5:7, 6:10] = True
    return {"body": body, "core": core, "spot": spot}


LAYERED_MAPPING = {"body": 1, "core": 2, "spot": 3}  # the default mapping: 1, 2, ... in the order given


def layered_layout() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The layered case's label volume and binary layers (full-volume shape), by the documented rule."""
    return placed(layered_masks(), LAYERED_MAPPING)


@pytest.fixture(scope="module", params=BACKEND_SUFFIXES, ids=lambda s: s.strip("."))
def counting_archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cases "dense" (labels only) and "layered" (with binary layers), chunk size 8."""
    path = tmp_path_factory.mktemp("counting") / f"archive{request.param}"
    with MaskArchive(path, "w", StorageSettings(chunk_size=8, **FAST)) as archive:
        archive.add_case("dense", dense_labels(), mapping={"a": 1, "b": 2, "c": 3, "small": 4})
        archive.add_case("layered", layered_masks())
    return path


@contextmanager
def fresh_case(path: Path, case_id: str) -> Iterator:
    with MaskArchive(path) as archive:
        yield archive[case_id]


def bbox_chunks(mask: np.ndarray) -> set[tuple[int, ...]]:
    return touched(mask.shape, COUNT_CHUNKS, bbox_of(mask))


def test_layered_case_has_the_intended_layout(counting_archive: Path) -> None:
    masks = layered_masks()
    volume, layers = layered_layout()
    with fresh_case(counting_archive, "layered") as case:
        assert case.mapping == LAYERED_MAPPING
        assert case.representation("body") == "label_volume"
        assert case.representation("core") == case.representation("spot") == "binary_layer"
        assert case.info.layer_names == ("core", "spot") == tuple(layers)  # placement order: core is larger
        origins = case.info.layer_origins
        assert_same(case.stored_labels[...], volume, "stored labels")
        assert_same(case.stored_layers[...], np.stack(list(layers.values())), "stored layers")
    # core is only in its layer; spot is in both; the label volume keeps every chunk stored
    assert np.array_equal(layers["core"], masks["core"]) and not (volume == 2).any()
    assert 0 < np.count_nonzero(layers["spot"]) < np.count_nonzero(masks["spot"])
    assert np.array_equal((volume == 3) | layers["spot"], masks["spot"])
    assert nonempty_chunks(volume, COUNT_CHUNKS) == ALL_CHUNKS
    assert len(nonempty_chunks(layers["core"], COUNT_CHUNKS)) < len(bbox_chunks(masks["core"]))
    # each window starts on a chunk boundary (stored_layers above: it holds all of its layer's voxels)
    assert len(origins) == 2
    for origin in origins:
        assert all(o % n == 0 and 0 <= o < n * g for o, n, g in zip(origin, COUNT_CHUNKS, (5, 4, 3))), origins


def test_full_label_read_reads_every_chunk_once(counting_archive: Path) -> None:
    with fresh_case(counting_archive, "dense") as case, counting_chunk_reads(counting_archive) as reads:
        labels = case.read_labels()
    np.testing.assert_array_equal(labels, dense_labels())
    assert Counter(reads) == expect((LABELS, ALL_CHUNKS))


def test_full_painted_read_of_a_layered_case_reads_each_chunk_once(counting_archive: Path) -> None:
    """read_labels(): every stored label chunk once, plus every stored layer chunk (all lie in their
    organ's bounding box) once; stored_layers: every stored layer chunk once, at its window position."""
    volume, layers = layered_layout()
    with fresh_case(counting_archive, "layered") as case, counting_chunk_reads(counting_archive) as reads:
        got = case.read_labels()
        expected = expect((LABELS, nonempty_chunks(volume, COUNT_CHUNKS)))
        for name, layer in layers.items():
            expected += layer_reads(case, name, nonempty_chunks(layer, COUNT_CHUNKS), COUNT_CHUNKS)
    assert_same(got, painted(volume, layers, LAYERED_MAPPING), "read_labels")
    assert Counter(reads) == expected
    with fresh_case(counting_archive, "layered") as case, counting_chunk_reads(counting_archive) as reads:
        got = case.stored_layers[...]
        expected = Counter()
        for name, layer in layers.items():
            expected += layer_reads(case, name, nonempty_chunks(layer, COUNT_CHUNKS), COUNT_CHUNKS)
    assert_same(got, np.stack(list(layers.values())), "stored_layers")
    assert Counter(reads) == expected


@COUNTS
@given(data=st.data())
def test_label_view_reads_exactly_the_chunks_a_selection_intersects(counting_archive: Path, data) -> None:
    sel = data.draw(selections(COUNT_SHAPE), label="selection")
    expected_chunks = touched(COUNT_SHAPE, COUNT_CHUNKS, sel)
    for view in ("labels", "stored_labels"):
        with fresh_case(counting_archive, "dense") as case, counting_chunk_reads(counting_archive) as reads:
            got = getattr(case, view)[sel]
        assert_same(got, dense_labels()[sel], (view, sel))
        assert Counter(reads) == expect((LABELS, expected_chunks)), (view, sel)


@COUNTS
@given(data=st.data())
def test_read_region_reads_exactly_the_chunks_of_the_region(counting_archive: Path, data) -> None:
    region, slices = data.draw(voxel_regions(COUNT_SHAPE), label="region")
    with fresh_case(counting_archive, "dense") as case, counting_chunk_reads(counting_archive) as reads:
        got = case.read_region(region)
    assert_same(got, dense_labels()[slices], region)
    assert Counter(reads) == expect((LABELS, touched(COUNT_SHAPE, COUNT_CHUNKS, slices))), region


@COUNTS
@given(data=st.data(), name=st.sampled_from(["small", "a"]))
def test_organ_view_reads_only_chunks_of_the_selection_inside_the_bbox(counting_archive: Path, data, name) -> None:
    sel = data.draw(selections(COUNT_SHAPE), label="selection")
    labels = dense_labels()
    mask = labels == {"small": 4, "a": 1}[name]
    expected_chunks = touched(COUNT_SHAPE, COUNT_CHUNKS, sel) & bbox_chunks(mask)
    with fresh_case(counting_archive, "dense") as case, counting_chunk_reads(counting_archive) as reads:
        got = case.organ(name)[sel]
    assert_same(got, mask[sel], (name, sel))
    assert Counter(reads) == expect((LABELS, expected_chunks)), (name, sel)


@pytest.mark.parametrize("how", ["read_organ", "crop", "view"])
def test_small_organ_reads_only_the_chunks_of_its_bbox(counting_archive: Path, how: str) -> None:
    mask = dense_labels() == 4
    with fresh_case(counting_archive, "dense") as case, counting_chunk_reads(counting_archive) as reads:
        if how == "read_organ":
            got = case.read_organ("small")
        elif how == "crop":
            got, _ = case.read_organ("small", crop=True)
            mask = mask[SMALL_BOX]
        else:
            got = case.organ("small")[...]
    assert_same(got, mask, how)
    expected_chunks = touched(COUNT_SHAPE, COUNT_CHUNKS, SMALL_BOX)
    assert len(expected_chunks) == 8 and len(expected_chunks) * 7 < len(ALL_CHUNKS)
    assert Counter(reads) == expect((LABELS, expected_chunks)), how


def test_organ_filling_the_volume_reads_every_chunk(counting_archive: Path) -> None:
    with fresh_case(counting_archive, "dense") as case, counting_chunk_reads(counting_archive) as reads:
        case.read_organ("b")
    assert Counter(reads) == expect((LABELS, ALL_CHUNKS))


@COUNTS
@given(data=st.data())
def test_organ_region_read_reads_only_region_chunks_inside_the_bbox(counting_archive: Path, data) -> None:
    region, slices = data.draw(voxel_regions(COUNT_SHAPE), label="region")
    mask = dense_labels() == 4
    expected_chunks = touched(COUNT_SHAPE, COUNT_CHUNKS, slices) & bbox_chunks(mask)
    with fresh_case(counting_archive, "dense") as case, counting_chunk_reads(counting_archive) as reads:
        got = case.read_organ("small", region=region)
    assert_same(got, mask[slices], region)
    assert Counter(reads) == expect((LABELS, expected_chunks)), region


@pytest.mark.parametrize("name", ["core", "spot"])
@pytest.mark.parametrize("how", ["read_organ", "crop"])
def test_binary_layer_organ_reads_label_and_stored_layer_chunks_in_its_bbox(
    counting_archive: Path, name: str, how: str
) -> None:
    """A layer organ is (label volume == value) | layer: it reads the stored label chunks of its bbox and
    its layer's stored chunks there (those inside its window), each once; no other layer's chunk."""
    mask = layered_masks()[name]
    volume, layers = layered_layout()
    with fresh_case(counting_archive, "layered") as case, counting_chunk_reads(counting_archive) as reads:
        got = case.read_organ(name) if how == "read_organ" else case.read_organ(name, crop=True)[0]
        layer_stored = nonempty_chunks(layers[name], COUNT_CHUNKS)
        expected = expect((LABELS, bbox_chunks(mask) & nonempty_chunks(volume, COUNT_CHUNKS)))
        expected += layer_reads(case, name, bbox_chunks(mask) & layer_stored, COUNT_CHUNKS)
    assert_same(got, mask if how == "read_organ" else mask[bbox_of(mask)], (name, how))
    assert layer_stored <= bbox_chunks(mask)
    assert Counter(reads) == expected, (name, how)


@COUNTS
@given(data=st.data(), name=st.sampled_from(["core", "spot", "body"]))
def test_binary_layer_organ_view_reads_label_and_layer_chunks_of_the_selection_in_its_bbox(
    counting_archive: Path, data, name: str
) -> None:
    sel = data.draw(selections(COUNT_SHAPE), label="selection")
    mask = layered_masks()[name]
    volume, layers = layered_layout()
    in_view = touched(COUNT_SHAPE, COUNT_CHUNKS, sel) & bbox_chunks(mask)
    with fresh_case(counting_archive, "layered") as case, counting_chunk_reads(counting_archive) as reads:
        got = case.organ(name)[sel]
        expected = expect((LABELS, in_view & nonempty_chunks(volume, COUNT_CHUNKS)))
        if name in layers:
            expected += layer_reads(case, name, in_view & nonempty_chunks(layers[name], COUNT_CHUNKS), COUNT_CHUNKS)
    assert_same(got, mask[sel], (name, sel))
    assert Counter(reads) == expected, (name, sel)


@COUNTS
@given(data=st.data())
def test_painted_label_view_reads_label_chunks_and_layer_chunks_in_each_bbox(counting_archive: Path, data) -> None:
    sel = data.draw(selections(COUNT_SHAPE), label="selection")
    masks = layered_masks()
    volume, layers = layered_layout()
    selected = touched(COUNT_SHAPE, COUNT_CHUNKS, sel)
    with fresh_case(counting_archive, "layered") as case, counting_chunk_reads(counting_archive) as reads:
        got = case.labels[sel]
        expected = expect((LABELS, selected & nonempty_chunks(volume, COUNT_CHUNKS)))
        for name, layer in layers.items():
            chunk_set = selected & bbox_chunks(masks[name]) & nonempty_chunks(layer, COUNT_CHUNKS)
            expected += layer_reads(case, name, chunk_set, COUNT_CHUNKS)
    assert_same(got, painted(volume, layers, LAYERED_MAPPING)[sel], sel)
    assert Counter(reads) == expected, sel


def test_read_organs_reads_each_chunk_of_the_union_once(counting_archive: Path) -> None:
    """read_organs: the label chunks of the union of the bounding boxes once, and each layer organ's
    stored layer chunks in its bbox once."""
    masks = layered_masks()
    volume, layers = layered_layout()
    names = ["core", "spot"]
    union = tuple(
        slice(min(bbox_of(masks[n])[a].start for n in names), max(bbox_of(masks[n])[a].stop for n in names))
        for a in range(3)
    )
    with fresh_case(counting_archive, "layered") as case, counting_chunk_reads(counting_archive) as reads:
        got = case.read_organs(names)
        expected = expect((LABELS, touched(COUNT_SHAPE, COUNT_CHUNKS, union) & nonempty_chunks(volume, COUNT_CHUNKS)))
        for name in names:
            expected += layer_reads(case, name, nonempty_chunks(layers[name], COUNT_CHUNKS), COUNT_CHUNKS)
    for name in names:
        assert_same(got[name], masks[name], name)
    assert Counter(reads) == expected


def test_stored_labels_of_a_layered_case_never_read_layers(counting_archive: Path) -> None:
    with fresh_case(counting_archive, "layered") as case, counting_chunk_reads(counting_archive) as reads:
        case.stored_labels[10:30, ::-3, 5]
    assert {array for array, _ in reads} == {LABELS}
    assert Counter(reads) == expect(
        (LABELS, touched(COUNT_SHAPE, COUNT_CHUNKS, (slice(10, 30), slice(None, None, -3), 5)))
    )


# -- 5. the real case ------------------------------------------------------------------------

REAL_ORGAN = "iliac_artery_left"
REAL_CHUNKS = (32, 32, 32)
# organs of s0000 with a binary layer: rib_right_12 lies inside sacrum (layer only, 13 voxels),
# gluteus_medius_right shares 6 voxels with femur_right (layer and label volume)
REAL_LAYER_ORGANS = ["rib_right_12", "gluteus_medius_right"]
# imported once per module: {suffix: archive path, "labels_stored": chunk set, "layers_stored": {organ: chunk set}}
_REAL: dict[str, object] = {}


@pytest.fixture
def real_archives(real_case_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The real case imported once (per module) into one archive per backend, chunk size 32."""
    if not _REAL:
        data = load_mask_folder(real_case_dir)
        root = tmp_path_factory.mktemp("real_partial")
        for suffix in BACKEND_SUFFIXES:
            with MaskArchive(
                root / f"archive{suffix}", "w", StorageSettings(chunk_size=32, label_level=3, layer_level=3)
            ) as a:
                a.add_case("s0000", data)
            _REAL[suffix] = root / f"archive{suffix}"
        _REAL["labels_stored"] = nonempty_chunks(data.label_volume, REAL_CHUNKS)
        _REAL["layers_stored"] = {
            name: nonempty_chunks(layer, REAL_CHUNKS) for name, layer in zip(data.layer_names, data.binary_layers)
        }
    return _REAL


@pytest.mark.parametrize("suffix", BACKEND_SUFFIXES)
def test_real_organ_crop_has_its_voxels_and_the_bbox_space(real_archives, real_case_dir: Path, suffix: str) -> None:
    with fresh_case(real_archives[suffix], "s0000") as case:
        cropped, crop_space = case.read_organ(REAL_ORGAN, crop=True)
        bbox = case.stats[REAL_ORGAN].bbox
        full_affine = nifti_affine(case.space)
    assert cropped.dtype == np.bool_
    assert int(cropped.sum()) == 1155
    assert cropped.shape == tuple(b - a for a, b in bbox) == tuple(crop_space.shape)
    start = np.array([*(a for a, _ in bbox), 1.0])
    assert np.allclose(nifti_affine(crop_space) @ [0, 0, 0, 1], full_affine @ start, rtol=0, atol=1e-5)
    assert np.allclose(nifti_affine(crop_space)[:3, :3], full_affine[:3, :3], rtol=0, atol=1e-9)
    # against the source file itself
    source = nib.load(real_case_dir / f"{REAL_ORGAN}.nii.gz")
    box = tuple(slice(a, b) for a, b in bbox)
    np.testing.assert_array_equal(cropped, np.asanyarray(source.dataobj)[box] > 0)
    assert np.allclose(nifti_affine(crop_space) @ [0, 0, 0, 1], source.affine @ start, rtol=0, atol=1e-3)


@pytest.mark.parametrize("suffix", BACKEND_SUFFIXES)
def test_real_organ_reads_only_the_chunks_of_its_bbox(real_archives, suffix: str) -> None:
    path = real_archives[suffix]
    with fresh_case(path, "s0000") as case:
        bbox = case.stats[REAL_ORGAN].bbox
        assert case.representation(REAL_ORGAN) == "label_volume"
        shape = tuple(case.space.shape)
    box = tuple(slice(a, b) for a, b in bbox)
    expected_chunks = box_chunks(box, REAL_CHUNKS) & real_archives["labels_stored"]
    grid = int(np.prod([-(-s // 32) for s in shape]))
    assert 0 < len(expected_chunks) < grid // 20
    for how in ("crop", "read_organ"):
        with fresh_case(path, "s0000") as case, counting_chunk_reads(path) as reads:
            got = case.read_organ(REAL_ORGAN, crop=True)[0] if how == "crop" else case.read_organ(REAL_ORGAN)
        assert int(got.sum()) == 1155
        assert Counter(reads) == expect((LABELS, expected_chunks)), how


@pytest.mark.parametrize("organ", REAL_LAYER_ORGANS)
@pytest.mark.parametrize("suffix", BACKEND_SUFFIXES)
def test_real_layer_organ_reads_label_and_layer_chunks_of_its_bbox(
    real_archives, real_case_dir: Path, suffix: str, organ: str
) -> None:
    path = real_archives[suffix]
    layer_stored = real_archives["layers_stored"][organ]
    with fresh_case(path, "s0000") as case:
        bbox = case.stats[organ].bbox
        voxels = case.stats[organ].voxels
        assert case.representation(organ) == "binary_layer"
    box = tuple(slice(a, b) for a, b in bbox)
    assert 0 < len(layer_stored) and layer_stored <= box_chunks(box, REAL_CHUNKS)
    for how in ("crop", "read_organ"):
        with fresh_case(path, "s0000") as case, counting_chunk_reads(path) as reads:
            got = case.read_organ(organ, crop=True)[0] if how == "crop" else case.read_organ(organ)
            expected = expect((LABELS, box_chunks(box, REAL_CHUNKS) & real_archives["labels_stored"]))
            expected += layer_reads(case, organ, layer_stored, REAL_CHUNKS)
        assert int(got.sum()) == voxels
        assert Counter(reads) == expected, how
    source = np.asanyarray(nib.load(real_case_dir / f"{organ}.nii.gz").dataobj) > 0
    np.testing.assert_array_equal(got, source)
