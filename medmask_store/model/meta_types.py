"""The type of each case metadata field, as the archive's cases hold it.

Metadata is JSON, so a value is a number (int or float), a boolean, text, a list or
an object; ``null`` is no value and fits every field. A field's type is the type
most of the cases holding it give it: archives written before types were checked
may mix types, and one case's odd value must not retype the field for the others.
The types are derived from the stored metadata (the archive index holds every
case's), so they need no store of their own, on any backend, and a reopened
archive knows them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from medmask_store.errors import InvalidCase

META_TYPES = {bool: "boolean", int: "number", float: "number", str: "text", list: "list", dict: "object"}
ARTICLES = {"number": "a number", "boolean": "a boolean", "text": "text", "list": "a list", "object": "an object"}


def meta_type(value: object) -> str | None:
    """The JSON type name of a metadata value (None for ``null``: no value)."""
    return None if value is None else type_name(type(value))


def type_name(kind: type) -> str:
    """The JSON type name of the metadata values of a Python type."""
    return META_TYPES.get(kind, kind.__name__)


def dominant_type(counts: Mapping[str, int]) -> str | None:
    """The type most values have (ties: the first name in alphabetical order); None without values."""
    return min(counts, key=lambda name: (-counts[name], name)) if counts else None


def _types(meta: Mapping[str, Any]) -> dict[str, str]:
    return {field: name for field, value in meta.items() if (name := meta_type(value)) is not None}


class FieldTypes:
    """Metadata field types of a set of cases, kept up to date as cases are written and deleted."""

    def __init__(self, metas: Iterable[tuple[str, Mapping[str, Any]]] = ()) -> None:
        self._cases: dict[str, dict[str, str]] = {}
        self._counts: dict[str, Counter[str]] = {}
        for case_id, meta in metas:
            self.set(case_id, meta)

    def type_of(self, field: str, except_case: str | None = None) -> tuple[str | None, int]:
        """The field's type and how many cases hold it, leaving ``except_case`` (one being replaced) out."""
        counts = Counter(self._counts.get(field, {}))
        mine = self._cases.get(except_case or "", {}).get(field)
        if mine is not None:
            counts[mine] -= 1
        counts = +counts  # drops the types no case holds any longer
        name = dominant_type(counts)
        return name, counts[name] if name else 0

    def check(self, case_id: str, meta: Mapping[str, Any]) -> None:
        """Raise :class:`InvalidCase` if a value's type differs from its field's type in the other cases."""
        for field, given in _types(meta).items():
            expected, holders = self.type_of(field, except_case=case_id)
            if expected is not None and given != expected:
                value = repr(meta[field])
                shown = value if len(value) <= 40 else value[:39] + "…"
                expected_text = ARTICLES.get(expected, expected)
                raise InvalidCase(
                    f"case {case_id!r}: metadata field {field!r} is {ARTICLES.get(given, given)} ({shown}), but "
                    f"{expected_text} in the archive's {holders} other case(s) that hold it; "
                    f"give {expected_text}, or use another field name"
                )

    def set(self, case_id: str, meta: Mapping[str, Any]) -> None:
        """Record a case's metadata (replacing what was recorded for it)."""
        self.remove(case_id)
        self._cases[case_id] = _types(meta)
        for field, name in self._cases[case_id].items():
            self._counts.setdefault(field, Counter())[name] += 1

    def remove(self, case_id: str) -> None:
        """Forget a case (deleted, or about to be replaced)."""
        for field, name in self._cases.pop(case_id, {}).items():
            self._counts[field][name] -= 1
