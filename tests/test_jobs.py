"""Background jobs (server/jobs.py): a load job deferred on procrastinate runs on ``geoharbor
worker`` processes and publishes its layer; a worker killed mid-job leaves the job FAILED,
not RUNNING, and no layer; two workers share the queue; embedded mode (SQLite store) runs
the same task in the server process.

The queue and store live in a database of their own, made and dropped here, served by a
``geoharbor serve`` of its own (which starts one worker), so the session server is untouched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyogrio.raw
import pytest
import requests
import shapely
import yaml
from conftest import ADMIN_URL, free_port

from providers.store import SQLiteStore, Store
from server.config import validate
from server.demo import natural_earth_countries
from server.jobs import CANCELLED, COMPLETE, FAILED, KIND, RUNNING, Jobs, apply_schema
from server.registry import Registry

GEOHARBOR = shutil.which("geoharbor", path=str(Path(sys.executable).parent)) or "geoharbor"
STORE_DB = f"gh_jobs_store_{os.getpid()}"
#: Points in the file a worker is killed loading: it must still be loading seconds after it started.
MANY = 1_500_000
#: Short heartbeats so that a lost worker is noticed within seconds.
JOBS = {"workers": 1, "concurrency": 1, "heartbeat_s": 0.5, "lost_after_s": 3}
COUNTRIES = 177


@pytest.fixture(scope="module")
def store_url() -> Iterator[str]:
    base, _, _ = ADMIN_URL.rpartition("/")
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{STORE_DB}" WITH (FORCE)')  # noqa: S608 - test constant
        conn.execute(f'CREATE DATABASE "{STORE_DB}"')
    url = f"{base}/{STORE_DB}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION postgis")
    yield url
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{STORE_DB}" WITH (FORCE)')  # noqa: S608 - test constant


@pytest.fixture(scope="module")
def raw_config(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return {
        "server": {"bind": f"127.0.0.1:{free_port()}", "workers": 1, "log_level": "WARNING"},
        "sources": {"pg": {"type": "postgis", "url": store_url, "pool_max": 4}},
        "store": {"source": "pg"},
        "jobs": JOBS,
        # The importer may read the files this module writes by path.
        "imports": {"roots": [str(tmp_path_factory.getbasetemp())]},
    }


@pytest.fixture(scope="module")
def config_path(raw_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jobs-config") / "geoharbor.yml"
    path.write_text(yaml.safe_dump(raw_config))
    return path


@pytest.fixture(scope="module")
def served(
    raw_config: dict[str, Any], config_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``geoharbor serve`` on the store database: gunicorn plus one job worker."""
    log = open(tmp_path_factory.mktemp("jobs-server") / "server.log", "w+b")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [GEOHARBOR, "serve", "-c", str(config_path)], stdout=log, stderr=subprocess.STDOUT
    )
    url = "http://" + raw_config["server"]["bind"]
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, _text(log)
            try:
                if requests.get(url + "/collections", timeout=10).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, _text(log)
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(40)
        log.close()


def _text(log: Any) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def jobs(raw_config: dict[str, Any]) -> Iterator[Jobs]:
    """The queue as a web process sees it: defer and read, never run."""
    apply_schema(raw_config["sources"]["pg"]["url"])  # the workers may still be starting
    config = validate(raw_config)
    registry = Registry(config)
    queue = Jobs(config, registry)
    yield queue
    queue.close()
    registry.close()


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jobs-files") / "many.gpkg"
    rng = np.random.default_rng(11)
    points = shapely.points(rng.uniform(-10, 10, MANY), rng.uniform(40, 50, MANY))
    pyogrio.raw.write(
        path,
        shapely.to_wkb(points),
        [np.arange(MANY, dtype=np.int64), rng.uniform(0, 1, MANY)],
        ["n", "value"],
        driver="GPKG",
        layer="many",
        crs="EPSG:4326",
        geometry_type="Point",
    )
    return path


def _name() -> str:
    return f"job_{uuid.uuid4().hex[:10]}"


def _wait(store: Store, job_id: str, states: set[str], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        record = store.find(KIND, job_id)
        assert record is not None
        if record.body["state"] in states:
            return record.body
        assert time.monotonic() < deadline, f"job {job_id} still {record.body}"
        time.sleep(0.1)


def _table_exists(url: str, table: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None


def test_a_load_job_completes_with_progress_and_publishes_its_layer(served, jobs, store_url):
    name = _name()
    job_id = jobs.defer("load_layer", {"path": str(natural_earth_countries()), "table": name}, owner="alice")
    queued = jobs.get(job_id).body
    assert queued["state"] == "PENDING" and queued["owner"] == "alice"

    body = _wait(jobs.store, job_id, {COMPLETE, FAILED})
    assert body["state"] == COMPLETE, body
    assert body["progress"] == {"done": COUNTRIES, "total": COUNTRIES}
    assert body["started_at"] >= body["created_at"] and body["finished_at"] >= body["started_at"]
    assert body["result"]["features"] == COUNTRIES and body["result"]["collection"] == name

    items = requests.get(f"{served}/collections/{name}/items", params={"limit": 1}, timeout=10)
    assert items.status_code == 200, items.text
    assert items.json()["numberMatched"] == COUNTRIES
    tile = requests.get(f"{served}/collections/{name}/tiles/WebMercatorQuad/0/0/0", timeout=10)
    assert tile.status_code == 200 and tile.content


def test_a_failing_load_ends_failed_with_its_message_and_leaves_nothing(served, jobs, store_url, tmp_path):
    bad = tmp_path / "nothing.geojson"
    bad.write_text("{not json")
    name = _name()
    job_id = jobs.defer("load_layer", {"path": str(bad), "table": name})
    body = _wait(jobs.store, job_id, {COMPLETE, FAILED})
    assert body["state"] == FAILED and "nothing.geojson" in body["message"], body
    assert not _table_exists(store_url, name)
    assert requests.get(f"{served}/collections/{name}", timeout=10).status_code == 404


def test_workers_share_the_queue_and_a_killed_worker_fails_its_job(
    served, jobs, store_url, config_path, many
):
    second = subprocess.Popen([GEOHARBOR, "worker", "-c", str(config_path)], stderr=subprocess.DEVNULL)
    try:
        big, small = _name(), _name()
        big_id = jobs.defer("load_layer", {"path": str(many), "table": big})
        running = _wait(jobs.store, big_id, {RUNNING, COMPLETE, FAILED})
        assert running["state"] == RUNNING, running
        busy = running["worker"]

        # The other worker takes the next job while the first one is loading.
        small_id = jobs.defer("load_layer", {"path": str(natural_earth_countries()), "table": small})
        done = _wait(jobs.store, small_id, {COMPLETE, FAILED})
        assert done["state"] == COMPLETE, done
        assert done["worker"] != busy

        loading = _wait(jobs.store, big_id, {RUNNING, COMPLETE, FAILED})
        assert loading["state"] == RUNNING, "the big load ended before the worker could be killed"
        # Still reading, or past the last batch and building the table's key and index: either
        # way the load has not committed, so killing it must leave nothing behind.
        assert 0 < loading["progress"]["done"] <= MANY and loading["progress"]["total"] == MANY
        os.kill(int(busy.rpartition(":")[2]), signal.SIGKILL)
        killed_at = time.monotonic()

        body = _wait(jobs.store, big_id, {COMPLETE, FAILED}, timeout=20)
        assert body["state"] == FAILED and "worker lost" in body["message"], body
        assert time.monotonic() - killed_at >= JOBS["lost_after_s"] - 1
        assert not _table_exists(store_url, big)
        assert jobs.store.find("layer", big) is None
        assert requests.get(f"{served}/collections/{big}", timeout=10).status_code == 404
        # procrastinate will not run it again either: the same periodic task fails its row,
        # just after our record.
        deadline = time.monotonic() + 20
        while True:
            with psycopg.connect(store_url) as conn:
                status = conn.execute(
                    "SELECT status FROM procrastinate_jobs WHERE args->>'job' = %s", (big_id,)
                ).fetchone()
            if status is not None and status[0] == "failed" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status is not None and status[0] == "failed"
    finally:
        second.terminate()
        second.wait(30)


def test_an_import_whose_worker_is_killed_ends_complete_error_and_publishes_nothing(
    served, jobs, store_url, config_path, many
):
    """SIGKILL the worker running an async import mid-load: the import is COMPLETE_ERROR with the
    worker's loss as its task's message, not RUNNING for ever, and no table or layer exists."""
    worker = subprocess.Popen([GEOHARBOR, "worker", "-c", str(config_path)], stderr=subprocess.DEVNULL)
    try:
        created = requests.post(
            f"{served}/imports", json={"import": {"data": {"type": "file", "file": str(many)}}}, timeout=30
        )
        assert created.status_code == 201, created.text
        imp = created.json()["import"]
        task = imp["tasks"][0]
        assert task["state"] == "READY", task
        name = _name()
        renamed = requests.put(task["href"], json={"task": {"layer": {"name": name}}}, timeout=30)
        assert renamed.status_code == 200, renamed.text
        assert requests.post(f"{served}/imports/{imp['id']}?async=true", timeout=30).status_code == 204

        job_id = jobs.store.find("import", str(imp["id"])).body["job"]
        deadline = time.monotonic() + 30
        while True:
            progress = requests.get(task["progress"], timeout=10).json()
            if progress["state"] == "RUNNING" and progress.get("progress", 0) > 0:
                break
            assert progress["state"] in ("READY", "RUNNING"), progress
            assert time.monotonic() < deadline, progress
            time.sleep(0.05)
        assert progress["total"] == MANY
        running = jobs.get(job_id).body
        os.kill(int(running["worker"].rpartition(":")[2]), signal.SIGKILL)

        deadline = time.monotonic() + 30
        while True:
            found = requests.get(f"{served}/imports/{imp['id']}", timeout=10).json()["import"]
            if found["state"] != "RUNNING":
                break
            assert time.monotonic() < deadline, found
            time.sleep(0.2)
        assert found["state"] == "COMPLETE_ERROR", found
        assert "worker lost" in found["tasks"][0]["errorMessage"]
        assert not _table_exists(store_url, name)
        assert requests.get(f"{served}/collections/{name}", timeout=10).status_code == 404
    finally:
        worker.kill()
        worker.wait(30)


def test_a_rules_job_whose_worker_is_killed_ends_failed_and_publishes_nothing(
    served, jobs, store_url, config_path, many
):
    """POST /jobs: a buffer of 1.5M points runs as one statement inside PostgreSQL; SIGKILL its
    worker: the job is FAILED (worker lost), not RUNNING, and no result layer exists."""
    worker = subprocess.Popen([GEOHARBOR, "worker", "-c", str(config_path)], stderr=subprocess.DEVNULL)
    try:
        source = _name()
        loaded = _wait(
            jobs.store, jobs.defer("load_layer", {"path": str(many), "table": source}), {COMPLETE, FAILED}, 90
        )
        assert loaded["state"] == COMPLETE, loaded
        layers_before = {r.key for r in jobs.store.list("layer")}
        rule = requests.post(
            f"{served}/rules",
            json={"name": _name(), "capability": "buffer", "config": {"distance": 10}},
            timeout=30,
        )
        assert rule.status_code == 201, rule.text
        created = requests.post(
            f"{served}/jobs",
            json={"dataset_id": source, "parameters": {"rule_ids": [rule.json()["id"]]}},
            timeout=30,
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        running = _wait(jobs.store, job_id, {RUNNING, COMPLETE, FAILED})
        assert running["state"] == RUNNING, running
        time.sleep(1)  # inside its statement
        assert jobs.get(job_id).body["state"] == RUNNING, "the buffer ended before its worker could be killed"
        os.kill(int(running["worker"].rpartition(":")[2]), signal.SIGKILL)
        # Asking about the job is enough to learn its worker is gone, even with no worker left.
        deadline = time.monotonic() + 30
        while (status := requests.get(f"{served}/jobs/{job_id}", timeout=10).json())["status"] == "RUNNING":
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert status["status"] == "FAILED" and "worker lost" in status["error"], status
        assert status["result"] is None
        assert {r.key for r in jobs.store.list("layer")} == layers_before
    finally:
        worker.kill()
        worker.wait(30)


def test_cancelled_jobs_stop_and_leave_nothing(served, jobs, store_url, config_path, many):
    """A running load stops at its next progress report; a waiting one never starts. Both end
    CANCELLED, and neither leaves a table."""
    worker = subprocess.Popen([GEOHARBOR, "worker", "-c", str(config_path)], stderr=subprocess.DEVNULL)
    try:
        running_name, waiting_name = _name(), _name()
        running_id = jobs.defer("load_layer", {"path": str(many), "table": running_name})
        waiting_id = jobs.defer("load_layer", {"path": str(many), "table": waiting_name})
        assert jobs.cancel(waiting_id).body["state"] in (CANCELLED, RUNNING)
        body = _wait(jobs.store, running_id, {RUNNING, COMPLETE, FAILED})
        assert body["state"] == RUNNING, body
        jobs.cancel(running_id)
        for job_id, name in ((running_id, running_name), (waiting_id, waiting_name)):
            ended = _wait(jobs.store, job_id, {COMPLETE, FAILED, CANCELLED}, timeout=60)
            assert ended["state"] == CANCELLED, ended
            assert not _table_exists(store_url, name)
        assert jobs.cancel(running_id).body["state"] == CANCELLED  # ended: nothing more to do
    finally:
        worker.kill()
        worker.wait(30)


def test_embedded_mode_runs_the_same_task_in_process(tmp_path):
    from server.app import create_app

    gpkg = tmp_path / "data.gpkg"
    subprocess.run(
        ["ogr2ogr", "-f", "GPKG", str(gpkg), str(natural_earth_countries()), "-nln", "seed"], check=True
    )
    store_path = tmp_path / "state.sqlite"
    config = {
        "sources": {"files": {"type": "geopackage", "path": str(gpkg)}},
        "store": {"path": str(store_path)},
        "jobs": JOBS,
    }
    # A job left RUNNING by a server that died is failed when the next one starts.
    stale = SQLiteStore(store_path)
    orphan = stale.insert(
        KIND, {"kind": "load_layer", "state": RUNNING, "heartbeat": time.time() - 60}, "orphan"
    )
    stale.close()

    app = create_app(config)
    state = app.extensions["geoharbor"]
    assert state.jobs.get("orphan").body["state"] == FAILED
    assert orphan.id == state.jobs.get("orphan").id

    name = _name()
    job_id = state.jobs.defer("load_layer", {"path": str(natural_earth_countries()), "table": name})
    body = _wait(state.jobs.store, job_id, {COMPLETE, FAILED})
    assert body["state"] == COMPLETE, body
    assert body["runner"] == "thread" and body["worker"].endswith(f":{os.getpid()}")
    assert body["progress"] == {"done": COUNTRIES, "total": COUNTRIES}
    items = app.test_client().get(f"/collections/{name}/items?limit=2")
    assert items.status_code == 200, items.get_data(as_text=True)
    assert items.get_json()["numberMatched"] == COUNTRIES
    state.registry.close()


def test_embedded_schedules_fire_each_cron_time_once_across_processes(tmp_path):
    """Embedded mode has no procrastinate: each serving process fires SCHEDULE triggers
    itself, and two processes that see the same cron time due start one run."""
    from server.app import create_app
    from server.rule_runs import fire_schedules

    gpkg = tmp_path / "data.gpkg"
    subprocess.run(
        ["ogr2ogr", "-f", "GPKG", str(gpkg), str(natural_earth_countries()), "-nln", "seed"], check=True
    )
    config = {
        "sources": {"files": {"type": "geopackage", "path": str(gpkg), "publish": True}},
        "store": {"path": str(tmp_path / "state.sqlite")},
        "jobs": JOBS,
    }
    first, second = create_app(config), create_app(config)  # two processes' views of one store
    client = first.test_client()
    rule = client.post("/rules", json={"name": "centres", "capability": "centroid", "config": {}})
    assert rule.status_code == 201, rule.get_data(as_text=True)
    made = client.post(
        "/triggers",
        json={
            "name": "every minute",
            "trigger_type": "schedule",
            "schedule": "* * * * *",
            "rule_id": rule.get_json()["id"],
            "dataset_id": "seed",
            "output": "centres",
        },
    )
    assert made.status_code == 201, made.get_data(as_text=True)
    # The request above started this process's scheduler.
    assert any(t.name == "schedules" and t.is_alive() for t in threading.enumerate())

    due = time.time() + 61  # past the next minute
    apps = (first, second)
    fired: list[list[str]] = [[], []]
    racers = [
        threading.Thread(
            target=lambda n=n: fired[n].extend(
                fire_schedules(
                    apps[n].extensions["geoharbor"].registry, apps[n].extensions["geoharbor"].jobs, due
                )
            )
        )
        for n in (0, 1)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert len(fired[0] + fired[1]) == 1, fired
    job_id = (fired[0] + fired[1])[0]
    body = _wait(first.extensions["geoharbor"].jobs.store, job_id, {COMPLETE, FAILED})
    assert body["state"] == COMPLETE, body
    trigger = client.get(f"/triggers/{made.get_json()['id']}").get_json()
    assert trigger["fired"] == 1
    # The same time is not fired again; the next one is.
    state = second.extensions["geoharbor"]
    assert fire_schedules(state.registry, state.jobs, due) == []
    (again,) = fire_schedules(state.registry, state.jobs, due + 60)
    assert _wait(state.jobs.store, again, {COMPLETE, FAILED})["state"] == COMPLETE
    for app in apps:
        app.extensions["geoharbor"].registry.close()


def test_the_worker_refuses_an_embedded_store(tmp_path):
    gpkg = tmp_path / "data.gpkg"
    subprocess.run(["ogr2ogr", "-f", "GPKG", str(gpkg), str(natural_earth_countries())], check=True)
    path = tmp_path / "geoharbor.yml"
    path.write_text(yaml.safe_dump({"sources": {"files": {"type": "geopackage", "path": str(gpkg)}}}))
    done = subprocess.run([GEOHARBOR, "worker", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "embedded mode" in done.stderr, done.stderr


def test_workers_starting_together_create_the_queue_schema_once():
    from concurrent.futures import ThreadPoolExecutor

    from server.jobs import apply_schema

    name = f"{STORE_DB}_schema"
    base, _, _ = ADMIN_URL.rpartition("/")
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # noqa: S608 - test constant
    try:
        with ThreadPoolExecutor(4) as pool:
            made = list(pool.map(apply_schema, [f"{base}/{name}"] * 4))
        assert sorted(made) == [False, False, False, True]
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # noqa: S608 - test constant
