"""Shared fixtures: a real PostGIS database, a real GeoPackage, a real server.

The PostGIS database is created fresh for the run and loaded with Natural Earth
countries (public domain, shipped inside the pyogrio wheel) through GDAL's
``ogr2ogr``; variants of that table exercise other CRSs, key types and quoted
identifiers. The GeoPackage is written by ``ogr2ogr`` from the same tables, so both
backends hold the same features. The server runs under gunicorn as a subprocess,
as in production, and tests talk to it over HTTP.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests
import yaml

from server.demo import natural_earth_countries

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("GEOHARBOR_TEST_ADMIN_URL", "postgresql:///postgres")
TEST_DB = os.environ.get("GEOHARBOR_TEST_DB", "geoharbor_test")
BACKENDS = ["postgis", "geopackage"]

# Tables derived from Natural Earth that exercise what the providers must handle.
DERIVED_SQL = """
ALTER TABLE countries ADD COLUMN updated timestamptz;
UPDATE countries SET updated = timestamptz '2020-01-01 00:00:00+00' + (id * interval '1 day');
CREATE TABLE country_points AS
  SELECT id, name, iso_a3, continent, pop_est::bigint AS pop_est, updated,
         ST_PointOnSurface(geom)::geometry(Point, 4326) AS geom
  FROM countries;
ALTER TABLE country_points ADD PRIMARY KEY (id);
CREATE SEQUENCE country_points_id_seq OWNED BY country_points.id;
SELECT setval('country_points_id_seq', (SELECT max(id) FROM country_points));
ALTER TABLE country_points ALTER COLUMN id SET DEFAULT nextval('country_points_id_seq');
CREATE INDEX ON country_points USING gist (geom);
INSERT INTO country_points (name, iso_a3, continent, pop_est, geom)
  VALUES ('Nowhere', '-99', 'None', 0, NULL);

CREATE TABLE countries_l93 AS
  SELECT id, name, iso_a3, ST_Transform(geom, 2154)::geometry(MultiPolygon, 2154) AS geom
  FROM countries
  WHERE name IN ('France', 'Belgium', 'Luxembourg', 'Switzerland', 'Spain', 'Germany', 'Italy',
                 'Netherlands');
ALTER TABLE countries_l93 ADD PRIMARY KEY (id);
CREATE INDEX ON countries_l93 USING gist (geom);

CREATE TABLE countries_3857 AS
  SELECT id, name, iso_a3,
         ST_Transform(ST_Intersection(geom, ST_MakeEnvelope(-180, -85, 180, 85, 4326)), 3857)
           ::geometry(Geometry, 3857) AS geom
  FROM countries;
ALTER TABLE countries_3857 ADD PRIMARY KEY (id);

CREATE SCHEMA "Mixed Schema";
CREATE TABLE "Mixed Schema"."Country Codes" (
  "ISO Code" text PRIMARY KEY, "Name" text, "popEst" bigint, "Uid" uuid,
  "the geom" geometry(Point, 4326));
INSERT INTO "Mixed Schema"."Country Codes"
  SELECT iso_a3 || '-' || id, name, pop_est, md5(iso_a3 || id)::uuid, ST_PointOnSurface(geom)
  FROM countries;
CREATE TABLE uuid_points (uid uuid PRIMARY KEY, name text, geom geometry(Point, 4326));
INSERT INTO uuid_points SELECT md5(iso_a3 || id)::uuid, name, ST_PointOnSurface(geom) FROM countries;
CREATE VIEW big_countries AS SELECT id, name, pop_est, geom FROM countries WHERE pop_est > 100000000;
CREATE TABLE two_geoms AS
  SELECT id, name, geom, ST_Centroid(geom)::geometry(Point, 4326) AS centre FROM countries;
ALTER TABLE two_geoms ADD PRIMARY KEY (id);
-- A view that takes about 50 ms a row, for the test of cancelling abandoned tile queries.
CREATE FUNCTION slow_true() RETURNS boolean LANGUAGE sql VOLATILE AS 'SELECT pg_sleep(0.05) IS NOT NULL';
CREATE VIEW slow_countries AS SELECT id, name, geom FROM countries WHERE slow_true();
ANALYZE;
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _db_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A fresh PostGIS database loaded with the test data."""
    url = fresh_database(TEST_DB)
    load_countries(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(DERIVED_SQL)
    return url


def load_countries(url: str) -> None:
    """PostGIS and Natural Earth countries (table ``countries``, key ``id``, ``geom``) in a new database."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    subprocess.run(
        [
            "ogr2ogr",
            "-f",
            "PostgreSQL",
            f"PG:{_libpq(url)}",
            str(natural_earth_countries()),
            "-nln",
            "countries",
            "-nlt",
            "PROMOTE_TO_MULTI",
            "-lco",
            "GEOMETRY_NAME=geom",
            "-lco",
            "FID=id",
        ],
        check=True,
    )


def fresh_database(name: str) -> str:
    """A new, empty database (dropped first if a run left it); its URL."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # noqa: S608 - test constant
        conn.execute(f'CREATE DATABASE "{name}"')
    return _db_url(name)


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # noqa: S608 - test constant


def _libpq(url: str) -> str:
    """A libpq keyword string from our URL, for GDAL's PG: prefix."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    return " ".join(f"{k}={v}" for k, v in info.items())


@pytest.fixture(scope="session")
def gpkg_path(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tables written to a GeoPackage by GDAL."""
    path = tmp_path_factory.mktemp("gpkg") / "test.gpkg"
    for table, extra in (
        ("countries", ["-nlt", "PROMOTE_TO_MULTI"]),
        ("country_points", []),
        ("countries_l93", []),
        ("countries_3857", []),
    ):
        subprocess.run(
            [
                "ogr2ogr",
                "-f",
                "GPKG",
                str(path),
                f"PG:{_libpq(pg_url)}",
                table,
                "-nln",
                table,
                *(["-update"] if path.exists() else []),
                "-lco",
                "FID=id",
                "-preserve_fid",
                *extra,
            ],
            check=True,
        )
    return path


def server_config(pg_url: str, gpkg_path: Path, port: int) -> dict:
    """Collections over both backends; ids carry dots and dashes on purpose."""
    collections = {}
    for prefix, source, key in (("pg", "pg", "table"), ("gpkg", "gpkg", "layer")):
        collections[f"{prefix}-countries"] = {"source": source, key: "countries", "title": "Countries"}
        collections[f"{prefix}.points"] = {
            "source": source,
            key: "country_points",
            "editable": True,
            "title": "Country points",
        }
        collections[f"{prefix}_l93"] = {"source": source, key: "countries_l93"}
        collections[f"{prefix}_3857"] = {"source": source, key: "countries_3857"}
    collections["pg_codes"] = {"source": "pg", "table": "Mixed Schema.Country Codes", "editable": True}
    collections["pg_uuid"] = {"source": "pg", "table": "uuid_points", "editable": True}
    collections["pg_view"] = {"source": "pg", "table": "big_countries", "id_column": "id"}
    collections["pg_centres"] = {"source": "pg", "table": "two_geoms", "geometry_column": "centre"}
    collections["pg_estimated"] = {"source": "pg_small_counts", "table": "countries"}
    collections["pg_slow"] = {
        "source": "pg",
        "table": "slow_countries",
        "id_column": "id",
        "geometry_column": "geom",
    }
    return {
        "server": {"bind": f"127.0.0.1:{port}", "workers": 2, "log_level": "WARNING", "limit_max": 100000},
        "sources": {
            "pg": {"type": "postgis", "url": pg_url, "pool_max": 4},
            # counts exactly only below 50 matches: the planner's estimate above
            "pg_small_counts": {"type": "postgis", "url": pg_url, "pool_max": 2, "exact_count_below": 50},
            "gpkg": {"type": "geopackage", "path": str(gpkg_path)},
        },
        "collections": collections,
        # Server-side files an admin may import by path (tests put them there).
        "imports": {"roots": [str(import_root(gpkg_path))]},
    }


def import_root(gpkg_path: Path) -> Path:
    """The directory the session server's importer may read files from by path."""
    root = gpkg_path.parent / "import-root"
    root.mkdir(exist_ok=True)
    return root


#: Headless Chromium as this machine can run it (as root, no network, no desktop services).
HEADLESS_CHROMIUM = [
    "--headless",
    "--no-sandbox",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium() -> list[str]:
    """The Chromium executable and its headless flags; scripts/test.sh installs it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed (scripts/test.sh installs it)")
    return [found, *HEADLESS_CHROMIUM]


class Server:
    """A geoharbor process under gunicorn, reachable at ``url``."""

    def __init__(self, config: dict, workdir: Path) -> None:
        self.config_path = workdir / "geoharbor.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.url = "http://" + config["server"]["bind"]
        self.log = open(workdir / "server.log", "w+b")  # noqa: SIM115 - closed in stop()
        exe = shutil.which("geoharbor", path=str(Path(sys.executable).parent)) or "geoharbor"
        self.process = subprocess.Popen(
            [exe, "serve", "-c", str(self.config_path), "--access-log"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.output()}")
            try:
                if requests.get(self.url + "/health", timeout=10).status_code in (200, 503):
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError(f"server did not start:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-5000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server(pg_url: str, gpkg_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("server")
    srv = Server(server_config(pg_url, gpkg_path, free_port()), workdir)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def base(server: Server) -> str:
    return server.url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The collection-id prefix of one backend; tests using it run on both."""
    return {"postgis": "pg", "geopackage": "gpkg"}[request.param]


@pytest.fixture()
def pg(pg_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn
