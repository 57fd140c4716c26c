"""Vector tiles and revisions of the GeoPackage provider, on files GDAL wrote.

Tiles are decoded with mapbox_vector_tile and compared with what an independent reader
says: GDAL (through pyogrio) for the features, pyproj and shapely for where they must
appear, mercantile for web mercator tiles. Nothing expected is computed by the provider.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import mapbox_vector_tile
import mercantile
import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import shapely
from pyproj import Transformer

from providers.base import Query, TileRequest
from providers.errors import InvalidData, InvalidQuery, NotFound, Unavailable
from providers.filters import parse_cql2
from providers.geopackage import GeoPackage, GeoPackageProvider
from providers.tiles import WEB_MERCATOR_QUAD, WORLD_CRS84_QUAD, TileMatrixSet

SHAPEFILE = os.path.join(
    os.path.dirname(pyogrio.__file__), "tests/fixtures/naturalearth_lowres/naturalearth_lowres.shp"
)
ROOT = Path(__file__).resolve().parent.parent
PARIS = (2.35, 48.85)
WMQ, CRS84Q = WEB_MERCATOR_QUAD, WORLD_CRS84_QUAD

pytestmark = pytest.mark.skipif(
    shutil.which("ogr2ogr") is None or not os.path.exists(SHAPEFILE),
    reason="needs GDAL's ogr2ogr and the Natural Earth fixture of pyogrio",
)


# -- files -----------------------------------------------------------------------------------
def _ogr2ogr(target: Path, *options: str) -> Path:
    subprocess.run(
        [
            "ogr2ogr",
            "-f",
            "GPKG",
            str(target),
            SHAPEFILE,
            "-nln",
            "countries",
            "-nlt",
            "PROMOTE_TO_MULTI",
            *options,
        ],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """GDAL-written files: countries plus a point layer; and the countries of Europe in LAEA."""
    folder = tmp_path_factory.mktemp("tiles")
    plain = _ogr2ogr(folder / "world.gpkg")
    points = shapely.to_wkb(np.array([shapely.Point(*PARIS), shapely.Point(-74.0, 40.7), None], dtype=object))
    pyogrio.raw.write(
        plain,
        points,
        [
            np.array(["Paris", None, "Nowhere"], dtype=object),
            np.array([2_100_000, 8_300_000, 0], dtype=np.int64),
            np.array(["2020-01-02", "2021-05-06", "2022-01-01"], dtype="datetime64[D]"),
            np.array([True, False, True]),
        ],
        ["name", "pop", "visited", "capital"],
        layer="places",
        driver="GPKG",
        crs="EPSG:4326",
        geometry_type="Point",
    )
    # A GEOMETRY layer: a collection, a line with detail far below a z3 tile unit, points.
    wiggle = [(lon, 45.0 + 0.001 * (i % 2)) for i, lon in enumerate(np.linspace(-5.0, 5.0, 2001))]
    shapes = [
        shapely.GeometryCollection([shapely.box(0.0, 40.0, 4.0, 44.0), shapely.Point(10.0, 50.0)]),
        shapely.LineString(wiggle),
        shapely.MultiPoint([(1.0, 46.0), (2.0, 47.0)]),
    ]
    pyogrio.raw.write(
        plain,
        shapely.to_wkb(np.array(shapes, dtype=object)),
        [np.array(["collection", "line", "points"], dtype=object)],
        ["name"],
        layer="shapes",
        driver="GPKG",
        crs="EPSG:4326",
        geometry_type="Unknown",
    )
    laea = _ogr2ogr(folder / "laea.gpkg", "-spat", "-10", "35", "30", "60", "-t_srs", "EPSG:3035")
    return {"plain": plain, "laea": laea}


@pytest.fixture(scope="module")
def world(source: dict[str, Path]):
    """A shared handle for the tests that only read."""
    handle = GeoPackage(source["plain"])
    yield handle
    handle.close()


def _provider(gpkg: GeoPackage, layer: str = "countries", editable: bool = False) -> GeoPackageProvider:
    return GeoPackageProvider(gpkg, layer, gpkg.describe(layer), editable=editable)


@pytest.fixture(scope="module")
def countries(world: GeoPackage) -> GeoPackageProvider:
    return _provider(world)


@pytest.fixture(scope="module")
def places(world: GeoPackage) -> GeoPackageProvider:
    return _provider(world, "places")


@pytest.fixture(scope="module")
def oracle(source: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Every country as GDAL reads it: name -> fid, attributes, CRS84 geometry."""
    meta, fids, wkb, values = pyogrio.raw.read(source["plain"], layer="countries", return_fids=True)
    geoms = shapely.from_wkb(wkb)
    fields = list(meta["fields"])
    out = {}
    for i, fid in enumerate(fids):
        props = {name: values[j][i] for j, name in enumerate(fields)}
        out[props["name"]] = {"fid": int(fid), "properties": props, "geometry": geoms[i]}
    return out


# -- helpers ---------------------------------------------------------------------------------
def _request(
    tms: TileMatrixSet, z: int, x: int, y: int, layer: str = "countries", **options: Any
) -> TileRequest:
    return TileRequest(layer=layer, crs=tms.crs, bounds=tms.tile_bounds(z, x, y), zoom=z, **options)


def _at(
    tms: TileMatrixSet, z: int, lon: float, lat: float, layer: str = "countries", **options: Any
) -> TileRequest:
    point = mercantile.xy(lon, lat) if tms is WMQ else (lon, lat)
    x, y = tms.tile_containing(z, *point)
    return _request(tms, z, x, y, layer, **options)


def _decode(tile: bytes, layer: str = "countries") -> dict[str, Any]:
    """The layer with raw tile coordinates (y down), as a renderer reads them."""
    decoded = mapbox_vector_tile.decode(tile, default_options={"y_coord_down": True})
    assert list(decoded) == [layer]
    return decoded[layer]


def _names(provider: GeoPackageProvider, request: TileRequest, query: Query | None = None) -> set[str]:
    tile = provider.tile(request, query or Query())
    return (
        set() if tile == b"" else {f["properties"]["name"] for f in _decode(tile, request.layer)["features"]}
    )


def _to_crs(geometry: dict[str, Any], request: TileRequest) -> shapely.Geometry:
    """A decoded geometry (tile units, y down) back in the tile matrix set's CRS."""
    minx, miny, maxx, maxy = request.bounds
    sx, sy = (maxx - minx) / request.extent, (maxy - miny) / request.extent
    geom = shapely.geometry.shape(geometry)
    return shapely.transform(geom, lambda c: np.column_stack((minx + c[:, 0] * sx, maxy - c[:, 1] * sy)))


def _expected_in_tile(geometry: shapely.Geometry, request: TileRequest) -> shapely.Geometry:
    """An oracle CRS84 geometry in the tile's CRS, clipped to the tile and its buffer."""
    if request.crs.srid == 3857:
        to = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
        geometry = shapely.transform(
            geometry, lambda c: np.column_stack(to.transform(c[:, 0], np.clip(c[:, 1], -85.06, 85.06)))
        )
    minx, miny, maxx, maxy = request.bounds
    pad = (maxx - minx) * request.buffer / request.extent
    return shapely.clip_by_rect(geometry, minx - pad, miny - pad, maxx + pad, maxy + pad)


def _iou(a: shapely.Geometry, b: shapely.Geometry) -> float:
    return shapely.intersection(a, b).area / shapely.union(a, b).area


def _rings(geometry: dict[str, Any]) -> list[tuple[list, list[list]]]:
    if geometry["type"] == "Polygon":
        return [(geometry["coordinates"][0], geometry["coordinates"][1:])]
    if geometry["type"] == "MultiPolygon":
        return [(p[0], p[1:]) for p in geometry["coordinates"]]
    return []


def _signed_area(ring: list) -> float:
    xy = np.asarray(ring, dtype=float)
    return float(np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1]) / 2)


# -- the layer -------------------------------------------------------------------------------
def test_layer_name_extent_and_ids(countries: GeoPackageProvider, oracle: dict) -> None:
    request = _at(WMQ, 5, *PARIS)
    layer = _decode(countries.tile(request, Query()))
    assert layer["extent"] == 4096
    assert layer["version"] == 2
    by_name = {f["properties"]["name"]: f for f in layer["features"]}
    assert "France" in by_name
    for name, feature in by_name.items():
        # The GeoPackage fid is the MVT feature id.
        assert feature["id"] == oracle[name]["fid"]
        assert feature["properties"]["iso_a3"] == oracle[name]["properties"]["iso_a3"]
        assert feature["properties"]["pop_est"] == pytest.approx(oracle[name]["properties"]["pop_est"])


def test_features_are_those_gdal_places_in_the_tile(countries: GeoPackageProvider, oracle: dict) -> None:
    for request in (_at(WMQ, 5, *PARIS), _at(WMQ, 3, 25.0, -29.0), _at(CRS84Q, 4, *PARIS)):
        expected = {
            name
            for name, item in oracle.items()
            if not shapely.is_empty(_expected_in_tile(item["geometry"], request))
        }
        assert _names(countries, request) == expected


def test_france_in_paris_tile_not_in_a_far_one(countries: GeoPackageProvider) -> None:
    assert "France" in _names(countries, _at(WMQ, 5, *PARIS))
    far = _names(countries, _at(WMQ, 5, 151.2, -33.9))  # Sydney
    assert "Australia" in far and "France" not in far


def test_geometry_lands_where_it_belongs(countries: GeoPackageProvider, oracle: dict) -> None:
    """France decoded back to the tile CRS covers what GDAL's France covers (y not flipped)."""
    for request in (_at(WMQ, 5, *PARIS), _at(WMQ, 3, *PARIS), _at(CRS84Q, 5, *PARIS)):
        layer = _decode(countries.tile(request, Query()))
        france = next(f for f in layer["features"] if f["properties"]["name"] == "France")
        got = _to_crs(france["geometry"], request)
        expected = _expected_in_tile(oracle["France"]["geometry"], request)
        assert _iou(got, expected) > 0.97


@pytest.mark.parametrize(
    ("tms", "z", "x", "y", "extent", "buffer"),
    [
        (WMQ, 0, 0, 0, 4096, 64),
        (WMQ, 1, 0, 0, 4096, 64),
        (WMQ, 1, 1, 1, 4096, 64),
        (WMQ, 2, 2, 1, 4096, 64),
        (WMQ, 5, 16, 11, 4096, 64),
        (WMQ, 5, 16, 11, 4096, 0),
        (WMQ, 4, 8, 5, 512, 16),
        (CRS84Q, 0, 0, 0, 4096, 64),
        (CRS84Q, 0, 1, 0, 4096, 64),
        (CRS84Q, 2, 4, 1, 4096, 256),
    ],
)
def test_coordinates_stay_in_tile_and_buffer(
    countries: GeoPackageProvider, tms: TileMatrixSet, z: int, x: int, y: int, extent: int, buffer: int
) -> None:
    request = _request(tms, z, x, y, extent=extent, buffer=buffer)
    layer = _decode(countries.tile(request, Query()))
    assert layer["extent"] == extent
    coords = np.concatenate(
        [shapely.get_coordinates(shapely.geometry.shape(f["geometry"])) for f in layer["features"]]
    )
    assert coords.min() >= -buffer
    assert coords.max() <= extent + buffer
    assert np.array_equal(coords, np.round(coords))


def test_polygons_are_valid_and_wound_for_mvt(countries: GeoPackageProvider) -> None:
    """MVT 4.3.4: exteriors have positive area in tile coordinates (y down), holes negative."""
    seen_hole = False
    for request in (
        _request(WMQ, 0, 0, 0),
        _at(WMQ, 3, 27.0, -29.5),
        _at(WMQ, 5, *PARIS),
        _request(CRS84Q, 1, 2, 1),
    ):
        for feature in _decode(countries.tile(request, Query()))["features"]:
            for exterior, holes in _rings(feature["geometry"]):
                assert _signed_area(exterior) > 0
                for hole in holes:
                    seen_hole = True
                    assert _signed_area(hole) < 0
            assert shapely.is_valid(shapely.geometry.shape(feature["geometry"])), feature["properties"][
                "name"
            ]
    assert seen_hole  # South Africa keeps Lesotho out


def test_simplify_drops_detail_below_a_tile_unit(countries: GeoPackageProvider) -> None:
    def vertices(simplify: bool) -> int:
        layer = _decode(countries.tile(_request(WMQ, 0, 0, 0, simplify=simplify), Query()))
        return sum(
            len(shapely.get_coordinates(shapely.geometry.shape(f["geometry"]))) for f in layer["features"]
        )

    assert vertices(True) < vertices(False)


def test_same_tile_same_bytes(countries: GeoPackageProvider) -> None:
    request = _at(WMQ, 4, *PARIS)
    assert countries.tile(request, Query()) == countries.tile(request, Query())


# -- filters and properties --------------------------------------------------------------------
def test_cql2_filter(countries: GeoPackageProvider, oracle: dict) -> None:
    request = _at(WMQ, 5, *PARIS)
    everything = _names(countries, request)
    big = parse_cql2("continent = 'Europe' AND pop_est > 50000000", "cql2-text")
    expected = {n for n in everything if oracle[n]["properties"]["pop_est"] > 50_000_000}
    assert expected and expected != everything
    assert _names(countries, request, Query(filter=big)) == expected
    spatial = parse_cql2("S_INTERSECTS(geom, POINT(2.35 48.85))", "cql2-text")
    assert _names(countries, request, Query(filter=spatial)) == {"France"}
    assert _names(countries, request, Query(equals={"iso_a3": "DEU"})) == {"Germany"}
    assert countries.tile(request, Query(filter=parse_cql2("name = 'Atlantis'", "cql2-text"))) == b""


def test_property_selection(countries: GeoPackageProvider, oracle: dict) -> None:
    request = _at(WMQ, 5, *PARIS)
    layer = _decode(countries.tile(request, Query(properties=["name", "continent"])))
    for feature in layer["features"]:
        assert set(feature["properties"]) == {"name", "continent"}
        assert feature["id"] == oracle[feature["properties"]["name"]]["fid"]
    bare = _decode(countries.tile(request, Query(properties=[])))
    assert all(f["properties"] == {} for f in bare["features"])
    assert len(bare["features"]) == len(layer["features"])
    with pytest.raises(InvalidQuery):
        countries.tile(request, Query(properties=["name", "nope"]))


def test_point_layer_values(places: GeoPackageProvider) -> None:
    request = _request(WMQ, 0, 0, 0, layer="places")
    layer = _decode(places.tile(request, Query()), "places")
    by_id = {f["id"]: f for f in layer["features"]}
    assert set(by_id) == {1, 2}  # the row without geometry has no place in a tile
    assert by_id[1]["properties"] == {
        "name": "Paris",
        "pop": 2_100_000,
        "visited": "2020-01-02",
        "capital": True,
    }
    # A null value is left out, not written as a string or zero.
    assert by_id[2]["properties"] == {"pop": 8_300_000, "visited": "2021-05-06", "capital": False}
    assert by_id[1]["geometry"]["type"] == "Point"


def test_mixed_geometry_types(world: GeoPackage) -> None:
    shapes = _provider(world, "shapes")
    assert shapes.schema.geometry_type == "GEOMETRY"

    def layer(simplify: bool) -> dict[str, dict[str, Any]]:
        tile = shapes.tile(_at(WMQ, 3, 2.0, 45.0, layer="shapes", simplify=simplify), Query())
        return {f["properties"]["name"]: f["geometry"] for f in _decode(tile, "shapes")["features"]}

    detailed, simplified = layer(False), layer(True)
    # A collection becomes its polygonal part: MVT features have one geometry type.
    assert simplified["collection"]["type"] == "Polygon"
    assert simplified["points"]["type"] == "MultiPoint"
    assert len(simplified["points"]["coordinates"]) == 2
    assert simplified["line"]["type"] == "LineString"
    # The line's zigzag is 0.001 degrees, far less than a z3 tile unit: simplified away.
    assert len(simplified["line"]["coordinates"]) < 10 < len(detailed["line"]["coordinates"])


@pytest.mark.parametrize("tms", [WMQ, CRS84Q], ids=lambda t: t.id)
def test_point_position(places: GeoPackageProvider, tms: TileMatrixSet) -> None:
    request = _at(tms, 10, *PARIS, layer="places")
    layer = _decode(places.tile(request, Query()), "places")
    [paris] = [f for f in layer["features"] if f["id"] == 1]
    got = shapely.get_coordinates(_to_crs(paris["geometry"], request))[0]
    expected = mercantile.xy(*PARIS) if tms is WMQ else PARIS
    unit = (request.bounds[2] - request.bounds[0]) / request.extent
    assert np.abs(got - np.asarray(expected)).max() <= unit


def test_world_crs84_quad(countries: GeoPackageProvider) -> None:
    west, east = _names(countries, _request(CRS84Q, 0, 0, 0)), _names(countries, _request(CRS84Q, 0, 1, 0))
    assert "United States of America" in west and "United States of America" not in east
    assert "Germany" in east and "Germany" not in west
    north_east = _names(countries, _request(CRS84Q, 1, 2, 0))  # lon 0..90, lat 0..90
    assert {"France", "Germany", "India"} <= north_east
    assert "Australia" not in north_east


# -- limits and empty tiles ----------------------------------------------------------------------
def test_max_features(countries: GeoPackageProvider, oracle: dict) -> None:
    request = _request(WMQ, 0, 0, 0, max_features=5)
    layer = _decode(countries.tile(request, Query()))
    assert len(layer["features"]) == 5
    # The rows are taken in fid order, so the cap is stable between requests.
    assert [f["id"] for f in layer["features"]] == sorted(item["fid"] for item in oracle.values())[:5]
    assert countries.tile(_request(WMQ, 0, 0, 0, max_features=0), Query()) == b""


def test_empty_tiles(countries: GeoPackageProvider, places: GeoPackageProvider) -> None:
    assert countries.tile(_at(WMQ, 6, -130.0, -40.0), Query()) == b""  # South Pacific
    assert countries.tile(_at(CRS84Q, 6, -130.0, -40.0), Query()) == b""
    assert places.tile(_at(WMQ, 8, 100.0, 10.0, layer="places"), Query()) == b""


def test_bad_requests(countries: GeoPackageProvider) -> None:
    with pytest.raises(InvalidQuery):
        countries.tile(TileRequest("countries", WMQ.crs, (0.0, 0.0, 0.0, 1.0), 3), Query())
    with pytest.raises(InvalidQuery):
        countries.tile(TileRequest("countries", WMQ.crs, (0.0, 0.0, float("inf"), 1.0), 3), Query())
    with pytest.raises(InvalidQuery):
        countries.tile(_request(WMQ, 0, 0, 0, extent=0), Query())
    with pytest.raises(InvalidQuery):
        countries.tile(_request(WMQ, 0, 0, 0, layer=""), Query())


def test_client_gone(countries: GeoPackageProvider) -> None:
    request = _request(WMQ, 0, 0, 0)
    staying = dataclasses.replace(request, client_gone=lambda: False)
    assert countries.tile(staying, Query()) == countries.tile(request, Query())
    with pytest.raises(Unavailable):
        countries.tile(dataclasses.replace(request, client_gone=lambda: True), Query())


# -- a projected storage CRS -------------------------------------------------------------------
def test_projected_storage(source: dict[str, Path], countries: GeoPackageProvider) -> None:
    gpkg = GeoPackage(source["laea"])
    try:
        laea = _provider(gpkg)
        assert laea.schema.storage_crs.srid == 3035
        request = _at(WMQ, 5, *PARIS)
        assert _names(laea, request) == _names(countries, request)

        def france(provider: GeoPackageProvider) -> shapely.Geometry:
            layer = _decode(provider.tile(request, Query()))
            return _to_crs(
                next(f for f in layer["features"] if f["properties"]["name"] == "France")["geometry"], request
            )

        assert _iou(france(laea), france(countries)) > 0.98
        # The world tile reaches far beyond where LAEA Europe means anything: it still
        # shows the whole layer, not what a projected world box happens to cover.
        meta, _, _, values = pyogrio.raw.read(source["laea"], layer="countries", read_geometry=False)
        names = set(values[list(meta["fields"]).index("name")])
        assert _names(laea, _request(WMQ, 0, 0, 0)) == names
        west, east = _names(laea, _request(CRS84Q, 0, 0, 0)), _names(laea, _request(CRS84Q, 0, 1, 0))
        assert west | east == names and {"Portugal", "Ireland"} <= west - east
    finally:
        gpkg.close()


# -- revisions ---------------------------------------------------------------------------------
SQUARE = {"type": "Polygon", "coordinates": [[[-30, 40], [-29, 40], [-29, 41], [-30, 41], [-30, 40]]]}


@pytest.fixture
def copy(source: dict[str, Path], tmp_path: Path) -> Path:
    target = tmp_path / "edit.gpkg"
    shutil.copyfile(source["plain"], target)
    return target


def test_revision_counts_writes_and_is_shared(copy: Path) -> None:
    writer_file, reader_file = GeoPackage(copy), GeoPackage(copy)
    try:
        writer = _provider(writer_file, editable=True)
        reader = _provider(reader_file)
        other_layer = _provider(reader_file, "places")
        assert writer.revision() == reader.revision() == 0
        tile = _at(WMQ, 5, -29.5, 40.5)
        assert reader.tile(tile, Query()) == b""

        created = writer.create(
            [{"type": "Feature", "geometry": SQUARE, "properties": {"name": "Atlantis"}}]
        )[0]
        assert writer.revision() == reader.revision() == 1
        assert _names(reader, tile) == {"Atlantis"}  # and the tile sees the write
        writer.update(str(created.id), {"properties": {"name": "Lyonesse"}})
        assert reader.revision() == 2
        assert _names(reader, tile) == {"Lyonesse"}
        writer.replace(str(created.id), {"type": "Feature", "geometry": SQUARE, "properties": {"name": "Ys"}})
        assert reader.revision() == 3
        writer.delete(str(created.id))
        assert writer.revision() == reader.revision() == 4
        assert reader.tile(tile, Query()) == b""

        # A write that fails is rolled back with its count.
        with pytest.raises(NotFound):
            writer.delete(str(created.id))
        with pytest.raises(InvalidData):
            writer.create([{"type": "Feature", "geometry": SQUARE, "properties": {"nope": 1}}])
        assert reader.revision() == 4
        assert other_layer.revision() == 0  # per layer
    finally:
        writer_file.close()
        reader_file.close()

    # Another process (a gunicorn worker) reads the same number from the file.
    script = (
        "import sys; from providers.geopackage import GeoPackage, GeoPackageProvider; "
        "g = GeoPackage(sys.argv[1]); "
        "print(GeoPackageProvider(g, 'countries', g.describe('countries')).revision())"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(copy)], cwd=ROOT, check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "4"


def test_revisions_live_beside_the_file_not_in_it(copy: Path) -> None:
    gpkg = GeoPackage(copy)
    try:
        writer = _provider(gpkg, editable=True)
        created = writer.create(
            [{"type": "Feature", "geometry": SQUARE, "properties": {"name": "Atlantis"}}]
        )[0]
        writer.delete(str(created.id))
        assert gpkg.discover() == ["countries", "places", "shapes"]
    finally:
        gpkg.close()
    with sqlite3.connect(copy.with_suffix(".geoharbor.sqlite")) as conn:
        assert conn.execute("SELECT layer, revision FROM revisions").fetchall() == [("countries", 2)]
    with sqlite3.connect(copy) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not any("geoharbor" in t for t in tables)  # GDAL and QGIS list every table
    if shutil.which("ogrinfo"):
        info = subprocess.run(
            ["ogrinfo", "-so", "-al", str(copy)], check=True, capture_output=True, text=True
        )
        assert "Layer name: countries" in info.stdout
        assert "Feature Count: 177" in info.stdout
    assert pyogrio.read_info(copy, layer="countries")["features"] == 177


def test_revision_of_a_read_only_file(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root can write any file, so read-only is what SQLite says: every connection is ``mode=ro``."""
    connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3, "connect", lambda database, **kw: connect(database.replace("mode=rw", "mode=ro"), **kw)
    )
    gpkg = GeoPackage(copy)
    try:
        provider = _provider(gpkg, editable=True)
        assert provider.revision() == 0
        with pytest.raises(Unavailable):
            provider.create([{"type": "Feature", "geometry": SQUARE, "properties": {"name": "Atlantis"}}])
        assert provider.revision() == 0
        assert "France" in _names(provider, _at(WMQ, 5, *PARIS))  # reads still work
    finally:
        gpkg.close()
