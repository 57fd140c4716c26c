"""Who is calling, and what they may do: the one place every route's access is decided.

Credentials are API keys, found (first wins, so a key in the URL beats a header) in
the ``api_key`` query parameter, the ``API-Key`` or ``X-API-Key`` header, or
``Authorization: Bearer``. Keys are 32 random hex characters shown once; the store
keeps only their SHA-256 digest (a key has 128 random bits: a slow hash adds
nothing), and digests are compared with :func:`hmac.compare_digest`.

With no master key (``auth.api_key``) and no stored key the server runs in
*community* mode: reads are open and writes are taken only from loopback clients.
Once a key exists every request is checked.

Users, roles, keys and permissions are store records of kinds that move the store
generation (:data:`providers.store.REGISTRY_KINDS`). Each process caches what it read
of them and drops the cache when the generation moves (``Registry.listeners``), so
anonymous traffic costs no lookup and a revoked key is refused at once everywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from flask import Flask, Request, current_app, g, request

from providers.errors import Forbidden, NotFound, ProviderError, Unauthorized
from providers.store import Record, Store
from server.registry import Collection, Registry

LOGGER = logging.getLogger(__name__)

Action = Literal["read", "write"]
SCOPES = ("read", "write", "admin")
#: What each stored permission grants on a resource.
GRANTS: dict[str, frozenset[str]] = {
    "READ": frozenset({"read"}),
    "EDIT": frozenset({"read", "write"}),
    "OWNER": frozenset({"read", "write", "share"}),
}
ANONYMOUS_PRINCIPAL = "anonymous"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller: a user's key, the master key, or nobody (anonymous)."""

    user_id: int | None = None
    username: str | None = None
    roles: frozenset[int] = frozenset()
    scopes: frozenset[str] = frozenset()
    key_id: int | None = None
    admin: bool = False

    @property
    def anonymous(self) -> bool:
        return self.key_id is None and not self.admin

    def principals(self) -> set[str]:
        """The permission principals this caller counts as (``anonymous`` for everyone)."""
        found = {ANONYMOUS_PRINCIPAL}
        if self.user_id is not None:
            found.add(f"user:{self.user_id}")
        found.update(f"role:{r}" for r in self.roles)
        return found


ANONYMOUS = Identity()
MASTER = Identity(username="admin", scopes=frozenset(SCOPES), admin=True)


def new_key() -> str:
    """A fresh API key: 32 lowercase hex characters (128 random bits)."""
    return secrets.token_hex(16)


def key_digest(key: str) -> str:
    """What the store keeps of a key, and how a presented key is looked up."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def presented_key(request: Request) -> str | None:
    """The API key a request carries, if any (URL first, then headers, then Basic's password)."""
    found = request.args.get("api_key") or request.headers.get("API-Key") or request.headers.get("X-API-Key")
    if not found:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            found = token.strip()
        elif scheme.lower() == "basic" and request.authorization is not None:
            # Importer and catalogue clients (gn-gsimporter, geonodectl) only speak HTTP
            # Basic: the password is the API key, the user name is not needed.
            found = request.authorization.password or None
    return found or None


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


class Auth:
    """Identities and rights for one process, cached until the store generation moves."""

    def __init__(self, config: dict[str, Any], registry: Registry) -> None:
        self.registry = registry
        master = (config.get("auth") or {}).get("api_key") or ""
        self._master = key_digest(master) if master else None
        self._lock = threading.Lock()
        self._identities: dict[str, tuple[Identity, float | None] | None] = {}
        self._grants: dict[int, list[tuple[str, str]]] | None = None
        self._roles: dict[int, Record] | None = None
        self._has_keys: bool | None = None
        registry.listeners.append(self.clear)

    @property
    def store(self) -> Store:
        return self.registry.store

    def clear(self) -> None:
        """Forget cached users, keys and permissions (the store generation moved)."""
        with self._lock:
            self._identities = {}
            self._grants = None
            self._roles = None
            self._has_keys = None

    # -- modes -----------------------------------------------------------------------------
    @property
    def mode(self) -> Literal["community", "protected"]:
        """``protected`` once a master key is configured or any key is stored."""
        if self._master is not None:
            return "protected"
        if self._has_keys is None:
            if self.registry.store_error is not None:
                return "protected"  # cannot tell whether keys exist: fail closed
            try:
                self._has_keys = bool(self.store.list("key"))
            except ProviderError:
                return "protected"
        return "protected" if self._has_keys else "community"

    # -- who -----------------------------------------------------------------------------------
    def identify(self, key: str | None) -> Identity:
        """The identity of a presented key (anonymous without one); 401 for a bad key."""
        if key is None:
            return ANONYMOUS
        digest = key_digest(key)
        if self._master is not None and hmac.compare_digest(digest, self._master):
            return MASTER
        with self._lock:
            cached = self._identities.get(digest, False)
        if cached is False:
            cached = self._load_identity(digest)
            with self._lock:
                if len(self._identities) > 10_000:
                    self._identities.clear()
                self._identities[digest] = cached
        if cached is None:
            raise Unauthorized("unknown API key")
        identity, expires = cached
        if expires is not None and time.time() >= expires:
            raise Unauthorized("the API key has expired")
        return identity

    def _load_identity(self, digest: str) -> tuple[Identity, float | None] | None:
        record = self.store.find("key", digest)
        # The digest is the lookup key; comparing it again in constant time costs nothing
        # and keeps the check independent of how the store matched it.
        if record is None or not hmac.compare_digest(record.key or "", digest):
            return None
        body = record.body
        if not body.get("active", True):
            return None
        scopes = frozenset(s for s in body.get("scopes", ["read"]) if s in SCOPES)
        user_id = body.get("user_id")
        if user_id is None:
            # A key of no user: the deployment's own (admin when it has the admin scope).
            return Identity(scopes=scopes, key_id=record.id, admin="admin" in scopes), body.get("expires")
        try:
            user = self.store.get("user", int(user_id))
        except NotFound:
            return None
        if not user.body.get("active", True):
            return None
        roles = self._with_parents(user.body.get("roles", []))
        identity = Identity(
            user_id=user.id,
            username=user.body.get("username"),
            roles=roles,
            scopes=scopes,
            key_id=record.id,
            admin=bool(user.body.get("admin")) and "admin" in scopes,
        )
        return identity, body.get("expires")

    def _with_parents(self, role_ids: list[Any]) -> frozenset[int]:
        """The roles and every role they inherit from (``parent_id`` chains, loops cut)."""
        roles = self._role_records()
        found: set[int] = set()
        pending = [int(r) for r in role_ids if isinstance(r, int) or str(r).isdigit()]
        while pending:
            rid = pending.pop()
            if rid in found or rid not in roles:
                continue
            found.add(rid)
            parent = roles[rid].body.get("parent_id")
            if parent is not None:
                pending.append(int(parent))
        return frozenset(found)

    def _role_records(self) -> dict[int, Record]:
        if self._roles is None:
            self._roles = {r.id: r for r in self.store.list("role")}
        return self._roles

    def role_ids(self, names: list[str]) -> set[int]:
        """Role ids by name (configured ``readers``/``editors`` name roles)."""
        return {rid for rid, r in self._role_records().items() if r.body.get("name") in names}

    # -- what they may do ------------------------------------------------------------------
    def _grants_by_resource(self) -> dict[int, list[tuple[str, str]]]:
        if self._grants is None:
            grants: dict[int, list[tuple[str, str]]] = {}
            for record in self.store.list("permission"):
                body = record.body
                grants.setdefault(int(body["resource_id"]), []).append(
                    (body["principal"], body["permission"])
                )
            self._grants = grants
        return self._grants

    def resource_rights(self, identity: Identity, resource_id: int, owner: int | None) -> frozenset[str]:
        """What ``identity`` may do with a store resource: a subset of read, write, share."""
        if identity.admin:
            return GRANTS["OWNER"]
        if owner is not None and identity.user_id == owner:
            return GRANTS["OWNER"]
        grants = self._grants_by_resource().get(resource_id)
        if not grants and owner is None:
            return GRANTS["READ"]  # made before anyone owned things (community mode): public
        principals = identity.principals()
        rights: set[str] = set()
        for principal, permission in grants or []:
            if principal in principals:
                rights |= GRANTS.get(permission, frozenset())
        return frozenset(rights)

    def collection_rights(self, identity: Identity, coll: Collection) -> frozenset[str]:
        """What ``identity`` may do with a collection (before key scopes and editability)."""
        if identity.admin:
            return GRANTS["OWNER"]
        if coll.layer_id is not None:
            return self.resource_rights(identity, coll.layer_id, coll.owner)
        access = coll.access
        rights: set[str] = set()
        if access.get("public", True):
            rights.add("read")
        if identity.roles:
            if identity.roles & self.role_ids(access.get("readers", [])):
                rights.add("read")
            if identity.roles & self.role_ids(access.get("editors", [])):
                rights |= {"read", "write"}
        return frozenset(rights)

    def allowed(self, identity: Identity, action: Action, rights: frozenset[str]) -> bool:
        """Whether the caller's key scopes and rights on a resource allow ``action``."""
        if self.mode == "community":
            return True
        # Scopes bound what a key may do; an anonymous caller has only its rights.
        return action in rights and (identity.admin or identity.anonymous or action in identity.scopes)

    def require(self, identity: Identity, action: Action, rights: frozenset[str], what: str) -> None:
        """Raise unless ``action`` is allowed: 404 when the caller may not even read the thing
        (its existence must not leak), 401 for an anonymous caller, 403 otherwise."""
        if self.allowed(identity, action, rights):
            return
        if "read" not in rights and not identity.admin:
            raise NotFound(f"{what} not found")
        if identity.anonymous:
            raise Unauthorized(f"an API key is needed to {action} {what}")
        raise Forbidden(f"this API key may not {action} {what}")

    def require_collection(self, identity: Identity, coll: Collection, action: Action) -> None:
        self.require(identity, action, self.collection_rights(identity, coll), f"collection {coll.id!r}")

    def visible(self, identity: Identity, colls: list[Collection]) -> list[Collection]:
        """The collections the caller may read, for lists (collections, search, catalogue)."""
        if self.mode == "community" or identity.admin:
            return colls
        return [c for c in colls if self.allowed(identity, "read", self.collection_rights(identity, c))]


# -- the enforcement point --------------------------------------------------------------------
def current_identity() -> Identity:
    """The identity of the request being served (set by :func:`install`'s hook)."""
    return getattr(g, "identity", ANONYMOUS)


def current_auth() -> Auth:
    return current_app.extensions["geoharbor"].auth


def install(app: Flask, auth: Auth) -> None:
    """Check every request before its route runs: who it is, then what it may do.

    Routes that address one collection by URL (``cid``) are checked here; lists
    filter with :meth:`Auth.visible`, and the routes of records (layers, maps,
    tables) check their record's rights themselves.
    """
    community_logged = False

    @app.before_request
    def check_access() -> None:
        nonlocal community_logged
        if request.method == "OPTIONS":
            return  # CORS preflights carry no credentials
        identity = auth.identify(presented_key(request))
        g.identity = identity
        writing = request.method not in SAFE_METHODS
        if auth.mode == "community":
            if not community_logged:
                LOGGER.warning("community mode: no API keys; reads are open, writes only from this machine")
                community_logged = True
            if writing and not is_loopback(request.remote_addr):
                raise Forbidden(
                    "community mode: writes are accepted from this machine only; "
                    "create an API key to edit from elsewhere"
                )
            return
        cid = (request.view_args or {}).get("cid")
        if cid is not None and request.endpoint not in SELF_CHECKED:
            coll = current_app.extensions["geoharbor"].registry.collections.get(cid)
            if coll is not None:
                auth.require_collection(identity, coll, "write" if writing else "read")


#: Endpoints that check access themselves, after bringing the registry up to date.
SELF_CHECKED = frozenset({"tiles.collection_tile", "tiles.composite_tile"})
