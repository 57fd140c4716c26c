"""Scale-out: throughput through HAProxy with one host and with two, and reads on the replica
vs the primary.

    .venv/bin/python bench/scale.py            # about 4 minutes
    .venv/bin/python bench/scale.py --quick    # about 2 minutes

Runs as root: it deploys what tests/scale/deployment.py deploys (a PostgreSQL primary and its
streaming replica in clusters of their own, pgbouncer in transaction mode, geoharbor hosts
of ``--workers`` gunicorn workers, one job worker, HAProxy), on database ``gh_harness_b``
loaded with Natural Earth countries, and removes it all at the end.

* **Throughput**: items (pages and bbox queries of countries) and vector tiles of
  countries (``tiles-warm``: the 85 tiles of zooms 1-3, cached by every worker after the
  warm-up; ``tiles-built``: random tiles of zooms 8-10 over land, drawn afresh for each
  cell, so nearly all are built in PostGIS)
  at ``--concurrency`` client threads through HAProxy, with host ``b`` taken out
  (``disable server``) and then with both. The CPU time of the geoharbor hosts (gunicorn
  masters and workers), of PostgreSQL (every process of both clusters) and of HAProxy plus
  pgbouncer is measured over each cell: on a 2-core machine a second host cannot double
  throughput, and the CPU columns show where the time went.
* **Replica vs primary**: the items reads with ``read_url`` (GET reads on the replica)
  and, after a rolling restart of both hosts without it, all on the primary; p50/p95
  latency at concurrency 1 and ``--concurrency``. The replica's committed transactions
  during each cell show where the reads went.

Prints a Markdown report and writes it to ``bench/results/scale-latest.md`` (numbers in
``scale-latest.json``). The load generator, cells and percentiles are bench/run.py's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mercantile
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "scale"))
import run as bench  # noqa: E402  (bench/run.py: cells, load generator, percentiles)
from deployment import Deployment, executable  # noqa: E402  (tests/scale/deployment.py)

DB = "gh_harness_b"
RESULTS = bench.RESULTS
log = bench.log


# -- what is requested ----------------------------------------------------------------------------------
def items_paths(rng: random.Random, n: int = 500) -> list[str]:
    """Pages of countries at random offsets and bbox queries at random places, half each."""
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append(f"/collections/countries/items?limit=10&offset={rng.randrange(0, 170)}")
        else:
            lon, lat = rng.uniform(-170, 150), rng.uniform(-60, 60)
            bbox = f"{lon:.3f},{lat:.3f},{lon + 20:.3f},{lat + 15:.3f}"
            out.append(f"/collections/countries/items?bbox={bbox}&limit=50")
    return out


def tile_path(t: mercantile.Tile) -> str:
    return f"/collections/countries/tiles/WebMercatorQuad/{t.z}/{t.y}/{t.x}"


def warm_tiles() -> list[str]:
    return [tile_path(t) for z in (1, 2, 3) for t in mercantile.tiles(-180, -85, 180, 85, z)]


def built_tiles(rng: random.Random, n: int = 6000) -> list[str]:
    """Tiles of zooms 8-10 under random points of Europe, Africa and Asia, drawn afresh for each
    cell: nearly all distinct, so nearly every request builds its tile in PostGIS."""
    out = []
    for _ in range(n):
        z = rng.choice((8, 9, 10))
        out.append(tile_path(mercantile.tile(rng.uniform(-10, 120), rng.uniform(-30, 60), z)))
    return out


def http_target(port: int):
    """bench/run.py's target contract: (make a client, do one request -> (bytes, features, error))."""

    def make() -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(conn: http.client.HTTPConnection, path: str) -> tuple[int, int, str | None]:
        try:
            conn.request("GET", path, headers={"Accept-Encoding": "identity"})
            resp = conn.getresponse()
            body = resp.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            raise
        if resp.status not in (200, 204):
            return 0, 0, f"GET {path} -> HTTP {resp.status}: {body[:200]!r}"
        return len(body), body.count(bench.FEATURE_MARK), None

    return make, request


# -- CPU ------------------------------------------------------------------------------------------------
def cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


class Meter:
    """CPU of the hosts and of PostgreSQL, as bench/run.py's cells take it (``snapshot``),
    plus HAProxy and pgbouncer (``proxies``)."""

    server = "hosts"  # run_cell reports app CPU when this is set

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment

    def snapshot(self) -> tuple[dict[int, float], dict[int, float]]:
        return cpu_seconds(self.deployment.server_pids()), cpu_seconds(self.deployment.postgres_pids())

    def proxies(self) -> dict[int, float]:
        d = self.deployment
        return cpu_seconds([d.balancer.process.pid, d.pooler.process.pid])


def busy_seconds() -> float:
    """CPU seconds this machine spent on anything (every process, this one included)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def replica_transactions(deployment: Deployment) -> int:
    with deployment.replica.connect(DB) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (DB,)
        ).fetchone()
    return int(row[0])


def measure(
    deployment: Deployment,
    meter: Meter,
    args: argparse.Namespace,
    scenario: str,
    target: str,
    paths: list[str],
    concurrency: int,
) -> dict[str, Any]:
    """One cell through HAProxy, with the CPU each part used and the replica's transactions."""
    make, request = http_target(deployment.balancer.port)
    cell = bench.Cell(scenario, target, concurrency)
    proxies0, replica0, machine0 = meter.proxies(), replica_transactions(deployment), busy_seconds()
    started = time.monotonic()
    bench.run_cell(cell, make, paths, request, args.duration, args.warmup, None, meter)
    window = time.monotonic() - started  # these counters span the warm-up too
    proxies1, replica1, machine1 = meter.proxies(), replica_transactions(deployment), busy_seconds()
    row = asdict(cell)
    row["hosts_cores"] = (cell.app_cpu_ms or 0) * cell.rps / 1000
    row["postgres_cores"] = (cell.db_cpu_ms or 0) * cell.rps / 1000
    row["proxies_cores"] = bench.CpuMeter.delta(proxies0, proxies1) / window
    row["replica_tps"] = (replica1 - replica0) / window
    row["machine_cores"] = (machine1 - machine0) / window
    # What the machine spent beyond this deployment and its client: other work on a shared machine.
    row["other_cores"] = row["machine_cores"] - (
        row["hosts_cores"] + row["postgres_cores"] + row["proxies_cores"] + cell.client_cpu_pct / 100
    )
    log(
        f"{scenario} {target} c={concurrency}: {cell.rps:.1f} req/s, p50 {cell.p50_ms:.1f} ms, "
        f"p95 {cell.p95_ms:.1f} ms, errors {cell.errors}"
        + (f" ({cell.first_error})" if cell.first_error else "")
    )
    return row


# -- the report -----------------------------------------------------------------------------------------
def fmt(v: float | None, digits: int = 1) -> str:
    return bench.fmt(v, digits)


def report(rows: list[dict[str, Any]], meta: dict[str, Any], args: argparse.Namespace) -> str:
    by = {(r["scenario"], r["target"], r["concurrency"]): r for r in rows}
    lines = [
        f"# geoharbor scale-out benchmark — {meta['when']}",
        "",
        f"Natural Earth countries (177 polygons) on a PostgreSQL {meta['pg']} primary with a streaming "
        f"replica, pgbouncer {meta['pgbouncer']} (transaction mode), HAProxy {meta['haproxy']}; each host "
        f"`geoharbor serve` with {args.workers} gunicorn workers x {args.threads} threads; "
        f"{args.duration:g} s per cell after {args.warmup:g} s warm-up; seed {args.seed}. "
        f"Machine: {meta['cpus']} CPUs, {meta['machine']}; geoharbor {meta['geoharbor']}. "
        "Client, HAProxy, pgbouncer, both hosts and both clusters all share these CPUs.",
        "",
        "## Throughput through HAProxy: 1 host vs 2",
        "",
        "| scenario | conc | 1 host req/s | p50 ms | p95 ms | hosts CPU (cores) | PostgreSQL CPU | "
        "2 hosts req/s | p50 ms | p95 ms | hosts CPU (cores) | PostgreSQL CPU | 2 / 1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in ("items", "tiles-warm", "tiles-built"):
        one, two = (
            by.get((scenario, "1 host", args.concurrency)),
            by.get((scenario, "2 hosts", args.concurrency)),
        )
        if not one or not two:
            continue
        gain = f"{two['rps'] / one['rps']:.2f}x" if one["rps"] else "-"
        cells = [
            fmt(one["rps"]),
            fmt(one["p50_ms"]),
            fmt(one["p95_ms"]),
            fmt(one["hosts_cores"], 2),
            fmt(one["postgres_cores"], 2),
            fmt(two["rps"]),
            fmt(two["p50_ms"]),
            fmt(two["p95_ms"]),
            fmt(two["hosts_cores"], 2),
            fmt(two["postgres_cores"], 2),
            gain,
        ]
        lines.append(f"| {scenario} | {args.concurrency} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Items reads: replica vs primary (2 hosts)",
        "",
        "| reads on | conc | req/s | p50 ms | p95 ms | p99 ms | replica transactions/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for target in ("replica", "primary"):
        for conc in sorted({1, args.concurrency}):
            r = by.get(("items-latency", target, conc))
            if r:
                lines.append(
                    f"| {target} | {conc} | {fmt(r['rps'])} | {fmt(r['p50_ms'])} | {fmt(r['p95_ms'])} | "
                    f"{fmt(r['p99_ms'])} | {fmt(r['replica_tps'])} |"
                )
    lines += [
        "",
        "## All cells",
        "",
        "| scenario | target | conc | requests | errors | req/s | p50 ms | p95 ms | hosts CPU ms/req | "
        "PostgreSQL CPU ms/req | HAProxy+pgbouncer cores | client CPU % | machine busy (cores) | "
        "other processes (cores) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['target']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
            f"{fmt(r['rps'])} | {fmt(r['p50_ms'])} | {fmt(r['p95_ms'])} | {fmt(r['app_cpu_ms'], 2)} | "
            f"{fmt(r['db_cpu_ms'], 2)} | {fmt(r['proxies_cores'], 2)} | {fmt(r['client_cpu_pct'], 0)} | "
            f"{fmt(r['machine_cores'], 2)} | {fmt(r['other_cores'], 2)} |"
        )
    lines += [
        "",
        "## Notes",
        "",
        "- 1 host = host `b` taken out of HAProxy with `disable server` (it idles; its CPU is counted but "
        "is nil); 2 hosts = both in, round robin.",
        "- CPU (cores) = CPU seconds per second of the measured window: hosts = gunicorn masters and "
        "workers of both hosts; PostgreSQL = every process of the primary and the replica clusters. "
        "The load generator's own CPU is the 'client CPU %' column (100 % = one core); 'machine busy' "
        f"is every process of the machine, out of {meta['cpus']} cores; 'other processes' is what is left "
        "once the deployment and the client are counted: other work on a shared machine, which the "
        "cells compete with.",
        "- On this machine everything competes for the same CPUs, so a second host adds processes, "
        "not cores: the gain of 2 hosts over 1 is bounded by the CPUs left after PostgreSQL, the proxies "
        "and the client. On separate machines each host brings its own cores.",
        "- The replica runs on the same machine and replays at once (no apply delay): the replica/primary "
        "difference is the cost of choosing a server (the revision check on the replica), not network "
        "distance.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell (default 10)")
    p.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured seconds before each cell (default 2)"
    )
    p.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers per host (default 2)")
    p.add_argument("--threads", type=int, default=2, help="threads per worker (default 2)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--quick", action="store_true", help="3 s cells, 1 s warm-up")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 3.0, 1.0
    if os.geteuid() != 0:
        raise SystemExit("bench/scale.py makes PostgreSQL clusters with pg_createcluster: run it as root")
    rng = random.Random(args.seed)
    items, warm = items_paths(rng), warm_tiles()
    started = time.monotonic()
    log("deploying: primary + replica, pgbouncer, 2 hosts, a job worker, HAProxy")
    deployment = Deployment(db=DB, workers=args.workers, threads=args.threads).start()
    rows: list[dict[str, Any]] = []
    try:
        meter = Meter(deployment)
        balancer = deployment.balancer
        for hosts in ("1 host", "2 hosts"):
            if hosts == "1 host":
                balancer.drain("b")
            else:
                balancer.restore("b")
            for scenario, paths in (
                ("items", items),
                ("tiles-warm", warm),
                ("tiles-built", built_tiles(rng)),
            ):
                rows.append(measure(deployment, meter, args, scenario, hosts, paths, args.concurrency))
        for target in ("replica", "primary"):
            if target == "primary":
                log("rolling restart of both hosts without read_url: every read on the primary")
                path = deployment.write_config("primary-only", deployment.host_config(replica_reads=False))
                for name in ("a", "b"):
                    deployment.restart_host(name, path)
            for conc in sorted({1, args.concurrency}):
                rows.append(measure(deployment, meter, args, "items-latency", target, items, conc))
        meta = {
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(),
            "machine": f"{platform.machine()}, {psutil.virtual_memory().total / 2**30:.0f} GiB",
            "geoharbor": bench._git_describe(),
            "pg": server_version(deployment),
            "pgbouncer": tool_version(["pgbouncer", "--version"]),
            "haproxy": tool_version(["haproxy", "-v"]),
            "seconds": round(time.monotonic() - started),
        }
    finally:
        deployment.close()
    text = report(rows, meta, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale-latest.md").write_text(text)
    (RESULTS / "scale-latest.json").write_text(
        json.dumps({"meta": meta, "args": vars(args), "cells": rows}, indent=2) + "\n"
    )
    print(text)
    log(f"wrote {RESULTS / 'scale-latest.md'} in {meta['seconds']} s")
    return 0


def server_version(deployment: Deployment) -> str:
    with deployment.primary.connect() as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]


def tool_version(command: list[str]) -> str:
    out = subprocess.run([executable(command[0]), *command[1:]], capture_output=True, text=True).stdout
    words = out.split()
    return next((w for w in words if w[:1].isdigit()), "?")


if __name__ == "__main__":
    sys.exit(main())
