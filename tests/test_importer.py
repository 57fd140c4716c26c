"""The importer REST API (``/imports``): every format, data type, transform and update mode,
read back through OGC items and tiles; bad input ends in the right state or status with
nothing left behind.

Runs against the session server (PostGIS store, a job worker beside gunicorn). Files
are built with GDAL and pyarrow from Natural Earth (``sample_files``); the remote data
comes from an HTTP server this module starts on loopback.
"""

from __future__ import annotations

import http.server
import io
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import mapbox_vector_tile
import psycopg
import pytest
import requests
import shapely
import shapely.geometry
from conftest import import_root
from sample_files import sample_files

TIMEOUT = 120
COUNTRIES = 177


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return sample_files(tmp_path_factory.mktemp("import-files"))


@pytest.fixture(scope="module")
def root(gpkg_path: Path) -> Path:
    return import_root(gpkg_path)


@pytest.fixture(scope="module")
def remote(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An HTTP server on loopback serving the sample files (the remote data's origin)."""
    served = tmp_path_factory.mktemp("remote")
    for key in ("shp", "geojson", "gpkg"):
        shutil.copy(files[key], served / files[key].name)
    handler = partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


# -- helpers ----------------------------------------------------------------------------------------
def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def create(base: str, body: dict[str, Any] | None = None, params: str = "") -> dict[str, Any]:
    response = requests.post(f"{base}/imports{params}", json={"import": body or {}}, timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    assert response.headers["Location"].endswith(f"/imports/{response.json()['import']['id']}")
    return response.json()["import"]


def upload(base: str, iid: int, *paths: Path) -> list[dict[str, Any]]:
    """One multipart POST, each part's field name a local path (as gn-gsimporter sends them)."""
    parts = [(str(p), (p.name, p.read_bytes())) for p in paths]
    response = requests.post(f"{base}/imports/{iid}/tasks", files=parts, timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    body = response.json()
    return [body["task"]] if "task" in body else body["tasks"]


def put_task(base: str, iid: int, tid: int, body: dict[str, Any]) -> dict[str, Any]:
    response = requests.put(f"{base}/imports/{iid}/tasks/{tid}", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()["task"]


def execute(base: str, iid: int) -> dict[str, Any]:
    response = requests.post(f"{base}/imports/{iid}", timeout=TIMEOUT)
    assert response.status_code == 204, response.text
    return get(base, iid)


def get(base: str, iid: int) -> dict[str, Any]:
    response = requests.get(f"{base}/imports/{iid}?expand=3", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()["import"]


def wait(base: str, iid: int, states: tuple[str, ...] = ("COMPLETE", "COMPLETE_ERROR", "INIT_ERROR")) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while True:
        found = get(base, iid)
        if found["state"] in states:
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.2)


def matched(base: str, cid: str, **params: Any) -> int:
    response = requests.get(f"{base}/collections/{cid}/items", params={"limit": 1, **params}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()["numberMatched"]


def items(base: str, cid: str, **params: Any) -> list[dict[str, Any]]:
    response = requests.get(
        f"{base}/collections/{cid}/items", params={"limit": 1000, **params}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    return response.json()["features"]


def tile_features(base: str, cid: str, z: int = 0, x: int = 0, y: int = 0) -> list[dict[str, Any]]:
    response = requests.get(f"{base}/collections/{cid}/tiles/WebMercatorQuad/{z}/{y}/{x}", timeout=TIMEOUT)
    assert response.status_code in (200, 204), response.text
    if response.status_code == 204:
        return []
    return mapbox_vector_tile.decode(response.content)[cid]["features"]


def published(task: dict[str, Any]) -> str:
    assert task["state"] == "COMPLETE", task.get("errorMessage")
    return task["published"]["collection"]


def table_exists(pg_url: str, name: str) -> bool:
    with psycopg.connect(pg_url) as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{name}",)).fetchone()[0]


def in_france(feature: dict[str, Any]) -> bool:
    """Whether a feature served in CRS84 covers Paris (its coordinates are lon/lat, not metres)."""
    return shapely.geometry.shape(feature["geometry"]).contains(shapely.Point(2.35, 48.86))


def renamed(base: str, iid: int, task: dict[str, Any], prefix: str) -> str:
    name = unique(f"imp_{prefix}")
    put_task(base, iid, task["id"], {"layer": {"name": name, "title": f"{prefix} title"}})
    return name


# -- formats -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "fmt", "count", "geometry"),
    [
        ("gpkg", "GeoPackage", COUNTRIES, "org.locationtech.jts.geom.MultiPolygon"),
        ("geojson", "GeoJSON", COUNTRIES, "org.locationtech.jts.geom.Point"),
        ("fgb", "FlatGeobuf", COUNTRIES, "org.locationtech.jts.geom.Point"),
        ("csv", "CSV", COUNTRIES, "org.locationtech.jts.geom.Geometry"),  # a WKT column may hold any type
        ("kml", "KML", COUNTRIES, "org.locationtech.jts.geom.Geometry"),  # KML layers declare no type
        ("gpx", "GPX", COUNTRIES, "org.locationtech.jts.geom.Point"),
        ("gml", "GML", COUNTRIES, "org.locationtech.jts.geom.Point"),
        ("parquet", "GeoParquet", COUNTRIES, "org.locationtech.jts.geom.Point"),
    ],
)
@pytest.mark.parametrize("store", ["pg", "gpkg"])
def test_each_format_imports_into_each_store_and_serves_items_and_tiles(
    base, files, key, fmt, count, geometry, store
):
    imp = create(base, {"targetStore": {"dataStore": {"name": store}}})
    assert imp["state"] == "PENDING" and imp["tasks"] == []
    tasks = upload(base, imp["id"], files[key])
    task = tasks[0]  # a GeoPackage gives a task per layer: countries first
    if key == "csv":  # CSV files do not say their CRS
        assert task["state"] == "NO_CRS", task
        task = put_task(base, imp["id"], task["id"], {"layer": {"srs": "EPSG:4326"}})
    assert task["state"] == "READY", task.get("errorMessage")
    assert task["data"]["format"] == fmt
    assert task["target"]["dataStore"] == {
        "name": store,
        "type": "PostGIS" if store == "pg" else "GeoPackage",
    }
    layer = task["layer"]
    assert layer["srs"] == "EPSG:4326" and layer["href"].endswith(f"/tasks/{task['id']}/layer")
    assert layer["attributes"][0]["binding"] == geometry
    assert {"minx", "miny", "maxx", "maxy"} <= set(layer["bbox"]) and layer["bbox"]["minx"] < layer["bbox"][
        "maxx"
    ]
    for other in tasks[1:]:
        requests.delete(other["href"], timeout=TIMEOUT).raise_for_status()
    renamed(base, imp["id"], task, key)
    done = execute(base, imp["id"])
    assert done["state"] == "COMPLETE", [t.get("errorMessage") for t in done["tasks"]]
    cid = published(done["tasks"][0])
    assert matched(base, cid) == count
    assert tile_features(base, cid), "the new layer draws in its z0 tile"
    progress = requests.get(task["progress"], timeout=TIMEOUT).json()
    assert progress == {"state": "COMPLETE", "progress": count, "total": count}


def test_zipped_shapefile_in_lambert93_keeps_its_crs_and_lands_where_it_belongs(base, files):
    imp = create(base)
    response = requests.put(
        f"{base}/imports/{imp['id']}/tasks/france.zip",
        data=files["shp"].read_bytes(),
        headers={"Content-Type": "application/zip"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 201, response.text
    task = response.json()["task"]
    assert task["data"]["format"] == "Shapefile" and task["data"]["prj"] == "france.prj"
    assert set(task["data"]["other"]) >= {"france.shx", "france.dbf"}
    assert task["layer"]["srs"] == "EPSG:2154"
    assert task["layer"]["bbox"]["maxy"] > 6_000_000  # metres, not degrees
    renamed(base, imp["id"], task, "france")
    cid = published(execute(base, imp["id"])["tasks"][0])
    france = items(base, cid, name="France")
    assert len(france) == 1
    assert in_france(france[0])  # served in CRS84
    assert matched(base, cid) == int(files["france_count"].name)


def test_shapefile_parts_in_one_multipart_post_are_one_task(base, files):
    imp = create(base)
    parts = sorted(files["shp_dir"].iterdir())
    tasks = upload(base, imp["id"], *parts)
    assert len(tasks) == 1 and tasks[0]["data"]["file"] == "france.shp"
    assert tasks[0]["state"] == "READY"


# -- data types -------------------------------------------------------------------------------------
def test_file_data_by_server_path(base, files, root):
    target = root / unique("file")
    target.mkdir()
    shutil.copy(files["geojson"], target / "points.geojson")
    imp = create(base, {"data": {"type": "file", "file": str(target / "points.geojson")}})
    assert imp["state"] == "READY" and len(imp["tasks"]) == 1
    assert imp["tasks"][0]["data"]["file"] == "points.geojson"
    renamed(base, imp["id"], imp["tasks"][0], "by_path")
    assert matched(base, published(execute(base, imp["id"])["tasks"][0])) == COUNTRIES


def test_directory_data_makes_a_task_per_layer(base, files, root):
    target = root / unique("dir")
    target.mkdir()
    shutil.copy(files["gpkg"], target / "two.gpkg")
    shutil.copy(files["fgb"], target / "points.fgb")
    imp = create(base, {"data": {"type": "directory", "location": str(target)}})
    names = sorted(t["layer"]["originalName"] for t in imp["tasks"])
    assert len(names) == 3 and "countries" in names, names


def test_paths_outside_the_import_roots_are_refused(base, tmp_path, files):
    outside = tmp_path / "points.geojson"
    shutil.copy(files["geojson"], outside)
    response = requests.post(
        f"{base}/imports", json={"import": {"data": {"type": "file", "file": str(outside)}}}, timeout=TIMEOUT
    )
    assert response.status_code == 403, response.text
    assert "imports.roots" in response.json()["errors"][0]
    imp = create(base)
    response = requests.post(
        f"{base}/imports/{imp['id']}/tasks", data={"url": outside.as_uri()}, timeout=TIMEOUT
    )
    assert response.status_code == 403, response.text


def test_form_url_of_a_server_file(base, files, root):
    target = root / unique("url")
    target.mkdir()
    shutil.copy(files["fgb"], target / "points.fgb")
    imp = create(base)
    response = requests.post(
        f"{base}/imports/{imp['id']}/tasks", data={"url": (target / "points.fgb").as_uri()}, timeout=TIMEOUT
    )
    assert response.status_code == 201, response.text
    assert response.json()["task"]["data"]["format"] == "FlatGeobuf"


def test_remote_zip_async_init_and_execute(base, remote, files):
    imp = create(
        base,
        {"data": {"type": "remote", "location": f"{remote}/france.zip"}},
        params="?async=true&execute=true",
    )
    assert imp["state"] in ("INIT", "RUNNING", "COMPLETE")
    done = wait(base, imp["id"])
    assert done["state"] == "COMPLETE", [t.get("errorMessage") for t in done["tasks"]]
    assert matched(base, published(done["tasks"][0])) == int(files["france_count"].name)


def test_remote_url_form_and_a_missing_remote_file(base, remote):
    imp = create(base)
    response = requests.post(
        f"{base}/imports/{imp['id']}/tasks", data={"url": f"{remote}/points.geojson"}, timeout=TIMEOUT
    )
    assert response.status_code == 201, response.text
    assert response.json()["task"]["state"] == "READY"
    missing = requests.post(
        f"{base}/imports/{imp['id']}/tasks", data={"url": f"{remote}/nothing.zip"}, timeout=TIMEOUT
    )
    assert missing.status_code == 422 and "404" in missing.json()["errors"][0]
    failed = create(base, {"data": {"type": "remote", "location": f"{remote}/nothing.zip"}}, "?async=true")
    found = wait(base, failed["id"], ("INIT_ERROR", "READY", "PENDING"))
    assert found["state"] == "INIT_ERROR" and "404" in found["message"]


def test_database_data_copies_a_table_of_another_source(base):
    imp = create(
        base,
        {
            "targetStore": {"dataStore": {"name": "pg"}},
            "data": {"type": "database", "source": "gpkg", "table": "countries"},
        },
    )
    assert len(imp["tasks"]) == 1 and imp["tasks"][0]["data"]["type"] == "table"
    assert imp["tasks"][0]["data"]["format"] == "GeoPackage"
    renamed(base, imp["id"], imp["tasks"][0], "from_gpkg")
    cid = published(execute(base, imp["id"])["tasks"][0])
    assert matched(base, cid) == COUNTRIES
    assert matched(base, cid, name="France") == 1


# -- update modes ------------------------------------------------------------------------------------
def test_update_modes_create_replace_append(base, files, pg_url):
    name = unique("modes")

    def run(mode: str, path: Path) -> dict[str, Any]:
        imp = create(base)
        task = upload(base, imp["id"], path)[0]
        put_task(base, imp["id"], task["id"], {"task": {"updateMode": mode, "layer": {"name": name}}})
        return execute(base, imp["id"])

    first = run("CREATE", files["geojson"])
    cid = published(first["tasks"][0])
    assert matched(base, cid) == COUNTRIES
    again = run("CREATE", files["geojson"])
    assert again["state"] == "COMPLETE_ERROR"
    assert "already exists" in again["tasks"][0]["errorMessage"]
    appended = run("APPEND", files["geojson"])
    assert published(appended["tasks"][0]) == cid
    assert matched(base, cid) == 2 * COUNTRIES
    replaced = run("REPLACE", files["geojson"])
    assert published(replaced["tasks"][0]) == cid
    assert matched(base, cid) == COUNTRIES
    assert table_exists(pg_url, name)


def test_an_unknown_update_mode_is_refused(base, files):
    imp = create(base)
    task = upload(base, imp["id"], files["geojson"])[0]
    response = requests.put(task["href"], json={"task": {"updateMode": "MERGE"}}, timeout=TIMEOUT)
    assert response.status_code == 422 and "updateMode" in response.json()["errors"][0]


# -- transforms -----------------------------------------------------------------------------------------
def test_transforms_resource_lifecycle(base, files):
    imp = create(base)
    task = upload(base, imp["id"], files["geojson"])[0]
    href = f"{task['href']}/transforms"
    response = requests.post(
        href, json={"type": "ReprojectTransform", "target": "EPSG:3857"}, timeout=TIMEOUT
    )
    assert response.status_code == 201, response.text
    assert response.headers["Location"].endswith("/transforms/0")
    response = requests.post(href, json={"type": "CreateIndexTransform", "field": "name"}, timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    listed = requests.get(href, timeout=TIMEOUT).json()["transforms"]
    assert [t["type"] for t in listed] == ["ReprojectTransform", "CreateIndexTransform"]
    changed = requests.put(f"{href}/0", json={"target": "EPSG:3035"}, timeout=TIMEOUT)
    assert changed.status_code == 200 and changed.json()["target"] == "EPSG:3035"
    assert requests.get(f"{href}/0", timeout=TIMEOUT).json()["target"] == "EPSG:3035"
    assert requests.get(task["href"], timeout=TIMEOUT).json()["task"]["layer"]["srs"] == "EPSG:3035"
    assert requests.delete(f"{href}/1", timeout=TIMEOUT).status_code == 204
    assert len(requests.get(href, timeout=TIMEOUT).json()["transforms"]) == 1
    assert requests.get(f"{href}/5", timeout=TIMEOUT).status_code == 404
    bad = requests.post(href, json={"type": "NoSuchTransform"}, timeout=TIMEOUT)
    assert bad.status_code == 422 and bad.json()["errors"]
    # gn-gsimporter saves the whole chain by PUTting the task back, without the wrapper.
    chain = {"type": "vector", "transforms": [{"type": "ReprojectTransform", "target": "EPSG:4326"}]}
    saved = put_task(base, imp["id"], task["id"], {"transformChain": chain})
    assert [t["target"] for t in saved["transformChain"]["transforms"]] == ["EPSG:4326"]


def test_every_transform_through_an_import(base, files, pg_url):
    """A CSV of places with coordinates in two columns GDAL does not know, a date as text and a
    year: points made, types changed, a value computed, reprojected, indexed."""
    imp = create(base)
    task = upload(base, imp["id"], files["latlon_csv"])[0]
    assert task["state"] == "BAD_FORMAT" and "geometry" in task["errorMessage"]
    chain = [
        {"type": "AttributesToPointGeometryTransform", "latField": "place_lat", "lngField": "place_lon"},
        {"type": "AttributeRemapTransform", "field": "pop", "target": "java.lang.Long"},
        {"type": "DateFormatTransform", "field": "seen", "format": "yyyyMMdd"},
        {"type": "IntegerFieldToDateTransform", "field": "year"},
        {
            "type": "AttributeComputeTransform",
            "field": "pop_k",
            "fieldType": "java.lang.Double",
            "cql": "pop / 1000",
        },
        {"type": "ReprojectTransform", "target": "EPSG:3857"},
        {"type": "CreateIndexTransform", "field": "name"},
    ]
    name = unique("places")
    task = put_task(
        base,
        imp["id"],
        task["id"],
        {"layer": {"name": name}, "transformChain": {"type": "vector", "transforms": chain}},
    )
    assert task["state"] == "READY", task
    assert task["layer"]["srs"] == "EPSG:3857"
    bindings = {a["name"]: a["binding"] for a in task["layer"]["attributes"]}
    assert bindings["pop"] == "java.lang.Long" and bindings["pop_k"] == "java.lang.Double"
    assert "place_lat" not in bindings
    done = execute(base, imp["id"])
    cid = published(done["tasks"][0])
    canada = items(base, cid, name="Canada")
    assert len(canada) == 1, canada
    props = canada[0]["properties"]
    assert props["pop_k"] == pytest.approx(props["pop"] / 1000)
    assert props["seen"].startswith("2020-04-04")
    assert str(props["year"]).startswith("1993")
    lon, lat = canada[0]["geometry"]["coordinates"]  # served back in CRS84 from EPSG:3857
    assert lon == pytest.approx(-110.243808, abs=1e-5) and lat == pytest.approx(56.70192, abs=1e-5)
    with psycopg.connect(pg_url) as conn:
        srid = conn.execute(f"SELECT Find_SRID('public', '{name}', 'geom')").fetchone()[0]  # noqa: S608
        indexed = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename = %s AND indexdef LIKE %s", (name, "%(name)%")
        ).fetchone()[0]
    assert srid == 3857 and indexed == 1


def test_attribute_type_change_through_the_layer(base, files):
    imp = create(base)
    task = upload(base, imp["id"], files["geojson"])[0]
    response = requests.put(
        f"{task['href']}/layer",
        json={"layer": {"attributes": [{"name": "pop_est", "binding": "java.lang.String"}]}},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    changed = response.json()["task"]
    assert {a["name"]: a["binding"] for a in changed["layer"]["attributes"]}["pop_est"] == "java.lang.String"
    assert changed["transformChain"]["transforms"][-1]["type"] == "AttributeRemapTransform"


# -- states and bad input --------------------------------------------------------------------------
def test_no_crs_until_the_layer_srs_is_set(base, files, tmp_path):
    for part in files["shp_dir"].iterdir():
        if part.suffix != ".prj":
            shutil.copy(part, tmp_path / part.name)
    imp = create(base)
    task = upload(base, imp["id"], *sorted(tmp_path.iterdir()))[0]
    assert task["state"] == "NO_CRS" and "srs" in task["errorMessage"]
    assert get(base, imp["id"])["state"] == "PENDING"
    not_ready = requests.post(f"{base}/imports/{imp['id']}", timeout=TIMEOUT)
    assert not_ready.status_code == 422 and "NO_CRS" in not_ready.json()["errors"][0]
    response = requests.put(f"{task['href']}/layer", json={"layer": {"srs": "EPSG:2154"}}, timeout=TIMEOUT)
    assert response.status_code == 200 and response.json()["task"]["state"] == "READY"
    renamed(base, imp["id"], task, "no_prj")
    cid = published(execute(base, imp["id"])["tasks"][0])
    assert in_france(items(base, cid, name="France")[0])


def test_unknown_format_is_no_format(base):
    imp = create(base)
    task = upload_bytes(base, imp["id"], "notes.txt", b"not spatial at all")
    assert task["state"] == "NO_FORMAT" and task["data"]["format"] is None
    assert "no spatial data" in task["errorMessage"]


def upload_bytes(base: str, iid: int, name: str, data: bytes) -> dict[str, Any]:
    response = requests.post(f"{base}/imports/{iid}/tasks", files=[("file", (name, data))], timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    return response.json()["task"]


def test_truncated_shapefile_is_bad_format(base, files, tmp_path):
    for part in files["shp_dir"].iterdir():
        data = part.read_bytes()
        (tmp_path / part.name).write_bytes(data[: len(data) // 2] if part.suffix == ".shp" else data)
    imp = create(base)
    task = upload(base, imp["id"], *sorted(tmp_path.iterdir()))[0]
    assert task["state"] == "BAD_FORMAT" and "truncated" in task["errorMessage"]


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


def test_zip_slip_is_refused_and_nothing_is_written(base, files, root):
    imp = create(base)
    before = set(root.parent.rglob("*"))
    evil = _zip({"../../escaped.geojson": files["geojson"].read_bytes()})
    response = requests.put(f"{base}/imports/{imp['id']}/tasks/evil.zip", data=evil, timeout=TIMEOUT)
    assert response.status_code == 422 and "outside" in response.json()["errors"][0]
    assert not any(p.name == "escaped.geojson" for p in set(root.parent.rglob("*")) - before)
    assert get(base, imp["id"])["tasks"] == []


def test_csv_with_bad_coordinates_fails_its_task_and_leaves_no_table(base, pg_url):
    imp = create(base)
    csv = b"NAME,PLACE_LAT,PLACE_LON\nA,10.5,20.5\nB,north,20.5\n"
    task = upload_bytes(base, imp["id"], "bad.csv", csv)
    chain = [{"type": "AttributesToPointGeometryTransform", "latField": "place_lat", "lngField": "place_lon"}]
    name = unique("bad_coords")
    task = put_task(
        base, imp["id"], task["id"], {"layer": {"name": name}, "transformChain": {"transforms": chain}}
    )
    done = execute(base, imp["id"])
    assert done["state"] == "COMPLETE_ERROR", done
    message = done["tasks"][0]["errorMessage"]
    assert "north" in message or "place_lat" in message, message
    assert not table_exists(pg_url, name)
    assert requests.get(f"{base}/collections/{name}", timeout=TIMEOUT).status_code == 404


def test_errors_and_status_codes(base):
    assert requests.get(f"{base}/imports/999999", timeout=TIMEOUT).status_code == 404
    body = requests.get(f"{base}/imports/999999", timeout=TIMEOUT).json()
    assert body == {"errors": ["import 999999 not found"]}
    bad = requests.post(
        f"{base}/imports", data=b"{not json", headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    )
    assert bad.status_code == 400 and "errors" in bad.json()
    store = requests.post(
        f"{base}/imports", json={"import": {"targetStore": {"dataStore": {"name": "nope"}}}}, timeout=TIMEOUT
    )
    assert store.status_code == 422 and "nope" in store.json()["errors"][0]
    kind = requests.post(f"{base}/imports", json={"import": {"data": {"type": "mosaic"}}}, timeout=TIMEOUT)
    assert kind.status_code == 422, kind.text


# -- ids, listing, deletion ------------------------------------------------------------------------------
def test_proposed_ids_list_and_delete(base, files, root):
    ahead = 500_000 + int(uuid.uuid4().int % 1000) * 10
    response = requests.put(f"{base}/imports/{ahead}", json={"import": {}}, timeout=TIMEOUT)
    assert response.status_code == 201 and response.json()["import"]["id"] == ahead
    behind = requests.put(f"{base}/imports/{ahead}", json={"import": {}}, timeout=TIMEOUT)
    assert behind.status_code == 201 and behind.json()["import"]["id"] > ahead
    nxt = create(base)
    assert nxt["id"] > behind.json()["import"]["id"]
    listed = {i["id"]: i for i in requests.get(f"{base}/imports", timeout=TIMEOUT).json()["imports"]}
    assert ahead in listed and listed[ahead]["href"].endswith(f"/imports/{ahead}")
    upload(base, nxt["id"], files["geojson"])
    assert requests.delete(f"{base}/imports/{nxt['id']}", timeout=TIMEOUT).status_code == 204
    assert requests.get(f"{base}/imports/{nxt['id']}", timeout=TIMEOUT).status_code == 404


def test_task_data_files_and_target(base, files):
    imp = create(base)
    task = upload(base, imp["id"], files["fgb"])[0]
    data = requests.get(f"{task['href']}/data", timeout=TIMEOUT).json()
    assert data["format"] == "FlatGeobuf" and data["file"] == "points.fgb"
    listing = requests.get(f"{task['href']}/data/files", timeout=TIMEOUT).json()["files"]
    assert [f["file"] for f in listing] == ["points.fgb"]
    target = requests.get(f"{task['href']}/target", timeout=TIMEOUT).json()["target"]
    assert target["dataStore"]["type"] in ("PostGIS", "GeoPackage")
    moved = requests.put(f"{task['href']}/target", json={"dataStore": {"name": "gpkg"}}, timeout=TIMEOUT)
    assert moved.status_code == 200 and moved.json()["task"]["target"]["dataStore"]["name"] == "gpkg"
    assert requests.delete(listing[0]["href"], timeout=TIMEOUT).status_code == 204
    assert get(base, imp["id"])["tasks"] == []


def test_async_execute_reports_progress_then_completes(base, files):
    imp = create(base)
    task, *others = upload(base, imp["id"], files["gpkg"])
    for other in others:
        requests.delete(other["href"], timeout=TIMEOUT).raise_for_status()
    renamed(base, imp["id"], task, "async")
    response = requests.post(f"{base}/imports/{imp['id']}?async=true", timeout=TIMEOUT)
    assert response.status_code == 204
    progress = requests.get(task["progress"], timeout=TIMEOUT).json()
    assert progress["state"] in ("READY", "RUNNING", "COMPLETE")
    done = wait(base, imp["id"])
    assert done["state"] == "COMPLETE", [t.get("errorMessage") for t in done["tasks"]]
    assert matched(base, published(done["tasks"][0])) == COUNTRIES
