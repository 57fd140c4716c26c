"""What flows between the steps of a chain: the layout of the features, and the geometry types.

A chain is planned before anything runs: each step is bound to the :class:`Layout` it
receives (attribute names and kinds, declared geometry type, SRID, whether rows still
carry their source ids) and returns the layout it hands on. Both engines follow the
same plan: the PostGIS statement casts every output column to the type its kind names,
the Python engine builds Arrow arrays of that kind, so a chain makes the same table
whichever engine runs it.

Column kinds are the loader's (:data:`providers.loader.KINDS`, less ``json``: JSON
attributes travel as text). Geometries are 2D throughout; a declared ``MULTI*`` type
means every single geometry is wrapped into a one-part multi on output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from providers.errors import InvalidData, InvalidQuery
from providers.loader import ARROW_TYPES
from providers.tables import check_name

INTEGER_KINDS = frozenset({"smallint", "integer", "bigint"})
NUMBER_KINDS = INTEGER_KINDS | {"real", "double"}

#: PostgreSQL type names (pg_type.typname) -> kind; anything else is read as text.
_PG_KINDS = {
    "int2": "smallint",
    "int4": "integer",
    "int8": "bigint",
    "float4": "real",
    "float8": "double",
    "numeric": "double",
    "bool": "boolean",
    "text": "text",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "time": "time",
    "bytea": "binary",
}
#: GeoPackage column types (without a length) -> kind; anything else is read as text.
_GPKG_KINDS = {
    "INTEGER": "bigint",
    "INT": "bigint",
    "BIGINT": "bigint",
    "MEDIUMINT": "integer",
    "SMALLINT": "smallint",
    "TINYINT": "smallint",
    "BOOLEAN": "boolean",
    "REAL": "double",
    "DOUBLE": "double",
    "FLOAT": "real",
    "TEXT": "text",
    "DATE": "date",
    "DATETIME": "timestamptz",
    "BLOB": "binary",
}


def kind_of_pg(typname: str) -> str:
    return _PG_KINDS.get(typname, "text")


def kind_of_gpkg(native: str) -> str:
    return _GPKG_KINDS.get(native.split("(", 1)[0].strip().upper(), "text")


def kind_of_arrow(data_type: pa.DataType) -> str:
    """The kind of an Arrow type a computation produced (nested and null types become text)."""
    for kind, arrow in ARROW_TYPES.items():
        if data_type == arrow:
            return kind
    t = pa.types
    if t.is_integer(data_type):
        return "bigint"
    if t.is_floating(data_type) or t.is_decimal(data_type):
        return "double"
    if t.is_timestamp(data_type):
        return "timestamptz" if data_type.tz else "timestamp"
    if t.is_date(data_type):
        return "date"
    if t.is_binary(data_type) or t.is_large_binary(data_type):
        return "binary"
    return "text"


# -- geometry types ------------------------------------------------------------------------
SINGLE = ("POINT", "LINESTRING", "POLYGON")
MULTI = ("MULTIPOINT", "MULTILINESTRING", "MULTIPOLYGON")
GENERIC = "GEOMETRY"
_DIMENSION = {name: i for i, name in enumerate(SINGLE)} | {name: i for i, name in enumerate(MULTI)}


def base_type(declared: str | None) -> str:
    """A declared geometry type without Z/M suffix; GEOMETRY for anything not a simple feature type."""
    text = (declared or GENERIC).upper().replace(" ", "")
    for suffix in ("ZM", "Z", "M"):
        if text.endswith(suffix) and text.removesuffix(suffix) in _DIMENSION:
            text = text.removesuffix(suffix)
            break
    return text if text in _DIMENSION else GENERIC


def dimension(geometry_type: str) -> int | None:
    """0 points, 1 lines, 2 polygons; None for GEOMETRY (mixed or collections)."""
    return _DIMENSION.get(geometry_type)


def multi_type(geometry_type: str) -> str:
    """The multi type of the type's dimension (GEOMETRY stays GEOMETRY)."""
    dim = dimension(geometry_type)
    return GENERIC if dim is None else MULTI[dim]


def single_type(geometry_type: str) -> str:
    dim = dimension(geometry_type)
    return GENERIC if dim is None else SINGLE[dim]


def type_of_dimension(dim: int | None, multi: bool = True) -> str:
    if dim is None:
        return GENERIC
    return MULTI[dim] if multi else SINGLE[dim]


# -- the data between two steps ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Attribute:
    """An attribute column: its name in the output (a safe identifier), its kind, and the name
    the source collection gives it ("" when a step made it)."""

    name: str
    kind: str
    source: str = ""


@dataclass(frozen=True, slots=True)
class Layout:
    """The features at one point of a chain (the id ``id`` and geometry ``geom`` are implied)."""

    attributes: tuple[Attribute, ...]
    geometry_type: str
    srid: int
    #: Rows still carry the id of the source feature they come from.
    keeps_ids: bool = True

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def find(self, name: str) -> Attribute | None:
        """The attribute ``name`` means: by output name, else by the source's name for it."""
        for attribute in self.attributes:
            if attribute.name == name:
                return attribute
        for attribute in self.attributes:
            if attribute.source == name:
                return attribute
        return None

    def attribute(self, name: Any, field: str) -> Attribute:
        """:meth:`find`, or InvalidData naming the config ``field`` and the attributes there are."""
        found = self.find(name) if isinstance(name, str) else None
        if found is None:
            names = ", ".join(self.names[:40]) or "none"
            raise InvalidData(f"{field}: {str(name)[:100]!r} is not an attribute (attributes: {names})")
        return found

    def with_attributes(self, attributes: list[Attribute] | tuple[Attribute, ...], **changes: Any) -> Layout:
        """This layout with other attributes (checked for duplicates) and other fields changed."""
        seen: set[str] = set()
        for attribute in attributes:
            if attribute.name in seen:
                raise InvalidData(f"the output would have two attributes named {attribute.name!r}")
            seen.add(attribute.name)
        return dataclasses.replace(self, attributes=tuple(attributes), **changes)

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(a.name, ARROW_TYPES[a.kind]) for a in self.attributes])


def new_name(name: Any, field: str) -> str:
    """A column name a config gives (``as``, ``name``, a rename), checked like a created table's columns."""
    try:
        return check_name(name, "column")
    except InvalidQuery as exc:
        raise InvalidData(f"{field}: {exc.message}") from None
