"""REST CRUD layers and their features (``/layers``, ``/layers/{id}/columns``, ``/layers/{id}/features``).

A *layer* is a store record (kind ``layer``) that publishes a PostGIS table or a
GeoPackage layer as an OGC collection, created here through
:meth:`Registry.create_layer`: it is served at once by every worker as OGC items
and tiles, and its features are the same rows the REST feature routes read and
write. Collections declared in the configuration or discovered from a source are
not layers (they have no layer id) and are not listed here.

Who may see and change a layer is decided by :mod:`server.auth`: its hook checks the
layer a URL names, the list shows only the layers the caller may read, and a layer
is owned by the user who created it. A layer publishes a table, so making one (or
pointing one at another table) needs rights on that table too.

Features take the reference's shape (``__id``, ``__created``, ``__modified``,
``__owner``, ``__xmin..__ymax``, ``__geometry``, ``data``) but are read through the
shared :class:`~providers.base.Query` and written through the provider's write
calls: ``where`` is CQL2 text compiled by the one filter compiler, never SQL.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import orjson
import shapely
import shapely.geometry
from flask import Response, current_app, request
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pyproj.exceptions import CRSError

from providers.base import CollectionSchema, Query
from providers.crs import CRS, CRS84, epsg_uri, parse_crs
from providers.errors import Conflict, Forbidden, InvalidData, InvalidQuery, NotFound
from providers.filters import SPATIAL, parse_cql2
from providers.store import Record
from providers.tables import tables_of
from server.accounts import Accounts
from server.auth import current_auth, current_identity, readable_record
from server.geometry_text import FORMATS, GeometryFormat, format_geometry, geometry_format, parse_geometry
from server.links import url
from server.registry import Collection, Registry
from server.rest import (
    blueprint,
    document,
    envelope,
    expand,
    flag,
    json_body,
    no_content,
    order_by,
    paging,
    rest_url,
    wants_total,
)
from server.viewer import TILE_MATRIX_SET, geometry_kind

#: Columns that fill the reference's ``__created``, ``__modified`` and ``__owner`` when a table has them.
SPECIAL_COLUMNS = ("__created", "__modified", "__owner")
#: The reference's source types, by the configured source type they name.
SOURCE_TYPES = {"pg": "postgis", "postgis": "postgis", "gpkg": "geopackage", "geopackage": "geopackage"}
SOURCE_NAMES = {"postgis": "pg", "geopackage": "gpkg"}
#: Layer members stored as given: the reference's display options, kept for the clients that set them.
LAYER_METADATA = (
    "alpha",
    "exportable",
    "hidegeometry",
    "label",
    "label_placement",
    "lock",
    "offscale",
    "onscale",
    "opened",
    "order",
    "textfield",
    "tooltip",
    "use_info_window",
)
LAYER_MEMBERS = {
    "name",
    "source",
    "collection",
    "mid",
    "title",
    "description",
    "editable",
    "styles",
    "visible",
    "type",
    *LAYER_METADATA,
}
#: Tries at a free collection id derived from a layer name before giving up.
MAX_ID_TRIES = 50
LEGACY_EPSG = {900913: 3857, 3785: 3857, 102113: 3857, 102100: 3857}
COLUMN_TYPES = {
    "string": "text",
    "integer": "number",
    "number": "number",
    "boolean": "boolean",
    "object": "json",
}


def registry() -> Registry:
    return current_app.extensions["geoharbor"].registry


# -- CRS and filters of the REST API -----------------------------------------------------------
def xy_crs(srid: int) -> CRS:
    """EPSG ``srid`` with x/y (easting/northing, lon/lat) axes, as REST clients write coordinates.

    The REST API's ``epsg`` is a GIS SRID, not an OGC CRS URI, and its coordinates
    are x/y whatever the authority's axis order: EPSG:4326 is lon/lat here.
    """
    srid = LEGACY_EPSG.get(srid, srid)
    if srid == 4326:
        return CRS84
    parse_crs(str(srid))  # UnknownCRS (400) for codes PROJ does not know
    return CRS(srid, epsg_uri(srid), False)


def request_crs(epsg_name: str = "epsg") -> CRS:
    """The CRS of ``epsg`` (a code) or ``proj4`` (matched to an EPSG code); lon/lat by default."""
    raw = request.args.get(epsg_name)
    proj4 = request.args.get("proj4")
    if raw:
        text = raw.strip().upper().removeprefix("EPSG:")
        if not text.isdigit() or not 0 < int(text) < 1_000_000:
            raise InvalidQuery(f"{epsg_name} must be an EPSG code, not {raw[:40]!r}")
        return xy_crs(int(text))
    if proj4:
        if "+" not in proj4:
            # "+proj=merc +a=..." sent unencoded in a URL arrives as " proj=merc  a=...".
            proj4 = " ".join("+" + token for token in proj4.split())
        return xy_crs(proj4_srid(proj4, InvalidQuery))
    return CRS84


def proj4_srid(text: str, error: type[InvalidQuery] | type[InvalidData]) -> int:
    """The EPSG code of a proj4 string (pyproj's match); ``error`` when there is none."""
    try:
        code = ProjCRS.from_proj4(text).to_epsg(min_confidence=70)
    except CRSError:
        raise error(f"proj4 {text[:100]!r} is not a valid PROJ string") from None
    if code is None:
        raise error(f"proj4 {text[:100]!r} matches no EPSG code; give epsg instead")
    return int(code)


def parse_bounds(raw: str, name: str = "bounds") -> tuple[float, float, float, float]:
    """``minx,miny,maxx,maxy`` as four finite numbers."""
    parts = raw.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise InvalidQuery(f"{name} must be minx,miny,maxx,maxy") from None
    if len(values) != 4 or not all(v == v and abs(v) != float("inf") for v in values):
        raise InvalidQuery(f"{name} must be four finite numbers minx,miny,maxx,maxy")
    if values[1] > values[3]:
        raise InvalidQuery(f"{name}: miny is greater than maxy")
    return values  # type: ignore[return-value]


def attribute_filter(text: str) -> dict[str, Any]:
    """``where``: an attribute filter in CQL2 text (``pop_est > 1000 AND name LIKE 'A%'``).

    Parsed by the CQL2 parser into the tree the filter compiler checks and binds; SQL
    text, functions and spatial predicates are refused (``bounds`` filters by place).
    """
    if len(text) > 10_000:
        raise InvalidQuery("where is too long")
    try:
        tree = parse_cql2(text, "cql2-text")
    except InvalidQuery as exc:
        raise InvalidQuery("where: " + exc.message.removeprefix("filter: ")) from None

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            op = node.get("op")
            if isinstance(op, str) and (op.lower() in SPATIAL or op.lower().startswith("s_")):
                raise InvalidQuery("where is an attribute filter; filter by place with bounds")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    return tree


# -- features in the reference's shape --------------------------------------------------------
def _bound(value: float) -> float | None:
    return None if value != value else value  # NaN (empty geometry) is no bound


def feature_doc(
    raw: bytes | dict[str, Any], fmt: GeometryFormat, crs: CRS, with_data: bool = True
) -> dict[str, Any]:
    """A provider's GeoJSON feature as the REST API shows it.

    ``__created`` / ``__modified`` / ``__owner`` come from same-named columns and are
    null when the table has none; ``__xmin..__ymax`` bound the geometry in ``crs``.
    """
    feature = orjson.loads(raw) if isinstance(raw, (bytes, str)) else raw
    props = dict(feature.get("properties") or {})
    geometry = feature.get("geometry")
    geom = shapely.geometry.shape(geometry) if geometry else None
    doc: dict[str, Any] = {"__id": feature.get("id")}
    for name in SPECIAL_COLUMNS:
        doc[name] = props.pop(name, None)
    if geom is not None and not geom.is_empty:
        minx, miny, maxx, maxy = shapely.bounds(geom).tolist()
        box = {"__xmin": _bound(minx), "__ymin": _bound(miny), "__xmax": _bound(maxx), "__ymax": _bound(maxy)}
    else:
        box = dict.fromkeys(("__xmin", "__ymin", "__xmax", "__ymax"))
    doc.update(box)
    doc["__geometry"] = format_geometry(geom, fmt, crs.uri, _gml_id(doc["__id"]))
    if with_data:
        doc["data"] = props
    return doc


def _gml_id(fid: Any) -> str:
    """A gml:id (an XML NCName) for a feature id, which may be any text."""
    return "f" + re.sub(r"[^A-Za-z0-9_.-]", "_", str(fid))[:60]


def special_columns(schema: CollectionSchema) -> list[str]:
    return [name for name in SPECIAL_COLUMNS if name in schema.fields]


def layer_collection(layer_id: int) -> Collection:
    """The published collection of a layer: 404 when the layer or its collection is gone."""
    return registry().layer_collection(layer_id)


# -- layers -------------------------------------------------------------------------------------
def source_member(body: dict[str, Any]) -> str:
    """The reference's ``source`` member: a JSON string ``{"type", "src", "connection_id"}``."""
    spec = registry().config["sources"].get(body.get("source"), {})
    kind = spec.get("type")
    src = body.get("table") if kind == "postgis" else body.get("layer")
    value = {"type": SOURCE_NAMES.get(kind, kind), "src": src, "connection_id": body.get("source")}
    return orjson.dumps(value).decode()


def _storage_extent(coll: Collection) -> tuple[float, float, float, float] | None:
    """The collection's extent as published, in its storage CRS (the reference gives it in the layer's)."""
    box = coll.provider.schema.bbox
    srid = coll.provider.schema.storage_crs.srid
    if box is None or srid == 4326:
        return box
    try:
        extent = _from_lonlat(srid).transform_bounds(*box, densify_pts=21)
    except Exception:  # noqa: BLE001 - a box PROJ cannot move into that CRS has no extent there
        return None
    return tuple(extent) if all(math.isfinite(v) for v in extent) else None  # type: ignore[return-value]


@lru_cache(maxsize=64)
def _from_lonlat(srid: int) -> Transformer:
    return Transformer.from_crs(4326, srid, always_xy=True)


def columns(schema: CollectionSchema) -> list[dict[str, Any]]:
    """Each attribute: name, type (text, number, boolean, date, datetime, json), not_null."""
    out = []
    for field in schema.fields.values():
        kind = COLUMN_TYPES.get(field.type, "text")
        if field.format == "date":
            kind = "date"
        elif field.format == "date-time":
            kind = "datetime"
        out.append(
            {
                "name": field.name,
                "type": kind,
                "not_null": not field.nullable,
                "native_type": field.native_type,
            }
        )
    return out


def layer_doc(record: Record, coll: Collection | None, with_columns: bool = False) -> dict[str, Any]:
    """A layer record and what its published collection says about the data."""
    body = record.body
    doc: dict[str, Any] = {
        "id": record.id,
        "name": body.get("name", record.key),
        "title": body.get("title"),
        "description": body.get("description"),
        "type": None,
        "source": source_member(body),
        "collection": record.key,
        "editable": body.get("editable", True),
        "epsg": None,
        "x_min": None,
        "y_min": None,
        "x_max": None,
        "y_max": None,
        "created": int(record.created),
        "modified": int(record.modified),
        "styles": body.get("styles"),
        "visible": body.get("visible", True),
        "owner": body.get("owner"),
    }
    for name in LAYER_METADATA:
        if name in body:
            doc[name] = body[name]
    if coll is None:
        error = registry().layer_errors.get(record.id)
        doc["error"] = f"not published: {error}" if error else "not published"
    else:
        schema = coll.provider.schema
        doc["type"] = geometry_kind(schema.geometry_type) if schema.geometry_field else None
        doc["geometry_type"] = schema.geometry_type
        doc["epsg"] = schema.storage_crs.srid
        extent = _storage_extent(coll)
        if extent is not None:
            doc["x_min"], doc["y_min"], doc["x_max"], doc["y_max"] = extent
        if with_columns:
            doc["columns"] = columns(schema)
    segment = _segment(record.key or "")
    doc["links"] = [
        {"rel": "self", "type": "application/json", "href": rest_url(f"/layers/{record.id}")},
        {"rel": "features", "type": "application/json", "href": rest_url(f"/layers/{record.id}/features")},
        {"rel": "collection", "type": "application/json", "href": url(f"/collections/{segment}")},
        {"rel": "items", "type": "application/geo+json", "href": url(f"/collections/{segment}/items")},
        {
            "rel": "tiles",
            "type": "application/json",
            "href": url(f"/collections/{segment}/tiles/{TILE_MATRIX_SET}"),
        },
    ]
    return doc


def _segment(cid: str) -> str:
    """A collection id as one URL path segment (ids come from names and may hold anything)."""
    return quote(cid, safe="")


def published_layers() -> dict[int, Collection]:
    """Published collections by layer id (after following the store)."""
    reg = registry()
    reg.sync()
    return {c.layer_id: c for c in reg.collections.values() if c.layer_id is not None}


def layer_record(layer_id: int) -> Record:
    return registry().store.get("layer", layer_id)


def sort_records(
    records: list[Record], allowed: dict[str, Callable[[Record], Any]], default: str = "id"
) -> list[Record]:
    """Records in ``order_by`` order (fields checked by :func:`server.rest.order_by`)."""
    out = sorted(records, key=allowed[default])
    for name, ascending in reversed(order_by(allowed)):  # stable sorts: the first term sorts last
        out.sort(key=allowed[name], reverse=not ascending)
    return out


LAYER_ORDER: dict[str, Callable[[Record], Any]] = {
    "id": lambda r: r.id,
    "name": lambda r: str(r.body.get("name") or ""),
    "created": lambda r: r.created,
    "modified": lambda r: r.modified,
    "collection": lambda r: r.key or "",
}


@blueprint.route("/layers", methods=["GET"])
def list_layers() -> Response:
    page = paging()
    records = sort_records([r for r in registry().store.list("layer") if readable_record(r)], LAYER_ORDER)
    published = published_layers()
    with_columns = "columns" in expand()
    chunk = records[page.offset : page.offset + page.perpage]
    data = [layer_doc(r, published.get(r.id), with_columns) for r in chunk]
    return envelope("layers", data, len(records) if wants_total() else None, page.page)


@blueprint.route("/layers/<int:layer_id>", methods=["GET"])
def get_layer(layer_id: int) -> Response:
    record = layer_record(layer_id)
    return document(layer_doc(record, published_layers().get(layer_id), "columns" in expand()))


def _source(value: Any) -> tuple[str, str]:
    """(config source name, table or layer) of the reference's ``source`` member."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise InvalidData('source must be an object or a JSON string {"type": ..., "src": ...}') from None
    if not isinstance(value, dict):
        raise InvalidData('source must be {"type": "pg" | "gpkg", "src": <table or layer>}')
    kind = SOURCE_TYPES.get(str(value.get("type", "")).lower())
    if kind is None:
        raise InvalidData(f"source type must be pg or gpkg, not {str(value.get('type'))[:40]!r}")
    src = value.get("src")
    if not isinstance(src, str) or not src.strip():
        raise InvalidData("source needs src: the table (pg) or GeoPackage layer (gpkg) to publish")
    sources = registry().config["sources"]
    wanted = value.get("connection_id")
    if wanted is not None:
        if sources.get(str(wanted), {}).get("type") != kind:
            raise InvalidData(f"connection_id {str(wanted)[:100]!r} is not a {kind} source")
        return str(wanted), src.strip()
    for name, spec in sources.items():
        if spec["type"] == kind:
            return name, src.strip()
    raise InvalidData(f"this server has no {kind} source")


def _text(body: dict[str, Any], name: str, limit: int = 1000) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidData(f"{name} must be a string of at most {limit} characters")
    return value


def _bool(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("t", "true", "f", "false", "1", "0"):
        return value.lower() in ("t", "true", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise InvalidData(f"{name} must be true or false")


def _slug(name: str) -> str:
    """A collection id from a layer name: safe in URLs, as an MVT layer name and for QGIS (no dots)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-")[:50]
    return slug or "layer"


def _free_ids(name: str) -> Iterator[str]:
    """Collection ids to try for a layer called ``name``: its slug, then numbered."""
    base = _slug(name)
    taken = set(registry().collections)
    for number in range(1, MAX_ID_TRIES + 1):
        candidate = base if number == 1 else f"{base}_{number}"
        if candidate not in taken:
            yield candidate


def _layer_body(body: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    """The stored layer record from a create (``current`` None) or update body, checked."""
    unknown = sorted(set(body) - LAYER_MEMBERS)
    if unknown:
        raise InvalidData(f"unknown layer member {unknown[0][:60]!r}")
    out = dict(current or {})
    if current is None or "name" in body:
        name = _text(body, "name", 200)
        if not name or not name.strip():
            raise InvalidData("a layer needs a name")
        out["name"] = name.strip()
    if "source" in body or current is None:
        if "source" not in body:
            raise InvalidData('a layer needs a source: {"type": "pg" | "gpkg", "src": <table or layer>}')
        source, src = _source(body["source"])
        out.pop("table", None)
        out.pop("layer", None)
        out["source"] = source
        kind = registry().config["sources"][source]["type"]
        out["table" if kind == "postgis" else "layer"] = src
    for member in ("title", "description"):
        if member in body:
            out[member] = _text(body, member)
    for member in ("editable", "visible"):
        if member in body:
            out[member] = _bool(body, member)
    for member in ("styles", *LAYER_METADATA):
        if member in body:
            out[member] = body[member]
    if "collection" in body:
        if not isinstance(body["collection"], str):
            raise InvalidData("collection must be a string")
        out["collection"] = body["collection"]
    out = {k: v for k, v in out.items() if v is not None or k == "styles"}  # null: back to the default
    if current is None:
        out.setdefault("title", out["name"])
        out.setdefault("editable", True)
        out.setdefault("visible", True)
    return out


def _map_for(mid: Any) -> Record:
    """The map a new layer joins (``mid``): 422 when there is none the caller may read, 403 when
    the caller may read it but not change it."""
    try:
        record = registry().store.get("map", int(mid))
    except (ValueError, TypeError):
        raise InvalidData("mid must be a map id") from None
    except NotFound:
        record = None
    auth, identity = current_auth(), current_identity()
    rights = auth.record_rights(identity, record) if record is not None else frozenset()
    if record is None or not auth.allowed(identity, "read", rights):
        raise InvalidData(f"mid: map {str(mid)[:40]} not found")
    if not auth.allowed(identity, "write", rights):
        raise Forbidden(f"this API key may not add layers to map {record.id}")
    return record


def require_table(body: dict[str, Any]) -> None:
    """Check that the caller may publish the table a layer body names.

    A layer shows its table to whoever may read the layer, and an editable one lets
    them write its rows: so a layer needs read rights on its table, and write rights
    when it is editable (:meth:`server.auth.Auth.table_rights`: tables the REST API
    made, as shared; any other table of the database, admins only). Without this,
    anyone with a write key could publish a private collection's table as their own.
    """
    auth, identity = current_auth(), current_identity()
    if auth.mode == "community" or identity.admin:
        return
    source = body["source"]
    name = body.get("table") if "table" in body else body.get("layer")
    tables = tables_of(registry().sources[source], source)
    record = next(
        (
            r
            for r in registry().store.list("table")
            if r.body.get("source") == source and tables.is_layer_of(body, str(r.body.get("name")))
        ),
        None,
    )
    rights = auth.table_rights(identity, record)
    if not auth.allowed(identity, "read", rights):
        raise InvalidData(f"cannot publish {str(name)[:100]!r}: no such table that this API key may read")
    if body.get("editable", True) and not auth.allowed(identity, "write", rights):
        raise Forbidden(
            f"this API key may not edit table {str(name)[:100]!r}: publish it with editable false"
        )


def _publish(write: Callable[[], Record]) -> Record:
    """Store a layer record through the registry; a table or layer it cannot find is the body's fault."""
    try:
        return write()
    except NotFound as exc:
        raise InvalidData(exc.message) from None


@blueprint.route("/layers", methods=["POST"])
def create_layer() -> Response:
    body = json_body()
    record_body = _layer_body(body, None)
    require_table(record_body)
    the_map = _map_for(body["mid"]) if body.get("mid") is not None else None
    owner = current_identity().user_id
    if owner is not None:
        record_body["owner"] = owner  # the creator owns it (and may share it)
    reg = registry()
    if "collection" in record_body:
        record = _publish(lambda: reg.create_layer(record_body))
    else:
        record = None
        for candidate in _free_ids(record_body["name"]):
            try:
                record = _publish(lambda c=candidate: reg.create_layer({**record_body, "collection": c}))
                break
            except Conflict:
                continue  # taken meanwhile by another request: the next number
        if record is None:
            raise Conflict(f"no free collection id for a layer named {record_body['name'][:100]!r}")
    if the_map is not None:
        layers = [*the_map.body.get("layers", []), {"layer_id": record.id, "style": None, "visible": True}]
        reg.store.update("map", the_map.id, {**the_map.body, "layers": layers})
    doc = layer_doc(record, published_layers().get(record.id))
    return document(doc, 201, {"Location": rest_url(f"/layers/{record.id}")})


@blueprint.route("/layers/<int:layer_id>", methods=["PUT", "PATCH"])
def update_layer(layer_id: int) -> Response:
    current = layer_record(layer_id)
    body = json_body()
    if "mid" in body:
        raise InvalidData("mid is only for creating a layer; add a layer to a map by updating the map")
    new_body = _layer_body(body, current.body)
    if any(new_body.get(k) != current.body.get(k) for k in ("source", "table", "layer", "editable")):
        require_table(new_body)  # pointed at another table, or made editable
    record = _publish(lambda: registry().update_layer(layer_id, new_body))
    return document(layer_doc(record, published_layers().get(layer_id)))


def remove_layer(layer_id: int) -> None:
    """Unpublish a layer and take it out of every map that listed it (its table stays)."""
    reg = registry()
    reg.delete_layer(layer_id)
    for the_map in reg.store.list("map"):
        entries = the_map.body.get("layers", [])
        kept = [e for e in entries if e.get("layer_id") != layer_id]
        if len(kept) != len(entries):
            reg.store.update("map", the_map.id, {**the_map.body, "layers": kept})
    Accounts(reg.store).forget_resource(layer_id)


@blueprint.route("/layers/<int:layer_id>", methods=["DELETE"])
def delete_layer(layer_id: int) -> Response:
    remove_layer(layer_id)
    return no_content()


@blueprint.route("/layers/<int:layer_id>/columns", methods=["GET"])
def layer_columns(layer_id: int) -> Response:
    found = columns(layer_collection(layer_id).provider.schema)
    return envelope("columns", found, len(found), 1)


# -- features --------------------------------------------------------------------------------
def _feature_order(schema: CollectionSchema) -> list[tuple[str, bool]]:
    allowed = ["__id", schema.id_field, *schema.fields]
    return [(schema.id_field if name == "__id" else name, asc) for name, asc in order_by(allowed)]


@blueprint.route("/layers/<int:layer_id>/features", methods=["GET"])
def list_features(layer_id: int) -> Response:
    coll = layer_collection(layer_id)
    schema = coll.provider.schema
    fmt = geometry_format(request.args.get("geometry"))
    crs = request_crs()
    page = paging()
    total = wants_total()
    query = Query(
        limit=page.perpage,
        offset=page.offset,
        crs=crs,
        sortby=_feature_order(schema),
        count="auto" if total else "none",
    )
    if request.args.get("bounds"):
        query.bbox = parse_bounds(request.args["bounds"])
        query.bbox_crs = crs
    if request.args.get("where"):
        query.filter = attribute_filter(request.args["where"])
    with_data = not flag("noattrib")
    if not with_data:
        query.properties = special_columns(schema)
    try:
        result = coll.provider.query(query)
    except InvalidQuery as exc:  # the compiler names the filter as OGC calls it
        raise InvalidQuery(re.sub(r"^filter: ", "where: ", exc.message)) from None
    data = [feature_doc(f, fmt, crs, with_data) for f in result.features]
    matched = result.matched.value if total and result.matched is not None else None
    return envelope("features", data, matched, page.page)


@blueprint.route("/layers/<int:layer_id>/features/<fid>", methods=["GET"])
def get_feature(layer_id: int, fid: str) -> Response:
    coll = layer_collection(layer_id)
    crs = request_crs()
    stored = coll.provider.get(fid, crs=crs)
    return document(feature_doc(stored.body, geometry_format(request.args.get("geometry")), crs))


def _feature_in(body: dict[str, Any], crs: CRS, partial: bool) -> dict[str, Any]:
    """A GeoJSON feature from the reference's ``{"data": {...}, "geometry": "POINT(15 45)"}``.

    Members starting with ``__`` (a feature read back and sent again) are ignored;
    any other unknown member is refused, so a misspelt ``data`` is not silently lost.
    """
    unknown = sorted(k for k in body if k not in ("data", "geometry") and not k.startswith("__"))
    if unknown:
        raise InvalidData(f"unknown feature member {unknown[0][:60]!r}: expected data and geometry")
    feature: dict[str, Any] = {"type": "Feature"}
    data = body.get("data")
    if data is not None and not isinstance(data, dict):
        raise InvalidData("data must be an object of attribute values")
    if data is not None or not partial:
        feature["properties"] = data or {}
    if "geometry" in body:
        value = body["geometry"]
        feature["geometry"] = (
            None if value is None else shapely.geometry.mapping(parse_geometry(value, crs.srid))
        )
    return feature


def _stored_doc(coll: Collection, fid: Any, crs: CRS, body: bytes) -> dict[str, Any]:
    """What a write stored, in the CRS and geometry format the client reads in."""
    if crs != CRS84:
        body = coll.provider.get(str(fid), crs=crs).body
    return feature_doc(body, geometry_format(request.args.get("geometry")), crs)


@blueprint.route("/layers/<int:layer_id>/features", methods=["POST"])
def create_feature(layer_id: int) -> Response:
    coll = layer_collection(layer_id)
    crs = request_crs()
    feature = _feature_in(json_body(), crs, partial=False)
    stored = coll.provider.create([feature], crs)[0]
    doc = _stored_doc(coll, stored.id, crs, stored.body)
    return document(doc, 201, {"Location": rest_url(f"/layers/{layer_id}/features/{stored.id}")})


@blueprint.route("/layers/<int:layer_id>/features/<fid>", methods=["PUT", "PATCH"])
def update_feature(layer_id: int, fid: str) -> Response:
    coll = layer_collection(layer_id)
    crs = request_crs()
    patch = _feature_in(json_body(), crs, partial=True)
    stored = coll.provider.update(fid, patch, crs)
    return document(_stored_doc(coll, stored.id, crs, stored.body))


@blueprint.route("/layers/<int:layer_id>/features/<fid>", methods=["DELETE"])
def delete_feature(layer_id: int, fid: str) -> Response:
    layer_collection(layer_id).provider.delete(fid)
    return no_content()


# -- OpenAPI ------------------------------------------------------------------------------------
def error_responses(*statuses: int, texts: dict[int, str] | None = None) -> dict[str, Any]:
    """REST error responses (``{"code", "msg"}``) for an operation; ``texts`` words them for it."""
    text = {
        400: "Malformed parameter",
        404: "Not found",
        405: "The collection is read-only",
        409: "Conflict",
        413: "Too large",
        422: "Invalid body",
        503: "The source is unavailable",
        **(texts or {}),
    }
    schema = {"$ref": "#/components/schemas/RestErrorMessage"}
    return {
        str(s): {"description": text[s], "content": {"application/json": {"schema": schema}}}
        for s in statuses
    }


def json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def list_schema(item_ref: str) -> dict[str, Any]:
    """The reference's list envelope around ``item_ref`` items."""
    return {
        "type": "object",
        "required": ["type", "page", "data"],
        "properties": {
            "type": {"type": "string"},
            "total": {"type": "integer", "description": "absent with nototal"},
            "page": {"type": "integer"},
            "data": {"type": "array", "items": {"$ref": item_ref}},
        },
    }


def query_parameter(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def path_parameter(name: str, description: str, kind: str = "integer") -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": kind},
    }


PAGING_PARAMETERS = [
    query_parameter("page", "Page number, from 1", {"type": "integer", "minimum": 1, "default": 1}),
    query_parameter(
        "perpage",
        "Results per page (default 100, at most the configured maximum)",
        {"type": "integer", "minimum": 1},
    ),
    query_parameter("nototal", "Leave the total out (faster)", {"type": "boolean"}),
]


def json_body_schema(ref: str, description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ref}}},
    }


def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths (under ``prefix``) and component schemas of the layer and feature routes."""
    layer_id = path_parameter("layer_id", "Layer id")
    feature_id = path_parameter("feature_id", "Feature id", "string")
    output = [
        query_parameter(
            "geometry", "Geometry format", {"type": "string", "enum": list(FORMATS), "default": "wkt"}
        ),
        query_parameter(
            "epsg", "EPSG code of the output (and input) coordinates, x/y order; default lon/lat"
        ),
        query_parameter("proj4", "PROJ string of the output CRS, matched to an EPSG code"),
    ]
    layer_ref = "#/components/schemas/RestLayer"
    feature_ref = "#/components/schemas/RestFeature"
    order = query_parameter("order_by", "field[:asc|desc][,field...]")
    paths = {
        f"{prefix}/layers": {
            "get": {
                "summary": "List the layers (published collections created through this API)",
                "description": "Collections declared in the configuration or published from a source's "
                "schema are not layers: they have no layer id and are not listed.",
                "operationId": "restListLayers",
                "parameters": [*PAGING_PARAMETERS, order, query_parameter("expand", "columns")],
                "responses": {"200": json_response("Layers", list_schema(layer_ref)), **error_responses(400)},
            },
            "post": {
                "summary": "Create a layer over a table or GeoPackage layer; published at once",
                "operationId": "restCreateLayer",
                "requestBody": json_body_schema("#/components/schemas/RestLayerInput", "The new layer"),
                "responses": {
                    "201": json_response("The layer", {"$ref": layer_ref}),
                    **error_responses(400, 409, 422),
                },
            },
        },
        f"{prefix}/layers/{{layer_id}}": {
            "parameters": [layer_id],
            "get": {
                "summary": "One layer",
                "operationId": "restGetLayer",
                "parameters": [query_parameter("expand", "columns")],
                "responses": {"200": json_response("The layer", {"$ref": layer_ref}), **error_responses(404)},
            },
            "put": {
                "summary": "Change a layer (only the members given)",
                "operationId": "restUpdateLayer",
                "requestBody": json_body_schema("#/components/schemas/RestLayerInput", "Members to change"),
                "responses": {
                    "200": json_response("The layer", {"$ref": layer_ref}),
                    **error_responses(400, 404, 409, 422),
                },
            },
            "delete": {
                "summary": "Delete a layer: unpublished everywhere, its table stays",
                "operationId": "restDeleteLayer",
                "responses": {"204": {"description": "Deleted"}, **error_responses(404)},
            },
        },
        f"{prefix}/layers/{{layer_id}}/columns": {
            "parameters": [layer_id],
            "get": {
                "summary": "The attributes of a layer",
                "operationId": "restLayerColumns",
                "responses": {
                    "200": json_response("Columns", list_schema("#/components/schemas/RestColumn")),
                    **error_responses(404),
                },
            },
        },
        f"{prefix}/layers/{{layer_id}}/features": {
            "parameters": [layer_id],
            "get": {
                "summary": "Features of a layer",
                "operationId": "restListFeatures",
                "parameters": [
                    *PAGING_PARAMETERS,
                    order,
                    *output,
                    query_parameter("bounds", "minx,miny,maxx,maxy in the output CRS"),
                    query_parameter(
                        "where", "Attribute filter in CQL2 text, e.g. pop_est > 1000 AND name LIKE 'A%'"
                    ),
                    query_parameter("noattrib", "Leave the attributes (data) out", {"type": "boolean"}),
                ],
                "responses": {
                    "200": json_response("Features", list_schema(feature_ref)),
                    **error_responses(400, 404),
                },
            },
            "post": {
                "summary": "Create a feature",
                "operationId": "restCreateFeature",
                "parameters": output,
                "requestBody": json_body_schema("#/components/schemas/RestFeatureInput", "The new feature"),
                "responses": {
                    "201": json_response("The stored feature", {"$ref": feature_ref}),
                    **error_responses(400, 404, 405, 409, 422),
                },
            },
        },
        f"{prefix}/layers/{{layer_id}}/features/{{feature_id}}": {
            "parameters": [layer_id, feature_id],
            "get": {
                "summary": "One feature",
                "operationId": "restGetFeature",
                "parameters": output,
                "responses": {
                    "200": json_response("The feature", {"$ref": feature_ref}),
                    **error_responses(400, 404),
                },
            },
            "put": {
                "summary": "Change a feature (only the members given)",
                "operationId": "restUpdateFeature",
                "parameters": output,
                "requestBody": json_body_schema("#/components/schemas/RestFeatureInput", "Members to change"),
                "responses": {
                    "200": json_response("The stored feature", {"$ref": feature_ref}),
                    **error_responses(400, 404, 405, 422),
                },
            },
            "delete": {
                "summary": "Delete a feature",
                "operationId": "restDeleteFeature",
                "responses": {"204": {"description": "Deleted"}, **error_responses(404, 405)},
            },
        },
    }
    nullable_number = {"type": "number", "nullable": True}
    schemas = {
        "RestErrorMessage": {
            "type": "object",
            "required": ["code", "msg"],
            "properties": {"code": {"type": "string"}, "msg": {"type": "string"}},
        },
        "RestLink": {
            "type": "object",
            "required": ["href", "rel"],
            "properties": {"href": {"type": "string"}, "rel": {"type": "string"}, "type": {"type": "string"}},
        },
        "RestColumn": {
            "type": "object",
            "required": ["name", "type", "not_null"],
            "properties": {
                "name": {"type": "string"},
                "type": {"type": "string", "enum": ["text", "number", "boolean", "date", "datetime", "json"]},
                "not_null": {"type": "boolean"},
                "native_type": {"type": "string"},
            },
        },
        "RestLayer": {
            "type": "object",
            "required": ["id", "name", "source", "collection", "created", "modified"],
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "title": {"type": "string", "nullable": True},
                "description": {"type": "string", "nullable": True},
                "type": {
                    "type": "string",
                    "nullable": True,
                    "enum": ["point", "line", "polygon", "mixed", None],
                },
                "geometry_type": {"type": "string", "nullable": True},
                "source": {
                    "type": "string",
                    "description": 'JSON text: {"type": "pg"|"gpkg", "src", "connection_id"}',
                },
                "collection": {"type": "string", "description": "the OGC API collection id"},
                "editable": {"type": "boolean"},
                "epsg": {"type": "integer", "nullable": True},
                "x_min": nullable_number,
                "y_min": nullable_number,
                "x_max": nullable_number,
                "y_max": nullable_number,
                "created": {"type": "integer", "description": "epoch seconds"},
                "modified": {"type": "integer", "description": "epoch seconds"},
                "styles": {"nullable": True},
                "visible": {"type": "boolean"},
                "owner": {
                    "type": "integer",
                    "nullable": True,
                    "description": "id of the user who created it",
                },
                "error": {"type": "string", "description": "why the layer is not published"},
                "columns": {"type": "array", "items": {"$ref": "#/components/schemas/RestColumn"}},
                "links": {"type": "array", "items": {"$ref": "#/components/schemas/RestLink"}},
            },
        },
        "RestLayerInput": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "source": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["type", "src"],
                            "properties": {
                                "type": {"type": "string", "enum": ["pg", "gpkg"]},
                                "src": {
                                    "type": "string",
                                    "description": "table (schema.table) or GeoPackage layer",
                                },
                                "connection_id": {
                                    "type": "string",
                                    "description": "a configured source name",
                                },
                            },
                        },
                        {"type": "string", "description": "the same object as JSON text"},
                    ]
                },
                "collection": {"type": "string", "description": "OGC collection id; default from the name"},
                "mid": {"type": "integer", "description": "add the new layer to this map"},
                "title": {"type": "string"},
                "description": {"type": "string"},
                "editable": {"type": "boolean", "default": True},
                "visible": {"type": "boolean", "default": True},
                "styles": {"description": "any JSON, kept for clients"},
            },
        },
        "RestFeature": {
            "type": "object",
            "required": ["__id"],
            "properties": {
                "__id": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
                "__owner": {"nullable": True},
                "__created": {"nullable": True},
                "__modified": {"nullable": True},
                "__xmin": nullable_number,
                "__ymin": nullable_number,
                "__xmax": nullable_number,
                "__ymax": nullable_number,
                "__geometry": {
                    "nullable": True,
                    "oneOf": [{"type": "string"}, {"type": "object"}],
                    "description": "WKT, KML or GML text, or a GeoJSON object (geometry=geojson)",
                },
                "data": {"type": "object", "additionalProperties": True},
            },
        },
        "RestFeatureInput": {
            "type": "object",
            "properties": {
                "data": {"type": "object", "additionalProperties": True},
                "geometry": {
                    "nullable": True,
                    "oneOf": [{"type": "string", "description": "WKT, KML or GML"}, {"type": "object"}],
                },
            },
        },
    }
    return {"paths": paths, "components": {"schemas": schemas}}
