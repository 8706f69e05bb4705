"""Validation of user-supplied names, ids, metadata and label mappings."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from medmask_store.errors import InvalidCase

_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f/\\]")
# Names that stores use for their own metadata next to case groups.
RESERVED_CASE_IDS = frozenset({"zarr.json", ".zgroup", ".zattrs", ".zarray"})
MAX_LABEL_VALUE = 65535


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
    if len(case_id.encode()) > 200:
        raise InvalidCase(f"case id {case_id[:40]!r}... is longer than 200 bytes")
    return case_id


def validate_organ_name(name: object) -> str:
    """Organ names become file names on export, so they follow case-id rules."""
    if not isinstance(name, str) or not name or _FORBIDDEN.search(name) or name in (".", ".."):
        raise InvalidCase(f"invalid organ name {name!r}: need a non-empty name without '/', '\\' or control characters")
    return name


def validate_mapping(mapping: Mapping[str, Any]) -> dict[str, int]:
    """Check names and values (unique integers in 1..65535); return a plain dict."""
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
