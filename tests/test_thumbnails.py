"""Thumbnails drawn from the data: right size, the features where they are, redrawn after an edit.

Two servers of their own, one on PostgreSQL (database ``gh_out_b``) and one embedded
(SQLite store, GeoPackage data), each publishing Natural Earth countries and an
editable layer of one point per country. PNGs are decoded with Pillow, and where a
place must appear is computed with the same Web Mercator framing the server uses.
"""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from conftest import Server, drop_database, free_port, fresh_database, load_countries
from PIL import Image
from pyproj import Transformer
from sample_files import sample_files

from providers import thumbnails

DB = "gh_out_b"
KEY = "fedcba9876543210fedcba9876543210"
AUTH = {"API-Key": KEY}
TIMEOUT = 60
EUROPE = (-25.0, 34.0, 35.0, 60.0)
#: A point of the Atlantic inside EUROPE where no country and no country's point lies.
OCEAN = (-20.0, 45.0)
PARIS = (2.35, 48.85)


@pytest.fixture(scope="module")
def pg_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    url = fresh_database(DB)
    load_countries(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE points AS SELECT id, name, ST_PointOnSurface(geom) AS geom FROM countries")
        conn.execute("ALTER TABLE points ADD PRIMARY KEY (id)")
        conn.execute("SELECT UpdateGeometrySRID('points', 'geom', 4326)")
    workdir = tmp_path_factory.mktemp("thumbs-pg")
    config = {
        "server": {"bind": f"127.0.0.1:{free_port()}", "workers": 2, "log_level": "WARNING"},
        "sources": {"pg": {"type": "postgis", "url": url, "pool_max": 4}},
        "store": {"source": "pg", "tables": "pg"},
        "collections": {
            "countries": {"source": "pg", "table": "countries"},
            "points": {"source": "pg", "table": "points", "editable": True},
        },
        "auth": {"api_key": KEY},
        "jobs": {"workers": 0},
        "datasets": {"path": str(workdir / "datasets")},
    }
    server = Server(config, workdir)
    try:
        yield server.url, "points"
    finally:
        server.stop()
        drop_database(DB)


@pytest.fixture(scope="module")
def sqlite_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    workdir = tmp_path_factory.mktemp("thumbs-sqlite")
    files = sample_files(workdir)
    gpkg = workdir / "data.gpkg"
    shutil.copy(files["gpkg"], gpkg)
    config = {
        "server": {"bind": f"127.0.0.1:{free_port()}", "workers": 1, "log_level": "WARNING"},
        "sources": {"gpkg": {"type": "geopackage", "path": str(gpkg)}},
        "store": {"path": str(workdir / "store.sqlite")},
        "collections": {
            "countries": {"source": "gpkg", "layer": "countries"},
            "points": {"source": "gpkg", "layer": "points", "editable": True},
        },
        "auth": {"api_key": KEY},
        "datasets": {"path": str(Path(workdir) / "datasets")},
    }
    server = Server(config, workdir)
    try:
        yield server.url, "points"
    finally:
        server.stop()


@pytest.fixture(params=["postgres", "sqlite"])
def api(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.getfixturevalue("pg_api" if request.param == "postgres" else "sqlite_api")


def call(base: str, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    return requests.request(method, base + path, headers=headers, timeout=TIMEOUT, **kwargs)


def ok(response: requests.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if "json" in response.headers.get("Content-Type", "") else response.content


def pk_of(base: str, cid: str) -> int:
    found = ok(call(base, "GET", "/api/v2/resources", params={"filter{alternate}": cid}))["resources"]
    assert len(found) == 1, found
    return int(found[0]["pk"])


def picture(base: str, pk: int) -> Image.Image:
    response = call(base, "GET", f"/api/v2/resources/{pk}/thumbnail.png")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    return Image.open(io.BytesIO(response.content)).convert("RGB")


def pixel(image: Image.Image, box: tuple[float, float, float, float], lon: float, lat: float) -> tuple:
    """The colour where (lon, lat) is drawn in a thumbnail of ``box`` (lon/lat)."""
    minx, miny, maxx, maxy = thumbnails._framed(thumbnails.extent_3857(box), image.width, image.height)
    x, y = Transformer.from_crs(4326, 3857, always_xy=True).transform(lon, lat)
    return image.getpixel(
        (int((x - minx) / (maxx - minx) * image.width), int((maxy - y) / (maxy - miny) * image.height))
    )


def background() -> tuple[int, int, int]:
    return thumbnails.BACKGROUND[:3]


def test_a_layer_thumbnail_is_drawn_from_its_features(api):
    base, _ = api
    pk = pk_of(base, "countries")
    image = picture(base, pk)
    assert image.size == (thumbnails.WIDTH, thumbnails.HEIGHT)
    # Fills, outlines and the background, land covering a part of the picture: not a placeholder.
    colours = dict((colour, count) for count, colour in image.getcolors())
    assert len(colours) >= 3 and thumbnails.STROKE[:3] in colours
    assert 0.1 < 1 - colours[background()] / (image.width * image.height) < 0.8
    world = (-180.0, -90.0, 180.0, 83.64513)  # Natural Earth's extent, as the layer reports it
    assert pixel(image, world, 20.0, 5.0) != background()  # central Africa is land
    assert pixel(image, world, -140.0, 0.0) == background()  # the middle of the Pacific is not
    # The catalogue row's thumbnail link and the ETag let clients revalidate.
    again = call(base, "GET", f"/api/v2/resources/{pk}/thumbnail.png")
    cached = call(
        base, "GET", f"/api/v2/resources/{pk}/thumbnail.png", headers={"If-None-Match": again.headers["ETag"]}
    )
    assert cached.status_code == 304


def test_thumbnail_of_a_bbox_and_redrawn_after_an_edit(api):
    base, cid = api
    pk = pk_of(base, cid)
    bbox = list(Transformer.from_crs(4326, 3857, always_xy=True).transform_bounds(*EUROPE))
    body = ok(
        call(
            base,
            "POST",
            f"/api/v2/resources/{pk}/set_thumbnail_from_bbox",
            json={"bbox": bbox, "srid": "EPSG:3857"},
        )
    )
    assert body["success"] is True and f"/api/v2/resources/{pk}/thumbnail.png" in body["thumbnail_url"]
    before = picture(base, pk)
    assert pixel(before, EUROPE, *OCEAN) == background()
    assert len(before.getcolors()) >= 3
    # Move one country's point into the empty Atlantic: the next read draws it there.
    feature = ok(call(base, "GET", f"/collections/{cid}/items", params={"name": "Iceland"}))["features"][0]
    moved = {"type": "Feature", "geometry": {"type": "Point", "coordinates": list(OCEAN)}, "properties": {}}
    response = call(
        base,
        "PATCH",
        f"/collections/{cid}/items/{feature['id']}",
        json=moved,
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code in (200, 204), response.text
    after = picture(base, pk)
    assert pixel(after, EUROPE, *OCEAN) != background()
    assert after.tobytes() != before.tobytes()


def test_a_picture_of_the_client_is_kept(api):
    base, _ = api
    pk = pk_of(base, "countries")
    red = Image.new("RGB", (64, 48), (220, 20, 30))
    data = io.BytesIO()
    red.save(data, format="JPEG")
    body = ok(
        call(base, "PUT", f"/api/v2/resources/{pk}/set_thumbnail", files={"file": ("t.jpg", data.getvalue())})
    )
    assert "thumbnail_url" in body
    image = picture(base, pk)
    assert image.size == (64, 48) and abs(image.getpixel((30, 20))[0] - 220) < 10
    # As a base64 data URL in JSON, as GeoNode's client sends it.
    blue = io.BytesIO()
    Image.new("RGB", (20, 10), (10, 20, 230)).save(blue, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(blue.getvalue()).decode()
    ok(call(base, "PUT", f"/api/v2/resources/{pk}/set_thumbnail", json={"file": url}))
    assert picture(base, pk).getpixel((5, 5)) == (10, 20, 230)
    # Not an image, no right to change it, or nothing there.
    bad = call(
        base, "PUT", f"/api/v2/resources/{pk}/set_thumbnail", files={"file": ("x.png", b"not a picture")}
    )
    assert bad.status_code == 422 and "detail" in bad.json()
    anonymous = requests.put(
        f"{base}/api/v2/resources/{pk}/set_thumbnail", json={"file": url}, timeout=TIMEOUT
    )
    assert anonymous.status_code == 401
    assert call(base, "GET", "/api/v2/resources/999999/thumbnail.png").status_code == 404
    wrong = call(
        base,
        "POST",
        f"/api/v2/resources/{pk}/set_thumbnail_from_bbox",
        json={"bbox": [1, 2], "srid": "EPSG:4326"},
    )
    assert wrong.status_code == 400
