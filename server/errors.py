"""Errors in each API's own format, with the right status code.

Every failure on an OGC route answers ``{"code", "description"}`` JSON (the OGC API
exception schema), never an HTML page, whatever the client's ``Accept`` says. The
other API families (REST CRUD, MapFish, ...) register their own format for their
path prefix with :func:`use_format`; the same handlers then answer in it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from providers.errors import ProviderError, ReadOnly, TooManyRequests, Unauthorized

LOGGER = logging.getLogger(__name__)


def ogc_error(status: int, code: str, description: str, headers: dict[str, str] | None = None) -> Response:
    """An OGC API exception response."""
    body = orjson.dumps({"code": code, "type": code, "description": description})
    response = Response(body, status=status, mimetype="application/json")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


#: A format: (status, message) -> response.
Formatter = Callable[[int, str], Response]


def use_format(app: Flask, prefix: str, formatter: Formatter) -> None:
    """Answer errors under ``prefix`` (a path such as ``/rest/1``) with ``formatter``."""
    app.extensions.setdefault("geoharbor_error_formats", []).append((prefix.rstrip("/"), formatter))


def error_response(
    status: int, code: str, description: str, headers: dict[str, str] | None = None
) -> Response:
    """The error in the format of the API the request was sent to (OGC by default)."""
    for prefix, formatter in current_app.extensions.get("geoharbor_error_formats", []):
        if request.path == prefix or request.path.startswith(prefix + "/"):
            response = formatter(status, description)
            for key, value in (headers or {}).items():
                response.headers[key] = value
            return response
    return ogc_error(status, code, description, headers)


def install(app: Flask) -> None:
    """Map provider errors and HTTP errors to each API's error document on every route."""

    @app.errorhandler(ProviderError)
    def provider_error(exc: ProviderError) -> Response:
        if exc.status >= 500:
            LOGGER.error("%s: %s", exc.code, exc.message)
        headers: dict[str, str] = {}
        if isinstance(exc, ReadOnly):
            headers["Allow"] = "GET, HEAD, OPTIONS"
        elif isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="geoharbor"'
        elif isinstance(exc, TooManyRequests):
            headers["Retry-After"] = str(exc.retry_after)
        return error_response(exc.status, exc.code, exc.message, headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        headers = {}
        if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(sorted(exc.valid_methods))  # type: ignore[attr-defined]
        code = {404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge"}.get(
            exc.code or 500, exc.name
        )
        return error_response(exc.code or 500, code.replace(" ", ""), exc.description or exc.name, headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        LOGGER.exception("unhandled error")
        return error_response(500, "ServerError", "internal server error")
