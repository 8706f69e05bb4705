"""Label tables: organ name -> label value, and the organs' colours, from a file or a built-in name.

:func:`load_labels` reads

- a JSON file ``{"liver": 5, ...}``;
- a text file of organ names in value order: line *n* names the organ of value *n*.
  Names lose surrounding spaces; a blank line, or one starting with ``#``, names
  no organ and leaves its value unused, so line numbers stay values;
- a NIfTI file (``.nii`` / ``.nii.gz``) carrying a label table in its header, as
  TotalSegmentator writes one (:mod:`medmask_store.io.caret`; names, values, colours);
- a built-in name: ``"totalsegmentator"`` (TotalSegmentator's 117 ``total`` classes, liver = 5).

Files are untrusted: at most ``MAX_LABEL_TABLE_BYTES``, names and values checked
as ``add_case`` checks them; a fault raises :class:`NiftiError` naming the file and
the line or entry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmask_store.errors import InvalidCase, NiftiError
from medmask_store.io.caret import CARET_CODE, holds_xml, parse_label_table
from medmask_store.io.nifti_header import NIFTI_SUFFIXES, input_errors, read_extensions
from medmask_store.io.totalsegmentator import TOTAL_LABELS
from medmask_store.limits import MAX_LABEL_TABLE_BYTES
from medmask_store.model.palette import Color
from medmask_store.model.validation import MAX_LABEL_VALUE, validate_colors, validate_mapping, validate_organ_name

BUILTIN_TABLES: dict[str, Mapping[str, int]] = {"totalsegmentator": TOTAL_LABELS}


@dataclass(frozen=True)
class LabelTable:
    """Organ name -> label value (1..65535), and name -> RGBA colour (0..255) for the organs that have one."""

    values: dict[str, int]
    colors: dict[str, Color] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", validate_mapping(self.values))
        object.__setattr__(self, "colors", validate_colors(self.colors, self.values))

    def values_for(self, names: Iterable[str]) -> dict[str, int]:
        """The value of each name, in value order; names the table lacks take the next free values above
        its largest, in name order."""
        names = list(names)
        lacking = sorted(set(names) - set(self.values))
        top = max(self.values.values(), default=0)
        values = {name: self.values[name] for name in names if name in self.values}
        values.update({name: top + n for n, name in enumerate(lacking, 1)})
        return dict(sorted(values.items(), key=lambda item: item[1]))


LabelSource = LabelTable | Mapping[str, int] | str | Path


def load_labels(source: LabelSource) -> LabelTable:
    """A label table from a table, a mapping ``{name: value}``, a JSON / text / NIfTI file or a built-in name.

    A ``str`` naming a built-in table means that table (write ``./totalsegmentator``
    for a file of that name); otherwise ``.json`` files are JSON, ``.nii`` and
    ``.nii.gz`` files NIfTI, any other file text.
    """
    if isinstance(source, LabelTable):
        return source
    if isinstance(source, Mapping):
        return LabelTable(dict(source))
    if isinstance(source, str) and source in BUILTIN_TABLES:
        return LabelTable(dict(BUILTIN_TABLES[source]))
    path = Path(source)
    if not path.is_file():
        raise NiftiError(
            f"{path}: no such file; a label table is a JSON, text or NIfTI file, or one of: {', '.join(BUILTIN_TABLES)}"
        )
    if path.name.endswith(NIFTI_SUFFIXES):
        table = embedded_label_table(path)
        if table is None:
            raise NiftiError(f"{path}: holds no label table in its header; pass a JSON or text label file instead")
        return table
    text = _read_text(path)
    try:
        return _json_table(text, path) if path.suffix == ".json" else _text_table(text, path)
    except InvalidCase as exc:
        raise NiftiError(f"{path}: {exc}") from exc


def embedded_label_table(path: Path) -> LabelTable | None:
    """The label table in the header of the NIfTI file ``path``, or None.

    As TotalSegmentator reads it: the first XML extension of code 0 (only that one
    is parsed, however many a file holds), a CaretExtension with a LabelTable.
    """
    where = f"{path}: label table in its header"
    xml = next((content for code, content in read_extensions(path) if code == CARET_CODE and holds_xml(content)), None)
    parsed = None if xml is None else parse_label_table(xml, where)
    if parsed is None:
        return None
    values, colors = parsed
    if not values:
        raise NiftiError(f"{where}: names no organ (only the background, Key 0)")
    try:
        return LabelTable(values, colors)
    except InvalidCase as exc:
        raise NiftiError(f"{where}: {exc}") from exc


def _read_text(path: Path) -> str:
    with input_errors(path):
        with open(path, "rb") as stream:
            content = stream.read(MAX_LABEL_TABLE_BYTES + 1)  # the size is checked on what was read, not on a stat
        if len(content) > MAX_LABEL_TABLE_BYTES:
            raise NiftiError(
                f"{path}: label file of more than {MAX_LABEL_TABLE_BYTES:,} bytes "
                "(medmask_store.limits.MAX_LABEL_TABLE_BYTES); a label table is far smaller"
            )
        return content.decode("utf-8")


def _json_table(text: str, path: Path) -> LabelTable:
    with input_errors(path):
        values = json.loads(text, object_pairs_hook=_unique_names)
    if not isinstance(values, dict):
        raise NiftiError(f"{path}: a label map must be a JSON object {{name: value}}, not a {type(values).__name__}")
    if not values:
        raise NiftiError(f"{path}: the label map names no organ")
    return LabelTable(values)


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused if it names an organ twice (``json`` would keep the last value silently)."""
    values: dict[str, Any] = {}
    for name, value in pairs:
        if name in values:
            raise InvalidCase(f"organ {name!r} is given more than once")
        values[name] = value
    return values


def _text_table(text: str, path: Path) -> LabelTable:
    if text.count("\n") > MAX_LABEL_VALUE:  # counted before the lines are split off
        raise NiftiError(f"{path}: more than {MAX_LABEL_VALUE:,} lines; line n names the organ of value n")
    values: dict[str, int] = {}
    for value, line in enumerate(text.split("\n"), 1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        try:
            validate_organ_name(name)
        except InvalidCase as exc:
            raise NiftiError(f"{path}: line {value}: {exc}") from exc
        if name in values:
            raise NiftiError(f"{path}: line {value}: organ {name!r} is already named on line {values[name]}")
        values[name] = value
    if not values:
        raise NiftiError(f"{path}: names no organ (line n names the organ of value n)")
    return LabelTable(values)
