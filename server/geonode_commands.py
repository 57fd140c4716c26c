"""GeoNode's ``management/commands`` over HTTP, mapped onto geoharbor's jobs.

GeoNode runs a few Django management commands as Celery jobs for admins. Here each
supported command is a job task (:mod:`server.jobs`, queued like every background
load), and a *management job* (store record, kind ``management_job``, integer id as
GeoNode's) records who asked for which command with which arguments and points at
its job, from which its status is read. Supported:

* ``ping_mngmt_commands_http``: GeoNode's own check that commands run (answers pong);
* ``sync_geonode_datasets`` (and its old name ``updatelayers``): index every
  published collection in the catalogue now (``--updatethumbnails``: and redraw
  their thumbnails);
* ``set_all_layers_metadata`` (``set_all_datasets_metadata``): derive every
  dataset's catalogue metadata from its data again, even where nothing seems changed;
* ``update_thumbnails``: redraw every dataset's thumbnail from its data (pictures a
  client set are kept);
* ``importlayers``: import server-side files or directories (under ``imports.roots``)
  through the importer, each path an import.

Other GeoNode commands are listed with ``"supported": false`` and refused (400):
they manage Django or GeoServer state geoharbor does not have.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from providers.errors import Conflict, InvalidData, InvalidQuery, NotFound
from providers.store import Record, Store
from server import bodies, datasets, errors, jobs, owned
from server.auth import current_identity, require_admin
from server.geonode_executions import iso
from server.jobs import JobContext, task
from server.responses import json_response

blueprint = Blueprint("geonode_commands", __name__)

PREFIX = "/api/v2/management"
KIND = "management_job"
CREATED, QUEUED, STARTED, FINISHED = "CREATED", "QUEUED", "STARTED", "FINISHED"

#: name -> (job task, help, fixed job arguments); None as task: listed, not supported here.
COMMANDS: dict[str, tuple[str | None, str, dict[str, Any]]] = {
    "ping_mngmt_commands_http": ("management_ping", "Answers pong: checks that commands run.", {}),
    "sync_geonode_datasets": (
        "catalogue_sync",
        "Index every published collection in the catalogue now. kwargs: updatethumbnails (bool).",
        {},
    ),
    "updatelayers": ("catalogue_sync", "Old name of sync_geonode_datasets.", {}),
    "set_all_layers_metadata": (
        "catalogue_sync",
        "Derive every dataset's catalogue metadata from its data again.",
        {"force": True},
    ),
    "set_all_datasets_metadata": (
        "catalogue_sync",
        "GeoNode 4's name of set_all_layers_metadata.",
        {"force": True},
    ),
    "update_thumbnails": ("update_thumbnails", "Redraw every dataset's thumbnail from its data.", {}),
    "importlayers": (
        "import_paths",
        "Import server-side files or directories (args: paths under imports.roots), each path an import.",
        {},
    ),
    "sync_geonode_maps": (
        None,
        "GeoNode maps live in GeoServer; geoharbor's maps are indexed as they change.",
        {},
    ),
    "set_layers_permissions": (None, "Use PUT /api/v2/resources/{pk}/permissions.", {}),
    "migrate_baseurl": (None, "geoharbor builds its links from the request or server.url.", {}),
    "fixsitename": (None, "No Django site to fix.", {}),
    "rebuild_index": (None, "The catalogue index follows the registry by itself.", {}),
}


def install(app: Flask) -> None:
    app.register_blueprint(blueprint, url_prefix=PREFIX)
    errors.use_format(app, PREFIX, datasets.detail_error)


def _answer(data: Any, status: int = 200) -> Response:
    """GeoNode's envelope of these routes."""
    return json_response({"success": True, "error": None, "data": data}, status)


def _state() -> Any:
    return current_app.extensions["geoharbor"]


def _store() -> Store:
    return _state().registry.store


def _admin() -> None:
    require_admin(current_identity(), "run management commands")


def _command(name: str) -> tuple[str, dict[str, Any]]:
    found = COMMANDS.get(name)
    if found is None:
        raise NotFound(f"no management command {name[:100]!r}")
    job_task, _, fixed = found
    if job_task is None:
        raise InvalidQuery(f"{name} is not supported by geoharbor: {found[1]}")
    return job_task, fixed


# -- jobs ------------------------------------------------------------------------------------------
def _status(body: dict[str, Any]) -> tuple[str, str | None, dict[str, Any] | None]:
    """(status, output message, task meta) of a management job, from its job record."""
    if not body.get("job_id"):
        return CREATED, None, None
    job = _store().find(jobs.KIND, body["job_id"])
    if job is None:
        return FINISHED, "the job is gone", {"status": "FAILURE"}
    state = job.body.get("state")
    if state == jobs.PENDING:
        return QUEUED, None, {"status": "PENDING"}
    if state == jobs.RUNNING:
        return STARTED, job.body.get("message"), {"status": "STARTED", "progress": job.body.get("progress")}
    result = job.body.get("result") or {}
    if state == jobs.COMPLETE:
        return (
            FINISHED,
            result.get("output") or job.body.get("message"),
            {"status": "SUCCESS", "result": result},
        )
    return FINISHED, job.body.get("message"), {"status": "FAILURE" if state == jobs.FAILED else "REVOKED"}


def job_view(record: Record) -> dict[str, Any]:
    body = record.body
    status, output, meta = _status(body)
    job = _store().find(jobs.KIND, body["job_id"]) if body.get("job_id") else None
    return {
        "id": record.id,
        "command": body["command"],
        "app_name": "geoharbor",
        "user": body.get("user"),
        "args": body.get("args") or [],
        "kwargs": body.get("kwargs") or {},
        "created_at": iso(body.get("created")),
        "modified_at": iso(record.modified),
        "start_time": iso(job.body.get("started_at")) if job else None,
        "end_time": iso(job.body.get("finished_at")) if job else None,
        "status": status,
        "output_message": output,
        "celery_result_id": body.get("job_id"),
        "celery_task_meta": meta,
    }


def _start(record: Record) -> Record:
    """Queue the job of a management job that has none yet."""
    if record.body.get("job_id"):
        raise Conflict(f"management job {record.id} has already started")
    job_task, fixed = _command(record.body["command"])
    args = {
        **fixed,
        "args": record.body.get("args") or [],
        "kwargs": record.body.get("kwargs") or {},
        "owner": record.body.get("user"),
    }
    store = _store()

    def remember(job_id: str) -> None:
        current = store.get(KIND, record.id)
        store.update(KIND, record.id, {**current.body, "job_id": job_id})

    _state().jobs.defer(job_task, args, record.body.get("user"), before=remember)
    return store.get(KIND, record.id)


def _create(name: str) -> Response:
    _admin()
    _command(name)
    raw = bodies.json_body() if request.get_data(cache=True) else {}
    if not isinstance(raw, dict):
        raise InvalidData('the body must be {"args": [...], "kwargs": {...}, "autostart": true}')
    args, kwargs = raw.get("args") or [], raw.get("kwargs") or {}
    if (
        not isinstance(args, list)
        or not all(isinstance(a, str) for a in args)
        or not isinstance(kwargs, dict)
    ):
        raise InvalidData("args must be a list of texts and kwargs an object")
    record = _store().insert(
        KIND,
        {
            "command": name,
            "args": args,
            "kwargs": kwargs,
            "user": owned.owner(),
            "created": time.time(),
            "job_id": None,
        },
    )
    if raw.get("autostart", True):
        record = _start(record)
    return _answer(job_view(record), 201)


def _job(job_id: int, name: str | None = None) -> Record:
    try:
        record = _store().get(KIND, job_id)
    except NotFound:
        raise NotFound(f"management job {job_id} not found") from None
    if name is not None and record.body["command"] != name:
        raise NotFound(f"management job {job_id} of {name[:100]!r} not found")
    return record


def _jobs(name: str | None) -> list[dict[str, Any]]:
    records = [r for r in _store().list(KIND) if name is None or r.body["command"] == name]
    wanted = request.args.get("status")
    rows = [job_view(r) for r in sorted(records, key=lambda r: r.id, reverse=True)]
    return [r for r in rows if wanted is None or r["status"] == wanted]


# -- routes ------------------------------------------------------------------------------------------
@blueprint.route("/commands", methods=["GET"])
def list_commands() -> Response:
    _admin()
    return _answer([name for name, (job_task, _, _) in COMMANDS.items() if job_task is not None])


@blueprint.route("/commands/<name>", methods=["GET"])
def describe_command(name: str) -> Response:
    _admin()
    if name not in COMMANDS:
        raise NotFound(f"no management command {name[:100]!r}")
    job_task, text, _ = COMMANDS[name]
    return _answer({"name": name, "help": text, "supported": job_task is not None})


@blueprint.route("/commands", methods=["POST"])
def run_named() -> Response:
    raw = bodies.json_body()
    name = raw.get("command") if isinstance(raw, dict) else None
    if not isinstance(name, str):
        raise InvalidData('name the command: {"command": "sync_geonode_datasets", "args": [], "kwargs": {}}')
    return _create(name)


@blueprint.route("/commands/<name>", methods=["POST"])
def run_command(name: str) -> Response:
    return _create(name)


@blueprint.route("/commands/<name>/jobs", methods=["GET"])
@blueprint.route("/jobs", methods=["GET"], defaults={"name": None})
def list_jobs(name: str | None) -> Response:
    _admin()
    rows = _jobs(name)
    return json_response({"total": len(rows), "page": 1, "page_size": len(rows), "results": rows})


@blueprint.route("/commands/<name>/jobs/<int:job_id>", methods=["GET"])
@blueprint.route("/jobs/<int:job_id>", methods=["GET"], defaults={"name": None})
def get_job(job_id: int, name: str | None) -> Response:
    _admin()
    return json_response(job_view(_job(job_id, name)))


@blueprint.route("/commands/<name>/jobs/<int:job_id>/status", methods=["GET"])
@blueprint.route("/jobs/<int:job_id>/status", methods=["GET"], defaults={"name": None})
def job_status(job_id: int, name: str | None) -> Response:
    _admin()
    view = job_view(_job(job_id, name))
    keep = (
        "id",
        "status",
        "celery_result_id",
        "output_message",
        "celery_task_meta",
        "start_time",
        "end_time",
    )
    return json_response({k: view[k] for k in keep})


@blueprint.route("/commands/<name>/jobs/<int:job_id>/start", methods=["PATCH"])
@blueprint.route("/jobs/<int:job_id>/start", methods=["PATCH"], defaults={"name": None})
def start_job(job_id: int, name: str | None) -> Response:
    _admin()
    return json_response(job_view(_start(_job(job_id, name))))


@blueprint.route("/commands/<name>/jobs/<int:job_id>/stop", methods=["PATCH"])
@blueprint.route("/jobs/<int:job_id>/stop", methods=["PATCH"], defaults={"name": None})
def stop_job(job_id: int, name: str | None) -> Response:
    """Cancel the job: a queued one never runs, a running one stops at its next progress report."""
    _admin()
    record = _job(job_id, name)
    if record.body.get("job_id"):
        _state().jobs.cancel(record.body["job_id"])
    return json_response(job_view(record))


# -- the tasks ---------------------------------------------------------------------------------------
@task("management_ping")
def ping(
    job: JobContext, *, args: list[str], kwargs: dict[str, Any], owner: int | None = None
) -> dict[str, Any]:
    return {"output": "pong"}


@task("catalogue_sync")
def catalogue_sync_task(
    job: JobContext, *, args: list[str], kwargs: dict[str, Any], owner: int | None = None, force: bool = False
) -> dict[str, Any]:
    """Bring the catalogue index up to date with the registry (``force``: rewrite every row)."""
    from server.auth import Auth
    from server.catalogue_sync import CatalogueSync

    registry = job.registry
    registry.sync()
    follower = CatalogueSync(registry, Auth(registry.config, registry))
    catalogue = follower.catalogue
    if force:
        for pk in catalogue.hashes("dataset"):
            catalogue.patch(pk, {"sync_hash": None})
    follower.sync_datasets()
    follower.sync_maps()
    indexed = len(catalogue.hashes("dataset"))
    output = f"{indexed} datasets indexed"
    if _truthy(kwargs.get("updatethumbnails")):
        drawn = _redraw(job)
        output += f", {drawn} thumbnails drawn"
    return {"output": output, "datasets": indexed}


@task("update_thumbnails")
def update_thumbnails(
    job: JobContext, *, args: list[str], kwargs: dict[str, Any], owner: int | None = None
) -> dict[str, Any]:
    drawn = _redraw(job)
    return {"output": f"{drawn} thumbnails drawn", "thumbnails": drawn}


def _redraw(job: JobContext) -> int:
    """Redraw the thumbnail of every published dataset the catalogue lists (client pictures kept)."""
    from providers.catalogue import Catalogue
    from server.geonode_thumbnails import current_png

    registry = job.registry
    registry.sync()
    catalogue = Catalogue(registry.store)
    pks = list(catalogue.hashes("dataset"))
    drawn = 0
    for number, pk in enumerate(pks):
        job.progress(number, len(pks), "drawing thumbnails")
        resource = catalogue.get(pk)
        coll = registry.collections.get(resource.get("alternate") or "")
        if coll is None or coll.provider.schema.bbox is None:
            continue
        current_png(pk, coll, registry.store, force=True)
        drawn += 1
    return drawn


@task("import_paths")
def import_paths(
    job: JobContext, *, args: list[str], kwargs: dict[str, Any], owner: int | None = None
) -> dict[str, Any]:
    """``importlayers``: each server path an import, run here (paths must be under imports.roots)."""
    from server.geonode_uploads import fit_names
    from server.imports import Imports

    if not args:
        raise InvalidData("importlayers needs the paths to import as args")
    registry = job.registry
    imports = Imports(registry, jobs.Jobs(registry.config, registry))
    resources, messages = [], []
    for path in args:
        checked = imports.server_path(Path(path))
        data = (
            {"type": "directory", "location": str(checked)}
            if checked.is_dir()
            else {"type": "file", "file": str(checked)}
        )
        record = imports.init(imports.create({"data": data}, owner))
        record = fit_names(registry, imports, record, [t["id"] for t in record.body["tasks"]], None)
        if not any(t["state"] == "READY" for t in record.body["tasks"]):
            messages.append(f"{path}: nothing to import")
            continue
        imports.start(record, "running")
        done = imports.execute(int(record.key or 0), job)
        record = imports.get(int(record.key or 0))
        for t in record.body["tasks"]:
            if t.get("result"):
                resources.append({"id": t["result"]["layer_id"], "alternate": t["result"]["collection"]})
            elif t.get("message"):
                messages.append(f"{path}: {t['message']}")
        messages.append(f"{path}: import {done['import']}")
    return {"output": "; ".join(messages), "resources": resources}


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true", "yes")
