"""A read replica behind a PostGIS source (``read_url``), on a real streaming replica.

Two PostgreSQL clusters are made for the module on free ports: a primary holding
Natural Earth countries, and a streaming replica of it (``pg_basebackup -R``), both
dropped at the end. Replay on the replica is paused (``pg_wal_replay_pause()``) to
tell which server answered: while it is paused, a read served by the replica shows
what was there before the pause, and one served by the primary shows the write.

Shown through a gunicorn server of two workers: anonymous reads of items, features
and tiles are served by the replica; a client that wrote reads its write on its next
request (the ``gh_rev`` cookie, or the ``X-Geoharbor-Revision`` header), tiles too,
whichever worker answers; the replica's lag is in ``/health`` and ``/metrics``; a
replica that stops leaves every read answering 200 from the primary.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import mapbox_vector_tile
import psycopg
import pytest
import requests
from conftest import Server, free_port, load_countries

from server.consistency import MAX_ENTRIES, format_token, parse_token

VERSION = "15"
PRIMARY = "gh_scale_a_p"
REPLICA = "gh_scale_a_r"
DB = "gh_scale_a"
SOCKETS = "/var/run/postgresql"
POINTS_SQL = """
CREATE TABLE points (id serial PRIMARY KEY, name text NOT NULL, pop bigint, geom geometry(Point, 4326));
INSERT INTO points (name, pop, geom) SELECT name, pop_est, ST_PointOnSurface(geom) FROM countries ORDER BY id;
CREATE INDEX ON points USING gist (geom);
ANALYZE;
"""

pytestmark = pytest.mark.skipif(shutil.which("pg_createcluster") is None, reason="needs postgresql-common")


def _as_postgres(*command: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True)


def _drop(cluster: str) -> None:
    if Path(f"/etc/postgresql/{VERSION}/{cluster}").exists():
        subprocess.run(["pg_dropcluster", "--stop", VERSION, cluster], check=False, capture_output=True)


def _url(port: int, db: str = DB) -> str:
    return f"postgresql:///{db}?host={SOCKETS}&port={port}"


def _wait_for(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[str, str]]:
    """A primary with the test data and a streaming replica of it: their URLs."""
    for name in (REPLICA, PRIMARY):
        _drop(name)
    primary_port, replica_port = free_port(), free_port()
    small = ["-o", "shared_buffers=16MB", "-o", "max_connections=40", "-o", "fsync=off"]
    try:
        subprocess.run(
            ["pg_createcluster", VERSION, PRIMARY, "-p", str(primary_port), *small, "--start"],
            check=True,
            capture_output=True,
        )
        _as_postgres("psql", "-p", str(primary_port), "-qc", "CREATE ROLE root SUPERUSER LOGIN")
        _wait_for(_url(primary_port, "postgres"))
        with psycopg.connect(_url(primary_port, "postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DB}")
        primary = _url(primary_port)
        load_countries(primary)
        with psycopg.connect(primary, autocommit=True) as conn:
            conn.execute(POINTS_SQL)
        subprocess.run(
            ["pg_createcluster", VERSION, REPLICA, "-p", str(replica_port), *small],
            check=True,
            capture_output=True,
        )
        data = Path(f"/var/lib/postgresql/{VERSION}/{REPLICA}")
        shutil.rmtree(data)
        _as_postgres(
            "pg_basebackup",
            "-h",
            SOCKETS,
            "-p",
            str(primary_port),
            "-D",
            str(data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        )
        subprocess.run(["pg_ctlcluster", VERSION, REPLICA, "start"], check=True, capture_output=True)
        replica = _url(replica_port)
        _wait_for(replica)
        yield primary, replica
    finally:
        for name in (REPLICA, PRIMARY):
            _drop(name)


@pytest.fixture(scope="module")
def server(clusters: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    primary, replica = clusters
    port = free_port()
    config = {
        "server": {"bind": f"127.0.0.1:{port}", "workers": 2, "log_level": "WARNING"},
        "sources": {"pg": {"type": "postgis", "url": primary, "read_url": replica, "pool_max": 4}},
        "collections": {
            "points": {"source": "pg", "table": "points", "editable": True},
            "countries": {"source": "pg", "table": "countries"},
        },
        "store": {"source": "pg"},
        "jobs": {"workers": 0},
    }
    srv = Server(config, tmp_path_factory.mktemp("replica-server"))
    yield srv
    srv.stop()


def _sql(url: str, statement: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def _caught_up(clusters: tuple[str, str], timeout: float = 20) -> None:
    """Wait until the replica has replayed all the primary wrote."""
    primary, replica = clusters
    target = _sql(primary, "SELECT pg_current_wal_lsn()::text")[0][0]
    deadline = time.monotonic() + timeout
    while not _sql(replica, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))[0][0]:
        assert time.monotonic() < deadline, "the replica did not catch up"
        time.sleep(0.1)


@pytest.fixture()
def paused(clusters: tuple[str, str]) -> Iterator[None]:
    """Replay paused on the replica for the test: reads it serves show the data as it was."""
    primary, replica = clusters
    _caught_up(clusters)
    _sql(replica, "SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        _sql(replica, "SELECT pg_wal_replay_resume()")
        _caught_up(clusters)


def _log(server: Server) -> str:
    server.log.flush()
    server.log.seek(0)
    return server.log.read().decode(errors="replace")


def _name(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["properties"]["name"]


def _tile_names(response: requests.Response) -> set[str]:
    assert response.status_code == 200, response.text
    layers = mapbox_vector_tile.decode(response.content)
    return {f["properties"]["name"] for f in layers["points"]["features"]}


TILE = "/collections/points/tiles/WebMercatorQuad/0/0/0"


def _item(server: Server, clusters: tuple[str, str], country: str) -> str:
    """The URL of ``country``'s point (countries away from the antimeridian: whole in the z0 tile)."""
    [(fid,)] = _sql(clusters[0], "SELECT id FROM points WHERE name = %s", (country,))
    return f"{server.url}/collections/points/items/{fid}"


def test_a_writer_reads_its_write_while_others_read_the_replica(server, clusters, paused):
    item = _item(server, clusters, "France")
    before = _name(requests.get(item, timeout=10))
    fid = int(item.rpartition("/")[2])
    page = f"{server.url}/collections/points/items?limit=1&offset={fid - 1}"  # ids are 1, 2, 3 ...
    for _ in range(4):  # both workers: the tile cached under the replica's revision
        assert before in _tile_names(requests.get(server.url + TILE, timeout=10))

    writer = requests.Session()
    etag = writer.get(item, timeout=10).headers["ETag"]
    changed = writer.patch(
        item, json={"properties": {"name": "Written Land"}}, headers={"If-Match": etag}, timeout=10
    )
    assert changed.status_code == 200, changed.text
    token = changed.headers["X-Geoharbor-Revision"]
    assert re.fullmatch(r"pg:public\.points:\d+", token)
    assert writer.cookies.get("gh_rev") == token

    for _ in range(6):  # whichever worker answers
        # Anonymous reads are the replica's: it has not replayed the write.
        assert _name(requests.get(item, timeout=10)) == before
        listed = requests.get(page, timeout=10).json()
        assert listed["features"][0]["properties"]["name"] == before
        assert "Written Land" not in _tile_names(requests.get(server.url + TILE, timeout=10))
        # The writer reads its write: its cookie names a revision the replica does not have.
        assert _name(writer.get(item, timeout=10)) == "Written Land"
        listed = writer.get(page, timeout=10).json()
        assert listed["features"][0]["properties"]["name"] == "Written Land"
        assert "Written Land" in _tile_names(writer.get(server.url + TILE, timeout=10))
        # A client without cookies sends the header instead.
        headers = {"X-Geoharbor-Revision": token}
        assert _name(requests.get(item, headers=headers, timeout=10)) == "Written Land"

    # Another client, holding the version it read on the replica, loses to that write: its
    # 412 tells it the revision to read, so it gets the current version at once and wins.
    other = requests.Session()
    seen = other.get(item, timeout=10)
    assert _name(seen) == before
    lost = other.patch(
        item, json={"properties": {"pop": 1}}, headers={"If-Match": seen.headers["ETag"]}, timeout=10
    )
    assert lost.status_code == 412 and other.cookies.get("gh_rev") == token
    again = other.get(item, timeout=10)
    assert _name(again) == "Written Land"
    won = other.patch(
        item, json={"properties": {"pop": 1}}, headers={"If-Match": again.headers["ETag"]}, timeout=10
    )
    assert won.status_code == 200, won.text
    assert (
        _name(writer.get(item, timeout=10)) == "Written Land"
    )  # the writer's older cookie: still the primary

    health = requests.get(server.url + "/health", timeout=10).json()
    lag = health["providers"]["pg"]["replica"]
    assert lag["up"] is True and lag["lag_bytes"] > 0 and lag["lag_s"] > 0, lag
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    found = re.search(r'^geoharbor_replica_lag_bytes\{source="pg"\} (\S+)$', metrics, re.M)
    assert found and float(found.group(1)) > 0, metrics[-2000:]
    assert re.search(r'^geoharbor_replica_up\{source="pg"\} 1\.0$', metrics, re.M)


def test_once_replayed_every_reader_sees_the_write_and_the_lag_is_gone(server, clusters):
    _caught_up(clusters)
    item = _item(server, clusters, "Germany")
    writer = requests.Session()
    assert writer.patch(item, json={"properties": {"name": "Second Land"}}, timeout=10).status_code == 200
    _caught_up(clusters)
    for _ in range(4):
        assert _name(requests.get(item, timeout=10)) == "Second Land"
        names = _tile_names(requests.get(server.url + TILE, timeout=10))
        assert "Second Land" in names
        assert names == _tile_names(writer.get(server.url + TILE, timeout=10))
    lag = requests.get(server.url + "/health", timeout=10).json()["providers"]["pg"]["replica"]
    assert lag == {"up": True, "lag_s": 0.0, "lag_bytes": 0}


def test_a_replica_that_stops_leaves_reads_to_the_primary(server, clusters):
    _caught_up(clusters)
    item = _item(server, clusters, "Spain")
    assert requests.get(item, timeout=10).status_code == 200  # pooled replica connections in both workers
    subprocess.run(["pg_ctlcluster", VERSION, REPLICA, "stop", "-m", "fast"], check=True, capture_output=True)
    try:
        writer = requests.Session()
        assert writer.patch(item, json={"properties": {"name": "Third Land"}}, timeout=10).status_code == 200
        started = time.monotonic()
        for _ in range(6):
            assert _name(requests.get(item, timeout=10)) == "Third Land"
            listed = requests.get(f"{server.url}/collections/points/items?limit=3", timeout=10)
            assert listed.status_code == 200
            assert "Third Land" in _tile_names(requests.get(server.url + TILE, timeout=10))
        assert time.monotonic() - started < 10
        health = requests.get(server.url + "/health", timeout=10)
        assert health.status_code == 200
        assert health.json()["providers"]["pg"]["replica"]["up"] is False
        assert requests.get(server.url + "/health/ready", timeout=10).status_code == 200
        metrics = requests.get(server.url + "/metrics", timeout=10).text
        assert re.search(r'^geoharbor_replica_up\{source="pg"\} 0\.0$', metrics, re.M)
        assert "replica of pg is down, reading from the primary" in _log(server)
    finally:
        subprocess.run(["pg_ctlcluster", VERSION, REPLICA, "start"], check=True, capture_output=True)
    _wait_for(clusters[1])
    # Back: once the probe finds it, reads go to the replica again (paused, it shows the old name).
    _caught_up(clusters)
    _sql(clusters[1], "SELECT pg_wal_replay_pause()")
    try:
        assert writer.patch(item, json={"properties": {"name": "Fourth Land"}}, timeout=10).status_code == 200
        deadline = time.monotonic() + 20
        while _name(requests.get(item, timeout=10)) != "Third Land":
            assert time.monotonic() < deadline, "reads did not go back to the replica"
            time.sleep(0.5)
        assert _name(writer.get(item, timeout=10)) == "Fourth Land"
    finally:
        _sql(clusters[1], "SELECT pg_wal_replay_resume()")


def test_tokens_round_trip_and_an_unreadable_one_asks_for_nothing() -> None:
    entries = {("pg", "public.points"): 3, ("other db", "Mixed Schema.Code|Names:x"): 12}
    token = format_token(entries)
    assert token.count("|") == 1 and " " not in token  # a cookie value as it is
    assert parse_token(token) == entries
    assert parse_token("pg:public.points:1|pg:public.points:5") == {("pg", "public.points"): 5}
    for bad in ("", "pg", "pg:public.points", "pg:public.points:-1", "pg:public.points:x", "x" * 5000):
        assert parse_token(bad) == {}, bad
    many = {("pg", f"public.t{n}"): n for n in range(40)}
    kept = parse_token(format_token(many))
    assert len(kept) == MAX_ENTRIES and ("pg", "public.t39") in kept  # the newest are kept
