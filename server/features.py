"""OGC API - Features items and item routes (Parts 1-4), served by our providers.

Reads stream the providers' GeoJSON straight out; HTML pages reuse pygeoapi's
templates. Writes (Part 4) go through the provider write calls with ``ETag`` /
``If-Match`` optimistic locking. pygeoapi has no PATCH route: this one does.

Access is checked by the hook of :mod:`server.auth` before a route runs, except for
the items POST: only its body tells a query (a read) from a new feature (a write).
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request, stream_with_context

from providers.base import Query
from providers.crs import CRS84, parse_crs
from providers.errors import InvalidData, InvalidQuery, ReadOnly
from providers.filters import parse_cql2
from server import formats
from server.auth import current_auth, current_identity
from server.bodies import json_body
from server.links import MEDIA, link, link_header, url
from server.ogc import request_api
from server.params import items_query
from server.registry import Collection

blueprint = Blueprint("features", __name__)

READ_METHODS = ["GET", "HEAD", "OPTIONS"]
#: Pages up to this size are read whole before sending, so their Link header is complete;
#: larger ones stream and carry numberReturned and links after the features.
MATERIALISE_UP_TO = 2000


def _state():
    return current_app.extensions["geoharbor"]


def _collection(cid: str) -> Collection:
    return _state().registry.get(cid)


def _crs_headers(crs) -> dict[str, str]:
    return {"Content-Crs": f"<{crs.uri}>"}


# -- reads ------------------------------------------------------------------------------
@blueprint.route("/collections/<cid>/items", methods=["GET", "HEAD"], provide_automatic_options=False)
def items(cid: str) -> Response:
    return _items(cid)


def _items(cid: str, filter_body: Any = None) -> Response:
    """A page of features; ``filter_body`` is a CQL2 JSON filter POSTed instead of ``filter``."""
    coll = _collection(cid)
    fmt = formats.negotiate(request)
    server = current_app.config["GEOHARBOR"]["server"]
    query = items_query(
        request.args,
        coll.provider.schema,
        limit_default=server["limit_default"],
        limit_max=server["limit_max"],
        filter_body=filter_body,
    )
    if fmt == "csv":
        header, rows = coll.provider.records(query, "wkt")
        return Response(
            stream_with_context(formats.csv_rows(header, rows)),
            mimetype="text/csv",
            headers={"Content-Disposition": f'inline; filename="{cid}.csv"', **_crs_headers(query.crs)},
        )
    limit = query.limit
    query.limit = limit + 1  # one more than asked tells whether a next page exists
    page = coll.provider.query(query)
    query.limit = limit
    state: dict[str, Any] = {"returned": 0, "more": False}

    def counted():
        for feature in page.features:
            if state["returned"] == limit:
                state["more"] = True
                return
            state["returned"] += 1
            yield feature

    if fmt in ("jsonl", "geojsonseq"):
        return Response(
            stream_with_context(formats.feature_lines(counted(), fmt == "geojsonseq")),
            mimetype=MEDIA[fmt],
            headers=_crs_headers(query.crs),
        )
    matched = page.matched

    def nav(more: bool) -> list[dict[str, str]]:
        return _page_links(coll, query.offset, limit, more)

    head: dict[str, Any] = {"timeStamp": formats.timestamp()}
    if matched is not None:
        head["numberMatched"] = matched.value
    headers = _crs_headers(query.crs)
    if matched is not None and not matched.exact:
        headers["OGC-NumberMatched-Estimated"] = "true"
    if fmt == "html":
        features = list(counted())
        return _html_items(coll, query, features, nav(state["more"]), matched)
    if limit + 1 <= MATERIALISE_UP_TO:
        features = list(counted())  # small page: known before sending, so Link headers are complete
        links = nav(state["more"])
        head["links"] = links
        headers["Link"] = link_header(links)
        body = b"".join(formats.feature_collection(features, head, {"numberReturned": len(features)}))
        return Response(body, mimetype=MEDIA["json"], headers=headers)

    def tail() -> dict[str, Any]:
        return {"numberReturned": state["returned"], "links": nav(state["more"])}

    return Response(
        stream_with_context(formats.feature_collection(counted(), head, tail)),
        mimetype=MEDIA["json"],
        headers=headers,
    )


def _page_links(coll: Collection, offset: int, limit: int, more: bool) -> list[dict[str, str]]:
    """self, alternate, collection, and next/prev links of a page, keeping the request's filters."""
    path = f"/collections/{coll.id}/items"
    args = request.args.copy()
    args.pop("f", None)
    links = [
        link(url(path, _with(args, f="json")), "self", MEDIA["json"], "this document"),
        link(url(path, _with(args, f="html")), "alternate", MEDIA["html"], "this document as HTML"),
        link(url(f"/collections/{coll.id}", {"f": "json"}), "collection", "application/json", coll.title),
    ]
    if more:
        next_args = _with(args, f="json", offset=offset + limit)
        links.append(link(url(path, next_args), "next", MEDIA["json"], "next page"))
    if offset > 0:
        prev_args = _with(args, f="json", offset=max(0, offset - limit))
        links.append(link(url(path, prev_args), "prev", MEDIA["json"], "previous page"))
    return links


def _with(args, **changes: Any):
    out = args.copy()
    for key, value in changes.items():
        out[key] = str(value)
    return out


def _html_items(coll: Collection, query: Query, features: list[bytes], links, matched) -> Response:
    from pygeoapi.util import render_j2_template

    api = request_api()
    content = {
        "type": "FeatureCollection",
        "features": [orjson.loads(f) for f in features],
        "links": links + [link(url(f"/collections/{coll.id}"), "collection", "text/html", coll.title)],
        "numberMatched": matched.value if matched else None,
        "numberReturned": len(features),
        "title": coll.title,
        "itemtype": "feature",
        "items_path": url(f"/collections/{coll.id}/items"),
        "dataset_path": url(f"/collections/{coll.id}"),
        "collections_path": url("/collections"),
        "offset": query.offset,
        "id_field": coll.provider.schema.id_field,
    }
    html = render_j2_template(
        api.tpl_config,
        api.tpl_config["server"]["templates"],
        "collections/items/index.html",
        content,
        api.default_locale,
    )
    return Response(html, mimetype="text/html")


@blueprint.route(
    "/collections/<cid>/items/<path:fid>", methods=["GET", "HEAD"], provide_automatic_options=False
)
def item(cid: str, fid: str) -> Response:
    coll = _collection(cid)
    fmt = formats.negotiate(request, {"json", "geojson", "html"})
    unknown = [k for k in request.args if k not in ("f", "crs", "properties", "skipGeometry", "lang")]
    if unknown:
        raise InvalidQuery(f"unknown query parameter {unknown[0][:60]!r}")
    crs = parse_crs(request.args["crs"]) if request.args.get("crs") else CRS84
    properties = None
    if "properties" in request.args:
        properties = [p.strip() for p in request.args["properties"].split(",") if p.strip()]
        for name in properties:
            coll.provider.schema.check_property(name)
    skip = (request.args.get("skipGeometry") or "false").lower() == "true"
    stored = coll.provider.get(fid, crs, properties, skip)
    if request.if_none_match and request.if_none_match.contains(stored.etag.strip('"')):
        return Response(status=304, headers={"ETag": stored.etag})
    if fmt == "html":
        return _html_item(coll, stored.body)
    path = f"/collections/{cid}/items/{fid}"
    links = [
        link(url(path, {"f": "json"}), "self", MEDIA["json"], "this document"),
        link(url(path, {"f": "html"}), "alternate", MEDIA["html"], "this document as HTML"),
        link(url(f"/collections/{cid}", {"f": "json"}), "collection", "application/json", coll.title),
    ]
    body = stored.body[:-1] + b',"links":' + orjson.dumps(links) + b"}"
    headers = {"ETag": stored.etag, "Link": link_header(links), **_crs_headers(crs)}
    return Response(body, mimetype=MEDIA["json"], headers=headers)


def _html_item(coll: Collection, body: bytes) -> Response:
    from pygeoapi.util import render_j2_template

    api = request_api()
    content = orjson.loads(body)
    content.update(
        {
            "title": coll.title,
            "id_field": coll.provider.schema.id_field,
            "collections_path": url("/collections"),
            "links": [link(url(f"/collections/{coll.id}/items"), "collection", "text/html", coll.title)],
        }
    )
    html = render_j2_template(
        api.tpl_config,
        api.tpl_config["server"]["templates"],
        "collections/items/item.html",
        content,
        api.default_locale,
    )
    return Response(html, mimetype="text/html")


# -- OPTIONS: QGIS turns editing on from Allow -----------------------------------------------
def _allow(cid: str, writes: list[str]) -> Response:
    """The methods the caller may use: writes only on an editable collection it may write.

    A CORS preflight carries no key and is answered alike for every id, so that it
    does not tell a hidden collection from one that does not exist; any other OPTIONS
    was checked by the access hook like a read (404 for a collection hidden from it).
    """
    if request.headers.get("Access-Control-Request-Method"):
        return Response(status=204, headers={"Allow": ", ".join(READ_METHODS + writes)})
    coll = _collection(cid)
    auth, identity = current_auth(), current_identity()
    writable = coll.editable and auth.allowed(identity, "write", auth.collection_rights(identity, coll))
    return Response(status=204, headers={"Allow": ", ".join(READ_METHODS + (writes if writable else []))})


@blueprint.route("/collections/<cid>/items", methods=["OPTIONS"])
def items_options(cid: str) -> Response:
    return _allow(cid, ["POST"])


@blueprint.route("/collections/<cid>/items/<path:fid>", methods=["OPTIONS"])
def item_options(cid: str, fid: str) -> Response:
    return _allow(cid, ["PUT", "PATCH", "DELETE"])


# -- writes (Part 4) --------------------------------------------------------------------
def _writable(cid: str) -> Collection:
    coll = _collection(cid)
    if not coll.editable:
        raise ReadOnly(f"collection {cid!r} is read-only")
    return coll


def _content_crs():
    raw = request.headers.get("Content-Crs")
    if not raw:
        return CRS84
    return parse_crs(raw.strip().strip("<>"))


@blueprint.route("/collections/<cid>/items", methods=["POST"], provide_automatic_options=False)
def create(cid: str) -> Response:
    body = json_body()
    query = request.mimetype == "application/query-cql-json" or (isinstance(body, dict) and "op" in body)
    # Checked here, not by the access hook (server.auth.SELF_CHECKED): the body says which.
    current_auth().require_collection(current_identity(), _collection(cid), "read" if query else "write")
    if query:
        # A CQL2 JSON filter POSTed to items is a query (Part 3), not a new feature.
        return _items(cid, parse_cql2(orjson.dumps(body).decode(), "cql2-json"))
    coll = _writable(cid)
    if not isinstance(body, dict):
        raise InvalidData("expected a GeoJSON Feature or FeatureCollection")
    if body.get("type") == "FeatureCollection":
        features = body.get("features")
        if not isinstance(features, list) or not features:
            raise InvalidData("'features' must be a non-empty array")
    elif body.get("type") == "Feature":
        features = [body]
    else:
        raise InvalidData("expected a GeoJSON Feature or FeatureCollection")
    stored = coll.provider.create(features, _content_crs())
    location = url(f"/collections/{cid}/items/{stored[0].id}")
    if len(stored) == 1:
        return Response(
            stored[0].body,
            status=201,
            mimetype=MEDIA["json"],
            headers={"Location": location, "ETag": stored[0].etag},
        )
    body_out = b"".join(
        formats.feature_collection((s.body for s in stored), {}, {"numberReturned": len(stored)})
    )
    return Response(body_out, status=201, mimetype=MEDIA["json"], headers={"Location": location})


@blueprint.route(
    "/collections/<cid>/items/<path:fid>", methods=["PUT", "PATCH"], provide_automatic_options=False
)
def replace_or_update(cid: str, fid: str) -> Response:
    coll = _writable(cid)
    body = json_body()
    if not isinstance(body, dict):
        raise InvalidData("expected a GeoJSON Feature")
    if request.method == "PUT" and body.get("type") not in (None, "Feature"):
        raise InvalidData("expected a GeoJSON Feature")
    if request.method == "PUT":
        stored = coll.provider.replace(fid, body, _content_crs(), request.headers.get("If-Match"))
    else:
        stored = coll.provider.update(fid, body, _content_crs(), request.headers.get("If-Match"))
    return Response(stored.body, status=200, mimetype=MEDIA["json"], headers={"ETag": stored.etag})


@blueprint.route("/collections/<cid>/items/<path:fid>", methods=["DELETE"], provide_automatic_options=False)
def delete(cid: str, fid: str) -> Response:
    coll = _writable(cid)
    coll.provider.delete(fid, request.headers.get("If-Match"))
    return Response(status=204)
