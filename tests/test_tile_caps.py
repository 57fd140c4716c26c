"""Tiles capped at ``max_features`` keep the lowest ids, whatever plan PostgreSQL runs.

A tile that may hold many rows is sent to PostgreSQL unprepared (its plan sees the
envelope); an ordinary tile runs a prepared statement that soon gets a generic plan.
Either way the rows kept are the ``max_features`` lowest ids, so every build of a
tile, on every worker, has the same bytes and ETag. The table here is written in an
order unrelated to its ids, so a plan that returned rows in storage or index order
without sorting them would keep other features.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

import mapbox_vector_tile
import mercantile
import psycopg
import pytest
import requests
from psycopg import sql

from providers.postgis import PostGISDatabase
from providers.store import PostgresStore

WMQ = "WebMercatorQuad"
CAP = 40
#: A z12 tile holding a dense cluster of points, far from the evenly spread ones.
CLUSTER_TILE = mercantile.tile(2.35, 48.85, 12)


def _points() -> list[tuple[int, float, float]]:
    """(id, lon, lat): 600 points on a grid (one or two per z12 tile) and 300 in one z12 tile."""
    spread = [(0.0 + 0.2 * (i % 30), 44.0 + 0.2 * (i // 30)) for i in range(600)]
    west, south, east, north = mercantile.bounds(CLUSTER_TILE)
    rng = random.Random(7)
    cluster = [
        (west + (east - west) * rng.uniform(0.3, 0.7), south + (north - south) * rng.uniform(0.3, 0.7))
        for _ in range(300)
    ]
    ids = list(range(1, 901))
    rng.shuffle(ids)  # rows are stored in this order: neither id order nor spatial order
    return [(fid, lon, lat) for fid, (lon, lat) in zip(ids, spread + cluster, strict=True)]


@pytest.fixture(scope="module")
def capped(pg_url: str) -> Iterator[tuple[str, list[tuple[int, float, float]]]]:
    """A run-time layer over a fresh table, its tiles capped at CAP features."""
    suffix = uuid.uuid4().hex[:10]
    table, cid = f"capped_{suffix}", f"capped-{suffix}"
    points = _points()
    ident = sql.Identifier(table)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        create = "CREATE TABLE {} (id integer PRIMARY KEY, name text, geom geometry(Point, 4326))"
        conn.execute(sql.SQL(create).format(ident))
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {} VALUES (%s, %s, ST_Point(%s, %s, 4326))").format(ident),
                [(fid, f"p{fid}", lon, lat) for fid, lon, lat in points],
            )
        conn.execute(sql.SQL("CREATE INDEX ON {} USING gist (geom)").format(ident))
        conn.execute(sql.SQL("ANALYZE {}").format(ident))  # the row count the server judges a tile's size by
    db = PostGISDatabase(pg_url, pool_min=0, pool_max=1)
    store = PostgresStore(db)
    record = store.insert(
        "layer",
        {"collection": cid, "source": "pg", "table": table, "tiles": {"max_features": CAP}},
        key=cid,
    )
    try:
        yield cid, points
    finally:
        store.delete("layer", record.id)
        db.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))


def _tile(base: str, cid: str, z: int, x: int, y: int) -> requests.Response:
    return requests.get(f"{base}/collections/{cid}/tiles/{WMQ}/{z}/{y}/{x}", timeout=60)


def _ids(response: requests.Response, cid: str) -> list[int]:
    assert response.status_code == 200, response.text
    return sorted(f["id"] for f in mapbox_vector_tile.decode(response.content)[cid]["features"])


def _inside(points: list[tuple[int, float, float]], tile: mercantile.Tile) -> list[int]:
    """Ids of the points in a tile plus its buffer (64 of 4096 units, the default)."""
    box = mercantile.xy_bounds(tile)
    margin = (box.right - box.left) * 64 / 4096
    west, south = mercantile.lnglat(box.left - margin, box.bottom - margin)
    east, north = mercantile.lnglat(box.right + margin, box.top + margin)
    return sorted(fid for fid, lon, lat in points if west < lon < east and south < lat < north)


def test_a_big_capped_tile_keeps_the_lowest_ids(base: str, capped) -> None:
    """z0 holds all 900 points, so the server sends its statement unprepared."""
    cid, _ = capped
    responses = [_tile(base, cid, 0, 0, 0) for _ in range(6)]  # both workers answer some
    assert _ids(responses[0], cid) == list(range(1, CAP + 1))
    assert len({r.headers["ETag"] for r in responses}) == 1


def test_a_dense_tile_of_a_sparse_layer_keeps_the_lowest_ids(base: str, capped) -> None:
    """The cluster's tile looks small to the server (1/5,000 of the extent) but holds 300 points.

    Spread tiles first, so the prepared tile statement has run often enough on the
    workers' connections for PostgreSQL to plan it generically.
    """
    cid, points = capped
    for _, lon, lat in points[:600:20]:  # 30 of the evenly spread points
        spread = mercantile.tile(lon, lat, 12)
        assert _ids(_tile(base, cid, 12, spread.x, spread.y), cid) == _inside(points, spread)
    inside = _inside(points, CLUSTER_TILE)
    assert len(inside) == 300
    responses = [_tile(base, cid, 12, CLUSTER_TILE.x, CLUSTER_TILE.y) for _ in range(6)]
    assert _ids(responses[0], cid) == inside[:CAP]
    assert len({r.headers["ETag"] for r in responses}) == 1


def test_a_column_name_with_a_percent_sign(base: str, pg_url: str) -> None:
    """Tile statements are templates with %(name)s placeholders: a '%' in a name stays a '%'."""
    suffix = uuid.uuid4().hex[:10]
    table, cid = f"pct_{suffix}", f"pct-{suffix}"
    ident = sql.Identifier(table)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                'CREATE TABLE {} (id integer PRIMARY KEY, "share%" integer, geom geometry(Point, 4326))'
            ).format(ident)
        )
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 42, ST_Point(2.35, 48.85, 4326))").format(ident))
    db = PostGISDatabase(pg_url, pool_min=0, pool_max=1)
    store = PostgresStore(db)
    record = store.insert("layer", {"collection": cid, "source": "pg", "table": table}, key=cid)
    try:
        answer = _tile(base, cid, 0, 0, 0)
        assert answer.status_code == 200, answer.text
        features = mapbox_vector_tile.decode(answer.content)[cid]["features"]
        assert [f["properties"] for f in features] == [{"share%": 42}]
    finally:
        store.delete("layer", record.id)
        db.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
