"""The loader: Natural Earth as GeoPackage, zipped Shapefile (EPSG:2154), GeoJSON and CSV/WKT,
written into PostGIS and a GeoPackage in each mode, and read back through the providers."""

from __future__ import annotations

import shutil
import subprocess
import uuid
import zipfile
from pathlib import Path

import psycopg
import pyogrio
import pytest
from psycopg import sql

from providers.base import Query
from providers.errors import Conflict, InvalidData, NotFound
from providers.geopackage import GeoPackage
from providers.geopackage_tables import GeoPackageTables
from providers.load_postgis import LOCK_SPACE, STAGING_PREFIX, cleanup_staging
from providers.loader import Mode, NoCRS, load
from providers.postgis import PostGISDatabase
from providers.postgis_tables import PostGISTables
from server.demo import natural_earth_countries

#: Natural Earth low-resolution countries, and the European ones the Shapefile holds.
COUNTRIES = 177
EUROPE = "continent = 'Europe'"


def _ogr(*args: str) -> None:
    subprocess.run(["ogr2ogr", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The test files, built with GDAL from Natural Earth."""
    out = tmp_path_factory.mktemp("loader-files")
    source = str(natural_earth_countries())
    made = {
        "gpkg": out / "countries.gpkg",
        "geojson": out / "countries.geojson",
        "csv": out / "countries.csv",
    }
    _ogr("-f", "GPKG", str(made["gpkg"]), source, "-nln", "countries", "-nlt", "PROMOTE_TO_MULTI")
    _ogr("-f", "GeoJSON", str(made["geojson"]), source, "-nln", "countries")
    _ogr("-f", "CSV", str(made["csv"]), source, "-lco", "GEOMETRY=AS_WKT")
    shp = out / "shp"
    shp.mkdir()
    _ogr("-f", "ESRI Shapefile", str(shp / "europe.shp"), source, "-t_srs", "EPSG:2154", "-where", EUROPE)
    made["shp"] = out / "europe.zip"
    with zipfile.ZipFile(made["shp"], "w") as zipped:
        for part in shp.iterdir():
            zipped.write(part, part.name)
    made["shp_dir"] = shp
    return made


@pytest.fixture(scope="module")
def db(pg_url: str) -> PostGISDatabase:
    database = PostGISDatabase(pg_url, pool_max=2)
    yield database
    database.close()


@pytest.fixture()
def gpkg(tmp_path: Path) -> GeoPackage:
    """An empty GeoPackage as GDAL makes one (metadata tables, no layer left)."""
    path = tmp_path / "target.gpkg"
    _ogr("-f", "GPKG", str(path), str(natural_earth_countries()), "-nln", "seed", "-where", "1 = 0")
    package = GeoPackage(path)
    GeoPackageTables(package, "gpkg").drop("seed")
    yield package
    package.close()


def _sql(template: str, *names: str) -> sql.Composed:
    return sql.SQL(template).format(*(sql.Identifier(n) for n in names))


def _name() -> str:
    return f"loaded_{uuid.uuid4().hex[:10]}"


def _staging(pg: psycopg.Connection) -> list[str]:
    rows = pg.execute("SELECT relname FROM pg_class WHERE starts_with(relname, %s)", (STAGING_PREFIX,))
    return [r[0] for r in rows.fetchall()]


def _features(provider, **query) -> list[dict]:
    import orjson

    return [orjson.loads(f) for f in provider.query(Query(limit=1000, **query)).features]


# -- PostGIS ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "srs", "expected", "srid"),
    [
        ("gpkg", None, COUNTRIES, 4326),
        ("shp", None, None, 2154),
        ("geojson", None, COUNTRIES, 4326),
        ("csv", "EPSG:4326", COUNTRIES, 4326),
    ],
)
def test_each_format_into_postgis(files, db, pg, fmt, srs, expected, srid):
    name = _name()
    seen = []
    result = load(files[fmt], None, db, name, "create", progress=lambda d, t: seen.append((d, t)), srs=srs)
    expected = expected or pyogrio.read_info(files["shp_dir"] / "europe.shp")["features"]
    assert (result.table, result.features, result.srid) == (f"public.{name}", expected, srid)
    assert seen[-1] == (expected, expected)
    found = pg.execute(
        _sql("SELECT count(*), min(ST_SRID(geom)), bool_and(NOT ST_IsEmpty(geom)), max(id) FROM {}", name)
    ).fetchone()
    assert found == (expected, srid, True, expected)
    kind = pg.execute(
        "SELECT type FROM geometry_columns WHERE f_table_name = %s AND f_geometry_column = 'geom'", (name,)
    ).fetchone()[0]
    # The Shapefile's "Polygon" layer holds multipolygons: the column is multi, singles are wrapped.
    assert kind == ("MULTIPOLYGON" if fmt in ("gpkg", "shp") else "GEOMETRY" if fmt == "csv" else kind)
    indexes = {r[0] for r in pg.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", (name,))}
    assert any("USING gist (geom)" in i for i in indexes) and any("(id)" in i for i in indexes)
    assert pg.execute("SELECT reltuples > 0 FROM pg_class WHERE relname = %s", (name,)).fetchone()[0], (
        "ANALYZE ran"
    )

    provider = PostGISTables(db, "pg").provider(name, editable=False)
    france = _features(provider, equals={"name": "France"})
    assert len(france) == 1
    points = [p for polygon in france[0]["geometry"]["coordinates"] for ring in polygon for p in ring]
    # Read back in CRS84 whatever the storage CRS: Paris is in France's box.
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    assert min(xs) < 2.35 < max(xs) and min(ys) < 48.85 < max(ys)
    assert france[0]["properties"]["continent"] == "Europe"
    assert _staging(pg) == []


def test_columns_are_typed_and_named_safely(tmp_path, db, pg):
    path = tmp_path / "typed.geojson"
    path.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": '
        '{"Name Ü": "a", "id": 7, "2nd": 1.5, "ok": true, "day": "2024-05-01", '
        '"at": "2024-05-01T10:00:00Z", "tags": [1, 2]}, '
        '"geometry": {"type": "Point", "coordinates": [1, 2]}}]}'
    )
    name = _name()
    load(path, None, db, name, "create")
    columns = dict(
        pg.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s", (name,)
        ).fetchall()
    )
    assert columns == {
        "id": "bigint",
        "name_u": "text",
        "id_2": "integer",
        "_2nd": "double precision",
        "ok": "boolean",
        "day": "date",
        "at": "timestamp with time zone",
        "tags": "jsonb",
        "geom": "USER-DEFINED",
    }
    row = pg.execute(
        _sql("SELECT id_2, _2nd, ok, day::text, at, tags, ST_AsText(geom) FROM {}", name)
    ).fetchone()
    assert row[:4] == (7, 1.5, True, "2024-05-01")
    assert row[4].isoformat() == "2024-05-01T10:00:00+00:00" and row[5] == [1, 2] and row[6] == "POINT(1 2)"


def test_modes_in_postgis(files, db, pg):
    name = _name()
    load(files["gpkg"], None, db, name, Mode.CREATE)
    revision = pg.execute("SELECT revision FROM geoharbor.revisions WHERE source = %s", (f"public.{name}",))
    assert revision.fetchone()[0] == 1
    with pytest.raises(Conflict):
        load(files["geojson"], None, db, name, Mode.CREATE)

    # APPEND the Shapefile in EPSG:2154 to the 4326 table: transformed, ids continue.
    europe = load(files["shp"], None, db, name, Mode.APPEND).features
    count, srids, max_id = pg.execute(
        _sql("SELECT count(*), count(DISTINCT ST_SRID(geom)), max(id) FROM {}", name)
    ).fetchone()
    assert (count, srids, max_id) == (COUNTRIES + europe, 1, COUNTRIES + europe)
    paris = pg.execute(
        _sql(
            "SELECT count(*) FROM {} WHERE name = 'France' AND "
            "ST_Contains(geom, ST_SetSRID(ST_MakePoint(2.35, 48.85), 4326))",
            name,
        )
    ).fetchone()[0]
    assert paris == 2

    # REPLACE with the European subset: the table now holds only it, tiles see a new revision.
    load(files["shp"], None, db, name, Mode.REPLACE)
    count, srid = pg.execute(_sql("SELECT count(*), min(ST_SRID(geom)) FROM {}", name)).fetchone()
    assert (count, srid) == (europe, 2154)
    assert (
        pg.execute(
            "SELECT revision FROM geoharbor.revisions WHERE source = %s", (f"public.{name}",)
        ).fetchone()[0]
        == 3
    )
    names = {r[0] for r in pg.execute("SELECT relname FROM pg_class WHERE relname LIKE %s", (f"{name}%",))}
    assert names == {name, f"{name}_pkey", f"{name}_geom_idx", f"{name}_id_seq"}
    assert _staging(pg) == []


def test_replace_keeps_a_table_views_depend_on(files, db, pg):
    name = _name()
    load(files["gpkg"], None, db, name, Mode.CREATE)
    pg.execute(_sql("CREATE VIEW {} AS SELECT id, name FROM {}", f"{name}_v", name))
    load(files["geojson"], None, db, name, Mode.REPLACE)
    assert pg.execute(_sql("SELECT count(*) FROM {}", f"{name}_v")).fetchone()[0] == COUNTRIES
    assert pg.execute(_sql("SELECT min(id) FROM {}", name)).fetchone()[0] > COUNTRIES, (
        "rows replaced, table kept"
    )


def test_append_checks_columns_first(tmp_path, files, db, pg):
    name = _name()
    load(files["gpkg"], None, db, name, Mode.CREATE)
    path = tmp_path / "odd.geojson"
    path.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"name": 1, "x": 2},'
        ' "geometry": {"type": "Point", "coordinates": [1, 2]}}]}'
    )
    with pytest.raises(
        InvalidData, match="'name' holds integer values, the table's column is text; 'x' is not a column"
    ):
        load(path, None, db, name, Mode.APPEND)
    with pytest.raises(NotFound):
        load(files["gpkg"], None, db, _name(), Mode.APPEND)
    assert pg.execute(_sql("SELECT count(*) FROM {}", name)).fetchone()[0] == COUNTRIES
    assert _staging(pg) == []


def test_bad_input_leaves_nothing(tmp_path, files, db, pg):
    name = _name()
    with pytest.raises(NoCRS, match="srs"):
        load(files["csv"], None, db, name, Mode.CREATE)
    # A Shapefile cut short (a broken upload), zipped.
    cut = tmp_path / "cut"
    shutil.copytree(files["shp_dir"], cut)
    shp = cut / "europe.shp"
    shp.write_bytes(shp.read_bytes()[: shp.stat().st_size // 2])
    with pytest.raises(InvalidData, match="truncated"):
        load(shp, None, db, name, Mode.CREATE)
    # A GeoPackage cut short: SQLite notices while the rows stream, after the COPY began.
    gpkg = tmp_path / "cut.gpkg"
    gpkg.write_bytes(files["gpkg"].read_bytes()[: files["gpkg"].stat().st_size * 2 // 3])
    with pytest.raises(InvalidData):
        load(gpkg, None, db, name, Mode.CREATE)
    assert pg.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None
    assert _staging(pg) == []


def test_cleanup_spares_a_load_in_progress(db, pg, pg_url):
    """Only staging tables whose loader is gone (its advisory lock free) are dropped."""
    alive, dead = f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}", f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
    pg.execute(_sql("CREATE TABLE {} (id int)", alive))
    pg.execute(_sql("CREATE TABLE {} (id int)", dead))
    with psycopg.connect(pg_url, autocommit=True) as owner:
        owner.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_SPACE, alive))
        assert f"public.{dead}" in cleanup_staging(db)
        assert _staging(pg) == [alive]
    assert cleanup_staging(db) == [f"public.{alive}"]


# -- GeoPackage ---------------------------------------------------------------------------------
def _gdal_info(gpkg: GeoPackage, layer: str) -> dict:
    """What GDAL reads of a layer. GDAL has its own SQLite library: our connections are
    closed first, as two SQLite libraries sharing a file in one process break its locks."""
    gpkg.close()
    return pyogrio.read_info(gpkg.path, layer=layer)


def _rtree_check(gpkg: GeoPackage, layer: str) -> str:
    return gpkg.connection().execute(f"SELECT rtreecheck('rtree_{layer}_geom')").fetchone()[0]


def test_modes_in_geopackage(files, gpkg):
    name = _name()
    result = load(files["gpkg"], None, gpkg, name, "create")
    assert (result.table, result.features) == (name, COUNTRIES)
    # What GDAL sees: a proper layer with its CRS, type, count and extent.
    info = _gdal_info(gpkg, name)
    assert (info["features"], info["geometry_type"], info["crs"]) == (COUNTRIES, "MultiPolygon", "EPSG:4326")
    assert info["total_bounds"][0] == pytest.approx(-180, abs=0.01)
    # The R-tree written packed is one SQLite and GDAL's spatial filter take as theirs.
    _meta, _fids, _geoms, (names,) = pyogrio.raw.read(
        gpkg.path, layer=name, columns=["name"], bbox=(2.3, 48.8, 2.4, 48.9)
    )
    assert list(names) == ["France"]
    assert _rtree_check(gpkg, name) == "ok"
    provider = GeoPackageTables(gpkg, "gpkg").provider(name, editable=False)
    france = _features(provider, equals={"name": "France"}, bbox=(2.3, 48.8, 2.4, 48.9))
    assert [f["properties"]["name"] for f in france] == ["France"]
    with pytest.raises(Conflict):
        load(files["geojson"], None, gpkg, name, "create")

    europe = load(files["shp"], None, gpkg, name, "append").features
    assert _gdal_info(gpkg, name)["features"] == COUNTRIES + europe
    found = _features(provider, equals={"name": "France"}, bbox=(2.3, 48.8, 2.4, 48.9))
    assert len(found) == 2, "the appended (reprojected) France is found through the R-tree too"
    assert _rtree_check(gpkg, name) == "ok"

    load(files["shp"], None, gpkg, name, "replace")
    info = _gdal_info(gpkg, name)
    assert (info["features"], info["crs"]) == (europe, "EPSG:2154")


def test_bad_input_in_geopackage_leaves_nothing(tmp_path, files, gpkg):
    name = _name()
    with pytest.raises(NoCRS):
        load(files["csv"], None, gpkg, name, "create")
    cut = tmp_path / "cut.gpkg"
    cut.write_bytes(files["gpkg"].read_bytes()[: files["gpkg"].stat().st_size * 2 // 3])
    with pytest.raises(InvalidData):
        load(cut, None, gpkg, name, "create")
    assert GeoPackageTables(gpkg, "gpkg").names() == []
    tables = gpkg.connection().execute("SELECT name FROM sqlite_master WHERE name LIKE 'loaded%'").fetchall()
    assert tables == []
