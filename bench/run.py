# ruff: noqa: E501, S608 - report text lines; the SQL here is fixed text, never request input
"""geoharbor vs pygeoapi's built-in PostgreSQL provider vs the raw SQL, in one run.

    .venv/bin/python bench/generate.py          # once: 1M parcels + 2M addresses
    .venv/bin/python bench/run.py               # full run (~10 s per cell)
    .venv/bin/python bench/run.py --quick       # smoke run on 20,000 parcels, ~1 minute

Starts on loopback ports, with the same number of gunicorn worker processes:

* geoharbor: ``geoharbor serve -c <generated config> --workers W``; two collections on
  the same table: ``parcels`` (``count: auto``) and ``parcels_exact`` (``count: exact``);
* pygeoapi 0.24 with its own ``PostgreSQL`` provider (SQLAlchemy + GeoAlchemy2 +
  psycopg2) under gunicorn, serving ``pygeoapi.flask_app:APP``;

and, as the floor, the SQL that geoharbor sends for each request, run directly with
psycopg from threads holding one connection each. Then for every scenario and
concurrency it measures the three back to back (same seeded request list for
everyone), and finally each server's peak worker RSS while it serves one
``limit=100000`` page. Prints a Markdown report and writes it to
``bench/results/latest.md`` (plus the raw numbers in ``latest.json``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
import generate  # noqa: E402  (bench/generate.py)

HOST = "127.0.0.1"
SCENARIOS = [
    "page100",
    "page100-exact",
    "page100-shallow",
    "page100-shallow-exact",
    "page1000",
    "bbox",
    "item",
]
FEATURE_MARK = b'"Feature"'  # once per feature in both servers' GeoJSON, never in "FeatureCollection"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def venv_bin(name: str) -> str:
    for base in (ROOT / ".venv" / "bin", Path(sys.prefix) / "bin"):
        if (base / name).exists():
            return str(base / name)
    found = shutil.which(name)
    if not found:
        raise SystemExit(
            f"cannot find {name!r}: install the project with .venv/bin/pip install -e '.[bench]'"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------
# the data set
# ---------------------------------------------------------------------------------------
@dataclass
class Dataset:
    dsn: str
    dbname: str
    rows: int
    max_id: int
    extent: tuple[float, float, float, float]
    pg_version: str
    postgis_version: str
    size: str


def inspect_dataset(dsn: str, dbname: str) -> Dataset:
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('public.parcels')").fetchone()[0] is None:
            raise SystemExit(f"{dbname} has no table parcels: run .venv/bin/python bench/generate.py first")
        rows, max_id = conn.execute("SELECT count(*), max(id) FROM parcels").fetchone()
        ext = conn.execute(
            "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT ST_Extent(geom) e FROM parcels) s"
        ).fetchone()
        pgv = conn.execute("SHOW server_version").fetchone()[0]
        gisv = conn.execute("SELECT postgis_lib_version()").fetchone()[0]
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('parcels'))").fetchone()[0]
    return Dataset(dsn, dbname, rows, max_id, tuple(float(v) for v in ext), pgv, gisv, size)


# ---------------------------------------------------------------------------------------
# the servers
# ---------------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    logfile: Path
    items: str  # items path of the main collection
    failed: str | None = None

    def workers(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def write_geoharbor_config(path: Path, port: int, workers: int, dsn: str) -> None:
    config = {
        "server": {
            "bind": f"{HOST}:{port}",
            "workers": workers,
            "log_level": "WARNING",
            "limit_max": 100_000,
            "timeout": 600,
        },
        "sources": {"bench": {"type": "postgis", "url": dsn, "pool_max": 4}},
        "collections": {
            "parcels": {"source": "bench", "table": "public.parcels", "count": "auto"},
            "parcels_exact": {"source": "bench", "table": "public.parcels", "count": "exact"},
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def write_pygeoapi_config(path: Path, port: int, ds: Dataset, pg_host: str, pg_user: str) -> None:
    config = {
        "server": {
            "bind": {"host": HOST, "port": port},
            "url": f"http://{HOST}:{port}",
            "mimetype": "application/json; charset=UTF-8",
            "encoding": "utf-8",
            "gzip": False,
            "languages": ["en-US"],
            "cors": False,
            "pretty_print": False,
            "limits": {"default_items": 10, "max_items": 100_000, "on_exceed": "throttle"},
            "map": {"url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png", "attribution": "OpenStreetMap"},
        },
        "logging": {"level": "ERROR"},
        "metadata": {
            "identification": {
                "title": "geoharbor benchmark peer",
                "description": "pygeoapi with its built-in PostgreSQL provider",
                "keywords": ["benchmark"],
                "keywords_type": "theme",
                "terms_of_service": "https://creativecommons.org/licenses/by/4.0/",
                "url": "https://example.org",
            },
            "license": {"name": "CC-BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
            "provider": {"name": "bench", "url": "https://example.org"},
            "contact": {"name": "bench", "email": "bench@example.org", "role": "pointOfContact"},
        },
        "resources": {
            "parcels": {
                "type": "collection",
                "title": "Parcels",
                "description": "synthetic parcels (bench/generate.py)",
                "keywords": ["parcels"],
                "extents": {
                    "spatial": {
                        "bbox": list(ds.extent),
                        "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
                    }
                },
                "providers": [
                    {
                        "type": "feature",
                        "name": "PostgreSQL",
                        "data": {"host": pg_host, "dbname": ds.dbname, "user": pg_user},
                        "id_field": "id",
                        "table": "parcels",
                        "geom_field": "geom",
                    }
                ],
            }
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def start_server(
    name: str, cmd: list[str], env: dict[str, str], logfile: Path, port: int, items: str
) -> Server:
    log(f"starting {name}: {' '.join(cmd)}")
    out = logfile.open("wb")
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    return Server(name, port, proc, logfile, items)


def stop_server(server: Server) -> None:
    if server.proc.poll() is not None:
        return
    try:
        os.killpg(server.proc.pid, signal.SIGTERM)  # our own child's process group
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def http_get(port: int, path: str, timeout: float = 600) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept-Encoding": "identity"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            server.failed = f"exited with code {server.proc.returncode}; log tail:\n{server.log_tail()}"
            return
        try:
            status, _, body = http_get(server.port, f"{server.items}?limit=1&f=json", timeout=30)
            if status == 200:
                log(f"{server.name} is up on port {server.port}")
                return
            last = f"HTTP {status}: {body[:300]!r}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.5)
    server.failed = f"not ready after {timeout:.0f} s (last answer: {last}); log tail:\n{server.log_tail()}"


# ---------------------------------------------------------------------------------------
# the raw-SQL floor: geoharbor's own statements, captured from its provider
# ---------------------------------------------------------------------------------------
@dataclass
class Statement:
    sql: str
    params: Any  # dict of named params or tuple


class FloorSQL:
    """geoharbor's SQL per request kind.

    First choice: capture the statements that geoharbor's own PostGISProvider executes
    (psycopg's Cursor.execute is wrapped while one request of each kind is run through
    the provider built from the same generated config), then replay them with new
    parameter values. If geoharbor's provider cannot be imported or built, a hand-copied
    version of providers/postgis.py's SQL is used instead, and the report says so.
    """

    # distinctive inputs used for the capture; parameters equal to them are substituted
    MARK_OFFSET = 77_777
    MARK_BBOX = (1.2345671, 45.2345672, 1.3456783, 45.3456784)
    MARK_ID = 424_242

    def __init__(self, config_path: Path, dsn: str, max_id: int):
        self.MARK_ID = min(self.MARK_ID, max_id)
        self.dsn = dsn
        self.source = ""
        self.plans: dict[tuple[str, str, int], list[Statement]] = {}
        self._config_path = config_path
        self._max_id = max_id
        self._provider: dict[str, Any] = {}
        try:
            self._load_geoharbor()
            self.source = "captured from geoharbor's PostGISProvider (providers/postgis.py) at run time"
        except Exception as exc:  # noqa: BLE001 - fall back to the copied SQL
            self.source = (
                f"hand-copied from providers/postgis.py (capture failed: {type(exc).__name__}: {exc})"
            )
            log(f"floor: {self.source}")

    def _load_geoharbor(self) -> None:
        sys.path.insert(0, str(ROOT))
        from server.config import load
        from server.registry import Registry

        registry = Registry(load(self._config_path))
        for cid in ("parcels", "parcels_exact"):
            self._provider[cid] = registry.collections[cid].provider

    def plan(self, kind: str, collection: str, limit: int) -> list[Statement]:
        key = (kind, collection, limit)
        if key not in self.plans:
            self.plans[key] = (
                self._capture(kind, collection, limit)
                if self._provider
                else self._copied(kind, collection, limit)
            )
        return self.plans[key]

    # -- capture -------------------------------------------------------------------------
    def _capture(self, kind: str, collection: str, limit: int) -> list[Statement]:
        from providers.base import Query
        from providers.crs import CRS84

        provider = self._provider[collection]
        captured: list[Statement] = []
        original = psycopg.Cursor.execute

        def spy(cur, query, params=None, *args, **kwargs):
            text = query if isinstance(query, str) else query.as_string(cur.connection)
            if text.strip() and not text.lstrip().upper().startswith(("SET ", "SELECT 1")):
                captured.append(Statement(text, params))
            return original(cur, query, params, *args, **kwargs)

        def once() -> None:
            if kind == "item":
                provider.get(str(self.MARK_ID), CRS84, None, False)
            else:
                # the items route asks one feature more than the page to know if a next page exists
                query = Query(limit=limit + 1, offset=self.MARK_OFFSET if kind == "page" else 0)
                if kind == "bbox":
                    query.bbox = self.MARK_BBOX
                page = provider.query(query)
                for _ in page.features:
                    pass

        once()  # opens the pool, prepares the schema
        psycopg.Cursor.execute = spy
        try:
            once()
        finally:
            psycopg.Cursor.execute = original
        if not captured:
            raise RuntimeError(f"nothing captured for {kind}")
        return captured

    # -- hand-copied fallback ------------------------------------------------------------------
    FEATURE = (
        '\'{"type":"Feature","id":\' || to_json("id")::text || \',"geometry":\' || '
        "COALESCE(ST_AsGeoJSON(\"geom\", 7, 0), 'null') || ',\"properties\":' || "
        "(json_build_object('name', \"name\", 'category', \"category\", 'value', \"value\", "
        "'area', \"area\", 'updated', \"updated\"))::text || '}'"
    )

    def _copied(self, kind: str, collection: str, limit: int) -> list[Statement]:
        table = '"public"."parcels"'
        if kind == "item":
            return [
                Statement(
                    f'SELECT t."id", md5(t::text), {self.FEATURE} FROM {table} AS t WHERE t."id" = %s',
                    (self.MARK_ID,),
                )
            ]
        where, wparams = "", {}
        if kind == "bbox":
            where = ' WHERE (ST_Intersects("geom", ST_MakeEnvelope(%(p0)s, %(p1)s, %(p2)s, %(p3)s, 4326)))'
            wparams = dict(zip(("p0", "p1", "p2", "p3"), self.MARK_BBOX, strict=True))
        out = []
        exact = collection == "parcels_exact"
        if not exact:
            out.append(Statement(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {table} AS t{where}", dict(wparams)))
        if exact or kind == "bbox" or self._max_id < 100_000:
            out.append(Statement(f"SELECT count(*) FROM {table} AS t{where}", dict(wparams)))
        out.append(
            Statement(
                f'SELECT {self.FEATURE} FROM {table} AS t{where} ORDER BY "id" LIMIT %(_limit)s OFFSET %(_offset)s',
                {**wparams, "_limit": limit + 1, "_offset": self.MARK_OFFSET if kind == "page" else 0},
            )
        )
        return out

    # -- replay ---------------------------------------------------------------------------------
    def substitute(self, stmt: Statement, kind: str, item: Any) -> Any:
        params = stmt.params
        if kind == "item":
            if isinstance(params, (list, tuple)):
                return tuple(item if v == self.MARK_ID else v for v in params)
            return {k: (item if v == self.MARK_ID else v) for k, v in params.items()}
        if not isinstance(params, dict):
            return params
        out = dict(params)
        for k, v in params.items():
            if kind == "page" and v == self.MARK_OFFSET:
                out[k] = item
            elif kind == "bbox" and v in self.MARK_BBOX:
                out[k] = item[self.MARK_BBOX.index(v)]
        return out

    def close(self) -> None:
        for provider in self._provider.values():
            try:
                provider.db.close()
            except Exception:  # noqa: BLE001
                pass


# ---------------------------------------------------------------------------------------
# the load generator
# ---------------------------------------------------------------------------------------
@dataclass
class Cell:
    scenario: str
    target: str  # geoharbor | geoharbor-exact | pygeoapi | raw | raw-exact
    concurrency: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    fps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    mean_bytes: float = 0.0
    mean_features: float = 0.0
    client_cpu_pct: float = 0.0
    app_cpu_ms: float | None = None  # server worker CPU per request
    db_cpu_ms: float | None = None  # PostgreSQL backend CPU per request
    first_error: str | None = None
    skipped: str | None = None


def pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[idx]


class CpuMeter:
    """CPU seconds of a server's workers and of the benchmark database's backends."""

    def __init__(self, dbname: str, server: Server | None):
        self.dbname = dbname
        self.server = server

    def _backends(self) -> dict[int, float]:
        out = {}
        for p in psutil.process_iter(["name", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                if p.info["name"] == "postgres" and f" {self.dbname} " in cmd:
                    t = p.cpu_times()
                    out[p.pid] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def _workers(self) -> dict[int, float]:
        out = {}
        if self.server is None:
            return out
        for p in self.server.workers():
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return out

    def snapshot(self) -> tuple[dict[int, float], dict[int, float]]:
        return self._workers(), self._backends()

    @staticmethod
    def delta(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def run_cell(
    cell: Cell,
    make_client: Callable[[], Any],
    items: list[Any],
    do_request: Callable[[Any, Any], tuple[int, int, str | None]],
    duration: float,
    warmup: float,
    max_requests: int | None,
    meter: CpuMeter,
) -> Cell:
    """Run ``concurrency`` threads over ``items`` for warmup + duration (or max_requests)."""
    conc = cell.concurrency
    stop = threading.Event()
    measuring = threading.Event()
    lock = threading.Lock()
    samples: list[tuple[float, float, int, int]] = []  # (end, latency, bytes, features)
    errors: list[str] = []
    ticket = [0]
    ready = threading.Barrier(conc + 1)

    def worker(index: int) -> None:
        client = None
        try:
            client = make_client()
        except Exception as exc:  # noqa: BLE001
            with lock:
                errors.append(f"client setup: {exc!r}")
        ready.wait()
        if client is None:
            return
        i = (len(items) * index) // conc
        local: list[tuple[float, float, int, int]] = []
        while not stop.is_set():
            if max_requests is not None and measuring.is_set():
                with lock:
                    if ticket[0] >= max_requests:
                        break
                    ticket[0] += 1
            item = items[i % len(items)]
            i += 1
            t0 = time.perf_counter()
            try:
                nbytes, nfeat, err = do_request(client, item)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, the loop goes on
                nbytes, nfeat, err = 0, 0, f"{item!r}: {type(exc).__name__}: {exc}"
            t1 = time.perf_counter()
            if err is not None:
                with lock:
                    if measuring.is_set():
                        errors.append(err)
                    cell.first_error = cell.first_error or err
                continue
            if measuring.is_set():
                local.append((t1, t1 - t0, nbytes, nfeat))
        with lock:
            samples.extend(local)
        close = getattr(client, "close", None)
        if close:
            try:
                close()
            except Exception:  # noqa: BLE001
                pass

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(conc)]
    for t in threads:
        t.start()
    ready.wait()
    time.sleep(warmup)
    before = meter.snapshot()
    cpu0 = time.process_time()
    m_start = time.perf_counter()
    measuring.set()
    if max_requests is None:
        time.sleep(duration)
        m_end = time.perf_counter()
        cpu1 = time.process_time()
        after = meter.snapshot()
        stop.set()
        for t in threads:
            t.join()
        done = [s for s in samples if m_start <= s[0] <= m_end]
    else:
        for t in threads:
            t.join()
        m_end = time.perf_counter()
        cpu1 = time.process_time()
        after = meter.snapshot()
        done = samples
    window = max(m_end - m_start, 1e-9)
    lat = sorted(s[1] * 1000 for s in done)
    n = len(done)
    cell.requests = n
    cell.errors = len(errors)
    cell.seconds = window
    cell.rps = n / window
    cell.fps = sum(s[3] for s in done) / window
    cell.p50_ms, cell.p95_ms, cell.p99_ms = pct(lat, 0.50), pct(lat, 0.95), pct(lat, 0.99)
    cell.mean_bytes = statistics.fmean(s[2] for s in done) if done else 0.0
    cell.mean_features = statistics.fmean(s[3] for s in done) if done else 0.0
    cell.client_cpu_pct = 100 * (cpu1 - cpu0) / window
    if n:
        app = CpuMeter.delta(before[0], after[0])
        cell.app_cpu_ms = 1000 * app / n if meter.server is not None else None
        cell.db_cpu_ms = 1000 * CpuMeter.delta(before[1], after[1]) / n
    if errors and not cell.first_error:
        cell.first_error = errors[0]
    return cell


def http_target(port: int) -> tuple[Callable[[], Any], Callable[[Any, str], tuple[int, int, str | None]]]:
    def make() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, port, timeout=600)

    def request(conn: http.client.HTTPConnection, path: str) -> tuple[int, int, str | None]:
        try:
            conn.request("GET", path, headers={"Accept-Encoding": "identity"})
            resp = conn.getresponse()
            body = resp.read()
        except (http.client.HTTPException, OSError):
            conn.close()  # the next request reconnects
            raise
        if resp.status != 200:
            return 0, 0, f"GET {path} -> HTTP {resp.status}: {body[:300]!r}"
        return len(body), body.count(FEATURE_MARK), None

    return make, request


def raw_target(floor: FloorSQL, plan: list[Statement], kind: str):
    def make() -> psycopg.Connection:
        # psycopg's defaults, as geoharbor's pool: prepare_threshold=5
        return psycopg.connect(floor.dsn, autocommit=False)

    def request(conn: psycopg.Connection, item: Any) -> tuple[int, int, str | None]:
        nbytes = nfeat = 0
        try:
            # several statements (count + page) go in one pipeline, as geoharbor sends them
            cursors = [conn.cursor() for _ in plan]
            if len(plan) > 1:
                with conn.pipeline():
                    for cur, stmt in zip(cursors, plan, strict=True):
                        cur.execute(stmt.sql, floor.substitute(stmt, kind, item))
            else:
                cursors[0].execute(plan[0].sql, floor.substitute(plan[0], kind, item))
            for cur, stmt in zip(cursors, plan, strict=True):
                rows = cur.fetchall()
                if '"type":"Feature"' not in stmt.sql:
                    continue  # a count or an estimate
                column = 2 if kind == "item" else 0
                bodies = [r[column].encode() for r in rows]
                nfeat += len(bodies)
                nbytes += sum(len(b) for b in bodies)
        finally:
            conn.rollback()  # end the implicit transaction, as the pool does on return
        if kind == "item" and nfeat != 1:
            return 0, 0, f"raw: id {item} not found"
        return nbytes, nfeat, None

    return make, request


# ---------------------------------------------------------------------------------------
# peak RSS while serving one huge page
# ---------------------------------------------------------------------------------------
def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure_rss(server: Server, path: str) -> dict[str, Any]:
    workers = server.workers()
    pids = [p.pid for p in workers]
    reset = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM (we are root)
        except OSError:
            reset = False
    base = sum(_status_kb(pid, "VmRSS") for pid in pids)
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            total = sum(_status_kb(pid, "VmRSS") for pid in pids)
            peak[0] = max(peak[0], total)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, server.port, timeout=900)
    nbytes = nfeat = 0
    status = 0
    first_byte = None
    err = b""
    try:
        conn.request("GET", path, headers={"Accept-Encoding": "identity"})
        resp = conn.getresponse()
        status = resp.status
        carry = b""
        while True:
            chunk = resp.read(1 << 16)
            if not chunk:
                break
            if first_byte is None:
                first_byte = time.perf_counter() - t0
            nbytes += len(chunk)
            # a mark split over two chunks is found in carry + chunk; carry is too short
            # to hold a whole mark, so none is counted twice
            buf = carry + chunk
            nfeat += buf.count(FEATURE_MARK)
            carry = buf[-(len(FEATURE_MARK) - 1) :]
            if status != 200 and len(err) < 2000:
                err += chunk
    except (OSError, http.client.HTTPException) as exc:
        err += repr(exc).encode()
        status = status or -1
    finally:
        conn.close()
    elapsed = time.perf_counter() - t0
    time.sleep(0.2)
    done.set()
    sampler.join()
    hwm = sum(_status_kb(pid, "VmHWM") for pid in pids) if reset else None
    return {
        "url": path,
        "status": status,
        "seconds": elapsed,
        "first_byte_s": first_byte,
        "bytes": nbytes,
        "features": nfeat,
        "workers": len(pids),
        "baseline_kb": base,
        "peak_sampled_kb": peak[0],
        "peak_hwm_kb": hwm,
        "error": err[:300].decode(errors="replace") if status != 200 else None,
    }


# ---------------------------------------------------------------------------------------
# scenarios
# ---------------------------------------------------------------------------------------
@dataclass
class Scenario:
    key: str
    title: str
    kind: str  # page | bbox | item
    limit: int
    items: list[Any] = field(default_factory=list)
    gh_collection: str = "parcels"
    targets: tuple[str, ...] = ("geoharbor", "pygeoapi", "raw")

    def path(self, server: str, collection: str, item: Any) -> str:
        base = f"/collections/{collection}/items"
        if self.kind == "item":
            return f"{base}/{item}?f=json"
        if self.kind == "page":
            return f"{base}?f=json&limit={self.limit}&offset={item}"
        minx, miny, maxx, maxy = item
        return f"{base}?f=json&limit={self.limit}&bbox={minx:.6f},{miny:.6f},{maxx:.6f},{maxy:.6f}"


def make_scenarios(ds: Dataset, seed: int, n_items: int, selected: set[str]) -> list[Scenario]:
    rng = random.Random(seed)
    minx, miny, maxx, maxy = ds.extent
    offsets100 = [rng.randrange(0, max(1, ds.rows - 100)) for _ in range(n_items)]
    offsets1000 = [rng.randrange(0, max(1, ds.rows - 1000)) for _ in range(n_items)]
    boxes = []
    for _ in range(n_items):
        cy = rng.uniform(miny, maxy)
        dx = 10.0 / (111.32 * math.cos(math.radians(cy)))  # 10 km
        dy = 10.0 / 110.57
        cx = rng.uniform(minx + dx / 2, maxx - dx / 2)
        cy = min(max(cy, miny + dy / 2), maxy - dy / 2)
        boxes.append((cx - dx / 2, cy - dy / 2, cx + dx / 2, cy + dy / 2))
    ids = [rng.randint(1, ds.max_id) for _ in range(n_items)]
    # drawn last, so that adding them left the lists above unchanged
    shallow = [rng.randrange(0, max(1, min(ds.rows, 10_000) - 100)) for _ in range(n_items)]
    all_scenarios = [
        Scenario("page100", "items?limit=100, random offset", "page", 100, offsets100),
        Scenario(
            "page100-exact",
            "items?limit=100, random offset, geoharbor count: exact",
            "page",
            100,
            offsets100,
            gh_collection="parcels_exact",
        ),
        Scenario("page100-shallow", "items?limit=100, offset < 10,000", "page", 100, shallow),
        Scenario(
            "page100-shallow-exact",
            "items?limit=100, offset < 10,000, geoharbor count: exact",
            "page",
            100,
            shallow,
            gh_collection="parcels_exact",
        ),
        Scenario("page1000", "items?limit=1000, random offset", "page", 1000, offsets1000),
        Scenario("bbox", "bbox 10x10 km, limit=100", "bbox", 100, boxes),
        Scenario("item", "item by id", "item", 1, ids),
    ]
    return [s for s in all_scenarios if s.key in selected]


# ---------------------------------------------------------------------------------------
# sanity checks and the report
# ---------------------------------------------------------------------------------------
def sanity(
    servers: dict[str, Server], floor: FloorSQL, ds: Dataset, notes: list[str], problems: list[str]
) -> None:
    """One request of each kind to each server: status, counts, same first feature."""
    checks = {
        "page": "/collections/{c}/items?f=json&limit=100&offset=1000",
        "bbox": "/collections/{c}/items?f=json&limit=100&bbox={b}",
        "item": "/collections/{c}/items/{i}?f=json",
    }
    cx = (ds.extent[0] + ds.extent[2]) / 2
    cy = (ds.extent[1] + ds.extent[3]) / 2
    bbox = f"{cx - 0.065:.6f},{cy - 0.045:.6f},{cx + 0.065:.6f},{cy + 0.045:.6f}"
    item_id = min(1234, ds.max_id)
    seen: dict[str, dict[str, Any]] = {}
    for name, server in servers.items():
        if server.failed:
            continue
        collections = ["parcels", "parcels_exact"] if name == "geoharbor" else ["parcels"]
        for coll in collections:
            for kind, template in checks.items():
                if coll == "parcels_exact" and kind != "page":
                    continue
                path = template.format(c=coll, b=bbox, i=item_id)
                try:
                    status, headers, body = http_get(server.port, path, timeout=300)
                except OSError as exc:
                    problems.append(f"{name}: GET {path} failed: {exc!r}")
                    continue
                if status != 200:
                    problems.append(f"{name}: GET {path} -> HTTP {status}: {body[:500]!r}")
                    continue
                doc = json.loads(body)
                feats = doc.get("features", [doc]) if kind != "item" else [doc]
                rec = {
                    "numberMatched": doc.get("numberMatched"),
                    "numberReturned": doc.get("numberReturned"),
                    "estimated": headers.get("ogc-numbermatched-estimated"),
                    "first_id": feats[0].get("id") if feats else None,
                    "first_coords": (feats[0].get("geometry") or {}).get("coordinates", [[None]])[0][:2]
                    if feats
                    else None,
                    "props": sorted((feats[0].get("properties") or {}).keys()) if feats else None,
                    "bytes": len(body),
                }
                seen[f"{name}/{coll}/{kind}"] = rec
    for kind in checks:
        gh, pg = seen.get(f"geoharbor/parcels/{kind}"), seen.get(f"pygeoapi/parcels/{kind}")
        if gh and pg:
            if gh["first_id"] != pg["first_id"]:
                problems.append(
                    f"sanity {kind}: first feature id differs: geoharbor {gh['first_id']} vs pygeoapi {pg['first_id']}"
                )
            if kind != "item" and gh["numberReturned"] != pg["numberReturned"]:
                problems.append(
                    f"sanity {kind}: numberReturned differs: geoharbor {gh['numberReturned']} vs pygeoapi {pg['numberReturned']}"
                )
            if gh["first_coords"] and pg["first_coords"] and gh["first_coords"] != pg["first_coords"]:
                notes.append(
                    f"sanity {kind}: first vertices differ in text: geoharbor {gh['first_coords']} vs pygeoapi {pg['first_coords']}"
                )
            if gh["props"] != pg["props"]:
                notes.append(
                    f"sanity {kind}: properties differ: geoharbor {gh['props']} vs pygeoapi {pg['props']}"
                )
            notes.append(
                f"sanity {kind}: response bytes geoharbor {gh['bytes']:,} vs pygeoapi {pg['bytes']:,}"
                + (
                    f"; numberMatched geoharbor {gh['numberMatched']} (estimated header: {gh['estimated']}) vs pygeoapi {pg['numberMatched']}"
                    if kind != "item"
                    else ""
                )
            )
    ex = seen.get("geoharbor/parcels_exact/page")
    if ex:
        notes.append(
            f"sanity page: geoharbor count: exact reports numberMatched {ex['numberMatched']} "
            f"(estimated header: {ex['estimated']}); the table has {ds.rows:,} rows"
        )
    # the floor returns the same features as geoharbor
    gh = seen.get("geoharbor/parcels/page")
    if gh:
        plan = floor.plan("page", "parcels", 100)
        with psycopg.connect(floor.dsn) as conn:
            page = page_statement(plan)
            rows = conn.execute(page.sql, floor.substitute(page, "page", 1000)).fetchall()
        first = json.loads(rows[0][0]) if rows else {}
        if first.get("id") != gh["first_id"]:
            problems.append(f"floor check: raw SQL first id {first.get('id')} != geoharbor {gh['first_id']}")
        else:
            notes.append(
                f"floor check: raw SQL returns {len(rows)} rows (limit+1), first id {first.get('id')} as geoharbor"
            )


def page_statement(plan: list[Statement]) -> Statement:
    """The statement of a plan that returns the features (the others count)."""
    return next(s for s in reversed(plan) if '"type":"Feature"' in s.sql)


def offset_probe(floor: FloorSQL, ds: Dataset, notes: list[str]) -> None:
    """Time geoharbor's page statement at a mid-table offset against plain-column variants.

    Explains a slow deep-offset page: PostgreSQL evaluates the select list (here the
    GeoJSON text) for every row it skips under OFFSET, unless the page is cut first.
    """
    plan = floor.plan("page", "parcels", 100)
    select = page_statement(plan)
    offset = ds.rows // 2
    params = floor.substitute(select, "page", offset)
    variants = {
        "geoharbor's statement": (select.sql, params),
        "plain columns (what pygeoapi selects)": (
            'SELECT * FROM "public"."parcels" AS t ORDER BY "id" LIMIT %(_limit)s OFFSET %(_offset)s',
            {"_limit": 101, "_offset": offset},
        ),
    }
    flat = 'FROM "public"."parcels" AS t ORDER BY "id" LIMIT %(_limit)s OFFSET %(_offset)s'
    if select.sql.endswith(flat):  # JSON built for every skipped row: show the cut-first variant
        variants["same JSON, built after LIMIT/OFFSET in a subquery"] = (
            select.sql.replace(
                flat,
                'FROM (SELECT * FROM "public"."parcels" ORDER BY "id" LIMIT %(_limit)s OFFSET %(_offset)s) AS t '
                'ORDER BY "id"',
            ),
            params,
        )
    timings = []
    try:
        with psycopg.connect(floor.dsn, autocommit=True) as conn:
            jit = conn.execute("SHOW jit").fetchone()[0]
            for label, (text, p) in variants.items():
                best = float("inf")
                for _ in range(3):
                    t0 = time.perf_counter()
                    rows = conn.execute(text, p).fetchall()
                    best = min(best, time.perf_counter() - t0)
                timings.append(f"{label} {best * 1000:,.0f} ms ({len(rows)} rows)")
            explain = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + select.sql, params).fetchone()[0][0]
            jit_ms = (explain.get("JIT") or {}).get("Timing", {}).get("Total")
    except psycopg.Error as exc:
        notes.append(f"offset probe failed: {exc}")
        return
    jit_text = f"; JIT {'on' if jit == 'on' else 'off'}" + (
        f", {jit_ms:,.0f} ms of JIT compilation in geoharbor's statement" if jit_ms else ""
    )
    notes.append(
        f"offset probe, one limit=100 page at offset {offset:,} (best of 3, SQL only): "
        + "; ".join(timings)
        + jit_text
    )


def client_check(cells: list[Cell], notes: list[str]) -> None:
    http_cells = [c for c in cells if not c.target.startswith("raw") and c.requests]
    raw_cells = [c for c in cells if c.target.startswith("raw") and c.requests]
    if not http_cells:
        return
    top = max(http_cells, key=lambda c: c.rps)
    text = (
        f"client check: the fastest HTTP cell ({top.scenario} {top.target} c={top.concurrency}) ran "
        f"{top.rps:,.0f} req/s with this client at {top.client_cpu_pct:.0f} % of one core"
    )
    if raw_cells:
        rtop = max(raw_cells, key=lambda c: c.rps)
        text += f"; the same thread pool drove the raw floor at up to {rtop.rps:,.0f} req/s ({rtop.scenario})"
    notes.append(text)


def fmt(v: float | None, digits: int = 1) -> str:
    if v is None or v != v:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def ratio(a: Cell | None, b: Cell | None) -> str:
    if not a or not b or not a.rps or not b.rps:
        return "-"
    return f"{a.rps / b.rps:.2f}x"


def report(
    args: argparse.Namespace,
    ds: Dataset,
    cells: list[Cell],
    scenarios: list[Scenario],
    rss: dict[str, dict[str, Any]],
    notes: list[str],
    problems: list[str],
    meta: dict[str, str],
) -> str:
    by = {(c.scenario, c.target, c.concurrency): c for c in cells}
    lines = []
    lines.append(f"# geoharbor benchmark — {meta['when']}")
    lines.append("")
    lines.append(
        f"Data: `{ds.dbname}`.parcels, {ds.rows:,} polygons ({ds.size} with indexes); "
        f"{args.workers} gunicorn workers per server; {args.duration:g} s per cell after {args.warmup:g} s warm-up"
        + (f", {args.requests} requests per cell" if args.requests else "")
        + f"; seed {args.seed}."
    )
    lines.append(
        f"Machine: {meta['cpus']} CPUs, {meta['machine']}; PostgreSQL {ds.pg_version}, PostGIS {ds.postgis_version}; "
        f"pygeoapi {meta['pygeoapi']}, SQLAlchemy {meta['sqlalchemy']}; geoharbor {meta['geoharbor']}."
    )
    lines.append("")
    lines.append(
        "| scenario | conc | geoharbor req/s | p50 ms | p95 ms | pygeoapi req/s | p50 ms | p95 ms "
        "| geoharbor/pygeoapi | raw floor req/s | geoharbor/floor |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in scenarios:
        exact = s.gh_collection == "parcels_exact"
        gh_target = "geoharbor-exact" if exact else "geoharbor"
        raw_target_name = "raw-exact" if exact else "raw"
        for conc in args.concurrency:
            gh = by.get((s.key, gh_target, conc))
            pg = by.get((s.key, "pygeoapi", conc))
            raw = by.get((s.key, raw_target_name, conc))
            lines.append(
                f"| {s.title} | {conc} | {fmt(gh.rps) if gh else '-'} | {fmt(gh.p50_ms) if gh else '-'} | "
                f"{fmt(gh.p95_ms) if gh else '-'} | {fmt(pg.rps) if pg else '-'} | {fmt(pg.p50_ms) if pg else '-'} | "
                f"{fmt(pg.p95_ms) if pg else '-'} | {ratio(gh, pg)} | {fmt(raw.rps) if raw else '-'} | {ratio(gh, raw)} |"
            )
    lines.append("")
    if rss:
        lines.append(
            f"Peak RSS while serving one `limit={args.rss_limit}` page (sum over the server's worker processes):"
        )
        lines.append("")
    for name, r in rss.items():
        if "skipped" in r:
            lines.append(f"- {name}: skipped ({r['skipped']})")
            continue
        hwm = f", VmHWM sum {r['peak_hwm_kb'] / 1024:,.0f} MiB" if r.get("peak_hwm_kb") else ""
        status = "" if r["status"] == 200 else f" — HTTP {r['status']}: {r.get('error')}"
        fb = f", first byte after {r['first_byte_s']:.2f} s" if r.get("first_byte_s") is not None else ""
        lines.append(
            f"- {name}: peak {r['peak_sampled_kb'] / 1024:,.0f} MiB (idle {r['baseline_kb'] / 1024:,.0f} MiB, "
            f"+{(r['peak_sampled_kb'] - r['baseline_kb']) / 1024:,.0f} MiB{hwm}) over {r['workers']} workers; "
            f"{r['features']:,} features, {r['bytes'] / 1e6:,.1f} MB in {r['seconds']:.1f} s{fb}{status}"
        )
    lines.append("")
    lines.append("## All cells")
    lines.append("")
    lines.append(
        "| scenario | target | conc | requests | errors | req/s | features/s | p50 ms | p95 ms | p99 ms "
        "| KB/resp | app CPU ms/req | db CPU ms/req | client CPU % |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cells:
        if c.skipped:
            lines.append(f"| {c.scenario} | {c.target} | {c.concurrency} | skipped: {c.skipped} |||||||||||")
            continue
        lines.append(
            f"| {c.scenario} | {c.target} | {c.concurrency} | {c.requests} | {c.errors} | {fmt(c.rps)} | "
            f"{fmt(c.fps, 0)} | {fmt(c.p50_ms)} | {fmt(c.p95_ms)} | {fmt(c.p99_ms)} | {fmt(c.mean_bytes / 1024)} | "
            f"{fmt(c.app_cpu_ms, 2)} | {fmt(c.db_cpu_ms, 2)} | {fmt(c.client_cpu_pct, 0)} |"
        )
    lines.append("")
    lines.append("## Notes")
    lines.append("")
    base_notes = [
        "geoharbor `count: auto` reports the planner's estimate as numberMatched when it is at least "
        "`exact_count_below` (100,000) rows, with header `OGC-NumberMatched-Estimated: true`; pygeoapi's "
        "PostgreSQL provider always runs an exact `count(*)`. The `geoharbor count: exact` row (collection "
        "`parcels_exact`, same table) is the like-for-like comparison; for bbox queries the estimate is small, "
        "so geoharbor counts exactly there too.",
        "Both servers order pages by id and use OFFSET; random offsets are uniform over the whole table, so "
        "deep pages make PostgreSQL walk the id index up to the offset for every request.",
        "pygeoapi's item route also runs two extra queries (previous and next id) for its prev/next links.",
        "geoharbor asks limit+1 rows to know whether there is a next page; the floor replays exactly that SQL, "
        "including its count statement (count and page in one pipeline, as geoharbor does), with psycopg "
        "(prepare_threshold 5) from threads holding one connection each. Floor SQL: " + meta["floor"] + ".",
        "geoharbor writes 7 decimals (ST_AsGeoJSON in SQL); pygeoapi writes shapely's doubles. The generator "
        "rounds coordinates to 7 decimals, so both bodies carry the same numbers.",
        "Load generator: Python threads, each with its own http.client connection (gunicorn sync workers close "
        "the connection after every response, for both servers alike). Latency is per request, connect included. "
        "'client CPU %' is this process's CPU over the measuring window (100 % = one core); the raw-floor cells "
        "are the reference that the client can drive far more requests than either server answers.",
        "app/db CPU ms/req: CPU time of the server's gunicorn workers / of the PostgreSQL backends connected to "
        "the benchmark database, per completed request — less sensitive to a noisy machine than req/s.",
        f"Everything (client, both servers, PostgreSQL) shares this machine's {meta['cpus']} CPUs; concurrency 8 "
        f"against {args.workers} sync workers measures queueing as much as speed.",
    ]
    for n in base_notes + notes:
        lines.append(f"- {n}")
    if problems:
        lines.append("")
        lines.append("## Problems seen")
        lines.append("")
        for p in problems:
            lines.append(f"- {p}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", help="database (default geoharbor_bench; geoharbor_bench_quick with --quick)")
    p.add_argument("--dsn-base", default="postgresql:///", help="libpq URL up to the database name")
    p.add_argument("--pg-host", default="/var/run/postgresql", help="host for pygeoapi (socket directory)")
    p.add_argument("--pg-user", default=None, help="user for pygeoapi (default: the current user)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers per server (default 2)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell (default 10)")
    p.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured seconds before each cell (default 2)"
    )
    p.add_argument(
        "--requests", type=int, default=None, help="a fixed request count per cell instead of --duration"
    )
    p.add_argument("--concurrency", default="1,8", help="comma-separated client concurrencies (default 1,8)")
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    p.add_argument("--targets", default="geoharbor,pygeoapi,raw", help="comma-separated subset")
    p.add_argument("--seed", type=int, default=20250601, help="seed of offsets, boxes and ids")
    p.add_argument("--rss-limit", type=int, default=100_000, help="page size of the RSS test (0 to skip)")
    p.add_argument("--quick", action="store_true", help="smoke run: 20,000 parcels, 2 s per cell")
    p.add_argument("--out", default=str(RESULTS / "latest.md"), help="Markdown report path")
    p.add_argument("--keep", action="store_true", help="keep the generated configs and server logs")
    args = p.parse_args(argv)
    if args.quick:
        args.db = args.db or "geoharbor_bench_quick"
        if args.duration == 10.0:
            args.duration = 2.0
        if args.warmup == 2.0:
            args.warmup = 0.5
        if args.rss_limit == 100_000:
            args.rss_limit = 20_000
    args.db = args.db or "geoharbor_bench"
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    selected = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    if selected - set(SCENARIOS):
        p.error(f"unknown scenarios {sorted(selected - set(SCENARIOS))}; choose from {','.join(SCENARIOS)}")
    targets = {t.strip() for t in args.targets.split(",") if t.strip()}
    pg_user = args.pg_user or os.environ.get("PGUSER") or psutil.Process().username()

    if args.quick:
        log("quick: making sure the small data set exists")
        generate.generate(args.dsn_base, args.db, 20_000, 40_000)
    dsn = f"{args.dsn_base}{args.db}"
    ds = inspect_dataset(dsn, args.db)
    log(f"data: {ds.rows:,} parcels in {args.db} ({ds.size}), extent {ds.extent}")

    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    geoharbor_rev = _git_describe()  # the code the servers load now; others may commit meanwhile
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=RESULTS))
    gh_port, pg_port = free_port(), free_port()
    gh_cfg, pg_cfg, pg_openapi = work / "geoharbor.yml", work / "pygeoapi.yml", work / "pygeoapi-openapi.yml"
    write_geoharbor_config(gh_cfg, gh_port, args.workers, dsn)
    write_pygeoapi_config(pg_cfg, pg_port, ds, args.pg_host, pg_user)

    notes: list[str] = []
    problems: list[str] = []
    servers: dict[str, Server] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    floor: FloorSQL | None = None
    cells: list[Cell] = []
    rss: dict[str, dict[str, Any]] = {}
    try:
        if "geoharbor" in targets:
            servers["geoharbor"] = start_server(
                "geoharbor",
                [
                    venv_bin("geoharbor"),
                    "serve",
                    "-c",
                    str(gh_cfg),
                    "--workers",
                    str(args.workers),
                    "-t",
                    "600",
                ],
                env,
                work / "geoharbor.log",
                gh_port,
                "/collections/parcels/items",
            )
        if "pygeoapi" in targets:
            pg_env = {**env, "PYGEOAPI_CONFIG": str(pg_cfg), "PYGEOAPI_OPENAPI": str(pg_openapi)}
            log("generating pygeoapi's OpenAPI document")
            gen = subprocess.run(
                [venv_bin("pygeoapi"), "openapi", "generate", str(pg_cfg), "--output-file", str(pg_openapi)],
                cwd=ROOT,
                env=pg_env,
                capture_output=True,
                text=True,
            )
            if gen.returncode != 0:
                raise SystemExit(f"pygeoapi openapi generate failed:\n{gen.stdout}\n{gen.stderr}")
            servers["pygeoapi"] = start_server(
                "pygeoapi",
                [
                    venv_bin("gunicorn"),
                    "--workers",
                    str(args.workers),
                    "--bind",
                    f"{HOST}:{pg_port}",
                    "--timeout",
                    "600",
                    "pygeoapi.flask_app:APP",
                ],
                pg_env,
                work / "pygeoapi.log",
                pg_port,
                "/collections/parcels/items",
            )
        for server in servers.values():
            wait_ready(server, 180)
            if server.failed:
                problems.append(f"{server.name} did not start: {server.failed}")
                log(f"{server.name} FAILED: {server.failed}")

        floor = FloorSQL(gh_cfg, dsn, ds.max_id)
        sanity(servers, floor, ds, notes, problems)
        if selected & {"page100", "page100-exact", "page1000"} and ds.rows > 10_000:
            offset_probe(floor, ds, notes)

        scenarios = make_scenarios(ds, args.seed, 2000, selected)
        plan_cells = []
        for s in scenarios:
            for conc in args.concurrency:
                order = ["geoharbor", "pygeoapi", "raw"]
                for t in order:
                    if t not in targets:
                        continue
                    plan_cells.append((s, conc, t))
        total = len(plan_cells) * (args.duration + args.warmup)
        log(f"{len(plan_cells)} cells, about {total / 60:.1f} min of load")
        for s, conc, t in plan_cells:
            name = t
            if s.gh_collection == "parcels_exact" and t in ("geoharbor", "raw"):
                name = f"{t}-exact"
            cell = Cell(s.key, name, conc)
            if t in servers:
                server = servers[t]
                if server.failed:
                    cell.skipped = "server not running"
                    cells.append(cell)
                    continue
                coll = s.gh_collection if t == "geoharbor" else "parcels"
                paths = [s.path(t, coll, it) for it in s.items]
                make, req = http_target(server.port)
                meter = CpuMeter(ds.dbname, server)
                run_cell(cell, make, paths, req, args.duration, args.warmup, args.requests, meter)
            else:
                plan = floor.plan(s.kind, s.gh_collection, s.limit)
                make, req = raw_target(floor, plan, s.kind)
                run_cell(
                    cell,
                    make,
                    s.items,
                    req,
                    args.duration,
                    args.warmup,
                    args.requests,
                    CpuMeter(ds.dbname, None),
                )
            cells.append(cell)
            log(
                f"{s.key:14s} c={conc} {name:16s} {cell.rps:9.1f} req/s  p50 {cell.p50_ms:8.1f} ms  "
                f"p95 {cell.p95_ms:8.1f} ms  n={cell.requests} err={cell.errors}"
                + (f"  first error: {cell.first_error[:200]}" if cell.first_error else "")
            )
            if cell.errors or (cell.first_error and t != "raw"):
                problems.append(
                    f"{s.key} c={conc} {name}: {cell.errors} errors in the measured window; first: {cell.first_error}"
                )

        client_check(cells, notes)
        if args.rss_limit:
            for name, server in servers.items():
                if server.failed:
                    rss[name] = {"skipped": "server not running"}
                    continue
                path = f"/collections/parcels/items?f=json&limit={args.rss_limit}"
                log(f"RSS: {name} GET {path}")
                r = measure_rss(server, path)
                rss[name] = r
                log(
                    f"RSS: {name} peak {r['peak_sampled_kb'] / 1024:.0f} MiB (idle {r['baseline_kb'] / 1024:.0f} MiB) "
                    f"{r['features']:,} features in {r['seconds']:.1f} s, HTTP {r['status']}"
                )
                if r["status"] != 200:
                    problems.append(f"RSS test {name}: GET {path} -> HTTP {r['status']}: {r.get('error')}")
                elif r["features"] != min(args.rss_limit, ds.rows):
                    problems.append(
                        f"RSS test {name}: GET {path} returned {r['features']:,} features, expected "
                        f"{min(args.rss_limit, ds.rows):,}"
                    )
        for name, server in servers.items():
            if server.proc.poll() is not None and not server.failed:
                problems.append(
                    f"{name} exited during the run (code {server.proc.returncode}):\n{server.log_tail()}"
                )
            tail = server.log_tail(200)
            errs = [
                ln for ln in tail.splitlines() if re.search(r"Traceback|ERROR|CRITICAL|WORKER TIMEOUT", ln)
            ]
            if errs:
                problems.append(f"{name} log has {len(errs)} error lines, e.g.: {errs[0][:300]}")
    finally:
        for server in servers.values():
            stop_server(server)
        if floor is not None:
            floor.close()

    meta = {
        "when": started,
        "cpus": str(os.cpu_count()),
        "machine": f"{platform.machine()}, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "pygeoapi": _version("pygeoapi"),
        "sqlalchemy": _version("sqlalchemy"),
        "geoharbor": geoharbor_rev,
        "floor": floor.source if floor else "not run",
    }
    md = report(args, ds, cells, scenarios, rss, notes, problems, meta)
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "meta": meta,
                "args": {k: v for k, v in vars(args).items()},
                "dataset": vars(ds),
                "cells": [vars(c) for c in cells],
                "rss": rss,
                "notes": notes,
                "problems": problems,
                "floor_sql": {
                    f"{k[0]}/{k[1]}/{k[2]}": [s.sql for s in v]
                    for k, v in (floor.plans.items() if floor else [])
                },
            },
            indent=2,
            default=str,
        )
    )
    log(f"wrote {out} and {out.with_suffix('.json')}")
    if args.keep:
        log(f"configs and logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _git_describe() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "server", "providers"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return f"{rev}{' + uncommitted changes in server/ or providers/' if dirty else ''}"
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
