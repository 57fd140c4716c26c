"""Rate limits shared by every worker and host, per API key and per client address.

Two geoharbor servers (two gunicorn masters of 2 workers each, as two hosts would be)
share one state store: in a PostgreSQL database of its own, and in a SQLite file.
Limits are per second so that a test can wait for the next window; a burst is sent
just after a second starts and retried if the machine could not send it within it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
ANONYMOUS_RATE = 10
KEY_RATE = 15
STORE_DB = "gh_rate_store"
#: A cheap route open to anonymous readers.
READ = "/conformance"


def store_db_url() -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{STORE_DB}"


@dataclass
class Deployment:
    """Two servers on one store, the second behind a trusted proxy, and a stored key."""

    a: Server
    b: Server
    key: str
    store: Store


def seed_key(store: Store) -> str:
    """A read key of no user, stored as the REST API would store it (its digest only)."""
    key = new_key()
    body = {"user_id": None, "scopes": ["read"], "description": "reader", "expires": None, "active": True}
    store.insert("key", {**body, "key_trunc": key[:6]}, key=key_digest(key))
    return key


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def deployment(
    request: pytest.FixtureRequest, pg_url: str, gpkg_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("ratelimit")
    db: PostGISDatabase | None = None
    if request.param == "postgresql":
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{STORE_DB}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{STORE_DB}"')
        db = PostGISDatabase(store_db_url(), pool_min=0, pool_max=1)
        store: Store = PostgresStore(db)
        store_config: dict[str, Any] = {"source": "state", "tables": "pg"}
    else:
        store = SQLiteStore(workdir / "state.sqlite")
        store_config = {"path": str(workdir / "state.sqlite"), "tables": "pg"}
    key = seed_key(store)
    servers = []
    for trust_proxy in (False, True):
        config = server_config(pg_url, gpkg_path, free_port())
        config["collections"] = {k: v for k, v in config["collections"].items() if k in ("pg.points",)}
        if request.param == "postgresql":
            config["sources"]["state"] = {"type": "postgis", "url": store_db_url(), "pool_max": 2}
        config["store"] = store_config
        config["server"]["trust_proxy_headers"] = trust_proxy
        config["auth"] = {
            "api_key": MASTER,
            "rate_limit": {"anonymous": f"{ANONYMOUS_RATE}/second", "key": f"{KEY_RATE}/second"},
            "audit": False,
        }
        serverdir = workdir / ("behind-proxy" if trust_proxy else "direct")
        serverdir.mkdir()
        servers.append(Server(config, serverdir))
    try:
        yield Deployment(servers[0], servers[1], key, store)
    finally:
        for server in servers:
            server.stop()
        store.close()
        if db is not None:
            db.close()
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{STORE_DB}" WITH (FORCE)')


def in_one_window[T](run: Callable[[], T], tries: int = 5) -> T:
    """Run ``run`` from just after a second starts; again when it took it past that second."""
    for _ in range(tries):
        time.sleep(1.03 - time.time() % 1)
        window = int(time.time())
        result = run()
        if int(time.time()) == window:
            return result
    pytest.fail("the machine could not send the requests within one second")


def burst(calls: list[tuple[str, str, dict[str, str]]], threads: int = 10) -> list[requests.Response]:
    """Send (method, url, headers) calls concurrently; responses in the calls' order."""
    with requests.Session() as session:
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=threads))
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda c: session.request(c[0], c[1], headers=c[2], timeout=TIMEOUT), calls))


def statuses(responses: list[requests.Response]) -> list[int]:
    return [r.status_code for r in responses]


def test_a_burst_across_workers_and_servers_is_cut_at_the_limit(deployment: Deployment) -> None:
    urls = [deployment.a.url + READ, deployment.b.url + READ] * 15
    responses = in_one_window(lambda: burst([("GET", u, {}) for u in urls]))
    served = [r for r in responses if r.status_code != 429]
    refused = [r for r in responses if r.status_code == 429]
    # Per-process counters would let up to 4 x 10 through (2 servers x 2 workers).
    assert len(served) == ANONYMOUS_RATE and len(refused) == 20, statuses(responses)
    assert all(r.status_code == 200 for r in served), statuses(responses)
    # No hit was lost or counted twice: each success saw its own count.
    assert sorted(int(r.headers["X-RateLimit-Remaining"]) for r in served) == list(range(ANONYMOUS_RATE))
    for response in refused:
        assert response.headers["Retry-After"] == "1"
        assert response.headers["X-RateLimit-Limit"] == str(ANONYMOUS_RATE)
        assert response.headers["X-RateLimit-Remaining"] == "0"
        assert response.json()["code"] == "TooManyRequests"  # the OGC exception document
    assert {r.headers["X-RateLimit-Reset"] for r in responses} == {"1"}

    # Served again once the window is over, on both servers.
    time.sleep(int(refused[0].headers["Retry-After"]))
    again = burst([("GET", deployment.a.url + READ, {}), ("GET", deployment.b.url + READ, {})])
    assert statuses(again) == [200, 200]


def test_a_key_counts_apart_from_its_address_and_from_other_keys(deployment: Deployment) -> None:
    a, b = deployment.a.url, deployment.b.url
    master = {"Authorization": f"Bearer {MASTER}"}
    reader = {"X-API-Key": deployment.key}

    def run() -> tuple[list[requests.Response], ...]:
        anonymous = burst([("GET", u + READ, {}) for u in (a, b)] * 6)  # 12: 2 over
        keyed = burst([("GET", u + READ, master) for u in (a, b)] * 8)  # 16: 1 over
        other_key = burst([("GET", b + READ, reader), ("GET", a + READ, reader)])
        url_key = burst([("GET", f"{a}{READ}?api_key={deployment.key}", {})])
        still = burst([("GET", a + READ, {})])
        return anonymous, keyed, other_key, url_key, still

    anonymous, keyed, other_key, url_key, still = in_one_window(run)
    assert statuses(anonymous).count(429) == 2, statuses(anonymous)
    assert statuses(keyed).count(429) == 1, statuses(keyed)
    assert {r.headers["X-RateLimit-Limit"] for r in keyed} == {str(KEY_RATE)}
    # Another key has its own count, whether sent in a header or in the URL.
    assert statuses(other_key) == [200, 200]
    assert sorted(int(r.headers["X-RateLimit-Remaining"]) for r in other_key) == [KEY_RATE - 2, KEY_RATE - 1]
    assert statuses(url_key) == [200]
    assert url_key[0].headers["X-RateLimit-Remaining"] == str(KEY_RATE - 3)
    assert statuses(still) == [429]  # the keys' requests did not free the address


def test_over_the_limit_each_api_answers_in_its_own_error_format(deployment: Deployment) -> None:
    a = deployment.a.url

    def run() -> list[requests.Response]:
        burst([("GET", a + READ, {})] * ANONYMOUS_RATE)
        return burst(
            [
                ("GET", a + "/rest/1/maps.json", {}),
                ("POST", a + "/mapfish/pg.points", {}),
                ("GET", a + "/collections/pg.points/items?limit=1", {}),
            ]
        )

    rest, mapfish, ogc = in_one_window(run)
    assert statuses([rest, mapfish, ogc]) == [429, 429, 429]
    assert rest.json()["code"] == "TOO_MANY_REQUESTS" and "rate limit" in rest.json()["msg"]
    assert "rate limit" in mapfish.json()["error"]
    assert ogc.json()["code"] == "TooManyRequests"
    assert {r.headers["Retry-After"] for r in (rest, mapfish, ogc)} == {"1"}


def test_invalid_keys_count_against_the_address(deployment: Deployment) -> None:
    a = deployment.a.url
    guesses = [("GET", a + READ, {"X-API-Key": new_key()}) for _ in range(ANONYMOUS_RATE + 2)]

    def run() -> tuple[list[requests.Response], list[requests.Response]]:
        return burst(guesses), burst([("GET", a + READ, {})])

    guessed, after = in_one_window(run)
    assert sorted(statuses(guessed)) == [401] * ANONYMOUS_RATE + [429, 429]
    assert statuses(after) == [429]


def test_preflights_and_health_are_not_counted(deployment: Deployment) -> None:
    a = deployment.a.url
    preflight = {"Origin": "https://maps.example.org", "Access-Control-Request-Method": "POST"}
    free = [("OPTIONS", a + "/collections/pg.points/items", preflight), ("GET", a + "/health", {})] * 10

    def run() -> tuple[list[requests.Response], list[requests.Response]]:
        return burst(free), burst([("GET", a + READ, {})] * ANONYMOUS_RATE)

    uncounted, counted = in_one_window(run)
    assert 429 not in statuses(uncounted)
    assert not any("X-RateLimit-Limit" in r.headers for r in uncounted)
    assert statuses(counted) == [200] * ANONYMOUS_RATE
    assert min(int(r.headers["X-RateLimit-Remaining"]) for r in counted) == 0


def test_limited_responses_expose_their_headers_to_other_origins(deployment: Deployment) -> None:
    response = requests.get(
        deployment.a.url + READ, headers={"Origin": "https://maps.example.org"}, timeout=TIMEOUT
    )
    exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= exposed
    assert "ETag" in exposed  # what was exposed before is kept


def test_addresses_behind_a_trusted_proxy_count_apart(deployment: Deployment) -> None:
    b = deployment.b.url

    def via(address: str, count: int = 1) -> list[tuple[str, str, dict[str, str]]]:
        return [("GET", b + READ, {"X-Forwarded-For": address})] * count

    def run() -> list[list[requests.Response]]:
        return [
            burst(via("203.0.113.7", ANONYMOUS_RATE + 1)),
            burst(via("203.0.113.8")),
            # One IPv6 host owns its /64: its addresses share one count.
            burst(via("2001:db8::1", ANONYMOUS_RATE)),
            burst(via("2001:db8::2")),
            burst(via("2001:db8:0:1::1")),
        ]

    first, other_v4, v6, same_64, other_64 = in_one_window(run)
    assert statuses(first).count(429) == 1
    assert statuses(other_v4) == [200]
    assert 429 not in statuses(v6)
    assert statuses(same_64) == [429]
    assert statuses(other_64) == [200]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_store_counts_windows_and_purges_ended_ones(backend: str, pg_url: str, tmp_path: Path) -> None:
    db = None
    if backend == "sqlite":
        store: Store = SQLiteStore(tmp_path / "state.sqlite")
    else:
        db = PostGISDatabase(pg_url, pool_min=0, pool_max=1)
        store = PostgresStore(db)
    try:
        bucket = f"test:{new_key()}"
        hits, reset_at = store.hit(bucket, 1)
        assert hits == 1 and reset_at == int(reset_at) and time.time() < reset_at <= time.time() + 1.1
        time.sleep(max(0.0, reset_at - time.time()) + 0.05)
        assert store.purge_counters() >= 1  # that window has ended
        assert store.hit(bucket, 1)[0] == 1  # and the next starts from one
        long_bucket = f"test:{new_key()}"
        assert [store.hit(long_bucket, 3600)[0] for _ in range(3)] == [1, 2, 3]
        store.purge_counters()
        assert store.hit(long_bucket, 3600)[0] == 4  # a running window is kept
    finally:
        store.close()
        if db is not None:
            db.close()
