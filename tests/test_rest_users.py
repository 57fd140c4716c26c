"""REST users, roles, API keys and resource permissions, on a protected server of their own.

The server has a master key and a SQLite store of its own (never the shared session
server's store: a key there would switch it to protected mode). Everything is seeded
through the routes with the master key, as a deployment would be.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Server, free_port, server_config

from providers.store import SQLiteStore
from server.auth import key_digest

MASTER = "0123456789abcdef0123456789abcdef"
TIMEOUT = 30
KEY = re.compile(r"^[0-9a-f]{32}$")


class Api:
    """Requests to the REST prefix of one server, with a key sent the way a test says."""

    def __init__(self, url: str) -> None:
        self.url = url + "/rest/1"

    def call(
        self, method: str, path: str, status: int, key: str | None = None, **kwargs: Any
    ) -> dict[str, Any] | None:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers.setdefault("API-Key", key)
        response = requests.request(method, self.url + path, headers=headers, timeout=TIMEOUT, **kwargs)
        assert response.status_code == status, (method, path, response.status_code, response.text)
        if response.status_code == 204 or not response.content:
            return None
        body = response.json()
        if status >= 400:
            assert set(body) == {"code", "msg"}, body  # the REST API's error document
        return body

    def statuses(self, path: str, key: str | None, times: int = 8) -> list[int]:
        """``times`` requests at once, each on its own connection: both workers answer some."""

        def one(_: int) -> int:
            headers = {"X-API-Key": key} if key else {}
            return requests.get(self.url + path, headers=headers, timeout=TIMEOUT).status_code

        with ThreadPoolExecutor(times) as pool:
            return list(pool.map(one, range(times)))


@pytest.fixture(scope="module")
def protected(pg_url: str, gpkg_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("users")
    config = server_config(pg_url, gpkg_path, free_port())
    config["store"] = {"path": str(workdir / "state.sqlite"), "tables": "pg"}
    config["auth"] = {"api_key": MASTER}
    srv = Server(config, workdir)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api(protected: Server) -> Api:
    return Api(protected.url)


@pytest.fixture(scope="module")
def people(api: Api) -> dict[str, Any]:
    """Roles (staff <- editors), users and their keys, made with the master key."""
    staff = api.call("POST", "/roles", 201, MASTER, json={"name": "staff"})
    editors = api.call("POST", "/roles", 201, MASTER, json={"name": "editors", "parent_id": staff["id"]})
    out: dict[str, Any] = {"roles": {"staff": staff, "editors": editors}}
    for name, admin, roles in (
        ("alice", False, []),
        ("bob", False, [editors["id"]]),
        ("carol", False, []),
        ("root", True, []),
    ):
        out[name] = api.call(
            "POST", "/users", 201, MASTER, json={"username": name, "admin": admin, "roles": roles}
        )
    for user, label, scopes in (
        ("alice", "alice_read", ["read"]),
        ("alice", "alice_write", ["read", "write"]),
        ("bob", "bob_write", ["read", "write"]),
        ("carol", "carol_write", ["read", "write"]),
        ("root", "root_admin", ["read", "write", "admin"]),
        ("root", "root_write", ["read", "write"]),
    ):
        made = api.call("POST", "/keys", 201, MASTER, json={"username": user, "scopes": scopes})
        out[label] = made["key"]
    return out


def make_key(api: Api, by: str, **body: Any) -> dict[str, Any]:
    made = api.call("POST", "/keys", 201, by, json=body)
    assert KEY.match(made["key"])
    return made


# -- who may manage users -------------------------------------------------------------------
def test_users_are_for_admins_only(api, people):
    response = requests.get(api.url + "/users", timeout=TIMEOUT)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    api.call("GET", "/users", 401, "f" * 32)  # a key nobody made
    for key in (people["alice_read"], people["alice_write"], people["root_write"]):
        # root is an admin, but this key of theirs has no admin scope
        api.call("GET", "/users", 403, key)
        api.call("GET", f"/users/{people['bob']['id']}", 403, key)
        api.call("POST", "/users", 403, key, json={"username": "mallory"})
        api.call("PUT", f"/users/{people['alice']['id']}", 403, key, json={"admin": True})
        api.call("DELETE", f"/users/{people['bob']['id']}", 403, key)
    assert api.call("GET", f"/users/{people['alice']['id']}", 200, MASTER)["admin"] is False
    assert api.call("GET", "/users?perpage=1000", 200, people["root_admin"])["total"] >= 4
    assert api.call("GET", "/users/mallory", 404, MASTER)


def test_user_crud(api, people):
    admin = people["root_admin"]
    body = {
        "username": "dave.d",
        "email": "dave@example.org",
        "firstname": "Dave",
        "lastname": "D",
        "roles": [people["roles"]["staff"]["id"]],
    }
    response = requests.post(api.url + "/users.json", json=body, headers={"API-Key": admin}, timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    dave = response.json()
    assert response.headers["Location"].endswith(f"/rest/1/users/{dave['id']}")
    assert {k: dave[k] for k in body} == body
    assert dave["active"] is True and dave["admin"] is False
    assert api.call("GET", f"/users/{dave['id']}.json", 200, admin)["username"] == "dave.d"

    api.call("POST", "/users", 409, admin, json={"username": "dave.d"})
    for bad in (
        {"username": ""},
        {"username": "with space"},
        {"username": "anonymous"},
        {"username": "x" * 65},
        {"username": "eve", "email": "not-an-email"},
        {"username": "eve", "roles": [999999]},
        {"username": "eve", "admin": "yes"},
        {"username": "eve", "password": "secret"},
    ):
        api.call("POST", "/users", 422, admin, json=bad)
    assert not [
        u for u in api.call("GET", "/users?perpage=1000", 200, admin)["data"] if u["username"] == "eve"
    ]

    changed = api.call("PUT", f"/users/{dave['id']}", 200, admin, json={"lastname": "Davis", "active": False})
    assert changed["lastname"] == "Davis" and changed["active"] is False and changed["email"] == body["email"]
    api.call("PATCH", f"/users/{dave['id']}", 409, admin, json={"username": "alice"})
    renamed = api.call("PATCH", f"/users/{dave['id']}", 200, admin, json={"username": "david"})
    assert renamed["username"] == "david"

    page = api.call("GET", "/users?order_by=username:desc&perpage=2&page=1", 200, admin)
    names = sorted((u["username"] for u in api.call("GET", "/users", 200, admin)["data"]), reverse=True)
    assert page["type"] == "users" and page["page"] == 1 and page["total"] == len(names)
    assert [u["username"] for u in page["data"]] == names[:2]
    second = api.call("GET", "/users?order_by=username:desc&perpage=2&page=2&nototal=true", 200, admin)
    assert "total" not in second and [u["username"] for u in second["data"]] == names[2:4]
    api.call("GET", "/users?order_by=password", 400, admin)

    api.call("DELETE", f"/users/{dave['id']}", 204, admin)
    api.call("GET", f"/users/{dave['id']}", 404, admin)
    api.call("DELETE", f"/users/{dave['id']}", 404, admin)


def test_users_me(api, people):
    me = api.call("GET", "/users/me", 200, people["alice_read"])
    assert me["username"] == "alice" and me["id"] == people["alice"]["id"]
    assert me["scopes"] == ["read"] and me["admin"] is False
    bob = api.call("GET", "/users/me.json", 200, people["bob_write"])
    roles = people["roles"]
    assert bob["roles"] == [roles["editors"]["id"]]
    assert bob["role_ids"] == sorted([roles["editors"]["id"], roles["staff"]["id"]])  # inherited
    assert api.call("GET", "/users/me", 200, people["root_admin"])["admin"] is True
    assert api.call("GET", "/users/me", 200, people["root_write"])["admin"] is False
    master = api.call("GET", "/users/me", 200, MASTER)
    assert master["admin"] is True and master["id"] is None
    api.call("GET", "/users/me", 401)


# -- roles --------------------------------------------------------------------------------------
def test_roles(api, people):
    admin = people["root_admin"]
    listed = api.call("GET", "/roles", 200, people["alice_read"])  # any key holder reads roles
    assert listed["type"] == "roles" and {"staff", "editors"} <= {r["name"] for r in listed["data"]}
    api.call("GET", "/roles", 401)
    staff = people["roles"]["staff"]
    assert api.call("GET", f"/roles/{staff['id']}", 200, people["carol_write"])["name"] == "staff"
    api.call("POST", "/roles", 403, people["alice_write"], json={"name": "mine"})

    top = api.call("POST", "/roles", 201, admin, json={"name": "top"})
    mid = api.call("POST", "/roles", 201, admin, json={"name": "mid", "parent_id": top["id"]})
    low = api.call("POST", "/roles", 201, admin, json={"name": "low", "parent_id": mid["id"]})
    api.call("POST", "/roles", 409, admin, json={"name": "top"})
    api.call("POST", "/roles", 422, admin, json={"name": "orphan", "parent_id": 999999})
    api.call("POST", "/roles", 422, admin, json={"name": ""})
    # No cycles: top may not descend from low, nor be its own parent.
    api.call("PUT", f"/roles/{top['id']}", 422, admin, json={"parent_id": low["id"]})
    api.call("PUT", f"/roles/{top['id']}", 422, admin, json={"parent_id": top["id"]})
    assert api.call("GET", f"/roles/{top['id']}", 200, admin)["parent_id"] is None
    api.call("PUT", f"/roles/{low['id']}", 403, people["bob_write"], json={"parent_id": None})
    moved = api.call("PUT", f"/roles/{low['id']}", 200, admin, json={"parent_id": top["id"]})
    assert moved["parent_id"] == top["id"] and moved["name"] == "low"

    # A member of low inherits top; deleting top ends that on the next request.
    user = api.call("POST", "/users", 201, admin, json={"username": "lowly", "roles": [low["id"]]})
    key = make_key(api, admin, user_id=user["id"])["key"]
    assert api.call("GET", "/users/me", 200, key)["role_ids"] == sorted([low["id"], top["id"]])
    api.call("DELETE", f"/roles/{top['id']}", 403, people["alice_write"])
    api.call("DELETE", f"/roles/{top['id']}", 204, admin)
    api.call("GET", f"/roles/{top['id']}", 404, admin)
    assert api.call("GET", "/users/me", 200, key)["role_ids"] == [low["id"]]
    assert api.call("GET", f"/roles/{low['id']}", 200, admin)["parent_id"] is None
    api.call("DELETE", f"/roles/{mid['id']}", 204, admin)
    assert api.call("GET", f"/users/{user['id']}", 200, admin)["roles"] == [low["id"]]
    api.call("DELETE", f"/users/{user['id']}", 204, admin)


# -- keys ------------------------------------------------------------------------------------
def test_keys_are_shown_once(api, protected, people):
    response = requests.post(
        api.url + "/keys",
        json={"scopes": ["read"], "description": "shown once", "expires": "2999-01-01T00:00:00Z"},
        headers={"API-Key": people["alice_write"]},
        timeout=TIMEOUT,
    )
    assert response.status_code == 201, response.text
    made = response.json()
    assert KEY.match(made["key"]) and made["key_trunc"] == made["key"][:6]
    assert made["scopes"] == ["read"] and made["user_id"] == people["alice"]["id"]
    assert made["expires"] == int(datetime(2999, 1, 1, tzinfo=UTC).timestamp())
    assert response.headers["Location"].endswith(f"/rest/1/keys/{made['id']}")
    assert response.headers["Cache-Control"] == "no-store"
    again = api.call("GET", f"/keys/{made['id']}", 200, people["alice_write"])
    assert (
        "key" not in again
        and again["key_trunc"] == made["key_trunc"]
        and again["description"] == "shown once"
    )
    for listed in api.call("GET", "/keys?perpage=1000", 200, MASTER)["data"]:
        assert "key" not in listed
    # The store holds its digest, never the key.
    store = SQLiteStore(Path(protected.config_path).parent / "state.sqlite")
    try:
        record = store.find("key", key_digest(made["key"]))
        assert record is not None and record.id == made["id"]
    finally:
        store.close()


def test_keys_never_in_clear(api, protected, people):
    """Used every way a key is sent, it is in no log line and no store row."""
    key = make_key(api, MASTER, username="carol", scopes=["read", "write"], description="trace")["key"]
    base = api.url
    for response in (
        requests.get(f"{base}/users/me?api_key={key}", timeout=TIMEOUT),
        requests.get(f"{base}/users/me", headers={"API-Key": key}, timeout=TIMEOUT),
        requests.get(f"{base}/users/me", headers={"X-API-Key": key}, timeout=TIMEOUT),
        requests.get(f"{base}/users/me", headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT),
        requests.get(f"{base}/users/me", auth=("carol", key), timeout=TIMEOUT),
        requests.get(
            f"{base}/users?api_key={key}", headers={"Referer": f"{base}/?api_key={key}"}, timeout=TIMEOUT
        ),
        requests.post(f"{base}/keys?api_key={key}", json={"scopes": ["read"]}, timeout=TIMEOUT),
        requests.delete(f"{base}/keys/999999?api_key={key}", timeout=TIMEOUT),
    ):
        assert response.status_code in (200, 201, 403, 404), response.text
    assert requests.get(f"{base}/users/me?api_key={key}", timeout=TIMEOUT).json()["username"] == "carol"
    time.sleep(0.5)  # the access log line is written after the response
    log = (Path(protected.config_path).parent / "server.log").read_text(errors="replace")
    assert "/rest/1/users/me?api_key=***" in log  # the access log is on, and masks the key
    assert key not in log
    with sqlite3.connect(Path(protected.config_path).parent / "state.sqlite") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = [row for table in tables for row in conn.execute(f'SELECT * FROM "{table}"')]  # noqa: S608
    assert rows and not [row for row in rows if key in repr(row)]
    assert [row for row in rows if key_digest(key) in repr(row)]


def test_own_keys_with_a_write_key(api, people):
    alice, bob = people["alice_write"], people["bob_write"]
    mine = make_key(api, alice, scopes=["read", "write"], description="laptop")
    theirs = make_key(api, bob, scopes=["read"])
    listed = api.call("GET", "/keys?perpage=1000", 200, alice)
    assert listed["type"] == "keys"
    assert {k["user_id"] for k in listed["data"]} == {people["alice"]["id"]}
    assert mine["id"] in {k["id"] for k in listed["data"]}
    api.call("GET", f"/keys/{theirs['id']}", 404, alice)  # another user's key does not exist for alice
    api.call("DELETE", f"/keys/{theirs['id']}", 404, alice)
    api.call("GET", f"/keys?user_id={people['bob']['id']}", 403, alice)
    api.call("POST", "/keys", 403, alice, json={"username": "bob"})
    # A read key manages no keys; a key only makes keys with scopes it has.
    api.call("GET", "/keys", 403, people["alice_read"])
    api.call("POST", "/keys", 403, people["alice_read"], json={"scopes": ["read"]})
    api.call("POST", "/keys", 403, alice, json={"scopes": ["read", "admin"]})
    api.call("GET", "/keys", 401)
    api.call("POST", "/keys", 401, json={})
    # What a key may be.
    for bad in (
        {"scopes": ["read", "root"]},
        {"scopes": []},
        {"scopes": "write,everything"},
        {"expires": 1},
        {"expires": "yesterday"},
        {"expires": (datetime.now(UTC) - timedelta(days=1)).isoformat()},
        {"expires_in": -5},
        {"expires_in": 60, "expires": time.time() + 60},
        {"description": "x" * 501},
        {"key": "0" * 32},
    ):
        api.call("POST", "/keys", 422, alice, json=bad)
    default = make_key(api, alice)
    assert default["scopes"] == ["read"] and default["expires"] is None
    # A key does not outlive the key that made it.
    brief = make_key(api, alice, scopes=["read", "write"], expires_in=600)
    inherited = make_key(api, brief["key"], scopes=["read"])
    assert inherited["expires"] == brief["expires"]
    api.call("POST", "/keys", 403, brief["key"], json={"expires_in": 3600})
    assert make_key(api, brief["key"], expires_in=60)["expires"] < brief["expires"]
    # Revoke: 204, then gone for its owner too, and refused.
    api.call("GET", "/users/me", 200, mine["key"])
    api.call("DELETE", f"/keys/{mine['id']}", 204, alice)
    api.call("GET", f"/keys/{mine['id']}", 404, alice)
    api.call("GET", "/users/me", 401, mine["key"])
    api.call("DELETE", f"/keys/{mine['id']}", 404, alice)
    # The reference's own revoke URL, with its method sent as _method.
    api.call("POST", f"/keys/rows/{default['id']}?_method=DELETE", 204, alice)
    api.call("GET", "/users/me", 401, default["key"])


def test_admins_manage_every_key(api, people):
    admin = people["root_admin"]
    everyone = api.call("GET", "/keys?perpage=1000", 200, admin)
    assert {people["alice"]["id"], people["bob"]["id"], people["root"]["id"]} <= {
        k["user_id"] for k in everyone["data"]
    }
    bobs = api.call("GET", f"/keys?user_id={people['bob']['id']}&order_by=id:desc", 200, admin)["data"]
    assert (
        bobs
        and {k["user_id"] for k in bobs} == {people["bob"]["id"]}
        and {k["username"] for k in bobs} == {"bob"}
    )
    assert [k["id"] for k in bobs] == sorted((k["id"] for k in bobs), reverse=True)
    # The admin scope only for admin users.
    api.call("POST", "/keys", 422, admin, json={"username": "bob", "scopes": ["read", "admin"]})
    api.call("POST", "/keys", 422, admin, json={"username": "nobody"})
    made = make_key(api, admin, user_id=people["bob"]["id"], scopes=["read", "write"], expires_in=3600)
    assert made["username"] == "bob" and abs(made["expires"] - (time.time() + 3600)) < 60
    assert api.call("GET", "/users/me", 200, made["key"])["username"] == "bob"
    api.call("DELETE", f"/keys/{made['id']}", 204, admin)
    api.call("GET", "/users/me", 401, made["key"])
    # A key of the deployment (no user) made with the master key, admin when it has that scope.
    service = make_key(api, MASTER, scopes=["read", "write", "admin"], description="deploy")
    assert service["user_id"] is None
    assert api.call("GET", "/users?perpage=1", 200, service["key"])["type"] == "users"
    api.call("DELETE", f"/keys/{service['id']}", 204, MASTER)


def test_revoked_key_is_refused_at_once_on_every_worker(api, people):
    made = make_key(api, people["carol_write"], scopes=["read"])
    assert api.statuses("/users/me", made["key"]) == [200] * 8  # both workers know the key now
    api.call("DELETE", f"/keys/{made['id']}", 204, people["carol_write"])
    assert api.statuses("/users/me", made["key"]) == [401] * 8


def test_expired_key_is_refused_on_every_worker(api, protected, people):
    made = make_key(api, people["carol_write"], scopes=["read"], expires_in=3)
    assert api.statuses("/users/me", made["key"]) == [200] * 8
    time.sleep(max(0.0, made["expires"] - time.time()) + 1.1)
    assert api.statuses("/users/me", made["key"]) == [401] * 8
    # A key stored already expired is refused too (expiry is checked on every request).
    store = SQLiteStore(Path(protected.config_path).parent / "state.sqlite")
    try:
        key = "e" * 32
        body = {"user_id": people["carol"]["id"], "scopes": ["read"], "description": None}
        store.insert(
            "key", {**body, "expires": time.time() - 1, "active": True, "key_trunc": key[:6]}, key_digest(key)
        )
    finally:
        store.close()
    assert api.statuses("/users/me", key) == [401] * 8


def test_deleted_or_inactive_users_keys_are_refused(api, people):
    admin = people["root_admin"]
    user = api.call("POST", "/users", 201, admin, json={"username": "temp"})
    key = make_key(api, admin, user_id=user["id"], scopes=["read", "write"])
    assert api.statuses("/users/me", key["key"]) == [200] * 8
    api.call("PUT", f"/users/{user['id']}", 200, admin, json={"active": False})
    assert api.statuses("/users/me", key["key"]) == [401] * 8
    api.call("POST", "/keys", 422, admin, json={"user_id": user["id"]})  # no new keys for them either
    api.call("PUT", f"/users/{user['id']}", 200, admin, json={"active": True})
    assert api.statuses("/users/me", key["key"]) == [200] * 8
    api.call("DELETE", f"/users/{user['id']}", 204, admin)
    assert api.statuses("/users/me", key["key"]) == [401] * 8
    # Its keys are revoked, not merely orphaned.
    assert key["id"] not in {k["id"] for k in api.call("GET", "/keys?perpage=1000", 200, admin)["data"]}


# -- permissions of resources -------------------------------------------------------------------
@pytest.fixture()
def alices_map(protected: Server, people: dict[str, Any]) -> Iterator[int]:
    """A map record owned by alice, as the REST maps route stores one."""
    store = SQLiteStore(Path(protected.config_path).parent / "state.sqlite")
    record = store.insert("map", {"name": "Alice's map", "layers": [], "owner": people["alice"]["id"]})
    yield record.id
    for grant in store.list("permission"):
        if grant.body["resource_id"] == record.id:
            store.delete("permission", grant.id)
    store.delete("map", record.id)
    store.close()


def test_permissions_of_a_resource(api, people, alices_map):
    alice, bob, carol = people["alice_write"], people["bob_write"], people["carol_write"]
    path = f"/resources/{alices_map}/permissions"
    listed = api.call("GET", path, 200, alice)
    assert listed["type"] == "permissions" and listed["total"] == 1
    assert listed["data"][0]["username"] == "alice" and listed["data"][0]["permissions"][0]["type"] == "OWNER"
    # Those who cannot read the map do not learn it exists.
    api.call("GET", path, 404, bob)
    api.call("POST", path, 404, bob, json={"username": "bob", "permission": "OWNER"})
    api.call("GET", path, 404)
    api.call("GET", "/resources/999999/permissions", 404, MASTER)
    api.call("GET", f"/maps/{alices_map}", 404, bob)

    response = requests.post(
        api.url + path + ".json",
        json={"username": "bob", "permission": "READ"},
        headers={"API-Key": alice},
        timeout=TIMEOUT,
    )
    assert response.status_code == 201, response.text
    grant = response.json()
    assert grant["share_id"] == grant["id"] and grant["resource_id"] == alices_map
    assert grant["username"] == "bob" and grant["permission"] == "READ"
    assert response.headers["Location"].endswith(f"{path}/{grant['share_id']}")
    assert api.call("GET", f"/maps/{alices_map}", 200, bob)["name"] == "Alice's map"
    # READ lets bob see the map, not who shares it, nor share it himself.
    api.call("GET", path, 403, bob)
    api.call("POST", path, 403, bob, json={"username": "carol", "permission": "READ"})
    api.call("DELETE", f"{path}/{grant['share_id']}", 403, bob)
    # alice's read-only key sees the grants but changes none.
    assert api.call("GET", path, 200, people["alice_read"])["total"] == 2
    api.call("POST", path, 403, people["alice_read"], json={"username": "carol", "permission": "READ"})

    # Granting again replaces the principal's grant.
    again = api.call("POST", path, 200, alice, json={"username": "bob", "permission": "edit"})
    assert again["share_id"] == grant["share_id"] and again["permission"] == "EDIT"
    shown = api.call("GET", f"{path}/{grant['share_id']}", 200, alice)
    assert shown["user_id"] == people["bob"]["id"] and shown["permission"] == "EDIT"
    api.call("GET", f"/resources/999999/permissions/{grant['share_id']}", 404, MASTER)

    roles = api.call("POST", path, 201, alice, json={"role": "editors", "permission": "READ"})
    assert roles["role_id"] == people["roles"]["editors"]["id"] and roles["role"] == "editors"
    public = api.call("POST", path, 201, alice, json={"anonymous": True, "permission": "READ"})
    assert public["username"] == "anonymous"
    seen = api.call("GET", f"/maps/{alices_map}", 200)
    assert seen["id"] == alices_map
    api.call("GET", path, 401)  # readable now, but the public shares nothing
    for bad in (
        {"anonymous": True, "permission": "EDIT"},
        {"username": "nobody", "permission": "READ"},
        {"role": "nobody", "permission": "READ"},
        {"role_id": 999999, "permission": "READ"},
        {"username": "bob", "role": "editors", "permission": "READ"},
        {"permission": "READ"},
        {"username": "bob", "permission": "ADMIN"},
        {"username": "bob", "permission": "READ", "expires": 1},
    ):
        api.call("POST", path, 422, alice, json=bad)

    # An OWNER grant shares like the owner: carol lists, then takes bob's grant away.
    api.call("GET", path, 403, carol)  # the public READ lets carol see the map, not its grants
    owner = api.call("POST", path, 201, alice, json={"user_id": people["carol"]["id"], "permission": "OWNER"})
    listed = api.call("GET", path, 200, carol)
    assert listed["total"] == 5
    by_share = {p["share_id"]: entry for entry in listed["data"] for p in entry["permissions"]}
    assert by_share[owner["share_id"]]["username"] == "carol"
    assert by_share[roles["share_id"]]["role"] == "editors"
    api.call("DELETE", f"{path}/{public['share_id']}", 204, carol)
    api.call("DELETE", f"{path}/{grant['share_id']}", 204, carol)
    api.call("GET", f"{path}/{grant['share_id']}", 404, alice)
    api.call("DELETE", f"{path}/{grant['share_id']}", 404, alice)
    api.call("GET", f"/maps/{alices_map}", 200, bob)  # still through the editors role
    api.call("DELETE", f"{path}/{roles['share_id']}", 204, MASTER)
    api.call("GET", f"/maps/{alices_map}", 404, bob)
    api.call("GET", f"/maps/{alices_map}", 404)


def test_permissions_of_a_resource_nobody_owns(api, protected, people):
    """A resource made before anyone owned things is readable by all and shared by admins only."""
    store = SQLiteStore(Path(protected.config_path).parent / "state.sqlite")
    record = store.insert("map", {"name": "Nobody's map", "layers": []})
    store.close()
    path = f"/resources/{record.id}/permissions"
    try:
        api.call("GET", f"/maps/{record.id}", 200, people["carol_write"])
        api.call("GET", path, 403, people["carol_write"])
        api.call("GET", path, 403, people["root_write"])  # an admin user's key without the admin scope
        api.call("GET", path, 401)
        api.call("POST", path, 403, people["carol_write"], json={"username": "carol", "permission": "OWNER"})
        assert api.call("GET", path, 200, people["root_admin"])["total"] == 0
        made = api.call(
            "POST", path, 201, people["root_admin"], json={"username": "carol", "permission": "OWNER"}
        )
        assert api.call("GET", path, 200, people["carol_write"])["data"][0]["username"] == "carol"
        api.call("DELETE", f"{path}/{made['share_id']}", 204, people["carol_write"])
        api.call("GET", path, 403, people["carol_write"])
    finally:
        api.call("DELETE", f"/maps/{record.id}", 204, MASTER)


# -- in process: how keys are compared, the first admin, the OpenAPI fragment -------------------
def _app(pg_url: str, gpkg_path: Path, workdir: Path, master: str | None) -> Any:
    from server.app import create_app

    config = server_config(pg_url, gpkg_path, free_port())
    config["store"] = {"path": str(workdir / "state.sqlite"), "tables": "pg"}
    if master:
        config["auth"] = {"api_key": master}
    return create_app(config)


def test_keys_are_compared_in_constant_time(pg_url, gpkg_path, tmp_path, monkeypatch):
    import server.auth

    calls: list[tuple[Any, Any]] = []
    real = server.auth.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(server.auth.hmac, "compare_digest", spy)
    client = _app(pg_url, gpkg_path, tmp_path, MASTER).test_client()
    assert client.get("/rest/1/users/me", headers={"API-Key": MASTER}).status_code == 200
    assert (key_digest(MASTER), key_digest(MASTER)) in calls
    wrong = MASTER[:-1] + "0"
    assert client.get("/rest/1/users/me", headers={"API-Key": wrong}).status_code == 401
    assert (key_digest(wrong), key_digest(MASTER)) in calls

    client.post("/rest/1/users", json={"username": "ann"}, headers={"API-Key": MASTER})
    made = client.post("/rest/1/keys", json={"username": "ann"}, headers={"API-Key": MASTER}).json
    calls.clear()
    assert client.get("/rest/1/users/me", headers={"API-Key": made["key"]}).json["username"] == "ann"
    digest = key_digest(made["key"])
    assert (digest, key_digest(MASTER)) in calls  # not the master key ...
    assert (digest, digest) in calls  # ... but the stored digest, compared again in constant time
    assert not [c for c in calls if made["key"] in c]  # digests are compared, never the key


def test_first_admin_in_community_mode(pg_url, gpkg_path, tmp_path):
    """With no key anywhere, this machine's clients make the first admin and key; then keys rule."""
    client = _app(pg_url, gpkg_path, tmp_path, None).test_client()
    far = {"REMOTE_ADDR": "192.0.2.7"}
    assert client.get("/health").json["auth"]["mode"] == "community"
    assert client.get("/rest/1/users", environ_base=far).status_code == 403
    assert client.post("/rest/1/users", json={"username": "first"}, environ_base=far).status_code == 403
    assert client.get("/rest/1/users").json["total"] == 0
    response = client.post("/rest/1/users", json={"username": "first", "admin": True})
    assert response.status_code == 201, response.json
    made = client.post("/rest/1/keys", json={"username": "first", "scopes": ["read", "write", "admin"]})
    assert made.status_code == 201, made.json
    key = made.json["key"]
    assert client.get("/health").json["auth"]["mode"] == "protected"
    assert client.get("/rest/1/users").status_code == 401
    assert client.post("/rest/1/users", json={"username": "second"}).status_code == 401
    assert client.get("/rest/1/users", headers={"Authorization": f"Bearer {key}"}).json["total"] == 1
    # Revoking the only key leaves the server protected: revoked keys stay, marked inactive.
    revoke = client.delete(f"/rest/1/keys/{made.json['id']}", headers={"API-Key": key})
    assert revoke.status_code == 204
    assert client.get("/health").json["auth"]["mode"] == "protected"
    assert client.get("/rest/1/users").status_code == 401


def test_openapi_fragment_is_valid():
    from openapi_spec_validator import validate

    from server import rest_layers, rest_users

    users = rest_users.openapi("/rest/1")
    schemas = {**rest_layers.openapi("/rest/1")["components"]["schemas"], **users["components"]["schemas"]}
    doc = {
        "openapi": "3.0.3",
        "info": {"title": "users", "version": "1"},
        "paths": users["paths"],
        "components": {"schemas": schemas},
    }
    validate(doc)
    assert {
        "/rest/1/users/me",
        "/rest/1/keys/{key_id}",
        "/rest/1/resources/{resource_id}/permissions",
    } <= set(users["paths"])
