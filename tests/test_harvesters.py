"""Harvesters (OGC API - Features, OGC API - Records, WFS) and management commands, end to end.

Three real remotes: a second geoharbor (embedded, open reads) publishing Natural Earth
countries and country points with its catalogue as OGC API - Records, and MapServer's
WFS (:mod:`wfs_server`) over the session's PostGIS tables. The harvesting server is
embedded (SQLite store, harvested copies loaded into a GeoPackage), so its ``harvest``
jobs run in its own process. Harvested collections are read back through OGC API -
Features.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Server, _libpq, free_port
from sample_files import sample_files
from wfs_server import MapServerWFS

from server.schedules import SCHEDULE_EVERY_S

KEY = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
AUTH = {"API-Key": KEY}
TIMEOUT = 60
COUNTRIES = 177


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return sample_files(tmp_path_factory.mktemp("harvest-files"))


@pytest.fixture(scope="module")
def remote(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Another geoharbor, whose collections and catalogue are harvested."""
    workdir = tmp_path_factory.mktemp("harvest-remote")
    gpkg = workdir / "remote.gpkg"
    shutil.copy(files["gpkg"], gpkg)
    config = {
        "server": {
            "bind": f"127.0.0.1:{free_port()}",
            "workers": 1,
            "log_level": "WARNING",
            "limit_max": 500,
        },
        "sources": {"gpkg": {"type": "geopackage", "path": str(gpkg)}},
        "store": {"path": str(workdir / "store.sqlite")},
        "collections": {
            "countries": {"source": "gpkg", "layer": "countries", "title": "Remote countries"},
            "points": {"source": "gpkg", "layer": "points", "title": "Remote country points"},
        },
    }
    server = Server(config, workdir)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mapserver(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MapServerWFS]:
    wfs = MapServerWFS(tmp_path_factory.mktemp("harvest-mapserver"), free_port(), _libpq(pg_url))
    yield wfs
    wfs.stop()


@pytest.fixture(scope="module")
def api(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("harvester")
    target = workdir / "harvested.gpkg"
    shutil.copy(files["gpkg"], target)
    config = {
        "server": {"bind": f"127.0.0.1:{free_port()}", "workers": 2, "log_level": "WARNING"},
        "sources": {"gpkg": {"type": "geopackage", "path": str(target)}},
        "store": {"path": str(workdir / "store.sqlite"), "tables": "gpkg"},
        "collections": {"local": {"source": "gpkg", "layer": "countries"}},
        "auth": {"api_key": KEY},
        "datasets": {"path": str(workdir / "datasets")},
        "imports": {"roots": [str(import_root(files))]},
    }
    server = Server(config, workdir)
    try:
        yield server.url
    finally:
        server.stop()


def import_root(files: dict[str, Path]) -> Path:
    """Where ``importlayers`` may read files (imports.roots): a copy of the GeoJSON points."""
    root = files["geojson"].parent / "import-root"
    if not root.exists():
        root.mkdir()
        shutil.copy(files["geojson"], root / "served_points.geojson")
    return root


def call(api: str, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    return requests.request(method, api + path, headers=headers, timeout=TIMEOUT, **kwargs)


def ok(response: requests.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def create(api: str, name: str, url: str, kind: str) -> int:
    body = {"name": name, "remote_url": url, "harvester_type": kind}
    return ok(call(api, "POST", "/api/v2/harvesters/", json=body), 201)["harvester"]["id"]


def offered(api: str, hid: int) -> dict[str, dict[str, Any]]:
    page = ok(call(api, "GET", f"/api/v2/harvesters/{hid}/harvestable-resources", params={"page_size": 100}))
    return {r["unique_identifier"]: r for r in page["harvestable_resources"]}


def harvest(api: str, hid: int, *uids: str) -> dict[str, Any]:
    """Choose ``uids``, start a session as GeoNode's client does (PATCH the status), wait for its end."""
    choices = [{"unique_identifier": uid, "should_be_harvested": True} for uid in uids]
    chosen = ok(call(api, "PATCH", f"/api/v2/harvesters/{hid}/harvestable-resources", json=choices))
    assert {r["unique_identifier"] for r in chosen if r["should_be_harvested"]} == set(uids)
    harvester = ok(call(api, "PATCH", f"/api/v2/harvesters/{hid}/", json={"status": "harvesting-resources"}))
    assert harvester["harvester"]["status"] in ("harvesting-resources", "ready")
    sessions = ok(call(api, "GET", "/api/v2/harvesting-sessions", params={"page_size": 100}))[
        "harvesting_sessions"
    ]
    session = next(s for s in sessions if s["harvester"] == hid)
    deadline = time.monotonic() + 120
    while session["status"] not in ("finished-all-ok", "finished-some-failed", "finished-all-failed"):
        assert time.monotonic() < deadline, session
        time.sleep(0.3)
        session = ok(call(api, "GET", f"/api/v2/harvesting-sessions/{session['id']}"))["harvesting_session"]
    return session


def matched(api: str, cid: str) -> int:
    return ok(call(api, "GET", f"/collections/{cid}/items", params={"limit": 1}))["numberMatched"]


def test_an_ogc_api_features_remote_is_copied(api, remote):
    hid = create(api, "another geoharbor", remote, "ogcapi-features")
    resources = offered(api, hid)
    assert set(resources) == {"countries", "points"}  # its catalogue holds records, not features
    assert resources["points"]["title"] == "Remote country points"
    assert not any(r["should_be_harvested"] for r in resources.values())
    session = harvest(api, hid, "points")
    assert session["status"] == "finished-all-ok", session
    assert session["records_to_harvest"] == 1 and session["records_harvested"] == 1
    (result,) = session["results"]
    cid = result["alternate"]
    assert matched(api, cid) == COUNTRIES
    # Every feature is here, where the remote has it.
    here = ok(call(api, "GET", f"/collections/{cid}/items", params={"name": "France"}))["features"][0]
    there = requests.get(
        f"{remote}/collections/points/items", params={"name": "France"}, timeout=TIMEOUT
    ).json()
    assert here["geometry"] == there["features"][0]["geometry"]
    # The execution request of the session finished with the dataset it made; the catalogue has it.
    request = ok(call(api, "GET", f"/api/v2/executionrequest/{session['execution_id']}"))["request"]
    assert request["status"] == "finished" and request["output_params"]["resources"][0]["id"] == result["id"]
    found = ok(call(api, "GET", "/api/v2/resources", params={"filter{alternate}": cid}))["resources"]
    assert [str(r["pk"]) for r in found] == [str(result["id"])]
    # The harvester remembers what each resource became; harvesting again replaces, never duplicates.
    assert offered(api, hid)["points"]["geonode_resource"] == result["id"]
    again = harvest(api, hid, "points")
    assert again["status"] == "finished-all-ok" and again["results"][0]["alternate"] == cid
    assert matched(api, cid) == COUNTRIES


def test_a_wfs_remote_is_published_as_remote_layers(api, mapserver):
    hid = create(api, "MapServer", mapserver.url, "wfs")
    resources = offered(api, hid)
    name = next(uid for uid in resources if uid.endswith("countries"))
    assert resources[name]["title"] == "Natural Earth countries"
    session = harvest(api, hid, name)
    assert session["status"] == "finished-all-ok", session
    cid = session["results"][0]["alternate"]
    before = len(mapserver.requests)
    assert matched(api, cid) == COUNTRIES
    assert len(mapserver.requests) > before  # a remote layer, not a copy: its reads go to MapServer
    described = ok(call(api, "GET", f"/collections/{cid}", params={"f": "json"}))
    assert described["title"] == "Natural Earth countries"


def test_an_ogc_api_records_remote_copies_the_datasets_its_records_name(api, remote):
    hid = create(api, "another catalogue", f"{remote}/collections/catalogue", "ogcapi-records")
    resources = offered(api, hid)
    by_title = {r["title"]: uid for uid, r in resources.items()}
    assert {"Remote countries", "Remote country points"} <= set(by_title)
    session = harvest(api, hid, by_title["Remote countries"])
    assert session["status"] == "finished-all-ok", session
    assert matched(api, session["results"][0]["alternate"]) == COUNTRIES


def test_harvesters_refuse_what_they_cannot_do(api, remote):
    bad = call(
        api, "POST", "/api/v2/harvesters", json={"name": "x", "remote_url": remote, "harvester_type": "csw"}
    )
    assert bad.status_code == 422 and "detail" in bad.json()
    local = call(
        api,
        "POST",
        "/api/v2/harvesters",
        json={"name": "x", "remote_url": "file:///etc", "harvester_type": "wfs"},
    )
    assert local.status_code == 422
    anonymous = requests.get(f"{api}/api/v2/harvesters", timeout=TIMEOUT)
    assert anonymous.status_code == 401
    hid = create(api, "nothing chosen", remote, "ogcapi-features")
    nothing = call(api, "PATCH", f"/api/v2/harvesters/{hid}", json={"status": "harvesting-resources"})
    assert nothing.status_code == 422
    unknown = call(
        api,
        "PATCH",
        f"/api/v2/harvesters/{hid}/harvestable-resources",
        json=[{"unique_identifier": "nope", "should_be_harvested": True}],
    )
    assert unknown.status_code == 404
    down = create(api, "down", f"http://127.0.0.1:{free_port()}", "ogcapi-features")
    assert call(api, "GET", f"/api/v2/harvesters/{down}/harvestable-resources").status_code == 502
    assert ok(call(api, "GET", f"/api/v2/harvesters/{down}"))["harvester"]["remote_available"] is False
    assert call(api, "DELETE", f"/api/v2/harvesters/{down}").status_code == 204
    assert call(api, "GET", f"/api/v2/harvesters/{down}").status_code == 404


def sessions_of(api: str, hid: int) -> list[dict[str, Any]]:
    page = ok(call(api, "GET", "/api/v2/harvesting-sessions", params={"page_size": 100}))
    return [s for s in page["harvesting_sessions"] if s["harvester"] == hid]


def test_a_scheduled_harvester_harvests_on_its_own(api, remote):
    hid = create(api, "scheduled", remote, "ogcapi-features")
    assert ok(call(api, "GET", f"/api/v2/harvesters/{hid}"))["harvester"]["scheduling_enabled"] is False
    offered(api, hid)
    choice = [{"unique_identifier": "countries", "should_be_harvested": True}]
    ok(call(api, "PATCH", f"/api/v2/harvesters/{hid}/harvestable-resources", json=choice))
    for bad in ({"harvesting_session_update_frequency": 0}, {"scheduling_enabled": "yes"}):
        refused = call(api, "PATCH", f"/api/v2/harvesters/{hid}", json=bad)
        assert refused.status_code == 422 and "detail" in refused.json(), bad
    assert sessions_of(api, hid) == []
    on = {"scheduling_enabled": True, "harvesting_session_update_frequency": 60}
    harvester = ok(call(api, "PATCH", f"/api/v2/harvesters/{hid}", json=on))["harvester"]
    assert harvester["scheduling_enabled"] is True
    assert harvester["harvesting_session_update_frequency"] == 60
    # Nobody asks for a session: one starts at the schedulers' next round (never having
    # harvested, it is due at once) and copies the chosen collection.
    deadline = time.monotonic() + 120
    while not (sessions := sessions_of(api, hid)) or sessions[0]["status"] in ("pending", "on-going"):
        assert time.monotonic() < deadline, sessions
        time.sleep(0.5)
    (session,) = sessions
    assert session["status"] == "finished-all-ok", session
    assert matched(api, session["results"][0]["alternate"]) == COUNTRIES
    # Both workers' schedulers have looked again since: the next session is an hour away.
    time.sleep(SCHEDULE_EVERY_S + 2)
    assert [s["id"] for s in sessions_of(api, hid)] == [session["id"]]
    assert call(api, "DELETE", f"/api/v2/harvesters/{hid}").status_code == 204


# -- management commands -------------------------------------------------------------------------------
def run_command(api: str, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a command through its job; the job once it has finished."""
    started = ok(call(api, "POST", f"/api/v2/management/commands/{name}/", json=body or {}), 201)
    assert started["success"] is True and started["data"]["command"] == name
    job_id = started["data"]["id"]
    deadline = time.monotonic() + 120
    while True:
        status = ok(call(api, "GET", f"/api/v2/management/jobs/{job_id}/status/"))
        if status["status"] == "FINISHED":
            return ok(call(api, "GET", f"/api/v2/management/commands/{name}/jobs/{job_id}"))
        assert status["status"] in ("CREATED", "QUEUED", "STARTED"), status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def test_management_commands_run_as_jobs(api, files):
    listed = ok(call(api, "GET", "/api/v2/management/commands/"))["data"]
    assert {"ping_mngmt_commands_http", "sync_geonode_datasets", "update_thumbnails", "importlayers"} <= set(
        listed
    )
    assert "sync_geonode_maps" not in listed
    unsupported = ok(call(api, "GET", "/api/v2/management/commands/sync_geonode_maps"))["data"]
    assert unsupported["supported"] is False
    assert call(api, "POST", "/api/v2/management/commands/sync_geonode_maps", json={}).status_code == 400
    assert call(api, "POST", "/api/v2/management/commands/rm_rf", json={}).status_code == 404
    ping = run_command(api, "ping_mngmt_commands_http")
    assert ping["output_message"] == "pong" and ping["celery_task_meta"]["status"] == "SUCCESS"
    synced = run_command(api, "sync_geonode_datasets", {"kwargs": {"updatethumbnails": True}})
    assert synced["celery_task_meta"]["status"] == "SUCCESS", synced
    assert "datasets indexed" in synced["output_message"] and "thumbnails drawn" in synced["output_message"]
    drawn = run_command(api, "update_thumbnails")
    assert drawn["celery_task_meta"]["result"]["thumbnails"] >= 1
    # importlayers: a server path under imports.roots becomes a published dataset.
    path = str(import_root(files) / "served_points.geojson")
    imported = run_command(api, "importlayers", {"args": [path]})
    assert imported["celery_task_meta"]["status"] == "SUCCESS", imported
    assert imported["celery_task_meta"]["result"]["resources"], imported["output_message"]
    (made,) = imported["celery_task_meta"]["result"]["resources"]
    assert matched(api, made["alternate"]) == COUNTRIES
    outside = run_command(api, "importlayers", {"args": ["/etc/passwd"]})
    assert outside["celery_task_meta"]["status"] == "FAILURE" and "imports.roots" in outside["output_message"]
    # Created without starting, then started; lists and filters.
    waiting = ok(
        call(api, "POST", "/api/v2/management/commands/ping_mngmt_commands_http", json={"autostart": False}),
        201,
    )["data"]
    assert waiting["status"] == "CREATED"
    started = ok(call(api, "PATCH", f"/api/v2/management/jobs/{waiting['id']}/start/"))
    assert started["status"] in ("QUEUED", "STARTED", "FINISHED")
    assert call(api, "PATCH", f"/api/v2/management/jobs/{waiting['id']}/start/").status_code == 409
    jobs = ok(call(api, "GET", "/api/v2/management/commands/ping_mngmt_commands_http/jobs/"))["results"]
    assert {j["command"] for j in jobs} == {"ping_mngmt_commands_http"} and len(jobs) >= 2
    assert requests.get(f"{api}/api/v2/management/commands", timeout=TIMEOUT).status_code == 401
