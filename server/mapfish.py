"""The MapFish protocol: CRUD of features at ``{prefix}/{layer}``, for OpenLayers, GeoExt and papyrus clients.

A layer is a published collection (its id); the routes answer from the same
providers as OGC API, and every read parameter is compiled into the shared
:class:`~providers.base.Query` (conditions as a CQL2 JSON tree), so a MapFish
filter is checked and bound exactly as an OGC ``filter`` is. Writes go through
:meth:`~providers.base.FeatureProvider.write`, one transaction per request. Who may
read or write a layer is that of its collection, checked by the access hook of
:mod:`server.auth` before a route runs (a layer hidden from the caller is a 404).

Differences from the letter of the protocol's text, on purpose:

* Read one answers a GeoJSON Feature and read many a FeatureCollection. The
  protocol page has the two responses swapped; papyrus (MapFish's reference
  implementation) and OpenLayers' ``Protocol.HTTP`` do it this way round.
* ``lon``/``lat`` without ``tolerance`` selects features that intersect the point
  (contain it, or have it on their boundary), as papyrus' ``ST_DWithin(geom, point, 0)``;
  with ``tolerance``, the distance is measured in the units of ``epsg``
  (EPSG:4326, degrees, by default). ``tolerance`` applies to ``geometry`` as well.
* ``epsg`` names the CRS of ``lon``/``lat``/``bbox``/``geometry``, always in x/y
  (easting/longitude first) order as MapFish sends them. Features are read and
  written in GeoJSON's lon/lat (CRS84).
* Every URL also answers with a ``.json`` suffix on its last segment
  (``/{layer}.json``, ``/{layer}/{id}.json``, ``/{layer}/count.json``). The suffix is
  always taken as the format, so a feature whose id itself ends in ``.json`` is
  addressed as ``{id}.json``.
* A ``{field}__{op}`` filter on a field not listed in ``queryable``, a field that
  is not a column, or an unknown op, is a 400; other unknown parameters are
  ignored, as papyrus ignores them (clients add cache busters).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import chain
from typing import Any

import orjson
import shapely
from flask import Blueprint, Response, current_app, request, stream_with_context
from werkzeug.datastructures import MultiDict

from providers.base import CollectionSchema, Query, Write
from providers.crs import CRS, CRS84, parse_crs
from providers.errors import InvalidData, InvalidQuery, ReadOnly
from server import formats
from server.bodies import json_body
from server.params import int_param
from server.registry import Collection

blueprint = Blueprint("mapfish", __name__)

#: What MapFish clients (and papyrus) send and expect: plain JSON.
JSON = "application/json"
SUFFIX = ".json"
#: ``{field}__{op}`` -> CQL2 operator (like/ilike are built separately).
COMPARISONS = {"eq": "=", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
OPS = (*COMPARISONS, "like", "ilike")
TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off", "")


def mapfish_error(status: int, message: str) -> Response:
    """MapFish errors: ``{"error": message}`` with the status code (registered for the prefix)."""
    return Response(orjson.dumps({"error": message}), status=status, mimetype=JSON)


# -- parameters -------------------------------------------------------------------------
def _number(args: MultiDict, name: str) -> float | None:
    raw = args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidQuery(f"{name}: {raw[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidQuery(f"{name}: must be a finite number")
    return value


def _flag(args: MultiDict, name: str) -> bool:
    raw = (args.get(name) or "").strip().lower()
    if raw in TRUE:
        return True
    if raw in FALSE:
        return False
    raise InvalidQuery(f"{name}: expected true or false, not {raw[:20]!r}")


def _column(schema: CollectionSchema, field: str, param: str) -> str:
    """``field`` if the collection has such a column; else a 400 that names the parameter."""
    try:
        schema.check_property(field)
    except InvalidQuery as exc:
        raise InvalidQuery(f"{param}: {exc.message}") from None
    return field


def _names(args: MultiDict, name: str, schema: CollectionSchema) -> list[str] | None:
    """A comma-separated list of fields, each checked against the collection's columns."""
    if name not in args:
        return None
    return [_column(schema, n.strip(), name) for n in args[name].split(",") if n.strip()]


def parse_epsg(args: MultiDict) -> CRS:
    """The CRS of ``epsg`` in x/y order (MapFish sends easting/longitude first, whatever EPSG says)."""
    raw = args.get("epsg")
    if not raw:
        return CRS84
    code = raw.strip().upper().removeprefix("EPSG:")
    if not code.isdigit():
        raise InvalidQuery(f"epsg: {raw[:40]!r} is not an EPSG code")
    try:
        crs = parse_crs(f"EPSG:{int(code)}")
    except InvalidQuery as exc:
        raise InvalidQuery(f"epsg: {exc.message}") from None
    return CRS(crs.srid, crs.uri, False)


def _geometry_param(raw: str) -> dict[str, Any]:
    """The ``geometry`` parameter: a GeoJSON geometry, checked here so a bad one is a clear 400."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidQuery("geometry: not valid JSON") from None
    if isinstance(value, dict) and value.get("type") == "Feature":
        value = value.get("geometry")
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise InvalidQuery("geometry: expected a GeoJSON geometry object")
    try:
        geom = shapely.from_geojson(orjson.dumps(value))
    except (shapely.errors.GEOSException, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else "invalid"
        raise InvalidQuery(f"geometry: invalid GeoJSON geometry: {first}") from None
    if geom is None or geom.is_empty or not math.isfinite(sum(shapely.bounds(geom).tolist())):
        raise InvalidQuery("geometry: an empty or non-finite geometry selects nothing")
    return value


def _place(geometry: dict[str, Any], tolerance: float | None, prop: dict[str, str]) -> dict[str, Any]:
    """Near (tolerance) or on (none) a geometry, as a CQL2 JSON node."""
    if tolerance is None:
        return {"op": "s_intersects", "args": [prop, geometry]}
    return {"op": "s_dwithin", "args": [prop, geometry, tolerance]}


def _attribute_filter(field: str, op: str, value: str) -> dict[str, Any]:
    """``{field}__{op}={value}`` as a CQL2 JSON node; the compiler binds and types the value."""
    prop = {"property": field}
    if op in COMPARISONS:
        return {"op": COMPARISONS[op], "args": [prop, value]}
    pattern = value if "%" in value else f"%{value}%"  # MapFish: no wildcard means "contains"
    if op == "like":
        return {"op": "like", "args": [prop, pattern]}
    return {"op": "like", "args": [{"op": "casei", "args": [prop]}, {"op": "casei", "args": [pattern]}]}


def mapfish_query(args: MultiDict, schema: CollectionSchema, limit_max: int) -> Query:
    """The :class:`Query` of a MapFish read; raises InvalidQuery (400) for any bad parameter.

    Without ``limit`` (or ``maxfeatures``) a read returns at most ``limit_max`` features.
    """
    crs = parse_epsg(args)
    limit_name = "limit" if args.get("limit") not in (None, "") else "maxfeatures"
    query = Query(
        limit=int_param(args, limit_name, limit_max, 0, limit_max),
        offset=int_param(args, "offset", 0, 0),
        bbox_crs=crs,
        filter_crs=crs,
        properties=_names(args, "attrs", schema),
        skip_geometry=_flag(args, "no_geom"),
        count="none",
    )
    order = args.get("order_by")
    if order:
        direction = (args.get("dir") or "ASC").strip().upper()
        if direction not in ("ASC", "DESC"):
            raise InvalidQuery(f"dir: expected ASC or DESC, not {direction[:20]!r}")
        _column(schema, order, "order_by")
        query.sortby = [(order, direction == "ASC")]

    conditions: list[dict[str, Any]] = []
    prop = {"property": schema.geometry_field or "geometry"}
    tolerance = _number(args, "tolerance")
    if tolerance is not None and tolerance < 0:
        raise InvalidQuery("tolerance: must not be negative")
    if args.get("bbox"):
        parts = args["bbox"].split(",")
        try:
            box = tuple(float(p) for p in parts)
        except ValueError:
            box = ()
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise InvalidQuery("bbox: expected xmin,ymin,xmax,ymax")
        if box[0] > box[2] or box[1] > box[3]:
            raise InvalidQuery("bbox: xmin must not exceed xmax, nor ymin ymax")
        query.bbox = box  # type: ignore[assignment]
    lon, lat = _number(args, "lon"), _number(args, "lat")
    if (lon is None) != (lat is None):
        raise InvalidQuery("lon and lat go together")
    if lon is not None:
        conditions.append(_place({"type": "Point", "coordinates": [lon, lat]}, tolerance, prop))
    if args.get("geometry"):
        conditions.append(_place(_geometry_param(args["geometry"]), tolerance, prop))

    queryable = set(_names(args, "queryable", schema) or [])
    for key in args:
        if "__" not in key:
            continue
        field, _, op = key.rpartition("__")
        if op not in OPS:
            raise InvalidQuery(f"{key[:100]!r}: unknown operator {op[:20]!r}; use one of {', '.join(OPS)}")
        if field not in queryable:
            raise InvalidQuery(f"{key[:100]!r}: {field[:100]!r} is not listed in 'queryable'")
        _column(schema, field, key[:100])
        conditions.extend(_attribute_filter(field, op, value) for value in args.getlist(key))
    if len(conditions) == 1:
        query.filter = conditions[0]
    elif conditions:
        query.filter = {"op": "and", "args": conditions}
    return query


# -- routes ------------------------------------------------------------------------------
def _collection(layer: str) -> Collection:
    return current_app.extensions["geoharbor"].registry.get(layer)


def _writable(layer: str) -> Collection:
    coll = _collection(layer)
    if not coll.editable:
        raise ReadOnly(f"layer {layer[:100]!r} is read-only")
    return coll


def _query(coll: Collection) -> Query:
    limit_max = current_app.config["GEOHARBOR"]["mapfish"]["limit_max"]
    return mapfish_query(request.args, coll.provider.schema, limit_max)


@blueprint.route("/<layer>", methods=["GET", "POST", "PUT"])
def layer_features(layer: str) -> Response:
    """Read many (GET) or create/update a FeatureCollection (POST, PUT)."""
    layer = layer.removesuffix(SUFFIX) or layer
    if request.method == "GET":
        return _read_many(_collection(layer))
    return _write_many(_writable(layer))


@blueprint.route("/<layer>/count", methods=["GET"])
def count(layer: str) -> Response:
    return _count(_collection(layer))


@blueprint.route("/<layer>/<path:fid>", methods=["GET", "PUT", "DELETE"])
def feature(layer: str, fid: str) -> Response:
    """One feature by id: read (GET), update (PUT), delete (DELETE)."""
    if request.method == "GET" and fid == "count" + SUFFIX:
        return _count(_collection(layer))
    fid = fid.removesuffix(SUFFIX) or fid
    if request.method == "GET":
        return _read_one(_collection(layer), fid)
    coll = _writable(layer)
    if request.method == "DELETE":
        coll.provider.delete(fid, request.headers.get("If-Match"))
        return Response(status=204)
    body = json_body()
    if not isinstance(body, dict) or body.get("type", "Feature") != "Feature":
        raise InvalidData("expected a GeoJSON Feature")
    (stored,) = coll.provider.write([Write("update", body, fid, request.headers.get("If-Match"))], CRS84)
    return Response(stored.body, status=201, mimetype=JSON, headers={"ETag": stored.etag})


def _read_one(coll: Collection, fid: str) -> Response:
    schema = coll.provider.schema
    properties = _names(request.args, "attrs", schema)
    stored = coll.provider.get(fid, CRS84, properties, _flag(request.args, "no_geom"))
    return Response(stored.body, mimetype=JSON, headers={"ETag": stored.etag})


def _read_many(coll: Collection) -> Response:
    page = coll.provider.query(_query(coll))
    features: Iterator[bytes] = iter(page.features)
    # The first feature is read before answering, so a failing query is an error
    # status, not a 200 cut short.
    first = next(features, None)
    if first is not None:
        features = chain([first], features)
    return Response(
        stream_with_context(formats.feature_collection(features, {}, {})),
        mimetype=JSON,
    )


def _count(coll: Collection) -> Response:
    query = _query(coll)
    query.limit, query.offset, query.count = 0, 0, "exact"
    matched = coll.provider.query(query).matched
    return Response(str(matched.value if matched else 0), mimetype="text/plain")


def _write_many(coll: Collection) -> Response:
    """Features without an id are created, those with one updated: one transaction for all."""
    body = json_body()
    if not isinstance(body, dict) or body.get("type") not in ("FeatureCollection", "Feature"):
        raise InvalidData("expected a GeoJSON FeatureCollection")
    features = body.get("features") if body["type"] == "FeatureCollection" else [body]
    if not isinstance(features, list) or not features:
        raise InvalidData("'features' must be a non-empty array")
    ops = []
    for index, feature in enumerate(features):
        where = f"feature {index + 1}: " if len(features) > 1 else ""
        if not isinstance(feature, dict):
            raise InvalidData(f"{where}a feature must be a JSON object")
        fid = feature.get("id")
        if fid is None:
            ops.append(Write("create", feature))
        elif isinstance(fid, (str, int)) and not isinstance(fid, bool):
            ops.append(Write("update", feature, str(fid)))
        else:
            raise InvalidData(f"{where}'id' must be a string, a number or null")
    stored = coll.provider.write(ops, CRS84)
    out = formats.feature_collection((s.body for s in stored if s is not None), {}, {})
    return Response(b"".join(out), status=201, mimetype=JSON)


# -- OpenAPI ---------------------------------------------------------------------------
def _param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_READ_ONE_PARAMS = [
    _param("no_geom", "true: the feature's geometry is null", {"type": "boolean"}),
    _param("attrs", "comma-separated properties to return", {"type": "string"}),
]
_FILTER_PARAMS = [
    _param("lon", "x of the search point, in the CRS of epsg", {"type": "number"}),
    _param("lat", "y of the search point, in the CRS of epsg", {"type": "number"}),
    _param(
        "tolerance",
        "distance around lon/lat (or geometry), in the units of epsg; without it, features that "
        "intersect the point",
        {"type": "number", "minimum": 0},
    ),
    _param("bbox", "xmin,ymin,xmax,ymax in the CRS of epsg", {"type": "string"}),
    _param("geometry", "a GeoJSON geometry (text): features that intersect it", {"type": "string"}),
    _param("epsg", "EPSG code of lon, lat, bbox and geometry (x/y order); default 4326", {"type": "integer"}),
    _param("queryable", "comma-separated fields that {field}__{op} filters may use", {"type": "string"}),
    {
        "name": "filters",
        "in": "query",
        "required": False,
        "description": "{field}__{op}={value} with op one of eq, ne, lt, lte, gt, gte, like, ilike "
        "(like/ilike: a value without % matches values that contain it); field must be in queryable",
        "style": "form",
        "explode": True,
        "schema": {"type": "object", "additionalProperties": {"type": "string"}},
    },
]
_PAGE_PARAMS = [
    _param(
        "limit", "at most this many features (default and cap: the configured maximum)", {"type": "integer"}
    ),
    _param("maxfeatures", "alias of limit", {"type": "integer", "minimum": 0}),
    _param("offset", "skip this many features", {"type": "integer", "minimum": 0}),
    _param("order_by", "order by this field", {"type": "string"}),
    _param("dir", "order direction (with order_by)", {"type": "string", "enum": ["ASC", "DESC"]}),
]


def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths (under ``prefix``) and component schemas of the MapFish routes."""
    ref = "#/components/schemas/"

    def body(schema: str, description: str) -> dict[str, Any]:
        return {"description": description, "content": {JSON: {"schema": {"$ref": ref + schema}}}}

    def errors(*codes: int) -> dict[str, Any]:
        reasons = {
            400: "malformed parameter or body",
            404: "no such layer or feature",
            405: "the layer is read-only",
            409: "the write clashes with stored data",
            412: "If-Match names an older version",
            413: "body too large",
            422: "a feature cannot be stored (its number is in the message)",
        }
        return {str(c): body("mapfishError", reasons[c]) for c in codes}

    layer = {"name": "layer", "in": "path", "required": True, "schema": {"type": "string"}}
    fid = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    write_body = {"required": True, "content": {JSON: {"schema": {"$ref": ref + "mapfishFeatureCollection"}}}}
    batch = {
        "summary": "Create (id null) and update (id set) features, in one transaction",
        "requestBody": write_body,
        "responses": {
            "201": body("mapfishFeatureCollection", "the stored features"),
            **errors(400, 404, 405, 409, 413, 422),
        },
    }
    paths = {
        f"{prefix}/{{layer}}": {
            "parameters": [layer],
            "get": {
                "summary": "Read features of a layer (a collection id); also at {layer}.json",
                "parameters": _READ_ONE_PARAMS + _PAGE_PARAMS + _FILTER_PARAMS,
                "responses": {
                    "200": body("mapfishFeatureCollection", "the matching features"),
                    **errors(400, 404),
                },
            },
            "post": {**batch, "operationId": "mapfishCreate"},
            "put": {**batch, "operationId": "mapfishCreateOrUpdate"},
        },
        f"{prefix}/{{layer}}/count": {
            "parameters": [layer],
            "get": {
                "summary": "Count the features the same filters select; also at count.json",
                "parameters": _FILTER_PARAMS,
                "responses": {
                    "200": {
                        "description": "the number of matching features",
                        "content": {"text/plain": {"schema": {"type": "integer", "minimum": 0}}},
                    },
                    **errors(400, 404),
                },
            },
        },
        f"{prefix}/{{layer}}/{{id}}": {
            "parameters": [layer, fid],
            "get": {
                "summary": "Read one feature; also at {id}.json",
                "parameters": _READ_ONE_PARAMS,
                "responses": {"200": body("mapfishFeature", "the feature"), **errors(400, 404)},
            },
            "put": {
                "summary": "Update one feature (only the properties it carries change)",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": {"$ref": ref + "mapfishFeature"}}},
                },
                "responses": {
                    "201": body("mapfishFeature", "the stored feature"),
                    **errors(400, 404, 405, 409, 412, 413, 422),
                },
            },
            "delete": {
                "summary": "Delete one feature",
                "responses": {"204": {"description": "deleted"}, **errors(404, 405, 412)},
            },
        },
    }
    schemas = {
        "mapfishGeometry": {
            "type": "object",
            "nullable": True,
            "required": ["type"],
            "properties": {
                "type": {
                    "type": "string",
                    "enum": [
                        "Point",
                        "LineString",
                        "Polygon",
                        "MultiPoint",
                        "MultiLineString",
                        "MultiPolygon",
                        "GeometryCollection",
                    ],
                },
                "coordinates": {"type": "array", "items": {}},
                "geometries": {"type": "array", "items": {"type": "object"}},
            },
        },
        "mapfishFeature": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"type": "string", "enum": ["Feature"]},
                "id": {
                    "nullable": True,
                    "oneOf": [{"type": "string"}, {"type": "integer"}],
                    "description": "null or absent: a new feature",
                },
                "geometry": {"$ref": ref + "mapfishGeometry"},
                "properties": {"type": "object", "nullable": True, "additionalProperties": True},
            },
        },
        "mapfishFeatureCollection": {
            "type": "object",
            "required": ["type", "features"],
            "properties": {
                "type": {"type": "string", "enum": ["FeatureCollection"]},
                "features": {"type": "array", "items": {"$ref": ref + "mapfishFeature"}},
            },
        },
        "mapfishError": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
    }
    return {"paths": paths, "components": {"schemas": schemas}}
