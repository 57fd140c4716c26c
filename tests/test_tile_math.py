"""Tile matrix sets and tile maths (providers.tiles), checked against independent values.

Expected numbers come from mercantile (for WebMercatorQuad), from the OGC TMS 2.0
registry's published definitions, or from plain arithmetic on the grid, never from the
module under test itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random

import mercantile
import numpy as np
import pytest

from providers.crs import CRS84_URI
from providers.errors import NotFound
from providers.tiles import (
    TILE_MATRIX_SETS,
    WEB_MERCATOR_QUAD,
    WORLD_CRS84_QUAD,
    TileMatrixSet,
    get_tms,
)

B = 20037508.3427892  # half the web mercator world, as the OGC registry writes it
WMQ = WEB_MERCATOR_QUAD
CRS84Q = WORLD_CRS84_QUAD


def _close(a: tuple[float, ...], b: tuple[float, ...], tol: float = 1e-6) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-12, abs_tol=tol) for x, y in zip(a, b, strict=True)
    )


# -- the two sets ------------------------------------------------------------------------------
def test_registry() -> None:
    assert set(TILE_MATRIX_SETS) == {"WebMercatorQuad", "WorldCRS84Quad"}
    assert get_tms("WebMercatorQuad") is WMQ
    assert get_tms("WorldCRS84Quad") is CRS84Q
    assert get_tms("http://www.opengis.net/def/tilematrixset/OGC/1.0/WorldCRS84Quad") is CRS84Q
    for unknown in ("webmercatorquad", "GoogleMapsCompatible", "", "WorldCRS84Quad/0"):
        with pytest.raises(NotFound):
            get_tms(unknown)


def test_definitions() -> None:
    assert WMQ.uri == "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad"
    assert WMQ.crs.srid == 3857 and not WMQ.crs.lat_first
    assert WMQ.crs.uri == "http://www.opengis.net/def/crs/EPSG/0/3857"
    assert _close(WMQ.bounds, (-B, -B, B, B), tol=1e-6)
    assert (WMQ.matrix_width_at_0, WMQ.max_zoom) == (1, 24)
    assert CRS84Q.uri == "http://www.opengis.net/def/tilematrixset/OGC/1.0/WorldCRS84Quad"
    assert CRS84Q.crs.uri == CRS84_URI and CRS84Q.crs.is_crs84
    assert CRS84Q.bounds == (-180.0, -90.0, 180.0, 90.0)
    assert (CRS84Q.matrix_width_at_0, CRS84Q.max_zoom) == (2, 23)
    with pytest.raises(dataclasses.FrozenInstanceError):
        WMQ.max_zoom = 30  # type: ignore[misc]
    assert isinstance(WMQ, TileMatrixSet)


# -- matrices and bounds -------------------------------------------------------------------------
def test_matrix_sizes() -> None:
    assert WMQ.matrix_size(0) == (1, 1)
    assert WMQ.matrix_size(1) == (2, 2)
    assert WMQ.matrix_size(24) == (2**24, 2**24)
    assert CRS84Q.matrix_size(0) == (2, 1)
    assert CRS84Q.matrix_size(1) == (4, 2)
    assert CRS84Q.matrix_size(23) == (2**24, 2**23)


def test_web_mercator_bounds() -> None:
    assert _close(WMQ.tile_bounds(0, 0, 0), (-B, -B, B, B))
    # Zoom 1: row 0 is the northern half.
    assert _close(WMQ.tile_bounds(1, 0, 0), (-B, 0, 0, B))
    assert _close(WMQ.tile_bounds(1, 1, 0), (0, 0, B, B))
    assert _close(WMQ.tile_bounds(1, 0, 1), (-B, -B, 0, 0))
    assert _close(WMQ.tile_bounds(1, 1, 1), (0, -B, B, 0))


def test_web_mercator_agrees_with_mercantile() -> None:
    rng = random.Random(7)
    for _ in range(200):
        z = rng.randint(0, 24)
        x, y = rng.randrange(2**z), rng.randrange(2**z)
        box = mercantile.xy_bounds(x, y, z)
        assert _close(WMQ.tile_bounds(z, x, y), (box.left, box.bottom, box.right, box.top), tol=1e-6)


def test_world_crs84_bounds() -> None:
    # Two tiles at zoom 0, x = 0 the western one.
    assert CRS84Q.tile_bounds(0, 0, 0) == (-180.0, -90.0, 0.0, 90.0)
    assert CRS84Q.tile_bounds(0, 1, 0) == (0.0, -90.0, 180.0, 90.0)
    # Zoom 1: 4 x 2 tiles of 90 degrees, row 0 north.
    assert CRS84Q.tile_bounds(1, 0, 0) == (-180.0, 0.0, -90.0, 90.0)
    assert CRS84Q.tile_bounds(1, 3, 1) == (90.0, -90.0, 180.0, 0.0)
    assert CRS84Q.tile_bounds(1, 2, 0) == (0.0, 0.0, 90.0, 90.0)
    # Zoom 10: 2048 x 1024 tiles of 180/1024 degrees.
    span = 180 / 1024
    assert _close(
        CRS84Q.tile_bounds(10, 1034, 211),
        (-180 + 1034 * span, 90 - 212 * span, -180 + 1035 * span, 90 - 211 * span),
    )


def test_known_city() -> None:
    # Paris: mercantile says tile 518/352 at zoom 10.
    assert mercantile.tile(2.35, 48.85, 10) == mercantile.Tile(518, 352, 10)
    assert WMQ.tile_containing(10, *mercantile.xy(2.35, 48.85)) == (518, 352)
    assert WMQ.tile_limits(10, (2.35, 48.85, 2.35, 48.85)) == (518, 518, 352, 352)
    minx, miny, maxx, maxy = WMQ.tile_bounds(10, 518, 352)
    x, y = mercantile.xy(2.35, 48.85)
    assert minx <= x < maxx and miny < y <= maxy
    # In CRS84 degrees: column floor((2.35 + 180) / span), row floor((90 - 48.85) / span).
    span = 180 / 2**10
    expected = (math.floor(182.35 / span), math.floor(41.15 / span))
    assert CRS84Q.tile_containing(10, 2.35, 48.85) == expected
    assert CRS84Q.tile_limits(10, (2.35, 48.85, 2.35, 48.85)) == (
        expected[0],
        expected[0],
        expected[1],
        expected[1],
    )


@pytest.mark.parametrize(
    ("tms", "z", "x", "y"),
    [
        (WMQ, -1, 0, 0),
        (WMQ, 25, 0, 0),
        (WMQ, 0, 1, 0),
        (WMQ, 0, 0, 1),
        (WMQ, 3, 8, 0),
        (WMQ, 3, 0, -1),
        (CRS84Q, 0, 2, 0),
        (CRS84Q, 0, 0, 1),
        (CRS84Q, 1, 3, 2),
        (CRS84Q, 24, 0, 0),
        (WMQ, True, 0, 0),
        (WMQ, 1.0, 0, 0),
        (WMQ, 1, "0", 0),
        (WMQ, 1, 0, None),
    ],
)
def test_out_of_range_is_not_found(tms: TileMatrixSet, z, x, y) -> None:
    with pytest.raises(NotFound):
        tms.check(z, x, y)
    with pytest.raises(NotFound):
        tms.tile_bounds(z, x, y)


def test_edges_are_in_range() -> None:
    WMQ.check(24, 2**24 - 1, 2**24 - 1)
    CRS84Q.check(23, 2**24 - 1, 2**23 - 1)
    CRS84Q.check(0, 1, 0)
    WMQ.check(np.int64(3), np.int64(7), np.int32(7))  # numpy integers are integers
    with pytest.raises(NotFound):
        WMQ.matrix_size(25)
    with pytest.raises(NotFound):
        CRS84Q.resolution(-1)


# -- limits of a bbox ----------------------------------------------------------------------------
def test_tile_limits_world() -> None:
    world = (-180.0, -90.0, 180.0, 90.0)
    assert WMQ.tile_limits(0, world) == (0, 0, 0, 0)
    assert WMQ.tile_limits(3, world) == (0, 7, 0, 7)  # latitudes clamped to web mercator's
    assert CRS84Q.tile_limits(0, world) == (0, 1, 0, 0)
    assert CRS84Q.tile_limits(1, world) == (0, 3, 0, 1)


def test_tile_limits_match_mercantile() -> None:
    for bbox in [
        (-10.0, 35.0, 30.0, 60.0),
        (2.2, 48.8, 2.5, 48.9),
        (-125.0, 24.0, -66.0, 50.0),
        (100, -45, 180, -10),
    ]:
        for z in (0, 2, 5, 9, 12):
            tiles = list(mercantile.tiles(*bbox, zooms=z))
            xs, ys = [t.x for t in tiles], [t.y for t in tiles]
            assert WMQ.tile_limits(z, bbox) == (min(xs), max(xs), min(ys), max(ys)), (bbox, z)


def test_tile_limits_edges() -> None:
    # A bbox ending on a tile edge does not reach into the next tile.
    assert CRS84Q.tile_limits(1, (-180.0, 0.0, -90.0, 90.0)) == (0, 0, 0, 0)
    assert CRS84Q.tile_limits(1, (-10.0, 10.0, 0.0, 20.0)) == (1, 1, 0, 0)
    assert WMQ.tile_limits(1, (-10.0, 10.0, 0.0, 20.0)) == (0, 0, 0, 0)
    # Beyond web mercator's latitude: clamped to the first / last row.
    assert WMQ.tile_limits(4, (0.0, 86.0, 1.0, 89.0)) == (8, 8, 0, 0)
    assert WMQ.tile_limits(4, (0.0, -89.0, 1.0, -86.0)) == (8, 8, 15, 15)
    # Crossing the antimeridian: one column range cannot say it, so the full width.
    assert CRS84Q.tile_limits(2, (170.0, -20.0, -170.0, 10.0)) == (0, 7, 1, 2)
    with pytest.raises(ValueError):
        WMQ.tile_limits(1, (0.0, 10.0, 1.0, 5.0))
    with pytest.raises(ValueError):
        WMQ.tile_limits(1, (0.0, float("nan"), 1.0, 5.0))


# -- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("tms", [WMQ, CRS84Q], ids=lambda t: t.id)
def test_round_trip_centre(tms: TileMatrixSet) -> None:
    rng = random.Random(11)
    for _ in range(300):
        z = rng.randint(0, tms.max_zoom)
        cols, rows = tms.matrix_size(z)
        x, y = rng.randrange(cols), rng.randrange(rows)
        minx, miny, maxx, maxy = tms.tile_bounds(z, x, y)
        cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
        assert tms.tile_containing(z, cx, cy) == (x, y)
        lon, lat = (cx, cy) if tms.crs.srid == 4326 else mercantile.lnglat(cx, cy)
        assert tms.tile_limits(z, (lon, lat, lon, lat)) == (x, x, y, y)


def test_neighbours_share_edges() -> None:
    for tms in (WMQ, CRS84Q):
        a = tms.tile_bounds(6, 10, 20)
        assert a[2] == tms.tile_bounds(6, 11, 20)[0]
        assert a[1] == tms.tile_bounds(6, 10, 21)[3]


# -- resolution and the OGC document -------------------------------------------------------------
def test_resolution() -> None:
    assert math.isclose(WMQ.resolution(0), 156543.03392804097, rel_tol=1e-12)
    assert math.isclose(WMQ.resolution(12), 156543.03392804097 / 4096, rel_tol=1e-12)
    assert CRS84Q.resolution(0) == 0.703125
    assert CRS84Q.resolution(5) == 0.703125 / 32


@pytest.mark.parametrize(
    ("tms", "count", "scale0", "axes"),
    [(WMQ, 25, 559082264.028717, ["X", "Y"]), (CRS84Q, 24, 279541132.014358, ["Lon", "Lat"])],
    ids=["WebMercatorQuad", "WorldCRS84Quad"],
)
def test_document(tms: TileMatrixSet, count: int, scale0: float, axes: list[str]) -> None:
    doc = json.loads(json.dumps(tms.document()))  # plain JSON
    assert doc["id"] == tms.id
    assert doc["uri"] == tms.uri
    assert doc["crs"] == tms.crs.uri
    assert doc["orderedAxes"] == axes
    assert isinstance(doc["title"], str) and doc["title"]
    matrices = doc["tileMatrices"]
    assert [m["id"] for m in matrices] == [str(z) for z in range(count)]
    assert math.isclose(matrices[0]["scaleDenominator"], scale0, rel_tol=1e-12)
    for z, m in enumerate(matrices):
        assert m["cornerOfOrigin"] == "topLeft"
        assert m["pointOfOrigin"] == [tms.bounds[0], tms.bounds[3]]
        assert m["tileWidth"] == m["tileHeight"] == 256
        assert (m["matrixWidth"], m["matrixHeight"]) == tms.matrix_size(z)
        assert math.isclose(m["cellSize"], tms.resolution(z), rel_tol=1e-12)
        # 0.28 mm pixels: the scale is the cell size in metres over 0.00028.
        metres = m["cellSize"] * (2 * math.pi * 6378137 / 360 if tms.crs.srid == 4326 else 1)
        assert math.isclose(m["scaleDenominator"], metres / 0.00028, rel_tol=1e-12)
        if z:
            assert math.isclose(m["cellSize"] * 2, matrices[z - 1]["cellSize"], rel_tol=1e-12)
        # The matrix covers the set's bounds exactly.
        assert math.isclose(
            m["matrixWidth"] * 256 * m["cellSize"], tms.bounds[2] - tms.bounds[0], rel_tol=1e-12
        )


def test_documents_match_the_ogc_registry() -> None:
    """Spot values from the OGC 2D-TMS registry's WebMercatorQuad.json and WorldCRS84Quad.json."""
    wmq = WMQ.document()["tileMatrices"]
    assert math.isclose(wmq[12]["cellSize"], 38.2185141425881, rel_tol=1e-12)
    assert math.isclose(wmq[24]["scaleDenominator"], 33.3238997476528, rel_tol=1e-12)
    assert _close(tuple(wmq[0]["pointOfOrigin"]), (-B, B), tol=1e-6)
    crs84 = CRS84Q.document()["tileMatrices"]
    assert math.isclose(crs84[23]["cellSize"], 0.00000008381903171539, rel_tol=1e-12)
    assert math.isclose(crs84[10]["scaleDenominator"], 272989.386732772, rel_tol=1e-12)
    assert (crs84[23]["matrixWidth"], crs84[23]["matrixHeight"]) == (16777216, 8388608)
