"""The capabilities as OGC API - Processes (``/processes``), on the same job store as ``/jobs``.

Each capability is a process whose inputs are ``input`` (the collection or dataset to
run on) and the properties of its configuration schema; its one output, ``result``,
is the collection the run publishes. Execution is synchronous (the response holds the
result) or, with ``Prefer: respond-async``, asynchronous: 201 with the job's status
URL. A process job is a ``run_rules`` job record like those of ``/jobs``; its OGC
status document lives at ``/processes/jobs/{jobId}`` because the platform API's own
``/jobs/{id}`` answers in the platform's format, and both must stay reachable.
Clients follow the ``Location`` header and the ``links``, so the path is theirs to read.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, request

from providers import capabilities
from providers.errors import InvalidData, NotFound
from providers.store import Record
from server import bodies, jobs, links, owned
from server.auth import current_auth, current_identity
from server.responses import json_response
from server.rule_jobs import TASK, check_input
from server.rules import iso

blueprint = Blueprint("processes", __name__)

VERSION = "1.0.0"
#: OGC job status of each job record state.
STATUS = {
    jobs.PENDING: "accepted",
    jobs.RUNNING: "running",
    jobs.COMPLETE: "successful",
    jobs.FAILED: "failed",
    jobs.CANCELLED: "dismissed",
}


def _summary(capability: capabilities.Capability) -> dict[str, Any]:
    return {
        "id": capability.name,
        "title": capability.name.replace("_", " "),
        "description": capability.description,
        "version": VERSION,
        "jobControlOptions": ["sync-execute", "async-execute", "dismiss"],
        "outputTransmission": ["value"],
        "links": [
            links.link(links.url(f"/processes/{capability.name}"), "self", "application/json"),
            links.link(
                links.url(f"/processes/{capability.name}/execution"),
                "http://www.opengis.net/def/rel/ogc/1.0/execute",
                "application/json",
            ),
        ],
    }


def _description(capability: capabilities.Capability) -> dict[str, Any]:
    """The process: ``input`` plus one input per property of the capability's schema."""
    properties = capability.schema.get("properties", {})
    required = set(capability.schema.get("required", []))
    inputs: dict[str, Any] = {
        "input": {
            "title": "collection or dataset",
            "description": "the id of the collection (or uploaded dataset) to run on",
            "schema": {"type": "string"},
            "minOccurs": 1,
            "maxOccurs": 1,
        }
    }
    for name, schema in properties.items():
        inputs[name] = {
            "title": schema.get("title", name),
            "description": schema.get("description", ""),
            "schema": schema,
            "minOccurs": 1 if name in required else 0,
            "maxOccurs": 1,
        }
    outputs = {
        "result": {
            "title": "the published collection",
            "schema": {
                "type": "object",
                "properties": {"collection": {"type": "string"}, "features": {"type": "integer"}},
            },
        }
    }
    return {**_summary(capability), "inputs": inputs, "outputs": outputs}


@blueprint.route("/processes", methods=["GET"])
def list_processes() -> Response:
    items = [_summary(c) for c in capabilities.CAPABILITIES.values()]
    return json_response(
        {"processes": items, "links": [links.link(links.url("/processes"), "self", "application/json")]}
    )


@blueprint.route("/processes/<process_id>", methods=["GET"])
def get_process(process_id: str) -> Response:
    return json_response(_description(capabilities.get(process_id)))


@blueprint.route("/processes/<process_id>/execution", methods=["POST"])
def execute(process_id: str) -> Response:
    """Run the capability on ``inputs.input`` with the other inputs as its configuration."""
    capability = capabilities.get(process_id)
    current_auth().require_create(current_identity(), "a process job")
    raw = bodies.json_body()
    inputs = raw.get("inputs") if isinstance(raw, dict) else None
    if not isinstance(inputs, dict):
        raise InvalidData('the body must be {"inputs": {"input": <collection>, ...}}')
    source = inputs.get("input")
    if not isinstance(source, str):
        raise InvalidData("inputs.input: the id of a collection or dataset is required")
    check_input(source)
    config = capabilities.validate(capability.name, {k: v for k, v in inputs.items() if k != "input"})
    args = {
        "name": f"{capability.name} on {source}",
        "input": source,
        "steps": [{"capability": capability.name, "config": config}],
        "owner": owned.owner(),
    }
    queue = current_app.extensions["geoharbor"].jobs
    if "respond-async" in request.headers.get("Prefer", ""):
        job_id = queue.defer(TASK, args, owned.owner())
        response = json_response(status_info(owned.store().find(jobs.KIND, job_id)), 201)
        response.headers["Location"] = links.url(f"/processes/jobs/{job_id}")
        response.headers["Preference-Applied"] = "respond-async"
        return response
    job_id = queue.run_now(TASK, args, owned.owner())
    record = owned.store().find(jobs.KIND, job_id)
    if record.body["state"] != jobs.COMPLETE:
        raise InvalidData(f"the process failed: {record.body.get('message')}")
    response = json_response(_results(record))
    response.headers["Location"] = links.url(f"/processes/jobs/{job_id}")
    return response


def status_info(record: Record) -> dict[str, Any]:
    """The OGC statusInfo document of a job record."""
    body = record.body
    progress = body.get("progress") or {}
    total = progress.get("total") or 0
    steps = (body.get("args") or {}).get("steps") or [{}]
    out: dict[str, Any] = {
        "jobID": record.key,
        "processID": steps[0].get("capability"),
        "type": "process",
        "status": STATUS.get(body["state"], "failed"),
        "message": body.get("message") or "",
        "created": iso(body.get("created_at")),
        "started": iso(body.get("started_at")),
        "finished": iso(body.get("finished_at")),
        "updated": iso(body.get("heartbeat")),
        "progress": int(100 * progress.get("done", 0) / total) if total else 0,
        "links": [links.link(links.url(f"/processes/jobs/{record.key}"), "self", "application/json")],
    }
    if body["state"] == jobs.COMPLETE:
        out["links"].append(
            links.link(
                links.url(f"/processes/jobs/{record.key}/results"),
                "http://www.opengis.net/def/rel/ogc/1.0/results",
                "application/json",
            )
        )
    return out


def _results(record: Record) -> dict[str, Any]:
    result = dict(record.body.get("result") or {})
    cid = result.get("collection")
    if cid:
        result["links"] = [
            links.link(links.url(f"/collections/{cid}"), "collection", "application/json", cid),
            links.link(links.url(f"/collections/{cid}/items"), "items", "application/geo+json"),
        ]
    return {"result": result}


def _process_job(job_id: str, action: owned.Action = "read") -> Record:
    record = owned.find(jobs.KIND, job_id, action, f"job {job_id[:100]}")
    if record.body.get("kind") != TASK or not (record.body.get("args") or {}).get("steps"):
        raise NotFound(f"job {job_id[:100]} not found")
    return record


@blueprint.route("/processes/jobs", methods=["GET"])
def list_process_jobs() -> Response:
    records = [
        r
        for r in owned.readable(owned.store().list(jobs.KIND))
        if r.body.get("kind") == TASK and (r.body.get("args") or {}).get("steps")
    ]
    return json_response({"jobs": [status_info(r) for r in records], "links": []})


@blueprint.route("/processes/jobs/<job_id>", methods=["GET"])
def get_process_job(job_id: str) -> Response:
    return json_response(status_info(_process_job(job_id)))


@blueprint.route("/processes/jobs/<job_id>", methods=["DELETE"])
def dismiss_process_job(job_id: str) -> Response:
    """Dismiss: a job still waiting or running is cancelled; its status says ``dismissed``."""
    record = _process_job(job_id, "write")
    if record.body["state"] in (jobs.PENDING, jobs.RUNNING):
        current_app.extensions["geoharbor"].jobs.cancel(job_id)
    return json_response(status_info(_process_job(job_id)))


@blueprint.route("/processes/jobs/<job_id>/results", methods=["GET"])
def process_results(job_id: str) -> Response:
    record = _process_job(job_id)
    if record.body["state"] != jobs.COMPLETE:
        raise NotFound(f"job {job_id} has no results ({STATUS.get(record.body['state'])})")
    return json_response(_results(record))


# -- OpenAPI -----------------------------------------------------------------------------------------
def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths of the processes (OGC API - Processes documents, OGC exception errors)."""
    obj = {"type": "object"}

    def answer(description: str, status: str = "200") -> dict[str, Any]:
        return {status: {"description": description, "content": {"application/json": {"schema": obj}}}}

    errors = {
        str(s): {
            "description": d,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/exception"}}},
        }
        for s, d in ((404, "Not found"), (422, "Invalid inputs"))
    }
    process = [{"name": "processId", "in": "path", "required": True, "schema": {"type": "string"}}]
    job = [{"name": "jobId", "in": "path", "required": True, "schema": {"type": "string"}}]
    paths = {
        f"{prefix}/processes": {
            "get": {
                "summary": "The processes (one per capability)",
                "operationId": "processesList",
                "responses": answer("Process list"),
            }
        },
        f"{prefix}/processes/{{processId}}": {
            "parameters": process,
            "get": {
                "summary": "A process description",
                "operationId": "processesGet",
                "responses": {**answer("The process"), **errors},
            },
        },
        f"{prefix}/processes/{{processId}}/execution": {
            "parameters": process,
            "post": {
                "summary": "Execute (Prefer: respond-async for a job)",
                "operationId": "processesExecute",
                "requestBody": {"required": True, "content": {"application/json": {"schema": obj}}},
                "responses": {
                    **answer("Results (synchronous)"),
                    **answer("Job status (asynchronous)", "201"),
                    **errors,
                },
            },
        },
        f"{prefix}/processes/jobs": {
            "get": {
                "summary": "Process jobs",
                "operationId": "processJobsList",
                "responses": answer("Job list"),
            }
        },
        f"{prefix}/processes/jobs/{{jobId}}": {
            "parameters": job,
            "get": {
                "summary": "Job status",
                "operationId": "processJobsGet",
                "responses": {**answer("Status"), **errors},
            },
            "delete": {
                "summary": "Dismiss a job",
                "operationId": "processJobsDismiss",
                "responses": {**answer("Status"), **errors},
            },
        },
        f"{prefix}/processes/jobs/{{jobId}}/results": {
            "parameters": job,
            "get": {
                "summary": "Job results",
                "operationId": "processJobsResults",
                "responses": {**answer("Results"), **errors},
            },
        },
    }
    return {"paths": paths}
