"""Triggers of the platform API (``/triggers``): re-run a rule when its collection changes.

A trigger watches one collection and runs one rule (its chain, see :mod:`server.rules`)
into an output collection:

* ``DATA_CHANGED``: every write to the collection, whatever the door (OGC Part 4,
  MapFish, REST CRUD, an import), runs the rule again over the whole collection and
  replaces the output.
* ``DML``: the rule runs on the changed features only and the output is updated in
  place (rules whose capability works feature by feature: buffer, centroid ...).
* ``SCHEDULE``: a cron expression (``schedule``) runs it on time.

Values are accepted in any case and stored upper-case. Triggers are store records
(kind ``trigger``), owned like rules; firing is :mod:`server.rule_runs`.
"""

from __future__ import annotations

import uuid
from typing import Any

from croniter import croniter
from flask import Blueprint, Response, current_app, request

from providers import capabilities
from providers.errors import InvalidData, NotFound
from providers.store import Record
from providers.tables import check_name
from server import bodies, owned
from server.auth import current_auth, current_identity
from server.responses import json_response
from server.rules import find_rule, iso, page

blueprint = Blueprint("triggers", __name__)

KIND = "trigger"
EVENTS = ("DATA_CHANGED",)
TYPES = ("DATA_CHANGED", "DML", "SCHEDULE")
FIELDS = {
    "name",
    "event",
    "trigger_type",
    "rule_id",
    "dataset_id",
    "collection",
    "output",
    "schedule",
    "enabled",
}


def trigger_view(record: Record) -> dict[str, Any]:
    body = record.body
    return {
        "id": record.key,
        "name": body["name"],
        "event": body["event"],
        "trigger_type": body["trigger_type"],
        "rule_id": body["rule_id"],
        "dataset_id": body["collection"],
        "collection": body["collection"],
        "output": body["output"],
        "schedule": body.get("schedule"),
        "enabled": body["enabled"],
        "owner": body.get("owner"),
        "fired": body.get("fired", 0),
        "last_fired_at": iso(body.get("last_fired_at")),
        "last_job": body.get("last_job"),
        "created_at": iso(record.created),
        "updated_at": iso(record.modified),
    }


def _upper(raw: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or value.upper() not in allowed:
        raise InvalidData(f"{key}: one of {', '.join(allowed)} (any case), not {str(value)[:40]!r}")
    return value.upper()


def _trigger_body(raw: Any, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """A trigger's stored body from a request (all of it, or changes to ``current``), checked."""
    if not isinstance(raw, dict):
        raise InvalidData("a trigger is an object: {name, event, trigger_type, rule_id, dataset_id}")
    unknown = set(raw) - FIELDS - {"id"}
    if unknown:
        raise InvalidData(f"unknown trigger fields: {', '.join(sorted(unknown))}")
    merged = {**(current or {"event": "DATA_CHANGED", "enabled": True, "schedule": None}), **raw}
    if "dataset_id" in raw and "collection" not in raw:
        merged["collection"] = raw["dataset_id"]
    body: dict[str, Any] = {
        "name": merged.get("name"),
        "event": _upper(merged, "event", EVENTS),
        "trigger_type": _upper(merged, "trigger_type", TYPES),
        "enabled": merged.get("enabled", True),
        "schedule": merged.get("schedule"),
    }
    if not isinstance(body["name"], str) or not body["name"].strip() or len(body["name"]) > 200:
        raise InvalidData("name: a non-empty string of at most 200 characters is required")
    if not isinstance(body["enabled"], bool):
        raise InvalidData("enabled: must be true or false")
    rule_id = merged.get("rule_id")
    if not isinstance(rule_id, str):
        raise InvalidData("rule_id: the id of a rule is required")
    try:
        rule = find_rule(rule_id)
    except NotFound:
        raise InvalidData(f"rule_id: no rule {rule_id[:100]!r}") from None
    body["rule_id"] = rule.key
    collection = merged.get("collection")
    if not isinstance(collection, str):
        raise InvalidData("dataset_id: the id of the collection to watch is required")
    registry = current_app.extensions["geoharbor"].registry
    coll = registry.collections.get(collection)
    if coll is None or not current_auth().allowed(
        current_identity(), "read", current_auth().collection_rights(current_identity(), coll)
    ):
        raise InvalidData(f"dataset_id: no collection {collection[:100]!r}")
    body["collection"] = collection
    output = merged.get("output") or f"{collection}_{rule.body['name']}"
    body["output"] = check_name(_table_name(output), "table")
    if body["output"] == collection:
        raise InvalidData("output: a trigger cannot write into the collection it watches")
    if body["trigger_type"] == "DML" and not capabilities.get(rule.body["capability"]).rowwise:
        raise InvalidData(
            f"trigger_type: DML re-runs a rule on changed features only, which {rule.body['capability']!r} "
            "cannot (it combines features): use DATA_CHANGED"
        )
    if body["trigger_type"] == "SCHEDULE":
        if not isinstance(body["schedule"], str) or not croniter.is_valid(body["schedule"]):
            raise InvalidData("schedule: a cron expression (five fields, e.g. '0 * * * *') is required")
    elif body["schedule"] is not None:
        raise InvalidData("schedule: only SCHEDULE triggers have one")
    for key in ("fired", "last_fired_at", "last_job"):
        if current and key in current:
            body[key] = current[key]
    return body


def _table_name(text: str) -> str:
    """An output collection name made a safe table name (``countries-buffer`` -> ``countries_buffer``)."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in text.lower())[:63].strip("_") or "output"


def find_trigger(trigger_id: str, action: owned.Action = "read") -> Record:
    return owned.find(KIND, trigger_id, action, f"trigger {trigger_id[:100]}")


@blueprint.route("/triggers", methods=["GET"])
def list_triggers() -> Response:
    return page(owned.readable(owned.store().list(KIND)), trigger_view)


@blueprint.route("/triggers", methods=["POST"])
def create_trigger() -> Response:
    current_auth().require_create(current_identity(), "a trigger")
    body = _trigger_body(bodies.json_body())
    body["owner"] = owned.owner()
    record = owned.store().insert(KIND, body, key=str(uuid.uuid4()))
    return json_response(trigger_view(record), 201, f"/triggers/{record.key}")


@blueprint.route("/triggers/<trigger_id>", methods=["GET"])
def get_trigger(trigger_id: str) -> Response:
    return json_response(trigger_view(find_trigger(trigger_id)))


@blueprint.route("/triggers/<trigger_id>", methods=["PUT", "PATCH"])
def update_trigger(trigger_id: str) -> Response:
    record = find_trigger(trigger_id, "write")
    current = {k: v for k, v in record.body.items() if k != "owner"}
    body = _trigger_body(bodies.json_body(), current)
    body["owner"] = record.body.get("owner")
    return json_response(trigger_view(owned.store().update(KIND, record.id, body, key=record.key)))


@blueprint.route("/triggers/<trigger_id>", methods=["DELETE"])
def delete_trigger(trigger_id: str) -> Response:
    record = find_trigger(trigger_id, "write")
    owned.store().delete(KIND, record.id)
    return Response(status=204)


@blueprint.route("/triggers/<trigger_id>/enable", methods=["POST"])
@blueprint.route("/triggers/<trigger_id>/disable", methods=["POST"])
def switch_trigger(trigger_id: str) -> Response:
    record = find_trigger(trigger_id, "write")
    body = {**record.body, "enabled": request.path.endswith("/enable")}
    return json_response(trigger_view(owned.store().update(KIND, record.id, body, key=record.key)))


# -- OpenAPI -----------------------------------------------------------------------------------------
def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths of the triggers."""
    from server.rules import PAGE_PARAMS, answer, detail_errors, id_param, json_body_of, page_of

    trigger = {"$ref": "#/components/schemas/Trigger"}
    trigger_in = {
        "type": "object",
        "required": ["name", "rule_id", "dataset_id"],
        "properties": {
            "name": {"type": "string"},
            "event": {"type": "string", "description": "DATA_CHANGED (any case)"},
            "trigger_type": {"type": "string", "description": "DATA_CHANGED, DML or SCHEDULE (any case)"},
            "rule_id": {"type": "string"},
            "dataset_id": {"type": "string", "description": "the collection watched"},
            "output": {"type": "string", "description": "the collection written"},
            "schedule": {"type": "string", "description": "a cron expression (SCHEDULE)"},
            "enabled": {"type": "boolean"},
        },
    }
    one = {"parameters": [id_param("id")]}
    paths = {
        f"{prefix}/triggers": {
            "get": {
                "summary": "Triggers, paged",
                "operationId": "triggersList",
                "parameters": PAGE_PARAMS,
                "responses": answer("A page of triggers", page_of("#/components/schemas/Trigger")),
            },
            "post": {
                "summary": "Create a trigger",
                "operationId": "triggersCreate",
                "requestBody": json_body_of(trigger_in),
                "responses": {**answer("The trigger", trigger, "201"), **detail_errors(401, 403, 422)},
            },
        },
        f"{prefix}/triggers/{{id}}": {
            **one,
            "get": {
                "summary": "A trigger",
                "operationId": "triggersGet",
                "responses": {**answer("The trigger", trigger), **detail_errors(404)},
            },
            "put": {
                "summary": "Change a trigger",
                "operationId": "triggersReplace",
                "requestBody": json_body_of(trigger_in),
                "responses": {**answer("The trigger", trigger), **detail_errors(404, 422)},
            },
            "patch": {
                "summary": "Change some fields of a trigger",
                "operationId": "triggersPatch",
                "requestBody": json_body_of({"type": "object"}),
                "responses": {**answer("The trigger", trigger), **detail_errors(404, 422)},
            },
            "delete": {
                "summary": "Delete a trigger",
                "operationId": "triggersDelete",
                "responses": {"204": {"description": "Deleted"}, **detail_errors(404)},
            },
        },
        f"{prefix}/triggers/{{id}}/enable": {
            **one,
            "post": {
                "summary": "Enable a trigger",
                "operationId": "triggersEnable",
                "responses": {**answer("The trigger", trigger), **detail_errors(404)},
            },
        },
        f"{prefix}/triggers/{{id}}/disable": {
            **one,
            "post": {
                "summary": "Disable a trigger",
                "operationId": "triggersDisable",
                "responses": {**answer("The trigger", trigger), **detail_errors(404)},
            },
        },
    }
    schemas = {
        "Trigger": {
            "type": "object",
            "properties": {
                **trigger_in["properties"],
                "id": {"type": "string"},
                "collection": {"type": "string"},
                "fired": {"type": "integer"},
                "last_job": {"type": "string", "nullable": True},
                "last_fired_at": {"type": "string", "format": "date-time", "nullable": True},
            },
        }
    }
    return {"paths": paths, "components": {"schemas": schemas}}
