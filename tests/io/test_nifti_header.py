"""Header extensions of untrusted NIfTI files: read within bounds, hostile regions refused naming the file."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import GOOD_MASK, gzipped, header_extension, nifti_with_extensions, run_measuring_peak_rss

from medmask_store.errors import NiftiError
from medmask_store.io.labels import load_labels
from medmask_store.io.nifti import load_multilabel
from medmask_store.io.nifti_header import read_extensions
from medmask_store.limits import MAX_EXTENSION_BYTES, MAX_LABEL_TABLE_BYTES

TABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?><CaretExtension><VolumeInformation Index="0"><LabelTable>'
    b'<Label Key="1" Red="0.0" Green="0.0" Blue="1.0" Alpha="1"><![CDATA[liver]]></Label>'
    b"</LabelTable></VolumeInformation></CaretExtension>"
)


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(gzipped(content) if path.name.endswith(".gz") else content)
    return path


@pytest.fixture(params=[".nii.gz", ".nii"])
def suffix(request: pytest.FixtureRequest) -> str:
    return request.param


# -- valid extension regions --------------------------------------------------------------------
def test_extensions_as_nibabel_writes_them(tmp_path: Path, suffix: str) -> None:
    image = nib.Nifti1Image(GOOD_MASK, np.eye(4))
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment"))
    image.header.extensions.append(nib.nifti1.Nifti1Extension(0, TABLE))
    path = tmp_path / f"seg{suffix}"
    nib.save(image, path)
    assert list(read_extensions(path)) == [(6, b"a comment"), (0, TABLE)]
    assert load_labels(path).values == {"liver": 1}
    assert np.array_equal(load_multilabel(path).organ_mask("liver"), GOOD_MASK.astype(bool))  # voxels after them


@pytest.mark.parametrize("endianness", ["<", ">"])
@pytest.mark.parametrize("header_class", [nib.Nifti1Header, nib.Nifti2Header], ids=["nifti1", "nifti2"])
def test_table_after_other_extensions_in_either_byte_order(tmp_path: Path, suffix: str, header_class, endianness: str) -> None:
    region = header_extension(4, b"<AFNI_attributes/>", endianness) + header_extension(0, b"\x00\x01private", endianness)
    region += header_extension(0, TABLE, endianness) + bytes(12)  # fewer than 16 bytes left: padding
    path = write(tmp_path / f"seg{suffix}", nifti_with_extensions(region, header_class=header_class, endianness=endianness))
    assert [code for code, _ in read_extensions(path)] == [4, 0, 0]  # the table: the first code-0 XML
    case = load_multilabel(path)
    assert case.mapping == {"liver": 1} and case.colors == {"liver": (0, 0, 255, 255)}


def test_extender_flag_unset_means_no_extensions(tmp_path: Path) -> None:
    content = bytearray(nifti_with_extensions(header_extension(0, TABLE)))
    content[348] = 0
    assert list(read_extensions(write(tmp_path / "seg.nii", bytes(content)))) == []


# -- hostile extension regions ----------------------------------------------------------------------
def esize(size: int, content: bytes = b"") -> bytes:
    return struct.pack("<ii", size, 0) + content


HOSTILE_REGIONS = {
    "esize_not_multiple_of_16": (esize(20, bytes(24)), None, "multiples of 16"),
    "esize_8": (esize(8, bytes(8)), None, "declares 8 bytes"),
    "esize_0": (esize(0, bytes(8)), None, "declares 0 bytes"),
    "esize_negative": (esize(-16, bytes(8)), None, "declares -16 bytes"),
    "esize_past_voxels": (esize(64, TABLE[:24]), None, "past the start of the voxels"),
    "esize_huge": (esize(2**31 - 16, bytes(8)), None, "past the start of the voxels"),
    "second_extension_bad": (header_extension(4, b"<AFNI/>") + esize(-2**31, bytes(8)), None, "header extension 2"),
    "vox_offset_inside_header": (header_extension(0, TABLE), 300.0, "vox offset 300 too low"),
    "vox_offset_nan": (header_extension(0, TABLE), float("nan"), "voxels at byte nan"),
    "vox_offset_past_the_file": (header_extension(0, TABLE), 10_000.0, "truncated"),
    "region_above_limit": (header_extension(0, TABLE), float(352 + MAX_EXTENSION_BYTES + 16), "MAX_EXTENSION_BYTES"),
    "malformed_table": (header_extension(0, TABLE[:-30]), None, "label table in its header: not well-formed XML"),
    "table_with_entities": (header_extension(0, b'<!DOCTYPE c [<!ENTITY x "y">]>' + TABLE), None, "document type"),
    "table_key_not_an_integer": (header_extension(0, TABLE.replace(b'Key="1"', b'Key="1e3"')), None, "Key '1e3'"),
    "table_names_an_organ_twice": (
        header_extension(0, TABLE.replace(b"</LabelTable>", b'<Label Key="2">liver</Label></LabelTable>')), None,
        "organ 'liver' also has Key 1",
    ),
    "table_of_background_only": (header_extension(0, TABLE.replace(b'Key="1"', b'Key="0"')), None, "names no organ"),
}


@pytest.mark.parametrize("name", HOSTILE_REGIONS)
def test_hostile_extension_region_is_a_niftierror_naming_the_file(tmp_path: Path, suffix: str, name: str) -> None:
    region, vox_offset, reason = HOSTILE_REGIONS[name]
    path = write(tmp_path / f"{name}{suffix}", nifti_with_extensions(region, vox_offset))
    with pytest.raises(NiftiError) as caught:
        load_labels(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message, message


@pytest.mark.parametrize("name", ["esize_negative", "esize_huge", "malformed_table", "table_names_an_organ_twice"])
def test_multilabel_import_refuses_a_hostile_table(tmp_path: Path, name: str) -> None:
    region, vox_offset, reason = HOSTILE_REGIONS[name]
    path = write(tmp_path / f"{name}.nii.gz", nifti_with_extensions(region, vox_offset))
    with pytest.raises(NiftiError, match=re.escape(str(path)) + ".*" + re.escape(reason)):
        load_multilabel(path)


# -- bounded memory: a fresh process -------------------------------------------------------------------
PEAK_RSS_LIMIT_MB = 256
LOAD_LABELS = """
import sys
from medmask_store.errors import NiftiError
from medmask_store.io.labels import load_labels
try:
    load_labels(sys.argv[1])
except NiftiError as exc:
    print("NiftiError", exc)
"""


def attribute_bomb() -> bytes:
    """One element with ~400,000 attributes: just below the size limit, ~20x its size once parsed."""
    attributes = b" ".join(b"a%d=''" % i for i in range(MAX_LABEL_TABLE_BYTES // 12))
    return b"<CaretExtension " + attributes + b"/>"


BOMBS = {
    # vox_offset claims 2 GB of extensions in a 70-byte file: refused before anything is read.
    "claims_2_gb": lambda: nifti_with_extensions(b"", vox_offset=2.0**31),
    "attribute_bomb": lambda: nifti_with_extensions(header_extension(0, attribute_bomb())),
    "deep_nesting": lambda: nifti_with_extensions(header_extension(0, b"<a>" * (MAX_LABEL_TABLE_BYTES // 3 - 8))),
    # 16 MiB of extensions, a million tiny ones: checked one at a time, none parsed.
    "many_extensions": lambda: nifti_with_extensions(header_extension(4, b"<x/>") * (MAX_EXTENSION_BYTES // 16)),
}


@pytest.mark.parametrize("bomb", BOMBS)
def test_hostile_extensions_cost_bounded_memory(tmp_path: Path, bomb: str) -> None:
    path = write(tmp_path / f"{bomb}.nii.gz", BOMBS[bomb]())
    output, rss_mb = run_measuring_peak_rss(LOAD_LABELS, path)
    assert output.startswith("NiftiError") and path.name in output and "\n" not in output, output
    assert rss_mb < PEAK_RSS_LIMIT_MB, f"{bomb}: peak RSS {rss_mb} MiB"
