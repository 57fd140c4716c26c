"""Capabilities: every one run on PostGIS (one SQL statement) and on GeoPackage (shapely and
pyarrow) over the same Natural Earth tables gives the same features; chains; refreshes;
refusals.

The PostGIS run writes into the schema ``capabilities`` of the test database, the
GeoPackage run into a copy of the session's GeoPackage; both results are read back
through the providers and compared feature by feature: same ids, same attributes (reals
to 1e-6), geometries within a small Hausdorff distance.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import shapely
from psycopg import sql

from providers import capabilities
from providers.base import Query
from providers.capabilities import Step, run
from providers.capabilities.chain import Plan
from providers.capabilities.metric import local_keys
from providers.capabilities.vector import storage_order
from providers.errors import Conflict, InvalidData, InvalidQuery, NotFound
from providers.geopackage import GeoPackage, GeoPackageProvider
from providers.loader import Mode
from providers.postgis import PostGISDatabase, PostGISProvider, TableRef

SCHEMA = "capabilities"
COUNTRIES = 177
#: Tables derived from Natural Earth for these tests, made in PostGIS and copied to the GeoPackage.
DERIVED = """
CREATE SCHEMA capabilities;
CREATE TABLE capabilities.europe AS SELECT id, name, iso_a3, pop_est::bigint AS pop_est,
  geom::geometry(MultiPolygon, 4326) AS geom FROM countries WHERE continent = 'Europe';
ALTER TABLE capabilities.europe ADD PRIMARY KEY (id);
CREATE INDEX ON capabilities.europe USING gist (geom);
-- Coarse copies of the countries: snapping to a 2 degree grid makes some of them invalid.
CREATE TABLE capabilities.coarse AS
  SELECT id, name, ST_SnapToGrid(geom, 2)::geometry(MultiPolygon, 4326) AS geom
  FROM countries WHERE NOT ST_IsEmpty(ST_SnapToGrid(geom, 2));
ALTER TABLE capabilities.coarse ADD PRIMARY KEY (id);
-- Shapes without any attribute.
CREATE TABLE capabilities.shapes AS SELECT id, geom FROM countries;
ALTER TABLE capabilities.shapes ADD PRIMARY KEY (id);
CREATE INDEX ON capabilities.shapes USING gist (geom);
-- Editable copies for the refresh tests.
CREATE TABLE capabilities.points AS SELECT id, name, continent, pop_est, geom FROM country_points;
ALTER TABLE capabilities.points ADD PRIMARY KEY (id);
CREATE INDEX ON capabilities.points USING gist (geom);
"""


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def db(pg_url: str) -> Iterator[PostGISDatabase]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(DERIVED)
    database = PostGISDatabase(pg_url, pool_max=3)
    yield database
    database.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


@pytest.fixture(scope="module")
def gpkg(
    db: PostGISDatabase, gpkg_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GeoPackage]:
    """A copy of the session GeoPackage, with the derived tables written by GDAL."""
    path = tmp_path_factory.mktemp("capabilities") / "capabilities.gpkg"
    shutil.copy(gpkg_path, path)
    info = psycopg.conninfo.conninfo_to_dict(db.url)
    pg = "PG:" + " ".join(f"{k}={v}" for k, v in info.items())
    for table in ("europe", "coarse", "shapes", "points"):
        subprocess.run(
            ["ogr2ogr", "-f", "GPKG", str(path), pg, f"{SCHEMA}.{table}", "-nln", table, "-update"]
            + ["-lco", "FID=id", "-preserve_fid"],
            check=True,
            capture_output=True,
        )
    package = GeoPackage(path)
    yield package
    package.close()


def pg_provider(db: PostGISDatabase, table: str) -> PostGISProvider:
    schema, _, name = table.rpartition(".")
    ref = TableRef(schema or "public", name, "geom")
    return PostGISProvider(db, ref, db.describe(ref))


def gpkg_provider(gpkg: GeoPackage, table: str) -> GeoPackageProvider:
    name = table.rpartition(".")[2]
    return GeoPackageProvider(gpkg, name, gpkg.describe(name))


Row = tuple[dict[str, Any], Any]


def read_back(provider: Any) -> dict[int, Row]:
    """Every feature of a result table: id -> (attributes, shapely geometry)."""
    srid = provider.schema.storage_crs.srid
    header, rows = provider.records(Query(limit=10**7, crs=storage_order(srid)), geometry="wkb")
    out = {}
    for row in rows:
        geom = shapely.from_wkb(row[1]) if row[1] is not None else None
        out[int(row[0])] = (dict(zip(header[2:], row[2:], strict=True)), geom)
    return out


class Engines:
    """Runs a chain on both backends and reads both results back."""

    def __init__(self, db: PostGISDatabase, gpkg: GeoPackage) -> None:
        self.db = db
        self.gpkg = gpkg
        self.made = 0

    def name(self, hint: str) -> str:
        self.made += 1
        return f"{hint}_{self.made}"

    def run_pg(
        self, steps: list[Step], source: str, others: tuple[str, ...] = (), **kw: Any
    ) -> tuple[Any, dict]:
        table = f"{SCHEMA}.{self.name(steps[0].capability)}"
        result = run(
            steps,
            pg_provider(self.db, source),
            {o: pg_provider(self.db, o) for o in others},
            self.db,
            table,
            **kw,
        )
        return result, read_back(pg_provider(self.db, table))

    def run_gpkg(
        self, steps: list[Step], source: str, others: tuple[str, ...] = (), **kw: Any
    ) -> tuple[Any, dict]:
        table = self.name(steps[0].capability)
        result = run(
            steps,
            gpkg_provider(self.gpkg, source),
            {o: gpkg_provider(self.gpkg, o) for o in others},
            self.gpkg,
            table,
            **kw,
        )
        return result, read_back(gpkg_provider(self.gpkg, table))


@pytest.fixture(scope="module")
def engines(db: PostGISDatabase, gpkg: GeoPackage) -> Engines:
    return Engines(db, gpkg)


def steps(*pairs: tuple[str, dict[str, Any]]) -> list[Step]:
    return [Step(name, capabilities.validate(name, config)) for name, config in pairs]


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is None and b is None
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-6)
    return a == b


def _geometries_close(a: Any, b: Any, tolerance: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if a.is_empty or b.is_empty:
        return a.is_empty and b.is_empty
    if a.geom_type != b.geom_type:
        return False
    return shapely.hausdorff_distance(a, b) <= tolerance


def assert_same(pg: dict[int, Row], gp: dict[int, Row], tolerance: float) -> None:
    assert sorted(pg) == sorted(gp), f"ids differ: {sorted(set(pg) ^ set(gp))[:10]}"
    for fid in pg:
        (pg_attrs, pg_geom), (gp_attrs, gp_geom) = pg[fid], gp[fid]
        assert list(pg_attrs) == list(gp_attrs)
        for name in pg_attrs:
            assert _values_equal(pg_attrs[name], gp_attrs[name]), (fid, name, pg_attrs[name], gp_attrs[name])
        assert _geometries_close(pg_geom, gp_geom, tolerance), (
            fid,
            pg_geom and pg_geom.wkt[:200],
            gp_geom and gp_geom.wkt[:200],
        )


# -- parity: every capability, both engines --------------------------------------------------------
#: (capability, config, source table, other tables, geometry tolerance in the data's units)
CASES: list[tuple[str, dict[str, Any], str, tuple[str, ...], float]] = [
    ("buffer", {"distance": 50_000}, "country_points", (), 1e-6),
    # GEOS 3.11 (PostGIS) and 3.14 (shapely) place a few arc vertices differently: metres apart on
    # arcs whose chords are already 400 m off the true circle.
    ("buffer", {"distance": 20_000, "quad_segs": 4}, "countries", (), 1e-4),
    ("buffer", {"distance": 1000}, "countries_l93", (), 1e-3),
    ("reproject", {"crs": "EPSG:4326"}, "countries_l93", (), 1e-7),
    ("reproject", {"crs": "http://www.opengis.net/def/crs/EPSG/0/3857"}, "country_points", (), 1e-3),
    # Two GEOS versions simplify ring ends differently; both stay within the tolerance.
    ("simplify", {"tolerance": 0.5}, "countries", (), 0.5),
    ("centroid", {}, "countries", (), 1e-7),
    ("point_on_surface", {}, "countries", (), 1e-7),
    ("convex_hull", {}, "countries", (), 1e-7),
    ("envelope", {}, "countries", (), 1e-9),
    ("make_valid", {}, f"{SCHEMA}.coarse", (), 1e-7),
    ("snap_to_grid", {"size": 1}, "countries", (), 1e-9),
    ("explode", {}, "countries", (), 1e-9),
    (
        "dissolve",
        {
            "by": ["continent"],
            "aggregates": [
                {"function": "count"},
                {"function": "sum", "column": "pop_est", "as": "population"},
                {"function": "max", "column": "name"},
                {"function": "avg", "column": "gdp_md_est"},
            ],
        },
        "countries",
        (),
        1e-7,
    ),
    ("clip", {"bbox": [-10, 35, 30, 60]}, "countries", (), 1e-9),
    ("clip", {"other": f"{SCHEMA}.europe"}, "countries", (f"{SCHEMA}.europe",), 1e-7),
    (
        "intersection",
        {"other": f"{SCHEMA}.europe", "columns": ["name"]},
        "countries",
        (f"{SCHEMA}.europe",),
        1e-7,
    ),
    ("difference", {"other": f"{SCHEMA}.europe"}, "countries", (f"{SCHEMA}.europe",), 1e-7),
    (
        "spatial_join",
        {
            "other": "country_points",
            "aggregates": [
                {"function": "count"},
                {"function": "min", "column": "name", "as": "first_name"},
            ],
        },
        "countries",
        ("country_points",),
        1e-9,
    ),
    (
        "spatial_join",
        {
            "other": f"{SCHEMA}.europe",
            "predicate": "dwithin",
            "distance": 300_000,
            "aggregates": [{"function": "count"}, {"function": "sum", "column": "pop_est"}],
            "keep_unmatched": False,
        },
        "country_points",
        (f"{SCHEMA}.europe",),
        1e-9,
    ),
    (
        "spatial_join",
        {"other": "country_points", "predicate": "dwithin", "distance": 500},
        "countries_l93",
        ("country_points",),
        1e-9,
    ),
    (
        "spatial_join",
        {"other": "country_points", "predicate": "contains"},
        "countries_l93",
        ("country_points",),
        1e-9,
    ),
    ("point_in_polygon", {"other": "country_points"}, "countries", ("country_points",), 1e-9),
    (
        "nearest",
        {"other": "country_points", "k": 3, "columns": ["name"]},
        "country_points",
        ("country_points",),
        1e-9,
    ),
    ("filter", {"cql": "continent = 'Europe' AND pop_est > 10000000"}, "countries", (), 1e-9),
    ("filter", {"cql": {"op": "like", "args": [{"property": "name"}, "S%"]}}, "country_points", (), 1e-9),
    # Spatial predicates: PostGIS through the compiler, Python with shapely, literals in CRS84.
    (
        "filter",
        {"cql": "S_INTERSECTS(geom, BBOX(-10, 35, 30, 60)) AND pop_est > 5000000"},
        "countries",
        (),
        1e-9,
    ),
    (
        "filter",
        {"cql": "NOT S_WITHIN(geom, POLYGON((-30 -40, 60 -40, 60 40, -30 40, -30 -40))) OR name = 'Chad'"},
        "country_points",
        (),
        1e-9,
    ),
    (
        "compute",
        {"name": "northern", "expression": "S_INTERSECTS(geometry, BBOX(-180, 0, 180, 90))"},
        "countries",
        (),
        1e-9,
    ),
    ("select", {"columns": ["name", "iso_a3"]}, "countries", (), 1e-9),
    ("rename", {"columns": {"name": "country", "iso_a3": "code"}}, "countries", (), 1e-9),
    ("compute", {"name": "pop_k", "expression": "pop_est / 1000"}, "countries", (), 1e-9),
    # Integers divide as real numbers (CQL2), not as PostgreSQL's integer division.
    ("compute", {"name": "seventh", "expression": "pop_est / 7 + 1"}, "country_points", (), 1e-9),
    (
        "compute",
        {"name": "big", "expression": "pop_est > 100000000 OR casei(continent) = 'oceania'"},
        "countries",
        (),
        1e-9,
    ),
    ("area", {}, "countries", (), 1e-9),
    ("length", {"name": "perimeter"}, "countries_l93", (), 1e-9),
    (
        "grid",
        {"size": 10, "aggregates": [{"function": "count"}, {"function": "sum", "column": "pop_est"}]},
        "country_points",
        (),
        1e-9,
    ),
    ("grid", {"size": 20}, "countries", (), 1e-9),
    ("hexagon", {"size": 10}, "country_points", (), 1e-9),
    ("hexagon", {"size": 15, "aggregates": [{"function": "max", "column": "name"}]}, "countries", (), 1e-9),
    ("voronoi", {}, "country_points", (), 1e-7),
    ("dedupe", {"by": ["continent"], "geometry": False}, "countries", (), 1e-9),
    # Collections without attributes, as source and as the other collection.
    ("explode", {}, f"{SCHEMA}.shapes", (), 1e-9),
    ("point_in_polygon", {"other": "country_points"}, f"{SCHEMA}.shapes", ("country_points",), 1e-9),
    ("spatial_join", {"other": f"{SCHEMA}.shapes"}, "country_points", (f"{SCHEMA}.shapes",), 1e-9),
    ("intersection", {"other": f"{SCHEMA}.shapes"}, f"{SCHEMA}.europe", (f"{SCHEMA}.shapes",), 1e-7),
    ("nearest", {"other": f"{SCHEMA}.shapes", "k": 2}, f"{SCHEMA}.shapes", (f"{SCHEMA}.shapes",), 1e-9),
    ("dissolve", {}, f"{SCHEMA}.shapes", (), 1e-7),
]


@pytest.mark.parametrize(
    ("capability", "config", "source", "others", "tolerance"),
    CASES,
    ids=[f"{c[0]}-{n}" for n, c in enumerate(CASES)],
)
def test_parity(
    engines: Engines,
    capability: str,
    config: dict[str, Any],
    source: str,
    others: tuple[str, ...],
    tolerance: float,
) -> None:
    chain = steps((capability, config))
    pg_result, pg = engines.run_pg(chain, source, others)
    gp_result, gp = engines.run_gpkg(chain, source, others)
    assert pg_result.features == len(pg) and gp_result.features == len(gp)
    assert len(pg) > 0
    assert pg_result.geometry_type == gp_result.geometry_type
    assert pg_result.srid == gp_result.srid
    assert [c.name for c in pg_result.columns] == [c.name for c in gp_result.columns]
    assert_same(pg, gp, tolerance)


def test_every_capability_has_a_parity_case() -> None:
    assert {c[0] for c in CASES} == set(capabilities.CAPABILITIES)
    assert len(capabilities.CAPABILITIES) >= 25


# -- chains ---------------------------------------------------------------------------------------------
def test_a_chain_of_three_rules_is_one_statement_in_postgis_and_agrees_with_python(engines: Engines) -> None:
    chain = steps(
        ("filter", {"cql": "continent = 'Africa'"}),
        ("buffer", {"distance": 10_000}),
        ("dissolve", {"aggregates": [{"function": "count"}, {"function": "sum", "column": "pop_est"}]}),
    )
    statement, _ = Plan(chain, pg_provider(engines.db, "countries"), {}).statement(None)
    text = statement.as_string(None)
    assert text.startswith("WITH s0 AS (") and all(f'"s{n}" AS (' in text for n in (1, 2, 3))
    pg_result, pg = engines.run_pg(chain, "countries")
    gp_result, gp = engines.run_gpkg(chain, "countries")
    assert pg_result.features == gp_result.features == 1
    assert pg_result.geometry_type == "MULTIPOLYGON"
    (attrs, geom) = pg[1]
    assert attrs["count"] == 51  # African countries in Natural Earth's low resolution set
    assert geom.is_valid and geom.area > 2000  # square degrees: Africa and its islands
    assert_same(pg, gp, 1e-6)


def test_buffers_are_metres_on_the_ground_in_both_engines(engines: Engines) -> None:
    """A 50 km buffer of a point, measured geodesically: the area of a 32-gon of that radius."""
    chain = steps(("buffer", {"distance": 50_000}), ("area", {}))
    expected = 16 * math.sin(2 * math.pi / 32) * 50_000**2
    for _, rows in (engines.run_pg(chain, "country_points"), engines.run_gpkg(chain, "country_points")):
        areas = [attrs["area"] for attrs, geom in rows.values() if geom is not None]
        assert len(areas) == COUNTRIES
        assert all(abs(area / expected - 1) < 0.005 for area in areas), (min(areas), max(areas), expected)


def test_points_are_measured_in_their_utm_zone_and_wide_shapes_around_their_centre() -> None:
    geoms = shapely.from_wkt(
        ["POINT (2.35 48.85)", "POINT (-70.6 -33.4)", "LINESTRING (-10 40, 20 50)", None]
    )
    keys = local_keys(geoms)
    assert keys[0] == "EPSG:32631" and keys[1] == "EPSG:32719"
    assert keys[2].startswith("+proj=aeqd +lat_0=45.0 +lon_0=5.0 ")
    assert keys[3] is None


def test_snapping_then_deduping_geometries(engines: Engines) -> None:
    chain = steps(("centroid", {}), ("snap_to_grid", {"size": 30}), ("dedupe", {}))
    pg_result, pg = engines.run_pg(chain, "countries")
    _, gp = engines.run_gpkg(chain, "countries")
    assert_same(pg, gp, 1e-9)
    points = [geom for _, geom in pg.values()]
    assert len({p.wkb for p in points}) == len(points) < COUNTRIES
    assert all(x % 30 == 0 and y % 30 == 0 for p in points for x, y in p.coords)
    assert pg_result.columns[0].name == "pop_est"


def test_postgis_data_can_be_written_into_a_geopackage_and_back(engines: Engines) -> None:
    """The Python engine reads any provider: PostGIS into GeoPackage, GeoPackage into PostGIS."""
    chain = steps(("filter", {"cql": "continent = 'Asia'"}), ("convex_hull", {}), ("area", {}))
    _, in_postgis = engines.run_pg(chain, "countries")
    table = engines.name("mixed")
    run(chain, pg_provider(engines.db, "countries"), {}, engines.gpkg, table)
    assert_same(in_postgis, read_back(gpkg_provider(engines.gpkg, table)), 1e-9)
    back = f"{SCHEMA}.{engines.name('mixed')}"
    result = run(chain, gpkg_provider(engines.gpkg, "countries"), {}, engines.db, back)
    assert result.table == back and result.mode is Mode.CREATE
    assert_same(in_postgis, read_back(pg_provider(engines.db, back)), 1e-9)


def test_a_run_over_some_ids_reports_progress(engines: Engines) -> None:
    chain = steps(("centroid", {}))
    seen: list[tuple[int, int]] = []
    for runner in (engines.run_pg, engines.run_gpkg):
        seen.clear()
        result, rows = runner(chain, "countries", ids=[3, 1, 2], progress=lambda d, t: seen.append((d, t)))
        assert sorted(rows) == [1, 2, 3] and result.features == 3
        assert seen[-1] == (3, 3)


# -- refresh (DML triggers) ------------------------------------------------------------------------
ROWWISE = [("buffer", {"distance": 10_000}), ("compute", {"name": "pop_k", "expression": "pop_est / 1000"})]


def _point_moved(rows: dict[int, Row], fid: int, x: float, y: float) -> bool:
    return rows[fid][1].centroid.distance(shapely.Point(x, y)) < 1e-3


def test_refresh_recomputes_changed_features_in_postgis(engines: Engines) -> None:
    chain = steps(*ROWWISE)
    source = pg_provider(engines.db, f"{SCHEMA}.points")
    table = f"{SCHEMA}.{engines.name('refresh')}"
    run(chain, source, {}, engines.db, table)
    before = read_back(pg_provider(engines.db, table))
    revision = engines.db.revisions([table])[table]
    with psycopg.connect(engines.db.url, autocommit=True) as conn:
        points = sql.Identifier(SCHEMA, "points")
        conn.execute(
            sql.SQL("UPDATE {} SET pop_est = 5000, geom = ST_Point(10, 10, 4326) WHERE id = 1").format(points)
        )
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(points))
    written = capabilities.refresh(chain, source, {}, engines.db, table, [1, 2])
    after = read_back(pg_provider(engines.db, table))
    assert written == 1
    assert 2 in before and 2 not in after and len(after) == len(before) - 1
    assert after[1][0]["pop_k"] == 5.0 and _point_moved(after, 1, 10, 10)
    assert after[3] == before[3]
    assert engines.db.revisions([table])[table] == revision + 1


def test_refresh_recomputes_changed_features_in_a_geopackage(engines: Engines) -> None:
    chain = steps(*ROWWISE)
    package = engines.gpkg
    source = GeoPackageProvider(package, "points", package.describe("points"), editable=True)
    table = engines.name("refresh")
    run(chain, source, {}, package, table)
    before = read_back(gpkg_provider(package, table))
    revision = package.revision(table)
    source.update(
        "1", {"properties": {"pop_est": 5000}, "geometry": {"type": "Point", "coordinates": [10, 10]}}
    )
    source.delete("2")
    written = capabilities.refresh(chain, source, {}, package, table, [1, 2])
    after = read_back(gpkg_provider(package, table))
    assert written == 1
    assert 2 in before and 2 not in after and len(after) == len(before) - 1
    assert after[1][0]["pop_k"] == 5.0 and _point_moved(after, 1, 10, 10)
    assert after[3] == before[3]
    assert package.revision(table) == revision + 1
    # The R-tree follows: the moved feature is found where it now is.
    provider = gpkg_provider(package, table)
    page = provider.query(Query(bbox=(9.9, 9.9, 10.1, 10.1)))
    assert [orjson_id(f) for f in page.features] == [1]


def orjson_id(feature: bytes) -> Any:
    import orjson

    return orjson.loads(feature)["id"]


def test_refresh_refuses_a_chain_that_is_not_rowwise(engines: Engines) -> None:
    chain = steps(("buffer", {"distance": 10}), ("dissolve", {}))
    with pytest.raises(InvalidQuery, match="not row-wise .*dissolve"):
        capabilities.refresh(chain, pg_provider(engines.db, "countries"), {}, engines.db, "x", [1])


# -- the interface and refusals ------------------------------------------------------------------------
def test_capabilities_describe_themselves() -> None:
    buffer = capabilities.get("buffer")
    assert buffer.name == "buffer" and buffer.rowwise and buffer.inputs == ()
    assert buffer.schema["$schema"].endswith("2020-12/schema")
    assert "metres" in buffer.schema["properties"]["distance"]["description"]
    assert capabilities.get("spatial_join").inputs == ("other",)
    assert not capabilities.get("dissolve").rowwise
    with pytest.raises(NotFound):
        capabilities.get("teleport")
    # The examples of the product's own text are valid configs.
    assert capabilities.validate("buffer", {"distance": 50}) == {"distance": 50, "quad_segs": 8}
    assert capabilities.validate("reproject", {"crs": "EPSG:2154"}) == {"crs": "EPSG:2154"}


@pytest.mark.parametrize(
    ("capability", "config", "message"),
    [
        ("buffer", {"distance": -1}, "config.distance: -1 is less than the minimum of 0"),
        ("buffer", {}, "config.distance: a value is required"),
        ("buffer", {"distance": "far"}, "config.distance: 'far' is not of type 'number'"),
        ("buffer", {"distance": 1, "radius": 2}, "config.radius: not a setting"),
        ("reproject", {"crs": "EPSG:0"}, "config.crs: unsupported CRS"),
        ("clip", {}, "config.bbox: give either a bbox or another collection"),
        ("clip", {"bbox": [10, 0, 0, 10]}, "config.bbox: min x must be less than max x"),
        ("spatial_join", {"other": "x", "predicate": "dwithin"}, "config.distance: a value is required"),
        (
            "spatial_join",
            {"other": "x", "aggregates": [{"function": "median"}]},
            "config.aggregates[0].function",
        ),
        ("dedupe", {"geometry": False}, "config.by: name attributes"),
        (
            "filter",
            {"cql": "S_INTERSECTS(geom, name)"},
            "config.cql: s_intersects needs a GeoJSON geometry or a BBOX literal",
        ),
        ("filter", {"cql": "name ="}, "config.cql: not CQL2"),
        ("compute", {"name": "id", "expression": "1"}, "config.name: column name 'id' is reserved"),
    ],
)
def test_invalid_configs_name_the_field(capability: str, config: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidData) as caught:
        capabilities.validate(capability, config)
    assert caught.value.status == 422
    assert caught.value.message.startswith(message), caught.value.message


@pytest.mark.parametrize("backend", ["postgis", "geopackage"])
@pytest.mark.parametrize(
    ("chain", "others", "message"),
    [
        ([("dissolve", {"by": ["nope"]})], (), "step 1 (dissolve): config.by[0]: 'nope' is not an attribute"),
        ([("centroid", {}), ("voronoi", {})], (), None),
        (
            [("centroid", {}), ("clip", {"other": "elsewhere"})],
            (),
            "step 2 (clip): config.other: no collection",
        ),
        ([("filter", {"cql": "pop_est + 1"})], (), "step 1 (filter): config.cql: is not a condition"),
        ([("voronoi", {})], (), "step 1 (voronoi): config: voronoi needs points"),
        ([("rename", {"columns": {"name": "continent"}})], (), "step 1 (rename): the output would have two"),
    ],
)
def test_chains_are_checked_against_the_data_before_anything_runs(
    engines: Engines, backend: str, chain: list, others: tuple, message: str | None
) -> None:
    provider = (pg_provider if backend == "postgis" else gpkg_provider)(
        engines.db if backend == "postgis" else engines.gpkg, "countries"
    )
    target = engines.db if backend == "postgis" else engines.gpkg
    table = engines.name("refused")
    name = f"{SCHEMA}.{table}" if backend == "postgis" else table
    if message is None:  # a valid chain: voronoi of centroids
        assert run(steps(*chain), provider, {}, target, name).features == COUNTRIES
        return
    with pytest.raises(InvalidData, match=re.escape(message)):
        run(steps(*chain), provider, {}, target, name)
    assert not _exists(engines, backend, table)


def _exists(engines: Engines, backend: str, table: str) -> bool:
    if backend == "postgis":
        with psycopg.connect(engines.db.url) as conn:
            return conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{table}",)).fetchone()[0] is not None
    return table in engines.gpkg.discover()


@pytest.mark.parametrize("backend", ["postgis", "geopackage"])
def test_a_failing_chain_leaves_no_table_behind(engines: Engines, backend: str) -> None:
    chain = steps(("compute", {"name": "share", "expression": "pop_est / (pop_est - pop_est)"}))
    table = engines.name("failed")
    with pytest.raises(InvalidData, match="by zero"):
        if backend == "postgis":
            run(chain, pg_provider(engines.db, "countries"), {}, engines.db, f"{SCHEMA}.{table}")
        else:
            run(chain, gpkg_provider(engines.gpkg, "countries"), {}, engines.gpkg, table)
    assert not _exists(engines, backend, table)


@pytest.mark.parametrize("backend", ["postgis", "geopackage"])
def test_an_existing_table_is_a_conflict(engines: Engines, backend: str) -> None:
    chain = steps(("centroid", {}))
    if backend == "postgis":
        with pytest.raises(Conflict):
            run(chain, pg_provider(engines.db, "countries"), {}, engines.db, f"{SCHEMA}.europe")
    else:
        with pytest.raises(Conflict):
            run(chain, gpkg_provider(engines.gpkg, "countries"), {}, engines.gpkg, "europe")


def test_a_collection_without_an_integer_id_is_refused(engines: Engines) -> None:
    with pytest.raises(InvalidQuery, match="integer"):
        run(steps(("centroid", {})), pg_provider(engines.db, "uuid_points"), {}, engines.db, f"{SCHEMA}.u")


def test_a_new_geopackage_layer_is_indexed_and_counted_like_a_loaded_one(engines: Engines) -> None:
    package = engines.gpkg
    table = engines.name("indexed")
    result = run(steps(("explode", {})), gpkg_provider(package, "countries"), {}, package, table)
    layer = GeoPackageProvider(package, table, package.describe(table), editable=True)
    rows = read_back(layer)
    box = (-10.0, 35.0, 30.0, 60.0)
    expected = sorted(fid for fid, (_, geom) in rows.items() if shapely.intersects(geom, shapely.box(*box)))
    assert any("rtree_" in line for line in layer.explain(Query(bbox=box)))
    assert sorted(orjson_id(f) for f in layer.query(Query(bbox=box, limit=1000)).features) == expected
    conn = package.connection()
    assert conn.execute(f"SELECT rtreecheck('rtree_{table}_geom')").fetchone() == ("ok",)
    assert conn.execute(
        "SELECT feature_count FROM gpkg_ogr_contents WHERE table_name = ?", (table,)
    ).fetchone() == (result.features,)
    # Its triggers keep the index and the count as features are written.
    square = [[[-170.5, -80.5], [-169.5, -80.5], [-169.5, -79.5], [-170.5, -79.5], [-170.5, -80.5]]]
    layer.create(
        [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": square}}]
    )
    found = [orjson_id(f) for f in layer.query(Query(bbox=(-171, -81, -169, -79))).features]
    assert len(found) == 1 and found[0] not in rows
    assert conn.execute(
        "SELECT feature_count FROM gpkg_ogr_contents WHERE table_name = ?", (table,)
    ).fetchone() == (result.features + 1,)


def test_a_new_postgis_table_has_its_key_and_spatial_index(engines: Engines) -> None:
    result, _ = engines.run_pg(steps(("centroid", {})), "countries")
    with psycopg.connect(engines.db.url) as conn:
        indexes = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname || '.' || tablename = %s", (result.table,)
        )
        definitions = " ".join(row[0] for row in indexes)
        typmod = conn.execute(
            "SELECT type, srid FROM geometry_columns WHERE f_table_schema || '.' || f_table_name = %s",
            (result.table,),
        ).fetchone()
    assert "UNIQUE INDEX" in definitions and "USING gist (geom)" in definitions
    assert typmod == ("POINT", 4326)


@pytest.mark.parametrize("backend", ["postgis", "geopackage"])
def test_replace_swaps_the_table_and_keeps_ids_for_refresh(engines: Engines, backend: str) -> None:
    chain = steps(*ROWWISE)
    if backend == "postgis":
        source, target = pg_provider(engines.db, "country_points"), engines.db
        table = f"{SCHEMA}.{engines.name('replaced')}"
        read = lambda: read_back(pg_provider(engines.db, table))  # noqa: E731
    else:
        source, target = gpkg_provider(engines.gpkg, "country_points"), engines.gpkg
        table = engines.name("replaced")
        read = lambda: read_back(gpkg_provider(engines.gpkg, table))  # noqa: E731
    run(chain, source, {}, target, table, ids=[1, 2, 3])
    with pytest.raises(Conflict):
        run(chain, source, {}, target, table)
    result = run(chain, source, {}, target, table, mode="replace", ids=[2, 3, 4, 5])
    assert result.mode is Mode.REPLACE and sorted(read()) == [2, 3, 4, 5]
    assert capabilities.refresh(chain, source, {}, target, table, [5]) == 1
    with pytest.raises(InvalidQuery, match="append"):
        run(chain, source, {}, target, table, mode="append")
