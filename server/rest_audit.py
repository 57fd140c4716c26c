"""REST route reading the audit log (``GET {prefix}/audit``), for administrators only.

The log says who wrote what through every API (see :mod:`server.audit`); it names
users and client addresses, so only an admin key may read it; in community mode,
where there are no keys, only a client on this machine (as for writes).
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app

from server.audit import KIND
from server.auth import current_identity, require_admin
from server.rest import blueprint, envelope, paging, wants_total
from server.rest_layers import PAGING_PARAMETERS, error_responses, json_response, list_schema


@blueprint.route("/audit", methods=["GET"])
def list_audit() -> Response:
    """The audit log, newest first, in pages."""
    require_admin(current_identity(), "read the audit log")
    page = paging()
    store = current_app.extensions["geoharbor"].registry.store
    records = store.page(KIND, page.offset, page.perpage, newest_first=True)
    data = [{"id": r.id, **r.body} for r in records]
    return envelope("audit", data, store.count(KIND) if wants_total() else None, page.page)


def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths (under ``prefix``) and component schemas of the audit route."""
    nullable_int = {"type": "integer", "nullable": True}  # OpenAPI 3.0: no type lists
    nullable_text = {"type": "string", "nullable": True}
    return {
        "paths": {
            f"{prefix}/audit": {
                "get": {
                    "summary": "The audit log of writes, newest first (admin only)",
                    "operationId": "restListAudit",
                    "parameters": PAGING_PARAMETERS,
                    "responses": {
                        "200": json_response("Audit records", list_schema("#/components/schemas/RestAudit")),
                        **error_responses(
                            400,
                            401,
                            403,
                            texts={401: "No or an unknown API key", 403: "Not an admin key"},
                        ),
                    },
                }
            }
        },
        "components": {
            "schemas": {
                "RestAudit": {
                    "type": "object",
                    "description": "One successful write: who, what, when",
                    "properties": {
                        "id": {"type": "integer"},
                        "user_id": nullable_int,
                        "username": nullable_text,
                        "key_id": nullable_int,
                        "master": {"type": "boolean", "description": "made with the configured master key"},
                        "method": {"type": "string", "enum": ["POST", "PUT", "PATCH", "DELETE"]},
                        "path": {"type": "string", "description": "without the query string"},
                        "status": {"type": "integer"},
                        "collection": nullable_text,
                        "resource": {
                            "type": "object",
                            "nullable": True,
                            "description": "the URL's variables (layer_id, map_id, fid ...)",
                            "additionalProperties": {"type": "string"},
                        },
                        "location": {**nullable_text, "description": "path of what a creation made"},
                        "address": nullable_text,
                        "at": {"type": "string", "format": "date-time"},
                    },
                }
            }
        },
    }
