"""Evaluating a checked query over per-case columns with NumPy (pandas is not imported: a cold query is fast).

Every operand is a pair ``(values, present)``: one value per case (an array) or a literal, and
where the value exists. A comparison holds only where all its operands are present, so any
comparison with a missing organ or metadata value is false, ``!=`` included. Arithmetic keeps
the operands' presence; ``/`` and ``%`` compute in floats, and a NaN they give (``0 / 0``,
``x % 0``) is missing. ``and``, ``or`` and ``not`` take conditions: comparisons and boolean
fields (a missing one is false). Chained comparisons evaluate each operand once.

The tree has passed :mod:`medmask_store.query.expression`'s checks (allowed nodes, no text
in arithmetic, bounded depth), so this only evaluates.
"""

from __future__ import annotations

import ast
import functools
import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from medmask_store.query.index import RENAMED_FIELDS

Operand = tuple[Any, Any]  # (values: an array of one per case, or a literal; present: a bool array, or True)

COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
    ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
}  # fmt: skip
ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.Mod: operator.mod,
}  # fmt: skip


class Evaluation:
    """One query's evaluation over ``cases`` cases: organ statistics by ``(organ, field)`` and metadata
    by name, each an operand of one value per case."""

    def __init__(self, cases: int, organs: Mapping[tuple[str, str], Operand], meta: Mapping[str, Operand]) -> None:
        self.cases, self.organs, self.meta = cases, organs, meta

    def matches(self, tree: ast.Expression) -> np.ndarray | None:
        """Where the query holds, one bool per case; None if it does not give true/false per case."""
        with np.errstate(all="ignore"):  # 0 / 0 and x % 0 give NaN: missing, not a warning
            values, present = self._value(tree.body)
        if not (isinstance(values, np.ndarray) and values.dtype == bool and values.shape == (self.cases,)):
            return None
        return values & present

    def _value(self, node: ast.expr) -> Operand:
        if isinstance(node, ast.Constant):
            return node.value, True
        if isinstance(node, ast.Name):
            return self.meta[node.id]
        if isinstance(node, ast.Attribute):
            assert isinstance(node.value, ast.Name)  # checked: organ.field
            return self.organs[node.value.id, RENAMED_FIELDS.get(node.attr, node.attr)]
        if isinstance(node, ast.Compare):
            return self._compare(node), True
        if isinstance(node, ast.BoolOp):
            combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            return functools.reduce(combine, (self._condition(value) for value in node.values)), True
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return np.logical_not(self._condition(node.operand)), True
            values, present = self._value(node.operand)
            return (-_number(values) if isinstance(node.op, ast.USub) else +_number(values)), present
        assert isinstance(node, ast.BinOp)  # checked: no other node
        return self._arithmetic(node)

    def _condition(self, node: ast.expr) -> Any:
        """A condition's truth per case (false where missing)."""
        values, present = self._value(node)
        if not (isinstance(values, bool) or isinstance(values, np.ndarray) and values.dtype == bool):
            raise TypeError("and, or and not take conditions (e.g. age > 60 or liver.touches_border), not numbers")
        return values & present

    def _compare(self, node: ast.Compare) -> Any:
        holds: Any = True
        left = self._value(node.left)
        for op, comparator in zip(node.ops, node.comparators):
            right = self._value(comparator)
            result = COMPARISONS[type(op)](left[0], right[0])
            if isinstance(left[0], np.ndarray) or isinstance(right[0], np.ndarray):
                result = np.broadcast_to(np.asarray(result, dtype=bool), (self.cases,))  # ndarray == 'x': one False
            holds = holds & result & left[1] & right[1]
            left = right
        return holds

    def _arithmetic(self, node: ast.BinOp) -> Operand:
        (left, left_present), (right, right_present) = self._value(node.left), self._value(node.right)
        left, right = _number(left), _number(right)
        if isinstance(node.op, (ast.Div, ast.Mod)):
            left, right = np.asarray(left, dtype=np.float64), np.asarray(right, dtype=np.float64)
        values = ARITHMETIC[type(node.op)](left, right)
        present = left_present & right_present
        if isinstance(values, (np.ndarray, np.floating)) and values.dtype.kind == "f":
            present = present & ~np.isnan(values)
        return values, present


def _number(values: Any) -> Any:
    """Booleans as integers, for arithmetic (``smoker * 2``)."""
    return values.astype(np.int64) if isinstance(values, np.ndarray) and values.dtype == bool else values
