"""Features written to files in GIS formats, with GDAL through pyogrio.

No format is written by hand: a provider's rows (:meth:`FeatureProvider.records`,
geometries as WKB) are turned into numpy arrays and handed to ``pyogrio.raw.write``,
which drives GDAL's own writers. Formats made of several files (a shapefile) come
back zipped. Rows are read from the provider in batches; drivers that can append
(GeoPackage, Shapefile, GeoJSON) are written batch by batch, so an export holds one
batch in memory, not the layer.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyogrio.raw
import shapely
from pyogrio.errors import DataLayerError, DataSourceError, FieldError, GeometryError

from providers.base import FeatureProvider, Field, Query
from providers.errors import InvalidData, InvalidQuery, ProviderError

#: Features written per pyogrio call (and held in memory) by drivers that can append.
BATCH = 20_000

#: GDAL's "time zone is UTC" flag for DateTime fields (OGR's TZFlag 100).
UTC_FLAG = 100


class TooMany(ProviderError):
    """More features match than an export may hold."""

    status = 413
    code = "PayloadTooLarge"


@dataclass(frozen=True, slots=True)
class ExportFormat:
    """How one export format is written and served."""

    driver: str  # the GDAL driver
    extension: str  # of the main file
    media_type: str  # of what is served (the zip for multi-file formats)
    zipped: bool = False  # several files: served as one zip
    appends: bool = False  # the driver can add features to a written layer
    dataset_options: dict[str, str] = field(default_factory=dict)
    layer_options: dict[str, str] = field(default_factory=dict)
    #: Geometry types the format can hold (None: any).
    geometry_types: frozenset[str] | None = None
    #: The format has a date-time field type; without one timestamps are written as ISO 8601 text.
    datetimes: bool = True


FORMATS: dict[str, ExportFormat] = {
    "shp": ExportFormat(
        "ESRI Shapefile",
        "shp",
        "application/zip",
        zipped=True,
        appends=True,
        layer_options={"ENCODING": "UTF-8"},  # and a .cpg saying so
        datetimes=False,  # dBase has dates only
    ),
    "kml": ExportFormat("KML", "kml", "application/vnd.google-earth.kml+xml"),
    "gpx": ExportFormat(
        "GPX",
        "gpx",
        "application/gpx+xml",
        # Attributes other than GPX's own go into <extensions>.
        dataset_options={"GPX_USE_EXTENSIONS": "YES"},
        geometry_types=frozenset({"Point", "LineString", "MultiLineString"}),
    ),
    # GML 3 in one file: no .xsd beside it (readers such as GDAL infer the schema).
    "gml": ExportFormat(
        "GML", "gml", "application/gml+xml", dataset_options={"FORMAT": "GML3", "XSISCHEMA": "OFF"}
    ),
    "csv": ExportFormat("CSV", "csv", "text/csv", layer_options={"GEOMETRY": "AS_WKT"}),
    "geojson": ExportFormat("GeoJSON", "geojson", "application/geo+json", appends=True),
    # GeoPackage 1.2: what every GDAL since 2.2 (and QGIS) opens without a warning.
    "gpkg": ExportFormat(
        "GPKG", "gpkg", "application/geopackage+sqlite3", appends=True, dataset_options={"VERSION": "1.2"}
    ),
}

#: Storage geometry type names -> OGR geometry type names.
_OGR_TYPES = {
    "POINT": "Point",
    "LINESTRING": "LineString",
    "POLYGON": "Polygon",
    "MULTIPOINT": "MultiPoint",
    "MULTILINESTRING": "MultiLineString",
    "MULTIPOLYGON": "MultiPolygon",
    "GEOMETRYCOLLECTION": "GeometryCollection",
}
#: shapely type id -> OGR geometry type name.
_SHAPELY_TYPES = {
    0: "Point",
    1: "LineString",
    2: "LineString",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}
_MULTI = {"Point": "MultiPoint", "LineString": "MultiLineString", "Polygon": "MultiPolygon"}


def safe_name(name: str, fallback: str = "export") -> str:
    """A file or layer name made of letters, digits, '_', '-' and '.', for any layer name."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")
    return cleaned[:80] or fallback


def export(
    provider: FeatureProvider,
    query: Query,
    fmt: str,
    directory: str | os.PathLike[str],
    name: str,
    max_features: int,
) -> Path:
    """Write the features of ``query`` as ``fmt`` into ``directory``; returns the file to serve.

    ``query.crs`` is the output CRS (x/y axis order: GDAL's traditional GIS order).
    More matches than ``max_features`` is an error (413) rather than a silently cut
    file. The caller owns ``directory`` and removes it.
    """
    spec = FORMATS.get(fmt)
    if spec is None:
        raise InvalidQuery(f"unknown export format {fmt[:20]!r}; use one of {', '.join(FORMATS)}")
    schema = provider.schema
    query.limit = max_features + 1
    query.offset = 0
    query.count = "none"
    header, rows = provider.records(query, geometry="wkb")
    has_geometry = (
        schema.geometry_field is not None and len(header) > 1 and header[1] == schema.geometry_field
    )
    names = header[2:] if has_geometry else header[1:]
    fields = [schema.check_property(n) for n in [header[0], *names]]
    field_names = _unique([header[0], *names], reserved={"wkt"} if fmt == "csv" else set())
    declared = _OGR_TYPES.get((schema.geometry_type or "").upper()) if has_geometry else None
    layer = safe_name(name)
    target = Path(directory) / f"{layer}.{spec.extension}"
    written = 0
    geometry_type: str | None = None
    for batch in _batches(rows, BATCH if spec.appends else max_features + 1):
        append = written > 0
        written += len(batch)
        if written > max_features:
            raise TooMany(f"more than {max_features} features to export: narrow it with 'where' or 'bounds'")
        geometries = _geometries(batch) if has_geometry else None
        if geometries is not None and spec.driver == "GPX":
            keep = np.array([g is not None for g in geometries], dtype=bool)
            batch = [row for row, k in zip(batch, keep, strict=True) if k]  # GPX cannot hold a null geometry
            geometries = geometries[keep]
        if geometry_type is None:
            geometry_type = _geometry_type(declared, geometries) if has_geometry else None
            if spec.geometry_types is not None and geometry_type not in spec.geometry_types:
                raise InvalidQuery(
                    f"{fmt} holds only {', '.join(sorted(spec.geometry_types))} geometries, "
                    f"not {geometry_type or 'none'}"
                )
        first = 2 if has_geometry else 1
        columns = [[row[0] for row in batch]] + [[row[first + i] for row in batch] for i in range(len(names))]
        _write(
            target,
            spec,
            layer,
            geometries,
            geometry_type,
            fields,
            field_names,
            columns,
            srid=query.crs.srid,
            append=append,
        )
    if not target.exists():  # no feature at all: an empty layer of the right shape
        geometry_type = declared or ("Unknown" if has_geometry else None)
        if spec.geometry_types is not None and geometry_type not in spec.geometry_types:
            geometry_type = sorted(spec.geometry_types)[0]
        _write(
            target,
            spec,
            layer,
            np.array([], dtype=object) if has_geometry else None,
            geometry_type,
            fields,
            field_names,
            [[] for _ in fields],
            srid=query.crs.srid,
            append=False,
        )
    if spec.zipped:
        return zip_outputs(target)
    return target


def _batches(rows: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _unique(names: list[str], reserved: set[str]) -> list[str]:
    """Field names as written; a clash with a column the driver adds (CSV's WKT) gets a suffix."""
    out: list[str] = []
    taken = {r.lower() for r in reserved}
    for name in names:
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{name}_{n}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def _geometries(batch: list[tuple]) -> np.ndarray:
    out = np.empty(len(batch), dtype=object)
    for i, row in enumerate(batch):
        value = row[1]
        out[i] = bytes(value) if value is not None else None
    return out


def _geometry_type(declared: str | None, geometries: np.ndarray | None) -> str:
    """The layer's OGR geometry type: the declared one, else what the features are.

    A ``GEOMETRY`` column of points and multipoints is written as MultiPoint (GDAL
    promotes the singles), as a shapefile holds one type; a real mix stays "Unknown".
    """
    if declared is not None:
        return declared
    if geometries is None or not len(geometries):
        return "Unknown"
    present = [g for g in geometries if g is not None]
    if not present:
        return "Unknown"
    kinds = {_SHAPELY_TYPES.get(int(t), "Unknown") for t in shapely.get_type_id(shapely.from_wkb(present))}
    if len(kinds) == 1:
        return kinds.pop()
    for single, multi in _MULTI.items():
        if kinds == {single, multi}:
            return multi
    return "Unknown"


def _array(field_def: Field, values: list[Any], datetimes: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A numpy column for pyogrio of one field's values, and its null mask."""
    mask = np.array([v is None for v in values], dtype=bool)
    if field_def.type == "integer":
        data = np.array([0 if v is None else int(v) for v in values], dtype=np.int64)
        return data, mask
    if field_def.type == "number":
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64), mask
    if field_def.type == "boolean":
        return np.array([bool(v) for v in values], dtype=bool), mask
    if field_def.format == "date":
        return np.array([_day(v) for v in values], dtype="datetime64[D]"), None
    if field_def.format == "date-time" and datetimes:
        return np.array([_instant(v) for v in values], dtype="datetime64[ms]"), None
    if field_def.format == "date-time":
        return np.array([_iso(v) for v in values], dtype=object), None
    return np.array([_text(v) for v in values], dtype=object), None


def _day(value: Any) -> Any:
    if value is None:
        return np.datetime64("NaT")
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        return np.datetime64(value.isoformat())
    try:
        return np.datetime64(str(value)[:10])
    except ValueError:
        return np.datetime64("NaT")


def _instant(value: Any) -> Any:
    """A timestamp as UTC without zone (its field is flagged UTC to GDAL)."""
    if value is None:
        return np.datetime64("NaT")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return np.datetime64("NaT")
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return np.datetime64(value.isoformat(timespec="milliseconds"))
    if isinstance(value, date):
        return np.datetime64(value.isoformat())
    return np.datetime64("NaT")


def _iso(value: Any) -> str | None:
    """A timestamp as RFC 3339 text, in UTC when it has a zone."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.isoformat().replace("+00:00", "Z")
    return _text(value)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def _write(
    target: Path,
    spec: ExportFormat,
    layer: str,
    geometries: np.ndarray | None,
    geometry_type: str | None,
    fields: list[Field],
    field_names: list[str],
    columns: list[list[Any]],
    *,
    srid: int,
    append: bool,
) -> None:
    arrays, masks = [], []
    offsets: dict[str, np.ndarray] = {}
    for field_def, name, values in zip(fields, field_names, columns, strict=True):
        data, mask = _array(field_def, values, spec.datetimes)
        arrays.append(data)
        masks.append(mask)
        if field_def.format == "date-time" and spec.datetimes:
            offsets[name] = np.full(len(values), UTC_FLAG, dtype=np.int32)
    promote = geometry_type in _MULTI.values()
    try:
        pyogrio.raw.write(
            str(target),
            geometries,
            arrays,
            field_names,
            field_mask=masks,
            layer=layer,
            driver=spec.driver,
            geometry_type=geometry_type if geometries is not None else None,
            crs=f"EPSG:{srid}" if geometries is not None else None,
            promote_to_multi=promote or None,
            append=append,
            dataset_options=dict(spec.dataset_options) or None,
            layer_options=dict(spec.layer_options) or None,
            gdal_tz_offsets=offsets or None,
        )
    except (DataSourceError, DataLayerError, FieldError, GeometryError) as exc:
        raise InvalidData(f"GDAL cannot write these features as {spec.driver}: {str(exc)[:300]}") from exc


def zip_outputs(target: Path) -> Path:
    """The files GDAL wrote for ``target`` (same stem) in one zip beside them."""
    archive = target.with_suffix(".zip")
    parts = sorted(p for p in target.parent.iterdir() if p.stem == target.stem and p != archive)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for part in parts:
            zipped.write(part, arcname=part.name)
    return archive
