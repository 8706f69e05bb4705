"""Validation of case ids, organ names, label mappings and metadata."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medmask_store.errors import InvalidCase
from medmask_store.model.case_data import CaseData
from medmask_store.model.validation import (
    validate_case_id,
    validate_mapping,
    validate_meta,
    validate_organ_name,
)


@pytest.mark.parametrize(
    "case_id",
    ["", "a/b", "/abs", "a\\b", "..", ".", ".hidden", "x\x00", "x\n", "\x1f", " padded ", " lead", "trail ",
     "\tx", "a" * 201],
    ids=repr,
)
def test_invalid_case_ids(case_id):
    with pytest.raises(InvalidCase, match=r"case id"):
        validate_case_id(case_id)


@pytest.mark.parametrize("case_id", [None, 5, b"s0000", ["s0000"], 1.5], ids=repr)
def test_non_string_case_ids(case_id):
    with pytest.raises(InvalidCase, match=r"case id must be a non-empty string"):
        validate_case_id(case_id)


@pytest.mark.parametrize(
    "case_id", ["s0000", "case-1_A", "a", "with space", "dots.in.middle", "ünïcode", "x" * 200, "0"], ids=repr
)
def test_valid_case_ids(case_id):
    assert validate_case_id(case_id) == case_id


def test_case_id_length_counts_bytes():
    assert validate_case_id("é" * 100) == "é" * 100  # 200 bytes
    with pytest.raises(InvalidCase, match=r"longer than 200 bytes"):
        validate_case_id("é" * 101)


@pytest.mark.parametrize("name", ["", "a/b", "a\\b", "\x01", "x\x00y", ".", "..", None, 3], ids=repr)
def test_invalid_organ_names(name):
    with pytest.raises(InvalidCase, match=r"invalid organ name"):
        validate_organ_name(name)


@pytest.mark.parametrize("name", ["liver", "rib_right_12", "vertebrae L1", ".hidden_is_ok_for_organs"])
def test_valid_organ_names(name):
    assert validate_organ_name(name) == name


def test_validate_mapping_returns_plain_int_dict():
    result = validate_mapping({"a": np.int64(3), "b": 65535, "c": 1})
    assert result == {"a": 3, "b": 65535, "c": 1}
    assert all(type(v) is int for v in result.values())
    assert list(result) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "mapping, pattern",
    [
        ({"a": 0}, r"label value 0 of organ 'a' is outside 1\.\.65535"),
        ({"a": 70000}, r"label value 70000 of organ 'a' is outside 1\.\.65535"),
        ({"a": 1, "b": 1}, r"organs 'a' and 'b' share label value 1"),
        ({"a": 2.0}, r"must be an integer"),
        ({"a": False}, r"must be an integer"),
        ({"a/b": 1}, r"invalid organ name"),
    ],
)
def test_invalid_mappings(mapping, pattern):
    validate_mapping({"a": 1, "b": 2})  # names seen before take the fast path, which must refuse the same values
    with pytest.raises(InvalidCase, match=pattern):
        validate_mapping(mapping)


def test_meta_none_is_empty():
    assert validate_meta(None) == {}


def test_meta_is_json_copy():
    meta = {"age": 61, "scanner": "X", "nested": {"list": (1, 2.5, None, True)}}
    result = validate_meta(meta)
    assert result == {"age": 61, "scanner": "X", "nested": {"list": [1, 2.5, None, True]}}
    result["nested"]["list"].append(3)
    assert meta["nested"]["list"] == (1, 2.5, None, True)


@pytest.mark.parametrize(
    "meta",
    [
        {"x": float("nan")},
        {"x": math.inf},
        {"nested": {"deep": [1, float("-inf")]}},
        {"x": object()},
        {"x": {1, 2}},
        {"x": np.zeros(3)},
        {"x": b"bytes"},
    ],
    ids=["nan", "inf", "nested-inf", "object", "set", "ndarray", "bytes"],
)
def test_meta_must_be_json(meta):
    with pytest.raises(InvalidCase, match=r"case metadata is not JSON-serializable"):
        validate_meta(meta)


@pytest.mark.parametrize("meta", [[("a", 1)], "text", 5], ids=["list", "str", "int"])
def test_meta_must_be_a_mapping(meta):
    with pytest.raises(InvalidCase, match=r"case metadata must be a mapping"):
        validate_meta(meta)


def test_case_data_validates_meta():
    mask = np.ones((2, 2, 2), bool)
    with pytest.raises(InvalidCase, match=r"not JSON-serializable"):
        CaseData.from_masks({"a": mask}, meta={"x": float("nan")})
    with pytest.raises(InvalidCase, match=r"not JSON-serializable"):
        CaseData.from_labels(mask.astype(np.uint8), {"a": 1}, meta={"x": object()})
