"""Writing a chain's result into a GeoPackage: a new layer in one SQLite transaction, or rows refreshed.

The layer is made as the loader makes one (GDAL's layout: ``gpkg_contents``,
``gpkg_geometry_columns``, the R-tree with the standard's triggers, GDAL's feature
count), with the key ``id`` holding the chain's ids and the geometry ``geom``; rows are
encoded as the loader encodes them. A new layer's R-tree is written packed once the rows
are in (from bounds computed a batch at a time; :mod:`providers.rtree_bulk`), and its
triggers and the feature count triggers are created after it, as GDAL does a bulk load:
the triggers would call back into Python five times a row. Everything between
``BEGIN IMMEDIATE`` and ``COMMIT`` appears at once or not at all; the layer's revision
is bumped after the commit, as every GeoPackage write does.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import shapely

from providers.capabilities.model import Layout
from providers.capabilities.vector import Frame, fit
from providers.errors import Conflict, InvalidData, NotFound
from providers.geopackage import GeoPackage, _compose, quote_ident
from providers.geopackage_tables import (
    GeoPackageTables,
    add_layer_triggers,
    create_layer_table,
    drop_layer_table,
    table_exists,
)
from providers.load_geopackage import (
    GPKG_TYPES,
    column_values,
    fill_rtree,
    geometry_blobs,
    rtree_boxes,
    update_contents,
)
from providers.tables import GEOMETRY_COLUMN, ID_COLUMN, check_name

Progress = Callable[[int, int], None]


def _create_table(conn: sqlite3.Connection, tables: GeoPackageTables, name: str, layout: Layout) -> int:
    """The feature table with its metadata and (empty) R-tree, without triggers; returns its srs_id."""
    srs_id = tables.srs_id(conn, layout.srid)
    columns = [_compose("{} {}", quote_ident(a.name), GPKG_TYPES[a.kind]) for a in layout.attributes]
    create_layer_table(conn, name, columns, layout.geometry_type, srs_id, autoincrement=False, triggers=False)
    return srs_id


def _insert(
    conn: sqlite3.Connection,
    name: str,
    layout: Layout,
    frames: Iterable[Frame],
    srs_id: int,
    extent: list[float],
    progress: Progress | None,
    boxes: list[tuple[np.ndarray, np.ndarray]] | None,
) -> int:
    """Write ``frames``; collect (id, min x, max x, min y, max y) of each row into ``boxes`` if given."""
    names = [ID_COLUMN, GEOMETRY_COLUMN, *(a.name for a in layout.attributes)]
    statement = _compose(
        "INSERT INTO {} ({}) VALUES ({})",
        quote_ident(name),
        ", ".join(quote_ident(n) for n in names),
        ", ".join("?" * len(names)),
    )
    written = 0
    for frame in frames:
        if not len(frame):
            continue
        geoms = fit(frame.geoms, layout.geometry_type)
        wkbs = list(shapely.to_wkb(geoms, flavor="iso", byte_order=1))
        bounds: list[np.ndarray] = []
        columns = [frame.ids.tolist(), geometry_blobs(wkbs, srs_id, None, extent, bounds)]
        columns += [column_values(frame.column(a.name).to_pylist(), a.kind) for a in layout.attributes]
        try:
            conn.executemany(statement, zip(*columns, strict=True))
        except sqlite3.IntegrityError as exc:
            raise InvalidData(f"the result does not fit the table: {exc}") from exc
        if boxes is not None:
            boxes.append(rtree_boxes(frame.ids, bounds[0]))
        written += len(frame)
        if progress is not None:
            progress(written, written)
    return written


def create(
    gpkg: GeoPackage,
    table: str,
    layout: Layout,
    frames: Iterable[Frame],
    progress: Progress | None = None,
    replace: bool = False,
) -> tuple[str, int]:
    """A new layer ``table`` holding ``frames``; returns its name and the rows written.

    With ``replace``, a layer of that name is dropped in the same transaction.
    """
    name = check_name(table)
    tables = GeoPackageTables(gpkg, "")
    existing = None
    if replace:
        try:
            existing = tables.describe(name)
        except NotFound:
            existing = None
    extent = [math.inf, math.inf, -math.inf, -math.inf]
    with tables.transaction() as conn:
        if existing is not None:
            drop_layer_table(conn, existing)
        elif table_exists(conn, name):
            raise Conflict(f"table {name!r} already exists")
        srs_id = _create_table(conn, tables, name, layout)
        boxes: list[tuple[np.ndarray, np.ndarray]] = []
        written = _insert(conn, name, layout, frames, srs_id, extent, progress, boxes)
        fill_rtree(conn, name, boxes)
        add_layer_triggers(conn, name, written)
        update_contents(conn, name, extent, False)
    gpkg.bump_revision(name)
    return name, written


def refresh(gpkg: GeoPackage, table: str, layout: Layout, ids: Sequence[int], frames: Iterable[Frame]) -> int:
    """The rows of ``ids`` of layer ``table`` deleted and ``frames`` written instead, in one transaction."""
    tables = GeoPackageTables(gpkg, "")
    info = tables.describe(table)
    if info.geometry_column is None:
        raise NotFound(f"table {table!r} has no geometry")
    extent = [math.inf, math.inf, -math.inf, -math.inf]
    with tables.transaction() as conn:
        srs_id = int(
            conn.execute(
                "SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = ? COLLATE NOCASE", (info.name,)
            ).fetchone()[0]
        )
        wanted = [int(i) for i in ids]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            conn.execute(
                _compose(
                    "DELETE FROM {} WHERE {} IN ({})",
                    quote_ident(info.name),
                    quote_ident(ID_COLUMN),
                    ", ".join("?" * len(chunk)),
                ),
                chunk,
            )
        written = _insert(conn, info.name, layout, frames, srs_id, extent, None, None)
        update_contents(conn, info.name, extent, True)
    gpkg.bump_revision(info.name)
    return written
