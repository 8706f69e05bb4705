"""Query expressions (``evaluate_query``): results on a small in-memory index, safety, and errors.

The index is built with ``ArchiveIndex.from_cases`` from the ``CaseInfo`` of four stored cases:

- ``c0``: 8 organs (aorta and inferior_vena_cava non-empty), meta age 70, sex F, site A
- ``c1``: 6 organs, no aorta / inferior_vena_cava in its mapping, meta age 40, sex M
- ``c2``: 7 organs + inferior_vena_cava empty, meta age 65, sex F, smoker true
- ``c3``: 6 organs + aorta and inferior_vena_cava empty, meta age 80, sex M, site B
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from pathlib import Path

import pytest
from helpers import run_measuring_peak_rss

from medmask_store import MaskArchive, MaskStoreError
from medmask_store.errors import InvalidQuery, QueryWarning
from medmask_store.limits import MAX_QUERY_CHARS, MAX_QUERY_DEPTH, MAX_QUERY_NODES
from medmask_store.phantom import make_phantom
from medmask_store.query import ORGAN_FIELDS, ArchiveIndex, evaluate_query
from medmask_store.query.evaluation import Evaluation

CASES = {
    "c0": (dict(n_organs=8, n_empty=0, seed=10), {"age": 70, "sex": "F", "site": "A"}),
    "c1": (dict(n_organs=6, n_empty=0, seed=11), {"age": 40, "sex": "M"}),
    "c2": (dict(n_organs=7, n_empty=1, seed=12), {"age": 65, "sex": "F", "smoker": True}),
    "c3": (dict(n_organs=6, n_empty=2, seed=13), {"age": 80, "sex": "M", "site": "B"}),
}


@pytest.fixture(scope="module")
def infos(tmp_path_factory):
    """CaseInfo of each stored case (statistics as the archive computed them at write time)."""
    path = tmp_path_factory.mktemp("expr") / "small.h5"
    with MaskArchive(path, "w") as archive, archive.batch():
        for case_id, (kwargs, meta) in CASES.items():
            masks, space = make_phantom((16, 16, 16), **kwargs)
            archive.add_case(case_id, masks, space=space, meta=meta)
    with MaskArchive(path) as archive:
        result = {case_id: archive[case_id].info for case_id in archive.case_ids()}
    # the premises the tests below rely on
    assert "aorta" in result["c0"].mapping and result["c0"].stats["aorta"].voxels > 0
    assert "aorta" not in result["c1"].mapping and "inferior_vena_cava" not in result["c1"].mapping
    assert result["c2"].stats["aorta"].voxels > 0 and result["c2"].stats["inferior_vena_cava"].voxels == 0
    assert result["c3"].stats["aorta"].voxels == 0
    return result


@pytest.fixture(scope="module")
def index(infos):
    return ArchiveIndex.from_cases((info, f"t-{case_id}") for case_id, info in infos.items())


def stat(info, organ: str, field: str) -> float:
    """Brute-force field value; NaN when the organ is not in the case's mapping or the field undefined."""
    if organ not in info.mapping:
        return math.nan
    s = info.stats[organ]
    if field == "value":
        return info.mapping[organ]
    if field in ("voxels", "volume_ml", "touches_border"):
        return getattr(s, field)
    if s.bbox is None:
        return math.nan
    axis = "ijk"
    if field.startswith("bbox_"):
        return s.bbox[axis.index(field[5])][int(field[6])]
    if field.endswith("_mm"):
        return (s.centroid_lps_mm if "_lps_" in field else s.centroid_ras_mm)["xyz".index(field[-4])]
    return s.centroid_voxel[axis.index(field[-1])]


def where(infos, predicate) -> list[str]:
    return sorted(c for c, info in infos.items() if predicate(info))


# -- results -------------------------------------------------------------------------------


def test_metadata_comparisons(index):
    assert evaluate_query("age >= 65", index) == ["c0", "c2", "c3"]
    assert evaluate_query('sex == "F"', index) == ["c0", "c2"]
    assert evaluate_query("sex == 'M' and age > 50", index) == ["c3"]
    assert evaluate_query("age / 10 >= 6.5 or sex == 'M'", index) == ["c0", "c1", "c2", "c3"]
    assert evaluate_query("age % 20 == 0", index) == ["c1", "c3"]
    assert evaluate_query("-age < -66", index) == ["c0", "c3"]
    assert evaluate_query("60 < age < 75", index) == ["c0", "c2"]


def test_missing_metadata_field_never_matches_a_comparison(index):
    assert evaluate_query("site == 'A'", index) == ["c0"]
    assert evaluate_query("site == 'A' or site == 'B'", index) == ["c0", "c3"]
    # documented: the case without the field has NaN there, so the comparison is false and `not` is true
    assert evaluate_query("not (site == 'A')", index) == ["c1", "c2", "c3"]
    assert evaluate_query("smoker == True", index) == ["c2"]


def test_organ_comparisons_follow_the_statistics(infos, index):
    assert evaluate_query("liver.voxels > 0", index) == ["c0", "c1", "c2", "c3"]
    assert evaluate_query("aorta.voxels > 0", index) == ["c0", "c2"]
    assert evaluate_query("aorta.voxels == 0", index) == ["c3"]  # empty in c3, missing in c1
    threshold = sorted(info.stats["liver"].voxels for info in infos.values())[1]
    assert evaluate_query(f"liver.voxels > {threshold}", index) == where(
        infos, lambda i: i.stats["liver"].voxels > threshold
    )
    assert evaluate_query("liver.voxels + spleen.voxels > 2 * stomach.voxels", index) == where(
        infos, lambda i: i.stats["liver"].voxels + i.stats["spleen"].voxels > 2 * i.stats["stomach"].voxels
    )


def test_missing_organ_never_matches_a_comparison_and_not_inverts_it(infos, index):
    assert evaluate_query("inferior_vena_cava.voxels >= 0", index) == ["c0", "c2", "c3"]
    assert evaluate_query("aorta.bbox_i0 >= 0", index) == ["c0", "c2"]  # empty aorta: no bbox (NaN)
    assert evaluate_query("aorta.bbox_i0 < 0", index) == []
    # README: `not (x.voxels > 0)` is true for a case without the organ
    assert evaluate_query("not (aorta.voxels > 0)", index) == ["c1", "c3"]
    assert evaluate_query("not (aorta.voxels > 0) and age < 50", index) == ["c1"]


@pytest.mark.parametrize("field", ORGAN_FIELDS)
def test_every_documented_field_is_queryable(infos, index, field):
    value = stat(infos["c0"], "liver", field)
    assert not (isinstance(value, float) and math.isnan(value))
    literal = repr(bool(value)) if isinstance(value, bool) else repr(float(value))
    got = evaluate_query(f"liver.{field} == {literal}", index)
    assert got == where(infos, lambda i: stat(i, "liver", field) == value)
    assert "c0" in got


def test_bare_boolean_field_of_an_organ_every_case_has(infos, index):
    expected = where(infos, lambda i: i.stats["spleen"].touches_border)
    assert evaluate_query("spleen.touches_border", index) == expected
    assert evaluate_query("not spleen.touches_border", index) == sorted(set(infos) - set(expected))


def test_result_is_sorted_case_ids(infos):
    # ids given in reverse order still come back sorted
    reverse = ArchiveIndex.from_cases((info, "") for _, info in sorted(infos.items(), reverse=True))
    assert evaluate_query("age > 0", reverse) == ["c0", "c1", "c2", "c3"]


def test_empty_index_knows_no_organ_or_field():
    with pytest.raises(InvalidQuery, match="no case has an organ 'liver'"):
        evaluate_query("liver.voxels > 0", ArchiveIndex.from_cases([]))
    with pytest.raises(InvalidQuery, match="unknown metadata field 'age'"):
        evaluate_query("age > 0", ArchiveIndex.from_cases([]))


# -- documented NaN semantics that the implementation does not follow ------------------------


def test_not_equal_on_missing_organ_is_false(index):
    assert evaluate_query("aorta.voxels != 0", index) == ["c0", "c2"]  # returns ['c0', 'c1', 'c2']


def test_not_equal_on_missing_metadata_is_false(index):
    assert evaluate_query("site != 'A'", index) == ["c3"]  # returns ['c1', 'c2', 'c3']


def test_bare_touches_border_of_organ_missing_in_some_cases(infos, index):
    expected = where(infos, lambda i: "aorta" in i.mapping and i.stats["aorta"].touches_border)
    assert evaluate_query("aorta.touches_border", index) == expected


def test_not_touches_border_of_organ_missing_in_some_cases(infos, index):
    present = where(infos, lambda i: "aorta" in i.mapping and not i.stats["aorta"].touches_border)
    assert set(present) <= set(evaluate_query("not aorta.touches_border", index))


# -- safety: refused before anything is evaluated ----------------------------------------------


@pytest.fixture
def no_eval(monkeypatch):
    """Fail the test if a query is evaluated (``pytest.fail`` escapes ``except Exception``)."""

    def refuse(self, tree):
        pytest.fail(f"the query {ast.unparse(tree)!r} was evaluated")

    monkeypatch.setattr(Evaluation, "matches", refuse)


REFUSED = [
    ("__import__('os').system('true')", r"Call is not allowed"),
    ("len(sex) > 1", r"Call is not allowed"),
    ("liver.voxels.real > 1", r"only organ\.field attributes"),
    ("liver.voxels.__class__ == 1", r"only organ\.field attributes"),
    ("liver.__class__ == 1", r"unknown organ field '__class__'"),
    ("age[0] > 1", r"Subscript is not allowed"),
    ("liver.voxels[0] > 1", r"Subscript is not allowed"),
    ("(lambda: 1)() == 1", r"(Call|Lambda) is not allowed"),
    ("[x for x in age] == 1", r"ListComp is not allowed"),
    ("{x for x in age} == 1", r"SetComp is not allowed"),
    ("sum(x for x in age) > 1", r"(Call|GeneratorExp) is not allowed"),
    ("(x := 5) > 1", r"NamedExpr is not allowed"),
    ("f'{age}' == '70'", r"JoinedStr is not allowed"),
    ("age > @limit", r"cannot parse"),
    ("__builtins__ == 1", r"unknown metadata field '__builtins__'"),
    ("__class__ > 1", r"unknown metadata field '__class__'"),
    ("age if age else 1", r"IfExp is not allowed"),
    ("age in [70]", r"(In|List) is not allowed"),
    ("age is None", r"(Is is not allowed|literal None)"),
    ("age ** 2 > 1", r"Pow is not allowed"),
    ("~age > 1", r"Invert is not allowed"),
    ("age @ age > 1", r"MatMult is not allowed"),
    ("age << 1 > 1", r"LShift is not allowed"),
    ("sex == b'F'", r"literal b'F' is not allowed"),
    ("age == ...", r"literal Ellipsis is not allowed"),
    ("age == (1, 2)", r"Tuple is not allowed"),
    ("age == {'a': 1}", r"Dict is not allowed"),
    ("`age` > 1", r"cannot parse"),
    ("age = 1", r"cannot parse"),
    ("age > 1; import os", r"cannot parse"),
]


@pytest.mark.parametrize(("expression", "message"), REFUSED, ids=[e for e, _ in REFUSED])
def test_refused_constructs(index, no_eval, expression, message):
    with pytest.raises(InvalidQuery, match=message) as info:
        evaluate_query(expression, index)
    assert isinstance(info.value, ValueError) and isinstance(info.value, MaskStoreError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "template",
    [
        "__import__('pathlib').Path({p!r}).touch() or age > 0",
        "open({p!r}, 'w') == 1",
        "[open({p!r}, 'w') for _ in [1]] == 1",
        "(lambda: open({p!r}, 'w'))() == 1",
        "f\"{{open({p!r}, 'w')}}\" == ''",
        "age > 0 and __import__('os').system('touch ' + {p!r}) == 0",
        "(f := open({p!r}, 'w')) == 1",
        "liver.voxels.__class__.__init__.__globals__['os'].system('touch ' + {p!r}) == 0",
    ],
)
def test_refused_queries_execute_nothing(index, tmp_path: Path, template):
    sentinel = tmp_path / "pwned"
    with pytest.raises(InvalidQuery):
        evaluate_query(template.format(p=str(sentinel)), index)
    assert not sentinel.exists()


def test_string_literal_with_code_is_only_a_string(index, tmp_path: Path):
    sentinel = tmp_path / "pwned"
    code = f"__import__('pathlib').Path({str(sentinel)!r}).touch()"
    assert evaluate_query(f"sex == {code!r}", index) == []
    assert evaluate_query(f"sex == {code!r} or age < 50", index) == ["c1"]
    assert not sentinel.exists()


# -- names and messages ----------------------------------------------------------------------


def test_unknown_organ_suggests_close_name(index, no_eval):
    with pytest.raises(InvalidQuery, match=r"no case has an organ 'livr'.*did you mean liver") as info:
        evaluate_query("livr.voxels > 1", index)
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidQuery, match=r"'kidney_lft'.*kidney_left"):
        evaluate_query("kidney_lft.voxels > 1", index)
    with pytest.raises(InvalidQuery, match=r"no case has an organ 'prostate'"):
        evaluate_query("prostate.voxels > 0", index)


def test_unknown_field_lists_fields(index, no_eval):
    with pytest.raises(InvalidQuery, match=r"unknown organ field 'voxel'.*did you mean voxels") as info:
        evaluate_query("liver.voxel > 1", index)
    listed = str(info.value).split("fields:", 1)[1]
    assert [f.strip() for f in listed.split(",")] == list(ORGAN_FIELDS)
    with pytest.raises(InvalidQuery, match=r"unknown organ field 'volume'.*volume_ml"):
        evaluate_query("liver.volume > 1", index)


def test_unknown_metadata_field(index, no_eval):
    with pytest.raises(InvalidQuery, match=r"unknown metadata field 'agee'.*did you mean age"):
        evaluate_query("agee >= 60", index)
    with pytest.raises(InvalidQuery, match=r"unknown metadata field 'weight'"):
        evaluate_query("weight > 60", index)


def test_bare_organ_name_hints_at_organ_field(index, no_eval):
    with pytest.raises(InvalidQuery, match=r"unknown metadata field 'liver'.*organ\.field, e\.g\. liver\.voxels"):
        evaluate_query("liver > 5", index)


@pytest.mark.parametrize("expression", ["", "   ", "\n", "age >", "and", "(age > 1"])
def test_unparsable(index, no_eval, expression):
    with pytest.raises(InvalidQuery, match="cannot parse query"):
        evaluate_query(expression, index)


@pytest.mark.parametrize("expression", ["liver.voxels + 1", "age", "age * 2", "1", "True"])
def test_non_boolean_result(index, expression):
    with pytest.raises(InvalidQuery, match="does not give true/false per case"):
        evaluate_query(expression, index)


@pytest.mark.parametrize("expression", ["sex > 5", "liver.voxels > 'x'", "'x' <= aorta.volume_ml"])
def test_ill_typed_comparison_is_invalid_query(index, expression):
    with pytest.raises(InvalidQuery, match=re.escape("cannot evaluate query")) as info:
        evaluate_query(expression, index)
    assert "\n" not in str(info.value)


# -- text: compared only, never computed with -----------------------------------------------


TEXT_ARITHMETIC = [
    "liver.voxels > 0 and 'x' * 3000000000 == 'y'",  # 3 GB before the fix
    "sex * 3000000000 == 'y'",
    "3000000000 * sex == 'y'",
    "sex * age > 0",
    "sex + sex == 'FF'",
    "'x' + 'y' == 'xy'",
    "sex % 2 == 0",
    "age / 'x' > 1",
    "-sex == 'F'",
    "+'F' == sex",
    "(sex * 2 == 'FF') or age > 0",
]


@pytest.mark.parametrize("expression", TEXT_ARITHMETIC)
def test_arithmetic_on_text_is_refused_before_evaluation(index, no_eval, expression):
    with pytest.raises(InvalidQuery, match=r"is text, which can only be compared .*not used in arithmetic"):
        evaluate_query(expression, index)


@pytest.mark.parametrize("expression", ["sex", "'F'", "not sex", "sex and age > 1", "age > 1 or 'x'"])
def test_text_as_a_condition_is_refused(index, no_eval, expression):
    with pytest.raises(InvalidQuery, match=r"is text, which can only be compared .*not used as a condition"):
        evaluate_query(expression, index)


def test_text_in_comparisons_still_works(index):
    assert evaluate_query("sex == 'F'", index) == ["c0", "c2"]
    assert evaluate_query("'F' == sex", index) == ["c0", "c2"]
    assert evaluate_query("sex < 'G' and age > 66", index) == ["c0"]
    assert evaluate_query("(sex == 'M') == (age > 50)", index) == ["c3"]


def test_metadata_column_has_the_type_of_most_of_its_values(infos):
    """A field is of the type most cases give it (archives written before types were checked may mix
    them); a value of another type counts as missing, with a warning naming its case."""
    metas = {
        "c0": {"age": 70, "weight": 70.5, "smoker": True, "site": "A"},
        "c1": {"age": "forty", "weight": 80, "smoker": False, "site": 3},
        "c2": {"age": 65, "smoker": True, "site": "B"},
        "c3": {"weight": 60, "smoker": False},
    }
    mixed = ArchiveIndex.from_cases((dataclasses.replace(infos[c], meta=meta), "") for c, meta in metas.items())
    odd_age = r"^metadata field 'age' is a number in 2 case\(s\) but another type in 1 \('c1'\): the query treats it as missing there$"
    with pytest.warns(QueryWarning, match=odd_age):
        assert evaluate_query("age * 2 > 100", mixed) == ["c0", "c2"]
    with pytest.warns(QueryWarning, match=r"^metadata field 'site' is text in 2 case\(s\) but another type in 1 \('c1'\)"):
        assert evaluate_query("site == 'A'", mixed) == ["c0"]
    assert evaluate_query("weight * 2 > 150", mixed) == ["c1"]  # ints and floats, missing in c2
    assert evaluate_query("smoker * 2 == 2", mixed) == ["c0", "c2"]  # bools


def test_integer_metadata_compares_exactly_and_beyond_float64_by_sign(infos):
    def index_of(values):
        return ArchiveIndex.from_cases((dataclasses.replace(infos[c], meta={"n": v}), "") for c, v in values.items())

    exact = index_of({"c0": 2**62 + 1, "c1": 2**62, "c2": 7, "c3": -(2**62)})  # equal as float64: c0 and c1
    assert evaluate_query(f"n == {2**62 + 1}", exact) == ["c0"]
    assert evaluate_query(f"n > {2**62}", exact) == ["c0"]
    huge = index_of({"c0": 10**400, "c1": 5, "c2": -(2**70), "c3": -(10**400)})  # JSON allows them
    assert evaluate_query("n > 3", huge) == ["c0", "c1"]
    assert evaluate_query("n * 2 < 3", huge) == ["c2", "c3"]


# -- limits: size, depth, numbers --------------------------------------------------------------


def test_query_longer_than_the_limit_is_refused_before_parsing(index, no_eval, monkeypatch):
    monkeypatch.setattr("ast.parse", lambda *a, **k: pytest.fail("ast.parse was called"))
    expression = " + ".join(["liver.voxels"] * 100_000) + " > 0"
    with pytest.raises(InvalidQuery, match=rf"{len(expression):,} characters.*limit is {MAX_QUERY_CHARS:,}"):
        evaluate_query(expression, index)


def test_query_with_too_many_nodes_is_refused(index, no_eval):
    expression = " and ".join(["age > 1"] * 800)
    assert len(expression) <= MAX_QUERY_CHARS
    with pytest.raises(InvalidQuery, match=rf"more than {MAX_QUERY_NODES:,} "):
        evaluate_query(expression, index)


@pytest.mark.parametrize(
    "expression",
    [
        "-" * 150 + "age > 1",
        "not " * 400 + "age > 1",  # parses, but the recursive visitors would raise RecursionError
        "+".join(["age"] * 150) + " > 1",
        "(" * 150 + "-" * 150 + "age" + ")" * 150 + " > 1",
        "(" * 110 + "age" + " > 1) == True" * 110,
        "age > 1 and sex == 'M' and (" * 110 + "age > 1" + ")" * 110,
    ],
    ids=["unary", "not", "sum", "parenthesized", "nested-comparisons", "nested-and"],
)
def test_query_nested_too_deep_is_refused(index, no_eval, expression):
    with pytest.raises(InvalidQuery, match=rf"deeper than {MAX_QUERY_DEPTH} levels"):
        evaluate_query(expression, index)


@pytest.mark.parametrize(
    "expression",
    [
        "(" * 4000 + "age" + ")" * 4000 + " > 1",  # the tokenizer: too many nested parentheses
        "-" * 9000 + "age > 1",  # the parser: MemoryError (its own stack), not memory
        "age > 1\0",
    ],
    ids=["parentheses", "unary", "nul"],
)
def test_expression_the_parser_fails_on_is_invalid_query(index, no_eval, expression):
    with pytest.raises(InvalidQuery, match=r"cannot parse query"):
        evaluate_query(expression, index)


def test_queries_within_the_limits_evaluate(index):
    deep = "-" * 90 + "age >= 65"  # an even number of minus signs
    assert evaluate_query(deep, index) == ["c0", "c2", "c3"]
    wide = " or ".join(["age >= 65"] * 390)  # ~1950 nodes, evaluated as one flat or
    assert evaluate_query(wide, index) == ["c0", "c2", "c3"]
    chain = "0 <= " + " <= ".join(["age"] * 600)
    assert evaluate_query(chain, index) == ["c0", "c1", "c2", "c3"]
    assert evaluate_query("60 < age + 0 * liver.voxels < 75", index) == ["c0", "c2"]
    assert evaluate_query("age < 9223372036854775807 and age > -1e308", index) == ["c0", "c1", "c2", "c3"]


def test_comparisons_nested_in_chains_evaluate_each_operand_once(index):
    # evaluated twice per level, 30 levels took 2**30 evaluations of age (pandas)
    assert evaluate_query("-1 < (" * 30 + "age" + ") < 200" * 30, index) == ["c0", "c1", "c2", "c3"]
    assert evaluate_query("0 < (" * 30 + "age" + ") < 2" * 30, index) == []  # 0 < age < 2 is false: so is 0 < False
    assert evaluate_query("0 < (age > 60) < 2", index) == ["c0", "c2", "c3"]
    nested = "(" * 60 + "age > 60" + ") == True" * 60  # 62 levels: within the limit
    assert evaluate_query(nested, index) == ["c0", "c2", "c3"]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("age > " + "9" * 5000, r"cannot parse query"),  # CPython refuses > 4300 digits at parse time
        ("age > " + "9" * 4000, r"number 9{20}.*… is too large"),
        ("age > 0x" + "f" * 9000, r"number 0xf{20}.*… is too large"),
        ("age > 9223372036854775808", r"number 9223372036854775808 is too large"),
    ],
    ids=["5000-digits", "4000-digits", "hex", "2**63"],
)
def test_huge_integer_literals_are_refused(index, no_eval, expression, message):
    with pytest.raises(InvalidQuery, match=message):
        evaluate_query(expression, index)


# -- messages: one line, the expression shortened ------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "age > 1 and " * 1000 + "age >",  # too long
        "age > 1 and (" + "x" * 9000,  # unparsable
        "age > 1 or " * 300 + "age >",  # unparsable, under the length limit
        "a" * 9000 + " > 1",  # unknown metadata field
        "b" * 9000 + ".voxels > 1",  # unknown organ
        "liver." + "c" * 9000 + " > 1",  # unknown field
        "age == b'" + "d" * 9000 + "'",  # refused literal
        "+".join(["age"] * 90),  # not a condition
        "age > 1 and sex > 0x" + "5" * 9000,  # too large a number
        "age > 1 and sex > " + "5" * 10 + " and sex == '" + "f" * 9000 + "'",  # a TypeError
        "age > 1 and '" + "g" * 9000 + "' * sex == 1",  # arithmetic on text
    ],
    ids=["long", "unparsable", "unparsable-short", "meta", "organ", "field", "literal", "non-boolean", "number",
         "ill-typed", "text"],
)  # fmt: skip
def test_messages_are_one_short_line(index, expression):
    with pytest.raises(InvalidQuery) as info:
        evaluate_query(expression, index)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert "…" in message  # the echoed expression or name is cut


# -- hostile queries: peak memory in a fresh process ---------------------------------------

CHILD = """
import sys
from spacetransformer import Space
from medmask_store.errors import InvalidQuery
from medmask_store.model.attributes import CaseInfo
from medmask_store.model.stats import OrganStats
from medmask_store.query import ArchiveIndex, evaluate_query

space = Space(shape=(8, 8, 8))
liver = OrganStats.from_summary(10, ((0, 2), (0, 5), (1, 2)), (1.0, 2.0, 1.0), space)
index = ArchiveIndex.from_cases(
    (CaseInfo(case_id, space, {"liver": 1}, (), {"liver": liver}, meta, {}), "")
    for case_id, meta in [("a", {"age": 70, "sex": "F"}), ("b", {"age": 40, "sex": "M"})]
)
try:
    evaluate_query(sys.stdin.read(), index)
    print("accepted")
except InvalidQuery:
    print("InvalidQuery")
"""
HOSTILE = {
    "text-repeat": "liver.voxels > 0 and 'x' * 3000000000 == 'y'",
    "metadata-repeat": "sex * 3000000000 == 'y'",
    "100k-terms": " + ".join(["liver.voxels"] * 100_000) + " > 0",
    "200k-parentheses": "(" * 100_000 + "age" + ")" * 100_000 + " > 1",
    "5000-digits": "age > " + "9" * 5000,
    "500-comparisons": " and ".join(["liver.voxels > 0"] * 500),
    "9000-minus": "-" * 9000 + "age > 1",
}


@pytest.mark.parametrize("expression", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_query_is_refused_within_256_mb(expression):
    outcome, peak_mb = run_measuring_peak_rss(CHILD, stdin=expression)
    print(f"peak RSS {peak_mb} MB")
    assert outcome == "InvalidQuery"
    assert peak_mb < 256
