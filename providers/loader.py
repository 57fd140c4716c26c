"""Loading one layer of a spatial file into a table of a source (PostGIS or GeoPackage).

The importer and ``geoharbor import`` share this entry point, :func:`load`. It opens the
file through :mod:`providers.files` (a zip is unpacked safely first), decides the
target's columns from the Arrow schema GDAL reports (names made safe identifiers, types
from a closed mapping), and streams the features in record batches, so memory stays at
about one batch whatever the file's size. Writing is the backends' job:
:mod:`providers.load_postgis` (COPY into a staging table, then one swap transaction) and
:mod:`providers.load_geopackage` (one SQLite transaction).

What both backends share is here: the plan of a load (:class:`Plan`), the update modes,
and the geometry bytes: GDAL hands ISO WKB; a layer that declares a multi type may still
hold single geometries (Shapefiles never distinguish them, GeoJSON mixes them), which
are wrapped into a one-part multi so that every row fits the declared column type.

A load may carry the importer's transforms (:mod:`providers.transforms`): the plan is
then that of the data *after* them (columns, geometry type, CRS, indexes to build),
and :meth:`Plan.batches` yields transformed batches, still one at a time.
"""

from __future__ import annotations

import re
import shutil
import struct
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyogrio
from pyogrio.errors import DataLayerError, DataSourceError
from pyproj import CRS
from pyproj.exceptions import CRSError

from providers import files
from providers.errors import InvalidData, InvalidQuery, NotFound
from providers.tables import RESERVED_COLUMNS, check_name

if TYPE_CHECKING:
    from providers.transforms import Step, Transform

#: Features per record batch: held in memory at once, and the progress step.
BATCH = 10_000
#: What a zip given to :func:`load` may unpack to (a local file the caller chose, not an upload).
MAX_UNPACKED = 1 << 40

#: Called with (features written, features in the layer) after each batch.
Progress = Callable[[int, int], None]

#: Single geometry type code -> the multi type that holds it (ISO WKB, 2D codes).
_MULTI_OF = {1: 4, 2: 5, 3: 6}
_TYPE_NAMES = {
    "POINT": 1,
    "LINESTRING": 2,
    "POLYGON": 3,
    "MULTIPOINT": 4,
    "MULTILINESTRING": 5,
    "MULTIPOLYGON": 6,
    "GEOMETRYCOLLECTION": 7,
}
#: Drivers whose layer type says "Polygon" for what may be multipolygons.
_MULTI_BY_NATURE = frozenset({"ESRI Shapefile"})


class Mode(StrEnum):
    """What to do with the target table (the importer's ``updateMode``)."""

    CREATE = "create"  # a new table; Conflict if it exists
    REPLACE = "replace"  # the table's rows become the file's (created when missing)
    APPEND = "append"  # the file's rows are added; the table must exist with fitting columns


class NoCRS(InvalidData):
    """The file does not say its CRS and none was given: the importer's NO_CRS state."""

    code = "NoCRS"


@dataclass(frozen=True, slots=True)
class Column:
    """An attribute column: its safe name in the target, its name in the file, its kind.

    ``kind`` is one of :data:`KINDS`; each backend maps it to its own type name.
    """

    name: str
    source: str
    kind: str


#: Column kinds a file's Arrow types map to.
KINDS = (
    "smallint",
    "integer",
    "bigint",
    "real",
    "double",
    "boolean",
    "text",
    "date",
    "timestamp",
    "timestamptz",
    "time",
    "binary",
    "json",
)

#: Column kind -> the Arrow type of its values in batches that are computed (transforms,
#: capabilities) rather than read (``json`` columns stay text and are not computed).
ARROW_TYPES: dict[str, pa.DataType] = {
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "real": pa.float32(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "text": pa.string(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "time": pa.time64("us"),
    "binary": pa.binary(),
}


@dataclass(frozen=True, slots=True)
class Plan:
    """A layer of a file, opened and described: everything a backend needs to write it."""

    path: Path  # the file GDAL opens
    layer: files.Layer
    columns: tuple[Column, ...]
    geometry_column: str | None  # GDAL's name of the geometry in the Arrow batches
    geometry_type: str  # POINT ... GEOMETRY, with Z / M / ZM suffix (PostGIS typmod spelling)
    dimensions: str  # "", "Z", "M" or "ZM"
    srid: int
    total: int
    steps: tuple[Step, ...] = ()  # the transforms, bound to this layer, in chain order
    indexes: tuple[str, ...] = ()  # columns to give a b-tree index (CreateIndexTransform)
    options: tuple[tuple[str, str], ...] | None = None  # GDAL open options; None: the file's usual ones

    @property
    def base_type(self) -> str:
        """The geometry type without its dimension suffix (GeoPackage's geometry_type_name)."""
        return self.geometry_type.removesuffix(self.dimensions) if self.dimensions else self.geometry_type

    @property
    def promote(self) -> int | None:
        """The multi type code single geometries are wrapped into, if the type is a multi one."""
        code = _TYPE_NAMES.get(self.base_type)
        return code if code in _MULTI_OF.values() else None

    def batches(self, size: int = BATCH) -> Iterator[pa.RecordBatch]:
        """The layer's features, ``size`` at a time, as GDAL reads them and the transforms change them."""
        options = dict(self.options) if self.options is not None else files.open_options(self.path)
        try:
            with files.open_arrow(self.path, self.layer.source_layer, size, options) as (_meta, reader):
                row = 0
                for read in reader:
                    batch = read
                    for step in self.steps:
                        batch = step(batch, row)
                    row += read.num_rows
                    yield batch
        except (DataSourceError, DataLayerError, OSError) as exc:
            raise InvalidData(f"{self.path.name!r} cannot be read: {str(exc)[:300]}") from exc


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What a load wrote: the table (``schema.table`` for PostGIS), rows, CRS and type."""

    table: str
    features: int
    srid: int
    geometry_type: str
    columns: tuple[Column, ...]
    mode: Mode


# -- entry point -------------------------------------------------------------------------------
def load(
    source_path: str | Path,
    layer: str | None,
    target: Any,
    table: str | None,
    mode: Mode | str = Mode.CREATE,
    progress: Progress | None = None,
    srs: str | int | None = None,
    batch: int = BATCH,
    transforms: Sequence[Transform] = (),
) -> LoadResult:
    """Write ``layer`` of the file at ``source_path`` into ``table`` of ``target``.

    ``target`` is a configured source: a :class:`~providers.postgis.PostGISDatabase`
    (``table`` may be ``schema.table``, default schema ``public``) or a
    :class:`~providers.geopackage.GeoPackage`. ``table`` defaults to the layer's name
    made a safe identifier. ``srs`` (``EPSG:n`` or n) declares the data's CRS, needed
    when the file has none (:class:`NoCRS` otherwise); it does not reproject.
    ``transforms`` run in order on every batch (:mod:`providers.transforms`); one that
    fails leaves no table behind.

    Readers never see part of a load: the rows appear at once or not at all. The
    caller publishes the table (a layer record) and, after REPLACE/APPEND of a
    published table, republishes it so every process reads its new columns.
    """
    from providers.postgis import PostGISDatabase

    mode = parse_mode(mode)
    if batch < 1:
        raise InvalidQuery("the batch size must be positive")
    with open_plan(source_path, layer, srs, transforms) as plan:
        name = table if table is not None else default_table(plan.layer.name)
        if isinstance(target, PostGISDatabase):
            from providers.load_postgis import load_postgis

            return load_postgis(plan, target, name, mode, progress, batch)
        from providers.load_geopackage import load_geopackage

        return load_geopackage(plan, target, name, mode, progress, batch)


def parse_mode(mode: Mode | str) -> Mode:
    try:
        return Mode(str(mode).lower())
    except ValueError:
        raise InvalidQuery(f"unknown mode {str(mode)[:40]!r}; use create, replace or append") from None


# -- opening the file --------------------------------------------------------------------------
@contextmanager
def open_plan(
    source_path: str | Path, layer: str | None, srs: str | int | None, transforms: Sequence[Transform] = ()
) -> Iterator[Plan]:
    """The plan of loading ``layer`` of a file, a directory or a zip (unpacked to a temporary
    directory that lives as long as the context), after ``transforms``."""
    path = Path(source_path)
    if not path.exists():
        raise NotFound(f"no file {str(source_path)[:200]!r}")
    workdir: Path | None = None
    try:
        if path.is_file() and path.suffix.lower() == ".zip":
            workdir = Path(tempfile.mkdtemp(prefix="geoharbor-load-"))
            files.unpack_zip(path, workdir / "data", MAX_UNPACKED)
            root = workdir / "data"
            found = files.detect(root)
        elif path.is_dir():
            root = path
            found = files.detect(root)
        else:
            root = path.parent
            found = [describe_file(path)]
        chosen = _choose(found, layer)
        yield _plan(root / chosen.file, chosen, found_driver(found, chosen), srs, transforms)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def found_driver(found: list[files.SpatialFile], layer: files.Layer) -> str:
    return next(f.driver for f in found if f.file == layer.file)


def describe_file(path: Path) -> files.SpatialFile:
    """One file's layers, as :func:`providers.files.detect` describes those of a directory."""
    if path.suffix.lower() == ".shp":
        files.check_shapefile(path)
    if files.is_parquet(path):
        return files.describe_parquet(path, path.name, set())
    options = files.open_options(path)
    try:
        layers = []
        names = pyogrio.list_layers(path)
        driver = ""
        for source_layer, _ in names:
            info = pyogrio.read_info(path, layer=source_layer, force_feature_count=True, **options)
            driver = info.get("driver", driver)
            layers.append(
                files.Layer(
                    name=str(source_layer),
                    geometry_type=info.get("geometry_type"),
                    feature_count=max(int(info.get("features") or 0), 0),
                    file=path.name,
                    source_layer=str(source_layer),
                    crs=files.crs_name(info.get("crs")),
                )
            )
    except (DataSourceError, DataLayerError) as exc:
        message = str(exc).replace("\n", " ")[:300]
        raise InvalidData(f"{path.name!r} cannot be read as spatial data: {message}") from exc
    if not layers:
        raise InvalidData(f"{path.name!r} holds no layer")
    return files.SpatialFile(path.name, driver, layers)


def _choose(found: list[files.SpatialFile], layer: str | None) -> files.Layer:
    layers = [lyr for f in found for lyr in f.layers]
    if layer is None:
        if len(layers) == 1:
            return layers[0]
        names = ", ".join(lyr.name for lyr in layers[:20])
        raise InvalidQuery(f"the file has {len(layers)} layers ({names}): name the one to load")
    for candidate in layers:
        if layer in (candidate.name, candidate.source_layer):
            return candidate
    names = ", ".join(lyr.name for lyr in layers[:20])
    raise NotFound(f"no layer {layer[:100]!r} in the file (layers: {names})")


def _plan(
    path: Path, layer: files.Layer, driver: str, srs: str | int | None, transforms: Sequence[Transform]
) -> Plan:
    from providers.transforms import Layout, builds_geometry, chain, source_crs

    options = files.open_options(path)
    if builds_geometry(transforms):
        # The chain makes the points from named columns: GDAL must leave them as attributes.
        options = {k: v for k, v in options.items() if k not in ("X_POSSIBLE_NAMES", "Y_POSSIBLE_NAMES")}
    try:
        with files.open_arrow(path, layer.source_layer, 1, options) as (meta, reader):
            arrow_schema = reader.schema
    except (DataSourceError, DataLayerError) as exc:
        raise InvalidData(f"{path.name!r} cannot be read: {str(exc)[:300]}") from exc
    geometry_column = meta.get("geometry_name") or ("wkb_geometry" if meta.get("geometry_type") else None)
    if geometry_column not in arrow_schema.names:
        geometry_column = None
    if geometry_column is None and not transforms:
        raise InvalidData(f"layer {layer.name!r} has no geometry")
    declared = source_crs(transforms)
    crs = declared if declared is not None else _crs_text(srs) if srs is not None else layer.crs
    geometry_type, dimensions = _geometry_type(meta.get("geometry_type"), driver)
    taken: set[str] = set()
    columns = []
    for field in arrow_schema:
        if field.name == geometry_column:
            continue
        columns.append(Column(safe_name(field.name, taken), field.name, kind_of_arrow(field.type)))
    start = Layout(arrow_schema, tuple(columns), geometry_column, geometry_type, dimensions, crs)
    done, steps = chain(start, transforms)
    if done.geometry_column is None:
        raise InvalidData(f"layer {layer.name!r} has no geometry")
    return Plan(
        path=path,
        layer=layer,
        columns=done.columns,
        geometry_column=done.geometry_column,
        geometry_type=done.geometry_type,
        dimensions=done.dimensions,
        srid=_srid(done.crs),
        total=layer.feature_count,
        steps=steps,
        indexes=done.indexes,
        options=tuple(options.items()),
    )


def _crs_text(srs: str | int) -> str:
    """The CRS a caller declared (``EPSG:n``, n, or anything PROJ reads); InvalidData if unknown."""
    text = str(srs)
    if text.isdigit():
        text = f"EPSG:{text}"
    try:
        CRS.from_user_input(text)
    except CRSError as exc:
        raise InvalidData(f"unknown coordinate reference system {text[:100]!r}") from exc
    return text


def _srid(text: str | None) -> int:
    """The EPSG code to store for the data's CRS; NoCRS when it is unknown or matches no code."""
    if text is None:
        raise NoCRS("the file does not say its coordinate reference system: give one (srs, e.g. EPSG:4326)")
    try:
        code = CRS.from_user_input(text).to_epsg(min_confidence=70)
    except CRSError as exc:
        raise InvalidData(f"unknown coordinate reference system {text[:100]!r}") from exc
    if code is None:
        raise NoCRS(f"the file's CRS matches no EPSG code; give one (srs): {text[:100]!r}")
    return int(code)


def _geometry_type(declared: str | None, driver: str) -> tuple[str, str]:
    """The column type (``MULTIPOLYGONZ`` ...) and its dimension suffix for GDAL's layer type."""
    text = (declared or "Unknown").upper()
    dimensions = ""
    for suffix in (" ZM", " Z", " M"):
        if text.endswith(suffix):
            dimensions, text = suffix.strip(), text.removesuffix(suffix)
            break
    base = text.replace(" ", "")
    if base not in _TYPE_NAMES:
        return "GEOMETRY", ""
    if driver in _MULTI_BY_NATURE and base in ("LINESTRING", "POLYGON"):
        base = f"MULTI{base}"
    return base + dimensions, dimensions


def kind_of_arrow(data_type: pa.DataType) -> str:
    """The column kind of an Arrow type (lists, structs ... are kept as JSON text)."""
    t = pa.types
    if t.is_boolean(data_type):
        return "boolean"
    if t.is_int8(data_type) or t.is_int16(data_type) or t.is_uint8(data_type):
        return "smallint"
    if t.is_int32(data_type) or t.is_uint16(data_type):
        return "integer"
    if t.is_integer(data_type):
        return "bigint"
    if t.is_float16(data_type) or t.is_float32(data_type):
        return "real"
    if t.is_floating(data_type) or t.is_decimal(data_type):
        return "double"
    if t.is_string(data_type) or t.is_large_string(data_type) or t.is_string_view(data_type):
        return "text"
    if t.is_date(data_type):
        return "date"
    if t.is_timestamp(data_type):
        return "timestamptz" if data_type.tz else "timestamp"
    if t.is_time(data_type):
        return "time"
    if t.is_binary(data_type) or t.is_large_binary(data_type) or t.is_fixed_size_binary(data_type):
        return "binary"
    return "json"


# -- names -------------------------------------------------------------------------------------
def safe_name(name: str, taken: set[str]) -> str:
    """A lower-case identifier for ``name`` that no other column of the table has.

    Accents are dropped, anything but letters, digits and ``_`` becomes ``_``; names
    the table keeps for itself (``id``, ``geom``, system columns) get a suffix.
    """
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"[^a-z0-9_]+", "_", text).strip("_") or "column"
    if text[0].isdigit():
        text = f"_{text}"
    text = text[:63]
    candidate, n = text, 1
    while candidate in taken or candidate in RESERVED_COLUMNS or candidate.startswith("__"):
        n += 1
        candidate = f"{text[:59]}_{n}"
    taken.add(candidate)
    return candidate


def default_table(layer: str) -> str:
    """A table name for a layer: its name as a safe identifier, not one the engines reserve."""
    name = safe_name(layer, set())
    try:
        return check_name(name)
    except InvalidQuery:
        return check_name(f"t_{name}"[:63])


# -- geometry bytes ----------------------------------------------------------------------------
def wkb_header(wkb: bytes) -> tuple[str, int]:
    """The struct byte-order prefix and the geometry type code of a WKB."""
    order = "<" if wkb[0] == 1 else ">"
    return order, struct.unpack_from(f"{order}I", wkb, 1)[0]


def promoted(wkb: bytes, multi: int | None) -> bytes:
    """``wkb`` as a one-part multi of type ``multi`` when it is the matching single type.

    ISO WKB codes carry the dimensions in thousands (1003 = Polygon Z); the wrapper
    keeps them. Anything else is returned as is (the database refuses a misfit).
    """
    if multi is None:
        return wkb
    order, code = wkb_header(wkb)
    base = code & 0x0FFFFFFF
    dims, simple = divmod(base, 1000)
    if _MULTI_OF.get(simple) != multi:
        return wkb
    return wkb[:1] + struct.pack(f"{order}II", multi + dims * 1000, 1) + wkb


def python_values(array: pa.Array | pa.ChunkedArray, kind: str) -> list[Any]:
    """The values of a column as the database drivers take them (JSON kinds as text)."""
    if kind == "json":
        import orjson

        return [None if v is None else orjson.dumps(v, default=str).decode() for v in array.to_pylist()]
    if kind == "binary" and pa.types.is_fixed_size_binary(array.type):
        array = array.cast(pa.binary())
    return array.to_pylist()


def check_append(
    plan: Any, existing: Any, assignable: dict[str, Any], base: Callable[[str], str] = lambda t: t
) -> None:
    """InvalidData unless every column of the file fits a column of the table (and it has a geometry).

    ``assignable`` names, per value kind, the target types a backend accepts;
    ``base`` reduces a column's declared type to one of those names.
    """
    if existing.geometry_column is None:
        raise InvalidData(f"table {existing.name!r} has no geometry column to append features to")
    problems = []
    for column in plan.columns:
        found = existing.columns.get(column.name)
        if found is None:
            problems.append(f"{column.name!r} is not a column of the table")
        elif base(found.native_type) not in assignable[column.kind]:
            problems.append(
                f"{column.name!r} holds {column.kind} values, the table's column is {found.native_type}"
            )
    if problems:
        raise InvalidData(f"cannot append to {existing.name!r}: " + "; ".join(problems[:10]))
