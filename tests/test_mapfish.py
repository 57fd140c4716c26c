"""The MapFish protocol over HTTP, on PostGIS and GeoPackage, against the running server.

Each test creates its own points (through MapFish itself) around (-150, -40), in the
South Pacific where no country point lies, tagged with a unique ``continent`` value
that scopes every read; they are deleted afterwards. Expected results are computed
from the coordinates given here, never read back from the code under test.
"""

from __future__ import annotations

import copy
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mapbox_vector_tile
import mercantile
import orjson
import psycopg
import pytest
import requests
from conftest import Server, _libpq, free_port
from pyproj import Transformer

PREFIX = "/mapfish"
TO_MERCATOR = Transformer.from_crs(4326, 3857, always_xy=True)

#: name, lon, lat, pop_est of the points each test starts with.
POINTS = [
    ("Alpha", -150.0, -40.0, 10),
    ("beta", -150.02, -40.0, 20),
    ("Gamma", -150.2, -40.0, 30),
    ("delta", -151.0, -41.0, 40),
    ("Epsilon", -149.0, -39.0, None),
]


def url(base: str, layer: str, path: str = "") -> str:
    return f"{base}{PREFIX}/{layer}{path}"


def point(name: str, lon: float, lat: float, tag: str, **props: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "id": None,
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"name": name, "continent": tag, **props},
    }


def collection(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def scope(tag: str, *fields: str, **params: Any) -> dict[str, Any]:
    """Read parameters limited to this test's points (``continent`` = tag)."""
    return {"queryable": ",".join(("continent", *fields)), "continent__eq": tag, **params}


def names(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "FeatureCollection"
    return [f["properties"]["name"] for f in body["features"]]


def error(response: requests.Response, status: int) -> str:
    """The MapFish error message of a response that must have ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message
    return message


def ogc_count(base: str, layer: str, cql: str) -> int:
    response = requests.get(
        f"{base}/collections/{layer}/items", params={"filter": cql, "limit": 1}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["numberMatched"]


@pytest.fixture
def tag() -> str:
    return "mf" + uuid.uuid4().hex[:12]


@pytest.fixture
def points(base: str, backend: str, tag: str) -> Iterator[list[dict[str, Any]]]:
    """The five points of :data:`POINTS`, created through MapFish; deleted afterwards."""
    layer = f"{backend}.points"
    features = [point(n, x, y, tag, pop_est=p) for n, x, y, p in POINTS]
    response = requests.post(url(base, layer), json=collection(*features), timeout=30)
    assert response.status_code == 201, response.text
    stored = response.json()["features"]
    yield stored
    for feature in stored:
        requests.delete(url(base, layer, f"/{feature['id']}"), timeout=30)


# -- read one -----------------------------------------------------------------------------
def test_read_one_feature(base: str, backend: str, points: list[dict]) -> None:
    layer, fid = f"{backend}.points", points[0]["id"]
    response = requests.get(url(base, layer, f"/{fid}"), timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    feature = response.json()
    assert feature["type"] == "Feature" and feature["id"] == fid
    assert feature["properties"]["name"] == "Alpha" and feature["properties"]["pop_est"] == 10
    assert feature["geometry"] == {"type": "Point", "coordinates": [-150.0, -40.0]}
    assert requests.get(url(base, layer, f"/{fid}.json"), timeout=30).json() == feature

    only_name = requests.get(url(base, layer, f"/{fid}.json"), params={"attrs": "name"}, timeout=30).json()
    assert only_name["properties"] == {"name": "Alpha"}
    assert only_name["geometry"] == feature["geometry"]
    no_geom = requests.get(url(base, layer, f"/{fid}"), params={"no_geom": "true"}, timeout=30).json()
    assert no_geom["geometry"] is None and no_geom["properties"]["name"] == "Alpha"

    assert "nope" in error(
        requests.get(url(base, layer, f"/{fid}"), params={"attrs": "nope"}, timeout=30), 400
    )
    error(requests.get(url(base, layer, f"/{fid}"), params={"no_geom": "maybe"}, timeout=30), 400)
    error(requests.get(url(base, layer, "/987654321"), timeout=30), 404)
    error(requests.get(url(base, layer, "/not-a-number.json"), timeout=30), 404)
    error(requests.get(url(base, "no-such-layer", f"/{fid}"), timeout=30), 404)
    error(requests.get(url(base, "no-such-layer"), timeout=30), 404)


# -- read many ------------------------------------------------------------------------------
def test_read_many_order_and_paging(base: str, backend: str, points: list[dict], tag: str) -> None:
    layer = url(base, f"{backend}.points")

    def read(**params: Any) -> list[str]:
        return names(requests.get(layer, params=scope(tag, **params), timeout=30))

    # Nulls sort as PostgreSQL sorts them: last ascending, first descending.
    assert read(order_by="pop_est") == ["Alpha", "beta", "Gamma", "delta", "Epsilon"]
    assert read(order_by="pop_est", dir="asc") == ["Alpha", "beta", "Gamma", "delta", "Epsilon"]
    assert read(order_by="pop_est", dir="DESC") == ["Epsilon", "delta", "Gamma", "beta", "Alpha"]
    assert read(order_by="pop_est", limit=2, offset=1) == ["beta", "Gamma"]
    assert read(order_by="pop_est", maxfeatures=2) == ["Alpha", "beta"]
    assert read(order_by="pop_est", limit=0) == []
    assert sorted(read()) == sorted(n for n, *_ in POINTS)
    suffixed = requests.get(
        url(base, f"{backend}.points.json"), params=scope(tag, order_by="pop_est"), timeout=30
    )
    assert names(suffixed) == ["Alpha", "beta", "Gamma", "delta", "Epsilon"]

    only = requests.get(layer, params=scope(tag, attrs="name,pop_est", no_geom="true"), timeout=30).json()
    assert {tuple(f["properties"]) for f in only["features"]} == {("name", "pop_est")}
    assert all(f["geometry"] is None for f in only["features"])

    assert "order_by" in error(requests.get(layer, params=scope(tag, order_by="nope"), timeout=30), 400)
    for bad in ({"dir": "sideways", "order_by": "name"}, {"limit": "-1"}, {"limit": "ten"}, {"offset": "x"}):
        error(requests.get(layer, params=scope(tag, **bad), timeout=30), 400)


def test_default_limit_is_the_configured_maximum(base: str, backend: str) -> None:
    """Without ``limit`` a read returns up to ``mapfish.limit_max`` (10000 by default): all countries."""
    everything = requests.get(url(base, f"{backend}-countries"), params={"attrs": "name"}, timeout=60)
    total = ogc_count(base, f"{backend}-countries", "name IS NOT NULL OR name IS NULL")
    assert len(names(everything)) == total > 150


def test_lon_lat_tolerance(base: str, backend: str, points: list[dict], tag: str) -> None:
    layer = url(base, f"{backend}.points")

    def near(**params: Any) -> set[str]:
        return set(names(requests.get(layer, params=scope(tag, **params), timeout=30)))

    assert near(lon=-150, lat=-40) == {"Alpha"}  # no tolerance: the features on the point
    assert near(lon=-150, lat=-40, tolerance=0.05) == {"Alpha", "beta"}  # degrees by default
    assert near(lon=-150, lat=-40, tolerance=0.5) == {"Alpha", "beta", "Gamma"}
    assert near(lon=-150.1, lat=-40, tolerance=0.09) == {"beta"}
    # epsg=3857: coordinates and tolerance in web mercator metres (0.02 degrees of
    # longitude are 2226 m there, 0.2 degrees 22264 m).
    x, y = TO_MERCATOR.transform(-150, -40)
    assert near(lon=x, lat=y, tolerance=3000, epsg=3857) == {"Alpha", "beta"}
    assert near(lon=x, lat=y, tolerance=2000, epsg="EPSG:3857") == {"Alpha"}
    assert near(lon=x, lat=y, tolerance=30000, epsg=3857) == {"Alpha", "beta", "Gamma"}

    for bad in (
        {"lon": -150},
        {"lat": -40},
        {"lon": "west", "lat": -40},
        {"lon": -150, "lat": -40, "tolerance": -1},
        {"lon": -150, "lat": -40, "tolerance": "nan"},
        {"lon": -150, "lat": -40, "epsg": "abc"},
        {"lon": -150, "lat": -40, "epsg": 999999},
    ):
        error(requests.get(layer, params=scope(tag, **bad), timeout=30), 400)


def test_lon_lat_on_polygons(base: str, backend: str) -> None:
    layer = url(base, f"{backend}-countries")
    paris = requests.get(layer, params={"lon": 2.35, "lat": 48.85, "attrs": "name", "no_geom": 1}, timeout=30)
    assert names(paris) == ["France"]
    x, y = TO_MERCATOR.transform(2.35, 48.85)
    assert names(requests.get(layer, params={"lon": x, "lat": y, "epsg": 3857}, timeout=30)) == ["France"]
    around = requests.get(
        layer, params={"lon": 6.1, "lat": 49.6, "tolerance": 1, "attrs": "name"}, timeout=30
    )
    assert {"Luxembourg", "France", "Germany", "Belgium"} <= set(names(around))
    assert "Spain" not in names(around)


def test_bbox_and_geometry(base: str, backend: str, points: list[dict], tag: str) -> None:
    layer = url(base, f"{backend}.points")

    def inside(**params: Any) -> set[str]:
        return set(names(requests.get(layer, params=scope(tag, **params), timeout=30)))

    assert inside(bbox="-150.1,-40.1,-149.99,-39.9") == {"Alpha", "beta"}
    (x0, x1), (y0, y1) = TO_MERCATOR.transform([-150.1, -149.99], [-40.1, -39.9])
    assert inside(bbox=f"{x0},{y0},{x1},{y1}", epsg=3857) == {"Alpha", "beta"}
    square = {
        "type": "Polygon",
        "coordinates": [
            [[-150.25, -40.05], [-150.15, -40.05], [-150.15, -39.95], [-150.25, -39.95], [-150.25, -40.05]]
        ],
    }
    assert inside(geometry=orjson.dumps(square).decode()) == {"Gamma"}
    line = {"type": "LineString", "coordinates": [[-150.1, -40.0], [-150.1, -41.0]]}
    assert inside(geometry=orjson.dumps(line).decode(), tolerance=0.09) == {"beta"}
    both = inside(bbox="-150.1,-40.1,-149.99,-39.9", lon=-150, lat=-40)  # conditions add up
    assert both == {"Alpha"}

    for bad in (
        {"bbox": "1,2,3"},
        {"bbox": "3,0,1,1"},
        {"bbox": "a,b,c,d"},
        {"geometry": "{not json"},
        {"geometry": '{"type": "Point", "coordinates": "x"}'},
        {"geometry": '{"type": "Nope", "coordinates": [0, 0]}'},
        {"geometry": "[1, 2]"},
    ):
        error(requests.get(layer, params=scope(tag, **bad), timeout=30), 400)


def test_attribute_filters(base: str, backend: str, points: list[dict], tag: str) -> None:
    layer = url(base, f"{backend}.points")

    def where(**params: Any) -> set[str]:
        return set(names(requests.get(layer, params=scope(tag, "pop_est", "name", **params), timeout=30)))

    assert where(pop_est__eq=20) == {"beta"}
    assert where(pop_est__ne=20) == {"Alpha", "Gamma", "delta"}  # null is not "not 20"
    assert where(pop_est__lt=20) == {"Alpha"}
    assert where(pop_est__lte=20) == {"Alpha", "beta"}
    assert where(pop_est__gt=30) == {"delta"}
    assert where(pop_est__gte=30) == {"Gamma", "delta"}
    assert where(pop_est__gte=20, pop_est__lt=40) == {"beta", "Gamma"}
    assert where(name__eq="Gamma") == {"Gamma"}
    assert where(name__like="lph") == {"Alpha"}  # no % : contains
    assert where(name__like="LPH") == set()  # like is case-sensitive
    assert where(name__like="%ta") == {"beta", "delta"}  # with % : the pattern as given
    assert where(name__ilike="ALPH") == {"Alpha"}
    assert where(name__ilike="e") == {"beta", "delta", "Epsilon"}
    assert where(name__ilike="e", pop_est__gte=30) == {"delta"}

    # The protocol's own example: at most 3, properties restricted, no geometry.
    example = requests.get(
        layer,
        params=scope(tag, "name", "pop_est", limit=3, name__ilike="a", pop_est__gte=20, attrs="name,pop_est")
        | {"no_geom": "true"},
        timeout=30,
    ).json()
    assert len(example["features"]) == 3
    for feature in example["features"]:
        assert feature["geometry"] is None and set(feature["properties"]) == {"name", "pop_est"}
        assert "a" in feature["properties"]["name"].lower() and feature["properties"]["pop_est"] >= 20

    assert "queryable" in error(requests.get(layer, params={"pop_est__eq": 20}, timeout=30), 400)
    error(requests.get(layer, params=scope(tag, "pop_est", pop_est__eq="many"), timeout=30), 400)
    error(requests.get(layer, params=scope(tag, "name", name__between="a"), timeout=30), 400)
    error(requests.get(layer, params={"queryable": "nope", "nope__eq": 1}, timeout=30), 400)


def test_count(base: str, backend: str, points: list[dict], tag: str) -> None:
    layer = f"{backend}.points"
    response = requests.get(url(base, layer, "/count"), params=scope(tag), timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    assert response.text == "5"
    suffixed = requests.get(
        url(base, layer, "/count.json"), params=scope(tag, "pop_est", pop_est__gte=20), timeout=30
    )
    assert suffixed.text == "3"
    near = requests.get(
        url(base, layer, "/count"), params=scope(tag, lon=-150, lat=-40, tolerance=0.05, limit=1), timeout=30
    )
    assert near.text == "2"  # limit does not cap a count
    countries = requests.get(url(base, f"{backend}-countries", "/count"), timeout=30)
    assert int(countries.text) == ogc_count(base, f"{backend}-countries", "name IS NOT NULL OR name IS NULL")
    error(requests.get(url(base, layer, "/count"), params={"nope__eq": 1}, timeout=30), 400)
    error(requests.get(url(base, "no-such-layer", "/count"), timeout=30), 404)


# -- hostile input --------------------------------------------------------------------------
HOSTILE = [
    {"order_by": "name;drop table country_points"},
    {"order_by": '"x" OR 1=1'},
    {"order_by": "name", "dir": "DESC; DROP TABLE country_points"},
    {"attrs": "name,(select 1)"},
    {"queryable": "name;drop table country_points"},
    {"queryable": "name", "name;drop table country_points__eq": "x"},
    {"queryable": "name;drop table country_points", "name;drop table country_points__eq": "x"},
    {"queryable": '"x" OR 1=1', '"x" OR 1=1__eq': "1"},
    {"queryable": "name", "name__eq;--": "x"},
    {"queryable": "name", "name__drop": "x"},
    {"queryable": "pop_est", "pop_est__gte": "1 OR 1=1"},
    {"epsg": "4326; DROP TABLE country_points"},
    {"lon": "1); DROP TABLE country_points; --", "lat": "0"},
]


@pytest.mark.parametrize("params", HOSTILE)
def test_hostile_parameters_are_refused(
    base: str, backend: str, pg: psycopg.Connection, params: dict
) -> None:
    before = ogc_count(base, f"{backend}.points", "name IS NOT NULL OR name IS NULL")
    for path in ("", "/count"):
        message = error(requests.get(url(base, f"{backend}.points", path), params=params, timeout=30), 400)
        assert "syntax" not in message.lower()
    assert ogc_count(base, f"{backend}.points", "name IS NOT NULL OR name IS NULL") == before
    assert pg.execute("SELECT count(*) FROM country_points").fetchone()[0] > 0


def test_hostile_values_are_only_values(base: str, backend: str, points: list[dict], tag: str) -> None:
    layer = url(base, f"{backend}.points")
    for value in ("' OR 1=1 --", "Alpha'; DROP TABLE country_points; --", '" OR ""="'):
        assert names(requests.get(layer, params=scope(tag, "name", name__eq=value), timeout=30)) == []
        assert names(requests.get(layer, params=scope(tag, "name", name__ilike=value), timeout=30)) == []
    assert len(names(requests.get(layer, params=scope(tag), timeout=30))) == 5


# -- writes ---------------------------------------------------------------------------------
def test_created_feature_is_in_ogc_items_and_in_a_tile(base: str, backend: str, tag: str) -> None:
    layer = f"{backend}.points"
    lon, lat = -150.123, -40.456
    response = requests.post(
        url(base, layer), json=collection(point("Tiled", lon, lat, tag, pop_est=7)), timeout=30
    )
    assert response.status_code == 201, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    (created,) = response.json()["features"]
    fid = created["id"]
    assert isinstance(fid, int) and created["properties"]["name"] == "Tiled"
    try:
        item = requests.get(f"{base}/collections/{layer}/items/{fid}", timeout=30)
        assert item.status_code == 200
        assert item.json()["properties"]["continent"] == tag and item.json()["properties"]["pop_est"] == 7
        assert item.json()["geometry"]["coordinates"] == pytest.approx([lon, lat])

        tile = mercantile.tile(lon, lat, 9)
        got = requests.get(
            f"{base}/collections/{layer}/tiles/WebMercatorQuad/{tile.z}/{tile.y}/{tile.x}", timeout=30
        )
        assert got.status_code == 200, got.text
        decoded = mapbox_vector_tile.decode(got.content)
        mine = [f for f in decoded[layer]["features"] if f["properties"].get("name") == "Tiled"]
        assert len(mine) == 1 and mine[0]["id"] == fid
        assert mine[0]["properties"]["continent"] == tag
    finally:
        assert requests.delete(url(base, layer, f"/{fid}"), timeout=30).status_code == 204
    assert requests.get(f"{base}/collections/{layer}/items/{fid}", timeout=30).status_code == 404


@pytest.mark.parametrize("method", ["post", "put"])
def test_batch_creates_and_updates(
    base: str, backend: str, points: list[dict], tag: str, method: str
) -> None:
    layer = f"{backend}.points"
    alpha, beta = points[0], points[1]
    body = collection(
        {"type": "Feature", "id": alpha["id"], "properties": {"pop_est": 11}},
        {
            "type": "Feature",
            "id": str(beta["id"]),
            "geometry": {"type": "Point", "coordinates": [-150.5, -40.5]},
            "properties": {"name": "beta moved"},
        },
        point("Zeta", -150.3, -40.3, tag, pop_est=60),
    )
    response = getattr(requests, method)(url(base, layer), json=body, timeout=30)
    assert response.status_code == 201, response.text
    stored = response.json()["features"]
    assert [f["properties"]["name"] for f in stored] == ["Alpha", "beta moved", "Zeta"]
    assert stored[0]["id"] == alpha["id"] and stored[1]["id"] == beta["id"]
    zeta = stored[2]["id"]
    try:
        assert zeta not in (alpha["id"], beta["id"])
        # An update changes only what it carries.
        one = requests.get(f"{base}/collections/{layer}/items/{alpha['id']}", timeout=30).json()
        assert one["properties"]["pop_est"] == 11 and one["properties"]["name"] == "Alpha"
        assert one["geometry"]["coordinates"] == pytest.approx([-150.0, -40.0])
        two = requests.get(url(base, layer, f"/{beta['id']}.json"), timeout=30).json()
        assert two["geometry"]["coordinates"] == pytest.approx([-150.5, -40.5])
        assert two["properties"]["pop_est"] == 20
        assert requests.get(url(base, layer, "/count"), params=scope(tag), timeout=30).text == "6"
    finally:
        requests.delete(url(base, layer, f"/{zeta}"), timeout=30)


def test_put_one_feature_and_delete(base: str, backend: str, points: list[dict]) -> None:
    layer, fid = f"{backend}.points", points[0]["id"]
    renamed = requests.put(
        url(base, layer, f"/{fid}.json"),
        json={"type": "Feature", "properties": {"name": "Alpha 2"}},
        timeout=30,
    )
    assert renamed.status_code == 201, renamed.text
    feature = renamed.json()
    assert feature["type"] == "Feature" and feature["id"] == fid
    assert feature["properties"]["name"] == "Alpha 2" and feature["properties"]["pop_est"] == 10
    assert feature["geometry"]["coordinates"] == pytest.approx([-150.0, -40.0])
    moved = requests.put(
        url(base, layer, f"/{fid}"),
        json={"type": "Feature", "id": fid, "geometry": {"type": "Point", "coordinates": [-152, -42]}},
        timeout=30,
    )
    assert moved.status_code == 201 and moved.json()["geometry"]["coordinates"] == pytest.approx([-152, -42])
    ogc = requests.get(f"{base}/collections/{layer}/items/{fid}", timeout=30).json()
    assert ogc["properties"]["name"] == "Alpha 2" and ogc["geometry"]["coordinates"] == pytest.approx(
        [-152, -42]
    )
    stale = requests.put(
        url(base, layer, f"/{fid}"),
        json={"properties": {"name": "x"}},
        headers={"If-Match": renamed.headers["ETag"]},
        timeout=30,
    )
    error(stale, 412)

    assert requests.delete(url(base, layer, f"/{fid}.json"), timeout=30).status_code == 204
    error(requests.get(url(base, layer, f"/{fid}"), timeout=30), 404)
    error(requests.delete(url(base, layer, f"/{fid}"), timeout=30), 404)
    error(requests.put(url(base, layer, "/987654321"), json={"properties": {"name": "x"}}, timeout=30), 404)


THIRD_FEATURE_FAULTS = [
    (
        {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
            "properties": {},
        },
        422,
    ),
    ({"type": "Feature", "geometry": {"type": "Point", "coordinates": "x"}, "properties": {}}, 422),
    ({"type": "Feature", "geometry": {"type": "Point"}, "properties": {}}, 422),
    ({"type": "Feature", "geometry": None, "properties": {"nope": 1}}, 422),
    ({"type": "Feature", "geometry": None, "properties": {"pop_est": "many"}}, 422),
    ({"type": "Feature", "id": 987654321, "properties": {"name": "ghost"}}, 404),
    ({"type": "Feature", "id": {"a": 1}, "properties": {}}, 422),
    ("not a feature", 422),
]


@pytest.mark.parametrize(("third", "status"), THIRD_FEATURE_FAULTS)
def test_a_bad_third_feature_writes_nothing(
    base: str, backend: str, pg: psycopg.Connection, points: list[dict], tag: str, third: Any, status: int
) -> None:
    layer = f"{backend}.points"
    third = copy.deepcopy(third)
    before = pg.execute("SELECT count(*) FROM country_points").fetchone()[0]
    body = collection(
        point("New one", -150.7, -40.7, tag),
        {"type": "Feature", "id": points[0]["id"], "properties": {"name": "Changed"}},
        third,
    )
    if isinstance(third, dict):
        third.setdefault("properties", {})
        if isinstance(third["properties"], dict):
            third["properties"].setdefault("continent", tag)
    message = error(requests.post(url(base, layer), json=body, timeout=30), status)
    assert message.startswith("feature 3"), message
    assert requests.get(url(base, layer, "/count"), params=scope(tag), timeout=30).text == "5"
    assert ogc_count(base, layer, f"continent = '{tag}'") == 5
    assert (
        requests.get(url(base, layer, f"/{points[0]['id']}"), timeout=30).json()["properties"]["name"]
        == "Alpha"
    )
    if backend == "pg":
        assert pg.execute("SELECT count(*) FROM country_points").fetchone()[0] == before
        assert (
            pg.execute("SELECT count(*) FROM country_points WHERE continent = %s", (tag,)).fetchone()[0] == 5
        )


@pytest.mark.parametrize(
    ("body", "status", "hint"),
    [
        ("{not json", 400, "JSON"),
        ("[1, 2]", 422, "FeatureCollection"),
        ('{"type": "Topology"}', 422, "FeatureCollection"),
        ('{"type": "FeatureCollection", "features": []}', 422, "features"),
        ('{"type": "FeatureCollection", "features": {}}', 422, "features"),
        (
            '{"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}',
            422,
            "Point",
        ),
        ('{"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[0, 0]]}}', 422, "Point"),
        ('{"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0, 5]}}', 422, ""),
        ('{"type": "Feature", "geometry": "POINT(0 0)"}', 422, "geometry"),
        ('{"type": "Feature", "geometry": null, "properties": {"nope": 1}}', 422, "nope"),
    ],
)
def test_invalid_bodies(base: str, backend: str, body: str, status: int, hint: str) -> None:
    layer = f"{backend}.points"
    before = requests.get(url(base, layer, "/count"), timeout=30).text
    for method in ("post", "put"):
        response = getattr(requests, method)(
            url(base, layer), data=body, headers={"Content-Type": "application/json"}, timeout=30
        )
        assert hint in error(response, status)
    assert requests.get(url(base, layer, "/count"), timeout=30).text == before


def test_put_one_needs_a_feature(base: str, backend: str, points: list[dict]) -> None:
    target = url(base, f"{backend}.points", f"/{points[0]['id']}")
    error(requests.put(target, json=collection(), timeout=30), 422)
    error(requests.put(target, data="{not json", timeout=30), 400)
    polygon = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
    error(requests.put(target, json={"geometry": polygon}, timeout=30), 422)
    assert requests.get(target, timeout=30).json()["properties"]["name"] == "Alpha"


def test_read_only_layer_refuses_writes(base: str, backend: str) -> None:
    layer = f"{backend}-countries"
    for method, path in (("post", ""), ("put", ""), ("put", "/1"), ("delete", "/1")):
        response = getattr(requests, method)(url(base, layer, path), json=collection(), timeout=30)
        assert "read-only" in error(response, 405)
        assert "POST" not in response.headers["Allow"] and "GET" in response.headers["Allow"]
    assert requests.get(url(base, layer, "/1"), timeout=30).json()["properties"]["name"]
    error(requests.delete(url(base, f"{backend}.points"), timeout=30), 405)  # features go one by one
    error(requests.post(url(base, layer, "/count"), timeout=30), 405)


def test_openapi_describes_the_routes(base: str) -> None:
    doc = requests.get(f"{base}/openapi", params={"f": "json"}, timeout=60).json()
    for path, methods in (
        (f"{PREFIX}/{{layer}}", {"get", "post", "put"}),
        (f"{PREFIX}/{{layer}}/count", {"get"}),
        (f"{PREFIX}/{{layer}}/{{id}}", {"get", "put", "delete"}),
    ):
        assert methods <= set(doc["paths"][path]), path
    many = doc["paths"][f"{PREFIX}/{{layer}}"]
    assert {p["name"] for p in many["get"]["parameters"]} >= {
        "limit", "maxfeatures", "offset", "order_by", "dir", "lon", "lat", "tolerance", "bbox",
        "geometry", "epsg", "queryable", "attrs", "no_geom",
    }  # fmt: skip
    body = many["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.rsplit("/", 1)[1] in doc["components"]["schemas"]
    assert "text/plain" in doc["paths"][f"{PREFIX}/{{layer}}/count"]["get"]["responses"]["200"]["content"]


# -- a server of our own: configured prefix and limit, and editable polygon layers ------------
AREAS = "mapfish_areas"


@pytest.fixture(scope="module")
def own(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with ``mapfish: {prefix: /maps/mf, limit_max: 5}`` and MultiPolygon layers to edit."""
    workdir = tmp_path_factory.mktemp("mapfish")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {AREAS}")
        conn.execute(
            f"CREATE TABLE {AREAS} (id serial PRIMARY KEY, name text, geom geometry(MultiPolygon, 4326))"
        )
    gpkg = workdir / "areas.gpkg"
    subprocess.run(
        ["ogr2ogr", "-f", "GPKG", str(gpkg), f"PG:{_libpq(pg_url)}", AREAS, "-nln", AREAS, "-lco", "FID=id"],
        check=True,
    )
    config = {
        "server": {"bind": f"127.0.0.1:{free_port()}", "workers": 1, "log_level": "WARNING"},
        "sources": {
            "pg": {"type": "postgis", "url": pg_url, "pool_max": 2},
            "gpkg": {"type": "geopackage", "path": str(gpkg)},
        },
        "collections": {
            "pg-areas": {"source": "pg", "table": AREAS, "editable": True},
            "gpkg-areas": {"source": "gpkg", "layer": AREAS, "editable": True},
            "few": {"source": "pg", "table": "country_points"},
        },
        "mapfish": {"prefix": "/maps/mf", "limit_max": 5},
    }
    srv = Server(config, Path(workdir))
    yield srv.url
    srv.stop()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {AREAS}")


def test_configured_prefix_and_limit(own: str) -> None:
    layer = f"{own}/maps/mf/few"
    assert len(names(requests.get(layer, timeout=30))) == 5
    assert len(names(requests.get(layer, params={"limit": 50}, timeout=30))) == 5
    assert len(names(requests.get(layer, params={"maxfeatures": 3}, timeout=30))) == 3
    assert int(requests.get(f"{layer}/count", timeout=30).text) > 100  # a count is not limited
    assert requests.get(f"{own}{PREFIX}/few", timeout=30).status_code == 404  # not MapFish there
    assert requests.get(f"{own}/collections/few/items", params={"limit": 1}, timeout=30).status_code == 200


SQUARE = [[[10.0, 10.0], [11.0, 10.0], [11.0, 11.0], [10.0, 11.0], [10.0, 10.0]]]


@pytest.mark.parametrize(
    ("geometry", "status"),
    [
        ({"type": "Polygon", "coordinates": SQUARE}, 201),  # promoted to a one-part MultiPolygon
        ({"type": "MultiPolygon", "coordinates": [SQUARE]}, 201),
        ({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, 422),
        ({"type": "Point", "coordinates": [0, 0]}, 422),
        ({"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]]]}, 422),
        ({"type": "GeometryCollection", "geometries": [{"type": "Polygon", "coordinates": SQUARE}]}, 422),
        ({"type": "Polygon", "coordinates": [[[10, 10, 1], [11, 10, 1], [11, 11, 1], [10, 10, 1]]]}, 422),
        ({"type": "Polygon", "coordinates": [[10, 10], [11, 10]]}, 422),
        ({"type": "Polygon", "coordinates": [[[10, 10], [11, 10], [11, 11]]]}, 422),  # ring not closed
        ({"type": "MultiPolygon", "coordinates": [[[[10, 10], [11, 10], [11, 11]]]]}, 422),
        ({"type": "Polygon", "coordinates": "x"}, 422),
    ],
)
def test_geometry_must_fit_the_layer(own: str, backend: str, geometry: dict, status: int) -> None:
    layer = f"{own}/maps/mf/{backend}-areas"
    before = requests.get(f"{layer}/count", timeout=30).text
    feature = {"type": "Feature", "geometry": geometry, "properties": {"name": f"area {uuid.uuid4().hex}"}}
    response = requests.post(layer, json=collection(feature), timeout=30)
    if status != 201:
        error(response, status)
        assert requests.get(f"{layer}/count", timeout=30).text == before
        return
    assert response.status_code == 201, response.text
    (stored,) = response.json()["features"]
    try:
        assert stored["geometry"] == {"type": "MultiPolygon", "coordinates": [SQUARE]}
        again = requests.get(f"{layer}/{stored['id']}", timeout=30).json()
        assert again["geometry"]["type"] == "MultiPolygon"
        assert (
            names(requests.get(layer, params={"lon": 10.5, "lat": 10.5}, timeout=30)).count(
                feature["properties"]["name"]
            )
            == 1
        )
    finally:
        assert requests.delete(f"{layer}/{stored['id']}", timeout=30).status_code == 204
