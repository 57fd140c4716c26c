"""The platform API: capabilities, rules, jobs (a chain of rules run on a job worker), triggers
fired from the write path (DATA_CHANGED, DML, cascades stopped), and the capabilities as OGC
API - Processes.

A server of its own (``geoharbor serve``: two gunicorn workers and a job worker) on a
database of its own holding Natural Earth countries, editable, so that triggers on it
fire from this module's writes only.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pyogrio
import pytest
import requests
import shapely
import shapely.geometry
from conftest import Server, drop_database, free_port, fresh_database, load_countries

from server.demo import natural_earth_countries

TIMEOUT = 60
DB = f"gh_platform_api_{os.getpid()}"
COUNTRIES = 177
EUROPE = 39  # Natural Earth countries whose continent is Europe (Russia included)


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    url = fresh_database(DB)
    load_countries(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE places AS "
            "SELECT id, name, continent, ST_PointOnSurface(geom) AS geom FROM countries"
        )
        conn.execute("ALTER TABLE places ADD PRIMARY KEY (id)")
        conn.execute("CREATE SEQUENCE places_id_seq OWNED BY places.id")
        conn.execute("SELECT setval('places_id_seq', (SELECT max(id) FROM places))")
        conn.execute("ALTER TABLE places ALTER COLUMN id SET DEFAULT nextval('places_id_seq')")
        conn.execute("SELECT UpdateGeometrySRID('places', 'geom', 4326)")
    yield url
    drop_database(DB)


@pytest.fixture(scope="module")
def api(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("platform-api")
    config = {
        "server": {"bind": f"127.0.0.1:{free_port()}", "workers": 2, "log_level": "WARNING"},
        "sources": {"pg": {"type": "postgis", "url": db_url, "pool_max": 4}},
        "store": {"source": "pg", "tables": "pg"},
        "collections": {
            "countries": {"source": "pg", "table": "countries"},
            "places": {"source": "pg", "table": "places", "editable": True},
        },
        "jobs": {"workers": 1, "concurrency": 2, "heartbeat_s": 0.5, "lost_after_s": 5, "trigger_depth": 2},
        "datasets": {"path": str(workdir / "datasets")},
    }
    server = Server(config, workdir)
    try:
        yield server.url
    finally:
        server.stop()


def call(api: str, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, api + path, timeout=TIMEOUT, **kwargs)


def ok(response: requests.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def rule(api: str, name: str, capability: str, config: dict[str, Any]) -> str:
    body = {"name": name, "capability": capability, "config": config}
    return ok(call(api, "POST", "/rules", json=body), 201)["id"]


def wait_job(api: str, job_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = ok(call(api, "GET", f"/jobs/{job_id}"))
        if job["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def features(api: str, cid: str, **params: Any) -> list[dict[str, Any]]:
    return ok(call(api, "GET", f"/collections/{cid}/items", params={"limit": 1000, **params}))["features"]


# -- capabilities ------------------------------------------------------------------------------------
def test_capabilities_list_their_schemas(api):
    listed = ok(call(api, "GET", "/capabilities"))
    names = {c["name"] for c in listed}
    assert len(names) >= 25
    assert {"buffer", "reproject", "centroid", "dissolve", "spatial_join", "filter"} <= names
    for capability in listed:
        assert capability["schema"] == capability["json_schema"] and capability["schema"]["type"] == "object"
    buffer = ok(call(api, "GET", "/capabilities/buffer"))
    assert "distance" in buffer["schema"]["properties"]
    missing = call(api, "GET", "/capabilities/teleport")
    assert missing.status_code == 404 and "detail" in missing.json()


# -- rules ------------------------------------------------------------------------------------------------
def test_rules_crud_validation_and_paging(api):
    rid = rule(api, "buffer_50m", "buffer", {"distance": 50})
    got = ok(call(api, "GET", f"/rules/{rid}"))
    assert got["capability"] == "buffer" and got["config"]["distance"] == 50 and got["enabled"] is True
    duplicate = call(
        api, "POST", "/rules", json={"name": "buffer_50m", "capability": "buffer", "config": {"distance": 1}}
    )
    assert duplicate.status_code == 409
    bad = call(
        api, "POST", "/rules", json={"name": "bad", "capability": "buffer", "config": {"distance": "far"}}
    )
    assert bad.status_code == 422 and "distance" in bad.json()["detail"]
    unknown = call(api, "POST", "/rules", json={"name": "x", "capability": "teleport", "config": {}})
    assert unknown.status_code in (404, 422)
    patched = ok(call(api, "PATCH", f"/rules/{rid}", json={"enabled": False}))
    assert patched["enabled"] is False and patched["config"]["distance"] == 50
    replaced = ok(
        call(
            api,
            "PUT",
            f"/rules/{rid}",
            json={"name": "buffer_50m", "capability": "buffer", "config": {"distance": 75}},
        )
    )
    assert replaced["config"]["distance"] == 75 and replaced["enabled"] is True
    for n in range(3):
        rule(api, f"paged_{n}", "centroid", {})
    first = ok(call(api, "GET", "/rules", params={"limit": 2, "offset": 0}))
    assert len(first["items"]) == 2 and first["total"] >= 4 and first["limit"] == 2
    assert ok(call(api, "POST", f"/rules/{rid}/validate"))["valid"] is True
    assert call(api, "DELETE", f"/rules/{rid}").status_code == 204
    assert call(api, "GET", f"/rules/{rid}").status_code == 404


def test_batch_validation_is_a_dry_run(api):
    before = ok(call(api, "GET", "/rules"))["total"]
    # The text's own example: both valid.
    batch = [
        {"capability": "buffer", "config": {"distance": 100}},
        {"capability": "reproject", "config": {"crs": "EPSG:2154"}},
    ]
    result = ok(call(api, "POST", "/rules/validate", json=batch))
    assert result["valid"] is True and [r["valid"] for r in result["results"]] == [True, True]
    mixed = ok(
        call(
            api,
            "POST",
            "/rules/validate",
            json=[*batch, {"capability": "buffer", "config": {"distance": -1}}],
        )
    )
    assert (
        mixed["valid"] is False
        and mixed["results"][2]["errors"]
        and "distance" in mixed["results"][2]["errors"][0]
    )
    assert ok(call(api, "GET", "/rules"))["total"] == before


# -- jobs -------------------------------------------------------------------------------------------------
def test_a_chain_of_three_rules_publishes_its_result(api, db_url, tmp_path):
    chain = [
        rule(api, "europe_only", "filter", {"cql": "continent = 'Europe'"}),
        rule(api, "to_laea", "reproject", {"crs": "EPSG:3035"}),
        rule(api, "centres", "centroid", {}),
    ]
    created = ok(
        call(
            api,
            "POST",
            "/jobs",
            json={"name": "europe centres", "dataset_id": "countries", "parameters": {"rule_ids": chain}},
        ),
        201,
    )
    assert created["status"] == "PENDING" and created["created_at"].endswith("Z")
    job = wait_job(api, created["id"])
    assert job["status"] == "COMPLETED", job
    assert job["started_at"] and job["completed_at"] >= job["started_at"]
    cid = job["result"]["collection"]
    found = features(api, cid)
    assert len(found) == EUROPE
    assert {f["geometry"]["type"] for f in found} == {"Point"}
    france = next(f for f in found if f["properties"]["name"] == "France")
    with psycopg.connect(db_url) as conn:  # the centre in EPSG:3035, served back in CRS84
        x, y = conn.execute(
            "SELECT ST_X(c), ST_Y(c) FROM (SELECT ST_Transform(ST_Centroid(ST_Transform(geom, 3035)), 4326) "
            "AS c FROM countries WHERE name = 'France') AS centre"
        ).fetchone()
    assert france["geometry"]["coordinates"] == pytest.approx([x, y], abs=1e-6)
    assert {link["rel"] for link in job["result"]["links"]} >= {"items", "tiles"}
    listed = ok(call(api, "GET", "/jobs", params={"status": "completed"}))
    assert created["id"] in [j["id"] for j in listed["items"]]
    for fmt in ("gpkg", "fgb", "geojson"):
        response = call(api, "GET", f"/jobs/{created['id']}/download", params={"f": fmt})
        assert response.status_code == 200, response.text
        path = tmp_path / f"out.{fmt}"
        path.write_bytes(response.content)
        assert pyogrio.read_info(path)["features"] == EUROPE
    parquet = call(api, "GET", f"/jobs/{created['id']}/download", params={"f": "parquet"})
    (tmp_path / "out.parquet").write_bytes(parquet.content)
    assert pq.read_table(tmp_path / "out.parquet").num_rows == EUROPE
    assert call(api, "POST", f"/jobs/{created['id']}/cancel").status_code == 409


def test_a_job_on_an_uploaded_dataset(api):
    shp = Path(natural_earth_countries())
    upload = [("file", (p.name, p.read_bytes())) for p in shp.parent.iterdir() if p.stem == shp.stem]
    dataset = ok(call(api, "POST", "/datasets/upload", files=upload), 201)
    rid = rule(api, "points_of_upload", "point_on_surface", {})
    job = ok(
        call(api, "POST", "/jobs", json={"dataset_id": dataset["id"], "parameters": {"rule_ids": [rid]}}), 201
    )
    done = wait_job(api, job["id"])
    assert done["status"] == "COMPLETED", done
    assert len(features(api, done["result"]["collection"])) == COUNTRIES


def test_bad_jobs_are_refused_at_once(api):
    rid = rule(api, "for_bad_jobs", "centroid", {})
    assert (
        call(
            api, "POST", "/jobs", json={"dataset_id": "nowhere", "parameters": {"rule_ids": [rid]}}
        ).status_code
        == 422
    )
    assert (
        call(
            api, "POST", "/jobs", json={"dataset_id": "countries", "parameters": {"rule_ids": ["nope"]}}
        ).status_code
        == 422
    )
    assert call(api, "POST", "/jobs", json={"dataset_id": "countries", "parameters": {}}).status_code == 422
    assert call(api, "GET", "/jobs", params={"status": "sleeping"}).status_code == 400
    assert call(api, "GET", "/jobs/00000000-0000-0000-0000-000000000000").status_code == 404


# -- triggers ---------------------------------------------------------------------------------------------
def _post_place(api: str, name: str, lon: float, lat: float) -> str:
    feature = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"name": name, "continent": "Test"},
    }
    response = call(
        api,
        "POST",
        "/collections/places/items",
        json=feature,
        headers={"Content-Type": "application/geo+json"},
    )
    assert response.status_code == 201, response.text
    return response.headers["Location"].rstrip("/").rpartition("/")[2]


def _wait_trigger_job(api: str, tid: str, after: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        trigger = ok(call(api, "GET", f"/triggers/{tid}"))
        if trigger["fired"] > after and trigger["last_job"]:
            job = wait_job(api, trigger["last_job"])
            assert job["status"] == "COMPLETED", job
            return job
        assert time.monotonic() < deadline, trigger
        time.sleep(0.2)


def test_data_changed_trigger_reruns_its_rule_on_every_write(api):
    rid = rule(api, "places_buffer", "buffer", {"distance": 1000})
    trigger = ok(
        call(
            api,
            "POST",
            "/triggers",
            json={
                "name": "buffer_on_data_changed",
                "event": "data_changed",
                "trigger_type": "Data_Changed",
                "rule_id": rid,
                "dataset_id": "places",
                "output": "places_buffered",
            },
        ),
        201,
    )
    assert trigger["event"] == "DATA_CHANGED" and trigger["trigger_type"] == "DATA_CHANGED"
    _post_place(api, "Trigger town", 2.35, 48.86)
    _wait_trigger_job(api, trigger["id"], 0)
    buffered = features(api, "places_buffered", name="Trigger town")
    assert len(buffered) == 1 and buffered[0]["geometry"]["type"] in ("Polygon", "MultiPolygon")
    total = ok(call(api, "GET", "/collections/places/items", params={"limit": 1}))["numberMatched"]
    _post_place(api, "Second town", 4.35, 50.85)
    _wait_trigger_job(api, trigger["id"], 1)
    assert (
        ok(call(api, "GET", "/collections/places_buffered/items", params={"limit": 1}))["numberMatched"]
        == total + 1
    )
    disabled = ok(call(api, "POST", f"/triggers/{trigger['id']}/disable"))
    assert disabled["enabled"] is False
    assert call(api, "DELETE", f"/triggers/{trigger['id']}").status_code == 204


def test_dml_trigger_updates_only_the_changed_features(api):
    rid = rule(api, "places_centroid", "buffer", {"distance": 500})
    trigger = ok(
        call(
            api,
            "POST",
            "/triggers",
            json={
                "name": "dml",
                "event": "DATA_CHANGED",
                "trigger_type": "dml",
                "rule_id": rid,
                "dataset_id": "places",
                "output": "places_dml",
            },
        ),
        201,
    )
    fid = _post_place(api, "Moving town", 10.0, 50.0)
    _wait_trigger_job(api, trigger["id"], 0)
    before = features(api, "places_dml", name="Moving town")
    assert len(before) == 1
    patch = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [12.0, 51.0]}, "properties": {}}
    response = call(
        api,
        "PATCH",
        f"/collections/places/items/{fid}",
        json=patch,
        headers={"Content-Type": "application/geo+json"},
    )
    assert response.status_code in (200, 204), response.text
    job = _wait_trigger_job(api, trigger["id"], 1)
    assert job["result"]["refreshed"] == 1
    after = features(api, "places_dml", name="Moving town")
    centre = shapely.geometry.shape(after[0]["geometry"]).centroid
    assert centre.x == pytest.approx(12.0, abs=0.01) and centre.y == pytest.approx(51.0, abs=0.01)
    refused = call(
        api,
        "POST",
        "/triggers",
        json={
            "name": "no",
            "trigger_type": "DML",
            "rule_id": rule(api, "diss", "dissolve", {}),
            "dataset_id": "places",
        },
    )
    assert refused.status_code == 422 and "DML" in refused.json()["detail"]


def test_a_trigger_cascade_stops_at_the_configured_depth(api):
    """A watches places -> loop_a, B watches loop_a -> loop_b, C watches loop_b -> loop_c: a write to
    places runs A (depth 1) and B (depth 2); C would be depth 3, past jobs.trigger_depth = 2."""
    rid = rule(api, "cascade_rule", "centroid", {})

    def trigger(name: str, watched: str, output: str) -> str:
        body = {
            "name": name,
            "trigger_type": "DATA_CHANGED",
            "rule_id": rid,
            "dataset_id": watched,
            "output": output,
        }
        return ok(call(api, "POST", "/triggers", json=body), 201)["id"]

    a = trigger("a", "places", "loop_a")
    _post_place(api, "Cascade seed", 0.0, 0.0)
    _wait_trigger_job(api, a, 0)
    b = trigger("b", "loop_a", "loop_b")
    _post_place(api, "Cascade second", 0.5, 0.5)
    _wait_trigger_job(api, a, 1)
    _wait_trigger_job(api, b, 0)
    c = trigger("c", "loop_b", "loop_c")
    _post_place(api, "Cascade start", 1.0, 1.0)
    _wait_trigger_job(api, a, 2)
    _wait_trigger_job(api, b, 1)
    time.sleep(2)
    assert ok(call(api, "GET", f"/triggers/{c}"))["fired"] == 0
    assert call(api, "GET", "/collections/loop_c").status_code == 404
    for tid in (a, b, c):
        assert call(api, "DELETE", f"/triggers/{tid}").status_code == 204


def test_a_schedule_trigger_runs_at_its_cron_time(api):
    rid = rule(api, "scheduled_centres", "centroid", {})
    body = {"name": "every minute", "trigger_type": "schedule", "rule_id": rid, "dataset_id": "countries"}
    bad = call(api, "POST", "/triggers", json={**body, "schedule": "every minute"})
    assert bad.status_code == 422 and "schedule" in bad.json()["detail"]
    made = ok(
        call(api, "POST", "/triggers", json={**body, "schedule": "* * * * *", "output": "scheduled"}), 201
    )
    assert made["trigger_type"] == "SCHEDULE"
    job = _wait_trigger_job(api, made["id"], 0, timeout=100)  # the next minute, checked every 15 s
    assert len(features(api, job["result"]["collection"])) == COUNTRIES
    assert call(api, "DELETE", f"/triggers/{made['id']}").status_code == 204


# -- OGC API - Processes ------------------------------------------------------------------------------------
def test_capabilities_are_processes(api):
    listed = ok(call(api, "GET", "/processes"))["processes"]
    assert "buffer" in {p["id"] for p in listed}
    described = ok(call(api, "GET", "/processes/buffer"))
    assert {"input", "distance"} <= set(described["inputs"]) and "result" in described["outputs"]
    sync = ok(call(api, "POST", "/processes/centroid/execution", json={"inputs": {"input": "countries"}}))
    assert len(features(api, sync["result"]["collection"])) == COUNTRIES
    started = call(
        api,
        "POST",
        "/processes/buffer/execution",
        json={"inputs": {"input": "places", "distance": 10}},
        headers={"Prefer": "respond-async"},
    )
    assert started.status_code == 201, started.text
    status_url = started.headers["Location"]
    deadline = time.monotonic() + 60
    while (status := requests.get(status_url, timeout=TIMEOUT).json())["status"] in ("accepted", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert status["status"] == "successful", status
    results = next(link["href"] for link in status["links"] if link["rel"].endswith("/results"))
    assert requests.get(results, timeout=TIMEOUT).json()["result"]["features"] > 0
    bad = call(
        api, "POST", "/processes/buffer/execution", json={"inputs": {"input": "places", "distance": "x"}}
    )
    assert bad.status_code == 422 and bad.json()["code"]


# -- the SDK -------------------------------------------------------------------------------------------------
def test_the_readme_sdk_examples_run(api, tmp_path, monkeypatch):
    """The README's Python SDK examples, run as they are against this server."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python SDK", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    monkeypatch.setenv("GEOHARBOR_URL", api)
    monkeypatch.chdir(tmp_path)
    for n, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {n + 1}", "exec"), {"__name__": "readme"})  # noqa: S102
    assert pyogrio.read_info(tmp_path / "centres.gpkg")["features"] == COUNTRIES


def test_the_client_raises_the_servers_message(api):
    from geoharbor.client import Client, GeoharborError

    with Client(api) as gh:
        with pytest.raises(GeoharborError) as refused:
            gh.create_rule("sdk_bad", "buffer", {"distance": "far"})
        assert refused.value.status == 422 and "distance" in refused.value.message
        with pytest.raises(GeoharborError) as missing:
            gh.job("00000000-0000-0000-0000-000000000000")
        assert missing.value.status == 404
        assert sum(1 for _ in gh.items("countries", page_size=40)) == COUNTRIES
