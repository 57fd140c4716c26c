"""Capabilities: ``buffer`` and ``spatial_join`` on the benchmark tables, geoharbor vs geopandas.

Each scenario reads the benchmark's ``parcels`` (and ``addresses``), computes, and writes a
new table, in four ways, each in a child process of its own so its peak RSS is the
kernel's figure (``wait4``):

* ``geoharbor/postgis``: :func:`providers.capabilities.run` with source and target in
  PostGIS: the chain is one SQL statement run inside the database. The peak RSS of the
  PostgreSQL backend that runs it is sampled too (``VmHWM``, found by application name;
  needs to run as the database's OS user or root).
* ``geopandas/postgis``: what a geopandas script does: read the tables from PostGIS with
  ``read_postgis``, compute in one process, write the result back with ``to_postgis``
  (pyogrio's wheel has no PostgreSQL driver).
* ``geoharbor/geopackage``: :func:`providers.capabilities.run` with source and target in
  a GeoPackage: the Python engine (shapely, pyarrow), in batches.
* ``geopandas/geopackage``: the geopandas script reading and writing that GeoPackage.

The two engines compute the same thing, geopandas what a user of it would write:
``buffer`` by 25 m (geoharbor: each parcel in its UTM zone; geopandas: the whole layer in
Lambert-93, EPSG:2154, France's metric CRS), and ``spatial_join``: the number of
addresses in each parcel and their smallest postcode (geoharbor: ``spatial_join``
``intersects`` with ``count`` and ``min``; geopandas: ``sjoin`` then ``groupby``).

    .venv/bin/python bench/generate.py --polygons 200000 --points 400000 --db gh_capabilities_bench
    .venv/bin/python bench/capabilities.py --db gh_capabilities_bench [--repeat 3]

Needs geopandas in the venv (``pip install geopandas``). The GeoPackage copy of the tables
is exported once with ogr2ogr into ``bench/results/``; output tables go to the schema
``capabilities_bench`` (dropped at the end) and into that GeoPackage. Prints and writes
``bench/results/capabilities-latest.md`` / ``.json``.

Each child runs under an address-space limit (``--memory-limit-gb``, by default 60% of
the machine's memory) so that an engine that needs more than the machine has is reported
as out of memory instead of taking the machine down with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SCHEMA = "capabilities_bench"
APPLICATION = "geoharbor-capabilities-bench"

SCENARIOS: dict[str, dict[str, Any]] = {
    "buffer": {
        "steps": [("buffer", {"distance": 25})],
        "others": [],
    },
    "spatial_join": {
        "steps": [
            (
                "spatial_join",
                {
                    "other": "addresses",
                    "aggregates": [
                        {"function": "count", "as": "addresses"},
                        {"function": "min", "column": "postcode", "as": "postcode"},
                    ],
                },
            )
        ],
        "others": ["addresses"],
    },
}
ENGINES = ("geoharbor/postgis", "geopandas/postgis", "geoharbor/geopackage", "geopandas/geopackage")


def _url(base: str, db: str) -> str:
    return (base if base.endswith("/") else base + "/") + db


def _libpq(url: str) -> str:
    return " ".join(f"{k}={v}" for k, v in psycopg.conninfo.conninfo_to_dict(url).items())


# -- children ----------------------------------------------------------------------------------------
def _backend_peak(url: str, stop: threading.Event, found: list[int]) -> None:
    """Sample the peak RSS (kB) of the backend whose application name is ours until ``stop``."""
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.wait(0.1):
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (APPLICATION,)
            ).fetchall():
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            found.append(int(line.split()[1]))
                except OSError:
                    pass


def child_geoharbor(scenario: str, backend: str, url: str, gpkg_path: str) -> dict[str, Any]:
    from providers.capabilities import Step, run, validate
    from providers.geopackage import GeoPackage, GeoPackageProvider
    from providers.geopackage_tables import GeoPackageTables
    from providers.postgis import PostGISDatabase, PostGISProvider, TableRef

    spec = SCENARIOS[scenario]
    steps = [Step(name, validate(name, config)) for name, config in spec["steps"]]
    out = f"geoharbor_{scenario}"
    peaks: list[int] = []
    if backend == "postgis":
        db = PostGISDatabase(f"{url}?application_name={APPLICATION}", pool_min=1, pool_max=2)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS {SCHEMA}."{out}"')

        def provider(table: str) -> PostGISProvider:
            ref = TableRef("public", table, "geom")
            return PostGISProvider(db, ref, db.describe(ref))

        source, others, target, name = (
            provider("parcels"),
            {o: provider(o) for o in spec["others"]},
            db,
            f"{SCHEMA}.{out}",
        )
        stop = threading.Event()
        sampler = threading.Thread(target=_backend_peak, args=(url, stop, peaks), daemon=True)
        sampler.start()
    else:
        gpkg = GeoPackage(gpkg_path)
        if out in gpkg.discover():
            GeoPackageTables(gpkg, "").drop(out)

        def provider(table: str) -> GeoPackageProvider:  # type: ignore[misc]
            return GeoPackageProvider(gpkg, table, gpkg.describe(table))

        source, others, target, name = (
            provider("parcels"),
            {o: provider(o) for o in spec["others"]},
            gpkg,
            out,
        )
    started = time.perf_counter()
    result = run(steps, source, others, target, name)
    seconds = time.perf_counter() - started
    if backend == "postgis":
        stop.set()
        sampler.join()
    return {"seconds": seconds, "rows": result.features, "backend_kb": max(peaks) if peaks else None}


def child_geopandas(scenario: str, backend: str, url: str, gpkg_path: str) -> dict[str, Any]:
    import warnings

    import geopandas as gpd
    import pyogrio

    # GDAL writes a time rounded up to the next minute as second 60; pandas keeps the text.
    warnings.filterwarnings("ignore", message="Error parsing datetimes")

    out = f"geopandas_{scenario}"
    if backend == "postgis":
        # pyogrio's wheel has no PostgreSQL driver: geopandas' own PostGIS I/O (SQLAlchemy, COPY).
        from sqlalchemy import create_engine

        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS {SCHEMA}."{out}"')

        def read(table: str, columns: str) -> gpd.GeoDataFrame:
            query = f"SELECT {columns} FROM {table}"  # noqa: S608 - our own names
            return gpd.read_postgis(query, engine, geom_col="geom", index_col="id")

        def write(frame: gpd.GeoDataFrame) -> None:
            frame.to_postgis(out, engine, schema=SCHEMA, index=True, index_label="id")

    else:
        from providers.geopackage import GeoPackage
        from providers.geopackage_tables import GeoPackageTables

        package = GeoPackage(gpkg_path)
        if out in package.discover():
            GeoPackageTables(package, "").drop(out)
        package.close()

        def read(table: str, columns: str) -> gpd.GeoDataFrame:
            wanted = (
                None
                if columns == "*"
                else [c.strip() for c in columns.split(",") if c.strip() not in ("id", "geom")]
            )
            return pyogrio.read_dataframe(gpkg_path, layer=table, columns=wanted, fid_as_index=True)

        def write(frame: gpd.GeoDataFrame) -> None:
            pyogrio.write_dataframe(frame, gpkg_path, layer=out, layer_options={"FID": "fid"}, append=False)

    started = time.perf_counter()
    parcels = read("parcels", "*")
    if scenario == "buffer":
        metric = parcels.to_crs(2154)
        metric[metric.geometry.name] = metric.buffer(25)
        result = metric.to_crs(4326)
    else:
        addresses = read("addresses", "id, postcode, geom")
        joined = gpd.sjoin(parcels[[parcels.geometry.name]], addresses, how="inner", predicate="intersects")
        counts = joined.groupby(level=0).agg(addresses=("postcode", "size"), postcode=("postcode", "min"))
        result = parcels.join(counts)
        result["addresses"] = result["addresses"].fillna(0).astype("int64")
    write(result)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": len(result), "backend_kb": None}


def child(argv: list[str]) -> None:
    scenario, engine, url, gpkg_path = argv
    tool, backend = engine.split("/")
    runner = child_geoharbor if tool == "geoharbor" else child_geopandas
    print(json.dumps(runner(scenario, backend, url, gpkg_path)))


# -- the parent ------------------------------------------------------------------------------------
def prepare(url: str, db: str) -> Path:
    """The GeoPackage copy of parcels and addresses (exported once), and the output schema."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        parcels = conn.execute("SELECT count(*) FROM parcels").fetchone()[0]
    path = RESULTS / f"capabilities-{db}-{parcels}.gpkg"
    if not path.exists():
        RESULTS.mkdir(parents=True, exist_ok=True)
        for n, table in enumerate(("parcels", "addresses")):
            subprocess.run(
                ["ogr2ogr", "-f", "GPKG", str(path), "PG:" + _libpq(url), table, "-nln", table]
                + (["-update"] if n else [])
                + ["-lco", "FID=id", "-lco", "GEOMETRY_NAME=geom", "-preserve_fid"],
                check=True,
            )
    return path


def default_memory_limit_gb() -> float:
    """60% of the machine's memory: room for PostgreSQL and the rest of the machine."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) * 0.6 / 1024**2, 1)
    return 8.0


def measure(scenario: str, engine: str, url: str, gpkg: Path, limit_gb: float) -> dict[str, Any]:
    """One run of ``engine`` in a child process; ``{"failed": ...}`` when it ran out of memory."""
    limit = int(limit_gb * 1024**3)

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    process = subprocess.Popen(
        [sys.executable, __file__, "--child", scenario, engine, url, str(gpkg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=cap_memory,  # noqa: PLW1509 - no threads started yet in the parent
    )
    assert process.stdout is not None and process.stderr is not None
    output, errors = process.stdout.read(), process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        if b"MemoryError" in errors or b"std::bad_alloc" in errors or b"Cannot allocate" in errors:
            return {"failed": f"out of memory at {limit_gb:g} GB", "rss_kb": usage.ru_maxrss}
        sys.stderr.write(errors.decode(errors="replace"))
        sys.exit(f"{engine} {scenario} failed ({process.returncode})")
    found = json.loads(output.decode().strip().splitlines()[-1])
    return {**found, "rss_kb": usage.ru_maxrss}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", default="geoharbor_bench", help="benchmark database (bench/generate.py)")
    parser.add_argument("--dsn-base", default="postgresql:///", help="server URL without the database name")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each cell (median reported)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument(
        "--memory-limit-gb", type=float, default=default_memory_limit_gb(), help="address space of each run"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    url = _url(args.dsn_base, args.db)
    gpkg = prepare(url, args.db)
    with psycopg.connect(url) as conn:
        sizes = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("parcels", "addresses")}  # noqa: S608
    cells = []
    try:
        for scenario in args.scenarios.split(","):
            for engine in args.engines.split(","):
                limit = args.memory_limit_gb
                runs = [measure(scenario, engine, url, gpkg, limit) for _ in range(args.repeat)]
                failed = next((r["failed"] for r in runs if "failed" in r), None)
                if failed:
                    cells.append({"scenario": scenario, "engine": engine, "failed": failed})
                    print(f"{scenario:13} {engine:22} {failed}", flush=True)
                    continue
                cell = {
                    "scenario": scenario,
                    "engine": engine,
                    "seconds": statistics.median(r["seconds"] for r in runs),
                    "rss_mb": max(r["rss_kb"] for r in runs) / 1024,
                    "backend_mb": (
                        max(r["backend_kb"] for r in runs) / 1024
                        if runs[0]["backend_kb"] is not None
                        else None
                    ),
                    "rows": runs[0]["rows"],
                }
                cells.append(cell)
                backend = f", PostgreSQL backend {cell['backend_mb']:.0f} MB" if cell["backend_mb"] else ""
                print(
                    f"{scenario:13} {engine:22} {cell['seconds']:8.1f} s {cell['rss_mb']:7.0f} MB{backend}"
                    f"  ({cell['rows']:,} rows)",
                    flush=True,
                )
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    report(cells, sizes, args)


def report(cells: list[dict[str, Any]], sizes: dict[str, int], args: argparse.Namespace) -> None:
    import geopandas
    import pyogrio
    import shapely

    versions = (
        f"geopandas {geopandas.__version__}, shapely {shapely.__version__} "
        f"(GEOS {shapely.geos_version_string}), "
        f"pyogrio {pyogrio.__version__} (GDAL {pyogrio.__gdal_version_string__})"
    )
    lines = [
        f"Capabilities on {sizes['parcels']:,} parcels and {sizes['addresses']:,} addresses "
        f"({args.db}), median of {args.repeat} run(s); {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; {versions}.",
        "",
        "| scenario | engine | time (s) | peak RSS of the process (MB) "
        "| PostgreSQL backend peak RSS (MB) | rows |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for c in cells:
        if "failed" in c:
            lines.append(f"| {c['scenario']} | {c['engine']} | {c['failed']} | | | |")
            continue
        backend = f"{c['backend_mb']:.0f}" if c["backend_mb"] else "-"
        lines.append(
            f"| {c['scenario']} | {c['engine']} | {c['seconds']:.1f} | {c['rss_mb']:.0f} "
            f"| {backend} | {c['rows']:,} |"
        )
    text = "\n".join(lines)
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "capabilities-latest.md").write_text(text + "\n")
    (RESULTS / "capabilities-latest.json").write_text(json.dumps({"sizes": sizes, "cells": cells}, indent=2))


if __name__ == "__main__":
    main()
