"""Writing a file's features into a PostGIS table: COPY into a staging table, then one swap.

The features stream through a binary ``COPY ... FROM STDIN`` (geometries as EWKB) into
``geoharbor_staging_<random>``, a table nobody reads. The primary key, the GiST index
and the planner statistics are built there, before the target is touched; then one
short transaction puts the rows in place and bumps the table's revision (so cached
tiles refresh):

* CREATE renames the staging table to the target (Conflict if the name is taken).
* REPLACE drops the old table and renames the staging table in its place. When other
  objects depend on the old table (a view), it is kept and its rows are replaced
  instead (TRUNCATE + INSERT from staging, checked like APPEND), so those objects stay.
* APPEND inserts from staging into the existing table; each column of the file must
  exist there with a type that takes it without loss (checked before loading), and
  geometries are transformed into the table's CRS and promoted to its multi type.

Indexes a CreateIndexTransform asks for are built on the staging table with the others,
so they exist when the table appears, and take the name ``<table>_<column>_idx`` (or the
first free variant of it). APPEND, and a REPLACE that keeps the table, build them on
the table in the same transaction unless it already has an index on that column.

The staging table is committed before the COPY, and its loader holds a session
advisory lock named after it for as long as it runs. A loader killed mid-way leaves
that table and nothing else; its lock dies with its connection, so the next load (or
:func:`cleanup_staging`) can tell it from one in progress, and drops it.
All SQL is composed with :mod:`psycopg.sql`; names were checked by
:func:`providers.tables.check_name` or are ours.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import psycopg
from psycopg import sql

from providers import pgcopy
from providers.errors import Conflict, InvalidData, NotFound, ProviderError, Unavailable
from providers.loader import LoadResult, Mode, Plan, Progress, check_append
from providers.postgis import PostGISDatabase
from providers.postgis_tables import PostGISTables
from providers.tables import GEOMETRY_COLUMN, ID_COLUMN, TableInfo, check_name

STAGING_PREFIX = "geoharbor_staging_"
#: First key of the advisory locks loaders hold on their staging tables ("gh").
LOCK_SPACE = 0x6768
#: Memory for building the key and spatial index of one load (a session setting).
INDEX_MEMORY = "256MB"

#: Column kind -> PostgreSQL type, for the tables a load creates.
PG_TYPES = {
    "smallint": "smallint",
    "integer": "integer",
    "bigint": "bigint",
    "real": "real",
    "double": "double precision",
    "boolean": "boolean",
    "text": "text",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "time": "time",
    "binary": "bytea",
    "json": "jsonb",
}
#: Column kind -> the existing column types (pg_type names) that take it without loss (APPEND).
ASSIGNABLE = {
    "smallint": {"int2", "int4", "int8", "float4", "float8", "numeric"},
    "integer": {"int4", "int8", "float8", "numeric"},
    "bigint": {"int8", "numeric"},
    "real": {"float4", "float8", "numeric"},
    "double": {"float8", "numeric"},
    "boolean": {"bool"},
    "text": {"text", "varchar", "bpchar"},
    "json": {"text", "varchar", "json", "jsonb"},
    "date": {"date", "timestamp", "timestamptz"},
    "timestamp": {"timestamp", "timestamptz"},
    "timestamptz": {"timestamptz"},
    "time": {"time"},
    "binary": {"bytea"},
}


@dataclass(frozen=True, slots=True)
class Target:
    """A table of a PostGIS database: ``name`` or ``schema.name`` (default schema ``public``)."""

    schema: str
    name: str

    @classmethod
    def parse(cls, table: str) -> Target:
        schema, _, bare = str(table).rpartition(".")
        return cls(check_name(schema or "public", "schema"), check_name(bare))

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def key(self) -> str:
        """``schema.table``: the LoadResult's name and the table's row in ``geoharbor.revisions``
        (as :class:`PostGISProvider` names it)."""
        return f"{self.schema}.{self.name}"


def load_postgis(
    plan: Plan, db: PostGISDatabase, table: str, mode: Mode, progress: Progress | None, batch: int
) -> LoadResult:
    """Load ``plan`` into ``table`` (``name`` or ``schema.name``) of ``db``; see the module doc."""
    target = Target.parse(table)
    tables = PostGISTables(db, "", target.schema)
    existing = _existing(tables, target.name)
    if mode is Mode.CREATE and existing is not None:
        raise Conflict(f"table {target.key!r} already exists")
    if mode is Mode.APPEND:
        if existing is None:
            raise NotFound(f"table {target.key!r} does not exist: nothing to append to")
        check_append(plan, existing, ASSIGNABLE)
    revisions = db.ensure_revisions()
    try:
        # Directly, past any transaction pooler: the load holds session settings and locks.
        conn = db.connect_direct(autocommit=True)
    except psycopg.OperationalError as exc:
        raise Unavailable(f"database unavailable: {exc}") from exc
    try:
        conn.execute("SET statement_timeout = 0")
        conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(INDEX_MEMORY)))
        _cleanup(conn)
        known = conn.execute("SELECT 1 FROM spatial_ref_sys WHERE srid = %s", (plan.srid,)).fetchone()
        if known is None:
            raise InvalidData(f"EPSG:{plan.srid} is not a CRS this database knows")
        staging = Target(target.schema, STAGING_PREFIX + secrets.token_hex(6))
        conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_SPACE, staging.name))
        try:
            _create_staging(conn, plan, staging, unlogged=mode is Mode.APPEND)
            written = _copy(conn, plan, staging, progress, batch)
            if mode is not Mode.APPEND:
                _index(conn, staging, plan.indexes)
            with conn.transaction():
                if mode is Mode.APPEND:
                    _insert(conn, plan, staging, target, existing)  # type: ignore[arg-type]
                    _ensure_indexes(conn, target, plan.indexes)
                else:
                    _swap(conn, plan, staging, target, existing if mode is Mode.REPLACE else None)
                if revisions:
                    conn.execute(
                        "INSERT INTO geoharbor.revisions AS r (source, revision) VALUES (%s, 1) "
                        "ON CONFLICT (source) DO UPDATE SET revision = r.revision + 1, changed = now()",
                        (target.key,),
                    )
            if mode is Mode.APPEND:
                conn.execute(sql.SQL("ANALYZE {}").format(target.ident))
        finally:
            if not conn.closed and not conn.broken:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging.ident))
                conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_SPACE, staging.name))
    except ProviderError:
        raise
    except psycopg.Error as exc:
        raise pg_error(exc) from exc
    finally:
        conn.close()
    return LoadResult(target.key, written, plan.srid, plan.geometry_type, plan.columns, mode)


def cleanup_staging(db: PostGISDatabase) -> list[str]:
    """Drop the staging tables of loads that died; returns their names (``schema.table``).

    A staging table whose advisory lock another session holds belongs to a load in
    progress and is left alone.
    """
    try:
        with db.connect_direct(autocommit=True) as conn:  # session advisory locks: past any pooler
            return _cleanup(conn)
    except psycopg.Error as exc:
        raise pg_error(exc) from exc


def _cleanup(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'r' AND starts_with(c.relname, %s)",
        (STAGING_PREFIX,),
    ).fetchall()
    dropped = []
    for schema, name in rows:
        got = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_SPACE, name)).fetchone()
        if not got or not got[0]:
            continue
        try:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, name)))
            dropped.append(f"{schema}.{name}")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_SPACE, name))
    return dropped


# -- steps ---------------------------------------------------------------------------------------
def _existing(tables: PostGISTables, name: str) -> TableInfo | None:
    try:
        return tables.describe(name)
    except NotFound:
        return None


def _create_staging(conn: psycopg.Connection, plan: Plan, staging: Target, unlogged: bool) -> None:
    """The staging table, committed: key (filled by its identity), attributes, typed geometry.

    UNLOGGED only when its rows are copied out (APPEND): a table renamed into place
    must be logged, and making it so afterwards would write it all once more.
    """
    parts = [sql.SQL("{} bigint GENERATED BY DEFAULT AS IDENTITY").format(sql.Identifier(ID_COLUMN))]
    for column in plan.columns:
        parts.append(sql.SQL("{} {}").format(sql.Identifier(column.name), sql.SQL(PG_TYPES[column.kind])))
    # The type comes from loader._TYPE_NAMES (+ Z/M) and the SRID is an int: both safe as literal SQL.
    parts.append(
        sql.SQL("{} geometry({}, {})").format(
            sql.Identifier(GEOMETRY_COLUMN), sql.SQL(plan.geometry_type), sql.Literal(plan.srid)
        )
    )
    conn.execute(
        sql.SQL("CREATE {}TABLE {} ({})").format(
            sql.SQL("UNLOGGED " if unlogged else ""), staging.ident, sql.SQL(", ").join(parts)
        )
    )


def _copy(
    conn: psycopg.Connection, plan: Plan, staging: Target, progress: Progress | None, batch: int
) -> int:
    """Stream the file's batches through one binary COPY; returns the rows written."""
    names = [sql.Identifier(c.name) for c in plan.columns] + [sql.Identifier(GEOMETRY_COLUMN)]
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        staging.ident, sql.SQL(", ").join(names)
    )
    written = 0
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.write(pgcopy.HEADER)
        for chunk in plan.batches(batch):
            columns = [(chunk.column(c.source), c.kind) for c in plan.columns]
            copy.write(pgcopy.encode(columns, chunk.column(plan.geometry_column), plan.srid, plan.promote))
            written += chunk.num_rows
            if progress is not None:
                progress(written, max(plan.total, written))
        copy.write(pgcopy.TRAILER)
    return written


def _index(conn: psycopg.Connection, staging: Target, columns: tuple[str, ...]) -> None:
    """Key, spatial index, the asked-for column indexes and statistics, built once over all rows
    (cheaper than per row)."""
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
            staging.ident, sql.Identifier(f"{staging.name}_pkey"), sql.Identifier(ID_COLUMN)
        )
    )
    conn.execute(
        sql.SQL("CREATE INDEX {} ON {} USING gist ({})").format(
            sql.Identifier(f"{staging.name}_geom_idx"), staging.ident, sql.Identifier(GEOMETRY_COLUMN)
        )
    )
    for n, column in enumerate(columns):
        conn.execute(
            sql.SQL("CREATE INDEX {} ON {} ({})").format(
                sql.Identifier(_staging_index(staging, n)), staging.ident, sql.Identifier(column)
            )
        )
    conn.execute(sql.SQL("ANALYZE {}").format(staging.ident))


def _staging_index(staging: Target, n: int) -> str:
    return f"{staging.name}_c{n}_idx"


def _index_name(conn: psycopg.Connection, schema: str, table: str, column: str) -> str:
    """``<table>_<column>_idx`` cut to 63 characters, or its first variant no relation of ``schema`` has."""
    base = f"{table}_{column}"[:59]
    for n in range(1000):
        name = f"{base}_idx" if n == 0 else f"{base[: 59 - len(str(n))]}_idx{n}"
        taken = conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (schema, name),
        ).fetchone()
        if taken is None:
            return name
    raise Conflict(f"no free name for an index on {table}.{column}")


def _ensure_indexes(conn: psycopg.Connection, target: Target, columns: tuple[str, ...]) -> None:
    """An index on each of ``columns`` of the existing ``target``, unless it has one on that column alone."""
    for column in columns:
        indexed = conn.execute(
            "SELECT 1 FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s AND i.indnkeyatts = 1 "
            "AND i.indpred IS NULL AND i.indexprs IS NULL",
            (target.schema, target.name, column),
        ).fetchone()
        if indexed is None:
            name = _index_name(conn, target.schema, target.name, column)
            conn.execute(
                sql.SQL("CREATE INDEX {} ON {} ({})").format(
                    sql.Identifier(name), target.ident, sql.Identifier(column)
                )
            )


def _swap(
    conn: psycopg.Connection, plan: Plan, staging: Target, target: Target, existing: TableInfo | None
) -> None:
    """Put the staging table in place of ``target`` (inside the caller's transaction)."""
    if existing is not None:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("DROP TABLE {}").format(target.ident))
        except psycopg.errors.DependentObjectsStillExist:
            check_append(plan, existing, ASSIGNABLE)
            conn.execute(sql.SQL("TRUNCATE {}").format(target.ident))
            _insert(conn, plan, staging, target, existing)
            _ensure_indexes(conn, target, plan.indexes)
            return
    try:
        conn.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(staging.ident, sql.Identifier(target.name))
        )
    except psycopg.errors.DuplicateTable as exc:
        raise Conflict(f"table {target.key!r} already exists") from exc
    # The staging names of its key, index and sequence, made the table's own when free.
    for kind, suffix in (("INDEX", "pkey"), ("INDEX", "geom_idx"), ("SEQUENCE", "id_seq")):
        wanted = f"{target.name[: 62 - len(suffix)]}_{suffix}"
        taken = conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (target.schema, wanted),
        ).fetchone()
        if taken is None:
            conn.execute(
                sql.SQL("ALTER {} {} RENAME TO {}").format(
                    sql.SQL(kind),
                    sql.Identifier(target.schema, f"{staging.name}_{suffix}"),
                    sql.Identifier(wanted),
                )
            )
    for n, column in enumerate(plan.indexes):
        conn.execute(
            sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(target.schema, _staging_index(staging, n)),
                sql.Identifier(_index_name(conn, target.schema, target.name, column)),
            )
        )


def _insert(
    conn: psycopg.Connection, plan: Plan, staging: Target, target: Target, existing: TableInfo
) -> None:
    """INSERT the staging rows into ``target``: geometries in its CRS and (multi) type."""
    geometry: sql.Composable = sql.Identifier(GEOMETRY_COLUMN)
    if existing.srid and existing.srid != plan.srid:
        geometry = sql.SQL("ST_Transform({}, {})").format(geometry, sql.Literal(int(existing.srid)))
    if (existing.geometry or "").startswith("MULTI") and not plan.base_type.startswith("MULTI"):
        geometry = sql.SQL("ST_Multi({})").format(geometry)
    names = [sql.Identifier(c.name) for c in plan.columns]
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
            target.ident,
            sql.SQL(", ").join([*names, sql.Identifier(existing.geometry_column or GEOMETRY_COLUMN)]),
            sql.SQL(", ").join([*names, geometry]),
            staging.ident,
        )
    )


def pg_error(exc: psycopg.Error, bad_data: str = "the data does not fit the table") -> ProviderError:
    """A failed load or write statement as the error its caller should see (``bad_data`` words
    a row PostgreSQL refused)."""
    diag = getattr(exc, "diag", None)
    message = ((diag.message_primary if diag is not None else None) or str(exc)).splitlines()[0][:300]
    if isinstance(exc, psycopg.errors.DuplicateTable):
        return Conflict(message)
    if isinstance(exc, psycopg.OperationalError | psycopg.errors.QueryCanceled):
        return Unavailable(message)
    if isinstance(
        exc, psycopg.errors.DataError | psycopg.errors.IntegrityError | psycopg.errors.InternalError_
    ):
        return InvalidData(f"{bad_data}: {message}")
    return ProviderError(message)
