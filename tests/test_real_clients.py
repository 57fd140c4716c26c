"""Real clients against the running server: GDAL's OAPIF driver and OWSLib."""

from __future__ import annotations

import json
import subprocess

import pytest
from owslib.ogcapi.features import Features

N_COUNTRIES = 177


def ogr(*args: str) -> str:
    result = subprocess.run(["ogrinfo", "-ro", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def feature_count(text: str) -> int:
    line = next(line for line in text.splitlines() if line.startswith("Feature Count:"))
    return int(line.split(":")[1])


@pytest.mark.parametrize("page_size", ["10", "50"])
def test_gdal_copies_whole_collection_through_paging(base, backend, tmp_path, page_size):
    out = tmp_path / "copy.gpkg"
    subprocess.run(
        [
            "ogr2ogr",
            "-f",
            "GPKG",
            str(out),
            f"OAPIF:{base}",
            f"{backend}-countries",
            "-nln",
            "copy",  # GeoPackage reserves layer names starting with "gpkg"
            "-oo",
            f"PAGE_SIZE={page_size}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    info = subprocess.run(
        ["ogrinfo", "-so", "-al", str(out)], capture_output=True, text=True, check=True
    ).stdout
    assert feature_count(info) == N_COUNTRIES
    assert "name: String" in info


def test_gdal_reads_count_extent_and_pushes_filters(base, backend, server):
    info = ogr("-so", f"OAPIF:{base}", f"{backend}-countries")
    assert feature_count(info) == N_COUNTRIES
    assert "Extent: (-180.000000, -90.000000) - (180.000000, 83.645" in info
    where = ogr(
        "-al",
        "-q",
        f"OAPIF:{base}/collections/{backend}-countries",
        "-where",
        "pop_est >= 1000000000 AND continent = 'Asia'",
        "-fields=name",
    )
    assert where.count("OGRFeature") == 2 and "China" in where and "India" in where
    # GDAL pushed the filter to the server (it does so only when the OpenAPI document allows it).
    assert "filter-lang=cql-text" in server.output()
    spat = ogr("-al", "-q", f"OAPIF:{base}/collections/{backend}-countries", "-spat", "2", "46", "3", "47")
    assert spat.count("OGRFeature") == 1 and "France" in spat


def test_owslib_features(base, backend):
    api = Features(base)
    conformance = api.conformance()["conformsTo"]
    assert any(c.endswith("/conf/cql2-text") for c in conformance)
    ids = [c["id"] for c in api.collections()["collections"]]
    assert f"{backend}-countries" in ids
    queryables = api.collection_queryables(f"{backend}-countries")
    assert "name" in queryables["properties"]
    page = api.collection_items(f"{backend}-countries", limit=5, sortby=("pop_est", "desc"))
    assert [f["properties"]["name"] for f in page["features"]][:2] == ["China", "India"]
    filtered = api.collection_items(
        f"{backend}-countries", filter="name LIKE 'Fra%'", **{"filter-lang": "cql2-text"}
    )
    assert [f["properties"]["name"] for f in filtered["features"]] == ["France"]
    one = api.collection_item(f"{backend}-countries", str(page["features"][0]["id"]))
    assert one["properties"]["name"] == "China"


def test_owslib_transactions(base, backend):
    api = Features(base)
    cid = f"{backend}.points"
    feature = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [-0.1276, 51.5072]},
        "properties": {"name": "OWSLib London", "continent": "Client"},
    }
    assert api.collection_item_create(cid, feature)  # sent as application/geo+json
    # OWSLib sends a string payload with its default Content-Type (text/xml): accepted when it is JSON.
    assert api.collection_item_create(cid, json.dumps({**feature, "properties": {"name": "OWSLib 2"}}))
    second = api.collection_items(cid, filter="name = 'OWSLib 2'")["features"]
    api.collection_item_delete(cid, str(second[0]["id"]))
    found = api.collection_items(cid, filter="name = 'OWSLib London'")["features"]
    assert len(found) == 1
    fid = str(found[0]["id"])
    changed = {**feature, "properties": {**feature["properties"], "name": "OWSLib Londres"}}
    api.collection_item_update(cid, fid, json.dumps(changed))
    assert api.collection_item(cid, fid)["properties"]["name"] == "OWSLib Londres"
    api.collection_item_delete(cid, fid)
    assert api.collection_items(cid, filter="continent = 'Client'")["numberMatched"] == 0
