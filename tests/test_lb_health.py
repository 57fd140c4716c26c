"""What a load balancer needs of each host: liveness and readiness probes, and a graceful stop.

``/health/live`` answers while the process runs, whatever its database does;
``/health/ready`` answers 503 with its reasons when this host should get no traffic
(a database unreachable, the process stopping). On SIGTERM a host finishes the
requests in flight, takes no new ones, and ends its event streams with a ``retry:``
hint so clients reconnect to another host.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from conftest import free_port

from server import streams
from server.app import create_app

#: 40 rows of the view that takes 50 ms a row (the id condition is tested first: the cheaper).
SLOW_PAGE = {"filter": "id <= 40", "limit": "40"}
GEOHARBOR = shutil.which("geoharbor", path=str(Path(sys.executable).parent)) or "geoharbor"


def test_ready_is_503_with_its_reasons_when_a_database_is_unreachable(tmp_path) -> None:
    config: dict[str, Any] = {
        "sources": {
            # Nothing listens there.
            "gone": {
                "type": "postgis",
                "url": f"postgresql://127.0.0.1:{free_port()}/nothing",
                "pool_max": 1,
            },
        },
        "store": {"path": str(tmp_path / "state.sqlite")},
    }
    app = create_app(config)
    client = app.test_client()
    try:
        assert client.get("/health/live").status_code == 200
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        body = ready.json
        assert body["status"] == "not ready" and body["checks"]["gone"] == "down"
        assert "source gone: database unreachable" in body["reasons"]
        assert client.get("/collections?f=json").status_code == 200  # the rest is served
    finally:
        app.extensions["geoharbor"].registry.close()


def test_a_stopping_process_is_not_ready(pg_url: str) -> None:
    config: dict[str, Any] = {
        "sources": {"pg": {"type": "postgis", "url": pg_url, "pool_max": 1}},
        "collections": {"countries": {"source": "pg", "table": "countries"}},
        "store": {"source": "pg"},
    }
    app = create_app(config)
    client = app.test_client()
    try:
        assert client.get("/health/ready").status_code == 200
        streams.SHUTDOWN.set()  # what SIGTERM does in a gunicorn worker (server/cli.py)
        stopping = client.get("/health/ready")
        assert stopping.status_code == 503 and stopping.json["reasons"] == ["shutting down"]
        assert client.get("/health/live").status_code == 200
    finally:
        streams.SHUTDOWN.clear()
        app.extensions["geoharbor"].registry.close()


def test_sigterm_finishes_requests_in_flight_and_ends_streams_with_a_retry_hint(pg_url, tmp_path) -> None:
    port = free_port()
    config = {
        "server": {
            "bind": f"127.0.0.1:{port}",
            "workers": 1,
            "log_level": "WARNING",
            "stream_retry_ms": 2500,
        },
        "sources": {"pg": {"type": "postgis", "url": pg_url, "pool_max": 4}},
        # About 50 ms a row (tests/conftest.py): SLOW_PAGE takes two seconds.
        "collections": {
            "slow": {"source": "pg", "table": "slow_countries", "id_column": "id", "count": "none"},
        },
        "store": {"source": "pg"},
        "jobs": {"workers": 0},
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
                if requests.get(f"{url}/health/ready", timeout=10).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, _text(log)
            time.sleep(0.2)
        live = requests.get(f"{url}/health/live", timeout=10)
        assert live.status_code == 200 and live.json() == {"status": "alive"}
        assert live.headers["Cache-Control"] == "no-store"
        ready = requests.get(f"{url}/health/ready", timeout=10).json()
        assert ready["status"] == "ready" and "reasons" not in ready
        # No worker here: the queue's tables exist only if some process made them already
        # (a web host makes them on first use), and either way the host is ready.
        assert ready["checks"]["pg"] == "ok" and ready["checks"]["store"] == "ok"
        assert ready["checks"]["jobs_queue"] in ("ok", "missing")
        stream = requests.get(f"{url}/rules/eval-stream", stream=True, timeout=30)
        assert stream.status_code == 200
        chunks = stream.iter_content(chunk_size=None)
        assert next(chunks).startswith(b"retry: 2500\n")

        answers: list[requests.Response | BaseException] = []

        def slow_request() -> None:
            try:
                answers.append(requests.get(f"{url}/collections/slow/items", params=SLOW_PAGE, timeout=30))
            except requests.RequestException as exc:
                answers.append(exc)

        in_flight = threading.Thread(target=slow_request)
        in_flight.start()
        time.sleep(0.5)  # the request is in its statement
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)

        # The stream ends at once, its last frame telling the client when to reconnect.
        rest = b"".join(chunks)
        assert rest.endswith(b"retry: 2500\n: server stopping, reconnect\n\n"), rest
        assert time.monotonic() - stopping < 3
        # No new request is taken while the one in flight goes on: the connection is refused.
        with pytest.raises(requests.ConnectionError, match="refused"):
            requests.get(f"{url}/health/live", timeout=2)
        assert in_flight.is_alive()
        in_flight.join(30)
        [answer] = answers
        assert isinstance(answer, requests.Response) and answer.status_code == 200, answer
        assert answer.json()["numberReturned"] == 40
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


def _text(log: Any) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]


@pytest.mark.parametrize("prefix", ["/geoharbor", "/maps/geo"])
def test_a_write_behind_a_prefix_links_there_and_its_cookie_covers_the_site(pg_url: str, prefix: str) -> None:
    """Behind a balancer that mounts the service under a prefix (``X-Forwarded-Prefix``)."""
    config: dict[str, Any] = {
        "server": {"trust_proxy_headers": True},
        "sources": {"pg": {"type": "postgis", "url": pg_url, "pool_max": 1, "editable": True}},
        "collections": {"points": {"source": "pg", "table": "country_points"}},
        "store": {"source": "pg"},
    }
    app = create_app(config)
    client = app.test_client()
    forwarded = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "maps.example.org",
        "X-Forwarded-Prefix": prefix,
    }
    try:
        created = client.post(
            "/collections/points/items",
            json={
                "type": "Feature",
                "properties": {"name": "Behind"},
                "geometry": {"type": "Point", "coordinates": [1, 2]},
            },
            headers=forwarded,
        )
        assert created.status_code == 201, created.text
        location = created.headers["Location"]
        assert location.startswith(f"https://maps.example.org{prefix}/collections/points/items/")
        cookie = created.headers["Set-Cookie"]
        assert cookie.startswith("gh_rev=pg:public.country_points:") and "Path=/" in cookie.split("; ")
        page = client.get("/collections/points/items?limit=1", headers=forwarded).json
        assert all(link["href"].startswith(f"https://maps.example.org{prefix}/") for link in page["links"])
        fid = location.rpartition("/")[2]
        assert client.delete(f"/collections/points/items/{fid}", headers=forwarded).status_code == 204
    finally:
        app.extensions["geoharbor"].registry.close()
