"""The datasets API (GISPulse style): upload spatial files, browse their features, export them.

A dataset is a directory ``<datasets.path>/<uuid>/`` holding what a client uploaded
(zips unpacked safely) and a store record of kind ``dataset`` keyed by the uuid with
what GDAL found in it: format, CRS, layers. The record is written only once the files
are known to be readable, and the directory is removed on any failure, so a refused
upload leaves nothing behind. File work is :mod:`providers.files` and
:mod:`providers.convert`; this module is HTTP and access only.

A remote OGC service is registered with ``POST /datasets/ogc`` (``url``,
``service_type`` WFS, ``layer_name``, ``name``): nothing is downloaded. The remote is
asked once what the layer is, and a run-time *layer* record holding that answer is
stored (:meth:`server.registry.Registry.create_layer`), so every worker and host
publishes it at once as a collection (items, item, vector tiles) read from the remote.

Errors answer FastAPI's ``{"detail": "..."}`` under ``/datasets`` and ``/api/portal``.
Access: reading a dataset needs read rights on its record, deleting write rights,
uploading or registering a key that may write (in community mode the access hook
already keeps writes to this machine).
"""

from __future__ import annotations

import re
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request

from providers import wfs
from providers.convert import FORMATS, convert
from providers.errors import InvalidData, InvalidQuery, NotFound
from providers.export import safe_name
from providers.files import Layer, TooLarge, detect, read_page, save_parts
from providers.files import count as count_features
from providers.store import Record, Store
from server import bodies, owned
from server.attachments import written_attachment
from server.auth import current_auth, current_identity
from server.links import url
from server.params import int_param
from server.registry import COLLECTION_ID
from server.responses import json_response

blueprint = Blueprint("datasets", __name__)

KIND = "dataset"
LIMIT_DEFAULT = 100
LIMIT_MAX = 10_000


def detail_error(status: int, message: str) -> Response:
    """An error as FastAPI renders it: ``{"detail": message}``."""
    return Response(orjson.dumps({"detail": message}), status=status, mimetype="application/json")


def _store() -> Store:
    return current_app.extensions["geoharbor"].registry.store


def _settings() -> dict[str, Any]:
    return current_app.config["GEOHARBOR"]["datasets"]


def _root() -> Path:
    return Path(_settings()["path"])


# -- records and access ------------------------------------------------------------------------
def find_dataset(dataset_id: str, action: owned.Action = "read") -> Record:
    """The record of a dataset the caller may ``action`` (404 when unknown or unreadable)."""
    try:
        key = str(uuid.UUID(dataset_id))
    except ValueError:
        raise NotFound(f"dataset {dataset_id[:100]!r} not found") from None
    return owned.find(KIND, key, action, f"dataset {key}")


def _view(record: Record) -> dict[str, Any]:
    """A dataset as clients read it (GISPulse fields plus size and times)."""
    body = record.body
    return {
        "id": record.key,
        "name": body["name"],
        "format": body["format"],
        "crs": body["crs"],
        "layers": [
            {"name": la["name"], "geometry_type": la["geometry_type"], "feature_count": la["feature_count"]}
            for la in body["layers"]
        ],
        "size": body["size"],
        "data_category": "vector",
        "created_at": _iso(record.created),
        "owner": body.get("owner"),
    }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def dataset_layer(record: Record, name: str | None) -> tuple[Path, Layer, str]:
    """The file, layer and source driver of a dataset's layer (its first layer when unnamed)."""
    layers = record.body["layers"]
    found = layers[0] if name is None else next((la for la in layers if la["name"] == name), None)
    if found is None:
        raise NotFound(f"dataset {record.key} has no layer {name[:100]!r}")  # type: ignore[index]
    layer = Layer(**{k: found[k] for k in Layer.__slots__})  # type: ignore[attr-defined]
    return _root() / str(record.key) / layer.file, layer, found["driver"]


# -- routes -------------------------------------------------------------------------------------
@blueprint.route("/datasets/upload", methods=["POST"])
def upload() -> Response:
    """Store the uploaded files (several parts: one dataset, e.g. a Shapefile's parts)."""
    current_auth().require_create(current_identity(), "a dataset")
    settings = _settings()
    max_upload = int(settings["max_upload_mb"] * (1 << 20))
    if request.content_length is not None and request.content_length > max_upload:
        raise TooLarge(f"the upload is larger than {settings['max_upload_mb']} MB")
    request.max_content_length = max_upload
    parts = [f for f in request.files.getlist("file") if f.filename] or [
        f for f in request.files.values() if f.filename
    ]
    if not parts:
        raise InvalidData("no file: send the file as the multipart part 'file'")
    key = str(uuid.uuid4())
    directory = _root() / key
    try:
        size = save_parts(
            ((f.filename or "upload", f.stream) for f in parts),
            directory,
            int(settings["max_unpacked_mb"] * (1 << 20)),
        )
        found = detect(directory)
        layers = [
            {**{k: getattr(la, k) for k in Layer.__slots__}, "driver": spatial.driver}  # type: ignore[attr-defined]
            for spatial in found
            for la in spatial.layers
        ]
        body = {
            "name": safe_name(parts[0].filename or "upload", "upload")
            if len(parts) == 1
            else _group_name(parts),
            "format": found[0].driver,
            "crs": next((la["crs"] for la in layers if la["crs"]), None),
            "layers": layers,
            "size": size,
            "owner": owned.owner(),
        }
        record = _store().insert(KIND, body, key=key)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return json_response(_view(record), 201)


def _group_name(parts: list[Any]) -> str:
    """The name of several uploaded files: their common stem (a Shapefile's), else the first's."""
    stems = {Path(f.filename or "").stem for f in parts}
    return safe_name(stems.pop() if len(stems) == 1 else parts[0].filename or "upload", "upload")


# -- remote OGC services -------------------------------------------------------------------------
#: The service types ``POST /datasets/ogc`` registers.
OGC_SERVICES = ("WFS",)
#: Response header saying whether a WFS collection's conditions ran on the remote or here.
FILTER_HEADER = "X-Geoharbor-Filter"


@blueprint.route("/datasets/ogc", methods=["POST"])
def register_ogc() -> Response:
    """Register a layer of a remote WFS as a collection, lazily: the remote is described, not copied.

    Server-side request forgery: only a key that may create may make this server call
    a URL, and only http(s) URLs are accepted; the remote is then only ever asked at
    that URL (the addresses its capabilities advertise are not followed).
    """
    current_auth().require_create(current_identity(), "a remote layer")
    body = bodies.json_body()
    if not isinstance(body, dict):
        raise InvalidData("the body must be a JSON object")
    service_type = body.get("service_type", "WFS")
    if not isinstance(service_type, str) or service_type.upper() not in OGC_SERVICES:
        raise InvalidData(f"service_type must be one of {', '.join(OGC_SERVICES)}")
    layer_name, name, version = body.get("layer_name"), body.get("name"), body.get("version")
    if not isinstance(layer_name, str) or not layer_name.strip():
        raise InvalidData("layer_name is required (a feature type of the WFS)")
    if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 200):
        raise InvalidData("name must be a non-empty text of at most 200 characters")
    if version is not None and not isinstance(version, str):
        raise InvalidData("version must be 2.0.0 or 1.1.0")
    registry = current_app.extensions["geoharbor"].registry
    remote = registry.describe_remote(body.get("url"), layer_name, version)
    cid = _collection_id(registry, body.get("collection"), name or remote.title or remote.local_name)
    record = registry.create_layer(
        {
            "service": "wfs",
            "collection": cid,
            "name": name or remote.title or remote.local_name,
            "title": name or remote.title or remote.local_name,
            "url": remote.url,
            "layer": remote.type_name,
            "version": remote.version,
            "remote": remote.to_json(),
            "editable": False,
            "owner": owned.owner(),
        }
    )
    return json_response(_remote_view(record), 201)


def _collection_id(registry: Any, wanted: Any, name: str) -> str:
    """The collection id asked for (it must be free), or one made from the name that is free."""
    if wanted is not None:
        if not isinstance(wanted, str) or not COLLECTION_ID.match(wanted):
            raise InvalidData("collection must be 1-63 letters, digits, '_', '-' or '.'")
        return wanted
    base = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")[:56] or "remote"
    for candidate in (base, *(f"{base}_{n}" for n in range(2, 100))):
        if candidate not in registry.collections:
            return candidate
    raise InvalidData(f"no free collection id for {name[:100]!r}: give one as 'collection'")


def _remote_view(record: Record) -> dict[str, Any]:
    """A registered remote layer as the datasets API shows it, with the links of its collection."""
    body = record.body
    remote = body["remote"]
    cid = str(record.key)
    srid = (remote.get("crs") or [4326])[0]
    return {
        "id": record.id,
        "name": body["name"],
        "format": "WFS",
        "service_type": "WFS",
        "url": body["url"],
        "layer_name": body["layer"],
        "version": body["version"],
        "collection": cid,
        "crs": f"EPSG:{srid}",
        "layers": [
            {"name": body["layer"], "geometry_type": remote.get("geometry_type"), "feature_count": None}
        ],
        "data_category": "vector",
        "created_at": _iso(record.created),
        "owner": body.get("owner"),
        "links": [
            {"rel": "collection", "type": "application/json", "href": url(f"/collections/{cid}")},
            {"rel": "items", "type": "application/geo+json", "href": url(f"/collections/{cid}/items")},
            {
                "rel": "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector",
                "type": "application/json",
                "href": url(f"/collections/{cid}/tiles"),
            },
        ],
    }


@blueprint.before_app_request
def _forget_filter_mode() -> None:
    """Each request starts without a WFS filter mode (threads are reused between requests)."""
    wfs.FILTER_MODE.set(None)


@blueprint.after_app_request
def _tell_filter_mode(response: Response) -> Response:
    """Tell the client when a WFS collection's conditions were applied here, after the fetch."""
    mode = wfs.FILTER_MODE.get()
    if mode is not None:
        response.headers[FILTER_HEADER] = mode
    return response


@blueprint.route("/datasets", methods=["GET"])
def list_datasets() -> Response:
    """The datasets the caller may read, oldest first, ``limit``/``offset`` paged."""
    limit = int_param(request.args, "limit", LIMIT_DEFAULT, 1, LIMIT_MAX)
    offset = int_param(request.args, "offset", 0, 0)
    readable = owned.readable(_store().list(KIND))
    return json_response([_view(r) for r in readable[offset : offset + limit]])


@blueprint.route("/datasets/<dataset_id>", methods=["GET"])
@blueprint.route("/api/portal/datasets/<dataset_id>", methods=["GET"])
def get_dataset(dataset_id: str) -> Response:
    return json_response(_view(find_dataset(dataset_id)))


@blueprint.route("/datasets/<dataset_id>", methods=["DELETE"])
@blueprint.route("/api/portal/datasets/<dataset_id>", methods=["DELETE"])
def delete_dataset(dataset_id: str) -> Response:
    """Forget the record first: a dataset without files is never listed, files without one are junk."""
    record = find_dataset(dataset_id, "write")
    _store().delete(KIND, record.id)
    shutil.rmtree(_root() / str(record.key), ignore_errors=True)
    return Response(status=204)


@blueprint.route("/api/portal/datasets/<dataset_id>/layers/<path:layer>/features", methods=["GET"])
def layer_features(dataset_id: str, layer: str) -> Response:
    """A page of a layer's features as GeoJSON (lon/lat), with ``total``, ``limit`` and ``offset``."""
    record = find_dataset(dataset_id)
    path, found, _driver = dataset_layer(record, layer)
    limit = int_param(request.args, "limit", LIMIT_DEFAULT, 0, LIMIT_MAX)
    offset = int_param(request.args, "offset", 0, 0)
    bbox = _bbox(request.args.get("bbox"))
    total = count_features(path, found, bbox)
    features = read_page(path, found, offset, limit, bbox) if limit and offset < total else []
    body = {
        "type": "FeatureCollection",
        "features": features,
        "total": total,
        "limit": limit,
        "offset": offset,
    }
    response = json_response(body)
    response.mimetype = "application/geo+json"
    return response


def _bbox(raw: str | None) -> tuple[float, float, float, float] | None:
    if raw is None or not raw.strip():
        return None
    try:
        values = [float(v) for v in raw.split(",")]
    except ValueError:
        raise InvalidQuery(f"bbox must be minx,miny,maxx,maxy numbers, not {raw[:100]!r}") from None
    if len(values) != 4 or any(v != v for v in values):
        raise InvalidQuery("bbox must be four numbers: minx,miny,maxx,maxy")
    if values[0] > values[2] or values[1] > values[3]:
        raise InvalidQuery("bbox must be minx,miny,maxx,maxy with min <= max")
    return values[0], values[1], values[2], values[3]


@blueprint.route("/datasets/export", methods=["POST"])
@blueprint.route("/api/portal/datasets/export", methods=["POST"])
def export_posted() -> Response:
    """``{"dataset_id", "format", "layer"?}`` -> the file."""
    body = bodies.json_body()
    if not isinstance(body, dict):
        raise InvalidData("the body must be a JSON object")
    dataset_id, fmt, layer = body.get("dataset_id"), body.get("format"), body.get("layer")
    if not isinstance(dataset_id, str) or not dataset_id:
        raise InvalidData("dataset_id is required (a dataset's id)")
    if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
        raise InvalidData(f"format must be one of {', '.join(FORMATS)}")
    if layer is not None and not isinstance(layer, str):
        raise InvalidData("layer must be a layer name")
    return export_layer(dataset_id, fmt.lower(), layer)


@blueprint.route("/datasets/<dataset_id>/export", methods=["GET"])
def export_get(dataset_id: str) -> Response:
    fmt = (request.args.get("format") or "").lower()
    if fmt not in FORMATS:
        raise InvalidQuery(f"format must be one of {', '.join(FORMATS)}")
    return export_layer(dataset_id, fmt, request.args.get("layer") or None)


def export_layer(dataset_id: str, fmt: str, layer_name: str | None) -> Response:
    """Convert into a private temporary directory, open the result, remove the directory, stream."""
    record = find_dataset(dataset_id)
    path, layer, driver = dataset_layer(record, layer_name)
    name = safe_name(layer.name, "dataset")
    return written_attachment(
        lambda directory: convert(path, layer, driver, fmt, directory, name), FORMATS[fmt].media_type, name
    )


# -- OpenAPI ------------------------------------------------------------------------------------
DATASET_SCHEMA = {
    "type": "object",
    "required": ["id", "name", "format", "crs", "layers", "size", "created_at", "data_category"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "format": {"type": "string", "description": "GDAL driver short name, e.g. GPKG"},
        "crs": {"type": "string", "nullable": True, "description": "EPSG:<code>, or null when unknown"},
        "layers": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "geometry_type": {"type": "string", "nullable": True},
                    "feature_count": {"type": "integer"},
                },
            },
        },
        "size": {"type": "integer", "description": "bytes on disk, unpacked"},
        "created_at": {"type": "string", "format": "date-time"},
        "data_category": {"type": "string", "enum": ["vector"]},
        "owner": {"type": "integer", "nullable": True},
    },
}
_DETAIL = {"application/json": {"schema": {"$ref": "#/components/schemas/DatasetError"}}}
_TEXTS = {
    400: "Malformed parameter",
    401: "An API key is needed",
    403: "The API key may not do this",
    404: "No such dataset or layer",
    413: "The upload is over the size limit",
    422: "Invalid body, or files that are not spatial data this server reads",
    409: "The collection id is taken",
    502: "The remote service failed or refused",
    504: "The remote service did not answer in time",
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": _TEXTS[s], "content": _DETAIL} for s in statuses}


def _param(name: str, where: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema,
    }


def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths of the datasets routes (``prefix`` is empty: they live at the root)."""
    dataset_id = _param("id", "path", "Dataset id", {"type": "string", "format": "uuid"})
    one = {"application/json": {"schema": {"$ref": "#/components/schemas/Dataset"}}}
    files = {
        media: {"schema": {"type": "string", "format": "binary"}}
        for media in sorted({f.media_type for f in FORMATS.values()})
    }
    export_ok = {
        "200": {
            "description": "The file as an attachment (shp comes zipped)",
            "headers": {"Content-Disposition": {"schema": {"type": "string"}}},
            "content": files,
        },
        **_errors(400, 404, 422),
    }
    export_body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DatasetExport"}}},
    }
    paths: dict[str, Any] = {
        f"{prefix}/datasets/ogc": {
            "post": {
                "summary": "Register a layer of a remote OGC service (WFS 2.0.0 / 1.1.0) as a collection",
                "description": "Lazy: nothing is downloaded. The layer is published at once as a "
                "collection whose items and vector tiles are read from the remote (cached).",
                "operationId": "datasetsRegisterOgc",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OgcService"}}},
                },
                "responses": {
                    "201": {
                        "description": "The registered remote layer",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/RemoteDataset"}}
                        },
                    },
                    **_errors(401, 403, 409, 422, 502, 504),
                },
            }
        },
        f"{prefix}/datasets/upload": {
            "post": {
                "summary": "Upload a spatial file (zip, Shapefile parts, GeoPackage, GeoJSON, ...)",
                "operationId": "datasetsUpload",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": {"description": "The dataset", "content": one},
                    **_errors(401, 403, 413, 422),
                },
            }
        },
        f"{prefix}/datasets": {
            "get": {
                "summary": "The datasets the caller may read",
                "operationId": "datasetsList",
                "parameters": [
                    _param("limit", "query", "At most this many", {"type": "integer", "default": 100}),
                    _param("offset", "query", "Skip this many", {"type": "integer", "default": 0}),
                ],
                "responses": {
                    "200": {
                        "description": "Datasets",
                        "content": {
                            "application/json": {
                                "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Dataset"}}
                            }
                        },
                    },
                    **_errors(400),
                },
            }
        },
        f"{prefix}/datasets/export": {
            "post": {
                "summary": "A dataset's layer converted to a file",
                "operationId": "datasetsExport",
                "requestBody": export_body,
                "responses": export_ok,
            }
        },
        f"{prefix}/api/portal/datasets/export": {
            "post": {
                "summary": "A dataset's layer converted to a file",
                "operationId": "portalDatasetsExport",
                "requestBody": export_body,
                "responses": export_ok,
            }
        },
        f"{prefix}/datasets/{{id}}/export": {
            "parameters": [dataset_id],
            "get": {
                "summary": "A dataset's layer converted to a file",
                "operationId": "datasetsExportGet",
                "parameters": [
                    _param("format", "query", "Target format", {"type": "string", "enum": list(FORMATS)}),
                    _param("layer", "query", "Layer name (default: the first)", {"type": "string"}),
                ],
                "responses": export_ok,
            },
        },
        f"{prefix}/api/portal/datasets/{{id}}/layers/{{layer}}/features": {
            "parameters": [dataset_id, _param("layer", "path", "Layer name", {"type": "string"})],
            "get": {
                "summary": "A page of a layer's features as GeoJSON (lon/lat)",
                "operationId": "datasetsLayerFeatures",
                "parameters": [
                    _param("limit", "query", "At most this many", {"type": "integer", "default": 100}),
                    _param("offset", "query", "Skip this many", {"type": "integer", "default": 0}),
                    _param("bbox", "query", "minx,miny,maxx,maxy in lon/lat", {"type": "string"}),
                ],
                "responses": {
                    "200": {
                        "description": "FeatureCollection with total, limit and offset",
                        "content": {"application/geo+json": {"schema": {"type": "object"}}},
                    },
                    **_errors(400, 404),
                },
            },
        },
    }
    for path in (f"{prefix}/datasets/{{id}}", f"{prefix}/api/portal/datasets/{{id}}"):
        tag = "portal" if "portal" in path else "datasets"
        paths[path] = {
            "parameters": [dataset_id],
            "get": {
                "summary": "A dataset",
                "operationId": f"{tag}Get",
                "responses": {"200": {"description": "The dataset", "content": one}, **_errors(404)},
            },
            "delete": {
                "summary": "Delete a dataset and its files",
                "operationId": f"{tag}Delete",
                "responses": {"204": {"description": "Deleted"}, **_errors(401, 403, 404)},
            },
        }
    schemas = {
        "Dataset": DATASET_SCHEMA,
        "DatasetExport": {
            "type": "object",
            "required": ["dataset_id", "format"],
            "properties": {
                "dataset_id": {"type": "string", "format": "uuid"},
                "format": {"type": "string", "enum": list(FORMATS)},
                "layer": {"type": "string"},
            },
        },
        "OgcService": {
            "type": "object",
            "required": ["url", "layer_name"],
            "properties": {
                "url": {"type": "string", "format": "uri", "description": "the service's http(s) URL"},
                "service_type": {"type": "string", "enum": list(OGC_SERVICES), "default": "WFS"},
                "layer_name": {"type": "string", "description": "a feature type, prefixed or not"},
                "name": {"type": "string", "description": "the collection's title"},
                "collection": {"type": "string", "description": "the collection id (default: from name)"},
                "version": {"type": "string", "enum": list(wfs.VERSIONS)},
            },
        },
        "RemoteDataset": {
            "type": "object",
            "required": ["id", "name", "format", "url", "layer_name", "collection", "links"],
            "properties": {
                "id": {"type": "integer", "description": "the layer record (see /rest/1/layers/{id})"},
                "name": {"type": "string"},
                "format": {"type": "string", "enum": ["WFS"]},
                "service_type": {"type": "string"},
                "url": {"type": "string"},
                "layer_name": {"type": "string"},
                "version": {"type": "string"},
                "collection": {"type": "string"},
                "crs": {"type": "string"},
                "layers": {"type": "array", "items": {"type": "object"}},
                "data_category": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
                "links": {"type": "array", "items": {"type": "object"}},
            },
        },
        "DatasetError": {
            "type": "object",
            "required": ["detail"],
            "properties": {"detail": {"type": "string"}},
        },
    }
    return {"paths": paths, "components": {"schemas": schemas}}
