"""``geoharbor import``: a file becomes a published collection (OGC items and tiles of the
session server), bad input exits 2 leaving nothing, and a load killed mid-way leaves no table."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pyogrio.raw
import pytest
import requests
import shapely
import yaml
from conftest import free_port, server_config

from providers.load_postgis import LOCK_SPACE, STAGING_PREFIX
from server.demo import natural_earth_countries

GEOHARBOR = shutil.which("geoharbor", path=str(Path(sys.executable).parent)) or "geoharbor"
#: Enough points that a load is still running well after its first batch is reported.
MANY = 600_000


@pytest.fixture(scope="module")
def config(pg_url: str, gpkg_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session server's sources and store (its PostgreSQL), without its collections:
    the command would describe each (one is a deliberately slow view) before importing."""
    path = tmp_path_factory.mktemp("import-config") / "geoharbor.yml"
    path.write_text(yaml.safe_dump({**server_config(pg_url, gpkg_path, free_port()), "collections": {}}))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("import-files")
    made = {"geojson": out / "countries.geojson", "csv": out / "countries.csv", "many": out / "many.gpkg"}
    source = str(natural_earth_countries())
    subprocess.run(["ogr2ogr", "-f", "GeoJSON", str(made["geojson"]), source], check=True)
    subprocess.run(
        [
            "ogr2ogr",
            "-f",
            "CSV",
            str(made["csv"]),
            source,
            "-lco",
            "GEOMETRY=AS_WKT",
            "-where",
            "pop_est > 1e8",
        ],
        check=True,
    )
    rng = np.random.default_rng(7)
    points = shapely.points(rng.uniform(-10, 10, MANY), rng.uniform(40, 50, MANY))
    pyogrio.raw.write(
        made["many"],
        shapely.to_wkb(points),
        [np.arange(MANY, dtype=np.int64), rng.uniform(0, 1, MANY)],
        ["n", "value"],
        driver="GPKG",
        layer="many",
        crs="EPSG:4326",
        geometry_type="Point",
    )
    return made


def _run(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GEOHARBOR, "import", *args, "-c", str(config)], capture_output=True, text=True, timeout=120
    )


def _name() -> str:
    return f"imported_{uuid.uuid4().hex[:10]}"


def _exists(pg: psycopg.Connection, table: str) -> bool:
    return pg.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None


def _staging(pg: psycopg.Connection) -> list[str]:
    rows = pg.execute("SELECT relname FROM pg_class WHERE starts_with(relname, %s)", (STAGING_PREFIX,))
    return [r[0] for r in rows.fetchall()]


def test_import_publishes_items_and_tiles(base, config, inputs, pg):
    name = _name()
    done = _run(config, str(inputs["geojson"]), "--table", name, "--title", "Imported countries")
    assert done.returncode == 0, done.stderr
    assert "177/177 features" in done.stderr and f"collection '{name}'" in done.stderr

    body = requests.get(f"{base}/collections/{name}/items", params={"limit": 2}, timeout=30).json()
    assert body.get("numberMatched") == 177, body and len(body["features"]) == 2
    coll = requests.get(f"{base}/collections/{name}", timeout=30).json()
    assert coll["title"] == "Imported countries"
    tile = requests.get(f"{base}/collections/{name}/tiles/WebMercatorQuad/0/0/0", timeout=30)
    assert tile.status_code == 200 and len(tile.content) > 1000

    # REPLACE with the CSV (no CRS in the file: --srs): same collection, new rows, at once.
    done = _run(config, str(inputs["csv"]), "--table", name, "--mode", "replace", "--srs", "EPSG:4326")
    assert done.returncode == 0, done.stderr
    big = pg.execute("SELECT count(*) FROM countries WHERE pop_est > 1e8").fetchone()[0]
    body = requests.get(f"{base}/collections/{name}/items", params={"limit": 1}, timeout=30).json()
    assert body["numberMatched"] == big < 177
    layers = pg.execute("SELECT count(*) FROM geoharbor.records WHERE kind = 'layer' AND key = %s", (name,))
    assert layers.fetchone()[0] == 1, "republished, not published twice"


def test_bad_input_exits_2_and_leaves_nothing(config, inputs, pg, tmp_path):
    name = _name()
    done = _run(config, str(inputs["csv"]), "--table", name)
    assert done.returncode == 2
    assert "coordinate reference system" in done.stderr and "srs" in done.stderr
    done = _run(config, str(tmp_path / "missing.gpkg"), "--table", name)
    assert done.returncode == 2 and "no file" in done.stderr
    cut = tmp_path / "cut.geojson"
    cut.write_bytes(inputs["geojson"].read_bytes()[:5000])
    done = _run(config, str(cut), "--table", name)
    assert done.returncode == 2 and "cannot be read" in done.stderr
    done = _run(config, str(inputs["geojson"]), "--table", "Bad Name")
    assert done.returncode == 2 and "not allowed" in done.stderr
    assert not _exists(pg, name)


def test_killed_import_leaves_no_table_and_the_next_run_cleans_up(config, inputs, pg):
    name = _name()
    process = subprocess.Popen(
        [GEOHARBOR, "import", str(inputs["many"]), "--table", name, "-c", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stderr.readline()  # the first progress line: the COPY is under way
        assert f"/{MANY:,} features" in line, line
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(30)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    # The server notices the dead client and ends its session (releasing its advisory lock).
    deadline = time.monotonic() + 20
    while pg.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s", (LOCK_SPACE,)
    ).fetchone()[0]:
        assert time.monotonic() < deadline, "the killed load's session did not end"
        time.sleep(0.1)
    assert not _exists(pg, name)
    left = _staging(pg)
    assert left, "the killed load left its (empty) staging table"

    done = _run(config, str(inputs["geojson"]), "--table", _name())
    assert done.returncode == 0, done.stderr
    assert not set(left) & set(_staging(pg))
    assert not _exists(pg, name)
