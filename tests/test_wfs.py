"""Remote WFS layers republished as collections: MapServer's real WFS on loopback, geoharbor in front.

MapServer (Debian's ``mapserv``, :mod:`wfs_server`) serves the tests' PostGIS tables
of Natural Earth countries over WFS 2.0.0 and 1.1.0. Two geoharbor servers share one
SQLite store, as two hosts would: a layer registered through one (``POST
/datasets/ogc``) is published by the other at once. What geoharbor answers is checked
against the PostGIS table MapServer reads, with SQL.

The second server has short time limits and a circuit breaker that opens after three
failures; the fault tests point it at a second MapServer that misbehaves on demand
(slow, OWS ExceptionReport, garbage, down).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mapbox_vector_tile
import mercantile
import psycopg
import pytest
import requests
from conftest import ROOT, Server, _libpq, free_port
from wfs_server import MapServerWFS

from server.config import load

KEY = "wfs-tests-master-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}
TIMEOUT = 30
#: The fault server's time limit per remote request (seconds).
REMOTE_TIMEOUT = 1.5
EUROPE = (-5.0, 41.0, 10.0, 52.0)


@pytest.fixture(scope="module")
def remote(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MapServerWFS]:
    wfs = MapServerWFS(tmp_path_factory.mktemp("mapserver"), free_port(), _libpq(pg_url))
    yield wfs
    wfs.stop()


@pytest.fixture(scope="module")
def faulty(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MapServerWFS]:
    wfs = MapServerWFS(tmp_path_factory.mktemp("mapserver-faulty"), free_port(), _libpq(pg_url))
    yield wfs
    wfs.stop()


def _config(port: int, state: Path, gpkg_path: Path, remote: MapServerWFS, **wfs: Any) -> dict[str, Any]:
    return {
        "server": {"bind": f"127.0.0.1:{port}", "workers": 2, "threads": 4, "log_level": "INFO"},
        "auth": {"api_key": KEY},
        "sources": {
            "gpkg": {"type": "geopackage", "path": str(gpkg_path)},
            "mapserver": {"type": "wfs", "url": remote.url, "version": "2.0.0"},
        },
        "store": {"path": str(state / "geoharbor-state.sqlite")},
        "wfs": wfs,
        "collections": {
            "gpkg-countries": {"source": "gpkg", "layer": "countries"},
            # declared in the configuration: described when the server starts
            "configured_points": {"source": "mapserver", "layer": "country_points", "title": "Points"},
        },
    }


@pytest.fixture(scope="module")
def servers(
    gpkg_path: Path, remote: MapServerWFS, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    """Two geoharbor servers on one store: ``main`` and ``fragile`` (short time limits, one worker)."""
    state = tmp_path_factory.mktemp("wfs-state")
    main = Server(
        _config(free_port(), state, gpkg_path, remote, timeout_s=10, retries=1),
        tmp_path_factory.mktemp("wfs-main"),
    )
    fragile_config = _config(
        free_port(),
        state,
        gpkg_path,
        remote,
        timeout_s=REMOTE_TIMEOUT,
        deadline_s=3,
        retries=1,
        backoff_s=0.05,
        failures=3,
        reset_s=2,
    )
    fragile_config["server"]["workers"] = 1
    try:
        fragile = Server(fragile_config, tmp_path_factory.mktemp("wfs-fragile"))
    except BaseException:
        main.stop()
        raise
    yield main, fragile
    fragile.stop()
    main.stop()


@pytest.fixture(scope="module")
def main(servers: tuple[Server, Server]) -> str:
    return servers[0].url


@pytest.fixture(scope="module")
def fragile(servers: tuple[Server, Server]) -> str:
    return servers[1].url


def _register(base: str, body: dict[str, Any], expect: int = 201) -> dict[str, Any]:
    response = requests.post(f"{base}/datasets/ogc", json=body, headers=AUTH, timeout=TIMEOUT)
    assert response.status_code == expect, response.text
    return response.json()


@pytest.fixture(scope="module")
def layers(main: str, remote: MapServerWFS, faulty: MapServerWFS) -> dict[str, str]:
    """Remote layers registered through the main server: their collection ids."""
    out = {}
    for key, body in {
        "countries": {
            "url": remote.url,
            "service_type": "WFS",
            "layer_name": "countries",
            "name": "NE Countries",
        },
        "points": {"url": remote.url, "layer_name": "ms:country_points", "name": "NE points"},
        "countries11": {"url": remote.url, "layer_name": "countries", "name": "NE 1.1", "version": "1.1.0"},
        "faulty": {"url": faulty.url, "layer_name": "countries", "collection": "faulty_countries"},
    }.items():
        out[key] = _register(main, body)["collection"]
    return out


def _get(base: str, path: str, **params: Any) -> requests.Response:
    return requests.get(f"{base}{path}", params=params, headers=AUTH, timeout=TIMEOUT)


def _items(base: str, cid: str, **params: Any) -> tuple[requests.Response, dict[str, Any]]:
    response = _get(base, f"/collections/{cid}/items", **params)
    assert response.status_code == 200, response.text
    return response, response.json()


def _ids(doc: dict[str, Any]) -> list[int]:
    return [f["properties"]["id"] for f in doc["features"]]


def _sql(pg_url: str, query: str, *params: Any) -> list[tuple]:
    with psycopg.connect(pg_url) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


# -- registration --------------------------------------------------------------------------------------
def test_registration_publishes_everywhere_at_once(
    main: str, fragile: str, layers: dict[str, str], remote: MapServerWFS
) -> None:
    """Registered through one server, the layer is a collection on the other host (one store) too."""
    cid = layers["countries"]
    assert cid == "ne_countries"
    for base in (main, fragile):
        for _ in range(3):  # either worker of the main server
            response = _get(base, f"/collections/{cid}")
            assert response.status_code == 200, response.text
            doc = response.json()
            assert doc["title"] == "NE Countries"
            assert doc["extent"]["spatial"]["bbox"][0] == pytest.approx([-180, -90, 180, 83.64513], abs=1e-4)
    queryables = _get(main, f"/collections/{cid}/queryables").json()
    assert {"name", "pop_est", "continent", "iso_a3", "updated"} <= set(queryables["properties"])
    openapi = _get(main, "/openapi").json()
    assert f"/collections/{cid}/items" in openapi["paths"] and "/datasets/ogc" in openapi["paths"]
    csv = _get(main, f"/collections/{cid}/items", f="csv", limit=2, sortby="name")
    assert csv.status_code == 200 and csv.text.splitlines()[0].startswith("gml_id,")
    # listed as a layer record, like the layers the REST API creates
    layer_ids = [la["collection"] for la in _get(main, "/rest/1/layers.json").json()["data"]]
    assert cid in layer_ids


def test_registration_refuses_bad_requests(main: str, remote: MapServerWFS, layers: dict[str, str]) -> None:
    body = {"url": remote.url, "layer_name": "countries", "name": "x"}
    anonymous = requests.post(f"{main}/datasets/ogc", json=body, timeout=TIMEOUT)
    assert anonymous.status_code == 401
    for bad, status, words in (
        ({**body, "url": "file:///etc/passwd"}, 422, "http"),
        ({**body, "url": "ftp://127.0.0.1/wfs"}, 422, "http"),
        ({**body, "url": "http://user:secret@127.0.0.1/wfs"}, 422, "credentials"),
        ({**body, "service_type": "WMS"}, 422, "service_type"),
        ({**body, "layer_name": "no_such_layer"}, 422, "no feature type"),
        ({**body, "collection": layers["countries"]}, 409, "already exists"),
        ({**body, "url": f"http://127.0.0.1:{free_port()}/wfs"}, 502, "cannot reach"),
    ):
        response = requests.post(f"{main}/datasets/ogc", json=bad, headers=AUTH, timeout=TIMEOUT)
        assert response.status_code == status, (bad, response.text)
        assert words in response.json()["detail"]


def test_unregistering_unpublishes_everywhere(main: str, fragile: str, remote: MapServerWFS) -> None:
    made = _register(main, {"url": remote.url, "layer_name": "country_points", "collection": "short_lived"})
    assert _get(fragile, "/collections/short_lived").status_code == 200
    deleted = requests.delete(f"{main}/rest/1/layers/{made['id']}.json", headers=AUTH, timeout=TIMEOUT)
    assert deleted.status_code in (200, 204), deleted.text
    for base in (main, fragile):
        assert _get(base, "/collections/short_lived/items").status_code == 404


# -- items against the table MapServer reads ---------------------------------------------------------
def test_paging_and_count_match_the_table(main: str, pg_url: str, layers: dict[str, str]) -> None:
    cid = layers["countries"]
    # MapServer sorts PostGIS columns as text: sorted by name, the order is the same in SQL
    expected = [r[0] for r in _sql(pg_url, "SELECT id FROM countries ORDER BY name LIMIT 10 OFFSET 20")]
    response, doc = _items(main, cid, limit=10, offset=20, sortby="name")
    assert _ids(doc) == expected
    assert doc["numberMatched"] == _sql(pg_url, "SELECT count(*) FROM countries")[0][0] == 177
    assert doc["features"][0]["id"] == f"countries.{expected[0]}"
    assert any(link["rel"] == "next" for link in doc["links"])
    # descending, by a text property
    names = [r[0] for r in _sql(pg_url, "SELECT name FROM countries ORDER BY name DESC LIMIT 5")]
    _, doc = _items(main, cid, limit=5, sortby="-name")
    assert [f["properties"]["name"] for f in doc["features"]] == names


def test_bbox_and_filters_match_the_table(main: str, pg_url: str, layers: dict[str, str]) -> None:
    cid = layers["countries"]
    box = ",".join(str(v) for v in EUROPE)
    in_box = {
        r[0]
        for r in _sql(
            pg_url,
            "SELECT id FROM countries WHERE ST_Intersects(geom, ST_MakeEnvelope(%s, %s, %s, %s, 4326))",
            *EUROPE,
        )
    }
    response, doc = _items(main, cid, bbox=box, limit=100)
    assert set(_ids(doc)) == in_box and doc["numberMatched"] == len(in_box)
    assert response.headers["X-Geoharbor-Filter"] == "remote"

    # all of it runs on the remote (FES): comparison, LIKE, IN
    text = "pop_est > 50000000 AND continent = 'Asia' AND (name LIKE 'I%' OR iso_a3 IN ('CHN', 'JPN'))"
    expected = {
        r[0]
        for r in _sql(
            pg_url,
            "SELECT id FROM countries WHERE pop_est > 50000000 AND continent = 'Asia' "
            "AND (name LIKE 'I%%' OR iso_a3 IN ('CHN', 'JPN'))",
        )
    }
    response, doc = _items(main, cid, filter=text, limit=100)
    assert set(_ids(doc)) == expected and len(expected) >= 4
    assert response.headers["X-Geoharbor-Filter"] == "remote"

    # CASEI is not FES: that part is applied here, the rest still on the remote
    response, doc = _items(main, cid, filter="CASEI(continent) = 'europe' AND pop_est < 5000000", limit=100)
    expected = {
        r[0]
        for r in _sql(
            pg_url, "SELECT id FROM countries WHERE lower(continent) = 'europe' AND pop_est < 5000000"
        )
    }
    assert set(_ids(doc)) == expected and len(expected) >= 5
    assert doc["numberMatched"] == len(expected)
    assert response.headers["X-Geoharbor-Filter"] == "client"

    # property equality, and unknown properties refused before anything is sent
    _, doc = _items(main, cid, iso_a3="DEU")
    assert [f["properties"]["name"] for f in doc["features"]] == ["Germany"]
    bad = _get(main, f"/collections/{cid}/items", filter="no_such = 1")
    assert bad.status_code == 400 and bad.json()["code"] == "InvalidParameterValue"


def test_spatial_filter_and_crs(main: str, pg_url: str, layers: dict[str, str]) -> None:
    cid = layers["points"]
    polygon = "POLYGON((-5 41, 10 41, 10 52, -5 52, -5 41))"
    expected = {
        r[0]: (r[1], r[2])
        for r in _sql(
            pg_url,
            "SELECT id, ST_X(geom), ST_Y(geom) FROM country_points "
            "WHERE ST_Within(geom, ST_GeomFromText(%s, 4326))",
            polygon,
        )
    }
    response, doc = _items(main, cid, filter=f"S_WITHIN(geometry, {polygon})")
    assert response.headers["X-Geoharbor-Filter"] == "remote"
    assert set(_ids(doc)) == set(expected) and len(expected) >= 4
    for feature in doc["features"]:  # CRS84: lon/lat
        assert feature["geometry"]["coordinates"] == pytest.approx(
            expected[feature["properties"]["id"]], abs=1e-6
        )
    # EPSG:4326 as its authority says: lat/lon
    response, doc = _items(main, cid, filter=f"S_WITHIN(geometry, {polygon})", crs="EPSG:4326")
    assert response.headers["Content-Crs"] == "<http://www.opengis.net/def/crs/EPSG/0/4326>"
    for feature in doc["features"]:
        lon, lat = expected[feature["properties"]["id"]]
        assert feature["geometry"]["coordinates"] == pytest.approx([lat, lon], abs=1e-6)
    # a CRS the remote offers (asked for with srsName) and one it does not (reprojected here)
    for crs in (3857, 3035):
        mercator = {
            r[0]: (r[1], r[2])
            for r in _sql(
                pg_url,
                "SELECT id, ST_X(ST_Transform(geom, %s)), ST_Y(ST_Transform(geom, %s)) FROM country_points "
                "WHERE ST_Within(geom, ST_GeomFromText(%s, 4326))",
                crs,
                crs,
                polygon,
            )
        }
        _, doc = _items(main, cid, filter=f"S_WITHIN(geometry, {polygon})", crs=f"EPSG:{crs}")
        for feature in doc["features"]:
            x, y = mercator[feature["properties"]["id"]]
            if crs == 3035:  # ETRS89-LAEA is northing first
                x, y = y, x
            # MapServer writes 6 decimals of a degree: a tenth of a metre
            assert feature["geometry"]["coordinates"] == pytest.approx([x, y], abs=0.2)
    # a bbox given in lat/lon order (bbox-crs EPSG:4326)
    _, doc = _items(main, cid, bbox="41,-5,52,10", **{"bbox-crs": "EPSG:4326"})
    assert set(_ids(doc)) >= set(expected)


def test_item_by_id(main: str, pg_url: str, layers: dict[str, str]) -> None:
    cid = layers["countries"]
    response = _get(main, f"/collections/{cid}/items/countries.43")
    assert response.status_code == 200, response.text
    feature = response.json()
    name, pop = _sql(pg_url, "SELECT name, pop_est FROM countries WHERE id = 43")[0]
    assert feature["id"] == "countries.43"
    assert feature["properties"]["name"] == name and feature["properties"]["pop_est"] == pop
    assert response.headers["ETag"]
    missing = _get(main, f"/collections/{cid}/items/countries.999999")
    assert missing.status_code == 404 and missing.json()["code"] == "NotFound"
    # read-only: the data belongs to the remote
    write = requests.post(
        f"{main}/collections/{cid}/items",
        json={"type": "Feature", "geometry": None, "properties": {}},
        headers=AUTH,
        timeout=TIMEOUT,
    )
    assert write.status_code == 405


def test_output_formats_and_versions(
    main: str, pg_url: str, layers: dict[str, str], remote: MapServerWFS
) -> None:
    """GeoJSON where the remote offers it (countries), GML otherwise (points), and WFS 1.1.0 too."""
    before = len(remote.requests)
    _items(main, layers["countries"], limit=3, offset=7)
    _items(main, layers["points"], limit=3, offset=7)
    sent = [q.lower() for _, q, _ in remote.requests[before:] if "request=getfeature" in q.lower()]
    assert any("typenames=ms%3acountries" in q and "geojson" in q for q in sent), sent
    assert any("typenames=ms%3acountry_points" in q and "geojson" not in q for q in sent), sent

    # WFS 1.1.0 has no startIndex: geoharbor pages itself, and the answers are the same
    cid = layers["countries11"]
    expected = [r[0] for r in _sql(pg_url, "SELECT id FROM countries ORDER BY name LIMIT 5 OFFSET 30")]
    _, doc = _items(main, cid, limit=5, offset=30, sortby="name")
    assert _ids(doc) == expected and doc["numberMatched"] == 177
    _, doc = _items(main, cid, filter="continent = 'Oceania'", sortby="name")
    oceania = [
        r[0] for r in _sql(pg_url, "SELECT name FROM countries WHERE continent = 'Oceania' ORDER BY name")
    ]
    assert [f["properties"]["name"] for f in doc["features"]] == oceania


def test_configured_collection(main: str, pg_url: str) -> None:
    """A collection over a ``type: wfs`` source of the configuration."""
    _, doc = _items(main, "configured_points", limit=3, sortby="-name")
    top = [r[0] for r in _sql(pg_url, "SELECT name FROM country_points ORDER BY name DESC LIMIT 3")]
    assert [f["properties"]["name"] for f in doc["features"]] == top


# -- vector tiles and the cache ---------------------------------------------------------------------
def test_tiles_hold_the_remote_features_and_come_from_cache(
    main: str, pg_url: str, layers: dict[str, str], remote: MapServerWFS
) -> None:
    cid = layers["countries"]
    tile = mercantile.Tile(x=16, y=10, z=5)  # over western Europe
    inner = mercantile.bounds(tile)
    bounds = mercantile.xy_bounds(tile)
    pad = (bounds.right - bounds.left) * 64 / 4096
    response = _get(main, f"/collections/{cid}/tiles/WebMercatorQuad/{tile.z}/{tile.y}/{tile.x}")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/vnd.mapbox-vector-tile"
    decoded = mapbox_vector_tile.decode(response.content)
    names = {f["properties"]["name"] for f in decoded[cid]["features"]}
    assert all(f["properties"]["gml_id"].startswith("countries.") for f in decoded[cid]["features"])
    touching = {
        r[0]
        for r in _sql(
            pg_url,
            "SELECT name FROM countries WHERE ST_Intersects(geom, ST_MakeEnvelope(%s, %s, %s, %s, 4326))",
            inner.west + 0.01,
            inner.south + 0.01,
            inner.east - 0.01,
            inner.north - 0.01,
        )
    }
    padded = {
        r[0]
        for r in _sql(
            pg_url,
            "SELECT name FROM countries WHERE ST_Intersects(ST_Transform(geom, 3857), "
            "ST_MakeEnvelope(%s, %s, %s, %s, 3857))",
            bounds.left - 2 * pad,
            bounds.bottom - 2 * pad,
            bounds.right + 2 * pad,
            bounds.top + 2 * pad,
        )
    }
    assert touching <= names <= padded and "France" in names

    # the same tile again, and the same page again: no request reaches the remote
    sent = len(remote.requests)
    for _ in range(4):  # whichever worker: each has asked once, or asks now
        again = _get(main, f"/collections/{cid}/tiles/WebMercatorQuad/{tile.z}/{tile.y}/{tile.x}")
        assert again.content == response.content
    after_tiles = len(remote.requests)
    assert after_tiles - sent <= 1
    # Requests land on either worker; each caches for itself. After a dozen, both hold the page.
    for _ in range(12):
        _items(main, cid, limit=5, offset=3, sortby="name")
    assert len(remote.requests) - after_tiles <= 4  # one page and one count per worker, at most
    settled = len(remote.requests)
    for _ in range(4):
        _items(main, cid, limit=5, offset=3, sortby="name")
    assert len(remote.requests) == settled

    # a filtered tile keeps only what the filter says
    filtered = _get(
        main, f"/collections/{cid}/tiles/WebMercatorQuad/{tile.z}/{tile.y}/{tile.x}", filter="name = 'France'"
    )
    layer = mapbox_vector_tile.decode(filtered.content)[cid]
    assert [f["properties"]["name"] for f in layer["features"]] == ["France"]


# -- faults ---------------------------------------------------------------------------------------------
def _faulty_items(fragile: str, cid: str, offset: int) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = _get(fragile, f"/collections/{cid}/items", limit=5, offset=offset)
    return response, time.monotonic() - started


def _other_collections_answer(fragile: str, layers: dict[str, str]) -> None:
    for path in ("/collections/gpkg-countries/items", f"/collections/{layers['countries']}/items"):
        response = _get(fragile, path, limit=2)
        assert response.status_code == 200, response.text


def test_remote_failures_answer_502_or_504_in_time(
    fragile: str, faulty: MapServerWFS, layers: dict[str, str]
) -> None:
    cid = layers["faulty"]
    response, _ = _faulty_items(fragile, cid, 0)
    assert response.status_code == 200  # healthy to begin with

    faulty.mode = "exception"  # MapServer itself answers an OWS ExceptionReport
    try:
        response, took = _faulty_items(fragile, cid, 1)
        assert response.status_code == 502
        assert response.json()["code"] == "BadGateway"
        assert (
            "TYPENAME" in response.json()["description"] and "no_such_layer" in response.json()["description"]
        )
        _other_collections_answer(fragile, layers)

        faulty.mode = "garbage"
        response, took = _faulty_items(fragile, cid, 2)
        assert response.status_code == 502 and response.json()["code"] == "BadGateway"
        assert "not well-formed XML" in response.json()["description"]

        faulty.mode = "slow"
        faulty.delay = 6
        other: dict[str, float] = {}

        def meanwhile() -> None:
            time.sleep(0.3)
            started = time.monotonic()
            _other_collections_answer(fragile, layers)
            other["took"] = time.monotonic() - started

        thread = threading.Thread(target=meanwhile)
        thread.start()
        response, took = _faulty_items(fragile, cid, 3)
        thread.join()
        assert response.status_code == 504, response.text
        assert response.json()["code"] == "GatewayTimeout"
        assert REMOTE_TIMEOUT <= took < REMOTE_TIMEOUT + 1.5
        assert other["took"] < 1.0  # the rest of the server kept serving while it waited
    finally:
        faulty.mode = "normal"


def test_circuit_breaker_stops_asking_a_failing_remote(
    fragile: str, faulty: MapServerWFS, layers: dict[str, str]
) -> None:
    cid = layers["faulty"]
    faulty.mode = "garbage"
    try:
        for offset in range(10, 13):  # three failures in a row open the circuit
            response, _ = _faulty_items(fragile, cid, offset)
            assert response.status_code == 502
        sent = faulty.count()
        response, took = _faulty_items(fragile, cid, 13)
        assert response.status_code == 502 and "not asked again" in response.json()["description"]
        assert took < 0.5 and faulty.count() == sent  # refused at once, without asking
        health = _get(fragile, "/health").json()["providers"][f"wfs:{faulty.url}"]
        assert health["remote_up"] is False and health["up"] is True
        _other_collections_answer(fragile, layers)
    finally:
        faulty.mode = "normal"
    time.sleep(2.2)  # reset_s: the circuit lets one request through, which succeeds
    response, _ = _faulty_items(fragile, cid, 14)
    assert response.status_code == 200, response.text


def test_remote_down(fragile: str, faulty: MapServerWFS, layers: dict[str, str]) -> None:
    cid = layers["faulty"]
    faulty.stop()
    try:
        response, took = _faulty_items(fragile, cid, 20)
        assert response.status_code == 502
        assert response.json()["code"] == "BadGateway" and "cannot reach" in response.json()["description"]
        assert took < REMOTE_TIMEOUT + 1
        tile = _get(fragile, f"/collections/{cid}/tiles/WebMercatorQuad/1/0/1")
        assert tile.status_code == 502 and tile.json()["code"] == "BadGateway"
        # still published (from its record), still described, while its remote is down
        assert _get(fragile, f"/collections/{cid}").status_code == 200
        _other_collections_answer(fragile, layers)
    finally:
        faulty.start()


def test_example_configuration_is_valid() -> None:
    """The remote WFS example of ``config/`` passes the configuration schema."""
    config = load(ROOT / "config" / "remote-wfs.yml")
    assert config["sources"]["ign"]["type"] == "wfs" and config["wfs"]["failures"] == 5
    assert config["collections"]["departements"]["layer"].endswith(":departement")
