"""GeoNode's per-resource actions: extra metadata, favorites, ratings, linked resources, copy,
and a dataset's attributes, map layers and maps (routes of :mod:`server.geonode`'s blueprint).

Favorites, ratings and extra metadata are the catalogue's own: they live in the row
(:mod:`providers.catalogue` keeps members it has no column for). A copy makes a new
thing of the same kind through the same paths as its own API: a map record, or a layer
record over the same table (a dataset of its own, owned by the caller).
"""

from __future__ import annotations

from typing import Any

from flask import Response, request

from providers.catalogue import CatalogueQuery, Filter
from providers.errors import Conflict, InvalidData, NotFound, Unauthorized
from server import catalogue_sync
from server.auth import current_auth, current_identity
from server.geonode import (
    MAX_RATING,
    _catalogue,
    _collection,
    _envelope,
    _extra_metadata,
    _require,
    _row,
    _state,
    _typed_row,
    _user_key,
    _visible_to,
    blueprint,
    json_object,
    resource_doc,
)
from server.responses import json_response
from server.rest_layers import columns


def _patch_row(pk: int, changes: dict[str, Any]) -> dict[str, Any]:
    return catalogue_sync.follower().catalogue.patch(pk, changes)


# -- extra metadata ---------------------------------------------------------------------------------
@blueprint.route("/resources/<int:pk>/extra_metadata", methods=["GET"])
def get_extra_metadata(pk: int) -> Response:
    row = _row(pk)
    _require(row, "read")
    return json_response(row.get("extra_metadata") or [])


@blueprint.route("/resources/<int:pk>/extra_metadata", methods=["POST", "PUT", "DELETE"])
def change_extra_metadata(pk: int) -> Response:
    """POST adds entries, PUT replaces the entries with the same ``id`` (or all), DELETE removes by ``id``."""
    row = _row(pk)
    _require(row, "write")
    body: Any = request.get_json(silent=True)
    entries = _extra_metadata(body if body is not None else [])
    current = list(row.get("extra_metadata") or [])
    if request.method == "POST":
        next_id = max((int(e.get("id", 0)) for e in current if str(e.get("id", "")).isdigit()), default=0)
        for entry in entries:
            next_id += 1
            current.append({**entry, "id": next_id})
    elif request.method == "PUT":
        by_id = {e.get("id"): e for e in entries if "id" in e}
        current = [by_id.get(e.get("id"), e) for e in current] if by_id else entries
    else:
        gone = {e.get("id") for e in entries}
        current = [e for e in current if e.get("id") not in gone]
    updated = _patch_row(pk, {"extra_metadata": _extra_metadata(current)})
    return json_response(updated.get("extra_metadata") or [], 201 if request.method == "POST" else 200)


# -- favorites and ratings ----------------------------------------------------------------------------
@blueprint.route("/resources/<int:pk>/favorite", methods=["POST", "DELETE"])
def favorite(pk: int) -> Response:
    identity = current_identity()
    if identity.anonymous:
        raise Unauthorized("Authentication credentials were not provided.")
    row = _row(pk)
    key = _user_key()
    marked = [k for k in row.get("favorites") or [] if k != key]
    if request.method == "POST":
        if key in (row.get("favorites") or []):
            return json_response({"message": "Resource is already in favorites"}, 400)
        marked.append(key)
        _patch_row(pk, {"favorites": marked})
        return json_response({"message": "Successfuly added resource to favorites"}, 201)
    if key not in (row.get("favorites") or []):
        return json_response({"message": "Resource not in favorites"}, 404)
    _patch_row(pk, {"favorites": marked})
    return json_response({"message": "Successfuly removed resource from favorites"})


@blueprint.route("/resources/<int:pk>/ratings", methods=["GET", "POST"])
def ratings(pk: int) -> Response:
    row = _row(pk)
    scores: dict[str, int] = dict(row.get("ratings") or {})
    if request.method == "POST":
        if current_identity().anonymous:
            raise Unauthorized("Authentication credentials were not provided.")
        value = json_object().get("rating")
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_RATING:
            raise InvalidData(f"rating must be an integer from 1 to {MAX_RATING}")
        scores[_user_key()] = value
        _patch_row(pk, {"ratings": scores})
    mine = scores.get(_user_key(), 0)
    overall = round(sum(scores.values()) / len(scores), 2) if scores else 0
    return json_response({"rating": mine, "overall_rating": overall})


# -- links between resources -------------------------------------------------------------------------
def _visible_rows(pks: list[int]) -> list[dict[str, Any]]:
    if not pks:
        return []
    query = CatalogueQuery(
        filters=[Filter("pk", "in", [str(p) for p in pks])],
        limit=len(pks),
        visible_to=_visible_to(current_identity()),
    )
    return _catalogue().search(query)[0]


def _maps_using(pk: int) -> list[dict[str, Any]]:
    query = CatalogueQuery(
        filters=[Filter("resource_type", "eq", "map")],
        limit=100_000,
        visible_to=_visible_to(current_identity()),
    )
    return [r for r in _catalogue().search(query)[0] if pk in (r.get("maplayers") or [])]


@blueprint.route("/resources/<int:pk>/linked_resources", methods=["GET"])
def linked_resources(pk: int) -> Response:
    """A map links to its datasets, a document to what it is attached to; a dataset is linked
    from the maps that use it, and a dataset or map from the documents attached to it."""
    row = _row(pk)
    kind = row["resource_type"]
    linked_to = _visible_rows([int(p) for p in row.get("maplayers") or []]) if kind == "map" else []
    if kind == "document":
        linked_to = _visible_rows([int(p) for p in row.get("links") or []])
    linked_by = _maps_using(pk) if kind == "dataset" else []
    if kind in ("dataset", "map"):
        linked_by += _documents_of(pk)

    def entry(other: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
        doc = resource_doc(other)
        keep = ("pk", "title", "resource_type", "detail_url", "thumbnail_url", "owner")
        documented = "document" in (other["resource_type"], target["resource_type"])
        return {
            **{k: doc[k] for k in keep},
            "internal": True,
            "link_type": "related" if documented else "maplayer",
        }

    return json_response(
        {
            "linked_to": [entry(r, row) for r in linked_to],
            "linked_by": [entry(r, row) for r in linked_by],
            "warnings": [],
        }
    )


def _documents_of(pk: int) -> list[dict[str, Any]]:
    """The documents attached to resource ``pk`` that the caller may read."""
    query = CatalogueQuery(
        filters=[Filter("resource_type", "eq", "document")],
        limit=10_000,
        visible_to=_visible_to(current_identity()),
    )
    return [r for r in _catalogue().search(query)[0] if pk in (r.get("links") or [])]


@blueprint.route("/datasets/<int:pk>/maps", methods=["GET"])
def dataset_maps(pk: int) -> Response:
    _typed_row(pk, "dataset")
    rows = _maps_using(pk)
    return _envelope("maps", [resource_doc(r) for r in rows], len(rows), 1, max(len(rows), 1))


@blueprint.route("/datasets/<int:pk>/maplayers", methods=["GET"])
def dataset_maplayers(pk: int) -> Response:
    row = _typed_row(pk, "dataset")
    layers = [
        {"pk": m["pk"], "name": row.get("alternate"), "dataset": {"pk": str(pk)}, "map": {"pk": str(m["pk"])}}
        for m in _maps_using(pk)
    ]
    return json_response({"maplayers": layers})


@blueprint.route("/maps/<int:pk>/datasets", methods=["GET"])
def map_datasets(pk: int) -> Response:
    row = _typed_row(pk, "map")
    rows = _visible_rows([int(p) for p in row.get("maplayers") or []])
    return json_response({"datasets": [resource_doc(r) for r in rows]})


@blueprint.route("/maps/<int:pk>/maplayers", methods=["GET"])
def map_maplayers(pk: int) -> Response:
    row = _typed_row(pk, "map")
    rows = _visible_rows([int(p) for p in row.get("maplayers") or []])
    return json_response(
        {
            "maplayers": [
                {"pk": r["pk"], "name": r.get("alternate"), "dataset": {"pk": str(r["pk"])}} for r in rows
            ]
        }
    )


@blueprint.route("/datasets/<int:pk>/attribute_set", methods=["GET"])
def attribute_set(pk: int) -> Response:
    """The dataset's attributes as GeoNode lists them (from the source's own description)."""
    row = _typed_row(pk, "dataset")
    _require(row, "read")
    schema = _collection(row).provider.schema
    attributes = []
    if schema.geometry_field:
        attributes.append(
            {
                "pk": 0,
                "attribute": schema.geometry_field,
                "attribute_type": f"gml:{schema.geometry_type}",
                "attribute_label": None,
                "description": None,
                "display_order": 0,
                "visible": True,
            }
        )
    for order, column in enumerate(columns(schema), start=1):
        attributes.append(
            {
                "pk": order,
                "attribute": column["name"],
                "attribute_type": column["native_type"] or column["type"],
                "attribute_label": None,
                "description": None,
                "display_order": order,
                "visible": True,
            }
        )
    return json_response({"attributes": attributes})


# -- copy ------------------------------------------------------------------------------------------------
@blueprint.route("/resources/<int:pk>/copy", methods=["PUT", "POST"])
def copy(pk: int) -> Response:
    """A copy owned by the caller: a map record, or a layer over the dataset's table."""
    row = _row(pk)
    _require(row, "read")
    auth, identity = current_auth(), current_identity()
    kind = "a map" if row["resource_type"] == "map" else "a layer"
    auth.require_create(identity, kind)
    state = _state()
    store = state.registry.store
    title = f"Copy of {row['title']}"[:200]
    if row["resource_type"] == "map":
        body = {**store.get("map", pk).body, "name": title}
        body.pop("owner", None)
        if identity.user_id is not None:
            body["owner"] = identity.user_id
        made = store.insert("map", body)
    elif row["resource_type"] == "dataset":
        coll = _collection(row)
        if coll.layer_id is not None:
            body = dict(store.get("layer", coll.layer_id).body)
        else:
            spec = state.config["sources"].get(coll.source) or {}
            member = "table" if spec.get("type") == "postgis" else "layer"
            ref = getattr(coll.provider, "ref", None)
            table = f"{ref.schema}.{ref.table}" if ref is not None else getattr(coll.provider, "layer", None)
            if not spec or table is None:
                raise Conflict(
                    f"dataset {pk} cannot be copied (its source is not a database or a GeoPackage)"
                )
            body = {"source": coll.source, member: table}
        body.pop("owner", None)
        body.update({"title": title, "collection": _free_id(f"{coll.id}_copy")})
        if identity.user_id is not None:
            body["owner"] = identity.user_id
        made = state.registry.create_layer(body)
    else:
        raise NotFound(f"{row['resource_type']} {pk} cannot be copied")
    follower = catalogue_sync.follower()
    follower.forget()
    copied = follower.current().get(made.id)
    from server.geonode import _finished_execution

    return json_response(_finished_execution("copy", copied, {"source": pk}))


def _free_id(wanted: str) -> str:
    taken = _state().registry.collections
    cid, n = wanted[:60], 1
    while cid in taken:
        n += 1
        cid = f"{wanted[:56]}_{n}"
    return cid
