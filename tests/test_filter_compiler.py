"""Unit tests of the pure parts: CQL2 compilation to SQL, CRS names, parameter parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import orjson
import psycopg
import pytest

from providers.base import CollectionSchema, Field, Query
from providers.crs import CRS84, parse_crs
from providers.errors import InvalidQuery
from providers.filters import Compiler, parse_cql2
from providers.postgis import PostGISDialect
from server.params import parse_bbox, parse_datetime, parse_sortby

SCHEMA = CollectionSchema(
    id_field="id",
    geometry_field="geom",
    geometry_type="MULTIPOLYGON",
    storage_crs=CRS84,
    fields={
        "name": Field("name", "string"),
        "pop": Field("pop", "integer"),
        "area": Field("area", "number"),
        "seen": Field("seen", "string", "date-time"),
        "Odd Name": Field("Odd Name", "string"),
    },
    time_field="seen",
)


def compile_pg(query: Query, srid: int = 4326) -> tuple[str, dict]:
    dialect = PostGISDialect(srid)
    clause = Compiler(SCHEMA, dialect).where(query)
    # as_string needs no server for identifiers and placeholders
    return clause.as_string(None) if clause is not None else "", dialect.params


def cql(text: str) -> Query:
    return Query(filter=parse_cql2(text, "cql2-text"))


def test_values_are_bound_never_inlined():
    sql, params = compile_pg(cql("name = 'x''; DROP TABLE t; --' AND \"Odd Name\" LIKE 'a%'"))
    assert "DROP" not in sql and "%(p0)s" in sql
    assert '"Odd Name"' in sql
    assert params == {"p0": "x'; DROP TABLE t; --", "p1": "a%"}


def test_literals_take_the_column_type():
    _, params = compile_pg(cql("pop = 5 AND area > 1 AND name = 3"))
    assert params == {"p0": 5, "p1": 1.0, "p2": "3"}
    assert isinstance(params["p0"], int)
    with pytest.raises(InvalidQuery, match="pop"):
        compile_pg(cql("pop = 'many'"))


@pytest.mark.parametrize(
    "text",
    [
        "nope = 1",
        "S_INTERSECTS(name, POINT(0 0))",
        "ACCENTI(name) = 'a'",
        "T_AFTER(name, TIMESTAMP('2020-01-01T00:00:00Z'))",
    ],
)
def test_rejections(text):
    with pytest.raises(InvalidQuery):
        compile_pg(cql(text))


@pytest.mark.parametrize("text", ["name = ", "name = 'x'; DROP TABLE t", "(((", "name LIKE"])
def test_malformed_cql2(text):
    with pytest.raises(InvalidQuery, match="malformed"):
        parse_cql2(text, "cql2-text")


def test_spatial_literal_is_transformed_to_storage_srid():
    sql, params = compile_pg(cql("S_INTERSECTS(geom, POINT(2 48))"), srid=2154)
    assert "ST_Transform(ST_SetSRID(ST_GeomFromGeoJSON(%(p0)s), 4326), 2154)" in sql
    assert '"Point"' in params["p0"]


def test_bbox_in_lat_first_crs_is_swapped():
    _, params = compile_pg(Query(bbox=(46.0, 2.0, 47.0, 3.0), bbox_crs=parse_crs("EPSG:4326")))
    assert list(params.values()) == [2.0, 46.0, 3.0, 47.0]


def test_bbox_across_antimeridian_is_two_boxes():
    sql, params = compile_pg(Query(bbox=(170.0, -20.0, -170.0, -10.0)))
    assert sql.count("ST_MakeEnvelope") == 2 and " OR " in sql
    assert list(params.values()) == [170.0, -20.0, 180.0, -10.0, -180.0, -20.0, -170.0, -10.0]


def test_temporal_open_ends():
    sql, _ = compile_pg(cql("T_DURING(seen, INTERVAL('..', '2020-01-03T00:00:00Z'))"))
    # An open start is -infinity: "seen > start" is always true, only the end is compared.
    assert sql.count("%(") == 1 and "TRUE" in sql
    sql, _ = compile_pg(cql("T_AFTER(seen, INTERVAL('2020-01-01', '..'))"))
    # After an interval that never ends: nothing.
    assert "FALSE" in sql and "%(" not in sql


def test_nesting_is_bounded():
    text = " AND ".join(["pop = 1"] * 3000)
    with pytest.raises(InvalidQuery):
        compile_pg(cql(text))


def test_crs_names():
    assert parse_crs("http://www.opengis.net/def/crs/OGC/1.3/CRS84") == CRS84
    assert parse_crs("EPSG:4326").lat_first and not CRS84.lat_first
    assert parse_crs("urn:ogc:def:crs:EPSG::2154").srid == 2154
    assert not parse_crs("http://www.opengis.net/def/crs/EPSG/0/3857").lat_first
    for bad in ("EPSG:0", "EPSG:999999", "foo", "http://www.opengis.net/def/crs/EPSG/0/x"):
        with pytest.raises(InvalidQuery):
            parse_crs(bad)


def test_datetime_parameter():
    start, end = parse_datetime("2020-01-01")
    assert start == datetime(2020, 1, 1, tzinfo=UTC) and end.date() == start.date() and end > start
    assert parse_datetime("../2020-01-01T00:00:00Z")[0] is None
    assert parse_datetime("2020-01-01T00:00:00Z/..")[1] is None
    for bad in ("../..", "2021-01-01/2020-01-01", "soon", "2020-13-01"):
        with pytest.raises(InvalidQuery):
            parse_datetime(bad)


def test_bbox_and_sortby_parameters():
    assert parse_bbox("1,2,3,4") == (1.0, 2.0, 3.0, 4.0)
    assert len(parse_bbox("1,2,0,3,4,10")) == 6
    with pytest.raises(InvalidQuery):
        parse_bbox("1,4,3,2")
    assert parse_sortby("-pop,+name,area") == [("pop", False), ("name", True), ("area", True)]


def test_sql_is_valid_postgresql(pg_url):
    """The compiled clause runs in PostgreSQL (types and syntax), on an empty table."""
    query = cql(
        "(name LIKE 'a%' OR CASEI(name) = CASEI('B')) AND pop BETWEEN 1 AND 5 AND area IN (1.5, 2) "
        "AND NOT seen IS NULL AND T_INTERSECTS(seen, INTERVAL('2020-01-01T00:00:00Z', '..')) "
        "AND S_INTERSECTS(geom, POLYGON((0 0, 1 0, 1 1, 0 0))) AND pop * 2 > area"
    )
    dialect = PostGISDialect(4326)
    clause = Compiler(SCHEMA, dialect).where(query)
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "CREATE TEMP TABLE t (id serial, name text, pop int, area float8, seen timestamptz, "
            '"Odd Name" text, geom geometry(MultiPolygon, 4326))'
        )
        statement = psycopg.sql.SQL("SELECT count(*) FROM t WHERE {}").format(clause)
        assert conn.execute(statement, dialect.params).fetchone()[0] == 0


# -- s_dwithin: distance within, measured in the filter CRS (MapFish lon/lat/tolerance) ---------
def dwithin(coordinates: list[float], distance: float) -> dict:
    return {
        "op": "s_dwithin",
        "args": [{"property": "geom"}, {"type": "Point", "coordinates": coordinates}, distance],
    }


def test_dwithin_in_the_storage_crs_is_one_indexable_call():
    sql, params = compile_pg(Query(filter=dwithin([2, 48], 1.5)))
    assert sql == '(ST_DWithin("geom", ST_SetSRID(ST_GeomFromGeoJSON(%(p0)s), 4326), %(p1)s))'
    assert orjson.loads(params["p0"])["coordinates"] == [2, 48] and params["p1"] == 1.5


def test_dwithin_in_another_crs_measures_there_and_keeps_an_index_filter():
    sql, params = compile_pg(
        Query(filter=dwithin([250000, 6000000], 1000), filter_crs=parse_crs("EPSG:3857"))
    )
    assert (
        'ST_DWithin(ST_Transform("geom", 3857), ST_SetSRID(ST_GeomFromGeoJSON(%(p0)s), 3857), %(p5)s)' in sql
    )
    assert '"geom" && ST_Transform(ST_Segmentize(ST_MakeEnvelope(' in sql
    # The index box is the literal's bounds grown by the distance, in the filter CRS.
    assert [params[f"p{i}"] for i in range(1, 5)] == [249000, 5999000, 251000, 6001000]
    assert params["p5"] == 1000


def test_dwithin_literal_in_a_lat_first_crs_is_swapped_to_x_y():
    _, params = compile_pg(Query(filter=dwithin([48, 2], 0.5), filter_crs=parse_crs("EPSG:4326")))
    assert orjson.loads(params["p0"])["coordinates"] == [2, 48]


@pytest.mark.parametrize(
    "node",
    [
        dwithin([0, 0], -1),
        dwithin([0, 0], float("nan")),
        dwithin([0, 0], True),
        dwithin([0, 0], "5"),
        {"op": "s_dwithin", "args": [{"property": "name"}, {"type": "Point", "coordinates": [0, 0]}, 1]},
        {"op": "s_dwithin", "args": [{"property": "geom"}, "POINT(0 0)", 1]},
        {"op": "s_dwithin", "args": [{"property": "geom"}, {"type": "Point", "coordinates": [0, 0]}]},
    ],
)
def test_dwithin_rejections(node):
    with pytest.raises(InvalidQuery):
        compile_pg(Query(filter=node))


def _names(provider, query: Query) -> set[str]:
    page = provider.query(query)
    return {orjson.loads(f)["properties"]["name"] for f in page.features}


@pytest.mark.parametrize(
    ("crs", "centre", "distance"),
    [
        ("EPSG:4326", (6.1, 49.6), 1.0),  # degrees (MapFish's default epsg), x/y as MapFish sends
        ("EPSG:3035", (6.1, 49.6), 60_000.0),  # metres of ETRS89-LAEA: a true distance
        ("EPSG:3857", (-60.0, -20.0), 400_000.0),
    ],
)
def test_dwithin_both_backends_match_an_independent_computation(pg_url, gpkg_path, crs, centre, distance):
    """PostGIS and GeoPackage select what shapely selects from the Natural Earth file itself."""
    import pyogrio.raw
    import shapely
    from pyproj import Transformer

    from providers.crs import CRS
    from providers.geopackage import GeoPackage, GeoPackageProvider
    from providers.postgis import PostGISDatabase, PostGISProvider, TableRef
    from server.demo import natural_earth_countries

    srid = parse_crs(crs).srid
    xy = CRS(srid, parse_crs(crs).uri, False)
    to_crs = Transformer.from_crs(4326, srid, always_xy=True)
    x, y = to_crs.transform(*centre)
    _, _, wkb, fields = pyogrio.raw.read(natural_earth_countries(), columns=["name"])[:4]
    shapes = shapely.transform(
        shapely.from_wkb(wkb), lambda c: np.column_stack(to_crs.transform(c[:, 0], c[:, 1]))
    )
    expected = {
        str(n)
        for n, g in zip(fields[0], shapes, strict=True)
        if shapely.dwithin(g, shapely.Point(x, y), distance)
    }
    assert len(expected) >= 3

    query = Query(
        limit=1000, filter=dwithin([x, y], distance), filter_crs=xy, properties=["name"], skip_geometry=True
    )
    db = PostGISDatabase(pg_url, pool_min=0, pool_max=1)
    gpkg = GeoPackage(gpkg_path)
    try:
        ref = TableRef("public", "countries", "geom")
        assert _names(PostGISProvider(db, ref, db.describe(ref)), query) == expected
        assert _names(GeoPackageProvider(gpkg, "countries", gpkg.describe("countries")), query) == expected
    finally:
        db.close()
        gpkg.close()
