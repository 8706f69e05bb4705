"""Organ colours: RGBA, four integers 0..255, and the default palette for organs given none.

The palette is the one TotalSegmentator writes into its label tables (value ``v`` takes
``PALETTE[v % 12]``): neighbouring values differ, the same value always has the same
colour, and a TotalSegmentator table costs nothing to store (archives keep only the
colours that differ from the palette).
"""

from __future__ import annotations

from collections.abc import Mapping

Color = tuple[int, int, int, int]

PALETTE: tuple[Color, ...] = (
    (255, 0, 0, 255), (0, 255, 0, 255), (0, 0, 255, 255), (255, 255, 0, 255), (255, 0, 255, 255),
    (0, 255, 255, 255), (255, 128, 0, 255), (255, 0, 128, 255), (128, 255, 128, 255), (0, 128, 255, 255),
    (128, 128, 128, 255), (185, 170, 155, 255),
)  # fmt: skip


def default_color(value: int) -> Color:
    """The palette's colour of label ``value``."""
    return PALETTE[value % len(PALETTE)]


def organ_colors(mapping: Mapping[str, int], colors: Mapping[str, Color]) -> dict[str, Color]:
    """Every organ's colour: its own in ``colors``, else the palette's for its value."""
    return {name: colors.get(name) or default_color(value) for name, value in mapping.items()}
