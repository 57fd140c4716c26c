"""REST CRUD tables and rows (``/tables``, ``/tables/{name}``, ``/tables/{name}/rows``).

Tables live in a configured source: ``connection_id`` names it, by default the one
``store.tables`` configures. Every table of the source's default schema (``public``)
or file is listed and readable (once keys exist: by admins; others see the tables
the API made that they may read); the REST API *changes* only the tables it created
itself, which it records in the store (kind ``table``): dropping, truncating or
writing rows of any other table of the database (``countries`` ...) is refused, and
those are written through their collections instead.

A table created with a geometry is published at once as an OGC collection (items and
tiles on every worker) by a layer record made with it; if publishing fails the table
is dropped again, so nothing is ever half-made. Rows are read and written through a
feature provider built over the table (:meth:`providers.tables.Tables.provider`): the
same query model and write path as OGC API and the REST layers, with WKT geometries in
the table's own CRS, x/y order.

A table the API made is a shareable resource (its record's id) owned by its
creator, as is the layer that publishes it; the access hook of :mod:`server.auth`
checks the table a URL names, and lists show only the tables the caller may read.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from flask import Response, current_app, request

from providers.base import FeatureProvider, Query
from providers.crs import CRS
from providers.errors import (
    InvalidData,
    InvalidQuery,
    NotFound,
    ReadOnly,
    Unavailable,
)
from providers.store import Record
from providers.tables import (
    COLUMN_TYPES,
    GEOMETRY_TYPES,
    TableInfo,
    Tables,
    TableSpec,
    parse_table_spec,
    tables_of,
)
from server.accounts import Accounts
from server.auth import current_auth, current_identity
from server.geometry_text import parse_geometry, to_geojson
from server.registry import Registry
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
from server.rest_layers import (
    PAGING_PARAMETERS,
    error_responses,
    json_body_schema,
    json_response,
    list_schema,
    path_parameter,
    query_parameter,
    remove_layer,
    xy_crs,
)

#: Store kind of the tables this API created (key ``<source>:<table>``).
TABLE_KIND = "table"
#: ``geometry`` values of the rows list.
ROW_GEOMETRY = ("wkt", "wkb", "false")


def registry() -> Registry:
    return current_app.extensions["geoharbor"].registry


# -- sources and the tables this API made ---------------------------------------------------------
def source_tables(name: str | None = None) -> tuple[str, Tables]:
    """The source named by ``connection_id`` (or ``name``), default ``store.tables``, and its tables."""
    reg = registry()
    source = (
        name or request.args.get("connection_id") or current_app.config["GEOHARBOR"]["store"].get("tables")
    )
    if not source:
        raise InvalidQuery("no connection_id given and no store.tables source configured")
    if not isinstance(source, str) or source not in reg.sources:
        raise InvalidQuery(f"connection_id {str(source)[:100]!r} names no source")
    if source in reg.source_errors:
        raise Unavailable(f"source {source!r} is unavailable: {reg.source_errors[source]}")
    return source, tables_of(reg.sources[source], source)


def _key(source: str, name: str) -> str:
    return f"{source}:{name}"


def created_record(source: str, name: str) -> Record | None:
    """The store record of a table this API created, if it did."""
    return registry().store.find(TABLE_KIND, _key(source, name))


def created_records() -> dict[str | None, Record]:
    """Every table this API created, by key (``<source>:<table>``)."""
    return {r.key: r for r in registry().store.list(TABLE_KIND)}


def table_layers(source: str, tables: Tables, name: str) -> list[Record]:
    """The layer records that publish table ``name`` of ``source``, oldest first."""
    return [
        r
        for r in registry().store.list("layer")
        if r.body.get("source") == source and tables.is_layer_of(r.body, name)
    ]


def _collection_id(name: str, source: str) -> str:
    """The table's own name as collection id, or ``<name>_<source>`` when another collection has it."""
    taken = registry().collections
    return name if name not in taken else f"{name}_{source}"


def create_table(
    source: str, tables: Tables, spec: TableSpec, layer: dict[str, Any] | None = None
) -> tuple[TableInfo, Record | None]:
    """Create a table, record it, and publish it as a layer when it has a geometry.

    ``layer`` adds members (title, styles ...) to the layer record. All or nothing:
    whatever fails after the table exists (the store, publishing) drops it again.
    """
    reg = registry()
    stale = created_record(source, spec.name)
    if stale is not None and spec.name not in tables.names():
        reg.store.delete(TABLE_KIND, stale.id)  # the table was dropped behind our back
    # The caller owns the table and its layer (None in community mode: public, as before keys).
    owned = {"owner": owner} if (owner := current_identity().user_id) is not None else {}
    info = tables.create(spec)
    record = published = None
    try:
        record = reg.store.insert(
            TABLE_KIND,
            {"source": source, "name": info.name, "geometry": spec.geometry, "srid": spec.srid, **owned},
            key=_key(source, info.name),
        )
        if spec.geometry:
            body = {
                "name": info.name,
                "title": info.name,
                "editable": True,
                "visible": True,
                **(layer or {}),
                "collection": _collection_id(info.name, source),
                "source": source,
                **tables.layer_options(info.name),
                **owned,
            }
            published = reg.create_layer(body)
    except BaseException:
        if published is not None:
            reg.delete_layer(published.id)
        if record is not None:
            reg.store.delete(TABLE_KIND, record.id)
        tables.drop(info.name)
        raise
    return info, published


def drop_table(source: str, tables: Tables, name: str) -> None:
    """Unpublish the table's layers, drop it and forget it; only for tables this API created."""
    info = tables.describe(name)
    record = created_record(source, info.name)
    if record is None:
        raise ReadOnly(f"table {info.name!r} was not created through this API: it cannot be dropped here")
    reg = registry()
    for layer in table_layers(source, tables, info.name):
        remove_layer(layer.id)
    tables.drop(info.name)
    reg.store.delete(TABLE_KIND, record.id)
    Accounts(reg.store).forget_resource(record.id)


def table_document(
    source: str, tables: Tables, info: TableInfo, layers: list[Record], created: dict[str | None, Record]
) -> dict[str, Any]:
    """The reference's table representation, plus where it lives and what publishes it.

    ``layers`` are layer records of the source, ``created`` the table records by key
    (:func:`created_records`): read once for a whole list, not once per table.
    """
    doc = info.document()
    mine = [r for r in layers if tables.is_layer_of(r.body, info.name)]
    record = created.get(_key(source, info.name))
    doc["connection_id"] = source
    doc["editable"] = record is not None
    doc["resource_id"] = record.id if record is not None else None
    doc["owner"] = record.body.get("owner") if record is not None else None
    doc["layer_id"] = mine[0].id if mine else None
    doc["collection"] = mine[0].key if mine else None
    doc["links"] = [
        {"rel": "self", "type": "application/json", "href": _table_url(source, info.name)},
        {"rel": "rows", "type": "application/json", "href": _table_url(source, info.name, "/rows")},
    ]
    return doc


def _table_url(source: str, name: str, tail: str = "") -> str:
    url = rest_url(f"/tables/{name}{tail}")
    if source != current_app.config["GEOHARBOR"]["store"].get("tables"):
        url += f"?connection_id={source}"
    return url


# -- tables -------------------------------------------------------------------------------------
@blueprint.route("/tables", methods=["GET"])
def list_tables() -> Response:
    source, tables = source_tables()
    spatial_only, plain_only = flag("only_spatial"), flag("only_non_spatial")
    if spatial_only and plain_only:
        raise InvalidQuery("only_spatial and only_non_spatial exclude each other")
    names = tables.names(True if spatial_only else False if plain_only else None)
    if order_by(["name"], [("name", True)]) == [("name", False)]:
        names.reverse()
    created = created_records()
    auth, identity = current_auth(), current_identity()
    names = [
        n
        for n in names
        if auth.allowed(identity, "read", auth.table_rights(identity, created.get(_key(source, n))))
    ]
    page = paging()
    selected = names[page.offset : page.offset + page.perpage]
    count = "count" in expand()
    layers = [r for r in registry().store.list("layer") if r.body.get("source") == source]
    data = [
        table_document(source, tables, tables.describe(name, count), layers, created) for name in selected
    ]
    return envelope("tables", data, len(names) if wants_total() else None, page.page)


@blueprint.route("/tables", methods=["POST"])
def create_table_route() -> Response:
    body = json_body()
    wanted = body.get("connection_id")
    if wanted is not None and not isinstance(wanted, str):
        raise InvalidQuery("connection_id must be a source name")
    source, tables = source_tables(wanted)
    spec = parse_table_spec(body)
    extra = {}
    for member in ("title", "description"):
        value = body.get(member)
        if value is not None:
            if not isinstance(value, str) or len(value) > 1000:
                raise InvalidData(f"{member} must be a string of at most 1000 characters")
            extra[member] = value
    info, layer = create_table(source, tables, spec, extra)
    doc = table_document(source, tables, info, [layer] if layer else [], created_records())
    return document(doc, 201, {"Location": _table_url(source, info.name)})


@blueprint.route("/tables/<name>", methods=["GET"])
def get_table(name: str) -> Response:
    source, tables = source_tables()
    info = tables.describe(name, "count" in expand())
    layers = table_layers(source, tables, info.name)
    return document(table_document(source, tables, info, layers, created_records()))


@blueprint.route("/tables/<name>", methods=["DELETE"])
def delete_table(name: str) -> Response:
    source, tables = source_tables()
    drop_table(source, tables, name)
    return no_content()


# -- rows ---------------------------------------------------------------------------------------
def _rows_provider(source: str, tables: Tables, name: str, write: bool) -> FeatureProvider:
    """A provider over the table; writable only when this API created the table."""
    info = tables.describe(name)
    editable = created_record(source, info.name) is not None
    if write and not editable:
        raise ReadOnly(f"table {info.name!r} was not created through this API: its rows are read-only here")
    return tables.provider(info.name, editable)


def _native_crs(provider: FeatureProvider) -> CRS:
    """The table's own CRS with x/y axes: rows are raw table content, not reprojected."""
    return xy_crs(provider.schema.storage_crs.srid)


def _value(value: Any) -> Any:
    """A column value as JSON can carry it (orjson does dates, times and UUIDs itself)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    return value


def _row(header: list[str], row: tuple, geometry_column: str | None, wkb: bool) -> dict[str, Any]:
    out = {}
    for name, value in zip(header, row, strict=True):
        if name == geometry_column and wkb and value is not None:
            out[name] = bytes(value).hex()
        else:
            out[name] = _value(value)
    return out


def _one_row(provider: FeatureProvider, rid: Any, crs: CRS) -> dict[str, Any]:
    schema = provider.schema
    query = Query(limit=1, equals={schema.id_field: rid}, crs=crs, count="none")
    try:
        header, rows = provider.records(query, geometry="wkt")
        found = next(iter(rows), None)
    except InvalidQuery:
        found = None  # an id that cannot be one of this key's type
    if found is None:
        raise NotFound(f"row {str(rid)[:100]!r} not found")
    return _row(header, found, schema.geometry_field, False)


def _feature(body: dict[str, Any], provider: FeatureProvider, crs: CRS, create: bool) -> dict[str, Any]:
    """A row body ``{"data": {...}, "geometry": WKT | GeoJSON | null}`` as a GeoJSON feature."""
    data = body.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidData("data must be an object of column -> value")
    feature: dict[str, Any] = {"type": "Feature", "properties": data}
    if "geometry" in body:
        raw = body["geometry"]
        if raw is not None:
            if provider.schema.geometry_field is None:
                raise InvalidData("this table has no geometry column")
            feature["geometry"] = to_geojson(parse_geometry(raw, crs.srid))
        else:
            feature["geometry"] = None
    elif create:
        feature["geometry"] = None
    return feature


@blueprint.route("/tables/<name>/rows", methods=["GET"])
def list_rows(name: str) -> Response:
    source, tables = source_tables()
    provider = _rows_provider(source, tables, name, write=False)
    schema = provider.schema
    geometry = request.args.get("geometry", "wkt").lower()
    if geometry not in ROW_GEOMETRY:
        raise InvalidQuery(f"geometry must be one of {', '.join(ROW_GEOMETRY)}")
    fields = None
    raw_fields = request.args.get("fields")
    if raw_fields:
        fields = [
            f.strip() for f in raw_fields.split(",") if f.strip() and f.strip() != schema.geometry_field
        ]
    page = paging()
    crs = _native_crs(provider)
    query = Query(
        limit=page.perpage,
        offset=page.offset,
        properties=fields,
        skip_geometry=geometry == "false",
        crs=crs,
        sortby=order_by([schema.id_field, *schema.fields]),
        count="none",
    )
    header, rows = provider.records(query, geometry="none" if geometry == "false" else geometry)  # type: ignore[arg-type]
    data = [_row(header, row, schema.geometry_field, geometry == "wkb") for row in rows]
    total = None
    if wants_total():
        matched = provider.query(Query(limit=0, count="exact")).matched
        total = matched.value if matched is not None else None
    return envelope("rows", data, total, page.page)


@blueprint.route("/tables/<name>/rows", methods=["POST"])
def create_row(name: str) -> Response:
    source, tables = source_tables()
    provider = _rows_provider(source, tables, name, write=True)
    crs = _native_crs(provider)
    (stored,) = provider.create([_feature(json_body(), provider, crs, create=True)], crs)
    row = _one_row(provider, stored.id, crs)
    location = _table_url(source, name, f"/rows/{stored.id}")
    return document(row, 201, {"Location": location})


@blueprint.route("/tables/<name>/rows", methods=["DELETE"])
def truncate_rows(name: str) -> Response:
    source, tables = source_tables()
    info = tables.describe(name)
    if created_record(source, info.name) is None:
        raise ReadOnly(f"table {info.name!r} was not created through this API: it cannot be emptied here")
    tables.truncate(info.name)
    return no_content()


@blueprint.route("/tables/<name>/rows/<rid>", methods=["GET"])
def get_row(name: str, rid: str) -> Response:
    source, tables = source_tables()
    provider = _rows_provider(source, tables, name, write=False)
    return document(_one_row(provider, rid, _native_crs(provider)))


@blueprint.route("/tables/<name>/rows/<rid>", methods=["PUT", "PATCH"])
def update_row(name: str, rid: str) -> Response:
    source, tables = source_tables()
    provider = _rows_provider(source, tables, name, write=True)
    crs = _native_crs(provider)
    provider.update(rid, _feature(json_body(), provider, crs, create=False), crs)
    return no_content()


@blueprint.route("/tables/<name>/rows/<rid>", methods=["DELETE"])
def delete_row(name: str, rid: str) -> Response:
    source, tables = source_tables()
    provider = _rows_provider(source, tables, name, write=True)
    provider.delete(rid)
    return no_content()


# -- OpenAPI ------------------------------------------------------------------------------------
def errors(*statuses: int) -> dict[str, Any]:
    """REST error responses (``{"code", "msg"}``) of a tables or rows operation."""
    return error_responses(
        *statuses,
        texts={
            400: "Malformed parameter or name",
            405: "The table was not created through this API and is read-only here",
            409: "The name is taken",
            413: "Too many features",
        },
    )


CONNECTION_PARAMETER = query_parameter(
    "connection_id", "The source (a configured source name); default: store.tables"
)
ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "msg"],
    "properties": {"code": {"type": "string"}, "msg": {"type": "string"}},
}


def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths (under ``prefix``) and component schemas of the table and row routes."""
    table_name = path_parameter("name", "Table name", "string")
    row_id = path_parameter("row_id", "Row id (the table's primary key)", "string")
    table_ref = {"$ref": "#/components/schemas/RestTable"}
    row_ref = "#/components/schemas/RestTableRow"
    paths = {
        f"{prefix}/tables": {
            "get": {
                "summary": "List the tables of a source",
                "operationId": "restListTables",
                "parameters": [
                    CONNECTION_PARAMETER,
                    *PAGING_PARAMETERS,
                    query_parameter("only_spatial", "Only tables with a geometry", {"type": "boolean"}),
                    query_parameter("only_non_spatial", "Only tables without geometry", {"type": "boolean"}),
                    query_parameter("expand", "count: add num_rows"),
                    query_parameter("order_by", "name[:asc|desc]"),
                ],
                "responses": {
                    "200": json_response("Tables", list_schema("#/components/schemas/RestTable")),
                    **errors(400, 503),
                },
            },
            "post": {
                "summary": "Create a table from a column spec; with a geometry it is published as a layer",
                "operationId": "restCreateTable",
                "parameters": [CONNECTION_PARAMETER],
                "requestBody": json_body_schema("#/components/schemas/RestTableInput", "The table"),
                "responses": {"201": json_response("The table", table_ref), **errors(400, 409, 422, 503)},
            },
        },
        f"{prefix}/tables/{{name}}": {
            "parameters": [table_name, CONNECTION_PARAMETER],
            "get": {
                "summary": "One table: columns, geometry, SRID, primary key",
                "operationId": "restGetTable",
                "parameters": [query_parameter("expand", "count: add num_rows")],
                "responses": {"200": json_response("The table", table_ref), **errors(400, 404)},
            },
            "delete": {
                "summary": "Drop a table created through this API (and unpublish its layers)",
                "operationId": "restDeleteTable",
                "responses": {"204": {"description": "Dropped"}, **errors(404, 405)},
            },
        },
        f"{prefix}/tables/{{name}}/rows": {
            "parameters": [table_name, CONNECTION_PARAMETER],
            "get": {
                "summary": "The rows of a table, geometry in the table's CRS",
                "operationId": "restListRows",
                "parameters": [
                    *PAGING_PARAMETERS,
                    query_parameter(
                        "geometry",
                        "Geometry format (wkb as hex), or false for none",
                        {"type": "string", "enum": list(ROW_GEOMETRY), "default": "wkt"},
                    ),
                    query_parameter("fields", "Columns to return, comma separated"),
                    query_parameter("order_by", "column[:asc|desc][,column...]"),
                ],
                "responses": {"200": json_response("Rows", list_schema(row_ref)), **errors(400, 404)},
            },
            "post": {
                "summary": "Add a row",
                "operationId": "restCreateRow",
                "requestBody": json_body_schema("#/components/schemas/RestTableRowInput", "The row"),
                "responses": {
                    "201": json_response("The stored row", {"$ref": row_ref}),
                    **errors(400, 404, 405, 409, 422),
                },
            },
            "delete": {
                "summary": "Delete every row (the table stays)",
                "operationId": "restTruncateTable",
                "responses": {"204": {"description": "Emptied"}, **errors(404, 405)},
            },
        },
        f"{prefix}/tables/{{name}}/rows/{{row_id}}": {
            "parameters": [table_name, row_id, CONNECTION_PARAMETER],
            "get": {
                "summary": "One row",
                "operationId": "restGetRow",
                "responses": {"200": json_response("The row", {"$ref": row_ref}), **errors(404)},
            },
            "put": {
                "summary": "Change a row: only the columns (and geometry) given",
                "operationId": "restUpdateRow",
                "requestBody": json_body_schema(
                    "#/components/schemas/RestTableRowInput", "Columns to change"
                ),
                "responses": {"204": {"description": "Updated"}, **errors(400, 404, 405, 409, 422)},
            },
            "delete": {
                "summary": "Delete a row",
                "operationId": "restDeleteRow",
                "responses": {"204": {"description": "Deleted"}, **errors(404, 405)},
            },
        },
    }
    column = {
        "type": "object",
        "required": ["type", "not_null"],
        "properties": {"type": {"type": "string"}, "not_null": {"type": "boolean"}},
    }
    schemas = {
        "RestErrorMessage": ERROR_SCHEMA,
        "RestTable": {
            "type": "object",
            "required": ["name", "geometry", "srid", "columns", "primary_key", "schema", "is_view"],
            "properties": {
                "name": {"type": "string"},
                "geometry": {"type": "string", "nullable": True},
                "srid": {"type": "integer", "nullable": True},
                "columns": {"type": "object", "additionalProperties": column},
                "primary_key": {"type": "string", "nullable": True},
                "schema": {"type": "string"},
                "is_view": {"type": "boolean"},
                "num_rows": {"type": "integer", "description": "with expand=count"},
                "connection_id": {"type": "string"},
                "editable": {"type": "boolean", "description": "created through this API: rows writable"},
                "resource_id": {
                    "type": "integer",
                    "nullable": True,
                    "description": "the table's record, to share it (resources/{id}/permissions)",
                },
                "owner": {
                    "type": "integer",
                    "nullable": True,
                    "description": "id of the user who created it",
                },
                "layer_id": {"type": "integer", "nullable": True},
                "collection": {"type": "string", "nullable": True},
                "links": {"type": "array", "items": {"type": "object"}},
            },
        },
        "RestTableInput": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z_][a-z0-9_]{0,62}$"},
                "geometry": {"type": "string", "nullable": True, "enum": [*GEOMETRY_TYPES, None]},
                "srid": {"type": "integer", "default": 4326},
                "columns": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {"type": "string", "enum": list(COLUMN_TYPES)},
                            "not_null": {"type": "boolean", "default": False},
                        },
                    },
                },
                "title": {"type": "string"},
                "description": {"type": "string"},
                "connection_id": {"type": "string"},
            },
        },
        "RestTableRow": {
            "type": "object",
            "description": "Column -> value; the geometry column as WKT (or hex WKB)",
            "additionalProperties": True,
        },
        "RestTableRowInput": {
            "type": "object",
            "properties": {
                "data": {"type": "object", "additionalProperties": True},
                "geometry": {
                    "description": "WKT (or a GeoJSON geometry) in the table's CRS, x/y order",
                    "nullable": True,
                    "oneOf": [{"type": "string"}, {"type": "object"}],
                },
            },
        },
    }
    return {"paths": paths, "components": {"schemas": schemas}}
