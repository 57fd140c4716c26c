"""REST tables and rows over PostGIS and the GeoPackage: create, publish, rows CRUD, truncate, drop."""

from __future__ import annotations

import subprocess
import uuid

import pytest
import requests
import shapely

TIMEOUT = 60
ALL_TYPES = {
    "name": {"type": "text"},
    "n": {"type": "integer"},
    "x": {"type": "number"},
    "ok": {"type": "boolean"},
    "day": {"type": "date"},
    "at": {"type": "datetime"},
}


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def rest(base: str, path: str) -> str:
    return f"{base}/rest/1{path}"


def create_table(base: str, backend: str, body: dict) -> requests.Response:
    return requests.post(rest(base, "/tables"), params={"connection_id": backend}, json=body, timeout=TIMEOUT)


def made(base: str, backend: str, body: dict) -> dict:
    response = create_table(base, backend, body)
    assert response.status_code == 201, response.text
    return response.json()


def rows_url(base: str, name: str, rid=None) -> str:
    return rest(base, f"/tables/{name}/rows" + ("" if rid is None else f"/{rid}"))


def collection_ids(base: str) -> set[str]:
    body = requests.get(f"{base}/collections", params={"f": "json"}, timeout=TIMEOUT).json()
    return {c["id"] for c in body["collections"]}


def table_exists(base: str, backend: str, name: str) -> bool:
    response = requests.get(rest(base, f"/tables/{name}"), params={"connection_id": backend}, timeout=TIMEOUT)
    assert response.status_code in (200, 404), response.text
    return response.status_code == 200


def assert_error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "msg"} and body["msg"], body
    return body


def test_spatial_table_is_published_at_once_and_gone_when_dropped(base, backend):
    name = unique("places")
    created = create_table(base, backend, {"name": name, "geometry": "POINT", "columns": ALL_TYPES})
    assert created.status_code == 201, created.text
    assert created.headers["Location"].split("?")[0].endswith(f"/rest/1/tables/{name}")
    table = created.json()
    assert table["name"] == name and table["geometry"] == "POINT" and table["srid"] == 4326
    assert table["primary_key"] == "id" and table["is_view"] is False and table["editable"] is True
    assert table["connection_id"] == backend
    assert table["columns"] == {c: {"type": spec["type"], "not_null": False} for c, spec in ALL_TYPES.items()}
    assert isinstance(table["layer_id"], int) and table["collection"] == name
    # Two gunicorn workers: every one of several requests sees the new collection.
    for _ in range(6):
        assert name in collection_ids(base)
    items = requests.get(f"{base}/collections/{name}/items", timeout=TIMEOUT)
    assert items.status_code == 200 and items.json()["features"] == []

    got = requests.get(
        rest(base, f"/tables/{name}.json"),
        params={"connection_id": backend, "expand": "count"},
        timeout=TIMEOUT,
    )
    assert (
        got.status_code == 200 and got.json()["num_rows"] == 0 and got.json()["layer_id"] == table["layer_id"]
    )
    spatial = requests.get(
        rest(base, "/tables"),
        params={"connection_id": backend, "only_spatial": "true", "perpage": 1000},
        timeout=TIMEOUT,
    ).json()
    assert name in {t["name"] for t in spatial["data"]}
    plain = requests.get(
        rest(base, "/tables"),
        params={"connection_id": backend, "only_non_spatial": "1", "perpage": 1000},
        timeout=TIMEOUT,
    ).json()
    assert name not in {t["name"] for t in plain["data"]}

    dropped = requests.delete(
        rest(base, f"/tables/{name}"), params={"connection_id": backend}, timeout=TIMEOUT
    )
    assert dropped.status_code == 204, dropped.text
    for _ in range(6):
        assert name not in collection_ids(base)
    assert not table_exists(base, backend, name)
    layer = requests.get(rest(base, f"/layers/{table['layer_id']}"), timeout=TIMEOUT)
    assert layer.status_code == 404
    again = requests.delete(rest(base, f"/tables/{name}"), params={"connection_id": backend}, timeout=TIMEOUT)
    assert_error(again, 404)


def test_rows_crud_through_the_shared_write_path(base, backend):
    name = unique("rows")
    table = made(base, backend, {"name": name, "geometry": "POINT", "columns": ALL_TYPES})
    params = {"connection_id": backend}
    row = {
        "data": {
            "name": "Split",
            "n": 7,
            "x": 3.5,
            "ok": True,
            "day": "2024-05-06",
            "at": "2024-05-06T07:08:09Z",
        },
        "geometry": "POINT(16.4465 43.5127)",
    }
    created = requests.post(rows_url(base, name), params=params, json=row, timeout=TIMEOUT)
    assert created.status_code == 201, created.text
    stored = created.json()
    rid = stored["id"]
    assert created.headers["Location"].split("?")[0].endswith(f"/tables/{name}/rows/{rid}")
    assert stored["name"] == "Split" and stored["n"] == 7 and stored["x"] == 3.5 and stored["ok"] is True
    assert stored["day"] == "2024-05-06" and stored["at"].startswith("2024-05-06T07:08:09")
    assert shapely.from_wkt(stored["geom"]).equals_exact(shapely.Point(16.4465, 43.5127), 1e-9)

    # The same row is an OGC feature, with its WKT geometry returned as GeoJSON.
    item = requests.get(f"{base}/collections/{table['collection']}/items/{rid}", timeout=TIMEOUT)
    assert item.status_code == 200, item.text
    feature = item.json()
    assert feature["geometry"] == {"type": "Point", "coordinates": [16.4465, 43.5127]}
    assert feature["properties"]["name"] == "Split" and feature["properties"]["n"] == 7

    as_wkb = requests.get(rows_url(base, name), params={**params, "geometry": "wkb"}, timeout=TIMEOUT).json()
    assert as_wkb["type"] == "rows" and as_wkb["total"] == 1 and as_wkb["page"] == 1
    assert shapely.from_wkb(bytes.fromhex(as_wkb["data"][0]["geom"])).equals(shapely.Point(16.4465, 43.5127))
    bare = requests.get(rows_url(base, name), params={**params, "geometry": "false"}, timeout=TIMEOUT).json()
    assert "geom" not in bare["data"][0] and bare["data"][0]["name"] == "Split"
    some = requests.get(rows_url(base, name), params={**params, "fields": "name,n"}, timeout=TIMEOUT).json()
    assert set(some["data"][0]) == {"id", "geom", "name", "n"}

    updated = requests.put(
        rows_url(base, name, rid), params=params, json={"data": {"name": "Zadar"}}, timeout=TIMEOUT
    )
    assert updated.status_code == 204, updated.text
    after = requests.get(rows_url(base, name, rid), params=params, timeout=TIMEOUT).json()
    assert after["name"] == "Zadar" and after["n"] == 7 and after["geom"] == stored["geom"]
    moved = requests.put(
        rows_url(base, name, f"{rid}.json"),
        params=params,
        json={"geometry": "POINT(15.23 44.12)"},
        timeout=TIMEOUT,
    )
    assert moved.status_code == 204, moved.text
    feature = requests.get(f"{base}/collections/{table['collection']}/items/{rid}", timeout=TIMEOUT).json()
    assert feature["geometry"]["coordinates"] == [15.23, 44.12] and feature["properties"]["name"] == "Zadar"

    for label, n in (("b", 2), ("c", 3)):
        response = requests.post(
            rows_url(base, name), params=params, json={"data": {"name": label, "n": n}}, timeout=TIMEOUT
        )
        assert response.status_code == 201, response.text
        assert response.json()["geom"] is None
    first = requests.get(
        rows_url(base, name), params={**params, "perpage": 2, "order_by": "n:desc"}, timeout=TIMEOUT
    ).json()
    assert first["total"] == 3 and [r["n"] for r in first["data"]] == [7, 3]
    second = requests.get(
        rows_url(base, name),
        params={**params, "perpage": 2, "page": 2, "order_by": "n:desc", "nototal": 1},
        timeout=TIMEOUT,
    ).json()
    assert "total" not in second and [r["n"] for r in second["data"]] == [2]

    # _method override for clients without DELETE.
    removed = requests.post(
        rows_url(base, name, rid), params={**params, "_method": "DELETE"}, timeout=TIMEOUT
    )
    assert removed.status_code == 204, removed.text
    assert_error(requests.get(rows_url(base, name, rid), params=params, timeout=TIMEOUT), 404)
    assert_error(requests.delete(rows_url(base, name, rid), params=params, timeout=TIMEOUT), 404)
    assert_error(requests.get(rows_url(base, name, "not-a-number"), params=params, timeout=TIMEOUT), 404)
    items = requests.get(f"{base}/collections/{table['collection']}/items", timeout=TIMEOUT).json()
    assert items["numberMatched"] == 2

    emptied = requests.delete(rows_url(base, name), params=params, timeout=TIMEOUT)
    assert emptied.status_code == 204, emptied.text
    assert requests.get(rows_url(base, name), params=params, timeout=TIMEOUT).json()["total"] == 0
    items = requests.get(f"{base}/collections/{table['collection']}/items", timeout=TIMEOUT).json()
    assert items["numberMatched"] == 0
    # Ids are not reused after a truncate, so caches and clients never confuse two rows.
    again = requests.post(rows_url(base, name), params=params, json={"data": {"name": "d"}}, timeout=TIMEOUT)
    assert again.status_code == 201 and again.json()["id"] > rid
    requests.delete(rest(base, f"/tables/{name}"), params=params, timeout=TIMEOUT)


def test_table_without_geometry(base, backend):
    name = unique("plain")
    table = made(base, backend, {"name": name, "geometry": None, "columns": {"label": "text", "v": "number"}})
    assert table["geometry"] is None and table["srid"] is None and table["layer_id"] is None
    assert name not in collection_ids(base)
    params = {"connection_id": backend}
    listed = requests.get(
        rest(base, "/tables"), params={**params, "only_non_spatial": "true", "perpage": 1000}, timeout=TIMEOUT
    ).json()
    assert name in {t["name"] for t in listed["data"]}
    created = requests.post(
        rows_url(base, name), params=params, json={"data": {"label": "a", "v": 1.5}}, timeout=TIMEOUT
    )
    assert created.status_code == 201, created.text
    assert created.json() == {"id": created.json()["id"], "label": "a", "v": 1.5}
    with_geometry = requests.post(
        rows_url(base, name),
        params=params,
        json={"data": {"label": "b"}, "geometry": "POINT(1 2)"},
        timeout=TIMEOUT,
    )
    assert_error(with_geometry, 422)
    rows = requests.get(rows_url(base, name), params=params, timeout=TIMEOUT).json()
    assert rows["total"] == 1 and rows["data"] == [created.json()]
    assert requests.delete(rest(base, f"/tables/{name}"), params=params, timeout=TIMEOUT).status_code == 204
    assert not table_exists(base, backend, name)


def test_table_in_another_crs(base, backend):
    name = unique("l93")
    table = made(base, backend, {"name": name, "geometry": "MULTIPOLYGON", "srid": 2154})
    assert table["srid"] == 2154 and table["geometry"] == "MULTIPOLYGON"
    params = {"connection_id": backend}
    square = "POLYGON((650000 6860000, 651000 6860000, 651000 6861000, 650000 6861000, 650000 6860000))"
    created = requests.post(rows_url(base, name), params=params, json={"geometry": square}, timeout=TIMEOUT)
    assert created.status_code == 201, created.text
    stored = shapely.from_wkt(created.json()["geom"])  # in the table's own CRS, promoted to multi
    assert stored.geom_type == "MultiPolygon" and stored.area == pytest.approx(1_000_000)
    item = requests.get(
        f"{base}/collections/{table['collection']}/items/{created.json()['id']}", timeout=TIMEOUT
    )
    lon, lat = item.json()["geometry"]["coordinates"][0][0][0]
    assert 2.3 < lon < 2.4 and 48.8 < lat < 48.9  # near Paris in CRS84
    requests.delete(rest(base, f"/tables/{name}"), params=params, timeout=TIMEOUT)


def test_list_and_describe_tables_of_the_source(base, backend):
    params = {"connection_id": backend}
    listed = requests.get(rest(base, "/tables.json"), params={**params, "perpage": 1000}, timeout=TIMEOUT)
    assert listed.status_code == 200
    body = listed.json()
    names = [t["name"] for t in body["data"]]
    assert body["type"] == "tables" and body["total"] == len(names) and "countries" in names
    assert names == sorted(names)
    assert "spatial_ref_sys" not in names and not any(n.startswith(("gpkg_", "rtree_")) for n in names)
    one = requests.get(
        rest(base, "/tables"),
        params={**params, "perpage": 1, "page": 2, "order_by": "name:desc"},
        timeout=TIMEOUT,
    ).json()
    assert [t["name"] for t in one["data"]] == [sorted(names, reverse=True)[1]] and one["total"] == len(names)
    countries = requests.get(
        rest(base, "/tables/countries"), params={**params, "expand": "count"}, timeout=TIMEOUT
    ).json()
    assert countries["geometry"] == "MULTIPOLYGON" and countries["srid"] == 4326
    assert (
        countries["primary_key"] == "id" and countries["num_rows"] == 177 and countries["editable"] is False
    )
    assert countries["columns"]["name"]["type"] == "text" and "geom" not in countries["columns"]
    rows = requests.get(
        rows_url(base, "countries"),
        params={**params, "perpage": 2, "fields": "name", "geometry": "false"},
        timeout=TIMEOUT,
    ).json()
    assert rows["total"] == 177 and [set(r) for r in rows["data"]] == [{"id", "name"}, {"id", "name"}]
    both = requests.get(
        rest(base, "/tables"), params={**params, "only_spatial": 1, "only_non_spatial": 1}, timeout=TIMEOUT
    )
    assert_error(both, 400)
    assert_error(requests.get(rest(base, "/tables"), params={"connection_id": "nope"}, timeout=TIMEOUT), 400)
    assert_error(requests.get(rest(base, "/tables/no_such_table"), params=params, timeout=TIMEOUT), 404)


def test_default_source_is_the_store_tables_source(base, pg):
    name = unique("default")
    response = requests.post(rest(base, "/tables"), json={"name": name, "geometry": "POINT"}, timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    assert response.json()["connection_id"] == "pg"
    assert pg.execute("SELECT to_regclass(%s)", (f"public.{name}",)).fetchone()[0] is not None
    assert requests.delete(rest(base, f"/tables/{name}"), timeout=TIMEOUT).status_code == 204
    assert pg.execute("SELECT to_regclass(%s)", (f"public.{name}",)).fetchone()[0] is None


@pytest.mark.parametrize(
    "body, status",
    [
        ({"name": "x; drop table countries"}, 400),
        ({"name": '"quoted"'}, 400),
        ({"name": "Upper"}, 400),
        ({"name": "1abc"}, 400),
        ({"name": "a" * 64}, 400),
        ({"name": "gpkg_contents"}, 400),
        ({"name": "spatial_ref_sys"}, 400),
        ({"name": None}, 400),
        ({"name": "ok_{}", "columns": {"bad name": {"type": "text"}}}, 400),
        ({"name": "ok_{}", "columns": {'a"); drop table countries; --': {"type": "text"}}}, 400),
        ({"name": "ok_{}", "columns": {"id": {"type": "text"}}}, 400),
        ({"name": "ok_{}", "columns": {"__created": {"type": "text"}}}, 400),
        ({"name": "ok_{}", "columns": {"a": {"type": "varchar(10); drop table countries"}}}, 422),
        ({"name": "ok_{}", "columns": {"a": {"type": "blob"}}}, 422),
        ({"name": "ok_{}", "columns": {"a": {"type": "text", "not_null": "yes"}}}, 422),
        ({"name": "ok_{}", "columns": ["a", "b"]}, 422),
        ({"name": "ok_{}", "geometry": "CIRCLE"}, 422),
        ({"name": "ok_{}", "geometry": "POINT", "srid": 999999}, 422),
        ({"name": "ok_{}", "geometry": "POINT", "srid": "EPSG:4326; drop"}, 422),
    ],
)
def test_bad_tables_are_refused_and_nothing_is_made(base, backend, pg, body, status):
    body = {
        **body,
        "name": body["name"].format(uuid.uuid4().hex[:8]) if isinstance(body["name"], str) else None,
    }
    before = pg.execute("SELECT count(*) FROM countries").fetchone()[0]
    tables_before = requests.get(
        rest(base, "/tables"), params={"connection_id": backend, "perpage": 1000}, timeout=TIMEOUT
    )
    assert_error(create_table(base, backend, body), status)
    tables_after = requests.get(
        rest(base, "/tables"), params={"connection_id": backend, "perpage": 1000}, timeout=TIMEOUT
    )
    assert tables_after.json()["total"] == tables_before.json()["total"]
    if isinstance(body["name"], str) and body["name"].startswith("ok_"):
        assert not table_exists(base, backend, body["name"])
    assert pg.execute("SELECT count(*) FROM countries").fetchone()[0] == before == 177


def test_taken_names_conflict(base, backend):
    assert_error(create_table(base, backend, {"name": "countries", "geometry": "POINT"}), 409)
    name = unique("twice")
    made(base, backend, {"name": name})
    assert_error(create_table(base, backend, {"name": name}), 409)
    requests.delete(rest(base, f"/tables/{name}"), params={"connection_id": backend}, timeout=TIMEOUT)


def test_a_table_that_cannot_be_published_is_dropped_again(base):
    name = unique("clash")
    # Both collection ids the GeoPackage table could take are held by PostGIS tables.
    first = made(base, "pg", {"name": name, "geometry": "POINT"})
    second = made(base, "pg", {"name": f"{name}_gpkg", "geometry": "POINT"})
    assert_error(create_table(base, "gpkg", {"name": name, "geometry": "POINT"}), 409)
    assert not table_exists(base, "gpkg", name)
    # With one id free again, the same request publishes it under <name>_gpkg.
    requests.delete(rest(base, f"/tables/{second['name']}"), params={"connection_id": "pg"}, timeout=TIMEOUT)
    third = made(base, "gpkg", {"name": name, "geometry": "POINT"})
    assert third["collection"] == f"{name}_gpkg" and first["collection"] == name
    for backend in ("pg", "gpkg"):
        requests.delete(rest(base, f"/tables/{name}"), params={"connection_id": backend}, timeout=TIMEOUT)


def test_bad_rows_are_refused_and_nothing_is_written(base, backend):
    name = unique("badrows")
    made(base, backend, {"name": name, "geometry": "POINT", "columns": {"label": "text", "n": "integer"}})
    params = {"connection_id": backend}
    cases = [
        ({"data": {"nope": 1}}, 422),
        ({"data": {"label": "a"}, "geometry": "POINT(1"}, 422),
        ({"data": {"label": "a"}, "geometry": "LINESTRING(0 0, 1 1)"}, 422),
        ({"data": {"label": "a"}, "geometry": 42}, 422),
        ({"data": {"n": "not a number"}}, 422),
        ({"data": ["label", "a"]}, 422),
    ]
    for body, status in cases:
        assert_error(requests.post(rows_url(base, name), params=params, json=body, timeout=TIMEOUT), status)
    not_json = requests.post(rows_url(base, name), params=params, data="{not json", timeout=TIMEOUT)
    assert_error(not_json, 400)
    assert requests.get(rows_url(base, name), params=params, timeout=TIMEOUT).json()["total"] == 0

    ok = requests.post(
        rows_url(base, name), params=params, json={"data": {"label": "kept", "n": 1}}, timeout=TIMEOUT
    )
    rid = ok.json()["id"]
    bad_update = requests.put(
        rows_url(base, name, rid), params=params, json={"data": {"label": "x", "nope": 2}}, timeout=TIMEOUT
    )
    assert_error(bad_update, 422)
    assert requests.get(rows_url(base, name, rid), params=params, timeout=TIMEOUT).json()["label"] == "kept"
    for query in (
        {"geometry": "geojson"},
        {"fields": "nope"},
        {"order_by": "n; drop table countries"},
        {"page": 0},
    ):
        assert_error(requests.get(rows_url(base, name), params={**params, **query}, timeout=TIMEOUT), 400)
    requests.delete(rest(base, f"/tables/{name}"), params=params, timeout=TIMEOUT)


def test_tables_not_made_here_are_read_only(base, backend, pg):
    params = {"connection_id": backend}
    before = pg.execute("SELECT count(*) FROM countries").fetchone()[0]
    assert_error(
        requests.post(rows_url(base, "countries"), params=params, json={"data": {}}, timeout=TIMEOUT), 405
    )
    assert_error(
        requests.put(rows_url(base, "countries", 1), params=params, json={"data": {}}, timeout=TIMEOUT), 405
    )
    assert_error(requests.delete(rows_url(base, "countries", 1), params=params, timeout=TIMEOUT), 405)
    assert_error(requests.delete(rows_url(base, "countries"), params=params, timeout=TIMEOUT), 405)
    assert_error(requests.delete(rest(base, "/tables/countries"), params=params, timeout=TIMEOUT), 405)
    assert pg.execute("SELECT count(*) FROM countries").fetchone()[0] == before
    assert table_exists(base, backend, "countries")
    assert requests.get(rows_url(base, "countries", 1), params=params, timeout=TIMEOUT).json()["id"] == 1


def test_geopackage_tables_are_valid_for_gdal(base, gpkg_path):
    name = unique("gdal")
    made(base, "gpkg", {"name": name, "geometry": "POINT", "columns": {"label": "text", "n": "integer"}})
    params = {"connection_id": "gpkg"}
    for i, (lon, lat) in enumerate(((2.35, 48.85), (13.4, 52.52), (-3.7, 40.42))):
        body = {"data": {"label": f"p{i}", "n": i}, "geometry": f"POINT({lon} {lat})"}
        assert (
            requests.post(rows_url(base, name), params=params, json=body, timeout=TIMEOUT).status_code == 201
        )
    info = subprocess.run(
        ["ogrinfo", "-ro", "-so", str(gpkg_path), name], capture_output=True, text=True, check=True
    ).stdout
    assert "Geometry: Point" in info and "Feature Count: 3" in info and 'ID["EPSG",4326]' in info
    assert "FID Column = id" in info and "label: String" in info and "n: Integer64" in info
    # The R-tree the triggers maintain answers GDAL's spatial filter (only Paris is in this box).
    near_paris = subprocess.run(
        ["ogrinfo", "-ro", "-so", "-spat", "2", "48", "3", "49", str(gpkg_path), name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Feature Count: 1" in near_paris
    requests.delete(rest(base, f"/tables/{name}"), params=params, timeout=TIMEOUT)
    layers = subprocess.run(["ogrinfo", "-ro", "-q", str(gpkg_path)], capture_output=True, text=True).stdout
    assert name not in layers


def test_openapi_describes_the_table_routes(base):
    doc = requests.get(f"{base}/openapi", params={"f": "json"}, timeout=TIMEOUT).json()
    paths = doc["paths"]
    for path in (
        "/rest/1/tables",
        "/rest/1/tables/{name}",
        "/rest/1/tables/{name}/rows",
        "/rest/1/tables/{name}/rows/{row_id}",
    ):
        assert path in paths
    create = paths["/rest/1/tables"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("RestTableInput")
    assert {"RestTable", "RestTableInput", "RestTableRow", "RestTableRowInput"} <= set(
        doc["components"]["schemas"]
    )
