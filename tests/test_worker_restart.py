"""A gunicorn worker that is replaced (``max_requests``, a crash, an operator's TTOU/TTIN)
takes nothing of the server with it: the other workers and its successor go on counting
into the shared Prometheus directory, and the job workers ``geoharbor serve`` started
go on running jobs.

gunicorn's workers are forks of the ``serve`` process and leave through its frames, so
clean-up written for the master also runs in each worker that exits unless it is kept
to the master: these tests restart one web worker the way gunicorn itself would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Server, drop_database, free_port, fresh_database

DB = os.environ.get("GEOHARBOR_TEST_DB", "geoharbor_test") + "_restart"
KEY = "worker-restart-master-key-0123456789"
AUTH = {"API-Key": KEY}
TIMEOUT = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    url = fresh_database(DB)
    workdir = tmp_path_factory.mktemp("worker-restart")
    config = {
        "server": {"bind": f"127.0.0.1:{free_port()}", "workers": 2, "log_level": "WARNING"},
        "sources": {"pg": {"type": "postgis", "url": url, "pool_max": 2}},
        "store": {"source": "pg"},
        "collections": {},
        "auth": {"api_key": KEY},
        "jobs": {"workers": 1, "heartbeat_s": 0.5},
    }
    srv = Server(config, workdir)
    try:
        yield srv
    finally:
        srv.stop()
        drop_database(DB)


def children(pid: int) -> dict[int, str]:
    """The processes ``pid`` started, with their command lines."""
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            found[int(child)] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


def web_workers(server: Server) -> set[int]:
    return {pid for pid, cmd in children(server.process.pid).items() if " worker " not in f" {cmd} "}


def job_workers(server: Server) -> set[int]:
    return {pid for pid, cmd in children(server.process.pid).items() if " worker " in f" {cmd} "}


def requests_counted(base: str) -> float:
    """``/health`` requests the server's workers have counted, added up by ``/metrics``."""
    text = requests.get(f"{base}/metrics", timeout=TIMEOUT).text
    pattern = r'geoharbor_http_requests_total\{[^}]*route="/health"[^}]*\} ([0-9.e+]+)'
    return sum(float(v) for v in re.findall(pattern, text))


def run_command(base: str, name: str) -> dict[str, Any]:
    """Run a management command through its job and wait for its end."""
    started = requests.post(
        f"{base}/api/v2/management/commands/{name}/", json={}, headers=AUTH, timeout=TIMEOUT
    )
    assert started.status_code == 201, started.text
    job_id = started.json()["data"]["id"]
    deadline = time.monotonic() + TIMEOUT
    while True:
        status = requests.get(
            f"{base}/api/v2/management/jobs/{job_id}/status/", headers=AUTH, timeout=TIMEOUT
        ).json()
        if status["status"] == "FINISHED":
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def restart_one_web_worker(server: Server) -> None:
    """SIGTERM one web worker, as gunicorn does to a worker it replaces; wait for its successor."""
    before = web_workers(server)
    gone = min(before)
    os.kill(gone, signal.SIGTERM)
    deadline = time.monotonic() + TIMEOUT
    while gone in (now := web_workers(server)) or len(now) < len(before):
        assert time.monotonic() < deadline, f"no successor of worker {gone}:\n{server.output()}"
        time.sleep(0.1)
    assert requests.get(f"{server.url}/health", timeout=TIMEOUT).status_code == 200


def test_a_replaced_worker_leaves_the_metrics_of_the_others(server: Server) -> None:
    for _ in range(10):
        requests.get(f"{server.url}/health", timeout=TIMEOUT)
    counted = requests_counted(server.url)
    assert counted >= 10
    restart_one_web_worker(server)
    for _ in range(10):
        requests.get(f"{server.url}/health", timeout=TIMEOUT)
    # What the remaining worker counted is still there, and so is what came after.
    assert requests_counted(server.url) >= counted + 10
    assert "metrics not counted" not in server.output()


def test_a_replaced_worker_leaves_the_job_workers_running(server: Server) -> None:
    assert run_command(server.url, "ping_mngmt_commands_http")["status"] == "FINISHED"
    runners = job_workers(server)
    assert runners, children(server.process.pid)
    restart_one_web_worker(server)
    time.sleep(1)  # a job worker told to stop would be gone by now
    assert job_workers(server) == runners
    assert run_command(server.url, "ping_mngmt_commands_http")["status"] == "FINISHED"
    assert subprocess.run(["kill", "-0", *map(str, runners)], check=False).returncode == 0
