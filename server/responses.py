"""JSON responses of the non-OGC API families, written the one way: orjson, anything it
cannot encode natively (dates, UUIDs, decimals) as its ``str``."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response


def json_response(
    data: Any, status: int = 200, location: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    """``data`` as an ``application/json`` response; ``location`` sets the Location header
    of a created resource."""
    response = Response(orjson.dumps(data, default=str), status=status, mimetype="application/json")
    if location:
        response.headers["Location"] = location
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response
