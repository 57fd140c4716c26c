"""geoharbor through pgbouncer in transaction mode (Debian's 1.18: no server-side prepared
statements), with ``prepare_threshold: null`` and a ``direct_url`` past the pooler.

A pgbouncer is started for the module on a free port in front of the test database.
The server's ``url`` goes through it; LISTEN (event streams), the job worker and the
loaders use ``direct_url``. Driven through it: items and features read many times over
(a prepared statement would fail on another server session), tiles, Part 4 writes with
``If-Match``, a job run by the worker and followed over Server-Sent Events. Then the
pooler's server sessions are shown clean of geoharbor's session settings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests
from conftest import ADMIN_URL, Server, drop_database, free_port, fresh_database, load_countries

from providers import events
from providers.postgis import PostGISDatabase
from providers.store import PostgresStore
from server import streams

DB = "gh_scale_b"
POINTS_SQL = """
CREATE TABLE points (id serial PRIMARY KEY, name text NOT NULL, pop bigint, geom geometry(Point, 4326));
INSERT INTO points (name, pop, geom) SELECT name, pop_est, ST_PointOnSurface(geom) FROM countries ORDER BY id;
"""

pytestmark = pytest.mark.skipif(shutil.which("pgbouncer") is None, reason="needs pgbouncer (Debian package)")


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    url = fresh_database(DB)
    load_countries(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(POINTS_SQL)
    yield url
    drop_database(DB)


@pytest.fixture(scope="module")
def pooler(database: str) -> Iterator[str]:
    """pgbouncer in transaction mode in front of the test database; its URL."""
    # pgbouncer refuses to run as root: it runs as postgres, in a directory it may reach.
    with tempfile.TemporaryDirectory(prefix="gh-pgbouncer-") as made:
        Path(made).chmod(0o777)
        yield from _pgbouncer(Path(made))


def _pgbouncer(workdir: Path) -> Iterator[str]:
    port = free_port()
    socket_dir = psycopg.conninfo.conninfo_to_dict(ADMIN_URL).get("host") or "/var/run/postgresql"
    server_port = psycopg.conninfo.conninfo_to_dict(ADMIN_URL).get("port") or "5432"
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        f"""[databases]
{DB} = host={socket_dir} port={server_port} dbname={DB} user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = 6
max_client_conn = 200
admin_users = root
ignore_startup_parameters = extra_float_digits
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
"""
    )
    process = subprocess.Popen(["runuser", "-u", "postgres", "--", "pgbouncer", str(ini)])
    url = f"postgresql://root@127.0.0.1:{port}/{DB}"
    deadline = time.monotonic() + 15
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2, prepare_threshold=None) as conn:
                conn.execute("SELECT 1")
            break
        except psycopg.OperationalError:
            assert process.poll() is None and time.monotonic() < deadline, _text(workdir / "pgbouncer.log")
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(10)


def _text(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture(scope="module")
def served(pooler: str, database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    config = {
        "server": {"bind": f"127.0.0.1:{port}", "workers": 2, "log_level": "WARNING"},
        "sources": {
            "pg": {
                "type": "postgis",
                "url": pooler,
                "direct_url": database,
                "prepare_threshold": None,
                "pool_max": 4,
                "editable": True,
            }
        },
        "collections": {"points": {"source": "pg", "table": "points"}},
        "store": {"source": "pg", "tables": "pg"},
        "jobs": {"workers": 1},
    }
    srv = Server(config, tmp_path_factory.mktemp("pgbouncer-server"))
    yield srv
    srv.stop()


def _events(response: requests.Response) -> Iterator[dict]:
    """The data of each event of an SSE response, as it comes."""
    for line in response.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            yield json.loads(line[5:])


def test_reads_writes_a_job_and_a_stream_through_pgbouncer(
    served: Server, pooler: str, database: str
) -> None:
    base = served.url
    items = f"{base}/collections/points/items"
    # Many times the same statements: prepared ones would fail on another server session.
    for offset in range(0, 60, 5):
        page = requests.get(items, params={"limit": 5, "offset": offset}, timeout=10)
        assert page.status_code == 200, page.text
        assert page.json()["numberReturned"] == 5
    for fid in range(1, 13):
        assert requests.get(f"{items}/{fid}", timeout=10).status_code == 200
    for x in range(2):
        tile = requests.get(f"{base}/collections/points/tiles/WebMercatorQuad/1/0/{x}", timeout=10)
        assert tile.status_code in (200, 204)

    created = requests.post(
        items,
        json={
            "type": "Feature",
            "properties": {"name": "Pooled"},
            "geometry": {"type": "Point", "coordinates": [2, 48]},
        },
        timeout=10,
    )
    assert created.status_code == 201, created.text
    item = created.headers["Location"]
    etag = created.headers["ETag"]
    stale = requests.patch(item, json={"properties": {"pop": 1}}, headers={"If-Match": '"0"'}, timeout=10)
    assert stale.status_code == 412
    for n in range(6):
        changed = requests.patch(
            item, json={"properties": {"pop": n}}, headers={"If-Match": etag}, timeout=10
        )
        assert changed.status_code == 200, changed.text
        etag = changed.headers["ETag"]
    assert requests.get(item, timeout=10).json()["properties"]["pop"] == 5
    assert requests.delete(item, headers={"If-Match": etag}, timeout=10).status_code == 204
    assert requests.get(item, timeout=10).status_code == 404

    # A job: queued through the pooler, run by the worker (LISTEN past it), followed over SSE.
    rule = requests.post(
        f"{base}/rules",
        json={"name": "pooled-buffer", "capability": "buffer", "config": {"distance": 1}},
        timeout=30,
    )
    assert rule.status_code == 201, rule.text
    job = requests.post(
        f"{base}/jobs",
        json={"dataset_id": "points", "parameters": {"rule_ids": [rule.json()["id"]]}},
        timeout=30,
    )
    assert job.status_code == 201, job.text
    with requests.get(f"{base}/jobs/{job.json()['id']}/stream", stream=True, timeout=60) as stream:
        assert stream.status_code == 200
        final = None
        for data in _events(stream):
            if data.get("type") == "status" and data.get("status") in ("COMPLETED", "FAILED", "CANCELLED"):
                final = data
                break
    assert final is not None and final["status"] == "COMPLETED", final

    # Event streams are woken through LISTEN on direct connections: a publish through the
    # pooler (NOTIFY at its commit) reaches an open stream at once.
    # Configured as geoharbor would be (direct_url given), so it SETs nothing through the pooler.
    through_pooler = PostGISDatabase(pooler, direct_url=database, prepare_threshold=None, pool_max=1)
    bus = events.bus_for(PostgresStore(through_pooler))
    try:
        with requests.get(f"{base}/rules/eval-stream", stream=True, timeout=30) as stream:
            lines = stream.iter_lines(decode_unicode=True)
            assert next(lines).startswith("retry:")
            sent = time.monotonic()
            bus.publish(streams.EVALUATIONS, {"rule": "pooled", "outcome": "passed"})
            data = next(json.loads(line[5:]) for line in lines if line.startswith("data:"))
            assert data == {"rule": "pooled", "outcome": "passed"} and time.monotonic() - sent < 3
    finally:
        bus.close()
    with psycopg.connect(database, autocommit=True) as conn:
        listening = conn.execute(
            "SELECT usename, query FROM pg_stat_activity WHERE datname = %s AND query ILIKE 'LISTEN%%'", (DB,)
        ).fetchall()
    # The web workers' event listeners and the job worker's: ours (root), none of pgbouncer's (postgres).
    assert any("geoharbor_events" in q for _, q in listening), listening
    assert any("procrastinate" in q for _, q in listening), listening
    assert {user for user, _ in listening} == {"root"}, listening

    # What went through the pooler, and no session state left on its server sessions.
    stats = subprocess.run(
        ["psql", pooler.rsplit("/", 1)[0] + "/pgbouncer", "-Atc", "SHOW STATS"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    row = next(line.split("|") for line in stats.splitlines() if line.startswith("gh_scale_b|"))
    assert int(row[1]) > 50, stats  # total_xact_count
    for _ in range(8):
        with psycopg.connect(pooler, prepare_threshold=None, autocommit=True) as conn:
            timeout = conn.execute("SHOW statement_timeout").fetchone()[0]
            jit = conn.execute("SHOW jit").fetchone()[0]
        assert (timeout, jit) == ("0", "on"), "a server session of the pooler kept geoharbor's settings"
    assert "prepared statement" not in _text(Path(served.config_path).parent / "server.log")
