"""CQL2 expressions evaluated over the columns of an Arrow record batch (AttributeComputeTransform).

GeoServer's importer computes a new attribute from an (E)CQL expression such as
``'My String'``, ``POP_EST / 1000`` or ``strConcat(NAME, ' (', ISO_A3, ')')``. Here the
text is parsed by ``cql2`` into the standard's JSON tree, checked against a closed list
of operators and functions when it is parsed (so a transform is refused when it is
created, not when it runs), and evaluated a whole batch at a time with
``pyarrow.compute``: nothing in the text is ever executed as Python.

Semantics, where CQL2 leaves a choice:

* numbers that are whole (``1000``) are 64-bit integers, so ``POP_EST + 1`` stays an
  integer column; ``/`` is always real division, ``div`` integer division;
* nulls propagate as in SQL (``NAME || NULL`` is NULL); ``and``/``or`` are Kleene;
* arithmetic that overflows or divides by zero is an error (the caller names the row),
  never a silent infinity or wrap-around.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache, reduce
from typing import Any

import cql2
import pyarrow as pa
import pyarrow.compute as pc

from providers.errors import InvalidData

#: Nodes in one expression at most (a bound on the work a client can ask per batch).
MAX_NODES = 500
MAX_DEPTH = 50

Value = pa.Array | pa.Scalar
Columns = Callable[[str], pa.Array]

_COMPARISONS = {
    "=": pc.equal,
    "<>": pc.not_equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}
#: Function or operator name (lower case) -> (least, most) arguments; None: any number.
_ARITY: dict[str, tuple[int, int | None]] = {
    **{op: (2, 2) for op in ("+", "-", "*", "/", "div", "%", "^")},
    **{op: (2, 2) for op in _COMPARISONS},
    "and": (2, None),
    "or": (2, None),
    "not": (1, 1),
    "isnull": (1, 1),
    "like": (2, 2),
    "between": (3, 3),
    "in": (2, 2),
    "if_then_else": (3, 3),
    # strings
    "casei": (1, 1),
    "lower": (1, 1),
    "strtolowercase": (1, 1),
    "upper": (1, 1),
    "strtouppercase": (1, 1),
    "accenti": (1, 1),
    "concat": (1, None),
    "strconcat": (1, None),
    "trim": (1, 1),
    "strtrim": (1, 1),
    "length": (1, 1),
    "strlength": (1, 1),
    "strsubstring": (3, 3),
    # numbers
    "abs": (1, 1),
    "floor": (1, 1),
    "ceil": (1, 1),
    "round": (1, 1),
}
_OPERATORS = frozenset({"div", "and", "or", "not", "isnull", "like", "between", "in"})
#: The function names an expression may call (case-insensitive), for messages.
FUNCTIONS = tuple(sorted(name for name in _ARITY if name[0].isalpha() and name not in _OPERATORS))


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed expression: its text, its CQL2 JSON tree and the properties it reads."""

    text: str
    tree: Any
    properties: frozenset[str]

    def evaluate(self, columns: Columns, length: int) -> pa.Array:
        """The expression's value for each of ``length`` rows; ``columns`` gives a property's array.

        Raises ``pa.ArrowInvalid`` for a value error (overflow, division by zero) and
        ``pa.ArrowNotImplementedError`` / ``pa.ArrowTypeError`` for operands of types the
        operation does not take (found when the caller evaluates over an empty batch).
        """
        value = _Evaluator(columns).value(self.tree)
        if isinstance(value, pa.Scalar):
            return pa.repeat(value, length)
        return value


@lru_cache(maxsize=256)
def compile_text(text: str) -> Expression:
    """The expression ``text`` (CQL2 text, ECQL-style constants), checked.

    InvalidData when it does not parse or uses what we do not evaluate.
    """
    try:
        tree = cql2.parse_text(text).to_json()
    except (cql2.ParseError, cql2.ValidationError, ValueError) as exc:
        raise InvalidData(f"cannot parse {text[:200]!r}: {_parse_error(str(exc))}") from exc
    names = set(_check(tree, 0, [0]))
    return Expression(text, tree, frozenset(names))


def _parse_error(text: str) -> str:
    """The position and the expectation of a cql2 parse error (its pretty-printed arrow dropped)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    where = next((line.removeprefix("-->").strip() for line in lines if line.startswith("-->")), None)
    expected = next((line.removeprefix("=").strip() for line in lines if line.startswith("=")), None)
    parts = [f"at {where}" if where else None, expected]
    return "; ".join(p for p in parts if p)[:300] or (lines[0][:300] if lines else "syntax error")


def _check(node: Any, depth: int, count: list[int]) -> Iterator[str]:
    """The properties ``node`` reads; InvalidData for anything but the operators and functions we know."""
    count[0] += 1
    if depth > MAX_DEPTH or count[0] > MAX_NODES:
        raise InvalidData("the expression is too large or too deeply nested")
    if node is None or isinstance(node, (bool, str)):
        return
    if isinstance(node, (int, float)):
        if not math.isfinite(node):
            raise InvalidData("numbers in the expression must be finite")
        return
    if isinstance(node, list):
        raise InvalidData("a list is only allowed after IN")
    if not isinstance(node, Mapping):
        raise InvalidData(f"unsupported value {str(node)[:60]!r}")
    if "property" in node:
        name = node["property"]
        if not isinstance(name, str) or not name:
            raise InvalidData("property names are strings")
        yield name
        return
    if "date" in node or "timestamp" in node:
        _instant(node)
        return
    op = node.get("op")
    args = node.get("args")
    if not isinstance(op, str) or not isinstance(args, list):
        what = (
            "geometries" if "type" in node or "bbox" in node else "intervals" if "interval" in node else None
        )
        raise InvalidData(f"{what or str(node)[:60]} cannot be computed into an attribute")
    name = op.lower()
    if name not in _ARITY:
        raise InvalidData(
            f"unknown function or operator {op[:60]!r}; the functions are {', '.join(FUNCTIONS)}"
        )
    least, most = _ARITY[name]
    if len(args) < least or (most is not None and len(args) > most):
        wanted = (
            f"{least}" if least == most else f"at least {least}" if most is None else f"{least} to {most}"
        )
        raise InvalidData(f"{op} takes {wanted} argument(s), not {len(args)}")
    if name == "in":
        if not isinstance(args[1], list) or not args[1]:
            raise InvalidData("IN needs a non-empty list of values")
        if not all(v is None or isinstance(v, (bool, str, int, float)) for v in args[1]):
            raise InvalidData("the values after IN must be literals")
        yield from _check(args[0], depth + 1, count)
        return
    if name == "like" and not isinstance(args[1], str):
        raise InvalidData("LIKE needs a text pattern")
    if name == "strsubstring" and not all(_whole(a) for a in args[1:]):
        raise InvalidData("strSubstring needs literal whole numbers for its start and end")
    for arg in args:
        yield from _check(arg, depth + 1, count)


def _whole(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()


def _instant(node: Mapping[str, Any]) -> pa.Scalar:
    text = str(node.get("date") or node.get("timestamp"))
    try:
        if "date" in node:
            return pa.scalar(date.fromisoformat(text), pa.date32())
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise InvalidData(f"{text[:60]!r} is not an RFC 3339 date or timestamp") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return pa.scalar(value, pa.timestamp("us", tz="UTC"))


def _literal(value: Any) -> pa.Scalar:
    if value is None:
        return pa.scalar(None, pa.null())
    if isinstance(value, bool):
        return pa.scalar(value, pa.bool_())
    if isinstance(value, str):
        return pa.scalar(value, pa.string())
    if float(value).is_integer() and abs(value) < 2**63:
        return pa.scalar(int(value), pa.int64())
    return pa.scalar(float(value), pa.float64())


def _is_integer(value: Value) -> bool:
    return pa.types.is_integer(value.type)


def _real(value: Value) -> Value:
    return value if pa.types.is_floating(value.type) else pc.cast(value, pa.float64())


def as_text(value: Value) -> Value:
    """A value as text, as GeoTools' string functions take any argument (times in ISO 8601)."""
    if pa.types.is_string(value.type) or pa.types.is_large_string(value.type):
        return value
    if pa.types.is_timestamp(value.type):
        # Arrow writes the seconds with all the unit's decimals: drop them when they are zeros.
        text = pc.strftime(value, "%Y-%m-%dT%H:%M:%S" + ("Z" if value.type.tz else ""))
        return pc.replace_substring_regex(text, r"\.0+(Z?)$", r"\1")
    return pc.cast(value, pa.string())


class _Evaluator:
    """One evaluation over one batch (the tree was checked by :func:`compile_text`)."""

    def __init__(self, columns: Columns) -> None:
        self.columns = columns

    def value(self, node: Any) -> Value:
        if not isinstance(node, Mapping):
            return _literal(node)
        if "property" in node:
            return self.columns(node["property"])
        if "date" in node or "timestamp" in node:
            return _instant(node)
        name = node["op"].lower()
        args = node["args"]
        if name == "in":
            return self._in(args)
        if name == "like":
            return pc.match_like(as_text(self.value(args[0])), args[1])
        if name == "strsubstring":
            return pc.utf8_slice_codeunits(as_text(self.value(args[0])), int(args[1]), int(args[2]))
        values = [self.value(a) for a in args]
        return self._apply(name, values)

    def _in(self, args: list[Any]) -> Value:
        subject = self.value(args[0])
        literals = [_literal(v) for v in args[1] if v is not None]
        if not literals:
            return pc.is_in(subject, value_set=pa.array([], subject.type))
        candidates = pa.array([s.as_py() for s in literals], literals[0].type)
        if candidates.type != subject.type:
            candidates = pc.cast(candidates, subject.type)
        return pc.is_in(subject, value_set=candidates)

    def _apply(self, name: str, values: list[Value]) -> Value:
        if name in _COMPARISONS:
            return _COMPARISONS[name](*values)
        arithmetic = _ARITHMETIC.get(name)
        if arithmetic is not None:
            return arithmetic(*values)
        if name == "and":
            return reduce(pc.and_kleene, values)
        if name == "or":
            return reduce(pc.or_kleene, values)
        if name == "not":
            return pc.invert(values[0])
        if name == "isnull":
            return pc.is_null(values[0])
        if name == "between":
            subject, low, high = values
            return pc.and_kleene(pc.greater_equal(subject, low), pc.less_equal(subject, high))
        if name == "if_then_else":
            return pc.if_else(*values)
        return _FUNCTIONS[name](*values)


def _divide(a: Value, b: Value) -> Value:
    return pc.divide_checked(_real(a), _real(b))


def _integer_divide(a: Value, b: Value) -> Value:
    if _is_integer(a) and _is_integer(b):
        return pc.divide_checked(a, b)  # truncates toward zero
    return pc.trunc(pc.divide_checked(_real(a), _real(b)))


def _power(a: Value, b: Value) -> Value:
    return pc.power_checked(_real(a), _real(b))


def _join(*parts: Value) -> Value:
    return pc.binary_join_element_wise(*(as_text(p) for p in parts), "")


def _accents_off(value: Value) -> Value:
    decomposed = pc.utf8_normalize(as_text(value), "NFD")
    return pc.replace_substring_regex(decomposed, r"\p{Mn}+", "")


_ARITHMETIC: dict[str, Callable[..., Value]] = {
    "+": pc.add_checked,
    "-": pc.subtract_checked,
    "*": pc.multiply_checked,
    "/": _divide,
    "div": _integer_divide,
    "%": pc.modulo_checked,
    "^": _power,
}
_FUNCTIONS: dict[str, Callable[..., Value]] = {
    "casei": lambda v: pc.utf8_lower(as_text(v)),
    "lower": lambda v: pc.utf8_lower(as_text(v)),
    "strtolowercase": lambda v: pc.utf8_lower(as_text(v)),
    "upper": lambda v: pc.utf8_upper(as_text(v)),
    "strtouppercase": lambda v: pc.utf8_upper(as_text(v)),
    "accenti": _accents_off,
    "concat": _join,
    "strconcat": _join,
    "trim": lambda v: pc.utf8_trim_whitespace(as_text(v)),
    "strtrim": lambda v: pc.utf8_trim_whitespace(as_text(v)),
    "length": lambda v: pc.utf8_length(as_text(v)),
    "strlength": lambda v: pc.utf8_length(as_text(v)),
    "abs": pc.abs_checked,
    "floor": lambda v: pc.floor(_real(v)),
    "ceil": lambda v: pc.ceil(_real(v)),
    # Java's Math.round: halves go up (toward positive infinity).
    "round": lambda v: v if _is_integer(v) else pc.round(v, round_mode="half_up"),
}
