"""Documents through GeoNode's API v2, against both stores (PostgreSQL and embedded SQLite).

A user uploads a real PDF and a PNG drawn from Natural Earth countries, attaches them
to a dataset of theirs, finds them in the catalogue, downloads the same bytes from any
worker, shares and hides them with ``perm_spec``, PATCHes them and deletes them; the
size limit answers 413 whether the client announces the length or not, and files a
browser would run, or paths on the server, are refused.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyogrio.raw
import pytest
import requests
import shapely
from catalogue_site import add_user, call, continent_database, ok, site_config
from conftest import Server, drop_database
from PIL import Image, ImageDraw

from server.demo import natural_earth_countries

MASTER = "documents-master-key-0123456789"
DB = os.environ.get("GEOHARBOR_TEST_DB", "gh_cat_c") + "_docs"
PDF = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")
LIMIT = 50 << 20  # the default catalogue.document_max_mb


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    yield continent_database(DB, {"africa": "Africa"})
    drop_database(DB)


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def api(
    request: pytest.FixtureRequest, db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp(f"documents-{request.param}")
    server = Server(site_config(request.param, workdir, db_url, MASTER, {}), workdir)
    try:
        people: dict[str, Any] = {"admin": {"X-API-Key": MASTER}}
        for name in ("ada", "bob"):
            # ada is an admin (she publishes a table as a layer of hers); bob is not.
            user, key = add_user(server.url, MASTER, name, admin=name == "ada")
            people[name] = {"X-API-Key": key}
            people[f"{name}_id"] = user["id"]
        body = {"name": "africa", "title": "African countries", "source": {"type": "pg", "src": "africa"}}
        layer = ok(call(server.url, "POST", "/rest/1/layers", json=body, headers=people["ada"]), 201)
        yield {"url": server.url, "store": request.param, "db": db_url, "africa": layer["id"], **people}
    finally:
        server.stop()


def gn(api: dict, method: str, path: str, status: int = 200, who: str | None = "ada", **kwargs: Any) -> Any:
    headers = api[who] if who else {}
    return ok(call(api["url"], method, "/api/v2" + path, headers=headers, **kwargs), status)


def countries_png() -> bytes:
    """Natural Earth's African countries drawn as a PNG (lon/lat to pixels)."""
    _, _, wkb, _ = pyogrio.raw.read(natural_earth_countries(), where="continent = 'Africa'", columns=[])
    image = Image.new("RGB", (360, 360), "white")
    draw = ImageDraw.Draw(image)
    for geom in shapely.from_wkb(wkb):
        for polygon in getattr(geom, "geoms", [geom]):
            ring = [((x + 20) * 4.5, (40 - y) * 4.5) for x, y in polygon.exterior.coords]
            draw.polygon(ring, outline="black", fill="#8cb")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def upload(api: dict, name: str, content: bytes, who: str = "ada", **fields: Any) -> requests.Response:
    return call(
        api["url"],
        "POST",
        "/api/v2/documents",
        headers=api[who],
        files={"doc_file": (name, content)},
        data=fields,
    )


def titles(body: dict, key: str = "resources") -> list[str]:
    return [r["title"] for r in body[key]]


def test_a_pdf_is_a_searchable_resource_and_its_bytes_are_served(api):
    content = PDF.read_bytes()
    made = ok(
        upload(
            api,
            PDF.name,
            content,
            title="Shared MIME-info specification",
            abstract="How desktops guess the media type of a file",
            linked_resources=str(api["africa"]),
            category="society",
        ),
        201,
    )["document"]
    pk = int(made["pk"])
    assert made["resource_type"] == "document" and made["owner"]["username"] == "ada"
    assert made["extension"] == "pdf" and made["mime_type"] == "application/pdf"
    assert made["doc_type"] == "presentation" and made["category"]["identifier"] == "society"
    assert made["href"].endswith(f"/documents/{pk}/link")
    assert made["download_url"].endswith(f"/documents/{pk}/download")
    assert made["file_size"] == len(content) and made["linked_resources"] == [{"pk": str(api["africa"])}]
    assert "change_resourcebase" in made["perms"]
    # In the catalogue at once: ranked full text, type, owner; both list doors.
    found = gn(api, "GET", "/resources", params={"search": "desktops media"})
    assert titles(found) == ["Shared MIME-info specification"]
    listed = gn(api, "GET", "/documents/", params={"filter{owner.username}": "ada"})
    assert [int(d["pk"]) for d in listed["documents"]] == [pk]
    assert gn(api, "GET", "/resources", params={"filter{resource_type}": "document"})["total"] == 1
    detail = gn(api, "GET", f"/documents/{pk}")["document"]
    assert detail["title"] == made["title"] and any(
        link["link_type"] == "original" for link in detail["links"]
    )
    # The same bytes from every door (two workers behind one port: several requests).
    for path in (f"/documents/{pk}/download", f"/api/v2/documents/{pk}/download") * 2:
        got = call(api["url"], "GET", path, headers=api["ada"])
        assert got.status_code == 200 and got.content == content, path
        assert got.headers["Content-Type"] == "application/pdf"
        assert got.headers["Content-Disposition"].startswith("attachment")
        assert got.headers["ETag"] == f'"{hashlib.sha256(content).hexdigest()}"'
    shown = call(api["url"], "GET", f"/documents/{pk}/link", headers=api["ada"])
    assert shown.headers["Content-Disposition"].startswith("inline") and shown.content == content
    # Attached to ada's dataset: linked both ways.
    linked = gn(api, "GET", f"/documents/{pk}/linked_resources")
    assert [int(r["pk"]) for r in linked["resources"]] == [api["africa"]]
    by = gn(api, "GET", f"/resources/{api['africa']}/linked_resources")["linked_by"]
    assert [int(r["pk"]) for r in by] == [pk]


def test_permissions_of_a_document_are_the_resource_model(api):
    png = countries_png()
    made = ok(upload(api, "africa.png", png, title="Map of Africa"), 201)["document"]
    pk = made["pk"]
    assert made["mime_type"] == "image/png" and made["doc_type"] == "image"
    assert Image.open(io.BytesIO(png)).size == (360, 360)
    # Its owner's until shared: hidden from anonymous and from bob, in lists, details and downloads.
    for who in (None, "bob"):
        headers = api[who] if who else {}
        assert call(api["url"], "GET", f"/documents/{pk}/download", headers=headers).status_code == 404
        assert call(api["url"], "GET", f"/api/v2/documents/{pk}", headers=headers).status_code == 404
        listed = ok(call(api["url"], "GET", "/api/v2/documents", headers=headers))
        assert pk not in [d["pk"] for d in listed["documents"]]
    assert (
        call(
            api["url"], "PATCH", f"/api/v2/documents/{pk}", json={"title": "x"}, headers=api["bob"]
        ).status_code
        == 404
    )
    gn(
        api,
        "PUT",
        f"/resources/{pk}/permissions",
        json={"users": {"AnonymousUser": ["view_resourcebase"]}, "groups": {}},
    )
    got = call(api["url"], "GET", f"/documents/{pk}/link")
    assert got.status_code == 200 and got.content == png and got.headers["Content-Type"] == "image/png"
    assert gn(api, "GET", "/resources", who=None, params={"search": "Africa map"})["total"] == 1
    # Read is not write: bob may see it now, not change or delete it; ada can.
    denied = call(api["url"], "PATCH", f"/api/v2/documents/{pk}", json={"title": "x"}, headers=api["bob"])
    assert denied.status_code == 403 and "detail" in denied.json()
    assert call(api["url"], "DELETE", f"/api/v2/documents/{pk}", headers=api["bob"]).status_code == 403
    assert call(api["url"], "DELETE", f"/api/v2/documents/{pk}").status_code == 401
    patched = gn(api, "PATCH", f"/documents/{pk}", json={"title": "Countries of Africa", "keywords": ["png"]})
    assert patched["document"]["title"] == "Countries of Africa"
    assert titles(gn(api, "GET", "/resources", who="bob", params={"filter{keywords.name}": "png"})) == [
        "Countries of Africa"
    ]
    gn(api, "PUT", f"/resources/{pk}/permissions", json={"users": [], "groups": []})
    assert call(api["url"], "GET", f"/documents/{pk}/link").status_code == 404
    # Gone with its delete: row, file, bytes.
    assert call(api["url"], "DELETE", f"/api/v2/documents/{pk}", headers=api["ada"]).status_code == 204
    assert call(api["url"], "GET", f"/documents/{pk}/download", headers=api["ada"]).status_code == 404
    assert gn(api, "GET", "/resources", params={"search": "Countries Africa png"})["total"] == 0
    if api["store"] == "postgres":
        with psycopg.connect(api["db"]) as conn:
            left = conn.execute("SELECT count(*) FROM geoharbor.document_files WHERE id = %s", (int(pk),))
            assert left.fetchone()[0] == 0


def test_a_link_only_document_redirects(api):
    url = "https://www.naturalearthdata.com/downloads/110m-cultural-vectors/"
    made = gn(
        api,
        "POST",
        "/documents",
        201,
        json={"document": {"title": "Natural Earth downloads", "doc_url": url}},
    )["document"]
    assert made["doc_url"] == url and made["href"] == url and made["extension"] is None
    moved = call(api["url"], "GET", f"/documents/{made['pk']}/download", headers=api["ada"])
    assert moved.status_code == 302 and moved.headers["Location"] == url
    gn(api, "DELETE", f"/documents/{made['pk']}", 204)


def test_size_limit_and_refused_files(api):
    before = gn(api, "GET", "/resources", params={"filter{resource_type}": "document"})["total"]
    big = (PDF.read_bytes() * (LIMIT // PDF.stat().st_size + 2))[: LIMIT + 1]
    announced = upload(api, "big.pdf", big)
    assert announced.status_code == 413 and "detail" in announced.json()

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts
        boundary = b"--b0undary"
        yield boundary + b'\r\nContent-Disposition: form-data; name="doc_file"; filename="big.pdf"\r\n\r\n'
        for start in range(0, len(big), 1 << 20):
            yield big[start : start + (1 << 20)]
        yield b"\r\n" + boundary + b"--\r\n"

    headers = {**api["ada"], "Content-Type": "multipart/form-data; boundary=b0undary"}
    streamed = call(api["url"], "POST", "/api/v2/documents", headers=headers, data=chunks())
    assert streamed.status_code == 413
    page = b"<html><script>alert(1)</script></html>"
    assert upload(api, "page.html", page).status_code == 400
    assert upload(api, "x.svg", page).status_code == 400
    path = call(
        api["url"], "POST", "/api/v2/documents", headers=api["ada"], json={"file_path": "/etc/passwd"}
    )
    assert path.status_code == 422
    assert upload(api, "a.pdf", PDF.read_bytes(), who="admin", linked_resources="999999").status_code == 422
    assert (
        call(api["url"], "POST", "/api/v2/documents", files={"doc_file": ("a.pdf", b"%PDF")}).status_code
        == 401
    )
    # Nothing of these was kept.
    assert gn(api, "GET", "/resources", params={"filter{resource_type}": "document"})["total"] == before
