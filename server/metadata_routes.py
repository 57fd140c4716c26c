"""Metadata documents of catalogue resources over HTTP: ISO 19139 and Dublin Core XML.

``/catalogue/{uuid}/iso19139.xml`` is what each resource's ``ISO`` link points at
(GeoNode's ``links`` entry of ``link_type`` ``metadata``); ``/catalogue/{uuid}/dc.xml``
is the same resource as a CSW ``csw:Record`` (``?flavour=oai_dc`` for OAI-PMH's
``oai_dc:dc``). :func:`metadata_links` gives the catalogue those links, so the URL
pattern lives here only. A resource the caller may not read answers 404.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from providers.errors import InvalidQuery, NotFound
from providers.metadata_xml import dublin_core, iso19139
from server.auth import current_auth, current_identity
from server.links import base_url

blueprint = Blueprint("metadata_routes", __name__)

PREFIX = "/catalogue"
XML = "application/xml"


def install(app: Flask) -> None:
    app.register_blueprint(blueprint, url_prefix=PREFIX)


def metadata_links(resource: dict[str, Any], base: str) -> list[dict[str, Any]]:
    """The metadata links of a resource, in GeoNode's ``links`` shape (``ISO`` first)."""
    uuid = resource["uuid"]
    return [
        {
            "extension": "xml",
            "link_type": "metadata",
            "name": "ISO",
            "mime": "text/xml",
            "url": f"{base}{PREFIX}/{uuid}/iso19139.xml",
        },
        {
            "extension": "xml",
            "link_type": "metadata",
            "name": "Dublin Core",
            "mime": "text/xml",
            "url": f"{base}{PREFIX}/{uuid}/dc.xml",
        },
    ]


def online_links(resource: dict[str, Any], base: str) -> list[dict[str, Any]]:
    """Where the resource's data is served, as ISO online resources (OGC items and tiles)."""
    cid = resource.get("alternate")
    out = []
    if resource.get("resource_type") == "dataset" and cid:
        out += [
            {
                "url": f"{base}/collections/{cid}/items",
                "protocol": "OGC:API-Features",
                "name": cid,
                "description": "Features (OGC API - Features)",
            },
            {
                "url": f"{base}/collections/{cid}/tiles/WebMercatorQuad",
                "protocol": "OGC:API-Tiles",
                "name": cid,
                "description": "Vector tiles (OGC API - Tiles)",
            },
        ]
    for link in resource.get("links") or []:
        if isinstance(link, dict) and link.get("url") and link.get("link_type") != "metadata":
            if all(link["url"] != known["url"] for known in out):
                out.append(
                    {
                        "url": link["url"],
                        "protocol": link.get("link_type"),
                        "name": link.get("name"),
                        "description": link.get("mime"),
                    }
                )
    return out


def readable(resource: dict[str, Any]) -> bool:
    """Whether the caller may read the resource: its readers are the principals the
    catalogue computed from the same grants every other route enforces."""
    auth, identity = current_auth(), current_identity()
    if auth.mode == "community" or identity.admin:
        return True
    if identity.user_id is not None and (resource.get("owner") or {}).get("pk") == identity.user_id:
        return True
    return bool(identity.principals() & set(resource.get("readers") or []))


def _resource(uuid: str) -> dict[str, Any]:
    if "geoharbor_catalogue" in current_app.extensions:
        from server import catalogue_sync

        catalogue = catalogue_sync.current()
    else:
        from providers.catalogue import Catalogue

        catalogue = Catalogue(current_app.extensions["geoharbor"].registry.store)
    resource = catalogue.get_by_uuid(uuid)
    if not readable(resource):
        raise NotFound(f"resource {uuid[:40]!r} not found")
    return resource


@blueprint.route("/<uuid>/iso19139.xml", methods=["GET", "HEAD"])
def iso(uuid: str) -> Response:
    resource = _resource(uuid)
    base = base_url()
    return Response(iso19139(resource, online_links(resource, base)), mimetype=XML)


@blueprint.route("/<uuid>/dc.xml", methods=["GET", "HEAD"])
def dc(uuid: str) -> Response:
    flavour = request.args.get("flavour", "csw")
    if flavour not in ("csw", "oai_dc"):
        raise InvalidQuery("flavour must be csw or oai_dc")
    resource = _resource(uuid)
    base = base_url()
    return Response(dublin_core({**resource, "links": online_links(resource, base)}, flavour), mimetype=XML)
