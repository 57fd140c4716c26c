"""OGC API - Records over the catalogue, read with OWSLib's Records client, and the metadata XML.

Two servers of their own, on PostgreSQL (database ``gh_out_b``) and embedded (SQLite
store, GeoPackage data), publishing Natural Earth countries whole and split by
continent, one of them not public. The ``catalogue`` collection lists, searches (``q``,
``bbox``, ``datetime``, CQL2 ``filter``), sorts and pages them as the GeoNode API's
index holds them; the ISO 19139 document of each record is read back with OWSLib.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import requests
from conftest import Server, drop_database, free_port, fresh_database, load_countries
from lxml import etree
from owslib.iso import MD_Metadata
from owslib.ogcapi.records import Records
from sample_files import sample_files

DB = "gh_out_b"
KEY = "00112233445566778899aabbccddeeff"
TIMEOUT = 60
CONTINENTS = {"europe": "Europe", "south_america": "South America", "africa": "Africa"}


def _collections(source: str, key: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "countries": {"source": source, key: "countries", "title": "Countries of the world"}
    }
    for name, continent in CONTINENTS.items():
        out[name] = {
            "source": source,
            key: name,
            "title": f"Countries of {continent}",
            "description": f"Natural Earth countries of {continent}",
            "keywords": ["natural earth", continent.lower()],
        }
    out["africa"]["public"] = False  # readable with the master key only
    return out


@pytest.fixture(scope="module")
def pg_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = fresh_database(DB)
    load_countries(url)
    with psycopg.connect(url, autocommit=True) as conn:
        for name, continent in CONTINENTS.items():
            conn.execute(
                f"CREATE TABLE {name} AS SELECT * FROM countries WHERE continent = %s",  # noqa: S608 - constants
                (continent,),
            )
            conn.execute(f"ALTER TABLE {name} ADD PRIMARY KEY (id)")
    workdir = tmp_path_factory.mktemp("records-pg")
    config = {
        "server": {"bind": f"127.0.0.1:{free_port()}", "workers": 2, "log_level": "WARNING"},
        "sources": {"pg": {"type": "postgis", "url": url, "pool_max": 4}},
        "store": {"source": "pg", "tables": "pg"},
        "collections": _collections("pg", "table"),
        "auth": {"api_key": KEY},
        "jobs": {"workers": 0},
        "datasets": {"path": str(workdir / "datasets")},
    }
    server = Server(config, workdir)
    try:
        yield server.url
    finally:
        server.stop()
        drop_database(DB)


@pytest.fixture(scope="module")
def sqlite_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("records-sqlite")
    files = sample_files(workdir)
    gpkg = workdir / "data.gpkg"
    shutil.copy(files["gpkg"], gpkg)
    for name, continent in CONTINENTS.items():
        subprocess.run(
            [
                "ogr2ogr",
                "-update",
                "-nln",
                name,
                "-where",
                f"continent = '{continent}'",
                str(gpkg),
                str(gpkg),
                "countries",
            ],
            check=True,
        )
    config = {
        "server": {"bind": f"127.0.0.1:{free_port()}", "workers": 1, "log_level": "WARNING"},
        "sources": {"gpkg": {"type": "geopackage", "path": str(gpkg)}},
        "store": {"path": str(workdir / "store.sqlite")},
        "collections": _collections("gpkg", "layer"),
        "auth": {"api_key": KEY},
        "datasets": {"path": str(workdir / "datasets")},
    }
    server = Server(config, workdir)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["postgres", "sqlite"])
def api(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("pg_api" if request.param == "postgres" else "sqlite_api")


def titles(result: dict[str, Any]) -> set[str]:
    return {f["properties"]["title"] for f in result["features"]}


def test_owslib_lists_and_searches_the_catalogue(api):
    records = Records(api)
    listed = {c["id"]: c for c in records.collections()["collections"]}
    assert listed["catalogue"].get("itemType") == "record"
    everything = records.collection_items("catalogue", limit=50)
    public = {"Countries of the world", "Countries of Europe", "Countries of South America"}
    assert titles(everything) == public  # Africa is not public: anonymous callers do not see it
    assert everything["numberMatched"] == 3
    # Full text, ranked: the title and keywords.
    assert titles(records.collection_items("catalogue", q="europe")) == {"Countries of Europe"}
    # Where: South America's box meets the world and South America, not Europe.
    south = records.collection_items("catalogue", bbox=[-80, -50, -40, 0])
    assert titles(south) == {"Countries of the world", "Countries of South America"}
    # CQL2: comparisons, LIKE, NOT and AND.
    like = records.collection_items("catalogue", filter="title LIKE '%South%'")
    assert titles(like) == {"Countries of South America"}
    both = records.collection_items("catalogue", filter="type = 'dataset' AND NOT (title LIKE '%world%')")
    assert titles(both) == {"Countries of Europe", "Countries of South America"}
    # When (the last change of the resource).
    assert records.collection_items("catalogue", datetime="../2000-01-01T00:00:00Z")["numberMatched"] == 0
    assert records.collection_items("catalogue", datetime="2000-01-01T00:00:00Z/..")["numberMatched"] == 3

    # Sorting (OWSLib does not send sortby) and paging.
    def page(**params: Any) -> dict[str, Any]:
        response = requests.get(
            f"{api}/collections/catalogue/items", params={**params, "f": "json"}, timeout=TIMEOUT
        )
        assert response.status_code == 200, response.text
        return response.json()

    first = page(sortby="title", limit=1)
    assert titles(first) == {"Countries of Europe"} and first["numberMatched"] == 3
    assert any(link["rel"] == "next" for link in first["links"])
    assert titles(page(sortby="title", limit=1, offset=1)) == {"Countries of South America"}
    assert titles(page(sortby="-title", limit=1)) == {"Countries of the world"}
    # Record properties as query parameters.
    assert page(type="dataset")["numberMatched"] == 3 and page(type="map")["numberMatched"] == 0
    assert titles(page(keywords="south america")) == {"Countries of South America"}
    assert (
        titles(records.collection_items("catalogue", limit=2, offset=2))
        and page(limit=2)["numberReturned"] == 2
    )


def test_one_record_its_links_and_its_iso_document(api):
    records = Records(api)
    (found,) = records.collection_items("catalogue", q="europe")["features"]
    record = records.collection_item("catalogue", found["id"])
    assert record["properties"]["title"] == "Countries of Europe"
    assert "natural earth" in record["properties"]["keywords"]
    west, south, east, north = _bounds(record["geometry"])
    assert west < 2.35 < east and south < 48.85 < north  # Paris is in Europe's box
    hrefs = {link["rel"]: link["href"] for link in record["links"]}
    assert hrefs["item"].endswith("/collections/europe/items")
    iso_url = next(link["href"] for link in record["links"] if link.get("title") == "ISO")
    response = requests.get(iso_url, timeout=TIMEOUT)
    assert response.status_code == 200 and "xml" in response.headers["Content-Type"]
    metadata = MD_Metadata(etree.fromstring(response.content))
    ident = metadata.identification[0]
    assert metadata.identifier == record["id"]
    assert ident.title == "Countries of Europe" and ident.abstract == "Natural Earth countries of Europe"
    assert {k.name for group in ident.keywords for k in group.keywords} >= {"natural earth", "europe"}
    assert abs(float(ident.bbox.minx) - west) < 1e-6 and abs(float(ident.bbox.maxy) - north) < 1e-6
    assert any(o.url.endswith("/collections/europe/items") for o in metadata.distribution.online)
    dc = requests.get(iso_url.replace("iso19139.xml", "dc.xml"), timeout=TIMEOUT)
    dc_root = etree.fromstring(dc.content)
    assert dc_root.findtext("{http://purl.org/dc/elements/1.1/}title") == "Countries of Europe"


def test_hidden_records_need_the_right_to_read_them(api):
    anonymous = requests.get(
        f"{api}/collections/catalogue/items", params={"q": "africa", "f": "json"}, timeout=TIMEOUT
    )
    assert anonymous.status_code == 200 and anonymous.json()["numberMatched"] == 0
    admin = requests.get(
        f"{api}/collections/catalogue/items",
        params={"q": "africa", "f": "json"},
        headers={"API-Key": KEY},
        timeout=TIMEOUT,
    ).json()
    assert titles(admin) == {"Countries of Africa"}
    rid = admin["features"][0]["id"]
    assert requests.get(f"{api}/collections/catalogue/items/{rid}?f=json", timeout=TIMEOUT).status_code == 404
    assert requests.get(f"{api}/catalogue/{rid}/iso19139.xml", timeout=TIMEOUT).status_code == 404
    assert requests.get(f"{api}/catalogue/{rid}/iso19139.xml", headers={"API-Key": KEY}, timeout=TIMEOUT).ok


def test_unsupported_queries_are_400(api):
    for params in (
        {"filter": "title = 'a' OR title = 'b'"},
        {"filter": "password = 'x'"},
        {"sortby": "secret"},
    ):
        response = requests.get(
            f"{api}/collections/catalogue/items", params={**params, "f": "json"}, timeout=TIMEOUT
        )
        assert response.status_code == 400, (params, response.text)


def _bounds(geometry: dict[str, Any]) -> tuple[float, float, float, float]:
    xs = [p[0] for p in geometry["coordinates"][0]]
    ys = [p[1] for p in geometry["coordinates"][0]]
    return min(xs), min(ys), max(xs), max(ys)
