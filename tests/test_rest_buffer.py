"""REST buffer layers: a new published layer of geodesically correct buffers."""

from __future__ import annotations

import json
import math
import uuid

import pytest
import requests
import shapely
import shapely.geometry
from pyproj import Geod, Transformer

TIMEOUT = 120
GEOD = Geod(ellps="WGS84")
#: The area of a disc of 1 km radius, in km².
DISC_KM2 = math.pi


def rest(base: str, path: str) -> str:
    return f"{base}/rest/1{path}"


def point_layer(
    base: str, backend: str, points: list[tuple[float, float]], srid: int = 4326
) -> tuple[int, str]:
    """A point layer made through the REST tables API: (layer id, table name)."""
    name = f"buf_src_{uuid.uuid4().hex[:8]}"
    params = {"connection_id": backend}
    created = requests.post(
        rest(base, "/tables"),
        params=params,
        json={"name": name, "geometry": "POINT", "srid": srid, "columns": {"label": "text"}},
        timeout=TIMEOUT,
    )
    assert created.status_code == 201, created.text
    for i, (x, y) in enumerate(points):
        row = {"data": {"label": f"p{i}"}, "geometry": f"POINT({x} {y})"}
        response = requests.post(rest(base, f"/tables/{name}/rows"), params=params, json=row, timeout=TIMEOUT)
        assert response.status_code == 201, response.text
    return created.json()["layer_id"], name


def buffer(base: str, layer, body: dict) -> requests.Response:
    return requests.post(rest(base, f"/layers/{layer}/buffer"), json=body, timeout=TIMEOUT)


def features(base: str, layer_doc: dict) -> list[dict]:
    body = requests.get(f"{base}/collections/{layer_doc['collection']}/items", timeout=TIMEOUT).json()
    return body["features"]


def km2(geometry: dict) -> float:
    """Geodesic area on the WGS84 ellipsoid of a CRS84 GeoJSON geometry."""
    return abs(GEOD.geometry_area_perimeter(shapely.geometry.shape(geometry))[0]) / 1e6


def drop(base: str, backend: str, layer_doc: dict) -> None:
    """Drop the table behind a layer made by a buffer (its ``source`` names it)."""
    table = json.loads(layer_doc["source"])["src"].rpartition(".")[2]
    response = requests.delete(
        rest(base, f"/tables/{table}"), params={"connection_id": backend}, timeout=TIMEOUT
    )
    assert response.status_code == 204, response.text


def drop_table(base: str, backend: str, name: str) -> None:
    requests.delete(rest(base, f"/tables/{name}"), params={"connection_id": backend}, timeout=TIMEOUT)


def test_buffer_of_a_point_is_a_geodesic_disc(base, backend):
    layer_id, source = point_layer(base, backend, [(16.44, 43.51)])
    response = buffer(
        base,
        layer_id,
        {
            "name": "Split 1 km",
            "size": 1000,
            "units": "meter",
            "connection_id": backend,
            "fill_color": "198,45,240",
        },
    )
    assert response.status_code == 201, response.text
    doc = response.json()
    assert response.headers["Location"].endswith(f"/rest/1/layers/{doc['id']}") and doc["id"] != layer_id
    assert doc["name"] == "Split 1 km" and doc["type"] == "polygon" and doc["epsg"] == 4326
    assert doc["styles"] == [{"fill_color": "198,45,240"}]
    assert requests.get(rest(base, f"/layers/{doc['id']}"), timeout=TIMEOUT).status_code == 200
    found = features(base, doc)
    assert len(found) == 1 and found[0]["geometry"]["type"] == "MultiPolygon"
    assert km2(found[0]["geometry"]) == pytest.approx(DISC_KM2, rel=0.005)
    centre = shapely.geometry.shape(found[0]["geometry"]).centroid
    assert centre.x == pytest.approx(16.44, abs=1e-4) and centre.y == pytest.approx(43.51, abs=1e-4)
    # The same in kilometres, the size given as text as in the reference's example.
    again = buffer(
        base, layer_id, {"name": "Split 1 km", "size": "1", "units": "kilometer", "connection_id": backend}
    )
    assert again.status_code == 201, again.text
    assert again.json()["collection"] != doc["collection"]  # a second table, not the first one replaced
    assert km2(features(base, again.json())[0]["geometry"]) == pytest.approx(DISC_KM2, rel=0.005)
    for made in (doc, again.json()):
        drop(base, backend, made)
    drop_table(base, backend, source)


def test_merge_geom(base, backend):
    # Two points about 700 m apart (their discs overlap) and one far away.
    layer_id, source = point_layer(base, backend, [(2.35, 48.85), (2.3595, 48.85), (13.4, 52.52)])
    separate = buffer(base, layer_id, {"name": "each", "size": 1, "units": "kilometer", "merge_geom": False})
    assert separate.status_code == 201, separate.text
    each = features(base, separate.json())
    assert len(each) == 3 and {f["properties"]["source_id"] for f in each} == {"1", "2", "3"}
    assert all(km2(f["geometry"]) == pytest.approx(DISC_KM2, rel=0.005) for f in each)
    merged = buffer(base, layer_id, {"name": "all", "size": 1000})  # merge_geom and meters by default
    assert merged.status_code == 201, merged.text
    (one,) = features(base, merged.json())
    assert one["properties"]["source_id"] is None and len(one["geometry"]["coordinates"]) == 2
    assert 2 * DISC_KM2 < km2(one["geometry"]) < 3 * DISC_KM2
    for made in (separate.json(), merged.json()):
        drop(base, "pg", made)
    drop_table(base, backend, source)


def test_buffer_in_a_projected_crs_is_measured_on_the_ground(base):
    """Web mercator stretches distances by 1/cos(lat): 1000 m are ~1414 mercator units at 45°."""
    x, y = Transformer.from_crs(4326, 3857, always_xy=True).transform(10.0, 45.0)
    layer_id, source = point_layer(base, "pg", [(x, y)], srid=3857)
    response = buffer(base, layer_id, {"name": "merc", "size": 1000, "units": "meter"})
    assert response.status_code == 201, response.text
    doc = response.json()
    assert doc["epsg"] == 3857
    table = json.loads(doc["source"])["src"].rpartition(".")[2]
    rows = requests.get(rest(base, f"/tables/{table}/rows"), timeout=TIMEOUT).json()["data"]
    stored = shapely.from_wkt(rows[0]["geom"])  # in the table's CRS, EPSG:3857
    assert stored.area == pytest.approx(DISC_KM2 * 1e6 / math.cos(math.radians(45)) ** 2, rel=0.01)
    (found,) = features(base, doc)
    assert km2(found["geometry"]) == pytest.approx(DISC_KM2, rel=0.005)
    drop(base, "pg", doc)
    drop_table(base, "pg", source)


def test_degree_and_mile_units(base):
    layer_id, source = point_layer(base, "pg", [(0.5, 0.5)])
    degrees = buffer(base, layer_id, {"name": "deg", "size": 0.01, "units": "degree"})
    assert degrees.status_code == 201, degrees.text
    (found,) = features(base, degrees.json())
    planar = shapely.geometry.shape(found["geometry"]).area  # in square degrees
    assert planar == pytest.approx(math.pi * 0.01**2, rel=0.005)
    miles = buffer(base, layer_id, {"name": "mile", "size": 1, "units": "mile"})
    assert miles.status_code == 201, miles.text
    (found,) = features(base, miles.json())
    assert km2(found["geometry"]) == pytest.approx(math.pi * 1.609344**2, rel=0.005)
    for made in (degrees.json(), miles.json()):
        drop(base, "pg", made)
    drop_table(base, "pg", source)


def test_buffer_of_polygons_from_a_configured_collection(base, backend):
    """A configured collection (no layer id) is buffered by its collection id."""
    response = buffer(
        base,
        f"{backend}_l93",
        {"name": "l93 buffer", "size": 10, "units": "kilometer", "connection_id": backend},
    )
    assert response.status_code == 201, response.text
    doc = response.json()
    assert doc["epsg"] == 2154
    (found,) = features(base, doc)
    countries = requests.get(
        f"{base}/collections/{backend}_l93/items", params={"limit": 100}, timeout=TIMEOUT
    )
    source_area = sum(km2(f["geometry"]) for f in countries.json()["features"])
    assert source_area + 10_000 < km2(found["geometry"]) < source_area * 1.2
    drop(base, backend, doc)


@pytest.mark.parametrize(
    "body, status",
    [
        ({"size": 100}, 422),
        ({"name": "", "size": 100}, 422),
        ({"name": "x"}, 422),
        ({"name": "x", "size": -5}, 422),
        ({"name": "x", "size": 0}, 422),
        ({"name": "x", "size": "ten"}, 422),
        ({"name": "x", "size": 5_000, "units": "kilometer"}, 422),
        ({"name": "x", "size": 100, "units": "furlong"}, 422),
        ({"name": "x", "size": 100, "merge_geom": "maybe"}, 422),
        ({"name": "x", "size": 100, "connection_id": "nope"}, 400),
    ],
)
def test_bad_buffers_make_nothing(base, pg, body, status):
    layer_id, source = point_layer(base, "pg", [(1, 1)])
    before = requests.get(rest(base, "/layers"), params={"perpage": 1000}, timeout=TIMEOUT).json()["total"]
    response = buffer(base, layer_id, body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"code", "msg"}
    assert (
        requests.get(rest(base, "/layers"), params={"perpage": 1000}, timeout=TIMEOUT).json()["total"]
        == before
    )
    tables = pg.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'x%'")
    assert tables.fetchone()[0] == 0
    drop_table(base, "pg", source)


def test_buffer_of_an_unknown_layer(base):
    response = buffer(base, 999999, {"name": "x", "size": 1})
    assert response.status_code == 404 and set(response.json()) == {"code", "msg"}


def test_openapi_describes_the_buffer_route(base):
    doc = requests.get(f"{base}/openapi", params={"f": "json"}, timeout=TIMEOUT).json()
    operation = doc["paths"]["/rest/1/layers/{layer_id}/buffer"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "RestBufferInput"
    )
    assert "Location" in operation["responses"]["201"]["headers"]
    members = doc["components"]["schemas"]["RestBufferInput"]["properties"]
    assert {"name", "size", "units", "merge_geom"} <= set(members)
