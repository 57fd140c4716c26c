"""Jobs of the platform API (``/jobs``): a chain of rules run over a dataset or a collection.

``POST /jobs`` answers at once with a PENDING job; the chain runs on a job worker
(:func:`server.rule_runs.run_rules`) and its result is a new collection, published
as soon as it is written. A job is the job record of :mod:`server.jobs` (so the
queue, heartbeats and lost-worker rule are the same as for imports); this module
shows it the way the text does: ``status`` PENDING, RUNNING, COMPLETED, FAILED or
CANCELLED, times in ISO 8601, ``progress``, ``error`` and the result collection with
its links. ``GET /jobs/{id}/download?f=`` exports the result.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, request

from providers.base import Query
from providers.convert import FORMATS as CONVERT_FORMATS
from providers.convert import convert
from providers.errors import Conflict, InvalidData, InvalidQuery, NotFound
from providers.export import export
from providers.files import Layer
from providers.store import Record
from server import bodies, jobs, links, owned
from server.attachments import written_attachment
from server.auth import current_auth, current_identity
from server.responses import json_response
from server.rules import iso, page, rule_steps

blueprint = Blueprint("rule_jobs", __name__)

TASK = "run_rules"
#: The text's statuses for the job records' states.
STATUS = {
    jobs.PENDING: "PENDING",
    jobs.RUNNING: "RUNNING",
    jobs.COMPLETE: "COMPLETED",
    jobs.FAILED: "FAILED",
    jobs.CANCELLED: "CANCELLED",
}
DOWNLOADS = {"gpkg", "geojson", "fgb", "parquet"}
#: Features a download may hold.
MAX_DOWNLOAD = 10_000_000


def job_view(record: Record) -> dict[str, Any]:
    body = record.body
    args = body.get("args") or {}
    progress = body.get("progress") or {"done": 0, "total": 0}
    total = progress.get("total") or 0
    out: dict[str, Any] = {
        "id": record.key,
        "name": args.get("name"),
        "status": STATUS.get(body["state"], body["state"]),
        "dataset_id": args.get("input"),
        "rule_ids": args.get("rule_ids"),
        "trigger_id": args.get("trigger"),
        "created_at": iso(body.get("created_at")),
        "started_at": iso(body.get("started_at")),
        "completed_at": iso(body.get("finished_at")),
        "progress": {
            **progress,
            "percent": round(100 * progress.get("done", 0) / total, 1) if total else None,
        },
        "error": body.get("message") if body["state"] in (jobs.FAILED, jobs.CANCELLED) else None,
        "result": None,
    }
    result = body.get("result")
    if body["state"] == jobs.COMPLETE and result:
        cid = result["collection"]
        out["result"] = {
            **result,
            "links": [
                links.link(links.url(f"/collections/{cid}"), "collection", "application/json", cid),
                links.link(links.url(f"/collections/{cid}/items"), "items", "application/geo+json"),
                links.link(
                    links.url(f"/collections/{cid}/tiles/WebMercatorQuad/tilejson.json"),
                    "tiles",
                    "application/json",
                ),
                links.link(
                    links.url(f"/jobs/{record.key}/download?f=gpkg"),
                    "enclosure",
                    CONVERT_FORMATS["gpkg"].media_type,
                ),
            ],
        }
    return out


def find_job(job_id: str, action: owned.Action = "read") -> Record:
    """The job, with the loss of its worker written in if its heartbeat has stopped: the
    answer is right even when no worker is left to notice."""
    record = owned.find(jobs.KIND, job_id, action, f"job {job_id[:100]}")
    if record.body.get("kind") != TASK:
        raise NotFound(f"job {job_id[:100]} not found")
    queue = _state().jobs
    silent = time.time() - (record.body.get("heartbeat") or 0)
    if record.body["state"] == jobs.RUNNING and silent > queue.settings["lost_after_s"] and queue.reap():
        record = owned.find(jobs.KIND, job_id, action, f"job {job_id[:100]}")
    return record


def _state() -> Any:
    return current_app.extensions["geoharbor"]


@blueprint.route("/jobs", methods=["POST"])
def create_job() -> Response:
    """Check the dataset and the rules now (4xx at once), then queue the chain."""
    current_auth().require_create(current_identity(), "a job")
    raw = bodies.json_body()
    if not isinstance(raw, dict):
        raise InvalidData("a job is an object: {name, dataset_id, parameters: {rule_ids}}")
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise InvalidData("name: a string of at most 200 characters")
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidData("parameters: must be an object")
    source = raw.get("dataset_id")
    if not isinstance(source, str):
        raise InvalidData("dataset_id: the id of a dataset or a collection is required")
    check_input(source)
    steps = rule_steps(parameters.get("rule_ids"))
    output = parameters.get("output")
    if output is not None and (not isinstance(output, str) or output in _state().registry.collections):
        raise InvalidData("parameters.output: the name of a new collection")
    args = {
        "name": name,
        "input": source,
        "layer": parameters.get("layer"),
        "rule_ids": [record.key for record, _step in steps],
        "output": output,
        "title": name,
        "owner": owned.owner(),
    }
    job_id = _state().jobs.defer(TASK, args, owned.owner())
    record = owned.store().find(jobs.KIND, job_id)
    return json_response(job_view(record), 201, f"/jobs/{job_id}")


def check_input(ref: str) -> None:
    """A collection the caller may read, or a dataset it may read; InvalidData otherwise."""
    registry = _state().registry
    coll = registry.collections.get(ref)
    if coll is not None:
        auth, identity = current_auth(), current_identity()
        if auth.allowed(identity, "read", auth.collection_rights(identity, coll)):
            return
    else:
        try:
            owned.find("dataset", str(uuid.UUID(ref)), "read", "dataset")
            return
        except (ValueError, NotFound):
            pass
    raise InvalidData(f"dataset_id: no dataset or collection {ref[:100]!r}")


@blueprint.route("/jobs", methods=["GET"])
def list_jobs() -> Response:
    """The caller's jobs, newest first; ``status`` filters (any case)."""
    records = [r for r in owned.store().list(jobs.KIND) if r.body.get("kind") == TASK]
    records = owned.readable(sorted(records, key=lambda r: r.created, reverse=True))
    status = request.args.get("status")
    if status:
        wanted = {s.strip().upper() for s in status.split(",")}
        unknown = wanted - set(STATUS.values())
        if unknown:
            raise InvalidQuery(
                f"status: unknown {', '.join(sorted(unknown))}; use {', '.join(STATUS.values())}"
            )
        records = [r for r in records if STATUS.get(r.body["state"]) in wanted]
    return page(records, job_view)


@blueprint.route("/jobs/<job_id>", methods=["GET"])
def get_job(job_id: str) -> Response:
    return json_response(job_view(find_job(job_id)))


@blueprint.route("/jobs/<job_id>/cancel", methods=["POST"])
def cancel_job(job_id: str) -> Response:
    """A waiting job never starts; a running one stops at its next step. 409 once it has ended."""
    record = find_job(job_id, "write")
    if record.body["state"] not in (jobs.PENDING, jobs.RUNNING):
        raise Conflict(f"job {job_id} has ended ({STATUS.get(record.body['state'])}): nothing to cancel")
    _state().jobs.cancel(job_id)
    return json_response(job_view(find_job(job_id)))


@blueprint.route("/jobs/<job_id>/download", methods=["GET"])
def download_job(job_id: str) -> Response:
    """The result collection as a file: ``f`` = gpkg (default), geojson, fgb or parquet."""
    record = find_job(job_id)
    fmt = (request.args.get("f") or request.args.get("format") or "gpkg").lower()
    if fmt not in DOWNLOADS:
        raise InvalidQuery(f"f: one of {', '.join(sorted(DOWNLOADS))}")
    if record.body["state"] != jobs.COMPLETE or not record.body.get("result"):
        raise Conflict(f"job {job_id} has no result yet ({STATUS.get(record.body['state'])})")
    cid = record.body["result"]["collection"]
    coll = _state().registry.get(cid)
    auth, identity = current_auth(), current_identity()
    auth.require_collection(identity, coll, "read")
    provider = coll.provider

    def write(directory: Path) -> Path:
        """The collection as a GeoPackage, converted from there to the other formats."""
        (directory / "gpkg").mkdir()
        gpkg = export(
            provider, Query(crs=provider.schema.storage_crs), "gpkg", directory / "gpkg", cid, MAX_DOWNLOAD
        )
        if fmt == "gpkg":
            return gpkg
        return convert(gpkg, Layer(cid, None, 0, gpkg.name, gpkg.stem, None), "GPKG", fmt, directory, cid)

    media = CONVERT_FORMATS[fmt].media_type
    return written_attachment(write, media, cid)


# -- OpenAPI -----------------------------------------------------------------------------------------
def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths of the platform's jobs."""
    from server.rules import PAGE_PARAMS, answer, detail_errors, id_param, json_body_of, page_of

    job = {"$ref": "#/components/schemas/Job"}
    job_in = {
        "type": "object",
        "required": ["dataset_id", "parameters"],
        "properties": {
            "name": {"type": "string"},
            "dataset_id": {"type": "string", "description": "a collection id or an uploaded dataset's uuid"},
            "parameters": {
                "type": "object",
                "required": ["rule_ids"],
                "properties": {
                    "rule_ids": {"type": "array", "items": {"type": "string"}},
                    "output": {"type": "string"},
                    "layer": {"type": "string"},
                },
            },
        },
    }
    status = {"name": "status", "in": "query", "required": False, "schema": {"type": "string"}}
    files = {
        CONVERT_FORMATS[f].media_type: {"schema": {"type": "string", "format": "binary"}}
        for f in sorted(DOWNLOADS)
    }
    paths = {
        f"{prefix}/jobs": {
            "get": {
                "summary": "Jobs, newest first",
                "operationId": "jobsList",
                "parameters": [status, *PAGE_PARAMS],
                "responses": {
                    **answer("A page of jobs", page_of("#/components/schemas/Job")),
                    **detail_errors(400),
                },
            },
            "post": {
                "summary": "Run rules over a dataset or collection (answers PENDING at once)",
                "operationId": "jobsCreate",
                "requestBody": json_body_of(job_in),
                "responses": {**answer("The job", job, "201"), **detail_errors(401, 403, 422)},
            },
        },
        f"{prefix}/jobs/{{id}}": {
            "parameters": [id_param("id")],
            "get": {
                "summary": "A job",
                "operationId": "jobsGet",
                "responses": {**answer("The job", job), **detail_errors(404)},
            },
        },
        f"{prefix}/jobs/{{id}}/cancel": {
            "parameters": [id_param("id")],
            "post": {
                "summary": "Cancel a waiting or running job",
                "operationId": "jobsCancel",
                "responses": {**answer("The job", job), **detail_errors(404, 409)},
            },
        },
        f"{prefix}/jobs/{{id}}/download": {
            "parameters": [
                id_param("id"),
                {
                    "name": "f",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": sorted(DOWNLOADS)},
                },
            ],
            "get": {
                "summary": "The result collection as a file",
                "operationId": "jobsDownload",
                "responses": {
                    "200": {"description": "The file", "content": files},
                    **detail_errors(400, 404, 409),
                },
            },
        },
    }
    stamp = {"type": "string", "format": "date-time", "nullable": True}
    schemas = {
        "Job": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string", "nullable": True},
                "status": {"type": "string", "enum": sorted(set(STATUS.values()))},
                "dataset_id": {"type": "string"},
                "rule_ids": {"type": "array", "items": {"type": "string"}},
                "created_at": stamp,
                "started_at": stamp,
                "completed_at": stamp,
                "progress": {"type": "object"},
                "error": {"type": "string", "nullable": True},
                "result": {"type": "object", "nullable": True},
            },
        },
    }
    return {"paths": paths, "components": {"schemas": schemas}}
