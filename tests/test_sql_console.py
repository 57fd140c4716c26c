"""The SQL console (``POST /api/portal/sql/execute``): one read-only query over published tables.

Every refusal is checked twice: the answer is a 4xx in the datasets' ``{"detail"}``
format, and the database is as it was (rows, tables, the role's grants, the session's
role). The app runs in this process (Flask's test client) on the session's PostGIS
database and GeoPackage, with a master key and its own SQLite store, so the keys made
here never reach the session server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import shapely
from shapely.geometry import Point, shape

from providers.errors import Forbidden
from providers.postgis import PostGISDatabase
from providers.sql_console import PostGISConsole
from server.accounts import Accounts
from server.app import create_app

MASTER = "sql-console-master-key-0123456789"
URL = "/api/portal/sql/execute"
COUNTRIES = 177
PARIS = Point(2.35, 48.85)
#: The table no collection publishes, and what it holds.
SECRET = "sql_console_secret"
HIDDEN = "the-hidden-value"


@pytest.fixture(scope="module")
def secret_table(pg_url: str) -> Iterator[str]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {SECRET}")  # noqa: S608 - test constant
        conn.execute(f"CREATE TABLE {SECRET} (id int PRIMARY KEY, value text)")  # noqa: S608
        conn.execute(f"INSERT INTO {SECRET} VALUES (1, %s)", (HIDDEN,))  # noqa: S608
    yield SECRET
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {SECRET}")  # noqa: S608


@pytest.fixture(scope="module")
def world(pg_url: str, gpkg_path: Path, secret_table: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A protected app: the master key is an admin's; ``reader`` has a read and write key."""
    state = tmp_path_factory.mktemp("sql-console") / "state.sqlite"
    app = create_app(
        {
            "sources": {
                "pg": {"type": "postgis", "url": pg_url, "pool_max": 2},
                "files": {"type": "geopackage", "path": str(gpkg_path)},
            },
            "collections": {
                "countries": {"source": "pg", "table": "countries"},
                "l93": {"source": "pg", "table": "countries_l93"},
                "gpkg-points": {"source": "files", "layer": "country_points"},
            },
            "store": {"path": str(state), "tables": "pg"},
            "auth": {"api_key": MASTER},
        }
    )
    accounts = Accounts(app.extensions["geoharbor"].registry.store)
    user = accounts.create_user({"username": "sql-reader"})
    key, _ = accounts.create_key(user, ["read", "write"])
    yield {"client": app.test_client(), "key": key, "app": app}
    app.extensions["geoharbor"].registry.close()


def run(world: Any, query: str, key: str | None = MASTER, **extra: Any) -> Any:
    headers = {"X-API-Key": key} if key else {}
    return world["client"].post(URL, json={"query": query, **extra}, headers=headers)


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def console_role(world: Any) -> str:
    return ok(run(world, "SELECT current_user AS who"))["rows"][0]["who"]


def snapshot(pg_url: str, role: str) -> dict[str, Any]:
    """What a refused query must not have changed."""
    with psycopg.connect(pg_url) as conn:
        return {
            "countries": conn.execute("SELECT count(*) FROM countries").fetchone()[0],
            "secret": conn.execute("SELECT value FROM sql_console_secret").fetchall(),  # noqa: S608
            "grants": sorted(
                conn.execute(
                    "SELECT table_name FROM information_schema.role_table_grants WHERE grantee = %s", (role,)
                ).fetchall()
            ),
            "memberships": conn.execute(
                "SELECT count(*) FROM pg_auth_members WHERE member = to_regrole(%s)", (role,)
            ).fetchone()[0],
        }


# -- answers ------------------------------------------------------------------------------------
def test_rows_come_with_column_types_and_geometries_as_lon_lat_geojson(world):
    body = ok(
        run(
            world,
            "SELECT l.name, c.pop_est, l.geom, count(*) OVER () AS n "
            "FROM countries_l93 l JOIN countries c USING (id) WHERE l.name = 'France'",
        )
    )
    assert [c["name"] for c in body["columns"]] == ["name", "pop_est", "geom", "n"]
    types = {c["name"]: c["type"] for c in body["columns"]}
    assert types["geom"] == "geometry" and types["n"] == "bigint" and types["name"].startswith("character")
    assert body["row_count"] == 1 and body["truncated"] is False and body["source"] == "pg"
    row = body["rows"][0]
    assert row["name"] == "France" and isinstance(row["pop_est"], int | float) and row["n"] == 1
    france = shape(row["geom"])  # stored in Lambert 93, answered in lon/lat
    assert row["geom"]["type"] == "MultiPolygon" and france.contains(PARIS)


def test_rows_are_capped_and_repeated_column_names_are_numbered(world):
    body = ok(run(world, "SELECT name, 1 AS a, 2 AS a FROM countries ORDER BY name", limit=5))
    assert body["row_count"] == 5 and body["truncated"] is True and body["limit"] == 5
    assert [c["name"] for c in body["columns"]] == ["name", "a", "a_2"]
    assert body["rows"][0] == {"name": "Afghanistan", "a": 1, "a_2": 2}
    everything = ok(run(world, "SELECT count(*) AS n FROM countries"))
    assert everything["rows"] == [{"n": COUNTRIES}] and everything["truncated"] is False


def test_only_admins_and_sql_keys_may_run_sql(world):
    assert run(world, "SELECT 1", key=None).status_code == 401
    refused = run(world, "SELECT 1", key=world["key"])
    assert refused.status_code == 403 and "sql scope" in refused.get_json()["detail"]
    assert ok(run(world, "SELECT 1 AS one"))["rows"] == [{"one": 1}]


def test_bodies_without_sql_are_422(world):
    client = world["client"]
    headers = {"X-API-Key": MASTER}
    assert client.post(URL, json={"sql": "  "}, headers=headers).status_code == 422
    assert client.post(URL, json=["SELECT 1"], headers=headers).status_code == 422
    assert client.post(URL, json={"query": "SELECT 1", "limit": 0}, headers=headers).status_code == 422
    assert client.post(URL, json={"query": "SELECT 1", "source": "nope"}, headers=headers).status_code == 404
    assert ok(client.post(URL, json={"sql": "SELECT 2 AS two"}, headers=headers))["rows"] == [{"two": 2}]


# -- refusals -----------------------------------------------------------------------------------
REFUSED = [
    ("INSERT INTO countries (name) VALUES ('Atlantis')", 400, "INSERT"),
    ("UPDATE countries SET name = 'x'", 400, "UPDATE"),
    ("DELETE FROM countries", 400, "DELETE"),
    ("DROP TABLE sql_console_secret", 400, "DROP"),
    ("SET ROLE postgres", 400, "SET"),
    ("RESET ROLE", 400, "SET"),
    ("SET SESSION AUTHORIZATION DEFAULT", 400, "SET"),
    ("COPY countries TO PROGRAM 'touch /tmp/geoharbor-sql-console-owned'", 400, "COPY"),
    ("SELECT 1; DROP TABLE countries", 400, "one SQL statement"),
    ("SELECT 1; SELECT * FROM sql_console_secret", 400, "one SQL statement"),
    ("COMMIT", 400, "transaction control"),
    ("BEGIN", 400, "transaction control"),
    ("SELECT set_config('role', 'postgres', true)", 400, "set_config"),
    ("SELECT pg_catalog.set_config('search_path', 'pg_temp', false)", 400, "set_config"),
    ("SELECT dblink_exec('dbname=postgres', 'DROP TABLE countries')", 400, "dblink_exec"),
    ("SELECT lo_import('/etc/passwd')", 400, "lo_import"),
    ("SELECT pg_read_file('/etc/passwd')", 400, "pg_read_file"),
    ("SELECT pg_advisory_lock(42)", 400, "pg_advisory_lock"),
    ("SELECT query_to_xml('SELECT * FROM sql_console_secret', true, false, '')", 400, "query_to_xml"),
    ("WITH gone AS (DELETE FROM countries RETURNING id) SELECT count(*) FROM gone", 400, "DELETE"),
    ("SELECT * INTO countries_copy FROM countries", 400, "SELECT INTO"),
    ("SELECT * FROM countries FOR UPDATE", 400, "row locks"),
    ("EXPLAIN ANALYZE DELETE FROM countries", 400, "EXPLAIN"),
    ("DO $$ BEGIN DELETE FROM countries; END $$", 400, "DO"),
    ("-- only a comment", 400, "no statement"),
    ("SELECT * FROM sql_console_secret", 403, "permission denied"),
    ("SELECT (SELECT value FROM sql_console_secret) AS v FROM countries LIMIT 1", 403, "permission denied"),
    ("SELECT name FROM country_points", 403, "permission denied"),
]


@pytest.mark.parametrize(("query", "status", "said"), REFUSED, ids=[q[:40] for q, _, _ in REFUSED])
def test_refused_queries_are_4xx_and_change_nothing(world, pg_url, query, status, said):
    role = console_role(world)
    before = snapshot(pg_url, role)
    response = run(world, query)
    assert response.status_code == status, response.get_data(as_text=True)
    detail = response.get_json()["detail"]
    assert said in detail and HIDDEN not in response.get_data(as_text=True)
    assert snapshot(pg_url, role) == before
    assert console_role(world) == role  # the next query still runs as the console's role
    assert not Path("/tmp/geoharbor-sql-console-owned").exists()


def test_a_query_past_the_timeout_is_cancelled(world, pg_url):
    started = time.monotonic()
    response = run(world, "SELECT pg_sleep(10) AS slept", timeout_ms=300)
    assert response.status_code == 400 and "300 ms" in response.get_json()["detail"]
    assert time.monotonic() - started < 5
    with psycopg.connect(pg_url) as conn:  # nothing left running on the server
        running = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%pg_sleep(10) AS slept%%' "
            "AND pid <> pg_backend_pid() AND state = 'active'"
        ).fetchone()[0]
    assert running == 0


def test_the_role_holds_select_on_exactly_the_published_tables(world, pg_url):
    role = console_role(world)
    with psycopg.connect(pg_url) as conn:
        granted = conn.execute(
            "SELECT table_name, privilege_type FROM information_schema.role_table_grants WHERE grantee = %s",
            (role,),
        ).fetchall()
        login = conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    assert sorted(granted) == [("countries", "SELECT"), ("countries_l93", "SELECT")]
    assert login == (False,)


def test_grants_follow_what_is_published(pg_url, secret_table):
    """The same tier's role gains and loses tables as the published set changes; the pool is clean after."""
    db = PostGISDatabase(pg_url, pool_min=1, pool_max=1)
    console = PostGISConsole(db)
    try:
        first = console.run(
            "SELECT count(*) AS n FROM countries", "public", frozenset({("public", "countries")}), 2000, 10
        )
        assert first.rows == [[COUNTRIES]]
        moved = frozenset({("public", SECRET)})
        secret = console.run("SELECT value FROM sql_console_secret", "public", moved, 2000, 10)
        assert secret.rows == [[HIDDEN]]
        with pytest.raises(Forbidden):
            console.run("SELECT count(*) FROM countries", "public", moved, 2000, 10)
        with db.connection() as conn:  # the pooled connection is back to the server's own role
            assert conn.execute("SELECT current_user = session_user").fetchone() == (True,)
            assert conn.execute("SELECT current_setting('transaction_read_only')").fetchone() == ("off",)
    finally:
        console.run("SELECT 1", "public", frozenset(), 2000, 10)  # the public role holds nothing again
        db.close()


# -- GeoPackage (embedded mode) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded(gpkg_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Community mode on the GeoPackage alone: this machine's clients may run SQL."""
    state = tmp_path_factory.mktemp("sql-console-gpkg") / "state.sqlite"
    app = create_app(
        {
            "sources": {"files": {"type": "geopackage", "path": str(gpkg_path), "publish": False}},
            "collections": {"gpkg-countries": {"source": "files", "layer": "countries"}},
            "store": {"path": str(state)},
        }
    )
    yield app.test_client()
    app.extensions["geoharbor"].registry.close()


def gpkg_count(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM countries").fetchone()[0]


def test_geopackage_rows_with_geojson_geometries(embedded):
    body = ok(embedded.post(URL, json={"query": "SELECT name, geom FROM countries WHERE name = 'France'"}))
    assert {c["name"]: c["type"] for c in body["columns"]} == {"name": "text", "geom": "geometry"}
    assert body["source"] == "files" and shape(body["rows"][0]["geom"]).contains(PARIS)


GPKG_REFUSED = [
    ("DELETE FROM countries", 403),
    ("UPDATE countries SET name = 'x'", 403),
    ("DROP TABLE countries", 403),
    ("SELECT * FROM countries_l93", 403),  # in the file, not published here
    ("SELECT * FROM gpkg_contents", 403),
    ("SELECT 1; DELETE FROM countries", 400),
    ("ATTACH DATABASE ':memory:' AS other", 403),
    ("PRAGMA writable_schema = ON", 403),
    ("BEGIN", 403),
    ("SELECT load_extension('mod_spatialite')", 403),
    ("SELEC 1", 400),
]


@pytest.mark.parametrize(("query", "status"), GPKG_REFUSED, ids=[q[:40] for q, _ in GPKG_REFUSED])
def test_geopackage_refusals_are_4xx_and_change_nothing(embedded, gpkg_path, query, status):
    before = gpkg_count(gpkg_path)
    response = embedded.post(URL, json={"query": query})
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["detail"]
    assert gpkg_count(gpkg_path) == before == COUNTRIES


def test_geopackage_query_past_the_timeout_is_cancelled(embedded):
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    started = time.monotonic()
    response = embedded.post(URL, json={"query": endless, "timeout_ms": 300})
    assert response.status_code == 400 and "300 ms" in response.get_json()["detail"]
    assert time.monotonic() - started < 5


def test_geojson_of_a_projected_geopackage_layer_is_lon_lat(gpkg_path, tmp_path):
    """A layer stored in Lambert 93 answers lon/lat, as from PostGIS."""
    state = tmp_path / "state.sqlite"
    app = create_app(
        {
            "sources": {"files": {"type": "geopackage", "path": str(gpkg_path), "publish": False}},
            "collections": {"l93": {"source": "files", "layer": "countries_l93"}},
            "store": {"path": str(state)},
        }
    )
    try:
        body = ok(
            app.test_client().post(
                URL, json={"query": "SELECT geom FROM countries_l93 WHERE name = 'France'"}
            )
        )
        france = shape(body["rows"][0]["geom"])
        assert france.contains(PARIS) and shapely.get_srid(france) == 0
    finally:
        app.extensions["geoharbor"].registry.close()
