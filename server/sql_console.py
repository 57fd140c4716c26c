"""``POST /api/portal/sql/execute``: the portal's SQL console, one read-only query at a time.

Body: ``{"query": "SELECT ..."}`` (or ``"sql"``), optionally ``"source"`` (a configured
PostGIS or GeoPackage source; default ``store.tables``, where uploads are loaded),
``"limit"`` (rows, at most ``MAX_ROWS``) and ``"timeout_ms"`` (at most ``TIMEOUT_MS``).
Answer: ``columns`` (name and type of each, geometry columns typed ``geometry``),
``rows`` (objects keyed by column name; geometries as GeoJSON in lon/lat),
``row_count``, ``truncated`` (more rows than ``limit``), ``limit`` and ``elapsed_ms``.
Column names a query repeats get ``_2``, ``_3`` ... so every value has its key.

Who: an admin's key, or a key with the ``sql`` scope; in community mode (no key
anywhere) this machine's clients only, as for every write. An admin's query reads
every published table of the source; a ``sql`` key's reads those anyone may read.
What the query may do is :mod:`providers.sql_console`'s business: one statement, no
writes, no escape from its role. Errors answer FastAPI's ``{"detail"}``.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request

from providers.errors import Forbidden, InvalidData, NotFound, Unauthorized, Unavailable
from providers.geopackage import GeoPackage, GeoPackageProvider
from providers.postgis import PostGISDatabase, PostGISProvider
from providers.sql_console import GeoPackageConsole, PostGISConsole, Result, json_value
from server import bodies
from server.auth import ANONYMOUS, Identity, current_auth, current_identity, is_loopback
from server.registry import Collection

blueprint = Blueprint("sql_console", __name__)

#: The scope that lets a key that is not an admin's run SQL.
SCOPE = "sql"
#: Rows answered when the body does not say, and the most a body may ask for.
LIMIT_DEFAULT = 1000
MAX_ROWS = 10_000
#: The longest a query may run (milliseconds), and the most a body may ask for.
TIMEOUT_MS = 10_000
#: The longest SQL text accepted (characters).
MAX_SQL = 100_000


def _settings() -> dict[str, Any]:
    """``sql.max_rows`` and ``sql.timeout_ms`` of the configuration when it has them."""
    found = current_app.config["GEOHARBOR"].get("sql") or {}
    return {"max_rows": found.get("max_rows", MAX_ROWS), "timeout_ms": found.get("timeout_ms", TIMEOUT_MS)}


def _require_sql(identity: Identity) -> str:
    """Refuse callers that may not run SQL; the tier of tables the caller's queries read."""
    auth = current_auth()
    if identity.admin:
        return "all"
    if auth.mode == "community":
        if is_loopback(request.remote_addr):
            return "all"  # everything is readable by anyone in community mode
        raise Forbidden("community mode: only this machine may run SQL queries")
    if SCOPE in identity.scopes:
        return "public"
    if identity.anonymous:
        raise Unauthorized("an API key with the sql scope (or an admin's) is needed to run SQL queries")
    raise Forbidden("this API key may not run SQL queries: it needs the sql scope (or an admin's key)")


def _number(body: dict[str, Any], name: str, default: int, most: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidData(f"{name} must be a positive integer")
    return min(value, most)


def _published(source: str, tier: str) -> list[Collection]:
    """The collections of ``source`` the tier reads: all, or those an anonymous caller may read."""
    auth = current_auth()
    colls = [c for c in auth.registry.collections.values() if c.source == source]
    if tier == "all":
        return colls
    return [c for c in colls if auth.allowed(ANONYMOUS, "read", auth.collection_rights(ANONYMOUS, c))]


@blueprint.route("/api/portal/sql/execute", methods=["POST"])
def execute() -> Response:
    tier = _require_sql(current_identity())
    body = bodies.json_body()
    if not isinstance(body, dict):
        raise InvalidData('the body must be a JSON object: {"query": "SELECT ..."}')
    text = body.get("query", body.get("sql"))
    if not isinstance(text, str) or not text.strip():
        raise InvalidData("query is required: the SQL text of one SELECT")
    if len(text) > MAX_SQL:
        raise InvalidData(f"query is longer than {MAX_SQL} characters")
    settings = _settings()
    limit = _number(body, "limit", min(LIMIT_DEFAULT, settings["max_rows"]), settings["max_rows"])
    timeout_ms = _number(body, "timeout_ms", settings["timeout_ms"], settings["timeout_ms"])
    config = current_app.config["GEOHARBOR"]
    name = body.get("source", config["store"].get("tables"))
    registry = current_app.extensions["geoharbor"].registry
    if not isinstance(name, str) or name not in registry.sources:
        raise NotFound(f"no source named {str(name)[:100]!r}")
    if name in registry.source_errors:
        raise Unavailable(f"source {name!r} is unavailable: {registry.source_errors[name]}")
    source = registry.sources[name]
    colls = _published(name, tier)
    result: Result
    if isinstance(source, PostGISDatabase):
        tables = frozenset(
            (c.provider.ref.schema, c.provider.ref.table)
            for c in colls
            if isinstance(c.provider, PostGISProvider)
        )
        result = PostGISConsole(source).run(text, tier, tables, timeout_ms, limit)
    elif isinstance(source, GeoPackage):
        layers = frozenset(c.provider.layer for c in colls if isinstance(c.provider, GeoPackageProvider))
        result = GeoPackageConsole(source.path).run(text, layers, timeout_ms, limit)
    else:
        raise InvalidData(f"source {name!r} is not a database: SQL runs on PostGIS and GeoPackage sources")
    return _answer(result, name, limit)


def _answer(result: Result, source: str, limit: int) -> Response:
    keys = _unique([c.name for c in result.columns])
    body = {
        "source": source,
        "columns": [{"name": k, "type": c.type} for k, c in zip(keys, result.columns, strict=True)],
        "rows": [dict(zip(keys, row, strict=True)) for row in result.rows],
        "row_count": len(result.rows),
        "truncated": result.truncated,
        "limit": limit,
        "elapsed_ms": round(result.elapsed_ms, 1),
    }
    return Response(orjson.dumps(body, default=json_value), mimetype="application/json")


def _unique(names: list[str]) -> list[str]:
    """Column names with repeats numbered (``count``, ``count_2``), so rows can be objects."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 2
        while candidate in seen:
            candidate, n = f"{name}_{n}", n + 1
        seen.add(candidate)
        out.append(candidate)
    return out


# -- OpenAPI ------------------------------------------------------------------------------------
_DETAIL = {"application/json": {"schema": {"$ref": "#/components/schemas/DatasetError"}}}


def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI path of the SQL console (``prefix`` is empty: it lives at the root)."""
    request_schema = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "One read-only query (SELECT, VALUES, TABLE, WITH)"},
            "sql": {"type": "string", "description": "The same, under the other name"},
            "source": {
                "type": "string",
                "description": "A PostGIS or GeoPackage source (default: store.tables)",
            },
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_ROWS, "default": LIMIT_DEFAULT},
            "timeout_ms": {"type": "integer", "minimum": 1, "maximum": TIMEOUT_MS, "default": TIMEOUT_MS},
        },
    }
    result_schema = {
        "type": "object",
        "required": ["columns", "rows", "row_count", "truncated"],
        "properties": {
            "source": {"type": "string"},
            "columns": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "type": {"type": "string"}},
                },
            },
            "rows": {
                "type": "array",
                "items": {"type": "object", "description": "Values by column; geometries as GeoJSON"},
            },
            "row_count": {"type": "integer"},
            "truncated": {"type": "boolean", "description": "More rows than limit"},
            "limit": {"type": "integer"},
            "elapsed_ms": {"type": "number"},
        },
    }
    texts = {
        400: "Not one read-only query, a syntax error, or past the timeout",
        401: "An API key is needed",
        403: "Not an admin's key nor one with the sql scope, or a table that is not published",
        404: "No such source",
        422: "No query in the body",
        503: "The database is unavailable",
    }
    return {
        "paths": {
            f"{prefix}/api/portal/sql/execute": {
                "post": {
                    "summary": "Run one read-only SQL query over the published tables of a source",
                    "operationId": "portalSqlExecute",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/SqlQuery"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Columns and rows",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/SqlResult"}}
                            },
                        },
                        **{str(s): {"description": t, "content": _DETAIL} for s, t in texts.items()},
                    },
                }
            }
        },
        "components": {"schemas": {"SqlQuery": request_schema, "SqlResult": result_schema}},
    }
