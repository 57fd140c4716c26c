"""The audit log: one record per successful write through any API, none for reads or
refused writes, never a key; readable by admins through the REST API."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from conftest import ADMIN_URL, Server, free_port, server_config

from providers.postgis import PostGISDatabase
from providers.store import PostgresStore, SQLiteStore, Store
from server.auth import key_digest, new_key

TIMEOUT = 30
MASTER = new_key()
GEOJSON = {"Content-Type": "application/geo+json"}
ITEMS = "/collections/pg.points/items"
STORE_DB = "gh_audit_store"


@dataclass
class Deployment:
    server: Server
    ana_key: str
    ana_id: int
    ana_key_id: int
    #: Every byte the store holds of its records, to look for keys in.
    stored: Callable[[], bytes]
    #: Makes the store refuse audit records (True) or take them again (False), from outside.
    refuse_audit: Callable[[bool], None]

    @property
    def url(self) -> str:
        return self.server.url


class SQLiteState:
    """A SQLite store file, and how a test reads or breaks it from outside the server."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "state.sqlite"
        self.workdir = workdir

    def config(self, config: dict[str, Any]) -> Store:
        config["store"] = {"path": str(self.path), "tables": "pg"}
        return SQLiteStore(self.path)

    def stored(self) -> bytes:
        return b"".join(p.read_bytes() for p in self.workdir.glob("state.sqlite*"))

    def refuse_audit(self, refuse: bool) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.execute(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON records WHEN NEW.kind = 'audit' "
                "BEGIN SELECT RAISE(ABORT, 'audit refused'); END"
                if refuse
                else "DROP TRIGGER refuse_audit"
            )

    def close(self) -> None:
        pass


class PostgresState:
    """A PostgreSQL store in a database of its own (never the shared test database)."""

    def __init__(self) -> None:
        base, _, _ = ADMIN_URL.rpartition("/")
        self.url = f"{base}/{STORE_DB}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{STORE_DB}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{STORE_DB}"')
        self.db = PostGISDatabase(self.url, pool_min=0, pool_max=1)

    def config(self, config: dict[str, Any]) -> Store:
        config["sources"]["state"] = {"type": "postgis", "url": self.url, "pool_max": 2}
        config["store"] = {"source": "state", "tables": "pg"}
        return PostgresStore(self.db)

    def stored(self) -> bytes:
        with psycopg.connect(self.url) as conn:
            rows = conn.execute("SELECT kind, key, body::text FROM geoharbor.records").fetchall()
        return repr(rows).encode()

    def refuse_audit(self, refuse: bool) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            if refuse:
                conn.execute(
                    "CREATE FUNCTION geoharbor.refuse_audit() RETURNS trigger LANGUAGE plpgsql "
                    "AS $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$"
                )
                conn.execute(
                    "CREATE TRIGGER refuse_audit BEFORE INSERT ON geoharbor.records FOR EACH ROW "
                    "WHEN (NEW.kind = 'audit') EXECUTE FUNCTION geoharbor.refuse_audit()"
                )
            else:
                conn.execute("DROP FUNCTION geoharbor.refuse_audit() CASCADE")

    def close(self) -> None:
        self.db.close()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{STORE_DB}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def deployment(
    request: pytest.FixtureRequest, pg_url: str, gpkg_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """A protected server (master key) with its own store and Ana, an editor of pg.points."""
    workdir = tmp_path_factory.mktemp("audit")
    state = SQLiteState(workdir) if request.param == "sqlite" else PostgresState()
    config = server_config(pg_url, gpkg_path, free_port())
    store = state.config(config)
    role = store.insert("role", {"name": "editors", "parent_id": None}, key="editors")
    ana = store.insert(
        "user",
        {"username": "ana", "email": "ana@example.org", "active": True, "admin": False, "roles": [role.id]},
        key="ana",
    )
    ana_key = new_key()
    key = store.insert(
        "key",
        {
            "user_id": ana.id,
            "scopes": ["read", "write"],
            "description": "editing",
            "expires": None,
            "active": True,
            "key_trunc": ana_key[:6],
        },
        key=key_digest(ana_key),
    )
    store.close()
    points = {**config["collections"]["pg.points"], "editors": ["editors"]}
    config["collections"] = {"pg.points": points}
    config["auth"] = {"api_key": MASTER}  # audit on by default
    server = Server(config, workdir)
    try:
        yield Deployment(server, ana_key, ana.id, key.id, state.stored, state.refuse_audit)
    finally:
        server.stop()
        state.close()


def audit_since(d: Deployment, mark: int) -> list[dict[str, Any]]:
    """The audit records after record id ``mark``, oldest first (read as an admin)."""
    response = requests.get(
        d.url + "/rest/1/audit.json", params={"perpage": 100}, headers={"API-Key": MASTER}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    return sorted((r for r in response.json()["data"] if r["id"] > mark), key=lambda r: r["id"])


def last_id(d: Deployment) -> int:
    found = audit_since(d, 0)
    return found[-1]["id"] if found else 0


def point(name: str) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [15.98, 45.81]},
        "properties": {"name": name, "continent": "Test"},
    }


def test_each_api_write_leaves_one_record_and_reads_none(deployment: Deployment) -> None:
    d = deployment
    ana = {"X-API-Key": d.ana_key}
    mark = last_id(d)
    start = datetime.now(UTC)

    created = requests.post(
        d.url + ITEMS, json=point("audited ogc"), headers={**GEOJSON, **ana}, timeout=TIMEOUT
    )
    assert created.status_code == 201, created.text
    fid = created.headers["Location"].rsplit("/", 1)[1]
    mapfish = requests.post(
        d.url + "/mapfish/pg.points",
        json={"type": "FeatureCollection", "features": [point("audited mapfish")]},
        headers={"Authorization": f"Bearer {d.ana_key}"},
        timeout=TIMEOUT,
    )
    assert mapfish.status_code == 201, mapfish.text
    mapfish_fid = mapfish.json()["features"][0]["id"]
    made = requests.post(
        d.url + "/rest/1/maps.json", params={"api_key": MASTER}, json={"name": "Audited"}, timeout=TIMEOUT
    )
    assert made.status_code == 201, made.text
    map_id = made.json()["id"]

    # Reads, and writes that were refused or failed, leave nothing.
    for path in (ITEMS + f"/{fid}", "/mapfish/pg.points?limit=1", "/rest/1/maps", f"/rest/1/maps/{map_id}"):
        assert requests.get(d.url + path, headers=ana, timeout=TIMEOUT).status_code == 200, path
    refused = requests.post(d.url + ITEMS, json=point("anonymous"), headers=GEOJSON, timeout=TIMEOUT)
    assert refused.status_code == 401
    invalid = requests.post(d.url + ITEMS, data=b"{not json", headers={**GEOJSON, **ana}, timeout=TIMEOUT)
    assert invalid.status_code == 400
    missing = requests.delete(d.url + "/rest/1/maps/999999", headers={"API-Key": MASTER}, timeout=TIMEOUT)
    assert missing.status_code == 404

    records = audit_since(d, mark)
    end = datetime.now(UTC)
    assert [(r["method"], r["path"], r["status"]) for r in records] == [
        ("POST", ITEMS, 201),
        ("POST", "/mapfish/pg.points", 201),
        ("POST", "/rest/1/maps", 201),  # without .json and without the query (it holds the key)
    ]
    ogc, mf, rest = records
    for record in (ogc, mf):
        assert (record["user_id"], record["username"], record["key_id"]) == (d.ana_id, "ana", d.ana_key_id)
        assert record["collection"] == "pg.points" and record["master"] is False
        assert record["address"] == "127.0.0.1"
    assert ogc["location"] == f"{ITEMS}/{fid}"
    assert (rest["user_id"], rest["key_id"], rest["master"]) == (None, None, True)
    assert rest["collection"] is None and rest["location"] == f"/rest/1/maps/{map_id}"
    for record in records:
        at = datetime.fromisoformat(record["at"])
        assert start.replace(microsecond=0) <= at <= end, record["at"]

    # Deleting is a write too: it names what it deleted.
    mark = records[-1]["id"]
    for path, key in ((f"{ITEMS}/{fid}", d.ana_key), (f"/mapfish/pg.points/{mapfish_fid}", d.ana_key)):
        assert requests.delete(d.url + path, headers={"API-Key": key}, timeout=TIMEOUT).status_code == 204
    assert (
        requests.delete(f"{d.url}/rest/1/maps/{map_id}?api_key={MASTER}", timeout=TIMEOUT).status_code == 204
    )
    deletes = audit_since(d, mark)
    assert [(r["method"], r["status"], r["collection"], r["resource"]) for r in deletes] == [
        ("DELETE", 204, "pg.points", {"cid": "pg.points", "fid": str(fid)}),
        ("DELETE", 204, "pg.points", {"layer": "pg.points", "fid": str(mapfish_fid)}),
        ("DELETE", 204, None, {"map_id": str(map_id)}),
    ]


def test_keys_are_never_in_the_log(deployment: Deployment) -> None:
    d = deployment
    made = requests.post(
        f"{d.url}/rest/1/maps?api_key={MASTER}", json={"name": "key in the URL"}, timeout=TIMEOUT
    )
    assert made.status_code == 201
    requests.delete(f"{d.url}/rest/1/maps/{made.json()['id']}?api_key={d.ana_key}", timeout=TIMEOUT)
    text = requests.get(d.url + "/rest/1/audit", headers={"API-Key": MASTER}, timeout=TIMEOUT).text
    assert "/rest/1/maps" in text
    stored = d.stored()
    assert b"/rest/1/maps" in stored  # the audit records are in what was read
    for key in (MASTER, d.ana_key):
        assert key not in text
        assert key.encode() not in stored


def test_only_admins_read_the_log_in_pages(deployment: Deployment) -> None:
    d = deployment
    for _ in range(3):
        made = requests.post(d.url + "/rest/1/maps", json={"name": "page"}, headers={"API-Key": MASTER})
        requests.delete(
            f"{d.url}/rest/1/maps/{made.json()['id']}", headers={"API-Key": MASTER}, timeout=TIMEOUT
        )
    anonymous = requests.get(d.url + "/rest/1/audit", timeout=TIMEOUT)
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "UNAUTHORIZED"
    editor = requests.get(d.url + "/rest/1/audit", headers={"X-API-Key": d.ana_key}, timeout=TIMEOUT)
    assert editor.status_code == 403 and editor.json()["code"] == "FORBIDDEN"

    admin = {"API-Key": MASTER}
    whole = requests.get(d.url + "/rest/1/audit", headers=admin, timeout=TIMEOUT).json()
    assert whole["type"] == "audit" and whole["page"] == 1 and whole["total"] >= 6
    ids = [r["id"] for r in whole["data"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert whole["data"][0]["method"] == "DELETE"
    second = requests.get(
        d.url + "/rest/1/audit",
        params={"perpage": 2, "page": 2, "nototal": 1},
        headers=admin,
        timeout=TIMEOUT,
    ).json()
    assert "total" not in second and second["page"] == 2
    assert [r["id"] for r in second["data"]] == ids[2:4]


def test_a_lost_audit_record_does_not_fail_the_write(deployment: Deployment) -> None:
    """With the store refusing audit records, the feature is still written and the loss is logged."""
    d = deployment
    master = {"API-Key": MASTER}
    mark = last_id(d)
    d.refuse_audit(True)
    try:
        created = requests.post(
            d.url + ITEMS, json=point("unaudited"), headers={**GEOJSON, **master}, timeout=TIMEOUT
        )
    finally:
        d.refuse_audit(False)
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    assert requests.get(location, timeout=TIMEOUT).json()["properties"]["name"] == "unaudited"
    assert "audit record lost for POST " + ITEMS in d.server.output()
    assert audit_since(d, mark) == []
    assert requests.delete(location, headers=master, timeout=TIMEOUT).status_code == 204
    assert [r["method"] for r in audit_since(d, mark)] == ["DELETE"]  # taken again


def test_no_rate_headers_when_no_rate_is_configured(deployment: Deployment) -> None:
    response = requests.get(deployment.url + "/conformance", headers={"API-Key": MASTER}, timeout=TIMEOUT)
    assert response.status_code == 200
    assert not any(h.startswith("X-RateLimit") for h in response.headers)


def test_audit_can_be_turned_off(pg_url: str, gpkg_path: Path, tmp_path: Path) -> None:
    """In community mode (no keys) with ``auth.audit: false``: writes from this machine leave nothing."""
    config = server_config(pg_url, gpkg_path, free_port())
    config["collections"] = {"pg.points": config["collections"]["pg.points"]}
    config["store"] = {"path": str(tmp_path / "state.sqlite"), "tables": "pg"}
    config["auth"] = {"audit": False}
    server = Server(config, tmp_path)
    try:
        made = requests.post(server.url + "/rest/1/maps", json={"name": "unaudited"}, timeout=TIMEOUT)
        assert made.status_code == 201, made.text
        log = requests.get(server.url + "/rest/1/audit", timeout=TIMEOUT)  # this machine, no keys
        assert log.status_code == 200 and log.json()["total"] == 0 and log.json()["data"] == []
    finally:
        server.stop()
    store = SQLiteStore(tmp_path / "state.sqlite")
    assert [r.body["name"] for r in store.list("map")] == ["unaudited"]
    assert store.count("audit") == 0
    store.close()


def test_rest_layer_writes_name_the_layer_collection(deployment: Deployment) -> None:
    """A REST write addresses a layer by record id: the log names its collection, even once deleted."""
    d = deployment
    admin = {"API-Key": MASTER}
    body = {"name": "Audit points", "source": {"type": "pg", "src": "country_points"}, "editable": True}
    mark = last_id(d)
    layer = requests.post(d.url + "/rest/1/layers", json=body, headers=admin, timeout=TIMEOUT)
    assert layer.status_code == 201, layer.text
    layer_id, cid = layer.json()["id"], layer.json()["collection"]
    feature = {"data": {"name": "audited rest"}, "geometry": "POINT(15.98 45.81)"}
    created = requests.post(
        f"{d.url}/rest/1/layers/{layer_id}/features", json=feature, headers=admin, timeout=TIMEOUT
    )
    assert created.status_code == 201, created.text
    fid = created.headers["Location"].rsplit("/", 1)[1]
    for path in (f"/rest/1/layers/{layer_id}/features/{fid}", f"/rest/1/layers/{layer_id}"):
        assert requests.delete(d.url + path, headers=admin, timeout=TIMEOUT).status_code == 204
    records = audit_since(d, mark)
    assert [(r["method"], r["path"], r["collection"]) for r in records] == [
        ("POST", "/rest/1/layers", None),
        ("POST", f"/rest/1/layers/{layer_id}/features", cid),
        ("DELETE", f"/rest/1/layers/{layer_id}/features/{fid}", cid),
        ("DELETE", f"/rest/1/layers/{layer_id}", cid),
    ]
    assert records[0]["location"] == f"/rest/1/layers/{layer_id}"
    assert records[1]["resource"] == {"layer_id": str(layer_id)}
