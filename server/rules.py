"""Capabilities and rules of the platform API (``/capabilities``, ``/rules``).

A *capability* is an operation geoharbor runs on a collection (buffer, reproject,
dissolve ...), described by a JSON Schema of its configuration
(:mod:`providers.capabilities`). A *rule* is a saved use of one: a name, a capability
and a configuration checked against that schema. Rules are store records (kind
``rule``, keyed by a uuid), owned by the key that made them, so every worker and
host sees the same rules at once. Jobs chain rules; triggers re-run them.

Errors answer ``{"detail": ...}`` like the rest of this API family; a configuration
that does not match its schema is a 422 naming the field at fault.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, request

from providers import capabilities
from providers.errors import Conflict, InvalidData, NotFound, ProviderError
from providers.store import Record
from server import bodies, owned
from server.auth import current_auth, current_identity
from server.params import int_param
from server.responses import json_response

blueprint = Blueprint("rules", __name__)

KIND = "rule"
LIMIT_DEFAULT = 100
LIMIT_MAX = 1000


def iso(epoch: float | None) -> str | None:
    """An epoch time as the API writes times: ISO 8601 in UTC with a ``Z``."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def page(records: list[Record], view: Any) -> Response:
    """A ``limit``/``offset`` page of ``records`` with their ``total``."""
    limit = int_param(request.args, "limit", LIMIT_DEFAULT, 1, LIMIT_MAX)
    offset = int_param(request.args, "offset", 0, 0)
    items = [view(r) for r in records[offset : offset + limit]]
    return json_response({"items": items, "total": len(records), "limit": limit, "offset": offset})


# -- capabilities ---------------------------------------------------------------------------
def capability_view(capability: capabilities.Capability) -> dict[str, Any]:
    """A capability as clients read it: its schema under ``schema`` and ``json_schema`` both."""
    return {
        "name": capability.name,
        "description": capability.description,
        "schema": capability.schema,
        "json_schema": capability.schema,
        "rowwise": capability.rowwise,
        "inputs": list(capability.inputs),
    }


@blueprint.route("/capabilities", methods=["GET"])
def list_capabilities() -> Response:
    return json_response([capability_view(c) for c in capabilities.CAPABILITIES.values()])


@blueprint.route("/capabilities/<name>", methods=["GET"])
def get_capability(name: str) -> Response:
    return json_response(capability_view(capabilities.get(name)))


# -- rules ------------------------------------------------------------------------------------
def rule_view(record: Record) -> dict[str, Any]:
    body = record.body
    return {
        "id": record.key,
        "name": body["name"],
        "capability": body["capability"],
        "config": body["config"],
        "enabled": body["enabled"],
        "description": body.get("description"),
        "owner": body.get("owner"),
        "created_at": iso(record.created),
        "updated_at": iso(record.modified),
    }


def _rule_body(raw: Any, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """A rule's stored body from a request body (all of it, or changes to ``current``)."""
    if not isinstance(raw, dict):
        raise InvalidData("a rule is an object: {name, capability, config, enabled}")
    unknown = set(raw) - {"name", "capability", "config", "enabled", "description", "id"}
    if unknown:
        raise InvalidData(f"unknown rule fields: {', '.join(sorted(unknown))}")
    body = dict(current or {"enabled": True, "description": None, "config": {}})
    body.update({k: v for k, v in raw.items() if k != "id"})
    for key in ("name", "capability"):
        if not isinstance(body.get(key), str) or not body[key].strip():
            raise InvalidData(f"{key}: a non-empty string is required")
    if len(body["name"]) > 200:
        raise InvalidData("name: at most 200 characters")
    if not isinstance(body["enabled"], bool):
        raise InvalidData("enabled: must be true or false")
    if body.get("description") is not None and not isinstance(body["description"], str):
        raise InvalidData("description: must be a string")
    body["config"] = capabilities.validate(body["capability"], body.get("config"))
    return body


def _check_unique(name: str, key: str | None = None) -> None:
    for record in owned.store().list(KIND):
        if record.body["name"] == name and record.key != key:
            raise Conflict(f"a rule named {name[:200]!r} already exists")


def find_rule(rule_id: str, action: owned.Action = "read") -> Record:
    return owned.find(KIND, rule_id, action, f"rule {rule_id[:100]}")


@blueprint.route("/rules", methods=["GET"])
def list_rules() -> Response:
    records = owned.readable(owned.store().list(KIND))
    capability = request.args.get("capability")
    if capability:
        records = [r for r in records if r.body["capability"] == capability]
    return page(records, rule_view)


@blueprint.route("/rules", methods=["POST"])
def create_rule() -> Response:
    current_auth().require_create(current_identity(), "a rule")
    body = _rule_body(bodies.json_body())
    body["owner"] = owned.owner()
    _check_unique(body["name"])
    record = owned.store().insert(KIND, body, key=str(uuid.uuid4()))
    return json_response(rule_view(record), 201, f"/rules/{record.key}")


@blueprint.route("/rules/<rule_id>", methods=["GET"])
def get_rule(rule_id: str) -> Response:
    return json_response(rule_view(find_rule(rule_id)))


@blueprint.route("/rules/<rule_id>", methods=["PUT", "PATCH"])
def update_rule(rule_id: str) -> Response:
    """PUT replaces the rule (name, capability and config required), PATCH changes some fields."""
    record = find_rule(rule_id, "write")
    raw = bodies.json_body()
    if request.method == "PUT":
        if not isinstance(raw, dict) or not {"name", "capability"} <= set(raw):
            raise InvalidData("PUT replaces the rule: give name, capability and config (PATCH changes some)")
        body = _rule_body(raw)
    else:
        current = {k: v for k, v in record.body.items() if k != "owner"}
        if isinstance(raw, dict) and "capability" in raw and "config" not in raw:
            current["config"] = {}  # a new capability does not inherit the old one's settings
        body = _rule_body(raw, current)
    body["owner"] = record.body.get("owner")
    _check_unique(body["name"], record.key)
    updated = owned.store().update(KIND, record.id, body, key=record.key)
    return json_response(rule_view(updated))


@blueprint.route("/rules/<rule_id>", methods=["DELETE"])
def delete_rule(rule_id: str) -> Response:
    """A rule still used by a trigger cannot go (409): delete or change the trigger first."""
    record = find_rule(rule_id, "write")
    users = [t.key for t in owned.store().list("trigger") if t.body.get("rule_id") == record.key]
    if users:
        raise Conflict(f"rule {rule_id} is used by triggers {', '.join(str(u) for u in users[:5])}")
    owned.store().delete(KIND, record.id)
    return Response(status=204)


def _validation(item: Any, index: int | None = None) -> dict[str, Any]:
    """One rule checked without saving: ``valid`` and the errors naming their fields."""
    out: dict[str, Any] = {} if index is None else {"index": index}
    capability = item.get("capability") if isinstance(item, dict) else None
    out["capability"] = capability
    try:
        if not isinstance(item, dict):
            raise InvalidData("a rule is an object with capability and config")
        if not isinstance(capability, str):
            raise InvalidData("capability: a capability name is required")
        config = capabilities.validate(capability, item.get("config"))
    except ProviderError as exc:
        return {**out, "valid": False, "errors": [exc.message]}
    return {**out, "valid": True, "errors": [], "config": config}


@blueprint.route("/rules/validate", methods=["POST"])
def validate_rules() -> Response:
    """The dry run of a batch: each rule valid or not, with its errors; nothing is saved."""
    raw = bodies.json_body()
    items = raw.get("rules") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise InvalidData("send a list of rules: [{capability, config}, ...]")
    results = [_validation(item, n) for n, item in enumerate(items)]
    return json_response({"valid": all(r["valid"] for r in results), "results": results})


@blueprint.route("/rules/<rule_id>/validate", methods=["POST"])
def validate_rule(rule_id: str) -> Response:
    """A stored rule checked again (its capability's schema may have changed since)."""
    record = find_rule(rule_id)
    result = _validation(record.body)
    result.pop("config", None)
    return json_response({"id": record.key, **result, "checked_at": iso(time.time())})


def rule_steps(rule_ids: Any) -> list[tuple[Record, capabilities.Step]]:
    """The rules ``rule_ids`` names (readable by the caller, enabled), as capability steps, in order."""
    if not isinstance(rule_ids, list) or not rule_ids or not all(isinstance(r, str) for r in rule_ids):
        raise InvalidData("parameters.rule_ids: a non-empty list of rule ids is required")
    steps = []
    for rule_id in rule_ids:
        try:
            record = find_rule(rule_id)
        except NotFound:
            raise InvalidData(f"parameters.rule_ids: no rule {rule_id[:100]!r}") from None
        if not record.body["enabled"]:
            raise InvalidData(f"parameters.rule_ids: rule {rule_id} is disabled")
        config = capabilities.validate(record.body["capability"], record.body["config"])
        steps.append((record, capabilities.Step(record.body["capability"], config)))
    return steps


# -- OpenAPI -----------------------------------------------------------------------------------------
def detail_errors(*statuses: int) -> dict[str, Any]:
    """Error responses of the platform API (``{"detail": ...}``)."""
    words = {
        400: "Malformed",
        401: "No valid key",
        403: "Not allowed",
        404: "Not found",
        409: "Conflict",
        422: "Invalid body",
    }
    schema = {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}
    return {
        str(s): {"description": words[s], "content": {"application/json": {"schema": schema}}}
        for s in statuses
    }


def json_body_of(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def answer(description: str, schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {"application/json": {"schema": schema}}}}


def id_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


PAGE_PARAMS = [
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}},
    {"name": "offset", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
]


def page_of(ref: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": ref}},
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        },
    }


def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths of capabilities and rules (they live at the root: ``prefix`` is empty)."""
    rule = {"$ref": "#/components/schemas/Rule"}
    capability = {"$ref": "#/components/schemas/Capability"}
    rule_in = {
        "type": "object",
        "required": ["name", "capability"],
        "properties": {
            "name": {"type": "string"},
            "capability": {"type": "string"},
            "config": {"type": "object"},
            "enabled": {"type": "boolean"},
            "description": {"type": "string"},
        },
    }
    validation = {
        "type": "object",
        "properties": {
            "valid": {"type": "boolean"},
            "errors": {"type": "array", "items": {"type": "string"}},
        },
    }
    paths = {
        f"{prefix}/capabilities": {
            "get": {
                "summary": "The capabilities and their configuration schemas",
                "operationId": "capabilitiesList",
                "responses": answer("Capabilities", {"type": "array", "items": capability}),
            }
        },
        f"{prefix}/capabilities/{{name}}": {
            "parameters": [id_param("name")],
            "get": {
                "summary": "A capability",
                "operationId": "capabilitiesGet",
                "responses": {**answer("The capability", capability), **detail_errors(404)},
            },
        },
        f"{prefix}/rules": {
            "get": {
                "summary": "Rules, paged",
                "operationId": "rulesList",
                "parameters": PAGE_PARAMS,
                "responses": answer("A page of rules", page_of("#/components/schemas/Rule")),
            },
            "post": {
                "summary": "Create a rule",
                "operationId": "rulesCreate",
                "requestBody": json_body_of(rule_in),
                "responses": {**answer("The rule", rule, "201"), **detail_errors(401, 403, 409, 422)},
            },
        },
        f"{prefix}/rules/validate": {
            "post": {
                "summary": "Check a batch of rules without saving them",
                "operationId": "rulesValidate",
                "requestBody": json_body_of({"type": "array", "items": rule_in}),
                "responses": {**answer("Each rule valid or not", validation), **detail_errors(400, 422)},
            },
        },
        f"{prefix}/rules/{{id}}": {
            "parameters": [id_param("id")],
            "get": {
                "summary": "A rule",
                "operationId": "rulesGet",
                "responses": {**answer("The rule", rule), **detail_errors(404)},
            },
            "put": {
                "summary": "Replace a rule",
                "operationId": "rulesReplace",
                "requestBody": json_body_of(rule_in),
                "responses": {**answer("The rule", rule), **detail_errors(404, 409, 422)},
            },
            "patch": {
                "summary": "Change some fields of a rule",
                "operationId": "rulesPatch",
                "requestBody": json_body_of({"type": "object"}),
                "responses": {**answer("The rule", rule), **detail_errors(404, 409, 422)},
            },
            "delete": {
                "summary": "Delete a rule (not while a trigger uses it)",
                "operationId": "rulesDelete",
                "responses": {"204": {"description": "Deleted"}, **detail_errors(404, 409)},
            },
        },
        f"{prefix}/rules/{{id}}/validate": {
            "parameters": [id_param("id")],
            "post": {
                "summary": "Check a stored rule again",
                "operationId": "rulesValidateOne",
                "responses": {**answer("Valid or not", validation), **detail_errors(404)},
            },
        },
    }
    schemas = {
        "Capability": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "description": {"type": "string"},
                "schema": {"type": "object"},
                "json_schema": {"type": "object"},
                "rowwise": {"type": "boolean"},
                "inputs": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Rule": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "name": {"type": "string"},
                "capability": {"type": "string"},
                "config": {"type": "object"},
                "enabled": {"type": "boolean"},
                "description": {"type": "string", "nullable": True},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
            },
        },
    }
    return {"paths": paths, "components": {"schemas": schemas}}
