"""Case.to_dask: a lazy dask array of a case's labels or one organ's mask, one block per stored chunk.

Values are compared with the eager reads and the masks that were written; chunk reads are
counted as tests/storage/test_partial_reads.py counts them for Zarr (``ShardedChunks.fetch``).
"""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
from distributed import Client
from local_cluster import dask_client  # noqa: F401  (a fixture)
from spacetransformer import Space

from medmask_store import MaskArchive, OrganNotFound, StorageSettings
from medmask_store.cluster import CaseVolume
from medmask_store.model.manifest import BINARY_LAYERS, LABEL_VOLUME
from medmask_store.storage.zarr_store import ShardedChunks

CHUNK = 16
SETTINGS = StorageSettings(chunk_size=CHUNK, label_level=1, layer_level=1)
HOST, LAYERED = "liver", "rib_right_12"  # the phantom's rib_right_12 lies inside its liver: a binary-layer organ
LARGEST = "stomach"  # the phantom's largest organ, placed first: never in a binary layer

Phantom = tuple[dict[str, np.ndarray], Space]


def painted(masks: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, int]]:
    """The masks painted one over the other into a label volume (no overlaps left), and its mapping."""
    labels = np.zeros(next(iter(masks.values())).shape, np.uint8)
    for value, mask in enumerate(masks.values(), start=1):
        labels[mask] = value
    return labels, {name: value for value, name in enumerate(masks, start=1)}


def store(path: Path, phantom: Phantom) -> None:
    """Case "layered" (the phantom: organs overlap) and case "plain" (its masks painted: no binary layer)."""
    masks, space = phantom
    labels, mapping = painted(masks)
    with MaskArchive(path, "w", SETTINGS) as archive:
        archive.add_case("layered", masks, space=space)
        archive.add_case("plain", labels, mapping=mapping, space=space)


def block_regions(shape: tuple[int, ...]) -> dict[tuple[int, ...], tuple[slice, ...]]:
    """Every block of a CHUNK³ grid over ``shape`` and the voxels it covers."""
    grid = [range(-(-n // CHUNK)) for n in shape]
    return {b: tuple(slice(c * CHUNK, (c + 1) * CHUNK) for c in b) for b in itertools.product(*grid)}


def test_labels_and_overlapping_organs_equal_the_eager_reads(archive_path: Path, phantom: Phantom) -> None:
    masks, space = phantom
    assert (masks[LAYERED] & masks[HOST]).any()
    store(archive_path, phantom)
    with MaskArchive(archive_path) as archive:
        case = archive["layered"]
        assert case.representation(LAYERED) == "binary_layer"
        labels = case.to_dask()
        assert labels.shape == space.shape and labels.dtype == case.read_labels().dtype
        assert labels.chunksize == case.info.arrays[LABEL_VOLUME].chunks == (CHUNK,) * 3
        assert labels.numblocks == tuple(-(-n // CHUNK) for n in space.shape)
        np.testing.assert_array_equal(labels.compute(), case.read_labels())  # threads: one case read concurrently
        np.testing.assert_array_equal(labels[10:41:3, 5:20, -7].compute(), case.read_labels()[10:41:3, 5:20, -7])
        empty = next(name for name, mask in masks.items() if not mask.any())
        for organ in (LAYERED, HOST, empty):
            mask = case.to_dask(organ)
            assert mask.dtype == np.bool_ and mask.chunksize == (CHUNK,) * 3
            np.testing.assert_array_equal(mask.compute(), masks[organ], err_msg=organ)


@pytest.mark.parametrize("suffix", [".zarr", ".zarr.zip"])
def test_a_block_reads_only_the_stored_chunks_under_it(
    tmp_path: Path, phantom: Phantom, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    masks, space = phantom
    path = tmp_path / f"archive{suffix}"
    store(path, phantom)
    reads: list[tuple[str, tuple[int, ...]]] = []
    original_fetch = ShardedChunks.fetch

    def fetch(self: ShardedChunks, coords: tuple[int, ...]) -> bytes:
        reads.append((self.path.rsplit("/", 1)[-1], tuple(int(c) for c in coords)))
        return original_fetch(self, coords)

    monkeypatch.setattr(ShardedChunks, "fetch", fetch)
    labelled = painted(masks)[0] > 0  # where plain's stored chunks are
    largest_box, layered_box = (tuple(slice(a.min(), a.max() + 1) for a in np.nonzero(masks[o])) for o in (LARGEST, LAYERED))

    def meets(block: tuple[slice, ...], box: tuple[slice, ...]) -> bool:
        return all(b.start < s.stop and s.start < b.stop for b, s in zip(block, box))

    with MaskArchive(path) as archive:
        plain, layered = archive["plain"].to_dask(), archive["layered"]
        assert (layered.representation(LARGEST), layered.representation(LAYERED)) == ("label_volume", "binary_layer")
        largest, rib = layered.to_dask(LARGEST), layered.to_dask(LAYERED)
        for coords, region in block_regions(space.shape).items():
            reads.clear()
            plain.blocks[coords].compute(scheduler="sync")
            assert reads == ([(LABEL_VOLUME, coords)] if labelled[region].any() else []), coords
            reads.clear()
            largest.blocks[coords].compute(scheduler="sync")  # a label-volume organ: its bounding box only
            assert reads == ([(LABEL_VOLUME, coords)] if meets(region, largest_box) else []), coords
            reads.clear()
            rib.blocks[coords].compute(scheduler="sync")  # a layer organ: the label chunk and its layer's chunk
            in_box = meets(region, layered_box)
            assert [array for array, _ in reads] == ([LABEL_VOLUME, BINARY_LAYERS] if in_box else []), coords
            assert not in_box or reads[0][1] == coords


def test_computed_on_a_cluster_the_tasks_carry_the_archive_path_not_voxels(
    tmp_path: Path, phantom: Phantom, dask_client: Client  # noqa: F811
) -> None:
    masks, _ = phantom
    path = tmp_path / "archive.h5"  # an HDF5 handle cannot cross processes: the workers reopen the file
    store(path, phantom)
    with MaskArchive(path) as archive:
        case = archive["layered"]
        labels, rib = case.to_dask(), case.to_dask(LAYERED)
        graph = pickle.dumps(dict(labels.__dask_graph__()))
        assert path.name.encode() in graph and len(graph) < labels.nbytes // 10
        np.testing.assert_array_equal(labels.compute(scheduler=dask_client), case.read_labels())
        np.testing.assert_array_equal(rib.compute(scheduler=dask_client), masks[LAYERED])


def test_an_unknown_organ_is_refused_at_once(archive_path: Path, phantom: Phantom) -> None:
    store(archive_path, phantom)
    with MaskArchive(archive_path) as archive, pytest.raises(OrganNotFound, match="case 'plain' has no organ 'livr'; did you mean liver"):
        archive["plain"].to_dask("livr")


def test_same_case_and_organ_give_the_same_dask_name(tmp_path: Path, phantom: Phantom) -> None:
    path = tmp_path / "archive.zarr"
    store(path, phantom)
    with MaskArchive(path) as archive:
        assert archive["layered"].to_dask(HOST).name == archive["layered"].to_dask(HOST).name
        names = {archive[c].to_dask(o).name for c in ("plain", "layered") for o in (None, HOST, "spleen")}
        assert len(names) == 6
        assert repr(CaseVolume(archive["plain"], HOST)) == "<CaseVolume 'plain' liver shape=(70, 60, 50) chunks=(16, 16, 16)>"
