"""Spatial files of every format the server reads, built with GDAL (pyogrio) and pyarrow
from Natural Earth countries, for the datasets and importer tests."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio.raw
import shapely
from pyproj import CRS, Transformer

from server.demo import natural_earth_countries

#: Countries around France, written in Lambert 93 for the Shapefile.
FRANCE_AREA = (-5.0, 41.0, 10.0, 52.0)


def sample_files(out: Path) -> dict[str, Path]:
    """Files of every format in ``out``, from Natural Earth; keyed by format."""
    meta, _fids, wkb, values = pyogrio.raw.read(natural_earth_countries())
    names = list(meta["fields"])
    polygons = shapely.from_wkb(wkb)
    points = shapely.to_wkb(shapely.point_on_surface(polygons))
    made: dict[str, Path] = {}

    def write(name: str, driver: str, geoms: Any, geometry_type: str, **kwargs: Any) -> Path:
        path = out / name
        pyogrio.raw.write(
            path,
            np.asarray(geoms, dtype=object),
            values,
            names,
            driver=driver,
            crs=kwargs.pop("crs", "EPSG:4326"),
            geometry_type=geometry_type,
            **kwargs,
        )
        return path

    gpkg = write("two.gpkg", "GPKG", wkb, "MultiPolygon", layer="countries", promote_to_multi=True)
    write("two.gpkg", "GPKG", points, "Point", layer="points", append=True)
    made["gpkg"] = gpkg
    made["geojson"] = write("points.geojson", "GeoJSON", points, "Point")
    made["fgb"] = write("points.fgb", "FlatGeobuf", points, "Point")
    made["csv"] = write("points.csv", "CSV", points, "Point", layer_options={"GEOMETRY": "AS_WKT"})
    made["kml"] = write("points.kml", "KML", points, "Point")
    made["gml"] = write("points.gml", "GML", points, "Point")
    made["gpx"] = write(
        "points.gpx", "GPX", points, "Point", layer="waypoints", dataset_options={"GPX_USE_EXTENSIONS": "YES"}
    )
    # A Shapefile in Lambert 93 (EPSG:2154), zipped with its .shx, .dbf, .prj and .cpg.
    near = shapely.intersects(polygons, shapely.box(*FRANCE_AREA))
    to_l93 = Transformer.from_crs(4326, 2154, always_xy=True)
    l93 = shapely.transform(polygons[near], lambda xy: np.column_stack(to_l93.transform(xy[:, 0], xy[:, 1])))
    shp_dir = out / "shp"
    shp_dir.mkdir()
    pyogrio.raw.write(
        shp_dir / "france.shp",
        np.asarray(shapely.to_wkb(l93), dtype=object),
        [v[near] for v in values],
        names,
        driver="ESRI Shapefile",
        crs="EPSG:2154",
        geometry_type="Polygon",
        layer_options={"ENCODING": "UTF-8"},
    )
    made["shp"] = out / "france.zip"
    with zipfile.ZipFile(made["shp"], "w") as zipped:
        for part in sorted(shp_dir.iterdir()):
            zipped.write(part, arcname=f"france/{part.name}")
    made["shp_dir"] = shp_dir
    made["france_count"] = Path(str(int(near.sum())))  # carried as a path for one dict
    # GeoParquet (WKB geometry, PROJJSON CRS), written with pyarrow as GeoPandas would.
    made["parquet"] = out / "points.parquet"
    table = pa.table(
        {n: values[i] for i, n in enumerate(names)} | {"geometry": pa.array(points, pa.binary())}
    )
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["Point"],
                "crs": CRS.from_epsg(4326).to_json_dict(),
                "bbox": [float(b) for b in shapely.total_bounds(shapely.from_wkb(points))],
            }
        },
    }
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    pq.write_table(table, made["parquet"])
    # A CSV whose coordinates are in PLACE_LAT/PLACE_LON columns GDAL does not take as geometry,
    # with a date as text (yyyyMMdd) and a year as an integer.
    made["latlon_csv"] = out / "places.csv"
    xy = shapely.get_coordinates(shapely.from_wkb(points))
    with open(made["latlon_csv"], "w", encoding="utf-8") as out_csv:
        out_csv.write("NAME,POP,PLACE_LAT,PLACE_LON,SEEN,YEAR\n")
        for i, name in enumerate(values[names.index("name")]):
            out_csv.write(
                f'"{name}",{int(values[names.index("pop_est")][i])},{xy[i, 1]:.6f},{xy[i, 0]:.6f},'
                f"2020{(i % 12) + 1:02d}{(i % 28) + 1:02d},{1990 + i % 30}\n"
            )
    return made
