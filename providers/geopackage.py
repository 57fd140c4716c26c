"""GeoPackage data access with the standard library's sqlite3: discovery, reads, writes.

The semantics are those of :mod:`providers.postgis` (same query model, same GeoJSON,
same ETag / If-Match rules, same errors); only the engine differs:

* SQL is SQLite's. Column and table names reach SQL only double-quoted and only after
  they were checked against the collection schema or read from the file's own
  metadata; every request value is a bound parameter.
* Geometries are GeoPackage blobs (a small header, then WKB). They are decoded with
  shapely for a whole page at once, reprojected with pyproj and written as GeoJSON by
  GEOS, so a page costs one query and one vectorised pass, not a Python loop of
  geometry objects.
* Spatial filters go through the layer's R-tree index (``rtree_<table>_<column>``)
  first and are then tested exactly by a Python SQL function backed by shapely.
* GDAL-written files keep their R-tree up to date with triggers that call
  ``ST_IsEmpty``/``ST_MinX``/...; we register those functions on every connection so
  that our own INSERT/UPDATE/DELETE fire the same triggers GDAL would.
* Vector tiles select through the same compiled WHERE clause (R-tree first) and build
  the tile's geometries for all its features at once: reprojection and tile-space
  scaling in one numpy pass, then GEOS clipping, simplification and snapping to the
  tile grid over the whole array. Only the MVT encoding itself walks vertices in Python.
* Each layer has a revision counter in a small SQLite file beside the GeoPackage
  (``<name>.geoharbor.sqlite``), bumped after every write commits, so that tile
  caches of all worker processes see the same number. It is not kept inside the
  GeoPackage, where GDAL and QGIS would list it as a table of the user's data.

No GDAL is needed at runtime.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sqlite3
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import shapely
from pyproj import CRS as ProjCRS
from pyproj.exceptions import CRSError

from providers import mvt, reproject
from providers.base import (
    MISSING,
    STREAM_BATCH,
    STREAM_THRESHOLD,
    CollectionSchema,
    Count,
    CountMode,
    FeaturePage,
    FeatureProvider,
    Field,
    GeometryEncoding,
    Query,
    StoredFeature,
    TileRequest,
    Write,
    check_if_match,
    feature_values,
    geometry_from_geojson,
    numbered,
    version_tag,
)
from providers.crs import CRS, CRS84, coordinate_precision, from_srid
from providers.errors import (
    Conflict,
    InvalidData,
    InvalidQuery,
    NotFound,
    ProviderError,
    Unavailable,
)
from providers.filters import SPATIAL, Compiler, Dialect

LOGGER = logging.getLogger(__name__)


#: JSON Schema type and format of GeoPackage column types (GeoPackage 1.3, table 1).
_JSON_TYPES: dict[str, tuple[str, str | None]] = {
    "INTEGER": ("integer", None),
    "INT": ("integer", None),
    "MEDIUMINT": ("integer", None),
    "SMALLINT": ("integer", None),
    "TINYINT": ("integer", None),
    "REAL": ("number", None),
    "DOUBLE": ("number", None),
    "FLOAT": ("number", None),
    "BOOLEAN": ("boolean", None),
    "DATE": ("string", "date"),
    "DATETIME": ("string", "date-time"),
    "TEXT": ("string", None),
    "BLOB": ("string", None),
}
#: The value ranges GeoPackage gives its integer types; SQLite itself stores any int64.
_INT_RANGES = {
    "TINYINT": (-(2**7), 2**7 - 1),
    "SMALLINT": (-(2**15), 2**15 - 1),
    "MEDIUMINT": (-(2**31), 2**31 - 1),
}
_INT64 = (-(2**63), 2**63 - 1)

#: shapely type id -> GeoPackage geometry type name.
_TYPE_NAMES = {
    0: "POINT",
    1: "LINESTRING",
    2: "LINESTRING",
    3: "POLYGON",
    4: "MULTIPOINT",
    5: "MULTILINESTRING",
    6: "MULTIPOLYGON",
    7: "GEOMETRYCOLLECTION",
}
#: WKB type code (modulo 1000) -> GeoPackage geometry type name.
_WKB_NAMES = {
    1: "POINT",
    2: "LINESTRING",
    3: "POLYGON",
    4: "MULTIPOINT",
    5: "MULTILINESTRING",
    6: "MULTIPOLYGON",
    7: "GEOMETRYCOLLECTION",
    8: "CIRCULARSTRING",
    9: "COMPOUNDCURVE",
    10: "CURVEPOLYGON",
    11: "MULTICURVE",
    12: "MULTISURFACE",
    13: "CURVE",
    14: "SURFACE",
}
#: Which stored types a declared layer type accepts (GeoPackage's type hierarchy, and
#: what PostGIS typmods accept: a GEOMETRYCOLLECTION column also takes MULTI*).
_ACCEPTS = {
    "POINT": {"POINT"},
    "LINESTRING": {"LINESTRING"},
    "POLYGON": {"POLYGON"},
    "MULTIPOINT": {"MULTIPOINT"},
    "MULTILINESTRING": {"MULTILINESTRING"},
    "MULTIPOLYGON": {"MULTIPOLYGON"},
    "GEOMETRYCOLLECTION": {"GEOMETRYCOLLECTION", "MULTIPOINT", "MULTILINESTRING", "MULTIPOLYGON"},
    "CURVE": {"LINESTRING"},
    "COMPOUNDCURVE": {"LINESTRING"},
    "CIRCULARSTRING": {"LINESTRING"},
    "SURFACE": {"POLYGON"},
    "CURVEPOLYGON": {"POLYGON"},
    "MULTICURVE": {"MULTILINESTRING"},
    "MULTISURFACE": {"MULTIPOLYGON"},
}
#: A single geometry sent to a multi layer is stored as a one-part multi (ST_Multi).
_PROMOTE = {
    ("POINT", "MULTIPOINT"): shapely.multipoints,
    ("LINESTRING", "MULTILINESTRING"): shapely.multilinestrings,
    ("POLYGON", "MULTIPOLYGON"): shapely.multipolygons,
}
_MULTI_OF = {"MULTICURVE": "MULTILINESTRING", "MULTISURFACE": "MULTIPOLYGON"}


# -- SQL text -----------------------------------------------------------------------------
def quote_ident(name: str) -> str:
    """A SQLite identifier: double-quoted, inner quotes doubled.

    Callers only pass names checked against the collection schema or read from the
    GeoPackage's own metadata tables.
    """
    return '"' + name.replace('"', '""') + '"'


def _compose(template: str, *parts: str) -> str:
    """``template`` (our own SQL text) with ``{}`` replaced by quoted identifiers or fragments.

    The one place where this module assembles SQL, so it can be audited: ``parts`` are
    never request values, which are always bound parameters.
    """
    return template.format(*parts)


def _base_type(native: str) -> str:
    """``TEXT(80)`` -> ``TEXT``: GeoPackage lets TEXT and BLOB carry a maximum length."""
    return native.split("(", 1)[0].strip().upper()


def _max_length(native: str) -> int | None:
    match = re.search(r"\((\d+)\)", native)
    return int(match.group(1)) if match else None


# -- GeoPackage geometry blobs ------------------------------------------------------------
_ENVELOPE_BYTES = (0, 32, 48, 48, 64)
_EMPTY_FLAG = 0x10
_GP_HEADER = struct.Struct("<2sBBi")
_GP_HEADER_XY = struct.Struct("<2sBBi4d")


def _blob_header(blob: bytes) -> tuple[int, int]:
    """(flags, offset of the WKB) of a GeoPackage geometry blob.

    Raises ValueError for anything else, so a damaged row can be reported, not crash
    a whole page.
    """
    if len(blob) < 8 or blob[0:2] != b"GP":
        raise ValueError("not a GeoPackage geometry blob")
    flags = blob[3]
    kind = (flags >> 1) & 0x07
    if kind >= len(_ENVELOPE_BYTES):
        raise ValueError(f"invalid envelope indicator {kind}")
    return flags, 8 + _ENVELOPE_BYTES[kind]


def decode_geometries(blobs: Sequence[bytes | None]) -> np.ndarray:
    """Shapely geometries of GeoPackage blobs (None stays None), in one vectorised WKB read.

    Only the header is parsed in Python, to find where the WKB starts; the envelope and
    byte order of the header do not matter for that, WKB carries its own byte order.
    """
    wkb = np.empty(len(blobs), dtype=object)
    for i, blob in enumerate(blobs):
        if blob is None:
            continue
        try:
            wkb[i] = blob[_blob_header(blob)[1] :]
        except (ValueError, TypeError):
            LOGGER.warning("skipping a geometry that is not a GeoPackage blob")
    try:
        return shapely.from_wkb(wkb)
    except shapely.errors.GEOSException:
        LOGGER.warning("a page holds geometries GEOS cannot read; they are returned as null")
        return shapely.from_wkb(wkb, on_invalid="ignore")


def encode_geometry(geom: shapely.Geometry, srs_id: int) -> bytes:
    """A GeoPackage blob: 'GP', version 0, little-endian, xy envelope (none if empty), ISO WKB."""
    wkb = shapely.to_wkb(geom, byte_order=1, flavor="iso")
    if shapely.is_empty(geom):
        return _GP_HEADER.pack(b"GP", 0, 0x01 | _EMPTY_FLAG, srs_id) + wkb
    minx, miny, maxx, maxy = shapely.bounds(geom).tolist()
    return _GP_HEADER_XY.pack(b"GP", 0, 0x03, srs_id, minx, maxx, miny, maxy) + wkb


def _blob_envelope(blob: bytes) -> tuple[float, float, float, float] | None:
    """(minx, maxx, miny, maxy) of a blob: from its header, else from the WKB (points)."""
    flags, offset = _blob_header(blob)
    if flags & _EMPTY_FLAG:
        return None
    envelope: tuple[float, float, float, float] | None = None
    if offset > 8:
        envelope = struct.unpack_from("<4d" if flags & 0x01 else ">4d", blob, 8)
    else:
        wkb = blob[offset:]
        order = "<" if wkb[0] == 1 else ">"
        code = struct.unpack_from(order + "I", wkb, 1)[0] & 0x0FFFFFFF
        if code % 1000 == 1 and len(wkb) >= 21:  # a point is its own envelope, no need for GEOS
            x, y = struct.unpack_from(order + "2d", wkb, 5)
            envelope = (x, x, y, y)
        else:
            geom = shapely.from_wkb(wkb)
            if geom is not None and not shapely.is_empty(geom):
                minx, miny, maxx, maxy = shapely.bounds(geom).tolist()
                envelope = (minx, maxx, miny, maxy)
    # NaN (an empty point written without the empty flag) has no place in an R-tree.
    if envelope is None or not all(math.isfinite(v) for v in envelope):
        return None
    return envelope


# -- SQL functions registered on every connection ----------------------------------------
def _safe(func: Callable[..., Any]) -> Callable[..., Any]:
    """SQL functions return NULL for NULL or damaged input instead of aborting the statement."""

    def wrapper(*args: Any) -> Any:
        if any(a is None for a in args):
            return None
        try:
            return func(*args)
        except (ValueError, TypeError, struct.error, shapely.errors.GEOSException):
            return None

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


@_safe
def _st_is_empty(blob: bytes) -> int:
    return 1 if _blob_envelope(blob) is None else 0


def _envelope_part(index: int) -> Callable[[bytes], float | None]:
    @_safe
    def part(blob: bytes) -> float | None:
        env = _blob_envelope(blob)
        return None if env is None else env[index]

    return part


@_safe
def _st_geometry_type(blob: bytes) -> str | None:
    _, offset = _blob_header(blob)
    order = "<" if blob[offset] == 1 else ">"
    code = struct.unpack_from(order + "I", blob, offset + 1)[0] & 0x0FFFFFFF
    return _WKB_NAMES.get(code % 1000)


@_safe
def _st_srid(blob: bytes) -> int:
    flags, _ = _blob_header(blob)
    return struct.unpack_from("<i" if flags & 0x01 else ">i", blob, 4)[0]


@_safe
def _gpkg_is_assignable(expected: str, actual: str) -> int:
    expected, actual = expected.upper(), actual.upper()
    if expected == "GEOMETRY" or expected == actual:
        return 1
    return 1 if actual in _ACCEPTS.get(expected, ()) else 0


def _casei(value: Any) -> Any:
    """CASEI with Unicode case folding, as PostgreSQL's lower(); SQLite's is ASCII only."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, bytes):
        return value
    return str(value).lower()


_SYMMETRIC = {
    "s_intersects": shapely.intersects,
    "s_disjoint": shapely.disjoint,
    "s_touches": shapely.touches,
    "s_crosses": shapely.crosses,
    "s_overlaps": shapely.overlaps,
    "s_equals": shapely.equals,
}
#: op -> (predicate, its converse): within(a, b) == contains(b, a).
_CONVERSE = {
    "s_within": (shapely.within, shapely.contains),
    "s_contains": (shapely.contains, shapely.within),
}
_literals = threading.local()


@dataclass(frozen=True, slots=True)
class _Literal:
    """A filter literal decoded once: prepared geometry, bounds, and whether it is a box."""

    geom: shapely.Geometry
    bounds: tuple[float, float, float, float] | None  # minx, miny, maxx, maxy; None if empty
    is_box: bool  # an axis-aligned rectangle: envelope tests are then exact


def _literal(wkb: bytes) -> _Literal:
    """A filter literal (plain WKB), decoded and prepared once per query and thread.

    Per thread because GEOS builds a prepared geometry's indexes lazily, which is not
    safe to race on.
    """
    cache: dict[bytes, _Literal] | None = getattr(_literals, "cache", None)
    if cache is None:
        cache = _literals.cache = {}
    found = cache.get(wkb)
    if found is None:
        if len(cache) >= 16:
            cache.clear()
        geom = shapely.from_wkb(wkb)
        shapely.prepare(geom)
        bounds = None if geom.is_empty else tuple(shapely.bounds(geom).tolist())
        is_box = bool(
            bounds is not None
            and geom.geom_type == "Polygon"
            and geom.area > 0
            and shapely.equals(geom, shapely.box(*bounds))
        )
        found = cache[wkb] = _Literal(geom, bounds, is_box)  # type: ignore[arg-type]
    return found


def _stored_geometry(value: bytes) -> shapely.Geometry | None:
    """A stored GeoPackage blob (they start with 'GP') or a literal (plain WKB)."""
    if value[0:2] == b"GP":
        return shapely.from_wkb(value[_blob_header(value)[1] :])
    return _literal(value).geom


_APART_FALSE = {"s_intersects", "s_within", "s_contains", "s_touches", "s_crosses", "s_overlaps", "s_equals"}
_SWAP_ARGS = {"s_within": "s_contains", "s_contains": "s_within"}


def _row_against_literal(op: str, blob: bytes, literal: _Literal) -> int | None:
    """``op(row, literal)``, answered from the blob's header envelope when that is enough.

    Most R-tree candidates of a bbox query lie wholly inside or outside the box, and
    reading the envelope costs a fraction of decoding the geometry.
    """
    envelope = _blob_envelope(blob)
    if envelope is not None and literal.bounds is not None:
        minx, maxx, miny, maxy = envelope
        lminx, lminy, lmaxx, lmaxy = literal.bounds
        if maxx < lminx or minx > lmaxx or maxy < lminy or miny > lmaxy:
            if op == "s_disjoint":
                return 1
            if op in _APART_FALSE:
                return 0
        if literal.is_box and op in ("s_intersects", "s_disjoint", "s_within"):
            if op != "s_within" and lminx <= minx and maxx <= lmaxx and lminy <= miny and maxy <= lmaxy:
                return 1 if op == "s_intersects" else 0
            if op == "s_within" and lminx < minx and maxx < lmaxx and lminy < miny and maxy < lmaxy:
                return 1  # inside the box's interior
    row = shapely.from_wkb(blob[_blob_header(blob)[1] :])
    if row is None:
        return None
    # The literal goes first so that GEOS uses its prepared form.
    if op in _SYMMETRIC:
        return int(_SYMMETRIC[op](literal.geom, row))
    if op in _CONVERSE:
        return int(_CONVERSE[op][1](literal.geom, row))
    return None


def _spatial_test(op: str, a: bytes | None, b: bytes | None) -> int | None:
    """The exact test behind a CQL2 spatial predicate, after the R-tree prefilter.

    NULL (no geometry, damaged blob) as PostGIS answers for a NULL geometry.
    """
    if a is None or b is None:
        return None
    try:
        a_stored, b_stored = a[0:2] == b"GP", b[0:2] == b"GP"
        if a_stored and not b_stored:
            return _row_against_literal(op, a, _literal(b))
        if b_stored and not a_stored:
            return _row_against_literal(_SWAP_ARGS.get(op, op), b, _literal(a))
        ga, gb = _stored_geometry(a), _stored_geometry(b)
        if ga is None or gb is None:
            return None
        func = _SYMMETRIC.get(op) or _CONVERSE.get(op, (None,))[0]
        return None if func is None else int(func(ga, gb))
    except (ValueError, TypeError, struct.error, shapely.errors.GEOSException):
        return None


def _dwithin_test(blob: bytes | None, literal: bytes, distance: float, srid: int, storage: int) -> int | None:
    """Whether a stored geometry lies within ``distance`` of ``literal``, measured in ``srid``.

    NULL for a NULL or damaged geometry, or one that cannot be moved to ``srid``, as
    PostGIS gives no row for them either.
    """
    if blob is None or literal is None:
        return None
    try:
        row = shapely.from_wkb(blob[_blob_header(blob)[1] :])
        if row is None:
            return None
        if srid != storage:
            row = reproject.geometries(row, storage, srid)
        return int(shapely.dwithin(_literal(literal).geom, row, distance))
    except (ValueError, TypeError, struct.error, shapely.errors.GEOSException, InvalidQuery):
        return None


def _register_functions(conn: sqlite3.Connection) -> None:
    """What GeoPackage triggers call (GDAL's R-tree and geometry type/SRS triggers) and ours."""
    functions: list[tuple[str, int, Callable[..., Any]]] = [
        ("ST_IsEmpty", 1, _st_is_empty),
        ("ST_MinX", 1, _envelope_part(0)),
        ("ST_MaxX", 1, _envelope_part(1)),
        ("ST_MinY", 1, _envelope_part(2)),
        ("ST_MaxY", 1, _envelope_part(3)),
        ("ST_GeometryType", 1, _st_geometry_type),
        ("ST_SRID", 1, _st_srid),
        ("GPKG_IsAssignable", 2, _gpkg_is_assignable),
        ("gh_spatial", 3, _spatial_test),
        ("gh_dwithin", 5, _dwithin_test),
        ("gh_lower", 1, _casei),
    ]
    for name, nargs, func in functions:
        conn.create_function(name, nargs, func, deterministic=True)


# -- GeoJSON ------------------------------------------------------------------------------
def _empty_geojson(geom: shapely.Geometry) -> str:
    """GeoJSON of an empty geometry as PostGIS writes it (GEOS writes Polygon as [[]])."""
    kind = geom.geom_type
    if kind == "GeometryCollection":
        return '{"type":"GeometryCollection","geometries":[]}'
    return '{"type":"' + kind + '","coordinates":[]}'


def geojson_geometries(geoms: np.ndarray) -> list[str | None]:
    """GeoJSON text of each geometry (None stays None)."""
    texts = shapely.to_geojson(geoms)
    empty = shapely.is_empty(geoms)
    out: list[str | None] = texts.tolist()
    if empty.any():
        for i in np.flatnonzero(empty):
            out[i] = _empty_geojson(geoms[i])
    return out


#: How often (seconds) a running tile query asks whether its client is still there.
CANCEL_POLL_S = 0.1
#: SQLite VM instructions between two looks at the clock while a tile query runs.
_PROGRESS_STEPS = 20_000


@contextlib.contextmanager
def _interruptible(conn: sqlite3.Connection, gone: Callable[[], bool] | None) -> Iterator[None]:
    """Abort the connection's running statement once ``gone()`` says its client left.

    A low-zoom tile of a big layer can take seconds of R-tree and row reads; a map
    panned away has dropped the request already, so SQLite stops too (the statement
    then fails as "interrupted", which reads as Unavailable).
    """
    if gone is None:
        yield
        return
    asked = time.monotonic()

    def progress() -> int:
        nonlocal asked
        now = time.monotonic()
        if now - asked < CANCEL_POLL_S:
            return 0
        asked = now
        return 1 if gone() else 0

    conn.set_progress_handler(progress, _PROGRESS_STEPS)
    try:
        yield
    finally:
        conn.set_progress_handler(None, 0)


# -- time values --------------------------------------------------------------------------
def _time_text(value: date | datetime) -> str:
    """How GeoPackage stores DATE ('YYYY-MM-DD') and DATETIME ('YYYY-MM-DDTHH:MM:SS.SSSZ')."""
    if not isinstance(value, datetime):
        return value.isoformat()
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _parse_time(text: str) -> date | datetime:
    """An RFC 3339 / ISO 8601 date or timestamp as GeoPackage files hold them."""
    text = text.strip()
    if len(text) == 10:
        return date.fromisoformat(text)
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _from_julian(day: float | None, date_only: bool) -> datetime | None:
    if day is None:
        return None
    try:
        value = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            milliseconds=round((day - 2440587.5) * 86_400_000)
        )
    except OverflowError:
        return None
    if date_only:
        return datetime(value.year, value.month, value.day)
    return value


# -- the filter dialect --------------------------------------------------------------------
class SQLiteDialect(Dialect[str]):
    """The filter compiler's SQL for one GeoPackage layer.

    Fragments are plain strings: our own SQL text, quoted identifiers and ``:pN``
    placeholders. Temporal columns are compared through ``julianday()`` on both sides,
    so 'YYYY-MM-DD', 'YYYY-MM-DDTHH:MM:SSZ' and offsets compare by instant, not as text.
    Spatial predicates use the R-tree (when the file has one) and then the exact
    ``gh_spatial`` test; literals are reprojected to the storage CRS here, in Python.
    """

    def __init__(
        self,
        table: str,
        geometry_column: str | None,
        storage_crs: CRS,
        *,
        rowid_column: str = "fid",
        rtree: str | None = None,
        temporal_columns: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.table = table
        self.geometry_column = geometry_column
        self.storage_crs = storage_crs
        self.rowid_column = rowid_column
        self.rtree = rtree
        self._temporal = {quote_ident(c) for c in temporal_columns}
        self._geom = quote_ident(geometry_column) if geometry_column else None
        self._julian: dict[str, str] = {}  # julianday(x) fragment -> x
        self._bounds: dict[str, tuple[float, float, float, float]] = {}  # literal -> storage box

    def sql(self, text: str) -> str:
        return text

    def ident(self, name: str) -> str:
        quoted = quote_ident(name)
        return self._as_time(quoted) if quoted in self._temporal else quoted

    def placeholder(self, name: str) -> str:
        return ":" + name

    def fmt(self, template: str, *parts: str) -> str:
        return template.format(*parts)

    def join(self, parts: Sequence[str], sep: str) -> str:
        return sep.join(parts)

    def param(self, value: Any) -> str:
        if isinstance(value, (date, datetime)):
            return self._as_time(super().param(_time_text(value)))
        return super().param(value)

    def _as_time(self, expr: str) -> str:
        if expr in self._julian:
            return expr
        wrapped = f"julianday({expr})"
        self._julian[wrapped] = expr
        return wrapped

    # -- geometry literals, in the storage CRS -------------------------------------------
    def _literal(self, geom: shapely.Geometry) -> str:
        if not np.isfinite(shapely.get_coordinates(geom)).all():
            raise InvalidQuery("filter: geometry cannot be expressed in the collection's CRS")
        holder = self.param(shapely.to_wkb(geom, byte_order=1, flavor="iso"))
        if not shapely.is_empty(geom):
            self._bounds[holder] = tuple(shapely.bounds(geom).tolist())
        return holder

    def geometry_literal(self, geojson: dict[str, Any], crs: CRS) -> str:
        geom = geometry_from_geojson(geojson, InvalidQuery, "filter: ")
        geom = reproject.geometries(geom, crs.srid, self.storage_crs.srid, swap_in=crs.lat_first)
        return self._literal(geom)

    def envelope_literal(self, bbox: Sequence[float], crs: CRS) -> str:
        minx, miny, maxx, maxy = (float(v) for v in bbox)
        box = shapely.box(minx, miny, maxx, maxy)
        if crs.srid != self.storage_crs.srid:
            # Densify before reprojecting so the box's curved edges are kept (as PostGIS).
            box = shapely.segmentize(box, max(maxx - minx, maxy - miny) / 16 or 1)
            box = reproject.geometries(box, crs.srid, self.storage_crs.srid)
        return self._literal(box)

    def spatial(self, op: str, lhs: str, rhs: str, envelope: tuple | None) -> str:
        if op not in SPATIAL:
            raise InvalidQuery(f"filter: unsupported spatial operator {op[:40]!r}")
        exact = self.fmt("gh_spatial({}, {}, {})", self.param(op), lhs, rhs)
        # ``envelope`` is the literal's box in the request CRS; the box of what was
        # actually bound, already in storage CRS, is known exactly here.
        box = self._bounds.get(rhs) or self._bounds.get(lhs)
        if (
            op == "s_disjoint"
            or self.rtree is None
            or box is None
            or self._geom not in (lhs, rhs)
            or not all(math.isfinite(v) for v in box)
        ):
            return self.fmt("({})", exact)
        return self.fmt("({} AND {})", self._rtree_prefilter(box), exact)

    def _rtree_prefilter(self, box: tuple[float, float, float, float]) -> str:
        """Rows whose R-tree entry meets ``box`` (storage CRS): the index part of a spatial test."""
        minx, miny, maxx, maxy = box
        rtree = quote_ident(self.rtree)  # type: ignore[arg-type]
        return self.fmt(
            "{} IN (SELECT {}.id FROM {} WHERE {}.minx <= {} AND {}.maxx >= {} "
            "AND {}.miny <= {} AND {}.maxy >= {})",
            quote_ident(self.rowid_column),
            rtree,
            rtree,
            rtree,
            self.param(maxx),
            rtree,
            self.param(minx),
            rtree,
            self.param(maxy),
            rtree,
            self.param(miny),
        )

    def dwithin(
        self, column: str, geojson: dict[str, Any], distance: float, crs: CRS, box: tuple[float, ...]
    ) -> str:
        geom = geometry_from_geojson(geojson, InvalidQuery, "filter: ")
        if not np.isfinite(shapely.get_coordinates(geom)).all():
            raise InvalidQuery("filter: geometry coordinates must be finite")
        # The literal stays in ``crs``: gh_dwithin moves each row there and measures.
        exact = self.fmt(
            "gh_dwithin({}, {}, {}, {}, {})",
            column,
            self.param(shapely.to_wkb(geom, byte_order=1, flavor="iso")),
            self.param(distance),
            self.param(crs.srid),
            self.param(self.storage_crs.srid),
        )
        if self.rtree is None or column != self._geom:
            return self.fmt("({})", exact)
        minx, miny, maxx, maxy = box
        search = shapely.box(minx, miny, maxx, maxy)
        if crs.srid != self.storage_crs.srid:
            search = shapely.segmentize(search, max(maxx - minx, maxy - miny) / 16 or 1)
            search = reproject.geometries(search, crs.srid, self.storage_crs.srid)
        bounds = tuple(shapely.bounds(search).tolist())
        if not all(math.isfinite(v) for v in bounds):
            return self.fmt("({})", exact)
        return self.fmt("({} AND {})", self._rtree_prefilter(bounds), exact)  # type: ignore[arg-type]

    def like(self, lhs: str, pattern: str) -> str:
        return self.fmt("({} LIKE {} ESCAPE '\\')", self._julian.get(lhs, lhs), pattern)

    def lower(self, expr: str) -> str:
        return self.fmt("gh_lower({})", self._julian.get(expr, expr))

    def time_value(self, expr: str) -> str:
        return self._as_time(expr)


# -- the file -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LayerInfo:
    """What the file's metadata says about one feature table."""

    table: str
    columns: tuple[tuple[str, str, bool, bool, bool], ...]  # name, type, notnull, pk, has default
    rowid_column: str  # the INTEGER PRIMARY KEY (GeoPackage's fid), or SQLite's rowid
    geometry_column: str | None
    geometry_type: str | None
    srs_id: int  # as written in blobs and gpkg_geometry_columns
    srid: int  # the EPSG code of srs_id
    z: int  # 0 prohibited, 1 mandatory, 2 optional
    m: int
    rtree: str | None  # the R-tree virtual table, if the layer is indexed
    rtree_triggers: bool  # the file maintains the R-tree itself
    count_triggers: bool  # GDAL's gpkg_ogr_contents.feature_count triggers exist
    ogr_contents: bool  # the file has GDAL's gpkg_ogr_contents table

    @property
    def column_names(self) -> list[str]:
        return [c[0] for c in self.columns]


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (sqlite3.Connection itself cannot)."""


class GeoPackage:
    """One .gpkg file, shared by all its published layers.

    Connections are opened lazily and one per thread (and per process: gunicorn forks
    workers after the app is built, and a SQLite connection must not cross a fork).
    Streams and exports get a private connection of their own that they close.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = 10_000) -> None:
        self.path = os.fspath(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._generation = 0
        # Thread connections, held weakly: a finished thread's goes with its thread-local.
        self._open: weakref.WeakKeyDictionary[sqlite3.Connection, int] = weakref.WeakKeyDictionary()
        # Connections inherited from a parent process: never used nor closed here.
        self._inherited: list[sqlite3.Connection] = []
        self._wal_checked = False
        self._layers: dict[str, LayerInfo] = {}
        self._writer: tuple[int, threading.Lock] = (os.getpid(), threading.Lock())

    # -- connections ----------------------------------------------------------------------
    def connect(self) -> sqlite3.Connection:
        """A new configured connection; the caller owns (and closes) it."""
        uri = Path(self.path).resolve().as_uri()
        conn: sqlite3.Connection | None = None
        last: Exception | None = None
        for mode in ("rw", "ro"):
            try:
                conn = sqlite3.connect(
                    f"{uri}?mode={mode}",
                    uri=True,
                    check_same_thread=False,
                    isolation_level=None,  # explicit BEGIN IMMEDIATE / COMMIT in writes
                    timeout=self.busy_timeout_ms / 1000,
                    factory=_Connection,
                )
                break
            except sqlite3.OperationalError as exc:
                last = exc
        if conn is None:
            raise Unavailable(f"cannot open GeoPackage {os.path.basename(self.path)}: {last}")
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA case_sensitive_like = ON")  # CQL2 LIKE is case-sensitive
            _register_functions(conn)
            if not self._wal_checked:
                with self._lock:
                    if not self._wal_checked:
                        try:
                            # Readers then never block the writer; persistent in the file.
                            conn.execute("PRAGMA journal_mode = WAL").fetchone()
                        except sqlite3.OperationalError as exc:
                            LOGGER.info("%s stays in its journal mode: %s", self.path, exc)
                        self._wal_checked = True
        except sqlite3.Error as exc:
            conn.close()
            raise Unavailable(f"cannot use GeoPackage {os.path.basename(self.path)}: {exc}") from exc
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        pid = os.getpid()
        if conn is not None and local.pid == pid and local.generation == self._generation:
            return conn
        if conn is not None and local.pid != pid:
            self._inherited.append(conn)
        conn = self.connect()
        with self._lock:
            self._open[conn] = pid
            local.conn, local.pid, local.generation = conn, pid, self._generation
        return conn

    # -- revisions ---------------------------------------------------------------------
    @property
    def revisions_path(self) -> Path:
        return Path(self.path).with_suffix(".geoharbor.sqlite")

    def _revisions(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.revisions_path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS revisions (layer TEXT PRIMARY KEY, revision INTEGER NOT NULL)"
        )
        return conn

    def revision(self, layer: str) -> int | None:
        """The layer's write counter: 0 before geoharbor's first write, None if unreadable."""
        if not self.revisions_path.exists():
            return 0
        try:
            conn = sqlite3.connect(
                f"{self.revisions_path.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=self.busy_timeout_ms / 1000,
            )
            try:
                row = conn.execute("SELECT revision FROM revisions WHERE layer = ?", (layer,)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            LOGGER.warning("cannot read the revision of %s: %s", layer, exc)
            return None
        return 0 if row is None else int(row[0])

    def bump_revision(self, layer: str) -> None:
        """Count one more write to ``layer``; failures are logged (tiles are then not cached)."""
        try:
            conn = self._revisions()
            try:
                conn.execute(
                    "INSERT INTO revisions (layer, revision) VALUES (?, 1) "
                    "ON CONFLICT (layer) DO UPDATE SET revision = revision + 1",
                    (layer,),
                )
            finally:
                conn.close()
        except sqlite3.Error as exc:
            LOGGER.error("cannot record a write to %s in %s: %s", layer, self.revisions_path, exc)

    def write_lock(self) -> threading.Lock:
        """Serialises this process's writers to the file.

        Threads then queue on a lock instead of polling SQLite's busy handler, which
        sleeps in growing steps; other processes are still handled by busy_timeout. A
        new lock after a fork, as a lock held by another thread at fork time never
        gets released in the child.
        """
        pid, lock = self._writer
        if pid != os.getpid():
            with self._lock:
                if self._writer[0] != os.getpid():
                    self._writer = (os.getpid(), threading.Lock())
                lock = self._writer[1]
        return lock

    @contextlib.contextmanager
    def write_transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the write lock; ``ROLLBACK`` on any error.

        Every writer of the file (features, tables, loads) goes through here; SQLite's
        own errors pass through for each caller to word.
        """
        lock = self.write_lock()
        if not lock.acquire(timeout=self.busy_timeout_ms / 1000):
            raise Unavailable("the GeoPackage is busy with other writes")
        try:
            conn = self.connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise Unavailable(f"the GeoPackage is busy: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            lock.release()

    def ping(self) -> bool:
        try:
            self.connection().execute("SELECT 1 FROM gpkg_contents LIMIT 1").fetchall()
            return True
        except Exception:  # noqa: BLE001 - health reports any failure as down
            return False

    def close(self) -> None:
        """Close this process's connections (the last close checkpoints the WAL)."""
        with self._lock:
            pid = os.getpid()
            for conn, owner in list(self._open.items()):
                if owner == pid:
                    conn.close()
            self._open.clear()
            self._generation += 1

    # -- discovery ------------------------------------------------------------------------
    def discover(self) -> list[str]:
        """Every feature layer the file lists in gpkg_contents."""
        try:
            rows = (
                self.connection()
                .execute(
                    "SELECT table_name FROM gpkg_contents WHERE lower(data_type) = 'features' "
                    "ORDER BY table_name"
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise Unavailable(f"{os.path.basename(self.path)} is not a readable GeoPackage: {exc}") from exc
        return [r[0] for r in rows]

    def layer_info(self, layer: str) -> LayerInfo:
        """The layer's metadata, read once."""
        info = self._layers.get(layer)
        if info is None:
            try:
                info = self._read_layer(layer)
            except sqlite3.Error as exc:
                raise Unavailable(f"cannot read layer {layer!r}: {exc}") from exc
            with self._lock:
                self._layers[layer] = info
        return info

    def _read_layer(self, layer: str) -> LayerInfo:
        conn = self.connection()
        row = conn.execute(
            "SELECT table_name, data_type FROM gpkg_contents WHERE table_name = ? COLLATE NOCASE",
            (layer,),
        ).fetchone()
        # Attribute tables (no geometry) too: the REST rows routes read and write them.
        if row is None or str(row[1]).lower() not in ("features", "attributes"):
            raise NotFound(f"GeoPackage {os.path.basename(self.path)} has no feature layer {layer!r}")
        table = row[0]
        columns = tuple(
            (name, typ or "", bool(notnull), bool(pk), default is not None)
            for name, typ, notnull, pk, default in conn.execute(
                'SELECT name, type, "notnull", pk, dflt_value FROM pragma_table_info(?) ORDER BY cid',
                (table,),
            )
        )
        if not columns:
            raise NotFound(f"layer {layer!r} is listed but its table is missing")
        pks = [c for c in columns if c[3]]
        rowid = pks[0][0] if len(pks) == 1 and _base_type(pks[0][1]) == "INTEGER" else "rowid"
        geo = conn.execute(
            "SELECT column_name, geometry_type_name, srs_id, z, m FROM gpkg_geometry_columns "
            "WHERE table_name = ? COLLATE NOCASE",
            (table,),
        ).fetchone()
        geom_col = gtype = None
        srs_id, z, m = 4326, 2, 2
        if geo is not None:
            geom_col, gtype, srs_id, z, m = geo[0], str(geo[1]).upper(), int(geo[2]), int(geo[3]), int(geo[4])
        srid = self._epsg(conn, srs_id, table)
        names = {
            name.lower(): kind
            for name, kind in conn.execute(
                "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'trigger')"
            )
        }
        rtree = f"rtree_{table}_{geom_col}" if geom_col else None
        if rtree is not None and names.get(rtree.lower()) != "table":
            rtree = None
        triggers = {
            n.lower()
            for (n,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? COLLATE NOCASE",
                (table,),
            )
        }
        return LayerInfo(
            table=table,
            columns=columns,
            rowid_column=rowid,
            geometry_column=geom_col,
            geometry_type=gtype,
            srs_id=srs_id,
            srid=srid,
            z=z,
            m=m,
            rtree=rtree,
            rtree_triggers=rtree is not None and f"{rtree}_insert".lower() in triggers,
            count_triggers=f"trigger_insert_feature_count_{table}".lower() in triggers,
            ogr_contents=names.get("gpkg_ogr_contents") == "table",
        )

    def _epsg(self, conn: sqlite3.Connection, srs_id: int, table: str) -> int:
        """The EPSG code of a GeoPackage srs_id (normally the same number)."""
        row = conn.execute(
            "SELECT organization, organization_coordsys_id, definition FROM gpkg_spatial_ref_sys "
            "WHERE srs_id = ?",
            (srs_id,),
        ).fetchone()
        if row is not None and str(row[0]).upper() == "EPSG" and row[1]:
            return int(row[1])
        if srs_id in (0, -1) or row is None:
            LOGGER.warning("%s: undefined SRS %s, assumed to be EPSG:4326 as PostGIS does", table, srs_id)
            return 4326
        try:
            code = ProjCRS.from_user_input(row[2]).to_epsg(min_confidence=70)
        except CRSError:
            code = None
        if code is None:
            raise InvalidData(f"{table}: srs_id {srs_id} ({row[0]}:{row[1]}) has no EPSG equivalent")
        return int(code)

    # -- schema ---------------------------------------------------------------------------
    def describe(
        self,
        layer: str,
        id_column: str | None = None,
        time_column: str | None = None,
        properties: list[str] | None = None,
    ) -> CollectionSchema:
        """The layer's attributes, id, geometry and CRS, read from the file itself."""
        try:
            info = self._read_layer(layer)
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot read layer {layer!r}: {exc}") from exc
        with self._lock:
            self._layers[layer] = info
        types = {c[0]: c[1] for c in info.columns}
        if id_column is None:
            if info.rowid_column != "rowid":
                id_column = info.rowid_column
            else:
                id_column = next((c for c in ("id", "fid", "gid", "ogc_fid") if c in types), None)
        if id_column is None or id_column not in types:
            raise InvalidData(f"{info.table}: no usable id column; set id_column")
        if time_column is not None and time_column not in types:
            raise InvalidData(f"{info.table}: time_column {time_column!r} is not a column")
        fields: dict[str, Field] = {}
        for name, typ, notnull, _pk, _default in info.columns:
            if name in (id_column, info.geometry_column):
                continue
            if properties is not None and name not in properties:
                continue
            kind, fmt = _JSON_TYPES.get(_base_type(typ), ("string", None))
            fields[name] = Field(name, kind, fmt, not notnull, typ)
        if time_column is None:
            time_column = next((n for n, f in fields.items() if f.format in ("date", "date-time")), None)
        id_kind = _JSON_TYPES.get(_base_type(types[id_column]), ("string", None))[0]
        id_default = id_column == info.rowid_column or next(c[4] for c in info.columns if c[0] == id_column)
        return CollectionSchema(
            id_field=id_column,
            geometry_field=info.geometry_column,
            geometry_type=info.geometry_type,
            storage_crs=from_srid(info.srid),
            fields=fields,
            id_type="integer" if id_kind == "integer" else "string",
            id_native_type=types[id_column],
            id_has_default=bool(id_default),
            time_field=time_column,
        )

    def compute_extents(self, layer: str, schema: CollectionSchema) -> None:
        """Fill the schema's CRS84 bbox (R-tree, else gpkg_contents) and temporal extent."""
        info = self.layer_info(layer)
        conn = self.connection()
        try:
            box = None
            if schema.geometry_field:
                if info.rtree:
                    box = _rtree_extent(conn, info.rtree)
                if box is None:
                    row = conn.execute(
                        "SELECT min_x, min_y, max_x, max_y FROM gpkg_contents WHERE table_name = ?",
                        (info.table,),
                    ).fetchone()
                    if row and None not in row:
                        box = tuple(float(v) for v in row)
            if box is not None:
                minx, miny, maxx, maxy = box
                if info.srid != 4326:
                    minx, miny, maxx, maxy = _crs84_bounds(conn, info, box)
                if all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
                    schema.bbox = (max(-180.0, minx), max(-90.0, miny), min(180.0, maxx), min(90.0, maxy))
            if schema.time_field:
                col = quote_ident(schema.time_field)
                low, high = conn.execute(
                    _compose(
                        "SELECT min(julianday({})), max(julianday({})) FROM {}",
                        col,
                        col,
                        quote_ident(info.table),
                    )
                ).fetchone()
                date_only = (
                    _base_type(next(c[1] for c in info.columns if c[0] == schema.time_field)) == "DATE"
                )
                schema.temporal = (_from_julian(low, date_only), _from_julian(high, date_only))
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot compute the extents of {layer!r}: {exc}") from exc


#: Layers up to this many features get an exact CRS84 extent from their vertices.
EXACT_EXTENT_FEATURES = 200_000


def _crs84_bounds(conn: sqlite3.Connection, info: LayerInfo, box: tuple[float, ...]) -> tuple[float, ...]:
    """The CRS84 extent of a layer stored in another CRS.

    Reprojecting the layer's box overshoots (its corners, or a feature's, may lie far
    outside the CRS's area of use), so small layers reproject every vertex, as
    PostGIS's ``ST_Extent(ST_Transform(geom))`` does; large ones their R-tree boxes.
    """
    transformer = reproject.transformer(info.srid, 4326)
    xs = ys = None
    if info.geometry_column:
        table, column = quote_ident(info.table), quote_ident(info.geometry_column)
        count = conn.execute(_compose("SELECT count(*) FROM {}", table)).fetchone()[0]
        if count <= EXACT_EXTENT_FEATURES:
            blobs = [r[0] for r in conn.execute(_compose("SELECT {} FROM {}", column, table))]
            coords = shapely.get_coordinates(decode_geometries(blobs))
            xs, ys = coords[:, 0], coords[:, 1]
        elif info.rtree:
            rows = conn.execute(_compose("SELECT minx, maxx, miny, maxy FROM {}", quote_ident(info.rtree)))
            cells = np.asarray(rows.fetchall(), dtype=float)
            xs = np.concatenate([cells[:, 0], cells[:, 1], cells[:, 0], cells[:, 1]])
            ys = np.concatenate([cells[:, 2], cells[:, 2], cells[:, 3], cells[:, 3]])
    if xs is not None and len(xs):
        lon, lat = transformer.transform(xs, ys)
        ok = np.isfinite(lon) & np.isfinite(lat)
        if ok.any():
            return (float(lon[ok].min()), float(lat[ok].min()), float(lon[ok].max()), float(lat[ok].max()))
    return transformer.transform_bounds(*box, densify_pts=21)


def _rtree_extent(conn: sqlite3.Connection, rtree: str) -> tuple[float, float, float, float] | None:
    """The union of the R-tree root node's cells: the layer's extent without a full scan.

    The node format (2-byte depth, 2-byte cell count, cells of an 8-byte id and four
    big-endian float32) is SQLite's; anything unexpected falls back to an aggregate.
    """
    node_table = quote_ident(f"{rtree}_node")
    try:
        row = conn.execute(_compose("SELECT data FROM {} WHERE nodeno = 1", node_table)).fetchone()
        if row is not None and isinstance(row[0], bytes) and len(row[0]) >= 4:
            data = row[0]
            count = struct.unpack_from(">H", data, 2)[0]
            if count == 0:
                return None
            if 4 + count * 24 <= len(data):
                cells = [struct.unpack_from(">4f", data, 4 + i * 24 + 8) for i in range(count)]
                return (
                    min(c[0] for c in cells),
                    min(c[2] for c in cells),
                    max(c[1] for c in cells),
                    max(c[3] for c in cells),
                )
    except (sqlite3.Error, struct.error):
        pass
    table = quote_ident(rtree)
    row = conn.execute(
        _compose("SELECT min(minx), min(miny), max(maxx), max(maxy) FROM {}", table)
    ).fetchone()
    if row is None or row[0] is None:
        return None
    return tuple(float(v) for v in row)  # type: ignore[return-value]


# -- one collection -----------------------------------------------------------------------


class GeoPackageProvider(FeatureProvider):
    """A feature layer of a :class:`GeoPackage` published as a collection."""

    def __init__(
        self,
        gpkg: GeoPackage,
        layer: str,
        schema: CollectionSchema,
        *,
        editable: bool = False,
        count_mode: CountMode = "exact",
    ) -> None:
        self.gpkg = gpkg
        self.layer = layer
        self.schema = schema
        self.editable = editable
        self.count_mode = count_mode
        self._info = gpkg.layer_info(layer)
        self._table = quote_ident(self._info.table)
        self._id = quote_ident(schema.id_field)
        self._rowid = quote_ident(self._info.rowid_column)
        self._geom = quote_ident(schema.geometry_field) if schema.geometry_field else None
        self._storage = schema.storage_crs.srid
        self._temporal = {n for n, f in schema.fields.items() if f.format in ("date", "date-time")}
        if schema.time_field:
            self._temporal.add(schema.time_field)
        self._all_columns = self._info.column_names

    def ping(self) -> bool:
        return self.gpkg.ping()

    # -- SQL pieces ---------------------------------------------------------------------
    def _dialect(self) -> SQLiteDialect:
        return SQLiteDialect(
            self._info.table,
            self.schema.geometry_field,
            self.schema.storage_crs,
            rowid_column=self._info.rowid_column,
            rtree=self._info.rtree,
            temporal_columns=self._temporal,
        )

    def _where(self, query: Query, *more: Query) -> tuple[str, dict[str, Any]]:
        """One WHERE clause for the conditions of ``query`` and of every query in ``more``, AND-ed.

        One compiler and one dialect for all of them, so their bound parameters share a
        namespace and every spatial condition gets the R-tree prefilter.
        """
        dialect = self._dialect()
        compiler = Compiler(self.schema, dialect)
        clauses = [c for c in (compiler.where(q) for q in (*more, query)) if c is not None]
        if not clauses:
            return "", dialect.params
        return " WHERE " + " AND ".join(clauses), dialect.params

    def _order(self, query: Query) -> str:
        """ORDER BY with PostgreSQL's NULL placement and the id last, for a stable order."""
        terms = []
        for name, ascending in query.sortby:
            self.schema.check_property(name)
            column = quote_ident(name)
            if name in self._temporal:
                column = _compose("julianday({})", column)
            terms.append(column + (" ASC NULLS LAST" if ascending else " DESC NULLS FIRST"))
        if not any(name == self.schema.id_field for name, _ in query.sortby):
            terms.append(self._id)
        return " ORDER BY " + ", ".join(terms)

    def _columns(self, names: list[str], geometry: bool) -> str:
        columns = [self._id]
        if geometry:
            columns.append(self._geom or "NULL")
        columns += [quote_ident(n) for n in names]
        return ", ".join("t." + c if c != "NULL" else c for c in columns)

    def _page_sql(self, query: Query, columns: str) -> tuple[str, str, dict[str, Any]]:
        if query.limit < 0 or query.offset < 0:
            raise InvalidQuery("limit and offset must not be negative")
        where, params = self._where(query)
        select = _compose(
            "SELECT {} FROM {} AS t{}{} LIMIT :_limit OFFSET :_offset",
            columns,
            self._table,
            where,
            self._order(query),
        )
        return select, where, {**params, "_limit": int(query.limit), "_offset": int(query.offset)}

    # -- encoding -----------------------------------------------------------------------
    def _value_converters(self, names: list[str], for_json: bool) -> list[Callable[[Any], Any] | None]:
        """How each stored attribute becomes what PostGIS would return for its type."""
        out: list[Callable[[Any], Any] | None] = []
        for name in names:
            field = self.schema.fields[name]
            if field.type == "boolean":
                out.append(lambda v: v if v is None else bool(v))
            elif _base_type(field.native_type) == "BLOB":
                out.append(_blob_json if for_json else None)
            elif not for_json and field.format in ("date", "date-time"):
                out.append(_time_value)
            else:
                out.append(None)
        return out

    def _geometry_texts(self, blobs: list[bytes | None], crs: CRS, decimals: int | None) -> list[str | None]:
        geoms = decode_geometries(blobs)
        geoms = reproject.geometries(
            geoms, self._storage, crs.srid, swap_out=crs.lat_first, decimals=decimals
        )
        return geojson_geometries(geoms)

    def _encoder(self, crs: CRS, names: list[str], geometry: bool) -> Callable[[list[tuple]], list[bytes]]:
        """Rows (id, [geometry blob], *attributes) -> GeoJSON Feature bytes, one batch at a time."""
        converters = self._value_converters(names, for_json=True)
        decimals = coordinate_precision(crs)
        first = 2 if geometry else 1

        def encode(rows: list[tuple]) -> list[bytes]:
            if not rows:
                return []
            texts: list[str | None] = (
                self._geometry_texts([r[1] for r in rows], crs, decimals) if geometry else [None] * len(rows)
            )
            out = []
            for row, text in zip(rows, texts, strict=True):
                props = {}
                for i, (name, conv) in enumerate(zip(names, converters, strict=True)):
                    value = row[first + i]
                    props[name] = value if conv is None else conv(value)
                out.append(
                    orjson.dumps(
                        {
                            "type": "Feature",
                            "id": row[0],
                            "geometry": None if text is None else orjson.Fragment(text),
                            "properties": props,
                        }
                    )
                )
            return out

        return encode

    # -- reads ----------------------------------------------------------------------------
    def query(self, query: Query) -> FeaturePage:
        names = self.schema.selected(query.properties)
        geometry = self._geom is not None and not query.skip_geometry
        select, where, params = self._page_sql(query, self._columns(names, geometry))
        encode = self._encoder(query.crs, names, geometry)
        mode = self.count_mode if query.count == "auto" else query.count
        matched = self._count(where, params, mode)
        if query.limit > STREAM_THRESHOLD:
            return FeaturePage(self._stream(select, params, encode), matched)
        try:
            rows = self.gpkg.connection().execute(select, params).fetchall()
        except (sqlite3.Error, OverflowError) as exc:
            raise _read_error(exc) from exc
        return FeaturePage(iter(encode(rows)), matched)

    def explain(self, query: Query) -> list[str]:
        """SQLite's plan for a page of ``query`` (shows whether the R-tree is used)."""
        names = self.schema.selected(query.properties)
        select, _, params = self._page_sql(query, self._columns(names, not query.skip_geometry))
        rows = self.gpkg.connection().execute("EXPLAIN QUERY PLAN " + select, params).fetchall()
        return [str(r[-1]) for r in rows]

    def _rows(self, select: str, params: dict[str, Any]) -> Iterator[list[tuple]]:
        """Batches of rows from a private connection, closed when the consumer is done.

        The connection is opened on the first ``next()``, so an iterator that is never
        consumed holds nothing.
        """
        conn = self.gpkg.connect()
        try:
            cursor = conn.execute(select, params)
            while batch := cursor.fetchmany(STREAM_BATCH):
                yield batch
        except (sqlite3.Error, OverflowError) as exc:
            raise _read_error(exc) from exc
        finally:
            conn.close()

    def _stream(
        self, select: str, params: dict[str, Any], encode: Callable[[list[tuple]], list[bytes]]
    ) -> Iterator[bytes]:
        for batch in self._rows(select, params):
            yield from encode(batch)

    def _count(self, where: str, params: dict[str, Any], mode: CountMode) -> Count | None:
        """Exact: a count(*) with the R-tree prefilter is cheap in SQLite, no estimate needed."""
        if mode == "none":
            return None
        try:
            row = (
                self.gpkg.connection()
                .execute(_compose("SELECT count(*) FROM {} AS t{}", self._table, where), params)
                .fetchone()
            )
        except (sqlite3.Error, OverflowError) as exc:
            raise _read_error(exc) from exc
        return Count(int(row[0]), True)

    def records(self, query: Query, geometry: GeometryEncoding = "wkt") -> tuple[list[str], Iterator[tuple]]:
        names = self.schema.selected(query.properties)
        with_geometry = geometry != "none" and self._geom is not None and not query.skip_geometry
        header = [self.schema.id_field]
        if with_geometry:
            header.append(self.schema.geometry_field or "geometry")
        header += names
        select, _, params = self._page_sql(query, self._columns(names, with_geometry))
        converters = self._value_converters(names, for_json=False)
        first = 2 if with_geometry else 1
        crs = query.crs
        storage = self._storage

        def encode_geometries(blobs: list[bytes | None]) -> list[Any]:
            geoms = decode_geometries(blobs)
            # ST_AsGeoJSON's default of 9 decimals; WKT and WKB at full precision.
            decimals = 9 if geometry == "geojson" else None
            geoms = reproject.geometries(geoms, storage, crs.srid, swap_out=crs.lat_first, decimals=decimals)
            if geometry == "wkt":
                return shapely.to_wkt(geoms, rounding_precision=-1).tolist()
            if geometry == "wkb":
                return shapely.to_wkb(geoms, flavor="iso").tolist()
            return geojson_geometries(geoms)

        def rows() -> Iterator[tuple]:
            for batch in self._rows(select, params):
                shapes = encode_geometries([r[1] for r in batch]) if with_geometry else None
                for index, row in enumerate(batch):
                    values = [
                        value if conv is None else conv(value)
                        for value, conv in zip(row[first:], converters, strict=True)
                    ]
                    lead = (row[0], shapes[index]) if shapes is not None else (row[0],)
                    yield (*lead, *values)

        return header, rows()

    def _id_value(self, fid: Any) -> Any:
        """The id as the column's type; anything that cannot be one is simply not found."""
        if self.schema.id_type == "integer":
            try:
                value = int(str(fid))
                if not _INT64[0] <= value <= _INT64[1]:
                    raise ValueError
            except ValueError as exc:
                raise NotFound(f"feature {str(fid)[:100]!r} not found") from exc
            return value
        return str(fid)

    def _read_row(self, conn: sqlite3.Connection, key: Any) -> dict[str, Any] | None:
        """Every stored column of one row, whatever the collection publishes."""
        select = _compose(
            "SELECT {} FROM {} WHERE {} = ?",
            ", ".join(quote_ident(c) for c in self._all_columns),
            self._table,
            self._id,
        )
        row = conn.execute(select, (key,)).fetchone()
        return None if row is None else dict(zip(self._all_columns, row, strict=True))

    def _stored(
        self, row: dict[str, Any], crs: CRS, properties: list[str] | None, skip_geometry: bool
    ) -> StoredFeature:
        """The feature as GeoJSON and a tag over the stored row, not over this representation."""
        etag = version_tag(*(v if isinstance(v, bytes) else repr(v).encode() for v in row.values()))
        names = self.schema.selected(properties)
        geometry = self._geom is not None and not skip_geometry
        values: list[Any] = [row[self.schema.id_field]]
        if geometry:
            values.append(row[self.schema.geometry_field])  # type: ignore[index]
        values += [row[n] for n in names]
        body = self._encoder(crs, names, geometry)([tuple(values)])[0]
        return StoredFeature(row[self.schema.id_field], body, etag)

    def get(
        self,
        fid: str,
        crs: CRS = CRS84,
        properties: list[str] | None = None,
        skip_geometry: bool = False,
    ) -> StoredFeature:
        key = self._id_value(fid)
        try:
            row = self._read_row(self.gpkg.connection(), key)
        except (sqlite3.Error, OverflowError) as exc:
            raise _read_error(exc) from exc
        if row is None:
            raise NotFound(f"feature {str(fid)[:100]!r} not found")
        return self._stored(row, crs, properties, skip_geometry)

    # -- vector tiles ---------------------------------------------------------------------
    def tile(self, request: TileRequest, query: Query) -> bytes:
        """One MVT layer of the features within the tile and its buffer; ``b""`` when there are none.

        The tile's box selects rows through the same compiler (and R-tree) as a ``bbox``
        query, AND-ed with the request's filter, so a tile can never show a feature the
        items of the same filter would not.
        """
        if self._geom is None:
            raise InvalidQuery("this collection has no geometry, so it has no vector tiles")
        if not request.layer:
            raise InvalidQuery("an MVT layer needs a name")
        names = self.schema.selected(query.properties)
        box = mvt.search_box(request, self._storage)
        if box is None:
            return b""
        with_rowid = self.schema.id_type != "integer" and self._id != self._rowid
        columns = self._columns(names, True) + (", t." + self._rowid if with_rowid else "")
        # Tile paging makes no sense: only the filter's conditions and the tile's box apply.
        conditions = Query(
            datetime=query.datetime,
            equals=query.equals,
            filter=query.filter,
            filter_crs=query.filter_crs,
            bbox=query.bbox,
            bbox_crs=query.bbox_crs,
        )
        if request.crs.lat_first:  # the compiler reads a bbox in the CRS's own axis order
            box = (box[1], box[0], box[3], box[2])
        where, params = self._where(conditions, Query(bbox=box, bbox_crs=request.crs))
        select = _compose(
            # rowid order is the order the R-tree's id list is read in: free, and stable.
            "SELECT {} FROM {} AS t{} ORDER BY t.{} LIMIT :_limit",
            columns,
            self._table,
            where,
            self._rowid,
        )
        conn = self.gpkg.connection()
        try:
            with _interruptible(conn, request.client_gone):
                rows = conn.execute(select, {**params, "_limit": int(request.max_features)}).fetchall()
        except (sqlite3.Error, OverflowError) as exc:
            raise _read_error(exc) from exc
        if not rows:
            return b""
        mvt.check_client(request)
        return self._encode_tile(rows, names, request, with_rowid)

    def _encode_tile(
        self, rows: list[tuple], names: list[str], request: TileRequest, with_rowid: bool
    ) -> bytes:
        """MVT bytes of rows (id, geometry blob, *attributes[, rowid]) with one layer, ``request.layer``."""
        geoms = mvt.tile_geometries(decode_geometries([r[1] for r in rows]), self._storage, request)
        mvt.check_client(request)
        converters = self._value_converters(names, for_json=True)
        integer_ids = self.schema.id_type == "integer"
        features = []
        for i in np.flatnonzero(~shapely.is_missing(geoms)):
            row = rows[i]
            props: dict[str, Any] = {}
            if not integer_ids:
                props[self.schema.id_field] = mvt.scalar(row[0])
            for name, conv, value in zip(names, converters, row[2 : 2 + len(names)], strict=True):
                value = mvt.scalar(value if conv is None or value is None else conv(value))
                if value is not None:
                    props[name] = value
            features.append(
                {"geometry": geoms[i], "properties": props, "id": row[-1] if with_rowid else row[0]}
            )
        return mvt.encode(request.layer, features, request.extent)

    # -- revisions ------------------------------------------------------------------------
    def revision(self) -> int | None:
        """This layer's write counter, from the file's revision store, so every process agrees."""
        return self.gpkg.revision(self._info.table)

    # -- writes ---------------------------------------------------------------------------
    def _cell(self, field: Field, value: Any) -> Any:
        """A property value as the column stores it; InvalidData when it does not fit the type."""
        if value is None:
            if not field.nullable:
                raise InvalidData(f"property {field.name!r} must not be null")
            return None
        base = _base_type(field.native_type)
        try:
            if field.type == "integer":
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError
                low, high = _INT_RANGES.get(base, _INT64)
                if not low <= value <= high:
                    raise ValueError
                return value
            if field.type == "number":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError
                return float(value)
            if field.type == "boolean":
                if not isinstance(value, bool):
                    raise ValueError
                return int(value)
            if field.format == "date":
                parsed = _parse_time(value) if isinstance(value, str) else value
                if not isinstance(parsed, date):
                    raise ValueError
                return parsed.date().isoformat() if isinstance(parsed, datetime) else parsed.isoformat()
            if field.format == "date-time":
                parsed = _parse_time(value) if isinstance(value, str) else value
                if not isinstance(parsed, date):
                    raise ValueError
                if not isinstance(parsed, datetime):
                    parsed = datetime(parsed.year, parsed.month, parsed.day, tzinfo=UTC)
                return _time_text(parsed)
            text = value if isinstance(value, str) else orjson.dumps(value).decode()
            limit = _max_length(field.native_type)
            if limit is not None and len(text) > limit:
                raise InvalidData(f"property {field.name!r} is longer than {limit} characters")
            return text
        except (ValueError, TypeError, OverflowError, orjson.JSONEncodeError) as exc:
            raise InvalidData(
                f"property {field.name!r} is of type {field.native_type or field.type}; "
                f"{str(value)[:60]!r} does not fit"
            ) from exc

    def _geometry_blob(
        self, geojson: dict[str, Any], crs: CRS
    ) -> tuple[bytes, tuple[float, float, float, float] | None]:
        """A GeoJSON geometry in ``crs`` as a blob in storage CRS, checked against the layer's type.

        Returns the blob and its (minx, miny, maxx, maxy), None when empty.
        """
        geom = geometry_from_geojson(geojson, InvalidData)
        try:
            geom = reproject.geometries(geom, crs.srid, self._storage, swap_in=crs.lat_first)
        except InvalidQuery as exc:
            raise InvalidData(exc.message) from exc
        if not np.isfinite(shapely.get_coordinates(geom)).all():
            raise InvalidData("geometry has coordinates that cannot be stored in the collection's CRS")
        declared = (self._info.geometry_type or "GEOMETRY").upper()
        actual = _TYPE_NAMES[int(shapely.get_type_id(geom))]
        if declared != "GEOMETRY":
            promote = _PROMOTE.get((actual, _MULTI_OF.get(declared, declared)))
            if promote is not None:
                geom = shapely.from_wkt(f"MULTI{actual} EMPTY") if geom.is_empty else promote([geom])
                actual = _TYPE_NAMES[int(shapely.get_type_id(geom))]
            if actual not in _ACCEPTS.get(declared, {declared}):
                raise InvalidData(
                    f"geometry type ({actual.title()}) does not match "
                    f"the collection's type ({declared.title()})"
                )
        has_z = bool(shapely.has_z(geom))
        if self._info.z == 0 and has_z:
            raise InvalidData("geometry has Z dimension but the collection does not")
        if self._info.z == 1 and not has_z and not geom.is_empty:
            raise InvalidData("the collection has Z dimension but the geometry does not")
        bounds = None if geom.is_empty else tuple(shapely.bounds(geom).tolist())
        return encode_geometry(geom, self._info.srs_id), bounds  # type: ignore[return-value]

    def _sync_rtree(self, conn: sqlite3.Connection, rowid: Any, bounds: tuple | None) -> None:
        """Keep the R-tree right when the file has no triggers doing it (GDAL's files have)."""
        info = self._info
        if info.rtree is None or info.rtree_triggers or rowid is None:
            return
        rtree = quote_ident(info.rtree)
        if bounds is None:
            conn.execute(_compose("DELETE FROM {} WHERE id = ?", rtree), (rowid,))
        else:
            minx, miny, maxx, maxy = bounds
            conn.execute(
                _compose(
                    "INSERT OR REPLACE INTO {} (id, minx, maxx, miny, maxy) VALUES (?, ?, ?, ?, ?)", rtree
                ),
                (rowid, minx, maxx, miny, maxy),
            )

    def _rowid_of(self, conn: sqlite3.Connection, key: Any) -> Any:
        if self.schema.id_field == self._info.rowid_column:
            return key
        row = conn.execute(
            _compose("SELECT {} FROM {} WHERE {} = ?", self._rowid, self._table, self._id), (key,)
        ).fetchone()
        return None if row is None else row[0]

    def _touch(self, conn: sqlite3.Connection, written: list[tuple[float, float, float, float]]) -> None:
        """Record the change in gpkg_contents (and GDAL's feature count when no trigger keeps it).

        Also counts the write in the layer's revision, in the same transaction: a tile
        cached under the old revision can then never outlive the data it was made of.
        """
        conn.execute(
            "UPDATE gpkg_contents SET last_change = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
            "WHERE table_name = ?",
            (self._info.table,),
        )
        if written:
            conn.execute(
                "UPDATE gpkg_contents SET min_x = min(min_x, ?), min_y = min(min_y, ?), "
                "max_x = max(max_x, ?), max_y = max(max_y, ?) WHERE table_name = ? "
                "AND min_x IS NOT NULL AND min_y IS NOT NULL AND max_x IS NOT NULL AND max_y IS NOT NULL",
                (
                    min(b[0] for b in written),
                    min(b[1] for b in written),
                    max(b[2] for b in written),
                    max(b[3] for b in written),
                    self._info.table,
                ),
            )
        if self._info.ogr_contents and not self._info.count_triggers:
            # GDAL recounts when the cached count is NULL.
            conn.execute(
                "UPDATE gpkg_ogr_contents SET feature_count = NULL WHERE lower(table_name) = lower(?)",
                (self._info.table,),
            )

    def apply_writes(self, ops: list[Write], crs: CRS = CRS84) -> list[StoredFeature | None]:
        """All ``ops`` in one IMMEDIATE transaction; see :meth:`FeatureProvider.write`.

        SQLite does not check geometry against the layer: :meth:`_geometry_blob` does,
        the way PostGIS typmods do (type with single-to-multi promotion, dimension,
        CRS), so both backends accept and refuse the same features.
        """
        self.require_editable()
        if not ops:
            return []

        def work(conn: sqlite3.Connection, written: list) -> list[StoredFeature | None]:
            out: list[StoredFeature | None] = []
            for index, op in enumerate(ops):
                with numbered(index, len(ops)):
                    try:
                        out.append(self._apply(conn, op, crs, written))
                    except (sqlite3.Error, OverflowError) as exc:
                        raise _write_error(exc) from exc
            return out

        return self._write(work)

    def _write(self, work: Callable[[sqlite3.Connection, list], Any]) -> Any:
        """Run ``work(conn, written_bounds)`` in one IMMEDIATE transaction; all or nothing."""
        self.require_editable()
        try:
            with self.gpkg.write_transaction() as conn:
                written: list[tuple[float, float, float, float]] = []
                result = work(conn, written)
                self._touch(conn, written)
        except (sqlite3.Error, OverflowError) as exc:
            raise _write_error(exc) from exc
        # After the commit: a tile computed meanwhile is cached under the old number.
        self.gpkg.bump_revision(self._info.table)
        return result

    def _apply(self, conn: sqlite3.Connection, op: Write, crs: CRS, written: list) -> StoredFeature | None:
        """One op of a batch, inside the batch's transaction; ``written`` collects new bounds."""
        if op.action == "create":
            return self._read_stored(conn, self._insert(conn, op.feature, crs, written))
        key = self._id_value(op.fid)
        self._check_version(conn, key, op.if_match)
        if op.action == "delete":
            rowid = self._rowid_of(conn, key)
            conn.execute(_compose("DELETE FROM {} WHERE {} = ?", self._table, self._id), (key,))
            self._sync_rtree(conn, rowid, None)
            return None
        if op.action not in ("replace", "update"):
            raise ValueError(f"unknown write action {op.action!r}")
        names, values, geometry = feature_values(self.schema, op.feature, op.action == "update", self._cell)
        sets = [_compose("{} = ?", quote_ident(n)) for n in names]
        bounds = None
        geometry_changed = self._geom is not None and geometry is not MISSING
        if geometry_changed:
            if geometry is None:
                sets.append(_compose("{} = NULL", self._geom))  # type: ignore[arg-type]
            else:
                blob, bounds = self._geometry_blob(geometry, crs)
                sets.append(_compose("{} = ?", self._geom))  # type: ignore[arg-type]
                values.append(blob)
        if sets:
            conn.execute(
                _compose("UPDATE {} SET {} WHERE {} = ?", self._table, ", ".join(sets), self._id),
                [*values, key],
            )
        if geometry_changed:
            self._sync_rtree(conn, self._rowid_of(conn, key), bounds)
            if bounds is not None:
                written.append(bounds)
        return self._read_stored(conn, key)

    def _insert(self, conn: sqlite3.Connection, feature: Any, crs: CRS, written: list) -> Any:
        """INSERT one feature, keeping the R-tree right; returns its key."""
        names, values, geometry = feature_values(self.schema, feature, True, self._cell)
        blob, bounds = (
            self._geometry_blob(geometry, crs)
            if self._geom is not None and geometry not in (MISSING, None)
            else (None, None)
        )
        columns = [quote_ident(n) for n in names]
        client_id = feature.get("id")
        if client_id is None:
            client_id = (feature.get("properties") or {}).get(self.schema.id_field)
        if client_id is not None and not self.schema.id_has_default:
            columns.insert(0, self._id)
            values.insert(0, self._client_id(client_id))
        elif client_id is None and not self.schema.id_has_default:
            raise InvalidData("this collection needs an 'id'")
        if blob is not None:
            columns.append(self._geom)  # type: ignore[arg-type]
            values.append(blob)
        if columns:
            statement = _compose(
                "INSERT INTO {} ({}) VALUES ({})",
                self._table,
                ", ".join(columns),
                ", ".join("?" * len(columns)),
            )
            rowid = conn.execute(statement, values).lastrowid
        else:
            rowid = conn.execute(_compose("INSERT INTO {} DEFAULT VALUES", self._table)).lastrowid
        self._sync_rtree(conn, rowid, bounds)
        if bounds is not None:
            written.append(bounds)
        if self.schema.id_field == self._info.rowid_column:
            return rowid
        return conn.execute(
            _compose("SELECT {} FROM {} WHERE {} = ?", self._id, self._table, self._rowid), (rowid,)
        ).fetchone()[0]

    def _client_id(self, value: Any) -> Any:
        """A client-given id as the key column's type; 422 (not 404) when it cannot be one."""
        try:
            return self._id_value(value)
        except NotFound as exc:
            raise InvalidData(f"id {str(value)[:60]!r} is not a valid {self.schema.id_type} key") from exc

    def _read_stored(self, conn: sqlite3.Connection, key: Any) -> StoredFeature:
        row = self._read_row(conn, key)
        if row is None:
            raise NotFound(f"feature {str(key)[:100]!r} not found")
        return self._stored(row, CRS84, None, False)

    def _check_version(self, conn: sqlite3.Connection, key: Any, if_match: str | None) -> None:
        """NotFound, or 412 unless ``If-Match`` names the stored version (under the write lock)."""
        check_if_match(self._read_stored(conn, key).etag, if_match)


def _blob_json(value: Any) -> Any:
    """A BLOB attribute in JSON as PostgreSQL writes bytea: '\\x' and hex."""
    return "\\x" + value.hex() if isinstance(value, bytes) else value


def _time_value(value: Any) -> Any:
    """Stored DATE/DATETIME text as date/datetime values, as psycopg returns them."""
    if not isinstance(value, str):
        return value
    try:
        return _parse_time(value)
    except ValueError:
        return value


def _write_error(exc: Exception) -> ProviderError:
    """A failed write: a duplicate key is a 409, another refused value a 422, a busy file a 503."""
    if isinstance(exc, sqlite3.IntegrityError):
        name = getattr(exc, "sqlite_errorname", "")
        if name in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"):
            return Conflict(str(exc)[:300])
        return InvalidData(str(exc)[:300])
    if isinstance(exc, OverflowError):
        return InvalidData("a value is out of range")
    return _read_error(exc)


def _read_error(exc: Exception) -> ProviderError:
    """A failed read: bad values are the client's (400), a busy or missing file is a 503."""
    if isinstance(exc, (OverflowError, sqlite3.ProgrammingError, sqlite3.DataError)):
        return InvalidQuery(f"a value cannot be used in this query: {str(exc)[:200]}")
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        if any(
            w in text for w in ("locked", "busy", "interrupted", "unable to open", "disk i/o", "readonly")
        ):
            return Unavailable(f"GeoPackage unavailable: {str(exc)[:200]}")
    LOGGER.error("unexpected GeoPackage error: %s", exc)
    return ProviderError(str(exc).splitlines()[0][:300] if str(exc) else "GeoPackage error")
