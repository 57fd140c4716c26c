"""The importer REST API (GeoServer's ``/imports``): HTTP in front of :mod:`server.imports`.

Documents follow GeoServer's importer: ``{"import": {...}}``, ``{"task": {...}}``,
``{"imports": [...]}``, ``{"tasks": [...]}``, each object with its ``href`` (absolute,
with the mount prefix: clients keep only its path). Errors answer ``{"errors":
[message]}`` with the status of the failure, the body GeoServer clients parse.

What real clients need (gn-gsimporter, GeoNode): HTTP Basic on every call; an id
proposed with ``PUT /imports/{n}``; zips sent as a raw ``PUT .../tasks/{name}.zip``
and other files as one multipart POST whose field names are local paths (every part
is taken; a Shapefile's parts become one task); task PUTs with or without the
``task`` wrapper, carrying a whole ``transformChain``; ``layer.href`` and ``bbox``;
204 on execute and delete; unknown query parameters ignored.

Access: creating an import needs a key that may create (the caller owns it); an
import is read and changed by its owner (or an admin). Data named by server path
(``file://``, an absolute ``file``, ``directory``) or a configured database needs an
admin, and paths must lie under ``imports.roots``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from flask import Blueprint, Response, current_app, request

from providers import transforms
from providers.errors import InvalidData, NotFound
from providers.files import TooLarge
from providers.store import Record
from server import bodies, links, owned
from server.auth import current_auth, current_identity, require_admin
from server.imports import COMPLETE, RUNNING, Imports
from server.responses import json_response

blueprint = Blueprint("importer", __name__)


def importer_error(status: int, message: str) -> Response:
    """An error as GeoServer's importer clients parse it: ``{"errors": [message]}``."""
    return Response(orjson.dumps({"errors": [message]}), status=status, mimetype="application/json")


def _imports() -> Imports:
    state = current_app.extensions["geoharbor"]
    return Imports(state.registry, state.jobs)


def _href(*parts: Any) -> str:
    prefix = current_app.config["GEOHARBOR"]["imports"]["prefix"].rstrip("/")
    return links.url(prefix + "".join(f"/{p}" for p in parts))


def _flag(name: str) -> bool:
    return request.args.get(name, "").lower() in ("true", "1", "yes")


# -- access -------------------------------------------------------------------------------
def _record(import_id: int, action: owned.Action = "read") -> Record:
    """The import, if the caller may ``action`` it (404 when it may not even read it)."""
    return owned.check(_imports().get(import_id), action, f"import {import_id}")


def _check_data(data: Any) -> None:
    """Data read from the server itself (a path, a database) is an admin's to name."""
    if not isinstance(data, dict):
        return
    kind = str(data.get("type") or "file").lower()
    named = data.get("location") if kind == "directory" else data.get("file")
    if kind == "database" or (isinstance(named, str) and Path(named).is_absolute()):
        require_admin(current_identity(), "import server-side files or database tables")


# -- representations -------------------------------------------------------------------------------
def import_json(imports: Imports, record: Record) -> dict[str, Any]:
    body = record.body
    iid = int(record.key or 0)
    out: dict[str, Any] = {
        "id": iid,
        "href": _href(iid),
        "state": imports.state(body),
        "archive": False,
        "targetStore": {"dataStore": imports.store_json(body["source"])},
    }
    if body.get("message"):
        out["message"] = body["message"]
    if body.get("targetWorkspace"):
        out["targetWorkspace"] = body["targetWorkspace"]
    if body.get("data"):
        out["data"] = {**_public_data(body["data"]), "href": _href(iid, "data")}
    if body.get("transforms"):
        out["transforms"] = body["transforms"]
    out["tasks"] = [task_json(imports, iid, t) for t in body["tasks"]]
    return out


def _public_data(data: dict[str, Any]) -> dict[str, Any]:
    """Data as clients see it: no password, no internal directory."""
    return {k: v for k, v in data.items() if k not in ("password", "dir")}


def task_json(imports: Imports, iid: int, task: dict[str, Any]) -> dict[str, Any]:
    tid = task["id"]
    out: dict[str, Any] = {
        "id": tid,
        "href": _href(iid, "tasks", tid),
        "state": task["state"],
        "updateMode": task["updateMode"],
        "data": {**_public_data(task["data"]), "href": _href(iid, "tasks", tid, "data")},
        "target": {
            "href": _href(iid, "tasks", tid, "target"),
            "dataStore": imports.store_json(task["source"]),
        },
        "progress": _href(iid, "tasks", tid, "progress"),
        "layer": layer_json(iid, task),
        "transformChain": {"type": "vector", "transforms": transforms_json(iid, task)},
    }
    if task.get("message"):
        out["errorMessage"] = task["message"]
    if task.get("result"):
        cid = task["result"]["collection"]
        out["published"] = {
            **task["result"],
            "items": links.url(f"/collections/{cid}/items"),
            "tiles": links.url(f"/collections/{cid}/tiles/WebMercatorQuad"),
        }
    return out


def layer_json(iid: int, task: dict[str, Any]) -> dict[str, Any]:
    layer = task["layer"]
    return {
        "name": layer["name"],
        "href": _href(iid, "tasks", task["id"], "layer"),
        "title": layer.get("title") or layer["name"],
        "originalName": layer.get("originalName"),
        "nativeName": layer.get("nativeName"),
        "srs": layer.get("srs"),
        "bbox": layer.get("bbox")
        or {"minx": None, "miny": None, "maxx": None, "maxy": None, "crs": layer.get("srs")},
        "attributes": layer.get("attributes") or [],
    }


def transforms_json(iid: int, task: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {**t, "href": _href(iid, "tasks", task["id"], "transforms", n)}
        for n, t in enumerate(task["transforms"])
    ]


def _tasks_response(imports: Imports, record: Record, task_ids: list[int]) -> Response:
    iid = int(record.key or 0)
    made = [task_json(imports, iid, imports.find_task(record, t)) for t in task_ids]
    if not made:
        raise InvalidData("no task was created from what was sent")
    body = {"task": made[0]} if len(made) == 1 else {"tasks": made}
    return json_response(body, 201, made[0]["href"])


# -- imports -------------------------------------------------------------------------------
@blueprint.route("", methods=["GET"])
def list_imports() -> Response:
    imports = _imports()
    out = []
    for record in owned.readable(imports.list()):
        iid = int(record.key or 0)
        out.append({"id": iid, "href": _href(iid), "state": imports.state(record.body)})
    return json_response({"imports": out})


@blueprint.route("", methods=["POST"])
def create_import() -> Response:
    return _create(None)


@blueprint.route("/<int:import_id>", methods=["PUT"])
def create_import_with_id(import_id: int) -> Response:
    """Create with a proposed id: used when ahead of the next id, else the next id is used."""
    return _create(import_id)


def _create(proposed: int | None) -> Response:
    current_auth().require_create(current_identity(), "an import")
    raw = bodies.json_body() if request.get_data(cache=True) else {}
    spec = raw.get("import", raw) if isinstance(raw, dict) else raw
    if not isinstance(spec, dict):
        raise InvalidData('the body must be an object: {"import": {...}}')
    _check_data(spec.get("data"))
    imports = _imports()
    record = imports.create(spec, owned.owner(), proposed)
    has_data = bool(spec.get("data")) and _has_content(spec["data"])
    execute = _flag("execute")
    if has_data and _flag("async"):
        imports.run(imports.start(record, "init"), init=True, execute=execute, wait=False)
    else:
        try:
            if has_data:
                record = imports.init(record)
        except BaseException:
            imports.delete(int(record.key or 0))
            raise
        if execute and any(t["state"] == "READY" for t in record.body["tasks"]):
            _execute(imports, record, wait=True)
    record = imports.get(int(record.key or 0))
    return json_response({"import": import_json(imports, record)}, 201, _href(int(record.key or 0)))


def _has_content(data: dict[str, Any]) -> bool:
    """Whether data names something to scan now (a bare file name waits for uploads)."""
    kind = str(data.get("type") or "file").lower()
    if kind in ("remote", "database"):
        return True
    named = data.get("location") if kind == "directory" else data.get("file")
    return isinstance(named, str) and Path(named).is_absolute()


def _execute(imports: Imports, record: Record, wait: bool) -> None:
    """Run the import's READY tasks: in this request (``wait``) or on a job worker."""
    imports.run(imports.start(record, "running"), init=False, execute=True, wait=wait)


@blueprint.route("/<int:import_id>", methods=["GET"])
def get_import(import_id: int) -> Response:
    imports = _imports()
    return json_response({"import": import_json(imports, _record(import_id))})


@blueprint.route("/<int:import_id>", methods=["POST"])
def execute_import(import_id: int) -> Response:
    """Run the import: synchronous (finished on return) unless ``async=true``; 204 either way."""
    record = _record(import_id, "write")
    _execute(_imports(), record, wait=not _flag("async"))
    return Response(status=204)


@blueprint.route("/<int:import_id>", methods=["DELETE"])
def delete_import(import_id: int) -> Response:
    _record(import_id, "write")
    _imports().delete(import_id)
    return Response(status=204)


@blueprint.route("/<int:import_id>/data", methods=["GET"])
def import_data(import_id: int) -> Response:
    record = _record(import_id)
    data = record.body.get("data")
    if not data:
        raise NotFound(f"import {import_id} has no data of its own: its tasks have")
    return json_response({**_public_data(data), "href": _href(import_id, "data")})


# -- tasks -------------------------------------------------------------------------------
@blueprint.route("/<int:import_id>/tasks", methods=["GET"])
def list_tasks(import_id: int) -> Response:
    imports = _imports()
    record = _record(import_id)
    return json_response({"tasks": [task_json(imports, import_id, t) for t in record.body["tasks"]]})


@blueprint.route("/<int:import_id>/tasks", methods=["POST"])
def create_tasks(import_id: int) -> Response:
    """Tasks from a multipart upload (every part) or from a form ``url`` (file://, http(s)://, ftp://)."""
    imports = _imports()
    record = _record(import_id, "write")
    _check_size(imports)
    # Every part, whatever its field name (gn-gsimporter names each after its local path).
    parts = [(f.filename or key, f.stream) for key in request.files for f in request.files.getlist(key)]
    if parts:
        record, made = imports.add_uploads(record, parts)
        return _tasks_response(imports, record, made)
    url = request.form.get("url")
    if not url:
        raise InvalidData("send files as multipart/form-data, or a form field url=")
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        require_admin(current_identity(), "import server-side files")
        path = imports.server_path(Path(unquote(urlsplit(url).path)))
        record, made = imports.add_path(record, path)
    else:
        record, made = imports.add_remote(record, url)
    return _tasks_response(imports, record, made)


def _check_size(imports: Imports) -> None:
    if request.content_length is not None and request.content_length > imports.max_upload:
        raise TooLarge(f"the upload is larger than {imports.max_upload >> 20} MB")
    request.max_content_length = imports.max_upload


@blueprint.route("/<int:import_id>/tasks/<name>", methods=["PUT"])
def upload_task_file(import_id: int, name: str) -> Response:
    """A task from a file sent as the raw body (``PUT .../tasks/data.zip``); zips are unpacked."""
    imports = _imports()
    record = _record(import_id, "write")
    _check_size(imports)
    if request.content_length == 0:
        raise InvalidData("the body is empty: send the file's bytes")
    record, made = imports.add_uploads(record, [(name, request.stream)])
    return _tasks_response(imports, record, made)


def _task_routes(rule: str) -> list[str]:
    """GeoServer documents both ``tasks`` and ``task`` in a task's path."""
    return [f"/<int:import_id>/tasks/<int:task_id>{rule}", f"/<int:import_id>/task/<int:task_id>{rule}"]


def _route(rule: str, methods: list[str]) -> Any:
    def register(view: Any) -> Any:
        for path in _task_routes(rule):
            blueprint.add_url_rule(path, view.__name__, view, methods=methods)
        return view

    return register


@_route("", ["GET"])
def get_task(import_id: int, task_id: int) -> Response:
    imports = _imports()
    record = _record(import_id)
    return json_response({"task": task_json(imports, import_id, imports.find_task(record, task_id))})


@_route("", ["PUT"])
def update_task(import_id: int, task_id: int) -> Response:
    """A partial task: ``updateMode``, ``layer``, ``target``, ``transformChain`` (wrapped or not)."""
    imports = _imports()
    record = _record(import_id, "write")
    raw = bodies.json_body()
    if not isinstance(raw, dict):
        raise InvalidData("the body must be a task object")
    changes = raw["task"] if isinstance(raw.get("task"), dict) else raw
    record, task = imports.update_task(record, task_id, lambda t: imports.patch_task(t, changes))
    return json_response({"task": task_json(imports, import_id, task)})


@_route("", ["DELETE"])
def delete_task(import_id: int, task_id: int) -> Response:
    imports = _imports()
    imports.delete_task(_record(import_id, "write"), task_id)
    return Response(status=204)


@_route("/layer", ["GET"])
def get_layer(import_id: int, task_id: int) -> Response:
    imports = _imports()
    task = imports.find_task(_record(import_id), task_id)
    return json_response({"layer": layer_json(import_id, task)})


@_route("/layer", ["PUT"])
def update_layer(import_id: int, task_id: int) -> Response:
    imports = _imports()
    record = _record(import_id, "write")
    raw = bodies.json_body()
    changes = raw.get("layer", raw) if isinstance(raw, dict) else raw
    record, task = imports.update_task(record, task_id, lambda t: imports.patch_layer(t, changes))
    return json_response({"task": task_json(imports, import_id, task)})


@_route("/target", ["GET"])
def get_target(import_id: int, task_id: int) -> Response:
    imports = _imports()
    task = imports.find_task(_record(import_id), task_id)
    return json_response(
        {
            "target": {
                "href": _href(import_id, "tasks", task_id, "target"),
                "dataStore": imports.store_json(task["source"]),
            }
        }
    )


@_route("/target", ["PUT"])
def update_target(import_id: int, task_id: int) -> Response:
    imports = _imports()
    record = _record(import_id, "write")
    raw = bodies.json_body()
    target = raw.get("target", raw) if isinstance(raw, dict) else raw
    record, task = imports.update_task(record, task_id, lambda t: imports.patch_task(t, {"target": target}))
    return json_response({"task": task_json(imports, import_id, task)})


@_route("/progress", ["GET"])
def get_progress(import_id: int, task_id: int) -> Response:
    """Features done of total while the task runs; its state and message once it has ended."""
    imports = _imports()
    record = _record(import_id)
    task = imports.find_task(record, task_id)
    out: dict[str, Any] = {"state": task["state"]}
    if task["state"] == RUNNING and record.body.get("job"):
        job = imports.store.find("job", record.body["job"])
        progress = (job.body.get("progress") if job else None) or {}
        if job is not None and job.body.get("message") == f"task {task_id}":
            out.update(progress=progress.get("done", 0), total=progress.get("total", 0))
        else:
            out.update(progress=0, total=task.get("total") or 0)
    elif task["state"] == COMPLETE and task.get("result"):
        out.update(progress=task["result"]["features"], total=task["result"]["features"])
    if task.get("message"):
        out["message"] = task["message"]
    return json_response(out)


@_route("/data", ["GET"])
def get_task_data(import_id: int, task_id: int) -> Response:
    task = _imports().find_task(_record(import_id), task_id)
    return json_response({**_public_data(task["data"]), "href": _href(import_id, "tasks", task_id, "data")})


@_route("/data/files", ["GET"])
def list_task_files(import_id: int, task_id: int) -> Response:
    task = _imports().find_task(_record(import_id), task_id)
    file = task["data"].get("file")
    listed = (
        [{"file": file, "href": _href(import_id, "tasks", task_id, "data", "files", file)}] if file else []
    )
    return json_response({"files": listed})


@_route("/data/files/<path:name>", ["GET"])
def get_task_file(import_id: int, task_id: int, name: str) -> Response:
    task = _imports().find_task(_record(import_id), task_id)
    if task["data"].get("file") != name:
        raise NotFound(f"task {task_id} has no file {name[:200]!r}")
    return json_response(
        {**_public_data(task["data"]), "href": _href(import_id, "tasks", task_id, "data", "files", name)}
    )


@_route("/data/files/<path:name>", ["DELETE"])
def delete_task_file(import_id: int, task_id: int, name: str) -> Response:
    """A task is one file's layer: removing its file removes the task."""
    imports = _imports()
    record = _record(import_id, "write")
    if imports.find_task(record, task_id)["data"].get("file") != name:
        raise NotFound(f"task {task_id} has no file {name[:200]!r}")
    imports.delete_task(record, task_id)
    return Response(status=204)


# -- transforms -------------------------------------------------------------------------------
@_route("/transforms", ["GET"])
def list_transforms(import_id: int, task_id: int) -> Response:
    task = _imports().find_task(_record(import_id), task_id)
    return json_response({"transforms": transforms_json(import_id, task)})


@_route("/transforms", ["POST"])
def append_transform(import_id: int, task_id: int) -> Response:
    imports = _imports()
    record = _record(import_id, "write")
    spec = transforms.parse(_transform_body()).to_json()
    record, task = imports.update_task(
        record, task_id, lambda t: {**t, "transforms": [*t["transforms"], spec]}
    )
    index = len(task["transforms"]) - 1
    return json_response(
        transforms_json(import_id, task)[index], 201, _href(import_id, "tasks", task_id, "transforms", index)
    )


def _transform_body() -> dict[str, Any]:
    raw = bodies.json_body()
    if not isinstance(raw, dict):
        raise InvalidData("a transform is an object with a type")
    return raw.get("transform", raw) if isinstance(raw.get("transform"), dict) else raw


def _transform_index(task: dict[str, Any], task_id: int, index: int) -> int:
    if not 0 <= index < len(task["transforms"]):
        raise NotFound(f"task {task_id} has no transform {index}")
    return index


@_route("/transforms/<int:index>", ["GET"])
def get_transform(import_id: int, task_id: int, index: int) -> Response:
    task = _imports().find_task(_record(import_id), task_id)
    return json_response(transforms_json(import_id, task)[_transform_index(task, task_id, index)])


@_route("/transforms/<int:index>", ["PUT"])
def update_transform(import_id: int, task_id: int, index: int) -> Response:
    imports = _imports()
    record = _record(import_id, "write")
    _transform_index(imports.find_task(record, task_id), task_id, index)
    changes = _transform_body()

    def change(task: dict[str, Any]) -> dict[str, Any]:
        chain = list(task["transforms"])
        chain[index] = transforms.updated(transforms.parse(chain[index]), changes).to_json()
        return {**task, "transforms": chain}

    record, task = imports.update_task(record, task_id, change)
    return json_response(transforms_json(import_id, task)[index])


@_route("/transforms/<int:index>", ["DELETE"])
def delete_transform(import_id: int, task_id: int, index: int) -> Response:
    imports = _imports()
    record = _record(import_id, "write")
    _transform_index(imports.find_task(record, task_id), task_id, index)
    imports.update_task(
        record,
        task_id,
        lambda t: {**t, "transforms": [x for n, x in enumerate(t["transforms"]) if n != index]},
    )
    return Response(status=204)


# -- OpenAPI ---------------------------------------------------------------------------------------
def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths of the importer under ``prefix`` (``/imports`` by default)."""

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def body(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
        return {"required": True, "content": {media: {"schema": schema}}}

    def ok(description: str, schema: dict[str, Any] | None = None, status: str = "200") -> dict[str, Any]:
        out: dict[str, Any] = {"description": description}
        if schema is not None:
            out["content"] = {"application/json": {"schema": schema}}
        return {status: out}

    def errors(*statuses: int) -> dict[str, Any]:
        words = {
            400: "Malformed",
            401: "No valid key",
            403: "Not allowed",
            404: "Not found",
            409: "The import is running",
            413: "Too large",
            422: "Invalid body or data",
            502: "The remote server failed",
        }
        return {
            str(s): {
                "description": words[s],
                "content": {"application/json": {"schema": ref("ImporterErrors")}},
            }
            for s in statuses
        }

    def path_param(name: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}

    flags = [
        {"name": n, "in": "query", "required": False, "schema": {"type": "boolean"}, "description": d}
        for n, d in (("async", "return at once; poll the import"), ("execute", "run the import once created"))
    ]
    iid, tid, index = path_param("importId"), path_param("taskId"), path_param("transformId")
    one_import = {"type": "object", "properties": {"import": ref("Import")}}
    one_task = {"type": "object", "properties": {"task": ref("ImportTask")}}
    tasks = {"type": "object", "properties": {"tasks": {"type": "array", "items": ref("ImportTask")}}}
    created_tasks = {"oneOf": [one_task, tasks]}
    task_base = f"{prefix}/{{importId}}/tasks/{{taskId}}"
    paths: dict[str, Any] = {
        prefix: {
            "get": {
                "summary": "List imports",
                "operationId": "importsList",
                "responses": ok(
                    "The imports",
                    {
                        "type": "object",
                        "properties": {"imports": {"type": "array", "items": ref("ImportSummary")}},
                    },
                ),
            },
            "post": {
                "summary": "Create an import (its data is scanned into tasks)",
                "operationId": "importsCreate",
                "parameters": flags,
                "requestBody": body(one_import),
                "responses": {**ok("The import", one_import, "201"), **errors(400, 401, 403, 404, 422, 502)},
            },
        },
        f"{prefix}/{{importId}}": {
            "parameters": [iid],
            "get": {
                "summary": "An import with its tasks",
                "operationId": "importsGet",
                "responses": {**ok("The import", one_import), **errors(404)},
            },
            "post": {
                "summary": "Run the import's ready tasks",
                "operationId": "importsExecute",
                "parameters": flags[:1],
                "responses": {
                    "204": {"description": "Done (or started, with async)"},
                    **errors(404, 409, 422),
                },
            },
            "put": {
                "summary": "Create an import with a proposed id",
                "operationId": "importsCreateWithId",
                "requestBody": body(one_import),
                "responses": {**ok("The import", one_import, "201"), **errors(400, 422)},
            },
            "delete": {
                "summary": "Delete an import and its files",
                "operationId": "importsDelete",
                "responses": {"204": {"description": "Deleted"}, **errors(404, 409)},
            },
        },
        f"{prefix}/{{importId}}/data": {
            "parameters": [iid],
            "get": {
                "summary": "The import's data",
                "operationId": "importsData",
                "responses": {**ok("The data", ref("ImportData")), **errors(404)},
            },
        },
        f"{prefix}/{{importId}}/tasks": {
            "parameters": [iid],
            "get": {
                "summary": "The import's tasks",
                "operationId": "importTasksList",
                "responses": {**ok("The tasks", tasks), **errors(404)},
            },
            "post": {
                "summary": "Create tasks from uploaded files (multipart: every part) or a url form field",
                "operationId": "importTasksCreate",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": {"type": "string", "format": "binary"},
                            }
                        },
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "required": ["url"],
                                "properties": {"url": {"type": "string"}},
                            }
                        },
                    },
                },
                "responses": {
                    **ok("The new task(s)", created_tasks, "201"),
                    **errors(403, 404, 409, 413, 422, 502),
                },
            },
        },
        f"{prefix}/{{importId}}/tasks/{{fileName}}": {
            "parameters": [
                iid,
                {"name": "fileName", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "put": {
                "summary": "Create tasks from a file sent as the body (a zip is unpacked)",
                "operationId": "importTasksUpload",
                "requestBody": body({"type": "string", "format": "binary"}, "application/octet-stream"),
                "responses": {**ok("The new task(s)", created_tasks, "201"), **errors(404, 409, 413, 422)},
            },
        },
        task_base: {
            "parameters": [iid, tid],
            "get": {
                "summary": "A task",
                "operationId": "importTaskGet",
                "responses": {**ok("The task", one_task), **errors(404)},
            },
            "put": {
                "summary": "Change a task (updateMode, layer, target, transformChain; partial)",
                "operationId": "importTaskUpdate",
                "requestBody": body({"oneOf": [one_task, ref("ImportTask")]}),
                "responses": {**ok("The task", one_task), **errors(404, 409, 422)},
            },
            "delete": {
                "summary": "Delete a task",
                "operationId": "importTaskDelete",
                "responses": {"204": {"description": "Deleted"}, **errors(404, 409)},
            },
        },
        f"{task_base}/layer": {
            "parameters": [iid, tid],
            "get": {
                "summary": "The task's target layer",
                "operationId": "importTaskLayer",
                "responses": {
                    **ok("The layer", {"type": "object", "properties": {"layer": ref("ImportLayer")}}),
                    **errors(404),
                },
            },
            "put": {
                "summary": "Change the target layer (name, title, srs, attributes)",
                "operationId": "importTaskLayerUpdate",
                "requestBody": body({"type": "object", "properties": {"layer": ref("ImportLayer")}}),
                "responses": {**ok("The task", one_task), **errors(404, 409, 422)},
            },
        },
        f"{task_base}/target": {
            "parameters": [iid, tid],
            "get": {
                "summary": "The task's target store",
                "operationId": "importTaskTarget",
                "responses": {**ok("The target", {"type": "object"}), **errors(404)},
            },
            "put": {
                "summary": "Change the target store",
                "operationId": "importTaskTargetUpdate",
                "requestBody": body({"type": "object"}),
                "responses": {**ok("The task", one_task), **errors(404, 409, 422)},
            },
        },
        f"{task_base}/progress": {
            "parameters": [iid, tid],
            "get": {
                "summary": "Features done of total",
                "operationId": "importTaskProgress",
                "responses": {**ok("The progress", ref("ImportProgress")), **errors(404)},
            },
        },
        f"{task_base}/data": {
            "parameters": [iid, tid],
            "get": {
                "summary": "The task's data",
                "operationId": "importTaskData",
                "responses": {**ok("The data", ref("ImportData")), **errors(404)},
            },
        },
        f"{task_base}/data/files": {
            "parameters": [iid, tid],
            "get": {
                "summary": "The task's files",
                "operationId": "importTaskFiles",
                "responses": {**ok("The files", {"type": "object"}), **errors(404)},
            },
        },
        f"{task_base}/transforms": {
            "parameters": [iid, tid],
            "get": {
                "summary": "The task's transforms",
                "operationId": "importTransformsList",
                "responses": {
                    **ok(
                        "The transforms",
                        {
                            "type": "object",
                            "properties": {"transforms": {"type": "array", "items": ref("ImportTransform")}},
                        },
                    ),
                    **errors(404),
                },
            },
            "post": {
                "summary": "Append a transform",
                "operationId": "importTransformsAppend",
                "requestBody": body(ref("ImportTransform")),
                "responses": {**ok("The transform", ref("ImportTransform"), "201"), **errors(404, 409, 422)},
            },
        },
        f"{task_base}/transforms/{{transformId}}": {
            "parameters": [iid, tid, index],
            "get": {
                "summary": "A transform",
                "operationId": "importTransformGet",
                "responses": {**ok("The transform", ref("ImportTransform")), **errors(404)},
            },
            "put": {
                "summary": "Change a transform (partial)",
                "operationId": "importTransformUpdate",
                "requestBody": body(ref("ImportTransform")),
                "responses": {**ok("The transform", ref("ImportTransform")), **errors(404, 409, 422)},
            },
            "delete": {
                "summary": "Remove a transform",
                "operationId": "importTransformDelete",
                "responses": {"204": {"description": "Removed"}, **errors(404, 409)},
            },
        },
    }
    state = {
        "type": "string",
        "enum": [
            "PENDING",
            "READY",
            "RUNNING",
            "COMPLETE",
            "COMPLETE_ERROR",
            "INIT",
            "INIT_ERROR",
            "NO_CRS",
            "NO_BOUNDS",
            "NO_FORMAT",
            "BAD_FORMAT",
            "ERROR",
        ],
    }
    schemas = {
        "ImporterErrors": {
            "type": "object",
            "required": ["errors"],
            "properties": {"errors": {"type": "array", "items": {"type": "string"}}},
        },
        "ImportSummary": {
            "type": "object",
            "properties": {"id": {"type": "integer"}, "href": {"type": "string"}, "state": state},
        },
        "ImportData": {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["file", "directory", "remote", "database", "table"]},
                "format": {"type": "string", "nullable": True},
                "file": {"type": "string", "nullable": True},
                "location": {"type": "string"},
                "source": {"type": "string"},
                "table": {"type": "string"},
                "href": {"type": "string"},
            },
        },
        "Import": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "href": {"type": "string"},
                "state": state,
                "message": {"type": "string"},
                "targetWorkspace": {"type": "object"},
                "targetStore": {"type": "object"},
                "data": ref("ImportData"),
                "transforms": {"type": "array", "items": ref("ImportTransform")},
                "tasks": {"type": "array", "items": ref("ImportTask")},
            },
        },
        "ImportLayer": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "href": {"type": "string"},
                "title": {"type": "string"},
                "originalName": {"type": "string", "nullable": True},
                "nativeName": {"type": "string", "nullable": True},
                "srs": {"type": "string", "nullable": True},
                "bbox": {"type": "object"},
                "attributes": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "binding": {"type": "string"}},
                    },
                },
            },
        },
        "ImportTransform": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"type": "string", "enum": list(transforms.TYPES)},
                "href": {"type": "string"},
            },
            "additionalProperties": True,
        },
        "ImportTask": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "href": {"type": "string"},
                "state": state,
                "updateMode": {"type": "string", "enum": ["CREATE", "REPLACE", "APPEND"]},
                "errorMessage": {"type": "string"},
                "data": ref("ImportData"),
                "target": {"type": "object"},
                "progress": {"type": "string"},
                "layer": ref("ImportLayer"),
                "transformChain": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "transforms": {"type": "array", "items": ref("ImportTransform")},
                    },
                },
                "published": {"type": "object"},
            },
        },
        "ImportProgress": {
            "type": "object",
            "properties": {
                "state": state,
                "progress": {"type": "integer"},
                "total": {"type": "integer"},
                "message": {"type": "string"},
            },
        },
    }
    return {"paths": paths, "components": {"schemas": schemas}}
