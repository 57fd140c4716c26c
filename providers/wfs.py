"""A remote WFS feature type (WFS 2.0.0 or 1.1.0) published as a collection, without copying it.

Nothing is stored here: every read becomes GetFeature requests to the remote (through
:mod:`providers.wfs_http`, which bounds them in time, retries, caches and cuts a
failing remote off) and the answers are turned into the same GeoJSON and vector
tiles as the other providers'.

* What the remote can run is sent to it: ``bbox``, ``{property}=value`` and the CQL2
  filter as an FES 2.0 / Filter 1.1 filter (:mod:`providers.fes`), ``sortby`` as
  SORTBY, paging as STARTINDEX/COUNT, the output CRS as SRSNAME when the remote offers
  it (else it is reprojected here), GeoJSON output when the remote offers it and it
  reads as its GML does (else GML).
* What it cannot is done here, after the fetch: the rest of the filter (evaluated by
  ``cql2``), sorting, paging. Then the whole match (at most ``max_features``) is fetched
  once, and :data:`FILTER_MODE` says ``client`` so the route can tell the client; a
  log line says it too.
* ``numberMatched`` is the remote's own count (``resultType=hits``), or the count of
  what matched here.

A WFS collection is read-only: its data belongs to the remote.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import cql2
import numpy as np
import orjson
import shapely
import shapely.geometry

from providers import mvt, reproject
from providers.base import (
    Count,
    CountMode,
    FeaturePage,
    FeatureProvider,
    GeometryEncoding,
    Query,
    StoredFeature,
    TileRequest,
    Write,
    version_tag,
)
from providers.crs import CRS, CRS84, coordinate_precision
from providers.errors import BadGateway, InvalidData, InvalidQuery, NotFound, ReadOnly
from providers.fes import FilterWriter, Split, authority_lat_first, srs_name
from providers.wfs_capabilities import (
    ID_FIELD,
    VERSIONS,
    RemoteLayer,
    read_capabilities,
    read_feature_type,
)
from providers.wfs_features import FeatureAnswer, RemoteFeature, read, read_collection, read_hits
from providers.wfs_http import RemoteService, parse_xml

LOGGER = logging.getLogger(__name__)

#: How the current request's conditions were applied: "remote" (all sent to the WFS) or
#: "client" (some applied here, after the fetch). None: no WFS read in this request.
FILTER_MODE: ContextVar[str | None] = ContextVar("geoharbor_wfs_filter_mode", default=None)

#: The most features fetched to filter, sort or page here (configurable per source).
MAX_FEATURES = 10_000


# -- describing a remote layer ---------------------------------------------------------------------
def describe(service: RemoteService, layer_name: str, version: str | None = None) -> RemoteLayer:
    """Ask the remote what ``layer_name`` is: capabilities, schema, and how its outputs read."""
    if not isinstance(layer_name, str) or not layer_name.strip() or len(layer_name) > 300:
        raise InvalidData("layer_name must name a feature type of the WFS")
    layer_name = layer_name.strip()
    if version is not None and version not in VERSIONS:
        raise InvalidData(f"version must be one of {', '.join(VERSIONS)}")
    params = {"SERVICE": "WFS", "REQUEST": "GetCapabilities", "ACCEPTVERSIONS": ",".join(VERSIONS)}
    if version is not None:
        params.update({"VERSION": version, "ACCEPTVERSIONS": version})
    layer = service.fetch(
        params, lambda data: read_capabilities(service.url, data, layer_name), "GetCapabilities"
    )
    service.fetch(
        {
            "SERVICE": "WFS",
            "VERSION": layer.version,
            "REQUEST": "DescribeFeatureType",
            _type_key(layer): layer.type_name,
        },
        lambda data: read_feature_type(layer, data),
        "DescribeFeatureType",
    )
    if layer.geojson_format:
        _check_geojson(service, layer)
    return layer


def _type_key(layer: RemoteLayer) -> str:
    return "TYPENAMES" if layer.version == "2.0.0" else "TYPENAME"


def _count_key(layer: RemoteLayer) -> str:
    return "COUNT" if layer.version == "2.0.0" else "MAXFEATURES"


def _check_geojson(service: RemoteService, layer: RemoteLayer) -> None:
    """Keep the GeoJSON output only if one feature reads as its GML does: same id, axis order known.

    Servers disagree on GeoJSON in a latitude-first CRS (lon/lat as GeoJSON says, or
    lat/lon as the CRS says) and on its ids; GML says both.
    """
    srid = layer.default_srid
    base = {
        "SERVICE": "WFS",
        "VERSION": layer.version,
        "REQUEST": "GetFeature",
        _type_key(layer): layer.type_name,
        _count_key(layer): "1",
        "SRSNAME": srs_name(srid),
    }
    lat_first = authority_lat_first(srid)
    gml_params = {**base, **({"OUTPUTFORMAT": layer.gml_format} if layer.gml_format else {})}
    try:
        gml = service.fetch(gml_params, lambda data: read_collection(layer, data, lat_first), "GetFeature")
        raw = service.fetch({**base, "OUTPUTFORMAT": layer.geojson_format or ""}, _first_json, "GetFeature")
    except BadGateway as exc:
        LOGGER.info("remote WFS %s: GeoJSON output not used: %s", layer.url, exc.message)
        layer.geojson_format = None
        return
    reference = gml.features[0] if gml.features else None
    if reference is None or reference.geometry is None or raw is None or raw.get("id") is None:
        layer.geojson_format = None  # nothing to compare it with: GML says its axis order
        return
    gid = str(raw["id"])
    if gid != reference.id:
        if layer.local_name + "." + gid != reference.id:
            layer.geojson_format = None
            return
        layer.geojson_id_prefix = layer.local_name + "."
    first = _first_position(raw.get("geometry"))
    x, y = shapely.get_coordinates(reference.geometry)[0][:2]
    if (
        first is not None
        and math.isclose(first[0], x, abs_tol=1e-6)
        and math.isclose(first[1], y, abs_tol=1e-6)
    ):
        layer.geojson_axis = "xy"
    elif (
        first is not None
        and math.isclose(first[0], y, abs_tol=1e-6)
        and math.isclose(first[1], x, abs_tol=1e-6)
    ):
        layer.geojson_axis = "yx"
    else:
        layer.geojson_format = None


def _first_json(data: bytes) -> dict[str, Any] | None:
    """The first feature of a GeoJSON answer (None when it has none); BadGateway for non-GeoJSON."""
    if data.lstrip()[:1] == b"<":
        parse_xml(data, "to GetFeature")  # an exception report raises; other XML is not GeoJSON
        raise BadGateway("the remote answered XML where GeoJSON was asked for")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadGateway("the remote answered GeoJSON that is not JSON") from exc
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list):
        raise BadGateway("the remote answered JSON that is not a FeatureCollection")
    return features[0] if features and isinstance(features[0], dict) else None


def _first_position(geometry: Any) -> tuple[float, float] | None:
    coords = geometry.get("coordinates") if isinstance(geometry, dict) else None
    while isinstance(coords, list) and coords and isinstance(coords[0], list):
        coords = coords[0]
    if isinstance(coords, list) and len(coords) >= 2 and all(isinstance(c, (int, float)) for c in coords[:2]):
        return float(coords[0]), float(coords[1])
    return None


# -- the provider ------------------------------------------------------------------------------------
class WFSProvider(FeatureProvider):
    """One remote feature type as a read-only collection."""

    editable = False

    def __init__(
        self,
        service: RemoteService,
        layer: RemoteLayer,
        *,
        count_mode: CountMode = "exact",
        max_features: int = MAX_FEATURES,
        name: str = "",
    ) -> None:
        self.service = service
        self.layer = layer
        self.schema = layer.schema()
        self.count_mode = count_mode
        self.max_features = max_features
        self.name = name or layer.type_name
        self._storage = layer.default_srid

    def ping(self) -> bool:
        return self.service.ping()

    # -- requests ---------------------------------------------------------------------------------
    def _fetch_srid(self, crs: CRS) -> int:
        """The CRS to ask the remote for: the output's when the remote offers it, else its default."""
        return crs.srid if crs.srid in self.layer.crs else self._storage

    def _get_features(
        self,
        split: Split,
        srid: int,
        *,
        start: int = 0,
        count: int | None = None,
        sortby: list[tuple[str, bool]] | None = None,
    ) -> FeatureAnswer:
        layer = self.layer
        params = {
            "SERVICE": "WFS",
            "VERSION": layer.version,
            "REQUEST": "GetFeature",
            _type_key(layer): layer.type_name,
            "SRSNAME": srs_name(srid),
        }
        geojson = layer.geojson_format is not None
        output = layer.geojson_format if geojson else layer.gml_format
        if output:
            params["OUTPUTFORMAT"] = output
        if count is not None:
            params[_count_key(layer)] = str(count)
        if start:
            params["STARTINDEX"] = str(start)
        document = self._writer().document(split.remote)
        if document:
            params["FILTER"] = document
        if sortby:
            params["SORTBY"] = _sortby(sortby, layer.version)
        lat_first = authority_lat_first(srid)
        return self.service.fetch(params, lambda data: read(layer, data, lat_first, geojson), "GetFeature")

    def _hits(self, split: Split) -> int | None:
        """The remote's count of what ``split.remote`` matches; None when it cannot count."""
        if not self.layer.hits:
            return None
        layer = self.layer
        params = {
            "SERVICE": "WFS",
            "VERSION": layer.version,
            "REQUEST": "GetFeature",
            _type_key(layer): layer.type_name,
            "RESULTTYPE": "hits",
        }
        document = self._writer().document(split.remote)
        if document:
            params["FILTER"] = document
        return self.service.fetch(params, read_hits, "GetFeature (hits)")

    def _range(
        self, split: Split, srid: int, start: int, count: int, sortby: list[tuple[str, bool]] | None
    ) -> list[RemoteFeature]:
        """Features ``start`` to ``start + count`` of what the remote matches, in as many requests
        as its answer size allows (a remote that caps an answer must not shorten a page)."""
        if not self.layer.paging:
            if self.layer.max_count is not None and start + count > self.layer.max_count:
                raise InvalidQuery(
                    f"the remote WFS cannot page and answers at most {self.layer.max_count} features: "
                    "narrow the query (bbox, filter) or lower offset/limit"
                )
            return self._get_features(split, srid, count=start + count, sortby=sortby).features[start:]
        out: list[RemoteFeature] = []
        size = self.layer.max_count or count
        while count > 0:
            wanted = min(count, size)
            got = self._get_features(split, srid, start=start, count=wanted, sortby=sortby).features
            out.extend(got)
            if len(got) < wanted:
                break
            start += wanted
            count -= wanted
        return out

    def _everything(
        self, split: Split, srid: int, sortby: list[tuple[str, bool]] | None
    ) -> list[RemoteFeature]:
        """Every feature the remote matches, to be filtered, sorted or paged here; InvalidQuery past
        ``max_features`` (or past what a remote that cannot page answers at once)."""
        cap = self.max_features
        if not self.layer.paging and self.layer.max_count is not None and self.layer.max_count <= cap:
            features = self._get_features(split, srid, count=self.layer.max_count, sortby=sortby).features
            cap = self.layer.max_count - 1
        else:
            features = self._range(split, srid, 0, cap + 1, sortby)
        if len(features) > cap:
            raise InvalidQuery(
                "this query is applied by geoharbor after fetching, and the remote holds more than "
                f"{cap} candidate features: narrow it (bbox, or conditions the remote runs)"
            )
        return features

    def _writer(self) -> FilterWriter:
        return FilterWriter(self.layer, self.schema)

    # -- planning ---------------------------------------------------------------------------------
    def _split(self, query: Query) -> tuple[Split, tuple[float, float, float, float] | None, int]:
        """The query's conditions for the remote and for here; plus a bbox the remote cannot run (x/y)."""
        writer = self._writer()
        equals = {name: _coerce(self.schema.check_property(name), v) for name, v in query.equals.items()}
        split = writer.split(equals=equals, tree=query.filter, filter_crs=query.filter_crs)
        client_box = None
        if query.bbox is not None:
            box = _xy_box(query.bbox, query.bbox_crs)
            predicate = writer.bbox(box, query.bbox_crs.srid)
            if predicate is None:
                client_box = box
            else:
                split.remote.append(predicate)
        return split, client_box, query.bbox_crs.srid

    def _select(self, query: Query, srid: int) -> tuple[list[RemoteFeature], Count | None]:
        """The page of features ``query`` asks for (geometries x/y in ``srid``) and its match count."""
        if query.limit < 0 or query.offset < 0:
            raise InvalidQuery("limit and offset must not be negative")
        split, client_box, box_srid = self._split(query)
        for name, _ in query.sortby:
            self.schema.check_property(name)
        remote_sort = self.layer.sorting and all(n in self.schema.fields for n, _ in query.sortby)
        here = split.client_tree is not None or client_box is not None
        self._report(split, client_box)
        mode = self.count_mode if query.count == "auto" else query.count
        if not here and (remote_sort or not query.sortby):
            features = self._range(split, srid, query.offset, query.limit, query.sortby or None)
            matched = None
            if mode != "none":
                total = self._hits(split)
                matched = Count(total, True) if total is not None else None
            return features, matched
        features = self._everything(split, srid, query.sortby if remote_sort else None)
        features = self._apply_here(features, split, client_box, box_srid, query.filter_crs, srid)
        if query.sortby and not remote_sort:
            features = _sorted(features, query.sortby)
        matched = None if mode == "none" else Count(len(features), True)
        return features[query.offset : query.offset + query.limit], matched

    def _report(self, split: Split, client_box: Any) -> None:
        """Say (log line, :data:`FILTER_MODE`) when conditions are applied here, not by the remote."""
        if split.client_tree is not None or client_box is not None:
            FILTER_MODE.set("client")
            LOGGER.info(
                "WFS collection %s: %d condition(s) applied after fetching (the remote cannot run them)",
                self.name,
                len(split.client) + (client_box is not None),
            )
        elif split.remote and FILTER_MODE.get() is None:
            FILTER_MODE.set("remote")

    def _apply_here(
        self,
        features: list[RemoteFeature],
        split: Split,
        client_box: tuple[float, float, float, float] | None,
        box_srid: int,
        filter_crs: CRS,
        srid: int,
    ) -> list[RemoteFeature]:
        if client_box is not None:
            box = _box_geometry(client_box)
            if box_srid != srid:
                box = reproject.geometries(box, box_srid, srid)
            features = [f for f in features if f.geometry is not None and f.geometry.intersects(box)]
        tree = split.client_tree
        if tree is None:
            return features
        return [
            f
            for f, keep in zip(features, self._matches(tree, filter_crs, features, srid), strict=True)
            if keep
        ]

    def _matches(
        self, tree: dict[str, Any], crs: CRS, features: list[RemoteFeature], srid: int
    ) -> list[bool]:
        """Whether each feature matches a CQL2 JSON tree (cql2 evaluates it; unknown is no match)."""
        text = orjson.dumps(_for_matching(tree, self.schema.geometry_field, crs.lat_first)).decode()
        try:
            expr = cql2.parse_json(text)
        except (ValueError, cql2.ParseError, cql2.ValidationError) as exc:
            raise InvalidQuery(f"filter: {str(exc).splitlines()[0][:200]}") from exc
        spatial = '"geometry"' in text
        geoms: list[Any] = [None] * len(features)
        if spatial:
            array = np.array([f.geometry for f in features], dtype=object)
            if crs.srid != srid:
                array = reproject.geometries(array, srid, crs.srid)
            geoms = [None if g is None else shapely.geometry.mapping(g) for g in array]
        out = []
        for feature, geom in zip(features, geoms, strict=True):
            item = {"type": "Feature", "id": feature.id, "geometry": geom, "properties": feature.properties}
            try:
                out.append(bool(expr.matches(item)))
            except Exception:  # noqa: BLE001 - cql2 raises when a null or a type makes it unknown
                out.append(False)
        return out

    # -- reads ------------------------------------------------------------------------------------
    def query(self, query: Query) -> FeaturePage:
        names = self.schema.selected(query.properties)
        srid = self._fetch_srid(query.crs)
        features, matched = self._select(query, srid)
        geometry = self.schema.geometry_field is not None and not query.skip_geometry
        texts = self._geojson(features, srid, query.crs) if geometry else [None] * len(features)
        encoded = [
            orjson.dumps(
                {
                    "type": "Feature",
                    "id": f.id,
                    "geometry": None if text is None else orjson.Fragment(text),
                    "properties": {n: f.properties.get(n) for n in names},
                }
            )
            for f, text in zip(features, texts, strict=True)
        ]
        return FeaturePage(iter(encoded), matched)

    def _geojson(self, features: list[RemoteFeature], srid: int, crs: CRS) -> list[str | None]:
        geoms = self._output_geometries(features, srid, crs, coordinate_precision(crs))
        return [None if g is None else shapely.to_geojson(g) for g in geoms]

    def _output_geometries(
        self, features: list[RemoteFeature], srid: int, crs: CRS, decimals: int | None
    ) -> list[Any]:
        if not features:
            return []
        array = np.array([f.geometry for f in features], dtype=object)
        return list(reproject.geometries(array, srid, crs.srid, swap_out=crs.lat_first, decimals=decimals))

    def records(self, query: Query, geometry: GeometryEncoding = "wkt") -> tuple[list[str], Iterator[tuple]]:
        names = self.schema.selected(query.properties)
        with_geometry = (
            geometry != "none" and self.schema.geometry_field is not None and not query.skip_geometry
        )
        header = [ID_FIELD] + ([self.schema.geometry_field or "geometry"] if with_geometry else []) + names
        srid = self._fetch_srid(query.crs)
        features, _ = self._select(query, srid)
        shapes: list[Any] = []
        if with_geometry:
            geoms = self._output_geometries(features, srid, query.crs, 9 if geometry == "geojson" else None)
            encode: Callable[[Any], Any] = {
                "wkt": lambda g: shapely.to_wkt(g, rounding_precision=-1),
                "wkb": lambda g: shapely.to_wkb(g, flavor="iso"),
                "geojson": shapely.to_geojson,
            }[geometry]
            shapes = [None if g is None else encode(g) for g in geoms]

        def rows() -> Iterator[tuple]:
            for index, feature in enumerate(features):
                lead = (feature.id, shapes[index]) if with_geometry else (feature.id,)
                yield (*lead, *(feature.properties.get(n) for n in names))

        return header, rows()

    def get(
        self,
        fid: str,
        crs: CRS = CRS84,
        properties: list[str] | None = None,
        skip_geometry: bool = False,
    ) -> StoredFeature:
        fid = str(fid)
        if not fid or len(fid) > 500:
            raise NotFound(f"feature {fid[:100]!r} not found")
        layer = self.layer
        params = {
            "SERVICE": "WFS",
            "VERSION": layer.version,
            "REQUEST": "GetFeature",
            _type_key(layer): layer.type_name,
            "SRSNAME": srs_name(self._storage),
            ("RESOURCEID" if layer.version == "2.0.0" else "FEATUREID"): fid,
        }
        geojson = layer.geojson_format is not None
        output = layer.geojson_format if geojson else layer.gml_format
        if output:
            params["OUTPUTFORMAT"] = output
        lat_first = authority_lat_first(self._storage)
        answer = self.service.fetch(params, lambda data: read(layer, data, lat_first, geojson), "GetFeature")
        found = [f for f in answer.features if f.id == fid]  # a remote ignoring RESOURCEID sends others
        if not found:
            raise NotFound(f"feature {fid[:100]!r} not found")
        feature = found[0]
        etag = version_tag(
            feature.id.encode(),
            orjson.dumps(feature.properties, option=orjson.OPT_SORT_KEYS, default=str),
            b"" if feature.geometry is None else shapely.to_wkb(feature.geometry),
        )
        names = self.schema.selected(properties)
        text = None
        if not skip_geometry and self.schema.geometry_field is not None:
            text = self._geojson([feature], self._storage, crs)[0]
        body = orjson.dumps(
            {
                "type": "Feature",
                "id": feature.id,
                "geometry": None if text is None else orjson.Fragment(text),
                "properties": {n: feature.properties.get(n) for n in names},
            }
        )
        return StoredFeature(feature.id, body, etag)

    # -- vector tiles -----------------------------------------------------------------------------
    def tile(self, request: TileRequest, query: Query) -> bytes:
        """One MVT layer of the remote's features in the tile (and its buffer), encoded in Python."""
        if self.schema.geometry_field is None:
            raise InvalidQuery("this collection has no geometry, so it has no vector tiles")
        if not request.layer:
            raise InvalidQuery("an MVT layer needs a name")
        names = self.schema.selected(query.properties)
        box = mvt.search_box(request, self._storage)
        if box is None:
            return b""
        if request.crs.srid != self._storage:
            box = reproject.transformer(request.crs.srid, self._storage).transform_bounds(
                *box, densify_pts=21
            )
        if not all(math.isfinite(v) for v in box):
            return b""
        conditions = Query(
            equals=query.equals,
            filter=query.filter,
            filter_crs=query.filter_crs,
            bbox=query.bbox,
            bbox_crs=query.bbox_crs,
        )
        split, client_box, box_srid = self._split(conditions)
        tile_box = self._writer().bbox(tuple(box), self._storage)  # type: ignore[arg-type]
        if tile_box is not None:
            split.remote.append(tile_box)
        self._report(split, client_box if tile_box is not None else box)
        here = split.client_tree is not None or client_box is not None or tile_box is None
        if here:
            features = self._everything(split, self._storage, None)
            features = self._apply_here(
                features, split, client_box, box_srid, query.filter_crs, self._storage
            )
            if tile_box is None:  # the tile's own box, applied here too
                frame = shapely.box(*box)
                features = [f for f in features if f.geometry is not None and f.geometry.intersects(frame)]
        else:
            features = self._range(split, self._storage, 0, request.max_features, None)
        features = features[: request.max_features]
        if not features:
            return b""
        mvt.check_client(request)
        geoms = mvt.tile_geometries(
            np.array([f.geometry for f in features], dtype=object), self._storage, request
        )
        out = []
        for i in np.flatnonzero(~shapely.is_missing(geoms)):
            feature = features[i]
            props: dict[str, Any] = {ID_FIELD: feature.id}
            for name in names:
                value = mvt.scalar(feature.properties.get(name))
                if value is not None:
                    props[name] = value
            out.append({"geometry": geoms[i], "properties": props})
        return mvt.encode(request.layer, out, request.extent)

    # -- writes -----------------------------------------------------------------------------------
    def apply_writes(self, ops: list[Write], crs: CRS = CRS84) -> list[StoredFeature | None]:
        raise ReadOnly("this collection republishes a remote WFS and is read-only")


# -- pure parts ------------------------------------------------------------------------------------
def _sortby(sortby: list[tuple[str, bool]], version: str) -> str:
    """SORTBY as each version spells it: ``name ASC`` (2.0) or ``name A`` (1.1)."""
    up, down = ("ASC", "DESC") if version == "2.0.0" else ("A", "D")
    return ",".join(f"{name} {up if ascending else down}" for name, ascending in sortby)


def _xy_box(bbox: Any, crs: CRS) -> tuple[float, float, float, float]:
    """A ``bbox`` parameter (4 or 6 numbers, in the CRS's axis order) as x/y minx, miny, maxx, maxy."""
    values = [float(v) for v in bbox]
    if len(values) == 6:
        values = [values[0], values[1], values[3], values[4]]
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InvalidQuery("bbox: expected minx,miny,maxx,maxy")
    minx, miny, maxx, maxy = values
    if crs.lat_first:
        minx, miny, maxx, maxy = miny, minx, maxy, maxx
    if miny > maxy:
        raise InvalidQuery("bbox: expected minx,miny,maxx,maxy with miny <= maxy")
    if minx > maxx and crs.srid != 4326:
        raise InvalidQuery("bbox: minx is greater than maxx")
    return minx, miny, maxx, maxy


def _box_geometry(box: tuple[float, float, float, float]) -> shapely.Geometry:
    """A bbox as a polygon with edges fine enough to reproject; two across the antimeridian."""
    minx, miny, maxx, maxy = box
    parts = [(minx, miny, 180.0, maxy), (-180.0, miny, maxx, maxy)] if minx > maxx else [box]
    polygons = [shapely.segmentize(shapely.box(*p), max(p[2] - p[0], p[3] - p[1]) / 16 or 1.0) for p in parts]
    return polygons[0] if len(polygons) == 1 else shapely.multipolygons(polygons)


def _coerce(field: Any, value: Any) -> Any:
    """A ``{property}=value`` text as the property's type, so that it compares as the remote's does."""
    try:
        if field.type == "integer":
            return int(str(value))
        if field.type == "number":
            return float(str(value))
    except ValueError as exc:
        raise InvalidQuery(
            f"property {field.name!r} is of type {field.type}; {str(value)[:60]!r} does not fit"
        ) from exc
    if field.type == "boolean":
        return str(value).lower() in ("true", "1")
    return value


def _for_matching(tree: Any, geometry_field: str | None, lat_first: bool) -> Any:
    """A CQL2 JSON tree as cql2 evaluates it on a GeoJSON feature: the geometry property is
    ``geometry``, the id is ``id``, and literal coordinates are x/y."""
    if isinstance(tree, list):
        return [_for_matching(t, geometry_field, lat_first) for t in tree]
    if not isinstance(tree, dict):
        return tree
    if set(tree) == {"property"}:
        name = tree["property"]
        if name in ("geometry", "geom") or name == geometry_field:
            return {"property": "geometry"}
        if name == ID_FIELD:
            return {"property": "id"}
        return tree
    if lat_first and "bbox" in tree and isinstance(tree["bbox"], list):
        box = tree["bbox"]
        if len(box) == 4:
            return {"bbox": [box[1], box[0], box[3], box[2]]}
        if len(box) == 6:
            return {"bbox": [box[1], box[0], box[2], box[4], box[3], box[5]]}
    if lat_first and "type" in tree and ("coordinates" in tree or "geometries" in tree):
        try:
            geom = shapely.transform(shapely.from_geojson(orjson.dumps(tree)), lambda c: c[:, ::-1])
        except (shapely.errors.GEOSException, ValueError) as exc:
            raise InvalidQuery("filter: invalid geometry literal") from exc
        return shapely.geometry.mapping(geom)
    return {k: _for_matching(v, geometry_field, lat_first) for k, v in tree.items()}


def _sorted(features: list[RemoteFeature], sortby: list[tuple[str, bool]]) -> list[RemoteFeature]:
    """Sorted as PostgreSQL sorts: nulls last ascending, first descending; ties keep the remote's order."""
    out = list(features)
    for name, ascending in reversed(sortby):

        def value(f: RemoteFeature, name: str = name) -> Any:
            return f.id if name == ID_FIELD else f.properties.get(name)

        present = [f for f in out if value(f) is not None]
        missing = [f for f in out if value(f) is None]
        try:
            present.sort(key=value, reverse=not ascending)
        except TypeError as exc:
            raise BadGateway(f"the remote sent values of {name!r} that cannot be compared") from exc
        out = present + missing if ascending else missing + present
    return out
