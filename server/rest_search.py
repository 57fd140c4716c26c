"""REST CRUD ``search`` across layers' attributes and ``geo_utils/features_at_point``.

Both read through the shared :class:`~providers.base.Query`: a search is a CQL2
``LIKE`` on ``CASEI`` of each searched field, OR-ed; features at a point are a CQL2
``S_INTERSECTS`` with a geodesic circle. No SQL is written here, so both work the
same on PostGIS and GeoPackage layers.

Distances (to rank hits) are measured in an azimuthal equidistant projection centred
on the point, in which distances from the centre are true on the ellipsoid; the
circle around a point is :func:`providers.geodesic.buffer`'s, the same geodesic
buffer as the ``layers/{id}/buffer`` route's.

Both see only the layers the caller may read: a search of every layer leaves the
others out, and a layer named in the request that the caller may not read is a 404,
as if it did not exist.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import shapely
import shapely.geometry
from flask import Response, request
from pyproj import CRS as ProjCRS
from pyproj import Transformer

from providers import geodesic
from providers.base import Query
from providers.crs import CRS
from providers.errors import InvalidData, InvalidQuery, NotFound, ProviderError
from server.auth import current_auth, current_identity, readable_collection
from server.geometry_text import geometry_format
from server.registry import Collection
from server.rest import blueprint, envelope, paging, wants_total
from server.rest_layers import (
    PAGING_PARAMETERS,
    error_responses,
    feature_doc,
    json_response,
    layer_collection,
    list_schema,
    published_layers,
    query_parameter,
    xy_crs,
)

LOGGER = logging.getLogger(__name__)

#: Matches ranked by distance are read whole (all layers together) to be sorted: at most this many.
MAX_RANKED = 10_000
MAX_QUERY = 200


def _number(name: str, default: float | None = None) -> float:
    raw = request.args.get(name)
    if raw is None or raw == "":
        if default is None:
            raise InvalidQuery(f"{name} is required")
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidQuery(f"{name} must be a number, not {raw[:40]!r}") from None
    if value != value or abs(value) == float("inf"):
        raise InvalidQuery(f"{name} must be a finite number")
    return value


def _layer_id(raw: str) -> int:
    text = raw.strip()
    if not text.isdigit():
        raise InvalidQuery(f"{text[:40]!r} is not a layer id")
    return int(text)


def _readable_layer(layer_id: int) -> Collection:
    """The published collection of a layer the request names; 404 when the caller may not read it."""
    coll = layer_collection(layer_id)
    auth, identity = current_auth(), current_identity()
    auth.require(identity, "read", auth.collection_rights(identity, coll), f"layer {layer_id}")
    return coll


def _aeqd(lon: float, lat: float) -> tuple[Transformer, Transformer]:
    """Transformers lon/lat -> metres around (lon, lat) and back."""
    local = ProjCRS.from_proj4(f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m +no_defs")
    forward = Transformer.from_crs(4326, local, always_xy=True)
    backward = Transformer.from_crs(local, 4326, always_xy=True)
    return forward, backward


def _distance(geom: shapely.Geometry, forward: Transformer) -> float | None:
    """Metres from the centre of ``forward``'s projection to the nearest point of ``geom``."""
    if geom.is_empty:
        return None
    local = shapely.transform(geom, lambda xy: _stack(forward.transform(xy[:, 0], xy[:, 1])))
    return float(shapely.distance(local, shapely.Point(0, 0)))


def _stack(pair: tuple[Any, Any]) -> np.ndarray:
    return np.column_stack(pair)


# -- search --------------------------------------------------------------------------------------
@dataclass(slots=True)
class Target:
    """One layer to search: which fields, in which order."""

    layer_id: int
    coll: Collection
    fields: list[str]
    sortby: list[tuple[str, bool]]
    #: Searched because no ``fields`` named layers: a layer that cannot be read is left out.
    implicit: bool = False


def _read(target: Target, query: Query) -> tuple[list[dict[str, Any]], int]:
    """The matching features of one layer and how many match in all.

    A layer searched only because no layer was named, whose table cannot be read
    (dropped behind geoharbor's back), is left out rather than failing the search
    of all the others; a layer the client named fails the request.
    """
    try:
        result = target.coll.provider.query(query)
        found = [orjson.loads(f) for f in result.features]
    except ProviderError as exc:
        if not target.implicit or exc.status < 500:
            raise
        LOGGER.warning("search: layer %s left out: %s", target.layer_id, exc.message)
        return [], 0
    return found, result.matched.value if result.matched is not None else len(found)


def _targets(raw: str | None) -> list[Target]:
    """``fields={layer_id}~{f1},{f2}[~{f1}:desc,...][;{layer_id}~...]``.

    Without ``fields``, every text attribute of every published layer the caller may read is searched.
    """
    if not raw:
        out = []
        for layer_id, coll in sorted(published_layers().items()):
            if not readable_collection(coll):
                continue
            text = [n for n, f in coll.provider.schema.fields.items() if f.type == "string" and not f.format]
            if text:
                out.append(Target(layer_id, coll, text, [], implicit=True))
        return out
    targets = []
    for part in raw.split(";"):
        if not part.strip():
            continue
        pieces = part.split("~")
        if len(pieces) > 3:
            raise InvalidQuery("fields: expected {layer_id}~{field},{field}[~{field}:desc][;...]")
        layer_id = _layer_id(pieces[0])
        coll = _readable_layer(layer_id)
        schema = coll.provider.schema
        names = [n.strip() for n in (pieces[1] if len(pieces) > 1 else "").split(",") if n.strip()]
        if not names:
            names = [n for n, f in schema.fields.items() if f.type == "string" and not f.format]
        for name in names:
            schema.check_property(name)
        sortby = []
        for term in (pieces[2] if len(pieces) > 2 else "").split(","):
            if not term.strip():
                continue
            name, _, direction = term.strip().partition(":")
            schema.check_property(name)
            if direction.lower() not in ("", "asc", "desc"):
                raise InvalidQuery(f"fields: order direction must be asc or desc, not {direction[:20]!r}")
            sortby.append((name, direction.lower() != "desc"))
        if names:
            targets.append(Target(layer_id, coll, names, sortby))
    return targets


def _like_any(fields: list[str], text: str) -> dict[str, Any]:
    """CQL2: any of ``fields`` contains ``text``, case-insensitively, wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = {"op": "casei", "args": [f"%{escaped}%"]}
    tests = [{"op": "like", "args": [{"op": "casei", "args": [{"property": f}]}, pattern]} for f in fields]
    return tests[0] if len(tests) == 1 else {"op": "or", "args": tests}


def _hit(target: Target, feature: dict[str, Any], distance: float | None, ranked: bool) -> dict[str, Any]:
    props = feature.get("properties") or {}
    hit: dict[str, Any] = {
        "layer_id": target.layer_id,
        "collection": target.coll.id,
        "__id": feature.get("id"),
        "data": {name: props.get(name) for name in target.fields},
    }
    if ranked:
        hit["distance"] = distance
    return hit


@blueprint.route("/search", methods=["GET"])
def search() -> Response:
    text = request.args.get("query", "")
    if not text.strip():
        raise InvalidQuery("query is required: the text to search for")
    if len(text) > MAX_QUERY:
        raise InvalidQuery(f"query is longer than {MAX_QUERY} characters")
    page = paging()
    targets = _targets(request.args.get("fields"))
    ranked = "x" in request.args or "y" in request.args
    if ranked:
        x, y = _number("x"), _number("y")
        if not -180 <= x <= 180 or not -90 <= y <= 90:
            raise InvalidQuery("x and y are a longitude and a latitude")
        return _ranked_search(targets, text, x, y, page)
    hits: list[dict[str, Any]] = []
    total = 0
    skip, room = page.offset, page.perpage
    for target in targets:
        if room == 0 and not wants_total():
            break
        query = Query(
            filter=_like_any(target.fields, text),
            properties=target.fields,
            skip_geometry=True,
            sortby=target.sortby,
            limit=room,
            offset=skip,
            count="exact",
        )
        found, matched = _read(target, query)
        hits += [_hit(target, f, None, False) for f in found]
        total += matched
        room -= len(found)
        skip = max(0, skip - matched)
    return envelope("search", hits, total if wants_total() else None, page.page)


def _ranked_search(targets: list[Target], text: str, x: float, y: float, page: Any) -> Response:
    """Every match of every layer, nearest to (x, y) first."""
    forward, _ = _aeqd(x, y)
    scored: list[tuple[float, int, dict[str, Any]]] = []
    for number, target in enumerate(targets):
        query = Query(
            filter=_like_any(target.fields, text),
            properties=target.fields,
            limit=MAX_RANKED + 1 - len(scored),
            count="none",
        )
        for feature in _read(target, query)[0]:
            geometry = feature.get("geometry")
            distance = _distance(shapely.geometry.shape(geometry), forward) if geometry else None
            scored.append(
                (
                    float("inf") if distance is None else distance,
                    number,
                    _hit(target, feature, distance, True),
                )
            )
            if len(scored) > MAX_RANKED:
                raise InvalidQuery(f"more than {MAX_RANKED} matches to rank by distance: narrow the query")
    scored.sort(key=lambda item: (item[0], item[1]))
    hits = [hit for _, _, hit in scored[page.offset : page.offset + page.perpage]]
    return envelope("search", hits, len(scored) if wants_total() else None, page.page)


# -- features at a point ------------------------------------------------------------------------
def _circle(x: float, y: float, crs: CRS, radius: float) -> dict[str, Any]:
    """A geodesic circle of ``radius`` metres around (x, y), as GeoJSON in ``crs`` (x/y order)."""
    lon, lat = (
        (x, y) if crs.srid == 4326 else Transformer.from_crs(crs.srid, 4326, always_xy=True).transform(x, y)
    )
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise InvalidQuery("point_x, point_y are not a place on the earth in that srid")
    try:
        circle = geodesic.buffer(shapely.Point(x, y), crs.srid, radius, "meter")
    except InvalidData as exc:  # from query parameters: a bad request, not a bad body
        raise InvalidQuery(exc.message) from None
    return shapely.geometry.mapping(circle)


def _point_layers(raw: str | None) -> list[tuple[int, Collection]]:
    if not raw or not raw.strip():
        raise InvalidQuery("layer_id is required: one or more layer ids, comma-separated")
    ids = list(dict.fromkeys(_layer_id(part) for part in raw.split(",") if part.strip()))
    out = []
    for layer_id in ids:
        coll = _readable_layer(layer_id)
        if coll.provider.schema.geometry_field is None:
            raise NotFound(f"layer {layer_id} has no geometry")
        out.append((layer_id, coll))
    return out


@blueprint.route("/geo_utils/features_at_point", methods=["GET"])
def features_at_point() -> Response:
    """Features of the layers within ``buffer`` metres of the point, in the point's srid."""
    layers = _point_layers(request.args.get("layer_id"))
    srid_text = request.args.get("srid") or "4326"
    if not srid_text.isdigit():
        raise InvalidQuery(f"srid must be an EPSG code, not {srid_text[:40]!r}")
    crs = xy_crs(int(srid_text))
    x, y = _number("point_x"), _number("point_y")
    radius = _number("buffer", 1.0)
    if not 0 < radius <= geodesic.MAX_METRES:
        raise InvalidQuery(f"buffer must be more than 0 and at most {geodesic.MAX_METRES:.0f} metres")
    circle = _circle(x, y, crs, radius)
    fmt = geometry_format(request.args.get("geometry"))
    page = paging()
    data: list[dict[str, Any]] = []
    total = 0
    skip, room = page.offset, page.perpage
    for layer_id, coll in layers:
        if room == 0 and not wants_total():
            break
        schema = coll.provider.schema
        condition = {"op": "s_intersects", "args": [{"property": schema.geometry_field}, circle]}
        query = Query(filter=condition, filter_crs=crs, crs=crs, limit=room, offset=skip, count="exact")
        result = coll.provider.query(query)
        matched = result.matched.value if result.matched is not None else 0
        found = list(_features(result.features)) if room else []
        data += [{"layer_id": layer_id, **feature_doc(f, fmt, crs)} for f in found]
        total += matched
        room -= len(found)
        skip = max(0, skip - matched)
    return envelope("features", data, total if wants_total() else None, page.page)


def _features(raw: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    for item in raw:
        yield orjson.loads(item)


# -- OpenAPI ----------------------------------------------------------------------------------------
def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths (under ``prefix``) and component schemas of search and features at a point."""
    number = {"type": "number"}
    paths = {
        f"{prefix}/search": {
            "get": {
                "summary": "Search the text of layers' attributes (case-insensitive, anywhere in the value)",
                "operationId": "restSearch",
                "parameters": [
                    {"name": "query", "in": "query", "required": True, "schema": {"type": "string"}},
                    query_parameter(
                        "fields",
                        "{layer_id}~{field},{field}[~{field}:desc][;{layer_id}~...]; all text fields of all "
                        "layers when absent",
                    ),
                    query_parameter("x", "Longitude: rank hits by distance from (x, y)", number),
                    query_parameter("y", "Latitude", number),
                    *PAGING_PARAMETERS,
                ],
                "responses": {
                    "200": json_response("Hits", list_schema("#/components/schemas/RestSearchHit")),
                    **error_responses(400, 404),
                },
            },
        },
        f"{prefix}/geo_utils/features_at_point": {
            "get": {
                "summary": "Features of some layers within a geodesic distance of a point",
                "operationId": "restFeaturesAtPoint",
                "parameters": [
                    {
                        "name": "layer_id",
                        "in": "query",
                        "required": True,
                        "description": "Layer ids, comma-separated",
                        "schema": {"type": "string"},
                    },
                    query_parameter(
                        "srid",
                        "EPSG code of the point (x/y order) and of the answer",
                        {"type": "integer", "default": 4326},
                    ),
                    {"name": "point_x", "in": "query", "required": True, "schema": number},
                    {"name": "point_y", "in": "query", "required": True, "schema": number},
                    query_parameter("buffer", "Radius in metres", {"type": "number", "default": 1}),
                    query_parameter(
                        "geometry",
                        "Geometry format",
                        {"type": "string", "enum": ["geojson", "wkt", "kml", "gml"]},
                    ),
                    *PAGING_PARAMETERS,
                ],
                "responses": {
                    "200": json_response("Features", list_schema("#/components/schemas/RestPointFeature")),
                    **error_responses(400, 404),
                },
            },
        },
    }
    schemas = {
        "RestSearchHit": {
            "type": "object",
            "required": ["layer_id", "__id", "data"],
            "properties": {
                "layer_id": {"type": "integer"},
                "collection": {"type": "string"},
                "__id": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
                "data": {
                    "type": "object",
                    "additionalProperties": True,
                    "description": "the searched fields",
                },
                "distance": {"type": "number", "nullable": True, "description": "metres, with x and y"},
            },
        },
        "RestPointFeature": {
            "allOf": [
                {"$ref": "#/components/schemas/RestFeature"},
                {"type": "object", "required": ["layer_id"], "properties": {"layer_id": {"type": "integer"}}},
            ]
        },
    }
    return {"paths": paths, "components": {"schemas": schemas}}
