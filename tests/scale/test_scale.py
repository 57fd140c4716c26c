"""Issue 11, proven on real components: two geoharbor hosts behind HAProxy, pgbouncer in
transaction mode, a PostgreSQL primary and its streaming replica, one job worker.

60 s of mixed load through HAProxy (items and tiles of Natural Earth countries, Part 4
creates and ``If-Match`` edits, reads of what was written, a rules job); halfway, one
host is killed with SIGKILL (its whole process group) and started again; then both
hosts are restarted one at a time with SIGTERM, each first taken out of HAProxy through
its admin socket (the load goes on until the restart is over). The replica applies WAL 300 ms late
(``recovery_min_apply_delay``), as a loaded one does, so a read served from it without
regard for the client's last write would be seen stale.

It must show: every write answered 2xx stored exactly once (each carries a unique marker;
a trigger keeps every row version written), none lost or applied twice; every read made
after the client's own write saw it and everything answered before it, whichever host
answered, tiles included; the job finished once; errors only for requests in flight on the
killed host (printed), and none during the rolling restart.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests

from server import jobs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deployment import Deployment  # noqa: E402
from traffic import Client, Ledger, consistency_violations, storage_violations  # noqa: E402

DB = "gh_harness_a"
LOAD_S = float(os.environ.get("GEOHARBOR_SCALE_LOAD_S", "60"))
WRITERS, READERS = 4, 2
APPLY_DELAY_MS = 300
#: How long a client may take to finish its last request once told to stop (seconds).
TIMEOUT_JOIN = 40


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    if os.geteuid() != 0:
        pytest.fail("the scale test makes PostgreSQL clusters with pg_createcluster: run it as root")
    deployed = Deployment(db=DB, apply_delay_ms=APPLY_DELAY_MS).start()
    try:
        yield deployed
    finally:
        deployed.close(keep_files=bool(os.environ.get("GEOHARBOR_SCALE_KEEP")))


class Timeline:
    """When each disruption started and ended (monotonic seconds)."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic()

    def overlaps(self, call, start: str, end: str) -> bool:
        return call.sent <= self.marks[end] and call.ended >= self.marks[start]


def run_job(base: str) -> str:
    """A rules job on the countries (a buffer): its id."""
    session = requests.Session()
    rule = session.post(
        f"{base}/rules",
        json={"name": "scale buffer", "capability": "buffer", "config": {"distance": 1000}},
        timeout=30,
    )
    assert rule.status_code == 201, rule.text
    job = session.post(
        f"{base}/jobs",
        json={
            "name": "scale job",
            "dataset_id": "countries",
            "parameters": {"rule_ids": [rule.json()["id"]]},
        },
        timeout=30,
    )
    assert job.status_code == 201, job.text
    return job.json()["id"]


def wait_job(base: str, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = requests.get(f"{base}/jobs/{job_id}", timeout=30).json()
        if job["status"] in ("COMPLETED", "FAILED", "CANCELLED") or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


def test_hosts_die_and_restart_under_load_and_nothing_is_lost(
    deployment: Deployment, capsys: pytest.CaptureFixture
):
    base = deployment.balancer.url
    ledger = Ledger()
    stop = threading.Event()
    clients = [Client(i, base, ledger, i < WRITERS, stop, seed=11) for i in range(WRITERS + READERS)]
    timeline = Timeline()
    timeline.mark("start")
    for client in clients:
        client.start()
    job_id = run_job(base)

    time.sleep(max(0.0, LOAD_S / 2 - (time.monotonic() - timeline.marks["start"])))
    # Kill while a write waits for its answer (on either host): the case where a client
    # cannot know whether its write was stored.
    deadline = time.monotonic() + 3
    while not any(c.writing for c in clients) and time.monotonic() < deadline:
        time.sleep(0.001)
    killed = deployment.hosts["a"]
    timeline.mark("kill")
    killed.kill()
    timeline.mark("killed")
    killed.start()
    killed.wait_ready()
    deployment.balancer.wait_status("a", "UP")
    timeline.mark("back")

    timeline.mark("rolling")
    for name in ("b", "a"):  # one at a time, each out of HAProxy before its SIGTERM
        deployment.restart_host(name, mark=timeline.mark)
    timeline.mark("rolled")
    time.sleep(max(3.0, LOAD_S - (time.monotonic() - timeline.marks["start"])))
    stop.set()
    for client in clients:
        client.join(TIMEOUT_JOIN)
    timeline.mark("end")
    crashed = [c.crashed for c in clients if c.crashed is not None]
    assert not crashed, crashed

    job = wait_job(base, job_id)
    with psycopg.connect(deployment.primary.url(DB), autocommit=True) as conn:
        history = conn.execute("SELECT fid, marker, version FROM harness_history ORDER BY seq").fetchall()
        # procrastinate deletes the rows of jobs that succeeded: the job's own events tell its runs.
        runs = conn.execute(
            "SELECT body->>'state', count(*) FROM geoharbor.events"
            " WHERE channel = %s AND body->>'type' = 'status' GROUP BY 1 ORDER BY 1",
            (jobs.channel(job_id),),
        ).fetchall()
        result_rows = None
        if job.get("result") and job["result"].get("collection"):
            result_rows = requests.get(
                f"{base}/collections/{job['result']['collection']}/items?limit=1", timeout=30
            ).json()["numberMatched"]
    replica_reads = replica_scans(deployment)

    calls = ledger.calls
    t0 = timeline.marks["start"]
    in_flight = [c for c in calls if c.failed and timeline.overlaps(c, "kill", "killed")]
    during_roll = [c for c in calls if c.failed and timeline.overlaps(c, "rolling", "rolled")]
    other = [c for c in calls if c.failed and c not in in_flight and c not in during_roll]
    stale = consistency_violations(ledger)
    storage = storage_violations(ledger, history)
    acked = [w for w in ledger.writes if w.acked]

    with capsys.disabled():  # the summary is the point of the run: shown even when it passes
        print(f"\n-- scale run: {len(calls)} requests in {timeline.marks['end'] - t0:.0f} s through HAProxy")
        print(f"   by kind: {dict(Counter(c.kind for c in calls))}")
        print(f"   by host: {dict(Counter(c.served_by for c in calls))}")
        print(
            f"   writes: {len(ledger.writes)} sent, {len(acked)} answered 2xx, "
            f"{sum(w.uncertain for w in ledger.writes)} without answer"
        )
        print(f"   reads checked against earlier writes: {len(ledger.observations)}")
        print(f"   table scans on the replica (reads sent to it): {replica_reads}")
        print("   timeline: " + ", ".join(f"{name} +{at - t0:.1f} s" for name, at in timeline.marks.items()))
        print(f"   failed requests in flight on the killed host: {len(in_flight)}")
        for c in in_flight:
            print(f"     {c.method} {c.path} sent +{c.sent - t0:.3f} s -> {c.status}: {c.error}")
        print(f"   failed requests during the rolling restart: {len(during_roll)}; elsewhere: {len(other)}")
        print(f"   job {job_id}: {job['status']}, status events {runs}, result rows {result_rows}")
        print(f"   stale reads: {len(stale)}; storage problems: {len(storage)}")

    assert not during_roll, [(c.method, c.path, c.status, c.error) for c in during_roll]
    assert not other, [(c.method, c.path, c.status, c.error, round(c.sent - t0, 3)) for c in other]
    assert not stale, stale[:20]
    assert not storage, storage[:20]
    assert job["status"] == "COMPLETED", job
    assert dict(runs).get("RUNNING") == 1 and dict(runs).get("COMPLETE") == 1, runs
    assert result_rows == 177
    # Both hosts served, the killed one again after it came back; the load was not trivial.
    after_back = Counter(c.served_by for c in calls if c.sent > timeline.marks["back"])
    assert after_back["a"] > 0 and after_back["b"] > 0, after_back
    assert len(acked) > 100 and len(ledger.observations) > 100
    assert replica_reads > 100, "the replica served no reads: read_url is not used"


def replica_scans(deployment: Deployment) -> int:
    """Scans of the served tables on the replica: reads of requests sent to it (a readiness
    check's ``SELECT 1`` scans no table)."""
    for _ in range(20):  # a new connection to a hot standby can meet a recovery conflict
        try:
            with deployment.replica.connect(DB) as conn:
                return conn.execute(
                    "SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0) FROM pg_stat_user_tables"
                    " WHERE relname IN ('countries', 'harness_points')"
                ).fetchone()[0]
        except psycopg.OperationalError:
            time.sleep(0.5)
    raise RuntimeError("the replica does not answer")
