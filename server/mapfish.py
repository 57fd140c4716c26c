"""(being written) The MapFish protocol."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

blueprint = Blueprint("mapfish", __name__)


def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths (under ``prefix``) and component schemas of these routes."""
    return {"paths": {}, "components": {"schemas": {}}}


def mapfish_error(status: int, message: str):
    """Placeholder error format."""
    from flask import jsonify

    response = jsonify({"error": message})
    response.status_code = status
    return response
