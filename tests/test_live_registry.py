"""Layers stored at run time are published by every worker at once, and unpublished too.

The layer records are written to the store the way any API writes them (the store
is the only thing workers share); the servers run under gunicorn with 2 workers,
so a request may land on a worker that did not see the write happen.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import mapbox_vector_tile
import psycopg
import pytest
import requests
from conftest import Server, _libpq, free_port

from providers.postgis import PostGISDatabase
from providers.store import PostgresStore, SQLiteStore, Store

ASKS = 8  # requests per check: with 2 workers, both answer some of them


def _collection_ids(base: str) -> set[str]:
    return {c["id"] for c in requests.get(f"{base}/collections", timeout=30).json()["collections"]}


def _seen_by_all(base: str, cid: str) -> bool:
    return all(cid in _collection_ids(base) for _ in range(ASKS))


def _gone_from_all(base: str, cid: str) -> bool:
    return all(cid not in _collection_ids(base) for _ in range(ASKS))


@pytest.fixture()
def pg_store(pg_url: str) -> Iterator[Store]:
    db = PostGISDatabase(pg_url, pool_min=0, pool_max=2)
    yield PostgresStore(db)
    db.close()


def test_postgres_layer_appears_and_disappears_on_every_worker(
    base: str, pg: psycopg.Connection, pg_store: Store
) -> None:
    pg.execute("DROP TABLE IF EXISTS live_africa")
    pg.execute(
        "CREATE TABLE live_africa AS SELECT id, name, pop_est, geom FROM countries WHERE continent = 'Africa'"
    )
    pg.execute("ALTER TABLE live_africa ADD PRIMARY KEY (id)")
    cid = "live-africa"
    assert cid not in _collection_ids(base)
    record = pg_store.insert(
        "layer", {"collection": cid, "source": "pg", "table": "live_africa", "title": "Africa"}, key=cid
    )
    try:
        assert _seen_by_all(base, cid)
        info = requests.get(f"{base}/collections/{cid}", timeout=30).json()
        assert info["title"] == "Africa"
        items = requests.get(f"{base}/collections/{cid}/items", params={"limit": 100}, timeout=30).json()
        expected = pg.execute("SELECT count(*) FROM live_africa").fetchone()[0]
        assert len(items["features"]) == expected > 40
        tile = requests.get(f"{base}/collections/{cid}/tiles/WebMercatorQuad/0/0/0", timeout=30)
        assert tile.status_code == 200
        assert len(mapbox_vector_tile.decode(tile.content)[cid]["features"]) == expected
        assert (
            f"/collections/{cid}/items" in requests.get(f"{base}/openapi?f=json", timeout=60).json()["paths"]
        )
    finally:
        pg_store.delete("layer", record.id)
    assert _gone_from_all(base, cid)
    for _ in range(ASKS):
        assert requests.get(f"{base}/collections/{cid}/items", timeout=30).status_code == 404
    pg.execute("DROP TABLE live_africa")


def test_a_collection_id_moved_to_another_table_never_serves_the_old_tiles(
    base: str, pg: psycopg.Connection, pg_store: Store
) -> None:
    """Tile caches follow the layers: warm tiles of the old table are not served for the new one."""
    cid = "live-moving"
    tile_url = f"{base}/collections/{cid}/tiles/WebMercatorQuad/0/0/0"
    first = pg_store.insert("layer", {"collection": cid, "source": "pg", "table": "big_countries"}, key=cid)
    try:
        for _ in range(ASKS):  # warm every worker's cache
            assert (
                len(mapbox_vector_tile.decode(requests.get(tile_url, timeout=30).content)[cid]["features"])
                < 20
            )
        pg_store.update("layer", first.id, {"collection": cid, "source": "pg", "table": "countries"}, key=cid)
        expected = pg.execute("SELECT count(*) FROM countries").fetchone()[0]
        for _ in range(ASKS):
            tile = mapbox_vector_tile.decode(requests.get(tile_url, timeout=30).content)
            assert len(tile[cid]["features"]) == expected
    finally:
        pg_store.delete("layer", first.id)
    for _ in range(ASKS):
        assert requests.get(tile_url, timeout=30).status_code == 404


def test_a_layer_over_a_missing_table_is_reported_not_fatal(base: str, pg_store: Store) -> None:
    cid = "live-missing"
    record = pg_store.insert("layer", {"collection": cid, "source": "pg", "table": "no_such_table"}, key=cid)
    try:
        health = requests.get(f"{base}/health", timeout=30).json()
        assert str(record.id) in health["store"]["unpublished_layers"]
        assert cid not in _collection_ids(base)
        assert requests.get(f"{base}/collections/pg-countries", timeout=30).status_code == 200
    finally:
        pg_store.delete("layer", record.id)


@pytest.fixture(scope="module")
def embedded(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """A server with no database: one GeoPackage, its records in a SQLite file beside it."""
    workdir = tmp_path_factory.mktemp("embedded")
    gpkg = workdir / "data.gpkg"
    for table in ("countries", "country_points"):
        subprocess.run(
            ["ogr2ogr", "-f", "GPKG", str(gpkg), f"PG:{_libpq(pg_url)}", table, "-nln", table]
            + (["-update"] if gpkg.exists() else []),
            check=True,
        )
    config = {
        "server": {"bind": f"127.0.0.1:{free_port()}", "workers": 2, "log_level": "WARNING"},
        # Only countries is published from the file; country_points waits to become a layer.
        "sources": {"files": {"type": "geopackage", "path": str(gpkg)}},
        "collections": {"countries": {"source": "files", "layer": "countries"}},
    }
    srv = Server(config, workdir)
    yield srv, workdir / "geoharbor-state.sqlite"
    srv.stop()


def test_embedded_layer_appears_and_disappears_on_every_worker(embedded: tuple[Server, Path]) -> None:
    srv, state_file = embedded
    assert state_file.exists(), "the embedded store is a SQLite file next to the GeoPackage"
    store = SQLiteStore(state_file)
    cid = "points"
    # The records collection of the catalogue is listed beside the feature collections.
    assert _collection_ids(srv.url) - {"catalogue"} == {"countries"}
    record = store.insert("layer", {"collection": cid, "source": "files", "layer": "country_points"}, key=cid)
    try:
        assert _seen_by_all(srv.url, cid)
        page = requests.get(f"{srv.url}/collections/{cid}/items", params={"limit": 5}, timeout=30).json()
        assert len(page["features"]) == 5 and page["features"][0]["geometry"]["type"] == "Point"
    finally:
        store.delete("layer", record.id)
        store.close()
    assert _gone_from_all(srv.url, cid)


def test_embedded_rest_table_is_published_and_recorded_in_sqlite(embedded: tuple[Server, Path]) -> None:
    """With no database, a table created through REST lands in the GeoPackage and its layer in SQLite."""
    srv, state_file = embedded
    rest = f"{srv.url}/rest/1"
    created = requests.post(
        f"{rest}/tables.json",
        json={"name": "visits", "geometry": "POINT", "columns": {"label": {"type": "text"}}},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    try:
        assert _seen_by_all(srv.url, "visits")
        row = requests.post(
            f"{rest}/tables/visits/rows.json",
            json={"data": {"label": "harbour"}, "geometry": "POINT(4.4 51.2)"},
            timeout=30,
        )
        assert row.status_code == 201, row.text
        items = requests.get(f"{srv.url}/collections/visits/items", timeout=30).json()
        assert [f["properties"]["label"] for f in items["features"]] == ["harbour"]
        assert items["features"][0]["geometry"]["coordinates"] == [4.4, 51.2]
        store = SQLiteStore(state_file)
        assert [r.key for r in store.list("layer")] == ["visits"]
        store.close()
    finally:
        assert requests.delete(f"{rest}/tables/visits.json", timeout=30).status_code == 204
    assert _gone_from_all(srv.url, "visits")
