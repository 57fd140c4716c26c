"""(being written) REST routes; registered on server.rest.blueprint."""

from __future__ import annotations

from typing import Any

from server.rest import blueprint  # noqa: F401


def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths (under ``prefix``) and component schemas of these routes."""
    return {"paths": {}, "components": {"schemas": {}}}
