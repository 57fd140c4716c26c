"""Unit tests of the pure parts: CQL2 compilation to SQL, CRS names, parameter parsing."""

from __future__ import annotations

from datetime import UTC, datetime

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
