"""GeoNode's upload door: ``uploads/upload``, execution requests, the upload list and its limits.

Two servers of their own: one on PostgreSQL (store and tables in database ``gh_out_a``,
the upload loaded by a procrastinate job worker) and one embedded (a SQLite store, the
upload loaded into a GeoPackage by a thread of the server). A real Shapefile (Natural
Earth countries around France in Lambert 93, written by GDAL) is uploaded part by part
as GeoNode's form sends it, and through ``geonodectl`` (PyPI) as a subprocess.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import shapely
import shapely.geometry
from conftest import Server, drop_database, free_port, fresh_database, load_countries
from sample_files import sample_files

DB = "gh_out_b"
KEY = "0123456789abcdef0123456789abcdef"
AUTH = {"API-Key": KEY}
TIMEOUT = 60
#: The largest upload the servers accept, in MB (small, so the 413 test stays quick).
MAX_UPLOAD_MB = 2


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return sample_files(tmp_path_factory.mktemp("upload-files"))


@pytest.fixture(scope="module")
def pg_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = fresh_database(DB)
    load_countries(url)
    workdir = tmp_path_factory.mktemp("uploads-pg")
    config = {
        "server": {"bind": f"127.0.0.1:{free_port()}", "workers": 2, "log_level": "WARNING"},
        "sources": {"pg": {"type": "postgis", "url": url, "pool_max": 4}},
        "store": {"source": "pg", "tables": "pg"},
        "collections": {"countries": {"source": "pg", "table": "countries"}},
        "auth": {"api_key": KEY},
        "jobs": {"workers": 1, "concurrency": 2, "heartbeat_s": 0.5, "lost_after_s": 5},
        "datasets": {"path": str(workdir / "datasets"), "max_upload_mb": MAX_UPLOAD_MB},
    }
    server = Server(config, workdir)
    try:
        wait_for_queue(url)
        yield server.url
    finally:
        server.stop()
        drop_database(DB)


def wait_for_queue(url: str, timeout: float = 60) -> None:
    """Wait until the job worker has made procrastinate's tables (it does so as it starts)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0] is None:
            assert time.monotonic() < deadline, "the job worker did not prepare its queue"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def sqlite_api(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("uploads-sqlite")
    gpkg = workdir / "data.gpkg"
    shutil.copy(files["gpkg"], gpkg)
    config = {
        "server": {"bind": f"127.0.0.1:{free_port()}", "workers": 1, "log_level": "WARNING"},
        "sources": {"gpkg": {"type": "geopackage", "path": str(gpkg)}},
        "store": {"path": str(workdir / "store.sqlite"), "tables": "gpkg"},
        "collections": {"countries": {"source": "gpkg", "layer": "countries"}},
        "auth": {"api_key": KEY},
        "datasets": {"path": str(workdir / "datasets"), "max_upload_mb": MAX_UPLOAD_MB},
    }
    server = Server(config, workdir)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["postgres", "sqlite"])
def api(request: pytest.FixtureRequest) -> str:
    """Each test runs against both stores."""
    return request.getfixturevalue("pg_api" if request.param == "postgres" else "sqlite_api")


def call(api: str, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    return requests.request(method, api + path, headers=headers, timeout=TIMEOUT, **kwargs)


def ok(response: requests.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def shapefile(files: dict[str, Path], directory: Path) -> Path:
    """The France Shapefile under a name of its own (each upload makes a new table)."""
    stem = f"france_{uuid.uuid4().hex[:8]}"
    directory.mkdir(parents=True, exist_ok=True)
    for part in files["shp_dir"].iterdir():
        shutil.copy(part, directory / f"{stem}{part.suffix}")
    return directory / f"{stem}.shp"


def upload_form(shp: Path) -> list[tuple[str, tuple[str, bytes]]]:
    """The parts GeoNode's upload form sends for a Shapefile."""
    parts = [("base_file", (shp.name, shp.read_bytes()))]
    for field, suffix in (("dbf_file", ".dbf"), ("shx_file", ".shx"), ("prj_file", ".prj")):
        side = shp.with_suffix(suffix)
        parts.append((field, (side.name, side.read_bytes())))
    return parts


def wait_request(api: str, exec_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        request = ok(call(api, "GET", f"/api/v2/executionrequest/{exec_id}"))["request"]
        if request["status"] in ("finished", "failed"):
            return request
        assert request["status"] in ("ready", "running"), request
        assert time.monotonic() < deadline, request
        time.sleep(0.2)


def matched(api: str, cid: str) -> int:
    return ok(call(api, "GET", f"/collections/{cid}/items", params={"limit": 1}))["numberMatched"]


def test_shapefile_upload_is_published_and_polled_to_finished(api, files, tmp_path):
    shp = shapefile(files, tmp_path)
    started = ok(
        call(api, "POST", "/api/v2/uploads/upload", files=upload_form(shp), data={"charset": "UTF-8"}), 201
    )
    assert started["success"] is True and started["status"] == "ready"
    done = wait_request(api, started["execution_id"])
    assert done["status"] == "finished", done
    assert done["exec_id"] == started["execution_id"] and done["input_params"]["charset"] == "UTF-8"
    (resource,) = done["output_params"]["resources"]
    cid = resource["alternate"]
    # The new collection is published with every feature, in the right place (Lambert 93 read).
    assert matched(api, cid) == int(files["france_count"].name)
    france = ok(call(api, "GET", f"/collections/{cid}/items", params={"name": "France"}))["features"]
    assert shapely.geometry.shape(france[0]["geometry"]).contains(shapely.Point(2.35, 48.85))  # Paris
    # The older status door answers the same request, unwrapped.
    status = ok(call(api, "GET", f"/api/v2/resource-service/execution-status/{started['execution_id']}"))
    assert status["status"] == "finished" and status["output_params"] == done["output_params"]
    # Lists: the execution requests and the uploads (id = the import number, in /imports too).
    listed = ok(call(api, "GET", "/api/v2/executionrequest/", params={"page_size": 100}))
    assert started["execution_id"] in {r["exec_id"] for r in listed["requests"]}
    uploads = ok(call(api, "GET", "/api/v2/uploads", params={"page_size": 100}))["uploads"]
    mine = next(u for u in uploads if u["execution_id"] == started["execution_id"])
    assert mine["state"] == "PROCESSED" and mine["resource"] == resource["id"] and mine["name"] == shp.name
    assert ok(call(api, "GET", f"/api/v2/uploads/{mine['id']}"))["upload"]["resource"] == resource["id"]
    imported = ok(call(api, "GET", f"/imports/{mine['id']}"))["import"]
    assert imported["state"] == "COMPLETE"
    # The catalogue finds it by its name.
    found = ok(call(api, "GET", "/api/v2/resources", params={"search": shp.stem, "page_size": 50}))
    assert str(resource["id"]) in {str(r["pk"]) for r in found["resources"]}


def test_iso_metadata_file_titles_the_dataset(api, files, tmp_path):
    shp = shapefile(files, tmp_path)
    iso = (
        '<gmd:MD_Metadata xmlns:gmd="http://www.isotc211.org/2005/gmd" '
        'xmlns:gco="http://www.isotc211.org/2005/gco"><gmd:identificationInfo><gmd:MD_DataIdentification>'
        "<gmd:citation><gmd:CI_Citation><gmd:title><gco:CharacterString>Countries around France"
        "</gco:CharacterString></gmd:title></gmd:CI_Citation></gmd:citation>"
        "</gmd:MD_DataIdentification></gmd:identificationInfo></gmd:MD_Metadata>"
    )
    form = [*upload_form(shp), ("xml_file", (f"{shp.stem}.xml", iso.encode()))]
    started = ok(call(api, "POST", "/api/v2/uploads/upload", files=form), 201)
    done = wait_request(api, started["execution_id"])
    assert done["status"] == "finished", done
    cid = done["output_params"]["resources"][0]["alternate"]
    assert (
        ok(call(api, "GET", f"/collections/{cid}", params={"f": "json"}))["title"]
        == "Countries around France"
    )


def test_zip_and_geojson_uploads(api, files):
    for path in (files["shp"], files["geojson"]):
        started = ok(call(api, "POST", "/api/v2/uploads/upload", files={"base_file": path.open("rb")}), 201)
        done = wait_request(api, started["execution_id"])
        assert done["status"] == "finished", done["log"]
        expected = int(files["france_count"].name) if path.suffix == ".zip" else 177
        assert matched(api, done["output_params"]["resources"][0]["alternate"]) == expected


def test_what_cannot_be_uploaded(api, files, tmp_path):
    # Over the size limit: 413 before anything is stored.
    big = tmp_path / "big.geojson"
    big.write_bytes(b" " * ((MAX_UPLOAD_MB << 20) + 1000))
    before = len(ok(call(api, "GET", "/api/v2/uploads", params={"page_size": 1000}))["uploads"])
    response = call(api, "POST", "/api/v2/uploads/upload", files={"base_file": big.open("rb")})
    assert response.status_code == 413 and "detail" in response.json()
    # Nothing spatial in it: refused at once, no upload left behind.
    text = tmp_path / "notes.txt"
    text.write_text("not a dataset")
    response = call(api, "POST", "/api/v2/uploads/upload", files={"base_file": text.open("rb")})
    assert response.status_code in (400, 422) and "detail" in response.json()
    # No file at all.
    response = call(api, "POST", "/api/v2/uploads/upload", data={"charset": "UTF-8"})
    assert response.status_code == 400 and "detail" in response.json()
    assert len(ok(call(api, "GET", "/api/v2/uploads", params={"page_size": 1000}))["uploads"]) == before
    # Without a key (the servers have a master key): 401, in DRF's shape.
    anonymous = requests.post(api + "/api/v2/uploads/upload", files=upload_form(shapefile(files, tmp_path)))
    assert anonymous.status_code == 401 and "detail" in anonymous.json()
    missing = call(api, "GET", f"/api/v2/executionrequest/{uuid.uuid4()}")
    assert missing.status_code == 404 and "detail" in missing.json()


def test_limits_are_listed(api):
    sizes = ok(call(api, "GET", "/api/v2/upload-size-limits"))["upload-size-limits"]
    assert sizes[0]["max_size"] == MAX_UPLOAD_MB << 20
    parallel = ok(call(api, "GET", "/api/v2/upload-parallelism-limits/"))["upload-parallelism-limits"]
    assert parallel[0]["max_number"] >= 1


def geonodectl(api: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("geonodectl", path=str(Path(sys.executable).parent)) or "geonodectl"
    env = {
        **os.environ,
        "GEONODE_API_URL": f"{api}/api/v2/",
        "GEONODE_API_BASIC_AUTH": base64.b64encode(f"admin:{KEY}".encode()).decode(),
    }
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=180)


def test_geonodectl_uploads_a_shapefile(api, files, tmp_path):
    shp = shapefile(files, tmp_path)
    # --wait: geonodectl polls the execution request until finished, then describes the dataset.
    done = geonodectl(api, "--json", "dataset", "upload", "-f", str(shp), "--wait")
    assert done.returncode == 0, done.stderr + done.stdout
    requests_listed = ok(call(api, "GET", "/api/v2/executionrequest", params={"page_size": 1000}))["requests"]
    mine = next(r for r in requests_listed if r["name"] == shp.name)
    assert mine["status"] == "finished"
    (resource,) = mine["output_params"]["resources"]
    assert resource["alternate"] in done.stdout  # the dataset geonodectl described
    assert matched(api, resource["alternate"]) == int(files["france_count"].name)
    listed = geonodectl(api, "--json", "executionrequest", "list")
    assert listed.returncode == 0 and mine["exec_id"] in listed.stdout, listed.stderr


def test_a_second_upload_of_a_name_gets_a_new_one_unless_overwriting(api, files, tmp_path):
    shp = shapefile(files, tmp_path)
    names = []
    for form in ({}, {}, {"overwrite_existing_layer": "true"}):
        started = ok(call(api, "POST", "/api/v2/uploads/upload", files=upload_form(shp), data=form), 201)
        done = wait_request(api, started["execution_id"])
        assert done["status"] == "finished", done["log"]
        names.append(done["output_params"]["resources"][0]["alternate"])
    first, second, overwritten = names
    assert first == shp.stem.lower() and second == f"{first}_1"
    assert overwritten == first  # its data replaced in place: no third collection
    assert matched(api, overwritten) == int(files["france_count"].name)


def test_running_uploads_are_counted_per_owner(files, tmp_path):
    """What the parallel-upload limit counts: the caller's uploads whose import has not ended."""
    from server import config as config_module
    from server.geonode_executions import Executions
    from server.geonode_uploads import UPLOAD_FUNC, limits
    from server.imports import Imports
    from server.jobs import Jobs
    from server.registry import Registry

    gpkg = tmp_path / "data.gpkg"
    shutil.copy(files["gpkg"], gpkg)
    config = config_module.validate(
        {
            "sources": {"gpkg": {"type": "geopackage", "path": str(gpkg)}},
            "store": {"path": str(tmp_path / "store.sqlite"), "tables": "gpkg"},
            "collections": {},
            "datasets": {"path": str(tmp_path / "datasets"), "max_upload_mb": 3},
        }
    )
    assert limits(config) == (3 << 20, 5)
    assert limits({**config, "catalogue": {"upload_max_mb": 1, "upload_parallel_max": 2}}) == (1 << 20, 2)
    registry = Registry(config)
    try:
        queue = Jobs(config, registry)
        imports, executions = Imports(registry, queue), Executions(registry, queue)
        running = imports.start(imports.create({}, 7), "init")  # being scanned: not ended
        ended = imports.create({}, 7)  # nothing in it, not running: ended (failed)
        for record in (running, ended):
            executions.create(UPLOAD_FUNC, "x", 7, {}, import_id=int(record.key or 0))
        executions.create(UPLOAD_FUNC, "y", 8, {}, import_id=int(running.key or 0))
        assert executions.running(7, UPLOAD_FUNC) == 1
        assert executions.running(8, UPLOAD_FUNC) == 1 and executions.running(9, UPLOAD_FUNC) == 0
        assert executions.running(7, "harvest") == 0
    finally:
        registry.close()


def test_an_uploaded_dataset_is_found_edited_hidden_and_deleted(api, files, tmp_path):
    """A user's whole round, on each store: upload a Shapefile, poll its execution request,
    find the dataset by search, keyword, category, owner and extent, page and order, PATCH
    its metadata, hide it from anonymous users (catalogue, OGC items and tiles alike), delete it."""
    name = f"rosa{uuid.uuid4().hex[:8]}"
    ok(call(api, "POST", "/rest/1/users", json={"username": name}), 201)
    key = ok(call(api, "POST", "/rest/1/keys", json={"username": name, "scopes": ["read", "write"]}), 201)
    rosa = {"API-Key": key["key"]}

    def anonymous(path: str, **params: Any) -> requests.Response:
        return requests.get(api + path, params=params, timeout=TIMEOUT)

    def pks(params: dict[str, Any], who: dict[str, str] | None = AUTH) -> list[int]:
        query = {"page_size": 100, **params}
        listed = call(api, "GET", "/api/v2/resources", params=query, headers=who) if who else None
        listed = listed if listed is not None else anonymous("/api/v2/resources", **query)
        return [int(r["pk"]) for r in ok(listed)["resources"]]

    shp = shapefile(files, tmp_path)
    started = ok(call(api, "POST", "/api/v2/uploads/upload", files=upload_form(shp), headers=rosa), 201)
    done = wait_request(api, started["execution_id"])
    assert done["status"] == "finished", done
    ((pk, cid),) = [(int(r["id"]), r["alternate"]) for r in done["output_params"]["resources"]]

    # Found by what it is called, whose it is and where it lies.
    assert pks({"search": shp.stem}) == [pk]
    assert pk in pks({"filter{owner.username}": name}) and pk not in pks({"filter{-owner.username}": name})
    assert pk in pks({"extent": "2,48,3,49"})  # Paris
    assert pk not in pks({"extent": "146,-43,148,-41"})  # Tasmania
    # Edited: its metadata, written through to the collection, and found by it.
    word = f"kw{uuid.uuid4().hex[:8]}"
    patched = ok(
        call(
            api,
            "PATCH",
            f"/api/v2/datasets/{pk}",
            headers=rosa,
            json={
                "title": f"Around France {word}",
                "abstract": "Natural Earth countries around France, in Lambert 93",
                "keywords": [word],
                "category": {"identifier": "boundaries"},
            },
        )
    )["dataset"]
    assert patched["title"] == f"Around France {word}" and patched["category"]["identifier"] == "boundaries"
    collection = ok(call(api, "GET", f"/collections/{cid}", params={"f": "json"}, headers=rosa))
    assert collection["title"] == f"Around France {word}"
    assert pks({"search": word}) == [pk]
    assert pks({"filter{keywords.name}": word}) == [pk]
    assert pk in pks({"filter{category.identifier}": "boundaries", "filter{owner.username}": name})
    # Paged and ordered: pages of one, by title, make the whole ordered list.
    everything = ok(call(api, "GET", "/api/v2/resources", params={"page_size": 100, "ordering": "title"}))
    paged = [
        ok(call(api, "GET", "/api/v2/resources", params={"page_size": 1, "page": n, "ordering": "title"}))
        for n in range(1, everything["total"] + 1)
    ]
    assert [p["resources"][0]["pk"] for p in paged] == [r["pk"] for r in everything["resources"]]
    titles = [r["title"] for r in everything["resources"]]
    assert titles == sorted(titles, key=str.lower) or titles == sorted(titles)
    assert paged[0]["links"]["next"] and paged[-1]["links"]["next"] is None

    # Shared with anonymous users, then hidden from them everywhere at once.
    def seen_by_anonymous() -> tuple[bool, int, int]:
        items = anonymous(f"/collections/{cid}/items", limit=1)
        tile = anonymous(f"/collections/{cid}/tiles/WebMercatorQuad/0/0/0")
        return pk in pks({"search": word}, None), items.status_code, tile.status_code

    share = {"users": {"AnonymousUser": ["view_resourcebase"]}, "groups": {}}
    ok(call(api, "PUT", f"/api/v2/resources/{pk}/permissions", json=share, headers=rosa))
    assert seen_by_anonymous() == (True, 200, 200)
    owner_only = {"users": [], "groups": []}
    ok(call(api, "PUT", f"/api/v2/resources/{pk}/permissions", json=owner_only, headers=rosa))
    assert seen_by_anonymous() == (False, 404, 404)
    assert pks({"search": word}, rosa) == [pk]  # its owner still sees it

    # Deleted: gone from the catalogue and from the OGC API.
    assert call(api, "DELETE", f"/api/v2/resources/{pk}/delete", headers=rosa).status_code == 204
    assert call(api, "GET", f"/api/v2/resources/{pk}").status_code == 404
    assert call(api, "GET", f"/collections/{cid}", params={"f": "json"}).status_code == 404
    assert pks({"search": word}) == []
