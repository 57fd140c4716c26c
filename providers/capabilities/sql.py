"""The PostGIS engine's pieces: how a collection, a step and a chain become SQL.

A chain runs inside PostGIS as ONE statement: the source collection is the first CTE,
each step a CTE selecting from the one before (``id``, the attributes, ``geom``), and
the last SELECT casts every column to the type its kind names and the geometry to the
declared type. Everything is composed with :mod:`psycopg.sql`: table and column names
are identifiers (read from the catalog or checked config names), numbers from a
validated config are literals, and text from a config (CQL2 literals) is a bound
parameter of the statement's one :class:`CapabilityDialect`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from psycopg import sql

from providers.base import CollectionSchema, Field
from providers.capabilities.model import MULTI, Attribute, Layout
from providers.crs import from_srid
from providers.load_postgis import PG_TYPES
from providers.postgis import PostGISDialect, PostGISProvider

#: Source column types read as they are; any other becomes the kind's type (numeric: double, else text).
_AS_IS = frozenset(
    {
        "int2",
        "int4",
        "int8",
        "float4",
        "float8",
        "bool",
        "text",
        "date",
        "timestamp",
        "timestamptz",
        "time",
        "bytea",
    }
)
_JSON_TYPES = {
    "smallint": ("integer", None),
    "integer": ("integer", None),
    "bigint": ("integer", None),
    "real": ("number", None),
    "double": ("number", None),
    "boolean": ("boolean", None),
    "date": ("string", "date"),
    "timestamp": ("string", "date-time"),
    "timestamptz": ("string", "date-time"),
}


def f(template: str, *parts: sql.Composable, **named: sql.Composable) -> sql.Composed:
    """``sql.SQL(template).format(...)``: trusted text around composed parts."""
    return sql.SQL(template).format(*parts, **named)


def pg_type(kind: str) -> sql.SQL:
    return sql.SQL(PG_TYPES[kind])


class CapabilityDialect(PostGISDialect):
    """The filter compiler's PostGIS dialect, with CQL2's real division.

    CQL2's ``/`` divides as numbers do; PostgreSQL's ``/`` of two integers truncates, so a
    quotient is made double precision first (the Python engine's Arrow division agrees).
    """

    def fmt(self, template: str, *parts: sql.Composable) -> sql.Composable:
        if template == "({} / {})":
            template = "({}::double precision / {})"
        return super().fmt(template, *parts)


def compiler_schema(layout: Layout) -> CollectionSchema:
    """A collection schema of a step's input, for the filter compiler (which checks every name)."""
    fields = {}
    for attribute in layout.attributes:
        kind, fmt = _JSON_TYPES.get(attribute.kind, ("string", None))
        fields[attribute.name] = Field(attribute.name, kind, fmt, True, PG_TYPES[attribute.kind])
    return CollectionSchema(
        id_field="id",
        geometry_field="geom",
        geometry_type=layout.geometry_type,
        storage_crs=from_srid(layout.srid),
        fields=fields,
    )


# -- collections ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Collection:
    """A PostGIS collection read by a chain: its table, key, geometry and attributes."""

    provider: PostGISProvider
    layout: Layout

    @property
    def table(self) -> sql.Identifier:
        return self.provider.ref.ident

    @property
    def id(self) -> sql.Identifier:
        return sql.Identifier(self.provider.schema.id_field)

    @property
    def geom_column(self) -> sql.Identifier:
        return sql.Identifier(self.provider.schema.geometry_field or "geom")

    def value(self, alias: str, attribute: Attribute) -> sql.Composable:
        """``alias.column`` of ``attribute`` as its kind's type."""
        column = f("{}.{}", sql.Identifier(alias), sql.Identifier(attribute.source))
        native = self.provider.schema.fields[attribute.source].native_type
        if native in _AS_IS:
            return column
        return f("{}::{}", column, pg_type(attribute.kind))

    def select(self, ids: Sequence[int] | None) -> sql.Composed:
        """The first CTE of a chain: every feature (or those of ``ids``): ``id``, attributes, 2D ``geom``."""
        parts = [f("t.{}::bigint AS id", self.id)]
        parts += [f("{} AS {}", self.value("t", a), sql.Identifier(a.name)) for a in self.layout.attributes]
        parts.append(f("ST_Force2D(t.{}) AS geom", self.geom_column))
        where = sql.SQL("")
        if ids is not None:
            where = f(" WHERE t.{} = ANY({}::bigint[])", self.id, sql.Placeholder("ids"))
        return f("SELECT {} FROM {} AS t{}", sql.SQL(", ").join(parts), self.table, where)

    # -- as the other collection of a step (index-friendly: its geometry column is used bare)
    def geom_in(self, alias: str, srid: int) -> sql.Composable:
        """Its geometry in EPSG:``srid`` (2D)."""
        geom = f("ST_Force2D({}.{})", sql.Identifier(alias), self.geom_column)
        if srid != self.layout.srid:
            geom = f("ST_Transform({}, {})", geom, sql.Literal(srid))
        return geom

    def near(self, alias: str, box: sql.Composable, srid: int) -> sql.Composable:
        """``alias.geom && box`` (``box`` in EPSG:``srid``), written so the collection's index serves."""
        if srid != self.layout.srid:
            box = f("ST_Transform({}, {})", box, sql.Literal(self.layout.srid))
        return f("{}.{} && {}", sql.Identifier(alias), self.geom_column, box)


@dataclass(slots=True)
class SqlStep:
    """What a capability's SQL builder gets: its input CTE, layouts, the statement's dialect, others."""

    rel: sql.Identifier
    inp: Layout
    out: Layout
    dialect: CapabilityDialect
    others: Mapping[str, Collection] = field(default_factory=dict)

    def attributes(self, alias: str = "r", only: Sequence[Attribute] | None = None) -> list[sql.Composable]:
        """``alias.name`` of each input attribute (or of ``only``)."""
        chosen = self.inp.attributes if only is None else only
        return [f("{}.{}", sql.Identifier(alias), sql.Identifier(a.name)) for a in chosen]

    def select(
        self, geom: sql.Composable, extra: Sequence[sql.Composable] = (), tail: sql.Composable | None = None
    ) -> sql.Composed:
        """``SELECT r.id, r.<attributes>, <extra>, <geom> AS geom FROM <input> AS r <tail>``."""
        columns = [sql.SQL("r.id"), *self.attributes(), *extra, f("{} AS geom", geom)]
        return f(
            "SELECT {} FROM {} AS r{}",
            sql.SQL(", ").join(columns),
            self.rel,
            sql.SQL("") if tail is None else f(" {}", tail),
        )

    def other(self, collection: str) -> Collection:
        return self.others[collection]


def output(layout: Layout, rel: sql.Identifier) -> sql.Composed:
    """The last SELECT of a chain: columns cast to their kinds' types, the geometry fitted to its type."""
    geom: sql.Composable = sql.SQL("ST_Force2D(geom)")
    if layout.geometry_type in MULTI:
        geom = f("ST_Multi({})", geom)
    columns = [sql.SQL("id::bigint")]
    columns += [f("{}::{}", sql.Identifier(a.name), pg_type(a.kind)) for a in layout.attributes]
    columns.append(geom)
    return f("SELECT {} FROM {}", sql.SQL(", ").join(columns), rel)


def text_order(attribute: Attribute, expression: sql.Composable) -> sql.Composable:
    """An ORDER BY / GROUP BY term that sorts text by code point, as Python and Arrow do."""
    if attribute.kind == "text":
        return f('{} COLLATE "C"', expression)
    return expression
