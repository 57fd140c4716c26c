"""OGC API - Tiles with Mapbox Vector Tiles, on both providers, through the HTTP API."""

from __future__ import annotations

import mapbox_vector_tile
import mercantile
import pytest
import requests

WMQ = "WebMercatorQuad"
PARIS = (2.35, 48.85)
SYDNEY = (151.2, -33.87)


def tile_of(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    t = mercantile.tile(lon, lat, z)
    return z, t.y, t.x


def get_tile(base: str, cid: str, z: int, y: int, x: int, tms: str = WMQ, **params) -> requests.Response:
    return requests.get(f"{base}/collections/{cid}/tiles/{tms}/{z}/{y}/{x}", params=params, timeout=60)


def vertices(coordinates):
    """Every (x, y) of a decoded MVT geometry's nested coordinate lists."""
    if isinstance(coordinates[0], (int, float)):
        yield coordinates
    else:
        for part in coordinates:
            yield from vertices(part)


def decode(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/vnd.mapbox-vector-tile"
    return mapbox_vector_tile.decode(response.content)


def test_tile_matrix_sets(base):
    listed = requests.get(f"{base}/tileMatrixSets", timeout=30).json()["tileMatrixSets"]
    assert {t["id"] for t in listed} >= {"WebMercatorQuad", "WorldCRS84Quad"}
    doc = requests.get(f"{base}/tileMatrixSets/WorldCRS84Quad", timeout=30).json()
    assert doc["id"] == "WorldCRS84Quad" and doc["tileMatrices"][0]["matrixWidth"] == 2
    assert requests.get(f"{base}/tileMatrixSets/Nope", timeout=30).status_code == 404


def test_tilesets_metadata(base, backend):
    cid = f"{backend}-countries"
    sets = requests.get(f"{base}/collections/{cid}/tiles", timeout=30).json()
    assert {s["tileMatrixSetURI"].rsplit("/", 1)[1] for s in sets["tilesets"]} >= {WMQ, "WorldCRS84Quad"}
    meta = requests.get(f"{base}/collections/{cid}/tiles/{WMQ}", timeout=30).json()
    assert meta["dataType"] == "vector" and meta["layers"][0]["id"] == cid
    assert "name" in meta["layers"][0]["propertiesSchema"]["properties"]
    z1 = next(limit for limit in meta["tileMatrixSetLimits"] if limit["tileMatrix"] == "1")
    assert (z1["minTileCol"], z1["maxTileCol"]) == (0, 1)
    rels = {link["rel"]: link for link in meta["links"]}
    assert rels["item"]["href"].endswith(
        f"/collections/{cid}/tiles/{WMQ}/{{tileMatrix}}/{{tileRow}}/{{tileCol}}"
    )
    assert rels["http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme"]["href"].endswith(
        f"/tileMatrixSets/{WMQ}"
    )
    collection = requests.get(f"{base}/collections/{cid}", timeout=30).json()
    assert any(link["rel"].endswith("tilesets-vector") for link in collection["links"])


def test_known_feature_in_its_tile_and_absent_far_away(base, backend):
    cid = f"{backend}-countries"
    tile = decode(get_tile(base, cid, *tile_of(*PARIS, 5)))
    layer = tile[cid]
    assert layer["extent"] == 4096
    names = {f["properties"]["name"] for f in layer["features"]}
    assert "France" in names
    far = decode(get_tile(base, cid, *tile_of(*SYDNEY, 5)))
    assert "France" not in {f["properties"]["name"] for f in far[cid]["features"]}
    assert "Australia" in {f["properties"]["name"] for f in far[cid]["features"]}
    for feature in layer["features"]:
        points = list(vertices(feature["geometry"]["coordinates"]))
        assert points and all(-64 <= x <= 4096 + 64 and -64 <= y <= 4096 + 64 for x, y in points)


def test_same_tile_from_both_providers(base):
    z, y, x = tile_of(*PARIS, 4)
    ids = {}
    for backend in ("pg", "gpkg"):
        cid = f"{backend}-countries"
        ids[backend] = sorted(f["id"] for f in decode(get_tile(base, cid, z, y, x))[cid]["features"])
    assert ids["pg"] == ids["gpkg"] and len(ids["pg"]) > 5


def test_properties_and_filter(base, backend):
    cid = f"{backend}-countries"
    z, y, x = tile_of(*PARIS, 4)
    only = decode(get_tile(base, cid, z, y, x, properties="name"))[cid]["features"]
    assert all(set(f["properties"]) == {"name"} for f in only)
    france = decode(get_tile(base, cid, z, y, x, filter="name = 'France'"))[cid]["features"]
    assert [f["properties"]["name"] for f in france] == ["France"]
    assert get_tile(base, cid, z, y, x, filter="nope = 1").status_code == 400
    assert get_tile(base, cid, z, y, x, properties="nope").status_code == 400


def test_world_crs84_quad(base, backend):
    cid = f"{backend}-countries"
    # WorldCRS84Quad z1 is 4 x 2 tiles; Paris is in column 2 (0..180 W-E from -180), row 0.
    tile = decode(get_tile(base, cid, 1, 0, 2, tms="WorldCRS84Quad"))
    assert "France" in {f["properties"]["name"] for f in tile[cid]["features"]}


@pytest.mark.parametrize("coords", [(30, 0, 0), (2, 4, 0), (2, 0, 4), (-1, 0, 0), ("a", 0, 0)])
def test_outside_the_matrix_is_404(base, backend, coords):
    response = get_tile(base, f"{backend}-countries", *coords)
    assert response.status_code == 404 and response.json()["code"]


def test_empty_tile_is_204(base, backend):
    z, y, x = tile_of(-140.0, -40.0, 10)  # South Pacific
    assert get_tile(base, f"{backend}-countries", z, y, x).status_code == 204


def test_gzip_only_when_asked_and_etag(base, backend):
    cid = f"{backend}-countries"
    z, y, x = tile_of(*PARIS, 3)
    plain = requests.get(
        f"{base}/collections/{cid}/tiles/{WMQ}/{z}/{y}/{x}",
        headers={"Accept-Encoding": "identity"},
        timeout=30,
    )
    assert "Content-Encoding" not in plain.headers
    zipped = requests.get(
        f"{base}/collections/{cid}/tiles/{WMQ}/{z}/{y}/{x}", headers={"Accept-Encoding": "gzip"}, timeout=30
    )
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.content == plain.content  # requests undid the gzip
    again = requests.get(plain.url, headers={"If-None-Match": plain.headers["ETag"]}, timeout=30)
    assert again.status_code == 304


def test_tilejson_and_composite_tiles(base, backend):
    cid = f"{backend}-countries"
    tj = requests.get(f"{base}/collections/{cid}/tiles/{WMQ}/tilejson.json", timeout=30).json()
    assert tj["tilejson"] == "3.0.0" and tj["vector_layers"][0]["id"] == cid
    assert tj["tiles"][0] == f"{base}/collections/{cid}/tiles/{WMQ}/{{z}}/{{y}}/{{x}}"
    both = f"{backend}-countries,{backend}.points"
    ctj = requests.get(f"{base}/tiles/{WMQ}/tilejson.json", params={"collections": both}, timeout=30).json()
    assert [v["id"] for v in ctj["vector_layers"]] == both.split(",")
    z, y, x = tile_of(*PARIS, 4)
    tile = decode(requests.get(f"{base}/tiles/{WMQ}/{z}/{y}/{x}", params={"collections": both}, timeout=30))
    assert set(tile) == set(both.split(","))
    assert (
        requests.get(
            f"{base}/tiles/{WMQ}/{z}/{y}/{x}", params={"collections": "nope"}, timeout=30
        ).status_code
        == 404
    )
    assert requests.get(f"{base}/tiles/{WMQ}/{z}/{y}/{x}", timeout=30).status_code == 400


def test_edit_is_seen_by_every_worker_and_unchanged_tiles_keep_their_etag(base, backend):
    """The server runs 2 gunicorn workers; each warms its own cache before the edit."""
    cid = f"{backend}.points"
    created = requests.post(
        f"{base}/collections/{cid}/items",
        headers={"Content-Type": "application/geo+json"},
        json={
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
            "properties": {"name": "Tile probe"},
        },
        timeout=30,
    )
    assert created.status_code == 201
    fid = created.json()["id"]
    old = tile_of(2.35, 48.85, 9)
    new = tile_of(13.4, 52.52, 9)
    far = tile_of(*SYDNEY, 9)

    def ids(tile_coords):
        response = get_tile(base, cid, *tile_coords)
        if response.status_code == 204:
            return set()
        return {f["id"] for f in decode(response)[cid]["features"]}

    far_etag = None
    for _ in range(8):  # several requests reach both workers and fill both caches
        assert fid in ids(old) and fid not in ids(new)
        far_response = get_tile(base, cid, *far)
        far_etag = far_response.headers["ETag"]
    moved = requests.patch(
        f"{base}/collections/{cid}/items/{fid}",
        headers={"Content-Type": "application/geo+json"},
        json={"geometry": {"type": "Point", "coordinates": [13.4, 52.52]}},
        timeout=30,
    )
    assert moved.status_code == 200
    for _ in range(8):
        assert fid not in ids(old) and fid in ids(new)
        unchanged = requests.get(
            f"{base}/collections/{cid}/tiles/{WMQ}/{far[0]}/{far[1]}/{far[2]}",
            headers={"If-None-Match": far_etag},
            timeout=30,
        )
        assert unchanged.status_code == 304
    assert requests.delete(f"{base}/collections/{cid}/items/{fid}", timeout=30).status_code == 204
    assert fid not in ids(new)


def test_abandoned_tile_query_is_cancelled_in_postgis(base, pg):
    """pg_slow takes about 9 s for a z0 tile; the client gives up after half a second."""
    import time

    with pytest.raises(requests.Timeout):
        requests.get(f"{base}/collections/pg_slow/tiles/{WMQ}/0/0/0", timeout=0.5)
    deadline = time.monotonic() + 3
    running = 1
    while time.monotonic() < deadline:
        running = pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%slow_countries%'"
            " AND pid <> pg_backend_pid()"
        ).fetchone()[0]
        if running == 0:
            break
        time.sleep(0.1)
    assert running == 0


def test_tile_attribute_types(base, backend):
    cid = f"{backend}-countries"
    features = decode(get_tile(base, cid, *tile_of(*PARIS, 5)))[cid]["features"]
    france = next(f for f in features if f["properties"]["name"] == "France")
    assert isinstance(france["properties"]["pop_est"], (int, float))
    assert isinstance(france["properties"]["gdp_md_est"], (int, float))
    assert france["properties"]["updated"].startswith("20")  # timestamps as ISO text


def test_tile_bytes_are_the_same_on_every_build(base, backend):
    """Workers cache their own copies: identical bytes keep one ETag whichever worker answers."""
    cid = f"{backend}-countries"
    z, y, x = tile_of(*PARIS, 2)
    etags = {get_tile(base, cid, z, y, x, properties="name,pop_est").headers["ETag"] for _ in range(6)}
    assert len(etags) == 1
