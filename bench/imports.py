"""Import 1,000,000 features from a GeoPackage: geoharbor's loader vs ``ogr2ogr``.

``--target postgis`` (the default): both write a new table with a primary key and a
GiST index in the same database; ogr2ogr runs with ``PG_USE_COPY=YES``.
``--target geopackage`` (the embedded mode's store): both write a new layer with its
R-tree into a GeoPackage of their own. Same machine, same run, each loader as a child
process so its peak RSS is the kernel's own figure (``wait4``). The file is exported
once from ``geoharbor_bench.parcels`` (see ``generate.py``) with ogr2ogr and kept in
``bench/results/``.

    .venv/bin/python bench/imports.py [--features 1000000] [--repeat 3] [--target geopackage]

Prints and writes ``bench/results/imports-latest.md`` / ``.json`` (``imports-geopackage-latest``
for the GeoPackage target).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

#: The child process that loads with geoharbor (argv: file, database URL, table).
LOADER = """
import sys
from providers.loader import load
from providers.postgis import PostGISDatabase
db = PostGISDatabase(sys.argv[2], pool_min=1, pool_max=1)
result = load(sys.argv[1], None, db, sys.argv[3], "create")
db.close()
print(result.features)
"""

#: The same into a GeoPackage (argv: file, GeoPackage path, layer).
LOADER_GPKG = """
import sys
from providers.geopackage import GeoPackage
from providers.loader import load
gpkg = GeoPackage(sys.argv[2])
result = load(sys.argv[1], None, gpkg, sys.argv[3], "create")
gpkg.close()
print(result.features)
"""


def _libpq(url: str) -> str:
    return " ".join(f"{k}={v}" for k, v in psycopg.conninfo.conninfo_to_dict(url).items())


def _url(base: str, db: str) -> str:
    return (base if base.endswith("/") else base + "/") + db


def source_file(base: str, db: str, features: int) -> Path:
    """The cached GeoPackage of the first ``features`` parcels, exported once with ogr2ogr."""
    path = RESULTS / f"parcels-{features}.gpkg"
    if path.exists():
        return path
    RESULTS.mkdir(parents=True, exist_ok=True)
    with psycopg.connect(_url(base, db)) as conn:
        have = conn.execute("SELECT count(*) FROM parcels").fetchone()[0]
    if have < features:
        sys.exit(f"{db}.parcels has {have:,} rows, fewer than {features:,}: run bench/generate.py first")
    partial = path.with_suffix(".partial.gpkg")
    partial.unlink(missing_ok=True)
    print(f"exporting {features:,} parcels to {path.name} ...", file=sys.stderr)
    subprocess.run(
        ["ogr2ogr", "-f", "GPKG", str(partial), f"PG:{_libpq(_url(base, db))}", "parcels", "-nln", "parcels"]
        + ["-limit", str(int(features))],
        check=True,
    )
    partial.rename(path)
    return path


def _measure(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of a child process; fails loudly if it fails."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"{argv[0]} failed with exit code {process.returncode}")
    return seconds, usage.ru_maxrss * 1024


def _drop(url: str, table: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP TABLE IF EXISTS {}").format(psycopg.sql.Identifier(table)))


def _count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        query = psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(table))
        return conn.execute(query).fetchone()[0]


def _empty_geopackage(path: Path, source: Path) -> None:
    """A GeoPackage with no features (one empty layer) for geoharbor's loader to write into."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    subprocess.run(
        ["ogr2ogr", "-f", "GPKG", str(path), str(source), "-nln", "empty", "-limit", "0"], check=True
    )


def _gpkg_count(path: Path, layer: str) -> int:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return conn.execute(f'SELECT count(*) FROM "{layer}"').fetchone()[0]  # noqa: S608 - our name


def _geopackage_tools(path: Path) -> dict[str, tuple[list[str], dict[str, str] | None, Any]]:
    """Each loader's command, environment, and how to clear and count its output."""
    mine, theirs = RESULTS / "imports-geoharbor.gpkg", RESULTS / "imports-ogr2ogr.gpkg"

    def geoharbor_reset() -> None:
        _empty_geopackage(mine, path)

    def ogr2ogr_reset() -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{theirs}{suffix}").unlink(missing_ok=True)

    return {
        "geoharbor": (
            [sys.executable, "-c", LOADER_GPKG, str(path), str(mine), "parcels"],
            None,
            (geoharbor_reset, lambda: _gpkg_count(mine, "parcels")),
        ),
        "ogr2ogr": (
            ["ogr2ogr", "-f", "GPKG", str(theirs), str(path), "-nln", "parcels"],
            None,
            (ogr2ogr_reset, lambda: _gpkg_count(theirs, "parcels")),
        ),
    }


def run(args: argparse.Namespace) -> dict:
    path = source_file(args.dsn_base, args.db, args.features)
    if args.target == "geopackage":
        return _run(args, path, _geopackage_tools(path))
    target = _url(args.dsn_base, args.target_db)
    with psycopg.connect(_url(args.dsn_base, "postgres"), autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(args.target_db)
            )
        )
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(args.target_db)))
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION postgis")
    tools = {
        "geoharbor": (
            [sys.executable, "-c", LOADER, str(path), target, "parcels_geoharbor"],
            None,
            _table_output(target, "parcels_geoharbor"),
        ),
        "ogr2ogr": (
            ["ogr2ogr", "-f", "PostgreSQL", f"PG:{_libpq(target)}", str(path), "-nln", "parcels_ogr2ogr"]
            + ["-lco", "GEOMETRY_NAME=geom", "-lco", "FID=id"],
            {**os.environ, "PG_USE_COPY": "YES"},
            _table_output(target, "parcels_ogr2ogr"),
        ),
    }
    return _run(args, path, tools)


def _table_output(url: str, table: str) -> tuple[Any, Any]:
    return (lambda: _drop(url, table), lambda: _count(url, table))


def _run(args: argparse.Namespace, path: Path, tools: dict[str, tuple[list[str], Any, Any]]) -> dict:
    """Each loader ``--repeat`` times, interleaved; the summary."""
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in tools}
    for attempt in range(args.repeat):
        for name, (argv, env, (reset, count)) in tools.items():  # interleaved: same machine state
            reset()
            seconds, rss = _measure(argv, env)
            rows = count()
            if rows != args.features:
                sys.exit(f"{name} wrote {rows:,} rows, expected {args.features:,}")
            runs[name].append((seconds, rss))
            print(
                f"run {attempt + 1} {name}: {seconds:.2f} s, peak RSS {rss / 2**20:.0f} MiB", file=sys.stderr
            )
    summary = {}
    for name, measured in runs.items():
        seconds = statistics.median(s for s, _ in measured)
        summary[name] = {
            "seconds": round(seconds, 2),
            "features_per_s": round(args.features / seconds),
            "peak_rss_mib": round(max(r for _, r in measured) / 2**20),
            "runs": [round(s, 2) for s, _ in measured],
        }
    ratio = summary["ogr2ogr"]["seconds"] / summary["geoharbor"]["seconds"]
    return {
        "features": args.features,
        "target": args.target,
        "file": path.name,
        "file_mib": round(path.stat().st_size / 2**20),
        "repeat": args.repeat,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "gdal": subprocess.run(["ogr2ogr", "--version"], capture_output=True, text=True).stdout.strip(),
        "results": summary,
        "speed_ratio": round(ratio, 2),
    }


def report(result: dict) -> str:
    lines = [
        f"# Imports: {result['features']:,} polygons, GeoPackage ({result['file_mib']} MiB) -> "
        + ("GeoPackage" if result.get("target") == "geopackage" else "PostGIS"),
        "",
        f"{result['machine']}; {result['gdal']}; median of {result['repeat']} interleaved run(s).",
        "",
        "| loader | seconds | features/s | peak RSS |",
        "|---|---:|---:|---:|",
    ]
    for name, row in result["results"].items():
        label = {
            "geoharbor": "geoharbor (`providers.loader`)",
            "ogr2ogr": "`ogr2ogr -f GPKG`"
            if result.get("target") == "geopackage"
            else "`ogr2ogr -f PostgreSQL` (PG_USE_COPY)",
        }[name]
        lines.append(
            f"| {label} | {row['seconds']:.2f} | {row['features_per_s']:,} | {row['peak_rss_mib']} MiB |"
        )
    lines += ["", f"geoharbor's speed: **{result['speed_ratio']:.2f}x** ogr2ogr's (target >= 1.0x)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--features", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of each loader (median kept)")
    parser.add_argument("--dsn-base", default="postgresql:///", help="libpq URL without the database name")
    parser.add_argument("--db", default="geoharbor_bench", help="database holding parcels (generate.py)")
    parser.add_argument(
        "--target-db", default="geoharbor_bench_imports", help="database the loaders write to"
    )
    parser.add_argument("--target", choices=("postgis", "geopackage"), default="postgis")
    args = parser.parse_args()
    result = run(args)
    text = report(result)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "imports-latest" if args.target == "postgis" else "imports-geopackage-latest"
    (RESULTS / f"{stem}.md").write_text(text)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
