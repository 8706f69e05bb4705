"""Each organ's voxel count per chunk: stored at write time, equal to the organ's masks, refused when it disagrees."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import chunk_voxels

from medmask_store import CaseData, CorruptMetadata, MaskArchive, StorageSettings
from medmask_store.model.manifest import ORGAN_CHUNK_VOXELS
from medmask_store.sampling import PatchSampler
from medmask_store.storage import layout

EDGE = 16


@pytest.fixture
def data(phantom) -> CaseData:
    masks, space = phantom
    data = CaseData.from_masks(masks, space=space)
    assert data.layer_names, "the phantom's rib overlaps its host: a binary layer"
    return data


@pytest.mark.parametrize("preset", ["default", "compact"])
@pytest.mark.parametrize("rows_per_chunk", [None, 3])  # the whole table in one chunk, or three organs per chunk
def test_counts_are_each_organs_voxels_per_chunk(
    archive_path: Path, data: CaseData, preset: str, rows_per_chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = math.prod(-(-n // EDGE) for n in data.space.shape)
    if rows_per_chunk:
        monkeypatch.setattr(layout, "COUNTS_PER_CHUNK", rows_per_chunk * grid)
    settings = dataclasses.replace(StorageSettings.preset(preset), chunk_size=EDGE)
    with MaskArchive(archive_path, "w", settings=settings) as archive:
        archive.add_case("a", data)
    with MaskArchive(archive_path) as archive:
        case = archive["a"]
        assert case.info.arrays[ORGAN_CHUNK_VOXELS].chunks == (rows_per_chunk or len(data.mapping), grid)
        for name in data.mapping:  # empty organs and the binary-layer organ included
            np.testing.assert_array_equal(case.organ_chunk_voxels(name), chunk_voxels(data.organ_mask(name), EDGE), err_msg=name)


def test_cases_written_without_the_table_count_the_organs_chunks(
    archive_path: Path, data: CaseData, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = layout.arrays_to_write

    def without_table(*args):
        arrays, origins = write(*args)
        return [a for a in arrays if a.name != ORGAN_CHUNK_VOXELS], origins

    monkeypatch.setattr(layout, "arrays_to_write", without_table)  # as medmask_store wrote cases before the table
    with MaskArchive(archive_path, "w", settings=StorageSettings(chunk_size=EDGE)) as archive:
        archive.add_case("old", data)
    with MaskArchive(archive_path) as archive:
        case = archive["old"]
        assert ORGAN_CHUNK_VOXELS not in case.info.arrays
        for name in data.mapping:
            np.testing.assert_array_equal(case.organ_chunk_voxels(name), chunk_voxels(data.organ_mask(name), EDGE), err_msg=name)
        patch = PatchSampler(archive, 8, foreground_fraction=1.0, class_probabilities={"rib_right_12": 1.0}).sample()
        centre = tuple(s + 4 for s in patch.start)
        assert data.organ_mask("rib_right_12")[centre]


@pytest.mark.parametrize("craft", ["moved", "added"])
def test_counts_that_disagree_with_the_statistics_are_refused(
    archive_path: Path, data: CaseData, craft: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = layout.organ_chunk_voxels
    organ = "rib_right_12"
    row = sorted(data.mapping.values()).index(data.mapping[organ])

    def crafted(*args):
        counts = count(*args)
        held = np.flatnonzero(counts[row])[0]
        counts[row, held] -= 1
        counts[row, -1 if craft == "moved" else held] += 1 if craft == "moved" else 2  # outside its box, or one too many
        return counts

    monkeypatch.setattr(layout, "organ_chunk_voxels", crafted)  # a consistent manifest: only the counts lie
    with MaskArchive(archive_path, "w", settings=StorageSettings(chunk_size=EDGE)) as archive:
        archive.add_case("a", data)
    with MaskArchive(archive_path) as archive:
        message = rf"case 'a'.*organ '{organ}': its stored chunk voxel counts hold \d+ voxels, its statistics say"
        with pytest.raises(CorruptMetadata, match=message):
            archive["a"].organ_chunk_voxels(organ)
        sampler = PatchSampler(archive, 8, foreground_fraction=1.0, class_probabilities={organ: 1.0})
        with pytest.raises(CorruptMetadata, match=message):
            sampler.sample()
        np.testing.assert_array_equal(archive["a"].read_organ(organ), data.organ_mask(organ))  # voxels still read
