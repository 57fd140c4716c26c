"""The importer's transforms: steps that change a layer's features on their way into a table.

GeoServer's importer lets a task carry a chain of transforms (the spec's
"Transformation reference"): cast an attribute, compute one from an expression, build
points from latitude and longitude columns, parse dates, reproject, index a column.
Each is a small immutable value (:class:`Transform`) parsed from, and written back to,
the spec's JSON (:func:`parse`, :meth:`Transform.to_json`, :func:`updated` for a PUT).

The loader runs them while it streams the file (:func:`providers.loader.open_plan`).
Planning binds each transform to the layout of the data it receives
(:class:`Layout`: the Arrow schema of the batches, the target's columns, the geometry
and its CRS) and gets back the layout it hands on plus a *step*, a function from one
record batch to the next. The chain is planned once, before any row is written: an
unknown field, a type that does not convert or an expression whose operands do not
go together is refused then (every step is also run on an empty batch, so Arrow
checks the types). The steps then run a batch at a time, vectorised with
``pyarrow.compute``, numpy, shapely and pyproj; a value that does not convert is an
:class:`~providers.errors.InvalidData` naming the transform, the field, the row (1 is
the layer's first feature) and the value, never a silent NULL.

Choices where GeoServer leaves one:

* Dates (DateFormatTransform, remaps to ``java.util.Date``/``java.sql.Timestamp``) are
  stored as ``timestamptz`` (a Java Date is an instant); a text without a zone is taken
  as UTC. Parsing is strict: ``31/02/2020`` is an error, not the 2nd of March.
* AttributesToPointGeometryTransform takes the coordinates as WGS 84 longitudes and
  latitudes (EPSG:4326) when nothing else says the data's CRS (the file, the srs, the
  source of a ReprojectTransform), as latitude and longitude columns are.
* IntegerFieldToDateTransform makes a ``date`` (1 January of the year), not a timestamp.
* AttributeRemapTransform refuses to drop a fraction (``2.5`` is not an Integer);
  AttributeComputeTransform truncates toward zero like Java's ``intValue()``, so
  ``POP_EST / 1000`` into an Integer is the population in thousands.
* Blank texts are NULL when a text column becomes a number, boolean or date.
* CreateIndexTransform on the geometry does nothing: the spatial index always exists.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError

from providers.errors import InvalidData
from providers.expressions import Expression, as_text, compile_text
from providers.loader import ARROW_TYPES, Column, NoCRS, kind_of_arrow, safe_name
from providers.tables import GEOMETRY_COLUMN

#: One step of a planned chain: (batch, index of its first row in the layer) -> batch.
Step = Callable[[pa.RecordBatch, int], pa.RecordBatch]

# -- Java classes ------------------------------------------------------------------------------
#: Loader column kind -> the Java class GeoServer reports as an attribute's binding.
JAVA_BINDINGS: dict[str, str] = {
    "smallint": "java.lang.Short",
    "integer": "java.lang.Integer",
    "bigint": "java.lang.Long",
    "real": "java.lang.Float",
    "double": "java.lang.Double",
    "boolean": "java.lang.Boolean",
    "text": "java.lang.String",
    "date": "java.sql.Date",
    "timestamp": "java.sql.Timestamp",
    "timestamptz": "java.sql.Timestamp",
    "time": "java.sql.Time",
    "binary": "[B",
    "json": "java.lang.String",
}
#: Java class -> the column kind it becomes (a Java Date is an instant: timestamptz).
_JAVA_KINDS: dict[str, str] = {
    "java.lang.String": "text",
    "java.lang.Short": "smallint",
    "java.lang.Byte": "smallint",
    "java.lang.Integer": "integer",
    "java.lang.Long": "bigint",
    "java.math.BigInteger": "bigint",
    "java.lang.Float": "real",
    "java.lang.Double": "double",
    "java.math.BigDecimal": "double",
    "java.lang.Number": "double",
    "java.lang.Boolean": "boolean",
    "java.util.Date": "timestamptz",
    "java.sql.Timestamp": "timestamptz",
    "java.sql.Date": "date",
    "java.sql.Time": "time",
    "[B": "binary",
}
#: Short and primitive names a client may write -> the full class name.
_JAVA_SHORT: dict[str, str] = {
    **{name.rsplit(".", 1)[-1].lower(): name for name in _JAVA_KINDS if "." in name},
    "date": "java.util.Date",
    "int": "java.lang.Integer",
    "byte[]": "[B",
}
_GEOMETRY_CLASSES = {
    "POINT": "Point",
    "LINESTRING": "LineString",
    "POLYGON": "Polygon",
    "MULTIPOINT": "MultiPoint",
    "MULTILINESTRING": "MultiLineString",
    "MULTIPOLYGON": "MultiPolygon",
    "GEOMETRYCOLLECTION": "GeometryCollection",
    "GEOMETRY": "Geometry",
}
_JTS = "org.locationtech.jts.geom."


def geometry_binding(geometry_type: str) -> str:
    """The JTS class of a geometry column type (``MULTIPOLYGON``, ``POINTZ`` ...)."""
    text = geometry_type.upper().replace(" ", "")
    for suffix in ("ZM", "Z", "M"):
        if text.removesuffix(suffix) in _GEOMETRY_CLASSES:
            text = text.removesuffix(suffix)
            break
    return _JTS + _GEOMETRY_CLASSES.get(text, "Geometry")


def java_class(name: str) -> str:
    """The full name of an attribute class, given fully or shortly (``Integer``, ``int``).

    InvalidData for an unknown class or a geometry class.
    """
    text = name.strip()
    if text in _JAVA_KINDS:
        return text
    full = _JAVA_SHORT.get(text.lower())
    if full is not None:
        return full
    if text.startswith(_JTS) or text.startswith("com.vividsolutions.jts.geom."):
        raise InvalidData(f"{text[:100]!r} is a geometry class, not an attribute type")
    known = ", ".join(sorted(n for n in _JAVA_KINDS if n != "java.lang.Number"))
    raise InvalidData(f"unknown Java class {text[:100]!r}; use one of {known}")


def kind_of_java(name: str) -> str:
    """The column kind of a Java class (full or short name); InvalidData if it is not an attribute type."""
    return _JAVA_KINDS[java_class(name)]


# -- the data between two steps ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Layout:
    """The data at one point of the chain.

    ``schema`` is that of the record batches there; each column's ``source`` is its
    name in them, ``name`` its name in the target table. ``geometry_column`` names the
    batches' WKB column (None: the file has none yet). ``crs`` is the data's CRS as
    text (``EPSG:n`` or WKT; None: unknown). ``indexes`` are target columns to index.
    """

    schema: pa.Schema
    columns: tuple[Column, ...]
    geometry_column: str | None
    geometry_type: str
    dimensions: str
    crs: str | None
    indexes: tuple[str, ...] = ()

    def find(self, name: str) -> Column | None:
        """The column a client means by ``name``: its name in the file, else in the table, else either
        ignoring case when only one column answers."""
        for column in self.columns:
            if column.source == name:
                return column
        for column in self.columns:
            if column.name == name:
                return column
        folded = name.casefold()
        matches = [c for c in self.columns if folded in (c.source.casefold(), c.name.casefold())]
        return matches[0] if len(matches) == 1 else None

    def column(self, name: str, what: str) -> Column:
        """:meth:`find`, or InvalidData naming ``what`` (``"AttributeRemapTransform: field"``)."""
        found = self.find(name)
        if found is None:
            names = ", ".join(c.source for c in self.columns[:40]) or "none"
            raise InvalidData(f"{what} {name[:100]!r} is not an attribute of the layer (attributes: {names})")
        return found

    def free_key(self, wanted: str) -> str:
        """A name for a new column of the batches that none of theirs has."""
        taken = set(self.schema.names)
        candidate, n = wanted, 1
        while candidate in taken:
            n += 1
            candidate = f"{wanted}_{n}"
        return candidate


# -- transforms --------------------------------------------------------------------------------
class Transform(ABC):
    """One step of an import's chain, as the spec's JSON describes it; immutable.

    Subclasses are frozen dataclasses whose fields are the JSON parameters
    (:attr:`PARAMS` maps each JSON name to the field and whether it is required), all
    strings; ``__post_init__`` checks and normalises them.
    """

    type: ClassVar[str]
    PARAMS: ClassVar[dict[str, tuple[str, bool]]]

    def to_json(self) -> dict[str, Any]:
        """The spec's JSON representation (without ``href``, which the importer adds)."""
        return {"type": self.type, **{key: getattr(self, attr) for key, (attr, _) in self.PARAMS.items()}}

    @abstractmethod
    def bind(self, layout: Layout) -> tuple[Layout, Step | None]:
        """The layout after this transform, and the step that maps a batch of ``layout`` (None: none needed).

        Column kinds in the returned layout need not be right: :func:`chain` reads them
        off the batches the step makes.
        """

    def _what(self, param: str) -> str:
        return f"{self.type}: {param}"


@dataclass(frozen=True, slots=True)
class AttributeRemapTransform(Transform):
    """Casts ``field`` to the Java class ``target`` (``java.lang.Integer`` ...)."""

    type: ClassVar[str] = "AttributeRemapTransform"
    PARAMS: ClassVar[dict[str, tuple[str, bool]]] = {"field": ("field", True), "target": ("target", True)}
    field: str
    target: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", _java_param(self, "target", self.target))

    def bind(self, layout: Layout) -> tuple[Layout, Step | None]:
        column = layout.column(self.field, self._what("field"))
        kind = kind_of_java(self.target)
        what = f"{self.type}: {self.field!r}"

        def step(batch: pa.RecordBatch, first_row: int) -> pa.RecordBatch:
            values = converted(batch.column(column.source), kind, what, first_row, java=self.target)
            return _set(batch, column.source, values)

        return layout, step


@dataclass(frozen=True, slots=True)
class AttributeComputeTransform(Transform):
    """Sets ``field`` (new or replaced) to a CQL2 expression over the other fields, of class ``fieldType``."""

    type: ClassVar[str] = "AttributeComputeTransform"
    PARAMS: ClassVar[dict[str, tuple[str, bool]]] = {
        "field": ("field", True),
        "fieldType": ("field_type", True),
        "cql": ("cql", True),
    }
    field: str
    field_type: str
    cql: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "field_type", _java_param(self, "fieldType", self.field_type))
        self.expression()

    def expression(self) -> Expression:
        try:
            return compile_text(self.cql)
        except InvalidData as exc:
            raise InvalidData(f"{self.type}: cql: {exc.message}") from None

    def bind(self, layout: Layout) -> tuple[Layout, Step | None]:
        expression = self.expression()
        keys: dict[str, str] = {}
        unknown = []
        for name in sorted(expression.properties):
            found = layout.find(name)
            if found is None:
                unknown.append(name)
            else:
                keys[name] = found.source
        if unknown:
            names = ", ".join(c.source for c in layout.columns[:40]) or "none"
            missing = ", ".join(repr(n[:60]) for n in unknown[:10])
            raise InvalidData(
                f"{self.type}: cql reads {missing}, not attributes of the layer (attributes: {names})"
            )
        kind = kind_of_java(self.field_type)
        existing = layout.find(self.field)
        if existing is not None:
            key = existing.source
        else:
            key = layout.free_key(self.field)
            name = safe_name(self.field, {c.name for c in layout.columns})
            layout = dataclasses.replace(layout, columns=(*layout.columns, Column(name, key, kind)))
        what = f"{self.type}: {self.field!r}"

        def evaluate(batch: pa.RecordBatch) -> pa.Array:
            return expression.evaluate(lambda n: batch.column(keys[n]), batch.num_rows)

        def step(batch: pa.RecordBatch, first_row: int) -> pa.RecordBatch:
            try:
                values = evaluate(batch)
            except pa.ArrowInvalid as exc:
                row = first_failure(evaluate, batch)
                inputs = ", ".join(f"{n}={_show(batch.column(keys[n])[row].as_py())}" for n in sorted(keys))
                raise InvalidData(
                    f"{what}: row {first_row + row + 1} ({inputs or 'no attribute'}): {_arrow_message(exc)}"
                ) from None
            values = converted(values, kind, what, first_row, java=self.field_type, truncate=True)
            return _set(batch, key, values)

        return layout, step


@dataclass(frozen=True, slots=True)
class AttributesToPointGeometryTransform(Transform):
    """Point geometries from the numbers in ``latField`` and ``lngField``; both columns are removed.

    The points are in the data's CRS, EPSG:4326 when it has none.
    """

    type: ClassVar[str] = "AttributesToPointGeometryTransform"
    PARAMS: ClassVar[dict[str, tuple[str, bool]]] = {
        "latField": ("lat_field", True),
        "lngField": ("lng_field", True),
    }
    lat_field: str
    lng_field: str

    def bind(self, layout: Layout) -> tuple[Layout, Step | None]:
        lat = layout.column(self.lat_field, self._what("latField"))
        lng = layout.column(self.lng_field, self._what("lngField"))
        if lat == lng:
            raise InvalidData(f"{self.type}: latField and lngField are the same attribute {lat.source!r}")
        for param, column in (("latField", lat), ("lngField", lng)):
            data_type = layout.schema.field(column.source).type
            if not (_is_number(data_type) or _is_text(data_type)):
                raise InvalidData(
                    f"{self.type}: {param} {column.source!r} holds {column.kind} values, not numbers"
                )
        crs = layout.crs if layout.crs is not None else "EPSG:4326"
        geographic = _is_geographic(crs)
        key = layout.geometry_column or layout.free_key("geometry")
        lat_what, lng_what = (
            f"{self.type}: latField {self.lat_field!r}",
            f"{self.type}: lngField {self.lng_field!r}",
        )

        def step(batch: pa.RecordBatch, first_row: int) -> pa.RecordBatch:
            ys = converted(batch.column(lat.source), "double", lat_what, first_row)
            xs = converted(batch.column(lng.source), "double", lng_what, first_row)
            y = ys.to_numpy(zero_copy_only=False)
            x = xs.to_numpy(zero_copy_only=False)
            has_y = np.asarray(ys.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            has_x = np.asarray(xs.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            present = has_x & has_y
            bad = (has_x != has_y) | (present & ~(np.isfinite(x) & np.isfinite(y)))
            if geographic:
                with np.errstate(invalid="ignore"):
                    bad |= present & ((np.abs(y) > 90) | (np.abs(x) > 180))
            if bad.any():
                row = int(np.argmax(bad))
                where = (
                    f"{self.lat_field}={_show(ys[row].as_py())}, {self.lng_field}={_show(xs[row].as_py())}"
                )
                reason = "is not a position" + (" in a geographic CRS" if geographic else "")
                raise InvalidData(f"{self.type}: row {first_row + row + 1}: ({where}) {reason}")
            points = shapely.points(np.where(present, x, 0.0), np.where(present, y, 0.0))
            points[~present] = None
            wkb = pa.array(shapely.to_wkb(points, flavor="iso", byte_order=1), pa.binary())
            batch = batch.drop_columns([lat.source, lng.source])
            return _set(batch, key, wkb)

        columns = tuple(c for c in layout.columns if c not in (lat, lng))
        return dataclasses.replace(
            layout, columns=columns, geometry_column=key, geometry_type="POINT", dimensions="", crs=crs
        ), step


@dataclass(frozen=True, slots=True)
class CreateIndexTransform(Transform):
    """A b-tree index on ``field`` of the target table, built with the load."""

    type: ClassVar[str] = "CreateIndexTransform"
    PARAMS: ClassVar[dict[str, tuple[str, bool]]] = {"field": ("field", True)}
    field: str

    def bind(self, layout: Layout) -> tuple[Layout, Step | None]:
        found = layout.find(self.field)
        if found is None and self.field in (layout.geometry_column, GEOMETRY_COLUMN, "geometry", "the_geom"):
            return layout, None  # the spatial index is built with every load
        column = found or layout.column(self.field, self._what("field"))
        if column.name in layout.indexes:
            return layout, None
        return dataclasses.replace(layout, indexes=(*layout.indexes, column.name)), None


PRESENTATIONS = ("LIST", "DISCRETE_INTERVAL", "CONTINUOUS_INTERVAL")


@dataclass(frozen=True, slots=True)
class DateFormatTransform(Transform):
    """Parses the text of ``field`` into timestamps (``format``: Java SimpleDateFormat; else ISO 8601 forms).

    ``enddate`` and ``presentation`` describe the layer's time dimension: kept, not used here.
    """

    type: ClassVar[str] = "DateFormatTransform"
    PARAMS: ClassVar[dict[str, tuple[str, bool]]] = {
        "field": ("field", True),
        "format": ("format", False),
        "enddate": ("enddate", False),
        "presentation": ("presentation", False),
    }
    field: str
    format: str | None = None
    enddate: str | None = None
    presentation: str | None = None

    def __post_init__(self) -> None:
        if self.format is not None:
            try:
                date_pattern(self.format)
            except ValueError as exc:
                raise InvalidData(f"{self.type}: format {self.format[:100]!r}: {exc}") from None
        if self.presentation is not None:
            upper = self.presentation.upper()
            if upper not in PRESENTATIONS:
                raise InvalidData(f"{self.type}: presentation must be one of {', '.join(PRESENTATIONS)}")
            object.__setattr__(self, "presentation", upper)

    def bind(self, layout: Layout) -> tuple[Layout, Step | None]:
        column = layout.column(self.field, self._what("field"))
        source_type = layout.schema.field(column.source).type
        what = f"{self.type}: {self.field!r}"
        if self.format is None:
            patterns, reason = (
                DATETIME_PATTERNS,
                "is not a date or time in a form this server knows (ISO 8601)",
            )
        else:
            patterns, reason = (date_pattern(self.format),), f"does not match the format {self.format!r}"
        dates = pa.types.is_timestamp(source_type) or pa.types.is_date(source_type)
        if not (dates or _is_text(source_type) or pa.types.is_integer(source_type)):
            raise InvalidData(f"{what}: holds {kind_of_arrow(source_type)} values, not dates or texts")

        def parse(values: pa.Array) -> pa.Array:
            if dates:
                return _convert(values, "timestamptz")
            return _parse_instants(as_text(values), patterns)

        def step(batch: pa.RecordBatch, first_row: int) -> pa.RecordBatch:
            values = _checked(parse, batch.column(column.source), what, first_row, reason)
            return _set(batch, column.source, values)

        return layout, step


@dataclass(frozen=True, slots=True)
class IntegerFieldToDateTransform(Transform):
    """The year in ``field`` (an integer) becomes a date: 1 January of that year."""

    type: ClassVar[str] = "IntegerFieldToDateTransform"
    PARAMS: ClassVar[dict[str, tuple[str, bool]]] = {"field": ("field", True)}
    field: str

    def bind(self, layout: Layout) -> tuple[Layout, Step | None]:
        column = layout.column(self.field, self._what("field"))
        what = f"{self.type}: {self.field!r}"

        def step(batch: pa.RecordBatch, first_row: int) -> pa.RecordBatch:
            years = converted(batch.column(column.source), "bigint", what, first_row, java="year")
            values = _checked(_january_first, years, what, first_row, "is not a year from 1 to 9999")
            return _set(batch, column.source, values)

        return layout, step


@dataclass(frozen=True, slots=True)
class ReprojectTransform(Transform):
    """Moves the geometries from ``source`` (default: the data's CRS) to ``target``, the stored srid."""

    type: ClassVar[str] = "ReprojectTransform"
    PARAMS: ClassVar[dict[str, tuple[str, bool]]] = {"source": ("source", False), "target": ("target", True)}
    source: str | None = None
    target: str = ""

    def __post_init__(self) -> None:
        if self.source is not None:
            object.__setattr__(self, "source", _crs_param(self, "source", self.source))
        object.__setattr__(self, "target", _crs_param(self, "target", self.target))
        if epsg_code(self.target) is None:
            raise InvalidData(f"{self.type}: target {self.target[:100]!r} matches no EPSG code")

    def bind(self, layout: Layout) -> tuple[Layout, Step | None]:
        source = self.source or layout.crs
        if source is None:
            raise NoCRS(f"{self.type}: the data does not say its CRS: give the transform a source, or an srs")
        if layout.geometry_column is None:
            raise InvalidData(
                f"{self.type}: the layer has no geometry to reproject (AttributesToPointGeometryTransform "
                "must come first)"
            )
        if "M" in layout.dimensions:
            raise InvalidData(f"{self.type}: geometries with measures (M) cannot be reprojected")
        target = f"EPSG:{epsg_code(self.target)}"
        out = dataclasses.replace(layout, crs=target)
        try:
            same = CRS.from_user_input(source).equals(CRS.from_user_input(target))
        except CRSError as exc:
            raise InvalidData(f"{self.type}: unknown coordinate reference system {source[:100]!r}") from exc
        if same:
            return out, None
        transformer = _transformer(source, target)
        key = layout.geometry_column

        def move(coords: np.ndarray) -> np.ndarray:
            return np.column_stack(transformer.transform(*(coords[:, i] for i in range(coords.shape[1]))))

        def step(batch: pa.RecordBatch, first_row: int) -> pa.RecordBatch:
            geometries = shapely.from_wkb(batch.column(key).to_numpy(zero_copy_only=False))
            measured = shapely.has_m(geometries)
            if measured.any():  # GDAL may report "Z" for a layer whose geometries carry M too
                row = int(np.argmax(measured))
                where = f"{self.type}: row {first_row + row + 1}"
                raise InvalidData(f"{where}: geometries with measures (M) cannot be reprojected")
            # include_z=None: each geometry keeps its own dimensions (2D ones get no NaN Z).
            geometries = shapely.transform(geometries, move, include_z=None)
            coords, index = shapely.get_coordinates(geometries, return_index=True)
            bad = ~np.isfinite(coords).all(axis=1)
            if bad.any():
                row = int(index[np.argmax(bad)])
                raise InvalidData(
                    f"{self.type}: row {first_row + row + 1}: the geometry lies outside the area of {target}"
                )
            moved = shapely.to_wkb(geometries, flavor="iso", byte_order=1, output_dimension=3)
            return _set(batch, key, pa.array(moved, pa.binary()))

        return out, step


_CLASSES: dict[str, type[Transform]] = {
    cls.type: cls
    for cls in (
        AttributeRemapTransform,
        AttributeComputeTransform,
        AttributesToPointGeometryTransform,
        CreateIndexTransform,
        DateFormatTransform,
        IntegerFieldToDateTransform,
        ReprojectTransform,
    )
}
#: The transform types this server runs.
TYPES: tuple[str, ...] = tuple(_CLASSES)
#: GeoServer's transforms for rasters and scripts, which a vector loader has no use for.
_NOT_HERE = ("GdalTranslateTransform", "GdalWarpTransform", "GdalAddoTransform", "PostScriptTransform")


def parse(spec: Mapping[str, Any]) -> Transform:
    """The transform a spec JSON object describes (``{"type": ..., params}``).

    InvalidData names what is wrong: the type, a missing or ill-typed parameter, an
    unknown Java class, CRS or date format, an expression that does not parse.

    ``href`` (as the importer writes it) is ignored; any other unknown key is refused,
    so a misspelt parameter is not silently dropped.
    """
    if not isinstance(spec, Mapping):
        raise InvalidData("a transform is a JSON object with a type")
    kind = spec.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidData(f"a transform needs a type, one of {', '.join(TYPES)}")
    cls = _CLASSES.get(kind)
    if cls is None:
        if kind in _NOT_HERE:
            raise InvalidData(f"{kind} transforms rasters or runs scripts: this server does not")
        raise InvalidData(f"unknown transform type {kind[:100]!r}; use one of {', '.join(TYPES)}")
    unknown = sorted(str(k) for k in spec if k not in cls.PARAMS and k not in ("type", "href"))
    if unknown:
        takes = ", ".join(cls.PARAMS)
        raise InvalidData(
            f"{kind}: unknown parameter {', '.join(repr(k[:60]) for k in unknown[:5])} (it takes {takes})"
        )
    values: dict[str, str] = {}
    for key, (attr, required) in cls.PARAMS.items():
        value = spec.get(key)
        if value is None:
            if required:
                raise InvalidData(f"{kind}: {key} is required")
            continue
        if not isinstance(value, str) or not value.strip():
            raise InvalidData(f"{kind}: {key} must be a non-empty string")
        values[attr] = value.strip()
    return cls(**values)


def updated(current: Transform, changes: Mapping[str, Any]) -> Transform:
    """``current`` with the parameters in ``changes`` (a PUT's body, maybe partial).

    A null clears an optional parameter; ``type`` may be left out, and must match if given.
    """
    if not isinstance(changes, Mapping):
        raise InvalidData("a transform is a JSON object")
    kind = changes.get("type")
    if kind is not None and kind != current.type:
        raise InvalidData(f"the transform is a {current.type}: its type cannot change to {str(kind)[:100]!r}")
    merged = {**current.to_json(), **{k: v for k, v in changes.items() if k != "href"}, "type": current.type}
    return parse(merged)


def chain(layout: Layout, transforms: Sequence[Transform]) -> tuple[Layout, tuple[Step, ...]]:
    """Bind ``transforms`` in order to the data ``layout`` describes: the final layout and the steps to run.

    Each step is tried on an empty batch, which gives the schema the next transform
    sees and makes Arrow check every operation's types before any row is read.
    """
    steps: list[Step] = []
    for transform in transforms:
        bound, step = transform.bind(layout)
        schema = layout.schema
        if step is not None:
            try:
                schema = step(pa.RecordBatch.from_pylist([], schema=layout.schema), 0).schema
            except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid) as exc:
                raise InvalidData(f"{transform.type}: {_arrow_message(exc)}") from None
            steps.append(step)
        columns = tuple(
            Column(c.name, c.source, kind_of_arrow(schema.field(c.source).type)) for c in bound.columns
        )
        layout = dataclasses.replace(bound, schema=schema, columns=columns)
    names = {c.name for c in layout.columns}
    gone = [n for n in layout.indexes if n not in names]
    if gone:
        raise InvalidData(
            f"CreateIndexTransform: {', '.join(map(repr, gone))} is removed by a later transform"
        )
    return layout, tuple(steps)


def source_crs(transforms: Iterable[Transform]) -> str | None:
    """The CRS the chain declares for the file: the source of its first ReprojectTransform, if it has one."""
    first = next((t for t in transforms if isinstance(t, ReprojectTransform)), None)
    return first.source if first is not None else None


def builds_geometry(transforms: Iterable[Transform]) -> bool:
    """Whether the chain makes the geometries from attributes (GDAL must then leave those columns alone)."""
    return any(isinstance(t, AttributesToPointGeometryTransform) for t in transforms)


def epsg_code(crs: str) -> int | None:
    """The EPSG code of a CRS given as text (``EPSG:n``, a URI, WKT ...), None when none matches."""
    try:
        code = CRS.from_user_input(crs).to_epsg(min_confidence=70)
    except CRSError:
        return None
    return int(code) if code is not None else None


# -- parameters --------------------------------------------------------------------------------
def _java_param(transform: Transform, param: str, value: str) -> str:
    try:
        return java_class(value)
    except InvalidData as exc:
        raise InvalidData(f"{transform.type}: {param}: {exc.message}") from None


def _crs_param(transform: Transform, param: str, value: str) -> str:
    """A CRS as given (``EPSG:n``; a bare number is an EPSG code), checked with PROJ."""
    text = value.strip()
    if text.isdigit():
        text = f"EPSG:{text}"
    try:
        CRS.from_user_input(text)
    except CRSError:
        raise InvalidData(
            f"{transform.type}: {param}: unknown coordinate reference system {value[:100]!r}"
        ) from None
    return text


@lru_cache(maxsize=64)
def _transformer(source: str, target: str) -> Transformer:
    try:
        return Transformer.from_crs(CRS.from_user_input(source), CRS.from_user_input(target), always_xy=True)
    except (CRSError, ProjError) as exc:
        raise InvalidData(f"ReprojectTransform: cannot transform from {source[:100]!r} to {target}") from exc


@lru_cache(maxsize=64)
def _is_geographic(crs: str | None) -> bool:
    if crs is None:
        return False
    try:
        return bool(CRS.from_user_input(crs).is_geographic)
    except CRSError:
        return False


# -- batches -----------------------------------------------------------------------------------
def _set(batch: pa.RecordBatch, key: str, values: pa.Array) -> pa.RecordBatch:
    """``batch`` with column ``key`` replaced by ``values``, or added at the end."""
    index = batch.schema.get_field_index(key)
    if index < 0:
        return batch.append_column(key, values)
    return batch.set_column(index, key, values)


def first_failure(fn: Callable[[Any], Any], data: Any) -> int:
    """The index of the first element of ``data`` (an Arrow array or batch) on which ``fn`` fails.

    Found by halving: ``fn`` runs on O(log n) slices, as vectorised as the whole, so a
    batch that fails is located without a loop in Python over its rows.
    """
    lo, hi = 0, len(data)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fails(fn, data.slice(lo, mid - lo)):
            hi = mid
        else:
            lo = mid
    return lo


def _fails(fn: Callable[[Any], Any], data: Any) -> bool:
    try:
        fn(data)
    except (pa.ArrowInvalid, BadValue):
        return True
    return False


def _show(value: Any) -> str:
    return repr(value)[:80]


def _arrow_message(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


# -- value conversions -------------------------------------------------------------------------
_INTEGERS = ("smallint", "integer", "bigint")
_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")
_DAY_US = 86_400_000_000


class BadValue(Exception):
    """A value that does not convert; ``index`` is its position in the array when known."""

    def __init__(self, index: int | None = None) -> None:
        super().__init__(index)
        self.index = index


class _Mismatch(Exception):
    """Values of this type never become the wanted kind (a planning error)."""


def converted(
    values: pa.Array, kind: str, what: str, first_row: int, java: str | None = None, truncate: bool = False
) -> pa.Array:
    """``values`` as the Arrow type of ``kind``; InvalidData naming ``what``, the row and the value when one
    does not convert. ``truncate``: a fraction going to an integer is dropped instead of refused."""
    name = java or JAVA_BINDINGS[kind]
    try:
        return _checked(
            lambda a: _convert(a, kind, truncate), values, what, first_row, f"cannot be read as {name}"
        )
    except _Mismatch:
        raise InvalidData(f"{what}: {kind_of_arrow(values.type)} values cannot become {name}") from None


def _checked(
    fn: Callable[[pa.Array], pa.Array], values: pa.Array, what: str, first_row: int, reason: str
) -> pa.Array:
    """``fn(values)``, or InvalidData naming the first row it fails on."""
    try:
        return fn(values)
    except BadValue as exc:
        row = exc.index if exc.index is not None else first_failure(fn, values)
    except pa.ArrowInvalid:
        row = first_failure(fn, values)
    raise InvalidData(f"{what}: row {first_row + row + 1}: {_show(values[row].as_py())} {reason}")


def _is_text(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_string_view(data_type)
    )


def _is_number(data_type: pa.DataType) -> bool:
    return pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_decimal(data_type)


def _convert(values: pa.Array, kind: str, truncate: bool = False) -> pa.Array:
    """``values`` as ``kind``'s Arrow type. Raises BadValue or ArrowInvalid for a value that does not
    convert, _Mismatch when no value of that type would."""
    target = ARROW_TYPES[kind]
    source = values.type
    if source == target:
        return values
    if pa.types.is_null(source):
        return pa.nulls(len(values), target)
    if kind == "text":
        return _to_text(values)
    if kind == "binary":
        if _is_text(source) or pa.types.is_binary(source) or pa.types.is_large_binary(source):
            return pc.cast(values, target)
        raise _Mismatch
    if _is_text(source):
        return _from_text(_blank_to_null(pc.utf8_trim_whitespace(pc.cast(values, pa.string()))), kind)
    if kind in _INTEGERS and (_is_number(source) or pa.types.is_boolean(source)):
        if truncate and (pa.types.is_floating(source) or pa.types.is_decimal(source)):
            values = pc.trunc(pc.cast(values, pa.float64()))
        return pc.cast(values, target)  # a safe cast: overflow, a fraction, NaN are ArrowInvalid
    if kind in ("real", "double") and (_is_number(source) or pa.types.is_boolean(source)):
        out = pc.cast(values, target, safe=False)
        _check_finite(values, out)
        return out
    if kind == "boolean" and _is_number(source):
        numbers = pc.cast(values, pa.float64())
        wrong = pc.invert(pc.is_in(numbers, value_set=pa.array([0.0, 1.0])))
        _raise_first(pc.and_(wrong, values.is_valid()))
        return pc.not_equal(numbers, 0.0)
    if kind == "date" and pa.types.is_timestamp(source):
        return pc.cast(pc.cast(values, pa.timestamp("us", tz=source.tz)), target, safe=False)
    if kind in ("timestamp", "timestamptz") and (pa.types.is_timestamp(source) or pa.types.is_date(source)):
        return pc.cast(values, target)  # a time without zone is taken as UTC
    if kind == "time" and pa.types.is_time(source):
        return pc.cast(values, target)
    raise _Mismatch


def _check_finite(before: pa.Array, after: pa.Array) -> None:
    """BadValue where a finite number became infinite (a double too large for a float)."""
    ok_before = pc.is_finite(pc.cast(before, pa.float64()))
    _raise_first(pc.and_(ok_before, pc.invert(pc.is_finite(after))))


def _raise_first(wrong: pa.Array) -> None:
    """BadValue at the first true of ``wrong`` (nulls are not wrong)."""
    flags = np.asarray(pc.fill_null(wrong, False).to_numpy(zero_copy_only=False), dtype=bool)
    if flags.any():
        raise BadValue(int(np.argmax(flags)))


def _blank_to_null(texts: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(texts, ""), pa.scalar(None, texts.type), texts)


def _from_text(texts: pa.Array, kind: str) -> pa.Array:
    """Trimmed texts (blank ones null) as ``kind``."""
    if kind in _INTEGERS:
        _raise_first(pc.invert(pc.match_substring_regex(texts, r"^[+-]?[0-9]+$")))
        return pc.cast(pc.cast(pc.utf8_ltrim(texts, characters="+"), pa.int64()), ARROW_TYPES[kind])
    if kind in ("real", "double"):
        numbers = pc.cast(texts, pa.float64())
        if kind == "real":
            out = pc.cast(numbers, pa.float32(), safe=False)
            _check_finite(numbers, out)
            return out
        return numbers
    if kind == "boolean":
        lower = pc.utf8_lower(texts)
        yes = pc.is_in(lower, value_set=pa.array(_TRUE))
        no = pc.is_in(lower, value_set=pa.array(_FALSE))
        _raise_first(pc.and_(texts.is_valid(), pc.invert(pc.or_(yes, no))))
        return pc.if_else(texts.is_valid(), yes, pa.scalar(None, pa.bool_()))
    if kind in ("timestamp", "timestamptz"):
        return pc.cast(_parse_instants(texts, DATETIME_PATTERNS), ARROW_TYPES[kind])
    if kind == "date":
        return pc.cast(_parse_instants(texts, DATETIME_PATTERNS), pa.date32(), safe=False)
    if kind == "time":
        micros, valid = _parse_micros(texts, TIME_PATTERNS)
        return pa.array(micros, pa.time64("us"), mask=~valid)
    raise _Mismatch


def _to_text(values: pa.Array) -> pa.Array:
    source = values.type
    if _is_text(source):
        return pc.cast(values, pa.string())
    if (
        pa.types.is_binary(source)
        or pa.types.is_large_binary(source)
        or pa.types.is_fixed_size_binary(source)
    ):
        return pc.cast(pc.cast(values, pa.binary()), pa.string())  # invalid UTF-8 is ArrowInvalid
    if kind_of_arrow(source) == "json":
        import orjson

        texts = [None if v is None else orjson.dumps(v, default=str).decode() for v in values.to_pylist()]
        return pa.array(texts, pa.string())
    return as_text(values)


def _january_first(years: pa.Array) -> pa.Array:
    """Dates of 1 January of each year (1 to 9999; BadValue otherwise)."""
    numbers = np.asarray(pc.fill_null(years, 1970).to_numpy(zero_copy_only=False), dtype=np.int64)
    _raise_first(pa.array((numbers < 1) | (numbers > 9999)))
    days = (numbers - 1970).astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64)
    mask = ~np.asarray(years.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    return pa.array(days.astype(np.int32), pa.date32(), mask=mask)


# -- dates in Java's SimpleDateFormat patterns ---------------------------------------------------
#: Pattern letters read as numbers, with the digits they take at most when not next to another number.
_NUMERIC_WIDTH = {"y": 4, "M": 2, "d": 2, "H": 2, "h": 2, "k": 2, "K": 2, "m": 2, "s": 2, "S": 9}
_LETTERS = "yMdHhkKmsSaEZX"
_MONTHS = "january february march april may june july august september october november december".split()
_ZONE = r"(?P<z>[Zz]|(?:GMT|UTC)?(?P<zs>[+-])(?P<zh>[0-9]{2}):?(?P<zm>[0-9]{2})?)"


@dataclass(frozen=True, slots=True)
class DatePattern:
    """A Java SimpleDateFormat pattern, compiled to one regular expression with a group per field."""

    java: str
    regex: str
    groups: frozenset[str]

    def parse(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(microseconds since 1970-01-01 UTC, whether the text is a valid date of this pattern) per text.

        Missing fields default to 1970-01-01 00:00:00 UTC. Strict: a 31 February or a
        25th hour does not parse.
        """
        n = len(texts)
        found = pc.extract_regex(texts, self.regex)
        ok = np.asarray(found.is_valid().to_numpy(zero_copy_only=False), dtype=bool)

        def number(group: str, default: int) -> np.ndarray:
            if group not in self.groups:
                return np.full(n, default, dtype=np.int64)
            text = found.field(group)
            value = pc.cast(pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text), pa.int64())
            return np.asarray(pc.fill_null(value, default).to_numpy(zero_copy_only=False), dtype=np.int64)

        year = number("y", 1970)
        if "yy" in self.groups:
            pivot = datetime.now(UTC).year - 80  # Java: within 80 years before and 20 after now
            year = number("yy", 0) + (pivot - pivot % 100)
            year = np.where(year < pivot, year + 100, year)
        month = number("M", 1)
        if "Mn" in self.groups:
            names = pc.utf8_lower(pc.utf8_rtrim(found.field("Mn"), characters="."))
            index = pc.index_in(names, value_set=pa.array([*_MONTHS, *(m[:3] for m in _MONTHS), "sept"]))
            month = np.asarray(pc.fill_null(index, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
            ok &= month >= 0
            month = np.where(month == 24, 9, month % 12 + 1)
        day = number("d", 1)
        minute, second = number("m", 0), number("s", 0)
        pm = np.zeros(n, dtype=bool)
        if "a" in self.groups:
            pm = np.asarray(
                pc.starts_with(pc.utf8_lower(found.field("a")), "p").to_numpy(zero_copy_only=False),
                dtype=bool,
            )
        if "h" in self.groups:  # 1-12
            raw = number("h", 12)
            ok &= (raw >= 1) & (raw <= 12)
            hour = raw % 12 + 12 * pm
        elif "K" in self.groups:  # 0-11
            raw = number("K", 0)
            ok &= (raw >= 0) & (raw <= 11)
            hour = raw + 12 * pm
        elif "k" in self.groups:  # 1-24
            raw = number("k", 24)
            ok &= (raw >= 1) & (raw <= 24)
            hour = raw % 24
        else:
            hour = number("H", 0)
            ok &= (hour >= 0) & (hour <= 23)
        fraction = np.zeros(n, dtype=np.int64)
        if "S" in self.groups:
            digits = pc.utf8_slice_codeunits(pc.utf8_rpad(found.field("S"), 6, "0"), 0, 6)
            fraction = np.asarray(pc.cast(digits, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
        offset = np.zeros(n, dtype=np.int64)
        if "z" in self.groups:
            zone_hours, zone_minutes = number("zh", 0), number("zm", 0)
            ok &= (zone_hours <= 18) & (zone_minutes <= 59)
            minus = np.asarray(pc.equal(found.field("zs"), "-").to_numpy(zero_copy_only=False), dtype=bool)
            offset = np.where(minus, -1, 1) * (zone_hours * 60 + zone_minutes)
        ok &= (year >= 1) & (year <= 9999) & (month >= 1) & (month <= 12)
        ok &= (minute >= 0) & (minute <= 59) & (second >= 0) & (second <= 59)
        months = (np.clip(year, 1, 9999) - 1970) * 12 + np.clip(month, 1, 12) - 1
        start = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
        end = (months + 1).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
        ok &= (day >= 1) & (day <= end - start)
        seconds = (hour * 60 + minute) * 60 + second - offset * 60
        micros = (start + day - 1) * _DAY_US + seconds * 1_000_000 + fraction
        return np.where(ok, micros, 0), ok


@lru_cache(maxsize=128)
def date_pattern(java: str) -> DatePattern:
    """Compile a Java SimpleDateFormat pattern; ValueError saying why it is not one we parse.

    Letters: ``y`` year (``yy``: two digits, Java's century window), ``M`` month
    (``MMM``: its English name), ``d`` day, ``H``/``k``/``h``/``K`` hour, ``m``, ``s``,
    ``S`` fraction of a second, ``a`` AM/PM, ``E`` day name (read, not checked), ``Z``/``X``
    zone offset (``Z``, ``+01``, ``+0100``, ``+01:00``). Text in single quotes is literal
    (``''`` is a quote). As Java parses, a number takes its pattern's width only when
    another number follows it directly, else 1 to the usual digits.
    """
    tokens = _tokens(java)
    parts: list[str] = []
    groups: set[str] = set()
    for i, (letter, count, text) in enumerate(tokens):
        if letter is None:
            parts.append("".join(c if c.isalnum() or c == " " else "\\" + c for c in text))
            continue
        if letter not in _LETTERS:
            raise ValueError(f"the letter {letter!r} is not supported (use {' '.join(_LETTERS)})")
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, 0, "")
        adjacent = following[0] in _NUMERIC_WIDTH and not (following[0] == "M" and following[1] >= 3)
        if letter == "y" and count == 2:
            group, regex = "yy", "[0-9]{2}"
        elif letter == "y":
            group, regex = "y", "[0-9]{4}" if count >= 4 or adjacent else "[0-9]{1,4}"
        elif letter == "M" and count >= 3:
            group, regex = "Mn", r"[^\W\d_]+\.?"
        elif letter in _NUMERIC_WIDTH:
            width = _NUMERIC_WIDTH[letter]
            group, regex = letter, f"[0-9]{{{count}}}" if adjacent else f"[0-9]{{1,{max(width, count)}}}"
        elif letter == "a":
            group, regex = "a", r"[AaPp]\.?[Mm]\.?"
        elif letter == "E":
            parts.append(r"[^\W\d_]+\.?")
            continue
        else:  # Z or X
            group, regex = "z", _ZONE
        if group in groups or (group in ("y", "yy") and groups & {"y", "yy"}):
            raise ValueError(f"the field {letter!r} appears twice")
        groups.add(group)
        parts.append(regex if group == "z" else f"(?P<{group}>{regex})")
    if not groups:
        raise ValueError("the pattern has no date or time field")
    regex = r"^\s*" + "".join(parts) + r"\s*$"
    try:
        pc.extract_regex(pa.array(["0"]), regex)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"the pattern cannot be used: {_arrow_message(exc)}") from None
    return DatePattern(java, regex, frozenset(groups | ({"zs", "zh", "zm"} if "z" in groups else set())))


def _tokens(java: str) -> list[tuple[str | None, int, str]]:
    """(letter, repeat count, "") for pattern letters, (None, 0, text) for literal text."""
    out: list[tuple[str | None, int, str]] = []
    i = 0
    while i < len(java):
        char = java[i]
        if char == "'":
            if java[i + 1 : i + 2] == "'":
                out.append((None, 0, "'"))
                i += 2
                continue
            end = i + 1
            text = []
            while True:
                if end >= len(java):
                    raise ValueError("a quote is not closed")
                if java[end] == "'":
                    if java[end + 1 : end + 2] == "'":
                        text.append("'")
                        end += 2
                        continue
                    break
                text.append(java[end])
                end += 1
            out.append((None, 0, "".join(text)))
            i = end + 1
        elif char.isascii() and char.isalpha():
            end = i
            while end < len(java) and java[end] == char:
                end += 1
            out.append((char, end - i, ""))
            i = end
        else:
            out.append((None, 0, char))
            i += 1
    return out


#: What DateFormatTransform tries without a format (and text remapped to a date): ISO 8601 forms.
DATETIME_PATTERNS: tuple[DatePattern, ...] = tuple(
    date_pattern(p)
    for p in (
        "yyyy-MM-dd",
        "yyyy-MM-dd'T'HH:mm:ssX",
        "yyyy-MM-dd'T'HH:mm:ss.SX",
        "yyyy-MM-dd'T'HH:mm:ss",
        "yyyy-MM-dd'T'HH:mm:ss.S",
        "yyyy-MM-dd'T'HH:mmX",
        "yyyy-MM-dd'T'HH:mm",
        "yyyy-MM-dd HH:mm:ssX",
        "yyyy-MM-dd HH:mm:ss.SX",
        "yyyy-MM-dd HH:mm:ss",
        "yyyy-MM-dd HH:mm:ss.S",
        "yyyy-MM-dd HH:mm",
        "yyyyMMdd'T'HHmmssX",
        "yyyyMMdd'T'HHmmss",
        "yyyyMMdd",
        "yyyy-MM",
        "yyyy",
    )
)
TIME_PATTERNS: tuple[DatePattern, ...] = tuple(date_pattern(p) for p in ("HH:mm:ss.S", "HH:mm:ss", "HH:mm"))


def _parse_micros(texts: pa.Array, patterns: Sequence[DatePattern]) -> tuple[np.ndarray, np.ndarray]:
    """(microseconds, valid) of each text by the first pattern that reads it; BadValue at one none reads."""
    texts = _blank_to_null(pc.utf8_trim_whitespace(pc.cast(texts, pa.string())))
    valid = np.asarray(texts.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    micros = np.zeros(len(texts), dtype=np.int64)
    todo = np.flatnonzero(valid)
    for pattern in patterns:
        if not len(todo):
            break
        found, ok = pattern.parse(texts.take(pa.array(todo)))
        micros[todo[ok]] = found[ok]
        todo = todo[~ok]
    if len(todo):
        raise BadValue(int(todo[0]))
    return micros, valid


def _parse_instants(texts: pa.Array, patterns: Sequence[DatePattern]) -> pa.Array:
    micros, valid = _parse_micros(texts, patterns)
    return pa.array(micros, pa.timestamp("us", tz="UTC"), mask=~valid)
