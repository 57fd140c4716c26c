"""GeoNode's API v2 over the catalogue: resources, datasets, maps, documents, geoapps, facets.

The resources are the catalogue's rows (:mod:`providers.catalogue`), kept equal to the
registry by :mod:`server.catalogue_sync`; answers take GeoNode's shapes (a page is
``{"links": {"next", "previous"}, "total", "page", "page_size", "<plural>": [...]}``,
one object ``{"<singular>": {...}}``), both trailing-slash forms answer without a
redirect, and errors are Django REST framework's ``{"detail": ...}``.

Who may see and change a resource is decided by :mod:`server.auth`, as on every other
route: a dataset is its collection (rights of its layer record, or of its configured
collection), a map its map record. Lists leave out what the caller may not read (the
rows carry the principals that may read them). ``perm_spec`` is read from and written
to the same permission records (:meth:`server.accounts.Accounts.grant`): a dataset
hidden here is hidden from ``/collections``, its items and tiles, MapFish and REST too.

A PATCH of title, abstract or keywords is written through to what the resource
describes (the layer record, the map record, the document record, or the configured
collection's catalogue record), so ``/collections/{id}`` shows it too; catalogue-only metadata (category,
regions, flags, extra metadata) lives in the catalogue row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from flask import Blueprint, Flask, Response, current_app, request

from providers.catalogue import RESOURCE_TYPES, Catalogue, CatalogueQuery, Filter, parse_time
from providers.errors import Conflict, Forbidden, InvalidData, InvalidQuery, NotFound, Unauthorized
from providers.store import Record
from server import bodies, catalogue_sync, datasets, errors, geonode_params
from server.accounts import Accounts
from server.auth import GRANTS, Identity, current_auth, current_identity
from server.links import base_url
from server.registry import Collection
from server.responses import json_response

blueprint = Blueprint("geonode", __name__)
PREFIX = "/api/v2"

#: GeoNode's topic categories (ISO 19115 MD_TopicCategoryCode) and their descriptions.
CATEGORIES: dict[str, str] = {
    "farming": "Farming",
    "biota": "Biota",
    "boundaries": "Boundaries",
    "climatologyMeteorologyAtmosphere": "Climatology Meteorology Atmosphere",
    "economy": "Economy",
    "elevation": "Elevation",
    "environment": "Environment",
    "geoscientificInformation": "Geoscientific Information",
    "health": "Health",
    "imageryBaseMapsEarthCover": "Imagery Base Maps Earth Cover",
    "intelligenceMilitary": "Intelligence Military",
    "inlandWaters": "Inland Waters",
    "location": "Location",
    "oceans": "Oceans",
    "planningCadastre": "Planning Cadastre",
    "society": "Society",
    "structure": "Structure",
    "transportation": "Transportation",
    "utilitiesCommunication": "Utilities Communication",
    "population": "Population",
}
#: Plural (list) and singular (detail) keys of each resource type, as GeoNode answers them.
TYPE_KEYS = {
    "dataset": ("datasets", "dataset"),
    "map": ("maps", "map"),
    "document": ("documents", "document"),
    "geoapp": ("geoapps", "geoapp"),
}
#: Members a PATCH may set and the text ones kept as given (GeoNode's metadata fields).
TEXT_MEMBERS = (
    "attribution",
    "doi",
    "purpose",
    "language",
    "edition",
    "maintenance_frequency",
    "constraints_other",
    "supplemental_information",
    "data_quality_statement",
    "date_type",
)
FLAG_MEMBERS = ("is_published", "is_approved", "advertised", "featured")
#: GeoNode's permission words (new style) and the legacy codenames, as our grants.
PERMISSION_WORDS = {
    "none": None,
    "view": "READ",
    "download": "READ",
    "edit": "EDIT",
    "manage": "OWNER",
    "owner": "OWNER",
}
GRANT_WORDS = {"READ": "download", "EDIT": "edit", "OWNER": "manage"}
LEGACY_EDIT = frozenset(
    {
        "change_resourcebase",
        "change_resourcebase_metadata",
        "change_dataset_data",
        "change_dataset_style",
        "delete_resourcebase",
        "publish_resourcebase",
    }
)
LEGACY_READ = frozenset({"view_resourcebase", "download_resourcebase"})
ANONYMOUS_USER_ID = -1  # GeoNode's AnonymousUser
ANONYMOUS_GROUP_ID = 0  # the anonymous group (everybody)
MAX_RATING = 5


def install(app: Flask) -> None:
    """Register the API and its error format (``{"detail"}``) for everything under /api/v2."""
    from server import geonode_actions, geonode_documents, geonode_facets, geonode_people  # noqa: F401

    state = app.extensions["geoharbor"]
    catalogue_sync.install(app, state.registry, state.auth)
    app.register_blueprint(blueprint, url_prefix=PREFIX)
    geonode_documents.install(app)
    errors.use_format(app, PREFIX, datasets.detail_error)


# -- small things ---------------------------------------------------------------------------------


def json_object() -> dict[str, Any]:
    """The JSON object a client sent (none: ``{}``), within the API's body size limit."""
    body = bodies.json_body() if request.get_data(cache=True).strip() else {}
    if not isinstance(body, dict):
        raise InvalidQuery("the body must be a JSON object")
    return body


def _state() -> Any:
    return current_app.extensions["geoharbor"]


def _catalogue() -> Catalogue:
    return catalogue_sync.current()


def _visible_to(identity: Identity) -> set[str] | None:
    """The principals a caller reads as; None when it may read everything."""
    auth = current_auth()
    if auth.mode == "community" or identity.admin:
        return None
    return identity.principals()


def _readable(row: dict[str, Any], visible: set[str] | None) -> bool:
    return visible is None or bool(set(row.get("readers") or []) & visible)


def _row(pk: int) -> dict[str, Any]:
    """A resource the caller may read (one it may not is not found: its existence must not leak)."""
    row = _catalogue().get(pk)
    if not _readable(row, _visible_to(current_identity())):
        raise NotFound(f"resource {pk} not found")
    return row


def _collection(row: dict[str, Any]) -> Collection:
    coll = _state().registry.collections.get(row.get("alternate") or "")
    if coll is None:
        raise NotFound(f"dataset {row['pk']} is not published")
    return coll


def _rights(row: dict[str, Any]) -> frozenset[str]:
    """What the caller may do with a resource: its collection's or its map's rights."""
    auth, identity = current_auth(), current_identity()
    if row["resource_type"] == "dataset":
        return auth.collection_rights(identity, _collection(row))
    if row["resource_type"] in ("map", "document"):
        return auth.record_rights(identity, auth.store.get(row["resource_type"], row["pk"]))
    return GRANTS["OWNER"] if identity.admin else frozenset()


def _require(row: dict[str, Any], action: str) -> frozenset[str]:
    auth, identity = current_auth(), current_identity()
    rights = _rights(row)
    auth.require(identity, "write" if action != "read" else "read", rights, f"resource {row['pk']}")
    if action == "share" and auth.mode != "community" and not identity.admin and "share" not in rights:
        raise Forbidden(f"only the owner of resource {row['pk']} may change its permissions")
    return rights


def _perms(rights: frozenset[str]) -> list[str]:
    """GeoNode's ``perms`` of the caller on a resource."""
    out = []
    if "read" in rights:
        out += ["view_resourcebase", "download_resourcebase"]
    if "write" in rights:
        out += [
            "change_resourcebase",
            "change_resourcebase_metadata",
            "change_dataset_data",
            "delete_resourcebase",
        ]
    if "share" in rights:
        out += ["change_resourcebase_permissions", "publish_resourcebase"]
    return out


def _user_doc(pk: int | None, username: str | None) -> dict[str, Any]:
    return {
        "pk": pk,
        "username": username or "admin",
        "first_name": "",
        "last_name": "",
        "avatar": "",
        "is_superuser": pk is None,
        "is_staff": pk is None,
        "link": f"{base_url()}{PREFIX}/users/{pk}" if pk is not None else None,
    }


# -- representation --------------------------------------------------------------------------------
def _links(row: dict[str, Any]) -> list[dict[str, Any]]:
    """GeoNode's Link list: OGC items and tiles, the viewer, downloads and the metadata documents."""
    base, pk = base_url(), row["pk"]
    links = [
        {
            "extension": "xml",
            "link_type": "metadata",
            "name": "ISO",
            "mime": "text/xml",
            "url": f"{base}{PREFIX}/resources/{pk}/metadata/iso",
        },
        {
            "extension": "xml",
            "link_type": "metadata",
            "name": "Dublin Core",
            "mime": "text/xml",
            "url": f"{base}{PREFIX}/resources/{pk}/metadata/dc",
        },
    ]
    cid = row.get("alternate")
    if row["resource_type"] == "dataset" and cid:
        coll = f"{base}/collections/{cid}"
        links += [
            {
                "extension": "json",
                "link_type": "OGC:API-Features",
                "name": "OGC API - Features",
                "mime": "application/geo+json",
                "url": f"{coll}/items",
            },
            {
                "extension": "pbf",
                "link_type": "OGC:API-Tiles",
                "name": "Vector tiles",
                "mime": "application/vnd.mapbox-vector-tile",
                "url": f"{coll}/tiles",
            },
            {
                "extension": "html",
                "link_type": "html",
                "name": "Viewer",
                "mime": "text/html",
                "url": f"{coll}/map",
            },
            {
                "extension": "json",
                "link_type": "data",
                "name": "GeoJSON",
                "mime": "application/geo+json",
                "url": f"{coll}/items?f=json&limit=10000",
            },
        ]
    if row["resource_type"] == "document":
        from server.geonode_documents import document_links

        links += document_links(row, base)
    if row["resource_type"] == "map":
        rest = current_app.config["GEOHARBOR"]["rest"]["prefix"].rstrip("/")
        links.append(
            {
                "extension": "html",
                "link_type": "html",
                "name": "Map",
                "mime": "text/html",
                "url": f"{base}{rest}/maps/{pk}/render/iframe",
            }
        )
    return links


def _polygon(box: list[float] | None) -> dict[str, Any] | None:
    if not box:
        return None
    x0, y0, x1, y1 = box
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def resource_doc(row: dict[str, Any], rights: frozenset[str] | None = None) -> dict[str, Any]:
    """A catalogue row as GeoNode's resource serializer answers it."""
    base, pk = base_url(), row["pk"]
    kind = row["resource_type"]
    owner = row.get("owner") or {}
    box = row.get("bbox")
    category = row.get("category")
    if category is not None:
        ident = category["identifier"]
        category = {
            "identifier": ident,
            "gn_description": category.get("gn_description") or CATEGORIES.get(ident, ident),
        }
    ratings = row.get("ratings") or {}
    doc: dict[str, Any] = {
        "pk": str(pk),
        "uuid": row["uuid"],
        "name": row.get("alternate") or row["title"],
        "resource_type": kind,
        "subtype": row.get("subtype"),
        "polymorphic_ctype_id": str(RESOURCE_TYPES.index(kind) + 1) if kind in RESOURCE_TYPES else None,
        "owner": _user_doc(owner.get("pk"), owner.get("username")),
        "title": row["title"],
        "abstract": row.get("abstract") or "",
        "alternate": row.get("alternate"),
        "keywords": [{"name": k, "slug": k.lower().replace(" ", "-")} for k in row.get("keywords") or []],
        "tkeywords": [],
        "regions": [{"code": r, "name": r} for r in row.get("regions") or []],
        "category": category,
        "group": row.get("group"),
        "date": row.get("date") or row.get("created"),
        "date_type": row.get("date_type") or "publication",
        "created": row.get("created"),
        "last_updated": row.get("last_updated"),
        "bbox_polygon": _polygon(box),
        "ll_bbox_polygon": _polygon(box),
        "extent": {"coords": box, "srid": "EPSG:4326"} if box else None,
        "srid": row.get("srid") or "EPSG:4326",
        "is_published": row.get("is_published", True),
        "is_approved": row.get("is_approved", True),
        "advertised": row.get("advertised", True),
        "featured": row.get("featured", False),
        "state": "PROCESSED",
        "sourcetype": "REMOTE" if row.get("subtype") == "remote" else "LOCAL",
        "detail_url": f"{base}/catalogue/#/{kind}/{pk}",
        "embed_url": f"{base}/collections/{row['alternate']}/map"
        if kind == "dataset" and row.get("alternate")
        else "",
        "thumbnail_url": row.get("thumbnail_url"),
        "link": f"{base}{PREFIX}/resources/{pk}",
        "links": _links(row),
        "extra_metadata": row.get("extra_metadata") or [],
        "rating": round(sum(ratings.values()) / len(ratings), 2) if ratings else 0,
        "popular_count": 0,
        "share_count": 0,
        "favorite": _user_key() in (row.get("favorites") or []),
        "metadata_only": False,
        "language": row.get("language") or "eng",
    }
    for name in TEXT_MEMBERS:
        doc.setdefault(name, row.get(name))
    if kind == "document":
        from server.geonode_documents import document_members

        doc.update(document_members(row, base))
        doc["name"] = row.get("file_name") or row["title"]
        doc["embed_url"] = doc["href"]
    if kind == "map":
        doc["maplayers"] = [{"pk": lid, "dataset": {"pk": str(lid)}} for lid in row.get("maplayers") or []]
    if rights is not None:
        doc["perms"] = _perms(rights)
    return doc


def _user_key() -> str:
    identity = current_identity()
    return f"user:{identity.user_id}" if identity.user_id is not None else ("admin" if identity.admin else "")


def _shaped(doc: dict[str, Any], include: list[str], exclude: list[str]) -> dict[str, Any]:
    """dynamic-rest's ``include[]``/``exclude[]``: ``*`` keeps all; an unknown name is a 400."""
    for name in [*include, *exclude]:
        if name != "*" and name.split(".")[0] not in doc:
            raise InvalidQuery(f"unknown field {name[:60]!r}")
    if exclude:
        if "*" in exclude:
            doc = {"pk": doc["pk"], **{k: doc[k] for k in include if k in doc}}
        else:
            doc = {k: v for k, v in doc.items() if k not in exclude or k in include}
    return doc


# -- lists -------------------------------------------------------------------------------------------
def _page_links(page: int, size: int, total: int) -> dict[str, str | None]:
    args = request.args.copy()

    def at(number: int) -> str:
        args.setlist("page", [str(number)])
        args.setlist("page_size", [str(size)])
        return f"{base_url()}{request.path}?{urlencode(list(args.items(multi=True)))}"

    return {
        "next": at(page + 1) if page * size < total else None,
        "previous": at(page - 1) if page > 1 else None,
    }


def _envelope(key: str, items: list[Any], total: int, page: int, size: int) -> Response:
    return json_response(
        {"links": _page_links(page, size, total), "total": total, "page": page, "page_size": size, key: items}
    )


def listing(key: str, items: list[Any]) -> Response:
    """The page of ``items`` the request asks for (``page``, ``page_size``), under ``key`` in
    GeoNode's envelope: for the lists built in Python (users, facets, harvesters, uploads)."""
    page, size = geonode_params.page_numbers(request.args)
    start = (page - 1) * size
    return _envelope(key, items[start : start + size], len(items), page, size)


def _search(extra: list[Filter], key: str, *, visible_only: bool = True) -> Response:
    """A list of resources as GeoNode answers it, with the request's own query on top of ``extra``."""
    identity = current_identity()
    parsed = geonode_params.parse(request.args, _visible_to(identity) if visible_only else None)
    parsed.query.filters = [*extra, *parsed.query.filters]
    _advertised(parsed.query)
    rows, total = _catalogue().search(parsed.query)
    if parsed.page > 1 and parsed.query.offset >= total:
        raise NotFound("Invalid page.")
    docs = [_shaped(resource_doc(r), parsed.include, parsed.exclude) for r in rows]
    return _envelope(key, docs, total, parsed.page, parsed.page_size)


def _advertised(query: CatalogueQuery) -> None:
    """GeoNode's ``advertised`` parameter: true (the default for lists) / false / all."""
    value = (request.args.get("advertised") or "").strip().lower()
    if value in ("", "all", "none"):
        return
    if value in ("true", "1", "false", "0"):
        query.filters.append(Filter("advertised", "eq", value in ("true", "1")))
        return
    raise InvalidQuery("advertised is true, false or all")


def _type_filter(kind: str) -> list[Filter]:
    return [Filter("resource_type", "eq", kind)]


@blueprint.route("/", methods=["GET"])
def root() -> Response:
    base = f"{base_url()}{PREFIX}"
    names = [
        "resources",
        "datasets",
        "maps",
        "documents",
        "geoapps",
        "categories",
        "keywords",
        "tkeywords",
        "regions",
        "owners",
        "users",
        "groups",
        "uploads",
        "executionrequest",
        "schema",
    ]
    return json_response({name: f"{base}/{name}/" for name in names})


@blueprint.route("/resources", methods=["GET"])
def list_resources() -> Response:
    kinds = [k for v in request.args.getlist("type") for k in v.split(",") if k]
    extra = [Filter("resource_type", "in", kinds)] if kinds else []
    return _search(extra, "resources")


@blueprint.route("/resources/approved", methods=["GET"])
def approved() -> Response:
    return _search([Filter("is_approved", "eq", True)], "resources")


@blueprint.route("/resources/published", methods=["GET"])
def published() -> Response:
    return _search([Filter("is_published", "eq", True)], "resources")


@blueprint.route("/resources/featured", methods=["GET"])
def featured() -> Response:
    return _search([Filter("featured", "eq", True)], "resources")


@blueprint.route("/resources/favorites", methods=["GET"])
def favorites() -> Response:
    identity = current_identity()
    if identity.anonymous:
        raise Unauthorized("Authentication credentials were not provided.")
    key = _user_key()
    parsed = geonode_params.parse(request.args, _visible_to(identity))
    parsed.query.offset, parsed.query.limit = 0, 100_000
    rows, _ = _catalogue().search(parsed.query)
    mine = [r for r in rows if key in (r.get("favorites") or [])]
    start = (parsed.page - 1) * parsed.page_size
    docs = [resource_doc(r) for r in mine[start : start + parsed.page_size]]
    return _envelope("favorites", docs, len(mine), parsed.page, parsed.page_size)


@blueprint.route("/resources/resource_types", methods=["GET"])
def resource_types() -> Response:
    visible = _visible_to(current_identity())
    out = []
    catalogue = _catalogue()
    for kind in RESOURCE_TYPES:
        _, count = catalogue.search(CatalogueQuery(filters=_type_filter(kind), limit=0, visible_to=visible))
        out.append({"name": kind, "count": count, "label": kind.capitalize(), "allowed_perms": {}})
    return json_response({"resource_types": out})


for _kind, (_plural, _single) in TYPE_KEYS.items():

    def _lister(kind: str = _kind, plural: str = _plural) -> Response:
        return _search(_type_filter(kind), plural)

    blueprint.add_url_rule(f"/{_plural}", f"list_{_plural}", _lister, methods=["GET"])


# -- one resource ----------------------------------------------------------------------------------------
def _typed_row(pk: int, kind: str | None) -> dict[str, Any]:
    row = _row(pk)
    if kind is not None and row["resource_type"] != kind:
        raise NotFound(f"{kind} {pk} not found")
    return row


def _detail(pk: int, kind: str | None) -> Response:
    row = _typed_row(pk, kind)
    rights = _require(row, "read")
    key = "resource" if kind is None else TYPE_KEYS[kind][1]
    include = [f for v in request.args.getlist("include[]") for f in v.split(",") if f]
    exclude = [f for v in request.args.getlist("exclude[]") for f in v.split(",") if f]
    return json_response({key: _shaped(resource_doc(row, rights), include, exclude)})


def _names(value: Any, member: str, keys: tuple[str, ...] = ("name",)) -> list[str]:
    """Keywords or regions from ``["a", ...]``, ``[{"name": "a"}, ...]`` or ``"a,b"``."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > 200:
        raise InvalidData(f"{member} must be a list of at most 200 names")
    out: list[str] = []
    for item in items:
        if isinstance(item, dict):
            item = next((item.get(k) for k in keys if isinstance(item.get(k), str)), None)
        if not isinstance(item, str) or not item.strip() or len(item) > 200:
            raise InvalidData(f"{member} must be names of 1 to 200 characters")
        if item.strip() not in out:
            out.append(item.strip())
    return out


def _text(value: Any, member: str, limit: int = 20_000) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidData(f"{member} must be text of at most {limit} characters")
    return value


def metadata_changes(body: dict[str, Any]) -> dict[str, Any]:
    """The catalogue members a PATCH body sets, checked; members GeoNode reads only are ignored."""
    changes: dict[str, Any] = {}
    if "title" in body:
        title = _text(body["title"], "title", 500).strip()
        if not title:
            raise InvalidData("title may not be empty")
        changes["title"] = title
    if "abstract" in body:
        changes["abstract"] = _text(body["abstract"], "abstract")
    if "keywords" in body:
        changes["keywords"] = _names(body["keywords"] or [], "keywords", ("name", "slug"))
    if "regions" in body:
        changes["regions"] = _names(body["regions"] or [], "regions", ("name", "code"))
    if "category" in body:
        value = body["category"]
        if isinstance(value, dict):
            value = value.get("identifier")
        if value is not None and value not in CATEGORIES:
            raise InvalidData(f"unknown category {str(value)[:60]!r}")
        changes["category"] = (
            None if value is None else {"identifier": value, "gn_description": CATEGORIES[value]}
        )
    for name in FLAG_MEMBERS:
        if name in body:
            if not isinstance(body[name], bool):
                raise InvalidData(f"{name} must be true or false")
            changes[name] = body[name]
    for name in TEXT_MEMBERS:
        if name in body:
            changes[name] = None if body[name] is None else _text(body[name], name, 2000)
    if "date" in body:
        try:
            changes["date"] = None if body["date"] is None else parse_time(body["date"]).isoformat()
        except InvalidQuery as exc:
            raise InvalidData(exc.message) from None
    if "extra_metadata" in body:
        changes["extra_metadata"] = _extra_metadata(body["extra_metadata"])
    if "group" in body:
        changes["group"] = _group_member(body["group"])
    return changes


def _extra_metadata(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or len(value) > 100 or not all(isinstance(v, dict) for v in value):
        raise InvalidData("extra_metadata must be a list of at most 100 objects")
    if len(orjson.dumps(value)) > 100_000:
        raise InvalidData("extra_metadata is limited to 100 kB")
    return value


def _group_member(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    ident = value.get("pk", value.get("id")) if isinstance(value, dict) else value
    store = current_auth().store
    try:
        role = (
            store.get("role", int(ident)) if str(ident).isdigit() else Accounts(store).role_named(str(ident))
        )
    except NotFound:
        raise InvalidData(f"no group {str(ident)[:60]!r}") from None
    return {"pk": role.id, "name": role.body.get("name")}


def write_through(row: dict[str, Any], changes: dict[str, Any]) -> None:
    """Title, abstract and keywords into what the resource describes (layer, map, configured collection)."""
    described = {k: changes[k] for k in ("title", "abstract", "keywords") if k in changes}
    if not described:
        return
    state = _state()
    store = state.registry.store
    if row["resource_type"] == "dataset":
        coll = _collection(row)
        if coll.layer_id is not None:
            record = store.get("layer", coll.layer_id)
            body = dict(record.body)
            if "title" in described:
                body["title"] = described["title"]
            if "abstract" in described:
                body["description"] = described["abstract"]
            if "keywords" in described:
                body["keywords"] = described["keywords"]
            state.registry.update_layer(record.id, body)
        else:
            record = catalogue_sync.follower().collection_record(coll.id)
            metadata = {**(record.body.get("metadata") or {}), **described}
            store.update(record.kind, record.id, {**record.body, "metadata": metadata}, key=record.key)
    elif row["resource_type"] == "map":
        record = store.get("map", row["pk"])
        body = dict(record.body)
        if "title" in described:
            body["name"] = described["title"]
        if "abstract" in described:
            body["description"] = described["abstract"]
        store.update("map", record.id, body)
    elif row["resource_type"] == "document":
        record = store.get("document", row["pk"])
        store.update("document", record.id, {**record.body, **described})


def _patch_one(row: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    _require(row, "write")
    changes = metadata_changes(body)
    if not changes:
        return row
    write_through(row, changes)
    follower = catalogue_sync.follower()
    follower.forget()
    follower.current()
    return follower.catalogue.patch(row["pk"], changes)


def _update(pk: int, kind: str | None) -> Response:
    row = _typed_row(pk, kind)
    updated = _patch_one(row, json_object())
    key = "resource" if kind is None else TYPE_KEYS[kind][1]
    return json_response({key: resource_doc(updated, _rights(updated))})


def _bulk_patch(kind: str | None) -> Response:
    """dynamic-rest's ``PATCH /things/?filter{...}&patch-all=true``: answers ``{"meta": {"updated": n}}``."""
    if (request.args.get("patch-all") or "").lower() not in ("true", "1", "query"):
        raise InvalidQuery("a PATCH of a list needs patch-all=true and filter{...} parameters")
    body = json_object()
    metadata_changes(body)  # check it once before changing anything
    parsed = geonode_params.parse(request.args, _visible_to(current_identity()))
    if kind is not None:
        parsed.query.filters.append(Filter("resource_type", "eq", kind))
    parsed.query.offset, parsed.query.limit = 0, 10_000
    rows, _ = _catalogue().search(parsed.query)
    for row in rows:  # rights first: all or nothing as far as access goes
        _require(row, "write")
    for row in rows:
        _patch_one(row, body)
    return json_response({"meta": {"updated": len(rows)}})


def _delete(pk: int, kind: str | None) -> Response:
    row = _typed_row(pk, kind)
    _require(row, "write")
    delete_resource(row)
    return Response(status=204)


def delete_resource(row: dict[str, Any]) -> None:
    """Delete what a resource describes (a layer, a map, a document and its bytes); grants and row follow."""
    state = _state()
    store = state.registry.store
    if row["resource_type"] == "dataset":
        coll = _collection(row)
        if coll.layer_id is None:
            raise Conflict(
                f"dataset {row['pk']} is a collection of the configuration: "
                "remove it there, or hide it with its permissions"
            )
        state.registry.delete_layer(coll.layer_id)
    elif row["resource_type"] == "map":
        store.delete("map", row["pk"])
    elif row["resource_type"] == "document":
        from server.geonode_documents import delete_files

        store.delete("document", row["pk"])
        delete_files(row["pk"])
    else:
        raise Conflict(f"{row['resource_type']} {row['pk']} cannot be deleted here")
    Accounts(store).forget_resource(row["pk"])
    follower = catalogue_sync.follower()
    follower.catalogue.delete(row["pk"])
    follower.forget()


for _kind, (_plural, _single) in [(None, ("resources", "resource")), *TYPE_KEYS.items()]:

    def _get(pk: int, kind: str | None = _kind) -> Response:
        return _detail(pk, kind)

    def _patch(pk: int, kind: str | None = _kind) -> Response:
        return _update(pk, kind)

    def _remove(pk: int, kind: str | None = _kind) -> Response:
        return _delete(pk, kind)

    def _bulk(kind: str | None = _kind) -> Response:
        return _bulk_patch(kind)

    blueprint.add_url_rule(f"/{_plural}/<int:pk>", f"get_{_plural}", _get, methods=["GET"])
    blueprint.add_url_rule(f"/{_plural}/<int:pk>", f"patch_{_plural}", _patch, methods=["PATCH", "PUT"])
    blueprint.add_url_rule(f"/{_plural}/<int:pk>", f"delete_{_plural}", _remove, methods=["DELETE"])
    blueprint.add_url_rule(f"/{_plural}", f"bulk_{_plural}", _bulk, methods=["PATCH"])


@blueprint.route("/resources/<int:pk>/delete", methods=["DELETE"])
def delete_route(pk: int) -> Response:
    return _delete(pk, None)


# -- metadata documents -----------------------------------------------------------------------------
@blueprint.route("/resources/<int:pk>/metadata/<fmt>", methods=["GET"])
def metadata_document(pk: int, fmt: str) -> Response:
    """The resource's ISO 19139 (``iso``) or Dublin Core (``dc``) record (the ``links`` point here)."""
    from providers import metadata_xml

    row = _row(pk)
    _require(row, "read")
    doc = resource_doc(row)
    if fmt.lower() == "iso":
        body = metadata_xml.iso19139(row, doc["links"])
    elif fmt.lower() in ("dc", "dublin-core"):
        body = metadata_xml.dublin_core(row)
    else:
        raise NotFound(f"no metadata format {fmt[:20]!r}: iso or dc")
    return Response(body, mimetype="text/xml")


# -- permissions ---------------------------------------------------------------------------------------
def _principal_doc(
    principal: str, permission: str, users: dict[int, Record], roles: dict[int, Record]
) -> tuple[str, dict[str, Any]] | None:
    word = GRANT_WORDS.get(permission, "view")
    if principal == "anonymous":
        return "groups", {
            "id": ANONYMOUS_GROUP_ID,
            "title": "anonymous",
            "name": "anonymous",
            "permissions": word,
        }
    kind, _, ident = principal.partition(":")
    if not ident.isdigit():
        return None
    if kind == "user" and int(ident) in users:
        user = users[int(ident)]
        return "users", {
            **_user_doc(user.id, user.body.get("username")),
            "id": user.id,
            "permissions": word,
            "is_superuser": bool(user.body.get("admin")),
            "is_staff": bool(user.body.get("admin")),
        }
    if kind == "role" and int(ident) in roles:
        role = roles[int(ident)]
        name = role.body.get("name")
        return "groups", {"id": role.id, "title": name, "name": name, "permissions": word}
    return None


def perm_spec(row: dict[str, Any]) -> dict[str, Any]:
    """GeoNode's perm_spec of a resource, from its permission records (and its owner)."""
    store = current_auth().store
    users = {u.id: u for u in store.list("user")}
    roles = {r.id: r for r in store.list("role")}
    out: dict[str, list[dict[str, Any]]] = {"users": [], "groups": [], "organizations": []}
    owner = (row.get("owner") or {}).get("pk")
    if owner in users:
        entry = _principal_doc(f"user:{owner}", "OWNER", users, roles)
        if entry is not None:
            out["users"].append({**entry[1], "permissions": "owner"})
    for grant in Accounts(store).grants(row["pk"]):
        principal = grant.body["principal"]
        if principal == f"user:{owner}":
            continue
        entry = _principal_doc(principal, grant.body["permission"], users, roles)
        if entry is not None:
            out[entry[0]].append(entry[1])
    if row["resource_type"] == "dataset" and not Accounts(store).grants(row["pk"]):
        # No grant stored: what the configuration (or an unowned layer) allows.
        if "anonymous" in (row.get("readers") or []):
            out["groups"].append(
                {"id": ANONYMOUS_GROUP_ID, "title": "anonymous", "name": "anonymous", "permissions": "view"}
            )
    return out


def _wanted_grants(spec: dict[str, Any], accounts: Accounts) -> dict[str, str | None]:
    """principal -> permission (None: none) from a perm_spec of either shape."""
    wanted: dict[str, str | None] = {}
    for member, is_user in (("users", True), ("groups", False)):
        value = spec.get(member) or {}
        if isinstance(value, dict):  # legacy: {"name": ["view_resourcebase", ...]}
            items = [(name, perms) for name, perms in value.items()]
            for name, perms in items:
                if not isinstance(perms, list):
                    raise InvalidData(f"perm_spec.{member}.{str(name)[:40]}: a list of permissions")
                codes = set(perms)
                permission = (
                    "OWNER"
                    if "change_resourcebase_permissions" in codes
                    else ("EDIT" if codes & LEGACY_EDIT else ("READ" if codes & LEGACY_READ else None))
                )
                wanted[_principal_named(str(name), is_user, accounts)] = permission
        elif isinstance(value, list):
            for item in value:
                if not isinstance(item, dict) or "permissions" not in item:
                    raise InvalidData(f'perm_spec.{member}: a list of {{"id", "permissions"}}')
                word = str(item["permissions"]).lower()
                if word not in PERMISSION_WORDS:
                    raise InvalidData(
                        f"unknown permission {word[:20]!r}: none, view, download, edit or manage"
                    )
                ident = item.get("id", item.get("pk", item.get("username", item.get("name"))))
                wanted[_principal_of(ident, is_user, accounts)] = PERMISSION_WORDS[word]
        else:
            raise InvalidData(f"perm_spec.{member} must be a list or an object")
    return wanted


def _principal_named(name: str, is_user: bool, accounts: Accounts) -> str:
    if name in ("AnonymousUser", "anonymous"):
        return "anonymous"
    if is_user:
        return accounts.principal({"username": name})
    if name in ("registered-members",):
        raise InvalidData("the registered-members group is not supported: grant a role")
    return accounts.principal({"role": name})


def _principal_of(ident: Any, is_user: bool, accounts: Accounts) -> str:
    if isinstance(ident, bool) or ident is None:
        raise InvalidData("each perm_spec entry needs an id")
    if str(ident).lstrip("-").isdigit():
        number = int(str(ident))
        if (is_user and number == ANONYMOUS_USER_ID) or (not is_user and number == ANONYMOUS_GROUP_ID):
            return "anonymous"
        return accounts.principal({"user_id" if is_user else "role_id": number})
    return _principal_named(str(ident), is_user, accounts)


def set_permissions(row: dict[str, Any], spec: dict[str, Any], replace: bool) -> None:
    """Store a perm_spec as permission records of the resource's id (the pk)."""
    accounts = Accounts(current_auth().store)
    wanted = _wanted_grants(spec, accounts)
    owner = (row.get("owner") or {}).get("pk")
    wanted.pop(f"user:{owner}", None)  # the owner keeps owning
    if wanted.get("anonymous") not in (None, "READ"):
        wanted["anonymous"] = "READ"  # the public may read at most
    pk = row["pk"]
    if row["resource_type"] == "dataset" and _collection(row).layer_id is None:
        catalogue_sync.follower().collection_record(row["alternate"])  # the id the grants hang on
    current = {g.body["principal"]: g for g in accounts.grants(pk)}
    # Grants first, revocations after: a failure half-way leaves no one with less than asked
    # of the old spec... and never anyone with more than the new one grants.
    for principal, grant in current.items():
        if (replace and principal not in wanted) or (principal in wanted and wanted[principal] is None):
            if principal not in wanted or wanted[principal] is None:
                accounts.revoke_grant(pk, grant.id)
    for principal, permission in wanted.items():
        if permission is not None:
            accounts.grant(pk, principal, permission)
    withdrawn = replace or wanted.get("anonymous", "READ") is None
    if withdrawn and owner is None and row["resource_type"] == "dataset" and not accounts.grants(pk):
        # An empty spec on an unowned dataset must not fall back to "public": keep it for admins.
        accounts.grant(pk, "nobody", "READ")


@blueprint.route("/resources/<int:pk>/permissions", methods=["GET"])
def get_permissions(pk: int) -> Response:
    row = _row(pk)
    _require(row, "read")
    return json_response(perm_spec(row))


@blueprint.route("/resources/<int:pk>/permissions", methods=["PUT", "PATCH", "POST"])
def put_permissions(pk: int) -> Response:
    row = _row(pk)
    _require(row, "share")
    body = json_object()
    spec = body.get("perm_spec", body)
    if isinstance(spec, str):
        try:
            spec = orjson.loads(spec)
        except orjson.JSONDecodeError:
            raise InvalidData("perm_spec is not JSON") from None
    if not isinstance(spec, dict):
        raise InvalidData("perm_spec must be an object")
    set_permissions(row, spec, replace=request.method != "PATCH")
    follower = catalogue_sync.follower()
    follower.forget()
    follower.current()
    return json_response(_finished_execution("set_permissions", row, {"perm_spec": spec}))


@blueprint.route("/resources/<int:pk>/permissions", methods=["DELETE"])
def delete_permissions(pk: int) -> Response:
    row = _row(pk)
    _require(row, "share")
    accounts = Accounts(current_auth().store)
    for grant in accounts.grants(pk):
        accounts.revoke_grant(pk, grant.id)
    catalogue_sync.follower().forget()
    return json_response(_finished_execution("remove_permissions", row, {}))


def _finished_execution(func_name: str, row: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """GeoNode answers permission changes with an execution request: ours is done already."""
    from server.geonode_executions import FINISHED, KIND, Executions

    state = _state()
    executions = Executions(state.registry, state.jobs)
    record = executions.create(
        func_name, func_name, current_identity().user_id, {**params, "uuid": row["uuid"]}, source="resource"
    )
    now = datetime.now().timestamp()
    body = {
        **record.body,
        "status": FINISHED,
        "finished": now,
        "last_updated": now,
        "output_params": {"resources": [{"id": row["pk"], "uuid": row["uuid"]}]},
    }
    record = state.registry.store.update(KIND, record.id, body, key=record.key)
    base = f"{base_url()}{PREFIX}"
    return {
        "status": "ready",
        "execution_id": record.key,
        "status_url": f"{base}/resource-service/execution-status/{record.key}",
    }


@blueprint.route("/schema", methods=["GET"])
def schema() -> Response:
    """An OpenAPI 3 outline of these routes (paths and methods), as JSON."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in current_app.url_map.iter_rules():
        if rule.endpoint.startswith(("geonode.", "geonode_uploads.")):
            path = rule.rule.replace("<int:", "{").replace("<", "{").replace(">", "}")
            methods = sorted(m.lower() for m in rule.methods or () if m not in ("HEAD", "OPTIONS"))
            entry = paths.setdefault(path, {})
            for method in methods:
                entry[method] = {"responses": {"200": {"description": "OK"}}}
    info = {"title": "geoharbor GeoNode API v2", "version": "2"}
    return Response(
        orjson.dumps({"openapi": "3.0.3", "info": info, "paths": paths}),
        mimetype="application/vnd.oai.openapi+json",
    )
