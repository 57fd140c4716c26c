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
from werkzeug.datastructures import ImmutableMultiDict

from providers.errors import Forbidden, NotFound, ProviderError, Unauthorized, Unavailable
from providers.store import Record, Store
from server.registry import Collection, Registry

LOGGER = logging.getLogger(__name__)

Action = Literal["read", "write"]
SCOPES = ("read", "write", "sql", "admin")
#: What each stored permission grants on a resource.
GRANTS: dict[str, frozenset[str]] = {
    "READ": frozenset({"read"}),
    "EDIT": frozenset({"read", "write"}),
    "OWNER": frozenset({"read", "write", "share"}),
}
ANONYMOUS_PRINCIPAL = "anonymous"
#: Store kind of the record that gives a configured collection an id to hold grants (the
#: catalogue makes it: :mod:`server.catalogue_sync`).
COLLECTION_KIND = "catalogue_collection"
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
    """The API key a request carries, if any (URL first, then headers, then Basic's password).

    Read once per request: several hooks ask, and the access hook takes ``api_key`` out
    of the query string once it has it.
    """
    if "geoharbor.api_key" in request.environ:
        return request.environ["geoharbor.api_key"]
    found = request.args.get("api_key") or request.headers.get("API-Key") or request.headers.get("X-API-Key")
    if not found:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            found = token.strip()
        elif scheme.lower() == "basic" and request.authorization is not None:
            # Importer and catalogue clients (gn-gsimporter, geonodectl) only speak HTTP
            # Basic: the password is the API key, the user name is not needed.
            found = request.authorization.password or None
    request.environ["geoharbor.api_key"] = found or None
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
        self._collection_ids: dict[str, int] | None = None
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
            self._collection_ids = None
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
                self._has_keys = self.store.count("key") > 0
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

    def _collection_record_ids(self) -> dict[str, int]:
        """Configured collections' record ids by collection id. Cached until the generation
        moves: a record made later holds no grant yet, and a grant moves the generation."""
        if self._collection_ids is None:
            if self.registry.store_error is not None:
                # Grants stored for a configured collection may hide it: while they cannot be
                # read, fail closed at once rather than wait for a connection per request.
                raise Unavailable(f"state store unavailable: {self.registry.store_error}")
            self._collection_ids = {r.key: r.id for r in self.store.list(COLLECTION_KIND) if r.key}
        return self._collection_ids

    def collection_rights(self, identity: Identity, coll: Collection) -> frozenset[str]:
        """What ``identity`` may do with a collection (before key scopes and editability)."""
        if identity.admin:
            return GRANTS["OWNER"]
        if coll.layer_id is not None:
            return self.resource_rights(identity, coll.layer_id, coll.owner)
        record_id = self._collection_record_ids().get(coll.id)
        if record_id is not None and record_id in self._grants_by_resource():
            # Grants stored for a configured collection (set through the catalogue's
            # permissions) replace its configured public/readers/editors.
            return self.resource_rights(identity, record_id, None)
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

    def record_rights(self, identity: Identity, record: Record) -> frozenset[str]:
        """What ``identity`` may do with a shareable store record (a layer, map or table)."""
        return self.resource_rights(identity, record.id, record.body.get("owner"))

    def table_rights(self, identity: Identity, record: Record | None) -> frozenset[str]:
        """What ``identity`` may do with a table of a source, through the REST tables routes.

        A table the REST API made has a record and is shared like any resource. Any
        other table of the database is no shared resource: its data is published, if
        at all, by a configured collection with its own readers and editors, so once
        keys exist only an admin reaches it as a table (a layer over it is the same).
        """
        if record is not None:
            return self.record_rights(identity, record)
        return GRANTS["OWNER"] if identity.admin else frozenset()

    def layer_rights(self, identity: Identity, layer_id: int) -> frozenset[str]:
        """Rights on a layer record, published or not; NotFound when there is none."""
        return self.record_rights(identity, self.store.get("layer", layer_id))

    def require_create(self, identity: Identity, what: str) -> None:
        """Creating a layer, table or map makes the caller its owner: it needs a key that may write."""
        if self.mode == "community" or identity.admin:
            return
        if identity.anonymous:
            raise Unauthorized(f"an API key is needed to create {what}")
        if "write" not in identity.scopes:
            raise Forbidden(f"this API key may not create {what}: it has no write scope")

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


def readable_record(record: Record) -> bool:
    """Whether the caller may read a shareable store record (layer, map, table)."""
    auth, identity = current_auth(), current_identity()
    return auth.allowed(identity, "read", auth.record_rights(identity, record))


def readable_collection(coll: Collection) -> bool:
    auth, identity = current_auth(), current_identity()
    return auth.allowed(identity, "read", auth.collection_rights(identity, coll))


def visible_collection_ids() -> frozenset[str] | None:
    """The ids of the collections the caller may read; None when that is every collection.

    None lets every caller who sees everything (community mode, admins, a deployment
    with only public collections) share one view of the collections.
    """
    auth = current_auth()
    colls = list(auth.registry.collections.values())
    shown = auth.visible(current_identity(), colls)
    return None if len(shown) == len(colls) else frozenset(c.id for c in shown)


def install(app: Flask, auth: Auth) -> None:
    """Check every request before its route runs: who it is, then what it may do.

    What a route addresses by URL is checked here, for every route family (see
    :func:`_check_route`); lists leave out what the caller may not read
    (:meth:`Auth.visible`, :func:`readable_record`), and what a body refers to (the
    layers of a map, the table of a layer) is checked by the route that reads it.
    """
    community_logged = False

    @app.before_request
    def check_access() -> None:
        nonlocal community_logged
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            return  # CORS preflights carry no credentials
        identity = auth.identify(presented_key(request))
        g.identity = identity
        if "api_key" in request.args:
            # Read, now out of the way: routes that refuse unknown parameters accept it, and
            # no link, cache key or filter built from the query repeats the key.
            args = request.args.copy()
            args.poplist("api_key")
            request.args = ImmutableMultiDict(args)  # type: ignore[misc]
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
        _check_route(auth, identity, "write" if writing else "read")


#: Endpoints that check access themselves: tiles once the registry is current, and the
#: items POST, which is a query (a read) or a new feature (a write) depending on its body.
SELF_CHECKED = frozenset({"tiles.collection_tile", "tiles.composite_tile", "features.create"})
#: Endpoints of several collections named by ``collections=``: every one must be readable.
COMPOSITE = frozenset({"tiles.composite_tilejson", "viewer.collections_style", "viewer.collections_map"})
#: REST routes (rules under the REST prefix) whose POST creates something the caller will own.
CREATES = {
    "/layers": "a layer",
    "/tables": "a table",
    "/maps": "a map",
    "/layers/<layer>/buffer": "a buffer layer",
}


def _check_route(auth: Auth, identity: Identity, action: Action) -> None:
    """Check what the request's URL addresses: a collection, a layer, a map, a table."""
    endpoint = request.endpoint
    if endpoint is None or endpoint in SELF_CHECKED:
        return  # no route (404/405 follow), or the route checks itself
    view = request.view_args or {}
    registry = auth.registry
    if "cid" in view:
        auth.require_collection(identity, registry.get(view["cid"]), action)
    elif request.blueprint == "mapfish" and "layer" in view:
        layer = view["layer"]
        if endpoint == "mapfish.layer_features":  # as the route: "{layer}.json" is the layer
            layer = layer.removesuffix(".json") or layer
        auth.require_collection(identity, registry.get(layer), action)
    elif request.blueprint == "rest" and request.url_rule is not None:
        _check_rest(auth, identity, action, view)
    elif endpoint in COMPOSITE and request.args.get("collections") is not None:
        for cid in {part.strip() for part in request.args["collections"].split(",") if part.strip()}:
            coll = registry.collections.get(cid)
            if coll is None:
                raise NotFound(f"collection {cid[:100]!r} not found")
            auth.require_collection(identity, coll, "read")


def _check_rest(auth: Auth, identity: Identity, action: Action, view: dict[str, Any]) -> None:
    """REST records: layers by id, maps by id, tables by name; and who may create them."""
    prefix = current_app.config["GEOHARBOR"]["rest"]["prefix"].rstrip("/")
    rule = request.url_rule.rule.removeprefix(prefix)  # type: ignore[union-attr]
    if rule.startswith("/layers/<int:layer_id>"):
        layer_id = view["layer_id"]
        auth.require(identity, action, auth.layer_rights(identity, layer_id), f"layer {layer_id}")
    elif rule.startswith("/layers/<layer>/"):
        # Export (GET) and buffer (POST) both only read the layer; a buffer creates another.
        rights, what = _layer_or_collection_rights(auth, identity, view["layer"])
        auth.require(identity, "read", rights, what)
    elif rule.startswith("/maps/<int:map_id>"):
        map_id = view["map_id"]
        auth.require(
            identity, action, auth.record_rights(identity, auth.store.get("map", map_id)), f"map {map_id}"
        )
    elif rule.startswith("/tables/<name>"):
        name = view["name"]
        auth.require(
            identity, action, auth.table_rights(identity, _table_record(auth, name)), f"table {name[:100]!r}"
        )
    if request.method == "POST" and rule in CREATES:
        auth.require_create(identity, CREATES[rule])


def _layer_or_collection_rights(auth: Auth, identity: Identity, ref: str) -> tuple[frozenset[str], str]:
    """Rights on what ``/layers/{ref}/export|buffer`` reads: a layer id, else a collection id.

    Resolved as :func:`server.rest_export.layer_or_collection` does: a published layer
    first, then a configured collection whose id happens to be digits.
    """
    registry = auth.registry
    if ref.isdigit():
        layer_id = int(ref)
        published = any(c.layer_id == layer_id for c in registry.collections.values())
        if published or ref not in registry.collections:
            return auth.layer_rights(identity, layer_id), f"layer {ref}"
    return auth.collection_rights(identity, registry.get(ref)), f"collection {ref!r}"


def _table_record(auth: Auth, name: str) -> Record | None:
    """The record of a table the REST API made, keyed ``<source>:<table>`` as server.rest_tables keeps it."""
    source = request.args.get("connection_id") or current_app.config["GEOHARBOR"]["store"].get("tables")
    if not isinstance(source, str):
        return None
    return auth.store.find("table", f"{source}:{name}")


def require_admin(identity: Identity, what: str) -> None:
    """Raise unless the caller may manage users, roles and everyone's keys.

    In community mode no key exists yet, so the machine's own clients may (the rule
    of every write there): besides the CLI, that is how a deployment without a master
    key gets its first admin and key over HTTP. 401 without a key, 403 for a key that
    is not an admin's.
    """
    if identity.admin:
        return
    if current_auth().mode == "community":
        if is_loopback(request.remote_addr):
            return
        raise Forbidden(f"community mode: only this machine may {what}")
    if identity.anonymous:
        raise Unauthorized(f"an admin's API key is needed to {what}")
    raise Forbidden(f"only an admin's API key with the admin scope may {what}")


def require_scope(identity: Identity, scopes: tuple[str, ...], what: str) -> None:
    """Raise unless the caller's key has one of ``scopes`` (admins always do).

    In community mode there are no keys: reads are open and the access hook already
    keeps writes to the machine's own clients.
    """
    if identity.admin or current_auth().mode == "community":
        return
    if identity.anonymous:
        raise Unauthorized(f"an API key is needed to {what}")
    if not identity.scopes & set(scopes):
        raise Forbidden(f"this API key may not {what}: it needs the {' or '.join(scopes)} scope")
