"""OGC API - Features Part 4: create, replace, update, delete, with ETag / If-Match."""

from __future__ import annotations

import pytest
import requests
from pyproj import Transformer

GEOJSON = {"Content-Type": "application/geo+json"}


def url(base: str, backend: str, fid=None) -> str:
    path = f"{base}/collections/{backend}.points/items"
    return path if fid is None else f"{path}/{fid}"


def point(name: str, lon: float = 2.35, lat: float = 48.85, **props) -> dict:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"name": name, "continent": "Test", **props},
    }


def create(base: str, backend: str, feature: dict) -> requests.Response:
    response = requests.post(url(base, backend), json=feature, headers=GEOJSON, timeout=30)
    assert response.status_code == 201, response.text
    return response


def count(base: str, backend: str, cql: str) -> int:
    body = requests.get(url(base, backend), params={"filter": cql, "limit": 1000}, timeout=30).json()
    return body["numberMatched"]


def test_create_read_replace_update_delete(base, backend):
    created = create(base, backend, point("Paris point", pop_est=2100000))
    location = created.headers["Location"]
    assert location.startswith(base + f"/collections/{backend}.points/items/")
    got = requests.get(location, timeout=30)
    assert got.status_code == 200
    body = got.json()
    assert body["properties"]["name"] == "Paris point" and body["properties"]["pop_est"] == 2100000
    assert body["geometry"]["coordinates"] == pytest.approx([2.35, 48.85])
    etag = got.headers["ETag"]
    assert etag == created.headers["ETag"]

    # PUT without id in the body still replaces the feature of the URL (OWSLib does this).
    replaced = requests.put(
        location, json=point("Lyon point", 4.83, 45.76), headers={**GEOJSON, "If-Match": etag}, timeout=30
    )
    assert replaced.status_code == 200, replaced.text
    after = requests.get(location, timeout=30).json()
    assert after["properties"]["name"] == "Lyon point"
    assert after["properties"]["pop_est"] is None  # replace clears what was not sent
    assert replaced.headers["ETag"] != etag

    stale = requests.put(location, json=point("stale"), headers={**GEOJSON, "If-Match": etag}, timeout=30)
    assert stale.status_code == 412 and stale.json()["code"]
    assert requests.get(location, timeout=30).json()["properties"]["name"] == "Lyon point"

    patched = requests.patch(
        location,
        json={"properties": {"pop_est": 500000}},
        headers={"Content-Type": "application/merge-patch+json", "If-Match": replaced.headers["ETag"]},
        timeout=30,
    )
    assert patched.status_code == 200, patched.text
    after = requests.get(location, timeout=30).json()
    assert after["properties"] == {**after["properties"], "name": "Lyon point", "pop_est": 500000}
    assert after["geometry"]["coordinates"] == pytest.approx([4.83, 45.76])

    assert requests.delete(location, headers={"If-Match": etag}, timeout=30).status_code == 412
    assert requests.delete(location, timeout=30).status_code == 204
    assert requests.get(location, timeout=30).status_code == 404
    assert requests.delete(location, timeout=30).status_code == 404


def test_create_with_content_crs(base, backend):
    x, y = Transformer.from_crs(4326, 3857, always_xy=True).transform(13.4, 52.52)
    feature = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [x, y]},
        "properties": {"name": "Berlin 3857"},
    }
    created = requests.post(
        url(base, backend),
        json=feature,
        headers={**GEOJSON, "Content-Crs": "<http://www.opengis.net/def/crs/EPSG/0/3857>"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    body = requests.get(created.headers["Location"], timeout=30).json()
    assert body["geometry"]["coordinates"] == pytest.approx([13.4, 52.52], abs=1e-6)
    requests.delete(created.headers["Location"], timeout=30)


def test_null_geometry_round_trip(base, backend):
    created = create(base, backend, {"type": "Feature", "geometry": None, "properties": {"name": "No place"}})
    assert requests.get(created.headers["Location"], timeout=30).json()["geometry"] is None
    requests.delete(created.headers["Location"], timeout=30)


def test_batch_is_all_or_nothing(base, backend):
    before = count(base, backend, "continent = 'Batch'")
    batch = {
        "type": "FeatureCollection",
        "features": [
            point("b1", continent="Batch"),
            point("b2", continent="Batch"),
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
                "properties": {"name": "b3", "continent": "Batch"},
            },
        ],
    }
    response = requests.post(url(base, backend), json=batch, headers=GEOJSON, timeout=30)
    assert response.status_code in (400, 422), response.text
    assert "feature 3" in response.json()["description"] or "LineString" in response.json()["description"]
    assert count(base, backend, "continent = 'Batch'") == before
    ok = requests.post(
        url(base, backend), json={**batch, "features": batch["features"][:2]}, headers=GEOJSON, timeout=30
    )
    assert ok.status_code == 201 and len(ok.json()["features"]) == 2
    assert count(base, backend, "continent = 'Batch'") == before + 2
    for feature in ok.json()["features"]:
        requests.delete(url(base, backend, feature["id"]), timeout=30)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("{not json", 400),
        ('{"type": "Feature", "geometry": {"type": "Point", "coordinates": "x"}, "properties": {}}', 422),
        (
            '{"type": "Feature", "geometry": {"type": "Polygon", '
            '"coordinates": [[[0,0],[1,0],[1,1],[0,0]]]}, '
            '"properties": {}}',
            422,
        ),
        ('{"type": "Feature", "geometry": null, "properties": {"nope": 1}}', 422),
        ('{"type": "Feature", "geometry": null, "properties": {"pop_est": "many"}}', 422),
        ("[1, 2]", 422),
        ('{"type": "Topology"}', 422),
    ],
)
def test_invalid_bodies(base, backend, body, status):
    before = count(base, backend, "name IS NOT NULL")
    response = requests.post(url(base, backend), data=body, headers=GEOJSON, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["description"]
    assert count(base, backend, "name IS NOT NULL") == before


def test_read_only_collection_refuses_writes(base, backend):
    target = f"{base}/collections/{backend}-countries/items"
    response = requests.post(target, json=point("x"), headers=GEOJSON, timeout=30)
    assert response.status_code == 405 and "POST" not in response.headers["Allow"]
    assert response.json()["code"]
    assert requests.put(target + "/1", json=point("x"), headers=GEOJSON, timeout=30).status_code == 405
    assert (
        requests.patch(target + "/1", json={"properties": {}}, headers=GEOJSON, timeout=30).status_code == 405
    )
    assert requests.delete(target + "/1", timeout=30).status_code == 405
    assert requests.get(target + "/1", timeout=30).json()["properties"]["name"]


def test_unknown_feature_writes_404(base, backend):
    for method in ("put", "patch", "delete"):
        response = getattr(requests, method)(
            url(base, backend, 987654321), json=point("x"), headers=GEOJSON, timeout=30
        )
        assert response.status_code == 404, (method, response.text)


def test_text_and_uuid_keys_with_quoted_identifiers(base):
    codes = requests.get(
        f"{base}/collections/pg_codes/items", params={"limit": 2, "sortby": "Name"}, timeout=30
    ).json()
    first = codes["features"][0]
    assert first["properties"]["Name"] == "Afghanistan" and first["id"].startswith("AFG-")
    assert set(first["properties"]) == {"Name", "popEst", "Uid"}
    one = requests.get(f"{base}/collections/pg_codes/items/{first['id']}", timeout=30)
    assert one.status_code == 200 and one.json()["properties"]["Name"] == first["properties"]["Name"]
    filtered = requests.get(
        f"{base}/collections/pg_codes/items", params={"filter": '"popEst" > 1000000000'}, timeout=30
    ).json()
    assert {f["properties"]["Name"] for f in filtered["features"]} == {"China", "India"}
    created = requests.post(
        f"{base}/collections/pg_codes/items",
        headers=GEOJSON,
        timeout=30,
        json={
            "type": "Feature",
            "id": "ZZZ-1",
            "geometry": {"type": "Point", "coordinates": [0, 0]},
            "properties": {"Name": "Null Island"},
        },
    )
    assert created.status_code == 201, created.text
    assert created.headers["Location"].endswith("/collections/pg_codes/items/ZZZ-1")
    dup = requests.post(
        f"{base}/collections/pg_codes/items",
        headers=GEOJSON,
        timeout=30,
        json={"type": "Feature", "id": "ZZZ-1", "geometry": None, "properties": {}},
    )
    assert dup.status_code == 409
    assert requests.delete(f"{base}/collections/pg_codes/items/ZZZ-1", timeout=30).status_code == 204

    uuids = requests.get(f"{base}/collections/pg_uuid/items", params={"limit": 1}, timeout=30).json()
    uid = uuids["features"][0]["id"]
    assert requests.get(f"{base}/collections/pg_uuid/items/{uid}", timeout=30).status_code == 200
    assert requests.get(f"{base}/collections/pg_uuid/items/not-a-uuid", timeout=30).status_code == 404


def test_view_and_chosen_geometry_column(base):
    view = requests.get(f"{base}/collections/pg_view/items", params={"limit": 100}, timeout=30).json()
    assert view["features"] and all(f["properties"]["pop_est"] > 100_000_000 for f in view["features"])
    centres = requests.get(f"{base}/collections/pg_centres/items", params={"limit": 1}, timeout=30).json()
    assert centres["features"][0]["geometry"]["type"] == "Point"
    assert "geom" not in centres["features"][0]["properties"]


def test_geopackage_stays_valid_for_gdal_after_writes(base, gpkg_path):
    import sqlite3
    import subprocess

    created = create(base, "gpkg", point("Validity check", 10.75, 59.91))
    moved = requests.patch(
        created.headers["Location"],
        json={"geometry": {"type": "Point", "coordinates": [5, 60]}},
        headers=GEOJSON,
        timeout=30,
    )
    assert moved.status_code == 200
    matched = requests.get(url(base, "gpkg"), params={"limit": 1}, timeout=30).json()["numberMatched"]
    info = subprocess.run(
        ["ogrinfo", "-ro", "-so", str(gpkg_path), "country_points"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"Feature Count: {matched}" in info
    with sqlite3.connect(gpkg_path) as conn:
        assert conn.execute("SELECT rtreecheck('rtree_country_points_geom')").fetchone()[0] == "ok"
        fid = int(created.headers["Location"].rsplit("/", 1)[1])
        box = conn.execute(
            "SELECT minx, maxx, miny, maxy FROM rtree_country_points_geom WHERE id = ?", (fid,)
        ).fetchone()
    assert box == pytest.approx((5, 5, 60, 60), abs=1e-4)  # the R-tree follows the moved point
    assert requests.delete(created.headers["Location"], timeout=30).status_code == 204
