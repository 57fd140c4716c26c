"""Capabilities over attributes: filter (CQL2), select, rename, compute (a CQL2 expression),
geodesic area and length.

CQL2 is never evaluated as code. In PostGIS the one CQL2 compiler
(:mod:`providers.filters`) turns it into SQL with bound parameters; in Python the CQL2
expression evaluator (:mod:`providers.expressions`) computes it over Arrow columns. A
config may use what both understand, which is checked when it is validated:
comparisons, ``AND``/``OR``/``NOT``, ``LIKE``, ``BETWEEN``, ``IN``, ``IS NULL``,
``+ - * /`` (``/`` always divides as real numbers), ``CASEI``/``LOWER``, properties,
numbers, texts, booleans, dates and timestamps, and the spatial predicates
(``S_INTERSECTS``, ``S_WITHIN`` ...) between the geometry and a literal geometry or
``BBOX`` in CRS84: PostGIS runs them through the compiler, Python evaluates each over the
batch's geometries with shapely first and hands the evaluator the result as a boolean
column.

Areas and lengths are geodesic, on the WGS 84 ellipsoid (GeographicLib in both engines:
PostGIS's ``geography`` functions and pyproj's ``Geod``), whatever the data's CRS.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import cql2
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from psycopg import sql
from pyproj import Geod

from providers import reproject
from providers.capabilities.model import Attribute, Layout, kind_of_arrow, new_name
from providers.capabilities.operation import Operation, column_property, columns_property, schema
from providers.capabilities.sql import SqlStep, compiler_schema, f, pg_type
from providers.capabilities.vector import Frame, VectorStep
from providers.errors import InvalidData, InvalidQuery
from providers.expressions import Expression, compile_text
from providers.filters import SPATIAL, Compiler

#: CQL2 operators both engines evaluate alike: conditions, and value operators.
_CONDITIONS = frozenset(
    {"and", "or", "not", "=", "<>", "!=", "<", "<=", ">", ">=", "like", "between", "in", "isNull"}
)
_VALUES = frozenset({"+", "-", "*", "/", "casei", "lower"})
#: The names a CQL2 text may give the geometry.
GEOMETRY_NAMES = frozenset({"geom", "geometry"})
#: CQL2 spatial predicates -> shapely's vectorised predicate of the same meaning.
_SHAPELY_PREDICATES = {
    "s_intersects": shapely.intersects,
    "s_disjoint": shapely.disjoint,
    "s_contains": shapely.contains,
    "s_within": shapely.within,
    "s_touches": shapely.touches,
    "s_crosses": shapely.crosses,
    "s_overlaps": shapely.overlaps,
    "s_equals": shapely.equals,
}
#: Prefix of the boolean columns the spatial predicates are evaluated into (not a valid attribute name).
_SPATIAL_COLUMN = "spatial__predicate_"
CQL_PROPERTY = {
    "type": ["string", "object"],
    "description": "CQL2 text (e.g. \"pop_est > 1000000 AND continent = 'Asia'\") or CQL2 JSON",
}


def parse_cql(value: Any, field: str) -> Any:
    """The CQL2 JSON tree of CQL2 text or JSON; InvalidData naming ``field`` if it is not one we evaluate."""
    try:
        if isinstance(value, str):
            tree = cql2.parse_text(value).to_json()
        else:
            tree = cql2.parse_json(orjson.dumps(value).decode()).to_json()
    except (cql2.ParseError, cql2.ValidationError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "syntax error"
        raise InvalidData(f"{field}: not CQL2: {first[:200]}") from None
    _check_tree(tree, field, 0)
    return tree


def _check_tree(node: Any, field: str, depth: int) -> None:
    if depth > 50:
        raise InvalidData(f"{field}: the expression is too deeply nested")
    if node is None or isinstance(node, (bool, str, int, float)):
        return
    if isinstance(node, dict) and "property" in node:
        if not isinstance(node["property"], str):
            raise InvalidData(f"{field}: property names are texts")
        return
    if isinstance(node, dict) and ("timestamp" in node or "date" in node):
        return
    if (
        not isinstance(node, dict)
        or not isinstance(node.get("op"), str)
        or not isinstance(node.get("args"), list)
    ):
        raise InvalidData(
            f"{field}: {str(node)[:60]!r} cannot be evaluated here (no geometries or intervals)"
        )
    op = node["op"]
    if op in SPATIAL:
        _spatial_operands(node, field)
        return
    if op not in _CONDITIONS and op not in _VALUES:
        known = ", ".join(sorted(_CONDITIONS | _VALUES))
        raise InvalidData(
            f"{field}: the operator or function {op[:40]!r} is not supported (supported: {known})"
        )
    args = node["args"]
    if op == "in":
        if len(args) != 2 or not isinstance(args[1], list) or not args[1]:
            raise InvalidData(f"{field}: IN needs a value and a non-empty list")
        _check_tree(args[0], field, depth + 1)
        if not all(v is None or isinstance(v, (bool, str, int, float)) for v in args[1]):
            raise InvalidData(f"{field}: the values after IN must be literals")
        return
    for arg in args:
        _check_tree(arg, field, depth + 1)


def _spatial_operands(node: dict[str, Any], field: str) -> tuple[bool, Any]:
    """(whether the geometry comes first, the literal) of a spatial predicate; InvalidData unless
    it compares the geometry with a literal geometry or bbox."""
    args = node["args"]
    geometry = [isinstance(a, dict) and a.get("property") in GEOMETRY_NAMES for a in args]
    if len(args) != 2 or geometry.count(True) != 1:
        raise InvalidData(f"{field}: {node['op']} compares the geometry (geom) with a literal geometry")
    literal = args[1] if geometry[0] else args[0]
    if not isinstance(literal, dict) or not ("bbox" in literal or "type" in literal):
        raise InvalidData(f"{field}: {node['op']} needs a GeoJSON geometry or a BBOX literal")
    return geometry[0], literal


def _literal_geometry(literal: dict[str, Any], field: str) -> shapely.Geometry:
    """A CQL2 geometry or bbox literal (CRS84) as a shapely geometry."""
    try:
        if "bbox" in literal:
            box = [float(v) for v in literal["bbox"]]
            if len(box) == 6:
                box = [box[0], box[1], box[3], box[4]]
            return shapely.box(*box)
        return shapely.from_geojson(orjson.dumps(literal))
    except (TypeError, ValueError, shapely.errors.GEOSException) as exc:
        raise InvalidData(f"{field}: not a geometry: {str(exc)[:100]}") from None


def _properties(node: Any) -> set[str]:
    if isinstance(node, dict):
        if node.get("op") in SPATIAL:
            return set()  # the geometry, not an attribute
        if "property" in node:
            return {node["property"]}
        return set().union(*(_properties(a) for a in node.get("args", []) if isinstance(a, (dict, list))))
    if isinstance(node, list):
        return set().union(*(_properties(a) for a in node))
    return set()


def _renamed(node: Any, names: Mapping[str, str]) -> Any:
    """The tree with each property named as the layout names it."""
    if isinstance(node, dict):
        if node.get("op") in SPATIAL:
            return node
        if "property" in node:
            return {"property": names[node["property"]]}
        if "args" in node:
            return {**node, "args": [_renamed(a, names) for a in node["args"]]}
        return node
    if isinstance(node, list):
        return [_renamed(a, names) for a in node]
    return node


@cache
def _text_of(tree_json: bytes) -> str:
    return cql2.parse_json(tree_json.decode()).to_text()


class _Cql:
    """A checked CQL2 expression bound to a layout: its tree for SQL, its evaluator for Arrow."""

    def __init__(self, value: Any, field: str, layout: Layout) -> None:
        tree = parse_cql(value, field)
        names: dict[str, str] = {}
        for name in sorted(_properties(tree)):
            if name == "id":
                names[name] = "id"
                continue
            names[name] = layout.attribute(name, field).name
        self.tree = _renamed(tree, names)
        self.field = field
        #: The spatial predicates, each evaluated with shapely into a boolean column of its own.
        self.spatial: list[tuple[str, bool, shapely.Geometry]] = []
        try:
            self.expression: Expression = compile_text(
                _text_of(orjson.dumps(self._spatial_columns(self.tree, layout.srid)))
            )
        except InvalidData as exc:
            raise InvalidData(f"{field}: {exc.message}") from None
        self.kind = kind_of_arrow(self.evaluate_empty(layout).type)

    @property
    def is_condition(self) -> bool:
        return isinstance(self.tree, dict) and self.tree.get("op") in _CONDITIONS | SPATIAL

    def _spatial_columns(self, node: Any, srid: int) -> Any:
        """The tree with each spatial predicate replaced by a boolean column of
        :meth:`_spatial_values` (its literal moved from CRS84 into the layout's CRS once)."""
        if isinstance(node, dict) and node.get("op") in SPATIAL:
            first, literal = _spatial_operands(node, self.field)
            shape = reproject.geometries(_literal_geometry(literal, self.field), 4326, srid)
            self.spatial.append((node["op"], first, shape))
            return {"property": f"{_SPATIAL_COLUMN}{len(self.spatial) - 1}"}
        if isinstance(node, dict) and "args" in node:
            return {**node, "args": [self._spatial_columns(a, srid) for a in node["args"]]}
        if isinstance(node, list):
            return [self._spatial_columns(a, srid) for a in node]
        return node

    def _spatial_values(self, name: str, geoms: np.ndarray) -> pa.Array:
        op, first, shape = self.spatial[int(name.removeprefix(_SPATIAL_COLUMN))]
        predicate = _SHAPELY_PREDICATES[op]
        values = predicate(geoms, shape) if first else predicate(shape, geoms)
        return pa.array(values, pa.bool_(), mask=shapely.is_missing(geoms))

    def evaluate_empty(self, layout: Layout) -> pa.Array:
        empty = layout.arrow_schema().empty_table()

        def column(name: str) -> pa.Array:
            if name == "id":
                return pa.array([], pa.int64())
            if name.startswith(_SPATIAL_COLUMN):
                return pa.array([], pa.bool_())
            return empty.column(name)

        return self._evaluate(column, 0)

    def evaluate(self, frame: Frame) -> pa.Array:
        def column(name: str) -> pa.Array:
            if name == "id":
                return pa.array(frame.ids, pa.int64())
            if name.startswith(_SPATIAL_COLUMN):
                return self._spatial_values(name, frame.geoms)
            return frame.column(name).combine_chunks()

        return self._evaluate(column, len(frame))

    def _evaluate(self, columns: Any, length: int) -> pa.Array:
        try:
            return self.expression.evaluate(columns, length)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            message = str(exc).splitlines()[0][:200]
            raise InvalidData(f"{self.field}: cannot evaluate: {message}") from None

    def sql(self, step: SqlStep) -> sql.Composable:
        compiler = Compiler(compiler_schema(step.inp), step.dialect)
        try:
            if self.is_condition:
                return compiler.expr(self.tree)
            return compiler.value(self.tree, 0)
        except InvalidQuery as exc:
            raise InvalidData(f"{self.field}: {exc.message}") from None


class Filter(Operation):
    name = "filter"
    description = "Keep the features matching a CQL2 condition"
    schema = schema(
        "Only the features for which a CQL2 condition is true (null counts as false).",
        {"cql": CQL_PROPERTY},
        ["cql"],
    )

    @classmethod
    def check(cls, config: dict[str, Any]) -> None:
        parse_cql(config["cql"], "config.cql")

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        self.cql = _Cql(self.config["cql"], "config.cql", layout)
        if self.cql.kind != "boolean":
            raise InvalidData("config.cql: is not a condition (true or false)")
        return layout

    def sql(self, step: SqlStep) -> sql.Composable:
        return step.select(sql.SQL("r.geom"), tail=f("WHERE {}", self.cql.sql(step)))

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        keep = pc.fill_null(self.cql.evaluate(frame), False)
        return frame.take(np.flatnonzero(np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)))


class Select(Operation):
    name = "select"
    description = "Keep only some attributes"
    schema = schema(
        "The features with only the listed attributes, in that order (the id and geometry stay).",
        {"columns": columns_property("the attributes to keep", min_items=1)},
        ["columns"],
    )

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        self.kept = [
            layout.attribute(name, f"config.columns[{i}]") for i, name in enumerate(self.config["columns"])
        ]
        return layout.with_attributes(self.kept)

    def sql(self, step: SqlStep) -> sql.Composable:
        columns = [sql.SQL("r.id"), *step.attributes(only=self.kept), sql.SQL("r.geom")]
        return f("SELECT {} FROM {} AS r", sql.SQL(", ").join(columns), step.rel)

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        return frame.replace(table=frame.table.select([a.name for a in self.kept]))


class Rename(Operation):
    name = "rename"
    description = "Rename attributes"
    schema = schema(
        "Attributes renamed (old name: new name); new names are lower-case identifiers.",
        {
            "columns": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 100,
                "additionalProperties": {"type": "string"},
                "description": "old name -> new name",
            }
        },
        ["columns"],
    )

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        renames: dict[str, str] = {}
        for old, new in self.config["columns"].items():
            found = layout.attribute(old, f"config.columns.{old}")
            renames[found.name] = new_name(new, f"config.columns.{old}")
        self.renames = renames
        return layout.with_attributes(
            [Attribute(renames.get(a.name, a.name), a.kind, a.source) for a in layout.attributes]
        )

    def sql(self, step: SqlStep) -> sql.Composable:
        columns = [sql.SQL("r.id")]
        for attribute in step.inp.attributes:
            new = self.renames.get(attribute.name, attribute.name)
            columns.append(f("r.{} AS {}", sql.Identifier(attribute.name), sql.Identifier(new)))
        columns.append(sql.SQL("r.geom"))
        return f("SELECT {} FROM {} AS r", sql.SQL(", ").join(columns), step.rel)

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        return frame.replace(table=frame.table.rename_columns(step.out.names))


class Compute(Operation):
    name = "compute"
    description = "Compute an attribute from a CQL2 expression"
    schema = schema(
        "An attribute set (added, or replaced when it exists) to the value of a CQL2 expression over "
        'the others, e.g. "pop_est / 1000" or "pop_est > 1000000". Its type is the expression\'s.',
        {
            "name": column_property("the attribute to set"),
            "expression": {**CQL_PROPERTY, "description": "CQL2 text or JSON of a value or a condition"},
        },
        ["name", "expression"],
    )

    @classmethod
    def check(cls, config: dict[str, Any]) -> None:
        new_name(config["name"], "config.name")
        parse_cql(config["expression"], "config.expression")

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        self.cql = _Cql(self.config["expression"], "config.expression", layout)
        existing = layout.find(self.config["name"])
        name = existing.name if existing is not None else new_name(self.config["name"], "config.name")
        self.target = Attribute(name, self.cql.kind)
        attributes = [self.target if a.name == name else a for a in layout.attributes]
        if existing is None:
            attributes.append(self.target)
        return layout.with_attributes(attributes)

    def sql(self, step: SqlStep) -> sql.Composable:
        value = f(
            "({})::{} AS {}", self.cql.sql(step), pg_type(self.target.kind), sql.Identifier(self.target.name)
        )
        columns: list[sql.Composable] = [sql.SQL("r.id")]
        for attribute in step.out.attributes:
            if attribute.name == self.target.name:
                columns.append(value)
            else:
                columns.append(f("r.{}", sql.Identifier(attribute.name)))
        columns.append(sql.SQL("r.geom"))
        return f("SELECT {} FROM {} AS r", sql.SQL(", ").join(columns), step.rel)

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        values = self.cql.evaluate(frame)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        names = frame.table.column_names
        if self.target.name in names:
            table = frame.table.set_column(names.index(self.target.name), self.target.name, values)
        else:
            table = frame.table.append_column(self.target.name, values)
        return frame.replace(table=table)


GEOD = Geod(ellps="WGS84")


def _lonlat(geoms: np.ndarray, srid: int) -> np.ndarray:
    if srid == 4326:
        return geoms
    return reproject.geometries(geoms, srid, 4326)


def geodesic_areas(geoms: np.ndarray, srid: int) -> np.ndarray:
    """Square metres of each geometry on the WGS 84 ellipsoid (0 for points and lines; NaN for null)."""
    out = np.full(len(geoms), np.nan)
    oriented = shapely.orient_polygons(_lonlat(geoms, srid), exterior_cw=False)
    for i, geom in enumerate(oriented):
        if geom is not None:
            out[i] = abs(GEOD.geometry_area_perimeter(geom)[0]) if shapely.get_dimensions(geom) == 2 else 0.0
    return out


def geodesic_lengths(geoms: np.ndarray, srid: int) -> np.ndarray:
    """Metres along each line, or around each polygon's rings, on the WGS 84 ellipsoid (0 for points)."""
    out = np.full(len(geoms), np.nan)
    for i, geom in enumerate(_lonlat(geoms, srid)):
        if geom is not None:
            out[i] = GEOD.geometry_length(geom) if not shapely.is_empty(geom) else 0.0
    return out


class _Measure(Operation):
    """Adds one double attribute measured on the ellipsoid."""

    default: str

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        self.target = Attribute(new_name(self.config["name"], "config.name"), "double")
        return layout.with_attributes([*layout.attributes, self.target])

    def geography(self, step: SqlStep) -> sql.Composable:
        geom: sql.Composable = sql.SQL("r.geom")
        if step.inp.srid != 4326:
            geom = f("ST_Transform({}, 4326)", geom)
        return f("geography({})", geom)

    def measure_sql(self, geography: sql.Composable) -> sql.Composable:
        raise NotImplementedError

    def measure(self, geoms: np.ndarray, srid: int) -> np.ndarray:
        raise NotImplementedError

    def sql(self, step: SqlStep) -> sql.Composable:
        value = f("{} AS {}", self.measure_sql(self.geography(step)), sql.Identifier(self.target.name))
        return step.select(sql.SQL("r.geom"), extra=[value])

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        values = self.measure(frame.geoms, step.inp.srid)
        array = pa.array(values, pa.float64(), mask=np.isnan(values))
        return frame.replace(table=frame.table.append_column(self.target.name, array))


def _measure_schema(what: str, default: str) -> dict[str, Any]:
    return schema(
        what,
        {"name": {"type": "string", "default": default, "description": "the attribute that receives it"}},
    )


class Area(_Measure):
    name = "area"
    description = "Geodesic area in square metres"
    schema = _measure_schema("Adds the geometry's area on the WGS 84 ellipsoid, in square metres.", "area")

    def measure_sql(self, geography: sql.Composable) -> sql.Composable:
        return f("ST_Area({})", geography)

    def measure(self, geoms: np.ndarray, srid: int) -> np.ndarray:
        return geodesic_areas(geoms, srid)


class Length(_Measure):
    name = "length"
    description = "Geodesic length (or perimeter) in metres"
    schema = _measure_schema(
        "Adds the geometry's length on the WGS 84 ellipsoid, in metres: a line's length, a polygon's "
        "perimeter (every ring), 0 for points.",
        "length",
    )

    def measure_sql(self, geography: sql.Composable) -> sql.Composable:
        return f("(ST_Length({0}) + ST_Perimeter({0}))", geography)

    def measure(self, geoms: np.ndarray, srid: int) -> np.ndarray:
        return geodesic_lengths(geoms, srid)
