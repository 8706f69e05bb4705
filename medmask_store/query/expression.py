"""Query expressions over organ statistics and case metadata, evaluated by pandas.

``liver.volume_ml > 2000 and kidney_cyst_left.voxels > 0 and age >= 60``:
``organ.field`` names an organ statistic (fields: :data:`ORGAN_FIELDS`), a bare
name a case metadata field. The expression is parsed with :mod:`ast` and only
comparisons, boolean and arithmetic operators, names, ``organ.field`` and
literals pass; calls, subscripts, other attribute access and ``@`` locals are
refused before pandas (``DataFrame.eval``) evaluates it. A case without the
organ (or the metadata field) has NaN there, so every comparison on it is false
(``!=`` too), and its ``touches_border`` is false.
"""

from __future__ import annotations

import ast
import difflib
from typing import cast

import pandas as pd

from medmask_store.errors import InvalidQuery
from medmask_store.query.index import ORGAN_FIELDS, ArchiveIndex

ALLOWED = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
    ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Mod, ast.Compare, ast.Eq, ast.NotEq,
    ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Name, ast.Load, ast.Constant, ast.Attribute,
)  # fmt: skip
COLUMN_SEPARATOR = "__"


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


class _Columns(ast.NodeTransformer):
    """Validates the tree and turns ``organ.field`` into the column name ``organ__field``."""

    def __init__(self, organs: list[str], meta_fields: list[str]) -> None:
        self.organs, self.meta_fields = organs, meta_fields
        self.organ_fields: set[tuple[str, str]] = set()
        self.meta_used: set[str] = set()

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if not isinstance(node, ALLOWED):
            raise InvalidQuery(f"{type(node).__name__} is not allowed in a query; use comparisons, and/or/not, arithmetic")
        return super().generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        """Guard each compared name with ``name == name`` (false for NaN): a comparison
        involving a missing organ or metadata field is false, ``!=`` included."""
        compare = cast(ast.expr, self.generic_visit(node))
        names = sorted({n.id for n in ast.walk(compare) if isinstance(n, ast.Name)})
        if not names:
            return compare
        guards = [ast.Compare(ast.Name(n, ast.Load()), [ast.Eq()], [ast.Name(n, ast.Load())]) for n in names]
        return ast.BoolOp(ast.And(), [compare, *guards])

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if not isinstance(node.value, (int, float, str, bool)):
            raise InvalidQuery(f"literal {node.value!r} is not allowed in a query")
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if not isinstance(node.value, ast.Name):
            raise InvalidQuery("only organ.field attributes are allowed, e.g. liver.volume_ml")
        organ, field = node.value.id, node.attr
        if organ not in self.organs:
            raise InvalidQuery(f"no case has an organ {organ!r}{_suggest(organ, self.organs)}")
        if field not in ORGAN_FIELDS:
            raise InvalidQuery(f"unknown organ field {field!r}{_suggest(field, list(ORGAN_FIELDS))}; fields: {', '.join(ORGAN_FIELDS)}")
        self.organ_fields.add((organ, field))
        return ast.copy_location(ast.Name(id=f"{organ}{COLUMN_SEPARATOR}{field}", ctx=ast.Load()), node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id not in self.meta_fields:
            hint = " (organ statistics are written organ.field, e.g. liver.voxels)" if node.id in self.organs else ""
            raise InvalidQuery(f"unknown metadata field {node.id!r}{hint}{_suggest(node.id, self.meta_fields)}")
        self.meta_used.add(node.id)
        return node


def evaluate_query(expression: str, index: ArchiveIndex) -> list[str]:
    """Case ids (sorted) for which the expression holds."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise InvalidQuery(f"cannot parse query {expression!r}: {exc.msg}") from exc
    organs = [str(o) for o in index.organs["organ"].cat.categories]
    meta = index.meta_frame()
    columns = _Columns(organs, [str(c) for c in meta.columns])
    rewritten = ast.unparse(columns.visit(tree))
    wide = pd.DataFrame(index=pd.Index(index.case_ids, name="case_id"))
    for organ in sorted({o for o, _ in columns.organ_fields}):
        rows = index.organs[index.organs["organ"] == organ]
        fields = sorted(f for o, f in columns.organ_fields if o == organ)
        table = rows.set_index(rows["case_id"].astype(object))[fields]
        table.columns = [f"{organ}{COLUMN_SEPARATOR}{field}" for field in fields]
        wide = wide.join(table)
        if "touches_border" in fields:  # a missing organ touches nothing
            flag = f"{organ}{COLUMN_SEPARATOR}touches_border"
            wide[flag] = wide[flag].fillna(False).astype(bool)
    wide = wide.join(meta[sorted(columns.meta_used)])
    try:
        result = wide.eval(rewritten, engine="python", local_dict={}, global_dict={})
    except Exception as exc:  # pandas raises many types for ill-typed expressions
        raise InvalidQuery(f"cannot evaluate query {expression!r}: {exc}") from exc
    if not isinstance(result, pd.Series) or result.dtype != bool:
        raise InvalidQuery(f"query {expression!r} does not give true/false per case")
    return sorted(result.index[result].tolist())
