"""Importer transforms: their JSON (parse, update, refusals), their pure parts (dates, expressions,
conversions), and loads through them into PostGIS and a GeoPackage, read back.

The files are made from Natural Earth: the countries as a GeoPackage (ogr2ogr), and a CSV
of one point per country (its point on surface) with LAT/LON columns, the population as
text and, as Natural Earth has no dates, a date and a year derived from the row number.
"""

from __future__ import annotations

import csv
import dataclasses
import sqlite3
import subprocess
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyogrio
import pytest
import shapely
from psycopg import sql
from pyproj import Transformer

from providers import transforms as tf
from providers.errors import InvalidData
from providers.expressions import compile_text
from providers.geopackage import GeoPackage
from providers.geopackage_tables import GeoPackageTables
from providers.load_postgis import STAGING_PREFIX
from providers.loader import Mode, NoCRS, load, open_plan
from providers.postgis import PostGISDatabase
from server.demo import natural_earth_countries

COUNTRIES = 177
BACKENDS = ["postgis", "geopackage"]
ZM_LINE = Path(pyogrio.__file__).parent / "tests" / "fixtures" / "line_zm.gpkg"


def _ogr(*args: str) -> None:
    subprocess.run(["ogr2ogr", *args], check=True, capture_output=True)


def _seen(i: int) -> str:
    """The CSV's SEEN text of row ``i`` (0-based), dd/MM/yyyy HH:mm."""
    return f"{i % 28 + 1:02d}/{i % 12 + 1:02d}/{2000 + i % 24} {i % 24:02d}:{i % 60:02d}"


def _seen_value(i: int) -> datetime:
    return datetime(2000 + i % 24, i % 12 + 1, i % 28 + 1, i % 24, i % 60, tzinfo=UTC)


def _write_csv(path: Path, header: list[str], rows: list[list[str]], all_text: bool) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    if all_text:  # GDAL's sidecar of column types: every column read as text
        path.with_suffix(".csvt").write_text(",".join('"String"' for _ in header) + "\n")
    return path


@pytest.fixture(scope="module")
def places() -> list[dict]:
    """One row per Natural Earth country: name, point on surface, population, derived date and year."""
    _meta, table = pyogrio.read_arrow(natural_earth_countries())
    points = shapely.point_on_surface(
        shapely.from_wkb(table.column("wkb_geometry").to_numpy(zero_copy_only=False))
    )
    rows = []
    for i, (name, point, pop) in enumerate(
        zip(table.column("name").to_pylist(), points, table.column("pop_est").to_pylist(), strict=True)
    ):
        rows.append(
            {"name": name, "lat": point.y, "lon": point.x, "pop": int(pop), "i": i, "year": 1990 + i % 30}
        )
    return rows


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, places: list[dict]) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("transform-files")
    source = str(natural_earth_countries())
    made = {"gpkg": out / "countries.gpkg", "no_antarctica": out / "inhabited.gpkg"}
    _ogr("-f", "GPKG", str(made["gpkg"]), source, "-nln", "countries", "-nlt", "PROMOTE_TO_MULTI")
    _ogr("-f", "GPKG", str(made["no_antarctica"]), source, "-nln", "inhabited", "-nlt", "PROMOTE_TO_MULTI")
    _ogr("-f", "GPKG", str(made["no_antarctica"]), source, "-nln", "inhabited", "-overwrite", "-where",
         "name <> 'Antarctica'", "-nlt", "PROMOTE_TO_MULTI")  # fmt: skip

    def row(p: dict, lat: str | None = None) -> list[str]:
        lat_text = f"{p['lat']:.6f}" if lat is None else lat
        return [p["name"], lat_text, f"{p['lon']:.6f}", str(p["pop"]), _seen(p["i"]), str(p["year"])]

    header = ["NAME", "LAT", "LON", "POP", "SEEN", "YEAR"]
    made["csv"] = _write_csv(out / "places.csv", header, [row(p) for p in places], all_text=True)
    # The same, with GDAL guessing the types (numbers for LAT, LON, POP and YEAR).
    typed = out / "typed"
    typed.mkdir()
    made["typed_csv"] = _write_csv(typed / "places.csv", header, [row(p) for p in places], all_text=False)
    # Coordinates in columns GDAL does not take for x/y: the layer has no geometry of its own.
    plain = out / "plain"
    plain.mkdir()
    made["plain_csv"] = _write_csv(
        plain / "stations.csv", ["NAME", "LAT_DEG", "LON_DEG"], [row(p)[:3] for p in places], all_text=False
    )
    # A bad latitude in row 150 (past the first batches) and one out of range in row 160.
    broken = out / "broken"
    broken.mkdir()
    rows = [row(p, "N/A" if p["i"] == 149 else None) for p in places]
    made["bad_lat_csv"] = _write_csv(broken / "places.csv", header, rows, all_text=True)
    far = out / "far"
    far.mkdir()
    rows = [row(p, "91.5" if p["i"] == 159 else None) for p in places]
    made["far_lat_csv"] = _write_csv(far / "places.csv", header, rows, all_text=True)
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


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest) -> tuple[str, object]:
    """(backend name, the source a load writes to)."""
    if request.param == "postgis":
        return "postgis", request.getfixturevalue("db")
    return "geopackage", request.getfixturevalue("gpkg")


def _name() -> str:
    return f"transformed_{uuid.uuid4().hex[:10]}"


def _t(**spec: str) -> tf.Transform:
    return tf.parse(spec)


def _points_chain() -> list[tf.Transform]:
    return [
        _t(type="AttributesToPointGeometryTransform", latField="LAT", lngField="LON"),
        _t(type="DateFormatTransform", field="SEEN", format="dd/MM/yyyy HH:mm"),
        _t(type="AttributeRemapTransform", field="POP", target="java.lang.Integer"),
    ]


# -- reading back ---------------------------------------------------------------------------------
def _rows(kind: str, source: object, pg_url: str, table: str) -> tuple[list[dict], int]:
    """The table's rows (attributes, ``geometry`` as shapely) in id order, and the geometry's SRID."""
    if kind == "postgis":
        with psycopg.connect(pg_url) as conn:
            cur = conn.cursor(row_factory=psycopg.rows.dict_row)
            found = cur.execute(
                sql.SQL(
                    "SELECT *, ST_AsBinary(geom) AS geometry, ST_SRID(geom) AS srid FROM {} ORDER BY id"
                ).format(sql.Identifier(table))
            ).fetchall()
        srid = found[0]["srid"] if found else 0
        for row in found:
            del row["geom"], row["srid"], row["id"]
            row["geometry"] = shapely.from_wkb(bytes(row["geometry"])) if row["geometry"] else None
        return found, srid
    source.close()  # GDAL has its own SQLite library: ours must not hold the file meanwhile
    info = pyogrio.read_info(source.path, layer=table)
    _meta, data = pyogrio.read_arrow(source.path, layer=table, datetime_as_string=False)
    geometries = shapely.from_wkb(data.column(_meta["geometry_name"]).to_numpy(zero_copy_only=False))
    found = data.drop_columns([_meta["geometry_name"]]).to_pylist()
    for row, geometry in zip(found, geometries, strict=True):
        row["geometry"] = geometry
    return found, int(info["crs"].split(":")[1])


def _types(kind: str, source: object, pg_url: str, table: str) -> dict[str, str]:
    """Column name -> its declared type in the table."""
    if kind == "postgis":
        with psycopg.connect(pg_url) as conn:
            found = conn.execute(
                "SELECT column_name, udt_name FROM information_schema.columns WHERE table_name = %s", (table,)
            ).fetchall()
        return dict(found)
    with sqlite3.connect(source.path) as conn:
        found = conn.execute(f'PRAGMA table_info("{table}")').fetchall()  # noqa: S608 - a test's own name
    return {r[1]: r[2] for r in found}


def _tables(kind: str, source: object, pg_url: str, prefix: str) -> list[str]:
    if kind == "postgis":
        with psycopg.connect(pg_url) as conn:
            found = conn.execute(
                "SELECT relname FROM pg_class WHERE starts_with(relname, %s) OR starts_with(relname, %s)",
                (prefix, STAGING_PREFIX),
            ).fetchall()
        return [r[0] for r in found]
    with sqlite3.connect(source.path) as conn:
        found = conn.execute("SELECT name FROM sqlite_master WHERE name LIKE ?", (f"%{prefix}%",)).fetchall()
    return [r[0] for r in found]


def _indexes(kind: str, source: object, pg_url: str, table: str) -> dict[str, str]:
    """Index name -> its definition, for the attribute (non-key, non-spatial) indexes of ``table``."""
    if kind == "postgis":
        with psycopg.connect(pg_url) as conn:
            found = conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s "
                "AND indexdef NOT LIKE '%%USING gist%%' AND indexname NOT LIKE '%%pkey'",
                (table,),
            ).fetchall()
        return dict(found)
    with sqlite3.connect(source.path) as conn:
        found = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            (table,),
        ).fetchall()
    return dict(found)


# -- JSON: parse, to_json, updated ------------------------------------------------------------------
ROUND_TRIPS = [
    (
        {"type": "AttributeRemapTransform", "field": "cat", "target": "java.lang.Integer"},
        {"type": "AttributeRemapTransform", "field": "cat", "target": "java.lang.Integer"},
    ),
    (
        {
            "type": "AttributeRemapTransform",
            "field": "cat",
            "target": "Long",
            "href": "http://x/transforms/0",
        },
        {"type": "AttributeRemapTransform", "field": "cat", "target": "java.lang.Long"},
    ),
    (
        {
            "type": "AttributeComputeTransform",
            "field": "label",
            "fieldType": "java.lang.String",
            "cql": "'My String'",
        },
        {
            "type": "AttributeComputeTransform",
            "field": "label",
            "fieldType": "java.lang.String",
            "cql": "'My String'",
        },
    ),
    (
        {"type": "AttributesToPointGeometryTransform", "latField": "LAT", "lngField": "LON"},
        {"type": "AttributesToPointGeometryTransform", "latField": "LAT", "lngField": "LON"},
    ),
    ({"type": "CreateIndexTransform", "field": "name"}, {"type": "CreateIndexTransform", "field": "name"}),
    (
        {"type": "DateFormatTransform", "field": "date", "format": "yyyyMMdd"},
        {
            "type": "DateFormatTransform",
            "field": "date",
            "format": "yyyyMMdd",
            "enddate": None,
            "presentation": None,
        },
    ),
    (
        {
            "type": "DateFormatTransform",
            "field": "start",
            "enddate": "end",
            "presentation": "continuous_interval",
        },
        {
            "type": "DateFormatTransform",
            "field": "start",
            "format": None,
            "enddate": "end",
            "presentation": "CONTINUOUS_INTERVAL",
        },
    ),
    (
        {"type": "IntegerFieldToDateTransform", "field": "year"},
        {"type": "IntegerFieldToDateTransform", "field": "year"},
    ),
    (
        {"type": "ReprojectTransform", "target": "EPSG:4326"},
        {"type": "ReprojectTransform", "source": None, "target": "EPSG:4326"},
    ),
    (
        {"type": "ReprojectTransform", "source": "2154", "target": "EPSG:3857"},
        {"type": "ReprojectTransform", "source": "EPSG:2154", "target": "EPSG:3857"},
    ),
]


@pytest.mark.parametrize(("spec", "expected"), ROUND_TRIPS)
def test_parse_and_to_json_round_trip(spec, expected):
    transform = tf.parse(spec)
    assert transform.type == spec["type"] and transform.type in tf.TYPES
    assert transform.to_json() == expected
    again = tf.parse(transform.to_json())
    assert again == transform and hash(again) == hash(transform)


REFUSALS = [
    (["not", "an", "object"], "a transform is a JSON object"),
    ({"field": "x"}, "needs a type, one of AttributeRemapTransform"),
    ({"type": "MagicTransform"}, "unknown transform type 'MagicTransform'"),
    ({"type": "GdalWarpTransform", "options": []}, "GdalWarpTransform transforms rasters"),
    (
        {"type": "AttributesToPointGeometryTransform", "lat_field": "LAT", "lngField": "LON"},
        r"unknown parameter 'lat_field' \(it takes latField, lngField\)",
    ),
    (
        {"type": "AttributeRemapTransform", "target": "java.lang.Integer"},
        "AttributeRemapTransform: field is required",
    ),
    (
        {"type": "AttributeRemapTransform", "field": 3, "target": "Integer"},
        "field must be a non-empty string",
    ),
    (
        {"type": "CreateIndexTransform", "field": "  "},
        "CreateIndexTransform: field must be a non-empty string",
    ),
    (
        {"type": "AttributeRemapTransform", "field": "x", "target": "java.lang.Thing"},
        "AttributeRemapTransform: target: unknown Java class 'java.lang.Thing'",
    ),
    (
        {"type": "AttributeRemapTransform", "field": "x", "target": "org.locationtech.jts.geom.Point"},
        "is a geometry class, not an attribute type",
    ),
    (
        {"type": "AttributeComputeTransform", "field": "x", "fieldType": "Integer", "cql": "POP_EST / "},
        "AttributeComputeTransform: cql: cannot parse 'POP_EST /': at 1:10; expected",
    ),
    (
        {"type": "AttributeComputeTransform", "field": "x", "fieldType": "Integer", "cql": "system('ls')"},
        "unknown function or operator 'system'",
    ),
    (
        {
            "type": "AttributeComputeTransform",
            "field": "x",
            "fieldType": "Boolean",
            "cql": "S_INTERSECTS(g, POINT(1 2))",
        },
        "unknown function or operator 's_intersects'",
    ),
    (
        {
            "type": "AttributeComputeTransform",
            "field": "x",
            "fieldType": "String",
            "cql": "strConcat(a)",
            "extra": 1,
        },
        "unknown parameter 'extra'",
    ),
    ({"type": "ReprojectTransform", "target": "EPSG:999999"}, "target: unknown coordinate reference system"),
    (
        {"type": "ReprojectTransform", "source": "nowhere", "target": "EPSG:4326"},
        "source: unknown coordinate",
    ),
    ({"type": "ReprojectTransform", "target": "+proj=merc +lon_0=17"}, "matches no EPSG code"),
    ({"type": "ReprojectTransform"}, "ReprojectTransform: target is required"),
    ({"type": "DateFormatTransform", "field": "d", "format": "yyyy-QQ"}, r"the letter 'Q' is not supported"),
    ({"type": "DateFormatTransform", "field": "d", "format": "yyyy 'at"}, "a quote is not closed"),
    ({"type": "DateFormatTransform", "field": "d", "format": "'T'"}, "has no date or time field"),
    ({"type": "DateFormatTransform", "field": "d", "format": "yyyy-MM-dd yyyy"}, "appears twice"),
    (
        {"type": "DateFormatTransform", "field": "d", "presentation": "SOMETIMES"},
        "presentation must be one of LIST",
    ),
]


@pytest.mark.parametrize(("spec", "message"), REFUSALS)
def test_parse_refuses_with_a_message_naming_the_problem(spec, message):
    with pytest.raises(InvalidData, match=message) as caught:
        tf.parse(spec)
    assert caught.value.status == 422


def test_updated_changes_only_what_is_given():
    reproject = tf.parse({"type": "ReprojectTransform", "source": "EPSG:2154", "target": "EPSG:4326"})
    changed = tf.updated(reproject, {"type": "ReprojectTransform", "target": "EPSG:3005"})
    assert changed.to_json() == {"type": "ReprojectTransform", "source": "EPSG:2154", "target": "EPSG:3005"}
    assert reproject.target == "EPSG:4326", "transforms are immutable"
    cleared = tf.updated(changed, {"source": None, "href": "http://x/transforms/0"})
    assert cleared.to_json() == {"type": "ReprojectTransform", "source": None, "target": "EPSG:3005"}
    with pytest.raises(InvalidData, match="is a ReprojectTransform: its type cannot change"):
        tf.updated(reproject, {"type": "DateFormatTransform", "field": "x"})
    with pytest.raises(InvalidData, match="target is required"):
        tf.updated(reproject, {"target": None})
    with pytest.raises(InvalidData, match="unknown coordinate reference system"):
        tf.updated(reproject, {"target": "EPSG:0"})
    with pytest.raises(InvalidData, match="unknown parameter 'field'"):
        tf.updated(reproject, {"field": "x"})


def test_java_bindings():
    for kind, java in tf.JAVA_BINDINGS.items():
        back = tf.kind_of_java(java)
        # Each binding reads back as the kind or the one a loader stores it as.
        assert back == kind or (kind, back) in {("timestamp", "timestamptz"), ("json", "text")}
    assert [tf.kind_of_java(n) for n in ("Integer", "String", "Date", "int", "java.sql.Date", "[B")] == [
        "integer",
        "text",
        "timestamptz",
        "integer",
        "date",
        "binary",
    ]
    assert tf.geometry_binding("MULTIPOLYGON") == "org.locationtech.jts.geom.MultiPolygon"
    assert tf.geometry_binding("POINTZ") == "org.locationtech.jts.geom.Point"
    assert tf.geometry_binding("GEOMETRY") == "org.locationtech.jts.geom.Geometry"
    with pytest.raises(InvalidData, match="unknown Java class 'Integr'"):
        tf.kind_of_java("Integr")


# -- pure parts: dates, expressions, conversions ---------------------------------------------------
def _parse_dates(values: list[str | None], pattern: str | None) -> list[datetime | None]:
    """Run a DateFormatTransform over a one-column batch."""
    step = _step(
        _t(type="DateFormatTransform", field="d", **({"format": pattern} if pattern else {})), d=values
    )
    return step.column("d").to_pylist()


def _step(transform: tf.Transform, **columns: list) -> pa.RecordBatch:
    batch = pa.record_batch({name: pa.array(values) for name, values in columns.items()})
    layout = tf.Layout(batch.schema, _columns(batch.schema), None, "GEOMETRY", "", "EPSG:4326")
    _layout, steps = tf.chain(layout, [transform])
    for step in steps:
        batch = step(batch, 0)
    return batch


def _columns(schema: pa.Schema) -> tuple:
    from providers.loader import Column, kind_of_arrow

    return tuple(Column(f.name.lower(), f.name, kind_of_arrow(f.type)) for f in schema)


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("yyyyMMdd", "20240501", _utc(2024, 5, 1)),
        ("dd/MM/yyyy", "2/1/2020", _utc(2020, 1, 2)),  # as Java: width is free when no number follows
        ("dd/MM/yyyy HH:mm", " 31/12/1999 23:59 ", _utc(1999, 12, 31, 23, 59)),
        ("yyyy-MM-dd'T'HH:mm:ss.SSSZ", "2020-01-02T10:11:12.345+0130", _utc(2020, 1, 2, 8, 41, 12, 345000)),
        ("yyyy-MM-dd'T'HH:mm:ssXXX", "2020-01-02T10:11:12-05:00", _utc(2020, 1, 2, 15, 11, 12)),
        ("yyyy-MM-dd'T'HH:mm:ssX", "2020-01-02T10:11:12Z", _utc(2020, 1, 2, 10, 11, 12)),
        ("d MMM yyyy", "7 Sep 2021", _utc(2021, 9, 7)),
        ("EEE, d MMMM yyyy h:mm a", "Tue, 7 September 2021 12:05 AM", _utc(2021, 9, 7, 0, 5)),
        ("EEE, d MMMM yyyy h:mm a", "Tue, 7 September 2021 1:05 PM", _utc(2021, 9, 7, 13, 5)),
        ("yyyy.MM.dd 'at' HH''mm", "2001.07.04 at 12'08", _utc(2001, 7, 4, 12, 8)),
        ("yyMMddHHmmss", "010704120856", _utc(2001, 7, 4, 12, 8, 56)),
        ("dd/MM/yyyy", "29/02/2024", _utc(2024, 2, 29)),
    ],
)
def test_java_date_formats(pattern, text, expected):
    assert _parse_dates([text, None], pattern) == [expected, None]


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("dd/MM/yyyy", "31/02/2020"),  # Java's lenient parser would say 2 March
        ("dd/MM/yyyy", "29/02/2023"),
        ("yyyyMMdd", "202405"),
        ("HH:mm", "24:00"),
        ("yyyy-MM-dd", "2020-13-01"),
        ("d MMM yyyy", "7 Foo 2021"),
        ("yyyy-MM-dd", "2020-01-01 trailing"),
    ],
)
def test_java_date_formats_are_strict(pattern, text):
    with pytest.raises(InvalidData, match=rf"'d': row 2: {text!r} does not match the format {pattern!r}"):
        _parse_dates(["2000-01-01" if pattern == "yyyy-MM-dd" else None, text], pattern)


def test_built_in_date_forms():
    texts = [
        "2024-05-01",
        "2024-05-01T10:00:00Z",
        "2024-05-01T10:00:00.5+02:00",
        "2024-05-01 10:00:00",
        "2024-05-01T10:00",
        "20240501",
        "20240501T100000Z",
        "2024-05",
        "",
        None,
    ]
    assert _parse_dates(texts, None) == [
        _utc(2024, 5, 1),
        _utc(2024, 5, 1, 10),
        _utc(2024, 5, 1, 8, 0, 0, 500000),
        _utc(2024, 5, 1, 10),
        _utc(2024, 5, 1, 10),
        _utc(2024, 5, 1),
        _utc(2024, 5, 1, 10),
        _utc(2024, 5, 1),
        None,
        None,
    ]
    with pytest.raises(
        InvalidData, match=r"row 2: '01/05/2024' is not a date or time in a form this server knows"
    ):
        _parse_dates(["2024-05-01", "01/05/2024"], None)


def test_expressions_evaluate_over_columns_without_eval():
    batch = pa.record_batch(
        {"POP_EST": pa.array([1500, 2_000_000, None]), "NAME": ["Éire", "b", None], "AREA": [1.5, 0.0, 2.0]}
    )
    cases = {
        "'My String'": ["My String"] * 3,
        "POP_EST / 1000": [1.5, 2000.0, None],
        "POP_EST div 1000 + 1": [2, 2001, None],
        "strConcat(NAME, ' (', POP_EST, ')')": ["Éire (1500)", "b (2000000)", None],
        "upper(accenti(NAME))": ["EIRE", "B", None],
        "if_then_else(POP_EST > 1000000, 'big', 'small')": ["small", "big", None],
        "POP_EST BETWEEN 1000 AND 2000": [True, False, None],
        "NAME IN ('b', 'c')": [False, True, False],
        "-AREA * 2": [-3.0, -0.0, -4.0],
        "round(AREA)": [2.0, 0.0, 2.0],
    }
    for text, expected in cases.items():
        expression = compile_text(text)
        assert expression.evaluate(batch.column, batch.num_rows).to_pylist() == expected, text
    assert compile_text("POP_EST / AREA + NAME").properties == {"POP_EST", "AREA", "NAME"}
    for text in ("__import__('os')", "exec('x')", "eval(NAME)"):
        with pytest.raises(InvalidData, match="unknown function or operator|cannot parse"):
            compile_text(text)
    # A dotted name is only a property name, and not one of the layer's.
    compute = _t(type="AttributeComputeTransform", field="x", fieldType="String", cql="POP_EST.__class__")
    with pytest.raises(InvalidData, match="cql reads 'POP_EST.__class__', not attributes of the layer"):
        _step(compute, POP_EST=[1])


def test_conversions_name_the_row_and_the_value():
    remap = _t(type="AttributeRemapTransform", field="v", target="Integer")
    assert _step(remap, v=[" 12", "+3", "-4", "", None]).column("v").to_pylist() == [12, 3, -4, None, None]
    assert _step(remap, v=[1.0, 2.0, None]).column("v").type == pa.int32()
    with pytest.raises(
        InvalidData, match=r"AttributeRemapTransform: 'v': row 3: '12x' cannot be read as java.lang.Integer"
    ):
        _step(remap, v=["1", "2", "12x", "4"])
    with pytest.raises(InvalidData, match=r"row 2: 2.5 cannot be read as java.lang.Integer"):
        _step(remap, v=[1.0, 2.5])
    with pytest.raises(InvalidData, match=r"row 2: 3000000000 cannot be read as java.lang.Integer"):
        _step(remap, v=[1, 3_000_000_000])
    as_bool = _t(type="AttributeRemapTransform", field="v", target="java.lang.Boolean")
    assert _step(as_bool, v=["yes", "FALSE", "1", None]).column("v").to_pylist() == [True, False, True, None]
    with pytest.raises(InvalidData, match=r"row 1: 'maybe' cannot be read as java.lang.Boolean"):
        _step(as_bool, v=["maybe"])
    as_text = _t(type="AttributeRemapTransform", field="v", target="String")
    assert _step(as_text, v=[1.5, None]).column("v").to_pylist() == ["1.5", None]
    as_date = _t(type="AttributeRemapTransform", field="v", target="java.sql.Date")
    assert (
        _step(as_date, v=["2024-05-01", "2024-05-01T23:00:00Z"]).column("v").to_pylist()
        == [date(2024, 5, 1)] * 2
    )
    with pytest.raises(InvalidData, match="'v': date values cannot become java.lang.Boolean"):
        _step(as_bool, v=[date(2024, 5, 1)])
    years = _t(type="IntegerFieldToDateTransform", field="v")
    assert _step(years, v=[1999, None]).column("v").to_pylist() == [date(1999, 1, 1), None]
    assert _step(years, v=["2024", " "]).column("v").to_pylist() == [date(2024, 1, 1), None]
    with pytest.raises(
        InvalidData, match=r"IntegerFieldToDateTransform: 'v': row 2: 0 is not a year from 1 to 9999"
    ):
        _step(years, v=[1999, 0])


def test_compute_refuses_unknown_properties_and_mismatched_types():
    with pytest.raises(
        InvalidData, match=r"cql reads 'POP', 'ZZ', not attributes of the layer \(attributes: NAME, POP_EST\)"
    ):
        _step(
            _t(type="AttributeComputeTransform", field="x", fieldType="Long", cql="POP + ZZ"),
            NAME=["a"],
            POP_EST=[1],
        )
    with pytest.raises(InvalidData, match="AttributeComputeTransform: .*no kernel matching input types"):
        _step(_t(type="AttributeComputeTransform", field="x", fieldType="Long", cql="NAME + 1"), NAME=["a"])
    with pytest.raises(InvalidData, match=r"'x': row 2 \(A=1, B=0\): divide by zero"):
        _step(
            _t(type="AttributeComputeTransform", field="x", fieldType="Double", cql="A / B"),
            A=[1, 1],
            B=[1, 0],
        )


def test_chain_refusals_name_the_field():
    batch = pa.record_batch({"NAME": ["a"], "LAT": ["1"], "LON": ["2"], "OK": [True]})
    layout = tf.Layout(batch.schema, _columns(batch.schema), None, "GEOMETRY", "", "EPSG:4326")
    points = _t(type="AttributesToPointGeometryTransform", latField="LAT", lngField="LON")
    for chain, message in (
        (
            [_t(type="AttributeRemapTransform", field="nope", target="Integer")],
            r"field 'nope' is not an attribute",
        ),
        (
            [_t(type="AttributesToPointGeometryTransform", latField="LAT", lngField="lat")],
            "are the same attribute",
        ),
        (
            [_t(type="AttributesToPointGeometryTransform", latField="OK", lngField="LON")],
            "latField .OK. holds boolean values, not numbers",
        ),
        ([_t(type="ReprojectTransform", target="EPSG:3857")], "no geometry to reproject"),
        ([_t(type="DateFormatTransform", field="OK")], "'OK': holds boolean values, not dates or texts"),
        ([_t(type="CreateIndexTransform", field="LAT"), points], "'lat' is removed by a later transform"),
    ):
        with pytest.raises(InvalidData, match=message):
            tf.chain(layout, chain)
    # Each transform sees the previous one's output: the points exist for the reprojection.
    done, steps = tf.chain(layout, [points, _t(type="ReprojectTransform", target="EPSG:3857")])
    assert (done.geometry_type, done.crs, len(steps)) == ("POINT", "EPSG:3857", 2)
    # Points from a layer of unknown CRS are lon/lat; other geometries stay unknown.
    unknown = dataclasses.replace(layout, crs=None)
    assert tf.chain(unknown, [points])[0].crs == "EPSG:4326"
    with pytest.raises(NoCRS, match="give the transform a source"):
        tf.chain(
            dataclasses.replace(unknown, geometry_column="LAT", geometry_type="POINT"),
            [_t(type="ReprojectTransform", target="EPSG:3857")],
        )


# -- loads ---------------------------------------------------------------------------------------
def test_csv_points_dates_and_remap(files, places, target, pg_url):
    """LAT/LON text columns become points, SEEN dd/MM/yyyy HH:mm timestamps, POP integers."""
    kind, source = target
    name = _name()
    chain = [
        *_points_chain(),
        _t(type="IntegerFieldToDateTransform", field="YEAR"),
        _t(
            type="AttributeComputeTransform",
            field="label",
            fieldType="String",
            cql="strConcat(NAME, ' ', YEAR)",
        ),
    ]
    with open_plan(files["csv"], None, "EPSG:4326", chain) as plan:
        assert [(c.name, c.kind) for c in plan.columns] == [
            ("name", "text"),
            ("pop", "integer"),
            ("seen", "timestamptz"),
            ("year", "date"),
            ("label", "text"),
        ]
        assert (plan.geometry_type, plan.srid) == ("POINT", 4326)
        assert [tf.JAVA_BINDINGS[c.kind] for c in plan.columns] == [
            "java.lang.String",
            "java.lang.Integer",
            "java.sql.Timestamp",
            "java.sql.Date",
            "java.lang.String",
        ]
    result = load(files["csv"], None, source, name, Mode.CREATE, srs="EPSG:4326", batch=50, transforms=chain)
    assert (result.features, result.srid, result.geometry_type) == (COUNTRIES, 4326, "POINT")
    rows, srid = _rows(kind, source, pg_url, name)
    assert srid == 4326 and len(rows) == COUNTRIES
    for row, place in zip(rows, places, strict=True):
        assert row["name"] == place["name"] and row["pop"] == place["pop"]
        assert row["seen"] == _seen_value(place["i"]), place["name"]
        assert row["year"] in (date(place["year"], 1, 1), datetime(place["year"], 1, 1))
        assert row["label"] == f"{place['name']} {place['year']}-01-01", "YEAR was a date by then"
        assert row["geometry"].x == pytest.approx(place["lon"], abs=1e-6)
        assert row["geometry"].y == pytest.approx(place["lat"], abs=1e-6)
    # The same file through the same chain appends to the table it made.
    load(files["csv"], None, source, name, Mode.APPEND, srs="EPSG:4326", batch=50, transforms=chain)
    again, _srid = _rows(kind, source, pg_url, name)
    assert len(again) == 2 * COUNTRIES and again[COUNTRIES]["seen"] == rows[0]["seen"]
    types = _types(kind, source, pg_url, name)
    expected = (
        {"name": "text", "pop": "int4", "seen": "timestamptz", "year": "date", "label": "text"}
        if kind == "postgis"
        else {"name": "TEXT", "pop": "INTEGER", "seen": "DATETIME", "year": "DATE", "label": "TEXT"}
    )
    assert {k: v for k, v in types.items() if k in expected} == expected
    assert "lat" not in types and "lon" not in types


def test_csv_without_geometry_plans_only_with_points(files):
    with pytest.raises(InvalidData, match="layer 'stations' has no geometry"):
        with open_plan(files["plain_csv"], None, "EPSG:4326"):
            pass
    with pytest.raises(InvalidData, match="layer 'stations' has no geometry"):
        with open_plan(
            files["plain_csv"], None, "EPSG:4326", [_t(type="CreateIndexTransform", field="NAME")]
        ):
            pass
    points = _t(type="AttributesToPointGeometryTransform", latField="lat_deg", lngField="LON_DEG")
    with open_plan(files["plain_csv"], None, "EPSG:4326", [points]) as plan:
        assert ([c.name for c in plan.columns], plan.geometry_type, plan.srid) == (["name"], "POINT", 4326)
    # Latitudes and longitudes are WGS 84 unless something says otherwise.
    with open_plan(files["plain_csv"], None, None, [points]) as plan:
        assert plan.srid == 4326
    with open_plan(files["plain_csv"], None, "EPSG:4258", [points]) as plan:
        assert plan.srid == 4258
    # A layer without CRS whose geometry is not made by the chain still needs one.
    with pytest.raises(NoCRS, match="srs"):
        with open_plan(files["typed_csv"], None, None, [_t(type="CreateIndexTransform", field="NAME")]):
            pass
    # The source of a ReprojectTransform says the file's CRS.
    move = _t(type="ReprojectTransform", source="EPSG:4326", target="EPSG:3857")
    with open_plan(files["plain_csv"], None, None, [points, move]) as plan:
        assert plan.srid == 3857
    # Without the transform, GDAL still takes LAT/LON columns for the geometry, as before.
    with open_plan(files["typed_csv"], None, "EPSG:4326") as plan:
        assert plan.geometry_type == "POINT" and "lat" not in [c.name for c in plan.columns]


def test_gdal_typed_csv(files, places, db, pg_url):
    """GDAL reads YEAR as an integer: DateFormat with yyyy reads it as text; LAT/LON are doubles."""
    name = _name()
    chain = [
        _t(type="AttributesToPointGeometryTransform", latField="LAT", lngField="LON"),
        _t(type="DateFormatTransform", field="YEAR", format="yyyy"),
        _t(type="AttributeRemapTransform", field="POP", target="java.lang.String"),
    ]
    load(files["typed_csv"], None, db, name, srs="4326", transforms=chain)
    rows, _srid = _rows("postgis", db, pg_url, name)
    assert [(r["year"], r["pop"]) for r in rows[:3]] == [
        (_utc(p["year"], 1, 1), str(p["pop"])) for p in places[:3]
    ]


def test_reproject_to_web_mercator(files, target, pg_url):
    kind, source = target
    name = _name()
    chain = [_t(type="ReprojectTransform", target="EPSG:3857")]
    result = load(files["no_antarctica"], None, source, name, transforms=chain, batch=40)
    assert (result.srid, result.features, result.geometry_type) == (3857, COUNTRIES - 1, "MULTIPOLYGON")
    rows, srid = _rows(kind, source, pg_url, name)
    assert srid == 3857
    _meta, original = pyogrio.read_arrow(files["no_antarctica"])
    expected = shapely.from_wkb(original.column(_meta["geometry_name"]).to_numpy(zero_copy_only=False))
    to_mercator = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    for row, before, country in zip(rows, expected, original.column("name").to_pylist(), strict=True):
        assert row["name"] == country
        want = np.column_stack(to_mercator.transform(*shapely.get_coordinates(before).T))
        assert np.allclose(shapely.get_coordinates(row["geometry"]), want, rtol=0, atol=1e-6), country
    if kind == "postgis":
        with psycopg.connect(pg_url) as conn:
            declared = conn.execute(
                "SELECT srid, type FROM geometry_columns WHERE f_table_name = %s", (name,)
            ).fetchone()
        assert declared == (3857, "MULTIPOLYGON")


def test_reproject_source_overrides_the_files_crs(files):
    """A file that says EPSG:4326 declared EPSG:3857 by the transform: its numbers are taken as metres."""
    back = _t(type="ReprojectTransform", source="EPSG:3857", target="EPSG:4326")
    with open_plan(files["gpkg"], None, "EPSG:2154", [back]) as plan:
        assert plan.srid == 4326
        batch = next(plan.batches(10))
    raw = shapely.get_coordinates(_geometries(files["gpkg"])[0])
    x, y = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform(raw[:, 0], raw[:, 1])
    moved = shapely.get_coordinates(shapely.from_wkb(batch.column(plan.geometry_column)[0].as_py()))
    assert np.allclose(moved, np.column_stack([x, y])) and abs(moved).max() < 0.01


def test_reproject_keeps_z_and_refuses_what_a_crs_cannot_hold(files, tmp_path):
    move = _t(type="ReprojectTransform", target="EPSG:3857")
    line = tmp_path / "line_z.gpkg"
    _ogr("-f", "GPKG", str(line), str(ZM_LINE), "-dim", "XYZ", "-nln", "line")
    with open_plan(line, None, None, [move]) as plan:
        assert (plan.geometry_type, plan.srid) == ("LINESTRINGZ", 3857)
        (batch,) = list(plan.batches())
    before = shapely.get_coordinates(_geometries(line)[0], include_z=True)
    after = shapely.from_wkb(batch.column(plan.geometry_column)[0].as_py())
    assert after.has_z
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(
        before[:, 0], before[:, 1]
    )
    assert np.allclose(shapely.get_coordinates(after, include_z=True), np.column_stack([x, y, before[:, 2]]))
    # The fixture's geometries carry measures, which GDAL's layer type does not say.
    with pytest.warns(UserWarning, match="Measured"), open_plan(ZM_LINE, None, None, [move]) as plan:
        with pytest.raises(InvalidData, match=r"row 1: geometries with measures \(M\) cannot be reprojected"):
            list(plan.batches())
    # Antarctica reaches the south pole, which a Lambert conic of France sends to infinity.
    to_lambert = _t(type="ReprojectTransform", target="EPSG:2154")
    with open_plan(files["gpkg"], None, None, [to_lambert]) as plan:
        with pytest.raises(
            InvalidData, match=r"ReprojectTransform: row 160: the geometry lies outside the area of EPSG:2154"
        ):
            for _ in plan.batches(5):
                pass


def _geometries(path: Path) -> np.ndarray:
    meta, data = pyogrio.read_arrow(path)
    return shapely.from_wkb(data.column(meta["geometry_name"]).to_numpy(zero_copy_only=False))


def test_compute_from_an_expression(files, target, pg_url):
    kind, source = target
    name = _name()
    chain = [
        _t(
            type="AttributeComputeTransform",
            field="pop_k",
            fieldType="java.lang.Integer",
            cql="pop_est / 1000",
        ),
        _t(
            type="AttributeComputeTransform",
            field="name",
            fieldType="String",
            cql="strConcat(upper(name), ' (', iso_a3, ')')",
        ),
        _t(type="AttributeComputeTransform", field="source", fieldType="String", cql="'Natural Earth'"),
    ]
    load(files["gpkg"], None, source, name, transforms=chain)
    rows, _srid = _rows(kind, source, pg_url, name)
    _meta, original = pyogrio.read_arrow(files["gpkg"])
    for row, before in zip(rows, original.to_pylist(), strict=True):
        assert row["pop_k"] == int(before["pop_est"] / 1000)  # truncated, as Java's intValue()
        assert row["name"] == f"{before['name'].upper()} ({before['iso_a3']})"
        assert row["source"] == "Natural Earth"
    types = _types(kind, source, pg_url, name)
    assert types["pop_k"] in ("int4", "INTEGER")


def test_create_index(files, target, pg_url):
    kind, source = target
    name, other = _name(), _name()
    chain = [_t(type="CreateIndexTransform", field="name"), _t(type="CreateIndexTransform", field="geom")]
    load(files["gpkg"], None, source, name, transforms=chain)
    wanted = {f"{name}_name_idx"}
    indexes = _indexes(kind, source, pg_url, name)
    assert set(indexes) == wanted and "(name)" in indexes[f"{name}_name_idx"].replace('"', "")
    # REPLACE builds it again under the same name; APPEND does not add a second one.
    load(files["gpkg"], None, source, name, Mode.REPLACE, transforms=chain)
    assert set(_indexes(kind, source, pg_url, name)) == wanted
    load(files["gpkg"], None, source, name, Mode.APPEND, transforms=chain)
    assert set(_indexes(kind, source, pg_url, name)) == wanted
    # APPEND asking for an index the table lacks builds it.
    load(
        files["gpkg"],
        None,
        source,
        name,
        Mode.APPEND,
        transforms=[_t(type="CreateIndexTransform", field="ISO_A3")],
    )
    assert set(_indexes(kind, source, pg_url, name)) == wanted | {f"{name}_iso_a3_idx"}
    # Another table already has the name the index would take: the index gets a free variant.
    load(files["gpkg"], None, source, f"{other}_name_idx")
    load(files["gpkg"], None, source, other, transforms=chain)
    assert set(_indexes(kind, source, pg_url, other)) == {f"{other}_name_idx1"}
    with pytest.raises(InvalidData, match="CreateIndexTransform: field 'nope' is not an attribute"):
        load(files["gpkg"], None, source, _name(), transforms=[_t(type="CreateIndexTransform", field="nope")])


@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("bad_lat_csv", r"latField 'LAT': row 150: 'N/A' cannot be read as java.lang.Double"),
        ("far_lat_csv", r"row 160: \(LAT=91.5, LON=.*\) is not a position in a geographic CRS"),
    ],
)
def test_a_failing_transform_leaves_no_table(files, target, pg_url, file, message):
    kind, source = target
    name = _name()
    with pytest.raises(InvalidData, match=message):
        load(files[file], None, source, name, srs="EPSG:4326", batch=20, transforms=_points_chain())
    assert _tables(kind, source, pg_url, name) == [] and _tables(kind, source, pg_url, "rtree_") == []


def test_transforms_stay_batch_at_a_time(tmp_path, places):
    """A 100,000-row CSV through the chain: Arrow holds about one batch whatever the file's size."""
    header = ["NAME", "LAT", "LON", "POP", "SEEN", "YEAR"]
    rows = [
        [p["name"], f"{p['lat']:.6f}", f"{p['lon']:.6f}", str(p["pop"]), _seen(i), str(p["year"])]
        for i in range(100_000)
        for p in (places[i % COUNTRIES],)
    ]
    path = _write_csv(tmp_path / "many.csv", header, rows, all_text=True)
    whole = path.stat().st_size
    held = []
    with open_plan(path, None, "EPSG:4326", _points_chain()) as plan:
        sizes = []
        for batch in plan.batches(5_000):
            sizes.append(batch.num_rows)
            held.append(pa.total_allocated_bytes())
            del batch
    assert sum(sizes) == 100_000 and max(sizes) == 5_000
    assert max(held) < whole / 5, (max(held), whole)
