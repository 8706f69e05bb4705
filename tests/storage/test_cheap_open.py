"""Cheap opens: a case decodes its statistics, colours and organ affines on first use, not at open, and
still refuses them, when used, as an open refused them before."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers import case_content, write_case_content

from medmask_store import CaseData, CorruptMetadata, MaskArchive
from medmask_store.model import attributes


@pytest.fixture
def stored(archive_path: Path, phantom) -> tuple[Path, CaseData]:
    masks, space = phantom
    data = CaseData.from_masks(masks, space=space)
    assert data.layer_names, "the phantom's rib overlaps its host: a binary layer"
    with MaskArchive(archive_path, "w") as archive:
        archive.add_case("a", data)
    return archive_path, data


def test_opening_and_reading_labels_decode_no_statistics(stored, monkeypatch: pytest.MonkeyPatch) -> None:
    path, data = stored
    decoded: list[str] = []
    for name in ("_stats", "_decode_colors", "_decode_affines"):
        original = getattr(attributes, name)
        monkeypatch.setattr(attributes, name, lambda *args, name=name, original=original: decoded.append(name) or original(*args))
    with MaskArchive(path) as archive:
        case = archive["a"]
        region = (slice(3, 70), slice(5, 60), slice(0, 40))
        np.testing.assert_array_equal(case.read_region(region), case.read_labels()[region])
        assert decoded == []
        assert case.stats == data.stats and decoded == ["_stats"]
        case.stats  # noqa: B018 - decoded once
        assert decoded == ["_stats"]


def test_voxel_reads_build_no_space(stored, monkeypatch: pytest.MonkeyPatch) -> None:
    path, data = stored
    built: list[object] = []
    original = attributes.Space.from_dict
    monkeypatch.setattr(attributes.Space, "from_dict", lambda fields: built.append(fields) or original(fields))
    with MaskArchive(path) as archive:
        case = archive["a"]
        region = (slice(3, 70), slice(5, 60), slice(0, 40))
        np.testing.assert_array_equal(case.read_region(region), case.read_labels()[region])
        np.testing.assert_array_equal(case.stored_labels[region], data.label_volume[region])
        assert built == []  # voxel regions need only the shape
        assert case.space == data.space and case.space is case.space and len(built) == 1  # built once, on first use
        case.read_organ("liver")  # organ reads use statistics, whose world centroids use that Space
        assert len(built) == 1


def test_a_crafted_orientation_is_refused_where_the_space_is_used(stored) -> None:
    path, data = stored
    content = case_content(path, "a")
    content["space"]["x_orientation"] = [0.0, 1.0, 0.0]  # the y axis again: no basis
    write_case_content(path, "a", content)  # resealed: only spacetransformer's checks can refuse it
    with MaskArchive(path) as archive:
        case = archive["a"]
        np.testing.assert_array_equal(case.read_labels(include_layers=False), data.label_volume)  # no orientation needed
        for use in (lambda: case.space, lambda: case.stats, lambda: case.region_space((slice(0, 4),) * 3)):
            with pytest.raises(CorruptMetadata, match=r"case 'a': malformed attributes \(.*orthonormal"):
                use()


def test_crafted_statistics_are_refused_where_they_are_used(stored) -> None:
    path, data = stored
    content = case_content(path, "a")
    content["stats"]["bbox"][0][1] = 10**6
    write_case_content(path, "a", content)  # resealed: only the structural checks can refuse it
    with MaskArchive(path) as archive:
        case = archive["a"]
        np.testing.assert_array_equal(case.read_labels(include_layers=False), data.label_volume)  # needs no statistics
        organ = content["stats"]["organs"][0]
        for use in (lambda: case.stats, lambda: case.read_organ(organ), lambda: case.stats):  # refused at every use
            with pytest.raises(CorruptMetadata, match=rf"case 'a': malformed attributes: bounding box .* of organ '{organ}'"):
                use()


def test_case_info_pickles_with_its_metadata_decoded(stored) -> None:
    path, data = stored
    with MaskArchive(path) as archive:
        info = archive["a"].info
        copy = pickle.loads(pickle.dumps(info))
    assert copy == info
    assert copy.stats == data.stats and copy.colors == info.colors and type(copy.stats) is dict
