"""GeoNode's users and groups over geoharbor's users and roles (a GeoNode group is a role).

Reading people needs a key once keys exist (anonymous callers see no one); users and
roles are changed through the accounts API (``/users``, ``/roles``) and the command
line, which hold their rules (:mod:`server.accounts`).
"""

from __future__ import annotations

from typing import Any

from flask import Response, request

from providers.catalogue import CatalogueQuery, Filter
from providers.errors import Unauthorized
from providers.store import Record
from server.auth import current_auth, current_identity
from server.geonode import _catalogue, _envelope, _user_doc, _visible_to, blueprint, listing, resource_doc
from server.geonode_params import page_numbers
from server.responses import json_response


def _store() -> Any:
    return current_auth().store


def _check_reader() -> None:
    if current_auth().mode != "community" and current_identity().anonymous:
        raise Unauthorized("Authentication credentials were not provided.")


def user_doc(record: Record) -> dict[str, Any]:
    body = record.body
    doc = _user_doc(record.id, body.get("username"))
    admin = bool(body.get("admin"))
    doc.update(
        {
            "first_name": body.get("firstname") or "",
            "last_name": body.get("lastname") or "",
            "is_superuser": admin,
            "is_staff": admin,
            "is_active": body.get("active", True),
        }
    )
    identity = current_identity()
    if identity.admin or identity.user_id == record.id:
        doc["email"] = body.get("email")
    return doc


def group_doc(record: Record) -> dict[str, Any]:
    name = record.body.get("name")
    return {
        "pk": record.id,
        "title": name,
        "group": {"pk": record.id, "name": name},
        "slug": str(name).lower().replace(" ", "-"),
        "logo": None,
        "description": "",
        "email": None,
        "keywords": [],
        "access": "public",
        "categories": [],
    }


def _page(key: str, items: list[dict[str, Any]]) -> Response:
    search = (request.args.get("search") or "").strip().lower()
    if search:
        items = [i for i in items if search in str(i.get("username") or i.get("title") or "").lower()]
    return listing(key, items)


def _user(user_id: int) -> Record:
    return _store().get("user", user_id)


def _group(group_id: int) -> Record:
    return _store().get("role", group_id)


@blueprint.route("/users", methods=["GET"])
def users() -> Response:
    _check_reader()
    return _page("users", [user_doc(u) for u in _store().list("user")])


@blueprint.route("/users/<int:user_id>", methods=["GET"])
def user(user_id: int) -> Response:
    _check_reader()
    return json_response({"user": user_doc(_user(user_id))})


@blueprint.route("/users/<int:user_id>/groups", methods=["GET"])
def user_groups(user_id: int) -> Response:
    _check_reader()
    roles = set(_user(user_id).body.get("roles") or [])
    return _page("groups", [group_doc(r) for r in _store().list("role") if r.id in roles])


@blueprint.route("/users/<int:user_id>/resources", methods=["GET"])
def user_resources(user_id: int) -> Response:
    _check_reader()
    _user(user_id)
    page, size = page_numbers(request.args)
    query = CatalogueQuery(
        filters=[Filter("owner.pk", "eq", user_id)],
        offset=(page - 1) * size,
        limit=size,
        visible_to=_visible_to(current_identity()),
    )
    rows, total = _catalogue().search(query)
    return _envelope("resources", [resource_doc(r) for r in rows], total, page, size)


@blueprint.route("/groups", methods=["GET"])
def groups() -> Response:
    _check_reader()
    return _page("group_profiles", [group_doc(r) for r in _store().list("role")])


@blueprint.route("/groups/<int:group_id>", methods=["GET"])
def group(group_id: int) -> Response:
    _check_reader()
    return json_response({"group_profile": group_doc(_group(group_id))})


@blueprint.route("/groups/<int:group_id>/members", methods=["GET"])
def group_members(group_id: int) -> Response:
    _check_reader()
    _group(group_id)
    members = [u for u in _store().list("user") if group_id in (u.body.get("roles") or [])]
    return _page("users", [user_doc(u) for u in members])


@blueprint.route("/groups/<int:group_id>/managers", methods=["GET"])
def group_managers(group_id: int) -> Response:
    """Roles have no managers of their own: admins manage every role."""
    _check_reader()
    _group(group_id)
    admins = [
        u for u in _store().list("user") if u.body.get("admin") and group_id in (u.body.get("roles") or [])
    ]
    return _page("users", [user_doc(u) for u in admins])


@blueprint.route("/groups/<int:group_id>/resources", methods=["GET"])
def group_resources(group_id: int) -> Response:
    """Resources whose catalogue group is this role, or that this role may read."""
    _check_reader()
    record = _group(group_id)
    rows, _ = _catalogue().search(CatalogueQuery(limit=1_000_000, visible_to=_visible_to(current_identity())))
    principal = f"role:{group_id}"
    name = record.body.get("name")
    mine = [
        r for r in rows if principal in (r.get("readers") or []) or (r.get("group") or {}).get("name") == name
    ]
    return listing("resources", [resource_doc(r) for r in mine])
