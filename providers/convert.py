"""A layer of a spatial file converted to another format, streamed in batches.

GDAL (through pyogrio's Arrow interface) reads the source in record batches and
writes GeoPackage, GeoJSON, FlatGeobuf and Shapefile (zipped) from that stream, so a
large file never needs its size in memory. The GDAL in pyogrio's wheel has no
Parquet driver: GeoParquet is written with pyarrow, batch by batch, with the
GeoParquet 1.1 ``geo`` metadata (WKB geometry, the CRS as PROJJSON from pyproj,
geometry types and bbox gathered while writing).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio.raw
import shapely
from pyogrio.errors import DataLayerError, DataSourceError, FieldError, GeometryError
from pyproj import CRS

from providers.errors import InvalidData, InvalidQuery
from providers.export import zip_outputs
from providers.files import Layer, open_arrow

#: Features per record batch (and held in memory at once).
BATCH = 20_000
GEOPARQUET_VERSION = "1.1.0"


@dataclass(frozen=True, slots=True)
class TargetFormat:
    """How a format is written and served."""

    driver: str | None  # GDAL driver; None: written with pyarrow
    extension: str
    media_type: str
    zipped: bool = False


FORMATS: dict[str, TargetFormat] = {
    "gpkg": TargetFormat("GPKG", "gpkg", "application/geopackage+sqlite3"),
    "geojson": TargetFormat("GeoJSON", "geojson", "application/geo+json"),
    "fgb": TargetFormat("FlatGeobuf", "fgb", "application/vnd.flatgeobuf"),
    "parquet": TargetFormat(None, "parquet", "application/vnd.apache.parquet"),
    "shp": TargetFormat("ESRI Shapefile", "shp", "application/zip", zipped=True),
}
#: GDAL layer creation options per driver: GeoJSON as RFC 7946 (lon/lat, right-hand rings).
_LAYER_OPTIONS = {"GeoJSON": {"RFC7946": "YES"}, "ESRI Shapefile": {"ENCODING": "UTF-8"}}
_MULTI = {"Point": "MultiPoint", "LineString": "MultiLineString", "Polygon": "MultiPolygon"}
#: Multi type -> (shapely type id of its single geometries, constructor of the multi from a list).
_PROMOTE = {
    "MultiPoint": (0, shapely.MultiPoint),
    "MultiLineString": (1, shapely.MultiLineString),
    "MultiPolygon": (3, shapely.MultiPolygon),
}
#: shapely type id -> GeoJSON geometry type name.
_TYPE_NAMES = ["Point", "LineString", "LineString", "Polygon", "MultiPoint", "MultiLineString"]
_TYPE_NAMES += ["MultiPolygon", "GeometryCollection"]


def convert(path: Path, layer: Layer, source_driver: str, fmt: str, directory: Path, name: str) -> Path:
    """Write ``layer`` of the file at ``path`` as ``fmt`` into ``directory``; returns the file to serve.

    The caller owns ``directory`` and removes it with whatever was written.
    """
    target_format = FORMATS.get(fmt)
    if target_format is None:
        raise InvalidQuery(f"unknown export format {fmt[:20]!r}; use one of {', '.join(FORMATS)}")
    target = directory / f"{name}.{target_format.extension}"
    try:
        with open_arrow(path, layer.source_layer, BATCH) as (meta, reader):
            column = meta["geometry_name"] or "wkb_geometry"
            has_geometry = column in reader.schema.names
            if target_format.driver is None:
                _write_geoparquet(reader, column if has_geometry else None, meta.get("crs"), target)
            else:
                _write_gdal(
                    reader, column if has_geometry else None, meta, source_driver, target_format, target
                )
    except (DataSourceError, DataLayerError, FieldError, GeometryError) as exc:
        raise InvalidData(f"layer {layer.name!r} cannot be written as {fmt}: {str(exc)[:300]}") from exc
    if target_format.zipped:
        return zip_outputs(target)
    return target


def _write_gdal(
    reader: pa.RecordBatchReader,
    column: str | None,
    meta: dict[str, Any],
    source_driver: str,
    target_format: TargetFormat,
    target: Path,
) -> None:
    """Stream the batches into GDAL's writer, single geometries promoted where the layer is Multi.

    A Shapefile declares "Polygon" for polygons and multipolygons alike, which stricter
    formats (FlatGeobuf) refuse: such a layer is written as MultiPolygon.
    """
    geometry_type = meta.get("geometry_type") or "Unknown"
    if source_driver == "ESRI Shapefile" and geometry_type in ("Polygon", "LineString"):
        geometry_type = _MULTI[geometry_type]
    promote = geometry_type in _MULTI.values()
    stream: pa.RecordBatchReader = reader
    if promote and column is not None:
        index = reader.schema.get_field_index(column)
        single_id, make_multi = _PROMOTE[geometry_type]

        def promoted() -> Iterator[pa.RecordBatch]:
            for batch in reader:
                geometries = shapely.from_wkb(batch.column(index).to_numpy(zero_copy_only=False))
                single = shapely.get_type_id(geometries) == single_id
                if single.any():
                    for i in np.flatnonzero(single):
                        geometries[i] = make_multi([geometries[i]])
                    wkb = pa.array(shapely.to_wkb(geometries).tolist(), type=pa.binary())
                    batch = batch.set_column(index, reader.schema.field(index), wkb)
                yield batch

        stream = pa.RecordBatchReader.from_batches(reader.schema, promoted())
    pyogrio.raw.write_arrow(
        stream,
        str(target),
        layer=target.stem,
        driver=target_format.driver,
        geometry_name=column,
        geometry_type=geometry_type if column is not None else None,
        crs=meta.get("crs") if column is not None else None,
        layer_options=_LAYER_OPTIONS.get(target_format.driver or ""),
    )


def _write_geoparquet(
    reader: pa.RecordBatchReader, column: str | None, crs: str | None, target: Path
) -> None:
    """GeoParquet 1.1: a WKB ``geometry`` column and the ``geo`` file metadata, written batch by batch."""
    names = reader.schema.names
    geometry_name = "geometry" if "geometry" not in names or column == "geometry" else "geometry_wkb"
    fields = []
    for field in reader.schema:
        if field.name == column:
            fields.append(pa.field(geometry_name, pa.binary()))  # plain WKB, no Arrow extension type
        else:
            fields.append(field)
    schema = pa.schema(fields)
    kinds: set[str] = set()
    bounds = np.array([np.inf, np.inf, -np.inf, -np.inf])
    # No stored Arrow schema: readers then take the schema metadata from the file metadata, where
    # "geo" is added once every batch is written (its bbox and types are known only then).
    with pq.ParquetWriter(target, schema, store_schema=False) as writer:
        for batch in reader:
            arrays = list(batch.columns)
            if column is not None:
                index = names.index(column)
                wkb = batch.column(index).to_numpy(zero_copy_only=False)
                geometries = shapely.from_wkb(wkb)
                present = geometries[~shapely.is_missing(geometries) & ~shapely.is_empty(geometries)]
                if len(present):
                    box = shapely.total_bounds(present)
                    bounds = np.concatenate(
                        [np.minimum(bounds[:2], box[:2]), np.maximum(bounds[2:], box[2:])]
                    )
                    ids = shapely.get_type_id(present)
                    has_z = shapely.has_z(present)
                    kinds.update(
                        f"{_TYPE_NAMES[t]}{' Z' if z else ''}" for t, z in zip(ids, has_z, strict=True)
                    )
                arrays[index] = pa.array(wkb.tolist(), type=pa.binary())
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
        if column is not None:
            geo = {
                "version": GEOPARQUET_VERSION,
                "primary_column": geometry_name,
                "columns": {
                    geometry_name: {
                        "encoding": "WKB",
                        "geometry_types": sorted(kinds),
                        "crs": CRS.from_user_input(crs).to_json_dict() if crs else None,
                        **({"bbox": bounds.tolist()} if np.isfinite(bounds).all() else {}),
                    }
                },
            }
            writer.add_key_value_metadata({"geo": orjson.dumps(geo).decode()})
