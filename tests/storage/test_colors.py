"""Organ colours: stored in the sealed case attributes, read back bit-exact on every backend, kept by copies,
the default palette for organs without one and for archives written before colours existed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import case_content, ok, snapshot, suffix_of, write_case_content

from medmask_store import CaseData, CorruptMetadata, InvalidCase, MaskArchive, SegmentationMask
from medmask_store.model.palette import PALETTE, default_color

OLD_ARCHIVE = Path(__file__).resolve().parents[1] / "data" / "format3_before_colors.msk"
OWN_COLORS = {"liver": (12, 34, 56, 78), "spleen": (255, 255, 255, 0)}


@pytest.fixture
def colored(archive_path: Path, phantom) -> Path:
    """Case 'a': the phantom with two organs of their own colours."""
    masks, space = phantom
    data = CaseData.from_masks(masks, space=space)
    data.colors.update(OWN_COLORS)
    with MaskArchive(archive_path, "w") as archive:
        archive.add_case("a", data)
    return archive_path


def expected_colors(mapping: dict[str, int]) -> dict[str, tuple[int, int, int, int]]:
    return {name: OWN_COLORS.get(name, default_color(value)) for name, value in mapping.items()}


def test_colours_read_back_bit_exact_and_the_others_take_the_palette(colored: Path) -> None:
    with MaskArchive(colored) as archive:
        case = archive["a"]
        assert case.colors == expected_colors(case.mapping)
        assert all(type(channel) is int for color in case.colors.values() for channel in color)
        assert case.to_case_data().colors == case.colors
    stored = case_content(colored, "a")["colors"]
    assert stored == {name: list(color) for name, color in OWN_COLORS.items()}  # palette colours cost nothing


def test_palette_gives_neighbouring_values_distinct_colours() -> None:
    assert len(set(PALETTE)) == len(PALETTE) >= 12
    assert all(default_color(v) != default_color(v + 1) for v in range(1, 65535))
    assert default_color(5) == default_color(5 + len(PALETTE)) == (0, 255, 255, 255)  # fixed, by value


@pytest.mark.parametrize("target", [".zarr", ".zarr.zip", ".h5", ".msk"])
def test_copies_and_conversions_keep_colours(colored: Path, tmp_path: Path, target: str) -> None:
    with MaskArchive(colored) as archive:
        archive.copy_to(tmp_path / f"copy{target}")
        colors = archive["a"].colors
    ok("convert", colored, tmp_path / f"converted{target}", "--preset", "compact")
    for path in (tmp_path / f"copy{target}", tmp_path / f"converted{target}"):
        with MaskArchive(path) as copy:
            assert copy["a"].colors == colors


def test_segmentation_mask_keeps_colours_through_load_and_save(colored: Path, tmp_path: Path, phantom) -> None:
    masks, _ = phantom
    with MaskArchive(colored, "a") as archive:
        archive.add_case("flat", {"liver": masks["liver"], "spleen": masks["spleen"]}, space=phantom[1])
        data = archive["flat"].to_case_data()
        data.colors["liver"] = OWN_COLORS["liver"]
        archive.add_case("flat", data, overwrite=True)
        mask = SegmentationMask.from_case(archive["flat"])
    mask.save(tmp_path / "mask.msk")
    with MaskArchive(tmp_path / "mask.msk") as saved:
        assert saved["mask"].colors["liver"] == OWN_COLORS["liver"]


@pytest.mark.parametrize(
    "colors, reason",
    [
        ({"heart": (1, 2, 3, 4)}, "colour of organ 'heart', which the mapping does not name"),
        ({"liver": (1, 2, 3)}, "must be RGBA"),
        ({"liver": (1, 2, 3, 256)}, "must be RGBA"),
        ({"liver": (1.0, 2, 3, 4)}, "must be RGBA"),
    ],
)
def test_bad_colours_are_refused_leaving_the_archive_unchanged(colored: Path, phantom, colors: dict, reason: str) -> None:
    masks, space = phantom
    before = snapshot(colored)
    data = CaseData.from_masks(masks, space=space)
    data.colors.update(colors)
    with MaskArchive(colored, "a") as archive, pytest.raises(InvalidCase, match=re.escape(reason)):
        archive.add_case("b", data)
    assert snapshot(colored) == before


# -- archives written before colours -----------------------------------------------------------------
def test_archive_written_before_colours_opens_with_the_palette(tmp_path: Path) -> None:
    """tests/data/format3_before_colors.msk was written by medmask_store before this change."""
    shape = (24, 20, 16)
    masks = {}
    for i, name in enumerate(["liver", "spleen", "kidney_left"]):
        masks[name] = np.zeros(shape, bool)
        masks[name][2 + 6 * i : 7 + 6 * i, 3:15, 2:12] = True
    masks["rib_right_12"] = np.zeros(shape, bool)
    masks["rib_right_12"][3:5, 4:6, 3:5] = True
    path = shutil.copy(OLD_ARCHIVE, tmp_path / "old.msk")
    with MaskArchive(path) as archive:
        case = archive["old"]
        assert case.mapping == {"liver": 5, "spleen": 1, "kidney_left": 3, "rib_right_12": 116}
        assert case.colors == {name: default_color(value) for name, value in case.mapping.items()}
        for name, mask in masks.items():
            assert np.array_equal(case.read_organ(name), mask), name
        archive.copy_to(tmp_path / "new.zarr")
    assert "colors" not in case_content(tmp_path / "new.zarr", "old")
    assert "1 case(s) checked, 0 problem(s)" in ok("verify", tmp_path / "new.zarr").output


def test_case_attributes_without_colours_open_on_every_backend(colored: Path) -> None:
    content = case_content(colored, "a")
    del content["colors"]
    write_case_content(colored, "a", content)
    with MaskArchive(colored) as archive:
        case = archive["a"]
        assert case.colors == {name: default_color(value) for name, value in case.mapping.items()}


@pytest.mark.parametrize(
    "stored, fault",
    [
        ([], "colour organs"),
        ({"heart": [1, 2, 3, 4]}, "colour organs"),
        ({"liver": [1, 2, 3]}, "colour [1, 2, 3] of organ 'liver'"),
        ({"liver": [1, 2, 3, 256]}, "colour [1, 2, 3, 256] of organ 'liver'"),
        ({"liver": [1, 2, 3, -1]}, "of organ 'liver'"),
        ({"liver": [1.0, 2, 3, 4]}, "of organ 'liver'"),
        ({"liver": [True, 2, 3, 4]}, "of organ 'liver'"),
        ({"liver": "#ff0000"}, "of organ 'liver'"),
    ],
)
def test_crafted_colours_are_corrupt_metadata(colored: Path, stored: object, fault: str) -> None:
    content = case_content(colored, "a")
    content["colors"] = stored
    write_case_content(colored, "a", content)  # resealed: only the structural checks can refuse it
    with MaskArchive(colored) as archive, pytest.raises(CorruptMetadata) as caught:
        archive["a"].colors  # noqa: B018 - colours are checked on first use
    message = str(caught.value)
    assert "case 'a': malformed attributes: " in message and fault in message and suffix_of(colored) in message, message


def test_info_json_shows_every_organ_s_colour(colored: Path) -> None:
    organs = json.loads(ok("info", colored, "a", "--json").output)["organs"]
    with MaskArchive(colored) as archive:
        assert {name: tuple(organ["color"]) for name, organ in organs.items()} == archive["a"].colors

