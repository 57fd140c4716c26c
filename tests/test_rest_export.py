"""REST layer export: the files open in GDAL with the right features, fields and CRS."""

from __future__ import annotations

import io
import json
import subprocess
import tempfile
import uuid
import zipfile
from pathlib import Path

import pytest
import requests

TIMEOUT = 120
POINTS = [
    ("alpha", 1, 2.35, 48.85),
    ("beta", 2, 13.4, 52.52),
    ("gamma", 3, -3.7, 40.42),
]
#: Served type, file extension, and whether ogrinfo reports a CRS (CSV carries none).
FORMATS = {
    "shp": ("application/zip", "zip", True),
    "kml": ("application/vnd.google-earth.kml+xml", "kml", True),
    "gpx": ("application/gpx+xml", "gpx", True),
    "gml": ("application/gml+xml", "gml", True),
    "csv": ("text/csv", "csv", False),
    "geojson": ("application/geo+json", "geojson", True),
    "gpkg": ("application/geopackage+sqlite3", "gpkg", True),
}


def rest(base: str, path: str) -> str:
    return f"{base}/rest/1{path}"


@pytest.fixture(scope="module")
def layers(base):
    """One point layer per backend, made through the REST tables API: {backend: (layer id, table)}."""
    out = {}
    for backend in ("pg", "gpkg"):
        name = f"export_{backend}_{uuid.uuid4().hex[:8]}"
        params = {"connection_id": backend}
        columns = {
            "name": "text",
            "n": "integer",
            "x": "number",
            "ok": "boolean",
            "day": "date",
            "at": "datetime",
        }
        created = requests.post(
            rest(base, "/tables"),
            params=params,
            json={"name": name, "geometry": "POINT", "columns": columns},
            timeout=TIMEOUT,
        )
        assert created.status_code == 201, created.text
        for label, n, lon, lat in POINTS:
            row = {
                "data": {"name": label, "n": n, "x": n / 2, "ok": n % 2 == 1, "day": "2024-01-0" + str(n)},
                "geometry": f"POINT({lon} {lat})",
            }
            if n == 1:
                row["data"]["at"] = "2024-01-01T12:30:00Z"
            response = requests.post(
                rest(base, f"/tables/{name}/rows"), params=params, json=row, timeout=TIMEOUT
            )
            assert response.status_code == 201, response.text
        out[backend] = (created.json()["layer_id"], name)
    yield out
    for backend, (_, name) in out.items():
        requests.delete(rest(base, f"/tables/{name}"), params={"connection_id": backend}, timeout=TIMEOUT)


def download(base: str, layer, fmt: str, tmp_path: Path, **params) -> Path:
    response = requests.get(rest(base, f"/layers/{layer}/export/{fmt}"), params=params, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    media, ext, _ = FORMATS[fmt.removesuffix(".zip")]
    if fmt.endswith(".zip") or params.get("zip"):
        media, ext = "application/zip", "zip"
    assert response.headers["Content-Type"].split(";")[0] == media
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment") and f".{ext}" in disposition
    assert int(response.headers["Content-Length"]) == len(response.content)
    path = tmp_path / f"export.{ext}"
    path.write_bytes(response.content)
    return path


def ogrinfo(target: str, *options: str) -> str:
    result = subprocess.run(["ogrinfo", "-ro", *options, target], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def feature_count(info: str) -> int:
    counts = [int(line.split(":")[1]) for line in info.splitlines() if line.startswith("Feature Count:")]
    return sum(counts)


def temp_exports() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("geoharbor-export-*")}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_formats_open_in_gdal(base, backend, layers, fmt, tmp_path):
    layer_id, name = layers[backend]
    leftovers = temp_exports()
    path = download(base, layer_id, fmt, tmp_path)
    target = str(path)
    if fmt == "shp":
        with zipfile.ZipFile(path) as archive:
            assert sorted(Path(n).suffix for n in archive.namelist()) == [
                ".cpg",
                ".dbf",
                ".prj",
                ".shp",
                ".shx",
            ]
            assert archive.read(f"{name}.cpg").strip() == b"UTF-8"
        target = f"/vsizip/{path}/{name}.shp"
    info = ogrinfo(target, "-so", "-al")
    assert feature_count(info) == 3, info
    if FORMATS[fmt][2]:
        assert 'ID["EPSG",4326]' in info, info
    everything = ogrinfo(target, "-al")
    for label, *_ in POINTS:
        assert label in everything
    assert "POINT (13.4 52.52)" in everything
    assert temp_exports() <= leftovers  # the temporary files are gone once the file is sent


def test_exported_values_and_types(base, backend, layers, tmp_path):
    layer_id, _ = layers[backend]
    body = json.loads(download(base, layer_id, "geojson", tmp_path).read_text())
    features = sorted(body["features"], key=lambda f: f["properties"]["n"])
    first = features[0]["properties"]
    assert first["name"] == "alpha" and first["n"] == 1 and first["x"] == 0.5 and first["ok"] is True
    assert first["day"] == "2024-01-01" and first["at"].startswith("2024-01-01T12:30:00")
    assert features[1]["properties"]["at"] is None and features[1]["properties"]["ok"] is False
    assert features[2]["geometry"] == {"type": "Point", "coordinates": [-3.7, 40.42]}
    gpkg = ogrinfo(str(download(base, layer_id, "gpkg", tmp_path)), "-so", "-al")
    assert "n: Integer64" in gpkg and "x: Real" in gpkg and "ok: Integer(Boolean)" in gpkg
    assert "day: Date" in gpkg and "at: DateTime" in gpkg
    # dBase has no timestamps: a shapefile holds them as RFC 3339 text.
    shp = download(base, layer_id, "shp", tmp_path)
    records = ogrinfo(f"/vsizip/{shp}", "-al")
    assert "at (String) = 2024-01-01T12:30:00Z" in records and "day (Date) = 2024/01/02" in records


def test_export_filters_crs_and_zip(base, backend, layers, tmp_path):
    layer_id, name = layers[backend]
    assert (
        feature_count(
            ogrinfo(str(download(base, layer_id, "geojson", tmp_path, where="n >= 2")), "-so", "-al")
        )
        == 2
    )
    boxed = download(base, layer_id, "geojson", tmp_path, bounds="0,45,5,50")
    assert [f["properties"]["name"] for f in json.loads(boxed.read_text())["features"]] == ["alpha"]
    projected = ogrinfo(str(download(base, layer_id, "gpkg", tmp_path, epsg="3857")), "-so", "-al")
    assert 'ID["EPSG",3857]' in projected and "Feature Count: 3" in projected
    in_metres = download(base, layer_id, "geojson", tmp_path, epsg="3857", bounds="0,5000000,1000000,7000000")
    assert [f["properties"]["name"] for f in json.loads(in_metres.read_text())["features"]] == ["alpha"]
    for zipped in (
        download(base, layer_id, "csv.zip", tmp_path),
        download(base, layer_id, "csv", tmp_path, zip="true"),
    ):
        with zipfile.ZipFile(zipped) as archive:
            assert archive.namelist() == [f"{name}.csv"]
            text = archive.read(f"{name}.csv").decode()
        assert text.splitlines()[0].startswith("WKT,id,name") and len(text.strip().splitlines()) == 4
    # .json is a REST suffix, not part of the format.
    response = requests.get(rest(base, f"/layers/{layer_id}/export/csv.json"), timeout=TIMEOUT)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/csv")


def test_export_of_a_configured_collection(base, backend, tmp_path):
    path = download(base, f"{backend}-countries", "shp", tmp_path)
    info = ogrinfo(f"/vsizip/{path}/{backend}-countries.shp", "-so", "-al")
    # A shapefile has one type for polygons and multipolygons: GDAL reads it back as Polygon.
    assert feature_count(info) == 177 and "Geometry: Polygon" in info and 'ID["EPSG",4326]' in info
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
        assert len(archive.namelist()) == 5


@pytest.mark.parametrize(
    "path, params, status",
    [
        ("/layers/{layer}/export/dwg", {}, 400),
        ("/layers/{layer}/export/geojson", {"where": "1=1; drop table countries"}, 400),
        ("/layers/{layer}/export/geojson", {"where": "name = 'a' OR pg_sleep(1)"}, 400),
        ("/layers/{layer}/export/geojson", {"where": "nope = 1"}, 400),
        ("/layers/{layer}/export/geojson", {"bounds": "1,2,3"}, 400),
        ("/layers/{layer}/export/geojson", {"epsg": "4326; drop"}, 400),
        ("/layers/999999/export/geojson", {}, 404),
        ("/layers/no-such-collection/export/geojson", {}, 404),
        ("/layers/pg-countries/export/gpx", {}, 400),
    ],
)
def test_bad_exports(base, layers, pg, path, params, status):
    layer_id, _ = layers["pg"]
    response = requests.get(rest(base, path.format(layer=layer_id)), params=params, timeout=TIMEOUT)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "msg"} and body["msg"]
    assert pg.execute("SELECT count(*) FROM countries").fetchone()[0] == 177


def test_openapi_describes_the_export_route(base):
    doc = requests.get(f"{base}/openapi", params={"f": "json"}, timeout=TIMEOUT).json()
    operation = doc["paths"]["/rest/1/layers/{layer_id}/export/{format}"]["get"]
    assert "application/zip" in operation["responses"]["200"]["content"]
    assert {p["name"] for p in operation["parameters"]} >= {"where", "bounds", "epsg", "zip"}
