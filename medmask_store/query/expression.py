"""Query expressions over organ statistics and case metadata, checked here, evaluated with NumPy.

``liver.volume_ml > 2000 and kidney_cyst_left.voxels > 0 and age >= 60``:
``organ.field`` names an organ statistic (fields: :data:`ORGAN_FIELDS`), a bare
name a case metadata field. The expression is parsed with :mod:`ast` and only
comparisons, boolean and arithmetic operators, names, ``organ.field`` and
literals pass; calls, subscripts, other attribute access and ``@`` locals are
refused before :mod:`evaluation <medmask_store.query.evaluation>` evaluates it. A
case without the organ (or the metadata field) has no value there, so every
comparison on it is false (``!=`` too), and its ``touches_border`` is false. World centroids name their frame
(``centroid_lps_x_mm``: LPS, DICOM; ``centroid_ras_x_mm``: RAS, NIfTI); the old names
(``centroid_x_mm``) read the LPS fields, with a ``FutureWarning``.

A metadata field has the type most cases give it (:mod:`medmask_store.model.meta_types`;
archives check it on write, but older ones may mix types): a case whose value has
another type counts as missing, with a :class:`QueryWarning` naming it. Text (a
string literal, or a text metadata field) may only be compared (``sex == "F"``):
``"x" * 3000000000`` would build a 3 GB string, so arithmetic and and/or/not take
organ fields, numeric metadata and numbers only. ``sex == 'm'`` where no case holds
``'m'`` warns, suggesting the values close to it (``'M'``): a typo matches nothing,
but not silently.

Limits (:mod:`medmask_store.limits`), checked before anything recursive or costly
runs: at most ``MAX_QUERY_CHARS`` characters (before parsing), ``MAX_QUERY_NODES``
syntax-tree nodes and ``MAX_QUERY_DEPTH`` levels of nesting (``a + b + c`` nests one
level per ``+``); and integers below 2**63. Every refusal is an :class:`InvalidQuery` of one line that shows at most 80
characters of the expression.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import io
import math
import sys
import tokenize
import warnings
from collections import Counter
from collections.abc import Callable

import numpy as np

from medmask_store.errors import InvalidQuery, QueryWarning
from medmask_store.limits import MAX_QUERY_CHARS, MAX_QUERY_DEPTH, MAX_QUERY_NODES
from medmask_store.model.meta_types import ARTICLES, dominant_type, type_name
from medmask_store.query.evaluation import Evaluation, Operand
from medmask_store.query.index import ORGAN_FIELDS, RENAMED_FIELDS, ArchiveIndex

ALLOWED = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
    ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Mod, ast.Compare, ast.Eq, ast.NotEq,
    ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Name, ast.Load, ast.Constant, ast.Attribute,
)  # fmt: skip
MAX_INTEGER = 2**63  # an int64 column holds no larger value; a 4000-digit literal matters to no query
EXAMPLE = "liver.volume_ml > 2000 and age >= 60"


def _clip(text: str, limit: int = 80) -> str:
    """One line of at most ``limit`` characters: messages echo what they refuse, not 10,000 characters of it."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _size(tree: ast.AST) -> tuple[int, int]:
    """Nodes and depth of a syntax tree, counted without recursion: deep trees are what we refuse."""
    stack, nodes, deepest = [(tree, 1)], 0, 0
    while stack:
        node, depth = stack.pop()
        nodes, deepest = nodes + 1, max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return nodes, deepest


def _check_depth(depth: int, expression: str) -> None:
    if depth > MAX_QUERY_DEPTH:
        raise InvalidQuery(
            f"query {_clip(expression)!r} nests deeper than {MAX_QUERY_DEPTH} levels (limits.MAX_QUERY_DEPTH; "
            "a + b + c nests one level per +); simplify it or split it into several queries"
        )


def _of_one_type(field: str, ids: list[str], values: np.ndarray) -> tuple[Operand, str | None, str]:
    """A metadata field's values (one per case of ``ids``, None where absent) as an operand, its type, and a
    note when values of another type (in archives written before types were checked) were left out:
    comparisons on them are false, as on a missing value."""
    python_types = np.fromiter(map(type, values.tolist()), dtype=object, count=len(values))  # masks per type
    holders = {kind: python_types == kind for kind in set(python_types.tolist()) if kind is not type(None)}
    counts: Counter[str] = Counter()
    for kind, held in holders.items():
        counts[type_name(kind)] += int(held.sum())
    name = dominant_type(counts)
    present, other = np.zeros(len(values), dtype=bool), np.zeros(len(values), dtype=bool)
    for kind, held in holders.items():
        (present if type_name(kind) == name else other)[held] = True
    note = ""
    if other.any():
        cases = ", ".join(repr(ids[case]) for case in np.flatnonzero(other)[:3]) + (", …" if other.sum() > 3 else "")
        note = (
            f"metadata field {field!r} is {ARTICLES.get(name or '', name)} in {int(present.sum())} case(s) "
            f"but another type in {int(other.sum())} ({cases}): the query treats it as missing there"
        )
    if name == "number":
        numbers = np.full(len(values), np.nan)
        numbers[present] = _floats(values[present])
        if present.all() and set(holders) == {int}:  # integers stay exact
            with contextlib.suppress(OverflowError):  # JSON integers beyond int64: as floats
                numbers = values.astype(np.int64)
        return (numbers, present & ~np.isnan(numbers.astype(np.float64))), name, note
    if name == "boolean":
        flags = np.zeros(len(values), dtype=bool)
        flags[present] = values[present].astype(bool)
        return (flags, present), name, note
    texts = values.copy()
    texts[~present] = ""  # compared only where present; "" keeps ordering comparisons from meeting None
    return (texts, present), name, note


def _floats(numbers: np.ndarray) -> np.ndarray:
    """Numbers as float64; integers beyond its range (JSON allows them) as infinities of their sign."""
    try:
        return numbers.astype(np.float64)
    except OverflowError:
        inf = math.inf
        return np.array(
            [v if abs(v) <= sys.float_info.max else inf if v > 0 else -inf for v in numbers.tolist()], float
        )


def _absent_value_note(field: str, value: object, column: Operand) -> str:
    """A note when no case holds ``value`` in ``field``, suggesting the close text values (any letter case)."""
    values, present = column
    held = set(values[present].tolist())
    if value in held:
        return ""
    texts = {str(v).lower(): str(v) for v in held if isinstance(v, str)}
    close = difflib.get_close_matches(str(value).lower(), list(texts), n=3) if texts else []
    hint = f"; did you mean {' or '.join(repr(texts[c]) for c in close)}?" if close else ""
    return f"no case has {field} == {_clip(repr(value), 40)}{hint}"


class _Checks(ast.NodeVisitor):
    """Checks the tree, reading the metadata fields it names as it meets them (``read_meta`` gives a field's
    operand, type and a note on values of another type).

    Text leaves (string literals, text metadata) are collected in ``text``; every node but a
    comparison refuses a text operand, so text is only ever compared.
    """

    def __init__(
        self,
        source: str,
        organs: list[str],
        meta_fields: list[str],
        read_meta: Callable[[str], tuple[Operand, str | None, str]],
    ) -> None:
        self.source, self.organs, self.meta_fields, self._read_meta = source, organs, meta_fields, read_meta
        self.meta: dict[str, Operand] = {}  # the fields used, read as they are met
        self.meta_types: dict[str, str | None] = {}
        self.organ_fields: set[tuple[str, str]] = set()
        self.text: set[ast.AST] = set()
        self.notes: list[str] = []  # QueryWarning messages: a typo'd value matches nothing, not silently
        self.renamed: list[str] = []  # FutureWarning messages: fields used by their old names

    def generic_visit(self, node: ast.AST) -> None:
        if not isinstance(node, ALLOWED):
            raise InvalidQuery(
                f"{type(node).__name__} is not allowed in a query; use comparisons, and/or/not, arithmetic"
            )
        super().generic_visit(node)
        for child in ast.iter_child_nodes(node):
            if child in self.text:
                self._refuse_text(child, node)

    def _refuse_text(self, leaf: ast.AST, parent: ast.AST) -> None:
        negation = isinstance(parent, ast.UnaryOp) and isinstance(parent.op, ast.Not)
        if isinstance(parent, (ast.BinOp, ast.UnaryOp)) and not negation:
            role = "in arithmetic (which takes organ fields, numeric metadata and numbers)"
        else:
            role = "as a condition"
        shown = _clip(ast.get_source_segment(self.source, leaf) or ast.unparse(leaf))
        raise InvalidQuery(f"{shown} is text, which can only be compared (e.g. sex == 'F'), not used {role}")

    def visit_Compare(self, node: ast.Compare) -> None:
        """Text may be compared, so this skips the text check of :meth:`generic_visit`."""
        super().generic_visit(node)
        operands = [node.left, *node.comparators]
        for left, op, right in zip(operands, node.ops, operands[1:]):
            if isinstance(op, (ast.Eq, ast.NotEq)):
                self._note_absent_value(left, right)
                self._note_absent_value(right, left)

    def _note_absent_value(self, field: ast.expr, literal: ast.expr) -> None:
        """``field == 'value'`` (or ``!=``) with text on either side: note a value no case holds."""
        if isinstance(field, ast.Name) and field.id in self.meta_types and isinstance(literal, ast.Constant):
            if isinstance(literal.value, str) or self.meta_types[field.id] == "text":
                note = _absent_value_note(field.id, literal.value, self.meta[field.id])
                self.notes += [note] if note and note not in self.notes else []

    def visit_Constant(self, node: ast.Constant) -> None:
        if not isinstance(node.value, (int, float, str, bool)):
            raise InvalidQuery(f"literal {_clip(repr(node.value))} is not allowed in a query")
        if isinstance(node.value, int) and abs(node.value) >= MAX_INTEGER:
            shown = _clip(ast.get_source_segment(self.source, node) or "")
            raise InvalidQuery(
                f"number {shown} is too large: integers in a query must be below 2**63 (write 1e30 for a float)"
            )
        if isinstance(node.value, str):
            self.text.add(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if not isinstance(node.value, ast.Name):
            raise InvalidQuery("only organ.field attributes are allowed, e.g. liver.volume_ml")
        organ, field = node.value.id, node.attr
        if organ not in self.organs:
            raise InvalidQuery(f"no case has an organ {_clip(organ)!r}{_suggest(organ, self.organs)}")
        if field in RENAMED_FIELDS:
            field = self._renamed(organ, field)
        if field not in ORGAN_FIELDS:
            suggestion, fields = _suggest(field, list(ORGAN_FIELDS)), ", ".join(ORGAN_FIELDS)
            raise InvalidQuery(f"unknown organ field {_clip(field)!r}{suggestion}; fields: {fields}")
        self.organ_fields.add((organ, field))

    def _renamed(self, organ: str, field: str) -> str:
        """The current name of a field given by its old name, noting the rename."""
        lps = RENAMED_FIELDS[field]
        ras = lps.replace("_lps_", "_ras_")
        note = (
            f"{organ}.{field} is deprecated: world coordinates name their frame; it reads {organ}.{lps} "
            f"(LPS, as before), and {organ}.{ras} is the RAS one (NIfTI, nibabel: x and y negated)"
        )
        self.renamed += [note] if note not in self.renamed else []
        return lps

    def visit_Name(self, node: ast.Name) -> None:
        if node.id not in self.meta_fields:
            hint = " (organ statistics are written organ.field, e.g. liver.voxels)" if node.id in self.organs else ""
            suggestion = _suggest(node.id, self.meta_fields)
            raise InvalidQuery(f"unknown metadata field {_clip(node.id)!r}{hint}{suggestion}")
        if node.id not in self.meta_types:
            self.meta[node.id], self.meta_types[node.id], note = self._read_meta(node.id)
            self.notes += [note] if note else []
        if self.meta_types[node.id] not in (None, "number", "boolean"):
            self.text.add(node)


def _parse(expression: str) -> ast.Expression:
    """The syntax tree of a query, refused when too long or too large to evaluate safely."""
    if len(expression) > MAX_QUERY_CHARS:
        raise InvalidQuery(
            f"query {_clip(expression)!r} is {len(expression):,} characters long; the limit is {MAX_QUERY_CHARS:,} "
            "(limits.MAX_QUERY_CHARS): split it into several queries and combine their case ids"
        )
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError) as exc:  # ValueError: null bytes, on some Python versions
        compared = _with_equality(expression.strip())
        if compared is not None:
            raise InvalidQuery(
                f"cannot parse query {_clip(expression)!r}: = assigns, == compares; write {_clip(compared)}"
            ) from exc
        reason = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        raise InvalidQuery(f"cannot parse query {_clip(expression)!r}: {_clip(reason)}; write e.g. {EXAMPLE}") from exc
    except (MemoryError, RecursionError) as exc:  # the parser's own stack overflowing on deep nesting
        raise InvalidQuery(f"cannot parse query {_clip(expression)!r}: nested too deeply; simplify it") from exc
    # before the recursive walks (the checks, the evaluation), which deep trees would overflow
    nodes, depth = _size(tree)
    if nodes > MAX_QUERY_NODES:
        raise InvalidQuery(
            f"query {_clip(expression)!r} has more than {MAX_QUERY_NODES:,} names, numbers and operators "
            "(limits.MAX_QUERY_NODES); split it into several queries and combine their case ids"
        )
    _check_depth(depth, expression)
    return tree


def _with_equality(expression: str) -> str | None:
    """The expression with each ``=`` outside text made ``==``, or None if it has none (or does not tokenize)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expression).readline))
    except (tokenize.TokenError, SyntaxError):
        return None
    lines = expression.splitlines(keepends=True)
    assignments = [t.start for t in tokens if t.type == tokenize.OP and t.string == "="]
    for row, column in reversed(assignments):
        lines[row - 1] = lines[row - 1][:column] + "==" + lines[row - 1][column + 1 :]
    return "".join(lines) if assignments else None


def evaluate_query(expression: str, index: ArchiveIndex) -> list[str]:
    """Case ids (sorted) for which the expression holds.

    A :class:`QueryWarning` says when an ``==`` / ``!=`` compares a metadata field with a value no case
    holds (suggesting close ones: ``'m'`` -> ``'M'``), and when cases were left out of comparisons on a
    field because their value has another type than the field's in the other cases.
    """
    tree = _parse(expression)
    ids = index.ordered_case_ids()  # the order of every column below

    def read_meta(field: str) -> tuple[Operand, str | None, str]:
        return _of_one_type(field, ids, index.meta_values(field))

    checks = _Checks(expression.strip(), index.present_organs(), index.meta_keys, read_meta)
    checks.visit(tree)
    for note in checks.notes:
        warnings.warn(note, QueryWarning, stacklevel=3)  # the caller of MaskArchive.query
    for note in checks.renamed:
        warnings.warn(note, FutureWarning, stacklevel=3)  # FutureWarning: shown to users, unlike DeprecationWarning
    columns = index.organ_columns(sorted(checks.organ_fields))  # only these fields' columns are read
    organs = {
        pair: (values == 1, True) if pair[1] == "touches_border" else (values, ~np.isnan(values))
        for pair, values in columns.items()
    }  # a missing organ's touches_border is false
    try:
        matches = Evaluation(len(ids), organs, checks.meta).matches(tree)
    except (TypeError, ValueError, ArithmeticError) as exc:  # ill-typed: 'M' < 5, liver.voxels > 'x'
        raise InvalidQuery(f"cannot evaluate query {_clip(expression)!r}: {_clip(str(exc), 120)}") from exc
    if matches is None:
        raise InvalidQuery(f"query {_clip(expression)!r} does not give true/false per case; write e.g. {EXAMPLE}")
    return sorted(np.asarray(ids, dtype=object)[matches].tolist())
