"""REST buffer layers (``POST /layers/{id}/buffer``): a new layer of a layer's buffered geometries.

The body ``{"name", "size", "units": "meter" | "kilometer" | "mile" | "degree",
"merge_geom": true}`` (as the reference, plus ``fill_color``, ``border_color`` and
``border_width``, kept as the new layer's style) makes a NEW table in the tables
source (``store.tables``, or ``connection_id``), in the source layer's CRS, published
at once as a layer. Each feature is buffered on the ground (:mod:`providers.geodesic`);
``merge_geom`` unions all buffers into one feature. The source is read through its
provider with the shared query model, the new rows written through the new table's
provider in one transaction; if anything fails the new table is dropped again.

The caller must be able to read the source layer and to create (a key with the write
scope, checked by :mod:`server.auth`); the new table and layer are the caller's own.
"""

from __future__ import annotations

import re
from typing import Any

import shapely
from flask import Response, current_app

from providers import geodesic
from providers.base import Query
from providers.errors import InvalidData, InvalidQuery, ProviderError
from providers.export import TooMany
from providers.tables import RESERVED_PREFIXES, RESERVED_TABLES, ColumnSpec, TableSpec
from server.geometry_text import to_geojson
from server.rest import blueprint, document, json_body, rest_url
from server.rest_export import layer_or_collection
from server.rest_layers import (
    json_body_schema,
    json_response,
    layer_doc,
    path_parameter,
    published_layers,
    xy_crs,
)
from server.rest_tables import create_table, drop_table, errors, source_tables

#: Source features one buffer request may read (more is a 413).
MAX_FEATURES = 100_000
#: Tries at a free table name derived from the layer name.
MAX_NAME_TRIES = 50
#: The new table's column linking each buffer to the feature it was made from.
SOURCE_ID = "source_id"


def _text(body: dict[str, Any], name: str, limit: int = 200) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool) or len(str(value)) > limit:
        raise InvalidData(f"{name} must be a string of at most {limit} characters")
    return str(value)


def _size(body: dict[str, Any]) -> float:
    value = body.get("size")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidData(f"size must be a number, not {value[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidData("size must be a number")
    return float(value)


def _merge(body: dict[str, Any]) -> bool:
    value = body.get("merge_geom", True)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "t", "f", "1", "0"):
        return value.lower() in ("true", "t", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise InvalidData("merge_geom must be true or false")


def _table_name(name: str, taken: set[str], collections: set[str]) -> str:
    """A free table name (also free as a collection id) derived from a layer name."""
    base = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")[:50] or "buffer"
    if base[0].isdigit() or base in RESERVED_TABLES or base.startswith(RESERVED_PREFIXES):
        base = f"buffer_{base}"[:50]
    for number in range(1, MAX_NAME_TRIES + 1):
        candidate = base if number == 1 else f"{base}_{number}"
        if candidate not in taken and candidate not in collections:
            return candidate
    raise InvalidData(f"no free table name for a layer named {name[:100]!r}")


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry | None:
    """Only the polygons of a buffer (make_valid may add slivers of lower dimension)."""
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else None


@blueprint.route("/layers/<layer>/buffer", methods=["POST"])
def buffer_layer(layer: str) -> Response:
    coll, _ = layer_or_collection(layer)
    body = json_body()
    name = _text(body, "name")
    if not name or not name.strip():
        raise InvalidData("a buffer layer needs a name")
    size = _size(body)
    units = body.get("units") or "meter"
    if not isinstance(units, str):
        raise InvalidData("units must be meter, kilometer, mile or degree")
    try:
        geodesic.size_in_metres(size, units.lower())
    except InvalidQuery as exc:
        raise InvalidData(exc.message) from exc
    merge = _merge(body)
    style = {k: body[k] for k in ("fill_color", "border_color", "border_width") if k in body}
    wanted = body.get("connection_id")
    if wanted is not None and not isinstance(wanted, str):
        raise InvalidData("connection_id must be a source name")
    source, tables = source_tables(wanted)

    schema = coll.provider.schema
    if schema.geometry_field is None:
        raise InvalidData(f"layer {layer[:60]!r} has no geometry to buffer")
    srid = schema.storage_crs.srid
    crs = xy_crs(srid)
    _, rows = coll.provider.records(
        Query(limit=MAX_FEATURES + 1, crs=crs, properties=[], count="none"), geometry="wkb"
    )
    sources: list[tuple[Any, shapely.Geometry]] = []
    for index, (fid, wkb, *_) in enumerate(rows):
        if index >= MAX_FEATURES:
            raise TooMany(f"a layer of more than {MAX_FEATURES} features cannot be buffered")
        if wkb is not None:
            geom = shapely.from_wkb(bytes(wkb))
            if geom is not None and not geom.is_empty:
                sources.append((fid, geom))
    shapes = geodesic.buffer_all([geom for _, geom in sources], srid, size, units.lower())
    buffers = list(zip([fid for fid, _ in sources], shapes, strict=True))
    if merge and buffers:
        buffers = [(None, shapely.union_all(shapes))]
    features = []
    for fid, geom in buffers:
        polygons = _polygonal(geom)
        if polygons is not None and not polygons.is_empty:
            features.append(
                {
                    "type": "Feature",
                    "properties": {SOURCE_ID: None if fid is None else str(fid)},
                    "geometry": to_geojson(polygons),
                }
            )

    collections = set(current_app.extensions["geoharbor"].registry.collections)
    table = _table_name(name, set(tables.names()), collections)
    spec = TableSpec(table, "MULTIPOLYGON", srid, (ColumnSpec(SOURCE_ID, "text"),))
    meta: dict[str, Any] = {
        "name": name.strip(),
        "title": name.strip(),
        "buffer": {"layer": layer, "size": size, "units": units.lower(), "merge_geom": merge},
    }
    if style:
        meta["styles"] = [style]
    _, record = create_table(source, tables, spec, meta)
    try:
        tables.provider(table, editable=True).create(features, crs)
    except BaseException:
        drop_table(source, tables, table)  # with its layer: nothing half-made
        raise
    if record is None:  # a table with a geometry is always published; never reached
        raise ProviderError(f"table {table!r} was created but not published")
    doc = layer_doc(record, published_layers().get(record.id))
    return document(doc, 201, {"Location": rest_url(f"/layers/{record.id}")})


# -- OpenAPI ------------------------------------------------------------------------------------
def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths (under ``prefix``) and the request schema of the buffer route."""
    paths = {
        f"{prefix}/layers/{{layer_id}}/buffer": {
            "parameters": [
                path_parameter("layer_id", "Layer id (or the id of a configured collection)", "string")
            ],
            "post": {
                "summary": "Create a new layer of the layer's features buffered by a distance",
                "operationId": "restBufferLayer",
                "requestBody": json_body_schema("#/components/schemas/RestBufferInput", "The buffer"),
                "responses": {
                    "201": {
                        **json_response("The new layer", {"$ref": "#/components/schemas/RestLayer"}),
                        "headers": {
                            "Location": {"description": "The new layer", "schema": {"type": "string"}}
                        },
                    },
                    **errors(400, 404, 409, 413, 422),
                },
            },
        }
    }
    schemas = {
        "RestBufferInput": {
            "type": "object",
            "required": ["name", "size"],
            "properties": {
                "name": {"type": "string", "description": "Name of the new layer"},
                "size": {
                    "description": "Buffer distance, in units",
                    "oneOf": [{"type": "number"}, {"type": "string"}],
                },
                "units": {"type": "string", "enum": list(geodesic.UNITS), "default": "meter"},
                "merge_geom": {"type": "boolean", "default": True, "description": "union all buffers"},
                "fill_color": {"type": "string", "example": "198,45,240"},
                "border_color": {"type": "string", "example": "0,32,96"},
                "border_width": {"type": "integer", "minimum": 1, "maximum": 4},
                "connection_id": {"type": "string", "description": "Source of the new table"},
            },
        }
    }
    return {"paths": paths, "components": {"schemas": schemas}}
