"""The datasets API: upload spatial files, read their features, export them, refuse bad archives.

A server of its own (SQLite store and datasets directory in a temporary directory, a
small unpacked-size limit for the zip bomb). Every file is built here with GDAL
(pyogrio) from Natural Earth, and every export is read back with GDAL or pyarrow.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pyogrio
import pyogrio.raw
import pytest
import requests
import shapely
from conftest import Server, free_port, server_config
from sample_files import sample_files

from providers.store import SQLiteStore
from server.auth import key_digest, new_key

TIMEOUT = 60


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return sample_files(tmp_path_factory.mktemp("dataset-files"))


@pytest.fixture(scope="module")
def world(pg_url: str, gpkg_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("datasets-server")
    config = server_config(pg_url, gpkg_path, free_port())
    config["store"] = {"path": str(workdir / "state.sqlite"), "tables": "pg"}
    config["datasets"] = {"path": str(workdir / "datasets"), "max_unpacked_mb": 2}
    server = Server(config, workdir)
    try:
        yield {"url": server.url, "root": workdir / "datasets", "workdir": workdir}
    finally:
        server.stop()


def upload(world: dict[str, Any], *paths: Path, name: str | None = None) -> requests.Response:
    parts = [("file", (name or p.name, p.read_bytes())) for p in paths]
    return requests.post(world["url"] + "/datasets/upload", files=parts, timeout=TIMEOUT)


def upload_bytes(world: dict[str, Any], name: str, data: bytes) -> requests.Response:
    return requests.post(world["url"] + "/datasets/upload", files=[("file", (name, data))], timeout=TIMEOUT)


def created(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()


def entries(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()} if root.exists() else set()


# -- upload and metadata ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "driver", "layer", "geometry_type"),
    [
        ("geojson", "GeoJSON", "points", "Point"),
        ("fgb", "FlatGeobuf", "points", "Point"),
        ("csv", "CSV", "points", "Point"),
        ("kml", "LIBKML", None, "Point"),  # GDAL prefers libkml's driver when it has it
        ("gml", "GML", "points", "Point"),
        ("gpx", "GPX", "waypoints", "Point"),
        ("parquet", "Parquet", "points", "Point"),  # GeoParquet, read with pyarrow
    ],
)
def test_upload_reports_format_crs_and_layers(world, files, fmt, driver, layer, geometry_type):
    body = created(upload(world, files[fmt]))
    assert body["format"] == driver
    assert body["data_category"] == "vector"
    assert body["name"] == files[fmt].name
    assert body["size"] > 0 and body["created_at"].endswith("Z")
    with_features = [la for la in body["layers"] if la["feature_count"]]
    assert len(with_features) == 1, body["layers"]
    found = with_features[0]
    if layer is not None:
        assert found["name"] == layer
    assert found["feature_count"] == 177
    assert found["geometry_type"].startswith(geometry_type) or found["geometry_type"] == "Unknown", found
    assert body["crs"] == (None if fmt == "csv" else "EPSG:4326")
    assert requests.get(world["url"] + f"/datasets/{body['id']}", timeout=TIMEOUT).json() == body
    page = requests.get(
        world["url"] + f"/api/portal/datasets/{body['id']}/layers/{found['name']}/features",
        params={"limit": 3},
        timeout=TIMEOUT,
    ).json()
    assert page["total"] == 177 and len(page["features"]) == 3
    assert page["features"][0]["geometry"]["type"] == "Point"


def test_geopackage_two_layers_paging_and_bbox(world, files):
    body = created(upload(world, files["gpkg"]))
    assert body["format"] == "GPKG" and body["crs"] == "EPSG:4326"
    assert {(la["name"], la["geometry_type"], la["feature_count"]) for la in body["layers"]} == {
        ("countries", "MultiPolygon", 177),
        ("points", "Point", 177),
    }
    url = world["url"] + f"/api/portal/datasets/{body['id']}/layers/points/features"
    first = requests.get(url, params={"limit": 100}, timeout=TIMEOUT).json()
    second = requests.get(url, params={"limit": 100, "offset": 100}, timeout=TIMEOUT).json()
    assert (first["total"], first["limit"], first["offset"], len(first["features"])) == (177, 100, 0, 100)
    assert (second["offset"], len(second["features"])) == (100, 77)
    names = [f["properties"]["name"] for f in first["features"] + second["features"]]
    assert len(set(names)) == 177
    assert "France" in names
    bbox = "-5,41,10,52"
    inside = requests.get(url, params={"bbox": bbox, "limit": 1000}, timeout=TIMEOUT).json()
    expected = [
        n
        for n, f in zip(names, first["features"] + second["features"], strict=True)
        if shapely.box(-5, 41, 10, 52).intersects(shapely.geometry.shape(f["geometry"]))
    ]
    assert inside["total"] == len(expected) == len(inside["features"])
    assert sorted(f["properties"]["name"] for f in inside["features"]) == sorted(expected)
    assert "France" in expected and len(expected) < 20


def test_zipped_shapefile_in_lambert93(world, files):
    body = created(upload(world, files["shp"]))
    count = int(files["france_count"].name)
    assert body["format"] == "ESRI Shapefile"
    assert body["crs"] == "EPSG:2154"
    assert body["layers"] == [{"name": "france", "geometry_type": "Polygon", "feature_count": count}]
    page = requests.get(
        world["url"] + f"/api/portal/datasets/{body['id']}/layers/france/features",
        params={"limit": 1000, "bbox": "1,45,3,47"},  # the middle of France, in lon/lat
        timeout=TIMEOUT,
    ).json()
    assert [f["properties"]["name"] for f in page["features"]] == ["France"]
    france = shapely.geometry.shape(page["features"][0]["geometry"])
    assert france.contains(shapely.Point(2.35, 48.85)) and france.contains(
        shapely.Point(-52.3, 4.9)
    )  # lon/lat


def test_shapefile_parts_uploaded_together_are_one_dataset(world, files):
    parts = sorted(files["shp_dir"].iterdir())
    body = created(upload(world, *parts))
    assert body["name"] == "france" and body["crs"] == "EPSG:2154"
    assert [la["name"] for la in body["layers"]] == ["france"]


# -- list, get, delete ----------------------------------------------------------------------------
def test_list_get_and_delete_remove_the_files(world, files):
    one = created(upload(world, files["geojson"]))
    two = created(upload(world, files["fgb"]))
    listed = requests.get(world["url"] + "/datasets", params={"limit": 1000}, timeout=TIMEOUT).json()
    ids = [d["id"] for d in listed]
    assert one["id"] in ids and two["id"] in ids
    paged = requests.get(world["url"] + "/datasets", params={"limit": 1, "offset": 1}, timeout=TIMEOUT).json()
    assert paged == [listed[1]]
    assert (world["root"] / one["id"]).is_dir()
    for path, dataset in (("/datasets/", one), ("/api/portal/datasets/", two)):
        response = requests.delete(world["url"] + path + dataset["id"], timeout=TIMEOUT)
        assert response.status_code == 204, response.text
        assert not (world["root"] / dataset["id"]).exists()
        missing = requests.get(world["url"] + f"/datasets/{dataset['id']}", timeout=TIMEOUT)
        assert missing.status_code == 404
        assert "not found" in missing.json()["detail"]
    listed = requests.get(world["url"] + "/datasets", params={"limit": 1000}, timeout=TIMEOUT).json()
    assert not {one["id"], two["id"]} & {d["id"] for d in listed}


# -- export -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpkg_dataset(world: dict[str, Any], files: dict[str, Path]) -> dict[str, Any]:
    return created(upload(world, files["gpkg"]))


#: Every format through POST /datasets/export; the other two routes with two formats each.
EXPORTS = [("post", f) for f in ("gpkg", "geojson", "fgb", "parquet", "shp")]
EXPORTS += [(how, f) for how in ("portal", "get") for f in ("gpkg", "shp")]


@pytest.mark.parametrize(("how", "fmt"), EXPORTS)
def test_export_every_format_reads_back(world, gpkg_dataset, tmp_path, how, fmt):
    dataset = gpkg_dataset
    url = world["url"]
    body = {"dataset_id": dataset["id"], "format": fmt, "layer": "countries"}
    if how == "post":
        response = requests.post(url + "/datasets/export", json=body, timeout=TIMEOUT)
    elif how == "portal":
        response = requests.post(url + "/api/portal/datasets/export", json=body, timeout=TIMEOUT)
    else:
        response = requests.get(
            url + f"/datasets/{dataset['id']}/export",
            params={"format": fmt, "layer": "countries"},
            timeout=TIMEOUT,
        )
    assert response.status_code == 200, response.text
    extension = {"shp": "zip"}.get(fmt, fmt)
    assert response.headers["Content-Disposition"] == f"attachment; filename=countries.{extension}"
    media = {
        "gpkg": "application/geopackage+sqlite3",
        "geojson": "application/geo+json",
        "fgb": "application/vnd.flatgeobuf",
        "parquet": "application/vnd.apache.parquet",
        "shp": "application/zip",
    }[fmt]
    assert response.headers["Content-Type"] == media
    path = tmp_path / f"countries.{extension}"
    path.write_bytes(response.content)
    if fmt == "parquet":
        table = pq.read_table(path)
        geo = json.loads(table.schema.metadata[b"geo"])
        column = geo["columns"][geo["primary_column"]]
        assert geo["version"] == "1.1.0" and column["encoding"] == "WKB"
        assert column["crs"]["id"] == {"authority": "EPSG", "code": 4326}
        assert column["geometry_types"] == ["MultiPolygon"]
        assert table.num_rows == 177
        geoms = shapely.from_wkb(table.column(geo["primary_column"]).to_pylist())
        assert set(shapely.get_type_id(geoms).tolist()) == {6}
        assert column["bbox"][0] == pytest.approx(-180) and column["bbox"][3] == pytest.approx(
            83.645, abs=0.01
        )
        assert sorted(table.column("name").to_pylist())[:2] == ["Afghanistan", "Albania"]
        return
    if fmt == "shp":
        with zipfile.ZipFile(path) as zipped:
            assert {Path(n).suffix for n in zipped.namelist()} >= {".shp", ".shx", ".dbf", ".prj", ".cpg"}
        path = f"/vsizip/{path}/countries.shp"
    info = pyogrio.read_info(path)
    assert info["features"] == 177
    assert info["crs"] == "EPSG:4326"
    assert "name" in list(info["fields"])
    assert info["geometry_type"] in ("MultiPolygon", "Polygon")


def test_geoparquet_dataset_pages_by_bbox_and_exports(world, files, tmp_path):
    """A GeoParquet upload (read with pyarrow) answers bbox pages like GDAL formats and converts."""
    parquet = created(upload(world, files["parquet"]))
    geojson = created(upload(world, files["geojson"]))
    url = world["url"] + "/api/portal/datasets/{}/layers/{}/features"
    params = {"bbox": "-5,41,10,52", "limit": 1000}
    from_parquet = requests.get(url.format(parquet["id"], "points"), params=params, timeout=TIMEOUT).json()
    from_geojson = requests.get(url.format(geojson["id"], "points"), params=params, timeout=TIMEOUT).json()
    names = sorted(f["properties"]["name"] for f in from_parquet["features"])
    assert names == sorted(f["properties"]["name"] for f in from_geojson["features"])
    assert "France" in names and from_parquet["total"] == len(names)
    response = requests.get(
        world["url"] + f"/datasets/{parquet['id']}/export", params={"format": "gpkg"}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    (tmp_path / "out.gpkg").write_bytes(response.content)
    info = pyogrio.read_info(tmp_path / "out.gpkg")
    assert info["features"] == 177 and info["crs"] == "EPSG:4326" and info["geometry_type"] == "Point"


def test_export_refuses_unknown_format_and_layer(world, files):
    dataset = created(upload(world, files["geojson"]))
    url = world["url"]
    bad_format = requests.post(
        url + "/datasets/export", json={"dataset_id": dataset["id"], "format": "xls"}, timeout=TIMEOUT
    )
    assert bad_format.status_code == 422 and "format must be one of" in bad_format.json()["detail"]
    bad_layer = requests.get(
        url + f"/datasets/{dataset['id']}/export", params={"format": "gpkg", "layer": "nope"}, timeout=TIMEOUT
    )
    assert bad_layer.status_code == 404 and "no layer" in bad_layer.json()["detail"]
    unknown = requests.post(
        url + "/api/portal/datasets/export", json={"dataset_id": "0" * 32, "format": "gpkg"}, timeout=TIMEOUT
    )
    assert unknown.status_code == 404
    bad_bbox = requests.get(
        url + f"/api/portal/datasets/{dataset['id']}/layers/points/features",
        params={"bbox": "1,2,x,4"},
        timeout=TIMEOUT,
    )
    assert bad_bbox.status_code == 400 and "bbox" in bad_bbox.json()["detail"]


# -- bad input -----------------------------------------------------------------------------------
def _zip(members: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # a symbolic link
            zipped.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def test_zip_slip_is_refused_and_nothing_written_outside(world, files):
    before = entries(world["root"])
    outside = world["workdir"] / "escaped.geojson"
    for data, name in (
        (_zip({"../../escaped.geojson": files["geojson"].read_bytes()}), "../escaped.geojson"),
        (_zip({"/tmp/escaped.geojson": files["geojson"].read_bytes()}), "/escaped.geojson"),
        (_zip({"ok.geojson": files["geojson"].read_bytes()}, links=("link.geojson",)), "link"),
    ):
        response = upload_bytes(world, "evil.zip", data)
        assert response.status_code == 422, response.text
        assert name.strip("./") in response.json()["detail"] or "link" in response.json()["detail"]
    assert not outside.exists() and not Path("/tmp/escaped.geojson").exists()
    assert entries(world["root"]) == before


def test_zip_bomb_past_the_limit_is_413(world):
    before = entries(world["root"])
    bomb = _zip({"zeros.geojson": b"\0" * (3 << 20)})  # 3 MB of zeros in a few KB; the limit is 2 MB
    assert len(bomb) < 50_000
    response = upload_bytes(world, "bomb.zip", bomb)
    assert response.status_code == 413, response.text
    assert "limit" in response.json()["detail"]
    assert entries(world["root"]) == before


def test_damaged_and_unknown_files_are_422_and_leave_nothing(world, files):
    before = entries(world["root"])
    shp = files["shp_dir"]
    truncated = io.BytesIO()
    with zipfile.ZipFile(truncated, "w") as zipped:
        for part in shp.iterdir():
            data = part.read_bytes()
            zipped.writestr(part.name, data[: len(data) // 2] if part.suffix == ".shp" else data)
    response = upload_bytes(world, "cut.zip", truncated.getvalue())
    assert response.status_code == 422 and "truncated" in response.json()["detail"], response.text
    no_dbf = [p for p in shp.iterdir() if p.suffix != ".dbf"]
    response = upload(world, *no_dbf)
    assert response.status_code == 422 and ".dbf" in response.json()["detail"], response.text
    response = upload_bytes(world, "notes.txt", b"just some text\n")
    assert response.status_code == 422 and "no spatial data" in response.json()["detail"]
    response = upload_bytes(world, "broken.geojson", b'{"type": "FeatureCollection", "features": [')
    assert response.status_code == 422 and "broken.geojson" in response.json()["detail"]
    response = upload_bytes(world, "broken.zip", b"PK\x03\x04 not really a zip")
    assert response.status_code == 422 and "zip" in response.json()["detail"]
    response = requests.post(world["url"] + "/datasets/upload", data={"x": "1"}, timeout=TIMEOUT)
    assert response.status_code == 422 and "file" in response.json()["detail"]
    assert entries(world["root"]) == before


def test_openapi_describes_the_datasets_routes(world):
    doc = requests.get(world["url"] + "/openapi", params={"f": "json"}, timeout=TIMEOUT).json()
    assert "post" in doc["paths"]["/datasets/upload"]
    assert "delete" in doc["paths"]["/api/portal/datasets/{id}"]
    assert "Dataset" in doc["components"]["schemas"]


# -- access in protected mode --------------------------------------------------------------------
def test_protected_mode_owner_reads_and_deletes_others_do_not(pg_url, gpkg_path, files, tmp_path):
    """A user's dataset is hers: anonymous and other keys neither see nor delete it; the admin does."""
    state = tmp_path / "state.sqlite"
    store = SQLiteStore(state)
    keys = {}
    for name, scopes in (("alice", ["read", "write"]), ("bob", ["read", "write"]), ("reader", ["read"])):
        user = store.insert("user", {"username": name, "active": True, "admin": False, "roles": []}, key=name)
        keys[name] = new_key()
        body = {"user_id": user.id, "scopes": scopes, "active": True, "expires": None, "key_trunc": ""}
        store.insert("key", body, key=key_digest(keys[name]))
    store.close()
    config = server_config(pg_url, gpkg_path, free_port())
    config["store"] = {"path": str(state), "tables": "pg"}
    config["auth"] = {"api_key": (master := new_key())}
    server = Server(config, tmp_path)
    try:
        url = server.url + "/datasets"

        def call(method: str, path: str, key: str | None, **kwargs: Any) -> requests.Response:
            headers = {"X-API-Key": key} if key else {}
            return requests.request(method, url + path, headers=headers, timeout=TIMEOUT, **kwargs)

        parts = [("file", (files["geojson"].name, files["geojson"].read_bytes()))]
        assert call("POST", "/upload", None, files=parts).status_code == 401
        assert call("POST", "/upload", keys["reader"], files=parts).status_code == 403
        mine = call("POST", "/upload", keys["alice"], files=parts)
        assert mine.status_code == 201, mine.text
        dataset = mine.json()
        path = f"/{dataset['id']}"
        assert call("GET", path, keys["alice"]).status_code == 200
        for key in (None, keys["bob"], keys["reader"]):
            assert call("GET", path, key).status_code == 404
            assert dataset["id"] not in {d["id"] for d in call("GET", "", key).json()}
            assert call("DELETE", path, key).status_code in (401, 404)
        assert dataset["id"] in {d["id"] for d in call("GET", "", keys["alice"]).json()}
        assert dataset["id"] in {d["id"] for d in call("GET", "", master).json()}
        assert call("DELETE", path, keys["alice"]).status_code == 204
        assert call("GET", path, master).status_code == 404
    finally:
        server.stop()
