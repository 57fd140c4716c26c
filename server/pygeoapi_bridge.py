"""pygeoapi as geoharbor's core: its configuration, OpenAPI document and API objects.

pygeoapi reads its configuration at import time (``pygeoapi.flask_app``) and builds
absolute links from one configured URL. geoharbor instead generates pygeoapi's
configuration from its own, here and only here, and keeps one pygeoapi ``API``
object per public base URL so links follow the address the client used (or the
configured public URL). The pygeoapi API functions then answer the landing page,
conformance, collections, queryables and OpenAPI routes.

pygeoapi has no authorization: an ``API`` object lists every collection of its
configuration. So each one is built over a *set of collections* as well (those a
caller may read, :func:`server.auth.visible_collection_ids`), and a caller is only
ever answered by one that holds no collection hidden from it.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import yaml

from providers import pygeoapi_plugin, records
from server import __version__
from server.registry import Collection, Registry

LOGGER = logging.getLogger(__name__)

PLUGIN = "providers.pygeoapi_plugin.GeoharborProvider"
TEMPLATES = Path(__file__).resolve().parent / "templates" / "pygeoapi"

#: Conformance classes geoharbor implements beyond what pygeoapi lists for features.
EXTRA_CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/advanced-comparison-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/case-insensitive-comparison",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions-plus",
    "http://www.opengis.net/spec/cql2/1.0/conf/spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/temporal-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/arithmetic",
    "http://www.opengis.net/spec/cql2/1.0/conf/property-property",
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/update",
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/features",
    "http://www.opengis.net/spec/ogcapi-features-5/1.0/conf/queryables",
    # The capabilities as processes (server/processes.py).
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/json",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/job-list",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/dismiss",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tileset",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tilesets-list",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/geodata-tilesets",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/mvt",
    "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixset",
]

FILTER_LANGS = ["cql2-text", "cql2-json", "cql-text"]


def shown(registry: Registry, only: AbstractSet[str] | None = None) -> list[Collection]:
    """The registry's collections, or those of them whose ids are in ``only``."""
    colls = list(registry.collections.values())
    return colls if only is None else [c for c in colls if c.id in only]


def pygeoapi_config(
    config: dict[str, Any], registry: Registry, base_url: str, only: AbstractSet[str] | None = None
) -> dict[str, Any]:
    """pygeoapi's configuration for our collections (those in ``only``), with links under ``base_url``."""
    server = config["server"]
    resources: dict[str, Any] = {}
    for coll in shown(registry, only):
        schema = coll.provider.schema
        extents: dict[str, Any] = {
            "spatial": {
                "bbox": list(schema.bbox or (-180.0, -90.0, 180.0, 90.0)),
                "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
            }
        }
        if schema.temporal and any(schema.temporal):
            begin, end = schema.temporal
            extents["temporal"] = {
                "begin": begin.isoformat() if begin else None,
                "end": end.isoformat() if end else None,
            }
        resources[coll.id] = {
            "type": "collection",
            "title": coll.title,
            "description": coll.description,
            "keywords": coll.keywords or [coll.source_type],
            "links": [
                {
                    "type": "application/json",
                    "rel": "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector",
                    "title": "Vector tiles",
                    "href": f"{base_url}/collections/{coll.id}/tiles",
                },
                {
                    "type": "text/html",
                    "rel": "preview",
                    "title": "Map of the vector tiles",
                    "href": f"{base_url}/collections/{coll.id}/map",
                },
            ],
            "extents": extents,
            "providers": [
                {
                    "type": "feature",
                    "name": PLUGIN,
                    "data": coll.id,
                    "id_field": schema.id_field,
                    "time_field": schema.time_field,
                    "editable": coll.editable,
                    "crs": coll.crs,
                    "storage_crs": coll.storage_crs,
                }
            ],
        }
    # The catalogue as OGC API - Records (served by server/records.py through pygeoapi).
    resources.setdefault(records.COLLECTION_ID, records.pygeoapi_resource(server["title"]))
    return {
        "server": {
            "bind": {"host": "127.0.0.1", "port": 5000},
            "url": base_url,
            "mimetype": "application/json; charset=UTF-8",
            "encoding": "utf-8",
            "language": "en-US",
            "cors": False,  # geoharbor sets CORS headers itself, on every route
            # Our templates first (a landing page with the map); pygeoapi's for the rest.
            "templates": {"path": str(TEMPLATES)},
            "pretty_print": False,
            "limits": {
                "default_items": server["limit_default"],
                "max_items": server["limit_max"],
                "on_exceed": "throttle",
            },
            "map": {
                "url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
                "attribution": "&copy; OpenStreetMap contributors",
            },
        },
        "logging": {"level": server["log_level"]},
        "metadata": {
            "identification": {
                "title": server["title"],
                "description": server["description"],
                "keywords": ["geospatial", "ogcapi", "features"],
                "keywords_type": "theme",
                "terms_of_service": "",
                "url": base_url,
            },
            "license": {"name": "CC-BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
            "provider": {"name": "geoharbor", "url": base_url},
            "contact": {"name": server["title"], "url": base_url, "role": "pointOfContact"},
        },
        "resources": resources,
    }


def _patch_openapi(doc: dict[str, Any], colls: list[Collection]) -> dict[str, Any]:
    """Describe what geoharbor's own feature routes add to pygeoapi's document.

    GDAL pushes ``-where`` to the server only when ``filter-lang`` lists ``cql-text``
    and property filters only when the property is a documented query parameter.
    """
    params = doc.setdefault("components", {}).setdefault("parameters", {})
    params["filter-lang"] = {
        "name": "filter-lang",
        "in": "query",
        "description": "The language of `filter` (cql-text is accepted as cql2-text)",
        "required": False,
        "schema": {"type": "string", "enum": FILTER_LANGS, "default": "cql2-text"},
        "style": "form",
        "explode": False,
    }
    extra = {
        "filter": {"type": "string"},
        "filter-crs": {"type": "string", "format": "uri"},
        "crs": {"type": "string", "format": "uri"},
        "bbox-crs": {"type": "string", "format": "uri"},
        "sortby": {"type": "string"},
        "properties": {"type": "string"},
        "skipGeometry": {"type": "boolean"},
    }
    for name, schema in extra.items():
        params.setdefault(
            name,
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": schema,
                "style": "form",
                "explode": False,
            },
        )
    fparam = params.get("f")
    if fparam and "enum" in fparam.get("schema", {}):
        for fmt in ("geojson", "jsonl", "geojsonseq", "csv"):
            if fmt not in fparam["schema"]["enum"]:
                fparam["schema"]["enum"].append(fmt)
    paths = doc.get("paths", {})
    for operations in paths.values():
        for operation in operations.values():
            responses = operation.get("responses") if isinstance(operation, dict) else None
            for code, response in (responses or {}).items():
                if isinstance(response, dict) and "$ref" not in response and "description" not in response:
                    response["description"] = "Success" if str(code).startswith("2") else "Failure"
    _add_tile_paths(doc, colls)
    for coll in colls:
        items = paths.get(f"/collections/{coll.id}/items")
        if items and "get" in items:
            plist = items["get"].setdefault("parameters", [])
            refs = {p.get("$ref") for p in plist if isinstance(p, dict)}
            names = {p.get("name") for p in plist if isinstance(p, dict)}
            for name in (
                "filter",
                "filter-lang",
                "filter-crs",
                "crs",
                "bbox-crs",
                "sortby",
                "properties",
                "skipGeometry",
            ):
                ref = f"#/components/parameters/{name}"
                if ref not in refs and name not in names:
                    plist.append({"$ref": ref})
            for name, field in coll.provider.schema.fields.items():
                if name not in names and f"#/components/parameters/{name}" not in refs:
                    plist.append(
                        {
                            "name": name,
                            "in": "query",
                            "required": False,
                            "schema": field.json_schema(),
                            "style": "form",
                            "explode": False,
                        }
                    )
        item = paths.get(f"/collections/{coll.id}/items/{{featureId}}")
        if item and coll.editable and "put" in item and "patch" not in item:
            patch = copy.deepcopy(item["put"])
            patch["summary"] = f"Update (part of) a {coll.title} feature"
            patch["operationId"] = f"update{coll.id}Features"
            body = patch.get("requestBody", {}).get("content", {})
            if body:
                schema = next(iter(body.values()))
                patch["requestBody"]["content"] = {
                    "application/merge-patch+json": schema,
                    "application/geo+json": schema,
                }
            item["patch"] = patch
    return doc


def _tile_path_parameters(*names: str) -> list[dict[str, Any]]:
    described = {
        "tileMatrixSetId": {"type": "string", "enum": ["WebMercatorQuad", "WorldCRS84Quad"]},
        "tileMatrix": {"type": "integer", "minimum": 0},
        "tileRow": {"type": "integer", "minimum": 0},
        "tileCol": {"type": "integer", "minimum": 0},
    }
    return [{"name": n, "in": "path", "required": True, "schema": described[n]} for n in names]


def _json_get(summary: str, tag: str, parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "tags": [tag],
            "parameters": parameters or [],
            "responses": {
                "200": {
                    "description": summary,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "404": {"$ref": "#/components/responses/NotFound"},
            },
        }
    }


def _add_tile_paths(doc: dict[str, Any], colls: list[Collection]) -> None:
    """OGC API - Tiles routes (served by geoharbor, not pygeoapi) in the document."""
    paths = doc.setdefault("paths", {})
    tms = _tile_path_parameters("tileMatrixSetId")
    zyx = _tile_path_parameters("tileMatrixSetId", "tileMatrix", "tileRow", "tileCol")
    mvt = {
        "200": {
            "description": "A Mapbox Vector Tile",
            "content": {
                "application/vnd.mapbox-vector-tile": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        "204": {"description": "No feature in this tile"},
        "304": {"description": "Not modified since the ETag sent in If-None-Match"},
        "404": {"$ref": "#/components/responses/NotFound"},
    }
    paths["/tileMatrixSets"] = _json_get("The tile matrix sets", "tiles")
    paths["/tileMatrixSets/{tileMatrixSetId}"] = _json_get("A tile matrix set", "tiles", tms)
    composite = [
        {
            "name": "collections",
            "in": "query",
            "required": True,
            "schema": {"type": "string"},
            "description": "Comma-separated collection ids, one MVT layer each",
        }
    ]
    paths["/tiles/{tileMatrixSetId}/{tileMatrix}/{tileRow}/{tileCol}"] = {
        "get": {
            "summary": "A vector tile of several collections",
            "tags": ["tiles"],
            "parameters": zyx + composite,
            "responses": mvt,
        }
    }
    for coll in colls:
        base = f"/collections/{coll.id}/tiles"
        paths[base] = _json_get(f"Tilesets of {coll.title}", coll.id)
        paths[base + "/{tileMatrixSetId}"] = _json_get(f"Tileset of {coll.title}", coll.id, tms)
        paths[base + "/{tileMatrixSetId}/tilejson.json"] = _json_get(
            f"TileJSON of {coll.title}", coll.id, tms
        )
        query = [{"$ref": f"#/components/parameters/{n}"} for n in ("filter", "filter-lang", "filter-crs")]
        query.append({"name": "properties", "in": "query", "required": False, "schema": {"type": "string"}})
        paths[base + "/{tileMatrixSetId}/{tileMatrix}/{tileRow}/{tileCol}"] = {
            "get": {
                "summary": f"A vector tile of {coll.title}",
                "tags": [coll.id],
                "parameters": zyx + query,
                "responses": mvt,
            }
        }


_LINK = {
    "type": "object",
    "required": ["href"],
    "properties": {k: {"type": "string"} for k in ("href", "rel", "type", "title", "hreflang")},
}
_EXCEPTION = {
    "type": "object",
    "required": ["code"],
    "properties": {"code": {"type": "string"}, "type": {"type": "string"}, "description": {"type": "string"}},
}
_GEOMETRY = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string"},
        "coordinates": {"type": "array"},
        "geometries": {"type": "array"},
    },
}


def _json_response(description: str, schema: dict[str, Any], media: str = "application/json") -> dict:
    return {"description": description, "content": {media: {"schema": schema}}}


#: Local stand-ins for the remote documents pygeoapi refers to: a validator (or a
#: client) must not need the network to read our OpenAPI document.
_LOCAL: dict[str, tuple[str, str, Any]] = {
    "exception.yaml": ("schemas", "exception", _EXCEPTION),
    "#/components/schemas/link": ("schemas", "link", _LINK),
    "Geometry.json": ("schemas", "geometryGeoJSON", _GEOMETRY),
    "cql2.json": ("schemas", "cql2expression", {"type": "object", "description": "A CQL2 JSON expression"}),
    "#/components/responses/LandingPage": (
        "responses",
        "LandingPage",
        _json_response(
            "The landing page", {"type": "object", "properties": {"links": {"type": "array", "items": _LINK}}}
        ),
    ),
    "#/components/responses/Collection": (
        "responses",
        "Collection",
        _json_response("A collection", {"type": "object", "required": ["id", "links"]}),
    ),
    "#/components/responses/Features": (
        "responses",
        "Features",
        _json_response(
            "A page of features", {"type": "object", "required": ["type", "features"]}, "application/geo+json"
        ),
    ),
    "#/components/responses/InvalidParameter": (
        "responses",
        "InvalidParameter",
        _json_response("A query parameter is malformed", _EXCEPTION),
    ),
    "#/components/responses/NotFound": (
        "responses",
        "NotFound",
        _json_response("The collection or feature does not exist", _EXCEPTION),
    ),
    "#/components/responses/ServerError": (
        "responses",
        "ServerError",
        _json_response("A server error", _EXCEPTION),
    ),
    "#/components/parameters/featureId": (
        "parameters",
        "featureId",
        {
            "name": "featureId",
            "in": "path",
            "required": True,
            "description": "The id of a feature",
            "schema": {"type": "string"},
        },
    ),
}


def _localise_refs(doc: dict[str, Any]) -> None:
    """Replace every remote ``$ref`` by a component of the document itself (and drop ``$schema``)."""
    added: dict[str, dict[str, Any]] = {}

    def local(ref: str) -> str | None:
        for suffix, (kind, name, definition) in _LOCAL.items():
            if ref.endswith(suffix):
                added.setdefault(kind, {})[name] = definition
                return f"#/components/{kind}/{name}"
        return None

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("http"):
                target = local(ref)
                if target is None:
                    return None  # e.g. the Records sortby parameter, replaced by our own
                return {"$ref": target}
            # OpenAPI 3.0 schema objects may not carry JSON Schema's "$schema".
            pairs = ((k, walk(v)) for k, v in node.items() if k != "$schema")
            return {k: v for k, v in pairs if v is not None}
        if isinstance(node, list):
            return [v for v in (walk(v) for v in node) if v is not None]
        return node

    doc.update(walk(doc))
    for kind, definitions in added.items():
        doc.setdefault("components", {}).setdefault(kind, {}).update(definitions)


class PygeoapiCore:
    """pygeoapi ``API`` objects, one per public base URL and set of collections, and the OpenAPI document."""

    #: API objects kept (least recently used dropped): few base URLs times few distinct
    #: sets of readable collections (most callers see all, or all public, collections).
    MAX_APIS = 32

    def __init__(self, config: dict[str, Any], registry: Registry) -> None:
        self.config = config
        self.registry = registry
        _register_conformance()
        self._apis: OrderedDict[tuple[str, frozenset[str] | None], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._version = -1
        self._env_dir: str | None = None
        self.refresh()

    def refresh(self) -> None:
        """Follow the registry: rebuild pygeoapi's view of the collections when they changed."""
        if self._version == self.registry.version:
            return
        with self._lock:
            pygeoapi_plugin.ACTIVE.clear()
            pygeoapi_plugin.ACTIVE.update({c.id: c.provider for c in self.registry.collections.values()})
            self._apis.clear()
            self._version = self.registry.version
        self._write_env_files()

    def _write_env_files(self) -> None:
        """Point pygeoapi's environment at a generated config, for code that reads it."""
        if self._env_dir is None:
            self._env_dir = tempfile.mkdtemp(prefix="geoharbor-pygeoapi-")
        directory = self._env_dir
        path = os.path.join(directory, "pygeoapi-config.yml")
        base = self.config["server"]["url"] or "http://localhost:5000"
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(pygeoapi_config(self.config, self.registry, base), fh, sort_keys=False)
        os.environ["PYGEOAPI_CONFIG"] = path
        os.environ["PYGEOAPI_OPENAPI"] = os.path.join(directory, "pygeoapi-openapi.yml")

    def openapi(self, base_url: str, only: AbstractSet[str] | None = None) -> dict[str, Any]:
        """The OpenAPI document served at ``/openapi``, with servers under ``base_url``.

        ``only``: the ids of the collections it describes (default: every one).
        """
        from pygeoapi.openapi import get_oas

        cfg = pygeoapi_config(self.config, self.registry, base_url, only)
        doc = get_oas(cfg, fail_on_invalid_collection=False)
        doc["info"]["version"] = __version__
        doc["info"]["x-geoharbor"] = "generated by pygeoapi, extended by geoharbor"
        _localise_refs(doc)
        _patch_openapi(doc, shown(self.registry, only))
        _add_family_paths(doc, self.config)
        _add_security(doc)
        return doc

    def api(self, base_url: str, only: frozenset[str] | None = None) -> Any:
        """The pygeoapi API object whose links start with ``base_url``, knowing only the
        collections in ``only`` (None: every collection)."""
        from pygeoapi.api import API

        key = (base_url, only)
        with self._lock:
            found = self._apis.get(key)
            if found is not None:
                self._apis.move_to_end(key)
                return found
            version = self._version
        cfg = pygeoapi_config(self.config, self.registry, base_url, only)
        api = API(cfg, self.openapi(base_url, only))
        with self._lock:
            if version == self._version:  # not built from collections that changed meanwhile
                self._apis[key] = api
                while len(self._apis) > self.MAX_APIS:
                    self._apis.popitem(last=False)
        return api


def _add_family_paths(doc: dict[str, Any], config: dict[str, Any]) -> None:
    """Add the REST CRUD and MapFish routes, each described by its own module."""
    from server import (
        datasets,
        importer,
        mapfish,
        portal_export,
        processes,
        rest_audit,
        rest_buffer,
        rest_export,
        rest_layers,
        rest_maps,
        rest_search,
        rest_tables,
        rest_users,
        rule_jobs,
        rules,
        sql_console,
        streams,
        triggers,
    )

    families = [(config["mapfish"]["prefix"], mapfish, "MapFish protocol"), ("", datasets, "Datasets")]
    families += [
        ("", portal_export, "Datasets"),
        ("", streams, "Event streams"),
        ("", sql_console, "SQL console"),
    ]
    families.append((config["imports"]["prefix"], importer, "Importer"))
    families += [("", rules, "Platform"), ("", rule_jobs, "Platform"), ("", triggers, "Platform")]
    families.append(("", processes, "OGC API - Processes"))
    families += [
        (config["rest"]["prefix"], module, "REST CRUD")
        for module in (
            rest_layers,
            rest_tables,
            rest_maps,
            rest_search,
            rest_buffer,
            rest_export,
            rest_users,
            rest_audit,
        )
    ]
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    tags = doc.setdefault("tags", [])
    for prefix, module, tag in families:
        fragment = module.openapi(prefix.rstrip("/"))
        for path, operations in fragment.get("paths", {}).items():
            for operation in operations.values():
                if isinstance(operation, dict):
                    operation.setdefault("tags", [tag])
            doc["paths"][path] = operations
        schemas.update(fragment.get("components", {}).get("schemas", {}))
        if fragment.get("paths") and not any(t.get("name") == tag for t in tags):
            tags.append({"name": tag, "description": f"{tag} routes of geoharbor"})


#: How a client presents an API key (server.auth.presented_key): the first one found wins.
SECURITY_SCHEMES = {
    "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "API-Key"},
    "xApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
}


def _add_security(doc: dict[str, Any]) -> None:
    """Declare the API keys: optional everywhere (``{}``), as public data needs none.

    Once a server has keys, what a key may see and do is per resource, so no
    operation lists a scheme as required: a 401, 403 or 404 says what was missing.
    """
    doc.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    doc["security"] = [{}, *({name: []} for name in SECURITY_SCHEMES)]


_CONFORMANCE_DONE = False


def _register_conformance() -> None:
    """Add the classes geoharbor's feature routes implement to pygeoapi's list, once."""
    global _CONFORMANCE_DONE
    if _CONFORMANCE_DONE:
        return
    import pygeoapi.api.itemtypes as itemtypes

    for uri in EXTRA_CONFORMANCE:
        if uri not in itemtypes.CONFORMANCE_CLASSES_FEATURES:
            itemtypes.CONFORMANCE_CLASSES_FEATURES.append(uri)
    _CONFORMANCE_DONE = True
