"""Tables of a source as the REST API manages them: list, describe, create from a column spec, drop, truncate.

Table management is a job of its own, next to (not inside) the feature providers: a
provider reads and writes the rows of one published collection; this module knows
which tables a source holds and how to make or remove one. Rows are still read and
written through a :class:`~providers.base.FeatureProvider` built for the table
(:meth:`Tables.provider`), so the REST rows routes share the OGC write path.

The backends live in :mod:`providers.postgis_tables` and
:mod:`providers.geopackage_tables`; what they share (the column spec, its
validation, the description of a table) is here. A table spec from a request is
checked completely before anything touches the database: names must match
:data:`IDENTIFIER` (lower-case, so that PostgreSQL and SQLite, which folds case, agree
on what is a duplicate), reserved names are refused, and types come from a closed list.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from providers.base import FeatureProvider
from providers.errors import InvalidData, InvalidQuery

#: A table or column name the REST API may create: unquoted-SQL safe in both engines.
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

#: The key and geometry columns of every table the REST API creates.
ID_COLUMN = "id"
GEOMETRY_COLUMN = "geom"

#: REST column types (the reference's vocabulary) -> what each engine stores.
COLUMN_TYPES = ("text", "number", "integer", "boolean", "date", "datetime")

#: Geometry types a created table may declare (OGC simple features names).
GEOMETRY_TYPES = (
    "POINT",
    "LINESTRING",
    "POLYGON",
    "MULTIPOINT",
    "MULTILINESTRING",
    "MULTIPOLYGON",
    "GEOMETRYCOLLECTION",
    "GEOMETRY",
)

#: Prefixes of the engines' own tables (catalogs, GeoPackage metadata, R-tree indexes).
RESERVED_PREFIXES = ("pg_", "sqlite_", "gpkg_", "rtree_")
#: PostGIS's own tables and views in the default schema.
RESERVED_TABLES = frozenset(
    {"spatial_ref_sys", "geometry_columns", "geography_columns", "raster_columns", "raster_overviews"}
)
#: Columns every created table has, or that an engine keeps for itself (system columns, rowid).
RESERVED_COLUMNS = frozenset(
    {
        ID_COLUMN,
        GEOMETRY_COLUMN,
        "oid",
        "tableoid",
        "xmin",
        "xmax",
        "cmin",
        "cmax",
        "ctid",
        "rowid",
        "_rowid_",
    }
)
#: A table of more columns than this is not what a REST client means to make.
MAX_COLUMNS = 250


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str
    type: str  # one of COLUMN_TYPES
    not_null: bool = False


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A table to create, checked: every name and type is safe to put in DDL."""

    name: str
    geometry: str | None  # one of GEOMETRY_TYPES, None for a table without geometry
    srid: int
    columns: tuple[ColumnSpec, ...]


@dataclass(slots=True)
class Column:
    """One attribute column as the REST API describes it."""

    type: str  # a COLUMN_TYPES name when the native type maps to one, else the native name
    not_null: bool
    native_type: str

    def document(self) -> dict[str, Any]:
        return {"type": self.type, "not_null": self.not_null}


@dataclass(slots=True)
class TableInfo:
    """What a source says about one table: the REST table representation's content."""

    name: str
    schema: str
    primary_key: str | None
    geometry: str | None  # POINT, MULTIPOLYGON, GEOMETRY ... None without a geometry column
    geometry_column: str | None
    srid: int | None
    columns: dict[str, Column] = field(default_factory=dict)  # without key and geometry
    is_view: bool = False
    num_rows: int | None = None

    @property
    def spatial(self) -> bool:
        return self.geometry_column is not None

    def document(self) -> dict[str, Any]:
        """The table as the reference's ``tables/{name}`` answers it."""
        out: dict[str, Any] = {
            "name": self.name,
            "geometry": self.geometry,
            "srid": self.srid,
            "columns": {name: column.document() for name, column in self.columns.items()},
            "primary_key": self.primary_key,
            "schema": self.schema,
            "is_view": self.is_view,
        }
        if self.num_rows is not None:
            out["num_rows"] = self.num_rows
        return out


def check_name(name: Any, what: str = "table") -> str:
    """``name`` if a table (or column) may be created with it; InvalidQuery (400) otherwise."""
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        shown = repr(name)[:80]
        raise InvalidQuery(
            f"{what} name {shown} is not allowed: use 1-63 lower-case letters, digits and '_', "
            "not starting with a digit"
        )
    if what == "table" and (name in RESERVED_TABLES or name.startswith(RESERVED_PREFIXES)):
        raise InvalidQuery(f"table name {name!r} is reserved")
    if what == "column" and (name in RESERVED_COLUMNS or name.startswith("__")):
        raise InvalidQuery(f"column name {name!r} is reserved")
    return name


def parse_table_spec(body: dict[str, Any]) -> TableSpec:
    """The table a create request asks for, or a 400 (names) / 422 (anything else) saying why.

    Body: ``{"name", "geometry": "POINT" | ... | null, "srid": 4326, "columns":
    {"<name>": {"type": "text" | "number" | "integer" | "boolean" | "date" | "datetime",
    "not_null": false}}}``; a column may also be given as its type alone (``"name": "text"``).
    """
    name = check_name(body.get("name"))
    geometry = body.get("geometry")
    if geometry is not None:
        if not isinstance(geometry, str) or geometry.upper() not in GEOMETRY_TYPES:
            raise InvalidData(f"geometry must be null or one of {', '.join(GEOMETRY_TYPES)}")
        geometry = geometry.upper()
    srid = body.get("srid", 4326)
    if isinstance(srid, str) and srid.strip().isdigit():
        srid = int(srid)
    if isinstance(srid, bool) or not isinstance(srid, int) or not 0 < srid < 1_000_000:
        raise InvalidData("srid must be a positive EPSG code")
    raw = body.get("columns", {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidData('columns must be an object of column name -> {"type": ...}')
    if len(raw) > MAX_COLUMNS:
        raise InvalidData(f"a table may have at most {MAX_COLUMNS} columns")
    columns = []
    for column_name, spec in raw.items():
        check_name(column_name, "column")
        if isinstance(spec, str):
            spec = {"type": spec}
        if not isinstance(spec, dict):
            raise InvalidData(f"column {column_name!r}: expected an object with a 'type'")
        kind = spec.get("type")
        if not isinstance(kind, str) or kind.lower() not in COLUMN_TYPES:
            raise InvalidData(
                f"column {column_name!r}: unknown type {str(kind)[:40]!r}; "
                f"use one of {', '.join(COLUMN_TYPES)}"
            )
        not_null = spec.get("not_null", False)
        if not isinstance(not_null, bool):
            raise InvalidData(f"column {column_name!r}: not_null must be true or false")
        columns.append(ColumnSpec(column_name, kind.lower(), not_null))
    return TableSpec(name, geometry, srid, tuple(columns))


class Tables(ABC):
    """The tables of one source, in the place where the REST API keeps them.

    A PostGIS source's default schema (``public``) or a GeoPackage file's user tables.
    Names passed in are looked up in the source's catalog with bound parameters
    (reads) or were checked by :func:`check_name` (creates), so any string is safe
    here: an unknown one is simply NotFound.
    """

    #: The name the catalog lists the tables' place under (``public``, ``main``).
    schema: str

    @abstractmethod
    def names(self, spatial: bool | None = None) -> list[str]:
        """Table names, sorted; only spatial (True) or non-spatial (False) ones if asked."""

    @abstractmethod
    def describe(self, name: str, count: bool = False) -> TableInfo:
        """One table; with ``count`` its exact number of rows. NotFound if there is none."""

    @abstractmethod
    def create(self, spec: TableSpec) -> TableInfo:
        """Create the table (key ``id``, geometry ``geom`` with its spatial index) in one transaction.

        Conflict when the name is taken, InvalidData when the SRID is unknown.
        """

    @abstractmethod
    def drop(self, name: str) -> None:
        """Remove the table and everything the source keeps about it."""

    @abstractmethod
    def truncate(self, name: str) -> None:
        """Delete every row (the table stays), counted as a write so cached tiles refresh."""

    @abstractmethod
    def provider(self, name: str, editable: bool) -> FeatureProvider:
        """A feature provider over the table, with or without geometry, for its rows."""

    @abstractmethod
    def layer_options(self, name: str) -> dict[str, str]:
        """How a layer record names this table: ``{"table": ...}`` or ``{"layer": ...}``."""

    @abstractmethod
    def is_layer_of(self, body: dict[str, Any], name: str) -> bool:
        """Whether a layer record's body (of this source) publishes table ``name``."""


def rest_type(native: str) -> str:
    """The REST column type of a native type name (PostgreSQL's or GeoPackage's)."""
    base = native.split("(", 1)[0].strip().lower()
    if base in ("text", "varchar", "character varying", "char", "bpchar", "name", "citext"):
        return "text"
    if base in ("int", "int2", "int4", "int8", "integer", "smallint", "mediumint", "tinyint", "bigint"):
        return "integer"
    if base in ("float4", "float8", "numeric", "real", "double", "float", "double precision", "decimal"):
        return "number"
    if base in ("bool", "boolean"):
        return "boolean"
    if base == "date":
        return "date"
    if base in ("timestamp", "timestamptz", "datetime"):
        return "datetime"
    return base


def tables_of(source: Any, source_name: str) -> Tables:
    """The table manager of a configured source (a PostGISDatabase or a GeoPackage)."""
    from providers.postgis import PostGISDatabase

    if isinstance(source, PostGISDatabase):
        from providers.postgis_tables import PostGISTables

        return PostGISTables(source, source_name)
    from providers.geopackage_tables import GeoPackageTables

    return GeoPackageTables(source, source_name)
