"""GeoNode's upload door: ``/api/v2/uploads/upload``, upload lists, execution requests.

An upload is run by the importer's model (:mod:`server.imports`): the multipart parts
(``base_file``, ``dbf_file``, ``shx_file``, ``prj_file``, ``cpg_file``, ``zip_file`` or
any other file field) become an import whose tasks are loaded and published by an
``import`` job, queued like every background load. The client gets GeoNode 4.x's
answer, ``{"execution_id", "status", "success"}``, and polls the execution request
(:mod:`server.geonode_executions`) until it is ``finished``; its
``output_params.resources`` name the new datasets. ``xml_file`` (ISO 19139 metadata)
gives the dataset its title; ``sld_file`` is accepted and not used (styles are the
client's in geoharbor).

Limits: an upload larger than ``catalogue.upload_max_mb`` (default: the datasets
limit) is refused with 413 before it is read; a caller with
``catalogue.upload_parallel_max`` uploads still running is refused with 400, as
GeoNode does.

Upload ids are the import numbers, so ``/imports/{id}`` shows the same upload in detail.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from flask import Blueprint, Flask, Response, current_app, request

from providers.errors import InvalidData, InvalidQuery, NotFound, ProviderError
from providers.files import TooLarge
from providers.store import Record
from providers.tables import tables_of
from server import datasets, errors, owned
from server.auth import current_auth, current_identity
from server.geonode import listing
from server.geonode_executions import FINAL, Executions, iso, view
from server.imports import READY, Imports
from server.links import base_url
from server.responses import json_response

blueprint = Blueprint("geonode_uploads", __name__)

PREFIX = "/api/v2"
#: Form fields of GeoNode's upload form that carry the data itself (any other file field is taken too).
DATA_FIELDS = ("base_file", "dbf_file", "shx_file", "prj_file", "cpg_file", "zip_file", "tif_file")
#: Form fields carried aside: metadata and style, not data to load.
METADATA_FIELD, STYLE_FIELD = "xml_file", "sld_file"
#: Form values kept with the request (GeoNode echoes them in ``input_params``).
FORM_PARAMS = ("charset", "time", "mosaic", "permissions", "overwrite_existing_layer", "skip_existing_layers")
#: GeoNode's name of the upload's function in its execution requests.
UPLOAD_FUNC = "import_resource"
#: GeoNode's slugs of the two limits.
SIZE_SLUG, PARALLEL_SLUG = "dataset_upload_size", "default_max_parallel_uploads"


def install(app: Flask) -> None:
    """Register the routes and answer their errors as Django REST framework does."""
    app.register_blueprint(blueprint, url_prefix=PREFIX)
    for path in ("/uploads", "/executionrequest", "/resource-service", "/upload-"):
        errors.use_format(app, PREFIX + path, datasets.detail_error)


def _state() -> Any:
    return current_app.extensions["geoharbor"]


def _executions() -> Executions:
    state = _state()
    return Executions(state.registry, state.jobs)


def limits(config: dict[str, Any]) -> tuple[int, int]:
    """(largest upload in bytes, uploads one user may have running)."""
    catalogue = config["catalogue"]
    size_mb = catalogue.get("upload_max_mb", config["datasets"]["max_upload_mb"])
    return int(size_mb * (1 << 20)), int(catalogue["upload_parallel_max"])


# -- upload ---------------------------------------------------------------------------------
@blueprint.route("/uploads/upload", methods=["POST"])
def upload() -> Response:
    """Start an upload: the files become an import run by a job; answers its execution id."""
    identity = current_identity()
    current_auth().require_create(identity, "a dataset")
    max_bytes, max_parallel = limits(current_app.config["GEOHARBOR"])
    if request.content_length is not None and request.content_length > max_bytes:
        raise TooLarge(f"the upload is larger than the limit of {max_bytes >> 20} MB")
    request.max_content_length = max_bytes
    executions = _executions()
    owner = owned.owner()
    if executions.running(owner, UPLOAD_FUNC) >= max_parallel:
        raise InvalidQuery(
            f"The number of active parallel uploads exceeds {max_parallel}. "
            "Wait for the pending ones to finish first."
        )
    parts, metadata = _parts()
    if not parts:
        raise InvalidQuery("send the data as multipart/form-data: base_file (and its sidecar files)")
    state = _state()
    imports = Imports(state.registry, state.jobs)
    record = imports.create({}, owner)
    try:
        record, made = imports.add_uploads(record, parts)
        replace = (
            (lambda name: _may_replace(state.registry, name)) if _flag("overwrite_existing_layer") else None
        )
        record = fit_names(state.registry, imports, record, made, replace)
        title = _title(metadata)
        if title:
            for task_id in made:
                record, _ = imports.update_task(
                    record, task_id, lambda t: imports.patch_layer(t, {"title": title})
                )
        tasks = [imports.find_task(record, t) for t in made]
        if not any(t["state"] == READY for t in tasks):
            why = "; ".join(f"{t['data'].get('file')}: {t['message'] or t['state']}" for t in tasks)
            raise InvalidData(f"nothing in the upload can be imported ({why or 'no data'})")
        name = str(tasks[0]["data"].get("file") or tasks[0]["layer"]["name"])
        params = {k: request.form[k] for k in FORM_PARAMS if k in request.form}
        params["files"] = sorted(name for name, _ in parts)
        execution = executions.create(UPLOAD_FUNC, name, owner, params, import_id=int(record.key or 0))
        imports.run(imports.start(record, "running"), init=False, execute=True, wait=False)
    except BaseException:
        try:
            imports.delete(int(record.key or 0))
        except ProviderError:
            pass  # its job was queued and failed: the import shows why, the client gets the error below
        raise
    return json_response({"execution_id": execution.key, "status": "ready", "success": True}, 201)


def _flag(name: str) -> bool:
    return request.form.get(name, "").strip().lower() in ("true", "1", "yes", "on")


def fit_names(
    registry: Any,
    imports: Imports,
    record: Record,
    made: list[int],
    may_replace: Callable[[str], bool] | None,
) -> Record:
    """Give each new task a table and collection name that is free, as GeoNode names a second
    upload of ``roads`` ``roads_1``; a taken name ``may_replace`` allows has its data replaced."""
    for task_id in made:
        task = imports.find_task(record, task_id)
        if task["state"] != READY:
            continue
        source = task["source"]
        taken = set(tables_of(registry.sources[source], source).names()) | set(registry.collections)
        name = task["layer"]["name"]
        if name not in taken:
            continue
        if may_replace is not None and may_replace(name):
            change: dict[str, Any] = {"updateMode": "REPLACE"}
        else:
            free = next(f"{name}_{n}" for n in range(1, 10_000) if f"{name}_{n}" not in taken)
            change = {"layer": {"name": free}}
        record, _ = imports.update_task(record, task_id, lambda t, c=change: imports.patch_task(t, c))
    return record


def _may_replace(registry: Any, name: str) -> bool:
    """Whether the caller may overwrite ``name``: a published layer it may write (a table
    that publishes nothing, or a configured collection, is never overwritten by an upload)."""
    coll = registry.collections.get(name)
    if coll is None or coll.layer_id is None:
        return False
    auth = current_auth()
    return auth.allowed(current_identity(), "write", auth.collection_rights(current_identity(), coll))


def _parts() -> tuple[list[tuple[str, IO[bytes]]], bytes | None]:
    """The files to load (each file once: geonodectl sends a zip as base_file and zip_file),
    and the ISO metadata document if one came."""
    parts: list[tuple[str, IO[bytes]]] = []
    seen: set[str] = set()
    metadata = None
    for field in request.files:
        for upload in request.files.getlist(field):
            name = Path(upload.filename or field).name
            if field == METADATA_FIELD or (field != "base_file" and name.lower().endswith(".xml")):
                metadata = upload.stream.read(1 << 20)
                continue
            if field == STYLE_FIELD or name.lower().endswith(".sld"):
                continue
            if name in seen:
                continue
            seen.add(name)
            parts.append((name, upload.stream))
    return parts, metadata


def _title(metadata: bytes | None) -> str | None:
    """The title of an ISO 19139 document (``xml_file``); None when it has none or is not ISO."""
    if not metadata:
        return None
    from providers.metadata_xml import read_title

    return read_title(metadata)


# -- uploads ---------------------------------------------------------------------------------
#: Execution statuses -> GeoNode's upload states.
UPLOAD_STATES = {"ready": "PENDING", "running": "RUNNING", "finished": "PROCESSED", "failed": "INVALID"}


def _upload_view(record: Record) -> dict[str, Any]:
    body = record.body
    upload_id = body.get("import_id")
    resources = (body.get("output_params") or {}).get("resources") or []
    base = base_url()
    return {
        "id": upload_id,
        "name": body["name"],
        "date": iso(body.get("created")),
        "create_date": iso(body.get("created")),
        "state": UPLOAD_STATES.get(body["status"], "RUNNING"),
        "progress": 100.0 if body["status"] in FINAL else 50.0,
        "complete": body["status"] == "finished",
        "user": body.get("owner"),
        "resource": resources[0]["id"] if resources else None,
        "execution_id": record.key,
        "link": f"{base}{PREFIX}/uploads/{upload_id}",
        "import_url": f"{base}{current_app.config['GEOHARBOR']['imports']['prefix']}/{upload_id}",
        "detail_url": f"{base}{PREFIX}/executionrequest/{record.key}",
    }


def _uploads() -> list[Record]:
    return [r for r in owned.readable(_executions().list()) if r.body.get("func_name") == UPLOAD_FUNC]


@blueprint.route("/uploads", methods=["GET"])
def list_uploads() -> Response:
    return listing("uploads", [_upload_view(r) for r in _uploads()])


@blueprint.route("/uploads/<int:upload_id>", methods=["GET"])
def get_upload(upload_id: int) -> Response:
    for record in _uploads():
        if record.body.get("import_id") == upload_id:
            return json_response({"upload": _upload_view(record)})
    raise NotFound(f"upload {upload_id} not found")


# -- limits -----------------------------------------------------------------------------------
@blueprint.route("/upload-size-limits", methods=["GET"])
def size_limits() -> Response:
    size, _ = limits(current_app.config["GEOHARBOR"])
    row = {
        "slug": SIZE_SLUG,
        "description": "The largest dataset upload",
        "max_size": size,
        "max_size_label": _label(size),
    }
    return listing("upload-size-limits", [row])


@blueprint.route("/upload-size-limits/<slug>", methods=["GET"])
def size_limit(slug: str) -> Response:
    if slug != SIZE_SLUG:
        raise NotFound(f"upload size limit {slug[:100]!r} not found")
    size, _ = limits(current_app.config["GEOHARBOR"])
    return json_response(
        {"upload-size-limit": {"slug": SIZE_SLUG, "max_size": size, "max_size_label": _label(size)}}
    )


@blueprint.route("/upload-parallelism-limits", methods=["GET"])
def parallelism_limits() -> Response:
    _, parallel = limits(current_app.config["GEOHARBOR"])
    row = {"slug": PARALLEL_SLUG, "description": "Uploads a user may run at once", "max_number": parallel}
    return listing("upload-parallelism-limits", [row])


def _label(size: int) -> str:
    units = ["B", "KB", "MB", "GB", "TB"]
    power = min(len(units) - 1, int(math.log(size, 1024))) if size > 0 else 0
    return f"{size / 1024**power:.1f} {units[power]}"


# -- execution requests ----------------------------------------------------------------------
def _execution(exec_id: str) -> Record:
    return owned.check(_executions().get(exec_id), "read", f"execution request {exec_id[:100]!r}")


@blueprint.route("/executionrequest", methods=["GET"])
def list_executions() -> Response:
    rows = owned.readable(_executions().list())
    status = request.args.get("filter{status}") or request.args.get("status")
    if status:
        rows = [r for r in rows if r.body["status"] == status]
    base = base_url()
    return listing("requests", [view(r, base) for r in rows])


@blueprint.route("/executionrequest/<exec_id>", methods=["GET"])
def get_execution(exec_id: str) -> Response:
    return json_response({"request": view(_execution(exec_id), base_url())})


@blueprint.route("/resource-service/execution-status/<exec_id>", methods=["GET"])
def execution_status(exec_id: str) -> Response:
    """GeoNode's older status door: the request itself, not wrapped."""
    return json_response(view(_execution(exec_id), base_url()))
