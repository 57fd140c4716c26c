"""The GISPulse text's platform routes on the session server: ``/health``, the OGC API under
``/ogc`` with its ``.mvt`` tiles, ``/metrics`` added up over the gunicorn workers, and the
portal's ``{layers, format}`` export body."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import mapbox_vector_tile
import psycopg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sample_files import sample_files

from server import __version__
from server.app import create_app

TIMEOUT = 30
COUNTRIES = 177
MVT = "application/vnd.mapbox-vector-tile"


def get(url: str, **kwargs: Any) -> requests.Response:
    return requests.get(url, timeout=TIMEOUT, **kwargs)


# -- /health ----------------------------------------------------------------------------------------
def test_health_has_the_texts_fields_and_the_details(base):
    body = get(f"{base}/health").json()
    assert body["status"] == "ok" and body["version"] == __version__
    assert body["engine"] == "postgis" and body["postgis"] is True
    assert body["components"]["store"] == "ok" and body["components"]["pg"] == "ok"
    assert body["postgis_sources"] == {"configured": True, "reachable": True}
    assert body["providers"]["pg"]["up"] and body["auth"]["mode"] == "community"


def test_health_of_a_server_without_postgis_says_python(gpkg_path, tmp_path):
    app = create_app(
        {
            "sources": {"files": {"type": "geopackage", "path": str(gpkg_path)}},
            "collections": {"countries": {"source": "files", "layer": "countries"}},
            "store": {"path": str(tmp_path / "state.sqlite")},
        }
    )
    try:
        body = app.test_client().get("/health").get_json()
    finally:
        app.extensions["geoharbor"].registry.close()
    assert body["engine"] == "python" and body["postgis"] is False
    assert body["components"] == {"store": "ok", "files": "ok"}


# -- /ogc -------------------------------------------------------------------------------------------
def test_the_ogc_api_under_ogc_links_under_ogc(base):
    prefix = f"{base}/ogc"
    landing = get(f"{prefix}/")
    assert landing.status_code == 200
    hrefs = [link["href"] for link in landing.json()["links"]]
    assert hrefs and all(h.startswith(prefix) and h[len(prefix) :][:1] in ("", "/", "?") for h in hrefs), (
        hrefs
    )
    collections = get(f"{prefix}/collections").json()["collections"]
    assert {c["id"] for c in collections} == {
        c["id"] for c in get(f"{base}/collections").json()["collections"]
    }
    assert all(link["href"].startswith(prefix) for c in collections for link in c["links"])
    assert get(f"{prefix}/conformance").json() == get(f"{base}/conformance").json()

    page = get(f"{prefix}/collections/pg-countries/items", params={"limit": 100})
    assert page.status_code == 200 and page.json()["numberMatched"] == COUNTRIES
    nxt = next(link["href"] for link in page.json()["links"] if link["rel"] == "next")
    assert nxt.startswith(f"{prefix}/collections/pg-countries/items?")
    rest = get(nxt).json()
    assert len(page.json()["features"]) + len(rest["features"]) == COUNTRIES


def test_the_ogc_mount_adds_to_a_proxys_prefix(gpkg_path, tmp_path):
    app = create_app(
        {
            "server": {"trust_proxy_headers": True},
            "sources": {"files": {"type": "geopackage", "path": str(gpkg_path)}},
            "collections": {"countries": {"source": "files", "layer": "countries"}},
            "store": {"path": str(tmp_path / "state.sqlite")},
        }
    )
    try:
        headers = {"X-Forwarded-Prefix": "/geo", "X-Forwarded-Host": "maps.example.org"}
        body = app.test_client().get("/ogc/collections/countries/items?limit=1", headers=headers).get_json()
    finally:
        app.extensions["geoharbor"].registry.close()
    hrefs = [link["href"] for link in body["links"]]
    assert hrefs and all(h.startswith("http://maps.example.org/geo/ogc/collections/countries") for h in hrefs)


def test_only_the_ogc_api_is_mirrored_and_errors_keep_the_ogc_format(base):
    assert get(f"{base}/ogc/rest/1/layers").status_code == 404
    assert get(f"{base}/ogc/health").status_code == 404
    missing = get(f"{base}/ogc/collections/nope/items")
    assert missing.status_code == 404 and missing.json()["code"] == "NotFound"


def test_mvt_tiles_take_x_before_y(base):
    """z=2, x=2, y=1: longitudes 0 to 90 east, latitudes 0 to 66.5 north."""
    tile = get(f"{base}/ogc/collections/pg-countries/tiles/2/2/1.mvt")
    assert tile.status_code == 200 and tile.headers["Content-Type"] == MVT
    same = get(f"{base}/collections/pg-countries/tiles/WebMercatorQuad/2/1/2")
    assert tile.content == same.content
    names = {
        f["properties"]["name"] for f in mapbox_vector_tile.decode(tile.content)["pg-countries"]["features"]
    }
    assert {"Germany", "India"} <= names and "Brazil" not in names
    assert get(f"{base}/collections/pg-countries/tiles/2/2/1.mvt").content == tile.content
    assert get(f"{base}/ogc/collections/pg-countries/tiles/2/4/1.mvt").status_code in (400, 404)


# -- /metrics ---------------------------------------------------------------------------------------
def scrape(base: str) -> dict[tuple[str, tuple], float]:
    response = get(f"{base}/metrics")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_request_counts_add_up_over_both_workers(base):
    labels = {"method": "GET", "route": "/health", "status": "200"}
    before = value(scrape(base), "geoharbor_http_requests_total", **labels)
    for _ in range(12):
        assert get(f"{base}/health").status_code == 200
    samples = scrape(base)
    assert value(samples, "geoharbor_http_requests_total", **labels) - before == 12
    timed = value(samples, "geoharbor_http_request_duration_seconds_count", method="GET", route="/health")
    assert timed >= 12


def test_tile_cache_hits_and_misses_are_counted(base):
    before = scrape(base)
    url = f"{base}/collections/pg-countries/tiles/WebMercatorQuad/5/11/16"
    for _ in range(8):
        assert get(url).status_code in (200, 204)
    after = scrape(base)
    hits = value(after, "geoharbor_tile_cache_total", result="hit") - value(
        before, "geoharbor_tile_cache_total", result="hit"
    )
    misses = value(after, "geoharbor_tile_cache_total", result="miss") - value(
        before, "geoharbor_tile_cache_total", result="miss"
    )
    # Built once in each worker that served it (two at most), then found in its cache.
    assert hits + misses == 8 and 1 <= misses <= 2


def test_jobs_by_state_are_read_from_the_store(base, pg_url):
    samples = scrape(base)
    with psycopg.connect(pg_url) as conn:
        counts = dict(
            conn.execute(
                "SELECT body->>'state', count(*) FROM geoharbor.records WHERE kind = 'job' GROUP BY 1"
            ).fetchall()
        )
    for state in ("PENDING", "RUNNING", "COMPLETE", "FAILED"):
        assert value(samples, "geoharbor_jobs", state=state) == counts.get(state, 0)


# -- the portal's export body -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A GeoPackage of two layers, countries and points, uploaded as a dataset."""
    files = sample_files(tmp_path_factory.mktemp("portal-export"))
    path: Path = files["gpkg"]
    with path.open("rb") as handle:
        created = requests.post(
            f"{base}/datasets/upload", files={"file": (path.name, handle)}, timeout=TIMEOUT
        )
    assert created.status_code == 201, created.text
    return created.json()["id"]


def export(base: str, body: Any) -> requests.Response:
    return requests.post(f"{base}/api/portal/datasets/export", json=body, timeout=TIMEOUT)


def test_one_layer_is_the_file(base, dataset):
    response = export(base, {"layers": [{"datasetId": dataset, "layerName": "points"}], "format": "geojson"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/geo+json")
    assert "points.geojson" in response.headers["Content-Disposition"]
    features = response.json()["features"]
    assert len(features) == COUNTRIES and features[0]["geometry"]["type"] == "Point"


def test_several_layers_are_one_zip_of_a_file_each(base, dataset):
    layers = [{"datasetId": dataset, "layerName": "countries"}, {"datasetId": dataset, "layerName": "points"}]
    response = export(base, {"layers": layers, "format": "geojson"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as zipped:
        assert sorted(zipped.namelist()) == ["countries.geojson", "points.geojson"]
        for name in zipped.namelist():
            assert len(json.loads(zipped.read(name))["features"]) == COUNTRIES
    shapefiles = export(base, {"layers": layers, "format": "shp"})
    with zipfile.ZipFile(io.BytesIO(shapefiles.content)) as zipped:
        names = set(zipped.namelist())
    assert {"countries.shp", "countries.dbf", "countries.shx", "points.shp", "points.prj"} <= names
    assert not any(n.endswith(".zip") for n in names)


def test_the_texts_body_still_works_and_bad_bodies_are_refused(base, dataset):
    texts = export(base, {"dataset_id": dataset, "format": "fgb", "layer": "points"})
    assert texts.status_code == 200 and texts.headers["Content-Type"] == "application/vnd.flatgeobuf"
    refusals = [
        ({"layers": [], "format": "geojson"}, 422),
        ({"layers": [{"datasetId": dataset}], "format": "dwg"}, 422),
        ({"layers": [{"layerName": "points"}], "format": "geojson"}, 422),
        ({"layers": [{"datasetId": "6f1c4a52-0000-4000-8000-000000000000"}], "format": "geojson"}, 404),
        ({"layers": [{"datasetId": dataset, "layerName": "nope"}], "format": "geojson"}, 404),
    ]
    for body, status in refusals:
        response = export(base, body)
        assert response.status_code == status, (body, response.text)
        assert "detail" in response.json()
