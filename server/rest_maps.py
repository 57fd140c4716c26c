"""REST CRUD maps: an ordered list of layers with a name, bounds, a CRS and a style per layer.

Maps are store records (kind ``map``); they publish nothing themselves, so changing
one does not make the workers rebuild their collections. ``maps/{id}/render/iframe``
(also ``maps/{id}/render``) answers, in place of the reference's server-side
rendering, the built-in MapLibre page drawing the map's layers from the composite
vector tiles (``/tiles/WebMercatorQuad/{z}/{y}/{x}?collections=a,b``): the viewer's
template, script and vendored MapLibre, with a style built from the map.

A map is a shareable resource owned by its creator (the access hook of
:mod:`server.auth` checks the map a URL names); the list shows only the maps the
caller may read, and a map shows, and may be given, only layers the caller may read.
"""

from __future__ import annotations

import math
import re
from typing import Any

from flask import Response
from pyproj import Transformer

from providers.errors import InvalidData, InvalidQuery, NotFound
from providers.store import Record
from server.accounts import Accounts
from server.auth import current_identity, readable_collection, readable_record
from server.links import url
from server.registry import Collection
from server.rest import blueprint, document, envelope, json_body, no_content, paging, rest_url, wants_total
from server.rest_layers import (
    PAGING_PARAMETERS,
    error_responses,
    json_body_schema,
    json_response,
    layer_doc,
    list_schema,
    path_parameter,
    proj4_srid,
    published_layers,
    query_parameter,
    registry,
    sort_records,
    xy_crs,
)
from server.tiles import MAX_COMPOSITE
from server.viewer import (
    TILE_MATRIX_SET,
    bbox_of,
    map_page,
    style,
)

MAP_MEMBERS = {"name", "description", "bounds", "epsg", "proj4", "layers"}
#: Paint properties a map may set per layer: MapLibre's, of the layer types the viewer draws.
PAINT_PROPERTY = re.compile(r"^(fill|line|circle)-[a-z-]{1,40}$")
MAX_MAP_LAYERS = 500

MAP_ORDER = {
    "id": lambda r: r.id,
    "name": lambda r: str(r.body.get("name") or ""),
    "created": lambda r: r.created,
    "modified": lambda r: r.modified,
}


# -- checking a map body ----------------------------------------------------------------------
def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise InvalidData("a map needs a name of 1 to 200 characters")
    return value.strip()


def _epsg(value: Any) -> int:
    text = str(value).strip().upper().removeprefix("EPSG:")
    if isinstance(value, bool) or not text.isdigit():
        raise InvalidData(f"epsg must be an EPSG code, not {str(value)[:40]!r}")
    try:
        return xy_crs(int(text)).srid
    except InvalidQuery as exc:
        raise InvalidData(exc.message) from None


def _bounds(value: Any) -> list[float]:
    """[minx, miny, maxx, maxy] from a list or the reference's ``"minx,miny,maxx,maxy"`` text."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        if not isinstance(parts, list) or len(parts) != 4 or any(isinstance(p, bool) for p in parts):
            raise ValueError
        box = [float(p) for p in parts]
    except (ValueError, TypeError):
        raise InvalidData('bounds must be [minx, miny, maxx, maxy] or "minx,miny,maxx,maxy"') from None
    if not all(abs(v) != float("inf") and v == v for v in box) or box[0] > box[2] or box[1] > box[3]:
        raise InvalidData("bounds must be finite with minx <= maxx and miny <= maxy")
    return box


def _style(value: Any, index: int) -> dict[str, Any] | None:
    """A map layer's style: MapLibre paint properties (``fill-color``, ``circle-radius`` ...)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidData(f"layers[{index}].style must be an object of MapLibre paint properties")
    for key, item in value.items():
        if not PAINT_PROPERTY.match(key):
            raise InvalidData(
                f"layers[{index}].style: {key[:60]!r} is not a fill-, line- or circle- paint property"
            )
        if not isinstance(item, (str, int, float, bool, list)):
            raise InvalidData(f"layers[{index}].style.{key}: expected a value or an expression")
    return value


def _layers(value: Any) -> list[dict[str, Any]]:
    """The map's layers in order: ``{"layer_id", "style", "visible"}`` (or bare layer ids)."""
    if not isinstance(value, list) or len(value) > MAX_MAP_LAYERS:
        raise InvalidData(f"layers must be a list of at most {MAX_MAP_LAYERS} layers")
    out = []
    store = registry().store
    for index, item in enumerate(value):
        entry = {"layer_id": item} if isinstance(item, int) and not isinstance(item, bool) else item
        if not isinstance(entry, dict) or set(entry) - {"layer_id", "style", "visible"}:
            raise InvalidData(f'layers[{index}] must be {{"layer_id", "style", "visible"}}')
        layer_id = entry.get("layer_id")
        if not isinstance(layer_id, int) or isinstance(layer_id, bool):
            raise InvalidData(f"layers[{index}].layer_id must be a layer id")
        try:
            record = store.get("layer", layer_id)
        except NotFound:
            record = None
        if record is None or not readable_record(record):  # a layer hidden from the caller: as if none
            raise InvalidData(f"layers[{index}]: layer {layer_id} not found")
        visible = entry.get("visible", True)
        if not isinstance(visible, bool):
            raise InvalidData(f"layers[{index}].visible must be true or false")
        out.append({"layer_id": layer_id, "style": _style(entry.get("style"), index), "visible": visible})
    return out


def _map_body(body: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    """The stored map from a create (``current`` None) or update body, checked."""
    unknown = sorted(set(body) - MAP_MEMBERS)
    if unknown:
        raise InvalidData(f"unknown map member {unknown[0][:60]!r}")
    out = dict(current or {"layers": []})
    if current is None or "name" in body:
        out["name"] = _name(body.get("name"))
    if "description" in body:
        if body["description"] is not None and not isinstance(body["description"], str):
            raise InvalidData("description must be a string")
        out["description"] = body["description"]
    if "proj4" in body:
        if body["proj4"] is None:
            out.pop("proj4", None)
        elif not isinstance(body["proj4"], str):
            raise InvalidData("proj4 must be a PROJ string")
        else:
            out["proj4"] = body["proj4"]
            out["epsg"] = proj4_srid(body["proj4"], InvalidData)
    if body.get("epsg") is not None:
        epsg = _epsg(body["epsg"])
        if "proj4" in body and body["proj4"] is not None and out["epsg"] != epsg:
            raise InvalidData(f"proj4 is EPSG:{out['epsg']}, not EPSG:{epsg}")
        out["epsg"] = epsg
    if "bounds" in body:
        out["bounds"] = None if body["bounds"] is None else _bounds(body["bounds"])
    if "layers" in body:
        out["layers"] = _layers(body["layers"] or [])
    return out


# -- representations --------------------------------------------------------------------------
def map_doc(record: Record) -> dict[str, Any]:
    body = record.body
    return {
        "id": record.id,
        "name": body.get("name"),
        "description": body.get("description"),
        "epsg": body.get("epsg", 4326),
        "proj4": body.get("proj4"),
        "bounds": body.get("bounds"),
        "layers": body.get("layers", []),
        "owner": body.get("owner"),
        "created": int(record.created),
        "modified": int(record.modified),
        "links": [
            {"rel": "self", "type": "application/json", "href": rest_url(f"/maps/{record.id}")},
            {"rel": "layers", "type": "application/json", "href": rest_url(f"/maps/{record.id}/layers")},
            {"rel": "map", "type": "text/html", "href": rest_url(f"/maps/{record.id}/render/iframe")},
            {"rel": "style", "type": "application/json", "href": rest_url(f"/maps/{record.id}/style.json")},
        ],
    }


def _map(map_id: int) -> Record:
    return registry().store.get("map", map_id)


@blueprint.route("/maps", methods=["GET"])
def list_maps() -> Response:
    page = paging()
    records = sort_records([r for r in registry().store.list("map") if readable_record(r)], MAP_ORDER)
    data = [map_doc(r) for r in records[page.offset : page.offset + page.perpage]]
    return envelope("maps", data, len(records) if wants_total() else None, page.page)


@blueprint.route("/maps/<int:map_id>", methods=["GET"])
def get_map(map_id: int) -> Response:
    return document(map_doc(_map(map_id)))


@blueprint.route("/maps", methods=["POST"])
def create_map() -> Response:
    body = _map_body(json_body(), None)
    owner = current_identity().user_id
    if owner is not None:
        body["owner"] = owner  # the creator owns it (and may share it)
    record = registry().store.insert("map", body)
    return document(map_doc(record), 201, {"Location": rest_url(f"/maps/{record.id}")})


@blueprint.route("/maps/<int:map_id>", methods=["PUT", "PATCH"])
def update_map(map_id: int) -> Response:
    current = _map(map_id)
    record = registry().store.update("map", map_id, _map_body(json_body(), current.body))
    return document(map_doc(record))


@blueprint.route("/maps/<int:map_id>", methods=["DELETE"])
def delete_map(map_id: int) -> Response:
    store = registry().store
    store.delete("map", map_id)
    Accounts(store).forget_resource(map_id)
    return no_content()


@blueprint.route("/maps/<int:map_id>/layers", methods=["GET"])
def map_layers(map_id: int) -> Response:
    """The map's layers in its order, each with the map's style and visibility for it."""
    page = paging()
    entries = _map(map_id).body.get("layers", [])
    store = registry().store
    records = {r.id: r for r in store.list("layer") if readable_record(r)} if entries else {}
    ordered = [(i, e) for i, e in enumerate(entries) if e["layer_id"] in records]
    published = published_layers()
    data = []
    for order, entry in ordered[page.offset : page.offset + page.perpage]:
        doc = layer_doc(records[entry["layer_id"]], published.get(entry["layer_id"]))
        doc.update(
            {"map_id": map_id, "order": order, "style": entry.get("style"), "visible": entry["visible"]}
        )
        data.append(doc)
    return envelope("layers", data, len(ordered) if wants_total() else None, page.page)


# -- the map page ---------------------------------------------------------------------------
def _map_collections(record: Record) -> list[tuple[Collection, dict[str, Any]]]:
    """Published collections of the map's layers that the caller may read, in map order,
    with their map entries (a map shared more widely than its layers shows less)."""
    published = published_layers()
    out = []
    for entry in record.body.get("layers", []):
        coll = published.get(entry["layer_id"])
        if coll is not None and coll.provider.schema.geometry_field is not None and readable_collection(coll):
            out.append((coll, entry))
    return out


def map_style(record: Record) -> dict[str, Any]:
    """A MapLibre style of the map: the viewer's, over composite tiles, with the map's styles.

    A hidden layer stays in the style with ``visibility: none`` so a client can show it.
    """
    members = _map_collections(record)
    collections = [coll for coll, _ in members]
    groups = []
    for start in range(0, len(collections), MAX_COMPOSITE):
        chunk = collections[start : start + MAX_COMPOSITE]
        tilejson = url(
            f"/tiles/{TILE_MATRIX_SET}/tilejson.json", {"collections": ",".join(c.id for c in chunk)}
        )
        groups.append((tilejson, chunk))
    built = style(groups, str(record.body.get("name") or f"map {record.id}"))
    entries = {coll.id: entry for coll, entry in members}
    for layer in built["layers"]:
        cid = layer["id"].rpartition("/")[0]
        entry = entries.get(cid)
        if entry is None:
            continue
        if not entry["visible"]:
            layer.setdefault("layout", {})["visibility"] = "none"
        for key, value in (entry.get("style") or {}).items():
            if key.split("-", 1)[0] == layer["type"]:  # line- also styles a polygon's outline
                layer["paint"][key] = value
    bounds = _lonlat_bounds(record) or bbox_of(collections)
    if bounds is not None:
        built["metadata"]["geoharbor:bounds"] = bounds
    return built


def _lonlat_bounds(record: Record) -> list[float] | None:
    """The map's own bounds (in its CRS) as lon/lat, for the page to fit."""
    box = record.body.get("bounds")
    if not box:
        return None
    srid = record.body.get("epsg", 4326)
    if srid != 4326:
        box = list(Transformer.from_crs(srid, 4326, always_xy=True).transform_bounds(*box, densify_pts=21))
    if not all(math.isfinite(v) for v in box):
        return None  # outside the area PROJ can move into lon/lat
    west, south, east, north = box
    return [max(west, -180.0), max(south, -85.051129), min(east, 180.0), min(north, 85.051129)]


@blueprint.route("/maps/<int:map_id>/style", methods=["GET"])
def get_map_style(map_id: int) -> Response:
    return document(map_style(_map(map_id)))


@blueprint.route("/maps/<int:map_id>/render", methods=["GET"])
@blueprint.route("/maps/<int:map_id>/render/<fmt>", methods=["GET"])
def render_map(map_id: int, fmt: str = "iframe") -> Response:
    """The map as an interactive page (the reference's ``iframe``); images are not rendered."""
    if fmt != "iframe":
        raise InvalidQuery(f"render format {fmt[:20]!r} is not available: use iframe (an interactive page)")
    record = _map(map_id)
    built = map_style(record)
    members = _map_collections(record)
    return map_page(
        [coll for coll, _ in members],
        rest_url(f"/maps/{map_id}/style.json"),
        str(record.body.get("name") or f"map {map_id}"),
        rest_url(f"/maps/{map_id}"),
        bounds=built["metadata"].get("geoharbor:bounds"),
        legend_ids={coll.id for coll, entry in members if entry["visible"]},
    )


# -- OpenAPI ----------------------------------------------------------------------------------
def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths (under ``prefix``) and component schemas of the map routes."""
    map_id = path_parameter("map_id", "Map id")
    map_ref = "#/components/schemas/RestMap"
    paths = {
        f"{prefix}/maps": {
            "get": {
                "summary": "List the maps",
                "operationId": "restListMaps",
                "parameters": [
                    *PAGING_PARAMETERS,
                    query_parameter("order_by", "name, created, modified or id, then :asc or :desc"),
                ],
                "responses": {"200": json_response("Maps", list_schema(map_ref)), **error_responses(400)},
            },
            "post": {
                "summary": "Create a map",
                "operationId": "restCreateMap",
                "requestBody": json_body_schema("#/components/schemas/RestMapInput", "The new map"),
                "responses": {
                    "201": json_response("The map", {"$ref": map_ref}),
                    **error_responses(400, 422),
                },
            },
        },
        f"{prefix}/maps/{{map_id}}": {
            "parameters": [map_id],
            "get": {
                "summary": "One map",
                "operationId": "restGetMap",
                "responses": {"200": json_response("The map", {"$ref": map_ref}), **error_responses(404)},
            },
            "put": {
                "summary": "Change a map (only the members given)",
                "operationId": "restUpdateMap",
                "requestBody": json_body_schema("#/components/schemas/RestMapInput", "Members to change"),
                "responses": {
                    "200": json_response("The map", {"$ref": map_ref}),
                    **error_responses(400, 404, 422),
                },
            },
            "delete": {
                "summary": "Delete a map (its layers stay)",
                "operationId": "restDeleteMap",
                "responses": {"204": {"description": "Deleted"}, **error_responses(404)},
            },
        },
        f"{prefix}/maps/{{map_id}}/layers": {
            "parameters": [map_id],
            "get": {
                "summary": "The map's layers in order, with the map's style and visibility of each",
                "operationId": "restMapLayers",
                "parameters": PAGING_PARAMETERS,
                "responses": {
                    "200": json_response("Layers", list_schema("#/components/schemas/RestLayer")),
                    **error_responses(404),
                },
            },
        },
        f"{prefix}/maps/{{map_id}}/style": {
            "parameters": [map_id],
            "get": {
                "summary": "MapLibre style of the map (also at style.json)",
                "operationId": "restMapStyle",
                "responses": {
                    "200": json_response("A MapLibre style (version 8)", {"type": "object"}),
                    **error_responses(404),
                },
            },
        },
        f"{prefix}/maps/{{map_id}}/render/{{format}}": {
            "parameters": [
                map_id,
                {
                    "name": "format",
                    "in": "path",
                    "required": True,
                    "description": "Only iframe: an interactive MapLibre page (also at render)",
                    "schema": {"type": "string", "enum": ["iframe"]},
                },
            ],
            "get": {
                "summary": "The map as an interactive web page over the composite vector tiles",
                "operationId": "restRenderMap",
                "responses": {
                    "200": {
                        "description": "HTML page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    **error_responses(400, 404),
                },
            },
        },
    }
    layer_entry = {
        "type": "object",
        "required": ["layer_id"],
        "properties": {
            "layer_id": {"type": "integer"},
            "style": {
                "type": "object",
                "nullable": True,
                "description": 'MapLibre paint properties, e.g. {"fill-color": "#c00"}',
                "additionalProperties": True,
            },
            "visible": {"type": "boolean", "default": True},
        },
    }
    bounds = {
        "nullable": True,
        "oneOf": [
            {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
            {"type": "string", "description": "minx,miny,maxx,maxy"},
        ],
    }
    schemas = {
        "RestMapLayer": layer_entry,
        "RestMap": {
            "type": "object",
            "required": ["id", "name", "layers", "created", "modified"],
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "description": {"type": "string", "nullable": True},
                "epsg": {"type": "integer"},
                "proj4": {"type": "string", "nullable": True},
                "bounds": {"type": "array", "items": {"type": "number"}, "nullable": True},
                "layers": {"type": "array", "items": {"$ref": "#/components/schemas/RestMapLayer"}},
                "owner": {
                    "type": "integer",
                    "nullable": True,
                    "description": "id of the user who created it",
                },
                "created": {"type": "integer"},
                "modified": {"type": "integer"},
                "links": {"type": "array", "items": {"$ref": "#/components/schemas/RestLink"}},
            },
        },
        "RestMapInput": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "description": {"type": "string"},
                "bounds": bounds,
                "epsg": {"type": "integer"},
                "proj4": {"type": "string"},
                "layers": {
                    "type": "array",
                    "items": {"oneOf": [{"$ref": "#/components/schemas/RestMapLayer"}, {"type": "integer"}]},
                },
            },
        },
    }
    return {"paths": paths, "components": {"schemas": schemas}}
