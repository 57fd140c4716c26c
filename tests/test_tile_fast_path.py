"""Cached tiles answered before Flask (server/tile_fast_path.py): same answers, same rules.

Most tests run the app in this process, where the lean path tells who answered through
its observer hook (``app.extensions[ANSWERED]``): a request it serves is reported there,
one it leaves to Flask is not. Flask's own answer to the same tile comes from the same
request with ``f=mvt``, which the route ignores and the lean path leaves to Flask. Edits
are made through the session's gunicorn server (another process, with workers of its
own), so a tile this process cached is stale exactly as it would be in another worker.
"""

from __future__ import annotations

import gzip
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mapbox_vector_tile
import mercantile
import pytest
import requests
from conftest import free_port, server_config
from flask import Flask
from flask.testing import FlaskClient

from providers.postgis import PostGISDatabase
from providers.store import PostgresStore
from server.app import create_app
from server.auth import new_key
from server.cors import EXPOSED, Cors
from server.tile_fast_path import ANSWERED, CachedTiles

WMQ = "WebMercatorQuad"
PARIS = (2.35, 48.85)
ORIGIN = "https://maps.example"
MASTER = new_key()

Answer = tuple[int, list[tuple[str, str]], bytes]


def tile_path(cid: str, lon: float, lat: float, z: int) -> str:
    t = mercantile.tile(lon, lat, z)
    return f"/collections/{cid}/tiles/{WMQ}/{z}/{t.y}/{t.x}"


@contextmanager
def running_app(config: dict[str, Any]) -> Iterator[Flask]:
    """An app in this process, its connections closed after (the database is shared)."""
    app = create_app(config)
    try:
        yield app
    finally:
        state = app.extensions["geoharbor"]
        state.jobs.close()
        state.registry.close()


def config_of(pg_url: str, gpkg_path: Path, **changes: Any) -> dict[str, Any]:
    config = server_config(pg_url, gpkg_path, free_port())
    config["server"]["cors_origins"] = [ORIGIN]
    for section, values in changes.items():
        config.setdefault(section, {}).update(values)
    return config


class Seen:
    """The answers the lean path reported: (route, status, seconds, layers)."""

    def __init__(self, app: Flask) -> None:
        self.answers: list[tuple[str, int, float, int]] = []
        app.extensions[ANSWERED].append(lambda *answer: self.answers.append(answer))

    def count(self) -> int:
        return len(self.answers)


@pytest.fixture(scope="module")
def app(pg_url: str, gpkg_path: Path) -> Iterator[Flask]:
    with running_app(config_of(pg_url, gpkg_path)) as app:
        yield app


@pytest.fixture(scope="module")
def seen(app: Flask) -> Seen:
    return Seen(app)


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def get(client: FlaskClient, path: str, **headers: str) -> Answer:
    response = client.get(path, headers=headers)
    return response.status_code, list(response.headers), response.get_data()


def lean_and_flask(client: FlaskClient, seen: Seen, path: str, **headers: str) -> tuple[Answer, Answer]:
    """The answer of the lean path to ``path``, then Flask's answer to the same tile."""
    before = seen.count()
    lean = get(client, path, **headers)
    assert seen.count() == before + 1, "the lean path did not answer a cached tile"
    flask = get(client, path + ("&" if "?" in path else "?") + "f=mvt", **headers)
    assert seen.count() == before + 1, "a request with parameters was answered by the lean path"
    return lean, flask


@pytest.mark.parametrize("backend", ["pg", "gpkg"])
def test_a_cached_tile_is_answered_lean_with_flasks_bytes_and_headers(client, seen, backend):
    path = tile_path(f"{backend}-countries", *PARIS, 5)
    before = seen.count()
    built = get(client, path, Origin=ORIGIN)
    assert seen.count() == before  # not cached yet: Flask built it
    lean, flask = lean_and_flask(client, seen, path, Origin=ORIGIN)
    assert lean == flask == built
    status, headers, body = lean
    assert status == 200 and dict(headers)["Content-Type"] == "application/vnd.mapbox-vector-tile"
    assert ("Vary", "Origin") in headers and ("Access-Control-Allow-Origin", ORIGIN) in headers
    assert "France" in {
        f["properties"]["name"] for f in mapbox_vector_tile.decode(body)[f"{backend}-countries"]["features"]
    }
    # no CORS headers for an origin not allowed, by either path
    lean, flask = lean_and_flask(client, seen, path, Origin="https://elsewhere.example")
    assert lean == flask and not any(name.startswith("Access-Control") for name, _ in lean[1])


def test_gzip_only_when_asked_and_304_on_the_etag(client, seen):
    path = tile_path("pg-countries", *PARIS, 4)
    plain = get(client, path, **{"Accept-Encoding": "identity"})
    etag = dict(plain[1])["ETag"]
    lean, flask = lean_and_flask(client, seen, path, **{"Accept-Encoding": "gzip, deflate"})
    assert lean == flask
    assert dict(lean[1])["Content-Encoding"] == "gzip" and gzip.decompress(lean[2]) == plain[2]
    lean, flask = lean_and_flask(client, seen, path, **{"Accept-Encoding": "identity"})
    assert lean == flask and "Content-Encoding" not in dict(lean[1]) and lean[2] == plain[2]
    for held in (etag, f'"nope", {etag}', f"W/{etag}", "*"):
        lean, flask = lean_and_flask(client, seen, path, **{"If-None-Match": held})
        assert lean == flask and lean[0] == 304 and lean[2] == b"", held
        assert dict(lean[1])["ETag"] == etag and "Content-Type" not in dict(lean[1])
    lean, flask = lean_and_flask(client, seen, path, **{"If-None-Match": '"another"'})
    assert lean == flask and lean[0] == 200


def test_an_empty_tile_is_answered_lean_as_204(client, seen):
    path = tile_path("pg-countries", -140.0, -40.0, 10)  # South Pacific
    assert get(client, path)[0] == 204
    lean, flask = lean_and_flask(client, seen, path)
    assert lean == flask and lean[0] == 204 and lean[2] == b""
    assert "Content-Type" not in dict(lean[1]) and "Content-Length" not in dict(lean[1])


def test_composite_tiles_are_answered_lean_once_every_layer_is_cached(client, seen):
    t = mercantile.tile(*PARIS, 4)
    path = f"/tiles/{WMQ}/4/{t.y}/{t.x}?collections=pg-countries,pg.points"
    before = seen.count()
    built = get(client, path)
    assert seen.count() == before and built[0] == 200
    lean = get(client, path)
    assert seen.count() == before + 1 and seen.answers[-1][0] == "/tiles/<tms_id>/<z>/<y>/<x>"
    assert seen.answers[-1][3] == 2 and lean == built
    assert set(mapbox_vector_tile.decode(lean[2])) == {"pg-countries", "pg.points"}
    # unknown parameters and collections are the route's to refuse
    assert client.get(path + "&nope=1").status_code == 400
    assert client.get(f"/tiles/{WMQ}/4/{t.y}/{t.x}?collections=pg-countries,nope").status_code == 404
    assert seen.count() == before + 1


def test_what_the_lean_path_does_not_answer(client, seen):
    path = tile_path("pg-countries", *PARIS, 6)
    before = seen.count()
    get(client, path)  # a miss: built by Flask
    assert client.get(path + "?properties=name").status_code == 200  # parameters
    assert client.head(path).status_code == 200  # not a GET
    assert client.get(path + "/").status_code in (200, 404)  # not the route's exact path
    assert client.get(f"/collections/pg-countries/tiles/{WMQ}/{'9' * 5000}/0/0").status_code == 404
    assert client.get(f"/collections/pg-countries/tiles/{WMQ}/30/0/0").status_code == 404
    assert client.get("/collections/pg-countries/tiles/Nope/1/0/0").status_code == 404
    assert client.get(f"/collections/nope/tiles/{WMQ}/1/0/0").status_code == 404
    assert seen.count() == before
    assert get(client, path)[0] == 200 and seen.count() == before + 1


@pytest.mark.parametrize("backend", ["pg", "gpkg"])
def test_an_edit_through_another_process_makes_the_next_request_a_miss(client, seen, base, backend):
    """The feature is created and moved through the session's gunicorn server (2 workers of
    its own); this process's cached tile must not be served once the edit is committed."""
    cid = f"{backend}.points"
    items = f"{base}/collections/{cid}/items"
    created = requests.post(
        items,
        headers={"Content-Type": "application/geo+json"},
        json={
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
            "properties": {"name": "Lean probe"},
        },
        timeout=30,
    )
    assert created.status_code == 201
    fid = created.json()["id"]
    old, new = tile_path(cid, 2.35, 48.85, 9), tile_path(cid, 13.4, 52.52, 9)

    def ids(path: str) -> set:
        response = client.get(path)
        if response.status_code == 204:
            return set()
        return {f["id"] for f in mapbox_vector_tile.decode(response.get_data())[cid]["features"]}

    try:
        assert fid in ids(old) and fid not in ids(new)
        before = seen.count()
        assert fid in ids(old) and fid not in ids(new) and seen.count() == before + 2  # both cached
        moved = requests.patch(
            f"{items}/{fid}",
            headers={"Content-Type": "application/geo+json"},
            json={"geometry": {"type": "Point", "coordinates": [13.4, 52.52]}},
            timeout=30,
        )
        assert moved.status_code == 200
        before = seen.count()
        assert fid not in ids(old) and fid in ids(new)
        assert seen.count() == before  # both misses: the revision moved
        assert fid not in ids(old) and fid in ids(new)
        assert seen.count() == before + 2  # cached again, under the new revision
    finally:
        assert requests.delete(f"{items}/{fid}", timeout=30).status_code == 204
    before = seen.count()
    assert fid not in ids(new) and seen.count() == before


def test_a_collection_id_moved_to_another_table_is_not_served_its_old_tiles(client, seen, pg_url):
    """The registry generation is read with the revision: a layer re-pointed or deleted
    through the store (by any process) is never answered from tiles of what it was."""
    store = PostgresStore(PostGISDatabase(pg_url, pool_min=0, pool_max=2))
    cid = "lean-moving"
    path = f"/collections/{cid}/tiles/{WMQ}/0/0/0"

    def features() -> int:
        return len(mapbox_vector_tile.decode(client.get(path).get_data())[cid]["features"])

    record = store.insert("layer", {"collection": cid, "source": "pg", "table": "big_countries"}, key=cid)
    try:
        few = features()
        before = seen.count()
        assert features() == few < 20 and seen.count() == before + 1
        store.update("layer", record.id, {"collection": cid, "source": "pg", "table": "countries"}, key=cid)
        assert features() > 100 and seen.count() == before + 1
    finally:
        store.delete("layer", record.id)
    assert client.get(path).status_code == 404 and seen.count() == before + 1
    store.db.close()


# -- protected mode ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def protected(pg_url: str, gpkg_path: Path) -> Iterator[tuple[Flask, Seen]]:
    """A master key (so every request is checked) and ``pg-countries`` readable only with a key."""
    config = server_config(pg_url, gpkg_path, free_port())
    config["auth"] = {"api_key": MASTER}
    config["collections"]["pg-countries"]["public"] = False
    with running_app(config) as app:
        yield app, Seen(app)


def test_protected_mode_serves_anonymous_callers_only_what_flask_would(protected):
    app, seen = protected
    client = app.test_client()
    private, public = tile_path("pg-countries", *PARIS, 5), tile_path("pg_l93", *PARIS, 5)
    for path in (private, public):  # cached by a request with the key
        assert client.get(path, headers={"API-Key": MASTER}).status_code == 200
    before = seen.count()
    # a key is always Flask's to check: the master key, a wrong one, one in the URL
    assert client.get(public, headers={"API-Key": MASTER}).status_code == 200
    assert client.get(public, headers={"Authorization": f"Bearer {MASTER}"}).status_code == 200
    assert client.get(public, headers={"X-API-Key": "0" * 32}).status_code == 401
    assert client.get(public + f"?api_key={'0' * 32}").status_code == 401
    assert seen.count() == before
    # anonymous: the cached private tile is not served, and Flask hides that it exists
    response = client.get(private)
    assert response.status_code == 404 and b"France" not in response.get_data()
    assert seen.count() == before
    # anonymous on a public collection: the lean path answers, as Flask does
    lean, flask = lean_and_flask(client, seen, public)
    assert lean == flask and lean[0] == 200


def test_rate_limits_keep_every_request_on_the_flask_path(pg_url, gpkg_path):
    config = config_of(pg_url, gpkg_path, auth={"rate_limit": {"anonymous": "100000/minute"}})
    with running_app(config) as app:
        assert not isinstance(app.wsgi_app, CachedTiles)
        client = app.test_client()
        path = tile_path("pg-countries", *PARIS, 3)
        for _ in range(3):
            response = client.get(path)
            assert response.status_code == 200 and "X-RateLimit-Remaining" in response.headers


def test_cors_rules():
    anyone = Cors(["*"])
    assert anyone.headers(None, "GET", None) == [
        ("Access-Control-Allow-Origin", "*"),
        ("Access-Control-Expose-Headers", EXPOSED),
    ]
    listed = Cors([ORIGIN])
    assert listed.headers("https://other.example", "GET", None) == []
    assert listed.headers(None, "GET", None) == []
    assert listed.headers(ORIGIN, "OPTIONS", "X-API-Key") == [
        ("Access-Control-Allow-Origin", ORIGIN),
        ("Vary", "Origin"),
        ("Access-Control-Expose-Headers", EXPOSED),
        ("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        ("Access-Control-Allow-Headers", "X-API-Key"),
    ]


# -- under gunicorn: the bytes on the wire -----------------------------------------------------------
def raw_get(base: str, path: str, headers: str = "") -> tuple[list[bytes], bytes]:
    """One HTTP/1.1 exchange on a socket: the status line and header lines (but Date), and the body."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")], body


def test_gunicorn_sends_the_same_bytes_from_both_paths(base):
    """The session server (2 workers, CORS for any origin): each worker has cached the tile
    after a few requests, then the plain request is the lean path's and ``f=mvt`` Flask's."""
    path = tile_path("pg-countries", *PARIS, 5)
    for _ in range(6):
        raw_get(base, path)
    for headers in ("", "Accept-Encoding: gzip\r\n", "Origin: https://a.example\r\n"):
        lean = raw_get(base, path, headers)
        assert lean == raw_get(base, path + "?f=mvt", headers), headers
        assert lean[0][0] == b"HTTP/1.1 200 OK" and b"Access-Control-Allow-Origin: *" in lean[0]
    etag = next(line for line in lean[0] if line.startswith(b"ETag: ")).removeprefix(b"ETag: ").decode()
    not_modified = raw_get(base, path, f"If-None-Match: {etag}\r\n")
    assert not_modified == raw_get(base, path + "?f=mvt", f"If-None-Match: {etag}\r\n")
    assert not_modified[0][0] == b"HTTP/1.1 304 NOT MODIFIED" and not_modified[1] == b""
