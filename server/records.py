"""OGC API - Records: the catalogue as the collection ``catalogue``, answered by pygeoapi.

``/collections/catalogue``, its ``items`` (``q``, ``bbox``, ``datetime``, ``filter``,
``sortby``, ``limit``/``offset``), one record and its queryables are handed to
pygeoapi's own Records functions, with :class:`providers.records.CatalogueRecords`
as the collection's provider, so Records clients (OWSLib, QGIS MetaSearch) get
pygeoapi's documents, links and paging. These routes are more specific than the
feature routes' ``/collections/<cid>/...``, so werkzeug sends the catalogue here.

pygeoapi does not know who asks: the principals whose rows the caller may see are
set for the request in :data:`providers.records.VISIBLE_TO` (None for admins and in
community mode), the same readers the GeoNode API filters on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pygeoapi.api as core_api
import pygeoapi.api.itemtypes as itemtypes_api
from flask import Blueprint, Flask, Response, current_app, request
from pygeoapi.api import APIRequest

from providers import records
from server.auth import current_auth, current_identity
from server.links import base_url
from server.metadata_routes import metadata_links, online_links
from server.ogc import request_api

blueprint = Blueprint("records", __name__)

BASE = f"/collections/{records.COLLECTION_ID}"


def install(app: Flask) -> None:
    """Register the routes and give the provider the app's catalogue and link builder."""
    app.register_blueprint(blueprint)

    def current() -> Any:
        from server import catalogue_sync

        if "geoharbor_catalogue" in current_app.extensions:
            return catalogue_sync.current()
        from providers.catalogue import Catalogue

        return Catalogue(current_app.extensions["geoharbor"].registry.store)

    records.CATALOGUE["current"] = current
    records.LINKS["build"] = record_links


def record_links(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """A record's links: its data (OGC items and tiles), its metadata documents, its thumbnail."""
    base = base_url()
    out = [
        {
            "href": link["url"],
            "rel": "item" if link["protocol"] == "OGC:API-Features" else "related",
            "type": _media(link["protocol"]),
            "title": link.get("description"),
        }
        for link in online_links(resource, base)
    ]
    out += [
        {"href": link["url"], "rel": "describedby", "type": "application/xml", "title": link["name"]}
        for link in metadata_links(resource, base)
    ]
    if resource.get("thumbnail_url"):
        out.append(
            {"href": resource["thumbnail_url"], "rel": "preview", "type": "image/png", "title": "Thumbnail"}
        )
    return out


def _media(protocol: str | None) -> str:
    return {"OGC:API-Features": "application/geo+json", "OGC:API-Tiles": "application/json"}.get(
        protocol or "", "text/html"
    )


def _visible_to() -> set[str] | None:
    auth, identity = current_auth(), current_identity()
    if auth.mode == "community" or identity.admin:
        return None
    return identity.principals()


def _pygeoapi(function: Callable, *args: str) -> Response:
    api = request_api()
    api_request = APIRequest.from_flask(request, api.locales)
    token = records.VISIBLE_TO.set(_visible_to())
    try:
        if not api_request.is_valid():
            headers, status, content = api.get_format_exception(api_request)
        else:
            headers, status, content = function(api, api_request, *args)
    finally:
        records.VISIBLE_TO.reset(token)
    response = Response(content, status=status)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


@blueprint.route(BASE, methods=["GET"])
def collection() -> Response:
    return _pygeoapi(core_api.describe_collections, records.COLLECTION_ID)


@blueprint.route(f"{BASE}/items", methods=["GET"])
def items() -> Response:
    return _pygeoapi(itemtypes_api.get_collection_items, records.COLLECTION_ID)


@blueprint.route(f"{BASE}/items/<record_id>", methods=["GET"])
def item(record_id: str) -> Response:
    return _pygeoapi(itemtypes_api.get_collection_item, records.COLLECTION_ID, record_id)


@blueprint.route(f"{BASE}/queryables", methods=["GET"])
def queryables() -> Response:
    return _pygeoapi(itemtypes_api.get_collection_queryables, records.COLLECTION_ID)


@blueprint.route(f"{BASE}/schema", methods=["GET"])
def schema() -> Response:
    return _pygeoapi(core_api.get_collection_schema, records.COLLECTION_ID)
