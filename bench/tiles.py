# ruff: noqa: E501, S608 - report text lines; the SQL here is captured from geoharbor, never request input
"""Vector tiles: geoharbor vs tipg vs pygeoapi's MVT-postgresql provider vs the raw SQL, in one run.

    .venv/bin/pip install -e '.[bench]'         # once
    .venv/bin/python bench/generate.py          # once: 1M parcels (shared with run.py)
    .venv/bin/python bench/tiles.py             # full run, about 10 minutes
    .venv/bin/python bench/tiles.py --quick     # smoke run, about 1.5 minutes

All on the same table ``parcels``, with the same number of worker processes each:

* geoharbor: ``geoharbor serve -c <generated config> --workers W`` with ``server.threads``
  from ``--threads`` (default 4: gunicorn gthread workers, keep-alive), tiles at
  ``/collections/parcels/tiles/WebMercatorQuad/{z}/{y}/{x}``. Two instances of the same
  config: the normal one (per-process tile cache) for the *warm* cells, and one with
  ``server.tiles.cache_mb: 0`` for the *cold* cells, so that every cold request takes
  the path of a first request (revision read and ST_AsMVT in one round trip)
  whatever tile and worker it lands on (a check compares it with never-requested
  tiles on the normal one);
* tipg 1.6 under ``uvicorn --workers W`` from its own venv (``bench/.venv-tipg``, made on
  first use), tiles at ``/collections/public.parcels/tiles/WebMercatorQuad/{z}/{x}/{y}``;
* pygeoapi 0.24 with its built-in ``MVT-postgresql`` provider under ``gunicorn -w W``,
  tiles at ``/collections/parcels/tiles/WebMercatorQuad/{z}/{y}/{x}?f=mvt``;
* the raw floor: the statement geoharbor's ``PostGISProvider.tile()`` executes for each
  tile (captured from the provider, built from the same config), replayed with psycopg
  from threads holding one connection each;
* the HTTP floor: a bare WSGI app under gunicorn with geoharbor's worker model, returning
  a constant body of a z14 tile's size: what any Python HTTP answer costs here.

Scenarios: seeded random tiles at z6, z10 and z14 inside the data extent, cold and warm,
at client concurrency 1 and 8. Server helpers, the load generator, percentiles, CPU and
RSS metering come from ``bench/run.py``. Prints a Markdown report and writes it to
``bench/results/tiles-latest.md`` (numbers in ``tiles-latest.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mercantile
import psutil
import psycopg
import yaml
from mapbox_vector_tile import decode as mvt_decode
from mapbox_vector_tile.Mapbox import vector_tile_pb2
from shapely.geometry import box as shapely_box
from shapely.geometry import shape as shapely_shape

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (bench/run.py: servers, load generator, meters)

ROOT = bench.ROOT
RESULTS = bench.RESULTS
HOST = bench.HOST
log = bench.log

#: The data extent of bench/generate.py (lon/lat); tiles are drawn from points inside it.
EXTENT = (-4.5, 42.5, 8.0, 51.0)
ZOOMS = (6, 10, 14)
TARGETS = ("geoharbor", "tipg", "pygeoapi", "raw")
MODES = ("cold", "warm")
TIPG_SPEC = "tipg==1.6.*"
MVT_TYPE = "application/vnd.mapbox-vector-tile"
#: A target whose sequential probe of a zoom is slower than this gets request-capped cells.
SLOW_S = 0.5
#: After one sample tile this slow (or a failure), a target gets no more samples at that zoom.
SAMPLE_GIVE_UP_S = 5.0
#: Each server's tile statement, to cancel what a timed-out request left running in PostgreSQL.
QUERY_MARK = {
    "geoharbor": "%ST_AsMVT(q, %",
    "raw": "%ST_AsMVT(q, %",
    "tipg": "%ST_AsMVT(t.*%",
    "pygeoapi": "%mvtrow%",
}


# ---------------------------------------------------------------------------------------
# tile lists
# ---------------------------------------------------------------------------------------
def tile_list(z: int, n: int, seed: int) -> list[tuple[int, int, int]]:
    """``n`` tiles (z, x, y) under uniformly random points of the data extent (repeats allowed)."""
    rng = random.Random(seed * 100 + z)
    out = []
    for _ in range(n):
        lon = rng.uniform(EXTENT[0], EXTENT[2])
        lat = rng.uniform(EXTENT[1], EXTENT[3])
        t = mercantile.tile(lon, lat, z)
        out.append((z, t.x, t.y))
    return out


def distinct(tiles: list[tuple[int, int, int]], n: int) -> list[tuple[int, int, int]]:
    seen: dict[tuple[int, int, int], None] = {}
    for t in tiles:
        seen.setdefault(t, None)
        if len(seen) >= n:
            break
    return list(seen)


def tile_path(target: str, tile: tuple[int, int, int]) -> str:
    z, x, y = tile
    if target == "geoharbor":
        return f"/collections/parcels/tiles/WebMercatorQuad/{z}/{y}/{x}"  # row before column
    if target == "tipg":
        return f"/collections/public.parcels/tiles/WebMercatorQuad/{z}/{x}/{y}"
    if target == "pygeoapi":
        return f"/collections/parcels/tiles/WebMercatorQuad/{z}/{y}/{x}?f=mvt"
    raise ValueError(target)


# ---------------------------------------------------------------------------------------
# the servers
# ---------------------------------------------------------------------------------------
def write_geoharbor_config(
    path: Path, port: int, workers: int, dsn: str, cache: bool, threads: int = 1
) -> None:
    server: dict[str, Any] = {
        "bind": f"{HOST}:{port}",
        "workers": workers,
        "threads": threads,
        "log_level": "WARNING",
    }
    if not cache:
        server["tiles"] = {"cache_mb": 0}
    config = {
        "server": server,
        "sources": {"bench": {"type": "postgis", "url": dsn, "pool_max": 4}},
        "collections": {"parcels": {"source": "bench", "table": "public.parcels"}},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


#: The HTTP floor's application: a constant body, the least a WSGI answer can do.
BARE_APP = """\
import os

BODY = b"x" * int(os.environ.get("BARE_BODY_BYTES", "600"))
HEADERS = [("Content-Type", "application/vnd.mapbox-vector-tile"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
"""


def start_bare_floor(
    work: Path, workers: int, threads: int, body_bytes: int, env: dict[str, str]
) -> bench.Server:
    """gunicorn serving :data:`BARE_APP` with geoharbor's worker model (gthread with keep-alive, or sync)."""
    (work / "bare_app.py").write_text(BARE_APP)
    port = bench.free_port()
    model = (
        ["--worker-class", "gthread", "--threads", str(threads)]
        if threads > 1
        else ["--worker-class", "sync"]
    )
    cmd = [bench.venv_bin("gunicorn"), "--workers", str(workers), "--bind", f"{HOST}:{port}", *model]
    cmd += ["--chdir", str(work), "bare_app:app"]
    return bench.start_server(
        "bare", cmd, {**env, "BARE_BODY_BYTES": str(body_bytes)}, work / "bare.log", port, "/ready"
    )


def write_pygeoapi_config(path: Path, port: int, ds: bench.Dataset, pg_host: str, pg_user: str) -> None:
    """run.py's pygeoapi config (feature provider) plus the built-in MVT-postgresql tile provider."""
    bench.write_pygeoapi_config(path, port, ds, pg_host, pg_user)
    config = yaml.safe_load(path.read_text())
    resource = config["resources"]["parcels"]
    resource["providers"].append(
        {
            "type": "tile",
            "name": "MVT-postgresql",
            "data": {"host": pg_host, "dbname": ds.dbname, "user": pg_user},
            "id_field": "id",
            "table": "parcels",
            "geom_field": "geom",
            # no 'schemes' key: the provider passes list-valued options on to psycopg2 as
            # connection arguments; without it both WebMercatorQuad and WorldCRS84Quad are served
            "options": {"zoom": {"min": 0, "max": 22}},
            "format": {"name": "pbf", "mimetype": MVT_TYPE},
        }
    )
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def ensure_tipg_venv(venv: Path) -> Path:
    """bench/.venv-tipg with tipg 1.6 and uvicorn; made with this interpreter (Python 3.12) on first use."""
    uvicorn = venv / "bin" / "uvicorn"
    if uvicorn.exists() and list((venv / "lib").glob("python*/site-packages/tipg")):
        return uvicorn
    log(f"making {venv} with {TIPG_SPEC} (its pins may clash with the project's, hence a venv of its own)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    (venv / ".gitignore").write_text("*\n")  # as Python >= 3.13's venv does
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", TIPG_SPEC, "uvicorn[standard]"], check=True)
    return uvicorn


def tipg_version(venv: Path) -> str:
    out = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('tipg'), m.version('uvicorn'))",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    return f"tipg {out[0]}, uvicorn {out[1]}" if len(out) == 2 else "tipg ?"


def tipg_database_url(dsn_base: str, dbname: str, pg_host: str, pg_user: str) -> str:
    """asyncpg wants a host and tipg's pydantic DSN rejects an empty one: a Unix socket
    directory goes in percent-encoded as the host (asyncpg unquotes it), so peer auth works."""
    from urllib.parse import quote

    return f"postgresql://{quote(pg_user)}@{quote(pg_host, safe='')}/{dbname}"


# ---------------------------------------------------------------------------------------
# the raw floor: geoharbor's own tile statement, captured from its provider
# ---------------------------------------------------------------------------------------
class _Captured(Exception):
    """Raised by the spy instead of running the tile statement (capture only)."""


@dataclass
class TileStatement:
    """geoharbor's tile statement for one tile, as its provider sent it to psycopg."""

    sql: str
    params: Any
    #: psycopg's ``prepare`` argument: geoharbor sends a big tile's statement unprepared.
    prepare: bool | None = None
    #: psycopg's ``binary`` argument: geoharbor fetches the tile as binary, not hex text.
    binary: bool | None = None


class TileFloor:
    """The ST_AsMVT statement geoharbor's ``PostGISProvider.tile()`` sends for a tile.

    The provider, the collection's tile options and the tile query come from the same
    generated config, through geoharbor's own code (``server.params.tile_query``,
    ``providers.tiles.get_tms("WebMercatorQuad").tile_bounds``). psycopg's
    ``Cursor.execute`` is wrapped: the tile statement is recorded with the ``prepare`` and
    ``binary`` arguments it is sent with and not run (the spy raises), so capturing a few
    thousand tiles costs no database time. Other statements (the provider's occasional
    row-count read) run as usual and are not part of the floor.
    """

    def __init__(self, config_path: Path, dsn: str):
        from werkzeug.datastructures import MultiDict

        from providers.tiles import get_tms
        from server.config import load
        from server.params import tile_query
        from server.registry import Registry

        self.dsn = dsn
        self.registry = Registry(load(config_path))
        self.coll = self.registry.collections["parcels"]
        self.provider = self.coll.provider
        self.tms = get_tms("WebMercatorQuad")
        self.query = tile_query(MultiDict(), self.provider.schema)
        self.options = dict(self.coll.tiles)
        self.plans: dict[tuple[int, int, int], list[TileStatement]] = {}

    def request(self, tile: tuple[int, int, int]):
        from providers.base import TileRequest

        z, x, y = tile
        o = self.options
        return TileRequest(
            layer=self.coll.id,
            crs=self.tms.crs,
            bounds=self.tms.tile_bounds(z, x, y),
            zoom=z,
            extent=o["extent"],
            buffer=o["buffer"],
            max_features=o["max_features"],
            simplify=o["simplify"],
        )

    def warm_up(self, tile: tuple[int, int, int]) -> bytes:
        """One real call (opens the pool, reads the schema) before any capture."""
        return self.provider.tile(self.request(tile), self.query)

    def plan(self, tile: tuple[int, int, int]) -> list[TileStatement]:
        if tile in self.plans:
            return self.plans[tile]
        captured: list[TileStatement] = []
        original = psycopg.Cursor.execute

        def spy(cur, query, params=None, *args, **kwargs):
            if isinstance(query, bytes):
                text = query.decode()
            else:
                text = query if isinstance(query, str) else query.as_string(cur.connection)
            if "ST_AsMVT(" in text:  # the tile statement alone: not the row estimate nor a revision read
                captured.append(TileStatement(text, params, kwargs.get("prepare"), kwargs.get("binary")))
                raise _Captured
            return original(cur, query, params, *args, **kwargs)

        psycopg.Cursor.execute = spy
        try:
            self.provider.tile(self.request(tile), self.query)
        except _Captured:
            pass
        finally:
            psycopg.Cursor.execute = original
        if not any("ST_AsMVT(" in s.sql for s in captured):
            raise RuntimeError(
                f"no ST_AsMVT statement captured for tile {tile}: {[s.sql[:80] for s in captured]}"
            )
        self.plans[tile] = captured
        return captured

    def close(self) -> None:
        try:
            self.provider.db.close()
        except Exception:  # noqa: BLE001
            pass


def cancel_queries(dsn: str, target: str) -> int:
    """Cancel the running tile statements of one target (after a client timeout the server's
    worker, and its PostgreSQL backend, would otherwise go on for as long as the query takes)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return conn.execute(
                "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active' "
                "AND query LIKE %s",
                (QUERY_MARK[target],),
            ).fetchone()[0]
    except psycopg.Error as exc:
        log(f"cancel {target}: {exc}")
        return 0


def run_plan(conn: psycopg.Connection, plan: list[TileStatement]) -> bytes:
    try:
        row = None
        for stmt in plan:
            row = conn.execute(stmt.sql, stmt.params, prepare=stmt.prepare, binary=stmt.binary).fetchone()
        return bytes(row[0]) if row and row[0] else b""
    finally:
        if not conn.autocommit:
            conn.rollback()


def floor_connection(floor: TileFloor) -> psycopg.Connection:
    """A connection set up as geoharbor's pool sets up its own (autocommit, prepare threshold,
    statement_timeout), by geoharbor's code when it has that hook."""
    conn = psycopg.connect(floor.dsn)
    configure = getattr(floor.provider.db, "_configure", None)
    if configure is not None:
        configure(conn)
    else:
        conn.autocommit = True
    return conn


def raw_target(floor: TileFloor):
    def make() -> psycopg.Connection:
        return floor_connection(floor)

    def request(conn: psycopg.Connection, plan: list[TileStatement]) -> tuple[int, int, str | None]:
        return len(run_plan(conn, plan)), 0, None

    return make, request


def http_tile_target(port: int, timeout: float):
    """Like run.py's http_target, for tiles: 200 and 204 (empty tile) are answers; no feature count."""

    def make() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, port, timeout=timeout)

    def request(conn: http.client.HTTPConnection, path: str) -> tuple[int, int, str | None]:
        try:
            conn.request("GET", path, headers={"Accept-Encoding": "identity"})
            resp = conn.getresponse()
            body = resp.read()
        except (http.client.HTTPException, OSError):
            conn.close()  # the next request reconnects
            raise
        if resp.status not in (200, 204):
            return 0, 0, f"GET {path} -> HTTP {resp.status}: {body[:300]!r}"
        return len(body), 0, None

    return make, request


# ---------------------------------------------------------------------------------------
# tile content: decode samples
# ---------------------------------------------------------------------------------------
@dataclass
class Sample:
    target: str
    tile: tuple[int, int, int]
    status: int
    seconds: float
    nbytes: int
    content_type: str = ""
    layers: list[str] = field(default_factory=list)
    features: int = 0  # all features of all layers
    in_tile: int | None = None  # features whose geometry overlaps the tile proper (not only its buffer)
    extent: int | None = None
    ids: bool | None = None  # features carry an MVT id
    digest: str = ""
    error: str | None = None


def _xy(coords: Any) -> tuple[list[float], list[float]]:
    """All x and all y of nested GeoJSON coordinate lists."""
    xs: list[float] = []
    ys: list[float] = []
    stack = [coords]
    while stack:
        c = stack.pop()
        if c and isinstance(c[0], (int, float)):
            xs.append(c[0])
            ys.append(c[1])
        else:
            stack.extend(c)
    return xs, ys


def count_features(data: bytes, full_decode_below: int = 30_000) -> dict[str, Any]:
    """Feature counts of an MVT: all, and those inside the tile proper (decoded with mapbox_vector_tile)."""
    out: dict[str, Any] = {"layers": [], "features": 0, "in_tile": None, "extent": None, "ids": None}
    if not data:
        out["in_tile"] = 0
        return out
    pb = vector_tile_pb2.tile()
    pb.ParseFromString(data)
    for layer in pb.layers:
        out["layers"].append(layer.name)
        out["features"] += len(layer.features)
        out["extent"] = layer.extent
        if layer.features:
            out["ids"] = layer.features[0].HasField("id")
    if out["features"] > full_decode_below:
        return out
    decoded = mvt_decode(data)
    inside = 0
    for layer in decoded.values():
        ext = layer.get("extent", 4096)
        tile_box = shapely_box(0, 0, ext, ext)
        for feat in layer["features"]:
            try:
                g = shapely_shape(feat["geometry"])
                hit = g.intersects(tile_box) and not g.touches(tile_box)
            except Exception:  # noqa: BLE001 - an invalid ring: fall back to its bbox
                xs, ys = _xy(feat["geometry"]["coordinates"])
                hit = bool(xs) and min(xs) < ext and max(xs) > 0 and min(ys) < ext and max(ys) > 0
            inside += hit
    out["in_tile"] = inside
    return out


def fetch_sample(
    target: str, servers: dict[str, bench.Server], floor: TileFloor, tile, timeout: float
) -> Sample:
    t0 = time.perf_counter()
    try:
        if target == "raw":
            with floor_connection(floor) as conn:
                t0 = time.perf_counter()
                body = run_plan(conn, floor.plan(tile))
            status, ctype = 200, MVT_TYPE
        else:
            server = servers["geoharbor-cold" if target == "geoharbor" else target]
            status, headers, body = bench.http_get(server.port, tile_path(target, tile), timeout=timeout)
            ctype = headers.get("content-type", "")
    except Exception as exc:  # noqa: BLE001
        return Sample(target, tile, -1, time.perf_counter() - t0, 0, error=f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - t0
    s = Sample(
        target,
        tile,
        status,
        seconds,
        len(body),
        ctype,
        digest=hashlib.blake2b(body, digest_size=8).hexdigest(),
    )
    if status not in (200, 204):
        s.error = f"HTTP {status}: {body[:200]!r}"
        return s
    try:
        c = count_features(body)
    except Exception as exc:  # noqa: BLE001
        s.error = f"not a vector tile: {type(exc).__name__}: {exc}"
        return s
    s.layers, s.features, s.in_tile, s.extent, s.ids = (
        c["layers"],
        c["features"],
        c["in_tile"],
        c["extent"],
        c["ids"],
    )
    return s


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--db", default="geoharbor_bench", help="database made by generate.py (default geoharbor_bench)"
    )
    p.add_argument("--dsn-base", default="postgresql:///", help="libpq URL up to the database name")
    p.add_argument(
        "--pg-host", default="/var/run/postgresql", help="host for pygeoapi and tipg (socket directory)"
    )
    p.add_argument("--pg-user", default=None, help="user for pygeoapi and tipg (default: the current user)")
    p.add_argument("--workers", type=int, default=2, help="worker processes per server (default 2)")
    p.add_argument(
        "--threads",
        type=int,
        default=4,
        help="geoharbor's server.threads: above 1, gunicorn gthread workers with keep-alive; 1, sync "
        "workers (default 4)",
    )
    p.add_argument("--duration", type=float, default=7.0, help="measured seconds per cell (default 7)")
    p.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)"
    )
    p.add_argument(
        "--requests", type=int, default=None, help="a fixed request count per cell instead of --duration"
    )
    p.add_argument(
        "--slow-cap",
        type=int,
        default=24,
        help="most requests in a cell of a target slower than 0.5 s/tile (default 24)",
    )
    p.add_argument("--concurrency", default="1,8", help="comma-separated client concurrencies (default 1,8)")
    p.add_argument(
        "--zooms", default=",".join(map(str, ZOOMS)), help="comma-separated zooms (default 6,10,14)"
    )
    p.add_argument("--modes", default="cold,warm", help="cold, warm or both")
    p.add_argument(
        "--targets", default=",".join(TARGETS), help="comma-separated subset of geoharbor,tipg,pygeoapi,raw"
    )
    p.add_argument("--tiles", type=int, default=2000, help="random tiles drawn per zoom (default 2000)")
    p.add_argument(
        "--warm-tiles", type=int, default=64, help="distinct tiles per zoom in the warm cells (default 64)"
    )
    p.add_argument(
        "--samples", type=int, default=6, help="tiles per zoom decoded for the content check (default 6)"
    )
    p.add_argument("--seed", type=int, default=20250601)
    p.add_argument(
        "--timeout", type=float, default=60.0, help="client timeout per tile request, s (default 60)"
    )
    p.add_argument(
        "--cell-budget",
        type=float,
        default=20.0,
        help="skip a cell whose target's probe latency x queue depth exceeds this, s (default 20)",
    )
    p.add_argument("--tipg-venv", default=str(HERE / ".venv-tipg"), help="venv for tipg (made on first use)")
    p.add_argument(
        "--no-http-floor",
        dest="http_floor",
        action="store_false",
        help="skip the HTTP floor (a bare gunicorn app with a constant body, one cell per concurrency)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: fewer tiles, 1 s cells")
    p.add_argument("--out", default=str(RESULTS / "tiles-latest.md"), help="Markdown report path")
    p.add_argument("--keep", action="store_true", help="keep the generated configs and server logs")
    args = p.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 1.0)
        args.warmup = min(args.warmup, 0.3)
        args.tiles = min(args.tiles, 300)
        args.warm_tiles = min(args.warm_tiles, 16)
        args.samples = min(args.samples, 2)
        args.slow_cap = min(args.slow_cap, 8)
        args.timeout = min(args.timeout, 10.0)
        args.cell_budget = min(args.cell_budget, 5.0)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    zooms = [int(z) for z in args.zooms.split(",") if z.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip() in MODES]
    targets = [t for t in TARGETS if t in {s.strip() for s in args.targets.split(",")}]
    pg_user = args.pg_user or os.environ.get("PGUSER") or psutil.Process().username()
    dsn = f"{args.dsn_base}{args.db}"
    ds = bench.inspect_dataset(dsn, args.db)
    log(f"data: {ds.rows:,} parcels in {args.db} ({ds.size}), extent {ds.extent}")

    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    t_start = time.monotonic()
    geoharbor_rev = bench._git_describe()
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tiles-", dir=RESULTS))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    notes: list[str] = []
    problems: list[str] = []
    servers: dict[str, bench.Server] = {}
    floor: TileFloor | None = None
    cells: list[bench.Cell] = []
    samples: list[Sample] = []
    probes: dict[tuple[str, int], float] = {}
    probe_fail: dict[tuple[str, int], str | None] = {}  # None: only stopped sampling (too slow)
    caps: dict[str, str] = {}
    rss: dict[str, dict[str, Any]] = {}
    cold_check: dict[str, Any] = {}
    http_floor: list[bench.Cell] = []
    tipg_ver = "not run"

    lists = {z: tile_list(z, args.tiles, args.seed) for z in zooms}
    warm_lists = {z: distinct(lists[z], args.warm_tiles) for z in zooms}
    for z in zooms:
        log(
            f"z{z}: {len(lists[z])} tiles drawn, {len(set(lists[z]))} distinct; warm set {len(warm_lists[z])}"
        )

    try:
        # -- start everything --------------------------------------------------------------
        gh_cfg = work / "geoharbor.yml"
        if "geoharbor" in targets or "raw" in targets:
            write_geoharbor_config(
                gh_cfg, bench.free_port(), args.workers, dsn, cache=True, threads=args.threads
            )
        if "geoharbor" in targets:
            for name, cache in (("geoharbor", True), ("geoharbor-cold", False)):
                port = bench.free_port()
                cfg = work / f"{name}.yml"
                write_geoharbor_config(cfg, port, args.workers, dsn, cache=cache, threads=args.threads)
                servers[name] = bench.start_server(
                    name,
                    [
                        bench.venv_bin("geoharbor"),
                        "serve",
                        "-c",
                        str(cfg),
                        "--workers",
                        str(args.workers),
                        "-t",
                        "600",
                    ],
                    env,
                    work / f"{name}.log",
                    port,
                    "/collections/parcels/items",
                )
        if "tipg" in targets:
            uvicorn = ensure_tipg_venv(Path(args.tipg_venv))
            tipg_ver = tipg_version(Path(args.tipg_venv))
            port = bench.free_port()
            tipg_env = {
                **env,
                "DATABASE_URL": tipg_database_url(args.dsn_base, args.db, args.pg_host, pg_user),
                "TIPG_DB_TABLES": '["public.parcels"]',
                "TIPG_DB_EXCLUDE_FUNCTION_SCHEMAS": '["public"]',  # not PostGIS's functions
            }
            servers["tipg"] = bench.start_server(
                "tipg",
                [
                    str(uvicorn),
                    "tipg.main:app",
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--workers",
                    str(args.workers),
                    "--log-level",
                    "warning",
                ],
                tipg_env,
                work / "tipg.log",
                port,
                "/collections/public.parcels/items",
            )
        if "pygeoapi" in targets:
            port = bench.free_port()
            pg_cfg, pg_openapi = work / "pygeoapi.yml", work / "pygeoapi-openapi.yml"
            write_pygeoapi_config(pg_cfg, port, ds, args.pg_host, pg_user)
            pg_env = {**env, "PYGEOAPI_CONFIG": str(pg_cfg), "PYGEOAPI_OPENAPI": str(pg_openapi)}
            gen = subprocess.run(
                [
                    bench.venv_bin("pygeoapi"),
                    "openapi",
                    "generate",
                    str(pg_cfg),
                    "--output-file",
                    str(pg_openapi),
                ],
                cwd=ROOT,
                env=pg_env,
                capture_output=True,
                text=True,
            )
            if gen.returncode != 0:
                problems.append(
                    f"pygeoapi openapi generate failed:\n{gen.stdout[-1000:]}\n{gen.stderr[-1000:]}"
                )
            else:
                servers["pygeoapi"] = bench.start_server(
                    "pygeoapi",
                    [
                        bench.venv_bin("gunicorn"),
                        "--workers",
                        str(args.workers),
                        "--bind",
                        f"{HOST}:{port}",
                        "--timeout",
                        "600",
                        "pygeoapi.flask_app:APP",
                    ],
                    pg_env,
                    work / "pygeoapi.log",
                    port,
                    "/collections/parcels/items",
                )
        for server in servers.values():
            bench.wait_ready(server, 180)
            if server.failed:
                problems.append(f"{server.name} did not start: {server.failed}")
                log(f"{server.name} FAILED: {server.failed}")

        if "raw" in targets:
            try:
                floor = TileFloor(gh_cfg, dsn)
                floor.warm_up(lists[zooms[0]][0])
                t0 = time.perf_counter()
                for z in zooms:
                    for t in lists[z]:
                        floor.plan(t)
                log(
                    f"floor: captured geoharbor's tile SQL for {len(floor.plans)} tiles in {time.perf_counter() - t0:.1f} s"
                )
            except Exception as exc:  # noqa: BLE001 - report, run the rest
                problems.append(
                    f"raw floor: could not capture geoharbor's tile SQL: {type(exc).__name__}: {exc}"
                )
                floor = None

        # -- content check: decode a few tiles per zoom from everyone -----------------------
        def alive(t: str) -> bool:
            if t == "raw":
                return floor is not None
            name = "geoharbor-cold" if t == "geoharbor" else t
            return name in servers and not servers[name].failed

        # first requests of a worker open pools and read schemas: keep them out of the probes
        warm_tile = (14, *mercantile.tile((EXTENT[0] + EXTENT[2]) / 2, (EXTENT[1] + EXTENT[3]) / 2, 14)[:2])
        for name, server in servers.items():
            if not server.failed:
                t = "geoharbor" if name.startswith("geoharbor") else name
                for _ in range(2 * args.workers + 2):
                    try:
                        bench.http_get(server.port, tile_path(t, warm_tile), timeout=args.timeout)
                    except OSError:
                        pass
        for z in zooms:
            n = max(1, min(args.samples, 3) if z <= 6 else args.samples)
            for tile in distinct(lists[z], n):
                for t in targets:
                    if not alive(t) or (t, z) in probe_fail:
                        continue
                    s = fetch_sample(t, servers, floor, tile, args.timeout)
                    samples.append(s)
                    if s.error:
                        problems.append(f"content check z{z} tile {tile} {t}: {s.error}")
                        if s.status == -1:  # timeout or connection error: free the server's worker
                            cancelled = cancel_queries(dsn, t)
                            probe_fail[(t, z)] = (
                                f"no answer within {args.timeout:g} s for tile {'/'.join(map(str, tile))}"
                                + (" (its statement was still running; cancelled)" if cancelled else "")
                            )
                        else:
                            probe_fail[(t, z)] = f"tile {'/'.join(map(str, tile))}: {s.error[:120]}"
                    elif s.seconds > SAMPLE_GIVE_UP_S:
                        probe_fail.setdefault((t, z), None)  # no more samples; the cells use its latency
                    log(
                        f"sample z{tile[0]}/{tile[1]}/{tile[2]} {t:9s} HTTP {s.status} {s.seconds * 1000:8.1f} ms "
                        f"{s.nbytes:>9,} B  features {s.features:>7,}  in tile {s.in_tile}  layers {s.layers}"
                    )
            for t in targets:
                lat = [s.seconds for s in samples if s.target == t and s.tile[0] == z and not s.error]
                if lat:
                    probes[(t, z)] = statistics.median(lat)
        # the floor statement gives geoharbor's bytes (the same statement, ordered by id before its cap)
        if floor is not None:
            for z in zooms:
                gh = {s.tile: s for s in samples if s.target == "geoharbor" and s.tile[0] == z}
                raw = {s.tile: s for s in samples if s.target == "raw" and s.tile[0] == z}
                same = [t for t in gh if t in raw and gh[t].digest == raw[t].digest]
                close = [
                    t
                    for t in gh
                    if t in raw and abs(gh[t].features - raw[t].features) <= 0.05 * max(gh[t].features, 1)
                ]
                if gh and raw:
                    notes.append(
                        f"floor check z{z}: the raw SQL returned byte-identical tiles to geoharbor's for {len(same)}/{len(gh)} "
                        f"sample tiles, feature counts within 5 % for {len(close)}/{len(gh)}"
                    )
                    if len(close) < len(gh):
                        problems.append(
                            f"floor check z{z}: raw SQL and geoharbor's tile differ by more than 5 % in feature count for {len(gh) - len(close)} of {len(gh)} sample tiles"
                        )
        # determinism: the same tile built a second time
        if zooms:
            first = {s.target: s for s in samples if s.tile == lists[min(zooms)][0] and not s.error}
            for t, s in first.items():
                if t == "pygeoapi" and s.seconds > SAMPLE_GIVE_UP_S:
                    continue
                again = fetch_sample(t, servers, floor, s.tile, args.timeout)
                if again.error:
                    continue
                z, x, y = s.tile
                if again.digest == s.digest:
                    notes.append(f"determinism: {t} built tile {z}/{x}/{y} twice with identical bytes")
                else:
                    text = (
                        f"determinism: {t} built tile {z}/{x}/{y} twice with different bytes ({s.nbytes:,} B / {s.features:,} "
                        f"features, then {again.nbytes:,} B / {again.features:,} features)"
                    )
                    (problems if t == "geoharbor" else notes).append(text)

        # -- cold check: never-requested tiles on the caching instance vs the cache-off one -------
        if "cold" in modes and alive("geoharbor") and "geoharbor" in servers:
            n_check = 12 if args.quick else 40
            for z in [z for z in zooms if z >= 10]:
                warm = set(warm_lists[z]) | {s.tile for s in samples}
                fresh = [t for t in distinct(lists[z], len(lists[z])) if t not in warm][:n_check]
                if len(fresh) < 4:
                    continue
                lat: dict[str, list[float]] = {"geoharbor": [], "geoharbor-cold": []}
                for i, t in enumerate(fresh):
                    # alternate which instance asks first: the first one also pulls the pages into shared_buffers
                    for name in ("geoharbor", "geoharbor-cold")[:: 1 if i % 2 == 0 else -1]:
                        t0 = time.perf_counter()
                        bench.http_get(servers[name].port, tile_path("geoharbor", t), timeout=args.timeout)
                        lat[name].append((time.perf_counter() - t0) * 1000)
                res = {name: statistics.median(v) for name, v in lat.items()}
                cold_check[f"z{z}"] = {"tiles": len(fresh), **res}
                notes.append(
                    f"cold check z{z}: {len(fresh)} never-requested tiles, one request each at c=1: p50 {res['geoharbor']:.1f} ms "
                    f"on the caching instance (first requests) vs {res['geoharbor-cold']:.1f} ms on the cache_mb: 0 instance used for the cold cells"
                )

        # -- the cells ---------------------------------------------------------------------------
        plan_cells = [(z, m, c, t) for z in zooms for m in modes for c in args.concurrency for t in targets]
        log(
            f"{len(plan_cells)} cells, about {len(plan_cells) * (args.duration + args.warmup) / 60:.1f} min of load"
        )
        prewarmed: set[int] = set()
        for z, mode, conc, t in plan_cells:
            key = f"z{z}-{mode}"
            cell = bench.Cell(key, t, conc)
            cells.append(cell)
            if not alive(t):
                cell.skipped = "not running"
                continue
            tiles = lists[z] if mode == "cold" else warm_lists[z]
            server = None
            if t == "raw":
                make, req = raw_target(floor)
                items: list[Any] = [floor.plan(tile) for tile in tiles]
                meter = bench.CpuMeter(ds.dbname, None)
            else:
                server = servers["geoharbor-cold" if (t == "geoharbor" and mode == "cold") else t]
                if server.failed or server.proc.poll() is not None:
                    cell.skipped = "server not running"
                    continue
                make, req = http_tile_target(server.port, args.timeout)
                items = [tile_path(t, tile) for tile in tiles]
                meter = bench.CpuMeter(ds.dbname, server)
            if t == "geoharbor" and mode == "warm" and z not in prewarmed:
                # every worker process has its own cache: ask each tile often enough that all have it
                passes = 3 * args.workers + 2
                t0 = time.perf_counter()
                warm_cell = bench.Cell(key + "-prewarm", t, min(4, len(items)))
                bench.run_cell(
                    warm_cell,
                    make,
                    items * passes,
                    req,
                    0,
                    0,
                    len(items) * passes,
                    bench.CpuMeter(ds.dbname, None),
                )
                prewarmed.add(z)
                log(
                    f"{key}: pre-warmed geoharbor's caches, {len(items)} tiles x {passes} in {time.perf_counter() - t0:.1f} s"
                )
            max_requests, warmup = args.requests, args.warmup
            slow = probes.get((t, z), 0.0)
            cached = t == "geoharbor" and mode == "warm"
            slots = args.workers * (args.threads if t == "geoharbor" else 1)
            parallel = min(conc, slots) if t != "raw" else conc
            if probe_fail.get((t, z)) and not cached:
                cell.skipped = f"probe failed: {probe_fail[(t, z)]}"
                log(f"{key:8s} c={conc} {t:9s} skipped: {cell.skipped}")
                continue
            if slow * -(-conc // parallel) > args.cell_budget and not cached:
                cell.skipped = f"too slow: {slow:.1f} s per tile in the sequential probe"
                log(f"{key:8s} c={conc} {t:9s} skipped: {cell.skipped}")
                continue
            if slow > SLOW_S and not cached:
                max_requests = max(conc, min(args.slow_cap, int(args.duration * parallel / slow)))
                warmup = 0.0
                caps[f"{key} {t} c={conc}"] = f"{max_requests} requests, no warm-up (probe {slow:.2f} s/tile)"
            bench.run_cell(cell, make, items, req, args.duration, warmup, max_requests, meter)
            log(
                f"{key:8s} c={conc} {t:9s} {cell.rps:9.1f} req/s  p50 {cell.p50_ms:8.1f} ms  p95 {cell.p95_ms:8.1f} ms  "
                f"{cell.mean_bytes / 1024:8.1f} KB  n={cell.requests} err={cell.errors}  "
                f"app {bench.fmt(cell.app_cpu_ms, 2)} db {bench.fmt(cell.db_cpu_ms, 2)} ms/req"
                + (f"  first error: {cell.first_error[:200]}" if cell.first_error else "")
            )
            if cell.errors or cell.first_error:
                if t != "raw":
                    cancel_queries(dsn, t)
                problems.append(
                    f"{key} c={conc} {t}: {cell.errors} errors in the measured window; first: {cell.first_error}"
                )
            if cell.requests == 0 and not cell.errors:
                problems.append(f"{key} c={conc} {t}: no request completed in the cell")

        # -- the HTTP floor: a bare gunicorn app, same worker model, a z14 tile's bytes -------------
        if args.http_floor:
            sizes = [
                c.mean_bytes for c in cells if c.target == "geoharbor" and c.requests and "z14" in c.scenario
            ]
            body_bytes = int(statistics.median(sizes)) if sizes else 600
            bare = start_bare_floor(work, args.workers, args.threads, body_bytes, env)
            servers["bare"] = bare
            bench.wait_ready(bare, 60)
            if bare.failed:
                problems.append(f"HTTP floor did not start: {bare.failed}")
            else:
                make, req = http_tile_target(bare.port, args.timeout)
                paths = [tile_path("geoharbor", t) for t in warm_lists[max(zooms)]] if zooms else ["/"]
                for conc in args.concurrency:
                    cell = bench.Cell(f"bare {body_bytes} B", "bare", conc)
                    bench.run_cell(
                        cell,
                        make,
                        paths,
                        req,
                        args.duration,
                        args.warmup,
                        args.requests,
                        bench.CpuMeter(ds.dbname, bare),
                    )
                    http_floor.append(cell)
                    log(
                        f"HTTP floor c={conc} {cell.rps:9.1f} req/s  p50 {cell.p50_ms:8.2f} ms  "
                        f"app {bench.fmt(cell.app_cpu_ms, 2)} ms/req"
                    )
            bench.stop_server(bare)

        # -- memory: one z6 tile per server -------------------------------------------------------
        heavy = lists[min(zooms)][0]
        for name, server in servers.items():
            if name in ("geoharbor", "bare") or server.failed or server.proc.poll() is not None:
                continue
            target = "geoharbor" if name == "geoharbor-cold" else name
            zh = heavy[0]
            if (target, zh) in probe_fail or probes.get((target, zh), 0.0) > args.cell_budget:
                rss[target] = {
                    "skipped": f"its z{zh} probe did not complete ({probe_fail.get((target, zh)) or 'too slow'})"
                }
                continue
            r = bench.measure_rss(server, tile_path(target, heavy))
            r.pop("features", None)  # counts GeoJSON features; meaningless for a tile
            rss[target] = r
            log(
                f"RSS {target}: peak {r['peak_sampled_kb'] / 1024:.0f} MiB (idle {r['baseline_kb'] / 1024:.0f} MiB), {r['seconds']:.2f} s"
            )

        for name, server in servers.items():
            if server.proc.poll() is not None and not server.failed and name != "bare":
                problems.append(
                    f"{name} exited during the run (code {server.proc.returncode}):\n{server.log_tail()}"
                )
            errs = [
                ln
                for ln in server.log_tail(400).splitlines()
                if re.search(r"Traceback|ERROR|CRITICAL|WORKER TIMEOUT", ln)
            ]
            if errs:
                why = ""
                if any("no answer within" in (v or "") for (t, _), v in probe_fail.items() if t == name):
                    why = " (the benchmark cancelled its statements after client timeouts; those requests end in errors)"
                problems.append(f"{name} log has {len(errs)} error lines{why}, e.g.: {errs[0][:300]}")
    finally:
        for server in servers.values():
            bench.stop_server(server)
        if floor is not None:
            floor.close()
        for t in ("pygeoapi", "tipg", "geoharbor"):  # nothing of ours may go on running in PostgreSQL
            if t in targets and cancel_queries(dsn, t):
                log(f"cancelled {t} tile statements still running after its server stopped")

    meta = {
        "when": started,
        "minutes": f"{(time.monotonic() - t_start) / 60:.1f}",
        "cpus": str(os.cpu_count()),
        "machine": f"{platform.machine()}, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "pygeoapi": bench._version("pygeoapi"),
        "sqlalchemy": bench._version("sqlalchemy"),
        "tipg": tipg_ver,
        "geoharbor": geoharbor_rev,
        "tile_options": dict(floor.options) if floor else {},
    }
    md = report(
        args,
        ds,
        zooms,
        modes,
        targets,
        lists,
        warm_lists,
        cells,
        samples,
        caps,
        rss,
        notes,
        problems,
        meta,
        http_floor,
    )
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    floor_sql = {}
    if floor is not None:
        for z in zooms:
            plan = floor.plans.get(lists[z][0])
            if plan:
                floor_sql[f"z{z} {lists[z][0]}"] = [vars(s) for s in plan]
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "meta": meta,
                "args": vars(args),
                "dataset": vars(ds),
                "cells": [vars(c) for c in cells],
                "http_floor": [vars(c) for c in http_floor],
                "samples": [vars(s) for s in samples],
                "caps": caps,
                "cold_check": cold_check,
                "rss": rss,
                "notes": notes,
                "problems": problems,
                "floor_sql": floor_sql,
            },
            indent=2,
            default=str,
        )
    )
    log(f"wrote {out} and {out.with_suffix('.json')} ({meta['minutes']} min)")
    if args.keep:
        log(f"configs and logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


# ---------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------
def _model(threads: int) -> str:
    if threads > 1:
        return f"`server.threads: {threads}`, i.e. gthread workers with keep-alive, {threads} requests at a time per process"
    return "sync workers, one request at a time per process, connection closed after each response"


def _ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b or a != a or b != b:
        return None
    return a / b


def _short(reason: str) -> str:
    m = re.search(r"([\d.]+) s per tile", reason)
    if reason.startswith("too slow") and m:
        return f"skipped ({m.group(1)} s/tile)"
    m = re.search(r"no answer within (\S+) s", reason)
    if m:
        return f"skipped (no tile in {m.group(1)} s)"
    return "skipped"


def _x(v: float | None, target: str = "") -> str:
    if v is None:
        return "-"
    mark = ""
    if target.startswith("<="):
        mark = " ✓" if v <= float(target[2:]) else " ✗"
    elif target.startswith(">="):
        mark = " ✓" if v >= float(target[2:]) else " ✗"
    return f"{v:.2f}x{mark}"


def report(
    args,
    ds,
    zooms,
    modes,
    targets,
    lists,
    warm_lists,
    cells,
    samples,
    caps,
    rss,
    notes,
    problems,
    meta,
    http_floor=(),
) -> str:
    fmt = bench.fmt
    by = {(c.scenario, c.target, c.concurrency): c for c in cells}

    def get(key: str, t: str, conc: int) -> bench.Cell | None:
        c = by.get((key, t, conc))
        return c if c and not c.skipped and c.requests else None

    L: list[str] = []
    L.append(f"# geoharbor vector tile benchmark — {meta['when']}")
    L.append("")
    opts = meta["tile_options"]
    L.append(
        f"Data: `{ds.dbname}`.parcels, {ds.rows:,} polygons ({ds.size} with indexes), EPSG:4326, GiST index. "
        f"{args.workers} worker processes per server (geoharbor: {_model(args.threads)}); "
        f"{args.duration:g} s per cell after {args.warmup:g} s warm-up"
        + (f", {args.requests} requests per cell" if args.requests else "")
        + f"; seed {args.seed}; run took {meta['minutes']} min."
    )
    L.append(
        f"Machine: {meta['cpus']} CPUs, {meta['machine']}; PostgreSQL {ds.pg_version}, PostGIS {ds.postgis_version}; "
        f"geoharbor {meta['geoharbor']} (tiles: extent {opts.get('extent')}, buffer {opts.get('buffer')}, "
        f"max_features {opts.get('max_features')}, simplify {opts.get('simplify')}); {meta['tipg']}; "
        f"pygeoapi {meta['pygeoapi']} (MVT-postgresql, SQLAlchemy {meta['sqlalchemy']})."
    )
    L.append("")
    L.append(
        "Tiles: WebMercatorQuad, drawn under uniformly random points of the data extent "
        f"({EXTENT[0]}..{EXTENT[2]} E, {EXTENT[1]}..{EXTENT[3]} N); "
        + "; ".join(
            f"z{z}: {len(lists[z])} draws ({len(set(lists[z]))} distinct tiles) for the cold cells, "
            f"{len(warm_lists[z])} distinct tiles for the warm cells"
            for z in zooms
        )
        + ". **cold** = geoharbor instance with `server.tiles.cache_mb: 0` (every request builds the tile); "
        "**warm** = the normal instance after every worker has cached every tile of the warm set. "
        "tipg, pygeoapi and the floor have no tile cache: their cold and warm cells differ only in the tile set."
    )
    L.append("")
    skipped_reasons: dict[str, str] = {}
    hdr = "| tiles | conc |"
    sep = "|---|---:|"
    for t in targets:
        hdr += f" {t} req/s | p50 ms | p95 ms |"
        sep += "---:|---:|---:|"
    hdr += " KB/tile " + " / ".join(targets) + " |"
    sep += "---|"
    L.append(hdr)
    L.append(sep)
    for z in zooms:
        for m in modes:
            for conc in args.concurrency:
                row = f"| z{z} {m} | {conc} |"
                kb = []
                for t in targets:
                    c = by.get((f"z{z}-{m}", t, conc))
                    if c is None or c.skipped or not c.requests:
                        why = _short(c.skipped) if c and c.skipped else ("failed" if c else "-")
                        if c and c.skipped:
                            skipped_reasons.setdefault(f"z{z} {t}", c.skipped)
                        row += f" {why} | - | - |"
                        kb.append("-")
                        continue
                    capped = "*" if f"z{z}-{m} {t} c={conc}" in caps else ""
                    err = f" ({c.errors} err)" if c.errors else ""
                    row += f" {fmt(c.rps)}{capped}{err} | {fmt(c.p50_ms)} | {fmt(c.p95_ms)} |"
                    kb.append(fmt(c.mean_bytes / 1024))
                row += " " + " / ".join(kb) + " |"
                L.append(row)
    L.append("")
    if skipped_reasons:
        L.append("Skipped cells: " + "; ".join(f"{k}: {v}" for k, v in skipped_reasons.items()) + ".")
        L.append("")
    if caps:
        L.append(
            "`*` request-capped cell (slow target): " + "; ".join(f"{k}: {v}" for k, v in caps.items()) + "."
        )
        L.append("")

    # -- ratios --------------------------------------------------------------------------------
    L.append("## Ratios")
    L.append("")
    L.append(
        "| zoom | gh cold / floor p50 (c=1) target ≤1.2x | gh − floor p50 ms | gh cold / floor p95 (c=1) "
        "| gh warm / tipg req/s c=1 (≥3x) | c=8 (≥3x) | gh warm / pygeoapi req/s c=1 | c=8 "
        "| gh cold / tipg req/s c=1 | c=8 | gh cold / pygeoapi req/s c=1 | c=8 "
        "| server CPU/tile tipg ÷ gh warm (c=8) | tipg ÷ gh cold (c=8) |"
    )
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    c1 = 1 if 1 in args.concurrency else args.concurrency[0]
    c8 = 8 if 8 in args.concurrency else args.concurrency[-1]
    for z in zooms:
        gc1, rc1 = get(f"z{z}-cold", "geoharbor", c1), get(f"z{z}-cold", "raw", c1)
        diff = f"{gc1.p50_ms - rc1.p50_ms:+.1f}" if gc1 and rc1 else "-"
        row = (
            f"| z{z} | {_x(_ratio(gc1 and gc1.p50_ms, rc1 and rc1.p50_ms), '<=1.2')} | {diff} | "
            f"{_x(_ratio(gc1 and gc1.p95_ms, rc1 and rc1.p95_ms))} |"
        )
        for mode, peer, tgt in (
            ("warm", "tipg", ">=3"),
            ("warm", "pygeoapi", ""),
            ("cold", "tipg", ""),
            ("cold", "pygeoapi", ""),
        ):
            for conc in (c1, c8):
                a, b = get(f"z{z}-{mode}", "geoharbor", conc), get(f"z{z}-{mode}", peer, conc)
                row += f" {_x(_ratio(a and a.rps, b and b.rps), tgt)} |"
        for mode in ("warm", "cold"):
            a, b = get(f"z{z}-{mode}", "geoharbor", c8), get(f"z{z}-{mode}", "tipg", c8)
            cpu = [
                None if c is None or c.app_cpu_ms is None else c.app_cpu_ms + (c.db_cpu_ms or 0.0)
                for c in (a, b)
            ]
            row += f" {_x(_ratio(cpu[1], cpu[0]))} |"
        L.append(row)
    L.append("")
    L.append(
        "The floor is geoharbor's own ST_AsMVT statement for the same tile, run from Python threads over psycopg "
        "connections set up by geoharbor's own pool hook (autocommit, prepare threshold, statement_timeout), without "
        "HTTP, the revision read and the pool checkouts; 'gh − floor' is that per-request overhead in ms. Peer throughput ratios compare the same tile set "
        "(warm: geoharbor serves from its cache, the peers build every tile). "
        "Server CPU/tile = CPU time of the server's worker processes plus of the PostgreSQL backends per answered tile: "
        "at c=8 the 2-CPU machine is saturated, so this says more than req/s."
    )
    L.append("")

    # -- the HTTP floor --------------------------------------------------------------------------
    if http_floor:
        L.append("## HTTP floor")
        L.append("")
        L.append(
            f"A bare WSGI app under gunicorn ({args.workers} workers, {_model(args.threads)}) answering every "
            "request with a constant body of a z14 tile's size, measured in this run with the same client: "
            "no Python HTTP server answers faster on this machine. geoharbor's z14 cells beside it."
        )
        L.append("")
        L.append(
            "| conc | bare req/s | p50 ms | app CPU ms/req | gh z14 warm req/s | p50 ms | app CPU ms/req "
            "| gh z14 cold p50 ms | raw floor z14 cold p50 ms |"
        )
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in http_floor:
            warm, cold = (
                get("z14-warm", "geoharbor", c.concurrency),
                get("z14-cold", "geoharbor", c.concurrency),
            )
            raw = get("z14-cold", "raw", c.concurrency)
            L.append(
                f"| {c.concurrency} | {fmt(c.rps)} | {fmt(c.p50_ms, 2)} | {fmt(c.app_cpu_ms, 2)} | "
                f"{fmt(warm.rps) if warm else '-'} | {fmt(warm.p50_ms, 2) if warm else '-'} | "
                f"{fmt(warm.app_cpu_ms, 2) if warm else '-'} | {fmt(cold.p50_ms, 2) if cold else '-'} | "
                f"{fmt(raw.p50_ms, 2) if raw else '-'} |"
            )
        L.append("")

    # -- content ---------------------------------------------------------------------------------
    L.append("## Tile content (decoded samples)")
    L.append("")
    L.append(
        "| zoom | target | tiles | mean KB | features/tile | in tile proper | buffer-only | layer | feature ids | agrees with geoharbor (in-tile ±5 %) |"
    )
    L.append("|---|---|---:|---:|---:|---:|---:|---|---|---|")
    for z in zooms:
        gh = {s.tile: s for s in samples if s.target == "geoharbor" and s.tile[0] == z and not s.error}
        for t in targets:
            ss = [s for s in samples if s.target == t and s.tile[0] == z and not s.error]
            if not ss:
                bad = [s for s in samples if s.target == t and s.tile[0] == z]
                if bad:
                    L.append(f"| z{z} | {t} | {len(bad)} | failed: {bad[0].error} ||||||")
                continue
            feats = statistics.fmean(s.features for s in ss)
            ins = [s.in_tile for s in ss if s.in_tile is not None]
            in_mean = statistics.fmean(ins) if len(ins) == len(ss) else None
            agree = "-"
            if t != "geoharbor" and gh:
                ok = tot = 0
                worst = 0.0
                for s in ss:
                    g = gh.get(s.tile)
                    if g is None:
                        continue
                    a, b = (
                        (g.in_tile, s.in_tile)
                        if g.in_tile is not None and s.in_tile is not None
                        else (g.features, s.features)
                    )
                    tot += 1
                    dev = abs(a - b) / max(a, b, 1)
                    worst = max(worst, dev)
                    ok += dev <= 0.05
                basis = "" if all(s.in_tile is not None for s in ss) else " (total counts)"
                agree = f"{ok}/{tot}{basis}" + (f", worst {worst * 100:.0f} % off" if ok < tot else "")
            L.append(
                f"| z{z} | {t} | {len(ss)} | {statistics.fmean(s.nbytes for s in ss) / 1024:,.1f} | {feats:,.0f} | "
                f"{fmt(in_mean, 0) if in_mean is not None else 'not decoded'} | "
                f"{fmt(feats - in_mean, 0) if in_mean is not None else '-'} | "
                f"{', '.join(sorted(set(ly for s in ss for ly in s.layers))) or '(empty)'} | "
                f"{'yes' if all(s.ids for s in ss if s.features) else 'no'} | {agree} |"
            )
    L.append("")
    L.append(
        "'in tile proper' = decoded features whose geometry overlaps the tile square (0..extent), i.e. without the "
        "ones only present in the buffer; the ±5 % check compares that count per tile (total counts when a tile was "
        "too big to decode). Tiles with more than 30,000 features are only counted, not decoded."
    )
    L.append("")
    if rss:
        L.append(
            "Peak RSS while serving one z6 tile (sum over the server's worker processes; geoharbor: cache-off instance):"
        )
        L.append("")
        for name, r in rss.items():
            if "skipped" in r:
                L.append(f"- {name}: skipped, {r['skipped']}")
                continue
            status = "" if r["status"] in (200, 204) else f" — HTTP {r['status']}: {r.get('error')}"
            L.append(
                f"- {name}: peak {r['peak_sampled_kb'] / 1024:,.0f} MiB (idle {r['baseline_kb'] / 1024:,.0f} MiB, "
                f"+{(r['peak_sampled_kb'] - r['baseline_kb']) / 1024:,.0f} MiB) over {r['workers']} processes; "
                f"{r['bytes'] / 1e6:,.2f} MB in {r['seconds']:.2f} s{status}"
            )
        L.append("")

    # -- all cells ---------------------------------------------------------------------------
    L.append("## All cells")
    L.append("")
    L.append(
        "| tiles | target | conc | requests | errors | req/s | p50 ms | p95 ms | p99 ms | KB/tile | app CPU ms/req | db CPU ms/req | client CPU % |"
    )
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cells:
        if c.skipped:
            L.append(f"| {c.scenario} | {c.target} | {c.concurrency} | skipped: {c.skipped} |||||||||")
            continue
        L.append(
            f"| {c.scenario} | {c.target} | {c.concurrency} | {c.requests} | {c.errors} | {fmt(c.rps)} | {fmt(c.p50_ms)} | "
            f"{fmt(c.p95_ms)} | {fmt(c.p99_ms)} | {fmt(c.mean_bytes / 1024)} | {fmt(c.app_cpu_ms, 2)} | "
            f"{fmt(c.db_cpu_ms, 2)} | {fmt(c.client_cpu_pct, 0)} |"
        )
    L.append("")
    L.append("## Notes")
    L.append("")
    base_notes = [
        f"Tile settings differ by design: geoharbor buffer {opts.get('buffer')} and a bbox (`&&`) search of the buffered "
        f"tile, ORDER BY id LIMIT {opts.get('max_features')}, ST_Simplify to the tile's pixel (a prepared statement "
        "with a generic plan, except for tiles whose share of the table's extent may exceed a quarter of the cap: "
        "those go unprepared, planned with their envelope); tipg buffer 256, "
        "ST_Intersects with the tile proper, ORDER BY id LIMIT 10000; pygeoapi ST_AsMVTGeom's default buffer (256), "
        "ST_Intersects with the tile proper, no feature limit. So at z14 geoharbor carries extra buffer-only "
        "features, and at z6 (about 100,000+ parcels per tile) geoharbor and tipg stop at 10,000 features "
        "(different ones) while pygeoapi encodes them all.",
        f"Servers: geoharbor under gunicorn, {_model(args.threads)}; pygeoapi under gunicorn sync workers (one request "
        "at a time per process, connection closed after each response); tipg under uvicorn (async, keep-alive, "
        "asyncpg pool of up to 10 connections per worker).",
        "Warm for geoharbor: before its first warm cell of a zoom every tile of the warm set is requested "
        f"{3 * args.workers + 2} times, so each worker process has cached it; every warm request still reads the "
        "collection's revision from PostgreSQL (see db CPU ms/req); a tile the worker holds under that revision is "
        "answered before Flask (server/tile_fast_path.py).",
        "A target slower than 0.5 s per tile in the sequential content check gets request-capped cells without warm-up "
        f"(at most {args.slow_cap} requests), so that one slow server cannot stretch the run.",
        "Load generator: run.py's (Python threads, one http.client connection each; identity encoding, so tile sizes "
        "are uncompressed MVT). Latency is per request, connect included. Empty tiles (204) count as answers.",
        f"Everything (client, servers, PostgreSQL) shares this machine's {meta['cpus']} CPUs; re-run before trusting "
        "a difference under ~20 %.",
    ]
    for n in base_notes + notes:
        L.append(f"- {n}")
    if problems:
        L.append("")
        L.append("## Problems seen")
        L.append("")
        for p in problems:
            L.append(f"- {p}")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
