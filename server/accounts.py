"""Users, roles, API keys and resource grants: the store records behind every identity.

The REST routes (:mod:`server.rest_users`) and the command line (:mod:`server.cli`)
both change these records; their rules live here once, so that a key made with
``geoharbor key create`` is checked exactly like one made through ``POST /keys``.
Nothing here knows about HTTP: a bad value raises :class:`~providers.errors.InvalidData`
(the REST API answers 422, the CLI exits with 2).

Each change is one store write, so it is atomic and moves the store generation:
every worker drops its cached identities on its next request. Where a change has
follow-ups (a deleted user's keys, a deleted role's members), the write that takes
effect comes first and the follow-ups only tidy up references that already grant
nothing, so a failure half-way never leaves more access than intended.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from providers.errors import Conflict, InvalidData, NotFound
from providers.store import Record, Store
from server.auth import ANONYMOUS_PRINCIPAL, SCOPES, key_digest, new_key

#: A user name: safe in a URL, a log line and a principal (``user:<id>`` uses the id anyway).
USERNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,63}$")
#: A role name; configured collections name roles in ``readers``/``editors``.
ROLE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_. -]{0,63}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
#: ``anonymous`` names the public principal in permission lists: no user may take it.
RESERVED_USERNAMES = frozenset({ANONYMOUS_PRINCIPAL})
PERMISSIONS = ("READ", "EDIT", "OWNER")
#: Store kinds whose record id is a shareable resource id (design: record ids are unique across kinds).
RESOURCE_KINDS = ("layer", "map", "table")
#: ``30d``, ``12h``, ``90m``, ``45s``, ``2w``: how long a key made on the command line lives.
DURATION = re.compile(r"^(\d{1,9})([smhdw])$")
DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
TEXT_LIMIT = 200
DESCRIPTION_LIMIT = 500

USER_MEMBERS = frozenset({"username", "email", "firstname", "lastname", "active", "admin", "roles"})
ROLE_MEMBERS = frozenset({"name", "parent_id"})


def _int_id(value: Any) -> int | None:
    """An integer id from JSON (``12`` or ``"12"``, as the reference sends ids); None if not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _text(body: dict[str, Any], name: str, limit: int = TEXT_LIMIT) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidData(f"{name} must be a string of at most {limit} characters")
    return value.strip() or None


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body[name]
    if not isinstance(value, bool):
        raise InvalidData(f"{name} must be true or false")
    return value


def parse_scopes(value: Any) -> list[str]:
    """Key scopes from a list or ``"read,write"``, in canonical order; at least one."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise InvalidData('scopes must be a list such as ["read", "write"]')
    wanted = {s.strip().lower() for s in items if s.strip()}
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise InvalidData(f"unknown scope {unknown[0][:40]!r}: scopes are {', '.join(SCOPES)}")
    if not wanted:
        raise InvalidData(f"a key needs at least one scope of {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in wanted]


def parse_expires(value: Any, now: float | None = None) -> float | None:
    """An expiry time as epoch seconds, from epoch seconds, ISO 8601 or a duration (``30d``).

    A time without a zone is UTC. A time that has already passed is refused: a key
    that could never be used is a mistake, not a request.
    """
    now = time.time() if now is None else now
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidData("expires must be epoch seconds or an ISO 8601 time")
    if isinstance(value, (int, float)):
        expires = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        duration = DURATION.match(text.lower())
        if duration:
            expires = now + int(duration.group(1)) * DURATION_SECONDS[duration.group(2)]
        elif re.fullmatch(r"\d{1,12}(\.\d+)?", text):
            expires = float(text)
        else:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise InvalidData(
                    f"expires must be epoch seconds, ISO 8601 or a duration like 30d, not {text[:40]!r}"
                ) from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            expires = moment.timestamp()
    else:
        raise InvalidData("expires must be epoch seconds or an ISO 8601 time")
    if expires != expires or expires <= now:
        raise InvalidData("expires must be in the future")
    return expires


def parse_expires_in(value: Any, now: float | None = None) -> float:
    """``expires_in``: seconds from now (a positive integer)."""
    seconds = _int_id(value)
    if seconds is None or seconds <= 0:
        raise InvalidData("expires_in must be a positive number of seconds")
    return (time.time() if now is None else now) + seconds


def principal_of(user_id: int | None = None, role_id: int | None = None) -> str:
    if user_id is not None:
        return f"user:{user_id}"
    if role_id is not None:
        return f"role:{role_id}"
    return ANONYMOUS_PRINCIPAL


class Accounts:
    """The rules of users, roles, keys and grants over one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- users ---------------------------------------------------------------------------------
    def user(self, user_id: int) -> Record:
        return self.store.get("user", user_id)

    def user_named(self, username: str) -> Record:
        found = self.store.find("user", username)
        if found is None:
            raise NotFound(f"no user named {username[:64]!r}")
        return found

    def role_ids(self, roles: Any) -> list[int]:
        """Role ids that exist, from ids (or, for the CLI's sake, names)."""
        if not isinstance(roles, list):
            raise InvalidData("roles must be a list of role ids")
        known = {r.id: r for r in self.store.list("role")}
        by_name = {r.body.get("name"): r.id for r in known.values()}
        out: list[int] = []
        for item in roles:
            rid = _int_id(item)
            if rid is None and isinstance(item, str) and item in by_name:
                rid = by_name[item]
            if rid is None or rid not in known:
                raise InvalidData(f"no role {str(item)[:64]!r}")
            if rid not in out:
                out.append(rid)
        return out

    def user_body(self, body: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
        """A stored user from a create (``current`` None) or partial update body, checked."""
        unknown = sorted(set(body) - USER_MEMBERS - {"id", "created", "modified", "links"})
        if unknown:
            raise InvalidData(f"unknown user member {unknown[0][:60]!r}")
        out = dict(
            current
            or {
                "username": None,
                "email": None,
                "firstname": None,
                "lastname": None,
                "active": True,
                "admin": False,
                "roles": [],
            }
        )
        if current is None or "username" in body:
            name = body.get("username")
            if not isinstance(name, str) or not USERNAME.match(name):
                raise InvalidData(
                    "username must be 1-64 letters, digits or _ . @ + - (not starting with one)"
                )
            if name.lower() in RESERVED_USERNAMES:
                raise InvalidData(f"the username {name!r} is reserved")
            out["username"] = name
        for name in ("firstname", "lastname"):
            if name in body:
                out[name] = _text(body, name)
        if "email" in body:
            email = _text(body, "email", 320)
            if email is not None and not EMAIL.match(email):
                raise InvalidData("email must look like name@example.org")
            out["email"] = email
        for name in ("active", "admin"):
            if name in body:
                out[name] = _flag(body, name)
        if "roles" in body:
            out["roles"] = self.role_ids(body["roles"] or [])
        return out

    def create_user(self, body: dict[str, Any]) -> Record:
        user = self.user_body(body, None)
        try:
            return self.store.insert("user", user, key=user["username"])
        except Conflict:
            raise Conflict(f"the username {user['username']!r} is taken") from None

    def update_user(self, user_id: int, body: dict[str, Any]) -> Record:
        current = self.user(user_id)
        user = self.user_body(body, current.body)
        try:
            return self.store.update("user", user_id, user, key=user["username"])
        except Conflict:
            raise Conflict(f"the username {user['username']!r} is taken") from None

    def delete_user(self, user_id: int) -> Record:
        """Delete a user: their keys stop working at once (a key of no user is refused), then
        are marked revoked, and the user's grants are removed."""
        record = self.store.delete("user", user_id)
        for key in self.keys(user_id=user_id):
            self._revoke(key)
        self._drop_grants(principal_of(user_id=user_id))
        return record

    # -- roles ---------------------------------------------------------------------------------
    def role(self, role_id: int) -> Record:
        return self.store.get("role", role_id)

    def role_named(self, name: str) -> Record:
        found = self.store.find("role", name)
        if found is None:
            raise NotFound(f"no role named {name[:64]!r}")
        return found

    def role_body(
        self, body: dict[str, Any], current: dict[str, Any] | None, role_id: int | None = None
    ) -> dict[str, Any]:
        """A stored role from a create or partial update body; a parent chain may not loop."""
        unknown = sorted(set(body) - ROLE_MEMBERS - {"id", "created", "modified", "links"})
        if unknown:
            raise InvalidData(f"unknown role member {unknown[0][:60]!r}")
        out = dict(current or {"name": None, "parent_id": None})
        if current is None or "name" in body:
            name = body.get("name")
            if not isinstance(name, str) or not ROLE_NAME.match(name) or name != name.strip():
                raise InvalidData("a role name must be 1-64 letters, digits, spaces or _ . -")
            out["name"] = name
        if "parent_id" in body:
            parent = body["parent_id"]
            if parent is None:
                out["parent_id"] = None
            else:
                parent_id = _int_id(parent)
                if parent_id is None:
                    raise InvalidData("parent_id must be a role id or null")
                self._check_parent(parent_id, role_id)
                out["parent_id"] = parent_id
        return out

    def _check_parent(self, parent_id: int, role_id: int | None) -> None:
        roles = {r.id: r for r in self.store.list("role")}
        if parent_id not in roles:
            raise InvalidData(f"parent_id: no role {parent_id}")
        seen: set[int] = set()
        current: int | None = parent_id
        while current is not None and current in roles and current not in seen:
            if current == role_id:
                raise InvalidData(f"parent_id {parent_id} would make role {role_id} its own ancestor")
            seen.add(current)
            current = _int_id(roles[current].body.get("parent_id"))

    def create_role(self, body: dict[str, Any]) -> Record:
        role = self.role_body(body, None)
        try:
            return self.store.insert("role", role, key=role["name"])
        except Conflict:
            raise Conflict(f"the role name {role['name']!r} is taken") from None

    def update_role(self, role_id: int, body: dict[str, Any]) -> Record:
        current = self.role(role_id)
        role = self.role_body(body, current.body, role_id)
        try:
            return self.store.update("role", role_id, role, key=role["name"])
        except Conflict:
            raise Conflict(f"the role name {role['name']!r} is taken") from None

    def delete_role(self, role_id: int) -> Record:
        """Delete a role: it grants nothing from that write on (an unknown role id counts for
        nothing); members, child roles and grants naming it are then tidied."""
        record = self.store.delete("role", role_id)
        for user in self.store.list("user"):
            if role_id in user.body.get("roles", []):
                body = {**user.body, "roles": [r for r in user.body["roles"] if r != role_id]}
                self._tidy(lambda u=user, b=body: self.store.update("user", u.id, b, key=u.key))
        for role in self.store.list("role"):
            if _int_id(role.body.get("parent_id")) == role_id:
                body = {**role.body, "parent_id": None}
                self._tidy(lambda r=role, b=body: self.store.update("role", r.id, b, key=r.key))
        self._drop_grants(principal_of(role_id=role_id))
        return record

    # -- keys ----------------------------------------------------------------------------------
    def keys(self, user_id: int | None = None) -> list[Record]:
        """Keys not revoked: all of them, or one user's."""
        found = [k for k in self.store.list("key") if k.body.get("active", True)]
        if user_id is not None:
            found = [k for k in found if k.body.get("user_id") == user_id]
        return found

    def key(self, key_id: int) -> Record:
        """A key not revoked (a revoked one is gone as far as anyone asking can tell)."""
        record = self.store.get("key", key_id)
        if not record.body.get("active", True):
            raise NotFound(f"key {key_id} not found")
        return record

    def create_key(
        self,
        user: Record | None,
        scopes: list[str],
        description: str | None = None,
        expires: float | None = None,
    ) -> tuple[str, Record]:
        """A new key for ``user`` (None: a key of the deployment); returns the key, shown once,
        and its record, which holds only the key's digest and first characters."""
        if user is not None:
            if "admin" in scopes and not user.body.get("admin"):
                raise InvalidData(
                    f"the admin scope is only for admin users; {user.body['username']!r} is not"
                )
            if not user.body.get("active", True):
                raise InvalidData(f"user {user.body['username']!r} is not active")
        if description is not None and (
            not isinstance(description, str) or len(description) > DESCRIPTION_LIMIT
        ):
            raise InvalidData(f"description must be a string of at most {DESCRIPTION_LIMIT} characters")
        key = new_key()
        body = {
            "user_id": None if user is None else user.id,
            "scopes": parse_scopes(scopes),
            "description": description,
            "expires": expires,
            "active": True,
            "key_trunc": key[:6],
        }
        return key, self.store.insert("key", body, key=key_digest(key))

    def revoke_key(self, key_id: int) -> Record:
        """Revoke a key. The record stays, marked inactive: its digest then matches nothing,
        audit rows can still name it, and revoking the last key does not turn a protected
        server back into community mode."""
        return self._revoke(self.key(key_id))

    def _revoke(self, record: Record) -> Record:
        body = {**record.body, "active": False, "revoked": time.time()}
        return self.store.update("key", record.id, body, key=record.key)

    # -- grants on resources -----------------------------------------------------------------
    def resource(self, resource_id: int) -> Record:
        """The layer, map or table record with this id; NotFound for anything else."""
        for kind in RESOURCE_KINDS:
            try:
                return self.store.get(kind, resource_id)
            except NotFound:
                continue
        raise NotFound(f"resource {resource_id} not found")

    def principal(self, body: dict[str, Any]) -> str:
        """The principal a grant body names: exactly one of username, role, role_id, anonymous."""
        named = [
            k for k in ("username", "user_id", "role", "role_id", "anonymous") if body.get(k) is not None
        ]
        if len(named) != 1:
            raise InvalidData('name exactly one of "username", "role", "role_id" or "anonymous": true')
        member = named[0]
        value = body[member]
        if member == "anonymous":
            if value is not True:
                raise InvalidData('"anonymous" must be true')
            return ANONYMOUS_PRINCIPAL
        if member == "username":
            if not isinstance(value, str):
                raise InvalidData("username must be a string")
            if value == ANONYMOUS_PRINCIPAL:
                return ANONYMOUS_PRINCIPAL  # the reference lists the public principal as a user
            found = self.store.find("user", value)
            if found is None:
                raise InvalidData(f"no user named {value[:64]!r}")
            return principal_of(user_id=found.id)
        if member == "role":
            if not isinstance(value, str):
                raise InvalidData("role must be a role name")
            found = self.store.find("role", value)
            if found is None:
                raise InvalidData(f"no role named {value[:64]!r}")
            return principal_of(role_id=found.id)
        rid = _int_id(value)
        kind = "user" if member == "user_id" else "role"
        try:
            if rid is None:
                raise NotFound(member)
            self.store.get(kind, rid)
        except NotFound:
            raise InvalidData(f"{member}: no {kind} {str(value)[:20]!r}") from None
        return principal_of(user_id=rid) if kind == "user" else principal_of(role_id=rid)

    @staticmethod
    def permission(value: Any) -> str:
        text = value.strip().upper() if isinstance(value, str) else None
        if text not in PERMISSIONS:
            raise InvalidData(f"permission must be one of {', '.join(PERMISSIONS)}")
        return text

    def grant(self, resource_id: int, principal: str, permission: str) -> tuple[Record, bool]:
        """Grant ``permission`` on a resource; one grant per principal, so granting again
        replaces it. Returns the grant and whether it is new.

        The public may only read: a write needs a key with the write scope, which the
        anonymous caller never has.
        """
        if principal == ANONYMOUS_PRINCIPAL and permission != "READ":
            raise InvalidData("anonymous (the public) may only be granted READ")
        body = {"resource_id": resource_id, "principal": principal, "permission": permission}
        key = f"{resource_id}|{principal}"
        for _ in range(3):  # a concurrent grant or revoke of the same principal: look again
            current = self.store.find("permission", key)
            if current is None:
                try:
                    return self.store.insert("permission", body, key=key), True
                except Conflict:
                    continue
            try:
                return self.store.update("permission", current.id, body, key=key), False
            except NotFound:
                continue
        raise Conflict("the permission is being changed by another request; try again")

    def grants(self, resource_id: int) -> list[Record]:
        return [g for g in self.store.list("permission") if g.body.get("resource_id") == resource_id]

    def grant_record(self, resource_id: int, share_id: int) -> Record:
        """A grant of this resource (a share id of another resource is not found here)."""
        record = self.store.get("permission", share_id)
        if record.body.get("resource_id") != resource_id:
            raise NotFound(f"permission {share_id} of resource {resource_id} not found")
        return record

    def revoke_grant(self, resource_id: int, share_id: int) -> Record:
        self.grant_record(resource_id, share_id)
        return self.store.delete("permission", share_id)

    def forget_resource(self, resource_id: int) -> None:
        """Drop the grants of a deleted layer, map or table (ids are never reused: tidiness)."""
        for grant in self.grants(resource_id):
            self._tidy(lambda g=grant: self.store.delete("permission", g.id))

    def _drop_grants(self, principal: str) -> None:
        for grant in self.store.list("permission"):
            if grant.body.get("principal") == principal:
                self._tidy(lambda g=grant: self.store.delete("permission", g.id))

    @staticmethod
    def _tidy(write: Any) -> None:
        """A follow-up write; a record changed or removed meanwhile needs no tidying."""
        try:
            write()
        except NotFound:
            pass
