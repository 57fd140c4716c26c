"""REST users, roles, API keys and resource permissions (``/users``, ``/roles``, ``/keys``,
``/resources/{id}/permissions``), in the reference's shapes.

Who may do what:

- users: admins only (``users/me`` answers any key holder about itself);
- roles: any key holder reads them, admins change them;
- keys: a user manages their own with a key of scope write (or admin); admins manage
  everyone's. A key is shown once, in the answer that creates it; the store keeps its
  SHA-256 digest and first six characters (``key_trunc``). Deleting a key revokes it:
  the write moves the store generation, so every worker refuses it on its next request;
- permissions of a resource (a layer, map or table record): its owner, an admin or a
  holder of an OWNER grant lists and changes them. A resource the caller may not read
  is not found (404), as everywhere.

The rules of the records themselves (names, scopes, expiry, role parents) are in
:mod:`server.accounts`, shared with the command line.
"""

from __future__ import annotations

from typing import Any

from flask import Response, request

from providers.errors import Forbidden, InvalidData, InvalidQuery, NotFound, Unauthorized
from providers.store import Record
from server.accounts import Accounts, parse_expires, parse_expires_in, parse_scopes
from server.auth import (
    ANONYMOUS_PRINCIPAL,
    SCOPES,
    Identity,
    current_auth,
    current_identity,
    require_admin,
    require_scope,
)
from server.rest import blueprint, document, envelope, json_body, no_content, paging, rest_url, wants_total
from server.rest_layers import (
    PAGING_PARAMETERS,
    error_responses,
    json_body_schema,
    json_response,
    list_schema,
    path_parameter,
    query_parameter,
    registry,
    sort_records,
)

#: Scopes that let a user manage their own keys.
KEY_MANAGING_SCOPES = ("write", "admin")
#: A key's scopes when the request names none: the least a key can do.
DEFAULT_SCOPES = ["read"]

USER_ORDER = {
    "id": lambda r: r.id,
    "username": lambda r: str(r.body.get("username") or ""),
    "email": lambda r: str(r.body.get("email") or ""),
    "created": lambda r: r.created,
    "modified": lambda r: r.modified,
}
ROLE_ORDER = {
    "id": lambda r: r.id,
    "name": lambda r: str(r.body.get("name") or ""),
    "created": lambda r: r.created,
    "modified": lambda r: r.modified,
}
KEY_ORDER = {
    "id": lambda r: r.id,
    "created": lambda r: r.created,
    "expires": lambda r: r.body.get("expires") or float("inf"),
    "description": lambda r: str(r.body.get("description") or ""),
    "user_id": lambda r: r.body.get("user_id") or 0,
}


def accounts() -> Accounts:
    return Accounts(registry().store)


def _listed(kind: str, records: list[Record], order: dict[str, Any], doc: Any) -> Response:
    page = paging()
    ordered = sort_records(records, order)
    data = [doc(r) for r in ordered[page.offset : page.offset + page.perpage]]
    return envelope(kind, data, len(ordered) if wants_total() else None, page.page)


# -- users ------------------------------------------------------------------------------------
def user_doc(record: Record) -> dict[str, Any]:
    body = record.body
    return {
        "id": record.id,
        "username": body.get("username"),
        "email": body.get("email"),
        "firstname": body.get("firstname"),
        "lastname": body.get("lastname"),
        "active": body.get("active", True),
        "admin": bool(body.get("admin")),
        "roles": body.get("roles", []),
        "created": int(record.created),
        "modified": int(record.modified),
        "links": [{"rel": "self", "type": "application/json", "href": rest_url(f"/users/{record.id}")}],
    }


@blueprint.route("/users", methods=["GET"])
def list_users() -> Response:
    require_admin(current_identity(), "list users")
    return _listed("users", accounts().store.list("user"), USER_ORDER, user_doc)


@blueprint.route("/users/me", methods=["GET"])
def get_current_user() -> Response:
    """The caller: its user (if the key has one) with the key's scopes and admin rights."""
    identity = current_identity()
    if identity.anonymous:
        raise Unauthorized("no API key: the caller is anonymous")
    if identity.user_id is None:
        doc: dict[str, Any] = {"id": None, "username": identity.username}
    else:
        doc = user_doc(accounts().user(identity.user_id))
    doc.update(
        {
            "admin": identity.admin,
            "scopes": [s for s in SCOPES if s in identity.scopes],
            "key_id": identity.key_id,
            "role_ids": sorted(identity.roles),
        }
    )
    return document(doc)


@blueprint.route("/users/<int:user_id>", methods=["GET"])
def get_user(user_id: int) -> Response:
    require_admin(current_identity(), "read users")
    return document(user_doc(accounts().user(user_id)))


@blueprint.route("/users", methods=["POST"])
def create_user() -> Response:
    require_admin(current_identity(), "create users")
    record = accounts().create_user(json_body())
    return document(user_doc(record), 201, {"Location": rest_url(f"/users/{record.id}")})


@blueprint.route("/users/<int:user_id>", methods=["PUT", "PATCH"])
def update_user(user_id: int) -> Response:
    require_admin(current_identity(), "change users")
    return document(user_doc(accounts().update_user(user_id, json_body())))


@blueprint.route("/users/<int:user_id>", methods=["DELETE"])
def delete_user(user_id: int) -> Response:
    """Delete a user; their keys are refused from this request on, on every worker."""
    require_admin(current_identity(), "delete users")
    accounts().delete_user(user_id)
    return no_content()


# -- roles ------------------------------------------------------------------------------------
def role_doc(record: Record) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.body.get("name"),
        "parent_id": record.body.get("parent_id"),
        "created": int(record.created),
        "modified": int(record.modified),
        "links": [{"rel": "self", "type": "application/json", "href": rest_url(f"/roles/{record.id}")}],
    }


@blueprint.route("/roles", methods=["GET"])
def list_roles() -> Response:
    require_scope(current_identity(), SCOPES, "list roles")
    return _listed("roles", accounts().store.list("role"), ROLE_ORDER, role_doc)


@blueprint.route("/roles/<int:role_id>", methods=["GET"])
def get_role(role_id: int) -> Response:
    require_scope(current_identity(), SCOPES, "read roles")
    return document(role_doc(accounts().role(role_id)))


@blueprint.route("/roles", methods=["POST"])
def create_role() -> Response:
    require_admin(current_identity(), "create roles")
    record = accounts().create_role(json_body())
    return document(role_doc(record), 201, {"Location": rest_url(f"/roles/{record.id}")})


@blueprint.route("/roles/<int:role_id>", methods=["PUT", "PATCH"])
def update_role(role_id: int) -> Response:
    require_admin(current_identity(), "change roles")
    return document(role_doc(accounts().update_role(role_id, json_body())))


@blueprint.route("/roles/<int:role_id>", methods=["DELETE"])
def delete_role(role_id: int) -> Response:
    require_admin(current_identity(), "delete roles")
    accounts().delete_role(role_id)
    return no_content()


# -- keys -------------------------------------------------------------------------------------
def key_doc(record: Record, usernames: dict[int, str] | None = None) -> dict[str, Any]:
    """A key as anyone may see it again: never the key, only its first characters."""
    body = record.body
    user_id = body.get("user_id")
    expires = body.get("expires")
    return {
        "id": record.id,
        "key_trunc": body.get("key_trunc"),
        "description": body.get("description"),
        "scopes": body.get("scopes", []),
        "user_id": user_id,
        "username": (usernames or {}).get(user_id) if user_id is not None else None,
        "expires": None if expires is None else int(expires),
        "active": body.get("active", True),
        "created": int(record.created),
        "modified": int(record.modified),
        "links": [{"rel": "self", "type": "application/json", "href": rest_url(f"/keys/{record.id}")}],
    }


def _usernames(acc: Accounts) -> dict[int, str]:
    return {u.id: u.body.get("username") for u in acc.store.list("user")}


def _key_manager(identity: Identity, what: str) -> bool:
    """Check the caller may manage keys at all; True when it may manage everyone's.

    A key of no user that is not an admin's (a deployment's read or write key) owns
    no keys to manage.
    """
    if identity.admin:
        return True
    if current_auth().mode == "community":
        require_admin(identity, what)  # no keys yet: the machine's own clients make the first
        return True
    require_scope(identity, KEY_MANAGING_SCOPES, what)
    if identity.user_id is None:
        raise Forbidden(f"this API key belongs to no user: it may not {what}")
    return False


def _own_key(acc: Accounts, key_id: int, identity: Identity, every: bool) -> Record:
    """A key the caller may see: another user's is not found (its existence does not leak)."""
    record = acc.key(key_id)
    if not every and record.body.get("user_id") != identity.user_id:
        raise NotFound(f"key {key_id} not found")
    return record


@blueprint.route("/keys", methods=["GET"])
def list_keys() -> Response:
    """The caller's keys (an admin: everyone's, or one user's with ``user_id``)."""
    identity = current_identity()
    every = _key_manager(identity, "list API keys")
    acc = accounts()
    raw = request.args.get("user_id")
    if raw:
        if not raw.isdigit():
            raise InvalidQuery("user_id must be a user id")
        if not every and int(raw) != identity.user_id:
            raise Forbidden("only an admin may list another user's keys")
        records = acc.keys(user_id=int(raw))
    elif every:
        records = acc.keys()
    else:
        records = acc.keys(user_id=identity.user_id)
    names = _usernames(acc)
    return _listed("keys", records, KEY_ORDER, lambda r: key_doc(r, names))


@blueprint.route("/keys/<int:key_id>", methods=["GET"])
def get_key(key_id: int) -> Response:
    identity = current_identity()
    every = _key_manager(identity, "read API keys")
    acc = accounts()
    return document(key_doc(_own_key(acc, key_id, identity, every), _usernames(acc)))


def _key_owner(acc: Accounts, body: dict[str, Any], identity: Identity, every: bool) -> Record | None:
    """Whose key is made: the named user (admins), else the caller's own user."""
    named: Record | None = None
    if body.get("user_id") is not None:
        user_id = body["user_id"]
        if isinstance(user_id, bool) or not isinstance(user_id, int):
            raise InvalidData("user_id must be a user id")
        try:
            named = acc.user(user_id)
        except NotFound:
            raise InvalidData(f"user_id: no user {user_id}") from None
    elif body.get("username") is not None:
        if not isinstance(body["username"], str):
            raise InvalidData("username must be a string")
        named = acc.store.find("user", body["username"])
        if named is None:
            raise InvalidData(f"no user named {body['username'][:64]!r}")
    if every:
        if named is None and identity.user_id is not None:
            return acc.user(identity.user_id)
        return named
    if named is not None and named.id != identity.user_id:
        raise Forbidden("only an admin may make keys for another user")
    return acc.user(identity.user_id)  # type: ignore[arg-type] - checked by _key_manager


def _within_own_lifetime(acc: Accounts, identity: Identity, expires: float | None) -> float | None:
    """A key made by a user's key may not outlive it: a short-lived key handed to a job
    must not mint a lasting one. Without an expiry asked for, the new key gets the
    maker's."""
    if identity.key_id is None:
        return expires
    limit = acc.store.get("key", identity.key_id).body.get("expires")
    if limit is None:
        return expires
    if expires is None:
        return limit
    if expires > limit:
        raise Forbidden("a key may not make a key that expires after itself")
    return expires


@blueprint.route("/keys", methods=["POST"])
def create_key() -> Response:
    """A new key, shown once in this answer (``key``) and never again."""
    identity = current_identity()
    every = _key_manager(identity, "create API keys")
    body = json_body()
    unknown = sorted(
        set(body) - {"scopes", "description", "key_desc", "expires", "expires_in", "user_id", "username"}
    )
    if unknown:
        raise InvalidData(f"unknown key member {unknown[0][:60]!r}")
    acc = accounts()
    owner = _key_owner(acc, body, identity, every)
    scopes = parse_scopes(body["scopes"]) if body.get("scopes") is not None else list(DEFAULT_SCOPES)
    if not every and not set(scopes) <= identity.scopes:
        raise Forbidden("a key may only make keys with scopes it has itself")
    if body.get("expires") is not None and body.get("expires_in") is not None:
        raise InvalidData("give expires or expires_in, not both")
    if body.get("expires_in") is not None:
        expires = parse_expires_in(body["expires_in"])
    else:
        expires = parse_expires(body.get("expires"))
    if not every:
        expires = _within_own_lifetime(acc, identity, expires)
    description = body.get("description", body.get("key_desc"))
    key, record = acc.create_key(owner, scopes, description, expires)
    doc = key_doc(record, _usernames(acc))
    doc["key"] = key
    headers = {"Location": rest_url(f"/keys/{record.id}"), "Cache-Control": "no-store"}
    return document(doc, 201, headers)


@blueprint.route("/keys/<int:key_id>", methods=["DELETE"])
@blueprint.route("/keys/rows/<int:key_id>", methods=["DELETE"])  # the reference's own example URL
def revoke_key(key_id: int) -> Response:
    """Revoke a key: every worker refuses it from its next request on."""
    identity = current_identity()
    every = _key_manager(identity, "revoke API keys")
    acc = accounts()
    _own_key(acc, key_id, identity, every)
    acc.revoke_key(key_id)
    return no_content()


# -- permissions of a resource -------------------------------------------------------------
def _shared_resource(resource_id: int, write: bool) -> Record:
    """The resource, if the caller may see and change who shares it.

    Not readable: 404 (its existence must not leak). Readable without the right to
    share (owner, admin or an OWNER grant): 401 anonymous, 403 with a key. Changing
    grants also needs a key with the write scope.
    """
    identity = current_identity()
    auth = current_auth()
    record = accounts().resource(resource_id)
    rights = auth.resource_rights(identity, record.id, record.body.get("owner"))
    what = f"resource {resource_id}"
    auth.require(identity, "read", rights, what)
    if write:
        auth.require(identity, "write", rights, what)
    if auth.mode == "community" or "share" in rights:
        return record
    if identity.anonymous:
        raise Unauthorized(f"an API key is needed to see who shares {what}")
    raise Forbidden(f"only the owner of {what} (or an OWNER grant) may see and change who shares it")


def _principal_names(acc: Accounts) -> tuple[dict[int, str], dict[int, str]]:
    users = _usernames(acc)
    roles = {r.id: r.body.get("name") for r in acc.store.list("role")}
    return users, roles


def _who(principal: str, users: dict[int, str], roles: dict[int, str]) -> dict[str, Any]:
    """A principal in the reference's terms: ``username`` (``anonymous`` for the public) or a role."""
    kind, _, rid = principal.partition(":")
    if kind == "user":
        return {"username": users.get(int(rid)), "user_id": int(rid)}
    if kind == "role":
        return {"role": roles.get(int(rid)), "role_id": int(rid)}
    return {"username": ANONYMOUS_PRINCIPAL, "anonymous": True}


def grant_doc(record: Record, users: dict[int, str], roles: dict[int, str]) -> dict[str, Any]:
    body = record.body
    return {
        "id": record.id,
        "share_id": record.id,
        "resource_id": body["resource_id"],
        **_who(body["principal"], users, roles),
        "permission": body["permission"],
        "created": int(record.created),
        "modified": int(record.modified),
    }


@blueprint.route("/resources/<int:resource_id>/permissions", methods=["GET"])
def list_permissions(resource_id: int) -> Response:
    """Who shares the resource, one entry per principal (the owner first, with no share_id)."""
    record = _shared_resource(resource_id, write=False)
    acc = accounts()
    users, roles = _principal_names(acc)
    entries: list[dict[str, Any]] = []
    owner = record.body.get("owner")
    if owner is not None:
        entries.append(
            {
                **_who(f"user:{owner}", users, roles),
                "owner": True,
                "permissions": [{"type": "OWNER", "share_id": None}],
            }
        )
    for grant in acc.grants(resource_id):
        entries.append(
            {
                **_who(grant.body["principal"], users, roles),
                "permissions": [{"type": grant.body["permission"], "share_id": grant.id}],
            }
        )
    page = paging()
    data = entries[page.offset : page.offset + page.perpage]
    return envelope("permissions", data, len(entries) if wants_total() else None, page.page)


@blueprint.route("/resources/<int:resource_id>/permissions", methods=["POST"])
def create_permission(resource_id: int) -> Response:
    """Share the resource: ``{"username"|"role"|"role_id"|"anonymous": true, "permission"}``.

    A principal holds one grant per resource: sharing again replaces it (200).
    """
    _shared_resource(resource_id, write=True)
    body = json_body()
    unknown = sorted(set(body) - {"username", "user_id", "role", "role_id", "anonymous", "permission"})
    if unknown:
        raise InvalidData(f"unknown permission member {unknown[0][:60]!r}")
    acc = accounts()
    principal = acc.principal(body)
    grant, created = acc.grant(resource_id, principal, acc.permission(body.get("permission")))
    users, roles = _principal_names(acc)
    location = rest_url(f"/resources/{resource_id}/permissions/{grant.id}")
    return document(grant_doc(grant, users, roles), 201 if created else 200, {"Location": location})


@blueprint.route("/resources/<int:resource_id>/permissions/<int:share_id>", methods=["GET"])
def get_permission(resource_id: int, share_id: int) -> Response:
    _shared_resource(resource_id, write=False)
    acc = accounts()
    users, roles = _principal_names(acc)
    return document(grant_doc(acc.grant_record(resource_id, share_id), users, roles))


@blueprint.route("/resources/<int:resource_id>/permissions/<int:share_id>", methods=["DELETE"])
def delete_permission(resource_id: int, share_id: int) -> Response:
    _shared_resource(resource_id, write=True)
    accounts().revoke_grant(resource_id, share_id)
    return no_content()


# -- OpenAPI ----------------------------------------------------------------------------------
AUTH_ERRORS = {401: "No API key, or an unknown, expired or revoked one", 403: "This API key may not"}


def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths (under ``prefix``) and component schemas of these routes."""

    def errors(*statuses: int) -> dict[str, Any]:
        return error_responses(401, 403, *statuses, texts=AUTH_ERRORS)

    def crud(
        name: str,
        plural: str,
        ref: str,
        input_ref: str,
        who: dict[str, str],
        param: dict[str, Any],
        order: str,
    ) -> dict[str, Any]:
        title = name.capitalize()
        return {
            f"{prefix}/{plural}": {
                "get": {
                    "summary": f"List the {plural} ({who['read']})",
                    "operationId": f"restList{title}s",
                    "parameters": [*PAGING_PARAMETERS, query_parameter("order_by", order)],
                    "responses": {"200": json_response(title + "s", list_schema(ref)), **errors(400)},
                },
                "post": {
                    "summary": f"Create a {name} ({who['write']})",
                    "operationId": f"restCreate{title}",
                    "requestBody": json_body_schema(input_ref, f"The new {name}"),
                    "responses": {
                        "201": json_response(f"The {name}", {"$ref": ref}),
                        **errors(400, 409, 422),
                    },
                },
            },
            f"{prefix}/{plural}/{{{param['name']}}}": {
                "parameters": [param],
                "get": {
                    "summary": f"One {name} ({who['read']})",
                    "operationId": f"restGet{title}",
                    "responses": {"200": json_response(f"The {name}", {"$ref": ref}), **errors(404)},
                },
                "put": {
                    "summary": f"Change a {name}: only the members given ({who['write']})",
                    "operationId": f"restUpdate{title}",
                    "requestBody": json_body_schema(input_ref, "Members to change"),
                    "responses": {
                        "200": json_response(f"The {name}", {"$ref": ref}),
                        **errors(400, 404, 409, 422),
                    },
                },
                "delete": {
                    "summary": f"Delete a {name} ({who['write']})",
                    "operationId": f"restDelete{title}",
                    "responses": {"204": {"description": "Deleted"}, **errors(404)},
                },
            },
        }

    admins = {"read": "admins", "write": "admins"}
    paths = {
        **crud(
            "user",
            "users",
            "#/components/schemas/RestUser",
            "#/components/schemas/RestUserInput",
            admins,
            path_parameter("user_id", "User id"),
            "username, email, created, modified or id, then :asc or :desc",
        ),
        f"{prefix}/users/me": {
            "get": {
                "summary": "The caller: its user, with the key's scopes",
                "operationId": "restCurrentUser",
                "responses": {
                    "200": json_response("The caller", {"$ref": "#/components/schemas/RestCurrentUser"}),
                    **errors(),
                },
            }
        },
        **crud(
            "role",
            "roles",
            "#/components/schemas/RestRole",
            "#/components/schemas/RestRoleInput",
            {"read": "any API key", "write": "admins"},
            path_parameter("role_id", "Role id"),
            "name, created, modified or id, then :asc or :desc",
        ),
    }
    key_ref = "#/components/schemas/RestApiKey"
    key_id = path_parameter("key_id", "API key id")
    paths[f"{prefix}/keys"] = {
        "get": {
            "summary": "The caller's API keys (admins: everyone's); never the keys themselves",
            "operationId": "restListKeys",
            "parameters": [
                *PAGING_PARAMETERS,
                query_parameter("user_id", "Only this user's keys (admins)", {"type": "integer"}),
                query_parameter(
                    "order_by", "created, expires, description, user_id or id, then :asc or :desc"
                ),
            ],
            "responses": {"200": json_response("API keys", list_schema(key_ref)), **errors(400)},
        },
        "post": {
            "summary": "Create an API key: the answer is the only time the key is shown",
            "operationId": "restCreateKey",
            "requestBody": json_body_schema("#/components/schemas/RestApiKeyInput", "The new key"),
            "responses": {
                "201": json_response(
                    "The key, with `key` this once", {"$ref": "#/components/schemas/RestNewApiKey"}
                ),
                **errors(400, 422),
            },
        },
    }
    paths[f"{prefix}/keys/{{key_id}}"] = {
        "parameters": [key_id],
        "get": {
            "summary": "One API key (never the key itself)",
            "operationId": "restGetKey",
            "responses": {"200": json_response("The API key", {"$ref": key_ref}), **errors(404)},
        },
        "delete": {
            "summary": "Revoke an API key, on every worker at once",
            "operationId": "restRevokeKey",
            "responses": {"204": {"description": "Revoked"}, **errors(404)},
        },
    }
    resource_id = path_parameter("resource_id", "Resource id: the id of a layer, map or table record")
    grant_ref = "#/components/schemas/RestPermission"
    paths[f"{prefix}/resources/{{resource_id}}/permissions"] = {
        "parameters": [resource_id],
        "get": {
            "summary": "Who shares the resource (its owner, admins and OWNER grants may ask)",
            "operationId": "restListPermissions",
            "parameters": PAGING_PARAMETERS,
            "responses": {
                "200": json_response("Permissions", list_schema("#/components/schemas/RestPermissionEntry")),
                **errors(404),
            },
        },
        "post": {
            "summary": "Share the resource with a user, a role or the public (anonymous: READ only)",
            "operationId": "restCreatePermission",
            "requestBody": json_body_schema("#/components/schemas/RestPermissionInput", "The grant"),
            "responses": {
                "201": json_response("The new grant", {"$ref": grant_ref}),
                "200": json_response("The principal's grant, replaced", {"$ref": grant_ref}),
                **errors(400, 404, 422),
            },
        },
    }
    paths[f"{prefix}/resources/{{resource_id}}/permissions/{{share_id}}"] = {
        "parameters": [resource_id, path_parameter("share_id", "Share id (of the grant)")],
        "get": {
            "summary": "One grant",
            "operationId": "restGetPermission",
            "responses": {"200": json_response("The grant", {"$ref": grant_ref}), **errors(404)},
        },
        "delete": {
            "summary": "Stop sharing: remove the grant",
            "operationId": "restDeletePermission",
            "responses": {"204": {"description": "Removed"}, **errors(404)},
        },
    }
    return {"paths": paths, "components": {"schemas": _schemas()}}


def _schemas() -> dict[str, Any]:
    text = {"type": "string", "nullable": True}
    stamps = {"created": {"type": "integer"}, "modified": {"type": "integer"}}
    links = {"links": {"type": "array", "items": {"$ref": "#/components/schemas/RestLink"}}}
    user_members = {
        "username": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,63}$"},
        "email": text,
        "firstname": text,
        "lastname": text,
        "active": {"type": "boolean", "default": True},
        "admin": {"type": "boolean", "default": False},
        "roles": {"type": "array", "items": {"type": "integer"}, "description": "Role ids"},
    }
    key_members = {
        "key_trunc": {"type": "string", "description": "The key's first six characters"},
        "description": text,
        "scopes": {"type": "array", "items": {"type": "string", "enum": list(SCOPES)}},
        "user_id": {"type": "integer", "nullable": True, "description": "null: a key of the deployment"},
        "username": text,
        "expires": {"type": "integer", "nullable": True, "description": "Epoch seconds"},
        "active": {"type": "boolean"},
    }
    principal = {
        "username": {"type": "string", "description": "A user, or anonymous (the public)"},
        "user_id": {"type": "integer"},
        "role": {"type": "string"},
        "role_id": {"type": "integer"},
        "anonymous": {"type": "boolean"},
    }
    permission = {"type": "string", "enum": ["READ", "EDIT", "OWNER"]}
    return {
        "RestUser": {
            "type": "object",
            "required": ["id", "username", "active", "admin", "roles"],
            "properties": {"id": {"type": "integer"}, **user_members, **stamps, **links},
        },
        "RestUserInput": {"type": "object", "properties": user_members},
        "RestCurrentUser": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "nullable": True},
                **user_members,
                "scopes": key_members["scopes"],
                "key_id": {"type": "integer", "nullable": True},
                "role_ids": {"type": "array", "items": {"type": "integer"}, "description": "With inherited"},
            },
        },
        "RestRole": {
            "type": "object",
            "required": ["id", "name"],
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "parent_id": {"type": "integer", "nullable": True},
                **stamps,
                **links,
            },
        },
        "RestRoleInput": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "parent_id": {"type": "integer", "nullable": True, "description": "No cycles"},
            },
        },
        "RestApiKey": {
            "type": "object",
            "required": ["id", "key_trunc", "scopes", "active"],
            "properties": {"id": {"type": "integer"}, **key_members, **stamps, **links},
        },
        "RestNewApiKey": {
            "allOf": [
                {"$ref": "#/components/schemas/RestApiKey"},
                {
                    "type": "object",
                    "required": ["key"],
                    "properties": {"key": {"type": "string", "description": "The key: shown this once"}},
                },
            ]
        },
        "RestApiKeyInput": {
            "type": "object",
            "properties": {
                "scopes": {**key_members["scopes"], "default": ["read"]},
                "description": {"type": "string", "maxLength": 500},
                "expires": {
                    "oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
                    "description": "Epoch seconds or ISO 8601",
                },
                "expires_in": {"type": "integer", "minimum": 1, "description": "Seconds from now"},
                "user_id": {"type": "integer", "description": "Admins: whose key"},
                "username": {"type": "string", "description": "Admins: whose key"},
            },
        },
        "RestPermission": {
            "type": "object",
            "required": ["share_id", "resource_id", "permission"],
            "properties": {
                "id": {"type": "integer"},
                "share_id": {"type": "integer"},
                "resource_id": {"type": "integer"},
                **principal,
                "permission": permission,
                **stamps,
            },
        },
        "RestPermissionEntry": {
            "type": "object",
            "properties": {
                **principal,
                "owner": {"type": "boolean", "description": "The resource's owner (no share_id)"},
                "permissions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "type": permission,
                            "share_id": {"type": "integer", "nullable": True},
                        },
                    },
                },
            },
        },
        "RestPermissionInput": {
            "type": "object",
            "required": ["permission"],
            "description": 'One of username, user_id, role, role_id or "anonymous": true',
            "properties": {**principal, "permission": permission},
        },
    }
