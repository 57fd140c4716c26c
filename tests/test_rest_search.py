"""REST CRUD search across layers and features at a point, on PostGIS and GeoPackage layers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from test_rest_layers import ROWS, TIMEOUT, Tables, call, error, rest

#: Metres from (15, 45) to (15.001, 45.001), the "alpine" row (geodesic, WGS84).
ALPINE_M = 135.9


@pytest.fixture()
def layers(base: str, pg, pg_url: str, gpkg_path: Path) -> Iterator[dict[str, dict[str, Any]]]:
    """One layer per backend over fresh tables holding :data:`ROWS`."""
    tables = Tables(pg, pg_url, gpkg_path)
    made = {}
    for backend in ("pg", "gpkg"):
        table = tables.make(backend)
        body = {"name": f"search {table}", "source": {"type": backend, "src": table}}
        made[backend] = call("POST", rest(base, "/layers"), 201, json=body)
    yield made
    for layer in made.values():
        requests.delete(rest(base, f"/layers/{layer['id']}"), timeout=TIMEOUT)
    tables.drop()


def search(base: str, status: int = 200, **params: Any) -> dict[str, Any]:
    return call("GET", rest(base, "/search.json"), status, params=params)


def test_search_is_case_insensitive_and_literal(base, backend, layers):
    layer = layers[backend]
    found = search(base, query="ALP", fields=f"{layer['id']}~name")
    assert found["type"] == "search" and found["total"] == 2 and found["page"] == 1
    assert sorted(hit["data"]["name"] for hit in found["data"]) == ["Alpha", "alpine"]
    hit = found["data"][0]
    assert set(hit) == {"layer_id", "collection", "__id", "data"} and hit["layer_id"] == layer["id"]
    assert hit["collection"] == layer["collection"]
    item = requests.get(
        f"{base}/collections/{layer['collection']}/items/{hit['__id']}", timeout=TIMEOUT
    ).json()
    assert item["properties"]["name"] == hit["data"]["name"]
    # % and _ are characters to find, not wildcards.
    assert [h["data"]["name"] for h in search(base, query="%_", fields=f"{layer['id']}~name")["data"]] == [
        "100%_sure"
    ]
    assert search(base, query="' OR 1=1 --", fields=f"{layer['id']}~name")["data"] == []
    # Several fields: a match on any of them; the values of the searched fields come back.
    both = search(base, query="ann", fields=f"{layer['id']}~name,__owner")
    assert sorted(h["data"]["name"] for h in both["data"]) == ["Alpha", "alpine"]
    assert all(set(h["data"]) == {"name", "__owner"} for h in both["data"])
    # A third part orders each layer's hits.
    ordered = search(base, query="a", fields=f"{layer['id']}~name~value:desc")
    values = [row[1] for row in ROWS if "a" in row[0].lower()]
    names = {row[1]: row[0] for row in ROWS}
    assert [h["data"]["name"] for h in ordered["data"]] == [names[v] for v in sorted(values, reverse=True)]


def test_search_across_layers_with_paging(base, layers):
    pg_layer, gpkg_layer = layers["pg"], layers["gpkg"]
    fields = f"{pg_layer['id']}~name;{gpkg_layer['id']}~name"
    everything = search(base, query="a", fields=fields, perpage=100)
    expected = sum("a" in row[0].lower() for row in ROWS)
    assert everything["total"] == 2 * expected and len(everything["data"]) == 2 * expected
    assert [h["layer_id"] for h in everything["data"]] == [pg_layer["id"]] * expected + [
        gpkg_layer["id"]
    ] * expected
    pages = []
    for number in (1, 2, 3):
        page = search(base, query="a", fields=fields, perpage=3, page=number)
        assert page["page"] == number and page["total"] == 2 * expected
        pages += page["data"]
    assert pages == everything["data"][:9]
    assert "total" not in search(base, query="a", fields=fields, nototal="true")
    # Without fields: every text field of every layer.
    unscoped = search(base, query="gamma", perpage=1000)
    mine = [h for h in unscoped["data"] if h["layer_id"] in (pg_layer["id"], gpkg_layer["id"])]
    assert len(mine) == 2 and all(h["data"]["name"] == "Gamma" for h in mine)


def test_search_ranked_by_distance(base, backend, layers):
    layer = layers[backend]
    found = search(base, query="a", fields=f"{layer['id']}~name", x=15, y=45)
    names = [h["data"]["name"] for h in found["data"]]
    assert names == ["Alpha", "alpine", "Beta", "Gamma"]
    distances = [h["distance"] for h in found["data"]]
    assert distances[0] == pytest.approx(0, abs=0.01)
    assert distances[1] == pytest.approx(ALPINE_M, rel=0.01)
    assert distances == sorted(distances) and found["total"] == 4
    second = search(base, query="a", fields=f"{layer['id']}~name", x=15, y=45, perpage=1, page=2)
    assert [h["data"]["name"] for h in second["data"]] == ["alpine"]
    far = search(base, query="a", fields=f"{layer['id']}~name", x=-70, y=-30)
    assert far["data"][0]["data"]["name"] == "Gamma"


def test_bad_search_requests(base, layers):
    layer_id = layers["pg"]["id"]
    for params in (
        {},
        {"query": ""},
        {"query": "a", "fields": f"{layer_id}~nosuch"},
        {"query": "a", "fields": f"{layer_id}~name;drop table x"},
        {"query": "a", "fields": "abc~name"},
        {"query": "a", "fields": f"{layer_id}~name~value:sideways"},
        {"query": "a", "fields": f"{layer_id}~name~x~y"},
        {"query": "a", "x": "15"},
        {"query": "a", "x": "east", "y": "1"},
        {"query": "a", "x": "500", "y": "1"},
        {"query": "x" * 500},
        {"query": "a", "perpage": "0"},
    ):
        assert set(search(base, 400, **params)) == {"code", "msg"}, params
    error("GET", rest(base, "/search"), 404, params={"query": "a", "fields": "999999999~name"})


def at_point(base: str, status: int = 200, **params: Any) -> dict[str, Any]:
    return call("GET", rest(base, "/geo_utils/features_at_point"), status, params=params)


def test_features_at_point(base, backend, layers):
    layer = layers[backend]
    near = at_point(base, layer_id=layer["id"], point_x=15, point_y=45, buffer=200)
    assert near["type"] == "features" and near["total"] == 2
    assert sorted(f["data"]["name"] for f in near["data"]) == ["Alpha", "alpine"]
    first = near["data"][0]
    assert first["layer_id"] == layer["id"] and first["__geometry"].startswith("POINT (15")
    assert {"__id", "__xmin", "__ymax", "__owner", "data"} <= set(first)
    closer = at_point(base, layer_id=layer["id"], point_x=15, point_y=45, buffer=ALPINE_M - 5)
    assert [f["data"]["name"] for f in closer["data"]] == ["Alpha"]
    assert at_point(base, layer_id=layer["id"], point_x=15, point_y=45, buffer=ALPINE_M + 5)["total"] == 2
    assert at_point(base, layer_id=layer["id"], point_x=15.0005, point_y=45.0005)["data"] == []  # 1 m default
    # The point in Web Mercator; the answer in that srid too.
    merc = at_point(
        base,
        layer_id=layer["id"],
        srid=3857,
        point_x=1669792.36,
        point_y=5621521.49,
        buffer=50,
        geometry="geojson",
    )
    assert [f["data"]["name"] for f in merc["data"]] == ["Alpha"]
    assert merc["data"][0]["__geometry"]["coordinates"] == pytest.approx([1669792.36, 5621521.49], abs=0.01)


def test_features_at_point_of_several_layers(base, layers):
    ids = f"{layers['pg']['id']},{layers['gpkg']['id']}"
    found = at_point(base, layer_id=ids, point_x=15, point_y=45, buffer=1000)
    assert found["total"] == 4
    assert [f["layer_id"] for f in found["data"]] == [layers["pg"]["id"]] * 2 + [layers["gpkg"]["id"]] * 2
    page = at_point(base, layer_id=ids, point_x=15, point_y=45, buffer=1000, perpage=1, page=3)
    assert [f["layer_id"] for f in page["data"]] == [layers["gpkg"]["id"]] and page["total"] == 4
    assert page["data"][0]["__id"] == found["data"][2]["__id"]


def test_bad_features_at_point_requests(base, layers):
    layer_id = layers["pg"]["id"]
    good = {"layer_id": layer_id, "point_x": 15, "point_y": 45}
    for change in (
        {"layer_id": ""},
        {"layer_id": "abc"},
        {"point_x": None},
        {"point_y": "north"},
        {"buffer": "-5"},
        {"buffer": "0"},
        {"buffer": "1e9"},
        {"srid": "wgs84"},
        {"srid": "999999"},
        {"point_x": "500"},
        {"geometry": "svg"},
    ):
        params = {k: v for k, v in {**good, **change}.items() if v is not None}
        assert set(at_point(base, 400, **params)) == {"code", "msg"}, change
    error("GET", rest(base, "/geo_utils/features_at_point"), 404, params={**good, "layer_id": "999999999"})
