"""REST CRUD maps over HTTP: records, their ordered layers, their MapLibre style and page."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from test_rest_layers import TIMEOUT, Tables, call, error, rest
from test_viewer import Browser, assert_same_origin, rendered

MAPS = "/maps"


@pytest.fixture()
def tables(pg, pg_url: str, gpkg_path: Path) -> Iterator[Tables]:
    found = Tables(pg, pg_url, gpkg_path)
    yield found
    found.drop()


@pytest.fixture()
def two_layers(base: str, tables: Tables) -> Iterator[list[dict[str, Any]]]:
    """A PostGIS point layer and a GeoPackage point layer, deleted afterwards."""
    made = []
    for backend in ("pg", "gpkg"):
        table = tables.make(backend)
        body = {"name": f"{backend} {table}", "source": {"type": backend, "src": table}}
        made.append(call("POST", rest(base, "/layers"), 201, json=body))
    yield made
    for layer in made:
        requests.delete(rest(base, f"/layers/{layer['id']}"), timeout=TIMEOUT)


@pytest.fixture()
def new_map(base: str) -> Iterator[Callable[..., dict[str, Any]]]:
    made: list[int] = []

    def make(**body: Any) -> dict[str, Any]:
        found = call("POST", rest(base, MAPS), 201, json=body)
        made.append(found["id"])
        return found

    yield make
    for map_id in made:
        requests.delete(rest(base, f"{MAPS}/{map_id}"), timeout=TIMEOUT)


def test_map_crud(base, two_layers, new_map):
    pg_layer, gpkg_layer = two_layers
    response = requests.post(
        rest(base, f"{MAPS}.json"),
        json={
            "name": "City of Zagreb",
            "description": "two layers",
            "bounds": "1674429.541,5684163.171,1876223.296,5816093.482",
            "epsg": 3857,
            "layers": [
                {"layer_id": gpkg_layer["id"], "style": {"circle-color": "#cc0000"}, "visible": True},
                pg_layer["id"],
            ],
        },
        timeout=TIMEOUT,
    )
    assert response.status_code == 201, response.text
    made = response.json()
    assert response.headers["Location"] == rest(base, f"{MAPS}/{made['id']}")
    assert made["name"] == "City of Zagreb" and made["epsg"] == 3857 and made["proj4"] is None
    assert made["bounds"] == [1674429.541, 5684163.171, 1876223.296, 5816093.482]
    assert made["layers"] == [
        {"layer_id": gpkg_layer["id"], "style": {"circle-color": "#cc0000"}, "visible": True},
        {"layer_id": pg_layer["id"], "style": None, "visible": True},
    ]
    assert isinstance(made["created"], int) and made["modified"] >= made["created"]
    try:
        assert call("GET", rest(base, f"{MAPS}/{made['id']}"), 200) == made
        changed = call(
            "PUT",
            rest(base, f"{MAPS}/{made['id']}.json"),
            200,
            json={"name": "Updated map name", "layers": [{"layer_id": pg_layer["id"], "visible": False}]},
        )
        assert changed["name"] == "Updated map name" and changed["description"] == "two layers"
        assert changed["layers"] == [{"layer_id": pg_layer["id"], "style": None, "visible": False}]
        merc = (
            "+proj=merc +a=6378137 +b=6378137 +lat_ts=0.0 +lon_0=0.0 +x_0=0.0 +y_0=0 +k=1.0 +units=m "
            "+nadgrids=@null +no_defs"
        )
        assert call("PUT", rest(base, f"{MAPS}/{made['id']}"), 200, json={"proj4": merc})["epsg"] == 3857
        call("POST", rest(base, f"{MAPS}/{made['id']}.json"), 204, params={"_method": "DELETE"})
        error("GET", rest(base, f"{MAPS}/{made['id']}"), 404)
        error("DELETE", rest(base, f"{MAPS}/{made['id']}"), 404)
    finally:
        requests.delete(rest(base, f"{MAPS}/{made['id']}"), timeout=TIMEOUT)


def test_map_list_order_and_paging(base, new_map):
    tag = re.sub(r"\W", "", str(id(new_map)))
    made = [new_map(name=f"{letter} {tag}") for letter in "bca"]
    ids = {m["id"] for m in made}

    def names(**params: Any) -> list[str]:
        body = call("GET", rest(base, MAPS), 200, params={"perpage": 1000, **params})
        assert body["type"] == "maps"
        return [m["name"] for m in body["data"] if m["id"] in ids]

    assert names(order_by="name") == [f"{c} {tag}" for c in "abc"]
    assert names(order_by="name:desc") == [f"{c} {tag}" for c in "cba"]
    assert names(order_by="created:asc") == [f"{c} {tag}" for c in "bca"]
    assert names(order_by="modified:desc,id:desc") == [f"{c} {tag}" for c in "acb"]
    body = call("GET", rest(base, MAPS), 200, params={"perpage": 2, "order_by": "id"})
    assert len(body["data"]) == 2 and body["total"] >= 3
    assert "total" not in call("GET", rest(base, MAPS), 200, params={"nototal": "1"})
    for hostile in ("name;drop table records", "owner", "name:asc:desc"):
        error("GET", rest(base, MAPS), 400, params={"order_by": hostile})


def test_bad_map_bodies(base, two_layers, new_map):
    before = call("GET", rest(base, MAPS), 200)["total"]
    layer_id = two_layers[0]["id"]
    bad = [
        {},
        {"name": ""},
        {"name": "m", "colour": "red"},
        {"name": "m", "bounds": "1,2,3"},
        {"name": "m", "bounds": [0, 5, 1, 4]},
        {"name": "m", "bounds": ["a", 1, 2, 3]},
        {"name": "m", "epsg": "not a code"},
        {"name": "m", "epsg": 999999},
        {"name": "m", "proj4": "+proj=nonsense"},
        {"name": "m", "layers": [999999999]},
        {"name": "m", "layers": [{"layer_id": layer_id, "style": {"fill-color; drop": "#fff"}}]},
        {"name": "m", "layers": [{"layer_id": layer_id, "style": "red"}]},
        {"name": "m", "layers": [{"layer_id": layer_id, "visible": "yes"}]},
        {"name": "m", "layers": [{"layer_id": layer_id, "opacity": 1}]},
        {"name": "m", "layers": "1,2"},
    ]
    for body in bad:
        error("POST", rest(base, MAPS), 422, json=body)
    error("POST", rest(base, MAPS), 400, data=b"{")
    assert call("GET", rest(base, MAPS), 200)["total"] == before
    made = new_map(name="ok")
    error("PUT", rest(base, f"{MAPS}/{made['id']}"), 422, json={"layers": [999999999]})
    assert call("GET", rest(base, f"{MAPS}/{made['id']}"), 200)["layers"] == []


def test_map_layers_in_map_order(base, two_layers, new_map):
    pg_layer, gpkg_layer = two_layers
    made = new_map(
        name="ordered",
        layers=[
            {"layer_id": gpkg_layer["id"], "style": {"circle-radius": 9}, "visible": False},
            {"layer_id": pg_layer["id"]},
        ],
    )
    body = call("GET", rest(base, f"{MAPS}/{made['id']}/layers.json"), 200)
    assert body["type"] == "layers" and body["total"] == 2
    first, second = body["data"]
    assert first["id"] == gpkg_layer["id"] and second["id"] == pg_layer["id"]
    assert first["collection"] == gpkg_layer["collection"] and first["type"] == "point"
    assert first["map_id"] == made["id"] and first["order"] == 0 and second["order"] == 1
    assert first["visible"] is False and first["style"] == {"circle-radius": 9}
    assert second["visible"] is True
    page = call("GET", rest(base, f"{MAPS}/{made['id']}/layers"), 200, params={"perpage": 1, "page": 2})
    assert [layer["id"] for layer in page["data"]] == [pg_layer["id"]]
    # Deleting a layer takes it out of the maps it was in.
    call("DELETE", rest(base, f"/layers/{gpkg_layer['id']}"), 204)
    assert [e["layer_id"] for e in call("GET", rest(base, f"{MAPS}/{made['id']}"), 200)["layers"]] == [
        pg_layer["id"]
    ]
    assert [layer["id"] for layer in call("GET", rest(base, f"{MAPS}/{made['id']}/layers"), 200)["data"]] == [
        pg_layer["id"]
    ]
    error("GET", rest(base, f"{MAPS}/999999999/layers"), 404)


def test_map_style_draws_composite_tiles_with_the_map_styles(base, two_layers, new_map):
    pg_layer, gpkg_layer = two_layers
    made = new_map(
        name="styled",
        layers=[
            {"layer_id": pg_layer["id"], "style": {"circle-color": "#cc0000", "circle-radius": 7}},
            {"layer_id": gpkg_layer["id"], "visible": False},
        ],
    )
    style = call("GET", rest(base, f"{MAPS}/{made['id']}/style.json"), 200)
    assert style["version"] == 8 and style["name"] == "styled"
    (source,) = style["sources"].values()
    tilejson_url = source["url"]
    wanted = f"{pg_layer['collection']},{gpkg_layer['collection']}"
    assert urlparse(tilejson_url).path == "/tiles/WebMercatorQuad/tilejson.json"
    assert parse_qs(urlparse(tilejson_url).query)["collections"] == [wanted]
    tilejson = requests.get(tilejson_url, timeout=TIMEOUT).json()
    template = tilejson["tiles"][0]
    assert (
        "/tiles/WebMercatorQuad/{z}/{y}/{x}" in template or "/tiles/WebMercatorQuad/{z}/{x}/{y}" in template
    )
    tile = requests.get(template.replace("{z}", "0").replace("{x}", "0").replace("{y}", "0"), timeout=TIMEOUT)
    assert tile.status_code == 200 and tile.content
    layers = {layer["id"]: layer for layer in style["layers"]}
    pg_circle = layers[f"{pg_layer['collection']}/circle"]
    assert pg_circle["paint"]["circle-color"] == "#cc0000" and pg_circle["paint"]["circle-radius"] == 7
    assert pg_circle.get("layout", {}).get("visibility") != "none"
    assert layers[f"{gpkg_layer['collection']}/circle"]["layout"]["visibility"] == "none"
    assert style["metadata"]["geoharbor:bounds"] == pytest.approx([-70, -30, 16, 46])
    # The map's own bounds, in its CRS, are what the page fits.
    call(
        "PUT",
        rest(base, f"{MAPS}/{made['id']}"),
        200,
        json={"bounds": [0, 0, 1113194.91, 1118889.97], "epsg": 3857},
    )
    bounds = call("GET", rest(base, f"{MAPS}/{made['id']}/style"), 200)["metadata"]["geoharbor:bounds"]
    assert bounds == pytest.approx([0, 0, 10, 10], abs=1e-6)


def test_map_page(base, two_layers, new_map):
    pg_layer, gpkg_layer = two_layers
    made = new_map(name="<b>page</b>", layers=[pg_layer["id"], gpkg_layer["id"]])
    for path in (f"{MAPS}/{made['id']}/render/iframe", f"{MAPS}/{made['id']}/render.json"):
        response = requests.get(rest(base, path), timeout=TIMEOUT)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
        page = response.text
        assert rest(base, f"{MAPS}/{made['id']}/style.json") in html.unescape(page)
        assert "<b>page</b>" not in page and "&lt;b&gt;page&lt;/b&gt;" in page  # the name is escaped
        assets = re.findall(r'(?:src|href)="([^"]*/assets/geoharbor/[^"]*)"', page)
        assert len(assets) == 4
        for asset in assets:
            assert requests.get(html.unescape(asset), timeout=TIMEOUT).status_code == 200
        assert f'href="{base}/collections/{pg_layer["collection"]}"' in page
    error("GET", rest(base, f"{MAPS}/{made['id']}/render/png"), 400)
    error("GET", rest(base, f"{MAPS}/999999999/render/iframe"), 404)


def test_map_page_draws_features_in_a_browser(base, chromium, two_layers, new_map, tmp_path):
    """Headless Chromium runs the page: the map draws features from the composite tiles, offline."""
    made = new_map(name="browser", layers=[layer["id"] for layer in two_layers])
    browser = Browser(chromium, tmp_path)
    try:
        page = browser.open(rest(base, f"{MAPS}/{made['id']}/render/iframe"))
        assert rendered(page) > 0
        wanted = ",".join(layer["collection"] for layer in two_layers)
        tiles = [
            u for u in page.requests if re.fullmatch(r"/tiles/WebMercatorQuad/\d+/\d+/\d+", urlparse(u).path)
        ]
        assert tiles and all(parse_qs(urlparse(u).query)["collections"] == [wanted] for u in tiles)
        assert_same_origin(page, base)
    finally:
        browser.close()
