"""OGC API routes answered by pygeoapi: landing page, conformance, collections,
queryables, schema and the OpenAPI document.

Each route hands the Flask request to the pygeoapi API function of the same name,
through the pygeoapi ``API`` object for the base URL the client used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pygeoapi
import pygeoapi.api as core_api
import pygeoapi.api.itemtypes as itemtypes_api
from flask import Blueprint, Response, current_app, request, send_from_directory
from pygeoapi.api import APIRequest

from server.links import base_url

blueprint = Blueprint("ogc", __name__)


def _pygeoapi(function: Callable, *args: str) -> Response:
    api = current_app.extensions["geoharbor"].core.api(base_url())
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
    current_app.extensions["geoharbor"].registry.get(cid)  # 404 in our format when unknown


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
