"""Errors as the OGC API exception document, with the right status code.

Every failure on an OGC route answers ``{"code", "description"}`` JSON (the OGC API
exception schema), never an HTML page, whatever the client's ``Accept`` says.
"""

from __future__ import annotations

import logging

import orjson
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from providers.errors import ProviderError, ReadOnly

LOGGER = logging.getLogger(__name__)


def ogc_error(status: int, code: str, description: str, headers: dict[str, str] | None = None) -> Response:
    """An OGC API exception response."""
    body = orjson.dumps({"code": code, "type": code, "description": description})
    response = Response(body, status=status, mimetype="application/json")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def install(app: Flask) -> None:
    """Map provider errors and HTTP errors to OGC exception JSON on every route."""

    @app.errorhandler(ProviderError)
    def provider_error(exc: ProviderError) -> Response:
        if exc.status >= 500:
            LOGGER.error("%s: %s", exc.code, exc.message)
        headers = {"Allow": "GET, HEAD, OPTIONS"} if isinstance(exc, ReadOnly) else None
        return ogc_error(exc.status, exc.code, exc.message, headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        headers = {}
        if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(sorted(exc.valid_methods))  # type: ignore[attr-defined]
        code = {404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge"}.get(
            exc.code or 500, exc.name
        )
        return ogc_error(exc.code or 500, code.replace(" ", ""), exc.description or exc.name, headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        LOGGER.exception("unhandled error")
        return ogc_error(500, "ServerError", "internal server error")
