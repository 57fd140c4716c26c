"""Spatial files on disk: what they are, how to unpack them safely, and their features page by page.

Uploads (the datasets API) and, later, the importer start from a directory of files
a client sent. This module answers the questions both ask, through GDAL (pyogrio):
which files hold spatial data, with which driver, CRS and layers (geometry type,
feature count); and it unpacks zip archives without trusting them: no member may
leave the target directory (zip-slip: ``../`` or absolute names), links are refused,
and the bytes actually written are counted against a limit while extracting, so a
small archive that inflates to terabytes (a zip bomb) stops at the limit.

A Shapefile is one layer made of several files of the same stem (.shp with its .shx,
.dbf, .prj, .cpg); they are checked together, and a .shp whose header announces more
bytes than it has (a truncated upload) is refused instead of read half-way.
"""

from __future__ import annotations

import shutil
import stat
import struct
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pyogrio.raw
import shapely
from pyogrio.errors import DataLayerError, DataSourceError
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from providers.errors import InvalidData, InvalidQuery, ProviderError

#: GeoParquet files, read with pyarrow (the GDAL of the wheels has no Parquet driver).
PARQUET_EXTENSIONS = frozenset({".parquet", ".geoparquet"})
#: Extensions of files GDAL (pyarrow for GeoParquet) may open as vector data (others: sidecars, ignored).
SPATIAL_EXTENSIONS = frozenset(
    {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".csv", ".kml", ".kmz", ".gpx", ".gml", ".xml", ".sqlite"}
    | {".geojsonl", ".geojsons", ".tab", ".mif", ".dxf", ".gdb"}
    | PARQUET_EXTENSIONS
)
#: The files a Shapefile needs besides its .shp, and those it may have.
SHAPEFILE_REQUIRED = (".shx", ".dbf")
#: CSV columns GDAL takes as coordinates or WKT geometry (case-insensitive patterns).
CSV_OPTIONS = {
    "X_POSSIBLE_NAMES": "x,lon,long,longitude,lng,easting",
    "Y_POSSIBLE_NAMES": "y,lat,latitude,northing",
    "GEOM_POSSIBLE_NAMES": "wkt,geom,geometry,the_geom,wkt_geom",
    "KEEP_GEOM_COLUMNS": "NO",
    "AUTODETECT_TYPE": "YES",
}
#: Zip members at most, so that a directory listing stays small.
MAX_MEMBERS = 10_000
_CHUNK = 1 << 20


class NoSpatialData(InvalidData):
    """Nothing in the files is in a spatial format this server reads (the importer's NO_FORMAT)."""

    code = "NoSpatialData"


class TooLarge(ProviderError):
    """An upload or what it unpacks to is over the configured limit."""

    status = 413
    code = "PayloadTooLarge"


@dataclass(frozen=True, slots=True)
class Layer:
    """One layer of a spatial file, as a client sees it and as GDAL opens it again."""

    name: str  # unique within the dataset
    geometry_type: str | None
    feature_count: int
    file: str  # path relative to the dataset directory
    source_layer: str  # the layer's name for GDAL
    crs: str | None  # "EPSG:<code>", or WKT when no EPSG code matches; None: unknown


@dataclass(frozen=True, slots=True)
class SpatialFile:
    """A file GDAL opened, with its driver's short name and layers."""

    file: str
    driver: str
    layers: list[Layer]


def open_options(path: str | Path) -> dict[str, str]:
    """The GDAL open options a file needs to be read as intended (CSV: geometry columns)."""
    return dict(CSV_OPTIONS) if Path(path).suffix.lower() == ".csv" else {}


# -- storing what a client sent ----------------------------------------------------------------
def save_parts(parts: Iterable[tuple[str, IO[bytes]]], directory: Path, max_bytes: int) -> int:
    """Write uploaded files into ``directory``, unpacking zips; returns the bytes on disk.

    ``parts`` are (file name, stream). Names are reduced to their last component
    (the directory is the caller's choice, never the client's), and the bytes written,
    unpacked ones included, are counted against ``max_bytes`` (TooLarge past it).
    """
    directory.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, stream in parts:
        target = directory / _clean_name(name)
        if target.exists():
            raise InvalidData(f"two uploaded files are named {target.name!r}")
        with open(target, "wb") as out:
            total += _copy(stream, out, max_bytes - total)
        if target.suffix.lower() == ".zip":
            total -= target.stat().st_size
            unpacked = directory / target.stem
            total += unpack_zip(target, unpacked, max_bytes - total)
            target.unlink()
    return total


def _clean_name(name: str) -> str:
    """A file name safe to create: the last path component, without control characters."""
    base = PurePosixPath(name.replace("\\", "/")).name
    base = "".join(c for c in base if c.isprintable() and c not in '<>:"|?*').strip(" .")
    return base[:200] or "upload"


def _copy(source: IO[bytes], out: IO[bytes], budget: int) -> int:
    written = 0
    while chunk := source.read(_CHUNK):
        written += len(chunk)
        if written > budget:
            raise TooLarge("the upload is larger than the configured limit")
        out.write(chunk)
    return written


def unpack_zip(archive: Path, target: Path, max_bytes: int) -> int:
    """Extract ``archive`` into ``target`` safely; returns the bytes written.

    Refused (InvalidData): a member named with ``..``, an absolute or drive path, a
    symbolic link or a device, more than :data:`MAX_MEMBERS` members, a damaged or
    encrypted archive. The limit is checked on the bytes really inflated, not on the
    sizes the archive claims. On any error what was extracted is removed.
    """
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    written = 0
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            if len(members) > MAX_MEMBERS:
                raise InvalidData(f"the zip has more than {MAX_MEMBERS} members")
            for member in members:
                destination = _member_path(root, member)
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(member) as source, open(destination, "xb") as out:
                    written += _copy(source, out, max_bytes - written)
    except TooLarge:
        shutil.rmtree(target, ignore_errors=True)
        raise TooLarge("the zip unpacks to more than the configured limit") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise InvalidData(f"the zip cannot be read: {str(exc)[:200]}") from exc
    except FileExistsError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise InvalidData(f"the zip holds {Path(exc.filename or '').name!r} twice") from exc
    except ProviderError:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return written


def _member_path(root: Path, member: zipfile.ZipInfo) -> Path:
    """Where a member may be written: inside ``root``, or an InvalidData naming it."""
    name = member.filename
    mode = member.external_attr >> 16
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no Unix type recorded
        raise InvalidData(f"the zip member {name[:200]!r} is a link or a special file")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if (
        not parts
        or name.startswith(("/", "\\"))
        or ".." in parts
        or ":" in parts[0]
        or any(not p.isprintable() for p in parts)
    ):
        raise InvalidData(f"the zip member {name[:200]!r} points outside the archive")
    destination = root.joinpath(*parts).resolve()
    if not destination.is_relative_to(root):
        raise InvalidData(f"the zip member {name[:200]!r} points outside the archive")
    return destination


# -- what the files are ------------------------------------------------------------------------
def detect(directory: Path) -> list[SpatialFile]:
    """The spatial files under ``directory`` with their layers; InvalidData when there is none.

    A file of a spatial format that GDAL cannot open, or a Shapefile missing its .shx
    or .dbf or cut short, is an error: the upload is damaged and nothing of it is kept.
    Layer names are made unique across files (``name_2``...).
    """
    found: list[SpatialFile] = []
    taken: set[str] = set()
    candidates = sorted(p for p in directory.rglob("*") if _is_candidate(p))
    for path in candidates:
        relative = path.relative_to(directory).as_posix()
        if path.suffix.lower() == ".shp":
            check_shapefile(path)
        if is_parquet(path):
            found.append(describe_parquet(path, relative, taken))
            continue
        options = open_options(path)
        try:
            info_layers = pyogrio.list_layers(path)  # takes no open options
            layers = []
            for source_layer, _ in info_layers:
                info = pyogrio.read_info(path, layer=source_layer, force_feature_count=True, **options)
                if info.get("geometry_type") is None and not len(info.get("fields", [])):
                    continue
                name = _unique(str(source_layer), taken)
                layers.append(
                    Layer(
                        name=name,
                        geometry_type=info.get("geometry_type"),
                        feature_count=max(int(info.get("features") or 0), 0),
                        file=relative,
                        source_layer=str(source_layer),
                        crs=crs_name(info.get("crs")),
                    )
                )
            driver = pyogrio.read_info(path, layer=info_layers[0][0], **options)["driver"] if layers else ""
        except (DataSourceError, DataLayerError) as exc:
            raise InvalidData(f"{relative!r} cannot be read as spatial data: {_gdal_message(exc)}") from exc
        if layers:
            found.append(SpatialFile(relative, driver, layers))
    if not found:
        names = ", ".join(sorted(p.name for p in directory.rglob("*") if p.is_file())[:10]) or "no file"
        raise NoSpatialData(f"no spatial data in a format this server reads ({names})")
    return found


def _is_candidate(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix == ".gdb":
        return path.is_dir()
    if not path.is_file() or suffix not in SPATIAL_EXTENSIONS:
        return False
    return not path.name.lower().endswith(".shp.xml")  # a Shapefile's metadata sidecar


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate.lower())
    return candidate


def _gdal_message(exc: Exception) -> str:
    return str(exc).replace("\n", " ")[:300]


def check_shapefile(path: Path) -> None:
    """Raise InvalidData unless the .shp has its .shx and .dbf and is as long as its header says."""
    siblings = {p.suffix.lower(): p for p in path.parent.iterdir() if p.stem.lower() == path.stem.lower()}
    for suffix in SHAPEFILE_REQUIRED:
        if suffix not in siblings:
            raise InvalidData(f"the shapefile {path.name!r} comes without its {suffix} file")
    for suffix in (".shp", ".shx"):
        part = siblings[suffix]
        with open(part, "rb") as handle:
            header = handle.read(28)
        if len(header) < 28 or struct.unpack(">i", header[:4])[0] != 9994:
            raise InvalidData(f"{part.name!r} is not a shapefile part (bad header)")
        declared = struct.unpack(">i", header[24:28])[0] * 2  # in 16-bit words
        if part.stat().st_size < declared:
            size = part.stat().st_size
            raise InvalidData(f"{part.name!r} is truncated: {size} bytes of the {declared} its header says")


# -- GeoParquet -----------------------------------------------------------------------------------
def is_parquet(path: str | Path) -> bool:
    return Path(path).suffix.lower() in PARQUET_EXTENSIONS


def _geo_metadata(path: Path) -> tuple[pq.ParquetFile, dict[str, Any], dict[str, Any]]:
    """The file, its ``geo`` metadata and its primary geometry column; InvalidData if not GeoParquet."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidData(f"{path.name!r} cannot be read as Parquet: {str(exc)[:200]}") from exc
    raw = (parquet.schema_arrow.metadata or {}).get(b"geo")
    try:
        geo = orjson.loads(raw) if raw else None
        column = geo["columns"][geo["primary_column"]] if geo else None
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidData(f"{path.name!r} has damaged GeoParquet metadata") from exc
    if column is None or column.get("encoding", "WKB").upper() != "WKB":
        raise InvalidData(f"{path.name!r} is not GeoParquet with WKB geometries (its 'geo' metadata)")
    return parquet, geo, column


def _parquet_crs(column: dict[str, Any]) -> str | None:
    """``EPSG:<code>`` of a GeoParquet column's CRS: PROJJSON, absent (OGC:CRS84) or null (unknown)."""
    if "crs" not in column:
        return "EPSG:4326"
    if column["crs"] is None:
        return None
    try:
        crs = CRS.from_user_input(column["crs"])
    except CRSError:
        return None
    found = crs.to_epsg(min_confidence=70)
    return f"EPSG:{found}" if found else crs.to_wkt()


def describe_parquet(path: Path, relative: str, taken: set[str]) -> SpatialFile:
    """A GeoParquet file as one layer: geometry type, row count and CRS from its metadata."""
    parquet, _geo, column = _geo_metadata(path)
    types = column.get("geometry_types") or []
    layer = Layer(
        name=_unique(path.stem, taken),
        geometry_type=types[0] if len(types) == 1 else "Unknown",
        feature_count=parquet.metadata.num_rows,
        file=relative,
        source_layer=path.stem,
        crs=_parquet_crs(column),
    )
    return SpatialFile(relative, "Parquet", [layer])


@contextmanager
def open_arrow(
    path: str | Path, layer: str | None, batch_size: int, options: dict[str, str] | None = None
) -> Iterator[tuple[dict[str, Any], Any]]:
    """(metadata, record batch reader) of a layer, as :func:`pyogrio.raw.open_arrow` gives them.

    GeoParquet is read with pyarrow; its metadata is given in pyogrio's keys
    (``geometry_name``, ``geometry_type``, ``crs``). Everything else goes through GDAL,
    with ``options`` (default: :func:`open_options`).
    """
    if not is_parquet(path):
        options = open_options(path) if options is None else options
        with pyogrio.raw.open_arrow(
            path, layer=layer, batch_size=batch_size, use_pyarrow=True, **options
        ) as opened:
            yield opened
        return
    parquet, geo, column = _geo_metadata(Path(path))
    types = column.get("geometry_types") or []
    meta = {
        "geometry_name": geo["primary_column"],
        "geometry_type": types[0] if len(types) == 1 else "Unknown",
        "crs": _parquet_crs(column),
    }
    reader = pa.RecordBatchReader.from_batches(
        parquet.schema_arrow, parquet.iter_batches(batch_size=batch_size)
    )
    try:
        yield meta, reader
    finally:
        parquet.close()


def bounds(path: Path, layer: str | None) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """The layer's extent in its own CRS and that CRS (None, None when unknown or empty)."""
    if is_parquet(path):
        _parquet, _geo, column = _geo_metadata(path)
        box = column.get("bbox")
        if box and len(box) >= 4:
            half = len(box) // 2
            return (box[0], box[1], box[half], box[half + 1]), _parquet_crs(column)
        found = np.array([np.inf, np.inf, -np.inf, -np.inf])
        with open_arrow(path, layer, 65_536) as (meta, reader):
            for batch in reader:
                b = shapely.total_bounds(
                    shapely.from_wkb(batch.column(meta["geometry_name"]).to_numpy(False))
                )
                if not np.isnan(b).any():
                    found = np.concatenate([np.minimum(found[:2], b[:2]), np.maximum(found[2:], b[2:])])
        return (None if np.isinf(found).any() else tuple(float(v) for v in found)), meta["crs"]  # type: ignore[return-value]
    try:
        info = pyogrio.read_info(path, layer=layer, force_total_bounds=True, **open_options(path))
    except (DataSourceError, DataLayerError):
        return None, None
    total = info.get("total_bounds")
    if total is None or any(v != v for v in total):  # NaN: no feature
        return None, crs_name(info.get("crs"))
    return tuple(float(v) for v in total), crs_name(info.get("crs"))  # type: ignore[return-value]


def crs_name(crs: str | None) -> str | None:
    """``EPSG:<code>`` for a CRS GDAL reported (an authority string or WKT), else its text; None if none."""
    if not crs:
        return None
    if crs.upper().startswith("EPSG:"):
        return crs.upper()
    try:
        found = CRS.from_user_input(crs).to_epsg(min_confidence=70)
    except CRSError:
        return crs
    return f"EPSG:{found}" if found else crs


# -- features, page by page ----------------------------------------------------------------------
def _to_wgs84(crs: str | None) -> Transformer | None:
    """A lon/lat transformer from the layer's CRS; None when it is already lon/lat or unknown."""
    if crs is None:
        return None
    source = CRS.from_user_input(crs)
    if source.equals(CRS.from_epsg(4326), ignore_axis_order=True):
        return None
    return Transformer.from_crs(source, CRS.from_epsg(4326), always_xy=True)


def count(path: Path, layer: Layer, bbox: tuple[float, float, float, float] | None) -> int:
    """How many features of ``layer`` intersect ``bbox`` (lon/lat), streamed without their data."""
    if bbox is None:
        return layer.feature_count
    if is_parquet(path):
        return sum(len(rows) for rows, _batch, _geometry in _parquet_matches(path, layer, bbox))
    total = 0
    with pyogrio.raw.open_arrow(
        path,
        layer=layer.source_layer,
        columns=[],  # the spatial filter needs the geometry; no attribute is read
        bbox=_layer_bbox(layer, bbox),
        use_pyarrow=True,
        **open_options(path),
    ) as (_meta, reader):
        for batch in reader:
            total += batch.num_rows
    return total


def _layer_bbox(layer: Layer, bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """A lon/lat box in the layer's CRS (the box around its corners and edges)."""
    if layer.crs is None:
        return bbox
    transformer = _to_wgs84(layer.crs)
    if transformer is None:
        return bbox
    return transformer.transform_bounds(*bbox, direction="INVERSE")


def read_page(
    path: Path, layer: Layer, offset: int, limit: int, bbox: tuple[float, float, float, float] | None
) -> list[dict[str, Any]]:
    """GeoJSON features (lon/lat) of ``layer`` from ``offset``, at most ``limit``, within ``bbox``."""
    if bbox is not None and (bbox[0] > bbox[2] or bbox[1] > bbox[3]):
        raise InvalidQuery("bbox must be minx,miny,maxx,maxy with min <= max")
    if is_parquet(path):
        names, fids, wkb, values = _parquet_page(path, layer, offset, limit, bbox)
        meta = {"fields": names}
    else:
        meta, fids, wkb, values = _gdal_page(path, layer, offset, limit, bbox)
    geometries = shapely.from_wkb(wkb) if wkb is not None else np.full(len(fids), None, dtype=object)
    transformer = _to_wgs84(layer.crs)
    if transformer is not None and wkb is not None:
        geometries = shapely.transform(
            geometries, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
        )
    texts = shapely.to_geojson(geometries)
    columns = [_json_values(v) for v in values]
    names = list(meta["fields"])
    features = []
    for i, fid in enumerate(fids.tolist()):
        geometry = texts[i]
        features.append(
            {
                "type": "Feature",
                "id": fid,
                "geometry": orjson.loads(geometry) if geometry is not None else None,
                "properties": {name: column[i] for name, column in zip(names, columns, strict=True)},
            }
        )
    return features


def _gdal_page(
    path: Path, layer: Layer, offset: int, limit: int, bbox: tuple[float, float, float, float] | None
) -> tuple[Any, ...]:
    """(meta, fids, wkb, values) of a page, read by GDAL with its spatial filter."""
    try:
        return pyogrio.raw.read(
            path,
            layer=layer.source_layer,
            skip_features=offset,
            max_features=limit,
            bbox=_layer_bbox(layer, bbox) if bbox is not None else None,
            return_fids=True,
            datetime_as_string=True,
            **open_options(path),
        )
    except (DataSourceError, DataLayerError) as exc:
        raise InvalidData(f"layer {layer.name!r} cannot be read: {_gdal_message(exc)}") from exc


def _parquet_matches(
    path: Path, layer: Layer, bbox: tuple[float, float, float, float] | None
) -> Iterator[tuple[np.ndarray, pa.RecordBatch, str]]:
    """(row numbers, batch, geometry column) of each batch, rows limited to those meeting ``bbox``."""
    box = shapely.box(*_layer_bbox(layer, bbox)) if bbox is not None else None
    row = 0
    with open_arrow(path, layer.source_layer, 65_536) as (meta, reader):
        column = meta["geometry_name"]
        for batch in reader:
            if box is None:
                rows = np.arange(batch.num_rows)
            else:
                geometries = shapely.from_wkb(batch.column(column).to_numpy(zero_copy_only=False))
                rows = np.flatnonzero(shapely.intersects(geometries, box))
            yield rows + row, batch.take(pa.array(rows)), column
            row += batch.num_rows


def _parquet_page(
    path: Path, layer: Layer, offset: int, limit: int, bbox: tuple[float, float, float, float] | None
) -> tuple[list[str], np.ndarray, np.ndarray | None, list[np.ndarray]]:
    """A page of a GeoParquet layer as :func:`_gdal_page` gives one (fids: row numbers)."""
    fids: list[np.ndarray] = []
    pages: list[pa.RecordBatch] = []
    skip, wanted, column = offset, limit, ""
    for rows, batch, geometry_column in _parquet_matches(path, layer, bbox):
        column = geometry_column
        if skip >= len(rows):
            skip -= len(rows)
            continue
        taken = batch.slice(skip, wanted)
        fids.append(rows[skip : skip + wanted])
        pages.append(taken)
        wanted -= taken.num_rows
        skip = 0
        if wanted <= 0:
            break
    if not pages:
        return [], np.array([], dtype=np.int64), None, []
    table = pa.Table.from_batches(pages)
    names = [n for n in table.column_names if n != column]
    values = []
    for name in names:
        data = table.column(name)
        if pa.types.is_temporal(data.type):
            data = data.cast(pa.string())  # ISO 8601 text, as GDAL's datetime_as_string gives
        values.append(np.array(data.to_pylist() + [None], dtype=object)[:-1])  # 1-D even for lists
    return names, np.concatenate(fids), table.column(column).to_numpy(), values


def _json_values(column: np.ndarray) -> list[Any]:
    """Python values JSON can hold (NaN as None, bytes as hex)."""
    values = column.tolist()
    if column.dtype.kind == "f":
        return [None if v != v else v for v in values]
    if column.dtype.kind == "O":
        return [v.hex() if isinstance(v, bytes) else v for v in values]
    return values
