"""OGC API routes answered by pygeoapi: landing page, conformance, collections,
queryables, schema and the OpenAPI document.

Each route hands the Flask request to the pygeoapi API function of the same name,
through the pygeoapi ``API`` object for the base URL the client used and the
collections the caller may read: pygeoapi has no authorization of its own, so what
it does not know of, it cannot list (``/collections``, ``/openapi``, the landing page).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pygeoapi
import pygeoapi.api as core_api
import pygeoapi.api.itemtypes as itemtypes_api
from flask import Blueprint, Response, current_app, request, send_from_directory
from pygeoapi.api import APIRequest

from server.auth import visible_collection_ids
from server.links import base_url

blueprint = Blueprint("ogc", __name__)


def request_api() -> Any:
    """The pygeoapi ``API`` object for the client's base URL and the collections it may read."""
    return current_app.extensions["geoharbor"].core.api(base_url(), visible_collection_ids())


def _pygeoapi(function: Callable, *args: str) -> Response:
    api = request_api()
    api_request = APIRequest.from_flask(request, api.locales)
    if not api_request.is_valid():
        headers, status, content = api.get_format_exception(api_request)
    else:
        headers, status, content = function(api, api_request, *args)
    response = Response(content, status=status)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _known(cid: str) -> None:
    # 404 in our format when unknown (the access hook has also checked the caller may read it)
    current_app.extensions["geoharbor"].registry.get(cid)


@blueprint.route("/")
def landing_page() -> Response:
    return _pygeoapi(core_api.landing_page)


@blueprint.route("/conformance")
def conformance() -> Response:
    return _pygeoapi(core_api.conformance)


@blueprint.route("/openapi")
def openapi() -> Response:
    return _pygeoapi(core_api.openapi_)


@blueprint.route("/collections")
def collections() -> Response:
    return _pygeoapi(core_api.describe_collections)


@blueprint.route("/collections/<cid>")
def collection(cid: str) -> Response:
    _known(cid)
    return _pygeoapi(core_api.describe_collections, cid)


@blueprint.route("/collections/<cid>/queryables")
def queryables(cid: str) -> Response:
    _known(cid)
    return _pygeoapi(itemtypes_api.get_collection_queryables, cid)


@blueprint.route("/collections/<cid>/schema")
def schema(cid: str) -> Response:
    _known(cid)
    return _pygeoapi(core_api.get_collection_schema, cid)


@blueprint.route("/static/<path:filename>")
def static(filename: str) -> Response:

    return send_from_directory(Path(pygeoapi.__file__).parent / "static", filename)
