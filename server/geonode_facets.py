"""GeoNode's facet lists: categories, keywords, thesaurus keywords, regions and owners.

Counts are over the resources the caller may read, so a facet never names what is
hidden from them (an owner of hidden datasets only, a keyword of a hidden dataset).
"""

from __future__ import annotations

from typing import Any

from flask import Response, request

from providers.catalogue import CatalogueQuery
from providers.errors import NotFound
from server.auth import current_identity
from server.geonode import CATEGORIES, _catalogue, _user_doc, _visible_to, blueprint, listing
from server.responses import json_response


def _counts(member: str) -> dict[Any, int]:
    """Value -> number of readable resources, for one facet."""
    visible = _visible_to(current_identity())
    catalogue = _catalogue()
    if visible is None and member != "owner":
        name = {"category": "category", "keywords": "keywords", "regions": "regions"}[member]
        return dict(catalogue.facets(name))
    rows, _ = catalogue.search(CatalogueQuery(limit=1_000_000, visible_to=visible))
    counts: dict[Any, int] = {}
    for row in rows:
        if member == "category":
            values = [row["category"]["identifier"]] if row.get("category") else []
        elif member == "owner":
            owner = row.get("owner") or {}
            values = [(owner.get("pk"), owner.get("username"))]
        else:
            values = row.get(member) or []
        for value in values:
            counts[value] = counts.get(value, 0) + 1
    return counts


def _paged(key: str, items: list[dict[str, Any]]) -> Response:
    search = (request.args.get("search") or "").strip().lower()
    if search:
        items = [i for i in items if any(search in str(v).lower() for v in i.values() if isinstance(v, str))]
    return listing(key, items)


def _categories() -> list[dict[str, Any]]:
    counts = _counts("category")
    return [
        {
            "id": n,
            "identifier": ident,
            "description": label,
            "gn_description": label,
            "is_choice": True,
            "fa_class": "fa-times",
            "count": counts.get(ident, 0),
        }
        for n, (ident, label) in enumerate(CATEGORIES.items(), start=1)
    ]


@blueprint.route("/categories", methods=["GET"])
def categories() -> Response:
    return _paged("categories", _categories())


@blueprint.route("/categories/<int:cat_id>", methods=["GET"])
def category(cat_id: int) -> Response:
    found = [c for c in _categories() if c["id"] == cat_id]
    if not found:
        raise NotFound(f"category {cat_id} not found")
    return json_response({"category": found[0]})


def _named(member: str) -> list[dict[str, Any]]:
    counts = _counts(member)
    out = []
    for n, (name, count) in enumerate(sorted(counts.items()), start=1):
        entry = {"id": n, "name": name, "slug": name.lower().replace(" ", "-"), "count": count}
        if member == "regions":
            entry = {"id": n, "code": name, "name": name, "count": count}
        out.append(entry)
    return out


@blueprint.route("/keywords", methods=["GET"])
def keywords() -> Response:
    return _paged("keywords", _named("keywords"))


@blueprint.route("/keywords/<int:kw_id>", methods=["GET"])
def keyword(kw_id: int) -> Response:
    found = [k for k in _named("keywords") if k["id"] == kw_id]
    if not found:
        raise NotFound(f"keyword {kw_id} not found")
    return json_response({"keyword": found[0]})


@blueprint.route("/tkeywords", methods=["GET"])
def tkeywords() -> Response:
    """Thesaurus keywords: geoharbor has no thesauri, so the list is empty."""
    return _paged("tkeywords", [])


@blueprint.route("/tkeywords/<int:kw_id>", methods=["GET"])
def tkeyword(kw_id: int) -> Response:
    raise NotFound(f"thesaurus keyword {kw_id} not found")


@blueprint.route("/regions", methods=["GET"])
def regions() -> Response:
    return _paged("regions", _named("regions"))


@blueprint.route("/regions/<int:region_id>", methods=["GET"])
def region(region_id: int) -> Response:
    found = [r for r in _named("regions") if r["id"] == region_id]
    if not found:
        raise NotFound(f"region {region_id} not found")
    return json_response({"region": found[0]})


def _owners() -> list[dict[str, Any]]:
    counts = _counts("owner")
    return [
        {**_user_doc(pk, name), "count": count}
        for (pk, name), count in sorted(counts.items(), key=lambda item: str(item[0][1]))
        if pk is not None
    ]


@blueprint.route("/owners", methods=["GET"])
def owners() -> Response:
    return _paged("owners", _owners())


@blueprint.route("/owners/<int:owner_id>", methods=["GET"])
def owner(owner_id: int) -> Response:
    found = [o for o in _owners() if o["pk"] == owner_id]
    if not found:
        raise NotFound(f"owner {owner_id} not found")
    return json_response({"owner": found[0]})
