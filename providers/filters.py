"""Compile a :class:`~providers.base.Query`'s conditions into a SQL ``WHERE`` clause.

One compiler serves every backend: CQL2 (as CQL2 JSON, the standard's own tree),
``bbox``, ``datetime`` and property equality all become the same kind of
expression here. What differs between PostGIS and SQLite (identifier quoting,
bound parameters, spatial and temporal functions) is behind :class:`Dialect`, so
a new predicate is written once.

Every property name is checked against the collection schema before it is turned
into an identifier, and every value is a bound parameter: request input never
becomes SQL text.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import cql2
import orjson

from providers.base import CollectionSchema, Field, Query
from providers.crs import CRS, CRS84
from providers.errors import InvalidQuery

F = TypeVar("F")  # a dialect's SQL fragment type

COMPARISON = {"=": "=", "<>": "<>", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
SPATIAL = {
    "s_intersects",
    "s_disjoint",
    "s_contains",
    "s_within",
    "s_touches",
    "s_crosses",
    "s_overlaps",
    "s_equals",
}
TEMPORAL = {
    "t_after",
    "t_before",
    "t_contains",
    "t_disjoint",
    "t_during",
    "t_equals",
    "t_finishedby",
    "t_finishes",
    "t_intersects",
    "t_meets",
    "t_metby",
    "t_overlappedby",
    "t_overlaps",
    "t_startedby",
    "t_starts",
}
#: Distance within: ``{"op": "s_dwithin", "args": [{"property": geom}, geometry, distance]}``,
#: the distance in units of the filter CRS. Not in CQL2 itself (pygeofilter and
#: ECQL call it DWITHIN); MapFish's ``lon``/``lat``/``tolerance`` compile to it.
DWITHIN = "s_dwithin"
ARITHMETIC = {"+": "+", "-": "-", "*": "*", "/": "/"}
MAX_DEPTH = 64
MAX_NODES = 2000


class Dialect[F](ABC):
    """What one SQL engine needs to say the compiler's expressions.

    Fragments are opaque to the compiler: it only combines them with :meth:`fmt`.
    """

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    @abstractmethod
    def sql(self, text: str) -> F:
        """Trusted SQL text written in our own code."""

    @abstractmethod
    def ident(self, name: str) -> F:
        """A column, already checked against the schema."""

    @abstractmethod
    def placeholder(self, name: str) -> F:
        """The marker of a named bound parameter."""

    @abstractmethod
    def fmt(self, template: str, *parts: F) -> F:
        """``template`` with ``{}`` replaced by fragments, in order."""

    @abstractmethod
    def join(self, parts: Sequence[F], sep: str) -> F:
        """Fragments separated by trusted SQL text."""

    def param(self, value: Any) -> F:
        """Bind ``value``; its name is unique within this compilation."""
        name = f"p{len(self.params)}"
        self.params[name] = value
        return self.placeholder(name)

    # -- engine-specific predicates --------------------------------------------------
    @abstractmethod
    def geometry_literal(self, geojson: dict[str, Any], crs: CRS) -> F:
        """A literal geometry in ``crs`` (lat-first axis order honoured), in storage CRS."""

    @abstractmethod
    def envelope_literal(self, bbox: tuple[float, float, float, float], crs: CRS) -> F:
        """A rectangle given as minx, miny, maxx, maxy in ``crs`` axis order as x/y."""

    @abstractmethod
    def spatial(self, op: str, lhs: F, rhs: F, envelope: tuple | None) -> F:
        """A spatial predicate; ``envelope`` is the literal's box in storage CRS, if known."""

    @abstractmethod
    def dwithin(
        self, column: F, geojson: dict[str, Any], distance: float, crs: CRS, box: tuple[float, ...]
    ) -> F:
        """Rows whose geometry ``column`` lies within ``distance`` of a literal geometry.

        ``geojson`` is in ``crs`` with x/y axis order and ``distance`` in that CRS's
        units (MapFish's ``tolerance`` is in the units of its ``epsg``): the distance is
        measured in that CRS, whatever the storage CRS is. ``box`` (minx, miny, maxx,
        maxy in ``crs``) is the literal's bounds grown by the distance, for the index.
        """

    @abstractmethod
    def like(self, lhs: F, pattern: F) -> F:
        """Case-sensitive LIKE with ``%``, ``_`` and backslash escape, as CQL2 says."""

    @abstractmethod
    def lower(self, expr: F) -> F:
        """CASEI."""

    @abstractmethod
    def time_value(self, expr: F) -> F:
        """Make a temporal column or bound literal comparable in this engine."""

    def temporal_param(self, value: datetime | date) -> F:
        return self.time_value(self.param(value))


def parse_instant(text: str, field: str = "value") -> datetime | date:
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise InvalidQuery(f"{field}: {text[:60]!r} is not an RFC 3339 date or timestamp") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


class Compiler[F]:
    """Turns one query's conditions into a fragment of one dialect."""

    def __init__(self, schema: CollectionSchema, dialect: Dialect[F]) -> None:
        self.schema = schema
        self.d = dialect
        self._nodes = 0
        self._crs = CRS84  # literals are CRS84 unless a query says otherwise (filter-crs)

    # -- entry point -----------------------------------------------------------------
    def where(self, query: Query) -> F | None:
        """All of the query's conditions, AND-ed; None when there are none."""
        parts: list[F] = []
        if query.bbox is not None:
            parts.append(self._bbox(query.bbox, query.bbox_crs))
        if query.datetime is not None and self.schema.time_field:
            start, end = query.datetime
            col = self.d.time_value(self.d.ident(self.schema.time_field))
            if start is not None and start == end:
                parts.append(self.d.fmt("{} = {}", col, self.d.temporal_param(start)))
            else:
                if start is not None:
                    parts.append(self.d.fmt("{} >= {}", col, self.d.temporal_param(start)))
                if end is not None:
                    parts.append(self.d.fmt("{} <= {}", col, self.d.temporal_param(end)))
        for name, value in query.equals.items():
            field = self.schema.check_property(name)
            parts.append(self.d.fmt("{} = {}", self.d.ident(name), self.d.param(self._coerce(field, value))))
        if query.filter is not None:
            self._crs = query.filter_crs
            parts.append(self.expr(query.filter))
        if not parts:
            return None
        return self.d.join([self.d.fmt("({})", p) for p in parts], " AND ")

    # -- pieces ----------------------------------------------------------------------
    def _geometry_column(self) -> F:
        if not self.schema.geometry_field:
            raise InvalidQuery("this collection has no geometry")
        return self.d.ident(self.schema.geometry_field)

    def _bbox(self, bbox: Sequence[float], crs: CRS) -> F:
        if len(bbox) == 6:
            bbox = (bbox[0], bbox[1], bbox[3], bbox[4])
        minx, miny, maxx, maxy = bbox
        if crs.lat_first:
            minx, miny, maxx, maxy = miny, minx, maxy, maxx
        if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)) or miny > maxy:
            raise InvalidQuery("bbox: expected minx,miny,maxx,maxy with miny <= maxy")
        geom = self._geometry_column()
        if minx > maxx and crs.srid == 4326:
            # Crosses the antimeridian: two boxes, as Part 1 allows.
            west = self._box_predicate(geom, (minx, miny, 180.0, maxy))
            east = self._box_predicate(geom, (-180.0, miny, maxx, maxy))
            return self.d.fmt("({} OR {})", west, east)
        if minx > maxx:
            raise InvalidQuery("bbox: minx is greater than maxx")
        return self._box_predicate(geom, (minx, miny, maxx, maxy), crs)

    def _box_predicate(self, geom: F, box: tuple, crs: CRS = CRS84) -> F:
        env = self.d.envelope_literal(box, crs)
        return self.d.spatial("s_intersects", geom, env, (box, crs))

    def _coerce(self, field: Field, value: Any) -> Any:
        """Make a literal match the column's type, or say why it cannot."""
        if value is None:
            return None
        kind = field.type
        try:
            if kind == "integer":
                if isinstance(value, bool):
                    raise ValueError
                number = float(value) if isinstance(value, str) else value
                if isinstance(number, float):
                    if not number.is_integer():
                        return number
                    number = int(number)
                if abs(number) > 2**63 - 1:
                    raise ValueError
                return int(number)
            if kind == "number":
                if isinstance(value, bool):
                    raise ValueError
                return float(value)
            if kind == "boolean":
                if isinstance(value, bool):
                    return value
                if isinstance(value, str) and value.lower() in ("true", "false"):
                    return value.lower() == "true"
                raise ValueError
            if field.format in ("date", "date-time"):
                if isinstance(value, dict):
                    value = value.get("timestamp") or value.get("date")
                if isinstance(value, (datetime, date)):
                    return value
                return parse_instant(str(value), field.name)
            if isinstance(value, (dict, list)):
                raise ValueError
            if isinstance(value, float) and value.is_integer():
                return str(int(value))
            return str(value)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidQuery(
                f"property {field.name!r} is of type {kind}; {str(value)[:60]!r} does not fit"
            ) from exc

    def _field_of(self, node: Any) -> Field | None:
        if isinstance(node, dict) and "property" in node:
            return self.schema.check_property(node["property"])
        return None

    # -- the CQL2 tree ---------------------------------------------------------------
    def expr(self, node: Any, depth: int = 0) -> F:
        self._nodes += 1
        if depth > MAX_DEPTH or self._nodes > MAX_NODES:
            raise InvalidQuery("filter is too deeply nested or too large")
        if isinstance(node, bool):
            return self.d.sql("TRUE" if node else "FALSE")
        if not isinstance(node, dict):
            raise InvalidQuery(f"filter: expected a predicate, got {str(node)[:60]!r}")
        op = node.get("op")
        args = node.get("args")
        if not isinstance(op, str) or not isinstance(args, list):
            raise InvalidQuery("filter: a predicate needs 'op' and 'args'")
        op = op.lower() if op.lower() in SPATIAL | TEMPORAL | {DWITHIN} else op
        if op in ("and", "or"):
            if len(args) < 2:
                raise InvalidQuery(f"filter: {op} needs at least two arguments")
            joined = self.d.join([self.expr(a, depth + 1) for a in args], f" {op.upper()} ")
            return self.d.fmt("({})", joined)
        if op == "not":
            self._arity(op, args, 1)
            return self.d.fmt("(NOT {})", self.expr(args[0], depth + 1))
        if op in COMPARISON:
            self._arity(op, args, 2)
            lhs, rhs = self._pair(args, depth)
            return self.d.fmt("({} " + COMPARISON[op] + " {})", lhs, rhs)
        if op == "like":
            self._arity(op, args, 2)
            lhs, rhs = self._pair(args, depth)
            return self.d.like(lhs, rhs)
        if op == "between":
            self._arity(op, args, 3)
            field = self._field_of(args[0])
            lhs = self.value(args[0], depth + 1)
            low = self.value(args[1], depth + 1, field)
            high = self.value(args[2], depth + 1, field)
            return self.d.fmt("({} BETWEEN {} AND {})", lhs, low, high)
        if op == "in":
            self._arity(op, args, 2)
            if not isinstance(args[1], list) or not args[1]:
                raise InvalidQuery("filter: IN needs a non-empty list")
            field = self._field_of(args[0])
            items = [self.value(v, depth + 1, field) for v in args[1]]
            return self.d.fmt("({} IN ({}))", self.value(args[0], depth + 1), self.d.join(items, ", "))
        if op == "isNull":
            self._arity(op, args, 1)
            return self.d.fmt("({} IS NULL)", self.value(args[0], depth + 1))
        if op in SPATIAL:
            self._arity(op, args, 2)
            return self._spatial(op, args, depth)
        if op in TEMPORAL:
            self._arity(op, args, 2)
            return self._temporal(op, args)
        if op == DWITHIN:
            self._arity(op, args, 3)
            return self._dwithin(args)
        raise InvalidQuery(f"filter: unsupported operator {str(op)[:40]!r}")

    def _arity(self, op: str, args: list, n: int) -> None:
        if len(args) != n:
            raise InvalidQuery(f"filter: {op} takes {n} argument(s), got {len(args)}")

    def _pair(self, args: list, depth: int) -> tuple[F, F]:
        """Two operands, each literal coerced to the type of a property on the other side."""
        left_field, right_field = self._field_of(args[0]), self._field_of(args[1])
        lhs = self.value(args[0], depth + 1, right_field)
        rhs = self.value(args[1], depth + 1, left_field)
        return lhs, rhs

    def value(self, node: Any, depth: int, field: Field | None = None) -> F:
        """A scalar operand: property, literal, CASEI or arithmetic."""
        if isinstance(node, dict):
            if "property" in node:
                name = node["property"]
                if not isinstance(name, str):
                    raise InvalidQuery("filter: property names are strings")
                self.schema.check_property(name)
                return self.d.ident(name)
            if "timestamp" in node or "date" in node:
                text = node.get("timestamp") or node.get("date")
                return self.d.param(parse_instant(str(text)))
            op = node.get("op")
            args = node.get("args")
            if op in ("casei", "accenti", "upper", "lower") and isinstance(args, list):
                self._arity(op, args, 1)
                if op == "accenti":
                    raise InvalidQuery("filter: ACCENTI is not supported")
                if op == "upper":
                    return self.d.fmt("upper({})", self.value(args[0], depth + 1, field))
                return self.d.lower(self.value(args[0], depth + 1, field))
            if op in ARITHMETIC and isinstance(args, list):
                self._arity(op, args, 2)
                lhs = self.value(args[0], depth + 1)
                rhs = self.value(args[1], depth + 1)
                if op == "/":  # CQL2 divides as reals; SQL would truncate two integers
                    return self.d.fmt("(CAST({} AS DOUBLE PRECISION) / {})", lhs, rhs)
                return self.d.fmt("({} " + ARITHMETIC[op] + " {})", lhs, rhs)
            raise InvalidQuery(f"filter: unsupported expression {str(op or node)[:60]!r}")
        if isinstance(node, list):
            raise InvalidQuery("filter: a list is only allowed after IN")
        if field is not None:
            return self.d.param(self._coerce(field, node))
        if isinstance(node, float) and node.is_integer() and abs(node) < 2**53:
            node = int(node)
        return self.d.param(node)

    def _spatial(self, op: str, args: list, depth: int) -> F:
        sides: list[F] = []
        envelope = None
        for arg in args:
            if isinstance(arg, dict) and "property" in arg:
                name = arg["property"]
                if name not in (self.schema.geometry_field, "geometry", "geom"):
                    raise InvalidQuery(f"filter: {str(name)[:60]!r} is not the geometry property")
                sides.append(self._geometry_column())
            elif isinstance(arg, dict) and "bbox" in arg:
                box = arg["bbox"]
                if not isinstance(box, list) or len(box) not in (4, 6):
                    raise InvalidQuery("filter: bbox literal needs 4 or 6 numbers")
                if len(box) == 6:
                    box = [box[0], box[1], box[3], box[4]]
                box = tuple(float(v) for v in box)
                if self._crs.lat_first:
                    box = (box[1], box[0], box[3], box[2])
                envelope = (box, self._crs)
                sides.append(self.d.envelope_literal(box, self._crs))
            elif isinstance(arg, dict) and "type" in arg and ("coordinates" in arg or "geometries" in arg):
                envelope = (_geojson_bounds(arg), self._crs) if envelope is None else envelope
                sides.append(self.d.geometry_literal(arg, self._crs))
            else:
                raise InvalidQuery(f"filter: {op} needs the geometry property and a geometry")
        return self.d.spatial(op, sides[0], sides[1], envelope)

    def _dwithin(self, args: list) -> F:
        prop, geometry, distance = args
        if not isinstance(prop, dict) or prop.get("property") not in (
            self.schema.geometry_field,
            "geometry",
            "geom",
        ):
            raise InvalidQuery("filter: s_dwithin needs the geometry property first")
        if not isinstance(geometry, dict) or "type" not in geometry:
            raise InvalidQuery("filter: s_dwithin needs a GeoJSON geometry second")
        if isinstance(distance, bool) or not isinstance(distance, (int, float)):
            raise InvalidQuery("filter: s_dwithin needs a distance third")
        if not math.isfinite(distance) or distance < 0:
            raise InvalidQuery("filter: the distance must be a finite number, zero or more")
        if self._crs.lat_first:
            geometry = _swap_axes(geometry)
        minx, miny, maxx, maxy = _geojson_bounds(geometry)
        box = (minx - distance, miny - distance, maxx + distance, maxy + distance)
        return self.d.dwithin(self._geometry_column(), geometry, float(distance), self._crs, box)

    def _interval(self, node: Any) -> tuple[F | None, F | None]:
        """(start, end) of a temporal operand; None is an open end."""
        if isinstance(node, dict) and "property" in node:
            field = self.schema.check_property(node["property"])
            if field.format not in ("date", "date-time"):
                raise InvalidQuery(f"filter: {field.name!r} is not a date or timestamp")
            col = self.d.time_value(self.d.ident(field.name))
            return col, col
        if isinstance(node, dict) and ("timestamp" in node or "date" in node):
            value = self.d.temporal_param(parse_instant(str(node.get("timestamp") or node["date"])))
            return value, value
        if isinstance(node, dict) and "interval" in node:
            ends = node["interval"]
            if not isinstance(ends, list) or len(ends) != 2:
                raise InvalidQuery("filter: an interval has two ends")
            out: list[F | None] = []
            for end in ends:
                if end == ".." or end is None:
                    out.append(None)
                elif isinstance(end, dict) and "property" in end:
                    out.append(self._interval(end)[0])
                else:
                    out.append(self.d.temporal_param(parse_instant(str(end))))
            return out[0], out[1]
        raise InvalidQuery("filter: temporal operators need a date/timestamp property or literal")

    def _temporal(self, op: str, args: list) -> F:
        (a0, a1), (b0, b1) = self._interval(args[0]), self._interval(args[1])
        true = self.d.sql("TRUE")
        false = self.d.sql("FALSE")

        def cmp(x: F | None, sign: str, y: F | None, x_is_end: bool, y_is_end: bool) -> F:
            # An open start is -infinity, an open end +infinity.
            if x is None or y is None:
                lo_x = x is None and not x_is_end
                hi_x = x is None and x_is_end
                lo_y = y is None and not y_is_end
                hi_y = y is None and y_is_end
                if sign in ("<", "<="):
                    return true if (lo_x or hi_y) and not (hi_x or lo_y) else false
                if sign in (">", ">="):
                    return true if (hi_x or lo_y) and not (lo_x or hi_y) else false
                return false
            return self.d.fmt("{} " + sign + " {}", x, y)

        def both(*conds: F) -> F:
            return self.d.fmt("({})", self.d.join(list(conds), " AND "))

        rules = {
            "t_after": lambda: cmp(a0, ">", b1, False, True),
            "t_before": lambda: cmp(a1, "<", b0, True, False),
            "t_intersects": lambda: both(cmp(a0, "<=", b1, False, True), cmp(a1, ">=", b0, True, False)),
            "t_disjoint": lambda: self.d.fmt(
                "(NOT {})", both(cmp(a0, "<=", b1, False, True), cmp(a1, ">=", b0, True, False))
            ),
            "t_equals": lambda: both(cmp(a0, "=", b0, False, False), cmp(a1, "=", b1, True, True)),
            "t_during": lambda: both(cmp(a0, ">", b0, False, False), cmp(a1, "<", b1, True, True)),
            "t_contains": lambda: both(cmp(a0, "<", b0, False, False), cmp(a1, ">", b1, True, True)),
            "t_starts": lambda: both(cmp(a0, "=", b0, False, False), cmp(a1, "<", b1, True, True)),
            "t_startedby": lambda: both(cmp(a0, "=", b0, False, False), cmp(a1, ">", b1, True, True)),
            "t_finishes": lambda: both(cmp(a1, "=", b1, True, True), cmp(a0, ">", b0, False, False)),
            "t_finishedby": lambda: both(cmp(a1, "=", b1, True, True), cmp(a0, "<", b0, False, False)),
            "t_meets": lambda: cmp(a1, "=", b0, True, False),
            "t_metby": lambda: cmp(a0, "=", b1, False, True),
            "t_overlaps": lambda: both(
                cmp(a0, "<", b0, False, False), cmp(a1, ">", b0, True, False), cmp(a1, "<", b1, True, True)
            ),
            "t_overlappedby": lambda: both(
                cmp(b0, "<", a0, False, False), cmp(b1, ">", a0, True, False), cmp(b1, "<", a1, True, True)
            ),
        }
        return rules[op]()


def _swap_axes(geometry: dict[str, Any]) -> dict[str, Any]:
    """A GeoJSON geometry with its first two axes swapped (lat/lon to x/y)."""

    def swap(coords: Any) -> Any:
        if isinstance(coords, list) and len(coords) >= 2 and all(isinstance(c, (int, float)) for c in coords):
            return [coords[1], coords[0], *coords[2:]]
        if isinstance(coords, list):
            return [swap(c) for c in coords]
        return coords

    if geometry.get("type") == "GeometryCollection":
        parts = geometry.get("geometries")
        return {**geometry, "geometries": [_swap_axes(g) if isinstance(g, dict) else g for g in parts or []]}
    return {**geometry, "coordinates": swap(geometry.get("coordinates"))}


def _geojson_bounds(geometry: dict[str, Any]) -> tuple[float, float, float, float]:
    """Bounds of a GeoJSON geometry, without building it."""
    xs: list[float] = []
    ys: list[float] = []

    def walk(coords: Any) -> None:
        if isinstance(coords, (list, tuple)) and coords and isinstance(coords[0], (int, float)):
            xs.append(float(coords[0]))
            ys.append(float(coords[1]))
        elif isinstance(coords, (list, tuple)):
            for c in coords:
                walk(c)

    if geometry.get("type") == "GeometryCollection":
        for g in geometry.get("geometries", []):
            walk(g.get("coordinates"))
    else:
        walk(geometry.get("coordinates"))
    if not xs:
        raise InvalidQuery("filter: empty geometry literal")
    return min(xs), min(ys), max(xs), max(ys)


def parse_cql2(text: str, lang: str) -> dict[str, Any]:
    """Parse a CQL2 filter (text or JSON) into the CQL2 JSON tree the compiler reads.

    cql2 (a conformant CQL2 parser) is used instead of pygeofilter's text grammar, which
    rejects the standard's ``T_AFTER(a, b)`` form and ``''`` quote escapes.
    """
    try:
        if lang in ("cql2-json", "cql-json"):
            tree = orjson.loads(text)
            if not isinstance(tree, dict):
                raise InvalidQuery("filter: CQL2 JSON must be an object")
            return cql2.parse_json(orjson.dumps(tree).decode()).to_json()
        return cql2.parse_text(text).to_json()
    except InvalidQuery:
        raise
    except (ValueError, orjson.JSONDecodeError, cql2.ParseError, cql2.ValidationError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "syntax error"
        raise InvalidQuery(f"filter: malformed {lang}: {first[:200]}") from exc
