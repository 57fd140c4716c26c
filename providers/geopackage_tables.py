"""The user tables of a GeoPackage file: the REST tables API, and the one way the loader
and the capabilities writer create and drop a layer table too.

A table created here is what GDAL itself would write, so that QGIS, ``ogrinfo`` and
geoharbor's own provider all read it as a proper layer: a row in ``gpkg_contents``
(``features``, or ``attributes`` without geometry), its geometry column in
``gpkg_geometry_columns`` with a known ``gpkg_spatial_ref_sys`` entry, an R-tree
``rtree_<table>_geom`` kept up to date by the GeoPackage standard's triggers (the
functions they call are registered on every connection by :mod:`providers.geopackage`,
as GDAL registers them), the ``gpkg_rtree_index`` extension row, and GDAL's
``gpkg_ogr_contents`` feature count with its triggers when the file has that table.

Statements run on the file's thread connection inside ``BEGIN IMMEDIATE`` and under the
file's write lock, like the provider's writes: a failed create leaves nothing behind.
Table names reach SQL double-quoted (:func:`~providers.geopackage.quote_ident`) and
only after :func:`providers.tables.check_name` or a catalog lookup; values are bound.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

from pyproj import CRS as ProjCRS
from pyproj.exceptions import CRSError

from providers.base import FeatureProvider
from providers.errors import Conflict, InvalidData, NotFound, ProviderError, Unavailable
from providers.geopackage import GeoPackage, GeoPackageProvider, _compose, quote_ident
from providers.tables import GEOMETRY_COLUMN, ID_COLUMN, Column, TableInfo, Tables, TableSpec, rest_type

#: REST column type -> GeoPackage column type (GeoPackage 1.3, table 1).
GPKG_TYPES = {
    "text": "TEXT",
    "number": "REAL",
    "integer": "INTEGER",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "datetime": "DATETIME",
}

EXTENSIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS gpkg_extensions (table_name TEXT, column_name TEXT, "
    "extension_name TEXT NOT NULL, definition TEXT NOT NULL, scope TEXT NOT NULL, "
    "CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name))"
)
RTREE_EXTENSION = ("gpkg_rtree_index", "http://www.geopackage.org/spec120/#extension_rtree", "write-only")

#: Metadata tables that may name a user table; rows about a dropped table go with it.
METADATA_TABLES = (
    "gpkg_geometry_columns",
    "gpkg_extensions",
    "gpkg_ogr_contents",
    "gpkg_data_columns",
    "gpkg_metadata_reference",
)


def rtree_statements(table: str, column: str, key: str) -> list[str]:
    """The R-tree index of a geometry column and the GeoPackage standard's triggers keeping it.

    The same text GDAL writes (GeoPackage 1.2+, extension ``gpkg_rtree_index``), so
    every writer that registers ``ST_IsEmpty``/``ST_MinX``... maintains the index.
    """
    t, c, i = quote_ident(table), quote_ident(column), quote_ident(key)
    rtree = quote_ident(f"rtree_{table}_{column}")
    values = _compose("NEW.{0}, ST_MinX(NEW.{1}), ST_MaxX(NEW.{1}), ST_MinY(NEW.{1}), ST_MaxY(NEW.{1})", i, c)
    present = _compose("(NEW.{0} NOTNULL AND NOT ST_IsEmpty(NEW.{0}))", c)
    absent = _compose("(NEW.{0} ISNULL OR ST_IsEmpty(NEW.{0}))", c)
    # {0} trigger, {1} table, {2} geometry column, {3} key, {4} R-tree, {5} present, {6} absent, {7} values
    templates = {
        "insert": "CREATE TRIGGER {0} AFTER INSERT ON {1} WHEN {5} "
        "BEGIN INSERT OR REPLACE INTO {4} VALUES ({7}); END",
        "update1": "CREATE TRIGGER {0} AFTER UPDATE OF {2} ON {1} WHEN OLD.{3} = NEW.{3} AND {5} "
        "BEGIN INSERT OR REPLACE INTO {4} VALUES ({7}); END",
        "update2": "CREATE TRIGGER {0} AFTER UPDATE OF {2} ON {1} WHEN OLD.{3} = NEW.{3} AND {6} "
        "BEGIN DELETE FROM {4} WHERE id = OLD.{3}; END",
        "update3": "CREATE TRIGGER {0} AFTER UPDATE ON {1} WHEN OLD.{3} != NEW.{3} AND {5} "
        "BEGIN DELETE FROM {4} WHERE id = OLD.{3}; INSERT OR REPLACE INTO {4} VALUES ({7}); END",
        "update4": "CREATE TRIGGER {0} AFTER UPDATE ON {1} WHEN OLD.{3} != NEW.{3} AND {6} "
        "BEGIN DELETE FROM {4} WHERE id IN (OLD.{3}, NEW.{3}); END",
        "delete": "CREATE TRIGGER {0} AFTER DELETE ON {1} WHEN OLD.{2} NOT NULL "
        "BEGIN DELETE FROM {4} WHERE id = OLD.{3}; END",
    }
    statements = [_compose("CREATE VIRTUAL TABLE {} USING rtree(id, minx, maxx, miny, maxy)", rtree)]
    for suffix, template in templates.items():
        trigger = quote_ident(f"rtree_{table}_{column}_{suffix}")
        statements.append(_compose(template, trigger, t, c, i, rtree, present, absent, values))
    return statements


def count_triggers(table: str) -> list[str]:
    """GDAL's triggers keeping ``gpkg_ogr_contents.feature_count`` right (its name pattern)."""
    template = (
        "CREATE TRIGGER {0} AFTER {1} ON {2} BEGIN UPDATE gpkg_ogr_contents "
        "SET feature_count = feature_count {3} 1 WHERE lower(table_name) = lower({4}); END"
    )
    literal = "'" + table.replace("'", "''") + "'"
    return [
        _compose(
            template,
            quote_ident(f"trigger_{event.lower()}_feature_count_{table}"),
            event,
            quote_ident(table),
            sign,
            literal,
        )
        for event, sign in (("INSERT", "+"), ("DELETE", "-"))
    ]


def table_exists(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the file has a table, view or index called ``name`` (SQLite names are case-blind)."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ? COLLATE NOCASE", (name,)).fetchone()
    return row is not None


def create_layer_table(
    conn: sqlite3.Connection,
    name: str,
    columns: list[str],
    geometry_type: str | None,
    srs_id: int | None,
    *,
    z: bool = False,
    m: bool = False,
    autoincrement: bool = True,
    triggers: bool = True,
) -> None:
    """A user table and every metadata row a GeoPackage reader expects of it, in ``conn``'s
    transaction: ``gpkg_contents`` (``features``, or ``attributes`` without a geometry
    type), ``gpkg_geometry_columns``, the empty R-tree and its extension row.

    ``columns`` are the attribute columns' DDL (names already quoted). With ``triggers``
    off, the R-tree and feature count triggers are left to :func:`add_layer_triggers`
    once the rows are in: a bulk writer fills the R-tree itself, far faster than a
    trigger a row, and counts its rows once.
    """
    key = "INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL" if autoincrement else "INTEGER PRIMARY KEY NOT NULL"
    parts = [_compose("{} {}", quote_ident(ID_COLUMN), key)]
    if geometry_type:
        parts.append(_compose("{} {}", quote_ident(GEOMETRY_COLUMN), geometry_type))
    conn.execute(_compose("CREATE TABLE {} ({})", quote_ident(name), ", ".join(parts + columns)))
    conn.execute(
        "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, srs_id) "
        "VALUES (?, ?, ?, '', ?)",
        (name, "features" if geometry_type else "attributes", name, srs_id),
    )
    if geometry_type:
        conn.execute(
            "INSERT INTO gpkg_geometry_columns (table_name, column_name, geometry_type_name, srs_id, z, m) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, GEOMETRY_COLUMN, geometry_type, srs_id, int(z), int(m)),
        )
        conn.execute(rtree_statements(name, GEOMETRY_COLUMN, ID_COLUMN)[0])
        conn.execute(EXTENSIONS_DDL)
        conn.execute(
            "INSERT INTO gpkg_extensions (table_name, column_name, extension_name, definition, scope) "
            "VALUES (?, ?, ?, ?, ?)",
            (name, GEOMETRY_COLUMN, *RTREE_EXTENSION),
        )
    if triggers:
        add_layer_triggers(conn, name, 0, spatial=bool(geometry_type))


def add_layer_triggers(conn: sqlite3.Connection, name: str, rows: int, spatial: bool = True) -> None:
    """The R-tree's triggers (``spatial``) and GDAL's feature count of ``rows`` with its
    triggers (when the file keeps ``gpkg_ogr_contents``) on a table made by
    :func:`create_layer_table`."""
    if spatial:
        for statement in rtree_statements(name, GEOMETRY_COLUMN, ID_COLUMN)[1:]:
            conn.execute(statement)
    if table_exists(conn, "gpkg_ogr_contents"):
        conn.execute("INSERT INTO gpkg_ogr_contents (table_name, feature_count) VALUES (?, ?)", (name, rows))
        for statement in count_triggers(name):
            conn.execute(statement)


def drop_layer_table(conn: sqlite3.Connection, info: TableInfo) -> None:
    """The table (or view), its R-tree and every metadata row about it, in ``conn``'s transaction."""
    if info.geometry_column:
        conn.execute(
            _compose("DROP TABLE IF EXISTS {}", quote_ident(f"rtree_{info.name}_{info.geometry_column}"))
        )
    conn.execute(_compose("DROP {} {}", "VIEW" if info.is_view else "TABLE", quote_ident(info.name)))
    for meta in METADATA_TABLES:
        if table_exists(conn, meta):
            conn.execute(
                _compose("DELETE FROM {} WHERE lower(table_name) = lower(?)", quote_ident(meta)), (info.name,)
            )
    conn.execute("DELETE FROM gpkg_contents WHERE lower(table_name) = lower(?)", (info.name,))


class GeoPackageTables(Tables):
    """The feature and attribute tables a GeoPackage lists in ``gpkg_contents``."""

    schema = "main"

    def __init__(self, gpkg: GeoPackage, source_name: str) -> None:
        self.gpkg = gpkg
        self.source_name = source_name

    # -- plumbing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction of the file (``GeoPackage.write_transaction``), errors worded here."""
        try:
            with self.gpkg.write_transaction() as conn:
                yield conn
        except sqlite3.Error as exc:
            raise _error(exc) from exc

    def _read(self, statement: str, params: tuple = ()) -> list[tuple]:
        try:
            return self.gpkg.connection().execute(statement, params).fetchall()
        except sqlite3.Error as exc:
            raise _error(exc) from exc

    def _table_name(self, name: str) -> str:
        """The table's name as the file spells it (SQLite names are case-insensitive)."""
        rows = self._read(
            "SELECT table_name FROM gpkg_contents WHERE table_name = ? COLLATE NOCASE "
            "AND lower(data_type) IN ('features', 'attributes')",
            (name,),
        )
        if not rows:
            raise NotFound(f"table {name[:100]!r} not found")
        return rows[0][0]

    # -- reads -------------------------------------------------------------------------
    def names(self, spatial: bool | None = None) -> list[str]:
        rows = self._read(
            "SELECT c.table_name, EXISTS (SELECT 1 FROM gpkg_geometry_columns g "
            "  WHERE g.table_name = c.table_name COLLATE NOCASE) "
            "FROM gpkg_contents c WHERE lower(c.data_type) IN ('features', 'attributes') "
            "ORDER BY c.table_name"
        )
        return [name for name, has_geometry in rows if spatial is None or bool(has_geometry) == spatial]

    def describe(self, name: str, count: bool = False) -> TableInfo:
        table = self._table_name(name)
        columns = self._read(
            'SELECT name, type, "notnull", pk FROM pragma_table_info(?) ORDER BY cid', (table,)
        )
        if not columns:
            raise NotFound(f"table {name[:100]!r} is listed but missing from the file")
        geometry = self._read(
            "SELECT column_name, geometry_type_name, srs_id FROM gpkg_geometry_columns "
            "WHERE table_name = ? COLLATE NOCASE",
            (table,),
        )
        kind = self._read("SELECT type FROM sqlite_master WHERE name = ? COLLATE NOCASE", (table,))
        keys = [c[0] for c in columns if c[3]]
        primary_key = keys[0] if len(keys) == 1 else None
        geometry_column = geometry[0][0] if geometry else None
        info = TableInfo(
            name=table,
            schema=self.schema,
            primary_key=primary_key,
            geometry=str(geometry[0][1]).upper() if geometry else None,
            geometry_column=geometry_column,
            srid=self._epsg(int(geometry[0][2])) if geometry else None,
            is_view=bool(kind) and kind[0][0] == "view",
        )
        if count:
            info.num_rows = int(self._read(_compose("SELECT count(*) FROM {}", quote_ident(table)))[0][0])
        for column, native, not_null, _pk in columns:
            if column in (primary_key, geometry_column):
                continue
            info.columns[column] = Column(rest_type(native or "text"), bool(not_null), native or "")
        return info

    def _epsg(self, srs_id: int) -> int:
        """The EPSG code of a GeoPackage srs_id (normally the same number)."""
        rows = self._read(
            "SELECT organization, organization_coordsys_id FROM gpkg_spatial_ref_sys WHERE srs_id = ?",
            (srs_id,),
        )
        if rows and str(rows[0][0]).upper() == "EPSG" and rows[0][1]:
            return int(rows[0][1])
        return srs_id

    # -- DDL -----------------------------------------------------------------------------
    def srs_id(self, conn: sqlite3.Connection, srid: int) -> int:
        """The file's srs_id of EPSG:``srid``, adding it to gpkg_spatial_ref_sys when missing."""
        row = conn.execute(
            "SELECT srs_id FROM gpkg_spatial_ref_sys WHERE upper(organization) = 'EPSG' "
            "AND organization_coordsys_id = ?",
            (srid,),
        ).fetchone()
        if row is not None:
            return int(row[0])
        try:
            crs = ProjCRS.from_epsg(srid)
        except CRSError as exc:
            raise InvalidData(f"srid {srid} is not an EPSG CRS known to PROJ") from exc
        srs_id = srid
        if conn.execute("SELECT 1 FROM gpkg_spatial_ref_sys WHERE srs_id = ?", (srid,)).fetchone():
            srs_id = int(conn.execute("SELECT max(srs_id) + 1 FROM gpkg_spatial_ref_sys").fetchone()[0])
        conn.execute(
            "INSERT INTO gpkg_spatial_ref_sys "
            "(srs_name, srs_id, organization, organization_coordsys_id, definition, description) "
            "VALUES (?, ?, 'EPSG', ?, ?, '')",
            (crs.name, srs_id, srid, crs.to_wkt("WKT1_GDAL")),
        )
        return srs_id

    def create(self, spec: TableSpec) -> TableInfo:
        # Types come from GPKG_TYPES and GEOMETRY_TYPES, names were checked by check_name.
        columns = [
            _compose("{} {}{}", quote_ident(c.name), GPKG_TYPES[c.type], " NOT NULL" if c.not_null else "")
            for c in spec.columns
        ]
        with self.transaction() as conn:
            if table_exists(conn, spec.name):
                raise Conflict(f"table {spec.name!r} already exists")
            srs_id = self.srs_id(conn, spec.srid) if spec.geometry else None
            create_layer_table(conn, spec.name, columns, spec.geometry, srs_id)
        return self.describe(spec.name)

    def drop(self, name: str) -> None:
        info = self.describe(name)
        with self.transaction() as conn:
            drop_layer_table(conn, info)
        self.gpkg.bump_revision(info.name)

    def truncate(self, name: str) -> None:
        """DELETE every row (the triggers empty the R-tree and the count), then bump the revision."""
        info = self.describe(name)
        with self.transaction() as conn:
            conn.execute(_compose("DELETE FROM {}", quote_ident(info.name)))
            conn.execute(
                "UPDATE gpkg_contents SET last_change = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), "
                "min_x = NULL, min_y = NULL, max_x = NULL, max_y = NULL WHERE lower(table_name) = lower(?)",
                (info.name,),
            )
            if table_exists(conn, "gpkg_ogr_contents"):
                conn.execute(
                    "UPDATE gpkg_ogr_contents SET feature_count = 0 WHERE lower(table_name) = lower(?)",
                    (info.name,),
                )
        # After the commit, as the provider does: a tile computed meanwhile is cached under the old number.
        self.gpkg.bump_revision(info.name)

    # -- rows ------------------------------------------------------------------------------
    def provider(self, name: str, editable: bool) -> FeatureProvider:
        table = self._table_name(name)
        schema = self.gpkg.describe(table)
        return GeoPackageProvider(self.gpkg, table, schema, editable=editable, count_mode="exact")

    def layer_options(self, name: str) -> dict[str, str]:
        return {"layer": name}

    def is_layer_of(self, body: dict[str, Any], name: str) -> bool:
        layer = body.get("layer")
        return isinstance(layer, str) and layer.lower() == name.lower()


def _error(exc: sqlite3.Error) -> ProviderError:
    """A failed catalog read or DDL statement as the error a client should see."""
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError) or "already exists" in text:
        return Conflict(text[:300])
    if isinstance(exc, sqlite3.OperationalError) and any(
        w in text.lower() for w in ("locked", "busy", "unable to open", "disk i/o", "readonly")
    ):
        return Unavailable(f"GeoPackage unavailable: {text[:200]}")
    return ProviderError(text.splitlines()[0][:300] if text else "GeoPackage error")
