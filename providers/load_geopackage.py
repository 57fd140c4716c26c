"""Writing a file's features into a GeoPackage table, in one SQLite transaction.

SQLite gives what PostGIS needs a staging table for: everything between ``BEGIN
IMMEDIATE`` and ``COMMIT`` (the new table, its GeoPackage metadata, every row, the
R-tree) appears at once or, after an error or a killed process, not at all (the WAL
is rolled back on the next open). Readers keep reading the old state meanwhile.

The table is made as GDAL makes one (see :mod:`providers.geopackage_tables`, whose
helpers write the R-tree, its triggers and GDAL's feature count), with the key ``id``
and the geometry ``geom``. As GDAL's bulk load does, a new table's rows are written
without triggers, with ids 1, 2, ... given here, and its R-tree is then written packed
in one pass (:mod:`providers.rtree_bulk`) before the triggers are made: a trigger a row
would call back into Python five times and split R-tree nodes a million times.

REPLACE drops the old table and its metadata in the same transaction; APPEND checks
the file's columns against the table's first, and brings geometries into the table's
CRS and multi type. The indexes a CreateIndexTransform asks for are created in the same
transaction, named ``<table>_<column>_idx`` or the first free variant (SQLite's index
names are unique across the file); a column already indexed on its own (APPEND) is left
as it is.
"""

from __future__ import annotations

import math
import sqlite3
import struct
from datetime import UTC, date, datetime, time
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer

from providers import rtree_bulk
from providers.errors import Conflict, InvalidData, NotFound
from providers.geopackage import GeoPackage, _compose, quote_ident
from providers.geopackage_tables import (
    GeoPackageTables,
    add_layer_triggers,
    create_layer_table,
    drop_layer_table,
    table_exists,
)
from providers.loader import LoadResult, Mode, Plan, Progress, check_append, promoted, python_values
from providers.tables import GEOMETRY_COLUMN, ID_COLUMN, TableInfo, check_name

#: Column kind -> GeoPackage column type (GeoPackage 1.3, table 1).
GPKG_TYPES = {
    "smallint": "SMALLINT",
    "integer": "INTEGER",
    "bigint": "INTEGER",
    "real": "FLOAT",
    "double": "REAL",
    "boolean": "BOOLEAN",
    "text": "TEXT",
    "date": "DATE",
    "timestamp": "DATETIME",
    "timestamptz": "DATETIME",
    "time": "TEXT",
    "binary": "BLOB",
    "json": "TEXT",
}
#: Column kind -> the existing column types that take it without loss (APPEND).
ASSIGNABLE = {
    "smallint": {"SMALLINT", "MEDIUMINT", "INT", "INTEGER", "FLOAT", "REAL", "DOUBLE"},
    "integer": {"MEDIUMINT", "INT", "INTEGER", "REAL", "DOUBLE"},
    "bigint": {"INT", "INTEGER"},
    "real": {"FLOAT", "REAL", "DOUBLE"},
    "double": {"REAL", "DOUBLE"},
    "boolean": {"BOOLEAN"},
    "text": {"TEXT"},
    "json": {"TEXT"},
    "time": {"TEXT"},
    "date": {"DATE", "DATETIME"},
    "timestamp": {"DATETIME"},
    "timestamptz": {"DATETIME"},
    "binary": {"BLOB"},
}
_HEADER = struct.Struct("<2sBBi")
_HEADER_XY = struct.Struct("<2sBBi4d")
_EMPTY_FLAG = 0x10


def load_geopackage(
    plan: Plan, gpkg: GeoPackage, table: str, mode: Mode, progress: Progress | None, batch: int
) -> LoadResult:
    """Load ``plan`` into ``table`` of ``gpkg``; see the module doc."""
    name = check_name(table)
    tables = GeoPackageTables(gpkg, "")
    existing = _existing(tables, name)
    if mode is Mode.CREATE and existing is not None:
        raise Conflict(f"table {name!r} already exists")
    if mode is Mode.APPEND:
        if existing is None:
            raise NotFound(f"table {name!r} does not exist: nothing to append to")
        check_append(plan, existing, ASSIGNABLE, lambda t: t.split("(", 1)[0].strip().upper())
    written = 0
    with tables.transaction() as conn:
        if mode is Mode.APPEND:
            assert existing is not None
            table_name, geometry_column = existing.name, existing.geometry_column or GEOMETRY_COLUMN
            srs_id = _srs_of(conn, table_name)
            target_srid = existing.srid or plan.srid
            multi = _multi_code(existing.geometry)
        else:
            if existing is not None:
                drop_layer_table(conn, existing)
            elif table_exists(conn, name):
                raise Conflict(f"table {name!r} already exists")
            srs_id = _create(conn, tables, plan, name)
            table_name, geometry_column, target_srid, multi = name, GEOMETRY_COLUMN, plan.srid, plan.promote
        transformer = None
        if target_srid != plan.srid:
            transformer = Transformer.from_crs(f"EPSG:{plan.srid}", f"EPSG:{target_srid}", always_xy=True)
        # A new table gets its ids here (1, 2, ...) so that its R-tree can be written packed
        # once the rows are in; rows appended go through the table's triggers.
        new = mode is not Mode.APPEND
        names = [c.name for c in plan.columns] + [geometry_column] + ([ID_COLUMN] if new else [])
        statement = _compose(
            "INSERT INTO {} ({}) VALUES ({})",
            quote_ident(table_name),
            ", ".join(quote_ident(n) for n in names),
            ", ".join("?" * len(names)),
        )
        extent = [math.inf, math.inf, -math.inf, -math.inf]
        boxes: list[tuple[np.ndarray, np.ndarray]] = []
        for chunk in plan.batches(batch):
            columns = [
                column_values(python_values(chunk.column(c.source), c.kind), c.kind) for c in plan.columns
            ]
            wkbs = [
                None if w is None else promoted(w, multi)
                for w in chunk.column(plan.geometry_column).to_pylist()
            ]
            bounds: list[np.ndarray] = []
            columns.append(geometry_blobs(wkbs, srs_id, transformer, extent, bounds))
            if new:
                ids = np.arange(written + 1, written + chunk.num_rows + 1, dtype=np.int64)
                columns.append(ids.tolist())
                boxes.append(rtree_boxes(ids, bounds[0]))
            try:
                conn.executemany(statement, zip(*columns, strict=True))
            except sqlite3.IntegrityError as exc:
                raise InvalidData(f"the data does not fit the table: {exc}") from exc
            written += chunk.num_rows
            if progress is not None:
                progress(written, max(plan.total, written))
        if new:
            fill_rtree(conn, table_name, boxes)
            add_layer_triggers(conn, table_name, written)
        _create_indexes(conn, table_name, plan.indexes)
        update_contents(conn, table_name, extent, mode is Mode.APPEND)
    gpkg.bump_revision(table_name)
    return LoadResult(table_name, written, target_srid, plan.geometry_type, plan.columns, mode)


def _existing(tables: GeoPackageTables, name: str) -> TableInfo | None:
    try:
        return tables.describe(name)
    except NotFound:
        return None


def _srs_of(conn: sqlite3.Connection, table: str) -> int:
    row = conn.execute(
        "SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = ? COLLATE NOCASE", (table,)
    ).fetchone()
    return int(row[0])


def _multi_code(geometry_type: str | None) -> int | None:
    return {"MULTIPOINT": 4, "MULTILINESTRING": 5, "MULTIPOLYGON": 6}.get((geometry_type or "").upper())


def _create(conn: sqlite3.Connection, tables: GeoPackageTables, plan: Plan, name: str) -> int:
    """The feature table with its metadata and empty R-tree, its triggers left for after
    the rows (:func:`fill_rtree`, :func:`~providers.geopackage_tables.add_layer_triggers`);
    returns its srs_id."""
    srs_id = tables.srs_id(conn, plan.srid)
    columns = [_compose("{} {}", quote_ident(c.name), GPKG_TYPES[c.kind]) for c in plan.columns]
    create_layer_table(
        conn,
        name,
        columns,
        plan.base_type,
        srs_id,
        z="Z" in plan.dimensions,
        m="M" in plan.dimensions,
        triggers=False,
    )
    return srs_id


def _create_indexes(conn: sqlite3.Connection, table: str, columns: tuple[str, ...]) -> None:
    """A b-tree index on each of ``columns`` that is not yet indexed on its own."""
    for column in columns:
        indexed = conn.execute(
            "SELECT 1 FROM pragma_index_list(?) AS l WHERE l.partial = 0 "
            "AND (SELECT count(*) FROM pragma_index_info(l.name)) = 1 "
            "AND (SELECT i.name FROM pragma_index_info(l.name) AS i) = ? COLLATE NOCASE",
            (table, column),
        ).fetchone()
        if indexed is not None:
            continue
        base = f"{table}_{column}_idx"
        name, n = base, 0
        while table_exists(conn, name):
            n += 1
            name = f"{base}{n}"
        conn.execute(
            _compose("CREATE INDEX {} ON {} ({})", quote_ident(name), quote_ident(table), quote_ident(column))
        )


def column_values(values: list[Any], kind: str) -> list[Any]:
    """Python values as GeoPackage stores them: times as ISO 8601 text, booleans as 0/1."""
    if kind in ("timestamp", "timestamptz"):
        return [None if v is None else _datetime_text(v) for v in values]
    if kind in ("date", "time"):
        return [None if v is None else v.isoformat() for v in values]
    if kind == "boolean":
        return [None if v is None else int(v) for v in values]
    return values


def _datetime_text(value: datetime | date | time) -> str:
    """GDAL's spelling: ``YYYY-MM-DDTHH:MM:SS.sssZ`` in UTC (no zone: as given)."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return value.isoformat(timespec="milliseconds") if isinstance(value, datetime) else value.isoformat()


def geometry_blobs(
    wkbs: list[bytes | None],
    srs_id: int,
    transformer: Transformer | None,
    extent: list[float],
    bounds_out: list[np.ndarray] | None = None,
) -> list[bytes | None]:
    """GeoPackage blobs (header with the xy envelope, then ISO WKB); widens ``extent``, and
    appends the rows' bounds (shapely's: min x, min y, max x, max y) to ``bounds_out``."""
    geoms = shapely.from_wkb(np.array(wkbs, dtype=object), on_invalid="raise")
    if transformer is not None:
        geoms = shapely.transform(
            geoms, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
        )
        wkbs = list(shapely.to_wkb(geoms, byte_order=1, flavor="iso"))
    bounds = shapely.bounds(geoms)
    if bounds_out is not None:
        bounds_out.append(bounds)
    if len(bounds) and not np.all(np.isnan(bounds[:, 0])):
        extent[0] = min(extent[0], float(np.nanmin(bounds[:, 0])))
        extent[1] = min(extent[1], float(np.nanmin(bounds[:, 1])))
        extent[2] = max(extent[2], float(np.nanmax(bounds[:, 2])))
        extent[3] = max(extent[3], float(np.nanmax(bounds[:, 3])))
    out: list[bytes | None] = []
    for wkb, (minx, miny, maxx, maxy) in zip(wkbs, bounds.tolist(), strict=True):
        if wkb is None:
            out.append(None)
        elif minx != minx:  # NaN: an empty geometry has no envelope
            out.append(_HEADER.pack(b"GP", 0, 0x01 | _EMPTY_FLAG, srs_id) + wkb)
        else:
            out.append(_HEADER_XY.pack(b"GP", 0, 0x03, srs_id, minx, maxx, miny, maxy) + wkb)
    return out


def rtree_boxes(ids: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The R-tree entries of rows ``ids`` with shapely ``bounds``: (ids, boxes as min x,
    max x, min y, max y), rows without a box (no geometry, or an empty one) left out."""
    boxed = ~np.isnan(bounds[:, 0])
    return ids[boxed], bounds[boxed][:, [0, 2, 1, 3]]


def fill_rtree(conn: sqlite3.Connection, table: str, boxes: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """The R-tree of a new layer table, written packed in one pass (:mod:`providers.rtree_bulk`)."""
    if boxes:
        ids = np.concatenate([i for i, _ in boxes])
        bounds = np.concatenate([b for _, b in boxes])
        rtree_bulk.fill(conn, f"rtree_{table}_{GEOMETRY_COLUMN}", ids, bounds)


def update_contents(conn: sqlite3.Connection, table: str, extent: list[float], widen: bool) -> None:
    """The layer's extent and last change in gpkg_contents (widened when appending)."""
    if math.isinf(extent[0]):
        conn.execute(
            "UPDATE gpkg_contents SET last_change = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
            "WHERE lower(table_name) = lower(?)",
            (table,),
        )
        return
    if widen:
        conn.execute(
            "UPDATE gpkg_contents SET last_change = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), "
            "min_x = min(coalesce(min_x, :x0), :x0), min_y = min(coalesce(min_y, :y0), :y0), "
            "max_x = max(coalesce(max_x, :x1), :x1), max_y = max(coalesce(max_y, :y1), :y1) "
            "WHERE lower(table_name) = lower(:table)",
            dict(zip(("x0", "y0", "x1", "y1"), extent, strict=True), table=table),
        )
        return
    conn.execute(
        "UPDATE gpkg_contents SET last_change = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), "
        "min_x = ?, min_y = ?, max_x = ?, max_y = ? WHERE lower(table_name) = lower(?)",
        (*extent, table),
    )
