"""The one query model and provider interface that every front door shares.

OGC API items and tiles, MapFish and REST CRUD each parse their own parameters into
a :class:`Query` and call the same :class:`FeatureProvider` methods, so there is one
place per backend that turns a query into SQL and one write path per backend.

Providers return features already encoded as GeoJSON bytes (PostGIS builds them
in SQL) so that a page of features is never rebuilt as Python dicts on the way out.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson
import shapely

from providers.crs import CRS, CRS84
from providers.errors import InvalidData, InvalidQuery, PreconditionFailed, ProviderError, ReadOnly

LOGGER = logging.getLogger(__name__)

CountMode = Literal["exact", "estimate", "auto", "none"]

#: Pages up to this size are fetched at once; larger ones stream from a cursor in batches.
STREAM_THRESHOLD = 2000
STREAM_BATCH = 1000

#: "The feature has no such member": a write leaves that column as it is.
MISSING: Any = object()
GeometryEncoding = Literal["geojson", "wkt", "wkb", "none"]
#: Called after each committed :meth:`FeatureProvider.write` with the provider and the ids
#: of the features it created, changed or deleted. The server installs them (triggers).
WRITE_HOOKS: list[Callable[[FeatureProvider, list[Any]], None]] = []


@dataclass(frozen=True, slots=True)
class Field:
    """One attribute of a collection, typed the way JSON Schema (queryables) says it."""

    name: str
    type: str  # JSON Schema type: string, integer, number, boolean
    format: str | None = None  # date, date-time, uuid
    nullable: bool = True
    # The backend's own type name, for diagnostics and for writes that must cast.
    native_type: str = ""

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": self.type, "title": self.name}
        if self.format:
            schema["format"] = self.format
        return schema


@dataclass(slots=True)
class CollectionSchema:
    """What a collection is made of, read from the source itself."""

    id_field: str
    geometry_field: str | None
    geometry_type: str | None  # POINT, MULTIPOLYGON, GEOMETRY ...
    storage_crs: CRS
    fields: dict[str, Field]  # attributes, without the id and geometry columns
    id_type: str = "integer"  # JSON type of the id: integer or string
    id_native_type: str = ""  # the backend's type of the id column
    id_has_default: bool = True  # the store assigns ids (serial, identity, rowid)
    time_field: str | None = None
    bbox: tuple[float, float, float, float] | None = None  # CRS84
    temporal: tuple[datetime | None, datetime | None] | None = None

    def selected(self, wanted: list[str] | None) -> list[str]:
        """The attributes an output carries: all, or the requested ones that exist (checked)."""
        if wanted is None:
            return list(self.fields)
        for name in wanted:
            self.check_property(name)
        return [n for n in wanted if n in self.fields]

    def check_property(self, name: str) -> Field:
        """The field called ``name``; raises InvalidQuery for anything else.

        Every column name that arrives from a request passes through here before it
        can reach SQL.
        """
        found = self.fields.get(name)
        if found is None:
            if name == self.id_field:
                return Field(name, self.id_type)
            raise InvalidQuery(f"unknown property {name[:100]!r}")
        return found


@dataclass(slots=True)
class Query:
    """A read of features, whatever door it came through.

    ``filter`` is a CQL2 JSON tree (CQL2 text is parsed into the same form); ``bbox``,
    ``datetime`` and ``equals`` are compiled by the provider together with it.
    """

    limit: int = 100
    offset: int = 0
    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: CRS = CRS84
    datetime: tuple[datetime | None, datetime | None] | None = None
    equals: dict[str, Any] = field(default_factory=dict)
    filter: Any = None
    filter_crs: CRS = CRS84
    sortby: list[tuple[str, bool]] = field(default_factory=list)  # (name, ascending)
    properties: list[str] | None = None  # None: all attributes
    skip_geometry: bool = False
    crs: CRS = CRS84  # output CRS
    count: CountMode = "auto"


@dataclass(slots=True)
class Count:
    value: int
    exact: bool


@dataclass(slots=True)
class FeaturePage:
    """Encoded features (each a GeoJSON Feature as bytes) plus the match count."""

    features: Iterator[bytes]
    matched: Count | None


@dataclass(slots=True)
class StoredFeature:
    """One feature as stored, with the version tag used for ETag / If-Match."""

    id: Any
    body: bytes  # GeoJSON Feature
    etag: str


def version_tag(*parts: bytes) -> str:
    """A strong ETag over a row's stored content.

    Computed from the stored bytes, not from one representation, so every CRS or
    property selection of the same feature carries the same tag and ``If-Match``
    works whatever the client read it as.
    """
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part)
        digest.update(b"\x1f")
    return f'"{digest.hexdigest()}"'


def check_if_match(current_etag: str, if_match: str | None) -> None:
    """Raise PreconditionFailed unless ``If-Match`` names the stored version (or is ``*``)."""
    if if_match is None or if_match.strip() == "*":
        return
    tags = {t.strip().removeprefix("W/") for t in if_match.split(",")}
    if current_etag not in tags:
        raise PreconditionFailed("the feature has changed since it was read (ETag mismatch)")


WriteAction = Literal["create", "replace", "update", "delete"]


@dataclass(slots=True)
class Write:
    """One operation of a batch write (see :meth:`FeatureProvider.write`).

    ``create`` takes ``feature`` (its ``id``, if any, is used only where the store does
    not assign ids); ``replace`` sets every attribute (missing ones become null),
    ``update`` only those ``feature`` carries; ``delete`` needs only ``fid``.
    ``if_match`` is the ETag the client read, checked before the op is applied.
    """

    action: WriteAction
    feature: dict[str, Any] | None = None
    fid: str | None = None
    if_match: str | None = None


@contextmanager
def numbered(index: int, total: int) -> Iterator[None]:
    """Prefix the message of a client error raised by op ``index`` of a batch with its number.

    A batch fails as a whole; "feature 3: ..." tells the client which of its features
    to fix. A lone op keeps its message as it is, and server-side failures (5xx) are
    not the client's feature's fault, so they are left alone too.
    """
    try:
        yield
    except ProviderError as exc:
        if total <= 1 or exc.status >= 500:
            raise
        raise type(exc)(f"feature {index + 1}: {exc.message}") from exc


GEOJSON_TYPES = frozenset(
    {"Point", "LineString", "Polygon", "MultiPoint", "MultiLineString", "MultiPolygon", "GeometryCollection"}
)


def geometry_from_geojson(
    geometry: Any, error: type[ProviderError] = InvalidData, prefix: str = ""
) -> shapely.Geometry:
    """A shapely geometry from a GeoJSON geometry object; ``error`` says why not.

    Both providers read written geometries through here: GEOS refuses what GeoJSON
    calls malformed (unclosed rings, one-position lines, bad nesting), which PostGIS'
    ``ST_GeomFromGeoJSON`` would store as it comes.
    """
    if not isinstance(geometry, dict) or geometry.get("type") not in GEOJSON_TYPES:
        raise error(f"{prefix}'geometry' must be a GeoJSON geometry object or null")
    try:
        geom = shapely.from_geojson(orjson.dumps(geometry))
    except (shapely.errors.GEOSException, ValueError, TypeError, orjson.JSONEncodeError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else "invalid"
        raise error(f"{prefix}invalid GeoJSON geometry: {first}") from exc
    if geom is None:
        raise error(f"{prefix}invalid GeoJSON geometry")
    return geom


def feature_values(
    schema: CollectionSchema,
    feature: Any,
    partial: bool,
    cell: Callable[[Field, Any], Any],
) -> tuple[list[str], list[Any], Any]:
    """Column names, stored values and GeoJSON geometry of a feature, checked against ``schema``.

    ``cell`` turns one property value into what the backend stores (or raises
    InvalidData). A replace (``partial`` False) sets every attribute it does not
    carry to null; the geometry is :data:`MISSING` when an update does not touch it.
    """
    if not isinstance(feature, dict):
        raise InvalidData("a feature must be a JSON object")
    props = feature.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise InvalidData("'properties' must be an object")
    names: list[str] = []
    values: list[Any] = []
    for name, value in props.items():
        if name == schema.id_field:
            continue
        field = schema.fields.get(name)
        if field is None:
            raise InvalidData(f"unknown property {str(name)[:100]!r}")
        names.append(name)
        values.append(cell(field, value))
    if not partial:
        for name, field in schema.fields.items():
            if name not in props:
                names.append(name)
                values.append(cell(field, None))
    geometry = MISSING
    if "geometry" in feature:
        geometry = feature["geometry"]
        if geometry is not None and (not isinstance(geometry, dict) or "type" not in geometry):
            raise InvalidData("'geometry' must be a GeoJSON geometry object or null")
    elif not partial:
        geometry = None
    return names, values, geometry


@dataclass(frozen=True, slots=True)
class TileRequest:
    """One vector tile of one collection: where it is and how to encode it.

    ``bounds`` are the tile's edges in the tile matrix set's CRS (``crs``), computed
    from z/x/y by :mod:`providers.tiles`; providers never do tile maths themselves.
    """

    layer: str  # the MVT layer name: the collection id (MapLibre's source-layer)
    crs: CRS  # the tile matrix set's CRS (EPSG:3857 or CRS84)
    bounds: tuple[float, float, float, float]  # minx, miny, maxx, maxy in ``crs``
    zoom: int
    extent: int = 4096  # tile coordinate space
    buffer: int = 64  # in tile units, kept around the tile so lines and fills join up
    max_features: int = 10_000  # a z0 tile of a huge table must not stall a worker
    simplify: bool = True  # drop detail finer than a tile pixel (polygons and lines)
    #: Asked now and then while the tile is computed; True means nobody waits for it any more.
    client_gone: Callable[[], bool] | None = field(default=None, compare=False)


class FeatureProvider(ABC):
    """A collection's data access: one per published collection.

    Implementations share pools/handles per database or file; instances are cheap.
    """

    schema: CollectionSchema
    editable: bool = False
    #: How to count for ``Count`` when the query says ``auto``.
    count_mode: CountMode = "auto"

    # -- reads ---------------------------------------------------------------
    @abstractmethod
    def query(self, query: Query) -> FeaturePage:
        """Features matching ``query``, encoded as GeoJSON, in stable order."""

    @abstractmethod
    def records(self, query: Query, geometry: GeometryEncoding = "wkt") -> tuple[list[str], Iterator[tuple]]:
        """Rows as plain values (id first, then geometry if asked, then attributes).

        For tabular outputs (CSV, REST rows, exports) where GeoJSON is not wanted.
        """

    @abstractmethod
    def get(
        self,
        fid: str,
        crs: CRS = CRS84,
        properties: list[str] | None = None,
        skip_geometry: bool = False,
    ) -> StoredFeature:
        """One feature by id; raises NotFound."""

    @abstractmethod
    def tile(self, request: TileRequest, query: Query) -> bytes:
        """One Mapbox Vector Tile layer of the features in the tile (plus buffer).

        ``query`` carries the filter and property selection (``properties``; None
        means all attributes) of the request; its paging fields are ignored. The
        feature id goes into the MVT feature id when it is an integer, and into the
        property of the id column otherwise. Empty bytes when no feature is in the tile.
        """

    def revision(self) -> int | None:
        """A number that changes with every write through geoharbor, shared by all processes.

        Tile caches key on it; None means the store cannot say, and nothing is cached.
        """
        return None

    # -- writes: one path, one transaction per call --------------------------------
    def write(self, ops: list[Write], crs: CRS = CRS84) -> list[StoredFeature | None]:
        """Apply ``ops`` in order, in ONE transaction: every one of them is stored, or none.

        Every write of every front door (OGC Part 4, MapFish batches, REST) comes here,
        so validation, the collection revision (bumped once per call, which keeps
        cached tiles fresh) and error mapping exist once per backend. Returns, for each
        op, the feature as stored (CRS84), or None for a delete. When a batch holds
        more than one op, an error names the op that failed ("feature 3: ...").

        Once the transaction has committed, each of :data:`WRITE_HOOKS` is told which
        feature ids changed (triggers re-run their rules from there).
        """
        stored = self.apply_writes(ops, crs)
        if WRITE_HOOKS:
            ids = [s.id if s is not None else op.fid for op, s in zip(ops, stored, strict=True)]
            for hook in WRITE_HOOKS:
                try:
                    hook(self, ids)
                except Exception:  # noqa: BLE001 - the write is committed; a hook must not undo it
                    LOGGER.exception("a write hook failed after a committed write")
        return stored

    @abstractmethod
    def apply_writes(self, ops: list[Write], crs: CRS) -> list[StoredFeature | None]:
        """The backend's :meth:`write`: apply ``ops`` in one transaction, bump the revision."""

    def create(self, features: list[dict[str, Any]], crs: CRS = CRS84) -> list[StoredFeature]:
        """Insert GeoJSON features atomically; all are stored or none."""
        return self.write([Write("create", feature) for feature in features], crs)  # type: ignore[return-value]

    def store(
        self, fid: str, feature: dict[str, Any], crs: CRS, if_match: str | None, partial: bool
    ) -> StoredFeature:
        """Write an existing feature: every attribute, or (``partial``) only those it carries."""
        (stored,) = self.write([Write("update" if partial else "replace", feature, fid, if_match)], crs)
        return stored  # type: ignore[return-value]

    def replace(
        self, fid: str, feature: dict[str, Any], crs: CRS = CRS84, if_match: str | None = None
    ) -> StoredFeature:
        """Replace a feature's geometry and every attribute (missing ones become null)."""
        return self.store(fid, feature, crs, if_match, partial=False)

    def update(
        self, fid: str, patch: dict[str, Any], crs: CRS = CRS84, if_match: str | None = None
    ) -> StoredFeature:
        """Change only the attributes (and geometry) present in ``patch``."""
        return self.store(fid, patch, crs, if_match, partial=True)

    def delete(self, fid: str, if_match: str | None = None) -> None:
        """Remove a feature; raises NotFound."""
        self.write([Write("delete", None, fid, if_match)])

    def require_editable(self) -> None:
        if not self.editable:
            raise ReadOnly("this collection is read-only")

    # -- health ----------------------------------------------------------------
    def ping(self) -> bool:
        """Whether the backing store answers now."""
        return True
