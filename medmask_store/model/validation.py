"""Validation of user-supplied names, ids, metadata and label mappings."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from spacetransformer import Space

from medmask_store.errors import InvalidCase
from medmask_store.limits import MAX_CASE_ID_BYTES, MAX_ORGAN_NAME_BYTES, MAX_VOXELS
from medmask_store.model.palette import Color

_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f/\\]")
# Names that stores use for their own metadata next to case groups.
RESERVED_CASE_IDS = frozenset({"zarr.json", ".zgroup", ".zattrs", ".zarray"})
MAX_LABEL_VALUE = 65535


def _utf8(name: str, what: str) -> bytes:
    try:
        return name.encode()
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. from an undecodable file name
        raise InvalidCase(f"{what} {name!r} is not valid UTF-8") from exc


def validate_case_id(case_id: object) -> str:
    """Return ``case_id`` if it is usable as a group and folder name, else raise."""
    if not isinstance(case_id, str) or not case_id:
        raise InvalidCase(f"case id must be a non-empty string, got {case_id!r}")
    if _FORBIDDEN.search(case_id) or case_id.startswith(".") or case_id.strip() != case_id:
        raise InvalidCase(
            f"invalid case id {case_id!r}: no '/', '\\', control characters, "
            "leading '.' or surrounding spaces"
        )
    if case_id.lower() in RESERVED_CASE_IDS:
        raise InvalidCase(f"case id {case_id!r} is reserved for store metadata")
    if len(_utf8(case_id, "case id")) > MAX_CASE_ID_BYTES:
        raise InvalidCase(f"case id {case_id[:40]!r}... is longer than {MAX_CASE_ID_BYTES} bytes")
    return case_id


_VALID_ORGAN_NAMES: set[str] = set()  # names found valid: the cases of a dataset repeat a few hundred names
MAX_REMEMBERED_NAMES = 2**16


def validate_organ_name(name: object) -> str:
    """Organ names become file names on export (``<organ>.nii.gz``), so they follow case-id rules."""
    if type(name) is str and name in _VALID_ORGAN_NAMES:
        return name
    if not isinstance(name, str) or not name or _FORBIDDEN.search(name) or name in (".", ".."):
        raise InvalidCase(f"invalid organ name {name!r}: need a non-empty name without '/', '\\' or control characters")
    if len(_utf8(name, "organ name")) > MAX_ORGAN_NAME_BYTES:
        raise InvalidCase(
            f"organ name {name[:40]!r}... is longer than {MAX_ORGAN_NAME_BYTES} bytes: "
            "export writes <organ>.nii.gz, and file names hold 255 bytes"
        )
    if type(name) is str and len(_VALID_ORGAN_NAMES) < MAX_REMEMBERED_NAMES:
        _VALID_ORGAN_NAMES.add(name)
    return name


def validate_mapping(mapping: Mapping[str, Any]) -> dict[str, int]:
    """Check names and values (unique integers in 1..65535); return a plain dict."""
    values = list(mapping.values())
    if (
        _VALID_ORGAN_NAMES.issuperset(mapping) and all(type(v) is int for v in values)
        and (not values or 1 <= min(values) and max(values) <= MAX_LABEL_VALUE) and len(set(values)) == len(values)
    ):  # fmt: skip
        return dict(mapping)  # names seen before and plain values: every case open checks its mapping
    result: dict[str, int] = {}
    owner: dict[int, str] = {}
    for name, value in mapping.items():
        validate_organ_name(name)
        if isinstance(value, bool) or not isinstance(value, (int,)) and not hasattr(value, "__index__"):
            raise InvalidCase(f"label value of organ {name!r} must be an integer, got {value!r}")
        value = int(value)
        if not 1 <= value <= MAX_LABEL_VALUE:
            raise InvalidCase(f"label value {value} of organ {name!r} is outside 1..{MAX_LABEL_VALUE}")
        if value in owner:
            raise InvalidCase(f"organs {owner[value]!r} and {name!r} share label value {value}")
        owner[value] = name
        result[name] = value
    return result


def validate_colors(colors: Mapping[str, Any], mapping: Mapping[str, int]) -> dict[str, Color]:
    """Check that each colour belongs to an organ of ``mapping`` and is RGBA, 4 integers 0..255."""
    result: dict[str, Color] = {}
    for name, color in colors.items():
        if name not in mapping:
            raise InvalidCase(f"colour of organ {name!r}, which the mapping does not name")
        channels = list(color) if isinstance(color, (list, tuple, np.ndarray)) else []
        if len(channels) != 4 or not all(_is_integer(c) and 0 <= c <= 255 for c in channels):
            raise InvalidCase(f"colour of organ {name!r} must be RGBA, 4 integers 0..255, got {color!r}")
        result[name] = (int(channels[0]), int(channels[1]), int(channels[2]), int(channels[3]))
    return result


def _is_integer(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def validate_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """User metadata must be a JSON object (no NaN, no arbitrary objects)."""
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise InvalidCase(f"case metadata must be a mapping, got {type(meta).__name__}")
    try:
        return json.loads(json.dumps(dict(meta), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidCase(f"case metadata is not JSON-serializable: {exc}") from exc


def validate_space(space: object) -> Space:
    """A Space whose geometry is usable (:func:`validate_geometry`)."""
    if not isinstance(space, Space):
        raise InvalidCase(f"space must be a spacetransformer.Space, got {type(space).__name__}")
    validate_geometry(space.shape, space.origin, space.spacing, space.x_orientation, space.y_orientation, space.z_orientation)
    return space


def validate_geometry(
    shape: Any, origin: Any, spacing: Any, x_orientation: Any, y_orientation: Any, z_orientation: Any
) -> None:
    """Check a Space's values (plain Python: every open checks them): finite origin and orientation, finite
    positive spacing, at most ``MAX_VOXELS`` voxels."""
    shape = tuple(shape)
    if len(shape) != 3 or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in shape):
        raise InvalidCase(f"space shape must be 3 positive integers, got {shape}")
    if math.prod(int(n) for n in shape) > MAX_VOXELS:
        raise InvalidCase(f"space shape {shape} exceeds the limit of {MAX_VOXELS} voxels")
    vectors = {"origin": origin, "spacing": spacing, "x_orientation": x_orientation,
               "y_orientation": y_orientation, "z_orientation": z_orientation}  # fmt: skip
    for name, vector in vectors.items():
        try:
            values = [float(v) for v in vector]
        except (TypeError, ValueError):
            values = []
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise InvalidCase(f"space {name} must be 3 finite numbers, got {vector}")
    if not all(float(v) > 0 for v in spacing):
        raise InvalidCase(f"space spacing must be positive, got {spacing}")
