"""Label tables as TotalSegmentator keeps them in a NIfTI header extension (code 0): CaretExtension XML.

::

    <?xml version="1.0" encoding="UTF-8"?> <CaretExtension> <VolumeInformation Index="0"> <LabelTable>
      <Label Key="5" Red="1.0" Green="0.0" Blue="0.0" Alpha="1"><![CDATA[liver]]></Label> ...
    </LabelTable> <VolumeType><![CDATA[Label]]></VolumeType> </VolumeInformation> </CaretExtension>

Key 0 is the background and names no organ; colour channels are fractions of 255.
The XML comes from untrusted files: it is parsed only if it is at most
``MAX_LABEL_TABLE_BYTES`` of UTF-8, by defusedxml's expat parser, which refuses
a document type declaration (so no entity, internal or external, is declared),
and is stopped at the element beyond ``MAX_ELEMENTS``, so memory stays bounded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

from defusedxml import DTDForbidden
from defusedxml.ElementTree import DefusedXMLParser

from medmask_store.errors import InvalidCase, NiftiError
from medmask_store.limits import MAX_LABEL_TABLE_BYTES
from medmask_store.model.palette import Color
from medmask_store.model.validation import MAX_LABEL_VALUE, validate_organ_name

#: The NIfTI extension code TotalSegmentator writes its label table with ("unknown/private").
CARET_CODE = 0
#: Elements of one table: a Label per value, with room for the few other elements.
MAX_ELEMENTS = 2 * (MAX_LABEL_VALUE + 1)
CHANNELS = ("Red", "Green", "Blue", "Alpha")
KEY = re.compile(r"[0-9]{1,5}")
#: Characters allowed in organ names that XML 1.0 cannot carry.
NOT_XML = re.compile("[\ufffe\uffff]")
XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n<CaretExtension>\n<VolumeInformation Index="0">\n<LabelTable>\n'
XML_TAIL = "</LabelTable>\n<VolumeType><![CDATA[Label]]></VolumeType>\n</VolumeInformation>\n</CaretExtension>\n"


def holds_xml(content: bytes) -> bool:
    """Whether an extension's content is XML (code 0 is also used for other programs' private data)."""
    return content.lstrip().startswith(b"<")


def parse_label_table(content: bytes, where: str) -> tuple[dict[str, int], dict[str, Color]] | None:
    """Organ values and colours of the CaretExtension label table in the XML ``content``; None if it is other XML.

    A damaged or hostile table raises :class:`NiftiError` naming ``where``.
    """
    if len(content) > MAX_LABEL_TABLE_BYTES:
        raise NiftiError(
            f"{where}: {len(content):,} bytes of XML, above the limit of {MAX_LABEL_TABLE_BYTES:,} "
            "(medmask_store.limits.MAX_LABEL_TABLE_BYTES); pass its label table as a file"
        )
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NiftiError(f"{where}: not UTF-8 text: {exc}") from exc
    root = _parse(text, where)
    table = root.find("VolumeInformation/LabelTable") if root.tag == "CaretExtension" else None
    if table is None:
        return None
    values: dict[str, int] = {}
    colors: dict[str, Color] = {}
    owners: dict[int, str] = {}
    for number, label in enumerate(table.findall("Label"), 1):
        what = f"{where}: label {number}"
        key = _key(label.get("Key"), what)
        if key == 0:
            continue
        name = (label.text or "").strip()
        try:
            validate_organ_name(name)
        except InvalidCase as exc:
            raise NiftiError(f"{what} (Key {key}): {exc}") from exc
        if name in values or key in owners:
            clash = f"organ {name!r} also has Key {values[name]}" if name in values else f"Key {key} also names {owners[key]!r}"
            raise NiftiError(f"{what} (Key {key}, {name!r}): {clash}; each organ needs one value of its own")
        values[name], owners[key] = key, name
        color = _color(label, what)
        if color is not None:
            colors[name] = color
    return values, colors


def _parse(text: str, where: str) -> Element:
    """The root element of ``text``, refused at the element beyond ``MAX_ELEMENTS`` or at a document type declaration."""
    builder = _BoundedTreeBuilder(where)
    parser = DefusedXMLParser(target=builder, forbid_dtd=True)
    try:
        parser.feed(text)
        return parser.close()  # refuses a document without an element
    except DTDForbidden as exc:
        raise NiftiError(f"{where}: holds a document type declaration; a label table needs none") from exc
    except ParseError as exc:
        raise NiftiError(f"{where}: not well-formed XML: {exc}") from exc


class _BoundedTreeBuilder(TreeBuilder):
    """A tree builder that refuses the element beyond ``MAX_ELEMENTS`` before building it."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.elements = 0

    def start(self, tag: str, attrs: dict[str, str]) -> Element:
        self.elements += 1
        if self.elements > MAX_ELEMENTS:
            raise NiftiError(f"{self.where}: more than {MAX_ELEMENTS:,} XML elements; a label table holds one per label")
        return super().start(tag, attrs)


def _key(text: str | None, what: str) -> int:
    if text is None or not KEY.fullmatch(text.strip()) or int(text) > MAX_LABEL_VALUE:
        raise NiftiError(f"{what}: Key {text!r} is not a label value 0..{MAX_LABEL_VALUE}")
    return int(text)


def _color(label: Element, what: str) -> Color | None:
    """The label's RGBA as 0..255; None without Red, Green and Blue; Alpha defaults to 1."""
    given = [label.get(channel) for channel in CHANNELS]
    if given[:3] == [None] * 3:
        return None
    try:
        fractions = [float(text) for text in (*given[:3], given[3] or "1")]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        fractions = []
    if len(fractions) != 4 or not all(math.isfinite(f) and 0 <= f <= 1 for f in fractions):
        shown = ", ".join(f"{c}={t!r}" for c, t in zip(CHANNELS, given))
        raise NiftiError(f"{what}: colour {shown}: need Red, Green, Blue (and optionally Alpha) as numbers 0..1")
    return (round(fractions[0] * 255), round(fractions[1] * 255), round(fractions[2] * 255), round(fractions[3] * 255))


def label_table_xml(values: Mapping[str, int], colors: Mapping[str, Color]) -> bytes:
    """The CaretExtension XML of organs ``values`` with ``colors`` (one per organ), as TotalSegmentator writes it."""
    for name in values:
        if NOT_XML.search(name):
            raise InvalidCase(f"organ name {name!r} holds U+FFFE or U+FFFF, which XML cannot carry; rename the organ")
    labels = "".join(
        f'<Label Key="{value}" Red="{r / 255}" Green="{g / 255}" Blue="{b / 255}" Alpha="{a / 255}">{_cdata(name)}</Label>\n'
        for name, value in sorted(values.items(), key=lambda item: item[1])
        for r, g, b, a in [colors[name]]
    )
    return (XML_HEAD + labels + XML_TAIL).encode()


def _cdata(text: str) -> str:
    """``text`` as CDATA; a ``]]>`` inside is split across two sections, which readers join."""
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"
