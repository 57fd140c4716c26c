"""The GeoPackage provider on a real GeoPackage written by GDAL (Natural Earth countries).

Every test works on its own copy of the file. Expected results come from an
independent reader (GDAL through pyogrio, shapely on its geometries), never from the
provider itself, and written files are checked with GDAL's ``ogrinfo``.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyogrio
import pyogrio.raw
import pytest
import shapely
from pyproj import Transformer

from providers.base import Query
from providers.crs import CRS84, parse_crs
from providers.errors import Conflict, InvalidData, InvalidQuery, NotFound, PreconditionFailed, ReadOnly
from providers.filters import parse_cql2
from providers.geopackage import GeoPackage, GeoPackageProvider, decode_geometries

SHAPEFILE = os.path.join(
    os.path.dirname(pyogrio.__file__), "tests/fixtures/naturalearth_lowres/naturalearth_lowres.shp"
)
LAYER = "countries"
RTREE = "rtree_countries_geom"

pytestmark = pytest.mark.skipif(
    shutil.which("ogr2ogr") is None or not os.path.exists(SHAPEFILE),
    reason="needs GDAL's ogr2ogr and the Natural Earth fixture of pyogrio",
)


# -- files -----------------------------------------------------------------------------------
def _ogr2ogr(target: Path, *options: str) -> Path:
    subprocess.run(
        ["ogr2ogr", "-f", "GPKG", str(target), SHAPEFILE, "-nln", LAYER, *options],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture(scope="module")
def source_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """GDAL-written originals, built once: copies of them are what tests modify."""
    folder = tmp_path_factory.mktemp("gpkg")
    return {
        "plain": _ogr2ogr(folder / "plain.gpkg"),
        "multi": _ogr2ogr(folder / "multi.gpkg", "-nlt", "PROMOTE_TO_MULTI"),
        # European countries stored in a projected CRS (ETRS89 / LAEA Europe).
        "laea": _ogr2ogr(folder / "laea.gpkg", "-spat", "-10", "35", "30", "60", "-t_srs", "EPSG:3035"),
    }


@pytest.fixture
def gpkg_path(source_files: dict[str, Path], tmp_path: Path) -> Path:
    target = tmp_path / "countries.gpkg"
    shutil.copyfile(source_files["plain"], target)
    return target


@pytest.fixture
def gpkg(gpkg_path: Path):
    handle = GeoPackage(gpkg_path)
    yield handle
    handle.close()


def _provider(gpkg: GeoPackage, editable: bool = False, layer: str = LAYER) -> GeoPackageProvider:
    schema = gpkg.describe(layer)
    gpkg.compute_extents(layer, schema)
    return GeoPackageProvider(gpkg, layer, schema, editable=editable)


@pytest.fixture
def provider(gpkg: GeoPackage) -> GeoPackageProvider:
    return _provider(gpkg)


@pytest.fixture
def editable(gpkg: GeoPackage) -> GeoPackageProvider:
    return _provider(gpkg, editable=True)


@pytest.fixture(scope="module")
def oracle(source_files: dict[str, Path]) -> dict[int, dict[str, Any]]:
    """Every feature as GDAL reads it: fid -> properties and shapely geometry."""
    meta, fids, wkb, values = pyogrio.raw.read(source_files["plain"], return_fids=True)
    geoms = shapely.from_wkb(wkb)
    out = {}
    for i, fid in enumerate(fids):
        props = {name: _plain(values[j][i]) for j, name in enumerate(meta["fields"])}
        out[int(fid)] = {"properties": props, "geometry": geoms[i]}
    return out


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _features(page_or_provider: Any, query: Query | None = None) -> list[dict[str, Any]]:
    page = page_or_provider.query(query) if query is not None else page_or_provider
    return [orjson.loads(f) for f in page.features]


def _ids(provider: GeoPackageProvider, query: Query) -> list[int]:
    return [f["id"] for f in _features(provider, query)]


def _cql(text: str, **options: Any) -> Query:
    return Query(limit=1000, filter=parse_cql2(text, "cql2-text"), **options)


def _ogrinfo_count(path: Path) -> int:
    out = subprocess.run(
        ["ogrinfo", "-al", "-so", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return int(re.search(r"Feature Count: (\d+)", out).group(1))


def _assert_rtree_matches(path: Path) -> None:
    """SQLite's own R-tree check, and every row's envelope against its decoded geometry."""
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT rtreecheck(?)", (RTREE,)).fetchone()[0] == "ok"
        rows = conn.execute(f'SELECT fid, geom FROM "{LAYER}"').fetchall()  # noqa: S608 - test constant
        index = {r[0]: r[1:] for r in conn.execute(f'SELECT id, minx, maxx, miny, maxy FROM "{RTREE}"')}  # noqa: S608
    geoms = decode_geometries([r[1] for r in rows])
    expected = {}
    for (fid, _), geom in zip(rows, geoms, strict=True):
        if geom is not None and not geom.is_empty:
            minx, miny, maxx, maxy = shapely.bounds(geom)
            expected[fid] = (minx, maxx, miny, maxy)
    assert set(index) == set(expected)
    for fid, box in expected.items():
        # R-tree cells are float32 rounded outwards.
        assert np.allclose(index[fid], box, rtol=1e-6, atol=1e-5), fid


# -- discovery ----------------------------------------------------------------------------------
def test_discover_and_describe(gpkg: GeoPackage) -> None:
    assert gpkg.discover() == [LAYER]
    schema = gpkg.describe(LAYER)
    assert schema.id_field == "fid" and schema.id_type == "integer" and schema.id_has_default
    assert schema.geometry_field == "geom" and schema.geometry_type == "POLYGON"
    assert schema.storage_crs == CRS84
    assert {n: (f.type, f.native_type) for n, f in schema.fields.items()} == {
        "pop_est": ("integer", "INTEGER"),
        "continent": ("string", "TEXT(80)"),
        "name": ("string", "TEXT(80)"),
        "iso_a3": ("string", "TEXT(80)"),
        "gdp_md_est": ("number", "REAL"),
    }
    gpkg.compute_extents(LAYER, schema)
    assert schema.bbox is not None
    assert np.allclose(schema.bbox, (-180, -90, 180, 83.64513), atol=1e-4)
    assert gpkg.ping()
    with pytest.raises(NotFound):
        gpkg.describe("nope")


def test_describe_dates_and_booleans(gpkg_path: Path) -> None:
    handle = GeoPackage(gpkg_path)
    try:
        # Through a connection of the handle: GDAL's triggers call ST_IsEmpty on any UPDATE.
        conn = handle.connection()
        for column in ("founded DATE", "updated DATETIME", "member BOOLEAN"):
            conn.execute(f'ALTER TABLE "{LAYER}" ADD COLUMN {column}')
        rows = [
            ("1958-10-04", "2020-05-01T10:00:00.000Z", 1, "France"),
            ("1949-05-23", "2021-01-01T00:00:00Z", 0, "Germany"),
        ]
        conn.executemany(f'UPDATE "{LAYER}" SET founded = ?, updated = ?, member = ? WHERE name = ?', rows)  # noqa: S608
        provider = _provider(handle, editable=True)
        fields = provider.schema.fields
        assert (fields["founded"].type, fields["founded"].format) == ("string", "date")
        assert (fields["updated"].type, fields["updated"].format) == ("string", "date-time")
        assert fields["member"].type == "boolean"
        assert provider.schema.time_field == "founded"
        assert provider.schema.temporal[0].year == 1949 and provider.schema.temporal[1].year == 1958

        names = lambda q: [f["properties"]["name"] for f in _features(provider, q)]  # noqa: E731
        assert names(_cql("updated > TIMESTAMP('2020-12-31T23:00:00Z')")) == ["Germany"]
        assert names(_cql("updated = TIMESTAMP('2021-01-01T00:00:00.000Z')")) == ["Germany"]
        assert names(_cql("T_BEFORE(founded, DATE('1950-01-01'))")) == ["Germany"]
        assert names(_cql("founded BETWEEN '1950-01-01' AND '1960-01-01'")) == ["France"]
        assert names(_cql("member = true")) == ["France"]
        assert names(Query(datetime=(datetime(1958, 1, 1, tzinfo=UTC), None))) == ["France"]
        france = [f for f in _features(provider, _cql("member = true"))][0]
        assert france["properties"]["member"] is True
        assert france["properties"]["founded"] == "1958-10-04"

        stored = provider.update(str(france["id"]), {"properties": {"updated": "2022-02-02T12:00:00+01:00"}})
        assert orjson.loads(stored.body)["properties"]["updated"] == "2022-02-02T11:00:00.000Z"
        with pytest.raises(InvalidData):
            provider.update(str(france["id"]), {"properties": {"founded": "yesterday"}})
        with pytest.raises(InvalidData):
            provider.update(str(france["id"]), {"properties": {"member": "yes"}})
    finally:
        handle.close()


# -- reads ----------------------------------------------------------------------------------
def test_bbox_goes_through_the_rtree(provider: GeoPackageProvider, oracle: dict) -> None:
    box = (0.0, 40.0, 10.0, 50.0)
    query = Query(limit=1000, bbox=box)
    assert any(RTREE in line for line in provider.explain(query))
    expected = sorted(fid for fid, f in oracle.items() if f["geometry"].intersects(shapely.box(*box)))
    page = provider.query(query)
    assert [f["id"] for f in _features(page)] == expected
    assert page.matched is not None and page.matched.value == len(expected) and page.matched.exact
    # The same box given lat/lon first in EPSG:4326, and in web mercator.
    assert (
        _ids(provider, Query(limit=1000, bbox=(40, 0, 50, 10), bbox_crs=parse_crs("EPSG:4326"))) == expected
    )
    to_merc = Transformer.from_crs(4326, 3857, always_xy=True)
    merc = to_merc.transform_bounds(*box)
    assert _ids(provider, Query(limit=1000, bbox=merc, bbox_crs=parse_crs("EPSG:3857"))) == expected
    # A spatial CQL2 predicate uses the index too.
    assert any(RTREE in line for line in provider.explain(_cql("S_INTERSECTS(geom, POINT(2.35 48.85))")))


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("pop_est > 100000000", lambda p, g: p["pop_est"] > 100_000_000),
        (
            "continent = 'Europe' AND gdp_md_est < 50000",
            lambda p, g: p["continent"] == "Europe" and p["gdp_md_est"] < 50000,
        ),
        ("name LIKE 'Ma%'", lambda p, g: p["name"].startswith("Ma")),
        ("name LIKE 'ma%'", lambda p, g: False),  # LIKE is case-sensitive
        ("CASEI(name) LIKE casei('ma%')", lambda p, g: p["name"].lower().startswith("ma")),
        ("name LIKE '%_a'", lambda p, g: len(p["name"]) > 1 and p["name"].endswith("a")),
        ("iso_a3 IN ('FRA', 'DEU', 'ITA')", lambda p, g: p["iso_a3"] in ("FRA", "DEU", "ITA")),
        ("pop_est BETWEEN 1000000 AND 2000000", lambda p, g: 1_000_000 <= p["pop_est"] <= 2_000_000),
        ("NOT (continent <> 'Oceania')", lambda p, g: p["continent"] == "Oceania"),
        ("iso_a3 IS NULL", lambda p, g: False),
        ("iso_a3 IS NOT NULL", lambda p, g: True),
        (
            "S_INTERSECTS(geom, POLYGON((0 40, 10 40, 10 50, 0 50, 0 40)))",
            lambda p, g: g.intersects(shapely.box(0, 40, 10, 50)),
        ),
        ("S_WITHIN(geom, BBOX(-10, 35, 30, 60))", lambda p, g: g.within(shapely.box(-10, 35, 30, 60))),
        ("S_CONTAINS(geom, POINT(2.35 48.85))", lambda p, g: g.contains(shapely.Point(2.35, 48.85))),
        (
            "S_DISJOINT(geom, BBOX(-180, -60, 180, 90))",
            lambda p, g: g.disjoint(shapely.box(-180, -60, 180, 90)),
        ),
    ],
)
def test_cql2_filters(provider: GeoPackageProvider, oracle: dict, text: str, expect: Any) -> None:
    expected = sorted(fid for fid, f in oracle.items() if expect(f["properties"], f["geometry"]))
    page = provider.query(_cql(text))
    assert [f["id"] for f in _features(page)] == expected
    assert page.matched.value == len(expected)


def test_filter_in_lat_first_crs(provider: GeoPackageProvider) -> None:
    query = _cql("S_INTERSECTS(geom, POINT(48.85 2.35))", filter_crs=parse_crs("EPSG:4326"))
    assert [f["properties"]["name"] for f in _features(provider, query)] == ["France"]


def test_bad_queries(provider: GeoPackageProvider) -> None:
    with pytest.raises(InvalidQuery):
        provider.query(_cql("nope = 1"))
    with pytest.raises(InvalidQuery):
        provider.query(_cql("pop_est = 'many'"))
    with pytest.raises(InvalidQuery):
        provider.query(Query(sortby=[("nope", True)]))
    with pytest.raises(InvalidQuery):
        provider.query(Query(properties=["nope"]))


def test_sortby_paging_and_count(provider: GeoPackageProvider, oracle: dict) -> None:
    by_pop = sorted(oracle, key=lambda fid: (-oracle[fid]["properties"]["pop_est"], fid))
    assert _ids(provider, Query(limit=1000, sortby=[("pop_est", False)])) == by_pop
    pages = [
        _ids(provider, Query(limit=50, offset=o, sortby=[("pop_est", False)])) for o in (0, 50, 100, 150)
    ]
    assert sum(pages, []) == by_pop
    by_name = sorted(oracle, key=lambda fid: oracle[fid]["properties"]["name"])
    assert _ids(provider, Query(limit=1000, sortby=[("name", True)])) == by_name
    assert _ids(provider, Query(limit=1000)) == sorted(oracle)  # stable order by id
    assert provider.query(Query(limit=1, count="none")).matched is None
    assert provider.query(Query(limit=1, count="exact")).matched.value == len(oracle)
    # Big pages stream in batches and give the same bytes as small ones.
    big = list(provider.query(Query(limit=5000)).features)
    small = [f for o in range(0, 200, 100) for f in provider.query(Query(limit=100, offset=o)).features]
    assert big == small and len(big) == len(oracle)


def test_properties_and_skip_geometry(provider: GeoPackageProvider) -> None:
    (feature,) = _features(provider, Query(limit=1, properties=["name", "iso_a3"], equals={"name": "France"}))
    assert list(feature) == ["type", "id", "geometry", "properties"]
    assert feature["properties"] == {"name": "France", "iso_a3": "-99"}
    (feature,) = _features(provider, Query(limit=1, skip_geometry=True, equals={"name": "France"}))
    assert feature["geometry"] is None and set(feature["properties"]) == set(provider.schema.fields)


def _coords(geometry: dict[str, Any]) -> np.ndarray:
    return shapely.get_coordinates(shapely.from_geojson(orjson.dumps(geometry)))


def test_output_crs(provider: GeoPackageProvider, oracle: dict) -> None:
    query = Query(limit=1, equals={"name": "France"})
    (crs84,) = _features(provider, query)
    expected = shapely.get_coordinates(oracle[crs84["id"]]["geometry"])
    assert np.allclose(_coords(crs84["geometry"]), expected, atol=1e-7)
    assert re.search(rb"\.\d{8}", orjson.dumps(crs84["geometry"])) is None  # 7 decimals at most

    query.crs = parse_crs("EPSG:4326")
    (latlon,) = _features(provider, query)
    assert np.allclose(_coords(latlon["geometry"]), expected[:, ::-1], atol=1e-7)

    query.crs = parse_crs("EPSG:3857")
    (merc,) = _features(provider, query)
    x, y = Transformer.from_crs(4326, 3857, always_xy=True).transform(expected[:, 0], expected[:, 1])
    assert np.allclose(_coords(merc["geometry"]), np.column_stack([x, y]), atol=1e-3)
    assert re.search(rb"\.\d{4}", orjson.dumps(merc["geometry"])) is None  # 3 decimals at most
    # Antarctica reaches the pole, which web mercator cannot: still valid, finite JSON.
    (pole,) = _features(provider, Query(limit=1, equals={"name": "Antarctica"}, crs=parse_crs("EPSG:3857")))
    assert np.isfinite(_coords(pole["geometry"])).all()


def test_records(provider: GeoPackageProvider, oracle: dict) -> None:
    query = Query(limit=2, properties=["name"])
    header, rows = provider.records(query, "wkt")
    rows = list(rows)
    assert header == ["fid", "geom", "name"]
    assert [r[0] for r in rows] == [1, 2]
    assert shapely.from_wkt(rows[0][1]).equals(oracle[1]["geometry"])
    header, rows = provider.records(query, "wkb")
    assert shapely.from_wkb(next(rows)[1]).equals(oracle[1]["geometry"])
    header, rows = provider.records(query, "none")
    assert header == ["fid", "name"] and next(rows) == (1, oracle[1]["properties"]["name"])


def test_get_and_etag(provider: GeoPackageProvider) -> None:
    feature = provider.get("44")
    body = orjson.loads(feature.body)
    assert feature.id == 44 and body["id"] == 44 and body["properties"]["name"] == "France"
    # The tag is the stored row's, whatever representation was asked for.
    assert provider.get("44", crs=parse_crs("EPSG:3857"), properties=["name"]).etag == feature.etag
    assert provider.get("44", skip_geometry=True).etag == feature.etag
    assert provider.get(" 44 ").etag == feature.etag
    assert provider.get("43").etag != feature.etag
    for missing in ("abc", "1.5", "999999", str(2**70)):
        with pytest.raises(NotFound):
            provider.get(missing)


# -- writes ------------------------------------------------------------------------------------
SQUARE = {"type": "Polygon", "coordinates": [[[1, 1], [2, 1], [2, 2], [1, 2], [1, 1]]]}


def _count(provider: GeoPackageProvider) -> int:
    return provider.query(Query(limit=0, count="exact")).matched.value


def test_read_only(provider: GeoPackageProvider) -> None:
    with pytest.raises(ReadOnly):
        provider.create([{"type": "Feature", "geometry": SQUARE, "properties": {}}])
    with pytest.raises(ReadOnly):
        provider.delete("1")


def test_create_replace_update_delete(editable: GeoPackageProvider, gpkg_path: Path) -> None:
    before = _count(editable)
    (created,) = editable.create(
        [{"type": "Feature", "geometry": SQUARE, "properties": {"name": "Squareland", "pop_est": 7}}]
    )
    body = orjson.loads(created.body)
    assert body["properties"]["name"] == "Squareland" and body["properties"]["iso_a3"] is None
    assert body["geometry"] == {"type": "Polygon", "coordinates": SQUARE["coordinates"]}
    fid = str(created.id)
    assert editable.get(fid).etag == created.etag
    assert _ids(editable, Query(limit=10, bbox=(1.4, 1.4, 1.6, 1.6))) == [created.id]
    assert _count(editable) == before + 1

    # Input in web mercator (metres) is stored in the layer's CRS84.
    to_merc = Transformer.from_crs(4326, 3857, always_xy=True)
    south_atlantic = [[-30, -30], [-29, -30], [-29, -29], [-30, -29], [-30, -30]]
    ring = [list(to_merc.transform(x, y)) for x, y in south_atlantic]
    replaced = editable.replace(
        fid,
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"name": "Moved"},
        },
        crs=parse_crs("EPSG:3857"),
        if_match=created.etag,
    )
    moved = orjson.loads(replaced.body)
    assert moved["properties"] == {**dict.fromkeys(editable.schema.fields), "name": "Moved"}
    assert np.allclose(_coords(moved["geometry"]), south_atlantic, atol=1e-7)
    assert replaced.etag != created.etag
    assert _ids(editable, Query(limit=10, bbox=(1.4, 1.4, 1.6, 1.6))) == []
    assert _ids(editable, Query(limit=10, bbox=(-29.6, -29.6, -29.4, -29.4))) == [created.id]

    with pytest.raises(PreconditionFailed):  # the tag of the version replaced above
        editable.update(fid, {"properties": {"pop_est": 8}}, if_match=created.etag)
    updated = editable.update(fid, {"properties": {"pop_est": 8}}, if_match=f'W/"nope", {replaced.etag}')
    props = orjson.loads(updated.body)["properties"]
    assert props["pop_est"] == 8 and props["name"] == "Moved"  # untouched
    assert orjson.loads(updated.body)["geometry"] == moved["geometry"]  # no "geometry" key: kept
    nulled = editable.update(fid, {"geometry": None}, if_match="*")
    assert orjson.loads(nulled.body)["geometry"] is None
    assert _ids(editable, Query(limit=10, bbox=(-29.6, -29.6, -29.4, -29.4))) == []
    _assert_rtree_matches(gpkg_path)

    with pytest.raises(PreconditionFailed):
        editable.delete(fid, if_match=updated.etag)
    editable.delete(fid, if_match=nulled.etag)
    with pytest.raises(NotFound):
        editable.get(fid)
    with pytest.raises(NotFound):
        editable.delete(fid)
    with pytest.raises(NotFound):
        editable.update("abc", {"properties": {}})
    assert _count(editable) == before


def test_batch_is_atomic(editable: GeoPackageProvider, gpkg_path: Path) -> None:
    before = _count(editable)
    good = {"type": "Feature", "geometry": SQUARE, "properties": {"name": "A"}}
    bad = {"type": "Feature", "geometry": SQUARE, "properties": {"pop_est": "many"}}
    with pytest.raises(InvalidData, match="feature 3"):
        editable.create([good, {**good, "properties": {"name": "B"}}, bad])
    assert _count(editable) == before
    assert _ids(editable, Query(limit=10, bbox=(1.4, 1.4, 1.6, 1.6))) == []
    _assert_rtree_matches(gpkg_path)
    created = editable.create([good, {**good, "properties": {"name": "B"}}])
    assert [orjson.loads(c.body)["properties"]["name"] for c in created] == ["A", "B"]
    assert _count(editable) == before + 2


@pytest.mark.parametrize(
    "feature",
    [
        {"geometry": {"type": "Point", "coordinates": [1, 2]}},  # a point into a polygon layer
        {"geometry": {"type": "MultiPolygon", "coordinates": [SQUARE["coordinates"]]}},
        {"geometry": {"type": "Polygon", "coordinates": [[[1, 1, 5], [2, 1, 5], [2, 2, 5], [1, 1, 5]]]}},
        {"geometry": {"type": "Polygon", "coordinates": "nope"}},
        {"geometry": {"type": "Feature"}},
        {"geometry": SQUARE, "properties": {"nope": 1}},
        {"geometry": SQUARE, "properties": {"pop_est": "12"}},
        {"geometry": SQUARE, "properties": {"pop_est": 1.5}},
        {"geometry": SQUARE, "properties": {"gdp_md_est": True}},
        {"geometry": SQUARE, "properties": {"name": "x" * 81}},  # TEXT(80)
        {"geometry": SQUARE, "properties": []},
    ],
)
def test_invalid_features(editable: GeoPackageProvider, feature: dict[str, Any]) -> None:
    before = _count(editable)
    with pytest.raises(InvalidData):
        editable.create([{"type": "Feature", **feature}])
    assert _count(editable) == before


def test_polygon_promoted_to_multipolygon(source_files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "multi.gpkg"
    shutil.copyfile(source_files["multi"], path)
    handle = GeoPackage(path)
    try:
        provider = _provider(handle, editable=True)
        assert provider.schema.geometry_type == "MULTIPOLYGON"
        (created,) = provider.create([{"type": "Feature", "geometry": SQUARE, "properties": {}}])
        geometry = orjson.loads(created.body)["geometry"]
        assert geometry == {"type": "MultiPolygon", "coordinates": [SQUARE["coordinates"]]}
        with pytest.raises(InvalidData):
            provider.create([{"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}}])
    finally:
        handle.close()


def test_unique_violation_is_a_conflict(editable: GeoPackageProvider, gpkg_path: Path) -> None:
    with sqlite3.connect(gpkg_path) as conn:
        conn.execute(f'CREATE UNIQUE INDEX countries_name ON "{LAYER}" (name)')
    with pytest.raises(Conflict):
        editable.update("1", {"properties": {"name": "France"}})
    assert orjson.loads(editable.get("1").body)["properties"]["name"] == "Fiji"


def test_gdal_reads_what_we_wrote(editable: GeoPackageProvider, gpkg: GeoPackage, gpkg_path: Path) -> None:
    before = _ogrinfo_count(gpkg_path)
    created = editable.create(
        [
            {"type": "Feature", "geometry": SQUARE, "properties": {"name": "One"}},
            {"type": "Feature", "geometry": None, "properties": {"name": "Two"}},
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": []},
                "properties": {"name": "3"},
            },
        ]
    )
    editable.update("5", {"geometry": SQUARE})
    editable.delete("1")
    gpkg.close()  # checkpoint the WAL, as a stopped server would
    assert _ogrinfo_count(gpkg_path) == before + 3 - 1
    out = subprocess.run(
        ["ogrinfo", "-q", str(gpkg_path), LAYER, "-fid", str(created[0].id)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "name (String) = One" in out and "POLYGON ((1 1,2 1,2 2,1 2,1 1))" in out
    assert orjson.loads(created[1].body)["geometry"] is None
    assert orjson.loads(created[2].body)["geometry"] == {"type": "Polygon", "coordinates": []}
    _assert_rtree_matches(gpkg_path)
    meta, fids, wkb, _ = pyogrio.raw.read(gpkg_path, return_fids=True, where="fid = 5")
    assert shapely.from_wkb(wkb[0]).equals(shapely.geometry.shape(SQUARE))


def test_rtree_kept_without_triggers(gpkg_path: Path) -> None:
    """A file whose writer left no triggers: the provider maintains the R-tree itself.

    GDAL's feature count triggers are gone too: the cached count is then reset for GDAL
    to recount, so ogrinfo still reports the right number.
    """
    with sqlite3.connect(gpkg_path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
        assert any(n.startswith("rtree_") for n in names) and any("feature_count" in n for n in names)
        for name in names:
            conn.execute(f'DROP TRIGGER "{name}"')
    before = _ogrinfo_count(gpkg_path)
    handle = GeoPackage(gpkg_path)
    try:
        provider = _provider(handle, editable=True)
        assert not handle.layer_info(LAYER).rtree_triggers
        (created,) = provider.create([{"type": "Feature", "geometry": SQUARE, "properties": {}}])
        triangle = {"type": "Polygon", "coordinates": [[[7, 7], [8, 7], [8, 8], [7, 7]]]}
        provider.update("5", {"geometry": triangle})
        provider.update("6", {"geometry": None})
        provider.delete("7")
        assert _ids(provider, Query(limit=10, bbox=(1.4, 1.4, 1.6, 1.6))) == [created.id]
        assert 5 in _ids(provider, Query(limit=10, bbox=(7.6, 7.2, 7.8, 7.4)))
    finally:
        handle.close()
    _assert_rtree_matches(gpkg_path)
    assert _ogrinfo_count(gpkg_path) == before


def test_write_records_last_change(editable: GeoPackageProvider, gpkg_path: Path) -> None:
    def contents() -> tuple:
        with sqlite3.connect(gpkg_path) as conn:
            return conn.execute(
                "SELECT last_change, min_x, min_y, max_x, max_y FROM gpkg_contents WHERE table_name = ?",
                (LAYER,),
            ).fetchone()

    before = contents()
    far = {"type": "Polygon", "coordinates": [[[170, 84], [171, 84], [171, 85], [170, 84]]]}
    editable.create([{"type": "Feature", "geometry": far, "properties": {}}])
    after = contents()
    assert after[0] > before[0] and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", after[0])
    assert after[1:4] == before[1:4] and after[4] == 85  # the extent grew to the new feature


def test_blob_encoding_round_trip(editable: GeoPackageProvider, gpkg_path: Path) -> None:
    (created,) = editable.create([{"type": "Feature", "geometry": SQUARE, "properties": {}}])
    with sqlite3.connect(gpkg_path) as conn:
        blob = conn.execute(f'SELECT geom FROM "{LAYER}" WHERE fid = ?', (created.id,)).fetchone()[0]  # noqa: S608
    magic, version, flags, srs_id = struct.unpack_from("<2sBBi", blob)
    assert (magic, version, flags, srs_id) == (b"GP", 0, 0x03, 4326)
    assert struct.unpack_from("<4d", blob, 8) == (1.0, 2.0, 1.0, 2.0)  # minx, maxx, miny, maxy
    assert shapely.from_wkb(blob[40:]).equals(shapely.geometry.shape(SQUARE))


def test_projected_storage(source_files: dict[str, Path], tmp_path: Path, oracle: dict) -> None:
    """A layer stored in EPSG:3035: literals, output and input are reprojected in Python."""
    path = tmp_path / "laea.gpkg"
    shutil.copyfile(source_files["laea"], path)
    handle = GeoPackage(path)
    try:
        provider = _provider(handle, editable=True)
        assert provider.schema.storage_crs.srid == 3035
        bbox = provider.schema.bbox
        assert bbox is not None and -180 <= bbox[0] < -10 and 60 < bbox[3] <= 90
        by_name = {f["properties"]["name"]: f for f in oracle.values()}
        box = (0.0, 40.0, 10.0, 50.0)
        found = [f["properties"]["name"] for f in _features(provider, Query(limit=100, bbox=box))]
        stored_names = {f["properties"]["name"] for f in _features(provider, Query(limit=1000))}
        expected = [n for n in sorted(stored_names) if by_name[n]["geometry"].intersects(shapely.box(*box))]
        assert sorted(found) == expected and "France" in found
        (france,) = _features(provider, Query(limit=1, equals={"name": "France"}))
        assert np.allclose(
            _coords(france["geometry"]), shapely.get_coordinates(by_name["France"]["geometry"]), atol=1e-6
        )
        query = _cql("S_INTERSECTS(geom, POINT(2.35 48.85))")
        assert [f["properties"]["name"] for f in _features(provider, query)] == ["France"]
        assert any("rtree_countries_geom" in line for line in provider.explain(query))

        (created,) = provider.create([{"type": "Feature", "geometry": SQUARE, "properties": {"name": "Sq"}}])
        assert np.allclose(
            _coords(orjson.loads(created.body)["geometry"]), SQUARE["coordinates"][0], atol=1e-7
        )
        in_3035 = provider.get(str(created.id), crs=parse_crs("EPSG:3035"))
        assert in_3035.etag == created.etag
        # EPSG:3035 is northing first: the output honours the authority's axis order.
        northing, easting = _coords(orjson.loads(in_3035.body)["geometry"])[0]
        assert np.allclose(
            Transformer.from_crs(3035, 4326, always_xy=True).transform(easting, northing), (1, 1), atol=1e-6
        )
    finally:
        handle.close()
    _assert_rtree_matches(path)


def test_trigger_functions_agree_with_gdal(gpkg_path: Path, tmp_path: Path, oracle: dict) -> None:
    """ST_MinX & co. on GDAL's own blobs give GDAL's R-tree: polygons, and points without envelopes."""
    fids = np.array(sorted(oracle))
    points = shapely.points([shapely.get_coordinates(oracle[f]["geometry"])[0] for f in fids])
    points_path = tmp_path / "points.gpkg"
    pyogrio.raw.write(
        points_path,
        geometry=shapely.to_wkb(points),
        field_data=[np.array([oracle[f]["properties"]["name"] for f in fids], dtype=object)],
        fields=["name"],
        layer="places",
        driver="GPKG",
        geometry_type="Point",
        crs="EPSG:4326",
    )
    for path, layer in ((gpkg_path, LAYER), (points_path, "places")):
        handle = GeoPackage(path)
        try:
            conn = handle.connection()
            table, rtree = f'"{layer}"', f'"rtree_{layer}_geom"'
            rows = conn.execute(
                f"SELECT ST_MinX(t.geom), ST_MaxX(t.geom), ST_MinY(t.geom), ST_MaxY(t.geom), "  # noqa: S608
                f"r.minx, r.maxx, r.miny, r.maxy, "
                f"ST_IsEmpty(t.geom), ST_SRID(t.geom), ST_GeometryType(t.geom) "
                f"FROM {table} AS t JOIN {rtree} AS r ON r.id = t.fid"
            ).fetchall()
            assert len(rows) == len(oracle)
            for row in rows:
                assert np.allclose(row[:4], row[4:8], rtol=1e-6, atol=1e-5)
                assert row[8] == 0 and row[9] == 4326 and row[10] in ("POINT", "POLYGON", "MULTIPOLYGON")
            provider = _provider(handle, editable=True, layer=layer)
            if layer == "places":  # an envelope-less GDAL point rewritten through the triggers
                provider.update("3", {"geometry": {"type": "Point", "coordinates": [1.5, 1.5]}})
            assert _ids(provider, Query(limit=10, bbox=(1.4, 1.4, 1.6, 1.6))) == (
                [3] if layer == "places" else []
            )
        finally:
            handle.close()
