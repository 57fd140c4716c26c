"""Attribute aggregation (count, sum, min, max, avg) for the capabilities that group features:
dissolve, spatial join, point-in-polygon counts, grid and hexagon aggregation.

A config lists ``{"function": "sum", "column": "pop_est", "as": "population"}`` items. Both
engines aggregate alike: ``count`` without a column counts features, with one its
non-null values; ``sum``/``min``/``max``/``avg`` skip nulls and are null over none;
sums of integers are integers, of reals reals; ``avg`` is real; text compares by code
point (``COLLATE "C"`` in PostgreSQL, byte order in Arrow).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from providers.capabilities.model import ARROW_TYPES, INTEGER_KINDS, NUMBER_KINDS, Attribute, Layout, new_name
from providers.capabilities.sql import f, pg_type
from providers.errors import InvalidData

FUNCTIONS = ("count", "sum", "min", "max", "avg")
_ARROW = {"count": "count", "sum": "sum", "min": "min", "max": "max", "avg": "mean"}

ITEM = {
    "type": "object",
    "properties": {
        "function": {"enum": list(FUNCTIONS), "description": "count, sum, min, max or avg"},
        "column": {"type": "string", "minLength": 1, "description": "the attribute (count: optional)"},
        "as": {
            "type": "string",
            "minLength": 1,
            "description": "the output attribute (default function_column)",
        },
    },
    "required": ["function"],
    "additionalProperties": False,
}


def aggregates_property(of: str) -> dict[str, Any]:
    return {
        "type": "array",
        "items": ITEM,
        "maxItems": 50,
        "default": [{"function": "count"}],
        "description": f"what to compute over {of}: count, sum, min, max, avg of their attributes",
    }


@dataclass(frozen=True, slots=True)
class Aggregate:
    function: str
    column: Attribute | None  # None: count(*)
    output: Attribute


def plan(items: Sequence[dict[str, Any]], layout: Layout, field: str) -> list[Aggregate]:
    """The aggregates of a config over features of ``layout``, checked (InvalidData naming the item)."""
    out = []
    for n, item in enumerate(items):
        where = f"{field}[{n}]"
        function = item["function"]
        column = item.get("column")
        attribute = None if column is None else layout.attribute(column, f"{where}.column")
        if attribute is None and function != "count":
            raise InvalidData(f"{where}.column: {function} needs a column")
        if attribute is not None:
            if function in ("sum", "avg") and attribute.kind not in NUMBER_KINDS:
                raise InvalidData(
                    f"{where}.column: {attribute.name!r} holds {attribute.kind}, {function} needs numbers"
                )
            if function in ("min", "max") and attribute.kind in ("boolean", "binary"):
                raise InvalidData(
                    f"{where}.column: {attribute.name!r} holds {attribute.kind}, which has no order"
                )
        default = function if attribute is None else f"{function}_{attribute.name}"
        name = new_name(item.get("as") or default[:63], f"{where}.as")
        out.append(Aggregate(function, attribute, Attribute(name, _kind(function, attribute))))
    return out


def _kind(function: str, attribute: Attribute | None) -> str:
    if function == "count":
        return "bigint"
    assert attribute is not None
    if function == "sum":
        return "bigint" if attribute.kind in INTEGER_KINDS else "double"
    if function == "avg":
        return "double"
    return attribute.kind


def outputs(aggregates: Sequence[Aggregate]) -> list[Attribute]:
    return [a.output for a in aggregates]


# -- SQL ---------------------------------------------------------------------------------------
def sql_columns(
    aggregates: Sequence[Aggregate], value: Callable[[Attribute], sql.Composable]
) -> list[sql.Composable]:
    """``<aggregate> AS <name>`` of each; ``value(attribute)`` is the SQL of an aggregated column."""
    out = []
    for aggregate in aggregates:
        if aggregate.column is None:
            expression: sql.Composable = sql.SQL("count(*)")
        else:
            column = value(aggregate.column)
            if aggregate.function in ("min", "max") and aggregate.column.kind == "text":
                column = f('{} COLLATE "C"', column)
            expression = f("{}({})", sql.SQL(aggregate.function), column)
        out.append(
            f(
                "({})::{} AS {}",
                expression,
                pg_type(aggregate.output.kind),
                sql.Identifier(aggregate.output.name),
            )
        )
    return out


# -- Arrow -------------------------------------------------------------------------------------
def arrow(
    aggregates: Sequence[Aggregate], values: pa.Table, groups: np.ndarray, count: int
) -> dict[str, pa.Array]:
    """Each aggregate over the rows of ``values`` grouped by ``groups`` (group numbers 0..count-1).

    ``values`` holds the aggregated columns by their attribute names. A group without rows
    gets count 0 and null for the others.
    """
    table = values.append_column("__group", pa.array(groups, pa.int64()))
    wanted = sorted({(a.column.name if a.column else "__group", _ARROW[a.function]) for a in aggregates})
    grouped = table.group_by("__group").aggregate(
        [
            (column, function, pc.CountOptions("only_valid")) if function == "count" else (column, function)
            for column, function in wanted
        ]
    )
    present = grouped.column("__group").to_numpy()
    out: dict[str, pa.Array] = {}
    for aggregate in aggregates:
        column = aggregate.column.name if aggregate.column else "__group"
        found = grouped.column(f"{column}_{_ARROW[aggregate.function]}").combine_chunks()
        kind = aggregate.output.kind
        if aggregate.function == "count":
            counts = np.zeros(count, dtype=np.int64)
            counts[present] = found.to_numpy(zero_copy_only=False)
            out[aggregate.output.name] = pa.array(counts, pa.int64())
            continue
        order = np.full(count, -1, dtype=np.int64)
        order[present] = np.arange(len(present))
        taken = found.take(pa.array(order, pa.int64(), mask=order < 0))
        out[aggregate.output.name] = taken.cast(ARROW_TYPES[kind])
    return out
