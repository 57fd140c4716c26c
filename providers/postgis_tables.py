"""The tables of a PostGIS database's default schema, for the REST tables API.

All SQL here is composed with :mod:`psycopg.sql`: table names reach it as
``sql.Identifier`` (looked up in the catalog with bound parameters first, or checked by
:func:`providers.tables.check_name` for a create), types from a closed mapping.
Extension-owned relations (PostGIS's ``spatial_ref_sys``, ``geometry_columns`` ...)
are not user tables and are never listed.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from providers.base import FeatureProvider
from providers.errors import Conflict, InvalidData, NotFound, ProviderError, Unavailable
from providers.postgis import PostGISDatabase, PostGISProvider, TableRef
from providers.tables import GEOMETRY_COLUMN, ID_COLUMN, Column, TableInfo, Tables, TableSpec, rest_type

#: REST column type -> PostgreSQL type.
PG_TYPES = {
    "text": "text",
    "number": "double precision",
    "integer": "bigint",
    "boolean": "boolean",
    "date": "date",
    "datetime": "timestamptz",
}

#: Relations a user sees as tables: tables, partitioned tables, views, materialized views, foreign
#: tables; not partitions, nor what an extension owns (PostGIS's spatial_ref_sys and views).
_LIST = (
    "SELECT c.relname, EXISTS (SELECT 1 FROM geometry_columns g"
    "  WHERE g.f_table_schema = n.nspname AND g.f_table_name = c.relname) "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition "
    "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass "
    "  AND d.objid = c.oid AND d.deptype = 'e') "
    "ORDER BY c.relname"
)


class PostGISTables(Tables):
    """Tables of one schema (``public`` unless told otherwise) of a PostGIS database."""

    def __init__(self, db: PostGISDatabase, source_name: str, schema: str = "public") -> None:
        self.db = db
        self.source_name = source_name
        self.schema = schema

    def _ident(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    # -- reads -------------------------------------------------------------------------
    def names(self, spatial: bool | None = None) -> list[str]:
        with self.db.connection() as conn:
            try:
                rows = conn.execute(_LIST, (self.schema,)).fetchall()
            except psycopg.Error as exc:
                raise _error(exc) from exc
        return [name for name, has_geometry in rows if spatial is None or has_geometry == spatial]

    def describe(self, name: str, count: bool = False) -> TableInfo:
        with self.db.connection() as conn:
            try:
                found = conn.execute(
                    "SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
                    (self.schema, name),
                ).fetchone()
                if found is None:
                    raise NotFound(f"table {name[:100]!r} not found")
                oid, kind = found
                columns = conn.execute(
                    "SELECT a.attname, t.typname, a.attnotnull FROM pg_attribute a "
                    "JOIN pg_type t ON t.oid = a.atttypid "
                    "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                    (oid,),
                ).fetchall()
                keys = conn.execute(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                    "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                    "WHERE i.indrelid = %s AND i.indisprimary",
                    (oid,),
                ).fetchall()
                geometry = conn.execute(
                    "SELECT f_geometry_column, type, srid FROM geometry_columns "
                    "WHERE f_table_schema = %s AND f_table_name = %s ORDER BY f_geometry_column LIMIT 1",
                    (self.schema, name),
                ).fetchone()
                rows = None
                if count:
                    rows = conn.execute(
                        sql.SQL("SELECT count(*) FROM {}").format(self._ident(name))
                    ).fetchone()
            except psycopg.Error as exc:
                raise _error(exc) from exc
        primary_key = keys[0][0] if len(keys) == 1 else None
        geometry_column = geometry[0] if geometry else None
        info = TableInfo(
            name=name,
            schema=self.schema,
            primary_key=primary_key,
            geometry=str(geometry[1]).upper() if geometry else None,
            geometry_column=geometry_column,
            srid=int(geometry[2]) if geometry and geometry[2] else None,
            is_view=kind in ("v", "m"),
            num_rows=int(rows[0]) if rows else None,
        )
        for column, native, not_null in columns:
            if column in (primary_key, geometry_column) or native in ("geometry", "geography", "raster"):
                continue
            info.columns[column] = Column(rest_type(native), bool(not_null), native)
        return info

    # -- DDL -----------------------------------------------------------------------------
    def create(self, spec: TableSpec) -> TableInfo:
        parts = [
            sql.SQL("{} bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY").format(
                sql.Identifier(ID_COLUMN)
            )
        ]
        for column in spec.columns:
            parts.append(
                sql.SQL("{} {}{}").format(
                    sql.Identifier(column.name),
                    sql.SQL(PG_TYPES[column.type]),
                    sql.SQL(" NOT NULL" if column.not_null else ""),
                )
            )
        if spec.geometry:
            # The type comes from GEOMETRY_TYPES and the SRID is an int: both safe as literal SQL.
            parts.append(
                sql.SQL("{} geometry({}, {})").format(
                    sql.Identifier(GEOMETRY_COLUMN), sql.SQL(spec.geometry), sql.Literal(int(spec.srid))
                )
            )
        table = self._ident(spec.name)
        with self.db.connection() as conn:
            try:
                with conn.transaction():
                    if spec.geometry:
                        known = conn.execute(
                            "SELECT 1 FROM spatial_ref_sys WHERE srid = %s", (spec.srid,)
                        ).fetchone()
                        if known is None:
                            raise InvalidData(f"srid {spec.srid} is not a CRS this database knows")
                    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table, sql.SQL(", ").join(parts)))
                    if spec.geometry:
                        conn.execute(
                            sql.SQL("CREATE INDEX ON {} USING gist ({})").format(
                                table, sql.Identifier(GEOMETRY_COLUMN)
                            )
                        )
            except ProviderError:
                raise
            except psycopg.Error as exc:
                raise _error(exc) from exc
        return self.describe(spec.name)

    def drop(self, name: str) -> None:
        self.describe(name)
        with self.db.connection() as conn:
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("DROP TABLE {}").format(self._ident(name)))
            except psycopg.Error as exc:
                raise _error(exc) from exc

    def truncate(self, name: str) -> None:
        """TRUNCATE, and count it in the table's revision in the same transaction.

        The revision key is the one :class:`~providers.postgis.PostGISProvider` bumps on
        every write (``schema.table``), so tiles cached before the truncate are dropped.
        """
        self.describe(name)
        revisions = self.db.ensure_revisions()
        with self.db.connection() as conn:
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("TRUNCATE {}").format(self._ident(name)))
                    if revisions:
                        self.db.bump_revision(conn, f"{self.schema}.{name}")
            except psycopg.Error as exc:
                raise _error(exc) from exc

    # -- rows ------------------------------------------------------------------------------
    def provider(self, name: str, editable: bool) -> FeatureProvider:
        info = self.describe(name)
        ref = TableRef(self.schema, name, info.geometry_column)
        schema = self.db.describe(ref)
        return PostGISProvider(self.db, ref, schema, editable=editable, count_mode="exact")

    def layer_options(self, name: str) -> dict[str, str]:
        return {"table": f"{self.schema}.{name}"}

    def is_layer_of(self, body: dict[str, Any], name: str) -> bool:
        table = body.get("table")
        if not isinstance(table, str):
            return False
        schema, _, bare = table.rpartition(".")
        return bare == name and (schema or "public") == self.schema


def _error(exc: psycopg.Error) -> ProviderError:
    """A failed catalog read or DDL statement as the error a client should see."""
    if isinstance(exc, (psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject)):
        return Conflict(_message(exc))
    if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedObject)):
        return NotFound(_message(exc))
    if isinstance(
        exc,
        (
            psycopg.errors.DataError,
            psycopg.errors.InvalidParameterValue,
            psycopg.errors.InternalError_,
            psycopg.errors.DependentObjectsStillExist,
            psycopg.errors.InvalidTableDefinition,
            psycopg.errors.DuplicateColumn,
        ),
    ):
        return InvalidData(_message(exc))
    if isinstance(exc, (psycopg.OperationalError, psycopg.errors.QueryCanceled)):
        return Unavailable(_message(exc))
    return ProviderError(_message(exc))


def _message(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag is not None else None
    return (primary or str(exc)).splitlines()[0][:300]
