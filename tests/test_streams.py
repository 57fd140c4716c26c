"""Events across processes (providers/events.py) and the SSE routes (server/streams.py).

The job stream is read from the session server (gunicorn, two web workers) while a
``geoharbor worker`` process runs the job: its events reach the web worker through
PostgreSQL LISTEN/NOTIFY. Evaluation streams get events this test process publishes,
as another host would. An embedded server (SQLite store, polled) is started here to
show the same through SQLite, and that SIGTERM ends open streams at once.
"""

from __future__ import annotations

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

import orjson
import psycopg
import pytest
import requests
import yaml
from conftest import free_port, server_config

from providers.events import PostgresBus, SQLiteBus
from providers.postgis import PostGISDatabase
from server import streams
from server.config import validate
from server.demo import natural_earth_countries
from server.jobs import Jobs
from server.registry import Registry

GEOHARBOR = shutil.which("geoharbor", path=str(Path(sys.executable).parent)) or "geoharbor"
COUNTRIES = 177


# -- reading a stream ------------------------------------------------------------------------------
#: The longest a test waits for the next event of a stream (heartbeats keep the connection alive).
EVENT_WAIT_S = 60


class Stream:
    """An open SSE response read event by event: ``(id, data)`` pairs, comments and ``retry``."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.response = requests.get(url, headers=headers or {}, stream=True, timeout=(5, 15))
        self._chunks = (
            self.response.iter_content(chunk_size=None) if self.response.status_code == 200 else None
        )
        self._buffer = b""
        self.comments: list[str] = []
        self.retry: int | None = None
        self.ended = False

    def next(self) -> tuple[int | None, dict[str, Any]] | None:
        """The next event, or None once the server ended the stream."""
        assert self._chunks is not None, self.response.status_code
        deadline = time.monotonic() + EVENT_WAIT_S
        while True:
            while b"\n\n" not in self._buffer:
                assert time.monotonic() < deadline, f"no event within {EVENT_WAIT_S} s: {self.comments}"
                try:
                    self._buffer += next(self._chunks)
                except StopIteration:
                    self.ended = True
                    return None
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            event_id, data = None, None
            for line in block.decode().split("\n"):
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "":
                    self.comments.append(value)
                elif field == "id":
                    event_id = int(value)
                elif field == "data":
                    data = orjson.loads(value)
                elif field == "retry":
                    self.retry = int(value)
            if data is not None:
                return event_id, data

    def all(self) -> list[tuple[int | None, dict[str, Any]]]:
        found = []
        while (event := self.next()) is not None:
            found.append(event)
        return found

    def close(self) -> None:
        self.response.close()


@pytest.fixture(scope="module")
def queue(pg_url: str, gpkg_path: Path) -> Iterator[Jobs]:
    """The session server's job queue as a web process sees it: defer and read."""
    config = validate(server_config(pg_url, gpkg_path, free_port()))
    registry = Registry(config)
    jobs = Jobs(config, registry)
    yield jobs
    jobs.close()
    registry.close()


@pytest.fixture(scope="module")
def pg_bus(pg_url: str) -> Iterator[PostgresBus]:
    """The event bus of the session's database, as another process (or host) holds it."""
    db = PostGISDatabase(pg_url, pool_min=0, pool_max=2)
    bus = PostgresBus(db)
    yield bus
    bus.close()
    db.close()


# -- the bus ---------------------------------------------------------------------------------------
@pytest.fixture(params=["postgresql", "sqlite"])
def bus_pair(request: pytest.FixtureRequest, pg_url: str, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """Two buses on one store, with connections of their own: a publisher and a subscriber."""
    if request.param == "sqlite":
        path = str(tmp_path / "state.sqlite")
        yield SQLiteBus(path), SQLiteBus(path)
        return
    dbs = [PostGISDatabase(pg_url, pool_min=0, pool_max=2) for _ in range(2)]
    buses = [PostgresBus(db) for db in dbs]
    yield buses[0], buses[1]
    for bus, db in zip(buses, dbs, strict=True):
        bus.close()
        db.close()


def test_a_subscriber_is_woken_by_a_publish_elsewhere_in_order(bus_pair):
    publisher, subscriber = bus_pair
    channel = f"test:{uuid.uuid4()}"
    publisher.publish(channel, {"n": 0})  # before the subscription: not delivered
    with subscriber.subscribe(channel) as subscription:
        threading.Timer(0.5, lambda: [publisher.publish(channel, {"n": n}) for n in (1, 2, 3)]).start()
        started = time.monotonic()
        found = []
        while len(found) < 3 and time.monotonic() - started < 10:
            found += subscription.next(10)
        waited = time.monotonic() - started
    assert [e.body["n"] for e in found] == [1, 2, 3]
    assert [e.id for e in found] == sorted({e.id for e in found})
    # Woken when they were published (a PostgreSQL subscriber never polls: NOTIFY woke it).
    assert waited < 3


def test_reading_after_an_id_resumes_and_old_events_are_pruned(bus_pair, pg_url):
    publisher, reader = bus_pair
    channel = f"test:{uuid.uuid4()}"
    ids = [publisher.publish(channel, {"n": n}) for n in range(5)]
    other = publisher.publish(f"{channel}:other", {"n": 99})
    assert [e.body["n"] for e in reader.read(channel, ids[1])] == [2, 3, 4]
    assert reader.last_id(channel) == ids[-1] and other not in [e.id for e in reader.read(channel, 0)]
    assert [e.id for e in reader.subscribe(channel, ids[3]).next(0)] == [ids[4]]
    reader.prune(older_than_s=3600)  # recent events stay
    assert len(reader.read(channel, 0)) == 5
    time.sleep(1.1)
    assert reader.prune(older_than_s=1) >= 6
    assert reader.read(channel, 0) == [] and reader.last_id(channel) == 0


# -- jobs ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def job_events(base: str, queue: Jobs) -> dict[str, Any]:
    """A load job whose stream is opened before it can start, read to its end."""
    opened: dict[str, Any] = {}

    def open_stream(job_id: str) -> None:
        opened["stream"] = Stream(f"{base}/jobs/{job_id}/stream")
        assert opened["stream"].response.status_code == 200

    name = f"stream_{uuid.uuid4().hex[:10]}"
    job_id = queue.defer(
        "load_layer", {"path": str(natural_earth_countries()), "table": name}, before=open_stream
    )
    stream: Stream = opened["stream"]
    started = time.monotonic()
    events = stream.all()
    return {
        "id": job_id,
        "name": name,
        "events": events,
        "stream": stream,
        "seconds": time.monotonic() - started,
    }


def test_a_job_stream_carries_the_job_workers_events_and_ends(job_events, base):
    events = job_events["events"]
    stream: Stream = job_events["stream"]
    assert stream.ended and stream.retry == streams.RETRY_MS
    assert stream.response.headers["Content-Type"].startswith("text/event-stream")
    ids = [event_id for event_id, _ in events]
    assert None not in ids and ids == sorted(set(ids))
    kinds = [(d["type"], d.get("state")) for _, d in events]
    assert kinds[0] == ("status", "PENDING") and kinds[1] == ("status", "RUNNING")
    assert kinds[-1] == ("status", "COMPLETE")
    final = events[-1][1]
    assert final["status"] == "COMPLETED" and final["result"]["collection"] == job_events["name"]
    assert final["job_id"] == job_events["id"]
    progress = [d for _, d in events if d["type"] == "progress"]
    assert progress and progress[-1]["progress"] == {"done": COUNTRIES, "total": COUNTRIES}
    logs = [d["message"] for _, d in events if d["type"] == "log"]
    assert any("loading" in m for m in logs) and any(job_events["name"] in m for m in logs)
    # The job ran in a job worker process (``geoharbor worker``), not in a web worker.
    pid = events[1][1]["worker"].rpartition(":")[2]
    assert b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    status = requests.get(f"{base}/jobs/{job_events['id']}/events", timeout=10)
    assert status.status_code == 200 and "COMPLETED" in status.text  # the SDK's name, replayed


def test_a_job_stream_resumes_after_last_event_id_and_says_when_it_is_over(job_events, base):
    events = job_events["events"]
    url = f"{base}/jobs/{job_events['id']}/stream"
    running_id = events[1][0]
    resumed = Stream(url, {"Last-Event-ID": str(running_id)}).all()
    assert [i for i, _ in resumed] == [i for i, _ in events[2:]]
    by_query = Stream(f"{url}?lastEventId={events[-2][0]}").all()
    assert [i for i, _ in by_query] == [events[-1][0]]
    over = requests.get(url, headers={"Last-Event-ID": str(events[-1][0])}, timeout=10)
    assert over.status_code == 204  # an EventSource stops reconnecting


def test_unknown_jobs_and_bad_event_ids_are_refused_in_the_detail_format(base, job_events):
    missing = requests.get(f"{base}/jobs/{uuid.uuid4()}/stream", timeout=10)
    assert missing.status_code == 404 and "detail" in missing.json()
    bad = requests.get(
        f"{base}/jobs/{job_events['id']}/stream", headers={"Last-Event-ID": "yesterday"}, timeout=10
    )
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["detail"]


# -- evaluations -----------------------------------------------------------------------------------
def test_evaluation_streams_get_events_published_by_another_process(base, pg_bus):
    pg_bus.publish(streams.EVALUATIONS, {"rule": "before", "outcome": "old"})
    rules = Stream(f"{base}/rules/eval-stream")
    triggers = Stream(f"{base}/triggers/eval-stream")
    try:
        assert rules.response.status_code == triggers.response.status_code == 200
        sent = [pg_bus.publish(streams.EVALUATIONS, {"rule": f"r{n}", "outcome": "passed"}) for n in range(2)]
        for stream in (rules, triggers):
            got = [stream.next(), stream.next()]
            assert [e[0] for e in got if e] == sent
            assert [e[1]["rule"] for e in got if e] == ["r0", "r1"]
        # An idle stream sends a heartbeat comment every few seconds.
        assert "keep-alive" not in rules.comments
        late = threading.Timer(
            streams.HEARTBEAT_S + 1.5, lambda: pg_bus.publish(streams.EVALUATIONS, {"rule": "late"})
        )
        late.start()
        assert rules.next()[1] == {"rule": "late"}  # type: ignore[index]
        assert "keep-alive" in rules.comments
    finally:
        rules.close()
        triggers.close()


def test_past_its_bound_a_process_answers_503_and_ordinary_requests_still_pass(base):
    """Two workers: at most twice the bound before both refuse; /health answers meanwhile."""
    opened: list[Stream] = []
    refused = None
    try:
        for _ in range(2 * streams.MAX_STREAMS + 2):
            stream = Stream(f"{base}/rules/eval-stream")
            if stream.response.status_code == 503:
                refused = stream.response
                break
            assert stream.response.status_code == 200
            opened.append(stream)
        assert refused is not None, f"{len(opened)} streams open and no refusal"
        assert "event streams" in refused.json()["detail"]
        assert len(opened) >= streams.MAX_STREAMS
        started = time.monotonic()
        assert requests.get(f"{base}/health", timeout=10).status_code == 200
        assert time.monotonic() - started < 5
    finally:
        for stream in opened:
            stream.close()
    # Slots come back as soon as the server sees the clients left (within a second or so).
    time.sleep(2 * streams.SLICE_S + 1)
    again = [Stream(f"{base}/rules/eval-stream") for _ in range(streams.MAX_STREAMS)]
    codes = [s.response.status_code for s in again]
    for stream in again:
        stream.close()
    assert set(codes) == {200}, codes


# -- embedded mode ---------------------------------------------------------------------------------
def test_embedded_server_streams_sqlite_events_and_sigterm_ends_streams(gpkg_path, tmp_path):
    store = tmp_path / "state.sqlite"
    port = free_port()
    config = {
        "server": {"bind": f"127.0.0.1:{port}", "workers": 2, "log_level": "WARNING"},
        "sources": {"files": {"type": "geopackage", "path": str(gpkg_path)}},
        "collections": {"countries": {"source": "files", "layer": "countries"}},
        "store": {"path": str(store)},
    }
    path = tmp_path / "geoharbor.yml"
    path.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "server.log", "w+b")  # noqa: SIM115 - closed below
    process = subprocess.Popen([GEOHARBOR, "serve", "-c", str(path)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, _text(log)
            try:
                if requests.get(url + "/health", timeout=10).ok:
                    break
            except requests.RequestException:  # not listening yet, or a worker still booting
                pass
            assert time.monotonic() < deadline, _text(log)
            time.sleep(0.2)
        bus = SQLiteBus(str(store))
        stream = Stream(f"{url}/rules/eval-stream")
        assert stream.response.status_code == 200
        sent = bus.publish(streams.EVALUATIONS, {"rule": "embedded", "outcome": "passed"})
        started = time.monotonic()
        assert stream.next() == (sent, {"rule": "embedded", "outcome": "passed"})
        assert time.monotonic() - started < 3  # polled every quarter second

        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert stream.next() is None and stream.ended  # the server ended the stream
        process.wait(20)
        assert time.monotonic() - stopping < 10, "a graceful stop waited for an open stream"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


def _text(log: Any) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]


def test_listening_connections_are_one_per_web_process(base, pg_url):
    """Streams share their process's listener: never one connection per open stream."""
    opened = [Stream(f"{base}/rules/eval-stream") for _ in range(6)]
    try:
        with psycopg.connect(pg_url) as conn:
            listeners = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query ILIKE 'LISTEN %%'"
            ).fetchone()[0]
        assert 1 <= listeners <= 3  # one per web worker (two), and perhaps a test bus closing
    finally:
        for stream in opened:
            stream.close()
