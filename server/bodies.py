"""Request bodies of every write route: one size cap, JSON read whatever the declared type.

OWSLib posts JSON as ``text/xml`` and curl's ``-d`` (the REST reference's own
examples) as a form, so the body is parsed as JSON regardless of Content-Type.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from providers.errors import InvalidQuery

#: Bodies larger than this are refused with 413 before they are read.
MAX_BODY = 64 * 1024 * 1024


def json_body() -> Any:
    """The parsed JSON body; 413 when too large, 400 when not JSON."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise RequestEntityTooLarge(f"request bodies are limited to {MAX_BODY} bytes")
    try:
        return orjson.loads(request.get_data(cache=True))
    except orjson.JSONDecodeError as exc:
        raise InvalidQuery(f"the body is not valid JSON: {exc}") from None
