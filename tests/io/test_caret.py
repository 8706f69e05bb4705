"""CaretExtension label tables (TotalSegmentator's NIfTI header extension): writing, reading, hostile XML."""

from __future__ import annotations

import re

import pytest
from helpers import totalsegmentator_labels, totalsegmentator_xml
from hypothesis import given
from hypothesis import strategies as st

from medmask_store.errors import InvalidCase, NiftiError
from medmask_store.io.caret import MAX_ELEMENTS, holds_xml, label_table_xml, parse_label_table
from medmask_store.limits import MAX_LABEL_TABLE_BYTES

WHERE = "seg.nii.gz: label table in its header"


def caret_document(labels: str) -> bytes:
    """A CaretExtension document around the raw ``labels`` elements."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?><CaretExtension><VolumeInformation Index="0"><LabelTable>\n'
        + labels + "</LabelTable></VolumeInformation></CaretExtension>"
    ).encode()


def label(key: object, name: str, rgb: tuple[float, float, float] = (1.0, 0.0, 0.0)) -> str:
    return f'<Label Key="{key}" Red="{rgb[0]}" Green="{rgb[1]}" Blue="{rgb[2]}" Alpha="1"><![CDATA[{name}]]></Label>\n'


# -- reading TotalSegmentator's tables ---------------------------------------------------------------
def test_totalsegmentator_table_gives_names_values_and_colours() -> None:
    content = totalsegmentator_xml({1: "spleen", 5: "liver", 117: "costal_cartilages"}, {5: (128, 0, 0)})
    values, colors = parse_label_table(content, WHERE)
    assert values == {"spleen": 1, "liver": 5, "costal_cartilages": 117}
    assert colors == {"spleen": (0, 255, 0, 255), "liver": (128, 0, 0, 255), "costal_cartilages": (0, 128, 255, 255)}


def test_background_key_0_names_no_organ_and_colours_are_optional() -> None:
    content = caret_document('<Label Key="0"><![CDATA[background]]></Label><Label Key="3"> kidney </Label>')
    assert parse_label_table(content, WHERE) == ({"kidney": 3}, {})


def test_alpha_defaults_to_opaque() -> None:
    content = caret_document('<Label Key="2" Red="0" Green="1" Blue="0.2">x</Label>')
    assert parse_label_table(content, WHERE) == ({"x": 2}, {"x": (0, 255, 51, 255)})


@pytest.mark.parametrize("content", [b"", b"\x00\x01binary private data", b"liver"])
def test_private_data_is_not_xml(content: bytes) -> None:
    assert not holds_xml(content)


@pytest.mark.parametrize("content", [b"<other><LabelTable/></other>", b" \n<CaretExtension><Date/></CaretExtension>"])
def test_other_xml_holds_no_table(content: bytes) -> None:
    assert holds_xml(content) and parse_label_table(content, WHERE) is None


# -- writing ----------------------------------------------------------------------------------------
organ_names = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\ufffe\uffff"), min_size=1, max_size=12
).map(str.strip).filter(lambda name: name not in ("", ".", "..")) | st.sampled_from(
    ["a]]>b", "]]>", "<liver>", "&amp;", "<!DOCTYPE", "<!ENTITY x"]
)
colors = st.tuples(*[st.integers(0, 255)] * 4)


@given(st.dictionaries(organ_names, colors, min_size=1, max_size=20), st.data())
def test_written_table_reads_back_exactly(table_colors: dict, data: st.DataObject) -> None:
    unique_values = st.lists(st.integers(1, 65535), min_size=len(table_colors), max_size=len(table_colors), unique=True)
    values = dict(zip(table_colors, data.draw(unique_values)))
    content = label_table_xml(values, table_colors)
    assert parse_label_table(content, WHERE) == (values, table_colors)
    if len(values) > 1:  # TotalSegmentator's reader needs two: xmltodict gives a single Label as a dict, not a list
        assert totalsegmentator_labels(content) == {value: name for name, value in values.items()}


def test_written_table_is_totalsegmentator_s_layout() -> None:
    content = label_table_xml({"liver": 5, "spleen": 1}, {"liver": (255, 0, 0, 255), "spleen": (0, 255, 0, 128)})
    assert totalsegmentator_labels(content) == {1: "spleen", 5: "liver"}  # in value order
    assert b'<Label Key="5" Red="1.0" Green="0.0" Blue="0.0" Alpha="1.0"><![CDATA[liver]]></Label>' in content
    assert b'Alpha="0.5019607843137255"' in content


def test_name_xml_cannot_carry_is_refused_on_writing() -> None:
    with pytest.raises(InvalidCase, match="U\\+FFFE"):
        label_table_xml({"liver\ufffe": 1}, {"liver\ufffe": (1, 2, 3, 4)})


# -- hostile tables -----------------------------------------------------------------------------------
BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i else "&lol;" * 10}">' for i in range(10))
    + "]><CaretExtension><VolumeInformation><LabelTable><Label Key=\"1\">&lol9;</Label></LabelTable>"
    "</VolumeInformation></CaretExtension>"
).encode()
EXTERNAL_ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE c [<!ENTITY x SYSTEM "file:///etc/passwd">]><CaretExtension><VolumeInformation>'
    b'<LabelTable><Label Key="1">&x;</Label></LabelTable></VolumeInformation></CaretExtension>'
)
HOSTILE_TABLES = {
    "malformed": (caret_document(label(1, "liver"))[:-40], "not well-formed XML"),
    "unclosed_cdata": (caret_document('<Label Key="1"><![CDATA[a]]>b]]></Label>'), "not well-formed XML"),
    "not_utf8": (caret_document(label(1, "f\u00edgado")).replace("\u00ed".encode(), b"\xed"), "not UTF-8"),
    "billion_laughs": (BILLION_LAUGHS, "document type declaration"),
    "external_entity": (EXTERNAL_ENTITY, "document type declaration"),
    "fractional_key": (caret_document(label("5.0", "liver")), "Key '5.0'"),
    "negative_key": (caret_document(label(-1, "liver")), "Key '-1'"),
    "word_key": (caret_document(label("five", "liver")), "Key 'five'"),
    "key_too_large": (caret_document(label(65536, "liver")), "Key '65536'"),
    "unicode_digit_key": (caret_document(label("\u0665", "liver")), "is not a label value"),
    "missing_key": (caret_document("<Label>liver</Label>"), "Key None"),
    "duplicate_name": (caret_document(label(1, "liver") + label(2, "liver")), "organ 'liver' also has Key 1"),
    "duplicate_key": (caret_document(label(1, "liver") + label(1, "spleen")), "Key 1 also names 'liver'"),
    "path_name": (caret_document(label(1, "../../evil")), "label 1 (Key 1): invalid organ name"),
    "empty_name": (caret_document('<Label Key="3"></Label>'), "invalid organ name ''"),
    "colour_above_1": (caret_document(label(1, "liver", (2.0, 0.0, 0.0))), "colour Red='2.0'"),
    "colour_nan": (caret_document(label(1, "liver", (float("nan"), 0.0, 0.0))), "colour Red='nan'"),
    "colour_word": (caret_document(label(1, "liver", ("red", 0.0, 0.0))), "colour Red='red'"),
    "colour_partial": (caret_document('<Label Key="1" Red="1">liver</Label>'), "need Red, Green, Blue"),
    "too_many_elements": (caret_document("<x/>" * (MAX_ELEMENTS + 1)), "XML elements"),
    "too_many_bytes": (caret_document(label(1, "liver") + " " * MAX_LABEL_TABLE_BYTES), "MAX_LABEL_TABLE_BYTES"),
}


@pytest.mark.parametrize("name", HOSTILE_TABLES)
def test_hostile_table_is_a_one_line_niftierror(name: str) -> None:
    content, reason = HOSTILE_TABLES[name]
    with pytest.raises(NiftiError) as caught:
        parse_label_table(content, WHERE)
    message = str(caught.value)
    assert message.startswith(WHERE) and reason in message and "\n" not in message, message


def test_entity_declarations_are_refused_even_if_expat_would_expand_them() -> None:
    small = b'<!DOCTYPE c [<!ENTITY n "liver">]><CaretExtension><VolumeInformation><LabelTable><Label Key="1">&n;' \
        b"</Label></LabelTable></VolumeInformation></CaretExtension>"
    with pytest.raises(NiftiError, match=re.escape("document type declaration")):
        parse_label_table(small, WHERE)
