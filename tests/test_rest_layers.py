"""REST CRUD layers and features over HTTP, on fresh PostGIS tables and GeoPackage layers.

Each test makes its own table (a unique name) in PostGIS and, for the GeoPackage
backend, copies it into the server's GeoPackage with ``ogr2ogr``; the layer is then
created through the REST API like a client would. The server runs 2 gunicorn
workers, so "published at once" is checked by asking several times.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import requests
from conftest import _libpq
from lxml import etree

REST = "/rest/1"
ASKS = 8  # requests per check: with 2 workers, both answer some of them
TIMEOUT = 30

#: Rows of every fresh table: (name, value, lon, lat, owner).
ROWS = [
    ("Alpha", 10, 15.0, 45.0, "ann"),
    ("Beta", 20, 16.0, 46.0, "bob"),
    ("Gamma", 30, -70.0, -30.0, None),
    ("alpine", 40, 15.001, 45.001, "ann"),
    ("100%_sure", 5, 0.0, 0.0, None),
]


def rest(base: str, path: str) -> str:
    return f"{base}{REST}{path}"


def call(method: str, url: str, status: int, **kwargs: Any) -> Any:
    """One request; asserts the status and returns the JSON body (None when empty)."""
    response = requests.request(method, url, timeout=TIMEOUT, **kwargs)
    assert response.status_code == status, (method, url, response.status_code, response.text[:500])
    if response.status_code == 204 or not response.content:
        return None
    assert response.headers["Content-Type"].startswith("application/json"), response.headers["Content-Type"]
    return response.json()


def error(method: str, url: str, status: int, **kwargs: Any) -> str:
    """A request that must fail with the REST error document; returns its message."""
    body = call(method, url, status, **kwargs)
    assert set(body) == {"code", "msg"} and body["msg"], body
    return body["msg"]


def collection_ids(base: str) -> set[str]:
    return {c["id"] for c in requests.get(f"{base}/collections", timeout=TIMEOUT).json()["collections"]}


def seen_by_all(base: str, cid: str) -> bool:
    return all(cid in collection_ids(base) for _ in range(ASKS))


def gone_from_all(base: str, cid: str) -> bool:
    return all(cid not in collection_ids(base) for _ in range(ASKS))


class Tables:
    """Fresh tables with :data:`ROWS` in PostGIS and, when asked, copied to the GeoPackage."""

    def __init__(self, pg: psycopg.Connection, pg_url: str, gpkg_path: Path) -> None:
        self.pg = pg
        self.pg_url = pg_url
        self.gpkg_path = gpkg_path
        self.made: list[str] = []

    def make(self, backend: str, geometry: str = "Point") -> str:
        name = f"rest_l_{uuid.uuid4().hex[:10]}"
        self.pg.execute(
            f'CREATE TABLE "{name}" (id serial PRIMARY KEY, name text, value int, '  # noqa: S608 - test names
            f"label text NOT NULL DEFAULT 'x', \"__owner\" text, geom geometry({geometry}, 4326))"
        )
        self.made.append(name)
        if geometry == "Point":
            for row_name, value, lon, lat, owner in ROWS:
                self.pg.execute(
                    f'INSERT INTO "{name}" (name, value, "__owner", geom) '  # noqa: S608
                    "VALUES (%s, %s, %s, ST_SetSRID(ST_MakePoint(%s, %s), 4326))",
                    (row_name, value, owner, lon, lat),
                )
        if backend == "gpkg":
            subprocess.run(
                [
                    "ogr2ogr",
                    "-f",
                    "GPKG",
                    "-update",
                    str(self.gpkg_path),
                    f"PG:{_libpq(self.pg_url)}",
                    name,
                    "-nln",
                    name,
                    "-lco",
                    "FID=id",
                    "-preserve_fid",
                ],
                check=True,
                capture_output=True,
            )
        return name

    def count(self, backend: str, name: str) -> int:
        """Rows in the table, read behind the server's back."""
        if backend == "pg":
            return self.pg.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]  # noqa: S608
        import sqlite3

        with sqlite3.connect(self.gpkg_path) as conn:
            return conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]  # noqa: S608

    def drop(self) -> None:
        for name in self.made:
            self.pg.execute(f'DROP TABLE IF EXISTS "{name}"')


@pytest.fixture()
def tables(pg: psycopg.Connection, pg_url: str, gpkg_path: Path) -> Iterator[Tables]:
    found = Tables(pg, pg_url, gpkg_path)
    yield found
    found.drop()


@pytest.fixture()
def new_layer(base: str, tables: Tables) -> Iterator[Callable[..., dict[str, Any]]]:
    """Create layers through the API over fresh tables; deletes what is left afterwards."""
    made: list[int] = []

    def make(backend: str, table: str | None = None, **body: Any) -> dict[str, Any]:
        table = table or tables.make(backend)
        payload = {"name": f"Layer {table}", "source": {"type": backend, "src": table}, **body}
        layer = call("POST", rest(base, "/layers"), 201, json=payload)
        made.append(layer["id"])
        layer["table"] = table
        return layer

    yield make
    for layer_id in made:
        requests.delete(rest(base, f"/layers/{layer_id}"), timeout=TIMEOUT)


def features(base: str, layer_id: int, **params: Any) -> dict[str, Any]:
    return call("GET", rest(base, f"/layers/{layer_id}/features"), 200, params=params)


# -- layers ------------------------------------------------------------------------------------
def test_layer_is_published_on_every_worker_and_unpublished_on_delete(base, backend, tables, new_layer):
    layer = new_layer(backend)
    cid = layer["collection"]
    assert seen_by_all(base, cid)
    items = requests.get(f"{base}/collections/{cid}/items", timeout=TIMEOUT).json()
    assert sorted(f["properties"]["name"] for f in items["features"]) == sorted(r[0] for r in ROWS)
    tile = requests.get(f"{base}/collections/{cid}/tiles/WebMercatorQuad/0/0/0", timeout=TIMEOUT)
    assert tile.status_code == 200 and tile.content
    assert call("DELETE", rest(base, f"/layers/{layer['id']}"), 204) is None
    assert gone_from_all(base, cid)
    for _ in range(ASKS):
        assert requests.get(f"{base}/collections/{cid}/items", timeout=TIMEOUT).status_code == 404
    error("GET", rest(base, f"/layers/{layer['id']}"), 404)
    error("GET", rest(base, f"/layers/{layer['id']}/features"), 404)
    assert tables.count(backend, layer["table"]) == len(ROWS)  # the table stays


def test_layer_representation(base, backend, new_layer):
    layer = new_layer(backend, title="Fresh points", description="points for the test", styles={"k": 1})
    assert isinstance(layer["id"], int)
    assert layer["name"] == f"Layer {layer['table']}"
    assert layer["title"] == "Fresh points" and layer["description"] == "points for the test"
    assert layer["type"] == "point" and layer["geometry_type"].upper() == "POINT"
    assert orjson.loads(layer["source"]) == {
        "type": backend,
        "src": layer["table"],
        "connection_id": backend,
    }
    assert layer["epsg"] == 4326
    extent = [layer[k] for k in ("x_min", "y_min", "x_max", "y_max")]
    assert extent == pytest.approx([-70.0, -30.0, 16.0, 46.0])
    assert isinstance(layer["created"], int) and layer["modified"] >= layer["created"]
    assert layer["styles"] == {"k": 1} and layer["visible"] is True and layer["editable"] is True
    assert layer["collection"] == f"Layer_{layer['table']}"  # derived from the name, no dot
    links = {link["rel"]: link["href"] for link in layer["links"]}
    assert links["collection"] == f"{base}/collections/{layer['collection']}"
    assert links["features"] == rest(base, f"/layers/{layer['id']}/features")
    for rel in ("self", "collection", "items", "tiles", "features"):
        assert requests.get(links[rel], timeout=TIMEOUT).status_code == 200, rel
    again = call("GET", rest(base, f"/layers/{layer['id']}"), 200)
    assert again == {k: v for k, v in layer.items() if k != "table"}
    assert "columns" not in again


def test_columns(base, backend, new_layer):
    layer = new_layer(backend)
    columns = call("GET", rest(base, f"/layers/{layer['id']}/columns"), 200)
    assert columns["type"] == "columns" and columns["total"] == 4
    by_name = {c["name"]: c for c in columns["data"]}
    assert set(by_name) == {"name", "value", "label", "__owner"}  # not the key, not the geometry
    assert by_name["name"]["type"] == "text" and by_name["name"]["not_null"] is False
    assert by_name["value"]["type"] == "number"
    assert by_name["label"]["not_null"] is True
    expanded = call("GET", rest(base, f"/layers/{layer['id']}.json"), 200, params={"expand": "columns"})
    assert expanded["columns"] == columns["data"]


def test_create_with_source_text_explicit_collection_and_map(base, backend, tables, new_layer):
    table = tables.make(backend)
    the_map = call("POST", rest(base, "/maps"), 201, json={"name": f"map of {table}"})
    try:
        cid = f"explicit-{table}"
        # The reference's own example sends source as JSON text.
        layer = new_layer(
            backend,
            table,
            source=orjson.dumps({"type": backend, "src": table}).decode(),
            collection=cid,
            mid=the_map["id"],
            type="point",
        )
        assert layer["collection"] == cid and seen_by_all(base, cid)
        in_map = call("GET", rest(base, f"/maps/{the_map['id']}"), 200)["layers"]
        assert in_map == [{"layer_id": layer["id"], "style": None, "visible": True}]
        # The same collection id again is a conflict; the same name gets a numbered id.
        msg = error(
            "POST",
            rest(base, "/layers"),
            409,
            json={"name": "x", "source": {"type": backend, "src": table}, "collection": cid},
        )
        assert cid in msg
        first = new_layer(backend, table, name=f"twin {table}")
        second = new_layer(backend, table, name=f"twin {table}")
        assert first["collection"] == f"twin_{table}" and second["collection"] == f"twin_{table}_2"
        assert seen_by_all(base, second["collection"])
    finally:
        call("DELETE", rest(base, f"/maps/{the_map['id']}"), 204)


def test_update_layer(base, backend, new_layer):
    layer = new_layer(backend)
    old = layer["collection"]
    moved = f"moved-{layer['table']}"
    changed = call(
        "PUT",
        rest(base, f"/layers/{layer['id']}.json"),
        200,
        json={"name": "Renamed", "visible": False, "styles": [1, 2], "collection": moved, "title": "T2"},
    )
    assert changed["name"] == "Renamed" and changed["visible"] is False and changed["styles"] == [1, 2]
    assert changed["title"] == "T2" and changed["collection"] == moved
    assert changed["modified"] >= layer["modified"] and changed["created"] == layer["created"]
    assert seen_by_all(base, moved) and gone_from_all(base, old)
    assert requests.get(f"{base}/collections/{moved}", timeout=TIMEOUT).json()["title"] == "T2"
    # Members not given stay as they were.
    again = call("PUT", rest(base, f"/layers/{layer['id']}"), 200, json={"description": "d"})
    assert again["name"] == "Renamed" and again["visible"] is False and again["description"] == "d"
    error("PUT", rest(base, f"/layers/{layer['id']}"), 422, json={"name": ""})
    error(
        "PUT", rest(base, f"/layers/{layer['id']}"), 422, json={"source": {"type": backend, "src": "no_such"}}
    )
    assert call("GET", rest(base, f"/layers/{layer['id']}"), 200)["collection"] == moved
    error("PUT", rest(base, "/layers/999999999"), 404, json={"name": "x"})


def test_list_layers_paging_order_and_expand(base, backend, tables, new_layer):
    table = tables.make(backend)
    mine = [new_layer(backend, table, name=f"{letter} {table}") for letter in "bca"]
    ids = {layer["id"] for layer in mine}

    def listed(**params: Any) -> list[dict[str, Any]]:
        body = call("GET", rest(base, "/layers.json"), 200, params=params)
        assert body["type"] == "layers" and body["page"] == int(params.get("page", 1))
        return body["data"]

    names = [layer["name"] for layer in listed(order_by="name:desc", perpage=1000) if layer["id"] in ids]
    assert names == [f"{letter} {table}" for letter in "cba"]
    by_id = [layer["id"] for layer in listed(order_by="id:asc", perpage=1000) if layer["id"] in ids]
    assert by_id == sorted(ids)
    body = call("GET", rest(base, "/layers"), 200, params={"perpage": 1, "page": 2, "order_by": "id"})
    assert len(body["data"]) == 1 and body["total"] >= 3 and body["page"] == 2
    everything = listed(perpage=1000, order_by="id")
    assert body["data"][0]["id"] == everything[1]["id"]
    assert listed(perpage=1000, page=1000) == []
    assert "total" not in call("GET", rest(base, "/layers"), 200, params={"nototal": "true"})
    expanded = [layer for layer in listed(perpage=1000, expand="columns") if layer["id"] in ids]
    assert len(expanded) == 3 and all(len(layer["columns"]) == 4 for layer in expanded)
    # Configured collections are not layers.
    assert not {"pg-countries", "gpkg-countries"} & {layer["collection"] for layer in everything}
    for hostile in ("name;drop table x", "nosuch", "name:sideways", "created:desc)"):
        error("GET", rest(base, "/layers"), 400, params={"order_by": hostile})
    for bad in ({"page": "0"}, {"perpage": "x"}):
        error("GET", rest(base, "/layers"), 400, params=bad)


def test_bad_layer_bodies_create_nothing(base, backend, tables):
    table = tables.make(backend)
    before = call("GET", rest(base, "/layers"), 200, params={"perpage": 1000})["total"]
    source = {"type": backend, "src": table}
    bad = [
        {"source": source},  # no name
        {"name": "n"},  # no source
        {"name": "n", "source": {"type": "shapefile", "src": table}},
        {"name": "n", "source": {"type": backend}},
        {"name": "n", "source": {"type": backend, "src": "no_such_table"}},
        {"name": "n", "source": "{not json"},
        {"name": "n", "source": {"type": backend, "src": table, "connection_id": "nope"}},
        {"name": "n", "source": source, "collection": "has space"},
        {"name": "n", "source": source, "mid": 999999999},
        {"name": "n", "source": source, "colour": "red"},  # unknown member
        {"name": 5, "source": source},
        {"name": "n", "source": source, "visible": "perhaps"},
    ]
    for body in bad:
        error("POST", rest(base, "/layers"), 422, json=body)
    error("POST", rest(base, "/layers"), 400, data=b"{not json")
    error("POST", rest(base, "/layers"), 422, data=b"[1, 2]")
    assert call("GET", rest(base, "/layers"), 200, params={"perpage": 1000})["total"] == before


def test_method_override_and_json_suffix(base, backend, new_layer):
    layer = new_layer(backend)
    path = f"/layers/{layer['id']}"
    assert call("GET", rest(base, f"{path}.json"), 200)["id"] == layer["id"]
    changed = call(
        "POST", rest(base, f"{path}.json"), 200, params={"_method": "PUT"}, json={"name": "via override"}
    )
    assert changed["name"] == "via override"
    made = call(
        "GET",
        rest(base, f"{path}/features.json"),
        201,
        params={"_method": "POST"},
        data=orjson.dumps({"data": {"name": "override"}, "geometry": "POINT(1 2)"}),
    )
    assert made["data"]["name"] == "override"
    call("POST", rest(base, f"{path}/features/{made['__id']}.json"), 204, params={"_method": "DELETE"})
    call("POST", rest(base, f"{path}.json"), 204, params={"_method": "DELETE"})
    assert gone_from_all(base, layer["collection"])


def test_read_only_layer_refuses_writes(base, backend, tables, new_layer):
    layer = new_layer(backend, editable=False)
    assert layer["editable"] is False
    body = {"data": {"name": "no"}, "geometry": "POINT(1 1)"}
    error("POST", rest(base, f"/layers/{layer['id']}/features"), 405, json=body)
    error("DELETE", rest(base, f"/layers/{layer['id']}/features/1"), 405)
    assert tables.count(backend, layer["table"]) == len(ROWS)


# -- features ----------------------------------------------------------------------------------
def test_feature_created_as_wkt_is_geojson_in_ogc(base, backend, tables, new_layer):
    layer = new_layer(backend)
    url = rest(base, f"/layers/{layer['id']}/features")
    response = requests.post(
        url, data=b'{"data": {"name": "myname", "value": 995}, "geometry": "POINT(15 45)"}', timeout=TIMEOUT
    )
    assert response.status_code == 201, response.text
    made = response.json()
    fid = made["__id"]
    assert response.headers["Location"] == f"{url}/{fid}"
    assert made["__geometry"] == "POINT (15 45)" and made["data"]["name"] == "myname"
    assert made["data"]["value"] == 995 and made["data"]["label"] == "x"  # the column default
    assert [made[k] for k in ("__xmin", "__ymin", "__xmax", "__ymax")] == [15, 45, 15, 45]
    item = requests.get(f"{base}/collections/{layer['collection']}/items/{fid}", timeout=TIMEOUT).json()
    assert item["geometry"] == {"type": "Point", "coordinates": [15, 45]}
    assert item["properties"]["name"] == "myname"
    assert tables.count(backend, layer["table"]) == len(ROWS) + 1
    # Only the members given change.
    changed = call("PUT", f"{url}/{fid}.json", 200, json={"data": {"value": 999}})
    assert changed["data"]["name"] == "myname" and changed["data"]["value"] == 999
    assert changed["__geometry"] == "POINT (15 45)"
    moved = call("PUT", f"{url}/{fid}", 200, json={"geometry": {"type": "Point", "coordinates": [16, 43]}})
    assert moved["__geometry"] == "POINT (16 43)" and moved["data"]["value"] == 999
    assert call("GET", f"{url}/{fid}", 200) == moved
    item = requests.get(f"{base}/collections/{layer['collection']}/items/{fid}", timeout=TIMEOUT).json()
    assert item["geometry"]["coordinates"] == [16, 43] and item["properties"]["value"] == 999
    call("DELETE", f"{url}/{fid}", 204)
    error("GET", f"{url}/{fid}", 404)
    assert (
        requests.get(f"{base}/collections/{layer['collection']}/items/{fid}", timeout=TIMEOUT).status_code
        == 404
    )
    error("DELETE", f"{url}/{fid}", 404)
    assert tables.count(backend, layer["table"]) == len(ROWS)


def test_feature_shape_and_geometry_formats(base, backend, new_layer):
    layer = new_layer(backend)
    page = features(base, layer["id"], order_by="value")
    assert page["type"] == "features" and page["total"] == len(ROWS) and page["page"] == 1
    first = page["data"][0]
    assert set(first) == {
        "__id",
        "__owner",
        "__created",
        "__modified",
        "__xmin",
        "__ymin",
        "__xmax",
        "__ymax",
        "__geometry",
        "data",
    }
    assert first["data"] == {
        "name": "100%_sure",
        "value": 5,
        "label": "x",
    }  # __owner is not an attribute here
    assert first["__created"] is None and first["__modified"] is None
    alpha = next(f for f in page["data"] if f["data"]["name"] == "Alpha")
    assert alpha["__owner"] == "ann" and alpha["__geometry"] == "POINT (15 45)"
    as_geojson = features(base, layer["id"], geometry="geojson", order_by="value")["data"]
    assert next(f for f in as_geojson if f["data"]["name"] == "Alpha")["__geometry"] == {
        "type": "Point",
        "coordinates": [15, 45],
    }
    kml = next(f for f in features(base, layer["id"], geometry="kml")["data"] if f["data"]["name"] == "Alpha")
    root = etree.fromstring(kml["__geometry"].encode())
    assert (
        etree.QName(root).localname == "Point"
        and etree.QName(root).namespace == "http://www.opengis.net/kml/2.2"
    )
    assert [float(v) for v in root.findtext("{*}coordinates").split(",")] == [15, 45]
    gml = next(f for f in features(base, layer["id"], geometry="gml")["data"] if f["data"]["name"] == "Alpha")
    root = etree.fromstring(gml["__geometry"].encode())
    assert etree.QName(root).namespace == "http://www.opengis.net/gml/3.2"
    assert root.get("srsName") == "urn:ogc:def:crs:OGC::CRS84"
    assert [float(v) for v in root.findtext("{*}pos").split()] == [15, 45]
    one = call(
        "GET",
        rest(base, f"/layers/{layer['id']}/features/{alpha['__id']}"),
        200,
        params={"geometry": "gml", "epsg": 4326},
    )
    assert one["__id"] == alpha["__id"] and "<gml:Point" in one["__geometry"]
    error("GET", rest(base, f"/layers/{layer['id']}/features"), 400, params={"geometry": "svg"})


def test_output_crs_epsg_and_proj4(base, backend, new_layer):
    layer = new_layer(backend)
    mercator = features(base, layer["id"], epsg=3857, where="name = 'Alpha'")["data"][0]
    x, y = (float(v) for v in mercator["__geometry"].removeprefix("POINT (").removesuffix(")").split())
    assert x == pytest.approx(1669792.36, abs=0.01) and y == pytest.approx(5621521.49, abs=0.01)
    assert mercator["__xmin"] == pytest.approx(x) and mercator["__ymax"] == pytest.approx(y)
    proj4 = (  # the reference's example
        "+proj=merc +a=6378137 +b=6378137 +lat_ts=0.0 +lon_0=0.0 +x_0=0.0 +y_0=0 +k=1.0 +units=m "
        "+nadgrids=@null +no_defs"
    )
    assert features(base, layer["id"], proj4=proj4, where="name = 'Alpha'")["data"][0] == mercator
    # The same sent unencoded: each "+" arrives as a space.
    unencoded = features(base, layer["id"], proj4=proj4.replace("+", " "), where="name = 'Alpha'")
    assert unencoded["data"][0] == mercator
    assert features(base, layer["id"], epsg="900913", where="name = 'Alpha'")["data"][0] == mercator
    gml = features(base, layer["id"], epsg=3857, geometry="gml", where="name = 'Alpha'")["data"][0][
        "__geometry"
    ]
    assert 'srsName="http://www.opengis.net/def/crs/EPSG/0/3857"' in gml
    # bounds are in the output CRS.
    near = features(base, layer["id"], epsg=3857, bounds="1600000,5500000,1700000,5700000")["data"]
    assert sorted(f["data"]["name"] for f in near) == ["Alpha", "alpine"]
    lonlat = features(base, layer["id"], bounds="14,44,15.5,46")["data"]
    assert sorted(f["data"]["name"] for f in lonlat) == ["Alpha", "alpine"]
    # A feature written in EPSG:3857 is stored in lon/lat.
    made = call(
        "POST",
        rest(base, f"/layers/{layer['id']}/features"),
        201,
        params={"epsg": 3857},
        json={"data": {"name": "merc"}, "geometry": "POINT(1669792.36 5621521.49)"},
    )
    assert made["__geometry"].startswith("POINT (1669792.36")
    item = requests.get(
        f"{base}/collections/{layer['collection']}/items/{made['__id']}", timeout=TIMEOUT
    ).json()
    assert item["geometry"]["coordinates"] == pytest.approx([15, 45], abs=1e-6)
    for params in (
        {"epsg": "999999"},
        {"epsg": "wgs84"},
        {"proj4": "+proj=nonsense"},
        {"proj4": "garbage"},
        {"bounds": "1,2,3"},
        {"bounds": "a,b,c,d"},
        {"bounds": "0,5,1,4"},
    ):
        error("GET", rest(base, f"/layers/{layer['id']}/features"), 400, params=params)


def test_where_noattrib_paging_and_order(base, backend, new_layer):
    layer = new_layer(backend)
    hits = features(base, layer["id"], where="value > 15 AND name LIKE 'A%'")["data"]
    assert hits == []
    hits = features(base, layer["id"], where="value >= 10 AND (name LIKE 'A%' OR name = 'Beta')")
    assert sorted(f["data"]["name"] for f in hits["data"]) == ["Alpha", "Beta"] and hits["total"] == 2
    assert [
        f["data"]["name"]
        for f in features(base, layer["id"], where="CASEI(name) LIKE 'alp%'", order_by="value:desc")["data"]
    ] == ["alpine", "Alpha"]
    bare = features(base, layer["id"], noattrib="true", where="name = 'Alpha'")["data"][0]
    assert "data" not in bare and bare["__owner"] == "ann" and bare["__geometry"] == "POINT (15 45)"
    values = [f["data"]["value"] for f in features(base, layer["id"], order_by="value:desc")["data"]]
    assert values == sorted((r[1] for r in ROWS), reverse=True)
    page2 = features(base, layer["id"], order_by="value", perpage=2, page=2)
    assert (
        [f["data"]["value"] for f in page2["data"]] == [20, 30] and page2["page"] == 2 and page2["total"] == 5
    )
    assert "total" not in features(base, layer["id"], nototal="1")
    by_id = [f["__id"] for f in features(base, layer["id"], order_by="__id:desc")["data"]]
    assert by_id == sorted(by_id, reverse=True)


HOSTILE_WHERE = [
    "1=1; drop table x",
    "name = 'a' OR pg_sleep(1)",
    "name = 'x') OR (1=1",
    "name = 'x' --",
    "nosuch = 1",
    "S_INTERSECTS(geom, POINT(15 45))",
    "value > 'ten'",
    "name IN (SELECT name FROM countries)",
]


def test_hostile_where_and_order_by_are_400_and_change_nothing(base, backend, tables, new_layer):
    layer = new_layer(backend)
    url = rest(base, f"/layers/{layer['id']}/features")
    for where in HOSTILE_WHERE:
        msg = error("GET", url, 400, params={"where": where})
        assert msg.startswith(("where", "unknown property", "property")), msg
    for order in ("name; drop table x", "value desc", "nosuch", "geom", "name:up"):
        error("GET", url, 400, params={"order_by": order})
    assert tables.count(backend, layer["table"]) == len(ROWS)
    assert features(base, layer["id"])["total"] == len(ROWS)


def test_bad_feature_bodies_are_refused_and_write_nothing(base, backend, tables, new_layer):
    layer = new_layer(backend)
    url = rest(base, f"/layers/{layer['id']}/features")
    alpha = features(base, layer["id"], where="name = 'Alpha'")["data"][0]
    bad = [
        {"data": {"name": "x"}, "geometry": "POINT(15"},  # malformed WKT
        {"data": {"name": "x"}, "geometry": "PIONT(15 45)"},
        {"data": {"name": "x"}, "geometry": {"type": "Point", "coordinates": "here"}},  # malformed GeoJSON
        {"data": {"name": "x"}, "geometry": '{"type": "Point", "coordinates": [1,'},
        {"data": {"name": "x"}, "geometry": {"type": "Feature", "geometry": None}},
        {"data": {"name": "x"}, "geometry": "LINESTRING(0 0, 1 1)"},  # wrong geometry type
        {"data": {"nosuch": 1}, "geometry": "POINT(1 1)"},  # unknown field
        {"data": {"value": "many"}, "geometry": "POINT(1 1)"},  # wrong type
        {"data": ["name"], "geometry": "POINT(1 1)"},
        {"attributes": {"name": "x"}, "geometry": "POINT(1 1)"},  # unknown member
        {"data": {"name": "x"}, "geometry": 42},
        {"data": {"name": "x"}, "geometry": "<Point><coordinates>abc</coordinates></Point>"},
    ]
    for body in bad:
        error("POST", url, 422, json=body)
        error("PUT", f"{url}/{alpha['__id']}", 422, json=body)
    error("POST", url, 400, data=b'{"data": ')
    assert tables.count(backend, layer["table"]) == len(ROWS)
    assert features(base, layer["id"], where="name = 'Alpha'")["data"][0] == alpha
    error("GET", f"{url}/999999", 404)
    error("GET", f"{url}/not-a-number", 404)
    error("PUT", f"{url}/999999", 404, json={"data": {"name": "x"}})
    error("GET", rest(base, "/layers/999999999/features"), 404)
    error("GET", rest(base, "/layers/abc/features"), 404)


def test_geometry_in_kml_and_gml(base, backend, new_layer):
    layer = new_layer(backend)
    url = rest(base, f"/layers/{layer['id']}/features")
    kml = '<Point xmlns="http://www.opengis.net/kml/2.2"><coordinates>3,4</coordinates></Point>'
    assert call("POST", url, 201, json={"geometry": kml})["__geometry"] == "POINT (3 4)"
    # GML in EPSG:4326 is latitude first.
    gml = (
        '<gml:Point xmlns:gml="http://www.opengis.net/gml/3.2" gml:id="p" srsName="EPSG:4326">'
        "<gml:pos>6 5</gml:pos></gml:Point>"
    )
    assert call("POST", url, 201, json={"geometry": gml})["__geometry"] == "POINT (5 6)"
    entity = (
        '<!DOCTYPE p [<!ENTITY e SYSTEM "file:///etc/passwd">]><Point><coordinates>&e;</coordinates></Point>'
    )
    error("POST", url, 422, json={"geometry": entity})


def test_openapi_describes_the_routes(base):
    from openapi_spec_validator import validate

    doc = requests.get(f"{base}/openapi", params={"f": "json"}, timeout=120).json()
    validate(doc)
    paths = doc["paths"]
    for path in (
        "/layers",
        "/layers/{layer_id}",
        "/layers/{layer_id}/columns",
        "/layers/{layer_id}/features",
        "/layers/{layer_id}/features/{feature_id}",
        "/maps",
        "/maps/{map_id}",
        "/maps/{map_id}/layers",
        "/maps/{map_id}/render/{format}",
        "/search",
        "/geo_utils/features_at_point",
    ):
        assert f"{REST}{path}" in paths, path
    create = paths[f"{REST}/layers/{{layer_id}}/features"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/RestFeatureInput"
    )
    assert "201" in create["responses"] and "422" in create["responses"]
    for name in ("RestLayer", "RestFeature", "RestMap", "RestSearchHit", "RestErrorMessage"):
        assert name in doc["components"]["schemas"]
